//! Turning one file's parsed documents into Kubernetes objects: dispatch
//! on apiVersion/kind, unwrap Lists, deserialize into the k8s-openapi types
//! and collect everything that fails as an [`InvalidObject`].
//!
//! Nothing here looks beyond the file: duplicates across (and within)
//! files and the choice of this node's Node are the assembly's business
//! (`assemble.rs`), so that a file's result can be kept while it does not
//! change.

use std::borrow::Cow;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::files::content_hash;
use crate::model::{EndpointSliceInfo, FoldHashMap, InvalidObject, ObjectKind, ReportCause};
use crate::source::slim;

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
    pub(super) fn file(file: &'a Path) -> Self {
        Origin {
            file,
            document: None,
            items: Vec::new(),
        }
    }

    pub(super) fn document(file: &'a Path, index: usize, line: usize) -> Self {
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

/// An object read from a file, shared (not copied) by every snapshot
/// assembled while its file is unchanged.
#[derive(Clone, Debug)]
pub(super) enum Object {
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSliceInfo>),
    Node(Arc<Node>),
}

impl Object {
    /// What duplicates are detected by: kind, namespace (empty for Nodes)
    /// and name.
    pub(super) fn key(&self) -> (ObjectKind, &str, &str) {
        let (kind, namespace, name) = match self {
            Object::Service(s) => (
                ObjectKind::Service,
                s.metadata.namespace.as_deref(),
                &s.metadata.name,
            ),
            Object::EndpointSlice(s) => {
                (ObjectKind::EndpointSlice, s.namespace.as_deref(), &s.name)
            }
            Object::Node(n) => (ObjectKind::Node, None, &n.metadata.name),
        };
        (kind, namespace.unwrap_or(""), name.as_deref().unwrap_or(""))
    }

