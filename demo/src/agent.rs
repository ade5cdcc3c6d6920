//! The agent the demo shows: a real `ferry standalone` child process (this
//! same executable), so the demo exercises exactly what an operator runs.
//! Dropping the guard stops it and runs `ferry cleanup`, which detaches the
//! programs and removes the pins.

use std::fs::{self, File};
use std::net::IpAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use super::interrupt;
use crate::sandbox::{cgroup2_root, command_stdout, util::describe};

/// How long a SIGTERM'd agent gets before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Pace of `wait_until`'s polling.
const POLL: Duration = Duration::from_millis(100);

/// Where the agent runs and on what.
pub struct AgentConfig<'a> {
    pub manifests: &'a Path,
    /// A child cgroup the demo made; never the root.
    pub cgroup: &'a Path,
    pub bpffs_dir: &'a Path,
    pub node_name: &'a str,
    pub node_ip: IpAddr,
    /// The demo's node namespace, where binds may not take a NodePort.
    pub host_netns: &'a Path,
    /// The agent's stdout and stderr go here.
    pub log: &'a Path,
}

/// A running `ferry standalone`; see the module docs.
pub struct Agent {
    exe: PathBuf,
    cgroup: PathBuf,
    bpffs_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    /// Whether `ferry cleanup` still has to run.
    needs_cleanup: bool,
    /// The command line, for people.
    pub command_line: String,
}

/// Refuses the cgroup2 root (attaching there would capture every process
/// of the host) and anything outside the hierarchy.
fn check_cgroup(cgroup: &Path) -> Result<()> {
    let root = cgroup2_root()?.canonicalize()?;
    let cg = cgroup
        .canonicalize()
        .with_context(|| format!("resolving {}", cgroup.display()))?;
    ensure!(
        cg != root && cg.starts_with(&root),
        "refusing to attach to {}: the demo only attaches to a child cgroup of {}",
        cg.display(),
        root.display()
    );
    Ok(())
}

impl Agent {
    pub fn start(cfg: &AgentConfig) -> Result<Agent> {
        check_cgroup(cfg.cgroup)?;
        let exe = std::env::current_exe().context("finding this executable")?;
        let mut cmd = Command::new(&exe);
        cmd.arg("standalone")
            .arg("--manifests")
            .arg(cfg.manifests)
            .arg("--cgroup")
            .arg(cfg.cgroup)
            .arg("--bpffs-dir")
            .arg(cfg.bpffs_dir)
            .arg("--node-name")
            .arg(cfg.node_name)
            .arg("--node-ip")
            .arg(cfg.node_ip.to_string())
            .arg("--host-netns")
            .arg(cfg.host_netns);
        let command_line = describe(&cmd);
        let log =
            File::create(cfg.log).with_context(|| format!("creating {}", cfg.log.display()))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C in the terminal reaches only
            // the demo, which then stops the agent and cleans up in order.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe. If the demo is killed outright,
        // the agent dies with it (the next demo run sweeps what is left).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {command_line}"))?;
        Ok(Agent {
            exe,
            cgroup: cfg.cgroup.to_path_buf(),
            bpffs_dir: cfg.bpffs_dir.to_path_buf(),
            log: cfg.log.to_path_buf(),
            child: Some(child),
            needs_cleanup: true,
            command_line,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last `n` lines of the agent's log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `ferry services --bpffs-dir DIR [ARGS]`, bounded; its stdout.
    pub fn services(&self, args: &[&str]) -> Result<String> {
        command_stdout(
            Command::new(&self.exe)
                .arg("services")
                .arg("--bpffs-dir")
                .arg(&self.bpffs_dir)
                .args(args),
        )
    }

    /// Polls `ferry services -o json` until `ready` holds for its list of
    /// frontends, at most `timeout`; returns how long that took. Fails at
    /// once (with the log's tail) if the agent exits, or on Ctrl-C.
    pub fn wait_until(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut(&[Value]) -> bool,
    ) -> Result<Duration> {
        let started = Instant::now();
        loop {
            interrupt::check()?;
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "the agent exited ({status}) before it was ready; its log ends with:\n{}",
                    self.log_tail(20)
                );
            }
            let last = match self.services(&["-o", "json"]) {
                Ok(out) => match serde_json::from_str::<Vec<Value>>(&out) {
                    Ok(frontends) if ready(&frontends) => return Ok(started.elapsed()),
                    Ok(_) => out,
                    Err(e) => format!("unreadable output ({e}): {out}"),
                },
                Err(e) => format!("{e:#}"),
            };
            if started.elapsed() >= timeout {
                bail!(
                    "the agent was not ready after {timeout:?}; `ferry services` said: {last}\n\
                     its log ends with:\n{}",
                    self.log_tail(20)
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Stops the agent (SIGTERM, then SIGKILL after a grace period) and
    /// runs `ferry cleanup`. Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + TERM_GRACE;
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    eprintln!(
                        "ferry demo: the agent ignored SIGTERM for {TERM_GRACE:?}; killing it"
                    );
                    let _ = child.kill();
                    child.wait()?;
                    break;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        if self.needs_cleanup {
            // The programs stay attached after the agent exits (that is how
            // restarts keep serving); `ferry cleanup` detaches them.
            command_stdout(
                Command::new(&self.exe)
                    .arg("cleanup")
                    .arg("--bpffs-dir")
                    .arg(&self.bpffs_dir)
                    .arg("--cgroup")
                    .arg(&self.cgroup),
            )?;
            self.needs_cleanup = false;
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("ferry demo: stopping the agent: {e:#}");
        }
    }
}
