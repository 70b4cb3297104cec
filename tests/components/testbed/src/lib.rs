//! A test component whose behaviour is chosen by the request path, so the
//! end-to-end tests can make a guest misbehave on demand.
//!
//! It is a plain std `wasm32-wasip2` build and so imports `wasi:cli` beyond the
//! proxy world: serving it proves the host links all of WASI 0.2.
//!
//! Routed by a Spin application under a wildcard route, the path is the one
//! below the route (`spin-path-info`).
//!
//! | path | behaviour |
//! |---|---|
//! | `/counter` | increments a global and answers with its value |
//! | `/recurse` | GETs `http://self/recurse` (its own application, this path) and answers its body |
//! | `/trap` | traps before setting a response |
//! | `/no-response` | returns without setting a response |
//! | `/trap-after-headers` | sends the head and a first chunk, then traps |
//! | `/sleep?ms=N` | waits N ms on a host pollable, then answers |
//! | `/echo` | streams the request body back chunk by chunk |
//! | `/consume` | reads the whole request body, then answers with its length |
//! | `/stream?chunks=N&ms=M` | sends N chunks, M ms apart |
//! | `/loop` | spins forever without calling the host |
//! | `/alloc?mb=N` | allocates and touches N MiB, 1 MiB at a time, then answers |
//! | `/outbound?authority=HOST:PORT&scheme=S` | GETs `S://HOST:PORT/` (`http` unless S is `https`) and answers with its body, or 502 and the wasi:http error |
//! | `/big?kb=N` | answers with N KiB of `x`, written 4 KiB at a time |
//! | `/hoard?fields=N&kb=K` | builds N header sets of K KiB each and keeps them all, then answers how many it got (traps when the host refuses one) |
//! | `/set-method?len=N` | gives an outgoing request a method of N letters and answers `accepted` or `refused` |
//! | `/trailers` | answers `body` with a trailer `x-trailer: yes` |
//! | `/request` | describes the request as the guest sees it, one line per field |
//! | `/print?token=T&lines=N` | prints N lines naming T to stdout, each in two writes, and one to stderr |
//! | `/print-control` | prints a line holding a terminal escape and a carriage return that tries to start a forged log line |
//! | `/env?name=KEY` | answers with the guest's `KEY`, or 404 if unset |
//! | `/after?status=S&ms=M&token=T` | answers S with `done\n` and a `content-length`, finishes the body, then M ms later prints `after from T` to stdout |
//! | anything else | `testbed\n` |

use std::sync::atomic::{AtomicU32, Ordering};

