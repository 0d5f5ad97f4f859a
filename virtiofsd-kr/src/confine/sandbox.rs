//! Sandbox: confines the daemon to the shared directory before it serves a guest.
//!
//! Owns the process-level isolation: namespaces, the supervising parent of `--sandbox
//! namespace`, the mounts of the sandbox, `pivot_root`/`chroot`, and which capabilities the
//! serving process keeps. It must not open the backend (the daemon does that between
//! [`Sandbox::enter`] and [`Sandbox::confine`], so the root and `/proc/self/fd` descriptors
//! stay valid inside), must not touch the vhost-user socket, and must not install seccomp
//! (`seccomp` does, after [`Sandbox::drop_capabilities`]).
//!
//! # Order the daemon follows
//!
//! 1. [`Sandbox::new`], plus [`Sandbox::readonly`] for a read-only export and
//!    [`Sandbox::xattr`] for `--xattr`.
//! 2. [`Sandbox::enter`], while the process still has one thread and SIGTERM/SIGINT/SIGHUP are
//!    blocked:
//!    * `namespace`: `unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET)` then `fork`. The
//!      parent never returns: it drops all its capabilities, forwards SIGTERM/SIGINT/SIGHUP to
//!      the child, reaps it on SIGCHLD (taken with `sigwait`, SIGCHLD being blocked before
//!      the fork so its exit cannot be missed) and exits with the child's status, or 128 +
//!      signal. It removes nothing. The child (PID 1 of the new PID namespace) asks for
//!      SIGKILL when the parent dies and checks through a pipe that the parent did not die
//!      before that request, makes every mount a recursive slave (host mounts still
//!      propagate in, nothing propagates out), mounts a `proc` of the new PID namespace on
//!      `/proc` (so `/proc/self/fd` names the child's descriptors), and bind-mounts the
//!      shared directory onto itself (pivot_root needs a mount point), remounted read-only
//!      for a read-only export (the flags the mount already has, nosuid, nodev, ..., are
//!      kept; submounts of the shared directory stay as they are).
//!    * `chroot`: checks CAP_SYS_CHROOT so a non-root user fails before anything is opened,
//!      and refuses `--xattr` (see below).
//!    * `none`: nothing.
//! 3. The daemon opens the backend at [`Sandbox::backend_root`]. For `namespace` and
//!    `chroot` that is `.`: `enter` made the shared directory the working directory, and
//!    after `confine` the working directory is `/`, the same directory. fuse-backend-rs
//!    opens its root by that path twice, once when the daemon imports it and again at every
//!    FUSE_INIT, which comes after `confine` when the host path no longer exists.
//! 4. [`Sandbox::confine`]: `namespace`: chdir into the shared directory, `pivot_root(".",
//!    ".")`, `umount2(".", MNT_DETACH)` (the old root, stacked on top, goes away), chdir
//!    `/`; `chroot`: `chroot` + chdir `/`. Both then check that the working directory is the
//!    shared directory (same device and inode).
//! 5. [`Sandbox::drop_capabilities`]: effective, permitted and inheritable become their
//!    intersection with [`KEPT_CAPABILITIES`], the bounding set loses every other capability
//!    (needs CAP_SETPCAP, dropped right after), the ambient set is cleared, and
//!    `PR_SET_NO_NEW_PRIVS` is set (seccompiler sets it too when it installs a filter; it
//!    also makes sure no exec could ever regain privileges). Capabilities are per thread, so
//!    this refuses to run when the process already has more than one thread.
//!
//! # Extended attributes
//!
//! fuse-backend-rs 0.14 makes every xattr call on a "/proc/self/fd/N" path (the `f*xattr`
//! calls do not work on its O_PATH descriptors), and that path does not exist once `/` is the
//! shared directory. With [`Sandbox::xattr`], the namespace sandbox therefore pivots into a
//! read-only tmpfs holding only `/proc/self/fd` (a bind mount of the process's own descriptor
//! directory, which the backend holds open anyway) and `/shared` (the shared directory with
//! its submounts, cloned with `open_tree` before the tmpfs covers its host path; host mounts
//! made later under the shared directory do not appear there), and works in `/shared`. The
//! guest sees the same export either way. A chroot cannot add that directory, so `chroot`
//! with xattrs refuses to start instead of answering every xattr request ENOENT.
//!
//! A chroot is weaker than the namespace sandbox: the host's mounts and PIDs stay visible
//! to a process that escapes the directory. Dropping CAP_SYS_CHROOT (not kept) closes the
//! classic chroot-in-chroot escape; the seccomp allow-list has neither `chroot` nor `mount`.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability, CapsHashSet};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{ForkResult, Pid};
use tracing::{debug, info, warn};

