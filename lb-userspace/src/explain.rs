//! `ferry explain`: the running Ferry's decision for a frontend, next to
//! what the maps hold for it.
//!
//! The running Ferry (standalone or agent) answers on a unix socket,
//! `/run/ferry/explain/<bpffs dir name>-<hash of its path>.sock`, found from
//! `--bpffs-dir` as `ferry services` finds the maps. A unix socket rather
//! than the agent's metrics port: standalone mode has no metrics port, the
//! socket is reachable only by root on the node (0600; an explanation lists
//! every endpoint), and it needs no address of its own. It speaks the
//! agent's tiny HTTP (`http::serve`, with its connection cap and
//! deadlines): `GET /explain/<query>` answers the model's
//! [`Explanation`] as JSON, computed on demand from the objects and node of
//! the last pass.
//!
//! The command then reads the maps through `datapath::inspect` and
//! `datapath::external` (the readers `ferry services` uses) and compares.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use serde::Serialize;
use thiserror::Error;

use crate::{
    datapath::{
        BpffsDir,
        external::{self, ClientView, ExternalMaps, ExternalView},
        inspect::{self, AffinityView, FrontendView},
        maps::Maps,
    },
    http::{self, Connections, Handler, Request, Response},
    model::{self, ExplainQuery, Explanation, FrontendAddr, FrontendExplanation, NodeInfo},
    source::Snapshot,
};

/// Where the running Ferry's explain sockets live.
pub const RUN_DIR: &str = "/run/ferry/explain";
const PREFIX: &str = "/explain/";

/// The explain socket of the Ferry that owns `bpffs` (one per bpffs dir:
/// the bpffs lock allows one Ferry per dir).
pub fn socket_path(bpffs: &BpffsDir) -> PathBuf {
    let dir = std::path::absolute(&bpffs.root).unwrap_or_else(|_| bpffs.root.clone());
    // FNV-1a: stable across builds and processes, short enough for
    // sun_path whatever the dir's length.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // The dir's own name first, for people and for sweeping a dead run's
    // socket by name; bounded so that sun_path (108 bytes) always holds it.
    let name: String = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(48)
        .collect();
    Path::new(RUN_DIR).join(format!("{name}-{h:016x}.sock"))
}

/// The objects and node of the last pass, which explanations are computed
/// from.
#[derive(Default)]
pub struct ExplainSource {
    last: Mutex<Option<(Arc<Snapshot>, NodeInfo)>>,
}

impl ExplainSource {
    /// Called after each pass: two pointer copies and the node's few
    /// fields, nothing computed.
    pub fn record(&self, snapshot: &Arc<Snapshot>, node: &NodeInfo) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((snapshot.clone(), node.clone()));
    }

    pub fn respond(&self, req: &Request) -> Response {
        let Some(query) = req.path.strip_prefix(PREFIX) else {
            return Response::new(404, "text/plain", "not found\n");
        };
        let query = match ExplainQuery::parse(query) {
            Ok(q) => q,
            Err(e) => return Response::new(400, "text/plain", format!("{e}\n")),
        };
        let last = self
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some((snapshot, node)) = last else {
            return Response::new(
                503,
                "text/plain",
                "no pass yet: the source has not delivered its first complete snapshot\n",
            );
        };
        match model::explain(&snapshot.cluster, &node, &query) {
            Ok(e) => Response::new(
                200,
                "application/json",
                serde_json::to_vec(&e).unwrap_or_default(),
            ),
            Err(e) => Response::new(404, "text/plain", format!("{e}\n")),
        }
    }
}

/// The explain socket, served until dropped (then removed).
pub struct ExplainServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ExplainServer {
    /// Binds the socket of `bpffs` (replacing one a dead Ferry left: the
    /// caller holds the bpffs lock, so no live one owns it) and serves it
    /// on the current runtime.
    pub fn start(
        bpffs: &BpffsDir,
        source: Arc<ExplainSource>,
        connections: Arc<Connections>,
    ) -> io::Result<Self> {
        use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
        let path = socket_path(bpffs);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(RUN_DIR)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        // Computing an explanation runs the model: off the async workers.
        let handler = Handler::blocking(move |req| source.respond(req));
        let task = tokio::spawn(http::serve(listener, handler, connections));
        Ok(ExplainServer { path, task })
    }

