//! Which host filesystems under the shared directory make the guest's FLUSH a no-op.
//!
//! A Linux guest sends FUSE_FLUSH on every `close()`, and the passthrough backend answers it
//! with `close(dup(fd))`. On a local block or memory filesystem that close is not the last
//! reference to the open file (the daemon keeps its descriptor until RELEASE), so it
//! neither writes anything back nor reports anything, and the daemon holds no POSIX locks
//! for it to drop: the round trip can be skipped (`FOPEN_NOFLUSH`, set by `export`). On a
//! network or stacked filesystem (NFS, CephFS, CIFS, FUSE, overlay, ...) the same close can
//! write dirty data back and report a write-back error, so FLUSH must stay.
//!
//! Owns reading `/proc/self/mountinfo` once at start-up, before the sandbox (afterwards the
//! file may not exist), and the allow-list of local filesystem types. It must not be read
//! at request time, and it must not guess: a type not on the list, a device whose mount
//! lines disagree, or a shared directory whose device is not in the table is not local.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Filesystem types on which `close()` of a duplicated descriptor is a no-op. Anything else,
/// known or not, keeps FLUSH.
pub const LOCAL_FS_TYPES: &[&str] = &[
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "zfs", "f2fs",
];

/// The mount table of this process's mount namespace.
pub const MOUNTINFO_PATH: &str = "/proc/self/mountinfo";

#[derive(Debug, thiserror::Error)]
pub enum LocalFsError {
    #[error("reading {path}: {source}")]
    ReadMountinfo {
        path: &'static str,
        source: io::Error,
    },
    #[error("stat of the shared directory {path:?}: {source}")]
    StatSharedDir { path: PathBuf, source: io::Error },
}

/// The fields of one `/proc/self/mountinfo` line this module uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub major: u32,
    pub minor: u32,
    /// The mount point with the kernel's octal escapes (`\040` ...) decoded.
    pub mount_point: PathBuf,
    /// The filesystem type after the `-` separator (`ext4`, `nfs4`, `fuse.sshfs`, ...).
    pub fs_type: String,
}

impl MountEntry {
    /// The device number as `stat` reports it in `st_dev`.
    pub fn dev(&self) -> u64 {
        nix::sys::stat::makedev(u64::from(self.major), u64::from(self.minor))
    }
}

/// Parses the text of a mountinfo file. Malformed lines are skipped, never fatal:
/// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`.
pub fn parse_mountinfo(text: &[u8]) -> Vec<MountEntry> {
    text.split(|&b| b == b'\n').filter_map(parse_line).collect()
}

fn parse_line(line: &[u8]) -> Option<MountEntry> {
    let mut fields = line.split(|&b| b == b' ');
    let _mount_id = fields.next()?;
    let _parent_id = fields.next()?;
    let (major, minor) = parse_major_minor(fields.next()?)?;
    let _root = fields.next()?;
    let mount_point = unescape(fields.next()?);
    let _mount_options = fields.next()?;
    // Optional fields (shared:N, master:N, ...), as many as there are, up to the separator.
    fields.by_ref().find(|field| *field == b"-")?;
    let fs_type = fields.next().filter(|t| !t.is_empty())?;
    let _source = fields.next()?;
    let _super_options = fields.next()?;
    if !mount_point.starts_with(b"/") {
        return None;
    }
    Some(MountEntry {
        major,
        minor,
        mount_point: PathBuf::from(OsStr::from_bytes(&mount_point)),
        fs_type: String::from_utf8_lossy(&unescape(fs_type)).into_owned(),
    })
}

fn parse_major_minor(field: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(field).ok()?;
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Decodes the kernel's `\NNN` octal escapes (space, tab, newline and backslash are written
/// that way in mountinfo); anything else is kept as it is.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' {
            if let Some(byte) = field.get(i + 1..i + 4).and_then(octal_byte) {
                out.push(byte);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

fn octal_byte(digits: &[u8]) -> Option<u8> {
    let mut value: u32 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value * 8 + u32::from(d - b'0');
    }
    u8::try_from(value).ok()
}

/// One local filesystem: its type and device numbers, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalDevice {
    fs_type: String,
    major: u32,
    minor: u32,
}

