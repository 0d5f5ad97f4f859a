//! Starting the real `virtiofsd-kr` binary for integration tests.
//!
//! Owns the daemon's process: its command line, a temporary socket directory and shared
//! directory, its captured stderr, waiting for the socket to appear and for the process to
//! exit. Connecting to it is the test frontend's job (`vm_tests::frontend`).
//!
//! With `VIRTIOFSD_KR_SANITIZED_BIN` set (scripts/sanitize.sh), every daemon is that
//! AddressSanitizer build instead, run with `ASAN_OPTIONS` that make any report fatal; a
//! daemon is then stopped with SIGTERM (so LeakSanitizer's exit check runs) instead of
//! SIGKILL, and the harness fails the test when the daemon's stderr holds a sanitizer
//! report or a panic, or it exits with [`SANITIZER_EXIT_CODE`].

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

/// The environment variable naming a sanitizer build of the daemon to test instead of this
/// package's own binary.
pub const SANITIZED_BIN_ENV: &str = "VIRTIOFSD_KR_SANITIZED_BIN";
/// The exit status the sanitizer runtime gives a daemon it stopped (`ASAN_OPTIONS=exitcode`).
pub const SANITIZER_EXIT_CODE: i32 = 86;

/// The sanitizer build named by [`SANITIZED_BIN_ENV`], if any.
pub fn sanitized_bin() -> Option<PathBuf> {
    std::env::var_os(SANITIZED_BIN_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The daemon binary the tests start: the sanitizer build if one is named, else this
/// package's binary.
pub fn daemon_bin() -> PathBuf {
    sanitized_bin().unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_virtiofsd-kr")))
}

/// The value of `flag` in `args` (`--flag value` or `--flag=value`).
fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == flag {
            args.get(i + 1).copied()
        } else {
            a.strip_prefix(flag)?.strip_prefix('=')
        }
    })
}

/// Whether a sanitized daemon is checked for leaks at exit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum LeakCheck {
    /// Where LeakSanitizer can run (see [`asan_options`]).
    WhereItRuns,
    /// Never (a thread stays stuck in the host).
    Off,
}

/// `ASAN_OPTIONS` for a sanitized daemon started with `args`: the first error stops the
/// daemon with [`SANITIZER_EXIT_CODE`]. LeakSanitizer's exit check stops the process's
/// threads with ptrace from a cloned tracer thread and reads `/proc/self`: a seccomp filter
/// (`kill`, `trap`) kills it and a sandbox hides `/proc`, so leaks are checked only for
/// daemons run with `--sandbox none` and `--seccomp none|log` (most of the suite); confined
/// daemons are checked for memory errors, unsymbolized (spawning `llvm-symbolizer` is not
/// allowed by the filter; `scripts/sanitize.sh` says how to symbolize a report). Options the
/// caller's `ASAN_OPTIONS` already holds come first, so these win.
pub fn asan_options(args: &[&str], leaks: LeakCheck) -> String {
    let unconfined = flag_value(args, "--sandbox") == Some("none")
        && matches!(flag_value(args, "--seccomp"), Some("none" | "log"));
    let detect_leaks = unconfined && leaks == LeakCheck::WhereItRuns;
    let mut opts = std::env::var("ASAN_OPTIONS").unwrap_or_default();
    if !opts.is_empty() {
        opts.push(':');
    }
    opts.push_str(&format!(
        "exitcode={SANITIZER_EXIT_CODE}:halt_on_error=1:abort_on_error=0:\
         allocator_may_return_null=0:detect_leaks={}:symbolize={}",
        u8::from(detect_leaks),
        u8::from(unconfined)
    ));
    opts
}

/// The first line of a sanitizer report or panic message in `stderr`, if any.
pub fn sanitizer_report(stderr: &str) -> Option<&str> {
    const MARKERS: &[&str] = &[
        "ERROR: AddressSanitizer",
        "ERROR: LeakSanitizer",
        "AddressSanitizer:DEADLYSIGNAL",
        "LeakSanitizer has encountered a fatal error",
        "SUMMARY: AddressSanitizer",
        "panicked at",
    ];
    stderr
        .lines()
        .find(|line| MARKERS.iter().any(|m| line.contains(m)))
}

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
    /// Started from [`sanitized_bin`]: stopped with SIGTERM, its stderr checked on drop.
    sanitized: bool,
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

    /// As [`Daemon::start_sharing_dir`], for a daemon that is meant to exit while one of its
    /// threads is stuck in the host (a host filesystem that stops answering): a sanitized
    /// one is not checked for leaks, since LeakSanitizer cannot stop a thread in
    /// uninterruptible sleep and its exit check then never ends. Memory errors still are.
    pub fn start_sharing_dir_stuck(dir: &Path, confinement: &[&str], extra: &[&str]) -> Daemon {
        Self::start_checked(
            Some(dir.to_path_buf()),
            confinement,
            extra,
            |_| {},
            LeakCheck::Off,
        )
    }

    fn start_serving(
        dir: Option<PathBuf>,
        confinement: &[&str],
        extra: &[&str],
        prepare: impl FnOnce(&Path),
    ) -> Daemon {
        Self::start_checked(dir, confinement, extra, prepare, LeakCheck::WhereItRuns)
    }

    fn start_checked(
        dir: Option<PathBuf>,
        confinement: &[&str],
        extra: &[&str],
        prepare: impl FnOnce(&Path),
        leaks: LeakCheck,
    ) -> Daemon {
        let shared = tempfile::tempdir().expect("shared dir");
        let runtime = tempfile::tempdir().expect("runtime dir");
        let shared_dir = dir.unwrap_or_else(|| shared.path().to_path_buf());
        prepare(&shared_dir);
        let socket = runtime.path().join("vfs.sock");
        let stderr_path = runtime.path().join("daemon.stderr");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let sanitized = sanitized_bin().is_some();
        let mut cmd = Command::new(daemon_bin());
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared_dir)
            .args(confinement)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if sanitized {
            let args: Vec<&str> = confinement.iter().chain(extra).copied().collect();
            cmd.env("ASAN_OPTIONS", asan_options(&args, leaks));
        }
        let child = cmd.spawn().expect("spawning virtiofsd-kr");
        let mut daemon = Daemon {
            child: Some(child),
            shared,
            shared_dir,
            runtime,
            socket,
            stderr_path,
            sanitized,
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

impl Daemon {
    /// Panics with the daemon's stderr if it holds a sanitizer report or a panic, or if
    /// `status` is the sanitizer's exit status.
    fn check_sanitizer(&self, status: Option<ExitStatus>) {
        use std::os::unix::process::ExitStatusExt;
        let stderr = self.stderr();
        if let Some(line) = sanitizer_report(&stderr) {
            panic!("the sanitized daemon reported `{line}`; stderr:\n{stderr}");
        }
        if let Some(status) = status.filter(|s| s.code() == Some(SANITIZER_EXIT_CODE)) {
            panic!(
                "the sanitized daemon exited with the sanitizer's status ({status}, signal {:?}); \
                 stderr:\n{stderr}",
                status.signal()
            );
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM (as a launcher stops it; a sanitized daemon's leak check runs on the way
        // out), SIGKILL after `END_GRACE`.
        let status = self
            .child
            .take()
            .and_then(|mut child| vm_tests::daemon::end_daemon(&mut child));
        if std::thread::panicking() {
            eprintln!("--- daemon stderr ---\n{}", self.stderr());
        } else if self.sanitized {
            self.check_sanitizer(status);
        }
        let _ = &self.runtime;
    }
}
