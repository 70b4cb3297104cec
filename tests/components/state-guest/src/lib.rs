//! A test component with configuration (`wasi:config/store`, what
//! `--config` gives it) and state (`wasi:keyvalue`, what `--keyvalue`
//! gives it). `STORE` below is the `store` query parameter, `""` (the
//! default store) when absent.
//!
//! | path | answer |
//! |---|---|
//! | `/config?key=K` | 200 and K's value, or 404 and `none` when K is unset |
//! | `/config-all` | every `key=value`, one per line, sorted |
//! | `/count` | increments `counter` in STORE by one and answers the new value |
//! | `/get?key=K` | K's value in STORE, or 404 |
//! | `POST /set?key=K` | stores the request body at K in STORE |
//! | `/get-many?keys=K1,K2,...` | the values found at those keys in STORE, in one batch call, each as `K=LEN` on a line |
//! | `/list` | the first page of STORE's keys (`list-keys`), one per line |
//! | `/set-many?keys=N` | stores `v` at N keys `k0`..`kN-1` in STORE in one batch call |
//! | `/leak?buckets=N` | opens STORE N times without ever closing it, then answers how many opened |
//!
//! A store error is answered 503 with the error, as a real guest would
//! report a backend it cannot reach.

wit_bindgen::generate!({
    path: ["../../../wit", "wit"],
    world: "test:state-guest/guest",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::config0_2_0_rc_1::store as config;
use wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::StreamError;
use wasi::keyvalue0_2_0_draft::{atomics, batch, store};

struct StateGuest;

impl Guest for StateGuest {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_default()
                .to_string()
        };
        let store_name = param("store");
        let (status, body) = match path {
            "/config" => match config::get(&param("key")) {
                Ok(Some(value)) => (200, value.into_bytes()),
                Ok(None) => (404, b"none".to_vec()),
                Err(err) => (500, format!("{err:?}").into_bytes()),
            },
            "/config-all" => match config::get_all() {
                Ok(mut pairs) => {
                    pairs.sort();
                    let lines: String = pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                    (200, lines.into_bytes())
                }
                Err(err) => (500, format!("{err:?}").into_bytes()),
            },
            "/count" => answer(store::open(&store_name).and_then(|bucket| {
                atomics::increment(&bucket, "counter", 1).map(|n| n.to_string().into_bytes())
            })),
            "/get" => match store::open(&store_name).and_then(|bucket| bucket.get(&param("key"))) {
                Ok(Some(value)) => (200, value),
                Ok(None) => (404, b"none".to_vec()),
                Err(err) => (503, format!("error: {err:?}").into_bytes()),
            },
            "/set" => {
                let value = read_body(request);
                answer(
                    store::open(&store_name)
                        .and_then(|bucket| bucket.set(&param("key"), &value))
                        .map(|()| b"stored".to_vec()),
                )
            }
            "/get-many" => {
                let keys: Vec<String> = param("keys").split(',').map(str::to_string).collect();
                answer(
                    store::open(&store_name)
                        .and_then(|bucket| batch::get_many(&bucket, &keys))
                        .map(|found| {
                            let lines: String = found
                                .into_iter()
                                .flatten()
                                .map(|(key, value)| format!("{key}={}\n", value.len()))
                                .collect();
                            lines.into_bytes()
                        }),
                )
            }
            "/list" => answer(
                store::open(&store_name)
                    .and_then(|bucket| bucket.list_keys(None))
                    .map(|page| {
                        let lines: String =
                            page.keys.iter().map(|key| format!("{key}\n")).collect();
                        lines.into_bytes()
                    }),
            ),
            "/set-many" => {
                let n: usize = param("keys").parse().unwrap_or(0);
                let pairs: Vec<(String, Vec<u8>)> =
                    (0..n).map(|i| (format!("k{i}"), b"v".to_vec())).collect();
                answer(
                    store::open(&store_name)
                        .and_then(|bucket| batch::set_many(&bucket, &pairs))
                        .map(|()| format!("stored {n}").into_bytes()),
                )
            }
            "/leak" => {
                let wanted: u32 = param("buckets").parse().unwrap_or(0);
                let mut opened = 0;
                let mut failure = String::new();
                for _ in 0..wanted {
                    match store::open(&store_name) {
                        Ok(bucket) => {
                            // Never closed: the host must reclaim it with the
                            // instance.
                            std::mem::forget(bucket);
                            opened += 1;
                        }
                        Err(err) => {
                            failure = format!(", then: {err:?}");
                            break;
                        }
                    }
                }
                (200, format!("opened {opened}{failure}").into_bytes())
            }
            _ => (404, b"no such path".to_vec()),
        };
        respond(response_out, status, &body);
    }
}

fn answer(result: Result<Vec<u8>, store::Error>) -> (u16, Vec<u8>) {
    match result {
        Ok(body) => (200, body),
        Err(err) => (503, format!("error: {err:?}").into_bytes()),
    }
}

fn read_body(request: IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("the body, once");
    let stream = body.stream().expect("the stream, once");
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(err) => panic!("reading the body: {err:?}"),
        }
    }
    drop(stream);
    IncomingBody::finish(body);
    bytes
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("the body, once");
    ResponseOutparam::set(response_out, Ok(response));
    let stream = outgoing.write().expect("the stream, once");
    for chunk in body.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .expect("writing the body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

export!(StateGuest);
