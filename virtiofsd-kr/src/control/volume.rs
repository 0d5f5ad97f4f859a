//! Volumes: the CephFS directories the daemon serves with `--backend cephfs`, and the cephx
//! identity each one is served as (`virtiofsd-kr volume create|rm|ls|inspect|snapshot`).
//!
//! Owns the layout (`<volumes root>/<NAME>`, default `/volumes/NAME`), the quota
//! (`ceph.quota.max_bytes` on the directory), the per-volume identity `client.vol-NAME`
//! whose MDS caps cover only that directory (made with the monitors' `fs authorize`, whose
//! OSD caps cover only the filesystem's data pools), its keyring file, and snapshots
//! (`mkdir <volume>/.snap/SNAP`). It is what a Docker volume plugin calls. It runs as a
//! cluster administrator (`--ceph-id admin` by default) on the host, never inside the
//! serving daemon, and must not be reachable from a guest.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cephfs_backend::mount::{MountOptions, XattrReply};
use cephfs_backend::rados::Rados;
use cephfs_backend::{CephError, CephInode, CephMount, UserPerm};
use serde::Serialize;

/// How the administrator's commands reach the cluster (the CLI's `volume` flags, converted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminOptions {
    /// ceph.conf naming the monitors.
    pub ceph_conf: PathBuf,
    /// cephx user allowed to make directories, set quotas and create identities.
    pub ceph_id: String,
    /// That user's keyring.
    pub ceph_keyring: PathBuf,
    /// The CephFS filesystem (`None`: the cluster's only one).
    pub ceph_fs: Option<String>,
    /// Directory inside CephFS that holds the volumes.
    pub volumes_root: String,
    /// Where the volumes' keyrings are written.
    pub keyring_dir: PathBuf,
}

/// Longest volume or snapshot name.
pub const MAX_NAME: usize = 64;

/// Names of volumes and snapshots: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot
/// (so never `.`, `..`, `.snap`, never a `/`). Checked before anything reaches CephFS.
pub fn check_name(text: &str) -> Result<&str, String> {
    check_token(text, MAX_NAME, "a volume name")
}

/// RADOS pool names (`--data-pool`, `-o pool=`): 1 to 128 of `A-Z a-z 0-9 . _ -`, not
/// starting with a dot.
pub fn check_pool_name(text: &str) -> Result<&str, String> {
    check_token(text, 128, "a pool name")
}

/// `text` if it is 1 to `max` of `A-Z a-z 0-9 . _ -` and does not start with a dot; else an
/// error naming `what` it should have been.
fn check_token<'a>(text: &'a str, max: usize, what: &str) -> Result<&'a str, String> {
    let ok = !text.is_empty()
        && text.len() <= max
        && !text.starts_with('.')
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(text)
    } else {
        let shown: String = text.chars().take(80).collect();
        Err(format!(
            "{shown:?}: {what} is 1 to {max} of A-Z a-z 0-9 . _ - (not starting with `.`)"
        ))
    }
}

fn name_arg(text: &str) -> Result<&str, String> {
    check_name(text)
}

/// What a new volume gets besides its directory and identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CreateSpec {
    /// Most bytes the volume may hold (`ceph.quota.max_bytes`).
    pub quota: Option<u64>,
    /// The RADOS data pool its files' data goes to (the directory layout's pool); made a data
    /// pool of the filesystem if it is not one yet.
    pub data_pool: Option<String>,
    /// Rate limits whoever serves the volume applies (kept as `user.` attributes of the
    /// directory, so every host serving it sees the same).
    pub limits: VolumeLimits,
}

/// A volume's own rate limits (0: unlimited).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VolumeLimits {
    pub bytes_per_sec: u64,
    pub ops_per_sec: u64,
}

/// The directory attributes that hold [`VolumeLimits`].
const LIMIT_BYTES_XATTR: &CStr = c"user.virtiofsd-kr.rate-limit-bytes";
const LIMIT_OPS_XATTR: &CStr = c"user.virtiofsd-kr.rate-limit-ops";

