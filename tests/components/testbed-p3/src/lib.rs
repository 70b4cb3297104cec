//! The WASI 0.3 test component: behaves as `testbed` (the 0.2 one) does, by
//! request path, so the end-to-end tests can run the same checks against a
//! `wasi:http/handler@0.3.0` guest. Built for `wasm32-unknown-unknown` and
//! wrapped, like `hello-p3`; it prints through `wasi:cli` 0.3 streams.
//!
//! | path | behaviour |
//! |---|---|
//! | `/counter` | increments a global and answers with its value |
//! | `/trap` | traps before returning a response |
//! | `/trap-after-headers` | returns the response, writes a first chunk, then traps |
//! | `/sleep?ms=N` | prints `sleep: start N ms` to stderr, waits N ms, then answers |
//! | `/echo` | streams the request body back chunk by chunk |
//! | `/stream?chunks=N&ms=M` | sends N chunks, M ms apart |
//! | `/big?kb=N` | answers with N KiB of `x` |
//! | `/loop` | spins forever without calling the host |
//! | `/alloc?mb=N` | allocates and touches N MiB, then answers |
//! | `/outbound?authority=HOST:PORT` | GETs `http://HOST:PORT/` through `wasi:http/client`, answers its body or 502 and the error |
//! | `/set-method?len=N` | gives an outgoing request a method of N letters and answers `accepted` or `refused` |
//! | `/trailers` | answers `body` with a trailer `x-trailer: yes` |
//! | `/request` | describes the request as the guest sees it |
//! | `/print?token=T&lines=N` | prints N lines naming T to stdout, and one to stderr |
//! | `/env?name=KEY` | answers with the guest's `KEY`, or 404 if unset |
//! | `/after?status=S&ms=M&token=T` | answers S with `done\n` and a `content-length`, finishes the body, then M ms later prints `after from T` to stdout |
//! | `/config?key=K` | answers with K's value from `wasi:config/store` (a 0.2 interface, which 0.3 components import as is), or 404 and `none` |
//! | anything else | `testbed\n` |

use std::sync::atomic::{AtomicU32, Ordering};

use wasip3::clocks::monotonic_clock;
use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wasip3::wit_bindgen::{self, StreamReader, StreamResult};
use wasip3::{wit_future, wit_stream};

/// `wasi:config` has no 0.3 version: 0.3 components import the 0.2 one.
mod config {
    wit_bindgen::generate!({
        path: "../../../wit/deps/config",
        world: "wasi:config/imports",
    });
    pub use self::wasi::config::store::get;
}

/// Lives in the instance's memory: with a fresh instance per request it is
/// always 0 when a request starts.
static COUNTER: AtomicU32 = AtomicU32::new(0);

struct Testbed;

