//! Reading PATH again and again at the cost of what changed: every file's
//! entries are kept with the identity (metadata) of what was read, and a
//! file whose identity is unchanged is not even opened. Its objects stay
//! the same `Arc`s, which lets `model::Incremental` reuse the work done on
//! them.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::assemble::assemble;
use super::files::{self, FileId};
use super::objects::{Entry, Object};
use super::parse::parse_file;
use crate::model::{FoldHashMap, ObjectKind};
use crate::source::Snapshot;

/// Reads the manifests under a PATH (see the module documentation of
/// `source::manifests`), keeping what it read for the next time.
///
/// ```no_run
/// use lb_userspace::source::manifests::ManifestReader;
///
/// let mut reader = ManifestReader::new("/etc/ferry/manifests", "node-a");
/// let first = reader.read();
/// // ... files change ...
/// if let Some(next) = reader.read_if_changed() { /* publish */ }
/// ```
#[derive(Debug)]
pub struct ManifestReader {
    path: PathBuf,
    node_name: String,
    /// The files of the last scan, in reading order.
    files: Vec<CachedFile>,
    /// No scan yet: the first always counts as a change.
    first_scan: bool,
    /// See [`files::RECENT`]; zero in tests of the metadata checks.
    recent: Duration,
    stats: ReadStats,
    /// The snapshot of the files as they are, once assembled: assembling
    /// tens of thousands of objects again costs milliseconds, a copy of
    /// the `Arc`s a fraction of that.
    assembled: Option<Snapshot>,
}

/// What the last scan did, for logs and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Files PATH names.
    pub files: usize,
    /// Files opened and read (their metadata said they may have changed).
    pub read: usize,
    /// Files parsed (their contents had changed).
    pub parsed: usize,
}

/// One file as last read.
#[derive(Debug)]
struct CachedFile {
    path: PathBuf,
    /// Identity of what was read, if it can be trusted to tell the next
    /// scan that nothing changed (see [`FileId::is_recent`]); `None`: read
    /// the file again next time.
    trusted: Option<FileId>,
    /// Hash of the bytes read, or why there were none.
    content: Result<u64, String>,
    entries: Vec<Entry>,
}

impl ManifestReader {
    /// A reader of the manifests under `path` whose snapshots hold the Node
    /// named `node_name` (if one is among them). Reads nothing yet.
    pub fn new(path: impl Into<PathBuf>, node_name: impl Into<String>) -> Self {
        ManifestReader {
            path: path.into(),
            node_name: node_name.into(),
            files: Vec::new(),
            first_scan: true,
            recent: files::RECENT,
            stats: ReadStats::default(),
            assembled: None,
        }
    }

    /// Trusts even identities of files changed just now, so that tests see
    /// unchanged files skipped and changed ones caught by metadata alone.
    #[cfg(test)]
    fn trusting_recent_changes(mut self) -> Self {
        self.recent = Duration::ZERO;
        self
    }

    /// Scans PATH and returns its snapshot. Objects of files unchanged
    /// since the last scan are the same `Arc`s as in its snapshot.
    pub fn read(&mut self) -> Snapshot {
        self.refresh();
        self.snapshot()
    }

    /// Scans PATH and returns its snapshot if it differs from the last
    /// scan's (always, on the first scan).
    pub fn read_if_changed(&mut self) -> Option<Snapshot> {
        self.refresh().then(|| self.snapshot())
    }

    /// What the last scan did.
    pub fn stats(&self) -> ReadStats {
        self.stats
    }

    /// Scans PATH, reading only the files whose metadata changed and
    /// parsing only those whose contents did. True if the snapshot may
    /// differ from the last scan's: a file was added, removed, or parsed.
    fn refresh(&mut self) -> bool {
        let changed = self.rescan();
        if changed {
            self.assembled = None;
        }
        changed
    }

    /// [`Self::refresh`] but for the snapshot kept.
    fn rescan(&mut self) -> bool {
        let mut previous: HashMap<PathBuf, CachedFile> = self
            .files
            .drain(..)
            .map(|file| (file.path.clone(), file))
            .collect();
        let mut stats = ReadStats::default();
        let mut changed = std::mem::take(&mut self.first_scan);
        let mut keep = |file: CachedFile, parsed: bool| {
            changed |= parsed;
            stats.parsed += usize::from(parsed);
            self.files.push(file);
        };
        match files::list(&self.path) {
            // PATH itself as one unreadable file.
            Err(cause) => {
                let (file, parsed) =
                    settle(previous.remove(&self.path), &self.path, None, Err(cause));
                keep(file, parsed);
            }
            Ok(listing) => {
                for (path, listed) in listing.files {
                    let scanned = scan_file(
                        path,
                        listed,
                        listing.is_dir,
                        self.recent,
                        &mut previous,
                        &mut stats.read,
                    );
                    if let Some((file, parsed)) = scanned {
                        keep(file, parsed);
                    }
                }
            }
        }
        // Files no longer there.
        changed |= !previous.is_empty();
        stats.files = self.files.len();
        self.stats = stats;
        changed
    }

