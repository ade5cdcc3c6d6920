//! Service load balancing at the socket layer, as decisions: the forward
//! path (connect, sendmsg) picks a backend for a frontend; the reverse path
//! (recvmsg, getpeername) makes a translated socket's peer look like the
//! frontend.
//!
//! The logic is written once, generic over [`SocketEnv`]: the maps and
//! helpers it reads and writes. `lb-ebpf` implements it over the real maps
//! and BPF helpers (its handles are pointers into map values, so the
//! decisions cost no lookup more than written out by hand); the host tests
//! implement it over plain collections, and run the same code without a
//! kernel.

use crate::{
    AffinityKey, AffinityValue, FrontendValue, Slot, addr4_of_mapped, addr6_words, capacity,
};

mod forward;
mod peers;
#[cfg(test)]
mod tests;

pub use forward::forward;
pub use peers::{forget, reverse};

/// errno values the forward path may fail a syscall with.
pub const ECONNREFUSED: i32 = 111;
pub const EHOSTUNREACH: i32 = 113;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict<A> {
    /// Not a frontend: leave the socket alone.
    Pass,
    /// Send to this backend (address, port in network order).
    Translate(A, u16),
    /// Fail the syscall with this errno.
    Refuse(i32),
}

/// How the forward path picks among a frontend's backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick {
    /// A fresh random choice (connect: one decision per socket).
    Random,
    /// Derived from the socket cookie (unconnected UDP sendmsg: every
    /// datagram of one socket goes to the same backend while the set is
    /// unchanged, so a client's request and retries meet one server).
    SocketCookie,
}

/// One remembered translation, in the family's hot-path address form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer<A> {
    pub frontend: A,
    pub frontend_port: u16,
    pub backend: A,
    pub backend_port: u16,
    /// 0: unused entry.
    pub service_id: u32,
}

/// An address family as the socket hooks present it.
pub trait AddrFamily {
    /// An address in network byte order, as the socket hooks present it.
    type Addr: Copy + PartialEq + 'static;

    /// Address and port (network order) of the backend in a slot.
    fn slot_backend(slot: &Slot) -> (Self::Addr, u16);
}

/// IPv4: `bpf_sock_addr.user_ip4`, one network-order word.
pub struct Inet4;
/// IPv6: `bpf_sock_addr.user_ip6`, four network-order words.
pub struct Inet6;

impl AddrFamily for Inet4 {
    type Addr = u32;

    #[inline(always)]
    fn slot_backend(slot: &Slot) -> (u32, u16) {
        (u32::from_ne_bytes(addr4_of_mapped(&slot.addr)), slot.port)
    }
}

impl AddrFamily for Inet6 {
    type Addr = [u32; 4];

    #[inline(always)]
    fn slot_backend(slot: &Slot) -> ([u32; 4], u16) {
        (addr6_words(slot.addr), slot.port)
    }
}

/// The address type of an environment's family.
pub type Addr<E> = <<E as SocketEnv>::Family as AddrFamily>::Addr;

/// Slot index of a ring position: `SOCK_PEERS` is a power of two, so the
/// mask both wraps and proves the bound to the verifier.
#[inline(always)]
pub fn ring(i: u32) -> usize {
    const _: () = assert!(capacity::SOCK_PEERS.is_power_of_two());
    (i as usize) & (capacity::SOCK_PEERS - 1)
}

/// What the socket-level decisions read and write, for one address family
/// and one program run (one socket).
///
/// Handles ([`SocketEnv::Affinity`], [`SocketEnv::Socket`],
/// [`SocketEnv::Peers`]) come from this environment's lookups and are used
/// within the same run only: in the kernel they point into live map values
/// (the socket table is an array, socket-local storage lives as long as the
/// socket, and an LRU value stays readable for the run under RCU).
///
/// Another CPU may write the same map value at the same time (two threads
/// sending on one socket, one client connecting on two CPUs), so values are
/// only ever read and written through copies, never referenced.
pub trait SocketEnv {
    type Family: AddrFamily;
    /// An `AFFINITY` entry found by [`SocketEnv::affinity`].
    type Affinity: Copy;
    /// A socket table entry (`SOCKETS4/6`).
    type Socket: Copy;
    /// The socket's socket-local storage (`SOCK_PEERS4/6`).
    type Peers: Copy;

    /// The frontend entry of (address, port, protocol), copied.
    fn frontend(&self, addr: Addr<Self>, port: u16, proto: u8) -> Option<FrontendValue>;
    /// The service id of a ClusterIP.
    fn cluster_ip(&self, addr: Addr<Self>) -> Option<u32>;
    /// The backend in slot `slot` (1-based) of a frontend's set, copied out
    /// of the map (the agent may replace the entry while we run; a copy is
    /// one consistent version).
    fn slot(&self, fe: &FrontendValue, slot: u32) -> Option<Slot>;

    fn random(&self) -> u32;
    /// The cookie of the socket the program runs for.
    fn socket_cookie(&self) -> u64;
    /// The cookie of that socket's network namespace.
    fn netns_cookie(&self) -> u64;
    /// Monotonic time in nanoseconds.
    fn now_ns(&self) -> u64;
    /// Counts one translated or refused connect or datagram of a set.
    fn count(&self, service_id: u32, refused: bool);

    /// The `AFFINITY` entry of a key, with a copy of its value.
    fn affinity(&self, key: &AffinityKey) -> Option<(Self::Affinity, AffinityValue)>;
    /// Writes back only `last_used_ns` of an entry.
    fn affinity_touch(&self, entry: Self::Affinity, now_ns: u64);
    /// Best effort: the entry may not be written (the map is full).
    fn affinity_insert(&self, key: &AffinityKey, value: &AffinityValue);

    /// The socket table entry a socket with this cookie may hold.
    fn socket(&self, cookie: u64) -> Option<Self::Socket>;
    /// The cookie of the socket holding the entry (0: free).
    fn socket_owner(&self, s: Self::Socket) -> u64;
    /// Compare-and-swap of the owner 0 → `cookie`: of two sockets racing
    /// for one entry, exactly one wins it.
    fn socket_claim(&self, s: Self::Socket, cookie: u64) -> bool;
    fn socket_read(&self, s: Self::Socket) -> Peer<Addr<Self>>;
    fn socket_write(&self, s: Self::Socket, peer: Peer<Addr<Self>>);
    /// Sets the owner to 0: the entry is free for the next socket.
    fn socket_free(&self, s: Self::Socket);

    /// The socket's storage, if it has any.
    fn peers(&self) -> Option<Self::Peers>;
    /// The socket's storage, created on first use; `None` when it cannot
    /// be allocated.
    fn peers_get_or_create(&self) -> Option<Self::Peers>;
    /// Entry `i` (< `capacity::SOCK_PEERS`).
    fn peers_read(&self, peers: Self::Peers, i: usize) -> Peer<Addr<Self>>;
    fn peers_write(&self, peers: Self::Peers, i: usize, peer: Peer<Addr<Self>>);
    /// Returns the ring position the next new frontend goes to, and
    /// advances it.
    fn peers_next(&self, peers: Self::Peers) -> u32;
}
