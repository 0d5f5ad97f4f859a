//! The metrics and admin HTTP endpoint: `GET /metrics` (Prometheus text), `GET /limits`,
//! `PUT /limits` (change the rate limits at run time), on loopback TCP or a Unix socket.
//!
//! Owns the listening socket (bound before the sandbox, like the vhost-user one), the routes
//! and their answers, served by hyper's http1 server through the serve loop it shares with
//! the Docker plugin ([`crate::http`]) on a current-thread tokio runtime in its own thread:
//! one request per connection, a 16 KiB head (431 beyond), a 4 KiB body (413 beyond), 5 s
//! per connection, 32 connections at once. Malformed requests get hyper's 400, an unknown
//! path 404, a wrong method 405 with `Allow`, a refused limits change 400 with the reason.
//! It also owns the blocking client (hyper's http1 client) used by `virtiofsd-kr stats` and
//! `limits` and by the tests. After seccomp the thread needs only `accept4`,
//! `recvfrom`/`sendto`/`read`/`write`, `epoll_*`, `eventfd2` and `shutdown` (see
//! `confine/seccomp.rs`).
//!
//! The Prometheus text itself comes from [`metrics::render`], not from prometheus-client:
//! every value is a snapshot of cumulative totals that survive restarts (replayed from the
//! journal), including precomputed latency histograms, and prometheus-client's text encoder
//! writes OpenMetrics 1.0 (`# EOF`, counter families named without `_total`, its own
//! content type), which would change what existing scrapers and `virtiofsd-kr stats` parse.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{info, warn};

use super::metrics;
use super::Accounting;
use crate::http::{self, Body, Listener, ServeLimits};
use crate::unix_socket;

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
    #[error("binding {addr}: {source}")]
    Place {
        addr: String,
        source: unix_socket::PlaceError,
    },
    #[error("{addr}: {source}")]
    Client {
        addr: String,
        source: std::io::Error,
    },
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
    /// Binds `addr`. A stale Unix socket at the path is replaced (anything else there is
    /// refused); the new one appears at the path already listening, mode 0600
    /// ([`unix_socket::listen_placed`]).
    pub fn bind(addr: &MetricsAddr) -> Result<Self, ServerError> {
        let bind_err = |source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = match addr {
            MetricsAddr::Tcp(a) => MetricsListener::Tcp(TcpListener::bind(a).map_err(bind_err)?),
            MetricsAddr::Unix(path) => {
                let placement = unix_socket::Placement {
                    mode: Some(0o600),
                    group: None,
                    existing: unix_socket::Existing::ReplaceSocket,
                };
                let l = unix_socket::listen_placed(path, &placement).map_err(|source| {
                    ServerError::Place {
                        addr: addr.to_string(),
                        source,
                    }
                })?;
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
            runtime.block_on(serve(listener, acct));
        })
        .map(|_| ())
}

/// What a client of the endpoint may take: one request per connection.
const LIMITS: ServeLimits = ServeLimits {
    max_connections: MAX_CONNECTIONS,
    connection_timeout: Some(REQUEST_TIMEOUT),
    max_head: MAX_HEAD,
    keep_alive: false,
};

async fn serve(listener: MetricsListener, acct: Arc<Accounting>) {
    let listener = match listener {
        MetricsListener::Tcp(l) => tokio::net::TcpListener::from_std(l).map(Listener::Tcp),
        MetricsListener::Unix(l) => tokio::net::UnixListener::from_std(l).map(Listener::Unix),
    };
    let listener = match listener {
        Ok(l) => l,
        Err(e) => return warn!("metrics server: {e}"),
    };
    info!("metrics endpoint listening");
    http::serve(listener, LIMITS, move |req| answer(req, acct.clone())).await
}

/// Serves one connection the listener accepted (one request, then closed), within the
/// endpoint's limits. Public so the `metrics_http` fuzz target can drive the endpoint
/// in-process over any byte stream; needs a runtime with time enabled (the deadline).
pub async fn serve_connection<S>(stream: S, acct: &Arc<Accounting>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    http::serve_connection(stream, &LIMITS, |req| answer(req, acct.clone())).await
}

