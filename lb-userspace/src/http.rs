//! A deliberately tiny HTTP/1.x responder for the agent's own endpoints
//! (health check node ports, /healthz, /metrics): read one request head,
//! answer, close. These endpoints are polled by load balancers and
//! Prometheus; they need no keep-alive, bodies or chunking.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Upper bound on a request head; anything longer is answered 431.
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Serves one connection with `handler`.
pub async fn serve_connection(mut stream: TcpStream, handler: impl FnOnce(&Request) -> Response) {
    let mut buf = Vec::with_capacity(512);
    let head = tokio::time::timeout(READ_TIMEOUT, async {
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
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    let resp = match head {
        Ok(Ok(Some(end))) => match parse_head(&buf[..end]) {
            Some(req) => handler(&req),
            None => Response::new(400, "text/plain", "bad request\n"),
        },
        Ok(Ok(None)) => Response::new(431, "text/plain", "request head too large\n"),
        // Timed out or closed: nobody to answer.
        _ => return,
    };
    let _ = stream.write_all(&render(&resp)).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
