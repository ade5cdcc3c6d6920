//! Clients for the harness' servers.
//!
//! The free functions work in the network namespace of the calling thread:
//! call them inside [`Netns::run`], e.g.
//! `topo.node().run(|| tcp_request(addr))`. Every socket operation has a
//! timeout of at most [`CLIENT_TIMEOUT`] (2 s).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::Result;
use socket2::{Domain, Protocol, Socket, Type};

use super::netns::Netns;

/// Bound of every client socket operation (connect, read, write).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

const REQUEST: &[u8] = b"who\n";

/// What a server answered, and what the client's socket says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Name of the server that answered (the backend, e.g. "b1").
    pub server: String,
    /// The client address the server saw (its getpeername / recvfrom).
    pub seen_peer: SocketAddr,
    /// getsockname() of the client socket after the exchange.
    pub local: SocketAddr,
    /// getpeername() of the client socket: TCP and connected UDP (None for
    /// unconnected UDP). With Ferry this must be the frontend, not the
    /// backend.
    pub peer: Option<SocketAddr>,
    /// Source address recvfrom() reported for the reply: UDP only (None
    /// for TCP). With Ferry this must be the frontend, not the backend.
    pub from: Option<SocketAddr>,
}

/// Parses `"<server> <peer>\n"`.
pub fn parse_reply(text: &str) -> io::Result<(String, SocketAddr)> {
    let bad = || io::Error::new(ErrorKind::InvalidData, format!("unexpected reply {text:?}"));
    let (server, peer) = text.trim_end().split_once(' ').ok_or_else(bad)?;
    let peer = peer.parse().map_err(|_| bad())?;
    Ok((server.to_string(), peer))
}

fn unspecified(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

fn tcp_socket(
    addr: &SocketAddr,
    bind: Option<SocketAddr>,
    reset_on_close: bool,
) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if reset_on_close {
        // Close with RST: no TIME_WAIT, so loops cannot run out of ports.
        s.set_linger(Some(Duration::ZERO))?;
    }
    if let Some(b) = bind {
        s.bind(&b.into())?;
    }
    Ok(s)
}

fn connect_stream(
    addr: SocketAddr,
    bind: Option<SocketAddr>,
    reset_on_close: bool,
) -> io::Result<TcpStream> {
    let s = tcp_socket(&addr, bind, reset_on_close)?;
    s.connect_timeout(&addr.into(), CLIENT_TIMEOUT)?;
    let stream: TcpStream = s.into();
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Reads up to and including the first '\n' (bounded: 4 KiB, the socket's
/// read timeout per read, `overall` in all).
pub fn read_line(stream: &mut TcpStream, overall: Duration) -> io::Result<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + overall;
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a full reply ({:?})",
                    String::from_utf8_lossy(&out)
                ),
            ));
        }
        out.extend_from_slice(&buf[..n]);
        if out.contains(&b'\n') {
            return Ok(String::from_utf8_lossy(&out).into_owned());
        }
        if out.len() > 4096 || Instant::now() >= deadline {
            return Err(io::Error::new(ErrorKind::TimedOut, "no full reply line"));
        }
    }
}

fn tcp_exchange(stream: &mut TcpStream) -> io::Result<Reply> {
    stream.write_all(REQUEST)?;
    let text = read_line(stream, CLIENT_TIMEOUT)?;
    let (server, seen_peer) = parse_reply(&text)?;
    Ok(Reply {
        server,
        seen_peer,
        local: stream.local_addr()?,
        peer: Some(stream.peer_addr()?),
        from: None,
    })
}

/// Connects (TCP) to `addr`, sends one request line and reads the reply.
pub fn tcp_request(addr: SocketAddr) -> io::Result<Reply> {
    tcp_request_from(None, addr)
}

/// Like [`tcp_request`], binding the client socket to `bind` first (e.g.
/// a specific source address; port 0 for any).
pub fn tcp_request_from(bind: Option<SocketAddr>, addr: SocketAddr) -> io::Result<Reply> {
    let mut stream = connect_stream(addr, bind, false)?;
    tcp_exchange(&mut stream)
}

fn tcp_request_rst(addr: SocketAddr) -> io::Result<Reply> {
    let mut stream = connect_stream(addr, None, true)?;
    tcp_exchange(&mut stream)
}

