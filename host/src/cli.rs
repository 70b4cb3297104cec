//! The command line: what an operator can set, with the defaults and the reason
//! for each.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Serve a wasi-http component, with a fresh instance for every request.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// The component to serve: a WASI 0.2 component exporting
    /// `wasi:http/incoming-handler`.
    pub component: PathBuf,

    /// Address to listen on. Loopback by default so that a first run exposes
    /// nothing; use port 0 to have the OS pick a free port (the real address is
    /// printed once listening).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,

    /// On SIGINT or SIGTERM, how long in-flight requests may take to finish
    /// before the server exits anyway. Ten seconds covers any sane request while
    /// staying inside the usual 30 s grace period of process supervisors.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
}
