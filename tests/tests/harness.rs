//! Smoke tests of the harness itself (no Ferry involved; the Ferry guard is
//! exercised with a stub binary). Privileged: run as root with
//! `cargo test -p tests -- --test-threads=1`.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tests::cgroup::{own_cgroup, place_command_in};
use tests::*;

const PORT: u16 = 8080;
/// Pace of the waits below.
const POLL: Duration = Duration::from_millis(10);

fn netns_list() -> String {
    command_stdout(Command::new("ip").args(["netns", "list"])).expect("ip netns list")
}

/// Names in `ip netns list` (first word of each line).
fn listed_namespaces() -> Vec<String> {
    netns_list()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn assert_namespaces_gone(names: &[String]) {
    let listed = listed_namespaces();
    for n in names {
        assert!(
            !listed.contains(n),
            "namespace {n} is still listed: {listed:?}"
        );
        assert!(
            !Path::new("/run/netns").join(n).exists(),
            "/run/netns/{n} still exists"
        );
    }
}

/// The inode of the network namespace of the calling thread.
fn current_netns_inode() -> u64 {
    fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
}

/// Runs `f` on drop (last-resort cleanup for resources a test makes by hand).
struct Defer<F: FnMut()>(F);
impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

#[test]
fn netns_run_and_threads_are_inside() -> Result<()> {
    require_root();
    let _serial = serial();
    let ns = Netns::new("probe")?;
    assert!(ns.name().starts_with(&format!("ft{}-", std::process::id())));
    let ino = fs::metadata(ns.path())?.ino();
    assert_ne!(
        current_netns_inode(),
        ino,
        "the test thread must stay outside"
    );
    assert_eq!(ns.run(current_netns_inode), ino);
    let handle = ns.spawn_thread("probe", current_netns_inode)?;
    assert_eq!(handle.join().unwrap(), ino);
    // A panic inside run() reaches the caller.
    let caught = catch_unwind(AssertUnwindSafe(|| ns.run(|| panic!("inside"))));
    assert!(caught.is_err());
    // lo is up, and the namespace has nothing but lo.
    let links = ns.cmd(&["-o", "link", "show"])?;
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    // Programs via nsenter see the namespace too.
    let out = command_output(
        ns.command("ip").args(["-o", "link", "show"]),
        Duration::from_secs(5),
    )?;
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), links);
    let name = ns.name().to_string();
    drop(ns);
    assert_namespaces_gone(&[name]);
    Ok(())
}

#[test]
fn direct_requests_reach_each_backend_v4_and_v6() -> Result<()> {
    require_root();
    let _serial = serial();
    let topo = Topology::new(3)?;
    let _servers = topo.start_servers(PORT)?;
    assert_eq!(
        topo.backends()
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>(),
        ["b0", "b1", "b2"]
    );
    assert_eq!(topo.backend("b2").v4, Ipv4Addr::new(10, 244, 0, 12));
    assert_eq!(topo.backend("b2").v6.to_string(), "fd00:244::12");
    let node = topo.node();
    for b in topo.backends() {
        for (target, node_ip) in [
            (b.addr_v4(PORT), IpAddr::from(NODE_V4)),
            (b.addr_v6(PORT), IpAddr::from(NODE_V6)),
        ] {
            let r = node
                .run(|| tcp_request(target))
                .with_context(|| format!("TCP to {target}"))?;
            assert_eq!(r.server, b.name, "TCP {target}");
            assert_eq!(r.seen_peer.ip(), node_ip, "TCP {target}");
            assert_eq!(r.seen_peer, r.local, "TCP {target}: no NAT on the way");
            assert_eq!(r.peer, Some(target));
            assert_eq!(r.from, None);

            let r = node
                .run(|| udp_connected_request(target))
                .with_context(|| format!("connected UDP to {target}"))?;
            assert_eq!(r.server, b.name);
            assert_eq!(r.seen_peer.ip(), node_ip);
            assert_eq!(r.seen_peer, r.local);
            assert_eq!(r.peer, Some(target));
            assert_eq!(r.from, Some(target));

            let r = node
                .run(|| udp_unconnected_request(target))
                .with_context(|| format!("unconnected UDP to {target}"))?;
            assert_eq!(r.server, b.name);
            assert_eq!(r.seen_peer.ip(), node_ip);
            assert_eq!(r.peer, None);
            assert_eq!(r.from, Some(target));
        }
    }
    Ok(())
}

