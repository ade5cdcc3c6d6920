//! One Service on its own: the backend sets of its ports and the frontends
//! it asks for, before other Services' claims are settled (`merge`). What
//! is planned here depends only on the Service, its endpoints and this
//! node's name and zone, so an unchanged Service keeps its plan (and the
//! very same `Arc`s of keys and sets) from pass to pass.
//!
//! Every client of this datapath is on this node (it translates at the
//! socket), so the traffic policies apply as kube-proxy applies them to
//! local clients: a ClusterIP uses the Local selection when
//! internalTrafficPolicy is Local, else the Cluster selection; NodePorts,
//! externalIPs and load balancer IPs always use the Cluster selection
//! (kube-proxy short-circuits externalTrafficPolicy Local for traffic from
//! the node itself and its pods).

use std::net::IpAddr;
use std::sync::Arc;

use lb_common::capacity::MAX_BACKENDS_PER_SERVICE;

use super::endpoints::{Endpoint, ServiceEndpoints};
use super::service::{ServiceInfo, ServicePortInfo};
use super::topology::{PortPolicy, categorize_endpoints};
use super::types::{
    Backend, BackendSet, BackendSetKey, EmptyOutcome, FrontendAddr, FrontendKind, InvalidObject,
    IpFamily, NodeInfo, ObjectKind, Protocol, Selection, ServiceRef,
};

/// What one Service asks for.
#[derive(Debug)]
pub struct ServicePlan {
    pub service: ServiceRef,
    /// One per ClusterIP family, in family order.
    pub families: Vec<FamilyPlan>,
    pub health_check: Option<HealthCheckPlan>,
    /// Problems of this Service alone (a port with too many backends).
    pub invalid: Vec<InvalidObject>,
}

#[derive(Debug)]
pub struct FamilyPlan {
    pub family: IpFamily,
    pub cluster_ip: IpAddr,
    /// The service ports that can be served (in spec order).
    pub ports: Vec<PortPlan>,
}

/// One service port in one family.
#[derive(Debug)]
pub struct PortPlan {
    pub name: String,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    /// The frontend on the ClusterIP, with the selection it serves from.
    pub cluster_ip_frontend: (FrontendAddr, Selection),
    /// The sets some frontend may use: only the selections needed.
    pub sets: Vec<(Selection, Arc<BackendSetKey>, Arc<BackendSet>)>,
    /// externalIPs, then load balancer IPs (Cluster selection).
    pub external_frontends: Vec<(FrontendAddr, FrontendKind)>,
}

impl PortPlan {
    pub fn set(&self, selection: Selection) -> Option<(&Arc<BackendSetKey>, &Arc<BackendSet>)> {
        self.sets
            .iter()
            .find(|(s, _, _)| *s == selection)
            .map(|(_, key, set)| (key, set))
    }
}

#[derive(Debug)]
pub struct HealthCheckPlan {
    pub node_port: u16,
    /// Local ready endpoints of the primary family.
    pub local_endpoints: usize,
}

pub fn service_invalid(service: &ServiceRef, reason: String) -> InvalidObject {
    InvalidObject {
        kind: ObjectKind::Service,
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        reason,
    }
}

/// Plans one Service. `endpoints` gives its merged endpoints per family.
pub fn plan_service<'e>(
    svc: &ServiceInfo,
    endpoints: impl Fn(IpFamily) -> Option<&'e ServiceEndpoints>,
    node: &NodeInfo,
) -> ServicePlan {
    let mut invalid = Vec::new();
    let families = svc
        .cluster_ips
        .iter()
        .map(|(&family, &cluster_ip)| {
            let external_ips = svc.external_ips_of(family);
            let load_balancer_ips = svc.load_balancer_ips_of(family);
            let family_endpoints = endpoints(family);
            let ports = svc
                .ports
                .iter()
                .filter_map(|port| {
                    plan_port(
                        &PortContext {
                            svc,
                            port,
                            family,
                            cluster_ip,
                            external_ips: &external_ips,
                            load_balancer_ips: &load_balancer_ips,
                            endpoints: family_endpoints,
                        },
                        node,
                        &mut invalid,
                    )
                })
                .collect();
            FamilyPlan {
                family,
                cluster_ip,
                ports,
            }
        })
        .collect();
    // kube-proxy runs one health server per family, each counting its own
    // family's endpoints; the one on the primary family is what load
    // balancers probe.
    let health_check = svc.health_check_node_port.map(|node_port| HealthCheckPlan {
        node_port,
        local_endpoints: endpoints(svc.primary_family).map_or(0, |e| e.local_ready_ips.len()),
    });
    ServicePlan {
        service: svc.service.clone(),
        families,
        health_check,
        invalid,
    }
}

/// One service port in one family, ready to be planned.
struct PortContext<'s> {
    svc: &'s ServiceInfo,
    port: &'s ServicePortInfo,
    family: IpFamily,
    cluster_ip: IpAddr,
    external_ips: &'s [IpAddr],
    load_balancer_ips: &'s [IpAddr],
    endpoints: Option<&'s ServiceEndpoints>,
}

/// None when the port cannot be served (reported in `invalid`).
fn plan_port(
    ctx: &PortContext<'_>,
    node: &NodeInfo,
    invalid: &mut Vec<InvalidObject>,
) -> Option<PortPlan> {
    let PortContext {
        svc, port, family, ..
    } = *ctx;
    let no_endpoints: &[Endpoint] = &[];
    let endpoints = ctx
        .endpoints
        .map_or(no_endpoints, |e| e.port(&port.name, port.protocol));

    let externally_accessible = port.node_port.is_some()
        || !ctx.external_ips.is_empty()
        || !ctx.load_balancer_ips.is_empty();
    let policy = PortPolicy::new(
        svc.internal_policy_local,
        svc.external_policy_local,
        externally_accessible,
    );
    let categorized = categorize_endpoints(endpoints, policy, &node.name, node.zone.as_deref());

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

    // Candidate sets, kept (by `merge`) only if some frontend ends up using
    // them.
    let mut sets = Vec::new();
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
            return None;
        }
        sets.push((selection, Arc::new(key(selection)), Arc::new(set)));
    }

    let addr = |ip: IpAddr| FrontendAddr {
        ip,
        port: port.port,
        protocol: port.protocol,
    };
    let external_frontends = ctx
        .external_ips
        .iter()
        .map(|ip| (addr(*ip), FrontendKind::ExternalIp))
        .chain(
            ctx.load_balancer_ips
                .iter()
                .map(|ip| (addr(*ip), FrontendKind::LoadBalancer)),
        )
        .collect();
    Some(PortPlan {
        name: port.name.clone(),
        protocol: port.protocol,
        node_port: port.node_port,
        cluster_ip_frontend: (addr(ctx.cluster_ip), cluster_ip_selection),
        sets,
        external_frontends,
    })
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
