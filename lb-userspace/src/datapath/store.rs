//! The write side of the datapath as a small trait, so that the ordering
//! rules of `sync` can be checked against an in-memory store in unit tests
//! as well as run against the kernel's maps.

use std::net::IpAddr;

use aya::maps::{MapError, PerCpuValues};
use lb_common::{Backend4, Backend6, FrontendValue, NodePortKey, ServiceCounters, Slot, SlotKey};

use super::{
    convert::{ip4_to_map, ip6_to_map, name_to_map, port_to_map},
    maps::Maps,
};
use crate::model::{FrontendAddr, Protocol};

/// A backend as the maps know it: address, port, protocol and flags
/// (`BACKEND_F_*`). The flags are part of its identity, so that the same
/// endpoint seen as ready by one Service and as terminating by another gets
/// two entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendAddr {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub flags: u8,
}

pub trait Store {
    type Error: std::fmt::Display;
    fn put_backend(&mut self, id: u32, addr: &BackendAddr) -> Result<(), Self::Error>;
    fn del_backend(&mut self, id: u32, addr: &BackendAddr) -> Result<(), Self::Error>;
    /// Puts backend `backend_id` (whose address is `addr`) in a slot.
    fn put_slot(
        &mut self,
        service_id: u32,
        slot: u32,
        backend_id: u32,
        addr: &BackendAddr,
    ) -> Result<(), Self::Error>;
    fn del_slot(&mut self, service_id: u32, slot: u32) -> Result<(), Self::Error>;
    fn put_frontend(&mut self, fe: &FrontendAddr, value: &FrontendValue)
    -> Result<(), Self::Error>;
    fn del_frontend(&mut self, fe: &FrontendAddr) -> Result<(), Self::Error>;
    fn put_cluster_ip(&mut self, ip: IpAddr, service_id: u32) -> Result<(), Self::Error>;
    fn del_cluster_ip(&mut self, ip: IpAddr) -> Result<(), Self::Error>;
    fn put_node_port(&mut self, port: u16, protocol: Protocol) -> Result<(), Self::Error>;
    fn del_node_port(&mut self, port: u16, protocol: Protocol) -> Result<(), Self::Error>;
    fn put_name(&mut self, service_id: u32, name: &str) -> Result<(), Self::Error>;
    fn del_name(&mut self, service_id: u32) -> Result<(), Self::Error>;
    /// Zeroes a service id's counters before the id is reused.
    fn reset_counters(&mut self, service_id: u32) -> Result<(), Self::Error>;
}

/// A slot's value: the backend whole, an IPv4 address in its mapped form.
pub fn slot_value(backend_id: u32, addr: &BackendAddr) -> Slot {
    Slot {
        backend_id,
        addr: match addr.ip {
            IpAddr::V4(ip) => lb_common::addr4_mapped(ip4_to_map(ip)),
            IpAddr::V6(ip) => ip6_to_map(ip),
        },
        port: port_to_map(addr.port),
        proto: addr.protocol.number(),
        flags: addr.flags,
    }
}

fn node_port_key(port: u16, protocol: Protocol) -> NodePortKey {
    NodePortKey {
        port,
        proto: protocol.number(),
        _pad: 0,
    }
}

/// Map keys of a frontend address.
pub fn frontend4_key(
    ip: std::net::Ipv4Addr,
    port: u16,
    protocol: Protocol,
) -> lb_common::Frontend4Key {
    lb_common::Frontend4Key {
        addr: ip4_to_map(ip),
        port: port_to_map(port),
        proto: protocol.number(),
        _pad: 0,
    }
}

pub fn frontend6_key(
    ip: std::net::Ipv6Addr,
    port: u16,
    protocol: Protocol,
) -> lb_common::Frontend6Key {
    lb_common::Frontend6Key {
        addr: ip6_to_map(ip),
        port: port_to_map(port),
        proto: protocol.number(),
        _pad: 0,
    }
}

impl Store for Maps {
    type Error = MapError;

