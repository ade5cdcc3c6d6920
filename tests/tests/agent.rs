//! Agent mode against the API server fixture (`tests::apiserver`).
//!
//! - `source_*`: the agent's real source (`lb_userspace::source::kube`,
//!   kube-rs client, watchers and reflector stores) against the fixture,
//!   asserting the snapshots it publishes. No eBPF, no root.
//! - `events_*`: the Event reporter against the fixture. No root.
//! - `agent_*`: `ferry agent` as a process on a test topology, with the
//!   datapath attached to the test's cgroup. Privileged: run as root with
//!   `FERRY_BIN=target/release/ferry cargo test --release -p tests --test agent -- --test-threads=1`.
//!
//! Every wait is bounded and polls; nothing asserts durations.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use lb_userspace::agent::events::{EventReporter, REASON};
use lb_userspace::model::{self, NodeInfo};
use lb_userspace::source::Snapshot;
use lb_userspace::source::kube::{
    self as kube_source, Observer, SERVICE_PROXY_LABEL_SELECTOR, Watched,
};
use serde_json::{Value, json};
use tests::apiserver::{ApiServer, Kind};
use tests::*;

/// Bound of every wait here.
const WAIT: Duration = Duration::from_secs(20);
const NODE: &str = "node-1";

fn web(cluster_ip: &str) -> Value {
    Service::new("default", "web")
        .cluster_ip(cluster_ip)
        .port(ServicePort::tcp(80).name("http").target(8080))
        .to_value()
}

fn named_service(name: &str, cluster_ip: &str) -> Service {
    Service::new("default", name)
        .cluster_ip(cluster_ip)
        .port(ServicePort::tcp(80).name("http").target(8080))
}

fn web_slice(ips: &[&str]) -> Value {
    let mut s =
        EndpointSlice::new("default", "web-1", "web", AddressType::IPv4).port("http", 8080, "TCP");
    for ip in ips {
        s = s.endpoint(Endpoint::new(*ip).node(NODE));
    }
    s.to_value()
}

// ------------------------------------------------------------ source tests

/// Records what the source reports.
#[derive(Default)]
struct Recorder {
    published: Mutex<Vec<Arc<Snapshot>>>,
    errors: Mutex<Vec<Watched>>,
    listed: Mutex<Vec<Watched>>,
}

impl Observer for Recorder {
    fn watch_error(&self, what: Watched, _error: &kube::runtime::watcher::Error) {
        self.errors.lock().unwrap().push(what);
    }
    fn listed(&self, what: Watched) {
        self.listed.lock().unwrap().push(what);
    }
    fn published(&self, snapshot: &Arc<Snapshot>, _oldest_change: Instant) {
        self.published.lock().unwrap().push(snapshot.clone());
    }
}

/// The kube source running on its own runtime, publishing into `rx`.
struct Source {
    rx: lb_userspace::source::SnapshotReceiver,
    rec: Arc<Recorder>,
    task: tokio::task::JoinHandle<()>,
    rt: tokio::runtime::Runtime,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

fn client(
    rt: &tokio::runtime::Runtime,
    api: &ApiServer,
    observer: Arc<dyn Observer>,
) -> Result<kube::Client> {
    rt.block_on(async {
        let config = kube_source::config(Some(api.kubeconfig())).await?;
        Ok(kube_source::client(config, observer)?)
    })
}

impl Source {
    fn start(api: &ApiServer, node: &str) -> Result<Source> {
        let rt = runtime()?;
        let rec = Arc::new(Recorder::default());
        let client = client(&rt, api, rec.clone())?;
        let (tx, rx) = tokio::sync::watch::channel(None);
        let task = rt.spawn(kube_source::run(client, node.to_string(), tx, rec.clone()));
        Ok(Source { rx, rec, task, rt })
    }

    fn latest(&self) -> Option<Arc<Snapshot>> {
        self.rx.borrow().clone()
    }

    fn published(&self) -> Vec<Arc<Snapshot>> {
        self.rec.published.lock().unwrap().clone()
    }

