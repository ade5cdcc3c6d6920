//! The north-south maps: external frontends, their Maglev tables, source
//! ranges, masquerade addresses, and the sweep of flows whose backend left.
//!
//! Mark and sweep, make before break, like the socket maps (`sync`):
//! 1. a set whose backends changed gets a Maglev table under a fresh table
//!    id, after its backends' entries in `EXT_BACKENDS` (a table in use is
//!    never rewritten, so a new flow never meets a half-written one; see
//!    `tables`);
//! 2. source ranges that frontends will need are inserted;
//! 3. each frontend switches to its table, count and flags in one update;
//! 4. then frontends, ranges and tables nobody uses go, then the backend
//!    entries no table refers to (removing a table waits for the program
//!    runs that may still hold it, see `tables`), and flow table entries
//!    towards backends that left every set are deleted (kube-proxy
//!    clears conntrack for UDP endpoints that went away; a TCP flow to a
//!    removed backend is not kept alive either: its next packet is a new
//!    flow, and the new backend resets it).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap as BpfHashMap, LpmTrie, MapData, MapError, PerCpuArray};
use lb_common::{
    BACKEND_F_LOCAL, BACKEND_F_TERMINATING, EXTERNAL_F_SNAT, EXTERNAL_F_SOURCE_RANGES,
    ExternalBackend, ExternalConfig, ExternalFrontendValue, FLOW_F_REPLY, FRONTEND_F_DROP, Flow4,
    Flow4Nat, Flow6, Flow6Nat, Frontend4Key, Frontend6Key, InterfaceAddrs,
    SOURCE_RANGE4_FRONTEND_BITS, SOURCE_RANGE6_FRONTEND_BITS, SourceRange4, SourceRange6,
    external_counter, maps as names,
};

use super::maglev;
use super::paths::BpffsDir;
use super::tables::{self, TableError};
use crate::model::{Backend, BackendSet, DesiredState, EmptyOutcome, FrontendAddr, Protocol};

/// How the north-south datapath is configured.
#[derive(Clone, Debug)]
pub struct ExternalSettings {
    /// Entries per Maglev table (prime).
    pub maglev_size: u32,
    /// Masquerade source ports (host order, inclusive).
    pub snat_ports: (u16, u16),
    /// The node's address per family, the masquerade address out of
    /// interfaces without one of their own.
    pub snat4: Option<Ipv4Addr>,
    pub snat6: Option<Ipv6Addr>,
    /// (ifindex, its first IPv4, its first IPv6) of the external interfaces.
    pub interface_addrs: Vec<(u32, Option<Ipv4Addr>, Option<Ipv6Addr>)>,
    /// Addresses always allowed by source ranges (the node's own).
    pub node_addresses: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("opening pinned map {name}: {source}")]
    Open {
        name: &'static str,
        source: MapError,
    },
    #[error("writing {what}: {source}")]
    Write { what: String, source: MapError },
    #[error("{0}")]
    Table(#[from] TableError),
    #[error("no free Maglev table for {set}: all {capacity} are in use")]
    NoTable { set: String, capacity: u32 },
    #[error("no free external backend id for {backend}: all {capacity} are in use")]
    NoBackendId { backend: String, capacity: u32 },
}

/// Typed handles on the north-south maps.
pub struct ExternalMaps {
    pub frontends4: BpfHashMap<MapData, Frontend4Key, ExternalFrontendValue>,
    pub frontends6: BpfHashMap<MapData, Frontend6Key, ExternalFrontendValue>,
    /// An array of maps (see `tables`).
    pub maglev: MapData,
    pub backends: BpfHashMap<MapData, u32, ExternalBackend>,
    pub flows4: BpfHashMap<MapData, Flow4, Flow4Nat>,
    pub flows6: BpfHashMap<MapData, Flow6, Flow6Nat>,
    pub ranges4: LpmTrie<MapData, SourceRange4, u8>,
    pub ranges6: LpmTrie<MapData, SourceRange6, u8>,
    pub iface_addrs: BpfHashMap<MapData, u32, InterfaceAddrs>,
    pub config: Array<MapData, ExternalConfig>,
    pub counters: PerCpuArray<MapData, u64>,
}

fn open(bpffs: &BpffsDir, name: &'static str) -> Result<aya::maps::Map, ExternalError> {
    use aya::maps::Map;
    let data = MapData::from_pin(bpffs.map(name))
        .map_err(|source| ExternalError::Open { name, source })?;
    Ok(match name {
        names::FLOWS4 | names::FLOWS6 => Map::LruHashMap(data),
        names::SOURCE_RANGES4 | names::SOURCE_RANGES6 => Map::LpmTrie(data),
        names::EXTERNAL_CONFIG => Map::Array(data),
        names::EXTERNAL_COUNTERS => Map::PerCpuArray(data),
        _ => Map::HashMap(data),
    })
}

macro_rules! typed {
    ($bpffs:expr, $name:expr) => {{
        let name = $name;
        open($bpffs, name)?
            .try_into()
            .map_err(|source| ExternalError::Open { name, source })?
    }};
}

