//! Key-value stores that misbehave, or that someone else writes to: a
//! SQLite file another process has locked, values and keys planted by
//! others that are larger than a guest may take, and the default store of
//! two applications. Whatever the store does, the server stays up, keeps its
//! threads and memory, and never commits a write its client was told failed.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{Conn, Redis, Server, get, temp_dir};
use hyper::StatusCode;

const GUEST: &str = "state-guest";

/// A Python process that holds the write lock of the SQLite file at `path`
/// (`BEGIN IMMEDIATE`, never committed) until it is dropped.
struct LockHolder(Child);

impl LockHolder {
    fn lock(path: &std::path::Path) -> LockHolder {
        let script = "import sqlite3, sys, time\n\
                      c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                      c.execute('BEGIN IMMEDIATE')\n\
                      print('locked', flush=True)\n\
                      time.sleep(600)\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        LockHolder(child)
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `sql` on the SQLite file at `path` with Python's sqlite3, as another
/// program on the machine would, and returns the first column of its rows.
fn sqlite(path: &std::path::Path, sql: &str) -> String {
    let script = "import sqlite3, sys\n\
                  c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                  for row in c.execute(sys.argv[2]): print(row[0])\n";
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(sql)
        .output()
        .expect("python3");
    assert!(output.status.success(), "{sql}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// Another process holds the SQLite file's write lock while 40 clients each
/// store 256 KiB with a 2 s deadline, twice. Every one is answered by its
/// deadline (504, or 503 when the store gave up first), other routes are
/// answered at once throughout, the server's threads stay as they were and
/// its memory does not grow from one wave to the next, and once the lock is
/// released none of the writes shows up: a client told its
/// write failed never finds it committed. The store then works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_locked_sqlite_file_commits_nothing_behind_the_clients_back() {
    let dir = temp_dir("sqlite-locked");
    let path = dir.join("kv.sqlite3");
    let url = format!("sqlite:{}", path.display());
    // One serving process: the memory check compares the instance slots
    // two waves leave resident, which only holds when one process takes
    // both (the kernel deals connections between processes differently in
    // each wave, and a process given more of them touches more slots).
    let server = Server::start(
        GUEST,
        &[
            "--keyvalue",
            &url,
            "--request-timeout",
            "2s",
            "--processes",
            "1",
        ],
    );
    assert_eq!(get(server.addr, "/count").await.text(), "1");
    let threads = server.threads();

    let lock = LockHolder::lock(&path);
    let mut rss_after_wave = Vec::new();
    for wave in 0..2 {
        let body = "x".repeat(256 << 10);
        let started = Instant::now();
        let writers: Vec<_> = (0..40)
            .map(|n| {
                let (addr, body) = (server.addr, body.clone());
                tokio::spawn(async move {
                    let mut conn = Conn::http1(addr).await;
                    let path = format!("/set?key=k{wave}-{n}");
                    let reply = conn.send("POST", &path, &body).await;
                    (reply.status, reply.text().to_string())
                })
            })
            .collect();
        // Other routes do not wait for the store.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let asked = Instant::now();
        assert_eq!(
            get(server.addr, "/config?key=x").await.status,
            StatusCode::NOT_FOUND
        );
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "{:?}",
            asked.elapsed()
        );
        let most_threads = server.threads();
        for writer in writers {
            let (status, text) = writer.await.unwrap();
            assert!(
                status == StatusCode::GATEWAY_TIMEOUT || status == StatusCode::SERVICE_UNAVAILABLE,
                "{status}: {text}"
            );
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "answered after {:?}",
            started.elapsed()
        );
        assert!(
            most_threads <= threads + 1,
            "{threads} threads before, {most_threads} while the lock was held"
        );
        rss_after_wave.push(server.rss_kib());
    }
    // The second wave finds the instance slots the first one used, and
    // nothing of the first one is still held: memory stays where it was.
    assert!(
        rss_after_wave[1] < rss_after_wave[0] + 8 * 1024,
        "RSS after each wave: {rss_after_wave:?} KiB"
    );
    drop(lock);
    // Give anything still in flight the time to land, were it going to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sqlite(&path, "SELECT count(*) FROM kv WHERE key LIKE 'k%'"),
        "0",
        "writes answered as failed were committed"
    );
    assert_eq!(server.threads(), threads);
    let mut conn = Conn::http1(server.addr).await;
    assert_eq!(
        conn.send("POST", "/set?key=after", "v").await.text(),
        "stored"
    );
    assert_eq!(get(server.addr, "/get?key=after").await.text(), "v");
}

/// A write that waits for a lock another process holds is given up before
/// the request's deadline, with time left for the guest to answer its
/// client itself: the client gets the guest's whole 503 with the store's
/// error, not a 504, nor a response the deadline cut off mid-body (which a
/// store giving up at the deadline itself made a race), and the write is
/// never committed.
#[tokio::test]
async fn a_guest_kept_waiting_by_a_lock_answers_before_its_deadline() {
    let dir = temp_dir("sqlite-margin");
    let path = dir.join("kv.sqlite3");
    let url = format!("sqlite:{}", path.display());
    let server = Server::start(GUEST, &["--keyvalue", &url, "--request-timeout", "2s"]);
    assert_eq!(get(server.addr, "/count").await.text(), "1");
    let lock = LockHolder::lock(&path);
    for n in 0..3 {
        let asked = Instant::now();
        let reply = Conn::http1(server.addr)
            .await
            .send("POST", &format!("/set?key=margin{n}"), "v")
            .await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert!(reply.text().starts_with("error: "), "{}", reply.text());
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
    }
    drop(lock);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sqlite(&path, "SELECT count(*) FROM kv WHERE key LIKE 'margin%'"),
        "0"
    );
}

