//! Outbound HTTP from guests: what reaches the server a guest calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{Server, TESTBEDS, TestCa, get};
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest request head the recording upstream reads.
const MAX_HEAD: usize = 64 * 1024;

/// An upstream on 127.0.0.1 that records the head of every request it gets
/// and answers each with `ok`, closing the connection.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let recorded = heads.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let recorded = recorded.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
                    match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await
                    {
                        Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                        _ => return,
                    }
                }
                recorded
                    .lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                    )
                    .await;
            });
        }
    });
    (addr, heads)
}

/// Every outbound HTTP/1.1 request of a guest names its authority in a
/// `Host` header, as HTTP/1.1 requires (wasmtime 48.0.0 dropped it in one
/// case: wasmtime issue 14190), from a WASI 0.2 and a WASI 0.3 guest.
#[tokio::test]
async fn outbound_requests_carry_the_host_header() {
    for testbed in TESTBEDS {
        let (upstream, heads) = recording_upstream().await;
        let server = Server::start(testbed, &["--allow-outbound", &upstream.to_string()]);
        let reply = get(server.addr, &format!("/outbound?authority={upstream}")).await;
        assert_eq!(
            (reply.status, reply.text()),
            (StatusCode::OK, "ok\n"),
            "{testbed}"
        );
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 1, "{testbed}: {heads:?}");
        let hosts: Vec<&str> = heads[0]
            .lines()
            .filter_map(|line| line.split_once(':'))
            .filter(|(name, _)| name.eq_ignore_ascii_case("host"))
            .map(|(_, value)| value.trim())
            .collect();
        assert_eq!(hosts, [upstream.to_string()], "{testbed}: {}", heads[0]);
    }
}

/// Asks `testbed`, allowed to reach `upstream` and with the outbound
/// `timeout` flag at 300 ms, to GET it; asserts the guest is told `error`
/// and answers the client itself, long before `--request-timeout` (30 s).
async fn given_up(testbed: &str, upstream: SocketAddr, timeout: &str, error: &str) {
    let server = Server::start(
        testbed,
        &["--allow-outbound", &upstream.to_string(), timeout, "300ms"],
    );
    let started = Instant::now();
    let reply = get(server.addr, &format!("/outbound?authority={upstream}")).await;
    assert_eq!(
        (reply.status, reply.text()),
        (
            StatusCode::BAD_GATEWAY,
            format!("ErrorCode::{error}\n").as_str()
        ),
        "{testbed}"
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(10), "{testbed}: {waited:?}");
}

/// An upstream that takes the connection and the request but never answers
/// holds a guest's outbound request only `--outbound-first-byte-timeout`.
#[tokio::test]
async fn a_silent_upstream_is_given_up_at_the_first_byte_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    // Holds every connection open, reading nothing and answering nothing.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    for testbed in TESTBEDS {
        given_up(
            testbed,
            upstream,
            "--outbound-first-byte-timeout",
            "ConnectionReadTimeout",
        )
        .await;
    }
}

/// An upstream whose accept queue is full (the kernel drops new SYNs, so a
/// connect hangs) holds a guest's outbound request only
/// `--outbound-connect-timeout`.
#[tokio::test]
async fn an_unreachable_upstream_is_given_up_at_the_connect_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let upstream = listener.local_addr().unwrap();
    // Never accepted: these fill the queue (a backlog of 0 holds one).
    let mut fillers = Vec::new();
    for _ in 0..3 {
        if let Ok(stream) =
            std::net::TcpStream::connect_timeout(&upstream, Duration::from_millis(200))
        {
            fillers.push(stream);
        }
    }
    let probe = std::net::TcpStream::connect_timeout(&upstream, Duration::from_millis(300));
    assert!(probe.is_err(), "the accept queue is not full");
    for testbed in TESTBEDS {
        given_up(
            testbed,
            upstream,
            "--outbound-connect-timeout",
            "ConnectionTimeout",
        )
        .await;
    }
    drop(listener);
}