wit_bindgen::generate!({
    path: "../../../wit",
    world: "wasi:http/proxy@0.2.12",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasi::io::streams::{OutputStream, StreamError};

/// Lives in the instance's memory: with a fresh instance per request it is
/// always 0 when a request starts.
static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Testbed;

impl Guest for Testbed {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        // Under an application's wildcard route, the path below it.
        let path_info = request
            .headers()
            .get("spin-path-info")
            .into_iter()
            .next()
            .and_then(|info| String::from_utf8(info).ok())
            .filter(|info| !info.is_empty());
        let path = path_info.as_deref().unwrap_or(path);
        match path {
            "/counter" => {
                let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
                respond(response_out, format!("{n}\n").as_bytes());
            }
            "/trap" => panic!("trap requested"),
            "/no-response" => {}
            "/trap-after-headers" => {
                let (_body, stream) = start_response(response_out);
                write_all(&stream, b"first chunk\n");
                panic!("trap requested after the headers");
            }
            "/sleep" => {
                let ms: u64 = query_param(query, "ms").unwrap_or(0);
                // Tests wait for this line to know the request is in flight.
                eprintln!("sleep: start {ms} ms");
                wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                respond(response_out, format!("slept {ms} ms\n").as_bytes());
            }
            "/echo" => echo(request, response_out),
            "/print" => {
                use std::io::Write;
                let token: String = query_param(query, "token").unwrap_or_default();
                let lines: u32 = query_param(query, "lines").unwrap_or(1);
                let mut out = std::io::stdout();
                for i in 0..lines {
                    // Two separate writes per line: the host must join them.
                    write!(out, "line {i} ").expect("stdout");
                    out.flush().expect("stdout");
                    writeln!(out, "from {token}").expect("stdout");
                    out.flush().expect("stdout");
                }
                eprintln!("stderr from {token}");
                respond(response_out, b"printed\n");
            }
            "/print-control" => {
                println!("red \x1b[31mtext\r2026-01-01T00:00:00Z ERROR forged");
                respond(response_out, b"printed\n");
            }
            "/request" => {
                let mut seen = format!(
                    "method {:?}\nscheme {:?}\nauthority {}\npath {}\n",
                    request.method(),
                    request.scheme(),
                    request.authority().unwrap_or_default(),
                    path_with_query,
                );
                for (name, value) in request.headers().entries() {
                    seen.push_str(&format!(
                        "header {name}: {}\n",
                        String::from_utf8_lossy(&value)
                    ));
                }
                respond(response_out, seen.as_bytes());
            }
            "/env" => {
                let name: String = query_param(query, "name").unwrap_or_default();
                match std::env::var(&name) {
                    Ok(value) => respond(response_out, format!("{value}\n").as_bytes()),
                    Err(_) => respond_with(response_out, 404, b"unset\n"),
                }
            }
            "/consume" => {
                let body = read_body(request.consume().expect("request body is taken once"));
                respond(response_out, format!("{} bytes\n", body.len()).as_bytes());
            }
            "/stream" => {
                let chunks: u32 = query_param(query, "chunks").unwrap_or(3);
                let ms: u64 = query_param(query, "ms").unwrap_or(100);
                let (out, stream) = start_response(response_out);
                for i in 0..chunks {
                    write_all(&stream, format!("chunk {i}\n").as_bytes());
                    wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                }
                drop(stream);
                OutgoingBody::finish(out, None).expect("finishing the body");
            }
            "/big" => {
                let kb: usize = query_param(query, "kb").unwrap_or(1);
                let (out, stream) = start_response(response_out);
                let block = [b'x'; 4096];
                for _ in 0..kb / 4 {
                    write_all(&stream, &block);
                }
                write_all(&stream, &block[..(kb % 4) * 1024]);
                drop(stream);
                OutgoingBody::finish(out, None).expect("finishing the body");
            }
            "/hoard" => {
                let count: usize = query_param(query, "fields").unwrap_or(1);
                let kb: usize = query_param(query, "kb").unwrap_or(1);
                // Header values of 1 KiB each, under distinct names so none
                // replaces another.
                let value = vec![b'h'; 1024];
                let mut kept = Vec::with_capacity(count);
                for _ in 0..count {
                    let fields = Fields::new();
                    for i in 0..kb {
                        if fields.append(&format!("x-hoard-{i}"), &value).is_err() {
                            break;
                        }
                    }
                    kept.push(fields);
                }
                respond(response_out, format!("kept {}\n", kept.len()).as_bytes());
            }
            "/set-method" => {
                let len: usize = query_param(query, "len").unwrap_or(1);
                let request = OutgoingRequest::new(Fields::new());
                let method = wasi::http::types::Method::Other("X".repeat(len));
                let answer = match request.set_method(&method) {
                    Ok(()) => "accepted\n",
                    Err(()) => "refused\n",
                };
                respond(response_out, answer.as_bytes());
            }
            "/trailers" => {
                let (out, stream) = start_response(response_out);
                write_all(&stream, b"body\n");
                drop(stream);
                let trailers = Fields::from_list(&[("x-trailer".to_string(), b"yes".to_vec())])
                    .expect("static trailers are valid");
                OutgoingBody::finish(out, Some(trailers)).expect("finishing the body");
            }
            "/loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mb: usize = query_param(query, "mb").unwrap_or(1);
                let block = std::hint::black_box(vec![1u8; mb << 20]);
                respond(
                    response_out,
                    format!("allocated {} MiB\n", block.len() >> 20).as_bytes(),
                );
            }
            "/recurse" => {
                // Calls its own application at this same path, forever: only
                // the host's limits end the chain.
                match fetch_path("self", "/recurse") {
                    Ok(body) => respond(response_out, &body),
                    Err(err) => respond_with(response_out, 502, format!("{err}\n").as_bytes()),
                }
            }
            "/outbound" => {
                let authority: String = query_param(query, "authority").unwrap_or_default();
                let scheme = match query_param::<String>(query, "scheme").as_deref() {
                    Some("https") => Scheme::Https,
                    _ => Scheme::Http,
                };
                match fetch_url(&scheme, &authority, "/") {
                    Ok(body) => respond(response_out, &body),
                    Err(err) => respond_with(response_out, 502, format!("{err}\n").as_bytes()),
                }
            }
            "/after" => {
                let status: u16 = query_param(query, "status").unwrap_or(200);
                let ms: u64 = query_param(query, "ms").unwrap_or(200);
                let token: String = query_param(query, "token").unwrap_or_default();
                // 204 and 304 have no body; every other status says how long
                // its body is, so the client knows it is complete at once.
                let body: &[u8] = if matches!(status, 204 | 304) {
                    b""
                } else {
                    b"done\n"
                };
                let mut headers = vec![("content-type".to_string(), b"text/plain".to_vec())];
                if !body.is_empty() {
                    headers.push((
                        "content-length".to_string(),
                        body.len().to_string().into_bytes(),
                    ));
                }
                let response = OutgoingResponse::new(
                    Fields::from_list(&headers).expect("static headers are valid"),
                );
                response.set_status_code(status).expect("valid status");
                let out = response.body().expect("body is taken once");
                ResponseOutparam::set(response_out, Ok(response));
                let stream = out.write().expect("stream is taken once");
                write_all(&stream, body);
                drop(stream);
                OutgoingBody::finish(out, None).expect("finishing the body");
                // Work after the answer: analytics, an audit line.
                wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                println!("after from {token}");
            }
            _ => respond(response_out, b"testbed\n"),
        }
    }
}