    /// [`ExplainServer::start`], logged; a failure (no writable
    /// /run/ferry/explain) is a warning: explanations are for people, and
    /// never worth not serving Services.
    pub fn start_or_warn(
        bpffs: &BpffsDir,
        source: Arc<ExplainSource>,
        connections: Arc<Connections>,
    ) -> Option<Self> {
        match Self::start(bpffs, source, connections) {
            Ok(server) => {
                tracing::info!(socket = %server.path.display(), "ferry explain answers here");
                Some(server)
            }
            Err(e) => {
                tracing::warn!(
                    socket = %socket_path(bpffs).display(),
                    error = %e,
                    "cannot serve the explain socket; ferry explain will not answer"
                );
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ExplainServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[derive(Debug, Error)]
pub enum ExplainError {
    #[error("{0}")]
    Query(String),
    #[error(
        "no running ferry answers on {path} (is ferry standalone or agent running with --bpffs-dir {bpffs}?): {source}"
    )]
    Connect {
        path: String,
        bpffs: String,
        source: io::Error,
    },
    #[error("talking to the running ferry on {path}: {source}")]
    Io { path: String, source: io::Error },
    #[error("the running ferry answered: {0}")]
    Answer(String),
    #[error("reading the maps: {0}")]
    Maps(String),
    #[error("--client {0}: {1}")]
    Client(String, String),
}

/// Asks the running Ferry of `bpffs` for the model's explanation.
pub fn fetch(bpffs: &BpffsDir, query: &ExplainQuery) -> Result<Explanation, ExplainError> {
    let path = socket_path(bpffs);
    let shown = path.display().to_string();
    let mut stream =
        std::os::unix::net::UnixStream::connect(&path).map_err(|source| ExplainError::Connect {
            path: shown.clone(),
            bpffs: bpffs.root.display().to_string(),
            source,
        })?;
    let io_err = |source| ExplainError::Io {
        path: shown.clone(),
        source,
    };
    // A whole compute on a large cluster takes well under this.
    let timeout = Some(Duration::from_secs(30));
    stream.set_read_timeout(timeout).map_err(io_err)?;
    stream.set_write_timeout(timeout).map_err(io_err)?;
    let text = match query {
        ExplainQuery::Frontend(f) => f.to_string(),
        ExplainQuery::Service { service, port } => match port {
            Some(p) => format!("{service}:{p}"),
            None => service.to_string(),
        },
    };
    write!(stream, "GET {PREFIX}{text} HTTP/1.1\r\nHost: ferry\r\n\r\n").map_err(io_err)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).map_err(io_err)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| ExplainError::Answer("a malformed response".into()))?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(ExplainError::Answer(body.trim().to_string()));
    }
    serde_json::from_str(body).map_err(|e| ExplainError::Answer(format!("unreadable JSON: {e}")))
}

/// Who `--client` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Client {
    /// A client on the node: its network namespace (a pod, or the node).
    Netns(PathBuf),
    /// A client outside the node, by source address (and port: `--flow`).
    Address(IpAddr, Option<u16>),
}

impl Client {
    /// `--client` (a netns path or an address) and `--flow SRC:PORT`.
    pub fn from_args(
        client: Option<&str>,
        flow: Option<SocketAddr>,
    ) -> Result<Option<Self>, String> {
        match (client, flow) {
            (None, None) => Ok(None),
            (Some(c), None) => Ok(Some(match c.parse::<IpAddr>() {
                Ok(ip) => Client::Address(ip, None),
                Err(_) => Client::Netns(PathBuf::from(c)),
            })),
            (None, Some(f)) => Ok(Some(Client::Address(f.ip(), Some(f.port())))),
            (Some(c), Some(f)) if c.parse::<IpAddr>() == Ok(f.ip()) => {
                Ok(Some(Client::Address(f.ip(), Some(f.port()))))
            }
            (Some(c), Some(f)) => Err(format!(
                "--client {c} and --flow {f} name different clients (--flow alone is enough)"
            )),
        }
    }
}

