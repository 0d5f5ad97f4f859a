//! The CephFS backend as the daemon starts it (`--backend cephfs`).
//!
//! Owns turning the command line into a `cephfs_backend::CephConfig`, loading libcephfs and
//! reading the ceph.conf and keyring before the sandbox hides them, and the pre-flight connection that proves the
//! cluster, the key and the volume root are usable before the vhost-user socket exists. It
//! must not talk to Ceph in the serving process before the sandbox and seccomp are in place:
//! libcephfs starts threads, which would escape both (the daemon calls `CephFs::connect` last).
//!
//! The pre-flight runs in a forked child of the still single-threaded daemon: the child
//! connects, checks the root, unmounts and exits, and reports an error through a pipe. The
//! serving process then connects again once confined, so a cluster that is wrong never gets
//! as far as a socket a VMM could connect to.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cephfs_backend::{CachePolicy, CephConfig, CephError, CephFs};
use nix::sys::wait::WaitStatus;
use nix::unistd::ForkResult;
use tracing::info;

use super::CacheMode;
use crate::confine::sandbox::SandboxFile;

/// Name of the ceph.conf inside the sandbox's private root.
pub const CONF_FILE: &str = "ceph.conf";
/// Name of the keyring inside the sandbox's private root.
pub const KEYRING_FILE: &str = "keyring";

