//! Connected UDP sockets stay pinned to the backend chosen at connect()
//! time: a DNS resolver would keep asking a deleted backend forever, the
//! most reported problem of socket-level load balancers. When a UDP backend
//! leaves a backend set, Ferry destroys the connected UDP sockets it
//! translated to it through that set (sock_diag SOCK_DESTROY,
//! CONFIG_INET_DIAG_DESTROY), in every network namespace of the processes
//! (and threads) under the attached cgroup. Per set, as kube-proxy clears
//! conntrack entries per service port: a backend that leaves one Service
//! but stays in another keeps the other's sockets. The application sees an
//! error on its next call (ECONNABORTED on a pending receive, EDESTADDRREQ
//! on a send, as the socket is no longer connected) and reconnects, landing
//! on a live backend. TCP is left to the application, as kube-proxy leaves
//! it.
//!
//! Which set a socket was translated through is in the socket table
//! (`SOCKETS4/6`, by socket cookie), or, for the few sockets the table
//! could not place, in its socket-local storage (`SOCK_PEERS4/6`). The
//! sweep: sock_diag lists the connected UDP sockets whose peer is a
//! departed backend, with their cookies; the table answers for most of
//! them. The storage of the rest is read through a duplicate of the
//! socket's file descriptor (sock_diag can report storage values, but not
//! for UDP: kernel 6.18 `inet_sk_diag_fill` skips them for sockets without
//! a connection sock), taken with pidfd_getfd(2) (kernel ≥ 5.6,
//! CAP_SYS_PTRACE) after finding the socket's inode in /proc/PID/fd of the
//! processes under the cgroup. A socket whose translation cannot be read is
//! left alone: only sockets Ferry provably translated through the departed
//! set are destroyed.
//!
//! A serving-but-terminating backend that leaves its set because ready
//! ones exist counts as leaving too: kube-proxy would keep such flows, but a
//! terminating pod is going away, and a resolver is better off moving now.

use std::{
    collections::HashSet,
    fs, io,
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use std::collections::HashMap;
use std::os::fd::{AsFd as _, BorrowedFd};

use aya::maps::MapData;
use lb_common::{SockPeers4, SockPeers6, capacity};

use super::convert::port_from_map;
use super::maps::Maps;
use crate::netutil::in_netns;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// A connected UDP socket reports TCP_ESTABLISHED.
const TCP_ESTABLISHED: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// struct inet_diag_sockid: ports and addresses in network order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagSockId {
    sport: u16,
    dport: u16,
    src: [u32; 4],
    dst: [u32; 4],
    interface: u32,
    cookie: [u32; 2],
}

/// struct inet_diag_req_v2.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagReqV2 {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: InetDiagSockId,
}

/// struct inet_diag_msg.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct InetDiagMsg {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: InetDiagSockId,
    expires: u32,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

#[repr(C)]
struct Request {
    hdr: NlMsgHdr,
    req: InetDiagReqV2,
}

fn netlink_socket() -> io::Result<OwnedFd> {
    // SAFETY: a plain socket(2) call; the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 2,
        tv_usec: 0,
    };
    // SAFETY: setsockopt with a valid timeval; a receive must not hang.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
    Ok(fd)
}

