//! A client process for the many-sockets test (tests/socket_lb.rs): opens
//! COUNT TCP connections to TCP_FRONTEND and COUNT connected UDP sockets to
//! UDP_FRONTEND, checks that each one's getpeername shows its frontend, and
//! prints `open N`. On a line `check` from stdin it checks every socket
//! again (getpeername, and for UDP a request whose reply must come from the
//! frontend: recvmsg's reverse translation) and prints `ok N`. It keeps its
//! sockets until stdin closes, so that several such processes hold all of
//! theirs at once.
//!
//! Usage: hold_sockets TCP_FRONTEND UDP_FRONTEND COUNT
#![expect(
    unused_crate_dependencies,
    reason = "a bin of the tests package links all of its dependencies; this one needs std and anyhow only"
)]

use std::io::{BufRead as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// The whole run's bound: opening or checking takes seconds; past this the
/// holder gives up with an error (and its sockets close).
const DEADLINE: Duration = Duration::from_secs(90);

use anyhow::{Context as _, Result, bail, ensure};

fn check(tcp: &[TcpStream], udp: &[UdpSocket], t: SocketAddr, u: SocketAddr) -> Result<()> {
    for s in tcp {
        ensure!(
            s.peer_addr()? == t,
            "TCP getpeername {} ≠ {t}",
            s.peer_addr()?
        );
    }
    for s in udp {
        ensure!(
            s.peer_addr()? == u,
            "UDP getpeername {} ≠ {u}",
            s.peer_addr()?
        );
    }
    Ok(())
}

fn replies(udp: &[UdpSocket], u: SocketAddr) -> Result<()> {
    let mut buf = [0u8; 512];
    for s in udp {
        // Two tries: a datagram may be lost; the bound is the read timeout.
        let mut from = None;
        for _ in 0..2 {
            s.send(b"who\n")?;
            if let Ok((_, f)) = s.recv_from(&mut buf) {
                from = Some(f);
                break;
            }
        }
        ensure!(from == Some(u), "UDP reply from {from:?}, expected {u}");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        bail!("usage: hold_sockets TCP_FRONTEND UDP_FRONTEND COUNT");
    }
    let t: SocketAddr = args[1].parse().context("TCP_FRONTEND")?;
    let u: SocketAddr = args[2].parse().context("UDP_FRONTEND")?;
    let count: usize = args[3].parse().context("COUNT")?;
    let start = Instant::now();
    let in_time = || {
        ensure!(start.elapsed() < DEADLINE, "past the {DEADLINE:?} deadline");
        Ok(())
    };
    let mut tcp = Vec::with_capacity(count);
    let mut udp = Vec::with_capacity(count);
    for _ in 0..count {
        in_time()?;
        tcp.push(TcpStream::connect_timeout(&t, Duration::from_secs(5))?);
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(u)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        udp.push(s);
    }
    check(&tcp, &udp, t, u)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "open {}", tcp.len() + udp.len())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        if line? == "check" {
            in_time()?;
            check(&tcp, &udp, t, u)?;
            replies(&udp, u)?;
            writeln!(out, "ok {}", tcp.len() + udp.len())?;
            out.flush()?;
        }
    }
    Ok(())
}
