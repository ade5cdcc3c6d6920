//! From Kubernetes objects to the desired datapath state, as kube-proxy
//! computes it. Pure: no I/O, no clock.
//!
//! - [`ip`]: lenient IP/CIDR parsing (kube-proxy's ParseIPSloppy).
//! - `service`: a v1 Service, defaulted and validated.
//! - `endpoints`: EndpointSlices merged per Service, port and family.
//! - `topology`: kube-proxy's CategorizeEndpoints.
//! - `compute`: frontends, backend sets, ClusterIPs, NodePorts, health checks.
//! - `node`: this node's addresses and zone.
//!
//! Where kube-proxy's behaviour does not decide, the model chooses:
//! - Objects are read as the API server would have defaulted them (files in
//!   standalone mode are not): a nil EndpointSlice port name is "", a nil
//!   protocol TCP, a missing namespace "default".
//! - Bad input is reported as an [`InvalidObject`] and only the bad part is
//!   skipped: a port, an address, an endpoint, the health check; the whole
//!   object only when every frontend depends on the bad field (ClusterIP,
//!   type, traffic policy, session affinity). See `service` and `endpoints`.
//! - Conflicting claims (frontend, ClusterIP, NodePort, health check port)
//!   go to the Service sorted first by namespace/name; the later one loses
//!   only the conflicting part. An object defined twice (files only) is
//!   ignored altogether, so that input order never matters.
//! - The health check counts the primary family's endpoints, as the health
//!   server load balancers probe (kube-proxy runs one per family).

mod compute;
mod endpoints;
pub mod ip;
mod node;
mod service;
mod topology;
mod types;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;

pub use compute::compute;
pub use node::node_info;
pub use types::*;
