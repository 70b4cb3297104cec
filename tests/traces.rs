//! OpenTelemetry traces, received by a collector of our own that decodes
//! real OTLP (protobuf over HTTP): a request through two servers is one
//! trace, parented on the client's `traceparent`, each span with its HTTP
//! attributes; `OTEL_PROPAGATORS=none` keeps the context out; a collector
//! that is down or never answers costs the clients nothing and its losses
//! are counted; bad `OTEL_*` values fail the start.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::{Conn, Server, metric, run_to_exit_with_env};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

/// The client's trace context: trace `TRACE`, its span `PARENT`, sampled.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

/// A span as the collector got it, with its service's name.
#[derive(Debug, Clone)]
struct Got {
    service: String,
    name: String,
    kind: i32,
    trace: String,
    id: String,
    parent: String,
    attributes: HashMap<String, String>,
}

/// A collector on 127.0.0.1: takes OTLP/HTTP protobuf exports on
/// `/v1/traces` and keeps their spans; `answer: false` makes it one that
/// reads each export and never answers.
async fn collector(answer: bool) -> (SocketAddr, Arc<Mutex<Vec<Got>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let kept = kept.clone();
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let kept = kept.clone();
                    async move {
                        assert_eq!(request.uri().path(), "/v1/traces");
                        assert_eq!(request.headers()["content-type"], "application/x-protobuf");
                        let body = request.into_body().collect().await?.to_bytes();
                        let export =
                            ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                        kept.lock().unwrap().extend(spans_of(export));
                        if !answer {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, hyper::Error>(
                            hyper::Response::builder()
                                .header("content-type", "application/x-protobuf")
                                .body(Full::new(Bytes::new()))
                                .unwrap(),
                        )
                    }
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (addr, spans)
}

fn spans_of(export: ExportTraceServiceRequest) -> Vec<Got> {
    let mut got = Vec::new();
    for resource_spans in export.resource_spans {
        let resource = resource_spans.resource.unwrap_or_default();
        let service = attributes(&resource.attributes)
            .remove("service.name")
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                got.push(Got {
                    service: service.clone(),
                    name: span.name,
                    kind: span.kind,
                    trace: hex(&span.trace_id),
                    id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    got
}

fn attributes(
    list: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> HashMap<String, String> {
    list.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                Some(Value::BoolValue(b)) => b.to_string(),
                Some(Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The environment of a server exporting to `collector` as `service`,
/// with batches sent soon after their spans end.
fn otel_env(collector: SocketAddr, service: &str) -> Vec<(String, String)> {
    vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
            format!("http://{collector}"),
        ),
        ("OTEL_SERVICE_NAME".into(), service.into()),
        ("OTEL_BSP_SCHEDULE_DELAY".into(), "20".into()),
    ]
}

fn start(component: &str, args: &[&str], env: &[(String, String)]) -> Server {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Server::start_with_env(component, args, &env)
}

/// Waits until `spans` holds `count` spans; fails after a few seconds.
async fn at_least(spans: &Arc<Mutex<Vec<Got>>>, count: usize) -> Vec<Got> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = spans.lock().unwrap().clone();
        if got.len() >= count {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} spans: {got:#?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The one span of `service` named `name` of `kind`.
fn the<'a>(spans: &'a [Got], service: &str, name: &str, kind: SpanKind) -> &'a Got {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name && s.kind == kind as i32)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name} {kind:?} in {spans:#?}");
    found[0]
}

/// A request to server `a`, whose guest calls server `b`: one trace, the
/// client's, through both. `a`'s server span is the child of the client's
/// span and has the HTTP attributes; instantiation and the guest's call are
/// its children; the outbound call is a client span under the guest's
/// call, and `b`'s server span is the child of that.
#[tokio::test]
async fn a_request_through_two_servers_is_one_trace() {
    let (collector, spans) = collector(true).await;
    let b = start("hello", &[], &otel_env(collector, "b"));
    let allow = b.addr.to_string();
    let a = start(
        "testbed",
        &["--allow-outbound", &allow],
        &otel_env(collector, "a"),
    );
    let mut conn = Conn::http1(a.addr).await;
    let reply = traced_get(&mut conn, &format!("/outbound?authority={}", b.addr)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.text(), "Hello World\n");

    let spans = at_least(&spans, 7).await;
    assert!(spans.iter().all(|s| s.trace == TRACE), "{spans:#?}");
    let request = the(&spans, "a", "GET", SpanKind::Server);
    assert_eq!(request.parent, PARENT);
    for (key, value) in [
        ("http.request.method", "GET"),
        ("url.path", "/outbound"),
        ("url.scheme", "http"),
        ("http.response.status_code", "200"),
        ("network.protocol.version", "1.1"),
        ("client.address", "127.0.0.1"),
    ] {
        assert_eq!(
            request.attributes.get(key).map(String::as_str),
            Some(value),
            "{key} of {request:#?}"
        );
    }
    let instantiate = the(&spans, "a", "instantiate", SpanKind::Internal);
    let handle = the(&spans, "a", "handle", SpanKind::Internal);
    assert_eq!(instantiate.parent, request.id);
    assert_eq!(handle.parent, request.id);
    let outbound = the(&spans, "a", "GET", SpanKind::Client);
    assert_eq!(outbound.parent, handle.id);
    assert_eq!(
        outbound.attributes["url.full"],
        format!("http://{}/", b.addr)
    );
    assert_eq!(outbound.attributes["http.response.status_code"], "200");
    let served = the(&spans, "b", "GET", SpanKind::Server);
    assert_eq!(served.parent, outbound.id);
    assert_eq!(
        the(&spans, "b", "handle", SpanKind::Internal).parent,
        served.id
    );
}

/// `OTEL_PROPAGATORS=none`: the client's context is not taken, and none
/// goes out with the guest's request, so each server starts a trace of
/// its own.
#[tokio::test]
async fn propagation_can_be_turned_off() {
    let (collector, spans) = collector(true).await;
    let mut env = otel_env(collector, "b");
    env.push(("OTEL_PROPAGATORS".into(), "none".into()));
    let b = start("hello", &[], &env);
    let allow = b.addr.to_string();
    let mut env = otel_env(collector, "a");
    env.push(("OTEL_PROPAGATORS".into(), "none".into()));
    let a = start("testbed", &["--allow-outbound", &allow], &env);
    let mut conn = Conn::http1(a.addr).await;
    let reply = traced_get(&mut conn, &format!("/outbound?authority={}", b.addr)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let spans = at_least(&spans, 7).await;
    let request = the(&spans, "a", "GET", SpanKind::Server);
    assert_ne!(request.trace, TRACE);
    assert_eq!(request.parent, "");
    let served = the(&spans, "b", "GET", SpanKind::Server);
    assert_ne!(served.trace, request.trace);
    assert_eq!(served.parent, "");
}

/// A collector that takes exports and never answers, and one that is not
/// there: clients are answered as without tracing, each at once, and the
/// spans that could not be sent are counted as dropped.
#[tokio::test]
async fn a_collector_that_hangs_or_is_gone_costs_clients_nothing() {
    let (hanging, _) = collector(false).await;
    let gone = e2e::free_port();
    for endpoint in [hanging.to_string(), format!("127.0.0.1:{gone}")] {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{endpoint}")),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "8".into()),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4".into()),
            ("OTEL_BSP_SCHEDULE_DELAY", "10".into()),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "60000".into()),
        ];
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.into(), v)).collect();
        let server = start("hello", &["--admin-addr", "127.0.0.1:0"], &env);
        let mut conn = Conn::http1(server.addr).await;
        let started = Instant::now();
        for _ in 0..200 {
            let asked = Instant::now();
            let reply = conn.send("GET", "/", "").await;
            assert_eq!(reply.status, StatusCode::OK);
            assert!(
                asked.elapsed() < Duration::from_secs(1),
                "{endpoint}: answered after {:?}",
                asked.elapsed()
            );
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        let dropped = "wasi_http_server_trace_spans_dropped_total";
        let deadline = Instant::now() + Duration::from_secs(5);
        while metric(&server, dropped).await == 0.0 {
            assert!(
                Instant::now() < deadline,
                "{endpoint}: nothing counted as dropped"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            metric(&server, "wasi_http_server_trace_spans_exported_total").await,
            0.0
        );
    }
}

/// `OTEL_*` values the SDK would quietly replace with defaults fail the
/// start with one line naming the variable.
#[test]
fn bad_otel_settings_fail_the_start() {
    let component = e2e::component("hello");
    let component = component.to_str().unwrap();
    for (name, value, says) in [
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "grpc",
            "OTEL_EXPORTER_OTLP_PROTOCOL=grpc",
        ),
        (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "thrift",
            "expected http/protobuf or http/json",
        ),
        (
            "OTEL_TRACES_SAMPLER",
            "sometimes",
            "OTEL_TRACES_SAMPLER=sometimes",
        ),
        (
            "OTEL_TRACES_SAMPLER",
            "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ("OTEL_PROPAGATORS", "b3", "`b3` is not supported"),
        (
            "OTEL_BSP_MAX_QUEUE_SIZE",
            "lots",
            "OTEL_BSP_MAX_QUEUE_SIZE=lots",
        ),
    ] {
        let failed = run_to_exit_with_env(
            &[component],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
                (name, value),
            ],
        );
        let error = failed.the_error();
        assert!(error.contains(says), "{name}={value}: {error}");
    }
    let failed = run_to_exit_with_env(
        &[component],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318")],
    );
    assert!(
        failed
            .the_error()
            .contains("OTEL_EXPORTER_OTLP_ENDPOINT=collector:4318")
    );
}

/// A GET of `path` carrying the client's trace context.
async fn traced_get(conn: &mut Conn, path: &str) -> e2e::Reply {
    let request = hyper::Request::get(path)
        .header("host", "test.local")
        .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    conn.try_exchange(request).await.unwrap()
}

/// A key-value call is a client span of its own under the guest's call,
/// with the store's system, name and operation.
#[tokio::test]
async fn key_value_calls_are_spans() {
    let (collector, spans) = collector(true).await;
    let dir = e2e::temp_dir("traces-kv");
    let url = format!("sqlite:{}", dir.join("kv.sqlite3").display());
    let server = start(
        "state-guest",
        &["--keyvalue", &url],
        &otel_env(collector, "kv"),
    );
    let reply = Conn::http1(server.addr)
        .await
        .send("POST", "/set?key=k", "v")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let spans = at_least(&spans, 4).await;
    let handle = the(&spans, "kv", "handle", SpanKind::Internal);
    let set = the(&spans, "kv", "set", SpanKind::Client);
    assert_eq!(set.parent, handle.id);
    assert_eq!(set.attributes["db.system.name"], "sqlite");
    assert_eq!(set.attributes["db.namespace"], "default");
    assert_eq!(set.attributes["db.operation.name"], "set");
}

/// Guests of every kind and toolchain are traced alike: WASI 0.3, and the
/// JS and Python guests built by componentize-js and componentize-py.
#[tokio::test]
async fn guests_of_every_toolchain_are_traced() {
    for guest in ["hello-p3", "js-guest", "python-guest"] {
        let (collector, spans) = collector(true).await;
        let server = start(guest, &[], &otel_env(collector, guest));
        let mut conn = Conn::http1(server.addr).await;
        let reply = traced_get(&mut conn, "/").await;
        assert_eq!(reply.status, StatusCode::OK, "{guest}: {}", reply.text());
        let spans = at_least(&spans, 3).await;
        let request = the(&spans, guest, "GET", SpanKind::Server);
        assert_eq!(
            (request.trace.as_str(), request.parent.as_str()),
            (TRACE, PARENT)
        );
        for child in ["instantiate", "handle"] {
            let child = the(&spans, guest, child, SpanKind::Internal);
            assert_eq!(child.parent, request.id, "{guest}");
        }
    }
}
