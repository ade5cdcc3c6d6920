//! The socket-level decisions on the host: a fake [`SocketEnv`] over plain
//! collections, and table tests of forward, affinity, remember, reverse and
//! forget against it.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    vec::Vec,
};

use super::{Addr, AddrFamily, Peer, SocketEnv};
use crate::{
    AffinityKey, AffinityValue, FrontendValue, PROTO_TCP, PROTO_UDP, Slot, addr4_mapped, capacity,
};

mod forward;
mod peers;

/// Entries of the fake socket table: small, so that cookies `c` and
/// `c + TABLE` collide on one entry as two live sockets may in the kernel.
const TABLE: usize = 8;

/// One socket's fake local storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Storage<A> {
    peers: [Peer<A>; capacity::SOCK_PEERS],
    next: u32,
}

/// (address, port, protocol).
type FrontendKey<A> = (A, u16, u8);

/// A fake environment: the maps as collections, the helpers as settable
/// values. Handles are indices (affinity, socket table) and the socket's
/// cookie (storage).
struct Fake<F: AddrFamily> {
    frontends: Vec<(FrontendKey<F::Addr>, FrontendValue)>,
    cluster_ips: Vec<(F::Addr, u32)>,
    /// (service id, slot) → backend.
    slots: HashMap<(u32, u32), Slot>,
    random: Cell<u32>,
    cookie: Cell<u64>,
    netns: u64,
    now: Cell<u64>,
    /// service id → (translated, refused).
    counters: RefCell<HashMap<u32, (u64, u64)>>,
    affinity: RefCell<Vec<(AffinityKey, AffinityValue)>>,
    /// (owner cookie, entry).
    table: RefCell<[(u64, Peer<F::Addr>); TABLE]>,
    /// socket cookie → storage.
    storage: RefCell<HashMap<u64, Storage<F::Addr>>>,
    /// Storage cannot be allocated.
    out_of_memory: bool,
    /// Writes to the socket table and storage (entries and ring position).
    writes: Cell<u32>,
}

