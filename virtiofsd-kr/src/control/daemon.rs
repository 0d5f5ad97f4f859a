//! Daemon lifecycle: from a parsed command line to a served, then closed, vhost-user
//! connection.
//!
//! Owns the order of start-up (listener, signals, sandbox, backend, confinement, seccomp),
//! the single frontend connection, and how the process ends: exit 0 when the VMM disconnects
//! or on SIGTERM/SIGINT/SIGHUP, both through one path that closes the backend (`stop`), a
//! one-line error and non-zero exit on anything that stops it from serving. It must not
//! handle requests itself (`device`) or know backend details (`passthrough`).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuse_backend_rs::api::filesystem::FileSystem;
use nix::sys::signal::{SigSet, Signal};
use tracing::{info, warn};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonLibError, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use crate::accounting::server::MetricsAddr;
use crate::accounting::{self, AccountingError};
use crate::backend::cephfs::{self, CephStart, CephStartError};
use crate::backend::local_fs::LocalDevices;
use crate::backend::passthrough::{self, PassthroughError};
use crate::confine::sandbox::{Sandbox, SandboxError};
use crate::confine::seccomp::{self, SeccompError};
use crate::control::cli::{Backend, CliError, ServeArgs, SocketSource, DEFAULT_OVERLAP_THREADS};
use crate::control::stop::{self, ServeStop};
use crate::fuse::export::{ExportFs, ExportPolicy};
use crate::fuse::guard::RequestGuard;
use crate::unix_socket;
use crate::vhost::dax::{DaxError, DaxWindow};
use crate::vhost::device::{
    DeviceError, QueueThreads, RequestCore, RequestThreads, VirtioFsDevice,
};
use crate::vhost::late_reply::{self, LateReplies};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error("--shared-dir {path:?}: {source}")]
    SharedDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--shared-dir {0:?} is not a directory")]
    SharedDirNotDir(PathBuf),
    #[error("--socket-path {path:?}: {source}")]
    Listen {
        path: PathBuf,
        source: VhostUserError,
    },
    #[error("--socket-group {group:?}: {reason}")]
    SocketGroup { group: String, reason: String },
    #[error("--fd {fd}: {reason}")]
    InheritedFd { fd: i32, reason: String },
    #[error("setting RLIMIT_NOFILE: {0}")]
    Rlimit(nix::Error),
    #[error(
        "RLIMIT_NOFILE is {limit}, below the {needed} descriptors this daemon needs with \
         --request-queues {request_queues} ({device} for the queues' eventfds and \
         threads, guest memory and one vhost-user message, {PROCESS_DESCRIPTORS} for the \
         process, {FILE_DESCRIPTORS} for the guest's files): raise --rlimit-nofile (or the \
         hard limit) or offer fewer queues with --request-queues"
    )]
    TooFewDescriptors {
        limit: u64,
        needed: u64,
        device: u64,
        request_queues: usize,
    },
    #[error("blocking termination signals: {0}")]
    Signals(nix::Error),
    #[error("duplicating the listening socket for the signal thread: {0}")]
    SignalStop(std::io::Error),
    #[error("sandbox: {0}")]
    Sandbox(#[from] SandboxError),
    #[error("backend: {0}")]
    Backend(#[from] PassthroughError),
    #[error("cephfs: {0}")]
    Ceph(#[from] CephStartError),
    #[error("seccomp: {0}")]
    Seccomp(#[from] SeccompError),
    #[error("--dax-window: {0}")]
    Dax(#[from] DaxError),
    #[error("device: {0}")]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Accounting(#[from] AccountingError),
    #[error(
        "--accounting-dir {0:?} is inside --shared-dir: the guest could rewrite its own journal"
    )]
    AccountingDirInShare(PathBuf),
    #[error("vhost-user: {0}")]
    VhostUser(DaemonLibError),
    #[error("starting the thread that answers late requests: {0}")]
    LateReplies(std::io::Error),
}

/// The libvirt capability query answer (`--print-capabilities`).
pub fn capabilities_json() -> &'static str {
    "{\n  \"type\": \"fs\",\n  \"features\": []\n}"
}

/// Runs the vhost-user daemon until the frontend disconnects or a termination signal.
pub fn serve(args: ServeArgs) -> Result<(), DaemonError> {
    args.validate()?;
    match args.backend {
        Backend::Passthrough => serve_host_dir(args),
        Backend::Cephfs => serve_cephfs(args),
    }
}

/// `--backend passthrough`: the host directory `--shared-dir`.
fn serve_host_dir(args: ServeArgs) -> Result<(), DaemonError> {
    let shared_dir = checked_shared_dir(args.shared_dir()?)?;
    let started = start(&args, Some(&shared_dir))?;
    // The mount table is read now: after the sandbox it may not exist.
    let local_devices = probe_local_devices(&shared_dir);

    let mut sandbox = Sandbox::new(args.sandbox, &shared_dir)
        .readonly(args.fs.readonly)
        .xattr(args.fs.xattr);
    sandbox.enter()?;
    // FUSE_ATTR_DAX (the guest's dax=inode) only on a writable export: a --readonly export
    // can only be mapped through read-only descriptors, which QEMU 11.1 cannot map (docs/dax.md).
    let dax_file_size = started
        .dax
        .as_ref()
        .filter(|_| !args.fs.readonly)
        .map(|_| args.dax_file_size.unwrap_or(0));
    let fs = passthrough::open(
        &args.fs.passthrough(),
        &sandbox.backend_root(),
        dax_file_size,
    )?;
    sandbox.confine()?;
    sandbox.drop_capabilities()?;
    seccomp::install(args.seccomp, seccomp::Profile::HostDir)?;
    let traits = BackendTraits {
        what: shared_dir.display().to_string(),
        local_devices,
        requests_may_wait: false,
        late: None,
        close_limit: Duration::ZERO,
    };
    run(&args, fs, started, traits)
}

/// The local filesystems under the shared directory, on which the guest may skip FLUSH
/// (`local_fs`), logged in one line. `None` (FLUSH kept everywhere) when there are none or
/// the mount table cannot be read: that costs round trips, never correctness.
fn probe_local_devices(shared_dir: &Path) -> Option<LocalDevices> {
    match LocalDevices::probe(shared_dir) {
        Ok(devices) if devices.is_empty() => {
            info!(
                "FLUSH kept on close: no filesystem known to be local (ext2/3/4, xfs, btrfs, \
                 tmpfs, zfs, f2fs, matched by device in the mount table) holds {}",
                shared_dir.display()
            );
            None
        }
        Ok(devices) => {
            let share = if devices.share_is_local() {
                ""
            } else {
                " (the shared directory itself is not on one: FLUSH kept there)"
            };
            info!(
                "FLUSH skipped (FOPEN_NOFLUSH) on {devices}{share}; kept on any other filesystem"
            );
            Some(devices)
        }
        Err(e) => {
            warn!("FLUSH kept on close for every file: {e}");
            None
        }
    }
}

/// `--backend cephfs`: a CephFS directory through libcephfs. The cluster is checked before
/// the socket exists; the serving connection is made last, once confined and under seccomp,
/// because libcephfs starts threads that would otherwise escape both.
fn serve_cephfs(args: ServeArgs) -> Result<(), DaemonError> {
    limit_malloc_arenas();
    let mut ceph = CephStart::new(args.ceph_options()?)?;
    ceph.preflight()?;
    // Calls on the request's thread, the device answering late requests for the backend.
    let late = ceph
        .op_timeout()
        .filter(|_| args.ceph_inline_calls)
        .map(|deadline| {
            let running = Arc::new(AtomicUsize::new(0));
            ceph.inline_calls(cephfs_backend::InlineCalls {
                answered_running: Arc::clone(&running),
                request_answered: late_reply::current_request_answered,
            });
            LateAfter { deadline, running }
        });
    let started = start(&args, None)?;

    let mut sandbox = Sandbox::with_files(args.sandbox, ceph.files());
    sandbox.enter()?;
    sandbox.confine()?;
    sandbox.drop_capabilities()?;
    seccomp::install(args.seccomp, seccomp::Profile::CephFs)?;
    let path = |name| {
        sandbox
            .file_path(name)
            .ok_or(DaemonError::Sandbox(SandboxError::Order(
                "sandbox lost a file",
            )))
    };
    let (conf, keyring) = (path(cephfs::CONF_FILE)?, path(cephfs::KEYRING_FILE)?);
    let traits = BackendTraits {
        what: format!("cephfs:{} as client.{}", ceph.root(), ceph.id()),
        // No FOPEN_NOFLUSH: `local_fs` describes host filesystems under a host directory.
        local_devices: None,
        // A CephFS call can wait for the cluster up to --ceph-op-timeout.
        requests_may_wait: true,
        late,
        // Closing waits up to that for the guest's open files, and as long for the unmount.
        close_limit: 2 * ceph.op_timeout().unwrap_or(CEPHFS_CLOSE_WITHOUT_OP_TIMEOUT),
    };
    let fs = ceph.connect(conf, keyring)?;
    run(&args, fs, started, traits)
}

/// What [`run`] needs to know of the backend besides its `FileSystem`.
struct BackendTraits {
    /// How the export is named in the log.
    what: String,
    /// Only for a host directory: the filesystems on which FLUSH is a no-op.
    local_devices: Option<LocalDevices>,
    /// The backend can hold a request for long (then, as with rate limits, the hiprio queue
    /// gets a thread of its own).
    requests_may_wait: bool,
    late: Option<LateAfter>,
    /// How long dropping the backend may take: after a termination signal the process ends
    /// at the latest that long after the queue threads' and the request workers' grace.
    close_limit: Duration,
}

/// Requests held by the backend past `deadline` are answered in its place; `running` counts
/// those whose call has not returned (shared with the backend).
struct LateAfter {
    deadline: Duration,
    running: Arc<AtomicUsize>,
}

/// What is set up before the sandbox, whatever the backend.
struct Started {
    listener: Listener,
    /// Ends the serving of `listener` on a termination signal.
    stop: Arc<ServeStop>,
    cleanup: SocketCleanup,
    signals: SigSet,
    dax: Option<Arc<DaxWindow>>,
    accounting: Option<accounting::Prepared>,
}

/// The signal mask, the DAX window, accounting and the listener: everything the sandbox
/// would stop the daemon from creating. `shared_dir`: the host directory a passthrough
/// export serves (the accounting directory must not be inside it).
///
/// The vhost-user socket is created last: a launcher acts as soon as it appears (connects,
/// scrapes the metrics endpoint, stops the daemon with SIGTERM), so by then termination
/// signals are already taken, the metrics endpoint is bound and the journal replayed.
/// `tests/ordering.rs` checks this with the daemon paused right after the socket appears.
fn start(args: &ServeArgs, shared_dir: Option<&Path>) -> Result<Started, DaemonError> {
    let source = args.socket_source()?;
    set_rlimit_nofile(args.rlimit_nofile)?;
    check_descriptor_limit(args.request_queues)?;
    // Block termination signals before any thread exists, so every thread inherits the mask
    // and one thread can take them with sigwait (this also works as PID 1 of a namespace).
    let signals = termination_signals();
    signals.thread_block().map_err(DaemonError::Signals)?;

    let dax = args
        .dax_window
        .map(|size| DaxWindow::new(size).map(Arc::new))
        .transpose()?;
    // Accounting creates its socket and journal now: the sandbox cannot.
    let accounting = prepare_accounting(args, shared_dir, dax.clone())?;
    let mut cleanup = SocketCleanup::none();
    if let (Some(_), Some(MetricsAddr::Unix(path))) = (&accounting, &args.accounting.metrics_addr) {
        cleanup.add(SocketCleanup::for_path(path));
    }
    // On an error `cleanup` drops, removing the metrics socket.
    let (listener, listener_cleanup) = open_listener(&source)?;
    cleanup.add(listener_cleanup);
    let stop = ServeStop::new(listener.as_fd()).map_err(DaemonError::SignalStop)?;
    crate::stall::at(crate::stall::SOCKET_CREATED);
    Ok(Started {
        listener: Listener::from(listener),
        stop: Arc::new(stop),
        cleanup,
        signals,
        dax,
        accounting,
    })
}

/// Serves `fs` on the started listener until the frontend goes away or a signal stops it,
/// then closes it.
fn run<F>(
    args: &ServeArgs,
    fs: F,
    started: Started,
    traits: BackendTraits,
) -> Result<(), DaemonError>
where
    F: FileSystem + Send + Sync + 'static,
    F::Inode: Copy + From<u64> + Into<u64>,
    F::Handle: Copy + From<u64> + Into<u64>,
{
    let BackendTraits {
        what,
        local_devices,
        requests_may_wait,
        late,
        close_limit,
    } = traits;
    let Started {
        mut listener,
        stop,
        cleanup: socket_cleanup,
        signals,
        dax,
        accounting,
    } = started;
    // Threads only after the sandbox (it needs a single-threaded process) and under seccomp.
    let acct = accounting.map(accounting::Prepared::start).transpose()?;
    // Rate limits (accounting can get them at run time) make requests wait.
    let threads = if requests_may_wait || acct.is_some() {
        QueueThreads::PerQueue
    } else {
        // More serving threads than CPUs to run them only adds wake-ups.
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        QueueThreads::Shared {
            threads: args.queue_threads.unwrap_or(cpus),
        }
    };

    let policy = ExportPolicy {
        dax: dax.is_some(),
        posix_acl: args.acl_mode()?,
        ids: args.id_maps()?,
        ..args.fs.export_policy()
    };
    let mut fs = ExportFs::new(fs, policy);
    if let Some(devices) = local_devices {
        fs = fs.with_local_devices(devices);
    }
    let dax_meter = dax.clone();
    let mut core = RequestCore::new(fs, RequestGuard::new(args.fs.readonly), dax);
    if let Some(acct) = acct {
        core = core.with_accounting(acct);
    }
    if let Some(LateAfter { deadline, running }) = late {
        let late = LateReplies::new(deadline, 1 + args.request_queues, running)
            .map_err(DaemonError::LateReplies)?;
        core = core.with_late_replies(Arc::new(late));
    }
    let request_threads = request_threads(args);
    let device = Arc::new(VirtioFsDevice::new(
        core,
        request_threads,
        args.tag.as_deref(),
        threads,
        args.request_queues,
        Duration::from_micros(args.poll_max_us),
    )?);
    let mut daemon = VhostUserDaemon::new(
        "virtiofsd-kr".to_string(),
        device.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(DaemonError::VhostUser)?;

    let cleanup = Arc::new(socket_cleanup);
    let at_exit = cleanup.clone();
    stop::spawn_signal_thread(
        signals,
        stop.clone(),
        QUEUE_THREAD_EXIT_GRACE
            + crate::vhost::request_pool::EXIT_GRACE
            + close_limit
            + EXIT_MARGIN,
        move || {
            accounting::flush_on_exit();
            at_exit.run();
        },
    );

    info!(export = what, queue_threads = ?threads, request_threads = ?request_threads, poll_max_us = args.poll_max_us, "waiting for the vhost-user frontend");
    // The reference daemon's words: Kata's runtime-rs waits for this line on stderr.
    info!("Waiting for vhost-user socket connection...");
    release_setup_memory();
    // The connection is served on this thread (no thread of its own: one idle thread less).
    let result = daemon.serve_on_this_thread(&mut listener, |socket| {
        info!("frontend connected");
        stop.connected(socket);
    });
    device.notify_exit();
    accounting::flush_on_exit();
    let per_queue = device.requests_per_queue();
    // Only the request queues the guest used: a guest of one queue leaves fifteen idle.
    for (i, totals) in device.poll_totals().enumerate() {
        if per_queue.get(i + 1).is_some_and(|&n| n > 0) {
            info!("queue {} polling: {totals}", i + 1);
        }
    }
    info!(
        "requests per queue (0: hiprio): {}",
        per_queue
            .iter()
            .enumerate()
            .map(|(q, n)| format!("{q}={n}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(totals) = device.pool_totals() {
        info!("request workers: {totals}");
    }
    if let Some(window) = &dax_meter {
        let c = window.meter().snapshot();
        info!(
            "dax totals: map_ops={} mapped_bytes={} unmap_ops={} unmapped_bytes={} refused_ops={}",
            c.map_ops, c.mapped_bytes, c.unmap_ops, c.unmapped_bytes, c.refused_ops
        );
    }
    cleanup.run();
    release_queue_threads(daemon);
    let stopped = stop.stopping();
    let result = match result {
        Ok(()) => Ok(()),
        Err(DaemonLibError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        // The signal's shutdown of the sockets ended a waiting accept (or a reply).
        Err(e) if stopped => {
            info!("serving ended by the stop: {e}");
            Ok(())
        }
        Err(e) => Err(DaemonError::VhostUser(e)),
    };
    if result.is_ok() {
        info!(
            "{}, closing the backend and exiting",
            if stopped {
                "stopped by a signal"
            } else {
                "frontend disconnected"
            }
        );
    }
    // The backend closes as the device goes, unless a thread still holds it (a queue thread
    // left inside a request above); say so, since a CephFS session then stays open.
    let core = device.core_watch();
    drop(device);
    let held = core.strong_count();
    if held > 0 {
        warn!(
            "{BACKEND_NOT_CLOSED}: {held} reference(s) to it are still held by other threads \
             (a CephFS client then keeps its MDS session until the MDS evicts it)"
        );
    }
    result
}

/// Logged when the daemon exits with its backend still held elsewhere (the guest harness
/// fails a test on it).
pub const BACKEND_NOT_CLOSED: &str = "backend not closed at exit";

/// Gives the pages of what start-up allocated and freed (the command line, the mount table,
/// the seccomp program, ...) back to the kernel before the daemon settles to wait: glibc keeps
/// freed memory below the top of the heap resident. An idle daemon's heap: 180 -> 112 KiB
/// (`docs/benchmarks.md`, "Density"). Uses `madvise` and `brk`, both allowed by seccomp.
fn release_setup_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it takes the allocator's
    // locks like any malloc call and touches no memory that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// glibc arenas for the whole process, whatever its thread count (CephFS only).
const CEPHFS_MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas, before libcephfs starts its threads. By default every thread
/// that meets a busy arena gets one of its own, up to 8 per CPU; libcephfs' messenger
/// allocates the buffers its object cacher keeps and the call threads free them, so memory
/// freed in one arena sat idle while another grew: 256 MiB written and read back left 488 MiB
/// of anonymous memory, 270 MiB with two arenas (`tests/probe.rs` `memory_after_io`). An
/// operator's own `MALLOC_ARENA_MAX` (or `glibc.malloc.arena_max` tunable) is left to glibc.
fn limit_malloc_arenas() {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() || tunables.contains("arena_max") {
        return;
    }
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes an allocator parameter; it takes the allocator's lock.
    unsafe {
        if libc::mallopt(libc::M_ARENA_MAX, CEPHFS_MALLOC_ARENAS) != 1 {
            tracing::warn!("mallopt(M_ARENA_MAX, {CEPHFS_MALLOC_ARENAS}) refused");
        }
    }
}

/// How long the queue threads get to finish their requests once the frontend is gone.
const QUEUE_THREAD_EXIT_GRACE: Duration = Duration::from_secs(5);

/// After a termination signal, time for the rest of the exit (accounting, logs) beyond the
/// queue threads' and request workers' grace and the backend's close.
const EXIT_MARGIN: Duration = Duration::from_secs(5);

/// What closing a CephFS backend is given without `--ceph-op-timeout` (whose calls are then
/// unbounded): after a termination signal, twice this, then the process ends anyway.
const CEPHFS_CLOSE_WITHOUT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Drops the vhost-user daemon, which joins its queue threads, but waits at most
/// [`QUEUE_THREAD_EXIT_GRACE`] for them: a thread stuck in a request (a host filesystem that
/// stopped answering) must not keep the process alive once the VMM has disconnected. The
/// process exits right after, which ends such a thread.
fn release_queue_threads<T: Send + 'static>(daemon: T) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("vfs-release".to_string())
        .spawn(move || {
            drop(daemon);
            let _ = done_tx.send(());
        });
    if spawned.is_err() {
        warn!("no thread to release the queue threads; exiting without joining them");
        return;
    }
    if done_rx.recv_timeout(QUEUE_THREAD_EXIT_GRACE).is_err() {
        warn!(
            "a queue thread is still inside a request {}s after the frontend left; exiting without it",
            QUEUE_THREAD_EXIT_GRACE.as_secs()
        );
    }
}

/// Where requests are served: `--thread-pool-size` if given, else the queue thread with
/// `--overlap-threads` helpers (default [`DEFAULT_OVERLAP_THREADS`]).
fn request_threads(args: &ServeArgs) -> RequestThreads {
    match (args.thread_pool_size, args.overlap_threads) {
        (0, None) => RequestThreads::Overlap(DEFAULT_OVERLAP_THREADS),
        (0, Some(0)) => RequestThreads::Inline,
        (0, Some(n)) => RequestThreads::Overlap(n),
        (n, _) => RequestThreads::Pool(n),
    }
}

/// Accounting asked for on the command line, set up before the sandbox: the metrics socket
/// is bound and the journal opened and replayed.
fn prepare_accounting(
    args: &ServeArgs,
    shared_dir: Option<&Path>,
    dax: Option<Arc<DaxWindow>>,
) -> Result<Option<accounting::Prepared>, DaemonError> {
    let a = &args.accounting;
    if !a.enabled() {
        return Ok(None);
    }
    if let Some(dir) = &a.accounting_dir {
        let dir_err = |source| {
            AccountingError::Journal(accounting::journal::JournalError::Dir {
                path: dir.clone(),
                source,
            })
        };
        // Checked before anything is created: where the directory will resolve to.
        let inside = |shared: &Path, resolved: &Path| resolved.starts_with(shared);
        let resolved = resolve_future_dir(dir).map_err(dir_err)?;
        if shared_dir.is_some_and(|shared| inside(shared, &resolved)) {
            return Err(DaemonError::AccountingDirInShare(dir.clone()));
        }
        std::fs::create_dir_all(dir).map_err(dir_err)?;
    }
    let Some(config) = a.config(&args.ceph, host_name())? else {
        return Ok(None);
    };
    let mapped = dax.map(|w| w as Arc<dyn accounting::meter::MappedTraffic>);
    Ok(Some(accounting::Prepared::prepare(config, mapped)?))
}

/// This host's name, for journal records.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

/// Where a directory that may not exist yet will be: its nearest existing ancestor resolved,
/// plus the missing components (which must not contain `..`).
fn resolve_future_dir(dir: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let mut missing = Vec::new();
    let mut existing = dir;
    loop {
        match existing.canonicalize() {
            Ok(mut resolved) => {
                resolved.extend(missing.iter().rev());
                return Ok(resolved);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match existing.components().next_back() {
                    Some(Component::Normal(name)) => missing.push(name.to_os_string()),
                    _ => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "the part that does not exist yet must not contain `..`",
                        ))
                    }
                }
                existing = match existing.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
            }
            Err(e) => return Err(e),
        }
    }
}

fn termination_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

fn checked_shared_dir(path: &Path) -> Result<PathBuf, DaemonError> {
    let canonical = path
        .canonicalize()
        .map_err(|source| DaemonError::SharedDir {
            path: path.to_path_buf(),
            source,
        })?;
    if !canonical.is_dir() {
        return Err(DaemonError::SharedDirNotDir(path.to_path_buf()));
    }
    Ok(canonical)
}

/// Descriptors of the process itself, whatever the queues: the standard streams, the
/// listening socket and its directory, the backend's root and `/proc/self/fd`, accounting's
/// journal, socket and runtime, the log.
const PROCESS_DESCRIPTORS: u64 = 32;
/// The least room left for the guest's open files and directories.
const FILE_DESCRIPTORS: u64 = 64;

/// Refuses to start under a descriptor limit that cannot carry the offered queues: the
/// frontend would otherwise fail part-way through connecting (a message's descriptors cut off
/// by the kernel), long after whoever set the limit has gone.
fn check_descriptor_limit(request_queues: usize) -> Result<(), DaemonError> {
    use nix::sys::resource::{getrlimit, Resource};
    let (limit, _) = getrlimit(Resource::RLIMIT_NOFILE).map_err(DaemonError::Rlimit)?;
    let device = crate::vhost::device::descriptors_to_serve(request_queues);
    let needed = device + PROCESS_DESCRIPTORS + FILE_DESCRIPTORS;
    if limit < needed {
        return Err(DaemonError::TooFewDescriptors {
            limit,
            needed,
            device,
            request_queues,
        });
    }
    Ok(())
}

fn set_rlimit_nofile(requested: Option<u64>) -> Result<(), DaemonError> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(DaemonError::Rlimit)?;
    match requested {
        Some(0) => Ok(()),
        Some(n) => setrlimit(Resource::RLIMIT_NOFILE, n, hard.max(n)).map_err(DaemonError::Rlimit),
        None if soft < hard => {
            setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(DaemonError::Rlimit)
        }
        None => Ok(()),
    }
}

