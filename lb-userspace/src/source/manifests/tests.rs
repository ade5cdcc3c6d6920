use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch as channel;
use tokio::time::timeout;

use super::*;
use crate::model::{InvalidObject, ObjectKind};
use crate::source::SnapshotReceiver;

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
spec:
  clusterIP: 10.96.0.10
  ports:
    - name: http
      port: 80
      targetPort: 8080
      protocol: TCP
";

const SLICE: &str = "\
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
  - name: http
    port: 8080
    protocol: TCP
endpoints:
  - addresses: [\"10.0.0.1\"]
    conditions: {ready: true}
    nodeName: node-a
";

fn node(name: &str) -> String {
    format!(
        "\
apiVersion: v1
kind: Node
metadata:
  name: {name}
  labels:
    topology.kubernetes.io/zone: z1
status:
  addresses:
    - type: InternalIP
      address: 192.168.1.10
"
    )
}

fn service(namespace: Option<&str>, name: &str, port: u16) -> String {
    let namespace = namespace
        .map(|ns| format!("  namespace: {ns}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n{namespace}\
         spec:\n  ports:\n    - port: {port}\n"
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap();
    path
}

fn services(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .cluster
        .services
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s.metadata.namespace.as_deref().unwrap_or("?"),
                s.metadata.name.as_deref().unwrap_or("?")
            )
        })
        .collect()
}

fn slices(snapshot: &Snapshot) -> Vec<String> {
    snapshot
        .cluster
        .endpoint_slices
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s.namespace.as_deref().unwrap_or("?"),
                s.name.as_deref().unwrap_or("?")
            )
        })
        .collect()
}

fn node_name(snapshot: &Snapshot) -> Option<&str> {
    snapshot.node.as_ref()?.metadata.name.as_deref()
}

fn first_port(snapshot: &Snapshot) -> i32 {
    snapshot.cluster.services[0]
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()[0]
        .port
}

fn only_invalid(snapshot: &Snapshot) -> &InvalidObject {
    assert_eq!(snapshot.invalid.len(), 1, "{:#?}", snapshot.invalid);
    &snapshot.invalid[0]
}

#[test]
fn multi_document_yaml() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "---\n{SERVICE}---\n{SLICE}---\n{}---\n{}",
        node("node-a"),
        node("node-b")
    );
    let file = write(dir.path(), "all.yaml", &text);

    let snapshot = read_manifests(&file, "node-a");
    assert!(snapshot.invalid.is_empty(), "{:#?}", snapshot.invalid);
    assert_eq!(services(&snapshot), ["shop/web"]);
    assert_eq!(first_port(&snapshot), 80);
    assert_eq!(slices(&snapshot), ["shop/web-abc"]);
    let slice = &snapshot.cluster.endpoint_slices[0];
    assert_eq!(
        slice.endpoints[0].address.as_ref().map(ToString::to_string),
        Some("10.0.0.1".into())
    );
    assert_eq!(slice.endpoints[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(node_name(&snapshot), Some("node-a"));
}

#[test]
fn json_file() {
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "api", "namespace": "prod"},
        "spec": {"ports": [{"port": 443, "targetPort": "https"}]}
    }"#;
    let file = write(dir.path(), "svc.json", json);

    let snapshot = read_manifests(&file, "node-a");
    assert!(snapshot.invalid.is_empty(), "{:#?}", snapshot.invalid);
    assert_eq!(services(&snapshot), ["prod/api"]);
    assert_eq!(first_port(&snapshot), 443);
}

#[test]
fn list_kinds() {
    let dir = tempfile::tempdir().unwrap();
    // kubectl get -o json: a v1 List whose items carry their kinds.
    let list = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {},
        "items": [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "a", "namespace": "ns"},
             "spec": {"ports": [{"port": 1}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "a-1", "namespace": "ns"},
             "addressType": "IPv4", "endpoints": []},
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "ns"}}
        ]
    });
    write(dir.path(), "a-list.json", &list.to_string());
    // An API-style ServiceList: items without apiVersion/kind.
    write(
        dir.path(),
        "b-typed.yaml",
        "apiVersion: v1\nkind: ServiceList\nitems:\n\
         - metadata: {name: b}\n  spec: {ports: [{port: 2}]}\n",
    );

    let snapshot = read_manifests(dir.path(), "node-a");
    assert_eq!(services(&snapshot), ["ns/a", "default/b"]);
    assert_eq!(slices(&snapshot), ["ns/a-1"]);
    assert_eq!(node_name(&snapshot), Some("node-a"));
    let invalid = only_invalid(&snapshot);
    assert_eq!(invalid.kind, ObjectKind::Manifest);
    assert_eq!((&*invalid.namespace, &*invalid.name), ("ns", "cm"));
    assert!(
        invalid
            .reason
            .contains("a-list.json: document 1 (line 1), items[3]: unsupported kind v1 ConfigMap"),
        "{}",
        invalid.reason
    );
}

