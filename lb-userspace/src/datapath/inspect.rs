//! What the datapath holds, for people: `ferry services`.

use std::collections::HashMap;

use lb_common::{
    AffinityKey, BACKEND_F_LOCAL, BACKEND_F_TERMINATING, FRONTEND_F_AFFINITY, FRONTEND_F_DROP,
    FrontendKind,
};
use serde::Serialize;

use super::{
    adopt::{ReadError, read_installed},
    maps::Maps,
    store::BackendAddr,
    sync::Installed,
};

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct BackendView {
    pub address: String,
    /// "active" or "terminating".
    pub state: &'static str,
    pub local: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FrontendView {
    /// ip:port/PROTO as a socket would address it.
    pub frontend: String,
    /// ClusterIP, NodePort, ExternalIP or LoadBalancer.
    pub kind: &'static str,
    /// The backend set's name: namespace/name:port/PROTO[/v6][/local].
    pub service: String,
    pub service_id: u32,
    pub backends: Vec<BackendView>,
    /// What a connect gets while there is no backend: "reject" or "drop".
    pub when_empty: &'static str,
    pub affinity_timeout_secs: Option<u32>,
    pub translated: u64,
    pub refused: u64,
}

pub fn kind_name(kind: Option<FrontendKind>) -> &'static str {
    match kind {
        Some(FrontendKind::ClusterIp) => "ClusterIP",
        Some(FrontendKind::NodePort) => "NodePort",
        Some(FrontendKind::ExternalIp) => "ExternalIP",
        Some(FrontendKind::LoadBalancer) => "LoadBalancer",
        None => "unknown",
    }
}

fn addr_string(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// Every frontend with its live backends (slots 1..=count) and counters,
/// sorted by service then frontend.
pub fn frontends(maps: &Maps) -> Result<Vec<FrontendView>, ReadError> {
    Ok(frontends_of(maps, &read_installed(maps)?))
}

/// [`frontends`] from what was read back already.
pub fn frontends_of(maps: &Maps, installed: &Installed) -> Vec<FrontendView> {
    let by_id: HashMap<u32, (&String, &Vec<u32>)> = installed
        .sets
        .iter()
        .map(|(name, s)| (s.id, (name, &s.slots)))
        .collect();
    let backends: HashMap<u32, (&BackendAddr, u8)> = installed
        .backends
        .iter()
        .map(|(a, b)| (b.id, (a, a.flags)))
        .collect();
    let mut out: Vec<FrontendView> = installed
        .frontends
        .iter()
        .map(|(addr, v)| {
            let (service, slots) = by_id
                .get(&v.service_id)
                .map(|(n, s)| ((*n).clone(), s.as_slice()))
                .unwrap_or_else(|| (format!("#{}", v.service_id), &[]));
            let live = slots.iter().take(v.count as usize);
            let backend_views = live
                .filter_map(|id| backends.get(id))
                .map(|(a, flags)| BackendView {
                    address: addr_string(a.ip, a.port),
                    state: if flags & BACKEND_F_TERMINATING != 0 {
                        "terminating"
                    } else {
                        "active"
                    },
                    local: flags & BACKEND_F_LOCAL != 0,
                })
                .collect();
            let counters = maps.counters_of(v.service_id);
            FrontendView {
                frontend: format!("{}/{}", addr_string(addr.ip, addr.port), addr.protocol),
                kind: kind_name(FrontendKind::from_flags(v.flags)),
                service,
                service_id: v.service_id,
                backends: backend_views,
                when_empty: if v.flags & FRONTEND_F_DROP != 0 {
                    "drop"
                } else {
                    "reject"
                },
                affinity_timeout_secs: (v.flags & FRONTEND_F_AFFINITY != 0)
                    .then_some(v.affinity_timeout_secs),
                translated: counters.translated,
                refused: counters.refused,
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.service, &a.frontend).cmp(&(&b.service, &b.frontend)));
    out
}

/// One client's session affinity entry (`AFFINITY`), as the connect
/// program would judge it now.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AffinityView {
    pub backend: Option<String>,
    pub slot: u32,
    pub last_used_secs_ago: f64,
    /// Fresh (used within the timeout) and its slot still within the count
    /// and holding the backend: the next connect goes there.
    pub in_force: bool,
}

/// The affinity entry of (client netns cookie, backend set id), if any.
pub fn affinity_of(
    maps: &Maps,
    installed: &Installed,
    netns_cookie: u64,
    service_id: u32,
) -> Option<AffinityView> {
    let key = AffinityKey {
        netns_cookie,
        service_id,
        _pad: 0,
    };
    let entry = maps.affinity.get(&key, 0).ok()?;
    let backend = installed
        .backends
        .iter()
        .find(|(_, b)| b.id == entry.backend_id)
        .map(|(a, _)| addr_string(a.ip, a.port));
    let frontend = installed
        .frontends
        .values()
        .find(|f| f.service_id == service_id);
    let slots = installed
        .sets
        .values()
        .find(|s| s.id == service_id)
        .map(|s| s.slots.as_slice())
        .unwrap_or_default();
    let age_ns = monotonic_ns().saturating_sub(entry.last_used_ns);
    let in_force = frontend.is_some_and(|f| {
        age_ns <= u64::from(f.affinity_timeout_secs) * 1_000_000_000
            && entry.slot >= 1
            && entry.slot <= u32::from(f.count)
            && slots.get(entry.slot as usize - 1) == Some(&entry.backend_id)
    });
    Some(AffinityView {
        backend,
        slot: entry.slot,
        last_used_secs_ago: age_ns as f64 / 1e9,
        in_force,
    })
}

/// `bpf_ktime_get_ns()`'s clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the struct we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// A plain table, one line per frontend.
pub fn table(views: &[FrontendView]) -> String {
    let mut rows = vec![[
        "SERVICE".to_string(),
        "KIND".to_string(),
        "FRONTEND".to_string(),
        "BACKENDS".to_string(),
        "TRANSLATED".to_string(),
        "REFUSED".to_string(),
    ]];
    for v in views {
        let backends = if v.backends.is_empty() {
            format!("(none: {})", v.when_empty)
        } else {
            v.backends
                .iter()
                .map(|b| {
                    let mut s = b.address.clone();
                    if b.state != "active" {
                        s.push_str(&format!(" ({})", b.state));
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        rows.push([
            v.service.clone(),
            v.kind.to_string(),
            v.frontend.clone(),
            backends,
            v.translated.to_string(),
            v.refused.to_string(),
        ]);
    }
    render_rows(&rows)
}

/// Rows as aligned columns (the first row the header), the last column
/// unpadded.
pub fn render_rows<R: AsRef<[String]>>(rows: &[R]) -> String {
    use std::fmt::Write as _;
    let columns = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r.as_ref()[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let r = r.as_ref();
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
