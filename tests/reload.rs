//! Reload without a restart: `--watch` and SIGHUP swap in a new component
//! while requests keep flowing; a broken file leaves the old one serving.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{Conn, STEP_TIMEOUT, Server, assert_hello, component, get};
use hyper::StatusCode;

/// A private copy of hello.wasm for one test, which the test then replaces.
fn app(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("e2e-reload-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.wasm");
    std::fs::copy(component("hello"), &path).unwrap();
    path
}

/// Replaces `path` the way deploy tools do: write beside it, rename over it.
fn replace(path: &Path, bytes: &[u8]) {
    let next = path.with_extension("next");
    std::fs::write(&next, bytes).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// Requests `/` on `clients` keep-alive connections until every one has seen
/// the testbed's answer or [`STEP_TIMEOUT`] passes; returns the answers that
/// were neither hello's nor the testbed's, and how many requests were made.
async fn load_until_testbed(addr: std::net::SocketAddr, clients: usize) -> (Vec<String>, usize) {
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            tokio::spawn(async move {
                let mut conn = Conn::http1(addr).await;
                let (mut wrong, mut sent) = (Vec::new(), 0);
                let deadline = Instant::now() + STEP_TIMEOUT;
                while Instant::now() < deadline {
                    let reply = conn.send("GET", "/", "").await;
                    sent += 1;
                    match (reply.status, reply.text()) {
                        (StatusCode::OK, "testbed\n") => break,
                        (StatusCode::OK, "Hello World\n") => {}
                        (status, text) => wrong.push(format!("{status} {text:?}")),
                    }
                }
                (wrong, sent)
            })
        })
        .collect();
    let (mut wrong, mut sent) = (Vec::new(), 0);
    for task in tasks {
        let (w, s) = task.await.unwrap();
        wrong.extend(w);
        sent += s;
    }
    (wrong, sent)
}

/// With `--watch`, replacing the file under continuous load swaps the
/// component: every client moves from hello to the testbed, and not one
/// request fails on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_swaps_under_load_without_failures() {
    let path = app("watch");
    let server = Server::start_path(&path, &["--watch"], &[]);
    let load = tokio::spawn(load_until_testbed(server.addr, 4));
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace(&path, &std::fs::read(component("testbed")).unwrap());

    let (wrong, sent) = load.await.unwrap();
    assert!(
        wrong.is_empty(),
        "{} failed requests of {sent}: {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(5)]
    );
    server
        .wait_for_log_in_each("new requests go to the new component", 1)
        .await;
    assert_eq!(get(server.addr, "/counter").await.text(), "1\n");
}

/// A broken replacement is refused: the log says why, and the old component
/// keeps serving.
#[tokio::test]
async fn broken_replacement_keeps_the_old_component() {
    let path = app("broken");
    let server = Server::start_path(&path, &["--watch"], &[]);
    replace(&path, b"not a component at all");
    server
        .wait_for_log_in_each("reload failed, still serving the previous component", 1)
        .await;
    assert_hello(&get(server.addr, "/").await);
}

/// Without `--watch` a changed file is left alone until SIGHUP, which
/// reloads it.
#[tokio::test]
async fn sighup_reloads_on_demand() {
    let path = app("hup");
    let server = Server::start_path(&path, &[], &[]);
    replace(&path, &std::fs::read(component("testbed")).unwrap());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_hello(&get(server.addr, "/").await);

    server.hangup();
    server
        .wait_for_log_in_each("new requests go to the new component", 1)
        .await;
    let reply = get(server.addr, "/").await;
    assert_eq!((reply.status, reply.text()), (StatusCode::OK, "testbed\n"));
}

/// A reload's trial instantiation takes an instance slot like a request:
/// with the only slot busy, SIGHUP waits for it instead of failing (or
/// taking the slot from a request), and the request in flight finishes.
#[tokio::test]
async fn reload_with_every_slot_busy_waits_for_one() {
    let path = app("busy");
    std::fs::copy(component("testbed"), &path).unwrap();
    let server = Server::start_path(&path, &["--max-concurrent-requests", "1"], &[]);
    let addr = server.addr;
    let slow = tokio::spawn(async move { get(addr, "/sleep?ms=1000").await });
    server.wait_for_log("sleep: start 1000 ms").await;
    server.hangup();
    server
        .wait_for_log_in_each("new requests go to the new component", 1)
        .await;
    let reply = slow.await.unwrap();
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "slept 1000 ms\n")
    );
    assert!(!server.log().contains("reload failed"), "{}", server.log());
    assert_eq!(get(addr, "/counter").await.text(), "1\n");
}

/// A reload may switch kinds: a server started on a WASI 0.2 component
/// serves a WASI 0.3 one after SIGHUP, and a 0.2 one again after the next.
#[tokio::test]
async fn reload_switches_between_wasi_02_and_03() {
    let path = app("kinds");
    let server = Server::start_path(&path, &[], &[]);
    assert_hello(&get(server.addr, "/").await);

    replace(&path, &std::fs::read(component("testbed-p3")).unwrap());
    server.hangup();
    server
        .wait_for_log_in_each("a WASI 0.3 (wasi:http/handler) component: new requests", 1)
        .await;
    let reply = get(server.addr, "/sleep?ms=1").await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "slept 1 ms\n")
    );

    replace(&path, &std::fs::read(component("hello")).unwrap());
    server.hangup();
    server
        .wait_for_log_in_each(
            "a WASI 0.2 (wasi:http/incoming-handler) component: new requests",
            1,
        )
        .await;
    assert_hello(&get(server.addr, "/").await);
}

/// SIGHUP while the component is still compiling (the Python guest, with
/// no cache, takes seconds) does not end the process: it starts and serves.
#[tokio::test]
async fn sighup_while_compiling_is_harmless() {
    let marker = format!("SIGHUP_MARKER_{}", std::process::id());
    let env = format!("{marker}=1");
    let sender = {
        let marker = marker.clone();
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + e2e::STEP_TIMEOUT;
            while std::time::Instant::now() < deadline {
                for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                    let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                    if String::from_utf8_lossy(&cmdline).contains(&marker) {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        let pid = entry.file_name().into_string().unwrap();
                        let sent = std::process::Command::new("kill")
                            .args(["-HUP", &pid])
                            .status()
                            .unwrap();
                        return sent.success();
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            false
        })
    };
    let server = Server::start("python-guest", &["--no-cache", "--env", &env]);
    assert!(sender.join().unwrap(), "no SIGHUP was sent");
    assert_eq!(get(server.addr, "/").await.status, hyper::StatusCode::OK);
    let log = server.log();
    let ready = log.find("ready in").expect("a ready line");
    assert!(
        log[..ready].contains("preparing"),
        "the SIGHUP came after the compile:\n{log}"
    );
}
