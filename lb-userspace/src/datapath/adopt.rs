//! Reading back what the pinned maps hold, so that a restarted agent
//! continues from the kernel's state instead of flushing it.

use std::collections::BTreeMap;

use aya::maps::MapError;
use lb_common::maps as names;

use super::{
    convert::{ip_from_map4, ip_from_map6, name_from_map, port_from_map},
    maps::Maps,
    store::BackendAddr,
    sync::{Installed, InstalledBackend, InstalledSet},
};
use crate::model::{FrontendAddr, Protocol};

/// A map could not be read to the end. The caller must not take a partial
/// read for the maps' content: entries it missed would look absent, be
/// rewritten as drift, or never be swept.
#[derive(Debug, thiserror::Error)]
#[error("reading map {map}: {source}")]
pub struct ReadError {
    pub map: &'static str,
    pub source: MapError,
}

/// Every entry of a map, or the first error.
fn all<T>(
    map: &'static str,
    iter: impl Iterator<Item = Result<T, MapError>>,
) -> Result<Vec<T>, ReadError> {
    iter.collect::<Result<Vec<_>, _>>()
        .map_err(|source| ReadError { map, source })
}

/// The whole content of the maps the agent writes, as its mirror.
/// Entries that cannot be interpreted (a protocol the agent never writes)
/// are skipped here and therefore never deleted; that is deliberate: they
/// are not Ferry's to judge.
pub fn read_installed(maps: &Maps) -> Result<Installed, ReadError> {
    let mut installed = Installed::default();

    let mut slots: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (key, slot) in all(names::SLOTS, maps.slots.iter())? {
        if key.slot == 0 {
            continue;
        }
        let v = slots.entry(key.service_id).or_default();
        let i = key.slot as usize - 1;
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] = slot.backend_id;
    }
    for (id, name) in all(names::SERVICE_NAMES, maps.names.iter())? {
        let set_slots = slots.remove(&id).unwrap_or_default();
        installed.sets.insert(
            name_from_map(&name),
            InstalledSet {
                id,
                slots: set_slots,
            },
        );
    }
    // Slots without a name: left by an agent killed between writing slots
    // and the name. Give them a name no desired set has, so they are swept.
    for (id, set_slots) in slots {
        installed.sets.insert(
            format!("#orphan-{id}"),
            InstalledSet {
                id,
                slots: set_slots,
            },
        );
    }

    let backend = |ip, port: u16, proto: u8, flags: u8| {
        Protocol::from_number(proto).map(|protocol| BackendAddr {
            ip,
            port: port_from_map(port),
            protocol,
            flags,
        })
    };
    for (id, b) in all(names::BACKENDS4, maps.backends4.iter())? {
        if let Some(addr) = backend(ip_from_map4(b.addr), b.port, b.proto, b.flags) {
            installed.backends.insert(addr, InstalledBackend { id });
        }
    }
    for (id, b) in all(names::BACKENDS6, maps.backends6.iter())? {
        if let Some(addr) = backend(ip_from_map6(b.addr), b.port, b.proto, b.flags) {
            installed.backends.insert(addr, InstalledBackend { id });
        }
    }

    let frontend = |ip, port: u16, proto: u8| {
        Protocol::from_number(proto).map(|protocol| FrontendAddr {
            ip,
            port: port_from_map(port),
            protocol,
        })
    };
    for (k, v) in all(names::FRONTENDS4, maps.frontends4.iter())? {
        if let Some(addr) = frontend(ip_from_map4(k.addr), k.port, k.proto) {
            installed.frontends.insert(addr, v);
        }
    }
    for (k, v) in all(names::FRONTENDS6, maps.frontends6.iter())? {
        if let Some(addr) = frontend(ip_from_map6(k.addr), k.port, k.proto) {
            installed.frontends.insert(addr, v);
        }
    }
    for (ip, id) in all(names::CLUSTER_IPS4, maps.cluster_ips4.iter())? {
        installed.cluster_ips.insert(ip_from_map4(ip), id);
    }
    for (ip, id) in all(names::CLUSTER_IPS6, maps.cluster_ips6.iter())? {
        installed.cluster_ips.insert(ip_from_map6(ip), id);
    }
    for (k, _) in all(names::NODEPORT_BINDS, maps.nodeport_binds.iter())? {
        if let Some(protocol) = Protocol::from_number(k.proto) {
            installed.node_ports.insert((k.port, protocol));
        }
    }
    Ok(installed)
}
