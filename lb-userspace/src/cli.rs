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

/// The north-south datapath: packets from outside the node to NodePorts,
/// externalIPs and load balancer IPs, translated at tc ingress in the node
/// network namespace (`--host-netns`).
#[derive(Debug, Clone, clap::Args)]
pub struct NorthSouthArgs {
    /// Translate packets that arrive from outside the node (tcx, Linux
    /// 6.6). `false` leaves the node's interfaces untouched: only clients
    /// on the node are served.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub north_south: bool,
    /// An interface where clients outside the node arrive (repeatable).
    /// Default: every interface of the node network namespace holding a
    /// node address (`--node-ip`, else the host's), lo excluded. Every
    /// other interface (pod-facing ones) gets the reply program.
    #[arg(long = "external-interface")]
    pub external_interfaces: Vec<String>,
    /// XDP in front of tc on the external interfaces: `auto` (native
    /// where the driver supports it, else generic, logged), `native`,
    /// `generic`, or `off` (tc alone). XDP translates what it can send out
    /// of another external interface; tc does the rest, so any mode serves
    /// everything.
    #[arg(long, value_enum, default_value_t = crate::datapath::xdp::XdpMode::Auto)]
    pub xdp_mode: crate::datapath::xdp::XdpMode,
    /// Entries of each Service's Maglev table: a prime; larger tables
    /// spread flows more evenly (keep it above 100 times the backends of
    /// the largest Service), and each takes 4 bytes per entry.
    #[arg(long, default_value_t = lb_common::capacity::MAGLEV_TABLE_SIZE, value_parser = parse_maglev_size)]
    pub maglev_table_size: u32,
    /// Source ports for masquerading (externalTrafficPolicy Cluster), as
    /// MIN-MAX. Keep them out of the node's ephemeral port range
    /// (net.ipv4.ip_local_port_range) so that replies to the node's own
    /// connections are never taken for a masqueraded flow's.
    #[arg(long, default_value = "61000-65535", value_parser = parse_port_range)]
    pub masquerade_ports: (u16, u16),
}

/// A prime from 251 to 131,071 (`capacity::MAGLEV_TABLE_SIZE_MAX`).
pub fn parse_maglev_size(text: &str) -> Result<u32, String> {
    let n: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    let max = lb_common::capacity::MAGLEV_TABLE_SIZE_MAX;
    if !(251..=max).contains(&n) || !crate::datapath::maglev::is_prime(n) {
        return Err(format!("{n} is not a prime from 251 to {max}"));
    }
    Ok(n)
}

/// An IPv4 or IPv6 block ADDRESS/PREFIX; host bits are cleared.
pub fn parse_cidr(text: &str) -> Result<crate::model::ip::Cidr, String> {
    crate::model::ip::parse_cidr_lenient(text).ok_or_else(|| {
        format!("{text:?} is not a CIDR block such as 203.0.113.0/24 or 2001:db8::/64")
    })
}