/// The device numbers (`st_dev`) of the filesystems under the shared directory on which
/// `close()` is a no-op, so the guest's FLUSH may be skipped. Built once at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalDevices {
    devices: BTreeMap<u64, LocalDevice>,
    /// The shared directory's own filesystem is one of them.
    share_is_local: bool,
}

impl LocalDevices {
    /// Reads the mount table and the shared directory's device. Call before the sandbox.
    pub fn probe(shared_dir: &Path) -> Result<Self, LocalFsError> {
        let shared_dev = std::fs::metadata(shared_dir)
            .map_err(|source| LocalFsError::StatSharedDir {
                path: shared_dir.to_path_buf(),
                source,
            })?
            .dev();
        let text = std::fs::read(MOUNTINFO_PATH).map_err(|source| LocalFsError::ReadMountinfo {
            path: MOUNTINFO_PATH,
            source,
        })?;
        Ok(Self::from_mounts(
            &parse_mountinfo(&text),
            shared_dir,
            shared_dev,
        ))
    }

    /// The local devices among the mount holding `shared_dir` (device `shared_dev`) and every
    /// mount at or below `shared_dir` on a block device. A device counts only if every line of
    /// the table that names it has the same type and that type is on [`LOCAL_FS_TYPES`].
    ///
    /// A mount below the share with an anonymous device number (major 0: tmpfs) is left out:
    /// once it is unmounted its number goes to the next NFS, CIFS, FUSE, overlay or Ceph mount,
    /// which may then appear below the share. The share's own device cannot be reused while
    /// the daemon runs: its root descriptor keeps that filesystem alive.
    pub fn from_mounts(mounts: &[MountEntry], shared_dir: &Path, shared_dev: u64) -> Self {
        let mut candidates: Vec<u64> = mounts
            .iter()
            .filter(|m| m.major != 0 && m.mount_point.starts_with(shared_dir))
            .map(MountEntry::dev)
            .collect();
        candidates.push(shared_dev);

        let mut devices = BTreeMap::new();
        for dev in candidates {
            if let Some(device) = local_device(mounts, dev) {
                devices.insert(dev, device);
            }
        }
        let share_is_local = devices.contains_key(&shared_dev);
        LocalDevices {
            devices,
            share_is_local,
        }
    }

    /// Whether a file whose `st_dev` is `dev` is on one of these local filesystems.
    pub fn contains(&self, dev: u64) -> bool {
        self.devices.contains_key(&dev)
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    pub fn len(&self) -> usize {
        self.devices.len()
    }

    /// Whether the shared directory itself is on one of these local filesystems.
    pub fn share_is_local(&self) -> bool {
        self.share_is_local
    }

    /// A set holding only `dev` (tests, and callers that checked a device themselves).
    pub fn single(dev: u64, fs_type: &str) -> Self {
        let device = LocalDevice {
            fs_type: fs_type.to_string(),
            major: nix::sys::stat::major(dev) as u32,
            minor: nix::sys::stat::minor(dev) as u32,
        };
        LocalDevices {
            devices: BTreeMap::from([(dev, device)]),
            share_is_local: false,
        }
    }
}

/// `dev`'s type if every mount line naming `dev` agrees on it and it is local.
fn local_device(mounts: &[MountEntry], dev: u64) -> Option<LocalDevice> {
    let mut lines = mounts.iter().filter(|m| m.dev() == dev);
    let first = lines.next()?;
    if !LOCAL_FS_TYPES.contains(&first.fs_type.as_str()) {
        return None;
    }
    if lines.any(|m| m.fs_type != first.fs_type) {
        return None;
    }
    Some(LocalDevice {
        fs_type: first.fs_type.clone(),
        major: first.major,
        minor: first.minor,
    })
}

/// `ext4 254:0, tmpfs 0:45`, or `none`.
impl fmt::Display for LocalDevices {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.devices.is_empty() {
            return f.write_str("none");
        }
        for (i, device) in self.devices.values().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}:{}", device.fs_type, device.major, device.minor)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::makedev;

    const SHARE: &str = "/srv/volumes/pod 1";

