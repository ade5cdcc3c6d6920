//! `cargo xtask bench-packets`: the north-south programs' cost per packet,
//! by BPF_PROG_TEST_RUN, with 1 to 100,000 external frontends in their
//! maps, for both hooks: tc (`ferry_external`) and XDP
//! (`ferry_external_xdp`).
//!
//! Four packets per hook, in one run:
//! - floor: an ICMP echo, which the program parses (Ethernet, IPv4) and
//!   passes without a map lookup;
//! - miss: TCP to no frontend (parse, one frontend lookup, pass);
//! - established: a segment of a known flow (frontend and flow lookups,
//!   route, rewrite of addresses and ports with their checksums, MACs,
//!   redirect);
//! - new flow: a SYN from a fresh client to a random frontend (frontend,
//!   Maglev entry, route, masquerade port claim, two flow inserts,
//!   rewrite, redirect).
//!
//! The runs take place in a network namespace of their own with a real
//! route and resolved neighbours (forwarding on, two veths, static
//! neighbour entries), so that the route lookup succeeds and the packet is
//! rewritten and redirected as on a node: XDP only translates what it can
//! send itself.
//!
//! BPF_PROG_TEST_RUN's `repeat` runs the program again on the packet the
//! previous run left, so a translated packet would be a different one from
//! the second run on. The established flow is therefore a pair of flow
//! entries that translate into each other: client → frontend becomes node
//! → backend (DNAT and SNAT, both ports), and that packet, arriving, has an
//! entry back (as a reply to a masquerade port has). Every run rewrites
//! four fields and their checksums; the figure is the mean over both. The
//! second packet's destination port is in the masquerade range, as a
//! reply's from a backend on another node is (a packet to no frontend and
//! outside the range is passed untouched).
//! A new flow cannot repeat either: it is run once per source and
//! averaged, and so is the floor, for a fair comparison (`once` columns).

use std::net::Ipv4Addr;

use anyhow::{Context, Result, ensure};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use etherparse::PacketBuilder;
use lb_common::{
    EXTERNAL_F_SNAT, ExternalBackend, ExternalConfig, ExternalFrontendValue, FLOW_F_REPLY,
    FLOW_F_SNAT, Flow4, Flow4Nat, Frontend4Key, FrontendKind, InterfaceAddrs, PROTO_TCP, programs,
};
use lb_userspace::datapath::{self, external::ExternalMaps, inspect::monotonic_ns};
use sandbox::{BpffsDir, Netns, ns_topology::sysctl};
use serde::Serialize;

use super::NAMING;
use super::stats::Rng;

const MAGLEV_SIZE: u32 = lb_common::capacity::MAGLEV_TABLE_SIZE;
const BACKENDS: u32 = 10;
/// Even: the established pair alternates.
const REPEAT: u32 = 100_000;
/// Calls of `REPEAT` runs per repeated figure.
const SAMPLES: usize = 7;
/// The port the established pair is masqueraded to.
const SNAT_PORT: u16 = 61_000;
/// The established pair's backend port: inside the masquerade range, so
/// that the pair's second packet is taken for a reply to a masquerade port.
const PAIR_BACKEND_PORT: u16 = 62_000;

/// The node's address towards the backends (the masquerade address) and
/// towards the clients, and the next hop on each side.
const NODE_BACKEND_SIDE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 254);
const NODE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 254);
const BACKEND_HOP: (&str, &str) = ("10.1.0.1", "02:00:00:00:01:01");
const CLIENT_HOP: (&str, &str) = ("10.2.0.1", "02:00:00:00:02:01");

/// Frontend i: 10.200.0.0 + i, port 30000 (TCP).
fn frontend_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i)
}

/// Backend i: 10.3.0.1 + i, port 8080.
fn backend_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 3, 0, 1 + i as u8)
}

fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, 1, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("building a packet");
    out
}

fn icmp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, b"ferry")
        .expect("building a packet");
    out
}

fn addr(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

/// The hook a figure is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Hook {
    Tc,
    Xdp,
}

impl Hook {
    const ALL: [Hook; 2] = [Hook::Tc, Hook::Xdp];

    fn name(self) -> &'static str {
        match self {
            Hook::Tc => "tc",
            Hook::Xdp => "XDP",
        }
    }
}

struct Bench {
    ebpf: Ebpf,
    maps: ExternalMaps,
    _bpffs: BpffsDir,
    netns: Netns,
    /// `struct xdp_md` of a frame arriving on the client-side interface.
    xdp_md: Vec<u8>,
}

