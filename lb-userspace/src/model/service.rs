//! Reading a v1 Service into what the model needs, defaulted as the API
//! server would have defaulted it (files read in standalone mode are not)
//! and validated.
//!
//! Granularity of invalid input (reported, then skipped):
//! - the whole Service, when what is wrong concerns every frontend: no
//!   usable ClusterIP, an unknown type, traffic policy, ipFamily or session
//!   affinity, an affinity timeout outside 1-86400;
//! - one service port (in every family), when only that port is wrong: port,
//!   nodePort or targetPort number outside 1-65535, SCTP or an unknown
//!   protocol, a (name, protocol) pair repeated;
//! - one address, when only that address is wrong: an externalIP or a load
//!   balancer ingress IP that does not parse, an unknown ipMode;
//! - one loadBalancerSourceRanges entry that does not parse as a CIDR
//!   (kube-proxy logs and skips it);
//! - the health check only, when healthCheckNodePort is missing or out of
//!   range (the Service itself is still served, as kube-proxy does).

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ip::{Cidr, parse_cidr_lenient, parse_ip_lenient};
use super::meta::{has_skip_label, namespace_or_default, valid_port};
use super::types::{InvalidObject, IpFamily, ObjectKind, Protocol, ReportCause, ServiceRef};

/// sessionAffinityConfig.clientIP.timeoutSeconds when unset (API default).
pub(super) const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
/// The largest timeout the API server accepts.
pub(super) const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ServiceType {
    ClusterIp,
    NodePort,
    LoadBalancer,
}

/// One valid spec.ports entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ServicePortInfo {
    /// "" when unnamed.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// Only for NodePort and LoadBalancer Services (ignored on others).
    pub node_port: Option<u16>,
}

/// A Service as the model uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ServiceInfo {
    pub service: ServiceRef,
    pub service_type: ServiceType,
    /// The ClusterIP of each family the Service has one in. kube-proxy's
    /// per-family proxier skips the Service entirely in a family without one
    /// (no NodePort, externalIP or LB frontend there either).
    pub cluster_ips: BTreeMap<IpFamily, IpAddr>,
    /// ipFamilies[0]: the family the health check counts endpoints in.
    pub primary_family: IpFamily,
    pub ports: Vec<ServicePortInfo>,
    /// Valid externalIPs of every family, deduplicated, in spec order.
    pub external_ips: Vec<IpAddr>,
    /// status.loadBalancer.ingress[].ip with ipMode VIP or unset, every
    /// family, deduplicated, in status order.
    pub load_balancer_ips: Vec<IpAddr>,
    /// Valid spec.loadBalancerSourceRanges of every family, deduplicated,
    /// in spec order. Read whatever the type (as kube-proxy), used only by
    /// load balancer IPs.
    pub load_balancer_source_ranges: Vec<Cidr>,
    /// internalTrafficPolicy Local.
    pub internal_policy_local: bool,
    /// externalTrafficPolicy Local on a Service that can receive external
    /// traffic (type NodePort/LoadBalancer or externalIPs set), as
    /// kube-proxy's `ExternalPolicyLocal`.
    pub external_policy_local: bool,
    /// sessionAffinity ClientIP timeout; None for affinity None.
    pub affinity_timeout_secs: Option<u32>,
    /// Only type LoadBalancer with externalTrafficPolicy Local.
    pub health_check_node_port: Option<u16>,
}

impl ServiceInfo {
    /// The plan filters externalIPs by this node's policy first, so only
    /// tests read them by family unfiltered.
    #[cfg(test)]
    pub(super) fn external_ips_of(&self, family: IpFamily) -> Vec<IpAddr> {
        of_family(&self.external_ips, family)
    }

    pub(super) fn load_balancer_ips_of(&self, family: IpFamily) -> Vec<IpAddr> {
        of_family(&self.load_balancer_ips, family)
    }

    /// The source ranges of one family (kube-proxy's per-family proxier
    /// only sees those: a range of the other family restricts nothing).
    pub(super) fn load_balancer_source_ranges_of(&self, family: IpFamily) -> Vec<Cidr> {
        self.load_balancer_source_ranges
            .iter()
            .copied()
            .filter(|c| c.family() == family)
            .collect()
    }
}

fn of_family(ips: &[IpAddr], family: IpFamily) -> Vec<IpAddr> {
    ips.iter()
        .copied()
        .filter(|ip| IpFamily::of(ip) == family)
        .collect()
}