const TEXT: &str = "text/plain; charset=utf-8";

async fn answer(req: Request<Incoming>, acct: Arc<Accounting>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let text = |status, body: String| http::response(status, TEXT, body);
    let not_allowed = |allow: &'static str| {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("method not allowed (allowed: {allow})\n"),
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static(allow));
        r
    };
    match (&parts.method, parts.uri.path()) {
        (&Method::GET, "/metrics") => http::response(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(
                &acct.labels,
                &acct.meter.snapshot(),
                &acct.limiter.limits(),
                acct.journal_seq(),
            ),
        ),
        (&Method::GET, "/limits") => text(StatusCode::OK, format!("{}\n", acct.limiter.limits())),
        (&Method::PUT | &Method::POST, "/limits") => {
            let body = match http::read_body(body, MAX_BODY).await {
                Ok(b) => b,
                Err(e) => {
                    return text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body: {e} (at most {MAX_BODY} bytes)\n"),
                    )
                }
            };
            let Ok(change) = std::str::from_utf8(&body) else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "the body is not UTF-8 text\n".to_string(),
                );
            };
            match acct.limiter.limits().updated(change) {
                Ok(limits) => {
                    acct.limiter.set_limits(limits);
                    info!(%limits, "rate limits changed through the admin endpoint");
                    text(StatusCode::OK, format!("{limits}\n"))
                }
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        (_, "/metrics") => not_allowed("GET"),
        (_, "/limits") => not_allowed("GET, PUT, POST"),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the endpoint serves /metrics and /limits\n".to_string(),
        ),
    }
}

/// A blocking HTTP request to the endpoint (hyper's http1 client on a current-thread
/// runtime): returns the status code and body.
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
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, "localhost")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| client_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(client_err)?;
    let exchange = async {
        match addr {
            MetricsAddr::Tcp(a) => {
                exchange(tokio::net::TcpStream::connect(a).await?, request).await
            }
            MetricsAddr::Unix(p) => {
                exchange(tokio::net::UnixStream::connect(p).await?, request).await
            }
        }
    };
    let (status, body) = runtime
        .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, exchange).await })
        .map_err(|_| client_err(std::io::ErrorKind::TimedOut.into()))?
        .map_err(client_err)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// One request and its whole response on `stream`.
