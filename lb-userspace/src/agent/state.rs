//! The agent's shared view of itself: kube-proxy's proxy health (changes
//! queued, changes synced), the API server connection, the watches and the
//! last sync. Written by the source's observer and the reconciler's pass
//! hook; read by /healthz, /livez and /status.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError, Weak},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1::Node;

use super::status::{self, Counts, LastSync, Status};
use crate::{reconcile::PassContext, source::Snapshot, source::kube::Watched};

/// The taint the cluster autoscaler puts on a node it is about to delete.
pub const TAINT_TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// Invalid objects listed in /status, at most.
const STATUS_INVALID: usize = 20;
/// Unsynced snapshots remembered, at most (the oldest is always kept).
const MAX_PENDING: usize = 1024;

/// kube-proxy's node eligibility: not being deleted, not marked for
/// deletion by the cluster autoscaler (other taints do not matter). No
/// Node (yet) counts as eligible.
pub fn node_eligible(node: Option<&Node>) -> bool {
    let Some(node) = node else {
        return true;
    };
    let marked = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED));
    node.metadata.deletion_timestamp.is_none() && !marked
}

/// RFC 3339, as the API server writes times.
pub fn rfc3339(t: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// What one pass left programmed.
pub fn counts(ctx: &PassContext<'_>) -> Counts {
    let services: BTreeSet<_> = ctx
        .pass
        .computed
        .desired
        .backend_sets
        .keys()
        .map(|k| &k.service)
        .collect();
    let installed = &ctx.datapath.installed;
    Counts {
        services: services.len(),
        frontends: installed.frontends.len(),
        backend_sets: installed.sets.len(),
        backends: installed.backends.len(),
        invalid_objects: ctx.pass.computed.invalid.len(),
    }
}

/// The verdict of /healthz and /livez.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// No queued change has waited the health timeout (/livez).
    pub healthy: bool,
    pub node_eligible: bool,
    /// The last completed sync; None before the first.
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
}

struct Inner {
    /// Published snapshots not synced yet, oldest first, each with when
    /// the oldest change it carries arrived.
    pending: VecDeque<(Weak<Snapshot>, Instant)>,
    last_updated: Option<SystemTime>,
    node_eligible: bool,
    api: status::ApiServer,
    watches: BTreeMap<Watched, status::Watch>,
    last_sync: Option<LastSync>,
    counts: Counts,
    invalid: Vec<String>,
    repairs: u64,
}

pub struct AgentState {
    node_name: String,
    /// kube-proxy's healthTimeout: twice the sync period.
    health_timeout: Duration,
    inner: Mutex<Inner>,
}

