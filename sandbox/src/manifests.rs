//! Kubernetes manifests for `ferry standalone --manifests DIR`.
//!
//! Objects are built as `serde_json::Value` (builders below, or `json!`
//! directly) and written as block-style YAML. Every write is atomic (a
//! hidden temp file renamed into place), so Ferry never reads half a file.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::{Map, Value, json};

use crate::Naming;

/// A temp directory of manifest files, removed on drop.
#[derive(Debug)]
pub struct Manifests {
    dir: tempfile::TempDir,
}

impl Manifests {
    pub fn new() -> Result<Manifests> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}manifests-", Naming::TESTS.temp_prefix()))
            .tempdir()
            .context("creating the manifests dir")?;
        Ok(Manifests { dir })
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `content` to `<dir>/<file>` atomically (temp file + rename).
    pub fn write(&self, file: &str, content: &str) -> Result<PathBuf> {
        ensure!(
            !file.contains('/') && !file.starts_with('.'),
            "manifest file names are plain names: {file:?}"
        );
        let path = self.dir().join(file);
        let tmp = self.dir().join(format!(".{file}.tmp"));
        {
            let mut f =
                fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(content.as_bytes())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(path)
    }

    /// Writes the objects as a multi-document YAML file (atomically).
    pub fn write_objects(&self, file: &str, objects: &[Value]) -> Result<PathBuf> {
        self.write(file, &to_yaml_docs(objects))
    }

    /// Removes `<dir>/<file>` (no error if it does not exist).
    pub fn remove(&self, file: &str) -> Result<()> {
        match fs::remove_file(self.dir().join(file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {file}"))
            }
            _ => Ok(()),
        }
    }

    /// The file names in the directory, sorted (temp files excluded).
    pub fn files(&self) -> Result<Vec<String>> {
        let mut v: Vec<String> = fs::read_dir(self.dir())?
            .filter_map(std::result::Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with('.'))
            .collect();
        v.sort();
        Ok(v)
    }
}

// ---------------------------------------------------------------- YAML text

fn plain_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./".contains(&b))
        && k.as_bytes()[0].is_ascii_alphabetic()
}

fn key_text(k: &str) -> String {
    if plain_key(k) {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

/// Scalars: strings are always double-quoted (JSON escapes are valid YAML),
/// so "10.96.0.10", "true" or "80" stay strings.
fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(_) => v.to_string(),
        Value::Array(a) if a.is_empty() => "[]".into(),
        Value::Object(o) if o.is_empty() => "{}".into(),
        _ => unreachable!("not a scalar"),
    }
}

fn is_scalar(v: &Value) -> bool {
    match v {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => true,
    }
}

fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) if !map.is_empty() => {
            // Sorted, whatever serde_json's `preserve_order` feature says.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (k, val) in entries {
                if is_scalar(val) {
                    let _ = writeln!(out, "{pad}{}: {}", key_text(k), scalar_text(val));
                } else {
                    let _ = writeln!(out, "{pad}{}:", key_text(k));
                    emit(val, indent + 2, out);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                if is_scalar(item) {
                    let _ = writeln!(out, "{pad}- {}", scalar_text(item));
                } else {
                    // Render the item two columns deeper, then put the dash
                    // in front of its first line.
                    let mut inner = String::new();
                    emit(item, indent + 2, &mut inner);
                    out.push_str(&pad);
                    out.push_str("- ");
                    out.push_str(&inner[indent + 2..]);
                }
            }
        }
        scalar => {
            let _ = writeln!(out, "{pad}{}", scalar_text(scalar));
        }
    }
}

/// One object as block-style YAML (keys sorted).
pub fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    emit(v, 0, &mut out);
    out
}

/// Several objects as one multi-document YAML text.
pub fn to_yaml_docs(objects: &[Value]) -> String {
    objects
        .iter()
        .map(|o| format!("---\n{}", to_yaml(o)))
        .collect()
}

/// Sets `v[path[0]][path[1]]... = value`, creating objects on the way.
pub fn set_path(v: &mut Value, path: &[&str], value: Value) {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let map = cur.as_object_mut().expect("just made an object");
        if i + 1 == path.len() {
            map.insert((*key).to_string(), value);
            return;
        }
        cur = map.entry(*key).or_insert_with(|| Value::Object(Map::new()));
    }
}

