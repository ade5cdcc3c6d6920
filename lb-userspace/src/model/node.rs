//! What this node is, read from its Node object (or given on the command
//! line).

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

use super::ip::parse_ip_lenient;
use super::types::NodeInfo;

/// The Node label kube-proxy reads for topology hints.
pub(super) const LABEL_TOPOLOGY_ZONE: &str = "topology.kubernetes.io/zone";

/// Builds this node's [`NodeInfo`]. Addresses are `override_ips` when given,
/// else the Node's InternalIP and ExternalIP status addresses (other types,
/// such as Hostname, carry no IP; unparseable ones are skipped), first
/// occurrence kept. An empty zone label counts as no zone.
pub fn node_info(node: Option<&Node>, name: &str, override_ips: &[IpAddr]) -> NodeInfo {
    let mut addresses: Vec<IpAddr> = Vec::new();
    let mut push = |ip: IpAddr| {
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    };
    if override_ips.is_empty() {
        let status = node
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.addresses.as_ref());
        for a in status.into_iter().flatten() {
            if matches!(a.type_.as_str(), "InternalIP" | "ExternalIP")
                && let Some(ip) = parse_ip_lenient(&a.address)
            {
                push(ip);
            }
        }
    } else {
        for ip in override_ips {
            push(*ip);
        }
    }
    let zone = node
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
        .filter(|z| !z.is_empty())
        .cloned();
    NodeInfo {
        name: name.to_owned(),
        addresses,
        zone,
        external_ip_cidrs: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn node(addresses: &[(&str, &str)], zone: Option<&str>) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("other-name".into());
        if let Some(z) = zone {
            n.metadata.labels = Some([(LABEL_TOPOLOGY_ZONE.to_string(), z.to_string())].into());
        }
        n.status = Some(NodeStatus {
            addresses: Some(
                addresses
                    .iter()
                    .map(|(t, a)| NodeAddress {
                        type_: t.to_string(),
                        address: a.to_string(),
                    })
                    .collect(),
            ),
            ..Default::default()
        });
        n
    }

    #[test]
    fn node_info_table() {
        let status = [
            ("Hostname", "test-node"),
            ("InternalIP", "192.168.0.2"),
            ("InternalDNS", "test-node.internal"),
            ("ExternalIP", "203.0.113.010"),
            ("InternalIP", "fd00::2"),
            ("InternalIP", "192.168.0.2"),
            ("ExternalIP", "not-an-ip"),
        ];
        let n = node(&status, Some("zone-a"));
        // (what, Node, override IPs) → (addresses, zone)
        type Row<'a> = (
            &'a str,
            Option<&'a Node>,
            Vec<IpAddr>,
            Vec<&'a str>,
            Option<&'a str>,
        );
        let cases: Vec<Row> = vec![
            (
                "status addresses: InternalIP and ExternalIP only, lenient, deduplicated",
                Some(&n),
                vec![],
                vec!["192.168.0.2", "203.0.113.10", "fd00::2"],
                Some("zone-a"),
            ),
            (
                "override addresses win, zone still from the Node",
                Some(&n),
                vec![ip("10.0.0.1"), ip("10.0.0.1"), ip("fd00::1")],
                vec!["10.0.0.1", "fd00::1"],
                Some("zone-a"),
            ),
            (
                "no Node, override only",
                None,
                vec![ip("10.0.0.1")],
                vec!["10.0.0.1"],
                None,
            ),
            ("no Node, nothing", None, vec![], vec![], None),
        ];
        for (what, node, overrides, want_addrs, want_zone) in cases {
            let info = node_info(node, "test-node", &overrides);
            assert_eq!(info.name, "test-node", "{what}");
            assert_eq!(
                info.addresses,
                want_addrs.iter().map(|s| ip(s)).collect::<Vec<_>>(),
                "{what}"
            );
            assert_eq!(info.zone.as_deref(), want_zone, "{what}");
        }
    }

    #[test]
    fn zone_label_table() {
        let cases = [
            (Some("zone-a"), Some("zone-a")),
            (Some(""), None),
            (None, None),
        ];
        for (label, want) in cases {
            let n = node(&[], label);
            assert_eq!(
                node_info(Some(&n), "n", &[]).zone.as_deref(),
                want,
                "{label:?}"
            );
        }
    }
}
