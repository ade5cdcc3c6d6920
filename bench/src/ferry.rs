//! Ferry's side: the agent (a child process running Ferry's own pipeline:
//! manifests → `model::Incremental` → `Datapath::sync`, each stage timed), the
//! datapath guard, the programs' run time counters and the maps' memory.
//!
//! The agent is this binary again (`xtask bench-agent`), so its peak RSS
//! is that of a process doing exactly the agent's work, and the parent
//! can ask it for changes over a pipe while it keeps its state, as a
//! running agent does. It runs the same library calls `ferry standalone`
//! runs (`reconcile_with` split into its stages), without the tokio
//! runtime, file watcher and health server around them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{FromRawFd as _, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use lb_userspace::datapath::{self, BpffsDir, Datapath};
use lb_userspace::model::{self, ClusterState, Incremental};
use lb_userspace::netutil;
use lb_userspace::source::manifests::ManifestReader;
use serde::{Deserialize, Serialize};

use super::proc::{check_interrupted, rss_of, stdout_of};
use super::workload::{NODE_NAME, Workload};

/// Arguments of the hidden `bench-agent` subcommand.
#[derive(Debug, clap::Args)]
pub struct AgentArgs {
    #[arg(long)]
    pub manifests: PathBuf,
    #[arg(long)]
    pub bpffs: PathBuf,
    #[arg(long)]
    pub cgroup: PathBuf,
    /// The node namespace (its cookie protects NodePorts; none here).
    #[arg(long)]
    pub netns: PathBuf,
    /// Index of the Service whose slice in-memory changes modify.
    #[arg(long)]
    pub changed_service: usize,
}

