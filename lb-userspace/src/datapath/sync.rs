//! Mark and sweep: bring the maps from what they hold (`Installed`, a mirror
//! kept in memory and read back from the pins at start) to a `DesiredState`,
//! writing only the differences and never exposing a half-written Service.
//!
//! Order of writes (make before break):
//! 1. every backend a set needs exists;
//! 2. each set's slots 1..=N hold its backends (slots that keep their
//!    backend are not rewritten; a rewritten slot switches atomically from
//!    one valid backend to another);
//! 3. each frontend's count (and flags) switch to the new set in one map
//!    update;
//! 4. then, in reverse: frontends that went away, slots past the new counts,
//!    sets nobody uses, backends nobody uses.
//!
//! So a connect always reads a count whose slots are filled with backends
//! that exist, and scaling N→M never fails a connect in between.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lb_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, FRONTEND_F_AFFINITY, FRONTEND_F_DROP, FrontendValue,
    capacity,
};

use super::sockets::Departed;
use super::store::{BackendAddr, Store};
use crate::model::FoldHashMap;
use crate::model::{
    Backend, BackendSet, BackendSetKey, DesiredState, EmptyOutcome, Frontend, FrontendAddr,
    Protocol,
};

/// One backend set as installed: its service id and slots (index i holds
/// slot i+1; 0 marks a hole left by an interrupted write).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstalledSet {
    pub id: u32,
    pub slots: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstalledBackend {
    pub id: u32,
}

/// What the maps hold, as far as the agent knows.
#[derive(Clone, Debug, Default)]
pub struct Installed {
    /// By the set's name (`BackendSetKey`'s Display form).
    pub sets: HashMap<String, InstalledSet>,
    pub backends: HashMap<BackendAddr, InstalledBackend>,
    pub frontends: HashMap<FrontendAddr, FrontendValue>,
    pub cluster_ips: HashMap<IpAddr, u32>,
    pub node_ports: HashSet<(u16, Protocol)>,
    /// Not part of what the maps hold, hence not compared.
    memo: Memo,
}

/// Equal when they mirror the same map contents: the drift check compares
/// the mirror with what it reads back from the maps, which comes without
/// a memo. What one pass learned for the next is no map content.
impl PartialEq for Installed {
    fn eq(&self, other: &Self) -> bool {
        // Destructured, so that a field added to the mirror cannot be left
        // out of the comparison.
        let Self {
            sets,
            backends,
            frontends,
            cluster_ips,
            node_ports,
            memo: _,
        } = self;
        *sets == other.sets
            && *backends == other.backends
            && *frontends == other.frontends
            && *cluster_ips == other.cluster_ips
            && *node_ports == other.node_ports
    }
}

impl Eq for Installed {}

/// What earlier passes learned, so that a pass costs what changed rather
/// than what is installed. It trusts that only `sync` changes the mirror
/// once it is built: a mirror read back from the maps starts without one.
#[derive(Clone, Debug, Default)]
struct Memo {
    /// Passes so far: stamps the sets the current pass desires.
    pass: u64,
    /// Desired sets whose name is installed, by the address of their key
    /// (see `KnownSet::key`).
    sets: FoldHashMap<usize, KnownSet>,
    /// Which slots hold which backend; built from the mirror when missing.
    refs: Option<BackendRefs>,
}

#[derive(Clone, Debug)]
struct KnownSet {
    /// Held so that no other key can take its address. The model hands out
    /// the same `Arc` for an unchanged Service, so a pass finds a set by
    /// address without reading (hashing, comparing) its key's strings; a
    /// key that comes in a new `Arc` is found by name instead.
    _key: Arc<BackendSetKey>,
    name: String,
    id: u32,
    /// The last pass that desired it.
    seen: u64,
    /// What its slots hold, when they hold exactly one set's backends;
    /// None until then, or after a write for it failed (to retry it).
    written: Option<Written>,
}

