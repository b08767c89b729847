//! Settings: `Config` from the TOML file and the environment, its validation, the admin token.
//!
//! This is the only module that reads settings. Everything is read and checked here, before
//! anything binds or opens the store, so a bad file stops start-up with one sentence that names
//! the key (`main` prints it and exits with code 64).
//!
//! The keys are those of `spec/API.md` section 3, plus three extras: `delivery.use_system_roots`,
//! `retention.interval` and `storage.previous_master_key_file`. The environment is read through a function passed in
//! ([`Config::load_with_env`], [`load_admin_token`]), so tests never touch the process environment.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use serde::Deserialize;

/// The environment variable naming the config file when no path is given on the command line.
pub const CONFIG_ENV: &str = "PREFLIX_WEBHOOKD_CONFIG";

/// Every setting of the daemon; `Default` gives the values of `spec/API.md` section 3.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    /// The admin HTTP interface: where it listens, how callers authenticate, what it accepts.
    pub server: ServerConfig,
    /// Where the sled database lives and how large it may grow.
    pub storage: StorageConfig,
    /// How outbound attempts are made and which receivers may be contacted.
    pub delivery: DeliveryConfig,
    /// When a failed attempt is tried again.
    pub retry: RetryConfig,
    /// When an endpoint that keeps failing is given up on.
    pub endpoints: EndpointsConfig,
    /// How long finished data is kept.
    pub retention: RetentionConfig,
    /// Where operator notifications go (contract section 10).
    pub notifications: NotificationsConfig,
    /// What is logged and in which format.
    pub log: LogConfig,
    /// Deadlines and connection limits of the HTTP interface. Not config keys (the contract has
    /// none for them): fixed defaults, documented in the README, that tests shorten.
    pub http: HttpLimits,
    /// Levers for tests only; not config keys, and left at their defaults by the daemon.
    #[doc(hidden)]
    pub test_hooks: TestHooks,
}

/// Levers integration tests pull to put the daemon in states that are hard to reach otherwise.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct TestHooks {
    /// While true, the scheduler's loop stands still (claims nothing, does not go round), as a
    /// stalled scheduler would.
    pub pause_scheduler: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Replaces the scheduler watchdog interval (`WATCHDOG_USEC`, else 30 s) that `/healthz` uses.
    pub scheduler_watchdog: Option<Duration>,
    /// Replaces how long an endpoint fails before `endpoint.failing` (1 hour).
    pub failing_after: Option<Duration>,
    /// Replaces the grouping window of `delivery.dead_lettered` (1 minute).
    pub dead_letter_window: Option<Duration>,
}

/// Hooks never make two configs differ.
impl PartialEq for TestHooks {
    fn eq(&self, _: &TestHooks) -> bool {
        true
    }
}

/// How long a client may take to send a request, and how many connections are served at once.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpLimits {
    /// The head of a request (request line and headers) must arrive within this; it is also how
    /// long a kept-alive connection may sit idle between requests.
    pub header_timeout: Duration,
    /// The body must arrive whole within this after its head: a client trickling it gets 408.
    pub body_timeout: Duration,
    /// Connections served at once; further ones get 503 and are closed. `None`: derived at start
    /// from the open-files limit, minus a reserve for the store and outbound connections.
    pub max_connections: Option<usize>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: None,
        }
    }
}

/// Settings of the admin HTTP interface (`[server]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// The address producers and operators reach the daemon on; localhost by default because
    /// the admin token is the only protection. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// A file holding the admin token, for operators who manage the secret themselves; `None`
    /// (the key absent or `""`) means `$CREDENTIALS_DIRECTORY/admin_token` if that exists, else
    /// `<storage.dir>/admin.token`, generated on first start.
    pub token_file: Option<PathBuf>,
    /// The largest request body accepted (413 above it), so one producer cannot exhaust memory
    /// or storage. Between 1 KiB and 64 MiB: a realistic event needs a few hundred bytes, and
    /// the body is stored whole in one sled record. sled 0.34 writes any node larger than a
    /// quarter of its 512 KiB log segment to a separate blob file, read and written whole, so
    /// every body of many MiB costs a blob file, its fsync and its size in memory on each write;
    /// 64 MiB bounds that cost per event.
    pub max_body_bytes: usize,
    /// How long SIGTERM waits for attempts in flight before exiting anyway; cut-off attempts are
    /// made again after the restart.
    pub shutdown_grace: Duration,
}

/// Settings of the store (`[storage]`).
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// Which backend keeps the data: the embedded sled database (default), or PostgreSQL shared
    /// by several daemons (contract section 8).
    pub backend: StorageBackend,
    /// `[storage.postgres]`: read only with `backend = "postgres"`.
    pub postgres: PostgresConfig,
    /// The sled database directory (relative paths are relative to the working directory); under
    /// systemd it defaults to the first entry of `$STATE_DIRECTORY` when the file does not set it.
    pub dir: PathBuf,
    /// The database size past which ingest answers 503 with Retry-After instead of filling the
    /// disk; 0 means no limit.
    pub max_bytes: u64,
    /// The master key endpoint secrets are stored encrypted with; `None` (absent or `""`) means
    /// `$CREDENTIALS_DIRECTORY/master_key` if that exists, else no key: secrets in the clear.
    /// See [`load_master_keys`].
    pub master_key_file: Option<PathBuf>,
    /// The key the store was encrypted with before the current one, during a key rotation; `None`
    /// means `$CREDENTIALS_DIRECTORY/previous_master_key` if that exists. Secrets found sealed with
    /// it are sealed again with the current key when the store opens.
    pub previous_master_key_file: Option<PathBuf>,
}

/// The backend of the store (`storage.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorageBackend {
    /// sled in `storage.dir`: one process.
    #[default]
    Sled,
    /// A PostgreSQL database that any number of daemons share.
    Postgres,
}

impl StorageBackend {
    /// The name as written in the config and shown by `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Sled => "sled",
            StorageBackend::Postgres => "postgres",
        }
    }
}

