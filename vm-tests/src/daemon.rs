//! Starting one `virtiofsd-kr` per share for a guest, and collecting how it ended.
//!
//! What is shared is a [`ShareBackend`]: a host directory (`--shared-dir`, the passthrough
//! backend) or a CephFS volume reached through libcephfs (`--backend cephfs` with the cluster's
//! conf, a cephx identity and the volume's root). How the daemon serves it (cache mode,
//! sandbox, ...) is the [`DaemonConfig`].
//!
//! Each daemon gets its own temporary folder (under the system temp dir, no commas) holding
//! its vhost-user socket and its combined stdout/stderr log. [`attempt_start`] runs a daemon
//! that is expected to refuse to start, keeping stdout and stderr apart and watching whether
//! its socket ever appeared.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{HarnessError, Result};
use crate::paths;

/// Guest caching policy passed as `--cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    Auto,
    Always,
    Never,
    Metadata,
}

impl CacheMode {
    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Auto => "auto",
            CacheMode::Always => "always",
            CacheMode::Never => "never",
            CacheMode::Metadata => "metadata",
        }
    }
}

impl std::fmt::Display for CacheMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A CephFS volume served with `--backend cephfs`: the cluster's conf, the cephx identity the
/// daemon connects as, and the volume directory that becomes the guest's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CephShare {
    /// `--ceph-conf`: ceph.conf naming the monitors.
    pub conf: PathBuf,
    /// `--ceph-id`: cephx user without `client.`.
    pub id: String,
    /// `--ceph-keyring`: keyring holding that user's key.
    pub keyring: PathBuf,
    /// `--ceph-root`: absolute path of the volume directory inside CephFS.
    pub root: String,
}

/// What a daemon shares with its guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareBackend {
    /// A host directory, `--shared-dir DIR` (the default passthrough backend).
    Passthrough(PathBuf),
    /// A CephFS volume, `--backend cephfs --ceph-conf ... --ceph-root ...`.
    CephFs(CephShare),
}

impl ShareBackend {
    /// The arguments naming the backend and what it shares.
    pub fn args(&self) -> Vec<String> {
        match self {
            ShareBackend::Passthrough(dir) => {
                vec!["--shared-dir".into(), dir.display().to_string()]
            }
            ShareBackend::CephFs(c) => vec![
                "--backend".into(),
                "cephfs".into(),
                "--ceph-conf".into(),
                c.conf.display().to_string(),
                "--ceph-id".into(),
                c.id.clone(),
                "--ceph-keyring".into(),
                c.keyring.display().to_string(),
                "--ceph-root".into(),
                c.root.clone(),
            ],
        }
    }

    /// `passthrough` or `cephfs`, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            ShareBackend::Passthrough(_) => "passthrough",
            ShareBackend::CephFs(_) => "cephfs",
        }
    }
}

impl From<&Path> for ShareBackend {
    fn from(dir: &Path) -> Self {
        ShareBackend::Passthrough(dir.to_path_buf())
    }
}

impl From<CephShare> for ShareBackend {
    fn from(share: CephShare) -> Self {
        ShareBackend::CephFs(share)
    }
}

