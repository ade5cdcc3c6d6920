//! The bench's command line, as `cargo xtask` offers it (xtask flattens
//! [`Task`] into its own subcommands and calls [`run_task`]).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Task {
    /// Benchmark Ferry against the direct path and kube-proxy's iptables
    /// and nftables datapaths at 1 to 100,000 Services (needs root; a full
    /// run takes a while, --quick under a minute). Writes a Markdown
    /// report, its JSON and SVG plots under bench/results/.
    Bench(BenchArgs),
    /// Write the bench's manifests and kube-proxy-shaped rule files for N
    /// Services into a directory, to read or time them by hand.
    BenchInputs {
        #[arg(long)]
        services: usize,
        #[arg(long)]
        out_dir: std::path::PathBuf,
    },
    /// The north-south program's cost per packet by BPF_PROG_TEST_RUN
    /// (floor, miss, established, new flow) at several numbers of external
    /// frontends; prints a Markdown table (needs root).
    BenchPackets {
        /// Numbers of external frontends.
        #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
        scales: Vec<u32>,
        /// New flows (single runs) per scale.
        #[arg(long, default_value_t = 20_000)]
        new_flows: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// An outside client's new connections through node1 of the north-
    /// south namespace topology: direct to the pods, Ferry with XDP, Ferry
    /// with tc alone, kube-proxy-shaped iptables and nftables rules, at N
    /// load balancer Services; prints a Markdown table (needs root).
    BenchNorthSouth {
        /// Numbers of Services.
        #[arg(long, value_delimiter = ',', default_value = "1,1000,10000")]
        scales: Vec<usize>,
        /// New connections timed per datapath and scale.
        #[arg(long, default_value_t = 2000)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// One endpoint change through `ferry agent` (the real binary, watching
    /// the API server fixture), from the write at the API to the map entry
    /// visible in the pinned map, at N Services: p50 and p99 of lone
    /// changes; prints a Markdown table (needs root).
    BenchAgentChange {
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Changes timed.
        #[arg(long, default_value_t = 100)]
        changes: usize,
    },
    /// The bench's agent process (started by `bench`).
    #[command(hide = true)]
    BenchAgent(crate::AgentArgs),
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Small scales and few repetitions: a smoke test of the tooling.
    #[arg(long)]
    quick: bool,
    /// Only the socket-path sections (connections, connect4's run time,
    /// programming): no agent change and no north-south sections. For
    /// comparing a change of the connect path before and after.
    #[arg(long)]
    socket_only: bool,
    /// Numbers of Services (default: 1,1000,10000,30000,100000; quick:
    /// 1,1000).
    #[arg(long, value_delimiter = ',')]
    scales: Option<Vec<usize>>,
    /// Datapaths to measure (default: all).
    #[arg(long, value_delimiter = ',', value_enum)]
    datapaths: Option<Vec<crate::Dp>>,
    /// Largest scale for the iptables datapath.
    #[arg(long, default_value_t = 30_000)]
    iptables_max: usize,
    /// Above this scale the nftables ruleset is loaded in transactions of
    /// 5,000 Service ports (one transaction is quadratic in nf_tables).
    #[arg(long, default_value_t = 10_000)]
    nft_one_transaction_max: usize,
    /// Data-plane rounds per datapath and scale (default 5; quick 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Fresh TCP connections per round (default 5000; quick 1000).
    #[arg(long)]
    connections: Option<usize>,
    /// UDP connects per round (default 20000; quick 2000).
    #[arg(long)]
    udp_connects: Option<usize>,
    /// Seconds per established-flow test (default 2; quick 0.3).
    #[arg(long)]
    flow_secs: Option<f64>,
    /// Times programming from nothing is repeated (default 3; quick 2).
    #[arg(long)]
    program_repeats: Option<usize>,
    /// Scale of the one-endpoint-change test (default 10000; quick: the
    /// largest scale).
    #[arg(long)]
    change_scale: Option<usize>,
    /// Endpoint changes timed (default 10; quick 4).
    #[arg(long)]
    change_repeats: Option<usize>,
    /// Where the report goes (default: bench/results in the workspace).
    #[arg(long)]
    out_dir: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// CPU to pin the client and server threads to, so that a connection
    /// costs its datapath's work and not cross-CPU wake-ups (default: the
    /// last CPU).
    #[arg(long)]
    cpu: Option<usize>,
    /// Do not pin the client and server threads.
    #[arg(long, conflicts_with = "cpu")]
    no_pin: bool,
}

/// The workspace root (the parent of this crate).
fn workspace_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bench crate lives in the workspace")
        .to_path_buf()
}

