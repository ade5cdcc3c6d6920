//! `cargo xtask bench` (the command line: `cli`): Ferry against the direct path and kube-proxy's
//! iptables and nftables datapaths, at cluster scale, in one run.
//!
//! One sandbox topology (a node namespace, 10 backend pod namespaces
//! behind its bridge, the `sandbox` crate), one set of generated
//! Services (see `workload`), and four datapaths measured in turn, only
//! one of them active at a time:
//! - direct: the client connects to a backend pod's own address;
//! - ferry: the agent (see `ferry`) programs Ferry's maps; the programs are
//!   attached to the bench's own child cgroup, which this process is in;
//! - iptables: kube-proxy's iptables-mode rules, iptables-restore'd into
//!   the node namespace (nat OUTPUT → KUBE-SERVICES for local clients);
//! - nftables: kube-proxy's nftables-mode table, `nft -f`'d there.
//!
//! Nothing is installed outside the bench's namespaces, cgroup and bpffs
//! directory, and every one of them is removed on exit, error or Ctrl-C
//! (guards, then a sweep of anything named after this process). Traffic
//! only goes to addresses inside those namespaces.

pub mod agent_change;
pub mod cli;
mod ferry;
mod kubeproxy;
mod memlat;
mod net;
pub mod north_south;
pub mod packets;
mod proc;
mod report;
mod stats;
mod svg;
mod workload;

use std::fmt;
use std::fs;
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use lb_userspace::source::manifests::read_manifests;
use sandbox::{BpffsDir, Cgroup, Naming, Netns, Topology};
use serde::Serialize;

pub use cli::{Task, run_task};
use ferry::{Agent, Stages};
pub use ferry::{AgentArgs, agent_main};
use proc::{check_interrupted, run_timed_in, stdout_of};
use stats::{Rng, mean, percentile};
use workload::{NODE_NAME, PODS, ServicePort, Workload};

/// What the bench names its namespaces, cgroup, bpffs and temp dirs.
pub const NAMING: Naming = Naming {
    prefix: "ferry-bench-",
    dir_prefix: "ferry-bench-",
};

/// Service ports per `nft -f` transaction above
/// `Options::nft_one_transaction_max`.
const NFT_CHUNK: usize = 5_000;

/// Programming from nothing is repeated only up to this scale; above it,
/// once (it takes minutes for the peers).
const REPEAT_PROGRAM_MAX: usize = 10_000;

/// Longest any one control-plane command (restore, nft -f, agent pass)
/// may take before the bench gives up.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dp {
    Direct,
    Ferry,
    Iptables,
    Nftables,
}

impl fmt::Display for Dp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dp::Direct => "direct",
            Dp::Ferry => "Ferry",
            Dp::Iptables => "iptables",
            Dp::Nftables => "nftables",
        })
    }
}

/// The bench's settings (from the command line, see `main.rs`).
#[derive(Clone, Debug, Serialize)]
pub struct Options {
    pub quick: bool,
    /// Skip the agent-change and north-south sections.
    pub socket_only: bool,
    pub scales: Vec<usize>,
    /// Largest scale the iptables datapath runs at.
    pub iptables_max: usize,
    pub datapaths: Vec<Dp>,
    /// Data-plane rounds per datapath and scale (the spread is over them).
    pub rounds: usize,
    /// Fresh TCP connections per round.
    pub connections: usize,
    /// UDP connect() calls per round.
    pub udp_connects: usize,
    /// Seconds of request/response and of bulk transfer per round.
    pub flow_secs: f64,
    /// Programming from nothing, repeated (per datapath and scale, up to
    /// 10,000 Services).
    pub program_repeats: usize,
    /// Above this many Services the nftables ruleset is loaded in several
    /// transactions: in one, nf_tables binds each anonymous verdict map
    /// (one per Service) with a walk over the whole transaction, so a
    /// full sync takes time quadratic in the number of Services (2 minutes
    /// at 10,000, hours at 100,000).
    pub nft_one_transaction_max: usize,
    /// Scale at which one endpoint change is timed.
    pub change_scale: usize,
    /// Endpoint changes timed (alternately removing and restoring it).
    pub change_repeats: usize,
    /// North-south: new flows per hook and scale in the per-packet
    /// section (`bench-packets`, at every scale).
    pub new_flows: u32,
    /// North-south: an outside client's new connections per datapath and
    /// scale through the namespace topology (`bench-north-south`, at the
    /// scales up to 10,000).
    pub north_south_connections: usize,
    pub out_dir: PathBuf,
    pub seed: u64,
    /// CPU the client and server threads are pinned to (None: not pinned).
    pub cpu: Option<usize>,
}

