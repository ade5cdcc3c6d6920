//! The cached reader: what it skips, what it catches, and that it always
//! says what a fresh read says.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;
use crate::model::InvalidObject;
use crate::source::manifests::read_manifests;

fn service(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: ns\n\
         spec:\n  ports:\n    - port: {port}\n"
    )
}

fn node(name: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

/// Gives a file an mtime long past (so that its identity is trusted at
/// once), `nanos` into the same second.
fn set_old_mtime(path: &Path, nanos: u32) {
    let mtime = SystemTime::UNIX_EPOCH + Duration::new(1_600_000_000, nanos);
    let file = File::options().write(true).open(path).unwrap();
    file.set_modified(mtime).unwrap();
}

fn port_of(snapshot: &Snapshot, name: &str) -> i32 {
    let service = snapshot
        .cluster
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no service {name}"));
    service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port
}

fn service_arc<'s>(
    snapshot: &'s Snapshot,
    name: &str,
) -> &'s Arc<k8s_openapi::api::core::v1::Service> {
    snapshot
        .cluster
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// Everything a snapshot says, comparable.
fn summary(snapshot: &Snapshot) -> (String, String, String, Vec<InvalidObject>) {
    (
        format!("{:?}", snapshot.cluster.services),
        format!("{:?}", snapshot.cluster.endpoint_slices),
        format!("{:?}", snapshot.node),
        snapshot.invalid.clone(),
    )
}

fn stats(files: usize, read: usize, parsed: usize) -> ReadStats {
    ReadStats {
        files,
        read,
        parsed,
    }
}

#[test]
fn unchanged_files_are_not_read_and_keep_their_objects() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", &service("a", 80));
    let b = write(dir.path(), "b.yaml", &service("b", 80));
    set_old_mtime(&a, 0);
    set_old_mtime(&b, 0);
    let mut reader = ManifestReader::new(dir.path(), "node-a").trusting_recent_changes();

    let first = reader.read();
    assert_eq!(reader.stats(), stats(2, 2, 2));

    fs::write(&b, service("b", 81)).unwrap();
    set_old_mtime(&b, 1);
    let second = reader.read();
    assert_eq!(reader.stats(), stats(2, 1, 1));
    assert!(Arc::ptr_eq(
        service_arc(&first, "a"),
        service_arc(&second, "a")
    ));
    assert!(!Arc::ptr_eq(
        service_arc(&first, "b"),
        service_arc(&second, "b")
    ));
    assert_eq!(port_of(&second, "b"), 81);

    assert!(reader.read_if_changed().is_none());
    assert_eq!(reader.stats(), stats(2, 0, 0));
    let third = reader.read();
    assert!(Arc::ptr_eq(
        service_arc(&second, "b"),
        service_arc(&third, "b")
    ));
}

#[test]
fn same_size_and_second_but_other_nanoseconds_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", &service("a", 80));
    set_old_mtime(&a, 100);
    let mut reader = ManifestReader::new(dir.path(), "node-a").trusting_recent_changes();
    assert_eq!(port_of(&reader.read(), "a"), 80);

    fs::write(&a, service("a", 81)).unwrap();
    set_old_mtime(&a, 200);
    assert_eq!(port_of(&reader.read(), "a"), 81);
    assert_eq!(reader.stats(), stats(1, 1, 1));

    // Another size, the same mtime as last read.
    fs::write(&a, service("a", 8080)).unwrap();
    set_old_mtime(&a, 200);
    assert_eq!(port_of(&reader.read(), "a"), 8080);
    assert_eq!(reader.stats(), stats(1, 1, 1));
}

/// A rewrite within the clock tick of the last read, keeping size and
/// mtime, leaves metadata that may be identical: a file changed that
/// recently is read again (not parsed again, if its contents are the same).
#[test]
fn a_rewrite_right_after_a_read_is_not_missed() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", &service("a", 80));
    let mtime = fs::metadata(&a).unwrap().modified().unwrap();
    let mut reader = ManifestReader::new(dir.path(), "node-a");
    let first = reader.read();

    fs::write(&a, service("a", 81)).unwrap();
    File::options()
        .write(true)
        .open(&a)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let second = reader.read_if_changed().expect("change missed");
    assert_eq!(port_of(&second, "a"), 81);
    assert!(!Arc::ptr_eq(
        service_arc(&first, "a"),
        service_arc(&second, "a")
    ));

    // Same text again: read, found unchanged, objects kept.
    fs::write(&a, service("a", 81)).unwrap();
    assert!(reader.read_if_changed().is_none());
    assert_eq!(reader.stats(), stats(1, 1, 0));
    assert!(Arc::ptr_eq(
        service_arc(&second, "a"),
        service_arc(&reader.read(), "a")
    ));
}