#[derive(Clone, Debug)]
struct Written {
    set: Arc<BackendSet>,
    count: u16,
    /// What its frontends read besides the count, worked out once.
    flags: u16,
    affinity_timeout_secs: u32,
}

impl Written {
    fn new(set: &Arc<BackendSet>, count: u16) -> Self {
        let mut flags = 0;
        if set.backends.is_empty() && set.empty_outcome == EmptyOutcome::Drop {
            flags |= FRONTEND_F_DROP;
        }
        if set.affinity_timeout_secs.is_some() {
            flags |= FRONTEND_F_AFFINITY;
        }
        Self {
            set: set.clone(),
            count,
            flags,
            affinity_timeout_secs: set.affinity_timeout_secs.unwrap_or(0),
        }
    }
}

impl KnownSet {
    /// Whether the slots hold `set` already. Unchanged Services hand out
    /// the same Arc, so this is mostly a pointer compare; an equal value
    /// (a mirror adopted from the maps, a recomputed set) is remembered by
    /// its new Arc so that the next pass compares pointers again.
    fn holds(&mut self, set: &Arc<BackendSet>) -> bool {
        let Some(written) = &mut self.written else {
            return false;
        };
        if Arc::ptr_eq(&written.set, set) {
            return true;
        }
        if written.set == *set {
            written.set = set.clone();
            return true;
        }
        false
    }
}

/// How many slots hold each backend, so that unused backends are known
/// without reading every slot, and the UDP backends slots let go of.
#[derive(Clone, Debug, Default)]
struct BackendRefs {
    addrs: FoldHashMap<u32, BackendAddr>,
    held: FoldHashMap<u32, u32>,
    /// Installed backends no slot holds: the backend sweep deletes them.
    unused: BTreeSet<u32>,
    /// UDP backends a slot stopped holding during this pass.
    released: Vec<Released>,
}

/// A UDP backend that a slot of a set stopped holding.
#[derive(Clone, Debug)]
struct Released {
    set: String,
    id: u32,
    backend: SocketAddr,
}

impl BackendRefs {
    fn of(installed: &Installed) -> Self {
        let mut refs = Self::default();
        for (addr, b) in &installed.backends {
            refs.addrs.insert(b.id, *addr);
        }
        for id in installed.sets.values().flat_map(|s| &s.slots) {
            if *id != 0 {
                *refs.held.entry(*id).or_default() += 1;
            }
        }
        refs.unused = (refs.addrs.keys())
            .filter(|id| !refs.held.contains_key(id))
            .copied()
            .collect();
        refs
    }

    fn added(&mut self, id: u32, addr: BackendAddr) {
        self.addrs.insert(id, addr);
        self.unused.insert(id);
    }

    fn deleted(&mut self, id: u32) {
        self.addrs.remove(&id);
        self.unused.remove(&id);
    }

    fn hold(&mut self, id: u32) {
        *self.held.entry(id).or_default() += 1;
        self.unused.remove(&id);
    }

    /// Slot `set` (service id `id`) no longer holds `backend` (0: a hole).
    fn release(&mut self, set: &str, id: u32, backend: u32) {
        if backend == 0 {
            return;
        }
        if let Some(held) = self.held.get_mut(&backend) {
            *held -= 1;
            if *held == 0 {
                self.held.remove(&backend);
                if self.addrs.contains_key(&backend) {
                    self.unused.insert(backend);
                }
            }
        }
        if let Some(addr) = self.udp(backend) {
            self.released.push(Released {
                set: set.to_string(),
                id,
                backend: addr,
            });
        }
    }

    fn udp(&self, backend: u32) -> Option<SocketAddr> {
        (self.addrs.get(&backend))
            .filter(|a| a.protocol == Protocol::Udp)
            .map(|a| SocketAddr::new(a.ip, a.port))
    }
}

/// A problem met while syncing; the set it names was left as it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncError {
    pub what: String,
    pub reason: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Map entries written or deleted.
    pub changes: usize,
    pub errors: Vec<SyncError>,
    /// Connected UDP sockets destroyed because their backend left.
    pub udp_sockets_destroyed: usize,
}