/// How the serving process is confined (`--sandbox`).
///
/// The variants are the flag's values (`clap::ValueEnum`), so the command line names them
/// without this module knowing the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    // New mount, PID and network namespaces; the shared directory becomes `/`.
    Namespace,
    // `chroot` into the shared directory (no namespaces: for callers that cannot unshare).
    Chroot,
    // No confinement besides seccomp.
    None,
}

/// Capabilities a passthrough server needs while serving; all others are dropped.
///
/// CHOWN/FOWNER/FSETID/SETFCAP/MKNOD/DAC_OVERRIDE act on files as the guest asks;
/// SETUID/SETGID switch each worker thread to the caller's credentials; DAC_READ_SEARCH is
/// what `open_by_handle_at` requires (`--inode-file-handles`).
pub const KEPT_CAPABILITIES: [Capability; 9] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETGID,
    Capability::CAP_SETUID,
    Capability::CAP_MKNOD,
    Capability::CAP_SETFCAP,
];

const RUN_AS_ROOT: &str = "run virtiofsd-kr as root or pass --sandbox=none";

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("--sandbox={mode}: {step} is not permitted ({source}); {RUN_AS_ROOT}")]
    NotPermitted {
        mode: &'static str,
        step: &'static str,
        source: Errno,
    },
    #[error("--sandbox={mode}: {step}: {source}")]
    Sys {
        mode: &'static str,
        step: String,
        source: Errno,
    },
    #[error("{step} needs a single-threaded process, but it has {threads} threads")]
    Threaded { step: &'static str, threads: usize },
    #[error("--sandbox={mode}: after confinement / is not the shared directory {dir:?}")]
    WrongRoot { mode: &'static str, dir: PathBuf },
    #[error("sandbox steps called out of order: {0}")]
    Order(&'static str),
    #[error("capabilities: {step}: {source}")]
    Caps {
        step: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("setting PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(Errno),
    #[error(
        "--xattr cannot be served inside --sandbox=chroot (extended attributes go through \
         /proc/self/fd, which a chroot hides); use --sandbox=namespace or --sandbox=none"
    )]
    XattrInChroot,
    #[error("--sandbox=chroot cannot hold a backend without a host directory (CephFS); use --sandbox=namespace or --sandbox=none")]
    ChrootWithFiles,
    #[error("--sandbox=namespace: the private root is not as built: {0}")]
    WrongFilesRoot(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    New,
    Entered,
    Confined,
}

/// The sandbox of one daemon process; see the module documentation for the order of calls.
pub struct Sandbox {
    mode: SandboxMode,
    shared_dir: PathBuf,
    /// `Some` for a backend that needs no host directory (CephFS): the process is confined
    /// to a private read-only root holding only these files.
    files: Option<Vec<SandboxFile>>,
    readonly: bool,
    xattr: bool,
    stage: Stage,
    /// (st_dev, st_ino) of the shared directory, taken in `enter`, checked after `confine`.
    dir_id: Option<(u64, u64)>,
}

impl Sandbox {
    /// A sandbox that will confine the process to `shared_dir` (an absolute, canonical path).
    pub fn new(mode: SandboxMode, shared_dir: &Path) -> Self {
        Sandbox {
            mode,
            shared_dir: shared_dir.to_path_buf(),
            files: None,
            readonly: false,
            xattr: false,
            stage: Stage::New,
            dir_id: None,
        }
    }

    /// A sandbox for a network backend (CephFS) that needs no host directory, only `files`
    /// (its configuration and key, read by the caller beforehand). `namespace` confines the
    /// process to a private read-only tmpfs root holding just those files, in new PID and
    /// mount namespaces but the host's network namespace (the backend talks to its cluster),
    /// and keeps no capability at all; `none` leaves the process as it is. `chroot` is
    /// refused. See [`Sandbox::file_path`] for where the files are afterwards.
    pub fn with_files(mode: SandboxMode, files: Vec<SandboxFile>) -> Self {
        Sandbox {
            files: Some(files),
            ..Sandbox::new(mode, Path::new(FILES_ROOT_MOUNT))
        }
    }

    /// Where the backend finds `name` (one of the [`Sandbox::with_files`] files) once
    /// confined: `/<name>` in the namespace sandbox, its host path otherwise.
    pub fn file_path(&self, name: &str) -> Option<PathBuf> {
        let file = self.files.as_ref()?.iter().find(|f| f.name == name)?;
        Some(match self.mode {
            SandboxMode::Namespace => Path::new("/").join(file.name),
            SandboxMode::Chroot | SandboxMode::None => file.host_path.clone(),
        })
    }

    /// For a read-only export: the namespace sandbox remounts its bind mount of the shared
    /// directory read-only, so even a compromised request path cannot write through it.
    pub fn readonly(mut self, readonly: bool) -> Self {
        self.readonly = readonly;
        self
    }

    /// For `--xattr`: fuse-backend-rs makes its xattr calls on "/proc/self/fd/N" paths, so
    /// the namespace sandbox keeps that one directory reachable (see the module docs), and
    /// the chroot sandbox, which cannot, refuses to start.
    pub fn xattr(mut self, xattr: bool) -> Self {
        self.xattr = xattr;
        self
    }

    /// Enters the sandbox's namespaces. For `namespace`, only the child returns; the
    /// supervising parent exits with the child's status.
    pub fn enter(&mut self) -> Result<(), SandboxError> {
        if self.stage != Stage::New {
            return Err(SandboxError::Order("enter() called twice"));
        }
        if self.files.is_some() {
            match self.mode {
                SandboxMode::None => {}
                SandboxMode::Chroot => return Err(SandboxError::ChrootWithFiles),
                SandboxMode::Namespace => enter_namespace(&self.shared_dir, false, false)?,
            }
            self.stage = Stage::Entered;
            return Ok(());
        }
        match self.mode {
            SandboxMode::None => {}
            SandboxMode::Chroot if self.xattr => return Err(SandboxError::XattrInChroot),
            SandboxMode::Chroot => {
                let can = caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_CHROOT)
                    .map_err(|source| SandboxError::Caps {
                        step: "reading the effective set",
                        source,
                    })?;
                if !can {
                    return Err(SandboxError::NotPermitted {
                        mode: "chroot",
                        step: "chroot (needs CAP_SYS_CHROOT)",
                        source: Errno::EPERM,
                    });
                }
                self.dir_id = Some(dir_id(&self.shared_dir, "chroot")?);
            }
            SandboxMode::Namespace => {
                self.dir_id = Some(dir_id(&self.shared_dir, "namespace")?);
                enter_namespace(&self.shared_dir, self.readonly, true)?;
            }
        }
        if self.mode != SandboxMode::None {
            // `backend_root()` is "." from here on, before and after confinement alike.
            nix::unistd::chdir(&self.shared_dir).map_err(|source| SandboxError::Sys {
                mode: mode_name(self.mode),
                step: format!("chdir {:?}", self.shared_dir),
                source,
            })?;
        }
        self.stage = Stage::Entered;
        Ok(())
    }

    /// The path the backend opens as its root, valid from `enter` on, before and after
    /// `confine`: `.` when the process will be confined (the working directory is the shared
    /// directory throughout), the shared directory itself for `--sandbox=none`.
    pub fn backend_root(&self) -> PathBuf {
        match self.mode {
            SandboxMode::None => self.shared_dir.clone(),
            SandboxMode::Namespace | SandboxMode::Chroot => PathBuf::from("."),
        }
    }

    /// The shared directory as the host names it (for messages).
    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    /// Makes the shared directory the process's `/`.
    pub fn confine(&mut self) -> Result<(), SandboxError> {
        if self.stage != Stage::Entered {
            return Err(SandboxError::Order("confine() before enter(), or twice"));
        }
        // Capabilities are dropped right after this; a thread started by the backend would
        // keep them, so refuse now, while /proc is still visible to count threads.
        check_single_threaded("confining the process")?;
        let mode = mode_name(self.mode);
        let sys = |step: &str| {
            let step = step.to_string();
            move |source| SandboxError::Sys { mode, step, source }
        };
        match (&self.files, self.mode) {
            (Some(_), SandboxMode::None) => {}
            (Some(files), _) => {
                build_files_root(files)?;
                nix::unistd::chdir(FILES_ROOT_MOUNT).map_err(sys("chdir to the files root"))?;
                nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
                nix::mount::umount2(".", MntFlags::MNT_DETACH)
                    .map_err(sys("detaching the old root"))?;
                nix::unistd::chdir("/").map_err(sys("chdir /"))?;
                check_files_root(files)?;
                info!(
                    mode,
                    "confined to a private root holding the backend's files"
                );
            }
            (None, _) => self.confine_to_shared_dir()?,
        }
        self.stage = Stage::Confined;
        Ok(())
    }

    fn confine_to_shared_dir(&mut self) -> Result<(), SandboxError> {
        let mode = mode_name(self.mode);
        let sys = |step: &str| {
            let step = step.to_string();
            move |source| SandboxError::Sys { mode, step, source }
        };
        match self.mode {
            SandboxMode::None => {}
            SandboxMode::Namespace if self.xattr => {
                build_proc_fd_root(&self.shared_dir)?;
                // The skeleton now hides the shared directory's host path and is the new root.
                nix::unistd::chdir(&self.shared_dir)
                    .map_err(sys(&format!("chdir {:?}", self.shared_dir)))?;
                nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
                nix::mount::umount2(".", MntFlags::MNT_DETACH)
                    .map_err(sys("detaching the old root"))?;
                nix::unistd::chdir(EXPORT_IN_SKELETON).map_err(sys("chdir /shared"))?;
            }
            SandboxMode::Namespace => {
                nix::unistd::chdir(&self.shared_dir)
                    .map_err(sys(&format!("chdir {:?}", self.shared_dir)))?;
                nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
                nix::mount::umount2(".", MntFlags::MNT_DETACH)
                    .map_err(sys("detaching the old root"))?;
                nix::unistd::chdir("/").map_err(sys("chdir /"))?;
            }
            SandboxMode::Chroot => {
                nix::unistd::chroot(&self.shared_dir).map_err(|source| match source {
                    Errno::EPERM => SandboxError::NotPermitted {
                        mode,
                        step: "chroot",
                        source,
                    },
                    source => SandboxError::Sys {
                        mode,
                        step: format!("chroot {:?}", self.shared_dir),
                        source,
                    },
                })?;
                nix::unistd::chdir("/").map_err(sys("chdir /"))?;
            }
        }
        if let Some(expected) = self.dir_id {
            // The working directory is what the backend calls "."; it is also `/` except in
            // the skeleton root of `.xattr(true)`.
            let root = if self.mode == SandboxMode::Namespace && self.xattr {
                Path::new(".")
            } else {
                Path::new("/")
            };
            if dir_id(root, mode)? != expected {
                return Err(SandboxError::WrongRoot {
                    mode,
                    dir: self.shared_dir.clone(),
                });
            }
            info!(mode, "confined to the shared directory");
        }
        Ok(())
    }

    /// Keeps only [`KEPT_CAPABILITIES`] and sets `PR_SET_NO_NEW_PRIVS`.
    pub fn drop_capabilities(&self) -> Result<(), SandboxError> {
        if self.stage == Stage::New {
            return Err(SandboxError::Order("drop_capabilities() before enter()"));
        }
        // Once confined, "/proc" would name a directory of the shared directory, which the
        // guest controls; confine() counted the threads just before.
        if self.stage != Stage::Confined {
            check_single_threaded("dropping capabilities")?;
        }
        // A backend without a host directory acts on no host file: it keeps nothing.
        let keep = match self.files {
            Some(_) => CapsHashSet::new(),
            None => kept(),
        };
        drop_capabilities(&keep)?;
        nix::sys::prctl::set_no_new_privs().map_err(SandboxError::NoNewPrivs)
    }
}

fn mode_name(mode: SandboxMode) -> &'static str {
    match mode {
        SandboxMode::Namespace => "namespace",
        SandboxMode::Chroot => "chroot",
        SandboxMode::None => "none",
    }
}

fn dir_id(path: &Path, mode: &'static str) -> Result<(u64, u64), SandboxError> {
    let meta = std::fs::metadata(path).map_err(|e| SandboxError::Sys {
        mode,
        step: format!("stat {path:?}"),
        source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    Ok((meta.dev(), meta.ino()))
}

/// Threads of this process, when `/proc` is visible.
fn thread_count() -> Option<usize> {
    std::fs::read_dir("/proc/self/task")
        .ok()
        .map(|entries| entries.count())
}

fn check_single_threaded(step: &'static str) -> Result<(), SandboxError> {
    match thread_count() {
        Some(threads) if threads > 1 => Err(SandboxError::Threaded { step, threads }),
        _ => Ok(()),
    }
}

/// Termination signals the parent forwards, plus SIGCHLD it waits for.
fn supervisor_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(sig);
    }
    set
}

/// `shared_dir`: bind-mounted onto itself in the child unless `files_root` (the CephFS
/// sandbox, whose root is built in `confine`); `private_net`: a new network namespace.
fn enter_namespace(
    shared_dir: &Path,
    readonly: bool,
    private_net: bool,
) -> Result<(), SandboxError> {
    const MODE: &str = "namespace";
    let sys = |step: &str| {
        let step = step.to_string();
        move |source| SandboxError::Sys {
            mode: MODE,
            step,
            source,
        }
    };
    // fork() copies only the calling thread: any other thread's locks would stay held.
    check_single_threaded("--sandbox=namespace (fork)")?;
    let mut flags = CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS;
    if private_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    nix::sched::unshare(flags).map_err(|source| match source {
        Errno::EPERM => SandboxError::NotPermitted {
            mode: MODE,
            step: "creating PID, mount and network namespaces (needs CAP_SYS_ADMIN)",
            source,
        },
        source => SandboxError::Sys {
            mode: MODE,
            step: "unshare(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET)".to_string(),
            source,
        },
    })?;

    // Blocked before the fork, so the child's exit and a SIGTERM arriving at any moment
    // stay pending until the parent's sigwait takes them.
    let old_mask = supervisor_signals()
        .thread_swap_mask(SigmaskHow::SIG_BLOCK)
        .map_err(sys("blocking SIGCHLD"))?;
    // The parent writes one byte once it holds no privilege, then keeps the write end open
    // for its life: the child goes on only after that byte (so no moment exists where the
    // child serves while the supervisor is still privileged), and reads end-of-file if the
    // parent is gone, which closes the window before PR_SET_PDEATHSIG is in place.
    let (alive_r, alive_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"))?;

    // SAFETY: the process has a single thread (checked above and guaranteed by the daemon's
    // start-up order), so the child is a complete copy and may use any function; the parent
    // branch does not return.
    match unsafe { nix::unistd::fork() }.map_err(sys("fork"))? {
        ForkResult::Parent { child } => {
            drop(alive_r);
            supervise(child, alive_w)
        }
        ForkResult::Child => {
            drop(alive_w);
            old_mask
                .thread_set_mask()
                .map_err(sys("restoring the signal mask"))?;
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(sys("prctl(PR_SET_PDEATHSIG)"))?;
            if !supervisor_ready(&alive_r) {
                // Nobody is left to report to.
                crate::process::exit_now(1);
            }
            drop(alive_r);
            if private_net {
                setup_namespace_mounts(shared_dir, readonly)
            } else {
                make_mounts_private_slaves()
            }
        }
    }
}

/// Waits for the supervisor's byte on the liveness pipe: `true` once it has dropped its
/// privileges, `false` if it is gone (end-of-file) or the pipe fails.
fn supervisor_ready(alive_r: &OwnedFd) -> bool {
    let mut byte = [0u8; 1];
    loop {
        match nix::unistd::read(alive_r.as_raw_fd(), &mut byte) {
            Ok(1) => return true,
            Err(Errno::EINTR) => continue,
            Ok(_) | Err(_) => return false,
        }
    }
}

fn setup_namespace_mounts(shared_dir: &Path, readonly: bool) -> Result<(), SandboxError> {
    use nix::mount::mount;
    const MODE: &str = "namespace";
    const NONE: Option<&str> = None;
    let sys = |step: String| {
        move |source| SandboxError::Sys {
            mode: MODE,
            step,
            source,
        }
    };
    make_mounts_private_slaves()?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC | MsFlags::MS_RELATIME,
        NONE,
    )
    .map_err(sys("mounting proc on /proc".to_string()))?;
    mount(
        Some(shared_dir),
        shared_dir,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        NONE,
    )
    .map_err(sys(format!("bind-mounting {shared_dir:?} onto itself")))?;
    if readonly {
        // A bind remount sets the per-mount flags to exactly the ones given: keep those the
        // mount already has (a non-root mount namespace would refuse to clear locked ones).
        let current = nix::sys::statvfs::statvfs(shared_dir)
            .map_err(sys(format!("statvfs {shared_dir:?}")))?
            .flags();
        let flags = MsFlags::MS_REMOUNT
            | MsFlags::MS_BIND
            | MsFlags::MS_RDONLY
            | remount_flags(current.bits() as u64);
        mount(NONE, shared_dir, NONE, flags, NONE)
            .map_err(sys(format!("remounting {shared_dir:?} read-only")))?;
    }
    debug!(shared_dir = %shared_dir.display(), readonly, "namespace sandbox mounts ready");
    Ok(())
}

/// Host mounts still propagate in, nothing propagates out.
fn make_mounts_private_slaves() -> Result<(), SandboxError> {
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|source| SandboxError::Sys {
        mode: "namespace",
        step: "making / a recursive slave mount".to_string(),
        source,
    })
}

