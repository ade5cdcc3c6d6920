//! North-south: packets that arrive from outside the node for a NodePort on
//! a node address, an externalIP or a load balancer IP, translated at tc
//! ingress as kube-proxy's rules translate them, and in front of tc by XDP
//! for the packets XDP can send itself (the same code over both hooks, see
//! `frame.rs`).
//!
//! - A new flow to an external frontend: source ranges (LB IPs), then a
//!   backend from the set's Maglev table by a hash of the client's address,
//!   port and the frontend port and protocol (not the node address, so that
//!   a flow picks the same backend whichever node it reaches), then DNAT,
//!   and with externalTrafficPolicy Cluster SNAT to the node's address on
//!   the interface the packet leaves by (kube-proxy masquerades). Both
//!   directions are recorded in the flow table (`FLOWS4/6`, an LRU).
//! - A packet of a known flow, either direction, is rewritten as its entry
//!   says; the reply direction makes the client see the frontend.
//! - The result is routed with `bpf_fib_lookup` and redirected out of the
//!   egress interface: the rewritten source may be the node's own address,
//!   which the stack would drop as martian on ingress.
//! - Everything else goes on untouched (`TC_ACT_UNSPEC`, so that the next
//!   tcx program, such as a CNI's, still runs), after a parse and one map
//!   lookup.
//! - An ICMP error quoting a packet of a translated flow (fragmentation
//!   needed / packet too big, port unreachable, time exceeded) is
//!   translated as a packet of that flow would be, quoted packet and outer
//!   header both, so that path MTU discovery and unreachable errors reach
//!   the real endpoints (conntrack does the same for RELATED packets).
//!
//! Limits (counted in `EXT_COUNTERS`): non-first IPv4 fragments, IPv4
//! options and IPv6 extension headers pass untranslated.

use aya_ebpf::{
    bindings::{
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    helpers::generated::{bpf_csum_diff, bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
    maps::lpm_trie::Key,
    programs::{TcContext, XdpContext},
};
use lb_common::{
    EXTERNAL_F_SNAT, EXTERNAL_F_SOURCE_RANGES, ExternalBackend, ExternalConfig,
    ExternalFrontendValue, FLOW_F_CLOSING, FLOW_F_REPLY, FLOW_F_SNAT, Flow4, Flow4Nat, Flow6,
    Flow6Nat, Frontend4Key, Frontend6Key, PROTO_TCP, PROTO_UDP, SOURCE_RANGE4_FRONTEND_BITS,
    SOURCE_RANGE6_FRONTEND_BITS, SourceRange4, SourceRange6, addr6_bytes, external_counter,
    maglev_hash,
};

use core::mem::MaybeUninit;

use crate::frame::{Frame, ROUTE_RESOLVED, Tc, Xdp};
use crate::maps::{
    EXT_BACKENDS, EXT_CONFIG, EXT_COUNTERS, EXT_FRONTENDS4, EXT_FRONTENDS6, FIB_SCRATCH, FLOWS4,
    FLOWS6, FlowTable, IFACE_ADDRS, MAGLEV, SOURCE_RANGES4, SOURCE_RANGES6,
};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IPV6_FRAGMENT: u8 = 44;
/// The ICMP header before the quoted packet: type, code, checksum, and
/// four bytes (unused, or the MTU).
const ICMP_HLEN: usize = 8;

const NSEC_PER_SEC: u64 = 1_000_000_000;
/// kube-proxy sets conntrack's TCP established timeout to a day.
const TCP_TIMEOUT_NS: u64 = 86_400 * NSEC_PER_SEC;
/// conntrack's UDP stream timeout.
const UDP_TIMEOUT_NS: u64 = 120 * NSEC_PER_SEC;
/// After a FIN or RST (conntrack's TIME_WAIT is 120 s; a closed flow's
/// masquerade port is wanted back sooner, and a late segment of it is only
/// answered with a reset).
const CLOSING_TIMEOUT_NS: u64 = 10 * NSEC_PER_SEC;
/// An entry's `last_seen_ns` is written at most this often.
const REFRESH_NS: u64 = NSEC_PER_SEC;
/// Masquerade ports tried (at random) for a new flow before it is dropped:
/// with half the range taken, all 16 fail for one SYN in 65,536, and its
/// retransmission tries 16 others.
const SNAT_TRIES: u32 = 16;

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// The flow table's clock: CLOCK_MONOTONIC at tick resolution
/// (`bpf_ktime_get_coarse_ns`, Linux 5.11). Its timeouts are seconds, and
/// the precise clock costs a TSC read per packet (in a VM about a tenth of
/// an established packet's cost); the coarse one is a load. An entry's time
/// may be up to a tick ahead of it (written by userspace from the precise
/// clock), so ages saturate at 0.
#[inline(always)]
fn clock() -> u64 {
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = EXT_COUNTERS.get_ptr_mut(index) {
        // Per-CPU: only this CPU writes its slot.
        unsafe { *c += 1 };
    }
}

/// Where ingress runs: external interfaces serve new flows to external
/// frontends; the others (pod-facing) only replies of known flows.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    External,
    Reply,
}

/// The transport header fields the datapath reads.
#[derive(Clone, Copy)]
struct L4 {
    sport: u16,
    dport: u16,
    proto: u8,
    /// TCP flags (0 for UDP).
    tcp_flags: u8,
    /// Offset of the L4 checksum.
    csum_off: usize,
}

/// A parsed packet of one family: where its transport header is, what it
/// holds, and its addresses. The subprograms below take it by reference
/// (BPF calls pass at most five registers).
struct Packet<F: Ip> {
    l4_off: usize,
    l4: L4,
    saddr: F::Addr,
    daddr: F::Addr,
}

/// `established`'s answer when the entry has expired: the packet is then a
/// new flow.
const EXPIRED: i32 = i32::MIN;

#[inline(always)]
fn read_l4<C: Frame>(ctx: C, off: usize, proto: u8) -> Option<L4> {
    let ports: [u16; 2] = ctx.load(off).ok()?;
    let (tcp_flags, csum_off) = if proto == PROTO_TCP {
        (ctx.load::<u8>(off + 13).ok()?, off + 16)
    } else {
        (0, off + 6)
    };
    Some(L4 {
        sport: ports[0],
        dport: ports[1],
        proto,
        tcp_flags,
        csum_off,
    })
}

#[inline(always)]
fn l4_flags(l4: &L4) -> u64 {
    // A UDP checksum of 0 means "none" (IPv4): leave it so, and never
    // produce 0 from a real checksum.
    if l4.proto == PROTO_UDP {
        u64::from(BPF_F_MARK_MANGLED_0)
    } else {
        0
    }
}

#[inline(always)]
fn timeout_ns(flags: u8, proto: u8) -> u64 {
    if flags & FLOW_F_CLOSING != 0 {
        CLOSING_TIMEOUT_NS
    } else if proto == PROTO_TCP {
        TCP_TIMEOUT_NS
    } else {
        UDP_TIMEOUT_NS
    }
}

#[inline(always)]
fn closing(l4: &L4) -> bool {
    l4.tcp_flags & (TCP_FIN | TCP_RST) != 0
}

#[inline(always)]
fn config() -> Option<&'static ExternalConfig> {
    EXT_CONFIG.get(0)
}

