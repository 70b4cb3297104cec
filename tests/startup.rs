//! Startup failures: one clear line on stderr, a non-zero exit, and nothing
//! listening (the "Server running" line never appears).

use std::net::TcpListener;

use e2e::{Failed, component, run_to_exit};

fn assert_refused(outcome: &Failed, expected: &str) {
    assert!(
        !outcome.status.success(),
        "exit status {:?}",
        outcome.status
    );
    assert!(outcome.stdout.is_empty(), "it listened: {}", outcome.stdout);
    assert!(
        outcome.stderr.contains(expected),
        "no {expected:?} in:\n{}",
        outcome.stderr
    );
    // Beside the progress lines of loading the component (which name the
    // file and how long it took), the failure is one line.
    let failure: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|line| !line.contains(" INFO wasi_http_server::compile: "))
        .collect();
    assert_eq!(failure.len(), 1, "not one line:\n{}", outcome.stderr);
    assert!(failure[0].starts_with("error: "), "{}", outcome.stderr);
    assert!(!outcome.stderr.contains("panicked"), "{}", outcome.stderr);
}

fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("e2e-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A path that does not exist is named, with the OS's reason.
#[test]
fn missing_file() {
    let outcome = run_to_exit(&["/no/such/component.wasm", "--addr", "127.0.0.1:0"]);
    assert_refused(
        &outcome,
        "/no/such/component.wasm: No such file or directory",
    );
}

/// A file that is not wasm at all is called out as not a component.
#[test]
fn not_a_component() {
    let path = temp_file("text.wasm", b"hello, I am text");
    let outcome = run_to_exit(&[path.to_str().unwrap(), "--addr", "127.0.0.1:0"]);
    assert_refused(&outcome, "is not a WebAssembly component");
}

/// A core module (what `cargo build --target wasm32-unknown-unknown` makes)
/// is recognised as such, with the way out.
#[test]
fn core_module_is_not_a_component() {
    let hello = component("hello");
    let core = hello
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("wasm32-unknown-unknown/guest/hello.wasm");
    let outcome = run_to_exit(&[core.to_str().unwrap(), "--addr", "127.0.0.1:0"]);
    assert_refused(&outcome, "is a core wasm module, not a component");
}

/// A valid component that does not export `wasi:http/incoming-handler`.
#[test]
fn component_without_the_handler_export() {
    // The smallest valid component: header only, no imports, no exports.
    let path = temp_file("empty.wasm", b"\0asm\x0d\0\x01\0");
    let outcome = run_to_exit(&[path.to_str().unwrap(), "--addr", "127.0.0.1:0"]);
    // Both handlers the server takes are named.
    assert_refused(
        &outcome,
        "exports neither `wasi:http/handler@0.3.x` (WASI 0.3) nor \
         `wasi:http/incoming-handler@0.2.x` (WASI 0.2)",
    );
}

/// An address already in use is named.
#[test]
fn address_in_use() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let hello = component("hello");
    let outcome = run_to_exit(&[hello.to_str().unwrap(), "--addr", &addr]);
    assert_refused(
        &outcome,
        &format!("cannot listen on {addr}: Address already in use"),
    );
}