    fn put_backend(&mut self, id: u32, addr: &BackendAddr) -> Result<(), MapError> {
        let (port, proto, flags) = (port_to_map(addr.port), addr.protocol.number(), addr.flags);
        match addr.ip {
            IpAddr::V4(ip) => self.backends4.insert(
                id,
                Backend4 {
                    addr: ip4_to_map(ip),
                    port,
                    proto,
                    flags,
                },
                0,
            ),
            IpAddr::V6(ip) => self.backends6.insert(
                id,
                Backend6 {
                    addr: ip6_to_map(ip),
                    port,
                    proto,
                    flags,
                },
                0,
            ),
        }
    }

    fn del_backend(&mut self, id: u32, addr: &BackendAddr) -> Result<(), MapError> {
        ignore_missing(match addr.ip {
            IpAddr::V4(_) => self.backends4.remove(&id),
            IpAddr::V6(_) => self.backends6.remove(&id),
        })
    }

    fn put_slot(
        &mut self,
        service_id: u32,
        slot: u32,
        backend_id: u32,
        addr: &BackendAddr,
    ) -> Result<(), MapError> {
        self.slots.insert(
            SlotKey { service_id, slot },
            slot_value(backend_id, addr),
            0,
        )
    }

    fn del_slot(&mut self, service_id: u32, slot: u32) -> Result<(), MapError> {
        ignore_missing(self.slots.remove(&SlotKey { service_id, slot }))
    }

    fn put_frontend(&mut self, fe: &FrontendAddr, value: &FrontendValue) -> Result<(), MapError> {
        match fe.ip {
            IpAddr::V4(ip) => {
                self.frontends4
                    .insert(frontend4_key(ip, fe.port, fe.protocol), value, 0)
            }
            IpAddr::V6(ip) => {
                self.frontends6
                    .insert(frontend6_key(ip, fe.port, fe.protocol), value, 0)
            }
        }
    }

    fn del_frontend(&mut self, fe: &FrontendAddr) -> Result<(), MapError> {
        ignore_missing(match fe.ip {
            IpAddr::V4(ip) => self
                .frontends4
                .remove(&frontend4_key(ip, fe.port, fe.protocol)),
            IpAddr::V6(ip) => self
                .frontends6
                .remove(&frontend6_key(ip, fe.port, fe.protocol)),
        })
    }

    fn put_cluster_ip(&mut self, ip: IpAddr, service_id: u32) -> Result<(), MapError> {
        match ip {
            IpAddr::V4(ip) => self.cluster_ips4.insert(ip4_to_map(ip), service_id, 0),
            IpAddr::V6(ip) => self.cluster_ips6.insert(ip6_to_map(ip), service_id, 0),
        }
    }

    fn del_cluster_ip(&mut self, ip: IpAddr) -> Result<(), MapError> {
        ignore_missing(match ip {
            IpAddr::V4(ip) => self.cluster_ips4.remove(&ip4_to_map(ip)),
            IpAddr::V6(ip) => self.cluster_ips6.remove(&ip6_to_map(ip)),
        })
    }

    fn put_node_port(&mut self, port: u16, protocol: Protocol) -> Result<(), MapError> {
        self.nodeport_binds
            .insert(node_port_key(port, protocol), 1, 0)
    }

    fn del_node_port(&mut self, port: u16, protocol: Protocol) -> Result<(), MapError> {
        ignore_missing(self.nodeport_binds.remove(&node_port_key(port, protocol)))
    }

    fn put_name(&mut self, service_id: u32, name: &str) -> Result<(), MapError> {
        self.names.insert(service_id, name_to_map(name), 0)
    }

    fn del_name(&mut self, service_id: u32) -> Result<(), MapError> {
        ignore_missing(self.names.remove(&service_id))
    }

    fn reset_counters(&mut self, service_id: u32) -> Result<(), MapError> {
        let syscall = |io_error| {
            MapError::SyscallError(aya::sys::SyscallError {
                call: "nr_cpus",
                io_error,
            })
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| syscall(e))?;
        let zeros =
            PerCpuValues::try_from(vec![ServiceCounters::default(); cpus]).map_err(syscall)?;
        self.counters.set(service_id, zeros, 0)
    }
}

/// Deleting what is already gone is success: the goal is its absence.
fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}