#[inline(always)]
fn maglev_entry(fe: &ExternalFrontendValue, hash: u32) -> Option<&'static ExternalBackend> {
    let size = config()?.maglev_size;
    // The table's own capacity bounds the index too (the kernel checks it:
    // BPF_F_INNER_MAP); the size in EXT_CONFIG is what every node uses.
    let id = *MAGLEV.get_value(fe.table, &hash.checked_rem(size)?)?;
    // Id 0 is never a backend: an unwritten entry.
    if id == 0 {
        return None;
    }
    // SAFETY: a lookup of a hash map; the value stays valid for this run
    // (the kernel frees elements only after an RCU grace period).
    unsafe { EXT_BACKENDS.get(id) }
}

/// The two families' packet and map specifics, so that the flow logic is
/// written once.
trait Ip {
    type Addr: Copy + PartialEq + Default + 'static;
    type Flow: Copy + 'static;
    type Nat: Copy + 'static;
    const ETH_P: u16;
    const AF: u8;
    /// Offsets of the source and destination address from the IP header.
    const SADDR_OFF: usize;
    const DADDR_OFF: usize;
    const L3_LEN: usize;
    /// The family's ICMP protocol number.
    const PROTO_ICMP: u8;

    fn flows() -> &'static FlowTable<Self::Flow, Self::Nat>;
    fn frontend(addr: Self::Addr, port: u16, proto: u8) -> Option<&'static ExternalFrontendValue>;
    fn source_allowed(daddr: Self::Addr, dport: u16, proto: u8, saddr: Self::Addr) -> bool;
    fn entry_addr(entry: &ExternalBackend) -> Self::Addr;
    fn hash_addr(addr: Self::Addr) -> u32;
    /// The masquerade address for packets leaving by `ifindex`.
    fn snat_addr(cfg: &ExternalConfig, ifindex: u32) -> Self::Addr;

    fn flow(s: Self::Addr, d: Self::Addr, sport: u16, dport: u16, proto: u8) -> Self::Flow;
    fn nat(s: Self::Addr, d: Self::Addr, sport: u16, dport: u16, flags: u8, now: u64) -> Self::Nat;
    /// (saddr, daddr, sport, dport, flags, last_seen_ns)
    fn nat_fields(nat: &Self::Nat) -> (Self::Addr, Self::Addr, u16, u16, u8, u64);
    fn nat_touch(nat: *mut Self::Nat, flags: u8, now: u64);

    /// Rewrites an address at `off` (the L3 checksum too for IPv4).
    fn rewrite_addr<C: Frame>(
        ctx: C,
        off: usize,
        old: Self::Addr,
        new: Self::Addr,
        l4: &L4,
    ) -> bool;
    fn fib_addrs(params: &mut bpf_fib_lookup, saddr: Self::Addr, daddr: Self::Addr);
    fn neigh(params: &bpf_fib_lookup) -> bpf_redir_neigh;

    /// The outer header of an ICMP message: (saddr, daddr), when Ferry
    /// could translate it (no IPv4 options, not a later fragment).
    fn icmp_header<C: Frame>(ctx: C) -> Option<(Self::Addr, Self::Addr)>;
    /// ICMP error types, which quote the packet they are about.
    fn icmp_error(ty: u8) -> bool;
    /// The quoted IP header at `off`: (saddr, daddr, protocol), when it is
    /// one of a packet Ferry could have translated.
    fn quoted_header<C: Frame>(ctx: C, off: usize) -> Option<(Self::Addr, Self::Addr, u8)>;
    /// Rewrites an ICMP error's outer address at `off` from the IP header;
    /// the ICMP checksum is at `icmp_csum`.
    fn rewrite_icmp_outer<C: Frame>(
        ctx: C,
        off: usize,
        old: Self::Addr,
        new: Self::Addr,
        icmp_csum: usize,
    ) -> bool;
    /// Rewrites an address of the quoted header at `quoted` (field at
    /// `quoted + field`), and the quoted transport checksum when the error
    /// holds it (`qcsum`: its offset and `l4_csum_replace` flags).
    fn rewrite_quoted_addr<C: Frame>(
        ctx: C,
        quoted: usize,
        field: usize,
        change: (Self::Addr, Self::Addr),
        icmp_csum: usize,
        qcsum: Option<(usize, u64)>,
    ) -> bool;
}

struct V4;
struct V6;

impl Ip for V4 {
    type Addr = u32;
    type Flow = Flow4;
    type Nat = Flow4Nat;
    const ETH_P: u16 = ETH_P_IP;
    const AF: u8 = AF_INET;
    const SADDR_OFF: usize = 12;
    const DADDR_OFF: usize = 16;
    const L3_LEN: usize = 20;
    const PROTO_ICMP: u8 = 1;

