//! End-to-end tests of the socket-level datapath: what a client in the node
//! namespace (inside the cgroup Ferry is attached to) sees when it talks to
//! Service frontends. Privileged: run as root with
//! `FERRY_BIN=target/release/ferry cargo test --release -p tests --test socket_lb -- --test-threads=1`.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use anyhow::Result;
use socket2::{Domain, Protocol, Socket, Type};
use tests::client::parse_reply;
use tests::fixture::*;
use tests::*;

const WEB: &str = "10.96.0.10";
const WEB6: &str = "fd00:96::a";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

/// TCP 80 and UDP 80 → 8080.
fn web_ports() -> [Port; 2] {
    [tcp("http", 80, PORT), udp("udp", 80, PORT)]
}

/// 3 backends with servers on 8080; Service default/web on 10.96.0.10
/// (TCP and UDP 80 → 8080) with all three as endpoints; Ferry running.
fn web_env() -> Result<Env> {
    let mut env = Env::new(3, &[PORT])?;
    env.write(
        "web.yaml",
        &service_with("web", WEB, &web_ports(), &env.first(3)),
    )?;
    env.start(&["10.96.0.10:80/TCP", "10.96.0.10:80/UDP"])?;
    Ok(env)
}

#[test]
fn tcp_clusterip_reaches_every_backend_with_client_address_and_frontend_peer() -> Result<()> {
    require_root();
    let _serial = serial();
    let env = web_env()?;
    let fe = sa("10.96.0.10:80");
    let replies = requests(env.node(), 60, "TCP to the ClusterIP", || tcp_request(fe))?;
    for r in &replies {
        assert_eq!(
            r.peer,
            Some(fe),
            "getpeername must show the frontend: {r:?}"
        );
        assert_eq!(
            r.seen_peer.ip(),
            IpAddr::from(NODE_V4),
            "the backend must see the node's address: {r:?}"
        );
        assert_eq!(
            r.seen_peer, r.local,
            "the backend must see the client socket's own address (no NAT): {r:?}"
        );
    }
    assert_eq!(
        servers_of(&replies),
        names(&["b0", "b1", "b2"]),
        "every backend answers at least once: {:?}",
        per_server(&replies)
    );

    // Hairpin: a backend calling its own Service reaches every backend,
    // itself included, and is seen with its own address.
    let b0 = env.backend("b0");
    let replies = requests(&b0.ns, 45, "TCP from b0", || tcp_request(fe))?;
    for r in &replies {
        assert_eq!(r.peer, Some(fe), "{r:?}");
        assert_eq!(r.seen_peer.ip(), IpAddr::from(b0.v4), "{r:?}");
    }
    assert_eq!(
        servers_of(&replies),
        names(&["b0", "b1", "b2"]),
        "{:?}",
        per_server(&replies)
    );
    Ok(())
}

#[test]
fn udp_clusterip_connected_and_unconnected_replies_come_from_the_frontend() -> Result<()> {
    require_root();
    let _serial = serial();
    let env = web_env()?;
    let fe = sa("10.96.0.10:80");

    // Connected: connect() translates, getpeername and recvfrom show the
    // frontend. One socket per request.
    let connected = requests(env.node(), 60, "connected UDP", || {
        udp_connected_request(fe)
    })?;
    for r in &connected {
        assert_eq!(r.peer, Some(fe), "getpeername: {r:?}");
        assert_eq!(r.from, Some(fe), "recvfrom source: {r:?}");
        assert_eq!(r.seen_peer, r.local, "no NAT on the way: {r:?}");
        assert_eq!(r.seen_peer.ip(), IpAddr::from(NODE_V4), "{r:?}");
    }
    assert_eq!(
        servers_of(&connected),
        names(&["b0", "b1", "b2"]),
        "{:?}",
        per_server(&connected)
    );

    // Unconnected: sendto() translates per datagram, recvfrom shows the
    // frontend as the reply's source.
    let unconnected = requests(env.node(), 60, "unconnected UDP", || {
        udp_unconnected_request(fe)
    })?;
    for r in &unconnected {
        assert_eq!(r.from, Some(fe), "recvfrom source: {r:?}");
        assert_eq!(r.seen_peer.ip(), IpAddr::from(NODE_V4), "{r:?}");
        assert_eq!(r.seen_peer.port(), r.local.port(), "{r:?}");
    }
    assert_eq!(
        servers_of(&unconnected),
        names(&["b0", "b1", "b2"]),
        "{:?}",
        per_server(&unconnected)
    );

    // Several datagrams on one unconnected socket: every reply shows the
    // frontend, and the socket's flow stays on one backend (as a conntrack
    // entry would keep it).
    let servers = env.node().run(|| -> io::Result<Vec<String>> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 512];
        for _ in 0..5 {
            s.send_to(b"who\n", fe)?;
            let (n, from) = s.recv_from(&mut buf)?;
            assert_eq!(from, fe, "recvfrom source on a reused socket");
            let (server, _) = parse_reply(&String::from_utf8_lossy(&buf[..n]))?;
            seen.push(server);
        }
        Ok(seen)
    })?;
    assert!(
        servers.iter().all(|s| *s == servers[0]),
        "one socket's datagrams went to several backends: {servers:?}"
    );
    Ok(())
}

