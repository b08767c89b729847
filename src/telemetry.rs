//! Logs (tracing, text or JSON) and metrics (Prometheus text format or OpenMetrics). Labels are fixed small sets: no ids, no URLs.

use crate::config::{Config, LogFormat};
use crate::store::Counters;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicI64, AtomicU64};

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

/// The figures read at the moment of a scrape.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub counters: Counters,
    pub in_flight: usize,
    /// Attempts under way of deliveries that failed before (left out of `retrying`).
    pub retrying_in_flight: usize,
    pub oldest_pending_age_seconds: f64,
    pub scheduler_idle_seconds: f64,
}

/// One endpoint's attempts over the last 24 hours, from the store's hourly figures (`crate::stats`).
#[derive(Debug, Clone)]
pub struct EndpointFigures {
    pub endpoint_id: String,
    pub succeeded: u64,
    pub failed: u64,
    pub p50_ms: u32,
    pub p95_ms: u32,
}

/// The most endpoints `/metrics` shows figures for (the lowest-numbered, that is the oldest): the
/// label set stays bounded however many endpoints there are. The rest are counted in
/// `endpoint_stats_omitted`; `GET /v1/endpoints/{id}/stats` has every endpoint's.
pub const MAX_ENDPOINT_METRICS: usize = 200;

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

    /// The OpenMetrics exposition of everything ([`to_prometheus_text`] gives the classic format).
    pub fn render(&self, now: &Snapshot) -> String {
        self.render_with(now, &[], 0)
    }

    /// [`Metrics::render`], with per-endpoint figures (at most [`MAX_ENDPOINT_METRICS`], labelled
    /// by endpoint id alone) and the number of endpoints left out.
    pub fn render_with(
        &self,
        now: &Snapshot,
        endpoints: &[EndpointFigures],
        omitted: usize,
    ) -> String {
        let c = &now.counters;
        let in_flight = now.in_flight;
        let retrying_in_flight = now.retrying_in_flight;
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
        r.register(
            "oldest_pending_age_seconds",
            "Seconds since the oldest pending delivery became pending (0 when none is)",
            ConstGauge::new(now.oldest_pending_age_seconds),
        );
        r.register(
            "scheduler_last_run_age_seconds",
            "Seconds since the scheduler last went round its loop (it does at least once a second)",
            ConstGauge::new(now.scheduler_idle_seconds),
        );
        register_endpoint_figures(&mut r, endpoints, omitted);
        let mut out = String::new();
        encode(&mut out, &r).expect("writing to a String does not fail");
        out
    }
}

/// The per-endpoint families: one label, `endpoint_id`, on at most [`MAX_ENDPOINT_METRICS`] endpoints.
fn register_endpoint_figures(r: &mut Registry, endpoints: &[EndpointFigures], omitted: usize) {
    type Figures = Family<Vec<(String, String)>, Gauge<f64, AtomicU64>>;
    let (succeeded, failed, p50, p95) = (
        Figures::default(),
        Figures::default(),
        Figures::default(),
        Figures::default(),
    );
    for ep in endpoints.iter().take(MAX_ENDPOINT_METRICS) {
        let label = vec![("endpoint_id".to_string(), ep.endpoint_id.clone())];
        succeeded.get_or_create(&label).set(ep.succeeded as f64);
        failed.get_or_create(&label).set(ep.failed as f64);
        p50.get_or_create(&label).set(f64::from(ep.p50_ms) / 1000.0);
        p95.get_or_create(&label).set(f64::from(ep.p95_ms) / 1000.0);
    }
    r.register(
        "endpoint_attempts_succeeded_24h",
        "Attempts per endpoint that succeeded in the last 24 hours",
        succeeded,
    );
    r.register(
        "endpoint_attempts_failed_24h",
        "Attempts per endpoint that failed in the last 24 hours",
        failed,
    );
    r.register(
        "endpoint_latency_p50_seconds_24h",
        "Median attempt latency per endpoint over the last 24 hours",
        p50,
    );
    r.register(
        "endpoint_latency_p95_seconds_24h",
        "95th percentile attempt latency per endpoint over the last 24 hours",
        p95,
    );
    r.register(
        "endpoint_stats_omitted",
        "Endpoints left out of the per-endpoint figures (past the cap of 200)",
        ConstGauge::new((omitted + endpoints.len().saturating_sub(MAX_ENDPOINT_METRICS)) as i64),
    );
}