/// Settings of the PostgreSQL backend (`[storage.postgres]`).
#[derive(Clone, PartialEq)]
pub struct PostgresConfig {
    /// The connection string (`postgres://user@host/db` or `host=... dbname=...`); `None` (absent
    /// or `""`) means read it from `url_file`. Never logged (`Debug` redacts it): it may hold a
    /// password. See [`load_postgres_url`].
    pub url: Option<String>,
    /// A file holding the connection string; `None` means `$CREDENTIALS_DIRECTORY/postgres_url`.
    pub url_file: Option<PathBuf>,
    /// Connections each daemon keeps to the database; between 1 and 1024.
    pub pool_size: usize,
    /// How long a node's claim on a delivery lasts before another node may take it over; at
    /// least one second.
    pub lease: Duration,
    /// This node's name in `/status`; `None` (absent or `""`) means `<hostname>:<listen port>`.
    pub node_name: Option<String>,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig {
            url: None,
            url_file: None,
            pool_size: 16,
            lease: Duration::from_secs(60),
            node_name: None,
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("url_file", &self.url_file)
            .field("pool_size", &self.pool_size)
            .field("lease", &self.lease)
            .field("node_name", &self.node_name)
            .finish()
    }
}

/// Settings of outbound attempts (`[delivery]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryConfig {
    /// The limit on a whole attempt (connect, send, response head), so a slow receiver cannot hold
    /// a slot for ever; always more than zero.
    pub timeout: Duration,
    /// The limit on connecting alone, so unreachable hosts fail fast; it may exceed `timeout`,
    /// in which case `timeout` is the one that bites.
    pub connect_timeout: Duration,
    /// The number of attempts in flight across all endpoints, which bounds sockets and memory;
    /// between 1 and 65536.
    pub max_in_flight: usize,
    /// Whether endpoints may resolve to loopback, private, link-local, CGNAT, multicast or
    /// reserved addresses; false by default so a partner cannot aim the daemon at the internal
    /// network.
    pub allow_private_networks: bool,
    /// Whether production endpoints must use https (sandbox endpoints may always use http), so
    /// signed payloads do not cross the internet in clear.
    pub require_https: bool,
    /// Whether the operating system's trust store is used in addition to the bundled webpki roots,
    /// for receivers behind a private CA; false by default so behaviour does not depend on the
    /// host.
    pub use_system_roots: bool,
    /// A PEM file of further CA certificates to trust, for partners behind a private CA; read at
    /// start by [`load_extra_roots`].
    pub extra_roots_file: Option<PathBuf>,
}

/// Settings of the retry policy (`[retry]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// The delay before attempt 2, 3, ...; its length fixes how many attempts a delivery gets
    /// (see [`Config::attempts_per_delivery`]). Every entry is more than zero.
    pub schedule: Vec<Duration>,
    /// Each delay is multiplied by a random factor in `[1 - jitter, 1 + jitter]`, so deliveries
    /// that failed together do not all retry at the same instant; between 0 and 1.
    pub jitter: f64,
    /// The longest a receiver's Retry-After is honoured, so a receiver cannot park a delivery
    /// for ever.
    pub max_retry_after: Duration,
}

/// Settings about endpoints (`[endpoints]`).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointsConfig {
    /// An endpoint failing without a single success for this long is disabled, so dead receivers
    /// stop costing attempts; 0 disables at the first failure.
    pub disable_after: Duration,
}

/// Settings of operator notifications (`[notifications]`, contract section 10).
#[derive(Debug, Clone, PartialEq)]
pub struct NotificationsConfig {
    /// Where notifications are POSTed; `None` (empty) turns them off.
    pub url: Option<String>,
    /// The file holding the notification secret; `None`: `$CREDENTIALS_DIRECTORY/notifications_secret`,
    /// else `<storage.dir>/notifications.secret`, generated on first start.
    pub secret_file: Option<PathBuf>,
    /// `queue.stalled` once the oldest pending delivery has waited longer than this.
    pub stalled_after: Duration,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            url: None,
            secret_file: None,
            stalled_after: Duration::from_secs(15 * 60),
        }
    }
}

/// Settings of the purge of finished data (`[retention]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RetentionConfig {
    /// Events whose deliveries are all final are purged after this, and so is their id (a
    /// retried ingest older than this is accepted as new); keeps the database bounded.
    pub events: Duration,
    /// Dead letters are purged after this, giving operators time to inspect and replay them.
    pub dead_letters: Duration,
    /// How often the purge runs; an extra key, more than zero.
    pub interval: Duration,
}

/// Settings of logging (`[log]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// A level (`trace`, `debug`, `info`, `warn`, `error`, `off`) or an EnvFilter-style list of
    /// directives such as `info,hyper=warn`; validated here so a typo stops start-up.
    pub level: String,
    /// Text for people reading a terminal or the journal, JSON for log collectors.
    pub format: LogFormat,
}

/// The log line format (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines (`"text"`).
    #[default]
    Text,
    /// One JSON object a line (`"json"`).
    Json,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8790)),
            token_file: None,
            max_body_bytes: 262_144,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Sled,
            postgres: PostgresConfig::default(),
            dir: PathBuf::from("data/db"),
            max_bytes: 0,
            master_key_file: None,
            previous_master_key_file: None,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            allow_private_networks: false,
            require_https: true,
            use_system_roots: false,
            extra_roots_file: None,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(m * 60);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        RetryConfig {
            schedule: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                hours(2),
                hours(5),
                hours(10),
                hours(14),
                hours(20),
                hours(24),
            ],
            jitter: 0.2,
            max_retry_after: hours(24),
        }
    }
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        EndpointsConfig {
            disable_after: Duration::from_secs(5 * DAY),
        }
    }
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig {
            events: Duration::from_secs(30 * DAY),
            dead_letters: Duration::from_secs(30 * DAY),
            interval: Duration::from_secs(60),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Parses and validates a config file's text; absent keys keep their defaults.
    ///
    /// The environment is not consulted (see [`Config::load`]).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        parse(text, None).map(|parsed| parsed.config)
    }

    /// Loads the config the daemon runs with, reading the process environment.
    ///
    /// See [`Config::load_with_env`].
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_with_env(path, &process_env)
    }

    /// Loads the config from `path`, else from the file named by `PREFLIX_WEBHOOKD_CONFIG` when it
    /// is set and not empty, else the defaults; then, if the file did not set `storage.dir` and
    /// `STATE_DIRECTORY` is set (systemd), uses its first colon-separated entry.
    ///
    /// `env` looks up an environment variable; tests pass a closure instead of setting variables.
    pub fn load_with_env(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match path {
            Some(path) => Some(path.to_path_buf()),
            None => env(CONFIG_ENV)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from),
        };
        let parsed = match file {
            Some(file) => {
                let text = fs::read_to_string(&file).map_err(|io| ConfigError::Read {
                    path: file.clone(),
                    io,
                })?;
                parse(&text, Some(file))?
            }
            None => Parsed {
                config: Config::default(),
                storage_dir_given: false,
            },
        };
        let mut config = parsed.config;
        if !parsed.storage_dir_given {
            if let Some(state) = env("STATE_DIRECTORY") {
                if let Some(first) = state.split(':').next().filter(|dir| !dir.is_empty()) {
                    config.storage.dir = PathBuf::from(first);
                }
            }
        }
        Ok(config)
    }

    /// The number of attempts a delivery gets before it is dead-lettered: the first one plus one
    /// per entry of `retry.schedule`.
    pub fn attempts_per_delivery(&self) -> usize {
        1 + self.retry.schedule.len()
    }
}

