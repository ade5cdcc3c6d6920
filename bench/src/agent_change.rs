//! One endpoint change through what users run: `ferry agent` watching the
//! API server fixture (`sandbox::apiserver`), timed from the write at the
//! API to the map entry being visible in the pinned `FRONTENDS4` map.
//!
//! The agent is the real binary with its whole path: the watch event, the
//! store and its snapshot, the debounce, the incremental recompute, the
//! sync. The bench writes Service `changed_service()`'s EndpointSlice with
//! its last endpoint not ready (or ready again, alternately) and polls the
//! frontend's backend count in the map until it shows the change. Changes
//! are a quiet period apart, so each is a lone change (a burst is batched
//! by the debounce, see `lb_userspace::reconcile::Debounce`).
//!
//! Nothing carries traffic: the programs attach to an empty child cgroup
//! of the bench's own naming, and the agent runs without north-south.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aya::maps::{HashMap, Map, MapData};
use lb_common::{Frontend4Key, FrontendValue, PROTO_TCP};
use sandbox::apiserver::ApiServer;
use sandbox::util::free_local_port;
use sandbox::{BpffsDir, Cgroup, Ferry, FerryOptions};
use serde::Serialize;

use super::NAMING;
use super::proc::{check_interrupted, install_signal_handlers};
use super::stats::percentile;
use super::workload::{NODE_NAME, PODS, SERVICE_PORT, Workload};

/// How long the agent may take to program every Service at the start.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one change may take to show in the map before it is an error.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pace of the map polling: the resolution of the figures.
const POLL: Duration = Duration::from_micros(100);
/// Time between changes: longer than the debounce's quiet time, so each
/// change is a lone one.
const QUIET: Duration = Duration::from_millis(200);

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct AgentChange {
    pub services: usize,
    /// API write → map entry visible, µs, one per change, sorted.
    pub latencies_us: Vec<u64>,
    /// Agent start → every Service's frontend in the map, s.
    pub programmed_after_s: f64,
}

impl AgentChange {
    pub fn p50_ms(&self) -> f64 {
        percentile(&self.latencies_us, 50.0) as f64 / 1e3
    }

    pub fn p99_ms(&self) -> f64 {
        percentile(&self.latencies_us, 99.0) as f64 / 1e3
    }

    /// The Markdown table `bench-agent-change` prints.
    pub fn markdown(&self) -> String {
        let min = self.latencies_us.first().copied().unwrap_or(0) as f64 / 1e3;
        let max = self.latencies_us.last().copied().unwrap_or(0) as f64 / 1e3;
        format!(
            "| Services | changes | p50, ms | p99, ms | min, ms | max, ms | programmed all after, s |\n\
             |---:|---:|---:|---:|---:|---:|---:|\n\
             | {} | {} | {:.2} | {:.2} | {min:.2} | {max:.2} | {:.1} |\n",
            self.services,
            self.latencies_us.len(),
            self.p50_ms(),
            self.p99_ms(),
            self.programmed_after_s,
        )
    }
}

/// The backend count of the frontend `key` in the pinned map (None: no
/// such entry).
fn count(map: &HashMap<MapData, Frontend4Key, FrontendValue>, key: &Frontend4Key) -> Option<u16> {
    map.get(key, 0).ok().map(|v| v.count)
}

/// Polls the map until the frontend's count is `want`, at most `timeout`.
fn wait_count(
    map: &HashMap<MapData, Frontend4Key, FrontendValue>,
    key: &Frontend4Key,
    want: u16,
    timeout: Duration,
    ferry: &mut Ferry,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut polls = 0u32;
    loop {
        if count(map, key) == Some(want) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the frontend's backend count was {:?}, not {want}, after {timeout:?}; the agent's log ends with:\n{}",
                count(map, key),
                ferry.log_tail(20)
            );
        }
        polls += 1;
        if polls.is_multiple_of(10_000) && !ferry.is_running() {
            bail!("the agent exited:\n{}", ferry.log_tail(20));
        }
        std::thread::sleep(POLL);
    }
}

