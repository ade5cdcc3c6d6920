//! Concise builders for Services, EndpointSlices and nodes in tests.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, LoadBalancerIngress, LoadBalancerStatus, Service, ServicePort, ServiceSpec,
    ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::slice_info::{EndpointSliceInfo, LABEL_SERVICE_NAME};
use super::types::NodeInfo;

/// This node in the reference tables.
pub(crate) const NODE: &str = "test-node";

/// `test-node`, 192.168.0.2, no zone.
pub(crate) fn node() -> NodeInfo {
    NodeInfo {
        name: NODE.into(),
        addresses: vec!["192.168.0.2".parse().unwrap()],
        zone: None,
        external_ip_cidrs: Vec::new(),
    }
}

/// "10.0.0.1:80" / "[fd00::1]:80".
pub(crate) fn addr_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(ip) => format!("{ip}:{port}"),
        IpAddr::V6(ip) => format!("[{ip}]:{port}"),
    }
}

pub(crate) struct ServiceBuilder(Service);

/// A ClusterIP Service with only `spec.clusterIP` set (as a hand-written
/// file would have it).
pub(crate) fn service(ns: &str, name: &str, cluster_ip: &str) -> ServiceBuilder {
    let mut s = Service::default();
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(name.into());
    s.spec = Some(ServiceSpec {
        cluster_ip: Some(cluster_ip.into()),
        ..Default::default()
    });
    ServiceBuilder(s)
}

impl ServiceBuilder {
    fn spec(&mut self) -> &mut ServiceSpec {
        self.0.spec.get_or_insert_with(Default::default)
    }

    fn last_port(&mut self) -> &mut ServicePort {
        let ports = self.spec().ports.get_or_insert_with(Vec::new);
        if ports.is_empty() {
            ports.push(ServicePort::default());
        }
        ports.last_mut().unwrap()
    }

    pub(crate) fn with(mut self, f: impl FnOnce(&mut Service)) -> Self {
        f(&mut self.0);
        self
    }

    pub(crate) fn port(self, name: &str, protocol: &str, port: i32) -> Self {
        self.raw_port(Some(name), Some(protocol), port)
    }

    pub(crate) fn raw_port(
        mut self,
        name: Option<&str>,
        protocol: Option<&str>,
        port: i32,
    ) -> Self {
        self.spec()
            .ports
            .get_or_insert_with(Vec::new)
            .push(ServicePort {
                name: name.map(Into::into),
                protocol: protocol.map(Into::into),
                port,
                ..Default::default()
            });
        self
    }

    /// targetPort (number) of the last port.
    pub(crate) fn target(mut self, port: i32) -> Self {
        self.last_port().target_port = Some(IntOrString::Int(port));
        self
    }

    /// targetPort (name) of the last port.
    pub(crate) fn target_name(mut self, name: &str) -> Self {
        self.last_port().target_port = Some(IntOrString::String(name.into()));
        self
    }

    /// nodePort of the last port.
    pub(crate) fn node_port(mut self, port: i32) -> Self {
        self.last_port().node_port = Some(port);
        self
    }

    pub(crate) fn type_(mut self, t: &str) -> Self {
        self.spec().type_ = Some(t.into());
        self
    }

    /// spec.ipFamilies and spec.clusterIPs (empty slices leave them unset).
    pub(crate) fn families(mut self, families: &[&str], cluster_ips: &[&str]) -> Self {
        let to_vec = |v: &[&str]| {
            (!v.is_empty()).then(|| v.iter().map(std::string::ToString::to_string).collect())
        };
        self.spec().ip_families = to_vec(families);
        self.spec().cluster_ips = to_vec(cluster_ips);
        self
    }

    pub(crate) fn external_ips(mut self, ips: &[&str]) -> Self {
        self.spec().external_ips = Some(ips.iter().map(std::string::ToString::to_string).collect());
        self
    }

    pub(crate) fn lb_ingress(mut self, ip: Option<&str>, ip_mode: Option<&str>) -> Self {
        let status = self.0.status.get_or_insert_with(ServiceStatus::default);
        let lb = status
            .load_balancer
            .get_or_insert_with(LoadBalancerStatus::default);
        lb.ingress
            .get_or_insert_with(Vec::new)
            .push(LoadBalancerIngress {
                ip: ip.map(Into::into),
                ip_mode: ip_mode.map(Into::into),
                ..Default::default()
            });
        self
    }