    #[inline(always)]
    fn flows() -> &'static FlowTable<Flow4, Flow4Nat> {
        &FLOWS4
    }
    #[inline(always)]
    fn frontend(addr: u32, port: u16, proto: u8) -> Option<&'static ExternalFrontendValue> {
        let key = Frontend4Key {
            addr: addr.to_ne_bytes(),
            port,
            proto,
            _pad: 0,
        };
        unsafe { EXT_FRONTENDS4.get(key) }
    }
    #[inline(always)]
    fn source_allowed(daddr: u32, dport: u16, proto: u8, saddr: u32) -> bool {
        let key = Key::new(
            SOURCE_RANGE4_FRONTEND_BITS + 32,
            SourceRange4 {
                frontend_addr: daddr,
                port: dport,
                proto,
                _pad: 0,
                source: saddr,
            },
        );
        SOURCE_RANGES4.get(&key).is_some()
    }
    #[inline(always)]
    fn entry_addr(entry: &ExternalBackend) -> u32 {
        entry.addr[0]
    }
    #[inline(always)]
    fn hash_addr(addr: u32) -> u32 {
        maglev_hash::addr4(addr)
    }
    #[inline(always)]
    fn snat_addr(cfg: &ExternalConfig, ifindex: u32) -> u32 {
        match unsafe { IFACE_ADDRS.get(ifindex) } {
            Some(a) if a.addr4 != 0 => a.addr4,
            _ => cfg.snat4,
        }
    }
    #[inline(always)]
    fn flow(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> Flow4 {
        Flow4 {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
    #[inline(always)]
    fn nat(saddr: u32, daddr: u32, sport: u16, dport: u16, flags: u8, now: u64) -> Flow4Nat {
        Flow4Nat {
            saddr,
            daddr,
            sport,
            dport,
            flags,
            _pad0: 0,
            _pad1: 0,
            last_seen_ns: now,
        }
    }
    #[inline(always)]
    fn nat_fields(n: &Flow4Nat) -> (u32, u32, u16, u16, u8, u64) {
        (n.saddr, n.daddr, n.sport, n.dport, n.flags, n.last_seen_ns)
    }
    #[inline(always)]
    fn nat_touch(nat: *mut Flow4Nat, flags: u8, now: u64) {
        // Racing writers (another CPU with a packet of the same flow) only
        // ever store a newer time or add a flag: either order is fine.
        unsafe {
            core::ptr::write_volatile(&raw mut (*nat).flags, flags);
            core::ptr::write_volatile(&raw mut (*nat).last_seen_ns, now);
        }
    }
    #[inline(always)]
    fn rewrite_addr<C: Frame>(ctx: C, off: usize, old: u32, new: u32, l4: &L4) -> bool {
        let l3 = ETH_HLEN;
        ctx.l4_csum_replace(
            l4.csum_off,
            u64::from(old),
            u64::from(new),
            l4_flags(l4) | u64::from(BPF_F_PSEUDO_HDR) | 4,
        )
        .is_ok()
            && ctx
                .l3_csum_replace(l3 + 10, u64::from(old), u64::from(new), 4)
                .is_ok()
            && ctx.store(l3 + off, &new).is_ok()
    }
    #[inline(always)]
    fn fib_addrs(params: &mut bpf_fib_lookup, saddr: u32, daddr: u32) {
        params.__bindgen_anon_3.ipv4_src = saddr;
        params.__bindgen_anon_4.ipv4_dst = daddr;
    }
    #[inline(always)]
    fn neigh(params: &bpf_fib_lookup) -> bpf_redir_neigh {
        // Built whole, not zeroed first (see `zero_words`). After the
        // lookup, ipv4_dst holds the next hop.
        bpf_redir_neigh {
            nh_family: u32::from(AF_INET),
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                ipv6_nh: [unsafe { params.__bindgen_anon_4.ipv4_dst }, 0, 0, 0],
            },
        }
    }
    #[inline(always)]
    fn icmp_header<C: Frame>(ctx: C) -> Option<(u32, u32)> {
        let ip = ctx.load::<Ipv4Hdr>(ETH_HLEN).ok()?;
        (ip.version_ihl == 0x45 && u16::from_be(ip.frag_off) & 0x1fff == 0)
            .then_some((ip.saddr, ip.daddr))
    }
    #[inline(always)]
    fn icmp_error(ty: u8) -> bool {
        // Destination unreachable (fragmentation needed among them), time
        // exceeded, parameter problem.
        matches!(ty, 3 | 11 | 12)
    }
    #[inline(always)]
    fn quoted_header<C: Frame>(ctx: C, off: usize) -> Option<(u32, u32, u8)> {
        let ip = ctx.load::<Ipv4Hdr>(off).ok()?;
        (ip.version_ihl == 0x45
            && u16::from_be(ip.frag_off) & 0x1fff == 0
            && (ip.proto == PROTO_TCP || ip.proto == PROTO_UDP))
            .then_some((ip.saddr, ip.daddr, ip.proto))
    }
    #[inline(always)]
    fn rewrite_icmp_outer<C: Frame>(ctx: C, off: usize, old: u32, new: u32, _: usize) -> bool {
        // ICMP's checksum covers no pseudo-header: only the IP header's
        // checksum changes.
        ctx.l3_csum_replace(ETH_HLEN + 10, u64::from(old), u64::from(new), 4)
            .is_ok()
            && ctx.store(ETH_HLEN + off, &new).is_ok()
    }
    #[inline(always)]
    fn rewrite_quoted_addr<C: Frame>(
        ctx: C,
        quoted: usize,
        field: usize,
        (old, new): (u32, u32),
        _: usize,
        qcsum: Option<(usize, u64)>,
    ) -> bool {
        // The quoted header stays valid (its checksum is updated with
        // it), so its words still sum to 0xffff and the ICMP checksum over
        // them does not change. The quoted transport checksum covers the
        // address through its pseudo-header, which is plain data here.
        if let Some((off, flags)) = qcsum
            && ctx
                .l4_csum_replace(off, u64::from(old), u64::from(new), flags | 4)
                .is_err()
        {
            return false;
        }
        ctx.l3_csum_replace(quoted + 10, u64::from(old), u64::from(new), 4)
            .is_ok()
            && ctx.store(quoted + field, &new).is_ok()
    }
}

impl Ip for V6 {
    type Addr = [u32; 4];
    type Flow = Flow6;
    type Nat = Flow6Nat;
    const ETH_P: u16 = ETH_P_IPV6;
    const AF: u8 = AF_INET6;
    const SADDR_OFF: usize = 8;
    const DADDR_OFF: usize = 24;
    const L3_LEN: usize = 40;
    const PROTO_ICMP: u8 = 58;

    #[inline(always)]
    fn flows() -> &'static FlowTable<Flow6, Flow6Nat> {
        &FLOWS6
    }
    #[inline(always)]
    fn frontend(addr: [u32; 4], port: u16, proto: u8) -> Option<&'static ExternalFrontendValue> {
        let key = Frontend6Key {
            addr: addr6_bytes(addr),
            port,
            proto,
            _pad: 0,
        };
        unsafe { EXT_FRONTENDS6.get(key) }
    }
    #[inline(always)]
    fn source_allowed(daddr: [u32; 4], dport: u16, proto: u8, saddr: [u32; 4]) -> bool {
        let key = Key::new(
            SOURCE_RANGE6_FRONTEND_BITS + 128,
            SourceRange6 {
                frontend_addr: daddr,
                port: dport,
                proto,
                _pad: 0,
                source: saddr,
            },
        );
        SOURCE_RANGES6.get(&key).is_some()
    }
    #[inline(always)]
    fn entry_addr(entry: &ExternalBackend) -> [u32; 4] {
        entry.addr
    }
    #[inline(always)]
    fn hash_addr(a: [u32; 4]) -> u32 {
        maglev_hash::addr6(a)
    }
    #[inline(always)]
    fn snat_addr(cfg: &ExternalConfig, ifindex: u32) -> [u32; 4] {
        match unsafe { IFACE_ADDRS.get(ifindex) } {
            Some(a) if a.addr6 != [0; 4] => a.addr6,
            _ => cfg.snat6,
        }
    }
    #[inline(always)]
    fn flow(saddr: [u32; 4], daddr: [u32; 4], sport: u16, dport: u16, proto: u8) -> Flow6 {
        Flow6 {
            saddr,
            daddr,
            sport,
            dport,
            proto,
            _pad0: 0,
            _pad1: 0,
        }
    }
    #[inline(always)]
    fn nat(
        saddr: [u32; 4],
        daddr: [u32; 4],
        sport: u16,
        dport: u16,
        flags: u8,
        now: u64,
    ) -> Flow6Nat {
        Flow6Nat {
            saddr,
            daddr,
            sport,
            dport,
            flags,
            _pad0: 0,
            _pad1: 0,
            last_seen_ns: now,
        }
    }
    #[inline(always)]
    fn nat_fields(n: &Flow6Nat) -> ([u32; 4], [u32; 4], u16, u16, u8, u64) {
        (n.saddr, n.daddr, n.sport, n.dport, n.flags, n.last_seen_ns)
    }
    #[inline(always)]
    fn nat_touch(nat: *mut Flow6Nat, flags: u8, now: u64) {
        unsafe {
            core::ptr::write_volatile(&raw mut (*nat).flags, flags);
            core::ptr::write_volatile(&raw mut (*nat).last_seen_ns, now);
        }
    }
    #[inline(always)]
    fn rewrite_addr<C: Frame>(ctx: C, off: usize, old: [u32; 4], new: [u32; 4], l4: &L4) -> bool {
        let mut from = old;
        let mut to = new;
        // IPv6 has no header checksum; the L4 one covers the addresses
        // through the pseudo-header.
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        diff >= 0
            && ctx
                .l4_csum_replace(
                    l4.csum_off,
                    0,
                    diff as u64,
                    l4_flags(l4) | u64::from(BPF_F_PSEUDO_HDR),
                )
                .is_ok()
            && ctx.store(ETH_HLEN + off, &new).is_ok()
    }
    #[inline(always)]
    fn fib_addrs(params: &mut bpf_fib_lookup, saddr: [u32; 4], daddr: [u32; 4]) {
        params.__bindgen_anon_3.ipv6_src = saddr;
        params.__bindgen_anon_4.ipv6_dst = daddr;
    }
    #[inline(always)]
    fn neigh(params: &bpf_fib_lookup) -> bpf_redir_neigh {
        bpf_redir_neigh {
            nh_family: u32::from(AF_INET6),
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                ipv6_nh: unsafe { params.__bindgen_anon_4.ipv6_dst },
            },
        }
    }
    #[inline(always)]
    fn icmp_header<C: Frame>(ctx: C) -> Option<([u32; 4], [u32; 4])> {
        let ip = ctx.load::<Ipv6Hdr>(ETH_HLEN).ok()?;
        Some((ip.saddr, ip.daddr))
    }
    #[inline(always)]
    fn icmp_error(ty: u8) -> bool {
        // Destination unreachable, packet too big, time exceeded,
        // parameter problem.
        matches!(ty, 1..=4)
    }
    #[inline(always)]
    fn quoted_header<C: Frame>(ctx: C, off: usize) -> Option<([u32; 4], [u32; 4], u8)> {
        let ip = ctx.load::<Ipv6Hdr>(off).ok()?;
        (ip.nexthdr == PROTO_TCP || ip.nexthdr == PROTO_UDP)
            .then_some((ip.saddr, ip.daddr, ip.nexthdr))
    }
    #[inline(always)]
    fn rewrite_icmp_outer<C: Frame>(
        ctx: C,
        off: usize,
        old: [u32; 4],
        new: [u32; 4],
        icmp_csum: usize,
    ) -> bool {
        // ICMPv6's checksum covers the pseudo-header, as TCP's does.
        let icmp = L4 {
            sport: 0,
            dport: 0,
            proto: Self::PROTO_ICMP,
            tcp_flags: 0,
            csum_off: icmp_csum,
        };
        Self::rewrite_addr(ctx, off, old, new, &icmp)
    }
    #[inline(always)]
    fn rewrite_quoted_addr<C: Frame>(
        ctx: C,
        quoted: usize,
        field: usize,
        (old, new): ([u32; 4], [u32; 4]),
        icmp_csum: usize,
        qcsum: Option<(usize, u64)>,
    ) -> bool {
        let mut from = old;
        let mut to = new;
        let diff = unsafe { bpf_csum_diff(from.as_mut_ptr(), 16, to.as_mut_ptr(), 16, 0) };
        if diff < 0 {
            return false;
        }
        // The quoted address is data of the ICMPv6 message (no pseudo-
        // header flag), and of the quoted transport checksum's pseudo-
        // header.
        if let Some((off, flags)) = qcsum
            && ctx.l4_csum_replace(off, 0, diff as u64, flags).is_err()
        {
            return false;
        }
        ctx.l4_csum_replace(icmp_csum, 0, diff as u64, 0).is_ok()
            && ctx.store(quoted + field, &new).is_ok()
    }
}

