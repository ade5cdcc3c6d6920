//! The traffic: backend servers (one epoll thread per pod) and the client
//! measurements (run on a thread inside the node namespace).
//!
//! Server protocol, per TCP connection: if the first byte is `S` the
//! connection is a sink (everything is read and dropped; at EOF one byte
//! `K` is sent back, so the client knows all its bytes arrived); otherwise
//! every byte read is echoed. UDP: every datagram is echoed.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sandbox::Netns;

use super::proc::check_interrupted;

const LISTENER: u64 = 1 << 62;
const UDP: u64 = 1 << 61;
const POLL_MS: i32 = 100;
const MAX_PENDING: usize = 4 << 20;

/// The pods' servers; stopped (threads joined) on drop.
pub(crate) struct Servers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    /// On each (namespace, address): TCP listeners on `tcp_ports`, a UDP
    /// socket on `udp_port`. Returns once every socket is bound.
    pub(crate) fn start(
        pods: &[(&Netns, Ipv4Addr)],
        tcp_ports: std::ops::Range<u16>,
        udp_port: u16,
        cpu: Option<usize>,
    ) -> Result<Servers> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut servers = Servers {
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for (ns, ip) in pods {
            let (tx, rx) = mpsc::channel();
            let (ip, ports, stop) = (*ip, tcp_ports.clone(), stop.clone());
            let handle = ns.spawn_thread(&format!("srv:{ip}"), move || {
                if let Err(e) = pin_to(cpu) {
                    let _ = tx.send(Err(e));
                    return;
                }
                serve(ip, ports, udp_port, &stop, tx);
            })?;
            servers.threads.push(handle);
            rx.recv_timeout(Duration::from_secs(10))
                .map_err(|_| anyhow!("server on {ip} did not start"))?
                .with_context(|| format!("starting servers on {ip}"))?;
        }
        Ok(servers)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(PartialEq, Eq)]
enum Mode {
    New,
    Echo,
    Sink,
}

struct Conn {
    stream: TcpStream,
    mode: Mode,
    out: Vec<u8>,
}

fn epoll_ctl(ep: RawFd, op: i32, fd: RawFd, events: u32, data: u64) -> std::io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: valid epoll fd and event struct.
    if unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

struct Epoll(RawFd);

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

type Ready = mpsc::Sender<Result<()>>;

fn bind_all(
    ep: RawFd,
    ip: Ipv4Addr,
    ports: std::ops::Range<u16>,
    udp_port: u16,
) -> Result<(Vec<TcpListener>, UdpSocket)> {
    let mut listeners = Vec::new();
    for port in ports {
        let l = TcpListener::bind((ip, port)).with_context(|| format!("binding {ip}:{port}"))?;
        l.set_nonblocking(true)?;
        // SAFETY: re-listen with a longer backlog on our own socket.
        unsafe { libc::listen(l.as_raw_fd(), 4096) };
        epoll_ctl(
            ep,
            libc::EPOLL_CTL_ADD,
            l.as_raw_fd(),
            libc::EPOLLIN as u32,
            LISTENER | listeners.len() as u64,
        )?;
        listeners.push(l);
    }
    let udp =
        UdpSocket::bind((ip, udp_port)).with_context(|| format!("binding UDP {ip}:{udp_port}"))?;
    udp.set_nonblocking(true)?;
    epoll_ctl(
        ep,
        libc::EPOLL_CTL_ADD,
        udp.as_raw_fd(),
        libc::EPOLLIN as u32,
        UDP,
    )?;
    Ok((listeners, udp))
}

