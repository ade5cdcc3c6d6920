//! End-to-end tests of the datapath's life: endpoints changing under a
//! running client, the agent killed and restarted, bad manifests, attaching
//! and cleaning up. Privileged: run as root with
//! `FERRY_BIN=target/release/ferry cargo test --release -p tests --test lifecycle -- --test-threads=1`.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Result, ensure};
use tests::fixture::*;
use tests::*;

const FE: &str = "10.96.0.10:80/TCP";

fn fe_addr() -> SocketAddr {
    "10.96.0.10:80".parse().expect("an address")
}

const HTTP: [Port; 1] = [Port {
    name: "http",
    protocol: "TCP",
    port: 80,
    target: PORT,
}];

/// Writes web.yaml: Service default/web (10.96.0.10, TCP 80 → 8080) with
/// the first `n` backends as endpoints.
fn write_web(env: &Env, n: usize) -> Result<Vec<String>> {
    let backends = env.first(n);
    env.write(
        "web.yaml",
        &service_with("web", "10.96.0.10", &HTTP, &backends),
    )?;
    Ok(expected_addrs(&backends, "10.96.0.10", PORT))
}

/// Successes per server between two snapshots.
fn delta(before: &ContinuousStats, after: &ContinuousStats) -> BTreeMap<String, u64> {
    after
        .per_server
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v - before.per_server.get(k).copied().unwrap_or(0),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Lets the client make `n` more successful requests (bounded); returns
/// the stats before and after.
fn run_for(client: &ContinuousClient, n: u64) -> (ContinuousStats, ContinuousStats) {
    let before = client.stats();
    assert!(
        client.wait_for_successes(before.successes + n, Duration::from_secs(20)),
        "the client stalled: {:?}",
        client.stats()
    );
    (before, client.stats())
}

#[test]
fn scaling_endpoints_under_a_continuous_client_loses_nothing() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(5, &[PORT])?;
    let expected = write_web(&env, 1)?;
    let ferry = env.start(&[FE])?;
    wait_backends(ferry, FE, &expected)?;

    let client = ContinuousClient::start(env.node(), fe_addr(), ContinuousOptions::default())?;
    let (_, first) = run_for(&client, 20);
    assert_eq!(delta(&ContinuousStats::default(), &first).len(), 1);
    for n in [3, 5, 2, 4] {
        let expected = write_web(&env, n)?;
        wait_backends(env.ferry(), FE, &expected)?;
        // The client is sequential: at most one request straddles the
        // moment the new set was seen.
        let (before, after) = run_for(&client, 80);
        let got = delta(&before, &after);
        let members = names_of(&env.first(n));
        for m in &members {
            assert!(
                got.contains_key(m),
                "step to {n}: backend {m} got no traffic: {got:?}"
            );
        }
        for (server, count) in &got {
            assert!(
                members.contains(server) || *count <= 1,
                "step to {n}: removed backend {server} still got {count} requests: {got:?}"
            );
        }
        assert_eq!(after.failures, 0, "step to {n}: {after:?}");
    }
    let stats = client.stop();
    assert_eq!(stats.failures, 0, "{:?}", stats.first_errors);
    assert_eq!(
        stats.per_server.keys().cloned().collect::<Vec<_>>(),
        ["b0", "b1", "b2", "b3", "b4"],
        "{stats:?}"
    );
    Ok(())
}

