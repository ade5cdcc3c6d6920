//! The eBPF datapath as the agent sees it: loading and pinning the
//! programs, the typed maps, and syncing them to a desired state.

pub mod adopt;
pub mod convert;
pub mod inspect;
pub mod loader;
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

pub use loader::{LoadError, cleanup, load_and_attach};
pub use maps::Maps;
pub use paths::{BpffsDir, cgroup2_root};
pub use sync::{Installed, SyncError, SyncReport};

use std::path::Path;

use lb_common::Config;

use crate::model::DesiredState;

/// The running datapath: programs attached and pinned, maps open, and the
/// mirror of what they hold.
pub struct Datapath {
    pub maps: Maps,
    pub installed: Installed,
    /// The cgroup the programs are attached to: its processes' network
    /// namespaces are where translated sockets live.
    pub cgroup: std::path::PathBuf,
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
    ) -> Result<Self, StartError> {
        bpffs.prepare().map_err(LoadError::from)?;
        let lock = bpffs.lock().map_err(LoadError::from)?;
        load_and_attach(bpffs, cgroup)?;
        let mut maps = Maps::open(bpffs)?;
        maps.config
            .set(0, Config { host_netns_cookie }, 0)
            .map_err(StartError::Config)?;
        let installed = adopt::read_installed(&maps);
        Ok(Self {
            maps,
            installed,
            cgroup: cgroup.to_path_buf(),
            _lock: lock,
        })
    }

    /// Syncs the maps to `desired`, then destroys connected UDP sockets
    /// still pointing at a UDP backend that left the set they were
    /// translated through (see `sockets`).
    pub fn sync(&mut self, desired: &DesiredState) -> SyncReport {
        let (mut report, gone) = self.installed.sync_with_departures(&mut self.maps, desired);
        if !gone.is_empty() {
            report.udp_sockets_destroyed =
                sockets::destroy_udp_sockets(&self.maps, &self.cgroup, &gone);
        }
        report
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Maps(#[from] maps::MapsError),
    #[error("writing the datapath configuration: {0}")]
    Config(aya::maps::MapError),
}
