//! The daemon binary started as a bare process, for tests that watch it from outside rather
//! than through the test frontend (`sandbox.rs`, `ordering.rs`): a fresh shared directory
//! (world-writable, with a `hello` file) and runtime directory, its stderr in a file, waits
//! that end at once if it exits, and a kill on drop. Starting does not wait for the socket:
//! what a test waits for is its own business.

#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_virtiofsd-kr");

/// How to start it beyond its flags.
#[derive(Default)]
pub struct Launch<'a> {
    /// A program that execs the daemon (e.g. `setpriv ...`).
    pub wrapper: Option<&'a [&'a str]>,
    /// Flags naming what it serves (default: `--shared-dir` of the fresh directory).
    pub backend: Option<Vec<String>>,
    /// Extra environment variables.
    pub env: Vec<(&'a str, String)>,
}

pub struct Launched {
    pub child: Child,
    pub shared: TempDir,
    _runtime: TempDir,
    pub socket: PathBuf,
    log: PathBuf,
}

impl Launched {
    pub fn start(how: Launch<'_>, args: &[&str]) -> Launched {
        let shared = tempfile::tempdir().unwrap();
        let runtime = tempfile::tempdir().unwrap();
        for dir in [shared.path(), runtime.path()] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        std::fs::write(shared.path().join("hello"), "hello from the host\n").unwrap();
        let socket = runtime.path().join("vfs.sock");
        let log = runtime.path().join("stderr");
        let mut cmd = match how.wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let backend = how.backend.unwrap_or_else(|| {
            vec![
                "--shared-dir".to_string(),
                shared.path().display().to_string(),
            ]
        });
        let child = cmd
            .arg("--socket-path")
            .arg(&socket)
            .args(&backend)
            .args(args)
            .envs(how.env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Launched {
            child,
            shared,
            _runtime: runtime,
            socket,
            log,
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Its exit status, waiting at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Polls `probe` until it gives a value; panics with the daemon's stderr if the daemon
    /// exits first or `timeout` passes (`what` names what was waited for).
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Launched) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = probe(self) {
                return found;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "daemon exited ({status}) before {what}; stderr:\n{}",
                    self.stderr()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {what} after {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // Our own child, by its pid; a sandboxed child follows (PR_SET_PDEATHSIG).
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- daemon stderr ---\n{}", self.stderr());
        }
    }
}
