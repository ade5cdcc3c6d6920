//! Health check node ports, as kube-proxy serves them
//! (pkg/proxy/healthcheck/service_health.go): for every Service of type
//! LoadBalancer with externalTrafficPolicy Local, an HTTP listener on its
//! healthCheckNodePort, on the node addresses, that tells the cloud load
//! balancer whether this node has local endpoints. Any path, any method.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::Serialize;
use tokio::{runtime::Handle, task::JoinHandle};

use crate::{
    http::{self, Connections, Handler, Response},
    model::{HealthCheck, ServiceRef},
    netutil,
};

#[derive(Serialize)]
struct ServiceId<'a> {
    namespace: &'a str,
    name: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Body<'a> {
    service: ServiceId<'a>,
    local_endpoints: usize,
    service_proxy_healthy: bool,
}

/// The answer for one Service: 200 when it has local endpoints and the
/// proxy is healthy, else 503.
pub fn respond(service: &ServiceRef, local_endpoints: usize, proxy_healthy: bool) -> Response {
    let body = Body {
        service: ServiceId {
            namespace: &service.namespace,
            name: &service.name,
        },
        local_endpoints,
        service_proxy_healthy: proxy_healthy,
    };
    let status = if local_endpoints > 0 && proxy_healthy {
        200
    } else {
        503
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    Response::new(status, "application/json", json)
        .header("X-Content-Type-Options", "nosniff")
        .header(
            "X-Load-Balancing-Endpoint-Weight",
            local_endpoints.to_string(),
        )
}

struct Listener {
    addrs: Vec<IpAddr>,
    state: Arc<RwLock<HealthCheck>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Every health check listener of the node, kept in line with the desired
/// state after each sync.
pub struct HealthServer {
    listeners: BTreeMap<u16, Listener>,
    proxy_healthy: Arc<AtomicBool>,
    /// The node's network namespace (None: ours), where the node
    /// addresses live.
    netns: Option<PathBuf>,
    /// Shared with the process's other listeners: one cap for all.
    connections: Arc<Connections>,
    /// Where the listeners run: the runtime serving HTTP, not the thread
    /// that syncs the datapath and calls [`HealthServer::update`].
    runtime: Handle,
}

impl HealthServer {
    pub fn new(
        proxy_healthy: Arc<AtomicBool>,
        netns: Option<PathBuf>,
        connections: Arc<Connections>,
        runtime: Handle,
    ) -> Self {
        Self {
            listeners: BTreeMap::new(),
            proxy_healthy,
            netns,
            connections,
            runtime,
        }
    }

    /// Opens, updates and closes listeners; callable from any thread. A
    /// port that cannot be bound is logged and retried on the next
    /// update.
    pub fn update(&mut self, checks: &BTreeMap<u16, HealthCheck>, node_addrs: &[IpAddr]) {
        let mut addrs: Vec<IpAddr> = node_addrs.to_vec();
        addrs.sort();
        addrs.dedup();
        self.listeners.retain(|port, l| {
            let keep = checks.contains_key(port) && l.addrs == addrs;
            if !keep {
                tracing::info!(port, "closing health check node port");
            }
            keep
        });
        for (port, check) in checks {
            if let Some(l) = self.listeners.get(port) {
                if let Ok(mut s) = l.state.write() {
                    *s = check.clone();
                }
                continue;
            }
            let state = Arc::new(RwLock::new(check.clone()));
            let mut tasks = Vec::new();
            let mut ok = true;
            for ip in &addrs {
                match self.listen(SocketAddr::new(*ip, *port), state.clone()) {
                    Ok(task) => tasks.push(task),
                    Err(e) => {
                        tracing::error!(
                            service = %check.service,
                            port,
                            address = %ip,
                            error = %e,
                            "cannot open health check node port; will retry"
                        );
                        ok = false;
                    }
                }
            }
            if ok {
                tracing::info!(service = %check.service, port, "serving health check node port");
                self.listeners.insert(
                    *port,
                    Listener {
                        addrs: addrs.clone(),
                        state,
                        tasks,
                    },
                );
            } else {
                for t in tasks {
                    t.abort();
                }
            }
        }
    }

    fn listen(
        &self,
        addr: SocketAddr,
        state: Arc<RwLock<HealthCheck>>,
    ) -> std::io::Result<JoinHandle<()>> {
        let std_listener = netutil::in_netns(self.netns.as_deref(), || {
            let l = std::net::TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        })?;
        // Registered with the reactor of the runtime that will poll it.
        let listener = {
            let _entered = self.runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let healthy = self.proxy_healthy.clone();
        let handler = Handler::inline(move |_req| {
            let (service, n) = match state.read() {
                Ok(s) => (s.service.clone(), s.local_endpoints),
                Err(_) => (
                    ServiceRef {
                        namespace: String::new(),
                        name: String::new(),
                    },
                    0,
                ),
            };
            respond(&service, n, healthy.load(Ordering::Relaxed))
        });
        Ok(self
            .runtime
            .spawn(http::serve(listener, handler, self.connections.clone())))
    }

    pub fn ports(&self) -> Vec<u16> {
        self.listeners.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc() -> ServiceRef {
        ServiceRef {
            namespace: "ns".into(),
            name: "lb".into(),
        }
    }

    #[test]
    fn answers_200_with_local_endpoints_and_kube_proxy_headers() {
        let r = respond(&svc(), 2, true);
        assert_eq!(r.status, 200);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"service":{"namespace":"ns","name":"lb"},"localEndpoints":2,"serviceProxyHealthy":true}"#
        );
        assert!(
            r.headers
                .contains(&("Content-Type", "application/json".into()))
        );
        assert!(
            r.headers
                .contains(&("X-Content-Type-Options", "nosniff".into()))
        );
        assert!(
            r.headers
                .contains(&("X-Load-Balancing-Endpoint-Weight", "2".into()))
        );
    }

    #[test]
    fn answers_503_without_local_endpoints_or_when_unhealthy() {
        assert_eq!(respond(&svc(), 0, true).status, 503);
        assert_eq!(respond(&svc(), 3, false).status, 503);
    }

    #[tokio::test]
    async fn listeners_open_move_and_close_with_the_desired_state() {
        let mut server = HealthServer::new(
            Arc::new(AtomicBool::new(true)),
            None,
            Connections::new(http::Limits::for_file_limit(1024)),
            Handle::current(),
        );
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        // Find a free port by binding and releasing it.
        let port = std::net::TcpListener::bind((lo, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut checks = BTreeMap::new();
        checks.insert(
            port,
            HealthCheck {
                service: svc(),
                node_port: port,
                local_endpoints: 1,
            },
        );
        server.update(&checks, &[lo]);
        assert_eq!(server.ports(), vec![port]);
        let reply = get(lo, port).await;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        checks.get_mut(&port).unwrap().local_endpoints = 0;
        server.update(&checks, &[lo]);
        let reply = get(lo, port).await;
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(reply.contains("\"localEndpoints\":0"), "{reply}");
        server.update(&BTreeMap::new(), &[lo]);
        assert!(server.ports().is_empty());
        tokio::task::yield_now().await;
        assert!(tokio::net::TcpStream::connect((lo, port)).await.is_err());
    }

    async fn get(ip: IpAddr, port: u16) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect((ip, port)).await.unwrap();
        s.write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}
