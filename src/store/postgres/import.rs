//! Filling an empty database from another store (`preflix-webhookd migrate --to-postgres`): every
//! row copied with its number, in one transaction, so a failed migration leaves the database as
//! it was and can simply be run again.

use super::{db_error, rows, sql};
use crate::model::{DeliveryStatus, Environment};
use crate::store::transfer::{Copied, ExportSource, ExportedEvent};
use crate::store::{MasterKeys, StoreError};

/// Events (with their deliveries) and dead letters copied per statement.
const PAGE: usize = 1000;

/// The name of the counters row holding the copied store's totals.
pub const COUNTERS_ROW: &str = "migrated-from-sled";

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The database already holds endpoints, events, deliveries or dead letters.
    #[error("{0}")]
    NotEmpty(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn env_text(e: Environment) -> &'static str {
    e.as_str()
}

/// Connects to `url`, brings the schema up to date, and copies everything `src` holds into the
/// database, in one transaction, refusing a database that is not empty. Endpoint secrets are sealed
/// with `keys.current` (in the clear without one), as the daemon would write them. `settings`
/// (name, value) go into the table of cluster-wide settings (`admin_token`, `notifications_secret`).
pub async fn import(
    url: &str,
    keys: &MasterKeys,
    src: &dyn ExportSource,
    settings: &[(&str, String)],
) -> Result<Copied, ImportError> {
    let (config, tls) = super::tls::connect_config(url, "the --to-postgres URL")?;
    let (mut client, connection) = tokio::time::timeout(super::OP_TIMEOUT, config.connect(tls))
        .await
        .map_err(|_| StoreError::Unavailable("connecting to PostgreSQL timed out".into()))?
        .map_err(|e| super::tls::connect_error(e, "the --to-postgres URL"))?;
    let driver = tokio::spawn(connection);
    super::schema::migrate(&mut client).await?;
    let copied = copy(&mut client, keys, src, settings).await;
    drop(client);
    let _ = driver.await;
    copied
}

