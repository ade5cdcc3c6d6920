//! kube-proxy Service behaviours for local clients (issue 3), end to end:
//! real sockets in network namespaces, Ferry translating at the socket.
//! Traffic policies, terminating endpoints, topology hints, dual stack,
//! lenient IP parsing. (Session affinity: affinity.rs; stale UDP sockets:
//! udp_sockets.rs; NodePort bind protection and health check node ports:
//! node_ports.rs.)
//!
//! Privileged: run as root, one test at a time:
//! `cargo test -p tests --test behaviours -- --test-threads=1`.
//!
//! Spread assertions ("every one of these backends answers") use enough
//! requests that a uniform random pick misses a backend with probability
//! below 1e-9.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use anyhow::Result;
use serde_json::json;
use tests::fixture::*;
use tests::*;

// ------------------------------------------------------------- iTP Local

/// internalTrafficPolicy Local: a ClusterIP only reaches endpoints whose
/// nodeName is this node; with only remote endpoints the connect fails as
/// kube-proxy's DROP (EHOSTUNREACH at the socket), with none at all as its
/// REJECT (ECONNREFUSED). The NodePort of such a Service ignores iTP.
#[test]
fn internal_traffic_policy_local() -> Result<()> {
    require_root();
    let _serial = serial();
    let services = || {
        [
            // ClusterIP only: the ClusterIP uses just the local selection.
            Service::new("default", "itp")
                .cluster_ip("10.96.0.10")
                .port(ServicePort::tcp(80).target(PORT))
                .internal_traffic_policy("Local")
                .to_value(),
            // With a NodePort: the ClusterIP still uses the local selection,
            // the NodePort the cluster one.
            Service::new("default", "itp-np")
                .type_("NodePort")
                .cluster_ip("10.96.0.11")
                .port(ServicePort::tcp(80).target(PORT).node_port(30080))
                .internal_traffic_policy("Local")
                .to_value(),
        ]
    };
    let objects = |env: Option<&Env>, eps: &[(&str, &str)]| {
        let mut v = services().to_vec();
        if let Some(env) = env {
            let eps: Vec<Endpoint> = eps.iter().map(|(b, n)| env.ep(b, n)).collect();
            v.push(tcp_slice("itp", "itp-1", AddressType::IPv4, &eps));
            v.push(tcp_slice("itp-np", "itp-np-1", AddressType::IPv4, &eps));
        }
        v
    };
    let mut env = Env::running(2, 2, &objects(None, &[]))?;
    let all = [
        ("b0", NODE),
        ("b1", NODE),
        ("r0", OTHER_NODE),
        ("r1", OTHER_NODE),
    ];
    env.apply(&objects(Some(&env), &all))?;
    let (local, everyone) = (
        [env.addr4("b0"), env.addr4("b1")],
        ["b0", "b1", "r0", "r1"].map(|b| env.addr4(b)),
    );
    env.wait_backends("10.96.0.10:80/TCP", &local)?;
    env.wait_backends("10.96.0.11:80/TCP", &local)?;
    env.wait_backends("10.244.0.1:30080/TCP", &everyone)?;

    // Local and remote endpoints: the ClusterIPs reach only the local ones.
    for cip in ["10.96.0.10:80", "10.96.0.11:80"] {
        assert_eq!(
            env.servers_seen(sa(cip), 60)?,
            names(&["b0", "b1"]),
            "{cip} (iTP Local) must reach exactly the local endpoints"
        );
    }
    // The NodePort ignores iTP: local and remote endpoints.
    assert_eq!(
        env.servers_seen(sa("10.244.0.1:30080"), 80)?,
        names(&["b0", "b1", "r0", "r1"]),
        "the NodePort of an iTP=Local Service reaches every endpoint"
    );

    // Only remote endpoints: kube-proxy DROPs → EHOSTUNREACH.
    env.apply(&objects(
        Some(&env),
        &[("r0", OTHER_NODE), ("r1", OTHER_NODE)],
    ))?;
    env.wait_empty("10.96.0.10:80/TCP", "drop")?;
    env.wait_empty("10.96.0.11:80/TCP", "drop")?;
    env.wait_backends("10.244.0.1:30080/TCP", &[env.addr4("r0"), env.addr4("r1")])?;
    for cip in ["10.96.0.10:80", "10.96.0.11:80"] {
        for _ in 0..3 {
            assert_eq!(
                env.connect_errno(sa(cip)),
                Some(Some(libc::EHOSTUNREACH)),
                "{cip}: iTP Local with only remote endpoints must fail with EHOSTUNREACH"
            );
        }
    }
    assert_eq!(
        env.servers_seen(sa("10.244.0.1:30080"), 40)?,
        names(&["r0", "r1"])
    );

    // No endpoints at all: kube-proxy REJECTs → ECONNREFUSED (NodePort too).
    env.apply(&objects(None, &[]))?;
    env.wait_empty("10.96.0.10:80/TCP", "reject")?;
    env.wait_empty("10.96.0.11:80/TCP", "reject")?;
    env.wait_empty("10.244.0.1:30080/TCP", "reject")?;
    for target in ["10.96.0.10:80", "10.96.0.11:80", "10.244.0.1:30080"] {
        assert_eq!(
            env.connect_errno(sa(target)),
            Some(Some(libc::ECONNREFUSED)),
            "{target}: no endpoints at all must fail with ECONNREFUSED"
        );
    }
    Ok(())
}