impl Bench {
    fn new() -> Result<Bench> {
        let netns = Netns::new_with(NAMING, "pkt")?;
        let client_side = route_net(&netns)?;
        let bpffs = BpffsDir::new_with(NAMING)?;
        let dir = datapath::BpffsDir::new(bpffs.path());
        dir.prepare()?;
        let mut ebpf = datapath::load_pinned(&dir).context("loading the eBPF object")?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(programs::EXTERNAL)
            .context("ferry_external missing")?
            .try_into()?;
        prog.load()?;
        let xdp: &mut Xdp = ebpf
            .program_mut(programs::EXTERNAL_XDP)
            .context("ferry_external_xdp missing")?
            .try_into()?;
        xdp.load()?;
        let mut maps = ExternalMaps::open(&dir)?;
        maps.config.set(
            0,
            ExternalConfig {
                snat4: addr(NODE_BACKEND_SIDE),
                snat6: [0; 4],
                maglev_size: MAGLEV_SIZE,
                // The agent's default masquerade range: which packets the
                // programs take for replies depends on it.
                snat_port_min: 61000,
                snat_port_max: 65535,
            },
            0,
        )?;
        // The external interfaces, as the agent writes them (XDP sends
        // only out of these).
        for (name, ip) in [("fxa", NODE_BACKEND_SIDE), ("fxb", NODE_CLIENT_SIDE)] {
            maps.iface_addrs.insert(
                ifindex(&netns, name)?,
                InterfaceAddrs {
                    addr4: addr(ip),
                    addr6: [0; 4],
                },
                0,
            )?;
        }
        // One table of BACKENDS backends, round robin (the cost does not
        // depend on the table's contents).
        for i in 0..BACKENDS {
            maps.write_backend(
                i + 1,
                ExternalBackend {
                    addr: [addr(backend_ip(i)), 0, 0, 0],
                    port: 8080u16.to_be(),
                    flags: 0,
                    _pad: 0,
                },
            )?;
        }
        let table: Vec<u32> = (0..MAGLEV_SIZE).map(|i| i % BACKENDS + 1).collect();
        maps.write_table(0, &table)?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex (data_end: the kernel takes the
        // frame's length).
        let xdp_md = [0u32, 0, 0, client_side, 0, 0]
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .collect();
        Ok(Bench {
            ebpf,
            maps,
            _bpffs: bpffs,
            netns,
            xdp_md,
        })
    }

    /// Grows the frontends to `n`.
    fn frontends(&mut self, from: u32, n: u32) -> Result<()> {
        for i in from..n {
            let key = Frontend4Key {
                addr: frontend_ip(i).octets(),
                port: 30000u16.to_be(),
                proto: PROTO_TCP,
                _pad: 0,
            };
            let value = ExternalFrontendValue {
                table: 0,
                count: BACKENDS as u16,
                flags: FrontendKind::NodePort as u16 | EXTERNAL_F_SNAT,
            };
            self.maps.frontends4.insert(key, value, 0)?;
        }
        Ok(())
    }

    /// The established pair for `client` → `frontend`: that flow's entry
    /// (to node → backend, masqueraded), and one for the translated packet
    /// that translates it back. Returns both packets.
    fn established_pair(
        &mut self,
        client: (Ipv4Addr, u16),
        frontend: (Ipv4Addr, u16),
    ) -> Result<[Vec<u8>; 2]> {
        let backend = (backend_ip(0), PAIR_BACKEND_PORT);
        let node = (NODE_BACKEND_SIDE, SNAT_PORT);
        let now = monotonic_ns();
        let key = |s: (Ipv4Addr, u16), d: (Ipv4Addr, u16)| Flow4 {
            saddr: addr(s.0),
            daddr: addr(d.0),
            sport: s.1.to_be(),
            dport: d.1.to_be(),
            proto: PROTO_TCP,
            _pad0: 0,
            _pad1: 0,
        };
        let nat = |s: (Ipv4Addr, u16), d: (Ipv4Addr, u16), flags| Flow4Nat {
            saddr: addr(s.0),
            daddr: addr(d.0),
            sport: s.1.to_be(),
            dport: d.1.to_be(),
            flags,
            _pad0: 0,
            _pad1: 0,
            last_seen_ns: now,
        };
        self.maps
            .flows4
            .insert(key(client, frontend), nat(node, backend, FLOW_F_SNAT), 0)?;
        self.maps.flows4.insert(
            key(node, backend),
            nat(client, frontend, FLOW_F_REPLY | FLOW_F_SNAT),
            0,
        )?;
        Ok([tcp(client, frontend, false), tcp(node, backend, false)])
    }

    /// Empties the flow table (between hooks and scales, so that every new
    /// flow finds the same table load).
    fn clear_flows(&mut self) -> Result<()> {
        let keys: Vec<Flow4> = self.maps.flows4.keys().collect::<Result<_, _>>()?;
        for k in keys {
            // Gone already (evicted) is fine.
            let _ = self.maps.flows4.remove(&k);
        }
        Ok(())
    }

    /// One test run of `packet` through `hook`'s program, `repeat` times:
    /// (ns per run, verdict).
    fn run(&self, hook: Hook, packet: &[u8], repeat: u32) -> Result<(f64, u32)> {
        let mut out = vec![0u8; packet.len() + 64];
        let r = match hook {
            Hook::Tc => {
                let prog: &SchedClassifier = self
                    .ebpf
                    .program(programs::EXTERNAL)
                    .context("ferry_external missing")?
                    .try_into()?;
                self.netns.run(|| {
                    prog.test_run(TestRunOptions {
                        data_in: Some(packet),
                        data_out: Some(&mut out),
                        repeat,
                        ..TestRunOptions::new()
                    })
                })?
            }
            Hook::Xdp => {
                let prog: &Xdp = self
                    .ebpf
                    .program(programs::EXTERNAL_XDP)
                    .context("ferry_external_xdp missing")?
                    .try_into()?;
                let mut md = self.xdp_md.clone();
                md[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
                self.netns.run(|| {
                    prog.test_run(TestRunOptions {
                        data_in: Some(packet),
                        data_out: Some(&mut out),
                        ctx_in: Some(&md),
                        repeat,
                        ..TestRunOptions::new()
                    })
                })?
            }
        };
        Ok((r.duration.as_nanos() as f64, r.return_value))
    }

    /// `SAMPLES` calls of `REPEAT` runs of `packet`: their median, min and
    /// max (ns per run). The cost of a repeated packet differs between
    /// calls far more than within one (on this VM by up to 2× for the
    /// established pair, in the same process, on the same CPU), so one
    /// call is not a figure.
    fn spread(&self, hook: Hook, packet: &[u8]) -> Result<Spread> {
        let mut v = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES {
            v.push(self.run(hook, packet, REPEAT)?.0);
        }
        v.sort_by(f64::total_cmp);
        Ok(Spread {
            median: v[SAMPLES / 2],
            min: v[0],
            max: v[SAMPLES - 1],
        })
    }

    /// Mean ns of single runs of each packet; every verdict must be
    /// `expect`.
    fn run_each(&self, hook: Hook, packets: &[Vec<u8>], expect: u32) -> Result<f64> {
        let mut total = 0.0;
        for p in packets {
            let (ns, verdict) = self.run(hook, p, 1)?;
            ensure!(
                verdict == expect,
                "{}: verdict {verdict}, expected {expect}",
                hook.name()
            );
            total += ns;
        }
        Ok(total / packets.len() as f64)
    }
}

/// The namespace's two sides: fxa towards the backends, fxb towards the
/// clients, each with a resolved next hop; forwarding on. Returns fxb's
/// ifindex.
fn route_net(ns: &Netns) -> Result<u32> {
    ns.cmd(&["link", "add", "fxa", "type", "veth", "peer", "name", "fxb"])?;
    for link in ["fxa", "fxb"] {
        ns.cmd(&["link", "set", link, "up"])?;
    }
    sysctl(ns, "net.ipv4.ip_forward", "1")?;
    ns.cmd(&[
        "addr",
        "add",
        &format!("{NODE_BACKEND_SIDE}/24"),
        "dev",
        "fxa",
    ])?;
    ns.cmd(&[
        "addr",
        "add",
        &format!("{NODE_CLIENT_SIDE}/24"),
        "dev",
        "fxb",
    ])?;
    for ((hop, mac), dev) in [(BACKEND_HOP, "fxa"), (CLIENT_HOP, "fxb")] {
        ns.cmd(&[
            "neigh",
            "add",
            hop,
            "lladdr",
            mac,
            "dev",
            dev,
            "nud",
            "permanent",
        ])?;
    }
    // Backends and frontends behind the backend side (a translated-back
    // established packet goes to its frontend), clients behind the other.
    for (net, (hop, _), dev) in [
        ("10.3.0.0/16", BACKEND_HOP, "fxa"),
        ("10.200.0.0/15", BACKEND_HOP, "fxa"),
        ("100.64.0.0/10", CLIENT_HOP, "fxb"),
        ("203.0.113.0/24", CLIENT_HOP, "fxb"),
    ] {
        ns.cmd(&["route", "add", net, "via", hop, "dev", dev])?;
    }
    ifindex(ns, "fxb")
}

fn ifindex(ns: &Netns, name: &str) -> Result<u32> {
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: a valid NUL-terminated string.
    let i = ns.run(|| unsafe { libc::if_nametoindex(cname.as_ptr()) });
    ensure!(i != 0, "no interface {name:?} in the bench namespace");
    Ok(i)
}

struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

/// One scale's figures for one hook, ns per packet.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub frontends: u32,
    pub hook: Hook,
    pub floor: f64,
    pub miss: f64,
    /// Median of `SAMPLES` calls (the spread is in the two below).
    pub established: f64,
    pub established_min: f64,
    pub established_max: f64,
    pub floor_once: f64,
    pub new_flow_once: f64,
}

/// What a redirect returns in each hook (the translated packet leaves by
/// the route).
fn redirected(hook: Hook) -> u32 {
    match hook {
        Hook::Tc => 7,  // TC_ACT_REDIRECT
        Hook::Xdp => 4, // XDP_REDIRECT
    }
}

pub fn run(scales: &[u32], new_flows: u32, seed: u64) -> Result<Vec<Row>> {
    let mut b = Bench::new()?;
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    let mut have = 0;
    let client = Ipv4Addr::new(203, 0, 113, 7);
    let mut next_client: u32 = 0;
    for &n in scales {
        b.frontends(have, n)?;
        have = have.max(n);
        for hook in Hook::ALL {
            b.clear_flows()?;
            let target = (frontend_ip(n / 2), 30000);
            let floor = icmp(client, target.0);
            let miss = tcp((client, 1), (Ipv4Addr::new(10, 250, 0, 1), 80), true);
            let pair = b.established_pair((client, 2), target)?;
            // Both halves translate and leave by the route.
            for p in &pair {
                let (_, verdict) = b.run(hook, p, 1)?;
                ensure!(
                    verdict == redirected(hook),
                    "{}: the established pair is not translated (verdict {verdict})",
                    hook.name()
                );
            }
            let syns: Vec<Vec<u8>> = (0..new_flows)
                .map(|_| {
                    // A fresh client per flow, so that no masquerade port
                    // search meets a taken port more than the table's load
                    // makes it.
                    next_client += 1;
                    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + next_client);
                    let fe = frontend_ip(rng.below(n as usize) as u32);
                    tcp((src, 10000), (fe, 30000), true)
                })
                .collect();
            let floors: Vec<Vec<u8>> = (0..new_flows).map(|_| floor.clone()).collect();
            let pass = match hook {
                Hook::Tc => u32::MAX, // TCX_NEXT (-1)
                Hook::Xdp => 2,       // XDP_PASS
            };
            let established = b.spread(hook, &pair[0])?;
            rows.push(Row {
                frontends: n,
                hook,
                floor: b.spread(hook, &floor)?.median,
                miss: b.spread(hook, &miss)?.median,
                established: established.median,
                established_min: established.min,
                established_max: established.max,
                floor_once: b.run_each(hook, &floors, pass)?,
                new_flow_once: b.run_each(hook, &syns, redirected(hook))?,
            });
        }
    }
    Ok(rows)
}

