//! The single-node Ceph dev cluster for the daemon's CephFS tests, and volumes made on it
//! with the daemon's own `volume create` (so every test also exercises that command).
//!
//! The cluster comes from `vm_tests::ceph_dev` (started by `scripts/ceph-dev-cluster.sh
//! start`; if it cannot start, the tests fail and say what to run).

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_virtiofsd-kr");

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