/// SIGTERM while a write waits for a lock another process holds: the server
/// exits within `--shutdown-timeout`, whatever the store does, and the write
/// is not committed.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_locked_store() {
    let dir = temp_dir("sqlite-shutdown");
    let path = dir.join("kv.sqlite3");
    let url = format!("sqlite:{}", path.display());
    let mut server = Server::start(
        GUEST,
        &[
            "--keyvalue",
            &url,
            "--request-timeout",
            "60s",
            "--shutdown-timeout",
            "1s",
        ],
    );
    assert_eq!(get(server.addr, "/count").await.text(), "1");
    let lock = LockHolder::lock(&path);
    let addr = server.addr;
    let writer = tokio::spawn(async move {
        Conn::http1(addr)
            .await
            .try_send("POST", "/set?key=late", "v")
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    server.terminate();
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait();
        (status, server)
    })
    .await
    .unwrap()
    .0;
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(4), "exited after {took:?}");
    assert!(writer.await.unwrap().is_err(), "the write was answered");
    drop(lock);
    assert_eq!(
        sqlite(&path, "SELECT count(*) FROM kv WHERE key = 'late'"),
        "0"
    );
}

/// Sets `count` values of `mib` MiB each, named `{prefix}0`.. in the Redis
/// at `redis`, made inside Redis so they never cross the network here.
fn plant_in_redis(redis: &Redis, prefix: &str, count: usize, mib: usize) {
    for n in 0..count {
        redis.cli(&[
            "EVAL",
            "redis.call('SET', KEYS[1], string.rep('x', tonumber(ARGV[1])))",
            "1",
            &format!("{prefix}{n}"),
            &(mib << 20).to_string(),
        ]);
    }
}

