//! Program entry points: thin wrappers that read the socket address, ask
//! `lb_common::socket_lb` for a verdict (in the kernel's environment,
//! `lb::Sock`) and write it back.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use lb_common::{
    NodePortKey, PROTO_TCP, PROTO_UDP,
    socket_lb::{self, Pick, Verdict},
};

use crate::{
    family::{V4, V6},
    lb::Sock,
    maps::{CONFIG, NODEPORT_BINDS},
};

/// cgroup sock_addr programs return 1 to let the syscall go on, 0 to fail
/// it (with the errno set by bpf_set_retval, kernel ≥ 5.18, else EPERM).
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const EADDRINUSE: i32 = 98;
const AF_INET6: u32 = 10;

#[inline(always)]
fn deny(errno: i32) -> i32 {
    unsafe { bpf_set_retval(-errno) };
    DENY
}

#[inline(always)]
fn proto_of(sa: *const bpf_sock_addr) -> Option<u8> {
    let p = unsafe { (*sa).protocol } as u8;
    (p == PROTO_TCP || p == PROTO_UDP).then_some(p)
}

/// `user_port` is a 4-byte field holding the port in network byte order in
/// its first two bytes.
#[inline(always)]
fn read_port(sa: *const bpf_sock_addr) -> u16 {
    unsafe { (*sa).user_port as u16 }
}

#[inline(always)]
fn read_ip6(sa: *const bpf_sock_addr) -> [u32; 4] {
    // The verifier accepts user_ip6 only in 4-byte (or aligned 8-byte)
    // accesses; read it word by word so the compiler cannot merge them into
    // something else.
    unsafe {
        let p = core::ptr::addr_of!((*sa).user_ip6) as *const u32;
        [
            core::ptr::read_volatile(p),
            core::ptr::read_volatile(p.add(1)),
            core::ptr::read_volatile(p.add(2)),
            core::ptr::read_volatile(p.add(3)),
        ]
    }
}

// The writers below are deliberately not inlined. Inlined, LLVM hoists
// `ctx + offset` into a register shared by several stores, and the verifier
// rejects any store through a modified context pointer ("dereference of
// modified ctx ptr"). As a separate BPF subprogram each store is one
// instruction with the offset in it.

/// Writes an IPv4 destination (network order) and port.
#[inline(never)]
fn write4(sa: *mut bpf_sock_addr, addr: u32, port: u16) {
    unsafe {
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_ip4), addr);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_port), u32::from(port));
    }
}

/// Writes an IPv6 destination (four network-order words) and port.
#[inline(never)]
fn write6(sa: *mut bpf_sock_addr, addr: [u32; 4], port: u16) {
    unsafe {
        let p = core::ptr::addr_of_mut!((*sa).user_ip6) as *mut u32;
        core::ptr::write_volatile(p, addr[0]);
        core::ptr::write_volatile(p.add(1), addr[1]);
        core::ptr::write_volatile(p.add(2), addr[2]);
        core::ptr::write_volatile(p.add(3), addr[3]);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*sa).user_port), u32::from(port));
    }
}

/// ::ffff:a.b.c.d, the form an IPv4 destination takes on a dual-stack
/// (AF_INET6) socket. Such sockets reach IPv4 Services through the IPv4 maps.
#[inline(always)]
fn v4_mapped(addr: &[u32; 4]) -> Option<u32> {
    (addr[0] == 0 && addr[1] == 0 && addr[2] == 0xffff_u32.to_be()).then_some(addr[3])
}

#[inline(always)]
fn mapped(addr4: u32) -> [u32; 4] {
    [0, 0, 0xffff_u32.to_be(), addr4]
}

#[inline(always)]
fn forward4(ctx: &SockAddrContext, pick: Pick) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = proto_of(sa) else {
        return ALLOW;
    };
    let addr = unsafe { (*sa).user_ip4 };
    let env = Sock::<V4>::new(sa.cast());
    match socket_lb::forward(&env, addr, read_port(sa), proto, pick) {
        Verdict::Pass => ALLOW,
        Verdict::Translate(baddr, bport) => {
            write4(sa, baddr, bport);
            ALLOW
        }
        Verdict::Refuse(errno) => deny(errno),
    }
}

