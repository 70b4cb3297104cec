//! Support for the end-to-end tests: start the real server binary on
//! `127.0.0.1:0` with a real component, and speak HTTP/1.1 or HTTP/2 to it
//! over connections the test controls.
//!
//! Everything is looked up next to the test executable, in the target
//! directory that `make test` fills: the server binary in the profile folder
//! and the components in `target/components/`.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper::{HeaderMap, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// Upper bound for any single step of a test (a request, a startup, an
/// exit): far above what a healthy run takes, so only a hang reaches it.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// `target/<profile>/`, where cargo put both this test and the server.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps")
        .to_path_buf()
}

/// The server binary built by `make test`.
pub fn server_binary() -> PathBuf {
    let path = profile_dir().join("wasi-http-server");
    assert!(
        path.exists(),
        "{} is missing: run `make test`",
        path.display()
    );
    path
}

/// Where the servers the tests start keep their compile cache (as
/// `XDG_CACHE_HOME`), so tests never write to the user's own cache.
fn test_cache_home() -> PathBuf {
    profile_dir()
        .parent()
        .expect("target dir")
        .join("e2e-cache")
}

/// A component built by `make components`, by name (`hello`, `testbed`).
pub fn component(name: &str) -> PathBuf {
    let target = profile_dir().parent().expect("target dir").to_path_buf();
    let path = target.join("components").join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: run `make test`",
        path.display()
    );
    path
}

/// The test components, one per kind of guest (WASI 0.2 and 0.3): every
/// behaviour the two kinds share is tested against each.
pub const TESTBEDS: [&str; 2] = ["testbed", "testbed-p3"];

/// The hello components, WASI 0.2 and 0.3: both answer exactly as the seed.
pub const HELLOS: [&str; 2] = ["hello", "hello-p3"];

/// A running server process, killed when dropped.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// The admin endpoint's address, when started with `--admin-addr`.
    pub admin: Option<SocketAddr>,
    log: Arc<Mutex<String>>,
    /// With [`Launch::leave_stderr_unread`]: the pipe, held open and never
    /// read.
    _unread_stderr: Option<std::process::ChildStderr>,
}

/// How to set up a server process beyond its arguments.
#[derive(Default)]
pub struct Launch {
    /// Keep the server's stderr a pipe that nobody reads, as a stuck log
    /// collector would: once its buffer is full, writes to it block.
    pub leave_stderr_unread: bool,
    /// Start the server with this soft limit on open files (the hard limit
    /// stays), as most Linux systems and containers do (1024).
    pub fd_soft_limit: Option<u64>,
    /// Listen here instead of on a free port (a load balancer's fixed
    /// backend address).
    pub addr: Option<SocketAddr>,
    /// Plain HTTP even in an `E2E_TLS` run: for a server that stands in for
    /// an upstream the guest calls over `http://`.
    pub plain: bool,
}

impl Server {
    /// Starts the server on `127.0.0.1:0` with `component` and waits for its
    /// "Server running at" line.
    pub fn start(component_name: &str, args: &[&str]) -> Server {
        Self::start_with_env(component_name, args, &[])
    }

    /// [`Server::start`] with extra environment variables.
    pub fn start_with_env(component_name: &str, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_path(&component(component_name), args, env)
    }

    /// [`Server::start`] for the component file at `path`.
    pub fn start_path(path: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::launch(path, args, env, &Launch::default())
    }

    /// [`Server::start`] with the process set up as `launch` says.
    pub fn start_launched(component_name: &str, args: &[&str], launch: &Launch) -> Server {
        Self::launch(&component(component_name), args, &[], launch)
    }

