//! A bounded soak: hello, trapping, spinning and memory-hogging requests
//! mixed over keep-alive connections, while clients that never read their
//! responses come and go. Afterwards every hello was answered, and the
//! server holds no more file descriptors, and not much more memory, than
//! before.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use e2e::{Conn, STEP_TIMEOUT, Server, ZeroWindowClient};
use hyper::StatusCode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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

/// How long a stalling client holds its connection before it gives up and
/// comes back with a new one: past the soak's `--write-timeout`, so the
/// server is the one that closes it.
const STALL_HOLD: Duration = Duration::from_millis(1500);

/// Clients that never take their responses, until `stop`: four over
/// HTTP/1.1 asking for 4 MiB, and one over HTTP/2 with a zero window holding
/// 16 streams, each reconnecting after [`STALL_HOLD`]. Returns how many
/// stalled connections they opened.
fn stall_until(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let opened = Arc::new(AtomicUsize::new(0));
        let mut stallers = Vec::new();
        for _ in 0..4 {
            let (stop, opened) = (stop.clone(), opened.clone());
            stallers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let mut stream = TcpStream::connect(addr).await.unwrap();
                    let _ = stream
                        .write_all(b"GET /big?kb=4096 HTTP/1.1\r\nhost: test\r\n\r\n")
                        .await;
                    opened.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(STALL_HOLD).await;
                }
            }));
        }
        let (stop_h2, opened_h2) = (stop.clone(), opened.clone());
        stallers.push(tokio::spawn(async move {
            while !stop_h2.load(Ordering::Relaxed) {
                let client = ZeroWindowClient::open(addr, "/big?kb=256", 16).await;
                opened_h2.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(STALL_HOLD).await;
                drop(client);
            }
        }));
        for staller in stallers {
            staller.await.unwrap();
        }
        opened.load(Ordering::Relaxed)
    })
}

/// 20,000 requests over 8 keep-alive connections, 1 in 10 trapping, 1 in 100
/// growing memory to `--max-memory`, 1 in 500 spinning until
/// `--request-timeout`, while clients that never read come and go: every
/// request gets its expected status, then the open file descriptors return
/// to their starting count and RSS stays within [`RSS_GROWTH_BOUND_KIB`] of
/// the start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak() {
    let server = Server::start(
        "testbed",
        &[
            "--request-timeout",
            "100ms",
            "--max-memory",
            "16MiB",
            "--write-timeout",
            "1s",
        ],
    );
    // The warm-up has stalling clients too, so that the slots they spread
    // the load over are already touched when the baseline is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let stallers = stall_until(server.addr, stop.clone());
    let mut warm_up = Conn::http1(server.addr).await;
    let warming = Instant::now();
    let mut i = 0;
    while i < 200 || warming.elapsed() < 2 * STALL_HOLD {
        let (path, _) = plan(i);
        warm_up.send("GET", path, "").await;
        i += 1;
    }
    drop(warm_up);
    stop.store(true, Ordering::Relaxed);
    stallers.await.expect("stalling clients");
    wait_for_fds(&server, None).await;
    let (fds_before, rss_before) = (server.open_fds(), server.rss_kib());

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let stallers = stall_until(server.addr, stop.clone());
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
    stop.store(true, Ordering::Relaxed);
    let stalled = stallers.await.expect("stalling clients");
    assert!(
        wrong.is_empty(),
        "{} wrong answers, first: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );

    let fds_after = wait_for_fds(&server, Some(fds_before)).await;
    let rss_after = server.rss_kib();
    println!(
        "soak: {} requests in {elapsed:.1?} beside {stalled} stalled connections, 0 unexpected answers; fds {fds_before} -> {fds_after}; RSS {} -> {} MiB",
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
