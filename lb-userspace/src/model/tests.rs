//! End-to-end tables for [`compute`]: the reference doc's restated upstream
//! tables and one table per rule, from objects to what a local client gets.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;

use super::endpoints::EndpointsIndex;
use super::testutil::*;
use super::topology::{PortPolicy, categorize_endpoints};
use super::*;

// ---------------------------------------------------------------------------
// Helpers

fn run(services: Vec<Arc<Service>>, slices: Vec<Arc<EndpointSliceInfo>>) -> Computed {
    run_on(&node(), services, slices)
}

fn run_on(
    node: &NodeInfo,
    services: Vec<Arc<Service>>,
    slices: Vec<Arc<EndpointSliceInfo>>,
) -> Computed {
    let state = ClusterState {
        services,
        endpoint_slices: slices,
    };
    let c = compute(&state, node);
    check_invariants(&c.desired);
    c
}

/// Structural promises every result keeps, whatever the input.
fn check_invariants(d: &DesiredState) {
    let mut used = BTreeSet::new();
    for (addr, f) in &d.frontends {
        assert!(
            d.backend_sets.contains_key(&f.set),
            "{addr}: set {} missing",
            f.set
        );
        assert_eq!(addr.protocol, f.set.protocol, "{addr}");
        assert_eq!(IpFamily::of(&addr.ip), f.set.family, "{addr}");
        if f.kind != FrontendKind::ClusterIp {
            assert_eq!(
                f.set.selection,
                Selection::Cluster,
                "{addr}: external frontends use Cluster"
            );
        }
        if f.kind == FrontendKind::NodePort {
            assert!(d.node_ports.contains(&(addr.port, addr.protocol)), "{addr}");
        }
        used.insert(f.set.clone());
    }
    for (key, set) in &d.backend_sets {
        assert!(used.contains(key), "set {key} is used by no frontend");
        let mut sorted = set.backends.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            set.backends, sorted,
            "{key}: backends sorted and deduplicated"
        );
        assert!(set.backends.len() <= lb_common::capacity::MAX_BACKENDS_PER_SERVICE as usize);
        for b in &set.backends {
            assert_eq!(IpFamily::of(&b.ip), key.family, "{key}");
            assert_eq!(b.protocol, key.protocol, "{key}");
            assert_ne!(b.port, 0, "{key}");
        }
        if !set.backends.is_empty() {
            assert_eq!(set.empty_outcome, EmptyOutcome::Reject, "{key}");
        }
    }
    for (ip, key) in &d.cluster_ips {
        assert!(d.backend_sets.contains_key(key), "cluster IP {ip}");
        assert!(
            d.frontends
                .iter()
                .any(|(a, f)| a.ip == *ip && f.kind == FrontendKind::ClusterIp && f.set == *key),
            "cluster IP {ip} has no ClusterIP frontend with set {key}"
        );
    }
    for (np, proto) in &d.node_ports {
        assert!(
            d.frontends.iter().any(|(a, f)| a.port == *np
                && a.protocol == *proto
                && f.kind == FrontendKind::NodePort),
            "node port {np}/{proto} has no frontend"
        );
    }
    for (port, hc) in &d.health_checks {
        assert_eq!(*port, hc.node_port);
    }
    // External frontends: the socket frontends outside clients can reach,
    // each with its set in `external_sets`.
    let mut external_used = BTreeSet::new();
    for (addr, f) in &d.external {
        let socket = d
            .frontends
            .get(addr)
            .unwrap_or_else(|| panic!("external {addr} is no socket frontend"));
        assert_eq!(socket.kind, f.kind, "{addr}");
        assert_ne!(f.kind, FrontendKind::ClusterIp, "{addr}");
        if f.kind == FrontendKind::NodePort {
            assert!(!addr.ip.is_loopback(), "{addr}: loopback is local only");
        }
        assert!(
            d.external_sets.contains_key(&f.set),
            "{addr}: set {}",
            f.set
        );
        assert_eq!(addr.protocol, f.set.protocol, "{addr}");
        assert_eq!(IpFamily::of(&addr.ip), f.set.family, "{addr}");
        let same_port = |a: &BackendSetKey, b: &BackendSetKey| {
            (&a.service, &a.port_name, a.protocol, a.family)
                == (&b.service, &b.port_name, b.protocol, b.family)
        };
        assert!(same_port(&f.set, &socket.set), "{addr}");
        assert_eq!(f.snat, f.set.selection == Selection::Cluster, "{addr}");
        if f.kind != FrontendKind::LoadBalancer {
            assert!(f.source_ranges.is_empty(), "{addr}: only LB IPs");
        }
        for r in f.source_ranges.iter() {
            assert_eq!(r.family(), IpFamily::of(&addr.ip), "{addr}: {r:?}");
        }
        external_used.insert(f.set.clone());
    }
    for (key, set) in &d.external_sets {
        assert!(external_used.contains(key), "external set {key} is unused");
        if let Some(socket) = d.backend_sets.get(key) {
            assert_eq!(socket, set, "{key}: one set, one content");
        }
        if !set.backends.is_empty() {
            assert_eq!(set.empty_outcome, EmptyOutcome::Reject, "{key}");
        }
    }
}

/// "ip:port/TCP" or "[v6]:port/UDP".
fn fe(s: &str) -> FrontendAddr {
    let (addr, proto) = s.rsplit_once('/').expect("ip:port/PROTO");
    let protocol = match proto {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        other => panic!("protocol {other}"),
    };
    let (ip, port) = addr.rsplit_once(':').expect("ip:port");
    FrontendAddr {
        ip: ip
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .expect("ip"),
        port: port.parse().expect("port"),
        protocol,
    }
}

/// What a local client connecting to a frontend gets.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Served {
    /// Forwarded to one of these backends ("ip:port").
    To(Vec<String>),
    /// Frontend with no backend, no endpoint anywhere: REJECT.
    Reject,
    /// Frontend with no usable backend although endpoints exist: DROP.
    Drop,
    /// No frontend, but a known ClusterIP: the datapath refuses (REJECT).
    RefusedPort,
    /// Not a Service address at all.
    Unknown,
}

fn to(backends: &[&str]) -> Served {
    Served::To(
        backends
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
    )
}

fn served(c: &Computed, frontend: &str) -> Served {
    let addr = fe(frontend);
    match c.desired.frontends.get(&addr) {
        Some(f) => served_by(&c.desired.backend_sets[&f.set]),
        None if c.desired.cluster_ips.contains_key(&addr.ip) => Served::RefusedPort,
        None => Served::Unknown,
    }
}

fn served_by(set: &BackendSet) -> Served {
    if set.backends.is_empty() {
        match set.empty_outcome {
            EmptyOutcome::Reject => Served::Reject,
            EmptyOutcome::Drop => Served::Drop,
        }
    } else {
        let mut v: Vec<String> = set
            .backends
            .iter()
            .map(|b| addr_port(b.ip, b.port))
            .collect();
        v.sort();
        Served::To(v)
    }
}

/// What a client outside the node gets (the packet datapath); Unknown
/// when the frontend is not reachable from outside.
fn served_externally(c: &Computed, frontend: &str) -> Served {
    match c.desired.external.get(&fe(frontend)) {
        Some(f) => served_by(&c.desired.external_sets[&f.set]),
        None => Served::Unknown,
    }
}

fn external_of<'c>(c: &'c Computed, frontend: &str) -> &'c ExternalFrontend {
    c.desired
        .external
        .get(&fe(frontend))
        .unwrap_or_else(|| panic!("no external frontend {frontend}"))
}

fn frontend_of<'c>(c: &'c Computed, frontend: &str) -> &'c Frontend {
    c.desired
        .frontends
        .get(&fe(frontend))
        .unwrap_or_else(|| panic!("no frontend {frontend}"))
}

fn set_of<'c>(c: &'c Computed, frontend: &str) -> &'c BackendSet {
    &c.desired.backend_sets[&frontend_of(c, frontend).set]
}

fn reasons(c: &Computed) -> Vec<String> {
    c.invalid
        .iter()
        .map(std::string::ToString::to_string)
        .collect()
}

