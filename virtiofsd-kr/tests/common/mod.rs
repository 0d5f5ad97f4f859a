//! Starting the real `virtiofsd-kr` binary for integration tests.
//!
//! Owns the daemon's process: its command line, a temporary socket directory and shared
//! directory, its captured stderr, waiting for the socket to appear and for the process to
//! exit. Connecting to it is the test frontend's job (`vm_tests::frontend`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use vm_tests::frontend::{FrontendConfig, TestFrontend};
use vm_tests::fuse::FuseSession;

/// How long the daemon gets to create its socket.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon gets to exit after the frontend hangs up.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running daemon serving a fresh temporary directory.
pub struct Daemon {
    child: Option<Child>,
    /// The temporary directory created for this daemon.
    pub shared: TempDir,
    /// The directory actually served (`shared`, or another daemon's for two-pod tests).
    pub shared_dir: PathBuf,
    runtime: TempDir,
    pub socket: PathBuf,
    stderr_path: PathBuf,
}

impl Daemon {
    /// Starts the daemon with `--sandbox none --seccomp none` and `extra` flags.
    pub fn start(extra: &[&str]) -> Daemon {
        Self::start_with(&["--sandbox", "none", "--seccomp", "none"], extra, |_| {})
    }

    /// Starts the daemon with `confinement` flags and `extra` flags, after `prepare` has
    /// populated the shared directory.
    pub fn start_with(confinement: &[&str], extra: &[&str], prepare: impl FnOnce(&Path)) -> Daemon {
        Self::start_serving(None, confinement, extra, prepare)
    }

    /// Starts a second daemon on the directory `other` serves (two pods, one volume).
    pub fn start_sharing(other: &Daemon, confinement: &[&str], extra: &[&str]) -> Daemon {
        Self::start_serving(Some(other.shared_dir.clone()), confinement, extra, |_| {})
    }

    /// Starts a daemon on an existing directory `dir` (not populated, not removed).
    pub fn start_sharing_dir(dir: &Path, confinement: &[&str], extra: &[&str]) -> Daemon {
        Self::start_serving(Some(dir.to_path_buf()), confinement, extra, |_| {})
    }

    fn start_serving(
        dir: Option<PathBuf>,
        confinement: &[&str],
        extra: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Daemon {
        let shared = tempfile::tempdir().expect("shared dir");
        let runtime = tempfile::tempdir().expect("runtime dir");
        let shared_dir = dir.unwrap_or_else(|| shared.path().to_path_buf());
        prepare(&shared_dir);
        let socket = runtime.path().join("vfs.sock");
        let stderr_path = runtime.path().join("daemon.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let child = Command::new(env!("CARGO_BIN_EXE_virtiofsd-kr"))
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared_dir)
            .args(confinement)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawning virtiofsd-kr");
        let mut daemon = Daemon {
            child: Some(child),
            shared,
            shared_dir,
            runtime,
            socket,
            stderr_path,
        };
        daemon.wait_for_socket();
        daemon
    }

    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.socket.exists() {
            if let Some(status) = self.try_wait() {
                panic!(
                    "daemon exited before listening ({status}); stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no socket after {START_TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connects a frontend with the default configuration.
    pub fn connect(&self) -> TestFrontend {
        self.connect_with(FrontendConfig::default())
    }

    pub fn connect_with(&self, config: FrontendConfig) -> TestFrontend {
        TestFrontend::connect_with(&self.socket, config)
            .unwrap_or_else(|e| panic!("connecting: {e}; stderr:\n{}", self.stderr()))
    }

    /// Connects and completes FUSE_INIT.
    pub fn session(&self) -> FuseSession {
        let mut s = FuseSession::new(self.connect());
        s.init()
            .unwrap_or_else(|e| panic!("FUSE_INIT: {e}; stderr:\n{}", self.stderr()));
        s
    }

    /// A path inside the shared directory.
    pub fn host(&self, rel: &str) -> PathBuf {
        self.shared_dir.join(rel)
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status, if the daemon has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("waitpid")
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon was started").id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Panics (with the daemon's stderr) unless the daemon exits with status 0 within
    /// [`EXIT_TIMEOUT`].
    pub fn assert_exits_zero(&mut self) {
        let status = self.wait_exit(EXIT_TIMEOUT).expect("daemon exits");
        assert!(
            status.success(),
            "exit status {status}; stderr:\n{}",
            self.stderr()
        );
    }

    /// Panics (with the daemon's stderr) unless the daemon is still running.
    pub fn assert_running(&mut self, after: &str) {
        if let Some(status) = self.try_wait() {
            panic!(
                "daemon died after {after}: {status}; stderr:\n{}",
                self.stderr()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if child.try_wait().ok().flatten().is_none() {
                // Our own child, by its pid.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- daemon stderr ---\n{}", self.stderr());
        }
        let _ = &self.runtime;
    }
}
