//! Seccomp: the system-call allow-list the daemon runs under once it serves a guest.
//!
//! Owns the list of system calls the serving process may make and the filter that enforces
//! it. [`install`] applies the filter to every thread of the process (TSYNC), after the sandbox
//! is in place and before the first guest request. It must not decide anything else about the
//! process (namespaces, capabilities: `sandbox`), and must not be installed before the
//! backend is open (opening the shared directory and `/proc/self/fd` is not on the list of
//! what serving needs, and `mount`/`pivot_root` never are).
//!
//! # How the list was made
//!
//! Each entry is a call the serving process was seen making, or one a named dependency
//! makes on a path the tests cannot easily reach. The tests in `tests/sandbox.rs` run the
//! real daemon under `strace -f` with `--seccomp=log` while the vhost-user test frontend sends
//! every request kind the passthrough turns into system calls (and a Linux guest under QEMU
//! did the same through `vm-tests`), and fail on any call after the filter that the list
//! lacks (`cargo test -p virtiofsd-kr --test sandbox -- --ignored allow_list`).
//!
//! * File system requests (fuse-backend-rs 0.14 passthrough): the `*at` calls relative to
//!   inode descriptors and `/proc/self/fd` (`openat`, `newfstatat`, `statx`, `mkdirat`,
//!   `mknodat`, `symlinkat`, `linkat`, `unlinkat`, `renameat2`, `readlinkat`, `fchmodat`,
//!   `fchownat`, `utimensat`), `getdents64`, data I/O (`preadv`/`pwritev` straight into guest
//!   memory; `pread64`/`pwrite64`/`readv`/`writev` are the same operations in other shapes),
//!   `lseek` (SEEK_DATA/HOLE), `fallocate`, `ftruncate`, `fsync`/`fdatasync`, `fstatfs`,
//!   `dup`+`close` (FLUSH), `fcntl`, `umask` (FUSE_INIT), file handles
//!   (`name_to_handle_at`/`open_by_handle_at`, `--inode-file-handles`) and xattrs, which
//!   fuse-backend-rs makes in path form only (`getxattr`/`setxattr`/`listxattr`/
//!   `removexattr` on `/proc/self/fd/N`). It has no COPY_FILE_RANGE, locks or ioctls.
//! * Per-request credentials: a worker thread switches to the caller's ids with raw
//!   `setresuid`/`setresgid` (per thread; glibc's wrappers would signal every thread). The
//!   `setfs*id` calls and `setgroups` are never made. `capget`/`capset`: fuse-backend-rs
//!   reads its capabilities and drops/raises CAP_FSETID around a write that must clear
//!   set-id bits (HANDLE_KILLPRIV_V2); a thread cannot raise beyond its permitted set.
//! * vhost-user (vhost-user-backend): `epoll_create1`/`epoll_ctl`/`epoll_wait` (x86_64) or
//!   `epoll_pwait`, `eventfd2`, `accept4` (the frontend connects after the filter is in),
//!   `recvmsg`/`sendmsg` with SCM_RIGHTS (memory regions, vring eventfds), `mmap`/`munmap`
//!   of guest memory; `unlink` (x86_64) when the listener removes its socket path.
//! * Accounting (`--metrics-addr`, `--accounting-dir`): the metrics/admin endpoint is a
//!   listening socket bound before the sandbox, served by a tokio thread with `accept4`,
//!   `epoll_*`, `eventfd2` (above) and `recvfrom`/`sendto`/`shutdown` on accepted streams
//!   (no `socket`/`connect` exists, so `sendto` reaches no new peer); the journal writes and
//!   compacts through a directory descriptor (`openat`, `write`, `fdatasync`, `renameat2`,
//!   `fsync`, above).
//! * Rust std and glibc: threads (`clone` for threads only, see below, `futex`, `rseq`,
//!   `set_robust_list`, `sigaltstack`, `rt_sigprocmask`, `rt_sigaction`,
//!   `sched_getaffinity`, `gettid`), the allocator (`brk`, `mmap`, `mprotect`, `madvise`,
//!   `mremap`), `getrandom` (hash map keys of new threads), clocks and sleeps (normally the
//!   vDSO), the signal thread (`rt_sigtimedwait`), `exit`/`exit_group`, `restart_syscall`
//!   (a blocking call resumed after SIGSTOP/SIGCONT), `rt_sigreturn` (any signal handler),
//!   `getpid`/`tgkill` (so an abort still aborts).
//! * With argument rules: `ioctl` only for FIONBIO, FIOCLEX, FIONCLEX (std's socket
//!   switches) and TCGETS (`isatty`); `prctl` only for PR_SET_NAME (std names its threads)
//!   and the reads the `caps` crate makes (PR_GET_NAME, PR_CAPBSET_READ, PR_GET_SECUREBITS,
//!   PR_GET_KEEPCAPS); `clone` only for threads.
//!
//! Not on the list, on purpose: `execve*`, `fork`/`vfork`, `ptrace`, `mount`/`umount2`,
//! `pivot_root`, `chroot`, `unshare`/`setns`, `seccomp`, `bpf`, `perf_event_open`,
//! `keyctl`/`add_key`, `socket`/`socketpair`/`connect`/`bind`, `kexec_*`, `init_module`,
//! `process_vm_*`, `userfaultfd`, `io_uring_*`, `memfd_create`, `setgroups`.
//!
//! `clone` is allowed only with CLONE_THREAD and without any CLONE_NEW* flag, so a
//! compromised thread can start threads but not processes or namespaces. `clone3` passes its
//! flags in memory a filter cannot read, so a second filter, installed first, answers it
//! ENOSYS (glibc then falls back to `clone`); the kernel takes the strictest answer of all
//! filters, and `clone3` is on the allow-list only so that answer is ENOSYS, not the
//! mismatch action.
//!
//! The mismatch action follows `--seccomp`: `kill` kills the whole process
//! (SECCOMP_RET_KILL_PROCESS), `log` allows and logs (audit, `dmesg`), `trap` sends SIGSYS,
//! `none` installs nothing. Filters are built for the architecture the daemon runs on
//! (x86_64 or aarch64); the program first checks `seccomp_data.arch` and kills the process
//! on a call through another ABI (i386 `int 0x80`), whatever the action; x32 numbers match no
//! entry.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction as Action, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};
use tracing::info;