/// Why the settings could not be loaded. Each message is one sentence naming the key and the
/// file, meant to be printed before exiting with code 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {io}", .path.display())]
    Read {
        /// The file that was named.
        path: PathBuf,
        /// What the operating system said.
        io: io::Error,
    },
    /// The text is not TOML.
    #[error("{} is not valid TOML: {message}", origin(.file))]
    Syntax {
        /// The file, or `None` for text given directly.
        file: Option<PathBuf>,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key or table that the daemon does not know, most likely a typo.
    #[error("{}: unknown key {key}; {accepted}", origin(.file))]
    UnknownKey {
        /// The file, or `None` for text given directly.
        file: Option<PathBuf>,
        /// The dotted key, such as `server.lisen`.
        key: String,
        /// What is accepted there, or a guess at what was meant.
        accepted: String,
    },
    /// A value of the wrong TOML type.
    #[error("{}: {key} must be {expected}, not {found}", origin(.file))]
    WrongType {
        /// The file, or `None` for text given directly.
        file: Option<PathBuf>,
        /// The dotted key, such as `retry.schedule[2]`.
        key: String,
        /// The type the key takes.
        expected: &'static str,
        /// The type it was given.
        found: &'static str,
    },
    /// A value of the right type that is out of range or malformed.
    #[error("{}: {key} = {value} is invalid: {reason}", origin(.file))]
    Invalid {
        /// The file, or `None` for text given directly.
        file: Option<PathBuf>,
        /// The dotted key, such as `retry.jitter`.
        key: String,
        /// The value as written in TOML.
        value: String,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// An admin token file that exists (or must exist) could not be read.
    #[error("cannot read the admin token file {} (from {key}): {io}", .path.display())]
    TokenRead {
        /// Where the path came from: `server.token_file`, `$CREDENTIALS_DIRECTORY`, `storage.dir`.
        key: &'static str,
        /// The token file.
        path: PathBuf,
        /// What the operating system said.
        io: io::Error,
    },
    /// An admin token file that is missing, empty or holds an unusable token.
    #[error("the admin token file {} (from {key}) {reason}", .path.display())]
    TokenInvalid {
        /// Where the path came from: `server.token_file`, `$CREDENTIALS_DIRECTORY`, `storage.dir`.
        key: &'static str,
        /// The token file.
        path: PathBuf,
        /// What is wrong with it, as the end of a sentence.
        reason: &'static str,
    },
    /// A master key file that is missing, unreadable or not a key.
    #[error("the master key file {} (from {key}) {reason}", .path.display())]
    MasterKey {
        /// Where the path came from: `storage.master_key_file`, `$CREDENTIALS_DIRECTORY`, ...
        key: &'static str,
        /// The key file.
        path: PathBuf,
        /// What is wrong with it, as the end of a sentence.
        reason: String,
    },
    /// The `delivery.extra_roots_file` is missing, unreadable or holds no certificate.
    #[error("delivery.extra_roots_file {}: {reason}", .path.display())]
    ExtraRoots {
        /// The PEM file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `storage.backend = "postgres"` without a usable connection string.
    #[error("{reason}")]
    PostgresUrl {
        /// Where it was looked for: `storage.postgres.url_file`, `$CREDENTIALS_DIRECTORY`, or
        /// `storage.postgres.url` when it is nowhere.
        key: &'static str,
        /// A sentence saying what is wrong and where a URL may be given.
        reason: String,
    },
    /// A setting this build cannot serve.
    #[error("{key} = {value}: {reason}")]
    Unsupported {
        /// The dotted key.
        key: &'static str,
        /// The value as written in TOML.
        value: &'static str,
        /// Why, as a sentence.
        reason: &'static str,
    },
    /// A new admin token could not be written under `storage.dir`.
    #[error("cannot create {} in storage.dir: {io}", .path.display())]
    TokenWrite {
        /// The token file.
        path: PathBuf,
        /// What the operating system said.
        io: io::Error,
    },
}

impl ConfigError {
    /// The dotted config key (or environment variable) the error is about, if there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. }
            | ConfigError::WrongType { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::TokenRead { key, .. } | ConfigError::TokenInvalid { key, .. } => Some(key),
            ConfigError::TokenWrite { .. } => Some("storage.dir"),
            ConfigError::MasterKey { key, .. }
            | ConfigError::PostgresUrl { key, .. }
            | ConfigError::Unsupported { key, .. } => Some(key),
            ConfigError::ExtraRoots { .. } => Some("delivery.extra_roots_file"),
            ConfigError::Read { .. } | ConfigError::Syntax { .. } => None,
        }
    }
}

/// The token callers of the admin interface present as `authorization: Bearer <token>`.
#[derive(Clone)]
pub struct AdminToken {
    /// The token itself, trimmed; never logged (`Debug` redacts it).
    pub token: String,
    /// The file it was read from or written to, so start-up can say where to find it.
    pub source: PathBuf,
    /// True when this start generated it, so start-up can tell the operator a new one exists.
    pub generated: bool,
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminToken")
            .field("token", &"<redacted>")
            .field("source", &self.source)
            .field("generated", &self.generated)
            .finish()
    }
}

