//! Where Ferry's state lives in the file system: the bpffs directory with its
//! pinned maps and links, and the cgroup v2 hierarchy it attaches to.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PathError {
    #[error("no cgroup2 file system is mounted (looked in /proc/mounts)")]
    NoCgroup2,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path} is in use by another ferry agent (only one may write these maps)")]
    Locked { path: PathBuf },
    #[error("mounting bpffs at {path}: {source}")]
    Mount { path: PathBuf, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PathError + '_ {
    move |source| PathError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Mount points of a file system type, from /proc/mounts.
fn mounts_of(fstype: &str) -> Result<Vec<PathBuf>, PathError> {
    let path = Path::new("/proc/mounts");
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_dev, dir, ty) = (fields.next()?, fields.next()?, fields.next()?);
            (ty == fstype).then(|| PathBuf::from(unescape_mount_path(dir)))
        })
        .collect())
}

/// /proc/mounts escapes space, tab, newline and backslash as octal.
fn unescape_mount_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The root of the cgroup v2 hierarchy. On hybrid hosts it is not
/// /sys/fs/cgroup (e.g. /sys/fs/cgroup/unified), so it is always looked up.
pub fn cgroup2_root() -> Result<PathBuf, PathError> {
    mounts_of("cgroup2")?
        .into_iter()
        .next()
        .ok_or(PathError::NoCgroup2)
}

/// Ferry's directory on bpffs: `maps/` holds the pinned maps, `links/` the
/// pinned program links that keep the programs attached while no agent runs.
#[derive(Clone, Debug)]
pub struct BpffsDir {
    pub root: PathBuf,
}

impl BpffsDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Pins of maps a new generation does not reuse (another layout, or
    /// no longer defined): moved here out of the way while the previous
    /// generation's programs still run on them, removed once the new
    /// generation's maps are filled.
    pub fn retired(&self) -> PathBuf {
        self.root.join("retired")
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    /// Makes sure a bpffs is mounted at or above the directory (mounting one
    /// on its parent when none is), then creates the directory tree.
    pub fn prepare(&self) -> Result<(), PathError> {
        if !self.on_bpffs()? {
            let mount_point = self
                .root
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf"));
            fs::create_dir_all(&mount_point).map_err(io_err(&mount_point))?;
            mount_bpffs(&mount_point)?;
        }
        for dir in [self.maps(), self.links(), self.retired()] {
            fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        }
        Ok(())
    }

    /// Whether the directory (or the place it would be created) is on a
    /// mounted bpffs.
    pub fn on_bpffs(&self) -> Result<bool, PathError> {
        let mounts = mounts_of("bpf")?;
        Ok(self.root.ancestors().any(|a| mounts.iter().any(|m| m == a)))
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Takes an exclusive lock on the directory for the life of the
    /// returned file: two agents writing the same maps would undo each
    /// other's work. The kernel drops the lock when the process dies.
    pub fn lock(&self) -> Result<fs::File, PathError> {
        use std::os::fd::AsRawFd as _;
        let dir = fs::File::open(&self.root).map_err(io_err(&self.root))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(PathError::Locked {
                path: self.root.clone(),
            });
        }
        Ok(dir)
    }
}

fn mount_bpffs(at: &Path) -> Result<(), PathError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt as _;
    let target = CString::new(at.as_os_str().as_bytes()).map_err(|e| PathError::Mount {
        path: at.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let fstype = c"bpf";
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PathError::Mount {
            path: at.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!(path = %at.display(), "mounted bpffs");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal_in_mount_paths() {
        assert_eq!(unescape_mount_path(r"/a\040b"), "/a b");
        assert_eq!(
            unescape_mount_path("/sys/fs/cgroup/unified"),
            "/sys/fs/cgroup/unified"
        );
        assert_eq!(unescape_mount_path(r"/x\"), r"/x\");
    }

    #[test]
    fn cgroup2_root_is_found_in_proc_mounts() {
        // Every Linux machine that runs Ferry has cgroup2 mounted somewhere;
        // the answer must be a directory with cgroup.procs in it.
        let root = cgroup2_root().expect("cgroup2 mount");
        assert!(root.join("cgroup.procs").exists(), "{}", root.display());
    }
}