/// What happens to a system call outside the list (`--seccomp`); `None` installs no filter.
///
/// The variants are the flag's values (`clap::ValueEnum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompAction {
    // No filter.
    None,
    // Kill the whole process.
    Kill,
    // Allow the call and log it (for finding a missing entry).
    Log,
    // Deliver SIGSYS.
    Trap,
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no seccomp filter for this architecture ({0}); pass --seccomp=none")]
    Arch(&'static str),
    #[error("building the {which} filter: {source}")]
    Build {
        which: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("installing the {which} filter on all threads: {source}")]
    Install {
        which: &'static str,
        source: seccompiler::Error,
    },
}

macro_rules! syscalls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i64)),*]
    };
}

/// Allowed on every architecture, unconditionally.
const COMMON: &[(&str, i64)] = syscalls![
    // --- file system requests (fuse-backend-rs passthrough) ---
    SYS_openat,
    SYS_open_by_handle_at,
    SYS_name_to_handle_at,
    SYS_close,
    SYS_dup,
    SYS_fcntl,
    SYS_newfstatat,
    SYS_fstat,
    SYS_statx,
    SYS_fstatfs,
    SYS_getdents64,
    SYS_lseek,
    SYS_read,
    SYS_write,
    SYS_pread64,
    SYS_pwrite64,
    SYS_readv,
    SYS_writev,
    SYS_preadv,
    SYS_pwritev,
    SYS_fallocate,
    SYS_ftruncate,
    SYS_fsync,
    SYS_fdatasync,
    SYS_syncfs,
    SYS_fchmod,
    SYS_fchmodat,
    SYS_fchownat,
    SYS_utimensat,
    SYS_mkdirat,
    SYS_mknodat,
    SYS_symlinkat,
    SYS_readlinkat,
    SYS_linkat,
    SYS_unlinkat,
    SYS_renameat2,
    SYS_umask,
    SYS_getxattr,
    SYS_setxattr,
    SYS_listxattr,
    SYS_removexattr,
    // --- per-request credentials (per thread, raw system calls) and CAP_FSETID ---
    SYS_setresuid,
    SYS_setresgid,
    SYS_capget,
    SYS_capset,
    // --- vhost-user ---
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_eventfd2,
    SYS_accept4,
    SYS_recvmsg,
    SYS_sendmsg,
    // --- accounting (accounting/server.rs): the metrics/admin endpoint's socket is bound
    // before the sandbox; serving it needs accept4 and epoll (above), plus recv/send on the
    // accepted stream (std's socket read/write are recvfrom/sendto without an address) and
    // shutdown at the end of a response. The journal needs only openat, write, fdatasync,
    // renameat2 and fsync, already listed. ---
    SYS_recvfrom,
    SYS_sendto,
    SYS_shutdown,
    // --- memory ---
    SYS_brk,
    SYS_mmap,
    SYS_munmap,
    SYS_mprotect,
    SYS_mremap,
    SYS_madvise,
    // --- threads, signals, time, process ---
    SYS_futex,
    SYS_set_robust_list,
    SYS_rseq,
    SYS_sigaltstack,
    SYS_rt_sigaction,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_rt_sigtimedwait,
    SYS_restart_syscall,
    SYS_sched_getaffinity,
    SYS_sched_yield,
    SYS_getpid,
    SYS_gettid,
    SYS_tgkill,
    SYS_getrandom,
    SYS_clock_gettime,
    SYS_clock_getres,
    SYS_gettimeofday,
    SYS_nanosleep,
    SYS_clock_nanosleep,
    SYS_ppoll,
    SYS_exit,
    SYS_exit_group,
];

