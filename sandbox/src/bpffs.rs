//! A private bpffs directory per test or demo run, for the agent's pins.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};
use lb_userspace::datapath::paths;

use super::Naming;

/// Where bpffs is (or gets) mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Whether a bpffs is mounted at (or above) [`BPFFS_ROOT`]: the agent's own
/// check.
pub fn bpffs_mounted() -> Result<bool> {
    Ok(paths::BpffsDir::new(BPFFS_ROOT).on_bpffs()?)
}

/// `/sys/fs/bpf/<dir_prefix><pid>-<n>`, prepared as the agent prepares its
/// directory (bpffs mounted at /sys/fs/bpf if it is not, `maps/` and
/// `links/` created: `lb_userspace::datapath::paths::BpffsDir::prepare`), and
/// removed (with every pin inside, which releases pinned links and maps) on
/// drop. Stop the agent (and run its cleanup) first: that needs the
/// directory.
#[derive(Debug)]
pub struct BpffsDir {
    dir: paths::BpffsDir,
}

impl BpffsDir {
    /// `/sys/fs/bpf/ferry-test-<pid>-<n>` ([`Naming::TESTS`]).
    pub fn new() -> Result<BpffsDir> {
        BpffsDir::new_with(Naming::TESTS)
    }

    pub fn new_with(naming: Naming) -> Result<BpffsDir> {
        let path = Path::new(BPFFS_ROOT).join(naming.unique_dir_name());
        // Held before anything is made, so a half-prepared dir is removed too.
        let guard = BpffsDir {
            dir: paths::BpffsDir::new(path),
        };
        guard
            .dir
            .prepare()
            .with_context(|| format!("preparing {}", guard.path().display()))?;
        Ok(guard)
    }

    pub fn path(&self) -> &Path {
        &self.dir.root
    }

    /// The directory as Ferry lays it out (`maps/NAME`, `links/NAME`).
    pub fn layout(&self) -> &paths::BpffsDir {
        &self.dir
    }

    /// Every entry (pins and dirs) below the directory, relative to it, sorted.
    pub fn entries(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        walk(self.path(), self.path(), &mut out, 0)?;
        out.sort();
        Ok(out)
    }
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>, depth: usize) -> Result<()> {
    if depth > 16 {
        return Ok(());
    }
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let p = entry.path();
        out.push(p.strip_prefix(base).unwrap_or(&p).to_path_buf());
        if entry.file_type()?.is_dir() {
            walk(base, &p, out, depth + 1)?;
        }
    }
    Ok(())
}

/// `remove_dir_all`, retried briefly (bounded).
pub fn remove_tree(path: &Path) -> Result<()> {
    let mut last = None;
    for _ in 0..5 {
        match fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => last = Some(e),
        }
        thread::sleep(Duration::from_millis(50));
    }
    Err(last.unwrap()).with_context(|| format!("removing {}", path.display()))
}

impl Drop for BpffsDir {
    fn drop(&mut self) {
        if let Err(e) = remove_tree(self.path()) {
            eprintln!("sandbox: {e:#}");
        }
    }
}
