//! kube-proxy's CategorizeEndpoints (pkg/proxy/topology.go), case for case:
//! which endpoints of one service port a node may use under Cluster and
//! under Local traffic policy, with topology hints and the fallback to
//! serving-but-terminating endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::endpoints::Endpoint;
use super::types::Selection;

/// Which selections a service port needs, as kube-proxy's
/// `ServicePort.UsesClusterEndpoints` / `UsesLocalEndpoints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PortPolicy {
    pub uses_cluster: bool,
    pub uses_local: bool,
}

impl PortPolicy {
    /// `externally_accessible`: the port has a NodePort, an externalIP or a
    /// load balancer IP (of the family being computed).
    /// `external_policy_local`: externalTrafficPolicy Local on a Service that
    /// can have external traffic at all (kube-proxy's `ExternalPolicyLocal`).
    pub(super) fn new(
        internal_policy_local: bool,
        external_policy_local: bool,
        externally_accessible: bool,
    ) -> Self {
        PortPolicy {
            uses_cluster: !internal_policy_local || externally_accessible,
            uses_local: internal_policy_local || (external_policy_local && externally_accessible),
        }
    }
}

/// How topology hints restrict the Cluster selection on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum TopologyMode {
    /// No filtering.
    Any,
    /// Only endpoints hinted for this node (hints.forNodes).
    PreferSameNode,
    /// Only endpoints hinted for this node's zone (hints.forZones).
    PreferSameZone,
}

/// CategorizeEndpoints' result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Categorized<'a> {
    /// Ready endpoints allowed by topology, else the serving+terminating
    /// ones; None when the port never uses Cluster policy.
    pub cluster: Option<Vec<&'a Endpoint>>,
    /// This node's ready endpoints, else its serving+terminating ones; None
    /// when the port never uses Local policy.
    pub local: Option<Vec<&'a Endpoint>>,
    /// Everything reachable from this node: the union of the two.
    pub all: Vec<&'a Endpoint>,
    /// Whether any endpoint anywhere is usable: an empty selection then
    /// means DROP rather than REJECT.
    pub has_any: bool,
}

/// Why an endpoint is in a selection or not: computed by the very
/// functions that decide (`categorize_endpoints_with`), so an explanation
/// can never disagree with the selection.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointReason {
    /// Kept: ready (and allowed by topology hints, for Cluster).
    Ready,
    /// Kept: serving and terminating, chosen because the selection has no
    /// ready endpoint.
    TerminatingFallback,
    /// Dropped: ready=false and not terminating.
    NotReady,
    /// Dropped: terminating with serving=false (never a fallback).
    NotServing,
    /// Dropped: serving but terminating while ready endpoints exist.
    TerminatingNotNeeded,
    /// Dropped from the Local selection: the endpoint is on another node.
    /// An explanation names the policy that asked for the Local selection
    /// (`InternalTrafficPolicyLocal` or `ExternalTrafficPolicyLocal`).
    OtherNode,
    /// Dropped: internalTrafficPolicy Local and the endpoint is on another
    /// node.
    InternalTrafficPolicyLocal,
    /// Dropped for clients outside the node: externalTrafficPolicy Local
    /// and the endpoint is on another node.
    ExternalTrafficPolicyLocal,
    /// Dropped by topology: every ready endpoint has zone hints, some name
    /// this node's zone, this one's do not.
    TopologyOtherZone,
    /// Dropped by topology: every ready endpoint has node hints, some name
    /// this node, this one's do not.
    TopologyOtherNode,
    /// Dropped: in a slice of the other address family than the frontend.
    OtherFamily,
    /// Dropped: the same address and port is in another slice, whose copy
    /// is used (the non-terminating one, else the first by slice name).
    DuplicateAcrossSlices,
    /// Dropped: the slice has no port of this service port's name and
    /// protocol.
    NoMatchingPort,
}

impl EndpointReason {
    /// Whether the endpoint is a backend of the selection.
    pub fn kept(self) -> bool {
        matches!(
            self,
            EndpointReason::Ready | EndpointReason::TerminatingFallback
        )
    }