fn svc_ref(ns: &str, name: &str) -> ServiceRef {
    ServiceRef {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn assert_served(c: &Computed, table: &[(&str, Served)], what: &str) {
    for (frontend, want) in table {
        assert_eq!(served(c, frontend), *want, "{what}: {frontend}");
    }
}

// ---------------------------------------------------------------------------
// Restated upstream tables

/// Reference "ClusterIP general".
#[test]
fn upstream_cluster_ip_general() {
    let c = run(
        vec![
            service("ns1", "svc1", "172.30.0.41")
                .port("p80", "TCP", 80)
                .build(),
            service("ns2", "svc2", "172.30.0.42")
                .port("http", "TCP", 80)
                .port("https", "TCP", 443)
                .target(8443)
                .port("dns-udp", "UDP", 53)
                .port("dns-tcp", "TCP", 53)
                .target(5353)
                .build(),
        ],
        vec![
            slice("ns1", "svc1-abc", "svc1", "IPv4")
                .port("p80", "TCP", 80)
                .endpoint(ep("10.180.0.1").local())
                .build(),
            slice("ns2", "svc2-abc", "svc2", "IPv4")
                .port("http", "TCP", 80)
                .port("https", "TCP", 8443)
                .port("dns-udp", "UDP", 53)
                .port("dns-tcp", "TCP", 5353)
                .endpoint(ep("10.180.0.1").local())
                .endpoint(ep("10.180.2.1").node("node2"))
                .build(),
        ],
    );
    assert!(c.invalid.is_empty(), "{:?}", reasons(&c));
    assert_served(
        &c,
        &[
            ("172.30.0.41:80/TCP", to(&["10.180.0.1:80"])),
            (
                "172.30.0.42:80/TCP",
                to(&["10.180.0.1:80", "10.180.2.1:80"]),
            ),
            (
                "172.30.0.42:443/TCP",
                to(&["10.180.0.1:8443", "10.180.2.1:8443"]),
            ),
            (
                "172.30.0.42:53/TCP",
                to(&["10.180.0.1:5353", "10.180.2.1:5353"]),
            ),
            (
                "172.30.0.42:53/UDP",
                to(&["10.180.0.1:53", "10.180.2.1:53"]),
            ),
            // UDP to a TCP-only port, and an undefined port: refused.
            ("172.30.0.42:80/UDP", Served::RefusedPort),
            ("172.30.0.41:443/TCP", Served::RefusedPort),
            // An unallocated IP in the service CIDR is not ours (DROP).
            ("172.30.0.50:80/TCP", Served::Unknown),
        ],
        "ClusterIP general",
    );
    assert_eq!(
        frontend_of(&c, "172.30.0.41:80/TCP").kind,
        FrontendKind::ClusterIp
    );
    assert_eq!(c.desired.frontends.len(), 5);
    assert!(c.desired.node_ports.is_empty() && c.desired.health_checks.is_empty());
}

/// Reference "iTP".
#[test]
fn upstream_internal_traffic_policy() {
    struct Case {
        name: &'static str,
        itp: Option<&'static str>,
        /// (IP, node name); None: no slice at all.
        endpoints: Option<Vec<(&'static str, &'static str)>>,
        want: Served,
    }
    let three = |a, b, c| Some(vec![("10.0.1.1", a), ("10.0.1.2", b), ("10.0.1.3", c)]);
    let cases = vec![
        Case {
            name: "iTP Cluster: all endpoints",
            itp: Some("Cluster"),
            endpoints: three(NODE, "node1", "node2"),
            want: to(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
        },
        Case {
            name: "iTP unset is Cluster",
            itp: None,
            endpoints: three(NODE, "node1", "node2"),
            want: to(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]),
        },
        Case {
            name: "iTP Local, one local endpoint",
            itp: Some("Local"),
            endpoints: three(NODE, "node1", "node2"),
            want: to(&["10.0.1.1:80"]),
        },
        Case {
            name: "iTP Local, two local endpoints",
            itp: Some("Local"),
            endpoints: three(NODE, NODE, "node2"),
            want: to(&["10.0.1.1:80", "10.0.1.2:80"]),
        },
        Case {
            name: "iTP Local, no local endpoint of three: DROP",
            itp: Some("Local"),
            endpoints: three("node1", "node1", "node2"),
            want: Served::Drop,
        },
        Case {
            name: "iTP Local, slice deleted: REJECT",
            itp: Some("Local"),
            endpoints: None,
            want: Served::Reject,
        },
    ];
    for case in cases {
        let mut b = service("ns1", "svc1", "172.30.1.1").port("", "TCP", 80);
        if let Some(p) = case.itp {
            b = b.itp(p);
        }
        let slices = case
            .endpoints
            .map(|eps| {
                let mut s = slice("ns1", "svc1-abc", "svc1", "IPv4").port("", "TCP", 80);
                for (ip, node) in eps {
                    s = s.endpoint(ep(ip).node(node));
                }
                vec![s.build()]
            })
            .unwrap_or_default();
        let c = run(vec![b.build()], slices);
        assert_eq!(served(&c, "172.30.1.1:80/TCP"), case.want, "{}", case.name);
        let want_selection = if case.itp == Some("Local") {
            Selection::Local
        } else {
            Selection::Cluster
        };
        assert_eq!(
            frontend_of(&c, "172.30.1.1:80/TCP").set.selection,
            want_selection,
            "{}",
            case.name
        );
    }
}

/// A LoadBalancer Service with eTP Local: ClusterIP 172.30.1.1:80, nodePort
/// 30080, LB IP 1.2.3.4, health check 30000.
fn etp_local_lb(etp: &str) -> Arc<Service> {
    let mut b = service("ns1", "svc1", "172.30.1.1")
        .type_("LoadBalancer")
        .port("", "TCP", 80)
        .node_port(30080)
        .lb_ingress(Some("1.2.3.4"), None)
        .etp(etp);
    if etp == "Local" {
        b = b.health_check_node_port(30000);
    }
    b.build()
}

/// Endpoint states in the terminating tables.
#[derive(Clone, Copy)]
enum St {
    Ready,
    ServingTerminating,
    /// ready=false, serving=false, terminating=true.
    NotServing,
}

fn terminating_slice(eps: &[(&str, bool, St)]) -> Arc<EndpointSliceInfo> {
    let mut s = slice("ns1", "svc1-abc", "svc1", "IPv4").port("", "TCP", 80);
    for (ip, local, st) in eps {
        let e = ep(ip).node(if *local { NODE } else { "host-1" });
        s = s.endpoint(match st {
            St::Ready => e.conds(true, true, false),
            St::ServingTerminating => e.conds(false, true, true),
            St::NotServing => e.conds(false, false, true),
        });
    }
    s.build()
}

/// The Local selection (what an external client of an eTP=Local frontend
/// would get) straight from CategorizeEndpoints on the merged slices.
fn external_local_selection(slices: &[Arc<EndpointSliceInfo>]) -> Served {
    let mut invalid = Vec::new();
    let index = EndpointsIndex::build(slices, NODE, &mut invalid);
    let eps = index
        .get(&svc_ref("ns1", "svc1"), IpFamily::V4)
        .map(|s| s.port("", Protocol::Tcp).to_vec())
        .unwrap_or_default();
    let cat = categorize_endpoints(&eps, PortPolicy::new(false, true, true), NODE, None);
    let local = cat.local.unwrap_or_default();
    if local.is_empty() {
        return if cat.has_any {
            Served::Drop
        } else {
            Served::Reject
        };
    }
    let mut v: Vec<String> = local.iter().map(|e| addr_port(e.ip, e.port)).collect();
    v.sort();
    Served::To(v)
}

/// Reference "Terminating, eTP=Local LB".
#[test]
fn upstream_terminating_external_policy_local() {
    use St::*;
    // (what, endpoints) → (pod → ClusterIP, external → LB, health count)
    type Row = (
        &'static str,
        Vec<(&'static str, bool, St)>,
        Served,
        Served,
        usize,
    );
    let cases: Vec<Row> = vec![
        (
            "ready, terminating and non-serving local endpoints, one remote ready",
            vec![
                ("10.0.1.1", true, Ready),
                ("10.0.1.2", true, Ready),
                ("10.0.1.3", true, ServingTerminating),
                ("10.0.1.4", true, NotServing),
                ("10.0.1.5", false, Ready),
            ],
            to(&["10.0.1.1:80", "10.0.1.2:80", "10.0.1.5:80"]),
            to(&["10.0.1.1:80", "10.0.1.2:80"]),
            2,
        ),
        (
            "only local serving+terminating, one remote ready",
            vec![
                ("10.0.1.2", true, ServingTerminating),
                ("10.0.1.3", true, ServingTerminating),
                ("10.0.1.4", true, NotServing),
                ("10.0.1.5", false, Ready),
            ],
            to(&["10.0.1.5:80"]),
            to(&["10.0.1.2:80", "10.0.1.3:80"]),
            0,
        ),
        (
            "only remote serving+terminating",
            vec![
                ("10.0.1.4", true, NotServing),
                ("10.0.1.5", false, ServingTerminating),
            ],
            to(&["10.0.1.5:80"]),
            Served::Drop,
            0,
        ),
        (
            "only non-serving",
            vec![
                ("10.0.1.4", true, NotServing),
                ("10.0.1.5", false, NotServing),
            ],
            Served::Reject,
            Served::Reject,
            0,
        ),
    ];
    for (what, eps, pod_to_cluster_ip, external_to_lb, health) in cases {
        let slices = vec![terminating_slice(&eps)];
        let c = run(vec![etp_local_lb("Local")], slices.clone());
        assert!(c.invalid.is_empty(), "{what}: {:?}", reasons(&c));
        // Local clients: ClusterIP, and (short-circuited) LB and NodePort.
        assert_eq!(
            served(&c, "172.30.1.1:80/TCP"),
            pod_to_cluster_ip,
            "{what}: ClusterIP"
        );
        assert_eq!(
            served(&c, "1.2.3.4:80/TCP"),
            pod_to_cluster_ip,
            "{what}: LB IP from a pod"
        );
        assert_eq!(
            served(&c, "192.168.0.2:30080/TCP"),
            pod_to_cluster_ip,
            "{what}: NodePort from a pod"
        );
        // External clients would get the Local selection.
        assert_eq!(
            external_local_selection(&slices),
            external_to_lb,
            "{what}: external → LB"
        );
        assert_eq!(
            c.desired.health_checks[&30000].local_endpoints, health,
            "{what}: health"
        );
    }
}

/// Reference "Terminating, eTP=Cluster".
#[test]
fn upstream_terminating_external_policy_cluster() {
    use St::*;
    type Row = (&'static str, Vec<(&'static str, bool, St)>, Served);
    let cases: Vec<Row> = vec![
        (
            "ready endpoints exist: ready only",
            vec![
                ("10.0.1.1", true, Ready),
                ("10.0.1.2", false, Ready),
                ("10.0.1.3", true, ServingTerminating),
                ("10.0.1.4", false, ServingTerminating),
                ("10.0.1.5", true, NotServing),
            ],
            to(&["10.0.1.1:80", "10.0.1.2:80"]),
        ),
        (
            "all terminating: every serving+terminating, local and remote",
            vec![
                ("10.0.1.3", true, ServingTerminating),
                ("10.0.1.4", false, ServingTerminating),
                ("10.0.1.5", true, NotServing),
            ],
            to(&["10.0.1.3:80", "10.0.1.4:80"]),
        ),
        (
            "none serving: REJECT",
            vec![
                ("10.0.1.5", true, NotServing),
                ("10.0.1.6", false, NotServing),
            ],
            Served::Reject,
        ),
    ];
    for (what, eps, want) in cases {
        let c = run(vec![etp_local_lb("Cluster")], vec![terminating_slice(&eps)]);
        for frontend in [
            "172.30.1.1:80/TCP",
            "1.2.3.4:80/TCP",
            "192.168.0.2:30080/TCP",
            "127.0.0.1:30080/TCP",
        ] {
            assert_eq!(served(&c, frontend), want, "{what}: {frontend}");
        }
        assert!(c.desired.health_checks.is_empty(), "{what}");
    }
}

/// Reference "Topology", through the whole model: hints read from slices,
/// the zone from the node.
#[test]
fn upstream_topology_through_compute() {
    let hinted = |ready6: bool| {
        slice("ns1", "svc1-abc", "svc1", "IPv4")
            .port("", "TCP", 80)
            .endpoint(
                ep("10.1.2.3")
                    .zone_hints(&["zone-a"])
                    .node_hints(&[NODE])
                    .local(),
            )
            .endpoint(
                ep("10.1.2.4")
                    .zone_hints(&["zone-b"])
                    .node_hints(&["node-2"])
                    .local(),
            )
            .endpoint(
                ep("10.1.2.5")
                    .zone_hints(&["zone-c"])
                    .node_hints(&["node-3"]),
            )
            .endpoint(
                ep("10.1.2.6")
                    .zone_hints(&["zone-a"])
                    .node_hints(&["node-4"])
                    .conds(ready6, ready6, false),
            )
            .build()
    };
    let zone_only = slice("ns1", "svc1-abc", "svc1", "IPv4")
        .port("", "TCP", 80)
        .endpoint(ep("10.1.2.3").zone_hints(&["zone-a"]).local())
        .endpoint(ep("10.1.2.4").zone_hints(&["zone-b"]).local())
        .endpoint(ep("10.1.2.5").zone_hints(&["zone-c"]))
        .endpoint(ep("10.1.2.6").zone_hints(&["zone-a"]))
        .build();
    let node_in = |zone: Option<&str>, name: &str| NodeInfo {
        name: name.into(),
        addresses: vec![ip("192.168.0.2")],
        zone: zone.map(Into::into),
        external_ip_cidrs: Vec::new(),
    };
    let cases: Vec<(&str, NodeInfo, Arc<EndpointSliceInfo>, Served)> = vec![
        (
            "zone-a node, zone hints",
            node_in(Some("zone-a"), NODE),
            zone_only.clone(),
            to(&["10.1.2.3:80", "10.1.2.6:80"]),
        ),
        (
            "no zone label: no filtering",
            node_in(None, NODE),
            zone_only.clone(),
            to(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
        ),
        (
            "zone nobody is hinted for: no filtering",
            node_in(Some("zone-z"), NODE),
            zone_only.clone(),
            to(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"]),
        ),
        (
            "PreferSameNode: hinted for this node",
            node_in(Some("zone-a"), NODE),
            hinted(true),
            to(&["10.1.2.3:80"]),
        ),
        (
            "node hints for other nodes only: zone mode",
            node_in(Some("zone-a"), "node-9"),
            hinted(true),
            to(&["10.1.2.3:80", "10.1.2.6:80"]),
        ),
        (
            "zone mode ignores an unready zone-a endpoint",
            node_in(Some("zone-a"), "node-9"),
            hinted(false),
            to(&["10.1.2.3:80"]),
        ),
    ];
    for (what, node, s, want) in cases {
        let c = run_on(
            &node,
            vec![
                service("ns1", "svc1", "172.30.1.1")
                    .port("", "TCP", 80)
                    .build(),
            ],
            vec![s],
        );
        assert_eq!(served(&c, "172.30.1.1:80/TCP"), want, "{what}");
    }

    // eTP=Local with hints: cluster {.3,.6} for every local client, local
    // {.3,.4} for external clients, health counts the two local ones.
    let c = run_on(
        &node_in(Some("zone-a"), NODE),
        vec![etp_local_lb("Local")],
        vec![zone_only.clone()],
    );
    let cluster = to(&["10.1.2.3:80", "10.1.2.6:80"]);
    assert_eq!(served(&c, "172.30.1.1:80/TCP"), cluster);
    assert_eq!(served(&c, "1.2.3.4:80/TCP"), cluster);
    assert_eq!(
        external_local_selection(&[zone_only]),
        to(&["10.1.2.3:80", "10.1.2.4:80"])
    );
    assert_eq!(c.desired.health_checks[&30000].local_endpoints, 2);
}

/// Reference "Health count".
#[test]
fn upstream_health_check_count() {
    let two_slices = vec![
        slice("ns1", "svc1-a", "svc1", "IPv4")
            .port("a", "TCP", 80)
            .port("b", "TCP", 81)
            .endpoint(ep("10.1.1.2").local())
            .endpoint(ep("10.1.1.4").local())
            .build(),
        slice("ns1", "svc1-b", "svc1", "IPv4")
            .port("a", "TCP", 80)
            .port("b", "TCP", 81)
            .endpoint(ep("10.1.1.2").local())
            .endpoint(ep("10.1.1.4").local())
            .endpoint(ep("10.1.1.9").node("node1"))
            .build(),
    ];
    let three_and_unready = vec![
        slice("ns1", "svc1-a", "svc1", "IPv4")
            .port("a", "TCP", 80)
            .endpoint(ep("10.0.1.1").local())
            .endpoint(ep("10.0.1.2").local())
            .endpoint(ep("10.0.1.3").local())
            .endpoint(ep("10.0.1.4").local().conds(false, false, false))
            .build(),
    ];
    let all_terminating = vec![
        slice("ns1", "svc1-a", "svc1", "IPv4")
            .port("a", "TCP", 80)
            .endpoint(ep("10.0.1.1").local().conds(false, true, true))
            .endpoint(ep("10.0.1.2").local().conds(false, true, true))
            .build(),
    ];
    let cases = vec![
        ("two slices, two ports, two local IPs", two_slices, 2),
        ("three local ready, one not ready", three_and_unready, 3),
        ("all ready=false", all_terminating, 0),
        ("no slices", vec![], 0),
    ];
    for (what, slices, want) in cases {
        let svc = service("ns1", "svc1", "172.30.1.1")
            .type_("LoadBalancer")
            .port("a", "TCP", 80)
            .node_port(30080)
            .port("b", "TCP", 81)
            .node_port(30081)
            .etp("Local")
            .health_check_node_port(30000)
            .build();
        let c = run(vec![svc], slices);
        assert_eq!(
            c.desired.health_checks.get(&30000),
            Some(&HealthCheck {
                service: svc_ref("ns1", "svc1"),
                node_port: 30000,
                local_endpoints: want
            }),
            "{what}"
        );
    }
}

// ---------------------------------------------------------------------------
// One table per rule

#[test]
fn services_kube_proxy_skips_get_nothing() {
    let lb = |b: ServiceBuilder, ty: &str| {
        b.type_(ty)
            .port("p", "TCP", 80)
            .node_port(30080)
            .etp("Local")
            .health_check_node_port(30000)
            .external_ips(&["1.2.3.4"])
            .lb_ingress(Some("5.6.7.8"), None)
            .build()
    };
    let cases: Vec<(&str, Arc<Service>)> = vec![
        (
            "clusterIP None",
            lb(service("ns", "s", "None"), "LoadBalancer"),
        ),
        (
            "clusterIP empty",
            lb(service("ns", "s", ""), "LoadBalancer"),
        ),
        (
            "ExternalName with a clusterIP",
            lb(service("ns", "s", "172.30.0.1"), "ExternalName"),
        ),
        (
            "service-proxy-name label",
            lb(
                service("ns", "s", "172.30.0.1")
                    .label("service.kubernetes.io/service-proxy-name", "x"),
                "LoadBalancer",
            ),
        ),
        (
            "headless label",
            lb(
                service("ns", "s", "172.30.0.1").label("service.kubernetes.io/headless", ""),
                "LoadBalancer",
            ),
        ),
    ];
    for (what, svc) in cases {
        let s = slice("ns", "s-1", "s", "IPv4")
            .port("p", "TCP", 80)
            .endpoint(ep("10.0.0.1").local())
            .build();
        let c = run(vec![svc], vec![s]);
        assert_eq!(c.desired, DesiredState::default(), "{what}");
        assert!(c.invalid.is_empty(), "{what}: {:?}", reasons(&c));
    }
    // Control: without the skip reason the same Service is served.
    let c = run(
        vec![lb(service("ns", "s", "172.30.0.1"), "LoadBalancer")],
        vec![
            slice("ns", "s-1", "s", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.1").local())
                .build(),
        ],
    );
    assert_eq!(served(&c, "5.6.7.8:80/TCP"), to(&["10.0.0.1:80"]));
    assert_eq!(c.desired.health_checks.len(), 1);
}

#[test]
fn endpoints_attach_by_port_name_and_protocol_never_number() {
    let c = run(
        vec![
            service("ns", "s", "172.30.0.1")
                .port("a", "TCP", 80)
                .port("b", "UDP", 80)
                .port("c", "TCP", 81)
                .port("", "UDP", 82)
                .build(),
        ],
        vec![
            slice("ns", "s-1", "s", "IPv4")
                .port("a", "TCP", 8080)
                .port("b", "UDP", 8081)
                // Same number as service port "c" but another name.
                .port("x", "TCP", 81)
                // Name "a" but UDP: not service port "a".
                .port("a", "UDP", 9999)
                // Unnamed, nil protocol (defaults to TCP): not the UDP port.
                .raw_port(None, None, Some(82))
                .endpoint(ep("10.0.0.1"))
                .build(),
        ],
    );
    assert_served(
        &c,
        &[
            ("172.30.0.1:80/TCP", to(&["10.0.0.1:8080"])),
            ("172.30.0.1:80/UDP", to(&["10.0.0.1:8081"])),
            ("172.30.0.1:81/TCP", Served::Reject),
            ("172.30.0.1:82/UDP", Served::Reject),
        ],
        "by name and protocol",
    );
    // TCP and UDP of one number are independent sets.
    assert_ne!(
        frontend_of(&c, "172.30.0.1:80/TCP").set,
        frontend_of(&c, "172.30.0.1:80/UDP").set
    );
}

#[test]
fn named_target_port_resolves_per_endpoint() {
    let c = run(
        vec![
            service("ns", "s", "172.30.0.1")
                .port("http", "TCP", 80)
                .target_name("web")
                .build(),
        ],
        vec![
            slice("ns", "s-1", "s", "IPv4")
                .port("http", "TCP", 8080)
                .endpoint(ep("10.0.0.1"))
                .endpoint(ep("10.0.0.2"))
                .build(),
            slice("ns", "s-2", "s", "IPv4")
                .port("http", "TCP", 9090)
                .endpoint(ep("10.0.0.3"))
                .build(),
        ],
    );
    assert_eq!(
        served(&c, "172.30.0.1:80/TCP"),
        to(&["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:9090"])
    );
}

#[test]
fn slices_are_merged_and_duplicates_keep_the_non_terminating_copy() {
    // (what, slices) → (backend, terminating) of the ClusterIP.
    type Row = (
        &'static str,
        Vec<Arc<EndpointSliceInfo>>,
        Vec<(&'static str, bool)>,
    );
    let cases: Vec<Row> = vec![
        (
            "two slices, disjoint",
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1"))
                    .build(),
                slice("ns", "s-2", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.2"))
                    .build(),
            ],
            vec![("10.0.0.1:80", false), ("10.0.0.2:80", false)],
        ),
        (
            "IP reused: terminating old pod in one slice, new ready pod in another",
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1").conds(false, true, true))
                    .endpoint(ep("10.0.0.2").conds(false, true, true))
                    .build(),
                slice("ns", "s-2", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1").conds(true, true, false))
                    .build(),
            ],
            // Ready exists, so only ready: and .1 is the ready copy.
            vec![("10.0.0.1:80", false)],
        ),
        (
            "ready copy first, terminating copy second",
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1").conds(true, true, false))
                    .build(),
                slice("ns", "s-2", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1").conds(false, true, true))
                    .build(),
            ],
            vec![("10.0.0.1:80", false)],
        ),
    ];
    for (what, slices, want) in cases {
        let c = run(
            vec![
                service("ns", "s", "172.30.0.1")
                    .port("p", "TCP", 80)
                    .build(),
            ],
            slices,
        );
        let got: Vec<(String, bool)> = set_of(&c, "172.30.0.1:80/TCP")
            .backends
            .iter()
            .map(|b| (addr_port(b.ip, b.port), b.terminating))
            .collect();
        let want: Vec<(String, bool)> = want.iter().map(|(a, t)| (a.to_string(), *t)).collect();
        assert_eq!(got, want, "{what}");
    }
}

#[test]
fn backends_are_sorted_deduplicated_and_flagged() {
    let c = run(
        vec![
            service("ns", "s", "172.30.0.1")
                .port("p", "TCP", 80)
                .build(),
        ],
        vec![
            slice("ns", "s-2", "s", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.9").node("node1"))
                .endpoint(ep("10.0.0.10").local())
                .endpoint(ep("10.0.0.2"))
                .build(),
            slice("ns", "s-1", "s", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.2"))
                .endpoint(ep("10.0.0.10").local())
                .build(),
        ],
    );
    let backends = &set_of(&c, "172.30.0.1:80/TCP").backends;
    let got: Vec<(IpAddr, bool, bool)> = backends
        .iter()
        .map(|b| (b.ip, b.local, b.terminating))
        .collect();
    assert_eq!(
        got,
        [
            (ip("10.0.0.2"), false, false),
            (ip("10.0.0.9"), false, false),
            (ip("10.0.0.10"), true, false),
        ]
    );
    // Only-terminating: flagged terminating.
    let c = run(
        vec![
            service("ns", "s", "172.30.0.1")
                .port("p", "TCP", 80)
                .build(),
        ],
        vec![
            slice("ns", "s-1", "s", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.1").local().conds(false, true, true))
                .build(),
        ],
    );
    assert_eq!(
        set_of(&c, "172.30.0.1:80/TCP").backends,
        [Backend {
            ip: ip("10.0.0.1"),
            port: 80,
            protocol: Protocol::Tcp,
            terminating: true,
            local: true
        }]
    );
}

#[test]
fn missing_conditions_and_locality_through_compute() {
    // (conditions, nodeName) → served from the iTP=Local ClusterIP.
    type Conds = (Option<bool>, Option<bool>, Option<bool>);
    let cases: Vec<(&str, Option<Conds>, Option<&str>, Served)> = vec![
        (
            "no conditions, local",
            None,
            Some(NODE),
            to(&["10.0.0.1:80"]),
        ),
        (
            "empty conditions, local",
            Some((None, None, None)),
            Some(NODE),
            to(&["10.0.0.1:80"]),
        ),
        ("no nodeName is remote", None, None, Served::Drop),
        ("other node", None, Some("node1"), Served::Drop),
        // serving nil reads as true: a terminating endpoint is a fallback.
        (
            "terminating, serving nil",
            Some((Some(false), None, Some(true))),
            Some(NODE),
            to(&["10.0.0.1:80"]),
        ),
        (
            "not ready, not terminating",
            Some((Some(false), None, None)),
            Some(NODE),
            Served::Reject,
        ),
    ];
    for (what, conds, node_name, want) in cases {
        let mut e = ep("10.0.0.1");
        if let Some((r, s, t)) = conds {
            e = e.conds_opt(r, s, t);
        }
        e.node_name = node_name.map(Into::into);
        let c = run(
            vec![
                service("ns", "s", "172.30.0.1")
                    .port("p", "TCP", 80)
                    .itp("Local")
                    .build(),
            ],
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(e)
                    .build(),
            ],
        );
        assert_eq!(served(&c, "172.30.0.1:80/TCP"), want, "{what}");
    }
}

#[test]
fn dual_stack_is_computed_per_family() {
    let node = NodeInfo {
        name: NODE.into(),
        addresses: vec![ip("192.168.0.2"), ip("fd00::2")],
        zone: None,
        external_ip_cidrs: Vec::new(),
    };
    let dual = service("ns", "dual", "172.30.0.1")
        .families(&["IPv4", "IPv6"], &["172.30.0.1", "fd00:30::1"])
        .type_("LoadBalancer")
        .port("p", "TCP", 80)
        .node_port(30080)
        .external_ips(&["1.2.3.4", "2001:db8::4"])
        .lb_ingress(Some("5.6.7.8"), None)
        .lb_ingress(Some("2001:db8::8"), None)
        .build();
    // Single-stack IPv4: its IPv6 externalIP and LB IP are not served, nor
    // are NodePorts on IPv6 addresses.
    let single = service("ns", "single", "172.30.0.2")
        .families(&["IPv4"], &["172.30.0.2"])
        .type_("LoadBalancer")
        .port("p", "TCP", 80)
        .node_port(30081)
        .external_ips(&["2001:db8::5"])
        .lb_ingress(Some("2001:db8::9"), None)
        .build();
    let slices = vec![
        slice("ns", "dual-v4", "dual", "IPv4")
            .port("p", "TCP", 8080)
            .endpoint(ep("10.0.0.1"))
            .build(),
        slice("ns", "dual-v6", "dual", "IPv6")
            .port("p", "TCP", 8080)
            .endpoint(ep("fd00:10::1"))
            .build(),
        slice("ns", "single-v6", "single", "IPv6")
            .port("p", "TCP", 8080)
            .endpoint(ep("fd00:10::2"))
            .build(),
        slice("ns", "single-v4", "single", "IPv4")
            .port("p", "TCP", 8080)
            .endpoint(ep("10.0.0.2"))
            .build(),
    ];
    let c = run_on(&node, vec![dual, single], slices);
    assert!(c.invalid.is_empty(), "{:?}", reasons(&c));
    let v4 = to(&["10.0.0.1:8080"]);
    let v6 = to(&["[fd00:10::1]:8080"]);
    let single_v4 = to(&["10.0.0.2:8080"]);
    assert_served(
        &c,
        &[
            ("172.30.0.1:80/TCP", v4.clone()),
            ("1.2.3.4:80/TCP", v4.clone()),
            ("5.6.7.8:80/TCP", v4.clone()),
            ("192.168.0.2:30080/TCP", v4.clone()),
            ("127.0.0.1:30080/TCP", v4),
            ("[fd00:30::1]:80/TCP", v6.clone()),
            ("[2001:db8::4]:80/TCP", v6.clone()),
            ("[2001:db8::8]:80/TCP", v6.clone()),
            ("[fd00::2]:30080/TCP", v6.clone()),
            ("[::1]:30080/TCP", v6),
            ("172.30.0.2:80/TCP", single_v4.clone()),
            ("192.168.0.2:30081/TCP", single_v4),
            ("[2001:db8::5]:80/TCP", Served::Unknown),
            ("[2001:db8::9]:80/TCP", Served::Unknown),
            ("[fd00::2]:30081/TCP", Served::Unknown),
            ("[::1]:30081/TCP", Served::Unknown),
        ],
        "dual stack",
    );
    assert_eq!(
        frontend_of(&c, "[fd00:30::1]:80/TCP").set.family,
        IpFamily::V6
    );
    assert_eq!(c.desired.frontends.len(), 10 + 3);
}

#[test]
fn frontends_by_service_type() {
    let node = NodeInfo {
        name: NODE.into(),
        addresses: vec![ip("192.168.0.2"), ip("10.10.0.2")],
        zone: None,
        external_ip_cidrs: Vec::new(),
    };
    // (type, has nodePort) → expected frontend kinds.
    let cases: Vec<(&str, Vec<(&str, FrontendKind)>)> = vec![
        (
            "ClusterIP",
            vec![
                ("172.30.0.1:80/TCP", FrontendKind::ClusterIp),
                ("1.2.3.4:80/TCP", FrontendKind::ExternalIp),
                ("5.6.7.8:80/TCP", FrontendKind::LoadBalancer),
            ],
        ),
        (
            "NodePort",
            vec![
                ("172.30.0.1:80/TCP", FrontendKind::ClusterIp),
                ("192.168.0.2:30080/TCP", FrontendKind::NodePort),
                ("10.10.0.2:30080/TCP", FrontendKind::NodePort),
                ("127.0.0.1:30080/TCP", FrontendKind::NodePort),
                ("1.2.3.4:80/TCP", FrontendKind::ExternalIp),
                ("5.6.7.8:80/TCP", FrontendKind::LoadBalancer),
            ],
        ),
        (
            "LoadBalancer",
            vec![
                ("172.30.0.1:80/TCP", FrontendKind::ClusterIp),
                ("192.168.0.2:30080/TCP", FrontendKind::NodePort),
                ("10.10.0.2:30080/TCP", FrontendKind::NodePort),
                ("127.0.0.1:30080/TCP", FrontendKind::NodePort),
                ("1.2.3.4:80/TCP", FrontendKind::ExternalIp),
                ("5.6.7.8:80/TCP", FrontendKind::LoadBalancer),
            ],
        ),
    ];
    for (ty, want) in cases {
        let svc = service("ns", "s", "172.30.0.1")
            .type_(ty)
            .port("p", "TCP", 80)
            .node_port(30080)
            .external_ips(&["1.2.3.4"])
            .lb_ingress(Some("5.6.7.8"), None)
            .build();
        let c = run_on(&node, vec![svc], vec![]);
        let got: Vec<(String, FrontendKind)> = c
            .desired
            .frontends
            .iter()
            .map(|(a, f)| (a.to_string(), f.kind))
            .collect();
        let mut want: Vec<(String, FrontendKind)> =
            want.iter().map(|(a, k)| (fe(a).to_string(), *k)).collect();
        want.sort_by_key(|(a, _)| fe(a));
        assert_eq!(got, want, "{ty}");
        let want_node_ports: BTreeSet<(u16, Protocol)> = if ty == "ClusterIP" {
            BTreeSet::new()
        } else {
            [(30080, Protocol::Tcp)].into()
        };
        assert_eq!(c.desired.node_ports, want_node_ports, "{ty}");
    }
}

#[test]
fn node_ports_for_tcp_and_udp_on_one_number_are_two_frontends() {
    let c = run(
        vec![
            service("ns", "s", "172.30.0.1")
                .type_("NodePort")
                .port("tcp", "TCP", 53)
                .node_port(30053)
                .port("udp", "UDP", 53)
                .node_port(30053)
                .build(),
        ],
        vec![
            slice("ns", "s-1", "s", "IPv4")
                .port("tcp", "TCP", 53)
                .port("udp", "UDP", 53)
                .endpoint(ep("10.0.0.1"))
                .build(),
        ],
    );
    assert!(c.invalid.is_empty(), "{:?}", reasons(&c));
    assert_eq!(
        c.desired.node_ports,
        [(30053, Protocol::Tcp), (30053, Protocol::Udp)].into()
    );
    assert_eq!(served(&c, "192.168.0.2:30053/TCP"), to(&["10.0.0.1:53"]));
    assert_eq!(served(&c, "192.168.0.2:30053/UDP"), to(&["10.0.0.1:53"]));
}

#[test]
fn load_balancer_ingress_ip_mode_table() {
    let cases: Vec<(Option<&str>, Option<&str>, bool)> = vec![
        (Some("5.6.7.8"), None, true),
        (Some("5.6.7.8"), Some("VIP"), true),
        (Some("5.6.7.8"), Some("Proxy"), false),
        (None, None, false),
    ];
    for (lb_ip, mode, want) in cases {
        let mut svc = service("ns", "s", "172.30.0.1")
            .type_("LoadBalancer")
            .port("p", "TCP", 80);
        svc = svc.lb_ingress(lb_ip, mode);
        let c = run(vec![svc.build()], vec![]);
        let lb_frontends = c
            .desired
            .frontends
            .values()
            .filter(|f| f.kind == FrontendKind::LoadBalancer)
            .count();
        assert_eq!(lb_frontends, usize::from(want), "{lb_ip:?} {mode:?}");
        if want {
            assert_eq!(served(&c, "5.6.7.8:80/TCP"), Served::Reject);
        }
    }
}

#[test]
fn lenient_ip_parsing_in_objects() {
    let c = run(
        vec![
            service("ns", "s", "172.30.0.041")
                .port("p", "TCP", 80)
                .external_ips(&["1.2.3.004"])
                .lb_ingress(Some("5.6.7.008"), None)
                .build(),
        ],
        vec![
            slice("ns", "s-1", "s", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.01"))
                .build(),
        ],
    );
    assert!(c.invalid.is_empty(), "{:?}", reasons(&c));
    for frontend in ["172.30.0.41:80/TCP", "1.2.3.4:80/TCP", "5.6.7.8:80/TCP"] {
        assert_eq!(served(&c, frontend), to(&["10.0.0.1:80"]), "{frontend}");
    }
}

#[test]
fn traffic_policies_for_local_clients() {
    // (iTP, eTP) → (ClusterIP selection, external selection, ClusterIP
    // served, NodePort served). Endpoints: .1 local, .2 remote.
    let both = to(&["10.0.0.1:80", "10.0.0.2:80"]);
    let local = to(&["10.0.0.1:80"]);
    let cases: Vec<(&str, &str, Selection, Served, Served)> = vec![
        (
            "Cluster",
            "Cluster",
            Selection::Cluster,
            both.clone(),
            both.clone(),
        ),
        // eTP Local is short-circuited for local clients.
        (
            "Cluster",
            "Local",
            Selection::Cluster,
            both.clone(),
            both.clone(),
        ),
        // iTP applies to the ClusterIP only.
        (
            "Local",
            "Cluster",
            Selection::Local,
            local.clone(),
            both.clone(),
        ),
        ("Local", "Local", Selection::Local, local, both),
    ];
    for (itp, etp, cluster_ip_selection, cluster_ip_served, node_port_served) in cases {
        let mut b = service("ns", "s", "172.30.0.1")
            .type_("LoadBalancer")
            .port("p", "TCP", 80)
            .node_port(30080)
            .external_ips(&["1.2.3.4"])
            .lb_ingress(Some("5.6.7.8"), None)
            .itp(itp)
            .etp(etp);
        if etp == "Local" {
            b = b.health_check_node_port(30000);
        }
        let c = run(
            vec![b.build()],
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1").local())
                    .endpoint(ep("10.0.0.2").node("node1"))
                    .build(),
            ],
        );
        let what = format!("iTP {itp} eTP {etp}");
        let cip = frontend_of(&c, "172.30.0.1:80/TCP");
        assert_eq!(cip.set.selection, cluster_ip_selection, "{what}");
        assert_eq!(served(&c, "172.30.0.1:80/TCP"), cluster_ip_served, "{what}");
        let external = [
            "192.168.0.2:30080/TCP",
            "127.0.0.1:30080/TCP",
            "1.2.3.4:80/TCP",
            "5.6.7.8:80/TCP",
        ];
        for frontend in external {
            let f = frontend_of(&c, frontend);
            assert_eq!(f.set.selection, Selection::Cluster, "{what}: {frontend}");
            assert_eq!(served(&c, frontend), node_port_served, "{what}: {frontend}");
            // With iTP Cluster every frontend shares the ClusterIP's set.
            assert_eq!(f.set == cip.set, itp == "Cluster", "{what}: {frontend}");
        }
        let want_sets = if itp == "Cluster" { 1 } else { 2 };
        assert_eq!(c.desired.backend_sets.len(), want_sets, "{what}");
    }
}

#[test]
fn empty_outcome_table() {
    // (iTP, endpoints) → outcome on the ClusterIP.
    type Row = (
        &'static str,
        Option<&'static str>,
        Vec<Arc<EndpointSliceInfo>>,
        Served,
    );
    let cases: Vec<Row> = vec![
        ("no slice", None, vec![], Served::Reject),
        (
            "slice without endpoints",
            None,
            vec![slice("ns", "s-1", "s", "IPv4").port("p", "TCP", 80).build()],
            Served::Reject,
        ),
        (
            "only unready endpoints",
            None,
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1").conds(false, false, false))
                    .build(),
            ],
            Served::Reject,
        ),
        (
            "iTP Local, only remote endpoints",
            Some("Local"),
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1"))
                    .build(),
            ],
            Served::Drop,
        ),
        (
            "iTP Local, only remote serving+terminating",
            Some("Local"),
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1").conds(false, true, true))
                    .build(),
            ],
            Served::Drop,
        ),
        (
            "iTP Local, only unready local",
            Some("Local"),
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1").local().conds(false, false, false))
                    .build(),
            ],
            Served::Reject,
        ),
    ];
    for (what, itp, slices, want) in cases {
        let mut b = service("ns", "s", "172.30.0.1").port("p", "TCP", 80);
        if let Some(p) = itp {
            b = b.itp(p);
        }
        let c = run(vec![b.build()], slices);
        assert_eq!(served(&c, "172.30.0.1:80/TCP"), want, "{what}");
    }
}

#[test]
fn session_affinity_applies_to_every_set_of_the_service() {
    let cases: Vec<(&str, ServiceBuilder, Option<Option<u32>>)> = vec![
        ("none", service("ns", "s", "172.30.0.1"), Some(None)),
        (
            "ClientIP default",
            service("ns", "s", "172.30.0.1").affinity(None),
            Some(Some(10_800)),
        ),
        (
            "ClientIP 300",
            service("ns", "s", "172.30.0.1").affinity(Some(300)),
            Some(Some(300)),
        ),
        (
            "ClientIP 86400",
            service("ns", "s", "172.30.0.1").affinity(Some(86_400)),
            Some(Some(86_400)),
        ),
        (
            "ClientIP 86401: invalid",
            service("ns", "s", "172.30.0.1").affinity(Some(86_401)),
            None,
        ),
    ];
    for (what, b, want) in cases {
        let svc = b
            .type_("NodePort")
            .itp("Local")
            .port("a", "TCP", 80)
            .node_port(30080)
            .port("b", "UDP", 81)
            .build();
        let c = run(vec![svc], vec![]);
        match want {
            Some(timeout) => {
                assert!(c.invalid.is_empty(), "{what}");
                assert_eq!(c.desired.backend_sets.len(), 3, "{what}");
                for (key, set) in &c.desired.backend_sets {
                    assert_eq!(set.affinity_timeout_secs, timeout, "{what}: {key}");
                }
            }
            None => {
                assert!(c.desired.frontends.is_empty(), "{what}");
                assert_eq!(
                    reasons(&c),
                    [
                        "Service ns/s: sessionAffinityConfig.clientIP.timeoutSeconds 86401 is out of range 1-86400"
                    ],
                    "{what}"
                );
            }
        }
    }
}

#[test]
fn health_checks_table() {
    // (type, eTP, hc port) → health check present.
    let cases: Vec<(&str, &str, Option<i32>, bool)> = vec![
        ("LoadBalancer", "Local", Some(30000), true),
        ("LoadBalancer", "Cluster", Some(30000), false),
        ("NodePort", "Local", Some(30000), false),
        ("ClusterIP", "Local", Some(30000), false),
        ("LoadBalancer", "Local", None, false),
    ];
    for (ty, etp, hc, want) in cases {
        let mut b = service("ns", "s", "172.30.0.1")
            .type_(ty)
            .port("p", "TCP", 80)
            .node_port(30080)
            .etp(etp);
        if let Some(hc) = hc {
            b = b.health_check_node_port(hc);
        }
        let c = run(
            vec![b.build()],
            vec![
                slice("ns", "s-1", "s", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1").local())
                    .build(),
            ],
        );
        let want_map: Vec<(u16, HealthCheck)> = if want {
            vec![(
                30000,
                HealthCheck {
                    service: svc_ref("ns", "s"),
                    node_port: 30000,
                    local_endpoints: 1,
                },
            )]
        } else {
            vec![]
        };
        assert_eq!(
            c.desired
                .health_checks
                .clone()
                .into_iter()
                .collect::<Vec<_>>(),
            want_map,
            "{ty} {etp} {hc:?}"
        );
        // The health check port is not a NodePort.
        assert!(!c.desired.node_ports.contains(&(30000, Protocol::Tcp)));
        // The Service is served either way.
        assert_eq!(
            served(&c, "172.30.0.1:80/TCP"),
            to(&["10.0.0.1:80"]),
            "{ty} {etp} {hc:?}"
        );
    }
}

#[test]
fn cluster_ips_and_node_ports_are_listed() {
    let c = run(
        vec![
            service("ns", "a", "172.30.0.1")
                .families(&["IPv4", "IPv6"], &["172.30.0.1", "fd00:30::1"])
                .type_("NodePort")
                .port("x", "TCP", 80)
                .node_port(30080)
                .port("y", "UDP", 53)
                .node_port(30053)
                .build(),
            service("ns", "b", "172.30.0.2")
                .itp("Local")
                .port("z", "TCP", 80)
                .build(),
            // No valid port: its ClusterIP has no set to point at.
            service("ns", "c", "172.30.0.3")
                .port("bad", "SCTP", 80)
                .build(),
        ],
        vec![],
    );
    let got: Vec<(IpAddr, String)> = c
        .desired
        .cluster_ips
        .iter()
        .map(|(ip, k)| (*ip, k.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (ip("172.30.0.1"), "ns/a:x/TCP".to_string()),
            (ip("172.30.0.2"), "ns/b:z/TCP/local".to_string()),
            (ip("fd00:30::1"), "ns/a:x/TCP/v6".to_string()),
        ]
    );
    assert_eq!(
        c.desired.node_ports,
        [(30053, Protocol::Udp), (30080, Protocol::Tcp)].into()
    );
}

/// Every kind of bad input: reported with its object's identity, that
/// object (or only its bad part) skipped, and the control Service "ns/ok"
/// served exactly as without the bad input.
#[test]
fn invalid_input_is_reported_and_disturbs_nothing_else() {
    let ok_svc = || {
        service("ns", "ok", "172.30.0.100")
            .type_("NodePort")
            .port("p", "TCP", 80)
            .node_port(30100)
            .build()
    };
    let ok_slice = || {
        slice("ns", "ok-1", "ok", "IPv4")
            .port("p", "TCP", 80)
            .endpoint(ep("10.0.0.100"))
            .build()
    };
    let baseline = run(vec![ok_svc()], vec![ok_slice()]);

    struct Case {
        name: &'static str,
        services: Vec<Arc<Service>>,
        slices: Vec<Arc<EndpointSliceInfo>>,
        reasons: Vec<&'static str>,
        /// Frontends of the bad objects that must still be served.
        still: Vec<(&'static str, Served)>,
    }
    let bad_slice = |s: SliceBuilder| vec![s.build()];
    let cases = vec![
        Case {
            name: "invalid ClusterIP",
            services: vec![
                service("ns", "bad", "172.30.0.256")
                    .port("p", "TCP", 80)
                    .build(),
            ],
            slices: vec![],
            reasons: vec!["Service ns/bad: invalid clusterIP \"172.30.0.256\""],
            still: vec![],
        },
        Case {
            name: "service port 0, other port kept",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "TCP", 0)
                    .port("b", "TCP", 81)
                    .build(),
            ],
            slices: vec![],
            reasons: vec!["Service ns/bad: spec.ports[0] (\"a\"): port 0 is out of range 1-65535"],
            still: vec![
                ("172.30.0.1:81/TCP", Served::Reject),
                ("172.30.0.1:0/TCP", Served::RefusedPort),
            ],
        },
        Case {
            name: "service port 65536",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "TCP", 65536)
                    .port("b", "TCP", 81)
                    .build(),
            ],
            slices: vec![],
            reasons: vec![
                "Service ns/bad: spec.ports[0] (\"a\"): port 65536 is out of range 1-65535",
            ],
            still: vec![("172.30.0.1:81/TCP", Served::Reject)],
        },
        Case {
            name: "nodePort out of range",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .type_("NodePort")
                    .port("a", "TCP", 80)
                    .node_port(65536)
                    .port("b", "TCP", 81)
                    .node_port(30081)
                    .build(),
            ],
            slices: vec![],
            reasons: vec![
                "Service ns/bad: spec.ports[0] (\"a\"): nodePort 65536 is out of range 1-65535",
            ],
            still: vec![
                ("172.30.0.1:81/TCP", Served::Reject),
                ("192.168.0.2:30081/TCP", Served::Reject),
            ],
        },
        Case {
            name: "targetPort 0",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "TCP", 80)
                    .target(0)
                    .port("b", "TCP", 81)
                    .build(),
            ],
            slices: vec![],
            reasons: vec![
                "Service ns/bad: spec.ports[0] (\"a\"): targetPort 0 is out of range 1-65535",
            ],
            still: vec![
                ("172.30.0.1:81/TCP", Served::Reject),
                ("172.30.0.1:80/TCP", Served::RefusedPort),
            ],
        },
        Case {
            name: "SCTP",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "SCTP", 80)
                    .port("b", "TCP", 81)
                    .build(),
            ],
            slices: vec![],
            reasons: vec!["Service ns/bad: spec.ports[0] (\"a\"): protocol SCTP is not supported"],
            still: vec![("172.30.0.1:81/TCP", Served::Reject)],
        },
        Case {
            name: "unknown protocol",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "QUIC", 80)
                    .port("b", "TCP", 81)
                    .build(),
            ],
            slices: vec![],
            reasons: vec!["Service ns/bad: spec.ports[0] (\"a\"): unknown protocol \"QUIC\""],
            still: vec![("172.30.0.1:81/TCP", Served::Reject)],
        },
        Case {
            name: "invalid externalIP",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "TCP", 80)
                    .external_ips(&["1.2.3", "1.2.3.4"])
                    .build(),
            ],
            slices: vec![],
            reasons: vec!["Service ns/bad: spec.externalIPs: invalid IP \"1.2.3\""],
            still: vec![("1.2.3.4:80/TCP", Served::Reject)],
        },
        Case {
            name: "endpoint port 0",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "TCP", 80)
                    .port("b", "TCP", 81)
                    .build(),
            ],
            slices: bad_slice(
                slice("ns", "bad-1", "bad", "IPv4")
                    .port("a", "TCP", 0)
                    .port("b", "TCP", 81)
                    .endpoint(ep("10.0.0.1")),
            ),
            reasons: vec![
                "EndpointSlice ns/bad-1: ports[0] (\"a\"): port 0 is out of range 1-65535",
            ],
            still: vec![
                ("172.30.0.1:80/TCP", Served::Reject),
                ("172.30.0.1:81/TCP", to(&["10.0.0.1:81"])),
            ],
        },
        Case {
            name: "endpoint port 70000",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "TCP", 80)
                    .build(),
            ],
            slices: bad_slice(
                slice("ns", "bad-1", "bad", "IPv4")
                    .port("a", "TCP", 70000)
                    .endpoint(ep("10.0.0.1")),
            ),
            reasons: vec![
                "EndpointSlice ns/bad-1: ports[0] (\"a\"): port 70000 is out of range 1-65535",
            ],
            still: vec![("172.30.0.1:80/TCP", Served::Reject)],
        },
        Case {
            name: "invalid endpoint address",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "TCP", 80)
                    .build(),
            ],
            slices: bad_slice(
                slice("ns", "bad-1", "bad", "IPv4")
                    .port("a", "TCP", 80)
                    .endpoint(ep("10.0.0.1.5"))
                    .endpoint(ep("10.0.0.2")),
            ),
            reasons: vec!["EndpointSlice ns/bad-1: endpoints[0]: invalid address \"10.0.0.1.5\""],
            still: vec![("172.30.0.1:80/TCP", to(&["10.0.0.2:80"]))],
        },
        Case {
            name: "unknown traffic policy",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "TCP", 80)
                    .itp("Nearby")
                    .build(),
            ],
            slices: vec![],
            reasons: vec!["Service ns/bad: unknown internalTrafficPolicy \"Nearby\""],
            still: vec![("172.30.0.1:80/TCP", Served::Unknown)],
        },
        Case {
            name: "same Service twice",
            services: vec![
                service("ns", "bad", "172.30.0.1")
                    .port("a", "TCP", 80)
                    .build(),
                service("ns", "bad", "172.30.0.2")
                    .port("a", "TCP", 80)
                    .build(),
            ],
            slices: vec![],
            reasons: vec!["Service ns/bad: defined more than once; every definition is ignored"],
            still: vec![
                ("172.30.0.1:80/TCP", Served::Unknown),
                ("172.30.0.2:80/TCP", Served::Unknown),
            ],
        },
    ];
    for case in cases {
        let mut services = case.services;
        services.push(ok_svc());
        let mut slices = case.slices;
        slices.push(ok_slice());
        let c = run(services, slices);
        assert_eq!(reasons(&c), case.reasons, "{}", case.name);
        for (frontend, want) in &case.still {
            assert_eq!(served(&c, frontend), *want, "{}: {frontend}", case.name);
        }
        // The control Service is untouched.
        for (addr, f) in &baseline.desired.frontends {
            assert_eq!(
                c.desired.frontends.get(addr),
                Some(f),
                "{}: {addr}",
                case.name
            );
            assert_eq!(
                c.desired.backend_sets.get(&f.set),
                baseline.desired.backend_sets.get(&f.set),
                "{}",
                case.name
            );
        }
        assert_eq!(
            served(&c, "172.30.0.100:80/TCP"),
            to(&["10.0.0.100:80"]),
            "{}",
            case.name
        );
    }
}

