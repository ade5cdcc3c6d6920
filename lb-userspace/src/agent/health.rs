//! `/healthz` and `/livez` with kube-proxy's semantics
//! (pkg/proxy/healthcheck/proxy_health.go): 200 or 503, JSON body with
//! lastUpdated, currentTime, nodeEligible and healthy, and the headers
//! `Content-Type: application/json` and `X-Content-Type-Options: nosniff`.
//!
//! - `/livez`: unhealthy when, after the first sync, a change has waited
//!   twice the sync period or more.
//! - `/healthz`: the same, and also 503 while the Node is being deleted or
//!   carries the ToBeDeletedByClusterAutoscaler taint, so that load
//!   balancers drain the node.

use serde::Serialize;

use super::state::{Health, rfc3339};
use crate::http::{Request, Response};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    last_updated: Option<String>,
    current_time: String,
    node_eligible: bool,
    healthy: bool,
}

fn answer(health: &Health, healthy: bool) -> Response {
    // As kube-proxy: a healthy answer reports "now" as the last update, so
    // that old clients reading lastUpdated see a fresh time.
    let last_updated = if healthy {
        Some(health.current_time)
    } else {
        health.last_updated
    };
    let body = Body {
        last_updated: last_updated.map(rfc3339),
        current_time: rfc3339(health.current_time),
        node_eligible: health.node_eligible,
        healthy,
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    Response::new(if healthy { 200 } else { 503 }, "application/json", json)
        .header("X-Content-Type-Options", "nosniff")
}

/// The answer to `req` on the healthz address, or None for other paths.
pub fn respond(req: &Request, health: &Health) -> Option<Response> {
    match req.path.as_str() {
        "/healthz" => Some(answer(health, health.healthy && health.node_eligible)),
        "/livez" => Some(answer(health, health.healthy)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn get(path: &str) -> Request {
        Request {
            method: "GET".into(),
            path: path.into(),
        }
    }

    fn health(healthy: bool, node_eligible: bool) -> Health {
        Health {
            healthy,
            node_eligible,
            last_updated: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1)),
            current_time: SystemTime::UNIX_EPOCH + Duration::from_secs(100),
        }
    }

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn table() {
        // (healthy, eligible) → (/healthz, /livez)
        for (healthy, eligible, healthz, livez) in [
            (true, true, 200, 200),
            (true, false, 503, 200),
            (false, true, 503, 503),
            (false, false, 503, 503),
        ] {
            let h = health(healthy, eligible);
            let hz = respond(&get("/healthz"), &h).unwrap();
            let lz = respond(&get("/livez"), &h).unwrap();
            assert_eq!((hz.status, lz.status), (healthz, livez), "{h:?}");
            for r in [&hz, &lz] {
                assert!(
                    r.headers
                        .contains(&("Content-Type", "application/json".into()))
                );
                assert!(
                    r.headers
                        .contains(&("X-Content-Type-Options", "nosniff".into()))
                );
                let b = body(r);
                assert_eq!(b["nodeEligible"], eligible);
                assert_eq!(b["healthy"], r.status == 200);
                assert_eq!(b["currentTime"], "1970-01-01T00:01:40Z");
                // Healthy answers report now as the last update.
                let want = if r.status == 200 {
                    "1970-01-01T00:01:40Z"
                } else {
                    "1970-01-01T00:00:01Z"
                };
                assert_eq!(b["lastUpdated"], want);
            }
        }
        assert!(respond(&get("/other"), &health(true, true)).is_none());
    }
}