/// x86_64 calls glibc makes where other architectures only have the `*at`/`p*` twin above
/// (`unlink`: the vhost listener removing its socket; `epoll_wait`: vhost-user-backend).
/// `pause` is not allowed: Rust's `process::exit` parks a second thread that calls it while
/// another is exiting, in `pause`; every exit of the daemon is `process::exit_now` (`_exit`,
/// `tests/layering.rs` checks there is no other), which never parks.
#[cfg(target_arch = "x86_64")]
const ARCH: &[(&str, i64)] = syscalls![SYS_unlink, SYS_epoll_wait];

#[cfg(not(target_arch = "x86_64"))]
const ARCH: &[(&str, i64)] = &[];

/// `ioctl` requests allowed (second argument): non-blocking and close-on-exec switches on
/// sockets, and the terminal probe behind `isatty`. The passthrough serves no FUSE_IOCTL.
const IOCTLS: [libc::Ioctl; 4] = [libc::FIONBIO, libc::FIOCLEX, libc::FIONCLEX, libc::TCGETS];

/// `prctl` options allowed (first argument): naming threads, and the reads the `caps`
/// crate makes. Nothing that changes dumpability, seccomp, securebits or the bounding set.
const PRCTLS: [i32; 5] = [
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_CAPBSET_READ,
    libc::PR_GET_SECUREBITS,
    libc::PR_GET_KEEPCAPS,
];

/// `clone` is allowed with these flags masked to exactly CLONE_THREAD: threads, never a
/// new process or namespace.
const CLONE_MASK: u64 = (libc::CLONE_THREAD
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// Which backend the process serves: the CephFS backend's libcephfs talks to its cluster
/// over TCP from its own threads, so its list adds the network calls (and `socket` only for
/// `AF_INET`/`AF_INET6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// The passthrough backend: host files only.
    HostDir,
    /// libcephfs: messenger threads and their sockets to the monitors, MDS and OSDs.
    CephFs,
}

/// What libcephfs 16 (Pacific) was seen calling while serving, beyond the common list:
/// its messenger (non-blocking TCP sockets driven by epoll, `connect`, socket options and
/// names, `sendmsg`/`recvmsg` above), wake-up pipes between its threads, `poll`, thread
/// names read back and set by `prctl` (above), and the resource and system queries of its
/// start-up (`uname`, `sysinfo`, `prlimit64`, `sched_setaffinity`-free).
const CEPH: &[(&str, i64)] = syscalls![
    SYS_connect,
    SYS_getsockopt,
    SYS_setsockopt,
    SYS_getsockname,
    SYS_getpeername,
    SYS_pipe2,
    SYS_uname,
    SYS_sysinfo,
    SYS_prlimit64,
    SYS_timerfd_create,
    SYS_timerfd_settime,
    SYS_getuid,
    SYS_geteuid,
    SYS_getgid,
    SYS_getegid,
];

#[cfg(target_arch = "x86_64")]
const CEPH_ARCH: &[(&str, i64)] = syscalls![SYS_poll, SYS_epoll_create];

#[cfg(not(target_arch = "x86_64"))]
const CEPH_ARCH: &[(&str, i64)] = &[];

