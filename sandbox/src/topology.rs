//! A node namespace bridged to backend namespaces.
//!
//! ```text
//!  node ns (<prefix><pid>-<n>-node)           backend ns (<prefix><pid>-<n>-b0, ...)
//!  lo up, clients run here                    lo up, servers run here
//!  br0: 10.244.0.1/24  fd00:244::1/64  ---vb0---  eth0: 10.244.0.10/24 fd00:244::10/64
//!       (10.244.1.1/24 fd00:244:1::1/64   ---vb1---  eth0: 10.244.0.11/24 fd00:244::11/64
//!        once remote backends exist)      ---vr0---  eth0: 10.244.1.10/24 fd00:244:1::10/64
//! ```
//!
//! Local backends ("b0", "b1", ...) are in 10.244.0.0/24 and fd00:244::/64;
//! remote backends ("r0", ...; endpoints declared as being on another
//! node) in 10.244.1.0/24 and fd00:244:1::/64, on the same bridge. Backend
//! `i` of a set gets host part `10+i` (IPv6: the same digits, e.g.
//! fd00:244::10 for b0). Every namespace has `lo` up; backends have on-link
//! routes for 10.244.0.0/16 and fd00:244::/32 only; nothing has a default
//! route and nothing is linked to the host, so no packet can leave.
//!
//! The node's own address is [`NODE_V4`] / [`NODE_V6`] (the bridge's); a
//! backend sees a client of the node namespace coming from its
//! [`Backend::gateway_v4`] / [`Backend::gateway_v6`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::Naming;
use super::netns::Netns;
use super::servers::ServerSet;
use super::util::{Wait, wait_until};

/// The node's IPv4 address (on the bridge).
pub const NODE_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The node's IPv6 address (on the bridge).
pub const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x244, 0, 0, 0, 0, 0, 1);

const LOCAL_SUBNET: u8 = 0;
const REMOTE_SUBNET: u8 = 1;
const MAX_PER_SET: usize = 200;

/// One backend namespace.
#[derive(Debug)]
pub struct Backend {
    /// `b<i>` (local) or `r<i>` (remote); also the name its servers reply with.
    pub name: String,
    pub ns: Netns,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    /// Declared as running on another node (10.244.1.0/24).
    pub remote: bool,
    /// The node's bridge address in this backend's subnet: the source a
    /// backend sees for clients in the node namespace.
    pub gateway_v4: Ipv4Addr,
    pub gateway_v6: Ipv6Addr,
}

impl Backend {
    pub fn addr_v4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.v4.into(), port)
    }

    pub fn addr_v6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.v6.into(), port)
    }

    pub fn ips(&self) -> [IpAddr; 2] {
        [self.v4.into(), self.v6.into()]
    }
}

fn v4_in(subnet: u8, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, subnet, host)
}

/// fd00:244:<subnet>::<host written in decimal digits>.
fn v6_in(subnet: u8, host: u8) -> Ipv6Addr {
    let last = u16::from_str_radix(&host.to_string(), 16).expect("decimal digits are hex digits");
    Ipv6Addr::new(0xfd00, 0x244, subnet.into(), 0, 0, 0, 0, last)
}

/// Builder for [`Topology`].
#[derive(Debug, Default, Clone)]
pub struct TopologyBuilder {
    local: usize,
    remote: usize,
    node_addrs: Vec<String>,
    naming: Naming,
}

impl TopologyBuilder {
    /// How the namespaces are named (default: [`Naming::TESTS`]).
    pub fn naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }

    /// Local backends `b0`..`b<n-1>`.
    pub fn backends(mut self, n: usize) -> Self {
        self.local = n;
        self
    }

    /// Remote backends `r0`..`r<n-1>`.
    pub fn remote_backends(mut self, n: usize) -> Self {
        self.remote = n;
        self
    }

    /// Extra address (CIDR) of the node namespace (see [`Topology::add_node_addr`]).
    pub fn node_addr(mut self, cidr: &str) -> Self {
        self.node_addrs.push(cidr.to_string());
        self
    }

    pub fn build(self) -> Result<Topology> {
        ensure!(
            self.local <= MAX_PER_SET && self.remote <= MAX_PER_SET,
            "at most {MAX_PER_SET} backends per set"
        );
        let id = self.naming.unique_name();
        let node = Netns::create_with(self.naming, &format!("{id}-node"))?;
        let mut topo = Topology {
            backends: Vec::new(),
            node,
            id,
            naming: self.naming,
            remote_subnet: false,
        };
        topo.setup_node()?;
        for _ in 0..self.local {
            topo.add_backend(false)?;
        }
        topo.add_remote_backends(self.remote)?;
        for cidr in &self.node_addrs {
            topo.add_node_addr(cidr)?;
        }
        topo.wait_ready()?;
        Ok(topo)
    }
}

/// The namespaces and links of one test or demo; everything is deleted on
/// drop.
#[derive(Debug)]
pub struct Topology {
    // Dropped in declaration order: backends before the node.
    backends: Vec<Backend>,
    node: Netns,
    id: String,
    naming: Naming,
    remote_subnet: bool,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// A node namespace and `n` local backends `b0`..`b<n-1>`, named by
    /// [`Naming::TESTS`].
    pub fn new(n: usize) -> Result<Topology> {
        Topology::builder().backends(n).build()
    }

    fn setup_node(&self) -> Result<()> {
        let n = &self.node;
        n.cmd(&["link", "add", "br0", "type", "bridge"])?;
        n.cmd(&["link", "set", "br0", "up"])?;
        n.cmd(&["addr", "add", &format!("{NODE_V4}/24"), "dev", "br0"])?;
        n.cmd(&[
            "addr",
            "add",
            &format!("{NODE_V6}/64"),
            "dev",
            "br0",
            "nodad",
        ])?;
        Ok(())
    }

