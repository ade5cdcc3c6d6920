//! What the model reads of a discovery.k8s.io/v1 EndpointSlice, kept in
//! place of the object itself.
//!
//! Every slice stays in memory for as long as it exists, and a k8s-openapi
//! `Endpoint` is 352 bytes before its strings (most of its fields are ones
//! kube-proxy ignores: targetRef, hostname, deprecatedTopology, all
//! addresses after the first). At 10,000 Services of 10 endpoints the
//! objects alone were half the agent's resident set. kube-proxy's
//! EndpointSliceCache keeps a reduced copy for the same reason
//! (`endpointSliceInfo`); so do we: sources turn each slice into an
//! [`EndpointSliceInfo`] as it arrives, and an endpoint costs 56 bytes
//! plus its node name.
//!
//! Nothing the model reads or reports on is lost: invalid entries are kept
//! as written, so `endpoints::read_slice` reports them exactly as it would
//! from the object (tested below against the object's fields).

use std::net::IpAddr;

use k8s_openapi::api::discovery::v1::{
    Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice,
};

use super::ip::parse_ip_lenient;
use super::meta::has_skip_label;

/// Label joining an EndpointSlice to its Service (same namespace).
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// One EndpointSlice as the model reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointSliceInfo {
    /// metadata.namespace and metadata.name, as written.
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// metadata.uid and metadata.resourceVersion: what an Event about the
    /// slice names it by.
    pub uid: Option<String>,
    pub resource_version: Option<String>,
    /// Label kubernetes.io/service-name, as written.
    pub service_name: Option<String>,
    /// Labelled for another proxy or as headless (kube-proxy does not list
    /// such slices).
    pub skipped: bool,
    pub address_type: String,
    /// The slice's ports, without appProtocol.
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<EndpointInfo>,
}

/// One endpoint of a slice, as the model reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointInfo {
    /// addresses[0] (kube-proxy uses only the first); None if there is none.
    pub address: Option<EndpointAddress>,
    /// All unset when the endpoint has no conditions.
    pub conditions: EndpointConditions,
    pub node_name: Option<Box<str>>,
    /// Rare, so boxed: a pointer when absent.
    pub hints: Option<Box<EndpointHints>>,
}

/// An endpoint's address: parsed when its text is the address's canonical
/// form (so the text can be given back exactly in a report), else the text
/// itself, read when the model reads the slice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndpointAddress {
    Ip(IpAddr),
    Text(Box<str>),
}

impl EndpointAddress {
    fn new(text: String) -> Self {
        match parse_ip_lenient(&text) {
            Some(ip) if ip.to_string() == text => EndpointAddress::Ip(ip),
            _ => EndpointAddress::Text(text.into_boxed_str()),
        }
    }

    /// The address, if it is one (read as kube-proxy reads it).
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            EndpointAddress::Ip(ip) => Some(*ip),
            EndpointAddress::Text(text) => parse_ip_lenient(text),
        }
    }
}

impl std::fmt::Display for EndpointAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddress::Ip(ip) => ip.fmt(f),
            EndpointAddress::Text(text) => f.write_str(text),
        }
    }
}

impl From<Endpoint> for EndpointInfo {
    fn from(endpoint: Endpoint) -> Self {
        EndpointInfo {
            address: endpoint
                .addresses
                .into_iter()
                .next()
                .map(EndpointAddress::new),
            conditions: endpoint.conditions.unwrap_or_default(),
            node_name: endpoint.node_name.map(String::into_boxed_str),
            hints: endpoint.hints.map(Box::new),
        }
    }
}

impl From<EndpointSlice> for EndpointSliceInfo {
    fn from(slice: EndpointSlice) -> Self {
        let mut labels = slice.metadata.labels;
        let skipped = has_skip_label(labels.as_ref());
        let service_name = labels.as_mut().and_then(|l| l.remove(LABEL_SERVICE_NAME));
        let ports = slice
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| EndpointPort {
                app_protocol: None,
                ..p
            })
            .collect();
        let ports = shrunk(ports);
        EndpointSliceInfo {
            namespace: slice.metadata.namespace,
            name: slice.metadata.name,
            uid: slice.metadata.uid,
            resource_version: slice.metadata.resource_version,
            service_name,
            skipped,
            address_type: slice.address_type,
            ports,
            endpoints: shrunk(
                slice
                    .endpoints
                    .unwrap_or_default()
                    .into_iter()
                    .map(EndpointInfo::from)
                    .collect(),
            ),
        }
    }
}