/// Two Services claiming one frontend: the one sorted later by
/// namespace/name loses that frontend only.
#[test]
fn conflicting_claims_go_to_the_service_sorted_first() {
    struct Case {
        name: &'static str,
        /// Given in reverse order on purpose: sorting decides, not input.
        later: ServiceBuilder,
        earlier: ServiceBuilder,
        reasons: Vec<&'static str>,
        want: Vec<(&'static str, &'static str)>,
    }
    let a = |ip| service("ns", "a", ip).port("p", "TCP", 80);
    let b = |ip| service("ns", "b", ip).port("p", "TCP", 80);
    let cases = vec![
        Case {
            name: "same ClusterIP",
            later: b("172.30.0.1").port("q", "TCP", 81),
            earlier: a("172.30.0.1"),
            reasons: vec!["Service ns/b: clusterIP 172.30.0.1 is already used by Service ns/a"],
            want: vec![("172.30.0.1:80/TCP", "ns/a"), ("172.30.0.1:81/TCP", "-")],
        },
        Case {
            name: "externalIP on another's ClusterIP:port",
            later: b("172.30.0.2").external_ips(&["172.30.0.1", "1.2.3.4"]),
            earlier: a("172.30.0.1"),
            reasons: vec![
                "Service ns/b: externalIP frontend 172.30.0.1:80/TCP is already served by ns/a:p/TCP; not served for this Service",
            ],
            want: vec![
                ("172.30.0.1:80/TCP", "ns/a"),
                ("172.30.0.2:80/TCP", "ns/b"),
                ("1.2.3.4:80/TCP", "ns/b"),
            ],
        },
        Case {
            name: "earlier Service's externalIP beats a later ClusterIP",
            later: b("172.30.0.9"),
            earlier: a("172.30.0.1").external_ips(&["172.30.0.9"]),
            reasons: vec![
                "Service ns/b: ClusterIP frontend 172.30.0.9:80/TCP is already served by ns/a:p/TCP; not served for this Service",
            ],
            want: vec![("172.30.0.9:80/TCP", "ns/a"), ("172.30.0.1:80/TCP", "ns/a")],
        },
        Case {
            name: "same LB IP and port",
            later: b("172.30.0.2")
                .type_("LoadBalancer")
                .lb_ingress(Some("5.6.7.8"), None),
            earlier: a("172.30.0.1")
                .type_("LoadBalancer")
                .lb_ingress(Some("5.6.7.8"), None),
            reasons: vec![
                "Service ns/b: load balancer IP frontend 5.6.7.8:80/TCP is already served by ns/a:p/TCP; not served for this Service",
            ],
            want: vec![("5.6.7.8:80/TCP", "ns/a"), ("172.30.0.2:80/TCP", "ns/b")],
        },
        Case {
            name: "same nodePort",
            later: b("172.30.0.2").type_("NodePort").node_port(30080),
            earlier: a("172.30.0.1").type_("NodePort").node_port(30080),
            reasons: vec![
                "Service ns/b: nodePort 30080/TCP is already used by Service ns/a port \"p\"; not served for this Service",
            ],
            want: vec![
                ("192.168.0.2:30080/TCP", "ns/a"),
                ("127.0.0.1:30080/TCP", "ns/a"),
                ("172.30.0.2:80/TCP", "ns/b"),
            ],
        },
        Case {
            name: "same nodePort number, other protocol: no conflict",
            later: service("ns", "b", "172.30.0.2")
                .port("p", "UDP", 80)
                .type_("NodePort")
                .node_port(30080),
            earlier: a("172.30.0.1").type_("NodePort").node_port(30080),
            reasons: vec![],
            want: vec![
                ("192.168.0.2:30080/TCP", "ns/a"),
                ("192.168.0.2:30080/UDP", "ns/b"),
            ],
        },
        Case {
            name: "health check port taken by an earlier nodePort",
            later: b("172.30.0.2")
                .type_("LoadBalancer")
                .node_port(30081)
                .etp("Local")
                .health_check_node_port(30080),
            earlier: a("172.30.0.1").type_("NodePort").node_port(30080),
            reasons: vec![
                "Service ns/b: healthCheckNodePort 30080 is already used by Service ns/a port \"p\"; no health check",
            ],
            want: vec![
                ("192.168.0.2:30080/TCP", "ns/a"),
                ("192.168.0.2:30081/TCP", "ns/b"),
            ],
        },
        Case {
            name: "nodePort taken by an earlier health check",
            later: b("172.30.0.2").type_("NodePort").node_port(30000),
            earlier: a("172.30.0.1")
                .type_("LoadBalancer")
                .node_port(30080)
                .etp("Local")
                .health_check_node_port(30000),
            reasons: vec![
                "Service ns/b: nodePort 30000/TCP is already used by the health check of Service ns/a; not served for this Service",
            ],
            want: vec![
                ("192.168.0.2:30080/TCP", "ns/a"),
                ("192.168.0.2:30000/TCP", "-"),
                ("172.30.0.2:80/TCP", "ns/b"),
            ],
        },
    ];
    for case in cases {
        let c = run(vec![case.later.build(), case.earlier.build()], vec![]);
        assert_eq!(reasons(&c), case.reasons, "{}", case.name);
        for (frontend, owner) in case.want {
            let got = c
                .desired
                .frontends
                .get(&fe(frontend))
                .map_or("-".to_string(), |f| f.set.service.to_string());
            assert_eq!(got, owner, "{}: {frontend}", case.name);
        }
    }
}

