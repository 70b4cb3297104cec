//! The command line: every setting an operator has, with its default and the
//! reason for it. The defaults are chosen for a public-facing server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::Parser;

use crate::imports::allowed::Destination;
use crate::imports::keyvalue;
pub use crate::log::LogFormat;

/// Most `--processes`: far more cores than any machine this serves on has,
/// while a typo (`--processes 10000`) is refused rather than forking that
/// many.
const MAX_PROCESSES: i64 = 1024;

/// Serve a wasi-http component, with a fresh instance for every request.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Cli {
    /// The component to serve: one exporting `wasi:http/incoming-handler`
    /// (WASI 0.2) or `wasi:http/handler` (WASI 0.3), found out at load. Or a
    /// Spin application: its `spin.toml`, or the folder holding it.
    pub component: PathBuf,

    /// Address to listen on. Loopback by default so that a first run exposes
    /// nothing; use port 0 to have the OS pick a free port (the real address is
    /// printed once listening).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,

    /// Worker threads per serving process, each an event loop serving the
    /// connections dealt to it in turn; a connection stays on its worker.
    /// [default: 1 with several processes; one per core with `--processes 1`]
    #[arg(long)]
    pub threads: Option<usize>,

    /// Serving processes. By default one per core: this process starts that
    /// many single-threaded serving processes, each listening on `--addr`
    /// (`SO_REUSEPORT`: the kernel spreads connections between them), and
    /// looks after them: it restarts one that dies (backing off while it
    /// keeps failing), passes SIGHUP and SIGTERM on, and its `--admin-addr`
    /// sums their metrics. One process per core serves more: resetting an
    /// instance's memory makes the kernel interrupt every core the process
    /// runs on, and a single-threaded process runs on one; a crash takes one
    /// process, not the server. With `--processes 1` this process serves,
    /// with a thread per core. `--max-concurrent-requests` and
    /// `--max-connections` stay limits of the whole server, split evenly
    /// between the processes (each process has its share, as each nginx
    /// worker has its `worker_connections`), so the default never starts
    /// more processes than they can be split between.
    /// [default: one per core]
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=MAX_PROCESSES))]
    pub processes: Option<u16>,

    /// Given by a supervisor (`--processes`) to the processes it starts: the
    /// address it holds, which they listen on together (`SO_REUSEPORT`).
    #[arg(long, hide = true, value_name = "ADDR")]
    pub serving_process_on: Option<SocketAddr>,

    /// Given by a supervisor to each serving process: its index, which its
    /// log lines carry with its pid.
    #[arg(long, hide = true, requires = "serving_process_on")]
    pub serving_process_index: Option<usize>,

    /// Set in the serving process a supervisor forks first (not a flag):
    /// that one says what the server serves, once for the whole server.
    #[arg(skip)]
    pub first_serving_process: bool,

    /// Given by a supervisor run with `--no-cache`: a compile cache of its
    /// own, made for this run and removed when it ends, so the component is
    /// compiled once for all the serving processes.
    #[arg(long, hide = true, value_name = "DIR", requires = "serving_process_on")]
    pub serving_cache_dir: Option<PathBuf>,

    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line) for log collectors. Filter with `RUST_LOG`
    /// (default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve `/healthz` and `/metrics` (OpenMetrics text, which Prometheus
    /// scrapes) on a listener of their own, never on the guest's port. Off by
    /// default; given without an address it takes 127.0.0.1:9090, loopback, as
    /// metrics are for the operator, not the public.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9090")]
    pub admin_addr: Option<SocketAddr>,

    /// Log one line per request (target `access`): id, method, path, status,
    /// body bytes, total time and the guest's own time. Off by default, like
    /// Caddy's and Envoy's: a line per request costs a `write` on the hot
    /// path. The id also prefixes the guest's stdout and stderr lines.
    #[arg(long)]
    pub access_log: bool,

    /// On SIGINT or SIGTERM, how long in-flight requests may take to finish
    /// before the server exits anyway. Ten seconds covers any sane request while
    /// staying inside the usual 30 s grace period of process supervisors.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,

    /// Wall-clock budget of one request's instance, from instantiation to the
    /// end of its response body; past it the guest is stopped, whether it
    /// computes or waits, and the client gets 504 (or a cut-off body). 30 s is
    /// what most load balancers wait for an upstream.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Largest linear memory one instance may grow to; a guest allocating past
    /// it sees the allocation fail (a trap in most languages: 500). 128 MiB
    /// fits interpreters such as JS engines while
    /// `--max-concurrent-requests` x this stays well inside a small machine.
    #[arg(long, default_value = "128MiB")]
    pub max_memory: ByteSize,

    /// Largest request body a guest is given. A larger `content-length` is
    /// refused with 413 before any instance exists; a streamed body is cut at
    /// the limit and answered 413. 10 MiB is a generous form or upload size.
    #[arg(long, default_value = "10MiB")]
    pub max_body: ByteSize,

    /// Instances alive at once. Past it a request waits up to
    /// `--queue-timeout` for a slot, then gets 503. Every instance may hold up
    /// to `--max-memory`, so this times that bounds guest memory (16 GiB by
    /// default); 128 is far more than 2 cores keep busy.
    #[arg(long, default_value_t = 128)]
    pub max_concurrent_requests: usize,

    /// How long a request may wait for an instance slot before it gets 503.
    /// Short, so an overloaded server sheds load instead of queueing it.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub queue_timeout: Duration,

    /// Open client connections. Past it the server stops accepting until one
    /// closes (new clients wait in the kernel's backlog). By default as many
    /// as the open file limit allows, up to 16,384: the server raises its soft
    /// limit to the hard limit at startup and keeps descriptors back for
    /// itself, the admin endpoint and the guests' outbound requests; the cap
    /// bounds what idle connections hold (the log says the figure and that
    /// memory).
    #[arg(long)]
    pub max_connections: Option<usize>,

    /// Serve HTTPS: the certificate chain (PEM, the server's own certificate
    /// first) for TLS 1.2 and 1.3, with ALPN for HTTP/2 and HTTP/1.1.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM: PKCS#8, RSA or EC).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// With `--tls-cert`: mutual TLS. Every client must present a
    /// certificate issued by one of the CAs in this PEM file; a client
    /// without one fails its handshake.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// With `--tls-client-ca`: the request header that carries the subject
    /// of the client's verified certificate to the guest (`O=Example,
    /// CN=alice`). The server sets it on every request and drops any copy
    /// the client sent, so a guest can trust it.
    #[arg(long, value_name = "NAME", requires = "tls_client_ca")]
    pub tls_client_subject_header: Option<hyper::header::HeaderName>,

    /// With `--tls-cert`: time a client has to complete the TLS handshake.
    /// A client that connects and sends nothing (or half a ClientHello) is
    /// closed then; a real handshake takes a few round trips.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,

    /// HTTP/1.1: time a client has to send a request's complete headers,
    /// counted from when the server starts waiting for them (so it also closes
    /// keep-alive connections idle for this long). Defeats slowloris clients.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,

    /// Any connection (HTTP/1.1 or HTTP/2) with no request in flight for this
    /// long is closed, including one that never sends a byte. One minute keeps
    /// keep-alive useful for real clients without holding sockets for idlers.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,

    /// A connection whose responses are waiting on a client that takes none
    /// of their bytes for this long is closed, and the guests writing them
    /// are stopped (their instance slots freed). A client that is reading
    /// takes something within a few round trips; ten seconds without a byte
    /// is one that stopped, and is well inside `--request-timeout`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// HTTP/2 streams (requests) one connection may have in flight. Each is
    /// an instance, so one connection must not be able to hold every
    /// instance slot: 32 is a quarter of the default
    /// `--max-concurrent-requests`, and above what browsers keep in flight
    /// on one connection. (HTTP/1.1 connections have one at a time.)
    #[arg(long, default_value_t = 32)]
    pub max_streams_per_connection: u32,

    /// Largest request head (request line and headers) accepted; a larger one
    /// gets 431. 64 KiB is above what browsers send and what common proxies
    /// accept (nginx: 32 KiB).
    #[arg(long, default_value = "64KiB")]
    pub max_header_size: ByteSize,

    /// Largest header or trailer set (fields) a guest may build, in wasi-http's
    /// in-memory accounting (roughly twice the wire size): 32 KiB holds the
    /// 16 KiB of response headers that common proxies pass on.
    #[arg(long, default_value = "32KiB")]
    pub max_guest_fields_size: ByteSize,

    /// Host memory one instance may make the server keep, beyond its linear
    /// memory: header sets, requests and responses, buffered body chunks,
    /// streams, outbound connections, output lines and one key-value call
    /// (`--keyvalue-max-batch`). The server caps how
    /// many resources an instance may hold so that, at the largest each
    /// kind can get, they fit this budget (a few hundred by default; a
    /// hello-world request uses under ten), so the worst case for the whole
    /// server is `--max-concurrent-requests` x (`--max-memory` + this).
    #[arg(long, default_value = "64MiB")]
    pub max_guest_host_memory: ByteSize,

    /// Bytes one request may write to its stdout and stderr together; past
    /// it the rest is dropped and the log says so once. 256 KiB holds any
    /// panic message or debug trace a request should print, while a guest
    /// printing in a loop cannot flood the log.
    #[arg(long, default_value = "256KiB")]
    pub max_guest_output: ByteSize,

    /// Where compiled components are kept between runs, so a restart skips
    /// compilation (the cold start). Entries are keyed by the component's
    /// content and the engine's settings, and checksummed.
    /// [default: $XDG_CACHE_HOME/wasi-http-server, or ~/.cache/wasi-http-server]
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Compile the component at every start instead of using the cache.
    #[arg(long, conflicts_with = "cache_dir")]
    pub no_cache: bool,

    /// Reload the component when its file changes: new requests go to the
    /// new one once it compiles and instantiates, in-flight requests finish on
    /// the old one, and a broken file leaves the old one serving. SIGHUP
    /// reloads on demand, with or without this.
    #[arg(long)]
    pub watch: bool,

    /// An environment variable for the guest (`wasi:cli/environment`), as
    /// `wasmtime serve --env` takes it: `KEY=VALUE`, or `KEY` to pass on the
    /// server's own value. Repeatable. Guests see nothing else of the server's
    /// environment.
    #[arg(long = "env", value_name = "KEY[=VALUE]", value_parser = guest_env)]
    pub env: Vec<(String, String)>,

    /// Let guests send outbound HTTP requests (`wasi:http/outgoing-handler`)
    /// to HOST or HOST:PORT (any scheme), or to an entry in Spin's form
    /// (`https://api.example.com`, `http://*.internal:8000..8100`,
    /// `*://10.0.0.0/8:*`); repeatable. Without it every outbound request is
    /// denied with the wasi:http error `HTTP-request-denied`, so a guest cannot
    /// reach internal services unless the operator says so.
    #[arg(
        long = "allow-outbound",
        value_name = "HOST[:PORT]|SCHEME://HOST[:PORT]"
    )]
    pub allow_outbound: Vec<Destination>,

    /// CA certificates (PEM) that outbound HTTPS trusts besides the
    /// system's: for upstreams with certificates from a private CA.
    #[arg(long, value_name = "FILE")]
    pub outbound_ca: Option<PathBuf>,

    /// Longest a guest's outbound request waits for its TCP connection. A
    /// guest may ask for less (`request-options`), not more. Without it an
    /// unreachable upstream held the guest 600 s (wasmtime-wasi-http's
    /// default), so the client got the 504 of `--request-timeout` instead of
    /// the guest's own answer to the error (`connection-timeout`).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub outbound_connect_timeout: Duration,

    /// Longest a guest's outbound request waits for the response head once
    /// connected; capped as `--outbound-connect-timeout` is. Below
    /// `--request-timeout`'s default, so that a guest whose upstream hangs
    /// still has time to answer the client itself (`connection-read-timeout`).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub outbound_first_byte_timeout: Duration,

    /// A configuration value for guests (`wasi:config/store`), as `wasmtime
    /// serve -S config-var` and Spin variables give them: `KEY=VALUE`, or
    /// `KEY` to pass on the server's own environment variable. Repeatable.
    /// Guests see only what is given here.
    #[arg(long = "config", value_name = "KEY[=VALUE]", value_parser = guest_env)]
    pub config: Vec<(String, String)>,

    /// A key-value store for guests (`wasi:keyvalue`): `sqlite:PATH` (a file,
    /// which processes on one machine may share) or `redis://HOST:PORT[/DB]`
    /// (shared by servers anywhere), under NAME (`default` when left out,
    /// which guests open as "" or "default"). Repeatable. Without any, the
    /// default store is the application's own SQLite file in the user's data
    /// directory (`$XDG_DATA_HOME/wasi-http-server/keyvalue/`, named after
    /// the component file), created when a guest first uses it; servers
    /// share a store only when told to by naming the same one.
    #[arg(long = "keyvalue", value_name = "[NAME=]URL", value_parser = keyvalue_store)]
    pub keyvalue: Vec<(String, keyvalue::Url)>,

    /// Longest key a guest may use in a key-value store. Keys are names; 1
    /// KiB is generous for them and keeps a guest from using keys as values.
    #[arg(long, value_name = "SIZE", default_value = "1KiB")]
    pub keyvalue_max_key: ByteSize,

    /// Largest value a guest may store or read. The host holds a value
    /// whole while passing it, so this bounds that memory per call; 1 MiB is
    /// what Redis deployments typically allow per value before it hurts.
    #[arg(long, value_name = "SIZE", default_value = "1MiB")]
    pub keyvalue_max_value: ByteSize,

    /// Most keys in one batch call (`get-many`, `set-many`, `delete-many`)
    /// and in one page of `list-keys`. One call may make the host hold twice
    /// this many of the largest keys and values (16 MiB by default), which
    /// counts against `--max-guest-host-memory`: raise both together.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub keyvalue_max_batch: usize,
}

