//! `Incremental` against `compute`: random sequences of changes (Services
//! and slices added, removed and modified, conflicting claims, duplicates,
//! node changes), compared after every step. One kind of sequence mixes
//! everything; the other is mostly objects replaced by new versions of
//! themselves (endpoints, session affinity, externalTrafficPolicy, source
//! ranges), the usual update, which `Incremental` patches into the last
//! result when the claims allow. A last test walks the changes of what
//! clients outside the node get one by one.

use std::sync::Arc;

use super::EndpointSliceInfo;
use k8s_openapi::api::core::v1::Service;

use super::testutil::*;
use super::types::{ClusterState, Computed, FrontendAddr, NodeInfo, Protocol};
use super::{Incremental, Recompute, compute};

const NAMESPACES: &[&str] = &["a", "b"];
const NAMES: &[&str] = &["s0", "s1", "s2", "s3"];
/// Few addresses and ports, so that Services conflict often.
const CLUSTER_IPS: &[&str] = &["10.96.0.1", "10.96.0.2", "10.96.0.3", "10.96.0.1"];
const NODE_PORTS: &[i32] = &[30000, 30001, 30002];
const EXTERNAL_IPS: &[&str] = &["10.96.0.2", "192.0.2.1", "192.0.2.2"];
const ENDPOINT_IPS: &[&str] = &["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"];
const SOURCE_RANGES: &[&[&str]] = &[
    &[],
    &["10.0.0.0/8"],
    &["192.0.2.0/24", "fd00::/8"],
    &["bogus", "10.0.0.0/8"],
];

fn random_service(rng: &mut Rng) -> Arc<Service> {
    let ns = rng.pick(NAMESPACES);
    let name = rng.pick(NAMES);
    random_service_named(rng, ns, name)
}

/// A new random version of one Service.
fn random_service_named(rng: &mut Rng, ns: &str, name: &str) -> Arc<Service> {
    let mut s = service(ns, name, rng.pick(CLUSTER_IPS));
    if rng.chance(20) {
        s = s.families(&["IPv4", "IPv6"], &[rng.pick(CLUSTER_IPS), "fd00::1"]);
    }
    s = s.port("http", "TCP", 80).target(8080);
    if rng.chance(40) {
        s = s.port("dns", "UDP", 53).target_name("dns");
    }
    match rng.below(3) {
        0 => {}
        1 => {
            s = s.type_("NodePort").node_port(rng.pick(NODE_PORTS));
            if rng.chance(30) {
                s = s.etp("Local");
            }
        }
        _ => {
            s = s
                .type_("LoadBalancer")
                .node_port(rng.pick(NODE_PORTS))
                .lb_ingress(Some(rng.pick(EXTERNAL_IPS)), None);
            if rng.chance(50) {
                s = s.etp("Local").health_check_node_port(rng.pick(NODE_PORTS));
            }
            if rng.chance(40) {
                s = s.source_ranges(rng.pick(SOURCE_RANGES));
            }
        }
    }
    if rng.chance(20) {
        s = s.external_ips(&[rng.pick(EXTERNAL_IPS)]);
        if rng.chance(30) {
            s = s.etp("Local");
        }
    }
    if rng.chance(20) {
        s = s.itp("Local");
    }
    if rng.chance(20) {
        s = s.affinity(Some(60));
    }
    if rng.chance(5) {
        s = s.type_("Bogus");
    }
    s.build()
}

fn random_slice(rng: &mut Rng) -> Arc<EndpointSliceInfo> {
    let ns = rng.pick(NAMESPACES);
    let service_name = rng.pick(NAMES);
    let name = format!("{service_name}-{}", rng.below(3));
    random_slice_named(rng, ns, &name, service_name)
}

/// A new random version of one slice, for one Service.
fn random_slice_named(
    rng: &mut Rng,
    ns: &str,
    name: &str,
    service_name: &str,
) -> Arc<EndpointSliceInfo> {
    let family = if rng.chance(15) { "IPv6" } else { "IPv4" };
    let mut b = slice(ns, name, service_name, family)
        .port("http", "TCP", 8080)
        .port("dns", "UDP", 5353);
    for _ in 0..rng.below(4) {
        let ip = if family == "IPv6" {
            "fd00::10"
        } else {
            rng.pick(ENDPOINT_IPS)
        };
        let mut e = ep(ip).conds(rng.chance(70), rng.chance(80), rng.chance(30));
        match rng.below(3) {
            0 => e = e.local(),
            1 => e = e.node("other-node"),
            _ => {}
        }
        if rng.chance(20) {
            e = e.zone_hints(&["zone-a"]);
        }
        b = b.endpoint(e);
    }
    if rng.chance(3) {
        b = b.raw_port(Some("bad"), Some("TCP"), Some(70000));
    }
    b.build()
}