fn serve(
    ip: Ipv4Addr,
    ports: std::ops::Range<u16>,
    udp_port: u16,
    stop: &AtomicBool,
    ready: Ready,
) {
    // SAFETY: plain syscall.
    let ep = Epoll(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) });
    if ep.0 < 0 {
        let _ = ready.send(Err(std::io::Error::last_os_error().into()));
        return;
    }
    let (listeners, udp) = match bind_all(ep.0, ip, ports, udp_port) {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: events has room for its length.
        let n =
            unsafe { libc::epoll_wait(ep.0, events.as_mut_ptr(), events.len() as i32, POLL_MS) };
        for ev in events.iter().take(n.max(0) as usize) {
            let (data, flags) = (ev.u64, ev.events);
            if data & LISTENER != 0 {
                let l = &listeners[(data & !LISTENER) as usize];
                for _ in 0..64 {
                    match l.accept() {
                        Ok((s, _)) => {
                            let _ = s.set_nonblocking(true);
                            let _ = s.set_nodelay(true);
                            let fd = s.as_raw_fd();
                            if epoll_ctl(
                                ep.0,
                                libc::EPOLL_CTL_ADD,
                                fd,
                                libc::EPOLLIN as u32,
                                fd as u64,
                            )
                            .is_ok()
                            {
                                conns.insert(
                                    fd,
                                    Conn {
                                        stream: s,
                                        mode: Mode::New,
                                        out: Vec::new(),
                                    },
                                );
                            }
                        }
                        Err(_) => break,
                    }
                }
            } else if data & UDP != 0 {
                for _ in 0..64 {
                    match udp.recv_from(&mut buf) {
                        Ok((len, peer)) => {
                            let _ = udp.send_to(&buf[..len], peer);
                        }
                        Err(_) => break,
                    }
                }
            } else {
                let fd = data as RawFd;
                let close = match conns.get_mut(&fd) {
                    Some(c) => handle(ep.0, c, flags, &mut buf),
                    None => false,
                };
                if close {
                    conns.remove(&fd);
                }
            }
        }
    }
}

/// Serves one readiness event; true when the connection is done.
fn handle(ep: RawFd, c: &mut Conn, flags: u32, buf: &mut [u8]) -> bool {
    let fd = c.stream.as_raw_fd();
    if flags & libc::EPOLLOUT as u32 != 0 && !c.out.is_empty() {
        match c.stream.write(&c.out) {
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return true,
        }
        if c.out.is_empty() {
            let _ = epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, fd as u64);
        }
    }
    if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 == 0 {
        return false;
    }
    match c.stream.read(buf) {
        Ok(0) => {
            if c.mode == Mode::Sink {
                let _ = c.stream.write(b"K");
            }
            true
        }
        Ok(n) => {
            if c.mode == Mode::New {
                c.mode = if buf[0] == b'S' {
                    Mode::Sink
                } else {
                    Mode::Echo
                };
            }
            if c.mode == Mode::Echo {
                let mut written = 0;
                if c.out.is_empty() {
                    match c.stream.write(&buf[..n]) {
                        Ok(w) => written = w,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(_) => return true,
                    }
                }
                if written < n {
                    c.out.extend_from_slice(&buf[written..n]);
                    let _ = epoll_ctl(
                        ep,
                        libc::EPOLL_CTL_MOD,
                        fd,
                        (libc::EPOLLIN | libc::EPOLLOUT) as u32,
                        fd as u64,
                    );
                }
            }
            c.out.len() > MAX_PENDING
        }
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => false,
        Err(_) => true,
    }
}

/// Pins the calling thread to `cpu` (no-op for None).
pub(crate) fn pin_to(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // on the calling thread with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ client

/// Closes with RST (SO_LINGER 0): no TIME_WAIT piles up on the client,
/// so the thousandth connection costs what the first did, on every
/// datapath alike.
fn linger_zero(s: &TcpStream) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid socket and option struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
}

/// Fails at the first error: every connection of a measurement must work.
fn one_request(addr: SocketAddrV4) -> std::io::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    linger_zero(&s);
    Ok(())
}