#[test]
fn nothing_routes_outside_and_refusals_are_reported() -> Result<()> {
    require_root();
    let _serial = serial();
    let topo = Topology::new(1)?;
    let _servers = topo.start_servers(PORT)?;
    for ns in std::iter::once(topo.node()).chain(topo.backends().iter().map(|b| &b.ns)) {
        assert_eq!(
            ns.cmd(&["route", "show", "default"])?.trim(),
            "",
            "{}",
            ns.name()
        );
        assert_eq!(
            ns.cmd(&["-6", "route", "show", "default"])?.trim(),
            "",
            "{}",
            ns.name()
        );
    }
    let b0 = topo.backend("b0");
    // No listener: refused.
    for target in [b0.addr_v4(9), b0.addr_v6(9)] {
        let e = topo
            .node()
            .run(|| tcp_connect_err(target))
            .expect("must fail");
        assert_eq!(e.errno, Some(libc::ECONNREFUSED), "{target}: {e}");
    }
    // Addresses outside the topology (a ClusterIP without Ferry): no route.
    for target in ["10.96.0.10:80", "[fd00:96::a]:80"] {
        let target: SocketAddr = target.parse()?;
        let e = topo
            .node()
            .run(|| tcp_connect_err(target))
            .expect("must fail");
        assert_eq!(e.errno, Some(libc::ENETUNREACH), "{target}: {e}");
        let e = topo
            .node()
            .run(|| udp_unconnected_request(target))
            .expect_err("must fail");
        assert_eq!(e.raw_os_error(), Some(libc::ENETUNREACH), "{target}: {e}");
    }
    // And a successful connect is None.
    assert_eq!(topo.node().run(|| tcp_connect_err(b0.addr_v4(PORT))), None);
    Ok(())
}

#[test]
fn remote_backends_and_extra_node_addresses() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut topo = Topology::builder()
        .backends(1)
        .remote_backends(1)
        .node_addr("10.244.0.2/32")
        .build()?;
    topo.add_remote_backends(1)?;
    topo.add_node_addr("fd00:244::2/128")?;
    assert_eq!(
        topo.remote_backends()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>(),
        ["r0", "r1"]
    );
    let r1 = topo.backend("r1");
    assert_eq!(r1.v4, Ipv4Addr::new(10, 244, 1, 11));
    assert_eq!(r1.v6.to_string(), "fd00:244:1::11");
    assert_eq!(topo.namespace_names().len(), 4);
    let servers = topo.start_servers(PORT)?;

    let r = topo
        .node()
        .run(|| tcp_request(r1.addr_v4(PORT)))
        .context("TCP to r1")?;
    assert_eq!(
        (r.server.as_str(), r.seen_peer.ip()),
        ("r1", r1.gateway_v4.into())
    );
    let r = topo
        .node()
        .run(|| udp_connected_request(r1.addr_v6(PORT)))
        .context("UDP to r1 v6")?;
    assert_eq!(
        (r.server.as_str(), r.seen_peer.ip()),
        ("r1", r1.gateway_v6.into())
    );

    // Sources bound to the extra node addresses reach the backends.
    let b0 = topo.backend("b0");
    let src4: SocketAddr = "10.244.0.2:0".parse()?;
    let r = topo
        .node()
        .run(|| tcp_request_from(Some(src4), b0.addr_v4(PORT)))
        .context("TCP from 10.244.0.2")?;
    assert_eq!(r.seen_peer.ip(), src4.ip());
    let src6: SocketAddr = "[fd00:244::2]:0".parse()?;
    let r = topo
        .node()
        .run(|| udp_unconnected_request_from(Some(src6), b0.addr_v6(PORT)))
        .context("UDP from fd00:244::2")?;
    assert_eq!(r.seen_peer.ip(), src6.ip());

    // Backends reach each other across subnets (one link, on-link routes).
    let r = b0
        .ns
        .run(|| tcp_request(r1.addr_v4(PORT)))
        .context("TCP b0 -> r1")?;
    assert_eq!((r.server.as_str(), r.seen_peer.ip()), ("r1", b0.v4.into()));
    assert!(servers.tcp_connections_of("r1") >= 2);
    Ok(())
}

