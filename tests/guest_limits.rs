//! Hostile guests: whatever a guest does (spin, block, eat memory, call out,
//! or simply be too many), it costs only its own request.

use std::time::{Duration, Instant};

use e2e::{Conn, Server, TESTBEDS, assert_hello, get};
use hyper::StatusCode;

/// Asks for `path` with `--request-timeout 300ms` and asserts the guest is
/// stopped there: 504, well before the step timeout (without the protection
/// the guest would run for ever). Returns the server for further checks.
async fn cut_off(testbed: &str, path: &str) -> Server {
    let server = Server::start(testbed, &["--request-timeout", "300ms"]);
    let started = Instant::now();
    assert_eq!(
        get(server.addr, path).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(5),
        "cut off only after {elapsed:?}"
    );
    server
}

/// A guest spinning in a loop that never calls the host is stopped at
/// `--request-timeout`: 504, and the log says it timed out.
#[tokio::test]
async fn spinning_guest_is_cut_off() {
    for testbed in TESTBEDS {
        let server = cut_off(testbed, "/loop").await;
        server.wait_for_log("the guest timed out").await;
    }
}

/// While a guest spins, other requests are served: the loop yields its
/// thread at every epoch tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_requests_are_served_while_a_guest_spins() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &["--request-timeout", "5s"]);
        let addr = server.addr;
        // Two spinners: as many as the server has worker threads.
        let spinners: Vec<_> = (0..2)
            .map(|_| tokio::spawn(async move { get(addr, "/loop").await }))
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut conn = Conn::http1(addr).await;
        for _ in 0..20 {
            assert_eq!(conn.send("GET", "/counter", "").await.text(), "1\n");
        }
        assert!(
            spinners.iter().all(|s| !s.is_finished()),
            "the spinners ended before the other requests"
        );
        for spinner in spinners {
            assert_eq!(spinner.await.unwrap().status, StatusCode::GATEWAY_TIMEOUT);
        }
    }
}

/// A guest blocked in a host call (sleeping on a pollable) is cut off too.
#[tokio::test]
async fn sleeping_guest_is_cut_off() {
    for testbed in TESTBEDS {
        cut_off(testbed, "/sleep?ms=60000").await;
    }
}

/// A guest allocating past `--max-memory` fails inside the guest (500, with
/// the limit named in the log); one that stays under it is served.
#[tokio::test]
async fn memory_hog_is_refused() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(testbed, &["--max-memory", "16MiB"]);
        let reply = get(server.addr, "/alloc?mb=64").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
        server.wait_for_log("the guest hit --max-memory").await;
        let reply = get(server.addr, "/alloc?mb=4").await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, "allocated 4 MiB\n")
        );
    }
}

/// Outbound HTTP is denied by default with wasi:http's own error code inside
/// the guest, and `--allow-outbound HOST:PORT` opens exactly that destination.
#[tokio::test]
async fn outbound_is_denied_unless_allowed() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let upstream = Server::start_upstream("hello", &[]);
        let path = format!("/outbound?authority={}", upstream.addr);

        let denied = Server::start(testbed, &[]);
        let reply = get(denied.addr, &path).await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::BAD_GATEWAY, "ErrorCode::HttpRequestDenied\n")
        );
        denied.wait_for_log("outbound request denied").await;

        let other_port = format!("127.0.0.1:{}", upstream.addr.port().wrapping_add(1));
        let allowed = Server::start(
            testbed,
            &[
                "--allow-outbound",
                &other_port,
                "--allow-outbound",
                &upstream.addr.to_string(),
            ],
        );
        let reply = get(allowed.addr, &path).await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, "Hello World\n")
        );
    }
}

/// Past `--max-concurrent-requests` a request waits `--queue-timeout`, then
/// gets 503; once the slot is free again requests are served.
#[tokio::test]
async fn concurrency_cap_sheds_load_with_503() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(
            testbed,
            &["--max-concurrent-requests", "1", "--queue-timeout", "100ms"],
        );
        let addr = server.addr;
        let slow = tokio::spawn(async move { get(addr, "/sleep?ms=1500").await });
        server.wait_for_log("sleep: start 1500 ms").await;

        let reply = get(addr, "/counter").await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable\n")
        );
        assert_eq!(slow.await.unwrap().status, StatusCode::OK);
        assert_eq!(get(addr, "/counter").await.text(), "1\n");
    }
}

/// Past `--max-connections` the server stops accepting: a further client is
/// served only once an earlier connection closes.
#[tokio::test]
async fn connection_cap_makes_new_clients_wait() {
    let server = Server::start("hello", &["--max-connections", "1"]);
    let mut first = Conn::http1(server.addr).await;
    assert_hello(&first.send("GET", "/", "").await);

    let addr = server.addr;
    let second = tokio::spawn(async move { get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second connection was served past --max-connections 1"
    );
    drop(first);
    assert_hello(&second.await.unwrap());
}
