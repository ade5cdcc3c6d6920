//! The two packet hooks the north-south flow logic runs in, behind one
//! trait: tc (an `sk_buff`, checksum helpers that keep the skb's checksum
//! state right) and XDP (a raw frame, before any skb exists: checksums are
//! updated by hand, and a packet it cannot send on is left untouched for
//! the tc program behind it).

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_F_MARK_MANGLED_0, TC_ACT_OK, TC_ACT_SHOT, bpf_fib_lookup, bpf_redir_neigh,
        xdp_action, xdp_md,
    },
    cty::{c_long, c_void},
    helpers::generated::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh, bpf_xdp_load_bytes,
        bpf_xdp_store_bytes,
    },
    programs::TcContext,
};

use crate::maps::IFACE_ADDRS;

/// `route`'s result when the next hop's MAC address is known.
pub(crate) const ROUTE_RESOLVED: u8 = 1;

/// A pointer to `off..off + size_of::<T>()` of the packet when that range
/// lies in its linear part (`data`..`data_end`), checked as the verifier
/// wants it (packet pointer plus a constant against the end), so that it
/// may be read (and, in XDP, written) directly. A load helper costs a call
/// and a copy per field, several times per packet; a direct read is one
/// instruction. `None` leaves it to the helpers, which also reach paged
/// data.
#[inline(always)]
fn linear<T>(data: usize, data_end: usize, off: usize) -> Option<*mut T> {
    if data + off + core::mem::size_of::<T>() > data_end {
        return None;
    }
    Some((data + off) as *mut T)
}

/// A packet in one of the hooks: loads and stores at offsets from the
/// Ethernet header, checksum updates with `bpf_l3/l4_csum_replace`'s
/// arguments, the route lookup and the redirect. A copy is one pointer, so
/// subprograms take it in one register.
pub(crate) trait Frame: Copy {
    /// Not ours: the next program or the stack has it, untouched.
    const PASS: i32;
    const DROP: i32;
    /// Translated, but no route was found (forwarding off, no route; or
    /// under BPF_PROG_TEST_RUN): the stack routes it.
    const UNROUTED: i32;
    /// Whether this hook translates ICMP errors (tc does; XDP leaves them
    /// to tc, they are rare).
    const ICMP_ERRORS: bool;

    fn load<T>(self, off: usize) -> Result<T, c_long>;
    fn store<T>(self, off: usize, v: &T) -> Result<(), c_long>;
    fn len(self) -> u32;
    fn ifindex(self) -> u32;
    fn l3_csum_replace(self, off: usize, from: u64, to: u64, size: u64) -> Result<(), c_long>;
    fn l4_csum_replace(self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), c_long>;
    /// The hook's context, for helpers that take either.
    fn raw(self) -> *mut c_void;
    #[inline(always)]
    fn fib_lookup(self, params: *mut bpf_fib_lookup) -> c_long {
        unsafe {
            fib_lookup(
                self.raw(),
                params,
                core::mem::size_of::<bpf_fib_lookup>() as i32,
                0,
            )
        }
    }
    /// Whether a translated packet can be sent by this route (`route`
    /// state, egress ifindex). When not, the packet is passed untouched
    /// before anything is rewritten.
    fn can_transmit(route: u8, egress: u32) -> bool;
    fn redirect(self, ifindex: u32) -> i32;
    /// Redirect where the neighbour is not resolved yet (tc only: XDP's
    /// `can_transmit` refuses such routes).
    fn redirect_neigh(self, ifindex: u32, nh: &mut bpf_redir_neigh) -> i32;
}

/// tc (tcx) ingress.
#[derive(Clone, Copy)]
pub(crate) struct Tc(pub *mut __sk_buff);

impl Frame for Tc {
    /// TCX_NEXT.
    const PASS: i32 = -1;
    const DROP: i32 = TC_ACT_SHOT;
    const UNROUTED: i32 = TC_ACT_OK;
    const ICMP_ERRORS: bool = true;

    #[inline(always)]
    fn load<T>(self, off: usize) -> Result<T, c_long> {
        // Read again each time: checksum and store helpers may move the
        // packet data.
        let (data, data_end) = unsafe { ((*self.0).data as usize, (*self.0).data_end as usize) };
        match linear::<T>(data, data_end, off) {
            // SAFETY: in bounds, checked above; packet bytes are plain data.
            Some(p) => Ok(unsafe { core::ptr::read_unaligned(p) }),
            None => TcContext::new(self.0).load(off),
        }
    }
    #[inline(always)]
    fn store<T>(self, off: usize, v: &T) -> Result<(), c_long> {
        TcContext::new(self.0).store(off, v, 0)
    }
    #[inline(always)]
    fn len(self) -> u32 {
        TcContext::new(self.0).len()
    }
    #[inline(always)]
    fn ifindex(self) -> u32 {
        unsafe { (*self.0).ifindex }
    }
    #[inline(always)]
    fn l3_csum_replace(self, off: usize, from: u64, to: u64, size: u64) -> Result<(), c_long> {
        TcContext::new(self.0).l3_csum_replace(off, from, to, size)
    }
    #[inline(always)]
    fn l4_csum_replace(self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), c_long> {
        TcContext::new(self.0).l4_csum_replace(off, from, to, flags)
    }
    #[inline(always)]
    fn raw(self) -> *mut c_void {
        self.0 as *mut c_void
    }
    #[inline(always)]
    fn can_transmit(_: u8, _: u32) -> bool {
        true
    }
    #[inline(always)]
    fn redirect(self, ifindex: u32) -> i32 {
        unsafe { bpf_redirect(ifindex, 0) as i32 }
    }
    #[inline(always)]
    fn redirect_neigh(self, ifindex: u32, nh: &mut bpf_redir_neigh) -> i32 {
        unsafe {
            bpf_redirect_neigh(
                ifindex,
                nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            ) as i32
        }
    }
}

