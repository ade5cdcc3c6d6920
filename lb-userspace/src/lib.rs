//! Ferry's agent: computes what kube-proxy would serve and programs the eBPF
//! datapath to serve it.
//!
//! - `model`: Kubernetes objects → desired state (pure).
//! - `source`: where objects come from (manifest files, the API server).
//! - `datapath`: the eBPF programs and maps, and syncing them.
//! - `reconcile`: the loop between the two.
//! - `agent`: `ferry agent`'s wiring: health, metrics, status, events.
//! - `sandbox`: throwaway namespaces and cgroups to run it in (the demo,
//!   the test harness).

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod demo;
pub mod healthcheck;
pub mod http;
pub mod model;
pub mod netutil;
pub mod reconcile;
pub mod sandbox;
pub mod source;