/// Removes the sockets this daemon created (vhost-user, and a `unix:` metrics endpoint) when
/// it ends, through descriptors of their parent directories taken before the sandbox hides
/// the paths.
///
/// Also when dropped (a start-up step failed after the socket was created). Removes once: a
/// later removal could take the socket of a daemon started on the same path since. A second
/// caller (the signal thread while the main thread ends after the frontend left) waits until
/// the first has removed them, so neither exits with a socket still in place.
pub struct SocketCleanup {
    targets: Vec<(OwnedFd, CString)>,
    done: Mutex<bool>,
}

impl SocketCleanup {
    fn none() -> Self {
        SocketCleanup {
            targets: Vec::new(),
            done: Mutex::new(false),
        }
    }

    /// For the socket just created at `path` (nothing if its directory cannot be opened).
    fn for_path(path: &Path) -> Self {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        match (
            std::fs::File::open(parent),
            path.file_name()
                .and_then(|n| CString::new(n.as_bytes()).ok()),
        ) {
            (Ok(dir), Some(name)) => SocketCleanup {
                targets: vec![(dir.into(), name)],
                done: Mutex::new(false),
            },
            _ => SocketCleanup::none(),
        }
    }

    fn add(&mut self, mut other: SocketCleanup) {
        self.targets.append(&mut other.targets);
    }

