//! The generated cluster: N ClusterIP Services with 10 endpoints each, as
//! the Kubernetes objects Ferry reads (written as manifest files), and the
//! same objects read back the way kube-proxy reads them, for the peers'
//! rules.
//!
//! Shape (chosen so that 100,000 Services fit Ferry's default map
//! capacities, see `lb_common::capacity`):
//! - Service `bench/svc-NNNNNN` (s = 0..N) has ClusterIP 10.96.0.0 + 1 + s
//!   and a TCP port `http` 80 → targetPort 20000 + s % 100; the first 1,000
//!   Services also have a UDP port `dns` 53 → 5353.
//! - Its EndpointSlice lists the same 10 backend pods (10.244.0.10-19), all
//!   ready. Every pod listens on TCP 20000-20099 and UDP 5353, so there are
//!   1,000 distinct TCP backends (+10 UDP) behind N Services.
//! - Ferry's maps then hold N (+1,000) frontends and backend sets, 10 slots
//!   per set (1,010,000 at 100,000 Services, of 1,048,576) and 1,010
//!   backends.

use std::collections::BTreeMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use lb_userspace::model::ClusterState;
use serde_json::{Value, json};

pub(crate) const NAMESPACE: &str = "bench";
/// The node the agent runs as (no endpoint is on it; all are Cluster).
pub(crate) const NODE_NAME: &str = "bench-node";
/// Backend pods, b0..b9 of the sandbox topology.
pub(crate) const PODS: usize = 10;
pub(crate) const POD_BASE: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
pub(crate) const SERVICE_PORT: u16 = 80;
pub(crate) const TCP_TARGET_BASE: u16 = 20000;
/// Distinct TCP target ports; every pod listens on all of them.
pub(crate) const TCP_TARGETS: u16 = 100;
pub(crate) const UDP_SERVICE_PORT: u16 = 53;
pub(crate) const UDP_TARGET_PORT: u16 = 5353;
/// Services that also have a UDP port (the first ones).
pub(crate) const MAX_UDP_SERVICES: usize = 1000;
pub(crate) const SERVICE_CIDR: &str = "10.96.0.0/12";
pub(crate) const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Services (and their slices) per manifest file.
pub(crate) const SERVICES_PER_FILE: usize = 1000;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Workload {
    pub services: usize,
}

impl Workload {
    pub(crate) fn new(services: usize) -> Self {
        assert!((1..1 << 20).contains(&services), "fits 10.96.0.0/12");
        Self { services }
    }

    pub(crate) fn service_name(s: usize) -> String {
        format!("svc-{s:06}")
    }