impl ExternalMaps {
    pub fn open(bpffs: &BpffsDir) -> Result<Self, ExternalError> {
        Ok(Self {
            frontends4: typed!(bpffs, names::EXTERNAL_FRONTENDS4),
            frontends6: typed!(bpffs, names::EXTERNAL_FRONTENDS6),
            maglev: MapData::from_pin(bpffs.map(names::MAGLEV)).map_err(|source| {
                ExternalError::Open {
                    name: names::MAGLEV,
                    source,
                }
            })?,
            backends: typed!(bpffs, names::EXTERNAL_BACKENDS),
            flows4: typed!(bpffs, names::FLOWS4),
            flows6: typed!(bpffs, names::FLOWS6),
            ranges4: typed!(bpffs, names::SOURCE_RANGES4),
            ranges6: typed!(bpffs, names::SOURCE_RANGES6),
            iface_addrs: typed!(bpffs, names::INTERFACE_ADDRS),
            config: typed!(bpffs, names::EXTERNAL_CONFIG),
            counters: typed!(bpffs, names::EXTERNAL_COUNTERS),
        })
    }

    /// Writes external backend `id`.
    pub fn write_backend(
        &mut self,
        id: u32,
        backend: ExternalBackend,
    ) -> Result<(), ExternalError> {
        self.backends
            .insert(id, backend, 0)
            .map_err(|source| ExternalError::Write {
                what: format!("EXT_BACKENDS {id}"),
                source,
            })
    }

    /// Puts a table of these external backend ids in slot `id` of `MAGLEV`.
    pub fn write_table(&mut self, id: u32, entries: &[u32]) -> Result<(), ExternalError> {
        let filled = tables::fill(id, entries)?;
        match tables::install(&self.maglev, vec![filled]).pop() {
            Some((_, e)) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// The backend entry `index` of table `id` leads to.
    pub fn table_backend(&self, id: u32, index: u32) -> Option<ExternalBackend> {
        let backend = tables::entry(&self.maglev, id, index)?;
        self.backends.get(&backend, 0).ok()
    }

    /// The slots of `MAGLEV` that hold a table.
    pub fn table_ids(&self) -> Vec<u32> {
        tables::occupied(&self.maglev, lb_common::capacity::MAGLEV_TABLES)
    }

    /// `EXT_COUNTERS`, summed over CPUs, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        external_counter::NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let sum = self
                    .counters
                    .get(&(i as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, sum)
            })
            .collect()
    }
}

/// A backend as `EXT_BACKENDS` holds it.
fn entry_of(b: &Backend) -> ExternalBackend {
    let mut addr = [0u32; 4];
    match b.ip {
        IpAddr::V4(v4) => addr[0] = u32::from_ne_bytes(v4.octets()),
        IpAddr::V6(v6) => {
            for (i, w) in v6.octets().chunks_exact(4).enumerate() {
                addr[i] = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            }
        }
    }
    let mut flags = 0;
    if b.terminating {
        flags |= BACKEND_F_TERMINATING;
    }
    if b.local {
        flags |= BACKEND_F_LOCAL;
    }
    ExternalBackend {
        addr,
        port: b.port.to_be(),
        flags,
        _pad: 0,
    }
}

/// What identifies a backend to Maglev: its address and port, so that the
/// table depends on nothing a node sees differently (locality).
fn identity(b: &Backend) -> Vec<u8> {
    let mut v = match b.ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    v.extend_from_slice(&b.port.to_be_bytes());
    v
}

/// The distinct (address, port) of a set's backends, sorted.
fn maglev_backends(set: &BackendSet) -> Vec<Backend> {
    let mut seen = BTreeSet::new();
    set.backends
        .iter()
        .filter(|b| seen.insert((b.ip, b.port)))
        .copied()
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Table {
    id: u32,
    backends: Vec<Backend>,
}

/// A source range entry: (frontend, allowed network).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Range {
    frontend: FrontendAddr,
    network: IpAddr,
    prefix_len: u8,
}

/// External backend ids: dense, from 1, one per distinct entry (address,
/// port, flags), which an id never changes (so tables that share a
/// backend share its id, and an adopted id can be kept as it is).
#[derive(Default)]
struct BackendIds {
    by_entry: HashMap<ExternalBackend, u32>,
    free: Vec<u32>,
    next: u32,
}

impl BackendIds {
    fn from_map(entries: impl Iterator<Item = (u32, ExternalBackend)>) -> Self {
        let by_entry: HashMap<ExternalBackend, u32> = entries.map(|(id, e)| (e, id)).collect();
        let max = by_entry.values().copied().max().unwrap_or(0);
        let taken: HashSet<u32> = by_entry.values().copied().collect();
        Self {
            free: (1..=max).rev().filter(|i| !taken.contains(i)).collect(),
            next: max + 1,
            by_entry,
        }
    }

    /// The id of `entry`, and whether it is new (not in the map yet).
    fn get_or_take(&mut self, entry: ExternalBackend) -> Option<(u32, bool)> {
        if let Some(id) = self.by_entry.get(&entry) {
            return Some((*id, false));
        }
        self.next = self.next.max(1);
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.next <= lb_common::capacity::BACKENDS => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.by_entry.insert(entry, id);
        Some((id, true))
    }

