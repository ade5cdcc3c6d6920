//! Throwaway network namespaces, cgroups and processes to run Ferry in,
//! without touching the host's own traffic. The privileged tests (the
//! `tests` crate re-exports this one), the bench and `ferry-demo` use it.
//!
//! - `netns`: named network namespaces, code running inside them.
//! - `cgroup`: child cgroups of the cgroup v2 root.
//! - `topology`: a node namespace bridged to backend namespaces.
//! - `servers`, `client`: who-am-I servers in backends, clients for them.
//! - `bpffs`: a private directory on bpffs for the agent's pins.
//! - `ferry`: the `ferry` process (standalone or agent) as a guard.
//! - `apiserver`: a Kubernetes API server fixture for `ferry agent`.
//! - `manifests`: Service, EndpointSlice and Node objects, a manifests dir.
//! - `sweep`: removes what a killed run left behind.
//! - `util`: bounded commands, the bounded wait ([`util::wait_until`]).
//!
//! Where the sandbox needs what the product already does (finding the
//! cgroup2 mount, mounting bpffs, the layout of Ferry's bpffs directory), it
//! calls `lb_userspace::datapath::paths` rather than doing it again.
//!
//! Everything needs root. The rules every module keeps:
//!
//! * Every resource is owned by a guard that removes it on `Drop`, also on
//!   panic or error.
//! * Names carry a prefix and the creating process' pid ([`Naming`]), so
//!   [`sweep::sweep_stale`] can tell leftovers of dead runs from live ones,
//!   and the test harness, the bench and the demo never touch each other's.
//! * Namespaces have no default route and no link to the outside; traffic
//!   only goes to addresses inside namespaces the sandbox made.
//! * Every wait and loop is bounded in count and in time.
//! * Nothing here attaches anything to a cgroup; whoever starts the agent
//!   must give it one of these child cgroups, never the root ([`Ferry`]
//!   refuses any other).

pub mod apiserver;
pub mod bpffs;
pub mod caps;
pub mod cgroup;
pub mod client;
pub mod ferry;
pub mod manifests;
pub mod netns;
pub mod ns_topology;
pub mod servers;
pub mod sweep;
pub mod topology;
pub mod util;

use std::sync::atomic::{AtomicU32, Ordering};

pub use bpffs::BpffsDir;
pub use cgroup::{Cgroup, cgroup2_root, own_cgroup};
pub use client::{
    ConnectError, ContinuousClient, ContinuousMode, ContinuousOptions, ContinuousStats, Reply,
    TcpSession, tcp_connect, tcp_connect_err, tcp_request, tcp_request_from, udp_connected_request,
    udp_connected_request_from, udp_unconnected_request, udp_unconnected_request_from,
};
pub use ferry::{Ferry, FerryOptions, ferry_binary, json_mentions, json_mentions_frontend};
pub use manifests::{
    AddressType, Endpoint, EndpointSlice, Manifests, Node, Service, ServicePort, to_yaml,
    to_yaml_docs,
};
pub use netns::Netns;
pub use servers::{ServerSet, TcpServer, UdpServer};
pub use sweep::{SweepReport, sweep_stale};
pub use topology::{Backend, NODE_V4, NODE_V6, Topology, TopologyBuilder};
pub use util::{command_output, command_stdout};

/// How one user of the sandbox names what it creates. Names are
/// `<prefix><pid>-<n>[-...]` (namespaces, cgroups) and
/// `<dir_prefix><pid>-<n>[-...]` (bpffs and temp dirs): the pid says
/// whether the owner still lives, the prefix whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Naming {
    /// Namespaces and cgroups.
    pub prefix: &'static str,
    /// Directories on bpffs and in $TMPDIR.
    pub dir_prefix: &'static str,
}

impl Naming {
    /// The test harness' names (`ft<pid>-<n>`, `ferry-test-<pid>-<n>`). The
    /// constructors without a `Naming` argument use it, so the harness'
    /// tests read as they did before the sandbox moved here.
    pub const TESTS: Naming = Naming {
        prefix: "ft",
        dir_prefix: "ferry-test-",
    };

    /// `ferry-demo`'s names (`ferry-demo-<pid>-<n>` for everything).
    pub const DEMO: Naming = Naming {
        prefix: "ferry-demo-",
        dir_prefix: "ferry-demo-",
    };

    /// `<prefix><pid>-<n>`, unique within this process.
    pub fn unique_name(&self) -> String {
        format!("{}{}-{}", self.prefix, std::process::id(), unique_id())
    }

    /// `<dir_prefix><pid>-<n>`, unique within this process.
    pub fn unique_dir_name(&self) -> String {
        format!("{}{}-{}", self.dir_prefix, std::process::id(), unique_id())
    }

    /// `<dir_prefix><pid>-`: the start of this process' temp dir names.
    pub fn temp_prefix(&self) -> String {
        format!("{}{}-", self.dir_prefix, std::process::id())
    }
}

impl Default for Naming {
    fn default() -> Self {
        Naming::TESTS
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process (shared by every [`Naming`], so no
/// two names of one process collide whatever their prefix).
pub fn unique_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod unit {
    use super::util::owner_pid;
    use super::*;

    #[test]
    fn names_carry_our_pid_and_never_match_the_other_naming() {
        let me = std::process::id();
        for n in [Naming::TESTS, Naming::DEMO] {
            assert_eq!(owner_pid(&n.unique_name(), n.prefix), Some(me));
            assert_eq!(owner_pid(&n.unique_dir_name(), n.dir_prefix), Some(me));
            let temp = format!("{}Xy12ab", n.temp_prefix());
            assert_eq!(owner_pid(&temp, n.dir_prefix), Some(me));
        }
        let (t, d) = (Naming::TESTS, Naming::DEMO);
        assert_eq!(owner_pid(&d.unique_name(), t.prefix), None);
        assert_eq!(owner_pid(&t.unique_name(), d.prefix), None);
        assert_eq!(owner_pid(&d.unique_dir_name(), t.dir_prefix), None);
        assert_eq!(owner_pid(&t.unique_dir_name(), d.dir_prefix), None);
        // The agent's default bpffs dir is never a sandbox's.
        assert_eq!(owner_pid("ferry", d.dir_prefix), None);
    }
}