#[test]
fn tcp_session_reuses_one_connection() -> Result<()> {
    require_root();
    let _serial = serial();
    let topo = Topology::new(1)?;
    let servers = topo.start_servers(PORT)?;
    let target = topo.backend("b0").addr_v6(PORT);
    let mut session = topo.node().run(|| TcpSession::connect(target))?;
    let first = session.request()?;
    for _ in 0..5 {
        // Used from the test thread: the socket keeps its namespace.
        assert_eq!(session.request()?, first);
    }
    assert_eq!(servers.tcp_at(target)?.connections(), 1);
    Ok(())
}

#[test]
fn continuous_client_counts_successes_and_failures() -> Result<()> {
    require_root();
    let _serial = serial();
    let topo = Topology::new(2)?;
    let mut servers = topo.start_servers(PORT)?;
    let target = topo.backend("b1").addr_v4(PORT);

    // Bounded by count: ends by itself.
    let client = ContinuousClient::start(
        topo.node(),
        target,
        ContinuousOptions {
            max_count: 20,
            interval: Duration::ZERO,
            ..Default::default()
        },
    )?;
    let finished = wait_until(
        "the client to finish",
        Duration::from_secs(10),
        POLL,
        || {
            Ok(match client.stats() {
                s if s.finished => Wait::Done(()),
                s => Wait::Pending(format!("{s:?}")),
            })
        },
    );
    let s = client.stop();
    assert!(finished.is_ok() && s.finished, "{finished:?}");
    assert_eq!((s.attempts, s.successes, s.failures), (20, 20, 0), "{s:?}");
    assert_eq!(s.per_server.get("b1"), Some(&20));

    // Runs until stopped; a vanished server shows up as failures.
    let client = ContinuousClient::start(topo.node(), target, ContinuousOptions::default())?;
    assert!(
        client.wait_for_successes(50, Duration::from_secs(10)),
        "{:?}",
        client.stats()
    );
    let before = client.stats();
    assert_eq!(before.failures, 0, "{before:?}");
    servers.stop_at(target);
    let failed = wait_until("5 failures", Duration::from_secs(10), POLL, || {
        Ok(match client.stats() {
            s if s.failures >= 5 => Wait::Done(()),
            s => Wait::Pending(format!("{s:?}")),
        })
    });
    let s = client.stop();
    assert!(failed.is_ok(), "{failed:?}");
    assert!(s.failures >= 5, "{s:?}");
    assert_eq!(s.successes + s.failures, s.attempts);
    // (The connection in flight when the server stopped may be reset.)
    assert!(
        s.first_errors
            .iter()
            .any(|e| e.contains("Connection refused")),
        "{:?}",
        s.first_errors
    );

    // UDP modes work too.
    let target = topo.backend("b0").addr_v6(PORT);
    for mode in [ContinuousMode::UdpConnected, ContinuousMode::UdpUnconnected] {
        let client = ContinuousClient::start(
            topo.node(),
            target,
            ContinuousOptions {
                mode,
                max_count: 10,
                ..Default::default()
            },
        )?;
        assert!(client.wait_for_successes(10, Duration::from_secs(10)));
        let s = client.stop();
        assert_eq!((s.successes, s.failures), (10, 0), "{mode:?}: {s:?}");
    }
    Ok(())
}

