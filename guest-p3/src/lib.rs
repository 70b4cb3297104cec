//! The hello guest for WASI 0.3: answers every request, whatever its method
//! and path, with `200`, `content-type: text/plain` and `Hello World\n`, like
//! the Node.js seed and like `guest/` does for WASI 0.2.
//!
//! Written against the `wasip3` crate's bindings of `wasi:http/service@0.3.0`
//! (the version wasmtime 48 implements), built for `wasm32-unknown-unknown`
//! and turned into a component by `tools/componentize`, so that it imports
//! only `wasi:http/types` from the service world.

mod arena;

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

/// The body the seed sends.
const BODY: &[u8] = b"Hello World\n";

/// `BODY.len()` in decimal, checked at compile time.
const CONTENT_LENGTH: &[u8] = b"12";
const _: () = assert!(BODY.len() == 12);

#[global_allocator]
static ALLOCATOR: arena::Arena = arena::Arena::new();

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(_request: Request) -> Result<Response, ErrorCode> {
        let headers = Fields::from_list(&[
            ("content-type".to_string(), b"text/plain".to_vec()),
            ("content-length".to_string(), CONTENT_LENGTH.to_vec()),
        ])
        .expect("static headers are valid");
        let (mut body, contents) = wit_stream::new();
        // No trailers: dropping the sender resolves the future with `none`.
        let (trailers, no_trailers) = wit_future::new(|| Ok(None));
        drop(trailers);
        let (response, _sent) = Response::new(headers, Some(contents), no_trailers);
        // The body is written after `handle` returns the head, as 0.3 allows.
        wit_bindgen::spawn(async move {
            // A client that went away leaves part of it unwritten: nothing to do.
            let _unwritten = body.write_all(BODY.to_vec()).await;
        });
        Ok(response)
    }
}

wasip3::http::service::export!(Hello);
