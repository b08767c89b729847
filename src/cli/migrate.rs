//! `preflix-webhookd migrate --to-postgres URL`: copies a stopped sled store into an empty
//! PostgreSQL database (contract section 8) and says what it copied.

use crate::config::{self, Config};
use crate::store::postgres::import::{self, ImportError};
use crate::store::sled::export::is_held_by_another_process;
use crate::store::sled::{SledStore, CACHE_BYTES};
use crate::store::transfer::Copied;
use crate::store::StoreError;
use std::path::{Path, PathBuf};

/// Why a migration did not happen; each has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("there is no sled store in {0} (storage.dir): nothing to migrate")]
    NoStore(PathBuf),
    #[error("the sled store in {0} is in use: stop the daemon (or whatever holds it) first; nothing was copied")]
    InUse(PathBuf),
    #[error("cannot read the sled store in {dir}: {source}")]
    Source {
        dir: PathBuf,
        #[source]
        source: StoreError,
    },
    #[error("{0}")]
    NotEmpty(String),
    #[error(
        "PostgreSQL: nothing was copied (the copy is one transaction; run migrate again): {0}"
    )]
    Target(StoreError),
}

impl MigrateError {
    /// Exit codes (sysexits.h): 64 bad config (or TLS settings in the URL that cannot work), 65 damaged store, 69 database unreachable,
    /// 73 database not empty, 75 store in use (try again once the daemon is stopped).
    pub fn exit_code(&self) -> u8 {
        match self {
            MigrateError::Config(_) => 64,
            MigrateError::NoStore(_) => 66,
            MigrateError::InUse(_) => 75,
            MigrateError::Source { source, .. } if source.is_data_error() => 65,
            MigrateError::Source {
                source: StoreError::MasterKey(_),
                ..
            } => 64,
            MigrateError::Source { .. } => 1,
            MigrateError::NotEmpty(_) => 73,
            MigrateError::Target(StoreError::Unavailable(_)) => 69,
            // TLS as the URL asks cannot work: a setting to change.
            MigrateError::Target(StoreError::Tls(_)) => 64,
            MigrateError::Target(_) => 1,
        }
    }
}

/// Reads the config (`storage.dir`, the master key), opens the sled store (refused while a
/// daemon holds it) and copies it into the database at `url`.
pub fn run(config_path: Option<&Path>, url: &str) -> Result<Copied, MigrateError> {
    let config = Config::load(config_path)?;
    let keys = config::load_master_keys(&config, &config::process_env)?;
    let dir = config.storage.dir.clone();
    if !dir.join("db").exists() {
        return Err(MigrateError::NoStore(dir));
    }
    let store = SledStore::open_with_keys(&dir, CACHE_BYTES, keys.clone()).map_err(|e| {
        if is_held_by_another_process(&e) {
            MigrateError::InUse(dir.clone())
        } else {
            MigrateError::Source {
                dir: dir.clone(),
                source: e,
            }
        }
    })?;
    // What the sled install generated into its directory, every node of the cluster now shares.
    let mut settings = Vec::new();
    for (file, name) in [
        ("admin.token", "admin_token"),
        ("notifications.secret", "notifications_secret"),
    ] {
        if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
            let value = text.trim();
            if !value.is_empty() {
                settings.push((name, value.to_string()));
            }
        }
    }
    let copied = (|| {
        let export = store.export().map_err(|e| MigrateError::Source {
            dir: dir.clone(),
            source: e,
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| MigrateError::Target(StoreError::Io(e)))?;
        runtime
            .block_on(import::import(url, &keys, &export, &settings))
            .map_err(|e| match e {
                ImportError::NotEmpty(m) => MigrateError::NotEmpty(m),
                ImportError::Store(e @ StoreError::Sled(_))
                | ImportError::Store(e @ StoreError::Corrupt(_)) => MigrateError::Source {
                    dir: dir.clone(),
                    source: e,
                },
                ImportError::Store(e) => MigrateError::Target(e),
            })
    })();
    let _ = store.close();
    copied
}

/// What `migrate` prints once it has copied.
pub fn report(c: &Copied) -> String {
    format!(
        "copied into PostgreSQL:\n  endpoints     {}\n  events        {}\n  deliveries    {} \
         ({} pending, of which {} retrying; {} succeeded, {} dead, {} cancelled)\n  attempts      {}\n  \
         dead letters  {}\n  partner tokens {}\n  stats hours   {}\n  settings      {} (the admin token and notification secret generated into storage.dir, \
         shared by every node unless a file in the config says otherwise)\nstart the daemons with storage.backend = \"postgres\"; keep the sled \
         directory until they run well\n",
        c.endpoints,
        c.events,
        c.deliveries,
        c.pending,
        c.retrying,
        c.succeeded,
        c.dead,
        c.cancelled,
        c.attempts,
        c.dead_letters,
        c.partner_tokens,
        c.stats_hours,
        c.settings
    )
}