    fn release(&mut self, entry: &ExternalBackend) {
        if let Some(id) = self.by_entry.remove(entry) {
            self.free.push(id);
        }
    }
}

/// What the north-south maps hold, as this agent wrote them.
#[derive(Default)]
pub struct ExternalInstalled {
    /// By set name.
    tables: HashMap<String, Table>,
    /// Slots of `MAGLEV` a previous agent left, freed after the first pass.
    adopted_tables: HashSet<u32>,
    backend_ids: BackendIds,
    frontends: HashMap<FrontendAddr, ExternalFrontendValue>,
    ranges: HashSet<Range>,
    /// Backends (address, port, protocol number) of every table, for the
    /// flow sweep.
    backends: HashSet<(IpAddr, u16, u8)>,
    /// Whether the flows of the previous agent were swept once.
    swept_once: bool,
}

/// The north-south writer.
pub struct External {
    pub maps: ExternalMaps,
    settings: ExternalSettings,
    tables_capacity: u32,
    installed: ExternalInstalled,
}

/// Summary of one pass.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExternalReport {
    pub changes: usize,
    pub tables_written: usize,
    pub flows_swept: usize,
    pub errors: Vec<String>,
}

fn frontend_key4(f: &FrontendAddr) -> Option<Frontend4Key> {
    match f.ip {
        IpAddr::V4(v4) => Some(Frontend4Key {
            addr: v4.octets(),
            port: f.port.to_be(),
            proto: f.protocol.number(),
            _pad: 0,
        }),
        IpAddr::V6(_) => None,
    }
}

fn frontend_key6(f: &FrontendAddr) -> Option<Frontend6Key> {
    match f.ip {
        IpAddr::V6(v6) => Some(Frontend6Key {
            addr: v6.octets(),
            port: f.port.to_be(),
            proto: f.protocol.number(),
            _pad: 0,
        }),
        IpAddr::V4(_) => None,
    }
}

/// The `SOURCE_RANGES4` key of (frontend, source prefix), as written and
/// as looked up (a full-length prefix: one source address).
fn range_key4(fa: Ipv4Addr, f: &FrontendAddr, src: Ipv4Addr, prefix_len: u8) -> Key<SourceRange4> {
    Key::new(
        SOURCE_RANGE4_FRONTEND_BITS + u32::from(prefix_len),
        SourceRange4 {
            frontend_addr: u32::from_ne_bytes(fa.octets()),
            port: f.port.to_be(),
            proto: f.protocol.number(),
            _pad: 0,
            source: u32::from_ne_bytes(src.octets()),
        },
    )
}

fn range_key6(fa: Ipv6Addr, f: &FrontendAddr, src: Ipv6Addr, prefix_len: u8) -> Key<SourceRange6> {
    Key::new(
        SOURCE_RANGE6_FRONTEND_BITS + u32::from(prefix_len),
        SourceRange6 {
            frontend_addr: words(&fa.octets()),
            port: f.port.to_be(),
            proto: f.protocol.number(),
            _pad: 0,
            source: words(&src.octets()),
        },
    )
}

fn words(octets: &[u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (i, c) in octets.chunks_exact(4).enumerate() {
        w[i] = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
    }
    w
}

fn ip_of4(w: u32) -> IpAddr {
    IpAddr::V4(std::net::Ipv4Addr::from(w.to_ne_bytes()))
}

fn ip_of6(w: [u32; 4]) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, x) in w.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&x.to_ne_bytes());
    }
    IpAddr::V6(std::net::Ipv6Addr::from(o))
}

impl External {
    /// Opens the maps, writes the configuration and reads back what a
    /// previous agent left (frontends and their tables), so that unchanged
    /// tables are kept.
    pub fn start(bpffs: &BpffsDir, settings: ExternalSettings) -> Result<Self, ExternalError> {
        let maps = ExternalMaps::open(bpffs)?;
        let tables_capacity = lb_common::capacity::MAGLEV_TABLES;
        let mut this = Self {
            maps,
            settings,
            tables_capacity,
            installed: ExternalInstalled::default(),
        };
        this.write_config()?;
        this.adopt();
        Ok(this)
    }

    fn write_config(&mut self) -> Result<(), ExternalError> {
        let s = &self.settings;
        let cfg = ExternalConfig {
            snat4: s.snat4.map_or(0, |a| u32::from_ne_bytes(a.octets())),
            snat6: s.snat6.map_or([0; 4], |a| words(&a.octets())),
            maglev_size: s.maglev_size,
            snat_port_min: s.snat_ports.0,
            snat_port_max: s.snat_ports.1,
        };
        let err = |what: &str| {
            let what = what.to_string();
            move |source| ExternalError::Write { what, source }
        };
        // A restarted agent with another table size must not let the
        // programs read old tables with the new size: frontends are
        // rewritten by the first pass, which writes every table anew
        // (adoption below finds none when the size changed).
        let old = self.maps.config.get(&0, 0).ok();
        if old.is_some_and(|o| o.maglev_size != 0 && o.maglev_size != cfg.maglev_size) {
            self.clear_frontends();
        }
        self.maps.config.set(0, cfg, 0).map_err(err("EXT_CONFIG"))?;
        let interfaces = self.settings.interface_addrs.clone();
        self.write_interfaces(&interfaces)
    }