/// One TCP request over an AF_INET6 socket that accepts IPv4 (dual-stack),
/// to `target` (e.g. `[::ffff:10.96.0.10]:80`). Returns (server, the peer
/// the server saw, getpeername of the client socket).
fn dual_stack_tcp(target: SocketAddr) -> io::Result<(String, SocketAddr, SocketAddr)> {
    let s = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    s.set_only_v6(false)?;
    s.set_linger(Some(Duration::ZERO))?;
    s.connect_timeout(&target.into(), Duration::from_secs(2))?;
    let mut stream: TcpStream = s.into();
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"who\n")?;
    let mut text = Vec::new();
    let mut buf = [0u8; 512];
    while !text.contains(&b'\n') && text.len() < 4096 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed early"));
        }
        text.extend_from_slice(&buf[..n]);
    }
    let (server, seen) = parse_reply(&String::from_utf8_lossy(&text))?;
    Ok((server, seen, stream.peer_addr()?))
}

/// One datagram from an unconnected dual-stack AF_INET6 socket. Returns
/// (server, the peer the server saw, the reply's source).
fn dual_stack_udp(target: SocketAddr) -> io::Result<(String, SocketAddr, SocketAddr)> {
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(false)?;
    s.bind(&sa("[::]:0").into())?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.send_to(b"who\n", target)?;
    let mut buf = [0u8; 512];
    let (n, from) = s.recv_from(&mut buf)?;
    let (server, seen) = parse_reply(&String::from_utf8_lossy(&buf[..n]))?;
    Ok((server, seen, from))
}

#[test]
fn ipv6_clusterip_and_v4_mapped_addresses_on_dual_stack_sockets() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(3, &[PORT])?;
    let mut objects = service_with("web", WEB, &web_ports(), &env.first(3));
    objects.extend(service_with("web6", WEB6, &web_ports(), &env.first(3)));
    env.write("web.yaml", &objects)?;
    let ferry = env.start(&[
        "10.96.0.10:80/TCP",
        "[fd00:96::a]:80/TCP",
        "[fd00:96::a]:80/UDP",
    ])?;
    let v6 = view_of(ferry, "[fd00:96::a]:80/TCP")?;
    assert_eq!(
        backend_addrs(&v6),
        expected_addrs(&env.first(3), WEB6, PORT),
        "{v6}"
    );

    let fe6 = sa("[fd00:96::a]:80");
    let all = names(&["b0", "b1", "b2"]);
    let replies = requests(env.node(), 45, "TCP to the v6 ClusterIP", || {
        tcp_request(fe6)
    })?;
    for r in &replies {
        assert_eq!(r.peer, Some(fe6), "getpeername: {r:?}");
        assert_eq!(r.seen_peer.ip(), IpAddr::from(NODE_V6), "{r:?}");
        assert_eq!(r.seen_peer, r.local, "{r:?}");
    }
    assert_eq!(servers_of(&replies), all, "{:?}", per_server(&replies));

    let connected = requests(env.node(), 45, "connected UDP v6", || {
        udp_connected_request(fe6)
    })?;
    let unconnected = requests(env.node(), 45, "unconnected UDP v6", || {
        udp_unconnected_request(fe6)
    })?;
    for r in &connected {
        assert_eq!((r.peer, r.from), (Some(fe6), Some(fe6)), "{r:?}");
        assert_eq!(r.seen_peer.ip(), IpAddr::from(NODE_V6), "{r:?}");
    }
    for r in &unconnected {
        assert_eq!(r.from, Some(fe6), "{r:?}");
        assert_eq!(r.seen_peer.ip(), IpAddr::from(NODE_V6), "{r:?}");
    }
    assert_eq!(servers_of(&connected), all, "{:?}", per_server(&connected));
    assert_eq!(
        servers_of(&unconnected),
        all,
        "{:?}",
        per_server(&unconnected)
    );

    // A dual-stack AF_INET6 socket reaching the IPv4 ClusterIP as
    // ::ffff:10.96.0.10: translated through the IPv4 maps, the backend sees
    // the node's IPv4 address, the client sees the mapped frontend.
    let mapped = SocketAddr::V6(SocketAddrV6::new(
        Ipv4Addr::new(10, 96, 0, 10).to_ipv6_mapped(),
        80,
        0,
        0,
    ));
    let tcp_replies = env.node().run(|| {
        (0..45)
            .map(|_| dual_stack_tcp(mapped))
            .collect::<io::Result<Vec<_>>>()
    })?;
    for (server, seen, peer) in &tcp_replies {
        assert_eq!(
            *peer, mapped,
            "getpeername of the dual-stack socket ({server})"
        );
        assert_eq!(seen.ip(), IpAddr::from(NODE_V4), "({server})");
    }
    let answered: std::collections::BTreeSet<String> =
        tcp_replies.iter().map(|(s, _, _)| s.clone()).collect();
    assert_eq!(answered, all, "v4-mapped TCP: {tcp_replies:?}");

    let (server, seen, from) = env.node().run(|| dual_stack_udp(mapped))?;
    assert!(all.contains(&server), "{server}");
    assert_eq!(from, mapped, "recvfrom source on the dual-stack socket");
    assert_eq!(seen.ip(), IpAddr::from(NODE_V4));

    // Refusals through the IPv6 maps and through v4-mapped addresses.
    let mapped_81 = SocketAddr::new(mapped.ip(), 81);
    for target in [sa("[fd00:96::a]:81"), mapped_81] {
        let e = env
            .node()
            .run(|| dual_stack_tcp(target))
            .expect_err("must fail");
        assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{target}: {e}");
    }
    Ok(())
}

