//! Service load balancing at the socket layer: the forward path (connect,
//! sendmsg) picks a backend for a frontend; the reverse path (recvmsg,
//! getpeername) makes a translated socket's peer look like the frontend.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    programs::SockAddrContext,
};
use lb_common::{
    AffinityKey, AffinityValue, FRONTEND_F_AFFINITY, FRONTEND_F_DROP, FrontendValue, SlotKey,
    capacity,
};

use crate::{
    family::{Family, Peer, ring},
    maps::{AFFINITY, COUNTERS, SLOTS},
};

/// errno values the forward path may fail a syscall with.
pub(crate) const ECONNREFUSED: i32 = 111;
pub(crate) const EHOSTUNREACH: i32 = 113;

pub(crate) enum Verdict<A> {
    /// Not a frontend: leave the socket alone.
    Pass,
    /// Send to this backend (address, port in network order).
    Translate(A, u16),
    /// Fail the syscall with this errno.
    Refuse(i32),
}

/// How the forward path picks among a frontend's backends.
#[derive(Clone, Copy)]
pub(crate) enum Pick {
    /// A fresh random choice (connect: one decision per socket).
    Random,
    /// Derived from the socket cookie (unconnected UDP sendmsg: every
    /// datagram of one socket goes to the same backend while the set is
    /// unchanged, so a client's request and retries meet one server).
    SocketCookie,
}

const NSEC_PER_SEC: u64 = 1_000_000_000;

#[inline(always)]
fn count(service_id: u32, refused: bool) {
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
fn backend_at(service_id: u32, slot: u32) -> Option<u32> {
    unsafe { SLOTS.get(SlotKey { service_id, slot }).copied() }
}

/// Picks a slot in 1..=count and returns (slot, backend id).
#[inline(always)]
fn pick_slot(ctx: *mut c_void, fe: &FrontendValue, pick: Pick) -> Option<(u32, u32)> {
    let count = u32::from(fe.count);
    let r = match pick {
        Pick::Random => unsafe { bpf_get_prandom_u32() },
        Pick::SocketCookie => {
            let cookie = unsafe { bpf_get_socket_cookie(ctx) };
            // Fibonacci hashing: spreads sequential cookies over the slots.
            (cookie.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
        }
    };
    let slot = (r % count) + 1;
    backend_at(fe.service_id, slot).map(|id| (slot, id))
}

/// sessionAffinity ClientIP: the client (its network namespace) keeps its
/// backend while the timeout has not passed since its last connect and the
/// backend is still in the set; otherwise a new one is chosen and recorded.
#[inline(always)]
fn pick_with_affinity(ctx: *mut c_void, fe: &FrontendValue, pick: Pick) -> Option<u32> {
    let key = AffinityKey {
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx) },
        service_id: fe.service_id,
        _pad: 0,
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let timeout_ns = u64::from(fe.affinity_timeout_secs) * NSEC_PER_SEC;
    if let Some(prev) = AFFINITY.get_ptr_mut(key) {
        // Another CPU may update this entry at the same time (the same
        // client connecting on two CPUs), so it is never borrowed: the
        // value is copied out, and only `last_used_ns` is written back, as
        // one aligned 8-byte store that cannot tear.
        let entry = unsafe { core::ptr::read_volatile(prev) };
        let fresh = now.wrapping_sub(entry.last_used_ns) <= timeout_ns;
        let still_member = entry.slot >= 1
            && entry.slot <= u32::from(fe.count)
            && backend_at(fe.service_id, entry.slot) == Some(entry.backend_id);
        if fresh && still_member {
            unsafe {
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*prev).last_used_ns), now);
            };
            return Some(entry.backend_id);
        }
    }
    let (slot, backend_id) = pick_slot(ctx, fe, pick)?;
    let value = AffinityValue {
        backend_id,
        slot,
        last_used_ns: now,
    };
    // Best effort: without an entry the next connect simply picks again.
    let _ = AFFINITY.insert(key, value, 0);
    Some(backend_id)
}

