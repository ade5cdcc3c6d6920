//! A Kubernetes API server fixture: no kube-apiserver can be installed
//! here, so this speaks the real protocol over plain HTTP, enough for
//! kube-rs clients and watchers (and so for `ferry agent`).
//!
//! Resources: v1 Services, discovery.k8s.io/v1 EndpointSlices, v1 Nodes and
//! v1 Events, at their real paths (cluster-wide and per namespace).
//!
//! - list (GET): every matching object and the current resourceVersion;
//!   `labelSelector` (`k`, `!k`, `k=v`, `k==v`, `k!=v`, `k in (..)`,
//!   `k notin (..)`) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`, `=`/`==`/`!=`) filter; `limit` is ignored (one
//!   page).
//! - watch (GET `?watch=true`): JSON lines of ADDED/MODIFIED/DELETED from
//!   the given resourceVersion on (replayed from history, then live), an
//!   object that starts or stops matching the selectors shows up as ADDED
//!   or DELETED; BOOKMARKs on [`ApiServer::send_bookmarks`];
//!   `timeoutSeconds` ends the stream. After [`ApiServer::expire`], a
//!   watch of a kind from any resourceVersion gets an ERROR event with
//!   code 410 (Gone) until that kind is listed again, so a client relists
//!   even when it never saw the 410 of its open watch (dropped first).
//! - get, create (POST), merge patch (PATCH) of single objects; Events
//!   posted by the agent are kept for assertions ([`ApiServer::events`]).
//! - faults: [`ApiServer::expire`] (410 to every open watch),
//!   [`ApiServer::set_failing`] (500 for every read of one kind),
//!   [`ApiServer::drop_connections`] (every connection closed mid-stream),
//!   [`ApiServer::set_reachable`] (connections refused until re-enabled,
//!   on the same port).
//!
//! Tests change objects with [`ApiServer::apply`] / [`ApiServer::delete`]
//! (as a controller would), and point clients at
//! [`ApiServer::kubeconfig`]. The server runs on its own thread and tokio
//! runtime; every method here is synchronous.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};

use crate::Naming;
use crate::util::{Wait, wait_until};

/// The kinds the fixture serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    Event,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Service, Kind::EndpointSlice, Kind::Node, Kind::Event];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::Event => "Event",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    /// The plural resource name in paths.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::Event => "events",
        }
    }

    pub fn namespaced(self) -> bool {
        self != Kind::Node
    }

    fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn from_path(group_version: &str, resource: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.api_version() == group_version && k.resource() == resource)
    }
}

/// One HTTP request as received, for assertions.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Decoded query parameters.
    pub query: BTreeMap<String, String>,
}

impl Seen {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }

    pub fn is_list(&self, kind: Kind) -> bool {
        self.method == "GET"
            && !self.is_watch()
            && self.path.ends_with(&format!("/{}", kind.resource()))
    }
}

type Key = (Kind, String, String);

struct Change {
    rv: u64,
    kind: Kind,
    old: Option<Value>,
    new: Option<Value>,
}

struct Sub {
    kind: Kind,
    namespace: Option<String>,
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

struct State {
    rv: u64,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    /// Kinds expired and not listed since: every watch from a
    /// resourceVersion gets 410 Gone. Without this, a client whose open
    /// watch was closed before the 410 reached it would resume from its
    /// (current) resourceVersion and never relist, and a test waiting
    /// for the relist would depend on that race.
    must_relist: std::collections::BTreeSet<Kind>,
    objects: BTreeMap<Key, Value>,
    history: Vec<Change>,
    subs: Vec<Sub>,
    seen: Vec<Seen>,
    uid: u64,
    /// Kinds whose reads answer 500 ([`ApiServer::set_failing`]).
    failing: std::collections::BTreeSet<Kind>,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped to close every open connection.
    kill: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

enum Control {
    Reachable(bool, oneshot::Sender<Result<(), String>>),
    Stop,
}

/// The running fixture; dropping it stops the server.
pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    ctl: mpsc::UnboundedSender<Control>,
    thread: Option<JoinHandle<()>>,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
}

impl ApiServer {
    /// Listens on 127.0.0.1 (a free port) and writes a kubeconfig for it
    /// (in a temp dir named after [`Naming::TESTS`]).
    pub fn start() -> Result<ApiServer> {
        ApiServer::start_with(Naming::TESTS)
    }

