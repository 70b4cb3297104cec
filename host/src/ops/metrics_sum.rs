//! The metrics of several processes of one server (`--processes`) as one
//! text, for the supervisor's admin endpoint.

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
    use crate::metrics::METRICS;
    use std::time::Duration;

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