fn push_path(v: &mut Value, path: &[&str], item: Value) {
    let mut cur = &mut *v;
    for key in path {
        cur = &mut cur[*key];
    }
    match cur {
        Value::Array(a) => a.push(item),
        other => *other = Value::Array(vec![item]),
    }
}

// ---------------------------------------------------------------- Service

/// One entry of a Service's `spec.ports`.
#[derive(Clone, Debug)]
pub struct ServicePort {
    v: Value,
}

impl ServicePort {
    pub fn new(protocol: &str, port: u16) -> ServicePort {
        ServicePort {
            v: json!({ "protocol": protocol, "port": port }),
        }
    }

    pub fn tcp(port: u16) -> ServicePort {
        ServicePort::new("TCP", port)
    }

    pub fn udp(port: u16) -> ServicePort {
        ServicePort::new("UDP", port)
    }

    pub fn name(mut self, name: &str) -> Self {
        self.v["name"] = json!(name);
        self
    }

    /// Numeric targetPort.
    pub fn target(mut self, port: u16) -> Self {
        self.v["targetPort"] = json!(port);
        self
    }

    /// Named targetPort (resolved per endpoint through the slice's ports).
    pub fn target_named(mut self, name: &str) -> Self {
        self.v["targetPort"] = json!(name);
        self
    }

    pub fn node_port(mut self, port: u16) -> Self {
        self.v["nodePort"] = json!(port);
        self
    }

    /// Any other field.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.v[key] = value;
        self
    }

    pub fn to_value(&self) -> Value {
        self.v.clone()
    }
}

/// A v1 Service. Defaults to `type: ClusterIP` without a clusterIP.
#[derive(Clone, Debug)]
pub struct Service {
    v: Value,
}

impl Service {
    pub fn new(namespace: &str, name: &str) -> Service {
        Service {
            v: json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": { "namespace": namespace, "name": name },
                "spec": { "type": "ClusterIP", "ports": [] },
            }),
        }
    }

    /// `spec.type`: ClusterIP, NodePort, LoadBalancer, ExternalName.
    pub fn type_(mut self, t: &str) -> Self {
        self.v["spec"]["type"] = json!(t);
        self
    }

    /// Sets clusterIP and clusterIPs to this one address.
    pub fn cluster_ip(self, ip: &str) -> Self {
        self.cluster_ips(&[ip])
    }

    /// Sets clusterIPs (and clusterIP to the first), e.g. dual-stack.
    pub fn cluster_ips(mut self, ips: &[&str]) -> Self {
        self.v["spec"]["clusterIP"] = json!(ips.first().copied().unwrap_or(""));
        self.v["spec"]["clusterIPs"] = json!(ips);
        self
    }

    /// clusterIP: None.
    pub fn headless(mut self) -> Self {
        self.v["spec"]["clusterIP"] = json!("None");
        self.v["spec"]["clusterIPs"] = json!(["None"]);
        self
    }

    pub fn port(mut self, p: ServicePort) -> Self {
        push_path(&mut self.v, &["spec", "ports"], p.to_value());
        self
    }

    pub fn ip_families(mut self, families: &[&str]) -> Self {
        self.v["spec"]["ipFamilies"] = json!(families);
        self
    }

    /// SingleStack, PreferDualStack, RequireDualStack.
    pub fn ip_family_policy(mut self, policy: &str) -> Self {
        self.v["spec"]["ipFamilyPolicy"] = json!(policy);
        self
    }

    pub fn external_ips(mut self, ips: &[&str]) -> Self {
        self.v["spec"]["externalIPs"] = json!(ips);
        self
    }

    /// `status.loadBalancer.ingress[].ip`.
    pub fn load_balancer_ingress(mut self, ips: &[&str]) -> Self {
        let ingress: Vec<Value> = ips.iter().map(|ip| json!({ "ip": ip })).collect();
        set_path(
            &mut self.v,
            &["status", "loadBalancer", "ingress"],
            Value::Array(ingress),
        );
        self
    }

    /// Cluster or Local.
    pub fn external_traffic_policy(mut self, policy: &str) -> Self {
        self.v["spec"]["externalTrafficPolicy"] = json!(policy);
        self
    }

    /// Cluster or Local.
    pub fn internal_traffic_policy(mut self, policy: &str) -> Self {
        self.v["spec"]["internalTrafficPolicy"] = json!(policy);
        self
    }

    /// sessionAffinity: ClientIP with this timeout.
    pub fn session_affinity_client_ip(mut self, timeout_secs: u32) -> Self {
        self.v["spec"]["sessionAffinity"] = json!("ClientIP");
        set_path(
            &mut self.v,
            &[
                "spec",
                "sessionAffinityConfig",
                "clientIP",
                "timeoutSeconds",
            ],
            json!(timeout_secs),
        );
        self
    }

    pub fn health_check_node_port(mut self, port: u16) -> Self {
        self.v["spec"]["healthCheckNodePort"] = json!(port);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        set_path(&mut self.v, &["metadata", "labels", key], json!(value));
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        set_path(&mut self.v, &["metadata", "annotations", key], json!(value));
        self
    }

    /// Any `spec` field, e.g. `.spec("trafficDistribution", json!("PreferClose"))`.
    pub fn spec(mut self, key: &str, value: Value) -> Self {
        self.v["spec"][key] = value;
        self
    }

    /// Any field by path, e.g. `.set(&["metadata", "uid"], json!("x"))`.
    pub fn set(mut self, path: &[&str], value: Value) -> Self {
        set_path(&mut self.v, path, value);
        self
    }

    pub fn to_value(&self) -> Value {
        self.v.clone()
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(&self.v)
    }
}