impl AgentState {
    pub fn new(node_name: &str, sync_period: Duration) -> Self {
        let watches = Watched::ALL
            .iter()
            .map(|w| {
                (
                    *w,
                    status::Watch {
                        resource: w.to_string(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        AgentState {
            node_name: node_name.to_string(),
            health_timeout: sync_period * 2,
            inner: Mutex::new(Inner {
                pending: VecDeque::new(),
                last_updated: None,
                node_eligible: true,
                api: status::ApiServer::default(),
                watches,
                last_sync: None,
                counts: Counts::default(),
                invalid: Vec::new(),
                repairs: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// kube-proxy's QueuedUpdate: `snapshot` carries changes that arrived
    /// from `since` on. Also takes the Node's eligibility from it.
    pub fn queued(&self, snapshot: &Arc<Snapshot>, since: Instant) {
        let mut inner = self.lock();
        inner.node_eligible = node_eligible(snapshot.node.as_deref());
        if inner.pending.len() >= MAX_PENDING {
            // Keep the oldest (it decides health) and the newest.
            inner.pending.remove(1);
        }
        inner.pending.push_back((Arc::downgrade(snapshot), since));
    }

    /// kube-proxy's Updated: `snapshot` is in the datapath now, and with
    /// it every snapshot published before it. Returns how long the oldest
    /// change it brought had waited (None when it brought none: a repair
    /// pass, a snapshot published before anyone observed).
    pub fn synced(&self, snapshot: &Arc<Snapshot>) -> Option<Duration> {
        let mut inner = self.lock();
        inner.last_updated = Some(SystemTime::now());
        let pos = inner
            .pending
            .iter()
            .position(|(w, _)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(snapshot)))?;
        let oldest = inner.pending.front().map(|(_, t)| *t)?;
        inner.pending.drain(..=pos);
        Some(oldest.elapsed())
    }

    pub fn health(&self) -> Health {
        self.health_at(Instant::now(), SystemTime::now())
    }

    /// Healthy at start; after the first sync, unhealthy while a change
    /// has waited the health timeout or more.
    pub fn health_at(&self, now: Instant, wall: SystemTime) -> Health {
        let inner = self.lock();
        let late = inner
            .pending
            .front()
            .is_some_and(|(_, t)| now.saturating_duration_since(*t) >= self.health_timeout);
        Health {
            healthy: inner.last_updated.is_none() || !late,
            node_eligible: inner.node_eligible,
            last_updated: inner.last_updated,
            current_time: wall,
        }
    }

    pub fn api_contact(&self, result: Result<u16, String>) {
        let mut inner = self.lock();
        match result {
            Ok(_) => {
                inner.api.connected = true;
                inner.api.last_contact = Some(rfc3339(SystemTime::now()));
            }
            Err(e) => {
                inner.api.connected = false;
                inner.api.last_error = Some(e);
            }
        }
    }

    pub fn watch_error(&self, what: Watched, error: String) {
        let mut inner = self.lock();
        if let Some(w) = inner.watches.get_mut(&what) {
            w.restarts += 1;
            w.last_error = Some(error);
        }
    }

    pub fn listed(&self, what: Watched) {
        if let Some(w) = self.lock().watches.get_mut(&what) {
            w.listed = true;
        }
    }

    /// Takes in what a pass did.
    pub fn record_pass(&self, ctx: &PassContext<'_>) {
        let pass = ctx.pass;
        let mut inner = self.lock();
        inner.last_sync = Some(LastSync {
            time: rfc3339(SystemTime::now()),
            duration_seconds: pass.duration.as_secs_f64(),
            changes: pass.report.changes,
            errors: pass
                .report
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.what, e.reason))
                .collect(),
        });
        inner.counts = counts(ctx);
        inner.invalid = pass
            .computed
            .invalid
            .iter()
            .take(STATUS_INVALID)
            .map(ToString::to_string)
            .collect();
        if ctx.repair {
            inner.repairs += pass.report.changes as u64;
        }
    }

    pub fn status(&self) -> Status {
        let health = self.health();
        let inner = self.lock();
        Status {
            node: self.node_name.clone(),
            healthy: health.healthy,
            node_eligible: health.node_eligible,
            api_server: inner.api.clone(),
            watches: inner.watches.values().cloned().collect(),
            synced: inner.last_sync.is_some(),
            last_sync: inner.last_sync.clone(),
            counts: inner.counts.clone(),
            invalid: inner.invalid.clone(),
            repairs: inner.repairs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::core::v1::{NodeSpec, Taint},
        apimachinery::pkg::apis::meta::v1::Time,
    };

    const PERIOD: Duration = Duration::from_secs(30);

    fn snap() -> Arc<Snapshot> {
        Arc::new(Snapshot::default())
    }

    #[test]
    fn healthy_at_start_even_with_old_changes() {
        let state = AgentState::new("n", PERIOD);
        let t0 = Instant::now();
        state.queued(&snap(), t0);
        let h = state.health_at(t0 + PERIOD * 3, SystemTime::now());
        assert!(h.healthy);
        assert!(h.last_updated.is_none());
    }

    #[test]
    fn unhealthy_once_a_change_waited_twice_the_sync_period() {
        let state = AgentState::new("n", PERIOD);
        let t0 = Instant::now();
        let first = snap();
        state.queued(&first, t0);
        assert!(state.synced(&first).is_some());
        let second = snap();
        let t1 = Instant::now();
        state.queued(&second, t1);
        let wall = SystemTime::now();
        assert!(
            state
                .health_at(t1 + PERIOD * 2 - Duration::from_millis(1), wall)
                .healthy
        );
        assert!(!state.health_at(t1 + PERIOD * 2, wall).healthy);
        // A repair pass of an older snapshot does not clear it...
        assert_eq!(state.synced(&first), None);
        assert!(!state.health_at(t1 + PERIOD * 2, wall).healthy);
        // ... syncing it does.
        assert!(state.synced(&second).is_some());
        assert!(state.health_at(t1 + PERIOD * 5, wall).healthy);
    }

    #[test]
    fn syncing_a_later_snapshot_covers_the_skipped_ones() {
        let state = AgentState::new("n", PERIOD);
        let now = Instant::now();
        let past = now.checked_sub(Duration::from_secs(10)).unwrap();
        let future = now + Duration::from_secs(100);
        let (a, b, c) = (snap(), snap(), snap());
        state.queued(&a, past);
        state.queued(&b, future);
        state.queued(&c, future);
        // b is synced (a was skipped by the debounce): the wait counts from
        // a's change (b's has not even happened), and only c stays pending.
        assert!(state.synced(&b).unwrap() >= Duration::from_secs(10));
        assert_eq!(state.lock().pending.len(), 1);
        assert!(
            !state
                .health_at(future + PERIOD * 2, SystemTime::now())
                .healthy
        );
        state.synced(&c).unwrap();
        assert!(state.lock().pending.is_empty());
    }

    #[test]
    fn eligibility_follows_deletion_and_the_autoscaler_taint_only() {
        let taint = |key: &str| Node {
            spec: Some(NodeSpec {
                taints: Some(vec![Taint {
                    key: key.into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(node_eligible(None));
        assert!(node_eligible(Some(&Node::default())));
        assert!(node_eligible(Some(&taint(
            "node.kubernetes.io/unschedulable"
        ))));
        assert!(!node_eligible(Some(&taint(TAINT_TO_BE_DELETED))));
        let mut deleting = Node::default();
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        assert!(!node_eligible(Some(&deleting)));

        let state = AgentState::new("n", PERIOD);
        let s = Arc::new(Snapshot {
            node: Some(Arc::new(deleting)),
            ..Default::default()
        });
        state.queued(&s, Instant::now());
        let h = state.health();
        assert!(!h.node_eligible);
        assert!(h.healthy, "eligibility is not liveness");
    }

    #[test]
    fn connection_and_watch_status() {
        let state = AgentState::new("n", PERIOD);
        assert!(!state.status().api_server.connected);
        state.api_contact(Ok(200));
        assert!(state.status().api_server.connected);
        state.api_contact(Err("refused".into()));
        state.watch_error(Watched::Services, "boom".into());
        state.listed(Watched::Node);
        let s = state.status();
        assert!(!s.api_server.connected);
        assert_eq!(s.api_server.last_error.as_deref(), Some("refused"));
        let svc = s.watches.iter().find(|w| w.resource == "services").unwrap();
        assert_eq!((svc.restarts, svc.last_error.as_deref()), (1, Some("boom")));
        assert!(
            s.watches
                .iter()
                .find(|w| w.resource == "node")
                .unwrap()
                .listed
        );
        assert!(!s.synced);
    }
}