    /// The external interfaces changed (or not): IFACE_ADDRS follows.
    pub fn set_interfaces(
        &mut self,
        interfaces: Vec<(u32, Option<Ipv4Addr>, Option<Ipv6Addr>)>,
    ) -> Result<(), ExternalError> {
        if interfaces == self.settings.interface_addrs {
            return Ok(());
        }
        self.write_interfaces(&interfaces)?;
        self.settings.interface_addrs = interfaces;
        Ok(())
    }

    fn write_interfaces(
        &mut self,
        interfaces: &[(u32, Option<Ipv4Addr>, Option<Ipv6Addr>)],
    ) -> Result<(), ExternalError> {
        let wanted: HashMap<u32, InterfaceAddrs> = interfaces
            .iter()
            .map(|(ifindex, a4, a6)| {
                (
                    *ifindex,
                    InterfaceAddrs {
                        addr4: a4.map_or(0, |a| u32::from_ne_bytes(a.octets())),
                        addr6: a6.map_or([0; 4], |a| words(&a.octets())),
                    },
                )
            })
            .collect();
        let stale: Vec<u32> = self
            .maps
            .iface_addrs
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains_key(k))
            .collect();
        for (k, v) in &wanted {
            self.maps
                .iface_addrs
                .insert(k, v, 0)
                .map_err(|source| ExternalError::Write {
                    what: "IFACE_ADDRS".into(),
                    source,
                })?;
        }
        for k in stale {
            let _ = self.maps.iface_addrs.remove(&k);
        }
        Ok(())
    }

    fn clear_frontends(&mut self) {
        let k4: Vec<_> = self.maps.frontends4.keys().filter_map(Result::ok).collect();
        for k in k4 {
            let _ = self.maps.frontends4.remove(&k);
        }
        let k6: Vec<_> = self.maps.frontends6.keys().filter_map(Result::ok).collect();
        for k in k6 {
            let _ = self.maps.frontends6.remove(&k);
        }
    }

    /// Reads back the frontends a previous agent wrote. Their tables are
    /// unknown to this agent, so it treats every set as changed: the first
    /// pass writes fresh tables and switches the frontends to them (no
    /// gap: the old tables serve until then), then frees the old ids.
    fn adopt(&mut self) {
        let mut frontends = HashMap::new();
        for (k, v) in self.maps.frontends4.iter().filter_map(Result::ok) {
            if let Some(p) = Protocol::from_number(k.proto) {
                frontends.insert(
                    FrontendAddr {
                        ip: IpAddr::from(k.addr),
                        port: u16::from_be(k.port),
                        protocol: p,
                    },
                    v,
                );
            }
        }
        for (k, v) in self.maps.frontends6.iter().filter_map(Result::ok) {
            if let Some(p) = Protocol::from_number(k.proto) {
                frontends.insert(
                    FrontendAddr {
                        ip: IpAddr::from(k.addr),
                        port: u16::from_be(k.port),
                        protocol: p,
                    },
                    v,
                );
            }
        }
        self.installed.frontends = frontends;
        self.installed.adopted_tables = self.maps.table_ids().into_iter().collect();
        self.installed.backend_ids =
            BackendIds::from_map(self.maps.backends.iter().filter_map(Result::ok));
    }

    fn used_ids(&self) -> HashSet<u32> {
        self.installed
            .frontends
            .values()
            .filter(|v| v.count > 0)
            .map(|v| v.table)
            .chain(self.installed.tables.values().map(|t| t.id))
            .chain(self.installed.adopted_tables.iter().copied())
            .collect()
    }

    /// The Maglev table of `backends` for slot `id`, filled, after the
    /// `EXT_BACKENDS` entries it refers to.
    fn fill_table(
        &mut self,
        id: u32,
        backends: &[Backend],
    ) -> Result<tables::Filled, ExternalError> {
        let mut ids = Vec::with_capacity(backends.len());
        for b in backends {
            let entry = entry_of(b);
            let Some((backend_id, new)) = self.installed.backend_ids.get_or_take(entry) else {
                return Err(ExternalError::NoBackendId {
                    backend: format!("{}:{}", b.ip, b.port),
                    capacity: lb_common::capacity::BACKENDS,
                });
            };
            if new && let Err(e) = self.maps.write_backend(backend_id, entry) {
                self.installed.backend_ids.release(&entry);
                return Err(e);
            }
            ids.push(backend_id);
        }
        let identities: Vec<Vec<u8>> = backends.iter().map(identity).collect();
        let table: Vec<u32> = maglev::table(&identities, self.settings.maglev_size)
            .iter()
            .map(|b| ids[*b as usize])
            .collect();
        Ok(tables::fill(id, &table)?)
    }

    /// Empties the slots of tables no frontend uses any more, then deletes
    /// the backends no table refers to.
    fn sweep_tables(
        &mut self,
        tables: &HashMap<String, Table>,
        frontends: &HashMap<FrontendAddr, ExternalFrontendValue>,
    ) {
        let written: HashSet<u32> = tables.values().map(|t| t.id).collect();
        // A frontend whose switch failed still points at its old table.
        let kept: HashSet<u32> = frontends
            .values()
            .filter(|v| v.count > 0)
            .map(|v| v.table)
            .chain(written.iter().copied())
            .collect();
        let old: HashSet<u32> = self
            .installed
            .tables
            .values()
            .map(|t| t.id)
            .chain(self.installed.adopted_tables.drain())
            .collect();
        let gone: Vec<u32> = old.difference(&kept).copied().collect();
        let errors = tables::remove(&self.maps.maglev, &gone);
        for e in &errors {
            tracing::warn!(error = %e, "north-south: a table nobody uses stays");
        }
        // A kept table that is not this pass's has backends not all known
        // here (a previous agent's), and so has a table that could not be
        // removed: then no backend goes in this pass.
        if kept != written || !errors.is_empty() {
            return;
        }
        let used: HashSet<ExternalBackend> = tables
            .values()
            .flat_map(|t| t.backends.iter().map(entry_of))
            .collect();
        let unused: HashSet<ExternalBackend> = self
            .installed
            .backend_ids
            .by_entry
            .keys()
            .filter(|e| !used.contains(e))
            .copied()
            .collect();
        for e in unused {
            let id = self.installed.backend_ids.by_entry[&e];
            match self.maps.backends.remove(&id) {
                Ok(()) | Err(MapError::KeyNotFound) => self.installed.backend_ids.release(&e),
                Err(err) => {
                    tracing::warn!(error = %err, id, "north-south: an unused backend entry stays");
                }
            }
        }
    }

    /// Brings the maps to `desired`'s external frontends.
    pub fn sync(&mut self, desired: &DesiredState) -> ExternalReport {
        let mut report = ExternalReport::default();
        let mut used = self.used_ids();

        // 1. Tables for sets whose backends changed, under fresh ids. A
        // table depends only on its backends' entries (address, port,
        // flags: the same list gives the same table on every node), so
        // sets with the same entries share one: a Service's TCP and UDP
        // ports on the same target port, Services that select the same
        // pods on the same port, and every set whose entries match a table
        // already written. Written tables are never changed in place (a
        // change gets a fresh id), so sharing one never moves another
        // set's flows.
        let mut tables: HashMap<String, Table> = HashMap::new();
        let mut filled = Vec::new();
        let mut by_entries: HashMap<Vec<ExternalBackend>, u32> = self
            .installed
            .tables
            .values()
            .map(|t| (t.backends.iter().map(entry_of).collect(), t.id))
            .collect();
        for (key, set) in &desired.external_sets {
            let name = key.to_string();
            let backends = maglev_backends(set);
            if backends.is_empty() {
                continue;
            }
            let entries: Vec<ExternalBackend> = backends.iter().map(entry_of).collect();
            if let Some(&id) = by_entries.get(&entries) {
                tables.insert(name, Table { id, backends });
                continue;
            }
            let Some(id) = (0..self.tables_capacity).find(|i| !used.contains(i)) else {
                report.errors.push(
                    ExternalError::NoTable {
                        set: name,
                        capacity: self.tables_capacity,
                    }
                    .to_string(),
                );
                continue;
            };
            match self.fill_table(id, &backends) {
                Ok(f) => filled.push(f),
                Err(e) => {
                    report.errors.push(e.to_string());
                    continue;
                }
            }
            used.insert(id);
            report.tables_written += 1;
            by_entries.insert(entries, id);
            tables.insert(name, Table { id, backends });
        }
        // All of them in one batch: each update waits a grace period.
        for (id, e) in tables::install(&self.maps.maglev, filled) {
            report.errors.push(e.to_string());
            report.tables_written -= 1;
            tables.retain(|_, t| t.id != id);
        }

        // 2. Source ranges, before the frontends that need them.
        let mut ranges: HashSet<Range> = HashSet::new();
        for (addr, fe) in &desired.external {
            if fe.source_ranges.is_empty() {
                continue;
            }
            let allowed = fe
                .source_ranges
                .iter()
                .map(|c| (c.network, c.prefix_len))
                .chain(
                    self.settings
                        .node_addresses
                        .iter()
                        .chain(std::iter::once(&addr.ip))
                        .map(|ip| (*ip, if ip.is_ipv4() { 32 } else { 128 })),
                );
            for (network, prefix_len) in allowed {
                if network.is_ipv4() == addr.ip.is_ipv4() {
                    ranges.insert(Range {
                        frontend: *addr,
                        network,
                        prefix_len,
                    });
                }
            }
        }
        let added: Vec<Range> = ranges.difference(&self.installed.ranges).copied().collect();
        for r in &added {
            if let Err(e) = self.write_range(r, true) {
                report.errors.push(e.to_string());
            } else {
                report.changes += 1;
            }
        }

        // 3. Frontends.
        let mut frontends = HashMap::new();
        for (addr, fe) in &desired.external {
            let set = desired.external_sets.get(&fe.set);
            let name = fe.set.to_string();
            let mut flags = fe.kind as u16;
            if fe.snat {
                flags |= EXTERNAL_F_SNAT;
            }
            if !fe.source_ranges.is_empty() {
                flags |= EXTERNAL_F_SOURCE_RANGES;
            }
            let value = match tables.get(&name) {
                Some(t) => ExternalFrontendValue {
                    table: t.id,
                    count: t.backends.len().min(u16::MAX as usize) as u16,
                    flags,
                },
                None => {
                    // No backend: kube-proxy DROPs external traffic to a
                    // Service without endpoints usable here, and REJECTs
                    // when it has none at all; from outside both are a
                    // drop here (counted).
                    if set.is_some_and(|s| s.empty_outcome == EmptyOutcome::Drop) {
                        flags |= FRONTEND_F_DROP;
                    }
                    ExternalFrontendValue {
                        table: 0,
                        count: 0,
                        flags,
                    }
                }
            };
            if self.installed.frontends.get(addr) != Some(&value) {
                match self.write_frontend(addr, Some(value)) {
                    Ok(()) => report.changes += 1,
                    Err(e) => {
                        report.errors.push(e.to_string());
                        continue;
                    }
                }
            }
            frontends.insert(*addr, value);
        }

        // 4. Sweep: frontends, ranges, then tables and flows.
        let gone: Vec<FrontendAddr> = self
            .installed
            .frontends
            .keys()
            .filter(|a| !frontends.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            match self.write_frontend(&addr, None) {
                Ok(()) => report.changes += 1,
                Err(e) => {
                    report.errors.push(e.to_string());
                    if let Some(v) = self.installed.frontends.get(&addr) {
                        frontends.insert(addr, *v);
                    }
                }
            }
        }
        let stale: Vec<Range> = self.installed.ranges.difference(&ranges).copied().collect();
        for r in &stale {
            if self.write_range(r, false).is_ok() {
                report.changes += 1;
            }
        }
        let backends: HashSet<(IpAddr, u16, u8)> = tables
            .values()
            .flat_map(|t| t.backends.iter())
            .map(|b| (b.ip, b.port, b.protocol.number()))
            .collect();
        self.sweep_tables(&tables, &frontends);
        let departed = !self.installed.swept_once
            || self
                .installed
                .backends
                .iter()
                .any(|b| !backends.contains(b));
        if departed {
            report.flows_swept = self.sweep_flows(&backends);
        }
        self.installed.tables = tables;
        self.installed.frontends = frontends;
        self.installed.ranges = ranges;
        self.installed.backends = backends;
        self.installed.swept_once = true;
        report
    }

    fn write_frontend(
        &mut self,
        addr: &FrontendAddr,
        value: Option<ExternalFrontendValue>,
    ) -> Result<(), ExternalError> {
        let err = |source| ExternalError::Write {
            what: format!("external frontend {addr}"),
            source,
        };
        let not_found = |e: &MapError| matches!(e, MapError::KeyNotFound);
        if let Some(k) = frontend_key4(addr) {
            match value {
                Some(v) => self.maps.frontends4.insert(k, v, 0).map_err(err),
                None => match self.maps.frontends4.remove(&k) {
                    Err(e) if !not_found(&e) => Err(err(e)),
                    _ => Ok(()),
                },
            }
        } else if let Some(k) = frontend_key6(addr) {
            match value {
                Some(v) => self.maps.frontends6.insert(k, v, 0).map_err(err),
                None => match self.maps.frontends6.remove(&k) {
                    Err(e) if !not_found(&e) => Err(err(e)),
                    _ => Ok(()),
                },
            }
        } else {
            Ok(())
        }
    }

    fn write_range(&mut self, r: &Range, insert: bool) -> Result<(), ExternalError> {
        let err = |source| ExternalError::Write {
            what: format!(
                "source range {}/{} of {}",
                r.network, r.prefix_len, r.frontend
            ),
            source,
        };
        let f = &r.frontend;
        match (f.ip, r.network) {
            (IpAddr::V4(fa), IpAddr::V4(src)) => {
                let key = range_key4(fa, f, src, r.prefix_len);
                if insert {
                    self.maps.ranges4.insert(&key, 1, 0).map_err(err)
                } else {
                    self.maps.ranges4.remove(&key).map_err(err)
                }
            }
            (IpAddr::V6(fa), IpAddr::V6(src)) => {
                let key = range_key6(fa, f, src, r.prefix_len);
                if insert {
                    self.maps.ranges6.insert(&key, 1, 0).map_err(err)
                } else {
                    self.maps.ranges6.remove(&key).map_err(err)
                }
            }
            _ => Ok(()),
        }
    }

    /// Deletes flow entries whose backend is in no table any more.
    fn sweep_flows(&mut self, backends: &HashSet<(IpAddr, u16, u8)>) -> usize {
        let mut swept = 0;
        let dead4: Vec<Flow4> = self
            .maps
            .flows4
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                let b = if v.flags & FLOW_F_REPLY != 0 {
                    (ip_of4(k.saddr), u16::from_be(k.sport), k.proto)
                } else {
                    (ip_of4(v.daddr), u16::from_be(v.dport), k.proto)
                };
                !backends.contains(&b)
            })
            .map(|(k, _)| k)
            .collect();
        for k in dead4 {
            if self.maps.flows4.remove(&k).is_ok() {
                swept += 1;
            }
        }
        let dead6: Vec<Flow6> = self
            .maps
            .flows6
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                let b = if v.flags & FLOW_F_REPLY != 0 {
                    (ip_of6(k.saddr), u16::from_be(k.sport), k.proto)
                } else {
                    (ip_of6(v.daddr), u16::from_be(v.dport), k.proto)
                };
                !backends.contains(&b)
            })
            .map(|(k, _)| k)
            .collect();
        for k in dead6 {
            if self.maps.flows6.remove(&k).is_ok() {
                swept += 1;
            }
        }
        swept
    }
}

