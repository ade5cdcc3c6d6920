//! `ferry explain`: why one frontend serves the backends it does, in
//! kube-proxy's terms. Computed on demand for the Services asked about,
//! through the very functions the normal compute uses (`merge_slices_with`,
//! `plan_service_with`, with a record that the normal compute leaves out),
//! so an explanation cannot disagree with the desired state.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use super::compute::compute;
use super::endpoints::{
    Endpoint, MergeOutcome, ReadSlice, ServicePortName, merge_slices_with, read_slice,
};
use super::meta::namespace_or_default;
use super::plan::{PortRef, plan_service_with};
use super::service::read_service;
use super::topology::EndpointReason;
use super::types::{
    BackendSet, ClusterState, EmptyOutcome, FrontendAddr, FrontendKind, IpFamily, NodeInfo,
    ObjectKind, Protocol, Selection, ServiceRef,
};

/// What to explain: one frontend, or every frontend of a Service (or of
/// one of its ports, by name or number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExplainQuery {
    Frontend(FrontendAddr),
    Service {
        service: ServiceRef,
        port: Option<String>,
    },
}

impl ExplainQuery {
    /// `address:port/protocol` (`[v6]:port/protocol`) or
    /// `namespace/name[:port]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let bad = || {
            format!(
                "{text:?} is neither ADDRESS:PORT/PROTOCOL (e.g. 10.96.0.10:80/TCP, [fd00::10]:53/UDP) nor NAMESPACE/NAME[:PORT]"
            )
        };
        if let Some((addr, proto)) = text.rsplit_once('/')
            && let Ok(sock) = addr.parse::<SocketAddr>()
        {
            let protocol = match proto.to_ascii_uppercase().as_str() {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                _ => return Err(format!("{text:?}: unknown protocol {proto:?} (TCP or UDP)")),
            };
            return Ok(ExplainQuery::Frontend(FrontendAddr {
                ip: sock.ip(),
                port: sock.port(),
                protocol,
            }));
        }
        let (namespace, rest) = text.split_once('/').ok_or_else(bad)?;
        let (name, port) = match rest.split_once(':') {
            Some((name, port)) => (name, Some(port.to_string())),
            None => (rest, None),
        };
        if namespace.is_empty() || name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        Ok(ExplainQuery::Service {
            service: ServiceRef {
                namespace: namespace.into(),
                name: name.into(),
            },
            port,
        })
    }
}