    fn launch(
        path: &std::path::Path,
        args: &[&str],
        env: &[(&str, &str)],
        launch: &Launch,
    ) -> Server {
        let mut command = Command::new(server_binary());
        // `E2E_TLS`: the server serves HTTPS, unless the test chose its own
        // certificate or is about plain HTTP's own behaviour.
        let tls = (over_tls() && !launch.plain && !args.contains(&"--tls-cert")).then(test_tls);
        if let Some(tls) = tls {
            command.args(["--tls-cert", tls.cert, "--tls-key", tls.key]);
        }
        command
            .env("XDG_CACHE_HOME", test_cache_home())
            .envs(env.iter().copied())
            .arg(path)
            .args([
                "--addr".to_string(),
                launch
                    .addr
                    .map_or("127.0.0.1:0".to_string(), |addr| addr.to_string()),
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(soft) = launch.fd_soft_limit {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let mut limit = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    limit.rlim_cur = soft;
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command.spawn().expect("spawning the server");

        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let unread_stderr = if launch.leave_stderr_unread {
            Some(stderr)
        } else {
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut log = sink.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            });
            None
        };

        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut read_addr = |prefix: &str| -> SocketAddr {
            let mut line = String::new();
            stdout
                .read_line(&mut line)
                .expect("reading the server's stdout");
            line.trim()
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix('/'))
                .and_then(|addr| addr.parse().ok())
                .unwrap_or_else(|| {
                    panic!(
                        "expected {prefix:?}, got {line:?}; log:\n{}",
                        log.lock().unwrap()
                    )
                })
        };
        let https = args.contains(&"--tls-cert") || tls.is_some();
        let addr = read_addr(if https {
            "Server running at https://"
        } else {
            "Server running at http://"
        });
        if tls.is_some() {
            TLS_ADDRS.lock().unwrap().insert(addr);
        }
        let admin = args
            .contains(&"--admin-addr")
            .then(|| read_addr("Admin endpoint at http://"));
        Server {
            child,
            addr,
            admin,
            log,
            _unread_stderr: unread_stderr,
        }
    }

    /// Everything the server has written to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`; panics with the log after
    /// [`STEP_TIMEOUT`].
    pub async fn wait_for_log(&self, needle: &str) {
        self.wait_for_log_count(needle, 1).await;
    }