#[test]
fn sigkill_and_restart_keep_translating_and_adopt_the_state() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(3, &[PORT])?;
    let expected = write_web(&env, 2)?;
    let ferry = env.start(&[FE])?;
    let before = wait_backends(ferry, FE, &expected)?;
    let bpffs = env.bpffs.path().to_path_buf();
    let cgroup = env.cgroup.path().to_path_buf();
    let generation = one_generation(&bpffs)?;
    wait_attached(&cgroup, &ferry_programs())?;

    let client = ContinuousClient::start(env.node(), fe_addr(), ContinuousOptions::default())?;
    run_for(&client, 30);

    // Killed: no cleanup runs, the pinned links keep the programs attached
    // and the pinned maps keep the Services.
    env.ferry().kill9()?;
    assert!(!env.ferry().is_running());
    let (b, a) = run_for(&client, 150);
    assert_eq!(a.failures, 0, "{a:?}");
    let got = delta(&b, &a);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        ["b0", "b1"],
        "{got:?}"
    );
    assert_eq!(one_generation(&bpffs)?, generation);
    assert_eq!(attached(&cgroup)?, ferry_programs());
    let while_dead = view_of(env.ferry(), FE)?;
    assert_eq!(backend_addrs(&while_dead), expected, "{while_dead}");

    // Restarted with nothing changed: the Service is adopted (same backend
    // set id, counters kept), one generation of links, one program per
    // attach type.
    let ferry = env.ferry();
    ferry.restart()?;
    wait_log(ferry, "the second start to sync", |log| {
        log.split("=== harness: start #2")
            .nth(1)
            .is_some_and(|second| second.contains("datapath attached") && second.contains("synced"))
    })?;
    assert!(ferry.is_running());
    let after = view_of(ferry, FE)?;
    assert_eq!(backend_addrs(&after), expected, "{after}");
    assert_eq!(
        after["service_id"], before["service_id"],
        "{before} {after}"
    );
    assert!(
        after["translated"].as_u64() >= while_dead["translated"].as_u64(),
        "counters were reset: {while_dead} then {after}"
    );
    let new_generation = one_generation(&bpffs)?;
    ensure!(
        new_generation != generation,
        "the restart attached no new generation"
    );
    wait_attached(&cgroup, &ferry_programs())?;
    let (_, a) = run_for(&client, 50);
    assert_eq!(a.failures, 0, "{a:?}");

    // And the restarted agent applies changes.
    let expected = write_web(&env, 3)?;
    wait_backends(env.ferry(), FE, &expected)?;
    let (b, a) = run_for(&client, 80);
    assert!(delta(&b, &a).contains_key("b2"), "{:?}", delta(&b, &a));
    let stats = client.stop();
    assert_eq!(stats.failures, 0, "{:?}", stats.first_errors);
    Ok(())
}

#[test]
fn bad_manifests_are_reported_and_do_not_disturb_good_ones() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(2, &[PORT])?;
    write_web(&env, 1)?;
    env.manifests.write(
        "broken.yaml",
        "kind: Service\nmetadata: [unclosed\n  name: x\n",
    )?;
    let b1 = env.backend("b1").v4;
    let badip = |ip: &str| {
        [
            service("badip", ip, &HTTP).to_value(),
            slice("badip", "badip-1", AddressType::IPv4, &HTTP, [local(b1)]),
        ]
    };
    env.write("badip.yaml", &badip("10.96.0.999"))?;
    env.write(
        "port0.yaml",
        &[service("port0", "10.96.0.12", &[tcp("http", 0, PORT)]).to_value()],
    )?;
    env.manifests.write(
        "widget.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: gizmo\n  namespace: default\n",
    )?;
    let ferry = env.start(&[FE])?;
    let good = view_of(ferry, FE)?;
    let log = wait_log(ferry, "every bad object reported", |log| {
        ["broken.yaml", "badip", "port0", "gizmo"].iter().all(|n| {
            log.lines()
                .any(|l| l.contains("invalid object") && l.contains(n))
        })
    })?;
    let line_of = |needle: &str| {
        log.lines()
            .find(|l| l.contains("invalid object") && l.contains(needle))
            .unwrap_or_else(|| panic!("no line about {needle}:\n{log}"))
            .to_string()
    };
    let broken = line_of("broken.yaml");
    assert!(broken.contains("document 1"), "{broken}");
    let bad = line_of("default/badip");
    assert!(
        bad.contains("invalid clusterIP") && bad.contains("10.96.0.999"),
        "{bad}"
    );
    let port0 = line_of("default/port0");
    assert!(
        port0.contains("port 0") && port0.contains("out of range"),
        "{port0}"
    );
    let widget = line_of("gizmo");
    assert!(
        widget.contains("widget.yaml") && widget.contains("unsupported kind"),
        "{widget}"
    );

    // The good Service works, and nothing of the bad ones was installed.
    let r = env.node().run(|| tcp_request(fe_addr()))?;
    assert_eq!(r.server, "b0");
    let all = env.ferry().services_json()?;
    let installed: Vec<&str> = all
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|v| v["frontend"].as_str())
        .collect();
    assert_eq!(installed, [FE], "{all}");
    assert!(env.ferry().is_running());

    // Fixing one bad Service brings it up without disturbing the good one.
    let client = ContinuousClient::start(env.node(), fe_addr(), ContinuousOptions::default())?;
    run_for(&client, 30);
    env.write("badip.yaml", &badip("10.96.0.11"))?;
    wait_frontend(env.ferry(), "10.96.0.11:80/TCP")?;
    let r = env
        .node()
        .run(|| tcp_request("10.96.0.11:80".parse().expect("an address")))?;
    assert_eq!(r.server, "b1");
    run_for(&client, 30);
    let stats = client.stop();
    assert_eq!(stats.failures, 0, "{:?}", stats.first_errors);
    assert_eq!(
        stats.per_server.keys().cloned().collect::<Vec<_>>(),
        ["b0"],
        "{stats:?}"
    );
    let still = view_of(env.ferry(), FE)?;
    assert_eq!(still["service_id"], good["service_id"], "{good} {still}");
    assert_eq!(backend_addrs(&still), backend_addrs(&good));
    assert!(env.ferry().is_running());
    Ok(())
}