/// The external frontends as the maps hold them, for `ferry services`.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct ExternalView {
    pub frontend: String,
    pub kind: &'static str,
    pub table: u32,
    pub backends: u16,
    pub masquerade: bool,
    pub source_ranges: bool,
}

pub fn views(maps: &ExternalMaps) -> Vec<ExternalView> {
    let view = |frontend: String, v: ExternalFrontendValue| ExternalView {
        frontend,
        kind: super::inspect::kind_name(lb_common::FrontendKind::from_flags(v.flags)),
        table: v.table,
        backends: v.count,
        masquerade: v.flags & EXTERNAL_F_SNAT != 0,
        source_ranges: v.flags & EXTERNAL_F_SOURCE_RANGES != 0,
    };
    let mut out: BTreeMap<String, ExternalView> = BTreeMap::new();
    for (k, v) in maps.frontends4.iter().filter_map(Result::ok) {
        let f = format!(
            "{}:{}/{}",
            IpAddr::from(k.addr),
            u16::from_be(k.port),
            Protocol::from_number(k.proto).map_or("?".into(), |p| p.to_string())
        );
        out.insert(f.clone(), view(f, v));
    }
    for (k, v) in maps.frontends6.iter().filter_map(Result::ok) {
        let f = format!(
            "[{}]:{}/{}",
            IpAddr::from(k.addr),
            u16::from_be(k.port),
            Protocol::from_number(k.proto).map_or("?".into(), |p| p.to_string())
        );
        out.insert(f.clone(), view(f, v));
    }
    out.into_values().collect()
}

