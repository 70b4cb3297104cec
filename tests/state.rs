//! Configuration (`--config`, `wasi:config`) and state (`--keyvalue`,
//! `wasi:keyvalue`) for components, against a real SQLite file and a real
//! Redis (Debian's `redis-server`, started here on a free loopback port), with
//! the `state-guest` component, which counts requests in a store.

use std::time::{Duration, Instant};

use e2e::{Conn, Redis, STEP_TIMEOUT, Server, get};
use hyper::StatusCode;

const GUEST: &str = "state-guest";

/// `/count` on `server`: the new value of the counter.
async fn count(server: &Server) -> u64 {
    let reply = get(server.addr, "/count").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.text().parse().expect("a number")
}

/// `--config` values reach the guest; an unset key is `none`; and the
/// server's own environment reaches it only when asked for by name.
#[tokio::test]
async fn config_values_reach_the_guest() {
    let server = Server::start_with_env(
        GUEST,
        &["--config", "greeting=hello there", "--config", "FROM_ENV"],
        &[("FROM_ENV", "passed on"), ("SECRET", "never given")],
    );
    let reply = get(server.addr, "/config?key=greeting").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello there");
    let reply = get(server.addr, "/config?key=unset").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.text(), "none");
    let reply = get(server.addr, "/config?key=SECRET").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let reply = get(server.addr, "/config-all").await;
    assert_eq!(reply.text(), "FROM_ENV=passed on\ngreeting=hello there\n");
}

