//! Removes what killed test runs left behind.
//!
//! Only resources whose name carries the pid of a process that no longer
//! exists are touched: namespaces `/run/netns/ft<pid>-*`, cgroups
//! `<cgroup2 root>/ft<pid>-*`, bpffs dirs `/sys/fs/bpf/ferry-test-<pid>-*`
//! and temp dirs `$TMPDIR/ferry-test-<pid>-*`. Resources of live processes
//! (this one included) are left alone.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::bpffs::{BPFFS_ROOT, bpffs_mounted, remove_tree};
use crate::cgroup::{cgroup2_root, procs_of};
use crate::util::{ip, owner_pid, pid_alive};
use crate::{DIR_PREFIX, PREFIX};

/// What [`sweep_stale`] removed, and what it could not.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub netns: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub bpffs_dirs: Vec<PathBuf>,
    pub temp_dirs: Vec<PathBuf>,
    pub errors: Vec<String>,
}

impl SweepReport {
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty()
            && self.cgroups.is_empty()
            && self.bpffs_dirs.is_empty()
            && self.temp_dirs.is_empty()
            && self.errors.is_empty()
    }
}

fn stale(name: &str, prefix: &str) -> bool {
    owner_pid(name, prefix).is_some_and(|pid| !pid_alive(pid))
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes leftovers of dead test runs (see the module docs). Processes
/// still inside a stale cgroup (orphans of the dead run) are killed with
/// `cgroup.kill` so the cgroup can go.
pub fn sweep_stale() -> SweepReport {
    let mut r = SweepReport::default();

    for (name, _) in entries(Path::new("/run/netns")) {
        if stale(&name, PREFIX) {
            match ip(&["netns", "del", &name]) {
                Ok(_) => r.netns.push(name),
                Err(e) => r.errors.push(format!("netns {name}: {e:#}")),
            }
        }
    }

    match cgroup2_root() {
        Ok(root) => {
            for (name, path) in entries(&root) {
                if path.is_dir() && stale(&name, PREFIX) {
                    match remove_cgroup_tree(&path, 0) {
                        Ok(()) => r.cgroups.push(path),
                        Err(e) => r.errors.push(format!("cgroup {}: {e}", path.display())),
                    }
                }
            }
        }
        Err(e) => r.errors.push(format!("{e:#}")),
    }

    if bpffs_mounted().unwrap_or(false) {
        for (name, path) in entries(Path::new(BPFFS_ROOT)) {
            if stale(&name, DIR_PREFIX) {
                match remove_tree(&path) {
                    Ok(()) => r.bpffs_dirs.push(path),
                    Err(e) => r.errors.push(format!("{e:#}")),
                }
            }
        }
    }

    for (name, path) in entries(&std::env::temp_dir()) {
        if path.is_dir() && stale(&name, DIR_PREFIX) {
            match remove_tree(&path) {
                Ok(()) => r.temp_dirs.push(path),
                Err(e) => r.errors.push(format!("{e:#}")),
            }
        }
    }
    r
}

/// rmdir of a cgroup and its descendants (depth-first, bounded depth and
/// time), killing processes left inside.
fn remove_cgroup_tree(dir: &Path, depth: usize) -> Result<(), String> {
    if depth > 8 {
        return Err("too deep".into());
    }
    for (_, child) in entries(dir) {
        if child.is_dir() {
            remove_cgroup_tree(&child, depth + 1)?;
        }
    }
    if !procs_of(dir).unwrap_or_default().is_empty() {
        let _ = fs::write(dir.join("cgroup.kill"), "1");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e.to_string()),
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}
