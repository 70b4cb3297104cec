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
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("wasi_http_server");
        let by_class = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        // One handle per class, taken once: counting a request is then an
        // atomic add, without the family's lookup.
        let requests = ["1xx", "2xx", "3xx", "4xx", "5xx"]
            .map(|class| by_class.get_or_create(&vec![("class", class)]).clone());
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
            registry: Registry::default(),
        };
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
        if let Some(counter) = self.requests.get(usize::from(status / 100).wrapping_sub(1)) {
            counter.inc();
        }
        self.request_duration.observe(duration.as_secs_f64());
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

    pub fn stalled_connection(&self) {
        self.stalled_connections.inc();
    }
}

/// The metrics of several processes of one server (`--processes`) as one:
/// every sample of the first text with its value summed over all of them.
/// They come from the same binary, so they have the same samples in the same
/// order; comments (`# HELP`, `# TYPE`, `# EOF`) are the first's. Counters,
/// gauges and histogram buckets, sums and counts all add up this way.
pub fn sum(texts: &[String]) -> String {
    let mut others = std::collections::HashMap::<&str, Vec<&str>>::new();
    for text in texts.iter().skip(1) {
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            if let Some((name, value)) = line.rsplit_once(' ') {
                others.entry(name).or_default().push(value);
            }
        }
    }
    let mut out = String::new();
    for line in texts.first().map(String::as_str).unwrap_or("").lines() {
        match line.rsplit_once(' ').filter(|_| !line.starts_with('#')) {
            Some((name, value)) => {
                let values = std::iter::once(value)
                    .chain(others.get(name).into_iter().flatten().copied())
                    .collect::<Vec<_>>();
                out.push_str(name);
                out.push(' ');
                out.push_str(&add(&values));
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// `summed` (OpenMetrics text, or nothing) with the gauge
/// `wasi_http_server_serving_processes_up` set to `up`, before its `# EOF`.
pub fn with_processes_up(summed: String, up: usize) -> String {
    let mut text = summed;
    if let Some(end) = text.rfind("# EOF") {
        text.truncate(end);
    }
    text.push_str(
        "# HELP wasi_http_server_serving_processes_up Serving processes (--processes) \
         whose metrics are in this sum.\n\
         # TYPE wasi_http_server_serving_processes_up gauge\n",
    );
    text.push_str(&format!(
        "wasi_http_server_serving_processes_up {up}\n# EOF\n"
    ));
    text
}

/// Adds sample values: as integers when they all are (counts stay exact),
/// else as floats.
fn add(values: &[&str]) -> String {
    match values.iter().map(|value| value.parse::<i64>()).sum() {
        Ok(total) => i64::to_string(&total),
        Err(_) => values
            .iter()
            .map(|value| value.parse::<f64>().unwrap_or(f64::NAN))
            .sum::<f64>()
            .to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_of_every_kind() {
        let one = "# HELP x_requests Requests.\n# TYPE x_requests counter\n\
                   x_requests_total{class=\"2xx\"} 3\nx_in_flight 1\n\
                   x_seconds_sum 0.25\nx_seconds_bucket{le=\"+Inf\"} 3\n# EOF\n";
        let two = "# HELP x_requests Requests.\n# TYPE x_requests counter\n\
                   x_requests_total{class=\"2xx\"} 4\nx_in_flight 0\n\
                   x_seconds_sum 0.5\nx_seconds_bucket{le=\"+Inf\"} 4\n# EOF\n";
        assert_eq!(
            sum(&[one.to_string(), two.to_string()]),
            "# HELP x_requests Requests.\n# TYPE x_requests counter\n\
             x_requests_total{class=\"2xx\"} 7\nx_in_flight 1\n\
             x_seconds_sum 0.75\nx_seconds_bucket{le=\"+Inf\"} 7\n# EOF\n"
        );
    }

    /// The real thing: this process's own text, summed with itself, keeps
    /// every line and doubles every value.
    #[test]
    fn sums_this_processs_own_metrics() {
        METRICS.request(200, Duration::from_millis(3));
        let text = METRICS.encode();
        let doubled = sum(&[text.clone(), text.clone()]);
        assert_eq!(doubled.lines().count(), text.lines().count());
        assert!(doubled.ends_with("# EOF\n"));
        let line = |text: &str| {
            text.lines()
                .find(|line| line.starts_with("wasi_http_server_requests_total{class=\"2xx\"}"))
                .map(|line| line.rsplit_once(' ').unwrap().1.parse::<i64>().unwrap())
                .unwrap()
        };
        assert_eq!(line(&doubled), 2 * line(&text));
    }
}