/// Where `route` left the packet's route (the lookup's result itself is in
/// `FIB_SCRATCH`: egress ifindex, next hop, MAC addresses).
const ROUTE_NONE: u8 = 0;
const ROUTE_NO_NEIGH: u8 = 2;

/// Zeroes `*p` by 8-byte stores. Not `*p = zeroed()`: LLVM makes that a
/// call of a byte-loop `memset` in BPF (64 iterations for the route
/// lookup's parameters, on every packet); volatile stores stay stores.
#[inline(always)]
fn zero_words<T>(p: *mut T) {
    const { assert!(core::mem::size_of::<T>().is_multiple_of(8) && core::mem::align_of::<T>() >= 4) };
    let words = p.cast::<u64>();
    let mut i = 0;
    while i < core::mem::size_of::<T>() / 8 {
        // SAFETY: within `*p` (a multiple of 8 bytes); BPF stores need no
        // alignment beyond the map value's, which is 8.
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
}

/// Looks the route up; returns (ROUTE_*, egress ifindex).
#[inline(always)]
fn route<C: Frame, F: Ip>(ctx: C, saddr: F::Addr, daddr: F::Addr, l4: &L4) -> (u8, u32) {
    let Some(p) = FIB_SCRATCH.get_ptr_mut(0) else {
        return (ROUTE_NONE, 0);
    };
    zero_words(p);
    // SAFETY: this CPU's scratch entry, used by this run only.
    let params = unsafe { &mut *p };
    params.family = F::AF;
    params.l4_protocol = l4.proto;
    params.sport = l4.sport;
    params.dport = l4.dport;
    params.__bindgen_anon_1.tot_len = (ctx.len() as usize - ETH_HLEN) as u16;
    params.ifindex = ctx.ifindex();
    F::fib_addrs(params, saddr, daddr);
    let ret = ctx.fib_lookup(p);
    let state = match ret as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => ROUTE_RESOLVED,
        BPF_FIB_LKUP_RET_NO_NEIGH => ROUTE_NO_NEIGH,
        _ => return (ROUTE_NONE, 0),
    };
    (state, params.ifindex)
}

