//! One request, one instance: the instance slots, the store a request's
//! instance lives in, the guest's call on its own task, the request and
//! response bodies, and the one place WASI 0.2 and 0.3 guests differ.

pub mod budget;
pub mod call;
mod eviction;
mod failure;
pub mod kind;
pub mod link;
pub mod loaded;
pub mod p2;
pub mod p3;
pub mod request_body;
pub mod response;
pub mod runner;
pub mod slots;
pub mod stall;
pub mod state;
pub mod task;