    /// A host with the share on ext4 (the root filesystem), a tmpfs, an xfs (on a block
    /// device with a minor above 255) and an NFS mount below it, an xfs mount beside it, and
    /// a FUSE mount below it.
    const TABLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard
60 27 8:16 / /srv/other rw,relatime shared:30 master:2 - xfs /dev/sdb rw
61 27 0:45 / /srv/volumes/pod\\0401/scratch rw,nosuid shared:31 - tmpfs tmpfs rw,size=1024k
62 27 0:50 /export /srv/volumes/pod\\0401/nfs rw - nfs4 server:/export rw,vers=4.2
63 27 0:51 / /srv/volumes/pod\\0401/sshfs rw,nosuid,nodev - fuse.sshfs user@host:/ rw
64 27 259:300 / /srv/volumes/pod\\0401/data rw - xfs /dev/nvme0n1p300 rw
";

    fn share_devices(table: &str, shared_dev: u64) -> LocalDevices {
        LocalDevices::from_mounts(
            &parse_mountinfo(table.as_bytes()),
            Path::new(SHARE),
            shared_dev,
        )
    }

    #[test]
    fn parses_fields_optional_fields_and_escaped_mount_points() {
        let mounts = parse_mountinfo(TABLE.as_bytes());
        assert_eq!(mounts.len(), 7);
        assert_eq!(
            mounts[1],
            MountEntry {
                major: 254,
                minor: 0,
                mount_point: PathBuf::from("/"),
                fs_type: "ext4".into(),
            }
        );
        // Two optional fields before the separator.
        assert_eq!(mounts[2].fs_type, "xfs");
        assert_eq!(mounts[2].dev(), makedev(8, 16));
        // `\040` is a space.
        assert_eq!(
            mounts[3].mount_point,
            PathBuf::from("/srv/volumes/pod 1/scratch")
        );
        assert_eq!(mounts[5].fs_type, "fuse.sshfs");
        // A minor above 255 is split around the major in st_dev, as glibc's makedev does.
        assert_eq!(mounts[6].dev(), libc::makedev(259, 300));
        assert_eq!((mounts[6].dev() >> 8) & 0xfff, 259);
    }

    #[test]
    fn unescapes_tab_newline_and_backslash_and_keeps_other_bytes() {
        let line = b"1 0 0:1 / /a\\011b\\012c\\134d\\x\\9e\xff rw - tmpfs none rw";
        let mounts = parse_mountinfo(line);
        assert_eq!(mounts.len(), 1);
        assert_eq!(
            mounts[0].mount_point.as_os_str().as_bytes(),
            b"/a\tb\nc\\d\\x\\9e\xff"
        );
        // An escape that would not fit a byte is kept as it is.
        assert_eq!(unescape(b"\\777"), b"\\777");
    }

    #[test]
    fn share_on_ext4_with_xfs_below_is_local_and_tmpfs_nfs_fuse_and_beside_are_not() {
        let devices = share_devices(TABLE, makedev(254, 0));
        assert!(devices.share_is_local());
        assert!(devices.contains(makedev(254, 0)), "the share's own ext4");
        assert!(devices.contains(makedev(259, 300)), "xfs below the share");
        assert!(
            !devices.contains(makedev(0, 45)),
            "tmpfs below the share: its number can be reused"
        );
        assert!(!devices.contains(makedev(0, 50)), "nfs4 below the share");
        assert!(
            !devices.contains(makedev(0, 51)),
            "fuse.sshfs below the share"
        );
        assert!(!devices.contains(makedev(8, 16)), "xfs beside the share");
        assert!(!devices.contains(makedev(0, 21)), "proc beside the share");
        assert_eq!(devices.len(), 2);
        assert_eq!(devices.to_string(), "ext4 254:0, xfs 259:300");
    }

    #[test]
    fn mount_point_prefix_that_is_not_a_path_component_is_beside() {
        let table = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
61 27 0:45 / /srv/volumes/pod\\04012 rw - tmpfs tmpfs rw
";
        let devices = share_devices(table, makedev(254, 0));
        assert!(!devices.contains(makedev(0, 45)));
    }

    #[test]
    fn share_on_a_network_filesystem_is_not_local() {
        let table = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
70 27 0:60 / /srv/volumes/pod\\0401 rw - ceph 10.0.0.1:/vol rw,name=pod
71 70 0:61 / /srv/volumes/pod\\0401/cache rw - tmpfs tmpfs rw
";
        let devices = share_devices(table, makedev(0, 60));
        assert!(!devices.share_is_local());
        assert!(!devices.contains(makedev(0, 60)));
        assert!(!devices.contains(makedev(254, 0)), "/ is beside, not below");
        assert!(
            !devices.contains(makedev(0, 61)),
            "anonymous, below the share"
        );
        assert!(devices.is_empty());
    }

