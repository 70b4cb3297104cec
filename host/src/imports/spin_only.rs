//! Spin's own APIs beyond key-value and variables (llm, mqtt, mysql,
//! postgres, redis, sqlite, the 1.x `fermyon:spin` interfaces) are not
//! served here. A component that imports one is refused at load with its
//! name, rather than with wasmtime's generic "not provided", so that its
//! author knows at once that it needs Spin.

use wasmtime::component::Component;

/// The Spin interfaces `keyvalue` and `variables` link.
const SERVED: &[&str] = &[
    "fermyon:spin/key-value@2.0.0",
    "fermyon:spin/variables@2.0.0",
    "spin:key-value/key-value@3.0.0",
    "spin:variables/variables@3.0.0",
];

/// The Spin-only interfaces `component` imports, if any, as one error.
pub fn refuse(component: &Component) -> wasmtime::Result<()> {
    let refused: Vec<String> = component
        .component_type()
        .imports(component.engine())
        .map(|(name, _)| name)
        .filter(|name| {
            (name.starts_with("fermyon:") || name.starts_with("spin:")) && !SERVED.contains(name)
        })
        .map(|name| format!("`{name}`"))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    wasmtime::bail!(
        "the component imports {}: Spin-only {} this server does not provide (of Spin's \
         own APIs it serves key-value and variables only)",
        refused.join(", "),
        if refused.len() == 1 { "API" } else { "APIs" },
    )
}
