//! Agent mode's source: the Kubernetes API server.
//!
//! Three kube-rs watchers feed three reflector stores: v1 Services and
//! discovery.k8s.io/v1 EndpointSlices, both with kube-proxy's label selector
//! [`SERVICE_PROXY_LABEL_SELECTOR`], and this node's Node (field selector on
//! its name). A [`Snapshot`] of the stores is published once every store has
//! had its initial list, and after that whenever a change arrives (events
//! that are already waiting are applied first, so a burst costs one
//! snapshot; the reconciler debounces further).
//!
//! Failures never end the source: a watch error, a dropped connection or an
//! expired resource version (410 Gone) makes the watcher retry with
//! kube-runtime's default backoff and, when needed, relist. A relist is
//! buffered by the reflector and swapped in whole when it completes, so a
//! published snapshot never holds half a relist: objects still there are
//! never dropped, and while the API server is unreachable the last
//! snapshot stays in force.

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    fmt::{self, Debug},
    path::Path,
    sync::Arc,
    time::Instant,
};

use futures::{FutureExt as _, StreamExt as _, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Node, NodeStatus, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource, ResourceExt as _,
    client::ClientBuilder,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, ObjectRef, store::Writer},
        watcher,
    },
};
use serde::de::DeserializeOwned;

use crate::model::{ClusterState, EndpointSliceInfo};
use crate::source::{Snapshot, SnapshotSender, slim};

/// kube-proxy's selector: Services (and their slices) handled by another
/// proxy, and headless ones, are not ours.
pub const SERVICE_PROXY_LABEL_SELECTOR: &str =
    "!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless";

/// One permission the agent uses: verbs on a resource of an API group ("" is
/// the core group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
}

/// Every API call the agent makes, by resource: the source of truth for the
/// ClusterRole in deploy/ (a test compares the two). Services and
/// EndpointSlices are listed and watched; the Node is read once at start
/// ([`check_node`]) and then listed and watched; Events about invalid
/// objects are created, and patched when they happen again
/// (`crate::agent::events`).
pub const API_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "services",
        verbs: &["list", "watch"],
    },
    ApiAccess {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: &["list", "watch"],
    },
    ApiAccess {
        group: "",
        resource: "nodes",
        verbs: &["get", "list", "watch"],
    },
    ApiAccess {
        group: "",
        resource: "events",
        verbs: &["create", "patch"],
    },
];

/// What is watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Watched {
    Services,
    EndpointSlices,
    Node,
}

impl Watched {
    pub const ALL: [Watched; 3] = [Watched::Services, Watched::EndpointSlices, Watched::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Watched::Services => "services",
            Watched::EndpointSlices => "endpointslices",
            Watched::Node => "node",
        }
    }
}

impl fmt::Display for Watched {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hears what the source does, for health, metrics and status. Every
/// method has a no-op default. Called from the source's task: keep them
/// short and non-blocking.
pub trait Observer: Send + Sync {
    /// An HTTP response came back from the API server (`Ok(status)`), or a
    /// request got none (`Err(why)`: refused, timed out, ...).
    fn api_contact(&self, _result: Result<u16, String>) {}
    /// A watch failed; it is retried after a backoff.
    fn watch_error(&self, _what: Watched, _error: &watcher::Error) {}
    /// A list (the initial one or a relist) of `what` completed.
    fn listed(&self, _what: Watched) {}
    /// `snapshot` is about to be published; `oldest_change` is when the
    /// oldest change it carries (that the previous snapshot did not)
    /// arrived. Called before the reconciler can see it.
    fn published(&self, _snapshot: &Arc<Snapshot>, _oldest_change: Instant) {}
}

/// An observer that ignores everything.
pub struct NoObserver;

impl Observer for NoObserver {}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("reading kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no API server configuration: not in a pod ({in_cluster}) and no kubeconfig ({kubeconfig}); pass --kubeconfig"
    )]
    Infer {
        in_cluster: kube::config::InClusterError,
        kubeconfig: kube::config::InferConfigError,
    },
    #[error("building the API client: {0}")]
    Build(#[from] kube::Error),
}