/// `[NAME=]URL` of `--keyvalue`. A name has no `:`, so `redis://h:1/0` is a
/// URL and `cache=redis://h:1/0` a named one.
fn keyvalue_store(arg: &str) -> Result<(String, keyvalue::Url), String> {
    let (name, url) = match arg.split_once('=') {
        Some((name, url)) if !name.contains(':') => (name, url),
        _ => (keyvalue::DEFAULT_STORE, arg),
    };
    if name.is_empty() {
        return Err(format!("`{arg}`: the store's name is empty"));
    }
    Ok((name.to_string(), url.parse()?))
}

/// `KEY=VALUE`, or `KEY` taken from the server's environment.
fn guest_env(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some(("", _)) => Err(format!("`{arg}`: the name is empty")),
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
        None => std::env::var(arg)
            .map(|value| (arg.to_string(), value))
            .map_err(|_| format!("`{arg}` is not set in the server's environment")),
    }
}

impl Cli {
    /// `--processes`, or its default: one per core, but no more than the
    /// whole-server limits can be split between (`--max-concurrent-requests
    /// 1` is one process, as it was before one per core was the default).
    pub fn processes(&self) -> usize {
        match self.processes {
            Some(given) => usize::from(given),
            None => cores()
                .min(self.max_concurrent_requests)
                .min(self.max_connections.unwrap_or(usize::MAX))
                .clamp(1, MAX_PROCESSES as usize),
        }
    }