    /// spec.loadBalancerSourceRanges.
    pub(crate) fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges = Some(
            ranges
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
        );
        self
    }

    pub(crate) fn itp(mut self, policy: &str) -> Self {
        self.spec().internal_traffic_policy = Some(policy.into());
        self
    }

    pub(crate) fn etp(mut self, policy: &str) -> Self {
        self.spec().external_traffic_policy = Some(policy.into());
        self
    }

    /// sessionAffinity ClientIP with this timeoutSeconds (None: no config).
    pub(crate) fn affinity(mut self, timeout: Option<i32>) -> Self {
        let spec = self.spec();
        spec.session_affinity = Some("ClientIP".into());
        spec.session_affinity_config = timeout.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t),
            }),
        });
        self
    }

    pub(crate) fn health_check_node_port(mut self, port: i32) -> Self {
        self.spec().health_check_node_port = Some(port);
        self
    }

    pub(crate) fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        self
    }

    pub(crate) fn build(self) -> Arc<Service> {
        Arc::new(self.0)
    }

    pub(crate) fn build_raw(self) -> Service {
        self.0
    }
}

pub(crate) struct SliceBuilder(EndpointSlice);

/// An EndpointSlice of `service_name` (label kubernetes.io/service-name).
pub(crate) fn slice(ns: &str, name: &str, service_name: &str, address_type: &str) -> SliceBuilder {
    let mut s = EndpointSlice {
        address_type: address_type.into(),
        ..Default::default()
    };
    s.metadata.namespace = Some(ns.into());
    s.metadata.name = Some(name.into());
    SliceBuilder(s).label(LABEL_SERVICE_NAME, service_name)
}

impl SliceBuilder {
    pub(crate) fn port(self, name: &str, protocol: &str, port: i32) -> Self {
        self.raw_port(Some(name), Some(protocol), Some(port))
    }

    pub(crate) fn raw_port(
        mut self,
        name: Option<&str>,
        protocol: Option<&str>,
        port: Option<i32>,
    ) -> Self {
        self.0
            .ports
            .get_or_insert_with(Vec::new)
            .push(EndpointPort {
                name: name.map(Into::into),
                protocol: protocol.map(Into::into),
                port,
                ..Default::default()
            });
        self
    }

    pub(crate) fn endpoint(mut self, e: Endpoint) -> Self {
        self.0.endpoints.get_or_insert_with(Vec::new).push(e);
        self
    }

    pub(crate) fn label(mut self, key: &str, value: &str) -> Self {
        self.0
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        self
    }

    pub(crate) fn without_service_label(mut self) -> Self {
        if let Some(l) = self.0.metadata.labels.as_mut() {
            l.remove(LABEL_SERVICE_NAME);
        }
        self
    }

    pub(crate) fn build(self) -> Arc<EndpointSliceInfo> {
        Arc::new(self.0.into())
    }
}

/// An endpoint with one address, no conditions (ready), no node (remote).
pub(crate) fn ep(ip: &str) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        ..Default::default()
    }
}

pub(crate) trait EndpointExt {
    /// nodeName = this node.
    fn local(self) -> Self;
    fn node(self, name: &str) -> Self;
    fn conds(self, ready: bool, serving: bool, terminating: bool) -> Self;
    fn conds_opt(
        self,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Self;
    fn addresses(self, ips: &[&str]) -> Self;
    fn zone_hints(self, zones: &[&str]) -> Self;
    fn node_hints(self, nodes: &[&str]) -> Self;
}

impl EndpointExt for Endpoint {
    fn local(self) -> Self {
        self.node(NODE)
    }

    fn node(mut self, name: &str) -> Self {
        self.node_name = Some(name.into());
        self
    }

    fn conds(self, ready: bool, serving: bool, terminating: bool) -> Self {
        self.conds_opt(Some(ready), Some(serving), Some(terminating))
    }

    fn conds_opt(
        mut self,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> Self {
        self.conditions = Some(EndpointConditions {
            ready,
            serving,
            terminating,
        });
        self
    }

    fn addresses(mut self, ips: &[&str]) -> Self {
        self.addresses = ips.iter().map(std::string::ToString::to_string).collect();
        self
    }

    fn zone_hints(mut self, zones: &[&str]) -> Self {
        let hints = self.hints.get_or_insert_with(EndpointHints::default);
        hints.for_zones = Some(
            zones
                .iter()
                .map(|z| ForZone {
                    name: z.to_string(),
                })
                .collect(),
        );
        self
    }

    fn node_hints(mut self, nodes: &[&str]) -> Self {
        let hints = self.hints.get_or_insert_with(EndpointHints::default);
        hints.for_nodes = Some(
            nodes
                .iter()
                .map(|n| ForNode {
                    name: n.to_string(),
                })
                .collect(),
        );
        self
    }
}

/// xorshift64*: random test inputs, reproducible from a seed without a
/// dependency.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    pub(crate) fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// Mostly from `good`, sometimes from `bad`.
    pub(crate) fn either<T: Copy>(&mut self, good: &[T], bad: &[T]) -> T {
        if self.chance(92) {
            self.pick(good)
        } else {
            self.pick(bad)
        }
    }
}