/// One pass' stage times, µs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Stages {
    /// Loading and attaching the programs (first pass only).
    pub load_us: u64,
    /// Getting the objects: reading and parsing every manifest file, or
    /// (in-memory changes) swapping one object in the snapshot.
    pub read_us: u64,
    pub compute_us: u64,
    pub sync_us: u64,
    pub changes: usize,
    pub frontends: usize,
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Stages {
    /// From the objects to the maps (what "programming" means here).
    pub fn total_us(&self) -> u64 {
        self.read_us + self.compute_us + self.sync_us
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Event {
    event: String,
    #[serde(flatten)]
    stages: Stages,
}

fn node_info() -> model::NodeInfo {
    model::node_info(None, NODE_NAME, &[IpAddr::V4(Ipv4Addr::new(10, 244, 0, 1))])
}

/// One pass, as the agent's control loop runs it: `model` is held across
/// passes, so an in-memory change costs what changed.
fn pass(
    dp: &mut Datapath,
    model: &mut Incremental,
    cluster: &ClusterState,
    stages: &mut Stages,
) -> Result<()> {
    let t = Instant::now();
    let computed = model.compute(cluster, &node_info());
    stages.compute_us = t.elapsed().as_micros() as u64;
    ensure!(
        computed.invalid.is_empty(),
        "the model skipped objects: {:?}",
        &computed.invalid[..computed.invalid.len().min(3)]
    );
    let t = Instant::now();
    let report = dp.sync(&computed.desired);
    stages.sync_us = t.elapsed().as_micros() as u64;
    ensure!(
        report.errors.is_empty(),
        "sync failed: {:?}",
        &report.errors[..report.errors.len().min(3)]
    );
    stages.changes = report.changes;
    stages.frontends = computed.desired.frontends.len();
    let (rss, hwm) = rss_of("self")?;
    stages.rss_kib = rss;
    stages.hwm_kib = hwm;
    Ok(())
}

fn emit(event: &str, stages: &Stages) -> Result<()> {
    let line = serde_json::to_string(&Event {
        event: event.into(),
        stages: stages.clone(),
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// The agent process: program everything, then serve change requests read
/// from stdin ("file", "mem on", "mem off", "exit").
pub fn agent_main(a: AgentArgs) -> Result<()> {
    let cookie = netutil::netns_cookie(Some(&a.netns)).context("node netns cookie")?;
    let mut stages = Stages::default();
    let t = Instant::now();
    let mut dp = Datapath::start(&BpffsDir::new(&a.bpffs), &a.cgroup, cookie, None)
        .map_err(|e| anyhow!("starting the datapath: {e}"))?;
    stages.load_us = t.elapsed().as_micros() as u64;

    let t = Instant::now();
    // One reader for the agent's life, as `ferry standalone`'s watcher
    // keeps: a later read parses only the files that changed.
    let mut reader = ManifestReader::new(&a.manifests, NODE_NAME);
    let snapshot = reader.read();
    stages.read_us = t.elapsed().as_micros() as u64;
    ensure!(
        snapshot.invalid.is_empty(),
        "unreadable manifests: {:?}",
        &snapshot.invalid[..snapshot.invalid.len().min(3)]
    );
    let mut model = Incremental::new();
    pass(&mut dp, &mut model, &snapshot.cluster, &mut stages)?;
    emit("programmed", &stages)?;

    // The in-memory change: the changed Service's slice with its last
    // endpoint not ready, swapped into a copy of the snapshot (what an API
    // watch delivering one EndpointSlice update amounts to).
    let base = snapshot.cluster.clone();
    drop(snapshot);
    let name = Workload::service_name(a.changed_service);
    let index = base
        .endpoint_slices
        .iter()
        .position(|s| s.service_name.as_ref() == Some(&name))
        .ok_or_else(|| anyhow!("no slice for {name}"))?;
    let mut changed_slice = (*base.endpoint_slices[index]).clone();
    if let Some(ep) = changed_slice.endpoints.last_mut() {
        ep.conditions.ready = Some(false);
        ep.conditions.serving = Some(false);
    }
    let changed_slice = Arc::new(changed_slice);

    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut stages = Stages::default();
        match line.trim() {
            "file" => {
                let t = Instant::now();
                let snapshot = reader.read();
                stages.read_us = t.elapsed().as_micros() as u64;
                pass(&mut dp, &mut model, &snapshot.cluster, &mut stages)?;
            }
            cmd @ ("mem on" | "mem off") => {
                let t = Instant::now();
                let mut cluster = base.clone();
                if cmd == "mem on" {
                    cluster.endpoint_slices[index] = changed_slice.clone();
                }
                stages.read_us = t.elapsed().as_micros() as u64;
                pass(&mut dp, &mut model, &cluster, &mut stages)?;
            }
            "exit" => {
                let (rss, hwm) = rss_of("self")?;
                stages.rss_kib = rss;
                stages.hwm_kib = hwm;
                emit("exit", &stages)?;
                return Ok(());
            }
            other => bail!("unknown agent command {other:?}"),
        }
        emit("changed", &stages)?;
    }
    Ok(())
}

/// The parent's handle on a running agent. Dropping it kills the agent
/// (if still running) and then removes the datapath (detaches the
/// programs, unpins the maps).
pub(crate) struct Agent {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    bpffs: PathBuf,
}

impl Agent {
    /// Starts the agent and waits (at most `timeout`) until it programmed
    /// everything.
    pub(crate) fn start(
        manifests: &Path,
        bpffs: &Path,
        cgroup: &Path,
        netns: &Path,
        changed_service: usize,
        timeout: Duration,
    ) -> Result<(Agent, Stages)> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("bench-agent")
            .arg("--manifests")
            .arg(manifests)
            .arg("--bpffs")
            .arg(bpffs)
            .arg("--cgroup")
            .arg(cgroup)
            .arg("--netns")
            .arg(netns)
            .arg("--changed-service")
            .arg(changed_service.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting the bench agent")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Agent {
            child: Some(child),
            stdin,
            lines: rx,
            bpffs: bpffs.to_path_buf(),
        };
        let stages = agent.next("programmed", timeout)?;
        Ok((agent, stages))
    }

    fn next(&mut self, want: &str, timeout: Duration) -> Result<Stages> {
        let deadline = Instant::now() + timeout;
        loop {
            check_interrupted()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("the bench agent did not answer within {timeout:?}");
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    let ev: Event = serde_json::from_str(&line)
                        .with_context(|| format!("agent said {line:?}"))?;
                    ensure!(
                        ev.event == want,
                        "agent said {:?}, expected {want}",
                        ev.event
                    );
                    return Ok(ev.stages);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    bail!("the bench agent exited ({status:?}); see its errors above");
                }
            }
        }
    }

    /// Sends a command ("file", "mem on", "mem off") and returns its pass.
    pub(crate) fn change(&mut self, cmd: &str) -> Result<Stages> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("agent gone"))?;
        writeln!(stdin, "{cmd}")?;
        stdin.flush()?;
        self.next("changed", Duration::from_secs(600))
    }

    /// Asks the agent to exit and returns its last memory figures; the
    /// datapath stays until the handle is dropped.
    pub(crate) fn exit(&mut self) -> Result<Stages> {
        let stdin = self.stdin.as_mut().ok_or_else(|| anyhow!("agent gone"))?;
        writeln!(stdin, "exit")?;
        stdin.flush()?;
        let stages = self.next("exit", Duration::from_secs(30))?;
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            c.wait()?;
        }
        Ok(stages)
    }

    /// The datapath's bpffs directory.
    pub(crate) fn bpffs(&self) -> &Path {
        &self.bpffs
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Err(e) = datapath::cleanup(&BpffsDir::new(&self.bpffs)) {
            eprintln!(
                "bench: removing Ferry's datapath at {}: {e}",
                self.bpffs.display()
            );
        }
    }
}