#[test]
fn multi_port_service_with_named_target_port_resolved_per_slice() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(2, &[])?;
    // Servers named after backend and port; each backend also listens on
    // the *other* backend's "web" port, so a wrong port is answered (by a
    // wrong name) rather than refused.
    let (b0, b1) = (env.backend("b0"), env.backend("b1"));
    let (b0_ns, b1_ns) = (&b0.ns, &b1.ns);
    let (b0_addr, b1_addr) = (b0.v4, b1.v4);
    let mut servers = ServerSet::default();
    for port in [8080, 8081, 8443] {
        servers.add_tcp(
            b0_ns,
            &format!("b0:{port}"),
            SocketAddr::new(b0_addr.into(), port),
        )?;
        servers.add_tcp(
            b1_ns,
            &format!("b1:{port}"),
            SocketAddr::new(b1_addr.into(), port),
        )?;
    }
    env.servers.tcp.append(&mut servers.tcp);

    let http_named = ServicePort::tcp(80).name("http").target_named("web");
    let svc = Service::new("default", "multi")
        .cluster_ip("10.96.0.40")
        .port(http_named)
        .port(tcp("https", 443, 8443).service_port());
    // The "web" container port is 8080 on b0's pod and 8081 on b1's: the
    // EndpointSlice controller puts them in two slices, each port named
    // after the service port.
    let slice_a = slice(
        "multi",
        "multi-a",
        AddressType::IPv4,
        &[tcp("http", 80, 8080), tcp("https", 443, 8443)],
        [local(b0_addr)],
    );
    let slice_b = slice(
        "multi",
        "multi-b",
        AddressType::IPv4,
        &[tcp("http", 80, 8081), tcp("https", 443, 8443)],
        [local(b1_addr)],
    );
    env.write("multi.yaml", &[svc.to_value(), slice_a, slice_b])?;
    let ferry = env.start(&["10.96.0.40:80/TCP", "10.96.0.40:443/TCP"])?;
    let http = view_of(ferry, "10.96.0.40:80/TCP")?;
    assert_eq!(
        backend_addrs(&http),
        ["10.244.0.10:8080", "10.244.0.11:8081"],
        "{http}"
    );

    let fe_http = sa("10.96.0.40:80");
    let fe_https = sa("10.96.0.40:443");
    let r = requests(env.node(), 40, "http", || tcp_request(fe_http))?;
    assert_eq!(
        servers_of(&r),
        names(&["b0:8080", "b1:8081"]),
        "{:?}",
        per_server(&r)
    );
    assert!(r.iter().all(|r| r.peer == Some(fe_http)));
    let r = requests(env.node(), 40, "https", || tcp_request(fe_https))?;
    assert_eq!(
        servers_of(&r),
        names(&["b0:8443", "b1:8443"]),
        "{:?}",
        per_server(&r)
    );
    assert!(r.iter().all(|r| r.peer == Some(fe_https)));
    Ok(())
}