/// Socket families libcephfs may create (first argument of `socket`).
const CEPH_SOCKET_DOMAINS: [i32; 2] = [libc::AF_INET, libc::AF_INET6];

/// Every unconditionally allowed system call of this architecture, as (name, number).
pub fn allowed_syscalls(profile: Profile) -> Vec<(&'static str, i64)> {
    let extra: &[(&str, i64)] = match profile {
        Profile::HostDir => &[],
        Profile::CephFs => CEPH,
    };
    let extra_arch: &[(&str, i64)] = match profile {
        Profile::HostDir => &[],
        Profile::CephFs => CEPH_ARCH,
    };
    let mut all: Vec<(&'static str, i64)> = COMMON
        .iter()
        .chain(ARCH)
        .chain(extra)
        .chain(extra_arch)
        .copied()
        .collect();
    // clone3 must reach the ENOSYS answer of the second filter instead of the mismatch
    // action of the first.
    all.push(("SYS_clone3", libc::SYS_clone3));
    all
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))
}

/// The main allow-list filter: allowed calls pass, everything else meets `mismatch`.
pub fn allow_list_filter(mismatch: Action, profile: Profile) -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        which: "allow-list",
        source,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = allowed_syscalls(profile)
        .into_iter()
        .map(|(_, nr)| (nr, Vec::new()))
        .collect();
    let rule = |arg, len, op, value| {
        SeccompCondition::new(arg, len, op, value)
            .and_then(|cond| SeccompRule::new(vec![cond]))
            .map_err(build)
    };
    let thread_only = rule(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(CLONE_MASK),
        libc::CLONE_THREAD as u64,
    )?;
    rules.insert(libc::SYS_clone, vec![thread_only]);
    let ioctls = IOCTLS
        .iter()
        .map(|req| rule(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *req))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctls);
    let prctls = PRCTLS
        .iter()
        .map(|opt| rule(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *opt as u64))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_prctl, prctls);
    if profile == Profile::CephFs {
        let domains = CEPH_SOCKET_DOMAINS
            .iter()
            .map(|d| rule(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, *d as u64))
            .collect::<Result<Vec<_>, _>>()?;
        rules.insert(libc::SYS_socket, domains);
    }
    let filter =
        SeccompFilter::new(rules, mismatch, Action::Allow, target_arch()?).map_err(build)?;
    filter.try_into().map_err(build)
}