    /// kube-proxy's terms, for people.
    pub fn describe(self) -> &'static str {
        match self {
            EndpointReason::Ready => "kept: ready",
            EndpointReason::TerminatingFallback => {
                "kept: serving+terminating, fallback used (no ready endpoint)"
            }
            EndpointReason::NotReady => "dropped: not ready",
            EndpointReason::NotServing => "dropped: terminating and not serving",
            EndpointReason::TerminatingNotNeeded => "dropped: terminating (ready endpoints exist)",
            EndpointReason::OtherNode => "dropped: on another node (Local selection)",
            EndpointReason::InternalTrafficPolicyLocal => {
                "dropped: internalTrafficPolicy Local, endpoint on another node"
            }
            EndpointReason::ExternalTrafficPolicyLocal => {
                "dropped: externalTrafficPolicy Local, endpoint on another node"
            }
            EndpointReason::TopologyOtherZone => "dropped: topology hint for another zone",
            EndpointReason::TopologyOtherNode => "dropped: topology hint for another node",
            EndpointReason::OtherFamily => "dropped: other address family",
            EndpointReason::DuplicateAcrossSlices => "dropped: duplicate across slices",
            EndpointReason::NoMatchingPort => "dropped: its slice has no such port",
        }
    }
}

/// Receives each endpoint's reason, per selection, as it is decided. The
/// normal compute passes none; an explanation passes one for one Service.
pub(super) type SelectionRecord<'r> =
    Option<&'r mut dyn FnMut(Selection, &Endpoint, EndpointReason)>;

/// Why an endpoint that is neither ready nor chosen as a fallback is left
/// out, from its conditions alone.
fn condition_reason(e: &Endpoint) -> EndpointReason {
    if e.ready {
        EndpointReason::Ready
    } else if e.serving && e.terminating {
        EndpointReason::TerminatingNotNeeded
    } else if e.terminating {
        EndpointReason::NotServing
    } else {
        EndpointReason::NotReady
    }
}

/// The Cluster selection's decision for one endpoint. `fallback`: no ready
/// endpoint passed, so serving+terminating ones are used (ignoring
/// topology).
fn cluster_reason(
    e: &Endpoint,
    mode: TopologyMode,
    node_name: &str,
    zone: &str,
    fallback: bool,
) -> EndpointReason {
    if fallback {
        if e.serving && e.terminating {
            EndpointReason::TerminatingFallback
        } else {
            condition_reason(e)
        }
    } else if !e.ready {
        condition_reason(e)
    } else if available_for_topology(e, mode, node_name, zone) {
        EndpointReason::Ready
    } else if mode == TopologyMode::PreferSameNode {
        EndpointReason::TopologyOtherNode
    } else {
        EndpointReason::TopologyOtherZone
    }
}

/// Which local endpoints the Local selection uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LocalMode {
    Ready,
    ServingTerminating,
    Nothing,
}

/// The Local selection's decision for one endpoint.
fn local_reason(e: &Endpoint, mode: LocalMode) -> EndpointReason {
    if !e.local {
        return EndpointReason::OtherNode;
    }
    match mode {
        LocalMode::Ready if e.ready => EndpointReason::Ready,
        LocalMode::ServingTerminating if e.serving && e.terminating => {
            EndpointReason::TerminatingFallback
        }
        _ => condition_reason(e),
    }
}

/// Splits one service port's endpoints. `zone` is the node's
/// topology.kubernetes.io/zone label; "" (or no label) never matches a hint,
/// nor does an empty node name.
#[cfg(test)]
pub(super) fn categorize_endpoints<'a>(
    endpoints: &'a [Endpoint],
    policy: PortPolicy,
    node_name: &str,
    zone: Option<&str>,
) -> Categorized<'a> {
    categorize_endpoints_with(endpoints, policy, node_name, zone, None)
}