    /// Waits until `needle` is in the log `count` times or more.
    pub async fn wait_for_log_count(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + STEP_TIMEOUT;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "{needle:?} not {count} times in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `needle` is in the log `times` times for each serving
    /// process (or the server, when it serves itself): for lines that every
    /// serving process logs, such as "reloaded".
    pub async fn wait_for_log_in_each(&self, needle: &str, times: usize) {
        let processes = self.serving_processes().len().max(1);
        self.wait_for_log_count(needle, times * processes).await;
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP.
    pub fn hangup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; panics after [`STEP_TIMEOUT`].
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the server") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a server that is expected not to start printed, and how it exited.
pub struct Failed {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Failed {
    /// The one `error:` line the server printed, having failed: asserts
    /// there is exactly one, and that it never said it was serving.
    pub fn the_error(&self) -> &str {
        assert!(!self.status.success(), "{}", self.stderr);
        assert!(!self.stdout.contains("Server running"), "{}", self.stdout);
        let errors: Vec<&str> = self
            .stderr
            .lines()
            .filter(|line| line.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{}", self.stderr);
        errors[0]
    }
}

/// Runs the server with `args` and expects it to exit by itself.
pub fn run_to_exit(args: &[&str]) -> Failed {
    run_to_exit_with_env(args, &[])
}

/// [`run_to_exit`] with `env` added to the server's environment.
pub fn run_to_exit_with_env(args: &[&str], env: &[(&str, &str)]) -> Failed {
    let mut child = Command::new(server_binary())
        .env("XDG_CACHE_HOME", test_cache_home())
        .envs(env.iter().copied())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the server");
    let deadline = Instant::now() + STEP_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for the server") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server kept running with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = String::new();
    let mut stderr = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    Failed {
        status,
        stdout,
        stderr,
    }
}

/// A response read to its end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The trailers, if the response had any.
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("UTF-8 body")
    }
}

/// One client connection, HTTP/1.1 (keep-alive) or HTTP/2 (prior knowledge):
/// every request sent through it uses that one TCP connection.
pub enum Conn {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    pub async fn http1(addr: SocketAddr) -> Conn {
        let io = TokioIo::new(connect(addr, b"http/1.1").await);
        let (sender, connection) = http1::handshake(io).await.expect("HTTP/1 handshake");
        tokio::spawn(connection);
        Conn::Http1(sender)
    }

    pub async fn http2(addr: SocketAddr) -> Conn {
        let io = TokioIo::new(connect(addr, b"h2").await);
        let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(connection);
        Conn::Http2(sender)
    }

    /// Sends a request and reads the whole response; an error means the
    /// connection failed or the response was cut off.
    pub async fn try_send(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> Result<Reply, String> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "test.local")
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .expect("valid request");
        self.try_exchange(request).await
    }

    /// Sends `request` as it is and reads the whole response; an error means
    /// the connection failed or the response was cut off.
    pub async fn try_exchange(&mut self, request: Request<Full<Bytes>>) -> Result<Reply, String> {
        let (method, path) = (request.method().clone(), request.uri().clone());
        let exchange = async {
            let response = match self {
                Conn::Http1(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await?
                }
                Conn::Http2(sender) => {
                    sender.ready().await?;
                    sender.send_request(request).await?
                }
            };
            let (parts, body) = response.into_parts();
            let collected = body.collect().await?;
            let trailers = collected.trailers().cloned();
            Ok::<_, hyper::Error>(Reply {
                status: parts.status,
                headers: parts.headers,
                body: collected.to_bytes(),
                trailers,
            })
        };
        match tokio::time::timeout(STEP_TIMEOUT, exchange).await {
            Ok(result) => result.map_err(|err| format!("{err:?}")),
            Err(_) => panic!("{method} {path}: no response within {STEP_TIMEOUT:?}"),
        }
    }

    /// Like [`Conn::try_send`], but a failed exchange fails the test.
    pub async fn send(&mut self, method: &str, path: &str, body: &str) -> Reply {
        self.try_send(method, path, body)
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"))
    }
}

/// The admin endpoint's value of `metric`.
pub async fn metric(server: &Server, metric: &str) -> f64 {
    let text = get(server.admin.expect("--admin-addr"), "/metrics").await;
    text.text()
        .lines()
        .find_map(|line| line.strip_prefix(metric)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {metric} in:\n{}", text.text()))
}

/// `GET path` on a new HTTP/1.1 connection.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    Conn::http1(addr).await.send("GET", path, "").await
}

/// `path` at `addr`, which must answer 200: its body.
pub async fn get_ok(addr: SocketAddr, path: &str) -> String {
    let reply = get(addr, path).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
    reply.text().to_string()
}

/// Asserts that `reply` is exactly what the Node.js seed sends.
pub fn assert_hello(reply: &Reply) {
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/plain");
    assert_eq!(reply.headers["content-length"], "12");
    assert_eq!(reply.text(), "Hello World\n");
}

/// A raw client (TCP, or TLS to a server started with `E2E_TLS`), for
/// requests a well-behaved HTTP client would not send.
pub struct RawClient(Stream);

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        RawClient(connect(addr, b"http/1.1").await)
    }

    /// Sends `bytes`; an error means the server already closed the connection.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        self.0.write_all(bytes).await
    }

    /// Reads whatever the server sends next; panics after [`STEP_TIMEOUT`].
    pub async fn read_some(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut buf = [0; 4096];
        let n = tokio::time::timeout(STEP_TIMEOUT, self.0.read(&mut buf))
            .await
            .expect("nothing to read")
            .expect("reading");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Reads until the server closes the connection and returns everything it
    /// sent; panics if it is still open after [`STEP_TIMEOUT`].
    pub async fn read_to_close(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut seen = Vec::new();
        let mut buf = [0; 4096];
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.0.read(&mut buf)).await {
                Err(_) => panic!(
                    "connection still open after {STEP_TIMEOUT:?}; got {:?}",
                    String::from_utf8_lossy(&seen)
                ),
                Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&seen).into_owned(),
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            }
        }
    }
}

