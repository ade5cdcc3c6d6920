//! The one fixture of the datapath end-to-end tests (socket_lb.rs,
//! lifecycle.rs, and the kube-proxy behaviour tests behaviours.rs,
//! affinity.rs, udp_sockets.rs, node_ports.rs): one environment guard
//! ([`Env`]), Service/EndpointSlice objects, request loops, and readers of
//! `ferry services -o json`, of the Ferry log and of `bpftool cgroup show`.
//!
//! [`Env::new`] builds the usual sandbox (node namespace bridged to local
//! and remote backends, servers replying with the backend's name, a child
//! cgroup the test process enters, a bpffs dir, a manifests dir);
//! [`Env::start`] then starts Ferry as node [`NODE`] with `--host-netns` =
//! the node namespace ([`Env::running`] does both, with objects in
//! [`MANIFEST`]). Every resource is a guard: dropping the [`Env`] (also
//! while unwinding from a panic) stops Ferry first and removes the
//! namespaces last.
//!
//! Every wait here is bounded in time and polls; nothing asserts durations.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use crate::*;

/// The node name Ferry runs as ([`FerryOptions::for_topology`]).
pub const NODE: &str = "node-1";
/// Another node, for endpoints of remote backends.
pub const OTHER_NODE: &str = "node-2";
/// The port the default servers listen on.
pub const PORT: u16 = 8080;
/// The manifest file [`Env::running`] and [`Env::apply`] write.
pub const MANIFEST: &str = "objects.yaml";
/// Pace of the waits in this module.
const POLL: Duration = Duration::from_millis(50);
/// Bound of the waits in this module.
pub const WAIT: Duration = Duration::from_secs(15);

/// The eleven cgroup programs Ferry attaches, by their short attach type
/// name; the program is `ferry_<type>`.
pub const ATTACH_TYPES: [&str; 11] = [
    "connect4",
    "connect6",
    "getpeername4",
    "getpeername6",
    "post_bind4",
    "post_bind6",
    "recvmsg4",
    "recvmsg6",
    "sendmsg4",
    "sendmsg6",
    "sock_release",
];

/// Everything one test holds. Fields drop in declaration order: Ferry
/// (stopped, then `ferry cleanup`) first, then the manifests, the bpffs dir,
/// the cgroup (the process moves back out), the servers, the namespaces.
pub struct Env {
    pub ferry: Option<Ferry>,
    pub manifests: Manifests,
    pub bpffs: BpffsDir,
    pub cgroup: Cgroup,
    pub servers: ServerSet,
    pub topo: Topology,
}

impl Env {
    /// `backends` local backends (b0, b1, ...) with TCP and UDP servers on
    /// each of `ports` (IPv4 and IPv6, replying with the backend's name),
    /// this whole process in a fresh cgroup, an empty bpffs dir and an empty
    /// manifests dir. Ferry is not started yet: write manifests, then
    /// [`Env::start`].
    pub fn new(backends: usize, ports: &[u16]) -> Result<Env> {
        Env::with_remote(backends, 0, ports)
    }

    /// Like [`Env::new`], with `remote` backends r0.. too (behind another
    /// node, see [`Backend::gateway_v4`]).
    pub fn with_remote(local: usize, remote: usize, ports: &[u16]) -> Result<Env> {
        let topo = Topology::builder()
            .backends(local)
            .remote_backends(remote)
            .build()?;
        let mut servers = ServerSet::default();
        for &port in ports {
            let mut set = topo.start_servers(port)?;
            servers.tcp.append(&mut set.tcp);
            servers.udp.append(&mut set.udp);
        }
        let mut cgroup = Cgroup::new()?;
        cgroup.enter_self()?;
        let bpffs = BpffsDir::new()?;
        let manifests = Manifests::new()?;
        Ok(Env {
            ferry: None,
            manifests,
            bpffs,
            cgroup,
            servers,
            topo,
        })
    }

    /// Starts Ferry on this environment (node-1 = 10.244.0.1 / fd00:244::1,
    /// the node namespace as host netns) and waits until every frontend in
    /// `frontends` ("10.96.0.10:80/TCP", as `ferry services` writes them)
    /// is installed.
    pub fn start(&mut self, frontends: &[&str]) -> Result<&mut Ferry> {
        ensure!(self.ferry.is_none(), "Ferry already started");
        let opts =
            FerryOptions::for_topology(&self.topo, &self.manifests, &self.cgroup, &self.bpffs);
        let ferry = self.ferry.insert(Ferry::start(opts)?);
        for fe in frontends {
            wait_frontend(ferry, fe)?;
        }
        Ok(ferry)
    }

