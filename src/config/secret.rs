//! The notification secret (contract section 3, `notifications.secret_file`): found, read, or generated on first start.

use super::{process_env, publish_private, Config, ConfigError};
use crate::signing::Secret;
use std::path::{Path, PathBuf};
use std::{fs, io};

/// The credential name under `$CREDENTIALS_DIRECTORY`.
const CREDENTIAL_NAME: &str = "notifications_secret";
/// The generated file's name under `storage.dir`.
const FILE_NAME: &str = "notifications.secret";

/// The secret that signs operator notifications, and where it came from.
#[derive(Clone)]
pub struct NotificationSecret {
    /// `whsec_...`; never logged (`Debug` redacts it).
    pub secret: String,
    /// The file it was read from or written to.
    pub source: PathBuf,
    /// True when this start generated it.
    pub generated: bool,
}

impl std::fmt::Debug for NotificationSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotificationSecret")
            .field("secret", &"<redacted>")
            .field("source", &self.source)
            .field("generated", &self.generated)
            .finish()
    }
}

/// Finds the notification secret: `notifications.secret_file` if set (it must exist), else
/// `$CREDENTIALS_DIRECTORY/notifications_secret` if that file exists, else
/// `<storage.dir>/notifications.secret`, generated (`whsec_` + base64 of 32 random bytes, mode
/// 0600) when missing. A secret must be `whsec_` + base64, as endpoint secrets are.
pub fn load_notification_secret(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NotificationSecret, ConfigError> {
    if let Some(secret) = given_notification_secret(config, env)? {
        return Ok(secret);
    }
    let path = config.storage.dir.join(FILE_NAME);
    match read(&path, "storage.dir")? {
        Some(secret) => Ok(secret),
        None => generate(&config.storage.dir, &path),
    }
}

/// The notification secret the operator gave: `notifications.secret_file` (it must exist), else
/// `$CREDENTIALS_DIRECTORY/notifications_secret` if that file exists; `None` when neither (the
/// PostgreSQL backend then keeps one generated in the database, the same for every node).
pub fn given_notification_secret(
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<NotificationSecret>, ConfigError> {
    if let Some(path) = &config.notifications.secret_file {
        return read(path, "notifications.secret_file")?.map(Some).ok_or(
            ConfigError::TokenInvalid {
                key: "notifications.secret_file",
                path: path.clone(),
                reason: "does not exist",
            },
        );
    }
    if let Some(dir) = env("CREDENTIALS_DIRECTORY").filter(|dir| !dir.is_empty()) {
        let path = Path::new(&dir).join(CREDENTIAL_NAME);
        return read(&path, "$CREDENTIALS_DIRECTORY");
    }
    Ok(None)
}

/// A new notification secret (`whsec_` + base64 of 32 random bytes).
pub fn new_notification_secret() -> String {
    Secret::generate().as_str().to_owned()
}

/// [`load_notification_secret`] with the process environment.
pub fn load_notification_secret_from_process_env(
    config: &Config,
) -> Result<NotificationSecret, ConfigError> {
    load_notification_secret(config, &process_env)
}

fn read(path: &Path, key: &'static str) -> Result<Option<NotificationSecret>, ConfigError> {
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
    let Ok(secret) = Secret::parse(&text) else {
        return Err(ConfigError::TokenInvalid {
            key,
            path: path.to_path_buf(),
            reason: "does not hold a notification secret (whsec_ followed by base64)",
        });
    };
    super::warn_if_shared(path, "the notification secret file");
    Ok(Some(NotificationSecret {
        secret: secret.as_str().to_owned(),
        source: path.to_path_buf(),
        generated: false,
    }))
}

/// Writes a new secret into `path` (see [`publish_private`]); a secret another process wrote first wins.
fn generate(dir: &Path, path: &Path) -> Result<NotificationSecret, ConfigError> {
    let secret = Secret::generate().as_str().to_owned();
    let write_error = |io| ConfigError::TokenWrite {
        path: path.to_path_buf(),
        io,
    };
    if publish_private(dir, path, &secret).map_err(write_error)? {
        return Ok(NotificationSecret {
            secret,
            source: path.to_path_buf(),
            generated: true,
        });
    }
    read(path, "storage.dir")?.ok_or_else(|| write_error(io::ErrorKind::NotFound.into()))
}