    /// Polls until the latest snapshot satisfies `pred`.
    fn wait_for(&self, what: &str, pred: impl Fn(&Snapshot) -> bool) -> Result<Arc<Snapshot>> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.latest()
                && pred(&s)
            {
                return Ok(s);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out waiting for a snapshot with {what}; latest: {:?}",
                    self.latest().map(|s| describe(&s))
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// kind/namespace/name → resourceVersion of everything in a snapshot.
fn describe(s: &Snapshot) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for svc in &s.cluster.services {
        let m = &svc.metadata;
        out.insert(
            format!(
                "Service/{}/{}",
                m.namespace.clone().unwrap_or_default(),
                m.name.clone().unwrap_or_default()
            ),
            m.resource_version.clone().unwrap_or_default(),
        );
    }
    for sl in &s.cluster.endpoint_slices {
        out.insert(
            format!(
                "EndpointSlice/{}/{}",
                sl.namespace.clone().unwrap_or_default(),
                sl.name.clone().unwrap_or_default()
            ),
            sl.resource_version.clone().unwrap_or_default(),
        );
    }
    if let Some(n) = &s.node {
        out.insert(
            format!("Node/{}", n.metadata.name.clone().unwrap_or_default()),
            n.metadata.resource_version.clone().unwrap_or_default(),
        );
    }
    out
}

fn service_names(s: &Snapshot) -> Vec<String> {
    s.cluster
        .services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap_or_default())
        .collect()
}

fn slice_addresses(s: &Snapshot, name: &str) -> Vec<String> {
    s.cluster
        .endpoint_slices
        .iter()
        .filter(|e| e.name.as_deref() == Some(name))
        .flat_map(|e| e.endpoints.iter().filter_map(|ep| ep.address.as_ref()))
        .map(ToString::to_string)
        .collect()
}

fn zone(s: &Snapshot) -> Option<String> {
    s.node
        .as_ref()
        .and_then(|n| n.metadata.labels.as_ref())
        .and_then(|l| l.get("topology.kubernetes.io/zone").cloned())
}

fn lists(api: &ApiServer, kind: Kind) -> usize {
    api.requests().iter().filter(|r| r.is_list(kind)).count()
}

/// The objects every source test starts with: node-1, Service web with one
/// endpoint.
fn cluster() -> Result<ApiServer> {
    let api = ApiServer::start()?;
    api.apply(
        Node::new(NODE)
            .zone("zone-a")
            .address("InternalIP", "192.0.2.1")
            .to_value(),
    )?;
    api.apply(web("10.96.0.10"))?;
    api.apply(web_slice(&["10.0.0.1"]))?;
    Ok(api)
}

#[test]
fn source_publishes_after_every_initial_list_and_follows_changes() -> Result<()> {
    let api = cluster()?;
    // The Node list fails: nothing may be published, although Services
    // and EndpointSlices are listed and watched.
    api.set_failing(Kind::Node, true);
    let src = Source::start(&api, NODE)?;
    api.wait_until(
        "services and slices watched, a node list tried",
        WAIT,
        |a| {
            a.watches(Kind::Service) == 1
                && a.watches(Kind::EndpointSlice) == 1
                && lists(a, Kind::Node) >= 1
        },
    )?;
    ensure!(
        src.latest().is_none(),
        "published before the Node was listed"
    );
    ensure!(src.published().is_empty());
    api.set_failing(Kind::Node, false);
    let first = src.wait_for("the first snapshot", |s| s.node.is_some())?;
    assert_eq!(service_names(&first), ["web"]);
    assert_eq!(slice_addresses(&first, "web-1"), ["10.0.0.1"]);
    assert_eq!(
        src.published().len(),
        1,
        "one snapshot for the initial lists"
    );

    // kube-proxy's selectors went to the API server.
    for r in api.requests() {
        match r.path.rsplit('/').next() {
            Some("services" | "endpointslices") => assert_eq!(
                r.query.get("labelSelector").map(String::as_str),
                Some(SERVICE_PROXY_LABEL_SELECTOR),
                "{r:?}"
            ),
            Some("nodes") => assert_eq!(
                r.query.get("fieldSelector").map(String::as_str),
                Some("metadata.name=node-1"),
                "{r:?}"
            ),
            _ => {}
        }
    }

    // Add, update, delete.
    api.apply(named_service("api", "10.96.0.11").to_value())?;
    src.wait_for("api added", |s| service_names(s) == ["api", "web"])?;
    api.apply(web_slice(&["10.0.0.1", "10.0.0.2"]))?;
    src.wait_for("web-1 updated", |s| {
        slice_addresses(s, "web-1") == ["10.0.0.1", "10.0.0.2"]
    })?;
    api.delete(Kind::Service, "default", "web")?;
    src.wait_for("web deleted", |s| service_names(s) == ["api"])?;
    api.delete(Kind::EndpointSlice, "default", "web-1")?;
    src.wait_for("web-1 deleted", |s| s.cluster.endpoint_slices.is_empty())?;

    // Leaving kube-proxy's selector is a deletion; headless ones never come.
    api.apply(
        named_service("api", "10.96.0.11")
            .label("service.kubernetes.io/service-proxy-name", "other")
            .to_value(),
    )?;
    api.apply(
        named_service("db", "10.96.0.12")
            .label("service.kubernetes.io/headless", "")
            .to_value(),
    )?;
    api.apply(named_service("cache", "10.96.0.13").to_value())?;
    src.wait_for("api handed to another proxy, db headless", |s| {
        service_names(s) == ["cache"]
    })?;
    Ok(())
}

#[test]
fn source_relist_after_410_publishes_the_same_objects_and_never_drops_them() -> Result<()> {
    let api = cluster()?;
    let src = Source::start(&api, NODE)?;
    let first = src.wait_for("the first snapshot", |s| s.node.is_some())?;
    let before = describe(&first);
    let lists_before: Vec<usize> = [Kind::Service, Kind::EndpointSlice, Kind::Node]
        .iter()
        .map(|k| lists(&api, *k))
        .collect();
    let published_before = src.published().len();

    api.expire();
    api.wait_until("every kind relisted and watched again", WAIT, |a| {
        [Kind::Service, Kind::EndpointSlice, Kind::Node]
            .iter()
            .zip(&lists_before)
            .all(|(k, n)| lists(a, *k) > *n && a.watches(*k) == 1)
    })?;
    // A change after the relist: once it shows, everything of the relist
    // has been published.
    api.apply(named_service("fence", "10.96.0.99").to_value())?;
    let last = src.wait_for("the fence", |s| {
        service_names(s).contains(&"fence".to_string())
    })?;

    let mut after = describe(&last);
    after.retain(|k, _| !k.contains("/fence"));
    assert_eq!(after, before, "the relist changed what the snapshot holds");
    for (i, s) in src.published().iter().enumerate().skip(published_before) {
        let mut d = describe(s);
        d.retain(|k, _| !k.contains("/fence"));
        assert_eq!(
            d, before,
            "snapshot #{i} (during or after the relist) differs"
        );
    }
    Ok(())
}

#[test]
fn source_keeps_the_last_snapshot_through_an_outage_and_converges_after() -> Result<()> {
    let api = cluster()?;
    let src = Source::start(&api, NODE)?;
    let first = src.wait_for("the first snapshot", |s| s.node.is_some())?;
    let published = src.published().len();

    api.set_reachable(false)?;
    api.wait_until("every watch to notice", WAIT, |_| {
        let errors = src.rec.errors.lock().unwrap();
        Watched::ALL.iter().all(|w| errors.contains(w))
    })?;
    // Changes while the agent cannot see them; then the history is
    // compacted, so the agent must relist when it is back.
    api.apply(named_service("late", "10.96.0.20").to_value())?;
    api.delete(Kind::Service, "default", "web")?;
    api.apply(web_slice(&["10.0.0.3"]))?;
    api.expire();
    ensure!(
        src.published().len() == published && Arc::ptr_eq(&src.latest().unwrap(), &first),
        "a snapshot was published during the outage"
    );

    api.set_reachable(true)?;
    src.wait_for("the changes made during the outage", |s| {
        service_names(s) == ["late"] && slice_addresses(s, "web-1") == ["10.0.0.3"]
    })?;
    Ok(())
}

/// A 410 the agent never saw (its watches were down when the history was
/// compacted, and nothing changed since, so its resourceVersion is still
/// the current one) must still end in a relist: the fixture keeps
/// answering 410 until each kind is listed again, like an API server
/// whose watch cache no longer holds the client's resourceVersion.
#[test]
fn source_relists_after_a_410_that_came_while_its_watches_were_down() -> Result<()> {
    let api = cluster()?;
    let src = Source::start(&api, NODE)?;
    src.wait_for("the first snapshot", |s| s.node.is_some())?;
    let kinds = [Kind::Service, Kind::EndpointSlice, Kind::Node];
    let lists_before: Vec<usize> = kinds.iter().map(|k| lists(&api, *k)).collect();

    api.set_reachable(false)?;
    api.wait_until("every watch to notice", WAIT, |_| {
        let errors = src.rec.errors.lock().unwrap();
        Watched::ALL.iter().all(|w| errors.contains(w))
    })?;
    api.expire();
    api.set_reachable(true)?;
    api.wait_until("every kind relisted and watched again", WAIT, |a| {
        kinds
            .iter()
            .zip(&lists_before)
            .all(|(k, n)| lists(a, *k) > *n && a.watches(*k) == 1)
    })?;
    Ok(())
}

#[test]
fn source_resumes_dropped_watches_without_relisting_and_takes_bookmarks() -> Result<()> {
    let api = cluster()?;
    let src = Source::start(&api, NODE)?;
    src.wait_for("the first snapshot", |s| s.node.is_some())?;
    let lists_before = lists(&api, Kind::Service);

    // Dropped connections: watches resume from their resourceVersion and
    // get what happened meanwhile from the history.
    api.drop_connections();
    api.apply(named_service("b", "10.96.0.21").to_value())?;
    src.wait_for("b", |s| service_names(s).contains(&"b".to_string()))?;
    api.wait_until("the services watch back", WAIT, |a| {
        a.watches(Kind::Service) == 1
    })?;
    assert_eq!(
        lists(&api, Kind::Service),
        lists_before,
        "dropped watches relisted"
    );

    // A BOOKMARK in the stream is read like the real API server's: no
    // error, no restart, and the events after it still arrive.
    let errors = src.rec.errors.lock().unwrap().len();
    api.send_bookmarks();
    api.apply(named_service("c", "10.96.0.22").to_value())?;
    src.wait_for("c", |s| service_names(s).contains(&"c".to_string()))?;
    assert_eq!(
        src.rec.errors.lock().unwrap().len(),
        errors,
        "the bookmark broke the watch"
    );
    assert_eq!(lists(&api, Kind::Service), lists_before);
    Ok(())
}

#[test]
fn source_follows_this_nodes_zone_label_only() -> Result<()> {
    let api = cluster()?;
    api.apply(Node::new("node-2").zone("zone-x").to_value())?;
    let src = Source::start(&api, NODE)?;
    let first = src.wait_for("the first snapshot", |s| s.node.is_some())?;
    assert_eq!(zone(&first).as_deref(), Some("zone-a"));
    assert_eq!(
        first.node.as_ref().unwrap().metadata.name.as_deref(),
        Some(NODE)
    );

    api.apply(
        Node::new(NODE)
            .zone("zone-b")
            .address("InternalIP", "192.0.2.1")
            .to_value(),
    )?;
    src.wait_for("zone-b", |s| zone(s).as_deref() == Some("zone-b"))?;
    api.apply(Node::new("node-2").zone("zone-y").to_value())?;
    api.delete(Kind::Node, "", NODE)?;
    let gone = src.wait_for("node-1 deleted", |s| s.node.is_none())?;
    assert!(
        src.published().iter().all(|s| s
            .node
            .as_ref()
            .is_none_or(|n| n.metadata.name.as_deref() == Some(NODE))),
        "another node showed up: {:?}",
        describe(&gone)
    );
    Ok(())
}

// ------------------------------------------------------------ events

#[test]
fn events_report_an_invalid_service_once_per_breakage() -> Result<()> {
    let api = cluster()?;
    api.apply(
        Service::new("default", "bad")
            .cluster_ip("10.96.0.300")
            .port(ServicePort::tcp(80))
            .to_value(),
    )?;
    let src = Source::start(&api, NODE)?;
    let snap = src.wait_for("bad", |s| service_names(s).contains(&"bad".to_string()))?;
    let node = NodeInfo {
        name: NODE.into(),
        ..Default::default()
    };
    let computed = model::compute(&snap.cluster, &node);
    let invalid: Vec<_> = computed
        .invalid
        .iter()
        .filter(|i| i.name == "bad")
        .cloned()
        .collect();
    ensure!(
        invalid.len() == 1,
        "the model reports the bad Service: {:?}",
        computed.invalid
    );

    let client = client(&src.rt, &api, Arc::new(kube_source::NoObserver))?;
    // Holds the posting task for the rest of the test.
    let mut tasks = tokio::task::JoinSet::new();
    let mut reporter = {
        let _guard = src.rt.enter();
        EventReporter::spawn(client, NODE.to_string(), &mut tasks)
    };
    // Every sync reports the same invalid object: one Event.
    for _ in 0..3 {
        reporter.report(&invalid, &snap);
    }
    api.wait_until("an event", WAIT, |a| !a.events().is_empty())?;
    let ev = api.events().remove(0);
    assert_eq!(ev["reason"], REASON);
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["metadata"]["namespace"], "default");
    assert_eq!(ev["involvedObject"]["kind"], "Service");
    assert_eq!(ev["involvedObject"]["name"], "bad");
    assert_eq!(ev["involvedObject"]["namespace"], "default");
    assert_eq!(
        ev["involvedObject"]["uid"],
        api.get(Kind::Service, "default", "bad").unwrap()["metadata"]["uid"]
    );
    assert!(
        ev["message"].as_str().unwrap().contains("10.96.0.300"),
        "{ev}"
    );
    assert_eq!(ev["count"], 1);

