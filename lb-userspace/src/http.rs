//! A deliberately tiny HTTP/1.x responder for the agent's own endpoints
//! (health check node ports, /healthz, /metrics): read one request head,
//! answer, close. These endpoints are polled by load balancers and
//! Prometheus; they need no keep-alive, bodies or chunking.
//!
//! [`serve`] is the one accept loop every such listener runs. Anyone who
//! can reach the node can connect to :10256 and the health check node
//! ports, so the loop is bounded: one [`Connections`] table shared by all
//! the listeners of a process caps the connections open at once; at the
//! cap the oldest connection still waiting for its request head is closed
//! to make room (a client that sends nothing, or sends slowly, is the
//! cheapest to drop and the likeliest to be hostile); every read and write
//! has a deadline; and accept errors (EMFILE: the file limit reached) back
//! off instead of spinning, closing an idle connection to free a
//! descriptor.

use std::{
    collections::BTreeMap,
    io,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpListener, UnixListener},
    sync::Notify,
    task::JoinSet,
};

/// A listening socket [`serve`] accepts on: TCP for the agent's ports, a
/// unix socket for `ferry explain`'s local endpoint.
pub trait Listener: Send + 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl std::future::Future<Output = io::Result<Self::Stream>> + Send;
    /// For logs.
    fn describe(&self) -> String;
}

impl Listener for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        TcpListener::accept(self).await.map(|(s, _)| s)
    }
    fn describe(&self) -> String {
        self.local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string())
    }
}

impl Listener for UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<Self::Stream> {
        UnixListener::accept(self).await.map(|(s, _)| s)
    }
    fn describe(&self) -> String {
        self.local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(|p| p.display().to_string()))
            .unwrap_or_else(|| "?".into())
    }
}

/// Upper bound on a request head; anything longer is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// A connection that has not sent its whole request head by then is
/// closed (idle close): probes send theirs at once.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that does not take the answer by then is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause after a failed accept.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Bounds of the connection cap derived from the file limit.
const MIN_CONNECTIONS: usize = 64;
const MAX_CONNECTIONS: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type", content_type.to_string())],
            body: body.into(),
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Parses the request line of a complete head.
pub fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let line = text.lines().next()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let target = parts.next()?;
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or("/").to_string();
    Some(Request { method, path })
}

pub fn render(resp: &Response) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        resp.body.len()
    ));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&resp.body);
    bytes
}

/// What answers the requests of one listener.
#[derive(Clone)]
pub enum Handler {
    /// Cheap answers (a lock and a format): run on the async worker.
    Inline(Arc<dyn Fn(&Request) -> Response + Send + Sync>),
    /// Answers that make syscalls (the /metrics scrape reads a map per
    /// Service): run on tokio's blocking pool, off the workers the other
    /// listeners and the watches share.
    Blocking(Arc<dyn Fn(&Request) -> Response + Send + Sync>),
}

impl Handler {
    pub fn inline(f: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Self {
        Handler::Inline(Arc::new(f))
    }

    pub fn blocking(f: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Self {
        Handler::Blocking(Arc::new(f))
    }

    async fn answer(&self, req: Request) -> Response {
        match self {
            Handler::Inline(f) => f(&req),
            Handler::Blocking(f) => {
                let f = f.clone();
                tokio::task::spawn_blocking(move || f(&req))
                    .await
                    .unwrap_or_else(|_| Response::new(500, "text/plain", "internal error\n"))
            }
        }
    }
}

/// The connection cap and deadlines of a [`Connections`] table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
}

impl Limits {
    /// Half the soft file limit (the rest is for maps, programs, the API
    /// server's connections, namespace handles), within 64..=4096: with the
    /// common default of 1,024 descriptors, 512 connections.
    pub fn from_file_limit() -> Self {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we own.
        let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
        } else {
            1024
        };
        Self::for_file_limit(soft)
    }

    pub fn for_file_limit(soft: usize) -> Self {
        Limits {
            max_connections: (soft / 2).clamp(MIN_CONNECTIONS, MAX_CONNECTIONS),
            read_timeout: READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
        }
    }
}

struct Slot {
    /// Still waiting for its request head: may be closed to make room.
    idle: bool,
    close: Arc<Notify>,
}

#[derive(Default)]
struct Table {
    /// Connection ids are handed out in accept order, so the first idle
    /// entry is the oldest idle connection.
    next_id: u64,
    open: BTreeMap<u64, Slot>,
    evicted: u64,
    refused: u64,
}

/// The open connections of every listener of a process, against one cap.
pub struct Connections {
    limits: Limits,
    table: Mutex<Table>,
}

