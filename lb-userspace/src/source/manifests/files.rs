//! Which files PATH names, their identities (from metadata) and contents.

use std::fs::{self, File, Metadata};
use std::hash::BuildHasher as _;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Extensions read from a directory (compared case-insensitively).
const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// How long after a change a file's identity is not trusted (see
/// [`FileId::is_recent`]): above every common timestamp granularity (FAT's
/// is 2 s). Costs one more read (not parse) of a file just changed.
pub(super) const RECENT: Duration = Duration::from_secs(2);

/// What PATH names.
pub(super) struct Listing {
    /// The manifest files, in reading order, with their identities as
    /// listed (`None` if their metadata cannot be had, e.g. a dangling
    /// symlink: reading them reports the problem).
    pub files: Vec<(PathBuf, Option<FileId>)>,
    /// PATH is a directory: its files may vanish between listing and
    /// reading (that removal is seen on the next scan).
    pub is_dir: bool,
}

/// Lists PATH: the file itself (whatever its extension), or every
/// manifest file of the directory, sorted by name. `Err`: the directory
/// cannot be listed (the cause, for a whole-PATH report).
pub(super) fn list(path: &Path) -> Result<Listing, String> {
    let is_dir = fs::metadata(path).is_ok_and(|m| m.is_dir());
    let files = if is_dir {
        list_dir(path).map_err(|e| format!("cannot list directory: {e}"))?
    } else {
        let id = fs::metadata(path).ok().map(|m| FileId::of(&m));
        vec![(path.to_owned(), id)]
    };
    Ok(Listing { files, is_dir })
}

/// Manifest files of a directory (not its subdirectories), sorted by name.
/// Hidden files (editor swap and lock files, Kubernetes' `..data` links)
/// are skipped; so are entries that are directories.
fn list_dir(dir: &Path) -> io::Result<Vec<(PathBuf, Option<FileId>)>> {
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
        let id = match fs::metadata(&path) {
            Ok(m) if !m.is_file() => continue,
            Ok(m) => Some(FileId::of(&m)),
            Err(_) => None,
        };
        files.push((path, id));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// A file's identity as far as metadata tells: any write changes its size
/// or its mtime and ctime, a replacement (editors' rename, a ConfigMap's
/// symlink swap) its inode, a chmod its ctime. This is what make and file
/// watchers trust; contents are not hashed to confirm it. The one blind
/// spot, a write within the timestamps' granularity of the previous one
/// that keeps the size, is covered by [`FileId::is_recent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FileId {
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(super) fn of(m: &Metadata) -> Self {
        FileId {
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            dev: m.dev(),
            ino: m.ino(),
        }
    }

    /// True when the file changed less than `margin` before `now`, so
    /// shortly that a further change could leave the same timestamps
    /// (coarse clock ticks, or whole seconds on some filesystems): such an
    /// identity must not be trusted to mean "unchanged" (git's "racily
    /// clean" entries). A timestamp in the future (clock skew) counts as
    /// recent.
    pub(super) fn is_recent(&self, now: SystemTime, margin: Duration) -> bool {
        let changed = self.mtime.max(self.ctime);
        let Some(settled) = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .ok()
            .and_then(|d| d.checked_sub(margin))
        else {
            return true;
        };
        let settled = (
            i64::try_from(settled.as_secs()).unwrap_or(i64::MAX),
            i64::from(settled.subsec_nanos()),
        );
        changed >= settled
    }
}

/// A file's contents with the identity of what was read (taken from the
/// open file, so that a rename between listing and reading cannot pair
/// one file's identity with another's bytes), or why they could not be
/// had (the cause, for a whole-file report).
pub(super) fn read(path: &Path) -> io::Result<(Vec<u8>, FileId)> {
    let mut file = File::open(path)?;
    let id = FileId::of(&file.metadata()?);
    let mut bytes = Vec::with_capacity(usize::try_from(id.len).unwrap_or(0));
    file.read_to_end(&mut bytes)?;
    Ok((bytes, id))
}

/// Hash of a file's bytes, or of one JSON object's text: a file whose
/// metadata changed but whose hash did not (rewritten with the same text,
/// `touch`ed) keeps its parsed objects and changes no snapshot, and in a
/// file that changed, an object whose text did not is not decoded again.
/// foldhash reads megabytes in a fraction of a millisecond (SipHash took
/// about 2 ms for the bench's 2.6 MB files); the text is the operator's,
/// not an attacker's, so a keyed hash would buy nothing.
pub(super) fn content_hash(bytes: &[u8]) -> u64 {
    foldhash::quality::FixedState::with_seed(0).hash_one(bytes)
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