#[inline(always)]
fn forward6(ctx: &SockAddrContext, pick: Pick) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = proto_of(sa) else {
        return ALLOW;
    };
    let addr = read_ip6(sa);
    let port = read_port(sa);
    if let Some(addr4) = v4_mapped(&addr) {
        let env = Sock::<V4>::new(sa.cast());
        return match socket_lb::forward(&env, addr4, port, proto, pick) {
            Verdict::Pass => ALLOW,
            Verdict::Translate(baddr, bport) => {
                write6(sa, mapped(baddr), bport);
                ALLOW
            }
            Verdict::Refuse(errno) => deny(errno),
        };
    }
    let env = Sock::<V6>::new(sa.cast());
    match socket_lb::forward(&env, addr, port, proto, pick) {
        Verdict::Pass => ALLOW,
        Verdict::Translate(baddr, bport) => {
            write6(sa, baddr, bport);
            ALLOW
        }
        Verdict::Refuse(errno) => deny(errno),
    }
}

#[inline(always)]
fn reverse4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = proto_of(sa) else {
        return ALLOW;
    };
    let addr = unsafe { (*sa).user_ip4 };
    let env = Sock::<V4>::new(sa.cast());
    if let Some((faddr, fport)) = socket_lb::reverse(&env, addr, read_port(sa), proto) {
        write4(sa, faddr, fport);
    }
    ALLOW
}

#[inline(always)]
fn reverse6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    let Some(proto) = proto_of(sa) else {
        return ALLOW;
    };
    let addr = read_ip6(sa);
    let port = read_port(sa);
    if let Some(addr4) = v4_mapped(&addr) {
        let env = Sock::<V4>::new(sa.cast());
        if let Some((faddr, fport)) = socket_lb::reverse(&env, addr4, port, proto) {
            write6(sa, mapped(faddr), fport);
        }
    } else if let Some((faddr, fport)) =
        socket_lb::reverse(&Sock::<V6>::new(sa.cast()), addr, port, proto)
    {
        write6(sa, faddr, fport);
    }
    ALLOW
}

#[cgroup_sock_addr(connect4)]
pub(crate) fn ferry_connect4(ctx: SockAddrContext) -> i32 {
    forward4(&ctx, Pick::Random)
}

#[cgroup_sock_addr(connect6)]
pub(crate) fn ferry_connect6(ctx: SockAddrContext) -> i32 {
    forward6(&ctx, Pick::Random)
}

#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn ferry_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward4(&ctx, Pick::SocketCookie)
}

#[cgroup_sock_addr(sendmsg6)]
pub(crate) fn ferry_sendmsg6(ctx: SockAddrContext) -> i32 {
    forward6(&ctx, Pick::SocketCookie)
}

#[cgroup_sock_addr(recvmsg4)]
pub(crate) fn ferry_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub(crate) fn ferry_recvmsg6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub(crate) fn ferry_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse4(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub(crate) fn ferry_getpeername6(ctx: SockAddrContext) -> i32 {
    reverse6(&ctx)
}

/// NodePort bind protection: a bind in the node's own network namespace to
/// a port that a NodePort frontend owns would silently shadow the Service
/// for local clients; fail it with EADDRINUSE instead.
#[inline(always)]
fn post_bind(ctx: &SockContext) -> i32 {
    let sk: *const bpf_sock = ctx.sock;
    let Some(config) = CONFIG.get(0) else {
        return ALLOW;
    };
    if config.host_netns_cookie == 0 {
        return ALLOW;
    }
    let (port, proto) = unsafe { ((*sk).src_port as u16, (*sk).protocol as u8) };
    let key = NodePortKey {
        port,
        proto,
        _pad: 0,
    };
    if unsafe { NODEPORT_BINDS.get(key) }.is_none() {
        return ALLOW;
    }
    if unsafe { bpf_get_netns_cookie(ctx.sock.cast()) } != config.host_netns_cookie {
        return ALLOW;
    }
    deny(EADDRINUSE)
}

#[cgroup_sock(post_bind4)]
pub(crate) fn ferry_post_bind4(ctx: SockContext) -> i32 {
    post_bind(&ctx)
}

#[cgroup_sock(post_bind6)]
pub(crate) fn ferry_post_bind6(ctx: SockContext) -> i32 {
    post_bind(&ctx)
}

/// A socket of the cgroup is released: its socket table entry, if it has
/// one, is freed for the next socket (see `lb_common::Socket4`). Attached
/// before the connect programs, so no socket gets an entry without this
/// hook seeing it go (`BPF_CGROUP_INET_SOCK_RELEASE`, Linux 5.9). An
/// AF_INET6 socket may hold an IPv4 entry too (an IPv4-mapped destination
/// goes through the IPv4 maps).
#[cgroup_sock(sock_release)]
pub(crate) fn ferry_sock_release(ctx: SockContext) -> i32 {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock.cast()) };
    socket_lb::forget(&Sock::<V4>::new(ctx.sock.cast()), cookie);
    if unsafe { (*ctx.sock).family } == AF_INET6 {
        socket_lb::forget(&Sock::<V6>::new(ctx.sock.cast()), cookie);
    }
    ALLOW
}
