//! The spans of a request, with the attributes OpenTelemetry's HTTP and
//! database semantic conventions give them. With tracing off each is
//! `Span::none()`, made without reading the request.

use std::net::SocketAddr;

use hyper::header::{HOST, USER_AGENT};
use hyper::http::uri::Authority;
use hyper::{Request, StatusCode, Version};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{TARGET, enabled, propagates};

/// The server span of `request`, from client `peer`: a child of the trace
/// context the client sent, if propagation is on.
pub fn server<B>(request: &Request<B>, peer: SocketAddr, https: bool) -> Span {
    if !enabled() {
        return Span::none();
    }
    let method = request.method().as_str();
    let uri = request.uri();
    let authority = uri.authority().cloned().or_else(|| {
        let host = request.headers().get(HOST)?.to_str().ok()?;
        host.parse::<Authority>().ok()
    });
    let span = tracing::info_span!(
        target: TARGET,
        "request",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.response.status_code = Empty,
        http.route = Empty,
        url.scheme = if https { "https" } else { "http" },
        url.path = uri.path(),
        url.query = uri.query(),
        server.address = authority.as_ref().map(Authority::host),
        server.port = authority.as_ref().and_then(Authority::port_u16),
        client.address = %peer.ip(),
        client.port = peer.port(),
        network.protocol.version = protocol(request.version()),
        user_agent.original = request.headers().get(USER_AGENT).and_then(|v| v.to_str().ok()),
        error.type = Empty,
    );
    if propagates() {
        let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let _ = span.set_parent(parent);
    }
    span
}

/// Records the status the client was sent, and the application's route
/// that answered, if any; a 5xx marks the span failed.
pub fn respond(span: &Span, status: StatusCode, route: Option<&str>) {
    if span.is_none() {
        return;
    }
    span.record("http.response.status_code", status.as_u16());
    if let Some(route) = route {
        span.record("http.route", route);
    }
    if status.is_server_error() {
        span.record("otel.status_code", "error");
        span.record("error.type", status.as_str());
    }
}

/// The instantiation of the request's component.
pub fn instantiate() -> Span {
    tracing::info_span!(target: TARGET, "instantiate")
}

/// The guest's handler, from its call to its return.
pub fn handle() -> Span {
    tracing::info_span!(target: TARGET, "handle")
}

/// One key-value call: `operation` on the store `store`, a `system` one
/// (`sqlite`, `redis`).
pub fn keyvalue(operation: &'static str, store: &str, system: &'static str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "keyvalue",
        otel.name = operation,
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        db.system.name = system,
        db.namespace = store,
        db.operation.name = operation,
        error.type = Empty,
    )
}

/// Marks `span` failed, for `reason`.
pub fn failed(span: &Span, reason: &str) {
    if span.is_none() {
        return;
    }
    span.record("otel.status_code", "error");
    span.record("otel.status_description", reason);
    span.record("error.type", "error");
}

/// A guest's outbound request, as a client span; with propagation on, the
/// request carries this span as its parent (`traceparent`, replacing any
/// the guest set: the trace goes through this server).
pub fn outbound<B>(request: &mut Request<B>) -> Span {
    if !enabled() {
        return Span::none();
    }
    let method = request.method().as_str();
    let uri = request.uri();
    let port = uri.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    });
    let span = tracing::info_span!(
        target: TARGET,
        "outbound",
        otel.name = method,
        otel.kind = "client",
        otel.status_code = Empty,
        otel.status_description = Empty,
        http.request.method = method,
        http.response.status_code = Empty,
        url.full = %uri,
        server.address = uri.host(),
        server.port = port,
        error.type = Empty,
    );
    if propagates() {
        let context = span.context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(request.headers_mut()))
        });
    }
    span
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}
