//! The server's metrics, in the OpenMetrics text format Prometheus scrapes,
//! on the admin endpoint.
//!
//! One set per process, like the process itself: a static keeps the request
//! path free of reference counting, and every update is an atomic operation.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by status class (1xx..5xx), indexed by class - 1.
    requests: [Counter; 5],
    request_duration: Histogram,
    instantiation_duration: Histogram,
    instances_in_flight: Gauge,
    traps: Counter,
    timeouts: Counter,
    memory_limit_hits: Counter,
    outbound_denied: Counter,
    evicted: Counter,
    stalled_connections: Counter,
    spans_exported: Counter,
    spans_dropped: Counter,
    /// An application's requests, by component, route and status class.
    by_route: Family<Vec<(&'static str, String)>, Counter>,
}

/// One route of an application: its own request counts, and the names its
/// access-log lines give.
pub struct Served {
    pub component: String,
    pub route: String,
    /// By status class (1xx..5xx), indexed by class - 1.
    requests: [Counter; 5],
}

impl Served {
    pub fn request(&self, status: u16) {
        if let Some(counter) = class_counter(&self.requests, status) {
            counter.inc();
        }
    }
}

/// The counter of `status`'s class; none for a status past 5xx.
fn class_counter(counters: &[Counter; 5], status: u16) -> Option<&Counter> {
    counters.get(usize::from(status / 100).wrapping_sub(1))
}

/// The status classes requests are counted by.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("wasi_http_server");
        let by_class = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        // One handle per class, taken once: counting a request is then an
        // atomic add, without the family's lookup.
        let requests = CLASSES.map(|class| by_class.get_or_create(&vec![("class", class)]).clone());
        registry.register("requests", "Requests answered, by status class", by_class);
        // 10 us to about 40 s: hello takes tens of microseconds, a guest at
        // its deadline takes `--request-timeout`.
        let request_duration = Histogram::new(exponential_buckets(1e-5, 4.0, 12));
        // 1 us to about 1 s.
        let instantiation_duration = Histogram::new(exponential_buckets(1e-6, 4.0, 11));
        let metrics = Self {
            requests,
            request_duration,
            instantiation_duration,
            instances_in_flight: Gauge::default(),
            traps: Counter::default(),
            timeouts: Counter::default(),
            memory_limit_hits: Counter::default(),
            outbound_denied: Counter::default(),
            evicted: Counter::default(),
            stalled_connections: Counter::default(),
            spans_exported: Counter::default(),
            spans_dropped: Counter::default(),
            by_route: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "route_requests",
            "Requests answered by an application's routes, by component, route and status class",
            metrics.by_route.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to the end of its response body",
            metrics.request_duration.clone(),
        );
        registry.register(
            "instantiation_duration_seconds",
            "Time to instantiate the component for one request",
            metrics.instantiation_duration.clone(),
        );
        registry.register(
            "instances_in_flight",
            "Instances alive now, one per request being served",
            metrics.instances_in_flight.clone(),
        );
        for (name, help, counter) in [
            (
                "guest_traps",
                "Guest calls that trapped or failed",
                &metrics.traps,
            ),
            (
                "guest_timeouts",
                "Guests stopped at --request-timeout",
                &metrics.timeouts,
            ),
            (
                "memory_limit_hits",
                "Memory growths refused at --max-memory",
                &metrics.memory_limit_hits,
            ),
            (
                "outbound_denied",
                "Outbound HTTP requests denied (see --allow-outbound)",
                &metrics.outbound_denied,
            ),
            (
                "stalled_responses_evicted",
                "Responses cut off, their instance freed, because their client stopped reading while others waited for a slot",
                &metrics.evicted,
            ),
            (
                "stalled_connections_closed",
                "Connections closed because their client took nothing for --write-timeout",
                &metrics.stalled_connections,
            ),
            (
                "trace_spans_exported",
                "Trace spans the OpenTelemetry collector accepted",
                &metrics.spans_exported,
            ),
            (
                "trace_spans_dropped",
                "Trace spans lost: the export queue was full, or the collector failed or timed out",
                &metrics.spans_dropped,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// Everything, in the OpenMetrics text format that Prometheus scrapes.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }

    pub fn request(&self, status: u16, duration: Duration) {
        if let Some(counter) = class_counter(&self.requests, status) {
            counter.inc();
        }
        self.request_duration.observe(duration.as_secs_f64());
    }

    /// The counts of `route`, served by `component`: created at load, so
    /// every serving process has the same samples (see `ops::metrics_sum`)
    /// and a request only adds to a counter it holds.
    pub fn route(&self, component: &str, route: &str) -> Served {
        let requests = CLASSES.map(|class| {
            let labels = vec![
                ("component", component.to_string()),
                ("route", route.to_string()),
                ("class", class.to_string()),
            ];
            self.by_route.get_or_create(&labels).clone()
        });
        Served {
            component: component.to_string(),
            route: route.to_string(),
            requests,
        }
    }

    pub fn instantiated(&self, duration: Duration) {
        self.instantiation_duration.observe(duration.as_secs_f64());
    }

    pub fn instance_started(&self) {
        self.instances_in_flight.inc();
    }

    pub fn instance_ended(&self) {
        self.instances_in_flight.dec();
    }

    pub fn trap(&self) {
        self.traps.inc();
    }

    pub fn timeout(&self) {
        self.timeouts.inc();
    }

    pub fn memory_limit_hit(&self) {
        self.memory_limit_hits.inc();
    }

    pub fn outbound_denied(&self) {
        self.outbound_denied.inc();
    }

    pub fn evicted(&self) {
        self.evicted.inc();
    }

    pub fn spans_exported(&self, spans: usize) {
        self.spans_exported.inc_by(spans as u64);
    }

    pub fn spans_dropped(&self, spans: usize) {
        self.spans_dropped.inc_by(spans as u64);
    }

    pub fn stalled_connection(&self) {
        self.stalled_connections.inc();
    }
}
