//! The `ferry` process, as the tests, the bench and the demo run it.
//!
//! [`Ferry::start`] runs
//! `ferry standalone --manifests DIR --cgroup CGROUP --bpffs-dir DIR
//! --node-name NAME [--node-ip IP]... [EXTRA]...`
//! (or `ferry agent --kubeconfig FILE ...` with the same flags, see
//! [`FerryOptions::agent`])
//! with stdout and stderr appended to a log file in a temp dir (printed to
//! stderr when the guard drops; libtest shows it only for failing tests). Drop stops it (SIGTERM, bounded wait,
//! SIGKILL) and then runs `ferry cleanup --bpffs-dir DIR --cgroup CGROUP`,
//! so no pin or link outlives the test. The child also gets
//! `PR_SET_PDEATHSIG(SIGKILL)`: if the test process is killed, Ferry dies
//! with it (and [`crate::sweep_stale`] removes its pins and cgroup later).
//! PDEATHSIG fires when the *thread* that spawned it exits: start and
//! restart Ferry from the test's own thread, not from a short-lived one.
//! It runs in its own process group, so a Ctrl-C in the terminal reaches
//! only its parent, which then stops it and cleans up in order.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::Naming;
use crate::bpffs::{BPFFS_ROOT, BpffsDir};
use crate::cgroup::Cgroup;
use crate::cgroup::cgroup2_root;
use crate::manifests::Manifests;
use crate::topology::{NODE_V4, NODE_V6, Topology};
use crate::util::{Wait, command_output, describe, wait_until};

/// Bound of `wait_for*`.
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERM'd Ferry gets before SIGKILL.
pub const TERM_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound of `ferry services` / `ferry cleanup` runs.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(10);

/// Pace of `wait_for*`'s polling.
const POLL: Duration = Duration::from_millis(100);

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

/// The `ferry` binary: `$FERRY_BIN`; else `ferry` next to this executable
/// (`ferry-demo`, `xtask` in the same target directory); else
/// `$CARGO_TARGET_DIR/{release,debug}/ferry` when that variable is set at
/// run time; else `<workspace>/target/release/ferry`, else
/// `<workspace>/target/debug/ferry`.
pub fn ferry_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("FERRY_BIN") {
        let p = PathBuf::from(p);
        ensure!(p.is_file(), "FERRY_BIN={} is not a file", p.display());
        return Ok(p);
    }
    if let Some(sibling) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("ferry")))
        .filter(|p| p.is_file())
    {
        return Ok(sibling);
    }
    let mut dirs = Vec::new();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        let t = PathBuf::from(t);
        let t = if t.is_relative() {
            workspace_root().join(t)
        } else {
            t
        };
        dirs.push(t);
    }
    dirs.push(workspace_root().join("target"));
    let candidates: Vec<PathBuf> = dirs
        .iter()
        .flat_map(|d| ["release", "debug"].map(|p| d.join(p).join("ferry")))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| {
            format!(
                "no ferry binary: set FERRY_BIN or build it (cargo build -p lb-userspace --bin ferry); looked at {candidates:?}"
            )
        })
}

/// How to run Ferry.
#[derive(Clone, Debug)]
pub struct FerryOptions {
    /// None: [`ferry_binary()`].
    pub binary: Option<PathBuf>,
    pub manifests: PathBuf,
    /// When set, `ferry agent --kubeconfig FILE` runs instead of
    /// `ferry standalone --manifests DIR` (`manifests` is then unused).
    pub kubeconfig: Option<PathBuf>,
    /// Must be one of the harness' own cgroups ([`crate::Cgroup`]): Ferry
    /// is never attached to the host's root cgroup.
    pub cgroup: PathBuf,
    /// Must be a [`crate::BpffsDir`].
    pub bpffs_dir: PathBuf,
    pub node_name: String,
    /// Each becomes one `--node-ip IP` argument.
    pub node_ips: Vec<IpAddr>,
    /// Appended to the `standalone` arguments.
    pub extra_args: Vec<String>,
    /// Environment for every ferry invocation (standalone, services, cleanup).
    pub env: Vec<(String, String)>,
    /// Whose cgroup and bpffs dir these are: Ferry is only started on the
    /// sandbox's own of this naming. Default [`Naming::TESTS`].
    pub naming: Naming,
    /// Print the log to stderr when the guard drops (default; libtest shows
    /// it only for failing tests).
    pub dump_log: bool,
    /// Called on every poll of the waits; an error ends the wait (the
    /// demo's Ctrl-C).
    pub abort: Option<fn() -> Result<()>>,
    /// RLIMIT_NOFILE (soft and hard) of the ferry process; None: inherited.
    pub file_limit: Option<u64>,
    /// When set, the ferry process runs with exactly these capabilities
    /// (numbers, see [`crate::caps`]) and no_new_privs, as a container
    /// with `capabilities: {drop: [ALL], add: [...]}` and
    /// `allowPrivilegeEscalation: false` does; None: the test's own.
    pub capabilities: Option<Vec<u32>>,
}

