//! A timing harness (asserts nothing about time): 10,000 ClusterIP Services
//! with 10 endpoints each, shaped as `xtask bench` generates them, programmed
//! into the in-memory store, then one EndpointSlice change (its last
//! endpoint not ready) applied and reverted. Sync is timed with the UDP
//! departure check `Datapath::sync` adds (not the socket destruction). Run with
//! `cargo test --release -p lb-userspace sync_timing -- --ignored --nocapture`.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::sync::Installed;
use super::sync_tests::MemStore;
use crate::model::{self, ClusterState, EndpointSliceInfo, Incremental, NodeInfo};

const SERVICES: usize = 10_000;
const UDP_SERVICES: usize = 1_000;
const PODS: u32 = 10;
const REPETITIONS: usize = 20;

fn service(s: usize) -> Arc<Service> {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + s as u32).to_string();
    let mut ports = vec![ServicePort {
        name: Some("http".into()),
        port: 80,
        protocol: Some("TCP".into()),
        target_port: Some(IntOrString::Int(20000 + (s % 100) as i32)),
        ..Default::default()
    }];
    if s < UDP_SERVICES {
        ports.push(ServicePort {
            name: Some("dns".into()),
            port: 53,
            protocol: Some("UDP".into()),
            target_port: Some(IntOrString::Int(5353)),
            ..Default::default()
        });
    }
    let mut svc = Service::default();
    svc.metadata.namespace = Some("bench".into());
    svc.metadata.name = Some(format!("svc-{s:06}"));
    svc.spec = Some(ServiceSpec {
        type_: Some("ClusterIP".into()),
        cluster_ip: Some(ip.clone()),
        cluster_ips: Some(vec![ip]),
        ip_families: Some(vec!["IPv4".into()]),
        ports: Some(ports),
        ..Default::default()
    });
    Arc::new(svc)
}

fn slice(s: usize, changed: bool) -> Arc<EndpointSliceInfo> {
    let name = format!("svc-{s:06}");
    let mut ports = vec![EndpointPort {
        name: Some("http".into()),
        port: Some(20000 + (s % 100) as i32),
        protocol: Some("TCP".into()),
        ..Default::default()
    }];
    if s < UDP_SERVICES {
        ports.push(EndpointPort {
            name: Some("dns".into()),
            port: Some(5353),
            protocol: Some("UDP".into()),
            ..Default::default()
        });
    }
    let endpoints = (0..PODS)
        .map(|p| {
            let ready = !(changed && p == PODS - 1);
            Endpoint {
                addresses: vec![
                    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 10)) + p).to_string(),
                ],
                conditions: Some(EndpointConditions {
                    ready: Some(ready),
                    serving: Some(ready),
                    terminating: Some(false),
                }),
                node_name: Some(format!("node-{p}")),
                ..Default::default()
            }
        })
        .collect();
    let mut slice = EndpointSlice {
        address_type: "IPv4".into(),
        endpoints: Some(endpoints),
        ports: Some(ports),
        ..Default::default()
    };
    slice.metadata.namespace = Some("bench".into());
    slice.metadata.name = Some(format!("{name}-abcde"));
    slice.metadata.labels = Some([("kubernetes.io/service-name".to_string(), name)].into());
    Arc::new(slice.into())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
#[ignore = "timing harness, run by hand in release mode"]
fn sync_timing() {
    let node = NodeInfo {
        name: "bench-node".into(),
        addresses: vec!["10.244.0.1".parse().unwrap()],
        zone: None,
        external_ip_cidrs: Vec::new(),
    };
    let base = ClusterState {
        services: (0..SERVICES).map(service).collect(),
        endpoint_slices: (0..SERVICES).map(|s| slice(s, false)).collect(),
    };
    let changed_index = SERVICES / 2;
    let mut changed = base.clone();
    changed.endpoint_slices[changed_index] = slice(changed_index, true);

    // Programming everything from nothing.
    let t = Instant::now();
    let full = model::compute(&base, &node);
    let full_compute = t.elapsed();
    let mut incremental = Incremental::new();
    let t = Instant::now();
    let first = incremental.compute(&base, &node);
    let first_compute = t.elapsed();
    assert_eq!(first.desired, full.desired);
    let mut store = MemStore::default();
    store.unchecked = true;
    let mut installed = Installed::default();
    let t = Instant::now();
    let (report, _departed) = installed.sync_with_departures(&mut store, &first.desired);
    let first_sync = t.elapsed();
    assert!(report.errors.is_empty());
    println!(
        "program 10k: compute {full_compute:?} (incremental, empty memo: {first_compute:?}), sync {first_sync:?} ({} writes)",
        report.changes
    );

    // One slice change, back and forth.
    let (mut pure, mut compute, mut sync) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..REPETITIONS {
        let state = if i % 2 == 0 { &changed } else { &base };
        let t = Instant::now();
        let reference = model::compute(state, &node);
        pure.push(t.elapsed());
        let t = Instant::now();
        let computed = incremental.compute(state, &node);
        compute.push(t.elapsed());
        assert_eq!(computed.desired, reference.desired);
        let t = Instant::now();
        let (report, _departed) = installed.sync_with_departures(&mut store, &computed.desired);
        sync.push(t.elapsed());
        assert!(report.errors.is_empty());
        assert!(report.changes > 0);
    }
    println!(
        "one slice change, median of {REPETITIONS}: compute {:?} (from scratch {:?}), sync {:?}",
        median(compute),
        median(pure),
        median(sync)
    );
}
