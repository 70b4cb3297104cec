//! Inbound TLS (`--tls-cert`, `--tls-key`): rustls, TLS 1.2 and 1.3 only,
//! ALPN offering `h2` and `http/1.1`. Each connection's handshake runs on
//! its worker, within `--tls-handshake-timeout`, before hyper sees it.
//!
//! The certificate and key are read and checked before the server listens:
//! a file that cannot be read or is not PEM, holds no certificate or key, or
//! a key that does not match the certificate fails the start with one
//! `error:` line naming the file. SIGHUP reads them again ([`Certificate`]):
//! new connections get the new pair, established ones keep going; a bad
//! new pair is refused and the old one served on.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use arc_swap::ArcSwap;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

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
/// connection goes through, with the [`Certificate`] SIGHUP reloads.
pub fn acceptor(cert: &Path, key: &Path) -> Result<(TlsAcceptor, Arc<Certificate>)> {
    let provider = Arc::new(ring::default_provider());
    let pair = read(cert, key, &provider)?;
    let certificate = Arc::new(Certificate {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        provider: provider.clone(),
        current: ArcSwap::from_pointee(pair),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS: the crypto provider lacks TLS 1.2 or 1.3")?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok((TlsAcceptor::from(Arc::new(config)), certificate))
}

/// The pair at `cert` and `key`, checked to go together.
fn read(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let chain = certificates(cert)?;
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

/// The certificates in the PEM file `path`, the server's own first.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("--tls-cert {}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow!("--tls-cert {}: not PEM: {err}", path.display()))?;
    if chain.is_empty() {
        return Err(anyhow!(
            "--tls-cert {}: no certificate in it (expected PEM `BEGIN CERTIFICATE` blocks)",
            path.display()
        ));
    }
    Ok(chain)
}
