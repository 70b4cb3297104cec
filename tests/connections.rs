//! Thousands of connections at once, the seed's headline promise, with the
//! open-file limit most systems give a process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{Launch, Server, Stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

const CLIENTS: usize = 9_000;

/// The whole test's budget: far above the few seconds it takes.
const TEST_TIMEOUT: Duration = Duration::from_secs(90);

/// Raises this test process's own soft open-file limit to its hard limit: it
/// holds the other end of every connection. Returns the hard limit.
fn raise_own_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or write `limit`.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_max
}

/// Sends `GET /` on `stream` and reads the response to its end.
async fn hello(stream: &mut Stream) -> std::io::Result<()> {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await?;
    let mut seen = Vec::new();
    let mut buf = [0; 1024];
    while !seen.ends_with(b"\r\n\r\nHello World\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(seen.starts_with(b"HTTP/1.1 200 "), "{seen:?}");
    Ok(())
}

/// Opens a connection and has one request answered on it.
async fn connect_and_hello(addr: SocketAddr) -> std::io::Result<Stream> {
    let mut stream = Stream::try_connect(addr).await?;
    hello(&mut stream).await?;
    Ok(stream)
}

/// With the soft open-file limit at 1024, 9,000 clients each open a
/// keep-alive connection and keep it: every one is answered, and every one
/// is answered again on the connection it holds. The server raises its own
/// limit at startup and derives `--max-connections` from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_thousand_keep_alive_connections_at_once() {
    let hard = raise_own_fd_limit();
    assert!(
        hard >= 2 * CLIENTS as u64 + 512,
        "this machine's hard open-file limit ({hard}) cannot hold both ends of {CLIENTS} connections"
    );
    let server = Server::start_launched(
        "hello",
        &[],
        &Launch {
            fd_soft_limit: Some(1024),
            ..Launch::default()
        },
    );
    server.wait_for_log("serving up to").await;
    let addr = server.addr;

    let run = async {
        // Connect a few hundred at a time, as a crowd of real clients would
        // arrive, not all in the same microsecond.
        let connecting = Arc::new(Semaphore::new(256));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let connecting = connecting.clone();
                tokio::spawn(async move {
                    let _turn = connecting.acquire_owned().await.unwrap();
                    connect_and_hello(addr).await
                })
            })
            .collect();
        let mut held = Vec::with_capacity(CLIENTS);
        let mut failed = Vec::new();
        for client in clients {
            match client.await.unwrap() {
                Ok(stream) => held.push(stream),
                Err(err) => failed.push(err.to_string()),
            }
        }
        assert!(
            failed.is_empty(),
            "{} of {CLIENTS} clients were not answered; first: {:?}",
            failed.len(),
            failed.first()
        );
        assert!(
            server.open_fds() >= CLIENTS,
            "the server holds fewer connections than clients"
        );

        // All of them still open: each asks again on its own connection.
        let again: Vec<_> = held
            .into_iter()
            .map(|mut stream| tokio::spawn(async move { hello(&mut stream).await }))
            .collect();
        let mut failed = 0;
        for client in again {
            failed += usize::from(client.await.unwrap().is_err());
        }
        assert_eq!(
            failed, 0,
            "{failed} held connections failed their second request"
        );
    };
    let started = Instant::now();
    tokio::time::timeout(TEST_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("not done within {TEST_TIMEOUT:?}"));
    println!(
        "{CLIENTS} connections, two requests each, in {:?}",
        started.elapsed()
    );
}

/// The default `--max-connections` never exceeds 16,384 per process,
/// however high the open-file limit, and the startup log says what idle
/// connections may hold.
#[tokio::test]
async fn the_default_connection_cap_is_bounded() {
    let server = Server::start("hello", &[]);
    server.wait_for_log("serving up to").await;
    let log = server.log();
    let line = log
        .lines()
        .find(|line| line.contains("serving up to"))
        .unwrap();
    let count: usize = line
        .split("serving up to ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"));
    assert!(count <= 16_384, "{line}");
    assert!(line.contains("MiB"), "{line}");
}
