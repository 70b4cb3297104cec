//! The compile cache: a restart loads the compiled component instead of
//! compiling it, and a corrupted entry is recompiled, never run.

use std::path::{Path, PathBuf};

use e2e::{Server, assert_hello, get};

/// A fresh, empty cache directory for one test.
fn cache_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("e2e-cache-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The one entry in `dir`.
fn entry(dir: &Path) -> PathBuf {
    let entries: Vec<_> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().unwrap()
}

const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "wasi_http_server=debug")];

/// The first start compiles and stores the component; the second loads it.
#[tokio::test]
async fn a_restart_loads_the_compiled_component() {
    let dir = cache_dir("reuse");
    let args = ["--cache-dir", dir.to_str().unwrap()];
    let first = Server::start_with_env("hello", &args, DEBUG);
    assert_hello(&get(first.addr, "/").await);
    assert!(!first.log().contains("from the cache"), "{}", first.log());
    drop(first);
    entry(&dir);

    let second = Server::start_with_env("hello", &args, DEBUG);
    assert!(
        second
            .log()
            .contains("loaded the compiled component from the cache"),
        "{}",
        second.log()
    );
    assert_hello(&get(second.addr, "/").await);
}

/// A corrupted entry is detected by its checksum and recompiled: the server
/// serves correctly, says so in the log, and rewrites a good entry.
#[tokio::test]
async fn a_corrupted_entry_is_recompiled() {
    let dir = cache_dir("corrupt");
    let args = ["--cache-dir", dir.to_str().unwrap()];
    drop(Server::start("hello", &args));
    let path = entry(&dir);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    let server = Server::start_with_env("hello", &args, DEBUG);
    assert!(
        server.log().contains("corrupted cache entry"),
        "{}",
        server.log()
    );
    assert_hello(&get(server.addr, "/").await);
    drop(server);

    let server = Server::start_with_env("hello", &args, DEBUG);
    assert!(
        server
            .log()
            .contains("loaded the compiled component from the cache"),
        "{}",
        server.log()
    );
}

/// `--no-cache` neither reads nor writes a cache.
#[tokio::test]
async fn no_cache_compiles_every_time() {
    let dir = cache_dir("none");
    let server = Server::start_with_env(
        "hello",
        &["--no-cache"],
        &[("XDG_CACHE_HOME", dir.to_str().unwrap())],
    );
    assert_hello(&get(server.addr, "/").await);
    assert!(!dir.exists());
}
