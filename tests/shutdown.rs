//! Graceful shutdown: SIGTERM stops the server only after in-flight requests
//! are done.

use e2e::{Conn, Server, TESTBEDS};
use hyper::StatusCode;

/// SIGTERM during a slow request: the request completes with its full answer,
/// then the process exits 0.
#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let mut server = Server::start(testbed, &[]);
        let mut conn = Conn::http1(server.addr).await;
        let in_flight = tokio::spawn(async move { conn.send("GET", "/sleep?ms=1500", "").await });
        // The guest logs this line once it is running, so the request is in flight.
        server.wait_for_log("sleep: start 1500 ms").await;
        server.terminate();

        let reply = in_flight.await.unwrap();
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, "slept 1500 ms\n")
        );
        let status = server.wait();
        assert!(
            status.success(),
            "exit status {status:?}; log:\n{}",
            server.log()
        );
        server.wait_for_log("all connections closed").await;
    }
}