/// One data-plane round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Round {
    pub tcp_p50_ns: u64,
    pub tcp_p90_ns: u64,
    pub tcp_p99_ns: u64,
    pub tcp_mean_ns: f64,
    pub conn_per_s: f64,
    pub udp_connect_p50_ns: u64,
    pub udp_connect_p99_ns: u64,
    pub rr_per_s: f64,
    pub stream_bytes_per_s: f64,
}

/// Programming everything from nothing, once.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Program {
    pub wall_us: u64,
    pub peak_rss_kib: u64,
    /// Loaded in several transactions (nftables at large scales).
    pub transactions: usize,
    /// Ferry only: the agent's stages.
    pub stages: Option<Stages>,
}

/// Applying one endpoint change, once.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Change {
    pub wall_us: u64,
    pub peak_rss_kib: u64,
    pub stages: Option<Stages>,
}

/// The connect4 program's run time per call, one round.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BpfRound {
    pub tcp_ns_per_call: f64,
    pub tcp_calls: u64,
    pub udp_ns_per_call: f64,
    pub udp_calls: u64,
}

/// Everything measured for one datapath at one scale.
#[derive(Clone, Debug, Serialize)]
pub struct DpResult {
    pub datapath: Dp,
    pub services: usize,
    pub program: Vec<Program>,
    pub rounds: Vec<Round>,
    /// Ferry: connect4's run time per call.
    pub bpf: Vec<BpfRound>,
    /// Peers: rule restores. Ferry: manifests re-read from files.
    pub change: Vec<Change>,
    /// Ferry: the object swapped in memory (an API watch's update).
    pub change_in_memory: Vec<Change>,
    /// Ferry: bytes_memlock per pinned map.
    pub map_memory: Vec<(String, u64)>,
    /// Ferry: the agent's RSS after programming and its peak, KiB.
    pub agent_rss_kib: u64,
    pub agent_hwm_kib: u64,
    /// Peers: size of the full rule input.
    pub rule_lines: usize,
    pub rule_bytes: usize,
    /// /proc/loadavg (1, 5, 15 min) when this datapath's turn began and
    /// ended: the bench itself keeps about one CPU busy, more is others.
    pub load: (String, String),
}

impl DpResult {
    fn new(datapath: Dp, services: usize) -> Self {
        DpResult {
            datapath,
            services,
            program: Vec::new(),
            rounds: Vec::new(),
            bpf: Vec::new(),
            change: Vec::new(),
            change_in_memory: Vec::new(),
            map_memory: Vec::new(),
            agent_rss_kib: 0,
            agent_hwm_kib: 0,
            rule_lines: 0,
            rule_bytes: 0,
            load: (report::load_average(), String::new()),
        }
    }
}

/// Where and when the run happened.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Meta {
    pub date: String,
    pub started_utc: String,
    pub commit: String,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_gib: f64,
    pub iptables: String,
    pub nft: String,
    pub bpftool: String,
    pub load_before: String,
    pub load_after: String,
    pub duration_s: f64,
    /// Why the run stopped early, if it did.
    pub incomplete: Option<String>,
    /// Dependent random reads, by working set size.
    pub memory_latency: Vec<memlat::MemLatency>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub meta: Meta,
    pub options: Options,
    pub results: Vec<DpResult>,
    /// One change through `ferry agent` at `options.change_scale`.
    pub agent_change: Option<agent_change::AgentChange>,
    /// North-south cost per packet (tc and XDP), at every scale.
    pub packets: Option<Vec<packets::Row>>,
    /// North-south new connections from outside the node.
    pub north_south: Option<Vec<north_south::Row>>,
}

