//! Host mounts for containers: one `virtiofsd-kr mount --backend cephfs` process per
//! (volume, mount ID), serving the volume as its own identity at
//! `STATE/mounts/NAME/ID`, metered with the labels tenant, volume and pod (the mount ID:
//! one per container), with the volume's rate limits.
//!
//! Owns spawning and stopping those processes, and reconciling the recorded mounts with what
//! is really mounted when the plugin starts. The serving processes are in their own process
//! groups, so they outlive a plugin that is killed or restarted. It must not decide *whether*
//! to mount (that is `protocol`).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::protocol::{ActiveMount, Mounter, PluginState};
use crate::control::volume::ServeIdentity;

/// How long a new mount may take (pre-flight connection included).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(40);

/// Where and how mounts are served.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// The `virtiofsd-kr` binary to run (`mount ...`).
    pub exe: PathBuf,
    pub state_dir: PathBuf,
    /// The tenant label of every mount.
    pub tenant: String,
    /// Extra flags for every `mount` (e.g. `--cache=never`).
    pub extra: Vec<String>,
}

impl MountConfig {
    pub fn mounts_dir(&self) -> PathBuf {
        self.state_dir.join("mounts")
    }
    pub fn accounting_dir(&self) -> PathBuf {
        self.state_dir.join("accounting")
    }
    fn run_dir(&self) -> PathBuf {
        self.state_dir.join("run")
    }
    fn log_dir(&self) -> PathBuf {
        self.state_dir.join("log")
    }
}

/// Spawns and stops the serving processes.
pub struct ProcessMounter {
    config: MountConfig,
    /// Children this process started (reaped when they end).
    children: Vec<Child>,
}

impl ProcessMounter {
    pub fn new(config: MountConfig) -> Self {
        ProcessMounter {
            config,
            children: Vec::new(),
        }
    }

    fn reap(&mut self) {
        self.children
            .retain_mut(|c| matches!(c.try_wait(), Ok(None)));
    }

    /// The mount's metrics socket: short, whatever the name and ID (sun_path is 108 bytes).
    fn metrics_path(&self, name: &str, id: &str) -> PathBuf {
        let mut h = DefaultHasher::new();
        (name, id).hash(&mut h);
        self.config
            .run_dir()
            .join(format!("{:016x}.sock", h.finish()))
    }

    fn command(
        &self,
        name: &str,
        id: &str,
        identity: &ServeIdentity,
        mountpoint: &Path,
        metrics: &Path,
    ) -> Command {
        let mut cmd = Command::new(&self.config.exe);
        cmd.arg("mount")
            .args(["--backend", "cephfs", "--ceph-conf"])
            .arg(&identity.conf)
            .args(["--ceph-id", &identity.ceph_id, "--ceph-keyring"])
            .arg(&identity.keyring)
            .args(["--ceph-root", &identity.root])
            // Extended attributes and POSIX ACLs, as on a local volume (the daemon's default
            // is off for both, as the reference virtiofsd's); `auto`: a host kernel without
            // FUSE ACL support still mounts, without ACLs.
            .args(["--xattr", "--posix-acl=auto"]);
        if let Some(fs) = &identity.fs_name {
            cmd.args(["--ceph-fs", fs]);
        }
        cmd.args([
            "--tenant",
            &self.config.tenant,
            "--volume",
            name,
            "--pod",
            id,
        ])
        .arg("--metrics-addr")
        .arg(format!("unix:{}", metrics.display()))
        .arg("--accounting-dir")
        .arg(self.config.accounting_dir());
        if identity.limits.bytes_per_sec > 0 {
            cmd.args([
                "--rate-limit-bytes",
                &identity.limits.bytes_per_sec.to_string(),
            ]);
        }
        if identity.limits.ops_per_sec > 0 {
            cmd.args(["--rate-limit-ops", &identity.limits.ops_per_sec.to_string()]);
        }
        cmd.args(&self.config.extra).arg(mountpoint);
        cmd
    }
}

/// Whether `path` is a FUSE mount in this mount namespace.
pub fn is_fuse_mount(path: &Path) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    table.lines().any(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let mountpoint = fields.get(4).map(|m| unescape(m));
        let fstype = fields
            .iter()
            .position(|f| *f == "-")
            .and_then(|i| fields.get(i + 1));
        mountpoint.as_deref() == Some(want.as_str())
            && fstype.is_some_and(|t| t.starts_with("fuse"))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether `pid` is a `virtiofsd-kr mount` serving `mountpoint`.
fn serves(pid: u32, mountpoint: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let want = mountpoint.as_os_str().as_encoded_bytes();
    args.get(1) == Some(&&b"mount"[..]) && args.contains(&want)
}

fn lazy_unmount(path: &Path) {
    if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        if e != nix::errno::Errno::EINVAL && e != nix::errno::Errno::ENOENT {
            warn!(path = %path.display(), "unmounting: {e}");
        }
    }
}

