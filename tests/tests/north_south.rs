//! North-south traffic end to end: NodePorts, load balancer IPs and source
//! ranges reached from a client *outside* the nodes, translated by Ferry's
//! tc programs as kube-proxy's rules would (externalTrafficPolicy Cluster:
//! DNAT to a Maglev-chosen backend and SNAT to the node; Local: local
//! endpoints only, the client's address kept, dropped without one).
//!
//! The topology ([`tests::ns_topology::NsTopology`]): a client namespace
//! linked to two node namespaces, the nodes linked to each other, pods
//! behind the nodes (pod1 and pod1b on node1, pod2 on node2) wired like a
//! routed CNI. Ferry runs inside each node namespace
//! ([`tests::ns_topology::NodeFerry`]) as
//!
//! ```text
//! ferry standalone --manifests DIR --cgroup CG --bpffs-dir DIR --node-name nodeN
//!   --node-ip 10.71.N.1 --node-ip 10.71.12.N --node-ip fd71:N::1 --node-ip fd71:12::N
//!   --host-netns /run/netns/<nodeN> --external-interface ext0 --external-interface nn0
//! ```
//!
//! with its own (empty) child cgroup: the test process stays outside every
//! Ferry cgroup, so no socket-level translation is involved: what works
//! works through the tc datapath. Both nodes read the same manifests dir.
//!
//! Privileged: run as root, one test at a time:
//! `cargo test --release -p tests --test north_south -- --test-threads=1`.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::collections::BTreeSet;
use std::io::{self, ErrorKind, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use socket2::{Domain, Protocol, Socket, Type};
use tests::client::{parse_reply, read_line};
use tests::ns_topology::*;
use tests::*;

/// The pods' servers (TCP and UDP, both families).
const PORT: u16 = 8080;
/// The one manifest file every test rewrites (Nodes first).
const MANIFEST: &str = "objects.yaml";
/// Bound of each request's connect / reply wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Connect bound where a drop is expected.
const DROP_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound of the waits for Ferry (both start at once, each loads its
/// programs) and for a frontend to answer for the first time.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
}

const PROTOS: [Proto; 2] = [Proto::Tcp, Proto::Udp];

// ------------------------------------------------------------- clients

/// A TCP socket bound to `bind` (SO_REUSEADDR; closed with RST, so no
/// TIME_WAIT keeps the 4-tuple from being used again at once), connected
/// to `target` within `timeout`.
fn tcp_connect_from(
    bind: SocketAddr,
    target: SocketAddr,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let s = Socket::new(
        Domain::for_address(target),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.set_linger(Some(Duration::ZERO))?;
    s.bind(&bind.into())?;
    s.connect_timeout(&target.into(), timeout)?;
    let stream: TcpStream = s.into();
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One TCP request from `bind` to `target`: the server's reply.
fn tcp_from(bind: SocketAddr, target: SocketAddr) -> io::Result<Reply> {
    let mut stream = tcp_connect_from(bind, target, REQUEST_TIMEOUT)?;
    stream.write_all(b"who\n")?;
    let (server, seen_peer) = parse_reply(&read_line(&mut stream, REQUEST_TIMEOUT)?)?;
    Ok(Reply {
        server,
        seen_peer,
        local: stream.local_addr()?,
        peer: Some(stream.peer_addr()?),
        from: None,
    })
}

/// One request of `proto` from `bind` (port 0: any) to `target`, in the
/// calling thread's namespace.
fn request(proto: Proto, bind: SocketAddr, target: SocketAddr) -> io::Result<Reply> {
    match proto {
        Proto::Tcp => tcp_from(bind, target),
        Proto::Udp => udp_unconnected_request_from(Some(bind), target),
    }
}

/// Whether the reply came back from `target` itself (reverse translation):
/// TCP's peer, UDP's recvfrom source.
fn from_target(proto: Proto, r: &Reply, target: SocketAddr) -> bool {
    match proto {
        Proto::Tcp => r.peer == Some(target),
        Proto::Udp => r.from == Some(target),
    }
}

/// `n` requests from `ns`, the i-th from `src:(first_port + i)`, all to
/// `target`. Every one must be answered, from `target`.
fn requests_from_ports(
    ns: &Netns,
    proto: Proto,
    src: IpAddr,
    first_port: u16,
    n: u16,
    target: SocketAddr,
) -> Result<Vec<Reply>> {
    ns.run(|| {
        let mut out = Vec::new();
        for i in 0..n {
            let bind = SocketAddr::new(src, first_port + i);
            let r = request(proto, bind, target).with_context(|| {
                format!("{} request #{i} from {bind} to {target}", proto.name())
            })?;
            ensure!(
                from_target(proto, &r, target),
                "{} reply from {bind} to {target} did not come back from {target}: {r:?}",
                proto.name()
            );
            out.push(r);
        }
        Ok(out)
    })
}

/// Retries one request from `src` (any port) every 100 ms, bounded by
/// [`READY_TIMEOUT`], until `target` answers: Ferry has installed it.
fn wait_answered(ns: &Netns, proto: Proto, src: IpAddr, target: SocketAddr) -> Result<Reply> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let r = ns.run(|| request(proto, SocketAddr::new(src, 0), target));
        match r {
            Ok(r) if from_target(proto, &r, target) => return Ok(r),
            other => {
                if Instant::now() >= deadline {
                    bail!(
                        "{} {target} (from {src}) never answered within {READY_TIMEOUT:?} \
                         ({attempts} attempts); last: {other:?}",
                        proto.name()
                    );
                }
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// How a probe that should be dropped ended: Ok(()) when it got no answer
/// within its bound (TCP connect timeout, UDP no reply), else what
/// happened instead.
fn dropped(ns: &Netns, proto: Proto, src: IpAddr, target: SocketAddr) -> Result<(), String> {
    ns.run(|| {
        let bind = SocketAddr::new(src, 0);
        match proto {
            Proto::Tcp => match tcp_connect_from(bind, target, DROP_TIMEOUT) {
                Ok(s) => Err(format!("connected ({:?})", s.peer_addr())),
                Err(e) if ConnectError::from_io(&e).is_timeout() => Ok(()),
                Err(e) => Err(format!(
                    "failed, but not by a timeout: {}",
                    ConnectError::from_io(&e)
                )),
            },
            Proto::Udp => match udp_unconnected_request_from(Some(bind), target) {
                Ok(r) => Err(format!("answered: {r:?}")),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(()),
                Err(e) => Err(format!("failed, but not by a timeout: {e}")),
            },
        }
    })
}

/// Asserts that `tries` probes are all dropped.
fn assert_dropped(
    ns: &Netns,
    proto: Proto,
    src: IpAddr,
    target: SocketAddr,
    tries: u32,
    what: &str,
) {
    for i in 0..tries {
        if let Err(e) = dropped(ns, proto, src, target) {
            panic!(
                "{what}: {} probe #{i} from {src} to {target} must be dropped, but it {e}",
                proto.name()
            );
        }
    }
}

/// Polls (bounded by [`READY_TIMEOUT`]) until a probe is dropped: Ferry
/// has applied a change that makes it so.
fn wait_dropped(ns: &Netns, proto: Proto, src: IpAddr, target: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let last = match dropped(ns, proto, src, target) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            bail!(
                "{} {target} from {src} was never dropped within {READY_TIMEOUT:?}; last: it {last}",
                proto.name()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn servers_of(replies: &[Reply]) -> BTreeSet<String> {
    replies.iter().map(|r| r.server.clone()).collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(std::string::ToString::to_string).collect()
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

// ------------------------------------------------------------- manifests

/// A dual-stack NodePort Service (ClusterIPs 10.96.0.<n>, fd96::<n>):
/// TCP and UDP port 80 → [`PORT`] on node port `node_port`,
/// externalTrafficPolicy `etp`.
fn service(name: &str, n: u8, node_port: u16, etp: &str) -> Service {
    dual_stack_node_port(name, n, etp)
        .port(
            ServicePort::tcp(80)
                .name("tcp")
                .target(PORT)
                .node_port(node_port),
        )
        .port(
            ServicePort::udp(80)
                .name("udp")
                .target(PORT)
                .node_port(node_port),
        )
}

/// A dual-stack NodePort Service (ClusterIPs 10.96.0.<n>, fd96::<n>)
/// without ports yet.
fn dual_stack_node_port(name: &str, n: u8, etp: &str) -> Service {
    Service::new("default", name)
        .type_("NodePort")
        .ip_families(&["IPv4", "IPv6"])
        .ip_family_policy("RequireDualStack")
        .cluster_ips(&[&format!("10.96.0.{n}"), &format!("fd96::{n}")])
        .external_traffic_policy(etp)
}

/// [`service`] as type LoadBalancer with these ingress IPs.
fn lb_service(name: &str, n: u8, node_port: u16, etp: &str, ingress: &[&str]) -> Service {
    service(name, n, node_port, etp)
        .type_("LoadBalancer")
        .load_balancer_ingress(ingress)
}

/// The IPv4 and IPv6 EndpointSlices of `svc` with `pods` (nodeName: the
/// pod's node), ports tcp/udp [`PORT`].
fn slices(topo: &NsTopology, svc: &str, pods: &[&str]) -> Vec<Value> {
    slices_with(
        topo,
        svc,
        pods,
        &[("tcp", PORT, "TCP"), ("udp", PORT, "UDP")],
    )
}

/// [`slices`] with these ports (name, port, protocol).
fn slices_with(
    topo: &NsTopology,
    svc: &str,
    pods: &[&str],
    ports: &[(&str, u16, &str)],
) -> Vec<Value> {
    [(AddressType::IPv4, "v4"), (AddressType::IPv6, "v6")]
        .into_iter()
        .map(|(at, suffix)| {
            let mut s = EndpointSlice::new("default", &format!("{svc}-{suffix}"), svc, at);
            for &(name, port, proto) in ports {
                s = s.port(name, port, proto);
            }
            for name in pods {
                let p = topo.pod(name);
                let ip = match at {
                    AddressType::IPv4 => p.v4.to_string(),
                    _ => p.v6.to_string(),
                };
                s = s.endpoint(Endpoint::new(ip).node(&p.node));
            }
            s.to_value()
        })
        .collect()
}

/// The Service and its slices.
fn objects(topo: &NsTopology, svc: Service, pods: &[&str]) -> Vec<Value> {
    let name = svc.to_value()["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_string();
    let mut v = vec![svc.to_value()];
    v.extend(slices(topo, &name, pods));
    v
}

/// The entry of `ferry services -o json` for frontend `fe` ("ip:port/PROTO").
fn frontend<'a>(services: &'a Value, fe: &str) -> Option<&'a Value> {
    services
        .as_array()?
        .iter()
        .find(|f| f["frontend"].as_str() == Some(fe))
}

/// `ip:port/PROTO` as `ferry services` writes it.
fn fe_name(addr: SocketAddr, proto: Proto) -> String {
    format!("{addr}/{}", proto.name())
}

// ------------------------------------------------------------- the fixture

/// Everything one test holds. Fields drop in declaration order: both
/// Ferries first (stopped, `ferry cleanup` in their namespaces), then the
/// manifests, the servers, the namespaces last.
struct Cluster {
    ferries: Vec<NodeFerry>,
    manifests: Manifests,
    _servers: ServerSet,
    topo: NsTopology,
}

impl Cluster {
    /// The topology, the pods' servers, an empty manifests dir; no Ferry yet.
    fn new() -> Result<Cluster> {
        let topo = NsTopology::new()?;
        let servers = topo.start_servers(PORT)?;
        let manifests = Manifests::new()?;
        Ok(Cluster {
            ferries: Vec::new(),
            manifests,
            _servers: servers,
            topo,
        })
    }

    /// Replaces the manifest with the Nodes and `objects` (atomically;
    /// both Ferries read it).
    fn apply(&self, objects: &[Value]) -> Result<()> {
        let mut all = self.topo.node_objects();
        all.extend_from_slice(objects);
        self.manifests.write_objects(MANIFEST, &all).map(drop)
    }

    /// Starts Ferry in node1 and node2 (not waited for), with the default
    /// `--xdp-mode auto` (native on veth).
    fn start_ferries(&mut self) -> Result<()> {
        self.start_ferries_with(&[])
    }

    /// [`Cluster::start_ferries`] with these extra flags.
    fn start_ferries_with(&mut self, extra: &[&str]) -> Result<()> {
        for node in ["node1", "node2"] {
            let f = NodeFerry::start(self.topo.node(node), &self.manifests, extra)?;
            self.ferries.push(f);
        }
        Ok(())
    }

    fn node_ferry(&mut self, node: &str) -> &mut NodeFerry {
        self.ferries
            .iter_mut()
            .find(|f| f.node == node)
            .unwrap_or_else(|| panic!("no ferry for {node}"))
    }

    fn ferry(&mut self, node: &str) -> &mut Ferry {
        self.node_ferry(node).ferry()
    }

    fn client(&self) -> &Netns {
        self.topo.client()
    }

    fn node(&self, name: &str) -> &NsNode {
        self.topo.node(name)
    }

    /// Waits until Ferry of `node` lists frontend `fe` ("ip:port/PROTO")
    /// and `pred` holds for its entry.
    fn wait_frontend_on(
        &mut self,
        node: &str,
        fe: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        self.ferry(node)
            .wait_for_timeout(&format!("{fe} on {node}"), READY_TIMEOUT, |v| {
                frontend(v, fe).is_some_and(&pred)
            })
    }

    /// Waits until every node's Ferry lists the NodePort `node_port`
    /// frontends of `protos` on its client-facing addresses (both families).
    fn wait_node_port(&mut self, node_port: u16, protos: &[Proto]) -> Result<()> {
        for node in ["node1", "node2"] {
            for ip in self.node(node).client_addrs() {
                for &proto in protos {
                    let fe = fe_name(sa(ip, node_port), proto);
                    self.wait_frontend_on(node, &fe, |_| true)?;
                }
            }
        }
        Ok(())
    }

    /// Waits until every node's Ferry lists `addr` for `protos`.
    fn wait_frontend_everywhere(&mut self, addr: SocketAddr, protos: &[Proto]) -> Result<()> {
        for node in ["node1", "node2"] {
            for &proto in protos {
                self.wait_frontend_on(node, &fe_name(addr, proto), |_| true)?;
            }
        }
        Ok(())
    }

    /// Waits until the NodePort frontend (TCP, IPv4) of every node lists
    /// exactly the backends of `pods`.
    fn wait_node_port_backends(&mut self, node_port: u16, pods: &[&str]) -> Result<()> {
        let want: BTreeSet<String> = pods
            .iter()
            .map(|p| sa(self.topo.pod(p).v4.into(), PORT).to_string())
            .collect();
        for node in ["node1", "node2"] {
            let fe = fe_name(sa(self.node(node).client_v4.into(), node_port), Proto::Tcp);
            self.wait_frontend_on(node, &fe, |f| {
                f["backends"].as_array().is_some_and(|b| {
                    b.iter()
                        .filter_map(|b| b["address"].as_str().map(str::to_string))
                        .collect::<BTreeSet<_>>()
                        == want
                })
            })?;
        }
        Ok(())
    }
}

/// (interface, XDP program id) of `node`'s external interfaces.
fn xdp_prog_ids(c: &Cluster, node: &str) -> Result<Vec<(String, Option<u64>)>> {
    let n = c.node(node);
    n.external_interfaces()
        .iter()
        .map(|ifname| {
            let v: Value =
                serde_json::from_str(&n.ns.cmd(&["-j", "link", "show", "dev", ifname])?)?;
            Ok((ifname.to_string(), v[0]["xdp"]["prog"]["id"].as_u64()))
        })
        .collect()
}

// ------------------------------------------------------------- continuous load

fn load(mode: ContinuousMode) -> ContinuousOptions {
    ContinuousOptions {
        mode,
        max_count: 20_000,
        max_duration: Duration::from_secs(120),
        interval: Duration::from_millis(3),
        keep_errors: 10,
    }
}

/// Waits (bounded, 30 s) for `n` more successes of `client`.
fn run_for(client: &ContinuousClient, n: u64, what: &str) -> Result<ContinuousStats> {
    let before = client.stats();
    ensure!(
        client.wait_for_successes(before.successes + n, Duration::from_secs(30)),
        "{what}: the client stalled: {:?}",
        client.stats()
    );
    Ok(client.stats())
}

/// Waits (bounded, 30 s) until `client` has had answers from every server
/// in `names`.
fn wait_seen(client: &ContinuousClient, names: &[&str], what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = client.stats();
        if names.iter().all(|n| s.per_server.contains_key(*n)) {
            return Ok(());
        }
        if s.finished || Instant::now() >= deadline {
            bail!("{what}: not every one of {names:?} answered: {s:?}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------- tests

/// The topology alone, without Ferry: no default route anywhere; the
/// client reaches no pod; inside the cluster every node and pod reaches
/// every pod directly (no NAT: the pod sees the real source); given a
/// temporary route through node1 (then node2), the client reaches every pod
/// directly; without it, again nothing.
#[test]
fn topology_routes_like_a_cluster_without_ferry() -> Result<()> {
    require_root();
    let _serial = serial();
    let topo = NsTopology::new()?;
    let _servers = topo.start_servers(PORT)?;
    for ns in topo.namespaces() {
        for family in ["-4", "-6"] {
            let out = ns.cmd(&[family, "route", "show", "default"])?;
            assert!(
                out.trim().is_empty(),
                "{}: a default route: {out}",
                ns.name()
            );
        }
    }
    let client = topo.client();
    let unreachable = || {
        for pod in topo.pods() {
            for ip in pod.ips() {
                let e = client.run(|| tcp_connect_err(sa(ip, PORT)));
                assert_eq!(
                    e.as_ref().and_then(|e| e.errno),
                    Some(libc::ENETUNREACH),
                    "the client must have no route to {} ({ip}): {e:?}",
                    pod.name
                );
            }
        }
    };
    unreachable();

    // Inside the cluster: nodes and pods reach every pod, both families.
    let insiders: Vec<(&str, &Netns, Vec<IpAddr>)> = topo
        .nodes()
        .iter()
        .map(|n| (n.name.as_str(), &n.ns, n.ips()))
        .chain(
            topo.pods()
                .iter()
                .map(|p| (p.name.as_str(), &p.ns, p.ips().to_vec())),
        )
        .collect();
    for (from, ns, own) in &insiders {
        for pod in topo.pods() {
            for ip in pod.ips() {
                for proto in PROTOS {
                    let target = sa(ip, PORT);
                    let r = ns
                        .run(|| match proto {
                            Proto::Tcp => tcp_request(target),
                            Proto::Udp => udp_unconnected_request(target),
                        })
                        .with_context(|| {
                            format!("{from} → {} {} {target}", pod.name, proto.name())
                        })?;
                    assert_eq!(r.server, pod.name, "{from} → {target}: {r:?}");
                    // No NAT: the pod sees one of the sender's own
                    // addresses and its port.
                    assert!(
                        own.contains(&r.seen_peer.ip()) && r.seen_peer.port() == r.local.port(),
                        "{from} → {target}: NAT without Ferry? {r:?}"
                    );
                }
            }
        }
    }

    // Direct routing from the client through node1, then through node2.
    let routes = ["10.81.0.0/16", "10.82.0.0/16", "fd81::/16", "fd82::/16"];
    for via in ["node1", "node2"] {
        for r in routes {
            topo.route_client_via(r, via)?;
        }
        let node = topo.node(via);
        for pod in topo.pods() {
            for ip in pod.ips() {
                for proto in PROTOS {
                    let target = sa(ip, PORT);
                    let src = node.client_peer_like(ip);
                    let replies = requests_from_ports(client, proto, src, 45000, 3, target)?;
                    for r in &replies {
                        assert_eq!(r.server, pod.name, "via {via} → {target}: {r:?}");
                        assert_eq!(r.seen_peer, r.local, "via {via} → {target}: {r:?}");
                    }
                }
            }
        }
    }
    for r in routes {
        topo.remove_client_route(r)?;
    }
    unreachable();
    Ok(())
}

/// Case 1. NodePort with externalTrafficPolicy Cluster, TCP and UDP, IPv4
/// and IPv6, via node1 and via node2: every request answered (from the
/// NodePort); over 40 source ports both backends (one per node) answer
/// from each node; the backend sees the node's address (SNAT), never the
/// client's. With XDP (default `auto`: native on veth) XDP sends the flows
/// that leave by the other external interface (to the other node's pod,
/// and their replies), tc the rest; `ferry services` counts them.
#[test]
fn node_port_cluster_policy_spreads_over_nodes_and_masquerades() -> Result<()> {
    cluster_policy_case(XdpCase::Auto)
}

/// The same with XDP in generic mode.
#[test]
fn node_port_cluster_policy_with_generic_xdp() -> Result<()> {
    cluster_policy_case(XdpCase::Generic)
}

/// The same with tc alone (`--xdp-mode off`).
#[test]
fn node_port_cluster_policy_with_tc_alone() -> Result<()> {
    cluster_policy_case(XdpCase::Off)
}

/// The XDP modes the cluster policy case runs in: the flag, and the
/// `ip link` mode expected on the external interfaces.
#[derive(Clone, Copy, Debug)]
enum XdpCase {
    Auto,
    Generic,
    Off,
}

impl XdpCase {
    fn flag(self) -> &'static str {
        match self {
            XdpCase::Auto => "auto",
            XdpCase::Generic => "generic",
            XdpCase::Off => "off",
        }
    }

    /// `ip -j link`'s `xdp.mode` (veth has a native mode).
    fn link_mode(self) -> Option<u64> {
        match self {
            XdpCase::Auto => Some(1),
            XdpCase::Generic => Some(2),
            XdpCase::Off => None,
        }
    }
}

fn cluster_policy_case(xdp: XdpCase) -> Result<()> {
    require_root();
    let _serial = serial();
    let mut c = Cluster::new()?;
    c.apply(&objects(
        &c.topo,
        service("web", 10, 30080, "Cluster"),
        &["pod1", "pod2"],
    ))?;
    c.start_ferries_with(&["--xdp-mode", xdp.flag()])?;
    c.wait_node_port(30080, &PROTOS)?;
    for via in ["node1", "node2"] {
        let node = c.node(via);
        for ip in node.client_addrs() {
            for proto in PROTOS {
                let target = sa(ip, 30080);
                let src = node.client_peer_like(ip);
                wait_answered(c.client(), proto, src, target)?;
                let replies = requests_from_ports(c.client(), proto, src, 40000, 40, target)?;
                assert_eq!(
                    servers_of(&replies),
                    set(&["pod1", "pod2"]),
                    "{} via {via} to {target}: both backends must answer: {replies:?}",
                    proto.name()
                );
                for r in &replies {
                    assert!(
                        node.owns(r.seen_peer.ip()),
                        "{} via {via} to {target}: {} saw {}, not an address of {via} (no SNAT?): {r:?}",
                        proto.name(),
                        r.server,
                        r.seen_peer
                    );
                }
            }
        }
    }
    // `ferry services --north-south` shows what served them.
    for via in ["node1", "node2"] {
        let ns = c.node_ferry(via).ferry().north_south_json()?;
        for ip in c.node(via).client_addrs() {
            for proto in PROTOS {
                let fe = fe_name(sa(ip, 30080), proto);
                let entry = ns["frontends"]
                    .as_array()
                    .and_then(|a| a.iter().find(|f| f["frontend"].as_str() == Some(&fe)));
                let entry = entry.with_context(|| format!("{via}: {fe} missing: {ns}"))?;
                ensure!(
                    entry["kind"] == "NodePort"
                        && entry["masquerade"] == true
                        && entry["backends"] == 2
                        && entry["source_ranges"] == false,
                    "{via}: {fe}: {entry}"
                );
            }
        }
        let counters = &ns["counters"];
        ensure!(
            counters["new_flows"].as_u64() > Some(0)
                && counters["established_packets"].as_u64() > Some(0),
            "{via}: counters: {counters}"
        );
        // XDP sends what goes out of another external interface: flows to
        // the other node's pod and their replies. tc alone: nothing.
        let redirected = counters["xdp_redirected"].as_u64().unwrap_or(0);
        ensure!(
            (redirected > 0) == xdp.link_mode().is_some(),
            "{via} ({xdp:?}): xdp_redirected {redirected}: {counters}"
        );
        for ifname in c.node(via).external_interfaces() {
            let mode = xdp_mode(&c.node(via).ns, ifname)?;
            ensure!(
                mode == xdp.link_mode(),
                "{via} ({xdp:?}): {ifname}: ip link says XDP mode {mode:?}"
            );
        }
    }
    Ok(())
}

/// A UDP port the pods do not listen on: they answer port unreachable.
const CLOSED_PORT: u16 = 8099;

/// A dual-stack NodePort Service with one UDP port whose target port
/// ([`CLOSED_PORT`]) no pod listens on, and its slices with `pods`.
fn closed_port_objects(
    topo: &NsTopology,
    name: &str,
    n: u8,
    node_port: u16,
    etp: &str,
    pods: &[&str],
) -> Vec<Value> {
    let svc = dual_stack_node_port(name, n, etp).port(
        ServicePort::udp(80)
            .name("udp")
            .target(CLOSED_PORT)
            .node_port(node_port),
    );
    let mut v = vec![svc.to_value()];
    v.extend(slices_with(
        topo,
        name,
        pods,
        &[("udp", CLOSED_PORT, "UDP")],
    ));
    v
}

/// One datagram from a UDP socket bound to `src` (any port) and connected
/// to `target`, then a receive bounded by [`REQUEST_TIMEOUT`]: how it
/// ended.
fn udp_connected_probe(src: IpAddr, target: SocketAddr) -> io::Result<usize> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(src, 0))?;
    s.connect(target)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.send(b"who\n")?;
    let mut buf = [0u8; 512];
    s.recv(&mut buf)
}

/// ICMP errors of external flows are translated back: a pod that does not
/// listen on the Service's UDP target port answers port unreachable, and
/// the client's connected UDP socket sees ECONNREFUSED, as through
/// kube-proxy. Without the translation the error would quote the packet
/// as the pod got it (to the pod, from the masquerade address) and never
/// match the client's socket, whose receive would time out.
/// externalTrafficPolicy Cluster via both nodes (a local pod on the
/// pod-facing interface, a remote pod's error through the other node) and
/// Local, IPv4 and IPv6. The node's own port unreachable (no frontend
/// installed yet) would give the same errno, so the frontend is waited for
/// first and Ferry's counter of translated ICMP errors must grow.
#[test]
fn icmp_errors_of_external_flows_reach_the_client() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut c = Cluster::new()?;
    let mut objs = closed_port_objects(&c.topo, "closed", 40, 30090, "Cluster", &["pod1", "pod2"]);
    objs.extend(closed_port_objects(
        &c.topo,
        "closedlocal",
        41,
        30091,
        "Local",
        &["pod1", "pod2"],
    ));
    c.apply(&objs)?;
    c.start_ferries()?;
    c.wait_node_port(30090, &[Proto::Udp])?;
    c.wait_node_port(30091, &[Proto::Udp])?;
    for via in ["node1", "node2"] {
        let before =
            c.node_ferry(via).ferry().north_south_json()?["counters"]["icmp_errors_translated"]
                .as_u64()
                .context("no icmp_errors_translated counter")?;
        let node = c.node(via);
        let mut probes = 0u64;
        for ip in node.client_addrs() {
            let src = node.client_peer_like(ip);
            // A few source ports each: eTP Cluster reaches both pods. The
            // pods' ICMP rate limit (a burst of 6 per destination) bounds
            // how many.
            for node_port in [30090, 30090, 30090, 30091, 30091] {
                let target = sa(ip, node_port);
                let r = c.client().run(|| udp_connected_probe(src, target));
                ensure!(
                    matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionRefused),
                    "UDP via {via} from {src} to {target}: want ECONNREFUSED (the pod's port \
                     unreachable, translated), got {r:?}"
                );
                probes += 1;
            }
        }
        let after =
            c.node_ferry(via).ferry().north_south_json()?["counters"]["icmp_errors_translated"]
                .as_u64()
                .unwrap_or(0);
        // One translation per probe on the node it came through (a remote
        // pod's error passes the other node untouched: not its flow).
        ensure!(
            after >= before + probes,
            "{via}: {probes} probes, but icmp_errors_translated went from {before} to {after}"
        );
    }
    Ok(())
}

/// Case 2. Maglev: the same client address and port reach the same backend
/// whichever node they arrive at: NodePorts of node1 and node2 from the
/// client's loopback address, and the very same 5-tuple to a load balancer
/// IP routed first via node1, then via node2 (the backend's view proves
/// which node it came through). TCP and UDP, IPv4 and IPv6, 24 source ports
/// each, which between them reach more than one backend.
#[test]
fn maglev_picks_the_same_backend_on_every_node() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut c = Cluster::new()?;
    let svc = lb_service("mg", 20, 30082, "Cluster", &["10.90.0.2", "fd90::2"]);
    c.apply(&objects(&c.topo, svc, &["pod1", "pod1b", "pod2"]))?;
    c.start_ferries()?;
    c.wait_node_port(30082, &PROTOS)?;
    let lb4: IpAddr = "10.90.0.2".parse()?;
    let lb6: IpAddr = "fd90::2".parse()?;
    c.wait_frontend_everywhere(sa(lb4, 80), &PROTOS)?;
    c.wait_frontend_everywhere(sa(lb6, 80), &PROTOS)?;
    const N: u16 = 24;

    for (src, lb, range) in [
        (IpAddr::from(CLIENT_LO_V4), lb4, LB_RANGE_V4),
        (IpAddr::from(CLIENT_LO_V6), lb6, LB_RANGE_V6),
    ] {
        for proto in PROTOS {
            // NodePorts: same source, the two nodes' addresses.
            let mut per_node = Vec::new();
            for via in ["node1", "node2"] {
                let target = sa(c.node(via).addr_like(src), 30082);
                wait_answered(c.client(), proto, src, target)?;
                let replies = requests_from_ports(c.client(), proto, src, 41000, N, target)?;
                for r in &replies {
                    assert!(c.node(via).owns(r.seen_peer.ip()), "via {via}: {r:?}");
                }
                per_node.push(replies);
            }
            let picks = |rs: &[Reply]| rs.iter().map(|r| r.server.clone()).collect::<Vec<_>>();
            let (n1, n2) = (picks(&per_node[0]), picks(&per_node[1]));
            assert_eq!(
                n1,
                n2,
                "{} NodePort from {src}:41000..: node1 and node2 chose differently",
                proto.name()
            );
            assert!(
                servers_of(&per_node[0]).len() > 1,
                "{} NodePort: {N} source ports all went to one backend: {n1:?}",
                proto.name()
            );

            // The same 5-tuple to the LB IP, via node1 then via node2.
            let target = sa(lb, 80);
            let mut per_route = Vec::new();
            for via in ["node1", "node2"] {
                c.topo.route_client_via(range, via)?;
                wait_answered(c.client(), proto, src, target)?;
                let replies = requests_from_ports(c.client(), proto, src, 42000, N, target)?;
                for r in &replies {
                    assert!(
                        c.node(via).owns(r.seen_peer.ip()),
                        "routed via {via}, but the backend saw {}: {r:?}",
                        r.seen_peer
                    );
                }
                per_route.push(replies);
            }
            c.topo.route_client_via(range, "node1")?;
            let (l1, l2) = (picks(&per_route[0]), picks(&per_route[1]));
            assert_eq!(
                l1,
                l2,
                "{} {target} from {src}:42000..: the same 5-tuples chose differently via node1 and node2",
                proto.name()
            );
            assert!(
                servers_of(&per_route[0]).len() > 1,
                "{} LB IP: {N} source ports all went to one backend: {l1:?}",
                proto.name()
            );
        }
    }
    Ok(())
}

/// Case 3. externalTrafficPolicy Local: via node1 only node1's pods
/// (pod1, pod1b) answer and they see the client's own address and port;
/// via node2 only pod2 does. A Service whose only endpoint is on node2 is
/// dropped at node1 (connects time out, UDP gets no answer) and served via
/// node2, again without SNAT.
#[test]
fn node_port_local_policy_keeps_the_client_address_and_drops_without_local_endpoints() -> Result<()>
{
    require_root();
    let _serial = serial();
    let mut c = Cluster::new()?;
    let mut objs = objects(
        &c.topo,
        service("local", 30, 30083, "Local"),
        &["pod1", "pod1b", "pod2"],
    );
    objs.extend(objects(
        &c.topo,
        service("only2", 31, 30084, "Local"),
        &["pod2"],
    ));
    c.apply(&objs)?;
    c.start_ferries()?;
    // Both Services are in one file: a node that lists one has the other.
    c.wait_node_port(30083, &PROTOS)?;

    for (via, local) in [
        ("node1", set(&["pod1", "pod1b"])),
        ("node2", set(&["pod2"])),
    ] {
        let node = c.node(via);
        for ip in node.client_addrs() {
            for proto in PROTOS {
                let target = sa(ip, 30083);
                let src = node.client_peer_like(ip);
                wait_answered(c.client(), proto, src, target)?;
                let replies = requests_from_ports(c.client(), proto, src, 43000, 30, target)?;
                assert_eq!(
                    servers_of(&replies),
                    local,
                    "{} via {via} to {target}: only (and every) local endpoints: {replies:?}",
                    proto.name()
                );
                for r in &replies {
                    assert_eq!(
                        r.seen_peer,
                        r.local,
                        "{} via {via}: the pod must see the client's own address: {r:?}",
                        proto.name()
                    );
                }
            }
        }
    }

    // only2: served via node2, dropped at node1.
    let node2 = c.node("node2");
    for ip in node2.client_addrs() {
        for proto in PROTOS {
            let target = sa(ip, 30084);
            let src = node2.client_peer_like(ip);
            wait_answered(c.client(), proto, src, target)?;
            let replies = requests_from_ports(c.client(), proto, src, 43100, 10, target)?;
            assert_eq!(servers_of(&replies), set(&["pod2"]), "{replies:?}");
            for r in &replies {
                assert_eq!(r.seen_peer, r.local, "{r:?}");
            }
        }
    }
    let node1 = c.node("node1");
    for ip in node1.client_addrs() {
        for proto in PROTOS {
            assert_dropped(
                c.client(),
                proto,
                node1.client_peer_like(ip),
                sa(ip, 30084),
                3,
                "eTP Local without a local endpoint on node1",
            );
        }
    }
    Ok(())
}

/// Case 4. loadBalancerSourceRanges on a load balancer IP: the allowed
/// client address is served (another address of the same client is
/// dropped); once the ranges exclude the client, the LB IP drops it while
/// the Service's NodePort still serves it; allowed again, served again.
#[test]
fn load_balancer_source_ranges_drop_other_sources() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut c = Cluster::new()?;
    let lb = |ranges: &[&str]| {
        lb_service("lbr", 40, 30085, "Cluster", &["10.90.0.1", "fd90::1"])
            .spec("loadBalancerSourceRanges", json!(ranges))
    };
    let allowed = ["10.71.1.2/32", "fd71:1::2/128"];
    c.apply(&objects(&c.topo, lb(&allowed), &["pod1", "pod2"]))?;
    c.start_ferries()?;
    let lb4: IpAddr = "10.90.0.1".parse()?;
    let lb6: IpAddr = "fd90::1".parse()?;
    c.wait_frontend_everywhere(sa(lb4, 80), &PROTOS)?;
    c.wait_frontend_everywhere(sa(lb6, 80), &PROTOS)?;
    let node1 = c.node("node1");
    let lbs = [
        (lb4, IpAddr::from(CLIENT_LO_V4)),
        (lb6, IpAddr::from(CLIENT_LO_V6)),
    ];

    // Allowed source: served (via node1, SNAT to node1). Another source of
    // the same client: dropped.
    for (ip, other_src) in lbs {
        for proto in PROTOS {
            let target = sa(ip, 80);
            let src = node1.client_peer_like(ip);
            wait_answered(c.client(), proto, src, target)?;
            let replies = requests_from_ports(c.client(), proto, src, 44000, 10, target)?;
            for r in &replies {
                assert!(node1.owns(r.seen_peer.ip()), "{r:?}");
                assert!(["pod1", "pod2"].contains(&r.server.as_str()), "{r:?}");
            }
            assert_dropped(
                c.client(),
                proto,
                other_src,
                target,
                2,
                "a source outside loadBalancerSourceRanges",
            );
        }
    }

    // `ferry explain --client ADDRESS` says the same as the packets did.
    for (ip, other_src) in lbs {
        let fe = fe_name(sa(ip, 80), Proto::Tcp);
        let src = c.node("node1").client_peer_like(ip);
        for (client, want) in [
            (src, "admitted by loadBalancerSourceRanges"),
            (
                other_src,
                "dropped: the source is not in loadBalancerSourceRanges",
            ),
        ] {
            let v = explain_json(
                &c,
                "node1",
                &["explain", &fe, "--client", &client.to_string()],
            )?;
            let f = &v["frontends"][0];
            assert_eq!(f["kind"], "LoadBalancer", "{v:#}");
            let outcome = f["client"]["outcome"].as_str().unwrap_or("");
            assert!(outcome.contains(want), "{client}: {want:?} expected: {v:#}");
        }
    }

    // Ranges that exclude the client: dropped on the LB IP, the NodePort
    // still serves (source ranges only guard LB IPs).
    c.apply(&objects(
        &c.topo,
        lb(&["192.0.2.0/24", "2001:db8::/32"]),
        &["pod1", "pod2"],
    ))?;
    for (ip, _) in lbs {
        let src = node1.client_peer_like(ip);
        wait_dropped(c.client(), Proto::Tcp, src, sa(ip, 80))?;
        for proto in PROTOS {
            assert_dropped(
                c.client(),
                proto,
                src,
                sa(ip, 80),
                3,
                "client outside loadBalancerSourceRanges",
            );
            let np = sa(node1.addr_like(ip), 30085);
            let replies = requests_from_ports(c.client(), proto, src, 44100, 5, np)?;
            for r in &replies {
                assert!(
                    ["pod1", "pod2"].contains(&r.server.as_str()) && node1.owns(r.seen_peer.ip()),
                    "the NodePort of a source-ranged Service serves everyone: {r:?}"
                );
            }
        }
    }

    // Allowed again: served again.
    c.apply(&objects(&c.topo, lb(&allowed), &["pod1", "pod2"]))?;
    for (ip, _) in lbs {
        for proto in PROTOS {
            wait_answered(c.client(), proto, node1.client_peer_like(ip), sa(ip, 80))?;
        }
    }
    Ok(())
}

/// Case 5. Backends added (the EndpointSlices rewritten) while clients
/// outside keep making short requests to both nodes' NodePorts (TCP, and
/// UDP via node1): not one fails, and the new backends get traffic.
/// Maglev tables depend only on their backends, so sets with the same
/// backends share one: 40 dual-stack LoadBalancer Services on the same
/// pods are 160 sets (family × protocol), more than the 64 tables the map
/// holds at the default size, and every one of them is served from outside.
#[test]
fn services_on_the_same_pods_share_maglev_tables_past_the_maps_table_count() -> Result<()> {
    require_root();
    let _serial = serial();
    const SERVICES: u8 = 40;
    let mut c = Cluster::new()?;
    let mut objs = Vec::new();
    for i in 0..SERVICES {
        let ingress = [format!("10.90.0.{}", i + 100), format!("fd90::{}", i + 100)];
        let svc = lb_service(
            &format!("many-{i}"),
            100 + i,
            30200 + u16::from(i),
            "Cluster",
            &[&ingress[0], &ingress[1]],
        );
        objs.extend(objects(&c.topo, svc, &["pod1", "pod2"]));
    }
    c.apply(&objs)?;
    c.start_ferries()?;
    for i in [0, SERVICES / 2, SERVICES - 1] {
        for ip in [format!("10.90.0.{}", i + 100), format!("fd90::{}", i + 100)] {
            let ip: IpAddr = ip.parse()?;
            c.wait_frontend_everywhere(sa(ip, 80), &PROTOS)?;
            let src = c.node("node1").client_peer_like(ip);
            for proto in PROTOS {
                let r = wait_answered(c.client(), proto, src, sa(ip, 80))?;
                assert!(["pod1", "pod2"].contains(&r.server.as_str()), "{r:?}");
            }
        }
    }
    Ok(())
}

/// Every distinct backend list gets a Maglev table of its own, created
/// for it: 70 dual-stack LoadBalancer Services, each on its own subset of
/// the three pods and target port, are 140 distinct lists (family ×
/// subset × port; TCP and UDP of one Service share theirs), more than
/// twice the 64 tables the flat map of the default size held before
/// tables became maps of their own. Every Service is served from outside
/// by the pods of its subset on its port. Then 60 Services go: their
/// tables are freed (the slots emptied), so a node holds memory for the
/// sets that exist.
#[test]
fn distinct_backend_sets_each_get_a_table_and_give_it_back() -> Result<()> {
    require_root();
    let _serial = serial();
    const SERVICES: u8 = 70;
    const KEPT: u8 = 10;
    const PODS: [&str; 3] = ["pod1", "pod1b", "pod2"];
    let mut c = Cluster::new()?;
    // Target ports 8100.. on every pod (PORT's servers are the Cluster's).
    let mut servers = Vec::new();
    for port in 0..SERVICES.div_ceil(7) {
        servers.push(c.topo.start_servers(8100 + u16::from(port))?);
    }
    let service = |i: u8| {
        let pods: Vec<&str> = (0..3)
            .filter(|b| (i % 7 + 1) & (1 << b) != 0)
            .map(|b| PODS[b])
            .collect();
        let port = 8100 + u16::from(i / 7);
        let name = format!("distinct-{i}");
        let ingress = [format!("10.90.0.{}", i + 100), format!("fd90::{}", i + 100)];
        let svc = dual_stack_node_port(&name, 100 + i, "Cluster")
            .port(
                ServicePort::tcp(80)
                    .name("tcp")
                    .target(port)
                    .node_port(30200 + u16::from(i)),
            )
            .port(
                ServicePort::udp(80)
                    .name("udp")
                    .target(port)
                    .node_port(30200 + u16::from(i)),
            )
            .type_("LoadBalancer")
            .load_balancer_ingress(&[&ingress[0], &ingress[1]]);
        let mut objs = vec![svc.to_value()];
        objs.extend(slices_with(
            &c.topo,
            &name,
            &pods,
            &[("tcp", port, "TCP"), ("udp", port, "UDP")],
        ));
        (objs, pods, ingress)
    };
    let all: Vec<_> = (0..SERVICES).map(service).collect();
    c.apply(
        &all.iter()
            .flat_map(|(o, _, _)| o.clone())
            .collect::<Vec<_>>(),
    )?;
    c.start_ferries()?;
    for (i, (_, pods, ingress)) in all.iter().enumerate() {
        for ip in ingress {
            let ip: IpAddr = ip.parse()?;
            if i == 0 {
                c.wait_frontend_everywhere(sa(ip, 80), &PROTOS)?;
            }
            let src = c.node("node1").client_peer_like(ip);
            for proto in PROTOS {
                let r = wait_answered(c.client(), proto, src, sa(ip, 80))?;
                assert!(
                    pods.contains(&r.server.as_str()),
                    "distinct-{i} {ip} {proto:?} answered by {r:?}, not one of {pods:?}"
                );
            }
        }
    }
    let tables = |c: &mut Cluster| -> Result<u64> {
        let ns = c.node_ferry("node1").ferry().north_south_json()?;
        ns["maglev_tables"]
            .as_u64()
            .with_context(|| format!("no maglev_tables in {ns}"))
    };
    assert_eq!(tables(&mut c)?, 2 * u64::from(SERVICES));

    c.apply(
        &all[..usize::from(KEPT)]
            .iter()
            .flat_map(|(o, _, _)| o.clone())
            .collect::<Vec<_>>(),
    )?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while tables(&mut c)? != 2 * u64::from(KEPT) {
        ensure!(
            Instant::now() < deadline,
            "tables of removed Services are still held: {}",
            tables(&mut c)?
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The Services that stay are still served.
    let (_, pods, ingress) = &all[usize::from(KEPT) - 1];
    let ip: IpAddr = ingress[0].parse()?;
    let r = wait_answered(
        c.client(),
        Proto::Tcp,
        c.node("node1").client_peer_like(ip),
        sa(ip, 80),
    )?;
    assert!(pods.contains(&r.server.as_str()), "{r:?}");
    drop(servers);
    Ok(())
}

#[test]
fn backends_added_under_external_load_lose_nothing() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut c = Cluster::new()?;
    c.apply(&objects(
        &c.topo,
        service("grow", 50, 30086, "Cluster"),
        &["pod1"],
    ))?;
    c.start_ferries()?;
    c.wait_node_port(30086, &PROTOS)?;
    let t1 = sa(c.node("node1").client_v4.into(), 30086);
    let t2 = sa(c.node("node2").client_v4.into(), 30086);
    let src1 = IpAddr::from(c.node("node1").client_peer_v4);
    let src2 = IpAddr::from(c.node("node2").client_peer_v4);
    wait_answered(c.client(), Proto::Tcp, src1, t1)?;
    wait_answered(c.client(), Proto::Tcp, src2, t2)?;
    wait_answered(c.client(), Proto::Udp, src1, t1)?;

    let clients = [
        (
            "TCP via node1",
            ContinuousClient::start(c.client(), t1, load(ContinuousMode::Tcp))?,
        ),
        (
            "TCP via node2",
            ContinuousClient::start(c.client(), t2, load(ContinuousMode::Tcp))?,
        ),
        (
            "UDP via node1",
            ContinuousClient::start(c.client(), t1, load(ContinuousMode::UdpUnconnected))?,
        ),
    ];
    for (what, cl) in &clients {
        run_for(cl, 30, what)?;
    }
    c.apply(&objects(
        &c.topo,
        service("grow", 50, 30086, "Cluster"),
        &["pod1", "pod2", "pod1b"],
    ))?;
    c.wait_node_port_backends(30086, &["pod1", "pod2", "pod1b"])?;
    for (what, cl) in &clients {
        wait_seen(cl, &["pod1", "pod2", "pod1b"], what)?;
        run_for(cl, 50, what)?;
    }
    for (what, cl) in clients {
        let stats = cl.stop();
        assert_eq!(
            stats.failures, 0,
            "{what}: {:?} {stats:?}",
            stats.first_errors
        );
        assert_eq!(
            stats.per_server.keys().cloned().collect::<BTreeSet<_>>(),
            set(&["pod1", "pod1b", "pod2"]),
            "{what}: {stats:?}"
        );
    }
    Ok(())
}

/// Case 6. node1's Ferry is SIGKILLed and started again while clients
/// outside keep making requests through node1 (TCP IPv4 and IPv6, UDP
/// IPv4): not one fails, while it is dead or while it starts again; the
/// restarted Ferry then applies a change (a backend added) that the
/// clients see.
#[test]
fn sigkill_and_restart_under_external_load_lose_nothing() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut c = Cluster::new()?;
    c.apply(&objects(
        &c.topo,
        service("rs", 60, 30087, "Cluster"),
        &["pod1", "pod2"],
    ))?;
    c.start_ferries()?;
    c.wait_node_port(30087, &PROTOS)?;
    let node1 = c.node("node1");
    let t4 = sa(node1.client_v4.into(), 30087);
    let t6 = sa(node1.client_v6.into(), 30087);
    wait_answered(c.client(), Proto::Tcp, node1.client_peer_v4.into(), t4)?;
    wait_answered(c.client(), Proto::Tcp, node1.client_peer_v6.into(), t6)?;
    wait_answered(c.client(), Proto::Udp, node1.client_peer_v4.into(), t4)?;

    let clients = [
        (
            "TCP v4 via node1",
            ContinuousClient::start(c.client(), t4, load(ContinuousMode::Tcp))?,
        ),
        (
            "TCP v6 via node1",
            ContinuousClient::start(c.client(), t6, load(ContinuousMode::Tcp))?,
        ),
        (
            "UDP v4 via node1",
            ContinuousClient::start(c.client(), t4, load(ContinuousMode::UdpUnconnected))?,
        ),
    ];
    for (what, cl) in &clients {
        run_for(cl, 30, what)?;
    }

    let xdp_before = xdp_prog_ids(&c, "node1")?;
    c.ferry("node1").kill9()?;
    assert!(!c.ferry("node1").is_running());
    for (what, cl) in &clients {
        run_for(cl, 100, &format!("{what}, ferry dead"))?;
    }
    c.ferry("node1").restart()?;
    for (what, cl) in &clients {
        run_for(cl, 100, &format!("{what}, ferry restarting"))?;
    }
    // The restarted Ferry swapped its own program into the XDP links
    // (one program per interface: a fresh attachment would have failed).
    let xdp_after = xdp_prog_ids(&c, "node1")?;
    for ((ifname, before), (_, after)) in xdp_before.iter().zip(&xdp_after) {
        ensure!(
            before.is_some() && after.is_some() && before != after,
            "node1: {ifname}: XDP program {before:?} before the restart, {after:?} after"
        );
    }
    // The restarted Ferry works: it applies a new backend.
    c.apply(&objects(
        &c.topo,
        service("rs", 60, 30087, "Cluster"),
        &["pod1", "pod2", "pod1b"],
    ))?;
    c.wait_node_port_backends(30087, &["pod1", "pod2", "pod1b"])?;
    for (what, cl) in &clients {
        wait_seen(cl, &["pod1b"], &format!("{what}, after the restart"))?;
        run_for(cl, 50, what)?;
    }
    assert!(
        c.ferry("node1").is_running(),
        "{}",
        c.ferry("node1").log_tail(40)
    );
    for (what, cl) in clients {
        let stats = cl.stop();
        assert_eq!(
            stats.failures, 0,
            "{what}: {:?} {stats:?}",
            stats.first_errors
        );
    }
    Ok(())
}

/// Case 7. While Ferry runs, each node has tcx ingress programs on its
/// external interfaces (client link, node link) and on every pod veth (the
/// reply path); after `ferry cleanup` (run in the node namespace) nothing
/// is attached to any interface of either node (tcx, tc, XDP), no pin is
/// left, and the NodePort is an unserved port again.
#[test]
fn cleanup_leaves_nothing_attached_in_the_node_namespaces() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut c = Cluster::new()?;
    c.apply(&objects(
        &c.topo,
        service("web", 70, 30088, "Cluster"),
        &["pod1", "pod2"],
    ))?;
    c.start_ferries()?;
    c.wait_node_port(30088, &[Proto::Tcp])?;
    let target = sa(c.node("node1").client_v4.into(), 30088);
    wait_answered(
        c.client(),
        Proto::Tcp,
        c.node("node1").client_peer_v4.into(),
        target,
    )?;

    for node in c.topo.nodes() {
        let attached = tcx_attachments(&node.ns)?;
        let has_ingress = |ifname: &str| {
            attached
                .iter()
                .any(|(i, dir, ids)| i == ifname && *dir == "ingress" && !ids.is_empty())
        };
        let mut wanted: Vec<String> = node.external_interfaces().map(str::to_string).to_vec();
        // `--xdp-mode auto`: veth has native XDP.
        for ifname in &wanted {
            let mode = xdp_mode(&node.ns, ifname)?;
            ensure!(
                mode == Some(1),
                "{}: {ifname}: want native XDP, ip link says mode {mode:?}",
                node.name
            );
        }
        wanted.extend(c.topo.pods_on(&node.name).map(|p| p.host_if.clone()));
        for ifname in &wanted {
            assert!(
                has_ingress(ifname),
                "{}: no tcx ingress program on {ifname}; attached: {attached:?}",
                node.name
            );
        }
    }

    let mut pins = Vec::new();
    for nf in &mut c.ferries {
        pins.push((nf.node.clone(), nf.bpffs.path().to_path_buf()));
        // Drop: SIGTERM, then `ferry cleanup` inside the node namespace.
        drop(nf.ferry.take());
    }
    for node in c.topo.nodes() {
        let attached = tcx_attachments(&node.ns)?;
        assert!(
            attached.is_empty(),
            "{}: still attached after cleanup: {attached:?}",
            node.name
        );
        let net = bpftool_net_show(&node.ns)?;
        let left = bpftool_attached(&net);
        assert!(
            left.is_empty(),
            "{}: bpftool net show after cleanup: {net}",
            node.name
        );
    }
    for (node, dir) in pins {
        let left: Vec<_> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .filter_map(std::result::Result::ok)
                .map(|e| e.path())
                .collect(),
            Err(_) => Vec::new(),
        };
        assert!(
            left.is_empty(),
            "{node}: pins left in {}: {left:?}",
            dir.display()
        );
    }
    let e = c
        .client()
        .run(|| tcp_connect_err(target))
        .expect("nothing translates the NodePort any more");
    assert_eq!(e.errno, Some(libc::ECONNREFUSED), "{e}");
    Ok(())
}

/// `ferry ARGS --bpffs-dir DIR -o json` against the Ferry of `node`.
fn explain_json(c: &Cluster, node: &str, args: &[&str]) -> Result<Value> {
    let ferry = c
        .ferries
        .iter()
        .find(|f| f.node == node)
        .and_then(|f| f.ferry.as_ref())
        .with_context(|| format!("no ferry for {node}"))?;
    let dir = ferry.options().bpffs_dir.to_string_lossy().into_owned();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--bpffs-dir", &dir, "-o", "json"]);
    let out = ferry.cli(&all)?;
    ensure!(
        out.status.success(),
        "ferry {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// `ferry explain --flow` (issue 15): for UDP flows from the client to a
/// NodePort, the Maglev backend explain names for each 5-tuple is the pod
/// that answered it, and the flow's connection-table entry leads there.
#[test]
fn explain_flow_names_the_backend_each_flow_reached() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut c = Cluster::new()?;
    let pods = ["pod1", "pod1b", "pod2"];
    c.apply(&objects(
        &c.topo,
        service("why", 40, 30086, "Cluster"),
        &pods,
    ))?;
    c.start_ferries()?;
    c.wait_node_port(30086, &[Proto::Udp])?;
    c.wait_node_port_backends(30086, &pods)?;
    let src = IpAddr::from(CLIENT_LO_V4);
    let target = sa(c.node("node1").addr_like(src), 30086);
    wait_answered(c.client(), Proto::Udp, src, target)?;
    const N: u16 = 12;
    let replies = requests_from_ports(c.client(), Proto::Udp, src, 44000, N, target)?;
    ensure!(
        servers_of(&replies).len() > 1,
        "{N} source ports all went to one backend"
    );
    let fe = fe_name(target, Proto::Udp);
    let pod_addrs: Vec<(String, String)> = c
        .topo
        .pods()
        .iter()
        .map(|p| (p.name.clone(), sa(p.v4.into(), PORT).to_string()))
        .collect();
    let pod_at = |addr: &str| -> String {
        pod_addrs
            .iter()
            .find(|(_, a)| a == addr)
            .map_or_else(|| format!("unknown {addr}"), |(name, _)| name.clone())
    };
    let mut explained = Vec::new();
    for i in 0..N {
        let flow = sa(src, 44000 + i).to_string();
        let v = explain_json(&c, "node1", &["explain", &fe, "--flow", &flow])?;
        let f = &v["frontends"][0];
        ensure!(f["kind"] == "NodePort", "{v:#}");
        ensure!(f["external_clients"]["masquerade"] == true, "{v:#}");
        ensure!(f["matches"] == true, "maps and model differ: {v:#}");
        let ns = &f["client"]["north_south"];
        let maglev = pod_at(ns["maglev_backend"].as_str().unwrap_or(""));
        let becomes = ns["flow"]["becomes"].as_str().unwrap_or("");
        let pod = pod_addrs.iter().find(|(name, _)| *name == maglev);
        ensure!(
            pod.is_some_and(|(_, addr)| becomes.ends_with(addr.as_str())),
            "the flow entry of {flow} ({becomes:?}) does not lead to Maglev's {maglev}: {v:#}"
        );
        explained.push(maglev);
    }
    let answered: Vec<String> = replies.iter().map(|r| r.server.clone()).collect();
    assert_eq!(
        explained, answered,
        "explain's Maglev picks vs the pods that answered"
    );
    Ok(())
}
