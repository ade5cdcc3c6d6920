//! Where Kubernetes objects come from: YAML files (standalone mode) or the
//! API server (agent mode). Every source publishes whole snapshots; the
//! reconciler recomputes the desired state from the latest one and diffs it
//! against the datapath, so no watch delta is ever applied to maps directly.

pub mod kube;
pub mod manifests;
pub mod slim;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::model::{ClusterState, InvalidObject};

/// Everything a source knows at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub cluster: ClusterState,
    /// This node's Node object, if the source has one.
    pub node: Option<Arc<Node>>,
    /// Objects the source could not even read (unparseable documents,
    /// unknown kinds), reported with their identity where known.
    pub invalid: Vec<InvalidObject>,
}

/// Sources send `Some(snapshot)` once their initial list is complete and on
/// every change after that; `None` means "not synced yet": the reconciler
/// must not touch the datapath until the first `Some`.
pub type SnapshotSender = tokio::sync::watch::Sender<Option<Arc<Snapshot>>>;
pub type SnapshotReceiver = tokio::sync::watch::Receiver<Option<Arc<Snapshot>>>;
