//! `ferry agent`: the Kubernetes API server as the source, the datapath
//! kept in sync with it, and what operators need around that.
//!
//! - [`crate::source::kube`]: watchers and reflector stores → snapshots.
//! - [`crate::reconcile::run_with`]: snapshots → datapath, plus drift
//!   repair every sync period and on SIGHUP.
//! - [`state`]: the agent's view of itself (health, connection, last sync).
//! - [`health`]: `/healthz`, `/livez` on the healthz address.
//! - [`metrics`]: `/metrics`, `/proxyMode` on the metrics address, where
//!   `/status` ([`status`], read by `ferry status`) is served too.
//! - [`events`]: Kubernetes Events about invalid objects.

pub mod events;
pub mod health;
pub mod metrics;
pub mod state;
pub mod status;

#[cfg(test)]
mod deploy_tests;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::TcpListener,
    signal::unix::{SignalKind, signal},
    sync::{Notify, watch},
    task::JoinSet,
};

use self::{events::EventReporter, metrics::Metrics, state::AgentState};
use crate::{
    datapath::{BpffsDir, Datapath, Maps},
    explain::{ExplainServer, ExplainSource},
    healthcheck::HealthServer,
    http::{self, Connections, Handler, Limits, Response},
    reconcile::{self, NodeConfig},
    source::{
        Snapshot,
        kube::{self as kube_source, ClientError, Observer, Watched},
    },
};

pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";
pub const DEFAULT_METRICS_BIND_ADDRESS: &str = "127.0.0.1:10249";
pub const DEFAULT_SYNC_PERIOD: &str = "60s";

/// What `ferry agent` needs besides a started datapath.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub kubeconfig: Option<PathBuf>,
    /// Where the pinned maps are (for the per-Service counters).
    pub bpffs: BpffsDir,
    /// The node's network namespace for health check node ports (None:
    /// ours).
    pub host_netns: Option<PathBuf>,
    pub healthz_bind_address: SocketAddr,
    pub metrics_bind_address: SocketAddr,
    /// How often the maps are checked for drift; twice this is how long a
    /// change may wait before the agent reports itself unhealthy.
    pub sync_period: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("listening on the {what} address {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("installing the SIGHUP handler: {0}")]
    Signal(io::Error),
    #[error("starting the control loop's thread: {0}")]
    Thread(io::Error),
}

/// Feeds what the source does into the agent's state and metrics.
struct Observe {
    state: Arc<AgentState>,
    metrics: Arc<Metrics>,
}

impl Observer for Observe {
    fn api_contact(&self, result: Result<u16, String>) {
        self.state.api_contact(result);
    }

    fn watch_error(&self, what: Watched, error: &kube::runtime::watcher::Error) {
        self.state.watch_error(what, error.to_string());
        self.metrics.watch_restart(what);
    }

    fn listed(&self, what: Watched) {
        self.state.listed(what);
    }

    fn published(&self, snapshot: &Arc<Snapshot>, oldest_change: Instant) {
        self.state.queued(snapshot, oldest_change);
    }
}

async fn listen(what: &'static str, addr: SocketAddr) -> Result<TcpListener, AgentError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Listen { what, addr, source })
}

fn not_found() -> Response {
    Response::new(404, "text/plain", "not found\n")
}

