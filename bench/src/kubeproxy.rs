//! kube-proxy-shaped rules for the same Services: iptables-restore input as
//! its iptables mode writes it, and `nft -f` input as its nftables mode
//! writes it (knftables transactions: one `add`/`flush`/`delete` command per
//! line). Generated from [`ServicePort`]s, which are read from the same
//! objects Ferry reads.
//!
//! Both keep kube-proxy's structure and per-packet work for the shapes the
//! bench uses (ClusterIP Services, all endpoints remote, a cluster CIDR):
//! chain layout, match order, masquerade marking, comments, random
//! endpoint choice. Chain-name hashes use FNV instead of SHA-256 (same
//! lengths). NodePort, external IP, load balancer and firewall chains are
//! declared (and jumped to) but empty, as kube-proxy leaves them when no
//! Service uses them.

use std::fmt::Write as _;

use super::workload::{CLUSTER_CIDR, Proto, SERVICE_CIDR, ServicePort};

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

fn fnv1a(seed: u64, data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// `len` base32 characters of a hash of `input` (kube-proxy: base32 of
/// SHA-256, truncated).
fn hash_name(input: &str, len: usize) -> String {
    let a = fnv1a(0, input.as_bytes());
    let b = fnv1a(0x9e37_79b9_7f4a_7c15, input.as_bytes());
    let bits = (u128::from(a) << 64) | u128::from(b);
    (0..len)
        .map(|i| BASE32[((bits >> (5 * i)) & 31) as usize] as char)
        .collect()
}

fn proto_upper(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
    }
}

// ---------------------------------------------------------------- iptables

/// KUBE-SVC-<hash>: servicePortChainName.
pub(crate) fn svc_chain(sp: &ServicePort) -> String {
    let key = format!("{}{}", sp.port_name_string(), proto_upper(sp.protocol));
    format!("KUBE-SVC-{}", hash_name(&key, 16))
}

/// KUBE-SEP-<hash>: servicePortEndpointChainName.
pub(crate) fn sep_chain(sp: &ServicePort, ep: (std::net::Ipv4Addr, u16)) -> String {
    let key = format!(
        "{}{}{}:{}",
        sp.port_name_string(),
        proto_upper(sp.protocol),
        ep.0,
        ep.1
    );
    format!("KUBE-SEP-{}", hash_name(&key, 16))
}

/// The rules of one Service port's KUBE-SVC chain and its KUBE-SEP chains
/// (without the chain declarations).
fn write_service_chains(out: &mut String, sp: &ServicePort) {
    let name = sp.port_name_string();
    let proto = sp.protocol.lower();
    let svc = svc_chain(sp);
    let _ = writeln!(
        out,
        "-A {svc} -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} ! -s {CLUSTER_CIDR} -j KUBE-MARK-MASQ",
        sp.cluster_ip, sp.port
    );
    let n = sp.endpoints.len();
    for (i, ep) in sp.endpoints.iter().enumerate() {
        let sep = sep_chain(sp, *ep);
        if i + 1 < n {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{name} -> {}:{}\" -m statistic --mode random --probability {:.10} -j {sep}",
                ep.0,
                ep.1,
                1.0 / (n - i) as f64
            );
        } else {
            let _ = writeln!(
                out,
                "-A {svc} -m comment --comment \"{name} -> {}:{}\" -j {sep}",
                ep.0, ep.1
            );
        }
    }
    for ep in &sp.endpoints {
        let sep = sep_chain(sp, *ep);
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -s {}/32 -j KUBE-MARK-MASQ",
            ep.0
        );
        let _ = writeln!(
            out,
            "-A {sep} -m comment --comment {name} -m {proto} -p {proto} -j DNAT --to-destination {}:{}",
            ep.0, ep.1
        );
    }
}

