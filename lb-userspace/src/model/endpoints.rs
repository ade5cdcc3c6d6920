//! Reading discovery.k8s.io/v1 EndpointSlices into per-Service endpoint lists,
//! as kube-proxy's EndpointSliceCache builds its EndpointsMap.
//!
//! Granularity of invalid input (reported, then skipped): an endpoint with an
//! unparseable address or an address of the wrong family skips that endpoint
//! only; a port with an out-of-range number or an unknown protocol skips that
//! port only; an unknown addressType skips the slice. The rest of the slice
//! is still used, as kube-proxy would: one bad entry must not take a whole
//! Service down.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::meta::{namespace_or_default, valid_port};
use super::slice_info::EndpointSliceInfo;
use super::types::{InvalidObject, IpFamily, ObjectKind, Protocol, ReportCause, ServiceRef};

/// One endpoint of one service port, as kube-proxy's `BaseEndpointInfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Endpoint {
    pub ip: IpAddr,
    /// The EndpointSlice port's number: a named targetPort resolves per
    /// endpoint, so two endpoints of one service port may differ here.
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// nodeName equals this node.
    pub local: bool,
    /// hints.forZones names.
    pub zone_hints: BTreeSet<String>,
    /// hints.forNodes names.
    pub node_hints: BTreeSet<String>,
}

/// A service port's identity as endpoints see it. Endpoints attach to a
/// service port by name and protocol, never by number.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct ServicePortName {
    pub name: String,
    pub protocol: Protocol,
}

/// Everything one Service's slices of one address family say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ServiceEndpoints {
    /// Merged endpoints of every slice port, deduplicated by IP:port and
    /// sorted by (IP, port).
    pub by_port: BTreeMap<ServicePortName, Vec<Endpoint>>,
    /// Distinct IPs of this node's ready endpoints over all ports: the
    /// health check node port's `localEndpoints`.
    pub local_ready_ips: BTreeSet<IpAddr>,
}

impl ServiceEndpoints {
    pub(super) fn port(&self, name: &str, protocol: Protocol) -> &[Endpoint] {
        self.by_port
            .get(&ServicePortName {
                name: name.to_owned(),
                protocol,
            })
            .map_or(&[], Vec::as_slice)
    }
}

/// All EndpointSlices, grouped by the Service and family they serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct EndpointsIndex {
    services: BTreeMap<(ServiceRef, IpFamily), ServiceEndpoints>,
}

impl EndpointsIndex {
    /// Reads every slice. `node_name` decides locality (an empty name is
    /// never local, as in kube-proxy). Bad entries are appended to `invalid`.
    pub(super) fn build(
        slices: &[Arc<EndpointSliceInfo>],
        node_name: &str,
        invalid: &mut Vec<InvalidObject>,
    ) -> Self {
        // Merging depends on the order slices are seen in (ties between two
        // non-terminating copies of one IP:port); sort so that the result
        // depends on the objects only, not on list order.
        let mut sorted: Vec<&EndpointSliceInfo> = slices.iter().map(Arc::as_ref).collect();
        sorted.sort_by(|a, b| a.identity().cmp(&b.identity()));

        let mut grouped: BTreeMap<(ServiceRef, IpFamily), Vec<ReadSlice>> = BTreeMap::new();
        for (i, slice) in sorted.iter().enumerate() {
            // Two slices with one namespace/name can only come from files;
            // which one is meant cannot be told, so every copy is ignored.
            let same = |other: Option<&&EndpointSliceInfo>| {
                other.is_some_and(|o| o.identity() == slice.identity())
            };
            let previous = i.checked_sub(1).and_then(|p| sorted.get(p));
            if same(previous) {
                continue;
            }
            if same(sorted.get(i + 1)) {
                invalid.push(duplicate_slice(slice));
                continue;
            }
            let Some(read) = read_slice(slice, node_name, invalid) else {
                continue;
            };
            grouped
                .entry((read.service.clone(), read.family))
                .or_default()
                .push(read);
        }

        let services = grouped
            .into_iter()
            .map(|(key, reads)| (key, merge_slices(reads.iter())))
            .collect();
        EndpointsIndex { services }
    }