/// How the daemon is started.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Binary; `None` means [`paths::daemon_binary`].
    pub binary: Option<PathBuf>,
    /// `--cache`.
    pub cache: CacheMode,
    /// `--sandbox`; `None` (the default) leaves the daemon's own default (`namespace`), the
    /// configuration a hypervisor runs. `VMTEST_SANDBOX` overrides it (empty: the default).
    pub sandbox: Option<String>,
    /// `--seccomp`; `None` (the default) leaves the daemon's default. `VMTEST_SECCOMP` sets it
    /// (an empty value means the daemon's default).
    pub seccomp: Option<String>,
    /// `--xattr`.
    pub xattr: bool,
    /// `--readonly`.
    pub readonly: bool,
    /// `--log-level` (or `VMTEST_DAEMON_LOG_LEVEL`).
    pub log_level: Option<String>,
    /// Further arguments, appended last.
    pub extra_args: Vec<String>,
    /// How long to wait for the socket to appear.
    pub start_timeout: Duration,
    /// An integrator's exact argument list instead of the one built from the fields above:
    /// `{socket}`, `{shared_dir}` and `{fd}` in it are replaced by the socket path, the share
    /// and [`Self::inherited_fd`].
    pub command_line: Option<Vec<String>>,
    /// Bind the vhost-user socket here and hand the listening socket to the daemon as this
    /// descriptor (`--fd`), as Kata's runtimes and libvirt do, instead of `--socket-path`.
    pub inherited_fd: Option<i32>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            binary: None,
            cache: CacheMode::Auto,
            sandbox: std::env::var("VMTEST_SANDBOX")
                .ok()
                .filter(|v| !v.is_empty()),
            seccomp: std::env::var("VMTEST_SECCOMP")
                .ok()
                .filter(|v| !v.is_empty()),
            xattr: false,
            readonly: false,
            log_level: std::env::var("VMTEST_DAEMON_LOG_LEVEL").ok(),
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(30),
            command_line: None,
            inherited_fd: None,
        }
    }
}

impl DaemonConfig {
    /// The arguments after the binary name, for a socket and a shared directory.
    pub fn args(&self, socket: &Path, shared_dir: &Path) -> Vec<String> {
        self.args_for(socket, &ShareBackend::Passthrough(shared_dir.to_path_buf()))
    }

    /// The arguments after the binary name, for a socket and any backend.
    pub fn args_for(&self, socket: &Path, backend: &ShareBackend) -> Vec<String> {
        if let Some(line) = &self.command_line {
            let shared = match backend {
                ShareBackend::Passthrough(dir) => dir.display().to_string(),
                ShareBackend::CephFs(_) => String::new(),
            };
            let fd = self
                .inherited_fd
                .map(|fd| fd.to_string())
                .unwrap_or_default();
            return line
                .iter()
                .map(|a| {
                    a.replace("{socket}", &socket.display().to_string())
                        .replace("{shared_dir}", &shared)
                        .replace("{fd}", &fd)
                })
                .collect();
        }
        let mut a = match self.inherited_fd {
            Some(fd) => vec![format!("--fd={fd}")],
            None => vec!["--socket-path".to_string(), socket.display().to_string()],
        };
        a.extend(backend.args());
        a.extend(["--cache".to_string(), self.cache.as_str().to_string()]);
        if let Some(s) = &self.sandbox {
            a.push("--sandbox".into());
            a.push(s.clone());
        }
        if let Some(s) = &self.seccomp {
            a.push("--seccomp".into());
            a.push(s.clone());
        }
        if self.xattr {
            a.push("--xattr".into());
        }
        if self.readonly {
            a.push("--readonly".into());
        }
        if let Some(l) = &self.log_level {
            a.push("--log-level".into());
            a.push(l.clone());
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// How a daemon ended.
#[derive(Debug, Clone)]
pub struct DaemonOutcome {
    /// Exit status; `None` when it had to be killed.
    pub status: Option<ExitStatus>,
    /// True when it did not exit by itself within the timeout.
    pub timed_out: bool,
    /// Its stdout and stderr.
    pub log: String,
    /// The command line used.
    pub command: String,
}

impl DaemonOutcome {
    /// True when the daemon exited by itself with status 0.
    pub fn success(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }
}

/// A running daemon.
pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    log_path: PathBuf,
    command: String,
    _dir: tempfile::TempDir,
}

/// The daemon binary a config names (or the default one).
fn binary_of(config: &DaemonConfig) -> Result<PathBuf> {
    match &config.binary {
        Some(b) => Ok(b.clone()),
        None => paths::daemon_binary(),
    }
}

/// A fresh folder for one daemon's socket and logs.
fn daemon_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("vmtest-daemon-")
        .tempdir()
        .map_err(|e| HarnessError::io("creating the daemon's temp dir", e))
}

impl Daemon {
    /// Starts the daemon on `shared_dir` and waits until its socket exists.
    pub fn start(config: &DaemonConfig, shared_dir: &Path) -> Result<Daemon> {
        Self::start_backend(config, &ShareBackend::Passthrough(shared_dir.to_path_buf()))
    }

