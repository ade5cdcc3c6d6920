//! Shared fixture of the kube-proxy behaviour tests (issue 3):
//! behaviours.rs, affinity.rs, udp_sockets.rs, node_ports.rs.
//!
//! [`Env::start`] builds the usual sandbox (node namespace bridged to local
//! and remote backends, servers on [`PORT`] replying with the backend's
//! name, a child cgroup the test process enters, a bpffs dir, a manifests
//! dir) and starts Ferry as node [`NODE`] with `--host-netns` = the node
//! namespace. Every resource is a guard: dropping the [`Env`] (also while
//! unwinding from a panic) stops Ferry first and removes the namespaces
//! last.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use anyhow::{Context, Result};
use serde_json::Value;
use tests::*;

/// This node's name (what `FerryOptions::for_topology` passes as
/// `--node-name`).
pub const NODE: &str = "node-1";
/// Another node, for endpoints of remote backends.
pub const OTHER_NODE: &str = "node-2";
/// The port the backends' TCP and UDP servers listen on.
pub const PORT: u16 = 8080;
/// The manifest file every test rewrites.
pub const MANIFEST: &str = "objects.yaml";

/// Everything one test holds. Fields drop in declaration order: Ferry
/// first (stopped and cleaned up), the namespaces last.
pub struct Env {
    pub ferry: Ferry,
    pub manifests: Manifests,
    pub bpffs: BpffsDir,
    pub cgroup: Cgroup,
    pub servers: ServerSet,
    pub topo: Topology,
}

impl Env {
    /// `local` backends b0.., `remote` backends r0.. (servers on [`PORT`]),
    /// `objects` written to [`MANIFEST`], Ferry started (not yet waited for).
    pub fn start(local: usize, remote: usize, objects: &[Value]) -> Result<Env> {
        let topo = Topology::builder()
            .backends(local)
            .remote_backends(remote)
            .build()?;
        let servers = topo.start_servers(PORT)?;
        let mut cgroup = Cgroup::new()?;
        cgroup.enter_self()?;
        let bpffs = BpffsDir::new()?;
        let manifests = Manifests::new()?;
        manifests.write_objects(MANIFEST, objects)?;
        let ferry = Ferry::start(FerryOptions::for_topology(
            &topo, &manifests, &cgroup, &bpffs,
        ))?;
        Ok(Env {
            ferry,
            manifests,
            bpffs,
            cgroup,
            servers,
            topo,
        })
    }

    /// Replaces the manifest with `objects` (atomically).
    pub fn apply(&self, objects: &[Value]) -> Result<()> {
        self.manifests.write_objects(MANIFEST, objects).map(drop)
    }

    /// The node namespace (where clients run).
    pub fn node(&self) -> &Netns {
        self.topo.node()
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.topo.backend(name)
    }

    /// An endpoint of backend `name` (IPv4) on node `node`.
    pub fn ep(&self, name: &str, node: &str) -> Endpoint {
        Endpoint::new(self.backend(name).v4.to_string()).node(node)
    }

    /// An endpoint of backend `name` (IPv6) on node `node`.
    pub fn ep6(&self, name: &str, node: &str) -> Endpoint {
        Endpoint::new(self.backend(name).v6.to_string()).node(node)
    }

    /// The backend's IPv4 `ip:PORT`, as `ferry services` lists it.
    pub fn addr4(&self, name: &str) -> String {
        self.backend(name).addr_v4(PORT).to_string()
    }

    pub fn addr6(&self, name: &str) -> String {
        self.backend(name).addr_v6(PORT).to_string()
    }

    /// Waits until frontend `fe` ("ip:port/PROTO") lists exactly the
    /// backends `addrs` (any state).
    pub fn wait_backends(&mut self, fe: &str, addrs: &[String]) -> Result<Value> {
        let want: BTreeSet<String> = addrs.iter().cloned().collect();
        self.ferry
            .wait_for(&format!("{fe} with backends {want:?}"), |v| {
                backend_addrs(v, fe).is_some_and(|got| got == want)
            })
    }