#[test]
fn cgroup_enter_leave_and_removal() -> Result<()> {
    require_root();
    let _serial = serial();
    let root = cgroup2_root()?;
    let before = own_cgroup()?;
    let pid = std::process::id();

    let mut cg = Cgroup::new()?;
    let path = cg.path().to_path_buf();
    assert_eq!(path.parent(), Some(root.as_path()));
    assert!(path.is_dir());
    assert!(cg.procs()?.is_empty());

    cg.enter_self()?;
    assert_eq!(own_cgroup()?, path);
    assert!(cg.contains_self());
    assert_eq!(cg.procs()?, vec![pid]);
    // Every thread moved, and new threads and children start inside.
    let from_thread = thread::spawn(|| fs::read_to_string("/proc/thread-self/cgroup").unwrap())
        .join()
        .unwrap();
    assert!(
        from_thread.contains(&format!("0::{}\n", cg.relative())),
        "{from_thread}"
    );
    let out = command_stdout(Command::new("cat").arg("/proc/self/cgroup"))?;
    assert!(out.contains(&format!("0::{}\n", cg.relative())), "{out}");

    cg.leave_self()?;
    assert_eq!(own_cgroup()?, before);
    assert!(cg.procs()?.is_empty());

    // add_pid
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::null())
        .spawn()?;
    cg.add_pid(child.id())?;
    assert_eq!(cg.procs()?, vec![child.id()]);
    child.kill()?;
    child.wait()?;

    // Dropping while inside moves the process back and removes the dir.
    cg.enter_self()?;
    drop(cg);
    assert_eq!(own_cgroup()?, before);
    assert!(!path.exists());

    // A child left inside does not keep the directory alive.
    let cg = Cgroup::new()?;
    let path = cg.path().to_path_buf();
    let mut cmd = Command::new("sleep");
    cmd.arg("30").stdin(Stdio::null());
    cg.place_command(&mut cmd)?;
    let mut child = cmd.spawn()?;
    let child_cgroup = fs::read_to_string(format!("/proc/{}/cgroup", child.id()))?;
    assert!(child_cgroup.contains(&cg.relative()), "{child_cgroup}");
    drop(cg);
    let gone = !path.exists();
    child.kill()?;
    child.wait()?;
    assert!(gone, "{} survived its guard", path.display());
    Ok(())
}

#[test]
fn bpffs_dir_is_private_and_removed() -> Result<()> {
    require_root();
    let _serial = serial();
    let a = BpffsDir::new()?;
    let b = BpffsDir::new()?;
    assert_ne!(a.path(), b.path());
    assert!(a.path().starts_with("/sys/fs/bpf"));
    let mounts = fs::read_to_string("/proc/mounts")?;
    assert!(mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    }));
    // Laid out as the agent lays out its own (maps/, links/, retired/).
    fs::create_dir(a.path().join("sub"))?;
    assert_eq!(
        a.entries()?,
        ["links", "maps", "retired", "sub"]
            .map(PathBuf::from)
            .to_vec()
    );
    let (pa, pb) = (a.path().to_path_buf(), b.path().to_path_buf());
    drop(a);
    drop(b);
    assert!(!pa.exists() && !pb.exists());
    Ok(())
}

/// Everything a test typically holds, with the names to check afterwards.
struct Made {
    namespaces: Vec<String>,
    cgroup: PathBuf,
    bpffs: PathBuf,
    manifests: PathBuf,
}

