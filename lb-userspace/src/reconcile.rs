//! The control loop: wait for a new snapshot, recompute the whole desired
//! state, diff it against the datapath. A change after a quiet period is
//! synced at once; the changes of a burst are coalesced, but no change
//! waits longer than `MAX_DELAY` (see [`Debounce`]).

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Notify, watch};

use crate::{
    datapath::{Datapath, SyncReport},
    model::{self, Computed, Incremental, InvalidObject, NodeInfo, ReportCause, ip::Cidr},
    source::{Snapshot, SnapshotReceiver},
};

/// Quiet time that ends a burst of changes (and that makes the next change
/// a lone one, synced at once).
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// The longest a change may wait for a sync while changes keep coming.
pub const MAX_DELAY: Duration = Duration::from_millis(500);
/// How soon a pass whose map writes failed (a full map, say) is retried.
pub const RETRY: Duration = Duration::from_secs(1);

/// How the node is described on the command line.
#[derive(Clone, Debug, Default)]
pub struct NodeConfig {
    pub name: String,
    /// --node-ip; when empty the Node object's addresses, else the host's.
    pub ips: Vec<IpAddr>,
    /// The host's own addresses, the last fallback.
    pub host_ips: Vec<IpAddr>,
    /// --external-ip-cidr (empty: every externalIP is served).
    pub external_ip_cidrs: Vec<Cidr>,
}

impl NodeConfig {
    pub fn node_info(&self, snapshot: &Snapshot) -> NodeInfo {
        let mut info = model::node_info(snapshot.node.as_deref(), &self.name, &self.ips);
        if info.addresses.is_empty() {
            info.addresses = self.host_ips.clone();
        }
        info.external_ip_cidrs.clone_from(&self.external_ip_cidrs);
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
            let what = match obj.cause {
                ReportCause::Invalid => "skipping invalid object",
                ReportCause::ExternalIpNotAllowed => "externalIP not allowed",
            };
            tracing::warn!(
                kind = %obj.kind,
                namespace = %obj.namespace,
                name = %obj.name,
                reason = %obj.reason,
                "{what}: {obj}"
            );
        }
        self.seen = now;
    }
}

/// One full pass from scratch: compute, sync, log.
pub fn reconcile_once(
    datapath: &mut Datapath,
    node: &NodeConfig,
    snapshot: &Snapshot,
    log: &mut InvalidLog,
) -> Pass {
    reconcile_with(datapath, node, &mut Incremental::new(), snapshot, log)
}

/// One full pass, as the control loop runs it: compute (reusing what
/// `model` remembers of the objects that did not change), sync, log.
pub fn reconcile_with(
    datapath: &mut Datapath,
    node: &NodeConfig,
    model: &mut Incremental,
    snapshot: &Snapshot,
    log: &mut InvalidLog,
) -> Pass {
    let started = Instant::now();
    let info = node.node_info(snapshot);
    let mut computed = model.compute(&snapshot.cluster, &info);
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

/// When the control loop syncs a new snapshot. A change that comes after
/// `DEBOUNCE` without any is synced at once: a lone change pays no
/// debounce. A change within `DEBOUNCE` of the previous one is part of a
/// burst: it waits until `DEBOUNCE` passes without a change, or `MAX_DELAY`
/// after it, whichever is first, and the whole burst is synced in one pass.
/// Times are tokio's, so tests can run it on a paused clock.
#[derive(Debug, Default)]
pub struct Debounce {
    /// When the last change was seen.
    last_change: Option<tokio::time::Instant>,
}

impl Debounce {
    /// Waits for the next snapshot worth syncing. Returns None when the
    /// source is gone.
    pub async fn next(&mut self, rx: &mut SnapshotReceiver) -> Option<Arc<Snapshot>> {
        use tokio::time::Instant;
        rx.changed().await.ok()?;
        let first = Instant::now();
        let lone = self
            .last_change
            .is_none_or(|last| first.duration_since(last) >= DEBOUNCE);
        self.last_change = Some(first);
        if !lone {
            loop {
                let remaining = MAX_DELAY.saturating_sub(first.elapsed());
                if remaining.is_zero() {
                    break;
                }
                match tokio::time::timeout(DEBOUNCE.min(remaining), rx.changed()).await {
                    Ok(Ok(())) => self.last_change = Some(Instant::now()),
                    Ok(Err(_)) | Err(_) => break,
                }
            }
        }
        rx.borrow_and_update().clone()
    }
}

/// Runs until `shutdown` fires or the source ends. Nothing is written
/// before the source's first complete snapshot.
pub async fn run(
    datapath: Datapath,
    node: NodeConfig,
    rx: SnapshotReceiver,
    shutdown: watch::Receiver<bool>,
    mut on_pass: impl FnMut(&Pass),
) {
    let never = Arc::new(Notify::new());
    run_with(datapath, node, rx, shutdown, never, |ctx| on_pass(ctx.pass)).await;
}

/// One pass as `run_with` reports it.
pub struct PassContext<'a> {
    /// The snapshot the pass synced to.
    pub snapshot: &'a Arc<Snapshot>,
    pub pass: &'a Pass,
    /// The datapath after the pass (its mirror, its maps).
    pub datapath: &'a Datapath,
    /// The pass repaired drift: the maps had differed from the mirror, and
    /// `pass.report.changes` entries were rewritten or removed.
    pub repair: bool,
}

