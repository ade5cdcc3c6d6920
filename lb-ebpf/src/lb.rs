//! Service load balancing at the socket layer: the decisions are
//! `lb_common::socket_lb` (forward, affinity, reverse, what a socket
//! remembers); this is their environment in the kernel, the maps and
//! helpers, for one family ([`Family`]) and one program run. Handles are
//! pointers into map values, so the decisions add no lookup.

use core::{ffi::c_void, marker::PhantomData};

use aya_ebpf::{
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    programs::SockAddrContext,
};
use lb_common::{
    AffinityKey, AffinityValue, FrontendValue, Slot, SlotKey,
    socket_lb::{Peer, SocketEnv},
};

use crate::{
    family::{Addr, Family},
    maps::{AFFINITY, COUNTERS, SLOTS},
};

/// The kernel's [`SocketEnv`]: the program's context (a `bpf_sock_addr`,
/// or for `forget` a `bpf_sock`) and the family's maps.
pub(crate) struct Sock<F> {
    ctx: *mut c_void,
    family: PhantomData<F>,
}

impl<F> Sock<F> {
    #[inline(always)]
    pub(crate) fn new(ctx: *mut c_void) -> Self {
        Self {
            ctx,
            family: PhantomData,
        }
    }
}

// Every handle below came from this environment's own lookup in this
// program run: a live element of an array, of an LRU hash (RCU keeps it
// for the run), or of the socket's local storage (live as long as the
// socket). That is the SAFETY of each dereference.
impl<F: Family> SocketEnv for Sock<F> {
    type Family = F::Inet;
    type Affinity = *mut AffinityValue;
    type Socket = *mut F::Socket;
    type Peers = *mut F::Peers;

    #[inline(always)]
    fn frontend(&self, addr: Addr<F>, port: u16, proto: u8) -> Option<FrontendValue> {
        F::frontend(addr, port, proto).copied()
    }

    #[inline(always)]
    fn cluster_ip(&self, addr: Addr<F>) -> Option<u32> {
        F::cluster_ip(addr)
    }

    #[inline(always)]
    fn slot(&self, fe: &FrontendValue, slot: u32) -> Option<Slot> {
        let key = SlotKey {
            service_id: fe.service_id,
            slot,
        };
        unsafe { SLOTS.get(key).copied() }
    }

    #[inline(always)]
    fn random(&self) -> u32 {
        unsafe { bpf_get_prandom_u32() }
    }

    #[inline(always)]
    fn socket_cookie(&self) -> u64 {
        unsafe { bpf_get_socket_cookie(self.ctx) }
    }

    #[inline(always)]
    fn netns_cookie(&self) -> u64 {
        unsafe { bpf_get_netns_cookie(self.ctx) }
    }

    #[inline(always)]
    fn now_ns(&self) -> u64 {
        unsafe { bpf_ktime_get_ns() }
    }

    #[inline(always)]
    fn count(&self, service_id: u32, refused: bool) {
        if let Some(c) = COUNTERS.get_ptr_mut(service_id) {
            // Per-CPU: no other writer can race with us on this CPU's slot.
            unsafe {
                if refused {
                    (*c).refused += 1;
                } else {
                    (*c).translated += 1;
                }
            }
        }
    }

    #[inline(always)]
    fn affinity(&self, key: &AffinityKey) -> Option<(*mut AffinityValue, AffinityValue)> {
        let prev = AFFINITY.get_ptr_mut(key)?;
        // Another CPU may update this entry at the same time (the same
        // client connecting on two CPUs): copied out whole, never borrowed.
        Some((prev, unsafe { core::ptr::read_volatile(prev) }))
    }

    #[inline(always)]
    fn affinity_touch(&self, entry: *mut AffinityValue, now_ns: u64) {
        // One aligned 8-byte store that cannot tear.
        unsafe {
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*entry).last_used_ns), now_ns);
        };
    }

    #[inline(always)]
    fn affinity_insert(&self, key: &AffinityKey, value: &AffinityValue) {
        let _ = AFFINITY.insert(key, value, 0);
    }

    #[inline(always)]
    fn socket(&self, cookie: u64) -> Option<*mut F::Socket> {
        F::socket(cookie)
    }

    // The cookie word (8-byte aligned, the value's first field) is read
    // and written whole, and claimed by compare-and-swap.

    #[inline(always)]
    fn socket_owner(&self, s: *mut F::Socket) -> u64 {
        unsafe { F::socket_cookie(s).read_volatile() }
    }

    /// BPF_CMPXCHG on a map value (Linux 5.12).
    #[inline(always)]
    fn socket_claim(&self, s: *mut F::Socket, cookie: u64) -> bool {
        use core::intrinsics::{AtomicOrdering, atomic_cxchg};
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(
                F::socket_cookie(s),
                0,
                cookie,
            )
            .1
        }
    }

    #[inline(always)]
    fn socket_read(&self, s: *mut F::Socket) -> Peer<Addr<F>> {
        unsafe { F::read(F::socket_entry(s)) }
    }

    #[inline(always)]
    fn socket_write(&self, s: *mut F::Socket, peer: Peer<Addr<F>>) {
        unsafe { F::write(F::socket_entry(s), peer) }
    }

    #[inline(always)]
    fn socket_free(&self, s: *mut F::Socket) {
        unsafe { F::socket_cookie(s).write_volatile(0) }
    }

    #[inline(always)]
    fn peers(&self) -> Option<*mut F::Peers> {
        let sa = SockAddrContext::new(self.ctx.cast());
        // SAFETY: the context's socket is live for the whole program run.
        let peers = unsafe { F::peers().get_ptr_mut(&sa) };
        (!peers.is_null()).then_some(peers)
    }

    #[inline(always)]
    fn peers_get_or_create(&self) -> Option<*mut F::Peers> {
        let sa = SockAddrContext::new(self.ctx.cast());
        // SAFETY: the context's socket is live for the whole program run.
        let peers = unsafe { F::peers().get_or_insert_ptr_mut(&sa, None) };
        (!peers.is_null()).then_some(peers)
    }

    // Entry i < capacity::SOCK_PEERS: in bounds of the storage value.

    #[inline(always)]
    fn peers_read(&self, peers: *mut F::Peers, i: usize) -> Peer<Addr<F>> {
        unsafe { F::read(F::peers_entry(peers, i)) }
    }

    #[inline(always)]
    fn peers_write(&self, peers: *mut F::Peers, i: usize, peer: Peer<Addr<F>>) {
        unsafe { F::write(F::peers_entry(peers, i), peer) }
    }

    #[inline(always)]
    fn peers_next(&self, peers: *mut F::Peers) -> u32 {
        unsafe {
            let next = F::next_ptr(peers);
            let n = next.read_volatile();
            next.write_volatile(n.wrapping_add(1));
            n
        }
    }
}