#[test]
fn more_backends_than_a_set_can_hold_skip_that_port() {
    let max = lb_common::capacity::MAX_BACKENDS_PER_SERVICE as usize;
    let many = |n: usize| {
        let mut s = slice("ns", "s-1", "s", "IPv4").port("big", "TCP", 80);
        for i in 0..n {
            let ip = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
            s = s.endpoint(ep(&ip));
        }
        s.build()
    };
    // Just at the limit: served.
    let svc = || {
        service("ns", "s", "172.30.0.1")
            .port("big", "TCP", 80)
            .build()
    };
    let c = run(vec![svc()], vec![many(max)]);
    assert!(c.invalid.is_empty());
    assert_eq!(set_of(&c, "172.30.0.1:80/TCP").backends.len(), max);

    // One more: that port is skipped and reported, the other port served.
    let svc = service("ns", "s", "172.30.0.1")
        .port("big", "TCP", 80)
        .port("small", "TCP", 81)
        .build();
    let small = slice("ns", "s-2", "s", "IPv4")
        .port("small", "TCP", 81)
        .endpoint(ep("10.255.0.1"))
        .build();
    let c = run(vec![svc], vec![many(max + 1), small]);
    assert_eq!(
        reasons(&c),
        [format!(
            "Service ns/s: ns/s:big/TCP: {} backends exceed the limit of {max}; port not served",
            max + 1
        )]
    );
    assert_eq!(served(&c, "172.30.0.1:80/TCP"), Served::RefusedPort);
    assert_eq!(served(&c, "172.30.0.1:81/TCP"), to(&["10.255.0.1:81"]));
}

