//! Reading one shared setting (the generated admin token) from the database without opening the store: for the CLI, which must not migrate, heartbeat or appear as a node.

use super::{db_error, tls};
use crate::store::StoreError;
use std::time::Duration;

/// The value of setting `name` in the `settings` table of the database at `url`; `None` when the
/// daemon has not generated it (or the schema is not there yet).
pub async fn read_setting(url: &str, name: &str) -> Result<Option<String>, StoreError> {
    let (config, connector) = tls::connect_config(url, "storage.postgres.url")?;
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(5), config.connect(connector))
            .await
            .map_err(|_| StoreError::Unavailable("connecting to PostgreSQL timed out".into()))?
            .map_err(|e| tls::connect_error(e, "storage.postgres.url"))?;
    let driver = tokio::spawn(connection);
    let exists: bool = client
        .query_one("SELECT to_regclass('settings') IS NOT NULL", &[])
        .await
        .map_err(db_error)?
        .get(0);
    let value = if exists {
        client
            .query_opt("SELECT value FROM settings WHERE name = $1", &[&name])
            .await
            .map_err(db_error)?
            .map(|row| row.get(0))
    } else {
        None
    };
    drop(client);
    driver.abort();
    Ok(value)
}
