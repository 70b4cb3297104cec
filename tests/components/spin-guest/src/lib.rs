//! A Spin application component, as a spin-sdk 7 user writes one: it uses
//! Spin's own key-value and variables (`spin:key-value@3.0.0`,
//! `spin:variables@3.0.0`) and the experimental `wasi:keyvalue@0.2.0-draft2`
//! and `wasi:config/store@0.2.0-draft-2024-09-27` that spin-sdk 7 carries.
//!
//! - `/`: the hello.
//! - `/count`: a counter on `Store::open_default()`, read then written (what
//!   Spin's key-value tutorial does; not atomic across concurrent requests).
//! - `/incr`: a counter by `wasi:keyvalue` atomics, exact under concurrency.
//! - `/cas`: appends `x` to the value at `cas` by compare-and-swap, retrying.
//! - `/keys`: every key of the default store, one per line, from the stream;
//!   500 and the error when listing fails.
//! - `/var/NAME`, `/config/NAME`: a variable by `spin:variables` or
//!   `wasi:config/store`.
//! - `/open/LABEL`: opens a store by label; answers `opened` or the error.
//! - `/headers`: the `spin-*` headers of the request, sorted.
//! - `/file/NAME`, `/write/NAME`: reads or writes `/static/NAME`.
//!
//! Routed by a Spin application, it takes its path from `spin-path-info`.

use spin_sdk::experimental::wasi::config::store as config;
use spin_sdk::experimental::wasi::keyvalue::{atomics, store as wasi_kv};
use spin_sdk::http::{IntoResponse, Request, StatusCode};
use spin_sdk::http_service;
use spin_sdk::key_value::Store;
use spin_sdk::variables;

#[http_service]
async fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    // Routed by a Spin application, the path below the route is in
    // `spin-path-info`, as Spin's SDK routers read it.
    let path = match req.headers().get("spin-path-info") {
        Some(info) => format!("/{}", info.to_str()?.trim_start_matches('/')),
        None => req.uri().path().to_string(),
    };
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    Ok(match segments.as_slice() {
        [""] => (StatusCode::OK, "Hello World\n".to_string()),
        ["count"] => {
            let store = Store::open_default().await?;
            let count = match store.get("count").await? {
                Some(bytes) => String::from_utf8(bytes)?.parse::<u64>()? + 1,
                None => 1,
            };
            store.set("count", count.to_string()).await?;
            (StatusCode::OK, format!("{count}\n"))
        }
        ["incr"] => {
            let bucket = wasi_kv::open("default").map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let hits =
                atomics::increment(&bucket, "hits", 1).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            (StatusCode::OK, format!("{hits}\n"))
        }
        ["cas"] => (StatusCode::OK, format!("{}\n", append_by_cas()?)),
        ["keys"] => {
            let store = Store::open_default().await?;
            match store.get_keys().await.collect().await {
                Ok(mut keys) => {
                    keys.sort();
                    (
                        StatusCode::OK,
                        keys.iter().map(|k| format!("{k}\n")).collect(),
                    )
                }
                Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:?}\n")),
            }
        }
        ["var", name] => match variables::get(*name).await {
            Ok(value) => (StatusCode::OK, value),
            Err(err) => (StatusCode::NOT_FOUND, format!("{err:?}\n")),
        },
        ["config", name] => match config::get(name) {
            Ok(Some(value)) => (StatusCode::OK, value),
            Ok(None) => (StatusCode::NOT_FOUND, "none\n".to_string()),
            Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{err:?}\n")),
        },
        ["headers"] => {
            let mut spin: Vec<String> = req
                .headers()
                .iter()
                .filter(|(name, _)| name.as_str().starts_with("spin-"))
                .map(|(name, value)| format!("{name}: {}\n", value.to_str().unwrap_or("?")))
                .collect();
            spin.sort();
            (StatusCode::OK, spin.concat())
        }
        ["file", name] => match std::fs::read_to_string(format!("/static/{name}")) {
            Ok(text) => (StatusCode::OK, text),
            Err(err) => (StatusCode::NOT_FOUND, format!("{err}\n")),
        },
        ["write", name] => match std::fs::write(format!("/static/{name}"), "x") {
            Ok(()) => (StatusCode::OK, "written\n".to_string()),
            Err(err) => (StatusCode::FORBIDDEN, format!("{err}\n")),
        },
        ["open", label] => match Store::open(label).await {
            Ok(_) => (StatusCode::OK, "opened\n".to_string()),
            Err(err) => (StatusCode::FORBIDDEN, format!("{err:?}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    })
}

/// Appends `x` to the value at `cas` by compare-and-swap, retrying when
/// another request swapped first; returns the value's new length.
fn append_by_cas() -> anyhow::Result<usize> {
    let bucket = wasi_kv::open("default").map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut cas = atomics::Cas::new(&bucket, "cas").map_err(|e| anyhow::anyhow!("{e:?}"))?;
    loop {
        let mut value = cas
            .current()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?
            .unwrap_or_default();
        value.push(b'x');
        let len = value.len();
        match atomics::swap(cas, &value) {
            Ok(()) => return Ok(len),
            Err(atomics::CasError::CasFailed(fresh)) => cas = fresh,
            Err(atomics::CasError::StoreError(err)) => anyhow::bail!("{err:?}"),
        }
    }
}
