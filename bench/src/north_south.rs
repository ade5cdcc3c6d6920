//! `cargo xtask bench-north-south`: an outside client's new connections to
//! load balancer IPs through node1 of the namespace topology
//! ([`sandbox::ns_topology::NsTopology`]), one datapath after the other
//! on the same objects, in one run:
//!
//! - direct: straight to the pods, routed by node1 (and node2 for pod2),
//!   no translation: the floor;
//! - Ferry with XDP (`--xdp-mode native`) and with tc alone
//!   (`--xdp-mode off`), `ferry standalone` inside node1;
//! - kube-proxy-shaped iptables and nftables rules in node1 (DNAT to a
//!   random endpoint, masquerade), from the same generator as the socket
//!   bench's (`kubeproxy.rs`). The rules match the load balancer IPs as
//!   ClusterIPs (the same KUBE-SERVICES structure and per-packet work as
//!   kube-proxy's load balancer chains without source ranges).
//!
//! N Services, each a TCP load balancer IP 10.91.x.y:80 with two endpoints,
//! pod1 (on node1) and pod2 (on node2, behind nn0), externalTrafficPolicy
//! Cluster: every datapath masquerades and sends half of the connections
//! across to node2. Each connection: connect, one byte each way, close by
//! RST (no TIME_WAIT); latency from before connect to after the reply.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sandbox::manifests::{AddressType, Endpoint, EndpointSlice, Manifests, Service, ServicePort};
use sandbox::netns::Netns;
use sandbox::ns_topology::{NodeFerry, NsTopology};
use sandbox::util::Wait;
use serde_json::Value;

use crate::NAMING;
use crate::kubeproxy;
use crate::net::{Servers, tcp_new_connections};
use crate::stats::{Rng, percentile};
use crate::workload::{self, Proto};

/// The load balancer IPs' range, routed via node1 in the client.
const LB_RANGE: &str = "10.91.0.0/16";
const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;
const MANIFEST: &str = "objects.yaml";
/// Bound of Ferry's start with the largest scale.
const READY_TIMEOUT: Duration = Duration::from_secs(300);

fn lb_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 91, 0, 1)) + i as u32)
}

/// The datapaths, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Path {
    Direct,
    FerryXdp,
    FerryTc,
    Iptables,
    Nftables,
}

impl Path {
    pub const ALL: [Path; 5] = [
        Path::Direct,
        Path::FerryXdp,
        Path::FerryTc,
        Path::Iptables,
        Path::Nftables,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::FerryXdp => "Ferry (XDP)",
            Path::FerryTc => "Ferry (tc)",
            Path::Iptables => "iptables",
            Path::Nftables => "nftables",
        }
    }
}

/// A connection this slow lost a packet on the way (TCP's first
/// retransmission is after 1 s).
const SLOW_NS: u64 = 100_000_000;

/// One datapath at one scale.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub services: usize,
    pub path: Path,
    pub p50_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
    /// Connections that took `SLOW_NS` or more (a lost SYN or SYN-ACK
    /// costs a 1 s retransmission; the percentiles hide a few).
    pub slow: usize,
    pub conns_per_sec: f64,
}

/// The Services' ports as kube-proxy sees them (for the rule generator).
fn service_ports(topo: &NsTopology, n: usize) -> Vec<workload::ServicePort> {
    let mut endpoints = vec![
        (topo.pod("pod1").v4, TARGET_PORT),
        (topo.pod("pod2").v4, TARGET_PORT),
    ];
    endpoints.sort();
    (0..n)
        .map(|i| workload::ServicePort {
            namespace: "default".into(),
            name: format!("lb-{i}"),
            port_name: "tcp".into(),
            protocol: Proto::Tcp,
            cluster_ip: lb_ip(i),
            port: PORT,
            endpoints: endpoints.clone(),
        })
        .collect()
}

/// The same Services as Kubernetes objects, for Ferry.
fn objects(topo: &NsTopology, n: usize) -> Vec<Value> {
    let mut out = topo.node_objects();
    for i in 0..n {
        let name = format!("lb-{i}");
        let cluster_ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + i as u32);
        out.push(
            Service::new("default", &name)
                .type_("LoadBalancer")
                .cluster_ips(&[&cluster_ip.to_string()])
                .port(ServicePort::tcp(PORT).name("tcp").target(TARGET_PORT))
                .load_balancer_ingress(&[&lb_ip(i).to_string()])
                .to_value(),
        );
        let mut slice =
            EndpointSlice::new("default", &format!("{name}-v4"), &name, AddressType::IPv4).port(
                "tcp",
                TARGET_PORT,
                "TCP",
            );
        for pod in ["pod1", "pod2"] {
            let p = topo.pod(pod);
            slice = slice.endpoint(Endpoint::new(p.v4.to_string()).node(&p.node));
        }
        out.push(slice.to_value());
    }
    out
}