/// [`categorize_endpoints`], also handing each endpoint's reason per
/// selection it computes to `record`.
pub(super) fn categorize_endpoints_with<'a>(
    endpoints: &'a [Endpoint],
    policy: PortPolicy,
    node_name: &str,
    zone: Option<&str>,
    mut record: SelectionRecord<'_>,
) -> Categorized<'a> {
    let zone = zone.unwrap_or("");
    if endpoints.is_empty() {
        return Categorized {
            cluster: None,
            local: None,
            all: Vec::new(),
            has_any: false,
        };
    }

    let mut topology_mode = TopologyMode::Any;
    let mut use_serving_terminating = false;
    let mut has_any = false;
    let mut cluster = None;

    if policy.uses_cluster {
        topology_mode = topology_mode_from_hints(endpoints, node_name, zone);
        let reason =
            |e: &Endpoint, fallback| cluster_reason(e, topology_mode, node_name, zone, fallback);
        let mut selected: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| reason(e, false).kept())
            .collect();
        // No ready endpoint anywhere (topology never empties the set: a mode
        // is only chosen when some ready endpoint matches it): fall back to
        // serving+terminating ones, ignoring topology and locality.
        let fallback = selected.is_empty();
        if fallback {
            selected = endpoints
                .iter()
                .filter(|e| reason(e, true).kept())
                .collect();
        }
        if let Some(record) = record.as_mut() {
            for e in endpoints {
                record(Selection::Cluster, e, reason(e, fallback));
            }
        }
        has_any = !selected.is_empty();
        cluster = Some(selected);
    }

    if !policy.uses_local {
        let all = cluster.clone().unwrap_or_default();
        return Categorized {
            cluster,
            local: None,
            all,
            has_any,
        };
    }

    let mut has_local_ready = false;
    let mut has_local_serving_terminating = false;
    for e in endpoints {
        if e.ready {
            has_any = true;
            has_local_ready |= e.local;
        } else if e.serving && e.terminating {
            has_any = true;
            has_local_serving_terminating |= e.local;
        }
    }

    let local_mode = if has_local_ready {
        LocalMode::Ready
    } else if has_local_serving_terminating {
        use_serving_terminating = true;
        LocalMode::ServingTerminating
    } else {
        LocalMode::Nothing
    };
    let local: Vec<&Endpoint> = if local_mode == LocalMode::Nothing {
        Vec::new()
    } else {
        endpoints
            .iter()
            .filter(|e| local_reason(e, local_mode).kept())
            .collect()
    };
    if let Some(record) = record.as_mut() {
        for e in endpoints {
            record(Selection::Local, e, local_reason(e, local_mode));
        }
    }

    let Some(cluster_eps) = cluster else {
        return Categorized {
            cluster: None,
            all: local.clone(),
            local: Some(local),
            has_any,
        };
    };

    let all = if topology_mode == TopologyMode::Any && !use_serving_terminating {
        // Every ready endpoint is in `cluster`, and `local` holds only ready
        // ones, so `cluster` is already the union.
        cluster_eps.clone()
    } else {
        let mut union: BTreeMap<(IpAddr, u16), &Endpoint> = BTreeMap::new();
        for e in cluster_eps.iter().chain(local.iter()) {
            union.insert((e.ip, e.port), e);
        }
        union.into_values().collect()
    };
    Categorized {
        cluster: Some(cluster_eps),
        local: Some(local),
        all,
        has_any,
    }
}

/// The topology mode the hints ask for. Only ready endpoints are considered:
/// - every ready endpoint has node hints and one is hinted for this node →
///   PreferSameNode;
/// - else every ready endpoint has zone hints and one is hinted for this
///   node's zone → PreferSameZone;
/// - else no filtering.
pub(super) fn topology_mode_from_hints(
    endpoints: &[Endpoint],
    node_name: &str,
    zone: &str,
) -> TopologyMode {
    let mut has_ready = false;
    let mut has_for_node = false;
    let mut all_have_node_hints = true;
    let mut has_for_zone = false;
    let mut all_have_zone_hints = true;
    for e in endpoints.iter().filter(|e| e.ready) {
        has_ready = true;
        if e.node_hints.is_empty() {
            all_have_node_hints = false;
        } else if hinted(&e.node_hints, node_name) {
            has_for_node = true;
        }
        if e.zone_hints.is_empty() {
            all_have_zone_hints = false;
        } else if hinted(&e.zone_hints, zone) {
            has_for_zone = true;
        }
    }
    if !has_ready {
        TopologyMode::Any
    } else if all_have_node_hints && has_for_node {
        TopologyMode::PreferSameNode
    } else if all_have_zone_hints && has_for_zone {
        TopologyMode::PreferSameZone
    } else {
        TopologyMode::Any
    }
}

