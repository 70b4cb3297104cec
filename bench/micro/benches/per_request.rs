//! The per-request hot path in-process, without the network: new store,
//! instantiate hello.wasm, call `handle`, collect the response body. A change
//! to that path can be judged here in microseconds (`make bench` runs it).

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use std::sync::Arc;
use std::time::Duration;
use wasi_http_server::compile::Engines;
use wasi_http_server::compile::pool::PoolSettings;
use wasi_http_server::guest::budget::HostBudget;
use wasi_http_server::guest::link;
use wasi_http_server::guest::runner::{RequestLimits, Runner};
use wasi_http_server::guest::state::Sandbox;
use wasi_http_server::imports::keyvalue::Stores;
use wasi_http_server::imports::outbound::{Outbound, OutboundTimeouts};

fn per_request(c: &mut Criterion) {
    let hello = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/components/hello.wasm"
    );
    // The server's defaults.
    let pool = PoolSettings {
        slots: 128,
        max_memory: 128 << 20,
        serving_threads: 2,
    };
    let engines = Engines::new(pool);
    let guest = link::load(&engines, hello.as_ref(), None).expect("run `make components` first");
    let sandbox = Sandbox {
        host: HostBudget::new(64 << 20, 32 << 10, 0).expect("the default budget"),
        max_output: 256 << 10,
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
    let limits = RequestLimits {
        queue_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(30),
        max_body: 10 << 20,
    };
    let runner = Runner::new(guest, pool, sandbox, limits);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    c.bench_function("hello: store + instantiate + handle + collect", |b| {
        b.to_async(&runtime).iter(|| async {
            let request = Request::get("http://bench.local/")
                .body(Empty::<Bytes>::new())
                .expect("valid request");
            let response = runner.handle(request).await;
            let body = response.into_body().collect().await.expect("whole body");
            assert_eq!(body.to_bytes(), "Hello World\n");
        })
    });
}

criterion_group!(benches, per_request);
criterion_main!(benches);
