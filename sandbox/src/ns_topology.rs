//! A two-node "cluster" for north-south tests: an outside client, two node
//! namespaces that route to each other, and pods behind the nodes the way a
//! routed CNI (Calico) wires them. Ferry runs *inside* each node namespace
//! ([`NodeFerry`]), so its tc programs attach to that node's interfaces.
//!
//! ```text
//!            client (lo: 10.71.0.2/32 fd71::2/128)
//!   eth1 10.71.1.2/24 fd71:1::2/64      eth2 10.71.2.2/24 fd71:2::2/64
//!          |                                   |
//!   ext0 10.71.1.1/24 fd71:1::1/64      ext0 10.71.2.1/24 fd71:2::1/64
//!        node1 --nn0 10.71.12.1/24 ---- nn0 10.71.12.2/24-- node2
//!              (fd71:12::1/64)              (fd71:12::2/64)
//!   cali-pod1 | cali-pod1b |                   | cali-pod2
//!     pod1 10.81.1.10   pod1b 10.81.1.11      pod2 10.82.1.10
//!     fd81:1::10        fd81:1::11            fd82:1::10
//! ```
//!
//! * Pods: the address as /32 (/128) on `eth0`, routes for 10.0.0.0/8 and
//!   fd00::/8 only (no default route) via 169.254.1.1 / fe80::1, which are
//!   permanent neighbour entries for the node side's MAC
//!   `ee:ee:ee:ee:ee:ee`. The node side of a pod veth is unnumbered and has
//!   a host route to the pod (`ip route add 10.81.1.10 dev cali-pod1`).
//! * Nodes: IPv4 and IPv6 forwarding on; each routes the other node's pod
//!   range, the other node's client link and the client's loopback address
//!   (10.71.0.2, fd71::2) as a real cluster would.
//! * The client: its two links, the LB range 10.90.0.0/24 / fd90::/64 via
//!   node1, nothing else (no route to any pod).
//! * Everywhere: no default route, no link to the host, DAD off,
//!   `rp_filter` 0 (a deterministic baseline whatever the host's settings).
//!
//! Every namespace is a [`Netns`] guard (named `ft<pid>-<n>-<role>`, swept
//! by [`crate::sweep_stale`] after a killed run); dropping the topology
//! deletes pods, then nodes, then the client.

use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::Naming;
use crate::bpffs::BpffsDir;
use crate::cgroup::Cgroup;
use crate::ferry::{Ferry, FerryOptions, ferry_binary};
use crate::manifests::Manifests;
use crate::netns::Netns;
use crate::servers::ServerSet;
use crate::util::{Wait, command_stdout, wait_until};

/// The client's loopback address: a source that is the same whichever
/// node a packet goes through.
pub const CLIENT_LO_V4: Ipv4Addr = Ipv4Addr::new(10, 71, 0, 2);
pub const CLIENT_LO_V6: Ipv6Addr = Ipv6Addr::new(0xfd71, 0, 0, 0, 0, 0, 0, 2);
/// The load balancer range the client routes via node1.
pub const LB_RANGE_V4: &str = "10.90.0.0/24";
pub const LB_RANGE_V6: &str = "fd90::/64";
/// MAC of the node side of every pod veth (Calico's).
pub const POD_GATEWAY_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The pods' gateway addresses (permanent neighbours, not configured
/// anywhere).
pub const POD_GATEWAY_V4: &str = "169.254.1.1";
pub const POD_GATEWAY_V6: &str = "fe80::1";
/// Node-side names of the client link and of the node-to-node link.
pub const CLIENT_IF: &str = "ext0";
pub const PEER_IF: &str = "nn0";

/// One node namespace.
#[derive(Debug)]
pub struct NsNode {
    /// "node1" / "node2" (also the `--node-name` and endpoints' nodeName).
    pub name: String,
    /// The topology's naming, for what [`NodeFerry`] creates for it.
    naming: Naming,
    pub ns: Netns,
    /// 1 or 2.
    pub index: u8,
    /// Addresses on [`CLIENT_IF`] (10.71.<i>.1, fd71:<i>::1).
    pub client_v4: Ipv4Addr,
    pub client_v6: Ipv6Addr,
    /// Addresses on [`PEER_IF`] (10.71.12.<i>, fd71:12::<i>).
    pub link_v4: Ipv4Addr,
    pub link_v6: Ipv6Addr,
    /// The client's addresses on the link to this node (10.71.<i>.2,
    /// fd71:<i>::2).
    pub client_peer_v4: Ipv4Addr,
    pub client_peer_v6: Ipv6Addr,
    /// The client's interface towards this node ("eth1", "eth2").
    pub client_side_if: String,
}

