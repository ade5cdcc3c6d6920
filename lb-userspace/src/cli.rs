//! The `ferry` command line. The subcommands and flags here are a contract
//! with operators and scripts: add, never rename.

use std::{net::IpAddr, path::PathBuf};

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