/// Sends the rewritten packet out by the route `route` found. Without one
/// (forwarding off, no route; or under BPF_PROG_TEST_RUN) the stack gets
/// it.
#[inline(always)]
fn transmit<C: Frame, F: Ip>(ctx: C, state: u8) -> i32 {
    if state == ROUTE_NONE {
        return C::UNROUTED;
    }
    let Some(p) = FIB_SCRATCH.get_ptr(0) else {
        return C::UNROUTED;
    };
    // SAFETY: as in `route`, which filled it earlier in this run.
    let params = unsafe { &*p };
    if state == ROUTE_RESOLVED {
        // Built without zeroing it first (a zeroed array is a `memset`
        // call, see `zero_words`).
        let macs: [u8; 12] = unsafe {
            let mut m = core::mem::MaybeUninit::<[u8; 12]>::uninit();
            let p = m.as_mut_ptr().cast::<u8>();
            core::ptr::copy_nonoverlapping(params.dmac.as_ptr(), p, 6);
            core::ptr::copy_nonoverlapping(params.smac.as_ptr(), p.add(6), 6);
            m.assume_init()
        };
        if ctx.store(0, &macs).is_err() {
            return C::DROP;
        }
        ctx.redirect(params.ifindex)
    } else {
        let mut nh = F::neigh(params);
        ctx.redirect_neigh(params.ifindex, &mut nh)
    }
}

/// What a packet becomes: its new addresses and ports, and its route; for
/// a new flow also what `record` needs.
struct Translation<F: Ip> {
    saddr: F::Addr,
    daddr: F::Addr,
    sport: u16,
    dport: u16,
    route: u8,
    /// Masquerade (externalTrafficPolicy Cluster).
    snat: bool,
    /// The route's egress interface.
    egress: u32,
    /// When `new_flow` ran: the entries' `last_seen_ns` (one clock read
    /// per new flow).
    now: u64,
}

/// The verdict `established` and `record` give when they filled the
/// translation for `apply`.
const TRANSLATE: i32 = i32::MIN + 1;
/// `new_flow`'s verdict when it chose a backend: `record` goes next.
const RECORD: i32 = i32::MIN + 2;

/// Rewrites the packet as `t` says and sends it on.
#[inline(never)]
fn apply<C: Frame, F: Ip>(ctx: C, pkt: &Packet<F>, t: &Translation<F>) -> i32 {
    if !rewrite::<C, F>(
        ctx,
        pkt.l4_off,
        &pkt.l4,
        (pkt.saddr, pkt.daddr),
        (t.saddr, t.daddr, t.sport, t.dport),
    ) {
        return C::DROP;
    }
    transmit::<C, F>(ctx, t.route)
}

/// Rewrites the packet from (saddr, daddr, sport, dport) to the new ones.
#[inline(always)]
fn rewrite<C: Frame, F: Ip>(
    ctx: C,
    l4_off: usize,
    l4: &L4,
    old: (F::Addr, F::Addr),
    new: (F::Addr, F::Addr, u16, u16),
) -> bool {
    let (saddr, daddr) = old;
    let (nsaddr, ndaddr, nsport, ndport) = new;
    let flags = l4_flags(l4);
    if saddr != nsaddr && !F::rewrite_addr(ctx, F::SADDR_OFF, saddr, nsaddr, l4) {
        return false;
    }
    if daddr != ndaddr && !F::rewrite_addr(ctx, F::DADDR_OFF, daddr, ndaddr, l4) {
        return false;
    }
    if l4.sport != nsport
        && (ctx
            .l4_csum_replace(
                l4.csum_off,
                u64::from(l4.sport),
                u64::from(nsport),
                flags | 2,
            )
            .is_err()
            || ctx.store(l4_off, &nsport).is_err())
    {
        return false;
    }
    if l4.dport != ndport
        && (ctx
            .l4_csum_replace(
                l4.csum_off,
                u64::from(l4.dport),
                u64::from(ndport),
                flags | 2,
            )
            .is_err()
            || ctx.store(l4_off + 2, &ndport).is_err())
    {
        return false;
    }
    true
}

