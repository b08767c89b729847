//! preflix-webhookd: a single-node daemon that stores Preflix AI's webhook events durably and delivers them, signed, to partner endpoints.
//!
//! # Layout
//!
//! | concept | where |
//! |---|---|
//! | command line | `main.rs` (thin), [`cli`] |
//! | settings | [`config`]: the only reader of config files and settings from the environment |
//! | event catalog | [`catalog`], from `data/catalog.json` |
//! | plain data | [`model`] |
//! | durable state | [`store`]: the seam, one `Store` over the backends; [`store::sled`] (the only module that imports sled; group commit) |
//! | HTTP interface | [`api`] |
//! | delivering | [`delivery`]: scheduler, attempt, retry policy, address guard |
//! | signatures | [`signing`]: signer and verifier, shared with partners |
//! | endpoint stats | [`stats`]: hourly attempt figures and latency percentiles (pure) |
//! | logs and metrics | [`telemetry`] |
//! | stopping | [`shutdown`] |
//!
//! Data flow: HTTP ingest → validate → one store transaction (event, id record, one delivery per
//! matching endpoint, queue entries) → group commit (flush + fdatasync) → 202 → scheduler woken →
//! claim due → attempt (sign, send, classify) → settle in one transaction.

#![forbid(unsafe_code)]

pub mod api;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod model;
pub mod notifications;
pub mod notify;
pub mod shutdown;
pub mod signing;
pub mod stats;
pub mod store;
pub mod telemetry;

use api::AppState;
use config::Config;
use shutdown::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot open the store in {}: {source}", dir.display())]
    Store {
        dir: std::path::PathBuf,
        source: store::StoreError,
    },
    #[error("cannot flush the store to disk while stopping (changes acknowledged before are durable; later ones may be lost): {0}")]
    Close(store::StoreError),
    #[error("cannot set up delivery: {0}")]
    Delivery(String),
}

impl RunError {
    /// True when the store's data is damaged or unreadable: `serve` exits with 65 (EX_DATAERR).
    pub fn is_data_error(&self) -> bool {
        matches!(self, RunError::Store { source, .. } if source.is_data_error())
    }
}

/// Runs the daemon on `listener` until `shutdown` fires; returns once everything is flushed.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
) -> Result<(), RunError> {
    run_with(config, listener, shutdown, store::OpenOptions::default()).await
}

/// [`run`], with a choice of how a damaged store is treated (`serve --accept-data-loss`).
pub async fn run_with(
    config: Config,
    listener: TcpListener,
    shutdown: Shutdown,
    open: store::OpenOptions,
) -> Result<(), RunError> {
    // HTTP is served from the start: /healthz answers 503 until the store is open.
    let slot: api::StateSlot = Arc::default();
    let addr = listener.local_addr().ok();
    let (stop_http, http_shutdown) = Shutdown::new();
    let http = tokio::spawn(api::serve(
        listener,
        slot.clone(),
        config.clone(),
        http_shutdown,
    ));
    let result = start_and_run(config, &slot, addr, shutdown, open).await;
    stop_http.fire();
    let _ = http.await;
    if let Some(state) = slot.get() {
        state.store.close().await.map_err(RunError::Close)?;
    }
    tracing::info!("preflix-webhookd stopped");
    result
}