#[test]
fn tcp_and_udp_on_the_same_port_number_are_independent() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(2, &[])?;
    // Every backend serves TCP and UDP on both 53 and 5353, with names
    // saying which: a mix-up is answered by a wrong name.
    let mut servers = ServerSet::default();
    for b in env.first(2) {
        for port in [53, 5353] {
            let addr = SocketAddr::new(b.v4.into(), port);
            servers.add_tcp(&b.ns, &format!("{}:tcp{port}", b.name), addr)?;
            servers.add_udp(&b.ns, &format!("{}:udp{port}", b.name), addr)?;
        }
    }
    env.servers.tcp.append(&mut servers.tcp);
    env.servers.udp.append(&mut servers.udp);
    let ports = [tcp("dns-tcp", 53, 5353), udp("dns", 53, 53)];
    env.write(
        "dns.yaml",
        &service_with("dns", "10.96.0.53", &ports, &env.first(2)),
    )?;
    let ferry = env.start(&["10.96.0.53:53/TCP", "10.96.0.53:53/UDP"])?;
    let (t, u) = (
        view_of(ferry, "10.96.0.53:53/TCP")?,
        view_of(ferry, "10.96.0.53:53/UDP")?,
    );
    assert_ne!(
        t["service_id"], u["service_id"],
        "two backend sets: {t} {u}"
    );

    let fe = sa("10.96.0.53:53");
    let r = requests(env.node(), 30, "TCP 53", || tcp_request(fe))?;
    assert_eq!(
        servers_of(&r),
        names(&["b0:tcp5353", "b1:tcp5353"]),
        "{:?}",
        per_server(&r)
    );
    let r = requests(env.node(), 30, "connected UDP 53", || {
        udp_connected_request(fe)
    })?;
    assert_eq!(
        servers_of(&r),
        names(&["b0:udp53", "b1:udp53"]),
        "{:?}",
        per_server(&r)
    );
    assert!(r.iter().all(|r| r.from == Some(fe)), "{r:?}");
    let r = requests(env.node(), 30, "unconnected UDP 53", || {
        udp_unconnected_request(fe)
    })?;
    assert_eq!(
        servers_of(&r),
        names(&["b0:udp53", "b1:udp53"]),
        "{:?}",
        per_server(&r)
    );
    assert!(r.iter().all(|r| r.from == Some(fe)), "{r:?}");
    Ok(())
}

#[test]
fn refusals_and_addresses_that_are_no_service() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(1, &[PORT])?;
    let mut objects = service_with("web", WEB, &[tcp("http", 80, PORT)], &env.first(1));
    // No EndpointSlice at all.
    objects.push(service("empty", "10.96.0.20", &web_ports()).to_value());
    // A slice without endpoints.
    objects.push(service("drained", "10.96.0.21", &[tcp("http", 80, PORT)]).to_value());
    objects.push(slice(
        "drained",
        "drained-1",
        AddressType::IPv4,
        &[tcp("http", 80, PORT)],
        [],
    ));
    env.write("svc.yaml", &objects)?;
    env.start(&[
        "10.96.0.10:80/TCP",
        "10.96.0.20:80/TCP",
        "10.96.0.20:80/UDP",
        "10.96.0.21:80/TCP",
    ])?;
    let node = env.node();

    // The Service itself works.
    let r = node.run(|| tcp_request(sa("10.96.0.10:80")))?;
    assert_eq!(r.server, "b0");

    for _ in 0..3 {
        // No endpoints: refused at connect (not a timeout).
        for fe in ["10.96.0.20:80", "10.96.0.21:80"] {
            let e = node.run(|| tcp_connect_err(sa(fe))).expect("must fail");
            assert_eq!(e.errno, Some(libc::ECONNREFUSED), "TCP {fe}: {e}");
        }
        let fe = sa("10.96.0.20:80");
        assert_eq!(
            errno_of(node.run(|| udp_connected_request(fe))),
            Some(libc::ECONNREFUSED),
            "connected UDP to a Service without endpoints"
        );
        assert_eq!(
            errno_of(node.run(|| udp_unconnected_request(fe))),
            Some(libc::ECONNREFUSED),
            "sendto a Service without endpoints"
        );

        // A known ClusterIP on a port the Service does not define.
        let e = node
            .run(|| tcp_connect_err(sa("10.96.0.10:81")))
            .expect("must fail");
        assert_eq!(e.errno, Some(libc::ECONNREFUSED), "undefined port: {e}");

        // UDP to the TCP-only port.
        let fe = sa("10.96.0.10:80");
        assert_eq!(
            errno_of(node.run(|| udp_unconnected_request(fe))),
            Some(libc::ECONNREFUSED),
            "sendto a TCP-only port"
        );
        assert_eq!(
            errno_of(node.run(|| udp_connected_request(fe))),
            Some(libc::ECONNREFUSED),
            "connect(UDP) to a TCP-only port"
        );

        // Not a Service: untouched by Ferry, so the kernel answers (no
        // route in this namespace).
        for target in ["10.96.0.99:80", "10.96.1.10:80", "[fd00:96::99]:80"] {
            let e = node.run(|| tcp_connect_err(sa(target))).expect("must fail");
            assert_eq!(e.errno, Some(libc::ENETUNREACH), "TCP {target}: {e}");
            assert_eq!(
                errno_of(node.run(|| udp_unconnected_request(sa(target)))),
                Some(libc::ENETUNREACH),
                "UDP {target}"
            );
        }
    }
    Ok(())
}

