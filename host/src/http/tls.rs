//! Inbound TLS (`--tls-cert`, `--tls-key`): rustls, TLS 1.2 and 1.3 only,
//! ALPN offering `h2` and `http/1.1`. Each connection's handshake runs on
//! its worker, within `--tls-handshake-timeout`, before hyper sees it.
//!
//! The certificate and key are read and checked before the server listens:
//! a file that cannot be read or is not PEM, holds no certificate or key, a
//! certificate out of its validity period, or a key that does not match the
//! certificate fails the start with one `error:` line naming the file.
//! SIGHUP reads them again ([`Certificate`]): new connections get the new
//! pair, established ones keep going; a bad new pair is refused and the old
//! one served on.
//!
//! `--tls-client-ca` asks every client for a certificate issued by one of
//! that file's CAs (mutual TLS) and refuses the handshake without one; the
//! subject it verified is handed to the guest in the request header the
//! operator names ([`client_subject`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{
    ClientHello, ResolvesServerCert, ServerConnection, WebPkiClientVerifier,
};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::time::ASN1Time;

/// What ALPN offers, in the server's order of preference: HTTP/2 where the
/// client speaks it, as hyper serves both on one connection.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The server's certificate and key, as last read from their files.
#[derive(Debug)]
pub struct Certificate {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl Certificate {
    /// Reads the pair again and serves it to new connections, if it is
    /// whole; otherwise keeps the one in use and says why.
    pub fn reload(&self) -> Result<()> {
        let pair = read(&self.cert, &self.key, &self.provider)?;
        self.current.store(Arc::new(pair));
        Ok(())
    }

    pub fn files(&self) -> String {
        format!("{} and {}", self.cert.display(), self.key.display())
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Reads the certificate chain at `cert` and the private key at `key`
/// (PKCS#8, PKCS#1 RSA or SEC1 EC, in PEM) and makes the acceptor every
/// connection goes through, with the [`Certificate`] SIGHUP reloads; with
/// `client_ca`, only clients with a certificate one of its CAs issued get
/// through.
pub fn acceptor(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<(TlsAcceptor, Arc<Certificate>)> {
    let provider = Arc::new(ring::default_provider());
    let pair = read(cert, key, &provider)?;
    let certificate = Arc::new(Certificate {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        provider: provider.clone(),
        current: ArcSwap::from_pointee(pair),
    });
    let versions = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS: the crypto provider lacks TLS 1.2 or 1.3")?;
    let clients = match client_ca {
        None => versions.with_no_client_auth(),
        Some(path) => versions.with_client_cert_verifier(client_verifier(path, provider)?),
    };
    let mut config = clients.with_cert_resolver(certificate.clone());
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok((TlsAcceptor::from(Arc::new(config)), certificate))
}

/// Verifies client certificates against the CAs in the PEM file `path`.
fn client_verifier(
    path: &Path,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>> {
    let flag = || format!("--tls-client-ca {}", path.display());
    let mut roots = RootCertStore::empty();
    for ca in certificates(path, &flag())? {
        roots
            .add(ca)
            .map_err(|err| anyhow!("{}: not a CA certificate: {err}", flag()))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|err| anyhow!("{}: {err}", flag()))
}

/// The subject of the certificate the client of `connection` presented
/// and `--tls-client-ca` verified, its attributes in the certificate's
/// order (`O=Example, CN=alice`, as nginx's `$ssl_client_s_dn` writes them
/// in reverse), or `None` without client certificates.
pub fn client_subject(connection: &ServerConnection) -> Option<String> {
    let leaf = connection.peer_certificates()?.first()?;
    let (_, parsed) = X509Certificate::from_der(leaf).ok()?;
    Some(parsed.subject().to_string())
}

/// The pair at `cert` and `key`, checked to go together, with the
/// certificate valid now: an expired one would make every client fail its
/// handshake with an error only the client sees.
fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let flag = format!("--tls-cert {}", cert.display());
    let chain = certificates(cert, &flag)?;
    valid_now(&chain[0], &flag)?;
    let pem = std::fs::read(key).with_context(|| format!("--tls-key {}", key.display()))?;
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|err| {
        anyhow!(
            "--tls-key {}: no private key in PEM (PKCS#8, RSA or EC): {err}",
            key.display()
        )
    })?;
    CertifiedKey::from_der(chain, private, provider).map_err(|err| {
        anyhow!(
            "--tls-key {} does not go with --tls-cert {}: {err}",
            key.display(),
            cert.display()
        )
    })
}

/// The certificates in the PEM file `path`, in file order; `flag` names
/// it in errors.
pub fn certificates(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| flag.to_string())?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow!("{flag}: not PEM: {err}"))?;
    if chain.is_empty() {
        return Err(anyhow!(
            "{flag}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)"
        ));
    }
    Ok(chain)
}

/// Fails unless `der` is a certificate within its validity period now.
fn valid_now(der: &CertificateDer<'_>, flag: &str) -> Result<()> {
    let (_, parsed) = X509Certificate::from_der(der)
        .map_err(|err| anyhow!("{flag}: not an X.509 certificate: {err}"))?;
    let validity = parsed.validity();
    let now = ASN1Time::now();
    if validity.not_after < now {
        return Err(anyhow!("{flag}: expired on {}", validity.not_after));
    }
    if validity.not_before > now {
        return Err(anyhow!("{flag}: not valid before {}", validity.not_before));
    }
    Ok(())
}