/// Everything of the filter table, always rewritten whole.
fn write_filter(out: &mut String, ports: &[ServicePort]) {
    out.push_str("*filter\n");
    for chain in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-PROXY-FIREWALL",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n");
    out.push_str("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n");
    for sp in ports.iter().filter(|sp| sp.endpoints.is_empty()) {
        let proto = sp.protocol.lower();
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} has no endpoints\" -m {proto} -p {proto} -d {}/32 --dport {} -j REJECT",
            sp.port_name_string(),
            sp.cluster_ip,
            sp.port
        );
    }
    out.push_str("COMMIT\n");
}

/// The nat table's fixed chains and KUBE-SERVICES (always rewritten whole,
/// as kube-proxy does on every sync), plus `extra` chains to declare.
fn write_nat_top(out: &mut String) {
    out.push_str("*nat\n");
    for chain in [
        "KUBE-NODEPORTS",
        "KUBE-SERVICES",
        "KUBE-MARK-MASQ",
        "KUBE-POSTROUTING",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
}

fn write_nat_fixed_rules(out: &mut String, ports: &[ServicePort]) {
    out.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    out.push_str("-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n");
    out.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    out.push_str("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n");
    for sp in ports.iter().filter(|sp| !sp.endpoints.is_empty()) {
        let proto = sp.protocol.lower();
        let _ = writeln!(
            out,
            "-A KUBE-SERVICES -m comment --comment \"{} cluster IP\" -m {proto} -p {proto} -d {}/32 --dport {} -j {}",
            sp.port_name_string(),
            sp.cluster_ip,
            sp.port,
            svc_chain(sp)
        );
    }
    out.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
}

/// kube-proxy's jumps from the built-in chains of the filter table
/// (which it installs with `iptables -I`).
const FILTER_JUMPS: &[&str] = &[
    "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
    "-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS",
    "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
    "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
    "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
    "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL",
    "-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
];

/// The nat table's jumps.
const NAT_JUMPS: &[&str] = &[
    "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
];

/// A full sync from nothing: both tables whole, with the built-in chains'
/// jumps, for `iptables-restore` *without* `--noflush`. (kube-proxy
/// passes `--noflush`, which iptables 1.8.9's nf_tables backend handles
/// in time quadratic in the number of chains, 90 s at 1,000 Services; in
/// the bench's fresh namespace both give the same tables.)
pub(crate) fn iptables_full(ports: &[ServicePort]) -> String {
    let mut out = String::with_capacity(ports.len() * 3000);
    let mut filter = String::new();
    write_filter(&mut filter, ports);
    // Built-in chains declared (as iptables-save prints them), then the
    // jumps, then kube-proxy's own rules.
    let filter = filter.replacen(
        "*filter\n",
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        1,
    );
    let (head, tail) = filter
        .split_once("-A KUBE-FORWARD")
        .expect("the filter table has KUBE-FORWARD rules");
    out.push_str(head);
    for j in FILTER_JUMPS {
        out.push_str(j);
        out.push('\n');
    }
    out.push_str("-A KUBE-FORWARD");
    out.push_str(tail);
    out.push_str(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
    );
    let mut nat = String::new();
    write_nat_top(&mut nat);
    out.push_str(nat.trim_start_matches("*nat\n"));
    for sp in ports.iter().filter(|sp| !sp.endpoints.is_empty()) {
        let _ = writeln!(out, ":{} - [0:0]", svc_chain(sp));
        for ep in &sp.endpoints {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(sp, *ep));
        }
    }
    for j in NAT_JUMPS {
        out.push_str(j);
        out.push('\n');
    }
    write_nat_fixed_rules(&mut out, ports);
    for sp in ports.iter().filter(|sp| !sp.endpoints.is_empty()) {
        write_service_chains(&mut out, sp);
    }
    out.push_str("COMMIT\n");
    out
}

/// A changed Service port: (before, after).
pub(crate) type PortChange<'a> = (&'a ServicePort, &'a ServicePort);

fn gone<'a>(
    (before, after): PortChange<'a>,
) -> impl Iterator<Item = &'a (std::net::Ipv4Addr, u16)> + 'a {
    before
        .endpoints
        .iter()
        .filter(move |ep| !after.endpoints.contains(ep))
}