#[test]
fn every_program_attaches_and_cleanup_detaches_everything() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(1, &[PORT])?;
    write_web(&env, 1)?;
    let cgroup = env.cgroup.path().to_path_buf();
    let bpffs = env.bpffs.path().to_path_buf();
    assert_eq!(attached(&cgroup)?, []);
    env.start(&[FE])?;

    // Every cgroup program passed the verifier and are attached, once each.
    assert_eq!(attached(&cgroup)?, ferry_programs());
    one_generation(&bpffs)?;
    let r = env.node().run(|| tcp_request(fe_addr()))?;
    assert_eq!(r.peer, Some(fe_addr()));

    // SIGTERM stops the agent but leaves the datapath in place.
    let status = env.ferry().terminate()?;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert_eq!(attached(&cgroup)?, ferry_programs());
    let r = env.node().run(|| tcp_request(fe_addr()))?;
    assert_eq!(r.server, "b0");

    // Dropping the guard runs `ferry cleanup`: nothing attached, no pins,
    // and the ClusterIP is just an address again.
    drop(env.ferry.take());
    wait_attached(&cgroup, &[])?;
    assert!(!bpffs.exists(), "{} survived cleanup", bpffs.display());
    let e = env
        .node()
        .run(|| tcp_connect_err(fe_addr()))
        .expect("must fail");
    assert_eq!(e.errno, Some(libc::ENETUNREACH), "{e}");
    Ok(())
}

/// `bpftool map show pinned PATH` as JSON.
fn pinned_map_info(path: &std::path::Path) -> Result<serde_json::Value> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(path)
        .output()?;
    ensure!(out.status.success(), "bpftool: {:?}", out);
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Pins at `pin` a FRONTENDS4 as versions before BTF maps created it:
/// this version's key and value sizes and capacity, no BTF types.
fn create_untyped_frontends4(pin: &std::path::Path, flags: u32) -> Result<()> {
    let status = std::process::Command::new("bpftool")
        .args(["map", "create"])
        .arg(pin)
        .args([
            "type", "hash", "key", "8", "value", "16", "entries", "262144",
        ])
        .args(["name", "FRONTENDS4", "flags", &flags.to_string()])
        .status()?;
    ensure!(status.success(), "bpftool map create: {status}");
    Ok(())
}

#[test]
fn a_pinned_map_left_with_other_flags_is_recreated() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(1, &[PORT])?;
    write_web(&env, 1)?;
    // What an older Ferry left: FRONTENDS4 with this version's key and value
    // sizes and capacity, but preallocated (flags 0). Reused as is, its
    // elements would not come from the slab as this version's do.
    let maps = env.bpffs.path().join("maps");
    std::fs::create_dir_all(&maps)?;
    let pin = maps.join("FRONTENDS4");
    create_untyped_frontends4(&pin, 0)?;
    let old_id = pinned_map_info(&pin)?["id"].as_u64();
    assert_eq!(pinned_map_info(&pin)?["flags"].as_u64(), Some(0));

    env.start(&[FE])?;
    let info = pinned_map_info(&pin)?;
    assert_ne!(info["id"].as_u64(), old_id, "the old pin was reused");
    assert_eq!(
        info["flags"].as_u64(),
        Some(u64::from(lb_common::map_flags::LOOKUP)),
        "{info}"
    );
    let r = env.node().run(|| tcp_request(fe_addr()))?;
    assert_eq!(r.server, "b0");
    assert_eq!(r.peer, Some(fe_addr()));
    Ok(())
}

