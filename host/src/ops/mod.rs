//! Operating the server: the admin endpoint, reload, and the supervisor of
//! `--processes` with its link to each serving process.

pub mod admin;
mod fork;
pub mod link;
mod metrics_sum;
pub mod reload;
pub mod shutdown;
pub mod supervisor;
