//! `ferry-demo` end to end, as the README's first command runs it: it must
//! succeed with every backend answering, and leave nothing behind, also
//! when interrupted. Privileged: run as root with
//! `cargo test -p tests -- --test-threads=1`.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tests::*;

/// Bound of a whole demo run (it takes a few seconds).
const DEMO_TIMEOUT: Duration = Duration::from_secs(120);

/// `ferry-demo`, built next to the `ferry` binary it runs
/// (`cargo build --release --workspace`, as scripts/test.sh does).
fn demo_binary() -> Result<PathBuf> {
    let demo = ferry_binary()?.with_file_name("ferry-demo");
    anyhow::ensure!(
        demo.is_file(),
        "no {} (cargo build --release -p demo)",
        demo.display()
    );
    Ok(demo)
}

/// The demo's pid, from the names it prints (`ferry-demo-<pid>-0-node`).
fn demo_pid(stdout: &str) -> Option<u32> {
    let rest = &stdout[stdout.find("ferry-demo-")? + "ferry-demo-".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Everything named after the demo run `pid` that still exists: namespaces,
/// cgroups, bpffs and temp dirs, and processes whose command line names
/// them (the agent).
fn leftovers_of(pid: u32) -> Vec<String> {
    let prefix = format!("ferry-demo-{pid}-");
    let dirs = [
        PathBuf::from("/run/netns"),
        cgroup2_root().expect("cgroup2 root"),
        PathBuf::from("/sys/fs/bpf"),
        std::env::temp_dir(),
    ];
    let mut out: Vec<String> = dirs
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flatten()
        .filter_map(std::result::Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path().display().to_string())
        .collect();
    let listed = command_stdout(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    out.extend(
        listed
            .lines()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| format!("ip netns list: {l}")),
    );
    for proc_dir in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = fs::read(proc_dir.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&prefix) {
            out.push(format!("process {}: {cmdline}", proc_dir.path().display()));
        }
    }
    out
}

#[test]
fn demo_spreads_requests_and_leaves_nothing_behind() -> Result<()> {
    require_root();
    let _serial = serial();
    let demo = demo_binary()?;
    let out = command_output(Command::new(&demo).args(["--requests", "30"]), DEMO_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ferry-demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // The bar chart names every backend with its address and a count > 0.
    for (name, addr) in [
        ("b0", "10.244.0.10:8080"),
        ("b1", "10.244.0.11:8080"),
        ("b2", "10.244.0.12:8080"),
    ] {
        let line = stdout
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with(name) && l.contains(addr))
            .with_context(|| format!("no chart line for {name} ({addr}) in:\n{stdout}"))?;
        let count: u32 = line
            .rsplit(' ')
            .next()
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no count in {line:?}"))?;
        assert!(count > 0, "{name} never answered: {line:?}");
    }
    assert!(stdout.contains("10.96.0.10:80"), "{stdout}");
    let pid = demo_pid(&stdout).context("no ferry-demo-<pid> name in the output")?;
    let left = leftovers_of(pid);
    assert!(left.is_empty(), "the demo left behind: {left:#?}");
    Ok(())
}

/// SIGINT to the demo's process group (what a terminal's Ctrl-C does) in
/// the middle of its requests: it must stop, fail, and remove everything.
#[test]
fn demo_interrupted_cleans_up() -> Result<()> {
    require_root();
    let _serial = serial();
    let demo = demo_binary()?;
    let mut child = Command::new(&demo)
        .args(["--requests", "10000"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .context("spawning ferry-demo")?;
    let pgid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    let reader = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + DEMO_TIMEOUT;
    let mut requests_started = false;
    while Instant::now() < deadline && !requests_started {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                // The first listing line: requests are under way.
                requests_started = line.trim_start().starts_with("#1-");
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // SAFETY: signalling the process group of our own child.
    unsafe {
        libc::kill(-pgid, libc::SIGINT);
    }
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    seen.extend(rx.try_iter().map(|l| l + "\n"));
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(
        requests_started,
        "the demo never got to its requests:\n{seen}\n{stderr}"
    );
    assert!(
        !status.success(),
        "an interrupted demo must not report success:\n{seen}"
    );
    assert!(
        stderr.contains("interrupted"),
        "no word of the interruption: {stderr}"
    );
    let pid = demo_pid(&seen).context("no ferry-demo-<pid> name in the output")?;
    let left = leftovers_of(pid);
    assert!(
        left.is_empty(),
        "the interrupted demo left behind: {left:#?}\n{seen}"
    );
    Ok(())
}