/// Only connects (timeouts set); returns the stream.
pub fn tcp_connect(addr: SocketAddr) -> io::Result<TcpStream> {
    connect_stream(addr, None, false)
}

/// How a connect failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectError {
    pub kind: ErrorKind,
    /// The errno (e.g. `libc::ECONNREFUSED`), None for a timeout of the
    /// 2 s connect bound.
    pub errno: Option<i32>,
    pub message: String,
}

impl ConnectError {
    pub fn from_io(e: &io::Error) -> ConnectError {
        ConnectError {
            kind: e.kind(),
            errno: e.raw_os_error(),
            message: e.to_string(),
        }
    }

    /// The connect ran into the 2 s bound (packets dropped somewhere).
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::TimedOut || self.errno == Some(libc::ETIMEDOUT)
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({:?}, errno {:?})",
            self.message, self.kind, self.errno
        )
    }
}

/// Tries a TCP connect to `addr`; `None` if it succeeded, else how it failed.
pub fn tcp_connect_err(addr: SocketAddr) -> Option<ConnectError> {
    match connect_stream(addr, None, false) {
        Ok(_) => None,
        Err(e) => Some(ConnectError::from_io(&e)),
    }
}

fn udp_socket(addr: &SocketAddr, bind: Option<SocketAddr>) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind(bind.unwrap_or_else(|| unspecified(addr)))?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    Ok(s)
}

fn udp_recv(s: &UdpSocket) -> io::Result<(String, SocketAddr, SocketAddr)> {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf)?;
    let (server, seen) = parse_reply(&String::from_utf8_lossy(&buf[..n]))?;
    Ok((server, seen, from))
}

/// UDP with connect(): connect, send, recvfrom. Reports getpeername
/// (`peer`) and the reply's source (`from`).
pub fn udp_connected_request(addr: SocketAddr) -> io::Result<Reply> {
    udp_connected_request_from(None, addr)
}

pub fn udp_connected_request_from(bind: Option<SocketAddr>, addr: SocketAddr) -> io::Result<Reply> {
    let s = udp_socket(&addr, bind)?;
    s.connect(addr)?;
    s.send(REQUEST)?;
    let (server, seen_peer, from) = udp_recv(&s)?;
    Ok(Reply {
        server,
        seen_peer,
        local: s.local_addr()?,
        peer: Some(s.peer_addr()?),
        from: Some(from),
    })
}

/// UDP without connect(): sendto, recvfrom. Reports the reply's source
/// (`from`).
pub fn udp_unconnected_request(addr: SocketAddr) -> io::Result<Reply> {
    udp_unconnected_request_from(None, addr)
}

pub fn udp_unconnected_request_from(
    bind: Option<SocketAddr>,
    addr: SocketAddr,
) -> io::Result<Reply> {
    let s = udp_socket(&addr, bind)?;
    s.send_to(REQUEST, addr)?;
    let (server, seen_peer, from) = udp_recv(&s)?;
    Ok(Reply {
        server,
        seen_peer,
        local: s.local_addr()?,
        peer: None,
        from: Some(from),
    })
}

/// A long-lived TCP connection: create it inside a namespace
/// (`ns.run(|| TcpSession::connect(addr))`), then use it from any thread;
/// every [`TcpSession::request`] is one line and one reply on the same
/// connection (e.g. to prove established connections survive map changes
/// or a Ferry restart). The server closes it after 60 s idle.
#[derive(Debug)]
pub struct TcpSession {
    stream: TcpStream,
}

impl TcpSession {
    pub fn connect(addr: SocketAddr) -> io::Result<TcpSession> {
        Ok(TcpSession {
            stream: connect_stream(addr, None, false)?,
        })
    }