    /// `local` backends b0.., `remote` backends r0.. (servers on [`PORT`]),
    /// `objects` written to [`MANIFEST`], Ferry started (not yet waited for).
    pub fn running(local: usize, remote: usize, objects: &[Value]) -> Result<Env> {
        let mut env = Env::with_remote(local, remote, &[PORT])?;
        env.apply(objects)?;
        env.start(&[])?;
        Ok(env)
    }

    pub fn ferry(&mut self) -> &mut Ferry {
        self.ferry.as_mut().expect("Ferry was started")
    }

    /// Replaces [`MANIFEST`] with `objects` (atomically).
    pub fn apply(&self, objects: &[Value]) -> Result<()> {
        self.write(MANIFEST, objects)
    }

    /// The node namespace: clients run here.
    pub fn node(&self) -> &Netns {
        self.topo.node()
    }

    pub fn backend(&self, name: &str) -> &Backend {
        self.topo.backend(name)
    }

    /// The first `n` backends (b0..b<n-1>).
    pub fn first(&self, n: usize) -> Vec<&Backend> {
        self.topo.backends().iter().take(n).collect()
    }

    pub fn write(&self, file: &str, objects: &[Value]) -> Result<()> {
        self.manifests.write_objects(file, objects).map(drop)
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
    /// backends `addrs` (any state); returns all of `ferry services`.
    pub fn wait_backends(&mut self, fe: &str, addrs: &[String]) -> Result<Value> {
        let mut want = addrs.to_vec();
        want.sort();
        self.ferry()
            .wait_for(&format!("{fe} with backends {want:?}"), |v| {
                frontend(v, fe).is_some_and(|f| backend_addrs(f) == want)
            })
    }

    /// Waits until frontend `fe` has no backend and refuses with
    /// `when_empty` ("reject" or "drop").
    pub fn wait_empty(&mut self, fe: &str, when_empty: &str) -> Result<Value> {
        self.ferry()
            .wait_for(&format!("{fe} empty ({when_empty})"), |v| {
                frontend(v, fe).is_some_and(|f| {
                    f["backends"].as_array().is_some_and(Vec::is_empty)
                        && f["when_empty"] == when_empty
                })
            })
    }

    /// Waits until `ferry services` has no frontend `fe`.
    pub fn wait_no_frontend(&mut self, fe: &str) -> Result<Value> {
        self.ferry()
            .wait_for(&format!("{fe} to be absent"), |v| frontend(v, fe).is_none())
    }

    /// `n` TCP requests (one connection each) from the node namespace to
    /// `target`; the set of servers that answered. Any failure is an error.
    pub fn servers_seen(&self, target: SocketAddr, n: usize) -> Result<BTreeSet<String>> {
        Ok(tcp_spread(self.node(), target, n)?.into_keys().collect())
    }

    /// The errno of a TCP connect from the node namespace to `target`
    /// (None: it connected).
    pub fn connect_errno(&self, target: SocketAddr) -> Option<Option<i32>> {
        self.node().run(|| tcp_connect_err(target)).map(|e| e.errno)
    }
}

// ---------------------------------------------------------------- objects

/// One port of a Service and the matching EndpointSlice port (named after
/// the service port, numbered with the endpoints' port, as the EndpointSlice
/// controller writes them).
#[derive(Clone, Copy, Debug)]
pub struct Port {
    pub name: &'static str,
    pub protocol: &'static str,
    pub port: u16,
    pub target: u16,
}

pub fn tcp(name: &'static str, port: u16, target: u16) -> Port {
    Port {
        name,
        protocol: "TCP",
        port,
        target,
    }
}

pub fn udp(name: &'static str, port: u16, target: u16) -> Port {
    Port {
        name,
        protocol: "UDP",
        port,
        target,
    }
}

impl Port {
    pub fn service_port(&self) -> ServicePort {
        let p = ServicePort::new(self.protocol, self.port).target(self.target);
        if self.name.is_empty() {
            p
        } else {
            p.name(self.name)
        }
    }
}

fn is_v6(ip: &str) -> bool {
    ip.contains(':')
}

/// A ClusterIP Service `default/<name>` on `cluster_ip` with `ports`
/// (single-stack; IPv6 when the address is).
pub fn service(name: &str, cluster_ip: &str, ports: &[Port]) -> Service {
    let mut svc = Service::new("default", name).cluster_ip(cluster_ip);
    if is_v6(cluster_ip) {
        svc = svc.ip_families(&["IPv6"]).ip_family_policy("SingleStack");
    }
    for p in ports {
        svc = svc.port(p.service_port());
    }
    svc
}

/// An EndpointSlice `default/<slice>` of Service `service`, with the
/// slice ports of `ports` and these endpoints.
pub fn slice(
    service: &str,
    slice: &str,
    address_type: AddressType,
    ports: &[Port],
    endpoints: impl IntoIterator<Item = Endpoint>,
) -> Value {
    let mut s = EndpointSlice::new("default", slice, service, address_type);
    for p in ports {
        s = s.port(p.name, p.target, p.protocol);
    }
    for e in endpoints {
        s = s.endpoint(e);
    }
    s.to_value()
}

/// An EndpointSlice of Service `default/<service>` with one unnamed TCP
/// port [`PORT`].
pub fn tcp_slice(service: &str, name: &str, family: AddressType, eps: &[Endpoint]) -> Value {
    slice(
        service,
        name,
        family,
        &[tcp("", PORT, PORT)],
        eps.iter().cloned(),
    )
}

/// A serving, terminating, not ready endpoint.
pub fn terminating(e: Endpoint) -> Endpoint {
    e.ready(false).serving(true).terminating(true)
}

/// An endpoint that is neither ready nor serving (never gets traffic).
pub fn not_serving(e: Endpoint) -> Endpoint {
    e.ready(false).serving(false).terminating(true)
}

/// A ready endpoint on this node.
pub fn local(ip: impl ToString) -> Endpoint {
    Endpoint::new(ip.to_string()).node(NODE)
}

/// The backend's address of the family of `cluster_ip`.
pub fn addr_of(b: &Backend, cluster_ip: &str) -> IpAddr {
    if is_v6(cluster_ip) {
        b.v6.into()
    } else {
        b.v4.into()
    }
}

/// A Service (see [`service`]) and its slice `<name>-1` with `backends` as
/// ready local endpoints, addresses of the Service's family.
pub fn service_with(
    name: &str,
    cluster_ip: &str,
    ports: &[Port],
    backends: &[&Backend],
) -> Vec<Value> {
    let address_type = if is_v6(cluster_ip) {
        AddressType::IPv6
    } else {
        AddressType::IPv4
    };
    vec![
        service(name, cluster_ip, ports).to_value(),
        slice(
            name,
            &format!("{name}-1"),
            address_type,
            ports,
            backends.iter().map(|b| local(addr_of(b, cluster_ip))),
        ),
    ]
}

// ---------------------------------------------------------------- traffic

/// Runs `n` requests one after the other inside `ns`; every one must
/// succeed. Returns the replies.
pub fn requests(
    ns: &Netns,
    n: usize,
    what: &str,
    request: impl Fn() -> io::Result<Reply> + Send + Sync,
) -> Result<Vec<Reply>> {
    ns.run(|| {
        (0..n)
            .map(|i| request().with_context(|| format!("{what}: request #{i}")))
            .collect()
    })
}

/// `n` TCP requests from `ns` to `target`, counted per answering server.
pub fn tcp_spread(ns: &Netns, target: SocketAddr, n: usize) -> Result<BTreeMap<String, usize>> {
    let replies = requests(
        ns,
        n,
        &format!("TCP from {} to {target}", ns.name()),
        || tcp_request(target),
    )?;
    Ok(per_server(&replies))
}

/// Replies per answering server.
pub fn per_server(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in replies {
        *m.entry(r.server.clone()).or_default() += 1;
    }
    m
}

/// The names of the servers that answered.
pub fn servers_of(replies: &[Reply]) -> BTreeSet<String> {
    replies.iter().map(|r| r.server.clone()).collect()
}

/// A set of names, for comparisons.
pub fn names(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(std::string::ToString::to_string).collect()
}

/// The names of `backends`.
pub fn names_of(backends: &[&Backend]) -> BTreeSet<String> {
    backends.iter().map(|b| b.name.clone()).collect()
}

/// The errno of a failed request.
pub fn errno_of(r: io::Result<Reply>) -> Option<i32> {
    match r {
        Ok(reply) => panic!("expected a failure, got a reply from {reply:?}"),
        Err(e) => e.raw_os_error(),
    }
}

// ---------------------------------------------------------------- ferry services

/// `s` parsed as a socket address (panics on a typo in a test).
pub fn sa(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad address {s:?}: {e}"))
}

/// The entry of `ferry services -o json` for `frontend` ("ip:port/PROTO").
pub fn frontend<'a>(services: &'a Value, frontend: &str) -> Option<&'a Value> {
    services
        .as_array()?
        .iter()
        .find(|v| v["frontend"].as_str() == Some(frontend))
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

