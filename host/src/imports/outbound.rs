//! How a guest's allowed outbound request reaches the network: one pooled
//! client per serving process, so consecutive requests to an origin reuse
//! an open connection (and its TLS session) instead of paying a TCP and TLS
//! handshake each, as wasmtime-wasi-http's default does. HTTPS is verified
//! against the system's CA certificates plus `--outbound-ca`; each request
//! waits at most the operator's connect and first-byte timeouts.

use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::http::{Request, Response};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client as Pooled;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::{Instant, Sleep};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tracing::{info, warn};
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

use crate::http::tls::certificates;

/// Idle connections kept per origin (scheme, host and port). A guest has at
/// most `MAX_OUTBOUND` requests in flight, so this many covers several
/// guests calling one upstream at once; more are opened and closed.
const MAX_IDLE_PER_ORIGIN: usize = 32;

/// How long an idle pooled connection is kept: what reqwest (and so Spin)
/// keeps one, and below the 120 s or more most servers and load balancers
/// keep theirs, so the pool rarely hands out a connection the other end is
/// closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The operator's caps on how long an outbound request waits (see the
/// flags `--outbound-connect-timeout` and `--outbound-first-byte-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct OutboundTimeouts {
    pub connect: Duration,
    pub first_byte: Duration,
}

impl OutboundTimeouts {
    /// The guest's `request-options`, each timeout capped by the
    /// operator's (and set to it where the guest set none).
    fn cap(self, asked: Option<RequestOptions>) -> RequestOptions {
        let asked = asked.unwrap_or_default();
        let cap =
            |asked: Option<Duration>, most: Duration| Some(asked.map_or(most, |a| a.min(most)));
        RequestOptions {
            connect_timeout: cap(asked.connect_timeout, self.connect),
            first_byte_timeout: cap(asked.first_byte_timeout, self.first_byte),
            between_bytes_timeout: asked.between_bytes_timeout,
        }
    }
}

/// The outbound client of a serving process.
pub struct Outbound {
    timeouts: OutboundTimeouts,
    /// `--outbound-ca`, read and checked at startup.
    extra_roots: Vec<CertificateDer<'static>>,
    /// Built at the first outbound request: reading the system's CA
    /// certificates takes milliseconds a server whose guests call nothing
    /// should not pay at every start.
    client: OnceLock<Pooled<HttpsConnector<HttpConnector>, WasiBody>>,
}

impl Outbound {
    /// The client for `timeouts`, trusting the CA certificates in the PEM
    /// file `extra_ca` as well as the system's.
    pub fn new(timeouts: OutboundTimeouts, extra_ca: Option<&Path>) -> Result<Self> {
        let extra_roots = match extra_ca {
            Some(path) => certificates(path, &format!("--outbound-ca {}", path.display()))?,
            None => Vec::new(),
        };
        Ok(Self {
            timeouts,
            extra_roots,
            client: OnceLock::new(),
        })
    }

    fn client(&self) -> &Pooled<HttpsConnector<HttpConnector>, WasiBody> {
        self.client.get_or_init(|| {
            let mut http = HttpConnector::new();
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(self.timeouts.connect));
            let https = HttpsConnectorBuilder::new()
                .with_tls_config(client_tls(&self.extra_roots))
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(http);
            Pooled::builder(TokioExecutor::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                .pool_max_idle_per_host(MAX_IDLE_PER_ORIGIN)
                .pool_timer(TokioTimer::new())
                .build(https)
        })
    }

    /// Sends `request` on a pooled connection, within the operator's
    /// timeouts and the guest's shorter ones. The response body holds
    /// `in_flight` until the guest drops it.
    pub async fn send(
        &self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        in_flight: Arc<()>,
    ) -> Result<Response<WasiBody>, Error> {
        if request.uri().scheme().is_none() || request.uri().authority().is_none() {
            return Err(Error::HttpRequestUriInvalid);
        }
        let options = self.timeouts.cap(options);
        let connect = options.connect_timeout.unwrap_or(self.timeouts.connect);
        let first_byte = options
            .first_byte_timeout
            .unwrap_or(self.timeouts.first_byte);
        // A connection, pooled or new (its TLS handshake included), within
        // the connect timeout; then the head within the first-byte one.
        let mut request = request;
        let mut connected = capture_connection(&mut request);
        let send = self.client().request(request);
        tokio::pin!(send);
        let done = tokio::select! {
            done = &mut send => Some(done),
            _ = connected.wait_for_connection_metadata() => None,
            () = tokio::time::sleep(connect) => return Err(Error::ConnectionTimeout),
        };
        let done = match done {
            Some(done) => done,
            None => tokio::time::timeout(first_byte, send)
                .await
                .map_err(|_| Error::ConnectionReadTimeout)?,
        };
        let response = done.map_err(|err| error(&err))?;
        let between_bytes = options.between_bytes_timeout;
        Ok(response.map(|body| {
            Upstream {
                body,
                idle: between_bytes.map(|t| Box::pin(tokio::time::sleep(t))),
                between_bytes,
                _in_flight: in_flight,
            }
            .boxed_unsync()
        }))
    }
}