    /// [`ApiServer::start`], the kubeconfig's temp dir named after `naming`.
    pub fn start_with(naming: Naming) -> Result<ApiServer> {
        let std_listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("binding the API server")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (kill, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rv: 1,
                compacted: 0,
                must_relist: Default::default(),
                objects: BTreeMap::new(),
                history: Vec::new(),
                subs: Vec::new(),
                seen: Vec::new(),
                uid: 0,
                failing: Default::default(),
            }),
            kill,
        });
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("apiserver".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the API server fixture");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(std_listener)
                        .expect("registering the listener");
                    serve(s, addr, Some(listener), ctl_rx).await;
                });
            })
            .context("starting the API server thread")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}apiserver-", naming.temp_prefix()))
            .tempdir()
            .context("creating the kubeconfig dir")?;
        let kubeconfig = dir.path().join("kubeconfig");
        fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fixture\n  cluster:\n    server: http://{addr}\nusers:\n- name: fixture\n  user: {{}}\ncontexts:\n- name: fixture\n  context:\n    cluster: fixture\n    user: fixture\ncurrent-context: fixture\n"
            ),
        )?;
        Ok(ApiServer {
            shared,
            addr,
            ctl,
            thread: Some(thread),
            kubeconfig,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig file that points at this server.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Creates or replaces an object (its `kind` says which), as a
    /// controller would: resourceVersion, uid and creationTimestamp are
    /// set, a namespaced object without namespace goes to "default", and
    /// watches see ADDED or MODIFIED. Returns the stored object.
    pub fn apply(&self, mut obj: Value) -> Result<Value> {
        let kind = obj["kind"]
            .as_str()
            .and_then(Kind::from_name)
            .ok_or_else(|| anyhow!("apply: unsupported kind in {obj}"))?;
        let name = obj["metadata"]["name"]
            .as_str()
            .ok_or_else(|| anyhow!("apply: no metadata.name in {obj}"))?
            .to_string();
        let ns = if kind.namespaced() {
            obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        if kind.namespaced() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["apiVersion"] = json!(kind.api_version());
        let mut st = self.shared.lock();
        Ok(st.store((kind, ns, name), obj))
    }

    /// Deletes an object; watches see DELETED. Fails if there is none.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Result<()> {
        let ns = if kind.namespaced() { namespace } else { "" };
        let mut st = self.shared.lock();
        st.remove(&(kind, ns.to_string(), name.to_string()))
            .map(|_| ())
            .ok_or_else(|| anyhow!("delete: no {} {namespace}/{name}", kind.name()))
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let ns = if kind.namespaced() { namespace } else { "" };
        self.shared
            .lock()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// "etcd compaction": every resourceVersion up to now becomes too old,
    /// and every open watch gets an ERROR event with code 410 and ends.
    /// Clients must relist.
    pub fn expire(&self) {
        let mut st = self.shared.lock();
        // Watching from the current resourceVersion stays possible (there
        // is nothing to replay); anything older is gone.
        st.compacted = st.rv;
        st.must_relist = Kind::ALL.into_iter().collect();
        st.history.clear();
        let rv = st.rv;
        for sub in st.subs.drain(..) {
            let _ = sub.tx.send(gone(rv, rv));
        }
    }

    /// Sends a BOOKMARK with the current resourceVersion to every watch
    /// that asked for bookmarks.
    pub fn send_bookmarks(&self) {
        let mut st = self.shared.lock();
        let rv = st.rv;
        st.subs.retain(|sub| {
            !sub.bookmarks
                || sub
                    .tx
                    .send(line(
                        "BOOKMARK",
                        &json!({
                            "kind": sub.kind.name(),
                            "apiVersion": sub.kind.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()},
                        }),
                    ))
                    .is_ok()
        });
    }

    /// Closes every open connection at once (watches end mid-stream, as
    /// when a load balancer in front of the API server restarts).
    pub fn drop_connections(&self) {
        self.shared.lock().subs.clear();
        self.shared.kill.send_modify(|n| *n += 1);
    }

    /// `false`: stop listening and drop every connection, so that clients
    /// get "connection refused"; `true`: listen again on the same port.
    pub fn set_reachable(&self, reachable: bool) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.ctl
            .send(Control::Reachable(reachable, tx))
            .map_err(|_| anyhow!("the API server thread is gone"))?;
        rx.blocking_recv()
            .map_err(|_| anyhow!("the API server thread is gone"))?
            .map_err(|e| anyhow!("{e}"))
    }

    /// `true`: every read (list, watch, get) of `kind` answers 500 until
    /// set back to `false`; open watches of it end.
    pub fn set_failing(&self, kind: Kind, failing: bool) {
        let mut st = self.shared.lock();
        if failing {
            st.failing.insert(kind);
            st.subs.retain(|s| s.kind != kind);
        } else {
            st.failing.remove(&kind);
        }
    }

    /// Open watches of `kind`.
    pub fn watches(&self, kind: Kind) -> usize {
        let mut st = self.shared.lock();
        st.subs.retain(|s| !s.tx.is_closed());
        st.subs.iter().filter(|s| s.kind == kind).count()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.lock().seen.clone()
    }

    /// Every Event object stored (created by clients, patched in place).
    pub fn events(&self) -> Vec<Value> {
        self.shared
            .lock()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == Kind::Event)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Polls `pred` (every 20 ms, at most `timeout`) until it holds.
    pub fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        mut pred: impl FnMut(&ApiServer) -> bool,
    ) -> Result<()> {
        wait_until(what, timeout, Duration::from_millis(20), || {
            Ok(if pred(self) {
                Wait::Done(())
            } else {
                Wait::Pending("not yet".into())
            })
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.ctl.send(Control::Stop);
        self.shared.kill.send_modify(|n| *n += 1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl State {
    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores `obj` under `key`, notifies watches; returns it as stored.
    fn store(&mut self, key: Key, mut obj: Value) -> Value {
        let rv = self.next_rv();
        let old = self.objects.get(&key).cloned();
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        match old.as_ref().map(|o| o["metadata"].clone()) {
            Some(m) => {
                meta["uid"] = m["uid"].clone();
                meta["creationTimestamp"] = m["creationTimestamp"].clone();
            }
            None => {
                self.uid += 1;
                if meta["uid"].is_null() {
                    meta["uid"] = json!(format!("fixture-uid-{}", self.uid));
                }
                meta["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
            }
        }
        obj["kind"] = json!(key.0.name());
        self.objects.insert(key.clone(), obj.clone());
        self.record(key.0, old, Some(obj.clone()), rv);
        obj
    }

    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut old = self.objects.remove(key)?;
        let rv = self.next_rv();
        let mut last = old.clone();
        last["metadata"]["resourceVersion"] = json!(rv.to_string());
        old["metadata"]["resourceVersion"] = last["metadata"]["resourceVersion"].clone();
        self.record(key.0, Some(old), None, rv);
        Some(last)
    }

    fn record(&mut self, kind: Kind, old: Option<Value>, new: Option<Value>, rv: u64) {
        let change = Change { rv, kind, old, new };
        self.subs.retain(|sub| match sub.event_for(&change) {
            Some(bytes) => sub.tx.send(bytes).is_ok(),
            None => !sub.tx.is_closed(),
        });
        self.history.push(change);
    }
}

impl Sub {
    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj["metadata"]["namespace"].as_str() == Some(ns))
            && self.labels.iter().all(|r| r.matches(obj))
            && self.fields.iter().all(|r| r.matches(obj))
    }

    /// The watch event this change is for this watch, if any.
    fn event_for(&self, c: &Change) -> Option<Bytes> {
        if c.kind != self.kind {
            return None;
        }
        let was = c.old.as_ref().is_some_and(|o| self.matches(o));
        let is = c.new.as_ref().is_some_and(|o| self.matches(o));
        match (was, is, &c.new) {
            (false, true, Some(new)) => Some(line("ADDED", new)),
            (true, true, Some(new)) => Some(line("MODIFIED", new)),
            // Deleted, or no longer selected: the last state this watch
            // saw, at the change's resourceVersion.
            (true, false, _) => {
                let mut last = c.old.clone()?;
                last["metadata"]["resourceVersion"] = json!(c.rv.to_string());
                Some(line("DELETED", &last))
            }
            _ => None,
        }
    }
}

fn line(kind: &str, object: &Value) -> Bytes {
    let mut v = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

fn gone(asked: u64, current: u64) -> Bytes {
    line(
        "ERROR",
        &status_object(
            410,
            "Expired",
            &format!("too old resource version: {asked} ({current})"),
        ),
    )
}

// ---- selectors ----

#[derive(Clone, Debug)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl LabelReq {
    fn matches(&self, obj: &Value) -> bool {
        let labels = &obj["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            LabelReq::Exists(k) => get(k).is_some(),
            LabelReq::NotExists(k) => get(k).is_none(),
            LabelReq::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            LabelReq::NotIn(k, vs) => get(k).is_none_or(|v| vs.iter().all(|x| x != v)),
        }
    }
}

/// Splits on commas outside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn parse_labels(s: &str) -> Result<Vec<LabelReq>, String> {
    let mut out = Vec::new();
    for part in split_top(s) {
        let p = part.trim();
        if p.is_empty() {
            continue;
        }
        let set = |rest: &str| -> Result<Vec<String>, String> {
            let inner = rest
                .trim()
                .strip_prefix('(')
                .and_then(|r| r.strip_suffix(')'))
                .ok_or_else(|| format!("bad set in {p:?}"))?;
            Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
        };
        let req = if let Some(k) = p.strip_prefix('!') {
            LabelReq::NotExists(k.trim().to_string())
        } else if let Some((k, v)) = p.split_once("!=") {
            LabelReq::NotIn(k.trim().to_string(), vec![v.trim().to_string()])
        } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
            LabelReq::In(k.trim().to_string(), vec![v.trim().to_string()])
        } else if let Some((k, rest)) = p.split_once(" notin ") {
            LabelReq::NotIn(k.trim().to_string(), set(rest)?)
        } else if let Some((k, rest)) = p.split_once(" in ") {
            LabelReq::In(k.trim().to_string(), set(rest)?)
        } else {
            LabelReq::Exists(p.to_string())
        };
        out.push(req);
    }
    Ok(out)
}