#[test]
fn result_does_not_depend_on_input_order() {
    let services = vec![
        service("ns", "b", "172.30.0.1")
            .port("p", "TCP", 80)
            .external_ips(&["1.2.3.4"])
            .build(),
        service("ns", "a", "172.30.0.2")
            .port("p", "TCP", 80)
            .external_ips(&["1.2.3.4"])
            .build(),
        service("ns", "c", "172.30.0.3")
            .type_("NodePort")
            .port("p", "TCP", 80)
            .node_port(30080)
            .build(),
        service("other", "a", "172.30.0.4")
            .type_("NodePort")
            .port("p", "TCP", 80)
            .node_port(30080)
            .build(),
        service("ns", "bad", "bogus").port("p", "TCP", 80).build(),
    ];
    let slices = vec![
        slice("ns", "b-2", "b", "IPv4")
            .port("p", "TCP", 80)
            .endpoint(ep("10.0.0.1").conds(true, true, false))
            .build(),
        slice("ns", "b-1", "b", "IPv4")
            .port("p", "TCP", 80)
            .endpoint(ep("10.0.0.1").local().conds(true, true, false))
            .endpoint(ep("10.0.0.2"))
            .build(),
        slice("ns", "a-1", "a", "IPv4")
            .port("p", "TCP", 80)
            .endpoint(ep("10.0.0.3"))
            .build(),
        slice("ns", "bad-1", "a", "IPv4")
            .port("p", "TCP", 0)
            .build(),
    ];
    let forward = run(services.clone(), slices.clone());
    let mut rs = services;
    rs.reverse();
    let mut rsl = slices;
    rsl.reverse();
    let reverse = run(rs, rsl);
    assert_eq!(forward.desired, reverse.desired);
    assert_eq!(forward.invalid, reverse.invalid);
    assert_eq!(forward.invalid.len(), 4, "{:?}", reasons(&forward));
    // Duplicate 10.0.0.1 from two slices: the first slice by name (b-1,
    // local) stays whichever order they came in.
    let b = set_of(&forward, "172.30.0.1:80/TCP");
    assert!(b.backends.iter().any(|x| x.ip == ip("10.0.0.1") && x.local));
}

