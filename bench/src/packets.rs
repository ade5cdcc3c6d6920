//! `cargo xtask bench-packets`: the north-south program's cost per packet,
//! by BPF_PROG_TEST_RUN, with 1 to 100,000 external frontends in its maps.
//!
//! Four packets, all through `ferry_external`, in one run:
//! - floor: an ICMP packet, which the program parses (Ethernet, IPv4) and
//!   passes without a map lookup;
//! - miss: TCP to no frontend (parse, one frontend lookup, pass);
//! - established: a TCP segment of a known flow (flow lookup, rewrite);
//! - new flow: a SYN from a fresh client port to a random frontend
//!   (frontend, Maglev entry, masquerade port claim, two flow inserts,
//!   rewrite).
//!
//! The first three repeat one packet (`repeat`, the kernel averages); a new
//! flow cannot repeat, so it is run once per source port and averaged, and
//! so is the floor, for a fair comparison (`once` columns). The run takes
//! place in a network namespace of its own (forwarding off: no route is
//! found, the packet goes back to the stack after the rewrite).

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions},
};
use etherparse::PacketBuilder;
use lb_common::{
    EXTERNAL_F_SNAT, ExternalConfig, ExternalFrontendValue, Frontend4Key, FrontendKind,
    MaglevEntry, PROTO_TCP, programs,
};
use lb_userspace::datapath::{self, external::ExternalMaps};
use sandbox::{BpffsDir, Netns};

use super::NAMING;
use super::stats::Rng;

const MAGLEV_SIZE: u32 = lb_common::capacity::MAGLEV_TABLE_SIZE;
const BACKENDS: u32 = 10;
const REPEAT: u32 = 100_000;

/// Frontend i: 10.200.x.y:30000 (TCP).
fn frontend_ip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i)
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

struct Bench {
    ebpf: Ebpf,
    maps: ExternalMaps,
    _bpffs: BpffsDir,
    netns: Netns,
}

impl Bench {
    fn new() -> Result<Bench> {
        let netns = Netns::new_with(NAMING, "pkt")?;
        let bpffs = BpffsDir::new_with(NAMING)?;
        let dir = datapath::BpffsDir::new(bpffs.path());
        dir.prepare()?;
        let mut ebpf = datapath::load_pinned(&dir).context("loading the eBPF object")?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(programs::EXTERNAL)
            .context("ferry_external missing")?
            .try_into()?;
        prog.load()?;
        let mut maps = ExternalMaps::open(&dir)?;
        maps.config.set(
            0,
            ExternalConfig {
                snat4: u32::from_ne_bytes([192, 0, 2, 1]),
                snat6: [0; 4],
                maglev_size: MAGLEV_SIZE,
                snat_port_min: 1024,
                snat_port_max: 65535,
            },
            0,
        )?;
        // One table of BACKENDS backends, round robin (the cost does not
        // depend on the table's contents).
        for i in 0..MAGLEV_SIZE {
            let b = Ipv4Addr::new(10, 1, 0, 1 + (i % BACKENDS) as u8);
            maps.maglev.set(
                i,
                MaglevEntry {
                    addr: [u32::from_ne_bytes(b.octets()), 0, 0, 0],
                    port: 8080u16.to_be(),
                    flags: 0,
                    _pad: 0,
                },
                0,
            )?;
        }
        Ok(Bench {
            ebpf,
            maps,
            _bpffs: bpffs,
            netns,
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

    /// ns per run of `packet`, `repeat` times in one call.
    fn run(&self, packet: &[u8], repeat: u32) -> Result<f64> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(programs::EXTERNAL)
            .context("ferry_external missing")?
            .try_into()?;
        let mut out = vec![0u8; packet.len() + 64];
        let r = self.netns.run(|| {
            prog.test_run(TestRunOptions {
                data_in: Some(packet),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::new()
            })
        })?;
        Ok(r.duration.as_nanos() as f64)
    }

    /// Mean ns of single runs of each packet.
    fn run_each(&self, packets: &[Vec<u8>]) -> Result<f64> {
        let prog: &SchedClassifier = self
            .ebpf
            .program(programs::EXTERNAL)
            .context("ferry_external missing")?
            .try_into()?;
        let total = self.netns.run(|| -> Result<u128> {
            let mut total = 0u128;
            let mut out = vec![0u8; 256];
            for p in packets {
                let r = prog.test_run(TestRunOptions {
                    data_in: Some(p),
                    data_out: Some(&mut out),
                    ..TestRunOptions::new()
                })?;
                total += r.duration.as_nanos();
            }
            Ok(total)
        })?;
        Ok(total as f64 / packets.len() as f64)
    }
}

/// One scale's figures, ns per packet.
pub struct Row {
    pub frontends: u32,
    pub floor: f64,
    pub miss: f64,
    pub established: f64,
    pub floor_once: f64,
    pub new_flow_once: f64,
}

pub fn run(scales: &[u32], new_flows: u32, seed: u64) -> Result<Vec<Row>> {
    let mut b = Bench::new()?;
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    let mut have = 0;
    let client = Ipv4Addr::new(203, 0, 113, 7);
    let mut next_port: u32 = 0;
    for &n in scales {
        b.frontends(have, n)?;
        have = have.max(n);
        let target = frontend_ip(n / 2);
        let floor = icmp(client, target);
        let miss = tcp((client, 1), (Ipv4Addr::new(10, 250, 0, 1), 80), true);
        // Established: one SYN makes the flow, then its segments repeat.
        let flow = tcp((client, 2), (target, 30000), true);
        b.run(&flow, 1)?;
        let established = tcp((client, 2), (target, 30000), false);
        let syns: Vec<Vec<u8>> = (0..new_flows)
            .map(|_| {
                // A fresh client (address and port) per flow, so that no
                // masquerade port search meets a taken port more than the
                // table's load makes it.
                next_port += 1;
                let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + next_port);
                let fe = frontend_ip(rng.below(n as usize) as u32);
                tcp((src, 10000), (fe, 30000), true)
            })
            .collect();
        let floors: Vec<Vec<u8>> = (0..new_flows).map(|_| floor.clone()).collect();
        rows.push(Row {
            frontends: n,
            floor: b.run(&floor, REPEAT)?,
            miss: b.run(&miss, REPEAT)?,
            established: b.run(&established, REPEAT)?,
            floor_once: b.run_each(&floors)?,
            new_flow_once: b.run_each(&syns)?,
        });
    }
    Ok(rows)
}

/// The figures as a Markdown table, with the targets.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| External frontends | floor | miss | established | floor (once) | new flow (once) | established − floor | new flow − floor |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:+.0} | {:+.0} |\n",
            r.frontends,
            r.floor,
            r.miss,
            r.established,
            r.floor_once,
            r.new_flow_once,
            r.established - r.floor,
            r.new_flow_once - r.floor_once
        ));
    }
    if let Some(last) = rows.last() {
        let est = last.established - last.floor;
        let new = last.new_flow_once - last.floor_once;
        s.push_str(&format!(
            "\nAt {} frontends: established − floor {est:.0} ns (target ≤ 60: {}), new flow − floor {new:.0} ns (target ≤ 150: {}).\n",
            last.frontends,
            if est <= 60.0 { "met" } else { "missed" },
            if new <= 150.0 { "met" } else { "missed" },
        ));
    }
    s
}