    pub fn request(&mut self) -> io::Result<Reply> {
        tcp_exchange(&mut self.stream)
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// What [`ContinuousClient`] does per iteration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ContinuousMode {
    /// New TCP connection, one request and reply, close with RST (so no
    /// TIME_WAIT piles up and ports cannot run out).
    #[default]
    Tcp,
    UdpConnected,
    UdpUnconnected,
}

/// Bounds and pace of a [`ContinuousClient`].
#[derive(Clone, Debug)]
pub struct ContinuousOptions {
    pub mode: ContinuousMode,
    /// Stop after this many attempts.
    pub max_count: u64,
    /// Stop after this long.
    pub max_duration: Duration,
    /// Pause between attempts.
    pub interval: Duration,
    /// How many error messages to keep.
    pub keep_errors: usize,
}

impl Default for ContinuousOptions {
    fn default() -> Self {
        ContinuousOptions {
            mode: ContinuousMode::Tcp,
            max_count: 100_000,
            max_duration: Duration::from_secs(60),
            interval: Duration::from_millis(2),
            keep_errors: 10,
        }
    }
}

/// Counts of a [`ContinuousClient`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContinuousStats {
    pub attempts: u64,
    pub successes: u64,
    pub failures: u64,
    /// The first few failures: `#<attempt> after <ms> ms: <error>`.
    pub first_errors: Vec<String>,
    /// Successes per answering server.
    pub per_server: BTreeMap<String, u64>,
    /// Whether the loop has ended (stopped, or hit a bound).
    pub finished: bool,
}

/// Requests in a loop on a thread inside a namespace until stopped or a
/// bound is hit; counts successes and failures. Used to prove that no
/// connect fails while Ferry's maps change. Stops (and joins) on drop.
#[derive(Debug)]
pub struct ContinuousClient {
    stop: Arc<AtomicBool>,
    stats: Arc<Mutex<ContinuousStats>>,
    handle: Option<JoinHandle<()>>,
}

impl ContinuousClient {
    pub fn start(
        ns: &Netns,
        target: SocketAddr,
        opts: ContinuousOptions,
    ) -> Result<ContinuousClient> {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(ContinuousStats::default()));
        let handle = {
            let (stop, stats) = (stop.clone(), stats.clone());
            ns.spawn_thread("continuous-client", move || {
                let start = Instant::now();
                let mut attempt = 0u64;
                while !stop.load(Ordering::Relaxed)
                    && attempt < opts.max_count
                    && start.elapsed() < opts.max_duration
                {
                    attempt += 1;
                    let result = match opts.mode {
                        ContinuousMode::Tcp => tcp_request_rst(target),
                        ContinuousMode::UdpConnected => udp_connected_request(target),
                        ContinuousMode::UdpUnconnected => udp_unconnected_request(target),
                    };
                    {
                        let mut s = stats
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        s.attempts = attempt;
                        match result {
                            Ok(r) => {
                                s.successes += 1;
                                *s.per_server.entry(r.server).or_default() += 1;
                            }
                            Err(e) => {
                                s.failures += 1;
                                if s.first_errors.len() < opts.keep_errors {
                                    s.first_errors.push(format!(
                                        "#{attempt} after {} ms: {e}",
                                        start.elapsed().as_millis()
                                    ));
                                }
                            }
                        }
                    }
                    if !opts.interval.is_zero() {
                        thread::sleep(opts.interval);
                    }
                }
                stats
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .finished = true;
            })?
        };
        Ok(ContinuousClient {
            stop,
            stats,
            handle: Some(handle),
        })
    }

    /// A snapshot of the counts so far.
    pub fn stats(&self) -> ContinuousStats {
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits (bounded by `timeout`) until at least `n` successes were
    /// counted, e.g. before changing anything; returns whether they were.
    pub fn wait_for_successes(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.stats();
            if s.successes >= n {
                return true;
            }
            if s.finished || Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the loop, waits for it (at most one attempt, ≤ 4 s) and
    /// returns the final counts.
    pub fn stop(mut self) -> ContinuousStats {
        self.shutdown();
        self.stats()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for ContinuousClient {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn parses_replies() {
        let (s, p) = parse_reply("b1 10.244.0.1:4000\n").unwrap();
        assert_eq!(s, "b1");
        assert_eq!(p, "10.244.0.1:4000".parse().unwrap());
        let (_, p) = parse_reply("b1 [fd00:244::1]:4000\n").unwrap();
        assert_eq!(p, "[fd00:244::1]:4000".parse().unwrap());
        assert!(parse_reply("garbage\n").is_err());
        assert!(parse_reply("b1 notanaddr\n").is_err());
    }
}
