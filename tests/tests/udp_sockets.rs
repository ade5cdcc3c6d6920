//! Established flows when endpoints change (issue 3), end to end.
//!
//! A connected UDP socket stays pinned to the backend chosen at connect():
//! every socket-level proxy leaves a resolver asking a deleted backend
//! forever. Ferry destroys the connected UDP sockets it translated to a
//! departed backend (sock_diag SOCK_DESTROY), so the resolver sees an error,
//! makes a new socket and lands on a live backend. TCP is left alone: an
//! established connection to a backend that becomes terminating keeps
//! working.
//!
//! Privileged: run as root, one test at a time:
//! `cargo test -p tests --test udp_sockets -- --test-threads=1`.

#![expect(
    unused_crate_dependencies,
    reason = "every test file is linked with all the dependencies of the tests package and uses some"
)]

use std::io::{self, ErrorKind};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tests::fixture::*;
use tests::*;

/// The resolver's pace.
const INTERVAL: Duration = Duration::from_millis(100);
/// How long the resolver waits for an answer before giving up on a socket.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(500);
/// Bounds of one resolver run.
const MAX_QUERIES: u64 = 400;
const MAX_RUN: Duration = Duration::from_secs(60);
/// Queries the client may need, after `ferry services` shows the backend
/// gone, until another backend answers (2 s at the resolver's pace).
const MAX_QUERIES_TO_MOVE: u64 = 20;

#[derive(Clone, Debug)]
enum Outcome {
    /// The answering server's name.
    Answer(String),
    Error {
        errno: Option<i32>,
        text: String,
    },
}

#[derive(Clone, Debug)]
struct Query {
    /// 1, 2, ...
    seq: u64,
    /// Which socket of the client (1, 2, ...) sent it.
    socket: u32,
    outcome: Outcome,
}

/// A `dig`-style client: one connected UDP socket to the Service, a query
/// every [`INTERVAL`], and a new socket after any error (as resolvers do).
/// Runs on a thread in a namespace; stops on drop (bounded).
struct Resolver {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Query>>>,
    handle: Option<JoinHandle<()>>,
}

fn connected_socket(target: SocketAddr) -> io::Result<UdpSocket> {
    let bind: SocketAddr = if target.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(target)?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    s.set_write_timeout(Some(ANSWER_TIMEOUT))?;
    Ok(s)
}

fn ask(s: &UdpSocket) -> io::Result<String> {
    s.send(b"who\n")?;
    let mut buf = [0u8; 512];
    let n = s.recv(&mut buf)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, format!("reply {text:?}")))
}