    // Fixed, then broken again: the same Event, counted twice.
    reporter.report(&[], &snap);
    reporter.report(&invalid, &snap);
    api.wait_until("the count to go up", WAIT, |a| {
        a.events().first().is_some_and(|e| e["count"] == 2)
    })?;
    assert_eq!(api.events().len(), 1);
    let posts = api.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 1, "one POST, then PATCHes");
    Ok(())
}

// ------------------------------------------------------------ ferry agent

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Status code, headers (lowercase names) and body of `GET path`.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, BTreeMap<String, String>, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((code, headers, body.to_string()))
}

/// The value of an unlabelled metric line `name value`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Everything an agent test holds; drops in reverse order of need.
struct AgentEnv {
    ferry: Option<Ferry>,
    api: ApiServer,
    bpffs: BpffsDir,
    cgroup: Cgroup,
    _servers: ServerSet,
    topo: Topology,
    healthz: SocketAddr,
    metrics: SocketAddr,
}

impl AgentEnv {
    /// `n` backends with servers on 8080, this process in a fresh cgroup,
    /// and the fixture holding node-1 (zone-a).
    fn new(n: usize) -> Result<AgentEnv> {
        let topo = Topology::new(n)?;
        let servers = topo.start_servers(8080)?;
        let mut cgroup = Cgroup::new()?;
        cgroup.enter_self()?;
        let bpffs = BpffsDir::new()?;
        let api = ApiServer::start()?;
        api.apply(
            Node::new(NODE)
                .zone("zone-a")
                .address("InternalIP", &NODE_V4.to_string())
                .to_value(),
        )?;
        Ok(AgentEnv {
            ferry: None,
            api,
            bpffs,
            cgroup,
            _servers: servers,
            topo,
            healthz: SocketAddr::from(([127, 0, 0, 1], free_port())),
            metrics: SocketAddr::from(([127, 0, 0, 1], free_port())),
        })
    }

    fn start(&mut self, sync_period: &str) -> Result<&mut Ferry> {
        self.start_with(sync_period, |o| o)
    }

    /// `start`, with the options changed by `adjust` (file limit,
    /// capabilities, flags).
    fn start_with(
        &mut self,
        sync_period: &str,
        adjust: impl FnOnce(FerryOptions) -> FerryOptions,
    ) -> Result<&mut Ferry> {
        let opts =
            FerryOptions::agent(self.api.kubeconfig(), self.cgroup.path(), self.bpffs.path())
                .node(NODE, [NODE_V4.into(), NODE_V6.into()])
                .host_netns(self.topo.node().path())
                .arg("--healthz-bind-address")
                .arg(&self.healthz.to_string())
                .arg("--metrics-bind-address")
                .arg(&self.metrics.to_string())
                .arg("--sync-period")
                .arg(sync_period);
        Ok(self.ferry.insert(Ferry::start(adjust(opts))?))
    }

    fn ferry(&mut self) -> &mut Ferry {
        self.ferry.as_mut().expect("started")
    }

    fn backend_ip(&self, name: &str) -> String {
        self.topo.backend(name).v4.to_string()
    }

    /// A slice of web with these backends (all on this node).
    fn web_slice(&self, backends: &[&str]) -> Value {
        let ips: Vec<String> = backends.iter().map(|b| self.backend_ip(b)).collect();
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        web_slice(&refs)
    }

    /// Waits until `ferry services` shows exactly these backends for web.
    fn wait_backends(&mut self, backends: &[&str]) -> Result<()> {
        let mut want: Vec<String> = backends
            .iter()
            .map(|b| format!("{}:8080", self.backend_ip(b)))
            .collect();
        want.sort();
        self.ferry()
            .wait_for(&format!("web's backends {want:?}"), |v| {
                v.as_array().into_iter().flatten().any(|fe| {
                    fe["frontend"] == "10.96.0.10:80/TCP" && {
                        let mut got: Vec<String> = fe["backends"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|b| b["address"].as_str().map(String::from))
                            .collect();
                        got.sort();
                        got == want
                    }
                })
            })?;
        Ok(())
    }