async fn exchange<S>(stream: S, request: Request<Body>) -> std::io::Result<(u16, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(std::io::Error::other)?;
    // The connection is driven beside the call; it ends when the response is read.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let call = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        Ok::<_, std::io::Error>((status, body))
    };
    call.await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::limiter::Limits;
    use crate::accounting::meter::Totals;
    use crate::accounting::Labels;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn accounting() -> Arc<Accounting> {
        let labels = Labels {
            tenant: "t".into(),
            volume: "v".into(),
            pod: "p".into(),
            traffic_class: "internal".into(),
            host: "h".into(),
        };
        Arc::new(Accounting::new(
            labels,
            Limits::default(),
            Totals::default(),
            None,
        ))
    }

    /// One connection carrying `request`; the raw response.
    fn exchange(acct: &Arc<Accounting>, request: &[u8]) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(1 << 16);
            let send = async {
                let _ = client.write_all(request).await;
                let _ = client.shutdown().await;
                let mut out = Vec::new();
                let _ = client.read_to_end(&mut out).await;
                out
            };
            let acct = acct.clone();
            tokio::spawn(async move { serve_connection(server, &acct).await });
            String::from_utf8(send.await).unwrap()
        })
    }

    fn status(response: &str) -> u16 {
        response
            .strip_prefix("HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status line: {response:?}"))
    }

    #[test]
    fn routes_answer_as_documented() {
        let acct = accounting();
        let r = exchange(&acct, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&r), 200, "{r}");
        assert!(r.contains("text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("virtiofs_read_bytes_total{tenant=\"t\""), "{r}");
        let put = b"PUT /limits HTTP/1.1\r\nContent-Length: 9\r\n\r\nops=100\r\n";
        let r = exchange(&acct, put);
        assert_eq!(status(&r), 200, "{r}");
        assert_eq!(acct.limiter.limits().ops_per_sec, 100);
        let r = exchange(&acct, b"GET /limits?x=1 HTTP/1.1\r\n\r\n");
        assert!(r.ends_with(&format!("{}\n", acct.limiter.limits())), "{r}");
        let r = exchange(
            &acct,
            b"PUT /limits HTTP/1.1\r\nContent-Length: 4\r\n\r\nops=",
        );
        assert_eq!(status(&r), 400, "{r}");
        assert_eq!(
            acct.limiter.limits().ops_per_sec,
            100,
            "a refused change kept"
        );
        let r = exchange(&acct, b"DELETE /limits HTTP/1.1\r\n\r\n");
        assert_eq!(status(&r), 405, "{r}");
        assert!(
            r.to_ascii_lowercase().contains("allow: get, put, post"),
            "{r}"
        );
        let r = exchange(&acct, b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert_eq!(status(&r), 405, "{r}");
        let r = exchange(&acct, b"GET /other HTTP/1.1\r\n\r\n");
        assert_eq!(status(&r), 404, "{r}");
    }

    #[test]
    fn hostile_requests_get_a_4xx_and_change_nothing() {
        let acct = accounting();
        let before = acct.limiter.limits();
        // Not HTTP at all.
        assert_eq!(status(&exchange(&acct, b"\x00\x01garbage\r\n\r\n")), 400);
        // A body over the limit, announced or not.
        let big = format!(
            "PUT /limits HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
            MAX_BODY + 1,
            "o".repeat(MAX_BODY + 1)
        );
        let r = exchange(&acct, big.as_bytes());
        assert_eq!(status(&r), 413, "{r}");
        let r = exchange(
            &acct,
            b"PUT /limits HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\nops=1",
        );
        assert_eq!(status(&r), 413, "{r}");
        let chunked = b"PUT /limits HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n";
        let mut chunked = chunked.to_vec();
        chunked.extend(std::iter::repeat_n(b'o', 0x2000));
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        assert_eq!(status(&exchange(&acct, &chunked)), 413);
        // A head over the limit.
        let head = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD * 2)
        );
        assert_eq!(status(&exchange(&acct, head.as_bytes())), 431);
        // Not UTF-8.
        let r = exchange(
            &acct,
            b"PUT /limits HTTP/1.1\r\nContent-Length: 2\r\n\r\n\xff\xfe",
        );
        assert_eq!(status(&r), 400, "{r}");
        assert_eq!(acct.limiter.limits(), before);
    }

    /// Clients that connect and send nothing (or a request's first bytes only) hold a slot
    /// for at most the connection deadline: the endpoint answers again afterwards.
    #[test]
    fn slow_clients_are_dropped_and_the_endpoint_recovers() {
        let listener = MetricsListener::bind(&"127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = MetricsAddr::Tcp(listener.local_addr().unwrap());
        let MetricsAddr::Tcp(tcp) = addr.clone() else {
            unreachable!()
        };
        spawn(listener, accounting()).unwrap();
        let mut idle = Vec::new();
        for i in 0..MAX_CONNECTIONS + 8 {
            let mut s = std::net::TcpStream::connect(tcp).unwrap();
            if i % 2 == 0 {
                std::io::Write::write_all(&mut s, b"GET /met").unwrap();
            }
            idle.push(s);
        }
        let start = std::time::Instant::now();
        for mut s in idle {
            s.set_read_timeout(Some(REQUEST_TIMEOUT * 3)).unwrap();
            let mut rest = Vec::new();
            // Closed by the server (a slot freed), possibly after a 408-like nothing.
            let _ = std::io::Read::read_to_end(&mut s, &mut rest);
        }
        assert!(
            start.elapsed() < REQUEST_TIMEOUT * 2,
            "slow clients held for {:?}",
            start.elapsed()
        );
        let (code, body) = http_request(&addr, "GET", "/limits", "").unwrap();
        assert_eq!(code, 200, "{body}");
    }

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
