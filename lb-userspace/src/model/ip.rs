//! Lenient IP and CIDR parsing, as Kubernetes' `ParseIPSloppy` and
//! `ParseCIDRSloppy` (k8s.io/utils/net) do it.
//!
//! Objects created before Go 1.17 tightened `net.ParseIP` may still hold IPv4
//! octets with leading zeros (`172.30.0.041`), and kube-proxy keeps serving
//! them, reading every octet as decimal (never octal). Rust's parser rejects
//! such octets, so IPv4 is parsed by hand here; IPv6 goes through the
//! standard parser, with the same leniency for an embedded IPv4 tail.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An address family. Here, with the addresses, rather than in `types`,
/// so that this module is a leaf of the model (`types` uses [`Cidr`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IpFamily {
    V4,
    V6,
}

impl IpFamily {
    pub fn of(ip: &IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::V4,
            IpAddr::V6(_) => IpFamily::V6,
        }
    }
}

/// Parses an IP address the way kube-proxy does. Surrounding whitespace is an
/// error (as in Go). An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is
/// returned as IPv4, because Kubernetes classifies such an address as IPv4
/// (`net.IP.To4() != nil`).
pub fn parse_ip_lenient(s: &str) -> Option<IpAddr> {
    parse_addr(s).map(|ip| ip.to_canonical())
}

/// A CIDR block with its host bits cleared (`203.0.113.7/24` is
/// `203.0.113.0/24`), as Go's `ParseCIDR` returns the network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix_len: u8,
}

impl Cidr {
    pub fn family(&self) -> IpFamily {
        IpFamily::of(&self.network)
    }

    /// Whether `ip` lies in this block; an address of the other family never
    /// does.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(*ip, self.prefix_len) == self.network
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Parses a CIDR leniently: whitespace around it is trimmed (users paste
/// `loadBalancerSourceRanges` with stray spaces and kube-proxy accepts them),
/// IPv4 octets and the prefix length may carry leading zeros
/// (`203.0.113.000/025` is `203.0.113.0/25`). An IPv4-mapped IPv6 block with
/// a prefix of at least 96 bits is returned as the IPv4 block it denotes.
pub fn parse_cidr_lenient(s: &str) -> Option<Cidr> {
    let (addr, prefix) = s.trim().split_once('/')?;
    let ip = parse_addr(addr)?;
    let bits: u8 = match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let prefix_len = u8::try_from(parse_decimal(prefix, u32::from(bits))?).ok()?;
    let (ip, prefix_len) = match ip {
        IpAddr::V6(v6) if prefix_len >= 96 => match v6.to_ipv4_mapped() {
            Some(v4) => (IpAddr::V4(v4), prefix_len - 96),
            None => (ip, prefix_len),
        },
        _ => (ip, prefix_len),
    };
    Some(Cidr {
        network: mask(ip, prefix_len),
        prefix_len,
    })
}

fn parse_addr(s: &str) -> Option<IpAddr> {
    if s.contains(':') {
        parse_ipv6(s).map(IpAddr::V6)
    } else {
        parse_ipv4(s).map(IpAddr::V4)
    }
}

/// Four dot-separated decimal octets, each any number of digits (leading
/// zeros allowed) with a value of at most 255.
fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        *octet = u8::try_from(parse_decimal(parts.next()?, 255)?).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(octets))
}

fn parse_ipv6(s: &str) -> Option<Ipv6Addr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    // Only an embedded IPv4 tail ("::ffff:010.0.0.1") can be the reason the
    // standard parser refused; normalise it and try once more.
    let (head, tail) = s.rsplit_once(':')?;
    if !tail.contains('.') {
        return None;
    }
    let v4 = parse_ipv4(tail)?;
    format!("{head}:{v4}").parse().ok()
}

/// One or more ASCII digits whose value is at most `max` (Go's `dtoi`, which
/// accepts any number of leading zeros).
fn parse_decimal(s: &str, max: u32) -> Option<u32> {
    if s.is_empty() {
        return None;
    }
    let mut n: u32 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(b - b'0');
        if n > max {
            return None;
        }
    }
    Some(n)
}