fn added<'a>(
    (before, after): PortChange<'a>,
) -> impl Iterator<Item = &'a (std::net::Ipv4Addr, u16)> + 'a {
    after
        .endpoints
        .iter()
        .filter(move |ep| !before.endpoints.contains(ep))
}

/// A partial sync after some Service ports changed (kube-proxy's minimal
/// restore, the default since 1.27): the filter table and the nat table's
/// top-level chains (KUBE-SERVICES with every Service) in full, the
/// changed Services' chains rewritten, chains of endpoints that left
/// deleted. `ports` is the state after the change.
pub(crate) fn iptables_change(ports: &[ServicePort], changes: &[PortChange]) -> String {
    let mut out = String::with_capacity(ports.len() * 200);
    write_filter(&mut out, ports);
    write_nat_top(&mut out);
    for &(before, after) in changes {
        if !after.endpoints.is_empty() {
            let _ = writeln!(out, ":{} - [0:0]", svc_chain(after));
            for ep in &after.endpoints {
                let _ = writeln!(out, ":{} - [0:0]", sep_chain(after, *ep));
            }
        }
        for ep in gone((before, after)) {
            let _ = writeln!(out, ":{} - [0:0]", sep_chain(before, *ep));
        }
    }
    write_nat_fixed_rules(&mut out, ports);
    for &(_, after) in changes {
        if !after.endpoints.is_empty() {
            write_service_chains(&mut out, after);
        }
    }
    for &(before, after) in changes {
        for ep in gone((before, after)) {
            let _ = writeln!(out, "-X {}", sep_chain(before, *ep));
        }
    }
    out.push_str("COMMIT\n");
    out
}

// ---------------------------------------------------------------- nftables

const T: &str = "ip kube-proxy";

/// service-<hash>-ns/name/proto/port.
pub(crate) fn nft_service_chain(sp: &ServicePort) -> String {
    let key = format!("{}{}", sp.port_name_string(), proto_upper(sp.protocol));
    format!(
        "service-{}-{}/{}/{}/{}",
        hash_name(&key, 8),
        sp.namespace,
        sp.name,
        sp.protocol.lower(),
        sp.port_name
    )
}

/// endpoint-<hash>-ns/name/proto/port__ip/port.
pub(crate) fn nft_endpoint_chain(sp: &ServicePort, ep: (std::net::Ipv4Addr, u16)) -> String {
    let key = format!(
        "{}{}{}:{}",
        sp.port_name_string(),
        proto_upper(sp.protocol),
        ep.0,
        ep.1
    );
    format!(
        "endpoint-{}-{}/{}/{}/{}__{}/{}",
        hash_name(&key, 8),
        sp.namespace,
        sp.name,
        sp.protocol.lower(),
        sp.port_name,
        ep.0,
        ep.1
    )
}

