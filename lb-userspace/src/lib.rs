//! Ferry's agent: computes what kube-proxy would serve and programs the eBPF
//! datapath to serve it.
//!
//! - `model`: Kubernetes objects → desired state (pure).
//! - `source`: where objects come from (manifest files, the API server).
//! - `datapath`: the eBPF programs and maps, and syncing them.
//! - `reconcile`: the loop between the two.
//! - `agent`: `ferry agent`'s wiring: health, metrics, status, events.
//! - `explain`: `ferry explain`: the running Ferry's decision for a
//!   frontend (over its unix socket) beside what the maps hold.
//!
//! The throwaway namespaces and cgroups the tests, the bench and the demo
//! run it in are the `sandbox` crate, not part of this one.

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod explain;
pub mod healthcheck;
pub mod http;
pub mod model;
pub mod netutil;
pub mod reconcile;
pub mod source;

// Dependencies of the `ferry` binary alone (main.rs): a package cannot
// declare dependencies for one of its targets.
use anyhow as _;
use tracing_subscriber as _;