impl FerryOptions {
    /// Node name "node-1", no node IPs.
    pub fn new(manifests: &Path, cgroup: &Path, bpffs_dir: &Path) -> FerryOptions {
        FerryOptions {
            binary: None,
            manifests: manifests.to_path_buf(),
            kubeconfig: None,
            cgroup: cgroup.to_path_buf(),
            bpffs_dir: bpffs_dir.to_path_buf(),
            node_name: "node-1".to_string(),
            node_ips: Vec::new(),
            extra_args: Vec::new(),
            env: Vec::new(),
            naming: Naming::TESTS,
            dump_log: true,
            abort: None,
            file_limit: None,
            capabilities: None,
        }
    }

    /// `ferry agent` against the API server `kubeconfig` points at; node
    /// name "node-1", no node IPs.
    pub fn agent(kubeconfig: &Path, cgroup: &Path, bpffs_dir: &Path) -> FerryOptions {
        FerryOptions {
            kubeconfig: Some(kubeconfig.to_path_buf()),
            ..FerryOptions::new(Path::new(""), cgroup, bpffs_dir)
        }
    }

    pub fn node(mut self, name: &str, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.node_name = name.to_string();
        self.node_ips = ips.into_iter().collect();
        self
    }

    /// The usual e2e setup: node "node-1" with addresses [`NODE_V4`] and
    /// [`NODE_V6`], and the topology's node namespace as `--host-netns` (where
    /// binds may not take a NodePort).
    pub fn for_topology(
        topo: &Topology,
        manifests: &Manifests,
        cgroup: &Cgroup,
        bpffs: &BpffsDir,
    ) -> FerryOptions {
        FerryOptions::new(manifests.dir(), cgroup.path(), bpffs.path())
            .node("node-1", [NODE_V4.into(), NODE_V6.into()])
            .host_netns(topo.node().path())
    }

    /// `--host-netns PATH`.
    pub fn host_netns(self, path: &Path) -> Self {
        self.arg("--host-netns").arg(&path.to_string_lossy())
    }

    pub fn binary(mut self, path: &Path) -> Self {
        self.binary = Some(path.to_path_buf());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.extra_args.push(arg.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }

    /// Keep the log to itself when the guard drops.
    pub fn quiet(mut self) -> Self {
        self.dump_log = false;
        self
    }

    pub fn abort_when(mut self, check: fn() -> Result<()>) -> Self {
        self.abort = Some(check);
        self
    }

    pub fn file_limit(mut self, n: u64) -> Self {
        self.file_limit = Some(n);
        self
    }

    pub fn capabilities(mut self, caps: &[u32]) -> Self {
        self.capabilities = Some(caps.to_vec());
        self
    }
}

/// Refuses anything but the sandbox's own cgroup and bpffs dirs (of
/// `opts.naming`): attaching to the cgroup2 root would capture every
/// process of the host.
fn check_targets(opts: &FerryOptions) -> Result<()> {
    let (prefix, dir_prefix) = (opts.naming.prefix, opts.naming.dir_prefix);
    let root = cgroup2_root()?
        .canonicalize()
        .context("resolving the cgroup2 root")?;
    let cg = opts
        .cgroup
        .canonicalize()
        .with_context(|| format!("resolving cgroup {}", opts.cgroup.display()))?;
    ensure!(
        cg != root,
        "refusing to attach Ferry to the host's root cgroup {}",
        root.display()
    );
    ensure!(
        cg.starts_with(&root),
        "cgroup {} is not in the cgroup2 hierarchy {}",
        cg.display(),
        root.display()
    );
    ensure!(
        cg.strip_prefix(&root)
            .ok()
            .and_then(|rel| rel.components().next())
            .is_some_and(|c| c.as_os_str().to_string_lossy().starts_with(prefix)),
        "cgroup {} is not one of the sandbox's own ({prefix}*) cgroups",
        cg.display()
    );
    let bpf = &opts.bpffs_dir;
    ensure!(
        bpf.parent() == Some(Path::new(BPFFS_ROOT))
            && bpf
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(dir_prefix))
            && bpf.is_dir(),
        "bpffs dir {} is not a sandbox BpffsDir ({BPFFS_ROOT}/{dir_prefix}*)",
        bpf.display()
    );
    Ok(())
}

