//! The bridge's Prometheus metrics, rendered in the text exposition format
//! at `GET /metrics`. One registry per process ([`global`]).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, OnceLock};

/// Upper bounds (seconds) of the event→billed latency histogram.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Default)]
struct Inner {
    counters: BTreeMap<(&'static str, String), u64>,
    gauges: BTreeMap<(&'static str, String), i64>,
    latency: Histogram,
}

pub struct Metrics(Mutex<Inner>);

const HELP: &[(&str, &str, &str)] = &[
    (
        "billing_bridge_outbox_backlog",
        "gauge",
        "Outbox rows waiting to be produced to Kafka.",
    ),
    (
        "billing_bridge_relay_delivered_total",
        "counter",
        "Outbox rows the broker stored (and the relay deleted).",
    ),
    (
        "billing_bridge_relay_failed_total",
        "counter",
        "Outbox rows a round could not deliver; they stay for the next round.",
    ),
    (
        "billing_bridge_assigned_partitions",
        "gauge",
        "Partitions the consumer group has given this process now.",
    ),
    (
        "billing_bridge_consumer_lag",
        "gauge",
        "Messages behind the end of each partition this process consumes.",
    ),
    (
        "billing_bridge_events_total",
        "counter",
        "Consumed events by topic and outcome (billed, duplicate, dead_letter).",
    ),
    (
        "billing_bridge_dead_letters_total",
        "counter",
        "Events sent to dead-letter, by reason.",
    ),
    (
        "billing_bridge_redis_errors_total",
        "counter",
        "Failed Redis operations (retried).",
    ),
    (
        "billing_bridge_sqlite_errors_total",
        "counter",
        "Failed SQLite transactions (retried).",
    ),
    (
        "billing_bridge_kafka_errors_total",
        "counter",
        "Failed Kafka receives or produces (retried).",
    ),
    (
        "billing_bridge_sse_clients",
        "gauge",
        "Open live-update (SSE) connections.",
    ),
    (
        "billing_bridge_second_stage_backlog_facts",
        "gauge",
        "Facts of batches written to SQLite still waiting for the Redis aggregates and processed-events (grows while Redis is away).",
    ),
    (
        "billing_bridge_revocations_total",
        "counter",
        "Partition revocations, by group and whether the queued second stages finished before the partitions went.",
    ),
    (
        "billing_bridge_consumer_fatal_total",
        "counter",
        "Fatal Kafka consumer errors, by whether a new client rejoined (fenced, within the budget) or the consumer stopped.",
    ),
];

pub fn global() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(|| Metrics(Mutex::new(Inner::default())))
}

/// Labels as Prometheus renders them: `{a="x",b="y"}`.
pub fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}=\"{}\"",
                v.replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n")
            )
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Metrics {
    pub fn inc(&self, name: &'static str, labels: String, by: u64) {
        *self
            .0
            .lock()
            .unwrap()
            .counters
            .entry((name, labels))
            .or_default() += by;
    }

    pub fn set(&self, name: &'static str, labels: String, v: i64) {
        self.0.lock().unwrap().gauges.insert((name, labels), v);
    }

    pub fn add(&self, name: &'static str, labels: String, by: i64) {
        *self
            .0
            .lock()
            .unwrap()
            .gauges
            .entry((name, labels))
            .or_default() += by;
    }

    /// Records one event→billed latency.
    pub fn observe_latency(&self, seconds: f64) {
        let mut m = self.0.lock().unwrap();
        let h = &mut m.latency;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The counter's value, for tests and logs.
    pub fn counter(&self, name: &'static str, labels: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .counters
            .get(&(name, labels.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let m = self.0.lock().unwrap();
        let mut out = String::new();
        for (name, kind, help) in HELP {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            let series: Vec<(String, String)> = if *kind == "counter" {
                m.counters
                    .iter()
                    .filter(|((n, _), _)| n == name)
                    .map(|((_, l), v)| (l.clone(), v.to_string()))
                    .collect()
            } else {
                m.gauges
                    .iter()
                    .filter(|((n, _), _)| n == name)
                    .map(|((_, l), v)| (l.clone(), v.to_string()))
                    .collect()
            };
            for (l, v) in series {
                let _ = writeln!(out, "{name}{l} {v}");
            }
        }
        let name = "billing_bridge_event_billed_latency_seconds";
        let _ = writeln!(out, "# HELP {name} From an event's time to its line items and aggregates being written.\n# TYPE {name} histogram");
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", m.latency.counts[i]);
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
            m.latency.count, m.latency.sum, m.latency.count
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The text format: HELP/TYPE lines, labelled series, cumulative histogram buckets.
    #[test]
    fn renders_prometheus_text() {
        let m = Metrics(Mutex::new(Inner::default()));
        m.inc(
            "billing_bridge_dead_letters_total",
            labels(&[("reason", "unknown_model")]),
            2,
        );
        m.set("billing_bridge_outbox_backlog", String::new(), 7);
        m.observe_latency(0.2);
        m.observe_latency(3.0);
        let text = m.render();
        assert!(
            text.contains("billing_bridge_dead_letters_total{reason=\"unknown_model\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("billing_bridge_outbox_backlog 7\n"));
        assert!(
            text.contains("billing_bridge_event_billed_latency_seconds_bucket{le=\"0.25\"} 1\n")
        );
        assert!(text.contains("billing_bridge_event_billed_latency_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("billing_bridge_event_billed_latency_seconds_count 2\n"));
    }
}

#[cfg(test)]
mod help_tests {
    // Every metric the bridge's sources name is rendered: `render` writes
    // only the names in HELP, so a name missing there is counted in
    // memory and never seen on /metrics.
    #[test]
    fn every_metric_named_in_the_sources_has_help() {
        // Every source file of the crate, read now: a new file is covered too.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let sources: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        let mut named = Vec::new();
        for text in &sources {
            for piece in text.split("\"billing_bridge_").skip(1) {
                let name: String = piece
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                // This test's own pattern names no metric.
                if !name.is_empty() {
                    named.push(format!("billing_bridge_{name}"));
                }
            }
        }
        assert!(
            named.len() > 10,
            "the sources name their metrics: {named:?}"
        );
        for name in named {
            if name.starts_with("billing_bridge_event_billed_latency_seconds") {
                continue; // the histogram and its series, rendered on their own
            }
            assert!(
                super::HELP.iter().any(|(n, _, _)| *n == name),
                "{name} is counted but has no HELP entry, so /metrics never shows it"
            );
        }
    }
}