impl NsNode {
    /// Every node address: the `--node-ip`s.
    pub fn ips(&self) -> Vec<IpAddr> {
        vec![
            self.client_v4.into(),
            self.link_v4.into(),
            self.client_v6.into(),
            self.link_v6.into(),
        ]
    }

    /// The client-facing address of the family of `like`.
    pub fn addr_like(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => self.client_v4.into(),
            IpAddr::V6(_) => self.client_v6.into(),
        }
    }

    /// The client-facing addresses, v4 then v6.
    pub fn client_addrs(&self) -> [IpAddr; 2] {
        [self.client_v4.into(), self.client_v6.into()]
    }

    /// The client's address on the link to this node, of the family of `like`.
    pub fn client_peer_like(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => self.client_peer_v4.into(),
            IpAddr::V6(_) => self.client_peer_v6.into(),
        }
    }

    /// Whether `ip` is one of this node's addresses.
    pub fn owns(&self, ip: IpAddr) -> bool {
        self.ips().contains(&ip)
    }

    /// The interfaces that face the outside: the client link and the
    /// node-to-node link (what `--external-interface` gets).
    pub fn external_interfaces(&self) -> [&'static str; 2] {
        [CLIENT_IF, PEER_IF]
    }
}

/// One pod namespace.
#[derive(Debug)]
pub struct Pod {
    /// "pod1", "pod1b", "pod2": also the name its servers answer with.
    pub name: String,
    pub ns: Netns,
    /// The node it runs on ("node1", "node2").
    pub node: String,
    /// The node side of its veth ("cali-pod1").
    pub host_if: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl Pod {
    pub fn ips(&self) -> [IpAddr; 2] {
        [self.v4.into(), self.v6.into()]
    }

    pub fn ip_like(&self, like: IpAddr) -> IpAddr {
        match like {
            IpAddr::V4(_) => self.v4.into(),
            IpAddr::V6(_) => self.v6.into(),
        }
    }
}

/// The topology of the module docs; everything is deleted on drop.
#[derive(Debug)]
pub struct NsTopology {
    // Dropped in declaration order: pods, nodes, then the client.
    pods: Vec<Pod>,
    nodes: Vec<NsNode>,
    client: Netns,
    id: String,
    naming: Naming,
}

/// `sysctl -qw KEY=VALUE` inside `ns` (through nsenter, so /proc/sys/net
/// is the namespace's).
pub fn sysctl(ns: &Netns, key: &str, value: &str) -> Result<()> {
    command_stdout(
        ns.command("sysctl")
            .arg("-qw")
            .arg(format!("{key}={value}")),
    )
    .map(drop)
}

/// `ethtool -K IFNAME SETTINGS...` in `ns`.
pub fn offloads(ns: &Netns, ifname: &str, settings: &[&str]) -> Result<()> {
    command_stdout(ns.command("ethtool").arg("-K").arg(ifname).args(settings)).map(drop)
}

/// Senders in this topology are veths, which pass a local sender's
/// unfinished checksum (CHECKSUM_PARTIAL) along with the packet. tc's
/// checksum helpers keep such a packet right; XDP sees a raw frame, as a
/// NIC delivers it from the wire, complete checksums included. So the
/// senders (client and pods) compute their checksums themselves, like a
/// machine behind a NIC; and the client takes XDP_REDIRECTed frames
/// (veth needs GRO, or an XDP program, on the receiving side for that).
fn sender_offloads(ns: &Netns, ifname: &str, takes_redirects: bool) -> Result<()> {
    offloads(ns, ifname, &["tx", "off"])?;
    if takes_redirects {
        offloads(ns, ifname, &["gro", "on"])?;
    }
    Ok(())
}

/// Deterministic settings for a fresh namespace, before its interfaces
/// exist (new interfaces take the `default` values).
fn base_sysctls(ns: &Netns) -> Result<()> {
    for (k, v) in [
        ("net.ipv6.conf.all.accept_dad", "0"),
        ("net.ipv6.conf.default.accept_dad", "0"),
        ("net.ipv6.conf.all.accept_ra", "0"),
        ("net.ipv6.conf.default.accept_ra", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ] {
        sysctl(ns, k, v)?;
    }
    Ok(())
}

impl NsTopology {
    /// Builds the whole topology and waits (bounded) until every link is up
    /// and no address is tentative.
    pub fn new() -> Result<NsTopology> {
        Self::new_with(Naming::TESTS)
    }

    /// [`NsTopology::new`], naming everything with `naming`.
    pub fn new_with(naming: Naming) -> Result<NsTopology> {
        let id = naming.unique_name();
        let client = Netns::create_with(naming, &format!("{id}-client"))?;
        base_sysctls(&client)?;
        let mut topo = NsTopology {
            pods: Vec::new(),
            nodes: Vec::new(),
            client,
            id,
            naming,
        };
        // From here on an error drops `topo`, which deletes what exists.
        topo.add_node(1)?;
        topo.add_node(2)?;
        topo.link_nodes()?;
        topo.add_pod("pod1", 1, Ipv4Addr::new(10, 81, 1, 10), "fd81:1::10")?;
        topo.add_pod("pod1b", 1, Ipv4Addr::new(10, 81, 1, 11), "fd81:1::11")?;
        topo.add_pod("pod2", 2, Ipv4Addr::new(10, 82, 1, 10), "fd82:1::10")?;
        topo.setup_client()?;
        for n in &topo.nodes {
            sysctl(&n.ns, "net.ipv4.ip_forward", "1")?;
            sysctl(&n.ns, "net.ipv6.conf.all.forwarding", "1")?;
        }
        topo.wait_ready()?;
        Ok(topo)
    }

    fn add_node(&mut self, i: u8) -> Result<()> {
        let name = format!("node{i}");
        let ns = Netns::create_with(self.naming, &format!("{}-{name}", self.id))?;
        base_sysctls(&ns)?;
        let client_side_if = format!("eth{i}");
        let node = NsNode {
            name,
            naming: self.naming,
            ns,
            index: i,
            client_v4: Ipv4Addr::new(10, 71, i, 1),
            client_v6: Ipv6Addr::new(0xfd71, i.into(), 0, 0, 0, 0, 0, 1),
            link_v4: Ipv4Addr::new(10, 71, 12, i),
            link_v6: Ipv6Addr::new(0xfd71, 0x12, 0, 0, 0, 0, 0, i.into()),
            client_peer_v4: Ipv4Addr::new(10, 71, i, 2),
            client_peer_v6: Ipv6Addr::new(0xfd71, i.into(), 0, 0, 0, 0, 0, 2),
            client_side_if,
        };
        self.nodes.push(node);
        let node = self.nodes.last().expect("just pushed");
        let (n, c) = (&node.ns, &self.client);
        n.cmd(&[
            "link",
            "add",
            CLIENT_IF,
            "type",
            "veth",
            "peer",
            "name",
            &node.client_side_if,
            "netns",
            c.name(),
        ])?;
        n.cmd(&["link", "set", CLIENT_IF, "up"])?;
        c.cmd(&["link", "set", &node.client_side_if, "up"])?;
        sender_offloads(c, &node.client_side_if, true)?;
        n.cmd(&[
            "addr",
            "add",
            &format!("{}/24", node.client_v4),
            "dev",
            CLIENT_IF,
        ])?;
        n.cmd(&[
            "addr",
            "add",
            &format!("{}/64", node.client_v6),
            "dev",
            CLIENT_IF,
            "nodad",
        ])?;
        c.cmd(&[
            "addr",
            "add",
            &format!("{}/24", node.client_peer_v4),
            "dev",
            &node.client_side_if,
        ])?;
        c.cmd(&[
            "addr",
            "add",
            &format!("{}/64", node.client_peer_v6),
            "dev",
            &node.client_side_if,
            "nodad",
        ])?;
        // The client's loopback address is behind the client link.
        n.cmd(&[
            "route",
            "add",
            &format!("{CLIENT_LO_V4}/32"),
            "via",
            &node.client_peer_v4.to_string(),
        ])?;
        n.cmd(&[
            "-6",
            "route",
            "add",
            &format!("{CLIENT_LO_V6}/128"),
            "via",
            &node.client_peer_v6.to_string(),
        ])?;
        Ok(())
    }

    fn link_nodes(&self) -> Result<()> {
        let (n1, n2) = (&self.nodes[0], &self.nodes[1]);
        n1.ns.cmd(&[
            "link",
            "add",
            PEER_IF,
            "type",
            "veth",
            "peer",
            "name",
            PEER_IF,
            "netns",
            n2.ns.name(),
        ])?;
        for (me, other) in [(n1, n2), (n2, n1)] {
            let ns = &me.ns;
            ns.cmd(&["link", "set", PEER_IF, "up"])?;
            // The other node's XDP redirects frames into this link; a veth
            // takes them only with GRO (or an XDP program of its own, which
            // a node without Ferry lacks).
            offloads(ns, PEER_IF, &["gro", "on"])?;
            ns.cmd(&["addr", "add", &format!("{}/24", me.link_v4), "dev", PEER_IF])?;
            ns.cmd(&[
                "addr",
                "add",
                &format!("{}/64", me.link_v6),
                "dev",
                PEER_IF,
                "nodad",
            ])?;
            let via4 = other.link_v4.to_string();
            let via6 = other.link_v6.to_string();
            let o = other.index;
            // The other node's pods and its client link.
            ns.cmd(&["route", "add", &format!("10.8{o}.0.0/16"), "via", &via4])?;
            ns.cmd(&["route", "add", &format!("10.71.{o}.0/24"), "via", &via4])?;
            ns.cmd(&["-6", "route", "add", &format!("fd8{o}::/16"), "via", &via6])?;
            ns.cmd(&[
                "-6",
                "route",
                "add",
                &format!("fd71:{o}::/64"),
                "via",
                &via6,
            ])?;
        }
        Ok(())
    }

    fn add_pod(&mut self, name: &str, node_index: u8, v4: Ipv4Addr, v6: &str) -> Result<()> {
        let v6: Ipv6Addr = v6.parse().context("pod IPv6 address")?;
        let ns = Netns::create_with(self.naming, &format!("{}-{name}", self.id))?;
        base_sysctls(&ns)?;
        let node = &self.nodes[usize::from(node_index - 1)];
        let host_if = format!("cali-{name}");
        self.pods.push(Pod {
            name: name.to_string(),
            ns,
            node: node.name.clone(),
            host_if,
            v4,
            v6,
        });
        let pod = self.pods.last().expect("just pushed");
        let (n, p, hif) = (&node.ns, &pod.ns, pod.host_if.as_str());
        n.cmd(&[
            "link",
            "add",
            hif,
            "address",
            POD_GATEWAY_MAC,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            p.name(),
        ])?;
        n.cmd(&["link", "set", hif, "up"])?;
        n.cmd(&[
            "route",
            "add",
            &format!("{v4}/32"),
            "dev",
            hif,
            "scope",
            "link",
        ])?;
        n.cmd(&["-6", "route", "add", &format!("{v6}/128"), "dev", hif])?;
        p.cmd(&["link", "set", "eth0", "up"])?;
        sender_offloads(p, "eth0", false)?;
        p.cmd(&["addr", "add", &format!("{v4}/32"), "dev", "eth0"])?;
        p.cmd(&["addr", "add", &format!("{v6}/128"), "dev", "eth0", "nodad"])?;
        p.cmd(&[
            "neigh",
            "add",
            POD_GATEWAY_V4,
            "lladdr",
            POD_GATEWAY_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        p.cmd(&[
            "-6",
            "neigh",
            "add",
            POD_GATEWAY_V6,
            "lladdr",
            POD_GATEWAY_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        p.cmd(&[
            "route",
            "add",
            POD_GATEWAY_V4,
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        p.cmd(&[
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            POD_GATEWAY_V4,
            "dev",
            "eth0",
        ])?;
        p.cmd(&[
            "-6",
            "route",
            "add",
            "fd00::/8",
            "via",
            POD_GATEWAY_V6,
            "dev",
            "eth0",
        ])?;
        Ok(())
    }

    fn setup_client(&self) -> Result<()> {
        let c = &self.client;
        c.cmd(&["addr", "add", &format!("{CLIENT_LO_V4}/32"), "dev", "lo"])?;
        c.cmd(&["addr", "add", &format!("{CLIENT_LO_V6}/128"), "dev", "lo"])?;
        self.route_client_via(LB_RANGE_V4, "node1")?;
        self.route_client_via(LB_RANGE_V6, "node1")?;
        Ok(())
    }

    /// `ip route replace DEST via <node's client-facing address>` in the
    /// client (the family of `dest`'s address decides which).
    pub fn route_client_via(&self, dest: &str, node: &str) -> Result<()> {
        let n = self.node(node);
        let v6 = dest.contains(':');
        let via = if v6 {
            n.client_v6.to_string()
        } else {
            n.client_v4.to_string()
        };
        let mut args = Vec::new();
        if v6 {
            args.push("-6");
        }
        args.extend(["route", "replace", dest, "via", &via]);
        self.client.cmd(&args).map(drop)
    }

    /// `ip route del DEST` in the client.
    pub fn remove_client_route(&self, dest: &str) -> Result<()> {
        let mut args = Vec::new();
        if dest.contains(':') {
            args.push("-6");
        }
        args.extend(["route", "del", dest]);
        self.client.cmd(&args).map(drop)
    }

    /// Waits (bounded, 5 s) until every interface of every namespace is up
    /// (lo aside) and no IPv6 address is tentative.
    fn wait_ready(&self) -> Result<()> {
        for ns in self.namespaces() {
            let what = format!("{}: every link up, no tentative address", ns.name());
            wait_until(
                &what,
                Duration::from_secs(5),
                Duration::from_millis(20),
                || {
                    let links: Value = serde_json::from_str(&ns.cmd(&["-j", "link", "show"])?)
                        .context("parsing ip -j link show")?;
                    let down: Vec<String> = links
                        .as_array()
                        .map(std::vec::Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .filter(|l| l["ifname"] != "lo" && l["operstate"] != "UP")
                        .map(|l| format!("{}={}", l["ifname"], l["operstate"]))
                        .collect();
                    let tentative: Value = serde_json::from_str(&ns.cmd(&[
                        "-6",
                        "-j",
                        "addr",
                        "show",
                        "tentative",
                    ])?)
                    .context("parsing ip -j addr show")?;
                    let tentative = tentative
                        .as_array()
                        .map(std::vec::Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .any(|l| l["addr_info"].as_array().is_some_and(|a| !a.is_empty()));
                    Ok(if down.is_empty() && !tentative {
                        Wait::Done(())
                    } else {
                        Wait::Pending(format!(
                            "links not up {down:?}, tentative addresses: {tentative}"
                        ))
                    })
                },
            )?;
        }
        Ok(())
    }

    /// `ft<pid>-<n>`: the common prefix of the namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The outside client's namespace.
    pub fn client(&self) -> &Netns {
        &self.client
    }

    /// The Node objects, with the node addresses as InternalIPs.
    pub fn node_objects(&self) -> Vec<Value> {
        self.nodes
            .iter()
            .map(|n| {
                n.ips()
                    .iter()
                    .fold(crate::manifests::Node::new(&n.name), |o, ip| {
                        o.address("InternalIP", &ip.to_string())
                    })
                    .to_value()
            })
            .collect()
    }

    pub fn nodes(&self) -> &[NsNode] {
        &self.nodes
    }

    /// "node1" or "node2". Panics on another name.
    pub fn node(&self, name: &str) -> &NsNode {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name:?} in this topology"))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// "pod1", "pod1b" or "pod2". Panics on another name.
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name:?} in this topology"))
    }

    /// The pods running on `node`.
    pub fn pods_on(&self, node: &str) -> impl Iterator<Item = &Pod> {
        self.pods.iter().filter(move |p| p.node == node)
    }

    /// Every namespace: client, nodes, pods.
    pub fn namespaces(&self) -> Vec<&Netns> {
        std::iter::once(&self.client)
            .chain(self.nodes.iter().map(|n| &n.ns))
            .chain(self.pods.iter().map(|p| &p.ns))
            .collect()
    }

    /// A TCP and a UDP server on `port` on both addresses of every pod,
    /// each answering with the pod's name and the peer it saw.
    pub fn start_servers(&self, port: u16) -> Result<ServerSet> {
        let mut set = ServerSet::default();
        for p in &self.pods {
            for ip in p.ips() {
                set.add_tcp(&p.ns, &p.name, SocketAddr::new(ip, port))?;
                set.add_udp(&p.ns, &p.name, SocketAddr::new(ip, port))?;
            }
        }
        Ok(set)
    }
}

// ---------------------------------------------------------------- Ferry per node

/// A shell script that runs the real `ferry` inside the node namespace
/// (`exec nsenter --net=/run/netns/NAME -- FERRY "$@"`): the harness'
/// [`Ferry`] runs it as its binary, so `standalone`, `services` and
/// `cleanup` all run in the node's namespace. `exec` twice keeps the pid
/// (and the parent-death signal) of the spawned child.
fn write_wrapper(dir: &Path, ns: &Netns) -> Result<PathBuf> {
    let real = ferry_binary()?;
    let real = fs::canonicalize(&real).with_context(|| format!("resolving {}", real.display()))?;
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let script = format!(
        "#!/bin/sh\nexec nsenter --net={} -- {} \"$@\"\n",
        quote(ns.path()),
        quote(&real)
    );
    let path = dir.join("ferry");
    fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Ferry running inside one node namespace, with its own child cgroup and
/// bpffs dir. Drop stops it and runs `ferry cleanup` (inside the
/// namespace) before the bpffs dir and the cgroup go.
#[derive(Debug)]
pub struct NodeFerry {
    // Dropped in declaration order: Ferry first (it needs the rest).
    pub ferry: Option<Ferry>,
    wrapper_dir: tempfile::TempDir,
    pub bpffs: BpffsDir,
    pub cgroup: Cgroup,
    pub node: String,
}

impl NodeFerry {
    /// The options [`NodeFerry::start`] uses: `ferry standalone --manifests
    /// DIR --cgroup CG --bpffs-dir DIR --node-name NODE --node-ip ...
    /// --host-netns /run/netns/NODE --external-interface ext0
    /// --external-interface nn0`, run in the node namespace.
    pub fn options(
        node: &NsNode,
        manifests: &Manifests,
        cgroup: &Cgroup,
        bpffs: &BpffsDir,
        wrapper: &Path,
    ) -> FerryOptions {
        let mut o = FerryOptions::new(manifests.dir(), cgroup.path(), bpffs.path())
            .node(&node.name, node.ips())
            .host_netns(node.ns.path())
            .binary(wrapper);
        for iface in node.external_interfaces() {
            o = o.arg("--external-interface").arg(iface);
        }
        o
    }

    /// Starts Ferry for `node` (not waited for; see [`Ferry::wait_for`]).
    /// `extra` is appended to the arguments.
    pub fn start(node: &NsNode, manifests: &Manifests, extra: &[&str]) -> Result<NodeFerry> {
        let cgroup = Cgroup::new_with(node.naming)?;
        let bpffs = BpffsDir::new_with(node.naming)?;
        let wrapper_dir = tempfile::Builder::new()
            .prefix(&format!("{}{}-", node.naming.temp_prefix(), node.name))
            .tempdir()
            .context("creating the wrapper dir")?;
        let wrapper = write_wrapper(wrapper_dir.path(), &node.ns)?;
        let mut opts =
            NodeFerry::options(node, manifests, &cgroup, &bpffs, &wrapper).naming(node.naming);
        for a in extra {
            opts = opts.arg(a);
        }
        let ferry = Ferry::start(opts)?;
        Ok(NodeFerry {
            ferry: Some(ferry),
            wrapper_dir,
            bpffs,
            cgroup,
            node: node.name.clone(),
        })
    }

    /// The running (or stopped) Ferry. Panics after `ferry.take()`.
    pub fn ferry(&mut self) -> &mut Ferry {
        self.ferry.as_mut().expect("ferry was taken")
    }

    /// The wrapper script's directory.
    pub fn wrapper_dir(&self) -> &Path {
        self.wrapper_dir.path()
    }
}

// ---------------------------------------------------------------- what is attached

/// `BPF_PROG_QUERY` for tcx ingress (`egress` false) or egress of
/// interface `ifname` in `ns`: the attached program ids (kernel ≥ 6.6).
pub fn tcx_prog_ids(ns: &Netns, ifname: &str, egress: bool) -> Result<Vec<u32>> {
    const BPF_PROG_QUERY: libc::c_long = 16;
    const BPF_TCX_INGRESS: u32 = 46;
    const BPF_TCX_EGRESS: u32 = 47;
    #[repr(C)]
    #[derive(Default)]
    struct QueryAttr {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        count: u32,
        _pad: u32,
        prog_attach_flags: u64,
        link_ids: u64,
        link_attach_flags: u64,
        revision: u64,
    }
    let ifname = ifname.to_string();
    ns.run(move || {
        let cname = std::ffi::CString::new(ifname.clone())?;
        // SAFETY: a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        ensure!(ifindex != 0, "no interface {ifname}");
        let mut ids = [0u32; 64];
        let mut attr = QueryAttr {
            target_ifindex: ifindex,
            attach_type: if egress {
                BPF_TCX_EGRESS
            } else {
                BPF_TCX_INGRESS
            },
            prog_ids: ids.as_mut_ptr() as u64,
            count: ids.len() as u32,
            ..QueryAttr::default()
        };
        // SAFETY: bpf(BPF_PROG_QUERY) with a correctly laid out, zeroed
        // attr whose prog_ids points at `ids` (count entries).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_QUERY,
                &mut attr as *mut QueryAttr,
                std::mem::size_of::<QueryAttr>() as libc::c_uint,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            bail!("BPF_PROG_QUERY tcx on {ifname}: {e}");
        }
        let n = (attr.count as usize).min(ids.len());
        Ok(ids[..n].to_vec())
    })
}

/// How an XDP program is attached to `ifname` in `ns` (`ip -j link`'s
/// `xdp.mode`: 1 native, 2 generic, 3 offloaded), None without one.
pub fn xdp_mode(ns: &Netns, ifname: &str) -> Result<Option<u64>> {
    let links: Value = serde_json::from_str(&ns.cmd(&["-j", "link", "show", "dev", ifname])?)
        .context("parsing ip -j link show")?;
    Ok(links[0]["xdp"]["mode"].as_u64())
}

/// The non-lo interface names of `ns`.
pub fn interfaces(ns: &Netns) -> Result<Vec<String>> {
    let links: Value = serde_json::from_str(&ns.cmd(&["-j", "link", "show"])?)
        .context("parsing ip -j link show")?;
    Ok(links
        .as_array()
        .map(std::vec::Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| *n != "lo")
        .map(str::to_string)
        .collect())
}

/// Every tcx attachment in `ns`: (interface, "ingress"/"egress", program
/// ids), only those with programs.
pub fn tcx_attachments(ns: &Netns) -> Result<Vec<(String, &'static str, Vec<u32>)>> {
    let mut out = Vec::new();
    for ifname in interfaces(ns)? {
        for (egress, dir) in [(false, "ingress"), (true, "egress")] {
            let ids = tcx_prog_ids(ns, &ifname, egress)?;
            if !ids.is_empty() {
                out.push((ifname.clone(), dir, ids));
            }
        }
    }
    Ok(out)
}

/// `bpftool -j net show` run inside `ns` (XDP, tc filters, flow
/// dissector; this bpftool may predate tcx, see [`tcx_attachments`]).
pub fn bpftool_net_show(ns: &Netns) -> Result<Value> {
    let out = command_stdout(ns.command("bpftool").args(["-j", "net", "show"]))?;
    serde_json::from_str(&out).with_context(|| format!("bpftool printed no JSON: {out:?}"))
}

/// The non-empty sections of a `bpftool -j net show` answer, e.g.
/// `[("tc", [...])]`.
pub fn bpftool_attached(v: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let objects: Vec<&Value> = match v {
        Value::Array(a) => a.iter().collect(),
        other => vec![other],
    };
    for o in objects {
        if let Some(map) = o.as_object() {
            for (k, val) in map {
                if val.as_array().is_some_and(|a| !a.is_empty()) {
                    out.push((k.clone(), val.clone()));
                }
            }
        }
    }
    out
}