/// A debug build measures nothing worth reporting (Ferry's control plane
/// runs in this process' agent child, or in the `ferry` binary): build the
/// release xtask and `ferry` (which `bench-agent-change` runs, next to
/// xtask) and run the bench there instead.
fn reexec_release() -> Result<()> {
    use std::os::unix::process::CommandExt as _;
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("[bench] building the release xtask and ferry");
    let status = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "xtask",
            "-p",
            "lb-userspace",
        ])
        .status()
        .context("running cargo build --release")?;
    if !status.success() {
        bail!("building the release xtask failed ({status})");
    }
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(|p| p.parent())
        .context("locating the target directory")?;
    let release = target.join("release").join("xtask");
    let err = Command::new(&release)
        .args(std::env::args_os().skip(1))
        .exec();
    bail!("running {}: {err}", release.display())
}

fn bench(a: BenchArgs) -> Result<()> {
    if cfg!(debug_assertions) {
        return reexec_release();
    }
    let q = a.quick;
    let scales = a.scales.unwrap_or_else(|| {
        if q {
            vec![1, 1000]
        } else {
            vec![1, 1000, 10_000, 30_000, 100_000]
        }
    });
    anyhow::ensure!(
        !scales.is_empty() && scales.iter().all(|n| (1..=100_000).contains(n)),
        "scales must be between 1 and 100,000 (Ferry's map capacities)"
    );
    let pick =
        |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
    let opts =
        crate::Options {
            quick: q,
            socket_only: a.socket_only,
            change_scale: a.change_scale.unwrap_or(if q {
                *scales.iter().max().expect("not empty")
            } else {
                10_000
            }),
            scales,
            iptables_max: a.iptables_max,
            nft_one_transaction_max: a.nft_one_transaction_max,
            datapaths: a.datapaths.unwrap_or_else(|| {
                vec![
                    crate::Dp::Direct,
                    crate::Dp::Ferry,
                    crate::Dp::Iptables,
                    crate::Dp::Nftables,
                ]
            }),
            rounds: pick(a.rounds, 5, 3).max(1),
            connections: pick(a.connections, 5000, 1000).max(10),
            udp_connects: pick(a.udp_connects, 20_000, 2000).max(10),
            flow_secs: a.flow_secs.unwrap_or(if q { 0.3 } else { 2.0 }),
            program_repeats: pick(a.program_repeats, 3, 2).max(1),
            change_repeats: pick(a.change_repeats, 10, 4).max(2),
            new_flows: if q { 2000 } else { 20_000 },
            north_south_connections: if q { 300 } else { 2000 },
            out_dir: a
                .out_dir
                .unwrap_or_else(|| workspace_root().join("bench").join("results")),
            seed: a.seed,
            cpu: if a.no_pin {
                None
            } else {
                Some(a.cpu.unwrap_or_else(|| {
                    std::thread::available_parallelism().map_or(0, |n| n.get() - 1)
                }))
            },
        };
    crate::check_out_dir(&opts.out_dir)?;
    let report = crate::run(opts)?;
    println!("{}", report.display());
    Ok(())
}

/// Runs one of the bench's tasks.
pub fn run_task(task: Task) -> Result<()> {
    match task {
        Task::Bench(a) => bench(a),
        Task::BenchAgent(a) => crate::agent_main(a),
        Task::BenchInputs { services, out_dir } => crate::write_inputs(services, &out_dir),
        Task::BenchAgentChange { services, changes } => {
            if cfg!(debug_assertions) {
                return reexec_release();
            }
            let figures = crate::agent_change::run(services, changes)?;
            print!("{}", figures.markdown());
            Ok(())
        }
        Task::BenchNorthSouth {
            scales,
            connections,
            seed,
        } => {
            if cfg!(debug_assertions) {
                return reexec_release();
            }
            let rows = crate::north_south::run(&scales, connections, seed)?;
            print!("{}", crate::north_south::markdown(&rows));
            Ok(())
        }
        Task::BenchPackets {
            scales,
            new_flows,
            seed,
        } => {
            let rows = crate::packets::run(&scales, new_flows, seed)?;
            print!("{}", crate::packets::markdown(&rows));
            Ok(())
        }
    }
}