/// The serving processes of the supervisor `supervisor`: its children (the
/// first forked, the others started with `--serving-process-on`), by pid.
pub fn serving_processes_of(supervisor: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent's pid is the second field after the command's ")".
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if parent == Some(supervisor) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// What the server's processes hold, summed over those that serve: its
/// serving processes when it supervises some (the default, one per core),
/// else the server process itself.
impl Server {
    /// The serving processes, by pid: empty when the server process serves
    /// itself (`--processes 1`).
    pub fn serving_processes(&self) -> Vec<u32> {
        serving_processes_of(self.pid())
    }

    /// The processes that serve: the serving processes, or the server.
    fn serving_pids(&self) -> Vec<u32> {
        match self.serving_processes() {
            pids if pids.is_empty() => vec![self.pid()],
            pids => pids,
        }
    }

    /// Open file descriptors of the serving processes.
    pub fn open_fds(&self) -> usize {
        self.serving_pids()
            .iter()
            .map(|pid| {
                std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .expect("reading /proc/PID/fd")
                    .count()
            })
            .sum()
    }

    /// Resident set size of the serving processes, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS:")
    }

    /// Resident set size of each serving process, in KiB.
    pub fn each_rss_kib(&self) -> Vec<u64> {
        self.each_proc_status_kib("VmRSS:")
    }

    /// The largest resident set size each serving process has had, in KiB.
    pub fn each_peak_rss_kib(&self) -> Vec<u64> {
        self.each_proc_status_kib("VmHWM:")
    }

    /// Starts the count of [`Server::peak_rss_kib`] again from the current
    /// resident set sizes.
    pub fn reset_peak_rss(&self) {
        for pid in self.serving_pids() {
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
                .expect("writing /proc/PID/clear_refs");
        }
    }

    /// Threads of the serving processes.
    pub fn threads(&self) -> u64 {
        self.proc_status_kib("Threads:")
    }

    /// The largest resident set size each serving process has had, in KiB,
    /// summed: at least their largest total at any one time.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM:")
    }

    /// A number field of /proc/PID/status (`kB` dropped), summed over the
    /// serving processes.
    fn proc_status_kib(&self, field: &str) -> u64 {
        self.each_proc_status_kib(field).into_iter().sum()
    }

    /// A number field of /proc/PID/status (`kB` dropped), for each serving
    /// process.
    fn each_proc_status_kib(&self, field: &str) -> Vec<u64> {
        self.serving_pids()
            .iter()
            .map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .expect("reading /proc/PID/status");
                status
                    .lines()
                    .find_map(|line| line.strip_prefix(field))
                    .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
                    .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
            })
            .collect()
    }
}

/// Which serving process wrote a text log line (`process=N` after its
/// time, or first on a guest's line), if one did.
pub fn process_of(line: &str) -> Option<usize> {
    line.split_whitespace()
        .take(3)
        .find_map(|word| word.strip_prefix("process="))
        .and_then(|index| index.parse().ok())
}

/// A guest's text line without the serving process's name before it:
/// `[ID STREAM] TEXT`.
pub fn guest_line(line: &str) -> &str {
    match line.strip_prefix("process=") {
        Some(named) => named.find(" [").map_or(line, |at| &named[at + 1..]),
        None => line,
    }
}

/// An HTTP/2 client that never takes its responses: its initial flow-control
/// window is 0 and it never sends a WINDOW_UPDATE, while it goes on reading
/// frames. Its streams and connection go when it is dropped.
pub struct ZeroWindowClient {
    /// Opens the streams, then holds them.
    opener: tokio::task::JoinHandle<()>,
    /// Reads the connection's frames.
    reader: tokio::task::JoinHandle<Result<(), h2::Error>>,
}

impl ZeroWindowClient {
    /// Connects and asks for `path` on `streams` streams, opened in the
    /// background as fast as the server's stream limit admits them.
    pub async fn open(addr: SocketAddr, path: &str, streams: usize) -> ZeroWindowClient {
        let tcp = connect(addr, b"h2").await;
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(tcp)
            .await
            .expect("HTTP/2 handshake");
        let reader = tokio::spawn(connection);
        let uri = format!("http://{addr}{path}");
        let opener = tokio::spawn(async move {
            let mut pending = Vec::new();
            for _ in 0..streams {
                let Ok(mut client) = client.clone().ready().await else {
                    break;
                };
                let request = Request::get(&uri).body(()).expect("valid request");
                match client.send_request(request, true) {
                    Ok((response, _)) => pending.push(response),
                    Err(_) => break,
                }
            }
            // Hold the streams; never read their bodies.
            std::future::pending::<()>().await;
        });
        ZeroWindowClient { opener, reader }
    }
}

impl Drop for ZeroWindowClient {
    fn drop(&mut self) {
        self.opener.abort();
        self.reader.abort();
    }
}