    #[test]
    fn unknown_and_overlay_types_are_not_local() {
        for fs_type in [
            "overlay", "nfs", "cifs", "fuse", "fuseblk", "9p", "virtiofs", "ext4x", "",
        ] {
            let table = format!("27 1 0:70 / / rw - {fs_type} src rw\n");
            let devices = share_devices(&table, makedev(0, 70));
            assert!(devices.is_empty(), "{fs_type:?} counted as local");
        }
        for fs_type in LOCAL_FS_TYPES {
            let table = format!("27 1 0:70 / / rw - {fs_type} src rw\n");
            assert!(share_devices(&table, makedev(0, 70)).contains(makedev(0, 70)));
        }
    }

    #[test]
    fn device_whose_lines_disagree_or_are_missing_is_not_local() {
        let table = "\
27 1 254:0 / / rw - ext4 /dev/vda rw
28 27 254:0 / /mnt rw - fuseblk /dev/vda rw
";
        assert!(share_devices(table, makedev(254, 0)).is_empty());
        // The share's device is not in the table at all (btrfs subvolumes report their own
        // st_dev): nothing is assumed.
        let table = "27 1 0:30 / / rw - btrfs /dev/vda rw\n";
        assert!(share_devices(table, makedev(0, 31)).is_empty());
    }

    #[test]
    fn malformed_lines_are_skipped_without_panicking() {
        let table = "\
\n\
garbage\n\
1 2 3:4\n\
1 2 x:4 / / rw - ext4 /dev/vda rw\n\
1 2 3:y / / rw - ext4 /dev/vda rw\n\
1 2 99999999999:4 / / rw - ext4 /dev/vda rw\n\
1 2 3:4 / / rw shared:1 ext4 /dev/vda rw\n\
1 2 3:4 / / rw -\n\
1 2 3:4 / / rw - ext4\n\
1 2 3:4 / relative rw - ext4 /dev/vda rw\n\
1 2 3:4 / /ok\\ rw - ext4 /dev/vda rw\n\
27 1 254:0 / / rw - ext4 /dev/vda rw";
        let mounts = parse_mountinfo(table.as_bytes());
        assert_eq!(mounts.len(), 2, "{mounts:?}");
        assert_eq!(mounts[0].mount_point, PathBuf::from("/ok\\"));
        assert_eq!(mounts[1].dev(), makedev(254, 0));
        // Arbitrary bytes never panic.
        for len in 0..64u8 {
            let noise: Vec<u8> = (0..len)
                .map(|i| [b' ', b'\\', b'-', b'1', b':', b'\n', 0xff][(i % 7) as usize])
                .collect();
            let _ = parse_mountinfo(&noise);
        }
    }

    #[test]
    fn probe_of_a_temp_dir_finds_its_filesystem_when_local() {
        let dir = tempfile::tempdir().unwrap();
        let devices = LocalDevices::probe(dir.path()).expect("probe");
        // The kernel's own word on the type, for the common local and non-local ones.
        use nix::sys::statfs::{
            statfs, EXT4_SUPER_MAGIC, FUSE_SUPER_MAGIC, NFS_SUPER_MAGIC, OVERLAYFS_SUPER_MAGIC,
            TMPFS_MAGIC, XFS_SUPER_MAGIC,
        };
        let fs_type = statfs(dir.path()).unwrap().filesystem_type();
        if [EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC].contains(&fs_type) {
            assert!(devices.share_is_local(), "{devices}");
        }
        if [OVERLAYFS_SUPER_MAGIC, NFS_SUPER_MAGIC, FUSE_SUPER_MAGIC].contains(&fs_type) {
            assert!(!devices.share_is_local(), "{devices}");
        }
        assert!(LocalDevices::probe(Path::new("/nonexistent/share")).is_err());
    }

    #[test]
    fn single_names_its_device() {
        let devices = LocalDevices::single(makedev(254, 3), "ext4");
        assert!(devices.contains(makedev(254, 3)));
        assert!(!devices.contains(makedev(254, 0)));
        assert_eq!(devices.to_string(), "ext4 254:3");
        assert_eq!(LocalDevices::default().to_string(), "none");
    }
}