/// The target: a lone change through the agent, p50.
pub const TARGET_P50_MS: f64 = 10.0;

/// Runs the measurement: `services` Services (10 endpoints each) at the
/// API server, the agent started on them, `changes` lone changes.
pub fn run(services: usize, changes: usize) -> Result<AgentChange> {
    anyhow::ensure!(
        sandbox::is_root(),
        "bench-agent-change needs root (a cgroup, bpffs, eBPF programs)"
    );
    anyhow::ensure!(changes >= 2, "--changes must be at least 2");
    let workload = Workload::new(services);
    let changed = workload.changed_service();

    install_signal_handlers();
    let stale = sandbox::sweep::sweep_stale_with(NAMING);
    if !stale.is_empty() {
        eprintln!("[bench] removed what a killed run left behind: {stale:?}");
    }
    let api = ApiServer::start_with(NAMING).context("starting the API server fixture")?;
    for s in 0..services {
        api.apply(workload.service_json(s))?;
        api.apply(workload.slice_json(s, false))?;
    }
    // Guards drop in reverse: the agent is stopped and cleaned up first.
    let cgroup = Cgroup::new_with(NAMING)?;
    let bpffs = BpffsDir::new_with(NAMING)?;
    let started = Instant::now();
    let mut ferry = Ferry::start(
        FerryOptions::agent(api.kubeconfig(), cgroup.path(), bpffs.path())
            .node(NODE_NAME, [IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))])
            .arg("--healthz-bind-address")
            .arg(&format!("127.0.0.1:{}", free_local_port()?))
            .arg("--metrics-bind-address")
            .arg(&format!("127.0.0.1:{}", free_local_port()?))
            .naming(NAMING)
            .quiet(),
    )?;
    let key = Frontend4Key {
        addr: Workload::cluster_ip(changed).octets(),
        port: SERVICE_PORT.to_be(),
        proto: PROTO_TCP,
        _pad: 0,
    };
    let last = Frontend4Key {
        addr: Workload::cluster_ip(services - 1).octets(),
        ..key
    };
    let pods = u16::try_from(PODS).expect("a few pods");
    // The pinned map exists once the agent has loaded its programs.
    let map = sandbox::util::wait_until(
        "the agent's pinned FRONTENDS4",
        PROGRAM_TIMEOUT,
        Duration::from_millis(50),
        || {
            if !ferry.is_running() {
                bail!("the agent exited:\n{}", ferry.log_tail(20));
            }
            let path = bpffs.layout().map(lb_common::maps::FRONTENDS4);
            Ok(match MapData::from_pin(&path) {
                Ok(data) => sandbox::util::Wait::Done(HashMap::try_from(Map::HashMap(data))?),
                Err(e) => sandbox::util::Wait::Pending(format!("{}: {e}", path.display())),
            })
        },
    )?;
    wait_count(&map, &last, pods, PROGRAM_TIMEOUT, &mut ferry)?;
    wait_count(&map, &key, pods, PROGRAM_TIMEOUT, &mut ferry)?;
    let programmed_after = started.elapsed();
    eprintln!(
        "[bench] {services} Services programmed after {:.1} s; {changes} changes",
        programmed_after.as_secs_f64()
    );

    let mut latencies_us = Vec::with_capacity(changes);
    for i in 0..changes {
        check_interrupted()?;
        std::thread::sleep(QUIET);
        let not_ready = i % 2 == 0;
        let slice = workload.slice_json(changed, not_ready);
        let want = if not_ready { pods - 1 } else { pods };
        let at = Instant::now();
        api.apply(slice)?;
        wait_count(&map, &key, want, CHANGE_TIMEOUT, &mut ferry)
            .with_context(|| format!("change #{i}"))?;
        latencies_us.push(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    ferry.stop()?;
    latencies_us.sort_unstable();
    Ok(AgentChange {
        services,
        latencies_us,
        programmed_after_s: programmed_after.as_secs_f64(),
    })
}
