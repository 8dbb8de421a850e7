//! The metrics every event records: their Prometheus names and help texts, and the recorder
//! they go to (Prometheus' text format for `/metrics`, and a tally of the same counters that
//! the dashboard's time series are sampled from).
//!
//! Responsible for: building and installing the recorder, naming and describing the metrics,
//! and reading the counters back. Not responsible for: serving them over HTTP (`web`), or
//! deciding what is counted (each [`super::Event`] says that).

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use metrics_util::layers::{Fanout, FanoutBuilder};
use metrics_util::registry::{AtomicStorage, Registry};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Histogram buckets for latencies, in seconds (probes and deliveries: milliseconds on a LAN
/// up to the 5-minute SMTP data timeout).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

/// Every metric: name, kind, help.
const DESCRIBED: &[(&str, Kind, &str)] = &[
    (
        "backstop_connections_total",
        Kind::Counter,
        "SMTP connections opened by clients",
    ),
    (
        "backstop_connections_refused_total",
        Kind::Counter,
        "Connections refused before the greeting, by reason (harvest block, connection limits)",
    ),
    (
        "backstop_rcpt_total",
        Kind::Counter,
        "RCPT TO answers, by result (accepted, deferred, refused) and reason",
    ),
    (
        "backstop_messages_total",
        Kind::Counter,
        "Messages at the end of DATA, by result (accepted, deferred, refused) and reason",
    ),
    (
        "backstop_callout_probes_total",
        Kind::Counter,
        "Call-out probes to internal servers, by outcome (valid, invalid, failed)",
    ),
    (
        "backstop_callout_probe_seconds",
        Kind::Histogram,
        "Call-out probe latency",
    ),
    (
        "backstop_callout_cache_total",
        Kind::Counter,
        "Call-out cache lookups, by result (hit, stale, miss)",
    ),
    (
        "backstop_delivery_tls_total",
        Kind::Counter,
        "Delivery connections by TLS outcome (verified, encrypted, plaintext; policy_failed: a route's tls or an MTA-STS policy not met, the mail deferred)",
    ),
    (
        "backstop_dkim_messages_total",
        Kind::Counter,
        "Messages leaving through us with a DKIM key for their domain, by result (signed, already_signed: carried a valid signature of ours, failed: sent unsigned)",
    ),
    (
        "backstop_dkim_signatures_total",
        Kind::Counter,
        "DKIM signatures made, by algorithm (rsa, ed25519)",
    ),
    (
        "backstop_directory_searches_total",
        Kind::Counter,
        "Directory (ldap:) searches, by directory and outcome (valid: an entry, invalid: none, failed)",
    ),
    (
        "backstop_directory_search_seconds",
        Kind::Histogram,
        "Directory search latency",
    ),
    (
        "backstop_directory_cache_total",
        Kind::Counter,
        "Lookups of cached directory answers, by result (hit, stale, miss)",
    ),
    (
        "backstop_directory_up",
        Kind::Gauge,
        "1 while the directory answers (health checks and searches), 0 while it does not",
    ),
    (
        "backstop_callout_corrections_total",
        Kind::Counter,
        "Call-out cache entries corrected by what the internal server said in relay or delivery, by new verdict (to) and where (by)",
    ),
    (
        "backstop_callout_budget_exceeded_total",
        Kind::Counter,
        "Probes not made because the probe budget was spent",
    ),
    (
        "backstop_delivery_attempts_total",
        Kind::Counter,
        "Queued recipients tried, by result (delivered, deferred, failed, expired)",
    ),
    (
        "backstop_delivery_seconds",
        Kind::Histogram,
        "Delivery attempt latency",
    ),
    (
        "backstop_reports_sent_total",
        Kind::Counter,
        "Delivery reports sent, by kind",
    ),
    (
        "backstop_reports_suppressed_total",
        Kind::Counter,
        "Delivery reports not sent, by why (untrusted or null sender, budgets, NOTIFY, limit)",
    ),
    (
        "backstop_batv_total",
        Kind::Counter,
        "BATV checks of bounce recipients, by result (valid, missing, expired, invalid)",
    ),
    (
        "backstop_bounces_refused_total",
        Kind::Counter,
        "Bounces refused (at RCPT, DATA or end of DATA), by reason",
    ),
    (
        "backstop_bounce_verdicts_total",
        Kind::Counter,
        "Verdicts on incoming bounces, by verdict (genuine, backscatter) and action",
    ),
    (
        "backstop_harvest_cutoffs_total",
        Kind::Counter,
        "Sessions closed for too many unknown recipients",
    ),
    (
        "backstop_clients_blocked_total",
        Kind::Counter,
        "Clients or networks blocked for unknown recipients",
    ),
    (
        "backstop_outbound_limited_total",
        Kind::Counter,
        "Outbound recipients refused over an [outbound] limit",
    ),
    (
        "backstop_alerts_total",
        Kind::Counter,
        "Alerts raised, by kind",
    ),
    (
        "backstop_dnsbl_listed",
        Kind::Gauge,
        "1 when the IP is listed in the DNSBL zone at the last check, 0 when not",
    ),
    (
        "backstop_queue_messages",
        Kind::Gauge,
        "Messages in the queue, by state (active, held)",
    ),
    (
        "backstop_queue_recipients",
        Kind::Gauge,
        "Queued recipients, by status (queued, deferred, failed)",
    ),
    (
        "backstop_senders_held",
        Kind::Gauge,
        "Local senders held by the sender watch",
    ),
    (
        "backstop_clients_blocked",
        Kind::Gauge,
        "Clients and networks blocked now",
    ),
    (
        "backstop_store_degraded",
        Kind::Gauge,
        "1 while the shared store (Redis) is unreachable and this node runs on its fallback",
    ),
    (
        "backstop_callout_backend_up",
        Kind::Gauge,
        "1 while the call-out server answers (health checks and probes), 0 while it does not",
    ),
    (
        "backstop_next_hop_up",
        Kind::Gauge,
        "1 while the next hop answers (health checks and relayed mail), 0 while it does not",
    ),
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The counters and gauges as recorded (histograms are left to Prometheus), read back for
/// the dashboard and the JSON API.
pub struct Tally {
    registry: Arc<Registry<Key, AtomicStorage>>,
}

/// One counter's value: its name, its labels, its value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reading {
    /// The metric's name.
    pub name: String,
    /// Its labels, in the order recorded.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: u64,
}

impl Reading {
    /// The value of label `l` ("" when absent).
    pub fn label(&self, l: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == l)
            .map_or("", |(_, v)| v.as_str())
    }
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            registry: Arc::new(Registry::atomic()),
        }
    }
}

