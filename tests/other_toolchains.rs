//! Components built by the toolchains people use, not by us: a JavaScript
//! guest (componentize-js, the StarlingMonkey engine) and a Python guest
//! (componentize-py, CPython), from `tests/components/js-guest` and
//! `python-guest`, built by `make real-guests` with pinned tool versions.
//! Each is tested for what its users rely on: the seed's answer, a large body
//! echoed byte for byte, the request's headers, and a guest error turned 500.

use bytes::Bytes;
use e2e::{Conn, Server, assert_hello, get};
use http_body_util::Full;
use hyper::{Request, StatusCode};

/// The guests from other toolchains, by component name.
const GUESTS: [&str; 2] = ["js-guest", "python-guest"];

/// `GET /` gets exactly the seed's response, over and over on one
/// connection: every request gets a fresh instance (a JS guest could not
/// answer twice from one, as `respondWith` can be called once).
#[tokio::test]
async fn hello_from_every_toolchain() {
    for guest in GUESTS {
        println!("with {guest}");
        let server = Server::start(guest, &[]);
        let mut conn = Conn::http1(server.addr).await;
        for _ in 0..5 {
            assert_hello(&conn.send("GET", "/", "").await);
        }
    }
}

/// `POST /echo` with `body`.
async fn echo(conn: &mut Conn, body: &Bytes) -> e2e::Reply {
    let request = Request::post("/echo")
        .header("host", "test.local")
        .body(Full::new(body.clone()))
        .unwrap();
    conn.try_exchange(request).await.expect("echo")
}

/// A 1 MiB body of every byte value comes back unchanged, over HTTP/1.1 and
/// HTTP/2.
#[tokio::test]
async fn a_mebibyte_is_echoed_byte_for_byte() {
    let body: Bytes = (0..1 << 20).map(|i: u32| (i * 7 + i / 256) as u8).collect();
    for guest in GUESTS {
        println!("with {guest}");
        let server = Server::start(guest, &[]);
        for mut conn in [
            Conn::http1(server.addr).await,
            Conn::http2(server.addr).await,
        ] {
            let reply = echo(&mut conn, &body).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.body.len(), body.len());
            assert!(
                reply.body == body,
                "{guest}: the echo differs from the body sent"
            );
        }
    }
}

/// The guest sees the headers the client sent.
#[tokio::test]
async fn the_guest_sees_the_request_headers() {
    for guest in GUESTS {
        println!("with {guest}");
        let server = Server::start(guest, &[]);
        let request = Request::get("/headers")
            .header("host", "test.local")
            .header("x-probe", "forty-two")
            .header("accept-language", "fr")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let reply = Conn::http1(server.addr)
            .await
            .try_exchange(request)
            .await
            .expect("headers");
        assert_eq!(reply.status, StatusCode::OK);
        let lines: Vec<&str> = reply.text().lines().collect();
        for expected in ["x-probe: forty-two", "accept-language: fr"] {
            assert!(lines.contains(&expected), "{guest} saw {lines:?}");
        }
    }
}

/// A handler that throws (JS) or raises (Python) gets the client a 500, and
/// the next request is served as usual.
#[tokio::test]
async fn a_guest_error_is_a_500() {
    for guest in GUESTS {
        println!("with {guest}");
        let server = Server::start(guest, &[]);
        let reply = get(server.addr, "/error").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{guest}");
        assert_hello(&get(server.addr, "/").await);
    }
}

/// With `--processes`, an interpreter's memory is reset by restoring only
/// the pages a request wrote (`pool.rs`). Every request must still start
/// from the pristine image: bodies of different sizes and contents echoed
/// in turn, each between hello answers and guest errors, come back exact.
#[tokio::test]
async fn single_threaded_processes_start_every_request_afresh() {
    for guest in GUESTS {
        println!("with {guest}");
        let server = Server::start(guest, &["--processes", "2"]);
        let mut conn = Conn::http1(server.addr).await;
        for round in 0..20u32 {
            let body: Bytes = (0..(round + 1) * 5_000)
                .map(|i| (i * (round + 3) + round) as u8)
                .collect();
            let reply = echo(&mut conn, &body).await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(
                reply.body == body,
                "{guest}, round {round}: the echo differs"
            );
            assert_eq!(
                conn.send("GET", "/error", "").await.status,
                StatusCode::INTERNAL_SERVER_ERROR
            );
            assert_hello(&conn.send("GET", "/", "").await);
        }
    }
}
