//! Sending a whole response, for the application's components: each crate
//! includes this file (`#[path]`) over its own wasi:http bindings.

use crate::wasi::http::types::{Fields, OutgoingBody, OutgoingResponse, ResponseOutparam};

/// The most `blocking-write-and-flush` takes in one call, as WASI says.
const WRITE_CHUNK: usize = 4096;

/// Answers `status` with `headers` and `body` (left out for `HEAD`, its
/// length still given).
pub fn send(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8], head: bool) {
    let fields = Fields::new();
    let length = body.len().to_string();
    for (name, value) in headers.iter().chain([&("content-length", length.as_str())]) {
        fields
            .append(name, value.as_bytes())
            .expect("the component's own headers are valid");
    }
    let response = OutgoingResponse::new(fields);
    response
        .set_status_code(status)
        .expect("the component's own status is valid");
    let outgoing = response.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("the stream is taken once");
    if !head {
        for chunk in body.chunks(WRITE_CHUNK) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                // The client has gone: nothing is left to tell it.
                return;
            }
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}