impl Tally {
    /// Every counter now, sorted by name and labels.
    pub fn counters(&self) -> Vec<Reading> {
        let mut out = Vec::new();
        self.registry.visit_counters(|key, c| {
            out.push(reading(key, c.load(Ordering::Relaxed)));
        });
        out.sort();
        out
    }

    /// Every gauge now (values rounded to whole numbers), sorted by name and labels.
    pub fn gauges(&self) -> Vec<Reading> {
        let mut out = Vec::new();
        self.registry.visit_gauges(|key, g| {
            let v = f64::from_bits(g.load(Ordering::Relaxed));
            out.push(reading(key, v.max(0.0).round() as u64));
        });
        out.sort();
        out
    }
}

fn reading(key: &Key, value: u64) -> Reading {
    Reading {
        name: key.name().to_string(),
        labels: key
            .labels()
            .map(|l| (l.key().to_string(), l.value().to_string()))
            .collect(),
        value,
    }
}

struct TallyRecorder(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for TallyRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0
            .get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0
            .get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The recorder and what reads it: Prometheus' text, and the tally.
#[derive(Clone)]
pub struct Metrics {
    recorder: &'static Fanout,
    prometheus: PrometheusHandle,
    tally: Arc<Tally>,
}

/// The [`Fanout`] shared by the global recorder and [`Metrics`] (it is `Sync` but not `Send`,
/// so it is shared by a `'static` reference: one per [`Metrics::new`], made once per process
/// outside tests).
struct Shared(&'static Fanout);

impl Recorder for Shared {
    fn describe_counter(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.0.describe_counter(k, u, d)
    }
    fn describe_gauge(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.0.describe_gauge(k, u, d)
    }
    fn describe_histogram(&self, k: KeyName, u: Option<Unit>, d: SharedString) {
        self.0.describe_histogram(k, u, d)
    }
    fn register_counter(&self, key: &Key, m: &Metadata<'_>) -> Counter {
        self.0.register_counter(key, m)
    }
    fn register_gauge(&self, key: &Key, m: &Metadata<'_>) -> Gauge {
        self.0.register_gauge(key, m)
    }
    fn register_histogram(&self, key: &Key, m: &Metadata<'_>) -> Histogram {
        self.0.register_histogram(key, m)
    }
}

impl Metrics {
    /// A new recorder with every metric described and the usual label sets at zero (so a
    /// scrape shows them before the first event). Not installed: see [`Metrics::install`].
    pub fn new() -> Metrics {
        let prometheus = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("latency buckets are not empty")
            .build_recorder();
        let handle = prometheus.handle();
        let tally = Arc::new(Tally::default());
        let recorder: &'static Fanout = Box::leak(Box::new(
            FanoutBuilder::default()
                .add_recorder(prometheus)
                .add_recorder(TallyRecorder(tally.registry.clone()))
                .build(),
        ));
        let m = Metrics {
            recorder,
            prometheus: handle,
            tally,
        };
        m.with(describe);
        m
    }

    /// A recorder installed as the process's global one (for `serve`); the first call
    /// installs, later calls return `None`.
    pub fn install() -> Option<Metrics> {
        let m = Metrics::new();
        metrics::set_global_recorder(Shared(m.recorder)).ok()?;
        Some(m)
    }

    /// Runs `f` with this recorder as the thread's (tests; gauges set at scrape time).
    pub fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(self.recorder, f)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.prometheus.render()
    }

    /// Housekeeping the exporter needs now and then (call every minute or so).
    pub fn upkeep(&self) {
        self.prometheus.run_upkeep();
    }

    /// The counters and gauges, read back.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn describe() {
    for (name, kind, help) in DESCRIBED {
        let (name, help) = (*name, *help);
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, Unit::Seconds, help),
        }
    }
    metrics::counter!("backstop_connections_total").absolute(0);
    metrics::counter!("backstop_rcpt_total", "result" => "accepted", "reason" => "listed")
        .absolute(0);
    metrics::counter!("backstop_rcpt_total", "result" => "refused", "reason" => "not-listed")
        .absolute(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grafana_dashboard_asks_only_for_metrics_that_exist() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../contrib/grafana/backstop.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut exprs = Vec::new();
        collect_exprs(&v, &mut exprs);
        assert!(exprs.len() > 20, "{}", exprs.len());
        let known = |name: &str| {
            DESCRIBED.iter().any(|(n, kind, _)| {
                name == *n
                    || matches!(kind, Kind::Histogram)
                        && ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name == format!("{n}{s}"))
            })
        };
        let mut used = std::collections::BTreeSet::new();
        for e in &exprs {
            for (i, _) in e.match_indices("backstop_") {
                let name: String = e[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                assert!(known(&name), "{name} in {e}");
                used.insert(name);
            }
        }
        for (n, kind, _) in DESCRIBED {
            let n = match kind {
                Kind::Histogram => format!("{n}_bucket"),
                Kind::Counter | Kind::Gauge => n.to_string(),
            };
            assert!(used.contains(&n), "the dashboard has no panel for {n}");
        }
    }

    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v.as_str()) {
                        ("expr", Some(e)) => out.push(e.to_string()),
                        _ => collect_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn counters_reach_both_prometheus_and_the_tally() {
        let m = Metrics::new();
        m.with(|| {
            metrics::counter!("backstop_rcpt_total", "result" => "refused", "reason" => "x")
                .increment(3);
            metrics::gauge!("backstop_senders_held").set(2.0);
            metrics::histogram!("backstop_delivery_seconds").record(0.2);
        });
        let text = m.render();
        assert!(
            text.contains("backstop_rcpt_total{result=\"refused\",reason=\"x\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE backstop_delivery_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("backstop_delivery_seconds_bucket{le=\"0.25\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("# HELP backstop_rcpt_total RCPT TO answers"),
            "{text}"
        );
        let c = m.tally().counters();
        let x = c.iter().find(|r| r.label("reason") == "x").unwrap();
        assert_eq!((x.name.as_str(), x.value), ("backstop_rcpt_total", 3));
        let g = m.tally().gauges();
        assert_eq!(g[0].name, "backstop_senders_held");
        assert_eq!(g[0].value, 2);
    }
}
