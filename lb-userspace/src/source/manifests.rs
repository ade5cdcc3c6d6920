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

mod documents;
mod files;
mod objects;
mod watch;

use std::path::{Path, PathBuf};

use self::objects::{Collector, Origin};
use crate::source::{Snapshot, SnapshotSender};

/// Reads the manifests under `path` once. `node` is the Node object named
/// `node_name`, if one is among them.
pub fn read_manifests(path: &Path, node_name: &str) -> Snapshot {
    snapshot_of(&files::read_inputs(path), node_name)
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

fn snapshot_of(inputs: &[files::Input], node_name: &str) -> Snapshot {
    let mut collector = Collector::new(node_name);
    for input in inputs {
        let bytes = match &input.content {
            Ok(bytes) => bytes,
            Err(cause) => {
                collector.unreadable(&Origin::file(&input.path), cause);
                continue;
            }
        };
        let docs = if input.is_json() {
            documents::json_documents(bytes)
        } else {
            match std::str::from_utf8(bytes) {
                Ok(text) => documents::yaml_documents(text),
                Err(e) => {
                    collector.unreadable(&Origin::file(&input.path), format!("not UTF-8: {e}"));
                    continue;
                }
            }
        };
        for doc in docs {
            let origin = Origin::document(&input.path, doc.index, doc.line);
            match doc.value {
                Ok(value) => collector.add(value, &origin),
                Err(cause) => collector.unreadable(&origin, cause),
            }
        }
    }
    collector.finish()
}

#[cfg(test)]
mod tests;