/// A running (or stopped) Ferry; see the module docs.
#[derive(Debug)]
pub struct Ferry {
    opts: FerryOptions,
    binary: PathBuf,
    child: Option<Child>,
    /// How the last run ended, once it has.
    last_exit: Option<ExitStatus>,
    /// Runs started (successfully spawned) so far.
    starts: u32,
    /// Whether [`Ferry::stop`] has run `ferry cleanup` since the last start.
    cleaned_up: bool,
    /// The last start's command line, for people.
    command_line: String,
    log_path: PathBuf,
    // Last: the log dir outlives everything else in drop.
    _log_dir: tempfile::TempDir,
}

impl Ferry {
    /// Spawns `ferry standalone ...`. Does not wait for it to be ready: use
    /// [`Ferry::wait_for`] / [`Ferry::wait_for_frontend`].
    pub fn start(opts: FerryOptions) -> Result<Ferry> {
        check_targets(&opts)?;
        let binary = match &opts.binary {
            Some(b) => b.clone(),
            None => ferry_binary()?,
        };
        let log_dir = tempfile::Builder::new()
            .prefix(&format!("{}ferry-", opts.naming.temp_prefix()))
            .tempdir()
            .context("creating the log dir")?;
        let log_path = log_dir.path().join("ferry.log");
        let mut ferry = Ferry {
            opts,
            binary,
            child: None,
            last_exit: None,
            starts: 0,
            cleaned_up: false,
            command_line: String::new(),
            log_path,
            _log_dir: log_dir,
        };
        ferry.spawn()?;
        Ok(ferry)
    }

