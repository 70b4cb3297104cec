//! A component written with spin-sdk 5.2, as many deployed Spin apps still
//! are: WASI 0.2 (`wasi:http/incoming-handler`), with Spin's 2.0.0
//! key-value and variables, whose calls are synchronous.
//!
//! - `/`: the hello.
//! - `/count`: a counter on `Store::open_default()`, read then written.
//! - `/keys`: every key of the default store, one per line.
//! - `/var/NAME`: a variable.
//! - `/open/LABEL`: opens a store by label; answers `opened` or the error.

use spin_sdk::http::{IntoResponse, Request, Response};
use spin_sdk::http_component;
use spin_sdk::key_value::Store;
use spin_sdk::variables;

#[http_component]
fn handle(req: Request) -> anyhow::Result<impl IntoResponse> {
    let path = req.path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').splitn(2, '/').collect();
    let (status, body) = match segments.as_slice() {
        [""] => (200, "Hello World\n".to_string()),
        ["count"] => {
            let store = Store::open_default()?;
            let count = match store.get("count")? {
                Some(bytes) => String::from_utf8(bytes)?.parse::<u64>()? + 1,
                None => 1,
            };
            store.set("count", count.to_string().as_bytes())?;
            (200, format!("{count}\n"))
        }
        ["keys"] => {
            let mut keys = Store::open_default()?.get_keys()?;
            keys.sort();
            (200, keys.iter().map(|k| format!("{k}\n")).collect())
        }
        ["var", name] => match variables::get(name) {
            Ok(value) => (200, value),
            Err(err) => (404, format!("{err:?}\n")),
        },
        ["open", label] => match Store::open(label) {
            Ok(_) => (200, "opened\n".to_string()),
            Err(err) => (403, format!("{err:?}\n")),
        },
        _ => (404, "not found\n".to_string()),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body)
        .build())
}