/// Compares the maps with the mirror. When they differ (an entry written
/// or deleted behind the agent's back, a write that was lost), the mirror
/// is replaced by what the maps hold, so that the next sync repairs every
/// difference. Returns whether they differed. A map that cannot be read
/// to the end proves nothing: the mirror stays, and the next check tries
/// again.
pub fn adopt_drift(datapath: &mut Datapath) -> bool {
    let actual = match crate::datapath::adopt::read_installed(&datapath.maps) {
        Ok(actual) => actual,
        Err(e) => {
            tracing::warn!(error = %e, "drift check: reading the maps back failed");
            return false;
        }
    };
    if actual == datapath.installed {
        return false;
    }
    datapath.installed = actual;
    true
}

/// `run`, plus drift repair: each notification of `repair` compares the
/// maps with the mirror and, when they differ, re-syncs the last snapshot
/// over what the maps really hold (see [`adopt_drift`]). Before the first
/// snapshot a notification does nothing: pinned state from a previous run
/// stays untouched until the source is complete.
pub async fn run_with(
    mut datapath: Datapath,
    node: NodeConfig,
    mut rx: SnapshotReceiver,
    mut shutdown: watch::Receiver<bool>,
    repair: Arc<Notify>,
    mut on_pass: impl FnMut(&PassContext<'_>),
) {
    let mut log = InvalidLog::default();
    // Held across passes: a pass costs what changed since the last one.
    let mut model = Incremental::new();
    let mut last: Option<Arc<Snapshot>> = None;
    let mut debounce = Debounce::default();
    // Whether the last pass left a failed write behind: then the same
    // snapshot is synced again after RETRY, until it goes through.
    let mut failed = false;
    let mut sync = |datapath: &mut Datapath, snapshot: &Arc<Snapshot>, repair: bool| {
        let pass = reconcile_with(datapath, &node, &mut model, snapshot, &mut log);
        on_pass(&PassContext {
            snapshot,
            pass: &pass,
            datapath,
            repair,
        });
        !pass.report.errors.is_empty()
    };
    // A snapshot may already be there before we start waiting.
    if let Some(snapshot) = rx.borrow_and_update().clone() {
        failed = sync(&mut datapath, &snapshot, false);
        last = Some(snapshot);
    }
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep(RETRY), if failed => {
                // The latest snapshot, not only the last synced one: a
                // debounce this branch interrupted may have marked a newer
                // one as seen.
                if let Some(snapshot) = rx.borrow_and_update().clone().or_else(|| last.clone()) {
                    failed = sync(&mut datapath, &snapshot, false);
                    last = Some(snapshot);
                }
            }
            _ = repair.notified() => {
                // Taken first: a debounce this branch interrupted may have
                // marked a new snapshot as seen.
                let latest = rx.borrow_and_update().clone();
                if let Some(prev) = &last && adopt_drift(&mut datapath) {
                    tracing::warn!("the maps differ from what this agent wrote; repairing");
                    failed = sync(&mut datapath, prev, true);
                }
                if let Some(snapshot) = latest
                    && !last.as_ref().is_some_and(|l| Arc::ptr_eq(l, &snapshot))
                {
                    failed = sync(&mut datapath, &snapshot, false);
                    last = Some(snapshot);
                }
            }
            next = debounce.next(&mut rx) => match next {
                Some(snapshot) => {
                    failed = sync(&mut datapath, &snapshot, false);
                    last = Some(snapshot);
                }
                None if rx.has_changed().is_err() => break,
                None => {}
            },
        }
    }
}