/// Everything needed to serve a volume as its own identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeIdentity {
    /// The directory inside CephFS (`--ceph-root`).
    pub root: String,
    /// The cephx user (`--ceph-id`).
    pub ceph_id: String,
    /// Its keyring on this host (`--ceph-keyring`).
    pub keyring: PathBuf,
    /// The ceph.conf (`--ceph-conf`).
    pub conf: PathBuf,
    /// The filesystem (`--ceph-fs`).
    pub fs_name: Option<String>,
    pub limits: VolumeLimits,
    pub quota_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("{0}")]
    Connect(#[from] CephError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("volume {0:?} does not exist")]
    NoSuchVolume(String),
    #[error("volume {0:?} already exists")]
    Exists(String),
    #[error("volume {volume:?} has no snapshot {snap:?}")]
    NoSuchSnapshot { volume: String, snap: String },
    #[error("snapshot {snap:?} of volume {volume:?} already exists")]
    SnapshotExists { volume: String, snap: String },
    #[error("--volumes-root {0:?}: give an absolute path inside CephFS without `.` or `..`")]
    BadRoot(String),
    #[error("monitor command {command}: {message}")]
    Mon { command: String, message: String },
    #[error("keyring {path:?}: {source}")]
    Keyring { path: PathBuf, source: io::Error },
    #[error("{0}")]
    BadName(String),
    #[error("data pool {0:?} does not exist in the cluster (create it first, e.g. `ceph osd pool create {0}`)")]
    NoSuchPool(String),
}

/// What `volume inspect` prints (and `create`, `ls` per volume), as JSON.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// The directory inside CephFS: the daemon's `--ceph-root`.
    pub path: String,
    /// `ceph.quota.max_bytes`; `None`: no quota.
    pub quota_bytes: Option<u64>,
    /// Bytes stored under the directory (`ceph.dir.rbytes`, updated lazily by the MDS).
    pub used_bytes: u64,
    /// The cephx user to serve it as: the daemon's `--ceph-id`.
    pub ceph_id: String,
    /// The user's keyring, if this host has it: the daemon's `--ceph-keyring`.
    pub keyring: Option<PathBuf>,
    /// Snapshot names (the guest sees them read-only under `/.snap`).
    pub snapshots: Vec<String>,
    /// The data pool set on the volume's layout (`None`: the filesystem's default).
    pub data_pool: Option<String>,
    /// Rate limits whoever serves it applies.
    pub limits: VolumeLimits,
}

/// An administrator's connection: a libcephfs mount of the filesystem's root for the
/// directories, and a RADOS client for the monitors (identities).
pub struct VolumeAdmin {
    mount: Arc<CephMount>,
    root: CephInode,
    args: AdminOptions,
    perm: UserPerm,
}

