//! The CephFS side of the guest tests: the single-node dev cluster
//! (`scripts/ceph-dev-cluster.sh start`, idempotent, left running), volumes with optional
//! quotas, cephx tenants confined to one volume, snapshots, and an MDS outage that always ends
//! with the MDS active again (`ceph-dev-cluster.sh mds-stop` / `mds-start`).
//!
//! Volumes are made the way an operator does it today, until `virtiofsd-kr volume create` /
//! `volume snapshot` exist (then only this file changes): an admin libcephfs mount makes
//! `/volumes/NAME`, sets `ceph.quota.max_bytes` on it and makes `.snap/SNAP` in it;
//! `ceph fs authorize cephfs client.ID /volumes/NAME rw` makes the tenant's key.
//!
//! No mocks and no skipping: when the cluster cannot be started the test fails and says what
//! to run.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm_tests::CephShare;

use super::host_view::{CephVolumeView, HostView};

/// The CephFS filesystem the dev cluster makes.
pub const FS_NAME: &str = "cephfs";
/// The MDS daemon of the dev cluster (`ceph-mds -i a`).
const MDS_ID: &str = "a";

pub use vm_tests::ceph_dev::{cluster, unique};

/// `ceph -c CONF ARGS...` as the admin; panics with its stderr on failure.
pub fn ceph_command(args: &[&str]) -> Vec<u8> {
    let c = cluster();
    let out = Command::new("timeout")
        .arg("60")
        .arg("ceph")
        .arg("-c")
        .arg(&c.conf)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running `ceph {}`: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`ceph {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A cephx identity and its keyring file.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// The id without `client.`.
    pub id: String,
    pub keyring: PathBuf,
}

/// Makes `client.<id>` with read-write MDS caps on `path` only (and the matching OSD caps),
/// and writes its keyring under the cluster's `tenants/`.
pub fn authorize_tenant(id: &str, path: &str) -> Tenant {
    let keyring_text = ceph_command(&[
        "fs",
        "authorize",
        FS_NAME,
        &format!("client.{id}"),
        path,
        "rw",
    ]);
    let dir = cluster().dir.join("tenants");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let keyring = dir.join(format!("{id}.keyring"));
    std::fs::write(&keyring, keyring_text)
        .unwrap_or_else(|e| panic!("writing {}: {e}", keyring.display()));
    Tenant {
        id: id.to_string(),
        keyring,
    }
}

/// An admin libcephfs mount of `root`.
pub fn admin_view(root: &str) -> CephVolumeView {
    let c = cluster();
    CephVolumeView::connect(&c.conf, "admin", &c.admin_keyring, root)
}

/// A volume `/volumes/NAME` with a tenant allowed on it alone.
#[derive(Debug, Clone)]
pub struct CephVolume {
    /// The directory name under `/volumes`.
    pub name: String,
    /// `/volumes/NAME`.
    pub path: String,
    /// `client.t<NAME>`, rw on this volume only.
    pub tenant: Tenant,
}

impl CephVolume {
    /// Makes a fresh volume (named from `prefix`) and its tenant.
    pub fn create(prefix: &str) -> CephVolume {
        let name = unique(prefix);
        let root = admin_view("/");
        match root.mkdir("volumes") {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => panic!("{e}"),
        }
        root.mkdir(&format!("volumes/{name}"))
            .unwrap_or_else(|e| panic!("{e}"));
        drop(root);
        let path = format!("/volumes/{name}");
        let tenant = authorize_tenant(&format!("t{name}"), &path);
        CephVolume { name, path, tenant }
    }

    /// What the daemon needs to serve this volume as its own tenant.
    pub fn share(&self) -> CephShare {
        self.share_as(&self.tenant)
    }

    /// This volume's root served as `tenant` (another tenant's key fails to mount it).
    pub fn share_as(&self, tenant: &Tenant) -> CephShare {
        CephShare {
            conf: cluster().conf.clone(),
            id: tenant.id.clone(),
            keyring: tenant.keyring.clone(),
            root: self.path.clone(),
        }
    }

    /// An admin mount of the volume's root: the host's view of what the guest sees.
    pub fn view(&self) -> CephVolumeView {
        admin_view(&self.path)
    }

    /// Limits the volume to `bytes` (`ceph.quota.max_bytes` on its directory).
    pub fn set_quota(&self, bytes: u64) {
        self.view()
            .setxattr("", "ceph.quota.max_bytes", bytes.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Takes a snapshot of the whole volume (`mkdir .snap/NAME` in its root, as the admin).
    pub fn snapshot(&self, snap: &str) {
        self.view()
            .mkdir_in(".snap", snap)
            .unwrap_or_else(|e| panic!("snapshot {snap} of {}: {e}", self.path));
    }
}

/// What the running MDS process says its state is (its admin socket's `status`), e.g.
/// `up:active`; `None` when it does not answer.
fn mds_daemon_state() -> Option<String> {
    let asok = cluster()
        .dir
        .join("run")
        .join(format!("ceph-mds.{MDS_ID}.asok"));
    let out = Command::new("timeout")
        .arg("10")
        .arg("ceph")
        .arg("--admin-daemon")
        .arg(&asok)
        .arg("status")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    status.get("state")?.as_str().map(str::to_string)
}

/// Waits up to `timeout` until the MDS process itself reports `up:active` and the monitors'
/// `ceph mds stat` agrees without calling it laggy (a killed MDS stays "up:active (laggy or
/// crashed)" in the map while there is no standby, so the map alone proves nothing).
pub fn wait_mds_active(timeout: Duration) -> Result<Duration, String> {
    let c = cluster();
    let started = Instant::now();
    let (mut map, mut daemon) = (String::new(), None);
    while started.elapsed() < timeout {
        daemon = mds_daemon_state();
        let out = Command::new("timeout")
            .arg("20")
            .arg("ceph")
            .arg("-c")
            .arg(&c.conf)
            .args(["--connect-timeout", "10", "mds", "stat"])
            .stdin(Stdio::null())
            .output();
        if let Ok(o) = out {
            map = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if o.status.success()
                && map.contains("up:active")
                && !map.contains("laggy")
                && daemon.as_deref() == Some("up:active")
            {
                return Ok(started.elapsed());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!(
        "no active MDS within {timeout:?}; last `ceph mds stat`: {map:?}, the MDS process \
         says: {daemon:?}"
    ))
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn mds_pid_file() -> PathBuf {
    cluster().dir.join("run").join(format!("mds.{MDS_ID}.pid"))
}

/// The running MDS's pid, from the cluster's pid file.
pub fn mds_pid() -> Option<i32> {
    let text = std::fs::read_to_string(mds_pid_file()).ok()?;
    let pid: i32 = text.trim().parse().ok()?;
    pid_alive(pid).then_some(pid)
}

/// Runs `scripts/ceph-dev-cluster.sh ARG` (which serialises its callers with a lock).
fn cluster_script(arg: &str) -> Result<(), String> {
    let script = vm_tests::ceph_dev::script();
    let out = Command::new(&script)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `{} {arg}`: {e}", script.display()))?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{} {arg}` failed ({}): {}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The MDS stopped (`ceph-dev-cluster.sh mds-stop`: SIGKILL, as a crash); dropping this
/// restarts it (`mds-start`) and waits until it is active again, whatever happened in between
/// (a failing test included).
///
/// Another process's `ceph-dev-cluster.sh start` during the outage revives the MDS early (the
/// script brings a missing MDS back instead of re-creating the cluster): watch [`mds_pid`] to
/// notice.
pub struct MdsOutage {
    /// When the MDS was killed.
    pub stopped_at: Instant,
    restarted: bool,
}

impl MdsOutage {
    /// Kills the cluster's MDS and waits for the process to be gone.
    pub fn begin() -> MdsOutage {
        cluster();
        let pid = mds_pid().unwrap_or_else(|| {
            panic!(
                "no running MDS (pid file {}): is the dev cluster up?",
                mds_pid_file().display()
            )
        });
        let outage = MdsOutage {
            stopped_at: Instant::now(),
            restarted: false,
        };
        cluster_script("mds-stop").unwrap_or_else(|e| panic!("{e}"));
        assert!(!pid_alive(pid), "the MDS (pid {pid}) survived mds-stop");
        outage
    }

    /// Starts the MDS again and waits until it is really active (its own admin socket says
    /// so, and the map does not call it laggy); returns how long that took.
    pub fn end(&mut self) -> Result<Duration, String> {
        self.restarted = true;
        let t0 = Instant::now();
        cluster_script("mds-start")?;
        wait_mds_active(Duration::from_secs(180))?;
        Ok(t0.elapsed())
    }
}

impl Drop for MdsOutage {
    fn drop(&mut self) {
        if !self.restarted {
            match self.end() {
                Ok(t) => eprintln!("MDS outage guard: the MDS is active again after {t:?}"),
                Err(e) => eprintln!(
                    "MDS outage guard: restarting the MDS failed: {e}; run `scripts/\
                     ceph-dev-cluster.sh mds-start` (or `stop` then `start`)"
                ),
            }
        }
    }
}
