//! Components written with Spin's SDKs, built as their users build them
//! (`make real-guests`), run unchanged: spin-sdk 7 (WASI 0.3, Spin's
//! `spin:key-value@3.0.0` and `spin:variables@3.0.0`, the experimental
//! `wasi:keyvalue@0.2.0-draft2` and `wasi:config@0.2.0-draft-2024-09-27`),
//! spin-sdk 5.2 (WASI 0.2, `fermyon:spin` 2.0.0), and what is refused: a
//! component using Spin's SQLite, and PyPI's spin-sdk, whose componentize-py
//! build imports every Spin API.

use e2e::{Redis, Server, get, get_ok, run_to_exit};
use hyper::StatusCode;

/// spin-sdk 7: WASI 0.3, Spin's 3.0.0 interfaces.
const SDK7: &str = "spin-guest";
/// spin-sdk 5.2: WASI 0.2, Spin's 2.0.0 interfaces.
const SDK5: &str = "spin-v2-guest";

/// Both SDKs' components answer, count on the default store across requests
/// and across a restart of the server, and list the store's keys (streamed
/// in 3.0.0, one list in 2.0.0).
#[tokio::test]
async fn spin_sdk_components_count_on_the_default_store_across_a_restart() {
    for guest in [SDK7, SDK5] {
        let data = e2e::temp_dir(&format!("spin-default-{guest}"));
        let env = [("XDG_DATA_HOME", data.to_str().unwrap())];
        let server = Server::start_with_env(guest, &[], &env);
        assert_eq!(get_ok(server.addr, "/").await, "Hello World\n", "{guest}");
        for expected in 1..=3 {
            assert_eq!(
                get_ok(server.addr, "/count").await,
                format!("{expected}\n"),
                "{guest}"
            );
        }
        drop(server);
        let server = Server::start_with_env(guest, &[], &env);
        assert_eq!(get_ok(server.addr, "/count").await, "4\n", "{guest}");
        assert_eq!(get_ok(server.addr, "/keys").await, "count\n", "{guest}");
        let reply = get(server.addr, "/no-such-route").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{guest}");
    }
}

/// `--config` feeds Spin's variables under Spin's rules (a valid name with
/// no value is `undefined`, a name Spin does not allow is `invalid-name`)
/// and `wasi:config`, which answers any key it was given.
#[tokio::test]
async fn variables_come_from_config_under_spins_name_rules() {
    let args = [
        "--config",
        "api_url=https://api.test",
        "--config",
        "Upper=u",
    ];
    for guest in [SDK7, SDK5] {
        let server = Server::start(guest, &args);
        assert_eq!(
            get_ok(server.addr, "/var/api_url").await,
            "https://api.test"
        );
        let reply = get(server.addr, "/var/missing").await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{guest}");
        assert!(
            reply.text().contains("Undefined") && reply.text().contains("missing"),
            "{guest}: {}",
            reply.text()
        );
        let reply = get(server.addr, "/var/Upper").await;
        assert!(
            reply.text().contains("InvalidName") && reply.text().contains("lower-case"),
            "{guest}: {}",
            reply.text()
        );
    }
    let server = Server::start(SDK7, &args);
    assert_eq!(get_ok(server.addr, "/config/Upper").await, "u");
    assert_eq!(
        get_ok(server.addr, "/config/api_url").await,
        "https://api.test"
    );
    let reply = get(server.addr, "/config/missing").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

/// A store label the server was not given is `no-such-store`, in both
/// versions; one named with `--keyvalue LABEL=URL` opens.
#[tokio::test]
async fn only_the_stores_given_open() {
    let dir = e2e::temp_dir("spin-labels");
    let url = format!("reports=sqlite:{}", dir.join("reports.db").display());
    for guest in [SDK7, SDK5] {
        let server = Server::start(guest, &["--keyvalue", &url]);
        let reply = get(server.addr, "/open/other").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{guest}");
        assert!(
            reply.text().contains("NoSuchStore"),
            "{guest}: {}",
            reply.text()
        );
        assert_eq!(
            get_ok(server.addr, "/open/reports").await,
            "opened\n",
            "{guest}"
        );
    }
}

/// spin-sdk 7's `wasi:keyvalue@0.2.0-draft2` atomics count exactly under 8
/// concurrent clients on two servers sharing one Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_redis_count_exactly_by_draft2_atomics() {
    let redis = Redis::start();
    let url = redis.url();
    let args = ["--keyvalue", url.as_str()];
    let (a, b) = (Server::start(SDK7, &args), Server::start(SDK7, &args));
    e2e::each_answer_once(&[&a, &b], "/incr", 200).await;
    assert_eq!(redis.cli(&["GET", "hits"]).trim(), "200");
}