    /// The snapshot of the last scan: every file's objects, with the
    /// rules across files applied (see [`assemble`]).
    fn snapshot(&mut self) -> Snapshot {
        self.assembled
            .get_or_insert_with(|| {
                assemble(
                    self.files.iter().map(|file| file.entries.as_slice()),
                    &self.node_name,
                )
            })
            .clone()
    }
}

/// The file at `path` (`listed`: its identity as listed) as cached from
/// `previous` if its identity is unchanged, else as read again (counted in
/// `reads`; trusted next time unless changed within `recent`), with
/// whether it was parsed. `None`: it vanished since listing (`may_vanish`,
/// in a directory); its previous state, if any, stays in `previous`, to
/// count as removed.
fn scan_file(
    path: PathBuf,
    listed: Option<FileId>,
    may_vanish: bool,
    recent: Duration,
    previous: &mut HashMap<PathBuf, CachedFile>,
    reads: &mut usize,
) -> Option<(CachedFile, bool)> {
    if let Some(file) = previous.get(&path)
        && file.trusted.is_some()
        && file.trusted == listed
    {
        return previous.remove(&path).map(|file| (file, false));
    }
    *reads += 1;
    let now = SystemTime::now();
    let (content, trusted) = match files::read(&path) {
        Err(e) if may_vanish && e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => (Err(format!("cannot read: {e}")), None),
        Ok((bytes, id)) => (Ok(bytes), Some(id).filter(|id| !id.is_recent(now, recent))),
    };
    Some(settle(previous.remove(&path), &path, trusted, content))
}

/// The cached file for `path` as just read (`content`: its bytes, or why
/// there are none), and whether it was parsed. Contents equal to what
/// `previous` read keep its entries, and so their objects' `Arc`s.
fn settle(
    previous: Option<CachedFile>,
    path: &Path,
    trusted: Option<FileId>,
    content: Result<Vec<u8>, String>,
) -> (CachedFile, bool) {
    let hash = match &content {
        Ok(bytes) => Ok(files::content_hash(bytes)),
        Err(cause) => Err(cause.clone()),
    };
    let previous = match previous {
        Some(mut file) if file.content == hash => {
            file.trusted = trusted;
            return (file, false);
        }
        other => other,
    };
    let previous = previous.map(|file| file.entries).unwrap_or_default();
    let mut entries = parse_file(path, content.as_deref().map_err(String::as_str), &previous);
    keep_unchanged_objects(&mut entries, previous);
    let file = CachedFile {
        path: path.to_owned(),
        trusted,
        content: hash,
        entries,
    };
    (file, true)
}

/// Gives each object of a re-parsed file that is equal to the previous
/// parse's object of its kind, namespace and name that object's `Arc`:
/// the model's memo reuses its work for objects it has seen (by pointer),
/// so an edit of one Service in a file of a thousand costs one Service.
/// JSON objects of unchanged text already are those `Arc`s (see
/// `Collector::reusing`); this catches the rest (YAML, reformatted JSON).
/// Comparing costs about a microsecond per object, parsing ten times that.
fn keep_unchanged_objects(entries: &mut [Entry], previous: Vec<Entry>) {
    let mut old: FoldHashMap<(ObjectKind, String, String), Object> = previous
        .into_iter()
        .filter_map(|entry| match entry {
            Entry::Object { object, .. } => {
                let (kind, namespace, name) = object.key();
                Some(((kind, namespace.to_owned(), name.to_owned()), object))
            }
            Entry::Invalid(_) => None,
        })
        .collect();
    for entry in entries {
        let Entry::Object { object, .. } = entry else {
            continue;
        };
        let (kind, namespace, name) = object.key();
        let key = (kind, namespace.to_owned(), name.to_owned());
        if let Some(before) = old.remove(&key)
            && before.same_content(object)
        {
            *object = before;
        }
    }
}

#[cfg(test)]
mod tests;
