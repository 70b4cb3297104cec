//! Link hello.wasm with a 64 KiB stack instead of rustc's default 1 MiB. Its
//! `handle` needs a few hundred bytes of stack, and every page of initial
//! memory is paid at each instantiation: a fresh instance per request starts
//! with 2 pages (128 KiB) instead of 17.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-zstack-size=65536");
}