/// Runs the agent on a started datapath until `shutdown` resolves. Only
/// setup can fail (addresses in use, no API server configuration); after
/// that, errors are logged, retried and reported, never fatal.
pub async fn run(
    datapath: Datapath,
    node: NodeConfig,
    opts: AgentOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // First: SIGHUP's default action is to terminate.
    let mut hangup = signal(SignalKind::hangup()).map_err(AgentError::Signal)?;

    let state = Arc::new(AgentState::new(&node.name, opts.sync_period));
    let counters = match Maps::open(&opts.bpffs) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %e, "per-Service counters will be missing from /metrics");
            None
        }
    };
    let metrics = Arc::new(Metrics::new(counters));

    // Every task of the agent, stopped together on shutdown.
    let mut tasks = JoinSet::new();
    // One cap for all the HTTP listeners: they share one file limit.
    let connections = Connections::new(Limits::from_file_limit());
    let healthz = listen("healthz", opts.healthz_bind_address).await?;
    let metrics_listener = listen("metrics", opts.metrics_bind_address).await?;
    let health_state = state.clone();
    tasks.spawn(http::serve(
        healthz,
        Handler::inline(move |req| {
            health::respond(req, &health_state.health()).unwrap_or_else(not_found)
        }),
        connections.clone(),
    ));
    let (m, s) = (metrics.clone(), state.clone());
    tasks.spawn(http::serve(
        metrics_listener,
        // A scrape reads the counters of every Service from the maps.
        Handler::blocking(move |req| {
            if let Some(r) = m.respond(req) {
                return r;
            }
            if req.path == "/status" {
                let body = serde_json::to_vec_pretty(&s.status()).unwrap_or_default();
                return Response::new(200, "application/json", body);
            }
            not_found()
        }),
        connections.clone(),
    ));
    let explain_source = Arc::new(ExplainSource::default());
    let explain_server =
        ExplainServer::start_or_warn(&opts.bpffs, explain_source.clone(), connections.clone());
    tracing::info!(
        healthz = %opts.healthz_bind_address,
        metrics = %opts.metrics_bind_address,
        sync_period = ?opts.sync_period,
        max_connections = connections.limits().max_connections,
        "serving /healthz /livez, and /metrics /proxyMode /status"
    );

    let observer: Arc<dyn Observer> = Arc::new(Observe {
        state: state.clone(),
        metrics: metrics.clone(),
    });
    let config = kube_source::config(opts.kubeconfig.as_deref()).await?;
    tracing::info!(api_server = %config.cluster_url, node = %node.name, "watching the API server");
    let client = kube_source::client(config, observer.clone())?;
    tasks.spawn(kube_source::check_node(client.clone(), node.name.clone()));
    let (tx, rx) = watch::channel(None::<Arc<Snapshot>>);
    tasks.spawn(kube_source::run(
        client.clone(),
        node.name.clone(),
        tx,
        observer,
    ));
    let mut events = EventReporter::spawn(client, node.name.clone(), &mut tasks);

    // Health check node ports say whether this proxy is healthy (/livez).
    let proxy_healthy = Arc::new(AtomicBool::new(true));
    let mut health_checks = HealthServer::new(
        proxy_healthy.clone(),
        opts.host_netns.clone(),
        connections,
        tokio::runtime::Handle::current(),
    );
    let (hs, ph) = (state.clone(), proxy_healthy);
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            ph.store(hs.health().healthy, Ordering::Relaxed);
        }
    });

    // Drift repair: every sync period and on SIGHUP.
    let repair = Arc::new(Notify::new());
    let (r, period) = (repair.clone(), opts.sync_period);
    tasks.spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            r.notify_one();
        }
    });
    let r = repair.clone();
    tasks.spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: checking the maps for drift");
            r.notify_one();
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let (s, m) = (state.clone(), metrics.clone());
    // The passes (map writes, socket destruction, drift read-back) block
    // for as long as they take: on their own thread, so that /healthz and
    // the watches never wait for them.
    let control_loop = reconcile::spawn_thread(reconcile::run_with(
        datapath,
        node,
        rx,
        stop_rx,
        repair,
        move |ctx| {
            explain_source.record(ctx.snapshot, &ctx.pass.node);
            let latency = s.synced(ctx.snapshot);
            m.record_pass(ctx, latency);
            s.record_pass(ctx);
            events.report(&ctx.pass.computed.invalid, ctx.snapshot);
            health_checks.update(
                &ctx.pass.computed.desired.health_checks,
                &ctx.pass.node.addresses,
            );
            let pass = ctx.pass;
            if ctx.repair {
                tracing::warn!(
                    repaired = pass.report.changes,
                    "repaired map entries that differed from the desired state"
                );
            }
            tracing::info!(
                changes = pass.report.changes,
                frontends = pass.computed.desired.frontends.len(),
                invalid = pass.computed.invalid.len(),
                errors = pass.report.errors.len(),
                duration_us = pass.duration.as_micros() as u64,
                waited_ms = latency.map(|l| l.as_millis() as u64),
                "synced"
            );
        },
    ))
    .map_err(AgentError::Thread)?;

    shutdown.await;
    tracing::info!("stopping; the datapath stays in place (ferry cleanup removes it)");
    // The pass under way finishes; then the loop, its health check
    // listeners and every task end together.
    let _ = stop_tx.send(true);
    control_loop.join().await;
    tasks.shutdown().await;
    drop(explain_server);
    Ok(())
}