/// A file the backend reads after confinement (CephFS: its ceph.conf and keyring).
#[derive(Clone)]
pub struct SandboxFile {
    /// Its name in the private root: one normal path component.
    pub name: &'static str,
    /// Where it is on the host (used as it is without a namespace sandbox).
    pub host_path: PathBuf,
    /// Its contents, read before the sandbox was entered.
    pub contents: Vec<u8>,
}

impl std::fmt::Debug for SandboxFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a key.
        f.debug_struct("SandboxFile")
            .field("name", &self.name)
            .field("host_path", &self.host_path)
            .field("len", &self.contents.len())
            .finish()
    }
}

/// Where the private root of [`Sandbox::with_files`] is built, in the sandbox's own mount
/// namespace, before it becomes `/` (any directory every host has; nothing of the host's is
/// changed, the mount exists only in the namespace).
const FILES_ROOT_MOUNT: &str = "/tmp";

/// Mounts a small tmpfs on [`FILES_ROOT_MOUNT`], writes `files` into it (mode 0400), and
/// makes it read-only.
fn build_files_root(files: &[SandboxFile]) -> Result<(), SandboxError> {
    use nix::mount::mount;
    const MODE: &str = "namespace";
    const NONE: Option<&str> = None;
    let sys = |step: String| {
        move |source| SandboxError::Sys {
            mode: MODE,
            step,
            source,
        }
    };
    let io = |step: String| {
        move |e: std::io::Error| SandboxError::Sys {
            mode: MODE,
            step,
            source: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    };
    let bytes: usize = files.iter().map(|f| f.contents.len()).sum();
    let size = format!(
        "size={},nr_inodes={},mode=0755",
        bytes.div_ceil(4096) * 4096 + 4096 * (files.len() + 1),
        files.len() + 4
    );
    mount(
        Some("tmpfs"),
        FILES_ROOT_MOUNT,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(size.as_str()),
    )
    .map_err(sys(format!(
        "mounting the private root (tmpfs) on {FILES_ROOT_MOUNT}"
    )))?;
    for file in files {
        if file.name.is_empty() || file.name.contains('/') || file.name.starts_with('.') {
            return Err(SandboxError::Order(
                "a sandbox file name must be one plain component",
            ));
        }
        let path = Path::new(FILES_ROOT_MOUNT).join(file.name);
        use std::os::unix::fs::OpenOptionsExt;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .open(&path)
            .map_err(io(format!("creating {path:?} in the private root")))?;
        std::io::Write::write_all(&mut out, &file.contents)
            .map_err(io(format!("writing {path:?} in the private root")))?;
    }
    mount(
        NONE,
        FILES_ROOT_MOUNT,
        NONE,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(sys("making the private root read-only".to_string()))?;
    Ok(())
}

/// After the pivot: `/` is a read-only tmpfs holding exactly `files`.
fn check_files_root(files: &[SandboxFile]) -> Result<(), SandboxError> {
    const MODE: &str = "namespace";
    let wrong = |why: String| SandboxError::WrongFilesRoot(why);
    let fs = nix::sys::statfs::statfs("/").map_err(|source| SandboxError::Sys {
        mode: MODE,
        step: "statfs /".to_string(),
        source,
    })?;
    if fs.filesystem_type() != nix::sys::statfs::TMPFS_MAGIC {
        return Err(wrong("/ is not the private tmpfs".to_string()));
    }
    let mut names: Vec<String> = std::fs::read_dir("/")
        .map_err(|e| wrong(format!("listing /: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    let mut want: Vec<String> = files.iter().map(|f| f.name.to_string()).collect();
    want.sort();
    if names != want {
        return Err(wrong(format!("/ holds {names:?}, expected {want:?}")));
    }
    Ok(())
}

/// Where the shared directory sits inside the skeleton root of `.xattr(true)`.
const EXPORT_IN_SKELETON: &str = "/shared";

/// For `--xattr` in the namespace sandbox: a read-only tmpfs that becomes `/`, holding only
/// `/proc/self/fd` (a bind mount of this process's own descriptor directory, which the backend
/// already holds open) and `/shared` (the shared directory). It is mounted over the shared
/// directory's host path in this private mount namespace, so the shared directory is first
/// cloned as a detached mount tree (`open_tree`), then attached inside the tmpfs
/// (`move_mount`): a recursive bind made after the tmpfs would bring the tmpfs along.
fn build_proc_fd_root(shared_dir: &Path) -> Result<(), SandboxError> {
    use nix::mount::mount;
    use nix::sys::stat::Mode;
    const MODE: &str = "namespace";
    const NONE: Option<&str> = None;
    let sys = |step: String| {
        move |source| SandboxError::Sys {
            mode: MODE,
            step,
            source,
        }
    };
    // "." is the shared directory: the working directory since `enter`.
    let tree =
        open_tree_clone(c".").map_err(sys("cloning the shared directory's mounts".to_string()))?;
    mount(
        Some("tmpfs"),
        shared_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=16k,nr_inodes=16,mode=0755"),
    )
    .map_err(sys("mounting the skeleton root (tmpfs)".to_string()))?;
    let fd_dir = shared_dir.join("proc/self/fd");
    let export = shared_dir.join(EXPORT_IN_SKELETON.trim_start_matches('/'));
    for dir in [
        shared_dir.join("proc"),
        shared_dir.join("proc/self"),
        fd_dir.clone(),
        export.clone(),
    ] {
        nix::unistd::mkdir(&dir, Mode::from_bits_truncate(0o755))
            .map_err(sys(format!("creating {dir:?} in the skeleton root")))?;
    }
    move_mount_to(&tree, &export).map_err(sys(
        "attaching the shared directory in the skeleton root".to_string(),
    ))?;
    drop(tree);
    mount(Some("/proc/self/fd"), &fd_dir, NONE, MsFlags::MS_BIND, NONE).map_err(sys(
        "binding /proc/self/fd into the skeleton root".to_string(),
    ))?;
    mount(
        NONE,
        shared_dir,
        NONE,
        MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        NONE,
    )
    .map_err(sys("making the skeleton root read-only".to_string()))?;
    Ok(())
}

/// `open_tree(AT_FDCWD, path, OPEN_TREE_CLONE | AT_RECURSIVE)`: a detached copy of the mount
/// tree at `path` (Linux 5.2).
fn open_tree_clone(path: &std::ffi::CStr) -> Result<OwnedFd, Errno> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: `path` is a valid NUL-terminated string; the call takes no other pointers.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as libc::c_int) })
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`: attaches a detached
/// tree from `open_tree` at `target`.
fn move_mount_to(tree: &OwnedFd, target: &Path) -> Result<(), Errno> {
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let target =
        std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)?;
    // SAFETY: both paths are valid NUL-terminated strings and `tree` is an open descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// The per-mount flags of a `statvfs` `f_flag` value, as `mount(2)` flags.
fn remount_flags(st_flags: u64) -> MsFlags {
    const MAP: [(u64, MsFlags); 6] = [
        (libc::ST_NOSUID, MsFlags::MS_NOSUID),
        (libc::ST_NODEV, MsFlags::MS_NODEV),
        (libc::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (libc::ST_NOATIME, MsFlags::MS_NOATIME),
        (libc::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (libc::ST_RELATIME, MsFlags::MS_RELATIME),
    ];
    MAP.iter()
        .filter(|(st, _)| st_flags & st != 0)
        .fold(MsFlags::empty(), |acc, (_, ms)| acc | *ms)
}

/// The supervising parent of `--sandbox=namespace`: never returns.
fn supervise(child: Pid, alive_w: OwnedFd) -> ! {
    crate::stall::at(crate::stall::SUPERVISOR_FORKED);
    // The parent only forwards signals and waits; it needs no privilege at all, and drops it
    // before the child may go on (see `supervisor_ready`).
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        if let Err(e) = caps::clear(None, set) {
            warn!("supervisor: clearing capabilities: {e}");
        }
    }
    if let Err(e) = nix::unistd::write(&alive_w, &[1]) {
        // The child reads end-of-file once this process ends, and exits.
        warn!("supervisor: releasing the child: {e}");
    }
    info!(pid = child.as_raw(), "sandboxed daemon started");
    let signals = supervisor_signals();
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(child) {
                    crate::process::exit_now(code);
                }
            }
            Ok(sig) => {
                debug!("supervisor: forwarding {sig}");
                if let Err(e) = nix::sys::signal::kill(child, sig) {
                    warn!("supervisor: forwarding {sig}: {e}");
                }
            }
            Err(e) => {
                // sigwait only fails on an invalid set; do not spin.
                warn!("supervisor: sigwait: {e}");
                if let Some(code) = reap_blocking(child) {
                    crate::process::exit_now(code);
                }
            }
        }
    }
}

/// The exit code for the child, if it has ended.
fn reap(child: Pid) -> Option<i32> {
    loop {
        match nix::sys::wait::waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::EINTR) => continue,
            Err(e) => {
                warn!("supervisor: waitpid: {e}");
                return Some(1);
            }
            Ok(status) => return exit_code(status),
        }
    }
}

fn reap_blocking(child: Pid) -> Option<i32> {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            Err(_) => return Some(1),
            Ok(status) => match exit_code(status) {
                Some(code) => return Some(code),
                None => continue,
            },
        }
    }
}

/// The parent's exit code for a child status: its own code, or 128 + the killing signal.
fn exit_code(status: WaitStatus) -> Option<i32> {
    match status {
        WaitStatus::Exited(_, code) => Some(code),
        WaitStatus::Signaled(_, sig, _) => Some(128 + sig as i32),
        _ => None,
    }
}

/// Effective, permitted and inheritable sets after dropping: each current set narrowed to
/// `keep` (a set can only shrink: nothing is raised that the process does not have).
fn narrowed(current: &CapsHashSet, keep: &CapsHashSet) -> CapsHashSet {
    current.intersection(keep).copied().collect()
}

/// Bounding-set entries to drop: everything not kept.
fn bounding_drops(bounding: &CapsHashSet, keep: &CapsHashSet) -> Vec<Capability> {
    let mut drops: Vec<Capability> = bounding.difference(keep).copied().collect();
    drops.sort_by_key(|c| c.index());
    drops
}

fn kept() -> CapsHashSet {
    KEPT_CAPABILITIES.iter().copied().collect::<HashSet<_>>()
}

fn drop_capabilities(keep: &CapsHashSet) -> Result<(), SandboxError> {
    let caps_err = |step| move |source| SandboxError::Caps { step, source };
    let read = |set, step| caps::read(None, set).map_err(caps_err(step));
    let effective = read(CapSet::Effective, "reading the effective set")?;
    let permitted = read(CapSet::Permitted, "reading the permitted set")?;
    let inheritable = read(CapSet::Inheritable, "reading the inheritable set")?;

    // Bounding first: PR_CAPBSET_DROP needs CAP_SETPCAP in the effective set, which goes next.
    if effective.contains(&Capability::CAP_SETPCAP) {
        let bounding = read(CapSet::Bounding, "reading the bounding set")?;
        for cap in bounding_drops(&bounding, keep) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("dropping from the bounding set"))?;
        }
    } else if !permitted.is_empty() {
        warn!("no CAP_SETPCAP: the capability bounding set is left as it is");
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clearing the ambient set"))?;
    // Effective before permitted (effective must stay a subset of permitted).
    caps::set(None, CapSet::Effective, &narrowed(&effective, keep))
        .map_err(caps_err("narrowing the effective set"))?;
    caps::set(None, CapSet::Permitted, &narrowed(&permitted, keep))
        .map_err(caps_err("narrowing the permitted set"))?;
    caps::set(None, CapSet::Inheritable, &narrowed(&inheritable, keep))
        .map_err(caps_err("narrowing the inheritable set"))?;
    if permitted.is_empty() {
        debug!("not privileged: no capabilities to drop");
    } else {
        let mut now: Vec<String> = narrowed(&permitted, keep)
            .iter()
            .map(|c| c.to_string())
            .collect();
        now.sort();
        info!(kept = %now.join(","), "capabilities dropped");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(caps: &[Capability]) -> CapsHashSet {
        caps.iter().copied().collect()
    }

    #[test]
    fn root_keeps_exactly_the_passthrough_capabilities() {
        let all = caps::all();
        let after = narrowed(&all, &kept());
        assert_eq!(after, kept());
        assert!(!after.contains(&Capability::CAP_SYS_ADMIN));
        assert!(!after.contains(&Capability::CAP_SYS_CHROOT));
        assert!(!after.contains(&Capability::CAP_SETPCAP));
        assert_eq!(after.len(), KEPT_CAPABILITIES.len());
    }

    #[test]
    fn narrowing_never_raises_a_capability() {
        let current = set(&[Capability::CAP_CHOWN, Capability::CAP_NET_ADMIN]);
        assert_eq!(narrowed(&current, &kept()), set(&[Capability::CAP_CHOWN]));
        assert!(narrowed(&CapsHashSet::new(), &kept()).is_empty());
    }

    #[test]
    fn bounding_drops_everything_else_in_index_order() {
        let drops = bounding_drops(&caps::all(), &kept());
        assert_eq!(drops.len(), caps::all().len() - KEPT_CAPABILITIES.len());
        assert!(drops.contains(&Capability::CAP_SYS_ADMIN));
        assert!(drops.contains(&Capability::CAP_SETPCAP));
        assert!(!drops.iter().any(|c| kept().contains(c)));
        assert!(drops.windows(2).all(|w| w[0].index() < w[1].index()));
    }

    #[test]
    fn kept_list_has_no_duplicates() {
        assert_eq!(kept().len(), KEPT_CAPABILITIES.len());
    }

    #[test]
    fn exit_codes_follow_the_child() {
        let pid = Pid::from_raw(42);
        assert_eq!(exit_code(WaitStatus::Exited(pid, 0)), Some(0));
        assert_eq!(exit_code(WaitStatus::Exited(pid, 3)), Some(3));
        assert_eq!(
            exit_code(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(exit_code(WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
    }

    #[test]
    fn remount_keeps_the_existing_mount_flags() {
        let flags = remount_flags(libc::ST_NOSUID | libc::ST_NODEV | libc::ST_RDONLY);
        assert_eq!(flags, MsFlags::MS_NOSUID | MsFlags::MS_NODEV);
        assert_eq!(remount_flags(0), MsFlags::empty());
        assert!(remount_flags(libc::ST_RELATIME).contains(MsFlags::MS_RELATIME));
    }

    #[test]
    fn steps_out_of_order_are_refused() {
        let dir = std::env::temp_dir();
        let mut sandbox = Sandbox::new(SandboxMode::None, &dir);
        assert!(matches!(sandbox.confine(), Err(SandboxError::Order(_))));
        assert!(matches!(
            sandbox.drop_capabilities(),
            Err(SandboxError::Order(_))
        ));
        sandbox.enter().unwrap();
        assert!(matches!(sandbox.enter(), Err(SandboxError::Order(_))));
        assert_eq!(sandbox.backend_root(), dir);
        for mode in [SandboxMode::Namespace, SandboxMode::Chroot] {
            assert_eq!(Sandbox::new(mode, &dir).backend_root(), Path::new("."));
        }
    }

    #[test]
    fn chroot_refuses_xattr_before_touching_anything() {
        let dir = std::env::temp_dir();
        let mut sandbox = Sandbox::new(SandboxMode::Chroot, &dir).xattr(true);
        assert!(matches!(sandbox.enter(), Err(SandboxError::XattrInChroot)));
        assert_eq!(sandbox.stage, Stage::New);
        let msg = SandboxError::XattrInChroot.to_string();
        assert!(msg.contains("--sandbox=namespace"), "{msg}");
    }

    #[test]
    fn not_permitted_tells_how_to_run() {
        let e = SandboxError::NotPermitted {
            mode: "namespace",
            step: "unshare",
            source: Errno::EPERM,
        };
        let msg = e.to_string();
        assert!(msg.contains("run virtiofsd-kr as root"), "{msg}");
        assert!(msg.contains("--sandbox=none"), "{msg}");
    }
}