/// The model's answer.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Explanation {
    pub frontends: Vec<FrontendExplanation>,
    /// What the model reported as invalid about the Services and slices
    /// involved (skipped parts).
    pub invalid: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FrontendExplanation {
    /// ip:port/PROTO.
    pub frontend: String,
    pub address: IpAddr,
    pub port: u16,
    /// "TCP" or "UDP".
    pub protocol: String,
    /// ClusterIP, NodePort, ExternalIP or LoadBalancer.
    pub kind: String,
    /// namespace/name.
    pub service: String,
    /// The service port's name ("" when unnamed).
    pub port_name: String,
    /// Clients on this node (host processes and pods).
    pub node_clients: SelectionExplanation,
    /// Clients outside the node (NodePorts on node addresses, externalIPs,
    /// LB IPs): externalTrafficPolicy applies.
    pub external_clients: Option<ExternalExplanation>,
    /// Every endpoint of the Service's EndpointSlices, by slice name.
    pub endpoints: Vec<EndpointExplanation>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SelectionExplanation {
    /// The backend set's name, as `SERVICE_NAMES` holds it.
    pub backend_set: String,
    /// "Cluster" or "Local" (kube-proxy's clusterEndpoints / localEndpoints).
    pub selection: String,
    /// The desired backends, sorted.
    pub backends: Vec<DesiredBackend>,
    /// With no backend: "reject" (ECONNREFUSED) or "drop" (EHOSTUNREACH).
    pub when_empty: String,
    pub affinity_timeout_secs: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ExternalExplanation {
    #[serde(flatten)]
    pub selection: SelectionExplanation,
    /// externalTrafficPolicy Cluster: masqueraded to the node's address.
    pub masquerade: bool,
    /// loadBalancerSourceRanges of the frontend's family (LoadBalancer
    /// only); empty: any source. The node's own addresses are always
    /// admitted.
    pub source_ranges: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct DesiredBackend {
    /// ip:port.
    pub address: String,
    pub terminating: bool,
    pub local: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EndpointExplanation {
    pub slice: String,
    pub address: IpAddr,
    /// The slice's port number for this service port; None when the slice
    /// has no such port.
    pub port: Option<u16>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// On this node (nodeName).
    pub local: bool,
    pub zone_hints: Vec<String>,
    pub node_hints: Vec<String>,
    /// Kept or dropped, for clients on this node.
    pub reason: EndpointReason,
    /// Kept or dropped, for clients outside the node (external frontends).
    pub external_reason: Option<EndpointReason>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("{0}")]
    NotFound(String),
}

/// Explains `query` against the objects and node the last pass used.
pub fn explain(
    state: &ClusterState,
    node: &NodeInfo,
    query: &ExplainQuery,
) -> Result<Explanation, ExplainError> {
    // The whole compute: which Service a frontend ends up with depends on
    // every other Service's claims.
    let computed = compute(state, node);
    let desired = &computed.desired;
    let frontends: Vec<(&FrontendAddr, &super::types::Frontend)> = match query {
        ExplainQuery::Frontend(addr) => match desired.frontends.get_key_value(addr) {
            Some(f) => vec![f],
            None => {
                let why = match desired.cluster_ips.get(&addr.ip) {
                    Some(set) => format!(
                        "{} is a ClusterIP of Service {}, which defines no port {} {}: connects are refused (ECONNREFUSED)",
                        addr.ip, set.service, addr.port, addr.protocol
                    ),
                    None => format!(
                        "no Service serves {addr} on this node: connects to it are not translated"
                    ),
                };
                return Err(ExplainError::NotFound(why));
            }
        },
        ExplainQuery::Service { service, port } => {
            let matching: Vec<_> = desired
                .frontends
                .iter()
                .filter(|(addr, f)| {
                    f.set.service == *service
                        && port
                            .as_ref()
                            .is_none_or(|p| *p == f.set.port_name || p.parse() == Ok(addr.port))
                })
                .collect();
            if matching.is_empty() {
                let what = match port {
                    Some(p) => format!("Service {service} port {p:?}"),
                    None => format!("Service {service}"),
                };
                let invalid = invalid_of(&computed.invalid, std::slice::from_ref(service));
                let mut why = format!("{what} has no frontend on this node");
                if !invalid.is_empty() {
                    why.push_str(&format!(": {}", invalid.join("; ")));
                }
                return Err(ExplainError::NotFound(why));
            }
            matching
        }
    };

    let mut services: Vec<ServiceRef> = frontends
        .iter()
        .map(|(_, f)| f.set.service.clone())
        .collect();
    services.dedup();
    let mut decisions: HashMap<ServiceRef, ServiceDecisions> = HashMap::new();
    for service in &services {
        decisions.insert(service.clone(), decide(state, node, service));
    }

    let mut out = Explanation {
        frontends: Vec::new(),
        invalid: invalid_of(&computed.invalid, &services),
    };
    for (addr, frontend) in frontends {
        let key = &frontend.set;
        let decisions = &decisions[&key.service];
        let set_of = |sets: &BTreeMap<_, std::sync::Arc<BackendSet>>, k| {
            sets.get(k)
                .map(|s: &std::sync::Arc<BackendSet>| (**s).clone())
                .unwrap_or_default()
        };
        let node_clients = selection_explanation(
            &key.to_string(),
            key.selection,
            &set_of(&desired.backend_sets, key),
        );
        let external = desired.external.get(addr);
        let external_clients = external.map(|ext| ExternalExplanation {
            selection: selection_explanation(
                &ext.set.to_string(),
                ext.set.selection,
                &set_of(&desired.external_sets, &ext.set),
            ),
            masquerade: ext.snat,
            source_ranges: ext
                .source_ranges
                .iter()
                .map(|c| format!("{}/{}", c.network, c.prefix_len))
                .collect(),
        });
        let port = ServicePortName {
            name: key.port_name.clone(),
            protocol: key.protocol,
        };
        let endpoints = decisions.endpoints(
            key.family,
            &port,
            key.selection,
            external.map(|e| e.set.selection),
        );
        out.frontends.push(FrontendExplanation {
            frontend: addr.to_string(),
            address: addr.ip,
            port: addr.port,
            protocol: addr.protocol.to_string(),
            kind: kind_name(frontend.kind).into(),
            service: key.service.to_string(),
            port_name: key.port_name.clone(),
            node_clients,
            external_clients,
            endpoints,
        });
    }
    Ok(out)
}

pub fn kind_name(kind: FrontendKind) -> &'static str {
    match kind {
        FrontendKind::ClusterIp => "ClusterIP",
        FrontendKind::NodePort => "NodePort",
        FrontendKind::ExternalIp => "ExternalIP",
        FrontendKind::LoadBalancer => "LoadBalancer",
    }
}

fn selection_explanation(
    name: &str,
    selection: Selection,
    set: &BackendSet,
) -> SelectionExplanation {
    SelectionExplanation {
        backend_set: name.into(),
        selection: format!("{selection:?}"),
        backends: set
            .backends
            .iter()
            .map(|b| DesiredBackend {
                address: SocketAddr::new(b.ip, b.port).to_string(),
                terminating: b.terminating,
                local: b.local,
            })
            .collect(),
        when_empty: match set.empty_outcome {
            EmptyOutcome::Reject => "reject",
            EmptyOutcome::Drop => "drop",
        }
        .into(),
        affinity_timeout_secs: set.affinity_timeout_secs,
    }
}

fn invalid_of(invalid: &[super::types::InvalidObject], services: &[ServiceRef]) -> Vec<String> {
    invalid
        .iter()
        .filter(|i| {
            i.kind == ObjectKind::Service
                && services
                    .iter()
                    .any(|s| s.namespace == i.namespace && s.name == i.name)
        })
        .map(ToString::to_string)
        .collect()
}

/// One endpoint copy of one slice, as read.
struct SliceEndpoint {
    slice: String,
    family: IpFamily,
    /// Index in its slice's usable endpoints.
    index: usize,
    slice_index: usize,
    endpoint: Endpoint,
    ports: Vec<(ServicePortName, u16)>,
}

/// One Service's decisions, recorded while planning it.
#[derive(Default)]
struct ServiceDecisions {
    endpoints: Vec<SliceEndpoint>,
    /// (family, slice index in merge order, endpoint index, port) → whether
    /// this copy is the one merged.
    merged: HashMap<(IpFamily, usize, usize, ServicePortName), bool>,
    /// (family, port, selection, ip, port number) → reason.
    reasons: HashMap<(IpFamily, ServicePortName, Selection, IpAddr, u16), EndpointReason>,
}

/// Plans one Service as `compute` does (its slices read and merged per
/// family, then `plan_service`), recording every decision.
fn decide(state: &ClusterState, node: &NodeInfo, service: &ServiceRef) -> ServiceDecisions {
    let mut out = ServiceDecisions::default();
    let mut slices: Vec<_> = state
        .endpoint_slices
        .iter()
        .filter(|s| {
            namespace_or_default(s.namespace.as_deref()) == service.namespace
                && s.service_name.as_deref() == Some(service.name.as_str())
        })
        .collect();
    // The merge order of `EndpointsIndex::build`.
    slices.sort_by(|a, b| a.identity().cmp(&b.identity()));
    let mut by_family: BTreeMap<IpFamily, Vec<(String, ReadSlice)>> = BTreeMap::new();
    for (i, slice) in slices.iter().enumerate() {
        let same = |j: Option<usize>| {
            j.and_then(|j| slices.get(j))
                .is_some_and(|o| o.identity() == slice.identity())
        };
        // Defined more than once: ignored (and reported) by the compute.
        if same(i.checked_sub(1)) || same(Some(i + 1)) {
            continue;
        }
        if let Some(read) = read_slice(slice, &node.name, &mut Vec::new()) {
            by_family
                .entry(read.family)
                .or_default()
                .push((slice.name.clone().unwrap_or_default(), read));
        }
    }

    let mut merged = BTreeMap::new();
    for (family, reads) in &by_family {
        // Which copy holds each (port, IP, number): the last Added or
        // Replaced one.
        let mut holder: HashMap<(ServicePortName, IpAddr, u16), (usize, usize)> = HashMap::new();
        let mut record = |slice_index: usize, index: usize, port: &ServicePortName, outcome| {
            let read = &reads[slice_index].1;
            let ep = &read.endpoints[index];
            let number = read
                .ports
                .iter()
                .find(|(p, _)| p == port)
                .map_or(0, |(_, n)| *n);
            if outcome != MergeOutcome::Duplicate {
                holder.insert((port.clone(), ep.ip, number), (slice_index, index));
            }
        };
        let endpoints = merge_slices_with(reads.iter().map(|(_, r)| r), Some(&mut record));
        for (slice_index, (name, read)) in reads.iter().enumerate() {
            for (index, ep) in read.endpoints.iter().enumerate() {
                for (port, number) in &read.ports {
                    let kept =
                        holder.get(&(port.clone(), ep.ip, *number)) == Some(&(slice_index, index));
                    out.merged
                        .insert((*family, slice_index, index, port.clone()), kept);
                }
                out.endpoints.push(SliceEndpoint {
                    slice: name.clone(),
                    family: *family,
                    index,
                    slice_index,
                    endpoint: ep.clone(),
                    ports: read.ports.clone(),
                });
            }
        }
        merged.insert(*family, endpoints);
    }

    if let Some(object) = state.services.iter().find(|s| {
        namespace_or_default(s.metadata.namespace.as_deref()) == service.namespace
            && s.metadata.name.as_deref() == Some(service.name.as_str())
    }) && let Some(info) = read_service(object, &mut Vec::new())
    {
        let reasons = &mut out.reasons;
        let mut record = |port: PortRef<'_>, selection, e: &Endpoint, reason| {
            let name = ServicePortName {
                name: port.name.to_string(),
                protocol: port.protocol,
            };
            reasons.insert((port.family, name, selection, e.ip, e.port), reason);
        };
        plan_service_with(&info, |family| merged.get(&family), node, Some(&mut record));
    }
    out.endpoints
        .sort_by(|a, b| (&a.slice, a.index).cmp(&(&b.slice, b.index)));
    out
}

impl ServiceDecisions {
    /// Every endpoint copy with its reason for one service port in one
    /// family, for the node clients' selection and the external one.
    fn endpoints(
        &self,
        family: IpFamily,
        port: &ServicePortName,
        selection: Selection,
        external: Option<Selection>,
    ) -> Vec<EndpointExplanation> {
        self.endpoints
            .iter()
            .map(|se| {
                let number = se.ports.iter().find(|(p, _)| p == port).map(|(_, n)| *n);
                let reason_for = |selection: Selection, policy_local: EndpointReason| {
                    if se.family != family {
                        return EndpointReason::OtherFamily;
                    }
                    let Some(number) = number else {
                        return EndpointReason::NoMatchingPort;
                    };
                    if self
                        .merged
                        .get(&(family, se.slice_index, se.index, port.clone()))
                        != Some(&true)
                    {
                        return EndpointReason::DuplicateAcrossSlices;
                    }
                    let recorded = self
                        .reasons
                        .get(&(family, port.clone(), selection, se.endpoint.ip, number))
                        .copied();
                    // The plan categorizes every selection a frontend
                    // uses, over every merged endpoint of its port.
                    debug_assert!(recorded.is_some(), "{selection:?} not recorded");
                    match recorded {
                        Some(EndpointReason::OtherNode) => policy_local,
                        Some(r) => r,
                        None => EndpointReason::NotReady,
                    }
                };
                let e = &se.endpoint;
                EndpointExplanation {
                    slice: se.slice.clone(),
                    address: e.ip,
                    port: number.filter(|_| se.family == family),
                    ready: e.ready,
                    serving: e.serving,
                    terminating: e.terminating,
                    local: e.local,
                    zone_hints: e.zone_hints.iter().cloned().collect(),
                    node_hints: e.node_hints.iter().cloned().collect(),
                    reason: reason_for(selection, EndpointReason::InternalTrafficPolicyLocal),
                    external_reason: external
                        .map(|s| reason_for(s, EndpointReason::ExternalTrafficPolicyLocal)),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::Service;

    use super::*;
    use crate::model::EndpointSliceInfo;
    use crate::model::testutil::*;

    fn state(services: Vec<Arc<Service>>, slices: Vec<Arc<EndpointSliceInfo>>) -> ClusterState {
        ClusterState {
            services,
            endpoint_slices: slices,
        }
    }

    fn frontend(text: &str) -> ExplainQuery {
        ExplainQuery::parse(text).unwrap()
    }

    /// The explanation agrees with the model's own result: the endpoints
    /// it keeps are exactly the desired backends, for clients on the node
    /// and outside it.
    fn check_against_compute(state: &ClusterState, node: &NodeInfo, e: &Explanation) {
        let desired = compute(state, node).desired;
        for f in &e.frontends {
            let addr = match ExplainQuery::parse(&f.frontend).unwrap() {
                ExplainQuery::Frontend(a) => a,
                q => panic!("{q:?}"),
            };
            let set = &desired.backend_sets[&desired.frontends[&addr].set];
            let want: BTreeSet<String> = set
                .backends
                .iter()
                .map(|b| SocketAddr::new(b.ip, b.port).to_string())
                .collect();
            let kept = |external: bool| -> BTreeSet<String> {
                f.endpoints
                    .iter()
                    .filter(|ep| {
                        let r = if external {
                            ep.external_reason.unwrap()
                        } else {
                            ep.reason
                        };
                        r.kept()
                    })
                    .map(|ep| SocketAddr::new(ep.address, ep.port.unwrap()).to_string())
                    .collect()
            };
            assert_eq!(kept(false), want, "{}: node clients", f.frontend);
            let got: BTreeSet<String> = f
                .node_clients
                .backends
                .iter()
                .map(|b| b.address.clone())
                .collect();
            assert_eq!(got, want, "{}", f.frontend);
            if let Some(ext) = desired.external.get(&addr) {
                let set = &desired.external_sets[&ext.set];
                let want: BTreeSet<String> = set
                    .backends
                    .iter()
                    .map(|b| SocketAddr::new(b.ip, b.port).to_string())
                    .collect();
                assert_eq!(kept(true), want, "{}: external clients", f.frontend);
            } else {
                assert!(f.external_clients.is_none());
            }
        }
    }

    /// (slice, address) → (reason, external reason) of one frontend.
    fn reasons(
        state: &ClusterState,
        node: &NodeInfo,
        query: &str,
    ) -> BTreeMap<(String, String), (EndpointReason, Option<EndpointReason>)> {
        let e = explain(state, node, &frontend(query)).unwrap();
        check_against_compute(state, node, &e);
        assert_eq!(e.frontends.len(), 1);
        e.frontends[0]
            .endpoints
            .iter()
            .map(|ep| {
                (
                    (ep.slice.clone(), ep.address.to_string()),
                    (ep.reason, ep.external_reason),
                )
            })
            .collect()
    }

    fn of<'m>(
        m: &'m BTreeMap<(String, String), (EndpointReason, Option<EndpointReason>)>,
        slice: &str,
        ip: &str,
    ) -> &'m (EndpointReason, Option<EndpointReason>) {
        &m[&(slice.to_string(), ip.to_string())]
    }

    fn svc() -> ServiceBuilder {
        service("ns", "web", "10.96.0.10").port("http", "TCP", 80)
    }

    fn one_slice(eps: Vec<k8s_openapi::api::discovery::v1::Endpoint>) -> Arc<EndpointSliceInfo> {
        let mut s = slice("ns", "web-a", "web", "IPv4").port("http", "TCP", 8080);
        for e in eps {
            s = s.endpoint(e);
        }
        s.build()
    }

    use EndpointReason::*;
    const CIP: &str = "10.96.0.10:80/TCP";

    #[test]
    fn conditions_ready_not_ready_not_serving_and_terminating() {
        let node = node();
        let st = state(
            vec![svc().build()],
            vec![one_slice(vec![
                ep("10.0.0.1"),
                ep("10.0.0.2").conds(false, false, false),
                ep("10.0.0.3").conds(false, false, true),
                ep("10.0.0.4").conds(false, true, true),
            ])],
        );
        let m = reasons(&st, &node, CIP);
        assert_eq!(of(&m, "web-a", "10.0.0.1").0, Ready);
        assert_eq!(of(&m, "web-a", "10.0.0.2").0, NotReady);
        assert_eq!(of(&m, "web-a", "10.0.0.3").0, NotServing);
        assert_eq!(of(&m, "web-a", "10.0.0.4").0, TerminatingNotNeeded);
    }

    #[test]
    fn terminating_fallback_is_used_without_ready_endpoints() {
        let node = node();
        let st = state(
            vec![svc().build()],
            vec![one_slice(vec![
                ep("10.0.0.3").conds(false, false, true),
                ep("10.0.0.4").conds(false, true, true),
            ])],
        );
        let m = reasons(&st, &node, CIP);
        assert_eq!(of(&m, "web-a", "10.0.0.3").0, NotServing);
        assert_eq!(of(&m, "web-a", "10.0.0.4").0, TerminatingFallback);
    }

    #[test]
    fn internal_traffic_policy_local_drops_other_nodes() {
        let node = node();
        let st = state(
            vec![svc().itp("Local").build()],
            vec![one_slice(vec![
                ep("10.0.0.1").local(),
                ep("10.0.0.2").node("other"),
            ])],
        );
        let m = reasons(&st, &node, CIP);
        assert_eq!(of(&m, "web-a", "10.0.0.1").0, Ready);
        assert_eq!(of(&m, "web-a", "10.0.0.2").0, InternalTrafficPolicyLocal);
        let e = explain(&st, &node, &frontend(CIP)).unwrap();
        assert_eq!(e.frontends[0].node_clients.selection, "Local");
        // With no local endpoint at all: DROP (EHOSTUNREACH), not REJECT.
        let st = state(
            vec![svc().itp("Local").build()],
            vec![one_slice(vec![ep("10.0.0.2").node("other")])],
        );
        let e = explain(&st, &node, &frontend(CIP)).unwrap();
        check_against_compute(&st, &node, &e);
        assert_eq!(e.frontends[0].node_clients.when_empty, "drop");
    }

    #[test]
    fn external_traffic_policy_local_applies_to_clients_outside_the_node_only() {
        let node = node();
        let st = state(
            vec![
                svc()
                    .type_("NodePort")
                    .node_port(30080)
                    .etp("Local")
                    .build(),
            ],
            vec![one_slice(vec![
                ep("10.0.0.1").local(),
                ep("10.0.0.2").node("other"),
            ])],
        );
        let m = reasons(&st, &node, "192.168.0.2:30080/TCP");
        assert_eq!(*of(&m, "web-a", "10.0.0.1"), (Ready, Some(Ready)));
        assert_eq!(
            *of(&m, "web-a", "10.0.0.2"),
            (Ready, Some(ExternalTrafficPolicyLocal))
        );
        let e = explain(&st, &node, &frontend("192.168.0.2:30080/TCP")).unwrap();
        let f = &e.frontends[0];
        assert_eq!(f.kind, "NodePort");
        let ext = f.external_clients.as_ref().unwrap();
        assert_eq!(
            (ext.selection.selection.as_str(), ext.masquerade),
            ("Local", false)
        );
    }

    #[test]
    fn topology_hints_for_another_zone_or_node() {
        let mut node = node();
        node.zone = Some("zone-a".into());
        let st = state(
            vec![svc().build()],
            vec![one_slice(vec![
                ep("10.0.0.1").zone_hints(&["zone-a"]),
                ep("10.0.0.2").zone_hints(&["zone-b"]),
            ])],
        );
        let m = reasons(&st, &node, CIP);
        assert_eq!(of(&m, "web-a", "10.0.0.1").0, Ready);
        assert_eq!(of(&m, "web-a", "10.0.0.2").0, TopologyOtherZone);

        let st = state(
            vec![svc().build()],
            vec![one_slice(vec![
                ep("10.0.0.1").node_hints(&[NODE]),
                ep("10.0.0.2").node_hints(&["other"]),
            ])],
        );
        let m = reasons(&st, &node, CIP);
        assert_eq!(of(&m, "web-a", "10.0.0.1").0, Ready);
        assert_eq!(of(&m, "web-a", "10.0.0.2").0, TopologyOtherNode);
    }

    #[test]
    fn other_family_duplicates_and_missing_ports() {
        let node = node();
        let st = state(
            vec![svc().build()],
            vec![
                one_slice(vec![
                    ep("10.0.0.1").conds(false, true, true),
                    ep("10.0.0.2"),
                ]),
                // The same 10.0.0.1:8080, ready: it replaces the
                // terminating copy of web-a.
                slice("ns", "web-b", "web", "IPv4")
                    .port("http", "TCP", 8080)
                    .endpoint(ep("10.0.0.1"))
                    .endpoint(ep("10.0.0.2"))
                    .build(),
                slice("ns", "web-v6", "web", "IPv6")
                    .port("http", "TCP", 8080)
                    .endpoint(ep("fd00::1"))
                    .build(),
                slice("ns", "web-metrics", "web", "IPv4")
                    .port("metrics", "TCP", 9090)
                    .endpoint(ep("10.0.0.9"))
                    .build(),
            ],
        );
        let m = reasons(&st, &node, CIP);
        assert_eq!(of(&m, "web-a", "10.0.0.1").0, DuplicateAcrossSlices);
        assert_eq!(of(&m, "web-b", "10.0.0.1").0, Ready);
        // Equal state: the first slice by name keeps it.
        assert_eq!(of(&m, "web-a", "10.0.0.2").0, Ready);
        assert_eq!(of(&m, "web-b", "10.0.0.2").0, DuplicateAcrossSlices);
        assert_eq!(of(&m, "web-v6", "fd00::1").0, OtherFamily);
        assert_eq!(of(&m, "web-metrics", "10.0.0.9").0, NoMatchingPort);
    }

    #[test]
    fn queries_by_service_and_unknown_frontends() {
        let node = node();
        let st = state(
            vec![svc().type_("NodePort").node_port(30080).build()],
            vec![one_slice(vec![ep("10.0.0.1")])],
        );
        let by_name = |q: &str| {
            explain(&st, &node, &frontend(q))
                .unwrap()
                .frontends
                .iter()
                .map(|f| format!("{} {}", f.kind, f.frontend))
                .collect::<Vec<_>>()
        };
        let all = by_name("ns/web");
        assert!(
            all.contains(&"ClusterIP 10.96.0.10:80/TCP".to_string()),
            "{all:?}"
        );
        assert!(
            all.contains(&"NodePort 192.168.0.2:30080/TCP".to_string()),
            "{all:?}"
        );
        assert_eq!(by_name("ns/web:http"), all);
        assert_eq!(by_name("ns/web:80"), ["ClusterIP 10.96.0.10:80/TCP"]);
        let err = explain(&st, &node, &frontend("10.96.0.10:81/TCP")).unwrap_err();
        assert!(err.to_string().contains("ECONNREFUSED"), "{err}");
        let err = explain(&st, &node, &frontend("10.1.1.1:80/TCP")).unwrap_err();
        assert!(err.to_string().contains("no Service serves"), "{err}");
        assert!(explain(&st, &node, &frontend("ns/nope")).is_err());
        for bad in ["10.96.0.10:80/SCTP", "nonsense", "/x", "ns/"] {
            assert!(ExplainQuery::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            frontend("[fd00::10]:53/udp"),
            ExplainQuery::Frontend(FrontendAddr {
                ip: "fd00::10".parse().unwrap(),
                port: 53,
                protocol: Protocol::Udp
            })
        );
    }
}