/// The backend addresses of an entry, sorted.
pub fn backend_addrs(view: &Value) -> Vec<String> {
    let mut v: Vec<String> = view["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["address"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `addr:port` strings of these backends' addresses of the family of
/// `cluster_ip`, sorted (as [`backend_addrs`] gives them).
pub fn expected_addrs(backends: &[&Backend], cluster_ip: &str, port: u16) -> Vec<String> {
    let mut v: Vec<String> = backends
        .iter()
        .map(|b| SocketAddr::new(addr_of(b, cluster_ip), port).to_string())
        .collect();
    v.sort();
    v
}

/// The current entry of `fe` (fails if it is not installed).
pub fn view_of(ferry: &Ferry, fe: &str) -> Result<Value> {
    let all = ferry.services_json()?;
    frontend(&all, fe)
        .cloned()
        .with_context(|| format!("no frontend {fe} in {all}"))
}

/// Waits until `fe` is installed; returns its entry.
pub fn wait_frontend(ferry: &mut Ferry, fe: &str) -> Result<Value> {
    let all = ferry.wait_for(&format!("frontend {fe}"), |v| frontend(v, fe).is_some())?;
    Ok(frontend(&all, fe).cloned().expect("just seen"))
}

/// Waits until `fe`'s backends are exactly `expected` (sorted `ip:port`).
pub fn wait_backends(ferry: &mut Ferry, fe: &str, expected: &[String]) -> Result<Value> {
    let all = ferry.wait_for(&format!("{fe} -> {expected:?}"), |v| {
        frontend(v, fe).is_some_and(|f| backend_addrs(f) == expected)
    })?;
    Ok(frontend(&all, fe).cloned().expect("just seen"))
}

/// Polls the Ferry log (bounded by [`WAIT`]) until `pred` holds for it.
pub fn wait_log(ferry: &Ferry, what: &str, pred: impl Fn(&str) -> bool) -> Result<String> {
    wait_until(&format!("{what} in the ferry log"), WAIT, POLL, || {
        let log = ferry.log();
        Ok(if pred(&log) {
            Wait::Done(log)
        } else {
            Wait::Pending(format!("the log:\n{log}"))
        })
    })
}

// ---------------------------------------------------------------- bpffs and bpftool

/// The pinned links of a Ferry bpffs dir: (program, generation) per
/// `links/<program>@<generation>` file, sorted.
pub fn pinned_links(bpffs: &Path) -> Result<Vec<(String, String)>> {
    let dir = bpffs.join("links");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let (prog, generation) = name
            .split_once('@')
            .with_context(|| format!("unexpected pin {name}"))?;
        out.push((prog.to_string(), generation.to_string()));
    }
    out.sort();
    Ok(out)
}

/// Asserts the links dir holds exactly one generation of all the cgroup
/// programs, of the north-south (tc) programs one link per interface of
/// one generation, and of XDP at most one link per interface, each on an
/// interface with tc's `ferry_external`; returns the cgroup programs'
/// generation.
pub fn one_generation(bpffs: &Path) -> Result<String> {
    let all = pinned_links(bpffs)?;
    // XDP links are `ferry_external_xdp@if<ifindex>@<mode>`.
    let (xdp, all): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(p, _)| p == lb_common::programs::EXTERNAL_XDP);
    let xdp_ifs: Vec<&str> = xdp
        .iter()
        .filter_map(|(_, g)| g.split_once('@').map(|(i, _)| i))
        .collect();
    ensure!(
        xdp_ifs.iter().collect::<BTreeSet<_>>().len() == xdp.len(),
        "an interface has several XDP links: {xdp:?}"
    );
    for i in &xdp_ifs {
        ensure!(
            all.iter().any(|(p, g)| p == lb_common::programs::EXTERNAL
                && g.starts_with(&format!("{i}@"))),
            "XDP on {i} without tc's {} behind it: {all:?}",
            lb_common::programs::EXTERNAL
        );
    }
    // tc links are `<program>@if<ifindex>@<generation>`.
    let (tc, links): (Vec<_>, Vec<_>) = all.into_iter().partition(|(_, g)| g.starts_with("if"));
    let interfaces: Vec<&str> = tc
        .iter()
        .filter_map(|(_, g)| g.split_once('@').map(|(i, _)| i))
        .collect();
    let unique: BTreeSet<&str> = interfaces.iter().copied().collect();
    ensure!(
        unique.len() == interfaces.len(),
        "an interface has several tc links: {tc:?}"
    );
    let tc_gens: BTreeSet<&str> = tc
        .iter()
        .filter_map(|(_, g)| g.split_once('@').map(|(_, gen_)| gen_))
        .collect();
    ensure!(tc_gens.len() <= 1, "several tc link generations: {tc:?}");
    let progs: Vec<String> = links.iter().map(|(p, _)| p.clone()).collect();
    let expected: Vec<String> = ATTACH_TYPES.iter().map(|t| format!("ferry_{t}")).collect();
    ensure!(
        progs == expected,
        "pinned links are not one per program: {links:?}"
    );
    let gens: BTreeSet<&String> = links.iter().map(|(_, g)| g).collect();
    ensure!(gens.len() == 1, "several link generations: {links:?}");
    Ok(gens.into_iter().next().expect("one").clone())
}