/// Hands out the smallest ids not in use, in 1..limit.
#[derive(Debug)]
struct Ids {
    used: BTreeSet<u32>,
    limit: u32,
    next: u32,
}

impl Ids {
    fn new(used: impl IntoIterator<Item = u32>, limit: u32) -> Self {
        Self {
            used: used.into_iter().collect(),
            limit,
            next: 1,
        }
    }

    fn take(&mut self) -> Option<u32> {
        while self.next < self.limit {
            let id = self.next;
            self.next += 1;
            if self.used.insert(id) {
                return Some(id);
            }
        }
        None
    }
}

fn backend_addr(b: &Backend) -> BackendAddr {
    BackendAddr {
        ip: b.ip,
        port: b.port,
        protocol: b.protocol,
        flags: backend_flags(b),
    }
}

fn backend_flags(b: &Backend) -> u8 {
    let mut flags = 0;
    if b.terminating {
        flags |= BACKEND_F_TERMINATING;
    }
    if b.local {
        flags |= BACKEND_F_LOCAL;
    }
    flags
}

/// New slot contents for a set: a backend that stays keeps its slot when
/// that slot is still within the new count; the others fill the holes.
/// This keeps rewrites (and session affinity breaks) to a minimum.
pub fn assign_slots(old: &[u32], want: &[u32]) -> Vec<u32> {
    let mut wanted: Vec<u32> = Vec::with_capacity(want.len());
    let mut seen = HashSet::with_capacity(want.len());
    for id in want {
        if seen.insert(*id) {
            wanted.push(*id);
        }
    }
    let n = wanted.len();
    let mut out = vec![0u32; n];
    let mut placed = HashSet::with_capacity(n);
    for (i, id) in old.iter().take(n).enumerate() {
        if *id != 0 && seen.contains(id) && placed.insert(*id) {
            out[i] = *id;
        }
    }
    let mut rest = wanted.iter().filter(|id| !placed.contains(*id));
    for slot in out.iter_mut().filter(|s| **s == 0) {
        // There are exactly as many unplaced backends as holes.
        if let Some(id) = rest.next() {
            *slot = *id;
        }
    }
    out
}

/// Counts a successful write, or records why it failed.
fn rec<E: std::fmt::Display>(
    report: &mut SyncReport,
    what: impl FnOnce() -> String,
    r: Result<(), E>,
) -> bool {
    match r {
        Ok(()) => {
            report.changes += 1;
            true
        }
        Err(e) => {
            report.errors.push(SyncError {
                what: what(),
                reason: e.to_string(),
            });
            false
        }
    }
}

impl Installed {
    /// Brings the store to `desired`. Updates the mirror as writes succeed,
    /// so that a failed write is retried by the next sync.
    pub fn sync<S: Store>(&mut self, store: &mut S, desired: &DesiredState) -> SyncReport {
        self.sync_with_departures(store, desired).0
    }

    /// `sync`, plus every (service id of a set, UDP backend) that the set
    /// held before the pass and no longer holds: connected sockets
    /// translated through it have to go.
    pub fn sync_with_departures<S: Store>(
        &mut self,
        store: &mut S,
        desired: &DesiredState,
    ) -> (SyncReport, Vec<Departed>) {
        self.memo.pass += 1;
        if self.memo.refs.is_none() {
            self.memo.refs = Some(BackendRefs::of(self));
        }
        let mut writer = Writer::new(self, store);
        // 1 + 2: ids, backends, slots.
        for (key, set) in &desired.backend_sets {
            writer.sync_set(key, set);
        }
        // 3: frontends switch over, each in one update.
        writer.put_frontends(desired);
        writer.put_cluster_ips(desired);
        writer.put_node_ports(desired);
        // 4: sweep, in reverse order of dependence.
        writer.del_frontends(desired);
        writer.del_cluster_ips(desired);
        writer.del_node_ports(desired);
        writer.trim_slots();
        writer.del_sets();
        writer.del_backends();
        let report = writer.report;
        self.memo.forget_undesired();
        (report, self.departures())
    }

