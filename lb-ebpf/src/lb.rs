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
    AffinityKey, AffinityValue, FRONTEND_F_AFFINITY, FRONTEND_F_DROP, FrontendValue, Slot, SlotKey,
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

/// The backend in a slot of a set, copied out of the map (the agent may
/// replace the entry while we run; a copy is one consistent version).
#[inline(always)]
fn backend_at(service_id: u32, slot: u32) -> Option<Slot> {
    unsafe { SLOTS.get(SlotKey { service_id, slot }).copied() }
}

/// Picks a slot in 1..=count and returns it with its backend.
#[inline(always)]
fn pick_slot(ctx: *mut c_void, fe: &FrontendValue, pick: Pick) -> Option<(u32, Slot)> {
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
    backend_at(fe.service_id, slot).map(|b| (slot, b))
}

/// sessionAffinity ClientIP: the client (its network namespace) keeps its
/// backend while the timeout has not passed since its last connect and the
/// backend is still in the set; otherwise a new one is chosen and recorded.
#[inline(always)]
fn pick_with_affinity(ctx: *mut c_void, fe: &FrontendValue, pick: Pick) -> Option<Slot> {
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
        if fresh
            && entry.slot >= 1
            && entry.slot <= u32::from(fe.count)
            && let Some(b) = backend_at(fe.service_id, entry.slot)
            && b.backend_id == entry.backend_id
        {
            unsafe {
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*prev).last_used_ns), now);
            };
            return Some(b);
        }
    }
    let (slot, backend) = pick_slot(ctx, fe, pick)?;
    let value = AffinityValue {
        backend_id: backend.backend_id,
        slot,
        last_used_ns: now,
    };
    // Best effort: without an entry the next connect simply picks again.
    let _ = AFFINITY.insert(key, value, 0);
    Some(backend)
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
    let backend = if fe.flags & FRONTEND_F_AFFINITY != 0 {
        pick_with_affinity(ctx, &fe, pick)
    } else {
        pick_slot(ctx, &fe, pick).map(|(_, b)| b)
    };
    // The agent writes slots before the count, so a miss here means the
    // maps were changed behind its back: refuse rather than send the
    // packet to a virtual address.
    let Some(backend) = backend else {
        count(fe.service_id, true);
        return Verdict::Refuse(ECONNREFUSED);
    };
    let (baddr, bport) = F::slot_backend(&backend);
    let entry = Peer {
        frontend: addr,
        frontend_port: port,
        backend: baddr,
        backend_port: bport,
        service_id: fe.service_id,
    };
    remember::<F>(ctx, entry, pick);
    count(fe.service_id, false);
    Verdict::Translate(baddr, bport)
}

/// Records backend → frontend for this socket, for recvmsg and
/// getpeername: in the socket table when the socket holds (or can claim)
/// its entry there, else in its socket-local storage.
///
/// A connected socket has one peer, so a reconnect overwrites its table
/// entry. An unconnected UDP socket (sendmsg) may talk to several
/// frontends: its first one goes to the table, further ones to storage.
#[inline(always)]
fn remember<F: Family>(ctx: *mut c_void, entry: Peer<F::Addr>, pick: Pick) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let s = F::socket(cookie);
    if !s.is_null() {
        // SAFETY: `s` is a live array element. Its cookie word (8-byte
        // aligned, the value's first field) is read and written whole,
        // and claimed by compare-and-swap.
        let owner = unsafe { F::socket_cookie(s) };
        let e = unsafe { F::socket_entry(s) };
        let held = unsafe { owner.read_volatile() };
        if held == cookie {
            // SAFETY: our own entry; see `Family::read`.
            let p = unsafe { F::read(e) };
            if same_backend::<F>(&p, &entry) {
                if !same_frontend::<F>(&p, &entry) {
                    unsafe { F::write(e, entry) };
                }
                return;
            }
            if matches!(pick, Pick::Random) {
                unsafe { F::write(e, entry) };
                return;
            }
        } else if held == 0 && claim(owner, cookie) {
            unsafe { F::write(e, entry) };
            return;
        }
    }
    remember_in_storage::<F>(ctx, &entry);
}

/// Compare-and-swap 0 → `cookie`: of two sockets racing for one entry,
/// exactly one wins it (BPF_CMPXCHG on a map value, Linux 5.12).
#[inline(always)]
fn claim(owner: *mut u64, cookie: u64) -> bool {
    use core::intrinsics::{AtomicOrdering, atomic_cxchg};
    // SAFETY: `owner` points to the cookie word of a live array element.
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::AcqRel }, { AtomicOrdering::Relaxed }>(
            owner, 0, cookie,
        )
        .1
    }
}

