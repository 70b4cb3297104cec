//! Link hello-p3.wasm with a 16 KiB stack instead of rustc's default 1 MiB,
//! as `guest/` is (its build.rs says why): every page of initial memory is
//! reset after each request, and with the default stack the heap starts past
//! 1 MiB, so the first allocation of every request grew the memory (two
//! `mprotect`s per request in the host: BENCHMARKS.md step 23).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-zstack-size=16384");
}
