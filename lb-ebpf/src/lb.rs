//! Service load balancing at the socket layer: the forward path (connect,
//! sendmsg) picks a backend for a frontend; the reverse path (recvmsg,
//! getpeername) makes a translated socket's peer look like the frontend.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{
    bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
};
use lb_common::{
    AffinityKey, AffinityValue, FRONTEND_F_AFFINITY, FRONTEND_F_DROP, FrontendValue, SlotKey,
};

use crate::{
    family::Family,
    maps::{AFFINITY, COUNTERS, SLOTS},
};

/// errno values the forward path may fail a syscall with.
pub const ECONNREFUSED: i32 = 111;
pub const EHOSTUNREACH: i32 = 113;

pub enum Verdict<A> {
    /// Not a frontend: leave the socket alone.
    Pass,
    /// Send to this backend (address, port in network order).
    Translate(A, u16),
    /// Fail the syscall with this errno.
    Refuse(i32),
}

/// How the forward path picks among a frontend's backends.
#[derive(Clone, Copy)]
pub enum Pick {
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
    let count = fe.count as u32;
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
    let timeout_ns = fe.affinity_timeout_secs as u64 * NSEC_PER_SEC;
    if let Some(prev) = AFFINITY.get_ptr_mut(key) {
        let prev = unsafe { &mut *prev };
        let fresh = now.wrapping_sub(prev.last_used_ns) <= timeout_ns;
        let still_member = prev.slot >= 1
            && prev.slot <= fe.count as u32
            && backend_at(fe.service_id, prev.slot) == Some(prev.backend_id);
        if fresh && still_member {
            prev.last_used_ns = now;
            return Some(prev.backend_id);
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
pub fn forward<F: Family>(
    ctx: *mut c_void,
    addr: F::Addr,
    port: u16,
    proto: u8,
    pick: Pick,
) -> Verdict<F::Addr> {
    let key = F::frontend_key(addr, port, proto);
    let Some(fe) = (unsafe { F::frontends().get(&key) }) else {
        // A known ClusterIP on a port (or protocol) the Service does not
        // define: kube-proxy REJECTs. Any other address is not ours.
        return match unsafe { F::cluster_ips().get(addr) } {
            Some(service_id) => {
                count(*service_id, true);
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
    let Some(backend) = backend_id.and_then(|id| unsafe { F::backends().get(id) }) else {
        count(fe.service_id, true);
        return Verdict::Refuse(ECONNREFUSED);
    };
    let (baddr, bport) = F::backend_addr(backend);
    remember::<F>(ctx, baddr, bport, addr, port, fe.service_id, pick);
    count(fe.service_id, false);
    Verdict::Translate(baddr, bport)
}

/// Records backend → frontend for this socket, for recvmsg and getpeername.
/// From sendmsg it is written only when it changes: a UDP socket sending
/// many datagrams to one frontend costs one lookup per datagram, not one
/// LRU update. A connect is (nearly always) the socket's first, so there
/// the lookup would only add a second walk of a cold hash bucket: on this
/// path every map access is a likely cache miss (see bench/).
#[inline(always)]
fn remember<F: Family>(
    ctx: *mut c_void,
    backend_addr: F::Addr,
    backend_port: u16,
    frontend_addr: F::Addr,
    frontend_port: u16,
    service_id: u32,
    pick: Pick,
) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let key = F::rev_key(cookie, backend_addr, backend_port);
    if let Pick::SocketCookie = pick
        && let Some(existing) = unsafe { F::revnat().get(&key) }
    {
        let (a, p, s) = F::rev_frontend(existing);
        if a == frontend_addr && p == frontend_port && s == service_id {
            return;
        }
    }
    let value = F::rev_value(frontend_addr, frontend_port, service_id);
    // On failure (never expected for an LRU map) the peer simply shows as
    // the backend.
    let _ = F::revnat().insert(&key, &value, 0);
}

/// The reverse path: if this socket was translated to (addr, port), returns
/// the frontend to show instead. The entry is checked against the current
/// frontend, so a Service that was removed or renumbered no longer rewrites.
#[inline(always)]
pub fn reverse<F: Family>(
    ctx: *mut c_void,
    addr: F::Addr,
    port: u16,
    proto: u8,
) -> Option<(F::Addr, u16)> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx) };
    let key = F::rev_key(cookie, addr, port);
    let (faddr, fport, service_id) = F::rev_frontend(unsafe { F::revnat().get(&key)? });
    let fkey = F::frontend_key(faddr, fport, proto);
    match unsafe { F::frontends().get(&fkey) } {
        Some(fe) if fe.service_id == service_id => Some((faddr, fport)),
        _ => {
            let _ = F::revnat().remove(&key);
            None
        }
    }
}
