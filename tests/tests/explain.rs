//! `ferry explain` end to end (issue 15): a running standalone Ferry
//! answers for its model, and what explain says a client gets is where
//! real connections go.
//!
//! Privileged: run as root, one test at a time:
//! `cargo test -p tests --test explain -- --test-threads=1`.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::collections::BTreeSet;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use tests::fixture::*;
use tests::*;

/// `ferry explain ARGS -o json --bpffs-dir DIR`, parsed.
fn explain_json(ferry: &Ferry, args: &[&str]) -> Result<Value> {
    let out = explain_raw(ferry, args, true)?;
    serde_json::from_str(&out).with_context(|| format!("ferry explain printed no JSON: {out}"))
}

fn explain_raw(ferry: &Ferry, args: &[&str], json: bool) -> Result<String> {
    let dir = ferry.options().bpffs_dir.to_string_lossy().into_owned();
    let mut all = vec!["explain"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--bpffs-dir", &dir]);
    if json {
        all.extend_from_slice(&["-o", "json"]);
    }
    let out = ferry.cli(&all)?;
    if !out.status.success() {
        bail!(
            "ferry {all:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The reason explain gives for the endpoint at `ip` (clients on the node).
fn reason_of(f: &Value, ip: &str) -> String {
    f["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["address"] == ip)
        .map_or_else(
            || "absent".into(),
            |e| e["reason"].as_str().unwrap_or("").into(),
        )
}

/// The backend names (as the who-am-I servers answer) of `addrs`.
fn names_at(env: &Env, addrs: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    addrs
        .into_iter()
        .map(|a| {
            env.topo
                .backends()
                .iter()
                .find(|b| env.addr4(&b.name) == a)
                .map_or(a.clone(), |b| b.name.clone())
        })
        .collect()
}

/// internalTrafficPolicy Local with a ready local pair, a not-ready local
/// endpoint and a ready remote one; a Service with no endpoints; a
/// Service with session affinity. For each, explain's backends and client
/// outcome are checked against real connects from the node namespace.
#[test]
fn explain_agrees_with_where_connections_go() -> Result<()> {
    require_root();
    let _serial = serial();
    let web = Service::new("default", "web")
        .cluster_ip("10.96.0.60")
        .port(ServicePort::tcp(80).target(PORT))
        .internal_traffic_policy("Local")
        .to_value();
    let empty = Service::new("default", "empty")
        .cluster_ip("10.96.0.61")
        .port(ServicePort::tcp(80).target(PORT))
        .to_value();
    let sticky = Service::new("default", "sticky")
        .cluster_ip("10.96.0.62")
        .port(ServicePort::tcp(80).target(PORT))
        .session_affinity_client_ip(60)
        .to_value();
    let mut env = Env::running(3, 1, &[])?;
    let web_slice = tcp_slice(
        "web",
        "web-1",
        AddressType::IPv4,
        &[
            env.ep("b0", NODE),
            env.ep("b1", NODE),
            env.ep("b2", NODE).ready(false).serving(false),
            Endpoint::new(env.backend("r0").v4.to_string()).node("node-2"),
        ],
    );
    let sticky_slice = tcp_slice(
        "sticky",
        "sticky-1",
        AddressType::IPv4,
        &[env.ep("b0", NODE), env.ep("b1", NODE), env.ep("b2", NODE)],
    );
    env.apply(&[web, empty, sticky, web_slice, sticky_slice])?;
    env.wait_backends("10.96.0.60:80/TCP", &[env.addr4("b0"), env.addr4("b1")])?;
    env.wait_empty("10.96.0.61:80/TCP", "reject")?;
    env.wait_backends(
        "10.96.0.62:80/TCP",
        &["b0", "b1", "b2"].map(|b| env.addr4(b)),
    )?;
    let node_ns = env.node().path().to_string_lossy().into_owned();

    // internalTrafficPolicy Local: the reasons, the maps, and the servers
    // that really answer.
    let e = explain_json(env.ferry(), &["10.96.0.60:80/TCP", "--client", &node_ns])?;
    let f = &e["frontends"][0];
    ensure!(
        f["kind"] == "ClusterIP" && f["service"] == "default/web",
        "{e:#}"
    );
    ensure!(f["node_clients"]["selection"] == "Local", "{e:#}");
    let b = |n: &str| env.backend(n).v4.to_string();
    assert_eq!(reason_of(f, &b("b0")), "ready", "{e:#}");
    assert_eq!(reason_of(f, &b("b1")), "ready", "{e:#}");
    assert_eq!(reason_of(f, &b("b2")), "not-ready", "{e:#}");
    assert_eq!(
        reason_of(f, &b("r0")),
        "internal-traffic-policy-local",
        "{e:#}"
    );
    ensure!(f["matches"] == true, "maps and model differ: {e:#}");
    let in_maps: Vec<String> = f["maps"]["backends"]
        .as_array()
        .context("maps.backends")?
        .iter()
        .map(|b| b["address"].as_str().unwrap_or("").to_string())
        .collect();
    let explained = names_at(&env, in_maps);
    // Two backends: 40 connects miss one with probability 2^-39.
    let seen = env.servers_seen(sa("10.96.0.60:80"), 40)?;
    assert_eq!(
        seen, explained,
        "explain's backends vs where connects went: {e:#}"
    );
    assert_eq!(explained, names(&["b0", "b1"]));

    // No endpoints: explain names the errno the connect really fails with.
    let e = explain_json(env.ferry(), &["default/empty", "--client", &node_ns])?;
    let f = &e["frontends"][0];
    let outcome = f["client"]["outcome"].as_str().unwrap_or("");
    ensure!(outcome.contains("ECONNREFUSED (111)"), "{e:#}");
    assert_eq!(
        env.connect_errno(sa("10.96.0.61:80")),
        Some(Some(libc::ECONNREFUSED))
    );

    // Session affinity: the entry explain shows is where connects go.
    let seen = tcp_spread(env.node(), sa("10.96.0.62:80"), 5)?;
    ensure!(
        seen.len() == 1,
        "affinity: one backend expected, got {seen:?}"
    );
    let chosen = seen.into_keys().next().expect("one");
    let e = explain_json(env.ferry(), &["10.96.0.62:80/TCP", "--client", &node_ns])?;
    let affinity = &e["frontends"][0]["client"]["affinity"];
    ensure!(affinity["in_force"] == true, "{e:#}");
    let sticky_backend = affinity["backend"].as_str().unwrap_or("").to_string();
    assert_eq!(names_at(&env, [sticky_backend]), names(&[&chosen]), "{e:#}");

    // The table people read.
    let table = explain_raw(env.ferry(), &["default/web"], false)?;
    for needle in [
        "Service default/web: ClusterIP frontend 10.96.0.60:80/TCP",
        "dropped: internalTrafficPolicy Local, endpoint on another node",
        "dropped: not ready",
        "The maps match the desired state.",
    ] {
        ensure!(table.contains(needle), "{needle:?} missing from:\n{table}");
    }
    // An unknown frontend is an error naming it.
    let dir = env
        .ferry()
        .options()
        .bpffs_dir
        .to_string_lossy()
        .into_owned();
    let out = env
        .ferry()
        .cli(&["explain", "10.96.0.99:80/TCP", "--bpffs-dir", &dir])?;
    ensure!(
        !out.status.success(),
        "explaining an unknown frontend must fail"
    );
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("no Service serves 10.96.0.99:80/TCP"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
