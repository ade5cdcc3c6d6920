//! Processes: running a command inside a network namespace with its wall
//! time and peak RSS measured, Ctrl-C handling, small /proc readers.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static SENDER: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signo: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    SIGNAL.store(signo, Ordering::SeqCst);
    if !info.is_null() {
        // SAFETY: the kernel hands a valid siginfo to SA_SIGINFO handlers.
        SENDER.store(unsafe { (*info).si_pid() }, Ordering::SeqCst);
    }
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag that the bench checks between steps (and
/// in its loops), so that every guard still runs and nothing is left
/// behind. Children get the terminal's SIGINT themselves. Who sent the
/// signal (si_pid) is kept for the error message.
pub(crate) fn install_signal_handlers() {
    for signo in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction with an SA_SIGINFO handler that only
        // does async-signal-safe work.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(signo, &sa, std::ptr::null_mut());
        }
    }
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Fails when Ctrl-C (or SIGTERM) arrived, saying from whom.
pub(crate) fn check_interrupted() -> Result<()> {
    if !interrupted() {
        return Ok(());
    }
    let name = match SIGNAL.load(Ordering::SeqCst) {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        _ => "a signal",
    };
    let pid = SENDER.load(Ordering::SeqCst);
    // A short-lived sender (`kill`) is usually gone by now.
    let who = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|_| "gone".into());
    bail!("interrupted by {name} from pid {pid} ({who})")
}

/// What a timed command did.
#[derive(Debug)]
pub(crate) struct Timed {
    pub wall: Duration,
    /// ru_maxrss of the child, KiB.
    pub max_rss_kib: u64,
}

fn pidfd_open(pid: libc::pid_t) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Runs `program args` in the network namespace at `netns` (entered with
/// setns(2) between fork and exec, so the child starts there and nsenter's
/// own start-up is not timed), stdin from `stdin` (or /dev/null). Fails if
/// it exits non-zero, or runs longer than `timeout` or past Ctrl-C (then
/// it is killed).
pub(crate) fn run_timed_in(
    netns: &Path,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
    timeout: Duration,
) -> Result<Timed> {
    run_in(netns, program, args, stdin, timeout, true)
}

/// The same, but not cut short by Ctrl-C (for cleaning up).
pub(crate) fn run_to_end_in(
    netns: &Path,
    program: &str,
    args: &[&str],
    timeout: Duration,
) -> Result<Timed> {
    run_in(netns, program, args, None, timeout, false)
}

fn run_in(
    netns: &Path,
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
    timeout: Duration,
    interruptible: bool,
) -> Result<Timed> {
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let ns_fd = ns.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .stdin(match stdin {
            Some(p) => {
                Stdio::from(File::open(p).with_context(|| format!("opening {}", p.display()))?)
            }
            None => Stdio::null(),
        });
    // SAFETY: setns and prctl are async-signal-safe syscalls on fds
    // opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let desc = format!("{program} {}", args.join(" "));
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("spawning {desc}"))?;
    let pid = child.id() as libc::pid_t;
    let mut err_pipe = child.stderr.take().expect("piped");
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let pidfd = pidfd_open(pid).context("pidfd_open")?;
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = started + timeout;
    let mut killed = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = left.as_millis().min(1000) as i32;
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc > 0 {
            break;
        }
        if Instant::now() >= deadline || (interruptible && interrupted()) {
            // SAFETY: the pidfd refers to our unreaped child.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
            killed = true;
            break;
        }
    }
    let mut status = 0;
    // SAFETY: zeroed rusage is valid; wait4 on our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = started.elapsed();
    if rc != pid {
        bail!("wait4 {desc}: {}", std::io::Error::last_os_error());
    }
    // Reaped above; dropping the handle only closes what is left of it.
    drop(child);
    let stderr = err_reader.join().unwrap_or_default();
    if killed {
        check_interrupted()?;
        bail!("{desc} ran longer than {timeout:?}; killed");
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!(
            "{desc} failed (status {status:#x}): {}",
            stderr.lines().take(20).collect::<Vec<_>>().join("\n")
        );
    }
    Ok(Timed {
        wall,
        max_rss_kib: usage.ru_maxrss as u64,
    })
}

/// `(VmRSS, VmHWM)` of a process, KiB.
pub(crate) fn rss_of(pid: &str) -> Result<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Runs a command, returns its trimmed stdout, or "" if it fails.
pub(crate) fn stdout_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