#[test]
fn directory_reads_manifest_extensions_only_in_name_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "c.json",
        &serde_json::to_string(&serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "c"}, "spec": {"ports": [{"port": 3}]}
        }))
        .unwrap(),
    );
    write(d, "a.yaml", &service(None, "a", 1));
    write(d, "b.YML", &service(None, "b", 2));
    write(d, "d.txt", &service(None, "d", 4));
    write(d, "e.yaml.bak", &service(None, "e", 5));
    write(d, ".f.yaml", &service(None, "f", 6));
    fs::create_dir(d.join("sub.yaml")).unwrap();
    write(&d.join("sub.yaml"), "g.yaml", &service(None, "g", 7));

    let snapshot = read_manifests(d, "node-a");
    assert!(snapshot.invalid.is_empty(), "{:#?}", snapshot.invalid);
    assert_eq!(services(&snapshot), ["default/a", "default/b", "default/c"]);
}

#[test]
fn unparseable_yaml_beside_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.yaml",
        "kind: Service\nmetadata: {name: [\n",
    );
    write(dir.path(), "good.yaml", SERVICE);
    write(dir.path(), "worse.json", "{\"kind\": ");
    fs::write(dir.path().join("binary.yaml"), b"\xff\xfe\x00garbage").unwrap();

    let snapshot = read_manifests(dir.path(), "node-a");
    assert_eq!(services(&snapshot), ["shop/web"]);
    assert_eq!(snapshot.invalid.len(), 3, "{:#?}", snapshot.invalid);
    for (invalid, file) in snapshot
        .invalid
        .iter()
        .zip(["bad.yaml", "binary.yaml", "worse.json"])
    {
        assert_eq!(invalid.kind, ObjectKind::Manifest);
        assert!(invalid.reason.contains(file), "{}", invalid.reason);
    }
    assert!(snapshot.invalid[0].reason.contains("document 1 (line 1)"));
    assert!(snapshot.invalid[1].reason.contains("not UTF-8"));
    assert!(snapshot.invalid[2].reason.contains("invalid JSON"));
}

#[test]
fn syntax_error_in_one_document_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{SERVICE}---\nkind: [oops\n---\n{SLICE}");
    let file = write(dir.path(), "mixed.yaml", &text);

    let snapshot = read_manifests(&file, "node-a");
    assert_eq!(services(&snapshot), ["shop/web"]);
    assert_eq!(slices(&snapshot), ["shop/web-abc"]);
    let invalid = only_invalid(&snapshot);
    assert!(
        invalid.reason.contains("mixed.yaml: document 2 (line 13)"),
        "{}",
        invalid.reason
    );
}

#[test]
fn unknown_kind_and_kindless_documents() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{SERVICE}---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  \
         namespace: shop\n---\nmetadata: {{name: x}}\n---\n- just\n- a list\n"
    );
    let file = write(dir.path(), "app.yaml", &text);

    let snapshot = read_manifests(&file, "node-a");
    assert_eq!(services(&snapshot), ["shop/web"]);
    let [deployment, kindless, sequence] = &snapshot.invalid[..] else {
        panic!("{:#?}", snapshot.invalid);
    };
    assert_eq!(deployment.kind, ObjectKind::Manifest);
    assert_eq!((&*deployment.namespace, &*deployment.name), ("shop", "web"));
    assert!(deployment.reason.contains("app.yaml: document 2"));
    assert!(
        deployment
            .reason
            .contains("unsupported kind apps/v1 Deployment")
    );
    assert_eq!(
        deployment.to_string(),
        format!("Manifest shop/web: {}", deployment.reason)
    );
    assert_eq!(kindless.name, "x");
    assert!(
        kindless.reason.ends_with("document 3 (line 19): no kind"),
        "{}",
        kindless.reason
    );
    assert!(
        sequence.reason.contains("found a sequence"),
        "{}",
        sequence.reason
    );
}