/// kube-proxy's nftables base: table, maps, sets, hooked chains.
fn nft_base(out: &mut String) {
    let lines = [
        format!("add table {T} {{ comment \"rules for kube-proxy\" ; }}"),
        format!("add chain {T} mark-for-masquerade"),
        format!("add rule {T} mark-for-masquerade mark set mark or 0x4000"),
        format!("add chain {T} masquerading"),
        format!("add rule {T} masquerading mark and 0x4000 == 0 return"),
        format!("add rule {T} masquerading mark set mark xor 0x4000"),
        format!("add rule {T} masquerading masquerade fully-random"),
        format!("add chain {T} services"),
        format!("add chain {T} service-endpoints-check"),
        format!("add chain {T} nodeport-endpoints-check"),
        format!("add chain {T} firewall-check"),
        format!("add chain {T} cluster-ips-check"),
        format!(
            "add chain {T} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
        ),
        format!("add rule {T} reject-chain reject"),
        format!(
            "add chain {T} filter-prerouting {{ type filter hook prerouting priority -110 ; }}"
        ),
        format!("add chain {T} filter-input {{ type filter hook input priority -110 ; }}"),
        format!("add chain {T} filter-forward {{ type filter hook forward priority -110 ; }}"),
        format!("add chain {T} filter-output {{ type filter hook output priority -110 ; }}"),
        format!(
            "add chain {T} filter-output-post-dnat {{ type filter hook output priority -90 ; }}"
        ),
        format!("add chain {T} nat-output {{ type nat hook output priority -100 ; }}"),
        format!("add chain {T} nat-postrouting {{ type nat hook postrouting priority 100 ; }}"),
        format!("add chain {T} nat-prerouting {{ type nat hook prerouting priority -100 ; }}"),
        format!("add set {T} cluster-ips {{ type ipv4_addr ; comment \"Active ClusterIPs\" ; }}"),
        format!(
            "add set {T} nodeport-ips {{ type ipv4_addr ; comment \"IPs that accept NodePort traffic\" ; }}"
        ),
        format!(
            "add map {T} firewall-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }}"
        ),
        format!(
            "add map {T} no-endpoint-services {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }}"
        ),
        format!(
            "add map {T} no-endpoint-nodeports {{ type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }}"
        ),
        format!(
            "add map {T} service-ips {{ type ipv4_addr . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }}"
        ),
        format!(
            "add map {T} service-nodeports {{ type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }}"
        ),
        format!("add rule {T} filter-prerouting ct state new jump firewall-check"),
        format!("add rule {T} filter-forward ct state new jump service-endpoints-check"),
        format!("add rule {T} filter-input ct state new jump nodeport-endpoints-check"),
        format!("add rule {T} filter-input ct state new jump service-endpoints-check"),
        format!("add rule {T} filter-output ct state new jump service-endpoints-check"),
        format!("add rule {T} filter-output ct state new jump firewall-check"),
        format!("add rule {T} filter-output-post-dnat ct state new jump cluster-ips-check"),
        format!("add rule {T} nat-output jump services"),
        format!("add rule {T} nat-postrouting jump masquerading"),
        format!("add rule {T} nat-prerouting jump services"),
        format!(
            "add rule {T} firewall-check ip daddr . meta l4proto . th dport vmap @firewall-ips"
        ),
        format!(
            "add rule {T} cluster-ips-check ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""
        ),
        format!(
            "add rule {T} cluster-ips-check ip daddr {{ {SERVICE_CIDR} }} drop comment \"Drop traffic to unallocated ClusterIPs\""
        ),
        format!(
            "add rule {T} nodeport-endpoints-check ip daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"
        ),
        format!(
            "add rule {T} service-endpoints-check ip daddr . meta l4proto . th dport vmap @no-endpoint-services"
        ),
        format!("add rule {T} services ip daddr . meta l4proto . th dport vmap @service-ips"),
        format!(
            "add rule {T} services ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"
        ),
    ];
    for l in lines {
        out.push_str(&l);
        out.push('\n');
    }
}

/// The rules of a service chain (which must exist and be empty).
fn nft_service_rules(out: &mut String, sp: &ServicePort) {
    let chain = nft_service_chain(sp);
    let proto = sp.protocol.lower();
    let _ = writeln!(
        out,
        "add rule {T} {chain} ip daddr {} {proto} dport {} ip saddr != {CLUSTER_CIDR} jump mark-for-masquerade",
        sp.cluster_ip, sp.port
    );
    let targets: Vec<String> = sp
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto {}", nft_endpoint_chain(sp, *ep)))
        .collect();
    let _ = writeln!(
        out,
        "add rule {T} {chain} numgen random mod {} vmap {{ {} }}",
        sp.endpoints.len(),
        targets.join(" , ")
    );
}

