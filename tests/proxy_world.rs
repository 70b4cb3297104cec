//! `hello.wasm` stays inside the `wasi:http/proxy` world, so that plain
//! `wasmtime serve hello.wasm` (which links only that world) accepts it.

use e2e::component;
use std::sync::Arc;

use wasi_http_server::guest::budget::HostBudget;
use wasi_http_server::guest::state::{RequestState, Sandbox};
use wasi_http_server::imports::keyvalue::Stores;
use wasi_http_server::imports::outbound::{Outbound, OutboundTimeouts};
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
        host: HostBudget::new(64 << 20, 32 << 10, 0).expect("a valid budget"),
        max_output: 1 << 20,
        allowed_outbound: Vec::new().into(),
        outbound: Arc::new(
            Outbound::new(
                OutboundTimeouts {
                    connect: std::time::Duration::from_secs(5),
                    first_byte: std::time::Duration::from_secs(20),
                },
                None,
            )
            .expect("no CA file to read"),
        ),
        env: Vec::new().into(),
        config: Default::default(),
        keyvalue: Arc::new(Stores::none()),
        stores_allowed: None,
        files: Arc::new([]),
        internal: None,
    };
    let mut store = Store::new(
        &engine,
        RequestState::new(&sandbox, 64 << 20, std::time::Instant::now()),
    );
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

/// The WASI 0.3 hello guest imports nothing beyond `wasi:http/types@0.3.0`:
/// it instantiates with a linker holding only wasi:http 0.3, which every
/// host of the 0.3 service world provides.
#[tokio::test]
async fn hello_p3_needs_only_wasi_http() {
    let mut config = wasmtime::Config::new();
    config.wasm_component_model_async(true);
    let engine = Engine::new(&config).unwrap();
    let component = Component::from_file(&engine, component("hello-p3")).unwrap();
    let mut linker = Linker::<RequestState>::new(&engine);
    wasmtime_wasi_http::p3::add_to_linker(&mut linker).unwrap();
    let pre = linker
        .instantiate_pre(&component)
        .expect("hello-p3.wasm with wasi:http 0.3 alone");
    wasmtime_wasi_http::p3::bindings::ServicePre::new(pre).expect("a wasi:http/handler export");
}
