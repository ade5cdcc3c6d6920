//! Assembling a snapshot from every file's entries: the rules that span
//! files. Cheap (no parsing, objects are shared), so it is redone whole
//! whenever any file changes.

use std::collections::hash_map;

use crate::model::{ClusterState, FoldHashMap, InvalidObject, ObjectKind, ReportCause};
use crate::source::Snapshot;

use super::objects::{Entry, Object};

/// The snapshot of `files` (each file's entries, files in reading order):
/// every object but a second one of the same kind, namespace and name
/// (reported, pointing at the first), and the Node named `node_name`.
/// Reports keep their reading order.
pub(super) fn assemble<'e>(
    files: impl IntoIterator<Item = &'e [Entry]> + Clone,
    node_name: &str,
) -> Snapshot {
    let objects = files.clone().into_iter().map(<[Entry]>::len).sum();
    // Where each identity was first defined; borrowed from the entries.
    let mut seen: FoldHashMap<(ObjectKind, &str, &str), &str> =
        FoldHashMap::with_capacity_and_hasher(objects, Default::default());
    let mut snapshot = Snapshot::default();
    let ClusterState {
        services,
        endpoint_slices,
    } = &mut snapshot.cluster;
    for entry in files.into_iter().flatten() {
        let (object, origin) = match entry {
            Entry::Invalid(invalid) => {
                snapshot.invalid.push(invalid.clone());
                continue;
            }
            Entry::Object { object, origin, .. } => (object, origin),
        };
        let key = object.key();
        match seen.entry(key) {
            hash_map::Entry::Occupied(first) => {
                let (kind, namespace, name) = key;
                snapshot.invalid.push(InvalidObject {
                    cause: ReportCause::Invalid,
                    kind,
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    reason: format!(
                        "{origin}: duplicate {kind}, ignored (first defined at {})",
                        first.get()
                    ),
                });
                continue;
            }
            hash_map::Entry::Vacant(slot) => {
                slot.insert(origin);
            }
        }
        match object {
            Object::Service(service) => services.push(service.clone()),
            Object::EndpointSlice(slice) => endpoint_slices.push(slice.clone()),
            Object::Node(node) if node.metadata.name.as_deref() == Some(node_name) => {
                snapshot.node = Some(node.clone());
            }
            Object::Node(_) => {}
        }
    }
    snapshot
}