#[test]
fn terminating_endpoints_are_a_fallback_only() -> Result<()> {
    require_root();
    let _serial = serial();
    // Each Service has its own target port, so no backend (ip:port) is in
    // two Services (see `an_endpoint_in_two_services_shows_each_services_state`).
    let mut env = Env::new(2, &[8080, 8081, 8082])?;
    let (b0, b1) = (env.backend("b0").v4, env.backend("b1").v4);
    let terminating = |ip| local(ip).ready(false).serving(true).terminating(true);
    let mut objects = Vec::new();
    for (name, ip, target, endpoints) in [
        (
            "all-terminating",
            "10.96.0.30",
            8080,
            vec![terminating(b0), terminating(b1)],
        ),
        (
            "one-ready",
            "10.96.0.31",
            8081,
            vec![local(b0), terminating(b1)],
        ),
        (
            "not-serving",
            "10.96.0.32",
            8082,
            vec![
                local(b0).ready(false).serving(false).terminating(true),
                local(b1).ready(false).serving(false).terminating(false),
            ],
        ),
    ] {
        let port = [tcp("http", 80, target)];
        objects.push(service(name, ip, &port).to_value());
        objects.push(slice(
            name,
            &format!("{name}-1"),
            AddressType::IPv4,
            &port,
            endpoints,
        ));
    }
    env.write("svc.yaml", &objects)?;
    let ferry = env.start(&[
        "10.96.0.30:80/TCP",
        "10.96.0.31:80/TCP",
        "10.96.0.32:80/TCP",
    ])?;
    let all_terminating = view_of(ferry, "10.96.0.30:80/TCP")?;
    assert_eq!(
        backend_states(&all_terminating),
        [
            ("10.244.0.10:8080".to_string(), "terminating".to_string()),
            ("10.244.0.11:8080".to_string(), "terminating".to_string())
        ],
        "{all_terminating}"
    );
    let one_ready = view_of(ferry, "10.96.0.31:80/TCP")?;
    assert_eq!(
        backend_states(&one_ready),
        [("10.244.0.10:8081".to_string(), "active".to_string())],
        "{one_ready}"
    );
    let not_serving = view_of(ferry, "10.96.0.32:80/TCP")?;
    assert_eq!(backend_states(&not_serving), [], "{not_serving}");

    let node = env.node();
    let r = requests(node, 40, "all terminating", || {
        tcp_request(sa("10.96.0.30:80"))
    })?;
    assert_eq!(
        servers_of(&r),
        names(&["b0", "b1"]),
        "serving+terminating endpoints get traffic when nothing is ready: {:?}",
        per_server(&r)
    );
    let r = requests(node, 40, "one ready", || tcp_request(sa("10.96.0.31:80")))?;
    assert_eq!(
        per_server(&r).into_keys().collect::<Vec<_>>(),
        ["b0"],
        "only the ready endpoint gets traffic"
    );
    let e = node
        .run(|| tcp_connect_err(sa("10.96.0.32:80")))
        .expect("must fail");
    assert_eq!(e.errno, Some(libc::ECONNREFUSED), "not serving: {e}");
    Ok(())
}

/// (address, state) of every backend of a `ferry services` entry.
fn backend_states(view: &serde_json::Value) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = view["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    (
                        b["address"].as_str().unwrap_or("?").to_string(),
                        b["state"].as_str().unwrap_or("?").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// One endpoint (same ip:port) ready in one Service and serving+terminating
/// in another, as with a Service that publishes not-ready addresses next to
/// one that does not. Traffic is right for both; `ferry services` must show
/// each Service's own view of the backend, and a resync with nothing
/// changed must write nothing.
#[test]
fn an_endpoint_in_two_services_shows_each_services_state() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(1, &[PORT])?;
    let b0 = env.backend("b0").v4;
    let port = [tcp("http", 80, PORT)];
    let mut objects = Vec::new();
    for (name, ip, endpoint) in [
        ("ready", "10.96.0.33", local(b0)),
        (
            "leaving",
            "10.96.0.34",
            local(b0).ready(false).serving(true).terminating(true),
        ),
    ] {
        objects.push(service(name, ip, &port).to_value());
        objects.push(slice(
            name,
            &format!("{name}-1"),
            AddressType::IPv4,
            &port,
            [endpoint],
        ));
    }
    env.write("svc.yaml", &objects)?;
    env.start(&["10.96.0.33:80/TCP", "10.96.0.34:80/TCP"])?;
    for fe in ["10.96.0.33:80", "10.96.0.34:80"] {
        let r = env.node().run(|| tcp_request(sa(fe)))?;
        assert_eq!(r.server, "b0", "{fe}");
    }
    let ferry = env.ferry.as_ref().expect("started");
    let ready = view_of(ferry, "10.96.0.33:80/TCP")?;
    let leaving = view_of(ferry, "10.96.0.34:80/TCP")?;
    // A resync of the same objects (a new file without objects).
    let passes = |log: &str| log.matches("synced").count();
    let before = passes(&ferry.log());
    env.manifests.write("empty.yaml", "# nothing here\n")?;
    let log = wait_log(ferry, "a resync", |log| passes(log) > before)?;
    let last = log
        .lines()
        .rev()
        .find(|l| l.contains("synced"))
        .expect("seen")
        .to_string();
    assert_eq!(
        (backend_states(&ready), backend_states(&leaving)),
        (
            vec![("10.244.0.10:8080".to_string(), "active".to_string())],
            vec![("10.244.0.10:8080".to_string(), "terminating".to_string())]
        ),
        "each Service's own state of the shared backend:\n{ready}\n{leaving}"
    );
    assert!(
        last.contains("changes=0"),
        "a resync with nothing changed wrote to the maps: {last}"
    );
    Ok(())
}