#[test]
fn a_removed_file_takes_its_objects_along() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service("a", 80));
    let b = write(
        dir.path(),
        "b.yaml",
        &format!("{}---\n{}", service("b", 80), node("node-a")),
    );
    let mut reader = ManifestReader::new(dir.path(), "node-a");
    let first = reader.read();
    assert_eq!(first.cluster.services.len(), 2);
    assert!(first.node.is_some());

    fs::remove_file(&b).unwrap();
    let second = reader.read_if_changed().expect("removal missed");
    assert_eq!(second.cluster.services.len(), 1);
    assert_eq!(port_of(&second, "a"), 80);
    assert!(second.node.is_none());
    assert_eq!(reader.stats().files, 1);
}

#[test]
fn duplicates_across_files_stay_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = write(dir.path(), "a.yaml", &service("web", 80));
    let b = write(
        dir.path(),
        "b.yaml",
        &format!("{}---\n{}", service("other", 1), service("web", 81)),
    );
    let reason = format!(
        "{}: document 2 (line 9): duplicate Service, ignored (first defined at {}: document 1 (line 1))",
        b.display(),
        a.display()
    );
    let mut reader = ManifestReader::new(dir.path(), "node-a");
    let check = |snapshot: &Snapshot, web_port: i32| {
        assert_eq!(port_of(snapshot, "web"), web_port);
        let reasons: Vec<_> = snapshot.invalid.iter().map(|i| &i.reason).collect();
        assert_eq!(reasons, [&reason]);
    };
    check(&reader.read(), 80);

    // The duplicate's file changes elsewhere, then the first's.
    fs::write(
        &b,
        format!("{}---\n{}", service("other", 2), service("web", 81)),
    )
    .unwrap();
    check(&reader.read(), 80);
    fs::write(&a, service("web", 90)).unwrap();
    check(&reader.read(), 90);

    // Without the first, the other is no duplicate.
    fs::remove_file(&a).unwrap();
    let snapshot = reader.read();
    assert_eq!(port_of(&snapshot, "web"), 81);
    assert!(snapshot.invalid.is_empty(), "{:#?}", snapshot.invalid);
}

/// Whatever happens to the files, the cached reader says what a fresh read
/// says: objects, Node, and reports in their order.
#[test]
fn cached_reads_match_fresh_reads_through_edits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut reader = ManifestReader::new(d, "node-a");
    let json_list = |names: &[&str], port: u16| {
        let items: Vec<_> = names
            .iter()
            .map(|name| {
                serde_json::json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": name, "namespace": "ns"},
                    "spec": {"ports": [{"port": port}]}})
            })
            .collect();
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
    };
    /// What is done to the files, and its name for failures.
    type Step<'d> = (&'static str, Box<dyn Fn() + 'd>);
    let steps: Vec<Step<'_>> = vec![
        ("empty directory", Box::new(|| {})),
        (
            "files added",
            Box::new(|| {
                write(
                    d,
                    "a.yaml",
                    &format!("{}---\n{}", service("web", 80), node("node-a")),
                );
                write(d, "b.json", &json_list(&["web", "api"], 81));
                write(
                    d,
                    "c.yml",
                    &format!("{}---\nkind: [oops\n", service("db", 5432)),
                );
                write(d, ".hidden.yaml", &service("hidden", 1));
            }),
        ),
        (
            "edited in place",
            Box::new(|| {
                write(d, "b.json", &json_list(&["web", "api", "cache"], 82));
            }),
        ),
        (
            "renamed ahead of the first definitions",
            Box::new(|| fs::rename(d.join("b.json"), d.join("0.json")).unwrap()),
        ),
        (
            "replaced by rename",
            Box::new(|| {
                write(
                    d,
                    ".tmp",
                    &format!("{}---\n{}", service("web", 83), node("node-b")),
                );
                fs::rename(d.join(".tmp"), d.join("a.yaml")).unwrap();
            }),
        ),
        (
            "a second node-a",
            Box::new(|| {
                write(
                    d,
                    "n.yaml",
                    &format!("{}---\n{}", node("node-a"), node("node-a")),
                );
            }),
        ),
        (
            "removed",
            Box::new(|| fs::remove_file(d.join("c.yml")).unwrap()),
        ),
        (
            "unreadable",
            Box::new(|| {
                fs::write(d.join("a.yaml"), b"\xff\xfe").unwrap();
                std::os::unix::fs::symlink(d.join("nowhere.yaml"), d.join("dangling.yaml"))
                    .unwrap();
            }),
        ),
        (
            "rewritten identically",
            Box::new(|| {
                write(d, "0.json", &json_list(&["web", "api", "cache"], 82));
            }),
        ),
        (
            "all removed",
            Box::new(|| {
                for entry in fs::read_dir(d).unwrap() {
                    fs::remove_file(entry.unwrap().path()).unwrap();
                }
            }),
        ),
    ];
    for (step, change) in steps {
        change();
        let cached = reader.read();
        let fresh = read_manifests(d, "node-a");
        assert_eq!(summary(&cached), summary(&fresh), "after step: {step}");
    }
}

