//! The model's output: what the datapath should hold, independent of how it
//! is stored. Pure data; `crate::datapath` turns it into map entries.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

pub use lb_common::FrontendKind;

use super::ip::Cidr;
pub use super::ip::IpFamily;

/// L4 protocol of a service port. SCTP is not supported by this datapath and
/// is reported as invalid input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::PROTO_TCP,
            Protocol::Udp => lb_common::PROTO_UDP,
        }
    }

    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            lb_common::PROTO_TCP => Some(Protocol::Tcp),
            lb_common::PROTO_UDP => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// namespace/name of a Service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which of CategorizeEndpoints' endpoint selections a backend set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selection {
    /// `clusterEndpoints`: ready (topology-filtered) endpoints, else
    /// serving+terminating ones.
    Cluster,
    /// `localEndpoints`: this node's ready endpoints, else its
    /// serving+terminating ones.
    Local,
}

/// Identity of one backend set: one service port, one family, one selection.
/// Stable across recomputations, so the datapath keeps the same service id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendSetKey {
    pub service: ServiceRef,
    /// The service port's name ("" when unnamed).
    pub port_name: String,
    pub protocol: Protocol,
    pub family: IpFamily,
    pub selection: Selection,
}

impl fmt::Display for BackendSetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.service)?;
        if !self.port_name.is_empty() {
            write!(f, ":{}", self.port_name)?;
        }
        write!(f, "/{}", self.protocol)?;
        if self.family == IpFamily::V6 {
            f.write_str("/v6")?;
        }
        if self.selection == Selection::Local {
            f.write_str("/local")?;
        }
        Ok(())
    }
}

/// What a connect to a frontend whose set has no usable backend gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum EmptyOutcome {
    /// No endpoints at all: kube-proxy REJECTs (ECONNREFUSED).
    #[default]
    Reject,
    /// Endpoints exist but none is usable from here: kube-proxy DROPs.
    Drop,
}

/// One endpoint as a backend of a set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub ip: IpAddr,
    /// The endpoint's own port (named targetPorts resolve per endpoint).
    pub port: u16,
    pub protocol: Protocol,
    /// Serving but terminating: only chosen because nothing ready exists.
    pub terminating: bool,
    /// nodeName equals this node.
    pub local: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BackendSet {
    /// The usable backends, sorted and deduplicated.
    pub backends: Vec<Backend>,
    /// Meaningful only when `backends` is empty.
    pub empty_outcome: EmptyOutcome,
    /// sessionAffinity ClientIP timeout in seconds, None for affinity None.
    pub affinity_timeout_secs: Option<u32>,
}

/// A frontend address as sockets see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FrontendAddr {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

impl fmt::Display for FrontendAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}/{}", self.port, self.protocol),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}/{}", self.port, self.protocol),
        }
    }
}

/// A frontend as sockets on this node reach it (the socket datapath).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub set: Arc<BackendSetKey>,
}

/// A frontend as a client outside the node reaches it (the packet
/// datapath): kube-proxy applies externalTrafficPolicy to such traffic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalFrontend {
    /// NodePort, ExternalIp or LoadBalancer.
    pub kind: FrontendKind,
    /// The Local selection when externalTrafficPolicy is Local, else the
    /// Cluster selection; in [`DesiredState::external_sets`].
    pub set: Arc<BackendSetKey>,
    /// externalTrafficPolicy Cluster: the packet is masqueraded to the
    /// node's address (kube-proxy does); Local preserves the client IP.
    pub snat: bool,
    /// loadBalancerSourceRanges of this frontend's family (LoadBalancer kind
    /// only; empty = unrestricted). Nothing else: the datapath adds the
    /// node's own addresses and the LB IP itself as allowed sources.
    pub source_ranges: Arc<[Cidr]>,
}

/// A health check node port the agent serves (type LoadBalancer with
/// externalTrafficPolicy Local).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: ServiceRef,
    pub node_port: u16,
    /// Distinct local ready endpoint IPs over all ports of the Service.
    pub local_endpoints: usize,
}

