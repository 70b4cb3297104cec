//! One request, one instance: nothing survives from one request to the next,
//! and a guest that fails costs only its own request.

use e2e::{Conn, Server, TESTBEDS};
use hyper::StatusCode;

/// A global in the guest starts at zero for every request: 50 requests on one
/// connection each see the counter at 1.
#[tokio::test]
async fn every_request_gets_a_fresh_instance() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &[]);
        let mut conn = Conn::http1(server.addr).await;
        for _ in 0..50 {
            let reply = conn.send("GET", "/counter", "").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(reply.text(), "1\n");
        }
    }
}

/// A trapping guest gets the client a 500 with a short plain-text body, the
/// trap is logged, and the next request on the same connection is served.
#[tokio::test]
async fn trap_is_a_500_and_the_server_carries_on() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &[]);
        let mut conn = Conn::http1(server.addr).await;
        let reply = conn.send("GET", "/trap", "").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(reply.headers["content-type"], "text/plain");
        assert_eq!(reply.text(), "Internal Server Error\n");
        server.wait_for_log("wasm trap").await;

        let reply = conn.send("GET", "/counter", "").await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "1\n"));
    }
}

/// A guest that returns without setting a response gets the client a 500, and
/// the log says why.
#[tokio::test]
async fn no_response_is_a_500() {
    let server = Server::start("testbed", &[]);
    let mut conn = Conn::http1(server.addr).await;
    let reply = conn.send("GET", "/no-response", "").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    server
        .wait_for_log("returned without setting a response")
        .await;
    assert_eq!(
        conn.send("GET", "/counter", "").await.status,
        StatusCode::OK
    );
}

/// A guest that fails after the head went out: the response is cut off, not
/// ended as if complete, over HTTP/1.1 and HTTP/2, and the server still
/// serves new requests.
#[tokio::test]
async fn trap_after_headers_cuts_the_response_off() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &[]);
        for mut conn in [
            Conn::http1(server.addr).await,
            Conn::http2(server.addr).await,
        ] {
            let outcome = conn.try_send("GET", "/trap-after-headers", "").await;
            assert!(outcome.is_err(), "a complete response: {outcome:?}");
        }
        server.wait_for_log("cut it off").await;
        let reply = Conn::http1(server.addr)
            .await
            .send("GET", "/counter", "")
            .await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "1\n"));
    }
}
