//! The per-request hot path in-process, without the network: new store,
//! instantiate hello.wasm, call `handle`, collect the response body. A change
//! to that path can be judged here in microseconds (`make bench` runs it).

use bytes::Bytes;
use clap::Parser;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use wasi_http_server::cli::Cli;
use wasi_http_server::component;
use wasi_http_server::guest_output::RequestId;
use wasi_http_server::handler::Handler;
use wasi_http_server::state::HostBudget;

fn per_request(c: &mut Criterion) {
    let hello = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/components/hello.wasm"
    );
    let cli = Cli::parse_from(["per_request", hello]);
    let cli = std::sync::Arc::new(cli);
    let engines = component::Engines::new(cli.clone()).expect("engine");
    let pre = component::load(&engines, &cli.component, None).expect("run `make components` first");
    let host = HostBudget::new(
        cli.max_guest_host_memory.as_u64() as usize,
        cli.max_guest_fields_size.as_u64() as usize,
    )
    .expect("the default budget");
    let handler = Handler::new(pre, &cli, host);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    c.bench_function("hello: store + instantiate + handle + collect", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request::get("http://bench.local/")
                .body(Empty::<Bytes>::new())
                .expect("valid request");
            let response = handler.handle(request, RequestId::next()).await;
            let body = response.into_body().collect().await.expect("whole body");
            assert_eq!(body.to_bytes(), "Hello World\n");
        })
    });
}

criterion_group!(benches, per_request);
criterion_main!(benches);
