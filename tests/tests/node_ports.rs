//! The node's own ports (issue 3), end to end: NodePort bind protection in
//! the node namespace, and health check node ports served as kube-proxy
//! serves them.
//!
//! Privileged: run as root, one test at a time:
//! `cargo test -p tests --test node_ports -- --test-threads=1`.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use socket2::{Domain, Socket, Type};
use tests::fixture::*;
use tests::*;

// ------------------------------------------------------------- bind()

/// bind() of a socket of `ty` to `addr` in `ns`: Ok, or the errno.
fn try_bind(ns: &Netns, ty: Type, addr: SocketAddr) -> Result<(), Option<i32>> {
    ns.run(|| {
        let s = Socket::new(Domain::for_address(addr), ty, None).map_err(|e| e.raw_os_error())?;
        if addr.is_ipv6() {
            s.set_only_v6(false).map_err(|e| e.raw_os_error())?;
        }
        s.set_reuse_address(true).map_err(|e| e.raw_os_error())?;
        s.bind(&addr.into()).map_err(|e| e.raw_os_error())
    })
}

/// With a NodePort 30080/TCP Service, bind() in the node namespace to that
/// TCP port (any address) fails with EADDRINUSE instead of silently
/// shadowing the Service; other ports, UDP 30080, and binds in other
/// namespaces are not affected; once the Service is gone the bind works.
#[test]
fn node_port_bind_protection() -> Result<()> {
    require_root();
    let _serial = serial();
    let svc = Service::new("default", "np")
        .type_("NodePort")
        .cluster_ip("10.96.0.80")
        .port(ServicePort::tcp(80).target(PORT).node_port(30080))
        .to_value();
    let mut env = Env::running(1, 0, &[])?;
    env.apply(&[
        svc,
        tcp_slice("np", "np-1", AddressType::IPv4, &[env.ep("b0", NODE)]),
    ])?;
    env.wait_backends("10.244.0.1:30080/TCP", &[env.addr4("b0")])?;
    assert_eq!(
        env.node()
            .run(|| tcp_request(sa("10.244.0.1:30080")))?
            .server,
        "b0"
    );

    let node = env.node();
    for addr in [
        "0.0.0.0:30080",
        "10.244.0.1:30080",
        "127.0.0.1:30080",
        "[::]:30080",
        "[fd00:244::1]:30080",
    ] {
        assert_eq!(
            try_bind(node, Type::STREAM, sa(addr)),
            Err(Some(libc::EADDRINUSE)),
            "TCP bind to {addr} in the node namespace must fail with EADDRINUSE"
        );
    }
    for (ty, addr, what) in [
        (Type::STREAM, "0.0.0.0:30081", "another TCP port"),
        (Type::STREAM, "10.244.0.1:30081", "another TCP port"),
        (Type::DGRAM, "0.0.0.0:30080", "UDP on the NodePort's number"),
    ] {
        assert_eq!(
            try_bind(node, ty, sa(addr)),
            Ok(()),
            "{what}: bind to {addr} in the node namespace must work"
        );
    }
    assert_eq!(
        try_bind(&env.backend("b0").ns, Type::STREAM, sa("0.0.0.0:30080")),
        Ok(()),
        "binds outside the node namespace are not restricted"
    );

    // The Service goes: the port is free again.
    env.apply(&[])?;
    env.wait_no_frontend("10.244.0.1:30080/TCP")?;
    for addr in ["0.0.0.0:30080", "[::]:30080"] {
        assert_eq!(
            try_bind(env.node(), Type::STREAM, sa(addr)),
            Ok(()),
            "after the Service is deleted, bind to {addr} must work"
        );
    }
    Ok(())
}

// ------------------------------------------------------------- health checks

#[derive(Debug)]
struct HttpResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl HttpResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request (the server closes after answering); every socket
/// operation bounded by 2 s.
fn http(method: &str, addr: SocketAddr, path: &str) -> io::Result<HttpResponse> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(64 * 1024).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad response {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(HttpResponse {
        status,
        headers,
        body: body.to_string(),
    })
}

/// GET from the node namespace.
fn get(env: &Env, addr: SocketAddr) -> io::Result<HttpResponse> {
    env.node().run(|| http("GET", addr, "/anything"))
}