fn send(fd: &OwnedFd, ty: u16, flags: u16, req: InetDiagReqV2) -> io::Result<()> {
    let msg = Request {
        hdr: NlMsgHdr {
            len: size_of::<Request>() as u32,
            ty,
            flags,
            seq: 1,
            pid: 0,
        },
        req,
    };
    // SAFETY: sends the bytes of a repr(C) struct we own.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            (&msg as *const Request).cast(),
            size_of::<Request>(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads netlink messages until NLMSG_DONE (or an ack/error), calling `f`
/// with each payload. Bounded: a dump of a namespace ends, and every read
/// has a timeout.
fn receive(fd: &OwnedFd, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..100_000 {
        // SAFETY: recv into a buffer we own, of the length we pass.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + size_of::<NlMsgHdr>() <= n {
            // SAFETY: bounds checked above; read_unaligned copes with any
            // alignment of the buffer.
            let hdr: NlMsgHdr = unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
            let len = hdr.len as usize;
            if len < size_of::<NlMsgHdr>() || off + len > n {
                return Ok(());
            }
            let payload = &buf[off + size_of::<NlMsgHdr>()..off + len];
            match i32::from(hdr.ty) {
                libc::NLMSG_DONE => return Ok(()),
                libc::NLMSG_ERROR => {
                    let errno = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-errno))
                    };
                }
                _ => f(payload),
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

fn sockid_addr(family: u8, words: [u32; 4], port: u16) -> Option<SocketAddr> {
    let port = u16::from_be(port);
    let ip = match i32::from(family) {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes())),
        libc::AF_INET6 => {
            let mut o = [0u8; 16];
            for (i, w) in words.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let v6 = Ipv6Addr::from(o);
            // A dual-stack socket talking to an IPv4 backend.
            v6.to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// BPF_MAP_LOOKUP_ELEM of `key` in `map`; false when absent.
fn map_lookup<V>(map: &MapData, key: &i32, value: &mut V) -> bool {
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    #[repr(C)]
    struct Attr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let mut attr = Attr {
        map_fd: map.fd().as_fd().as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: std::ptr::from_mut(value) as u64,
        flags: 0,
    };
    // SAFETY: key and value outlive the call, and value has the map's
    // value size (the callers' types, whose sizes lb-common asserts).
    unsafe { super::loader::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }.is_ok()
}

/// The (backend set, backend) pairs a socket's storage says it was
/// translated through. Socket-local storage is keyed by a socket fd of the
/// caller.
fn translations(maps: &Maps, socket: BorrowedFd<'_>) -> Vec<Departed> {
    let key = socket.as_raw_fd();
    let mut out = Vec::new();
    let mut v4 = SockPeers4::default();
    if map_lookup(&maps.sock_peers4, &key, &mut v4) {
        out.extend(v4.peers.iter().filter(|p| p.service_id != 0).map(|p| {
            let ip = IpAddr::V4(Ipv4Addr::from(p.backend_addr));
            (
                p.service_id,
                SocketAddr::new(ip, port_from_map(p.backend_port)),
            )
        }));
    }
    let mut v6 = SockPeers6::default();
    if map_lookup(&maps.sock_peers6, &key, &mut v6) {
        out.extend(v6.peers.iter().filter(|p| p.service_id != 0).map(|p| {
            let ip = IpAddr::V6(Ipv6Addr::from(p.backend_addr));
            (
                p.service_id,
                SocketAddr::new(ip, port_from_map(p.backend_port)),
            )
        }));
    }
    out
}

/// The (backend set, backend) the socket table holds for the socket with
/// this cookie, if its entry is the socket's.
fn table_translation(maps: &Maps, cookie: u64) -> Option<Departed> {
    let index = (cookie & u64::from(capacity::SOCKETS - 1)) as u32;
    let ours = |c: u64, service_id: u32| c == cookie && service_id != 0;
    let v4 = maps
        .sockets4
        .get(&index, 0)
        .ok()
        .filter(|e| ours(e.cookie, e.peer.service_id))
        .map(|e| {
            (
                e.peer.service_id,
                IpAddr::from(e.peer.backend_addr),
                e.peer.backend_port,
            )
        });
    let v6 = || {
        maps.sockets6
            .get(&index, 0)
            .ok()
            .filter(|e| ours(e.cookie, e.peer.service_id))
            .map(|e| {
                (
                    e.peer.service_id,
                    IpAddr::from(e.peer.backend_addr),
                    e.peer.backend_port,
                )
            })
    };
    v4.or_else(v6)
        .map(|(id, ip, port)| (id, SocketAddr::new(ip, port_from_map(port))))
}

/// A connected UDP socket whose peer is a departed backend: its socket
/// inode and cookie, its peer, and the request that destroys it.
struct Candidate {
    inode: u32,
    cookie: u64,
    peer: SocketAddr,
    destroy: InetDiagReqV2,
}

/// A backend that left a backend set: (service id of the set, backend).
pub type Departed = (u32, SocketAddr);

/// Lists, in the current network namespace, the connected UDP sockets
/// whose peer is one of `backends`.
fn candidates_here(backends: &HashSet<SocketAddr>) -> io::Result<Vec<Candidate>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let fd = netlink_socket()?;
        let req = InetDiagReqV2 {
            family,
            protocol: libc::IPPROTO_UDP as u8,
            states: 1 << TCP_ESTABLISHED,
            ..Default::default()
        };
        send(
            &fd,
            SOCK_DIAG_BY_FAMILY,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            req,
        )?;
        receive(&fd, |payload| {
            if payload.len() < size_of::<InetDiagMsg>() {
                return;
            }
            // SAFETY: length checked; unaligned read of a repr(C) struct.
            let msg: InetDiagMsg = unsafe { std::ptr::read_unaligned(payload.as_ptr().cast()) };
            if msg.state != TCP_ESTABLISHED {
                return;
            }
            let Some(peer) = sockid_addr(msg.family, msg.id.dst, msg.id.dport) else {
                return;
            };
            if backends.contains(&peer) {
                out.push(Candidate {
                    inode: msg.inode,
                    // sock_diag splits the cookie into two host-order
                    // words, low first.
                    cookie: u64::from(msg.id.cookie[0]) | (u64::from(msg.id.cookie[1]) << 32),
                    peer,
                    destroy: InetDiagReqV2 {
                        family: msg.family,
                        protocol: libc::IPPROTO_UDP as u8,
                        states: u32::MAX,
                        id: msg.id,
                        ..Default::default()
                    },
                });
            }
        })?;
    }
    Ok(out)
}

/// Destroys sockets in the current network namespace; returns how many.
fn destroy_here(victims: &[InetDiagReqV2]) -> io::Result<usize> {
    let mut destroyed = 0;
    for req in victims {
        let fd = netlink_socket()?;
        send(
            &fd,
            SOCK_DESTROY,
            (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
            *req,
        )?;
        match receive(&fd, |_| {}) {
            Ok(()) => destroyed += 1,
            // Closed meanwhile: nothing left to do.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(destroyed)
}

/// The inode of a `/proc/PID/fd/N` link target `socket:[INODE]`.
fn socket_inode(target: &Path) -> Option<u32> {
    target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Duplicates of the sockets with these inodes, found in /proc/PID/fd of
/// `pids` (pidfd_getfd). Sockets that cannot be reached are missing.
fn socket_fds(pids: &[String], inodes: &HashSet<u32>) -> HashMap<u32, OwnedFd> {
    let mut out = HashMap::new();
    for pid in pids {
        if out.len() == inodes.len() {
            break;
        }
        let (Ok(entries), Ok(pid_number)) = (fs::read_dir(format!("/proc/{pid}/fd")), pid.parse())
        else {
            continue;
        };
        let mut pidfd: Option<OwnedFd> = None;
        for entry in entries.filter_map(Result::ok) {
            let Some(inode) = fs::read_link(entry.path())
                .ok()
                .and_then(|t| socket_inode(&t))
            else {
                continue;
            };
            let Some(target_fd) = entry
                .file_name()
                .to_str()
                .and_then(|f| f.parse::<i32>().ok())
            else {
                continue;
            };
            if !inodes.contains(&inode) || out.contains_key(&inode) {
                continue;
            }
            if pidfd.is_none() {
                pidfd = pidfd_open(pid_number);
            }
            let Some(pfd) = &pidfd else { break };
            // SAFETY: pidfd_getfd(2) with no flags.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pfd.as_raw_fd(), target_fd, 0) };
            if fd >= 0 {
                // SAFETY: a fresh descriptor nobody else owns.
                out.insert(inode, unsafe { OwnedFd::from_raw_fd(fd as i32) });
            }
        }
    }
    out
}

fn pidfd_open(pid: libc::pid_t) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) with no flags.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a fresh descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The network namespace files of every thread of process `pid`:
/// /proc/PID/ns/net is only the main thread's, and a thread may have
/// joined another namespace with setns(2) (sockets it creates live there).
fn thread_namespaces(pid: &str) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(format!("/proc/{pid}/ns/net"))];
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        out.extend(
            tasks
                .filter_map(Result::ok)
                .map(|t| t.path().join("ns/net")),
        );
    }
    out
}

/// The processes in `cgroup` and below.
fn processes_under(cgroup: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![cgroup.to_path_buf()];
    // Bounded walk: cgroup trees are finite, but never trust a file system
    // to be acyclic.
    let mut budget = 100_000usize;
    while let Some(dir) = dirs.pop() {
        budget = budget.saturating_sub(1);
        if budget == 0 {
            break;
        }
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            out.extend(procs.lines().map(|p| p.trim().to_string()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// One /proc/PID[/task/TID]/ns/net path per distinct network namespace of
/// these processes (and their threads).
fn namespaces_of(pids: &[String]) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for pid in pids {
        for ns in thread_namespaces(pid) {
            if let Ok(id) = fs::read_link(&ns)
                && seen.insert(id)
            {
                out.push(ns);
            }
        }
    }
    out
}

/// One /proc/PID[/task/TID]/ns/net path per distinct network namespace of
/// the processes (and their threads) in `cgroup` and below.
pub fn namespaces_under(cgroup: &Path) -> Vec<PathBuf> {
    namespaces_of(&processes_under(cgroup))
}

/// Destroys the connected UDP sockets translated to a backend through a set
/// it left (`gone`), in every network namespace under `cgroup`. Errors in
/// one namespace (a process that exited meanwhile) do not stop the others.
pub fn destroy_udp_sockets(maps: &Maps, cgroup: &Path, gone: &[Departed]) -> usize {
    if gone.is_empty() {
        return 0;
    }
    let gone: HashSet<Departed> = gone.iter().copied().collect();
    let backends: HashSet<SocketAddr> = gone.iter().map(|(_, b)| *b).collect();
    let pids = processes_under(cgroup);
    let mut per_ns = Vec::new();
    for ns in namespaces_of(&pids) {
        match in_netns(Some(&ns), || candidates_here(&backends)) {
            Ok(c) if !c.is_empty() => per_ns.push((ns, c)),
            Ok(_) => {}
            Err(e) => tracing::debug!(netns = %ns.display(), error = %e, "UDP socket sweep"),
        }
    }
    if per_ns.is_empty() {
        return 0;
    }
    // The socket table answers for most sockets; only the others' storage
    // needs their file descriptors.
    let inodes: HashSet<u32> = per_ns
        .iter()
        .flat_map(|(_, c)| c.iter())
        .filter(|c| table_translation(maps, c.cookie).is_none())
        .map(|c| c.inode)
        .collect();
    let fds = if inodes.is_empty() {
        HashMap::new()
    } else {
        socket_fds(&pids, &inodes)
    };
    let mut total = 0;
    for (ns, candidates) in per_ns {
        let victims: Vec<InetDiagReqV2> = candidates
            .iter()
            .filter(|c| match table_translation(maps, c.cookie) {
                Some(t) => t.1 == c.peer && gone.contains(&t),
                None => fds.get(&c.inode).is_some_and(|fd| {
                    translations(maps, fd.as_fd())
                        .iter()
                        .any(|t| t.1 == c.peer && gone.contains(t))
                }),
            })
            .map(|c| c.destroy)
            .collect();
        if victims.is_empty() {
            continue;
        }
        match in_netns(Some(&ns), || destroy_here(&victims)) {
            Ok(n) => total += n,
            Err(e) => tracing::debug!(netns = %ns.display(), error = %e, "UDP socket sweep"),
        }
    }
    total
}
