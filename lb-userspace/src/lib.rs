//! Ferry's agent: computes what kube-proxy would serve and programs the eBPF
//! datapath to serve it.
//!
//! - `model`: Kubernetes objects → desired state (pure).
//! - `source`: where objects come from (manifest files, the API server).
//! - `datapath`: the eBPF programs and maps, and syncing them.
//! - `reconcile`: the loop between the two.

pub mod cli;
pub mod datapath;
pub mod demo;
pub mod healthcheck;
pub mod http;
pub mod model;
pub mod netutil;
pub mod reconcile;
pub mod source;
