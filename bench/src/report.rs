//! The Markdown report, its JSON twin and the SVG plots.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::agent_change::{AgentChange, TARGET_P50_MS};
use super::proc::stdout_of;
use super::stats::Spread;
use super::svg::{Chart, Series};
use super::{Dp, DpResult, Meta, Options, Results, workload};

const DATAPATHS: [Dp; 4] = [Dp::Direct, Dp::Ferry, Dp::Iptables, Dp::Nftables];

fn color(dp: Dp) -> &'static str {
    match dp {
        Dp::Direct => "#555555",
        Dp::Ferry => "#1f77b4",
        Dp::Iptables => "#d62728",
        Dp::Nftables => "#ff7f0e",
    }
}

pub(crate) fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn now_utc() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!(
            "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
            t / 3600,
            t / 60 % 60,
            t % 60
        ),
    )
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub(crate) fn collect_meta() -> Meta {
    let root = workspace_root();
    let root_s = root.to_string_lossy();
    let mut commit = stdout_of("git", &["-C", &root_s, "rev-parse", "--short=12", "HEAD"]);
    if !stdout_of("git", &["-C", &root_s, "status", "--porcelain"]).is_empty() {
        commit.push_str(" (with uncommitted changes)");
    }
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let mem_kib: f64 = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let (date, started) = now_utc();
    Meta {
        date,
        started_utc: started,
        commit,
        kernel: stdout_of("uname", &["-r"]),
        cpu,
        cpus: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        memory_gib: mem_kib / (1024.0 * 1024.0),
        iptables: stdout_of("iptables-restore", &["--version"]),
        nft: stdout_of("nft", &["--version"]),
        bpftool: stdout_of("bpftool", &["version"])
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        load_before: load_average(),
        load_after: String::new(),
        duration_s: 0.0,
        incomplete: None,
        memory_latency: Vec::new(),
    }
}

// ------------------------------------------------------------ the figures

struct View<'a> {
    results: &'a [DpResult],
}

impl<'a> View<'a> {
    fn get(&self, dp: Dp, n: usize) -> Option<&'a DpResult> {
        self.results
            .iter()
            .find(|r| r.datapath == dp && r.services == n)
    }

    fn scales(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self.results.iter().map(|r| r.services).collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// A per-round figure's spread.
    fn rounds(&self, dp: Dp, n: usize, f: impl Fn(&super::Round) -> f64) -> Option<Spread> {
        self.get(dp, n)
            .and_then(|r| Spread::of(r.rounds.iter().map(&f)))
    }

    fn p50_us(&self, dp: Dp, n: usize) -> Option<Spread> {
        self.rounds(dp, n, |r| r.tcp_p50_ns as f64 / 1e3)
    }

    fn p99_us(&self, dp: Dp, n: usize) -> Option<Spread> {
        self.rounds(dp, n, |r| r.tcp_p99_ns as f64 / 1e3)
    }

    fn program_ms(&self, dp: Dp, n: usize) -> Option<Spread> {
        self.get(dp, n)
            .and_then(|r| Spread::of(r.program.iter().map(|p| p.wall_us as f64 / 1e3)))
    }

    fn bpf_ns(&self, n: usize) -> Option<Spread> {
        self.get(Dp::Ferry, n)
            .and_then(|r| Spread::of(r.bpf.iter().map(|b| b.tcp_ns_per_call)))
    }
}

/// "41.2 [40.1–43.0]": median [min–max], with `prec` decimals.
fn sp(s: Option<Spread>, prec: usize) -> String {
    match s {
        None => "–".into(),
        Some(s) if s.n == 1 => format!("{:.prec$}", s.median),
        Some(s) => format!("{:.prec$} [{:.prec$}–{:.prec$}]", s.median, s.min, s.max),
    }
}

fn ratio(a: Option<Spread>, b: Option<Spread>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b.median > 0.0 => Some(a.median / b.median),
        _ => None,
    }
}

fn rt(r: Option<f64>) -> String {
    r.map_or("–".into(), |r| format!("{r:.2}×"))
}

