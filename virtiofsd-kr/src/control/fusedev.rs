//! `virtiofsd-kr mount`: the same filesystem served to this host through `/dev/fuse`, from a
//! host directory or a CephFS volume (what the Docker `gfs` plugin mounts for a container).
//!
//! Owns the FUSE session (mount, reader threads, unmount on SIGTERM/SIGINT or when someone
//! unmounts it), the confinement a host mount allows for CephFS (every capability dropped,
//! the seccomp allow-list, libcephfs connected only after both; a helper process that keeps
//! CAP_SYS_ADMIN and nothing else unmounts when the server ends, however it ends), and
//! metering of what it serves. Requests pass the same `RequestGuard` as guest requests. It
//! must not enter the guest sandbox: the mount must be visible in the host's namespace.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::Instant;

use fuse_backend_rs::abi::fuse_abi::Opcode;
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseSession, Writer};
use nix::sys::signal::{SigSet, Signal};
use seccompiler::SeccompAction;
use tracing::{debug, info, warn};
use vm_memory::ByteValued;

use crate::accounting::meter::Outcome;
use crate::accounting::{self, Accounting, AccountingError};
use crate::backend::cephfs::{self, CephOptions, CephStart, CephStartError};
use crate::backend::passthrough::{self, PassthroughError};
use crate::confine::seccomp::{self, SeccompError};
use crate::fuse::export::{take_written, ExportFs, ExportPolicy};
use crate::fuse::guard::{error_reply, inspect, is_no_reply, RequestGuard, Verdict};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("backend: {0}")]
    Backend(#[from] PassthroughError),
    #[error("cephfs: {0}")]
    Ceph(#[from] CephStartError),
    #[error("mountpoint {path:?}: {reason}")]
    Session { path: PathBuf, reason: String },
    #[error("--threads must be at least 1")]
    NoThreads,
    #[error("blocking termination signals: {0}")]
    Signals(nix::Error),
    #[error("starting FUSE thread: {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Accounting(#[from] AccountingError),
    #[error("--accounting-dir {path:?}: {source}")]
    AccountingDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("confining the server: {step}: {reason}")]
    Confine { step: &'static str, reason: String },
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
}

/// Where the files come from.
#[derive(Debug, Clone)]
pub enum MountBackend {
    /// A host directory, served with the caller's rights (no confinement: it acts on host
    /// files for whoever calls).
    HostDir {
        dir: PathBuf,
        fs: crate::backend::passthrough::PassthroughOptions,
    },
    /// A CephFS volume as its own identity.
    CephFs(CephOptions),
}

/// What to mount and how (converted from the command line by `cli`).
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub backend: MountBackend,
    pub policy: ExportPolicy,
    pub readonly: bool,
    pub threads: usize,
    /// Action on a system call outside the allow-list (CephFS only); `None`: no filter.
    pub seccomp: Option<SeccompAction>,
    /// Metering, limits, metrics endpoint and journal; `None`: not metered.
    pub accounting: Option<accounting::Config>,
}

/// Mounts the backend at the mountpoint and serves it until unmounted or signalled.
pub fn mount(opts: MountOptions) -> Result<(), MountError> {
    if opts.threads == 0 {
        return Err(MountError::NoThreads);
    }
    // Before any thread: every thread inherits the mask, one takes them with sigwait.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(MountError::Signals)?;

    // Files and sockets first, while the process may still create them.
    let prepared = match opts.accounting.clone() {
        Some(config) => {
            if let Some(dir) = &config.accounting_dir {
                std::fs::create_dir_all(dir).map_err(|source| MountError::AccountingDir {
                    path: dir.clone(),
                    source,
                })?;
            }
            Some(accounting::Prepared::prepare(config, None)?)
        }
        None => None,
    };
    match opts.backend.clone() {
        MountBackend::HostDir { dir, fs } => {
            let backend = passthrough::open(&fs, &dir, None)?;
            let session = open_session(&opts, &dir.display().to_string())?;
            let acct = prepared.map(accounting::Prepared::start).transpose()?;
            serve(opts, backend, session, signals, acct, Unmount::Here)
        }
        MountBackend::CephFs(ceph) => {
            let what = format!("cephfs:{} as client.{}", ceph.root, ceph.id);
            let start = CephStart::new(ceph)?;
            // A wrong cluster, key or root is one error line, before anything is mounted.
            start.preflight()?;
            let session = open_session(&opts, &what)?;
            // The helper is forked now, while the process has one thread.
            let unmounter = spawn_unmounter(&opts.mountpoint)?;
            drop_all_capabilities()?;
            seccomp::install_with(opts.seccomp.clone(), seccomp::Profile::CephFs)?;
            let (conf, keyring) = (
                start.files()[0].host_path.clone(),
                start.files()[1].host_path.clone(),
            );
            debug_assert_eq!(start.files()[0].name, cephfs::CONF_FILE);
            // libcephfs starts its threads here: confined, under seccomp.
            let fs = start.connect(conf, keyring)?;
            let acct = prepared.map(accounting::Prepared::start).transpose()?;
            serve(opts, fs, session, signals, acct, Unmount::Helper(unmounter))
        }
    }
}