fn nft_endpoint(out: &mut String, sp: &ServicePort, ep: (std::net::Ipv4Addr, u16)) {
    let chain = nft_endpoint_chain(sp, ep);
    let _ = writeln!(out, "add chain {T} {chain}");
    let _ = writeln!(
        out,
        "add rule {T} {chain} ip saddr {} jump mark-for-masquerade",
        ep.0
    );
    let _ = writeln!(
        out,
        "add rule {T} {chain} meta l4proto {} dnat to {}:{}",
        sp.protocol.lower(),
        ep.0,
        ep.1
    );
}

fn nft_service_elements(out: &mut String, sp: &ServicePort) {
    let proto = sp.protocol.lower();
    if sp.endpoints.is_empty() {
        let _ = writeln!(
            out,
            "add element {T} no-endpoint-services {{ {} . {proto} . {} comment \"{}\" : goto reject-chain }}",
            sp.cluster_ip,
            sp.port,
            sp.port_name_string()
        );
    } else {
        let _ = writeln!(
            out,
            "add element {T} service-ips {{ {} . {proto} . {} : goto {} }}",
            sp.cluster_ip,
            sp.port,
            nft_service_chain(sp)
        );
    }
}

fn nft_services(out: &mut String, ports: &[ServicePort]) {
    let mut last_ip = None;
    for sp in ports {
        if last_ip != Some(sp.cluster_ip) {
            let _ = writeln!(out, "add element {T} cluster-ips {{ {} }}", sp.cluster_ip);
            last_ip = Some(sp.cluster_ip);
        }
        if !sp.endpoints.is_empty() {
            for ep in &sp.endpoints {
                nft_endpoint(out, sp, *ep);
            }
            let _ = writeln!(out, "add chain {T} {}", nft_service_chain(sp));
            nft_service_rules(out, sp);
        }
        nft_service_elements(out, sp);
    }
}

/// A full sync from nothing, in one transaction (as kube-proxy does it).
pub(crate) fn nft_full(ports: &[ServicePort]) -> String {
    let mut out = String::with_capacity(ports.len() * 4000);
    nft_base(&mut out);
    nft_services(&mut out, ports);
    out
}

/// The same, split into transactions of at most `per_chunk` Service ports
/// (the first also creates the table).
pub(crate) fn nft_full_chunks(ports: &[ServicePort], per_chunk: usize) -> Vec<String> {
    ports
        .chunks(per_chunk.max(1))
        .enumerate()
        .map(|(i, chunk)| {
            let mut out = String::with_capacity(chunk.len() * 4000);
            if i == 0 {
                nft_base(&mut out);
            }
            nft_services(&mut out, chunk);
            out
        })
        .collect()
}