    fn run(&self) {
        let mut done = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if std::mem::replace(&mut *done, true) {
            return;
        }
        for (dir, name) in &self.targets {
            // Failure (already gone) is fine: a stale socket is replaced at the next start.
            let _ = nix::unistd::unlinkat(
                Some(dir.as_raw_fd()),
                name.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

impl Drop for SocketCleanup {
    fn drop(&mut self) {
        self.run();
    }
}

fn open_listener(source: &SocketSource) -> Result<(UnixListener, SocketCleanup), DaemonError> {
    match source {
        SocketSource::Path { path, group } => {
            let listener = listen_in_place(path, group.as_deref())?;
            Ok((listener, SocketCleanup::for_path(path)))
        }
        SocketSource::Fd(fd) => Ok((inherited_listener(*fd)?, SocketCleanup::none())),
    }
}

/// Listens on a socket that appears at `path` already listening and with its final group
/// ([`unix_socket::listen_placed`]: bound under a temporary name, then renamed onto `path`,
/// replacing whatever stale file is there), so a frontend that connects the moment the path
/// exists is neither refused nor denied.
fn listen_in_place(path: &Path, group: Option<&str>) -> Result<UnixListener, DaemonError> {
    let group_err = |group: &str, reason: String| DaemonError::SocketGroup {
        group: group.to_string(),
        reason,
    };
    let gid = match group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .map_err(|e| group_err(name, e.to_string()))?
                .ok_or_else(|| group_err(name, "no such group".to_string()))?
                .gid,
        ),
        None => None,
    };
    let placement = unix_socket::Placement {
        mode: None,
        group: gid,
        existing: unix_socket::Existing::Replace,
    };
    unix_socket::listen_placed(path, &placement).map_err(|e| match (e, group) {
        (unix_socket::PlaceError::Group { source, .. }, Some(name)) => {
            group_err(name, source.to_string())
        }
        (e, _) => DaemonError::Listen {
            path: path.to_path_buf(),
            source: VhostUserError::SocketError(std::io::Error::other(e)),
        },
    })
}

/// Adopts an inherited descriptor after checking it is a listening Unix socket.
fn inherited_listener(fd: i32) -> Result<UnixListener, DaemonError> {
    use nix::sys::socket::{getsockopt, sockopt};
    use std::os::fd::BorrowedFd;
    let err = |reason: String| DaemonError::InheritedFd { fd, reason };
    let stat = nix::sys::stat::fstat(fd).map_err(|e| err(e.to_string()))?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(err("not a socket".to_string()));
    }
    // SAFETY: fstat just proved `fd` is an open descriptor; it is only borrowed for the
    // getsockopt calls below, while this function runs.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    if !getsockopt(&borrowed, sockopt::AcceptConn).map_err(|e| err(e.to_string()))? {
        return Err(err("socket is not listening".to_string()));
    }
    if getsockopt(&borrowed, sockopt::SockType).map_err(|e| err(e.to_string()))?
        != nix::sys::socket::SockType::Stream
    {
        return Err(err("not a stream socket".to_string()));
    }
    // SAFETY: the descriptor is an open listening stream socket inherited for this daemon;
    // ownership passes to the listener, and nothing else in the process uses it.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(UnixListener::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn threads_for(flags: &[&str]) -> RequestThreads {
        let args = ["virtiofsd-kr", "--fd=3", "--shared-dir=/x"];
        let cli =
            crate::control::cli::Cli::try_parse_from(args.iter().chain(flags)).expect("parses");
        request_threads(&cli.serve)
    }

    #[test]
    fn requests_are_served_where_the_flags_say() {
        assert_eq!(
            threads_for(&[]),
            RequestThreads::Overlap(DEFAULT_OVERLAP_THREADS)
        );
        assert_eq!(
            threads_for(&["--overlap-threads=2"]),
            RequestThreads::Overlap(2)
        );
        assert_eq!(
            threads_for(&["--overlap-threads=0"]),
            RequestThreads::Inline
        );
        assert_eq!(
            threads_for(&["--thread-pool-size=8"]),
            RequestThreads::Pool(8)
        );
        assert_eq!(
            threads_for(&["--thread-pool-size=8", "--overlap-threads=0"]),
            RequestThreads::Pool(8)
        );
    }
}