#[derive(Clone, Debug)]
struct FieldReq {
    path: Vec<String>,
    value: String,
    equal: bool,
}

impl FieldReq {
    fn matches(&self, obj: &Value) -> bool {
        let mut v = obj;
        for p in &self.path {
            v = &v[p.as_str()];
        }
        (v.as_str().unwrap_or_default() == self.value) == self.equal
    }
}

fn parse_fields(s: &str) -> Result<Vec<FieldReq>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v, equal) = if let Some((k, v)) = part.split_once("!=") {
            (k, v, false)
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (k, v, true)
        } else {
            return Err(format!("bad field selector {part:?}"));
        };
        if !matches!(k, "metadata.name" | "metadata.namespace") {
            return Err(format!("field label not supported: {k}"));
        }
        out.push(FieldReq {
            path: k.split('.').map(String::from).collect(),
            value: v.to_string(),
            equal,
        });
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            (b'+', _, _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

// ---- HTTP ----

type Body = BoxBody<Bytes, Infallible>;

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    json_response(code, &status_object(code.as_u16(), reason, message))
}

/// What a path names.
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (gv, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_string(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, resource, name) = match rest {
        ["namespaces", ns, res] => (Some(ns.to_string()), *res, None),
        ["namespaces", ns, res, name] => (Some(ns.to_string()), *res, Some(name.to_string())),
        [res] => (None, *res, None),
        [res, name] => (None, *res, Some(name.to_string())),
        _ => return None,
    };
    let kind = Kind::from_path(&gv, resource)?;
    if namespace.is_some() && !kind.namespaced() {
        return None;
    }
    Some(Target {
        kind,
        namespace,
        name,
    })
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let seen = Seen {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone(),
    };
    let watch = seen.is_watch();
    shared.lock().seen.push(seen);
    let Some(target) = parse_path(&path) else {
        return error(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("no route {path}"),
        );
    };
    if method == Method::GET && shared.lock().failing.contains(&target.kind) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "the fixture fails this on purpose",
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
    };
    let labels = match parse_labels(query.get("labelSelector").map_or("", |s| s)) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let fields = match parse_fields(query.get("fieldSelector").map_or("", |s| s)) {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e),
    };
    let kind = target.kind;
    let ns_key = |ns: Option<&String>| {
        if kind.namespaced() {
            ns.cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    match (&method, &target.name, watch) {
        (&Method::GET, None, true) => {
            let sub = Sub {
                kind,
                namespace: target.namespace.clone(),
                labels,
                fields,
                bookmarks: query.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
                tx: mpsc::unbounded_channel().0,
            };
            let timeout = query
                .get("timeoutSeconds")
                .and_then(|t| t.parse::<u64>().ok())
                .map(Duration::from_secs);
            start_watch(&shared, sub, query.get("resourceVersion"), timeout)
        }
        (&Method::GET, None, false) => {
            let mut st = shared.lock();
            st.must_relist.remove(&kind);
            let sub = Sub {
                kind,
                namespace: target.namespace.clone(),
                labels,
                fields,
                bookmarks: false,
                tx: mpsc::unbounded_channel().0,
            };
            let items: Vec<Value> = st
                .objects
                .iter()
                .filter(|((k, _, _), v)| *k == kind && sub.matches(v))
                .map(|(_, v)| v.clone())
                .collect();
            json_response(
                StatusCode::OK,
                &json!({
                    "kind": format!("{}List", kind.name()),
                    "apiVersion": kind.api_version(),
                    "metadata": {"resourceVersion": st.rv.to_string()},
                    "items": items,
                }),
            )
        }
        (&Method::GET, Some(name), _) => {
            let key = (kind, ns_key(target.namespace.as_ref()), name.clone());
            match shared.lock().objects.get(&key) {
                Some(v) => json_response(StatusCode::OK, v),
                None => error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} \"{name}\" not found", kind.resource()),
                ),
            }
        }
        (&Method::POST, None, _) => {
            let mut obj: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            };
            let Some(name) = obj["metadata"]["name"].as_str().map(String::from) else {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "no metadata.name",
                );
            };
            let ns = ns_key(target.namespace.as_ref());
            if kind.namespaced() {
                if obj["metadata"]["namespace"]
                    .as_str()
                    .is_some_and(|n| n != ns)
                {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "the namespace of the object does not match the namespace of the request",
                    );
                }
                obj["metadata"]["namespace"] = json!(ns);
            }
            let key = (kind, ns, name.clone());
            let mut st = shared.lock();
            if st.objects.contains_key(&key) {
                return error(
                    StatusCode::CONFLICT,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", kind.resource()),
                );
            }
            let stored = st.store(key, obj);
            json_response(StatusCode::CREATED, &stored)
        }
        (&Method::PATCH, Some(name), _) => {
            let patch: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()),
            };
            let key = (kind, ns_key(target.namespace.as_ref()), name.clone());
            let mut st = shared.lock();
            let Some(mut obj) = st.objects.get(&key).cloned() else {
                return error(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("{} \"{name}\" not found", kind.resource()),
                );
            };
            merge_patch(&mut obj, &patch);
            let stored = st.store(key, obj);
            json_response(StatusCode::OK, &stored)
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} not supported here"),
        ),
    }
}