    /// Starts the daemon on `backend` and waits until its socket exists.
    pub fn start_backend(config: &DaemonConfig, backend: &ShareBackend) -> Result<Daemon> {
        let binary = binary_of(config)?;
        let dir = daemon_dir()?;
        let socket = dir.path().join("vhost-fs.sock");
        paths::no_comma(&socket)?;
        let log_path = dir.path().join("daemon.log");
        let log = File::create(&log_path).map_err(|e| HarnessError::io("daemon log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::io("daemon log", e))?;
        let args = config.args_for(&socket, backend);
        let command = format!("{} {}", binary.display(), args.join(" "));
        let mut cmd = Command::new(&binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        // The listening socket, when the daemon inherits it: bound here, so it exists before
        // the daemon runs (the VMM's connection waits in its backlog).
        let listener = match config.inherited_fd {
            Some(target) => {
                let listener = std::os::unix::net::UnixListener::bind(&socket)
                    .map_err(|e| HarnessError::io("binding the vhost-user socket", e))?;
                let source = std::os::fd::AsRawFd::as_raw_fd(&listener);
                // SAFETY: the closure runs in the forked child before exec and only calls
                // dup2 or fcntl, which are async-signal-safe; `source` stays open in the parent (and so
                // in the child) until after the spawn. dup2 clears FD_CLOEXEC on `target`.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                        let ok = if source == target {
                            // Same number: only the close-on-exec flag has to go.
                            libc::fcntl(target, libc::F_SETFD, 0) >= 0
                        } else {
                            libc::dup2(source, target) >= 0
                        };
                        if !ok {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Some(listener)
            }
            None => None,
        };
        let child = cmd
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {}", binary.display()), e))?;
        drop(listener);
        let mut d = Daemon {
            child: Some(child),
            socket,
            log_path,
            command,
            _dir: dir,
        };
        let deadline = Instant::now() + config.start_timeout;
        loop {
            if d.socket.exists() {
                return Ok(d);
            }
            let exited = match d.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(_))) => true,
                Some(Ok(None)) => false,
                _ => true,
            };
            if exited || Instant::now() >= deadline {
                let outcome = d.finish(Duration::from_millis(100));
                return Err(HarnessError::DaemonStart {
                    socket: d.socket.clone(),
                    timeout: config.start_timeout,
                    log: format!(
                        "command: {}\nstatus: {:?}\n{}",
                        outcome.command, outcome.status, outcome.log
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The vhost-user socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The process id, while the daemon has not been collected.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The command line.
    pub fn command(&self) -> &str {
        &self.command
    }

    /// Its output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits up to `timeout` for the daemon to exit by itself, then kills it.
    pub fn finish(&mut self, timeout: Duration) -> DaemonOutcome {
        let deadline = Instant::now() + timeout;
        let mut status = None;
        let mut timed_out = false;
        if let Some(mut child) = self.child.take() {
            loop {
                match child.try_wait() {
                    Ok(Some(s)) => {
                        status = Some(s);
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    _ => {
                        timed_out = true;
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        DaemonOutcome {
            status,
            timed_out,
            log: self.log(),
            command: self.command.clone(),
        }
    }
}

/// What a daemon that was expected to refuse to start did.
#[derive(Debug)]
pub struct StartAttempt {
    /// The command line used.
    pub command: String,
    /// Exit status; `None` when it was still running at the deadline (then killed).
    pub status: Option<ExitStatus>,
    /// How long it ran.
    pub ran_for: Duration,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
    /// The vhost-user socket existed at some point while it ran (checked every few ms).
    pub socket_appeared: bool,
    /// A connection to that socket succeeded at some point.
    pub socket_accepted: bool,
}

impl StartAttempt {
    /// True when it exited by itself with a non-zero status.
    pub fn refused(&self) -> bool {
        self.status.is_some_and(|s| !s.success())
    }

    /// Everything about the attempt, for failure messages.
    pub fn report(&self) -> String {
        format!(
            "command: {}\nstatus: {:?} after {:?}\nsocket appeared: {}, accepted a \
             connection: {}\n---- stderr:\n{}---- stdout:\n{}",
            self.command,
            self.status,
            self.ran_for,
            self.socket_appeared,
            self.socket_accepted,
            self.stderr,
            self.stdout
        )
    }
}

/// Runs a daemon that should refuse to start (bad identity, missing root, ...): waits up to
/// `timeout` for it to exit (killing it after), watching all the while whether its socket
/// appears and accepts a connection, and returns its status with stdout and stderr apart.
pub fn attempt_start(
    config: &DaemonConfig,
    backend: &ShareBackend,
    timeout: Duration,
) -> Result<StartAttempt> {
    let binary = binary_of(config)?;
    let dir = daemon_dir()?;
    let socket = dir.path().join("vhost-fs.sock");
    paths::no_comma(&socket)?;
    let out_path = dir.path().join("stdout.log");
    let err_path = dir.path().join("stderr.log");
    let out = File::create(&out_path).map_err(|e| HarnessError::io("daemon stdout log", e))?;
    let err = File::create(&err_path).map_err(|e| HarnessError::io("daemon stderr log", e))?;
    let args = config.args_for(&socket, backend);
    let command = format!("{} {}", binary.display(), args.join(" "));
    let started = Instant::now();
    let mut child = Command::new(&binary)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| HarnessError::io(format!("starting {}", binary.display()), e))?;
    let deadline = started + timeout;
    let mut socket_appeared = false;
    let mut socket_accepted = false;
    let status = loop {
        if socket.exists() {
            socket_appeared = true;
            if !socket_accepted && std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                socket_accepted = true;
            }
        }
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let ran_for = started.elapsed();
    Ok(StartAttempt {
        command,
        status,
        ran_for,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        socket_appeared,
        socket_accepted,
    })
}

/// How long [`end_daemon`] waits after SIGTERM before it kills.
pub const END_GRACE: Duration = Duration::from_secs(10);

/// Ends a daemon still running the way a launcher does: SIGTERM, then SIGKILL if it is still
/// there after [`END_GRACE`]. A killed CephFS daemon leaves its MDS session open, holding
/// capabilities until the MDS evicts it, which stalls every other client of those files;
/// SIGTERM closes it (and lets a sanitized daemon run its leak check). Returns the exit
/// status, `None` when it had to be killed.
pub fn end_daemon(child: &mut Child) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // Our own child, by its pid.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + END_GRACE;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return None,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = end_daemon(&mut c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_follow_the_config() {
        let cfg = DaemonConfig {
            cache: CacheMode::Never,
            sandbox: Some("none".into()),
            seccomp: Some("log".into()),
            xattr: true,
            readonly: false,
            log_level: None,
            extra_args: vec!["--thread-pool-size".into(), "2".into()],
            ..DaemonConfig::default()
        };
        let a = cfg.args(Path::new("/tmp/s.sock"), Path::new("/srv/share"));
        assert_eq!(
            a.join(" "),
            "--socket-path /tmp/s.sock --shared-dir /srv/share --cache never --sandbox none \
             --seccomp log --xattr --thread-pool-size 2"
        );
    }

    #[test]
    fn cephfs_args() {
        let cfg = DaemonConfig {
            cache: CacheMode::Always,
            sandbox: None,
            seccomp: None,
            log_level: None,
            readonly: true,
            ..DaemonConfig::default()
        };
        let backend = ShareBackend::CephFs(CephShare {
            conf: "/c/ceph.conf".into(),
            id: "tenant1".into(),
            keyring: "/c/t1.keyring".into(),
            root: "/volumes/v1".into(),
        });
        assert_eq!(
            cfg.args_for(Path::new("/tmp/s.sock"), &backend).join(" "),
            "--socket-path /tmp/s.sock --backend cephfs --ceph-conf /c/ceph.conf --ceph-id \
             tenant1 --ceph-keyring /c/t1.keyring --ceph-root /volumes/v1 --cache always \
             --readonly"
        );
        assert_eq!(backend.kind(), "cephfs");
    }
}