// ---------------------------------------------------------------- EndpointSlice

/// `addressType` of an EndpointSlice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressType {
    IPv4,
    IPv6,
    Fqdn,
}

impl AddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressType::IPv4 => "IPv4",
            AddressType::IPv6 => "IPv6",
            AddressType::Fqdn => "FQDN",
        }
    }
}

/// One entry of an EndpointSlice's `endpoints`. Defaults: ready, serving,
/// not terminating, no nodeName.
#[derive(Clone, Debug)]
pub struct Endpoint {
    v: Value,
}

impl Endpoint {
    pub fn new(address: impl Into<String>) -> Endpoint {
        Endpoint {
            v: json!({
                "addresses": [address.into()],
                "conditions": { "ready": true, "serving": true, "terminating": false },
            }),
        }
    }

    pub fn node(mut self, node_name: &str) -> Self {
        self.v["nodeName"] = json!(node_name);
        self
    }

    pub fn zone(mut self, zone: &str) -> Self {
        self.v["zone"] = json!(zone);
        self
    }

    pub fn ready(mut self, ready: bool) -> Self {
        self.v["conditions"]["ready"] = json!(ready);
        self
    }

    pub fn serving(mut self, serving: bool) -> Self {
        self.v["conditions"]["serving"] = json!(serving);
        self
    }

    pub fn terminating(mut self, terminating: bool) -> Self {
        self.v["conditions"]["terminating"] = json!(terminating);
        self
    }

    /// Drops `conditions.<name>` (unset conditions have defaults in the API).
    pub fn unset_condition(mut self, name: &str) -> Self {
        if let Some(c) = self.v["conditions"].as_object_mut() {
            c.remove(name);
        }
        self
    }

    /// `hints.forZones`.
    pub fn hint_zones(mut self, zones: &[&str]) -> Self {
        let z: Vec<Value> = zones.iter().map(|z| json!({ "name": z })).collect();
        set_path(&mut self.v, &["hints", "forZones"], Value::Array(z));
        self
    }

    /// `hints.forNodes`.
    pub fn hint_nodes(mut self, nodes: &[&str]) -> Self {
        let n: Vec<Value> = nodes.iter().map(|n| json!({ "name": n })).collect();
        set_path(&mut self.v, &["hints", "forNodes"], Value::Array(n));
        self
    }

    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.v[key] = value;
        self
    }

    pub fn to_value(&self) -> Value {
        self.v.clone()
    }
}

/// A discovery.k8s.io/v1 EndpointSlice labelled for `service`.
#[derive(Clone, Debug)]
pub struct EndpointSlice {
    v: Value,
}