/// Finds the admin token: `server.token_file` if set (it must exist), else
/// `$CREDENTIALS_DIRECTORY/admin_token` if that file exists, else `<storage.dir>/admin.token`,
/// which is generated (32 random bytes as 64 lowercase hex digits, mode 0600) if missing.
///
/// Tokens are trimmed of surrounding whitespace and must be non-empty visible ASCII.
/// `env` looks up an environment variable; tests pass a closure instead of setting variables.
pub fn load_admin_token(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<AdminToken, ConfigError> {
    if let Some(token) = given_admin_token(config, env)? {
        return Ok(token);
    }
    let path = config.storage.dir.join(TOKEN_FILE_NAME);
    match read_token(&path, "storage.dir")? {
        Some(token) => Ok(token),
        None => generate_token(&config.storage.dir, &path),
    }
}

/// The admin token the operator gave: `server.token_file` (it must exist), else
/// `$CREDENTIALS_DIRECTORY/admin_token` if that file exists; `None` when neither (the PostgreSQL
/// backend then keeps one generated in the database, the same for every node).
pub fn given_admin_token(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<AdminToken>, ConfigError> {
    if let Some(path) = &config.server.token_file {
        return read_token(path, "server.token_file")?
            .map(Some)
            .ok_or_else(|| ConfigError::TokenInvalid {
                key: "server.token_file",
                path: path.clone(),
                reason: "does not exist",
            });
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|dir| !dir.is_empty()) {
        return read_token(
            &Path::new(&dir).join(CREDENTIAL_NAME),
            "$CREDENTIALS_DIRECTORY",
        );
    }
    Ok(None)
}

/// A new admin token: 32 random bytes as 64 lowercase hex digits.
pub fn new_admin_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// [`load_admin_token`] with the process environment.
pub fn load_admin_token_from_process_env(config: &Config) -> Result<AdminToken, ConfigError> {
    load_admin_token(config, &process_env)
}

/// Looks up a variable of the process environment; a value that is not UTF-8 counts as unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Reads the master keys: `storage.master_key_file` if set (it must exist), else
/// `$CREDENTIALS_DIRECTORY/master_key` if that exists, else none; the previous key likewise from
/// `storage.previous_master_key_file` or `$CREDENTIALS_DIRECTORY/previous_master_key`. A key file
/// holds exactly 32 bytes, or 64 hex digits.
pub fn load_master_keys(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<crate::store::MasterKeys, ConfigError> {
    let credentials = env("CREDENTIALS_DIRECTORY").filter(|dir| !dir.is_empty());
    let find = |given: &Option<PathBuf>, key: &'static str, credential: &str| {
        if let Some(path) = given {
            return read_master_key(path, key, true);
        }
        match &credentials {
            Some(dir) => read_master_key(
                &Path::new(dir).join(credential),
                "$CREDENTIALS_DIRECTORY",
                false,
            ),
            None => Ok(None),
        }
    };
    Ok(crate::store::MasterKeys {
        current: find(
            &config.storage.master_key_file,
            "storage.master_key_file",
            MASTER_KEY_CREDENTIAL,
        )?,
        previous: find(
            &config.storage.previous_master_key_file,
            "storage.previous_master_key_file",
            PREVIOUS_MASTER_KEY_CREDENTIAL,
        )?,
    })
}

/// The PostgreSQL connection string, with `storage.backend = "postgres"` (`None` with sled):
/// `storage.postgres.url` if set, else the file `storage.postgres.url_file` (it must exist), else
/// `$CREDENTIALS_DIRECTORY/postgres_url` if that exists; nowhere is an error. A file holds the URL
/// on its first line.
pub fn load_postgres_url(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, ConfigError> {
    if config.storage.backend != StorageBackend::Postgres {
        return Ok(None);
    }
    let pg = &config.storage.postgres;
    if let Some(url) = &pg.url {
        return Ok(Some(url.clone()));
    }
    let read = |path: &Path, key: &'static str, required: bool| {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(io) if io.kind() == io::ErrorKind::NotFound && !required => return Ok(None),
            Err(io) => {
                return Err(ConfigError::PostgresUrl {
                    key,
                    reason: format!(
                        "cannot read the PostgreSQL URL file {} (from {key}): {io}",
                        path.display()
                    ),
                })
            }
        };
        let url = text.lines().next().unwrap_or("").trim();
        match check_postgres_url(url) {
            Ok(()) => {
                warn_if_shared(path, "the PostgreSQL URL file");
                Ok(Some(url.to_owned()))
            }
            Err(why) => Err(ConfigError::PostgresUrl {
                key,
                reason: format!(
                    "the PostgreSQL URL file {} (from {key}) {why}",
                    path.display()
                ),
            }),
        }
    };
    if let Some(path) = &pg.url_file {
        return read(path, "storage.postgres.url_file", true);
    }
    let credentials = env("CREDENTIALS_DIRECTORY").filter(|dir| !dir.is_empty());
    if let Some(dir) = credentials {
        let path = Path::new(&dir).join(POSTGRES_URL_CREDENTIAL);
        if let Some(url) = read(&path, "$CREDENTIALS_DIRECTORY", false)? {
            return Ok(Some(url));
        }
    }
    Err(ConfigError::PostgresUrl {
        key: "storage.postgres.url",
        reason: "storage.backend is \"postgres\" but no database URL is given: set \
                 storage.postgres.url, or storage.postgres.url_file, or provide the credential \
                 postgres_url ($CREDENTIALS_DIRECTORY/postgres_url, systemd LoadCredential=)"
            .to_owned(),
    })
}

/// Whether `url` can be a PostgreSQL connection string; the reason ends a sentence. The URL is
/// never part of the reason: it may hold a password.
fn check_postgres_url(url: &str) -> Result<(), &'static str> {
    if url.is_empty() {
        return Err("is empty");
    }
    if url.chars().any(char::is_control) {
        return Err("holds control characters");
    }
    let is_uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    if !is_uri && !url.contains('=') {
        return Err(
            "is not a PostgreSQL connection string: use \"postgres://user@host/database\" \
                    or \"host=... dbname=...\"",
        );
    }
    Ok(())
}

/// Reads one master key file; `Ok(None)` when it does not exist and need not.
fn read_master_key(
    path: &Path,
    key: &'static str,
    required: bool,
) -> Result<Option<crate::store::MasterKey>, ConfigError> {
    let invalid = |reason: String| ConfigError::MasterKey {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let content = match fs::read(path) {
        Ok(content) => content,
        Err(io) if io.kind() == io::ErrorKind::NotFound && !required => return Ok(None),
        Err(io) => return Err(invalid(format!("cannot be read: {io}"))),
    };
    let parsed = crate::store::MasterKey::parse(&content, path).map_err(invalid)?;
    warn_if_shared(path, "the master key file");
    Ok(Some(parsed))
}

/// Reads `delivery.extra_roots_file`: every certificate in it, at least one.
pub fn load_extra_roots(
    delivery: &DeliveryConfig,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let Some(path) = &delivery.extra_roots_file else {
        return Ok(Vec::new());
    };
    let failed = |reason: String| ConfigError::ExtraRoots {
        path: path.clone(),
        reason,
    };
    let content = fs::read(path).map_err(|io| failed(format!("cannot be read: {io}")))?;
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&content)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(format!("is not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(failed(
            "holds no certificate (expected PEM blocks `-----BEGIN CERTIFICATE-----`)".into(),
        ));
    }
    let mut usable = rustls::RootCertStore::empty();
    let (_, unusable) = usable.add_parsable_certificates(certs.iter().cloned());
    if unusable > 0 {
        return Err(failed(format!(
            "{unusable} of its {} certificates cannot be used as a trust anchor",
            certs.len()
        )));
    }
    Ok(certs)
}