async fn start_and_run(
    config: Config,
    slot: &api::StateSlot,
    addr: Option<std::net::SocketAddr>,
    shutdown: Shutdown,
    open: store::OpenOptions,
) -> Result<(), RunError> {
    // Read first: everything below depends on the backend (where a token is generated, which
    // store is opened).
    let pg_url = config::load_postgres_url(&config, &config::process_env)?;
    // On PostgreSQL a token not given by file is the one in the database (read once it is open).
    let given_token = match pg_url {
        None => Some(config::load_admin_token_from_process_env(&config)?),
        Some(_) => config::given_admin_token(&config, &config::process_env)?,
    };
    if let Some(token) = &given_token {
        if token.generated {
            tracing::info!(path = %token.source.display(), "generated an admin token");
        } else {
            tracing::info!(path = %token.source.display(), "admin token loaded");
        }
    }
    let keys = config::load_master_keys(&config, &config::process_env)?;
    // Only when notifications are on: no secret file is made for a daemon that sends none.
    let given_secret = match (&config.notifications.url, &pg_url) {
        (None, _) => None,
        (Some(_), None) => {
            let secret = config::load_notification_secret_from_process_env(&config)?;
            if secret.generated {
                tracing::info!(path = %secret.source.display(), "generated a notification secret");
            }
            Some(secret)
        }
        (Some(_), Some(_)) => config::given_notification_secret(&config, &config::process_env)?,
    };
    // Checked here for exit code 64; the outbound client reads it again when it is built.
    config::load_extra_roots(&config.delivery)?;
    if let Some(key) = &keys.current {
        tracing::info!(path = %key.source().display(), "endpoint secrets are stored encrypted");
    }
    let config = Arc::new(config);
    let opened = match pg_url {
        Some(url) => {
            let pg = &config.storage.postgres;
            let node_name = pg
                .node_name
                .clone()
                .unwrap_or_else(|| default_node_name(addr));
            store::Store::open_postgres(store::postgres::PgOptions {
                url,
                pool_size: pg.pool_size,
                lease: pg.lease,
                node_name,
                keys,
            })
            .await
        }
        None => store::Store::open(&config, keys, open).await,
    };
    let store_error = |source| RunError::Store {
        dir: config.storage.dir.clone(),
        source,
    };
    let store = opened.map_err(store_error)?;
    let token = match given_token {
        Some(token) => token,
        None => {
            let token = store
                .shared_setting("admin_token", config::new_admin_token)
                .await
                .map_err(store_error)?
                .expect("a store without shared settings has a token from config");
            tracing::info!("admin token loaded from the PostgreSQL database (table settings)");
            config::AdminToken {
                token,
                source: "PostgreSQL table settings".into(),
                generated: false,
            }
        }
    };
    let notification_secret = match (given_secret, &config.notifications.url) {
        (Some(secret), _) => Some(secret),
        (None, None) => None,
        (None, Some(_)) => store
            .shared_setting("notifications_secret", config::new_notification_secret)
            .await
            .map_err(store_error)?
            .map(|secret| config::NotificationSecret {
                secret,
                source: "PostgreSQL table settings".into(),
                generated: false,
            }),
    };
    if let Some(mark) = store.damage_mark() {
        tracing::error!(
            dir = %config.storage.dir.display(),
            since = %mark.since,
            detail = %mark.detail,
            "this store was started damaged with --accept-data-loss; `preflix-webhookd check --clear-damage-mark` clears the mark"
        );
    }
    notifications::setup(&store, &config, notification_secret.as_ref(), api::now_ms())
        .await
        .map_err(|source| RunError::Store {
            dir: config.storage.dir.clone(),
            source,
        })?;
    let notifier = notify::Notifier::from_env();
    // /healthz holds the scheduler to the same interval as systemd's watchdog (at least 2 s: the
    // scheduler's own pace is one round a second).
    let scheduler_watchdog = config
        .test_hooks
        .scheduler_watchdog
        .or(notifier.watchdog_interval())
        .unwrap_or(api::DEFAULT_SCHEDULER_WATCHDOG)
        .max(Duration::from_secs(2));
    let metrics = Arc::new(telemetry::Metrics::default());
    let scheduler = delivery::Scheduler::new(store.clone(), config.clone(), metrics.clone())
        .map_err(RunError::Delivery)?;
    let state = Arc::new(AppState {
        config: config.clone(),
        store: store.clone(),
        scheduler: scheduler.handle(),
        metrics,
        token: token.token,
        started: Instant::now(),
        scheduler_watchdog,
        ready: AtomicBool::new(false),
    });
    // Backpressure holds from the first request, not from the first housekeeping round.
    update_storage_figures(&state);
    let _ = slot.set(state.clone());
    let scheduler_task = tokio::spawn(scheduler.run(shutdown.clone()));
    // Operator notifications are delivered by a scheduler of their own (see `delivery::Scope`).
    let operator_task = match config.notifications.url {
        Some(_) => {
            let operator = delivery::Scheduler::with_scope(
                delivery::Scope::Operator,
                store.clone(),
                config.clone(),
                state.metrics.clone(),
            )
            .map_err(RunError::Delivery)?;
            Some(tokio::spawn(operator.run(shutdown.clone())))
        }
        None => None,
    };
    let housekeeping = tokio::spawn(housekeeping(state.clone(), shutdown.clone()));
    // PostgreSQL: an attempt longer than the lease keeps its claim (store/postgres/leases.rs).
    let lease_renewal = store.spawn_lease_renewal();
    let watchdog = tokio::spawn(watchdog(notifier.clone(), state.clone(), shutdown.clone()));
    state.ready.store(true, Ordering::SeqCst);
    notifier.send("READY=1");
    tracing::info!(listen = ?addr, dir = %config.storage.dir.display(), "preflix-webhookd ready");
    shutdown.wait().await;
    // New requests now get 503 shutting_down; attempts in flight get the grace period.
    state.ready.store(false, Ordering::SeqCst);
    notifier.send("STOPPING=1");
    let _ = scheduler_task.await;
    if let Some(task) = operator_task {
        let _ = task.await;
    }
    let _ = housekeeping.await;
    let _ = watchdog.await;
    if let Some(task) = lease_renewal {
        task.abort();
    }
    Ok(())
}

