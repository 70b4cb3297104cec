//! A bounded soak: hello, trapping, spinning and memory-hogging requests
//! mixed over keep-alive connections. Afterwards every hello was answered,
//! and the server holds no more file descriptors, and not much more memory,
//! than before.

use std::time::{Duration, Instant};

use e2e::{Conn, STEP_TIMEOUT, Server};
use hyper::StatusCode;

const CONNECTIONS: usize = 8;
const REQUESTS_PER_CONNECTION: usize = 2_500;

/// How far RSS may end above where it started (after a warm-up). Instances
/// unmap their memory when dropped, so what remains is allocator and runtime
/// caches; 64 MiB is four memory hogs' worth, far below a leak of 20,000
/// instances.
const RSS_GROWTH_BOUND_KIB: u64 = 64 * 1024;

/// What request `i` of a connection asks for, and the status it must get.
fn plan(i: usize) -> (&'static str, StatusCode) {
    match i {
        i if i % 500 == 250 => ("/loop", StatusCode::GATEWAY_TIMEOUT),
        i if i % 100 == 50 => ("/alloc?mb=64", StatusCode::INTERNAL_SERVER_ERROR),
        i if i % 10 == 5 => ("/trap", StatusCode::INTERNAL_SERVER_ERROR),
        _ => ("/", StatusCode::OK),
    }
}

/// 20,000 requests over 8 keep-alive connections, 1 in 10 trapping, 1 in 100
/// growing memory to `--max-memory`, 1 in 500 spinning until
/// `--request-timeout`: every request gets its expected status, then the open
/// file descriptors return to their starting count and RSS stays within
/// [`RSS_GROWTH_BOUND_KIB`] of the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let server = Server::start(
        "testbed",
        &["--request-timeout", "100ms", "--max-memory", "16MiB"],
    );
    let mut warm_up = Conn::http1(server.addr).await;
    for i in 0..200 {
        let (path, _) = plan(i);
        warm_up.send("GET", path, "").await;
    }
    drop(warm_up);
    wait_for_fds(&server, None).await;
    let (fds_before, rss_before) = (server.open_fds(), server.rss_kib());

    let started = Instant::now();
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let addr = server.addr;
            tokio::spawn(async move {
                let mut conn = Conn::http1(addr).await;
                let mut wrong = Vec::new();
                for i in 0..REQUESTS_PER_CONNECTION {
                    let (path, expected) = plan(i);
                    let reply = conn.send("GET", path, "").await;
                    if reply.status != expected
                        || (expected == StatusCode::OK && reply.text() != "testbed\n")
                    {
                        wrong.push(format!("{path}: {} {:?}", reply.status, reply.text()));
                    }
                }
                wrong
            })
        })
        .collect();
    let mut wrong = Vec::new();
    for client in clients {
        wrong.extend(client.await.expect("client task"));
    }
    let elapsed = started.elapsed();
    assert!(
        wrong.is_empty(),
        "{} wrong answers, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    let fds_after = wait_for_fds(&server, Some(fds_before)).await;
    let rss_after = server.rss_kib();
    println!(
        "soak: {} requests in {elapsed:.1?}, 0 unexpected answers; fds {fds_before} -> {fds_after}; RSS {} -> {} MiB",
        CONNECTIONS * REQUESTS_PER_CONNECTION,
        rss_before / 1024,
        rss_after / 1024,
    );
    assert_eq!(fds_after, fds_before, "file descriptors leaked");
    assert!(
        rss_after <= rss_before + RSS_GROWTH_BOUND_KIB,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
}

/// Waits for the server's connections to close: until its fd count reaches
/// `target`, or (without one) stops changing. Returns the last count.
async fn wait_for_fds(server: &Server, target: Option<usize>) -> usize {
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut last = server.open_fds();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = server.open_fds();
        let settled = match target {
            Some(target) => now <= target,
            None => now == last,
        };
        if settled || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}