/// The name of the master key among systemd credentials (`LoadCredential=master_key:...`).
const MASTER_KEY_CREDENTIAL: &str = "master_key";

/// The systemd credential holding the PostgreSQL connection string.
const POSTGRES_URL_CREDENTIAL: &str = "postgres_url";

/// The name of the previous master key among systemd credentials, during a key rotation.
const PREVIOUS_MASTER_KEY_CREDENTIAL: &str = "previous_master_key";

/// The name of the admin token among systemd credentials (`LoadCredential=admin_token:...`).
const CREDENTIAL_NAME: &str = "admin_token";

/// The name of the admin token file kept in `storage.dir`.
const TOKEN_FILE_NAME: &str = "admin.token";

const DAY: u64 = 86_400;

/// The range of `server.max_body_bytes`, 1 KiB to 64 MiB; see [`ServerConfig::max_body_bytes`].
const BODY_BYTES: RangeInclusive<i64> = 1024..=64 * 1024 * 1024;

/// The range of `delivery.max_in_flight`: each attempt holds a socket, and more than this would
/// exhaust file descriptors and ports long before it helped.
const IN_FLIGHT: RangeInclusive<i64> = 1..=65_536;

/// The longest duration accepted (100 years): anything longer is surely a mistake, and the bound
/// keeps `now + duration` far from overflowing any clock type.
const MAX_DURATION: Duration = Duration::from_secs(36_500 * DAY);

/// The words a log level may be, in any case.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// The type a key takes, for the check done before deserialising.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Duration,
    Durations,
    Int,
    Float,
    Bool,
    /// A sub-table with its own keys, such as `[storage.postgres]`.
    Table(&'static [(&'static str, Kind)]),
}

