//! Turning parsed documents into Kubernetes objects: dispatch on
//! apiVersion/kind, unwrap Lists, deserialize into the k8s-openapi types and
//! collect everything that fails as an [`InvalidObject`].

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::model::{ClusterState, InvalidObject, ObjectKind};
use crate::source::Snapshot;

/// Namespace given to Services and EndpointSlices that name none, as
/// `kubectl apply` would.
pub(super) const DEFAULT_NAMESPACE: &str = "default";

const CORE_V1: &str = "v1";
const DISCOVERY_V1: &str = "discovery.k8s.io/v1";

/// Where a document (or a List item) came from, for error messages:
/// `path: document 2 (line 14), items[3]`.
#[derive(Clone, Debug)]
pub(super) struct Origin<'a> {
    pub file: &'a Path,
    /// 1-based document number and 1-based starting line, if known.
    pub document: Option<(usize, usize)>,
    /// Indices into nested Lists' `items`.
    pub items: Vec<usize>,
}

impl<'a> Origin<'a> {
    pub fn file(file: &'a Path) -> Self {
        Origin {
            file,
            document: None,
            items: Vec::new(),
        }
    }

    pub fn document(file: &'a Path, index: usize, line: usize) -> Self {
        Origin {
            file,
            document: Some((index, line)),
            items: Vec::new(),
        }
    }

    fn item(&self, index: usize) -> Self {
        let mut origin = self.clone();
        origin.items.push(index);
        origin
    }
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((index, line)) = self.document {
            write!(f, ": document {index} (line {line})")?;
        }
        for (i, item) in self.items.iter().enumerate() {
            f.write_str(if i == 0 && self.document.is_none() {
                ": "
            } else {
                ", "
            })?;
            write!(f, "items[{item}]")?;
        }
        Ok(())
    }
}

/// The three kinds the source reads, with what their documents must say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Known {
    Service,
    EndpointSlice,
    Node,
}

impl Known {
    fn from_kind(kind: &str) -> Option<Self> {
        match kind {
            "Service" => Some(Known::Service),
            "EndpointSlice" => Some(Known::EndpointSlice),
            "Node" => Some(Known::Node),
            _ => None,
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Known::Service | Known::Node => CORE_V1,
            Known::EndpointSlice => DISCOVERY_V1,
        }
    }

    fn object_kind(self) -> ObjectKind {
        match self {
            Known::Service => ObjectKind::Service,
            Known::EndpointSlice => ObjectKind::EndpointSlice,
            Known::Node => ObjectKind::Node,
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Known::Node)
    }
}

/// Accumulates the objects of every file, in reading order.
pub(super) struct Collector<'n> {
    node_name: &'n str,
    services: Vec<Arc<Service>>,
    endpoint_slices: Vec<Arc<EndpointSlice>>,
    node: Option<Arc<Node>>,
    /// First definition of each (kind, namespace, name), to report later
    /// duplicates.
    seen: HashMap<(ObjectKind, String, String), String>,
    invalid: Vec<InvalidObject>,
}

impl<'n> Collector<'n> {
    pub fn new(node_name: &'n str) -> Self {
        Collector {
            node_name,
            services: Vec::new(),
            endpoint_slices: Vec::new(),
            node: None,
            seen: HashMap::new(),
            invalid: Vec::new(),
        }
    }

    pub fn finish(self) -> Snapshot {
        Snapshot {
            cluster: ClusterState {
                services: self.services,
                endpoint_slices: self.endpoint_slices,
            },
            node: self.node,
            invalid: self.invalid,
        }
    }

    /// Records input that yielded no object at all (an unreadable file, an
    /// unparseable document).
    pub fn unreadable(&mut self, origin: &Origin<'_>, cause: impl fmt::Display) {
        self.invalid.push(InvalidObject {
            kind: ObjectKind::Manifest,
            namespace: String::new(),
            name: String::new(),
            reason: format!("{origin}: {cause}"),
        });
    }

    /// Reads one parsed document.
    pub fn add(&mut self, value: Value, origin: &Origin<'_>) {
        let Value::Object(map) = value else {
            self.unreadable(
                origin,
                format_args!(
                    "expected a Kubernetes object (a mapping), found {}",
                    value_type(&value)
                ),
            );
            return;
        };
        let api_version = str_field(&map, "apiVersion").unwrap_or("");
        let Some(kind) = str_field(&map, "kind") else {
            self.reject(ObjectKind::Manifest, false, &map, origin, "no kind");
            return;
        };
        if let Some(item_kind) = list_item_kind(kind) {
            let item_kind = item_kind.map(|k| (k, api_version.to_owned()));
            self.add_list(map, item_kind, origin);
            return;
        }
        let Some(known) = Known::from_kind(kind) else {
            let cause = format!(
                "unsupported kind {} (this source reads v1 Service, \
                 discovery.k8s.io/v1 EndpointSlice, v1 Node and v1 List)",
                api_kind(api_version, kind)
            );
            self.reject(ObjectKind::Manifest, false, &map, origin, cause);
            return;
        };
        if api_version != known.api_version() {
            let cause = format!(
                "unsupported apiVersion {:?} for {kind} (expected {})",
                api_version,
                known.api_version()
            );
            self.reject(known.object_kind(), known.namespaced(), &map, origin, cause);
            return;
        }
        match known {
            Known::Service => {
                if let Some(mut service) = self.decode::<Service>(known, map, origin) {
                    default_namespace(&mut service.metadata);
                    if self.first_definition(known, &service.metadata, origin) {
                        self.services.push(Arc::new(service));
                    }
                }
            }
            Known::EndpointSlice => {
                if let Some(mut slice) = self.decode::<EndpointSlice>(known, map, origin) {
                    default_namespace(&mut slice.metadata);
                    if self.first_definition(known, &slice.metadata, origin) {
                        self.endpoint_slices.push(Arc::new(slice));
                    }
                }
            }
            Known::Node => {
                if let Some(node) = self.decode::<Node>(known, map, origin)
                    && self.first_definition(known, &node.metadata, origin)
                    && node.metadata.name.as_deref() == Some(self.node_name)
                {
                    self.node = Some(Arc::new(node));
                }
            }
        }
    }