    fn request(&self) -> std::io::Result<Reply> {
        self.topo.node().run(|| tcp_request(fe()))
    }

    fn metrics_text(&self) -> Result<String> {
        let (code, _, body) = http_get(self.metrics, "/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(body)
    }

    fn status(&mut self) -> Result<Value> {
        let addr = self.metrics.to_string();
        let out = self
            .ferry()
            .cli(&["status", "--metrics-bind-address", &addr, "-o", "json"])?;
        ensure!(
            out.status.success(),
            "ferry status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Polls `ferry status -o json` until `pred` holds.
    fn wait_status(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = self.status();
            if let Ok(v) = &s
                && pred(v)
            {
                return Ok(v.clone());
            }
            if Instant::now() >= deadline {
                bail!("timed out waiting for status {what}; last: {s:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn fe() -> SocketAddr {
    "10.96.0.10:80".parse().expect("an address")
}

/// Lets `client` make `n` more successful requests (bounded).
fn run_for(client: &ContinuousClient, n: u64) {
    let before = client.stats().successes;
    assert!(
        client.wait_for_successes(before + n, WAIT),
        "the client stalled: {:?}",
        client.stats()
    );
}

#[test]
fn agent_serves_a_cluster_ip_from_the_api_server_without_failed_connects() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = AgentEnv::new(3)?;
    end_to_end_checks(&mut env, |o| o)
}

/// The checks of a whole agent: a ClusterIP served from the API server
/// through backend changes without failed connects, an invalid Service
/// reported by one Event, /healthz, /livez, /proxyMode, /metrics (counters
/// read from the maps), `ferry status`. `adjust` sets how the agent runs.
fn end_to_end_checks(
    env: &mut AgentEnv,
    adjust: impl FnOnce(FerryOptions) -> FerryOptions,
) -> Result<()> {
    env.api.apply(web("10.96.0.10"))?;
    env.api.apply(env.web_slice(&["b0"]))?;
    // An invalid Service must not hold the others back, and is reported.
    env.api.apply(
        Service::new("default", "bad")
            .cluster_ip("10.96.0.300")
            .port(ServicePort::tcp(80))
            .to_value(),
    )?;
    env.start_with("1h", adjust)?;
    env.wait_backends(&["b0"])?;
    assert_eq!(env.request()?.server, "b0");

    let client = ContinuousClient::start(env.topo.node(), fe(), ContinuousOptions::default())?;
    run_for(&client, 20);
    for backends in [
        &["b0", "b1"][..],
        &["b1", "b2"],
        &["b2"],
        &["b0", "b1", "b2"],
    ] {
        env.api.apply(env.web_slice(backends))?;
        env.wait_backends(backends)?;
        run_for(&client, 20);
    }
    let stats = client.stop();
    assert_eq!(
        stats.failures, 0,
        "failed connects: {:?}",
        stats.first_errors
    );
    assert_eq!(stats.per_server.len(), 3, "{stats:?}");

    // The invalid Service: one Event on it.
    env.api
        .wait_until("an event about default/bad", WAIT, |a| {
            a.events()
                .iter()
                .any(|e| e["involvedObject"]["name"] == "bad")
        })?;
    let events = env.api.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], REASON);
    assert_eq!(events[0]["involvedObject"]["kind"], "Service");

    // Health, liveness, mode, metrics, status.
    for path in ["/healthz", "/livez"] {
        let (code, headers, body) = http_get(env.healthz, path)?;
        assert_eq!(code, 200, "{path}: {body}");
        assert_eq!(headers["content-type"], "application/json");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let v: Value = serde_json::from_str(&body)?;
        assert_eq!(v["healthy"], true, "{body}");
        assert_eq!(v["nodeEligible"], true, "{body}");
        assert!(
            v["lastUpdated"].is_string() && v["currentTime"].is_string(),
            "{body}"
        );
    }
    let (code, _, mode) = http_get(env.metrics, "/proxyMode")?;
    assert_eq!((code, mode.as_str()), (200, "ebpf"));
    let text = env.metrics_text()?;
    assert_eq!(
        metric(&text, "ferry_services_programmed"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ferry_frontends_programmed"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "ferry_backends_programmed"),
        Some(3.0),
        "{text}"
    );
    assert!(
        metric(&text, "ferry_sync_duration_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        metric(&text, "ferry_network_programming_duration_seconds_count").is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(
        text.contains("ferry_invalid_objects{kind=\"Service\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("ferry_map_fill_ratio{map=\"FRONTENDS4\"}"),
        "{text}"
    );
    let translated = text
        .lines()
        .find(|l| {
            l.starts_with(
                "ferry_service_connections_translated_total{service=\"default/web:http/TCP\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert!(translated.is_some_and(|n| n >= 80.0), "{text}");
    let addr = env.metrics.to_string();
    let table = env
        .ferry()
        .cli(&["status", "--metrics-bind-address", &addr])?;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{table:?}");
    assert!(text.contains("API server:      connected"), "{text}");
    assert!(text.contains("1 services, 1 frontends"), "{text}");
    let nobody = format!("127.0.0.1:{}", free_port());
    let refused = env
        .ferry()
        .cli(&["status", "--metrics-bind-address", &nobody])?;
    assert!(
        !refused.status.success(),
        "status without an agent must fail"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cannot reach the agent"),
        "{refused:?}"
    );
    // `ferry explain` asks the agent for the model's decision (issue 15):
    // the invalid Service is reported, the three endpoints kept, and the
    // maps agree.
    let dir = env
        .ferry()
        .options()
        .bpffs_dir
        .to_string_lossy()
        .into_owned();
    let out = env.ferry().cli(&[
        "explain",
        "default/web:http",
        "--bpffs-dir",
        &dir,
        "-o",
        "json",
    ])?;
    assert!(out.status.success(), "{out:?}");
    let e: Value = serde_json::from_slice(&out.stdout)?;
    let f = &e["frontends"][0];
    assert_eq!(f["frontend"], "10.96.0.10:80/TCP", "{e:#}");
    assert_eq!(f["matches"], true, "{e:#}");
    let reasons: Vec<&Value> = f["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|ep| &ep["reason"])
        .collect();
    assert_eq!(reasons, [&json!("ready"); 3], "{e:#}");
    let out = env
        .ferry()
        .cli(&["explain", "default/bad", "--bpffs-dir", &dir])?;
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("10.96.0.300"),
        "the invalid Service's reason: {out:?}"
    );
    let status = env.status()?;
    assert_eq!(status["apiServer"]["connected"], true, "{status}");
    assert_eq!(status["synced"], true, "{status}");
    assert_eq!(status["counts"]["frontends"], 1, "{status}");
    assert_eq!(status["counts"]["invalidObjects"], 1, "{status}");
    Ok(())
}

#[test]
fn agent_rides_out_relists_and_outages_without_interrupting_traffic() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = AgentEnv::new(2)?;
    env.api.apply(web("10.96.0.10"))?;
    env.api.apply(env.web_slice(&["b0"]))?;
    env.start("1h")?;
    env.wait_backends(&["b0"])?;
    let client = ContinuousClient::start(env.topo.node(), fe(), ContinuousOptions::default())?;
    run_for(&client, 20);

    // 410 Gone: every watcher relists the unchanged objects.
    let lists_before = lists(&env.api, Kind::Service);
    env.api.expire();
    env.api.wait_until("a relist", WAIT, |a| {
        lists(a, Kind::Service) > lists_before && a.watches(Kind::Service) == 1
    })?;
    run_for(&client, 50);
    env.wait_backends(&["b0"])?;

    // Outage: the datapath stays; a change made meanwhile arrives after.
    env.api.set_reachable(false)?;
    env.wait_status("disconnected", |s| s["apiServer"]["connected"] == false)?;
    run_for(&client, 50);
    env.api.apply(env.web_slice(&["b1"]))?;
    run_for(&client, 50);
    env.wait_backends(&["b0"])?;
    let (code, _, body) = http_get(env.healthz, "/healthz")?;
    assert_eq!(code, 200, "an outage alone is not unhealthy: {body}");
    env.api.set_reachable(true)?;
    env.wait_backends(&["b1"])?;
    env.wait_status("connected again", |s| s["apiServer"]["connected"] == true)?;
    run_for(&client, 20);

    let stats = client.stop();
    assert_eq!(
        stats.failures, 0,
        "failed connects: {:?}",
        stats.first_errors
    );
    let text = env.metrics_text()?;
    assert!(
        !text.contains("ferry_watch_restarts_total{resource=\"services\"} 0"),
        "watch failures are counted: {text}"
    );
    Ok(())
}

/// The FRONTENDS4 key of 10.96.0.10:80/TCP as bpftool takes it: address
/// and port in network order, protocol, padding.
const WEB_KEY: [&str; 8] = ["0a", "60", "00", "0a", "00", "50", "06", "00"];

fn delete_web_frontend(env: &AgentEnv) -> Result<()> {
    let map = env.bpffs.path().join("maps").join("FRONTENDS4");
    let mut cmd = std::process::Command::new("bpftool");
    cmd.args(["map", "delete", "pinned"])
        .arg(&map)
        .args(["key", "hex"])
        .args(WEB_KEY);
    let out = command_output(&mut cmd, Duration::from_secs(10))?;
    ensure!(
        out.status.success(),
        "bpftool map delete failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn agent_repairs_a_map_entry_deleted_behind_its_back_on_sighup() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = AgentEnv::new(1)?;
    env.api.apply(web("10.96.0.10"))?;
    env.api.apply(env.web_slice(&["b0"]))?;
    env.start("1h")?;
    env.wait_backends(&["b0"])?;
    assert_eq!(env.request()?.server, "b0");
    assert_eq!(
        metric(&env.metrics_text()?, "ferry_repairs_total"),
        Some(0.0)
    );

    delete_web_frontend(&env)?;
    ensure!(
        env.request().is_err(),
        "the frontend still answers after its deletion"
    );
    let pid = env.ferry().pid().context("ferry runs")?;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGHUP);
    }
    env.wait_backends(&["b0"])?;
    assert_eq!(env.request()?.server, "b0");
    let repairs = metric(&env.metrics_text()?, "ferry_repairs_total").unwrap_or_default();
    assert!(repairs >= 1.0, "repairs counted: {repairs}");
    assert!(env.status()?["repairs"].as_u64().is_some_and(|n| n >= 1));
    ensure!(env.ferry().is_running(), "SIGHUP must not stop the agent");
    Ok(())
}

#[test]
fn agent_repairs_drift_every_sync_period() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = AgentEnv::new(1)?;
    env.api.apply(web("10.96.0.10"))?;
    env.api.apply(env.web_slice(&["b0"]))?;
    env.start("1s")?;
    env.wait_backends(&["b0"])?;
    delete_web_frontend(&env)?;
    // No signal: the periodic check finds and repairs it.
    env.wait_backends(&["b0"])?;
    assert_eq!(env.request()?.server, "b0");
    let repairs = metric(&env.metrics_text()?, "ferry_repairs_total").unwrap_or_default();
    assert!(repairs >= 1.0, "repairs counted: {repairs}");
    Ok(())
}

#[test]
fn agent_switches_topology_selection_when_the_node_changes_zone() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = AgentEnv::new(2)?;
    env.api.apply(web("10.96.0.10"))?;
    let slice = EndpointSlice::new("default", "web-1", "web", AddressType::IPv4)
        .port("http", 8080, "TCP")
        .endpoint(
            Endpoint::new(env.backend_ip("b0"))
                .node(NODE)
                .zone("zone-a")
                .hint_zones(&["zone-a"]),
        )
        .endpoint(
            Endpoint::new(env.backend_ip("b1"))
                .node("node-2")
                .zone("zone-b")
                .hint_zones(&["zone-b"]),
        );
    env.api.apply(slice.to_value())?;
    env.start("1h")?;
    env.wait_backends(&["b0"])?;
    assert_eq!(env.request()?.server, "b0");

    env.api.apply(
        Node::new(NODE)
            .zone("zone-b")
            .address("InternalIP", &NODE_V4.to_string())
            .to_value(),
    )?;
    env.wait_backends(&["b1"])?;
    assert_eq!(env.request()?.server, "b1");
    Ok(())
}

#[test]
fn agent_healthz_fails_while_the_node_is_marked_for_deletion() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = AgentEnv::new(1)?;
    env.api.apply(web("10.96.0.10"))?;
    env.api.apply(env.web_slice(&["b0"]))?;
    env.start("1h")?;
    env.wait_backends(&["b0"])?;
    let mut node = Node::new(NODE)
        .zone("zone-a")
        .address("InternalIP", &NODE_V4.to_string())
        .to_value();
    node["spec"] = serde_json::json!({"taints": [
        {"key": "ToBeDeletedByClusterAutoscaler", "value": "1700000000", "effect": "NoSchedule"}
    ]});
    env.api.apply(node)?;
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, _, body) = http_get(env.healthz, "/healthz")?;
        if code == 503 {
            let v: Value = serde_json::from_str(&body)?;
            assert_eq!(v["nodeEligible"], false, "{body}");
            break;
        }
        ensure!(Instant::now() < deadline, "/healthz stayed {code}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (code, _, body) = http_get(env.healthz, "/livez")?;
    assert_eq!(code, 200, "/livez ignores eligibility: {body}");
    Ok(())
}

/// The Datapath under test, stopped and cleaned up on drop (also on
/// failure): its lock released first, then `cleanup` of its pins and links.
struct DatapathGuard {
    dp: Option<lb_userspace::datapath::Datapath>,
    dir: lb_userspace::datapath::BpffsDir,
}

impl Drop for DatapathGuard {
    fn drop(&mut self) {
        drop(self.dp.take());
        if let Err(e) = lb_userspace::datapath::cleanup(&self.dir) {
            eprintln!("tests: cleaning up the datapath: {e}");
        }
    }
}

fn typed<T: k8s_openapi::serde::de::DeserializeOwned>(v: Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("a valid object"))
}

/// A slice as sources keep it.
fn typed_slice(v: Value) -> Arc<lb_userspace::model::EndpointSliceInfo> {
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice =
        serde_json::from_value(v).expect("a valid EndpointSlice");
    Arc::new(slice.into())
}

#[test]
fn agent_drift_check_sees_exactly_what_changed_behind_the_mirror() -> Result<()> {
    use lb_userspace::datapath::{Datapath, store::frontend4_key};
    use lb_userspace::model::Protocol;
    use lb_userspace::reconcile::{InvalidLog, NodeConfig, adopt_drift, reconcile_once};
    require_root();
    let _serial = serial();
    // Attached to a cgroup no process is in: nothing is translated.
    let cgroup = Cgroup::new()?;
    let bpffs = BpffsDir::new()?;
    let dir = lb_userspace::datapath::BpffsDir::new(bpffs.path());
    let cookie = lb_userspace::netutil::netns_cookie(None)?;
    let mut guard = DatapathGuard {
        dp: Some(Datapath::start(&dir, cgroup.path(), cookie, None)?),
        dir,
    };
    let dp = guard.dp.as_mut().expect("started");

    // Every kind of entry: ClusterIPs of both families, NodePorts, affinity.
    let mut snapshot = Snapshot::default();
    snapshot.cluster.services = vec![
        typed(
            Service::new("default", "web")
                .type_("NodePort")
                .cluster_ip("10.96.0.10")
                .port(
                    ServicePort::tcp(80)
                        .name("http")
                        .target(8080)
                        .node_port(30080),
                )
                .session_affinity_client_ip(60)
                .to_value(),
        ),
        typed(
            Service::new("default", "web6")
                .cluster_ip("fd00:96::10")
                .ip_families(&["IPv6"])
                .port(ServicePort::udp(53).name("dns").target(5353))
                .to_value(),
        ),
    ];
    snapshot.cluster.endpoint_slices = vec![
        typed_slice(web_slice(&["10.0.0.1", "10.0.0.2"])),
        typed_slice(
            EndpointSlice::new("default", "web6-1", "web6", AddressType::IPv6)
                .port("dns", 5353, "UDP")
                .endpoint(Endpoint::new("fd00::1").node(NODE))
                .to_value(),
        ),
    ];
    let node = NodeConfig {
        name: NODE.into(),
        ips: vec![NODE_V4.into(), NODE_V6.into()],
        host_ips: Vec::new(),
        external_ip_cidrs: Vec::new(),
    };
    let mut log = InvalidLog::default();
    let pass = reconcile_once(dp, &node, &snapshot, &mut log);
    ensure!(pass.report.errors.is_empty(), "{:?}", pass.report.errors);
    ensure!(
        pass.computed.invalid.is_empty(),
        "{:?}",
        pass.computed.invalid
    );
    ensure!(
        dp.installed.frontends.len() >= 4,
        "{:?}",
        dp.installed.frontends
    );
    assert!(
        !adopt_drift(dp),
        "the maps differ from the mirror right after a sync"
    );

    // Behind the agent's back: one frontend deleted, one added.
    let web = frontend4_key("10.96.0.10".parse()?, 80, Protocol::Tcp);
    let value = dp.maps.frontends4.get(&web, 0)?;
    dp.maps.frontends4.remove(&web)?;
    let bogus = frontend4_key("10.96.0.77".parse()?, 80, Protocol::Tcp);
    dp.maps.frontends4.insert(bogus, value, 0)?;

    assert!(adopt_drift(dp), "the drift went unnoticed");
    let repair = reconcile_once(dp, &node, &snapshot, &mut log);
    assert_eq!(repair.report.changes, 2, "one entry re-added, one removed");
    assert_eq!(dp.maps.frontends4.get(&web, 0)?, value);
    assert!(dp.maps.frontends4.get(&bogus, 0).is_err());
    assert!(!adopt_drift(dp), "still differing after the repair");
    Ok(())
}

// ------------------------------------------- hostile and restricted runs

/// deploy/daemonset.yaml's securityContext, proven: the agent runs with
/// exactly the capabilities its `add:` list names (every other set
/// emptied, no_new_privs as `allowPrivilegeEscalation: false` sets it)
/// and passes the whole set of agent checks.
#[test]
fn agent_passes_the_end_to_end_checks_with_exactly_the_daemonsets_capabilities() -> Result<()> {
    require_root();
    let _serial = serial();
    let daemonset = tests::ferry::workspace_root().join("deploy/daemonset.yaml");
    let names = caps::added_in(&daemonset)?;
    let numbers = names
        .iter()
        .map(|n| caps::number(n))
        .collect::<Result<Vec<_>>>()?;
    let mut env = AgentEnv::new(3)?;
    end_to_end_checks(&mut env, |o| o.capabilities(&numbers))?;
    let pid = env.ferry().pid().context("the agent runs")?;
    assert_eq!(
        caps::effective_of(pid)?,
        caps::mask(&numbers),
        "the agent's effective set is {names:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");
    assert!(env.ferry().is_running(), "{}", env.ferry().log_tail(30));
    Ok(())
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces.
    let rest = stat.rsplit_once(')').context("no comm")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // state is field 3 of stat(5): fields[0] here; utime 14, stime 15.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks as f64 / hz)
}

/// Opens `n` connections to `addr` and holds them without sending a byte.
fn hold_idle(addr: SocketAddr, n: usize) -> (Vec<TcpStream>, usize) {
    let mut held = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => held.push(s),
            Err(_) => failed += 1,
        }
    }
    (held, failed)
}

/// Status and time taken of a GET.
fn timed_get(addr: SocketAddr, path: &str) -> Result<(u16, Duration)> {
    let start = Instant::now();
    let (code, _, _) = http_get(addr, path)?;
    Ok((code, start.elapsed()))
}

/// Issue 13's hostile case: the agent's file limit at 1,024 and 2,000
/// idle connections held open against :10256 and against a health check
/// node port. New requests to each are still answered (within 1 s, the
/// issue's bound; the figures are printed), the agent does not spin (CPU
/// printed; asserted only against a generous bound), and a Service change
/// is still applied.
#[test]
fn agent_answers_health_checks_under_idle_connection_floods_with_1024_descriptors() -> Result<()> {
    require_root();
    let _serial = serial();
    const FLOOD: usize = 2000;
    let mut env = AgentEnv::new(2)?;
    env.api.apply(web("10.96.0.10"))?;
    env.api.apply(env.web_slice(&["b0"]))?;
    env.api.apply(
        Service::new("default", "lb")
            .type_("LoadBalancer")
            .cluster_ip("10.96.0.20")
            .port(
                ServicePort::tcp(80)
                    .name("http")
                    .target(8080)
                    .node_port(30080),
            )
            .external_traffic_policy("Local")
            .health_check_node_port(32100)
            .to_value(),
    )?;
    let b0 = env.backend_ip("b0");
    env.api.apply(
        EndpointSlice::new("default", "lb-1", "lb", AddressType::IPv4)
            .port("http", 8080, "TCP")
            .endpoint(Endpoint::new(&b0).node(NODE))
            .to_value(),
    )?;
    env.start_with("1h", |o| o.file_limit(1024))?;
    env.wait_backends(&["b0"])?;
    let hc = SocketAddr::new(NODE_V4.into(), 32100);
    let deadline = Instant::now() + WAIT;
    while !env
        .topo
        .node()
        .run(|| http_get(hc, "/"))
        .is_ok_and(|(code, _, _)| code == 200)
    {
        ensure!(
            Instant::now() < deadline,
            "the health check port never answered 200"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = env.ferry().pid().context("the agent runs")?;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    ensure!(
        limits
            .lines()
            .any(|l| l.starts_with("Max open files") && l.contains(" 1024 ")),
        "{limits}"
    );

    let (cpu0, t0) = (cpu_seconds(pid)?, Instant::now());
    let (held_healthz, failed_healthz) = hold_idle(env.healthz, FLOOD);
    let (held_hc, failed_hc) = env.topo.node().run(|| hold_idle(hc, FLOOD));
    let flood_time = t0.elapsed();
    let (cpu1, t1) = (cpu_seconds(pid)?, Instant::now());

    // Five rounds while every connection is still held (the agent closes
    // idle ones after 5 s; it sees them as evicted or timed out, the
    // clients keep their ends); a Service change in between.
    let mut worst = (Duration::ZERO, Duration::ZERO);
    for round in 0..5 {
        let (code, took) = timed_get(env.healthz, "/healthz")?;
        assert_eq!(code, 200, "round {round}: /healthz");
        worst.0 = worst.0.max(took);
        let (code, took) = env.topo.node().run(|| timed_get(hc, "/"))?;
        assert_eq!(code, 200, "round {round}: health check node port");
        worst.1 = worst.1.max(took);
        if round == 1 {
            env.api.apply(env.web_slice(&["b1"]))?;
            env.wait_backends(&["b1"])?;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu2 = cpu_seconds(pid)?;
    let window = t1.elapsed();
    let flood_cpu = (cpu1 - cpu0) / flood_time.as_secs_f64() * 100.0;
    let held_cpu = (cpu2 - cpu1) / window.as_secs_f64() * 100.0;
    let total_cpu = (cpu2 - cpu0) / (flood_time + window).as_secs_f64() * 100.0;
    eprintln!(
        "FIGURES flood: {} + {} idle connections held ({failed_healthz} + {failed_hc} failed to connect) in {:.2} s; \
         slowest new answer: /healthz {:.1} ms, health check port {:.1} ms; \
         agent CPU: {flood_cpu:.1}% while flooding, {held_cpu:.1}% over the {:.1} s held window, {total_cpu:.1}% overall",
        held_healthz.len(),
        held_hc.len(),
        flood_time.as_secs_f64(),
        worst.0.as_secs_f64() * 1e3,
        worst.1.as_secs_f64() * 1e3,
        window.as_secs_f64(),
    );
    assert!(
        held_healthz.len() + held_hc.len() >= FLOOD,
        "the flood did not get through: {} + {}",
        held_healthz.len(),
        held_hc.len()
    );
    assert!(
        worst.0 < Duration::from_secs(1) && worst.1 < Duration::from_secs(1),
        "answers took {worst:?}"
    );
    // Generous: a spinning accept loop burns a whole core.
    assert!(held_cpu < 50.0, "agent CPU {held_cpu:.1}%");
    assert_eq!(env.request()?.server, "b1", "the Service change applies");
    assert!(env.ferry().is_running(), "{}", env.ferry().log_tail(30));
    drop((held_healthz, held_hc));
    Ok(())
}

/// Issue 13's externalIP policy (CVE-2020-8554): with `--external-ip-cidr`,
/// a Service's externalIP inside the block is served and the one outside
/// it gets no frontend, for clients on the node and outside it; the
/// Service is named in a warning log line and in an `ExternalIPNotAllowed`
/// Event.
#[test]
fn agent_serves_only_external_ips_inside_the_allowed_cidrs() -> Result<()> {
    require_root();
    let _serial = serial();
    const INSIDE: &str = "10.97.0.30";
    const OUTSIDE: &str = "10.99.0.31";
    let mut env = AgentEnv::new(1)?;
    env.api.apply(web("10.96.0.10"))?;
    env.api.apply(env.web_slice(&["b0"]))?;
    env.api.apply(
        Service::new("default", "ext")
            .cluster_ip("10.96.0.30")
            .port(ServicePort::tcp(80).name("http").target(8080))
            .external_ips(&[INSIDE, OUTSIDE])
            .to_value(),
    )?;
    let b0 = env.backend_ip("b0");
    env.api.apply(
        EndpointSlice::new("default", "ext-1", "ext", AddressType::IPv4)
            .port("http", 8080, "TCP")
            .endpoint(Endpoint::new(&b0).node(NODE))
            .to_value(),
    )?;
    env.start_with("1h", |o| o.arg("--external-ip-cidr").arg("10.97.0.0/16"))?;
    let inside: SocketAddr = format!("{INSIDE}:80").parse()?;
    let outside: SocketAddr = format!("{OUTSIDE}:80").parse()?;
    let services = env.ferry().wait_for_frontend(inside)?;
    assert!(
        json_mentions_frontend(&services, "10.96.0.30:80".parse()?),
        "{services}"
    );
    assert!(!json_mentions_frontend(&services, outside), "{services}");
    let north_south = env.ferry().north_south_json()?;
    assert!(
        json_mentions_frontend(&north_south, inside),
        "{north_south}"
    );
    assert!(
        !json_mentions_frontend(&north_south, outside),
        "{north_south}"
    );

    assert_eq!(env.topo.node().run(|| tcp_request(inside))?.server, "b0");
    // Untranslated: the connect goes to the address itself, which nothing
    // in the test's namespaces routes.
    let untouched = env.topo.node().run(|| tcp_request(outside));
    assert!(untouched.is_err(), "{OUTSIDE} was answered: {untouched:?}");

    env.api
        .wait_until("an event about default/ext", WAIT, |a| {
            a.events()
                .iter()
                .any(|e| e["involvedObject"]["name"] == "ext")
        })?;
    let events = env.api.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["reason"], "ExternalIPNotAllowed");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(events[0]["involvedObject"]["kind"], "Service");
    let message = events[0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(OUTSIDE) && !message.contains(INSIDE),
        "{message}"
    );
    let log = env.ferry().log();
    let line = log
        .lines()
        .find(|l| l.contains("externalIP not allowed"))
        .with_context(|| format!("no warning in the log: {}", env.ferry().log_tail(30)))?;
    assert!(
        line.contains("WARN") && line.contains("default/ext") && line.contains(OUTSIDE),
        "{line}"
    );
    // The policy is not bad input: nothing counted as invalid.
    let text = env.metrics_text()?;
    assert!(
        text.lines()
            .filter(|l| l.starts_with("ferry_invalid_objects{"))
            .all(|l| l.ends_with(" 0")),
        "{text}"
    );
    Ok(())
}

/// Descriptors open in a process.
fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Issue 13's forced EMFILE: the running agent's soft file limit lowered
/// (prlimit) to a few descriptors above what it holds, far below its
/// connection cap, so that held connections exhaust its descriptors and
/// accept() fails with EMFILE while more wait in the backlog. While
/// exhausted its CPU time stays under 10% of wall time (a loop that
/// retries at once burns a core); once the clients close, /healthz
/// answers again.
#[test]
fn agent_backs_off_when_accept_fails_with_emfile_and_recovers() -> Result<()> {
    require_root();
    let _serial = serial();
    const HELD: usize = 1000;
    const HEADROOM: usize = 16;
    let mut env = AgentEnv::new(1)?;
    env.api.apply(web("10.96.0.10"))?;
    env.api.apply(env.web_slice(&["b0"]))?;
    env.start("1h")?;
    env.wait_backends(&["b0"])?;
    assert_eq!(http_get(env.healthz, "/healthz")?.0, 200);
    let pid = env.ferry().pid().context("the agent runs")?;
    let base = open_fds(pid)?;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit with no new limit only writes `lim`, which we own.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut lim,
        )
    };
    ensure!(rc == 0, "prlimit: {}", std::io::Error::last_os_error());
    // The cap the agent took from its file limit at start.
    let cap = lb_userspace::http::Limits::for_file_limit(lim.rlim_cur as usize).max_connections;
    let limit = (base + HEADROOM) as u64;
    ensure!(
        (HEADROOM as u64) < cap as u64 && limit < lim.rlim_cur,
        "the cap ({cap}) would be reached before the file limit ({limit})"
    );
    // Only the soft limit, lowered: no capability needed.
    lim.rlim_cur = limit;
    // SAFETY: prlimit reads `lim`, which we own.
    let rc = unsafe {
        libc::prlimit(
            pid as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &lim,
            std::ptr::null_mut(),
        )
    };
    ensure!(rc == 0, "prlimit: {}", std::io::Error::last_os_error());

    let (held, failed) = hold_idle(env.healthz, HELD);
    ensure!(
        held.len() > HEADROOM * 4,
        "only {} connections held ({failed} failed)",
        held.len()
    );
    let deadline = Instant::now() + WAIT;
    while !env.ferry().log().contains("Too many open files") {
        ensure!(
            Instant::now() < deadline,
            "accept never failed with EMFILE: {}",
            env.ferry().log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (cpu0, fds0, t0) = (cpu_seconds(pid)?, open_fds(pid)?, Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    let (cpu1, fds1, window) = (cpu_seconds(pid)?, open_fds(pid)?, t0.elapsed());
    let cpu = (cpu1 - cpu0) / window.as_secs_f64() * 100.0;
    eprintln!(
        "FIGURES forced EMFILE: limit {limit} (agent held {base} before, connection cap {cap}), \
         {} connections held ({failed} failed); descriptors open {fds0} → {fds1}; \
         agent CPU {cpu:.2}% over {:.1} s exhausted",
        held.len(),
        window.as_secs_f64()
    );
    // Exhausted through the whole window (one descriptor may be free for
    // the moment between an eviction and the next accept).
    assert!(
        fds0 + 2 >= limit as usize && fds1 + 2 >= limit as usize,
        "not exhausted: {fds0}, {fds1} of {limit}"
    );
    assert!(cpu < 10.0, "agent CPU {cpu:.1}% while out of descriptors");

    drop(held);
    let deadline = Instant::now() + WAIT;
    loop {
        if http_get(env.healthz, "/healthz").is_ok_and(|(code, _, _)| code == 200) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "/healthz never answered again: {}",
            env.ferry().log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        env.ferry().log().contains("accepting connections again"),
        "{}",
        env.ferry().log_tail(20)
    );
    assert!(env.ferry().is_running(), "{}", env.ferry().log_tail(30));
    Ok(())
}

/// Waits until the agent's last pass is newer than `after` (the
/// `ferry_last_sync_timestamp_seconds` gauge); returns it.
fn wait_pass_after(env: &AgentEnv, after: f64, what: &str) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let last = env
            .metrics_text()
            .ok()
            .and_then(|t| metric(&t, "ferry_last_sync_timestamp_seconds"));
        if let Some(t) = last.filter(|t| *t > after) {
            return Ok(t);
        }
        ensure!(Instant::now() < deadline, "no pass after {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Issue 13's figure: /healthz p99 latency under 50 ms during full syncs
/// of 10,000 Services (one endpoint each), polled from a thread every
/// 2 ms through the initial list and sync, then three rounds of a drift
/// check of every map with its repair pass (SIGHUP, one frontend deleted
/// behind the agent's back) and a relist after 410 Gone. Every poll must
/// be answered.
#[test]
fn agent_healthz_p99_stays_under_50ms_during_full_syncs_of_10000_services() -> Result<()> {
    require_root();
    let _serial = serial();
    const SERVICES: usize = 10_000;
    let mut env = AgentEnv::new(1)?;
    env.api.apply(web("10.96.0.10"))?;
    env.api.apply(env.web_slice(&["b0"]))?;
    let b0 = env.backend_ip("b0");
    for i in 1..SERVICES {
        let name = format!("s-{i}");
        let cluster_ip = format!("10.100.{}.{}", i / 250, i % 250 + 1);
        env.api.apply(
            Service::new("default", &name)
                .cluster_ip(&cluster_ip)
                .port(ServicePort::tcp(80).name("http").target(8080))
                .to_value(),
        )?;
        env.api.apply(
            EndpointSlice::new("default", &format!("{name}-1"), &name, AddressType::IPv4)
                .port("http", 8080, "TCP")
                .endpoint(Endpoint::new(&b0).node(NODE))
                .to_value(),
        )?;
    }

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let healthz = env.healthz;
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Latencies from the first answer on, and failures after it.
            let (mut took, mut failures) = (Vec::new(), Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let start = Instant::now();
                match http_get(healthz, "/healthz") {
                    Ok(_) => took.push(start.elapsed()),
                    Err(e) if !took.is_empty() => failures.push(e.to_string()),
                    Err(_) => {}
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (took, failures)
        })
    };
    let started = Instant::now();
    env.start("1h")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let programmed = env
            .metrics_text()
            .ok()
            .and_then(|t| metric(&t, "ferry_services_programmed"));
        if programmed == Some(SERVICES as f64) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{SERVICES} Services never programmed (last {programmed:?}): {}",
            env.ferry().log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let initial = started.elapsed();
    let last = wait_pass_after(&env, 0.0, "the initial sync")?;

    // Three rounds of both full passes, so that the polls during passes
    // weigh in the percentiles.
    let (mut drift_check, mut relist) = (Duration::ZERO, Duration::ZERO);
    let mut last = last;
    for _ in 0..3 {
        // The drift check reads every map back; a pass follows only when
        // it finds drift, so make some.
        delete_web_frontend(&env)?;
        let t = Instant::now();
        let pid = env.ferry().pid().context("the agent runs")?;
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGHUP);
        }
        last = wait_pass_after(&env, last, "SIGHUP")?;
        drift_check = drift_check.max(t.elapsed());

        let t = Instant::now();
        env.api.expire();
        env.api.drop_connections();
        last = wait_pass_after(&env, last, "the relist")?;
        relist = relist.max(t.elapsed());
    }

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut took, failures) = poller.join().expect("the poller");
    took.sort();
    let pct = |p: f64| took[((took.len() as f64 * p).ceil() as usize).clamp(1, took.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p50, p99, max) = (pct(0.50), pct(0.99), took[took.len() - 1]);
    eprintln!(
        "FIGURES /healthz during full syncs of {SERVICES} Services: {} polls, p50 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms, {} failed; initial list + sync {:.1} s (from start), slowest drift check + repair {:.1} s, \
         slowest relist {:.1} s (each until the pass's timestamp was seen, 0.5 s polling)",
        took.len(),
        ms(p50),
        ms(p99),
        ms(max),
        failures.len(),
        initial.as_secs_f64(),
        drift_check.as_secs_f64(),
        relist.as_secs_f64(),
    );
    assert!(took.len() >= 100, "only {} polls answered", took.len());
    assert!(failures.is_empty(), "{failures:?}");
    assert!(p99 < Duration::from_millis(50), "p99 {:.1} ms", ms(p99));
    assert!(env.ferry().is_running(), "{}", env.ferry().log_tail(30));
    Ok(())
}
