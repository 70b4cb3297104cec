//! How finished spans reach the collector without ever holding a request:
//! a request's thread only puts its span in a bounded queue (or, when the
//! queue is full, counts it dropped); a thread of its own takes them out in
//! batches and sends each to the collector with the OTLP exporter over
//! hyper. A collector that is down or slow holds that thread and fills the
//! queue, nothing else; what it loses is counted in `/metrics`
//! (`trace_spans_dropped`).
//!
//! The SDK's own batch processor does the same but keeps its drop count to
//! itself (it logs it at shutdown), and runs the exporter outside any async
//! runtime, which hyper needs.

use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use opentelemetry::Context;
use opentelemetry_http::hyper::HyperClient;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter as _, SpanProcessor};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tracing::{info, warn};

use crate::metrics::METRICS;

/// How long the server waits at exit for the spans still queued to be
/// sent: short, so a collector that is down does not hold a shutdown.
pub const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

/// The queue and batches, as the specification's `OTEL_BSP_*` variables
/// set them (their defaults are the specification's).
pub struct Batching {
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: spans waiting to be sent; past it new
    /// ones are dropped. 2048 spans of a few hundred bytes each.
    queue: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY`: the longest a span waits for its batch to
    /// fill before the batch is sent anyway.
    delay: Duration,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans per export request.
    batch: usize,
}

impl Batching {
    pub fn from_env() -> Result<Self> {
        let number = |name: &str, default: usize| -> Result<usize> {
            match std::env::var(name) {
                Err(_) => Ok(default),
                Ok(value) => value
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow!("{name}={value}: expected a positive whole number")),
            }
        };
        let queue = number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?;
        let delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)? as u64);
        let batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.min(queue);
        Ok(Self {
            queue,
            delay,
            batch,
        })
    }
}

/// The exporter's HTTP client: hyper, over rustls for an `https://`
/// collector (trusting the system's CAs and `extra_roots`), within
/// `timeout` per export.
pub fn client(
    timeout: Duration,
    extra_roots: Vec<CertificateDer<'static>>,
) -> HyperClient<HttpsConnector<HttpConnector>> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(timeout));
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(crate::imports::outbound::client_tls(&extra_roots))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    HyperClient::new(https, timeout, None)
}

/// The span processor: see the module's comment.
#[derive(Debug)]
pub struct ExportQueue {
    /// Taken at shutdown, which ends the export thread once it has sent
    /// what is queued.
    queue: Mutex<Option<SyncSender<SpanData>>>,
    /// Told when the export thread has ended.
    ended: Mutex<Receiver<()>>,
}

impl ExportQueue {
    /// Starts the export thread, which sends through `exporter` spans of
    /// `resource`.
    pub fn start(
        mut exporter: SpanExporter,
        resource: &Resource,
        batching: Batching,
    ) -> Result<Self> {
        exporter.set_resource(resource);
        let (queue, spans) = std::sync::mpsc::sync_channel(batching.queue);
        let (end, ended) = std::sync::mpsc::channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the trace exporter's runtime")?;
        std::thread::Builder::new()
            .name("trace-export".into())
            .spawn(move || {
                send(&runtime, &exporter, &spans, &batching);
                let _ = end.send(());
            })
            .context("starting the trace exporter's thread")?;
        Ok(Self {
            queue: Mutex::new(Some(queue)),
            ended: Mutex::new(ended),
        })
    }
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let queue = self.queue.lock().expect("never poisoned");
        let sent = match &*queue {
            Some(queue) => queue.try_send(span),
            None => return,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = sent {
            METRICS.spans_dropped(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        drop(self.queue.lock().expect("never poisoned").take());
        match self
            .ended
            .lock()
            .expect("never poisoned")
            .recv_timeout(timeout)
        {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => Ok(()),
            Err(RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(timeout)),
        }
    }
}

/// The export thread's work: batches from `spans`, each sent when full or
/// `delay` after its first span, until the queue closes (what is left is
/// sent then). The runtime drives the exporter's hyper connections.
fn send(
    runtime: &tokio::runtime::Runtime,
    exporter: &SpanExporter,
    spans: &Receiver<SpanData>,
    batching: &Batching,
) {
    let mut failing = false;
    // The first span of a batch: wait as long as it takes.
    while let Ok(first) = spans.recv() {
        let due = Instant::now() + batching.delay;
        let mut batch = vec![first];
        let mut closed = false;
        while batch.len() < batching.batch {
            let left = due.saturating_duration_since(Instant::now());
            match spans.recv_timeout(left) {
                Ok(span) => batch.push(span),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let count = batch.len();
        match runtime.block_on(exporter.export(batch)) {
            Ok(()) => {
                METRICS.spans_exported(count);
                if std::mem::replace(&mut failing, false) {
                    info!("the trace collector takes spans again");
                }
            }
            Err(err) => {
                METRICS.spans_dropped(count);
                if !std::mem::replace(&mut failing, true) {
                    warn!(
                        "cannot send spans to the trace collector ({err}); they are dropped, and counted in trace_spans_dropped, until it takes them again"
                    );
                }
            }
        }
        if closed {
            return;
        }
    }
}