    /// `item_kind`: for typed lists (ServiceList...), the kind and
    /// apiVersion that items without their own inherit.
    fn add_list(
        &mut self,
        mut map: Map<String, Value>,
        item_kind: Option<(&'static str, String)>,
        origin: &Origin<'_>,
    ) {
        let items = match map.remove("items") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items,
            Some(other) => {
                let cause = format!(
                    "List items must be a sequence, found {}",
                    value_type(&other)
                );
                self.reject(ObjectKind::Manifest, false, &map, origin, cause);
                return;
            }
        };
        for (i, mut item) in items.into_iter().enumerate() {
            if let (Some((kind, api_version)), Value::Object(fields)) = (&item_kind, &mut item) {
                fields
                    .entry("kind")
                    .or_insert_with(|| Value::String((*kind).to_owned()));
                fields
                    .entry("apiVersion")
                    .or_insert_with(|| Value::String(api_version.clone()));
            }
            self.add(item, &origin.item(i));
        }
    }

    fn decode<T: DeserializeOwned>(
        &mut self,
        known: Known,
        map: Map<String, Value>,
        origin: &Origin<'_>,
    ) -> Option<T> {
        let (namespace, name) = identity(&map, known.namespaced());
        let object = match serde_path_to_error::deserialize::<_, T>(Value::Object(map)) {
            Ok(object) => object,
            Err(e) => {
                let path = e.path().to_string();
                let cause = if path.is_empty() || path == "." {
                    e.into_inner().to_string()
                } else {
                    format!("{path}: {}", e.into_inner())
                };
                self.invalid.push(InvalidObject {
                    kind: known.object_kind(),
                    namespace,
                    name,
                    reason: format!("{origin}: {cause}"),
                });
                return None;
            }
        };
        if name.is_empty() {
            self.invalid.push(InvalidObject {
                kind: known.object_kind(),
                namespace,
                name,
                reason: format!("{origin}: no metadata.name"),
            });
            return None;
        }
        Some(object)
    }

    /// True for the first object of this identity; later ones are reported.
    fn first_definition(&mut self, known: Known, meta: &ObjectMeta, origin: &Origin<'_>) -> bool {
        let kind = known.object_kind();
        let namespace = if known.namespaced() {
            meta.namespace.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let name = meta.name.clone().unwrap_or_default();
        let key = (kind, namespace, name);
        if let Some(first) = self.seen.get(&key) {
            let reason = format!("{origin}: duplicate {kind}, ignored (first defined at {first})");
            let (_, namespace, name) = key;
            self.invalid.push(InvalidObject {
                kind,
                namespace,
                name,
                reason,
            });
            return false;
        }
        self.seen.insert(key, origin.to_string());
        true
    }

    fn reject(
        &mut self,
        kind: ObjectKind,
        namespaced: bool,
        map: &Map<String, Value>,
        origin: &Origin<'_>,
        cause: impl fmt::Display,
    ) {
        let (namespace, name) = identity(map, namespaced);
        self.invalid.push(InvalidObject {
            kind,
            namespace,
            name,
            reason: format!("{origin}: {cause}"),
        });
    }
}

/// For a List kind, `Some(item kind)`: `Some(None)` for the generic v1
/// List whose items carry their own kinds.
fn list_item_kind(kind: &str) -> Option<Option<&'static str>> {
    match kind {
        "List" => Some(None),
        "ServiceList" => Some(Some("Service")),
        "EndpointSliceList" => Some(Some("EndpointSlice")),
        "NodeList" => Some(Some("Node")),
        _ => None,
    }
}

fn default_namespace(meta: &mut ObjectMeta) {
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
}

/// Best-effort namespace/name of a raw object, for reporting.
fn identity(map: &Map<String, Value>, namespaced: bool) -> (String, String) {
    let meta = map.get("metadata").and_then(Value::as_object);
    let field = |key: &str| {
        meta.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let mut namespace = field("namespace");
    if namespaced && namespace.is_empty() {
        namespace = DEFAULT_NAMESPACE.to_owned();
    }
    (namespace, field("name"))
}

fn str_field<'m>(map: &'m Map<String, Value>, key: &str) -> Option<&'m str> {
    map.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn api_kind(api_version: &str, kind: &str) -> String {
    if api_version.is_empty() {
        kind.to_owned()
    } else {
        format!("{api_version} {kind}")
    }
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}