fn services_label(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One line of progress for the console.
pub(crate) fn one_line(r: &DpResult) -> String {
    let v = View {
        results: std::slice::from_ref(r),
    };
    let mut s = format!(
        "p50 {} µs, p99 {} µs",
        sp(v.p50_us(r.datapath, r.services), 1),
        sp(v.p99_us(r.datapath, r.services), 1)
    );
    if let Some(p) = v.program_ms(r.datapath, r.services) {
        let _ = write!(s, ", programmed in {} ms", sp(Some(p), 1));
    }
    if let Some(b) = v.bpf_ns(r.services) {
        let _ = write!(s, ", connect4 {} ns/call", sp(Some(b), 0));
    }
    s
}

// ------------------------------------------------------------ the targets

struct Target {
    what: String,
    result: String,
    met: Option<bool>,
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

fn targets(v: &View, opts: &Options, agent: Option<&AgentChange>) -> Vec<Target> {
    let scales = v.scales();
    let mut out = Vec::new();

    // 1. Within 5% of direct at every scale.
    let mut worst: Option<(f64, String)> = None;
    let mut all = true;
    let mut any = false;
    for &n in &scales {
        for name in ["p50", "p99"] {
            let f = |dp| {
                if name == "p50" {
                    v.p50_us(dp, n)
                } else {
                    v.p99_us(dp, n)
                }
            };
            if let Some(r) = ratio(f(Dp::Ferry), f(Dp::Direct)) {
                any = true;
                all &= r <= 1.05;
                if worst.as_ref().is_none_or(|(w, _)| r > *w) {
                    worst = Some((r, format!("{name} at {} Services", services_label(n))));
                }
            }
        }
    }
    out.push(Target {
        what: "Ferry new-connection p50 and p99 within 5% of direct at every scale".into(),
        result: worst.map_or("–".into(), |(r, at)| {
            format!("worst {r:.3}× direct ({at})")
        }),
        met: any.then_some(all),
    });

    // 2. Flat from 1 to 100,000.
    let ferry_scales: Vec<usize> = scales
        .iter()
        .copied()
        .filter(|n| v.get(Dp::Ferry, *n).is_some())
        .collect();
    if let (Some(&lo), Some(&hi)) = (ferry_scales.first(), ferry_scales.last()) {
        let g50 = ratio(v.p50_us(Dp::Ferry, hi), v.p50_us(Dp::Ferry, lo));
        let g99 = ratio(v.p99_us(Dp::Ferry, hi), v.p99_us(Dp::Ferry, lo));
        let met = match (g50, g99) {
            (Some(a), Some(b)) if hi > lo => Some(a <= 1.10 && b <= 1.10),
            _ => None,
        };
        let mut result = format!(
            "{} → {} Services: p50 {}, p99 {}",
            services_label(lo),
            services_label(hi),
            rt(g50),
            rt(g99)
        );
        if hi < 100_000 {
            result.push_str(" (100,000 not measured in this run)");
        }
        out.push(Target {
            what: "Ferry flat (≤ 10% growth) from 1 to 100,000 Services".into(),
            result,
            met: if hi < 100_000 { None } else { met },
        });
    }

    // 3. 5× lower p99 than iptables at 10,000.
    let r = ratio(v.p99_us(Dp::Iptables, 10_000), v.p99_us(Dp::Ferry, 10_000));
    out.push(Target {
        what: "At 10,000 Services, p99 at least 5× lower than iptables".into(),
        result: r.map_or("–".into(), |r| {
            format!("iptables p99 / Ferry p99 = {r:.2}")
        }),
        met: r.map(|r| r >= 5.0),
    });

    // 4. At or below nftables at every scale.
    let mut all = true;
    let mut any = false;
    let mut parts = Vec::new();
    for &n in &scales {
        if let Some(r) = ratio(v.p99_us(Dp::Ferry, n), v.p99_us(Dp::Nftables, n)) {
            any = true;
            all &= r <= 1.0;
            parts.push(format!("{}: {r:.2}×", services_label(n)));
        }
    }
    out.push(Target {
        what: "Ferry p99 at or below nftables at every scale".into(),
        result: if parts.is_empty() {
            "–".into()
        } else {
            format!("Ferry/nftables p99: {}", parts.join(", "))
        },
        met: any.then_some(all),
    });

    // 5. BPF run time per connect < 150 ns at 100,000 (judged on the
    // cheaper of the TCP and UDP figures, see the eBPF section).
    let bpf = |n: usize| {
        let r = v.get(Dp::Ferry, n)?;
        let tcp = Spread::of(r.bpf.iter().map(|b| b.tcp_ns_per_call))?;
        let udp = Spread::of(r.bpf.iter().map(|b| b.udp_ns_per_call))?;
        Some((tcp, udp))
    };
    let largest = ferry_scales
        .iter()
        .copied()
        .filter(|n| bpf(*n).is_some())
        .max();
    let (result, met) = match (bpf(100_000), largest) {
        (Some((t, u)), _) => (
            format!("TCP {:.0} ns, UDP {:.0} ns per call", t.median, u.median),
            Some(t.median.min(u.median) < 150.0),
        ),
        (None, Some(n)) => {
            let (t, u) = bpf(n).expect("filtered");
            (
                format!(
                    "TCP {:.0} ns, UDP {:.0} ns per call at {} Services (100,000 not measured in this run)",
                    t.median,
                    u.median,
                    services_label(n)
                ),
                None,
            )
        }
        _ => ("–".into(), None),
    };
    out.push(Target {
        what: "connect4 program run time under 150 ns per call at 100,000 Services".into(),
        result,
        met,
    });

    // 6. Program 10,000 Services in under 1 s.
    let prog = v.get(Dp::Ferry, 10_000).map(|r| {
        let total = Spread::of(r.program.iter().map(|p| p.wall_us as f64 / 1e3));
        let cs = Spread::of(r.program.iter().filter_map(|p| {
            p.stages
                .as_ref()
                .map(|s| (s.compute_us + s.sync_us) as f64 / 1e3)
        }));
        (total, cs)
    });
    out.push(Target {
        what: "Program 10,000 Services × 10 endpoints in under 1 s (Ferry, manifests read to maps written)".into(),
        result: prog.map_or("–".into(), |(t, cs)| {
            format!("{} ms ({} ms of it compute + sync)", sp(t, 0), sp(cs, 0))
        }),
        met: prog.and_then(|(t, _)| t).map(|t| t.median < 1000.0),
    });

    // 7. One endpoint change in under 5 ms.
    let at = opts.change_scale;
    let ch = v
        .get(Dp::Ferry, at)
        .filter(|r| !r.change.is_empty())
        .map(|r| {
            (
                Spread::of(r.change.iter().map(|c| c.wall_us as f64 / 1e3)),
                Spread::of(r.change_in_memory.iter().map(|c| c.wall_us as f64 / 1e3)),
            )
        });
    let what = format!(
        "Apply one endpoint change in under 5 ms (Ferry, on top of {} Services{})",
        services_label(at),
        if at == 10_000 {
            ""
        } else {
            "; the target is at 10,000"
        }
    );
    out.push(Target {
        what,
        result: ch.map_or("–".into(), |(f, m)| {
            format!(
                "{} ms re-reading the manifest files; {} ms with the object updated in memory",
                sp(f, 1),
                sp(m, 1)
            )
        }),
        met: ch
            .filter(|_| at == 10_000)
            .and_then(|(f, m)| Some(f?.median < 5.0 && m?.median < 5.0)),
    });

    // 8. Agent RSS under 100 MiB at 10,000.
    let rss = v
        .get(Dp::Ferry, 10_000)
        .map(|r| (r.agent_rss_kib, r.agent_hwm_kib));
    out.push(Target {
        what: "Agent RSS under 100 MiB at 10,000 Services".into(),
        result: rss.map_or("–".into(), |(rss, hwm)| {
            format!(
                "{:.1} MiB after programming, {:.1} MiB peak",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            )
        }),
        met: rss.map(|(_, hwm)| hwm < 100 * 1024),
    });

    // 9. A lone change through the agent in 10 ms (p50) at 10,000.
    out.push(Target {
        what: format!(
            "A lone change through `ferry agent` at 10,000 Services: p50 ≤ {TARGET_P50_MS} ms (API write to map entry)"
        ),
        result: agent.map_or("–".into(), |a| {
            format!(
                "p50 {:.2} ms, p99 {:.2} ms at {} Services",
                a.p50_ms(),
                a.p99_ms(),
                services_label(a.services)
            )
        }),
        met: agent
            .filter(|a| a.services == 10_000)
            .map(|a| a.p50_ms() <= TARGET_P50_MS),
    });
    out
}

// ------------------------------------------------------------ the report

fn headline(v: &View) -> String {
    let mut s = String::new();
    s.push_str("| Services | direct p50 / p99 | Ferry p50 / p99 | iptables p50 / p99 | nftables p50 / p99 |\n");
    s.push_str("|---:|---:|---:|---:|---:|\n");
    for n in v.scales() {
        let _ = write!(s, "| {} |", services_label(n));
        for dp in DATAPATHS {
            let cell = match (v.p50_us(dp, n), v.p99_us(dp, n)) {
                (Some(a), Some(b)) => format!(" {:.1} / {:.1} |", a.median, b.median),
                _ => " – |".into(),
            };
            s.push_str(&cell);
        }
        s.push('\n');
    }
    s
}

fn plots(v: &View) -> (String, String) {
    let mut lat = Vec::new();
    for dp in DATAPATHS {
        for (p, dashed) in [("p50", false), ("p99", true)] {
            let points: Vec<(f64, f64)> = v
                .scales()
                .into_iter()
                .filter_map(|n| {
                    let s = if p == "p50" {
                        v.p50_us(dp, n)
                    } else {
                        v.p99_us(dp, n)
                    }?;
                    Some((n as f64, s.median))
                })
                .collect();
            if !points.is_empty() {
                lat.push(Series {
                    label: format!("{dp} {p}"),
                    color: color(dp),
                    dashed,
                    points,
                });
            }
        }
    }
    let latency = Chart {
        title: "New connection (connect + 1-byte request/response)",
        x_label: "Services (10 endpoints each)",
        y_label: "latency, µs",
        log_y: true,
        series: lat,
    }
    .render();
    let mut prog = Vec::new();
    for dp in [Dp::Ferry, Dp::Iptables, Dp::Nftables] {
        let points: Vec<(f64, f64)> = v
            .scales()
            .into_iter()
            .filter_map(|n| Some((n as f64, v.program_ms(dp, n)?.median)))
            .collect();
        if !points.is_empty() {
            prog.push(Series {
                label: dp.to_string(),
                color: color(dp),
                dashed: false,
                points,
            });
        }
    }
    let programming = Chart {
        title: "Programming every Service from nothing",
        x_label: "Services (10 endpoints each)",
        y_label: "wall time, ms",
        log_y: true,
        series: prog,
    }
    .render();
    (latency, programming)
}

fn markdown(res: &Results, latency_svg: &str, programming_svg: &str) -> String {
    let v = View {
        results: &res.results,
    };
    let o = &res.options;
    let m = &res.meta;
    let mode = if o.quick { "quick" } else { "full" };
    let mut s = String::new();
    let _ = writeln!(s, "# Ferry benchmark, {} ({mode} run)\n", m.date);
    let _ = writeln!(
        s,
        "Generated by `cargo xtask bench{}`. Every figure is the median over repeated runs with [min–max] after it; ratios compare medians of the same run.\n",
        if o.quick { " --quick" } else { "" }
    );
    s.push_str("| | |\n|---|---|\n");
    let _ = writeln!(s, "| Date | {} |", m.started_utc);
    let _ = writeln!(s, "| Commit | {} |", m.commit);
    let _ = writeln!(
        s,
        "| Machine | {}, {} CPUs, {:.1} GiB |",
        m.cpu, m.cpus, m.memory_gib
    );
    let _ = writeln!(s, "| Kernel | {} |", m.kernel);
    if !m.memory_latency.is_empty() {
        let parts: Vec<String> = m
            .memory_latency
            .iter()
            .map(|l| format!("{} MiB {:.0} ns", l.working_set_mib, l.ns_per_read))
            .collect();
        let _ = writeln!(
            s,
            "| Memory latency (dependent random reads, by working set) | {} |",
            parts.join(", ")
        );
    }
    let _ = writeln!(s, "| Tools | {}; {}; {} |", m.iptables, m.nft, m.bpftool);
    let _ = writeln!(
        s,
        "| Load average (1, 5, 15 min) | {} before, {} after |",
        m.load_before, m.load_after
    );
    let _ = writeln!(s, "| Duration | {:.0} s |", m.duration_s);
    let _ = writeln!(
        s,
        "| Settings | {} rounds × {} fresh TCP connections and {} UDP connects, {:.1} s per established-flow test; programming repeated {}×; endpoint change at {} Services, {}× |\n",
        o.rounds,
        o.connections,
        o.udp_connects,
        o.flow_secs,
        o.program_repeats,
        services_label(o.change_scale),
        o.change_repeats
    );
    if let Some(why) = &m.incomplete {
        let _ = writeln!(
            s,
            "> **Incomplete run**: it stopped early ({}); only what was measured before is reported.\n",
            why.replace('\n', " ")
        );
    }
    if o.quick {
        s.push_str("> A quick run: small scales, few repetitions, on a machine that may be busy. Treat its figures as a smoke test of the tooling, not as results.\n\n");
    }

    s.push_str("## Headline: new-connection latency, µs (p50 / p99)\n\n");
    s.push_str(&headline(&v));
    let _ = writeln!(
        s,
        "\n![new-connection latency]({latency_svg})\n![programming time]({programming_svg})\n"
    );

    s.push_str("## Targets\n\n| Target | Result | |\n|---|---|---|\n");
    for t in targets(&v, o, res.agent_change.as_ref()) {
        let _ = writeln!(s, "| {} | {} | {} |", t.what, t.result, verdict(t.met));
    }
    s.push('\n');

    s.push_str("## New connections\n\nTCP connect + 1-byte request + 1-byte response on a fresh connection to a Service chosen uniformly at random among all of them (direct: to one of its endpoints chosen at random), one connection at a time, closed with RST. Latency in µs; rate in connections per second on one client thread.\n\n");
    s.push_str("| Services | Datapath | p50 | p99 | mean | conn/s | p50 vs direct | p99 vs direct | p99 vs iptables | p99 vs nftables | load avg. (1 min) at start / end |\n");
    s.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for n in v.scales() {
        for dp in DATAPATHS {
            if v.get(dp, n).is_none() {
                continue;
            }
            let load = v.get(dp, n).map_or(String::new(), |r| {
                let first = |l: &str| l.split_whitespace().next().unwrap_or("").to_string();
                format!("{} / {}", first(&r.load.0), first(&r.load.1))
            });
            let _ = writeln!(
                s,
                "| {} | {dp} | {} | {} | {} | {} | {} | {} | {} | {} | {load} |",
                services_label(n),
                sp(v.p50_us(dp, n), 1),
                sp(v.p99_us(dp, n), 1),
                sp(v.rounds(dp, n, |r| r.tcp_mean_ns / 1e3), 1),
                sp(v.rounds(dp, n, |r| r.conn_per_s), 0),
                rt(ratio(v.p50_us(dp, n), v.p50_us(Dp::Direct, n))),
                rt(ratio(v.p99_us(dp, n), v.p99_us(Dp::Direct, n))),
                rt(ratio(v.p99_us(dp, n), v.p99_us(Dp::Iptables, n))),
                rt(ratio(v.p99_us(dp, n), v.p99_us(Dp::Nftables, n))),
            );
        }
    }

    s.push_str("\n## UDP connect()\n\nThe connect(2) call alone on a fresh unbound UDP socket, to a random UDP Service (the first 1,000 Services have a UDP port). Ferry translates here; iptables and nftables translate the first datagram instead (not measured here: no packet is sent), so this is Ferry's cost only. ns.\n\n");
    s.push_str("| Services | Datapath | p50 | p99 |\n|---:|---|---:|---:|\n");
    for n in v.scales() {
        for dp in DATAPATHS {
            if v.get(dp, n).is_none() {
                continue;
            }
            let _ = writeln!(
                s,
                "| {} | {dp} | {} | {} |",
                services_label(n),
                sp(v.rounds(dp, n, |r| r.udp_connect_p50_ns as f64), 0),
                sp(v.rounds(dp, n, |r| r.udp_connect_p99_ns as f64), 0),
            );
        }
    }

    s.push_str("\n## eBPF program run time\n\nFerry's connect4 program, from the kernel's run time statistics (enabled with BPF_ENABLE_STATS only around these rounds; they add two clock reads per run): run_time_ns / run_cnt over the fresh TCP connections and over the UDP connects of a round (UDP goes to the first 1,000 Services only). The UDP figure is the cleaner one: a TCP connect4 run can also be charged with interrupts that arrive while it runs (the previous connection's packets are processed on the same CPU). ns per call.\n\n");
    s.push_str(
        "| Services | TCP connect | UDP connect | calls per round |\n|---:|---:|---:|---:|\n",
    );
    for n in v.scales() {
        let Some(r) = v.get(Dp::Ferry, n) else {
            continue;
        };
        if r.bpf.is_empty() {
            continue;
        }
        let col = |tcp: bool| {
            sp(
                Spread::of(r.bpf.iter().map(|b| {
                    if tcp {
                        b.tcp_ns_per_call
                    } else {
                        b.udp_ns_per_call
                    }
                })),
                0,
            )
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} + {} |",
            services_label(n),
            col(true),
            col(false),
            r.bpf[0].tcp_calls,
            r.bpf[0].udp_calls
        );
    }
    s.push_str(WHY);

    s.push_str("\n## Established flows\n\nOne long-lived connection to a random Service: 1-byte request/response transactions per second, and bulk transfer (64 KiB writes to a sink) in Gbit/s.\n\n");
    s.push_str("| Services | Datapath | transactions/s | vs direct | Gbit/s | vs direct |\n|---:|---|---:|---:|---:|---:|\n");
    for n in v.scales() {
        for dp in DATAPATHS {
            if v.get(dp, n).is_none() {
                continue;
            }
            let rr = v.rounds(dp, n, |r| r.rr_per_s);
            let bw = v.rounds(dp, n, |r| r.stream_bytes_per_s * 8.0 / 1e9);
            let _ = writeln!(
                s,
                "| {} | {dp} | {} | {} | {} | {} |",
                services_label(n),
                sp(rr, 0),
                rt(ratio(rr, v.rounds(Dp::Direct, n, |r| r.rr_per_s))),
                sp(bw, 2),
                rt(ratio(
                    bw,
                    v.rounds(Dp::Direct, n, |r| r.stream_bytes_per_s * 8.0 / 1e9)
                )),
            );
        }
    }

    let _ = write!(
        s,
        "\n## Control plane: programming every Service from nothing\n\nFerry: the agent process from reading the manifest files to the last map write (program loading and attaching is listed apart; it does not depend on the number of Services). iptables: `iptables-restore --counters` of kube-proxy's full sync, its jumps from the built-in chains included (kube-proxy adds `--noflush`, which iptables 1.8.9's nf_tables backend handles in time quadratic in the number of chains, so the bench lets it replace the two tables instead, which in a fresh namespace leaves the same rules); nftables: `nft -f` of kube-proxy's full transaction, in one transaction up to {} Services and in transactions of 5,000 Service ports above that (in one transaction, nf_tables binds each Service's anonymous verdict map with a walk over the whole transaction: quadratic, see bench/README.md), marked with the number of transactions. Both peers are timed as processes (wall time; peak RSS from wait4); kube-proxy's own work to generate the rules is not counted. Programming is repeated only up to 10,000 Services. Wall time in ms, peak RSS in MiB.\n\n",
        services_label(o.nft_one_transaction_max)
    );
    s.push_str(
        "| Services | Datapath | wall, ms | peak RSS, MiB | input |\n|---:|---|---:|---:|---:|\n",
    );
    for n in v.scales() {
        for dp in [Dp::Ferry, Dp::Iptables, Dp::Nftables] {
            let Some(r) = v.get(dp, n) else { continue };
            let input = if r.rule_lines > 0 {
                format!(
                    "{} lines, {:.1} MiB",
                    services_label(r.rule_lines),
                    r.rule_bytes as f64 / 1048576.0
                )
            } else {
                "manifests".into()
            };
            let _ = writeln!(
                s,
                "| {} | {dp} | {} | {} | {input} |",
                services_label(n),
                sp(v.program_ms(dp, n), 1),
                sp(
                    Spread::of(r.program.iter().map(|p| p.peak_rss_kib as f64 / 1024.0)),
                    1
                ),
            );
        }
    }
    s.push_str("\nFerry's stages, ms:\n\n| Services | load + attach | read manifests | compute | sync maps | read → maps | map entries written |\n|---:|---:|---:|---:|---:|---:|---:|\n");
    for n in v.scales() {
        let Some(r) = v.get(Dp::Ferry, n) else {
            continue;
        };
        let st: Vec<_> = r.program.iter().filter_map(|p| p.stages.as_ref()).collect();
        let f =
            |g: &dyn Fn(&super::Stages) -> u64| Spread::of(st.iter().map(|s| g(s) as f64 / 1e3));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            services_label(n),
            sp(f(&|s| s.load_us), 1),
            sp(f(&|s| s.read_us), 1),
            sp(f(&|s| s.compute_us), 1),
            sp(f(&|s| s.sync_us), 1),
            sp(f(&|s| s.total_us()), 1),
            st.first().map_or(0, |s| s.changes)
        );
    }

    let at = o.change_scale;
    let _ = writeln!(
        s,
        "\n## Control plane: one endpoint change on top of {} Services\n\nService `{}`'s last endpoint turns not ready, then ready again, alternately. Ferry (\"files\"): the changed file is rewritten and the agent reads the manifests again, recomputes and syncs, as `ferry standalone` does on a file change (its reader keeps each file's objects while the file's metadata is unchanged, so it reads the one changed file of 1,000 Services, decodes only the objects whose text changed, and assembles the snapshot of all files again); Ferry (\"in memory\"): the one EndpointSlice is swapped in the agent's copy of the objects, then the same recompute and sync (what an API watch delivers). iptables: kube-proxy's partial restore (all of KUBE-SERVICES rewritten, the changed Service's chains rewritten, the departed endpoint's chain deleted); nftables: kube-proxy's partial transaction (the Service's chain flushed and rewritten, the endpoint chain deleted). ms.\n",
        services_label(at),
        workload::Workload::service_name(at / 2)
    );
    s.push_str("| Datapath | wall, ms | read / swap | compute | sync | map entries written |\n|---|---:|---:|---:|---:|---:|\n");
    for dp in [Dp::Ferry, Dp::Iptables, Dp::Nftables] {
        let Some(r) = v.get(dp, at) else { continue };
        let rows: Vec<(&str, &Vec<super::Change>)> = if dp == Dp::Ferry {
            vec![
                ("Ferry (files)", &r.change),
                ("Ferry (in memory)", &r.change_in_memory),
            ]
        } else {
            vec![(
                if dp == Dp::Iptables {
                    "iptables"
                } else {
                    "nftables"
                },
                &r.change,
            )]
        };
        for (label, ch) in rows {
            if ch.is_empty() {
                continue;
            }
            let st: Vec<_> = ch.iter().filter_map(|c| c.stages.as_ref()).collect();
            let f = |g: &dyn Fn(&super::Stages) -> u64| {
                Spread::of(st.iter().map(|s| g(s) as f64 / 1e3))
            };
            let _ = writeln!(
                s,
                "| {label} | {} | {} | {} | {} | {} |",
                sp(Spread::of(ch.iter().map(|c| c.wall_us as f64 / 1e3)), 2),
                sp(f(&|s| s.read_us), 2),
                sp(f(&|s| s.compute_us), 2),
                sp(f(&|s| s.sync_us), 2),
                st.first().map_or("–".into(), |s| s.changes.to_string()),
            );
        }
    }

    if let Some(a) = &res.agent_change {
        let _ = writeln!(
            s,
            "\n## Control plane: one change through `ferry agent`\n\nThe real agent watching the API server fixture, on top of {} Services: the same EndpointSlice change written at the API, timed until the frontend's backend count shows it in the pinned `FRONTENDS4` map (polled every 100 µs); {} lone changes, 200 ms apart. ms.\n",
            services_label(a.services),
            a.latencies_us.len()
        );
        s.push_str(&a.markdown());
    }

    if let Some(rows) = &res.packets {
        s.push_str("\n## North-south: cost per packet\n\nBPF_PROG_TEST_RUN of the tc and XDP programs in a namespace with a real route and resolved neighbours (see bench/README.md for the packets), ns per packet; the established flow repeats 100,000 times, a new flow and its floor run once per packet.\n\n");
        s.push_str(&super::packets::markdown(rows));
    }
    if let Some(rows) = &res.north_south {
        s.push_str("\n## North-south: new connections from outside the node\n\nAn outside client's new TCP connections (connect, 1-byte request and response) to load balancer IPs through node1 of the namespace topology: routed straight to the pods, Ferry with XDP, Ferry with tc alone, kube-proxy-shaped iptables and nftables rules (DNAT and masquerade), the same Services for each.\n\n");
        s.push_str(&super::north_south::markdown(rows));
    }

    s.push_str(WHY);

    s.push_str("\n## Ferry's memory\n\nKernel memory of the pinned maps (bytes_memlock: the LRU maps and the per-CPU counters are preallocated at their capacity, the lookup maps take memory for their hash buckets (one per entry of capacity) and for the entries they hold) and the agent's resident set after programming and at its peak. The agent keeps Services slimmed (no managedFields, annotations) and EndpointSlices reduced to what the model reads (`EndpointSliceInfo`: 56 bytes per endpoint plus its node name).\n\n");
    s.push_str(
        "| Services | maps, MiB | agent RSS, MiB | agent peak RSS, MiB |\n|---:|---:|---:|---:|\n",
    );
    for n in v.scales() {
        let Some(r) = v.get(Dp::Ferry, n) else {
            continue;
        };
        let maps: u64 = r.map_memory.iter().map(|(_, b)| b).sum();
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.1} |",
            services_label(n),
            maps as f64 / 1048576.0,
            r.agent_rss_kib as f64 / 1024.0,
            r.agent_hwm_kib as f64 / 1024.0
        );
    }
    if let Some(r) = res.results.iter().rev().find(|r| !r.map_memory.is_empty()) {
        s.push_str("\nPer map (MiB): ");
        let parts: Vec<String> = r
            .map_memory
            .iter()
            .map(|(n, b)| format!("{n} {:.2}", *b as f64 / 1048576.0))
            .collect();
        s.push_str(&parts.join(", "));
        s.push_str(".\n");
    }

    s.push_str(METHOD);
    s
}