/// Every table and key, in the order of the spec. It must match the `Raw*` structs below (the
/// tests parse the example file, which holds every key, through both).
const SCHEMA: &[(&str, &[(&str, Kind)])] = &[
    (
        "server",
        &[
            ("listen", Kind::Str),
            ("token_file", Kind::Str),
            ("max_body_bytes", Kind::Int),
            ("shutdown_grace", Kind::Duration),
        ],
    ),
    (
        "storage",
        &[
            ("backend", Kind::Str),
            ("dir", Kind::Str),
            ("max_bytes", Kind::Int),
            ("master_key_file", Kind::Str),
            ("previous_master_key_file", Kind::Str),
            (
                "postgres",
                Kind::Table(&[
                    ("url", Kind::Str),
                    ("url_file", Kind::Str),
                    ("pool_size", Kind::Int),
                    ("lease", Kind::Duration),
                    ("node_name", Kind::Str),
                ]),
            ),
        ],
    ),
    (
        "delivery",
        &[
            ("timeout", Kind::Duration),
            ("connect_timeout", Kind::Duration),
            ("max_in_flight", Kind::Int),
            ("allow_private_networks", Kind::Bool),
            ("require_https", Kind::Bool),
            ("use_system_roots", Kind::Bool),
            ("extra_roots_file", Kind::Str),
        ],
    ),
    (
        "retry",
        &[
            ("schedule", Kind::Durations),
            ("jitter", Kind::Float),
            ("max_retry_after", Kind::Duration),
        ],
    ),
    ("endpoints", &[("disable_after", Kind::Duration)]),
    (
        "retention",
        &[
            ("events", Kind::Duration),
            ("dead_letters", Kind::Duration),
            ("interval", Kind::Duration),
        ],
    ),
    (
        "notifications",
        &[
            ("url", Kind::Str),
            ("secret_file", Kind::Str),
            ("stalled_after", Kind::Duration),
        ],
    ),
    ("log", &[("level", Kind::Str), ("format", Kind::Str)]),
];

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    server: Option<RawServer>,
    storage: Option<RawStorage>,
    delivery: Option<RawDelivery>,
    retry: Option<RawRetry>,
    endpoints: Option<RawEndpoints>,
    retention: Option<RawRetention>,
    notifications: Option<RawNotifications>,
    log: Option<RawLog>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotifications {
    url: Option<String>,
    secret_file: Option<String>,
    stalled_after: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    token_file: Option<String>,
    max_body_bytes: Option<i64>,
    shutdown_grace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<String>,
    postgres: Option<RawPostgres>,
    dir: Option<String>,
    max_bytes: Option<i64>,
    master_key_file: Option<String>,
    previous_master_key_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: Option<String>,
    url_file: Option<String>,
    pool_size: Option<i64>,
    lease: Option<String>,
    node_name: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    timeout: Option<String>,
    connect_timeout: Option<String>,
    max_in_flight: Option<i64>,
    allow_private_networks: Option<bool>,
    require_https: Option<bool>,
    use_system_roots: Option<bool>,
    extra_roots_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    schedule: Option<Vec<String>>,
    jitter: Option<f64>,
    max_retry_after: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEndpoints {
    disable_after: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    events: Option<String>,
    dead_letters: Option<String>,
    interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

/// A parsed config and what `load` needs to know about how it was written.
struct Parsed {
    config: Config,
    storage_dir_given: bool,
}

/// Parses `text`: TOML syntax, then keys and types against [`SCHEMA`] (for messages naming the
/// dotted key), then serde into the `Raw*` structs, then values into a [`Config`].
fn parse(text: &str, file: Option<PathBuf>) -> Result<Parsed, ConfigError> {
    let syntax = |error: toml::de::Error| ConfigError::Syntax {
        file: file.clone(),
        message: error.to_string().trim_end().to_owned(),
    };
    let table: toml::Table = text.parse().map_err(&syntax)?;
    check_shape(&table, &file)?;
    // The shape check above accepts only what these structs accept, so this fails only if the
    // two disagree; the message is still shown rather than lost.
    let raw: RawConfig = table.try_into().map_err(&syntax)?;
    let storage_dir_given = raw
        .storage
        .as_ref()
        .is_some_and(|storage| storage.dir.is_some());
    let config = Convert { file }.config(raw)?;
    Ok(Parsed {
        config,
        storage_dir_given,
    })
}

/// Checks every table and key against [`SCHEMA`].
fn check_shape(table: &toml::Table, file: &Option<PathBuf>) -> Result<(), ConfigError> {
    for (name, value) in table {
        let Some((_, keys)) = SCHEMA.iter().find(|(section, _)| section == name) else {
            return Err(ConfigError::UnknownKey {
                file: file.clone(),
                key: name.clone(),
                accepted: top_level_hint(name),
            });
        };
        let toml::Value::Table(section) = value else {
            return Err(ConfigError::WrongType {
                file: file.clone(),
                key: name.clone(),
                expected: "a table",
                found: type_name(value),
            });
        };
        check_keys(name, keys, section, file)?;
    }
    Ok(())
}

/// Checks the keys of the table `[name]` against `keys`.
fn check_keys(
    name: &str,
    keys: &[(&str, Kind)],
    section: &toml::Table,
    file: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    for (key, value) in section {
        let full = format!("{name}.{key}");
        let Some((_, kind)) = keys.iter().find(|(known, _)| known == key) else {
            let names: Vec<&str> = keys.iter().map(|(known, _)| *known).collect();
            return Err(ConfigError::UnknownKey {
                file: file.clone(),
                key: full,
                accepted: format!("[{name}] accepts {}", names.join(", ")),
            });
        };
        check_kind(&full, *kind, value, file)?;
    }
    Ok(())
}

/// Checks that one value has the TOML type its key takes.
fn check_kind(
    key: &str,
    kind: Kind,
    value: &toml::Value,
    file: &Option<PathBuf>,
) -> Result<(), ConfigError> {
    use toml::Value as V;
    let wrong = |key: String, expected| ConfigError::WrongType {
        file: file.clone(),
        key,
        expected,
        found: type_name(value),
    };
    match (kind, value) {
        (Kind::Str | Kind::Duration, V::String(_))
        | (Kind::Int, V::Integer(_))
        | (Kind::Float, V::Float(_) | V::Integer(_))
        | (Kind::Bool, V::Boolean(_)) => Ok(()),
        (Kind::Table(keys), V::Table(table)) => check_keys(key, keys, table, file),
        (Kind::Durations, V::Array(items)) => {
            match items.iter().enumerate().find(|(_, item)| !item.is_str()) {
                Some((index, item)) => Err(ConfigError::WrongType {
                    file: file.clone(),
                    key: format!("{key}[{index}]"),
                    expected: "a duration string like \"5s\"",
                    found: type_name(item),
                }),
                None => Ok(()),
            }
        }
        (Kind::Str, _) => Err(wrong(key.to_owned(), "a string")),
        (Kind::Duration, _) => Err(wrong(key.to_owned(), "a duration string like \"5s\"")),
        (Kind::Durations, _) => Err(wrong(
            key.to_owned(),
            "an array of duration strings like [\"5s\", \"5m\"]",
        )),
        (Kind::Int, _) => Err(wrong(key.to_owned(), "an integer")),
        (Kind::Float, _) => Err(wrong(key.to_owned(), "a number")),
        (Kind::Bool, _) => Err(wrong(key.to_owned(), "true or false")),
        (Kind::Table(_), _) => Err(wrong(key.to_owned(), "a table")),
    }
}

/// What to say about an unknown top-level key: the table it belongs in if it is a known key
/// written outside its table, else the list of tables.
fn top_level_hint(name: &str) -> String {
    for (section, keys) in SCHEMA {
        if keys.iter().any(|(key, _)| *key == name) {
            return format!("did you mean {section}.{name} (under [{section}])?");
        }
    }
    let tables: Vec<String> = SCHEMA
        .iter()
        .map(|(section, _)| format!("[{section}]"))
        .collect();
    format!("the config has the tables {}", tables.join(", "))
}

fn type_name(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// The first words of an error message: which file, or that the text was given directly.
fn origin(file: &Option<PathBuf>) -> String {
    match file {
        Some(path) => format!("config file {}", path.display()),
        None => "config text".to_owned(),
    }
}

/// Turns the raw values into a [`Config`], checking each and naming its key when it is refused.
struct Convert {
    file: Option<PathBuf>,
}

impl Convert {
    /// Builds each table from its raw values (`r`) and its defaults (`d`).
    fn config(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let (r, d) = (raw.server.unwrap_or_default(), ServerConfig::default());
        let server = ServerConfig {
            listen: match r.listen {
                Some(text) => self.listen(&text)?,
                None => d.listen,
            },
            token_file: match r.token_file {
                Some(path) => (!path.is_empty()).then(|| PathBuf::from(path)),
                None => d.token_file,
            },
            max_body_bytes: self.int(
                "server.max_body_bytes",
                r.max_body_bytes,
                BODY_BYTES,
                d.max_body_bytes,
            )?,
            shutdown_grace: self.duration(
                "server.shutdown_grace",
                r.shutdown_grace,
                d.shutdown_grace,
            )?,
        };

        let (r, d) = (raw.storage.unwrap_or_default(), StorageConfig::default());
        let storage = StorageConfig {
            backend: match r.backend.as_deref() {
                None => d.backend,
                Some("sled") => StorageBackend::Sled,
                Some("postgres") => StorageBackend::Postgres,
                Some(other) => {
                    let reason = "it must be \"sled\" or \"postgres\"";
                    return Err(self.invalid("storage.backend", &quote(other), reason));
                }
            },
            postgres: self.postgres(r.postgres.unwrap_or_default(), d.postgres)?,
            dir: match r.dir {
                Some(dir) if dir.is_empty() => {
                    return Err(self.invalid("storage.dir", "\"\"", "it must name a directory"));
                }
                Some(dir) => PathBuf::from(dir),
                None => d.dir,
            },
            max_bytes: self.int("storage.max_bytes", r.max_bytes, 0..=i64::MAX, d.max_bytes)?,
            master_key_file: optional_path(r.master_key_file),
            previous_master_key_file: optional_path(r.previous_master_key_file),
        };

        let (r, d) = (raw.delivery.unwrap_or_default(), DeliveryConfig::default());
        let delivery = DeliveryConfig {
            timeout: self.positive("delivery.timeout", r.timeout, d.timeout)?,
            connect_timeout: self.positive(
                "delivery.connect_timeout",
                r.connect_timeout,
                d.connect_timeout,
            )?,
            max_in_flight: self.int(
                "delivery.max_in_flight",
                r.max_in_flight,
                IN_FLIGHT,
                d.max_in_flight,
            )?,
            allow_private_networks: r.allow_private_networks.unwrap_or(d.allow_private_networks),
            require_https: r.require_https.unwrap_or(d.require_https),
            use_system_roots: r.use_system_roots.unwrap_or(d.use_system_roots),
            extra_roots_file: optional_path(r.extra_roots_file),
        };

        let (r, d) = (raw.retry.unwrap_or_default(), RetryConfig::default());
        let retry = RetryConfig {
            schedule: match r.schedule {
                Some(list) => list
                    .into_iter()
                    .enumerate()
                    .map(|(index, text)| {
                        self.positive(
                            &format!("retry.schedule[{index}]"),
                            Some(text),
                            Duration::ZERO,
                        )
                    })
                    .collect::<Result<_, _>>()?,
                None => d.schedule,
            },
            jitter: match r.jitter {
                Some(jitter) if !(0.0..=1.0).contains(&jitter) => {
                    let reason = "it must be between 0 and 1";
                    return Err(self.invalid("retry.jitter", &jitter.to_string(), reason));
                }
                Some(jitter) => jitter,
                None => d.jitter,
            },
            max_retry_after: self.duration(
                "retry.max_retry_after",
                r.max_retry_after,
                d.max_retry_after,
            )?,
        };

        let (r, d) = (
            raw.endpoints.unwrap_or_default(),
            EndpointsConfig::default(),
        );
        let endpoints = EndpointsConfig {
            disable_after: self.duration(
                "endpoints.disable_after",
                r.disable_after,
                d.disable_after,
            )?,
        };

        let (r, d) = (
            raw.retention.unwrap_or_default(),
            RetentionConfig::default(),
        );
        let retention = RetentionConfig {
            events: self.duration("retention.events", r.events, d.events)?,
            dead_letters: self.duration(
                "retention.dead_letters",
                r.dead_letters,
                d.dead_letters,
            )?,
            interval: self.positive("retention.interval", r.interval, d.interval)?,
        };

        let (r, d) = (
            raw.notifications.unwrap_or_default(),
            NotificationsConfig::default(),
        );
        let notifications = NotificationsConfig {
            url: match r.url.filter(|url| !url.is_empty()) {
                // The rules of a production endpoint; private addresses are refused at every
                // attempt unless `delivery.allow_private_networks`.
                Some(url) => {
                    match crate::delivery::guard::parse_endpoint_url(
                        &url,
                        false,
                        delivery.require_https,
                    ) {
                        Ok(_) => Some(url),
                        Err(e) => {
                            return Err(self.invalid(
                                "notifications.url",
                                &quote(&url),
                                &e.to_string(),
                            ))
                        }
                    }
                }
                None => None,
            },
            secret_file: optional_path(r.secret_file),
            stalled_after: self.positive(
                "notifications.stalled_after",
                r.stalled_after,
                d.stalled_after,
            )?,
        };

        let (r, d) = (raw.log.unwrap_or_default(), LogConfig::default());
        let log = LogConfig {
            level: match r.level {
                Some(level) => match check_log_level(&level) {
                    Ok(()) => level,
                    Err(reason) => return Err(self.invalid("log.level", &quote(&level), &reason)),
                },
                None => d.level,
            },
            format: match r.format.as_deref() {
                Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    let reason = "it must be \"text\" or \"json\"";
                    return Err(self.invalid("log.format", &quote(other), reason));
                }
                None => d.format,
            },
        };

        Ok(Config {
            server,
            storage,
            delivery,
            retry,
            endpoints,
            retention,
            notifications,
            log,
            http: HttpLimits::default(),
            test_hooks: TestHooks::default(),
        })
    }

    /// `[storage.postgres]`, from its raw values (`r`) and its defaults (`d`).
    fn postgres(&self, r: RawPostgres, d: PostgresConfig) -> Result<PostgresConfig, ConfigError> {
        let lease = self.positive("storage.postgres.lease", r.lease.clone(), d.lease)?;
        if lease < Duration::from_secs(1) {
            let shown = r.lease.as_deref().map(quote).unwrap_or_default();
            let reason = "it must be at least 1s: a claim must outlast an attempt's start";
            return Err(self.invalid("storage.postgres.lease", &shown, reason));
        }
        Ok(PostgresConfig {
            url: match r.url.filter(|url| !url.is_empty()) {
                Some(url) => match check_postgres_url(&url) {
                    Ok(()) => Some(url),
                    Err(why) => {
                        let reason = format!("it {why}");
                        // The value is not shown: it may hold a password.
                        return Err(self.invalid("storage.postgres.url", "(not shown)", &reason));
                    }
                },
                None => None,
            },
            url_file: optional_path(r.url_file),
            pool_size: self.int(
                "storage.postgres.pool_size",
                r.pool_size,
                1..=1024,
                d.pool_size,
            )?,
            lease,
            node_name: match r.node_name.filter(|name| !name.is_empty()) {
                Some(name) if name.len() > 128 || name.chars().any(char::is_control) => {
                    let reason = "it must be at most 128 characters, without control characters";
                    return Err(self.invalid("storage.postgres.node_name", &quote(&name), reason));
                }
                other => other,
            },
        })
    }

    fn listen(&self, text: &str) -> Result<SocketAddr, ConfigError> {
        text.parse().map_err(|_| {
            let reason =
                "it must be an IP address and a port, like \"127.0.0.1:8790\" or \"[::1]:8790\"";
            self.invalid("server.listen", &quote(text), reason)
        })
    }

    /// Parses an optional duration, `default` when absent; zero is allowed.
    fn duration(
        &self,
        key: &str,
        text: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match text {
            Some(text) => {
                parse_duration(&text).map_err(|reason| self.invalid(key, &quote(&text), &reason))
            }
            None => Ok(default),
        }
    }

    /// Parses an optional duration, `default` when absent; zero is refused.
    fn positive(
        &self,
        key: &str,
        text: Option<String>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let shown = text.as_deref().map(quote);
        let duration = self.duration(key, text, default)?;
        match shown {
            Some(shown) if duration.is_zero() => {
                Err(self.invalid(key, &shown, "it must be more than zero"))
            }
            _ => Ok(duration),
        }
    }

    /// Checks an optional integer against `range` and converts it, `default` when absent.
    fn int<T: TryFrom<i64>>(
        &self,
        key: &str,
        value: Option<i64>,
        range: RangeInclusive<i64>,
        default: T,
    ) -> Result<T, ConfigError> {
        let Some(value) = value else {
            return Ok(default);
        };
        let reason = match *range.end() {
            i64::MAX => format!("it must be {} or more", range.start()),
            end => format!("it must be between {} and {end}", range.start()),
        };
        range
            .contains(&value)
            .then(|| T::try_from(value).ok())
            .flatten()
            .ok_or_else(|| self.invalid(key, &value.to_string(), &reason))
    }

    fn invalid(&self, key: &str, value: &str, reason: &str) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        }
    }
}

