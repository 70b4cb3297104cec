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

/// The one entry in `dir`, the compiled code; its checksum is beside it.
fn entry(dir: &Path) -> PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("cache dir")
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "cwasm", "{files:?}");
    assert_eq!(files[1], files[0].with_extension("xxh3"), "{files:?}");
    files.swap_remove(0)
}

const DEBUG: &[(&str, &str)] = &[("RUST_LOG", "wasi_http_server=debug")];

/// What the startup log says a load did.
const COMPILED: &str = "ready in";
const FROM_CACHE: &str = ": loaded from the compile cache;";

/// The first start compiles and stores the component (once: the first
/// serving process compiles, the others load its entry); the second start
/// loads it everywhere. The log says, before, which component is being
/// prepared and its size, and after, how long it took and whether the cache
/// served it.
#[tokio::test]
async fn a_restart_loads_the_compiled_component() {
    let dir = cache_dir("reuse");
    let args = ["--cache-dir", dir.to_str().unwrap()];
    let first = Server::start("hello", &args);
    assert_hello(&get(first.addr, "/").await);
    // Log lines are written by their own thread: wait for them.
    first.wait_for_log_in_each(COMPILED, 1).await;
    let log = first.log();
    assert!(
        log.contains("preparing ") && log.contains("hello.wasm (20"),
        "{log}"
    );
    assert_eq!(log.matches(": compiled;").count(), 1, "{log}");
    drop(first);
    entry(&dir);

    let second = Server::start("hello", &args);
    second.wait_for_log_in_each(FROM_CACHE, 1).await;
    assert!(!second.log().contains(": compiled"), "{}", second.log());
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
    server.wait_for_log("corrupted cache entry").await;
    assert_hello(&get(server.addr, "/").await);
    drop(server);

    let server = Server::start("hello", &args);
    server.wait_for_log(FROM_CACHE).await;
}

/// `--no-cache` neither reads nor writes the cache: every start compiles
/// (once, whatever the number of serving processes: see
/// `tests/processes.rs`), alone with `--processes 1` too.
#[tokio::test]
async fn no_cache_compiles_every_time() {
    let dir = cache_dir("none");
    for processes in [None, Some("1")] {
        for _ in 0..2 {
            let mut args = vec!["--no-cache"];
            args.extend(processes.iter().flat_map(|n| ["--processes", n]));
            let server = Server::start_with_env(
                "hello",
                &args,
                &[("XDG_CACHE_HOME", dir.to_str().unwrap())],
            );
            assert_hello(&get(server.addr, "/").await);
            server.wait_for_log_in_each(COMPILED, 1).await;
            assert_eq!(
                server.log().matches(": compiled").count(),
                1,
                "{}",
                server.log()
            );
            if processes.is_some() {
                assert!(
                    server.log().contains(": compiled (--no-cache)"),
                    "{}",
                    server.log()
                );
            }
        }
    }
    assert!(!dir.exists());
}

/// Entries are run as native code, so a cache directory that others may
/// write to is refused: the server does not start, and says why in one line.
#[test]
fn a_cache_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = cache_dir("shared");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let hello = e2e::component("hello");
    let outcome = e2e::run_to_exit(&[
        hello.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--cache-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(!outcome.status.success());
    assert!(outcome.stdout.is_empty(), "it listened: {}", outcome.stdout);
    assert!(
        outcome.stderr.contains("group or others may write to it"),
        "{}",
        outcome.stderr
    );

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    drop(Server::start(
        "hello",
        &["--cache-dir", dir.to_str().unwrap()],
    ));
}

/// A cache directory reached through a symbolic link is refused, even one
/// pointing at a private directory: whoever can change the link chooses
/// the code the server runs. The same holds when the directory is swapped
/// for a link after the server started: the next load (a reload) refuses
/// it, and the component already loaded goes on serving.
#[tokio::test]
async fn a_symlinked_or_swapped_cache_is_refused() {
    let dir = cache_dir("linked");
    let real = dir.join("real");
    let link = dir.join("link");
    std::fs::create_dir_all(&real).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let hello = e2e::component("hello");
    let outcome = e2e::run_to_exit(&[
        hello.to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--cache-dir",
        link.to_str().unwrap(),
    ]);
    assert!(!outcome.status.success());
    assert!(outcome.stdout.is_empty(), "it listened: {}", outcome.stdout);
    assert!(
        outcome.stderr.contains("symbolic link"),
        "{}",
        outcome.stderr
    );

    let cache = dir.join("cache");
    let server = Server::start("hello", &["--cache-dir", cache.to_str().unwrap()]);
    std::fs::rename(&cache, dir.join("moved")).unwrap();
    std::os::unix::fs::symlink(&real, &cache).unwrap();
    server.hangup();
    server.wait_for_log("symbolic link").await;
    e2e::assert_hello(&e2e::get(server.addr, "/").await);
}