/// Where the explanations are: a report carries only what its run measured.
const WHY: &str = "\nWhy these figures are what they are: bench/README.md.\n";

const METHOD: &str = "
## Method

- **Topology** (the `sandbox` crate): a node network namespace with a bridge, 10 backend pod namespaces (10.244.0.10-19) behind it, no route out. Each pod runs one epoll thread serving TCP 20000-20099 (echo, or sink when the first byte is `S`) and UDP 5353 (echo). The client runs on a thread in the node namespace; the node namespace routes 10.96.0.0/12 to the bridge (so that a ClusterIP connect reaches netfilter at all), has ephemeral ports 1024-65535 and one SYN retry.
- **Services**: N ClusterIP Services `bench/svc-NNNNNN`, ClusterIP 10.96.0.1 + s, TCP port 80 → 20000 + s mod 100; the first 1,000 also UDP 53 → 5353. Each has one EndpointSlice listing the same 10 pods, all ready: N × 10 endpoints over 1,000 distinct TCP backends. Written as JSON `List` manifests of 1,000 Services each; Ferry reads them with its own manifest source; the peers' rules are generated from the same objects read back the way kube-proxy reads them.
- **Datapaths**, one active at a time, in the order direct, Ferry, iptables, nftables at each scale; between them the node namespace's ruleset is flushed and Ferry's programs detached and its maps removed, and the bench checks that nothing is left before the next one starts.
  - Ferry: the bench's agent process (the same library calls as `ferry standalone`) attaches the programs to the bench's own child cgroup, which the bench process (client threads included) is in.
  - iptables: the rules kube-proxy's iptables mode writes (KUBE-SERVICES with one `-d clusterIP/32 -p proto --dport` rule per service port → KUBE-SVC-* with `statistic --mode random --probability 1/(n-i)` → KUBE-SEP-* with masquerade marking and DNAT; REJECT in the filter table for Services without endpoints; jumps from PREROUTING/OUTPUT/POSTROUTING and the filter chains), loaded with the system's `iptables-restore` (nf_tables backend, see Tools) in the node namespace: full syncs replace both tables (see the control-plane section for why not `--noflush`), partial syncs use `--noflush --counters` as kube-proxy does. The legacy backend is not measured: its tables cannot be removed from a namespace once created, so conntrack would stay on for the datapaths measured after it.
  - nftables: kube-proxy's nftables mode (table `ip kube-proxy`, the `service-ips` verdict map `ip daddr . meta l4proto . th dport`, per-service chains with `numgen random mod N vmap`, per-endpoint DNAT chains, its filter and masquerade chains), loaded with `nft -f`.