#[test]
fn wrong_field_type_is_reported_with_identity() {
    let dir = tempfile::tempdir().unwrap();
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: cart\n  namespace: shop\n\
                spec:\n  ports:\n    - port: \"abc\"\n";
    let file = write(dir.path(), "cart.yaml", &format!("{text}---\n{SERVICE}"));

    let snapshot = read_manifests(&file, "node-a");
    assert_eq!(services(&snapshot), ["shop/web"]);
    let invalid = only_invalid(&snapshot);
    assert_eq!(invalid.kind, ObjectKind::Service);
    assert_eq!((&*invalid.namespace, &*invalid.name), ("shop", "cart"));
    assert!(
        invalid.reason.starts_with(&format!(
            "{}: document 1 (line 1): spec.ports[0].port: invalid type",
            file.display()
        )),
        "{}",
        invalid.reason
    );
}

#[test]
fn wrong_api_version_uses_the_closest_kind() {
    let dir = tempfile::tempdir().unwrap();
    let text = SLICE.replace("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1");
    let file = write(dir.path(), "old.yaml", &text);

    let snapshot = read_manifests(&file, "node-a");
    assert!(slices(&snapshot).is_empty());
    let invalid = only_invalid(&snapshot);
    assert_eq!(invalid.kind, ObjectKind::EndpointSlice);
    assert_eq!((&*invalid.namespace, &*invalid.name), ("shop", "web-abc"));
    assert!(
        invalid.reason.contains("discovery.k8s.io/v1beta1"),
        "{}",
        invalid.reason
    );
}

#[test]
fn missing_namespace_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let slice = SLICE.replace("  namespace: shop\n", "");
    let broken = "apiVersion: v1\nkind: Service\nmetadata: {name: broken}\nspec: {ports: 7}\n";
    let text = format!("{}---\n{slice}---\n{broken}", service(None, "web", 80));
    let file = write(dir.path(), "nons.yaml", &text);

    let snapshot = read_manifests(&file, "node-a");
    assert_eq!(services(&snapshot), ["default/web"]);
    assert_eq!(slices(&snapshot), ["default/web-abc"]);
    let invalid = only_invalid(&snapshot);
    assert_eq!((&*invalid.namespace, &*invalid.name), ("default", "broken"));
}

#[test]
fn node_selection_by_name() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "nodes.yaml",
        &format!("{}---\n{}", node("node-a"), node("node-b")),
    );

    let b = read_manifests(dir.path(), "node-b");
    assert_eq!(node_name(&b), Some("node-b"));
    let labels = b.node.as_ref().unwrap().metadata.labels.as_ref().unwrap();
    assert_eq!(labels["topology.kubernetes.io/zone"], "z1");
    assert!(b.invalid.is_empty());

    let none = read_manifests(dir.path(), "node-c");
    assert!(none.node.is_none());
    assert!(none.invalid.is_empty());
}

#[test]
fn duplicates_are_reported_and_the_first_kept() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &service(Some("ns"), "web", 80));
    write(dir.path(), "b.yaml", &service(Some("ns"), "web", 81));

    let snapshot = read_manifests(dir.path(), "node-a");
    assert_eq!(services(&snapshot), ["ns/web"]);
    assert_eq!(first_port(&snapshot), 80);
    let invalid = only_invalid(&snapshot);
    assert_eq!((invalid.kind, &*invalid.name), (ObjectKind::Service, "web"));
    assert!(invalid.reason.contains("b.yaml"), "{}", invalid.reason);
    assert!(
        invalid.reason.contains("first defined at"),
        "{}",
        invalid.reason
    );
}

#[test]
fn missing_path_is_one_invalid_entry() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let snapshot = read_manifests(&missing, "node-a");
    assert!(snapshot.cluster.services.is_empty());
    let invalid = only_invalid(&snapshot);
    assert!(
        invalid.reason.contains("nope: cannot read"),
        "{}",
        invalid.reason
    );
}

// --- watching -------------------------------------------------------------

const WAIT: Duration = Duration::from_secs(5);

/// Waits (at most WAIT) for a published snapshot satisfying `check`.
async fn wait_for(rx: &mut SnapshotReceiver, check: impl Fn(&Snapshot) -> bool) -> Arc<Snapshot> {
    let result = timeout(WAIT, async {
        loop {
            if let Some(snapshot) = rx.borrow_and_update().clone()
                && check(&snapshot)
            {
                return snapshot;
            }
            rx.changed().await.expect("source stopped");
        }
    })
    .await;
    match result {
        Ok(snapshot) => snapshot,
        Err(_) => panic!("no matching snapshot within {WAIT:?}: {:#?}", rx.borrow()),
    }
}