/// Issue 13: a restart onto a map of another layout (here FRONTENDS4 as
/// the versions before BTF maps left it: the same sizes and flags, no key
/// or value types) replaces it without a gap. The running programs hold
/// their map, not its pin, so swapping the pin under them changes nothing
/// for them; the new generation must then fill a fresh map before the old
/// links go, with a client connecting all along.
#[test]
fn a_layout_change_under_load_is_handed_over_without_a_gap() -> Result<()> {
    require_root();
    let _serial = serial();
    let mut env = Env::new(3, &[PORT])?;
    let expected = write_web(&env, 2)?;
    let ferry = env.start(&[FE])?;
    wait_backends(ferry, FE, &expected)?;
    let bpffs = env.bpffs.path().to_path_buf();
    let pin = bpffs.join("maps").join("FRONTENDS4");
    let typed_id = pinned_map_info(&pin)?["id"].as_u64();
    assert!(
        pinned_map_info(&pin)?["btf_id"]
            .as_u64()
            .is_some_and(|id| id > 0),
        "FRONTENDS4 is not a BTF map: {}",
        pinned_map_info(&pin)?
    );

    let client = ContinuousClient::start(env.node(), fe_addr(), ContinuousOptions::default())?;
    run_for(&client, 30);
    env.ferry().kill9()?;
    std::fs::remove_file(&pin)?;
    create_untyped_frontends4(&pin, lb_common::map_flags::LOOKUP)?;
    let untyped_id = pinned_map_info(&pin)?["id"].as_u64();
    // Still translating with the map the programs hold.
    let (_, a) = run_for(&client, 30);
    assert_eq!(a.failures, 0, "{a:?}");

    env.ferry().restart()?;
    wait_log(env.ferry(), "the second start to sync", |log| {
        log.split("=== harness: start #2")
            .nth(1)
            .is_some_and(|second| second.contains("synced"))
    })?;
    let (_, a) = run_for(&client, 100);
    assert_eq!(a.failures, 0, "{a:?}");
    let info = pinned_map_info(&pin)?;
    assert_ne!(
        info["id"].as_u64(),
        untyped_id,
        "the untyped pin was reused"
    );
    assert_ne!(info["id"].as_u64(), typed_id, "{info}");
    assert!(info["btf_id"].as_u64().is_some_and(|id| id > 0), "{info}");
    // The handover is complete: one generation of links, no retired pin.
    one_generation(&bpffs)?;
    let retired: Vec<_> = std::fs::read_dir(bpffs.join("retired"))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(retired.is_empty(), "retired pins left: {retired:?}");
    let expected = write_web(&env, 3)?;
    wait_backends(env.ferry(), FE, &expected)?;
    let stats = client.stop();
    assert_eq!(stats.failures, 0, "{:?}", stats.first_errors);
    Ok(())
}