/// A node's name when `storage.postgres.node_name` is not set: `<hostname>:<listen port>`.
fn default_node_name(addr: Option<std::net::SocketAddr>) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("{host}:{}", addr.map_or(0, |a| a.port()))
}

/// Tells systemd's watchdog the daemon is alive, but only while the scheduler keeps going round.
async fn watchdog(notifier: notify::Notifier, state: Arc<AppState>, shutdown: Shutdown) {
    let Some(interval) = notifier.watchdog_interval() else {
        return;
    };
    let tick = interval / 2;
    loop {
        let beat = state.scheduler.heartbeat_ms();
        // The scheduler goes round at least once a second; a silent one lets systemd restart us.
        if api::now_ms().saturating_sub(beat) < (interval.as_millis() as u64).max(2_000) {
            notifier.send("WATCHDOG=1");
        } else {
            tracing::error!("the scheduler has stopped going round; withholding the watchdog ping");
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Background upkeep: storage size for backpressure and metrics, the oldest pending delivery for
/// `/status` and `/metrics`, and retention.
async fn housekeeping(state: Arc<AppState>, shutdown: Shutdown) {
    let mut last_purge = Instant::now();
    loop {
        update_storage_figures(&state);
        if let Err(e) = state.store.refresh_oldest_pending().await {
            tracing::warn!(error = %e, "cannot find the oldest pending delivery");
        }
        if let Err(e) = notifications::round(&state.store, &state.config, api::now_ms()).await {
            tracing::warn!(error = %e, "operator notifications could not be decided");
        }
        if last_purge.elapsed() >= state.config.retention.interval {
            last_purge = Instant::now();
            purge(&state).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// Measures the store's size and free space again, for `/metrics` and for admission: between
/// measures, the store adds what each commit writes to its estimate (see `store::sled::health`).
fn update_storage_figures(state: &AppState) {
    state.store.measure();
    if let Some(bytes) = state.store.size_on_disk() {
        state.metrics.storage_bytes.set(bytes as i64);
    }
}

/// Retention: final events and old dead letters, in small batches that never hold the writer long.
async fn purge(state: &AppState) {
    let now = api::now_ms();
    let before = now.saturating_sub(state.config.retention.events.as_millis() as u64);
    let dead_before = now.saturating_sub(state.config.retention.dead_letters.as_millis() as u64);
    loop {
        match state.store.purge(before, dead_before, 256).await {
            Ok((0, 0)) => break,
            Ok((events, dead)) => tracing::debug!(events, dead, "retention purged"),
            Err(e) => {
                tracing::error!(error = %e, "retention purge failed");
                break;
            }
        }
        tokio::task::yield_now().await;
    }
    // Endpoint stats older than the longest window anyone can ask for, and those of deleted endpoints.
    let stats_before = stats::hour_of(now.saturating_sub(api::MAX_STATS_WINDOW.as_millis() as u64));
    match state.store.purge_stats(stats_before).await {
        Ok(0) => {}
        Ok(hours) => tracing::debug!(hours, "retention purged endpoint stats"),
        Err(e) => tracing::error!(error = %e, "retention purge of endpoint stats failed"),
    }
    // Partner tokens that expired or were revoked longer ago than events are kept.
    match state.store.purge_tokens(before).await {
        Ok(0) => {}
        Ok(tokens) => tracing::info!(tokens, "retention removed ended partner tokens"),
        Err(e) => tracing::error!(error = %e, "retention purge of partner tokens failed"),
    }
}
