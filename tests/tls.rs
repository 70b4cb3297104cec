//! Inbound TLS (`--tls-cert`, `--tls-key`), end to end with the real
//! clients operators use: curl and `openssl s_client`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use e2e::{RawClient, Server, TestCa, key_and_request, openssl, run_to_exit};

/// A self-signed certificate for 127.0.0.1 and its key, made by openssl in
/// a folder of the test's own.
struct Certificate {
    dir: PathBuf,
}

impl Certificate {
    /// A certificate for 127.0.0.1 valid only from `start` to `end`
    /// (`YYYYMMDDHHMMSSZ`), made with `openssl ca`, which takes any dates.
    fn dated(name: &str, start: &str, end: &str) -> Self {
        let dir = e2e::temp_dir(name);
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = dated\n[dated]\ndatabase = index.txt\nnew_certs_dir = .\n\
             serial = serial\ndefault_md = sha256\npolicy = any\n[any]\ncommonName = supplied\n",
        )
        .unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("serial"), "01\n").unwrap();
        key_and_request(&dir, "server", "/CN=localhost");
        std::fs::rename(dir.join("server-key.pem"), dir.join("key.pem")).unwrap();
        openssl(
            &dir,
            &format!(
                "ca -batch -selfsign -notext -config ca.cnf -keyfile key.pem -in server.csr \
                 -startdate {start} -enddate {end} -out cert.pem"
            ),
        );
        Self { dir }
    }

    fn new(name: &str) -> Self {
        let dir = e2e::temp_dir(name);
        // A server's own certificate, not a CA's (openssl's default), which
        // clients that check the chain (rustls) refuse.
        openssl(
            &dir,
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
             -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
             -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth \
             -keyout key.pem -out cert.pem",
        );
        Self { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// The server's TLS flags for this certificate, and `extra`.
    fn serve(&self, extra: &[&str]) -> Server {
        let (cert, key) = (self.cert(), self.key());
        let mut args = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Server::start("hello", &args)
    }
}

impl Drop for Certificate {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `curl` with the test's CA, bounded in time; `args` choose the protocol.
fn curl(ca: &Path, server: &Server, args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args(args)
        .args(["-w", "\n%{http_version}"])
        .arg(format!("https://127.0.0.1:{}/", server.addr.port()))
        .output()
        .expect("running curl")
}

/// HTTPS answers as HTTP does, over HTTP/2 when ALPN agrees on it and over
/// HTTP/1.1 when the client offers only that; the certificate verifies.
#[test]
fn https_serves_http2_and_http1_by_alpn() {
    let certificate = Certificate::new("tls-alpn");
    let server = certificate.serve(&[]);
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = curl(&certificate.cert(), &server, &[flag]);
        assert!(
            out.status.success(),
            "{flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("Hello World\n\n{version}"),
            "{flag}"
        );
    }
}

/// A client that offers only TLS 1.1 is refused with a handshake alert; one
/// that offers TLS 1.2 only is served, and ALPN `h2` is selected.
#[test]
fn tls_1_1_is_refused_and_1_2_is_served() {
    let certificate = Certificate::new("tls-versions");
    let server = certificate.serve(&[]);
    let s_client = |args: &[&str]| {
        let out = Command::new("timeout")
            .arg("10")
            .args(["openssl", "s_client", "-connect"])
            .arg(server.addr.to_string())
            // Lets this OpenSSL offer TLS 1.1 at all: the server must refuse.
            .args(["-cipher", "DEFAULT@SECLEVEL=0"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("running openssl s_client");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let old = s_client(&["-tls1_1"]);
    assert!(old.contains("SSL alert number"), "{old}");
    assert!(!old.contains("Cipher is ECDHE"), "{old}");
    let tls12 = s_client(&["-tls1_2", "-alpn", "h2,http/1.1"]);
    assert!(tls12.contains("Protocol  : TLSv1.2"), "{tls12}");
    assert!(tls12.contains("ALPN protocol: h2"), "{tls12}");
}

/// A client that connects and sends nothing, or half a ClientHello, is
/// closed at `--tls-handshake-timeout`; the server serves on.
#[tokio::test]
async fn a_stalled_handshake_is_closed() {
    let certificate = Certificate::new("tls-stall");
    let server = certificate.serve(&["--tls-handshake-timeout", "300ms"]);
    // A TLS record header announcing a 512-byte handshake, and nothing more.
    for sent in [&b""[..], &b"\x16\x03\x01\x02\x00\x01"[..]] {
        let started = Instant::now();
        let mut client = RawClient::connect(server.addr).await;
        client.send(sent).await.unwrap();
        assert_eq!(client.read_to_close().await, "");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "closed after {waited:?}"
        );
    }
    let out = curl(&certificate.cert(), &server, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bad certificate, key or client CA files fail the start with one
/// `error:` line naming the file and what is wrong, before the server
/// listens.
#[test]
fn bad_tls_files_fail_at_startup() {
    let certificate = Certificate::new("tls-bad");
    let other = Certificate::new("tls-bad-other");
    let expired = Certificate::dated("tls-bad-expired", "20200101000000Z", "20200201000000Z");
    let future = Certificate::dated("tls-bad-future", "20990101000000Z", "20990201000000Z");
    let hello = e2e::component("hello");
    let (cert, key) = (certificate.cert(), certificate.key());
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let other_key = other.key();
    let missing = certificate.dir.join("missing.pem");
    let path = |p: PathBuf| p.to_str().unwrap().to_string();
    let cases: Vec<(String, String, Option<&str>, String)> = vec![
        (
            path(hello.clone()),
            key.into(),
            None,
            format!("--tls-cert {}: no certificate in it", hello.display()),
        ),
        (
            cert.into(),
            cert.into(),
            None,
            format!("--tls-key {cert}: no private key in PEM"),
        ),
        (
            cert.into(),
            path(other_key.clone()),
            None,
            format!(
                "--tls-key {} does not go with --tls-cert {cert}",
                other_key.display()
            ),
        ),
        (
            path(missing.clone()),
            key.into(),
            None,
            format!("--tls-cert {}: No such file", missing.display()),
        ),
        (
            path(expired.cert()),
            path(expired.key()),
            None,
            format!(
                "--tls-cert {}: expired on Feb  1 00:00:00 2020",
                expired.cert().display()
            ),
        ),
        (
            path(future.cert()),
            path(future.key()),
            None,
            format!(
                "--tls-cert {}: not valid before Jan  1 00:00:00 2099",
                future.cert().display()
            ),
        ),
        (
            cert.into(),
            key.into(),
            Some(key),
            format!("--tls-client-ca {key}: no certificate in it"),
        ),
    ];
    for (cert, key, client_ca, expected) in cases {
        for processes in ["1", "2"] {
            let mut args = vec![
                hello.to_str().unwrap(),
                "--addr",
                "127.0.0.1:0",
                "--processes",
                processes,
                "--tls-cert",
                &cert,
                "--tls-key",
                &key,
            ];
            if let Some(ca) = client_ca {
                args.extend(["--tls-client-ca", ca]);
            }
            let failed = run_to_exit(&args);
            assert!(failed.stdout.is_empty(), "{}", failed.stdout);
            let error = failed.the_error();
            assert!(error.starts_with(&format!("error: {expected}")), "{error}");
        }
    }
}

/// `--tls-client-ca`: a client with a certificate the CA issued is served,
/// and the guest sees its verified subject in the operator's header, never
/// the client's own copy of that header, and the scheme `https`; a client without a certificate,
/// or with one from another CA, fails its handshake.
#[test]
fn mutual_tls_accepts_the_cas_clients_only_and_names_them_to_the_guest() {
    let certificate = Certificate::new("mtls-server");
    let clients = TestCa::new("mtls-clients");
    clients.issue_client("alice");
    let rogue = TestCa::new("mtls-rogue");
    rogue.issue_client("mallory");
    let (cert, key, ca) = (
        certificate.cert(),
        certificate.key(),
        clients.file("ca.pem"),
    );
    let server = Server::start(
        "testbed",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
            "--tls-client-ca",
            &ca,
            "--tls-client-subject-header",
            "x-client-subject",
        ],
    );
    let request = |client: Option<&str>| {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&cert)
            .args(["-H", "x-client-subject: CN=admin"]);
        if let Some(client) = client {
            let issuer = if client == "alice" { &clients } else { &rogue };
            command
                .args(["--cert", &issuer.file(&format!("{client}.pem"))])
                .args(["--key", &issuer.file(&format!("{client}-key.pem"))]);
        }
        let out = command
            .arg(format!("https://127.0.0.1:{}/request", server.addr.port()))
            .output()
            .expect("running curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (served, seen, err) = request(Some("alice"));
    assert!(served, "{err}");
    assert!(seen.contains("scheme Some(Scheme::Https)\n"), "{seen}");
    let subjects: Vec<&str> = seen
        .lines()
        .filter(|l| l.starts_with("header x-client-subject:"))
        .collect();
    assert_eq!(
        subjects,
        ["header x-client-subject: O=Example, CN=alice"],
        "{seen}"
    );
    for client in [None, Some("mallory")] {
        let (served, seen, _) = request(client);
        assert!(!served, "{client:?} was served: {seen}");
        assert!(!seen.contains("header"), "{client:?}: {seen}");
    }
    let (served, _, err) = request(Some("alice"));
    assert!(served, "{err}");
}

/// A TLS connection to `addr` that trusts only the certificate at `ca`.
async fn tls_connect(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto::ring};
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).unwrap())
        .unwrap();
    let config = ClientConfig::builder_with_provider(std::sync::Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(e2e::STEP_TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("handshake within the step timeout")
}

/// Sends `GET /` on `stream` (kept alive) and returns the response's body.
async fn hello_over(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    while !seen.ends_with(b"Hello World\n") {
        let n = tokio::time::timeout(e2e::STEP_TIMEOUT, stream.read(&mut buf))
            .await
            .expect("an answer within the step timeout")
            .unwrap();
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    text.rsplit("\r\n\r\n").next().unwrap().to_string()
}

/// SIGHUP reads the certificate and key again: new connections get the new
/// certificate, one opened before keeps going, and a broken pair at the
/// next SIGHUP is refused while the current one is served on.
#[tokio::test]
async fn sighup_swaps_the_certificate_for_new_connections() {
    let first = Certificate::new("tls-swap-first");
    let second = Certificate::new("tls-swap-second");
    let live = e2e::temp_dir("tls-swap-live");
    let (cert, key) = (live.join("cert.pem"), live.join("key.pem"));
    let put = |from: &Certificate| {
        for (source, target) in [(from.cert(), &cert), (from.key(), &key)] {
            let next = target.with_extension("next");
            std::fs::copy(source, &next).unwrap();
            std::fs::rename(&next, target).unwrap();
        }
    };
    put(&first);
    let server = Server::start(
        "hello",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let mut old = tls_connect(server.addr, &first.cert()).await.unwrap();
    assert_eq!(hello_over(&mut old).await, "Hello World\n");

    put(&second);
    server.hangup();
    server
        .wait_for_log_in_each("reloaded the TLS certificate and key", 1)
        .await;
    // Several times, so that each serving process is likely reached.
    for _ in 0..4 {
        assert!(tls_connect(server.addr, &first.cert()).await.is_err());
        let mut new = tls_connect(server.addr, &second.cert()).await.unwrap();
        assert_eq!(hello_over(&mut new).await, "Hello World\n");
    }
    assert_eq!(hello_over(&mut old).await, "Hello World\n");

    std::fs::write(&key, "not a key").unwrap();
    server.hangup();
    server
        .wait_for_log_in_each(
            "TLS certificate reload failed, still serving the previous one",
            1,
        )
        .await;
    let mut after = tls_connect(server.addr, &second.cert()).await.unwrap();
    assert_eq!(hello_over(&mut after).await, "Hello World\n");
    let _ = std::fs::remove_dir_all(&live);
}