/// Whether an endpoint may be used on this node under `mode` (no fallback
/// here: the fallback happened when the mode was chosen).
pub(super) fn available_for_topology(
    e: &Endpoint,
    mode: TopologyMode,
    node_name: &str,
    zone: &str,
) -> bool {
    match mode {
        TopologyMode::Any => true,
        TopologyMode::PreferSameNode => hinted(&e.node_hints, node_name),
        TopologyMode::PreferSameZone => hinted(&e.zone_hints, zone),
    }
}

/// An empty name (node without a zone label) never matches a hint.
fn hinted(hints: &BTreeSet<String>, name: &str) -> bool {
    !name.is_empty() && hints.contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::addr_port;

    /// A ready, serving, non-terminating, remote endpoint on port 80.
    fn e(ip: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 80,
            ready: true,
            serving: true,
            terminating: false,
            local: false,
            zone_hints: BTreeSet::new(),
            node_hints: BTreeSet::new(),
        }
    }

    trait Tweak {
        fn local(self) -> Self;
        /// ready=false, serving=false, terminating=false.
        fn unready(self) -> Self;
        /// ready=false, serving=true, terminating=true.
        fn serving_terminating(self) -> Self;
        /// ready=false, serving=false, terminating=true.
        fn not_serving_terminating(self) -> Self;
        fn zones(self, z: &[&str]) -> Self;
        fn nodes(self, n: &[&str]) -> Self;
    }

    impl Tweak for Endpoint {
        fn local(self) -> Self {
            Endpoint {
                local: true,
                ..self
            }
        }
        fn unready(self) -> Self {
            Endpoint {
                ready: false,
                serving: false,
                terminating: false,
                ..self
            }
        }
        fn serving_terminating(self) -> Self {
            Endpoint {
                ready: false,
                serving: true,
                terminating: true,
                ..self
            }
        }
        fn not_serving_terminating(self) -> Self {
            Endpoint {
                ready: false,
                serving: false,
                terminating: true,
                ..self
            }
        }
        fn zones(self, z: &[&str]) -> Self {
            Endpoint {
                zone_hints: z.iter().map(std::string::ToString::to_string).collect(),
                ..self
            }
        }
        fn nodes(self, n: &[&str]) -> Self {
            Endpoint {
                node_hints: n.iter().map(std::string::ToString::to_string).collect(),
                ..self
            }
        }
    }

    fn names(eps: &[&Endpoint]) -> Vec<String> {
        let mut v: Vec<String> = eps.iter().map(|e| addr_port(e.ip, e.port)).collect();
        v.sort();
        v
    }

    struct Case {
        name: &'static str,
        node: &'static str,
        zone: Option<&'static str>,
        itp_local: bool,
        etp_local: bool,
        externally_accessible: bool,
        endpoints: Vec<Endpoint>,
        cluster: Option<&'static [&'static str]>,
        local: Option<&'static [&'static str]>,
        all: &'static [&'static str],
        has_any: bool,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                name: "",
                node: "test-node",
                zone: None,
                itp_local: false,
                etp_local: false,
                externally_accessible: false,
                endpoints: Vec::new(),
                cluster: None,
                local: None,
                all: &[],
                has_any: false,
            }
        }
    }

    fn zone_abc() -> Vec<Endpoint> {
        vec![
            e("10.1.2.3").zones(&["zone-a"]),
            e("10.1.2.4").zones(&["zone-b"]),
            e("10.1.2.5").zones(&["zone-c"]),
            e("10.1.2.6").zones(&["zone-a"]),
        ]
    }

    const ALL4: &[&str] = &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.5:80", "10.1.2.6:80"];

    /// Upstream TestCategorizeEndpoints, restated (hints always enabled, as
    /// they are GA; PreferSameTrafficDistribution on), plus the reference
    /// doc's topology and PreferSameNode rows.
    #[test]
    fn categorize_endpoints_upstream_table() {
        let cases = vec![
            Case {
                name: "hints: zone-a node gets zone-a endpoints",
                zone: Some("zone-a"),
                endpoints: zone_abc(),
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                all: &["10.1.2.3:80", "10.1.2.6:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "externalTrafficPolicy: Local, topology ignored for Local endpoints",
                zone: Some("zone-a"),
                etp_local: true,
                externally_accessible: true,
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]).local(),
                    e("10.1.2.4").zones(&["zone-b"]).local(),
                    e("10.1.2.5").zones(&["zone-c"]),
                    e("10.1.2.6").zones(&["zone-a"]),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                all: &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "internalTrafficPolicy: Local, topology ignored for Local endpoints",
                zone: Some("zone-a"),
                itp_local: true,
                externally_accessible: true,
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]).local(),
                    e("10.1.2.4").zones(&["zone-b"]).local(),
                    e("10.1.2.5").zones(&["zone-c"]),
                    e("10.1.2.6").zones(&["zone-a"]),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                local: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                all: &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "empty node labels: no filtering",
                zone: None,
                endpoints: vec![e("10.1.2.3").zones(&["zone-a"])],
                cluster: Some(&["10.1.2.3:80"]),
                all: &["10.1.2.3:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "empty zone label: no filtering",
                zone: Some(""),
                endpoints: vec![e("10.1.2.3").zones(&["zone-a"]), e("10.1.2.4").zones(&[""])],
                cluster: Some(&["10.1.2.3:80", "10.1.2.4:80"]),
                all: &["10.1.2.3:80", "10.1.2.4:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "node in a zone no endpoint is hinted for: no filtering",
                zone: Some("zone-b"),
                endpoints: vec![e("10.1.2.3").zones(&["zone-a"])],
                cluster: Some(&["10.1.2.3:80"]),
                all: &["10.1.2.3:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "unready endpoint is not used",
                zone: Some("zone-a"),
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]),
                    e("10.1.2.4").zones(&["zone-b"]),
                    e("10.1.2.5").zones(&["zone-c"]),
                    e("10.1.2.6").zones(&["zone-a"]).unready(),
                ],
                cluster: Some(&["10.1.2.3:80"]),
                all: &["10.1.2.3:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "only unready endpoints in same zone (should not filter)",
                zone: Some("zone-a"),
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]).unready(),
                    e("10.1.2.4").zones(&["zone-b"]),
                    e("10.1.2.5").zones(&["zone-c"]),
                    e("10.1.2.6").zones(&["zone-a"]).unready(),
                ],
                cluster: Some(&["10.1.2.4:80", "10.1.2.5:80"]),
                all: &["10.1.2.4:80", "10.1.2.5:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "missing hints on one endpoint: no filtering",
                zone: Some("zone-a"),
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]),
                    e("10.1.2.4").zones(&["zone-b"]),
                    e("10.1.2.5"),
                    e("10.1.2.6").zones(&["zone-a"]),
                ],
                cluster: Some(ALL4),
                all: ALL4,
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "missing hints on an unready endpoint do not matter",
                zone: Some("zone-a"),
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]),
                    e("10.1.2.4").zones(&["zone-b"]),
                    e("10.1.2.5").unready(),
                ],
                cluster: Some(&["10.1.2.3:80"]),
                all: &["10.1.2.3:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "multiple hints per endpoint, filtering includes any endpoint with zone included",
                zone: Some("zone-c"),
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a", "zone-b", "zone-c"]),
                    e("10.1.2.4").zones(&["zone-b", "zone-c"]),
                    e("10.1.2.5").zones(&["zone-b", "zone-d"]),
                    e("10.1.2.6").zones(&["zone-c"]),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"]),
                all: &["10.1.2.3:80", "10.1.2.4:80", "10.1.2.6:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "PreferSameNode: node hints for this node",
                node: "node-1",
                zone: Some("zone-a"),
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]).nodes(&["node-1"]),
                    e("10.1.2.4").zones(&["zone-b"]).nodes(&["node-2"]),
                    e("10.1.2.5").zones(&["zone-c"]).nodes(&["node-3"]),
                    e("10.1.2.6").zones(&["zone-a"]).nodes(&["node-4"]),
                ],
                cluster: Some(&["10.1.2.3:80"]),
                all: &["10.1.2.3:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "PreferSameNode: one endpoint without node hints falls back to zone mode",
                node: "node-1",
                zone: Some("zone-a"),
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]).nodes(&["node-1"]),
                    e("10.1.2.4").zones(&["zone-b"]),
                    e("10.1.2.5").zones(&["zone-c"]).nodes(&["node-3"]),
                    e("10.1.2.6").zones(&["zone-a"]).nodes(&["node-4"]),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                all: &["10.1.2.3:80", "10.1.2.6:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "PreferSameNode: one endpoint without any hints: no filtering",
                node: "node-1",
                zone: Some("zone-a"),
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]).nodes(&["node-1"]),
                    e("10.1.2.4"),
                    e("10.1.2.5").zones(&["zone-c"]).nodes(&["node-3"]),
                    e("10.1.2.6").zones(&["zone-a"]).nodes(&["node-4"]),
                ],
                cluster: Some(ALL4),
                all: ALL4,
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "PreferSameNode: no endpoint hinted for this node falls back to zone mode",
                node: "node-9",
                zone: Some("zone-a"),
                endpoints: vec![
                    e("10.1.2.3").zones(&["zone-a"]).nodes(&["node-1"]),
                    e("10.1.2.4").zones(&["zone-b"]).nodes(&["node-2"]),
                    e("10.1.2.5").zones(&["zone-c"]).nodes(&["node-3"]),
                    e("10.1.2.6").zones(&["zone-a"]).nodes(&["node-4"]),
                ],
                cluster: Some(&["10.1.2.3:80", "10.1.2.6:80"]),
                all: &["10.1.2.3:80", "10.1.2.6:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "PreferSameNode: this node's endpoint is unready: zone mode",
                node: "node-1",
                zone: Some("zone-b"),
                endpoints: vec![
                    e("10.1.2.3")
                        .zones(&["zone-a"])
                        .nodes(&["node-1"])
                        .unready(),
                    e("10.1.2.4").zones(&["zone-b"]).nodes(&["node-2"]),
                    e("10.1.2.5").zones(&["zone-c"]).nodes(&["node-3"]),
                ],
                cluster: Some(&["10.1.2.4:80"]),
                all: &["10.1.2.4:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "conflicting topology and localness require merging allEndpoints",
                zone: Some("zone-a"),
                etp_local: true,
                externally_accessible: true,
                endpoints: vec![
                    e("10.0.0.0").zones(&["zone-a"]).local(),
                    e("10.0.0.1").zones(&["zone-b"]).local(),
                    e("10.0.0.2").zones(&["zone-a"]),
                    e("10.0.0.3").zones(&["zone-b"]),
                ],
                cluster: Some(&["10.0.0.0:80", "10.0.0.2:80"]),
                local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                all: &["10.0.0.0:80", "10.0.0.1:80", "10.0.0.2:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "no endpoints at all",
                itp_local: true,
                externally_accessible: true,
                ..Default::default()
            },
            Case {
                name: "internalTrafficPolicy: Local, but all endpoints are remote",
                itp_local: true,
                endpoints: vec![e("10.0.0.0"), e("10.0.0.1")],
                local: Some(&[]),
                all: &[],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "internalTrafficPolicy: Local, all endpoints are local",
                itp_local: true,
                endpoints: vec![e("10.0.0.0").local(), e("10.0.0.1").local()],
                local: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                all: &["10.0.0.0:80", "10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "internalTrafficPolicy: Local, some endpoints are local",
                itp_local: true,
                endpoints: vec![e("10.0.0.0").local(), e("10.0.0.1")],
                local: Some(&["10.0.0.0:80"]),
                all: &["10.0.0.0:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "Cluster traffic policy, endpoints not Ready",
                endpoints: vec![e("10.0.0.0").unready(), e("10.0.0.1").unready()],
                cluster: Some(&[]),
                all: &[],
                has_any: false,
                ..Default::default()
            },
            Case {
                name: "Cluster traffic policy, some endpoints are Ready",
                endpoints: vec![e("10.0.0.0").unready(), e("10.0.0.1")],
                cluster: Some(&["10.0.0.1:80"]),
                all: &["10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "Cluster traffic policy, all endpoints are terminating",
                endpoints: vec![
                    e("10.0.0.0").serving_terminating().local(),
                    e("10.0.0.1").serving_terminating(),
                ],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                all: &["10.0.0.0:80", "10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "terminating fallback ignores topology",
                zone: Some("zone-a"),
                endpoints: vec![
                    e("10.0.0.0").zones(&["zone-b"]).serving_terminating(),
                    e("10.0.0.1").zones(&["zone-c"]).serving_terminating(),
                    e("10.0.0.2").zones(&["zone-a"]).not_serving_terminating(),
                ],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                all: &["10.0.0.0:80", "10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "iTP: Local, eTP: Cluster, some endpoints local",
                itp_local: true,
                externally_accessible: true,
                endpoints: vec![e("10.0.0.0").local(), e("10.0.0.1")],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&["10.0.0.0:80"]),
                all: &["10.0.0.0:80", "10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "iTP: Cluster, eTP: Local, some endpoints local",
                etp_local: true,
                externally_accessible: true,
                endpoints: vec![e("10.0.0.0").local(), e("10.0.0.1")],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&["10.0.0.0:80"]),
                all: &["10.0.0.0:80", "10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "iTP: Local, eTP: Local, some endpoints local",
                itp_local: true,
                etp_local: true,
                externally_accessible: true,
                endpoints: vec![e("10.0.0.0").local(), e("10.0.0.1")],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&["10.0.0.0:80"]),
                all: &["10.0.0.0:80", "10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "iTP: Local, eTP: Local, all endpoints remote",
                itp_local: true,
                etp_local: true,
                externally_accessible: true,
                endpoints: vec![e("10.0.0.0"), e("10.0.0.1")],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&[]),
                all: &["10.0.0.0:80", "10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "iTP: Local, eTP: Local, all endpoints remote and terminating",
                itp_local: true,
                etp_local: true,
                externally_accessible: true,
                endpoints: vec![
                    e("10.0.0.0").serving_terminating(),
                    e("10.0.0.1").serving_terminating(),
                ],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                local: Some(&[]),
                all: &["10.0.0.0:80", "10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "iTP: Cluster, eTP: Local, with terminating endpoints",
                etp_local: true,
                externally_accessible: true,
                endpoints: vec![
                    e("10.0.0.0"),
                    e("10.0.0.1").unready().local(),
                    e("10.0.0.2").serving_terminating().local(),
                    e("10.0.0.3").serving_terminating(),
                ],
                cluster: Some(&["10.0.0.0:80"]),
                local: Some(&["10.0.0.2:80"]),
                all: &["10.0.0.0:80", "10.0.0.2:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "externalTrafficPolicy ignored if not externally accessible",
                etp_local: true,
                externally_accessible: false,
                endpoints: vec![e("10.0.0.0"), e("10.0.0.1").local()],
                cluster: Some(&["10.0.0.0:80", "10.0.0.1:80"]),
                all: &["10.0.0.0:80", "10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "no cluster endpoints for iTP:Local internal-only service",
                itp_local: true,
                endpoints: vec![e("10.0.0.0"), e("10.0.0.1").local()],
                local: Some(&["10.0.0.1:80"]),
                all: &["10.0.0.1:80"],
                has_any: true,
                ..Default::default()
            },
            Case {
                name: "iTP: Local, only non-serving endpoints: nothing anywhere",
                itp_local: true,
                endpoints: vec![
                    e("10.0.0.0").not_serving_terminating().local(),
                    e("10.0.0.1").unready(),
                ],
                local: Some(&[]),
                all: &[],
                has_any: false,
                ..Default::default()
            },
        ];

        for c in cases {
            let policy = PortPolicy::new(c.itp_local, c.etp_local, c.externally_accessible);
            let got = categorize_endpoints(&c.endpoints, policy, c.node, c.zone);
            let want = |v: Option<&[&str]>| {
                v.map(|v| {
                    v.iter()
                        .map(std::string::ToString::to_string)
                        .collect::<Vec<_>>()
                })
            };
            assert_eq!(
                got.cluster.as_deref().map(names),
                want(c.cluster),
                "{}: cluster",
                c.name
            );
            assert_eq!(
                got.local.as_deref().map(names),
                want(c.local),
                "{}: local",
                c.name
            );
            assert_eq!(
                names(&got.all),
                want(Some(c.all)).unwrap(),
                "{}: all",
                c.name
            );
            assert_eq!(got.has_any, c.has_any, "{}: has_any", c.name);
        }
    }

    #[test]
    fn port_policy_table() {
        // (iTP local, eTP local, externally accessible) → (uses cluster, uses local)
        let cases = [
            ((false, false, false), (true, false)),
            ((false, false, true), (true, false)),
            ((false, true, false), (true, false)),
            ((false, true, true), (true, true)),
            ((true, false, false), (false, true)),
            ((true, false, true), (true, true)),
            ((true, true, false), (false, true)),
            ((true, true, true), (true, true)),
        ];
        for ((itp, etp, ext), (cluster, local)) in cases {
            let p = PortPolicy::new(itp, etp, ext);
            assert_eq!(
                (p.uses_cluster, p.uses_local),
                (cluster, local),
                "{itp} {etp} {ext}"
            );
        }
    }

    #[test]
    fn topology_mode_table() {
        let cases: Vec<(&str, Vec<Endpoint>, &str, &str, TopologyMode)> = vec![
            ("no endpoints", vec![], "n1", "a", TopologyMode::Any),
            (
                "no ready endpoints",
                vec![e("10.0.0.1").zones(&["a"]).unready()],
                "n1",
                "a",
                TopologyMode::Any,
            ),
            (
                "zone hinted",
                vec![e("10.0.0.1").zones(&["a"])],
                "n1",
                "a",
                TopologyMode::PreferSameZone,
            ),
            (
                "zone not hinted",
                vec![e("10.0.0.1").zones(&["b"])],
                "n1",
                "a",
                TopologyMode::Any,
            ),
            (
                "empty zone never matches",
                vec![e("10.0.0.1").zones(&[""])],
                "n1",
                "",
                TopologyMode::Any,
            ),
            (
                "node hinted",
                vec![e("10.0.0.1").nodes(&["n1"])],
                "n1",
                "a",
                TopologyMode::PreferSameNode,
            ),
            (
                "node hints win over zone hints",
                vec![e("10.0.0.1").nodes(&["n1"]).zones(&["a"])],
                "n1",
                "a",
                TopologyMode::PreferSameNode,
            ),
            (
                "empty node name never matches",
                vec![e("10.0.0.1").nodes(&[""])],
                "",
                "a",
                TopologyMode::Any,
            ),
            (
                "one ready endpoint lacks zone hints",
                vec![e("10.0.0.1").zones(&["a"]), e("10.0.0.2")],
                "n1",
                "a",
                TopologyMode::Any,
            ),
        ];
        for (what, eps, node, zone, want) in cases {
            assert_eq!(topology_mode_from_hints(&eps, node, zone), want, "{what}");
        }
    }
}