/// A packet of a known flow: translated as the entry says (`TRANSLATE`,
/// `out` filled), the entry kept fresh (and its other direction, from the
/// forward side). `EXPIRED` when the entry has expired.
///
/// Not inlined (here and in `new_flow`, `masquerade`, `record`, `apply`,
/// `ingress4`, `ingress6`): each is a BPF subprogram with its own stack
/// frame, so that the frames of steps that never run nested do not add up
/// past the verifier's 512 bytes for a chain of calls. `handle` calls the
/// steps one after the other.
#[inline(never)]
fn established<C: Frame, F: Ip>(
    ctx: C,
    pkt: &Packet<F>,
    nat: *mut F::Nat,
    out: &mut MaybeUninit<Translation<F>>,
) -> i32 {
    let l4 = &pkt.l4;
    let (nsaddr, ndaddr, nsport, ndport, flags, last_seen) = F::nat_fields(unsafe { &*nat });
    let now = clock();
    if now.saturating_sub(last_seen) > timeout_ns(flags, l4.proto) {
        return EXPIRED;
    }
    let closing_now = closing(l4) && flags & FLOW_F_CLOSING == 0;
    if closing_now || now.saturating_sub(last_seen) > REFRESH_NS {
        let new_flags = if closing(l4) {
            flags | FLOW_F_CLOSING
        } else {
            flags
        };
        F::nat_touch(nat, new_flags, now);
        // The other direction's key is this packet as rewritten, reversed.
        let other = F::flow(ndaddr, nsaddr, ndport, nsport, l4.proto);
        if let Some(o) = F::flows().get_ptr_mut(other) {
            let (_, _, _, _, oflags, _) = F::nat_fields(unsafe { &*o });
            let oflags = if closing(l4) {
                oflags | FLOW_F_CLOSING
            } else {
                oflags
            };
            F::nat_touch(o, oflags, now);
        }
    }
    let (route, egress) = route::<C, F>(ctx, nsaddr, ndaddr, l4);
    out.write(Translation {
        saddr: nsaddr,
        daddr: ndaddr,
        sport: nsport,
        dport: ndport,
        route,
        snat: flags & FLOW_F_SNAT != 0,
        egress,
        now,
    });
    count(external_counter::ESTABLISHED);
    TRANSLATE
}

/// Claims a masquerade port towards the backend: the reply direction's key
/// is inserted only if no live flow holds it.
#[inline(always)]
fn claim_snat_port<F: Ip>(
    cfg: &ExternalConfig,
    backend: (F::Addr, u16),
    snat: F::Addr,
    proto: u8,
    reply: &F::Nat,
    now: u64,
) -> Option<u16> {
    let min = u32::from(cfg.snat_port_min);
    let max = u32::from(cfg.snat_port_max);
    if min == 0 || max < min {
        return None;
    }
    let span = max - min + 1;
    for _ in 0..SNAT_TRIES {
        // A random port each try, not a run from a start the flow
        // determines: with linear probes, taken ports cluster, and a
        // retransmitted SYN (same flow, same start) met the same full run
        // for as long as those flows lived (a connection stalled 11 s at
        // 44% of the range taken, in bench-north-south). The port is this
        // node's own business, so nothing needs it deterministic.
        // checked_rem: the verifier refuses the panic path a plain `%`
        // leaves (a call that never returns, at the end of the subprogram).
        let pick = unsafe { bpf_get_prandom_u32() }.checked_rem(span)?;
        let port = ((min + pick) as u16).to_be();
        let key = F::flow(backend.0, snat, backend.1, port, proto);
        // BPF_NOEXIST: two CPUs cannot take the same port.
        if F::flows().insert(key, reply, 1).is_ok() {
            return Some(port);
        }
        if let Some(existing) = unsafe { F::flows().get(key) } {
            let (_, _, _, _, flags, last_seen) = F::nat_fields(existing);
            if now.saturating_sub(last_seen) > timeout_ns(flags, proto)
                && F::flows().insert(key, reply, 0).is_ok()
            {
                return Some(port);
            }
        }
    }
    None
}

/// A new flow to an external frontend: the backend from the Maglev table
/// and its route (`RECORD`, `out` filled for `masquerade` and `record`),
/// or a drop.
#[inline(never)]
fn new_flow<C: Frame, F: Ip>(
    ctx: C,
    pkt: &Packet<F>,
    fe: &ExternalFrontendValue,
    out: &mut MaybeUninit<Translation<F>>,
) -> i32 {
    let (l4, saddr, daddr) = (&pkt.l4, pkt.saddr, pkt.daddr);
    if fe.count == 0 {
        count(external_counter::DROP_NO_BACKEND);
        return C::DROP;
    }
    if fe.flags & EXTERNAL_F_SOURCE_RANGES != 0
        && !F::source_allowed(daddr, l4.dport, l4.proto, saddr)
    {
        count(external_counter::DROP_SOURCE_RANGE);
        return C::DROP;
    }
    let hash = maglev_hash::flow(F::hash_addr(saddr), l4.sport, l4.dport, l4.proto);
    let Some(entry) = maglev_entry(fe, hash) else {
        count(external_counter::DROP_NO_BACKEND);
        return C::DROP;
    };
    let backend = F::entry_addr(entry);
    // The route to the backend decides the masquerade address.
    let (route, egress) = route::<C, F>(ctx, saddr, backend, l4);
    out.write(Translation {
        saddr,
        daddr: backend,
        sport: l4.sport,
        dport: entry.port,
        route,
        snat: fe.flags & EXTERNAL_F_SNAT != 0,
        egress,
        now: clock(),
    });
    RECORD
}

/// Masquerades a new flow (externalTrafficPolicy Cluster): claims a source
/// port on the node's address towards the backend, recording the reply
/// direction under it; the source in `t` becomes that address and port.
/// `RECORD` next, or a drop when no port is free.
#[inline(never)]
fn masquerade<C: Frame, F: Ip>(pkt: &Packet<F>, t: &mut Translation<F>) -> i32 {
    let l4 = &pkt.l4;
    let Some(cfg) = config() else {
        return C::PASS;
    };
    let now = t.now;
    let snat_addr = F::snat_addr(cfg, t.egress);
    let reply = F::nat(
        pkt.daddr,
        pkt.saddr,
        l4.dport,
        l4.sport,
        FLOW_F_REPLY | FLOW_F_SNAT,
        now,
    );
    let Some(port) =
        claim_snat_port::<F>(cfg, (t.daddr, t.dport), snat_addr, l4.proto, &reply, now)
    else {
        count(external_counter::DROP_SNAT_PORTS);
        return C::DROP;
    };
    t.saddr = snat_addr;
    t.sport = port;
    RECORD
}

