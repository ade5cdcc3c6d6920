//! The `ferry` command line. The subcommands and flags here are a contract
//! with operators and scripts: add, never rename.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_BPFFS_DIR: &str = "/sys/fs/bpf/ferry";

#[derive(Debug, Parser)]
#[command(
    name = "ferry",
    version,
    about = "Kubernetes Service load balancing in eBPF, in place of kube-proxy"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct DatapathArgs {
    /// cgroup v2 directory to attach to (default: the cgroup2 root found in
    /// /proc/mounts).
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// bpffs directory for pinned maps and links (a bpffs is mounted on its
    /// parent when none is).
    #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve Services read from YAML/JSON manifests, without a cluster.
    Standalone {
        /// A manifest file or a directory of *.yaml, *.yml, *.json files
        /// (Services, EndpointSlices, optionally this Node); re-read on change.
        #[arg(long)]
        manifests: PathBuf,
        #[command(flatten)]
        datapath: DatapathArgs,
        /// This node's name (locality of endpoints, Node object to read).
        #[arg(long)]
        node_name: Option<String>,
        /// This node's addresses for NodePorts (repeatable; default: the
        /// Node object's addresses, else the host's).
        #[arg(long = "node-ip")]
        node_ips: Vec<IpAddr>,
        /// The node's own network namespace, where binds may not take a
        /// NodePort (default: ferry's own).
        #[arg(long)]
        host_netns: Option<PathBuf>,
    },
    /// Serve the cluster's Services as the Kubernetes API server describes
    /// them, in place of kube-proxy (one per node; see deploy/).
    Agent {
        /// kubeconfig file (default: the in-cluster configuration, else
        /// $KUBECONFIG or ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// This node's name: its Node object, locality of endpoints
        /// (default: the host name).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        #[command(flatten)]
        datapath: DatapathArgs,
        /// This node's addresses for NodePorts (repeatable; default: the
        /// Node object's addresses, else the host's).
        #[arg(long = "node-ip")]
        node_ips: Vec<IpAddr>,
        /// The node's own network namespace, where binds may not take a
        /// NodePort and health check node ports listen (default: ferry's own).
        #[arg(long)]
        host_netns: Option<PathBuf>,
        /// Where /healthz and /livez answer.
        #[arg(long, default_value = crate::agent::DEFAULT_HEALTHZ_BIND_ADDRESS)]
        healthz_bind_address: SocketAddr,
        /// Where /metrics, /proxyMode and /status answer.
        #[arg(long, default_value = crate::agent::DEFAULT_METRICS_BIND_ADDRESS)]
        metrics_bind_address: SocketAddr,
        /// How often the maps are checked against the desired state and
        /// repaired (also on SIGHUP); a change waiting twice this long
        /// makes the agent unhealthy. E.g. 60s, 5m, 1m30s.
        #[arg(long, default_value = crate::agent::DEFAULT_SYNC_PERIOD, value_parser = parse_duration)]
        sync_period: Duration,
    },
    /// Print what a running agent reports: API server connection, last
    /// sync, counts, errors.
    Status {
        /// The agent's --metrics-bind-address.
        #[arg(long, default_value = crate::agent::DEFAULT_METRICS_BIND_ADDRESS)]
        metrics_bind_address: SocketAddr,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print what the datapath holds: frontends, backends, counters.
    Services {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Detach every program and remove every pinned map.
    Cleanup {
        #[command(flatten)]
        datapath: DatapathArgs,
    },
    /// Run a self-contained demo: namespaces, backends, a ClusterIP Service,
    /// and requests spread over its backends. Cleans up after itself.
    Demo {
        /// Requests to send.
        #[arg(long, default_value_t = 30)]
        requests: u32,
    },
}

/// A duration such as `30s`, `500ms`, `5m`, `1h`, `1m30s` (a bare number
/// is seconds). Must be more than zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration such as 30s, 500ms, 5m or 1m30s");
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return (secs > 0)
            .then(|| Duration::from_secs(secs))
            .ok_or_else(bad);
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let one = match &rest[..unit] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        total += one
            .checked_mul(u32::try_from(n).map_err(|_| bad())?)
            .ok_or_else(bad)?;
        rest = &rest[unit..];
    }
    if total.is_zero() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let s = Duration::from_secs;
        for (text, want) in [
            ("30", Some(s(30))),
            ("30s", Some(s(30))),
            ("500ms", Some(Duration::from_millis(500))),
            ("5m", Some(s(300))),
            ("1h", Some(s(3600))),
            ("1m30s", Some(s(90))),
            ("0s", None),
            ("0", None),
            ("", None),
            ("s", None),
            ("10x", None),
            ("1.5s", None),
            ("-1s", None),
        ] {
            assert_eq!(parse_duration(text).ok(), want, "{text:?}");
        }
    }

    #[test]
    fn agent_flags_and_defaults() {
        let cli = Cli::try_parse_from(["ferry", "agent", "--node-name", "n1"]).unwrap();
        let Command::Agent {
            node_name,
            healthz_bind_address,
            metrics_bind_address,
            sync_period,
            kubeconfig,
            ..
        } = cli.command
        else {
            panic!("not agent");
        };
        assert_eq!(node_name.as_deref(), Some("n1"));
        assert_eq!(healthz_bind_address, "0.0.0.0:10256".parse().unwrap());
        assert_eq!(metrics_bind_address, "127.0.0.1:10249".parse().unwrap());
        assert_eq!(sync_period, Duration::from_secs(60));
        assert_eq!(kubeconfig, None);
        let cli = Cli::try_parse_from([
            "ferry",
            "--log-format",
            "json",
            "agent",
            "--kubeconfig",
            "/k",
            "--sync-period",
            "2m",
            "--healthz-bind-address",
            "127.0.0.1:1",
        ])
        .unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(matches!(
            cli.command,
            Command::Agent { sync_period, .. } if sync_period == Duration::from_secs(120)
        ));
        assert!(Cli::try_parse_from(["ferry", "agent", "--sync-period", "soon"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "status", "-o", "json"]).is_ok());
    }
}