/// Values larger than a guest may take, planted by someone else in a
/// shared Redis and SQLite file: `get` and `get-many` of them are refused
/// with an error that gives the size, eight at once, without the server
/// ever holding them (its peak memory stays far below one value), and a
/// key too long to take makes `list-keys` fail the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_values_planted_by_others_are_refused_unread() {
    let redis = Redis::start();
    plant_in_redis(&redis, "big", 8, 16);
    let dir = temp_dir("planted");
    let path = dir.join("kv.sqlite3");
    let sqlite_url = format!("local=sqlite:{}", path.display());
    let server = Server::start(
        GUEST,
        &["--keyvalue", &redis.url(), "--keyvalue", &sqlite_url],
    );
    // The SQLite file and its table, made by the server, then filled by
    // someone else.
    assert_eq!(get(server.addr, "/count?store=local").await.text(), "1");
    sqlite(
        &path,
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 7) \
         INSERT INTO kv (key, value) SELECT 'big' || i, zeroblob(16 * 1024 * 1024) FROM n",
    );
    let before = server.each_rss_kib();
    server.reset_peak_rss();

    let mut readers = Vec::new();
    for n in 0..8 {
        for path in [
            format!("/get?key=big{n}"),
            format!("/get?key=big{n}&store=local"),
            "/get-many?keys=big0,big1,big2,big3,big4,big5,big6,big7".to_string(),
            "/get-many?keys=big0,big1,big2,big3,big4,big5,big6,big7&store=local".to_string(),
        ] {
            let addr = server.addr;
            readers.push(tokio::spawn(async move { (get(addr, &path).await, path) }));
        }
    }
    for reader in readers {
        let (reply, path) = reader.await.unwrap();
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}: {}",
            reply.text()
        );
        assert!(
            reply.text().contains("16777216"),
            "{path}: {}",
            reply.text()
        );
    }
    // In each serving process: it has an instance pool of its own.
    let peak = server.each_peak_rss_kib();
    assert!(
        peak.iter()
            .zip(&before)
            .all(|(peak, before)| *peak < before + 32 * 1024),
        "peak RSS {peak:?} KiB, {before:?} KiB before the reads"
    );

    // A small value beside them is read as ever.
    redis.cli(&["SET", "small", "ok"]);
    assert_eq!(get(server.addr, "/get?key=small").await.text(), "ok");
    // A key over --keyvalue-max-key (1 KiB) fails the page that holds it.
    redis.cli(&["FLUSHALL"]);
    redis.cli(&["SET", &"k".repeat(2048), "v"]);
    let reply = get(server.addr, "/list").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("2048"), "{}", reply.text());
    sqlite(&path, "DELETE FROM kv");
    sqlite(
        &path,
        &format!("INSERT INTO kv VALUES ('{}', 'v')", "k".repeat(2048)),
    );
    let reply = get(server.addr, "/list?store=local").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert!(reply.text().contains("2048"), "{}", reply.text());
}

/// The default store belongs to the application: two servers with the
/// same data directory, serving different component files, do not see each
/// other's keys; the same file served again does.
#[tokio::test]
async fn applications_do_not_share_the_default_store() {
    let dir = temp_dir("default-scope");
    let data = dir.join("data");
    let data = data.to_str().unwrap();
    let (a, b) = (dir.join("a.wasm"), dir.join("b.wasm"));
    for copy in [&a, &b] {
        std::fs::copy(e2e::component(GUEST), copy).unwrap();
    }
    let env = [("XDG_DATA_HOME", data)];
    let first = Server::start_path(&a, &[], &env);
    let mut conn = Conn::http1(first.addr).await;
    assert_eq!(
        conn.send("POST", "/set?key=secret", "a's").await.text(),
        "stored"
    );
    let other = Server::start_path(&b, &[], &env);
    let reply = get(other.addr, "/get?key=secret").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());
    drop(first);
    let again = Server::start_path(&a, &[], &env);
    assert_eq!(get(again.addr, "/get?key=secret").await.text(), "a's");
    assert!(
        again.log().contains(&format!("{data}/wasi-http-server/")),
        "the startup log names where the store is:\n{}",
        again.log()
    );
}

