//! Assembling the desired state: every Service's frontends, the backend sets
//! they serve from, ClusterIPs, NodePorts and health checks.
//!
//! Every client of this datapath is on this node (it translates at the
//! socket), so the traffic policies apply as kube-proxy applies them to
//! local clients: a ClusterIP uses the Local selection when
//! internalTrafficPolicy is Local, else the Cluster selection; NodePorts,
//! externalIPs and load balancer IPs always use the Cluster selection
//! (kube-proxy short-circuits externalTrafficPolicy Local for traffic from
//! the node itself and its pods).
//!
//! Conflicts between Services are settled by namespace/name order: the
//! Service sorted earlier keeps what it claims (a frontend address, a
//! ClusterIP, a NodePort or health check port); the later one loses just the
//! conflicting part and is reported.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use lb_common::capacity::MAX_BACKENDS_PER_SERVICE;

use super::endpoints::{Endpoint, EndpointsIndex};
use super::service::{ServiceInfo, ServicePortInfo, read_service};
use super::topology::{PortPolicy, categorize_endpoints};
use super::types::{
    Backend, BackendSet, BackendSetKey, ClusterState, Computed, DesiredState, EmptyOutcome,
    Frontend, FrontendAddr, FrontendKind, HealthCheck, InvalidObject, IpFamily, NodeInfo,
    ObjectKind, Protocol, Selection, ServiceRef,
};

/// Computes what this node should serve. Pure and deterministic: the same
/// objects in any order give the same result. Never panics.
pub fn compute(state: &ClusterState, node: &NodeInfo) -> Computed {
    let mut invalid = Vec::new();
    let endpoints = EndpointsIndex::build(&state.endpoint_slices, &node.name, &mut invalid);
    let services = read_services(&state.services, &mut invalid);

    let mut builder = Builder::new(node, &endpoints);
    for svc in &services {
        builder.add_service(svc, &mut invalid);
    }

    invalid.sort();
    invalid.dedup();
    Computed {
        desired: builder.desired,
        invalid,
    }
}

/// Reads every Service, sorted by namespace/name (the conflict order).
fn read_services(services: &[Arc<Service>], invalid: &mut Vec<InvalidObject>) -> Vec<ServiceInfo> {
    let mut read: Vec<ServiceInfo> = services
        .iter()
        .filter_map(|s| read_service(s, invalid))
        .collect();
    read.sort_by(|a, b| a.service.cmp(&b.service));
    // Two objects with one namespace/name can only come from files. Which
    // one is meant cannot be told (input order must not matter), so every
    // copy is ignored.
    let mut unique: Vec<ServiceInfo> = Vec::with_capacity(read.len());
    let mut duplicated: Option<ServiceRef> = None;
    for svc in read {
        if duplicated.as_ref() == Some(&svc.service) {
            continue;
        }
        if unique.last().is_some_and(|u| u.service == svc.service) {
            unique.pop();
            invalid.push(service_invalid(
                &svc.service,
                "defined more than once; every definition is ignored".into(),
            ));
            duplicated = Some(svc.service);
        } else {
            unique.push(svc);
        }
    }
    unique
}

fn service_invalid(service: &ServiceRef, reason: String) -> InvalidObject {
    InvalidObject {
        kind: ObjectKind::Service,
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        reason,
    }
}

/// Who holds a node port number (NodePorts and health check ports share the
/// node's port space).
#[derive(Clone, Debug, PartialEq, Eq)]
enum NodePortUse {
    ServicePort {
        service: ServiceRef,
        port_name: String,
    },
    HealthCheck {
        service: ServiceRef,
    },
}

impl NodePortUse {
    fn describe(&self) -> String {
        match self {
            NodePortUse::ServicePort { service, port_name } if port_name.is_empty() => {
                format!("Service {service}")
            }
            NodePortUse::ServicePort { service, port_name } => {
                format!("Service {service} port {port_name:?}")
            }
            NodePortUse::HealthCheck { service } => {
                format!("the health check of Service {service}")
            }
        }
    }
}

struct Builder<'a> {
    node: &'a NodeInfo,
    endpoints: &'a EndpointsIndex,
    /// NodePorts answer on the node's addresses and on loopback, per family.
    node_addresses: BTreeMap<IpFamily, BTreeSet<IpAddr>>,
    cluster_ip_owners: BTreeMap<IpAddr, ServiceRef>,
    node_port_owners: BTreeMap<(u16, Protocol), NodePortUse>,
    desired: DesiredState,
}

/// One service port in one family, ready to be turned into frontends.
struct PortContext<'s> {
    svc: &'s ServiceInfo,
    port: &'s ServicePortInfo,
    family: IpFamily,
    /// None when another Service owns this ClusterIP.
    cluster_ip: Option<IpAddr>,
    external_ips: &'s [IpAddr],
    load_balancer_ips: &'s [IpAddr],
}