/// Reads one Service. Returns None for a Service kube-proxy does not serve
/// (silently: headless, ExternalName, labelled for another proxy) and for an
/// invalid one (reported in `invalid`). Problems confined to a port, an
/// address or the health check are reported and that part skipped.
pub(super) fn read_service(svc: &Service, invalid: &mut Vec<InvalidObject>) -> Option<ServiceInfo> {
    let meta = &svc.metadata;
    if has_skip_label(meta.labels.as_ref()) {
        return None;
    }
    let service = ServiceRef {
        namespace: namespace_or_default(meta.namespace.as_deref()),
        name: meta.name.clone().unwrap_or_default(),
    };
    let mut report = |reason: String| {
        invalid.push(InvalidObject {
            cause: ReportCause::Invalid,
            kind: ObjectKind::Service,
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            reason,
        });
    };
    if service.name.is_empty() {
        report("metadata.name is empty".into());
        return None;
    }
    let default_spec = ServiceSpec::default();
    let spec = svc.spec.as_ref().unwrap_or(&default_spec);

    match read_spec(svc, spec) {
        Ok(None) => None,
        Ok(Some(read)) => {
            for reason in read.partial_errors {
                report(reason);
            }
            Some(ServiceInfo {
                service: service.clone(),
                service_type: read.service_type,
                cluster_ips: read.cluster_ips,
                primary_family: read.primary_family,
                ports: read.ports,
                external_ips: read.external_ips,
                load_balancer_ips: read.load_balancer_ips,
                load_balancer_source_ranges: read.load_balancer_source_ranges,
                internal_policy_local: read.internal_policy_local,
                external_policy_local: read.external_policy_local,
                affinity_timeout_secs: read.affinity_timeout_secs,
                health_check_node_port: read.health_check_node_port,
            })
        }
        Err(reason) => {
            report(reason);
            None
        }
    }
}

struct ReadSpec {
    service_type: ServiceType,
    cluster_ips: BTreeMap<IpFamily, IpAddr>,
    primary_family: IpFamily,
    ports: Vec<ServicePortInfo>,
    external_ips: Vec<IpAddr>,
    load_balancer_ips: Vec<IpAddr>,
    load_balancer_source_ranges: Vec<Cidr>,
    internal_policy_local: bool,
    external_policy_local: bool,
    affinity_timeout_secs: Option<u32>,
    health_check_node_port: Option<u16>,
    /// Problems that skipped one part only.
    partial_errors: Vec<String>,
}

/// Ok(None): not served, silently. Err: the whole Service is invalid.
fn read_spec(svc: &Service, spec: &ServiceSpec) -> Result<Option<ReadSpec>, String> {
    // kube-proxy's ShouldSkipService: headless (or not yet allocated), and
    // ExternalName even when a clusterIP is set.
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("" | "None") => return Ok(None),
        Some(ip) => ip,
    };
    let service_type = match spec.type_.as_deref() {
        None | Some("ClusterIP") => ServiceType::ClusterIp,
        Some("NodePort") => ServiceType::NodePort,
        Some("LoadBalancer") => ServiceType::LoadBalancer,
        Some("ExternalName") => return Ok(None),
        Some(other) => return Err(format!("unknown type {other:?}")),
    };

    let (cluster_ips, primary_family) = cluster_ips_by_family(spec, cluster_ip)?;

    let internal_policy_local = match spec.internal_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => return Err(format!("unknown internalTrafficPolicy {other:?}")),
    };
    let external_traffic_local = match spec.external_traffic_policy.as_deref() {
        None | Some("Cluster") => false,
        Some("Local") => true,
        Some(other) => return Err(format!("unknown externalTrafficPolicy {other:?}")),
    };
    let has_external_ips = spec.external_ips.as_ref().is_some_and(|v| !v.is_empty());
    let external_policy_local = external_traffic_local
        && (matches!(
            service_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        ) || has_external_ips);

    let affinity_timeout_secs = match spec.session_affinity.as_deref() {
        None | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
                Some(t) => match u32::try_from(t) {
                    Ok(t) if (1..=MAX_AFFINITY_TIMEOUT_SECS).contains(&t) => Some(t),
                    _ => {
                        return Err(format!(
                            "sessionAffinityConfig.clientIP.timeoutSeconds {t} is out of range 1-{MAX_AFFINITY_TIMEOUT_SECS}"
                        ));
                    }
                },
            }
        }
        Some(other) => return Err(format!("unknown sessionAffinity {other:?}")),
    };

    let mut partial_errors = Vec::new();

    let mut ports: Vec<ServicePortInfo> = Vec::new();
    for (i, port) in spec.ports.iter().flatten().enumerate() {
        let label = port_label(i, port);
        match read_service_port(port, service_type) {
            Ok(p) => {
                // Backend sets are keyed by (port name, protocol): a second
                // port with the same pair could not be told apart.
                if ports
                    .iter()
                    .any(|q| q.name == p.name && q.protocol == p.protocol)
                {
                    partial_errors.push(format!(
                        "{label}: duplicate port name {:?} for {}",
                        p.name, p.protocol
                    ));
                } else {
                    ports.push(p);
                }
            }
            Err(e) => partial_errors.push(format!("{label}: {e}")),
        }
    }

    let mut external_ips = Vec::new();
    for s in spec.external_ips.iter().flatten() {
        match parse_ip_lenient(s) {
            Some(ip) if !external_ips.contains(&ip) => external_ips.push(ip),
            Some(_) => {}
            None => partial_errors.push(format!("spec.externalIPs: invalid IP {s:?}")),
        }
    }

    let mut load_balancer_ips = Vec::new();
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    for ing in ingress.into_iter().flatten() {
        // Hostname-only entries have nothing to serve on.
        let Some(ip) = ing.ip.as_deref().filter(|s| !s.is_empty()) else {
            continue;
        };
        match ing.ip_mode.as_deref() {
            None | Some("VIP") => {}
            // The load balancer proxies and delivers to node addresses.
            Some("Proxy") => continue,
            Some(other) => {
                partial_errors.push(format!(
                    "status.loadBalancer.ingress {ip:?}: unknown ipMode {other:?}"
                ));
                continue;
            }
        }
        match parse_ip_lenient(ip) {
            Some(ip) if !load_balancer_ips.contains(&ip) => load_balancer_ips.push(ip),
            Some(_) => {}
            None => partial_errors.push(format!("status.loadBalancer.ingress: invalid IP {ip:?}")),
        }
    }

    // kube-proxy's MapCIDRsByIPFamily: trimmed, parsed sloppily, a bad
    // entry logged and skipped.
    let mut load_balancer_source_ranges = Vec::new();
    for s in spec.load_balancer_source_ranges.iter().flatten() {
        match parse_cidr_lenient(s) {
            Some(c) if !load_balancer_source_ranges.contains(&c) => {
                load_balancer_source_ranges.push(c);
            }
            Some(_) => {}
            None => {
                partial_errors.push(format!("spec.loadBalancerSourceRanges: invalid CIDR {s:?}"));
            }
        }
    }

    // Only LoadBalancer with eTP Local gets one (not NodePort with eTP Local).
    let mut health_check_node_port = None;
    if service_type == ServiceType::LoadBalancer && external_traffic_local {
        match spec.health_check_node_port {
            None | Some(0) => partial_errors.push(
                "type LoadBalancer with externalTrafficPolicy Local has no healthCheckNodePort"
                    .into(),
            ),
            Some(n) => match valid_port(n) {
                Some(p) => health_check_node_port = Some(p),
                None => {
                    partial_errors.push(format!("healthCheckNodePort {n} is out of range 1-65535"));
                }
            },
        }
    }

    Ok(Some(ReadSpec {
        service_type,
        cluster_ips,
        primary_family,
        ports,
        external_ips,
        load_balancer_ips,
        load_balancer_source_ranges,
        internal_policy_local,
        external_policy_local,
        affinity_timeout_secs,
        health_check_node_port,
        partial_errors,
    }))
}