/// The API server configuration: `kubeconfig` when given; else in-cluster
/// (service account token, KUBERNETES_SERVICE_HOST/PORT); else $KUBECONFIG
/// or ~/.kube/config.
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
    if let Some(path) = kubeconfig {
        let err = |source| ClientError::Kubeconfig {
            path: path.display().to_string(),
            source,
        };
        let kc = Kubeconfig::read_from(path).map_err(err)?;
        return kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(err);
    }
    match kube::Config::incluster() {
        Ok(c) => Ok(c),
        Err(in_cluster) => kube::Config::infer()
            .await
            .map_err(|kubeconfig| ClientError::Infer {
                in_cluster,
                kubeconfig,
            }),
    }
}

/// A client whose every response (or failure to get one) is reported to
/// `observer.api_contact`, so that "connected" means "the API server
/// answered the last request", also while watches are quiet.
pub fn client(config: kube::Config, observer: Arc<dyn Observer>) -> Result<Client, ClientError> {
    let layer = tower::util::MapResultLayer::new(
        move |r: Result<http::Response<Box<kube::client::DynBody>>, tower::BoxError>| {
            match &r {
                Ok(resp) => observer.api_contact(Ok(resp.status().as_u16())),
                Err(e) => observer.api_contact(Err(e.to_string())),
            }
            r
        },
    );
    Ok(ClientBuilder::try_from(config)?.with_layer(&layer).build())
}

/// Reads this node's Node once, so that a wrong --node-name shows in the
/// log at start. Never fails: the watch carries on either way.
pub async fn check_node(client: Client, node_name: String) {
    match Api::<Node>::all(client).get_opt(&node_name).await {
        Ok(Some(_)) => tracing::info!(node = %node_name, "found this node's Node object"),
        Ok(None) => tracing::warn!(
            node = %node_name,
            "no Node object of this name: zone, addresses and eligibility come from defaults (check --node-name / NODE_NAME)"
        ),
        Err(e) => {
            tracing::warn!(node = %node_name, error = %e, "cannot read this node's Node object yet");
        }
    }
}

/// An event of one of the watchers (boxed: the objects are large).
enum Update {
    Service(Box<watcher::Event<Service>>),
    Slice(Box<watcher::Event<EndpointSliceInfo>>),
    Node(Box<watcher::Event<Node>>),
}

/// Where a watcher is in its list/watch cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// A (re)list starts.
    Init,
    /// An object of the list, buffered by the reflector.
    InitApply,
    /// The list completed and replaced the store.
    InitDone,
    /// A change while watching.
    Change,
}

fn phase<K>(e: &watcher::Event<K>) -> Phase {
    match e {
        watcher::Event::Init => Phase::Init,
        watcher::Event::InitApply(_) => Phase::InitApply,
        watcher::Event::InitDone => Phase::InitDone,
        watcher::Event::Apply(_) | watcher::Event::Delete(_) => Phase::Change,
    }
}

impl Update {
    fn phase(&self) -> Phase {
        match self {
            Update::Service(e) => phase(e),
            Update::Slice(e) => phase(e),
            Update::Node(e) => phase(e),
        }
    }
}

type Item = (Watched, Result<Update, watcher::Error>);

/// One watcher with kube-runtime's default backoff; `wrap` reduces each
/// object to what is kept of it.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    what: Watched,
    wrap: fn(watcher::Event<K>) -> Update,
) -> BoxStream<'static, Item>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    watcher(api, config)
        .default_backoff()
        .map(move |r| (what, r.map(wrap)))
        .boxed()
}

/// The same event with each object turned into another type.
fn map_event<A, B>(event: watcher::Event<A>, f: impl Fn(A) -> B) -> watcher::Event<B> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(f(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(f(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

/// The reflector keys what it stores by kind, namespace and name: an
/// EndpointSlice is stored as the model's reduced copy of it.
impl reflector::Lookup for EndpointSliceInfo {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        <EndpointSlice as Resource>::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        <EndpointSlice as Resource>::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        <EndpointSlice as Resource>::version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <EndpointSlice as Resource>::plural(&())
    }
    fn name(&self) -> Option<Cow<'_, str>> {
        self.name.as_deref().map(Cow::Borrowed)
    }
    fn namespace(&self) -> Option<Cow<'_, str>> {
        self.namespace.as_deref().map(Cow::Borrowed)
    }
    fn resource_version(&self) -> Option<Cow<'_, str>> {
        self.resource_version.as_deref().map(Cow::Borrowed)
    }
    fn uid(&self) -> Option<Cow<'_, str>> {
        self.uid.as_deref().map(Cow::Borrowed)
    }
}