/// Writes a string value as it would appear in TOML.
/// A file key: absent or `""` means none.
fn optional_path(text: Option<String>) -> Option<PathBuf> {
    text.filter(|t| !t.is_empty()).map(PathBuf::from)
}

fn quote(text: &str) -> String {
    format!("{text:?}")
}

/// Parses a duration: a whole number and a unit (`ms`, `s`, `m`, `h`, `d`), at most 100 years.
/// The error is the end of a sentence about the value.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    const HOW: &str =
        "use a whole number and a unit (ms, s, m, h or d), like \"250ms\", \"5s\" or \"30d\"";
    if text.is_empty() {
        return Err(format!("it is empty; {HOW}"));
    }
    if text.starts_with('-') {
        return Err(format!("a duration cannot be negative; {HOW}"));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    if digits.is_empty() {
        return Err(format!("it does not start with a number; {HOW}"));
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => DAY * 1_000,
        "" => return Err(format!("it has no unit; {HOW}")),
        _ if unit.starts_with('.') => {
            return Err(format!(
                "fractions are not accepted; {HOW}, or a smaller unit"
            ))
        }
        _ => return Err(format!("{} is not a unit; {HOW}", quote(unit))),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|amount| amount.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .filter(|duration| *duration <= MAX_DURATION)
        .ok_or_else(|| "it is longer than 100 years, the longest duration accepted".to_owned())
}

/// Checks a log level or a list of EnvFilter-style directives (`info`, `info,hyper=warn`):
/// every directive is a level word, or a target, `=` and a level word.
fn check_log_level(text: &str) -> Result<(), String> {
    const HOW: &str = "use trace, debug, info, warn, error or off, alone or as comma-separated \
                       target=level directives like \"info,hyper=warn\"";
    for directive in text.split(',') {
        let directive = directive.trim();
        let level = match directive.rsplit_once('=') {
            Some((target, _)) if target.trim().is_empty() => {
                return Err(format!(
                    "the directive {} has no target before '='; {HOW}",
                    quote(directive)
                ));
            }
            Some((_, level)) => level.trim(),
            None => directive,
        };
        if level.is_empty() {
            return Err(format!("it has an empty directive; {HOW}"));
        }
        if !LOG_LEVELS
            .iter()
            .any(|known| known.eq_ignore_ascii_case(level))
        {
            return Err(format!("{} is not a level; {HOW}", quote(level)));
        }
    }
    Ok(())
}

/// Reads a token file; `Ok(None)` when it does not exist.
fn read_token(path: &Path, key: &'static str) -> Result<Option<AdminToken>, ConfigError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(io) if io.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(io) => {
            return Err(ConfigError::TokenRead {
                key,
                path: path.to_path_buf(),
                io,
            })
        }
    };
    let token = text.trim();
    let invalid = |reason| ConfigError::TokenInvalid {
        key,
        path: path.to_path_buf(),
        reason,
    };
    if token.is_empty() {
        // Only the token under `storage.dir` is ever generated: a configured or credential file
        // that is missing stays an error, so deleting it would not help.
        return Err(invalid(if key == "storage.dir" {
            "is empty; write a token into it, or delete it to have one generated"
        } else {
            "is empty; write a token into it"
        }));
    }
    if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(invalid(
            "holds spaces, control characters or non-ASCII characters inside the token",
        ));
    }
    warn_if_shared(path, "the admin token file");
    Ok(Some(AdminToken {
        token: token.to_owned(),
        source: path.to_path_buf(),
        generated: false,
    }))
}