impl EndpointSlice {
    pub fn new(namespace: &str, name: &str, service: &str, address_type: AddressType) -> Self {
        EndpointSlice {
            v: json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "namespace": namespace,
                    "name": name,
                    "labels": { "kubernetes.io/service-name": service },
                },
                "addressType": address_type.as_str(),
                "endpoints": [],
                "ports": [],
            }),
        }
    }

    /// A port (`name` "" for the unnamed port; then the field is omitted).
    pub fn port(mut self, name: &str, port: u16, protocol: &str) -> Self {
        let mut p = json!({ "port": port, "protocol": protocol });
        if !name.is_empty() {
            p["name"] = json!(name);
        }
        push_path(&mut self.v, &["ports"], p);
        self
    }

    pub fn endpoint(mut self, e: Endpoint) -> Self {
        push_path(&mut self.v, &["endpoints"], e.to_value());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        set_path(&mut self.v, &["metadata", "labels", key], json!(value));
        self
    }

    pub fn set(mut self, path: &[&str], value: Value) -> Self {
        set_path(&mut self.v, path, value);
        self
    }

    pub fn to_value(&self) -> Value {
        self.v.clone()
    }

    pub fn to_yaml(&self) -> String {
        to_yaml(&self.v)
    }
}

// ---------------------------------------------------------------- Node

/// A v1 Node (for standalone sources that read this node's object).
#[derive(Clone, Debug)]
pub struct Node {
    v: Value,
}

impl Node {
    pub fn new(name: &str) -> Node {
        Node {
            v: json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": { "name": name },
                "status": { "addresses": [] },
            }),
        }
    }

    /// `status.addresses[]` entry, e.g. ("InternalIP", "10.244.0.1").
    pub fn address(mut self, kind: &str, address: &str) -> Self {
        push_path(
            &mut self.v,
            &["status", "addresses"],
            json!({ "type": kind, "address": address }),
        );
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        set_path(&mut self.v, &["metadata", "labels", key], json!(value));
        self
    }

    /// `topology.kubernetes.io/zone`.
    pub fn zone(self, zone: &str) -> Self {
        self.label("topology.kubernetes.io/zone", zone)
    }

    pub fn to_value(&self) -> Value {
        self.v.clone()
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn yaml_is_block_style() {
        let svc = Service::new("default", "web")
            .cluster_ip("10.96.0.10")
            .port(ServicePort::tcp(80).name("http").target(8080))
            .label("app", "web");
        let y = svc.to_yaml();
        let expected = "\
apiVersion: \"v1\"
kind: \"Service\"
metadata:
  labels:
    app: \"web\"
  name: \"web\"
  namespace: \"default\"
spec:
  clusterIP: \"10.96.0.10\"
  clusterIPs:
    - \"10.96.0.10\"
  ports:
    - name: \"http\"
      port: 80
      protocol: \"TCP\"
      targetPort: 8080
  type: \"ClusterIP\"
";
        assert_eq!(y, expected);
    }

    #[test]
    fn yaml_nested_and_special() {
        let v = json!({
            "a": [[1, 2], {"x": {}}, []],
            "k w": "line\n\"q\"",
            "e": [],
        });
        let y = to_yaml(&v);
        assert_eq!(
            y,
            "a:\n  - - 1\n    - 2\n  - x: {}\n  - []\ne: []\n\"k w\": \"line\\n\\\"q\\\"\"\n"
        );
    }

    #[test]
    fn slices_and_docs() {
        let s = EndpointSlice::new("default", "web-1", "web", AddressType::IPv4)
            .port("", 8080, "TCP")
            .endpoint(Endpoint::new("10.244.0.10").node("node-1").ready(false))
            .to_value();
        assert_eq!(s["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(s["endpoints"][0]["conditions"]["ready"], false);
        assert!(s["ports"][0].get("name").is_none());
        let docs = to_yaml_docs(&[s.clone(), s]);
        assert_eq!(docs.matches("---\n").count(), 2);
        assert!(docs.contains("  - addresses:\n      - \"10.244.0.10\"\n"));
    }

    #[test]
    fn atomic_writes() {
        let m = Manifests::new().unwrap();
        m.write("a.yaml", "x: 1\n").unwrap();
        m.write("a.yaml", "x: 2\n").unwrap();
        assert_eq!(
            fs::read_to_string(m.dir().join("a.yaml")).unwrap(),
            "x: 2\n"
        );
        assert_eq!(m.files().unwrap(), vec!["a.yaml"]);
        m.remove("a.yaml").unwrap();
        m.remove("a.yaml").unwrap();
        assert!(m.files().unwrap().is_empty());
        let dir = m.dir().to_path_buf();
        drop(m);
        assert!(!dir.exists());
    }
}
