//! The single-node Ceph dev cluster for the daemon's CephFS tests, and volumes made on it
//! with the daemon's own `volume create` (so every test also exercises that command).
//!
//! The cluster is started by `scripts/ceph-dev-cluster.sh start` (idempotent; left running,
//! `scripts/test.sh` stops it at the end). If it cannot start, the tests fail and say what to
//! run: they never pass without a cluster.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

const BIN: &str = env!("CARGO_BIN_EXE_virtiofsd-kr");

pub struct Cluster {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub admin_keyring: PathBuf,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate lives in the workspace")
        .to_path_buf()
}

/// The running dev cluster, started on first use.
pub fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let script = repo().join("scripts/ceph-dev-cluster.sh");
        let out = Command::new(&script)
            .arg("start")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script:?}: {e}"));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "the CephFS tests need the dev cluster and starting it failed ({}): run `{} start` \
             as root and read its output",
            out.status,
            script.display()
        );
        let conf = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            conf.is_file(),
            "cluster script printed no conf path: {conf:?}"
        );
        let dir = conf.parent().expect("conf has a directory").to_path_buf();
        Cluster {
            admin_keyring: dir.join("keyring"),
            conf,
            dir,
        }
    })
}

/// A name no other test (or earlier run against the same cluster) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

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
        let name = unique(prefix);
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
        let ok = Command::new(repo().join("scripts/ceph-dev-cluster.sh"))
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
        let ok = Command::new(repo().join("scripts/ceph-dev-cluster.sh"))
            .arg("mds-start")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok && !std::thread::panicking() {
            panic!("scripts/ceph-dev-cluster.sh mds-start failed: the dev cluster has no MDS");
        }
    }
}