    /// `--threads`, or its default.
    pub fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| if self.processes() > 1 { 1 } else { cores() })
    }

    /// One serving process's share of a whole-server limit given as `flag`.
    pub fn per_process(&self, total: usize, flag: &str) -> Result<usize, String> {
        let processes = self.processes();
        match total / processes {
            0 => Err(format!(
                "{flag} ({total}) is for the whole server and must be at least --processes ({processes})"
            )),
            share => Ok(share),
        }
    }

    /// Where the default key-value store lives when no `--keyvalue` names
    /// one: in the user's data directory, as XDG says, a file of the
    /// application's own, named after the component file and a hash of its
    /// full path. So the default store belongs to one application, as in
    /// Spin: another component served by the same user does not see it, and
    /// the same file served again (or replaced in place) does.
    pub fn default_keyvalue_path(&self) -> Option<PathBuf> {
        let base = dirs::data_dir()?;
        // An application is its manifest, whether named by file or by folder,
        // and is called after its folder.
        let given = if self.component.is_dir() {
            self.component.join("spin.toml")
        } else {
            self.component.clone()
        };
        let app = std::fs::canonicalize(&given).unwrap_or(given);
        let hash = xxhash_rust::xxh3::xxh3_64(app.as_os_str().as_encoded_bytes());
        let named = match app.extension() {
            Some(ext) if ext == "toml" => app.parent().unwrap_or(&app),
            _ => &app,
        };
        let stem = named.file_stem().unwrap_or_default().to_string_lossy();
        Some(
            base.join("wasi-http-server")
                .join("keyvalue")
                .join(format!("{stem}-{hash:016x}.sqlite3")),
        )
    }

    /// The compile cache directory, unless `--no-cache`.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        if let Some(dir) = &self.serving_cache_dir {
            return Some(dir.clone());
        }
        if self.no_cache {
            return None;
        }
        self.cache_dir
            .clone()
            .or_else(|| Some(dirs::cache_dir()?.join("wasi-http-server")))
    }
}

/// The cores this process may run on (its CPU affinity and cgroup quota, as
/// the standard library reads them).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
