//! `ferry-demo`: Ferry's main job, shown in namespaces made for the
//! occasion, with nothing of the host's own traffic involved
//! (`bash scripts/demo.sh` builds and runs it).
//!
//! It sweeps what killed demo runs left; makes a node namespace bridged to
//! three backend namespaces (each runs servers that answer with their
//! name), a child cgroup, a bpffs dir and the embedded manifests; starts
//! the real agent (`ferry standalone`, the `ferry` binary next to this
//! one, through `sandbox::Ferry`) on them and waits
//! until it has programmed the Service; moves this process into the cgroup
//! and sends requests from the node namespace; reports who answered; and
//! removes everything. Every resource is held by a guard, so an error or a
//! Ctrl-C (see `interrupt`) removes everything too.
//!
//! It succeeds only if every request was answered and every backend
//! answered at least once on every frontend.

mod interrupt;
mod report;
mod traffic;

use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use clap::Parser;
use sandbox::{
    BpffsDir, Cgroup, Ferry, FerryOptions, NODE_V4, Naming, SweepReport, Topology, command_output,
    is_root, sweep, util::COMMAND_TIMEOUT,
};
use serde_json::Value;

use self::report::{Answer, Tally, answer_label, bar_chart};
use self::traffic::Proto;

/// Run a self-contained demo: namespaces, backends, a ClusterIP Service,
/// and requests spread over its backends. Cleans up after itself.
#[derive(Parser)]
#[command(name = "ferry-demo")]
struct Args {
    /// Requests to send.
    #[arg(long, default_value_t = 30)]
    requests: u32,
}

fn main() -> Result<()> {
    run(Args::parse().requests)
}

/// The Service the demo serves (see the file for what it declares).
const MANIFESTS: &str = include_str!("manifests.yaml");

const NAMING: Naming = Naming::DEMO;
/// The backends' names; the manifests list their addresses (10.244.0.10+i).
const BACKENDS: [&str; 3] = ["b0", "b1", "b2"];
const BACKEND_PORT: u16 = 8080;
const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE_NAME: &str = "demo-node";
const SERVICE: &str = "demo/web";

/// At least one request per backend, or the demo could not succeed.
const MIN_REQUESTS: u32 = BACKENDS.len() as u32;
/// Keeps a mistyped count from running for hours.
const MAX_REQUESTS: u32 = 10_000;
/// How long the agent may take to program the Service.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Answers per line of the per-request listing.
const PER_LINE: u32 = 10;
/// Answers listed one by one; more are only counted.
const LISTED: u32 = 100;
const BAR_WIDTH: usize = 30;

/// One frontend of the demo Service.
struct Frontend {
    proto: Proto,
    addr: SocketAddr,
    kind: &'static str,
}

impl Frontend {
    /// As `ferry services` writes it: `10.96.0.10:80/TCP`.
    fn key(&self) -> String {
        format!("{}/{}", self.addr, self.proto)
    }
}

/// The Service's frontends, the ClusterIP over TCP first (the headline).
fn frontends() -> [Frontend; 4] {
    let at = |ip: Ipv4Addr, port| SocketAddr::new(IpAddr::V4(ip), port);
    [
        Frontend {
            proto: Proto::Tcp,
            addr: at(CLUSTER_IP, 80),
            kind: "ClusterIP",
        },
        Frontend {
            proto: Proto::Udp,
            addr: at(CLUSTER_IP, 9000),
            kind: "ClusterIP",
        },
        Frontend {
            proto: Proto::Tcp,
            addr: at(NODE_V4, 30080),
            kind: "NodePort",
        },
        Frontend {
            proto: Proto::Udp,
            addr: at(NODE_V4, 30090),
            kind: "NodePort",
        },
    ]
}

/// Whether `ferry services -o json` shows every frontend with all backends.
fn all_programmed(views: &[Value]) -> bool {
    frontends().iter().all(|f| {
        let key = f.key();
        views.iter().any(|v| {
            v["frontend"].as_str() == Some(key.as_str())
                && v["backends"].as_array().map(Vec::len) == Some(BACKENDS.len())
        })
    })
}