    fn refs(&mut self) -> &mut BackendRefs {
        self.memo
            .refs
            .as_mut()
            .expect("built at the start of the pass")
    }

    /// The released UDP backends their set does not hold again elsewhere.
    fn departures(&mut self) -> Vec<Departed> {
        let released = std::mem::take(&mut self.refs().released);
        let refs = self
            .memo
            .refs
            .as_ref()
            .expect("built at the start of the pass");
        let still_holds = |r: &Released| {
            (self.sets.get(&r.set))
                .filter(|s| s.id == r.id)
                .is_some_and(|s| s.slots.iter().any(|b| refs.udp(*b) == Some(r.backend)))
        };
        let departed: BTreeSet<Departed> = (released.iter())
            .filter(|r| !still_holds(r))
            .map(|r| (r.id, r.backend))
            .collect();
        departed.into_iter().collect()
    }
}

impl Memo {
    /// Drops the sets this pass did not desire: their names may be swept,
    /// so they must be installed afresh if they come back.
    fn forget_undesired(&mut self) {
        let pass = self.pass;
        if self.sets.values().any(|k| k.seen != pass) {
            self.sets.retain(|_, k| k.seen == pass);
        }
    }

    /// A set the current pass desires, by its key's address.
    fn desired(&self, key: &Arc<BackendSetKey>) -> Option<&KnownSet> {
        self.sets.get(&addr(key)).filter(|k| k.seen == self.pass)
    }
}

fn addr(key: &Arc<BackendSetKey>) -> usize {
    Arc::as_ptr(key) as usize
}

/// The writes of one sync: the store, what they have done so far, and
/// what the sweeps need to know.
struct Writer<'a, S> {
    inst: &'a mut Installed,
    store: &'a mut S,
    report: SyncReport,
    /// Built on first use: most passes add no set and no backend.
    set_ids: Option<Ids>,
    backend_ids: Option<Ids>,
    /// Sets whose slots were rewritten: their slots past the new count go.
    rewritten: Vec<usize>,
    present: Present,
}

/// How many desired entries of each kind are installed: when the mirror
/// holds no more, it holds nothing to sweep.
#[derive(Default)]
struct Present {
    /// Sets by name.
    sets: usize,
    frontends: usize,
    cluster_ips: usize,
    node_ports: usize,
}

impl<'a, S: Store> Writer<'a, S> {
    fn new(inst: &'a mut Installed, store: &'a mut S) -> Self {
        Self {
            inst,
            store,
            report: SyncReport::default(),
            set_ids: None,
            backend_ids: None,
            rewritten: Vec::new(),
            present: Present::default(),
        }
    }

    fn sync_set(&mut self, key: &Arc<BackendSetKey>, set: &Arc<BackendSet>) {
        let pass = self.inst.memo.pass;
        if let Some(known) = self.inst.memo.sets.get_mut(&addr(key)) {
            known.seen = pass;
            self.present.sets += 1;
            if known.holds(set) {
                return;
            }
        } else if !self.install_name(key) {
            return;
        }
        let written = self.write_set(key, set);
        let known = (self.inst.memo.sets.get_mut(&addr(key))).expect("installed above");
        if written.is_some() {
            self.rewritten.push(addr(key));
        }
        known.written = written;
    }

    /// Gives a set its service id and name, and the memo an entry for it.
    /// False when that failed.
    fn install_name(&mut self, key: &Arc<BackendSetKey>) -> bool {
        let name = key.to_string();
        let id = match self.inst.sets.get(&name) {
            Some(installed) => installed.id,
            None => match self.new_set(&name) {
                Some(id) => id,
                None => return false,
            },
        };
        let known = KnownSet {
            _key: key.clone(),
            name,
            id,
            seen: self.inst.memo.pass,
            written: None,
        };
        self.inst.memo.sets.insert(addr(key), known);
        self.present.sets += 1;
        true
    }