/// `ferry explain`'s report: the model's explanation, per frontend with
/// what the maps hold and whether they agree.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub frontends: Vec<FrontendReport>,
    pub invalid: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FrontendReport {
    #[serde(flatten)]
    pub model: FrontendExplanation,
    /// The socket maps' entry (`ferry services`' view): backends in slot
    /// order, counters. None: not in the maps.
    pub maps: Option<FrontendView>,
    /// The north-south maps' entry, for external frontends.
    pub external_maps: Option<ExternalView>,
    /// The maps hold what the model desires for this frontend.
    pub matches: bool,
    pub differences: Vec<String>,
    pub client: Option<ClientReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientReport {
    pub client: String,
    /// A client on the node: its network namespace cookie.
    pub netns_cookie: Option<u64>,
    /// Its `AFFINITY` entry for this frontend's backend set.
    pub affinity: Option<AffinityView>,
    /// A client outside the node: what the north-south maps decide.
    pub north_south: Option<ClientView>,
    /// What the client's next connect (or packet) gets.
    pub outcome: String,
}

/// Combines the model's explanation with the maps of `bpffs`.
pub fn report(
    bpffs: &BpffsDir,
    explanation: Explanation,
    client: Option<&Client>,
) -> Result<Report, ExplainError> {
    let maps = Maps::open(bpffs).map_err(|e| ExplainError::Maps(e.to_string()))?;
    let installed = crate::datapath::adopt::read_installed(&maps)
        .map_err(|e| ExplainError::Maps(e.to_string()))?;
    let views = inspect::frontends_of(&maps, &installed);
    // Pins of a Ferry without north-south lack these maps.
    let external_maps = ExternalMaps::open(bpffs).ok();
    let external_views = external_maps
        .as_ref()
        .map(external::views)
        .unwrap_or_default();
    let cookie = match client {
        Some(Client::Netns(path)) => Some(
            crate::netutil::netns_cookie(Some(path))
                .map_err(|e| ExplainError::Client(path.display().to_string(), e.to_string()))?,
        ),
        _ => None,
    };
    let now = inspect::monotonic_ns();
    let mut frontends = Vec::new();
    for model in explanation.frontends {
        let view = views.iter().find(|v| v.frontend == model.frontend).cloned();
        let external_view = external_views
            .iter()
            .find(|v| v.frontend == model.frontend)
            .cloned();
        let differences = compare(&model, view.as_ref(), external_view.as_ref());
        let client = client.map(|c| {
            let addr = FrontendAddr {
                ip: model.address,
                port: model.port,
                protocol: if model.protocol == "UDP" {
                    model::Protocol::Udp
                } else {
                    model::Protocol::Tcp
                },
            };
            match c {
                Client::Netns(path) => {
                    let affinity = view.as_ref().and_then(|v| {
                        inspect::affinity_of(&maps, &installed, cookie.unwrap_or(0), v.service_id)
                    });
                    ClientReport {
                        client: path.display().to_string(),
                        netns_cookie: cookie,
                        outcome: node_client_outcome(view.as_ref(), affinity.as_ref()),
                        affinity,
                        north_south: None,
                    }
                }
                Client::Address(ip, port) => {
                    let ns = external_maps
                        .as_ref()
                        .map(|m| external::client_view(m, &addr, *ip, *port, now));
                    ClientReport {
                        client: match port {
                            Some(p) => SocketAddr::new(*ip, *p).to_string(),
                            None => ip.to_string(),
                        },
                        netns_cookie: None,
                        affinity: None,
                        outcome: external_client_outcome(&model, ns.as_ref(), *ip),
                        north_south: ns,
                    }
                }
            }
        });
        frontends.push(FrontendReport {
            matches: differences.is_empty(),
            differences,
            model,
            maps: view,
            external_maps: external_view,
            client,
        });
    }
    Ok(Report {
        frontends,
        invalid: explanation.invalid,
    })
}

/// Where the maps differ from the model's desired state for one frontend.
fn compare(
    model: &FrontendExplanation,
    maps: Option<&FrontendView>,
    external: Option<&ExternalView>,
) -> Vec<String> {
    let mut out = Vec::new();
    let want = &model.node_clients;
    match maps {
        None => out.push("the frontend is not in the maps".into()),
        Some(v) => {
            if v.service != want.backend_set {
                out.push(format!(
                    "served from set {} instead of {}",
                    v.service, want.backend_set
                ));
            }
            let mut have: Vec<(String, bool, bool)> = v
                .backends
                .iter()
                .map(|b| (b.address.clone(), b.state == "terminating", b.local))
                .collect();
            have.sort();
            let mut desired: Vec<(String, bool, bool)> = want
                .backends
                .iter()
                .map(|b| (b.address.clone(), b.terminating, b.local))
                .collect();
            desired.sort();
            for b in desired.iter().filter(|b| !have.contains(b)) {
                out.push(format!("backend {} is missing from the slots", b.0));
            }
            for b in have.iter().filter(|b| !desired.contains(b)) {
                out.push(format!("backend {} is in the slots but not desired", b.0));
            }
            if desired.is_empty() && v.when_empty != want.when_empty {
                out.push(format!(
                    "with no backend the maps {} instead of {}",
                    v.when_empty, want.when_empty
                ));
            }
            if v.affinity_timeout_secs != want.affinity_timeout_secs {
                out.push(format!(
                    "session affinity {:?} in the maps, {:?} desired",
                    v.affinity_timeout_secs, want.affinity_timeout_secs
                ));
            }
        }
    }
    match (&model.external_clients, external) {
        (Some(_), None) => out.push("the external frontend is not in the north-south maps".into()),
        (None, Some(_)) => {
            out.push("the north-south maps hold an external frontend not desired".into());
        }
        (Some(want), Some(have)) => {
            if usize::from(have.backends) != want.selection.backends.len() {
                out.push(format!(
                    "north-south: {} backends in the Maglev table, {} desired",
                    have.backends,
                    want.selection.backends.len()
                ));
            }
            if have.masquerade != want.masquerade {
                out.push("north-south: masquerade differs".into());
            }
            let restricted = !want.source_ranges.is_empty();
            if have.source_ranges != restricted {
                out.push("north-south: source ranges differ".into());
            }
        }
        (None, None) => {}
    }
    out
}

const ECONNREFUSED: i32 = 111;
const EHOSTUNREACH: i32 = 113;

fn node_client_outcome(view: Option<&FrontendView>, affinity: Option<&AffinityView>) -> String {
    let Some(v) = view else {
        return "not translated: the frontend is not in the maps".into();
    };
    if v.backends.is_empty() {
        return if v.when_empty == "drop" {
            format!(
                "connect fails with EHOSTUNREACH ({EHOSTUNREACH}): endpoints exist but none is usable from this node (kube-proxy DROPs)"
            )
        } else {
            format!(
                "connect fails with ECONNREFUSED ({ECONNREFUSED}): no usable endpoint (kube-proxy REJECTs)"
            )
        };
    }
    match affinity {
        Some(a) if a.in_force => format!(
            "connects go to {} (session affinity, slot {}, last used {:.0}s ago)",
            a.backend.as_deref().unwrap_or("?"),
            a.slot,
            a.last_used_secs_ago
        ),
        Some(_) => format!(
            "its affinity entry has lapsed: the next connect picks one of {} backends at random, and is remembered",
            v.backends.len()
        ),
        None => format!(
            "the next connect picks one of {} backends at random{}",
            v.backends.len(),
            if v.affinity_timeout_secs.is_some() {
                " (and is remembered: session affinity)"
            } else {
                ""
            }
        ),
    }
}

fn external_client_outcome(
    model: &FrontendExplanation,
    view: Option<&ClientView>,
    client: IpAddr,
) -> String {
    if model.address.is_ipv4() != client.is_ipv4() {
        return "another address family than the frontend".into();
    }
    let Some(view) = view.filter(|v| v.frontend.is_some()) else {
        return format!(
            "not translated for clients outside the node: {} frontends serve clients on the node only, or north-south is off",
            model.kind
        );
    };
    let fe = view.frontend.as_ref().map_or(0, |f| f.backends);
    if fe == 0 {
        return "dropped: no endpoint serves clients outside the node here (externalTrafficPolicy Local without a local endpoint, or none at all)".into();
    }
    if view.source_allowed == Some(false) {
        return "dropped: the source is not in loadBalancerSourceRanges".into();
    }
    let admitted = if view.source_allowed == Some(true) {
        "admitted by loadBalancerSourceRanges; "
    } else {
        ""
    };
    match (&view.flow, &view.maglev_backend) {
        (Some(f), _) => format!("{admitted}an established flow: {}", f.becomes),
        (None, Some(b)) => format!("{admitted}a new flow goes to {b} (Maglev)"),
        (None, None) => {
            format!("{admitted}translated to a backend by Maglev (give --flow SRC:PORT for which)")
        }
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The report for people.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (i, f) in report.frontends.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let m = &f.model;
        let port = if m.port_name.is_empty() {
            String::new()
        } else {
            format!(" port {}", m.port_name)
        };
        let _ = writeln!(
            out,
            "Service {}{port}: {} frontend {}",
            m.service, m.kind, m.frontend
        );
        let sel = &m.node_clients;
        let _ = writeln!(
            out,
            "Clients on this node: {} selection (set {}): {} backend(s){}",
            sel.selection,
            sel.backend_set,
            sel.backends.len(),
            affinity_note(sel.affinity_timeout_secs)
        );
        if let Some(ext) = &m.external_clients {
            let ranges = if ext.source_ranges.is_empty() {
                "any source".to_string()
            } else {
                format!("loadBalancerSourceRanges {}", ext.source_ranges.join(", "))
            };
            let _ = writeln!(
                out,
                "Clients outside the node: {} selection (set {}): {} backend(s), {}, {}",
                ext.selection.selection,
                ext.selection.backend_set,
                ext.selection.backends.len(),
                if ext.masquerade {
                    "masqueraded"
                } else {
                    "client address kept"
                },
                ranges
            );
        }
        let mut rows = vec![
            [
                "ENDPOINT",
                "SLICE",
                "READY",
                "SERVING",
                "TERMINATING",
                "NODE",
                "CLIENTS ON THIS NODE",
                "CLIENTS OUTSIDE",
            ]
            .map(String::from),
        ];
        for e in &m.endpoints {
            rows.push([
                match e.port {
                    Some(p) => SocketAddr::new(e.address, p).to_string(),
                    None => e.address.to_string(),
                },
                e.slice.clone(),
                yes(e.ready).into(),
                yes(e.serving).into(),
                yes(e.terminating).into(),
                if e.local { "this" } else { "other" }.into(),
                e.reason.describe().into(),
                e.external_reason.map_or("-", |r| r.describe()).into(),
            ]);
        }
        if m.endpoints.is_empty() {
            out.push_str("No endpoints in any EndpointSlice of the Service.\n");
        } else {
            out.push_str(&inspect::render_rows(&rows));
        }
        match &f.maps {
            Some(v) => {
                let backends = if v.backends.is_empty() {
                    format!("none ({})", v.when_empty)
                } else {
                    v.backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| format!("{}:{}", i + 1, b.address))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let _ = writeln!(
                    out,
                    "Maps: service id {}, slots {backends}; translated {}, refused {}",
                    v.service_id, v.translated, v.refused
                );
            }
            None => out.push_str("Maps: no entry for this frontend\n"),
        }
        if let Some(x) = &f.external_maps {
            let _ = writeln!(
                out,
                "North-south maps: Maglev table {}, {} backend(s), masquerade {}, source ranges {}",
                x.table,
                x.backends,
                yes(x.masquerade),
                if x.source_ranges { "restricted" } else { "any" }
            );
        }
        if f.matches {
            out.push_str("The maps match the desired state.\n");
        } else {
            let _ = writeln!(
                out,
                "The maps differ from the desired state: {}",
                f.differences.join("; ")
            );
        }
        if let Some(c) = &f.client {
            let who = match c.netns_cookie {
                Some(cookie) => format!("{} (netns cookie {cookie})", c.client),
                None => c.client.clone(),
            };
            let _ = writeln!(out, "Client {who}: {}", c.outcome);
            if let Some(flow) = c.north_south.as_ref().and_then(|n| n.flow.as_ref()) {
                let _ = writeln!(
                    out,
                    "  flow table: becomes {}, masqueraded {}, closing {}, last seen {:.0}s ago",
                    flow.becomes,
                    yes(flow.masqueraded),
                    yes(flow.closing),
                    flow.last_seen_secs_ago
                );
            }
            if let Some(b) = c
                .north_south
                .as_ref()
                .and_then(|n| n.maglev_backend.as_ref())
            {
                let _ = writeln!(out, "  Maglev picks {b} for a new flow");
            }
        }
    }
    if !report.invalid.is_empty() {
        out.push_str("\nReported as invalid (skipped):\n");
        for i in &report.invalid {
            let _ = writeln!(out, "  {i}");
        }
    }
    out
}

fn affinity_note(timeout: Option<u32>) -> String {
    timeout.map_or(String::new(), |t| {
        format!(", sessionAffinity ClientIP {t}s")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_follow_the_bpffs_dir() {
        let a = socket_path(&BpffsDir::new("/sys/fs/bpf/ferry"));
        let b = socket_path(&BpffsDir::new("/sys/fs/bpf/ferry-test-1"));
        assert_ne!(a, b);
        assert_eq!(a, socket_path(&BpffsDir::new("/sys/fs/bpf/ferry")));
        assert!(a.starts_with(RUN_DIR));
        assert!(
            b.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ferry-test-1-"),
            "{b:?}"
        );
        // sun_path holds 108 bytes, whatever the dir's name.
        let long = socket_path(&BpffsDir::new(format!("/sys/fs/bpf/{}", "x".repeat(300))));
        assert!(long.as_os_str().len() < 108, "{long:?}");
    }

    #[test]
    fn clients_from_arguments() {
        let flow: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        assert_eq!(
            Client::from_args(Some("/run/netns/pod"), None),
            Ok(Some(Client::Netns("/run/netns/pod".into())))
        );
        assert_eq!(
            Client::from_args(Some("203.0.113.7"), None),
            Ok(Some(Client::Address(flow.ip(), None)))
        );
        assert_eq!(
            Client::from_args(None, Some(flow)),
            Ok(Some(Client::Address(flow.ip(), Some(40000))))
        );
        assert!(Client::from_args(Some("203.0.113.8"), Some(flow)).is_err());
        assert_eq!(Client::from_args(None, None), Ok(None));
    }

    #[test]
    fn the_explain_endpoint_answers_the_model_and_reports_bad_queries() {
        use crate::model::testutil::*;
        let source = ExplainSource::default();
        let get = |path: &str| Request {
            method: "GET".into(),
            path: path.into(),
        };
        assert_eq!(
            source.respond(&get("/explain/10.96.0.10:80/TCP")).status,
            503
        );
        let snapshot = Arc::new(Snapshot {
            cluster: model::ClusterState {
                services: vec![
                    service("ns", "web", "10.96.0.10")
                        .port("http", "TCP", 80)
                        .build(),
                ],
                endpoint_slices: vec![
                    slice("ns", "web-a", "web", "IPv4")
                        .port("http", "TCP", 8080)
                        .endpoint(ep("10.0.0.1"))
                        .build(),
                ],
            },
            ..Default::default()
        });
        source.record(&snapshot, &node());
        let r = source.respond(&get("/explain/10.96.0.10:80/TCP"));
        assert_eq!(r.status, 200);
        let e: Explanation = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(
            e.frontends[0].node_clients.backends[0].address,
            "10.0.0.1:8080"
        );
        assert_eq!(
            source.respond(&get("/explain/10.96.0.11:80/TCP")).status,
            404
        );
        assert_eq!(source.respond(&get("/explain/nonsense")).status, 400);
        assert_eq!(source.respond(&get("/other")).status, 404);
    }

    /// A ClusterIP's explanation with these desired backends, and a maps
    /// view with those.
    fn pair(desired: &[&str], in_maps: &[&str]) -> (FrontendExplanation, FrontendView) {
        let model = FrontendExplanation {
            frontend: "10.96.0.10:80/TCP".into(),
            address: "10.96.0.10".parse().unwrap(),
            port: 80,
            protocol: "TCP".into(),
            kind: "ClusterIP".into(),
            service: "ns/web".into(),
            port_name: "".into(),
            node_clients: model::SelectionExplanation {
                backend_set: "ns/web/TCP".into(),
                selection: "Cluster".into(),
                backends: desired
                    .iter()
                    .map(|a| model::DesiredBackend {
                        address: a.to_string(),
                        terminating: false,
                        local: false,
                    })
                    .collect(),
                when_empty: "drop".into(),
                affinity_timeout_secs: None,
            },
            external_clients: None,
            endpoints: Vec::new(),
        };
        let view = FrontendView {
            frontend: "10.96.0.10:80/TCP".into(),
            kind: "ClusterIP",
            service: "ns/web/TCP".into(),
            service_id: 1,
            backends: in_maps
                .iter()
                .map(|a| inspect::BackendView {
                    address: a.to_string(),
                    state: "active",
                    local: false,
                })
                .collect(),
            when_empty: "drop",
            affinity_timeout_secs: None,
            translated: 0,
            refused: 0,
        };
        (model, view)
    }

    #[test]
    fn maps_are_compared_with_the_desired_state() {
        let (m, v) = pair(
            &["10.0.0.1:80", "10.0.0.2:80"],
            &["10.0.0.2:80", "10.0.0.1:80"],
        );
        assert_eq!(compare(&m, Some(&v), None), Vec::<String>::new());
        let (m, v) = pair(
            &["10.0.0.1:80", "10.0.0.2:80"],
            &["10.0.0.1:80", "10.0.0.3:80"],
        );
        assert_eq!(
            compare(&m, Some(&v), None),
            [
                "backend 10.0.0.2:80 is missing from the slots",
                "backend 10.0.0.3:80 is in the slots but not desired"
            ]
        );
        let (m, mut v) = pair(&[], &[]);
        v.when_empty = "reject";
        v.service = "ns/other/TCP".into();
        assert_eq!(
            compare(&m, Some(&v), None).len(),
            2,
            "{:?}",
            compare(&m, Some(&v), None)
        );
        assert_eq!(compare(&m, None, None), ["the frontend is not in the maps"]);
    }

    #[test]
    fn node_clients_get_the_errno_of_an_empty_set() {
        let (_, mut v) = pair(&[], &[]);
        assert!(node_client_outcome(Some(&v), None).contains("EHOSTUNREACH (113)"));
        v.when_empty = "reject";
        assert!(node_client_outcome(Some(&v), None).contains("ECONNREFUSED (111)"));
        let (_, v) = pair(&["10.0.0.1:80"], &["10.0.0.1:80"]);
        let stale = AffinityView {
            backend: Some("10.0.0.1:80".into()),
            slot: 1,
            last_used_secs_ago: 100.0,
            in_force: false,
        };
        assert!(node_client_outcome(Some(&v), Some(&stale)).contains("lapsed"));
        assert!(node_client_outcome(None, None).contains("not in the maps"));
    }
}
