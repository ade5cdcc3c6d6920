//! Ferry's agent: computes what kube-proxy would serve and programs the eBPF
//! datapath to serve it.

pub mod model;
pub mod source;
