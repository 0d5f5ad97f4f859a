//! What an observer may rely on the moment it sees the daemon get somewhere, checked with the
//! other side of the ordering slowed down on purpose (`VIRTIOFSD_KR_TEST_STALL`, see
//! `src/stall.rs`).
//!
//! A hypervisor (or a test) acts as soon as the vhost-user socket appears, and reads the
//! supervisor's state as soon as the sandboxed child serves. If the code does not order the
//! promised state before that event, the promise holds only when scheduling is kind: on a
//! loaded CI machine it fails now and then (CI caught the supervisor still privileged while
//! its child served). Each test here stalls the daemon right after the event and checks the
//! promise at once, so code that is merely fast fails every run.
//!
//! Owns starting the daemon with a stall and checking from outside; the same promises under
//! real load are exercised by `scripts/stress-test.sh`.

mod inventory;
mod launched;

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use inventory::{descendants, status_field};
use launched::{Launch, Launched};
use nix::sys::signal::{kill, Signal};
use virtiofsd_kr::accounting::server::{http_request, MetricsAddr};
use virtiofsd_kr::stall;

/// How long anything the daemon does on its own may take on a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(20);
/// The pause after the observed event: far longer than any scheduling hiccup the tests
/// could otherwise have been lucky with.
const STALL_MS: u64 = 1500;

/// The daemon as a bare process (`launched.rs`), pausing at a start-up point.
type Daemon = Launched;

impl Launched {
    /// Starts the daemon on a fresh directory with `args`, pausing at `point`.
    fn start_stalled(point: &str, args: &[&str]) -> Daemon {
        Launched::start(
            Launch {
                env: vec![(stall::ENV, format!("{point}:{STALL_MS}"))],
                ..Launch::default()
            },
            args,
        )
    }

    /// Polls until `ready` is true (see `Launched::wait_for`).
    fn wait_until(&mut self, what: &str, mut ready: impl FnMut(&Daemon) -> bool) {
        self.wait_for(what, TIMEOUT, |d| ready(d).then_some(()));
    }

    fn exit_status(&mut self) -> ExitStatus {
        self.wait_exit(TIMEOUT)
            .unwrap_or_else(|| panic!("no exit after {TIMEOUT:?}; stderr:\n{}", self.stderr()))
    }
}

fn socket_exists(d: &Daemon) -> bool {
    d.socket.exists()
}

/// A launcher stops the daemon as soon as its socket exists: the daemon must already take
/// SIGTERM as a clean exit (status 0, socket removed), not die of it and leave its socket.
#[test]
fn sigterm_as_soon_as_the_socket_exists_is_a_clean_exit() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let mut d = Daemon::start_stalled(
            stall::SOCKET_CREATED,
            &["--sandbox", "none", "--seccomp", "none"],
        );
        d.wait_until("socket", socket_exists);
        kill(d.pid(), sig).unwrap();
        let status = d.exit_status();
        assert_eq!(
            status.code(),
            Some(0),
            "{sig} right after the socket appeared: {status}; stderr:\n{}",
            d.stderr()
        );
        assert!(!d.socket.exists(), "{sig}: socket left behind");
    }
}

/// A frontend connects the moment the socket appears: it must already be listening (not
/// refused, as when the path exists between bind and listen) and carry the group
/// `--socket-group` gives it (not denied to that group). The first start pauses right after
/// the bind (`socket-bound`), so a daemon that bound the socket in place would show it
/// without its group on every run; four more starts without a pause check the same at full
/// speed.
#[test]
fn the_socket_listens_with_its_group_from_the_moment_it_appears() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let group = ["nogroup", "daemon", "users"]
        .into_iter()
        .find_map(|g| nix::unistd::Group::from_name(g).ok().flatten())
        .expect("a group other than root's (nogroup, daemon or users)");
    for attempt in 0..5 {
        let mut d = Daemon::start_stalled(
            if attempt == 0 { "socket-bound" } else { "none" },
            &[
                "--sandbox",
                "none",
                "--seccomp",
                "none",
                "--socket-group",
                &group.name,
            ],
        );
        let socket = d.socket.clone();
        let meta = first_sight(&mut d, &socket);
        let connected = std::os::unix::net::UnixStream::connect(&d.socket);
        assert!(
            connected.is_ok(),
            "start {attempt}: connecting the moment the socket appeared: {:?}",
            connected.err()
        );
        assert_eq!(meta.gid(), group.gid.as_raw(), "start {attempt}: group");
        assert_eq!(
            meta.permissions().mode() & 0o060,
            0o060,
            "start {attempt}: mode {:o}",
            meta.permissions().mode()
        );
    }
}

/// The daemon with accounting and its metrics endpoint on a `unix:` socket in a directory of
/// its own, pausing at a start-up point.
struct MeteredDaemon {
    daemon: Daemon,
    metrics: MetricsAddr,
    runtime: tempfile::TempDir,
    _accounting: tempfile::TempDir,
}