/// A WASI 0.3 guest imports `wasi:config` 0.2 (there is no 0.3 version) and
/// gets the same answers.
#[tokio::test]
async fn config_values_reach_a_wasi_0_3_guest() {
    let server = Server::start("testbed-p3", &["--config", "greeting=hello there"]);
    let reply = get(server.addr, "/config?key=greeting").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello there");
    let reply = get(server.addr, "/config?key=unset").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

/// 200 `/count` requests over `servers`, 8 at a time, each a different
/// count (atomics, not get-then-set); the stored counter ends at 200.
async fn count_to_200(servers: &[&Server]) {
    e2e::each_answer_once(servers, "/count", 200).await;
    let reply = get(servers[0].addr, "/get?key=counter").await;
    assert_eq!(reply.text(), "200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_redis() {
    let redis = Redis::start();
    let url = redis.url();
    let args = ["--keyvalue", url.as_str()];
    let (a, b) = (Server::start(GUEST, &args), Server::start(GUEST, &args));
    count_to_200(&[&a, &b]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_sqlite_file() {
    let dir = e2e::temp_dir("shared");
    let url = format!("sqlite:{}", dir.join("kv.db").display());
    let args = ["--keyvalue", url.as_str()];
    let (a, b) = (Server::start(GUEST, &args), Server::start(GUEST, &args));
    count_to_200(&[&a, &b]).await;
}

/// Without `--keyvalue`, the default store is a SQLite file in the data
/// directory, and its data outlives the server.
#[tokio::test]
async fn the_default_store_survives_a_restart() {
    let data = e2e::temp_dir("default");
    let env = [("XDG_DATA_HOME", data.to_str().unwrap())];
    let server = Server::start_with_env(GUEST, &[], &env);
    for expected in 1..=3 {
        assert_eq!(count(&server).await, expected);
    }
    drop(server);
    let stores: Vec<_> = std::fs::read_dir(data.join("wasi-http-server/keyvalue"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        stores
            .iter()
            .any(|name| name.starts_with("state-guest-") && name.ends_with(".sqlite3")),
        "{stores:?}"
    );

    let server = Server::start_with_env(GUEST, &[], &env);
    assert_eq!(count(&server).await, 4);
}

/// A guest that never touches key-value leaves no file behind.
#[tokio::test]
async fn no_store_file_until_a_guest_uses_one() {
    let data = e2e::temp_dir("unused");
    let env = [("XDG_DATA_HOME", data.to_str().unwrap())];
    let server = Server::start_with_env(GUEST, &[], &env);
    assert_eq!(
        get(server.addr, "/config?key=x").await.status,
        StatusCode::NOT_FOUND
    );
    drop(server);
    assert!(!data.join("wasi-http-server").exists());
}

/// Redis stopped mid-run: the guest gets an error and answers with it, the
/// server stays up, the log says so once, and when Redis is back the counter
/// moves again without a restart.
#[tokio::test]
async fn a_redis_outage_is_survived() {
    let mut redis = Redis::start();
    let url = redis.url();
    let server = Server::start(GUEST, &["--keyvalue", url.as_str()]);
    assert_eq!(count(&server).await, 1);

    redis.stop();
    for _ in 0..5 {
        let reply = get(server.addr, "/count").await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(reply.text().contains("unavailable"), "{}", reply.text());
    }
    // Everything else is served as usual.
    assert_eq!(
        get(server.addr, "/config?key=x").await.status,
        StatusCode::NOT_FOUND
    );
    server.wait_for_log("key-value store unavailable").await;
    // Once per outage by each serving process that saw it.
    let log = server.log();
    let mut seen = std::collections::HashMap::new();
    for line in log
        .lines()
        .filter(|l| l.contains("key-value store unavailable"))
    {
        *seen.entry(e2e::process_of(line)).or_insert(0) += 1;
    }
    assert!(
        seen.values().all(|&times| times == 1),
        "logged once per outage:\n{log}"
    );

    // A fresh Redis (nothing saved): the count starts over.
    redis.restart();
    // Each serving process reconnects on its own: one still doing so
    // answers 503 meanwhile, and each answer counts on from the same store.
    let started = Instant::now();
    for expected in ["1", "2"] {
        loop {
            let reply = get(server.addr, "/count").await;
            if reply.status == StatusCode::OK {
                assert_eq!(reply.text(), expected);
                break;
            }
            assert_eq!(
                reply.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{}",
                reply.text()
            );
            assert!(
                started.elapsed() < STEP_TIMEOUT,
                "never reconnected: {}",
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    server.wait_for_log("key-value store answers again").await;
}

/// A Redis that hangs holds no request past its deadline: the guest is
/// stopped at `--request-timeout` (504) while other requests are served, and
/// once Redis answers again so does the store.
#[tokio::test]
async fn a_hung_redis_is_bounded_by_the_deadline() {
    let redis = Redis::start();
    let url = redis.url();
    let server = Server::start(
        GUEST,
        &["--keyvalue", url.as_str(), "--request-timeout", "1s"],
    );
    assert_eq!(count(&server).await, 1);

    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    let reply = get(server.addr, "/count").await;
    let waited = started.elapsed();
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        reply.text()
    );
    assert!(waited < Duration::from_secs(3), "answered after {waited:?}");
    assert_eq!(
        get(server.addr, "/config?key=x").await.status,
        StatusCode::NOT_FOUND
    );

    redis.signal(libc::SIGCONT);
    let started = Instant::now();
    loop {
        let reply = get(server.addr, "/count").await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < STEP_TIMEOUT,
            "never recovered: {}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An unknown store, an oversized value, a key that is too long, a batch
/// that is too large and a guest that never closes its buckets each get a
/// clear error, and nothing of them outlives the request.
#[tokio::test]
async fn bad_calls_get_clear_errors() {
    let dir = e2e::temp_dir("errors");
    let url = format!("sqlite:{}", dir.join("kv.db").display());
    let server = Server::start(
        GUEST,
        &["--keyvalue", url.as_str(), "--keyvalue-max-value", "1KiB"],
    );

    let reply = get(server.addr, "/count?store=nope").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reply.text().contains("NoSuchStore"), "{}", reply.text());

    let mut conn = Conn::http1(server.addr).await;
    let reply = conn.send("POST", "/set?key=k", &"x".repeat(1024)).await;
    assert_eq!(reply.text(), "stored");
    let reply = conn.send("POST", "/set?key=k", &"x".repeat(1025)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.text().contains("--keyvalue-max-value"),
        "{}",
        reply.text()
    );

    let long_key = "k".repeat(1025);
    let reply = conn
        .send("POST", &format!("/set?key={long_key}"), "v")
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.text().contains("--keyvalue-max-key"),
        "{}",
        reply.text()
    );

    // The default batch limit is 8 keys.
    assert_eq!(
        get(server.addr, "/set-many?keys=8").await.text(),
        "stored 8"
    );
    let reply = get(server.addr, "/set-many?keys=9").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply.text().contains("--keyvalue-max-batch"),
        "{}",
        reply.text()
    );

    // Buckets are resources under the request's cap, freed with its
    // instance: 300 fit, every time; 1,000 run into the cap.
    for _ in 0..2 {
        assert_eq!(
            get(server.addr, "/leak?buckets=300").await.text(),
            "opened 300"
        );
    }
    let reply = get(server.addr, "/leak?buckets=1000").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    server.wait_for_log("resource table has no free keys").await;
    assert_eq!(
        get(server.addr, "/leak?buckets=300").await.text(),
        "opened 300"
    );
    assert_eq!(count(&server).await, 1);
}