/// The second filter: `clone3` answers ENOSYS, everything else is left to the allow-list.
pub fn clone3_filter() -> Result<BpfProgram, SeccompError> {
    let build = |source| SeccompError::Build {
        which: "clone3",
        source,
    };
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let filter = SeccompFilter::new(
        rules,
        Action::Allow,
        Action::Errno(libc::ENOSYS as u32),
        target_arch()?,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

/// The action taken on a call outside the list, or `None` for no filter.
pub fn mismatch_action(action: SeccompAction) -> Option<Action> {
    match action {
        SeccompAction::None => None,
        SeccompAction::Kill => Some(Action::KillProcess),
        SeccompAction::Log => Some(Action::Log),
        SeccompAction::Trap => Some(Action::Trap),
    }
}

/// Installs the filters on every thread of the process (also sets PR_SET_NO_NEW_PRIVS).
pub fn install(action: SeccompAction, profile: Profile) -> Result<(), SeccompError> {
    install_with(mismatch_action(action), profile)
}

/// [`install`] with the mismatch action itself (`None`: no filter).
pub fn install_with(mismatch: Option<Action>, profile: Profile) -> Result<(), SeccompError> {
    let Some(mismatch) = mismatch else {
        info!("seccomp: no filter (--seccomp=none)");
        return Ok(());
    };
    let action = mismatch.clone();
    let main = allow_list_filter(mismatch, profile)?;
    let clone3 = clone3_filter()?;
    // The clone3 filter goes first: once the allow-list is in, `seccomp` itself is refused.
    seccompiler::apply_filter_all_threads(&clone3).map_err(|source| SeccompError::Install {
        which: "clone3",
        source,
    })?;
    seccompiler::apply_filter_all_threads(&main).map_err(|source| SeccompError::Install {
        which: "allow-list",
        source,
    })?;
    info!(
        action = ?action,
        ?profile,
        unconditional = allowed_syscalls(profile).len(),
        with_argument_rules = "clone,ioctl,prctl",
        "seccomp filter installed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn filter_builds_for_each_action() {
        for profile in [Profile::HostDir, Profile::CephFs] {
            for action in [SeccompAction::Kill, SeccompAction::Log, SeccompAction::Trap] {
                let mismatch = mismatch_action(action).expect("a filter");
                let prog = allow_list_filter(mismatch.clone(), profile).unwrap();
                assert!(prog.len() > allowed_syscalls(profile).len(), "{action:?}");
                // The last instruction is the mismatch action for calls not on the list.
                let last = prog.last().unwrap();
                assert_eq!(last.k, u32::from(mismatch), "{action:?}");
            }
        }
        assert!(mismatch_action(SeccompAction::None).is_none());
        assert!(!clone3_filter().unwrap().is_empty());
    }

    #[test]
    fn actions_map_to_the_kernel_actions() {
        assert_eq!(
            mismatch_action(SeccompAction::Kill),
            Some(Action::KillProcess)
        );
        assert_eq!(mismatch_action(SeccompAction::Log), Some(Action::Log));
        assert_eq!(mismatch_action(SeccompAction::Trap), Some(Action::Trap));
    }

    #[test]
    fn syscall_list_has_no_duplicates() {
        for profile in [Profile::HostDir, Profile::CephFs] {
            assert_no_duplicates(profile);
        }
    }

    fn assert_no_duplicates(profile: Profile) {
        let list = allowed_syscalls(profile);
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        for (name, nr) in &list {
            assert!(names.insert(*name), "{name} listed twice");
            assert!(
                numbers.insert(*nr),
                "{name} ({nr}) has the number of another entry"
            );
        }
        for conditional in [
            libc::SYS_clone,
            libc::SYS_ioctl,
            libc::SYS_prctl,
            libc::SYS_socket,
        ] {
            assert!(
                !numbers.contains(&conditional),
                "{conditional} has argument rules"
            );
        }
    }

    #[test]
    fn dangerous_calls_are_not_allowed() {
        let host: HashSet<i64> = allowed_syscalls(Profile::HostDir)
            .iter()
            .map(|(_, nr)| *nr)
            .collect();
        for nr in [libc::SYS_socket, libc::SYS_connect] {
            assert!(!host.contains(&nr), "syscall {nr} must not be allowed");
        }
        // The CephFS list has sockets (with a domain rule), but nothing else dangerous.
        let numbers: HashSet<i64> = allowed_syscalls(Profile::CephFs)
            .iter()
            .map(|(_, nr)| *nr)
            .collect();
        for nr in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_pivot_root,
            libc::SYS_chroot,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_socket,
            libc::SYS_bpf,
            libc::SYS_process_vm_writev,
            libc::SYS_memfd_create,
            libc::SYS_io_uring_setup,
            libc::SYS_setgroups,
            libc::SYS_seccomp,
            libc::SYS_userfaultfd,
        ] {
            assert!(!numbers.contains(&nr), "syscall {nr} must not be allowed");
        }
    }

    #[test]
    fn the_serving_essentials_are_allowed() {
        let numbers: HashSet<i64> = allowed_syscalls(Profile::HostDir)
            .iter()
            .map(|(_, nr)| *nr)
            .collect();
        for nr in [
            libc::SYS_setresuid,
            libc::SYS_setresgid,
            libc::SYS_openat,
            libc::SYS_accept4,
            libc::SYS_recvmsg,
            libc::SYS_rt_sigtimedwait,
            libc::SYS_exit_group,
        ] {
            assert!(numbers.contains(&nr), "syscall {nr} missing");
        }
    }

    #[test]
    fn clone_mask_lets_threads_through_and_stops_processes() {
        let thread = (libc::CLONE_VM
            | libc::CLONE_FS
            | libc::CLONE_FILES
            | libc::CLONE_SIGHAND
            | libc::CLONE_THREAD
            | libc::CLONE_SYSVSEM
            | libc::CLONE_SETTLS
            | libc::CLONE_PARENT_SETTID
            | libc::CLONE_CHILD_CLEARTID) as u64;
        assert_eq!(thread & CLONE_MASK, libc::CLONE_THREAD as u64);
        let fork = libc::SIGCHLD as u64;
        assert_ne!(fork & CLONE_MASK, libc::CLONE_THREAD as u64);
        let userns_thread = thread | libc::CLONE_NEWUSER as u64;
        assert_ne!(userns_thread & CLONE_MASK, libc::CLONE_THREAD as u64);
    }
}
