//! The PostgreSQL schema's versions: numbered SQL migrations compiled in, applied in order at start.
//!
//! Each migration runs in its own transaction that first takes a transaction-scoped advisory lock
//! ([`sql::LOCK_MIGRATE`]) and reads the version again under it, so nodes starting together apply
//! each one once. A database whose version is newer than the last migration here is refused with
//! [`StoreError::SchemaTooNew`]: this binary would misread it.

use super::sql;
use crate::store::StoreError;

/// The migrations, in order: migration `i` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_initial.sql"),
    include_str!("migrations/0002_partner_tokens.sql"),
    include_str!("migrations/0003_notices.sql"),
];

/// The schema version this binary writes and reads.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database's schema to [`VERSION`]; returns the migrations applied by this call.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<u32, StoreError> {
    let mut applied = 0;
    loop {
        let tx = client.transaction().await.map_err(super::db_error)?;
        tx.execute(sql::MIGRATE_LOCK, &[&sql::LOCK_MIGRATE])
            .await
            .map_err(super::db_error)?;
        tx.batch_execute(sql::SCHEMA_TABLE)
            .await
            .map_err(super::db_error)?;
        let current: i64 = tx
            .query_one(sql::SCHEMA_VERSION, &[])
            .await
            .map_err(super::db_error)?
            .get(0);
        if current > VERSION {
            return Err(StoreError::SchemaTooNew(format!(
                "the PostgreSQL database has schema version {current}; this preflix-webhookd knows \
                 versions up to {VERSION}: run the newer preflix-webhookd that upgraded it, or \
                 restore a backup taken before the upgrade"
            )));
        }
        if current == VERSION {
            tx.commit().await.map_err(super::db_error)?;
            return Ok(applied);
        }
        let next = current + 1;
        tx.batch_execute(MIGRATIONS[current as usize])
            .await
            .map_err(super::db_error)?;
        tx.execute(sql::SCHEMA_RECORD, &[&next])
            .await
            .map_err(super::db_error)?;
        tx.commit().await.map_err(super::db_error)?;
        tracing::info!(version = next, "PostgreSQL schema migrated");
        applied += 1;
    }
}
