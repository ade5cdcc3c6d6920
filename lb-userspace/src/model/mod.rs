//! From Kubernetes objects to the desired datapath state, as kube-proxy
//! computes it. Pure: no I/O, no clock.
//!
//! - [`ip`]: lenient IP/CIDR parsing (kube-proxy's ParseIPSloppy).
//! - `service`: a v1 Service, defaulted and validated.
//! - `slice_info`: what the model keeps of an EndpointSlice.
//! - `endpoints`: EndpointSlices merged per Service, port and family.
//! - `topology`: kube-proxy's CategorizeEndpoints.
//! - `plan`: one Service's backend sets and the frontends it asks for, as
//!   clients on this node reach them (the socket datapath) and as clients
//!   outside it do (the packet datapath: externalTrafficPolicy, source
//!   ranges).
//! - `merge`: conflicts between Services settled; the desired state.
//! - `compute`: all of the above from scratch.
//! - `explain`: one frontend's decision, endpoint by endpoint, recorded
//!   by the same functions while they decide (`ferry explain`).
//! - `incremental`: the same result, reusing what did not change since the
//!   last pass (`memo`: results remembered by object identity; `patch`: the
//!   last desired state updated for Services whose claims did not change;
//!   `reports`: the invalid objects, counted per cause).
//! - `node`: this node's addresses and zone.
//!
//! Where kube-proxy's behaviour does not decide, the model chooses:
//! - Objects are read as the API server would have defaulted them (files in
//!   standalone mode are not): a nil EndpointSlice port name is "", a nil
//!   protocol TCP, a missing namespace "default".
//! - Bad input is reported as an [`InvalidObject`] and only the bad part is
//!   skipped: a port, an address, a source range, an endpoint, the health
//!   check; the whole object only when every frontend depends on the bad
//!   field (ClusterIP, type, traffic policy, session affinity). See
//!   `service` and `endpoints`.
//! - Conflicting claims (frontend, ClusterIP, NodePort, health check port)
//!   go to the Service sorted first by namespace/name; the later one loses
//!   only the conflicting part. An object defined twice (files only) is
//!   ignored altogether, so that input order never matters.
//! - The health check counts the primary family's endpoints, as the health
//!   server load balancers probe (kube-proxy runs one per family).

mod compute;
mod endpoints;
mod explain;
mod incremental;
pub mod ip;
mod memo;
mod merge;
mod meta;
mod node;
mod patch;
mod plan;
mod reports;
mod service;
mod slice_info;
mod topology;
mod types;

#[cfg(test)]
mod incremental_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use compute::compute;
pub use explain::{
    DesiredBackend, EndpointExplanation, ExplainError, ExplainQuery, Explanation,
    ExternalExplanation, FrontendExplanation, SelectionExplanation, explain, kind_name,
};
pub use incremental::{Incremental, Recompute};
pub use node::node_info;
pub use slice_info::{EndpointAddress, EndpointInfo, EndpointSliceInfo, LABEL_SERVICE_NAME};
pub use topology::EndpointReason;
pub use types::*;

/// Hash maps for lookups on the control loop's hot path. Keys are
/// addresses, ports, names and pointers from the API server or the agent
/// itself, not from network peers, so SipHash's flooding resistance buys
/// nothing; a fixed seed keeps runs reproducible.
pub(crate) type FoldHashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::FixedState>;
