//! Scale-out as README "Production" shows it: two servers behind HAProxy
//! (Debian's, run with the repository's `deploy/haproxy.cfg`), which
//! health-checks each server's `/readyz`, sharing one Redis. A rolling
//! restart of each server in turn under steady load loses no request, and
//! the key-value counter ends exact.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use e2e::{Launch, Redis, STEP_TIMEOUT, Server, free_port, get};
use hyper::StatusCode;

const GUEST: &str = "state-guest";

/// Clients sending requests through the load balancer at once.
const CLIENTS: usize = 4;

/// Most requests the load sends in all: bounds the test whatever happens.
const MAX_REQUESTS: usize = 20_000;

/// One backend: where it serves and where its admin endpoint answers.
struct Backend {
    addr: SocketAddr,
    admin: SocketAddr,
}

impl Backend {
    fn new() -> Self {
        let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            addr: local(free_port()),
            admin: local(free_port()),
        }
    }

    fn start(&self, redis: &Redis) -> Server {
        let (url, admin) = (redis.url(), self.admin.to_string());
        Server::start_launched(
            GUEST,
            &["--keyvalue", &url, "--admin-addr", &admin],
            &Launch {
                addr: Some(self.addr),
                ..Launch::default()
            },
        )
    }
}

/// HAProxy with `deploy/haproxy.cfg`, its addresses replaced by the test's.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Haproxy {
    fn start(backends: &[&Backend; 2]) -> Self {
        let shipped = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/haproxy.cfg"),
        )
        .expect("deploy/haproxy.cfg");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut config = shipped.replace("127.0.0.1:8080", &addr.to_string());
        for (backend, (serve, admin)) in backends
            .iter()
            .zip([("127.0.0.1:3001", "9091"), ("127.0.0.1:3002", "9092")])
        {
            assert!(config.contains(serve) && config.contains(admin));
            config = config.replace(serve, &backend.addr.to_string()).replace(
                &format!("port {admin}"),
                &format!("port {}", backend.admin.port()),
            );
        }
        let dir = e2e::temp_dir("haproxy");
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (make test installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(started.elapsed() < STEP_TIMEOUT, "haproxy did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, addr, dir }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether both backends answer through the balancer: each is asked for
/// its `/readyz` directly, and the balancer is given time to check them.
async fn both_ready(backends: &[&Backend; 2]) {
    for backend in backends {
        let started = Instant::now();
        while get(backend.admin, "/readyz").await.status != StatusCode::OK {
            assert!(started.elapsed() < STEP_TIMEOUT, "not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Two of the balancer's checks (every 200 ms).
    tokio::time::sleep(Duration::from_millis(500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_behind_haproxy_loses_no_request() {
    let redis = Redis::start();
    let (a, b) = (Backend::new(), Backend::new());
    let mut servers = [Some(a.start(&redis)), Some(b.start(&redis))];
    let haproxy = Haproxy::start(&[&a, &b]);
    both_ready(&[&a, &b]).await;

    // Steady load: CLIENTS loops of `/count` through the balancer, each
    // answer recorded, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, lb) = (stop.clone(), haproxy.addr);
        clients.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(Ordering::SeqCst) && answers.len() < MAX_REQUESTS / CLIENTS {
                let reply = get(lb, "/count").await;
                answers.push((reply.status, reply.text().to_string()));
            }
            answers
        }));
    }

    // Each server in turn: SIGTERM (it drains and exits), then a new one
    // on the same addresses, back in the balancer once its /readyz is 200.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, backend) in [&a, &b].into_iter().enumerate() {
        let mut old = servers[i].take().unwrap();
        old.terminate();
        assert!(old.wait().success(), "{}", old.log());
        servers[i] = Some(backend.start(&redis));
        both_ready(&[&a, &b]).await;
    }
    stop.store(true, Ordering::SeqCst);

    let mut counts = Vec::new();
    for client in clients {
        for (status, text) in client.await.unwrap() {
            assert_eq!(status, StatusCode::OK, "a request was lost: {text}");
            counts.push(text.parse::<u64>().expect("a count"));
        }
    }
    // Every request counted once: the answers are 1 to N, and the store
    // says N.
    counts.sort_unstable();
    let total = counts.len() as u64;
    assert!(total > 50, "the load hardly ran: {total} requests");
    assert_eq!(counts, (1..=total).collect::<Vec<_>>());
    let stored = get(haproxy.addr, "/get?key=counter").await;
    assert_eq!(stored.text(), total.to_string());
}
