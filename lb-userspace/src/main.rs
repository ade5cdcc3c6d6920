#![expect(
    unused_crate_dependencies,
    reason = "the binary is a thin entry point over the library, which uses the rest"
)]

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context as _, Result};
use clap::Parser as _;
use lb_userspace::{
    cli::{Cli, Command, DatapathArgs, LogFormat, NorthSouthArgs, OutputFormat},
    datapath::{self, BpffsDir, Datapath},
    explain::{ExplainServer, ExplainSource},
    healthcheck::HealthServer,
    http, netutil,
    reconcile::{self, NodeConfig},
    source,
};
use tokio::sync::watch;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn cgroup_of(args: &DatapathArgs) -> Result<PathBuf> {
    match &args.cgroup {
        Some(c) => Ok(c.clone()),
        None => Ok(datapath::cgroup2_root()?),
    }
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Loads and attaches the datapath (adopting what its pins hold) and
/// describes the node, for standalone and agent mode alike.
fn start_datapath(
    datapath_args: &DatapathArgs,
    node_name: Option<String>,
    node_ips: Vec<std::net::IpAddr>,
    host_netns: Option<&std::path::Path>,
    north_south: &NorthSouthArgs,
    external_ip_cidrs: Vec<lb_userspace::model::ip::Cidr>,
) -> Result<(Datapath, NodeConfig)> {
    let cgroup = cgroup_of(datapath_args)?;
    let bpffs = BpffsDir::new(&datapath_args.bpffs_dir);
    let node = NodeConfig {
        name: node_name.unwrap_or_else(netutil::hostname),
        ips: node_ips,
        host_ips: netutil::host_addresses().context("listing the host's addresses")?,
        external_ip_cidrs,
    };
    let host_cookie =
        netutil::netns_cookie(host_netns).context("reading the node network namespace's cookie")?;
    let north_south = north_south.north_south.then(|| datapath::NorthSouthConfig {
        netns: host_netns.map(std::path::Path::to_path_buf),
        external_interfaces: north_south.external_interfaces.clone(),
        xdp_mode: north_south.xdp_mode,
        // The addresses NodePorts are served on: the flags, else the
        // node namespace's own.
        node_ips: if node.ips.is_empty() {
            netutil::in_netns(host_netns, netutil::host_addresses).unwrap_or_default()
        } else {
            node.ips.clone()
        },
        maglev_size: north_south.maglev_table_size,
        masquerade_ports: north_south.masquerade_ports,
    });
    let dp = Datapath::start(&bpffs, &cgroup, host_cookie, north_south)
        .with_context(|| format!("starting the datapath on cgroup {}", cgroup.display()))?;
    tracing::info!(
        cgroup = %cgroup.display(),
        bpffs = %bpffs.root.display(),
        node = %node.name,
        adopted_frontends = dp.installed.frontends.len(),
        "datapath attached"
    );
    Ok((dp, node))
}

#[expect(
    clippy::too_many_arguments,
    reason = "one parameter per command-line option of `ferry agent`"
)]
async fn agent(
    kubeconfig: Option<PathBuf>,
    node_name: Option<String>,
    datapath_args: DatapathArgs,
    node_ips: Vec<std::net::IpAddr>,
    host_netns: Option<PathBuf>,
    north_south: NorthSouthArgs,
    external_ip_cidrs: Vec<lb_userspace::model::ip::Cidr>,
    healthz_bind_address: std::net::SocketAddr,
    metrics_bind_address: std::net::SocketAddr,
    sync_period: std::time::Duration,
) -> Result<()> {
    let (dp, node) = start_datapath(
        &datapath_args,
        node_name,
        node_ips,
        host_netns.as_deref(),
        &north_south,
        external_ip_cidrs,
    )?;
    let opts = lb_userspace::agent::AgentOptions {
        kubeconfig,
        bpffs: BpffsDir::new(&datapath_args.bpffs_dir),
        host_netns,
        healthz_bind_address,
        metrics_bind_address,
        sync_period,
    };
    let shutdown = async {
        if let Err(e) = shutdown_signal().await {
            tracing::error!(error = %e, "cannot wait for signals; stopping");
        }
    };
    lb_userspace::agent::run(dp, node, opts, shutdown).await?;
    Ok(())
}

fn status(metrics_bind_address: std::net::SocketAddr, output: OutputFormat) -> Result<()> {
    use lb_userspace::agent::status;
    let s = status::fetch(metrics_bind_address)?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&s)?),
        OutputFormat::Table => print!("{}", status::render(&s)),
    }
    Ok(())
}

