//! The store directory's files outside sled: private modes whatever the umask, snapshot removal.

use std::fs::File;
use std::path::Path;

/// Creates the store directory (mode 0700 whatever the umask) or makes an existing one private.
pub(super) fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot make the store directory private (0700)");
    }
    Ok(())
}

/// Creates sled's data file and blob directory before sled does, so that they are private from
/// the start (sled creates them with the process umask: 0644 outside systemd).
pub(super) fn prepare_private_files(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(dir.join("db"))?;
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir.join("blobs"))
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// [`tighten_permissions`], with a warning instead of an error when it fails (a store on a
/// filesystem without Unix modes, or owned by another user, still opens).
pub(super) fn keep_private(dir: &Path) {
    if let Err(e) = tighten_permissions(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot make the store's files private (0600); they hold every endpoint's signing secret");
    }
}

/// Makes every file in the store directory (and in `blobs/`) 0600 and its directories 0700: the
/// store holds every endpoint's signing secret. Files sled creates later (blobs, snapshots) are
/// tightened by the syncer and at close.
pub(super) fn tighten_permissions(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = match entry.metadata() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        if meta.permissions().mode() & 0o777 != want {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(want))?;
        }
        if meta.is_dir() {
            tighten_permissions(&entry.path())?;
        }
    }
    Ok(())
}

/// Removes sled's snapshot files (an index of its log, rebuilt from the log when missing).
pub(super) fn remove_snapshots(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(entry.path())?;
        }
    }
    File::open(dir)?.sync_all()
}