/// XDP, in front of the tc program on the same (external) interface.
#[derive(Clone, Copy)]
pub(crate) struct Xdp(pub *mut xdp_md);

/// RFC 1624's incremental update of a ones' complement checksum `sum`
/// (as stored) when `from` becomes `to` (`size` 2 or 4 bytes, as stored;
/// 0: `to` is a `bpf_csum_diff` result, `from` unused).
#[inline(always)]
fn csum_update(sum: u16, from: u64, to: u64, size: u64) -> u16 {
    let mut acc: u64 = u64::from(!sum);
    match size {
        2 => acc += u64::from(!(from as u16)) + u64::from(to as u16),
        4 => {
            let (f, t) = (from as u32, to as u32);
            acc += u64::from(!(f as u16))
                + u64::from(!((f >> 16) as u16))
                + u64::from(t as u16)
                + u64::from((t >> 16) as u16);
        }
        _ => acc += u64::from(to as u32),
    }
    // Four folds bring any sum of these few terms under 0x10000.
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

impl Xdp {
    /// The frame's linear part (all of it, unless multi-buffer).
    #[inline(always)]
    fn linear<T>(self, off: usize) -> Option<*mut T> {
        let (data, data_end) = unsafe { ((*self.0).data as usize, (*self.0).data_end as usize) };
        linear::<T>(data, data_end, off)
    }

    #[inline(always)]
    fn csum_replace(self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), c_long> {
        let sum: u16 = self.load(off)?;
        let mangled_0 = flags & u64::from(BPF_F_MARK_MANGLED_0) != 0;
        // UDP over IPv4 without a checksum: it stays without one.
        if mangled_0 && sum == 0 {
            return Ok(());
        }
        let mut new = csum_update(sum, from, to, flags & 0xf);
        if mangled_0 && new == 0 {
            new = 0xffff;
        }
        self.store(off, &new)
    }
}

impl Frame for Xdp {
    const PASS: i32 = xdp_action::XDP_PASS as i32;
    const DROP: i32 = xdp_action::XDP_DROP as i32;
    /// Never returned: `can_transmit` refuses unrouted packets first.
    const UNROUTED: i32 = xdp_action::XDP_PASS as i32;
    const ICMP_ERRORS: bool = false;

    #[inline(always)]
    fn load<T>(self, off: usize) -> Result<T, c_long> {
        if let Some(p) = self.linear::<T>(off) {
            // SAFETY: in bounds, checked by `linear`.
            return Ok(unsafe { core::ptr::read_unaligned(p) });
        }
        let mut v = core::mem::MaybeUninit::<T>::uninit();
        let ret = unsafe {
            bpf_xdp_load_bytes(
                self.0,
                off as u32,
                v.as_mut_ptr() as *mut c_void,
                core::mem::size_of::<T>() as u32,
            )
        };
        if ret == 0 {
            Ok(unsafe { v.assume_init() })
        } else {
            Err(ret)
        }
    }
    #[inline(always)]
    fn store<T>(self, off: usize, v: &T) -> Result<(), c_long> {
        if let Some(p) = self.linear::<T>(off) {
            // SAFETY: in bounds, checked by `linear`; an XDP frame has no
            // checksum state or shared clones to keep in step.
            unsafe { core::ptr::write_unaligned(p, core::ptr::read(v)) };
            return Ok(());
        }
        let ret = unsafe {
            bpf_xdp_store_bytes(
                self.0,
                off as u32,
                v as *const T as *mut c_void,
                core::mem::size_of::<T>() as u32,
            )
        };
        if ret == 0 { Ok(()) } else { Err(ret) }
    }
    #[inline(always)]
    fn len(self) -> u32 {
        unsafe { (*self.0).data_end.wrapping_sub((*self.0).data) }
    }
    #[inline(always)]
    fn ifindex(self) -> u32 {
        unsafe { (*self.0).ingress_ifindex }
    }
    #[inline(always)]
    fn l3_csum_replace(self, off: usize, from: u64, to: u64, size: u64) -> Result<(), c_long> {
        self.csum_replace(off, from, to, size)
    }
    #[inline(always)]
    fn l4_csum_replace(self, off: usize, from: u64, to: u64, flags: u64) -> Result<(), c_long> {
        // A raw frame has no checksum state to keep: BPF_F_PSEUDO_HDR
        // changes nothing here, and the L4 checksum in it is complete.
        self.csum_replace(off, from, to, flags)
    }
    #[inline(always)]
    fn raw(self) -> *mut c_void {
        self.0 as *mut c_void
    }
    #[inline(always)]
    fn can_transmit(route: u8, egress: u32) -> bool {
        // Only out of another external interface (those are the ones in
        // IFACE_ADDRS; their drivers take XDP frames): a pod's veth hands
        // redirected frames to its peer only when that peer runs XDP or
        // GRO, which the pod's namespace decides, so tc sends those.
        route == ROUTE_RESOLVED && unsafe { IFACE_ADDRS.get(egress) }.is_some()
    }
    #[inline(always)]
    fn redirect(self, ifindex: u32) -> i32 {
        unsafe { bpf_redirect(ifindex, 0) as i32 }
    }
    #[inline(always)]
    fn redirect_neigh(self, _: u32, _: &mut bpf_redir_neigh) -> i32 {
        Self::PASS
    }
}