    pub(super) fn get(&self, service: &ServiceRef, family: IpFamily) -> Option<&ServiceEndpoints> {
        self.services.get(&(service.clone(), family))
    }
}

/// The report for a slice defined more than once (only files can do that).
pub(super) fn duplicate_slice(slice: &EndpointSliceInfo) -> InvalidObject {
    InvalidObject {
        cause: ReportCause::Invalid,
        kind: ObjectKind::EndpointSlice,
        namespace: namespace_or_default(slice.namespace.as_deref()),
        name: slice.name.clone().unwrap_or_default(),
        reason: "defined more than once; every definition is ignored".into(),
    }
}

/// Merges the slices of one Service and family, given in slice
/// namespace/name order (which copy of a repeated IP:port wins depends on
/// it), as kube-proxy's EndpointSliceCache does.
pub(super) fn merge_slices<'a>(reads: impl IntoIterator<Item = &'a ReadSlice>) -> ServiceEndpoints {
    merge_slices_with(reads, None)
}

/// What merging did with one endpoint copy of one slice port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MergeOutcome {
    /// First copy of its IP:port: used.
    Added,
    /// Used in place of an earlier (terminating) copy, which is dropped.
    Replaced,
    /// An earlier copy is used; this one is dropped.
    Duplicate,
}

/// Receives (slice index in merge order, endpoint index in the slice, the
/// port it was merged under, the outcome) for every endpoint copy merged.
pub(super) type MergeRecord<'r> =
    Option<&'r mut dyn FnMut(usize, usize, &ServicePortName, MergeOutcome)>;

/// [`merge_slices`], handing every merge decision to `record`.
pub(super) fn merge_slices_with<'a>(
    reads: impl IntoIterator<Item = &'a ReadSlice>,
    mut record: MergeRecord<'_>,
) -> ServiceEndpoints {
    let mut ports: BTreeMap<ServicePortName, BTreeMap<(IpAddr, u16), Endpoint>> = BTreeMap::new();
    let mut local_ready_ips = BTreeSet::new();
    for (slice_index, read) in reads.into_iter().enumerate() {
        for (port_name, number) in &read.ports {
            let endpoints = ports.entry(port_name.clone()).or_default();
            for (ep_index, ep) in read.endpoints.iter().enumerate() {
                let ep = Endpoint {
                    port: *number,
                    ..ep.clone()
                };
                let outcome = add_endpoint(endpoints, ep);
                if let Some(record) = record.as_mut() {
                    record(slice_index, ep_index, port_name, outcome);
                }
            }
        }
        // kube-proxy counts endpoints per slice port, so a slice without a
        // usable port contributes nothing to the health check either.
        if !read.ports.is_empty() {
            local_ready_ips.extend(
                read.endpoints
                    .iter()
                    .filter(|e| e.local && e.ready)
                    .map(|e| e.ip),
            );
        }
    }
    let by_port = ports
        .into_iter()
        .map(|(name, eps)| (name, eps.into_values().collect()))
        .collect();
    ServiceEndpoints {
        by_port,
        local_ready_ips,
    }
}

/// The same IP:port may appear in two slices (an endpoint moving between
/// slices, or a pod IP reused while the old pod terminates): keep the
/// non-terminating copy; between two copies of equal state the first seen
/// (by slice namespace/name) stays.
fn add_endpoint(endpoints: &mut BTreeMap<(IpAddr, u16), Endpoint>, ep: Endpoint) -> MergeOutcome {
    match endpoints.get(&(ep.ip, ep.port)) {
        // Replace only a terminating copy by a non-terminating one.
        Some(existing) if !existing.terminating || ep.terminating => MergeOutcome::Duplicate,
        existing => {
            let outcome = if existing.is_some() {
                MergeOutcome::Replaced
            } else {
                MergeOutcome::Added
            };
            endpoints.insert((ep.ip, ep.port), ep);
            outcome
        }
    }
}

