//! The metrics and admin HTTP endpoint: `GET /metrics` (Prometheus text), `GET /limits`,
//! `PUT /limits` (change the rate limits at run time), on loopback TCP or a Unix socket.
//!
//! Owns the listening socket (bound before the sandbox, like the vhost-user one), a
//! deliberately small HTTP/1.1 server on a current-thread tokio runtime in its own thread
//! (one request per connection, bounded sizes, a timeout, a cap on concurrent connections),
//! and the blocking client used by `virtiofsd-kr stats` and the tests. After seccomp the
//! thread needs only `accept4`, `recvfrom`/`sendto`/`read`/`write`, `epoll_*`, `eventfd2`
//! and `shutdown` (see `seccomp.rs`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::metrics;
use super::Accounting;

/// Longest request head (request line and headers).
const MAX_HEAD: usize = 16 << 10;
/// Longest request body (`PUT /limits`).
const MAX_BODY: usize = 4 << 10;
/// Time a client gets to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0:?}: expected a loopback HOST:PORT (e.g. 127.0.0.1:9100) or unix:PATH")]
    BadAddr(String),
    #[error("{addr}: refusing a non-loopback address (the endpoint has no authentication)")]
    NotLoopback { addr: SocketAddr },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Client {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: malformed HTTP response")]
    BadResponse { addr: String },
}

/// Where the endpoint listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Tcp(a) => write!(f, "{a}"),
            MetricsAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for MetricsAddr {
    type Err = ServerError;

    fn from_str(text: &str) -> Result<Self, ServerError> {
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(ServerError::BadAddr(text.to_string()));
            }
            return Ok(MetricsAddr::Unix(PathBuf::from(path)));
        }
        let addr: SocketAddr = text
            .parse()
            .map_err(|_| ServerError::BadAddr(text.to_string()))?;
        if !addr.ip().is_loopback() {
            return Err(ServerError::NotLoopback { addr });
        }
        Ok(MetricsAddr::Tcp(addr))
    }
}

/// A bound listening socket, created before the sandbox.
#[derive(Debug)]
pub enum MetricsListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl MetricsListener {
    /// Binds `addr`. A stale Unix socket at the path is replaced; the new one is mode 0600.
    pub fn bind(addr: &MetricsAddr) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = match addr {
            MetricsAddr::Tcp(a) => MetricsListener::Tcp(TcpListener::bind(a).map_err(bind_err)?),
            MetricsAddr::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if meta.file_type().is_socket() {
                        let _ = std::fs::remove_file(path);
                    }
                }
                let l = UnixListener::bind(path).map_err(bind_err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(bind_err)?;
                MetricsListener::Unix(l)
            }
        };
        match &listener {
            MetricsListener::Tcp(l) => l.set_nonblocking(true),
            MetricsListener::Unix(l) => l.set_nonblocking(true),
        }
        .map_err(bind_err)?;
        Ok(listener)
    }

    /// The address actually bound (TCP port 0 gets a real port).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            MetricsListener::Tcp(l) => l.local_addr().ok(),
            MetricsListener::Unix(_) => None,
        }
    }
}

/// Starts the server thread with its own current-thread runtime.
pub fn spawn(listener: MetricsListener, acct: Arc<Accounting>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("vfs-metrics".to_string())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!("metrics server: no runtime ({e}); metrics are not served");
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, serve(listener, acct));
        })
        .map(|_| ())
}

async fn serve(listener: MetricsListener, acct: Arc<Accounting>) {
    let active = Arc::new(AtomicUsize::new(0));
    match listener {
        MetricsListener::Tcp(l) => {
            let l = match tokio::net::TcpListener::from_std(l) {
                Ok(l) => l,
                Err(e) => return warn!("metrics server: {e}"),
            };
            info!("metrics endpoint listening on TCP");
            loop {
                match l.accept().await {
                    Ok((s, _)) => admit(s, &acct, &active),
                    Err(e) => accept_failed(e).await,
                }
            }
        }
        MetricsListener::Unix(l) => {
            let l = match tokio::net::UnixListener::from_std(l) {
                Ok(l) => l,
                Err(e) => return warn!("metrics server: {e}"),
            };
            info!("metrics endpoint listening on a unix socket");
            loop {
                match l.accept().await {
                    Ok((s, _)) => admit(s, &acct, &active),
                    Err(e) => accept_failed(e).await,
                }
            }
        }
    }
}