/// A partial sync after some Service ports changed (one knftables
/// transaction): new endpoint chains added, the service chains flushed and
/// rewritten, chains of endpoints that left flushed and deleted.
pub(crate) fn nft_change(changes: &[PortChange]) -> String {
    let mut out = String::new();
    for &(before, after) in changes {
        for ep in added((before, after)) {
            nft_endpoint(&mut out, after, *ep);
        }
        let chain = nft_service_chain(after);
        let _ = writeln!(out, "add chain {T} {chain}");
        let _ = writeln!(out, "flush chain {T} {chain}");
        if !after.endpoints.is_empty() {
            nft_service_rules(&mut out, after);
        }
        for ep in gone((before, after)) {
            let gone = nft_endpoint_chain(before, *ep);
            let _ = writeln!(out, "flush chain {T} {gone}");
            let _ = writeln!(out, "delete chain {T} {gone}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn sp(name: &str, n: usize) -> ServicePort {
        ServicePort {
            namespace: "bench".into(),
            name: name.into(),
            port_name: "http".into(),
            protocol: Proto::Tcp,
            cluster_ip: Ipv4Addr::new(10, 96, 0, 1),
            port: 80,
            endpoints: (0..n)
                .map(|i| (Ipv4Addr::new(10, 244, 0, 10 + i as u8), 8080))
                .collect(),
        }
    }

    #[test]
    fn chain_names_have_kube_proxy_lengths() {
        let s = sp("web", 3);
        assert_eq!(svc_chain(&s).len(), "KUBE-SVC-".len() + 16);
        assert_eq!(sep_chain(&s, s.endpoints[0]).len(), "KUBE-SEP-".len() + 16);
        assert_ne!(sep_chain(&s, s.endpoints[0]), sep_chain(&s, s.endpoints[1]));
        assert!(nft_service_chain(&s).ends_with("-bench/web/tcp/http"));
        assert!(nft_endpoint_chain(&s, s.endpoints[0]).ends_with("__10.244.0.10/8080"));
    }

    #[test]
    fn iptables_probabilities_and_dnat() {
        let s = sp("web", 3);
        let out = iptables_full(std::slice::from_ref(&s));
        assert!(out.contains("--probability 0.3333333333 -j KUBE-SEP-"));
        assert!(out.contains("--probability 0.5000000000 -j KUBE-SEP-"));
        assert_eq!(out.matches("--probability").count(), 2);
        assert!(out.contains("-j DNAT --to-destination 10.244.0.12:8080"));
        assert!(out.contains(&format!("-d 10.96.0.1/32 --dport 80 -j {}", svc_chain(&s))));
        assert_eq!(out.matches("COMMIT").count(), 2);
        assert!(out.contains(":OUTPUT ACCEPT [0:0]\n"));
        assert!(out.contains(
            "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"
        ));
    }

    #[test]
    fn no_endpoints_reject_in_filter() {
        let s = sp("empty", 0);
        let out = iptables_full(std::slice::from_ref(&s));
        assert!(
            out.contains("has no endpoints\" -m tcp -p tcp -d 10.96.0.1/32 --dport 80 -j REJECT")
        );
        assert!(!out.contains("KUBE-SVC-"));
        let nft = nft_full(std::slice::from_ref(&s));
        assert!(nft.contains("no-endpoint-services { 10.96.0.1 . tcp . 80"));
    }

    #[test]
    fn changes_touch_only_the_changed_service() {
        let (a, b) = (sp("web", 3), sp("web", 2));
        let ipt = iptables_change(std::slice::from_ref(&b), &[(&a, &b)]);
        assert!(ipt.contains(&format!("-X {}", sep_chain(&a, a.endpoints[2]))));
        assert_eq!(ipt.matches("DNAT").count(), 2);
        let nft = nft_change(&[(&a, &b)]);
        assert!(nft.contains("numgen random mod 2 vmap"));
        assert!(nft.contains(&format!(
            "delete chain ip kube-proxy {}",
            nft_endpoint_chain(&a, a.endpoints[2])
        )));
        let back = nft_change(&[(&b, &a)]);
        assert!(back.contains(&format!(
            "add chain ip kube-proxy {}",
            nft_endpoint_chain(&a, a.endpoints[2])
        )));
    }

    #[test]
    fn nft_full_has_the_verdict_map_and_numgen() {
        let s = sp("web", 10);
        let out = nft_full(std::slice::from_ref(&s));
        assert!(out.contains("services ip daddr . meta l4proto . th dport vmap @service-ips"));
        assert!(out.contains("numgen random mod 10 vmap { 0 : goto endpoint-"));
        assert!(out.contains(
            "add element ip kube-proxy service-ips { 10.96.0.1 . tcp . 80 : goto service-"
        ));
        assert_eq!(out.matches("dnat to").count(), 10);
        let mut two = [sp("a", 2), sp("b", 2), sp("c", 2)];
        for (i, s) in two.iter_mut().enumerate() {
            s.cluster_ip = Ipv4Addr::new(10, 96, 0, 1 + i as u8);
        }
        let chunks = nft_full_chunks(&two, 2);
        assert_eq!(chunks.len(), 2);
        assert!(chunks[0].starts_with("add table ip kube-proxy"));
        assert!(!chunks[1].contains("add table"));
        assert_eq!(chunks.concat(), nft_full(&two));
    }
}
