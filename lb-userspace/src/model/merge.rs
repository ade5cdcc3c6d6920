//! Settling the claims of every Service's plan into one desired state.
//!
//! Conflicts between Services are settled by namespace/name order: plans
//! are added in that order, and the Service sorted earlier keeps what it
//! claims (a frontend address, a ClusterIP, a NodePort or health check
//! port); the later one loses just the conflicting part and is reported.
//!
//! The frontends of clients outside the node (`DesiredState::external`)
//! follow the socket frontends: each NodePort on a node address (not
//! loopback), externalIP and LB IP a Service takes for local clients it
//! also takes for external ones, and nothing else, so they need no
//! conflict rules of their own.
//!
//! This runs over every Service on every pass, so it only moves shared
//! keys and sets around: lookups go through hash maps and the ordered maps
//! of the result are built once, at the end, from (mostly sorted) lists.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::FoldHashMap;
use super::ip::Cidr;
use super::plan::{FamilyPlan, PortPlan, ServicePlan, service_invalid};
use super::types::{
    BackendSet, BackendSetKey, DesiredState, ExternalFrontend, Frontend, FrontendAddr,
    FrontendKind, HealthCheck, InvalidObject, IpFamily, NodeInfo, Protocol, Selection, ServiceRef,
};

/// Who holds a node port number (NodePorts and health check ports share the
/// node's port space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodePortUse<'a> {
    ServicePort {
        service: &'a ServiceRef,
        port_name: &'a str,
    },
    HealthCheck {
        service: &'a ServiceRef,
    },
}

