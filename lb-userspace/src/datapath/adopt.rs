//! Reading back what the pinned maps hold, so that a restarted agent
//! continues from the kernel's state instead of flushing it.

use std::collections::BTreeMap;

use super::{
    convert::{ip_from_map4, ip_from_map6, name_from_map, port_from_map},
    maps::Maps,
    store::BackendAddr,
    sync::{Installed, InstalledBackend, InstalledSet},
};
use crate::model::{FrontendAddr, Protocol};

/// The whole content of the maps the agent writes, as its mirror.
/// Entries that cannot be interpreted (a protocol the agent never writes)
/// are skipped here and therefore never deleted; that is deliberate: they
/// are not Ferry's to judge.
pub fn read_installed(maps: &Maps) -> Installed {
    let mut installed = Installed::default();

    let mut slots: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (key, backend_id) in maps.slots.iter().filter_map(Result::ok) {
        if key.slot == 0 {
            continue;
        }
        let v = slots.entry(key.service_id).or_default();
        let i = key.slot as usize - 1;
        if v.len() <= i {
            v.resize(i + 1, 0);
        }
        v[i] = backend_id;
    }
    for (id, name) in maps.names.iter().filter_map(Result::ok) {
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
    for (id, b) in maps.backends4.iter().filter_map(Result::ok) {
        if let Some(addr) = backend(ip_from_map4(b.addr), b.port, b.proto, b.flags) {
            installed.backends.insert(addr, InstalledBackend { id });
        }
    }
    for (id, b) in maps.backends6.iter().filter_map(Result::ok) {
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
    for (k, v) in maps.frontends4.iter().filter_map(Result::ok) {
        if let Some(addr) = frontend(ip_from_map4(k.addr), k.port, k.proto) {
            installed.frontends.insert(addr, v);
        }
    }
    for (k, v) in maps.frontends6.iter().filter_map(Result::ok) {
        if let Some(addr) = frontend(ip_from_map6(k.addr), k.port, k.proto) {
            installed.frontends.insert(addr, v);
        }
    }
    for (ip, id) in maps.cluster_ips4.iter().filter_map(Result::ok) {
        installed.cluster_ips.insert(ip_from_map4(ip), id);
    }
    for (ip, id) in maps.cluster_ips6.iter().filter_map(Result::ok) {
        installed.cluster_ips.insert(ip_from_map6(ip), id);
    }
    for (k, _) in maps.nodeport_binds.iter().filter_map(Result::ok) {
        if let Some(protocol) = Protocol::from_number(k.proto) {
            installed.node_ports.insert((k.port, protocol));
        }
    }
    installed
}