// ------------------------------------------------------------- eTP Local

/// externalTrafficPolicy Local, local clients: NodePort, externalIP and
/// load balancer IP frontends are short-circuited to every cluster
/// endpoint, remote ones included (kube-proxy does so for traffic from the
/// node and its pods). A load balancer ingress with ipMode Proxy gets no
/// frontend: connects to it pass untouched (no route here: ENETUNREACH).
#[test]
fn external_traffic_policy_local_is_short_circuited_for_local_clients() -> Result<()> {
    require_root();
    let _serial = serial();
    let svc = Service::new("default", "etp")
        .type_("LoadBalancer")
        .cluster_ip("10.96.0.20")
        .port(ServicePort::tcp(80).target(PORT).node_port(30081))
        .external_ips(&["10.97.0.20"])
        .external_traffic_policy("Local")
        .health_check_node_port(32020)
        .set(
            &["status", "loadBalancer", "ingress"],
            json!([
                { "ip": "10.98.0.20" },
                { "ip": "10.98.0.21", "ipMode": "Proxy" },
                { "ip": "10.98.0.22", "ipMode": "VIP" },
            ]),
        )
        .to_value();
    let mut env = Env::running(1, 2, std::slice::from_ref(&svc))?;
    let eps = [
        env.ep("b0", NODE),
        env.ep("r0", OTHER_NODE),
        env.ep("r1", "node-3"),
    ];
    env.apply(&[svc, tcp_slice("etp", "etp-1", AddressType::IPv4, &eps)])?;
    let everyone = ["b0", "r0", "r1"].map(|b| env.addr4(b));
    let frontends = [
        ("10.96.0.20:80", "ClusterIP"),
        ("10.244.0.1:30081", "NodePort"),
        ("127.0.0.1:30081", "NodePort"),
        ("10.97.0.20:80", "ExternalIP"),
        ("10.98.0.20:80", "LoadBalancer"),
        ("10.98.0.22:80", "LoadBalancer"),
    ];
    for (fe, _) in frontends {
        env.wait_backends(&format!("{fe}/TCP"), &everyone)?;
    }
    let services = env.ferry().services_json()?;
    for (fe, kind) in frontends {
        assert_eq!(
            frontend(&services, &format!("{fe}/TCP")).map(|f| f["kind"].clone()),
            Some(json!(kind)),
            "{fe}"
        );
        assert_eq!(
            env.servers_seen(sa(fe), 60)?,
            names(&["b0", "r0", "r1"]),
            "{kind} {fe} of an eTP=Local Service must reach all cluster endpoints from a local client"
        );
    }
    assert!(
        frontend(&services, "10.98.0.21:80/TCP").is_none(),
        "an ipMode Proxy ingress must get no frontend: {services:#}"
    );
    assert_eq!(
        env.connect_errno(sa("10.98.0.21:80")),
        Some(Some(libc::ENETUNREACH)),
        "an ipMode Proxy ingress IP must pass untouched"
    );
    Ok(())
}

// ------------------------------------------------------------- terminating