/// Clears the host bits of `ip` beyond `prefix_len`.
fn mask(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_ip_lenient_table() {
        let cases: &[(&str, Option<&str>)] = &[
            // Plain forms.
            ("10.0.0.1", Some("10.0.0.1")),
            ("0.0.0.0", Some("0.0.0.0")),
            ("255.255.255.255", Some("255.255.255.255")),
            ("fd00::1", Some("fd00::1")),
            ("::1", Some("::1")),
            ("2001:db8::10:1", Some("2001:db8::10:1")),
            // Leading zeros are decimal, as in the reference tables.
            ("172.30.0.041", Some("172.30.0.41")),
            ("1.2.3.004", Some("1.2.3.4")),
            ("010.000.000.001", Some("10.0.0.1")),
            ("0000000001.2.3.4", Some("1.2.3.4")),
            // IPv4-mapped IPv6 is IPv4 for Kubernetes.
            ("::ffff:10.1.2.3", Some("10.1.2.3")),
            ("::ffff:010.001.002.003", Some("10.1.2.3")),
            // IPv4-compatible (not mapped) stays IPv6.
            ("::10.1.2.3", Some("::a01:203")),
            // Rejected.
            ("", None),
            ("None", None),
            ("1.2.3", None),
            ("1.2.3.4.5", None),
            ("256.1.1.1", None),
            ("1.2.3.0256", None),
            ("1..2.3", None),
            ("1.2.3.", None),
            (".1.2.3", None),
            ("a.b.c.d", None),
            ("+1.2.3.4", None),
            ("1.2.3.-4", None),
            (" 1.2.3.4", None),
            ("1.2.3.4 ", None),
            ("1.2.3.4/32", None),
            ("fe80::1%eth0", None),
            ("fd00::g", None),
            ("::ffff:1.2.3", None),
            (":::", None),
            ("1:2:3:4:5:6:7:8:9", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_ip_lenient(input),
                want.map(ip),
                "parse_ip_lenient({input:?})"
            );
        }
    }

    #[test]
    fn parse_cidr_lenient_table() {
        let cases: &[(&str, Option<(&str, u8)>)] = &[
            ("10.0.0.0/8", Some(("10.0.0.0", 8))),
            // Host bits are cleared, as Go's ParseCIDR returns the network.
            ("10.1.2.3/8", Some(("10.0.0.0", 8))),
            ("10.1.2.3/32", Some(("10.1.2.3", 32))),
            ("0.0.0.0/0", Some(("0.0.0.0", 0))),
            // Leading zeros in octets and in the prefix (reference table).
            ("203.0.113.000/025", Some(("203.0.113.0", 25))),
            // Whitespace around a source range is trimmed.
            ("  192.168.0.0/16 ", Some(("192.168.0.0", 16))),
            ("\t10.0.0.0/24\n", Some(("10.0.0.0", 24))),
            ("fd00::/64", Some(("fd00::", 64))),
            ("fd00::1:2/112", Some(("fd00::1:0", 112))),
            ("::/0", Some(("::", 0))),
            ("::ffff:10.0.0.0/104", Some(("10.0.0.0", 8))),
            // Rejected.
            ("10.0.0.0", None),
            ("10.0.0.0/", None),
            ("10.0.0.0/33", None),
            ("10.0.0.0/-1", None),
            ("10.0.0.0/8/8", None),
            ("fd00::/129", None),
            ("10.0.0.0 /8", None),
            ("/8", None),
            ("", None),
        ];
        for (input, want) in cases {
            let got = parse_cidr_lenient(input).map(|c| (c.network, c.prefix_len));
            assert_eq!(
                got,
                want.map(|(n, l)| (ip(n), l)),
                "parse_cidr_lenient({input:?})"
            );
        }
    }

    #[test]
    fn cidr_contains_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.1", false),
            ("203.0.113.000/025", "203.0.113.127", true),
            ("203.0.113.000/025", "203.0.113.128", false),
            ("0.0.0.0/0", "1.2.3.4", true),
            // The other family never matches, even for /0.
            ("0.0.0.0/0", "fd00::1", false),
            ("::/0", "1.2.3.4", false),
            ("fd00::/64", "fd00::abcd", true),
            ("fd00::/64", "fd00:0:0:1::1", false),
        ];
        for (cidr, addr, want) in cases {
            let c = parse_cidr_lenient(cidr).unwrap();
            assert_eq!(c.contains(&ip(addr)), *want, "{cidr} contains {addr}");
        }
        assert_eq!(
            parse_cidr_lenient("fd00::/8").unwrap().family(),
            IpFamily::V6
        );
        assert_eq!(
            parse_cidr_lenient("10.0.0.0/8").unwrap().family(),
            IpFamily::V4
        );
    }
}
