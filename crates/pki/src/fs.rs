//! Crash-safe file writes with restrictive permissions.
//!
//! Every file is written to a temporary name in its final directory, fsynced, renamed over the
//! final name and the directory fsynced: after a crash a file is either old or new, never torn.
//! Permissions are given at creation time, so a private key is never readable by others, not
//! even for the moment between `create` and `chmod`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::identity::hex;

/// Mode of private keys and secrets.
pub(crate) const SECRET: u32 = 0o600;
/// Mode of certificates and metadata (the state dir itself is 0700 anyway).
pub(crate) const PUBLIC: u32 = 0o644;
/// Mode of every directory in the state dir.
pub(crate) const DIR: u32 = 0o700;

/// Atomically replaces (or creates) `path` with `contents`.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = parent(path);
    let tmp = temp_path(path)?;
    let written = write_new(&tmp, contents, mode).and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        // Best effort: a leftover temp file is harmless, but do not litter.
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(dir)
}

/// Creates `path` (not its parents) with mode [`DIR`] and makes the entry durable.
pub(crate) fn create_dir(path: &Path) -> Result<()> {
    dir_builder().create(path).map_err(|e| Error::io(path, e))?;
    sync_dir(parent(path))
}

/// Creates `path` and missing parents with mode [`DIR`].
pub(crate) fn create_dir_all(path: &Path) -> Result<()> {
    dir_builder()
        .recursive(true)
        .create(path)
        .map_err(|e| Error::io(path, e))?;
    sync_dir(parent(path))
}

/// Makes renames and creations inside `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Restricts an existing directory to [`DIR`].
pub(crate) fn restrict_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(DIR))
            .map_err(|e| Error::io(path, e))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

pub(crate) fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// A random sibling name: random so that a leftover from a crash never blocks a later write.
pub(crate) fn temp_path(path: &Path) -> Result<PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = hex(&crate::random_bytes::<8>()?);
    Ok(parent(path).join(format!(".{name}.tmp-{suffix}")))
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

fn dir_builder() -> fs::DirBuilder {
    #[allow(unused_mut)] // only unix sets a mode
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(DIR);
    }
    builder
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