impl<'a> Builder<'a> {
    fn new(node: &'a NodeInfo, endpoints: &'a EndpointsIndex) -> Self {
        let mut node_addresses: BTreeMap<IpFamily, BTreeSet<IpAddr>> = BTreeMap::new();
        let loopback = [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        for ip in node.addresses.iter().chain(loopback.iter()) {
            node_addresses
                .entry(IpFamily::of(ip))
                .or_default()
                .insert(*ip);
        }
        Builder {
            node,
            endpoints,
            node_addresses,
            cluster_ip_owners: BTreeMap::new(),
            node_port_owners: BTreeMap::new(),
            desired: DesiredState::default(),
        }
    }

    fn add_service(&mut self, svc: &ServiceInfo, invalid: &mut Vec<InvalidObject>) {
        for (&family, &cluster_ip) in &svc.cluster_ips {
            let cluster_ip = match self.cluster_ip_owners.get(&cluster_ip) {
                Some(owner) if *owner != svc.service => {
                    invalid.push(service_invalid(
                        &svc.service,
                        format!("clusterIP {cluster_ip} is already used by Service {owner}"),
                    ));
                    None
                }
                _ => {
                    self.cluster_ip_owners
                        .insert(cluster_ip, svc.service.clone());
                    Some(cluster_ip)
                }
            };
            let external_ips = svc.external_ips_of(family);
            let load_balancer_ips = svc.load_balancer_ips_of(family);
            for port in &svc.ports {
                self.add_service_port(
                    &PortContext {
                        svc,
                        port,
                        family,
                        cluster_ip,
                        external_ips: &external_ips,
                        load_balancer_ips: &load_balancer_ips,
                    },
                    invalid,
                );
            }
        }
        self.add_health_check(svc, invalid);
    }

    fn add_service_port(&mut self, ctx: &PortContext<'_>, invalid: &mut Vec<InvalidObject>) {
        let PortContext {
            svc, port, family, ..
        } = *ctx;
        let no_endpoints: &[Endpoint] = &[];
        let endpoints = self
            .endpoints
            .get(&svc.service, family)
            .map_or(no_endpoints, |e| e.port(&port.name, port.protocol));

        let externally_accessible = port.node_port.is_some()
            || !ctx.external_ips.is_empty()
            || !ctx.load_balancer_ips.is_empty();
        let policy = PortPolicy::new(
            svc.internal_policy_local,
            svc.external_policy_local,
            externally_accessible,
        );
        let categorized = categorize_endpoints(
            endpoints,
            policy,
            &self.node.name,
            self.node.zone.as_deref(),
        );

        let cluster_ip_selection = if svc.internal_policy_local {
            Selection::Local
        } else {
            Selection::Cluster
        };
        let key = |selection| BackendSetKey {
            service: svc.service.clone(),
            port_name: port.name.clone(),
            protocol: port.protocol,
            family,
            selection,
        };

        // Candidate sets, kept only if some frontend ends up using them.
        let mut sets: BTreeMap<Selection, BackendSet> = BTreeMap::new();
        for (selection, chosen) in [
            (Selection::Cluster, &categorized.cluster),
            (Selection::Local, &categorized.local),
        ] {
            let needed = selection == cluster_ip_selection
                || (selection == Selection::Cluster && externally_accessible);
            if !needed {
                continue;
            }
            let set = backend_set(
                chosen.as_deref().unwrap_or_default(),
                port.protocol,
                categorized.has_any,
                svc.affinity_timeout_secs,
            );
            if set.backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
                invalid.push(service_invalid(
                    &svc.service,
                    format!(
                        "{}: {} backends exceed the limit of {MAX_BACKENDS_PER_SERVICE}; port not served",
                        key(selection),
                        set.backends.len()
                    ),
                ));
                return;
            }
            sets.insert(selection, set);
        }

        let mut candidates: Vec<(FrontendAddr, FrontendKind, Selection)> = Vec::new();
        let addr = |ip: IpAddr, port_number: u16| FrontendAddr {
            ip,
            port: port_number,
            protocol: port.protocol,
        };
        if let Some(ip) = ctx.cluster_ip {
            candidates.push((
                addr(ip, port.port),
                FrontendKind::ClusterIp,
                cluster_ip_selection,
            ));
        }
        if let Some(node_port) = port.node_port
            && self.claim_node_port(svc, port, node_port, invalid)
        {
            for ip in self.node_addresses.get(&family).into_iter().flatten() {
                candidates.push((
                    addr(*ip, node_port),
                    FrontendKind::NodePort,
                    Selection::Cluster,
                ));
            }
        }
        for ip in ctx.external_ips {
            candidates.push((
                addr(*ip, port.port),
                FrontendKind::ExternalIp,
                Selection::Cluster,
            ));
        }
        for ip in ctx.load_balancer_ips {
            candidates.push((
                addr(*ip, port.port),
                FrontendKind::LoadBalancer,
                Selection::Cluster,
            ));
        }

        for (frontend_addr, kind, selection) in candidates {
            if let Some(existing) = self.desired.frontends.get(&frontend_addr) {
                invalid.push(service_invalid(
                    &svc.service,
                    format!(
                        "{} frontend {frontend_addr} is already served by {}; not served for this Service",
                        kind_name(kind),
                        existing.set
                    ),
                ));
                continue;
            }
            let Some(set) = sets.get(&selection) else {
                continue;
            };
            let set_key = key(selection);
            self.desired
                .backend_sets
                .entry(set_key.clone())
                .or_insert_with(|| set.clone());
            if kind == FrontendKind::ClusterIp {
                self.desired
                    .cluster_ips
                    .entry(frontend_addr.ip)
                    .or_insert_with(|| set_key.clone());
            }
            if kind == FrontendKind::NodePort {
                self.desired
                    .node_ports
                    .insert((frontend_addr.port, port.protocol));
            }
            self.desired
                .frontends
                .insert(frontend_addr, Frontend { kind, set: set_key });
        }
    }

