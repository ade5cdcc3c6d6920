//! Privileged end-to-end test harness for Ferry.
//!
//! Everything here needs root (network namespaces, cgroup v2, bpffs). Tests
//! that use it run one at a time:
//!
//! ```text
//! cargo test -p tests -- --test-threads=1
//! ```
//!
//! and every test starts with [`require_root()`] and holds [`serial()`] for
//! its whole body, so a run without the flag is still serialised (and the
//! first test of a process sweeps leftovers of killed runs, see
//! [`sweep_stale()`]).
//!
//! # Safety rules the harness enforces
//!
//! * Every resource is owned by a guard that removes it on `Drop`, also when
//!   the test panics: [`Netns`], [`Cgroup`], [`Topology`], [`BpffsDir`],
//!   [`Manifests`], [`Ferry`], the servers and clients.
//! * Names are `ft<pid>-<n>...` (cgroups, namespaces) and
//!   `ferry-test-<pid>-<n>` (bpffs dirs, temp dirs), so [`sweep_stale()`]
//!   can remove what a killed run left behind.
//! * Nothing is ever attached to the host's root cgroup: [`Ferry`] refuses a
//!   `--cgroup` that is not one of the harness' own `ft*` cgroups.
//! * Namespaces have no default route and no link to the outside; traffic
//!   only goes to addresses inside namespaces the test made.
//! * Every wait and loop is bounded in count and in time.
//!
//! # Things to know
//!
//! * [`Cgroup::enter_self`] moves the *whole test process* (every thread)
//!   into the cgroup, so every client and server thread, in whatever
//!   namespace, runs under Ferry's programs. A client that must not be
//!   translated is a separate program started in the original cgroup:
//!   [`cgroup::place_command_in`]`(&mut cmd, cgroup.original().unwrap())`
//!   plus [`Netns::command`].
//! * Start [`Ferry`] from the test's own thread, never inside
//!   [`Netns::run`]: it must run in the host namespace, and its
//!   parent-death signal is tied to the spawning thread.
//! * Declare guards in the order topology, servers, cgroup, bpffs dir,
//!   manifests, Ferry: drop runs in reverse, so Ferry is stopped and
//!   cleaned up before the rest goes.
//! * A backend sees clients of the node namespace as [`NODE_V4`] /
//!   [`NODE_V6`] (remote backends: [`Backend::gateway_v4`] / `_v6`).
//! * Addresses outside the topology (a ClusterIP Ferry does not translate)
//!   fail with ENETUNREACH: there is no default route anywhere.
//!
//! # Typical e2e test
//!
//! ```no_run
//! use tests::*;
//! # fn main() -> anyhow::Result<()> {
//! require_root();
//! let _serial = serial();
//! // Declaration order matters: guards drop in reverse order, so Ferry
//! // (declared last) is stopped and cleaned up before the bpffs dir, the
//! // cgroup and the namespaces go away.
//! let topo = Topology::new(3)?;
//! let _servers = topo.start_servers(8080)?;
//! let mut cgroup = Cgroup::new()?;
//! cgroup.enter_self()?; // this process (all threads) is now under Ferry's programs
//! let bpffs = BpffsDir::new()?;
//! let manifests = Manifests::new()?;
//! manifests.write_objects(
//!     "web.yaml",
//!     &[
//!         Service::new("default", "web")
//!             .cluster_ip("10.96.0.10")
//!             .port(ServicePort::tcp(80).target(8080))
//!             .to_value(),
//!         EndpointSlice::new("default", "web-1", "web", AddressType::IPv4)
//!             .port("", 8080, "TCP")
//!             .endpoint(Endpoint::new(topo.backend("b0").v4.to_string()).node("node-1"))
//!             .to_value(),
//!     ],
//! )?;
//! // node-1 with NODE_V4/NODE_V6, --host-netns = the node namespace.
//! let mut ferry = Ferry::start(FerryOptions::for_topology(&topo, &manifests, &cgroup, &bpffs))?;
//! ferry.wait_for_frontend("10.96.0.10:80".parse()?)?;
//! let reply = topo.node().run(|| tcp_request("10.96.0.10:80".parse().unwrap()))?;
//! assert_eq!(reply.server, "b0");
//! # Ok(()) }
//! ```

#![cfg_attr(
    test,
    expect(
        unused_crate_dependencies,
        reason = "the unit tests are linked with the dev-dependencies, which are the test files'"
    )
)]

// The machinery (namespaces, cgroups, topology, servers, clients, bpffs
// dirs, the Ferry process guard, the API server fixture, manifests,
// sweeping) is the `sandbox` crate, which the bench and `ferry-demo` share;
// it is re-exported here under the names and paths tests use
// (`tests::Netns`, `tests::cgroup::place_command_in`, `tests::apiserver`,
// ...). The parameterless constructors there name things `ft<pid>-<n>` /
// `ferry-test-<pid>-<n>` (`Naming::TESTS`). What only tests need stays in
// this crate: the shared fixture of the datapath tests, `serial()`,
// `require_root()`.
pub mod fixture;

use std::sync::{Mutex, MutexGuard, Once, PoisonError};

pub use sandbox::{
    Naming, apiserver, bpffs, caps, cgroup, client, ferry, is_root, manifests, netns, ns_topology,
    servers, sweep, topology, unique_id, util,
};

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
pub use util::{Wait, command_output, command_stdout, wait_until};

/// Prefix of every namespace and cgroup the harness creates.
pub const PREFIX: &str = Naming::TESTS.prefix;
/// Prefix of bpffs dirs and temp dirs the harness creates.
pub const DIR_PREFIX: &str = Naming::TESTS.dir_prefix;

/// `ft<pid>-<n>`, unique per process and run; the pid lets
/// [`sweep_stale()`] tell leftovers of dead runs from live ones.
pub fn unique_name() -> String {
    Naming::TESTS.unique_name()
}

static SERIAL: Mutex<()> = Mutex::new(());
static SWEEP: Once = Once::new();

/// Serialises the privileged tests of this process (hold the guard for the
/// whole test). A test that panicked while holding it does not block the
/// others. The first call also sweeps leftovers of killed runs.
pub fn serial() -> MutexGuard<'static, ()> {
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    SWEEP.call_once(|| {
        let report = sweep_stale();
        if !report.is_empty() {
            eprintln!("tests: swept leftovers of dead runs: {report:?}");
        }
    });
    guard
}

/// Fails the test loudly when not root: these tests are meant to run (in CI
/// too) as root, and skipping silently would hide that they never ran.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces, cgroup v2, bpffs); run as root: \
         cargo test -p tests -- --test-threads=1"
    );
}
