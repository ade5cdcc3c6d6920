//! Running commands with a time bound, small file helpers.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Default bound for helper commands (`ip`, `ferry services`, ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cmd` (stdin from /dev/null, stdout and stderr captured) and waits at
/// most `timeout`; a command still running then is killed and reported as an
/// error. The exit status is not checked.
pub fn command_output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let desc = describe(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("spawning {desc}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {desc}"))?
        {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            // The reader threads end when the pipes close; not joined, so a
            // grandchild holding a pipe cannot block us.
            bail!("{desc} did not finish within {timeout:?}; killed");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Like [`command_output`] with a 10 s bound, but a non-zero exit is an
/// error carrying stderr; returns stdout as text.
pub fn command_stdout(cmd: &mut Command) -> Result<String> {
    let desc = describe(cmd);
    let out = command_output(cmd, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        bail!(
            "{desc} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...` (host namespace: only for `ip netns ...`).
pub fn ip(args: &[&str]) -> Result<String> {
    command_stdout(Command::new("ip").args(args))
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// `/proc/<pid>` exists.
pub fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Parses the owner pid out of `<prefix><pid>` or `<prefix><pid>-...`.
pub fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    let rest = name.strip_prefix(prefix)?;
    let end = rest.find('-').unwrap_or(rest.len());
    let digits = &rest[..end];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Unescapes the octal escapes (`\040` for space, ...) of /proc/mounts fields.
pub fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(mount point, fstype)` of every line of /proc/mounts.
pub fn mounts() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _src = f.next()?;
            let mnt = f.next()?;
            let fstype = f.next()?;
            Some((unescape_mount_field(mnt), fstype.to_string()))
        })
        .collect())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn owner_pid_parses() {
        assert_eq!(owner_pid("ft123-4-node", "ft"), Some(123));
        assert_eq!(owner_pid("ft123", "ft"), Some(123));
        assert_eq!(owner_pid("ferry-test-77-3", "ferry-test-"), Some(77));
        assert_eq!(owner_pid("ftx-1", "ft"), None);
        assert_eq!(owner_pid("ft-1", "ft"), None);
        assert_eq!(owner_pid("fta12", "ft"), None);
        assert_eq!(owner_pid("other", "ft"), None);
    }

    #[test]
    fn unescapes_mount_fields() {
        assert_eq!(unescape_mount_field("/a\\040b"), "/a b");
        assert_eq!(
            unescape_mount_field("/sys/fs/cgroup/unified"),
            "/sys/fs/cgroup/unified"
        );
        assert_eq!(unescape_mount_field("x\\04"), "x\\04");
    }
}