    /// Equal objects of one kind (deep comparison).
    /// The same `Arc` is equal at the cost of a pointer comparison.
    pub(super) fn same_content(&self, other: &Object) -> bool {
        match (self, other) {
            (Object::Service(a), Object::Service(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::EndpointSlice(a), Object::EndpointSlice(b)) => Arc::ptr_eq(a, b) || a == b,
            (Object::Node(a), Object::Node(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

/// One result of reading a file, in reading order: the order of objects
/// decides which of two duplicates is kept, and reports are listed in it.
#[derive(Clone, Debug)]
pub(super) enum Entry {
    /// `origin`: where it was defined, for duplicate reports; `text`: the
    /// hash of the JSON text it was decoded from, if it was decoded from
    /// its text alone (see [`Collector::reusing`]).
    Object {
        object: Object,
        origin: String,
        text: Option<u64>,
    },
    Invalid(InvalidObject),
}

/// Accumulates the objects and reports of one file, in reading order.
#[derive(Default)]
pub(super) struct Collector {
    entries: Vec<Entry>,
    /// Objects of the file's last parse, by the hash of their JSON text.
    reusable: FoldHashMap<u64, Object>,
}

impl Collector {
    /// A collector that takes the object of `previous` (the file's entries
    /// as last parsed) for a JSON object whose text is the same, instead of
    /// decoding it again: in a file of a thousand Services of which one
    /// changed, decoding the others took 30 ms, the hash of their text
    /// 0.3 ms. Their `Arc`s stay the same, which `model::Incremental`
    /// relies on too.
    pub(super) fn reusing(previous: &[Entry]) -> Self {
        let reusable = previous
            .iter()
            .filter_map(|entry| match entry {
                Entry::Object {
                    object,
                    text: Some(text),
                    ..
                } => Some((*text, object.clone())),
                _ => None,
            })
            .collect();
        Collector {
            entries: Vec::new(),
            reusable,
        }
    }

    pub(super) fn finish(self) -> Vec<Entry> {
        self.entries
    }

    fn report(&mut self, invalid: InvalidObject) {
        self.entries.push(Entry::Invalid(invalid));
    }

    fn accept(&mut self, object: Object, origin: &Origin<'_>) {
        self.accept_text(object, origin, None);
    }

    fn accept_text(&mut self, object: Object, origin: &Origin<'_>, text: Option<u64>) {
        self.entries.push(Entry::Object {
            object,
            origin: origin.to_string(),
            text,
        });
    }

    /// Records input that yielded no object at all (an unreadable file, an
    /// unparseable document).
    pub(super) fn unreadable(&mut self, origin: &Origin<'_>, cause: impl fmt::Display) {
        self.report(InvalidObject {
            cause: ReportCause::Invalid,
            kind: ObjectKind::Manifest,
            namespace: String::new(),
            name: String::new(),
            reason: format!("{origin}: {cause}"),
        });
    }

    /// Reads one parsed document.
    pub(super) fn add(&mut self, value: Value, origin: &Origin<'_>) {
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
                if let Some(service) = self.decode::<Service>(known, map, origin) {
                    self.accept(Self::service_object(service), origin);
                }
            }
            Known::EndpointSlice => {
                if let Some(slice) = self.decode::<EndpointSlice>(known, map, origin) {
                    self.accept(Self::endpoint_slice_object(slice), origin);
                }
            }
            Known::Node => {
                if let Some(node) = self.decode::<Node>(known, map, origin) {
                    self.accept(Self::node_object(node), origin);
                }
            }
        }
    }

    /// A Service as kept: slimmed, in its namespace.
    fn service_object(mut service: Service) -> Object {
        slim::service(&mut service);
        default_namespace(&mut service.metadata);
        Object::Service(Arc::new(service))
    }

    /// A slice as kept: in its namespace, reduced to what the model reads.
    fn endpoint_slice_object(mut slice: EndpointSlice) -> Object {
        default_namespace(&mut slice.metadata);
        Object::EndpointSlice(Arc::new(slice.into()))
    }

    /// Every Node is kept, whatever its name: which one is this node's is
    /// decided on assembly (where duplicates of all of them are reported).
    fn node_object(node: Node) -> Object {
        Object::Node(Arc::new(node))
    }

    /// Reads one JSON document (or List item) given as its text.
    ///
    /// The common case, a well-formed object of a known kind (or a List of
    /// them), is deserialized straight into its k8s-openapi type: going
    /// through a `serde_json::Value` tree first (and recording the path
    /// for errors) made reading ten thousand Services and their slices
    /// take most of a second, nearly all of it in allocating and freeing
    /// the tree. Anything else (an unknown kind, a value of the wrong type,
    /// no name, ...) takes the general path through [`Collector::add`],
    /// which reports it exactly as for YAML.
    pub(super) fn add_json(&mut self, raw: &RawValue, origin: &Origin<'_>) {
        self.add_json_item(raw, None, origin);
    }

    /// `inherited`: the kind and apiVersion of a typed List's items.
    fn add_json_item(
        &mut self,
        raw: &RawValue,
        inherited: Option<(&'static str, &str)>,
        origin: &Origin<'_>,
    ) {
        // An item of a typed List may depend on the List's kind: only an
        // object's own text is taken to decide what it decodes to.
        let text = inherited
            .is_none()
            .then(|| content_hash(raw.get().as_bytes()));
        if let Some(object) = text.and_then(|t| self.reusable.get(&t)) {
            let object = object.clone();
            self.accept_text(object, origin, text);
            return;
        }
        if self.try_add_typed(raw, origin, text) {
            return;
        }
        match serde_json::from_str::<Value>(raw.get()) {
            Ok(mut value) => {
                if let (Some((kind, api_version)), Value::Object(fields)) = (inherited, &mut value)
                {
                    inherit_kind(fields, kind, api_version);
                }
                self.add(value, origin);
            }
            Err(e) => self.unreadable(origin, format_args!("invalid JSON: {e}")),
        }
    }

    /// The fast path of [`Collector::add_json`]; false when the general
    /// path must read (and, if need be, report) the document instead.
    /// `text`: the hash of `raw`, if an object decoded from it is to be
    /// reused for the same text.
    fn try_add_typed(&mut self, raw: &RawValue, origin: &Origin<'_>, text: Option<u64>) -> bool {
        let Ok(head) = serde_json::from_str::<Head<'_>>(raw.get()) else {
            return false;
        };
        // Without its own kind and apiVersion, a document is rejected, or
        // (a typed List's item) inherits the List's: the general path does
        // either.
        let kind = head.kind.as_deref().filter(|k| !k.is_empty());
        let api_version = head.api_version.as_deref().filter(|v| !v.is_empty());
        let (Some(kind), Some(api_version)) = (kind, api_version) else {
            return false;
        };
        if let Some(item_kind) = list_item_kind(kind) {
            let Some(items) = head.items else {
                return false;
            };
            let inherited = item_kind.map(|k| (k, api_version));
            for (i, item) in items.iter().enumerate() {
                self.add_json_item(item, inherited, &origin.item(i));
            }
            return true;
        }
        let Some(known) = Known::from_kind(kind) else {
            return false;
        };
        if api_version != known.api_version() {
            return false;
        }
        let named = |meta: &ObjectMeta| meta.name.as_deref().is_some_and(|n| !n.is_empty());
        let object = match known {
            Known::Service => match serde_json::from_str::<Service>(raw.get()) {
                Ok(service) if named(&service.metadata) => Self::service_object(service),
                _ => return false,
            },
            Known::EndpointSlice => match serde_json::from_str::<EndpointSlice>(raw.get()) {
                Ok(slice) if named(&slice.metadata) => Self::endpoint_slice_object(slice),
                _ => return false,
            },
            Known::Node => match serde_json::from_str::<Node>(raw.get()) {
                Ok(node) if named(&node.metadata) => Self::node_object(node),
                _ => return false,
            },
        };
        self.accept_text(object, origin, text);
        true
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
                inherit_kind(fields, kind, api_version);
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
                self.report(InvalidObject {
                    cause: ReportCause::Invalid,
                    kind: known.object_kind(),
                    namespace,
                    name,
                    reason: format!("{origin}: {cause}"),
                });
                return None;
            }
        };
        if name.is_empty() {
            self.report(InvalidObject {
                cause: ReportCause::Invalid,
                kind: known.object_kind(),
                namespace,
                name,
                reason: format!("{origin}: no metadata.name"),
            });
            return None;
        }
        Some(object)
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
        self.report(InvalidObject {
            cause: ReportCause::Invalid,
            kind,
            namespace,
            name,
            reason: format!("{origin}: {cause}"),
        });
    }
}

/// What decides how a JSON document is read: its kind and apiVersion, and
/// a List's items (left unparsed).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "apiVersion", borrow, default)]
    api_version: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    items: Option<Vec<&'a RawValue>>,
}

/// A typed List's item without its own kind or apiVersion takes the List's.
fn inherit_kind(fields: &mut Map<String, Value>, kind: &str, api_version: &str) {
    fields
        .entry("kind")
        .or_insert_with(|| Value::String(kind.to_owned()));
    fields
        .entry("apiVersion")
        .or_insert_with(|| Value::String(api_version.to_owned()));
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
