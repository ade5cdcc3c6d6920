//! One Service on its own: the backend sets of its ports and the frontends
//! it asks for, before other Services' claims are settled (`merge`). What
//! is planned here depends only on the Service, its endpoints and this
//! node's name, zone and externalIP policy, so an unchanged Service keeps its plan (and the
//! very same `Arc`s of keys and sets) from pass to pass.
//!
//! Two datapaths serve the frontends, and kube-proxy treats their clients
//! differently:
//! - the socket datapath translates at connect, so its clients are on this
//!   node (the node itself and its pods): a ClusterIP uses the Local
//!   selection when internalTrafficPolicy is Local, else the Cluster
//!   selection; NodePorts, externalIPs and load balancer IPs always use the
//!   Cluster selection (kube-proxy short-circuits externalTrafficPolicy
//!   Local for traffic from the node itself and its pods);
//! - the packet datapath serves clients outside the node, which reach only
//!   NodePorts, externalIPs and load balancer IPs: they use the Local
//!   selection when externalTrafficPolicy is Local (client IP preserved),
//!   else the Cluster selection (masqueraded); load balancer IPs admit only
//!   loadBalancerSourceRanges (of the family) when some are set.
//!
//! The Local selection is therefore planned when either policy is Local
//! (for externalTrafficPolicy only on a port reachable from outside).

use std::net::IpAddr;
use std::sync::Arc;

use lb_common::capacity::MAX_BACKENDS_PER_SERVICE;

use super::endpoints::{Endpoint, ServiceEndpoints};
use super::ip::Cidr;
use super::service::{ServiceInfo, ServicePortInfo};
use super::topology::{EndpointReason, PortPolicy, categorize_endpoints_with};
use super::types::{
    Backend, BackendSet, BackendSetKey, EmptyOutcome, FrontendAddr, FrontendKind, InvalidObject,
    IpFamily, NodeInfo, ObjectKind, Protocol, ReportCause, Selection, ServiceRef,
};

/// What one Service asks for.
#[derive(Debug)]
pub(super) struct ServicePlan {
    pub service: ServiceRef,
    /// One per ClusterIP family, in family order.
    pub families: Vec<FamilyPlan>,
    pub health_check: Option<HealthCheckPlan>,
    /// Problems of this Service alone (a port with too many backends).
    pub invalid: Vec<InvalidObject>,
}

#[derive(Debug)]
pub(super) struct FamilyPlan {
    pub family: IpFamily,
    pub cluster_ip: IpAddr,
    /// The service ports that can be served (in spec order).
    pub ports: Vec<PortPlan>,
    /// loadBalancerSourceRanges of this family, for external clients of the
    /// load balancer IPs (empty: unrestricted).
    pub source_ranges: Arc<[Cidr]>,
}

/// One service port in one family.
#[derive(Debug)]
pub(super) struct PortPlan {
    pub name: String,
    pub protocol: Protocol,
    pub node_port: Option<u16>,
    /// The frontend on the ClusterIP, with the selection it serves from.
    pub cluster_ip_frontend: (FrontendAddr, Selection),
    /// The sets some frontend may use: only the selections needed.
    pub sets: Vec<(Selection, Arc<BackendSetKey>, Arc<BackendSet>)>,
    /// externalIPs, then load balancer IPs (Cluster selection for local
    /// clients).
    pub external_frontends: Vec<(FrontendAddr, FrontendKind)>,
    /// The selection clients outside the node get on the NodePort and the
    /// `external_frontends` (Local for externalTrafficPolicy Local); None
    /// when the port is not reachable from outside in this family, or its
    /// set cannot be held (reported).
    pub external_selection: Option<Selection>,
}

impl PortPlan {
    pub(super) fn set(
        &self,
        selection: Selection,
    ) -> Option<(&Arc<BackendSetKey>, &Arc<BackendSet>)> {
        self.sets
            .iter()
            .find(|(s, _, _)| *s == selection)
            .map(|(_, key, set)| (key, set))
    }
}

#[derive(Debug)]
pub(super) struct HealthCheckPlan {
    pub node_port: u16,
    /// Local ready endpoints of the primary family.
    pub local_endpoints: usize,
}

pub(super) fn service_invalid(service: &ServiceRef, reason: String) -> InvalidObject {
    InvalidObject {
        cause: ReportCause::Invalid,
        kind: ObjectKind::Service,
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        reason,
    }
}

/// One service port in one family, as a [`PlanRecord`] is told about it.
#[derive(Clone, Copy, Debug)]
pub(super) struct PortRef<'a> {
    pub family: IpFamily,
    pub name: &'a str,
    pub protocol: Protocol,
}

/// Receives every endpoint's reason, per service port, family and
/// selection, as the plan decides it (see `topology::SelectionRecord`).
pub(super) type PlanRecord<'r> =
    Option<&'r mut dyn FnMut(PortRef<'_>, Selection, &Endpoint, EndpointReason)>;

/// A shorter borrow of a record, for one call.
fn reborrow<'s>(record: &'s mut PlanRecord<'_>) -> PlanRecord<'s> {
    match record {
        Some(r) => Some(&mut **r),
        None => None,
    }
}