/// The north-south section of `ferry services -o json --north-south`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Section {
    pub frontends: Vec<ExternalView>,
    /// Packet counters (`EXT_COUNTERS`), summed over CPUs.
    pub counters: BTreeMap<&'static str, u64>,
    /// Maglev tables in `MAGLEV` (one per distinct backend list, and
    /// those of the sets being changed).
    pub maglev_tables: usize,
    /// Entries of `EXT_BACKENDS`.
    pub external_backends: usize,
}

pub fn section(maps: &ExternalMaps) -> Section {
    Section {
        frontends: views(maps),
        counters: maps.counters().into_iter().collect(),
        maglev_tables: maps.table_ids().len(),
        external_backends: maps.backends.keys().filter_map(Result::ok).count(),
    }
}

/// The north-south section as a table, then the counters on one line.
pub fn table(maps: &ExternalMaps) -> String {
    let mut rows = vec![
        [
            "NORTH-SOUTH FRONTEND",
            "KIND",
            "BACKENDS",
            "TABLE",
            "MASQUERADE",
            "SOURCE RANGES",
        ]
        .map(String::from),
    ];
    for v in views(maps) {
        rows.push([
            v.frontend,
            v.kind.to_string(),
            v.backends.to_string(),
            v.table.to_string(),
            if v.masquerade { "yes" } else { "no (Local)" }.to_string(),
            if v.source_ranges { "restricted" } else { "any" }.to_string(),
        ]);
    }
    let mut out = super::inspect::render_rows(&rows);
    let counters: Vec<String> = maps
        .counters()
        .into_iter()
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    out.push_str(&format!("packets: {}\n", counters.join(" ")));
    out.push_str(&format!(
        "maglev tables: {}, external backends: {}\n",
        maps.table_ids().len(),
        maps.backends.keys().filter_map(Result::ok).count()
    ));
    out
}