impl NodePortUse<'_> {
    fn describe(&self) -> String {
        match self {
            NodePortUse::ServicePort {
                service,
                port_name: "",
            } => {
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

/// Adds plans in namespace/name order; `finish` gives the desired state.
pub(super) struct Merger<'a> {
    /// NodePorts answer on the node's addresses and on loopback, per family.
    node_addresses: BTreeMap<IpFamily, BTreeSet<IpAddr>>,
    cluster_ip_owners: FoldHashMap<IpAddr, &'a ServiceRef>,
    node_port_owners: FoldHashMap<(u16, Protocol), NodePortUse<'a>>,
    /// Frontends taken so far, with the set that serves them.
    taken: FoldHashMap<FrontendAddr, &'a Arc<BackendSetKey>>,
    backend_sets: Vec<(Arc<BackendSetKey>, Arc<BackendSet>)>,
    frontends: Vec<(FrontendAddr, Frontend)>,
    external_sets: Vec<(Arc<BackendSetKey>, Arc<BackendSet>)>,
    external: Vec<(FrontendAddr, ExternalFrontend)>,
    cluster_ips: Vec<(IpAddr, Arc<BackendSetKey>)>,
    node_ports: Vec<(u16, Protocol)>,
    health_checks: Vec<(u16, HealthCheck)>,
    /// Shared by the external frontends that admit any source.
    no_source_ranges: Arc<[Cidr]>,
}

impl<'a> Merger<'a> {
    pub(super) fn new(node: &NodeInfo) -> Self {
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
        Merger {
            node_addresses,
            cluster_ip_owners: FoldHashMap::default(),
            node_port_owners: FoldHashMap::default(),
            taken: FoldHashMap::default(),
            backend_sets: Vec::new(),
            frontends: Vec::new(),
            external_sets: Vec::new(),
            external: Vec::new(),
            cluster_ips: Vec::new(),
            node_ports: Vec::new(),
            health_checks: Vec::new(),
            no_source_ranges: Arc::new([]),
        }
    }

    /// Adds one Service's plan; plans must come in namespace/name order.
    /// Reports only the conflicts (the plan's own problems are the
    /// caller's: `Incremental` keeps them apart).
    pub(super) fn add(&mut self, plan: &'a ServicePlan, invalid: &mut Vec<InvalidObject>) {
        for family in &plan.families {
            let ip = family.cluster_ip;

            let owned = match self.cluster_ip_owners.entry(ip) {
                Entry::Occupied(owner) if **owner.get() != plan.service => {
                    invalid.push(service_invalid(
                        &plan.service,
                        format!("clusterIP {ip} is already used by Service {}", owner.get()),
                    ));
                    false
                }
                Entry::Occupied(_) => true,
                Entry::Vacant(v) => {
                    v.insert(&plan.service);
                    true
                }
            };
            // The ClusterIP maps to the set of the first port that serves
            // on it.
            let mut cluster_ip_recorded = false;
            for port in &family.ports {
                self.add_port(plan, family, port, owned, &mut cluster_ip_recorded, invalid);
            }
        }
        self.add_health_check(plan, invalid);
    }

    fn add_port(
        &mut self,
        plan: &'a ServicePlan,
        family: &'a FamilyPlan,
        port: &'a PortPlan,
        cluster_ip_owned: bool,
        cluster_ip_recorded: &mut bool,
        invalid: &mut Vec<InvalidObject>,
    ) {
        // Each set is added once, with the first frontend that uses it.
        let mut added = [false; 2];
        // Whether the frontend was taken.
        let mut add = |this: &mut Self,
                       frontend: FrontendAddr,
                       kind: FrontendKind,
                       selection: Selection,
                       invalid: &mut Vec<InvalidObject>| {
            if let Some(existing) = this.taken.get(&frontend) {
                invalid.push(service_invalid(
                    &plan.service,
                    format!(
                        "{} frontend {frontend} is already served by {existing}; not served for this Service",
                        kind_name(kind),
                    ),
                ));
                return false;
            }
            let Some((key, set)) = port.set(selection) else {
                return false;
            };
            let slot = &mut added[selection as usize];
            if !*slot {
                *slot = true;
                this.backend_sets.push((key.clone(), set.clone()));
            }
            if kind == FrontendKind::ClusterIp && !*cluster_ip_recorded {
                *cluster_ip_recorded = true;
                this.cluster_ips.push((frontend.ip, key.clone()));
            }
            if kind == FrontendKind::NodePort {
                this.node_ports.push((frontend.port, port.protocol));
            }
            this.taken.insert(frontend, key);
            this.frontends.push((
                frontend,
                Frontend {
                    kind,
                    set: key.clone(),
                },
            ));
            true
        };
        // The same frontend for clients outside the node, once taken for
        // local ones.
        let external = port
            .external_selection
            .and_then(|selection| port.set(selection));
        let mut external_added = false;
        let mut add_external = |this: &mut Self, frontend: FrontendAddr, kind: FrontendKind| {
            let Some((key, set)) = external else {
                return;
            };
            if !external_added {
                external_added = true;
                this.external_sets.push((key.clone(), set.clone()));
            }
            let source_ranges = if kind == FrontendKind::LoadBalancer {
                family.source_ranges.clone()
            } else {
                this.no_source_ranges.clone()
            };
            this.external.push((
                frontend,
                ExternalFrontend {
                    kind,
                    set: key.clone(),
                    snat: key.selection == Selection::Cluster,
                    source_ranges,
                },
            ));
        };

        if cluster_ip_owned {
            let (frontend, selection) = port.cluster_ip_frontend;
            add(self, frontend, FrontendKind::ClusterIp, selection, invalid);
        }
        if let Some(node_port) = port.node_port
            && self.claim_node_port(plan, port, node_port, invalid)
        {
            let addresses: Vec<IpAddr> = self
                .node_addresses
                .get(&family.family)
                .into_iter()
                .flatten()
                .copied()
                .collect();
            for ip in addresses {
                let frontend = FrontendAddr {
                    ip,
                    port: node_port,
                    protocol: port.protocol,
                };
                let taken = add(
                    self,
                    frontend,
                    FrontendKind::NodePort,
                    Selection::Cluster,
                    invalid,
                );
                // Loopback is for local clients only.
                if taken && !ip.is_loopback() {
                    add_external(self, frontend, FrontendKind::NodePort);
                }
            }
        }
        for (frontend, kind) in &port.external_frontends {
            if add(self, *frontend, *kind, Selection::Cluster, invalid) {
                add_external(self, *frontend, *kind);
            }
        }
    }

    /// Takes `(node_port, protocol)` for this service port, unless another
    /// service port or a health check already holds it.
    fn claim_node_port(
        &mut self,
        plan: &'a ServicePlan,
        port: &'a PortPlan,
        node_port: u16,
        invalid: &mut Vec<InvalidObject>,
    ) -> bool {
        let claim = NodePortUse::ServicePort {
            service: &plan.service,
            port_name: &port.name,
        };
        match self.node_port_owners.entry((node_port, port.protocol)) {
            Entry::Occupied(owner) if *owner.get() != claim => {
                invalid.push(service_invalid(
                    &plan.service,
                    format!(
                        "nodePort {node_port}/{} is already used by {}; not served for this Service",
                        port.protocol,
                        owner.get().describe()
                    ),
                ));
                false
            }
            Entry::Occupied(_) => true,
            Entry::Vacant(v) => {
                v.insert(claim);
                true
            }
        }
    }

    fn add_health_check(&mut self, plan: &'a ServicePlan, invalid: &mut Vec<InvalidObject>) {
        let Some(hc) = &plan.health_check else {
            return;
        };
        let node_port = hc.node_port;
        // The health check listener is HTTP, so it takes the TCP port.
        match self.node_port_owners.entry((node_port, Protocol::Tcp)) {
            Entry::Occupied(owner) => {
                invalid.push(service_invalid(
                    &plan.service,
                    format!(
                        "healthCheckNodePort {node_port} is already used by {}; no health check",
                        owner.get().describe()
                    ),
                ));
            }
            Entry::Vacant(v) => {
                v.insert(NodePortUse::HealthCheck {
                    service: &plan.service,
                });
                self.health_checks.push((
                    node_port,
                    HealthCheck {
                        service: plan.service.clone(),
                        node_port,
                        local_endpoints: hc.local_endpoints,
                    },
                ));
            }
        }
    }

    pub(super) fn finish(self) -> DesiredState {
        // Each list holds every key once (claims are exclusive), so
        // collecting sorts (cheaply: they come mostly in order) and builds.
        DesiredState {
            backend_sets: self.backend_sets.into_iter().collect(),
            frontends: self.frontends.into_iter().collect(),
            external: self.external.into_iter().collect(),
            external_sets: self.external_sets.into_iter().collect(),
            cluster_ips: self.cluster_ips.into_iter().collect(),
            node_ports: self.node_ports.into_iter().collect(),
            health_checks: self.health_checks.into_iter().collect(),
        }
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