/// Runs `program ARGS` in `ns` with `input` on stdin; fails on a non-zero
/// exit, with its stderr.
fn run_in(ns: &Netns, program: &str, args: &[&str], input: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = ns
        .command(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{program} {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// node1's netfilter rules, flushed on drop.
struct Rules<'a>(&'a Netns);

impl Drop for Rules<'_> {
    fn drop(&mut self) {
        let flushed = Command::new("nsenter")
            .arg(format!("--net={}", self.0.path().display()))
            .args(["--", "nft", "flush", "ruleset"])
            .status();
        if !flushed
            .as_ref()
            .is_ok_and(std::process::ExitStatus::success)
        {
            eprintln!("bench-north-south: flushing node1's rules failed: {flushed:?}");
        }
    }
}

/// `connections` new connections from the client, then the figures.
fn measure(
    topo: &NsTopology,
    services: usize,
    path: Path,
    targets: &[SocketAddrV4],
) -> Result<Row> {
    // A few first: ARP, route caches, the servers' accept queues.
    topo.client()
        .run(|| tcp_new_connections(&targets[..targets.len().min(20)]))
        .with_context(|| format!("{} warm-up", path.name()))?;
    let (mut lat, wall) = topo
        .client()
        .run(|| tcp_new_connections(targets))
        .with_context(|| format!("{} at {services} Services", path.name()))?;
    lat.sort_unstable();
    Ok(Row {
        services,
        path,
        p50_ns: percentile(&lat, 50.0),
        p99_ns: percentile(&lat, 99.0),
        max_ns: lat.last().copied().unwrap_or(0),
        slow: lat.iter().filter(|ns| **ns >= SLOW_NS).count(),
        conns_per_sec: lat.len() as f64 / wall.as_secs_f64(),
    })
}

/// Starts Ferry in node1 with `xdp_mode` and waits until its north-south
/// maps serve the last Service's frontend (the socket maps are written
/// first in a sync pass: waiting on those would race the external ones,
/// and node1 answers a connection to an unknown address with an ICMP
/// error).
fn start_ferry(
    topo: &NsTopology,
    manifests: &Manifests,
    n: usize,
    xdp_mode: &str,
) -> Result<NodeFerry> {
    let mut f = NodeFerry::start(topo.node("node1"), manifests, &["--xdp-mode", xdp_mode])?;
    let fe = format!("{}:{PORT}/TCP", lb_ip(n - 1));
    sandbox::util::wait_until(
        &format!("{fe} in node1's north-south maps"),
        READY_TIMEOUT,
        Duration::from_millis(200),
        || {
            // Until the agent has pinned its maps, `ferry services` fails:
            // that is still starting, not an error.
            let v = match f.ferry().north_south_json() {
                Ok(v) => v,
                Err(e) => return Ok(Wait::Pending(format!("{e:#}"))),
            };
            let served = v["frontends"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|e| e["frontend"].as_str() == Some(fe.as_str()))
            });
            Ok(if served {
                Wait::Done(())
            } else {
                Wait::Pending(format!(
                    "{} frontends",
                    v["frontends"].as_array().map_or(0, Vec::len)
                ))
            })
        },
    )?;
    Ok(f)
}

pub fn run(scales: &[usize], connections: usize, seed: u64) -> Result<Vec<Row>> {
    crate::proc::install_signal_handlers();
    let stale = sandbox::sweep::sweep_stale_with(NAMING);
    if !stale.is_empty() {
        eprintln!("bench-north-south: removed leftovers of a killed run: {stale:?}");
    }
    let outcome = run_topology(scales, connections, seed);
    let leftovers = sandbox::sweep::sweep_own(NAMING);
    if !leftovers.is_empty() {
        eprintln!("bench-north-south: removed leftovers: {leftovers:?}");
    }
    outcome
}

