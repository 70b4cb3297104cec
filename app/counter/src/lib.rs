//! The application's counter: `GET /count` adds one to `count` in the
//! default key-value store and answers the new value. The increment is the
//! store's own atomic one, so concurrent requests (on one server or many
//! sharing a store) never lose a count, where a read then a write would.

wit_bindgen::generate!({
    path: ["../../wit", "../wit"],
    world: "hello:app/counter",
    generate_all,
});

#[path = "../../respond.rs"]
mod respond;

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};
use wasi::keyvalue0_2_0_draft2::{atomics, store};

/// The key counted.
const KEY: &str = "count";

struct Counter;

impl Guest for Counter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Get | Method::Post) {
            let headers = [("allow", "GET, POST"), ("content-type", "text/plain")];
            return respond::send(out, 405, &headers, b"Method Not Allowed\n", false);
        }
        let counted = store::open("default").and_then(|bucket| atomics::increment(&bucket, KEY, 1));
        let (status, body) = match counted {
            Ok(count) => (200, format!("{count}\n")),
            // The store is down or refused: say so, count nothing.
            Err(err) => (503, format!("the store failed: {err:?}\n")),
        };
        respond::send(
            out,
            status,
            &[("content-type", "text/plain")],
            body.as_bytes(),
            false,
        );
    }
}

export!(Counter);
