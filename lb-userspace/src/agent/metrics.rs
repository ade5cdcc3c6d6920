//! `/metrics` (Prometheus text format) and `/proxyMode` on the metrics
//! address.
//!
//! Updated after every pass from the pass and the mirror (no map is read
//! for them), except the per-Service connection counters, which are read
//! from the pinned per-CPU counters at scrape time.

use std::{
    sync::{Mutex, PoisonError, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lb_common::{capacity, maps as names};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _, prometheus_text},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    datapath::{Installed, Maps, convert::name_from_map},
    http::{Request, Response},
    model::{ObjectKind, ReportCause},
    reconcile::PassContext,
    source::kube::Watched,
};

/// What `/proxyMode` answers, as kube-proxy's answers its mode.
pub const PROXY_MODE: &str = "ebpf";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabels {
    map: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    resource: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Entries of each map the agent writes, from the mirror, with the map's
/// capacity (as the loader creates it).
pub fn map_usage(installed: &Installed) -> [(&'static str, usize, u32); 9] {
    let v4 = |ip: &std::net::IpAddr| ip.is_ipv4();
    let frontends4 = installed.frontends.keys().filter(|a| v4(&a.ip)).count();
    let backends4 = installed.backends.keys().filter(|a| v4(&a.ip)).count();
    let cluster_ips4 = installed.cluster_ips.keys().filter(|ip| v4(ip)).count();
    let slots = installed.sets.values().map(|s| s.slots.len()).sum();
    [
        (names::FRONTENDS4, frontends4, capacity::FRONTENDS),
        (
            names::FRONTENDS6,
            installed.frontends.len() - frontends4,
            capacity::FRONTENDS,
        ),
        (names::SLOTS, slots, capacity::SLOTS),
        (names::BACKENDS4, backends4, capacity::BACKENDS),
        (
            names::BACKENDS6,
            installed.backends.len() - backends4,
            capacity::BACKENDS,
        ),
        (names::CLUSTER_IPS4, cluster_ips4, capacity::FRONTENDS),
        (
            names::CLUSTER_IPS6,
            installed.cluster_ips.len() - cluster_ips4,
            capacity::FRONTENDS,
        ),
        (
            names::SERVICE_NAMES,
            installed.sets.len(),
            capacity::SERVICES,
        ),
        (
            names::NODEPORT_BINDS,
            installed.node_ports.len(),
            capacity::NODEPORT_BINDS,
        ),
    ]
}

/// Per-backend-set connection counters, read from the pinned maps at
/// scrape time.
struct ServiceTraffic {
    maps: Mutex<Maps>,
}

impl std::fmt::Debug for ServiceTraffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceTraffic")
    }
}

