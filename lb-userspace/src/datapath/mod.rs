//! The eBPF datapath as the agent sees it: loading and pinning the
//! programs, the typed maps, and syncing them to a desired state.
//!
//! Two halves share the object and its pins: the socket datapath (cgroup
//! programs; `maps`, `sync`, `adopt`, `sockets`) for clients on the node,
//! and the north-south one (tc and XDP programs; `tc`, `xdp`, `external`,
//! `maglev`) for packets from outside it.

pub mod adopt;
pub mod contract;
pub mod convert;
pub mod external;
pub mod inspect;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod object;
pub mod paths;
pub mod sockets;
pub mod store;
pub mod sync;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod sync_timing;
pub mod tables;
pub mod tc;
pub mod xdp;

pub use loader::{LoadError, cleanup, load_and_attach, load_pinned};
pub use maps::Maps;
pub use paths::{BpffsDir, cgroup2_root};
pub use sync::{Installed, SyncError, SyncReport};

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lb_common::Config;

use crate::model::DesiredState;

/// How the north-south half runs (`--north-south`, `--external-interface`,
/// ...).
#[derive(Clone, Debug)]
pub struct NorthSouthConfig {
    /// The node network namespace (`--host-netns`), None: ferry's own.
    pub netns: Option<PathBuf>,
    /// `--external-interface`; empty: those holding a node address.
    pub external_interfaces: Vec<String>,
    /// `--xdp-mode`.
    pub xdp_mode: xdp::XdpMode,
    /// The node's addresses: default external interfaces, masquerade
    /// addresses, sources always admitted by loadBalancerSourceRanges.
    pub node_ips: Vec<IpAddr>,
    pub maglev_size: u32,
    pub masquerade_ports: (u16, u16),
}

/// The north-south half while it runs.
struct NorthSouth {
    external: external::External,
    tc: tc::TcPrograms,
    xdp: xdp::XdpPrograms,
}

/// The running datapath: programs attached and pinned, maps open, and the
/// mirror of what they hold.
pub struct Datapath {
    pub maps: Maps,
    pub installed: Installed,
    /// The cgroup the programs are attached to: its processes' network
    /// namespaces are where translated sockets live.
    pub cgroup: PathBuf,
    bpffs: BpffsDir,
    /// The loaded object: the tc programs attach from it as interfaces
    /// appear.
    ebpf: aya::Ebpf,
    north_south: Option<NorthSouth>,
    /// The previous generation, detached after the first sync: only then
    /// do this generation's maps hold the desired state (they are fresh
    /// and empty after a layout change).
    handover: Option<loader::Handover>,
    /// Held for as long as this agent writes the maps.
    _lock: std::fs::File,
}

impl Datapath {
    /// Loads and attaches (or re-attaches over a previous generation
    /// without a gap) and adopts whatever the pinned maps already hold.
    pub fn start(
        bpffs: &BpffsDir,
        cgroup: &Path,
        host_netns_cookie: u64,
        north_south: Option<NorthSouthConfig>,
    ) -> Result<Self, StartError> {
        bpffs.prepare().map_err(LoadError::from)?;
        let lock = bpffs.lock().map_err(LoadError::from)?;
        let (mut ebpf, handover) = load_and_attach(bpffs, cgroup)?;
        let mut maps = Maps::open(bpffs)?;
        maps.config
            .set(0, Config { host_netns_cookie }, 0)
            .map_err(StartError::Config)?;
        let installed = adopt::read_installed(&maps)?;
        let north_south = match north_south {
            Some(config) => Some(start_north_south(&mut ebpf, bpffs, config)?),
            None => {
                // Switched off: nothing of a previous run may keep
                // translating.
                xdp::XdpPrograms::detach_all(bpffs);
                tc::TcPrograms::detach_all(bpffs);
                None
            }
        };
        Ok(Self {
            maps,
            installed,
            cgroup: cgroup.to_path_buf(),
            bpffs: bpffs.clone(),
            ebpf,
            north_south,
            handover: Some(handover),
            _lock: lock,
        })
    }

