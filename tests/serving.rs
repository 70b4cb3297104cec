//! The hello components, WASI 0.2 and 0.3, served the way the seed is: exact answers, over
//! keep-alive HTTP/1.1, HTTP/2 and many connections at once; and bodies that
//! stream both ways.

use std::time::Duration;

use e2e::{Conn, HELLOS, STEP_TIMEOUT, Server, TESTBEDS, assert_hello, get};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /` gets exactly the seed's response.
#[tokio::test]
async fn get_root_is_hello_world() {
    for hello in HELLOS {
        println!("with {hello}");
        let server = Server::start(hello, &[]);
        assert_hello(&get(server.addr, "/").await);
    }
}

/// Any method and path get the same response.
#[tokio::test]
async fn post_any_path_is_hello_world() {
    for hello in HELLOS {
        println!("with {hello}");
        let server = Server::start(hello, &[]);
        let mut conn = Conn::http1(server.addr).await;
        assert_hello(&conn.send("POST", "/any/path", "some body").await);
        assert_hello(&conn.send("PUT", "/x?y=z", "").await);
    }
}

/// 1,000 requests over 4 keep-alive connections are all answered correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_requests_over_keep_alive() {
    for hello in HELLOS {
        println!("with {hello}");
        let server = Server::start(hello, &[]);
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let addr = server.addr;
                tokio::spawn(async move {
                    let mut conn = Conn::http1(addr).await;
                    for _ in 0..250 {
                        assert_hello(&conn.send("GET", "/", "").await);
                    }
                })
            })
            .collect();
        for client in clients {
            client.await.expect("client task");
        }
    }
}

/// 100 requests on 100 connections in parallel are all answered correctly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_parallel_connections() {
    for hello in HELLOS {
        println!("with {hello}");
        let server = Server::start(hello, &[]);
        let clients: Vec<_> = (0..100)
            .map(|_| {
                let addr = server.addr;
                tokio::spawn(async move { get(addr, "/").await })
            })
            .collect();
        for client in clients {
            assert_hello(&client.await.expect("client task"));
        }
    }
}

/// HTTP/2 with prior knowledge, several streams on one connection, gets the
/// same answer.
#[tokio::test]
async fn http2_prior_knowledge() {
    for hello in HELLOS {
        println!("with {hello}");
        let server = Server::start(hello, &[]);
        let mut conn = Conn::http2(server.addr).await;
        for _ in 0..10 {
            assert_hello(&conn.send("GET", "/", "").await);
        }
    }
}

/// The request body reaches the guest as it arrives and the response goes out
/// as the guest writes it: the first echoed chunk comes back while the request
/// is still open, so neither side was buffered whole.
#[tokio::test]
async fn bodies_stream_both_ways() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &[]);
        let mut socket = e2e::Stream::connect(server.addr).await;
        socket
            .write_all(b"POST /echo HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
            .await
            .unwrap();
        let seen = read_until(&mut socket, "first").await;
        assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
        assert!(!seen.contains("second"));

        socket.write_all(b"6\r\nsecond\r\n0\r\n\r\n").await.unwrap();
        let rest = read_until(&mut socket, "0\r\n\r\n").await;
        assert!(rest.contains("second"), "{rest}");
    }
}

/// Reads from `socket` until `needle` has been seen; fails after
/// [`STEP_TIMEOUT`] or at end of stream.
async fn read_until(socket: &mut e2e::Stream, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout_at(deadline, socket.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} within {STEP_TIMEOUT:?}"))
            .unwrap();
        assert!(
            n > 0,
            "connection closed before {needle:?}: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
        tokio::time::sleep(Duration::ZERO).await;
    }
    String::from_utf8_lossy(&seen).into_owned()
}

/// The guest sees the request as wasi-http specifies it: method, scheme,
/// authority (here from the `Host` header), path with query, and the headers
/// minus hop-by-hop ones, including those the `Connection` header names (on
/// every `Connection` line, not just the first).
#[tokio::test]
async fn the_guest_sees_the_request_minus_hop_by_hop_headers() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &[]);
        let mut client = e2e::RawClient::connect(server.addr).await;
        client
            .send(
                b"PATCH /request?x=1&y=2 HTTP/1.1\r\nhost: example.test:8080\r\nx-kept: yes\r\n\
                  connection: close, x-hop\r\nx-hop: gone\r\nte: trailers\r\nkeep-alive: timeout=5\r\n\
                  connection: x-second\r\nx-second: gone\r\ncontent-length: 0\r\n\r\n",
            )
            .await
            .unwrap();
        let answer = client.read_to_close().await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        let scheme = if e2e::over_tls() {
            "scheme Some(Scheme::Https)\n"
        } else {
            "scheme Some(Scheme::Http)\n"
        };
        for expected in [
            "method Method::Patch\n",
            scheme,
            "authority example.test:8080\n",
            "path /request?x=1&y=2\n",
            "header x-kept: yes\n",
        ] {
            assert!(answer.contains(expected), "no {expected:?} in {answer}");
        }
        for hop in [
            "header connection",
            "header x-hop",
            "header x-second",
            "header te",
            "header keep-alive",
            "header host",
        ] {
            assert!(!answer.contains(hop), "{hop} reached the guest: {answer}");
        }
    }
}

/// With an absolute URI in the request line, the guest's authority comes
/// from the URI rather than the `Host` header.
#[tokio::test]
async fn authority_comes_from_an_absolute_uri() {
    let server = Server::start("testbed", &[]);
    let mut client = e2e::RawClient::connect(server.addr).await;
    client
        .send(b"GET http://from-uri.test:9/request HTTP/1.1\r\nhost: from-header.test\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = client.read_to_close().await;
    assert!(answer.contains("authority from-uri.test:9\n"), "{answer}");
    assert!(answer.contains("path /request\n"), "{answer}");
}

/// Trailers the guest sets after its body reach the client (over HTTP/2,
/// where trailers need no opt-in from the client).
#[tokio::test]
async fn trailers_reach_the_client() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &[]);
        let reply = Conn::http2(server.addr)
            .await
            .send("GET", "/trailers", "")
            .await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "body\n"));
        let trailers = reply.trailers.expect("trailers");
        assert_eq!(trailers["x-trailer"], "yes");
    }
}