async fn standalone(
    manifests: PathBuf,
    datapath_args: DatapathArgs,
    node_name: Option<String>,
    node_ips: Vec<std::net::IpAddr>,
    host_netns: Option<PathBuf>,
    north_south: NorthSouthArgs,
    external_ip_cidrs: Vec<lb_userspace::model::ip::Cidr>,
) -> Result<()> {
    let (dp, node) = start_datapath(
        &datapath_args,
        node_name,
        node_ips,
        host_netns.as_deref(),
        &north_south,
        external_ip_cidrs,
    )?;

    let (tx, rx) = watch::channel(None::<Arc<source::Snapshot>>);
    let (stop_tx, stop_rx) = watch::channel(false);
    let source_task = tokio::spawn(source::manifests::run(manifests, node.name.clone(), tx));
    let proxy_healthy = Arc::new(AtomicBool::new(true));
    let connections = http::Connections::new(http::Limits::from_file_limit());
    let explain_source = Arc::new(ExplainSource::default());
    let explain_server = ExplainServer::start_or_warn(
        &BpffsDir::new(&datapath_args.bpffs_dir),
        explain_source.clone(),
        connections.clone(),
    );
    let mut health = HealthServer::new(
        proxy_healthy.clone(),
        host_netns.clone(),
        connections,
        tokio::runtime::Handle::current(),
    );
    // Passes block in syscalls: off the workers serving health checks.
    let never = Arc::new(tokio::sync::Notify::new());
    let control_loop = reconcile::spawn_thread(reconcile::run_with(
        dp,
        node,
        rx,
        stop_rx,
        never,
        move |ctx| {
            let pass = ctx.pass;
            explain_source.record(ctx.snapshot, &pass.node);
            proxy_healthy.store(pass.report.errors.is_empty(), Ordering::Relaxed);
            health.update(&pass.computed.desired.health_checks, &pass.node.addresses);
            tracing::info!(
                changes = pass.report.changes,
                frontends = pass.computed.desired.frontends.len(),
                invalid = pass.computed.invalid.len(),
                duration_us = pass.duration.as_micros() as u64,
                "synced"
            );
        },
    ))
    .context("starting the control loop's thread")?;
    shutdown_signal().await?;
    tracing::info!("stopping; the datapath stays in place (ferry cleanup removes it)");
    let _ = stop_tx.send(true);
    control_loop.join().await;
    drop(explain_server);
    source_task.abort();
    let _ = source_task.await;
    Ok(())
}

fn services(bpffs_dir: PathBuf, north_south: bool, output: OutputFormat) -> Result<()> {
    use datapath::external::{self, ExternalMaps};
    let bpffs = BpffsDir::new(bpffs_dir);
    if north_south {
        let maps = ExternalMaps::open(&bpffs)?;
        match output {
            OutputFormat::Json => println!(
                "{}",
                serde_json::to_string_pretty(&external::section(&maps))?
            ),
            OutputFormat::Table => print!("{}", external::table(&maps)),
        }
        return Ok(());
    }
    let maps = datapath::Maps::open(&bpffs)?;
    let views = datapath::inspect::frontends(&maps)?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&views)?),
        OutputFormat::Table => {
            print!("{}", datapath::inspect::table(&views));
            // Pins of a Ferry without north-south lack these maps.
            if let Ok(m) = ExternalMaps::open(&bpffs) {
                print!("\n{}", external::table(&m));
            }
        }
    }
    Ok(())
}

fn explain(
    frontend: String,
    bpffs_dir: PathBuf,
    client: Option<String>,
    flow: Option<std::net::SocketAddr>,
    output: OutputFormat,
) -> Result<()> {
    use lb_userspace::explain::{self, Client};
    let query = lb_userspace::model::ExplainQuery::parse(&frontend).map_err(anyhow::Error::msg)?;
    let client = Client::from_args(client.as_deref(), flow).map_err(anyhow::Error::msg)?;
    let bpffs = BpffsDir::new(bpffs_dir);
    let explanation = explain::fetch(&bpffs, &query)?;
    let report = explain::report(&bpffs, explanation, client.as_ref())?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Table => print!("{}", explain::render(&report)),
    }
    Ok(())
}

/// The agent's runtime: two workers are plenty for watches, syncs and a
/// few HTTP endpoints, on any size of node.
fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Standalone {
            manifests,
            datapath,
            node_name,
            node_ips,
            host_netns,
            north_south,
            external_ip_cidrs,
        } => runtime()?.block_on(standalone(
            manifests,
            datapath,
            node_name,
            node_ips,
            host_netns,
            north_south,
            external_ip_cidrs,
        )),
        Command::Agent {
            kubeconfig,
            node_name,
            datapath,
            node_ips,
            host_netns,
            north_south,
            external_ip_cidrs,
            healthz_bind_address,
            metrics_bind_address,
            sync_period,
        } => runtime()?.block_on(agent(
            kubeconfig,
            node_name,
            datapath,
            node_ips,
            host_netns,
            north_south,
            external_ip_cidrs,
            healthz_bind_address,
            metrics_bind_address,
            sync_period,
        )),
        Command::Status {
            metrics_bind_address,
            output,
        } => status(metrics_bind_address, output),
        Command::Services {
            bpffs_dir,
            north_south,
            output,
        } => services(bpffs_dir, north_south, output),
        Command::Explain {
            frontend,
            bpffs_dir,
            client,
            flow,
            output,
        } => explain(frontend, bpffs_dir, client, flow, output),
        Command::Cleanup { datapath } => {
            datapath::cleanup(&BpffsDir::new(&datapath.bpffs_dir))?;
            Ok(())
        }
    }
}