/// One EndpointSlice as read, before merging.
#[derive(Debug)]
pub(super) struct ReadSlice {
    pub service: ServiceRef,
    pub family: IpFamily,
    /// Usable ports: (name, protocol) → the endpoints' port number.
    pub ports: Vec<(ServicePortName, u16)>,
    /// Usable endpoints, port not yet set.
    pub endpoints: Vec<Endpoint>,
}

pub(super) fn read_slice(
    slice: &EndpointSliceInfo,
    node_name: &str,
    invalid: &mut Vec<InvalidObject>,
) -> Option<ReadSlice> {
    // Listed by kube-proxy with the same label selector as Services.
    if slice.skipped {
        return None;
    }
    let namespace = namespace_or_default(slice.namespace.as_deref());
    let name = slice.name.clone().unwrap_or_default();
    let mut report = |reason: String| {
        invalid.push(InvalidObject {
            cause: ReportCause::Invalid,
            kind: ObjectKind::EndpointSlice,
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
        });
    };
    if name.is_empty() {
        report("metadata.name is empty".into());
        return None;
    }

    // Slices without the label belong to no Service (custom controllers make
    // such slices for their own purposes): ignored, not invalid.
    let service_name = slice.service_name.as_ref().filter(|n| !n.is_empty())?;
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        "FQDN" => return None,
        other => {
            report(format!("unknown addressType {other:?}"));
            return None;
        }
    };

    let mut ports = Vec::new();
    for (i, port) in slice.ports.iter().enumerate() {
        // The API server defaults a nil name to "" and a nil protocol to TCP
        // (discovery/v1 SetDefaults_EndpointPort); files read in standalone
        // mode are not defaulted, so do it here.
        let port_name = port.name.clone().unwrap_or_default();
        let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            // No Service port of ours can be SCTP (reported on the Service).
            "SCTP" => continue,
            other => {
                report(format!(
                    "ports[{i}] ({port_name:?}): unknown protocol {other:?}"
                ));
                continue;
            }
        };
        // A nil port would mean "all ports"; kube-proxy ignores it.
        let Some(number) = port.port else {
            continue;
        };
        let Some(number) = valid_port(number) else {
            report(format!(
                "ports[{i}] ({port_name:?}): port {number} is out of range 1-65535"
            ));
            continue;
        };
        ports.push((
            ServicePortName {
                name: port_name,
                protocol,
            },
            number,
        ));
    }

    let mut endpoints = Vec::new();
    for (i, ep) in slice.endpoints.iter().enumerate() {
        // Only addresses[0] is used; an endpoint without one is ignored.
        let Some(address) = &ep.address else {
            continue;
        };
        let Some(ip) = address.ip() else {
            report(format!(
                "endpoints[{i}]: invalid address {:?}",
                address.to_string()
            ));
            continue;
        };
        if IpFamily::of(&ip) != family {
            report(format!(
                "endpoints[{i}]: address {:?} does not match addressType {}",
                address.to_string(),
                slice.address_type
            ));
            continue;
        }
        let conditions = &ep.conditions;
        // Missing conditions mean ready, serving, not terminating: kube-proxy
        // reads `serving` as true when nil (not "same as ready").
        let ready = conditions.ready.unwrap_or(true);
        let serving = conditions.serving.unwrap_or(true);
        let terminating = conditions.terminating.unwrap_or(false);
        let local = !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name);
        let hints = ep.hints.as_deref();
        let zone_hints = hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|z| z.name.clone())
            .collect();
        let node_hints = hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|n| n.name.clone())
            .collect();
        endpoints.push(Endpoint {
            ip,
            port: 0,
            ready,
            serving,
            terminating,
            local,
            zone_hints,
            node_hints,
        });
    }

    Some(ReadSlice {
        service: ServiceRef {
            namespace,
            name: service_name.clone(),
        },
        family,
        ports,
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::testutil::*;

    fn index(slices: Vec<Arc<EndpointSliceInfo>>) -> (EndpointsIndex, Vec<InvalidObject>) {
        let mut invalid = Vec::new();
        let index = EndpointsIndex::build(&slices, NODE, &mut invalid);
        (index, invalid)
    }

    fn svc_ref(ns: &str, name: &str) -> ServiceRef {
        ServiceRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    /// "ip:port" of every endpoint of one service port.
    fn eps_of(
        index: &EndpointsIndex,
        svc: &str,
        family: IpFamily,
        port: &str,
        protocol: Protocol,
    ) -> Vec<String> {
        index
            .get(&svc_ref("ns", svc), family)
            .map(|s| {
                s.port(port, protocol)
                    .iter()
                    .map(|e| addr_port(e.ip, e.port))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn missing_conditions_default_to_ready_serving_not_terminating() {
        // (ready, serving, terminating) given → read.
        type Conds = (Option<bool>, Option<bool>, Option<bool>);
        let cases: &[(Conds, (bool, bool, bool))] = &[
            ((None, None, None), (true, true, false)),
            ((Some(false), None, None), (false, true, false)),
            // serving nil is true, not "same as ready": a terminating
            // endpoint without serving is still a fallback candidate.
            ((Some(false), None, Some(true)), (false, true, true)),
            ((Some(true), Some(false), None), (true, false, false)),
            ((None, None, Some(true)), (true, true, true)),
            ((Some(false), Some(false), Some(true)), (false, false, true)),
        ];
        for ((r, s, t), want) in cases {
            let e = ep("10.0.0.1").conds_opt(*r, *s, *t);
            let (index, invalid) = index(vec![
                slice("ns", "s1", "svc", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(e)
                    .build(),
            ]);
            assert!(invalid.is_empty());
            let got = &index
                .get(&svc_ref("ns", "svc"), IpFamily::V4)
                .unwrap()
                .port("p", Protocol::Tcp)[0];
            assert_eq!(
                (got.ready, got.serving, got.terminating),
                *want,
                "conditions {r:?} {s:?} {t:?}"
            );
        }
        // No conditions object at all.
        let mut e = ep("10.0.0.1");
        e.conditions = None;
        let (index, _) = index(vec![
            slice("ns", "s1", "svc", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(e)
                .build(),
        ]);
        let got = &index
            .get(&svc_ref("ns", "svc"), IpFamily::V4)
            .unwrap()
            .port("p", Protocol::Tcp)[0];
        assert_eq!(
            (got.ready, got.serving, got.terminating),
            (true, true, false)
        );
    }

    #[test]
    fn slices_join_services_by_label_and_namespace() {
        let (index, invalid) = index(vec![
            slice("ns", "a", "svc", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.1"))
                .build(),
            // Same label, other namespace: another Service.
            slice("other", "b", "svc", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.2"))
                .build(),
            // No service-name label: ignored.
            slice("ns", "c", "svc", "IPv4")
                .without_service_label()
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.3"))
                .build(),
            // Empty service-name label: ignored.
            slice("ns", "d", "", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.4"))
                .build(),
            // Proxy-name and headless labels: not listed by kube-proxy.
            slice("ns", "e", "svc", "IPv4")
                .label("service.kubernetes.io/service-proxy-name", "other-proxy")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.5"))
                .build(),
            slice("ns", "f", "svc", "IPv4")
                .label("service.kubernetes.io/headless", "")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.6"))
                .build(),
            // FQDN slices are not for proxies.
            slice("ns", "g", "svc", "FQDN")
                .port("p", "TCP", 80)
                .endpoint(ep("example.com"))
                .build(),
        ]);
        assert!(invalid.is_empty(), "{invalid:?}");
        assert_eq!(
            eps_of(&index, "svc", IpFamily::V4, "p", Protocol::Tcp),
            ["10.0.0.1:80"]
        );
        assert_eq!(
            index
                .get(&svc_ref("other", "svc"), IpFamily::V4)
                .unwrap()
                .port("p", Protocol::Tcp)
                .len(),
            1
        );
    }

    #[test]
    fn slice_port_filters() {
        // (port name, protocol, number) → attached as (name, protocol)?
        type Row = (
            Option<&'static str>,
            Option<&'static str>,
            Option<i32>,
            Option<(&'static str, Protocol)>,
        );
        let cases: &[Row] = &[
            (
                Some("http"),
                Some("TCP"),
                Some(80),
                Some(("http", Protocol::Tcp)),
            ),
            // Nil name is the API default "", nil protocol is TCP.
            (None, None, Some(80), Some(("", Protocol::Tcp))),
            (Some(""), Some("UDP"), Some(53), Some(("", Protocol::Udp))),
            // Nil port: ignored.
            (Some("http"), Some("TCP"), None, None),
            // SCTP: ignored here (the Service port is the invalid one).
            (Some("s"), Some("SCTP"), Some(80), None),
        ];
        for (name, protocol, number, want) in cases {
            let (index, invalid) = index(vec![
                slice("ns", "s", "svc", "IPv4")
                    .raw_port(*name, *protocol, *number)
                    .endpoint(ep("10.0.0.1"))
                    .build(),
            ]);
            assert!(invalid.is_empty(), "{invalid:?}");
            let ports: Vec<(String, Protocol)> = index
                .get(&svc_ref("ns", "svc"), IpFamily::V4)
                .map(|s| {
                    s.by_port
                        .keys()
                        .map(|k| (k.name.clone(), k.protocol))
                        .collect()
                })
                .unwrap_or_default();
            let want: Vec<(String, Protocol)> =
                want.iter().map(|(n, p)| (n.to_string(), *p)).collect();
            assert_eq!(ports, want, "port {name:?} {protocol:?} {number:?}");
        }
    }

    #[test]
    fn invalid_slice_entries_are_reported_and_skipped_alone() {
        // (description, slice) → (endpoints left on port "p", reasons).
        type Row = (
            &'static str,
            Arc<EndpointSliceInfo>,
            Vec<&'static str>,
            Vec<&'static str>,
        );
        let cases: Vec<Row> = vec![
            (
                "port 0",
                slice("ns", "s", "svc", "IPv4")
                    .port("q", "TCP", 0)
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1"))
                    .build(),
                vec!["10.0.0.1:80"],
                vec!["ports[0] (\"q\"): port 0 is out of range 1-65535"],
            ),
            (
                "port 65536",
                slice("ns", "s", "svc", "IPv4")
                    .port("q", "TCP", 65536)
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1"))
                    .build(),
                vec!["10.0.0.1:80"],
                vec!["ports[0] (\"q\"): port 65536 is out of range 1-65535"],
            ),
            (
                "negative port",
                slice("ns", "s", "svc", "IPv4")
                    .port("q", "TCP", -1)
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1"))
                    .build(),
                vec!["10.0.0.1:80"],
                vec!["ports[0] (\"q\"): port -1 is out of range 1-65535"],
            ),
            (
                "unknown protocol",
                slice("ns", "s", "svc", "IPv4")
                    .port("q", "ICMP", 1)
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.1"))
                    .build(),
                vec!["10.0.0.1:80"],
                vec!["ports[0] (\"q\"): unknown protocol \"ICMP\""],
            ),
            (
                "bad address",
                slice("ns", "s", "svc", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.300"))
                    .endpoint(ep("10.0.0.2"))
                    .build(),
                vec!["10.0.0.2:80"],
                vec!["endpoints[0]: invalid address \"10.0.0.300\""],
            ),
            (
                "IPv6 address in an IPv4 slice",
                slice("ns", "s", "svc", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("fd00::1"))
                    .endpoint(ep("10.0.0.2"))
                    .build(),
                vec!["10.0.0.2:80"],
                vec!["endpoints[0]: address \"fd00::1\" does not match addressType IPv4"],
            ),
            (
                "unknown addressType",
                slice("ns", "s", "svc", "IPv5")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.2"))
                    .build(),
                vec![],
                vec!["unknown addressType \"IPv5\""],
            ),
            (
                "leading zeros are accepted",
                slice("ns", "s", "svc", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(ep("10.0.0.010"))
                    .build(),
                vec!["10.0.0.10:80"],
                vec![],
            ),
        ];
        for (what, s, want_eps, want_reasons) in cases {
            let (index, invalid) = index(vec![s]);
            assert_eq!(
                eps_of(&index, "svc", IpFamily::V4, "p", Protocol::Tcp),
                want_eps,
                "{what}"
            );
            let reasons: Vec<&str> = invalid.iter().map(|i| i.reason.as_str()).collect();
            assert_eq!(reasons, want_reasons, "{what}");
            for i in &invalid {
                assert_eq!(
                    (i.kind, i.namespace.as_str(), i.name.as_str()),
                    (ObjectKind::EndpointSlice, "ns", "s"),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn only_the_first_address_is_used_and_empty_endpoints_are_ignored() {
        let (index, invalid) = index(vec![
            slice("ns", "s", "svc", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.1").addresses(&["10.0.0.1", "10.0.0.9"]))
                .endpoint(ep("10.0.0.2").addresses(&[]))
                .build(),
        ]);
        assert!(invalid.is_empty());
        assert_eq!(
            eps_of(&index, "svc", IpFamily::V4, "p", Protocol::Tcp),
            ["10.0.0.1:80"]
        );
    }

    #[test]
    fn merged_slices_keep_the_non_terminating_duplicate() {
        let ready = |ip: &str| ep(ip).conds(true, true, false);
        let terminating = |ip: &str| ep(ip).conds(false, true, true);
        // (slice a endpoint, slice b endpoint) → terminating flag kept for
        // 10.0.0.1:80, in both slice orders.
        let cases = [
            (ready("10.0.0.1"), terminating("10.0.0.1"), false),
            (terminating("10.0.0.1"), ready("10.0.0.1"), false),
            (terminating("10.0.0.1"), terminating("10.0.0.1"), true),
            (ready("10.0.0.1"), ready("10.0.0.1"), false),
        ];
        for (a, b, want_terminating) in cases {
            let (index, _) = index(vec![
                slice("ns", "b", "svc", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(b.clone())
                    .endpoint(ready("10.0.0.3"))
                    .build(),
                slice("ns", "a", "svc", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(a.clone())
                    .endpoint(ready("10.0.0.2"))
                    .build(),
            ]);
            let eps = index
                .get(&svc_ref("ns", "svc"), IpFamily::V4)
                .unwrap()
                .port("p", Protocol::Tcp);
            let got: Vec<(String, bool)> = eps
                .iter()
                .map(|e| (addr_port(e.ip, e.port), e.terminating))
                .collect();
            assert_eq!(
                got,
                [
                    ("10.0.0.1:80".to_string(), want_terminating),
                    ("10.0.0.2:80".to_string(), false),
                    ("10.0.0.3:80".to_string(), false),
                ]
            );
        }
    }

    #[test]
    fn same_ip_on_different_ports_is_not_a_duplicate() {
        // A named targetPort resolving differently per slice: both kept.
        let (index, _) = index(vec![
            slice("ns", "a", "svc", "IPv4")
                .port("p", "TCP", 8080)
                .endpoint(ep("10.0.0.1"))
                .build(),
            slice("ns", "b", "svc", "IPv4")
                .port("p", "TCP", 9090)
                .endpoint(ep("10.0.0.1"))
                .endpoint(ep("10.0.0.2"))
                .build(),
        ]);
        assert_eq!(
            eps_of(&index, "svc", IpFamily::V4, "p", Protocol::Tcp),
            ["10.0.0.1:8080", "10.0.0.1:9090", "10.0.0.2:9090"]
        );
    }

    #[test]
    fn locality_is_node_name_equality() {
        // (nodeName, this node) → local
        let cases: &[(Option<&str>, &str, bool)] = &[
            (Some(NODE), NODE, true),
            (Some("node1"), NODE, false),
            (None, NODE, false),
            // An unnamed node is never local, even to an endpoint naming "".
            (Some(""), "", false),
        ];
        for (ep_node, this_node, want) in cases {
            let mut e = ep("10.0.0.1");
            e.node_name = ep_node.map(str::to_owned);
            let slices = vec![
                slice("ns", "s", "svc", "IPv4")
                    .port("p", "TCP", 80)
                    .endpoint(e)
                    .build(),
            ];
            let mut invalid = Vec::new();
            let index = EndpointsIndex::build(&slices, this_node, &mut invalid);
            let got = index
                .get(&svc_ref("ns", "svc"), IpFamily::V4)
                .unwrap()
                .port("p", Protocol::Tcp)[0]
                .local;
            assert_eq!(got, *want, "nodeName {ep_node:?} on node {this_node:?}");
        }
    }

    #[test]
    fn families_are_kept_apart_by_address_type() {
        let (index, invalid) = index(vec![
            slice("ns", "v4", "svc", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.1"))
                .build(),
            slice("ns", "v6", "svc", "IPv6")
                .port("p", "TCP", 80)
                .endpoint(ep("fd00::1"))
                .endpoint(ep("10.0.0.2"))
                .build(),
        ]);
        assert_eq!(
            eps_of(&index, "svc", IpFamily::V4, "p", Protocol::Tcp),
            ["10.0.0.1:80"]
        );
        assert_eq!(
            eps_of(&index, "svc", IpFamily::V6, "p", Protocol::Tcp),
            ["[fd00::1]:80"]
        );
        assert_eq!(invalid.len(), 1, "{invalid:?}");
    }

    #[test]
    fn hints_are_read() {
        let (index, _) = index(vec![
            slice("ns", "s", "svc", "IPv4")
                .port("p", "TCP", 80)
                .endpoint(ep("10.0.0.1").zone_hints(&["a", "b"]).node_hints(&["n1"]))
                .endpoint(ep("10.0.0.2"))
                .build(),
        ]);
        let eps = index
            .get(&svc_ref("ns", "svc"), IpFamily::V4)
            .unwrap()
            .port("p", Protocol::Tcp);
        assert_eq!(
            eps[0].zone_hints,
            BTreeSet::from(["a".to_string(), "b".to_string()])
        );
        assert_eq!(eps[0].node_hints, BTreeSet::from(["n1".to_string()]));
        assert!(eps[1].zone_hints.is_empty() && eps[1].node_hints.is_empty());
    }

    #[test]
    fn local_ready_ips_count_distinct_ips_over_ports_and_slices() {
        // Reference table "Health count".
        let cases: Vec<(&str, Vec<Arc<EndpointSliceInfo>>, usize)> = vec![
            (
                "two slices, two ports, same two local IPs",
                vec![
                    slice("ns", "a", "svc", "IPv4")
                        .port("p", "TCP", 80)
                        .port("q", "TCP", 443)
                        .endpoint(ep("10.1.1.2").local())
                        .endpoint(ep("10.1.1.4").local())
                        .build(),
                    slice("ns", "b", "svc", "IPv4")
                        .port("p", "TCP", 80)
                        .port("q", "TCP", 443)
                        .endpoint(ep("10.1.1.2").local())
                        .endpoint(ep("10.1.1.4").local())
                        .build(),
                ],
                2,
            ),
            (
                "three local ready, one local not ready, one remote",
                vec![
                    slice("ns", "a", "svc", "IPv4")
                        .port("p", "TCP", 80)
                        .endpoint(ep("10.0.1.1").local())
                        .endpoint(ep("10.0.1.2").local())
                        .endpoint(ep("10.0.1.3").local())
                        .endpoint(ep("10.0.1.4").local().conds(false, false, false))
                        .endpoint(ep("10.0.1.5").node("node1"))
                        .build(),
                ],
                3,
            ),
            (
                "all local endpoints terminating (ready=false)",
                vec![
                    slice("ns", "a", "svc", "IPv4")
                        .port("p", "TCP", 80)
                        .endpoint(ep("10.0.1.1").local().conds(false, true, true))
                        .endpoint(ep("10.0.1.2").local().conds(false, true, true))
                        .build(),
                ],
                0,
            ),
            (
                "slice without a usable port",
                vec![
                    slice("ns", "a", "svc", "IPv4")
                        .endpoint(ep("10.0.1.1").local())
                        .build(),
                ],
                0,
            ),
        ];
        for (what, slices, want) in cases {
            let (index, _) = index(slices);
            let got = index
                .get(&svc_ref("ns", "svc"), IpFamily::V4)
                .map_or(0, |s| s.local_ready_ips.len());
            assert_eq!(got, want, "{what}");
        }
    }
}