impl wasip3::exports::http::handler::Guest for Testbed {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path_with_query = request.get_path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        let query = query.to_string();
        match path {
            "/counter" => {
                let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
                Ok(respond(200, format!("{n}\n").into_bytes()))
            }
            "/trap" => panic!("trap requested"),
            "/trap-after-headers" => Ok(streaming(async |body| {
                body.write_all(b"first chunk\n".to_vec()).await;
                panic!("trap requested after the headers");
            })),
            "/sleep" => {
                let ms: u64 = query_param(&query, "ms").unwrap_or(0);
                // Tests wait for this line to know the request is in flight.
                print(Output::Stderr, format!("sleep: start {ms} ms\n")).await;
                monotonic_clock::wait_for(ms * 1_000_000).await;
                Ok(respond(200, format!("slept {ms} ms\n").into_bytes()))
            }
            "/echo" => {
                let (done, body_read) = wit_future::new(|| Ok(()));
                let (mut input, _trailers) = Request::consume_body(request, body_read);
                Ok(streaming(async move |body| {
                    loop {
                        let (status, chunk) = input.read(Vec::with_capacity(64 * 1024)).await;
                        if !chunk.is_empty() && !body.write_all(chunk).await.is_empty() {
                            break;
                        }
                        if matches!(status, StreamResult::Dropped) {
                            break;
                        }
                    }
                    drop(done);
                }))
            }
            "/stream" => {
                let chunks: u32 = query_param(&query, "chunks").unwrap_or(3);
                let ms: u64 = query_param(&query, "ms").unwrap_or(100);
                Ok(streaming(async move |body| {
                    for i in 0..chunks {
                        body.write_all(format!("chunk {i}\n").into_bytes()).await;
                        monotonic_clock::wait_for(ms * 1_000_000).await;
                    }
                }))
            }
            "/big" => {
                let kb: usize = query_param(&query, "kb").unwrap_or(1);
                Ok(streaming(async move |body| {
                    for _ in 0..kb / 4 {
                        body.write_all(vec![b'x'; 4096]).await;
                    }
                    body.write_all(vec![b'x'; (kb % 4) * 1024]).await;
                }))
            }
            "/trailers" => {
                let headers =
                    Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
                        .expect("static headers are valid");
                let (mut body, contents) = wit_stream::new();
                let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
                let (response, _sent) = Response::new(headers, Some(contents), trailers_rx);
                wit_bindgen::spawn(async move {
                    body.write_all(b"body\n".to_vec()).await;
                    drop(body);
                    let fields = Fields::from_list(&[("x-trailer".to_string(), b"yes".to_vec())])
                        .expect("static trailers are valid");
                    let _ = trailers.write(Ok(Some(fields))).await;
                });
                Ok(response)
            }
            "/loop" => {
                let mut n = 0u64;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            "/alloc" => {
                let mb: usize = query_param(&query, "mb").unwrap_or(1);
                let block = std::hint::black_box(vec![1u8; mb << 20]);
                Ok(respond(
                    200,
                    format!("allocated {} MiB\n", block.len() >> 20).into_bytes(),
                ))
            }
            "/outbound" => {
                let authority: String = query_param(&query, "authority").unwrap_or_default();
                match fetch(&authority).await {
                    Ok(body) => Ok(respond(200, body)),
                    Err(err) => Ok(respond(502, format!("{err}\n").into_bytes())),
                }
            }
            "/set-method" => {
                let len: usize = query_param(&query, "len").unwrap_or(1);
                let (trailers, no_trailers) = wit_future::new(|| Ok(None));
                drop(trailers);
                let (outgoing, _sent) = Request::new(Fields::new(), None, no_trailers, None);
                let answer = match outgoing.set_method(&Method::Other("X".repeat(len))) {
                    Ok(()) => "accepted\n",
                    Err(()) => "refused\n",
                };
                Ok(respond(200, answer.as_bytes().to_vec()))
            }
            "/request" => {
                let mut seen = format!(
                    "method {:?}\nscheme {:?}\nauthority {}\npath {}\n",
                    request.get_method(),
                    request.get_scheme(),
                    request.get_authority().unwrap_or_default(),
                    path_with_query,
                );
                for (name, value) in request.get_headers().copy_all() {
                    seen.push_str(&format!(
                        "header {name}: {}\n",
                        String::from_utf8_lossy(&value)
                    ));
                }
                Ok(respond(200, seen.into_bytes()))
            }
            "/print" => {
                let token: String = query_param(&query, "token").unwrap_or_default();
                let lines: u32 = query_param(&query, "lines").unwrap_or(1);
                let mut text = String::new();
                for i in 0..lines {
                    text.push_str(&format!("line {i} from {token}\n"));
                }
                print(Output::Stdout, text).await;
                print(Output::Stderr, format!("stderr from {token}\n")).await;
                Ok(respond(200, b"printed\n".to_vec()))
            }
            "/env" => {
                let name: String = query_param(&query, "name").unwrap_or_default();
                match wasip3::cli::environment::get_environment()
                    .into_iter()
                    .find(|(key, _)| *key == name)
                {
                    Some((_, value)) => Ok(respond(200, format!("{value}\n").into_bytes())),
                    None => Ok(respond(404, b"unset\n".to_vec())),
                }
            }
            "/config" => {
                let key: String = query_param(&query, "key").unwrap_or_default();
                match config::get(&key) {
                    Ok(Some(value)) => Ok(respond(200, value.into_bytes())),
                    Ok(None) => Ok(respond(404, b"none".to_vec())),
                    Err(err) => Ok(respond(500, format!("{err:?}").into_bytes())),
                }
            }
            "/after" => {
                let status: u16 = query_param(&query, "status").unwrap_or(200);
                let ms: u64 = query_param(&query, "ms").unwrap_or(200);
                let token: String = query_param(&query, "token").unwrap_or_default();
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
                let (mut writer, contents) = wit_stream::new();
                let (trailers, no_trailers) = wit_future::new(|| Ok(None));
                drop(trailers);
                let (response, _sent) = Response::new(
                    Fields::from_list(&headers).expect("static headers are valid"),
                    Some(contents),
                    no_trailers,
                );
                response.set_status_code(status).expect("a valid status");
                let body = body.to_vec();
                wit_bindgen::spawn(async move {
                    writer.write_all(body).await;
                    drop(writer);
                    // Work after the answer: analytics, an audit line.
                    monotonic_clock::wait_for(ms * 1_000_000).await;
                    print(Output::Stdout, format!("after from {token}\n")).await;
                });
                Ok(response)
            }
            _ => Ok(respond(200, b"testbed\n".to_vec())),
        }
    }
}

