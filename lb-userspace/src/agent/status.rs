//! `ferry status`: the agent's own view of itself, served as JSON on
//! `/status` of the metrics address and printed by the `status` command.

use std::{
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// What `/status` answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub node: String,
    /// /livez's verdict: no change has waited twice the sync period.
    pub healthy: bool,
    /// The Node is neither being deleted nor marked for deletion by the
    /// cluster autoscaler (/healthz needs this too).
    pub node_eligible: bool,
    pub api_server: ApiServer,
    pub watches: Vec<Watch>,
    /// The datapath was synced from the API server at least once.
    pub synced: bool,
    pub last_sync: Option<LastSync>,
    pub counts: Counts,
    /// Invalid objects of the last sync (the first few).
    pub invalid: Vec<String>,
    /// Map entries rewritten or removed by drift repair since start.
    pub repairs: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiServer {
    /// The API server answered the last request.
    pub connected: bool,
    /// RFC 3339.
    pub last_contact: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Watch {
    pub resource: String,
    /// The initial list completed.
    pub listed: bool,
    /// Watch failures (each retried with backoff) since start.
    pub restarts: u64,
    pub last_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastSync {
    /// RFC 3339.
    pub time: String,
    pub duration_seconds: f64,
    /// Map entries written or deleted.
    pub changes: usize,
    /// Failed datapath writes (retried by the next sync).
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub services: usize,
    pub frontends: usize,
    pub backend_sets: usize,
    pub backends: usize,
    pub invalid_objects: usize,
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// The human form of a status.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "node:            {}", s.node);
    let _ = writeln!(
        out,
        "API server:      {}{}",
        if s.api_server.connected {
            "connected"
        } else {
            "NOT connected"
        },
        s.api_server
            .last_contact
            .as_deref()
            .map(|t| format!(" (last answer {t})"))
            .unwrap_or_default()
    );
    if let Some(e) = &s.api_server.last_error {
        let _ = writeln!(out, "  last error:    {e}");
    }
    for w in &s.watches {
        let _ = writeln!(
            out,
            "watch {:<15} listed: {}, restarts: {}{}",
            format!("{}:", w.resource),
            yes_no(w.listed),
            w.restarts,
            w.last_error
                .as_deref()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        );
    }
    let _ = writeln!(
        out,
        "healthy:         {} (node eligible: {})",
        yes_no(s.healthy),
        yes_no(s.node_eligible)
    );
    match &s.last_sync {
        Some(l) => {
            let _ = writeln!(
                out,
                "last sync:       {} ({:.3} ms, {} changes)",
                l.time,
                l.duration_seconds * 1000.0,
                l.changes
            );
            for e in &l.errors {
                let _ = writeln!(out, "  error:         {e}");
            }
        }
        None => {
            let _ = writeln!(
                out,
                "last sync:       none yet (waiting for the initial lists)"
            );
        }
    }
    let c = &s.counts;
    let _ = writeln!(
        out,
        "programmed:      {} services, {} frontends, {} backend sets, {} backends",
        c.services, c.frontends, c.backend_sets, c.backends
    );
    let _ = writeln!(out, "invalid objects: {}", c.invalid_objects);
    for i in &s.invalid {
        let _ = writeln!(out, "  {i}");
    }
    let _ = writeln!(out, "drift repairs:   {} entries", s.repairs);
    out
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot reach the agent at {addr} (is `ferry agent` running there?): {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading the answer of {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr} answered {head:?} instead of a status")]
    Http { addr: SocketAddr, head: String },
    #[error("{addr} answered a status that does not parse: {source}")]
    Json {
        addr: SocketAddr,
        source: serde_json::Error,
    },
}

/// Where to connect to reach an agent listening on `bind`: a wildcard
/// address is reached on loopback.
pub fn connect_address(bind: SocketAddr) -> SocketAddr {
    let ip = match bind.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bind.port())
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `/status` from the agent whose metrics listen on `bind`.
pub fn fetch(bind: SocketAddr) -> Result<Status, StatusError> {
    let addr = connect_address(bind);
    let io = |source| StatusError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|source| StatusError::Connect { addr, source })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    stream
        .write_all(
            format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default();
    if !status_line.starts_with("HTTP/1.1 200") {
        return Err(StatusError::Http {
            addr,
            head: status_line.to_string(),
        });
    }
    serde_json::from_str(body).map_err(|source| StatusError::Json { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_binds_are_reached_on_loopback() {
        let a: SocketAddr = "0.0.0.0:10249".parse().unwrap();
        assert_eq!(connect_address(a), "127.0.0.1:10249".parse().unwrap());
        let a: SocketAddr = "[::]:10249".parse().unwrap();
        assert_eq!(connect_address(a), "[::1]:10249".parse().unwrap());
        let a: SocketAddr = "192.0.2.1:9".parse().unwrap();
        assert_eq!(connect_address(a), a);
    }

    #[test]
    fn renders_every_part() {
        let s = Status {
            node: "n1".into(),
            healthy: true,
            node_eligible: true,
            api_server: ApiServer {
                connected: false,
                last_contact: Some("2024-01-01T00:00:00Z".into()),
                last_error: Some("connection refused".into()),
            },
            watches: vec![Watch {
                resource: "services".into(),
                listed: true,
                restarts: 2,
                last_error: None,
            }],
            synced: true,
            last_sync: Some(LastSync {
                time: "2024-01-01T00:00:01Z".into(),
                duration_seconds: 0.002,
                changes: 7,
                errors: vec!["frontend x: E2BIG".into()],
            }),
            counts: Counts {
                services: 1,
                frontends: 2,
                backend_sets: 3,
                backends: 4,
                invalid_objects: 1,
            },
            invalid: vec!["Service ns/bad: no ports".into()],
            repairs: 5,
        };
        let text = render(&s);
        for want in [
            "NOT connected (last answer 2024-01-01T00:00:00Z)",
            "connection refused",
            "watch services:",
            "restarts: 2",
            "7 changes",
            "frontend x: E2BIG",
            "1 services, 2 frontends, 3 backend sets, 4 backends",
            "Service ns/bad: no ports",
            "drift repairs:   5 entries",
        ] {
            assert!(text.contains(want), "{want:?} missing from\n{text}");
        }
        let json = serde_json::to_string(&s).unwrap();
        assert!(
            json.contains("\"apiServer\":{\"connected\":false"),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), s);
    }
}