    fn add_backend(&mut self, remote: bool) -> Result<&Backend> {
        let subnet = if remote { REMOTE_SUBNET } else { LOCAL_SUBNET };
        let index = self.backends.iter().filter(|b| b.remote == remote).count();
        ensure!(
            index < MAX_PER_SET,
            "at most {MAX_PER_SET} backends per set"
        );
        let name = format!("{}{index}", if remote { 'r' } else { 'b' });
        let host = u8::try_from(10 + index).expect("bounded above");
        let v4 = v4_in(subnet, host);
        let v6 = v6_in(subnet, host);
        let ns = Netns::create_with(self.naming, &format!("{}-{name}", self.id))?;
        let host_if = format!("v{name}");
        let node = &self.node;
        node.cmd(&[
            "link",
            "add",
            &host_if,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        node.cmd(&["link", "set", &host_if, "master", "br0", "up"])?;
        ns.cmd(&["link", "set", "eth0", "up"])?;
        ns.cmd(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
        ns.cmd(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
        // The whole topology is on one link; no default route.
        ns.cmd(&[
            "route",
            "add",
            "10.244.0.0/16",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        ns.cmd(&["-6", "route", "add", "fd00:244::/32", "dev", "eth0"])?;
        self.backends.push(Backend {
            name,
            ns,
            v4,
            v6,
            remote,
            gateway_v4: v4_in(subnet, 1),
            gateway_v6: v6_in(subnet, 1),
        });
        Ok(self.backends.last().expect("just pushed"))
    }

    /// Adds `n` remote backends `r<i>` in 10.244.1.0/24 / fd00:244:1::/64
    /// (the bridge gets 10.244.1.1/24 and fd00:244:1::1/64 the first time).
    pub fn add_remote_backends(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        if !self.remote_subnet {
            let gw4 = v4_in(REMOTE_SUBNET, 1);
            let gw6 = v6_in(REMOTE_SUBNET, 1);
            self.node
                .cmd(&["addr", "add", &format!("{gw4}/24"), "dev", "br0"])?;
            self.node
                .cmd(&["addr", "add", &format!("{gw6}/64"), "dev", "br0", "nodad"])?;
            self.remote_subnet = true;
        }
        for _ in 0..n {
            self.add_backend(true)?;
        }
        self.wait_ready()
    }

    /// Adds an address (CIDR, e.g. "10.244.0.2/32" or "fd00:244::2/128") to
    /// the node namespace's bridge (IPv6 without DAD), where backends can
    /// reach it too (IPv6 neighbour discovery only answers for addresses of
    /// the receiving interface, so an address on `lo` would be unreachable
    /// from the backends).
    pub fn add_node_addr(&self, cidr: &str) -> Result<()> {
        self.add_node_addr_on("br0", cidr)
    }

    /// Adds an address (CIDR) to device `dev` of the node namespace.
    pub fn add_node_addr_on(&self, dev: &str, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.node.cmd(&args).map(drop)
    }

    /// Waits (bounded, 5 s) until every bridge port forwards.
    fn wait_ready(&self) -> Result<()> {
        for b in &self.backends {
            let port = format!("v{}", b.name);
            let what = format!("bridge port {port} to forward");
            wait_until(
                &what,
                Duration::from_secs(5),
                Duration::from_millis(20),
                || {
                    let out = self.node.cmd(&["-j", "-d", "link", "show", &port])?;
                    let v: serde_json::Value =
                        serde_json::from_str(&out).context("parsing ip -j link output")?;
                    let state = v[0]["linkinfo"]["info_slave_data"]["state"]
                        .as_str()
                        .unwrap_or("");
                    Ok(if state == "forwarding" {
                        Wait::Done(())
                    } else {
                        Wait::Pending(format!("state {state:?}"))
                    })
                },
            )?;
        }
        Ok(())
    }

    /// `<prefix><pid>-<n>`: the common prefix of this topology's namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The node namespace (clients run here).
    pub fn node(&self) -> &Netns {
        &self.node
    }

    pub fn node_ns_name(&self) -> &str {
        self.node.name()
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    pub fn local_backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(|b| !b.remote)
    }

    pub fn remote_backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().filter(|b| b.remote)
    }

    /// The backend named `name` ("b0", "r1", ...). Panics if there is none.
    pub fn backend(&self, name: &str) -> &Backend {
        self.backends
            .iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("no backend {name:?} in this topology"))
    }

    /// Every namespace name of this topology (node first).
    pub fn namespace_names(&self) -> Vec<String> {
        std::iter::once(self.node.name().to_string())
            .chain(self.backends.iter().map(|b| b.ns.name().to_string()))
            .collect()
    }

    /// A TCP and a UDP server on `port`, on both addresses of every backend,
    /// each replying with the backend's name.
    pub fn start_servers(&self, port: u16) -> Result<ServerSet> {
        let mut set = ServerSet::default();
        for b in &self.backends {
            for ip in b.ips() {
                set.add_tcp(&b.ns, &b.name, SocketAddr::new(ip, port))?;
                set.add_udp(&b.ns, &b.name, SocketAddr::new(ip, port))?;
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(v4_in(0, 10).to_string(), "10.244.0.10");
        assert_eq!(v6_in(0, 10).to_string(), "fd00:244::10");
        assert_eq!(v6_in(1, 12).to_string(), "fd00:244:1::12");
        assert_eq!(v6_in(0, 1), NODE_V6);
        assert_eq!(v4_in(0, 1), NODE_V4);
    }
}