    fn new_set(&mut self, name: &str) -> Option<u32> {
        let inst = &*self.inst;
        let ids = (self.set_ids)
            .get_or_insert_with(|| Ids::new(inst.sets.values().map(|s| s.id), capacity::SERVICES));
        let Some(id) = ids.take() else {
            self.report.errors.push(SyncError {
                what: name.to_string(),
                reason: format!(
                    "no free service id (the maps hold {} backend sets)",
                    capacity::SERVICES - 1
                ),
            });
            return None;
        };
        // A reused id must not carry another Service's counters or name;
        // the frontends that will point at it come later.
        let _ = rec(
            &mut self.report,
            || format!("{name}: counters"),
            self.store.reset_counters(id),
        );
        if !rec(
            &mut self.report,
            || format!("{name}: name"),
            self.store.put_name(id, name),
        ) {
            ids.used.remove(&id);
            return None;
        }
        let slots = Vec::new();
        self.inst
            .sets
            .insert(name.to_string(), InstalledSet { id, slots });
        Some(id)
    }

    /// Writes a set's backends and slots; what they hold then, or None
    /// when a write failed.
    fn write_set(&mut self, key: &Arc<BackendSetKey>, set: &Arc<BackendSet>) -> Option<Written> {
        let name = self.inst.memo.sets[&addr(key)].name.clone();
        let ids = self.backend_ids_of(&name, set)?;
        let count = self.write_slots(&name, ids)?;
        Some(Written::new(set, count))
    }

    /// The ids of a set's backends, adding those not installed yet.
    fn backend_ids_of(&mut self, name: &str, set: &BackendSet) -> Option<Vec<u32>> {
        let mut ids = Vec::with_capacity(set.backends.len());
        for b in &set.backends {
            let addr = backend_addr(b);
            // A backend's identity includes its flags: one endpoint can be
            // ready in one Service and terminating in another, and each
            // set must show (and keep) its own view of it.
            let id = match self.inst.backends.get(&addr) {
                Some(installed) => installed.id,
                None => self.new_backend(name, addr)?,
            };
            ids.push(id);
        }
        Some(ids)
    }

    fn new_backend(&mut self, name: &str, addr: BackendAddr) -> Option<u32> {
        let inst = &*self.inst;
        let ids = (self.backend_ids).get_or_insert_with(|| {
            Ids::new(inst.backends.values().map(|b| b.id), capacity::BACKENDS)
        });
        let Some(id) = ids.take() else {
            self.report.errors.push(SyncError {
                what: name.to_string(),
                reason: format!(
                    "no free backend id (the maps hold {} backends)",
                    capacity::BACKENDS - 1
                ),
            });
            return None;
        };
        if !rec(
            &mut self.report,
            || format!("{name}: backend {}:{}", addr.ip, addr.port),
            self.store.put_backend(id, &addr),
        ) {
            ids.used.remove(&id);
            return None;
        }
        self.inst.backends.insert(addr, InstalledBackend { id });
        self.inst.refs().added(id, addr);
        Some(id)
    }

    /// Fills slots 1..=N with `ids`; N, or None when a write failed.
    fn write_slots(&mut self, name: &str, ids: Vec<u32>) -> Option<u16> {
        let inst = &mut *self.inst;
        let installed = inst.sets.get_mut(name).expect("installed above");
        let refs = inst
            .memo
            .refs
            .as_mut()
            .expect("built at the start of the pass");
        // The common case, a set that did not change, needs no slot
        // assignment.
        let new_slots = if installed.slots == ids {
            ids
        } else {
            assign_slots(&installed.slots, &ids)
        };
        for (i, backend_id) in new_slots.iter().enumerate() {
            if installed.slots.get(i) == Some(backend_id) {
                continue;
            }
            let slot = i as u32 + 1;
            // The slot holds a copy of the backend (`lb_common::Slot`).
            let addr = refs.addrs[backend_id];
            if !rec(
                &mut self.report,
                || format!("{name}: slot {slot}"),
                self.store.put_slot(installed.id, slot, *backend_id, &addr),
            ) {
                return None;
            }
            refs.hold(*backend_id);
            if i < installed.slots.len() {
                let old = std::mem::replace(&mut installed.slots[i], *backend_id);
                refs.release(name, installed.id, old);
            } else {
                installed.slots.push(*backend_id);
            }
        }
        Some(new_slots.len() as u16)
    }

