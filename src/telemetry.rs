//! Logs (tracing, text or JSON) and metrics (Prometheus text format). Labels are fixed small sets: no ids, no URLs.

use crate::config::{Config, LogFormat};
use crate::store::Counters;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicI64;

/// Starts logging to stderr as `log.level` and `log.format` say. Call once per process.
pub fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // A log line that cannot be written (stderr redirected to a file on a full disk) is dropped.
    // With internal errors on, tracing-subscriber reports it with `eprintln!`, which panics when
    // stderr fails: the thread that logged (the store writer, reporting the full disk) would die.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    let result = match config.log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    // A second call (tests start several daemons in one process) keeps the first subscriber.
    drop(result);
}

/// The metrics the daemon keeps as it works; the store's counters are added when rendering.
#[derive(Debug)]
pub struct Metrics {
    pub events_received: Counter,
    /// Attempts by status class: 2xx, 3xx, 4xx, 5xx, or error (no response).
    pub attempts: Family<Vec<(String, String)>, Counter>,
    /// Attempt duration in seconds, connect to response head.
    pub attempt_seconds: Histogram,
    pub storage_bytes: Gauge<i64, AtomicI64>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            events_received: Counter::default(),
            attempts: Family::default(),
            attempt_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            storage_bytes: Gauge::default(),
        }
    }
}

impl Metrics {
    pub fn record_attempt(&self, status_code: Option<u16>, seconds: f64) {
        let class = match status_code {
            Some(c) => format!("{}xx", c / 100),
            None => "error".to_string(),
        };
        self.attempts
            .get_or_create(&vec![("class".to_string(), class)])
            .inc();
        self.attempt_seconds.observe(seconds);
    }

    /// The Prometheus text exposition of everything.
    /// `retrying_in_flight`: attempts under way of deliveries that failed before (left out of `retrying`).
    pub fn render(&self, c: &Counters, in_flight: usize, retrying_in_flight: usize) -> String {
        let mut r = Registry::with_prefix("preflix_webhookd");
        r.register(
            "events_received",
            "Events accepted by ingest (duplicates included)",
            self.events_received.clone(),
        );
        r.register(
            "events_stored",
            "Events stored",
            ConstCounter::new(c.events),
        );
        let outcomes: Family<Vec<(String, String)>, Counter> = Family::default();
        for (name, v) in [
            ("succeeded", c.deliveries_succeeded),
            ("dead", c.deliveries_dead),
            ("cancelled", c.deliveries_cancelled),
        ] {
            outcomes
                .get_or_create(&vec![("outcome".to_string(), name.to_string())])
                .inc_by(v);
        }
        r.register(
            "deliveries",
            "Deliveries that reached a final outcome",
            outcomes,
        );
        r.register(
            "deliveries_created",
            "Deliveries created",
            ConstCounter::new(c.deliveries_created),
        );
        r.register(
            "attempts",
            "Delivery attempts by status class",
            self.attempts.clone(),
        );
        r.register(
            "attempt_duration_seconds",
            "Attempt latency",
            self.attempt_seconds.clone(),
        );
        r.register(
            "queue_pending",
            "Deliveries waiting for an attempt",
            ConstGauge::new(c.pending.saturating_sub(in_flight as u64) as i64),
        );
        r.register(
            "queue_retrying",
            "Pending deliveries that failed at least once",
            ConstGauge::new(
                c.retrying
                    .saturating_sub(retrying_in_flight as u64)
                    .min(c.pending.saturating_sub(in_flight as u64)) as i64,
            ),
        );
        r.register(
            "queue_in_flight",
            "Attempts under way",
            ConstGauge::new(in_flight as i64),
        );
        r.register(
            "dead_letters",
            "Dead letters waiting for an operator",
            ConstGauge::new(c.dead_letters as i64),
        );
        r.register(
            "storage_bytes",
            "Bytes the store occupies on disk",
            self.storage_bytes.clone(),
        );
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String does not fail");
        out
    }
}