/// Records a new flow: the forward direction, and the reply direction
/// unless `masquerade` did. Then `TRANSLATE`.
#[inline(never)]
fn record<F: Ip>(pkt: &Packet<F>, t: &Translation<F>) -> i32 {
    let (l4, saddr, daddr) = (&pkt.l4, pkt.saddr, pkt.daddr);
    let now = t.now;
    if !t.snat {
        let reply = F::nat(daddr, saddr, l4.dport, l4.sport, FLOW_F_REPLY, now);
        let key = F::flow(t.daddr, saddr, t.dport, l4.sport, l4.proto);
        if F::flows().insert(key, reply, 0).is_err() {
            count(external_counter::FLOW_TABLE_FULL);
        }
    }
    let mut flags = if t.snat { FLOW_F_SNAT } else { 0 };
    if closing(l4) {
        flags |= FLOW_F_CLOSING;
    }
    let forward = F::nat(t.saddr, t.daddr, t.sport, t.dport, flags, now);
    let key = F::flow(saddr, daddr, l4.sport, l4.dport, l4.proto);
    if F::flows().insert(key, forward, 0).is_err() {
        // Later packets of the flow hash to the same backend; with SNAT
        // they would claim another port, so the flow may break.
        count(external_counter::FLOW_TABLE_FULL);
    }
    count(external_counter::NEW_FLOW);
    TRANSLATE
}

/// An ICMP error quoting a packet of a translated flow: the quoted packet
/// is the flow's in the other direction, so the error is translated as a
/// packet of that flow would be. The quoted packet becomes what its sender
/// sent before translation (the backend's reply, or the client's packet);
/// the outer header gets the flow's address changes: the destination when
/// the flow's destination changes (the backend, or the client behind a
/// masquerade address), the source when its source does (masquerade, or a
/// reply that leaves as the frontend), else the router that sent it stays.
/// Anything else (no flow, not an error) passes untouched.
#[inline(never)]
fn icmp_error<C: Frame, F: Ip>(ctx: C) -> i32 {
    let Some((osaddr, odaddr)) = F::icmp_header(ctx) else {
        return C::PASS;
    };
    let icmp_off = ETH_HLEN + F::L3_LEN;
    let icmp_csum = icmp_off + 2;
    let Ok(ty) = ctx.load::<u8>(icmp_off) else {
        return C::PASS;
    };
    if !F::icmp_error(ty) {
        return C::PASS;
    }
    let quoted = icmp_off + ICMP_HLEN;
    let Some((qsaddr, qdaddr, proto)) = F::quoted_header(ctx, quoted) else {
        return C::PASS;
    };
    let ql4 = quoted + F::L3_LEN;
    let Ok(ports) = ctx.load::<[u16; 2]>(ql4) else {
        return C::PASS;
    };
    let key = F::flow(qdaddr, qsaddr, ports[1], ports[0], proto);
    let Some(nat) = (unsafe { F::flows().get(key) }) else {
        return C::PASS;
    };
    let (nsaddr, ndaddr, nsport, ndport, flags, last_seen) = F::nat_fields(nat);
    let now = clock();
    if now.saturating_sub(last_seen) > timeout_ns(flags, proto) {
        return C::PASS;
    }
    // ICMPv4 quotes at least 8 bytes of the transport header: UDP's
    // checksum, but TCP's only when the sender quoted more.
    let csum_off = ql4 + if proto == PROTO_TCP { 16 } else { 6 };
    let qcsum = (ctx.len() as usize >= csum_off + 2).then_some((
        csum_off,
        if proto == PROTO_UDP {
            u64::from(BPF_F_MARK_MANGLED_0)
        } else {
            0
        },
    ));
    let before = match qcsum {
        Some((off, _)) => ctx.load::<u16>(off).unwrap_or(0),
        None => 0,
    };
    let ok = (qsaddr == ndaddr
        || F::rewrite_quoted_addr(
            ctx,
            quoted,
            F::SADDR_OFF,
            (qsaddr, ndaddr),
            icmp_csum,
            qcsum,
        ))
        && (qdaddr == nsaddr
            || F::rewrite_quoted_addr(
                ctx,
                quoted,
                F::DADDR_OFF,
                (qdaddr, nsaddr),
                icmp_csum,
                qcsum,
            ))
        && rewrite_quoted_port(ctx, ql4, (ports[0], ndport), icmp_csum, qcsum)
        && rewrite_quoted_port(ctx, ql4 + 2, (ports[1], nsport), icmp_csum, qcsum);
    if !ok {
        return C::DROP;
    }
    // The quoted transport checksum is data of the ICMP message too.
    if let Some((off, _)) = qcsum {
        let after = ctx.load::<u16>(off).unwrap_or(before);
        if after != before
            && ctx
                .l4_csum_replace(icmp_csum, u64::from(before), u64::from(after), 2)
                .is_err()
        {
            return C::DROP;
        }
    }
    let saddr = if nsaddr != qdaddr { nsaddr } else { osaddr };
    let daddr = if ndaddr != qsaddr { ndaddr } else { odaddr };
    if (saddr != osaddr && !F::rewrite_icmp_outer(ctx, F::SADDR_OFF, osaddr, saddr, icmp_csum))
        || (daddr != odaddr && !F::rewrite_icmp_outer(ctx, F::DADDR_OFF, odaddr, daddr, icmp_csum))
    {
        return C::DROP;
    }
    let icmp = L4 {
        sport: 0,
        dport: 0,
        proto: F::PROTO_ICMP,
        tcp_flags: 0,
        csum_off: icmp_csum,
    };
    let (state, _) = route::<C, F>(ctx, saddr, daddr, &icmp);
    count(external_counter::ICMP_ERRORS);
    transmit::<C, F>(ctx, state)
}

/// Rewrites a port of the quoted transport header at `off`, with the
/// quoted checksum and the ICMP one (the port is data of both).
#[inline(always)]
fn rewrite_quoted_port<C: Frame>(
    ctx: C,
    off: usize,
    (old, new): (u16, u16),
    icmp_csum: usize,
    qcsum: Option<(usize, u64)>,
) -> bool {
    if old == new {
        return true;
    }
    if let Some((csum, flags)) = qcsum
        && ctx
            .l4_csum_replace(csum, u64::from(old), u64::from(new), flags | 2)
            .is_err()
    {
        return false;
    }
    ctx.l4_csum_replace(icmp_csum, u64::from(old), u64::from(new), 2)
        .is_ok()
        && ctx.store(off, &new).is_ok()
}

