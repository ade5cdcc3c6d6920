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
};

use self::{events::EventReporter, metrics::Metrics, state::AgentState};
use crate::{
    datapath::{BpffsDir, Datapath, Maps},
    healthcheck::HealthServer,
    http::{self, Request, Response},
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

/// Answers every connection of `listener` with `handler`.
async fn serve(listener: TcpListener, handler: Arc<dyn Fn(&Request) -> Response + Send + Sync>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let handler = handler.clone();
                tokio::spawn(http::serve_connection(stream, move |req| handler(req)));
            }
            // Out of file descriptors and the like: do not spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
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

    let healthz = listen("healthz", opts.healthz_bind_address).await?;
    let metrics_listener = listen("metrics", opts.metrics_bind_address).await?;
    let health_state = state.clone();
    tokio::spawn(serve(
        healthz,
        Arc::new(move |req| health::respond(req, &health_state.health()).unwrap_or_else(not_found)),
    ));
    let (m, s) = (metrics.clone(), state.clone());
    tokio::spawn(serve(
        metrics_listener,
        Arc::new(move |req| {
            if let Some(r) = m.respond(req) {
                return r;
            }
            if req.path == "/status" {
                let body = serde_json::to_vec_pretty(&s.status()).unwrap_or_default();
                return Response::new(200, "application/json", body);
            }
            not_found()
        }),
    ));
    tracing::info!(
        healthz = %opts.healthz_bind_address,
        metrics = %opts.metrics_bind_address,
        sync_period = ?opts.sync_period,
        "serving /healthz /livez, and /metrics /proxyMode /status"
    );

    let observer: Arc<dyn Observer> = Arc::new(Observe {
        state: state.clone(),
        metrics: metrics.clone(),
    });
    let config = kube_source::config(opts.kubeconfig.as_deref()).await?;
    tracing::info!(api_server = %config.cluster_url, node = %node.name, "watching the API server");
    let client = kube_source::client(config, observer.clone())?;
    tokio::spawn(kube_source::check_node(client.clone(), node.name.clone()));
    let (tx, rx) = watch::channel(None::<Arc<Snapshot>>);
    let source_task = tokio::spawn(kube_source::run(
        client.clone(),
        node.name.clone(),
        tx,
        observer,
    ));
    let mut events = EventReporter::spawn(client, node.name.clone());

    // Health check node ports say whether this proxy is healthy (/livez).
    let proxy_healthy = Arc::new(AtomicBool::new(true));
    let mut health_checks = HealthServer::new(proxy_healthy.clone(), opts.host_netns.clone());
    let (hs, ph) = (state.clone(), proxy_healthy);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            ph.store(hs.health().healthy, Ordering::Relaxed);
        }
    });

    // Drift repair: every sync period and on SIGHUP.
    let repair = Arc::new(Notify::new());
    let (r, period) = (repair.clone(), opts.sync_period);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tick.tick().await;
            r.notify_one();
        }
    });
    let r = repair.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: checking the maps for drift");
            r.notify_one();
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let (s, m) = (state.clone(), metrics.clone());
    let loop_task = tokio::spawn(reconcile::run_with(
        datapath,
        node,
        rx,
        stop_rx,
        repair,
        move |ctx| {
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
    ));

    shutdown.await;
    tracing::info!("stopping; the datapath stays in place (ferry cleanup removes it)");
    let _ = stop_tx.send(true);
    source_task.abort();
    let _ = loop_task.await;
    Ok(())
}