fn slim_meta<K: Resource>(o: &mut K) {
    o.managed_fields_mut().clear();
}

/// Of a Node the model and health need labels, deletion, taints and
/// addresses; conditions, images and the rest change often and are dropped.
fn slim_node(n: &mut Node) {
    slim_meta(n);
    if let Some(status) = n.status.take() {
        n.status = Some(NodeStatus {
            addresses: status.addresses,
            ..Default::default()
        });
    }
}

/// What of a Node can change a snapshot's meaning.
fn node_view(n: &Node) -> impl PartialEq + '_ {
    (
        &n.metadata.labels,
        &n.metadata.annotations,
        &n.metadata.deletion_timestamp,
        n.spec.as_ref().map(|s| &s.taints),
        n.status.as_ref().map(|s| &s.addresses),
    )
}

/// Where a [`Sorted`] store keeps an object: namespace, name.
type SortKey = (Option<String>, Option<String>);

/// The objects of one watched kind in the order a snapshot lists them,
/// kept in that order as events arrive, with the reflector's semantics: a
/// relist (Init .. InitDone) is collected apart and replaces the objects at
/// InitDone, so a snapshot never holds half a relist. A snapshot then
/// costs a clone of each `Arc`; sorting every object for each snapshot
/// was most of a lone change's latency at 10,000 Services.
struct Sorted<K> {
    objects: BTreeMap<SortKey, Arc<K>>,
    relist: Option<BTreeMap<SortKey, Arc<K>>>,
    key: fn(&K) -> SortKey,
}

impl<K: Clone> Sorted<K> {
    fn new(key: fn(&K) -> SortKey) -> Self {
        Sorted {
            objects: BTreeMap::new(),
            relist: None,
            key,
        }
    }

    fn apply(&mut self, event: &watcher::Event<K>) {
        let key = self.key;
        match event {
            watcher::Event::Apply(o) => {
                self.objects.insert(key(o), Arc::new(o.clone()));
            }
            watcher::Event::Delete(o) => {
                self.objects.remove(&key(o));
            }
            watcher::Event::Init => self.relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(o) => {
                self.relist
                    .get_or_insert_default()
                    .insert(key(o), Arc::new(o.clone()));
            }
            watcher::Event::InitDone => {
                if let Some(relist) = self.relist.take() {
                    self.objects = relist;
                }
            }
        }
    }

    fn snapshot(&self) -> Vec<Arc<K>> {
        self.objects.values().cloned().collect()
    }
}

/// The stores of the watched kinds and which of them had their initial
/// list.
struct Stores {
    services: Sorted<Service>,
    slices: Sorted<EndpointSliceInfo>,
    nodes: Writer<Node>,
    listed: BTreeSet<Watched>,
    node_name: String,
}

impl Stores {
    fn new(node_name: String) -> Self {
        Stores {
            services: Sorted::new(|s| (s.metadata.namespace.clone(), s.metadata.name.clone())),
            slices: Sorted::new(|s| (s.namespace.clone(), s.name.clone())),
            nodes: Writer::default(),
            listed: BTreeSet::new(),
            node_name,
        }
    }

    /// Applies one event. True when a snapshot may now differ.
    fn apply(&mut self, update: &Update) -> bool {
        let mut changed = matches!(update.phase(), Phase::InitDone | Phase::Change);
        match update {
            Update::Service(e) => self.services.apply(e),
            Update::Slice(e) => self.slices.apply(e),
            Update::Node(e) => {
                // Status heartbeats do not count as changes.
                if let watcher::Event::Apply(n) = e.as_ref() {
                    changed = self
                        .nodes
                        .as_reader()
                        .get(&ObjectRef::from_obj(n))
                        .is_none_or(|old| node_view(&old) != node_view(n));
                }
                self.nodes.apply_watcher_event(e);
            }
        }
        changed
    }