fn make_everything(made: &Mutex<Option<Made>>, then_panic: bool) -> Result<()> {
    let topo = Topology::builder().backends(3).remote_backends(1).build()?;
    let _servers = topo.start_servers(PORT)?;
    let mut cgroup = Cgroup::new()?;
    cgroup.enter_self()?;
    let bpffs = BpffsDir::new()?;
    let manifests = Manifests::new()?;
    manifests.write("a.yaml", "kind: Service\n")?;
    let client = ContinuousClient::start(
        topo.node(),
        topo.backend("b1").addr_v4(PORT),
        ContinuousOptions::default(),
    )?;
    assert!(client.wait_for_successes(5, Duration::from_secs(10)));
    let session = topo
        .node()
        .run(|| TcpSession::connect(topo.backend("r0").addr_v6(PORT)))?;
    *made.lock().unwrap() = Some(Made {
        namespaces: topo.namespace_names(),
        cgroup: cgroup.path().to_path_buf(),
        bpffs: bpffs.path().to_path_buf(),
        manifests: manifests.dir().to_path_buf(),
    });
    for n in topo.namespace_names() {
        assert!(listed_namespaces().contains(&n));
    }
    if then_panic {
        panic!("deliberate panic inside a test body");
    }
    drop(session);
    Ok(())
}

fn assert_all_gone(made: &Made, cgroup_before: &Path) {
    assert_namespaces_gone(&made.namespaces);
    assert!(!made.cgroup.exists(), "{} survived", made.cgroup.display());
    assert!(!made.bpffs.exists(), "{} survived", made.bpffs.display());
    assert!(
        !made.manifests.exists(),
        "{} survived",
        made.manifests.display()
    );
    assert_eq!(own_cgroup().unwrap(), cgroup_before);
}

#[test]
fn dropped_guards_leave_nothing_behind() -> Result<()> {
    require_root();
    let _serial = serial();
    let before = own_cgroup()?;
    let made = Mutex::new(None);
    make_everything(&made, false)?;
    let made = made.into_inner().unwrap().expect("recorded");
    assert_all_gone(&made, &before);
    Ok(())
}

#[test]
fn panic_in_test_body_still_cleans_up() -> Result<()> {
    require_root();
    let _serial = serial();
    let before = own_cgroup()?;
    let made = Mutex::new(None);
    let result = catch_unwind(AssertUnwindSafe(|| make_everything(&made, true)));
    assert!(result.is_err(), "the body must have panicked");
    let made = made
        .into_inner()
        .unwrap()
        .expect("recorded before the panic");
    assert_all_gone(&made, &before);
    Ok(())
}

#[test]
fn sweep_removes_leftovers_of_dead_runs_only() -> Result<()> {
    require_root();
    let _serial = serial();
    // A pid that no longer exists.
    let mut gone = Command::new("true").spawn()?;
    let dead = gone.id();
    gone.wait()?;
    assert!(!Path::new(&format!("/proc/{dead}")).exists());

    let ns_name = format!("ft{dead}-0-node");
    let cg = cgroup2_root()?.join(format!("ft{dead}-0"));
    // A live run's bpffs dir; making it mounts bpffs if it is not.
    let live_bpf = BpffsDir::new()?;
    let bpf = PathBuf::from(format!("/sys/fs/bpf/ferry-test-{dead}-0"));
    let tmp = std::env::temp_dir().join(format!("ferry-test-{dead}-manifests-x"));
    // The explain socket a killed Ferry on that bpffs dir left.
    let socket = lb_userspace::explain::socket_path(&lb_userspace::datapath::BpffsDir::new(&bpf));
    let _fallback = Defer(|| {
        let _ = Command::new("ip")
            .args(["netns", "del", &ns_name])
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir(cg.join("sub"));
        let _ = fs::remove_dir(&cg);
        let _ = fs::remove_dir_all(&bpf);
        let _ = fs::remove_dir_all(&tmp);
        let _ = fs::remove_file(&socket);
    });
    command_stdout(Command::new("ip").args(["netns", "add", &ns_name]))?;
    fs::create_dir(&cg)?;
    fs::create_dir(cg.join("sub"))?;
    fs::create_dir(&bpf)?;
    fs::create_dir(&tmp)?;
    fs::write(tmp.join("a.yaml"), "x: 1\n")?;
    fs::create_dir_all(socket.parent().expect("a dir"))?;
    fs::write(&socket, "")?;
    // An orphan of the "dead run" inside its cgroup.
    let mut orphan = Command::new("sleep");
    orphan.arg("30").stdin(Stdio::null());
    place_command_in(&mut orphan, &cg.join("sub"))?;
    let mut orphan = orphan.spawn()?;

    // Resources of live runs (this one) stay.
    let live_ns = Netns::new("live")?;
    let live_cg = Cgroup::new()?;

    let report = sweep_stale();
    assert!(report.errors.is_empty(), "{report:?}");
    assert!(report.netns.contains(&ns_name), "{report:?}");
    assert!(report.cgroups.contains(&cg), "{report:?}");
    assert!(report.bpffs_dirs.contains(&bpf), "{report:?}");
    assert!(report.temp_dirs.contains(&tmp), "{report:?}");
    assert!(report.explain_sockets.contains(&socket), "{report:?}");
    assert!(!socket.exists());
    assert_namespaces_gone(std::slice::from_ref(&ns_name));
    assert!(!cg.exists() && !bpf.exists() && !tmp.exists());
    // The orphan was killed by cgroup.kill.
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(st) = orphan.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            orphan.kill()?;
            orphan.wait()?;
            break None;
        }
        thread::sleep(Duration::from_millis(10));
    };
    assert!(status.is_some(), "the orphan survived the sweep");

    assert!(listed_namespaces().contains(&live_ns.name().to_string()));
    assert!(live_cg.path().exists() && live_bpf.path().exists());
    Ok(())
}