    fn base_command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.envs(self.opts.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn(&mut self) -> Result<()> {
        let o = &self.opts;
        let mut cmd = self.base_command();
        match &o.kubeconfig {
            Some(kubeconfig) => cmd.arg("agent").arg("--kubeconfig").arg(kubeconfig),
            None => cmd.arg("standalone").arg("--manifests").arg(&o.manifests),
        };
        cmd.arg("--cgroup")
            .arg(&o.cgroup)
            .arg("--bpffs-dir")
            .arg(&o.bpffs_dir)
            .arg("--node-name")
            .arg(&o.node_name);
        for ip in &o.node_ips {
            cmd.arg("--node-ip").arg(ip.to_string());
        }
        cmd.args(&o.extra_args);
        // Without --host-netns Ferry's node namespace is the test's own,
        // the host's: its interfaces are not the test's to attach to.
        if !o.extra_args.iter().any(|a| a == "--host-netns")
            && !o.extra_args.iter().any(|a| a == "--north-south")
        {
            cmd.arg("--north-south").arg("false");
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .with_context(|| format!("opening {}", self.log_path.display()))?;
        let command_line = describe(&cmd);
        writeln!(
            log,
            "=== harness: start #{}: {command_line}",
            self.starts + 1
        )?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0);
        let file_limit = o.file_limit;
        // Computed before the fork: the child may not allocate.
        let caps = o
            .capabilities
            .as_ref()
            .map(|c| crate::caps::Restriction::new(c))
            .transpose()?;
        // SAFETY: prctl, setrlimit and capset are async-signal-safe, and
        // nothing here allocates.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(n) = file_limit {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(caps) = &caps {
                    caps.apply()?;
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {command_line}"))?;
        self.starts += 1;
        self.cleaned_up = false;
        self.command_line = command_line;
        self.child = Some(child);
        self.last_exit = None;
        Ok(())
    }

    /// The last start's command line.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    pub fn options(&self) -> &FerryOptions {
        &self.opts
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                self.last_exit = Some(status);
                self.child = None;
                false
            }
            Err(_) => false,
        }
    }

    /// How the last run ended (None while running or never reaped).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.last_exit
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The whole log so far (all runs).
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Prints the log to stderr (libtest shows it for failing tests).
    pub fn dump_log(&self) {
        eprintln!(
            "----- ferry log ({}) -----\n{}\n----- end of ferry log -----",
            self.log_path.display(),
            self.log()
        );
    }

    /// Runs `ferry ARGS...` (bounded by [`CLI_TIMEOUT`]); the exit status is
    /// not checked.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        command_output(self.base_command().args(args), CLI_TIMEOUT)
    }

    /// `ferry services --bpffs-dir DIR`: the table people read.
    pub fn services_table(&self) -> Result<String> {
        let dir = self.opts.bpffs_dir.to_string_lossy().into_owned();
        let out = self.cli(&["services", "--bpffs-dir", &dir])?;
        ensure!(
            out.status.success(),
            "ferry services failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ferry services --bpffs-dir DIR -o json`, parsed.
    pub fn services_json(&self) -> Result<Value> {
        self.services_json_with(&[])
    }

    /// `ferry services --north-south --bpffs-dir DIR -o json`, parsed:
    /// `{"frontends": [...], "counters": {...}}`.
    pub fn north_south_json(&self) -> Result<Value> {
        self.services_json_with(&["--north-south"])
    }

    fn services_json_with(&self, extra: &[&str]) -> Result<Value> {
        let dir = self.opts.bpffs_dir.to_string_lossy().into_owned();
        let mut args = vec!["services", "--bpffs-dir", &dir, "-o", "json"];
        args.extend_from_slice(extra);
        let out = self.cli(&args)?;
        if !out.status.success() {
            bail!(
                "ferry services failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "ferry services printed no JSON: {:?}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Polls `ferry services -o json` (every 100 ms, at most
    /// [`WAIT_TIMEOUT`]) until `pred` holds; returns that JSON. Fails early
    /// (with the log tail) if Ferry exits. `what` names the wait in errors.
    pub fn wait_for(&mut self, what: &str, pred: impl FnMut(&Value) -> bool) -> Result<Value> {
        self.wait_for_timeout(what, WAIT_TIMEOUT, pred)
    }

    pub fn wait_for_timeout(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value> {
        let mut last = String::from("no answer yet");
        let found = wait_until(what, timeout, POLL, || {
            if let Some(abort) = self.opts.abort {
                abort()?;
            }
            if !self.is_running() {
                bail!(
                    "ferry is not running ({:?}) while waiting for {what}; last services output: {last}",
                    self.last_exit,
                );
            }
            Ok(match self.services_json() {
                Ok(v) if pred(&v) => Wait::Done(v),
                Ok(v) => {
                    last = v.to_string();
                    Wait::Pending(format!("services output {last}"))
                }
                Err(e) => {
                    last = format!("{e:#}");
                    Wait::Pending(last.clone())
                }
            })
        });
        found.map_err(|e| anyhow!("{e:#}\nlog tail:\n{}", self.log_tail(40)))
    }

    /// Waits until `ferry services -o json` mentions the frontend (see
    /// [`json_mentions_frontend`]; for anything more specific use
    /// [`Ferry::wait_for`] with your own predicate).
    pub fn wait_for_frontend(&mut self, frontend: SocketAddr) -> Result<Value> {
        self.wait_for(&format!("frontend {frontend}"), |v| {
            json_mentions_frontend(v, frontend)
        })
    }

    /// Waits until `ferry services -o json` mentions `"<frontend>/<PROTO>"`
    /// (e.g. "10.96.0.10:53/UDP", the notation of today's output), to tell a
    /// UDP frontend from a TCP one on the same address.
    pub fn wait_for_frontend_proto(&mut self, frontend: SocketAddr, proto: &str) -> Result<Value> {
        let needle = format!("{frontend}/{proto}");
        self.wait_for(&format!("frontend {needle}"), |v| json_mentions(v, &needle))
    }

    /// Waits until the frontend is gone from `ferry services -o json`.
    pub fn wait_for_frontend_gone(&mut self, frontend: SocketAddr) -> Result<Value> {
        self.wait_for(&format!("frontend {frontend} to go"), |v| {
            !json_mentions_frontend(v, frontend)
        })
    }

    /// SIGKILL, as a crash would: no cleanup runs, pins stay.
    pub fn kill9(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = child.kill();
        self.last_exit = Some(child.wait().context("waiting for the killed ferry")?);
        Ok(())
    }

    /// SIGTERM; waits up to [`TERM_TIMEOUT`], then SIGKILL. Returns how it
    /// ended (None if it was not running).
    pub fn terminate(&mut self) -> Result<Option<ExitStatus>> {
        self.terminate_within(TERM_TIMEOUT)
    }

    pub fn terminate_within(&mut self, grace: Duration) -> Result<Option<ExitStatus>> {
        if !self.is_running() {
            return Ok(None);
        }
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child's pid (not yet reaped).
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                eprintln!("sandbox: ferry did not exit within {grace:?} of SIGTERM; killing it");
                let _ = child.kill();
                break child.wait()?;
            }
            thread::sleep(Duration::from_millis(10));
        };
        self.last_exit = Some(status);
        Ok(Some(status))
    }

    /// Starts Ferry again with the same options (stopping it with SIGTERM
    /// first if it still runs). Pins from the previous run are kept: this
    /// is how restart/upgrade survival is tested.
    pub fn restart(&mut self) -> Result<()> {
        self.terminate()?;
        self.spawn()
    }

    /// Stops Ferry ([`Ferry::terminate`]) and runs `ferry cleanup` (the
    /// programs stay attached after the agent exits: that is how restarts
    /// keep serving). What dropping the guard does, with the errors.
    pub fn stop(&mut self) -> Result<()> {
        self.terminate()?;
        if self.starts > 0 && !self.cleaned_up {
            self.cleanup()?;
            self.cleaned_up = true;
        }
        Ok(())
    }

    /// `ferry cleanup --bpffs-dir DIR --cgroup CGROUP`; fails on a non-zero
    /// exit.
    pub fn cleanup(&self) -> Result<()> {
        let dir = self.opts.bpffs_dir.to_string_lossy().into_owned();
        let cg = self.opts.cgroup.to_string_lossy().into_owned();
        let out = self.cli(&["cleanup", "--bpffs-dir", &dir, "--cgroup", &cg])?;
        if !out.status.success() {
            bail!(
                "ferry cleanup failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Ferry {
    /// Stops Ferry, runs `ferry cleanup`, and prints the log to stderr:
    /// libtest shows captured output only for failing tests, so the log
    /// appears exactly when a test fails (by panic or by returning `Err`).
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("sandbox: stopping ferry: {e:#}");
        }
        if self.opts.dump_log {
            self.dump_log();
        }
    }
}

/// `haystack` contains `needle` not glued to more address characters
/// ("10.96.0.10:80" is not in "110.96.0.10:8080").
fn contains_token(haystack: &str, needle: &str) -> bool {
    let glued =
        |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '.' || c == ':');
    haystack.match_indices(needle).any(|(i, _)| {
        let before = haystack[..i].chars().next_back();
        let after = haystack[i + needle.len()..].chars().next();
        !glued(before) && !after.is_some_and(|c| c.is_ascii_digit())
    })
}

/// Whether some string in `v` contains `needle` as a whole address (not
/// glued to more address characters).
pub fn json_mentions(v: &Value, needle: &str) -> bool {
    match v {
        Value::String(s) => contains_token(s, needle),
        Value::Array(a) => a.iter().any(|x| json_mentions(x, needle)),
        Value::Object(o) => o.values().any(|x| json_mentions(x, needle)),
        _ => false,
    }
}

/// Whether `services` JSON mentions `frontend`, whatever its exact shape:
/// some string contains `"10.96.0.10:80"` / `"[fd00::1]:80"`, or some
/// object has a string field equal to the IP and a number field equal to
/// the port.
pub fn json_mentions_frontend(v: &Value, frontend: SocketAddr) -> bool {
    let text = frontend.to_string();
    let ip = frontend.ip().to_string();
    let port = u64::from(frontend.port());
    fn walk(v: &Value, text: &str, ip: &str, port: u64) -> bool {
        match v {
            Value::String(s) => contains_token(s, text),
            Value::Array(a) => a.iter().any(|x| walk(x, text, ip, port)),
            Value::Object(o) => {
                let has_ip = o.values().any(|x| x.as_str() == Some(ip));
                let has_port = o.values().any(|x| x.as_u64() == Some(port));
                (has_ip && has_port) || o.values().any(|x| walk(x, text, ip, port))
            }
            _ => false,
        }
    }
    walk(v, &text, &ip, port)
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn frontend_matching() {
        let a: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let b: SocketAddr = "[fd00:96::a]:443".parse().unwrap();
        assert!(json_mentions_frontend(&json!(["10.96.0.10:80/TCP"]), a));
        assert!(json_mentions_frontend(
            &json!({"services": [{"frontend": {"ip": "10.96.0.10", "port": 80}}]}),
            a
        ));
        assert!(json_mentions_frontend(
            &json!([{"address": "[fd00:96::a]:443"}]),
            b
        ));
        assert!(!json_mentions_frontend(
            &json!([{"ip": "10.96.0.10", "port": 81}]),
            a
        ));
        assert!(!json_mentions_frontend(&json!(["10.96.0.1:80"]), a));
        assert!(!json_mentions_frontend(&json!(["110.96.0.10:8080"]), a));
        assert!(json_mentions_frontend(
            &json!(["TCP 10.96.0.10:80 -> x"]),
            a
        ));
        assert!(!json_mentions_frontend(&json!([]), a));
    }
}