impl Collector for ServiceTraffic {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rows: Vec<(String, u64, u64)> = maps
            .names
            .iter()
            .filter_map(Result::ok)
            .map(|(id, name)| {
                let c = maps.counters_of(id);
                (name_from_map(&name), c.translated, c.refused)
            })
            .collect();
        drop(maps);
        rows.sort();
        let described = [
            (
                "ferry_service_connections_translated",
                "Connections (and UDP sends) translated to a backend, per backend set (namespace/name:port/PROTO[/v6][/local])",
            ),
            (
                "ferry_service_connections_refused",
                "Connections refused or dropped for want of a usable backend, per backend set",
            ),
        ];
        for (i, (name, help)) in described.into_iter().enumerate() {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (service, translated, refused) in &rows {
                let value = if i == 0 { *translated } else { *refused };
                let labels = [("service", service.as_str())];
                ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    network_programming: Histogram,
    services: Gauge,
    frontends: Gauge,
    backend_sets: Gauge,
    backends: Gauge,
    map_fill: Family<MapLabels, FloatGauge>,
    repairs: Counter,
    repair_passes: Counter,
    invalid: Family<KindLabels, Gauge>,
    watch_restarts: Family<ResourceLabels, Counter>,
    sync_errors: Counter,
    last_sync: FloatGauge,
}

impl Metrics {
    /// `maps`: a handle on the pinned maps for the per-Service counters
    /// (None: those are left out).
    pub fn new(maps: Option<Maps>) -> Self {
        let mut registry = Registry::default();
        let seconds = || Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let m = Metrics {
            sync_duration: seconds(),
            network_programming: seconds(),
            services: Gauge::default(),
            frontends: Gauge::default(),
            backend_sets: Gauge::default(),
            backends: Gauge::default(),
            map_fill: Family::default(),
            repairs: Counter::default(),
            repair_passes: Counter::default(),
            invalid: Family::default(),
            watch_restarts: Family::default(),
            sync_errors: Counter::default(),
            last_sync: FloatGauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "ferry_sync_duration_seconds",
            "Time to recompute the desired state and sync the maps, per pass",
            m.sync_duration.clone(),
        );
        r.register(
            "ferry_network_programming_duration_seconds",
            "Time from an API server event to the datapath holding it",
            m.network_programming.clone(),
        );
        r.register(
            "ferry_services_programmed",
            "Services with at least one backend set in the datapath",
            m.services.clone(),
        );
        r.register(
            "ferry_frontends_programmed",
            "Frontends (address, port, protocol) in the datapath",
            m.frontends.clone(),
        );
        r.register(
            "ferry_backend_sets_programmed",
            "Backend sets (service port, family, selection) in the datapath",
            m.backend_sets.clone(),
        );
        r.register(
            "ferry_backends_programmed",
            "Distinct backends (address, port, protocol) in the datapath",
            m.backends.clone(),
        );
        r.register(
            "ferry_map_fill_ratio",
            "Entries of each map over its capacity",
            m.map_fill.clone(),
        );
        r.register(
            "ferry_repairs",
            "Map entries rewritten or removed because the maps differed from what the agent had written",
            m.repairs.clone(),
        );
        r.register(
            "ferry_drift_repairs",
            "Drift checks that found the maps differing from what the agent had written",
            m.repair_passes.clone(),
        );
        r.register(
            "ferry_invalid_objects",
            "Objects skipped as invalid in the last pass",
            m.invalid.clone(),
        );
        r.register(
            "ferry_watch_restarts",
            "Watch failures (each retried with backoff, relisting when needed)",
            m.watch_restarts.clone(),
        );
        r.register(
            "ferry_sync_errors",
            "Datapath writes that failed (retried by the next pass)",
            m.sync_errors.clone(),
        );
        r.register(
            "ferry_last_sync_timestamp_seconds",
            "When the last pass completed (Unix time)",
            m.last_sync.clone(),
        );
        if let Some(maps) = maps {
            r.register_collector(Box::new(ServiceTraffic {
                maps: Mutex::new(maps),
            }));
        }
        for w in Watched::ALL {
            // Present from the start, at zero.
            let _ = m.watch_restarts.get_or_create(&ResourceLabels {
                resource: w.as_str(),
            });
        }
        Metrics { registry, ..m }
    }

    pub fn watch_restart(&self, what: Watched) {
        self.watch_restarts
            .get_or_create(&ResourceLabels {
                resource: what.as_str(),
            })
            .inc();
    }

    /// Takes in a pass; `latency` is how long its oldest change waited.
    pub fn record_pass(&self, ctx: &PassContext<'_>, latency: Option<Duration>) {
        let pass = ctx.pass;
        self.sync_duration.observe(pass.duration.as_secs_f64());
        if let Some(l) = latency {
            self.network_programming.observe(l.as_secs_f64());
        }
        let counts = super::state::counts(ctx);
        self.services.set(counts.services as i64);
        self.frontends.set(counts.frontends as i64);
        self.backend_sets.set(counts.backend_sets as i64);
        self.backends.set(counts.backends as i64);
        for (map, entries, max) in map_usage(&ctx.datapath.installed) {
            self.map_fill
                .get_or_create(&MapLabels { map })
                .set(entries as f64 / f64::from(max));
        }
        if ctx.repair {
            self.repair_passes.inc();
            self.repairs.inc_by(pass.report.changes as u64);
        }
        for kind in [
            ObjectKind::Service,
            ObjectKind::EndpointSlice,
            ObjectKind::Node,
            ObjectKind::Manifest,
        ] {
            let n = pass
                .computed
                .invalid
                .iter()
                // A refused externalIP is this node's policy, not bad input.
                .filter(|i| i.kind == kind && i.cause == ReportCause::Invalid)
                .count();
            self.invalid
                .get_or_create(&KindLabels {
                    kind: kind.to_string(),
                })
                .set(n as i64);
        }
        self.sync_errors.inc_by(pass.report.errors.len() as u64);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_sync.set(now.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_text::encode(&mut out, &self.registry).is_err() {
            tracing::error!("encoding metrics failed");
        }
        out
    }

    /// `/metrics` and `/proxyMode`; None for other paths.
    pub fn respond(&self, req: &Request) -> Option<Response> {
        match req.path.as_str() {
            "/metrics" => Some(Response::new(
                200,
                prometheus_text::CONTENT_TYPE,
                self.encode(),
            )),
            "/proxyMode" => Some(Response::new(200, "text/plain; charset=utf-8", PROXY_MODE)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::sync::InstalledSet;
    use crate::model::{FrontendAddr, Protocol};

    #[test]
    fn map_usage_counts_each_family_and_map() {
        let mut installed = Installed::default();
        for ip in ["10.0.0.1", "10.0.0.2", "fd00::1"] {
            installed.frontends.insert(
                FrontendAddr {
                    ip: ip.parse().unwrap(),
                    port: 80,
                    protocol: Protocol::Tcp,
                },
                Default::default(),
            );
        }
        installed.sets.insert(
            "a".into(),
            InstalledSet {
                id: 1,
                slots: vec![1, 2, 3],
            },
        );
        let usage = map_usage(&installed);
        let get = |name| usage.iter().find(|u| u.0 == name).unwrap().1;
        assert_eq!(get(names::FRONTENDS4), 2);
        assert_eq!(get(names::FRONTENDS6), 1);
        assert_eq!(get(names::SLOTS), 3);
        assert_eq!(get(names::SERVICE_NAMES), 1);
        assert_eq!(get(names::BACKENDS4), 0);
    }

    #[test]
    fn exposition_names_types_and_proxy_mode() {
        let m = Metrics::new(None);
        m.watch_restart(Watched::Services);
        let text = m.encode();
        for want in [
            "# TYPE ferry_sync_duration_seconds histogram",
            "# TYPE ferry_network_programming_duration_seconds histogram",
            "# TYPE ferry_repairs_total counter",
            "ferry_repairs_total 0",
            "ferry_watch_restarts_total{resource=\"services\"} 1",
            "ferry_watch_restarts_total{resource=\"node\"} 0",
            "# TYPE ferry_frontends_programmed gauge",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        let req = |path: &str| Request {
            method: "GET".into(),
            path: path.into(),
        };
        let r = m.respond(&req("/proxyMode")).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ebpf"[..]));
        assert!(m.respond(&req("/nope")).is_none());
    }
}