/// What [`Connections::stats`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    pub open: usize,
    /// Idle connections closed to make room for new ones.
    pub evicted: u64,
    /// New connections closed at once: every slot held a request being
    /// answered.
    pub refused: u64,
}

/// A connection's place in the table; gives it up when dropped.
struct Admission {
    id: u64,
    close: Arc<Notify>,
    conns: Arc<Connections>,
}

impl Admission {
    /// The request head is in: from now on the connection is answered,
    /// not evicted.
    fn busy(&self) {
        if let Some(slot) = self.conns.lock().open.get_mut(&self.id) {
            slot.idle = false;
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.conns.lock().open.remove(&self.id);
    }
}

impl Connections {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Connections {
            limits,
            table: Mutex::new(Table::default()),
        })
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn stats(&self) -> ConnectionStats {
        let t = self.lock();
        ConnectionStats {
            open: t.open.len(),
            evicted: t.evicted,
            refused: t.refused,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the oldest idle connection; false when none is idle.
    fn evict_oldest_idle(t: &mut Table) -> bool {
        let Some(id) = t.open.iter().find(|(_, s)| s.idle).map(|(id, _)| *id) else {
            return false;
        };
        if let Some(slot) = t.open.remove(&id) {
            // notify_one keeps the permit if the task is not waiting yet.
            slot.close.notify_one();
            t.evicted += 1;
        }
        true
    }

    /// A slot for a new connection, making room at the cap; None when
    /// every slot holds a request being answered.
    fn admit(self: &Arc<Self>) -> Option<Admission> {
        let mut t = self.lock();
        if t.open.len() >= self.limits.max_connections && !Self::evict_oldest_idle(&mut t) {
            t.refused += 1;
            return None;
        }
        let id = t.next_id;
        t.next_id += 1;
        let close = Arc::new(Notify::new());
        t.open.insert(
            id,
            Slot {
                idle: true,
                close: close.clone(),
            },
        );
        Some(Admission {
            id,
            close,
            conns: self.clone(),
        })
    }

    /// Frees a descriptor when the process has run out of them.
    fn relieve(&self) -> bool {
        Self::evict_oldest_idle(&mut self.lock())
    }
}

/// Out of descriptors, process-wide or system-wide.
fn is_fd_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Accepts and answers the connections of `listener` with `handler` until
/// the task is dropped (which closes every connection it still holds),
/// within the cap and deadlines of `conns`.
pub async fn serve<L: Listener>(listener: L, handler: Handler, conns: Arc<Connections>) {
    let mut tasks = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failing = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(stream) => {
                    if failing {
                        tracing::info!(listener = %listener.describe(), "accepting connections again");
                    }
                    failing = false;
                    backoff = ACCEPT_BACKOFF_MIN;
                    // At the cap with every slot busy the stream is
                    // dropped here: closed at once.
                    if let Some(admission) = conns.admit() {
                        tasks.spawn(serve_connection(stream, handler.clone(), admission));
                    }
                }
                Err(e) => {
                    // One line per run of failures, not per failure.
                    if !failing {
                        tracing::warn!(listener = %listener.describe(), error = %e, "accept failed; backing off");
                    }
                    failing = true;
                    // The failed connection stays queued and the listener
                    // stays readable: without the pause this would spin.
                    if is_fd_exhaustion(&e) {
                        conns.relieve();
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Reads a request head; Ok(None) when it is too large.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> io::Result<Option<usize>> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(Some(end));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves one connection: head within the read deadline (or evicted
/// before), answer within the write deadline, close.
async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    handler: Handler,
    admission: Admission,
) {
    let limits = admission.conns.limits;
    let mut buf = Vec::with_capacity(512);
    let head = tokio::select! {
        head = tokio::time::timeout(limits.read_timeout, read_head(&mut stream, &mut buf)) => head,
        _ = admission.close.notified() => return,
    };
    let resp = match head {
        Ok(Ok(Some(end))) => match parse_head(&buf[..end]) {
            Some(req) => {
                admission.busy();
                handler.answer(req).await
            }
            None => Response::new(400, "text/plain", "bad request\n"),
        },
        Ok(Ok(None)) => Response::new(431, "text/plain", "request head too large\n"),
        // Timed out or closed: nobody to answer.
        _ => return,
    };
    let _ = tokio::time::timeout(limits.write_timeout, async {
        stream.write_all(&render(&resp)).await?;
        stream.shutdown().await
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    #[test]
    fn parses_request_lines() {
        assert_eq!(
            parse_head(b"GET /healthz?x=1 HTTP/1.1\r\nHost: a"),
            Some(Request {
                method: "GET".into(),
                path: "/healthz".into()
            })
        );
        assert_eq!(parse_head(b"garbage"), None);
        assert_eq!(parse_head(b"GET / SPDY/3"), None);
    }

    #[test]
    fn renders_status_headers_and_length() {
        let r = render(&Response::new(503, "application/json", "{}").header("X-A", "1"));
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.contains("X-A: 1\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\nConnection: close\r\n\r\n{}"));
    }

    #[test]
    fn the_cap_follows_the_file_limit() {
        assert_eq!(Limits::for_file_limit(1024).max_connections, 512);
        assert_eq!(Limits::for_file_limit(10).max_connections, MIN_CONNECTIONS);
        assert_eq!(
            Limits::for_file_limit(1 << 20).max_connections,
            MAX_CONNECTIONS
        );
    }

    fn limits(max_connections: usize, read_timeout: Duration) -> Limits {
        Limits {
            max_connections,
            read_timeout,
            write_timeout: WRITE_TIMEOUT,
        }
    }

    #[test]
    fn at_the_cap_the_oldest_idle_slot_gives_way_and_busy_ones_never_do() {
        let conns = Connections::new(limits(2, READ_TIMEOUT));
        let a = conns.admit().unwrap();
        let b = conns.admit().unwrap();
        b.busy();
        // a is the oldest idle one: it is told to close and loses its slot.
        let c = conns.admit().unwrap();
        assert_eq!(conns.stats().open, 2);
        assert_eq!(conns.stats().evicted, 1);
        assert!(!conns.lock().open.contains_key(&a.id));
        c.busy();
        // Every slot busy: the newcomer is refused.
        assert!(conns.admit().is_none());
        assert_eq!(conns.stats().refused, 1);
        drop(b);
        assert!(conns.admit().is_some());
        // An evicted admission dropping later frees nothing twice.
        drop(a);
        assert_eq!(conns.stats().open, 1);
    }

    async fn server(
        conns: Arc<Connections>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = Handler::inline(|req| Response::new(200, "text/plain", req.path.clone()));
        (addr, tokio::spawn(serve(listener, handler, conns)))
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    /// Reads until EOF (the server closed) or `within` passes.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(within, s.read(&mut buf)).await,
            Ok(Ok(0) | Err(_))
        )
    }

    #[tokio::test]
    async fn idle_connections_make_room_for_new_requests_at_the_cap() {
        let conns = Connections::new(limits(4, Duration::from_secs(60)));
        let (addr, task) = server(conns.clone()).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Until the server has taken all four, a new one would not evict.
        for _ in 0..100 {
            if conns.stats().open == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(conns.stats().open, 4);
        let reply = get(addr, "/new").await;
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with("/new"), "{reply}");
        // The oldest idle connection was closed for it, the youngest not.
        assert!(closed_within(&mut idle[0], Duration::from_secs(5)).await);
        assert!(!closed_within(&mut idle[3], Duration::from_millis(200)).await);
        assert_eq!(conns.stats().evicted, 1);
        task.abort();
        let _ = task.await;
        // Dropping the server closes what it still held.
        assert!(closed_within(&mut idle[3], Duration::from_secs(5)).await);
        assert_eq!(conns.stats().open, 0);
    }

    #[tokio::test]
    async fn a_client_that_sends_no_head_is_closed_after_the_read_timeout() {
        let conns = Connections::new(limits(16, Duration::from_millis(100)));
        let (addr, task) = server(conns.clone()).await;
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /slow HTTP/1.1\r\n").await.unwrap();
        assert!(closed_within(&mut silent, Duration::from_secs(5)).await);
        assert!(closed_within(&mut slow, Duration::from_secs(5)).await);
        // Others are still served.
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 200"));
        task.abort();
    }

    /// The single-threaded test runtime proves it: the blocking handler
    /// waits for a request that only the runtime's one thread can answer.
    #[tokio::test]
    async fn blocking_handlers_leave_the_async_worker_free() {
        let conns = Connections::new(Limits::for_file_limit(1024));
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let release_rx = Mutex::new(release_rx);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let slow_addr = listener.local_addr().unwrap();
        let handler = Handler::blocking(move |_| {
            let rx = release_rx.lock().unwrap();
            let body = match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(()) => "released",
                Err(_) => "never released",
            };
            Response::new(200, "text/plain", body)
        });
        let slow_task = tokio::spawn(serve(listener, handler, conns.clone()));
        let (fast_addr, fast_task) = server(conns).await;
        let slow = tokio::spawn(get(slow_addr, "/metrics"));
        // Served while the slow handler blocks its thread.
        assert!(get(fast_addr, "/healthz").await.ends_with("/healthz"));
        release_tx.send(()).unwrap();
        assert!(slow.await.unwrap().ends_with("\r\n\r\nreleased"));
        slow_task.abort();
        fast_task.abort();
    }
}
