//! Hot reload: picks up `client revoke`, `site add`, renewed certificates and device links
//! (made, used up, or expired) without a restart.
//!
//! The watcher polls the few files that matter four times a second (cheaper and more robust
//! than inotify across renames, editors and bind mounts) and reloads on any change, or at
//! once on SIGHUP. A reload builds a complete new [`Sites`] and swaps it in; if anything fails
//! to load, the old one stays, the error is logged and kept for `/status` (`last_reload`), and
//! `doorless_edge_config_reloads_total{result="error"}` counts it. Connections of certificates that the
//! new state revokes are closed, WebSockets included (`revocation::enforce`). Which files to
//! watch is the state dir's to say (`pki::StateDir::watched_paths`), plus any `tls_cert` /
//! `tls_key` the config names.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::ResultLabel;
use crate::site::Sites;
use crate::{Shared, revocation};

const POLL: Duration = Duration::from_millis(250);

/// Modification time (s, ns), inode and length of a file, or `None` if it is missing.
type FileStamp = Option<(i64, i64, u64, u64)>;

/// Watches the state dir until `shutdown`.
pub(crate) async fn watch(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last = stamp(&shared);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tick.tick() => false,
            Some(()) = recv_hangup(&mut hangup) => true,
        };
        let link_expired = shared
            .sites
            .load()
            .link_expired(std::time::SystemTime::now());
        if link_expired {
            // An expired link's package (a password-protected .p12) has no use left: delete
            // it. Its certificate stays issued until revoked, as any other.
            match shared.state.prune_links() {
                Ok(n) => info!(expired = n, "expired device links deleted"),
                Err(e) => warn!(error = %e, "could not delete expired device links"),
            }
        }
        let now = stamp(&shared);
        if now == last && !forced && !link_expired {
            continue;
        }
        // A failed reload (a file caught mid-change, a transient read error) is tried again
        // at the next tick, not only at the next change: until it succeeds, a revocation
        // written meanwhile does not apply.
        if reload(&shared) {
            last = now;
        }
    }
}

async fn recv_hangup(signal: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// How the last reload went, for `/status`: a failed reload keeps the previous state (so a
/// `client revoke` may not have applied), and the operator has to be able to see that.
#[derive(Debug, Clone)]
pub(crate) struct LastReload {
    /// Whether the new state was taken.
    pub(crate) ok: bool,
    /// When the reload finished.
    pub(crate) at: SystemTime,
    /// Why it failed (the error chain), if it did.
    pub(crate) error: Option<String>,
}

/// The outcome of the last reload since start (none yet: the state is the one loaded at start).
#[derive(Debug, Default)]
pub(crate) struct ReloadRecord(Mutex<Option<LastReload>>);

impl ReloadRecord {
    fn set(&self, last: LastReload) {
        // A poisoned lock only means a panic elsewhere mid-assignment; the value is whole.
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(last);
    }

    /// The last reload's outcome, if there was one.
    pub(crate) fn get(&self) -> Option<LastReload> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Reloads the state now. Returns whether the new state was taken.
pub(crate) fn reload(shared: &Shared) -> bool {
    let sites = match Sites::load(&shared.config, shared.acme.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            let error = daemon::error_chain(&e).to_string();
            // Retried every tick while it fails: said once per distinct error.
            let repeated = shared
                .last_reload
                .get()
                .is_some_and(|last| !last.ok && last.error.as_deref() == Some(error.as_str()));
            if repeated {
                debug!(error = %error, "reload failed again; keeping the previous state");
            } else {
                warn!(error = %error, "reload failed; keeping the previous state");
            }
            shared.last_reload.set(LastReload {
                ok: false,
                at: SystemTime::now(),
                error: Some(error),
            });
            shared
                .metrics
                .reloads
                .get_or_create(&ResultLabel { result: "error" })
                .inc();
            return false;
        }
    };
    let newly_revoked = sites.revoked().since(shared.sites.load().revoked());
    sites.warn_expiring();
    for site in sites.all() {
        shared.metrics.init_site(&site.name);
    }
    if let Some(acme) = &shared.acme {
        acme.retain(sites.acme_sites());
    }
    shared.sites.store(Arc::new(sites));
    let closed = revocation::enforce(shared, &newly_revoked);
    let metrics = &shared.metrics;
    metrics
        .reloads
        .get_or_create(&ResultLabel { result: "ok" })
        .inc();
    metrics.revoked_connections_closed.inc_by(closed as u64);
    shared.last_reload.set(LastReload {
        ok: true,
        at: SystemTime::now(),
        error: None,
    });
    info!(
        newly_revoked_devices = newly_revoked.devices(),
        newly_revoked_connectors = newly_revoked.connectors(),
        connections_closed = closed,
        "state reloaded"
    );
    true
}

/// What identifies the state's current version: the files a change goes through.
fn stamp(shared: &Shared) -> Vec<(PathBuf, FileStamp)> {
    let mut paths = shared.state.watched_paths();
    for files in shared
        .config
        .sites
        .values()
        .filter_map(|s| s.certificate.as_ref())
    {
        paths.push(files.cert.clone());
        paths.push(files.key.clone());
    }
    paths
        .into_iter()
        .map(|p| {
            let meta = meta(&p);
            (p, meta)
        })
        .collect()
}

fn meta(path: &Path) -> FileStamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.mtime(), m.mtime_nsec(), m.ino(), m.len()))
}
