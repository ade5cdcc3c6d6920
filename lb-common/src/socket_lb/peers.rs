//! What a translated socket remembers (backend → frontend), for the reverse
//! path: the socket table, else socket-local storage.

use super::{Addr, Peer, Pick, SocketEnv, ring};
use crate::capacity;

/// Records backend → frontend for this socket, for recvmsg and
/// getpeername: in the socket table when the socket holds (or can claim)
/// its entry there, else in its socket-local storage.
///
/// A connected socket has one peer, so a reconnect overwrites its table
/// entry. An unconnected UDP socket (sendmsg) may talk to several
/// frontends: its first one goes to the table, further ones to storage.
#[inline(always)]
pub(super) fn remember<E: SocketEnv>(env: &E, entry: Peer<Addr<E>>, pick: Pick) {
    let cookie = env.socket_cookie();
    if let Some(s) = env.socket(cookie) {
        let held = env.socket_owner(s);
        if held == cookie {
            let p = env.socket_read(s);
            if same_backend(&p, &entry) {
                if !same_frontend(&p, &entry) {
                    env.socket_write(s, entry);
                }
                return;
            }
            if matches!(pick, Pick::Random) {
                env.socket_write(s, entry);
                return;
            }
        } else if held == 0 && env.socket_claim(s, cookie) {
            env.socket_write(s, entry);
            return;
        }
    }
    remember_in_storage(env, &entry);
}

#[inline(always)]
fn same_backend<A: PartialEq>(a: &Peer<A>, b: &Peer<A>) -> bool {
    a.backend == b.backend && a.backend_port == b.backend_port
}

#[inline(always)]
fn same_frontend<A: PartialEq>(a: &Peer<A>, b: &Peer<A>) -> bool {
    a.frontend == b.frontend && a.frontend_port == b.frontend_port && a.service_id == b.service_id
}

/// A used entry whose backend is (addr, port).
#[inline(always)]
fn is_backend<A: PartialEq>(p: &Peer<A>, addr: A, port: u16) -> bool {
    p.service_id != 0 && p.backend == addr && p.backend_port == port
}

/// Socket-local storage, created on the socket's first use of it and freed
/// by the kernel with the socket. An entry for the same backend is
/// overwritten; otherwise a free entry is taken, and when all
/// `capacity::SOCK_PEERS` are used the one written longest ago is replaced.
/// Nothing is written when the entry is already there: a UDP socket
/// sending many datagrams to one frontend only reads. A subprogram of its
/// own: the slow path keeps its stack out of the fast path's frame.
#[inline(never)]
fn remember_in_storage<E: SocketEnv>(env: &E, entry: &Peer<Addr<E>>) {
    let entry = *entry;
    let Some(peers) = env.peers_get_or_create() else {
        // Out of memory: the peer simply shows as the backend.
        return;
    };
    let mut free = None;
    for i in 0..capacity::SOCK_PEERS {
        let p = env.peers_read(peers, i);
        if p.service_id == 0 {
            if free.is_none() {
                free = Some(i);
            }
            continue;
        }
        if same_backend(&p, &entry) {
            if !same_frontend(&p, &entry) {
                env.peers_write(peers, i, entry);
            }
            return;
        }
    }
    let i = match free {
        Some(i) => i,
        None => ring(env.peers_next(peers)),
    };
    env.peers_write(peers, i, entry);
}

/// The socket is going away: frees its socket table entry, if it holds
/// one (its socket-local storage goes with it on its own).
#[inline(always)]
pub fn forget<E: SocketEnv>(env: &E, cookie: u64) {
    let Some(s) = env.socket(cookie) else {
        return;
    };
    if env.socket_owner(s) == cookie {
        // Clear the entry before the cookie: the next owner claims it only
        // after the cookie is 0, and then finds no stale service id.
        let mut p = env.socket_read(s);
        p.service_id = 0;
        env.socket_write(s, p);
        env.socket_free(s);
    }
}

/// The reverse path: if this socket was translated to (addr, port), returns
/// the frontend to show instead. The entry is checked against the current
/// frontend, so a Service that was removed or renumbered no longer rewrites.
#[inline(always)]
pub fn reverse<E: SocketEnv>(
    env: &E,
    addr: Addr<E>,
    port: u16,
    proto: u8,
) -> Option<(Addr<E>, u16)> {
    let cookie = env.socket_cookie();
    let mut found = None;
    if let Some(s) = env.socket(cookie)
        && env.socket_owner(s) == cookie
    {
        let p = env.socket_read(s);
        if is_backend(&p, addr, port) {
            found = Some(p);
        }
    }
    if found.is_none() {
        found = stored_peer(env, addr, port);
    }
    let p = found?;
    match env.frontend(p.frontend, p.frontend_port, proto) {
        Some(fe) if fe.service_id == p.service_id => Some((p.frontend, p.frontend_port)),
        _ => None,
    }
}

/// The socket-local storage entry for backend (addr, port), if any.
#[inline(always)]
fn stored_peer<E: SocketEnv>(env: &E, addr: Addr<E>, port: u16) -> Option<Peer<Addr<E>>> {
    let peers = env.peers()?;
    for i in 0..capacity::SOCK_PEERS {
        let p = env.peers_read(peers, i);
        if is_backend(&p, addr, port) {
            return Some(p);
        }
    }
    None
}
