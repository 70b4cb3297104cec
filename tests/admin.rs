//! The admin endpoint: `/healthz` (liveness), `/readyz` (readiness), and
//! `/metrics` in Prometheus text format whose counters move with the
//! traffic, on a port of its own.

use std::collections::HashMap;

use e2e::{Server, get};
use hyper::StatusCode;

/// Parses the OpenMetrics text Prometheus scrapes: `# HELP` / `# TYPE`
/// lines, declared once per family, `name{labels} value` samples, and a final
/// `# EOF`; panics on anything else. Returns the samples by `name{labels}`.
fn parse(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end");
    let mut samples = HashMap::new();
    let mut declared = std::collections::HashSet::new();
    for line in text.lines().filter(|line| !line.is_empty()) {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            assert!(
                declared.insert(line.to_string()),
                "declared twice: {line:?}"
            );
            continue;
        }
        if line == "# EOF" {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        assert!(
            name_end == series.len() || series.ends_with('}'),
            "bad labels in {line:?}"
        );
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        samples.insert(series.to_string(), value);
    }
    samples
}

async fn metrics(server: &Server) -> HashMap<String, f64> {
    let reply = get(server.admin.expect("started with --admin-addr"), "/metrics").await;
    assert_eq!(reply.status, StatusCode::OK);
    // The body is OpenMetrics, and says so: Prometheus parses by this type.
    assert_eq!(
        reply.headers["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    parse(reply.text())
}

/// `/healthz` and `/readyz` are 200 once the server runs; `/metrics` parses as OpenMetrics
/// text and its counters follow the traffic: requests by class, durations,
/// instantiations, traps, timeouts, memory-limit hits, denied outbound
/// requests. The guest's own `/metrics` is still the guest's.
#[tokio::test]
async fn metrics_follow_the_traffic() {
    let server = Server::start(
        "testbed",
        &[
            "--admin-addr",
            "127.0.0.1:0",
            "--request-timeout",
            "300ms",
            "--max-memory",
            "16MiB",
        ],
    );
    let admin = server.admin.unwrap();
    let health = get(admin, "/healthz").await;
    assert_eq!((health.status, health.text()), (StatusCode::OK, "ok\n"));
    let ready = get(admin, "/readyz").await;
    assert_eq!((ready.status, ready.text()), (StatusCode::OK, "ready\n"));
    let before = metrics(&server).await;

    for path in ["/metrics", "/", "/counter"] {
        assert_eq!(
            get(server.addr, path).await.text(),
            if path == "/counter" {
                "1\n"
            } else {
                "testbed\n"
            }
        );
    }
    assert_eq!(
        get(server.addr, "/trap").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        get(server.addr, "/loop").await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    assert_eq!(
        get(server.addr, "/alloc?mb=64").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let outbound = format!("/outbound?authority={}", server.addr);
    assert_eq!(
        get(server.addr, &outbound).await.status,
        StatusCode::BAD_GATEWAY
    );

    let after = metrics(&server).await;
    let moved = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    assert_eq!(
        moved(r#"wasi_http_server_requests_total{class="2xx"}"#),
        3.0,
        "{after:?}"
    );
    assert_eq!(
        moved(r#"wasi_http_server_requests_total{class="5xx"}"#),
        4.0,
        "{after:?}"
    );
    assert_eq!(
        moved("wasi_http_server_request_duration_seconds_count"),
        7.0
    );
    assert_eq!(
        moved("wasi_http_server_instantiation_duration_seconds_count"),
        7.0
    );
    assert_eq!(
        moved("wasi_http_server_guest_traps_total"),
        2.0,
        "the trap and the memory hog"
    );
    assert_eq!(moved("wasi_http_server_guest_timeouts_total"), 1.0);
    assert_eq!(moved("wasi_http_server_memory_limit_hits_total"), 1.0);
    assert_eq!(moved("wasi_http_server_outbound_denied_total"), 1.0);
    assert_eq!(after["wasi_http_server_instances_in_flight"], 0.0);
}

/// The admin endpoint holds at most 16 connections and gives each 5 s to
/// send its headers: 16 silent clients delay a health check until the
/// timeout closes them, and cannot block it for longer.
#[tokio::test]
async fn admin_connections_are_capped_and_timed_out() {
    let server = Server::start("hello", &["--admin-addr", "127.0.0.1:0"]);
    let admin = server.admin.unwrap();
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(e2e::RawClient::connect(admin).await);
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let reply = get(admin, "/healthz").await;
    let waited = started.elapsed();
    assert_eq!(reply.status, StatusCode::OK);
    assert!(
        waited >= std::time::Duration::from_secs(4) && waited < std::time::Duration::from_secs(10),
        "answered after {waited:?}"
    );
    for mut client in silent {
        assert_eq!(client.read_to_close().await, "");
    }
}

/// During a drain (SIGTERM with a request in flight) the admin endpoint
/// still answers, for one process and for `--processes`: `/readyz` with
/// 503 `draining`, so a load balancer stops sending new requests,
/// `/healthz` with 200, so an orchestrator lets the drain finish, and
/// `/metrics` with the counts, until the request has finished and the
/// server exits.
#[tokio::test]
async fn the_admin_endpoint_answers_through_a_drain() {
    for processes in ["1", "2"] {
        let mut server = Server::start(
            "testbed",
            &["--processes", processes, "--admin-addr", "127.0.0.1:0"],
        );
        let admin = server.admin.unwrap();
        assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
        let mut conn = e2e::Conn::http1(server.addr).await;
        let in_flight = tokio::spawn(async move { conn.send("GET", "/sleep?ms=2000", "").await });
        server.wait_for_log("sleep: start 2000 ms").await;
        server.terminate();
        server.wait_for_log("SIGTERM received").await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let ready = get(admin, "/readyz").await;
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{processes}");
        assert!(ready.text().starts_with("draining"), "{}", ready.text());
        assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
        let reply = get(admin, "/metrics").await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{processes}: {}",
            reply.text()
        );
        assert!(
            !in_flight.is_finished(),
            "{processes}: the drain ended early"
        );
        assert_eq!(in_flight.await.unwrap().text(), "slept 2000 ms\n");
        assert!(server.wait().success());
    }
}

/// While the component loads (the Python guest, compiled with
/// `--no-cache`, takes seconds), the admin endpoint already answers:
/// `/readyz` 503 `starting`, `/healthz` 200; once the server runs, `/readyz`
/// is 200. With `--processes 2` the first serving process is stopped
/// (SIGSTOP) while it loads, so the server cannot become ready early.
#[tokio::test]
async fn readyz_says_starting_while_the_component_loads() {
    for processes in ["1", "2"] {
        // The admin address must be known before the server says it: a
        // free port, taken back just before the server binds it.
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut server = std::process::Command::new(e2e::server_binary())
            .arg(e2e::component("python-guest"))
            .args([
                "--processes",
                processes,
                "--no-cache",
                "--addr",
                "127.0.0.1:0",
            ])
            .args(["--admin-addr", &admin.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stopped = match processes {
            "2" => Some(loop {
                if let Some(&pid) = e2e::serving_processes_of(server.id()).first() {
                    signal("STOP", pid);
                    break pid;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }),
            _ => None,
        };
        let deadline = std::time::Instant::now() + e2e::STEP_TIMEOUT;
        while tokio::net::TcpStream::connect(admin).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{processes}: no admin endpoint"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let ready = get(admin, "/readyz").await;
        assert_eq!(
            (ready.status, ready.text()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "starting: the component is loading\n"
            ),
            "{processes}"
        );
        assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
        if let Some(pid) = stopped {
            signal("CONT", pid);
        }
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(server.stdout.take().unwrap()));
        let first = tokio::task::spawn_blocking(move || lines.next())
            .await
            .unwrap();
        assert!(
            first.is_some_and(|line| line.unwrap().starts_with("Server running")),
            "{processes}"
        );
        let ready = get(admin, "/readyz").await;
        assert_eq!((ready.status, ready.text()), (StatusCode::OK, "ready\n"));
        signal("TERM", server.id());
        assert!(server.wait().unwrap().success(), "{processes}");
    }
}

fn signal(signal: &str, pid: u32) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}
