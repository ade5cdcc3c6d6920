//! The eBPF object, built by build.rs (aya-build) and embedded in the
//! binary, so `ferry` is one self-contained file.

/// The ELF object holding every program and map of the datapath. Empty when
/// the agent was built with AYA_BUILD_SKIP=1.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb"));

/// Program names (the functions in lb-ebpf/src/sock.rs).
pub const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    "ferry_connect4",
    "ferry_connect6",
    "ferry_sendmsg4",
    "ferry_sendmsg6",
    "ferry_recvmsg4",
    "ferry_recvmsg6",
    "ferry_getpeername4",
    "ferry_getpeername6",
];
pub const SOCK_PROGRAMS: [&str; 3] = ["ferry_sock_release", "ferry_post_bind4", "ferry_post_bind6"];