/// A `text/plain` response with `status`, whose body `write` writes after
/// `handle` has returned.
fn streaming(write: impl AsyncFnOnce(&mut wit_bindgen::StreamWriter<u8>) + 'static) -> Response {
    streaming_with(200, write)
}

fn streaming_with(
    status: u16,
    write: impl AsyncFnOnce(&mut wit_bindgen::StreamWriter<u8>) + 'static,
) -> Response {
    let headers = Fields::from_list(&[("content-type".to_string(), b"text/plain".to_vec())])
        .expect("static headers are valid");
    let (mut body, contents) = wit_stream::new();
    let (trailers, no_trailers) = wit_future::new(|| Ok(None));
    drop(trailers);
    let (response, _sent) = Response::new(headers, Some(contents), no_trailers);
    response.set_status_code(status).expect("a valid status");
    wit_bindgen::spawn(async move { write(&mut body).await });
    response
}

/// A response with `body`, written whole.
fn respond(status: u16, body: Vec<u8>) -> Response {
    streaming_with(status, async move |writer| {
        writer.write_all(body).await;
    })
}

enum Output {
    Stdout,
    Stderr,
}

/// Writes `text` to the guest's stdout or stderr and waits until the host
/// has taken it.
async fn print(output: Output, text: String) {
    let (mut writer, reader) = wit_stream::new();
    let done = match output {
        Output::Stdout => wasip3::cli::stdout::write_via_stream(reader),
        Output::Stderr => wasip3::cli::stderr::write_via_stream(reader),
    };
    writer.write_all(text.into_bytes()).await;
    drop(writer);
    let _ = done.await;
}

/// `GET http://{authority}/` through `wasi:http/client`; the error is the
/// wasi:http error code, printed.
async fn fetch(authority: &str) -> Result<Vec<u8>, String> {
    let (trailers, no_trailers) = wit_future::new(|| Ok(None));
    drop(trailers);
    let (request, _sent) = Request::new(Fields::new(), None, no_trailers, None);
    request.set_method(&Method::Get).expect("valid method");
    request
        .set_scheme(Some(&Scheme::Http))
        .expect("valid scheme");
    request
        .set_authority(Some(authority))
        .map_err(|()| format!("bad authority {authority:?}"))?;
    request.set_path_with_query(Some("/")).expect("valid path");
    let response = client::send(request)
        .await
        .map_err(|code| format!("{code:?}"))?;
    let (done, read) = wit_future::new(|| Ok(()));
    let (body, _trailers): (StreamReader<u8>, _) = Response::consume_body(response, read);
    let bytes = body.collect().await;
    drop(done);
    Ok(bytes)
}

fn query_param<T: std::str::FromStr>(query: &str, name: &str) -> Option<T> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(key, _)| *key == name)
        .and_then(|(_, value)| value.parse().ok())
}

wasip3::http::service::export!(Testbed);
