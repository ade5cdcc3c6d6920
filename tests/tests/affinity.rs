//! sessionAffinity ClientIP end to end (issue 3): at the socket layer a
//! client is its network namespace (a pod has one), so connects from one
//! namespace keep their backend until timeoutSeconds after the last one.
//!
//! Privileged: run as root, one test at a time:
//! `cargo test -p tests --test affinity -- --test-threads=1`.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::collections::BTreeSet;
use std::thread;
use std::time::Duration;

use anyhow::{Result, ensure};
use tests::fixture::*;
use tests::*;

const TIMEOUT_SECS: u32 = 2;
/// Longer than the affinity timeout: the next connect chooses afresh.
const EXPIRE: Duration = Duration::from_secs(3);
const ROUNDS: usize = 6;

/// `n` connects from `ns` to `target`; all must hit one backend, which is
/// returned.
fn sticky_pick(ns: &Netns, target: std::net::SocketAddr, n: usize) -> Result<String> {
    let seen = tcp_spread(ns, target, n)?;
    ensure!(
        seen.len() == 1,
        "{n} consecutive connects from {} to {target} must hit one backend with \
         sessionAffinity ClientIP, got {seen:?}",
        ns.name()
    );
    Ok(seen.into_keys().next().expect("one entry"))
}

/// Stickiness per client namespace; independent choices per namespace;
/// expiry after timeoutSeconds; a new choice when the chosen backend
/// leaves; affinity switched off and on at run time.
///
/// Clients: the node namespace and two backend namespaces (b3, b4) that are
/// not endpoints of the Service, three distinct network namespaces in the
/// test's cgroup. Endpoints: b0, b1, b2.
///
/// Random choices are asserted only in aggregate: over 6 rounds (each
/// after the timeout expired) the three clients all pick the same backend
/// in every round with probability (1/9)^6 ≈ 2e-6, and none of them ever
/// changes its backend with probability (1/3)^15 ≈ 7e-8.
#[test]
fn session_affinity_client_ip() -> Result<()> {
    require_root();
    let _serial = serial();
    let svc = |affinity: bool| {
        let s = Service::new("default", "sticky")
            .cluster_ip("10.96.0.50")
            .port(ServicePort::tcp(80).target(PORT));
        if affinity {
            s.session_affinity_client_ip(TIMEOUT_SECS)
        } else {
            s
        }
        .to_value()
    };
    let mut env = Env::running(5, 0, &[svc(true)])?;
    let slice = |env: &Env, names: &[&str]| {
        let eps: Vec<Endpoint> = names.iter().map(|b| env.ep(b, NODE)).collect();
        tcp_slice("sticky", "sticky-1", AddressType::IPv4, &eps)
    };
    let fe = "10.96.0.50:80/TCP";
    let target = sa("10.96.0.50:80");
    env.apply(&[svc(true), slice(&env, &["b0", "b1", "b2"])])?;
    env.wait_backends(fe, &["b0", "b1", "b2"].map(|b| env.addr4(b)))?;
    let v = env.ferry().services_json()?;
    assert_eq!(
        frontend(&v, fe).unwrap()["affinity_timeout_secs"],
        TIMEOUT_SECS,
        "{v:#}"
    );

    let clients: [&Netns; 3] = [env.node(), &env.backend("b3").ns, &env.backend("b4").ns];
    // picks[round][client]
    let mut picks: Vec<Vec<String>> = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            thread::sleep(EXPIRE);
        }
        let n = if round == 0 { 20 } else { 5 };
        let mut this = Vec::new();
        for ns in clients {
            this.push(sticky_pick(ns, target, n)?);
        }
        if round == 0 {
            // A pause shorter than the timeout keeps the choice.
            thread::sleep(Duration::from_secs(1));
            assert_eq!(
                sticky_pick(env.node(), target, 1)?,
                this[0],
                "a connect within the timeout must keep the backend"
            );
        }
        picks.push(this);
    }
    eprintln!("picks per round (node, b3, b4): {picks:?}");
    assert!(
        picks
            .iter()
            .any(|p| p.iter().collect::<BTreeSet<_>>().len() > 1),
        "client namespaces must choose independently; every round all chose alike: {picks:?}"
    );
    let changed =
        (0..clients.len()).any(|c| picks.iter().map(|p| &p[c]).collect::<BTreeSet<_>>().len() > 1);
    assert!(
        changed,
        "after the {TIMEOUT_SECS} s timeout the choice must be made afresh; \
         no client ever changed backend over {ROUNDS} rounds: {picks:?}"
    );

    // The node namespace's backend leaves: the next connect picks a
    // remaining one and sticks to it.
    let chosen = sticky_pick(env.node(), target, 3)?;
    let remaining: Vec<&str> = ["b0", "b1", "b2"]
        .into_iter()
        .filter(|b| *b != chosen)
        .collect();
    env.apply(&[svc(true), slice(&env, &remaining)])?;
    env.wait_backends(
        fe,
        &remaining.iter().map(|b| env.addr4(b)).collect::<Vec<_>>(),
    )?;
    let next = sticky_pick(env.node(), target, 10)?;
    assert!(
        remaining.contains(&next.as_str()),
        "after {chosen} left, the client must move to one of {remaining:?}, got {next}"
    );

    // Affinity switched off at run time: connects spread again.
    env.apply(&[svc(false), slice(&env, &remaining)])?;
    env.ferry().wait_for("affinity off", |v| {
        frontend(v, fe).is_some_and(|f| f["affinity_timeout_secs"].is_null())
    })?;
    let spread = env.servers_seen(target, 40)?;
    assert_eq!(
        spread,
        remaining
            .iter()
            .map(std::string::ToString::to_string)
            .collect(),
        "sessionAffinity None: connects spread over the backends"
    );

    // And on again: sticky again.
    env.apply(&[svc(true), slice(&env, &remaining)])?;
    env.ferry().wait_for("affinity on", |v| {
        frontend(v, fe).is_some_and(|f| f["affinity_timeout_secs"] == TIMEOUT_SECS)
    })?;
    sticky_pick(env.node(), target, 20)?;
    Ok(())
}