/// Who unmounts when serving ends.
enum Unmount {
    /// This process (it kept its capabilities).
    Here,
    /// The helper holding CAP_SYS_ADMIN; closing this pipe end tells it to.
    Helper(OwnedFd),
}

fn open_session(opts: &MountOptions, what: &str) -> Result<FuseSession, MountError> {
    let session_err = |e: fuse_backend_rs::transport::Error| MountError::Session {
        path: opts.mountpoint.clone(),
        reason: e.to_string(),
    };
    let fsname = match &opts.backend {
        MountBackend::HostDir { .. } => "virtiofsd-kr".to_string(),
        MountBackend::CephFs(c) => format!("virtiofsd-kr:{}", c.root),
    };
    let mut session =
        FuseSession::new(&opts.mountpoint, &fsname, "", opts.readonly).map_err(session_err)?;
    session.mount().map_err(session_err)?;
    info!(mountpoint = %opts.mountpoint.display(), export = what, "mounted");
    Ok(session)
}

/// Forks the process that unmounts `mountpoint` once the returned pipe end closes (this
/// process exited, was killed, or dropped it). It keeps CAP_SYS_ADMIN, blocks in `read`, and
/// does nothing else.
fn spawn_unmounter(mountpoint: &std::path::Path) -> Result<OwnedFd, MountError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |step| {
        move |e: nix::Error| MountError::Confine {
            step,
            reason: e.to_string(),
        }
    };
    let target = std::ffi::CString::new(mountpoint.as_os_str().as_bytes()).map_err(|_| {
        MountError::Confine {
            step: "mountpoint",
            reason: "contains a NUL byte".to_string(),
        }
    })?;
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(err("pipe"))?;
    // SAFETY: called while the process has one thread (before libcephfs and the FUSE
    // threads start), so the child is a complete copy; it only reads, unmounts and `_exit`s.
    match unsafe { nix::unistd::fork() }.map_err(err("fork"))? {
        nix::unistd::ForkResult::Child => {
            drop(write_end);
            // Leave the server's process group, so a signal to the group (Ctrl-C) still
            // reaches the server, which then ends and lets this helper unmount.
            let _ = nix::unistd::setsid();
            let _ = nix::sys::prctl::set_name(c"vfs-unmounter");
            let mut buf = [0u8; 1];
            let fd = std::os::fd::AsRawFd::as_raw_fd(&read_end);
            // Blocks until the server's end closes (EOF or an error, never data).
            while let Err(nix::errno::Errno::EINTR) = nix::unistd::read(fd, &mut buf) {}
            // A lazy unmount: a container may still hold the mount; it goes away when unused.
            let _ = nix::mount::umount2(target.as_c_str(), nix::mount::MntFlags::MNT_DETACH);
            // SAFETY: `_exit` ends the child without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { .. } => {
            drop(read_end);
            Ok(write_end)
        }
    }
}

