//! The two address families' maps behind one interface, so that the
//! kernel's [`lb_common::socket_lb::SocketEnv`] (`lb.rs`) is written once.

use aya_ebpf::btf_maps::SkStorage;
use lb_common::{
    Frontend4Key, Frontend6Key, FrontendValue, SockPeer4, SockPeer6, SockPeers4, SockPeers6,
    Socket4, Socket6, addr6_bytes, addr6_words, capacity,
    socket_lb::{AddrFamily, Inet4, Inet6, Peer},
};

use crate::maps::{
    CLUSTER_IPS4, CLUSTER_IPS6, FRONTENDS4, FRONTENDS6, SOCK_PEERS4, SOCK_PEERS6, SOCKETS4,
    SOCKETS6,
};

/// An address of a family.
pub(crate) type Addr<F> = <<F as Family>::Inet as AddrFamily>::Addr;

pub(crate) trait Family: 'static {
    /// The address family as the decisions see it.
    type Inet: AddrFamily;
    /// One remembered translation as the maps store it (`SockPeer4/6`).
    type Entry: 'static;
    /// The socket-local storage value.
    type Peers: 'static;
    /// The socket table's value (`Socket4/6`).
    type Socket: 'static;

    /// The frontend entry of (address, port, protocol).
    fn frontend(addr: Addr<Self>, port: u16, proto: u8) -> Option<&'static FrontendValue>;
    fn cluster_ip(addr: Addr<Self>) -> Option<u32>;
    fn peers() -> &'static SkStorage<Self::Peers>;
    /// The socket table entry a socket with this cookie may hold.
    fn socket(cookie: u64) -> Option<*mut Self::Socket>;

    /// # Safety
    /// `s` points to a live socket table entry.
    unsafe fn socket_cookie(s: *mut Self::Socket) -> *mut u64;
    /// # Safety
    /// As [`Family::socket_cookie`].
    unsafe fn socket_entry(s: *mut Self::Socket) -> *mut Self::Entry;
    /// Entry `i` (< `capacity::SOCK_PEERS`) of a socket's storage.
    ///
    /// # Safety
    /// `peers` points to a live storage value.
    unsafe fn peers_entry(peers: *mut Self::Peers, i: usize) -> *mut Self::Entry;
    /// # Safety
    /// As [`Family::peers_entry`].
    unsafe fn next_ptr(peers: *mut Self::Peers) -> *mut u32;

    /// # Safety
    /// `e` points into a live map value. Another CPU may write the same
    /// entry (two threads sending on one socket), so entries are only ever
    /// read and written through copies, never referenced.
    unsafe fn read(e: *const Self::Entry) -> Peer<Addr<Self>>;
    /// # Safety
    /// As [`Family::read`].
    unsafe fn write(e: *mut Self::Entry, peer: Peer<Addr<Self>>);
}

pub(crate) struct V4;
pub(crate) struct V6;

impl Family for V4 {
    type Inet = Inet4;
    type Entry = SockPeer4;
    type Peers = SockPeers4;
    type Socket = Socket4;