impl Resolver {
    fn start(ns: &Netns, target: SocketAddr) -> Result<Resolver> {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let (stop, log) = (stop.clone(), log.clone());
            ns.spawn_thread("resolver", move || {
                let started = Instant::now();
                let mut sock: Option<UdpSocket> = None;
                let mut sockets = 0u32;
                for seq in 1..=MAX_QUERIES {
                    if stop.load(Ordering::Relaxed) || started.elapsed() > MAX_RUN {
                        break;
                    }
                    let result = match &sock {
                        Some(s) => ask(s),
                        None => {
                            sockets += 1;
                            connected_socket(target).and_then(|s| {
                                let r = ask(&s);
                                sock = Some(s);
                                r
                            })
                        }
                    };
                    let outcome = match result {
                        Ok(server) => Outcome::Answer(server),
                        Err(e) => {
                            sock = None;
                            Outcome::Error {
                                errno: e.raw_os_error(),
                                text: e.to_string(),
                            }
                        }
                    };
                    log.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(Query {
                            seq,
                            socket: sockets,
                            outcome,
                        });
                    thread::sleep(INTERVAL);
                }
            })?
        };
        Ok(Resolver {
            stop,
            log,
            handle: Some(handle),
        })
    }

    fn log(&self) -> Vec<Query> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits (bounded) until `pred` holds for the log; returns the log.
    fn wait_until(&self, timeout: Duration, pred: impl Fn(&[Query]) -> bool) -> Vec<Query> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if pred(&log) || Instant::now() >= deadline {
                return log;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn answer(q: &Query) -> Option<&str> {
    match &q.outcome {
        Outcome::Answer(s) => Some(s),
        Outcome::Error { .. } => None,
    }
}

/// A UDP service `name` on `cluster_ip`:53 → [`PORT`], and its slice with
/// the backends `names`.
fn dns_objects(env: &Env, name: &str, cluster_ip: &str, names: &[&str]) -> [serde_json::Value; 2] {
    let svc = Service::new("default", name)
        .cluster_ip(cluster_ip)
        .port(ServicePort::udp(53).name("dns").target(PORT))
        .to_value();
    let slice = names
        .iter()
        .fold(
            EndpointSlice::new("default", &format!("{name}-1"), name, AddressType::IPv4)
                .port("dns", PORT, "UDP"),
            |s, b| s.endpoint(env.ep(b, NODE)),
        )
        .to_value();
    [svc, slice]
}

/// The objects of the resolver scenarios: Service "dns" (10.96.0.53) with
/// backends `dns`, and, if `alt` is Some, Service "dns-alt" (10.96.0.57)
/// with those backends.
fn resolver_objects(env: &Env, dns: &[&str], alt: Option<&[&str]>) -> Vec<serde_json::Value> {
    let mut v = dns_objects(env, "dns", "10.96.0.53", dns).to_vec();
    if let Some(alt) = alt {
        v.extend(dns_objects(env, "dns-alt", "10.96.0.57", alt));
    }
    v
}

/// A socket of the node namespace connected to `target`, translated by
/// Ferry to backend `want` (bounded tries: each connect picks at random).
fn socket_landing_on(env: &Env, target: SocketAddr, want: &str) -> Result<UdpSocket> {
    env.node().run(|| {
        for _ in 0..64 {
            let s = connected_socket(target)?;
            if ask(&s)? == want {
                return Ok(s);
            }
        }
        anyhow::bail!("no socket to {target} landed on {want} in 64 tries")
    })
}

/// The resolver's socket to Service "dns" is pinned to backend X; X is
/// deleted from the Service's EndpointSlice while its server keeps
/// answering. Without Ferry's socket destroy the resolver would keep
/// getting X's answers; with it, the old socket sees an error and the
/// resolver is answered by the other backend within
/// [`MAX_QUERIES_TO_MOVE`] queries. Sockets Ferry did not translate to X
/// for this Service are left alone: one connected to X's own address, one
/// translated to the other backend, and (with `shared`, where X stays a
/// backend of a second Service "dns-alt") one translated to X through
/// dns-alt.
fn resolver_moves_off_a_departed_backend(shared: bool) -> Result<()> {
    let mut env = Env::running(2, 0, &[])?;
    let both = ["b0", "b1"];
    let alt = shared.then_some(&both[..]);
    env.apply(&resolver_objects(&env, &both, alt))?;
    let fe = "10.96.0.53:53/UDP";
    let target = sa("10.96.0.53:53");
    let backends = [env.addr4("b0"), env.addr4("b1")];
    env.wait_backends(fe, &backends)?;
    if shared {
        env.wait_backends("10.96.0.57:53/UDP", &backends)?;
    }

    let resolver = Resolver::start(env.node(), target)?;
    let log = resolver.wait_until(Duration::from_secs(10), |l| {
        l.iter().filter(|q| answer(q).is_some()).count() >= 3
    });
    ensure!(
        log.iter()
            .take(3)
            .all(|q| answer(q).is_some() && q.socket == 1),
        "the resolver must be answered on its first socket: {log:?}"
    );
    let pinned = answer(&log[0]).expect("checked").to_string();
    assert!(
        log.iter().all(|q| answer(q) == Some(pinned.as_str())),
        "one connected socket talks to one backend: {log:?}"
    );
    let other = if pinned == "b0" { "b1" } else { "b0" };

    // Controls in the same namespace.
    let direct = env
        .node()
        .run(|| connected_socket(env.backend(&pinned).addr_v4(PORT)))?;
    assert_eq!(ask(&direct)?, pinned);
    let via_other = socket_landing_on(&env, target, other)?;
    let via_alt = if shared {
        Some(socket_landing_on(&env, sa("10.96.0.57:53"), &pinned)?)
    } else {
        None
    };

    // Delete the pinned backend from dns's slice; its server keeps running.
    env.apply(&resolver_objects(&env, &[other], alt))?;
    env.wait_backends(fe, &[env.addr4(other)])?;
    let at_change = resolver.log().len() as u64;
    let log = resolver.wait_until(Duration::from_secs(10), |l| {
        l.iter()
            .any(|q| q.seq > at_change && answer(q) == Some(other))
            && l.len() as u64 >= at_change + MAX_QUERIES_TO_MOVE + 5
    });
    drop(resolver);
    let summary: Vec<String> = log
        .iter()
        .map(|q| match &q.outcome {
            Outcome::Answer(s) => format!("#{} sock{} {s}", q.seq, q.socket),
            Outcome::Error { text, .. } => format!("#{} sock{} ERROR {text}", q.seq, q.socket),
        })
        .collect();
    let moved = log
        .iter()
        .find(|q| q.seq > at_change && answer(q) == Some(other))
        .with_context(|| {
            format!(
                "the resolver was never answered by {other} after {pinned} was deleted \
                 (change seen at query #{at_change}): {summary:?}"
            )
        })?;
    assert!(
        moved.seq - at_change <= MAX_QUERIES_TO_MOVE,
        "the resolver needed {} queries after the change to reach {other}: {summary:?}",
        moved.seq - at_change
    );
    // The first socket ended with an error (not a timeout: the pinned
    // backend's server is still answering), and was the only one to talk
    // to the deleted backend.
    let first_error = log
        .iter()
        .find(|q| matches!(q.outcome, Outcome::Error { .. }))
        .with_context(|| format!("the pinned socket never saw an error: {summary:?}"))?;
    assert_eq!(first_error.socket, 1, "{summary:?}");
    if let Outcome::Error { errno, text } = &first_error.outcome {
        assert!(
            errno.is_some_and(|e| e != libc::EAGAIN && e != libc::ETIMEDOUT),
            "the pinned socket must fail with an error, not a timeout: {text}"
        );
        eprintln!("pinned socket error: {text}");
    }
    assert!(
        log.iter()
            .filter(|q| q.socket > 1)
            .all(|q| answer(q) != Some(pinned.as_str())),
        "no new socket may reach the deleted backend: {summary:?}"
    );
    assert!(
        log.iter()
            .filter(|q| q.seq > moved.seq)
            .all(|q| answer(q) == Some(other)),
        "after moving, the resolver stays on {other}: {summary:?}"
    );

    // The controls kept working, untouched.
    assert_eq!(
        ask(&direct).context("socket connected to the backend's own address")?,
        pinned
    );
    assert_eq!(
        ask(&via_other).context("socket translated to the remaining backend")?,
        other
    );
    if let Some(via_alt) = via_alt {
        assert_eq!(
            ask(&via_alt).context("socket translated to the same backend through dns-alt")?,
            pinned,
            "{pinned} is still a backend of dns-alt: its sockets stay"
        );
    }
    Ok(())
}

#[test]
fn connected_udp_resolver_moves_off_a_deleted_backend() -> Result<()> {
    require_root();
    let _serial = serial();
    resolver_moves_off_a_departed_backend(false)
}

/// The same when the departed backend stays a backend of another Service
/// (the same ip:port/UDP): sockets are destroyed per Service, as kube-proxy
/// clears conntrack entries per service port.
#[test]
fn connected_udp_resolver_moves_off_a_backend_another_service_keeps() -> Result<()> {
    require_root();
    let _serial = serial();
    resolver_moves_off_a_departed_backend(true)
}

/// TCP is left to the application: a connection established to a backend
/// that becomes terminating (and then is deleted) keeps working, while new
/// connections go to the ready backend.
#[test]
fn tcp_connection_to_a_terminating_backend_keeps_working() -> Result<()> {
    require_root();
    let _serial = serial();
    let svc = Service::new("default", "web")
        .cluster_ip("10.96.0.55")
        .port(ServicePort::tcp(80).target(PORT))
        .to_value();
    let mut env = Env::running(2, 0, std::slice::from_ref(&svc))?;
    let fe = "10.96.0.55:80/TCP";
    let target = sa("10.96.0.55:80");
    let slice = |eps: &[Endpoint]| tcp_slice("web", "web-1", AddressType::IPv4, eps);
    env.apply(&[svc.clone(), slice(&[env.ep("b0", NODE)])])?;
    env.wait_backends(fe, &[env.addr4("b0")])?;

    let mut session = env.node().run(|| TcpSession::connect(target))?;
    let first = session.request()?;
    assert_eq!(first.server, "b0");
    assert_eq!(first.peer, Some(target));

    // b0 terminating (serving), b1 ready: b0 leaves the set.
    env.apply(&[
        svc.clone(),
        slice(&[terminating(env.ep("b0", NODE)), env.ep("b1", NODE)]),
    ])?;
    env.wait_backends(fe, &[env.addr4("b1")])?;
    for _ in 0..3 {
        assert_eq!(
            session
                .request()
                .context("the established connection after b0 became terminating")?,
            first
        );
    }
    assert_eq!(env.servers_seen(target, 20)?, names(&["b1"]));

    // b0 deleted altogether: still the same connection, still answered.
    // (The deletion does not show in `ferry services`; a marker Service
    // written in the same file does, so once it is there the deletion is
    // synced too.)
    let marker = Service::new("default", "marker")
        .cluster_ip("10.96.0.56")
        .port(ServicePort::tcp(80).target(PORT))
        .to_value();
    env.apply(&[svc, marker, slice(&[env.ep("b1", NODE)])])?;
    env.wait_empty("10.96.0.56:80/TCP", "reject")?;
    env.wait_backends(fe, &[env.addr4("b1")])?;
    assert_eq!(
        session
            .request()
            .context("the established connection after b0 was deleted")?,
        first
    );
    assert_eq!(
        env.servers
            .tcp_at(env.backend("b0").addr_v4(PORT))?
            .connections(),
        1,
        "b0 saw only the one connection"
    );
    Ok(())
}