/// How long libcephfs may take to reach the monitors and the MDS at start-up.
const MOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of the whole pre-flight (libcephfs can overrun its own timeouts).
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(45);
/// Largest conf or keyring accepted (both are a few hundred bytes).
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CephStartError {
    #[error("{flag} {path:?}: {source}")]
    File {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {path:?}: larger than {MAX_FILE} bytes, not a ceph file")]
    FileTooLarge { flag: &'static str, path: PathBuf },
    #[error("{0}")]
    Connect(#[from] CephError),
    #[error("checking the cluster before start-up: {0}")]
    Preflight(String),
    #[error("connecting to the ceph cluster took more than {0:?}")]
    PreflightTimeout(Duration),
}

/// What the daemon needs to serve a CephFS volume.
#[derive(Debug, Clone)]
pub struct CephStart {
    config: CephConfig,
    files: Vec<SandboxFile>,
}

/// Which volume to serve and how (the CLI's `--ceph-*` flags, converted and checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CephOptions {
    pub conf: PathBuf,
    /// cephx user without `client.`.
    pub id: String,
    pub keyring: PathBuf,
    /// The volume's absolute directory inside CephFS.
    pub root: String,
    pub fs_name: Option<String>,
    pub cache: CachePolicy,
    /// `None`: wait for the cluster as long as it takes.
    pub op_timeout: Option<Duration>,
    /// POSIX ACLs kept and enforced by libcephfs (`--posix-acl`).
    pub posix_acl: bool,
    /// `--allow-direct-io`: a guest's `O_DIRECT` bypasses the client's cache.
    pub honour_o_direct: bool,
}

impl CephStart {
    /// Reads the conf and keyring the options name.
    pub fn new(options: CephOptions) -> Result<CephStart, CephStartError> {
        // libcephfs is loaded on demand (a host-directory daemon never maps it), and must be
        // now: its files are not in the sandbox's root. Loading starts no thread.
        cephfs_backend::load_libcephfs()?;
        let files = vec![
            read_file("--ceph-conf", CONF_FILE, options.conf.clone())?,
            read_file("--ceph-keyring", KEYRING_FILE, options.keyring.clone())?,
        ];
        let mut config = CephConfig::new(options.conf, options.id, options.keyring, options.root);
        config.fs_name = options.fs_name;
        config.cache = options.cache;
        config.mount_timeout = MOUNT_TIMEOUT;
        config.op_timeout = options.op_timeout;
        config.posix_acl = options.posix_acl;
        config.honour_o_direct = options.honour_o_direct;
        Ok(CephStart { config, files })
    }

    /// Calls on the request's thread, the serving side keeping the op timeout (see
    /// `cephfs_backend::InlineCalls`); ignored without an op timeout.
    pub fn inline_calls(&mut self, calls: cephfs_backend::InlineCalls) {
        self.config.inline_calls = Some(calls);
    }

    /// The op timeout the backend was configured with.
    pub fn op_timeout(&self) -> Option<Duration> {
        self.config.op_timeout
    }

    /// The files the sandbox must keep reachable.
    pub fn files(&self) -> Vec<SandboxFile> {
        self.files.clone()
    }

    /// The volume root inside CephFS.
    pub fn root(&self) -> &str {
        &self.config.root
    }

    /// The cephx id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Connects in a throw-away child process and reports whether serving would work.
    pub fn preflight(&self) -> Result<(), CephStartError> {
        let started = Instant::now();
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| CephStartError::Preflight(format!("pipe: {e}")))?;
        // SAFETY: the daemon is still single-threaded here (nothing has started a thread
        // yet; the sandbox checks the same a moment later), so the child is a complete copy.
        // The child only connects, writes to the pipe and leaves with `_exit`.
        match unsafe { nix::unistd::fork() }
            .map_err(|e| CephStartError::Preflight(format!("fork: {e}")))?
        {
            ForkResult::Child => {
                drop(read_end);
                let code = match CephFs::connect(self.config.clone()) {
                    Ok(fs) => {
                        drop(fs);
                        0
                    }
                    Err(e) => {
                        let _ = nix::unistd::write(write_end.as_fd(), e.to_string().as_bytes());
                        1
                    }
                };
                // SAFETY: `_exit` ends the child without running the parent's exit handlers
                // or destructors a second time.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                drop(write_end);
                let message = read_with_deadline(read_end, started + PREFLIGHT_TIMEOUT);
                let status = wait_with_deadline(child, started + PREFLIGHT_TIMEOUT);
                match (status, message) {
                    (Some(WaitStatus::Exited(_, 0)), _) => {
                        info!(
                            root = self.root(),
                            id = self.id(),
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "cephfs: cluster, key and volume root checked"
                        );
                        Ok(())
                    }
                    (Some(_), Some(m)) if !m.is_empty() => Err(CephStartError::Preflight(m)),
                    (Some(status), _) => Err(CephStartError::Preflight(format!(
                        "the checking process ended with {status:?}"
                    ))),
                    (None, _) => Err(CephStartError::PreflightTimeout(PREFLIGHT_TIMEOUT)),
                }
            }
        }
    }

    /// Connects for serving, with the files where the sandbox put them.
    pub fn connect(mut self, conf: PathBuf, keyring: PathBuf) -> Result<CephFs, CephStartError> {
        self.config.conf = conf;
        self.config.keyring = keyring;
        Ok(CephFs::connect(self.config)?)
    }
}

fn read_file(
    flag: &'static str,
    name: &'static str,
    path: PathBuf,
) -> Result<SandboxFile, CephStartError> {
    let err = |source| CephStartError::File {
        flag,
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(&path).map_err(err)?;
    let mut contents = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut contents)
        .map_err(err)?;
    if contents.len() as u64 > MAX_FILE {
        return Err(CephStartError::FileTooLarge { flag, path });
    }
    Ok(SandboxFile {
        name,
        host_path: path,
        contents,
    })
}

/// Everything the child wrote before it closed the pipe, or `None` past the deadline.
fn read_with_deadline(fd: std::os::fd::OwnedFd, deadline: Instant) -> Option<String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut buf) {
                Ok(0) => return Some(String::from_utf8_lossy(&out).into_owned()),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return Some(String::from_utf8_lossy(&out).into_owned()),
            },
            Err(_) => return Some(String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

/// The child's exit status; past the deadline it is killed and `None` returned.
fn wait_with_deadline(child: nix::unistd::Pid, deadline: Instant) -> Option<WaitStatus> {
    use nix::sys::wait::{waitpid, WaitPidFlag};
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
            Ok(status) => return Some(status),
            Err(_) => return None,
        }
        if Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(child, None);
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CephFS backend's guest cache policy for `mode`.
pub fn cache_policy(mode: CacheMode) -> CachePolicy {
    match mode {
        CacheMode::Never => CachePolicy::never(),
        CacheMode::Auto => CachePolicy::auto(),
        CacheMode::Metadata => CachePolicy::metadata(),
        CacheMode::Always => CachePolicy::always(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_oversized_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.keyring");
        match read_file("--ceph-keyring", KEYRING_FILE, missing.clone()) {
            Err(CephStartError::File { flag, path, .. }) => {
                assert_eq!(flag, "--ceph-keyring");
                assert_eq!(path, missing);
            }
            other => panic!("expected a file error, got {other:?}"),
        }
        let big = dir.path().join("big.conf");
        std::fs::write(&big, vec![b'#'; MAX_FILE as usize + 1]).unwrap();
        assert!(matches!(
            read_file("--ceph-conf", CONF_FILE, big),
            Err(CephStartError::FileTooLarge { .. })
        ));
        let ok = dir.path().join("ceph.conf");
        std::fs::write(&ok, b"[global]\nmon_host = 127.0.0.1\n").unwrap();
        let f = read_file("--ceph-conf", CONF_FILE, ok.clone()).unwrap();
        assert_eq!(f.contents, b"[global]\nmon_host = 127.0.0.1\n");
        assert_eq!(f.host_path, ok);
    }
}