/// bpftool's attach type names: "connect4" (older) or
/// "cgroup_inet4_connect" (newer); returns the short one.
pub fn short_attach_type(t: &str) -> String {
    let long = [
        ("cgroup_inet4_connect", "connect4"),
        ("cgroup_inet6_connect", "connect6"),
        ("cgroup_udp4_sendmsg", "sendmsg4"),
        ("cgroup_udp6_sendmsg", "sendmsg6"),
        ("cgroup_udp4_recvmsg", "recvmsg4"),
        ("cgroup_udp6_recvmsg", "recvmsg6"),
        ("cgroup_inet4_getpeername", "getpeername4"),
        ("cgroup_inet6_getpeername", "getpeername6"),
        ("cgroup_inet4_post_bind", "post_bind4"),
        ("cgroup_inet6_post_bind", "post_bind6"),
        ("cgroup_inet_sock_release", "sock_release"),
    ];
    long.iter()
        .find(|(l, _)| *l == t)
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| t.to_string())
}

/// (short attach type, program name) of every program attached to
/// `cgroup` itself (`bpftool -j cgroup show`), sorted.
pub fn attached(cgroup: &Path) -> Result<Vec<(String, String)>> {
    let out = command_stdout(
        Command::new("bpftool")
            .arg("-j")
            .arg("cgroup")
            .arg("show")
            .arg(cgroup),
    )?;
    let trimmed = out.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(trimmed)
        .with_context(|| format!("bpftool printed no JSON: {trimmed:?}"))?;
    let mut progs: Vec<(String, String)> = v
        .as_array()
        .context("bpftool: not an array")?
        .iter()
        .map(|p| {
            (
                short_attach_type(p["attach_type"].as_str().unwrap_or("?")),
                p["name"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect();
    progs.sort();
    Ok(progs)
}

/// Exactly Ferry's cgroup programs, one per attach type.
pub fn ferry_programs() -> Vec<(String, String)> {
    ATTACH_TYPES
        .iter()
        .map(|t| (t.to_string(), format!("ferry_{t}")))
        .collect()
}

/// Polls `bpftool cgroup show` (bounded by [`WAIT`]; detaching an unpinned
/// link is deferred in the kernel) until it lists exactly `expected`.
pub fn wait_attached(cgroup: &Path, expected: &[(String, String)]) -> Result<()> {
    let what = format!(
        "bpftool cgroup show {} to list {expected:?}",
        cgroup.display()
    );
    wait_until(&what, WAIT, POLL, || {
        let now = attached(cgroup)?;
        Ok(if now == expected {
            Wait::Done(())
        } else {
            Wait::Pending(format!("{now:?}"))
        })
    })
}
