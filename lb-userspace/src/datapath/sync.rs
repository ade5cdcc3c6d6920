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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;

use lb_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, FRONTEND_F_AFFINITY, FRONTEND_F_DROP, FrontendValue,
    capacity,
};

use super::store::{BackendAddr, Store};
use crate::model::{Backend, DesiredState, EmptyOutcome, FrontendAddr, Protocol};

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Installed {
    /// By the set's name (`BackendSetKey`'s Display form).
    pub sets: HashMap<String, InstalledSet>,
    pub backends: HashMap<BackendAddr, InstalledBackend>,
    pub frontends: HashMap<FrontendAddr, FrontendValue>,
    pub cluster_ips: HashMap<IpAddr, u32>,
    pub node_ports: HashSet<(u16, Protocol)>,
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
        let mut report = SyncReport::default();
        let mut set_ids = Ids::new(self.sets.values().map(|s| s.id), capacity::SERVICES);
        let mut backend_ids = Ids::new(self.backends.values().map(|b| b.id), capacity::BACKENDS);

        // Names of desired sets, and the counts they will have.
        let mut names = BTreeMap::new();
        let mut counts: HashMap<String, u16> = HashMap::new();
        let mut failed: HashSet<String> = HashSet::new();

        // 1 + 2: ids, backends, slots.
        for (key, set) in &desired.backend_sets {
            let name = key.to_string();
            names.insert(key.clone(), name.clone());
            if !self.sets.contains_key(&name) {
                let Some(id) = set_ids.take() else {
                    report.errors.push(SyncError {
                        what: name.clone(),
                        reason: format!(
                            "no free service id (the maps hold {} backend sets)",
                            capacity::SERVICES - 1
                        ),
                    });
                    failed.insert(name);
                    continue;
                };
                // A reused id must not carry another Service's counters or
                // name; the frontends that will point at it come later.
                let _ = rec(
                    &mut report,
                    || format!("{name}: counters"),
                    store.reset_counters(id),
                );
                if !rec(
                    &mut report,
                    || format!("{name}: name"),
                    store.put_name(id, &name),
                ) {
                    set_ids.used.remove(&id);
                    failed.insert(name);
                    continue;
                }
                self.sets.insert(
                    name.clone(),
                    InstalledSet {
                        id,
                        slots: Vec::new(),
                    },
                );
            }
            let mut ids = Vec::with_capacity(set.backends.len());
            let mut ok = true;
            for b in &set.backends {
                let addr = backend_addr(b);
                // A backend's identity includes its flags: one endpoint can be
                // ready in one Service and terminating in another, and each
                // set must show (and keep) its own view of it.
                match self.backends.get(&addr).copied() {
                    Some(installed) => ids.push(installed.id),
                    None => {
                        let Some(id) = backend_ids.take() else {
                            report.errors.push(SyncError {
                                what: name.clone(),
                                reason: format!(
                                    "no free backend id (the maps hold {} backends)",
                                    capacity::BACKENDS - 1
                                ),
                            });
                            ok = false;
                            break;
                        };
                        if !rec(
                            &mut report,
                            || format!("{name}: backend {}:{}", addr.ip, addr.port),
                            store.put_backend(id, &addr),
                        ) {
                            backend_ids.used.remove(&id);
                            ok = false;
                            break;
                        }
                        self.backends.insert(addr, InstalledBackend { id });
                        ids.push(id);
                    }
                }
            }
            if !ok {
                failed.insert(name);
                continue;
            }
            let installed = self.sets.get_mut(&name).expect("inserted above");
            let new_slots = assign_slots(&installed.slots, &ids);
            for (i, backend_id) in new_slots.iter().enumerate() {
                if installed.slots.get(i) == Some(backend_id) {
                    continue;
                }
                let slot = i as u32 + 1;
                if !rec(
                    &mut report,
                    || format!("{name}: slot {slot}"),
                    store.put_slot(installed.id, slot, *backend_id),
                ) {
                    ok = false;
                    break;
                }
                if i < installed.slots.len() {
                    installed.slots[i] = *backend_id;
                } else {
                    installed.slots.push(*backend_id);
                }
            }
            if !ok {
                failed.insert(name);
                continue;
            }
            counts.insert(name, new_slots.len() as u16);
        }

        // 3: frontends switch over, each in one update.
        for (addr, fe) in &desired.frontends {
            let Some(set) = desired.backend_sets.get(&fe.set) else {
                continue;
            };
            let name = &names[&fe.set];
            let (Some(count), Some(installed)) = (counts.get(name), self.sets.get(name)) else {
                // The set failed: leave the frontend as it is.
                continue;
            };
            let mut flags = fe.kind as u16;
            if set.backends.is_empty() && set.empty_outcome == EmptyOutcome::Drop {
                flags |= FRONTEND_F_DROP;
            }
            if set.affinity_timeout_secs.is_some() {
                flags |= FRONTEND_F_AFFINITY;
            }
            let value = FrontendValue {
                service_id: installed.id,
                count: *count,
                flags,
                affinity_timeout_secs: set.affinity_timeout_secs.unwrap_or(0),
                _pad: 0,
            };
            if self.frontends.get(addr) != Some(&value)
                && rec(
                    &mut report,
                    || format!("frontend {addr}"),
                    store.put_frontend(addr, &value),
                )
            {
                self.frontends.insert(*addr, value);
            }
        }
        for (ip, key) in &desired.cluster_ips {
            let Some(id) = names.get(key).and_then(|n| self.sets.get(n)).map(|s| s.id) else {
                continue;
            };
            if self.cluster_ips.get(ip) != Some(&id)
                && rec(
                    &mut report,
                    || format!("cluster IP {ip}"),
                    store.put_cluster_ip(*ip, id),
                )
            {
                self.cluster_ips.insert(*ip, id);
            }
        }
        for (port, protocol) in &desired.node_ports {
            if !self.node_ports.contains(&(*port, *protocol))
                && rec(
                    &mut report,
                    || format!("node port {port}/{protocol}"),
                    store.put_node_port(*port, *protocol),
                )
            {
                self.node_ports.insert((*port, *protocol));
            }
        }

        // 4: sweep, in reverse order of dependence.
        let gone: Vec<FrontendAddr> = self
            .frontends
            .keys()
            .filter(|a| !desired.frontends.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if rec(
                &mut report,
                || format!("frontend {addr}"),
                store.del_frontend(&addr),
            ) {
                self.frontends.remove(&addr);
            }
        }
        let gone: Vec<IpAddr> = self
            .cluster_ips
            .keys()
            .filter(|ip| !desired.cluster_ips.contains_key(ip))
            .copied()
            .collect();
        for ip in gone {
            if rec(
                &mut report,
                || format!("cluster IP {ip}"),
                store.del_cluster_ip(ip),
            ) {
                self.cluster_ips.remove(&ip);
            }
        }
        let gone: Vec<(u16, Protocol)> = self
            .node_ports
            .iter()
            .filter(|p| !desired.node_ports.contains(p))
            .copied()
            .collect();
        for (port, protocol) in gone {
            if rec(
                &mut report,
                || format!("node port {port}/{protocol}"),
                store.del_node_port(port, protocol),
            ) {
                self.node_ports.remove(&(port, protocol));
            }
        }
        // Slots past the new counts (the counts are already lowered).
        for (name, count) in &counts {
            let installed = self.sets.get_mut(name).expect("synced above");
            while installed.slots.len() > *count as usize {
                let slot = installed.slots.len() as u32;
                if !rec(
                    &mut report,
                    || format!("{name}: slot {slot}"),
                    store.del_slot(installed.id, slot),
                ) {
                    break;
                }
                installed.slots.pop();
            }
        }
        // Sets no longer desired, unless a frontend still points at them
        // (its delete failed above: keep what it reads).
        let in_use: HashSet<u32> = self.frontends.values().map(|v| v.service_id).collect();
        let desired_names: HashSet<&String> = names.values().collect();
        let gone: Vec<String> = self
            .sets
            .iter()
            .filter(|(n, s)| !desired_names.contains(n) && !in_use.contains(&s.id))
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            let set = self.sets.get_mut(&name).expect("listed above");
            while let Some(_last) = set.slots.last() {
                let slot = set.slots.len() as u32;
                if !rec(
                    &mut report,
                    || format!("{name}: slot {slot}"),
                    store.del_slot(set.id, slot),
                ) {
                    break;
                }
                set.slots.pop();
            }
            if set.slots.is_empty()
                && rec(
                    &mut report,
                    || format!("{name}: name"),
                    store.del_name(set.id),
                )
            {
                self.sets.remove(&name);
            }
        }
        // Backends no slot refers to.
        let referenced: HashSet<u32> = self
            .sets
            .values()
            .flat_map(|s| s.slots.iter().copied())
            .collect();
        let gone: Vec<(BackendAddr, u32)> = self
            .backends
            .iter()
            .filter(|(_, b)| !referenced.contains(&b.id))
            .map(|(a, b)| (*a, b.id))
            .collect();
        for (addr, id) in gone {
            if rec(
                &mut report,
                || format!("backend {}:{}", addr.ip, addr.port),
                store.del_backend(id, &addr),
            ) {
                self.backends.remove(&addr);
            }
        }
        report
    }
}