    #[inline(always)]
    fn frontend(addr: u32, port: u16, proto: u8) -> Option<&'static FrontendValue> {
        let key = Frontend4Key {
            addr: addr.to_ne_bytes(),
            port,
            proto,
            _pad: 0,
        };
        unsafe { FRONTENDS4.get(key) }
    }
    #[inline(always)]
    fn cluster_ip(addr: u32) -> Option<u32> {
        unsafe { CLUSTER_IPS4.get(addr.to_ne_bytes()).copied() }
    }
    #[inline(always)]
    fn peers() -> &'static SkStorage<SockPeers4> {
        &SOCK_PEERS4
    }
    #[inline(always)]
    fn socket(cookie: u64) -> Option<*mut Socket4> {
        // The mask keeps the index in bounds; the array lookup is inlined
        // by the verifier into an address computation.
        let i = (cookie & (u64::from(capacity::SOCKETS) - 1)) as u32;
        SOCKETS4.get_ptr_mut(i)
    }
    #[inline(always)]
    unsafe fn socket_cookie(s: *mut Socket4) -> *mut u64 {
        unsafe { core::ptr::addr_of_mut!((*s).cookie) }
    }
    #[inline(always)]
    unsafe fn socket_entry(s: *mut Socket4) -> *mut SockPeer4 {
        unsafe { core::ptr::addr_of_mut!((*s).peer) }
    }
    #[inline(always)]
    unsafe fn peers_entry(peers: *mut SockPeers4, i: usize) -> *mut SockPeer4 {
        unsafe { core::ptr::addr_of_mut!((*peers).peers[i]) }
    }
    #[inline(always)]
    unsafe fn next_ptr(peers: *mut SockPeers4) -> *mut u32 {
        unsafe { core::ptr::addr_of_mut!((*peers).next) }
    }
    #[inline(always)]
    unsafe fn read(e: *const SockPeer4) -> Peer<Addr<Self>> {
        let p: SockPeer4 = unsafe { e.read() };
        Peer {
            frontend: u32::from_ne_bytes(p.frontend_addr),
            frontend_port: p.frontend_port,
            backend: u32::from_ne_bytes(p.backend_addr),
            backend_port: p.backend_port,
            service_id: p.service_id,
        }
    }
    #[inline(always)]
    unsafe fn write(e: *mut SockPeer4, peer: Peer<Addr<Self>>) {
        let p = SockPeer4 {
            frontend_addr: u32::to_ne_bytes(peer.frontend),
            backend_addr: u32::to_ne_bytes(peer.backend),
            frontend_port: peer.frontend_port,
            backend_port: peer.backend_port,
            service_id: peer.service_id,
        };
        unsafe { e.write(p) }
    }
}

impl Family for V6 {
    type Inet = Inet6;
    type Entry = SockPeer6;
    type Peers = SockPeers6;
    type Socket = Socket6;

    #[inline(always)]
    fn frontend(addr: [u32; 4], port: u16, proto: u8) -> Option<&'static FrontendValue> {
        let key = Frontend6Key {
            addr: addr6_bytes(addr),
            port,
            proto,
            _pad: 0,
        };
        unsafe { FRONTENDS6.get(key) }
    }
    #[inline(always)]
    fn cluster_ip(addr: [u32; 4]) -> Option<u32> {
        unsafe { CLUSTER_IPS6.get(addr6_bytes(addr)).copied() }
    }
    #[inline(always)]
    fn peers() -> &'static SkStorage<SockPeers6> {
        &SOCK_PEERS6
    }
    #[inline(always)]
    fn socket(cookie: u64) -> Option<*mut Socket6> {
        // The mask keeps the index in bounds; the array lookup is inlined
        // by the verifier into an address computation.
        let i = (cookie & (u64::from(capacity::SOCKETS) - 1)) as u32;
        SOCKETS6.get_ptr_mut(i)
    }
    #[inline(always)]
    unsafe fn socket_cookie(s: *mut Socket6) -> *mut u64 {
        unsafe { core::ptr::addr_of_mut!((*s).cookie) }
    }
    #[inline(always)]
    unsafe fn socket_entry(s: *mut Socket6) -> *mut SockPeer6 {
        unsafe { core::ptr::addr_of_mut!((*s).peer) }
    }
    #[inline(always)]
    unsafe fn peers_entry(peers: *mut SockPeers6, i: usize) -> *mut SockPeer6 {
        unsafe { core::ptr::addr_of_mut!((*peers).peers[i]) }
    }
    #[inline(always)]
    unsafe fn next_ptr(peers: *mut SockPeers6) -> *mut u32 {
        unsafe { core::ptr::addr_of_mut!((*peers).next) }
    }
    #[inline(always)]
    unsafe fn read(e: *const SockPeer6) -> Peer<Addr<Self>> {
        let p: SockPeer6 = unsafe { e.read() };
        Peer {
            frontend: addr6_words(p.frontend_addr),
            frontend_port: p.frontend_port,
            backend: addr6_words(p.backend_addr),
            backend_port: p.backend_port,
            service_id: p.service_id,
        }
    }
    #[inline(always)]
    unsafe fn write(e: *mut SockPeer6, peer: Peer<Addr<Self>>) {
        let p = SockPeer6 {
            frontend_addr: addr6_bytes(peer.frontend),
            backend_addr: addr6_bytes(peer.backend),
            frontend_port: peer.frontend_port,
            backend_port: peer.backend_port,
            service_id: peer.service_id,
        };
        unsafe { e.write(p) }
    }
}
