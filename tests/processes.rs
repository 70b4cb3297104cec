//! `--processes`: a supervisor and single-threaded serving processes that
//! listen on one address. Which process gets a connection is the kernel's
//! choice, so to know that each one serves, the tests hold many connections
//! open and count each process's sockets.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{
    Conn, STEP_TIMEOUT, Server, assert_hello, component, get, run_to_exit, server_binary,
    serving_processes_of,
};
use hyper::StatusCode;

/// The serving processes of `server`.
fn serving_processes(server: &Server) -> Vec<u32> {
    server.serving_processes()
}

fn kill(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z')
    })
}

/// Sockets `pid` has open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Keep-alive connections [`every_process_answers`] opens: the kernel spreads connections
/// by a hash of the client's port, so with 40 every process gets some (all
/// to one of two: a chance of 2^-39).
const CLIENTS: usize = 40;

/// Opens [`CLIENTS`] connections and sends `/` on each, holding them all
/// open: every answer must be 200 with `text`, and each of `processes` must
/// have taken some of the connections (it holds more sockets than before).
async fn every_process_answers(server: &Server, processes: &[u32], text: &str) {
    let before: Vec<usize> = processes.iter().map(|&pid| sockets(pid)).collect();
    let mut conns = Vec::new();
    for _ in 0..CLIENTS {
        let mut conn = Conn::http1(server.addr).await;
        let reply = conn.send("GET", "/", "").await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, text));
        conns.push(conn);
    }
    let held: Vec<usize> = processes
        .iter()
        .zip(before)
        .map(|(&pid, before)| sockets(pid).saturating_sub(before))
        .collect();
    assert!(
        held.iter().all(|&held| held > 0),
        "connections per process: {held:?}"
    );
}