fn start_watch(
    shared: &Shared,
    mut sub: Sub,
    rv: Option<&String>,
    timeout: Option<Duration>,
) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel();
    {
        let mut st = shared.lock();
        let asked = rv.and_then(|r| r.parse::<u64>().ok()).filter(|r| *r > 0);
        match asked {
            Some(asked) if asked < st.compacted || st.must_relist.contains(&sub.kind) => {
                let _ = tx.send(gone(asked, st.rv));
                drop(tx);
            }
            Some(asked) => {
                for c in st.history.iter().filter(|c| c.rv > asked) {
                    if let Some(b) = sub.event_for(c) {
                        let _ = tx.send(b);
                    }
                }
                sub.tx = tx;
                st.subs.push(sub);
            }
            // "Any" / unset: the current state as ADDED events, then changes.
            None => {
                for ((k, _, _), v) in &st.objects {
                    if *k == sub.kind && sub.matches(v) {
                        let _ = tx.send(line("ADDED", v));
                    }
                }
                sub.tx = tx;
                st.subs.push(sub);
            }
        }
    }
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let stream = futures::stream::unfold(rx, move |mut rx| async move {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok().flatten(),
            None => rx.recv().await,
        };
        next.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

async fn serve(
    shared: Arc<Shared>,
    addr: SocketAddr,
    mut listener: Option<tokio::net::TcpListener>,
    mut ctl: mpsc::UnboundedReceiver<Control>,
) {
    loop {
        let accept = async {
            match &listener {
                Some(l) => l.accept().await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            c = ctl.recv() => match c {
                None | Some(Control::Stop) => return,
                Some(Control::Reachable(on, ack)) => {
                    let result = if on {
                        if listener.is_none() {
                            match tokio::net::TcpListener::bind(addr).await {
                                Ok(l) => { listener = Some(l); Ok(()) }
                                Err(e) => Err(format!("re-binding {addr}: {e}")),
                            }
                        } else { Ok(()) }
                    } else {
                        listener = None;
                        shared.lock().subs.clear();
                        shared.kill.send_modify(|n| *n += 1);
                        Ok(())
                    };
                    let _ = ack.send(result);
                }
            },
            conn = accept => {
                let Some((stream, _)) = conn else { continue };
                let s = shared.clone();
                let mut kill = shared.kill.subscribe();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(handle(s, req).await) }
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = kill.changed() => {}
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn obj(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn label_selectors() {
        let sel = parse_labels(
            "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless",
        )
        .unwrap();
        let m = |labels: Value| {
            let o = obj(labels);
            sel.iter().all(|r| r.matches(&o))
        };
        assert!(m(json!({})));
        assert!(m(json!({"app": "x"})));
        assert!(!m(json!({"service.kubernetes.io/headless": ""})));
        assert!(!m(
            json!({"service.kubernetes.io/service-proxy-name": "other"})
        ));
        let sel = parse_labels("a=1,b!=2,c in (x, y),d notin (z),e").unwrap();
        let m = |labels: Value| {
            let o = obj(labels);
            sel.iter().all(|r| r.matches(&o))
        };
        assert!(m(json!({"a": "1", "c": "y", "e": ""})));
        assert!(!m(json!({"a": "1", "b": "2", "c": "y", "e": ""})));
        assert!(!m(json!({"a": "1", "c": "y", "d": "z", "e": ""})));
        assert!(!m(json!({"a": "1", "c": "q", "e": ""})));
        assert!(!m(json!({"a": "1", "c": "x"})));
    }

    #[test]
    fn field_selectors_paths_and_queries() {
        let f = parse_fields("metadata.name=a").unwrap();
        assert!(f[0].matches(&obj(json!({}))));
        let f = parse_fields("metadata.name!=a").unwrap();
        assert!(!f[0].matches(&obj(json!({}))));
        assert!(parse_fields("spec.x=1").is_err());
        let q = parse_query(Some(
            "labelSelector=%21a%2C%21b&fieldSelector=metadata.name%3Dn1&watch=true",
        ));
        assert_eq!(q["labelSelector"], "!a,!b");
        assert_eq!(q["fieldSelector"], "metadata.name=n1");
        let t = parse_path("/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices").unwrap();
        assert_eq!(
            (t.kind, t.namespace.as_deref(), t.name),
            (Kind::EndpointSlice, Some("ns"), None)
        );
        let t = parse_path("/api/v1/nodes/n1").unwrap();
        assert_eq!((t.kind, t.name.as_deref()), (Kind::Node, Some("n1")));
        assert!(parse_path("/api/v1/namespaces/ns/nodes").is_none());
        assert!(parse_path("/api/v1/pods").is_none());
    }

    #[test]
    fn merge_patches() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut v, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(v, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }
}