fn run(requests: u32) -> Result<()> {
    preflight(requests)?;
    interrupt::install().context("installing the Ctrl-C handler")?;
    let stale = sweep::sweep_stale_with(NAMING);
    if !stale.is_empty() {
        println!(
            "Removed what a killed demo left behind: {}",
            describe_sweep(&stale)
        );
    }

    let outcome = demo(requests);
    if outcome.is_err() {
        // The guards have removed everything by now; say so under a
        // heading of its own (a listing line may have been cut short).
        println!("\nCleaning up");
    }

    // Every guard has run by now. This last net catches what no guard
    // held, e.g. a namespace made by an `ip` that a Ctrl-C cut short.
    let late = sweep::sweep_own(NAMING);
    if late.is_empty() {
        println!(
            "  nothing left behind (ip netns list, the cgroup2 root and /sys/fs/bpf are as before)"
        );
    } else {
        println!("  removed late: {}", describe_sweep(&late));
    }
    let mut problems = outcome?;
    problems.extend(late.errors.iter().map(|e| format!("could not remove {e}")));
    if problems.is_empty() {
        println!("\nOK: every request was answered, and every backend answered on every frontend.");
        return Ok(());
    }
    println!("\nNot as expected:");
    for p in &problems {
        println!("  - {p}");
    }
    bail!(
        "the demo did not go as expected ({} problems)",
        problems.len()
    )
}

fn preflight(requests: u32) -> Result<()> {
    ensure!(
        is_root(),
        "ferry-demo needs root: it creates network namespaces and a cgroup and loads \
         eBPF programs (try: sudo {})",
        std::env::args()
            .next()
            .unwrap_or_else(|| "ferry-demo".into())
    );
    ensure!(
        (MIN_REQUESTS..=MAX_REQUESTS).contains(&requests),
        "--requests must be between {MIN_REQUESTS} (one per backend) and {MAX_REQUESTS}"
    );
    let ip = command_output(Command::new("ip").arg("-V"), COMMAND_TIMEOUT);
    ensure!(
        ip.is_ok_and(|o| o.status.success()),
        "ferry-demo needs the `ip` command (iproute2)"
    );
    Ok(())
}

fn describe_sweep(r: &SweepReport) -> String {
    let mut parts: Vec<String> = r.netns.iter().map(|n| format!("netns {n}")).collect();
    let paths = r.cgroups.iter().chain(&r.bpffs_dirs).chain(&r.temp_dirs);
    parts.extend(paths.map(|p| p.display().to_string()));
    parts.extend(r.errors.iter().map(|e| format!("(failed: {e})")));
    parts.join(", ")
}

/// Prints `text` indented by two spaces.
fn print_indented(text: &str) {
    for line in text.lines() {
        println!("  {line}");
    }
}