/// A Redis password given in `--keyvalue` appears in no log line, text or
/// JSON, neither when the store works nor when the password is wrong (the
/// errors name the store with its password masked), and not in what the
/// guest is told.
#[tokio::test]
async fn redis_passwords_stay_out_of_the_logs() {
    let redis = Redis::start_with(&["--requirepass", "s3cret"]);
    let right = format!("cache=redis://:s3cret@127.0.0.1:{}/", redis.port());
    let wrong = format!("wrong=redis://:n0tright@127.0.0.1:{}/", redis.port());
    for format in ["text", "json"] {
        let args = [
            "--keyvalue",
            &right,
            "--keyvalue",
            &wrong,
            "--log-format",
            format,
        ];
        let server = Server::start(GUEST, &args);
        let reply = get(server.addr, "/count?store=cache").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let reply = get(server.addr, "/count?store=wrong").await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        server.wait_for_log("key-value store unavailable").await;
        let log = server.log();
        for secret in ["s3cret", "n0tright"] {
            assert!(!log.contains(secret), "{format} log:\n{log}");
            assert!(!reply.text().contains(secret), "{}", reply.text());
        }
        assert!(log.contains(":***@127.0.0.1"), "{format} log:\n{log}");
    }
}

/// A TCP proxy on `127.0.0.1:0` to a local port, that can stop forwarding
/// as a network that drops packets does: connections open while it is
/// stopped stay open and forward nothing ever again (as after a failover,
/// or a route that went away); new ones forward again once it is resumed.
struct BlackHoleProxy {
    port: u16,
    black_hole: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accepter: tokio::task::JoinHandle<()>,
}

impl BlackHoleProxy {
    async fn start(target: u16) -> BlackHoleProxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let black_hole = Arc::new(AtomicBool::new(false));
        let hole = black_hole.clone();
        let accepter = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let dead = Arc::new(AtomicBool::new(false));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                for (mut from, mut to) in [(client_read, server_write), (server_read, client_write)]
                {
                    let (hole, dead) = (hole.clone(), dead.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0; 64 << 10];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if hole.load(Ordering::SeqCst) {
                                dead.store(true, Ordering::SeqCst);
                            }
                            if dead.load(Ordering::SeqCst) {
                                continue;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        BlackHoleProxy {
            port,
            black_hole,
            accepter,
        }
    }

    fn black_hole(&self, on: bool) {
        self.black_hole
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for BlackHoleProxy {
    fn drop(&mut self) {
        self.accepter.abort();
    }
}

/// Redis behind a network that starts dropping everything: calls fail
/// within the response timeout instead of hanging, and once the network
/// carries packets again (or Redis is reached anew after a failover) calls
/// succeed within seconds, though the old connection never answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_redis_connection_is_replaced() {
    let redis = Redis::start();
    let proxy = BlackHoleProxy::start(redis.port()).await;
    let url = format!("redis://127.0.0.1:{}/", proxy.port);
    let server = Server::start(GUEST, &["--keyvalue", &url]);
    assert_eq!(get(server.addr, "/count").await.text(), "1");

    proxy.black_hole(true);
    let asked = Instant::now();
    let reply = get(server.addr, "/count").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "failed after {:?}",
        asked.elapsed()
    );

    proxy.black_hole(false);
    let resumed = Instant::now();
    loop {
        let reply = get(server.addr, "/count").await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert!(
            resumed.elapsed() < Duration::from_secs(10),
            "still failing {:?} after the network came back: {}",
            resumed.elapsed(),
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A guest passing the host a 20 MiB value, far more than any call within
/// its limits needs (a batch of the largest keys and values, 16 MiB by
/// default): the call traps before the host copies it out of the guest,
/// instead of the host taking all of it and then refusing it.
#[tokio::test]
async fn one_host_call_cannot_hand_the_host_more_than_the_budget() {
    let dir = temp_dir("hostcall-fuel");
    let url = format!("sqlite:{}", dir.join("kv.sqlite3").display());
    let server = Server::start(GUEST, &["--keyvalue", &url, "--max-body", "32MiB"]);
    let mut conn = Conn::http1(server.addr).await;
    let reply = conn
        .send("POST", "/set?key=huge", &"x".repeat(20 << 20))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        reply.text()
    );
    server.wait_for_log("answered 500").await;
    assert!(
        server.log().to_lowercase().contains("fuel"),
        "{}",
        server.log()
    );
    // Within the limits, a value is stored as ever.
    let reply = conn
        .send("POST", "/set?key=fine", &"x".repeat(1 << 20))
        .await;
    assert_eq!(reply.text(), "stored");
}