/// Terminating endpoints: the cluster set and the local set fall back to
/// serving+terminating endpoints independently. With iTP Local, local
/// serving+terminating endpoints and a remote ready one, the ClusterIP uses
/// the local terminating endpoint while the NodePort (cluster set) uses the
/// remote ready one; a ready=false serving=false endpoint never gets
/// traffic; a local ready endpoint replaces the terminating one.
#[test]
fn terminating_endpoints_fall_back_per_selection() -> Result<()> {
    require_root();
    let _serial = serial();
    let svc = Service::new("default", "term")
        .type_("NodePort")
        .cluster_ip("10.96.0.30")
        .port(ServicePort::tcp(80).target(PORT).node_port(30083))
        .internal_traffic_policy("Local")
        .to_value();
    let mut env = Env::running(3, 1, std::slice::from_ref(&svc))?;
    let slice = |eps: &[Endpoint]| tcp_slice("term", "term-1", AddressType::IPv4, eps);
    let (cip, np) = ("10.96.0.30:80/TCP", "10.244.0.1:30083/TCP");

    // b0 local serving+terminating, b1 local not serving, r0 remote ready.
    env.apply(&[
        svc.clone(),
        slice(&[
            terminating(env.ep("b0", NODE)),
            not_serving(env.ep("b1", NODE)),
            env.ep("r0", OTHER_NODE),
        ]),
    ])?;
    let v = env.wait_backends(cip, &[env.addr4("b0")])?;
    assert_eq!(
        frontend(&v, cip).unwrap()["backends"][0]["state"],
        "terminating",
        "{v:#}"
    );
    env.wait_backends(np, &[env.addr4("r0")])?;
    assert_eq!(
        env.servers_seen(sa("10.96.0.30:80"), 30)?,
        names(&["b0"]),
        "the local set falls back to its serving+terminating endpoint"
    );
    assert_eq!(
        env.servers_seen(sa("10.244.0.1:30083"), 30)?,
        names(&["r0"]),
        "the cluster set has a ready endpoint and uses only it"
    );

    // A local ready endpoint appears: the terminating one is no longer used.
    env.apply(&[
        svc.clone(),
        slice(&[
            terminating(env.ep("b0", NODE)),
            not_serving(env.ep("b1", NODE)),
            env.ep("b2", NODE),
            env.ep("r0", OTHER_NODE),
        ]),
    ])?;
    env.wait_backends(cip, &[env.addr4("b2")])?;
    env.wait_backends(np, &[env.addr4("b2"), env.addr4("r0")])?;
    assert_eq!(env.servers_seen(sa("10.96.0.30:80"), 30)?, names(&["b2"]));
    assert_eq!(
        env.servers_seen(sa("10.244.0.1:30083"), 60)?,
        names(&["b2", "r0"])
    );

    // Only a non-serving local endpoint and a remote one: the local set is
    // empty though endpoints exist → DROP; the non-serving one never answers.
    env.apply(&[
        svc,
        slice(&[not_serving(env.ep("b1", NODE)), env.ep("r0", OTHER_NODE)]),
    ])?;
    env.wait_empty(cip, "drop")?;
    env.wait_backends(np, &[env.addr4("r0")])?;
    assert_eq!(
        env.connect_errno(sa("10.96.0.30:80")),
        Some(Some(libc::EHOSTUNREACH))
    );
    assert_eq!(
        env.servers_seen(sa("10.244.0.1:30083"), 20)?,
        names(&["r0"])
    );
    assert_eq!(
        env.servers.tcp_connections_of("b1"),
        0,
        "a ready=false serving=false endpoint must never get traffic"
    );
    Ok(())
}

// ------------------------------------------------------------- topology