#[inline(always)]
fn same_backend<F: Family>(a: &Peer<F::Addr>, b: &Peer<F::Addr>) -> bool {
    a.backend == b.backend && a.backend_port == b.backend_port
}

#[inline(always)]
fn same_frontend<F: Family>(a: &Peer<F::Addr>, b: &Peer<F::Addr>) -> bool {
    a.frontend == b.frontend && a.frontend_port == b.frontend_port && a.service_id == b.service_id
}

/// Socket-local storage, created on the socket's first use of it and freed
/// by the kernel with the socket. An entry for the same backend is
/// overwritten; otherwise a free entry is taken, and when all
/// `capacity::SOCK_PEERS` are used the one written longest ago is replaced.
/// Nothing is written when the entry is already there: a UDP socket
/// sending many datagrams to one frontend only reads. A subprogram of its
/// own: the slow path keeps its stack out of the fast path's frame.
#[inline(never)]
fn remember_in_storage<F: Family>(ctx: *mut c_void, entry: &Peer<F::Addr>) {
    let entry = *entry;
    let sa = SockAddrContext::new(ctx.cast());
    // SAFETY: the context's socket is live for the whole program run.
    let peers = unsafe { F::peers().get_or_insert_ptr_mut(&sa, None) };
    if peers.is_null() {
        // Out of memory: the peer simply shows as the backend.
        return;
    }
    let mut free = None;
    for i in 0..capacity::SOCK_PEERS {
        // SAFETY: `peers` is this socket's live storage; i is in bounds.
        let e = unsafe { F::peers_entry(peers, i) };
        let p = unsafe { F::read(e) };
        if p.service_id == 0 {
            if free.is_none() {
                free = Some(i);
            }
            continue;
        }
        if same_backend::<F>(&p, &entry) {
            if !same_frontend::<F>(&p, &entry) {
                unsafe { F::write(e, entry) };
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
    unsafe { F::write(F::peers_entry(peers, i), entry) };
}

/// The socket is going away: frees its socket table entry, if it holds
/// one (its socket-local storage goes with it on its own).
#[inline(always)]
pub(crate) fn forget<F: Family>(cookie: u64) {
    let s = F::socket(cookie);
    if s.is_null() {
        return;
    }
    // SAFETY: as in `remember`.
    let owner = unsafe { F::socket_cookie(s) };
    if unsafe { owner.read_volatile() } == cookie {
        // Clear the entry before the cookie: the next owner claims it only
        // after the cookie is 0, and then finds no stale service id.
        let mut p = unsafe { F::read(F::socket_entry(s)) };
        p.service_id = 0;
        unsafe { F::write(F::socket_entry(s), p) };
        unsafe { owner.write_volatile(0) };
    }
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
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let s = F::socket(cookie);
    let mut found = None;
    if !s.is_null() {
        // SAFETY: as in `remember`.
        if unsafe { F::socket_cookie(s).read_volatile() } == cookie {
            let p = unsafe { F::read(F::socket_entry(s)) };
            if p.service_id != 0 && p.backend == addr && p.backend_port == port {
                found = Some(p);
            }
        }
    }
    if found.is_none() {
        found = stored_peer::<F>(ctx, addr, port);
    }
    let p = found?;
    match F::frontend(p.frontend, p.frontend_port, proto) {
        Some(fe) if fe.service_id == p.service_id => Some((p.frontend, p.frontend_port)),
        _ => None,
    }
}

/// The socket-local storage entry for backend (addr, port), if any.
#[inline(always)]
fn stored_peer<F: Family>(ctx: *mut c_void, addr: F::Addr, port: u16) -> Option<Peer<F::Addr>> {
    let sa = SockAddrContext::new(ctx.cast());
    // SAFETY: the context's socket is live for the whole program run.
    let peers = unsafe { F::peers().get_ptr_mut(&sa) };
    if peers.is_null() {
        return None;
    }
    for i in 0..capacity::SOCK_PEERS {
        // SAFETY: as in `remember_in_storage`.
        let p = unsafe { F::read(F::peers_entry(peers, i)) };
        if p.service_id != 0 && p.backend == addr && p.backend_port == port {
            return Some(p);
        }
    }
    None
}
