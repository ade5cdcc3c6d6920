//! Between the model's types and the maps' byte layouts. Addresses and
//! ports are kept in network byte order in the maps (see lb-common).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lb_common::{SERVICE_NAME_LEN, ServiceName};

/// An IPv4 address as the socket maps store it: its bytes, the bytes of
/// `user_ip4`.
pub fn ip4_to_map(ip: Ipv4Addr) -> [u8; 4] {
    ip.octets()
}

pub fn ip4_from_map(v: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(v)
}

/// An IPv6 address as the socket maps store it: its bytes, those of
/// `user_ip6`.
pub fn ip6_to_map(ip: Ipv6Addr) -> [u8; 16] {
    ip.octets()
}

pub fn ip6_from_map(v: [u8; 16]) -> Ipv6Addr {
    Ipv6Addr::from(v)
}

pub fn port_to_map(port: u16) -> u16 {
    port.to_be()
}

pub fn port_from_map(port: u16) -> u16 {
    u16::from_be(port)
}

pub fn ip_from_map4(v: [u8; 4]) -> IpAddr {
    IpAddr::V4(ip4_from_map(v))
}

pub fn ip_from_map6(v: [u8; 16]) -> IpAddr {
    IpAddr::V6(ip6_from_map(v))
}

pub fn name_to_map(name: &str) -> ServiceName {
    let mut out = ServiceName::default();
    // Cut at a char boundary so that the stored prefix stays valid UTF-8.
    let mut len = name.len().min(SERVICE_NAME_LEN);
    while !name.is_char_boundary(len) {
        len -= 1;
    }
    out.bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
    out.len = len as u32;
    out
}

pub fn name_from_map(name: &ServiceName) -> String {
    let len = (name.len as usize).min(SERVICE_NAME_LEN);
    String::from_utf8_lossy(&name.bytes[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_is_stored_in_network_order() {
        let v = ip4_to_map(Ipv4Addr::new(10, 96, 0, 1));
        // user_ip4 holds 10.96.0.1 as the big-endian value 0x0a600001.
        assert_eq!(u32::from_ne_bytes(v), 0x0a60_0001_u32.to_be());
        assert_eq!(ip4_from_map(v), Ipv4Addr::new(10, 96, 0, 1));
    }

    #[test]
    fn ipv6_round_trips_word_by_word() {
        let ip: Ipv6Addr = "fd00:96::1".parse().unwrap();
        let v = ip6_to_map(ip);
        assert_eq!(v[..4], [0xfd, 0x00, 0x00, 0x96]);
        assert_eq!(ip6_from_map(v), ip);
    }

    #[test]
    fn port_is_big_endian_in_memory() {
        assert_eq!(port_to_map(80).to_ne_bytes(), [0, 80]);
        assert_eq!(port_from_map(port_to_map(8443)), 8443);
    }

    #[test]
    fn names_are_cut_on_char_boundaries() {
        let long = "é".repeat(200);
        let stored = name_to_map(&long);
        assert!(stored.len as usize <= SERVICE_NAME_LEN);
        assert!(name_from_map(&stored).chars().all(|c| c == 'é'));
        assert_eq!(
            name_from_map(&name_to_map("ns/a:http/TCP")),
            "ns/a:http/TCP"
        );
    }
}
