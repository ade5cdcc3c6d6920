//! Attaching the north-south programs (tcx ingress, Linux ≥ 6.6) to the
//! node's interfaces, in the node's network namespace.
//!
//! - `ferry_external` on the external interfaces (`--external-interface`,
//!   default: every interface holding a node address, lo excluded);
//! - `ferry_reply` on every other interface but lo: replies of translated
//!   flows come back from pods on this node through their (pod-facing)
//!   interfaces, which appear and go as pods do, so the set is refreshed on
//!   every sync pass.
//!
//! Links are pinned as `links/<program>@if<ifindex>@<generation>`. A
//! restart attaches the new generation after the old one (tcx runs
//! programs in order and the old one already translated and redirected
//! whatever it matched), then unpins the old links, which detaches them.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use aya::Ebpf;
use aya::programs::links::FdLink;
use aya::programs::tc::{TcAttachOptions, TcAttachType};
use aya::programs::{LinkOrder, SchedClassifier};
use lb_common::programs;

use super::loader::{LoadError, typed_program, unpin_link};
use super::paths::BpffsDir;
use crate::netutil;

/// One interface of the node namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

impl Interface {
    pub fn first_v4(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }

    pub fn first_v6(&self) -> Option<Ipv6Addr> {
        self.addresses.iter().find_map(|a| match a {
            IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some(*v6),
            _ => None,
        })
    }
}

/// Every interface of the current network namespace, with its addresses.
fn list_interfaces() -> io::Result<Vec<Interface>> {
    let mut by_index: BTreeMap<u32, Interface> = BTreeMap::new();
    // SAFETY: if_nameindex returns an array terminated by a zero entry,
    // freed below.
    unsafe {
        let head = libc::if_nameindex();
        if head.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut cur = head;
        while (*cur).if_index != 0 {
            let name = CStr::from_ptr((*cur).if_name)
                .to_string_lossy()
                .into_owned();
            by_index.insert(
                (*cur).if_index,
                Interface {
                    index: (*cur).if_index,
                    name,
                    addresses: Vec::new(),
                },
            );
            cur = cur.add(1);
        }
        libc::if_freenameindex(head);
    }
    for (name, ip) in netutil::interface_addresses()? {
        if let Some(iface) = by_index.values_mut().find(|i| i.name == name) {
            iface.addresses.push(ip);
        }
    }
    Ok(by_index.into_values().collect())
}

/// Which interfaces get which program.
#[derive(Clone, Debug)]
pub struct InterfaceChoice {
    /// `--external-interface`; empty: those holding a node address.
    pub external: Vec<String>,
    pub node_ips: Vec<IpAddr>,
}

impl InterfaceChoice {
    fn is_external(&self, iface: &Interface) -> bool {
        if self.external.is_empty() {
            iface.addresses.iter().any(|a| self.node_ips.contains(a))
        } else {
            self.external.contains(&iface.name)
        }
    }
}

/// The attached tc programs of this agent.
pub struct TcPrograms {
    netns: Option<PathBuf>,
    choice: InterfaceChoice,
    generation: u128,
    /// ifindex → program attached by this generation.
    attached: BTreeMap<u32, &'static str>,
    /// Links of earlier generations, unpinned once this one is attached.
    previous: Vec<PathBuf>,
    /// The external interfaces as last listed.
    pub external: Vec<Interface>,
}

fn link_name(program: &str, ifindex: u32, generation: u128) -> String {
    format!("{program}@if{ifindex}@{generation}")
}

fn tc_pins(bpffs: &BpffsDir) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(bpffs.links()) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            [programs::EXTERNAL, programs::REPLY]
                .iter()
                .any(|p| n.starts_with(&format!("{p}@if")))
        })
        .map(|e| e.path())
        .collect()
}

impl TcPrograms {
    /// Loads both programs (not yet attached anywhere).
    pub fn load(
        ebpf: &mut Ebpf,
        bpffs: &BpffsDir,
        netns: Option<PathBuf>,
        choice: InterfaceChoice,
    ) -> Result<Self, LoadError> {
        for name in [programs::EXTERNAL, programs::REPLY] {
            typed_program::<SchedClassifier>(ebpf, name)?
                .load()
                .map_err(|source| LoadError::Program { name, source })?;
        }
        Ok(Self {
            netns,
            choice,
            generation: super::loader::now_nanos(),
            attached: BTreeMap::new(),
            previous: tc_pins(bpffs),
            external: Vec::new(),
        })
    }