async fn copy(
    client: &mut tokio_postgres::Client,
    keys: &MasterKeys,
    src: &dyn ExportSource,
    settings: &[(&str, String)],
) -> Result<Copied, ImportError> {
    let tx = client.transaction().await.map_err(db_error)?;
    // Two migrations into one database take turns; the second then finds it not empty.
    tx.execute(sql::MIGRATE_LOCK, &[&sql::LOCK_MIGRATE])
        .await
        .map_err(db_error)?;
    let held = tx
        .query_one(sql::IMPORT_HELD, &[])
        .await
        .map_err(db_error)?;
    let held: Vec<i64> = (0..5).map(|i| held.get(i)).collect();
    if held.iter().any(|&n| n > 0) {
        return Err(ImportError::NotEmpty(format!(
            "the database is not empty ({} endpoints, {} events, {} deliveries, {} dead letters, \
             {} partner tokens): migrate copies into an empty database only; nothing was copied",
            held[0], held[1], held[2], held[3], held[4]
        )));
    }
    let mut copied = Copied::default();

    for ex in src.endpoints()? {
        let ep = &ex.endpoint;
        let json = rows::endpoint_json(ep, keys);
        let h = &ex.health;
        tx.execute(
            sql::IMPORT_ENDPOINT,
            &[
                &rows::i(ep.num),
                &ep.partner_id,
                &env_text(ep.environment),
                &ep.url,
                &json.event_types,
                &ep.description,
                &json.headers,
                &ep.ordered,
                &(ep.max_in_flight.min(i32::MAX as u32) as i32),
                &ep.rate_limit_per_second
                    .map(|r| r.min(i32::MAX as u32) as i32),
                &ep.enabled,
                &ep.disabled_reason,
                &rows::i(ep.created_at_ms),
                &json.secrets,
                &(h.consecutive_failures.min(i32::MAX as u32) as i32),
                &h.last_status_code.map(i32::from),
                &h.last_success_at_ms.map(rows::i),
                &h.last_failure_at_ms.map(rows::i),
                &h.failing_since_ms.map(rows::i),
                &h.last_error,
            ],
        )
        .await
        .map_err(db_error)?;
        copied.endpoints += 1;
    }

    let mut after = 0;
    loop {
        let page = src.events_after(after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.event.seq;
        insert_events(&tx, &page, &mut copied).await?;
    }

    let mut after = 0;
    loop {
        let page = src.dead_letters_after(after, PAGE)?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let (mut seq, mut delivery, mut event, mut endpoint) = (vec![], vec![], vec![], vec![]);
        let (mut attempts, mut code, mut error) = (Vec::<i32>::new(), vec![], vec![]);
        let (mut first, mut dead, mut reasons) = (vec![], vec![], Vec::<&str>::new());
        for dl in &page {
            seq.push(rows::i(dl.seq));
            delivery.push(rows::i(dl.delivery_seq));
            event.push(rows::i(dl.event_seq));
            endpoint.push(rows::i(dl.endpoint_num));
            attempts.push(dl.attempts.min(i32::MAX as u32) as i32);
            code.push(dl.last_status_code.map(i32::from));
            error.push(dl.last_error.clone());
            first.push(dl.first_attempt_at_ms.map(rows::i));
            dead.push(rows::i(dl.dead_at_ms));
            reasons.push(rows::reason_text(dl.reason));
        }
        tx.execute(
            sql::IMPORT_DEAD_LETTERS,
            &[
                &seq, &delivery, &event, &endpoint, &attempts, &code, &error, &first, &dead,
                &reasons,
            ],
        )
        .await
        .map_err(db_error)?;
        copied.dead_letters += page.len() as u64;
    }

    for t in src.partner_tokens()? {
        tx.execute(
            sql::IMPORT_TOKEN,
            &[
                &rows::i(t.num),
                &&t.hash[..],
                &t.partner_id,
                &t.environment.map(env_text),
                &t.read_only,
                &t.description,
                &rows::i(t.created_at_ms),
                &rows::i(t.expires_at_ms),
                &t.revoked_at_ms.map(rows::i),
            ],
        )
        .await
        .map_err(db_error)?;
        copied.partner_tokens += 1;
    }
    for (endpoint, hour, figures) in src.endpoint_stats()? {
        let latency: Vec<i64> = figures.latency.iter().map(|&n| rows::i(n)).collect();
        tx.execute(
            sql::IMPORT_STATS,
            &[
                &rows::i(endpoint),
                &rows::i(hour),
                &rows::i(figures.succeeded),
                &rows::i(figures.failed),
                &latency,
            ],
        )
        .await
        .map_err(db_error)?;
        copied.stats_hours += 1;
    }

    let last_number = rows::i(src.next_number().max(1));
    tx.query_one(sql::IMPORT_SEQUENCES, &[&last_number])
        .await
        .map_err(db_error)?;
    let t = src.totals();
    let n = |v: u64| rows::i(v);
    tx.execute(
        sql::IMPORT_COUNTERS,
        &[
            &COUNTERS_ROW,
            &n(t.events),
            &n(t.deliveries_created),
            &n(t.deliveries_succeeded),
            &n(t.deliveries_dead),
            &n(t.deliveries_cancelled),
            &n(t.attempts_failed),
            &n(t.attempts_succeeded),
            &n(t.pending),
            &n(t.retrying),
            &n(t.dead_letters),
        ],
    )
    .await
    .map_err(db_error)?;
    for (name, value) in settings {
        tx.execute(sql::IMPORT_SETTING, &[name, value])
            .await
            .map_err(db_error)?;
        copied.settings += 1;
    }
    // Nodes already running on this database (there should be none) reload and look for work.
    for channel in [sql::CHANNEL_ENDPOINTS, sql::CHANNEL_DUE] {
        tx.execute(sql::NOTIFY, &[&channel])
            .await
            .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(copied)
}

async fn insert_events(
    tx: &tokio_postgres::Transaction<'_>,
    page: &[ExportedEvent],
    copied: &mut Copied,
) -> Result<(), StoreError> {
    let mut seq = Vec::with_capacity(page.len());
    let mut id = Vec::with_capacity(page.len());
    let mut partner = Vec::with_capacity(page.len());
    let mut env = Vec::with_capacity(page.len());
    let mut kind = Vec::with_capacity(page.len());
    let mut created = Vec::with_capacity(page.len());
    let mut received = Vec::with_capacity(page.len());
    let mut payload: Vec<&[u8]> = Vec::with_capacity(page.len());
    let mut hash: Vec<&[u8]> = Vec::with_capacity(page.len());
    let mut count = Vec::with_capacity(page.len());
    let (mut d_seq, mut d_event, mut d_endpoint) = (Vec::<i64>::new(), vec![], vec![]);
    let (mut d_status, mut d_due, mut d_retry) = (Vec::<i16>::new(), vec![], Vec::<bool>::new());
    let mut attempts: Vec<String> = Vec::new();
    let mut before: Vec<i32> = Vec::new();
    let mut d_created: Vec<i64> = Vec::new();
    for ex in page {
        let e = &ex.event;
        seq.push(rows::i(e.seq));
        id.push(e.id.as_str());
        partner.push(e.partner_id.as_str());
        env.push(env_text(e.environment));
        kind.push(e.event_type.as_str());
        created.push(e.created_at.as_str());
        received.push(rows::i(e.received_at_ms));
        payload.push(&e.payload);
        hash.push(&e.content_hash[..]);
        count.push(ex.deliveries_at_ingest.min(i32::MAX as u32) as i32);
        for x in &ex.deliveries {
            let del = &x.delivery;
            d_seq.push(rows::i(del.seq));
            d_event.push(rows::i(del.event_seq));
            d_endpoint.push(rows::i(del.endpoint_num));
            d_status.push(rows::status_code(del.status));
            d_due.push(match del.status {
                DeliveryStatus::Pending => {
                    Some(rows::i(del.next_attempt_at_ms.unwrap_or(del.created_at_ms)))
                }
                _ => None,
            });
            d_retry.push(x.retry && del.status == DeliveryStatus::Pending);
            attempts.push(serde_json::to_string(&del.attempts).expect("attempts serialize"));
            before.push(del.attempts_before_redrive.min(i32::MAX as u32) as i32);
            d_created.push(rows::i(del.created_at_ms));
            copied.deliveries += 1;
            copied.attempts += del.attempts.len() as u64;
            match del.status {
                DeliveryStatus::Pending => {
                    copied.pending += 1;
                    if x.retry {
                        copied.retrying += 1;
                    }
                }
                DeliveryStatus::Succeeded => copied.succeeded += 1,
                DeliveryStatus::Dead => copied.dead += 1,
                DeliveryStatus::Cancelled => copied.cancelled += 1,
            }
        }
    }
    tx.execute(
        sql::IMPORT_EVENTS,
        &[
            &seq, &id, &partner, &env, &kind, &created, &received, &payload, &hash, &count,
        ],
    )
    .await
    .map_err(db_error)?;
    if !d_seq.is_empty() {
        tx.execute(
            sql::IMPORT_DELIVERIES,
            &[
                &d_seq,
                &d_event,
                &d_endpoint,
                &d_status,
                &d_due,
                &d_retry,
                &attempts,
                &before,
                &d_created,
            ],
        )
        .await
        .map_err(db_error)?;
    }
    copied.events += page.len() as u64;
    Ok(())
}
