//! Starting one `virtiofsd-kr` per share for a guest, and collecting how it ended.
//!
//! Each daemon gets its own temporary folder (under the system temp dir, no commas) holding
//! its vhost-user socket and its combined stdout/stderr log.

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
            start_timeout: Duration::from_secs(15),
        }
    }
}

impl DaemonConfig {
    /// The arguments after the binary name, for a socket and a shared directory.
    pub fn args(&self, socket: &Path, shared_dir: &Path) -> Vec<String> {
        let mut a = vec![
            "--socket-path".to_string(),
            socket.display().to_string(),
            "--shared-dir".to_string(),
            shared_dir.display().to_string(),
            "--cache".to_string(),
            self.cache.as_str().to_string(),
        ];
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

impl Daemon {
    /// Starts the daemon on `shared_dir` and waits until its socket exists.
    pub fn start(config: &DaemonConfig, shared_dir: &Path) -> Result<Daemon> {
        let binary = match &config.binary {
            Some(b) => b.clone(),
            None => paths::daemon_binary()?,
        };
        let dir = tempfile::Builder::new()
            .prefix("vmtest-daemon-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the daemon's temp dir", e))?;
        let socket = dir.path().join("vhost-fs.sock");
        paths::no_comma(&socket)?;
        let log_path = dir.path().join("daemon.log");
        let log = File::create(&log_path).map_err(|e| HarnessError::io("daemon log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::io("daemon log", e))?;
        let args = config.args(&socket, shared_dir);
        let command = format!("{} {}", binary.display(), args.join(" "));
        let child = Command::new(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {}", binary.display()), e))?;
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

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
}
