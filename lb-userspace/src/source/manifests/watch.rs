//! Republishing snapshots when the manifest files change.
//!
//! The directory holding the manifests is watched with notify (inotify);
//! bursts of events are debounced, then PATH is scanned again with a
//! [`ManifestReader`] (which reads only the files whose metadata changed)
//! and a snapshot is published only if some file's contents changed. A slow
//! rescan backs the watch up (a lost inotify event, a replaced directory);
//! without notify, it runs every 500 ms instead: when nothing changed, a
//! scan costs a directory listing and a stat per file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout_at};
use tracing::{debug, info, warn};

use super::files;
use super::reader::ManifestReader;
use crate::source::SnapshotSender;

/// A burst of events is over after this much quiet...
const DEBOUNCE_QUIET: Duration = Duration::from_millis(150);
/// ...or this long after it started, whichever comes first.
const DEBOUNCE_MAX: Duration = Duration::from_millis(500);
/// Metadata polling period without notify.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Metadata check period with notify, as a safety net.
const SAFETY_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// notify, falling back to polling if it cannot be set up.
    Notify,
    /// Polling only (tests of the fallback).
    #[cfg_attr(not(test), expect(dead_code, reason = "only the tests choose polling"))]
    Poll,
}

pub(super) async fn run(path: PathBuf, node_name: String, tx: SnapshotSender, mode: Mode) {
    let dir = files::watch_dir(&path);
    let mut watch = Watch::new(dir, mode);
    let mut scanner = Scanner::new(path, node_name);
    // The watch is armed before the first read, so no change after that
    // read can be missed.
    scanner.rescan(&tx).await;

    loop {
        let period = if watch.active() {
            SAFETY_INTERVAL
        } else {
            POLL_INTERVAL
        };
        tokio::select! {
            () = tx.closed() => {
                debug!("manifests: no receiver left, stopping");
                return;
            }
            event = watch.next_event() => {
                if event {
                    watch.debounce().await;
                    scanner.rescan(&tx).await;
                } else {
                    warn!(dir = %watch.dir.display(), "manifests: file watch ended, polling every 500 ms instead");
                    watch.watcher = None;
                }
            }
            () = sleep(period) => scanner.rescan(&tx).await,
        }
        watch.rearm_if_replaced();
    }
}

/// Reads and publishes.
struct Scanner {
    path: PathBuf,
    node_name: String,
    /// What was read so far; `None` only while a scan has it (or after a
    /// scan panicked: the next one then starts over).
    reader: Option<ManifestReader>,
}

impl Scanner {
    fn new(path: PathBuf, node_name: String) -> Self {
        let reader = ManifestReader::new(path.clone(), node_name.clone());
        Scanner {
            path,
            node_name,
            reader: Some(reader),
        }
    }

    /// Scans PATH; publishes a snapshot if the contents changed since the
    /// last one (the first call always publishes).
    async fn rescan(&mut self, tx: &SnapshotSender) {
        let mut reader = self
            .reader
            .take()
            .unwrap_or_else(|| ManifestReader::new(self.path.clone(), self.node_name.clone()));
        let result = tokio::task::spawn_blocking(move || {
            let snapshot = reader.read_if_changed();
            (reader, snapshot)
        })
        .await;
        let (reader, snapshot) = match result {
            Ok(done) => done,
            Err(e) => {
                warn!(path = %self.path.display(), "manifests: reading failed: {e}");
                return;
            }
        };
        let stats = reader.stats();
        self.reader = Some(reader);
        let Some(snapshot) = snapshot else {
            debug!(path = %self.path.display(), files = stats.files, read = stats.read, "manifests: unchanged");
            return;
        };
        info!(
            path = %self.path.display(),
            services = snapshot.cluster.services.len(),
            endpoint_slices = snapshot.cluster.endpoint_slices.len(),
            node = snapshot.node.is_some(),
            invalid = snapshot.invalid.len(),
            files = stats.files,
            parsed = stats.parsed,
            "manifests: publishing snapshot"
        );
        tx.send_replace(Some(Arc::new(snapshot)));
    }
}

/// The notify watch on the manifests' directory, if there is one.
struct Watch {
    dir: PathBuf,
    mode: Mode,
    /// Identity of the directory when the watch was (last tried to be)
    /// set up: a watch is retried only when the directory is replaced.
    armed_for: Option<(u64, u64)>,
    watcher: Option<(RecommendedWatcher, mpsc::Receiver<()>)>,
}

impl Watch {
    fn new(dir: PathBuf, mode: Mode) -> Self {
        let mut watch = Watch {
            armed_for: files::dir_id(&dir),
            dir,
            mode,
            watcher: None,
        };
        if mode == Mode::Notify {
            watch.arm();
        }
        watch
    }

    fn active(&self) -> bool {
        self.watcher.is_some()
    }

    fn arm(&mut self) {
        self.watcher = None;
        match start_watcher(&self.dir) {
            Ok(watcher) => {
                debug!(dir = %self.dir.display(), "manifests: watching");
                self.watcher = Some(watcher);
            }
            Err(e) => warn!(
                dir = %self.dir.display(),
                "manifests: cannot watch for changes ({e}), polling every 500 ms instead"
            ),
        }
    }

    /// A directory that was removed and re-created (or appeared only
    /// after start) needs a new watch: inotify watches inodes.
    fn rearm_if_replaced(&mut self) {
        if self.mode != Mode::Notify {
            return;
        }
        let id = files::dir_id(&self.dir);
        if id != self.armed_for {
            self.armed_for = id;
            if id.is_some() {
                self.arm();
            } else {
                self.watcher = None;
            }
        }
    }

    /// Waits for a relevant event: true, or false if the watcher is gone.
    /// Never returns without a watcher.
    async fn next_event(&mut self) -> bool {
        match &mut self.watcher {
            Some((_, rx)) => rx.recv().await.is_some(),
            None => std::future::pending().await,
        }
    }

    /// Waits until a burst of events is over.
    async fn debounce(&mut self) {
        let Some((_, rx)) = &mut self.watcher else {
            return;
        };
        let deadline = Instant::now() + DEBOUNCE_MAX;
        loop {
            let quiet_until = (Instant::now() + DEBOUNCE_QUIET).min(deadline);
            match timeout_at(quiet_until, rx.recv()).await {
                Ok(Some(())) if quiet_until < deadline => continue,
                _ => return,
            }
        }
    }
}

fn start_watcher(dir: &Path) -> notify::Result<(RecommendedWatcher, mpsc::Receiver<()>)> {
    // One pending wake-up is enough: every wake-up rescans everything.
    let (tx, rx) = mpsc::channel(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<Event>| {
        let relevant = match &event {
            Ok(event) => is_relevant(event),
            Err(e) => {
                debug!("manifests: watch error: {e}");
                true
            }
        };
        if relevant {
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Everything but reads: our own reads of the files show up as open and
/// close-without-write events, which must not trigger another read.
fn is_relevant(event: &Event) -> bool {
    match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}