async fn accept_failed(e: std::io::Error) {
    debug!("metrics accept: {e}");
    // EMFILE and friends: back off instead of spinning.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn admit<S>(stream: S, acct: &Arc<Accounting>, active: &Arc<AtomicUsize>)
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    if active.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
        active.fetch_sub(1, Ordering::Relaxed);
        return;
    }
    let acct = acct.clone();
    let active = active.clone();
    tokio::task::spawn_local(async move {
        if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, serve_connection(stream, &acct)).await
        {
            debug!("metrics client timed out: {e}");
        }
        active.fetch_sub(1, Ordering::Relaxed);
    });
}

/// A parsed request.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Request> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let mut length = 0usize;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            if k.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    if length > MAX_BODY {
        return None;
    }
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some(Request { method, path, body })
}

/// Answers one HTTP request read from `stream` (a connection the listener accepted) and
/// closes it. Public so the `metrics_http` fuzz target can drive the endpoint in-process
/// over any byte stream; the server itself calls it through [`spawn`] with a timeout.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, acct: &Accounting) {
    let (status, content_type, body) = match read_request(&mut stream).await {
        None => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
        Some(req) => route(&req, acct),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn route(req: &Request, acct: &Accounting) -> (&'static str, &'static str, String) {
    let path = req.path.split('?').next().unwrap_or("");
    match (req.method.as_str(), path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics::render(
                &acct.labels,
                &acct.meter.snapshot(),
                &acct.limiter.limits(),
                acct.journal_seq(),
            ),
        ),
        ("GET", "/limits") => (
            "200 OK",
            "text/plain",
            format!("{}\n", acct.limiter.limits()),
        ),
        ("PUT" | "POST", "/limits") => {
            let text = String::from_utf8_lossy(&req.body);
            match acct.limiter.limits().updated(&text) {
                Ok(limits) => {
                    acct.limiter.set_limits(limits);
                    info!(%limits, "rate limits changed through the admin endpoint");
                    ("200 OK", "text/plain", format!("{limits}\n"))
                }
                Err(e) => ("400 Bad Request", "text/plain", format!("{e}\n")),
            }
        }
        (_, "/metrics" | "/limits") => (
            "405 Method Not Allowed",
            "text/plain",
            "method not allowed\n".to_string(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
    }
}

/// A blocking HTTP request to the endpoint: returns the status code and body.
pub fn http_request(
    addr: &MetricsAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String), ServerError> {
    let client_err = |source| ServerError::Client {
        addr: addr.to_string(),
        source,
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut response = Vec::new();
    match addr {
        MetricsAddr::Tcp(a) => {
            let mut s = TcpStream::connect_timeout(a, REQUEST_TIMEOUT).map_err(client_err)?;
            s.set_read_timeout(Some(REQUEST_TIMEOUT))
                .map_err(client_err)?;
            s.write_all(request.as_bytes()).map_err(client_err)?;
            s.read_to_end(&mut response).map_err(client_err)?;
        }
        MetricsAddr::Unix(p) => {
            let mut s = UnixStream::connect(p).map_err(client_err)?;
            s.set_read_timeout(Some(REQUEST_TIMEOUT))
                .map_err(client_err)?;
            s.write_all(request.as_bytes()).map_err(client_err)?;
            s.read_to_end(&mut response).map_err(client_err)?;
        }
    }
    let text = String::from_utf8_lossy(&response);
    let bad = || ServerError::BadResponse {
        addr: addr.to_string(),
    };
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_non_loopback_is_refused() {
        assert_eq!(
            "127.0.0.1:9100".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Tcp("127.0.0.1:9100".parse().unwrap())
        );
        assert!(matches!(
            "[::1]:0".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Tcp(_)
        ));
        assert_eq!(
            "unix:/run/m.sock".parse::<MetricsAddr>().unwrap(),
            MetricsAddr::Unix("/run/m.sock".into())
        );
        assert!(matches!(
            "0.0.0.0:9100".parse::<MetricsAddr>(),
            Err(ServerError::NotLoopback { .. })
        ));
        for bad in ["", "unix:", "localhost", "127.0.0.1"] {
            assert!(bad.parse::<MetricsAddr>().is_err(), "{bad:?}");
        }
    }
}