    /// Syncs the maps to `desired`, then destroys connected UDP sockets
    /// still pointing at a UDP backend that left the set they were
    /// translated through (see `sockets`); then the north-south maps, and
    /// the tc programs onto interfaces that appeared.
    pub fn sync(&mut self, desired: &DesiredState) -> SyncReport {
        let (mut report, gone) = self.installed.sync_with_departures(&mut self.maps, desired);
        if let Some(handover) = self.handover.take() {
            handover.complete();
        }
        if !gone.is_empty() {
            report.udp_sockets_destroyed =
                sockets::destroy_udp_sockets(&self.maps, &self.cgroup, &gone);
        }
        if let Some(ns) = &mut self.north_south {
            for e in ns.tc.refresh(&mut self.ebpf, &self.bpffs) {
                report.errors.push(SyncError {
                    what: "north-south interfaces".into(),
                    reason: e,
                });
            }
            // After tc: XDP passes to it whatever it cannot send.
            for e in ns.xdp.refresh(&mut self.ebpf, &self.bpffs, &ns.tc.external) {
                report.errors.push(SyncError {
                    what: "north-south XDP".into(),
                    reason: e,
                });
            }
            if let Err(e) = ns.external.set_interfaces(ns.tc.interface_addrs()) {
                report.errors.push(SyncError {
                    what: "north-south interface addresses".into(),
                    reason: e.to_string(),
                });
            }
            let ext = ns.external.sync(desired);
            // The maps hold what this pass could write (a bad Service is
            // reported, not waited for): the old programs can go.
            ns.tc.retire_previous();
            report.changes += ext.changes + ext.tables_written + ext.flows_swept;
            report
                .errors
                .extend(ext.errors.into_iter().map(|reason| SyncError {
                    what: "north-south".into(),
                    reason,
                }));
        }
        report
    }

    /// The north-south half, when it runs.
    pub fn external(&self) -> Option<&external::External> {
        self.north_south.as_ref().map(|ns| &ns.external)
    }
}

fn start_north_south(
    ebpf: &mut aya::Ebpf,
    bpffs: &BpffsDir,
    config: NorthSouthConfig,
) -> Result<NorthSouth, StartError> {
    let choice = tc::InterfaceChoice {
        external: config.external_interfaces,
        node_ips: config.node_ips.clone(),
    };
    let mut tc = tc::TcPrograms::load(ebpf, bpffs, config.netns.clone(), choice)?;
    // Attach before the maps are written: the pinned maps already hold
    // what a previous agent served (or nothing, which passes every packet).
    let errors = tc.refresh(ebpf, bpffs);
    if !errors.is_empty() {
        return Err(StartError::Interfaces(errors.join("; ")));
    }
    let settings = external::ExternalSettings {
        maglev_size: config.maglev_size,
        snat_ports: config.masquerade_ports,
        snat4: config.node_ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        }),
        snat6: config.node_ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        }),
        interface_addrs: tc.interface_addrs(),
        node_addresses: config.node_ips,
    };
    let external = external::External::start(bpffs, settings)?;
    // XDP only speeds tc up: an interface it cannot attach to is served by
    // tc alone, reported, and tried again on the next sync.
    let mut xdp = xdp::XdpPrograms::load(ebpf, bpffs, config.netns, config.xdp_mode)?;
    for e in xdp.refresh(ebpf, bpffs, &tc.external) {
        tracing::warn!(error = %e, "XDP not attached; tc serves the interface alone");
    }
    tracing::info!(
        external_interfaces = ?tc.external.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
        attached = tc.attached().len(),
        xdp = ?xdp.attached(),
        "north-south programs attached"
    );
    Ok(NorthSouth { external, tc, xdp })
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Maps(#[from] maps::MapsError),
    #[error("adopting the pinned state: {0}")]
    Adopt(#[from] adopt::ReadError),
    #[error("writing the datapath configuration: {0}")]
    Config(aya::maps::MapError),
    #[error("north-south: {0}")]
    External(#[from] external::ExternalError),
    #[error("north-south: attaching to the node's interfaces: {0}")]
    Interfaces(String),
}
