//! The daemon's small HTTP endpoints (the metrics/admin endpoint, the Docker plugin): one
//! hyper http1 serve loop over a TCP or Unix listener, with the limits a hostile local client
//! meets.
//!
//! Owns accepting (backing off when accept fails, e.g. on EMFILE), the cap on connections
//! served at once (more are closed as soon as they are accepted), the per-connection deadline
//! (a slow client is dropped, it cannot hold a slot), hyper's head-size limit (hyper answers a
//! larger head with 431, a malformed one with 400) and reading a request body up to a limit.
//! It must not route or interpret requests: each endpoint passes its own handler.

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

/// A whole response body.
pub type Body = Full<Bytes>;

/// What an endpoint allows a client.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time a connection may take from accept to its last byte (`None`: no limit, for a
    /// trusted client whose calls may take long).
    pub connection_timeout: Option<Duration>,
    /// Largest request head hyper buffers (at least 8 KiB); a larger one is answered 431.
    pub max_head: usize,
    /// Serve further requests on a connection after the first.
    pub keep_alive: bool,
}

/// A listener the serve loop accepts on.
pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// Serves `handler` on `listener` until the runtime stops. Each connection runs as its own
/// task on the current runtime.
pub async fn serve<H, F>(listener: Listener, limits: ServeLimits, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let admitted = match &listener {
            Listener::Tcp(l) => match l.accept().await {
                Ok((s, _)) => admit(s, &limits, &handler, &active),
                Err(e) => Err(e),
            },
            Listener::Unix(l) => match l.accept().await {
                Ok((s, _)) => admit(s, &limits, &handler, &active),
                Err(e) => Err(e),
            },
        };
        if let Err(e) = admitted {
            debug!("accept: {e}");
            // EMFILE and friends: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn admit<S, H, F>(
    stream: S,
    limits: &ServeLimits,
    handler: &H,
    active: &Arc<AtomicUsize>,
) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    if active.fetch_add(1, Ordering::Relaxed) >= limits.max_connections {
        active.fetch_sub(1, Ordering::Relaxed);
        debug!("over {} connections: closed one", limits.max_connections);
        return Ok(());
    }
    let (limits, handler, active) = (*limits, handler.clone(), active.clone());
    tokio::spawn(async move {
        serve_connection(stream, &limits, handler).await;
        active.fetch_sub(1, Ordering::Relaxed);
    });
    Ok(())
}

/// Serves one accepted connection (any byte stream: the fuzz targets use in-memory pipes)
/// within `limits`, and returns when it is closed.
pub async fn serve_connection<S, H, F>(stream: S, limits: &ServeLimits, handler: H)
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: Fn(Request<Incoming>) -> F,
    F: Future<Output = Response<Body>>,
{
    let service = service_fn(|req| {
        let answer = handler(req);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let conn = http1::Builder::new()
        .max_buf_size(limits.max_head.max(8192))
        .keep_alive(limits.keep_alive)
        // A client may shut its side down after sending (as `curl` and the fuzz targets'
        // pipes do) and still gets its answer; the deadline bounds how long that lasts.
        .half_close(true)
        .serve_connection(TokioIo::new(stream), service);
    let result = match limits.connection_timeout {
        Some(t) => match tokio::time::timeout(t, conn).await {
            Ok(r) => r,
            Err(_) => return debug!("closed a connection after {t:?}"),
        },
        None => conn.await,
    };
    if let Err(e) = result {
        debug!("connection: {e}");
    }
}

/// The request's body, read up to `max` bytes; a longer one (announced or sent) is an error
/// to answer with 413.
pub async fn read_body<B>(body: B, max: usize) -> Result<Bytes, String>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Display + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(e.to_string()),
    }
}

/// A response with `status`, `content_type` and `body`.
pub fn response(
    status: hyper::StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    resp
}
