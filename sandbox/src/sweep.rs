//! Removes what killed runs left behind.
//!
//! Only resources named by one [`Naming`] are touched: namespaces
//! `/run/netns/<prefix><pid>-*`, cgroups `<cgroup2 root>/<prefix><pid>-*`,
//! bpffs dirs `/sys/fs/bpf/<dir_prefix><pid>-*`, the explain sockets of
//! Ferries on those dirs (`/run/ferry/explain/<dir_prefix><pid>-*`, left
//! when Ferry is killed) and temp dirs `$TMPDIR/<dir_prefix><pid>-*`; [`sweep_stale`] takes those whose pid is
//! no longer a process, [`sweep_own`] those of this process (a last net
//! after its guards have run).

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use super::Naming;
use super::bpffs::{BPFFS_ROOT, bpffs_mounted, remove_tree};
use super::cgroup::{cgroup2_root, procs_of};
use super::util::{ip, owner_pid, pid_alive};

/// What a sweep removed, and what it could not.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    pub netns: Vec<String>,
    pub cgroups: Vec<PathBuf>,
    pub bpffs_dirs: Vec<PathBuf>,
    pub explain_sockets: Vec<PathBuf>,
    pub temp_dirs: Vec<PathBuf>,
    pub errors: Vec<String>,
}

impl SweepReport {
    pub fn is_empty(&self) -> bool {
        self.netns.is_empty()
            && self.cgroups.is_empty()
            && self.bpffs_dirs.is_empty()
            && self.explain_sockets.is_empty()
            && self.temp_dirs.is_empty()
            && self.errors.is_empty()
    }
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(std::result::Result::ok)
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes leftovers of dead test runs ([`Naming::TESTS`]).
pub fn sweep_stale() -> SweepReport {
    sweep_stale_with(Naming::TESTS)
}

/// Removes leftovers of dead runs named by `naming` (see the module docs).
/// Processes still inside a stale cgroup (orphans of the dead run) are
/// killed with `cgroup.kill` so the cgroup can go.
pub fn sweep_stale_with(naming: Naming) -> SweepReport {
    sweep(naming, |pid| !pid_alive(pid))
}

/// Removes whatever this process still has named by `naming`: call it
/// after every guard has dropped, to catch what an interrupted helper
/// command made without handing it to a guard. A cgroup this process is
/// still in is left alone (killing it would kill us).
pub fn sweep_own(naming: Naming) -> SweepReport {
    let me = std::process::id();
    sweep(naming, |pid| pid == me)
}

fn sweep(naming: Naming, owner_selected: impl Fn(u32) -> bool) -> SweepReport {
    let mut r = SweepReport::default();
    let (prefix, dir_prefix) = (naming.prefix, naming.dir_prefix);
    let selected = |name: &str, prefix: &str| owner_pid(name, prefix).is_some_and(&owner_selected);

    for (name, _) in entries(Path::new("/run/netns")) {
        if selected(&name, prefix) {
            match ip(&["netns", "del", &name]) {
                Ok(_) => r.netns.push(name),
                Err(e) => r.errors.push(format!("netns {name}: {e:#}")),
            }
        }
    }

    match cgroup2_root() {
        Ok(root) => {
            for (name, path) in entries(&root) {
                if path.is_dir() && selected(&name, prefix) {
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
            if selected(&name, dir_prefix) {
                match remove_tree(&path) {
                    Ok(()) => r.bpffs_dirs.push(path),
                    Err(e) => r.errors.push(format!("{e:#}")),
                }
            }
        }
    }

    for (name, path) in entries(Path::new(lb_userspace::explain::RUN_DIR)) {
        if selected(&name, dir_prefix) {
            match fs::remove_file(&path) {
                Ok(()) => r.explain_sockets.push(path),
                Err(e) => r.errors.push(format!("{}: {e}", path.display())),
            }
        }
    }

    for (name, path) in entries(&std::env::temp_dir()) {
        if path.is_dir() && selected(&name, dir_prefix) {
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
    let procs = procs_of(dir).unwrap_or_default();
    if procs.contains(&std::process::id()) {
        return Err("this process is inside".into());
    }
    if !procs.is_empty() {
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