fn run_topology(scales: &[usize], connections: usize, seed: u64) -> Result<Vec<Row>> {
    let topo = NsTopology::new_with(NAMING)?;
    let pods: Vec<(&Netns, Ipv4Addr)> = topo.pods().iter().map(|p| (&p.ns, p.v4)).collect();
    let _servers = Servers::start(&pods, TARGET_PORT..TARGET_PORT + 1, TARGET_PORT, None)?;
    topo.route_client_via(LB_RANGE, "node1")?;
    // Direct: the pods through node1, as the translated paths reach them.
    for range in ["10.81.0.0/16", "10.82.0.0/16"] {
        topo.route_client_via(range, "node1")?;
    }
    let manifests = Manifests::new()?;
    let node1 = &topo.node("node1").ns;
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    for &n in scales {
        ensure!(n >= 1, "a scale of 0 Services");
        let lb_targets: Vec<SocketAddrV4> = (0..connections)
            .map(|_| SocketAddrV4::new(lb_ip(rng.below(n)), PORT))
            .collect();
        let direct: Vec<SocketAddrV4> = (0..connections)
            .map(|i| {
                let pod = if i % 2 == 0 { "pod1" } else { "pod2" };
                SocketAddrV4::new(topo.pod(pod).v4, TARGET_PORT)
            })
            .collect();
        manifests.write_objects(MANIFEST, &objects(&topo, n))?;
        let ports = service_ports(&topo, n);
        for path in Path::ALL {
            crate::proc::check_interrupted()?;
            let row = match path {
                Path::Direct => measure(&topo, n, path, &direct)?,
                Path::FerryXdp | Path::FerryTc => {
                    let mode = if path == Path::FerryXdp {
                        "native"
                    } else {
                        "off"
                    };
                    // Dropped (stopped, `ferry cleanup`) before the next.
                    let mut ferry = start_ferry(&topo, &manifests, n, mode)?;
                    let row = measure(&topo, n, path, &lb_targets)?;
                    if let Ok(v) = ferry.ferry().north_south_json() {
                        eprintln!(
                            "bench-north-south: {n} Services, {}: counters {}",
                            path.name(),
                            v.get("counters").unwrap_or(&Value::Null)
                        );
                    }
                    row
                }
                Path::Iptables => {
                    let _rules = Rules(node1);
                    run_in(
                        node1,
                        "iptables-restore",
                        &["-w", "5"],
                        &kubeproxy::iptables_full(&ports),
                    )?;
                    measure(&topo, n, path, &lb_targets)?
                }
                Path::Nftables => {
                    let _rules = Rules(node1);
                    run_in(node1, "nft", &["-f", "-"], &kubeproxy::nft_full(&ports))?;
                    measure(&topo, n, path, &lb_targets)?
                }
            };
            eprintln!(
                "bench-north-south: {n} Services, {}: p50 {} µs, p99 {} µs, {:.0} conn/s",
                path.name(),
                row.p50_ns / 1000,
                row.p99_ns / 1000,
                row.conns_per_sec
            );
            rows.push(row);
        }
    }
    Ok(rows)
}

/// The figures as a Markdown table, with the targets per scale.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| Services | datapath | p50 µs | p99 µs | max µs | ≥ 100 ms | conn/s | p50 / direct |\n|---:|---|---:|---:|---:|---:|---:|---:|\n",
    );
    let find = |n: usize, p: Path| rows.iter().find(|r| r.services == n && r.path == p);
    for r in rows {
        let direct = find(r.services, Path::Direct)
            .map_or(0, |d| d.p50_ns)
            .max(1);
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.0} | {} | {:.0} | {:.2}× |\n",
            r.services,
            r.path.name(),
            r.p50_ns as f64 / 1000.0,
            r.p99_ns as f64 / 1000.0,
            r.max_ns as f64 / 1000.0,
            r.slow,
            r.conns_per_sec,
            r.p50_ns as f64 / direct as f64,
        ));
    }
    let mut scales: Vec<usize> = rows.iter().map(|r| r.services).collect();
    scales.dedup();
    for n in scales {
        let (Some(d), Some(x)) = (find(n, Path::Direct), find(n, Path::FerryXdp)) else {
            continue;
        };
        let ratio = x.p50_ns as f64 / d.p50_ns.max(1) as f64;
        s.push_str(&format!(
            "\n{n} Services: Ferry (XDP) p50 {ratio:.2}× direct (target ≤ 1.05×: {})",
            if ratio <= 1.05 { "met" } else { "missed" }
        ));
        if let (Some(nft), Some(ipt)) = (find(n, Path::Nftables), find(n, Path::Iptables)) {
            s.push_str(&format!(
                "; p99 {:.1} µs vs nftables {:.1} µs (target ≤: {}), vs iptables / 3 {:.1} µs (target ≤: {})",
                x.p99_ns as f64 / 1000.0,
                nft.p99_ns as f64 / 1000.0,
                if x.p99_ns <= nft.p99_ns { "met" } else { "missed" },
                ipt.p99_ns as f64 / 3000.0,
                if x.p99_ns * 3 <= ipt.p99_ns { "met" } else { "missed" },
            ));
        }
        s.push_str(".\n");
    }
    s
}