/// Plans one Service. `endpoints` gives its merged endpoints per family.
pub(super) fn plan_service<'e>(
    svc: &ServiceInfo,
    endpoints: impl Fn(IpFamily) -> Option<&'e ServiceEndpoints>,
    node: &NodeInfo,
) -> ServicePlan {
    plan_service_with(svc, endpoints, node, None)
}

/// [`plan_service`], handing each endpoint's reason to `record`.
pub(super) fn plan_service_with<'e>(
    svc: &ServiceInfo,
    endpoints: impl Fn(IpFamily) -> Option<&'e ServiceEndpoints>,
    node: &NodeInfo,
    mut record: PlanRecord<'_>,
) -> ServicePlan {
    let mut invalid = Vec::new();
    let (served_external_ips, refused) =
        allowed_external_ips(&svc.external_ips, &node.external_ip_cidrs);
    if !refused.is_empty() {
        invalid.push(external_ips_not_allowed(
            &svc.service,
            &refused,
            &node.external_ip_cidrs,
        ));
    }
    let families = svc
        .cluster_ips
        .iter()
        .map(|(&family, &cluster_ip)| {
            let external_ips: Vec<IpAddr> = served_external_ips
                .iter()
                .copied()
                .filter(|ip| IpFamily::of(ip) == family)
                .collect();
            let load_balancer_ips = svc.load_balancer_ips_of(family);
            let source_ranges: Arc<[Cidr]> = svc.load_balancer_source_ranges_of(family).into();
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
                        reborrow(&mut record),
                    )
                })
                .collect();
            FamilyPlan {
                family,
                cluster_ip,
                ports,
                source_ranges,
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

/// Splits a Service's externalIPs into those this node serves and those it
/// refuses: with `--external-ip-cidr` blocks given (`cidrs` not empty), an
/// externalIP outside every block is refused, so that a user who may create
/// Services cannot capture traffic to an arbitrary address
/// (CVE-2020-8554). Without blocks, every externalIP is served, as
/// kube-proxy does. Both lists keep spec order.
pub(super) fn allowed_external_ips(ips: &[IpAddr], cidrs: &[Cidr]) -> (Vec<IpAddr>, Vec<IpAddr>) {
    ips.iter()
        .copied()
        .partition(|ip| cidrs.is_empty() || cidrs.iter().any(|cidr| cidr.contains(ip)))
}

/// The report naming a Service whose externalIPs `refused` get no frontend.
fn external_ips_not_allowed(
    service: &ServiceRef,
    refused: &[IpAddr],
    cidrs: &[Cidr],
) -> InvalidObject {
    let list = |items: Vec<String>| items.join(", ");
    InvalidObject {
        cause: ReportCause::ExternalIpNotAllowed,
        kind: ObjectKind::Service,
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        reason: format!(
            "externalIPs {} are outside every --external-ip-cidr ({}); not served",
            list(refused.iter().map(IpAddr::to_string).collect()),
            list(cidrs.iter().map(Cidr::to_string).collect()),
        ),
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
    record: PlanRecord<'_>,
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
    let port_ref = PortRef {
        family,
        name: &port.name,
        protocol: port.protocol,
    };
    let mut forward = record.map(|record| {
        move |selection: Selection, e: &Endpoint, reason: EndpointReason| {
            record(port_ref, selection, e, reason);
        }
    });
    let categorized = categorize_endpoints_with(
        endpoints,
        policy,
        &node.name,
        node.zone.as_deref(),
        forward
            .as_mut()
            .map(|f| f as &mut dyn FnMut(Selection, &Endpoint, EndpointReason)),
    );

    let cluster_ip_selection = if svc.internal_policy_local {
        Selection::Local
    } else {
        Selection::Cluster
    };
    // What clients outside the node get (`external_policy_local` already
    // implies a Service that can have external traffic).
    let external_selection = if svc.external_policy_local {
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
    let mut external_served = externally_accessible;
    for (selection, chosen) in [
        (Selection::Cluster, &categorized.cluster),
        (Selection::Local, &categorized.local),
    ] {
        // Local clients: the ClusterIP's selection, and Cluster on the
        // NodePort, externalIPs and LB IPs.
        let for_local_clients = selection == cluster_ip_selection
            || (selection == Selection::Cluster && externally_accessible);
        let for_external_clients = externally_accessible && selection == external_selection;
        if !for_local_clients && !for_external_clients {
            continue;
        }
        let set = backend_set(
            chosen.as_deref().unwrap_or_default(),
            port.protocol,
            categorized.has_any,
            svc.affinity_timeout_secs,
        );
        if set.backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
            let consequence = if for_local_clients {
                "port not served"
            } else {
                "port not served to clients outside the node"
            };
            invalid.push(service_invalid(
                &svc.service,
                format!(
                    "{}: {} backends exceed the limit of {MAX_BACKENDS_PER_SERVICE}; {consequence}",
                    key(selection),
                    set.backends.len()
                ),
            ));
            if for_local_clients {
                return None;
            }
            // Only external clients needed it: local ones are served as
            // without it.
            external_served = false;
            continue;
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
        external_selection: external_served.then_some(external_selection),
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