fn cstr(s: &str) -> Result<CString, VolumeError> {
    CString::new(s).map_err(|_| VolumeError::Io {
        what: format!("{s:?}"),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VolumeError {
    let what = what.into();
    move |source| VolumeError::Io { what, source }
}

impl VolumeAdmin {
    /// Connects as the administrator the arguments name.
    pub fn connect(args: &AdminOptions) -> Result<VolumeAdmin, VolumeError> {
        let root = args.volumes_root.trim_end_matches('/');
        if !root.starts_with('/')
            || root
                .split('/')
                .skip(1)
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(VolumeError::BadRoot(args.volumes_root.clone()));
        }
        let mount = CephMount::connect(&MountOptions {
            posix_acl: false,
            conf: &args.ceph_conf,
            id: &args.ceph_id,
            keyring: &args.ceph_keyring,
            root: "/",
            fs_name: args.ceph_fs.as_deref(),
            mount_timeout: std::time::Duration::from_secs(10),
        })?;
        let perm = UserPerm::new(0, 0, &[]).map_err(io_err("credentials"))?;
        let top = mount.root().map_err(io_err("the filesystem root"))?;
        let mut dir = top;
        for component in root.split('/').skip(1) {
            let name = cstr(component)?;
            dir = match mount.lookup(&dir, &name, &perm) {
                Ok((inode, _)) => inode,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    match mount.mkdir(&dir, &name, 0o755, &perm) {
                        Ok((made, _)) => made,
                        // Another `volume create` made it in between: use theirs.
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                            mount
                                .lookup(&dir, &name, &perm)
                                .map_err(io_err(format!("looking up {root}")))?
                                .0
                        }
                        Err(e) => return Err(io_err(format!("creating {root}"))(e)),
                    }
                }
                Err(e) => return Err(io_err(format!("looking up {root}"))(e)),
            };
        }
        Ok(VolumeAdmin {
            mount,
            root: dir,
            args: args.clone(),
            perm,
        })
    }

    fn path_of(&self, name: &str) -> String {
        format!("{}/{name}", self.args.volumes_root.trim_end_matches('/'))
    }

    /// The cephx user a volume is served as.
    pub fn ceph_id(name: &str) -> String {
        format!("vol-{name}")
    }

    fn keyring_path(&self, name: &str) -> PathBuf {
        self.args
            .keyring_dir
            .join(format!("client.{}.keyring", Self::ceph_id(name)))
    }

    fn volume_dir(&self, name: &str) -> Result<CephInode, VolumeError> {
        name_arg(name).map_err(VolumeError::BadName)?;
        match self.mount.lookup(&self.root, &cstr(name)?, &self.perm) {
            Ok((inode, stat)) if stat.mode() & libc::S_IFMT == libc::S_IFDIR => Ok(inode),
            Ok(_) => Err(VolumeError::NoSuchVolume(name.to_string())),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                Err(VolumeError::NoSuchVolume(name.to_string()))
            }
            Err(e) => Err(io_err(format!("looking up volume {name}"))(e)),
        }
    }

    /// Creates the directory, its quota, data pool and limits, its identity and keyring. A
    /// data pool that does not exist is refused before anything is made; a step that fails
    /// after the directory exists removes it again.
    pub fn create(&self, name: &str, spec: &CreateSpec) -> Result<VolumeInfo, VolumeError> {
        name_arg(name).map_err(VolumeError::BadName)?;
        let cname = cstr(name)?;
        if let Some(pool) = &spec.data_pool {
            self.ensure_data_pool(pool)?;
        }
        let dir = match self.mount.mkdir(&self.root, &cname, 0o777, &self.perm) {
            Ok((dir, _)) => dir,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(VolumeError::Exists(name.to_string()))
            }
            Err(e) => return Err(io_err(format!("creating volume {name}"))(e)),
        };
        let configured = self.configure(&dir, name, spec);
        drop(dir);
        if let Err(e) = configured {
            let _ = self.mount.rmdir(&self.root, &cname, &self.perm);
            return Err(e);
        }
        let keyring = self.authorize(name)?;
        write_keyring(&self.keyring_path(name), &keyring)?;
        self.inspect(name)
    }

    fn configure(&self, dir: &CephInode, name: &str, spec: &CreateSpec) -> Result<(), VolumeError> {
        if let Some(pool) = &spec.data_pool {
            self.mount
                .setxattr(dir, c"ceph.dir.layout.pool", pool.as_bytes(), 0, &self.perm)
                .map_err(io_err(format!("setting data pool {pool} on volume {name}")))?;
        }
        if let Some(bytes) = spec.quota {
            self.set_quota(dir, name, bytes)?;
        }
        for (attr, value) in [
            (LIMIT_BYTES_XATTR, spec.limits.bytes_per_sec),
            (LIMIT_OPS_XATTR, spec.limits.ops_per_sec),
        ] {
            if value > 0 {
                self.mount
                    .setxattr(dir, attr, value.to_string().as_bytes(), 0, &self.perm)
                    .map_err(io_err(format!("setting the rate limits of volume {name}")))?;
            }
        }
        Ok(())
    }

    /// Checks that `pool` exists and makes it a data pool of the filesystem (idempotent).
    fn ensure_data_pool(&self, pool: &str) -> Result<(), VolumeError> {
        let out = self.mon(&serde_json::json!({"prefix": "osd pool ls", "format": "json"}))?;
        let pools: Vec<String> = serde_json::from_slice(&out).map_err(|e| VolumeError::Mon {
            command: "osd pool ls".to_string(),
            message: format!("unreadable answer: {e}"),
        })?;
        if !pools.iter().any(|p| p == pool) {
            return Err(VolumeError::NoSuchPool(pool.to_string()));
        }
        let fs = self.fs_name()?;
        self.mon(&serde_json::json!({"prefix": "fs add_data_pool", "fs_name": fs, "pool": pool}))?;
        Ok(())
    }

    /// What serving the volume as its own identity needs; writes the identity's keyring on
    /// this host if it is not here yet (a volume made on another host).
    pub fn serve_identity(&self, name: &str) -> Result<ServeIdentity, VolumeError> {
        let info = self.inspect(name)?;
        let keyring = self.keyring_path(name);
        if !keyring.is_file() {
            let entity = format!("client.{}", Self::ceph_id(name));
            let text = self.mon(&serde_json::json!({"prefix": "auth get", "entity": entity}))?;
            write_keyring(&keyring, &text)?;
        }
        Ok(ServeIdentity {
            root: info.path,
            ceph_id: info.ceph_id,
            keyring,
            conf: self.args.ceph_conf.clone(),
            fs_name: self.args.ceph_fs.clone(),
            limits: info.limits,
            quota_bytes: info.quota_bytes,
        })
    }

    fn set_quota(&self, dir: &CephInode, name: &str, bytes: u64) -> Result<(), VolumeError> {
        self.mount
            .setxattr(
                dir,
                c"ceph.quota.max_bytes",
                bytes.to_string().as_bytes(),
                0,
                &self.perm,
            )
            .map_err(io_err(format!("setting the quota of volume {name}")))
    }

    /// `fs authorize FS client.vol-NAME PATH rw`: the keyring text of the identity.
    fn authorize(&self, name: &str) -> Result<Vec<u8>, VolumeError> {
        let fs = self.fs_name()?;
        let command = serde_json::json!({
            "prefix": "fs authorize",
            "filesystem": fs,
            "entity": format!("client.{}", Self::ceph_id(name)),
            "caps": [self.path_of(name), "rw"],
        });
        self.mon(&command)
    }

    /// The filesystem's name: `--ceph-fs`, or the only one the cluster has.
    fn fs_name(&self) -> Result<String, VolumeError> {
        if let Some(name) = &self.args.ceph_fs {
            return Ok(name.clone());
        }
        let out = self.mon(&serde_json::json!({"prefix": "fs ls", "format": "json"}))?;
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&out).map_err(|e| VolumeError::Mon {
                command: "fs ls".to_string(),
                message: format!("unreadable answer: {e}"),
            })?;
        match list.as_slice() {
            [one] => one["name"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| VolumeError::Mon {
                    command: "fs ls".to_string(),
                    message: "no name in the answer".to_string(),
                }),
            _ => Err(VolumeError::Mon {
                command: "fs ls".to_string(),
                message: format!(
                    "the cluster has {} filesystems: name one with --ceph-fs",
                    list.len()
                ),
            }),
        }
    }

    fn mon(&self, command: &serde_json::Value) -> Result<Vec<u8>, VolumeError> {
        let prefix = command["prefix"].as_str().unwrap_or("?").to_string();
        let rados = Rados::connect(
            &self.args.ceph_conf,
            &self.args.ceph_id,
            &self.args.ceph_keyring,
            std::time::Duration::from_secs(10),
        )
        .map_err(|e| VolumeError::Mon {
            command: prefix.clone(),
            message: e.to_string(),
        })?;
        rados
            .mon_command(&command.to_string(), &[])
            .map(|reply| reply.output)
            .map_err(|e| VolumeError::Mon {
                command: prefix,
                message: e.to_string(),
            })
    }

    /// Removes the volume's files, snapshots, directory, identity and keyring.
    pub fn remove(&self, name: &str) -> Result<(), VolumeError> {
        let dir = self.volume_dir(name)?;
        for snap in self.snapshots(&dir, name)? {
            self.remove_snapshot(&dir, name, &snap)?;
        }
        self.remove_tree(&dir, name)?;
        drop(dir);
        self.mount
            .rmdir(&self.root, &cstr(name)?, &self.perm)
            .map_err(io_err(format!("removing volume {name}")))?;
        let entity = format!("client.{}", Self::ceph_id(name));
        match self.mon(&serde_json::json!({"prefix": "auth rm", "entity": entity})) {
            Ok(_) => {}
            Err(e) => tracing::warn!("volume {name}: removing {entity}: {e}"),
        }
        match std::fs::remove_file(self.keyring_path(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(VolumeError::Keyring {
                path: self.keyring_path(name),
                source,
            }),
        }
    }

    /// Depth-first removal of everything below `dir`.
    fn remove_tree(&self, dir: &CephInode, what: &str) -> Result<(), VolumeError> {
        let entries = self.entries(dir, what)?;
        for (name, d_type, inode) in entries {
            let cname = CString::new(name.clone()).map_err(|_| VolumeError::Io {
                what: what.to_string(),
                source: io::Error::from_raw_os_error(libc::EINVAL),
            })?;
            let label = format!("{what}/{}", String::from_utf8_lossy(&name));
            if d_type == libc::DT_DIR {
                self.remove_tree(&inode, &label)?;
                drop(inode);
                self.mount
                    .rmdir(dir, &cname, &self.perm)
                    .map_err(io_err(format!("removing {label}")))?;
            } else {
                drop(inode);
                self.mount
                    .unlink(dir, &cname, &self.perm)
                    .map_err(io_err(format!("removing {label}")))?;
            }
        }
        Ok(())
    }

    /// Entries of `dir` except `.` and `..`.
    fn entries(
        &self,
        dir: &CephInode,
        what: &str,
    ) -> Result<Vec<(Vec<u8>, u8, CephInode)>, VolumeError> {
        let mut stream = self
            .mount
            .opendir(dir, &self.perm)
            .map_err(io_err(format!("listing {what}")))?;
        let mut out = Vec::new();
        while let Some(e) = stream
            .read_entry()
            .map_err(io_err(format!("listing {what}")))?
        {
            if e.name != b"." && e.name != b".." {
                out.push((e.name, e.d_type, e.inode));
            }
        }
        Ok(out)
    }

    fn snapdir(&self, dir: &CephInode, name: &str) -> Result<CephInode, VolumeError> {
        self.mount
            .lookup(dir, c".snap", &self.perm)
            .map(|(inode, _)| inode)
            .map_err(io_err(format!("volume {name}: .snap")))
    }

    fn snapshots(&self, dir: &CephInode, name: &str) -> Result<Vec<String>, VolumeError> {
        let snapdir = self.snapdir(dir, name)?;
        let mut names: Vec<String> = self
            .entries(&snapdir, &format!("{name}/.snap"))?
            .into_iter()
            .map(|(n, _, _)| String::from_utf8_lossy(&n).into_owned())
            // Snapshots of parent directories show up as `_NAME_INO`.
            .filter(|n| !n.starts_with('_'))
            .collect();
        names.sort();
        Ok(names)
    }

    fn remove_snapshot(&self, dir: &CephInode, name: &str, snap: &str) -> Result<(), VolumeError> {
        let snapdir = self.snapdir(dir, name)?;
        self.mount
            .rmdir(&snapdir, &cstr(snap)?, &self.perm)
            .map_err(io_err(format!("removing snapshot {snap} of volume {name}")))
    }

    /// Makes snapshot `snap` of the volume.
    pub fn snapshot(&self, name: &str, snap: &str) -> Result<VolumeInfo, VolumeError> {
        let dir = self.volume_dir(name)?;
        let snapdir = self.snapdir(&dir, name)?;
        match self.mount.mkdir(&snapdir, &cstr(snap)?, 0o755, &self.perm) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                return Err(VolumeError::SnapshotExists {
                    volume: name.to_string(),
                    snap: snap.to_string(),
                })
            }
            Err(e) => {
                return Err(io_err(format!("snapshot {snap} of volume {name}"))(e));
            }
        }
        drop((snapdir, dir));
        self.inspect(name)
    }

    /// Removes snapshot `snap` of the volume.
    pub fn delete_snapshot(&self, name: &str, snap: &str) -> Result<VolumeInfo, VolumeError> {
        let dir = self.volume_dir(name)?;
        if !self.snapshots(&dir, name)?.iter().any(|s| s == snap) {
            // libcephfs 16 hangs at unmount after an rmsnap of a missing snapshot.
            return Err(VolumeError::NoSuchSnapshot {
                volume: name.to_string(),
                snap: snap.to_string(),
            });
        }
        self.remove_snapshot(&dir, name, snap)?;
        drop(dir);
        self.inspect(name)
    }

    fn xattr_text(&self, dir: &CephInode, attr: &CStr) -> Result<Option<String>, io::Error> {
        match self.mount.getxattr(dir, attr, 256, &self.perm) {
            Ok(XattrReply::Data(v)) => Ok(Some(
                String::from_utf8_lossy(&v)
                    .trim_matches(char::from(0))
                    .trim()
                    .to_string(),
            )
            .filter(|t| !t.is_empty())),
            Ok(XattrReply::Size(_)) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn xattr_u64(&self, dir: &CephInode, attr: &CStr) -> Result<Option<u64>, io::Error> {
        match self.mount.getxattr(dir, attr, 64, &self.perm) {
            Ok(XattrReply::Data(v)) => Ok(String::from_utf8_lossy(&v)
                .trim_matches(char::from(0))
                .trim()
                .parse()
                .ok()),
            Ok(XattrReply::Size(_)) => Ok(None),
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// What is known of one volume.
    pub fn inspect(&self, name: &str) -> Result<VolumeInfo, VolumeError> {
        let dir = self.volume_dir(name)?;
        let quota = self
            .xattr_u64(&dir, c"ceph.quota.max_bytes")
            .map_err(io_err(format!("volume {name}: quota")))?
            .filter(|q| *q > 0);
        let used = self
            .xattr_u64(&dir, c"ceph.dir.rbytes")
            .map_err(io_err(format!("volume {name}: usage")))?
            .unwrap_or(0);
        let keyring = Some(self.keyring_path(name)).filter(|p| p.is_file());
        let data_pool = self
            .xattr_text(&dir, c"ceph.dir.layout.pool")
            .map_err(io_err(format!("volume {name}: layout")))?;
        let limit = |attr| {
            self.xattr_u64(&dir, attr)
                .map(|v| v.unwrap_or(0))
                .map_err(io_err(format!("volume {name}: rate limits")))
        };
        let limits = VolumeLimits {
            bytes_per_sec: limit(LIMIT_BYTES_XATTR)?,
            ops_per_sec: limit(LIMIT_OPS_XATTR)?,
        };
        Ok(VolumeInfo {
            name: name.to_string(),
            path: self.path_of(name),
            quota_bytes: quota,
            used_bytes: used,
            ceph_id: Self::ceph_id(name),
            keyring,
            snapshots: self.snapshots(&dir, name)?,
            data_pool,
            limits,
        })
    }

    /// Every volume.
    pub fn list(&self) -> Result<Vec<VolumeInfo>, VolumeError> {
        let mut names: Vec<String> = self
            .entries(&self.root, &self.args.volumes_root)?
            .into_iter()
            .filter(|(_, t, _)| *t == libc::DT_DIR)
            .map(|(n, _, _)| String::from_utf8_lossy(&n).into_owned())
            .filter(|n| name_arg(n).is_ok())
            .collect();
        names.sort();
        names.iter().map(|n| self.inspect(n)).collect()
    }
}

/// Writes `client.X`'s keyring, readable by its owner only, atomically.
fn write_keyring(path: &Path, text: &[u8]) -> Result<(), VolumeError> {
    let err = |source| VolumeError::Keyring {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension("keyring.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    io::Write::write_all(&mut f, text).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// One `volume` command, as the CLI converted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeAction {
    Create { name: String, spec: CreateSpec },
    Remove { name: String },
    List,
    Inspect { name: String },
    Snapshot { name: String, snap: String },
    DeleteSnapshot { name: String, snap: String },
}

/// Runs one `volume` command; what it prints goes to stdout.
pub fn run(options: &AdminOptions, action: VolumeAction) -> Result<(), VolumeError> {
    let admin = VolumeAdmin::connect(options)?;
    let print = |info: &VolumeInfo| match serde_json::to_string_pretty(info) {
        Ok(text) => println!("{text}"),
        Err(e) => tracing::error!("printing volume {}: {e}", info.name),
    };
    match action {
        VolumeAction::Create { name, spec } => print(&admin.create(&name, &spec)?),
        VolumeAction::Remove { name } => admin.remove(&name)?,
        VolumeAction::Inspect { name } => print(&admin.inspect(&name)?),
        VolumeAction::Snapshot { name, snap } => print(&admin.snapshot(&name, &snap)?),
        VolumeAction::DeleteSnapshot { name, snap } => print(&admin.delete_snapshot(&name, &snap)?),
        VolumeAction::List => {
            for info in admin.list()? {
                match serde_json::to_string(&info) {
                    Ok(line) => println!("{line}"),
                    Err(e) => tracing::error!("printing volume {}: {e}", info.name),
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["shared", "vol-1", "a.b_c"] {
            assert!(name_arg(good).is_ok(), "{good}");
        }
        for bad in ["", ".snap", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(name_arg(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn keyrings_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/client.vol-x.keyring");
        write_keyring(&path, b"[client.vol-x]\n\tkey = abc\n").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            b"[client.vol-x]\n\tkey = abc\n"
        );
    }
}