impl Mounter for ProcessMounter {
    fn mount(
        &mut self,
        name: &str,
        id: &str,
        identity: &ServeIdentity,
    ) -> Result<ActiveMount, String> {
        self.reap();
        let mountpoint = self.config.mounts_dir().join(name).join(id);
        let metrics = self.metrics_path(name, id);
        for dir in [&mountpoint, &self.config.run_dir(), &self.config.log_dir()] {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        if is_fuse_mount(&mountpoint) {
            // Left by a server that died: a dead FUSE mount answers ENOTCONN.
            lazy_unmount(&mountpoint);
        }
        let log = self.config.log_dir().join(format!("{name}.{id}.log"));
        let stderr =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let mut cmd = self.command(name, id, identity, &mountpoint, &metrics);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.config.exe.display()))?;
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if is_fuse_mount(&mountpoint) {
                break;
            }
            let failed = |why: String| {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let last = text
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .to_string();
                format!("mounting volume {name}: {why}: {last}")
            };
            if let Ok(Some(status)) = child.try_wait() {
                return Err(failed(format!("the server exited ({status})")));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!("not mounted after {MOUNT_TIMEOUT:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = child.id();
        info!(volume = name, id, pid, path = %mountpoint.display(), "mounted");
        self.children.push(child);
        Ok(ActiveMount {
            path: mountpoint,
            pid,
            metrics: format!("unix:{}", metrics.display()),
        })
    }

    fn unmount(&mut self, name: &str, id: &str, mount: &ActiveMount) -> Result<(), String> {
        lazy_unmount(&mount.path);
        if serves(mount.pid, &mount.path) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(mount.pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        // Our own child: wait for it a moment so its journal's last record is written.
        if let Some(i) = self.children.iter().position(|c| c.id() == mount.pid) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if !matches!(self.children[i].try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.reap();
        let _ = std::fs::remove_dir(&mount.path);
        let _ = std::fs::remove_dir(self.config.mounts_dir().join(name));
        info!(volume = name, id, "unmounted");
        Ok(())
    }
}

/// Brings the recorded mounts in line with reality after a (re)start: a mount whose server
/// still serves it is kept; one whose server is gone is served again at the same path (a
/// container started before keeps its bind of the old, dead mount: FUSE cannot hand a
/// mount over); one that cannot be served again is dropped with a warning. FUSE mounts
/// under the mounts directory that no record names are unmounted.
pub fn reconcile(
    state: &mut PluginState,
    mounter: &mut ProcessMounter,
    mut identity: impl FnMut(&str) -> Result<ServeIdentity, String>,
) {
    let mut kept = 0;
    let mut redone = 0;
    for (name, mounts) in state.mounts.iter_mut() {
        let ids: Vec<String> = mounts.keys().cloned().collect();
        for id in ids {
            let Some(counted) = mounts.get_mut(&id) else {
                continue;
            };
            if serves(counted.mount.pid, &counted.mount.path) && is_fuse_mount(&counted.mount.path)
            {
                kept += 1;
                continue;
            }
            match identity(name).and_then(|ident| mounter.mount(name, &id, &ident)) {
                Ok(m) => {
                    counted.mount = m;
                    redone += 1;
                }
                Err(e) => {
                    warn!(volume = %name, id = %id, "dropping a recorded mount that cannot be served again: {e}");
                    mounts.remove(&id);
                }
            }
        }
    }
    state.mounts.retain(|_, m| !m.is_empty());
    // Strays: mounted, but in no record (e.g. the state file was lost).
    let root = mounter.config.mounts_dir();
    if let Ok(names) = std::fs::read_dir(&root) {
        for name in names.flatten() {
            let Ok(ids) = std::fs::read_dir(name.path()) else {
                continue;
            };
            for id in ids.flatten() {
                let (n, i) = (
                    name.file_name().to_string_lossy().into_owned(),
                    id.file_name().to_string_lossy().into_owned(),
                );
                let recorded = state.mounts.get(&n).is_some_and(|m| m.contains_key(&i));
                if !recorded && is_fuse_mount(&id.path()) {
                    warn!(path = %id.path().display(), "unmounting a mount no record names");
                    lazy_unmount(&id.path());
                }
            }
        }
    }
    info!(kept, served_again = redone, "mounts reconciled");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_unescape() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
    }

    #[test]
    fn metrics_paths_stay_short() {
        let m = ProcessMounter::new(MountConfig {
            exe: "/bin/true".into(),
            state_dir: "/var/lib/virtiofsd-kr/docker".into(),
            tenant: "docker".into(),
            extra: vec![],
        });
        let p = m.metrics_path(&"n".repeat(64), &"i".repeat(128));
        assert!(p.as_os_str().len() < 100, "{}", p.display());
        assert_ne!(p, m.metrics_path("a", "b"));
        assert_eq!(m.metrics_path("a", "b"), m.metrics_path("a", "b"));
    }

    #[test]
    fn a_pid_that_is_not_our_server_is_not_trusted() {
        // This test process is not a `virtiofsd-kr mount`.
        assert!(!serves(std::process::id(), Path::new("/mnt/x")));
        assert!(!serves(u32::MAX, Path::new("/mnt/x")));
        assert!(!is_fuse_mount(Path::new("/definitely/not/mounted")));
    }
}