/// Compare-and-swap loses no write: each `/cas` appends one byte to a shared
/// value by reading it and swapping it only if unchanged, retrying
/// otherwise, from 8 clients on two servers; every length from 1 to the
/// total is answered once. On Redis (a script) and on one SQLite file (a
/// transaction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_loses_no_write_between_two_servers() {
    let redis = Redis::start();
    let dir = e2e::temp_dir("spin-cas");
    let sqlite = format!("sqlite:{}", dir.join("kv.db").display());
    for url in [redis.url(), sqlite] {
        let args = ["--keyvalue", url.as_str()];
        let (a, b) = (Server::start(SDK7, &args), Server::start(SDK7, &args));
        e2e::each_answer_once(&[&a, &b], "/cas", 80).await;
    }
    assert_eq!(redis.cli(&["STRLEN", "cas"]).trim(), "80");
}

/// Listing every key at once is bounded: a store that someone else filled
/// with more keys than a batch read may return fails the listing with the
/// flag to raise, in both versions, instead of costing the host the
/// memory; the server goes on serving.
#[tokio::test]
async fn listing_a_store_too_large_for_one_answer_is_refused() {
    let redis = Redis::start();
    redis.cli(&[
        "EVAL",
        "for i = 1, 200 do redis.call('SET', 'planted-' .. i, 'v') end return 1",
        "0",
    ]);
    let url = redis.url();
    let args = [
        "--keyvalue",
        url.as_str(),
        "--keyvalue-max-batch",
        "4",
        "--keyvalue-max-value",
        "16",
    ];
    for guest in [SDK7, SDK5] {
        let server = Server::start(guest, &args);
        let reply = get(server.addr, "/keys").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR, "{guest}");
        assert!(
            reply
                .text()
                .contains("is over the 64 allowed (--keyvalue-max-batch)"),
            "{guest}: {}",
            reply.text()
        );
        assert_eq!(get_ok(server.addr, "/").await, "Hello World\n");
    }
    let server = Server::start(SDK7, &["--keyvalue", url.as_str()]);
    assert_eq!(get_ok(server.addr, "/keys").await.lines().count(), 200);
}

/// A component that uses Spin's SQLite is refused at load, with one line
/// naming the import.
#[test]
fn a_component_using_spin_sqlite_is_refused_naming_the_import() {
    let path = e2e::component("spin-sqlite-guest");
    let failed = run_to_exit(&[path.to_str().unwrap(), "--addr", "127.0.0.1:0"]);
    let error = failed.the_error();
    assert!(
        error.contains("`spin:sqlite/sqlite@3.1.0`: Spin-only API this server does not provide"),
        "{error}"
    );
}

/// PyPI's spin-sdk builds (componentize-py) a component that imports every
/// API of Spin's platform, used or not, so it is refused, naming them: what
/// it takes to run one is in the README.
#[test]
fn pythons_spin_sdk_component_is_refused_naming_the_spin_apis_it_imports() {
    let path = e2e::component("spin-python-guest");
    let failed = run_to_exit(&[path.to_str().unwrap(), "--addr", "127.0.0.1:0"]);
    assert!(!failed.status.success());
    for api in [
        "`spin:sqlite/sqlite@3.1.0`",
        "`spin:mqtt/mqtt@3.0.0`",
        "`fermyon:spin/llm@2.0.0`",
        "Spin-only APIs this server does not provide",
    ] {
        assert!(failed.stderr.contains(api), "{api}: {}", failed.stderr);
    }
    assert!(!failed.stderr.contains("`spin:key-value/key-value@3.0.0`"));
}