impl MeteredDaemon {
    fn start(point: &str) -> MeteredDaemon {
        let accounting = tempfile::tempdir().unwrap();
        let runtime = tempfile::tempdir().unwrap();
        let metrics = MetricsAddr::Unix(runtime.path().join("metrics.sock"));
        let metrics_flag = format!("--metrics-addr={metrics}");
        let accounting_dir = accounting.path().display().to_string();
        let daemon = Daemon::start_stalled(
            point,
            &[
                "--sandbox",
                "none",
                "--seccomp",
                "none",
                "--tenant",
                "acme",
                "--volume",
                "vol",
                "--pod",
                "p",
                &metrics_flag,
                "--accounting-dir",
                &accounting_dir,
            ],
        );
        MeteredDaemon {
            daemon,
            metrics,
            runtime,
            _accounting: accounting,
        }
    }
}

/// The metrics endpoint answers as soon as the vhost-user socket exists, and the journal
/// has been replayed by then: a hypervisor that waits for the socket may scrape at once.
#[test]
fn metrics_answer_as_soon_as_the_socket_exists() {
    let mut d = MeteredDaemon::start(stall::SOCKET_CREATED);
    let metrics = d.metrics.clone();
    d.daemon.wait_until("socket", socket_exists);
    let (status, body) = http_request(&metrics, "GET", "/metrics", "")
        .unwrap_or_else(|e| panic!("scraping right after the socket appeared: {e}"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("virtiofs_written_bytes_total"), "{body}");
    let stderr = d.daemon.stderr();
    assert!(
        stderr.contains("accounting journal replayed"),
        "the socket exists before the journal was replayed:\n{stderr}"
    );
}

/// A scraper (or a watcher of the runtime directory) acts the moment the `unix:` metrics
/// socket appears: it must already listen and carry its final mode 0600, never the mode bind
/// gives before a chmod. The daemon pauses right after binding each socket, before its mode
/// is set: a socket bound in place and chmodded after shows up with the wrong mode for the
/// whole pause.
#[test]
fn the_metrics_socket_listens_with_its_mode_from_the_moment_it_appears() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = MeteredDaemon::start(stall::SOCKET_BOUND);
    let metrics = d.metrics.clone();
    let path = d.runtime.path().join("metrics.sock");
    let meta = first_sight(&mut d.daemon, &path);
    let connected = std::os::unix::net::UnixStream::connect(&path);
    assert!(
        connected.is_ok(),
        "connecting the moment the metrics socket appeared: {:?}",
        connected.err()
    );
    assert_eq!(
        format!("{:o}", meta.permissions().mode() & 0o7777),
        "600",
        "mode of the metrics socket when it appeared"
    );
    let (status, body) = http_request(&metrics, "GET", "/metrics", "")
        .unwrap_or_else(|e| panic!("scraping right after the metrics socket appeared: {e}"));
    assert_eq!(status, 200, "{body}");
    let leftovers: Vec<_> = std::fs::read_dir(d.runtime.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".vkr-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary names left: {leftovers:?}");
}

/// The metadata of `path` at the first moment it exists (a tight loop, no sleep).
fn first_sight(d: &mut Daemon, path: &std::path::Path) -> std::fs::Metadata {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            return meta;
        }
        if let Some(status) = d.child.try_wait().unwrap() {
            panic!("daemon exited ({status}); stderr:\n{}", d.stderr());
        }
        assert!(
            Instant::now() < deadline,
            "no {path:?}; stderr:\n{}",
            d.stderr()
        );
        std::thread::yield_now();
    }
}

/// The supervisor of `--sandbox namespace` holds no capability once its child serves (the
/// defect CI found: the child was serving while its parent was still privileged).
#[test]
fn the_supervisor_holds_no_privilege_once_its_child_serves() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the namespace sandbox needs root: run this test as root (scripts/test.sh does)"
    );
    let mut d = Daemon::start_stalled(
        stall::SUPERVISOR_FORKED,
        &["--sandbox", "namespace", "--seccomp", "kill"],
    );
    let supervisor = d.pid();
    // The child is serving once it is under its filter (seccomp is its last step before it
    // starts threads and takes the connection).
    d.wait_until("filtered child", |d| {
        descendants(d.pid())
            .into_iter()
            .any(|p| status_field(p, "Seccomp").as_deref() == Some("2"))
    });
    for field in ["CapEff", "CapPrm"] {
        let value = status_field(supervisor, field).unwrap_or_else(|| panic!("{field}"));
        assert_eq!(
            u64::from_str_radix(&value, 16).unwrap(),
            0,
            "the supervisor's {field} while its child serves"
        );
    }
    kill(supervisor, Signal::SIGTERM).unwrap();
    assert_eq!(d.exit_status().code(), Some(0), "stderr:\n{}", d.stderr());
}
