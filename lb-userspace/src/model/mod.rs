//! From Kubernetes objects to the desired datapath state, as kube-proxy
//! computes it. Pure: no I/O, no clock.

mod types;

pub use types::*;