/// Everything the datapath should hold for this node.
///
/// Keys and sets are shared (`Arc`): one set is named by its frontends and
/// ClusterIP, and an unchanged Service hands the same ones from pass to pass
/// (see `Incremental`), so that cloning is cheap and the datapath can tell an
/// unchanged set by pointer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredState {
    /// The sets socket frontends serve from.
    pub backend_sets: BTreeMap<Arc<BackendSetKey>, Arc<BackendSet>>,
    /// Frontends as sockets on this node reach them: every client is on the
    /// node, so externalTrafficPolicy never applies.
    pub frontends: BTreeMap<FrontendAddr, Frontend>,
    /// Frontends as clients outside the node reach them (the packet
    /// datapath): NodePorts on the node's addresses (not loopback),
    /// externalIPs, LB IPs. Each is also in `frontends`, for local clients.
    pub external: BTreeMap<FrontendAddr, ExternalFrontend>,
    /// The sets external frontends serve from (Cluster or Local selection),
    /// by key; kept apart from `backend_sets` so the socket datapath never
    /// installs a set only external traffic uses. A set both use is in both
    /// (the same `Arc`).
    pub external_sets: BTreeMap<Arc<BackendSetKey>, Arc<BackendSet>>,
    /// Every ClusterIP, with one of its Service's sets (for counting
    /// refusals of undefined ports).
    pub cluster_ips: BTreeMap<IpAddr, Arc<BackendSetKey>>,
    /// NodePorts that host binds may not take.
    pub node_ports: BTreeSet<(u16, Protocol)>,
    /// Keyed by the health check node port.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

/// Kubernetes object kinds the model reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
    Node,
    /// A manifest document that is none of the above: unreadable or
    /// unparseable input, or an unsupported kind.
    Manifest,
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::Node => "Node",
            ObjectKind::Manifest => "Manifest",
        })
    }
}

/// Why part of an object is not served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReportCause {
    /// Bad input: the object (or the bad part) is skipped.
    Invalid,
    /// A valid externalIP outside every `--external-ip-cidr`: this node's
    /// policy withholds its frontends (CVE-2020-8554).
    ExternalIpNotAllowed,
}

impl ReportCause {
    /// The reason of the Kubernetes Event posted on the object.
    pub const fn event_reason(self) -> &'static str {
        match self {
            ReportCause::Invalid => "FerryInvalidObject",
            ReportCause::ExternalIpNotAllowed => "ExternalIPNotAllowed",
        }
    }
}

/// Part of an object (or all of it) not served, reported with the object's
/// identity: bad input, or an externalIP this node's policy refuses.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InvalidObject {
    pub cause: ReportCause,
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

impl fmt::Display for InvalidObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() && self.name.is_empty() {
            write!(f, "{}: {}", self.kind, self.reason)
        } else if self.namespace.is_empty() {
            write!(f, "{} {}: {}", self.kind, self.name, self.reason)
        } else {
            write!(
                f,
                "{} {}/{}: {}",
                self.kind, self.namespace, self.name, self.reason
            )
        }
    }
}

/// What this node is, for locality, NodePorts and topology, and which
/// externalIPs it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    /// Addresses NodePorts answer on (127.0.0.1 and ::1 are added by the
    /// model for local clients).
    pub addresses: Vec<IpAddr>,
    /// Label topology.kubernetes.io/zone of the Node, if any.
    pub zone: Option<String>,
    /// `--external-ip-cidr`: externalIPs outside every block get no
    /// frontend and are reported. Empty: every externalIP is served, as
    /// kube-proxy does.
    pub external_ip_cidrs: Vec<Cidr>,
}

/// The model's input: the objects as read (from the API server or files).
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub services: Vec<std::sync::Arc<k8s_openapi::api::core::v1::Service>>,
    /// Each slice as the model reads it ([`super::EndpointSliceInfo`]).
    pub endpoint_slices: Vec<std::sync::Arc<super::EndpointSliceInfo>>,
}

/// The model's result: desired state plus every object it had to skip.
#[derive(Clone, Debug, Default)]
pub struct Computed {
    pub desired: DesiredState,
    pub invalid: Vec<InvalidObject>,
}