/// Sets up, runs the traffic, reports, tears down. Returns what did not go
/// as expected (empty: all good); errors are failures to run at all.
fn demo(requests: u32) -> Result<Vec<String>> {
    println!("ferry-demo: a Kubernetes Service load-balanced by Ferry's eBPF programs,");
    println!("in network namespaces made for the occasion.");
    println!("\nSetting up (all of it is removed at the end, also on Ctrl-C)");

    // Guards drop in reverse order: the agent is stopped and cleaned up
    // before its bpffs dir, cgroup and namespaces go.
    let topo = Topology::builder()
        .naming(NAMING)
        .backends(BACKENDS.len())
        .build()
        .context("creating the namespaces")?;
    interrupt::check()?;
    let servers = topo
        .start_servers(BACKEND_PORT)
        .context("starting the backends' servers")?;
    let mut cgroup = Cgroup::new_with(NAMING)?;
    let bpffs = BpffsDir::new_with(NAMING)?;
    let scratch = tempfile::Builder::new()
        .prefix(&NAMING.temp_prefix())
        .tempdir()
        .context("creating a temp dir")?;
    let manifests = scratch.path().join("manifests");
    fs::create_dir(&manifests)?;
    fs::write(manifests.join("web.yaml"), MANIFESTS)?;

    let backend_addr = |name: &str| {
        topo.backends()
            .iter()
            .find(|b| b.name == name)
            .map(|b| b.addr_v4(BACKEND_PORT).to_string())
            .unwrap_or_default()
    };
    println!(
        "  node        netns {} ({NODE_V4}); clients run here",
        topo.node_ns_name()
    );
    for b in topo.backends() {
        println!(
            "  backend {}  netns {} ({}); TCP and UDP servers on :{BACKEND_PORT} answer \"{}\"",
            b.name,
            b.ns.name(),
            b.v4,
            b.name
        );
    }
    println!(
        "  cgroup      {} (the programs attach here, not to the root cgroup)",
        cgroup.path().display()
    );
    println!("  bpffs       {}", bpffs.path().display());
    println!(
        "  Service     {SERVICE}: ClusterIP {CLUSTER_IP} 80/TCP and 9000/UDP, NodePorts 30080/TCP \
         and 30090/UDP, all to port {BACKEND_PORT} of b0, b1, b2"
    );
    interrupt::check()?;

    println!("\nStarting the agent");
    let started = std::time::Instant::now();
    let mut agent = Ferry::start(
        FerryOptions::new(&manifests, cgroup.path(), bpffs.path())
            .node(NODE_NAME, [NODE_V4.into()])
            .host_netns(topo.node().path())
            .naming(NAMING)
            .quiet()
            .abort_when(interrupt::check),
    )?;
    println!("  $ {}", agent.command_line());
    agent.wait_for_timeout(
        &format!("every frontend of {SERVICE} with its backends"),
        READY_TIMEOUT,
        |v| v.as_array().is_some_and(|views| all_programmed(views)),
    )?;
    let took = started.elapsed();
    println!(
        "  pid {}, ready after {:.2} s: every frontend of {SERVICE} has its {} backends",
        agent.pid().unwrap_or_default(),
        took.as_secs_f64(),
        BACKENDS.len()
    );

    // From here on this process, every thread of it, is under the
    // programs; the clients run on a thread inside the node namespace.
    cgroup.enter_self()?;
    let mut problems = Vec::new();
    let [headline, others @ ..] = frontends();

    println!(
        "\n{requests} {} requests to {} ({}), from the node namespace, a new connection each:",
        headline.proto, headline.addr, headline.kind
    );
    let answers = traffic::send(
        topo.node(),
        headline.proto,
        headline.addr,
        requests,
        |i, answer| print_listing(i, requests, answer),
    )?;
    let tally = Tally::new(&BACKENDS, &answers);
    println!();
    for line in bar_chart(&tally, backend_addr, BAR_WIDTH) {
        println!("  {line}");
    }
    if let Some(reply) = answers.iter().find_map(|a| a.as_ref().ok()) {
        let peer = reply.peer.map(|p| p.to_string());
        println!(
            "\n  The client's socket says it is connected to {} (getpeername); {} saw the client \
             as {}.",
            peer.as_deref().unwrap_or("?"),
            reply.server,
            reply.seen_peer
        );
        println!(
            "  Ferry's connect4 program picked the backend when the socket connected: no packet \
             was rewritten on the way."
        );
    }
    problems.extend(tally.problems(&headline.key()));

    println!("\nThe same Service on its other frontends, {requests} requests each:");
    for f in &others {
        let answers = traffic::send(topo.node(), f.proto, f.addr, requests, |_, _| {})?;
        let tally = Tally::new(&BACKENDS, &answers);
        let answered = format!("{}/{} answered", tally.answered(), tally.total);
        println!(
            "  {:<22} {:<9}  {answered:<16}  {}",
            f.key(),
            f.kind,
            tally.compact()
        );
        problems.extend(tally.problems(&f.key()));
    }
    // Inspection commands below need not run under the programs.
    cgroup.leave_self()?;

    show_inspection(&agent, &cgroup, &bpffs);

    println!("\nCleaning up");
    agent.stop()?;
    drop(agent);
    println!("  stopped the agent; `ferry cleanup` detached the programs and removed the pins");
    let namespaces = topo.namespace_names().len();
    drop((scratch, bpffs, cgroup, servers, topo));
    println!("  removed the cgroup, the bpffs dir, the temp dir and the {namespaces} namespaces");
    Ok(problems)
}