/// The control loop on a thread of its own.
pub struct LoopThread {
    done: tokio::sync::oneshot::Receiver<()>,
    thread: std::thread::JoinHandle<()>,
}

impl LoopThread {
    /// Waits (without blocking the caller's runtime) for the loop to end.
    pub async fn join(self) {
        let _ = self.done.await;
        let _ = self.thread.join();
    }
}

/// Runs `control_loop` ([`run`], [`run_with`]) on its own thread and
/// runtime: a pass blocks in syscalls (map writes, the sock_diag walk, the
/// drift read-back) for as long as it takes, and must not hold up the
/// async workers that answer health checks and follow the watches.
pub fn spawn_thread(
    control_loop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<LoopThread> {
    let (tx, done) = tokio::sync::oneshot::channel();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let thread = std::thread::Builder::new()
        .name("ferry-sync".into())
        .spawn(move || {
            rt.block_on(control_loop);
            let _ = tx.send(());
        })?;
    Ok(LoopThread { done, thread })
}

#[cfg(test)]
mod debounce_tests {
    use super::*;
    use tokio::time::{Instant, sleep};

    type Sender = watch::Sender<Option<Arc<Snapshot>>>;

    /// Sends a new snapshot (told apart from the others by its address).
    fn change(tx: &Sender) -> Arc<Snapshot> {
        let s = Arc::new(Snapshot::default());
        tx.send(Some(s.clone())).unwrap();
        s
    }

    /// `n` changes, `every` apart (the first `every` from now).
    fn changes(
        tx: Sender,
        n: usize,
        every: Duration,
    ) -> tokio::task::JoinHandle<Vec<Arc<Snapshot>>> {
        tokio::spawn(async move {
            let mut sent = Vec::new();
            for _ in 0..n {
                sleep(every).await;
                sent.push(change(&tx));
            }
            sent
        })
    }

    fn is(got: Option<&Arc<Snapshot>>, want: &Arc<Snapshot>) -> bool {
        got.is_some_and(|g| Arc::ptr_eq(g, want))
    }

    // The clock is paused: it moves only when every task waits on a timer,
    // straight to the next one, so the durations below are exact.
    #[tokio::test(start_paused = true)]
    async fn a_lone_change_is_synced_at_once_and_a_burst_in_one_pass() {
        let (tx, mut rx) = watch::channel(None);
        let mut debounce = Debounce::default();

        // The first change, and one after a quiet DEBOUNCE: no wait at all.
        let a = change(&tx);
        let at = Instant::now();
        assert!(is(debounce.next(&mut rx).await.as_ref(), &a));
        assert_eq!(at.elapsed(), Duration::ZERO);
        sleep(DEBOUNCE).await;
        let b = change(&tx);
        let at = Instant::now();
        assert!(is(debounce.next(&mut rx).await.as_ref(), &b));
        assert_eq!(at.elapsed(), Duration::ZERO);

        // Changes right after that one are a burst: three, 10 ms apart, are
        // synced once, as the last of them, DEBOUNCE after it.
        let burst = changes(tx.clone(), 3, Duration::from_millis(10));
        let at = Instant::now();
        let got = debounce.next(&mut rx).await;
        assert_eq!(at.elapsed(), Duration::from_millis(30) + DEBOUNCE);
        assert!(is(got.as_ref(), &burst.await.unwrap()[2]));

        // A burst that never pauses is synced MAX_DELAY after its first
        // change (7 ms from now), with what it holds then: the change of
        // 504 ms, the 72nd.
        sleep(DEBOUNCE).await;
        let d = change(&tx);
        assert!(is(debounce.next(&mut rx).await.as_ref(), &d));
        let burst = changes(tx.clone(), 100, Duration::from_millis(7));
        let first = Instant::now() + Duration::from_millis(7);
        let got = debounce.next(&mut rx).await;
        assert_eq!(first.elapsed(), MAX_DELAY);
        assert!(is(got.as_ref(), &burst.await.unwrap()[71]));
    }
}
