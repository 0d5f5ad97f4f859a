//! The single-node Ceph dev cluster for the daemon's CephFS tests, and volumes made on it
//! with the daemon's own `volume create` (so every test also exercises that command).
//!
//! The cluster comes from `vm_tests::ceph_dev` (started by `scripts/ceph-dev-cluster.sh
//! start`; if it cannot start, the tests fail and say what to run).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vm_tests::frontend::TestFrontend;
use vm_tests::fuse::{FuseSession, ROOT};

const BIN: &str = env!("CARGO_BIN_EXE_virtiofsd-kr");
/// How long a daemon may take to offer its socket (or to refuse to start).
const START: Duration = Duration::from_secs(30);

pub use vm_tests::ceph_dev::{cluster, unique};

/// Runs `virtiofsd-kr volume ARGS...` as the cluster's admin; (success, stdout, stderr).
pub fn volume_cmd(args: &[&str]) -> (bool, String, String) {
    let c = cluster();
    let keys = c.dir.join("volume-keyrings");
    let out = Command::new(BIN)
        .arg("volume")
        .args(args)
        .arg("--ceph-conf")
        .arg(&c.conf)
        .arg("--ceph-keyring")
        .arg(&c.admin_keyring)
        .arg("--keyring-dir")
        .arg(&keys)
        .output()
        .expect("run virtiofsd-kr volume");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A volume made with `volume create`, its identity and keyring.
pub struct Volume {
    pub name: String,
    pub path: String,
    pub id: String,
    pub keyring: PathBuf,
    pub info: serde_json::Value,
}

impl Volume {
    pub fn create(prefix: &str, quota: Option<&str>) -> Volume {
        let name = unique(&format!("{prefix}-"));
        let mut args = vec!["create", name.as_str()];
        if let Some(q) = quota {
            args.extend(["--quota", q]);
        }
        let (ok, out, err) = volume_cmd(&args);
        assert!(ok, "volume create {name}: {err}");
        let info: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("volume create JSON {e}: {out}"));
        Volume {
            path: info["path"].as_str().expect("path").to_string(),
            id: info["ceph_id"].as_str().expect("ceph_id").to_string(),
            keyring: PathBuf::from(info["keyring"].as_str().expect("keyring")),
            name,
            info,
        }
    }

    /// The daemon flags that serve this volume as its own identity.
    pub fn daemon_args(&self) -> Vec<String> {
        let c = cluster();
        vec![
            "--backend".into(),
            "cephfs".into(),
            "--ceph-conf".into(),
            c.conf.display().to_string(),
            "--ceph-id".into(),
            self.id.clone(),
            "--ceph-keyring".into(),
            self.keyring.display().to_string(),
            "--ceph-root".into(),
            self.path.clone(),
        ]
    }
}

/// Tests of one binary run in parallel: those that need a working MDS hold this shared, an
/// outage holds it exclusively.
static MDS_USERS: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held by a test that needs the MDS up for its whole run.
pub fn mds_needed() -> std::sync::RwLockReadGuard<'static, ()> {
    MDS_USERS.read().unwrap_or_else(|p| p.into_inner())
}

/// The MDS stopped (`scripts/ceph-dev-cluster.sh mds-stop`) until this is dropped, which
/// starts it again and waits for it to be active, also when the test fails. Waits for the
/// binary's other Ceph tests to finish first (see [`mds_needed`]).
pub struct MdsOutage {
    _exclusive: std::sync::RwLockWriteGuard<'static, ()>,
}

impl MdsOutage {
    pub fn start() -> MdsOutage {
        let exclusive = MDS_USERS.write().unwrap_or_else(|p| p.into_inner());
        cluster();
        let ok = Command::new(vm_tests::ceph_dev::script())
            .arg("mds-stop")
            .status()
            .expect("run mds-stop")
            .success();
        assert!(ok, "scripts/ceph-dev-cluster.sh mds-stop failed");
        MdsOutage {
            _exclusive: exclusive,
        }
    }
}

impl Drop for MdsOutage {
    fn drop(&mut self) {
        let ok = Command::new(vm_tests::ceph_dev::script())
            .arg("mds-start")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok && !std::thread::panicking() {
            panic!("scripts/ceph-dev-cluster.sh mds-start failed: the dev cluster has no MDS");
        }
    }
}

/// A daemon serving a CephFS volume, ended with SIGTERM when dropped (so its MDS session closes).
pub struct CephDaemon {
    pub child: Child,
    pub socket: PathBuf,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl CephDaemon {
    /// Starts the daemon with `args` after `--socket-path`; does not wait.
    pub fn spawn(args: &[String]) -> CephDaemon {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("vfs.sock");
        let stderr = dir.path().join("stderr");
        let child = Command::new(BIN)
            .arg("--socket-path")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        CephDaemon {
            child,
            socket,
            stderr,
            _dir: dir,
        }
    }

    /// Starts and waits for the socket.
    pub fn start(volume: &Volume, extra: &[&str]) -> CephDaemon {
        let mut args = volume.daemon_args();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut d = Self::spawn(&args);
        let deadline = Instant::now() + START;
        while !d.socket.exists() {
            if let Some(status) = d.child.try_wait().unwrap() {
                panic!("daemon exited ({status}):\n{}", d.stderr());
            }
            assert!(Instant::now() < deadline, "no socket:\n{}", d.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The file its stderr goes to.
    pub fn stderr_path(&self) -> PathBuf {
        self.stderr.clone()
    }

    pub fn session(&self) -> FuseSession {
        let mut s = FuseSession::new(TestFrontend::connect(&self.socket).expect("connect"));
        s.init().expect("FUSE_INIT");
        s
    }

    /// Waits for the exit of a daemon that must refuse to start: (code, stderr).
    pub fn refused(mut self) -> (i32, String) {
        let deadline = Instant::now() + START;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(
                    !self.socket.exists(),
                    "a refused daemon left its socket behind"
                );
                return (status.code().unwrap_or(-1), self.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not refuse in {START:?}:\n{}",
                self.stderr()
            );
            assert!(
                !self.socket.exists(),
                "the socket was offered before the refusal:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for CephDaemon {
    fn drop(&mut self) {
        let _ = vm_tests::daemon::end_daemon(&mut self.child);
    }
}

/// After an outage: a CREATE succeeds again within a minute of the MDS being back, and the
/// file `kept` (node id, written with "kept" before the outage) reads back whole.
pub fn service_resumes(s: &mut FuseSession, kept: u64) {
    let t0 = Instant::now();
    loop {
        match s.create(ROOT, "after", libc::O_RDWR, 0o644) {
            Ok((e, o)) => {
                s.release(e.nodeid, o.fh).expect("RELEASE");
                break;
            }
            Err(e) => assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no CREATE 60 s after the MDS came back: {e}"
            ),
        }
    }
    let o = s.open(kept, libc::O_RDONLY).expect("OPEN");
    assert_eq!(s.read(kept, o.fh, 0, 16).expect("READ"), b"kept");
    s.release(kept, o.fh).expect("RELEASE");
}
