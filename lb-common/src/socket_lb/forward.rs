//! The forward path: frontend → backend, with sessionAffinity.

use super::{Addr, AddrFamily, ECONNREFUSED, EHOSTUNREACH, Peer, Pick, SocketEnv, Verdict, peers};
use crate::{
    AffinityKey, AffinityValue, FRONTEND_F_AFFINITY, FRONTEND_F_DROP, FrontendValue, Slot,
};

const NSEC_PER_SEC: u64 = 1_000_000_000;

/// Picks a slot in 1..=count and returns it with its backend.
#[inline(always)]
fn pick_slot<E: SocketEnv>(env: &E, fe: &FrontendValue, pick: Pick) -> Option<(u32, Slot)> {
    let count = u32::from(fe.count);
    let r = match pick {
        Pick::Random => env.random(),
        Pick::SocketCookie => {
            let cookie = env.socket_cookie();
            // Fibonacci hashing: spreads sequential cookies over the slots.
            (cookie.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32
        }
    };
    let slot = (r % count) + 1;
    env.slot(fe, slot).map(|b| (slot, b))
}

/// sessionAffinity ClientIP: the client (its network namespace) keeps its
/// backend while the timeout has not passed since its last connect and the
/// backend is still in the set; otherwise a new one is chosen and recorded.
#[inline(always)]
fn pick_with_affinity<E: SocketEnv>(env: &E, fe: &FrontendValue, pick: Pick) -> Option<Slot> {
    let key = AffinityKey {
        netns_cookie: env.netns_cookie(),
        service_id: fe.service_id,
        _pad: 0,
    };
    let now = env.now_ns();
    let timeout_ns = u64::from(fe.affinity_timeout_secs) * NSEC_PER_SEC;
    if let Some((prev, entry)) = env.affinity(&key) {
        // Another CPU may update this entry at the same time (the same
        // client connecting on two CPUs), so it is never borrowed: the
        // value is a copy, and only `last_used_ns` is written back.
        let fresh = now.wrapping_sub(entry.last_used_ns) <= timeout_ns;
        if fresh
            && entry.slot >= 1
            && entry.slot <= u32::from(fe.count)
            && let Some(b) = env.slot(fe, entry.slot)
            && b.backend_id == entry.backend_id
        {
            env.affinity_touch(prev, now);
            return Some(b);
        }
    }
    let (slot, backend) = pick_slot(env, fe, pick)?;
    let value = AffinityValue {
        backend_id: backend.backend_id,
        slot,
        last_used_ns: now,
    };
    // Best effort: without an entry the next connect simply picks again.
    env.affinity_insert(&key, &value);
    Some(backend)
}

/// The forward path: frontend → backend.
#[inline(always)]
pub fn forward<E: SocketEnv>(
    env: &E,
    addr: Addr<E>,
    port: u16,
    proto: u8,
    pick: Pick,
) -> Verdict<Addr<E>> {
    let Some(fe) = env.frontend(addr, port, proto) else {
        // A known ClusterIP on a port (or protocol) the Service does not
        // define: kube-proxy REJECTs. Any other address is not ours.
        return match env.cluster_ip(addr) {
            Some(service_id) => {
                env.count(service_id, true);
                Verdict::Refuse(ECONNREFUSED)
            }
            None => Verdict::Pass,
        };
    };
    if fe.count == 0 {
        env.count(fe.service_id, true);
        let errno = if fe.flags & FRONTEND_F_DROP != 0 {
            EHOSTUNREACH
        } else {
            ECONNREFUSED
        };
        return Verdict::Refuse(errno);
    }
    let backend = if fe.flags & FRONTEND_F_AFFINITY != 0 {
        pick_with_affinity(env, &fe, pick)
    } else {
        pick_slot(env, &fe, pick).map(|(_, b)| b)
    };
    // The agent writes slots before the count, so a miss here means the
    // maps were changed behind its back: refuse rather than send the
    // packet to a virtual address.
    let Some(backend) = backend else {
        env.count(fe.service_id, true);
        return Verdict::Refuse(ECONNREFUSED);
    };
    let (baddr, bport) = E::Family::slot_backend(&backend);
    let entry = Peer {
        frontend: addr,
        frontend_port: port,
        backend: baddr,
        backend_port: bport,
        service_id: fe.service_id,
    };
    peers::remember(env, entry, pick);
    env.count(fe.service_id, false);
    Verdict::Translate(baddr, bport)
}
