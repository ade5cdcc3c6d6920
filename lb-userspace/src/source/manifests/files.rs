//! Which files PATH names, their contents, and fingerprints of both.

use std::collections::hash_map::DefaultHasher;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Extensions read from a directory (compared case-insensitively).
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// One manifest file as read.
#[derive(Debug)]
pub(super) struct Input {
    pub path: PathBuf,
    /// The bytes, or why they could not be had (a whole-file InvalidObject).
    pub content: Result<Vec<u8>, String>,
}

impl Input {
    pub fn is_json(&self) -> bool {
        self.path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
    }
}

/// Reads PATH: the file itself (whatever its extension), or every
/// manifest file of the directory, sorted by name. A file that vanishes
/// between listing and reading is skipped: its removal is a change that is
/// seen on the next scan anyway.
pub(super) fn read_inputs(path: &Path) -> Vec<Input> {
    let is_dir = fs::metadata(path).is_ok_and(|m| m.is_dir());
    let files = if is_dir {
        match list_dir(path) {
            Ok(files) => files,
            Err(e) => {
                return vec![Input {
                    path: path.to_owned(),
                    content: Err(format!("cannot list directory: {e}")),
                }];
            }
        }
    } else {
        vec![path.to_owned()]
    };
    files
        .into_iter()
        .filter_map(|file| match fs::read(&file) {
            Err(e) if is_dir && e.kind() == io::ErrorKind::NotFound => None,
            content => Some(Input {
                path: file,
                content: content.map_err(|e| format!("cannot read: {e}")),
            }),
        })
        .collect()
}

/// Manifest files of a directory (not its subdirectories), sorted by name.
/// Hidden files (editor swap and lock files, Kubernetes' `..data` links)
/// are skipped; so are entries that are directories.
fn list_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name_str) = name.to_str() else {
            continue;
        };
        if name_str.starts_with('.') {
            continue;
        }
        let ext_ok = Path::new(&name)
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)));
        if !ext_ok {
            continue;
        }
        let path = entry.path();
        // Follows symlinks; a dangling one is kept so that reading it
        // reports the problem.
        if fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// Hash of what was read: equal fingerprints mean equal snapshots.
pub(super) fn content_fingerprint(inputs: &[Input]) -> u64 {
    let mut h = DefaultHasher::new();
    inputs.len().hash(&mut h);
    for input in inputs {
        input.path.hash(&mut h);
        match &input.content {
            Ok(bytes) => (0u8, bytes).hash(&mut h),
            Err(e) => (1u8, e).hash(&mut h),
        }
    }
    h.finish()
}

/// Cheap hash of the files' metadata (names, sizes, mtimes, inodes), for
/// polling: when it changes, the contents are read again.
pub(super) fn stat_fingerprint(path: &Path) -> u64 {
    let mut h = DefaultHasher::new();
    let listed = if fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        list_dir(path)
    } else {
        Ok(vec![path.to_owned()])
    };
    match listed {
        Ok(files) => {
            for file in files {
                file.hash(&mut h);
                match fs::metadata(&file) {
                    Ok(m) => (m.len(), m.mtime(), m.mtime_nsec(), m.dev(), m.ino()).hash(&mut h),
                    Err(e) => e.kind().hash(&mut h),
                }
            }
        }
        Err(e) => e.kind().hash(&mut h),
    }
    h.finish()
}

/// The directory to watch: PATH itself, or the directory holding it (so
/// that editors' rename-replace and re-creation of the file are seen).
pub(super) fn watch_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_owned();
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Identity of a directory, to notice it being replaced (and its inotify
/// watch lost).
pub(super) fn dir_id(dir: &Path) -> Option<(u64, u64)> {
    fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}
