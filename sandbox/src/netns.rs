//! Named network namespaces (`ip netns add`), and running code inside them
//! on dedicated threads with `setns(2)`.
//!
//! Never use `ip netns exec` for anything that must stay in the caller's
//! cgroup: it remounts /sys and hides the cgroup2 mount. Code runs inside a
//! namespace via [`Netns::run`] / [`Netns::spawn_thread`] (a thread of this
//! process, so it is in this process' cgroup) or, for programs, via
//! [`Netns::command`] (`nsenter --net=...`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result, ensure};

use super::Naming;
use super::util::{command_stdout, ip, owner_pid};

/// A network namespace created by the sandbox, deleted on drop.
///
/// `Send + Sync`: share it by reference (or `Arc`) with threads.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// A new namespace named `ft<pid>-<n>-<suffix>` ([`Naming::TESTS`]),
    /// with `lo` up.
    pub fn new(suffix: &str) -> Result<Netns> {
        Netns::new_with(Naming::TESTS, suffix)
    }

    /// A new namespace named `<prefix><pid>-<n>-<suffix>`, with `lo` up.
    pub fn new_with(naming: Naming, suffix: &str) -> Result<Netns> {
        Netns::create_with(naming, &format!("{}-{suffix}", naming.unique_name()))
    }

    /// A new namespace with exactly this name (must start with `ft<pid>`, so
    /// that [`super::sweep_stale`] can tell whose it is), with `lo` up.
    pub fn create(name: &str) -> Result<Netns> {
        Netns::create_with(Naming::TESTS, name)
    }

    /// Like [`Netns::create`], for a name of `naming`.
    pub fn create_with(naming: Naming, name: &str) -> Result<Netns> {
        let prefix = naming.prefix;
        ensure!(
            name.starts_with(prefix) && owner_pid(name, prefix).is_some(),
            "namespace name {name:?} must look like {prefix}<pid>-..."
        );
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            path: Path::new("/run/netns").join(name),
        };
        // From here on a failure drops `ns`, which deletes the namespace.
        ns.cmd(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <name> ARGS...`; returns stdout, error (with stderr) on failure.
    pub fn cmd(&self, args: &[&str]) -> Result<String> {
        command_stdout(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A `Command` running `program` inside this namespace through
    /// `nsenter --net=/run/netns/<name>` (not `ip netns exec`, which hides
    /// the cgroup2 mount). The child inherits this process' cgroup. Bound its
    /// run time yourself, e.g. with [`super::command_output`].
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path.display()))
            .arg("--")
            .arg(program);
        c
    }

    fn open(&self) -> Result<File> {
        File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))
    }

    /// Runs `f` on a new thread that has joined this namespace and returns
    /// its result. A panic in `f` is re-raised in the caller. Sockets created
    /// inside keep the namespace after `f` returns, so `f` may return them
    /// (see [`super::TcpSession`]).
    ///
    /// Panics if the namespace cannot be entered (sandbox infrastructure
    /// failure).
    pub fn run<T, F>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let file = self
            .open()
            .unwrap_or_else(|e| panic!("netns {}: {e:#}", self.name));
        let name = self.name.clone();
        thread::scope(|s| {
            let handle = thread::Builder::new()
                .name(format!("ns:{}", self.name))
                .spawn_scoped(s, move || {
                    enter(&file).unwrap_or_else(|e| panic!("setns into {name}: {e}"));
                    drop(file);
                    f()
                })
                .expect("spawning a thread");
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Spawns a thread named `thread_name` that joins this namespace and
    /// runs `f`. The thread (and threads it spawns) stay in the namespace.
    /// Whoever holds the handle must make `f` end (bounded loops, stop
    /// flags) and join it.
    pub fn spawn_thread<T, F>(&self, thread_name: &str, f: F) -> Result<JoinHandle<T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let file = self.open()?;
        let name = self.name.clone();
        thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                enter(&file).unwrap_or_else(|e| panic!("setns into {name}: {e}"));
                drop(file);
                f()
            })
            .context("spawning a thread")
    }
}

/// Moves the calling thread into the network namespace `file` refers to.
fn enter(file: &File) -> std::io::Result<()> {
    // SAFETY: a valid, open namespace fd; CLONE_NEWNET only affects this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let mut last = None;
        for _ in 0..3 {
            match ip(&["netns", "del", &self.name]) {
                Ok(_) => return,
                Err(e) => {
                    if !self.path.exists() {
                        return;
                    }
                    last = Some(e);
                    thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
        if let Some(e) = last {
            eprintln!("sandbox: could not delete netns {}: {e:#}", self.name);
        }
    }
}