#[test]
fn nodeport_from_the_node_on_its_address_and_loopback() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(3, &[PORT])?;
    let mut objects = service_with("np", "10.96.0.60", &web_ports(), &env.first(3));
    objects[0] = Service::new("default", "np")
        .type_("NodePort")
        .cluster_ip("10.96.0.60")
        .port(tcp("http", 80, PORT).service_port().node_port(30080))
        .port(udp("udp", 80, PORT).service_port().node_port(30080))
        .to_value();
    env.write("np.yaml", &objects)?;
    env.start(&[
        "10.244.0.1:30080/TCP",
        "127.0.0.1:30080/TCP",
        "10.244.0.1:30080/UDP",
        "127.0.0.1:30080/UDP",
    ])?;
    let node = env.node();
    let all = names(&["b0", "b1", "b2"]);
    for target in ["10.244.0.1:30080", "127.0.0.1:30080"] {
        let fe = sa(target);
        let r = requests(node, 45, target, || tcp_request(fe))?;
        assert_eq!(servers_of(&r), all, "TCP {target}: {:?}", per_server(&r));
        for reply in &r {
            assert_eq!(reply.peer, Some(fe), "getpeername: {reply:?}");
            assert_eq!(reply.seen_peer, reply.local, "{reply:?}");
        }
        let r = requests(node, 45, target, || udp_unconnected_request(fe))?;
        assert_eq!(servers_of(&r), all, "UDP {target}: {:?}", per_server(&r));
        assert!(r.iter().all(|r| r.from == Some(fe)), "{r:?}");
    }

    // The NodePort is Ferry's on the node: a bind there fails (post_bind),
    // while other ports and other namespaces are unaffected.
    let bind_errno = |addr: &str| {
        node.run(|| match TcpListener::bind(sa(addr)) {
            Ok(_) => None,
            Err(e) => e.raw_os_error(),
        })
    };
    assert_eq!(bind_errno("0.0.0.0:30080"), Some(libc::EADDRINUSE));
    assert_eq!(bind_errno("[::]:30080"), Some(libc::EADDRINUSE));
    let udp_bind = node.run(|| UdpSocket::bind(sa("10.244.0.1:30080")).map(drop));
    assert_eq!(
        udp_bind.map_err(|e| e.raw_os_error()),
        Err(Some(libc::EADDRINUSE))
    );
    assert_eq!(bind_errno("0.0.0.0:30081"), None);
    let b0 = env.backend("b0");
    let in_backend = b0
        .ns
        .run(|| TcpListener::bind(sa("0.0.0.0:30080")).map(drop));
    assert!(in_backend.is_ok(), "{in_backend:?}");
    Ok(())
}

#[test]
fn counters_count_translations_and_refusals() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(3, &[PORT])?;
    let mut objects = service_with(
        "count",
        "10.96.0.70",
        &[tcp("http", 80, PORT)],
        &env.first(3),
    );
    objects.push(service("empty", "10.96.0.71", &[tcp("http", 80, PORT)]).to_value());
    env.write("svc.yaml", &objects)?;
    env.start(&["10.96.0.70:80/TCP", "10.96.0.71:80/TCP"])?;
    const N: u64 = 25;
    const M: u64 = 7;
    let node = env.node();
    requests(node, N as usize, "counted", || {
        tcp_request(sa("10.96.0.70:80"))
    })?;
    for target in ["10.96.0.70:81", "10.96.0.71:80"] {
        for _ in 0..M {
            let e = node.run(|| tcp_connect_err(sa(target))).expect("must fail");
            assert_eq!(e.errno, Some(libc::ECONNREFUSED), "{target}: {e}");
        }
    }
    let ferry = env.ferry();
    let count = view_of(ferry, "10.96.0.70:80/TCP")?;
    let empty = view_of(ferry, "10.96.0.71:80/TCP")?;
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or_default();
    assert!(n(&count, "translated") >= N, "{count}");
    assert!(n(&count, "refused") >= M, "undefined port: {count}");
    assert!(n(&empty, "refused") >= M, "no endpoints: {empty}");
    assert_eq!(n(&empty, "translated"), 0, "{empty}");
    assert_eq!(empty["backends"], serde_json::json!([]), "{empty}");
    assert_eq!(empty["when_empty"], "reject", "{empty}");
    Ok(())
}