- **New connections** are measured one at a time so that latency is not queueing; connections close with RST so that TIME_WAIT does not pile up differently for different datapaths. Each round uses a fresh random sequence of Services, the same for every datapath; a warm-up of 10% precedes each round. Client and server threads are pinned to one CPU (unless `--no-pin`), so that a connection costs its datapath's work and not cross-CPU wake-ups of a shared VM.
- **Memory latency**: nanoseconds per step of a pointer chase over a random cycle of cache lines in 1 to 64 MiB (each read depends on the previous one, as the map reads of one connect do), measured by the bench process before anything else.
- **Spread**: every figure is measured in several rounds (data plane) or repetitions (control plane) and reported as median [min–max]. Ratios are between medians of the same run. Nothing here asserts on time; targets are judged in this report only.
";

pub(crate) fn write(opts: &Options, res: &Results) -> Result<PathBuf> {
    let dir = &opts.out_dir;
    super::check_out_dir(dir)?;
    let mode = if opts.quick { "quick" } else { "full" };
    let complete = res.meta.incomplete.is_none();
    let stem = format!(
        "{}-{mode}{}",
        res.meta.date,
        if complete { "" } else { "-incomplete" }
    );
    let v = View {
        results: &res.results,
    };
    let (latency, programming) = plots(&v);
    let mut files = vec![
        (format!("{stem}-latency.svg"), latency.clone()),
        (format!("{stem}-programming.svg"), programming.clone()),
        (
            format!("{stem}.json"),
            serde_json::to_string_pretty(res)? + "\n",
        ),
        (
            format!("{stem}.md"),
            markdown(
                res,
                &format!("{stem}-latency.svg"),
                &format!("{stem}-programming.svg"),
            ),
        ),
    ];
    if complete {
        files.extend([
            ("latest-latency.svg".into(), latency),
            ("latest-programming.svg".into(), programming),
            (
                "latest.md".into(),
                markdown(res, "latest-latency.svg", "latest-programming.svg"),
            ),
        ]);
    }
    for (name, content) in files {
        let path = dir.join(&name);
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir.join(format!("{stem}.md")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_513), (2026, 3, 1));
    }

    #[test]
    fn labels() {
        assert_eq!(services_label(100_000), "100,000");
        assert_eq!(services_label(1), "1");
        assert_eq!(sp(Spread::of([1.0, 2.0, 3.0]), 1), "2.0 [1.0–3.0]");
        assert_eq!(sp(None, 1), "–");
    }
}