    /// Takes `(node_port, protocol)` for this service port, unless another
    /// service port or a health check already holds it.
    fn claim_node_port(
        &mut self,
        svc: &ServiceInfo,
        port: &ServicePortInfo,
        node_port: u16,
        invalid: &mut Vec<InvalidObject>,
    ) -> bool {
        let claim = NodePortUse::ServicePort {
            service: svc.service.clone(),
            port_name: port.name.clone(),
        };
        match self.node_port_owners.get(&(node_port, port.protocol)) {
            Some(owner) if *owner != claim => {
                invalid.push(service_invalid(
                    &svc.service,
                    format!(
                        "nodePort {node_port}/{} is already used by {}; not served for this Service",
                        port.protocol,
                        owner.describe()
                    ),
                ));
                false
            }
            _ => {
                self.node_port_owners
                    .insert((node_port, port.protocol), claim);
                true
            }
        }
    }

    fn add_health_check(&mut self, svc: &ServiceInfo, invalid: &mut Vec<InvalidObject>) {
        let Some(node_port) = svc.health_check_node_port else {
            return;
        };
        // The health check listener is HTTP, so it takes the TCP port.
        if let Some(owner) = self.node_port_owners.get(&(node_port, Protocol::Tcp)) {
            invalid.push(service_invalid(
                &svc.service,
                format!(
                    "healthCheckNodePort {node_port} is already used by {}; no health check",
                    owner.describe()
                ),
            ));
            return;
        }
        self.node_port_owners.insert(
            (node_port, Protocol::Tcp),
            NodePortUse::HealthCheck {
                service: svc.service.clone(),
            },
        );
        // kube-proxy runs one health server per family, each counting its
        // own family's endpoints; the one on the primary family is what load
        // balancers probe.
        let local_endpoints = self
            .endpoints
            .get(&svc.service, svc.primary_family)
            .map_or(0, |e| e.local_ready_ips.len());
        self.desired.health_checks.insert(
            node_port,
            HealthCheck {
                service: svc.service.clone(),
                node_port,
                local_endpoints,
            },
        );
    }
}

fn kind_name(kind: FrontendKind) -> &'static str {
    match kind {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::ExternalIp => "externalIP",
        FrontendKind::LoadBalancer => "load balancer IP",
    }
}

/// A backend set from a selection of endpoints. `empty_outcome` is Drop only
/// when the selection is empty although usable endpoints exist elsewhere,
/// else Reject (also when backends exist, where it is not used).
fn backend_set(
    chosen: &[&Endpoint],
    protocol: Protocol,
    has_any: bool,
    affinity_timeout_secs: Option<u32>,
) -> BackendSet {
    let mut backends: Vec<Backend> = chosen
        .iter()
        .map(|e| Backend {
            ip: e.ip,
            port: e.port,
            protocol,
            // Chosen through the serving+terminating fallback.
            terminating: !e.ready,
            local: e.local,
        })
        .collect();
    backends.sort();
    backends.dedup();
    let empty_outcome = if backends.is_empty() && has_any {
        EmptyOutcome::Drop
    } else {
        EmptyOutcome::Reject
    };
    BackendSet {
        backends,
        empty_outcome,
        affinity_timeout_secs,
    }
}
