//! Turns a core wasm module built by `wit-bindgen` into a component.
//!
//! `componentize IN.wasm OUT.wasm` reads the component-type section that
//! `wit-bindgen` embeds and wraps the module with exactly the imports it uses,
//! which is what `wasm-tools component new` does. We use it for guests built for
//! `wasm32-unknown-unknown`, whose modules import nothing outside the
//! `wasi:http/proxy` world (a `wasm32-wasip2` std build imports `wasi:cli` too).

use anyhow::{Context, Result, bail};
use wit_component::ComponentEncoder;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        bail!("usage: componentize IN.wasm OUT.wasm");
    };
    let module = std::fs::read(input).with_context(|| format!("reading {input}"))?;
    let component = ComponentEncoder::default()
        .module(&module)
        .with_context(|| format!("{input} has no component-type section from wit-bindgen"))?
        .validate(true)
        .encode()
        .with_context(|| format!("encoding {input} as a component"))?;
    std::fs::write(output, component).with_context(|| format!("writing {output}"))?;
    Ok(())
}