/// BPF_ENABLE_STATS: run time statistics are on while this lives (the
/// kernel turns them off when the fd closes, also if we die), so the
/// `kernel.bpf_stats_enabled` sysctl is never touched.
pub(crate) struct BpfStats(
    #[expect(
        dead_code,
        reason = "held only so that the statistics stay on while it lives"
    )]
    OwnedFd,
);

pub(crate) fn enable_bpf_stats() -> Result<BpfStats> {
    const BPF_ENABLE_STATS: libc::c_long = 32;
    let attr: u32 = 0; // BPF_STATS_RUN_TIME
    // SAFETY: bpf(2) with a 4-byte attr, as the command defines it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_ENABLE_STATS,
            &attr as *const u32,
            std::mem::size_of::<u32>() as u32,
        )
    };
    if fd < 0 {
        bail!("BPF_ENABLE_STATS: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a new fd we own.
    Ok(BpfStats(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

fn bpftool_json(args: &[&str]) -> Result<serde_json::Value> {
    let mut full = vec!["-j"];
    full.extend_from_slice(args);
    let out = stdout_of("bpftool", &full);
    ensure!(!out.is_empty(), "bpftool {} failed", args.join(" "));
    Ok(serde_json::from_str(&out)?)
}

/// The id of the program behind the pinned link of `program`.
pub(crate) fn program_id(bpffs: &Path, program: &str) -> Result<u64> {
    let prefix = format!("{program}@");
    let link = std::fs::read_dir(bpffs.join("links"))?
        .filter_map(Result::ok)
        .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .ok_or_else(|| anyhow!("no pinned link for {program}"))?
        .path();
    let v = bpftool_json(&["link", "show", "pinned", &link.to_string_lossy()])?;
    v["prog_id"]
        .as_u64()
        .ok_or_else(|| anyhow!("no prog_id in {v}"))
}

/// (run_time_ns, run_cnt) of a program.
pub(crate) fn program_stats(id: u64) -> Result<(u64, u64)> {
    let v = bpftool_json(&["prog", "show", "id", &id.to_string()])?;
    Ok((
        v["run_time_ns"].as_u64().unwrap_or(0),
        v["run_cnt"].as_u64().unwrap_or(0),
    ))
}

/// Kernel memory of every pinned map (bytes_memlock), by name.
pub(crate) fn map_memory(bpffs: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(bpffs.join("maps"))?.filter_map(Result::ok) {
        let v = bpftool_json(&["map", "show", "pinned", &e.path().to_string_lossy()])?;
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            v["bytes_memlock"].as_u64().unwrap_or(0),
        ));
    }
    out.sort();
    Ok(out)
}
