//! Ferry's eBPF datapath: cgroup sock_addr programs that translate a
//! socket's destination from a Kubernetes Service frontend to one of its
//! backends, and back for recvmsg/getpeername; and post_bind programs that
//! keep host processes off NodePorts; and tc and XDP programs that
//! translate packets arriving from outside the node for external
//! frontends.
#![no_std]
#![no_main]
// The BPF target declares no compare-and-swap ("atomic-cas": false), so
// `AtomicU64::compare_exchange` does not exist there, although the
// instruction does (BPF_CMPXCHG, kernel 5.12): the intrinsic reaches it.
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_cxchg, see above"
)]

mod external;
mod family;
mod frame;
mod lb;
mod maps;
mod sock;

// The package's library target is empty (see lib.rs).
use lb_ebpf as _;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