/// The forward path: frontend → backend.
#[inline(always)]
pub(crate) fn forward<F: Family>(
    ctx: *mut c_void,
    addr: F::Addr,
    port: u16,
    proto: u8,
    pick: Pick,
) -> Verdict<F::Addr> {
    let Some(fe) = F::frontend(addr, port, proto) else {
        // A known ClusterIP on a port (or protocol) the Service does not
        // define: kube-proxy REJECTs. Any other address is not ours.
        return match F::cluster_ip(addr) {
            Some(service_id) => {
                count(service_id, true);
                Verdict::Refuse(ECONNREFUSED)
            }
            None => Verdict::Pass,
        };
    };
    let fe = *fe;
    if fe.count == 0 {
        count(fe.service_id, true);
        let errno = if fe.flags & FRONTEND_F_DROP != 0 {
            EHOSTUNREACH
        } else {
            ECONNREFUSED
        };
        return Verdict::Refuse(errno);
    }
    let backend_id = if fe.flags & FRONTEND_F_AFFINITY != 0 {
        pick_with_affinity(ctx, &fe, pick)
    } else {
        pick_slot(ctx, &fe, pick).map(|(_, id)| id)
    };
    // The agent writes backends before slots and slots before the count,
    // so a miss here means the maps were changed behind its back: refuse
    // rather than send the packet to a virtual address.
    let Some(backend) = backend_id.and_then(F::backend) else {
        count(fe.service_id, true);
        return Verdict::Refuse(ECONNREFUSED);
    };
    let (baddr, bport) = F::backend_addr(backend);
    remember::<F>(ctx, baddr, bport, addr, port, fe.service_id);
    count(fe.service_id, false);
    Verdict::Translate(baddr, bport)
}

/// Records backend → frontend in this socket's storage, for recvmsg and
/// getpeername. The storage is created on the socket's first translation
/// and freed by the kernel with the socket. An entry for the same backend
/// is overwritten (a reconnect, or a sendmsg to a frontend whose backend
/// the socket already talks to); otherwise a free entry is taken, and when
/// all `capacity::SOCK_PEERS` are used the one written longest ago is
/// replaced. From sendmsg nothing is written when the entry is already
/// there: a UDP socket sending many datagrams to one frontend only reads.
#[inline(always)]
fn remember<F: Family>(
    ctx: *mut c_void,
    backend: F::Addr,
    backend_port: u16,
    frontend: F::Addr,
    frontend_port: u16,
    service_id: u32,
) {
    let sa = SockAddrContext::new(ctx.cast());
    // SAFETY: the context's socket is live for the whole program run.
    let peers = unsafe { F::peers().get_or_insert_ptr_mut(&sa, None) };
    if peers.is_null() {
        // Out of memory: the peer simply shows as the backend.
        return;
    }
    let entry = Peer {
        frontend,
        frontend_port,
        backend,
        backend_port,
        service_id,
    };
    let mut free = None;
    for i in 0..capacity::SOCK_PEERS {
        // SAFETY: `peers` is this socket's live storage; i is in bounds.
        let p = unsafe { F::peer(peers, i) };
        if p.service_id == 0 {
            if free.is_none() {
                free = Some(i);
            }
            continue;
        }
        if p.backend == backend && p.backend_port == backend_port {
            if p.frontend != frontend
                || p.frontend_port != frontend_port
                || p.service_id != service_id
            {
                unsafe { F::set_peer(peers, i, entry) };
            }
            return;
        }
    }
    let i = match free {
        Some(i) => i,
        None => unsafe {
            let next = F::next_ptr(peers);
            let n = next.read_volatile();
            next.write_volatile(n.wrapping_add(1));
            ring(n)
        },
    };
    unsafe { F::set_peer(peers, i, entry) };
}

/// The reverse path: if this socket was translated to (addr, port), returns
/// the frontend to show instead. The entry is checked against the current
/// frontend, so a Service that was removed or renumbered no longer rewrites.
#[inline(always)]
pub(crate) fn reverse<F: Family>(
    ctx: *mut c_void,
    addr: F::Addr,
    port: u16,
    proto: u8,
) -> Option<(F::Addr, u16)> {
    let sa = SockAddrContext::new(ctx.cast());
    // SAFETY: the context's socket is live for the whole program run.
    let peers = unsafe { F::peers().get_ptr_mut(&sa) };
    if peers.is_null() {
        return None;
    }
    for i in 0..capacity::SOCK_PEERS {
        // SAFETY: as in `remember`.
        let p = unsafe { F::peer(peers, i) };
        if p.service_id != 0 && p.backend == addr && p.backend_port == port {
            return match F::frontend(p.frontend, p.frontend_port, proto) {
                Some(fe) if fe.service_id == p.service_id => Some((p.frontend, p.frontend_port)),
                _ => None,
            };
        }
    }
    None
}