/// Writes a new token to `path` in `dir` so that `path` is either absent or complete, even after
/// a crash: the token goes to a temporary file (created new, mode 0600, fsynced), which is then
/// hard-linked to `path`; the link fails if another process created `path` first, whose token
/// is then used.
fn generate_token(dir: &Path, path: &Path) -> Result<AdminToken, ConfigError> {
    let token = new_admin_token();
    let write_error = |io| ConfigError::TokenWrite {
        path: path.to_path_buf(),
        io,
    };
    if publish_private(dir, path, &token).map_err(write_error)? {
        return Ok(AdminToken {
            token,
            source: path.to_path_buf(),
            generated: true,
        });
    }
    read_token(path, "storage.dir")?.ok_or_else(|| write_error(io::ErrorKind::NotFound.into()))
}

/// Writes `text` as the new private file `path` in `dir` so that `path` is absent or complete, even
/// after a crash (temporary file, fsync, hard link, fsync of the directory). `Ok(false)` when
/// another process made `path` first: the caller reads that one.
fn publish_private(dir: &Path, path: &Path, text: &str) -> io::Result<bool> {
    fs::create_dir_all(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let temporary = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    // A leftover from a start that crashed with the same process id would block `create_new`.
    let _ = fs::remove_file(&temporary);
    let linked = write_new_private(&temporary, text).and_then(|()| fs::hard_link(&temporary, path));
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => fs::File::open(dir)?.sync_all().map(|()| true),
        Err(io) if io.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(io) => Err(io),
    }
}

/// Creates `path`, which must not exist, readable by its owner only, and writes `text` durably.
fn write_new_private(path: &Path, text: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// Warns when a token file can be read by users other than its owner.
fn warn_if_shared(path: &Path, what: &str) {
    if let Ok(metadata) = fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "{what} can be read by other users; chmod 600 it"
            );
        }
    }
}

mod secret;
pub use secret::{
    given_notification_secret, load_notification_secret, load_notification_secret_from_process_env,
    new_notification_secret, NotificationSecret,
};

#[cfg(test)]
mod tests;