/// The ClusterIP of each family, as kube-proxy's GetClusterIPByFamily: with
/// ipFamilies set, the family of ipFamilies[i] is served on clusterIPs[i]
/// (spec.clusterIP when clusterIPs is empty). Without ipFamilies (objects
/// written by hand), each listed IP serves its own family.
fn cluster_ips_by_family(
    spec: &ServiceSpec,
    cluster_ip: &str,
) -> Result<(BTreeMap<IpFamily, IpAddr>, IpFamily), String> {
    let listed: Vec<&str> = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => ips.iter().map(String::as_str).collect(),
        _ => vec![cluster_ip],
    };
    let mut parsed = Vec::with_capacity(listed.len());
    for s in listed {
        parsed.push(parse_ip_lenient(s).ok_or_else(|| format!("invalid clusterIP {s:?}"))?);
    }
    if parse_ip_lenient(cluster_ip).is_none() {
        return Err(format!("invalid clusterIP {cluster_ip:?}"));
    }

    let mut by_family = BTreeMap::new();
    let families = spec.ip_families.as_deref().unwrap_or_default();
    let primary_family = if families.is_empty() {
        for ip in &parsed {
            by_family.entry(IpFamily::of(ip)).or_insert(*ip);
        }
        // `parsed` has at least one entry.
        parsed.first().map_or(IpFamily::V4, IpFamily::of)
    } else {
        let mut primary = None;
        for (i, f) in families.iter().enumerate() {
            let family = match f.as_str() {
                "IPv4" => IpFamily::V4,
                "IPv6" => IpFamily::V6,
                other => return Err(format!("unknown ipFamily {other:?}")),
            };
            primary.get_or_insert(family);
            if by_family.contains_key(&family) {
                return Err(format!("ipFamilies lists {f} twice"));
            }
            // A family without an allocated ClusterIP is not served in.
            let Some(ip) = parsed.get(i) else {
                continue;
            };
            if IpFamily::of(ip) != family {
                return Err(format!("clusterIPs[{i}] {ip} is not of ipFamily {f}"));
            }
            by_family.insert(family, *ip);
        }
        primary.unwrap_or(IpFamily::V4)
    };
    if by_family.is_empty() {
        return Err("no ClusterIP for any family".into());
    }
    Ok((by_family, primary_family))
}