/// A small deterministic generator of mostly-valid objects sprinkled with
/// hostile values: compute must not panic, must keep its invariants and must
/// not depend on input order, on any of them.
#[test]
fn never_panics_on_arbitrary_input() {
    type Pool<T> = (&'static [T], &'static [T]);
    const CLUSTER_IPS: Pool<&str> = (
        &[
            "172.30.0.1",
            "172.30.0.2",
            "172.30.0.3",
            "172.30.0.4",
            "fd00:30::1",
        ],
        &[
            "",
            "None",
            "1.2.3",
            "300.1.1.1",
            "::ffff:172.30.0.9",
            " 172.30.0.1",
            "x",
            "172.30.0.041",
        ],
    );
    const EXTERNAL_IPS: Pool<&str> = (
        &[
            "1.2.3.4",
            "1.2.3.5",
            "2001:db8::1",
            "192.168.0.2",
            "172.30.0.1",
            "127.0.0.1",
            "::1",
        ],
        &["x", "1.2.3", ""],
    );
    const POD_IPS4: Pool<&str> = (
        &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
        &["x", "10.0.0.256", "", "fd00:10::1"],
    );
    const POD_IPS6: Pool<&str> = (
        &["fd00:10::1", "fd00:10::2"],
        &["x", "fd00::g", "", "10.0.0.1"],
    );
    const FAMILIES: Pool<&str> = (&["IPv4", "IPv6"], &["IPv5", ""]);
    const TYPES: Pool<&str> = (
        &["ClusterIP", "NodePort", "LoadBalancer"],
        &["ExternalName", "Other", ""],
    );
    const PROTOCOLS: Pool<&str> = (&["TCP", "TCP", "TCP", "UDP"], &["SCTP", "tcp", ""]);
    const NUMBERS: Pool<i32> = (
        &[53, 80, 443, 30080, 30081, 65535],
        &[0, 65536, -1, i32::MIN, i32::MAX],
    );
    const TIMEOUTS: Pool<i32> = (&[1, 300, 86_400], &[0, 86_401, -1]);
    const POLICIES: Pool<&str> = (&["Local", "Cluster"], &["Bogus", ""]);
    const ADDRESS_TYPES: Pool<&str> = (&["IPv4", "IPv4", "IPv4", "IPv6"], &["FQDN", "IPv9"]);
    const NAMESPACES: Pool<&str> = (&["ns"], &["ns2", ""]);
    const IP_MODES: Pool<Option<&str>> = (&[None, Some("VIP")], &[Some("Proxy"), Some("X")]);
    let names = ["", "", "a"];
    let nodes = [NODE, NODE, "node1", ""];
    let zones = ["zone-a", "zone-b", ""];

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut with_backends, mut with_invalid) = (0, 0);
    for round in 0..1000 {
        let mut services = Vec::new();
        for i in 0..(1 + rng.next() % 4) {
            let name = format!("s{}", i % 3);
            let cluster_ip = rng.either(CLUSTER_IPS.0, CLUSTER_IPS.1);
            let mut b = service(rng.either(NAMESPACES.0, NAMESPACES.1), &name, cluster_ip);
            if rng.chance(30) {
                // As the API server writes them, or (rarely) incoherent.
                if rng.chance(80) {
                    let family = if cluster_ip.contains(':') {
                        "IPv6"
                    } else {
                        "IPv4"
                    };
                    b = b.families(&[family], &[cluster_ip]);
                } else {
                    let fam: Vec<&str> = (0..rng.next() % 3)
                        .map(|_| rng.either(FAMILIES.0, FAMILIES.1))
                        .collect();
                    let cips: Vec<&str> = (0..rng.next() % 3)
                        .map(|_| rng.either(CLUSTER_IPS.0, CLUSTER_IPS.1))
                        .collect();
                    b = b.families(&fam, &cips);
                }
            }
            if rng.chance(70) {
                b = b.type_(rng.either(TYPES.0, TYPES.1));
            }
            for _ in 0..(1 + rng.next() % 3) {
                b = b.raw_port(
                    rng.chance(90).then(|| rng.pick(&names)),
                    rng.chance(90).then(|| rng.either(PROTOCOLS.0, PROTOCOLS.1)),
                    rng.either(NUMBERS.0, NUMBERS.1),
                );
                if rng.chance(50) {
                    b = b.node_port(rng.either(NUMBERS.0, NUMBERS.1));
                }
                if rng.chance(30) {
                    b = b.target(rng.either(NUMBERS.0, NUMBERS.1));
                }
            }
            if rng.chance(30) {
                let ext: Vec<&str> = (0..rng.next() % 3)
                    .map(|_| rng.either(EXTERNAL_IPS.0, EXTERNAL_IPS.1))
                    .collect();
                b = b.external_ips(&ext);
            }
            if rng.chance(30) {
                b = b.lb_ingress(
                    rng.chance(90)
                        .then(|| rng.either(EXTERNAL_IPS.0, EXTERNAL_IPS.1)),
                    rng.either(IP_MODES.0, IP_MODES.1),
                );
            }
            if rng.chance(30) {
                b = b.itp(rng.either(POLICIES.0, POLICIES.1));
            }
            if rng.chance(30) {
                b = b.etp(rng.either(POLICIES.0, POLICIES.1));
            }
            if rng.chance(30) {
                b = b.health_check_node_port(rng.either(NUMBERS.0, NUMBERS.1));
            }
            if rng.chance(20) {
                b = b.affinity(rng.chance(50).then(|| rng.either(TIMEOUTS.0, TIMEOUTS.1)));
            }
            services.push(b.build());
        }
        let mut slices = Vec::new();
        for i in 0..(1 + rng.next() % 4) {
            let address_type = rng.either(ADDRESS_TYPES.0, ADDRESS_TYPES.1);
            let pod_ips = if address_type == "IPv6" {
                POD_IPS6
            } else {
                POD_IPS4
            };
            let mut s = slice(
                rng.either(NAMESPACES.0, NAMESPACES.1),
                &format!("e{i}"),
                &format!("s{}", rng.next() % 2),
                address_type,
            );
            for _ in 0..(1 + rng.next() % 2) {
                s = s.raw_port(
                    rng.chance(90).then(|| rng.pick(&names)),
                    rng.chance(90).then(|| rng.either(PROTOCOLS.0, PROTOCOLS.1)),
                    rng.chance(95).then(|| rng.either(NUMBERS.0, NUMBERS.1)),
                );
            }
            for _ in 0..(1 + rng.next() % 4) {
                let mut e = ep(rng.either(pod_ips.0, pod_ips.1));
                if rng.chance(5) {
                    e = e.addresses(&[]);
                }
                if rng.chance(70) {
                    e = e.node(rng.pick(&nodes));
                }
                if rng.chance(50) {
                    let b = |r: &mut Rng| {
                        if r.chance(30) {
                            None
                        } else {
                            Some(r.chance(60))
                        }
                    };
                    let (r, sv, t) = (b(&mut rng), b(&mut rng), b(&mut rng));
                    e = e.conds_opt(r, sv, t);
                }
                if rng.chance(30) {
                    e = e.zone_hints(&[rng.pick(&zones)]);
                }
                if rng.chance(20) {
                    e = e.node_hints(&[rng.pick(&nodes)]);
                }
                s = s.endpoint(e);
            }
            slices.push(s.build());
        }
        let node = NodeInfo {
            name: rng.pick(&nodes).to_string(),
            addresses: vec![ip("192.168.0.2"), ip("fd00::2")],
            zone: rng.chance(50).then(|| rng.pick(&zones).to_string()),
            external_ip_cidrs: Vec::new(),
        };
        let c = run_on(&node, services.clone(), slices.clone());
        with_backends += usize::from(
            c.desired
                .backend_sets
                .values()
                .any(|s| !s.backends.is_empty()),
        );
        with_invalid += usize::from(!c.invalid.is_empty());
        // Deterministic: the same input in reverse gives the same output.
        let mut rs = services;
        rs.reverse();
        let mut rsl = slices;
        rsl.reverse();
        let r = run_on(&node, rs, rsl);
        assert_eq!(c.desired, r.desired, "round {round}");
        assert_eq!(c.invalid, r.invalid, "round {round}");
    }
    // The generator must reach both the happy path and the error paths.
    assert!(
        with_backends > 200,
        "only {with_backends} rounds with backends"
    );
    assert!(
        with_invalid > 500,
        "only {with_invalid} rounds with invalid input"
    );
}

// ---------------------------------------------------------------------------
// Clients outside the node (the packet datapath)

/// (what, endpoints as (IP, local, state), what external clients get).
type ExternalCase = (&'static str, Vec<(&'static str, bool, St)>, Served);