/// `total` GETs of `path` spread over `servers` by 8 concurrent clients,
/// each answering a number: the numbers are exactly 1..=total, so no
/// request's update of a shared counter was lost to another's.
pub async fn each_answer_once(servers: &[&Server], path: &'static str, total: u64) {
    const CLIENTS: u64 = 8;
    let addrs: Vec<_> = servers.iter().map(|server| server.addr).collect();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let addrs = addrs.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..total / CLIENTS {
                    let addr = addrs[((client + i) % addrs.len() as u64) as usize];
                    let reply = Conn::http1(addr).await.send("GET", path, "").await;
                    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
                    seen.push(reply.text().trim().parse::<u64>().unwrap());
                }
                seen
            })
        })
        .collect();
    let mut seen = Vec::new();
    for client in clients {
        seen.extend(client.await.unwrap());
    }
    seen.sort_unstable();
    assert_eq!(seen, (1..=total).collect::<Vec<u64>>());
}

/// A fresh, empty directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether this run serves every server over TLS (`E2E_TLS` set): `make
/// test` runs the shared end-to-end tests both ways, so each limit and
/// behaviour they check holds over HTTPS too.
pub fn over_tls() -> bool {
    std::env::var_os("E2E_TLS").is_some()
}

/// Addresses of servers started over TLS by [`over_tls`]: [`Conn`] and
/// [`RawClient`] speak TLS to these.
static TLS_ADDRS: std::sync::LazyLock<Mutex<std::collections::HashSet<SocketAddr>>> =
    std::sync::LazyLock::new(Mutex::default);

/// The certificate every server of an `E2E_TLS` run serves (for 127.0.0.1,
/// from a test CA of its own), made once per test binary.
#[derive(Clone, Copy)]
pub struct TestTls {
    pub cert: &'static str,
    pub key: &'static str,
    pub ca: &'static str,
}

fn test_tls() -> TestTls {
    static TLS: std::sync::OnceLock<TestTls> = std::sync::OnceLock::new();
    *TLS.get_or_init(|| {
        let ca = TestCa::new("e2e-tls");
        ca.issue_server("server");
        let path = |name: &str| -> &'static str { Box::leak(ca.file(name).into_boxed_str()) };
        let tls = TestTls {
            cert: path("server.pem"),
            key: path("server-key.pem"),
            ca: path("ca.pem"),
        };
        // Kept for the whole run: servers read the files at start.
        std::mem::forget(ca);
        tls
    })
}

/// A client connection's byte stream: TCP, or TLS over it.
pub enum Stream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// A connection to `addr` for HTTP/1.1 bytes the test writes itself:
    /// TLS if the server there was started by [`over_tls`].
    pub async fn connect(addr: SocketAddr) -> Stream {
        connect(addr, b"http/1.1").await
    }

    /// [`Stream::connect`], where failing to connect is an answer.
    pub async fn try_connect(addr: SocketAddr) -> std::io::Result<Stream> {
        try_connect(addr, b"http/1.1").await
    }
}

/// Connects to `addr`: over TLS, offering ALPN `protocol`, if the server
/// there was started by [`over_tls`].
async fn connect(addr: SocketAddr, protocol: &[u8]) -> Stream {
    try_connect(addr, protocol)
        .await
        .unwrap_or_else(|err| panic!("connecting to {addr}: {err}"))
}

async fn try_connect(addr: SocketAddr, protocol: &[u8]) -> std::io::Result<Stream> {
    let tcp = TcpStream::connect(addr).await?;
    if !TLS_ADDRS.lock().unwrap().contains(&addr) {
        return Ok(Stream::Tcp(tcp));
    }
    let config = client_tls(protocol);
    let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(Stream::Tls(Box::new(tls)))
}

