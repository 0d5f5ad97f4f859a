//! The plugin's HTTP endpoint: hyper's http1 server on a Unix socket through the serve loop
//! shared with the metrics endpoint ([`crate::http`]), one current-thread tokio runtime.
//!
//! Owns the socket (a stale one is replaced; mode 0600, root's dockerd is the only client),
//! reading a bounded body, and handing (path, body) to the plugin core on a blocking thread
//! (a Mount can take seconds). Any method, no Content-Type and an empty or odd Host header
//! are accepted: dockerd 20.10 sends `POST` with no Content-Type and `Host: ` empty. It must
//! not interpret requests itself (that is `protocol`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tracing::{debug, info, warn};

use super::protocol::{self, CONTENT_TYPE, MAX_BODY};
use crate::http::{self, Body, Listener, ServeLimits};
use crate::unix_socket;

/// What answers a request: (path, body) to (status, JSON bytes).
pub type Handler = Arc<dyn Fn(&str, &[u8]) -> protocol::Response + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("--socket {path:?}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--socket {0:?} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    #[error("--socket {path:?}: {source}")]
    Place {
        path: PathBuf,
        source: unix_socket::PlaceError,
    },
    #[error("tokio runtime: {0}")]
    Runtime(std::io::Error),
}

/// Binds the socket: parent directories made, a stale socket replaced, mode 0600. It
/// appears at `path` already listening with that mode ([`unix_socket::listen_placed`]):
/// dockerd may connect the moment it sees it.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, ServerError> {
    let err = |source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let placement = unix_socket::Placement {
        mode: Some(0o600),
        group: None,
        existing: unix_socket::Existing::ReplaceSocket,
    };
    let listener = unix_socket::listen_placed(path, &placement).map_err(|e| match e {
        unix_socket::PlaceError::NotASocket(path) => ServerError::NotASocket(path),
        e => ServerError::Place {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// What dockerd may take: it is root's and the only client (mode 0600), and a Mount can
/// take as long as the cluster does, so no deadline; connections are kept alive as dockerd
/// expects.
const LIMITS: ServeLimits = ServeLimits {
    max_connections: 64,
    connection_timeout: None,
    max_head: 64 << 10,
    keep_alive: true,
};

/// Serves until the process ends.
pub fn serve(
    listener: std::os::unix::net::UnixListener,
    handler: Handler,
) -> Result<(), ServerError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(ServerError::Runtime)?;
    runtime.block_on(async move {
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(ServerError::Runtime)?;
        info!("docker plugin listening");
        http::serve(Listener::Unix(listener), LIMITS, move |req| {
            answer(req, handler.clone())
        })
        .await;
        Ok(())
    })
}

async fn answer(req: Request<Incoming>, handler: Handler) -> Response<Body> {
    let path = req.uri().path().to_string();
    let body = match http::read_body(req.into_body(), MAX_BODY).await {
        Ok(body) => body,
        Err(e) => {
            let r = protocol::Response {
                status: 413,
                body: serde_json::json!({ "Err": format!("request body: {e}") }),
            };
            return reply(&r);
        }
    };
    let call = path.clone();
    let response = match tokio::task::spawn_blocking(move || handler(&call, &body)).await {
        Ok(r) => r,
        Err(e) => {
            warn!("plugin call {path} failed: {e}");
            protocol::Response {
                status: 500,
                body: serde_json::json!({ "Err": "internal error" }),
            }
        }
    };
    match response.error() {
        Some(e) => info!(call = %path, "answered with an error: {e}"),
        None => debug!(call = %path, "answered"),
    }
    reply(&response)
}

fn reply(r: &protocol::Response) -> Response<Body> {
    http::response(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        CONTENT_TYPE,
        r.to_bytes(),
    )
}
