//! The ordering rules of `sync`, checked after every single write against
//! an in-memory store: at no moment may a frontend's count reach a slot that
//! is empty or a backend that does not exist.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use lb_common::{FRONTEND_F_DROP, FrontendKind, FrontendValue};

use super::sockets::Departed;
use super::store::{BackendAddr, Store};
use super::sync::{Installed, InstalledBackend, InstalledSet, assign_slots};
use crate::model::{
    Backend, BackendSet, BackendSetKey, DesiredState, EmptyOutcome, Frontend, FrontendAddr,
    IpFamily, Protocol, Selection, ServiceRef,
};

#[derive(Default)]
pub(super) struct MemStore {
    backends: HashMap<u32, BackendAddr>,
    /// The backend id and the copy of its address each slot holds.
    slots: HashMap<(u32, u32), (u32, BackendAddr)>,
    frontends: HashMap<FrontendAddr, FrontendValue>,
    cluster_ips: HashMap<IpAddr, u32>,
    names: HashMap<u32, String>,
    /// Fail every write after this many succeeded (None: never).
    fail_after: Option<usize>,
    /// Skip the invariant check after each write (timing runs: it costs
    /// O(frontends) per write).
    pub(super) unchecked: bool,
    writes: usize,
    violations: Vec<String>,
}