fn random_node(rng: &mut Rng) -> NodeInfo {
    let mut n = node();
    if rng.chance(30) {
        n.name = "other-node".into();
    }
    if rng.chance(30) {
        n.zone = Some("zone-a".into());
    }
    if rng.chance(30) {
        n.addresses.push("fd00::2".parse().unwrap());
    }
    if rng.chance(30) {
        // Admits one of EXTERNAL_IPS and refuses the others.
        n.external_ip_cidrs = vec![super::ip::parse_cidr_lenient("192.0.2.0/31").unwrap()];
    }
    n
}

/// Adds, removes or replaces one object of a list (or duplicates one, as
/// two files defining the same object would).
fn mutate<T: Clone>(rng: &mut Rng, items: &mut Vec<Arc<T>>, new: impl FnOnce(&mut Rng) -> Arc<T>) {
    match rng.below(10) {
        0..=3 => items.push(new(rng)),
        4..=5 if !items.is_empty() => {
            let i = rng.below(items.len());
            items.remove(i);
        }
        6..=8 if !items.is_empty() => {
            let i = rng.below(items.len());
            items[i] = new(rng);
        }
        _ if !items.is_empty() => {
            // The same object once more, as a new Arc.
            let i = rng.below(items.len());
            items.push(Arc::new((*items[i]).clone()));
        }
        _ => items.push(new(rng)),
    }
}

#[test]
fn incremental_equals_compute_after_every_change() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut state = ClusterState::default();
        let mut node = node();
        let mut incremental = Incremental::new();
        for step in 0..150 {
            match rng.below(10) {
                0..=3 => mutate(&mut rng, &mut state.services, random_service),
                4..=7 => mutate(&mut rng, &mut state.endpoint_slices, random_slice),
                8 if rng.chance(30) => node = random_node(&mut rng),
                // Input order must not matter, nor a pass without change.
                _ if rng.chance(50) => {
                    state.services.reverse();
                    let n = state.endpoint_slices.len().min(1);
                    state.endpoint_slices.rotate_left(n);
                }
                _ => {}
            }
            let want = compute(&state, &node);
            let got = incremental.compute(&state, &node);
            assert_eq!(got.desired, want.desired, "seed {seed} step {step}");
            assert_eq!(got.invalid, want.invalid, "seed {seed} step {step}");
        }
    }
}

/// A new version of a random slice of the list: other endpoints, now and
/// then another family or Service.
fn replace_slice(rng: &mut Rng, slices: &mut [Arc<EndpointSliceInfo>]) {
    if slices.is_empty() {
        return;
    }
    let i = rng.below(slices.len());
    let (ns, name) = (
        slices[i].namespace.clone().unwrap(),
        slices[i].name.clone().unwrap(),
    );
    let service_name = if rng.chance(10) {
        rng.pick(NAMES).to_string()
    } else {
        name.split('-').next().unwrap().to_string()
    };
    slices[i] = random_slice_named(rng, &ns, &name, &service_name);
}