/// Waits until none of `processes` is alive; panics after [`STEP_TIMEOUT`].
async fn wait_until_gone(processes: &[u32]) {
    let deadline = Instant::now() + STEP_TIMEOUT;
    while processes.iter().any(|&pid| alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "serving processes outlived the supervisor"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn requests_2xx(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("wasi_http_server_requests_total{class=\"2xx\"} "))
        .unwrap_or_else(|| panic!("no 2xx count in:\n{metrics}"))
        .parse()
        .unwrap()
}

/// Two serving processes each take connections on the one address, and
/// the admin endpoint's count is the sum of both.
#[tokio::test]
async fn each_process_serves_and_metrics_add_up() {
    let server = Server::start(
        "hello",
        &["--processes", "2", "--admin-addr", "127.0.0.1:0"],
    );
    let processes = serving_processes(&server);
    assert_eq!(processes.len(), 2, "log:\n{}", server.log());
    // What is served and with what limits is said once, by the first
    // serving process.
    server.wait_for_log("each instance may hold").await;
    assert_eq!(
        server.log().matches("each instance may hold").count(),
        1,
        "{}",
        server.log()
    );
    every_process_answers(&server, &processes, "Hello World\n").await;
    let metrics = get(server.admin.unwrap(), "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text());
    assert_eq!(
        requests_2xx(metrics.text()),
        CLIENTS as u64,
        "{}",
        metrics.text()
    );
    assert!(metrics.text().ends_with("# EOF\n"));
}

/// The first serving process compiles the component and fills the compile
/// cache before the others start, and they load it from there; the
/// supervisor loads nothing. A cold start compiles once, not once per
/// process, and the component is in memory once per serving process only.
#[tokio::test]
async fn the_component_is_compiled_once_for_all_processes() {
    let cache = std::env::temp_dir().join(format!("e2e-processes-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let server = Server::start(
        "hello",
        &["--processes", "3", "--cache-dir", cache.to_str().unwrap()],
    );
    // Each process logs its load from a thread of its own: wait for three
    // such lines, then a little more for any fourth (a load by the
    // supervisor) to arrive.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while server.log().matches(" ready in ").count() < 3 {
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Had the processes started together on the empty cache, each would
    // have compiled.
    let log = server.log();
    assert_eq!(log.matches(" ready in ").count(), 3, "{log}");
    assert_eq!(log.matches(": compiled;").count(), 1, "{log}");
    assert_eq!(
        log.matches(": loaded from the compile cache;").count(),
        2,
        "{log}"
    );
    drop(server);
    std::fs::remove_dir_all(&cache).unwrap();
}

/// SIGTERM while the first serving process is still loading the component
/// stops the server then, not once it serves, and that process goes with
/// it. The test stops the process (SIGSTOP) while it compiles the Python
/// guest (seconds, with `--no-cache`), so it can never become ready.
#[tokio::test]
async fn sigterm_before_the_processes_are_ready_stops_the_server() {
    let python = component("python-guest");
    let mut supervisor = Command::new(server_binary())
        .arg(&python)
        .args(["--processes", "2", "--no-cache", "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + STEP_TIMEOUT;
    let loading = loop {
        if let Some(&pid) = serving_processes_of(supervisor.id()).first() {
            break pid;
        }
        if Instant::now() > deadline {
            let _ = supervisor.kill();
            let _ = supervisor.wait();
            panic!("no serving process started");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    kill("STOP", loading);
    kill("TERM", supervisor.id());
    let status = loop {
        if let Some(status) = supervisor.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = supervisor.kill();
            let _ = supervisor.wait();
            panic!("the supervisor kept waiting for a serving process after SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
    wait_until_gone(&[loading]).await;
}

/// A serving process that dies is replaced; the other answers meanwhile,
/// and then both do.
#[tokio::test]
async fn a_dead_serving_process_is_replaced() {
    let server = Server::start("hello", &["--processes", "2"]);
    let before = serving_processes(&server);
    assert_eq!(before.len(), 2);
    kill("KILL", before[0]);
    // Connections the kernel had queued for the killed process are lost
    // with it; once the supervisor has seen it die, its socket is gone.
    server
        .wait_for_log("exited (signal: 9 (SIGKILL)); starting another")
        .await;
    for _ in 0..20 {
        assert_hello(&get(server.addr, "/").await);
    }
    server.wait_for_log("is serving again").await;
    let after = serving_processes(&server);
    assert_eq!(after.len(), 2, "log:\n{}", server.log());
    assert!(after.contains(&before[1]) && !after.contains(&before[0]));
    every_process_answers(&server, &after, "Hello World\n").await;
}

/// SIGTERM to the supervisor: in-flight requests finish, then every process
/// exits, the supervisor with 0.
#[tokio::test]
async fn sigterm_drains_every_process() {
    let mut server = Server::start("testbed", &["--processes", "2"]);
    let processes = serving_processes(&server);
    let mut conn = Conn::http1(server.addr).await;
    let in_flight = tokio::spawn(async move { conn.send("GET", "/sleep?ms=1500", "").await });
    server.wait_for_log("sleep: start 1500 ms").await;
    server.terminate();
    let reply = in_flight.await.unwrap();
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "slept 1500 ms\n")
    );
    let status = server.wait();
    assert!(status.success(), "{status:?}; log:\n{}", server.log());
    wait_until_gone(&processes).await;
    assert!(
        !server.log().contains("starting another"),
        "{}",
        server.log()
    );
}

/// A supervisor killed outright leaves no serving process behind: they see
/// their stdin close and shut down, and the port stops answering.
#[tokio::test]
async fn no_serving_process_outlives_a_killed_supervisor() {
    let server = Server::start("hello", &["--processes", "2"]);
    let processes = serving_processes(&server);
    assert_eq!(processes.len(), 2);
    kill("KILL", server.pid());
    wait_until_gone(&processes).await;
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
}

/// SIGHUP to the supervisor reloads every serving process.
#[tokio::test]
async fn sighup_reloads_every_process() {
    let dir = std::env::temp_dir().join(format!("e2e-processes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.wasm");
    std::fs::copy(component("hello"), &path).unwrap();
    let server = Server::start_path(&path, &["--processes", "2"], &[]);
    let processes = serving_processes(&server);
    let next = path.with_extension("next");
    std::fs::copy(component("testbed"), &next).unwrap();
    std::fs::rename(&next, &path).unwrap();
    server.hangup();
    let deadline = Instant::now() + STEP_TIMEOUT;
    while server.log().matches("reloaded ").count() < 2 {
        assert!(Instant::now() < deadline, "log:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    every_process_answers(&server, &processes, "testbed\n").await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A broken component fails in the supervisor, before listening and before
/// any serving process starts: one error line, as without `--processes`.
#[test]
fn a_broken_component_fails_before_any_process_starts() {
    let dir = std::env::temp_dir().join(format!("e2e-processes-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broken.wasm");
    std::fs::write(&path, b"\0asm not really").unwrap();
    let failed = run_to_exit(&[
        path.to_str().unwrap(),
        "--processes",
        "2",
        "--addr",
        "127.0.0.1:0",
    ]);
    assert!(!failed.status.success());
    assert!(failed.stdout.is_empty(), "{}", failed.stdout);
    assert_eq!(
        failed.stderr.matches("error:").count(),
        1,
        "{}",
        failed.stderr
    );
    assert!(
        !failed.stderr.contains("serving process"),
        "{}",
        failed.stderr
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A busy `--admin-addr` fails the supervisor before it starts any serving
/// process (the first is forked early, for a fast start): the one `error:`
/// line, and no line of a serving process.
#[test]
fn a_busy_admin_address_fails_before_any_process_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let hello = component("hello");
    let failed = run_to_exit(&[
        hello.to_str().unwrap(),
        "--processes",
        "2",
        "--addr",
        "127.0.0.1:0",
        "--admin-addr",
        &admin,
    ]);
    assert!(!failed.status.success());
    assert!(failed.stdout.is_empty(), "{}", failed.stdout);
    assert_eq!(
        failed.stderr.trim_end(),
        format!(
            "error: cannot listen on {admin} (--admin-addr): Address already in use (os error 98)"
        ),
    );
}

/// Whole-server limits are split between the processes; one too small to
/// split is refused at startup, naming the flag.
#[test]
fn a_limit_too_small_to_split_is_refused() {
    let hello = component("hello");
    let failed = run_to_exit(&[
        hello.to_str().unwrap(),
        "--processes",
        "2",
        "--max-concurrent-requests",
        "1",
        "--addr",
        "127.0.0.1:0",
    ]);
    assert!(!failed.status.success());
    assert!(
        failed.stderr.contains(
            "error: --max-concurrent-requests (1) is for the whole server and must be at least --processes (2)"
        ),
        "{}",
        failed.stderr
    );
}

/// The admin endpoint tells the truth while processes die: with one of two
/// down `/metrics` still answers, with the live one's counts and
/// `serving_processes_up 1`, and `/readyz` is ok; with both down (their
/// component replaced by garbage, so they cannot start again) `/readyz`
/// answers 503, so a load balancer stops sending traffic, while `/healthz`
/// stays 200.
#[tokio::test]
async fn health_and_metrics_with_serving_processes_down() {
    let dir = e2e::temp_dir("processes-down");
    let path = dir.join("hello.wasm");
    std::fs::copy(component("hello"), &path).unwrap();
    let server = Server::start_path(
        &path,
        &["--processes", "2", "--admin-addr", "127.0.0.1:0"],
        &[],
    );
    let admin = server.admin.unwrap();
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
    let processes = serving_processes(&server);
    assert_eq!(processes.len(), 2);
    std::fs::write(&path, b"not a component").unwrap();

    kill("KILL", processes[0]);
    server.wait_for_log("serving process 0 exited").await;
    let metrics = get(admin, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text());
    assert!(
        metrics
            .text()
            .contains("\nwasi_http_server_serving_processes_up 1\n"),
        "{}",
        metrics.text()
    );
    requests_2xx(metrics.text());
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);

    kill("KILL", processes[1]);
    server.wait_for_log("serving process 1 exited").await;
    let ready = get(admin, "/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.text(), "no serving process is up\n");
    // Alive all the same: restarting the server would not mend the file.
    assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
    let metrics = get(admin, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text());
    assert!(
        metrics
            .text()
            .ends_with("\nwasi_http_server_serving_processes_up 0\n# EOF\n"),
        "{}",
        metrics.text()
    );
    // The supervisor keeps trying; once the component is whole again, a
    // process serves and the server is healthy.
    std::fs::copy(component("hello"), &path).unwrap();
    server.wait_for_log("is serving again").await;
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
}

/// The cores this test may run on, as the server counts them.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// By default the server is one single-threaded serving process per core;
/// with whole-server limits too small to split, fewer (one with
/// `--max-concurrent-requests 1`); `--processes 1` is this process alone.
#[tokio::test]
async fn by_default_one_process_serves_per_core() {
    let server = Server::start("hello", &[]);
    let processes = serving_processes(&server);
    if cores() > 1 {
        assert_eq!(processes.len(), cores(), "log:\n{}", server.log());
        every_process_answers(&server, &processes, "Hello World\n").await;
    } else {
        assert!(processes.is_empty(), "one core: {processes:?}");
    }
    let fitted = Server::start("hello", &["--max-concurrent-requests", "1"]);
    assert!(serving_processes(&fitted).is_empty());
    assert_hello(&get(fitted.addr, "/").await);
    let single = Server::start("hello", &["--processes", "1"]);
    assert!(serving_processes(&single).is_empty());
    assert_hello(&get(single.addr, "/").await);
}

/// Every line a serving process logs says which it is, with its pid, in
/// text and in JSON: its own lines, access lines and its guest's output.
/// The supervisor's lines carry neither.
#[tokio::test]
async fn every_log_line_names_its_serving_process() {
    for format in ["text", "json"] {
        let server = Server::start(
            "testbed",
            &["--processes", "2", "--log-format", format, "--access-log"],
        );
        let processes = serving_processes(&server);
        every_process_answers(&server, &processes, "testbed\n").await;
        for _ in 0..10 {
            assert_eq!(
                get(server.addr, "/print?token=named&lines=1").await.status,
                StatusCode::OK
            );
        }
        server.wait_for_log_count("named", 20).await;
        let log = server.log();
        let mut named = [0usize; 2];
        for line in log.lines() {
            let (process, pid, supervisor) = match format {
                "json" => {
                    let event: serde_json::Value =
                        serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}"));
                    (
                        event["process"].as_u64().map(|n| n as usize),
                        event["pid"].as_u64().map(|n| n as u32),
                        event["target"] == "wasi_http_server::ops::supervisor"
                            || event["target"] == "wasi_http_server::ops::shutdown",
                    )
                }
                _ => {
                    let field = |name: &str| {
                        line.split_whitespace()
                            .find_map(|word| word.strip_prefix(name))
                            .and_then(|value| value.parse().ok())
                    };
                    (
                        field("process="),
                        field("pid=").map(|pid: usize| pid as u32),
                        line.contains(" wasi_http_server::ops::"),
                    )
                }
            };
            match (process, pid) {
                (Some(process), Some(pid)) => {
                    assert_eq!(processes.get(process), Some(&pid), "{line}");
                    named[process] += 1;
                }
                _ => assert!(
                    supervisor,
                    "a serving process's line without its name: {line}"
                ),
            }
        }
        assert!(named.iter().all(|&lines| lines > 0), "{named:?}:\n{log}");
        // Guest output and access lines are among them.
        for needle in ["named", "GET /"] {
            assert!(
                log.lines()
                    .filter(|line| line.contains(needle))
                    .all(|line| line.contains("process")),
                "{log}"
            );
        }
    }
}

/// A serving process that cannot start again (its component replaced by a
/// broken file, then the process killed) is retried after 1 s, 2 s, 4 s...
/// with one line from the supervisor per try saying when the next is, and
/// the other process keeps serving the component it loaded.
#[tokio::test]
async fn a_serving_process_that_keeps_failing_backs_off() {
    let dir = e2e::temp_dir("processes-backoff");
    let path = dir.join("hello.wasm");
    std::fs::copy(component("hello"), &path).unwrap();
    let server = Server::start_path(&path, &["--processes", "2"], &[]);
    let processes = serving_processes(&server);
    std::fs::write(&path, b"not a component").unwrap();
    kill("KILL", processes[1]);
    server.wait_for_log("exited (signal: 9 (SIGKILL))").await;
    // Tried at about 1 s and 3 s; the third try is 4 s after the second.
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !server.log().contains("next try in 4s") {
        assert_hello(&get(server.addr, "/").await);
        assert!(Instant::now() < deadline, "{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.log();
    let tries: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("serving process 1 did not start again"))
        .collect();
    assert_eq!(tries.len(), 2, "{log}");
    assert!(tries[0].ends_with("; next try in 2s"), "{log}");
    assert!(tries[1].ends_with("; next try in 4s"), "{log}");
    // The failed process's own line says which it was.
    assert_eq!(
        log.matches("error: serving process 1 (pid ").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("serving process 0"), "{log}");
    for _ in 0..10 {
        assert_hello(&get(server.addr, "/").await);
    }
}

/// With `--no-cache` the first serving process compiles the component into
/// a cache made for this run and the others load it from there; it is gone
/// once the server stops.
#[tokio::test]
async fn no_cache_compiles_once_for_all_processes() {
    let mut server = Server::start("hello", &["--processes", "3", "--no-cache"]);
    server.wait_for_log_count(" ready in ", 3).await;
    let log = server.log();
    assert_eq!(log.matches(": compiled;").count(), 1, "{log}");
    assert_eq!(
        log.matches(": loaded from the compile cache;").count(),
        2,
        "{log}"
    );
    // The first serving process is forked with the supervisor's command
    // line; the others are given the cache's path on theirs.
    let cache = serving_processes(&server)
        .into_iter()
        .find_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let at = args.iter().position(|&arg| arg == b"--serving-cache-dir")?;
            Some(std::path::PathBuf::from(
                String::from_utf8(args[at + 1].to_vec()).unwrap(),
            ))
        })
        .expect("a cache for this run");
    assert!(cache.is_dir());
    server.terminate();
    assert!(server.wait().success(), "{}", server.log());
    assert!(!cache.exists(), "{} left behind", cache.display());
}

/// A second server started on the address the first serves is refused, as
/// a second program binding a busy port is: the serving processes listen
/// with `SO_REUSEPORT`, which would otherwise let it join them and take
/// part of their connections.
#[test]
fn a_second_server_on_the_same_address_is_refused() {
    let first = Server::start("hello", &[]);
    assert!(!first.serving_processes().is_empty() || cores() == 1);
    let hello = component("hello");
    for processes in ["2", "1"] {
        let second = run_to_exit(&[
            hello.to_str().unwrap(),
            "--processes",
            processes,
            "--addr",
            &first.addr.to_string(),
        ]);
        assert!(
            !second.status.success(),
            "--processes {processes}: it served"
        );
        assert!(
            second
                .stderr
                .contains(&format!("error: cannot listen on {}", first.addr))
                && second.stderr.contains("in use"),
            "{}",
            second.stderr
        );
    }
}