impl<F: AddrFamily> Fake<F>
where
    F::Addr: Default,
{
    fn new() -> Self {
        Self {
            frontends: Vec::new(),
            cluster_ips: Vec::new(),
            slots: HashMap::new(),
            random: Cell::new(0),
            cookie: Cell::new(1),
            netns: NETNS,
            now: Cell::new(NOW),
            counters: RefCell::new(HashMap::new()),
            affinity: RefCell::new(Vec::new()),
            table: RefCell::new([(0, Peer::default()); TABLE]),
            storage: RefCell::new(HashMap::new()),
            out_of_memory: false,
            writes: Cell::new(0),
        }
    }

    fn set_frontend(&mut self, addr: F::Addr, port: u16, proto: u8, fe: FrontendValue) {
        self.frontends.retain(|(k, _)| *k != (addr, port, proto));
        self.frontends.push(((addr, port, proto), fe));
    }

    fn remove_frontend(&mut self, addr: F::Addr, port: u16, proto: u8) {
        self.frontends.retain(|(k, _)| *k != (addr, port, proto));
    }

    fn set_slot(&mut self, service_id: u32, slot: u32, backend: Slot) {
        self.slots.insert((service_id, slot), backend);
    }

    /// The program runs for the socket with this cookie.
    fn on_socket(&self, cookie: u64) {
        self.cookie.set(cookie);
    }

    fn counts(&self, service_id: u32) -> (u64, u64) {
        self.counters
            .borrow()
            .get(&service_id)
            .copied()
            .unwrap_or_default()
    }

    fn affinity_of(&self, service_id: u32) -> Option<AffinityValue> {
        let key = affinity_key(self.netns, service_id);
        let entries = self.affinity.borrow();
        entries.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn table_entry(&self, cookie: u64) -> (u64, Peer<F::Addr>) {
        self.table.borrow()[index(cookie)]
    }

    fn write(&self) {
        self.writes.set(self.writes.get() + 1);
    }
}

fn index(cookie: u64) -> usize {
    (cookie as usize) & (TABLE - 1)
}

fn affinity_key(netns_cookie: u64, service_id: u32) -> AffinityKey {
    AffinityKey {
        netns_cookie,
        service_id,
        _pad: 0,
    }
}

impl<F: AddrFamily> SocketEnv for Fake<F>
where
    F::Addr: Default,
{
    type Family = F;
    type Affinity = usize;
    type Socket = usize;
    type Peers = u64;

    fn frontend(&self, addr: Addr<Self>, port: u16, proto: u8) -> Option<FrontendValue> {
        let k = (addr, port, proto);
        self.frontends
            .iter()
            .find(|(fk, _)| *fk == k)
            .map(|(_, v)| *v)
    }

    fn cluster_ip(&self, addr: Addr<Self>) -> Option<u32> {
        self.cluster_ips
            .iter()
            .find(|(a, _)| *a == addr)
            .map(|(_, id)| *id)
    }

    fn slot(&self, fe: &FrontendValue, slot: u32) -> Option<Slot> {
        self.slots.get(&(fe.service_id, slot)).copied()
    }

    fn random(&self) -> u32 {
        self.random.get()
    }

    fn socket_cookie(&self) -> u64 {
        self.cookie.get()
    }

    fn netns_cookie(&self) -> u64 {
        self.netns
    }

    fn now_ns(&self) -> u64 {
        self.now.get()
    }

    fn count(&self, service_id: u32, refused: bool) {
        let mut counters = self.counters.borrow_mut();
        let c = counters.entry(service_id).or_default();
        if refused {
            c.1 += 1;
        } else {
            c.0 += 1;
        }
    }

    fn affinity(&self, key: &AffinityKey) -> Option<(usize, AffinityValue)> {
        let entries = self.affinity.borrow();
        let i = entries.iter().position(|(k, _)| k == key)?;
        Some((i, entries[i].1))
    }

    fn affinity_touch(&self, entry: usize, now_ns: u64) {
        self.affinity.borrow_mut()[entry].1.last_used_ns = now_ns;
    }

    fn affinity_insert(&self, key: &AffinityKey, value: &AffinityValue) {
        let mut entries = self.affinity.borrow_mut();
        entries.retain(|(k, _)| k != key);
        entries.push((*key, *value));
    }

    fn socket(&self, cookie: u64) -> Option<usize> {
        Some(index(cookie))
    }

    fn socket_owner(&self, s: usize) -> u64 {
        self.table.borrow()[s].0
    }

    fn socket_claim(&self, s: usize, cookie: u64) -> bool {
        let mut table = self.table.borrow_mut();
        if table[s].0 != 0 {
            return false;
        }
        table[s].0 = cookie;
        true
    }

    fn socket_read(&self, s: usize) -> Peer<Addr<Self>> {
        self.table.borrow()[s].1
    }

    fn socket_write(&self, s: usize, peer: Peer<Addr<Self>>) {
        self.write();
        self.table.borrow_mut()[s].1 = peer;
    }

    fn socket_free(&self, s: usize) {
        self.table.borrow_mut()[s].0 = 0;
    }

    fn peers(&self) -> Option<u64> {
        let cookie = self.cookie.get();
        self.storage
            .borrow()
            .contains_key(&cookie)
            .then_some(cookie)
    }

    fn peers_get_or_create(&self) -> Option<u64> {
        if self.out_of_memory {
            return None;
        }
        let cookie = self.cookie.get();
        self.storage.borrow_mut().entry(cookie).or_insert(Storage {
            peers: [Peer::default(); capacity::SOCK_PEERS],
            next: 0,
        });
        Some(cookie)
    }

    fn peers_read(&self, peers: u64, i: usize) -> Peer<Addr<Self>> {
        self.storage.borrow()[&peers].peers[i]
    }

    fn peers_write(&self, peers: u64, i: usize, peer: Peer<Addr<Self>>) {
        self.write();
        self.storage.borrow_mut().get_mut(&peers).unwrap().peers[i] = peer;
    }

    fn peers_next(&self, peers: u64) -> u32 {
        self.write();
        let mut storage = self.storage.borrow_mut();
        let s = storage.get_mut(&peers).unwrap();
        let n = s.next;
        s.next = n.wrapping_add(1);
        n
    }
}

const NETNS: u64 = 4242;
/// Some monotonic time well past the affinity timeouts used.
const NOW: u64 = 1_000 * SEC;
const SEC: u64 = 1_000_000_000;

const TCP: u8 = PROTO_TCP;
const UDP: u8 = PROTO_UDP;

/// An IPv4 address as the hooks hold it (network order).
fn ip4(a: u8, b: u8, c: u8, d: u8) -> u32 {
    u32::from_ne_bytes([a, b, c, d])
}

/// A port as the hooks hold it (network order).
fn port(p: u16) -> u16 {
    p.to_be()
}

/// The frontend of set `service_id` with `count` backends.
fn frontend(service_id: u32, count: u16, flags: u16) -> FrontendValue {
    FrontendValue {
        service_id,
        count,
        flags,
        ..Default::default()
    }
}

/// Backend `id`, at 10.1.0.`id`:8080.
fn backend4(id: u32) -> Slot {
    Slot {
        backend_id: id,
        addr: addr4_mapped([10, 1, 0, id as u8]),
        port: port(8080),
        proto: TCP,
        ..Default::default()
    }
}

/// The hooks' address of [`backend4`] `id`.
fn backend4_addr(id: u32) -> (u32, u16) {
    (ip4(10, 1, 0, id as u8), port(8080))
}