const STUB: &str = r#"#!/bin/sh
# Stand-in for the ferry binary in the harness' own tests.
sub="$1"; shift
case "$sub" in
standalone)
    echo "$*" > "$STUB_DIR/argv"
    echo "start $$" >> "$STUB_DIR/events"
    if [ -n "$STUB_EXIT" ]; then echo "stub: exiting as asked"; exit 3; fi
    trap 'echo "term $$" >> "$STUB_DIR/events"; exit 0' TERM
    sleep 0.2
    cp "$STUB_DIR/services.ready" "$STUB_DIR/services.json"
    echo "stub: ready"
    i=0
    while [ "$i" -lt 600 ]; do sleep 0.1; i=$((i+1)); done
    ;;
services)
    if [ "$1" != "--bpffs-dir" ] || [ "$3" != "-o" ] || [ "$4" != "json" ]; then
        echo "bad args: $*" >&2; exit 2
    fi
    if [ -f "$STUB_DIR/services.json" ]; then cat "$STUB_DIR/services.json"; else echo '[]'; fi
    ;;
cleanup)
    echo "cleanup $*" >> "$STUB_DIR/events"
    ;;
*)
    echo "unknown subcommand $sub" >&2; exit 2
    ;;
esac
"#;

fn pid_alive(pid: u32) -> bool {
    // A zombie would still have /proc/<pid>; Ferry reaps, so this is exact.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn ferry_guard_with_a_stub_binary() -> Result<()> {
    require_root();
    let _serial = serial();
    let stub_dir = tempfile::Builder::new()
        .prefix(&format!("ferry-test-{}-stub-", std::process::id()))
        .tempdir()?;
    let dir = stub_dir.path();
    let stub = dir.join("ferry");
    fs::write(&stub, STUB)?;
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755))?;
    fs::write(
        dir.join("services.ready"),
        json!([{ "frontend": "10.96.0.10:80/TCP", "backends": ["10.244.0.10:8080"] }]).to_string(),
    )?;
    let events = || fs::read_to_string(dir.join("events")).unwrap_or_default();

    let cgroup = Cgroup::new()?;
    let bpffs = BpffsDir::new()?;
    let manifests = Manifests::new()?;
    let opts = FerryOptions::new(manifests.dir(), cgroup.path(), bpffs.path())
        .binary(&stub)
        .node("node-1", [NODE_V4.into(), NODE_V6.into()])
        .arg("--extra")
        .env("STUB_DIR", dir.to_str().unwrap());

    // Never the host's root cgroup, never a foreign bpffs dir.
    let root = cgroup2_root()?;
    let err = Ferry::start(FerryOptions::new(manifests.dir(), &root, bpffs.path()).binary(&stub))
        .expect_err("root cgroup must be refused");
    assert!(format!("{err:#}").contains("root cgroup"), "{err:#}");
    let err = Ferry::start(
        FerryOptions::new(manifests.dir(), cgroup.path(), Path::new("/sys/fs/bpf")).binary(&stub),
    )
    .expect_err("bpffs root must be refused");
    assert!(format!("{err:#}").contains("bpffs dir"), "{err:#}");

    let frontend: SocketAddr = "10.96.0.10:80".parse()?;
    let mut ferry = Ferry::start(opts.clone())?;
    let v = ferry.wait_for_frontend(frontend)?;
    assert_eq!(v[0]["backends"][0], "10.244.0.10:8080");
    let argv = fs::read_to_string(dir.join("argv"))?;
    // Without --host-netns the guard keeps Ferry off the host's interfaces.
    assert_eq!(
        argv.trim(),
        format!(
            "--manifests {} --cgroup {} --bpffs-dir {} --node-name node-1 --node-ip 10.244.0.1 --node-ip fd00:244::1 --extra --north-south false",
            manifests.dir().display(),
            cgroup.path().display(),
            bpffs.path().display()
        )
    );
    assert!(ferry.log().contains("stub: ready"), "{}", ferry.log());
    let err = ferry
        .wait_for_timeout("the impossible", Duration::from_millis(300), |_| false)
        .expect_err("must time out");
    assert!(format!("{err:#}").contains("timed out"), "{err:#}");

    // kill -9: gone at once, no SIGTERM handler ran, nothing cleaned.
    let pid1 = ferry.pid().expect("running");
    ferry.kill9()?;
    assert!(!ferry.is_running() && !pid_alive(pid1));
    assert!(
        !events().contains("term") && !events().contains("cleanup"),
        "{}",
        events()
    );

    // restart: a new process, which publishes again.
    fs::remove_file(dir.join("services.json"))?;
    ferry.restart()?;
    let pid2 = ferry.pid().expect("running");
    assert_ne!(pid1, pid2);
    ferry.wait_for_frontend(frontend)?;
    ferry.restart()?; // a running Ferry is stopped with SIGTERM first
    assert!(events().contains(&format!("term {pid2}")), "{}", events());
    let pid3 = ferry.pid().expect("running");
    // Let it install its SIGTERM trap before stopping it.
    wait_until("the stub's trap", Duration::from_secs(5), POLL, || {
        Ok(if ferry.log().ends_with("stub: ready\n") {
            Wait::Done(())
        } else {
            Wait::Pending(ferry.log_tail(3))
        })
    })?;

    // Drop: SIGTERM, then cleanup with the same dirs.
    drop(ferry);
    assert!(!pid_alive(pid3));
    let ev = events();
    assert!(ev.contains(&format!("term {pid3}")), "{ev}");
    assert!(
        ev.trim_end().ends_with(&format!(
            "cleanup --bpffs-dir {} --cgroup {}",
            bpffs.path().display(),
            cgroup.path().display()
        )),
        "{ev}"
    );

    // A Ferry that dies makes waits fail at once, with its log.
    fs::remove_file(dir.join("services.json"))?;
    let mut dying = Ferry::start(opts.env("STUB_EXIT", "1"))?;
    let t = Instant::now();
    let err = dying.wait_for_frontend(frontend).expect_err("it exited");
    assert!(t.elapsed() < Duration::from_secs(5));
    let msg = format!("{err:#}");
    assert!(
        msg.contains("not running") && msg.contains("exiting as asked"),
        "{msg}"
    );
    assert_eq!(dying.exit_status().and_then(|s| s.code()), Some(3));
    Ok(())
}