/// Runs `apply` when the deciding step asked for it.
#[inline(always)]
fn finish_verdict<C: Frame, F: Ip>(
    ctx: C,
    pkt: &Packet<F>,
    t: &MaybeUninit<Translation<F>>,
    verdict: i32,
) -> i32 {
    if verdict == TRANSLATE {
        // SAFETY: the steps that answer TRANSLATE wrote all of it.
        let t = unsafe { t.assume_init_ref() };
        if !C::can_transmit(t.route, t.egress) {
            // XDP with a route it cannot send by: tc, next on this
            // interface, finds the flow (recorded above for a new one) and
            // sends the packet.
            return C::PASS;
        }
        apply::<C, F>(ctx, pkt, t)
    } else {
        verdict
    }
}

/// The flow logic after parsing, for both families.
#[inline(always)]
fn handle<C: Frame, F: Ip>(ctx: C, role: Role, pkt: &Packet<F>) -> i32 {
    let l4 = &pkt.l4;
    // Written whole by the step that decides (not zeroed first: that is a
    // `memset` call, see `zero_words`).
    let mut t = MaybeUninit::<Translation<F>>::uninit();
    let key = F::flow(pkt.saddr, pkt.daddr, l4.sport, l4.dport, l4.proto);
    let frontend = if role == Role::External {
        F::frontend(pkt.daddr, l4.dport, l4.proto)
    } else {
        None
    };
    if frontend.is_none() && role == Role::External {
        // Replies from backends on other nodes come back to a masquerade
        // port; nothing else here can be a flow of ours.
        let Some(cfg) = config() else {
            return C::PASS;
        };
        let dport = u16::from_be(l4.dport);
        if dport < cfg.snat_port_min || dport > cfg.snat_port_max {
            return C::PASS;
        }
    }
    if let Some(nat) = F::flows().get_ptr_mut(key) {
        let verdict = established::<C, F>(ctx, pkt, nat, &mut t);
        if verdict != EXPIRED {
            return finish_verdict::<C, F>(ctx, pkt, &t, verdict);
        }
    }
    match frontend {
        Some(fe) => {
            let mut verdict = new_flow::<C, F>(ctx, pkt, fe, &mut t);
            if verdict == RECORD {
                // SAFETY: `new_flow` wrote all of it when it answers RECORD.
                let chosen = unsafe { t.assume_init_mut() };
                if chosen.snat {
                    verdict = masquerade::<C, F>(pkt, chosen);
                }
                if verdict == RECORD {
                    verdict = record::<F>(pkt, chosen);
                }
            }
            finish_verdict::<C, F>(ctx, pkt, &t, verdict)
        }
        None => C::PASS,
    }
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    version_ihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    vtc_flow: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

#[inline(never)]
fn ingress4<C: Frame>(ctx: C, role: Role) -> i32 {
    let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_HLEN) else {
        return C::PASS;
    };
    if ip.proto != PROTO_TCP && ip.proto != PROTO_UDP {
        return C::PASS;
    }
    // A fragment after the first has no ports; options move the ports.
    if u16::from_be(ip.frag_off) & 0x1fff != 0 || ip.version_ihl != 0x45 {
        count(external_counter::UNTRANSLATED);
        return C::PASS;
    }
    let l4_off = ETH_HLEN + V4::L3_LEN;
    let Some(l4) = read_l4(ctx, l4_off, ip.proto) else {
        return C::PASS;
    };
    let pkt = Packet::<V4> {
        l4_off,
        l4,
        saddr: ip.saddr,
        daddr: ip.daddr,
    };
    handle::<C, V4>(ctx, role, &pkt)
}

#[inline(never)]
fn ingress6<C: Frame>(ctx: C, role: Role) -> i32 {
    let Ok(ip) = ctx.load::<Ipv6Hdr>(ETH_HLEN) else {
        return C::PASS;
    };
    if ip.nexthdr != PROTO_TCP && ip.nexthdr != PROTO_UDP {
        if ip.nexthdr == IPV6_FRAGMENT {
            count(external_counter::UNTRANSLATED);
        }
        return C::PASS;
    }
    let l4_off = ETH_HLEN + V6::L3_LEN;
    let Some(l4) = read_l4(ctx, l4_off, ip.nexthdr) else {
        return C::PASS;
    };
    let pkt = Packet::<V6> {
        l4_off,
        l4,
        saddr: ip.saddr,
        daddr: ip.daddr,
    };
    handle::<C, V6>(ctx, role, &pkt)
}

#[inline(always)]
fn ingress<C: Frame>(ctx: C, role: Role) -> i32 {
    let Ok(proto) = ctx.load::<u16>(12) else {
        return C::PASS;
    };
    // ICMP is told apart here, so that `icmp_error`'s frame does not add
    // to `ingress4/6`'s on the stack.
    match u16::from_be(proto) {
        V4::ETH_P if C::ICMP_ERRORS && ctx.load::<u8>(ETH_HLEN + 9) == Ok(V4::PROTO_ICMP) => {
            icmp_error::<C, V4>(ctx)
        }
        V6::ETH_P if C::ICMP_ERRORS && ctx.load::<u8>(ETH_HLEN + 6) == Ok(V6::PROTO_ICMP) => {
            icmp_error::<C, V6>(ctx)
        }
        V4::ETH_P => ingress4(ctx, role),
        V6::ETH_P => ingress6(ctx, role),
        _ => C::PASS,
    }
}

/// tc ingress (tcx) on the external interfaces.
#[aya_ebpf::macros::classifier]
pub(crate) fn ferry_external(ctx: TcContext) -> i32 {
    ingress(Tc(ctx.skb.skb), Role::External)
}

/// tc ingress (tcx) on the node's other interfaces: replies only.
#[aya_ebpf::macros::classifier]
pub(crate) fn ferry_reply(ctx: TcContext) -> i32 {
    ingress(Tc(ctx.skb.skb), Role::Reply)
}

/// XDP on the external interfaces (`--xdp-mode`), in front of
/// `ferry_external`: the same flow logic, for packets it can send out of
/// another external interface; everything else goes on to tc untouched.
#[aya_ebpf::macros::xdp]
pub(crate) fn ferry_external_xdp(ctx: XdpContext) -> u32 {
    let verdict = ingress(Xdp(ctx.ctx), Role::External);
    if verdict == aya_ebpf::bindings::xdp_action::XDP_REDIRECT as i32 {
        count(external_counter::XDP_REDIRECTED);
    }
    verdict as u32
}