/// One unconnected UDP socket talking to more frontends than it remembers
/// (its socket table entry plus `capacity::SOCK_PEERS` in socket storage):
/// each new frontend past the bound replaces the stored one written longest
/// ago, so a reply that arrives from that frontend's backend afterwards
/// shows the backend's address, and every other reply the frontend's.
#[test]
fn an_unconnected_udp_socket_remembers_its_latest_frontends() -> Result<()> {
    require_root();
    let _serial = serial();
    // One frontend in the socket table, `SOCK_PEERS` more in socket storage.
    let bound = lb_common::capacity::SOCK_PEERS + 1;
    let n = bound + 1;
    let mut env = Env::new(n, &[PORT])?;
    let backends = env.first(n);
    let mut objects = Vec::new();
    let mut frontends = Vec::new();
    for (i, b) in backends.iter().enumerate() {
        let ip = format!("10.96.0.{}", 80 + i);
        objects.extend(service_with(
            &format!("u{i}"),
            &ip,
            &[udp("udp", 80, PORT)],
            &[b],
        ));
        frontends.push(sa(&format!("{ip}:80")));
    }
    env.write("udp.yaml", &objects)?;
    let wanted: Vec<String> = frontends.iter().map(|f| format!("{f}/UDP")).collect();
    env.start(&wanted.iter().map(String::as_str).collect::<Vec<_>>())?;
    let backend_addrs: Vec<SocketAddr> = env
        .first(n)
        .iter()
        .map(|b| SocketAddr::new(IpAddr::V4(b.v4), PORT))
        .collect();

    // All datagrams go out before any reply is read: the reverse path runs
    // at recvmsg time, when the socket has already met all n frontends.
    let replies = env.node().run(|| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        for fe in &frontends {
            s.send_to(b"who\n", fe)?;
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 2048];
        for _ in 0..frontends.len() {
            let (len, from) = s.recv_from(&mut buf)?;
            let (server, _) = parse_reply(&String::from_utf8_lossy(&buf[..len]))?;
            out.push((server, from));
        }
        io::Result::Ok(out)
    })?;
    assert_eq!(replies.len(), n, "{replies:?}");
    for (server, from) in &replies {
        let i: usize = server
            .trim_start_matches('b')
            .split(':')
            .next()
            .and_then(|d| d.parse().ok())
            .unwrap_or_else(|| panic!("server name {server}"));
        // Frontend 0 holds the socket table entry; frontend 1 was the first
        // in socket storage and was replaced there by frontend n-1.
        let expected = if i == 1 {
            backend_addrs[1]
        } else {
            frontends[i]
        };
        assert_eq!(*from, expected, "reply of {server}: {replies:?}");
    }
    Ok(())
}

/// Entries of the socket tables (`SOCKETS4`, `SOCKETS6`) that name a socket.
fn socket_table_in_use(env: &Env) -> Result<usize> {
    let maps = lb_userspace::datapath::maps::Maps::open(&lb_userspace::datapath::BpffsDir::new(
        env.bpffs.path(),
    ))?;
    let mut n = 0;
    for i in 0..lb_common::capacity::SOCKETS {
        n += usize::from(maps.sockets4.get(&i, 0)?.cookie != 0);
        n += usize::from(maps.sockets6.get(&i, 0)?.cookie != 0);
    }
    Ok(n)
}

/// `count` TCP connections and `count` connected UDP sockets to `fe`, each
/// checked to show the frontend as its peer.
fn translated_sockets(env: &Env, fe: SocketAddr, count: usize) -> Result<Vec<Socket>> {
    let sockets = env.node().run(|| -> io::Result<Vec<Socket>> {
        let mut out = Vec::new();
        for _ in 0..count {
            let t = TcpStream::connect_timeout(&fe, Duration::from_secs(2))?;
            out.push(Socket::from(t));
            let u = UdpSocket::bind("0.0.0.0:0")?;
            u.connect(fe)?;
            out.push(Socket::from(u));
        }
        Ok(out)
    })?;
    for s in &sockets {
        let peer = s.peer_addr()?.as_socket();
        assert_eq!(peer, Some(fe), "getpeername must show the frontend");
    }
    Ok(sockets)
}

#[test]
fn translated_sockets_hold_a_socket_table_entry_until_they_close() -> Result<()> {
    require_root();
    let _serial = serial();
    let env = web_env()?;
    let fe = sa("10.96.0.10:80");
    assert_eq!(socket_table_in_use(&env)?, 0, "nothing translated yet");
    let sockets = translated_sockets(&env, fe, 200)?;
    assert_eq!(
        socket_table_in_use(&env)?,
        sockets.len(),
        "one entry per translated socket"
    );
    // sock_release frees the entries when the sockets close (synchronously,
    // in close(2), before TCP's own teardown).
    drop(sockets);
    assert_eq!(
        socket_table_in_use(&env)?,
        0,
        "closed sockets must give their entries back"
    );
    Ok(())
}