/// New-connection cost: for each target, connect + 1-byte request and
/// response on a fresh connection, timed from before connect to after the
/// reply. Returns the latencies (ns) and the wall time of the whole run.
pub(crate) fn tcp_new_connections(targets: &[SocketAddrV4]) -> Result<(Vec<u64>, Duration)> {
    let mut lat = Vec::with_capacity(targets.len());
    let started = Instant::now();
    for (i, addr) in targets.iter().enumerate() {
        if i % 256 == 0 {
            check_interrupted()?;
        }
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)
            .with_context(|| format!("reading from {addr}"))?;
        let ns = t0.elapsed().as_nanos() as u64;
        linger_zero(&s);
        drop(s);
        lat.push(ns);
    }
    Ok((lat, started.elapsed()))
}

/// Just the connections, untimed (for the BPF run time counters).
pub(crate) fn tcp_connections(targets: &[SocketAddrV4]) -> Result<()> {
    for (i, addr) in targets.iter().enumerate() {
        if i % 256 == 0 {
            check_interrupted()?;
        }
        one_request(*addr).with_context(|| format!("request to {addr}"))?;
    }
    Ok(())
}

/// UDP connect() cost: the connect(2) call alone on a fresh unbound
/// socket (made and closed outside the timing), ns.
pub(crate) fn udp_connects(targets: &[SocketAddrV4]) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(targets.len());
    for (i, addr) in targets.iter().enumerate() {
        if i % 1024 == 0 {
            check_interrupted()?;
        }
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(*addr.ip()).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: plain socket calls on a descriptor we own and close.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let t0 = Instant::now();
            let rc = libc::connect(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            let ns = t0.elapsed().as_nanos() as u64;
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            ensure!(rc == 0, "UDP connect to {addr}: {err}");
            out.push(ns);
        }
    }
    Ok(out)
}

/// Established-flow request/response: 1-byte ping-pong on one long-lived
/// connection for `duration`; transactions per second.
pub(crate) fn rr_rate(addr: SocketAddrV4, duration: Duration) -> Result<f64> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut b = [0u8; 1];
    // Warm up, then measure.
    for _ in 0..100 {
        s.write_all(b"x")?;
        s.read_exact(&mut b)?;
    }
    let started = Instant::now();
    let mut n: u64 = 0;
    while started.elapsed() < duration {
        for _ in 0..64 {
            s.write_all(b"x")?;
            s.read_exact(&mut b)?;
        }
        n += 64;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    linger_zero(&s);
    Ok(rate)
}

/// Established-flow bulk transfer: 64 KiB writes on one connection for
/// `duration`, until the server confirmed it read everything; bytes/s.
pub(crate) fn stream_rate(addr: SocketAddrV4, duration: Duration) -> Result<f64> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"S")?;
    let chunk = vec![0x5au8; 64 * 1024];
    let started = Instant::now();
    let mut bytes: u64 = 0;
    while started.elapsed() < duration {
        s.write_all(&chunk)?;
        bytes += chunk.len() as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .context("waiting for the sink's acknowledgement")?;
    ensure!(b[0] == b'K', "unexpected sink reply {:?}", b[0]);
    Ok(bytes as f64 / started.elapsed().as_secs_f64())
}

/// One TCP request with short timeouts: the datapath serves this address.
pub(crate) fn check_tcp(addr: SocketAddrV4) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(addr), Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"x")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)
        .with_context(|| format!("no reply from {addr}"))?;
    ensure!(&b == b"x", "wrong echo from {addr}");
    Ok(())
}

/// One UDP request/reply with a short timeout.
pub(crate) fn check_udp(addr: SocketAddrV4) -> Result<()> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.connect(addr)
        .with_context(|| format!("UDP connect to {addr}"))?;
    s.send(b"ping")?;
    let mut b = [0u8; 16];
    let n = s
        .recv(&mut b)
        .with_context(|| format!("no UDP reply from {addr}"))?;
    ensure!(&b[..n] == b"ping", "wrong UDP echo from {addr}");
    Ok(())
}
