//! Hostile clients: slow, silent, malformed, oversized or vanishing clients
//! are answered or cut off, and never hold the server's resources for long.

use std::time::{Duration, Instant};

use e2e::{Conn, RawClient, Server, TESTBEDS, get};
use hyper::StatusCode;

/// A client that connects and sends nothing is closed after `--idle-timeout`.
#[tokio::test]
async fn silent_connection_is_closed() {
    let server = Server::start("hello", &["--idle-timeout", "300ms"]);
    let started = Instant::now();
    let mut client = RawClient::connect(server.addr).await;
    assert_eq!(client.read_to_close().await, "");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

/// An HTTP/2 connection left idle after its requests is closed after
/// `--idle-timeout` too (hyper has no such timeout for HTTP/2).
#[tokio::test]
async fn idle_http2_connection_is_closed() {
    let server = Server::start("hello", &["--idle-timeout", "300ms"]);
    let mut conn = Conn::http2(server.addr).await;
    assert_eq!(conn.send("GET", "/", "").await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        conn.try_send("GET", "/", "").await.is_err(),
        "the idle HTTP/2 connection is still open"
    );
}

/// A client sending its headers a byte at a time is closed after
/// `--header-read-timeout`, without its request being served.
#[tokio::test]
async fn slow_headers_are_cut_off() {
    let server = Server::start(
        "hello",
        &["--header-read-timeout", "500ms", "--idle-timeout", "60s"],
    );
    let mut client = RawClient::connect(server.addr).await;
    let started = Instant::now();
    let request = b"GET / HTTP/1.1\r\nhost: test\r\nx-slow: ";
    for byte in request.iter().chain(b"a".repeat(100).iter()) {
        if client.send(&[*byte]).await.is_err() || started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = client.read_to_close().await;
    assert!(!answer.contains("Hello World"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed only after {:?}",
        started.elapsed()
    );
}

/// Sends `request` and returns everything the server answered before closing.
async fn exchange(server: &Server, request: &[u8]) -> String {
    let mut client = RawClient::connect(server.addr).await;
    client.send(request).await.expect("sending the request");
    client.read_to_close().await
}

/// A malformed request line gets 400 and the connection is closed.
#[tokio::test]
async fn bad_request_line_is_400() {
    let server = Server::start("hello", &[]);
    let answer = exchange(&server, b"GARBAGE\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

/// A malformed header gets 400 and the connection is closed.
#[tokio::test]
async fn bad_header_is_400() {
    let server = Server::start("hello", &[]);
    let answer = exchange(
        &server,
        b"GET / HTTP/1.1\r\nhost: test\r\nno colon here\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

/// Content-Length together with Transfer-Encoding, the classic request
/// smuggling attempt: hyper lets Transfer-Encoding win, drops Content-Length
/// and closes the connection after the response (RFC 9112, 6.3), so the
/// request hidden in the body is never served.
#[tokio::test]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let server = Server::start("testbed", &[]);
    let answer = exchange(
        &server,
        b"POST /consume HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /counter HTTP/1.1\r\nhost: test\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(
        answer.contains("0 bytes\n"),
        "the guest saw more than the chunked body: {answer}"
    );
    assert_eq!(
        answer.matches("HTTP/1.1").count(),
        1,
        "the smuggled request was served: {answer}"
    );
}

/// A request head larger than `--max-header-size` gets 431.
#[tokio::test]
async fn oversized_headers_are_431() {
    let server = Server::start("hello", &["--max-header-size", "16KiB"]);
    let mut request = b"GET / HTTP/1.1\r\nhost: test\r\nx-big: ".to_vec();
    request.extend(b"a".repeat(32 * 1024));
    request.extend(b"\r\n\r\n");
    let answer = exchange(&server, &request).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}

/// A body whose content-length is over `--max-body` gets 413 up front.
#[tokio::test]
async fn declared_body_over_the_limit_is_413() {
    let server = Server::start("testbed", &["--max-body", "1KiB"]);
    let mut conn = Conn::http1(server.addr).await;
    let reply = conn.send("POST", "/consume", &"a".repeat(2048)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    let reply = conn.send("POST", "/consume", &"a".repeat(1024)).await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "1024 bytes\n")
    );
}

/// A chunked body that grows past `--max-body` gets 413, and the guest never
/// gets more than the limit (it would have answered with the byte count).
#[tokio::test]
async fn streamed_body_over_the_limit_is_413() {
    let server = Server::start("testbed", &["--max-body", "1KiB"]);
    let mut request =
        b"POST /consume HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend(b"200\r\n");
        request.extend(b"a".repeat(512));
        request.extend(b"\r\n");
    }
    request.extend(b"0\r\n\r\n");
    let mut client = RawClient::connect(server.addr).await;
    client.send(&request).await.unwrap();
    let answer = client.read_to_close().await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(!answer.contains("bytes\n"), "{answer}");
}

/// A server with a single instance slot and a 2 s queue timeout.
fn one_slot_server(testbed: &str) -> Server {
    Server::start(
        testbed,
        &["--max-concurrent-requests", "1", "--queue-timeout", "2s"],
    )
}

/// Asserts the single instance slot is free again: a new request is served.
/// Had the abandoned guest kept its instance (it would run for a minute), the
/// request would get 503 after the queue timeout.
async fn assert_slot_free(server: &Server) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply = get(server.addr, "/counter").await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "1\n"));
}

/// A client that disconnects mid-request drops its instance.
#[tokio::test]
async fn disconnect_mid_request_frees_the_instance() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = one_slot_server(testbed);
        let mut client = RawClient::connect(server.addr).await;
        client
            .send(b"GET /sleep?ms=60000 HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        server.wait_for_log("sleep: start 60000 ms").await;
        drop(client);
        assert_slot_free(&server).await;
    }
}

/// A client that disconnects mid-response drops its instance too.
#[tokio::test]
async fn disconnect_mid_response_frees_the_instance() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = one_slot_server(testbed);
        let mut client = RawClient::connect(server.addr).await;
        client
            .send(b"GET /stream?chunks=600&ms=100 HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        assert!(client.read_some().await.starts_with("HTTP/1.1 200 "));
        drop(client);
        assert_slot_free(&server).await;
    }
}