/// Asserts nothing is published for a while (longer than a debounce and a
/// read).
async fn assert_quiet(rx: &mut SnapshotReceiver) {
    let changed = timeout(Duration::from_millis(1000), rx.changed()).await;
    assert!(changed.is_err(), "unexpected publish: {:#?}", rx.borrow());
}

fn replace_atomically(path: &Path, text: &str) {
    let tmp = path.with_file_name(".tmp-editor-save");
    fs::write(&tmp, text).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn watcher_publishes_on_changes_in_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let svc = write(dir.path(), "svc.yaml", &service(Some("ns"), "web", 80));
    let (tx, mut rx) = channel::channel(None);
    let task = tokio::spawn(run(dir.path().to_owned(), "node-a".into(), tx));

    let first = wait_for(&mut rx, |_| true).await;
    assert_eq!(services(&first), ["ns/web"]);

    // In-place modification.
    fs::write(&svc, service(Some("ns"), "web", 81)).unwrap();
    wait_for(&mut rx, |s| first_port(s) == 81).await;

    // Editor-style rename-replace.
    replace_atomically(&svc, &service(Some("ns"), "web", 82));
    wait_for(&mut rx, |s| first_port(s) == 82).await;

    // A file added.
    write(dir.path(), "zz.yaml", &service(Some("ns"), "extra", 90));
    wait_for(&mut rx, |s| services(s) == ["ns/web", "ns/extra"]).await;

    // Unrelated changes: same content rewritten, a non-manifest file.
    fs::write(&svc, service(Some("ns"), "web", 82)).unwrap();
    write(dir.path(), "notes.txt", "hello");
    assert_quiet(&mut rx).await;

    // A file removed.
    fs::remove_file(dir.path().join("zz.yaml")).unwrap();
    wait_for(&mut rx, |s| services(s) == ["ns/web"]).await;

    drop(rx);
    timeout(WAIT, task)
        .await
        .expect("run did not stop")
        .unwrap();
}

#[tokio::test]
async fn watcher_follows_a_single_file_replaced_by_an_editor() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "only.yaml", &service(None, "web", 80));
    write(dir.path(), "other.yaml", &service(None, "other", 1));
    let (tx, mut rx) = channel::channel(None);
    let task = tokio::spawn(run(file.clone(), "node-a".into(), tx));

    let first = wait_for(&mut rx, |_| true).await;
    assert_eq!(services(&first), ["default/web"]);

    // Sibling files are not PATH: a change there publishes nothing.
    write(dir.path(), "other.yaml", &service(None, "other", 2));
    assert_quiet(&mut rx).await;

    replace_atomically(&file, &service(None, "web", 8080));
    let s = wait_for(&mut rx, |s| first_port(s) == 8080).await;
    assert_eq!(services(&s), ["default/web"]);

    drop(rx);
    timeout(WAIT, task)
        .await
        .expect("run did not stop")
        .unwrap();
}

#[tokio::test]
async fn polling_fallback_publishes_on_changes() {
    let dir = tempfile::tempdir().unwrap();
    let svc = write(dir.path(), "svc.yaml", &service(None, "web", 80));
    let (tx, mut rx) = channel::channel(None);
    let task = tokio::spawn(watch::run(
        dir.path().to_owned(),
        "node-a".into(),
        tx,
        watch::Mode::Poll,
    ));

    wait_for(&mut rx, |s| first_port(s) == 80).await;
    fs::write(&svc, service(None, "web", 8081)).unwrap();
    wait_for(&mut rx, |s| first_port(s) == 8081).await;
    write(
        dir.path(),
        "more.json",
        &serde_json::json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "more"}, "spec": {"ports": [{"port": 1}]}
        })
        .to_string(),
    );
    wait_for(&mut rx, |s| services(s) == ["default/more", "default/web"]).await;

    drop(rx);
    timeout(WAIT, task)
        .await
        .expect("run did not stop")
        .unwrap();
}