/// The targets, at the largest scale: established and new flow over
/// the floor, ns.
pub const TARGET_ESTABLISHED_NS: f64 = 60.0;
pub const TARGET_NEW_FLOW_NS: f64 = 150.0;

/// The figures as a Markdown table, with the targets at the largest scale.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| External frontends | hook | floor | miss | established [min–max] | floor (once) | new flow (once) | established − floor | new flow − floor |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | {:.0} [{:.0}–{:.0}] | {:.0} | {:.0} | {:+.0} | {:+.0} |\n",
            r.frontends,
            r.hook.name(),
            r.floor,
            r.miss,
            r.established,
            r.established_min,
            r.established_max,
            r.floor_once,
            r.new_flow_once,
            r.established - r.floor,
            r.new_flow_once - r.floor_once
        ));
    }
    let largest = rows.iter().map(|r| r.frontends).max();
    for r in rows.iter().filter(|r| Some(r.frontends) == largest) {
        let est = r.established - r.floor;
        let new = r.new_flow_once - r.floor_once;
        let verdict = |met: bool| if met { "met" } else { "missed" };
        s.push_str(&format!(
            "\n{} at {} frontends: established − floor {est:.0} ns (target ≤ {TARGET_ESTABLISHED_NS:.0}: {}), new flow − floor {new:.0} ns (target ≤ {TARGET_NEW_FLOW_NS:.0}: {}).\n",
            r.hook.name(),
            r.frontends,
            verdict(est <= TARGET_ESTABLISHED_NS),
            verdict(new <= TARGET_NEW_FLOW_NS),
        ));
    }
    s
}
