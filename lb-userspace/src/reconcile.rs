//! The control loop: wait for a new snapshot, recompute the whole desired
//! state, diff it against the datapath. Bursts of changes are coalesced,
//! but no change waits longer than `MAX_DELAY`.

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::{
    datapath::{Datapath, SyncReport},
    model::{self, Computed, InvalidObject, NodeInfo},
    source::{Snapshot, SnapshotReceiver},
};

/// Quiet time that ends a burst of changes.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// The longest a change may wait for a sync while changes keep coming.
pub const MAX_DELAY: Duration = Duration::from_millis(500);

/// How the node is described on the command line.
#[derive(Clone, Debug, Default)]
pub struct NodeConfig {
    pub name: String,
    /// --node-ip; when empty the Node object's addresses, else the host's.
    pub ips: Vec<IpAddr>,
    /// The host's own addresses, the last fallback.
    pub host_ips: Vec<IpAddr>,
}

impl NodeConfig {
    pub fn node_info(&self, snapshot: &Snapshot) -> NodeInfo {
        let mut info = model::node_info(snapshot.node.as_deref(), &self.name, &self.ips);
        if info.addresses.is_empty() {
            info.addresses = self.host_ips.clone();
        }
        info
    }
}

/// Result of one pass, for logs, metrics and status.
#[derive(Clone, Debug, Default)]
pub struct Pass {
    pub node: NodeInfo,
    pub computed: Computed,
    pub report: SyncReport,
    pub duration: Duration,
}

/// Keeps invalid-object logs to one line per object and reason.
#[derive(Default)]
pub struct InvalidLog {
    seen: HashSet<InvalidObject>,
}

impl InvalidLog {
    pub fn report(&mut self, invalid: &[InvalidObject]) {
        let now: HashSet<InvalidObject> = invalid.iter().cloned().collect();
        for obj in now.difference(&self.seen) {
            tracing::warn!(
                kind = %obj.kind,
                namespace = %obj.namespace,
                name = %obj.name,
                reason = %obj.reason,
                "skipping invalid object: {obj}"
            );
        }
        self.seen = now;
    }
}

/// One full pass: compute, sync, log.
pub fn reconcile_once(
    datapath: &mut Datapath,
    node: &NodeConfig,
    snapshot: &Snapshot,
    log: &mut InvalidLog,
) -> Pass {
    let started = Instant::now();
    let info = node.node_info(snapshot);
    let mut computed = model::compute(&snapshot.cluster, &info);
    computed.invalid.extend(snapshot.invalid.iter().cloned());
    log.report(&computed.invalid);
    let report = datapath.sync(&computed.desired);
    for e in &report.errors {
        tracing::error!(what = %e.what, reason = %e.reason, "datapath write failed; will retry");
    }
    if report.udp_sockets_destroyed > 0 {
        tracing::info!(
            sockets = report.udp_sockets_destroyed,
            "destroyed connected UDP sockets of departed backends"
        );
    }
    let duration = started.elapsed();
    tracing::debug!(
        changes = report.changes,
        frontends = computed.desired.frontends.len(),
        sets = computed.desired.backend_sets.len(),
        ?duration,
        "synced"
    );
    Pass {
        node: info,
        computed,
        report,
        duration,
    }
}

/// Waits for the next snapshot worth syncing: the first change after a
/// quiet `DEBOUNCE`, or `MAX_DELAY` after the first change of a burst.
/// Returns None when the source is gone.
pub async fn next_snapshot(rx: &mut SnapshotReceiver) -> Option<Arc<Snapshot>> {
    rx.changed().await.ok()?;
    let first = Instant::now();
    loop {
        let remaining = MAX_DELAY.saturating_sub(first.elapsed());
        if remaining.is_zero() {
            break;
        }
        match tokio::time::timeout(DEBOUNCE.min(remaining), rx.changed()).await {
            Ok(Ok(())) => continue,
            Ok(Err(_)) => break,
            Err(_) => break,
        }
    }
    rx.borrow_and_update().clone()
}

/// Runs until `shutdown` fires or the source ends. Nothing is written
/// before the source's first complete snapshot.
pub async fn run(
    mut datapath: Datapath,
    node: NodeConfig,
    mut rx: SnapshotReceiver,
    mut shutdown: watch::Receiver<bool>,
    mut on_pass: impl FnMut(&Pass),
) {
    let mut log = InvalidLog::default();
    // A snapshot may already be there before we start waiting.
    if let Some(snapshot) = rx.borrow_and_update().clone() {
        on_pass(&reconcile_once(&mut datapath, &node, &snapshot, &mut log));
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            next = next_snapshot(&mut rx) => match next {
                Some(snapshot) => {
                    on_pass(&reconcile_once(&mut datapath, &node, &snapshot, &mut log));
                }
                None if rx.has_changed().is_err() => break,
                None => {}
            },
        }
    }
}