/// Topology hints: with the Node labelled zone-a, only endpoints hinted for
/// zone-a get traffic; relabelling the Node to zone-b switches to the zone-b
/// endpoints; a zone no endpoint is hinted for, or one endpoint without
/// hints, means no filtering; node hints (PreferSameNode) select the
/// endpoint hinted for this node, even in another zone.
#[test]
fn topology_zone_hints_follow_the_node_zone() -> Result<()> {
    require_root();
    let _serial = serial();
    let topo_svc = Service::new("default", "topo")
        .cluster_ip("10.96.0.40")
        .port(ServicePort::tcp(80).target(PORT));
    let svc = topo_svc.to_value();
    let node = |zone: &str| {
        Node::new(NODE)
            .address("InternalIP", &NODE_V4.to_string())
            .zone(zone)
            .to_value()
    };
    let mut env = Env::running(4, 0, &[svc.clone(), node("zone-a")])?;
    let hinted = |env: &Env, b3_hint: bool| {
        let mut eps = vec![
            env.ep("b0", NODE).zone("zone-a").hint_zones(&["zone-a"]),
            env.ep("b1", NODE).zone("zone-a").hint_zones(&["zone-a"]),
            env.ep("b2", NODE).zone("zone-b").hint_zones(&["zone-b"]),
        ];
        let b3 = env.ep("b3", NODE).zone("zone-b");
        eps.push(if b3_hint {
            b3.hint_zones(&["zone-b"])
        } else {
            b3
        });
        tcp_slice("topo", "topo-1", AddressType::IPv4, &eps)
    };
    let fe = "10.96.0.40:80/TCP";
    let target = sa("10.96.0.40:80");
    let all = ["b0", "b1", "b2", "b3"].map(|b| env.addr4(b));

    env.apply(&[svc.clone(), node("zone-a"), hinted(&env, true)])?;
    env.wait_backends(fe, &[env.addr4("b0"), env.addr4("b1")])?;
    assert_eq!(
        env.servers_seen(target, 40)?,
        names(&["b0", "b1"]),
        "zone-a node: only endpoints hinted for zone-a"
    );

    env.apply(&[svc.clone(), node("zone-b"), hinted(&env, true)])?;
    env.wait_backends(fe, &[env.addr4("b2"), env.addr4("b3")])?;
    assert_eq!(
        env.servers_seen(target, 40)?,
        names(&["b2", "b3"]),
        "relabelled to zone-b: only endpoints hinted for zone-b"
    );

    env.apply(&[svc.clone(), node("zone-c"), hinted(&env, true)])?;
    env.wait_backends(fe, &all)?;
    assert_eq!(
        env.servers_seen(target, 80)?,
        names(&["b0", "b1", "b2", "b3"]),
        "no endpoint hinted for the node's zone: all endpoints"
    );

    env.apply(&[svc.clone(), node("zone-b"), hinted(&env, false)])?;
    env.wait_backends(fe, &all)?;
    assert_eq!(
        env.servers_seen(target, 80)?,
        names(&["b0", "b1", "b2", "b3"]),
        "one endpoint without hints: all endpoints"
    );

    // Node hints (trafficDistribution PreferSameNode) win over zone hints:
    // only the endpoint hinted for this node.
    let by_node = ["b0", "b1", "b2", "b3"].map(|b| {
        let zone = if b < "b2" { "zone-a" } else { "zone-b" };
        let for_node = if b == "b2" { NODE } else { OTHER_NODE };
        env.ep(b, NODE).hint_zones(&[zone]).hint_nodes(&[for_node])
    });
    env.apply(&[
        topo_svc
            .spec("trafficDistribution", json!("PreferSameNode"))
            .to_value(),
        node("zone-a"),
        tcp_slice("topo", "topo-1", AddressType::IPv4, &by_node),
    ])?;
    env.wait_backends(fe, &[env.addr4("b2")])?;
    assert_eq!(
        env.servers_seen(target, 30)?,
        names(&["b2"]),
        "node hints: only the endpoint hinted for this node"
    );
    Ok(())
}

// ------------------------------------------------------------- dual stack