    pub(crate) fn cluster_ip(s: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + 1 + s as u32)
    }

    pub(crate) fn target_port(s: usize) -> u16 {
        TCP_TARGET_BASE + (s % TCP_TARGETS as usize) as u16
    }

    pub(crate) fn pod_ip(p: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(POD_BASE) + p as u32)
    }

    /// Services with a UDP port: 0..udp_services().
    pub(crate) fn udp_services(&self) -> usize {
        self.services.min(MAX_UDP_SERVICES)
    }

    pub(crate) fn has_udp(&self, s: usize) -> bool {
        s < self.udp_services()
    }

    /// The Service whose endpoints the "one endpoint change" changes.
    pub(crate) fn changed_service(&self) -> usize {
        self.services / 2
    }

    pub(crate) fn file_of(dir: &Path, s: usize) -> PathBuf {
        dir.join(format!("services-{:04}.json", s / SERVICES_PER_FILE))
    }

    pub(crate) fn service_json(&self, s: usize) -> Value {
        let ip = Self::cluster_ip(s).to_string();
        let mut ports = vec![json!({
            "name": "http", "port": SERVICE_PORT, "protocol": "TCP",
            "targetPort": Self::target_port(s),
        })];
        if self.has_udp(s) {
            ports.push(json!({
                "name": "dns", "port": UDP_SERVICE_PORT, "protocol": "UDP",
                "targetPort": UDP_TARGET_PORT,
            }));
        }
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": Self::service_name(s), "namespace": NAMESPACE },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": ip,
                "clusterIPs": [ip],
                "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack",
                "sessionAffinity": "None",
                "internalTrafficPolicy": "Cluster",
                "ports": ports,
            }
        })
    }

    /// The Service's EndpointSlice; with `changed`, the last pod is not
    /// ready (the "one endpoint change").
    pub(crate) fn slice_json(&self, s: usize, changed: bool) -> Value {
        let name = Self::service_name(s);
        let mut ports = vec![json!({
            "name": "http", "port": Self::target_port(s), "protocol": "TCP",
        })];
        if self.has_udp(s) {
            ports.push(json!({ "name": "dns", "port": UDP_TARGET_PORT, "protocol": "UDP" }));
        }
        let endpoints: Vec<Value> = (0..PODS)
            .map(|p| {
                let ready = !(changed && p == PODS - 1);
                json!({
                    "addresses": [Self::pod_ip(p).to_string()],
                    "conditions": { "ready": ready, "serving": ready, "terminating": false },
                    "nodeName": format!("node-{p}"),
                    "targetRef": { "kind": "Pod", "namespace": NAMESPACE, "name": format!("pod-{p}") },
                })
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-abcde"),
                "namespace": NAMESPACE,
                "labels": {
                    "kubernetes.io/service-name": name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints,
        })
    }

    /// Writes file `index` (Services index*1000 .. +1000 and their slices)
    /// as one JSON `List`; `changed` applies the endpoint change to the
    /// changed Service if it is in this file.
    pub(crate) fn write_file(&self, dir: &Path, index: usize, changed: bool) -> Result<PathBuf> {
        let start = index * SERVICES_PER_FILE;
        let end = (start + SERVICES_PER_FILE).min(self.services);
        let mut items = Vec::with_capacity(2 * (end - start));
        for s in start..end {
            items.push(self.service_json(s));
            items.push(self.slice_json(s, changed && s == self.changed_service()));
        }
        let list = json!({ "apiVersion": "v1", "kind": "List", "items": items });
        let path = Self::file_of(dir, start);
        // Written whole and renamed into place, as an editor would.
        let tmp = dir.join(format!(".{}.tmp", index));
        fs::write(&tmp, serde_json::to_vec(&list)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(path)
    }

    /// Writes every manifest file into `dir` (created).
    pub(crate) fn write_manifests(&self, dir: &Path) -> Result<()> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for index in 0..self.services.div_ceil(SERVICES_PER_FILE) {
            self.write_file(dir, index, false)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub(crate) fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One service port as kube-proxy's proxiers see it (ClusterIP only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServicePort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    pub protocol: Proto,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    /// Ready endpoints (address, port), sorted.
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

impl ServicePort {
    /// kube-proxy's ServicePortName: "ns/name:port" (":port" only when named).
    pub(crate) fn port_name_string(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, self.port_name)
        }
    }
}

fn proto_of(p: Option<&str>) -> Option<Proto> {
    match p.unwrap_or("TCP") {
        "TCP" => Some(Proto::Tcp),
        "UDP" => Some(Proto::Udp),
        _ => None,
    }
}

/// Reads the objects as kube-proxy's iptables and nftables proxiers do for
/// the subset this workload uses: IPv4 ClusterIP Services; endpoints from
/// the EndpointSlices labelled with the Service's name whose port matches
/// by name and protocol; ready endpoints only (`ready` unset counts as
/// ready). Sorted by namespace/name/port, as kube-proxy's output is
/// deterministic too.
pub(crate) fn service_ports(state: &ClusterState) -> Vec<ServicePort> {
    // (namespace, service) -> [(port name, protocol, port, address, ready)]
    type Eps = Vec<(String, Proto, u16, Ipv4Addr, bool)>;
    let mut by_service: BTreeMap<(String, String), Eps> = BTreeMap::new();
    for slice in &state.endpoint_slices {
        if slice.address_type != "IPv4" {
            continue;
        }
        let namespace = slice.namespace.clone().unwrap_or_default();
        let Some(service) = &slice.service_name else {
            continue;
        };
        let eps = by_service.entry((namespace, service.clone())).or_default();
        for port in &slice.ports {
            let (Some(number), Some(proto)) = (port.port, proto_of(port.protocol.as_deref()))
            else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            for ep in &slice.endpoints {
                let Some(IpAddr::V4(addr)) = ep
                    .address
                    .as_ref()
                    .and_then(lb_userspace::model::EndpointAddress::ip)
                else {
                    continue;
                };
                let ready = ep.conditions.ready.unwrap_or(true);
                eps.push((port_name.clone(), proto, number as u16, addr, ready));
            }
        }
    }
    let mut out = Vec::new();
    for svc in &state.services {
        let Some(spec) = &svc.spec else { continue };
        let Some(cluster_ip) = spec
            .cluster_ip
            .as_deref()
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
        else {
            continue;
        };
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let eps = by_service.get(&(namespace.clone(), name.clone()));
        for port in spec.ports.iter().flatten() {
            let Some(protocol) = proto_of(port.protocol.as_deref()) else {
                continue;
            };
            let port_name = port.name.clone().unwrap_or_default();
            let mut endpoints: Vec<(Ipv4Addr, u16)> = eps
                .into_iter()
                .flatten()
                .filter(|(n, p, _, _, ready)| *n == port_name && *p == protocol && *ready)
                .map(|(_, _, number, addr, _)| (*addr, *number))
                .collect();
            endpoints.sort();
            endpoints.dedup();
            out.push(ServicePort {
                namespace: namespace.clone(),
                name: name.clone(),
                port_name,
                protocol,
                cluster_ip,
                port: port.port as u16,
                endpoints,
            });
        }
    }
    out.sort_by(|a, b| {
        (&a.namespace, &a.name, &a.port_name, a.protocol).cmp(&(
            &b.namespace,
            &b.name,
            &b.port_name,
            b.protocol,
        ))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_userspace::source::manifests::read_manifests;

    /// A scratch directory, removed on drop (also when the test fails).
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn manifests_read_back_as_kube_proxy_sees_them() {
        let scratch = Scratch(std::env::temp_dir().join(format!(
            "ferry-bench-unit-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        )));
        let dir = &scratch.0;
        let w = Workload::new(1203);
        w.write_manifests(dir).unwrap();
        let snapshot = read_manifests(dir, NODE_NAME);
        assert!(snapshot.invalid.is_empty(), "{:?}", snapshot.invalid);
        assert_eq!(snapshot.cluster.services.len(), 1203);
        let ports = service_ports(&snapshot.cluster);
        assert_eq!(ports.len(), 1203 + 1000);
        assert!(ports.iter().all(|p| p.endpoints.len() == PODS));
        let first = &ports[0];
        assert_eq!(first.cluster_ip, Ipv4Addr::new(10, 96, 0, 1));
        assert_eq!(first.port_name_string(), "bench/svc-000000:dns");

        let changed = w.changed_service();
        let file = w
            .write_file(dir, changed / SERVICES_PER_FILE, true)
            .unwrap();
        assert_eq!(file, Workload::file_of(dir, changed));
        let after = service_ports(&read_manifests(dir, NODE_NAME).cluster);
        let diff: Vec<_> = ports
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b)
            .map(|(_, b)| b)
            .collect();
        // Its TCP and UDP ports (it is among the first 1,000).
        assert_eq!(diff.len(), 2);
        for d in diff {
            assert_eq!(d.name, Workload::service_name(changed));
            assert_eq!(d.endpoints.len(), PODS - 1);
        }
    }
}