impl MemStore {
    fn check(&mut self, op: &str) {
        if self.unchecked {
            return;
        }
        for (fe, v) in &self.frontends {
            for slot in 1..=u32::from(v.count) {
                match self.slots.get(&(v.service_id, slot)) {
                    None => self.violations.push(format!(
                        "after {op}: {fe} count {} but slot {slot} empty",
                        v.count
                    )),
                    // The datapath reads the slot's copy: it must be what
                    // the id stands for in the registry.
                    Some((b, a)) if self.backends.get(b) != Some(a) => {
                        self.violations.push(format!(
                            "after {op}: {fe} slot {slot} → backend {b} {a:?}, registry {:?}",
                            self.backends.get(b)
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
    }

    fn write(&mut self) -> Result<(), String> {
        if self.fail_after.is_some_and(|n| self.writes >= n) {
            return Err("injected failure".into());
        }
        self.writes += 1;
        Ok(())
    }

    /// What a connect to `fe` could reach right now.
    fn reachable(&self, fe: &FrontendAddr) -> Vec<(IpAddr, u16)> {
        let Some(v) = self.frontends.get(fe) else {
            return vec![];
        };
        let mut out: Vec<_> = (1..=u32::from(v.count))
            .filter_map(|s| self.slots.get(&(v.service_id, s)))
            .map(|(_, a)| (a.ip, a.port))
            .collect();
        out.sort();
        out
    }
}

macro_rules! op {
    ($self:ident, $name:expr, $body:block) => {{
        $self.write()?;
        $body;
        $self.check($name);
        Ok(())
    }};
}

impl Store for MemStore {
    type Error = String;
    fn put_backend(&mut self, id: u32, addr: &BackendAddr) -> Result<(), String> {
        op!(self, "put_backend", { self.backends.insert(id, *addr) })
    }
    fn del_backend(&mut self, id: u32, _addr: &BackendAddr) -> Result<(), String> {
        op!(self, "del_backend", { self.backends.remove(&id) })
    }
    fn put_slot(
        &mut self,
        service_id: u32,
        slot: u32,
        backend_id: u32,
        addr: &BackendAddr,
    ) -> Result<(), String> {
        op!(self, "put_slot", {
            self.slots.insert((service_id, slot), (backend_id, *addr))
        })
    }
    fn del_slot(&mut self, service_id: u32, slot: u32) -> Result<(), String> {
        op!(self, "del_slot", { self.slots.remove(&(service_id, slot)) })
    }
    fn put_frontend(&mut self, fe: &FrontendAddr, value: &FrontendValue) -> Result<(), String> {
        op!(self, "put_frontend", { self.frontends.insert(*fe, *value) })
    }
    fn del_frontend(&mut self, fe: &FrontendAddr) -> Result<(), String> {
        op!(self, "del_frontend", { self.frontends.remove(fe) })
    }
    fn put_cluster_ip(&mut self, ip: IpAddr, service_id: u32) -> Result<(), String> {
        op!(self, "put_cluster_ip", {
            self.cluster_ips.insert(ip, service_id)
        })
    }
    fn del_cluster_ip(&mut self, ip: IpAddr) -> Result<(), String> {
        op!(self, "del_cluster_ip", { self.cluster_ips.remove(&ip) })
    }
    fn put_node_port(&mut self, _port: u16, _protocol: Protocol) -> Result<(), String> {
        op!(self, "put_node_port", {})
    }
    fn del_node_port(&mut self, _port: u16, _protocol: Protocol) -> Result<(), String> {
        op!(self, "del_node_port", {})
    }
    fn put_name(&mut self, service_id: u32, name: &str) -> Result<(), String> {
        op!(self, "put_name", {
            self.names.insert(service_id, name.to_string())
        })
    }
    fn del_name(&mut self, service_id: u32) -> Result<(), String> {
        op!(self, "del_name", { self.names.remove(&service_id) })
    }
    fn reset_counters(&mut self, _service_id: u32) -> Result<(), String> {
        op!(self, "reset_counters", {})
    }
}

fn key(name: &str) -> Arc<BackendSetKey> {
    Arc::new(BackendSetKey {
        service: ServiceRef {
            namespace: "default".into(),
            name: name.into(),
        },
        port_name: "http".into(),
        protocol: Protocol::Tcp,
        family: IpFamily::V4,
        selection: Selection::Cluster,
    })
}

fn fe(ip: &str) -> FrontendAddr {
    FrontendAddr {
        ip: ip.parse().unwrap(),
        port: 80,
        protocol: Protocol::Tcp,
    }
}

fn backend(i: u8) -> Backend {
    Backend {
        ip: IpAddr::from([10, 244, 0, i]),
        port: 8080,
        protocol: Protocol::Tcp,
        terminating: false,
        local: false,
    }
}

/// One ClusterIP Service per (name, ip, backend numbers).
fn desired(services: &[(&str, &str, &[u8])]) -> DesiredState {
    let mut d = DesiredState::default();
    for (name, ip, backends) in services {
        d.backend_sets.insert(
            key(name),
            Arc::new(BackendSet {
                backends: backends.iter().map(|i| backend(*i)).collect(),
                empty_outcome: EmptyOutcome::Reject,
                affinity_timeout_secs: None,
            }),
        );
        d.frontends.insert(
            fe(ip),
            Frontend {
                kind: FrontendKind::ClusterIp,
                set: key(name),
            },
        );
        d.cluster_ips.insert(ip.parse().unwrap(), key(name));
    }
    d
}

fn ips(backends: &[u8]) -> Vec<(IpAddr, u16)> {
    let mut v: Vec<_> = backends
        .iter()
        .map(|i| (IpAddr::from([10, 244, 0, *i]), 8080))
        .collect();
    v.sort();
    v
}

fn run(steps: &[DesiredState]) -> (MemStore, Installed) {
    let mut store = MemStore::default();
    let mut installed = Installed::default();
    for d in steps {
        let report = installed.sync(&mut store, d);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(store.violations.is_empty(), "{:#?}", store.violations);
    }
    (store, installed)
}

#[test]
fn install_then_scale_up_down_and_replace_without_exposing_gaps() {
    let steps = [
        desired(&[("a", "10.96.0.1", &[1, 2]), ("b", "10.96.0.2", &[3])]),
        desired(&[
            ("a", "10.96.0.1", &[1, 2, 4, 5, 6]),
            ("b", "10.96.0.2", &[3]),
        ]),
        desired(&[("a", "10.96.0.1", &[6]), ("b", "10.96.0.2", &[3])]),
        desired(&[("a", "10.96.0.1", &[7, 8]), ("b", "10.96.0.2", &[3, 1])]),
    ];
    for n in 1..=steps.len() {
        let (store, _) = run(&steps[..n]);
        let want: [&[u8]; 4] = [&[1, 2], &[1, 2, 4, 5, 6], &[6], &[7, 8]];
        assert_eq!(
            store.reachable(&fe("10.96.0.1")),
            ips(want[n - 1]),
            "step {n}"
        );
    }
    let (store, _) = run(&steps);
    assert_eq!(store.reachable(&fe("10.96.0.2")), ips(&[1, 3]));
    // Backends 2, 4, 5, 6 are referenced by nothing any more: swept.
    assert_eq!(store.backends.len(), 4, "{:?}", store.backends);
}

#[test]
fn a_second_sync_of_the_same_state_writes_nothing() {
    let d = desired(&[("a", "10.96.0.1", &[1, 2, 3])]);
    let mut store = MemStore::default();
    let mut installed = Installed::default();
    assert!(installed.sync(&mut store, &d).changes > 0);
    let again = installed.sync(&mut store, &d);
    assert_eq!(again.changes, 0);
    assert!(again.errors.is_empty());
}

#[test]
fn removing_a_service_sweeps_all_its_entries() {
    let (store, installed) = run(&[
        desired(&[("a", "10.96.0.1", &[1, 2]), ("b", "10.96.0.2", &[3])]),
        desired(&[("b", "10.96.0.2", &[3])]),
    ]);
    assert!(!store.frontends.contains_key(&fe("10.96.0.1")));
    assert_eq!(store.cluster_ips.len(), 1);
    assert_eq!(store.names.len(), 1);
    assert_eq!(store.slots.len(), 1);
    assert_eq!(store.backends.len(), 1);
    assert_eq!(installed.sets.len(), 1);
}

#[test]
fn empty_sets_reject_or_drop() {
    let mut d = desired(&[("a", "10.96.0.1", &[])]);
    let (store, _) = run(std::slice::from_ref(&d));
    let v = store.frontends[&fe("10.96.0.1")];
    assert_eq!((v.count, v.flags & FRONTEND_F_DROP), (0, 0));
    Arc::make_mut(d.backend_sets.get_mut(&key("a")).unwrap()).empty_outcome = EmptyOutcome::Drop;
    let (store, _) = run(&[desired(&[("a", "10.96.0.1", &[1])]), d]);
    let v = store.frontends[&fe("10.96.0.1")];
    assert_eq!(v.count, 0);
    assert_ne!(v.flags & FRONTEND_F_DROP, 0);
}

#[test]
fn a_failed_write_leaves_the_frontend_serving_and_is_retried() {
    let first = desired(&[("a", "10.96.0.1", &[1, 2])]);
    let second = desired(&[("a", "10.96.0.1", &[3, 4, 5])]);
    let mut store = MemStore::default();
    let mut installed = Installed::default();
    installed.sync(&mut store, &first);
    // Let one more write through, then fail everything.
    store.fail_after = Some(store.writes + 1);
    let report = installed.sync(&mut store, &second);
    assert!(!report.errors.is_empty());
    assert!(store.violations.is_empty(), "{:#?}", store.violations);
    assert_eq!(store.frontends[&fe("10.96.0.1")].count, 2);
    assert_eq!(store.reachable(&fe("10.96.0.1")).len(), 2);
    store.fail_after = None;
    let report = installed.sync(&mut store, &second);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(store.reachable(&fe("10.96.0.1")), ips(&[3, 4, 5]));
    assert!(store.violations.is_empty(), "{:#?}", store.violations);
}

#[test]
fn slots_keep_their_backends_where_they_can() {
    // 2 stays in slot 2; 3 sat in slot 3, past the new count of 2, so it
    // moves into the hole that 1 left.
    assert_eq!(assign_slots(&[1, 2, 3], &[2, 3]), vec![3, 2]);
    assert_eq!(assign_slots(&[1, 2], &[1, 2, 9]), vec![1, 2, 9]);
    assert_eq!(assign_slots(&[5, 0, 7], &[7, 5, 8]), vec![5, 8, 7]);
    assert_eq!(assign_slots(&[1, 2], &[]), Vec::<u32>::new());
    assert_eq!(assign_slots(&[], &[4, 4, 5]), vec![4, 5]);
}

#[test]
fn set_ids_are_stable_and_names_recorded() {
    let (store, installed) = run(&[
        desired(&[("a", "10.96.0.1", &[1]), ("b", "10.96.0.2", &[2])]),
        desired(&[("a", "10.96.0.1", &[1, 3]), ("b", "10.96.0.2", &[2])]),
    ]);
    let names: BTreeMap<_, _> = store.names.iter().map(|(id, n)| (n.clone(), *id)).collect();
    assert_eq!(names.len(), 2);
    for (name, set) in &installed.sets {
        assert_eq!(names[name], set.id);
    }
}

#[test]
fn one_endpoint_ready_in_one_service_and_terminating_in_another_keeps_both_views() {
    let mut d = desired(&[("a", "10.96.0.1", &[1]), ("b", "10.96.0.2", &[1])]);
    Arc::make_mut(d.backend_sets.get_mut(&key("b")).unwrap()).backends[0].terminating = true;
    let mut store = MemStore::default();
    let mut installed = Installed::default();
    installed.sync(&mut store, &d);
    // Two entries for one address: one per view.
    assert_eq!(store.backends.len(), 2);
    let flags: Vec<u8> = {
        let mut f: Vec<u8> = store.backends.values().map(|b| b.flags).collect();
        f.sort();
        f
    };
    assert_eq!(flags, vec![0, lb_common::BACKEND_F_TERMINATING]);
    // And a second sync has nothing to fix.
    assert_eq!(installed.sync(&mut store, &d).changes, 0);
}

/// The mirror a restarted agent reads back from the store (as `adopt` does
/// from the maps): no memory of earlier passes.
fn adopt(store: &MemStore) -> Installed {
    let mut installed = Installed::default();
    let mut slots: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for ((id, slot), (backend, _)) in &store.slots {
        let v = slots.entry(*id).or_default();
        let i = *slot as usize - 1;
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] = *backend;
    }
    for (id, name) in &store.names {
        let slots = slots.remove(id).unwrap_or_default();
        installed
            .sets
            .insert(name.clone(), InstalledSet { id: *id, slots });
    }
    for (id, slots) in slots {
        installed
            .sets
            .insert(format!("#orphan-{id}"), InstalledSet { id, slots });
    }
    for (id, addr) in &store.backends {
        installed
            .backends
            .insert(*addr, InstalledBackend { id: *id });
    }
    installed.frontends = store.frontends.clone();
    installed.cluster_ips = store.cluster_ips.clone();
    installed
}

type Contents = (
    BTreeMap<u32, BackendAddr>,
    BTreeMap<(u32, u32), u32>,
    BTreeMap<FrontendAddr, (u32, u16, u16)>,
    BTreeMap<IpAddr, u32>,
    BTreeMap<u32, String>,
);

fn contents(store: &MemStore) -> Contents {
    (
        store.backends.iter().map(|(k, v)| (*k, *v)).collect(),
        store.slots.iter().map(|(k, v)| (*k, v.0)).collect(),
        (store.frontends.iter())
            .map(|(k, v)| (*k, (v.service_id, v.count, v.flags)))
            .collect(),
        store.cluster_ips.iter().map(|(k, v)| (*k, *v)).collect(),
        store.names.iter().map(|(k, v)| (*k, v.clone())).collect(),
    )
}

/// `desired` with set `name` changed by `f` and every other set, key and
/// frontend the very same `Arc`s, as the model hands out.
fn with_set_changed(d: &DesiredState, name: &str, f: impl FnOnce(&mut BackendSet)) -> DesiredState {
    let mut d = d.clone();
    f(Arc::make_mut(d.backend_sets.get_mut(&key(name)).unwrap()));
    d
}

#[test]
fn a_set_changed_among_pointer_equal_ones_is_the_only_one_rewritten() {
    let first = desired(&[
        ("a", "10.96.0.1", &[1, 2]),
        ("b", "10.96.0.2", &[3]),
        ("c", "10.96.0.3", &[4, 5]),
    ]);
    let second = with_set_changed(&first, "b", |s| s.backends.push(backend(6)));
    let third = with_set_changed(&second, "c", |s| s.backends.truncate(1));
    let (store, _) = run(&[first, second, third.clone()]);
    assert_eq!(store.reachable(&fe("10.96.0.1")), ips(&[1, 2]));
    assert_eq!(store.reachable(&fe("10.96.0.2")), ips(&[3, 6]));
    assert_eq!(store.reachable(&fe("10.96.0.3")), ips(&[4]));
    // The same as syncing the last state from nothing.
    let (fresh, _) = run(std::slice::from_ref(&third));
    for ip in ["10.96.0.1", "10.96.0.2", "10.96.0.3"] {
        assert_eq!(store.reachable(&fe(ip)), fresh.reachable(&fe(ip)), "{ip}");
    }
    assert_eq!(store.backends.len(), fresh.backends.len());
    assert_eq!(store.slots.len(), fresh.slots.len());

    // Only the changed set costs writes: a backend, a slot, a count.
    let mut store = MemStore::default();
    let mut installed = Installed::default();
    installed.sync(&mut store, &third);
    let back = with_set_changed(&third, "b", |s| s.backends.push(backend(7)));
    assert_eq!(installed.sync(&mut store, &back).changes, 3);
    assert!(store.violations.is_empty(), "{:#?}", store.violations);
}

#[test]
fn a_mirror_adopted_from_the_store_with_fresh_arcs_converges() {
    let first = desired(&[("a", "10.96.0.1", &[1, 2]), ("b", "10.96.0.2", &[3])]);
    let (store, _) = run(std::slice::from_ref(&first));
    let mut store = store;
    let mut adopted = adopt(&store);
    // Fresh Arcs with equal values: nothing to write.
    let again = desired(&[("a", "10.96.0.1", &[1, 2]), ("b", "10.96.0.2", &[3])]);
    let report = adopted.sync(&mut store, &again);
    assert_eq!((report.changes, report.errors.len()), (0, 0));
    assert_eq!(adopted, adopt(&store));
    // And a change after that lands as on a mirror that never restarted.
    let next = desired(&[("a", "10.96.0.1", &[2, 4]), ("c", "10.96.0.3", &[3])]);
    adopted.sync(&mut store, &next);
    assert!(store.violations.is_empty(), "{:#?}", store.violations);
    let (reference, _) = run(&[first, next]);
    assert_eq!(contents(&store), contents(&reference));
}

/// Adds, removes and changes sets, frontends and backends in turn.
fn steps() -> Vec<DesiredState> {
    let first = desired(&[
        ("a", "10.96.0.1", &[1, 2, 3]),
        ("b", "10.96.0.2", &[3, 4]),
        ("c", "10.96.0.3", &[5]),
    ]);
    let grown = with_set_changed(&first, "a", |s| s.backends.push(backend(9)));
    let shrunk = with_set_changed(&grown, "b", |s| {
        s.backends.remove(0);
    });
    let terminating = with_set_changed(&shrunk, "c", |s| s.backends[0].terminating = true);
    let mut dropped = terminating.clone();
    dropped.backend_sets.remove(&key("c"));
    dropped.frontends.remove(&fe("10.96.0.3"));
    dropped.cluster_ips.remove(&"10.96.0.3".parse().unwrap());
    let empty = with_set_changed(&dropped, "a", |s| {
        s.backends.clear();
        s.empty_outcome = EmptyOutcome::Drop;
    });
    let readded = desired(&[
        ("a", "10.96.0.1", &[2]),
        ("b", "10.96.0.2", &[4, 6]),
        ("c", "10.96.0.3", &[5, 1]),
        ("d", "10.96.0.4", &[7, 8]),
    ]);
    vec![first, grown, shrunk, terminating, dropped, empty, readded]
}

#[test]
fn a_pass_writes_what_a_mirror_read_back_from_the_store_would() {
    let (mut kept, mut kept_store) = (Installed::default(), MemStore::default());
    let mut fresh_store = MemStore::default();
    for (i, d) in steps().iter().enumerate() {
        let mut fresh = adopt(&fresh_store);
        let a = kept.sync(&mut kept_store, d);
        let b = fresh.sync(&mut fresh_store, d);
        assert_eq!((a.changes, &a.errors), (b.changes, &b.errors), "step {i}");
        assert_eq!(contents(&kept_store), contents(&fresh_store), "step {i}");
        assert_eq!(kept, fresh, "step {i}");
        assert!(
            kept_store.violations.is_empty(),
            "{:#?}",
            kept_store.violations
        );
    }
}

#[test]
fn failed_writes_on_the_fast_path_are_retried() {
    let steps = steps();
    for fail_at in 0..12 {
        let (mut installed, mut store) = (Installed::default(), MemStore::default());
        for d in &steps {
            store.fail_after = Some(store.writes + fail_at);
            installed.sync(&mut store, d);
            assert!(store.violations.is_empty(), "{:#?}", store.violations);
            store.fail_after = None;
            let report = installed.sync(&mut store, d);
            assert!(report.errors.is_empty(), "{:?}", report.errors);
            // Converged: a mirror read back agrees, and has nothing to do.
            assert_eq!(installed, adopt(&store), "fail at {fail_at}");
            assert_eq!(installed.sync(&mut store, d).changes, 0);
            let (reference, _) = run(std::slice::from_ref(d));
            for addr in d.frontends.keys() {
                assert_eq!(store.reachable(addr), reference.reachable(addr));
            }
        }
    }
}

/// (service id, backend) for every UDP backend a set's slots hold, as
/// `Datapath::sync` used to work it out around each pass.
fn udp_members(installed: &Installed) -> HashSet<Departed> {
    let udp: HashMap<u32, SocketAddr> = (installed.backends.iter())
        .filter(|(addr, _)| addr.protocol == Protocol::Udp)
        .map(|(addr, b)| (b.id, SocketAddr::new(addr.ip, addr.port)))
        .collect();
    (installed.sets.values())
        .flat_map(|set| {
            (set.slots.iter())
                .filter_map(|id| udp.get(id))
                .map(move |backend| (set.id, *backend))
        })
        .collect()
}

fn as_udp(d: &DesiredState) -> DesiredState {
    let mut d = d.clone();
    for set in d.backend_sets.values_mut() {
        for b in &mut Arc::make_mut(set).backends {
            b.protocol = Protocol::Udp;
        }
    }
    d
}

#[test]
fn udp_departures_are_the_members_a_pass_took_away() {
    let (mut installed, mut store) = (Installed::default(), MemStore::default());
    for (i, d) in steps().iter().map(as_udp).enumerate() {
        let before = udp_members(&installed);
        let (report, departed) = installed.sync_with_departures(&mut store, &d);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        let after = udp_members(&installed);
        let want: BTreeSet<Departed> = before.difference(&after).copied().collect();
        let got: BTreeSet<Departed> = departed.iter().copied().collect();
        assert_eq!(got, want, "step {i}");
        assert_eq!(got.len(), departed.len(), "no duplicates");
    }
}

/// The drift check compares the agent's mirror with one read back from the
/// maps: equal exactly when they mirror the same entries, whatever the
/// first learned in its passes (its memo, which a read-back has not).
#[test]
fn mirrors_compare_by_what_the_maps_hold() {
    let (store, installed) = run(&steps()[..1]);
    let read_back = adopt(&store);
    assert_eq!(installed, read_back);

    let mut drifted = Vec::new();
    let mut d = read_back.clone();
    d.sets.values_mut().next().unwrap().slots.push(0);
    drifted.push(("sets", d));
    let mut d = read_back.clone();
    d.backends.values_mut().next().unwrap().id += 1000;
    drifted.push(("backends", d));
    let mut d = read_back.clone();
    d.frontends.values_mut().next().unwrap().count += 1;
    drifted.push(("frontends", d));
    let mut d = read_back.clone();
    d.cluster_ips.insert(IpAddr::from([10, 96, 9, 9]), 7);
    drifted.push(("cluster_ips", d));
    let mut d = read_back;
    d.node_ports.insert((30999, Protocol::Tcp));
    drifted.push(("node_ports", d));
    for (field, d) in drifted {
        assert_ne!(installed, d, "a difference in {field}");
    }
}
