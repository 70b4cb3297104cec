//! The application's file server: `GET` or `HEAD` of a path under its route
//! answers the file at that path in its `files` mount (`/`), with a content
//! type from its extension; a folder answers its `index.html`. It is read
//! through WASI's preopens, so nothing outside the mount can be named, and
//! the mount is read-only.

wit_bindgen::generate!({
    path: ["../../wit", "../wit"],
    world: "hello:app/fileserver",
    generate_all,
});

#[path = "../../respond.rs"]
mod respond;

use std::path::PathBuf;

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

/// The header Spin (and ours) sets to the path under the matched route.
const PATH_INFO: &str = "spin-path-info";

/// Content types by extension; anything else is `application/octet-stream`.
const TYPES: &[(&str, &str)] = &[
    ("html", "text/html; charset=utf-8"),
    ("css", "text/css; charset=utf-8"),
    ("js", "text/javascript; charset=utf-8"),
    ("json", "application/json"),
    ("txt", "text/plain; charset=utf-8"),
    ("svg", "image/svg+xml"),
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("ico", "image/x-icon"),
    ("wasm", "application/wasm"),
];

struct FileServer;

impl Guest for FileServer {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let head = match request.method() {
            Method::Get => false,
            Method::Head => true,
            _ => {
                let headers = [("allow", "GET, HEAD"), ("content-type", "text/plain")];
                return respond::send(out, 405, &headers, b"Method Not Allowed\n", false);
            }
        };
        // Outside Spin's routing (`wasmtime serve`), the whole path is the file's.
        let path = request
            .headers()
            .get(PATH_INFO)
            .into_iter()
            .next()
            .and_then(|value| String::from_utf8(value).ok())
            .unwrap_or_else(|| request.path_with_query().unwrap_or_default());
        let path = path.split(['?', '#']).next().unwrap_or_default();
        match file(path) {
            Some((body, content_type)) => {
                respond::send(out, 200, &[("content-type", content_type)], &body, head)
            }
            None => {
                let headers = [("content-type", "text/plain")];
                respond::send(out, 404, &headers, b"Not Found\n", head)
            }
        }
    }
}

/// The file at the URL path `path` and its content type, if there is one.
fn file(path: &str) -> Option<(Vec<u8>, &'static str)> {
    let mut name = decode(path)?;
    if name.ends_with('/') || name.is_empty() {
        name.push_str("index.html");
    }
    if name.split('/').any(|part| part == "..") {
        return None;
    }
    let mut full = PathBuf::from("/").join(name.trim_start_matches('/'));
    if full.is_dir() {
        full.push("index.html");
    }
    let body = std::fs::read(&full).ok()?;
    let extension = full
        .extension()
        .and_then(|ext| ext.to_str())
        .unwrap_or_default();
    let content_type = TYPES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(extension))
        .map_or("application/octet-stream", |(_, content_type)| content_type);
    Some((body, content_type))
}

/// `path` with its `%XX` escapes decoded; `None` if one is malformed or the
/// result is not UTF-8.
fn decode(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
            decoded.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            decoded.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(decoded).ok()
}

export!(FileServer);