/// MIN-MAX, both from 1024 to 65535, MIN <= MAX.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{text:?} is not a port range MIN-MAX (1024-65535)");
    let (a, b) = text.trim().split_once('-').ok_or_else(bad)?;
    let min: u16 = a.trim().parse().map_err(|_| bad())?;
    let max: u16 = b.trim().parse().map_err(|_| bad())?;
    if min < 1024 || max < min {
        return Err(bad());
    }
    Ok((min, max))
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
        /// NodePort and the north-south programs attach (default: ferry's
        /// own).
        #[arg(long)]
        host_netns: Option<PathBuf>,
        #[command(flatten)]
        north_south: NorthSouthArgs,
        /// Serve only externalIPs inside these blocks (repeatable, e.g.
        /// 203.0.113.0/24): an externalIP outside all of them gets no
        /// frontend, and its Service is named in a warning.
        /// Default: every externalIP is served, as kube-proxy does, which
        /// lets anyone who may create Services capture traffic to any
        /// address (CVE-2020-8554).
        #[arg(long = "external-ip-cidr", value_parser = parse_cidr)]
        external_ip_cidrs: Vec<crate::model::ip::Cidr>,
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
        /// NodePort, health check node ports listen and the north-south
        /// programs attach (default: ferry's own).
        #[arg(long)]
        host_netns: Option<PathBuf>,
        #[command(flatten)]
        north_south: NorthSouthArgs,
        /// Serve only externalIPs inside these blocks (repeatable, e.g.
        /// 203.0.113.0/24): an externalIP outside all of them gets no
        /// frontend, and its Service is named in a warning and a Kubernetes Event on it.
        /// Default: every externalIP is served, as kube-proxy does, which
        /// lets anyone who may create Services capture traffic to any
        /// address (CVE-2020-8554).
        #[arg(long = "external-ip-cidr", value_parser = parse_cidr)]
        external_ip_cidrs: Vec<crate::model::ip::Cidr>,
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
    /// Print what the datapath holds: frontends, backends, counters; the
    /// table ends with the north-south section.
    Services {
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
        /// Only the north-south section: external frontends (Maglev table,
        /// masquerade, source ranges) and packet counters.
        #[arg(long)]
        north_south: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Why a frontend serves what it does: asks the running ferry
    /// (standalone or agent, found by --bpffs-dir) for the model's
    /// decision, endpoint by endpoint in kube-proxy's terms, and compares it
    /// with what the maps hold.
    Explain {
        /// ADDRESS:PORT/PROTOCOL (10.96.0.10:80/TCP, [fd00::10]:53/UDP) or
        /// NAMESPACE/NAME[:PORT] (port name or number).
        frontend: String,
        #[arg(long, default_value = DEFAULT_BPFFS_DIR)]
        bpffs_dir: PathBuf,
        /// Also say what this client gets now: a network namespace path (a
        /// client on the node: its session affinity entry, or the errno
        /// of a refused connect), or a source address (a client outside
        /// the node: source ranges, drop).
        #[arg(long)]
        client: Option<String>,
        /// A client outside the node by address and port (SRC:PORT, with
        /// the frontend the rest of the 5-tuple): its connection-table
        /// entry and the backend Maglev picks for it.
        #[arg(long)]
        flow: Option<SocketAddr>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Detach every program and remove every pinned map.
    Cleanup {
        #[command(flatten)]
        datapath: DatapathArgs,
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
    fn maglev_sizes_and_port_ranges() {
        assert_eq!(parse_maglev_size("16381"), Ok(16381));
        assert_eq!(parse_maglev_size("251"), Ok(251));
        assert_eq!(parse_maglev_size("131071"), Ok(131_071));
        // 131,101 is prime, past the largest size.
        for bad in ["16380", "250", "131101", "x", ""] {
            assert!(parse_maglev_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_port_range("61000-65535"), Ok((61000, 65535)));
        assert_eq!(parse_port_range("2000-2000"), Ok((2000, 2000)));
        for bad in ["61000", "100-2000", "3000-2000", "a-b", "1-2-3"] {
            assert!(parse_port_range(bad).is_err(), "{bad:?}");
        }
    }

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
        let cli = Cli::try_parse_from([
            "ferry",
            "agent",
            "--external-ip-cidr",
            "203.0.113.7/24",
            "--external-ip-cidr",
            "2001:db8::/64",
        ])
        .unwrap();
        let Command::Agent {
            external_ip_cidrs, ..
        } = cli.command
        else {
            panic!("not agent");
        };
        let blocks: Vec<String> = external_ip_cidrs.iter().map(ToString::to_string).collect();
        assert_eq!(blocks, ["203.0.113.0/24", "2001:db8::/64"]);
        assert!(
            Cli::try_parse_from(["ferry", "agent", "--external-ip-cidr", "203.0.113.7"]).is_err()
        );
        let cli = Cli::try_parse_from(["ferry", "standalone", "--manifests", "m"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Standalone { external_ip_cidrs, .. } if external_ip_cidrs.is_empty()
        ));
    }
}