/// The same Service with another session affinity (its claims unchanged),
/// now and then with externalTrafficPolicy flipped or other source ranges
/// (what external clients get changed), or a new random version of it
/// (its claims changed, most likely).
fn replace_service(rng: &mut Rng, services: &mut [Arc<Service>]) {
    if services.is_empty() {
        return;
    }
    let i = rng.below(services.len());
    let meta = &services[i].metadata;
    let (ns, name) = (meta.namespace.clone().unwrap(), meta.name.clone().unwrap());
    if rng.chance(15) {
        services[i] = random_service_named(rng, &ns, &name);
        return;
    }
    let mut object = (*services[i]).clone();
    let spec = object.spec.as_mut().unwrap();
    match rng.below(10) {
        0 => {
            let local = spec.external_traffic_policy.as_deref() == Some("Local");
            spec.external_traffic_policy = Some(if local { "Cluster" } else { "Local" }.into());
            services[i] = Arc::new(object);
            return;
        }
        1 => {
            let ranges = rng.pick(SOURCE_RANGES);
            spec.load_balancer_source_ranges = Some(
                ranges
                    .iter()
                    .map(std::string::ToString::to_string)
                    .collect(),
            );
            services[i] = Arc::new(object);
            return;
        }
        _ => {}
    }
    let timeout = rng.pick(&[None, Some(30), Some(60)]);
    object.spec.as_mut().unwrap().session_affinity = Some(
        match timeout {
            Some(_) => "ClientIP",
            None => "None",
        }
        .into(),
    );
    object
        .spec
        .as_mut()
        .unwrap()
        .session_affinity_config
        .get_or_insert_with(Default::default)
        .client_ip
        .get_or_insert_with(Default::default)
        .timeout_seconds = timeout;
    services[i] = Arc::new(object);
}

#[test]
fn incremental_patches_object_updates_as_compute_computes() {
    let mut passes = [0usize; 3];
    for seed in 1..=30u64 {
        let mut rng = Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d));
        let mut state = ClusterState::default();
        let mut node = node();
        for _ in 0..12 {
            mutate(&mut rng, &mut state.services, random_service);
            mutate(&mut rng, &mut state.endpoint_slices, random_slice);
        }
        let mut incremental = Incremental::new();
        for step in 0..150 {
            match rng.below(20) {
                0..=9 => replace_slice(&mut rng, &mut state.endpoint_slices),
                10..=14 => replace_service(&mut rng, &mut state.services),
                // Several updates at once.
                15 => {
                    for _ in 0..3 {
                        replace_slice(&mut rng, &mut state.endpoint_slices);
                        replace_service(&mut rng, &mut state.services);
                    }
                }
                // Changes of which Services and slices exist, and of the
                // node addresses: conflicts are settled anew.
                16 => mutate(&mut rng, &mut state.services, random_service),
                17 => mutate(&mut rng, &mut state.endpoint_slices, random_slice),
                18 if rng.chance(50) => {
                    node.addresses = random_node(&mut rng).addresses;
                }
                _ => {}
            }
            let want = compute(&state, &node);
            let got = incremental.compute(&state, &node);
            assert_eq!(got.desired, want.desired, "seed {seed} step {step}");
            assert_eq!(got.invalid, want.invalid, "seed {seed} step {step}");
            passes[match incremental.last_recompute() {
                Recompute::Patched => 0,
                Recompute::Merged => 1,
                Recompute::Planned => 2,
            }] += 1;
        }
    }
    // Every way was taken, the patch most often.
    let [patched, merged, planned] = passes;
    assert!(merged > 0 && planned > 0, "{passes:?}");
    assert!(patched > merged && patched > planned, "{passes:?}");
}

