//! The eBPF object, built by build.rs (aya-build) and embedded in the
//! binary, so `ferry` is one self-contained file.

/// The ELF object holding every program and map of the datapath. Empty when
/// the agent was built with AYA_BUILD_SKIP=1.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));
