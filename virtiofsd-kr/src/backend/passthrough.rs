//! The host-directory backend: fuse-backend-rs `PassthroughFs` configured from the command
//! line.
//!
//! Owns [`PassthroughOptions`] and their mapping to `passthrough::Config` and the start-up checks that
//! make a flag's promise true (file handles that must work). It must not enter the sandbox:
//! the daemon builds the backend after `Sandbox::enter` and before `Sandbox::confine`, so the
//! root and `/proc/self/fd` descriptors it opens stay valid inside.
//!
//! `PassthroughFs` is the crates.io fuse-backend-rs 0.14.0 with patches
//! (`third_party/fuse-backend-rs`, see `third_party/README.md`): READDIR answers from
//! `getdents64` with the host's `d_ino`/`d_type` and lists `.` and `..`; a failed READ/WRITE
//! never closes the handle's descriptor; DESTROY keeps the root. The tests below pin the
//! READDIR behaviour. File handles are used by default (`prefer`) when a probe at start shows
//! this process can open them again (`file_handles_usable`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use super::CacheMode;

/// How inodes are referenced (`--inode-file-handles`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InodeFileHandles {
    /// Always by `O_PATH` descriptor.
    Never,
    /// By file handle where this process can open them again, by descriptor otherwise.
    #[default]
    Prefer,
    /// By file handle, or refuse to start.
    Mandatory,
}

/// What the host-directory backend is asked to do (built by the control plane from its
/// flags; the defaults are the flags' defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassthroughOptions {
    pub cache: CacheMode,
    pub xattr: bool,
    pub writeback: bool,
    pub allow_direct_io: bool,
    pub inode_file_handles: InodeFileHandles,
}

/// Most `O_PATH` descriptors that inodes referenced by file handle keep
/// (`Config::kept_path_fds`, third_party/README.md hunk 14): directories first, then files.
/// Each pins a host dentry and inode as long as the guest holds the inode, so the number is
/// bounded per daemon, not per guest.
pub const MAX_KEPT_PATH_FDS: u64 = 1024;

/// How many descriptors file-handle inodes may keep in this process: a quarter of the soft
/// RLIMIT_NOFILE (the rest is for open files, directories and the daemon's own), at most
/// [`MAX_KEPT_PATH_FDS`].
pub fn kept_path_fds() -> usize {
    use nix::sys::resource::{getrlimit, Resource};
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft);
    (soft / 4).min(MAX_KEPT_PATH_FDS) as usize
}

/// The passthrough filesystem type served to guests.
pub type HostFs = PassthroughFs<()>;