    fn complete(&self) -> bool {
        self.listed.len() == Watched::ALL.len()
    }

    fn snapshot(&self) -> Snapshot {
        let node = self
            .nodes
            .as_reader()
            .state()
            .into_iter()
            .find(|n| n.name_any() == self.node_name);
        Snapshot {
            cluster: ClusterState {
                services: self.services.snapshot(),
                endpoint_slices: self.slices.snapshot(),
            },
            node,
            invalid: Vec::new(),
        }
    }
}

/// Events applied before a snapshot is published, at most.
const MAX_BATCH: usize = 1024;

/// Watches the API server and publishes snapshots on `tx` until every
/// receiver is gone. Never returns on errors (see the module docs).
pub async fn run(
    client: Client,
    node_name: String,
    tx: SnapshotSender,
    observer: Arc<dyn Observer>,
) {
    let labelled = || watcher::Config::default().labels(SERVICE_PROXY_LABEL_SELECTOR);
    let streams = vec![
        watch(
            Api::<Service>::all(client.clone()),
            labelled(),
            Watched::Services,
            |e| Update::Service(Box::new(e.modify(slim::service))),
        ),
        watch(
            Api::<EndpointSlice>::all(client.clone()),
            labelled(),
            Watched::EndpointSlices,
            |e| Update::Slice(Box::new(map_event(e, EndpointSliceInfo::from))),
        ),
        watch(
            Api::<Node>::all(client),
            watcher::Config::default().fields(&format!("metadata.name={node_name}")),
            Watched::Node,
            |e| Update::Node(Box::new(e.modify(slim_node))),
        ),
    ];
    let mut events = futures::stream::select_all(streams);
    let mut stores = Stores::new(node_name);
    // When the oldest change not yet published arrived.
    let mut oldest: Option<Instant> = None;
    while let Some(first) = events.next().await {
        let mut next = Some(first);
        let mut applied = 0;
        while let Some((what, result)) = next.take() {
            match result {
                Ok(update) => {
                    if stores.apply(&update) {
                        oldest.get_or_insert_with(Instant::now);
                    }
                    match update.phase() {
                        Phase::Init => tracing::debug!(resource = %what, "listing"),
                        Phase::InitDone => {
                            tracing::info!(resource = %what, "list complete");
                            stores.listed.insert(what);
                            observer.listed(what);
                        }
                        Phase::InitApply | Phase::Change => {}
                    }
                }
                Err(e) => {
                    tracing::warn!(resource = %what, error = %e, "watch failed; retrying with backoff");
                    observer.watch_error(what, &e);
                }
            }
            applied += 1;
            if applied >= MAX_BATCH {
                break;
            }
            next = events.next().now_or_never().flatten();
        }
        if stores.complete()
            && let Some(since) = oldest.take()
        {
            let snapshot = Arc::new(stores.snapshot());
            observer.published(&snapshot, since);
            if tx.send(Some(snapshot)).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeSpec, Taint};
    use std::collections::BTreeMap;

    fn node(zone: &str, rv: &str) -> Node {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.metadata.resource_version = Some(rv.into());
        n.metadata.labels = Some(BTreeMap::from([(
            "topology.kubernetes.io/zone".to_string(),
            zone.to_string(),
        )]));
        n.status = Some(NodeStatus {
            addresses: Some(vec![NodeAddress {
                type_: "InternalIP".into(),
                address: "192.0.2.1".into(),
            }]),
            ..Default::default()
        });
        n
    }

    fn nev(e: watcher::Event<Node>) -> Update {
        Update::Node(Box::new(e))
    }

    #[test]
    fn kube_node_heartbeats_are_not_changes_but_labels_and_taints_are() {
        let mut stores = Stores::new("n1".into());
        assert!(!stores.apply(&nev(watcher::Event::Init)));
        assert!(!stores.apply(&nev(watcher::Event::InitApply(node("a", "1")))));
        assert!(stores.apply(&nev(watcher::Event::InitDone)));
        // Same view, new resourceVersion (a status heartbeat, slimmed).
        let mut beat = node("a", "2");
        beat.status.as_mut().unwrap().conditions = Some(Vec::new());
        slim_node(&mut beat);
        assert!(beat.status.as_ref().unwrap().conditions.is_none());
        assert!(!stores.apply(&nev(watcher::Event::Apply(beat))));
        assert!(stores.apply(&nev(watcher::Event::Apply(node("b", "3")))));
        let mut tainted = node("b", "4");
        tainted.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: "ToBeDeletedByClusterAutoscaler".into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        assert!(stores.apply(&nev(watcher::Event::Apply(tainted))));
        let snap = stores.snapshot();
        assert_eq!(
            snap.node.unwrap().metadata.resource_version.as_deref(),
            Some("4")
        );
    }

    #[test]
    fn kube_snapshot_needs_every_list_and_is_sorted() {
        let mut stores = Stores::new("n1".into());
        let svc = |ns: &str, name: &str| {
            let mut s = Service::default();
            s.metadata.namespace = Some(ns.into());
            s.metadata.name = Some(name.into());
            s
        };
        for what in Watched::ALL {
            assert!(!stores.complete());
            stores.listed.insert(what);
        }
        assert!(stores.complete());
        for (ns, name) in [("b", "x"), ("a", "y"), ("a", "b")] {
            stores.apply(&Update::Service(Box::new(watcher::Event::Apply(svc(
                ns, name,
            )))));
        }
        let names: Vec<_> = stores
            .snapshot()
            .cluster
            .services
            .iter()
            .map(|s| format!("{}/{}", s.namespace().unwrap(), s.name_any()))
            .collect();
        assert_eq!(names, ["a/b", "a/y", "b/x"]);
    }

    /// Slices are stored reduced, keyed by namespace/name as objects are.
    #[test]
    fn kube_slices_are_stored_as_the_model_reads_them() {
        let mut stores = Stores::new("n1".into());
        let slice = |ns: &str, name: &str, ip: &str| {
            let mut s = EndpointSlice {
                address_type: "IPv4".into(),
                endpoints: Some(vec![k8s_openapi::api::discovery::v1::Endpoint {
                    addresses: vec![ip.into()],
                    ..Default::default()
                }]),
                ..Default::default()
            };
            s.metadata.namespace = Some(ns.into());
            s.metadata.name = Some(name.into());
            s.metadata.uid = Some(format!("uid-{name}"));
            s
        };
        let apply = |stores: &mut Stores, e: watcher::Event<EndpointSlice>| {
            stores.apply(&Update::Slice(Box::new(map_event(
                e,
                EndpointSliceInfo::from,
            ))))
        };
        apply(
            &mut stores,
            watcher::Event::Apply(slice("b", "s", "10.0.0.1")),
        );
        apply(
            &mut stores,
            watcher::Event::Apply(slice("a", "s", "10.0.0.2")),
        );
        // An update replaces the slice of that namespace/name.
        apply(
            &mut stores,
            watcher::Event::Apply(slice("b", "s", "10.0.0.3")),
        );
        let view = |stores: &Stores| -> Vec<(String, String, String)> {
            stores
                .snapshot()
                .cluster
                .endpoint_slices
                .iter()
                .map(|s| {
                    (
                        s.namespace.clone().unwrap(),
                        s.uid.clone().unwrap(),
                        s.endpoints[0].address.as_ref().unwrap().to_string(),
                    )
                })
                .collect()
        };
        assert_eq!(
            view(&stores),
            [
                ("a".into(), "uid-s".into(), "10.0.0.2".into()),
                ("b".into(), "uid-s".into(), "10.0.0.3".into())
            ]
        );
        apply(&mut stores, watcher::Event::Delete(slice("a", "s", "")));
        assert_eq!(
            view(&stores),
            [("b".into(), "uid-s".into(), "10.0.0.3".into())]
        );
    }

    #[test]
    fn kube_access_list_has_no_duplicates() {
        let mut seen = BTreeSet::new();
        for a in API_ACCESS {
            assert!(seen.insert((a.group, a.resource)), "{a:?} twice");
            assert!(!a.verbs.is_empty());
        }
    }
}