/// Reference "Terminating, eTP=Local LB", for the external clients: the LB
/// IP and the NodePort serve the Local selection, client IP preserved, from
/// a set the socket datapath never sees.
#[test]
fn upstream_terminating_external_policy_local_for_external_clients() {
    use St::*;
    // (what, endpoints) → external → LB / NodePort
    let cases: Vec<ExternalCase> = vec![
        (
            "ready, terminating and non-serving local endpoints, one remote ready",
            vec![
                ("10.0.1.1", true, Ready),
                ("10.0.1.2", true, Ready),
                ("10.0.1.3", true, ServingTerminating),
                ("10.0.1.4", true, NotServing),
                ("10.0.1.5", false, Ready),
            ],
            to(&["10.0.1.1:80", "10.0.1.2:80"]),
        ),
        (
            "only local serving+terminating, one remote ready",
            vec![
                ("10.0.1.2", true, ServingTerminating),
                ("10.0.1.3", true, ServingTerminating),
                ("10.0.1.4", true, NotServing),
                ("10.0.1.5", false, Ready),
            ],
            to(&["10.0.1.2:80", "10.0.1.3:80"]),
        ),
        (
            "only remote serving+terminating: DROP",
            vec![
                ("10.0.1.4", true, NotServing),
                ("10.0.1.5", false, ServingTerminating),
            ],
            Served::Drop,
        ),
        (
            "only non-serving: REJECT",
            vec![
                ("10.0.1.4", true, NotServing),
                ("10.0.1.5", false, NotServing),
            ],
            Served::Reject,
        ),
    ];
    for (what, eps, want) in cases {
        let slices = vec![terminating_slice(&eps)];
        let c = run(vec![etp_local_lb("Local")], slices.clone());
        assert!(c.invalid.is_empty(), "{what}: {:?}", reasons(&c));
        // The model agrees with CategorizeEndpoints' Local selection.
        assert_eq!(external_local_selection(&slices), want, "{what}");
        for frontend in ["1.2.3.4:80/TCP", "192.168.0.2:30080/TCP"] {
            assert_eq!(served_externally(&c, frontend), want, "{what}: {frontend}");
            let f = external_of(&c, frontend);
            assert_eq!(f.set.selection, Selection::Local, "{what}: {frontend}");
            assert!(!f.snat, "{what}: {frontend}: client IP preserved");
        }
        // Loopback and the ClusterIP are for local clients only.
        assert_eq!(
            served_externally(&c, "127.0.0.1:30080/TCP"),
            Served::Unknown
        );
        assert_eq!(served_externally(&c, "172.30.1.1:80/TCP"), Served::Unknown);
        // The Local set is for external clients only (iTP Cluster).
        assert_eq!(c.desired.external_sets.len(), 1, "{what}");
        assert!(
            c.desired
                .backend_sets
                .keys()
                .all(|k| k.selection == Selection::Cluster),
            "{what}"
        );
    }
}

/// Reference "Topology", eTP=Local with hints: local clients get the
/// zone's endpoints {.3, .6}, external clients this node's {.3, .4}; with
/// eTP=Cluster external clients get the zone's too.
#[test]
fn upstream_topology_external_policy_local_for_external_clients() {
    let zone_only = slice("ns1", "svc1-abc", "svc1", "IPv4")
        .port("", "TCP", 80)
        .endpoint(ep("10.1.2.3").zone_hints(&["zone-a"]).local())
        .endpoint(ep("10.1.2.4").zone_hints(&["zone-b"]).local())
        .endpoint(ep("10.1.2.5").zone_hints(&["zone-c"]))
        .endpoint(ep("10.1.2.6").zone_hints(&["zone-a"]))
        .build();
    let node = NodeInfo {
        zone: Some("zone-a".into()),
        external_ip_cidrs: Vec::new(),
        ..node()
    };
    let cluster = to(&["10.1.2.3:80", "10.1.2.6:80"]);
    let cases = [
        ("Local", to(&["10.1.2.3:80", "10.1.2.4:80"])),
        ("Cluster", cluster.clone()),
    ];
    for (etp, want) in cases {
        let c = run_on(&node, vec![etp_local_lb(etp)], vec![zone_only.clone()]);
        for frontend in ["1.2.3.4:80/TCP", "192.168.0.2:30080/TCP"] {
            assert_eq!(served(&c, frontend), cluster, "eTP {etp}: {frontend}");
            assert_eq!(
                served_externally(&c, frontend),
                want,
                "eTP {etp}: {frontend}"
            );
        }
    }
}

/// Reference "Terminating, eTP=Cluster", for the external clients: the
/// Cluster selection, masqueraded, from the very set local clients use.
#[test]
fn external_policy_cluster_serves_the_cluster_selection_masqueraded() {
    use St::*;
    let cases: Vec<ExternalCase> = vec![
        (
            "ready endpoints exist: ready only",
            vec![
                ("10.0.1.1", true, Ready),
                ("10.0.1.2", false, Ready),
                ("10.0.1.3", true, ServingTerminating),
                ("10.0.1.5", true, NotServing),
            ],
            to(&["10.0.1.1:80", "10.0.1.2:80"]),
        ),
        (
            "all terminating: every serving+terminating",
            vec![
                ("10.0.1.3", true, ServingTerminating),
                ("10.0.1.4", false, ServingTerminating),
            ],
            to(&["10.0.1.3:80", "10.0.1.4:80"]),
        ),
        (
            "none serving: REJECT",
            vec![("10.0.1.5", true, NotServing)],
            Served::Reject,
        ),
    ];
    for (what, eps, want) in cases {
        let c = run(vec![etp_local_lb("Cluster")], vec![terminating_slice(&eps)]);
        for frontend in ["1.2.3.4:80/TCP", "192.168.0.2:30080/TCP"] {
            assert_eq!(served_externally(&c, frontend), want, "{what}: {frontend}");
            let f = external_of(&c, frontend);
            assert!(f.snat, "{what}: {frontend}: masqueraded");
            assert_eq!(f.set, frontend_of(&c, frontend).set, "{what}: {frontend}");
        }
        assert_eq!(c.desired.external_sets, c.desired.backend_sets, "{what}");
    }
}

/// Which frontends outside clients reach, by type and eTP: NodePorts on
/// every node address of the family but loopback, externalIPs and LB IPs,
/// never the ClusterIP; eTP decides the selection and SNAT of them all.
#[test]
fn external_frontends_by_type_and_policy() {
    let node = NodeInfo {
        name: NODE.into(),
        addresses: vec![ip("192.168.0.2"), ip("10.10.0.2"), ip("fd00::2")],
        zone: None,
        external_ip_cidrs: Vec::new(),
    };
    let v4_node_ports = ["192.168.0.2:30080/TCP", "10.10.0.2:30080/TCP"];
    let v6_node_ports = ["[fd00::2]:30080/TCP"];
    let ips = [
        ("1.2.3.4:80/TCP", FrontendKind::ExternalIp),
        ("5.6.7.8:80/TCP", FrontendKind::LoadBalancer),
        ("[2001:db8::4]:80/TCP", FrontendKind::ExternalIp),
        ("[2001:db8::8]:80/TCP", FrontendKind::LoadBalancer),
    ];
    for ty in ["ClusterIP", "NodePort", "LoadBalancer"] {
        for etp in ["Cluster", "Local"] {
            let what = format!("{ty} eTP {etp}");
            let svc = service("ns", "s", "172.30.0.1")
                .families(&["IPv4", "IPv6"], &["172.30.0.1", "fd00:30::1"])
                .type_(ty)
                .port("p", "TCP", 80)
                .node_port(30080)
                .external_ips(&["1.2.3.4", "2001:db8::4"])
                .lb_ingress(Some("5.6.7.8"), None)
                .lb_ingress(Some("2001:db8::8"), None)
                .etp(etp)
                .health_check_node_port(30000)
                .build();
            let slices = vec![
                slice("ns", "s-4", "s", "IPv4")
                    .port("p", "TCP", 8080)
                    .endpoint(ep("10.0.0.1").local())
                    .endpoint(ep("10.0.0.2").node("node1"))
                    .build(),
                slice("ns", "s-6", "s", "IPv6")
                    .port("p", "TCP", 8080)
                    .endpoint(ep("fd00:10::1").local())
                    .endpoint(ep("fd00:10::2").node("node1"))
                    .build(),
            ];
            let c = run_on(&node, vec![svc], slices);
            let mut want: Vec<(FrontendAddr, FrontendKind)> =
                ips.iter().map(|(a, k)| (fe(a), *k)).collect();
            if ty != "ClusterIP" {
                for a in v4_node_ports.iter().chain(&v6_node_ports) {
                    want.push((fe(a), FrontendKind::NodePort));
                }
            }
            want.sort();
            let got: Vec<(FrontendAddr, FrontendKind)> = c
                .desired
                .external
                .iter()
                .map(|(a, f)| (*a, f.kind))
                .collect();
            assert_eq!(got, want, "{what}");

            let local = etp == "Local";
            for (addr, f) in &c.desired.external {
                assert_eq!(f.snat, !local, "{what}: {addr}");
                let v6 = addr.ip.is_ipv6();
                let want = match (local, v6) {
                    (true, false) => to(&["10.0.0.1:8080"]),
                    (true, true) => to(&["[fd00:10::1]:8080"]),
                    (false, false) => to(&["10.0.0.1:8080", "10.0.0.2:8080"]),
                    (false, true) => to(&["[fd00:10::1]:8080", "[fd00:10::2]:8080"]),
                };
                let s = addr.to_string();
                assert_eq!(served_externally(&c, &s), want, "{what}: {addr}");
                // Local clients are never subject to eTP.
                assert_eq!(
                    frontend_of(&c, &s).set.selection,
                    Selection::Cluster,
                    "{what}: {addr}"
                );
            }
            // Loopback NodePorts exist for local clients only.
            if ty != "ClusterIP" {
                for lo in ["127.0.0.1:30080/TCP", "[::1]:30080/TCP"] {
                    assert_eq!(frontend_of(&c, lo).kind, FrontendKind::NodePort, "{what}");
                    assert!(!c.desired.external.contains_key(&fe(lo)), "{what}: {lo}");
                }
            }
            // One external set per family; Local ones only there.
            assert_eq!(c.desired.external_sets.len(), 2, "{what}");
            let selections: BTreeSet<Selection> = c
                .desired
                .external_sets
                .keys()
                .map(|k| k.selection)
                .collect();
            let want_selection = if local {
                Selection::Local
            } else {
                Selection::Cluster
            };
            assert_eq!(selections, [want_selection].into(), "{what}");
            assert_eq!(c.desired.backend_sets.len(), 2, "{what}");
        }
    }
}

