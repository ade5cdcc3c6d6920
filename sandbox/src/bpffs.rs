//! A private bpffs directory per test or demo run, for the agent's pins.

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Naming;
use super::util::mounts;

/// Where bpffs is (or gets) mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Whether a bpffs is mounted at [`BPFFS_ROOT`].
pub fn bpffs_mounted() -> Result<bool> {
    Ok(mounts()?
        .iter()
        .any(|(mnt, fstype)| mnt == BPFFS_ROOT && fstype == "bpf"))
}

/// Mounts bpffs at /sys/fs/bpf unless one is mounted there already. The
/// mount is left in place (the host's normal state).
pub fn ensure_bpffs_mounted() -> Result<()> {
    if bpffs_mounted()? {
        return Ok(());
    }
    let src = CString::new("bpf").unwrap();
    let target = CString::new(BPFFS_ROOT).unwrap();
    let fstype = CString::new("bpf").unwrap();
    let data = CString::new("mode=0700").unwrap();
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        // Another process may have mounted it meanwhile.
        if bpffs_mounted()? {
            return Ok(());
        }
        bail!("mounting bpffs at {BPFFS_ROOT}: {err}");
    }
    Ok(())
}

/// `/sys/fs/bpf/<dir_prefix><pid>-<n>`, created empty, removed (with every
/// pin inside, which releases pinned links and maps) on drop. Stop the
/// agent (and run its cleanup) first: that needs the directory.
#[derive(Debug)]
pub struct BpffsDir {
    path: PathBuf,
}

impl BpffsDir {
    /// `/sys/fs/bpf/ferry-test-<pid>-<n>` ([`Naming::TESTS`]).
    pub fn new() -> Result<BpffsDir> {
        BpffsDir::new_with(Naming::TESTS)
    }

    pub fn new_with(naming: Naming) -> Result<BpffsDir> {
        ensure_bpffs_mounted()?;
        let path = Path::new(BPFFS_ROOT).join(naming.unique_dir_name());
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(BpffsDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every entry (pins and dirs) below the directory, relative to it, sorted.
    pub fn entries(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        walk(&self.path, &self.path, &mut out, 0)?;
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
        if let Err(e) = remove_tree(&self.path) {
            eprintln!("sandbox: {e:#}");
        }
    }
}