/// A TLS client trusting the test CA and offering ALPN `protocol`
/// (`h2` or `http/1.1`), built once each.
fn client_tls(protocol: &[u8]) -> Arc<tokio_rustls::rustls::ClientConfig> {
    type Configs = Mutex<Vec<(Vec<u8>, Arc<tokio_rustls::rustls::ClientConfig>)>>;
    static CONFIGS: std::sync::LazyLock<Configs> = std::sync::LazyLock::new(Mutex::default);
    let mut configs = CONFIGS.lock().unwrap();
    if let Some((_, config)) = configs.iter().find(|(alpn, _)| alpn == protocol) {
        return config.clone();
    }
    let pem = std::fs::read(test_tls().ca).unwrap();
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in rustls_pem(&pem) {
        roots.add(cert).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![protocol.to_vec()];
    let config = Arc::new(config);
    configs.push((protocol.to_vec(), config.clone()));
    config
}

fn rustls_pem(pem: &[u8]) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    tokio_rustls::rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .unwrap()
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => std::pin::Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => std::pin::Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => std::pin::Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => std::pin::Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => std::pin::Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => std::pin::Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(tcp) => std::pin::Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => std::pin::Pin::new(tls).poll_shutdown(cx),
        }
    }
}

impl Server {
    /// [`Server::start`], but plain HTTP in an `E2E_TLS` run too: an
    /// upstream that guests call over `http://`.
    pub fn start_upstream(component_name: &str, args: &[&str]) -> Server {
        let launch = Launch {
            plain: true,
            ..Launch::default()
        };
        Self::start_launched(component_name, args, &launch)
    }
}

/// A port no one listens on now, on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Runs openssl with `args` (split at spaces) in `dir` and expects it to
/// succeed.
pub fn openssl(dir: &std::path::Path, args: &str) {
    let made = Command::new("openssl")
        .current_dir(dir)
        .args(args.split_whitespace())
        .output()
        .expect("running openssl");
    assert!(
        made.status.success(),
        "openssl {args}: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// A new P-256 key in `dir`/`NAME`-key.pem and a request for a certificate
/// of `subject` (no spaces) in `dir`/`NAME`.csr.
pub fn key_and_request(dir: &std::path::Path, name: &str, subject: &str) {
    openssl(
        dir,
        &format!(
            "req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj {subject} \
             -keyout {name}-key.pem -out {name}.csr"
        ),
    );
}

/// A certificate authority of the test's own, made by openssl in a folder
/// of its own (`ca.pem`, `ca-key.pem`), that issues certificates there.
pub struct TestCa {
    pub dir: PathBuf,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let dir = temp_dir(name);
        openssl(
            &dir,
            &format!(
                "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
                 -subj /CN={name} -addext basicConstraints=critical,CA:TRUE \
                 -addext keyUsage=critical,keyCertSign -keyout ca-key.pem -out ca.pem"
            ),
        );
        Self { dir }
    }

    /// The path of `name` in the CA's folder.
    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// `NAME.pem` and `NAME-key.pem`: a client certificate for
    /// `/O=Example/CN=NAME`.
    pub fn issue_client(&self, name: &str) {
        self.issue(
            name,
            &format!("/O=Example/CN={name}"),
            "extendedKeyUsage=clientAuth",
        );
    }

    /// `NAME.pem` and `NAME-key.pem`: a server certificate for 127.0.0.1.
    pub fn issue_server(&self, name: &str) {
        self.issue(
            name,
            "/CN=localhost",
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1",
        );
    }

    fn issue(&self, name: &str, subject: &str, extensions: &str) {
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!("basicConstraints=critical,CA:FALSE\n{extensions}\n"),
        )
        .unwrap();
        key_and_request(&self.dir, name, subject);
        openssl(
            &self.dir,
            &format!(
                "x509 -req -in {name}.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
                 -days 2 -extfile {ext} -out {name}.pem"
            ),
        );
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A redis-server of our own on a free loopback port, with nothing saved to
/// disk; killed when dropped.
pub struct Redis {
    port: u16,
    child: Option<Child>,
    /// Settings beyond the port and persistence, as `--name value` pairs.
    settings: Vec<String>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_with(&[])
    }

    /// [`Redis::start`] with more settings (`["--requirepass", "pw"]`).
    pub fn start_with(settings: &[&str]) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Redis {
            port,
            child: None,
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        redis.restart();
        redis
    }

    /// Starts it (again) on the same port and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.settings)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < STEP_TIMEOUT,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) it: a Redis that accepts
    /// connections but never answers.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill has no memory-safety preconditions.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, signal) }, 0);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Runs `redis-cli` with `args` against it, as someone else sharing the
    /// store would, and returns what it printed.
    pub fn cli(&self, args: &[&str]) -> String {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli (make test installs it)");
        assert!(output.status.success(), "redis-cli {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