/// Timing, not a check: `cargo test --release -p lb-userspace --lib
/// timing_of_rescans -- --ignored --nocapture`, on the manifests of
/// `cargo xtask bench-inputs --services 10000 --out-dir /tmp/in10k` (or
/// the directory in `FERRY_TIMING_MANIFESTS`).
#[test]
#[ignore = "timing harness; needs generated inputs"]
fn timing_of_rescans() {
    use std::time::Instant;

    let source = std::env::var_os("FERRY_TIMING_MANIFESTS")
        .map_or_else(|| PathBuf::from("/tmp/in10k/manifests"), PathBuf::from);
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for entry in fs::read_dir(&source).expect("no inputs: see the doc comment") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        fs::copy(&path, dir.path().join(&name)).unwrap();
        names.push(name);
    }
    names.sort();
    // Let the copies' timestamps settle, as a long-running watch sees them.
    std::thread::sleep(files::RECENT + Duration::from_millis(100));
    let timed = |what: &str, read: &mut dyn FnMut() -> Option<Snapshot>| {
        let start = Instant::now();
        let snapshot = read();
        let elapsed = start.elapsed();
        println!("{what:<48} {:>9.1} ms", elapsed.as_secs_f64() * 1e3);
        snapshot
    };

    timed("fresh read_manifests (all files)", &mut || {
        Some(read_manifests(dir.path(), "node-a"))
    });
    let mut reader = ManifestReader::new(dir.path(), "node-a");
    let first = timed("reader: first read (all files)", &mut || {
        Some(reader.read())
    })
    .unwrap();
    println!(
        "  {:?}, {} services",
        reader.stats(),
        first.cluster.services.len()
    );
    for _ in 0..3 {
        timed("reader: read_if_changed, nothing changed", &mut || {
            reader.read_if_changed()
        });
    }
    timed("reader: read, nothing changed", &mut || Some(reader.read()));

    // One endpoint of the last file turns not ready.
    let changed = dir.path().join(names.last().unwrap());
    let text = fs::read_to_string(&changed).unwrap();
    let text = text.replacen("\"ready\":true", "\"ready\":false", 1);
    fs::write(&changed, text).unwrap();
    let second = timed("reader: read, one file changed", &mut || {
        Some(reader.read())
    })
    .unwrap();
    println!("  {:?}", reader.stats());
    let shared = first
        .cluster
        .services
        .iter()
        .zip(&second.cluster.services)
        .filter(|(a, b)| Arc::ptr_eq(a, b))
        .count();
    println!(
        "  {shared} of {} services the same Arcs",
        second.cluster.services.len()
    );
    timed("reader: read_if_changed, just after (re-hash)", &mut || {
        reader.read_if_changed()
    });
    println!("  {:?}", reader.stats());
    timed("reader: read_if_changed, nothing changed", &mut || {
        reader.read_if_changed()
    });
}

#[test]
fn an_edit_in_a_file_keeps_the_other_objects_of_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let text = |b_port| {
        format!(
            "{}---\n{}---\n{}",
            service("a", 80),
            service("b", b_port),
            service("c", 80)
        )
    };
    let file = write(dir.path(), "all.yaml", &text(80));
    set_old_mtime(&file, 0);
    let mut reader = ManifestReader::new(dir.path(), "node-a").trusting_recent_changes();
    let first = reader.read();

    fs::write(&file, text(81)).unwrap();
    set_old_mtime(&file, 1);
    let second = reader.read();
    assert_eq!(reader.stats(), stats(1, 1, 1));
    for unchanged in ["a", "c"] {
        assert!(
            Arc::ptr_eq(
                service_arc(&first, unchanged),
                service_arc(&second, unchanged)
            ),
            "{unchanged} got a new object"
        );
    }
    assert!(!Arc::ptr_eq(
        service_arc(&first, "b"),
        service_arc(&second, "b")
    ));
    assert_eq!(port_of(&second, "b"), 81);
    assert_eq!(
        summary(&second),
        summary(&read_manifests(dir.path(), "node-a"))
    );
}