    fn put_frontends(&mut self, desired: &DesiredState) {
        for (addr, fe) in &desired.frontends {
            let installed = self.inst.frontends.get(addr).copied();
            let mut present = installed.is_some();
            if let Some(value) = self.frontend_value(desired, fe)
                && installed != Some(value)
                && rec(
                    &mut self.report,
                    || format!("frontend {addr}"),
                    self.store.put_frontend(addr, &value),
                )
            {
                self.inst.frontends.insert(*addr, value);
                present = true;
            }
            self.present.frontends += usize::from(present);
        }
    }

    /// What a frontend should read, once its set's slots are written.
    fn frontend_value(&self, desired: &DesiredState, fe: &Frontend) -> Option<FrontendValue> {
        let known = self.known(desired, &fe.set)?;
        // None: the set failed; leave the frontend as it is.
        let written = known.written.as_ref()?;
        Some(FrontendValue {
            service_id: known.id,
            count: written.count,
            flags: fe.kind as u16 | written.flags,
            affinity_timeout_secs: written.affinity_timeout_secs,
            _pad: 0,
        })
    }

    /// A desired set, named by a key that is usually (but need not be) the
    /// very `Arc` that keys it in `desired.backend_sets`.
    fn known(&self, desired: &DesiredState, key: &Arc<BackendSetKey>) -> Option<&KnownSet> {
        let memo = &self.inst.memo;
        memo.desired(key).or_else(|| {
            let (key, _) = desired.backend_sets.get_key_value(key)?;
            memo.desired(key)
        })
    }

    fn put_cluster_ips(&mut self, desired: &DesiredState) {
        for (ip, key) in &desired.cluster_ips {
            let installed = self.inst.cluster_ips.get(ip).copied();
            let mut present = installed.is_some();
            if let Some(id) = self.known(desired, key).map(|k| k.id)
                && installed != Some(id)
                && rec(
                    &mut self.report,
                    || format!("cluster IP {ip}"),
                    self.store.put_cluster_ip(*ip, id),
                )
            {
                self.inst.cluster_ips.insert(*ip, id);
                present = true;
            }
            self.present.cluster_ips += usize::from(present);
        }
    }

    fn put_node_ports(&mut self, desired: &DesiredState) {
        for &(port, protocol) in &desired.node_ports {
            let present = self.inst.node_ports.contains(&(port, protocol))
                || rec(
                    &mut self.report,
                    || format!("node port {port}/{protocol}"),
                    self.store.put_node_port(port, protocol),
                );
            if present {
                self.inst.node_ports.insert((port, protocol));
            }
            self.present.node_ports += usize::from(present);
        }
    }

    fn del_frontends(&mut self, desired: &DesiredState) {
        if self.inst.frontends.len() == self.present.frontends {
            return;
        }
        let gone: Vec<FrontendAddr> = (self.inst.frontends.keys())
            .filter(|a| !desired.frontends.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if rec(
                &mut self.report,
                || format!("frontend {addr}"),
                self.store.del_frontend(&addr),
            ) {
                self.inst.frontends.remove(&addr);
            }
        }
    }

    fn del_cluster_ips(&mut self, desired: &DesiredState) {
        if self.inst.cluster_ips.len() == self.present.cluster_ips {
            return;
        }
        let gone: Vec<IpAddr> = (self.inst.cluster_ips.keys())
            .filter(|ip| !desired.cluster_ips.contains_key(ip))
            .copied()
            .collect();
        for ip in gone {
            if rec(
                &mut self.report,
                || format!("cluster IP {ip}"),
                self.store.del_cluster_ip(ip),
            ) {
                self.inst.cluster_ips.remove(&ip);
            }
        }
    }

