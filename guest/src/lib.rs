//! The hello guest: answers every request, whatever its method and path, with
//! `200`, `content-type: text/plain` and `Hello World\n`, like the Node.js seed.
//!
//! Built for `wasm32-unknown-unknown` and turned into a component by
//! `tools/componentize`, so that it imports only `wasi:http/types` and
//! `wasi:io` (see the README for why not `wasm32-wasip2`).
#![allow(
    clippy::ok_expect,
    reason = "`.ok().expect()` keeps the `Debug` impls of wasi:http's error enums out \
              of the binary: `Result::expect` would double hello.wasm (21 KB -> 43 KB)"
)]

wit_bindgen::generate!({
    path: "../wit",
    world: "hello",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

/// The body the seed sends.
const BODY: &[u8] = b"Hello World\n";

/// `BODY.len()` in decimal, checked at compile time.
const CONTENT_LENGTH: &[u8] = b"12";
const _: () = assert!(BODY.len() == 12);

struct Hello;

impl Guest for Hello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        // `append` borrows its arguments, so answering allocates nothing on
        // the guest's heap: the instance never grows its memory, and the host
        // never has to change page protections to give or take it back.
        let headers = Fields::new();
        headers
            .append("content-type", b"text/plain")
            .ok()
            .expect("static header is valid");
        headers
            .append("content-length", CONTENT_LENGTH)
            .ok()
            .expect("static header is valid");
        // A new outgoing-response has status 200.
        let response = OutgoingResponse::new(headers);
        let body = response.body().expect("body is taken once");
        ResponseOutparam::set(response_out, Ok(response));

        let stream = body.write().expect("stream is taken once");
        stream
            .blocking_write_and_flush(BODY)
            .ok()
            .expect("writing the body");
        // The stream is a child of the body: it must be gone before `finish`.
        drop(stream);
        OutgoingBody::finish(body, None)
            .ok()
            .expect("finishing the body");
    }
}

export!(Hello);