fn port_label(i: usize, port: &ServicePort) -> String {
    match port.name.as_deref() {
        Some(name) if !name.is_empty() => format!("spec.ports[{i}] ({name:?})"),
        _ => format!("spec.ports[{i}] ({})", port.port),
    }
}

fn read_service_port(
    port: &ServicePort,
    service_type: ServiceType,
) -> Result<ServicePortInfo, String> {
    let protocol = match port.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Protocol::Tcp,
        "UDP" => Protocol::Udp,
        "SCTP" => return Err("protocol SCTP is not supported".into()),
        other => return Err(format!("unknown protocol {other:?}")),
    };
    let number = valid_port(port.port)
        .ok_or_else(|| format!("port {} is out of range 1-65535", port.port))?;
    // The backend port always comes from the EndpointSlice; targetPort is
    // only validated, a named one resolves per endpoint.
    if let Some(IntOrString::Int(t)) = port.target_port {
        valid_port(t).ok_or_else(|| format!("targetPort {t} is out of range 1-65535"))?;
    }
    let node_port = match (service_type, port.node_port) {
        // The API server only allocates NodePorts for these types; a stray
        // value on a ClusterIP Service is ignored, not served.
        (ServiceType::ClusterIp, _) | (_, None | Some(0)) => None,
        (_, Some(n)) => {
            Some(valid_port(n).ok_or_else(|| format!("nodePort {n} is out of range 1-65535"))?)
        }
    };
    Ok(ServicePortInfo {
        name: port.name.clone().unwrap_or_default(),
        protocol,
        port: number,
        node_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::meta::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME};
    use crate::model::testutil::*;

    fn read(svc: &Service) -> (Option<ServiceInfo>, Vec<String>) {
        let mut invalid = Vec::new();
        let info = read_service(svc, &mut invalid);
        for i in &invalid {
            assert_eq!(i.kind, ObjectKind::Service);
        }
        (info, invalid.into_iter().map(|i| i.reason).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn services_kube_proxy_does_not_serve_are_skipped_silently() {
        let cases: Vec<(&str, Service)> = vec![
            (
                "clusterIP None",
                service("ns", "s", "None").port("p", "TCP", 80).build_raw(),
            ),
            (
                "clusterIP empty",
                service("ns", "s", "").port("p", "TCP", 80).build_raw(),
            ),
            (
                "clusterIP absent",
                service("ns", "s", "")
                    .with(|s| s.spec.as_mut().unwrap().cluster_ip = None)
                    .build_raw(),
            ),
            (
                "no spec",
                service("ns", "s", "").with(|s| s.spec = None).build_raw(),
            ),
            (
                "ExternalName, even with a clusterIP",
                service("ns", "s", "172.30.0.1")
                    .type_("ExternalName")
                    .port("p", "TCP", 80)
                    .build_raw(),
            ),
            (
                "service-proxy-name label",
                service("ns", "s", "172.30.0.1")
                    .label(LABEL_SERVICE_PROXY_NAME, "other")
                    .port("p", "TCP", 80)
                    .build_raw(),
            ),
            (
                "headless label",
                service("ns", "s", "172.30.0.1")
                    .label(LABEL_HEADLESS, "")
                    .port("p", "TCP", 80)
                    .build_raw(),
            ),
        ];
        for (what, svc) in cases {
            let (info, reasons) = read(&svc);
            assert!(info.is_none(), "{what}");
            assert!(reasons.is_empty(), "{what}: {reasons:?}");
        }
        // Control: an ordinary Service is read.
        let (info, reasons) = read(
            &service("ns", "s", "172.30.0.1")
                .port("p", "TCP", 80)
                .build_raw(),
        );
        assert!(info.is_some() && reasons.is_empty());
    }

    #[test]
    fn cluster_ip_per_family_table() {
        type Want = Result<(Vec<(IpFamily, &'static str)>, IpFamily), &'static str>;
        let cases: Vec<(&str, ServiceBuilder, Want)> = vec![
            (
                "single stack, no ipFamilies: clusterIP",
                service("ns", "s", "172.30.0.1"),
                Ok((vec![(IpFamily::V4, "172.30.0.1")], IpFamily::V4)),
            ),
            (
                "single stack IPv6",
                service("ns", "s", "fd00::1").families(&["IPv6"], &["fd00::1"]),
                Ok((vec![(IpFamily::V6, "fd00::1")], IpFamily::V6)),
            ),
            (
                "dual stack, IPv4 primary",
                service("ns", "s", "172.30.0.1")
                    .families(&["IPv4", "IPv6"], &["172.30.0.1", "fd00::1"]),
                Ok((
                    vec![(IpFamily::V4, "172.30.0.1"), (IpFamily::V6, "fd00::1")],
                    IpFamily::V4,
                )),
            ),
            (
                "dual stack, IPv6 primary",
                service("ns", "s", "fd00::1")
                    .families(&["IPv6", "IPv4"], &["fd00::1", "172.30.0.1"]),
                Ok((
                    vec![(IpFamily::V4, "172.30.0.1"), (IpFamily::V6, "fd00::1")],
                    IpFamily::V6,
                )),
            ),
            (
                "ipFamilies set, clusterIPs empty: falls back to clusterIP",
                service("ns", "s", "172.30.0.1").families(&["IPv4"], &[]),
                Ok((vec![(IpFamily::V4, "172.30.0.1")], IpFamily::V4)),
            ),
            (
                "two families, one ClusterIP allocated: only that family",
                service("ns", "s", "172.30.0.1").families(&["IPv4", "IPv6"], &["172.30.0.1"]),
                Ok((vec![(IpFamily::V4, "172.30.0.1")], IpFamily::V4)),
            ),
            (
                "no ipFamilies, two clusterIPs: each its own family",
                service("ns", "s", "172.30.0.1").families(&[], &["172.30.0.1", "fd00::1"]),
                Ok((
                    vec![(IpFamily::V4, "172.30.0.1"), (IpFamily::V6, "fd00::1")],
                    IpFamily::V4,
                )),
            ),
            (
                "leading zeros",
                service("ns", "s", "172.30.0.041"),
                Ok((vec![(IpFamily::V4, "172.30.0.41")], IpFamily::V4)),
            ),
            (
                "invalid clusterIP",
                service("ns", "s", "172.30.0.300"),
                Err("invalid clusterIP \"172.30.0.300\""),
            ),
            (
                "invalid entry in clusterIPs",
                service("ns", "s", "172.30.0.1")
                    .families(&["IPv4", "IPv6"], &["172.30.0.1", "fd00::g"]),
                Err("invalid clusterIP \"fd00::g\""),
            ),
            (
                "family mismatch",
                service("ns", "s", "172.30.0.1").families(&["IPv6"], &["172.30.0.1"]),
                Err("clusterIPs[0] 172.30.0.1 is not of ipFamily IPv6"),
            ),
            (
                "unknown family",
                service("ns", "s", "172.30.0.1").families(&["IPv5"], &["172.30.0.1"]),
                Err("unknown ipFamily \"IPv5\""),
            ),
            (
                "family twice",
                service("ns", "s", "172.30.0.1")
                    .families(&["IPv4", "IPv4"], &["172.30.0.1", "172.30.0.2"]),
                Err("ipFamilies lists IPv4 twice"),
            ),
        ];
        for (what, b, want) in cases {
            let (info, reasons) = read(&b.port("p", "TCP", 80).build_raw());
            match want {
                Ok((ips, primary)) => {
                    let info = info.unwrap_or_else(|| panic!("{what}: {reasons:?}"));
                    let want: BTreeMap<IpFamily, IpAddr> =
                        ips.into_iter().map(|(f, s)| (f, ip(s))).collect();
                    assert_eq!(info.cluster_ips, want, "{what}");
                    assert_eq!(info.primary_family, primary, "{what}");
                    assert!(reasons.is_empty(), "{what}: {reasons:?}");
                }
                Err(reason) => {
                    assert!(info.is_none(), "{what}");
                    assert_eq!(reasons, [reason], "{what}");
                }
            }
        }
    }

    #[test]
    fn service_port_table() {
        // (port builder, type) → Ok((name, protocol, port, nodePort)) or the reason.
        type Want = Result<(&'static str, Protocol, u16, Option<u16>), &'static str>;
        let cases: Vec<(&str, ServiceBuilder, Want)> = vec![
            (
                "named TCP",
                svc().port("http", "TCP", 80),
                Ok(("http", Protocol::Tcp, 80, None)),
            ),
            (
                "protocol defaults to TCP",
                svc().raw_port(Some("p"), None, 80),
                Ok(("p", Protocol::Tcp, 80, None)),
            ),
            (
                "unnamed is \"\"",
                svc().raw_port(None, Some("UDP"), 53),
                Ok(("", Protocol::Udp, 53, None)),
            ),
            (
                "port 65535",
                svc().port("p", "TCP", 65535),
                Ok(("p", Protocol::Tcp, 65535, None)),
            ),
            (
                "nodePort on NodePort",
                svc()
                    .type_("NodePort")
                    .port("p", "TCP", 80)
                    .node_port(30080),
                Ok(("p", Protocol::Tcp, 80, Some(30080))),
            ),
            (
                "nodePort on LoadBalancer",
                svc()
                    .type_("LoadBalancer")
                    .port("p", "UDP", 80)
                    .node_port(30080),
                Ok(("p", Protocol::Udp, 80, Some(30080))),
            ),
            (
                "nodePort 0 is unset",
                svc().type_("NodePort").port("p", "TCP", 80).node_port(0),
                Ok(("p", Protocol::Tcp, 80, None)),
            ),
            (
                "nodePort ignored on ClusterIP (even out of range)",
                svc().port("p", "TCP", 80).node_port(70000),
                Ok(("p", Protocol::Tcp, 80, None)),
            ),
            (
                "targetPort number",
                svc().port("p", "TCP", 443).target(8443),
                Ok(("p", Protocol::Tcp, 443, None)),
            ),
            (
                "named targetPort",
                svc().port("p", "TCP", 443).target_name("https"),
                Ok(("p", Protocol::Tcp, 443, None)),
            ),
            (
                "port 0",
                svc().port("p", "TCP", 0),
                Err("spec.ports[0] (\"p\"): port 0 is out of range 1-65535"),
            ),
            (
                "port 65536",
                svc().port("p", "TCP", 65536),
                Err("spec.ports[0] (\"p\"): port 65536 is out of range 1-65535"),
            ),
            (
                "unnamed port -1",
                svc().raw_port(None, None, -1),
                Err("spec.ports[0] (-1): port -1 is out of range 1-65535"),
            ),
            (
                "nodePort 70000",
                svc()
                    .type_("NodePort")
                    .port("p", "TCP", 80)
                    .node_port(70000),
                Err("spec.ports[0] (\"p\"): nodePort 70000 is out of range 1-65535"),
            ),
            (
                "negative nodePort",
                svc().type_("NodePort").port("p", "TCP", 80).node_port(-5),
                Err("spec.ports[0] (\"p\"): nodePort -5 is out of range 1-65535"),
            ),
            (
                "targetPort 0",
                svc().port("p", "TCP", 80).target(0),
                Err("spec.ports[0] (\"p\"): targetPort 0 is out of range 1-65535"),
            ),
            (
                "targetPort 65536",
                svc().port("p", "TCP", 80).target(65536),
                Err("spec.ports[0] (\"p\"): targetPort 65536 is out of range 1-65535"),
            ),
            (
                "SCTP",
                svc().port("p", "SCTP", 80),
                Err("spec.ports[0] (\"p\"): protocol SCTP is not supported"),
            ),
            (
                "unknown protocol",
                svc().port("p", "tcp", 80),
                Err("spec.ports[0] (\"p\"): unknown protocol \"tcp\""),
            ),
        ];
        for (what, b, want) in cases {
            let (info, reasons) = read(&b.build_raw());
            let info = info.unwrap_or_else(|| panic!("{what}: Service must still be read"));
            match want {
                Ok((name, protocol, port, node_port)) => {
                    assert_eq!(
                        info.ports,
                        [ServicePortInfo {
                            name: name.into(),
                            protocol,
                            port,
                            node_port
                        }],
                        "{what}"
                    );
                    assert!(reasons.is_empty(), "{what}: {reasons:?}");
                }
                Err(reason) => {
                    assert!(info.ports.is_empty(), "{what}");
                    assert_eq!(reasons, [reason], "{what}");
                }
            }
        }
    }

    #[test]
    fn a_bad_port_skips_only_that_port() {
        let (info, reasons) = read(
            &svc()
                .port("a", "TCP", 80)
                .port("b", "SCTP", 81)
                .port("c", "UDP", 0)
                .port("a", "TCP", 82)
                .port("a", "UDP", 80)
                .build_raw(),
        );
        let info = info.unwrap();
        let got: Vec<(&str, Protocol, u16)> = info
            .ports
            .iter()
            .map(|p| (p.name.as_str(), p.protocol, p.port))
            .collect();
        assert_eq!(got, [("a", Protocol::Tcp, 80), ("a", Protocol::Udp, 80)]);
        assert_eq!(
            reasons,
            [
                "spec.ports[1] (\"b\"): protocol SCTP is not supported",
                "spec.ports[2] (\"c\"): port 0 is out of range 1-65535",
                "spec.ports[3] (\"a\"): duplicate port name \"a\" for TCP",
            ]
        );
    }

    #[test]
    fn session_affinity_table() {
        type Row = (
            &'static str,
            ServiceBuilder,
            Result<Option<u32>, &'static str>,
        );
        let cases: Vec<Row> = vec![
            ("unset", svc(), Ok(None)),
            (
                "None",
                svc().with(|s| s.spec.as_mut().unwrap().session_affinity = Some("None".into())),
                Ok(None),
            ),
            (
                "ClientIP without config: default",
                svc().affinity(None),
                Ok(Some(10_800)),
            ),
            ("ClientIP 300", svc().affinity(Some(300)), Ok(Some(300))),
            ("ClientIP 1", svc().affinity(Some(1)), Ok(Some(1))),
            (
                "ClientIP max",
                svc().affinity(Some(86_400)),
                Ok(Some(86_400)),
            ),
            (
                "ClientIP above max",
                svc().affinity(Some(86_401)),
                Err("sessionAffinityConfig.clientIP.timeoutSeconds 86401 is out of range 1-86400"),
            ),
            (
                "ClientIP 0",
                svc().affinity(Some(0)),
                Err("sessionAffinityConfig.clientIP.timeoutSeconds 0 is out of range 1-86400"),
            ),
            (
                "ClientIP negative",
                svc().affinity(Some(-1)),
                Err("sessionAffinityConfig.clientIP.timeoutSeconds -1 is out of range 1-86400"),
            ),
            (
                "unknown affinity",
                svc().with(|s| s.spec.as_mut().unwrap().session_affinity = Some("Cookie".into())),
                Err("unknown sessionAffinity \"Cookie\""),
            ),
        ];
        for (what, b, want) in cases {
            let (info, reasons) = read(&b.port("p", "TCP", 80).build_raw());
            match want {
                Ok(timeout) => {
                    assert_eq!(info.unwrap().affinity_timeout_secs, timeout, "{what}");
                    assert!(reasons.is_empty(), "{what}");
                }
                Err(reason) => {
                    assert!(info.is_none(), "{what}");
                    assert_eq!(reasons, [reason], "{what}");
                }
            }
        }
    }

    #[test]
    fn traffic_policy_table() {
        // (type, externalIPs, iTP, eTP) → (internal local, external local) or reason.
        type Row = (
            &'static str,
            Option<&'static str>,
            &'static [&'static str],
            Option<&'static str>,
            Option<&'static str>,
            Result<(bool, bool), &'static str>,
        );
        let cases: Vec<Row> = vec![
            ("defaults", None, &[], None, None, Ok((false, false))),
            (
                "iTP Local",
                None,
                &[],
                Some("Local"),
                None,
                Ok((true, false)),
            ),
            (
                "iTP Cluster",
                None,
                &[],
                Some("Cluster"),
                None,
                Ok((false, false)),
            ),
            (
                "eTP Local on NodePort",
                Some("NodePort"),
                &[],
                None,
                Some("Local"),
                Ok((false, true)),
            ),
            (
                "eTP Local on LoadBalancer",
                Some("LoadBalancer"),
                &[],
                None,
                Some("Local"),
                Ok((false, true)),
            ),
            (
                "eTP Local on ClusterIP: no external traffic",
                None,
                &[],
                None,
                Some("Local"),
                Ok((false, false)),
            ),
            (
                "eTP Local on ClusterIP with externalIPs",
                None,
                &["1.2.3.4"],
                None,
                Some("Local"),
                Ok((false, true)),
            ),
            (
                "unknown iTP",
                None,
                &[],
                Some("local"),
                None,
                Err("unknown internalTrafficPolicy \"local\""),
            ),
            (
                "unknown eTP",
                Some("NodePort"),
                &[],
                None,
                Some("Global"),
                Err("unknown externalTrafficPolicy \"Global\""),
            ),
            (
                "unknown type",
                Some("Magic"),
                &[],
                None,
                None,
                Err("unknown type \"Magic\""),
            ),
        ];
        for (what, ty, ext, itp, etp, want) in cases {
            let mut b = svc().port("p", "TCP", 80).external_ips(ext);
            if let Some(t) = ty {
                b = b.type_(t);
            }
            if let Some(p) = itp {
                b = b.itp(p);
            }
            if let Some(p) = etp {
                b = b.etp(p);
                b = b.health_check_node_port(30000);
            }
            let (info, reasons) = read(&b.build_raw());
            match want {
                Ok(want) => {
                    let info = info.unwrap_or_else(|| panic!("{what}: {reasons:?}"));
                    assert_eq!(
                        (info.internal_policy_local, info.external_policy_local),
                        want,
                        "{what}"
                    );
                }
                Err(reason) => {
                    assert!(info.is_none(), "{what}");
                    assert_eq!(reasons, [reason], "{what}");
                }
            }
        }
    }

    #[test]
    fn health_check_node_port_table() {
        // (type, eTP, healthCheckNodePort) → (port, reasons)
        type Row = (
            &'static str,
            &'static str,
            Option<&'static str>,
            Option<i32>,
            Option<u16>,
            &'static [&'static str],
        );
        let cases: Vec<Row> = vec![
            (
                "LB eTP Local",
                "LoadBalancer",
                Some("Local"),
                Some(30001),
                Some(30001),
                &[],
            ),
            (
                "LB eTP Cluster",
                "LoadBalancer",
                Some("Cluster"),
                Some(30001),
                None,
                &[],
            ),
            ("LB eTP unset", "LoadBalancer", None, Some(30001), None, &[]),
            (
                "NodePort eTP Local gets none",
                "NodePort",
                Some("Local"),
                Some(30001),
                None,
                &[],
            ),
            (
                "LB eTP Local without port",
                "LoadBalancer",
                Some("Local"),
                None,
                None,
                &["type LoadBalancer with externalTrafficPolicy Local has no healthCheckNodePort"],
            ),
            (
                "LB eTP Local with port 0",
                "LoadBalancer",
                Some("Local"),
                Some(0),
                None,
                &["type LoadBalancer with externalTrafficPolicy Local has no healthCheckNodePort"],
            ),
            (
                "LB eTP Local with port out of range",
                "LoadBalancer",
                Some("Local"),
                Some(65536),
                None,
                &["healthCheckNodePort 65536 is out of range 1-65535"],
            ),
        ];
        for (what, ty, etp, hc, want, want_reasons) in cases {
            let mut b = svc().type_(ty).port("p", "TCP", 80).node_port(30080);
            if let Some(e) = etp {
                b = b.etp(e);
            }
            if let Some(hc) = hc {
                b = b.health_check_node_port(hc);
            }
            let (info, reasons) = read(&b.build_raw());
            let info = info.unwrap_or_else(|| panic!("{what}"));
            assert_eq!(info.health_check_node_port, want, "{what}");
            assert_eq!(reasons, *want_reasons, "{what}");
        }
    }

    #[test]
    fn external_and_load_balancer_ips_table() {
        let (info, reasons) = read(
            &svc()
                .type_("LoadBalancer")
                .port("p", "TCP", 80)
                .external_ips(&["1.2.3.004", "fd00::5", "1.2.3.4", "bogus"])
                .lb_ingress(Some("5.6.7.8"), None)
                .lb_ingress(Some("5.6.7.9"), Some("VIP"))
                .lb_ingress(Some("5.6.7.10"), Some("Proxy"))
                .lb_ingress(None, None)
                .lb_ingress(Some(""), None)
                .lb_ingress(Some("fd00::9"), None)
                .lb_ingress(Some("5.6.7.11"), Some("Magic"))
                .lb_ingress(Some("5.6.7.300"), None)
                .build_raw(),
        );
        let info = info.unwrap();
        assert_eq!(info.external_ips, [ip("1.2.3.4"), ip("fd00::5")]);
        assert_eq!(info.external_ips_of(IpFamily::V4), [ip("1.2.3.4")]);
        assert_eq!(info.external_ips_of(IpFamily::V6), [ip("fd00::5")]);
        assert_eq!(
            info.load_balancer_ips,
            [ip("5.6.7.8"), ip("5.6.7.9"), ip("fd00::9")]
        );
        assert_eq!(
            info.load_balancer_ips_of(IpFamily::V4),
            [ip("5.6.7.8"), ip("5.6.7.9")]
        );
        assert_eq!(info.load_balancer_ips_of(IpFamily::V6), [ip("fd00::9")]);
        assert_eq!(
            reasons,
            [
                "spec.externalIPs: invalid IP \"bogus\"",
                "status.loadBalancer.ingress \"5.6.7.11\": unknown ipMode \"Magic\"",
                "status.loadBalancer.ingress: invalid IP \"5.6.7.300\"",
            ]
        );
    }

    #[test]
    fn load_balancer_source_ranges_table() {
        let (info, reasons) = read(
            &svc()
                .type_("LoadBalancer")
                .port("p", "TCP", 80)
                .source_ranges(&[
                    "10.0.0.0/8",
                    " 192.168.1.7/16\t",
                    "fd00::/8",
                    "10.1.0.0/8",
                    "203.0.113.000/025",
                    "::ffff:10.0.0.0/104",
                    "10.0.0.1",
                    "fd00::/129",
                    "",
                ])
                .build_raw(),
        );
        let info = info.unwrap();
        let cidrs = |v: &[&str]| -> Vec<Cidr> {
            v.iter().map(|s| parse_cidr_lenient(s).unwrap()).collect()
        };
        // Host bits cleared, then deduplicated (10.1.0.0/8 and the mapped
        // form are 10.0.0.0/8 again).
        assert_eq!(
            info.load_balancer_source_ranges,
            cidrs(&["10.0.0.0/8", "192.168.0.0/16", "fd00::/8", "203.0.113.0/25"])
        );
        assert_eq!(
            info.load_balancer_source_ranges_of(IpFamily::V4),
            cidrs(&["10.0.0.0/8", "192.168.0.0/16", "203.0.113.0/25"])
        );
        assert_eq!(
            info.load_balancer_source_ranges_of(IpFamily::V6),
            cidrs(&["fd00::/8"])
        );
        assert_eq!(
            reasons,
            [
                "spec.loadBalancerSourceRanges: invalid CIDR \"10.0.0.1\"",
                "spec.loadBalancerSourceRanges: invalid CIDR \"fd00::/129\"",
                "spec.loadBalancerSourceRanges: invalid CIDR \"\"",
            ]
        );
    }

    #[test]
    fn namespace_and_name() {
        let (info, _) = read(
            &service("", "s", "172.30.0.1")
                .port("p", "TCP", 80)
                .build_raw(),
        );
        assert_eq!(info.unwrap().service.namespace, "default");
        let (info, reasons) = read(
            &service("ns", "", "172.30.0.1")
                .port("p", "TCP", 80)
                .build_raw(),
        );
        assert!(info.is_none());
        assert_eq!(reasons, ["metadata.name is empty"]);
    }

    fn svc() -> ServiceBuilder {
        service("ns", "s", "172.30.0.1")
    }
}