/// Prints answer `i` of `count` in the per-request listing, a line per
/// [`PER_LINE`] answers, as they come; past [`LISTED`] only a note.
fn print_listing(i: u32, count: u32, answer: &Answer) {
    let mut out = std::io::stdout().lock();
    if i >= LISTED {
        if i == LISTED {
            let _ = writeln!(
                out,
                "  (the other {} answers are only counted)",
                count - LISTED
            );
        }
        return;
    }
    let count = count.min(LISTED);
    if i.is_multiple_of(PER_LINE) {
        let last = (i + PER_LINE).min(count);
        let _ = write!(out, "  {:<11}", format!("#{}-{last}", i + 1));
    }
    let _ = write!(out, " {}", answer_label(answer));
    if (i + 1).is_multiple_of(PER_LINE) || i + 1 == count {
        let _ = writeln!(out);
    }
    let _ = out.flush();
}

/// `ferry services`, `bpftool cgroup show`, and how to look for yourself.
fn show_inspection(agent: &Ferry, cgroup: &Cgroup, bpffs: &BpffsDir) {
    let bpffs_dir = bpffs.path().display();
    let cgroup_dir = cgroup.path().display();
    println!("\nWhat the datapath holds ($ ferry services --bpffs-dir {bpffs_dir}):");
    match agent.services_table() {
        Ok(table) => print_indented(&table),
        Err(e) => println!("  (could not run it: {e:#})"),
    }

    // bpftool is optional: the demo does not need it, only shows it.
    let bpftool = command_output(
        Command::new("bpftool")
            .args(["cgroup", "show"])
            .arg(cgroup.path()),
        COMMAND_TIMEOUT,
    );
    if let Ok(out) = bpftool
        && out.status.success()
    {
        println!("\nPrograms attached to the demo cgroup ($ bpftool cgroup show {cgroup_dir}):");
        print_indented(&String::from_utf8_lossy(&out.stdout));
    }

    println!("\nTo look for yourself while an agent runs (these paths are this run's):");
    println!("  ferry services --bpffs-dir {bpffs_dir}");
    println!("  bpftool cgroup show {cgroup_dir}");
    println!("  bpftool map dump pinned {bpffs_dir}/maps/FRONTENDS4");
    println!("  (the manifests: demo/src/manifests.yaml; ferry standalone --help)");
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_userspace::model;
    use lb_userspace::source::manifests::read_manifests;

    /// The embedded manifests declare exactly the frontends the demo sends
    /// to, each with the three backends the topology makes.
    #[test]
    fn manifests_give_every_frontend_the_three_backends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web.yaml");
        fs::write(&path, MANIFESTS).unwrap();
        let snapshot = read_manifests(&path, NODE_NAME);
        assert!(snapshot.invalid.is_empty(), "{:?}", snapshot.invalid);
        let node = model::node_info(None, NODE_NAME, &[NODE_V4.into()]);
        let computed = model::compute(&snapshot.cluster, &node);
        assert!(computed.invalid.is_empty(), "{:?}", computed.invalid);
        let expected: Vec<IpAddr> = (10..13)
            .map(|h| IpAddr::V4(Ipv4Addr::new(10, 244, 0, h)))
            .collect();
        for f in frontends() {
            let (_, fe) = computed
                .desired
                .frontends
                .iter()
                .find(|(addr, _)| addr.to_string() == f.key())
                .unwrap_or_else(|| panic!("no frontend {}", f.key()));
            let set = &computed.desired.backend_sets[&fe.set];
            let ips: Vec<IpAddr> = set.backends.iter().map(|b| b.ip).collect();
            assert_eq!(ips, expected, "{}", f.key());
            assert!(set.backends.iter().all(|b| b.port == BACKEND_PORT));
        }
    }

    #[test]
    fn readiness_needs_every_frontend_with_every_backend() {
        let view = |frontend: &str, n: usize| serde_json::json!({ "frontend": frontend, "backends": vec![serde_json::json!({}); n] });
        let all: Vec<Value> = frontends().iter().map(|f| view(&f.key(), 3)).collect();
        assert!(all_programmed(&all));
        assert!(!all_programmed(&all[1..]));
        let mut short = all.clone();
        short[0] = view(&frontends()[0].key(), 2);
        assert!(!all_programmed(&short));
    }
}