/// (iTP, eTP) → what external clients get, and which sets each datapath
/// holds: a Local set only external clients use stays out of
/// `backend_sets`; one the ClusterIP uses too is in both.
#[test]
fn traffic_policies_for_external_clients() {
    let both = to(&["10.0.0.1:80", "10.0.0.2:80"]);
    let local = to(&["10.0.0.1:80"]);
    // (iTP, eTP, external served, socket set selections, external ones)
    type Row = (
        &'static str,
        &'static str,
        Served,
        &'static [Selection],
        &'static [Selection],
    );
    use Selection::{Cluster, Local};
    let cases: Vec<Row> = vec![
        ("Cluster", "Cluster", both.clone(), &[Cluster], &[Cluster]),
        ("Cluster", "Local", local.clone(), &[Cluster], &[Local]),
        (
            "Local",
            "Cluster",
            both.clone(),
            &[Cluster, Local],
            &[Cluster],
        ),
        ("Local", "Local", local.clone(), &[Cluster, Local], &[Local]),
    ];
    for (itp, etp, want, socket_sets, external_sets) in cases {
        let what = format!("iTP {itp} eTP {etp}");
        let b = |etp: &str| {
            service("ns", "s", "172.30.0.1")
                .type_("NodePort")
                .port("p", "TCP", 80)
                .node_port(30080)
                .external_ips(&["1.2.3.4"])
                .itp(itp)
                .etp(etp)
                .build()
        };
        let slices = vec![
            slice("ns", "s-1", "s", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.1").local())
                .endpoint(ep("10.0.0.2").node("node1"))
                .build(),
        ];
        let c = run(vec![b(etp)], slices.clone());
        for frontend in ["192.168.0.2:30080/TCP", "1.2.3.4:80/TCP"] {
            assert_eq!(served_externally(&c, frontend), want, "{what}: {frontend}");
            assert_eq!(served(&c, frontend), both, "{what}: {frontend}");
        }
        let selections = |m: &std::collections::BTreeMap<Arc<BackendSetKey>, Arc<BackendSet>>| {
            m.keys().map(|k| k.selection).collect::<Vec<_>>()
        };
        assert_eq!(selections(&c.desired.backend_sets), socket_sets, "{what}");
        assert_eq!(
            selections(&c.desired.external_sets),
            external_sets,
            "{what}"
        );
        for (key, set) in &c.desired.external_sets {
            if let Some(socket) = c.desired.backend_sets.get(key) {
                assert!(Arc::ptr_eq(socket, set), "{what}: {key} shared");
            }
        }
        // The socket datapath's state does not depend on eTP.
        let other = run(
            vec![b(if etp == "Local" { "Cluster" } else { "Local" })],
            slices,
        );
        assert_eq!(c.desired.backend_sets, other.desired.backend_sets, "{what}");
        assert_eq!(c.desired.frontends, other.desired.frontends, "{what}");
    }
}

/// loadBalancerSourceRanges restrict the LB IPs of their family only;
/// NodePorts and externalIPs are never restricted; a bad entry is reported
/// and skipped, the rest still applies.
#[test]
fn source_ranges_apply_to_load_balancer_ips_of_their_family() {
    let node = NodeInfo {
        addresses: vec![ip("192.168.0.2"), ip("fd00::2")],
        ..node()
    };
    let lb = |ranges: &[&str]| {
        service("ns", "s", "172.30.0.1")
            .families(&["IPv4", "IPv6"], &["172.30.0.1", "fd00:30::1"])
            .type_("LoadBalancer")
            .port("p", "TCP", 80)
            .node_port(30080)
            .external_ips(&["1.2.3.4", "2001:db8::4"])
            .lb_ingress(Some("5.6.7.8"), None)
            .lb_ingress(Some("2001:db8::8"), None)
            .source_ranges(ranges)
            .build()
    };
    let cidr = |s: &str| ip::parse_cidr_lenient(s).unwrap();
    // (what, ranges) → (v4 LB ranges, v6 LB ranges, reasons)
    type Row = (
        &'static str,
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
        &'static [&'static str],
    );
    let cases: Vec<Row> = vec![
        ("none", &[], &[], &[], &[]),
        (
            "both families, lenient forms",
            &[
                "10.0.0.0/8",
                " 192.168.0.0/16 ",
                "fd00::/8",
                "203.0.113.000/025",
            ],
            &["10.0.0.0/8", "192.168.0.0/16", "203.0.113.0/25"],
            &["fd00::/8"],
            &[],
        ),
        (
            "IPv4 only: IPv6 LB IPs unrestricted",
            &["10.0.0.0/8"],
            &["10.0.0.0/8"],
            &[],
            &[],
        ),
        (
            "a bad entry is skipped",
            &["bogus", "10.0.0.0/8", "10.0.0.0/33"],
            &["10.0.0.0/8"],
            &[],
            &[
                "Service ns/s: spec.loadBalancerSourceRanges: invalid CIDR \"10.0.0.0/33\"",
                "Service ns/s: spec.loadBalancerSourceRanges: invalid CIDR \"bogus\"",
            ],
        ),
        (
            "only bad entries: unrestricted",
            &["10.0.0.1"],
            &[],
            &[],
            &["Service ns/s: spec.loadBalancerSourceRanges: invalid CIDR \"10.0.0.1\""],
        ),
    ];
    for (what, ranges, want4, want6, want_reasons) in cases {
        let c = run_on(&node, vec![lb(ranges)], vec![]);
        assert_eq!(reasons(&c), *want_reasons, "{what}");
        let of = |frontend: &str| external_of(&c, frontend).source_ranges.to_vec();
        let cidrs = |v: &[&str]| v.iter().map(|s| cidr(s)).collect::<Vec<_>>();
        assert_eq!(of("5.6.7.8:80/TCP"), cidrs(want4), "{what}");
        assert_eq!(of("[2001:db8::8]:80/TCP"), cidrs(want6), "{what}");
        for frontend in [
            "192.168.0.2:30080/TCP",
            "[fd00::2]:30080/TCP",
            "1.2.3.4:80/TCP",
            "[2001:db8::4]:80/TCP",
        ] {
            assert!(of(frontend).is_empty(), "{what}: {frontend}");
        }
        // Everything is still served.
        assert_eq!(c.desired.external.len(), 6, "{what}");
        assert_eq!(served(&c, "5.6.7.8:80/TCP"), Served::Reject, "{what}");
    }
}

/// A frontend the Service does not get for local clients (taken by a
/// Service sorted earlier) is not reachable from outside for it either.
#[test]
fn a_conflicting_frontend_gets_no_external_entry() {
    struct Case {
        name: &'static str,
        later: ServiceBuilder,
        earlier: ServiceBuilder,
        /// frontend → owner of the external entry ("-": none).
        want: Vec<(&'static str, &'static str)>,
    }
    let a = |ip| service("ns", "a", ip).port("p", "TCP", 80);
    let b = |ip| service("ns", "b", ip).port("p", "TCP", 80);
    let cases = vec![
        Case {
            name: "same LB IP and port",
            later: b("172.30.0.2")
                .type_("LoadBalancer")
                .lb_ingress(Some("5.6.7.8"), None)
                .lb_ingress(Some("5.6.7.9"), None)
                .source_ranges(&["10.0.0.0/8"]),
            earlier: a("172.30.0.1")
                .type_("LoadBalancer")
                .lb_ingress(Some("5.6.7.8"), None),
            want: vec![("5.6.7.8:80/TCP", "ns/a"), ("5.6.7.9:80/TCP", "ns/b")],
        },
        Case {
            name: "externalIP on another's ClusterIP:port",
            later: b("172.30.0.2")
                .external_ips(&["172.30.0.1", "1.2.3.4"])
                .etp("Local"),
            earlier: a("172.30.0.1"),
            want: vec![("172.30.0.1:80/TCP", "-"), ("1.2.3.4:80/TCP", "ns/b")],
        },
        Case {
            name: "same nodePort",
            later: b("172.30.0.2")
                .type_("NodePort")
                .node_port(30080)
                .etp("Local"),
            earlier: a("172.30.0.1").type_("NodePort").node_port(30080),
            want: vec![("192.168.0.2:30080/TCP", "ns/a")],
        },
        Case {
            name: "nodePort taken by an earlier health check",
            later: b("172.30.0.2").type_("NodePort").node_port(30000),
            earlier: a("172.30.0.1")
                .type_("LoadBalancer")
                .node_port(30080)
                .etp("Local")
                .health_check_node_port(30000),
            want: vec![
                ("192.168.0.2:30000/TCP", "-"),
                ("192.168.0.2:30080/TCP", "ns/a"),
            ],
        },
        Case {
            name: "a node address:nodePort taken by an earlier externalIP",
            later: b("172.30.0.2")
                .type_("NodePort")
                .node_port(30080)
                .etp("Local"),
            earlier: service("ns", "a", "172.30.0.1")
                .port("p", "TCP", 30080)
                .external_ips(&["192.168.0.2"]),
            want: vec![("192.168.0.2:30080/TCP", "ns/a")],
        },
    ];
    for case in cases {
        let c = run(vec![case.later.build(), case.earlier.build()], vec![]);
        assert!(!c.invalid.is_empty(), "{}: a conflict", case.name);
        for (frontend, owner) in case.want {
            let got = c
                .desired
                .external
                .get(&fe(frontend))
                .map(|f| f.set.service.to_string());
            assert_eq!(
                got.as_deref().unwrap_or("-"),
                owner,
                "{}: {frontend}",
                case.name
            );
            // It names the same Service's set as the socket frontend.
            if let Some(f) = c.desired.external.get(&fe(frontend)) {
                assert_eq!(f.set.service, frontend_of(&c, frontend).set.service);
                if owner == "ns/a" {
                    assert!(f.source_ranges.is_empty(), "{}: a's ranges", case.name);
                }
            }
        }
    }
}

/// A Local set only external clients use may exceed what a set can hold
/// while the Cluster selection (topology-filtered) does not: local clients
/// are served as without it, external ones not at all.
#[test]
fn an_external_only_set_too_large_is_reported_and_not_served_externally() {
    let max = lb_common::capacity::MAX_BACKENDS_PER_SERVICE as usize;
    // max+1 local endpoints hinted for zone-b, one remote one for zone-a:
    // this zone-a node's Cluster selection is that one.
    let mut s = slice("ns", "s-1", "s", "IPv4")
        .port("p", "TCP", 80)
        .endpoint(ep("10.255.255.255").zone_hints(&["zone-a"]).node("node1"));
    for i in 0..=max {
        let ip = format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
        s = s.endpoint(ep(&ip).zone_hints(&["zone-b"]).local());
    }
    let svc = service("ns", "s", "172.30.0.1")
        .type_("NodePort")
        .port("p", "TCP", 80)
        .node_port(30080)
        .etp("Local")
        .build();
    let node = NodeInfo {
        zone: Some("zone-a".into()),
        external_ip_cidrs: Vec::new(),
        ..node()
    };
    let c = run_on(&node, vec![svc], vec![s.build()]);
    assert_eq!(
        reasons(&c),
        [format!(
            "Service ns/s: ns/s:p/TCP/local: {} backends exceed the limit of {max}; port not served to clients outside the node",
            max + 1
        )]
    );
    let one = to(&["10.255.255.255:80"]);
    assert_eq!(served(&c, "172.30.0.1:80/TCP"), one);
    assert_eq!(served(&c, "192.168.0.2:30080/TCP"), one);
    assert!(c.desired.external.is_empty());
    assert!(c.desired.external_sets.is_empty());
}

// ---------------------------------------------------------------------------
// externalIP policy (--external-ip-cidr, CVE-2020-8554)

#[test]
fn external_ips_outside_every_allowed_block_get_no_frontend_and_are_reported() {
    let cidr = |s: &str| ip::parse_cidr_lenient(s).unwrap();
    let svc = || {
        service("ns", "s", "172.30.0.1")
            .families(&["IPv4", "IPv6"], &["172.30.0.1", "fd00:30::1"])
            .type_("LoadBalancer")
            .port("p", "TCP", 80)
            .external_ips(&["203.0.113.5", "198.51.100.7", "2001:db8::5", "2001:db9::5"])
            .lb_ingress(Some("198.51.100.9"), None)
            .build()
    };
    let slices = || {
        vec![
            slice("ns", "s-4", "s", "IPv4")
                .port("p", "TCP", 8080)
                .endpoint(ep("10.0.0.1").local())
                .build(),
            slice("ns", "s-6", "s", "IPv6")
                .port("p", "TCP", 8080)
                .endpoint(ep("fd00:10::1").local())
                .build(),
        ]
    };
    let mut restricted = node();
    restricted.external_ip_cidrs = vec![cidr("203.0.113.0/24"), cidr("2001:db8::/64")];

    let c = run_on(&restricted, vec![svc()], slices());
    let backend = to(&["10.0.0.1:8080"]);
    assert_eq!(served(&c, "203.0.113.5:80/TCP"), backend);
    assert_eq!(served_externally(&c, "203.0.113.5:80/TCP"), backend);
    assert_eq!(
        served(&c, "[2001:db8::5]:80/TCP"),
        to(&["[fd00:10::1]:8080"])
    );
    for refused in ["198.51.100.7:80/TCP", "[2001:db9::5]:80/TCP"] {
        assert_eq!(served(&c, refused), Served::Unknown, "{refused}");
        assert_eq!(served_externally(&c, refused), Served::Unknown, "{refused}");
    }
    // Load balancer IPs are the cloud provider's, not the Service author's:
    // the policy leaves them alone.
    assert_eq!(served(&c, "198.51.100.9:80/TCP"), backend);
    assert_eq!(
        reasons(&c),
        [
            "Service ns/s: externalIPs 198.51.100.7, 2001:db9::5 are outside every \
          --external-ip-cidr (203.0.113.0/24, 2001:db8::/64); not served"
        ]
    );
    assert_eq!(c.invalid[0].cause, ReportCause::ExternalIpNotAllowed);
    assert_eq!(
        c.invalid[0].cause.event_reason(),
        "ExternalIPNotAllowed",
        "the Event's reason"
    );

    // Without the flag: kube-proxy's behaviour, every externalIP served,
    // nothing reported.
    let c = run(vec![svc()], slices());
    for ext in ["203.0.113.5:80/TCP", "198.51.100.7:80/TCP"] {
        assert_eq!(served(&c, ext), backend, "{ext}");
        assert_eq!(served_externally(&c, ext), backend, "{ext}");
    }
    assert_eq!(
        served(&c, "[2001:db9::5]:80/TCP"),
        to(&["[fd00:10::1]:8080"])
    );
    assert!(c.invalid.is_empty(), "{:?}", reasons(&c));
}

#[test]
fn a_service_whose_only_external_ip_is_refused_is_not_externally_reachable() {
    // ClusterIP + externalIPs + externalTrafficPolicy Local: the refused
    // externalIP was the only way in from outside, so no Local selection is
    // planned and only the ClusterIP is served.
    let mut restricted = node();
    restricted.external_ip_cidrs = vec![ip::parse_cidr_lenient("203.0.113.0/24").unwrap()];
    let svc = service("ns", "s", "172.30.0.1")
        .port("p", "TCP", 80)
        .external_ips(&["198.51.100.7"])
        .etp("Local")
        .build();
    let slices = vec![
        slice("ns", "s-4", "s", "IPv4")
            .port("p", "TCP", 8080)
            .endpoint(ep("10.0.0.1").node("node1"))
            .build(),
    ];
    let c = run_on(&restricted, vec![svc], slices);
    assert_eq!(served(&c, "172.30.0.1:80/TCP"), to(&["10.0.0.1:8080"]));
    assert_eq!(served(&c, "198.51.100.7:80/TCP"), Served::Unknown);
    assert!(c.desired.external.is_empty());
    assert_eq!(c.desired.backend_sets.len(), 1);
    assert_eq!(c.invalid.len(), 1);
}