/// JSON documents of known kinds are deserialized straight into their
/// types, everything else through the general path; either way the result
/// must be what the same text gives as YAML (JSON is YAML's flow style):
/// the same objects, and the same reports, word for word.
#[test]
fn json_reads_exactly_like_the_same_text_as_yaml() {
    let text = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "good"},
             "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": 8080}]}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "bad-port", "namespace": "ns"},
             "spec": {"ports": [{"port": "eighty"}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {},
             "spec": {"ports": [{"port": 1}]}},
            {"apiVersion": "v2", "kind": "Service", "metadata": {"name": "v2"}},
            {"kind": "Service", "metadata": {"name": "no-version"}},
            {"apiVersion": "v1", "kind": "ServiceList",
             "items": [{"metadata": {"name": "inherits"}, "spec": {"ports": [{"port": 2}]}},
                       {"kind": "", "metadata": {"name": "empty-kind"}}]},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "good-1", "labels": {"kubernetes.io/service-name": "good"}},
             "addressType": "IPv4",
             "endpoints": [{"addresses": ["10.244.0.5"]}],
             "ports": [{"port": 8080}]},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "bad-1"}, "addressType": "IPv4", "endpoints": "none"},
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"}},
            {"apiVersion": "v1", "kind": "Service",
             "metadata": {"name": "good"}, "spec": {"ports": [{"port": 81}]}},
            "a string",
            {"apiVersion": "v1", "kind": "List", "items": {"not": "a sequence"}}
        ]
    })
    .to_string();
    let read = |file: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), file, &text);
        let snapshot = read_manifests(&path, "node-a");
        let objects = (
            format!("{:?}", snapshot.cluster.services),
            format!("{:?}", snapshot.cluster.endpoint_slices),
            format!("{:?}", snapshot.node),
        );
        let invalid: Vec<String> = snapshot
            .invalid
            .iter()
            .map(|i| i.to_string().replace(&path.display().to_string(), "FILE"))
            .collect();
        (objects, invalid)
    };
    let (json_objects, json_invalid) = read("m.json");
    let (yaml_objects, yaml_invalid) = read("m.yaml");
    assert_eq!(json_invalid, yaml_invalid);
    assert_eq!(json_objects, yaml_objects);
    // The fast path was taken for the good objects and the general one
    // reported the rest.
    assert!(json_objects.0.contains("\"good\""), "{}", json_objects.0);
    assert!(
        json_objects.0.contains("\"inherits\""),
        "{}",
        json_objects.0
    );
    assert_eq!(json_invalid.len(), 10, "{json_invalid:#?}");
}

/// A re-parsed JSON file takes the last parse's object for every object
/// whose text did not change, without decoding it (its `Arc` is the same);
/// a changed object, and an item of a typed List (its kind may come from
/// the List), are decoded again.
#[test]
fn json_objects_of_unchanged_text_are_not_decoded_again() {
    use super::objects::{Entry, Object};
    use super::parse::parse_file;

    let svc = |name: &str, port: u16| {
        serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": port}]}})
    };
    let typed_item = serde_json::json!({"metadata": {"name": "typed", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.11", "ports": [{"port": 80}]}});
    // Two JSON documents in one file: a List, then a typed List.
    let two_documents = |changed_port: u16| {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List",
            "items": [svc("a", 80), svc("b", changed_port)]});
        let typed = serde_json::json!({"apiVersion": "v1", "kind": "ServiceList",
            "items": [typed_item]});
        format!("{list}\n{typed}").into_bytes()
    };
    let path = Path::new("services.json");
    let services = |entries: &[Entry]| -> Vec<Arc<k8s_openapi::api::core::v1::Service>> {
        entries
            .iter()
            .filter_map(|e| match e {
                Entry::Object {
                    object: Object::Service(s),
                    ..
                } => Some(s.clone()),
                _ => None,
            })
            .collect()
    };

    let first = parse_file(path, Ok(&two_documents(80)), &[]);
    let again = parse_file(path, Ok(&two_documents(81)), &first);
    let (before, after) = (services(&first), services(&again));
    assert_eq!(after.len(), 3, "{again:?}");
    assert!(
        Arc::ptr_eq(&before[0], &after[0]),
        "unchanged text, same Arc"
    );
    assert!(!Arc::ptr_eq(&before[1], &after[1]), "changed text, decoded");
    let port = |s: &k8s_openapi::api::core::v1::Service| {
        s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port
    };
    assert_eq!(port(&after[1]), 81);
    assert!(
        !Arc::ptr_eq(&before[2], &after[2]),
        "typed List item, decoded"
    );
    assert_eq!(before[2], after[2]);
}
