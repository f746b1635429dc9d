//! The state directory's write lock: an advisory `flock` on `state.lock`, held across every
//! read-modify-write of `index.json` and `enroll-codes.json` (and the CRL number beside them).
//!
//! Both files are written whole and atomically (see `fs`), so a reader never sees a torn file;
//! but the CLI (`site code`, `client add`, `client revoke`, ...) and the running edge
//! (redeeming an enrollment code) each read, change and rewrite them, and without a lock two
//! such writers at once would each write back what they read, losing the other's change: a
//! minted code that never works, a revocation undone. The lock serialises them across
//! processes and threads.
//!
//! Re-entrant within a thread: a public operation takes it and may call others that take it
//! again (redeeming a code issues a certificate), which must not wait for themselves (`flock`
//! locks of two open files conflict even in one process).
//!
//! What it is not: a lock for readers (they need none), nor for the links directory (each link
//! is its own file, claimed by an atomic rename).

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

const LOCK_FILE: &str = "state.lock";
/// How long to wait for another writer: every holder only reads and writes a few small
/// files, so waiting longer means a stuck process, which the message names.
const WAIT: Duration = Duration::from_secs(10);
/// Poll interval while another process holds the lock (`try_lock` inside the deadline).
const POLL: Duration = Duration::from_millis(5);

thread_local! {
    /// The lock files this thread holds, for re-entrance.
    static HELD: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
}

/// Holds the lock until dropped (a no-op guard when the thread held it already).
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub(crate) struct StateLock {
    /// `None`: re-entered; the outer guard releases.
    held: Option<(File, PathBuf)>,
}

impl Drop for StateLock {
    fn drop(&mut self) {
        if let Some((file, path)) = self.held.take() {
            HELD.with(|held| held.borrow_mut().retain(|p| *p != path));
            // Closing the file releases the lock too; unlocking first says so explicitly.
            let _ = file.unlock();
        }
    }
}

/// Takes the write lock of the state directory at `root`, waiting up to [`WAIT`].
pub(crate) fn lock(root: &Path) -> Result<StateLock> {
    let path = root.join(LOCK_FILE);
    if HELD.with(|held| held.borrow().contains(&path)) {
        return Ok(StateLock { held: None });
    }
    let mut options = OpenOptions::new();
    options.create(true).truncate(false).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Empty, and readable by all: `flock` needs only a read descriptor, so a lock file
        // another user created (the CLI run as root beside an edge running as `doorless`)
        // still locks.
        options.mode(crate::fs::PUBLIC);
    }
    let file = match options.open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            File::open(&path).map_err(|e| Error::io(&path, e))?
        }
        Err(e) => return Err(Error::io(&path, e)),
    };
    let started = Instant::now();
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if started.elapsed() < WAIT => {
                std::thread::sleep(POLL);
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::io(
                    &path,
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "another doorless-edge process has held this lock for {} s; \
                             nothing was changed",
                            WAIT.as_secs()
                        ),
                    ),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
    }
    HELD.with(|held| held.borrow_mut().push(path.clone()));
    Ok(StateLock {
        held: Some((file, path)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn re_entrant_in_a_thread_exclusive_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        let outer = lock(dir.path()).unwrap();
        let inner = lock(dir.path()).unwrap();
        assert!(inner.held.is_none());
        drop(inner);
        // Another thread (another open file) waits while this one holds it.
        let root = dir.path().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        let other = std::thread::spawn(move || {
            let guard = lock(&root).unwrap();
            tx.send(()).unwrap();
            drop(guard);
        });
        assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(outer);
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        other.join().unwrap();
    }
}