impl Metrics {}

/// Rewrites an OpenMetrics exposition in the Prometheus text format 0.0.4: a counter's `# HELP`
/// and `# TYPE` name it with its `_total` suffix, as its samples are, and there is no `# EOF`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find(|p| line.starts_with(p));
        match meta {
            Some(prefix) => {
                let rest = &line[prefix.len()..];
                let name = rest.split(' ').next().unwrap_or("");
                if counters.contains(name) {
                    out.push_str(prefix);
                    out.push_str(name);
                    out.push_str("_total");
                    out.push_str(&rest[name.len()..]);
                } else {
                    out.push_str(line);
                }
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-endpoint figures carry the endpoint id as their only label, and stop at the cap.
    #[test]
    fn endpoint_figures_are_capped() {
        let m = Metrics::default();
        let figures: Vec<EndpointFigures> = (0..MAX_ENDPOINT_METRICS + 50)
            .map(|i| EndpointFigures {
                endpoint_id: format!("ep_{i:016x}"),
                succeeded: 3,
                failed: 1,
                p50_ms: 40,
                p95_ms: 250,
            })
            .collect();
        let snapshot = Snapshot {
            counters: Counters::default(),
            in_flight: 0,
            retrying_in_flight: 0,
            oldest_pending_age_seconds: 0.0,
            scheduler_idle_seconds: 0.0,
        };
        let text = to_prometheus_text(&m.render_with(&snapshot, &figures, 7));
        let shown = text
            .lines()
            .filter(|l| l.starts_with("preflix_webhookd_endpoint_attempts_succeeded_24h{"))
            .count();
        assert_eq!(shown, MAX_ENDPOINT_METRICS);
        assert!(text.contains(
            "preflix_webhookd_endpoint_latency_p95_seconds_24h{endpoint_id=\"ep_0000000000000000\"} 0.25\n"
        ), "{text}");
        assert!(
            text.contains("preflix_webhookd_endpoint_stats_omitted 57\n"),
            "{text}"
        );
        assert!(!text.contains(&format!("ep_{:016x}", MAX_ENDPOINT_METRICS)));
    }

    /// Every family in both formats, with the two ages; counters named as the classic format wants.
    #[test]
    fn both_formats() {
        let m = Metrics::default();
        m.events_received.inc();
        m.record_attempt(Some(500), 0.01);
        let om = m.render(&Snapshot {
            counters: Counters::default(),
            in_flight: 0,
            retrying_in_flight: 0,
            oldest_pending_age_seconds: 12.5,
            scheduler_idle_seconds: 0.25,
        });
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(
            om.contains("# TYPE preflix_webhookd_events_received counter\n"),
            "{om}"
        );
        assert!(
            om.contains("preflix_webhookd_oldest_pending_age_seconds 12.5\n"),
            "{om}"
        );
        assert!(
            om.contains("preflix_webhookd_scheduler_last_run_age_seconds 0.25\n"),
            "{om}"
        );
        let text = to_prometheus_text(&om);
        assert!(!text.contains("# EOF"), "{text}");
        assert!(
            text.contains("# TYPE preflix_webhookd_events_received_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP preflix_webhookd_events_received_total Events"),
            "{text}"
        );
        assert!(
            text.contains("preflix_webhookd_events_received_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE preflix_webhookd_attempts_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE preflix_webhookd_attempt_duration_seconds histogram\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE preflix_webhookd_oldest_pending_age_seconds gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("preflix_webhookd_oldest_pending_age_seconds 12.5\n"),
            "{text}"
        );
    }
}
