//! `virtiofsd-kr mount`: the same filesystem served to this host through `/dev/fuse`.
//!
//! Owns the FUSE session (mount, reader threads, unmount on SIGTERM/SIGINT or when someone
//! unmounts it). Requests pass the same `RequestGuard` as guest requests. It must not enter
//! the guest sandbox: a host mount is for local use and for tests that need no guest.

use std::io::Write;
use std::sync::Arc;
use std::thread;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseSession, Writer};
use nix::sys::signal::{SigSet, Signal};
use tracing::{debug, info, warn};
use vm_memory::ByteValued;

use crate::cli::MountArgs;
use crate::export::{ExportFs, ExportPolicy};
use crate::guard::{error_reply, inspect, RequestGuard, Verdict};
use crate::passthrough::{self, HostFs, PassthroughError};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("backend: {0}")]
    Backend(#[from] PassthroughError),
    #[error("mountpoint {path:?}: {reason}")]
    Session {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("--threads must be at least 1")]
    NoThreads,
    #[error("blocking termination signals: {0}")]
    Signals(nix::Error),
    #[error("starting FUSE thread: {0}")]
    Spawn(std::io::Error),
}

/// Mounts `args.shared_dir` at `args.mountpoint` and serves it until unmounted or signalled.
pub fn mount(args: MountArgs) -> Result<(), MountError> {
    if args.threads == 0 {
        return Err(MountError::NoThreads);
    }
    let session_err = |e: fuse_backend_rs::transport::Error| MountError::Session {
        path: args.mountpoint.clone(),
        reason: e.to_string(),
    };
    let fs = passthrough::open(&args.fs, &args.shared_dir, None)?;
    let server = Arc::new(Server::new(ExportFs::new(fs, ExportPolicy::from(&args.fs))));
    let guard = RequestGuard::new(args.fs.readonly);

    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(MountError::Signals)?;

    let mut session = FuseSession::new(&args.mountpoint, "virtiofsd-kr", "", args.fs.readonly)
        .map_err(session_err)?;
    session.mount().map_err(session_err)?;
    info!(mountpoint = %args.mountpoint.display(), "mounted");

    let mut workers = Vec::new();
    for i in 0..args.threads {
        let mut channel = session.new_channel().map_err(session_err)?;
        let server = server.clone();
        workers.push(
            thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || loop {
                    match channel.get_request() {
                        Ok(Some((reader, writer))) => serve_one(&server, &guard, reader, writer),
                        Ok(None) => return,
                        Err(e) => {
                            warn!("reading /dev/fuse: {e}");
                            return;
                        }
                    }
                })
                .map_err(MountError::Spawn)?,
        );
    }

    let session = Arc::new(std::sync::Mutex::new(session));
    let signal_session = session.clone();
    let spawned = thread::Builder::new()
        .name("fuse-signals".to_string())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                info!("received {sig}, unmounting");
                if let Ok(mut s) = signal_session.lock() {
                    let _ = s.wake();
                    let _ = s.umount();
                }
            }
        });
    if let Err(e) = spawned {
        warn!("no signal thread ({e}); unmount with fusermount -u");
    }
    for w in workers {
        let _ = w.join();
    }
    if let Ok(mut s) = session.lock() {
        let _ = s.umount();
    }
    info!("unmounted");
    Ok(())
}

fn serve_one(
    server: &Server<ExportFs<HostFs>>,
    guard: &RequestGuard,
    reader: fuse_backend_rs::transport::Reader<'_>,
    mut writer: fuse_backend_rs::transport::FuseDevWriter<'_>,
) {
    let Some((header, verdict)) = inspect(guard, &reader) else {
        warn!("short request from /dev/fuse");
        return;
    };
    if let Verdict::Refuse(errno) = verdict {
        let reply = error_reply(header.unique, errno);
        if writer.write_all(reply.as_slice()).is_ok() {
            let _ = writer.commit(None);
        }
        return;
    }
    if let Err(e) = server.handle_message(reader, Writer::FuseDev(writer), None, None) {
        debug!(opcode = header.opcode, "request failed: {e}");
    }
}