/// What the north-south maps decide for one client of one external
/// frontend (`ferry explain --client ADDRESS` / `--flow`).
#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct ClientView {
    /// The frontend's entry; None: not served to clients outside the node.
    pub frontend: Option<ExternalView>,
    /// With source ranges on the frontend: whether `SOURCE_RANGES` admits
    /// the client (else the packet is dropped). None: unrestricted.
    pub source_allowed: Option<bool>,
    /// The backend this client's flow from `port` hashes to in the
    /// frontend's Maglev table (only with a client port).
    pub maglev_backend: Option<String>,
    /// The connection-table entry of the flow as it arrives, if any.
    pub flow: Option<FlowEntryView>,
}

#[derive(Clone, Debug, serde::Serialize, PartialEq)]
pub struct FlowEntryView {
    /// The flow after translation: source -> destination.
    pub becomes: String,
    pub masqueraded: bool,
    pub closing: bool,
    pub last_seen_secs_ago: f64,
}

/// Looks a client (and, with `port`, its flow) up the way `ferry_external`
/// does: frontend, source ranges, flow table, Maglev table.
pub fn client_view(
    maps: &ExternalMaps,
    f: &FrontendAddr,
    client: IpAddr,
    port: Option<u16>,
    now_ns: u64,
) -> ClientView {
    let proto = f.protocol.number();
    let value = match f.ip {
        IpAddr::V4(a) => maps
            .frontends4
            .get(
                &Frontend4Key {
                    addr: a.octets(),
                    port: f.port.to_be(),
                    proto,
                    _pad: 0,
                },
                0,
            )
            .ok(),
        IpAddr::V6(a) => maps
            .frontends6
            .get(
                &Frontend6Key {
                    addr: a.octets(),
                    port: f.port.to_be(),
                    proto,
                    _pad: 0,
                },
                0,
            )
            .ok(),
    };
    let mut out = ClientView {
        frontend: None,
        source_allowed: None,
        maglev_backend: None,
        flow: None,
    };
    let Some(value) = value else {
        return out;
    };
    out.frontend = views(maps)
        .into_iter()
        .find(|v| v.frontend == f.to_string());
    if value.flags & EXTERNAL_F_SOURCE_RANGES != 0 {
        out.source_allowed = Some(match (f.ip, client) {
            (IpAddr::V4(fa), IpAddr::V4(src)) => {
                maps.ranges4.get(&range_key4(fa, f, src, 32), 0).is_ok()
            }
            (IpAddr::V6(fa), IpAddr::V6(src)) => {
                maps.ranges6.get(&range_key6(fa, f, src, 128), 0).is_ok()
            }
            _ => false,
        });
    }
    let Some(port) = port else {
        return out;
    };
    let (sport, dport) = (port.to_be(), f.port.to_be());
    let addr_hash = match client {
        IpAddr::V4(c) => lb_common::maglev_hash::addr4(u32::from_ne_bytes(c.octets())),
        IpAddr::V6(c) => lb_common::maglev_hash::addr6(words(&c.octets())),
    };
    let hash = lb_common::maglev_hash::flow(addr_hash, sport, dport, proto);
    let size = maps.config.get(&0, 0).map_or(0, |c| c.maglev_size);
    if let Some(index) = hash.checked_rem(size)
        && let Some(entry) = maps.table_backend(value.table, index)
        && entry.port != 0
    {
        let ip = match f.ip {
            IpAddr::V4(_) => ip_of4(entry.addr[0]),
            IpAddr::V6(_) => ip_of6(entry.addr),
        };
        out.maglev_backend =
            Some(std::net::SocketAddr::new(ip, u16::from_be(entry.port)).to_string());
    }
    let nat = match (client, f.ip) {
        (IpAddr::V4(c), IpAddr::V4(d)) => maps
            .flows4
            .get(
                &Flow4 {
                    saddr: u32::from_ne_bytes(c.octets()),
                    daddr: u32::from_ne_bytes(d.octets()),
                    sport,
                    dport,
                    proto,
                    _pad0: 0,
                    _pad1: 0,
                },
                0,
            )
            .ok()
            .map(|n| {
                (
                    std::net::SocketAddr::new(ip_of4(n.saddr), u16::from_be(n.sport)),
                    std::net::SocketAddr::new(ip_of4(n.daddr), u16::from_be(n.dport)),
                    n.flags,
                    n.last_seen_ns,
                )
            }),
        (IpAddr::V6(c), IpAddr::V6(d)) => maps
            .flows6
            .get(
                &Flow6 {
                    saddr: words(&c.octets()),
                    daddr: words(&d.octets()),
                    sport,
                    dport,
                    proto,
                    _pad0: 0,
                    _pad1: 0,
                },
                0,
            )
            .ok()
            .map(|n| {
                (
                    std::net::SocketAddr::new(ip_of6(n.saddr), u16::from_be(n.sport)),
                    std::net::SocketAddr::new(ip_of6(n.daddr), u16::from_be(n.dport)),
                    n.flags,
                    n.last_seen_ns,
                )
            }),
        _ => None,
    };
    out.flow = nat.map(|(s, d, flags, seen)| FlowEntryView {
        becomes: format!("{s} -> {d}"),
        masqueraded: flags & lb_common::FLOW_F_SNAT != 0,
        closing: flags & lb_common::FLOW_F_CLOSING != 0,
        last_seen_secs_ago: now_ns.saturating_sub(seen) as f64 / 1e9,
    });
    out
}