    /// Attaches to interfaces that appeared (or changed role), forgets the
    /// ones that went (the previous generation's links stay until
    /// [`TcPrograms::retire_previous`]). Returns
    /// the interfaces that failed, with why.
    pub fn refresh(&mut self, ebpf: &mut Ebpf, bpffs: &BpffsDir) -> Vec<String> {
        let mut errors = Vec::new();
        let generation = self.generation;
        let choice = self.choice.clone();
        let attached = self.attached.clone();
        let links = bpffs.links();
        let result = netutil::in_netns(self.netns.as_deref(), || {
            let ifaces = list_interfaces()?;
            let mut now: BTreeMap<u32, &'static str> = BTreeMap::new();
            let mut failed = Vec::new();
            let mut external = Vec::new();
            for iface in &ifaces {
                if iface.name == "lo" {
                    continue;
                }
                let program = if choice.is_external(iface) {
                    external.push(iface.clone());
                    programs::EXTERNAL
                } else {
                    programs::REPLY
                };
                if attached.get(&iface.index) == Some(&program) {
                    now.insert(iface.index, program);
                    continue;
                }
                match attach(ebpf, program, &iface.name) {
                    Ok(link) => {
                        let path = links.join(link_name(program, iface.index, generation));
                        // A role change: the old program's link goes after
                        // the new one is in place.
                        if let Some(old) = attached.get(&iface.index) {
                            let _ = fs::remove_file(links.join(link_name(
                                old,
                                iface.index,
                                generation,
                            )));
                        }
                        let _ = fs::remove_file(&path);
                        match link.pin(&path) {
                            Ok(_) => {
                                now.insert(iface.index, program);
                            }
                            Err(e) => failed.push(format!("{}: pinning: {e}", iface.name)),
                        }
                    }
                    Err(e) => failed.push(format!("{}: {e}", iface.name)),
                }
            }
            Ok((now, failed, external))
        });
        match result {
            Ok((now, failed, external)) => {
                // Interfaces that went away: their links are defunct.
                for (ifindex, program) in &self.attached {
                    if !now.contains_key(ifindex) {
                        unpin_link(&bpffs.link(&link_name(program, *ifindex, generation)));
                    }
                }
                self.attached = now;
                self.external = external;
                errors.extend(failed);
            }
            Err(e) => errors.push(format!("listing the node's interfaces: {e}")),
        }
        errors
    }

    /// Unpins the previous generation's links (a restarted agent's
    /// predecessor), once this generation's maps hold the desired state:
    /// until then the old programs, first in each interface's tcx chain,
    /// translate with the old maps, which matters when a layout change
    /// gave this generation new, empty ones.
    pub fn retire_previous(&mut self) {
        for old in std::mem::take(&mut self.previous) {
            unpin_link(&old);
        }
    }

    /// ifindex → program, as attached now.
    pub fn attached(&self) -> &BTreeMap<u32, &'static str> {
        &self.attached
    }

    /// (ifindex, first IPv4, first IPv6) of each external interface: the
    /// masquerade address of packets leaving by it.
    pub fn interface_addrs(&self) -> Vec<(u32, Option<Ipv4Addr>, Option<Ipv6Addr>)> {
        self.external
            .iter()
            .map(|i| (i.index, i.first_v4(), i.first_v6()))
            .collect()
    }

    /// Unpins every tc link under `bpffs` (north-south switched off, or
    /// `ferry cleanup`), which detaches them.
    pub fn detach_all(bpffs: &BpffsDir) {
        for path in tc_pins(bpffs) {
            unpin_link(&path);
        }
    }
}

fn attach(ebpf: &mut Ebpf, program: &'static str, iface: &str) -> Result<FdLink, String> {
    let prog: &mut SchedClassifier = ebpf
        .program_mut(program)
        .ok_or_else(|| format!("program {program} missing"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    let id = prog
        .attach_with_options(
            iface,
            TcAttachType::Ingress,
            TcAttachOptions::TcxOrder(LinkOrder::default()),
        )
        .map_err(|e| format!("attaching {program} (tcx needs Linux 6.6): {e}"))?;
    let link = prog.take_link(id).map_err(|e| format!("{e}"))?;
    FdLink::try_from(link).map_err(|e| format!("{e}"))
}
