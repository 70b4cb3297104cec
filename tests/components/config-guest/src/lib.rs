//! A test component that reads its configuration through `wasi:config/store`
//! (what `--config KEY=VALUE` gives it):
//!
//! | path | answer |
//! |---|---|
//! | `/config?key=K` | 200 and K's value, or 404 and `none` when K is unset |
//! | `/config-all` | every `key=value`, one per line, sorted |

wit_bindgen::generate!({
    path: ["../../../wit", "wit"],
    world: "test:config-guest/guest",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest;
use wasi::config::store;
use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct ConfigGuest;

impl Guest for ConfigGuest {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = path_with_query
            .split_once('?')
            .unwrap_or((&path_with_query, ""));
        let (status, body) = match path {
            "/config" => {
                let key = query.strip_prefix("key=").unwrap_or_default();
                match store::get(key) {
                    Ok(Some(value)) => (200, value),
                    Ok(None) => (404, "none".to_string()),
                    Err(err) => (500, format!("{err:?}")),
                }
            }
            "/config-all" => match store::get_all() {
                Ok(mut pairs) => {
                    pairs.sort();
                    let lines: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
                    (200, lines.concat())
                }
                Err(err) => (500, format!("{err:?}")),
            },
            _ => (404, "no such path".to_string()),
        };
        respond(response_out, status, body.as_bytes());
    }
}

fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let response = OutgoingResponse::new(Fields::new());
    response.set_status_code(status).expect("a valid status");
    let outgoing = response.body().expect("the body, once");
    ResponseOutparam::set(response_out, Ok(response));
    let stream = outgoing.write().expect("the stream, once");
    stream
        .blocking_write_and_flush(body)
        .expect("a short body fits one write");
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finishing the body");
}

export!(ConfigGuest);
