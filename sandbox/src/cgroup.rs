//! Child cgroups of the cgroup v2 root, to attach Ferry's programs to
//! without affecting the rest of the host.
//!
//! The cgroup2 mount point is read from /proc/mounts (on hybrid hosts it is
//! e.g. /sys/fs/cgroup/unified), never assumed.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::Naming;

/// The mount point of the cgroup v2 hierarchy, from /proc/mounts (the
/// agent's own lookup).
pub fn cgroup2_root() -> Result<PathBuf> {
    Ok(lb_userspace::datapath::cgroup2_root()?)
}

/// This process' cgroup v2 path relative to the hierarchy root, from the
/// `0::` line of /proc/self/cgroup (e.g. "/" or "/user.slice/x").
pub fn own_cgroup_relative() -> Result<String> {
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .context("no 0:: line in /proc/self/cgroup")
}

/// This process' cgroup v2 directory.
pub fn own_cgroup() -> Result<PathBuf> {
    let rel = own_cgroup_relative()?;
    Ok(cgroup2_root()?.join(rel.trim_start_matches('/')))
}

/// Writes `pid` into `<dir>/cgroup.procs` (moves the whole process).
pub fn move_pid(dir: &Path, pid: u32) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {}", procs.display()))?;
    f.write_all(pid.to_string().as_bytes())
        .with_context(|| format!("moving pid {pid} into {}", dir.display()))
}

/// The pids in `<dir>/cgroup.procs`.
pub fn procs_of(dir: &Path) -> Result<Vec<u32>> {
    let text = fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("reading {}/cgroup.procs", dir.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Makes `cmd`'s child move itself into `dir` before exec (so it starts
/// there, whatever cgroup this process is in). `dir/cgroup.procs` is opened
/// now; the child writes "0" into it.
pub fn place_command_in(cmd: &mut Command, dir: &Path) -> Result<()> {
    let procs = dir.join("cgroup.procs");
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&procs)
        .with_context(|| format!("opening {}", procs.display()))?;
    // SAFETY: the closure only calls write(2) on an fd opened before fork,
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            let rc = libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1);
            if rc != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// A child cgroup of the cgroup2 root, named `<prefix><pid>-<n>`, removed
/// on drop.
///
/// [`Cgroup::enter_self`] moves this whole process (all threads) into it;
/// drop moves the process back to where it came from and removes the
/// directory (retrying briefly, bounded). Processes that are still inside
/// at drop (children spawned while inside, e.g. an agent that was not
/// stopped) are moved out to the original cgroup first, so the rmdir
/// cannot fail because of them: stop the agent before dropping this guard.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// Where this process was before `enter_self` (Some while inside).
    original: Option<PathBuf>,
}

impl Cgroup {
    /// `ft<pid>-<n>` ([`Naming::TESTS`]).
    pub fn new() -> Result<Cgroup> {
        Cgroup::new_with(Naming::TESTS)
    }

    /// `<prefix><pid>-<n>` under the cgroup2 root.
    pub fn new_with(naming: Naming) -> Result<Cgroup> {
        let root = cgroup2_root()?;
        let path = root.join(naming.unique_name());
        fs::create_dir(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Cgroup {
            path,
            original: None,
        })
    }

    /// The cgroup's directory (what `ferry --cgroup` gets).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The name relative to the cgroup2 root, e.g. "/ft123-4", as
    /// `/proc/<pid>/cgroup` shows it.
    pub fn relative(&self) -> String {
        format!(
            "/{}",
            self.path.file_name().unwrap_or_default().to_string_lossy()
        )
    }

    /// Moves this process (all its threads) into the cgroup. Threads and
    /// children created afterwards start inside too.
    pub fn enter_self(&mut self) -> Result<()> {
        if self.original.is_some() {
            return Ok(());
        }
        let original = own_cgroup()?;
        move_pid(&self.path, std::process::id())?;
        self.original = Some(original);
        Ok(())
    }

    /// Moves this process back to the cgroup it was in before `enter_self`.
    pub fn leave_self(&mut self) -> Result<()> {
        let Some(original) = self.original.take() else {
            return Ok(());
        };
        let pid = std::process::id();
        if let Err(e) = move_pid(&original, pid) {
            let root = cgroup2_root()?;
            eprintln!(
                "sandbox: could not move back to {} ({e:#}); moving to {}",
                original.display(),
                root.display()
            );
            move_pid(&root, pid)?;
        }
        Ok(())
    }

    /// Where this process was before [`Cgroup::enter_self`] (None while
    /// outside). Use it with [`place_command_in`] to start a program that
    /// Ferry's programs must *not* affect.
    pub fn original(&self) -> Option<&Path> {
        self.original.as_deref()
    }

    /// Whether this process is in the cgroup now.
    pub fn contains_self(&self) -> bool {
        own_cgroup().is_ok_and(|c| c == self.path)
    }

    /// Moves process `pid` into the cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        move_pid(&self.path, pid)
    }

    /// The pids in the cgroup now.
    pub fn procs(&self) -> Result<Vec<u32>> {
        procs_of(&self.path)
    }

    /// Makes `cmd`'s child start inside this cgroup (see [`place_command_in`]).
    pub fn place_command(&self, cmd: &mut Command) -> Result<()> {
        place_command_in(cmd, &self.path)
    }

    fn remove(&mut self) -> Result<()> {
        let mut moved_out = false;
        let deadline = Instant::now() + Duration::from_secs(3);
        for attempt in 0..200 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
                Err(e) => {
                    if Instant::now() >= deadline {
                        bail!("rmdir {}: {e}", self.path.display());
                    }
                    // Leftover processes (ours: only the sandbox's user puts
                    // processes here): move them out after a short grace period.
                    if attempt >= 10 && !moved_out {
                        moved_out = true;
                        let dest = own_cgroup().unwrap_or_else(|_| self.path.clone());
                        let dest = if dest == self.path {
                            cgroup2_root()?
                        } else {
                            dest
                        };
                        for pid in procs_of(&self.path).unwrap_or_default() {
                            eprintln!(
                                "sandbox: pid {pid} still in {}; moving it to {}",
                                self.path.display(),
                                dest.display()
                            );
                            let _ = move_pid(&dest, pid);
                        }
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
        bail!("rmdir {}: still busy", self.path.display())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = self.leave_self() {
            eprintln!("sandbox: leaving cgroup {}: {e:#}", self.path.display());
        }
        if let Err(e) = self.remove() {
            eprintln!("sandbox: removing cgroup: {e:#}");
        }
    }
}