#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("shared directory {0:?} is not valid UTF-8")]
    NonUtf8Root(PathBuf),
    #[error("--inode-file-handles=mandatory: the filesystem of {path:?} cannot give file handles: {source}")]
    NoFileHandles {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening shared directory {path:?}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Attribute/entry timeouts per cache mode, as the reference daemon uses them.
pub fn cache_timeouts(mode: CacheMode) -> (CachePolicy, Duration) {
    match mode {
        CacheMode::Never => (CachePolicy::Never, Duration::ZERO),
        CacheMode::Metadata => (CachePolicy::Metadata, Duration::from_secs(86400)),
        CacheMode::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
        CacheMode::Always => (CachePolicy::Always, Duration::from_secs(86400)),
    }
}

/// The `PassthroughFs` configuration for `opts`, rooted at `root`.
///
/// `dax_file_size`: with a DAX window, files at least this large get `FUSE_ATTR_DAX`.
pub fn config(
    opts: &PassthroughOptions,
    root: &Path,
    dax_file_size: Option<u64>,
) -> Result<Config, PassthroughError> {
    let root_dir = root
        .to_str()
        .ok_or_else(|| PassthroughError::NonUtf8Root(root.to_path_buf()))?
        .to_string();
    let (cache_policy, timeout) = cache_timeouts(opts.cache);
    Ok(Config {
        root_dir,
        cache_policy,
        attr_timeout: timeout,
        entry_timeout: timeout,
        xattr: opts.xattr,
        writeback: opts.writeback,
        allow_direct_io: opts.allow_direct_io,
        inode_file_handles: opts.inode_file_handles != InodeFileHandles::Never
            && file_handles_usable(root, opts.inode_file_handles).is_ok(),
        do_import: true,
        dax_file_size,
        kept_path_fds: kept_path_fds(),
        ..Default::default()
    })
}

/// Builds and imports the backend, so the root is open before the sandbox closes.
pub fn open(
    opts: &PassthroughOptions,
    root: &Path,
    dax_file_size: Option<u64>,
) -> Result<HostFs, PassthroughError> {
    match (
        opts.inode_file_handles,
        file_handles_usable(root, opts.inode_file_handles),
    ) {
        (InodeFileHandles::Mandatory, Err(source)) => {
            return Err(PassthroughError::NoFileHandles {
                path: root.to_path_buf(),
                source,
            })
        }
        (InodeFileHandles::Prefer, Err(e)) => {
            tracing::info!(
                "file handles unusable on {} ({e}): inodes are referenced by descriptors, \
                 so the guest can hold at most RLIMIT_NOFILE of them",
                root.display()
            );
        }
        _ => {}
    }
    let fs = PassthroughFs::new(config(opts, root, dax_file_size)?).map_err(|source| {
        PassthroughError::Open {
            path: root.to_path_buf(),
            source,
        }
    })?;
    fs.import().map_err(|source| PassthroughError::Open {
        path: root.to_path_buf(),
        source,
    })?;
    Ok(fs)
}

/// Whether inodes under `root` can be referenced by file handle: the kernel gives a handle
/// for `root` (`name_to_handle_at`, the filesystem supports it) and opens it again
/// (`open_by_handle_at`, which needs CAP_DAC_READ_SEARCH). `never` asks nothing.
fn file_handles_usable(root: &Path, mode: InodeFileHandles) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;

    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    if mode == InodeFileHandles::Never {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTSUP));
    }
    let path = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut handle = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `path` is a valid C string; `handle` is a properly sized file_handle buffer
    // whose `handle_bytes` says how much room follows; `mount_id` is a valid out pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut handle as *mut Handle,
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mount = std::fs::File::open(root)?;
    // SAFETY: `mount` is an open descriptor on the handle's filesystem and `handle` was just
    // filled in by the kernel; the return value is checked and a descriptor is owned below.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount.as_raw_fd(),
            &mut handle as *mut Handle,
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor the kernel just returned to this process, owned once.
    drop(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fuse_backend_rs::api::filesystem::{Context, DirEntry, Entry, FileSystem, ROOT_ID};

    /// Regression test for a fuzz finding (`fuse_request`'s descriptor check): with file
    /// handles, each `MountFd` the backend created leaked the mount point's `O_PATH`
    /// descriptor (third_party/README.md hunk 9).
    #[test]
    fn backends_opened_and_dropped_leave_no_descriptor() {
        let dir = tempfile::tempdir().unwrap();
        let opts = PassthroughOptions {
            inode_file_handles: InodeFileHandles::Prefer,
            ..PassthroughOptions::default()
        };
        if file_handles_usable(dir.path(), InodeFileHandles::Prefer).is_err() {
            // Without CAP_DAC_READ_SEARCH the backend uses descriptors, not MountFds: say so.
            eprintln!("file handles unusable here: the MountFd path is not exercised");
        }
        // The leaked descriptor pointed at the share's mount point; count only those (other
        // tests open and close descriptors concurrently).
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(dir.path()).unwrap().dev();
        let mut mount_point = dir.path().to_path_buf();
        while let Some(parent) = mount_point.parent() {
            if std::fs::metadata(parent).unwrap().dev() != dev {
                break;
            }
            mount_point = parent.to_path_buf();
        }
        let count = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .filter(|e| std::fs::read_link(e.path()).ok().as_deref() == Some(&mount_point))
                .count()
        };
        let before = count();
        for _ in 0..5 {
            let fs = open(&opts, dir.path(), None).unwrap();
            fs.init(fuse_backend_rs::api::filesystem::FsOptions::empty())
                .unwrap();
            drop(fs);
        }
        assert_eq!(
            count(),
            before,
            "mount point descriptors left behind by dropped backends"
        );
    }

    #[test]
    fn cache_modes_map_to_policies_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(
            &PassthroughOptions {
                cache: CacheMode::Never,
                ..PassthroughOptions::default()
            },
            dir.path(),
            None,
        )
        .unwrap();
        assert!(matches!(c.cache_policy, CachePolicy::Never));
        assert_eq!(c.attr_timeout, Duration::ZERO);
        let c = config(
            &PassthroughOptions {
                cache: CacheMode::Always,
                xattr: true,
                writeback: true,
                ..PassthroughOptions::default()
            },
            dir.path(),
            None,
        )
        .unwrap();
        assert!(matches!(c.cache_policy, CachePolicy::Always));
        assert_eq!(c.entry_timeout, Duration::from_secs(86400));
        assert!(c.xattr && c.writeback);
        let c = config(&PassthroughOptions::default(), dir.path(), None).unwrap();
        assert!(matches!(c.cache_policy, CachePolicy::Auto));
        assert_eq!(c.attr_timeout, Duration::from_secs(1));
        // The default is `prefer`: handles when this process can open them again (root,
        // as in CI), descriptors otherwise.
        assert_eq!(
            c.inode_file_handles,
            file_handles_usable(dir.path(), InodeFileHandles::Prefer).is_ok()
        );
        let c = config(
            &PassthroughOptions {
                inode_file_handles: InodeFileHandles::Never,
                ..PassthroughOptions::default()
            },
            dir.path(),
            Some(0),
        )
        .unwrap();
        assert!(!c.inode_file_handles);
    }

    /// One directory entry as a READDIR(PLUS) reply carried it.
    #[derive(Debug, Clone)]
    struct Listed {
        name: String,
        ino: u64,
        kind: u32,
        offset: u64,
        /// READDIRPLUS only: the node id of the entry (0: none, nothing to forget).
        node: Option<u64>,
        /// READDIRPLUS only: `st_ino` of the entry's attributes.
        attr_ino: Option<u64>,
    }

    /// Bytes a `fuse_dirent` for `name_len` takes in a reply (24-byte header, padded to 8),
    /// plus the `fuse_entry_out` in front of it for READDIRPLUS: the space the FUSE server
    /// charges against the request's `size` before it refuses an entry.
    fn reply_bytes(name_len: usize, plus: bool) -> usize {
        let dirent = (24 + name_len + 7) & !7;
        if plus {
            dirent + std::mem::size_of::<fuse_backend_rs::abi::fuse_abi::EntryOut>()
        } else {
            dirent
        }
    }

    /// One READDIR (or READDIRPLUS) call of `size` bytes from `offset`, answering the
    /// backend's `add_entry` the way the FUSE server does: 0 once the next entry does not fit.
    fn read_batch(
        fs: &HostFs,
        dir: u64,
        handle: u64,
        size: u32,
        offset: u64,
        plus: bool,
    ) -> std::io::Result<Vec<Listed>> {
        let ctx = Context::default();
        let mut used = 0usize;
        let mut out = Vec::new();
        let mut take = |d: DirEntry, entry: Option<Entry>| {
            let need = reply_bytes(d.name.len(), plus);
            if used + need > size as usize {
                return Ok(0);
            }
            used += need;
            out.push(Listed {
                name: String::from_utf8_lossy(d.name).into_owned(),
                ino: d.ino,
                kind: d.type_,
                offset: d.offset,
                node: entry.as_ref().map(|e| e.inode),
                attr_ino: entry.as_ref().map(|e| e.attr.st_ino),
            });
            Ok(need)
        };
        if plus {
            fs.readdirplus(&ctx, dir, handle, size, offset, &mut |d, e| {
                take(d, Some(e))
            })?;
        } else {
            fs.readdir(&ctx, dir, handle, size, offset, &mut |d| take(d, None))?;
        }
        Ok(out)
    }

    /// Every entry of `dir` through one directory handle, `size` bytes per call, each call
    /// resuming from the offset of the last entry of the previous one (as the guest does).
    fn list_all(fs: &HostFs, dir: u64, size: u32, plus: bool) -> Vec<Listed> {
        let ctx = Context::default();
        let (handle, _) = fs.opendir(&ctx, dir, libc::O_RDONLY as u32).unwrap();
        let handle = handle.expect("OPENDIR gives a handle");
        let mut all = Vec::new();
        let mut offset = 0;
        loop {
            let batch = read_batch(fs, dir, handle, size, offset, plus).unwrap();
            let Some(last) = batch.last() else { break };
            offset = last.offset;
            all.extend(batch);
            assert!(all.len() < 10_000, "READDIR never reaches the end");
        }
        fs.releasedir(&ctx, dir, 0, handle).unwrap();
        all
    }

    fn sorted_names(listed: &[Listed]) -> Vec<String> {
        let mut names: Vec<String> = listed.iter().map(|l| l.name.clone()).collect();
        names.sort();
        names
    }

    fn host_ino(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(path).unwrap().ino()
    }

    #[test]
    fn readdir_reports_host_inode_and_type_without_a_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("file"), b"x").unwrap();
        std::fs::create_dir(root.join("subdir")).unwrap();
        std::os::unix::fs::symlink("file", root.join("link")).unwrap();
        let fs = open(&PassthroughOptions::default(), root, None).unwrap();

        let listed = list_all(&fs, ROOT_ID, 4096, false);
        assert_eq!(sorted_names(&listed), [".", "..", "file", "link", "subdir"]);
        for l in &listed {
            let (path, kind) = match l.name.as_str() {
                "." => (root.to_path_buf(), libc::DT_DIR),
                ".." => (root.parent().unwrap().to_path_buf(), libc::DT_DIR),
                "file" => (root.join("file"), libc::DT_REG),
                "link" => (root.join("link"), libc::DT_LNK),
                "subdir" => (root.join("subdir"), libc::DT_DIR),
                other => panic!("unexpected entry {other}"),
            };
            assert_eq!(l.ino, host_ino(&path), "{}: d_ino", l.name);
            assert_eq!(l.kind, u32::from(kind), "{}: d_type", l.name);
        }

        // No entry was looked up: the first LOOKUP after the listing gets the first node id
        // after the root's. (fuse-backend-rs 0.14 looked up and forgot every listed entry,
        // which used up node ids 2, 3, ... and kept their mappings.)
        let ctx = Context::default();
        let last_listed = &listed.last().unwrap().name;
        let name = std::ffi::CString::new(last_listed.as_str()).unwrap();
        let entry = fs.lookup(&ctx, ROOT_ID, &name).unwrap();
        if last_listed != "." && last_listed != ".." {
            assert_eq!(
                entry.inode,
                ROOT_ID + 1,
                "{last_listed} was looked up before"
            );
        }
        let entry = fs
            .lookup(&ctx, ROOT_ID, &std::ffi::CString::new("file").unwrap())
            .unwrap();
        let file = listed.iter().find(|l| l.name == "file").unwrap();
        assert_eq!(file.ino, entry.attr.st_ino, "d_ino == st_ino of LOOKUP");
    }

    #[test]
    fn readdir_resumes_at_the_offset_of_the_last_entry_with_small_buffers() {
        let dir = tempfile::tempdir().unwrap();
        let mut expected: Vec<String> = (0..50)
            .map(|i| format!("f{i:02}-{}", "n".repeat(i % 7)))
            .collect();
        for name in &expected {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        expected.push(".".into());
        expected.push("..".into());
        expected.sort();
        let fs = open(&PassthroughOptions::default(), dir.path(), None).unwrap();
        // 64 bytes hold "." and ".." and nothing else (each takes 32 bytes of reply), 40 one
        // entry per call, 100 two or three, 4096 everything.
        for size in [40, 64, 100, 4096] {
            let listed = list_all(&fs, ROOT_ID, size, false);
            assert_eq!(sorted_names(&listed), expected, "buffer of {size} bytes");
            for pair in listed.windows(2) {
                assert_ne!(pair[0].offset, pair[1].offset, "offsets identify entries");
            }
        }
        // A call from an entry's offset starts right after that entry (telldir/seekdir).
        let all = list_all(&fs, ROOT_ID, 4096, false);
        let ctx = Context::default();
        let (handle, _) = fs.opendir(&ctx, ROOT_ID, libc::O_RDONLY as u32).unwrap();
        let handle = handle.unwrap();
        for at in [0, 1, 17, all.len() - 2] {
            let batch = read_batch(&fs, ROOT_ID, handle, 40, all[at].offset, false).unwrap();
            assert_eq!(batch.len(), 1);
            assert_eq!(batch[0].name, all[at + 1].name, "resumed after entry {at}");
        }
        let past_end = read_batch(
            &fs,
            ROOT_ID,
            handle,
            4096,
            all.last().unwrap().offset,
            false,
        );
        assert!(past_end.unwrap().is_empty(), "the last offset is the end");
        fs.releasedir(&ctx, ROOT_ID, 0, handle).unwrap();
    }

    #[test]
    fn readdir_between_calls_sees_removals_and_never_repeats_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let originals: Vec<String> = (0..30).map(|i| format!("old-{i:02}")).collect();
        for name in &originals {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let fs = open(&PassthroughOptions::default(), dir.path(), None).unwrap();
        let ctx = Context::default();
        let (handle, _) = fs.opendir(&ctx, ROOT_ID, libc::O_RDONLY as u32).unwrap();
        let handle = handle.unwrap();

        let first = read_batch(&fs, ROOT_ID, handle, 200, 0, false).unwrap();
        assert!(!first.is_empty() && first.len() < originals.len());
        let seen: Vec<&str> = first.iter().map(|l| l.name.as_str()).collect();
        // Remove one entry not listed yet, add new ones, then go on from where we stopped.
        let removed = originals
            .iter()
            .find(|n| !seen.contains(&n.as_str()))
            .unwrap()
            .clone();
        std::fs::remove_file(dir.path().join(&removed)).unwrap();
        for i in 0..10 {
            std::fs::write(dir.path().join(format!("new-{i:02}")), b"").unwrap();
        }
        let mut listed = first.clone();
        let mut offset = first.last().unwrap().offset;
        loop {
            let batch = read_batch(&fs, ROOT_ID, handle, 200, offset, false).unwrap();
            let Some(last) = batch.last() else { break };
            offset = last.offset;
            listed.extend(batch);
            assert!(listed.len() < 1000, "READDIR never reaches the end");
        }
        fs.releasedir(&ctx, ROOT_ID, 0, handle).unwrap();

        let names = sorted_names(&listed);
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(unique, names, "no entry is listed twice");
        assert!(
            !names.contains(&removed),
            "{removed} was removed before it was reached"
        );
        for name in originals.iter().filter(|n| **n != removed) {
            assert!(
                names.contains(name),
                "{name} existed throughout but was not listed"
            );
        }
        // Entries created during the listing may or may not appear (POSIX leaves it open);
        // those that do carry their host inode.
        for l in listed.iter().filter(|l| l.name.starts_with("new-")) {
            assert_eq!(l.ino, host_ino(&dir.path().join(&l.name)));
        }
    }

    #[test]
    fn readdirplus_looks_up_entries_but_not_dot_and_dotdot() {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = (0..12).map(|i| format!("entry-{i:02}")).collect();
        for name in &names {
            std::fs::write(dir.path().join(name), b"data").unwrap();
        }
        let fs = open(&PassthroughOptions::default(), dir.path(), None).unwrap();
        // 400 bytes: two or three entries with their attributes per call.
        let listed = list_all(&fs, ROOT_ID, 400, true);
        let mut expected = names.clone();
        expected.push(".".into());
        expected.push("..".into());
        expected.sort();
        assert_eq!(sorted_names(&listed), expected);
        let ctx = Context::default();
        for l in &listed {
            let node = l.node.expect("READDIRPLUS carries an entry");
            if l.name == "." || l.name == ".." {
                assert_eq!(node, 0, "{}: no node id, nothing to forget", l.name);
                assert_eq!(l.kind, u32::from(libc::DT_DIR));
                continue;
            }
            let host = host_ino(&dir.path().join(&l.name));
            assert_ne!(node, 0, "{}: looked up", l.name);
            assert_eq!(l.attr_ino, Some(host), "{}: st_ino", l.name);
            assert_eq!(l.ino, host, "{}: d_ino == st_ino", l.name);
            // The node id is live: GETATTR answers for it.
            let (attr, _) = fs.getattr(&ctx, node, None).unwrap();
            assert_eq!(attr.st_ino, host);
        }
    }

    #[test]
    fn open_serves_an_existing_directory_and_refuses_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open(&PassthroughOptions::default(), dir.path(), None).is_ok());
        let missing = dir.path().join("missing");
        assert!(open(&PassthroughOptions::default(), &missing, None).is_err());
    }
}
