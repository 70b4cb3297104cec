//! Clients that never take their responses: over HTTP/2 with a zero flow
//! control window, over HTTP/1.1 by never reading. Neither may lock other
//! clients out, and the instances they hold are freed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::{RawClient, Server, TESTBEDS, ZeroWindowClient, get, metric};
use hyper::StatusCode;
use tokio::io::AsyncWriteExt;

/// The request timeout the attacked servers run with: short, so the tests
/// see what happens after it too.
const REQUEST_TIMEOUT: &str = "3s";

/// How long a normal client may take to be answered during an attack.
const NORMAL_LATENCY: Duration = Duration::from_secs(1);

/// A normal client asks for `/` every 200 ms for `during`, each time on a
/// new connection, and every answer must be `200` within [`NORMAL_LATENCY`].
async fn normal_clients_are_served(addr: SocketAddr, during: Duration) {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut asked = 0;
    while started.elapsed() < during {
        asked += 1;
        let at = started.elapsed();
        let sent = Instant::now();
        match tokio::time::timeout(NORMAL_LATENCY, get(addr, "/")).await {
            Ok(reply) if reply.status == StatusCode::OK => {}
            Ok(reply) => failures.push(format!("at {at:.1?}: {}", reply.status)),
            Err(_) => failures.push(format!("at {at:.1?}: no answer within {NORMAL_LATENCY:?}")),
        }
        tokio::time::sleep(Duration::from_millis(200).saturating_sub(sent.elapsed())).await;
    }
    assert!(
        failures.is_empty(),
        "{} of {asked} normal requests failed: {failures:?}",
        failures.len()
    );
}

/// Waits until no instance is alive; fails after a few seconds.
async fn all_instances_freed(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive = metric(server, "wasi_http_server_instances_in_flight").await;
        if alive == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{alive} instances still alive; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server for the attacks: `testbed` with the short [`REQUEST_TIMEOUT`]
/// and the admin endpoint, for its metrics.
fn attacked_server(testbed: &str) -> Server {
    Server::start(
        testbed,
        &[
            "--request-timeout",
            REQUEST_TIMEOUT,
            "--admin-addr",
            "127.0.0.1:0",
        ],
    )
}

/// Attack 1: one HTTP/2 connection sets its initial window to 0, opens 200
/// streams on a 256 KiB response and never sends a WINDOW_UPDATE, while
/// reading frames. A normal client is answered 200 within a second
/// throughout and after the request deadline, and the attacker's instances
/// are dropped at their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_zero_window_cannot_lock_others_out() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = attacked_server(testbed);
        let attacker = ZeroWindowClient::open(server.addr, "/big?kb=256", 200).await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        normal_clients_are_served(server.addr, Duration::from_secs(6)).await;
        all_instances_freed(&server).await;
        assert!(metric(&server, "wasi_http_server_guest_timeouts_total").await >= 1.0);
        drop(attacker);
    }
}

/// Attack 2: 150 HTTP/1.1 connections, more than the instance slots, each
/// ask for a 4 MiB response and never read it. A normal client is answered
/// 200 within a second throughout (a request that finds every slot taken
/// cuts off the longest-stalled response and takes its slot) and after the
/// deadline, and every instance is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_that_never_read_cannot_lock_others_out() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = attacked_server(testbed);
        let mut attackers = Vec::new();
        for _ in 0..150 {
            let mut stream = e2e::Stream::connect(server.addr).await;
            stream
                .write_all(b"GET /big?kb=4096 HTTP/1.1\r\nhost: test\r\n\r\n")
                .await
                .unwrap();
            attackers.push(stream);
        }
        // Until the attackers' socket buffers are full and they hold every slot.
        tokio::time::sleep(Duration::from_millis(1500)).await;

        normal_clients_are_served(server.addr, Duration::from_secs(6)).await;
        all_instances_freed(&server).await;
        assert!(metric(&server, "wasi_http_server_stalled_responses_evicted_total").await >= 1.0);
        drop(attackers);
    }
}

/// A client that stops reading its response is disconnected after
/// `--write-timeout`: it gets part of the body, then the connection closes,
/// and the log and the metrics say why.
#[tokio::test]
async fn client_that_stops_reading_is_disconnected() {
    for testbed in TESTBEDS {
        println!("with {testbed}");
        let server = Server::start(
            testbed,
            &["--write-timeout", "1s", "--admin-addr", "127.0.0.1:0"],
        );
        let mut client = RawClient::connect(server.addr).await;
        client
            .send(b"GET /big?kb=16384 HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        server
            .wait_for_log("took none of its response for --write-timeout")
            .await;
        let received = client.read_to_close().await;
        assert!(received.starts_with("HTTP/1.1 200 "));
        assert!(
            received.len() < 16 << 20,
            "the whole body arrived: {} bytes",
            received.len()
        );
        assert_eq!(
            metric(&server, "wasi_http_server_stalled_connections_closed_total").await,
            1.0
        );
        all_instances_freed(&server).await;
    }
}