/// `bpftool btf dump map pinned PATH key|value format c`: the C
/// declaration of a pinned map's key or value type.
fn btf_dump(pin: &std::path::Path, which: &str) -> Result<String> {
    let out = std::process::Command::new("bpftool")
        .args(["btf", "dump", "map", "pinned"])
        .arg(pin)
        .args([which, "format", "c"])
        .output()?;
    ensure!(out.status.success(), "bpftool btf dump {which}: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `bpftool -j map dump pinned PATH`: the entries with their formatted
/// (BTF-typed) key and value.
fn map_dump(pin: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    let out = std::process::Command::new("bpftool")
        .args(["-j", "map", "dump", "pinned"])
        .arg(pin)
        .output()?;
    ensure!(out.status.success(), "bpftool map dump: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Issue 15: every pinned map carries its key and value types, so that
/// bpftool names their fields. The field names of each map's key and value
/// type (empty: a plain integer); the maps this test fills are dumped too
/// and their formatted entries checked.
#[test]
fn every_pinned_map_dumps_with_named_fields() -> Result<()> {
    use lb_common::maps as m;
    require_root();
    let _serial = serial();
    let mut env = Env::new(2, &[PORT])?;
    let backends = env.first(2);
    let mut objects = service_with("web", "10.96.0.10", &HTTP, &backends);
    objects[0] = service("web", "10.96.0.10", &[])
        .type_("NodePort")
        .port(HTTP[0].service_port().node_port(30080))
        .session_affinity_client_ip(60)
        .to_value();
    objects.extend(service_with("web6", "fd00:96::a", &HTTP, &backends));
    env.write("web.yaml", &objects)?;
    env.start(&[FE, "[fd00:96::a]:80/TCP"])?;
    let r = env.node().run(|| tcp_request(fe_addr()))?;
    assert_eq!(r.peer, Some(fe_addr()));

    let frontend_key = ["addr", "port", "proto"].as_slice();
    let backend = ["addr", "port", "proto", "flags"].as_slice();
    let peers = ["peers", "next"].as_slice();
    let fields: [(&str, &[&str], &[&str]); 27] = [
        (
            m::FRONTENDS4,
            frontend_key,
            &["service_id", "count", "flags", "affinity_timeout_secs"],
        ),
        (
            m::FRONTENDS6,
            frontend_key,
            &["service_id", "count", "flags", "affinity_timeout_secs"],
        ),
        (m::SLOTS, &["service_id", "slot"], &[]),
        (m::BACKENDS4, &[], backend),
        (m::BACKENDS6, &[], backend),
        (m::CLUSTER_IPS4, &[], &[]),
        (m::CLUSTER_IPS6, &[], &[]),
        (m::SOCK_PEERS4, &[], peers),
        (m::SOCK_PEERS6, &[], peers),
        (m::SOCKETS4, &[], &["cookie", "peer"]),
        (m::SOCKETS6, &[], &["cookie", "peer"]),
        (
            m::AFFINITY,
            &["netns_cookie", "service_id"],
            &["backend_id", "slot", "last_used_ns"],
        ),
        (m::COUNTERS, &[], &["translated", "refused"]),
        (m::SERVICE_NAMES, &[], &["len", "bytes"]),
        (m::NODEPORT_BINDS, &["port", "proto"], &[]),
        (m::CONFIG, &[], &["host_netns_cookie"]),
        (
            m::EXTERNAL_FRONTENDS4,
            frontend_key,
            &["table", "count", "flags"],
        ),
        (
            m::EXTERNAL_FRONTENDS6,
            frontend_key,
            &["table", "count", "flags"],
        ),
        // A map of maps: its values are inner map ids, which BTF does not
        // describe (bpftool prints them as numbers).
        (m::MAGLEV, &[], &[]),
        (m::EXTERNAL_BACKENDS, &[], &["addr", "port", "flags"]),
        (
            m::FLOWS4,
            &["saddr", "daddr", "sport", "dport", "proto"],
            &["saddr", "daddr", "last_seen_ns"],
        ),
        (
            m::FLOWS6,
            &["saddr", "daddr", "sport", "dport", "proto"],
            &["saddr", "daddr", "last_seen_ns"],
        ),
        (
            m::SOURCE_RANGES4,
            &["frontend_addr", "port", "proto", "source"],
            &[],
        ),
        (
            m::SOURCE_RANGES6,
            &["frontend_addr", "port", "proto", "source"],
            &[],
        ),
        (m::INTERFACE_ADDRS, &[], &["addr4", "addr6"]),
        (
            m::EXTERNAL_CONFIG,
            &[],
            &["snat4", "snat6", "maglev_size", "snat_port_min"],
        ),
        (m::EXTERNAL_COUNTERS, &[], &[]),
    ];
    assert_eq!(
        fields.iter().map(|f| f.0).collect::<Vec<_>>(),
        m::ALL
            .iter()
            .filter(|d| d.pinned)
            .map(|d| d.name)
            .collect::<Vec<_>>(),
        "every pinned map is checked"
    );
    let maps = env.bpffs.path().join("maps");
    for (name, key_fields, value_fields) in fields {
        if m::def(name).is_some_and(|d| d.inner.is_some()) {
            continue;
        }
        let pin = maps.join(name);
        for (which, want) in [("key", key_fields), ("value", value_fields)] {
            // SK_STORAGE keys are socket fds: their BTF key is an int.
            let c = btf_dump(&pin, which)?;
            for f in want {
                assert!(
                    c.contains(&format!(" {f};")) || c.contains(&format!(" {f}[")),
                    "{name} {which} has no field {f}:\n{c}"
                );
            }
        }
    }
    // What the maps hold, as bpftool shows it: named fields, addresses as
    // their bytes where the type is a byte array.
    for (name, want) in [
        (m::FRONTENDS4, ["service_id", "count"].as_slice()),
        (m::FRONTENDS6, &["service_id", "count"]),
        (m::BACKENDS4, backend),
        (m::BACKENDS6, backend),
        (m::AFFINITY, &["backend_id", "last_used_ns"]),
        (m::SERVICE_NAMES, &["len", "bytes"]),
    ] {
        let entries = map_dump(&maps.join(name))?;
        let first = entries.first().unwrap_or_else(|| panic!("{name} is empty"));
        let value = &first["formatted"]["value"];
        for f in want {
            assert!(value.get(f).is_some(), "{name}: no {f} in {first}");
        }
    }
    Ok(())
}
