//! Link hello.wasm with a 16 KiB stack instead of rustc's default 1 MiB. Its
//! `handle` needs a few hundred bytes of stack, and every page of initial
//! memory is reset after each request: a fresh instance per request starts
//! with 1 page (64 KiB) instead of 17 (BENCHMARKS.md step 18: 64 KiB of stack,
//! 2 pages, cost 0.65 us more of CPU per request). An overflow would run below
//! address 0 and trap, never into the guest's data.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-zstack-size=16384");
}