#[test]
fn sockets_the_socket_table_cannot_place_keep_their_translation_in_socket_storage() -> Result<()> {
    require_root();
    let _serial = serial();
    let env = web_env()?;
    let fe = sa("10.96.0.10:80");
    // Every entry held by a socket that does not exist (cookies count up
    // from 1, so these are never a real socket's): each new socket finds
    // its entry taken, as when another live socket holds it.
    {
        let mut maps = lb_userspace::datapath::maps::Maps::open(
            &lb_userspace::datapath::BpffsDir::new(env.bpffs.path()),
        )?;
        for i in 0..lb_common::capacity::SOCKETS {
            let foreign = lb_common::Socket4 {
                cookie: u64::MAX - u64::from(i),
                ..Default::default()
            };
            maps.sockets4.set(i, foreign, 0)?;
        }
    }
    let sockets = translated_sockets(&env, fe, 20)?;
    // Replies too: a connected UDP socket's recvmsg shows the frontend.
    let replies = env.node().run(|| -> io::Result<Vec<SocketAddr>> {
        let mut out = Vec::new();
        for _ in 0..20 {
            let u = UdpSocket::bind("0.0.0.0:0")?;
            u.connect(fe)?;
            u.set_read_timeout(Some(Duration::from_secs(2)))?;
            u.send(b"who\n")?;
            let mut buf = [0u8; 2048];
            let (_, from) = u.recv_from(&mut buf)?;
            out.push(from);
        }
        Ok(out)
    })?;
    assert!(replies.iter().all(|r| *r == fe), "{replies:?}");
    assert_eq!(
        socket_table_in_use(&env)?,
        lb_common::capacity::SOCKETS as usize,
        "only the foreign entries: the sockets went to socket storage"
    );
    drop(sockets);
    Ok(())
}

/// Client processes of the many-sockets test (`hold_sockets`), killed on
/// drop.
struct Holders(Vec<std::process::Child>);

impl Drop for Holders {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One line from a holder's stdout. Bounded: a holder's socket calls
/// time out within seconds, and it exits (closing stdout) on any error.
fn holder_line(out: &mut io::BufReader<std::process::ChildStdout>) -> Result<String> {
    use std::io::BufRead as _;
    let mut line = String::new();
    out.read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[test]
fn fifty_thousand_translated_sockets_at_once_all_show_their_frontend() -> Result<()> {
    require_root();
    let _serial = serial();
    const PROCESSES: usize = 4;
    // Per process, of each protocol: 4 × (6,250 TCP + 6,250 UDP) = 50,000.
    const PER_PROCESS: usize = 6_250;
    const HOLD_PORT: u16 = 9090;
    let mut env = Env::new(3, &[PORT])?;
    // TCP: listeners that never accept, with room in their accept queues
    // for every connection, so no server thread per connection is needed.
    let mut listeners = Vec::new();
    for b in env.first(3) {
        tests::ns_topology::sysctl(&b.ns, "net.core.somaxconn", "65535")?;
        listeners.push(b.ns.run(|| -> io::Result<Socket> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::new(IpAddr::V4(b.v4), HOLD_PORT).into())?;
            s.listen(65535)?;
            Ok(s)
        })?);
    }
    let ports = [tcp("hold", 81, HOLD_PORT), udp("udp", 80, PORT)];
    env.write(
        "many.yaml",
        &service_with("many", WEB, &ports, &env.first(3)),
    )?;
    env.start(&["10.96.0.10:81/TCP", "10.96.0.10:80/UDP"])?;

    let bin = env!("CARGO_BIN_EXE_hold_sockets");
    let mut holders = Holders(Vec::new());
    for _ in 0..PROCESSES {
        let child = env.node().run(|| {
            std::process::Command::new(bin)
                .args(["10.96.0.10:81", "10.96.0.10:80", &PER_PROCESS.to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
        })?;
        holders.0.push(child);
    }
    let mut outs: Vec<_> = holders
        .0
        .iter_mut()
        .map(|c| io::BufReader::new(c.stdout.take().expect("piped")))
        .collect();
    for out in &mut outs {
        let line = holder_line(out)?;
        assert_eq!(line, format!("open {}", 2 * PER_PROCESS), "a holder failed");
    }
    // All 50,000 are open now: every process checks all of its sockets
    // again, getpeername and a UDP reply each.
    let in_table = socket_table_in_use(&env)?;
    for c in &mut holders.0 {
        writeln!(c.stdin.as_mut().expect("piped"), "check")?;
    }
    for out in &mut outs {
        let line = holder_line(out)?;
        assert_eq!(
            line,
            format!("ok {}", 2 * PER_PROCESS),
            "a holder's check failed"
        );
    }
    eprintln!(
        "{} sockets open; {in_table} in the socket table, the rest in socket storage",
        2 * PROCESSES * PER_PROCESS
    );
    assert!(
        in_table <= 2 * PROCESSES * PER_PROCESS && in_table > PROCESSES * PER_PROCESS,
        "most sockets take a table entry: {in_table}"
    );
    for c in &mut holders.0 {
        drop(c.stdin.take());
    }
    for c in &mut holders.0 {
        assert!(c.wait()?.success(), "a holder exited with an error");
    }
    holders.0.clear();
    assert_eq!(socket_table_in_use(&env)?, 0, "all entries given back");
    drop(listeners);
    Ok(())
}