/// TLS 1.2 and 1.3, verifying servers against the system's CA certificates
/// (those of the `ca-certificates` package on Debian) and `extra_roots`;
/// with neither, against Mozilla's list that wasmtime-wasi-http's default
/// client uses, so that a minimal image still reaches public HTTPS. Guests'
/// outbound requests and the trace exporter both connect with it.
pub fn client_tls(extra_roots: &[CertificateDer<'static>]) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(system.certs);
    let (extra, _) = roots.add_parsable_certificates(extra_roots.iter().cloned());
    if added == 0 && extra == 0 {
        warn!(
            "no system CA certificates found (install ca-certificates): HTTPS trusts Mozilla's list built into the server"
        );
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else {
        info!(
            system = added,
            extra = extra,
            "HTTPS trusts these CA certificates"
        );
    }
    ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An upstream response body: at most `between_bytes` between frames, and
/// one of the guest's in-flight outbound requests until it is dropped.
struct Upstream {
    body: Incoming,
    idle: Option<Pin<Box<Sleep>>>,
    between_bytes: Option<Duration>,
    _in_flight: Arc<()>,
}

impl Body for Upstream {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(idle), Some(between)) = (&mut this.idle, this.between_bytes) {
                    idle.as_mut().reset(Instant::now() + between);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) if err.is_timeout() => {
                Poll::Ready(Some(Err(Error::HttpResponseTimeout)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(Error::Hyper(err)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match &mut this.idle {
                Some(idle) => {
                    ready!(idle.as_mut().poll(cx));
                    Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
                }
                None => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The wasi:http error for a failed request, as wasmtime-wasi-http's
/// default client would give it.
fn error(err: &hyper_util::client::legacy::Error) -> Error {
    use std::error::Error as _;
    let mut cause = err.source();
    while let Some(current) = cause {
        if let Some(tls) = current.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_) => Error::TlsCertificateError,
                rustls::Error::AlertReceived(alert) => Error::TlsAlertReceived {
                    alert_id: Some(u8::from(*alert)),
                    alert_message: Some(format!("{alert:?}")),
                },
                _ => Error::TlsProtocolError,
            };
        }
        if let Some(hyper) = current.downcast_ref::<hyper::Error>() {
            if hyper.is_timeout() {
                return Error::HttpResponseTimeout;
            }
            if hyper.is_incomplete_message() || hyper.is_closed() || hyper.is_canceled() {
                return Error::ConnectionTerminated;
            }
        }
        cause = match current.downcast_ref::<std::io::Error>() {
            Some(io) => match io.kind() {
                std::io::ErrorKind::TimedOut => return Error::ConnectionTimeout,
                std::io::ErrorKind::ConnectionRefused => return Error::ConnectionRefused,
                // An `io::Error`'s `source` skips the error it wraps (a
                // TLS error, or another `io::Error`): look inside.
                _ => io
                    .get_ref()
                    .map(|inner| inner as &(dyn std::error::Error + 'static)),
            },
            None => current.source(),
        };
    }
    if err.is_connect() {
        if format!("{err:?}").contains("dns error") {
            return Error::DnsError {
                rcode: Some("address not available".to_string()),
                info_code: None,
            };
        }
        warn!("outbound connect error: {err:?}");
        return Error::ConnectionRefused;
    }
    warn!("outbound request error: {err:?}");
    Error::HttpProtocolError
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPERATOR: OutboundTimeouts = OutboundTimeouts {
        connect: Duration::from_secs(5),
        first_byte: Duration::from_secs(20),
    };

    #[test]
    fn the_operator_caps_a_guests_timeouts() {
        let none = OPERATOR.cap(None);
        assert_eq!(none.connect_timeout, Some(Duration::from_secs(5)));
        assert_eq!(none.first_byte_timeout, Some(Duration::from_secs(20)));
        assert_eq!(none.between_bytes_timeout, None);
        let asked = OPERATOR.cap(Some(RequestOptions {
            connect_timeout: Some(Duration::from_secs(1)),
            first_byte_timeout: Some(Duration::from_secs(600)),
            between_bytes_timeout: Some(Duration::from_secs(7)),
        }));
        assert_eq!(asked.connect_timeout, Some(Duration::from_secs(1)));
        assert_eq!(asked.first_byte_timeout, Some(Duration::from_secs(20)));
        assert_eq!(asked.between_bytes_timeout, Some(Duration::from_secs(7)));
    }
}
