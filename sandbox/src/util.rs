//! Running commands and waiting, with a time bound; small file helpers.

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

/// A TCP port on 127.0.0.1 that was free a moment ago (for the agent's
/// health and metrics servers, so that runs never collide on the defaults).
pub fn free_local_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
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

/// What one look of [`wait_until`] saw.
#[derive(Debug)]
pub enum Wait<T> {
    /// The condition holds; the wait returns this.
    Done(T),
    /// Not yet; what was seen, for the error when the time is up.
    Pending(String),
}

/// Looks with `look` every `every` until it reports [`Wait::Done`], at most
/// `timeout` (the one bounded wait loop of the sandbox and the tests). An
/// error from `look` ends the wait at once (e.g. the process under test
/// exited); running out of time is an error naming `what` and what was
/// seen last.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut look: impl FnMut() -> Result<Wait<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match look()? {
            Wait::Done(v) => return Ok(v),
            Wait::Pending(seen) => seen,
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        thread::sleep(every);
    }
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
    fn wait_until_returns_what_was_found_or_says_what_was_seen() {
        let mut n = 0;
        let found = wait_until(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                Ok(if n == 3 {
                    Wait::Done(n)
                } else {
                    Wait::Pending(n.to_string())
                })
            },
        );
        assert_eq!(found.unwrap(), 3);
        let err = wait_until::<()>("never", Duration::ZERO, Duration::ZERO, || {
            Ok(Wait::Pending("still 7".into()))
        })
        .unwrap_err();
        assert!(
            format!("{err}").contains("never; last seen: still 7"),
            "{err}"
        );
        let err = wait_until::<()>("an error", Duration::from_secs(5), Duration::ZERO, || {
            bail!("it exited")
        })
        .unwrap_err();
        assert_eq!(format!("{err}"), "it exited");
    }
}
