//! Echo-who-I-am servers on threads inside a namespace.
//!
//! Both answer every request line (TCP) or datagram (UDP) with
//! `"<server-name> <peer>\n"`, `<peer>` being the client address the server
//! saw (`1.2.3.4:5` or `[fd00::1]:5`), so a client learns which backend
//! answered and which source address it saw. They stop on drop (a shutdown
//! flag polled at least every 100 ms).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};

use super::netns::Netns;

/// How often server loops look at their stop flag.
const POLL: Duration = Duration::from_millis(100);
/// A connection idle this long is closed by the server.
const IDLE_LIMIT: Duration = Duration::from_secs(60);
/// Longest request line read.
const MAX_LINE: usize = 4096;

/// The reply text for a client `peer`.
pub fn reply_text(server: &str, peer: SocketAddr) -> String {
    format!("{server} {peer}\n")
}

fn bind_in<T, F>(ns: &Netns, what: String, bind: F) -> Result<T>
where
    F: FnOnce() -> std::io::Result<T> + Send,
    T: Send,
{
    ns.run(bind)
        .with_context(|| format!("{what} in {}", ns.name()))
}

/// A TCP server on one address; stopped on drop.
#[derive(Debug)]
pub struct TcpServer {
    name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `addr` inside `ns` and answers as `name` (no spaces).
    /// Each connection is served on its own thread: every line read gets a
    /// reply, until EOF, 60 s idle, or stop.
    pub fn start(ns: &Netns, name: &str, addr: SocketAddr) -> Result<TcpServer> {
        assert!(
            !name.contains(char::is_whitespace),
            "server names have no spaces"
        );
        let listener = bind_in(ns, format!("binding TCP {addr}"), move || {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let handle = {
            let (name, stop, accepted) = (name.to_string(), stop.clone(), accepted.clone());
            thread::Builder::new()
                .name(format!("tcp:{name}"))
                .spawn(move || accept_loop(listener, &name, &stop, &accepted))?
        };
        Ok(TcpServer {
            name: name.to_string(),
            addr,
            stop,
            accepted,
            handle: Some(handle),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Asks the server to stop without waiting (drop waits).
    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops the server and waits for it and its connections (bounded by
    /// the 100 ms poll interval of each).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.signal_stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits until `fd` is readable or `timeout` passes.
fn poll_readable(fd: i32, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd.
    unsafe {
        libc::poll(&mut pfd, 1, ms);
    }
}

fn accept_loop(listener: TcpListener, name: &str, stop: &Arc<AtomicBool>, accepted: &AtomicU64) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        poll_readable(listener.as_raw_fd(), POLL);
        // Accept everything queued (bounded per round).
        for _ in 0..256 {
            match listener.accept() {
                Ok((stream, peer)) => {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    let (conn_name, stop) = (name.to_string(), stop.clone());
                    match thread::Builder::new()
                        .name(format!("tcp-conn:{name}"))
                        .spawn(move || serve_conn(stream, peer, &conn_name, &stop))
                    {
                        Ok(h) => workers.push(h),
                        Err(e) => eprintln!("sandbox: tcp server {name}: spawn: {e}"),
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. ECONNABORTED, EMFILE: keep serving.
                    eprintln!("sandbox: tcp server {name}: accept: {e}");
                    thread::sleep(Duration::from_millis(10));
                    break;
                }
            }
        }
        workers.retain(|h| !h.is_finished());
    }
    drop(listener);
    for h in workers {
        let _ = h.join();
    }
}

fn serve_conn(mut stream: TcpStream, peer: SocketAddr, name: &str, stop: &AtomicBool) {
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(POLL)).is_err()
        || stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .is_err()
    {
        return;
    }
    let reply = reply_text(name, peer);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 1024];
    let mut last_activity = Instant::now();
    while !stop.load(Ordering::Relaxed) && last_activity.elapsed() < IDLE_LIMIT {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                last_activity = Instant::now();
                pending.extend_from_slice(&buf[..n]);
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    pending.drain(..=pos);
                    if stream.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
                if pending.len() > MAX_LINE {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return,
        }
    }
}

/// A UDP server on one address; every datagram gets the reply text sent
/// back to its source. Stopped on drop.
#[derive(Debug)]
pub struct UdpServer {
    name: String,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
}

impl UdpServer {
    pub fn start(ns: &Netns, name: &str, addr: SocketAddr) -> Result<UdpServer> {
        assert!(
            !name.contains(char::is_whitespace),
            "server names have no spaces"
        );
        let sock = bind_in(ns, format!("binding UDP {addr}"), move || {
            let s = UdpSocket::bind(addr)?;
            s.set_read_timeout(Some(POLL))?;
            Ok(s)
        })?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let handle = {
            let (name, stop, received) = (name.to_string(), stop.clone(), received.clone());
            thread::Builder::new()
                .name(format!("udp:{name}"))
                .spawn(move || {
                    let mut buf = [0u8; 2048];
                    while !stop.load(Ordering::Relaxed) {
                        match sock.recv_from(&mut buf) {
                            Ok((_, peer)) => {
                                received.fetch_add(1, Ordering::Relaxed);
                                let _ = sock.send_to(reply_text(&name, peer).as_bytes(), peer);
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock
                                        | ErrorKind::TimedOut
                                        | ErrorKind::Interrupted
                                ) => {}
                            // E.g. ECONNREFUSED from an ICMP error: keep serving.
                            Err(_) => thread::sleep(Duration::from_millis(1)),
                        }
                    }
                })?
        };
        Ok(UdpServer {
            name: name.to_string(),
            addr,
            stop,
            received,
            handle: Some(handle),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams received so far.
    pub fn datagrams(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    pub fn signal_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.signal_stop();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A group of servers, stopped together on drop.
#[derive(Debug, Default)]
pub struct ServerSet {
    pub tcp: Vec<TcpServer>,
    pub udp: Vec<UdpServer>,
}

impl ServerSet {
    pub fn add_tcp(&mut self, ns: &Netns, name: &str, addr: SocketAddr) -> Result<&TcpServer> {
        self.tcp.push(TcpServer::start(ns, name, addr)?);
        Ok(self.tcp.last().expect("just pushed"))
    }

    pub fn add_udp(&mut self, ns: &Netns, name: &str, addr: SocketAddr) -> Result<&UdpServer> {
        self.udp.push(UdpServer::start(ns, name, addr)?);
        Ok(self.udp.last().expect("just pushed"))
    }

    /// The TCP server on `addr`.
    pub fn tcp_at(&self, addr: SocketAddr) -> Result<&TcpServer> {
        self.tcp
            .iter()
            .find(|s| s.addr() == addr)
            .ok_or_else(|| anyhow!("no TCP server on {addr}"))
    }

    /// Stops (and removes) every server on `addr` (TCP and UDP), e.g. to
    /// make one backend refuse connections.
    pub fn stop_at(&mut self, addr: SocketAddr) {
        self.tcp.retain(|s| s.addr() != addr);
        self.udp.retain(|s| s.addr() != addr);
    }

    /// TCP connections accepted by the servers named `name`.
    pub fn tcp_connections_of(&self, name: &str) -> u64 {
        self.tcp
            .iter()
            .filter(|s| s.name() == name)
            .map(TcpServer::connections)
            .sum()
    }
}

impl Drop for ServerSet {
    fn drop(&mut self) {
        // Signal all first so they wind down in parallel, then join.
        for s in &self.tcp {
            s.signal_stop();
        }
        for s in &self.udp {
            s.signal_stop();
        }
    }
}