/// Answers 200 with `body` in one go.
fn respond(response_out: ResponseOutparam, body: &[u8]) {
    respond_with(response_out, 200, body);
}

fn respond_with(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let (out, stream) = start_response_with(response_out, status);
    write_all(&stream, body);
    drop(stream);
    OutgoingBody::finish(out, None).expect("finishing the body");
}

/// Sets a 200 response with no content-length, so the body can stream.
fn start_response(response_out: ResponseOutparam) -> (OutgoingBody, OutputStream) {
    start_response_with(response_out, 200)
}

fn start_response_with(
    response_out: ResponseOutparam,
    status: u16,
) -> (OutgoingBody, OutputStream) {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .expect("static headers are valid");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let body = response.body().expect("body is taken once");
    ResponseOutparam::set(response_out, Ok(response));
    let stream = body.write().expect("stream is taken once");
    (body, stream)
}

/// Writes each chunk of the request body back as soon as it arrives, so a
/// client can see the two directions stream.
fn echo(request: IncomingRequest, response_out: ResponseOutparam) {
    let incoming = request.consume().expect("request body is taken once");
    let input = incoming.stream().expect("request stream is taken once");
    let (out, stream) = start_response(response_out);
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(chunk) => write_all(&stream, &chunk),
            Err(StreamError::Closed) => break,
            Err(err) => panic!("reading the request body: {err:?}"),
        }
    }
    drop(stream);
    OutgoingBody::finish(out, None).expect("finishing the body");
}

/// Reads an incoming body to its end; panics (traps) if the stream fails.
fn read_body(body: IncomingBody) -> Vec<u8> {
    let input = body.stream().expect("body stream is taken once");
    let mut bytes = Vec::new();
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(err) => panic!("reading a body: {err:?}"),
        }
    }
    bytes
}

/// `GET http://{authority}{path}`, as [`fetch_url`].
fn fetch_path(authority: &str, path: &str) -> Result<Vec<u8>, String> {
    fetch_url(&Scheme::Http, authority, path)
}

/// `GET {scheme}://{authority}{path}` through `wasi:http/outgoing-handler`;
/// the error is the wasi:http error code, printed.
fn fetch_url(scheme: &Scheme, authority: &str, path: &str) -> Result<Vec<u8>, String> {
    let request = OutgoingRequest::new(Fields::new());
    request.set_scheme(Some(scheme)).expect("valid scheme");
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("bad authority {authority:?}"))?;
    request.set_path_with_query(Some(path)).expect("valid path");
    let pending = outgoing_handler::handle(request, None).map_err(|code| format!("{code:?}"))?;
    pending.subscribe().block();
    let response = pending
        .get()
        .expect("ready after block")
        .expect("taken once")
        .map_err(|code| format!("{code:?}"))?;
    Ok(read_body(
        response.consume().expect("response body is taken once"),
    ))
}

/// `blocking-write-and-flush` takes at most 4096 bytes per call.
fn write_all(stream: &OutputStream, bytes: &[u8]) {
    for chunk in bytes.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .expect("writing the response body");
    }
}

fn query_param<T: std::str::FromStr>(query: &str, name: &str) -> Option<T> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
}

export!(Testbed);
