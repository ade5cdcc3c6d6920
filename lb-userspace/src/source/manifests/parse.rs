//! Reading one file's bytes into its entries (objects and reports), with
//! no regard for the other files.

use std::path::Path;

use super::documents;
use super::objects::{Collector, Entry, Origin};

/// The entries of the file at `path`: from its bytes, or, when they could
/// not be had, one whole-file report with `Err`'s cause. JSON or YAML is
/// decided by the extension (anything but `.json` is YAML, a superset).
/// `previous`: the file's entries as last parsed, whose objects are reused
/// for JSON objects of unchanged text.
pub(super) fn parse_file(
    path: &Path,
    content: Result<&[u8], &str>,
    previous: &[Entry],
) -> Vec<Entry> {
    let mut collector = Collector::reusing(previous);
    match content {
        Err(cause) => collector.unreadable(&Origin::file(path), cause),
        Ok(bytes) if is_json(path) => {
            for doc in documents::json_documents(bytes) {
                let origin = Origin::document(path, doc.index, doc.line);
                match doc.value {
                    Ok(raw) => collector.add_json(raw, &origin),
                    Err(cause) => collector.unreadable(&origin, cause),
                }
            }
        }
        Ok(bytes) => match std::str::from_utf8(bytes) {
            Err(e) => collector.unreadable(&Origin::file(path), format_args!("not UTF-8: {e}")),
            Ok(text) => {
                for doc in documents::yaml_documents(text) {
                    let origin = Origin::document(path, doc.index, doc.line);
                    match doc.value {
                        Ok(value) => collector.add(value, &origin),
                        Err(cause) => collector.unreadable(&origin, cause),
                    }
                }
            }
        },
    }
    collector.finish()
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}