    /// Waits until frontend `fe` has no backend and refuses with
    /// `when_empty` ("reject" or "drop").
    pub fn wait_empty(&mut self, fe: &str, when_empty: &str) -> Result<Value> {
        self.ferry
            .wait_for(&format!("{fe} empty ({when_empty})"), |v| {
                frontend(v, fe).is_some_and(|f| {
                    f["backends"].as_array().is_some_and(Vec::is_empty)
                        && f["when_empty"] == when_empty
                })
            })
    }

    /// Waits until `ferry services` has no frontend `fe`.
    pub fn wait_no_frontend(&mut self, fe: &str) -> Result<Value> {
        self.ferry
            .wait_for(&format!("{fe} to be absent"), |v| frontend(v, fe).is_none())
    }

    /// `n` TCP requests (one connection each) from `ns` to `target`;
    /// answers counted per server. Any failure is an error.
    pub fn tcp_spread(
        &self,
        ns: &Netns,
        target: SocketAddr,
        n: usize,
    ) -> Result<BTreeMap<String, usize>> {
        tcp_spread(ns, target, n)
    }

    /// Like [`Env::tcp_spread`] from the node namespace; returns the set of
    /// servers that answered.
    pub fn servers_seen(&self, target: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
        Ok(tcp_spread(self.node(), target, n)?.into_keys().collect())
    }

    /// The errno of a TCP connect from the node namespace to `target`
    /// (None: it connected).
    pub fn connect_errno(&self, target: SocketAddr) -> Option<Option<i32>> {
        self.node().run(|| tcp_connect_err(target)).map(|e| e.errno)
    }
}

/// `n` TCP requests from `ns` to `target`, counted per answering server.
pub fn tcp_spread(ns: &Netns, target: SocketAddr, n: usize) -> Result<BTreeMap<String, usize>> {
    ns.run(|| {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let r = tcp_request(target)
                .with_context(|| format!("TCP request #{i} from {} to {target}", ns.name()))?;
            *seen.entry(r.server).or_default() += 1;
        }
        Ok(seen)
    })
}

/// A set of names, for comparisons.
pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `s` parsed as a socket address (panics on a typo in a test).
pub fn sa(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

/// The entry of `ferry services -o json` for frontend `fe`
/// ("10.96.0.10:80/TCP", "[fd00::1]:80/TCP").
pub fn frontend<'a>(services: &'a Value, fe: &str) -> Option<&'a Value> {
    services
        .as_array()?
        .iter()
        .find(|f| f["frontend"].as_str() == Some(fe))
}

/// The backend addresses of frontend `fe`, None if there is no such frontend.
pub fn backend_addrs(services: &Value, fe: &str) -> Option<BTreeSet<String>> {
    let f = frontend(services, fe)?;
    Some(
        f["backends"]
            .as_array()?
            .iter()
            .filter_map(|b| b["address"].as_str().map(str::to_string))
            .collect(),
    )
}

/// Every frontend string of `ferry services -o json` whose backend set
/// belongs to Service `namespace/name`.
pub fn frontends_of(services: &Value, namespace: &str, name: &str) -> Vec<String> {
    let prefix = format!("{namespace}/{name}");
    services
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            f["service"].as_str().is_some_and(|s| {
                s.strip_prefix(&prefix)
                    .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('/'))
            })
        })
        .filter_map(|f| f["frontend"].as_str().map(str::to_string))
        .collect()
}

/// An EndpointSlice of Service `default/<service>` with one unnamed TCP
/// port [`PORT`].
pub fn tcp_slice(service: &str, name: &str, family: AddressType, eps: &[Endpoint]) -> Value {
    eps.iter()
        .cloned()
        .fold(
            EndpointSlice::new("default", name, service, family).port("", PORT, "TCP"),
            EndpointSlice::endpoint,
        )
        .to_value()
}

/// A serving, terminating, not ready endpoint.
pub fn terminating(e: Endpoint) -> Endpoint {
    e.ready(false).serving(true).terminating(true)
}

/// An endpoint that is neither ready nor serving (never gets traffic).
pub fn not_serving(e: Endpoint) -> Endpoint {
    e.ready(false).serving(false).terminating(true)
}