/// Drops every capability (effective, permitted, inheritable, ambient, bounding) and sets
/// PR_SET_NO_NEW_PRIVS: a CephFS mount acts on no host file.
fn drop_all_capabilities() -> Result<(), MountError> {
    use caps::CapSet;
    let err = |step| {
        move |e: caps::errors::CapsError| MountError::Confine {
            step,
            reason: e.to_string(),
        }
    };
    for cap in caps::all() {
        // Not all kernels know every capability caps does: skip those.
        let _ = caps::drop(None, CapSet::Bounding, cap);
    }
    caps::clear(None, CapSet::Ambient).map_err(err("ambient capabilities"))?;
    caps::clear(None, CapSet::Inheritable).map_err(err("inheritable capabilities"))?;
    caps::clear(None, CapSet::Effective).map_err(err("effective capabilities"))?;
    caps::clear(None, CapSet::Permitted).map_err(err("permitted capabilities"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| MountError::Confine {
        step: "PR_SET_NO_NEW_PRIVS",
        reason: e.to_string(),
    })?;
    info!("capabilities dropped (all), no_new_privs set");
    Ok(())
}

fn serve<F>(
    opts: MountOptions,
    fs: F,
    session: FuseSession,
    signals: SigSet,
    acct: Option<Arc<Accounting>>,
    unmount: Unmount,
) -> Result<(), MountError>
where
    F: FileSystem + Send + Sync + 'static,
    F::Inode: Copy + From<u64> + Into<u64>,
    F::Handle: Copy + From<u64> + Into<u64>,
{
    let session_err = |e: fuse_backend_rs::transport::Error| MountError::Session {
        path: opts.mountpoint.clone(),
        reason: e.to_string(),
    };
    let server = Arc::new(Server::new(ExportFs::new(fs, opts.policy)));
    let guard = RequestGuard::new(opts.readonly);
    let mut workers = Vec::new();
    for i in 0..opts.threads {
        let mut channel = session.new_channel().map_err(session_err)?;
        let server = server.clone();
        let acct = acct.clone();
        workers.push(
            thread::Builder::new()
                .name(format!("fuse-{i}"))
                .spawn(move || loop {
                    if let Some(a) = acct.as_ref().filter(|a| a.limiter.is_active()) {
                        let waited = a.limiter.wait();
                        a.meter.add_throttled(waited);
                    }
                    match channel.get_request() {
                        Ok(Some((reader, writer))) => {
                            serve_one(&server, &guard, acct.as_deref(), reader, writer)
                        }
                        Ok(None) => return,
                        Err(e) => {
                            debug!("reading /dev/fuse: {e}");
                            return;
                        }
                    }
                })
                .map_err(MountError::Spawn)?,
        );
    }

    // `None` once serving ended: whichever thread drops the last reference must not run
    // `FuseSession`'s drop, which unmounts (see the end of this function).
    let session = Arc::new(std::sync::Mutex::new(Some(session)));
    let signal_session = session.clone();
    let may_unmount = matches!(unmount, Unmount::Here);
    let spawned = thread::Builder::new()
        .name("fuse-signals".to_string())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                info!("received {sig}, unmounting");
                accounting::flush_on_exit();
                if let Ok(mut guard) = signal_session.lock() {
                    if let Some(s) = guard.as_mut() {
                        // The readers return; the main thread then closes the backend
                        // cleanly (a CephFS session ends at once instead of holding its
                        // capabilities until the MDS evicts it) before the mount goes.
                        let _ = s.wake();
                        if may_unmount {
                            let _ = s.umount();
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!("no signal thread ({e}); unmount with umount or fusermount -u");
    }
    for w in workers {
        let _ = w.join();
    }
    accounting::flush_on_exit();
    // The last reference: the backend closes here (libcephfs unmounts, flushing).
    drop(server);
    let served = session.lock().ok().and_then(|mut guard| guard.take());
    match (served, may_unmount) {
        (Some(mut s), true) => {
            let _ = s.umount();
        }
        // Not unmounted by this process: `FuseSession`'s drop would call umount2, which a
        // CephFS server (no capability, under seccomp) may not make: the filter killed it
        // with SIGSYS at every SIGTERM. Its descriptor closes as the process exits.
        (Some(s), false) => std::mem::forget(s),
        (None, _) => {}
    }
    if let Unmount::Helper(pipe) = unmount {
        // The helper unmounts (lazily) as this end closes.
        drop(pipe);
    }
    info!("unmounted");
    Ok(())
}

/// `fuse_out_header`.
const OUT_HEADER: usize = 16;

fn serve_one<F>(
    server: &Server<ExportFs<F>>,
    guard: &RequestGuard,
    acct: Option<&Accounting>,
    reader: fuse_backend_rs::transport::Reader<'_>,
    mut writer: fuse_backend_rs::transport::FuseDevWriter<'_>,
) where
    F: FileSystem + Send + Sync,
    F::Inode: Copy + From<u64> + Into<u64>,
    F::Handle: Copy + From<u64> + Into<u64>,
{
    let start = Instant::now();
    let Some((header, verdict)) = inspect(guard, &reader) else {
        warn!("short request from /dev/fuse");
        return;
    };
    let mut outcome = Outcome {
        opcode: header.opcode,
        ..Outcome::default()
    };
    take_written(); // nothing from an earlier request may count for this one
    if let Verdict::Refuse(errno) = verdict {
        let reply = error_reply(header.unique, errno);
        if writer.write_all(reply.as_slice()).is_ok() {
            let _ = writer.commit(None);
        }
        outcome.errno = errno;
    } else {
        match server.handle_message(reader, Writer::FuseDev(writer), None, None) {
            Ok(len) if header.opcode == Opcode::Read as u32 && len > OUT_HEADER => {
                outcome.read_bytes = (len - OUT_HEADER) as u64;
            }
            Ok(_) => {}
            Err(e) => debug!(opcode = header.opcode, "request failed: {e}"),
        }
        if header.opcode == Opcode::Write as u32 {
            outcome.written_bytes = take_written();
        }
    }
    if let Some(a) = acct {
        a.meter.record(&outcome, start.elapsed());
        if !is_no_reply(header.opcode) {
            a.limiter
                .charge(outcome.read_bytes.saturating_add(outcome.written_bytes));
        }
    }
}