/// Dual stack: a Service with ipFamilies [IPv4, IPv6] and both clusterIPs
/// serves both families (ClusterIP, NodePort, externalIPs), each from its
/// own family's slice; an IPv4-only Service has no IPv6 frontend at all,
/// even with an IPv6 slice and an IPv6 externalIP.
#[test]
fn dual_stack_and_single_stack_services() -> Result<()> {
    require_root();
    let _serial = serial();
    let services = [
        Service::new("default", "ds")
            .type_("NodePort")
            .ip_families(&["IPv4", "IPv6"])
            .ip_family_policy("RequireDualStack")
            .cluster_ips(&["10.96.0.60", "fd00:96::60"])
            .port(ServicePort::tcp(80).target(PORT).node_port(30086))
            .external_ips(&["10.97.0.60", "fd00:97::60"])
            .to_value(),
        Service::new("default", "v4only")
            .type_("NodePort")
            .ip_families(&["IPv4"])
            .ip_family_policy("SingleStack")
            .cluster_ip("10.96.0.61")
            .port(ServicePort::tcp(80).target(PORT).node_port(30087))
            .external_ips(&["10.97.0.61", "fd00:97::61"])
            .to_value(),
    ];
    let mut env = Env::running(2, 0, &services)?;
    let mut objects = services.to_vec();
    for svc in ["ds", "v4only"] {
        objects.push(tcp_slice(
            svc,
            &format!("{svc}-v4"),
            AddressType::IPv4,
            &[env.ep("b0", NODE), env.ep("b1", NODE)],
        ));
        objects.push(tcp_slice(
            svc,
            &format!("{svc}-v6"),
            AddressType::IPv6,
            &[env.ep6("b0", NODE), env.ep6("b1", NODE)],
        ));
    }
    env.apply(&objects)?;
    let v4 = [env.addr4("b0"), env.addr4("b1")];
    let v6 = [env.addr6("b0"), env.addr6("b1")];
    let ds4 = [
        "10.96.0.60:80",
        "10.244.0.1:30086",
        "127.0.0.1:30086",
        "10.97.0.60:80",
    ];
    let ds6 = [
        "[fd00:96::60]:80",
        "[fd00:244::1]:30086",
        "[::1]:30086",
        "[fd00:97::60]:80",
    ];
    let only4 = ["10.96.0.61:80", "10.244.0.1:30087", "10.97.0.61:80"];
    for fe in ds4.iter().chain(&only4) {
        env.wait_backends(&format!("{fe}/TCP"), &v4)?;
    }
    for fe in ds6 {
        env.wait_backends(&format!("{fe}/TCP"), &v6)?;
    }

    for fe in ds4.iter().chain(&ds6).chain(&only4) {
        let target = sa(fe);
        let seen = env.node().run(|| -> Result<_> {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..40 {
                let r = tcp_request(target)?;
                assert_eq!(r.peer, Some(target), "{fe}: getpeername shows the frontend");
                assert_eq!(
                    r.seen_peer.is_ipv6(),
                    target.is_ipv6(),
                    "{fe}: served in its own family ({r:?})"
                );
                seen.insert(r.server);
            }
            Ok(seen)
        })?;
        assert_eq!(seen, names(&["b0", "b1"]), "{fe}");
    }

    let services = env.ferry().services_json()?;
    let v4only = frontends_of(&services, "default", "v4only");
    assert!(!v4only.is_empty(), "{services:#}");
    assert!(
        v4only.iter().all(|f| !f.starts_with('[')),
        "an IPv4-only Service must have no IPv6 frontend: {v4only:?}"
    );
    let ds = frontends_of(&services, "default", "ds");
    assert!(ds.iter().any(|f| f.starts_with('[')), "{ds:?}");
    // Nothing of v4only answers in IPv6: its NodePort is not translated (no
    // listener on the node: refused), its IPv6 externalIP passes untouched
    // (no route).
    assert_eq!(
        env.connect_errno(sa("[fd00:244::1]:30087")),
        Some(Some(libc::ECONNREFUSED))
    );
    assert_eq!(
        env.connect_errno(sa("[fd00:97::61]:80")),
        Some(Some(libc::ENETUNREACH))
    );
    Ok(())
}

// ------------------------------------------------------------- lenient IPs

/// Lenient IP parsing as kube-proxy's ParseIPSloppy: a clusterIP and an
/// externalIP written with leading zeros are served on their normal forms.
#[test]
fn lenient_ip_parsing_end_to_end() -> Result<()> {
    require_root();
    let _serial = serial();
    let svc = Service::new("default", "lenient")
        .cluster_ip("10.96.0.041")
        .external_ips(&["10.97.0.041"])
        .port(ServicePort::tcp(80).target(PORT))
        .to_value();
    let mut env = Env::running(1, 0, std::slice::from_ref(&svc))?;
    env.apply(&[
        svc,
        tcp_slice(
            "lenient",
            "lenient-1",
            AddressType::IPv4,
            &[env.ep("b0", NODE)],
        ),
    ])?;
    for fe in ["10.96.0.41:80", "10.97.0.41:80"] {
        env.wait_backends(&format!("{fe}/TCP"), &[env.addr4("b0")])?;
        let r = env.node().run(|| tcp_request(sa(fe)))?;
        assert_eq!(r.server, "b0", "{fe}");
        assert_eq!(r.peer, Some(sa(fe)));
    }
    Ok(())
}