/// The north-south connection bench's scales: the run's, up to 10,000
/// (the largest; each Service is a kube-proxy-shaped ruleset of its
/// own for the iptables and nftables datapaths).
fn north_south_scales(scales: &[usize]) -> Vec<usize> {
    scales.iter().copied().filter(|n| *n <= 10_000).collect()
}

/// Runs the whole bench and writes the report; returns its path.
pub fn run(opts: Options) -> Result<PathBuf> {
    ensure!(
        sandbox::is_root(),
        "the bench needs root (network namespaces, cgroups, bpffs, iptables)"
    );
    for tool in ["ip", "nsenter", "iptables-restore", "nft", "bpftool"] {
        ensure!(
            !stdout_of("sh", &["-c", &format!("command -v {tool}")]).is_empty(),
            "{tool} is missing (.ci/install-deps installs it)"
        );
    }
    proc::install_signal_handlers();
    let stale = sandbox::sweep::sweep_stale_with(NAMING);
    if !stale.is_empty() {
        eprintln!("[bench] removed leftovers of a killed run: {stale:?}");
    }
    let mut meta = report::collect_meta();
    meta.memory_latency = memlat::measure(opts.seed);
    let mut results = Results {
        meta,
        options: opts.clone(),
        results: Vec::new(),
        agent_change: None,
        packets: None,
        north_south: None,
    };
    let started = Instant::now();
    let mut outcome = run_in_sandbox(&opts, &mut results.results);
    let more = !opts.socket_only && opts.datapaths.contains(&Dp::Ferry);
    if outcome.is_ok() && more {
        eprintln!(
            "[bench] one change through ferry agent at {} Services",
            opts.change_scale
        );
        let changes = if opts.quick { 20 } else { 100 };
        match agent_change::run(opts.change_scale, changes) {
            Ok(figures) => results.agent_change = Some(figures),
            Err(e) => outcome = Err(e.context("one change through ferry agent")),
        }
    }
    if outcome.is_ok() && more {
        eprintln!("[bench] north-south: cost per packet (tc and XDP)");
        let scales: Vec<u32> = opts.scales.iter().map(|n| *n as u32).collect();
        match packets::run(&scales, opts.new_flows, opts.seed) {
            Ok(rows) => results.packets = Some(rows),
            Err(e) => outcome = Err(e.context("north-south cost per packet")),
        }
    }
    let ns_scales = north_south_scales(&opts.scales);
    if outcome.is_ok() && more && !ns_scales.is_empty() {
        eprintln!("[bench] north-south: new connections from outside the node");
        match north_south::run(&ns_scales, opts.north_south_connections, opts.seed) {
            Ok(rows) => results.north_south = Some(rows),
            Err(e) => outcome = Err(e.context("north-south new connections")),
        }
    }
    let leftovers = sandbox::sweep::sweep_own(NAMING);
    if !leftovers.is_empty() {
        eprintln!("[bench] removed leftovers: {leftovers:?}");
    }
    results.meta.duration_s = started.elapsed().as_secs_f64();
    results.meta.load_after = report::load_average();
    match outcome {
        Ok(()) => report::write(&opts, &results),
        Err(e) if !results.results.is_empty() => {
            // Keep what was measured, marked as such (and not as latest).
            results.meta.incomplete = Some(format!("{e:#}"));
            match report::write(&opts, &results) {
                Ok(path) => eprintln!("[bench] partial report: {}", path.display()),
                Err(w) => eprintln!("[bench] could not write the partial report: {w:#}"),
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// A scratch directory `$TMPDIR/ferry-bench-<pid>-<n>`, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir> {
        let path = std::env::temp_dir().join(NAMING.unique_dir_name());
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The node namespace's netfilter ruleset, flushed on drop.
struct Rules<'a>(&'a Netns);

impl Drop for Rules<'_> {
    fn drop(&mut self) {
        if let Err(e) = flush_rules(self.0) {
            eprintln!("bench: flushing the rules of {}: {e:#}", self.0.name());
        }
    }
}

fn flush_rules(node: &Netns) -> Result<()> {
    proc::run_to_end_in(
        node.path(),
        "nft",
        &["flush", "ruleset"],
        Duration::from_secs(600),
    )?;
    Ok(())
}

/// Nothing of any datapath is active: no rules in the node namespace, no
/// program attached to the bench's cgroup.
fn ensure_idle(node: &Netns, cgroup: &Cgroup) -> Result<()> {
    let out = sandbox::command_stdout(node.command("nft").args(["list", "ruleset"]))?;
    ensure!(
        out.trim().is_empty(),
        "rules left in the node namespace:\n{out}"
    );
    let progs = stdout_of(
        "bpftool",
        &["-j", "cgroup", "show", &cgroup.path().to_string_lossy()],
    );
    ensure!(
        progs.is_empty() || progs == "[]",
        "programs still attached to {}: {progs}",
        cgroup.path().display()
    );
    Ok(())
}

fn run_in_sandbox(opts: &Options, out: &mut Vec<DpResult>) -> Result<()> {
    // Guards drop in reverse order: the work dir, the bpffs dir, the
    // cgroup (this process moves back out), the servers, the namespaces.
    eprintln!("[bench] setting up namespaces and servers");
    let topo = Topology::builder()
        .naming(NAMING)
        .backends(PODS)
        .build()
        .context("building the topology")?;
    let node = topo.node();
    setup_node(node)?;
    let pods: Vec<(&Netns, std::net::Ipv4Addr)> =
        topo.local_backends().map(|b| (&b.ns, b.v4)).collect();
    for (i, (_, ip)) in pods.iter().enumerate() {
        ensure!(*ip == Workload::pod_ip(i), "pod {i} has {ip}");
    }
    let _servers = net::Servers::start(
        &pods,
        workload::TCP_TARGET_BASE..workload::TCP_TARGET_BASE + workload::TCP_TARGETS,
        workload::UDP_TARGET_PORT,
        opts.cpu,
    )?;
    let mut cgroup = Cgroup::new_with(NAMING)?;
    cgroup.enter_self()?;
    let bpffs = BpffsDir::new_with(NAMING)?;
    let work = WorkDir::new()?;
    ensure_idle(node, &cgroup)?;
    let env = Env {
        opts,
        node,
        cgroup: &cgroup,
        bpffs: bpffs.path(),
        work: &work.0,
    };
    for &n in &opts.scales {
        check_interrupted()?;
        bench_scale(&env, n, out)?;
    }
    Ok(())
}

/// Node namespace settings: a route for the Service CIDR (kube-proxy's
/// nodes have a default route; without any route a connect to a ClusterIP
/// fails before netfilter sees a packet), a wide ephemeral port range, and
/// a short SYN retry budget so that a broken datapath fails in seconds.
fn setup_node(node: &Netns) -> Result<()> {
    node.cmd(&["route", "add", workload::SERVICE_CIDR, "dev", "br0"])?;
    for kv in [
        "net.ipv4.ip_local_port_range=1024 65535",
        "net.ipv4.tcp_syn_retries=1",
    ] {
        sandbox::command_stdout(node.command("sysctl").args(["-q", "-w", kv]))?;
    }
    Ok(())
}

struct Env<'a> {
    opts: &'a Options,
    node: &'a Netns,
    cgroup: &'a Cgroup,
    bpffs: &'a Path,
    work: &'a Path,
}

/// Everything one scale needs: the manifests, the Service ports as
/// kube-proxy reads them, and the peers' rule files.
struct Scale {
    w: Workload,
    manifests: PathBuf,
    /// (full, change on, change off) rule files.
    iptables: Option<(PathBuf, PathBuf, PathBuf)>,
    /// nft: the full transaction, or its chunks when it is too big for
    /// one (see `Options::nft_one_transaction_max`), and the changes.
    nft: Option<(Vec<PathBuf>, PathBuf, PathBuf)>,
}

fn bench_scale(env: &Env, n: usize, out: &mut Vec<DpResult>) -> Result<()> {
    let t = Instant::now();
    let w = Workload::new(n);
    let dir = env.work.join(format!("n{n}"));
    let manifests = dir.join("manifests");
    w.write_manifests(&manifests)?;
    let snapshot = read_manifests(&manifests, NODE_NAME);
    ensure!(snapshot.invalid.is_empty(), "{:?}", &snapshot.invalid[..1]);
    let ports = workload::service_ports(&snapshot.cluster);
    drop(snapshot);
    ensure!(
        ports.len() == n + w.udp_services() && ports.iter().all(|p| p.endpoints.len() == PODS),
        "the generated objects do not read back as {n} Services with {PODS} endpoints"
    );

    // The endpoint change, read back from the changed objects too.
    let changed_file = w.changed_service() / workload::SERVICES_PER_FILE;
    w.write_file(&manifests, changed_file, true)?;
    let after = workload::service_ports(&read_manifests(&manifests, NODE_NAME).cluster);
    w.write_file(&manifests, changed_file, false)?;
    let changes: Vec<(&ServicePort, &ServicePort)> =
        ports.iter().zip(&after).filter(|(a, b)| a != b).collect();
    ensure!(!changes.is_empty(), "the endpoint change changed nothing");
    let back: Vec<(&ServicePort, &ServicePort)> = changes.iter().map(|(a, b)| (*b, *a)).collect();

    let wants = |dp| env.opts.datapaths.contains(&dp);
    let iptables = if wants(Dp::Iptables) && n <= env.opts.iptables_max {
        let full = dir.join("iptables-full.rules");
        let on = dir.join("iptables-change-on.rules");
        let off = dir.join("iptables-change-off.rules");
        fs::write(&full, kubeproxy::iptables_full(&ports))?;
        fs::write(&on, kubeproxy::iptables_change(&after, &changes))?;
        fs::write(&off, kubeproxy::iptables_change(&ports, &back))?;
        Some((full, on, off))
    } else {
        None
    };
    let nft = if wants(Dp::Nftables) {
        let on = dir.join("nft-change-on.nft");
        let off = dir.join("nft-change-off.nft");
        let chunks = if n <= env.opts.nft_one_transaction_max {
            vec![kubeproxy::nft_full(&ports)]
        } else {
            kubeproxy::nft_full_chunks(&ports, NFT_CHUNK)
        };
        let mut files = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let file = dir.join(format!("nft-full-{i:03}.nft"));
            fs::write(&file, chunk)?;
            files.push(file);
        }
        fs::write(&on, kubeproxy::nft_change(&changes))?;
        fs::write(&off, kubeproxy::nft_change(&back))?;
        Some((files, on, off))
    } else {
        None
    };
    drop((after, ports));
    let scale = Scale {
        w,
        manifests,
        iptables,
        nft,
    };
    eprintln!(
        "[bench] {n} Services: objects and rules generated in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for &dp in &env.opts.datapaths {
        if dp == Dp::Iptables && scale.iptables.is_none() {
            continue;
        }
        check_interrupted()?;
        ensure_idle(env.node, env.cgroup)?;
        let t = Instant::now();
        let r = match dp {
            Dp::Direct => bench_direct(env, &scale),
            Dp::Ferry => bench_ferry(env, &scale),
            Dp::Iptables | Dp::Nftables => bench_rules(env, &scale, dp),
        }
        .with_context(|| format!("{dp} at {n} Services"))?;
        let mut r = r;
        r.load.1 = report::load_average();
        eprintln!(
            "[bench] {n} Services: {dp} done in {:.1} s: {}",
            t.elapsed().as_secs_f64(),
            report::one_line(&r)
        );
        out.push(r);
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

/// The TCP targets of a round: Services drawn uniformly from one stream
/// (the same for every datapath), pods from another (direct only).
fn tcp_targets(dp: Dp, w: &Workload, seed: u64, count: usize) -> Vec<SocketAddrV4> {
    let mut services = Rng::new(seed);
    let mut pods = Rng::new(seed ^ 0x5eed);
    (0..count)
        .map(|_| {
            let s = services.below(w.services);
            if dp == Dp::Direct {
                SocketAddrV4::new(Workload::pod_ip(pods.below(PODS)), Workload::target_port(s))
            } else {
                SocketAddrV4::new(Workload::cluster_ip(s), workload::SERVICE_PORT)
            }
        })
        .collect()
}

fn udp_targets(dp: Dp, w: &Workload, seed: u64, count: usize) -> Vec<SocketAddrV4> {
    let mut services = Rng::new(seed ^ 0x0d9);
    let mut pods = Rng::new(seed ^ 0x0d95eed);
    (0..count)
        .map(|_| {
            let s = services.below(w.udp_services());
            if dp == Dp::Direct {
                SocketAddrV4::new(
                    Workload::pod_ip(pods.below(PODS)),
                    workload::UDP_TARGET_PORT,
                )
            } else {
                SocketAddrV4::new(Workload::cluster_ip(s), workload::UDP_SERVICE_PORT)
            }
        })
        .collect()
}

/// The datapath serves the first and last Service, over TCP and UDP.
fn check_serves(env: &Env, dp: Dp, w: &Workload) -> Result<()> {
    let n = w.services;
    let tcp = |s: usize| {
        if dp == Dp::Direct {
            SocketAddrV4::new(Workload::pod_ip(0), Workload::target_port(s))
        } else {
            SocketAddrV4::new(Workload::cluster_ip(s), workload::SERVICE_PORT)
        }
    };
    let udp = if dp == Dp::Direct {
        SocketAddrV4::new(Workload::pod_ip(0), workload::UDP_TARGET_PORT)
    } else {
        SocketAddrV4::new(Workload::cluster_ip(0), workload::UDP_SERVICE_PORT)
    };
    let (first, last, changed) = (tcp(0), tcp(n - 1), tcp(w.changed_service()));
    env.node.run(move || -> Result<()> {
        net::check_tcp(first)?;
        net::check_tcp(last)?;
        net::check_tcp(changed)?;
        net::check_udp(udp)
    })
}

/// Data-plane rounds.
fn dataplane(env: &Env, dp: Dp, w: &Workload) -> Result<Vec<Round>> {
    let o = env.opts;
    check_serves(env, dp, w)?;
    let flow = Duration::from_secs_f64(o.flow_secs);
    let mut rounds = Vec::new();
    for r in 0..o.rounds {
        check_interrupted()?;
        let seed = o.seed.wrapping_add(r as u64 * 7919);
        let warm = tcp_targets(dp, w, seed ^ 0xa11, (o.connections / 10).max(50));
        let targets = tcp_targets(dp, w, seed, o.connections);
        let udp = udp_targets(dp, w, seed, o.udp_connects);
        let flow_target = tcp_targets(dp, w, seed ^ 0xf10, 2);
        let cpu = o.cpu;
        let round = env.node.run(move || -> Result<Round> {
            net::pin_to(cpu)?;
            net::tcp_connections(&warm)?;
            let (mut lat, wall) = net::tcp_new_connections(&targets)?;
            let conn_per_s = lat.len() as f64 / wall.as_secs_f64();
            lat.sort_unstable();
            let mut u = net::udp_connects(&udp)?;
            u.sort_unstable();
            let rr = net::rr_rate(flow_target[0], flow)?;
            let stream = net::stream_rate(flow_target[1], flow)?;
            Ok(Round {
                tcp_p50_ns: percentile(&lat, 50.0),
                tcp_p90_ns: percentile(&lat, 90.0),
                tcp_p99_ns: percentile(&lat, 99.0),
                tcp_mean_ns: mean(&lat),
                conn_per_s,
                udp_connect_p50_ns: percentile(&u, 50.0),
                udp_connect_p99_ns: percentile(&u, 99.0),
                rr_per_s: rr,
                stream_bytes_per_s: stream,
            })
        })?;
        rounds.push(round);
    }
    Ok(rounds)
}

fn bench_direct(env: &Env, s: &Scale) -> Result<DpResult> {
    let mut r = DpResult::new(Dp::Direct, s.w.services);
    r.rounds = dataplane(env, Dp::Direct, &s.w)?;
    Ok(r)
}

fn bench_ferry(env: &Env, s: &Scale) -> Result<DpResult> {
    let o = env.opts;
    let n = s.w.services;
    let mut r = DpResult::new(Dp::Ferry, n);
    let repeats = if n <= REPEAT_PROGRAM_MAX {
        o.program_repeats.max(1)
    } else {
        1
    };
    for rep in 0..repeats {
        check_interrupted()?;
        let root = env.bpffs.join(format!("n{n}-{rep}"));
        let (mut agent, stages) = Agent::start(
            &s.manifests,
            &root,
            env.cgroup.path(),
            env.node.path(),
            s.w.changed_service(),
            PROGRAM_TIMEOUT,
        )?;
        r.program.push(Program {
            wall_us: stages.total_us(),
            peak_rss_kib: stages.hwm_kib,
            transactions: 1,
            stages: Some(stages.clone()),
        });
        r.agent_rss_kib = stages.rss_kib;
        if rep + 1 < repeats {
            agent.exit()?;
            continue; // dropping the agent removes the datapath
        }
        r.rounds = dataplane(env, Dp::Ferry, &s.w)?;
        r.bpf = bpf_rounds(env, &s.w, agent.bpffs())?;
        r.map_memory = ferry::map_memory(agent.bpffs())?;
        if n == o.change_scale {
            let file = s.w.changed_service() / workload::SERVICES_PER_FILE;
            for i in 0..o.change_repeats {
                check_interrupted()?;
                let on = i % 2 == 0;
                s.w.write_file(&s.manifests, file, on)?;
                let st = agent.change("file")?;
                r.change.push(Change {
                    wall_us: st.total_us(),
                    peak_rss_kib: st.hwm_kib,
                    stages: Some(st),
                });
            }
            if o.change_repeats % 2 == 1 {
                s.w.write_file(&s.manifests, file, false)?;
                agent.change("file")?;
            }
            // The in-memory changes swap objects into the snapshot the agent was
            // programmed from; the file passes above gave it new objects.
            // Back to those first (untimed), as a watch-fed agent would be.
            agent.change("mem off")?;
            for i in 0..o.change_repeats.div_ceil(2) * 2 {
                check_interrupted()?;
                let st = agent.change(if i % 2 == 0 { "mem on" } else { "mem off" })?;
                r.change_in_memory.push(Change {
                    wall_us: st.total_us(),
                    peak_rss_kib: st.hwm_kib,
                    stages: Some(st),
                });
            }
            check_serves(env, Dp::Ferry, &s.w)?;
        }
        let last = agent.exit()?;
        r.agent_hwm_kib = last.hwm_kib;
    }
    Ok(r)
}

/// The connect4 program's own run time per call, with BPF run time stats
/// on only for these rounds (they cost two clock reads per run).
fn bpf_rounds(env: &Env, w: &Workload, bpffs: &Path) -> Result<Vec<BpfRound>> {
    let o = env.opts;
    let id = ferry::program_id(bpffs, lb_common::programs::CONNECT4)?;
    let _stats = ferry::enable_bpf_stats()?;
    let mut out = Vec::new();
    for r in 0..o.rounds {
        check_interrupted()?;
        let seed = o.seed.wrapping_add(0xb9f + r as u64);
        let tcp = tcp_targets(Dp::Ferry, w, seed, o.connections);
        let udp = udp_targets(Dp::Ferry, w, seed, o.udp_connects);
        let s0 = ferry::program_stats(id)?;
        env.node.run(|| {
            net::pin_to(o.cpu)?;
            net::tcp_connections(&tcp)
        })?;
        let s1 = ferry::program_stats(id)?;
        env.node.run(|| {
            net::pin_to(o.cpu)?;
            net::udp_connects(&udp)
        })?;
        let s2 = ferry::program_stats(id)?;
        let per = |a: (u64, u64), b: (u64, u64)| {
            let calls = b.1.saturating_sub(a.1);
            (b.0.saturating_sub(a.0) as f64 / calls.max(1) as f64, calls)
        };
        let (tcp_ns, tcp_calls) = per(s0, s1);
        let (udp_ns, udp_calls) = per(s1, s2);
        out.push(BpfRound {
            tcp_ns_per_call: tcp_ns,
            tcp_calls,
            udp_ns_per_call: udp_ns,
            udp_calls,
        });
    }
    Ok(out)
}

fn bench_rules(env: &Env, s: &Scale, dp: Dp) -> Result<DpResult> {
    let o = env.opts;
    let n = s.w.services;
    let mut r = DpResult::new(dp, n);
    let ns = env.node.path();
    // The system's iptables (the nf_tables backend on Debian), as
    // kube-proxy runs it: --noflush for partial syncs; full syncs without
    // it (see `kubeproxy::iptables_full`).
    let restore = |file: &Path, noflush: bool| {
        let args: &[&str] = if noflush {
            &["-w", "5", "--noflush", "--counters"]
        } else {
            &["-w", "5", "--counters"]
        };
        run_timed_in(ns, "iptables-restore", args, Some(file), PROGRAM_TIMEOUT)
    };
    let nft = |file: &Path| {
        run_timed_in(
            ns,
            "nft",
            &["-f", &file.to_string_lossy()],
            None,
            PROGRAM_TIMEOUT,
        )
    };
    let (full, on, off): (Vec<PathBuf>, &PathBuf, &PathBuf) = match dp {
        Dp::Iptables => {
            let (full, on, off) = s.iptables.as_ref().expect("checked by the caller");
            (vec![full.clone()], on, off)
        }
        _ => {
            let (full, on, off) = s.nft.as_ref().expect("wanted");
            (full.clone(), on, off)
        }
    };
    for f in &full {
        let text = fs::read_to_string(f)?;
        r.rule_lines += text.lines().count();
        r.rule_bytes += text.len();
    }
    let _rules = Rules(env.node);
    let repeats = if n <= REPEAT_PROGRAM_MAX {
        o.program_repeats.max(1)
    } else {
        1
    };
    for rep in 0..repeats {
        check_interrupted()?;
        if rep > 0 {
            flush_rules(env.node)?;
        }
        let mut program = Program {
            transactions: full.len(),
            ..Program::default()
        };
        for f in &full {
            let t = if dp == Dp::Iptables {
                restore(f, false)?
            } else {
                nft(f)?
            };
            program.wall_us += t.wall.as_micros() as u64;
            program.peak_rss_kib = program.peak_rss_kib.max(t.max_rss_kib);
        }
        r.program.push(program);
    }
    r.rounds = dataplane(env, dp, &s.w)?;
    if n == o.change_scale {
        let reps = o.change_repeats.div_ceil(2) * 2;
        for i in 0..reps {
            check_interrupted()?;
            let file = if i % 2 == 0 { on } else { off };
            let t = if dp == Dp::Iptables {
                restore(file, true)?
            } else {
                nft(file)?
            };
            r.change.push(Change {
                wall_us: t.wall.as_micros() as u64,
                peak_rss_kib: t.max_rss_kib,
                stages: None,
            });
        }
        check_serves(env, dp, &s.w)?;
    }
    Ok(r)
}

/// Writes the manifests and the peers' rule files for `n` Services into
/// `dir` (for inspecting them, or timing them by hand).
pub fn write_inputs(n: usize, dir: &Path) -> Result<()> {
    let w = Workload::new(n);
    let manifests = dir.join("manifests");
    w.write_manifests(&manifests)?;
    let ports = workload::service_ports(&read_manifests(&manifests, NODE_NAME).cluster);
    let changed_file = w.changed_service() / workload::SERVICES_PER_FILE;
    w.write_file(&manifests, changed_file, true)?;
    let after = workload::service_ports(&read_manifests(&manifests, NODE_NAME).cluster);
    w.write_file(&manifests, changed_file, false)?;
    let changes: Vec<(&ServicePort, &ServicePort)> =
        ports.iter().zip(&after).filter(|(a, b)| a != b).collect();
    let back: Vec<(&ServicePort, &ServicePort)> = changes.iter().map(|(a, b)| (*b, *a)).collect();
    fs::write(
        dir.join("iptables-full.rules"),
        kubeproxy::iptables_full(&ports),
    )?;
    fs::write(
        dir.join("iptables-change-on.rules"),
        kubeproxy::iptables_change(&after, &changes),
    )?;
    fs::write(
        dir.join("iptables-change-off.rules"),
        kubeproxy::iptables_change(&ports, &back),
    )?;
    fs::write(dir.join("nft-full.nft"), kubeproxy::nft_full(&ports))?;
    fs::write(
        dir.join("nft-change-on.nft"),
        kubeproxy::nft_change(&changes),
    )?;
    fs::write(dir.join("nft-change-off.nft"), kubeproxy::nft_change(&back))?;
    Ok(())
}

/// Fails unless `dir` is a directory we may write the report into.
pub fn check_out_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    Ok(())
}
