//! Standalone mode's source: Kubernetes objects read from manifest files
//! (`ferry standalone --manifests PATH`).
//!
//! PATH is a file or a directory. From a directory, every `*.yaml`, `*.yml`
//! and `*.json` file (not hidden, not in subdirectories) is read, in name
//! order. A YAML file may hold several documents separated by `---` lines; a
//! JSON file holds one object (or several, concatenated). Each document is
//! a v1 Service, a discovery.k8s.io/v1 EndpointSlice, a v1 Node, or a List
//! of those (`kind: List`, or a typed ServiceList/EndpointSliceList/NodeList
//! whose items may omit apiVersion and kind).
//!
//! Bad input never stops the reading: an unreadable file, an unparseable
//! document, an unsupported kind or an object that does not deserialize is
//! returned as an [`InvalidObject`](crate::model::InvalidObject) whose
//! reason names the file, the document (number and first line) and the
//! cause, and everything else is still read. Services and EndpointSlices
//! without a namespace get `default`; a second object with the kind,
//! namespace and name of an earlier one is reported and ignored.

//!
//! [`ManifestReader`] reads PATH again at the cost of what changed since
//! its last read: files whose metadata is unchanged are not opened, and
//! their objects are the very same `Arc`s as before.

mod assemble;
mod documents;
mod files;
mod objects;
mod parse;
mod reader;
mod watch;

use std::path::{Path, PathBuf};

use crate::source::{Snapshot, SnapshotSender};

pub use self::reader::{ManifestReader, ReadStats};

/// Reads the manifests under `path` once. `node` is the Node object named
/// `node_name`, if one is among them.
pub fn read_manifests(path: &Path, node_name: &str) -> Snapshot {
    ManifestReader::new(path, node_name).read()
}

/// Publishes the manifests under `path` on `tx`: a first snapshot at once,
/// then a fresh one whenever the files' contents change (within about half a
/// second; edits in place, editors' rename-replace, files added or removed
/// in the directory). PATH's directory (its parent, for a file) is watched
/// with inotify, or polled every 500 ms if that cannot be set up. Returns
/// when every receiver of `tx` is gone.
///
/// A PATH that does not exist yields a snapshot with no objects and one
/// invalid entry saying so; callers that want to refuse to start instead
/// should check PATH first.
pub async fn run(path: PathBuf, node_name: String, tx: SnapshotSender) {
    watch::run(path, node_name, tx, watch::Mode::Notify).await;
}

#[cfg(test)]
mod tests;