/// `v` without spare capacity. Collecting a mapped `Vec::into_iter` reuses
/// the source's buffer, so a vector of 56-byte `EndpointInfo`s made from
/// 352-byte `Endpoint`s would otherwise keep all the room of the latter;
/// and a deserialized vector grows by doubling.
fn shrunk<T>(mut v: Vec<T>) -> Vec<T> {
    v.shrink_to_fit();
    v
}

impl EndpointSliceInfo {
    /// namespace/name as written: what tells two definitions of one slice
    /// apart, and the order slices are merged in.
    pub fn identity(&self) -> (Option<&str>, Option<&str>) {
        (self.namespace.as_deref(), self.name.as_deref())
    }
}

/// Size of an endpoint in memory, checked so that a field added without
/// thought shows up here (see the module docs).
const _: () = assert!(std::mem::size_of::<EndpointInfo>() <= 56);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::ForZone;

    use super::*;

    #[test]
    fn addresses_keep_their_text_unless_it_is_canonical() {
        // (written, stored parsed, read as)
        let cases: &[(&str, bool, Option<&str>)] = &[
            ("10.0.0.1", true, Some("10.0.0.1")),
            ("fd00::1", true, Some("fd00::1")),
            // Leading zeros (ParseIPSloppy reads them as decimal).
            ("010.000.000.001", false, Some("10.0.0.1")),
            // Not canonical IPv6 text; an IPv4-mapped address reads as IPv4.
            ("FD00:0::1", false, Some("fd00::1")),
            ("::ffff:10.0.0.1", false, Some("10.0.0.1")),
            ("not-an-ip", false, None),
            ("", false, None),
        ];
        for (text, parsed, want) in cases {
            let address = EndpointAddress::new(text.to_string());
            assert_eq!(
                matches!(address, EndpointAddress::Ip(_)),
                *parsed,
                "{text:?}"
            );
            assert_eq!(address.to_string(), *text, "{text:?} given back as written");
            assert_eq!(
                address.ip(),
                want.map(|w| w.parse().unwrap()),
                "{text:?} read"
            );
        }
    }

    #[test]
    fn a_slice_keeps_what_the_model_reads() {
        let labels = BTreeMap::from([
            (LABEL_SERVICE_NAME.to_string(), "web".to_string()),
            ("app".to_string(), "shop".to_string()),
        ]);
        let endpoint = Endpoint {
            addresses: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            conditions: Some(EndpointConditions {
                ready: Some(false),
                serving: Some(true),
                terminating: None,
            }),
            hostname: Some("pod-1".into()),
            node_name: Some("node-a".into()),
            hints: Some(EndpointHints {
                for_zones: Some(vec![ForZone { name: "a".into() }]),
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                name: Some("pod-1".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        // Room for more, as a deserialized vector has.
        let mut endpoints = Vec::with_capacity(16);
        endpoints.extend([endpoint.clone(), Endpoint::default()]);
        let mut slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(endpoints),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: Some("http".into()),
            }]),
            ..Default::default()
        };
        slice.metadata.namespace = Some("shop".into());
        slice.metadata.name = Some("web-1".into());
        slice.metadata.labels = Some(labels);

        let info = EndpointSliceInfo::from(slice);
        assert_eq!(info.identity(), (Some("shop"), Some("web-1")));
        assert_eq!(info.service_name.as_deref(), Some("web"));
        assert!(!info.skipped);
        assert_eq!(info.address_type, "IPv4");
        assert_eq!(info.ports.len(), 1);
        assert_eq!(
            (info.ports[0].name.as_deref(), info.ports[0].port),
            (Some("http"), Some(8080))
        );
        assert_eq!(info.ports[0].app_protocol, None);
        let [first, empty] = &info.endpoints[..] else {
            panic!("two endpoints: {:?}", info.endpoints);
        };
        assert_eq!(
            first.address.as_ref().and_then(EndpointAddress::ip),
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(first.conditions, endpoint.conditions.unwrap());
        assert_eq!(first.node_name.as_deref(), Some("node-a"));
        assert_eq!(first.hints.as_deref(), endpoint.hints.as_ref());
        assert_eq!(empty, &EndpointInfo::default());
        // Kept without the spare room (see `shrunk`).
        assert_eq!(info.endpoints.capacity(), 2);
    }

    #[test]
    fn skip_labels_are_remembered() {
        for label in [
            "service.kubernetes.io/service-proxy-name",
            "service.kubernetes.io/headless",
        ] {
            let mut slice = EndpointSlice::default();
            slice.metadata.labels = Some(BTreeMap::from([(label.to_string(), String::new())]));
            assert!(EndpointSliceInfo::from(slice).skipped, "{label}");
        }
    }
}
