//! OpenTelemetry traces. Off, and free, unless the operator names a
//! collector (`OTEL_EXPORTER_OTLP_ENDPOINT`, or `..._TRACES_ENDPOINT`);
//! then configured by the standard `OTEL_*` variables, checked before the
//! server listens. Each request is a server span with children for its
//! instantiation, the guest's call, its key-value calls and its outbound
//! requests ([`spans`]); W3C trace context (`traceparent`, `tracestate`) is
//! taken from the request and put on the guest's outbound requests, unless
//! `OTEL_PROPAGATORS=none`. Spans are `tracing` spans of the target
//! [`TARGET`], which only the OpenTelemetry layer sees (the log does not),
//! and leave through [`export`]: a bounded queue and a thread of its own,
//! so a slow or absent collector never holds a request.

pub mod export;
pub mod spans;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Metadata};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::registry::LookupSpan;

/// The `tracing` target of the spans that become OpenTelemetry spans.
pub const TARGET: &str = "otel";

/// Whether requests are traced: set once, at startup.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether trace context crosses the server (`OTEL_PROPAGATORS`).
static PROPAGATE: AtomicBool = AtomicBool::new(false);

/// The collector's default wait per export, as the OTLP specification
/// sets it (`OTEL_EXPORTER_OTLP_TIMEOUT`).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// What `OTEL_TRACES_SAMPLER` may name: the specification's samplers that
/// the SDK implements.
const SAMPLERS: [&str; 6] = [
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Tracing as the environment configures it, checked.
pub struct Settings {
    protocol: Protocol,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT` (or its `TRACES_` form).
    timeout: Duration,
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`: the collector's CA, for HTTPS.
    certificate: Option<PathBuf>,
    /// `OTEL_PROPAGATORS`, less `none`.
    propagators: Vec<String>,
    /// `OTEL_BSP_*`.
    batching: export::Batching,
}

/// The first of the variables `names` that is set (and not empty).
fn var(names: &[&str]) -> Option<(String, String)> {
    names.iter().find_map(|name| {
        let value = std::env::var(name).ok()?;
        (!value.trim().is_empty()).then(|| (name.to_string(), value.trim().to_string()))
    })
}

impl Settings {
    /// Tracing as the `OTEL_*` variables set it, or `None` when no
    /// collector is named. A value the SDK would quietly replace by a
    /// default (an unknown sampler or protocol, a ratio out of range) is an
    /// error here: an operator who set it meant something.
    pub fn from_env() -> Result<Option<Self>> {
        if std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let Some((name, endpoint)) = var(&[
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]) else {
            return Ok(None);
        };
        let uri: hyper::Uri = endpoint
            .parse()
            .map_err(|err| anyhow!("{name}={endpoint}: not a URL: {err}"))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            bail!("{name}={endpoint}: expected an http:// or https:// URL of the collector");
        }
        let protocol = match var(&[
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]) {
            None => Protocol::HttpBinary,
            Some((_, value)) if value == "http/protobuf" => Protocol::HttpBinary,
            Some((_, value)) if value == "http/json" => Protocol::HttpJson,
            Some((name, value)) if value == "grpc" => bail!(
                "{name}=grpc: this server exports OTLP over HTTP; set http/protobuf and the collector's HTTP endpoint (port 4318)"
            ),
            Some((name, value)) => {
                bail!("{name}={value}: expected http/protobuf or http/json")
            }
        };
        let timeout = match var(&[
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]) {
            None => EXPORT_TIMEOUT,
            Some((name, value)) => Duration::from_millis(
                value
                    .parse()
                    .map_err(|_| anyhow!("{name}={value}: expected milliseconds"))?,
            ),
        };
        if let Some((name, sampler)) = var(&["OTEL_TRACES_SAMPLER"]) {
            if !SAMPLERS.contains(&sampler.as_str()) {
                bail!("{name}={sampler}: expected one of {}", SAMPLERS.join(", "));
            }
            if sampler.ends_with("traceidratio") {
                let ratio = var(&["OTEL_TRACES_SAMPLER_ARG"]).map(|(_, v)| v);
                if !ratio
                    .as_deref()
                    .and_then(|r| r.parse::<f64>().ok())
                    .is_some_and(|r| (0.0..=1.0).contains(&r))
                {
                    bail!(
                        "{name}={sampler} needs OTEL_TRACES_SAMPLER_ARG, a ratio from 0 to 1 (got {ratio:?})"
                    );
                }
            }
        }
        let propagators = match var(&["OTEL_PROPAGATORS"]) {
            None => vec!["tracecontext".to_string(), "baggage".to_string()],
            Some((name, list)) => {
                let list: Vec<String> = list.split(',').map(|p| p.trim().to_string()).collect();
                for propagator in &list {
                    if !["tracecontext", "baggage", "none"].contains(&propagator.as_str()) {
                        bail!(
                            "{name}: `{propagator}` is not supported; expected tracecontext, baggage or none"
                        );
                    }
                }
                list.into_iter().filter(|p| p != "none").collect()
            }
        };
        let certificate = var(&[
            "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
        ])
        .map(|(_, path)| PathBuf::from(path));
        Ok(Some(Self {
            protocol,
            timeout,
            certificate,
            propagators,
            batching: export::Batching::from_env()?,
        }))
    }
}

/// Whether requests are traced.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether trace context is taken from requests and put on outbound ones.
pub fn propagates() -> bool {
    PROPAGATE.load(Ordering::Relaxed)
}

/// Flushes the spans still queued when dropped, at exit.
pub struct Guard(SdkTracerProvider);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.shutdown_with_timeout(export::FLUSH_AT_EXIT);
    }
}

/// The layer that turns this server's spans into OpenTelemetry spans and
/// exports them as `settings` say, and the guard that flushes them at exit.
/// The layer sees only spans of [`TARGET`], and warnings and errors logged
/// inside them (as span events).
pub fn layer<S>(settings: Settings) -> Result<(impl Layer<S> + Send + Sync, Guard)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let extra_roots = match &settings.certificate {
        Some(path) => crate::http::tls::certificates(
            path,
            &format!("OTEL_EXPORTER_OTLP_CERTIFICATE {}", path.display()),
        )?,
        None => Vec::new(),
    };
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(settings.protocol)
        .with_timeout(settings.timeout)
        .with_http_client(export::client(settings.timeout, extra_roots))
        .build()
        .context("the OTLP trace exporter")?;
    let mut resource = Resource::builder();
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| a.contains("service.name="));
    if !named {
        resource = resource.with_service_name(env!("CARGO_PKG_NAME"));
    }
    let resource = resource.build();
    let queue = export::ExportQueue::start(exporter, &resource, settings.batching)?;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(queue)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));

    let propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = settings
        .propagators
        .iter()
        .map(|name| match name.as_str() {
            "tracecontext" => {
                Box::new(TraceContextPropagator::new()) as Box<dyn TextMapPropagator + Send + Sync>
            }
            _ => Box::new(BaggagePropagator::new()),
        })
        .collect();
    PROPAGATE.store(!propagators.is_empty(), Ordering::Relaxed);
    opentelemetry::global::set_text_map_propagator(TextMapCompositePropagator::new(propagators));
    ENABLED.store(true, Ordering::Relaxed);

    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_filter(filter_fn(traced));
    Ok((layer, Guard(provider)))
}

/// What the OpenTelemetry layer sees: this server's trace spans, and the
/// warnings and errors logged inside them.
fn traced(metadata: &Metadata<'_>) -> bool {
    metadata.target() == TARGET || (metadata.is_event() && *metadata.level() <= Level::WARN)
}