/// An HTTPS upstream on 127.0.0.1 with `ca`'s certificate `upstream.pem`,
/// answering `ok` to every request and keeping connections open; counts
/// the connections it accepted.
async fn https_upstream(ca: &TestCa) -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{ServerConfig, crypto::ring};
    ca.issue_server("upstream");
    let chain = vec![CertificateDer::from_pem_file(ca.file("upstream.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(ca.file("upstream-key.pem")).unwrap();
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut stream) = acceptor.accept(tcp).await else {
                    return;
                };
                // One request head at a time, each answered, until the
                // client closes or stays silent for 10 s.
                let mut head = Vec::new();
                let mut buf = [0; 4096];
                loop {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                            .await
                        {
                            Ok(Ok(n)) if n > 0 && head.len() < MAX_HEAD => {
                                head.extend_from_slice(&buf[..n]);
                            }
                            _ => return,
                        }
                    }
                    head.clear();
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Outbound HTTPS is verified: against `--outbound-ca` the private CA's
/// upstream is reached, and one connection carries the requests of
/// consecutive instances (pooled); without it the guest gets
/// `TlsCertificateError`. A file that holds no certificate fails the start.
#[tokio::test]
async fn outbound_https_trusts_outbound_ca_and_reuses_connections() {
    let ca = TestCa::new("outbound-ca");
    let (upstream, accepted) = https_upstream(&ca).await;
    let path = format!("/outbound?authority={upstream}&scheme=https");
    let allow = format!("https://{upstream}");
    let ca_file = ca.file("ca.pem");
    // One serving process with one thread: one pool.
    let trusting = Server::start(
        "testbed",
        &[
            "--allow-outbound",
            &allow,
            "--outbound-ca",
            &ca_file,
            "--processes",
            "1",
            "--threads",
            "1",
        ],
    );
    for _ in 0..5 {
        let reply = get(trusting.addr, &path).await;
        assert_eq!((reply.status, reply.text()), (StatusCode::OK, "ok\n"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "connections opened");

    let unaware = Server::start("testbed", &["--allow-outbound", &allow]);
    let reply = get(unaware.addr, &path).await;
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::BAD_GATEWAY, "ErrorCode::TlsCertificateError\n")
    );

    let key = ca.file("ca-key.pem");
    let failed = e2e::run_to_exit(&[
        e2e::component("testbed").to_str().unwrap(),
        "--addr",
        "127.0.0.1:0",
        "--outbound-ca",
        &key,
    ]);
    assert_eq!(
        failed.the_error(),
        format!(
            "error: --outbound-ca {key}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)"
        )
    );
}

/// Each allow-list form, as operators write it for `--allow-outbound` or
/// Spin's `allowed_outbound_hosts`, lets through what it names and denies
/// the rest with `HttpRequestDenied`: checked against a real upstream on
/// 127.0.0.1, reached over `http`.
#[tokio::test]
async fn each_allow_list_form_allows_what_it_names_and_denies_the_rest() {
    let upstream = Server::start("hello", &[]);
    let port = upstream.addr.port();
    let other = port.wrapping_add(1);
    let cases = [
        (format!("127.0.0.1:{port}"), true),
        ("127.0.0.1".to_string(), true),
        (format!("127.0.0.1:{other}"), false),
        (format!("http://127.0.0.1:{port}"), true),
        (format!("https://127.0.0.1:{port}"), false),
        // Spin's meaning: no port is the scheme's own (80).
        ("http://127.0.0.1".to_string(), false),
        ("http://127.0.0.1:*".to_string(), true),
        (
            format!("http://127.0.0.1:{}..{}", port, port.wrapping_add(1)),
            true,
        ),
        (
            format!("http://127.0.0.1:{}..{}", other, other.wrapping_add(5)),
            false,
        ),
        (format!("*://127.0.0.0/8:{port}"), true),
        (format!("*://10.0.0.0/8:{port}"), false),
        (format!("http://*.internal:{port}"), false),
        ("*://*:*".to_string(), true),
    ];
    let path = format!("/outbound?authority={}", upstream.addr);
    for (entry, allowed) in cases {
        let server = Server::start("testbed", &["--allow-outbound", &entry]);
        let reply = get(server.addr, &path).await;
        let expected = if allowed {
            (StatusCode::OK, "Hello World\n")
        } else {
            (StatusCode::BAD_GATEWAY, "ErrorCode::HttpRequestDenied\n")
        };
        assert_eq!((reply.status, reply.text()), expected, "{entry}");
    }
}