/// Polls (every 100 ms, at most 10 s) until `pred` holds for the outcome
/// of a GET from the node namespace; returns that outcome.
fn wait_get(
    env: &Env,
    addr: SocketAddr,
    what: &str,
    pred: impl Fn(&io::Result<HttpResponse>) -> bool,
) -> Result<io::Result<HttpResponse>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(env, addr);
        if pred(&r) {
            return Ok(r);
        }
        if Instant::now() >= deadline {
            bail!("timed out waiting for {what} on {addr}; last: {r:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn status_is(code: u16) -> impl Fn(&io::Result<HttpResponse>) -> bool {
    move |r| r.as_ref().is_ok_and(|r| r.status == code)
}

fn refused(r: &io::Result<HttpResponse>) -> bool {
    r.as_ref()
        .err()
        .is_some_and(|e| e.raw_os_error() == Some(libc::ECONNREFUSED))
}

/// Waits until connects to `addr` are refused (the listener closed).
fn wait_closed(env: &Env, addr: SocketAddr, what: &str) -> Result<()> {
    wait_get(env, addr, what, refused).map(drop)
}

/// Checks a health check answer: status, kube-proxy's headers and body.
fn assert_health(r: &HttpResponse, status: u16, local_endpoints: usize, what: &str) {
    assert_eq!(r.status, status, "{what}: {r:?}");
    assert_eq!(
        r.header("Content-Type"),
        Some("application/json"),
        "{what}: {r:?}"
    );
    assert_eq!(
        r.header("X-Content-Type-Options"),
        Some("nosniff"),
        "{what}: {r:?}"
    );
    assert_eq!(
        r.header("X-Load-Balancing-Endpoint-Weight"),
        Some(local_endpoints.to_string().as_str()),
        "{what}: {r:?}"
    );
    assert_eq!(
        r.body,
        format!(
            r#"{{"service":{{"namespace":"default","name":"hc"}},"localEndpoints":{local_endpoints},"serviceProxyHealthy":true}}"#
        ),
        "{what}"
    );
    assert_eq!(
        r.header("Content-Length"),
        Some(r.body.len().to_string().as_str()),
        "{what}: {r:?}"
    );
}

/// A LoadBalancer Service with externalTrafficPolicy Local and
/// healthCheckNodePort: HTTP on that port on the node addresses (in the
/// node namespace; the port is no frontend, so the client is not
/// translated), any path and method: 200 with local ready endpoints, 503
/// without (terminating ones count zero), kube-proxy's headers and body;
/// changing the port moves the listener, deleting the Service closes it.
#[test]
fn health_check_node_port() -> Result<()> {
    require_root();
    let _serial = serial();
    let svc = |hc_port: u16| {
        Service::new("default", "hc")
            .type_("LoadBalancer")
            .cluster_ip("10.96.0.90")
            .port(ServicePort::tcp(80).target(PORT).node_port(30090))
            .external_traffic_policy("Local")
            .health_check_node_port(hc_port)
            .load_balancer_ingress(&["10.98.0.90"])
            .to_value()
    };
    let mut env = Env::running(2, 1, &[])?;
    let slice = |eps: &[Endpoint]| tcp_slice("hc", "hc-1", AddressType::IPv4, eps);
    let hc4 = sa("10.244.0.1:32000");
    let hc6 = sa("[fd00:244::1]:32000");
    let moved = sa("10.244.0.1:32001");
    assert!(
        refused(&get(&env, hc4)),
        "nothing listens before the Service"
    );

    // Two local ready endpoints and a remote one: 200, localEndpoints 2.
    env.apply(&[
        svc(32000),
        slice(&[
            env.ep("b0", NODE),
            env.ep("b1", NODE),
            env.ep("r0", OTHER_NODE),
        ]),
    ])?;
    env.wait_backends(
        "10.98.0.90:80/TCP",
        &["b0", "b1", "r0"].map(|b| env.addr4(b)),
    )?;
    let r = wait_get(&env, hc4, "200", status_is(200))??;
    assert_health(&r, 200, 2, "two local ready endpoints");
    let r = wait_get(&env, hc6, "200 on IPv6", status_is(200))??;
    assert_health(&r, 200, 2, "IPv6 node address");
    let r = env
        .node()
        .run(|| http("POST", hc4, "/healthz?x=1"))
        .context("POST")?;
    assert_health(&r, 200, 2, "any method, any path");

    // Local endpoints not ready (remote one still ready): 503, 0.
    env.apply(&[
        svc(32000),
        slice(&[
            not_serving(env.ep("b0", NODE)),
            not_serving(env.ep("b1", NODE)),
            env.ep("r0", OTHER_NODE),
        ]),
    ])?;
    let r = wait_get(&env, hc4, "503", status_is(503))??;
    assert_health(&r, 503, 0, "no local ready endpoint");

    // A local terminating (serving) endpoint counts zero; one ready: 1.
    env.apply(&[
        svc(32000),
        slice(&[
            terminating(env.ep("b0", NODE)),
            env.ep("b1", NODE),
            env.ep("r0", OTHER_NODE),
        ]),
    ])?;
    let r = wait_get(&env, hc4, "200", status_is(200))??;
    assert_health(&r, 200, 1, "one local ready, one local terminating");

    // The port changes: the old one closes, the new one answers.
    let eps = [
        terminating(env.ep("b0", NODE)),
        env.ep("b1", NODE),
        env.ep("r0", OTHER_NODE),
    ];
    env.apply(&[svc(32001), slice(&eps)])?;
    let r = wait_get(&env, moved, "200 on the new port", status_is(200))??;
    assert_health(&r, 200, 1, "moved to 32001");
    wait_closed(&env, hc4, "the old port to close")?;
    wait_closed(&env, hc6, "the old port to close (IPv6)")?;

    // Only type LoadBalancer gets a health check: as a NodePort Service
    // (same eTP Local, same healthCheckNodePort) the listener closes.
    let as_node_port = Service::new("default", "hc")
        .type_("NodePort")
        .cluster_ip("10.96.0.90")
        .port(ServicePort::tcp(80).target(PORT).node_port(30090))
        .external_traffic_policy("Local")
        .health_check_node_port(32001)
        .to_value();
    env.apply(&[as_node_port, slice(&eps)])?;
    env.wait_no_frontend("10.98.0.90:80/TCP")?;
    wait_closed(&env, moved, "the port to close for a NodePort Service")?;
    env.apply(&[svc(32001), slice(&eps)])?;
    let r = wait_get(&env, moved, "200 again", status_is(200))??;
    assert_health(&r, 200, 1, "LoadBalancer again");

    // The Service is deleted: the listener closes.
    env.apply(&[slice(&eps)])?;
    env.wait_no_frontend("10.98.0.90:80/TCP")?;
    wait_closed(&env, moved, "the port to close")?;
    Ok(())
}