    fn del_node_ports(&mut self, desired: &DesiredState) {
        if self.inst.node_ports.len() == self.present.node_ports {
            return;
        }
        let gone: Vec<(u16, Protocol)> = (self.inst.node_ports.iter())
            .filter(|p| !desired.node_ports.contains(p))
            .copied()
            .collect();
        for (port, protocol) in gone {
            if rec(
                &mut self.report,
                || format!("node port {port}/{protocol}"),
                self.store.del_node_port(port, protocol),
            ) {
                self.inst.node_ports.remove(&(port, protocol));
            }
        }
    }

    /// Slots past the new counts of the sets rewritten (the counts are
    /// already lowered). A failure leaves the set to be rewritten, and so
    /// trimmed again, next pass.
    fn trim_slots(&mut self) {
        for key in std::mem::take(&mut self.rewritten) {
            let inst = &mut *self.inst;
            let known = inst.memo.sets.get_mut(&key).expect("rewritten this pass");
            let count = known.written.as_ref().map_or(0, |w| w.count);
            let set = inst.sets.get_mut(&known.name).expect("installed");
            let refs = inst
                .memo
                .refs
                .as_mut()
                .expect("built at the start of the pass");
            if !del_slots_past(self.store, &mut self.report, &known.name, set, count, refs) {
                known.written = None;
            }
        }
    }

    /// Sets no longer desired, unless a frontend still points at them (its
    /// delete failed above: keep what it reads).
    fn del_sets(&mut self) {
        if self.inst.sets.len() == self.present.sets {
            return;
        }
        let inst = &mut *self.inst;
        let pass = inst.memo.pass;
        let in_use: HashSet<u32> = inst.frontends.values().map(|v| v.service_id).collect();
        let desired: HashSet<&str> = (inst.memo.sets.values())
            .filter(|k| k.seen == pass)
            .map(|k| k.name.as_str())
            .collect();
        let gone: Vec<String> = (inst.sets.iter())
            .filter(|(n, s)| !desired.contains(n.as_str()) && !in_use.contains(&s.id))
            .map(|(n, _)| n.clone())
            .collect();
        let refs = inst
            .memo
            .refs
            .as_mut()
            .expect("built at the start of the pass");
        for name in gone {
            let set = inst.sets.get_mut(&name).expect("listed above");
            if del_slots_past(self.store, &mut self.report, &name, set, 0, refs)
                && rec(
                    &mut self.report,
                    || format!("{name}: name"),
                    self.store.del_name(set.id),
                )
            {
                inst.sets.remove(&name);
            }
        }
    }

    /// Backends no slot refers to.
    fn del_backends(&mut self) {
        let refs = self
            .inst
            .memo
            .refs
            .as_mut()
            .expect("built at the start of the pass");
        let gone: Vec<(u32, BackendAddr)> = (refs.unused.iter())
            .filter_map(|id| Some((*id, *refs.addrs.get(id)?)))
            .collect();
        for (id, addr) in gone {
            if rec(
                &mut self.report,
                || format!("backend {}:{}", addr.ip, addr.port),
                self.store.del_backend(id, &addr),
            ) {
                self.inst.backends.remove(&addr);
                refs.deleted(id);
            }
        }
    }
}

/// Deletes a set's slots past `count`, last first; false when one failed.
fn del_slots_past<S: Store>(
    store: &mut S,
    report: &mut SyncReport,
    name: &str,
    set: &mut InstalledSet,
    count: u16,
    refs: &mut BackendRefs,
) -> bool {
    while set.slots.len() > usize::from(count) {
        let slot = set.slots.len() as u32;
        if !rec(
            report,
            || format!("{name}: slot {slot}"),
            store.del_slot(set.id, slot),
        ) {
            return false;
        }
        let backend = set.slots.pop().expect("longer than count");
        refs.release(name, set.id, backend);
    }
    true
}