/// What clients outside the node get, changed one thing at a time: the
/// endpoints of a set only external clients use (patched), the source
/// ranges and externalTrafficPolicy (merged again), each pass equal to
/// `compute`.
#[test]
fn incremental_follows_what_external_clients_get() {
    let lb = |itp: &str, etp: &str, ranges: &[&str]| {
        service("ns", "s", "10.96.0.1")
            .type_("LoadBalancer")
            .port("http", "TCP", 80)
            .node_port(30000)
            .lb_ingress(Some("192.0.2.1"), None)
            .itp(itp)
            .etp(etp)
            .health_check_node_port(30001)
            .source_ranges(ranges)
            .build()
    };
    let np = |etp: &str| {
        service("ns", "n", "10.96.0.2")
            .type_("NodePort")
            .port("http", "TCP", 80)
            .node_port(30002)
            .itp("Local")
            .etp(etp)
            .build()
    };
    let endpoints = |service: &str, local: &[&str]| {
        let mut b = slice("ns", &format!("{service}-1"), service, "IPv4")
            .port("http", "TCP", 8080)
            .endpoint(ep("10.0.0.9").node("other-node"));
        for ip in local {
            b = b.endpoint(ep(ip).local());
        }
        b.build()
    };
    /// (snat, number of source ranges, backend IPs) of one external frontend.
    type External = (bool, usize, Vec<String>);
    let external = |c: &Computed, ip: &str, port: u16| -> External {
        let f = &c.desired.external[&FrontendAddr {
            ip: ip.parse().unwrap(),
            port,
            protocol: Protocol::Tcp,
        }];
        let set = &c.desired.external_sets[&f.set];
        let ips = set.backends.iter().map(|b| b.ip.to_string()).collect();
        (f.snat, f.source_ranges.len(), ips)
    };
    let ips = |v: &[&str]| {
        v.iter()
            .map(std::string::ToString::to_string)
            .collect::<Vec<_>>()
    };

    let mut state = ClusterState {
        services: vec![lb("Cluster", "Local", &[]), np("Local")],
        endpoint_slices: vec![endpoints("s", &["10.0.0.1"]), endpoints("n", &["10.0.0.1"])],
    };
    let node = node();
    let mut incremental = Incremental::new();
    // (what, change, pass, LB IP 192.0.2.1:80, NodePort 192.168.0.2:30002)
    type Step = (
        &'static str,
        Box<dyn Fn(&mut ClusterState)>,
        Recompute,
        External,
        External,
    );
    let steps: Vec<Step> = vec![
        (
            "first pass",
            Box::new(|_| {}),
            Recompute::Planned,
            (false, 0, ips(&["10.0.0.1"])),
            (false, 0, ips(&["10.0.0.1"])),
        ),
        (
            "endpoints of a Local set only external clients use",
            Box::new(move |s| s.endpoint_slices[0] = endpoints("s", &["10.0.0.1", "10.0.0.2"])),
            Recompute::Patched,
            (false, 0, ips(&["10.0.0.1", "10.0.0.2"])),
            (false, 0, ips(&["10.0.0.1"])),
        ),
        (
            "endpoints of a Local set both datapaths use (iTP Local)",
            Box::new(move |s| s.endpoint_slices[1] = endpoints("n", &["10.0.0.3"])),
            Recompute::Patched,
            (false, 0, ips(&["10.0.0.1", "10.0.0.2"])),
            (false, 0, ips(&["10.0.0.3"])),
        ),
        (
            "source ranges added",
            Box::new(move |s| s.services[0] = lb("Cluster", "Local", &["10.0.0.0/8"])),
            Recompute::Merged,
            (false, 1, ips(&["10.0.0.1", "10.0.0.2"])),
            (false, 0, ips(&["10.0.0.3"])),
        ),
        (
            "source ranges changed (one bad)",
            Box::new(move |s| {
                s.services[0] = lb("Cluster", "Local", &["10.0.0.0/16", "fd00::/8", "bad"]);
            }),
            Recompute::Merged,
            (false, 1, ips(&["10.0.0.1", "10.0.0.2"])),
            (false, 0, ips(&["10.0.0.3"])),
        ),
        (
            "eTP Local to Cluster with iTP Local: the same sets either way",
            Box::new(move |s| s.services[1] = np("Cluster")),
            Recompute::Merged,
            (false, 1, ips(&["10.0.0.1", "10.0.0.2"])),
            (true, 0, ips(&["10.0.0.3", "10.0.0.9"])),
        ),
        (
            "and back to Local",
            Box::new(move |s| s.services[1] = np("Local")),
            Recompute::Merged,
            (false, 1, ips(&["10.0.0.1", "10.0.0.2"])),
            (false, 0, ips(&["10.0.0.3"])),
        ),
        (
            "eTP Local to Cluster on the LB",
            Box::new(move |s| s.services[0] = lb("Cluster", "Cluster", &["10.0.0.0/16"])),
            Recompute::Merged,
            (true, 1, ips(&["10.0.0.1", "10.0.0.2", "10.0.0.9"])),
            (false, 0, ips(&["10.0.0.3"])),
        ),
    ];
    for (what, change, pass, want_lb, want_np) in steps {
        change(&mut state);
        let want = compute(&state, &node);
        let got = incremental.compute(&state, &node);
        assert_eq!(got.desired, want.desired, "{what}");
        assert_eq!(got.invalid, want.invalid, "{what}");
        assert_eq!(incremental.last_recompute(), pass, "{what}");
        assert_eq!(external(&got, "192.0.2.1", 80), want_lb, "{what}: LB IP");
        assert_eq!(
            external(&got, "192.168.0.2", 30002),
            want_np,
            "{what}: NodePort"
        );
    }
}
