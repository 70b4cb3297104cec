//! `hello.wasm` stays inside the `wasi:http/proxy` world, so that plain
//! `wasmtime serve hello.wasm` (which links only that world) accepts it.

use e2e::component;
use wasi_http_server::guest_output::RequestId;
use wasi_http_server::state::{HostBudget, RequestState, Sandbox};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

/// Instantiates `name` with a linker that holds only the proxy world.
async fn instantiate_with_proxy_world_only(name: &str) -> wasmtime::Result<()> {
    let engine = Engine::default();
    let component = Component::from_file(&engine, component(name))?;
    let mut linker = Linker::new(&engine);
    wasmtime_wasi_http::p2::add_to_linker_async(&mut linker)?;
    let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
    let sandbox = Sandbox {
        max_memory: 64 << 20,
        host: HostBudget::new(64 << 20, 32 << 10).expect("a valid budget"),
        max_output: 1 << 20,
        allowed_outbound: Vec::new().into(),
        env: Vec::new().into(),
    };
    let mut store = Store::new(&engine, RequestState::new(&sandbox, RequestId::next()));
    pre.instantiate_async(&mut store).await?;
    Ok(())
}

/// The hello guest instantiates with the proxy world alone.
#[tokio::test]
async fn hello_needs_only_the_proxy_world() {
    instantiate_with_proxy_world_only("hello")
        .await
        .expect("hello.wasm in the proxy world");
}

/// The check above can fail: the testbed, a plain std `wasm32-wasip2` build,
/// imports `wasi:cli/environment` and is refused by the same linker.
#[tokio::test]
async fn a_std_wasip2_build_needs_more_than_the_proxy_world() {
    let err = instantiate_with_proxy_world_only("testbed")
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").contains("wasi:cli/environment"),
        "{err:?}"
    );
}
