//! From Kubernetes objects to the desired datapath state, as kube-proxy
//! computes it. Pure: no I/O, no clock.
//!
//! - [`ip`]: lenient IP/CIDR parsing (kube-proxy's ParseIPSloppy).
//! - `service`: a v1 Service, defaulted and validated.
//! - `endpoints`: EndpointSlices merged per Service, port and family.
//! - `topology`: kube-proxy's CategorizeEndpoints.
//! - `compute`: frontends, backend sets, ClusterIPs, NodePorts, health checks.
//! - `node`: this node's addresses and zone.

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
