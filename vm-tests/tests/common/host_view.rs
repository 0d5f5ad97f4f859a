//! The host's view of a share, for the checks a test makes outside the guest: before a boot
//! (files the guest must find) and after it (what the guest left behind).
//!
//! [`LocalDirView`] is a host directory through `std::fs` (the passthrough backend);
//! [`CephVolumeView`] is a CephFS volume through an admin libcephfs client mounted at the
//! volume's root, driven through the backend's own `FileSystem` API (lookup, open, read, ...),
//! so it is a second Ceph client, independent of the daemon the guest used. Paths are relative
//! to the share's root, `/`-separated (`""` is the root).

use std::ffi::CString;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cephfs_backend::{CephConfig, CephFs};
use fuse_backend_rs::abi::fuse_abi::{stat64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, FileSystem, GetxattrReply, SetattrValid,
};
use vm_tests::fs_buffers::{SliceReader, VecWriter};

/// A failed host-side operation, with what was done where.
#[derive(Debug, thiserror::Error)]
#[error("host view {view}: {op} {path:?}: {source}")]
pub struct HostViewError {
    pub view: String,
    pub op: &'static str,
    pub path: String,
    #[source]
    pub source: io::Error,
}

impl HostViewError {
    /// The errno, when there is one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

pub type Result<T> = std::result::Result<T, HostViewError>;

/// The type of a file as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostFileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Other,
}

impl HostFileKind {
    fn from_mode(mode: u32) -> HostFileKind {
        match mode & libc::S_IFMT {
            libc::S_IFREG => HostFileKind::File,
            libc::S_IFDIR => HostFileKind::Dir,
            libc::S_IFLNK => HostFileKind::Symlink,
            libc::S_IFIFO => HostFileKind::Fifo,
            _ => HostFileKind::Other,
        }
    }
}

/// `lstat` of a path, as far as the checks need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostStat {
    pub kind: HostFileKind,
    /// Permission bits with setuid/setgid/sticky (`mode & 0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub ino: u64,
    pub size: u64,
    /// 512-byte blocks.
    pub blocks: u64,
    pub atime: i64,
    pub mtime: i64,
}

/// Checks and set-up outside the guest, the same on both backends.
pub trait HostView {
    /// What this view looks at, for messages.
    fn describe(&self) -> String;
    /// `r` with its error naming this view, the operation and the path.
    fn wrap<T>(&self, op: &'static str, rel: &str, r: io::Result<T>) -> Result<T>
    where
        Self: Sized,
    {
        r.map_err(|source| HostViewError {
            view: self.describe(),
            op,
            path: rel.to_string(),
            source,
        })
    }
    /// Creates (or truncates) `path` with `data`, flushed to stable storage.
    fn write_file(&self, path: &str, data: &[u8]) -> Result<()>;
    /// Makes a directory (mode 0755).
    fn mkdir(&self, path: &str) -> Result<()>;
    /// Makes a symlink at `path` pointing to `target`.
    fn symlink(&self, target: &str, path: &str) -> Result<()>;
    /// Sets the permission bits.
    fn chmod(&self, path: &str, perm: u32) -> Result<()>;
    /// Sets the owner, without following a symlink.
    fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<()>;
    /// Removes a file.
    fn unlink(&self, path: &str) -> Result<()>;
    /// The whole content of a file.
    fn read(&self, path: &str) -> Result<Vec<u8>>;
    /// `lstat`.
    fn stat(&self, path: &str) -> Result<HostStat>;
    /// A symlink's target.
    fn read_link(&self, path: &str) -> Result<String>;
    /// The names in a directory, sorted, without `.` and `..`.
    fn list(&self, path: &str) -> Result<Vec<String>>;
    /// An extended attribute's value; `None` when the file has no such attribute.
    fn getxattr(&self, path: &str, name: &str) -> Result<Option<Vec<u8>>>;

    /// Whether `path` exists (a dangling symlink exists); errors other than ENOENT are errors.
    fn exists(&self, path: &str) -> Result<bool> {
        match self.stat(path) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The content of a file as text.
    fn read_string(&self, path: &str) -> Result<String> {
        self.read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

/// A host directory (the passthrough backend's share).
pub struct LocalDirView {
    root: PathBuf,
}

impl LocalDirView {
    pub fn new(root: impl Into<PathBuf>) -> LocalDirView {
        LocalDirView { root: root.into() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        }
    }
}

fn lgetxattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let n = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid C strings and a buffer of the length given.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) {
            Ok(None)
        } else {
            Err(e)
        };
    }
    buf.truncate(r as usize);
    Ok(Some(buf))
}

impl HostView for LocalDirView {
    fn describe(&self) -> String {
        format!("host directory {}", self.root.display())
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let r = (|| {
            use std::io::Write;
            let mut f = std::fs::File::create(self.path(path))?;
            f.write_all(data)?;
            f.sync_all()
        })();
        self.wrap("write", path, r)
    }

    fn mkdir(&self, path: &str) -> Result<()> {
        self.wrap("mkdir", path, std::fs::create_dir(self.path(path)))
    }

    fn symlink(&self, target: &str, path: &str) -> Result<()> {
        self.wrap(
            "symlink",
            path,
            std::os::unix::fs::symlink(target, self.path(path)),
        )
    }

    fn chmod(&self, path: &str, perm: u32) -> Result<()> {
        self.wrap(
            "chmod",
            path,
            std::fs::set_permissions(self.path(path), std::fs::Permissions::from_mode(perm)),
        )
    }

    fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<()> {
        self.wrap(
            "chown",
            path,
            std::os::unix::fs::lchown(self.path(path), Some(uid), Some(gid)),
        )
    }

    fn unlink(&self, path: &str) -> Result<()> {
        self.wrap("unlink", path, std::fs::remove_file(self.path(path)))
    }

    fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.wrap("read", path, std::fs::read(self.path(path)))
    }

    fn stat(&self, path: &str) -> Result<HostStat> {
        let m = self.wrap("lstat", path, std::fs::symlink_metadata(self.path(path)))?;
        let ft = m.file_type();
        let kind = if ft.is_symlink() {
            HostFileKind::Symlink
        } else if ft.is_dir() {
            HostFileKind::Dir
        } else if ft.is_file() {
            HostFileKind::File
        } else if ft.is_fifo() {
            HostFileKind::Fifo
        } else {
            HostFileKind::Other
        };
        Ok(HostStat {
            kind,
            perm: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            ino: m.ino(),
            size: m.len(),
            blocks: m.blocks(),
            atime: m.atime(),
            mtime: m.mtime(),
        })
    }

    fn read_link(&self, path: &str) -> Result<String> {
        let t = self.wrap("readlink", path, std::fs::read_link(self.path(path)))?;
        Ok(t.display().to_string())
    }

    fn list(&self, path: &str) -> Result<Vec<String>> {
        let r = (|| {
            let mut names = Vec::new();
            for e in std::fs::read_dir(self.path(path))? {
                names.push(e?.file_name().to_string_lossy().into_owned());
            }
            names.sort();
            Ok(names)
        })();
        self.wrap("readdir", path, r)
    }

    fn getxattr(&self, path: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.wrap("getxattr", path, lgetxattr(&self.path(path), name))
    }
}

/// Node id of the root in the FUSE numbering `CephFs` answers with.
const ROOT_NODE: u64 = 1;
/// Bytes per READ/WRITE call (well under what the backend serves in one request).
const IO_CHUNK: u32 = 128 * 1024;

fn root_ctx() -> Context {
    Context::default()
}

fn cname(name: &str) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Nodes looked up while walking a path; forgotten again when dropped.
struct Walk<'a> {
    fs: &'a CephFs,
    nodes: Vec<u64>,
}

impl Walk<'_> {
    /// The last node (the root for an empty path).
    fn node(&self) -> u64 {
        self.nodes.last().copied().unwrap_or(ROOT_NODE)
    }
}

impl Drop for Walk<'_> {
    fn drop(&mut self) {
        for &n in &self.nodes {
            self.fs.forget(&root_ctx(), n, 1);
        }
    }
}

/// A CephFS volume through an admin libcephfs client mounted at the volume's root.
pub struct CephVolumeView {
    fs: CephFs,
    root: String,
}

impl CephVolumeView {
    /// Mounts `root` as `client.<id>` (the admin, normally).
    pub fn connect(conf: &Path, id: &str, keyring: &Path, root: &str) -> CephVolumeView {
        let mut config = CephConfig::new(conf, id, keyring, root);
        // See POSIX ACLs as ACLs (a client without it answers EOPNOTSUPP for them).
        config.posix_acl = true;
        let fs = CephFs::connect(config).unwrap_or_else(|e| {
            panic!("host view: mounting CephFS {root} as client.{id} failed: {e}")
        });
        CephVolumeView {
            fs,
            root: root.to_string(),
        }
    }

    /// The backend's filesystem, for operations the trait does not cover.
    pub fn fs(&self) -> &CephFs {
        &self.fs
    }

    /// Looks up every component of `path`.
    fn walk(&self, path: &str) -> io::Result<Walk<'_>> {
        let mut w = Walk {
            fs: &self.fs,
            nodes: Vec::new(),
        };
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let e = self.fs.lookup(&root_ctx(), w.node(), &cname(part)?)?;
            w.nodes.push(e.inode);
        }
        Ok(w)
    }

    /// The parent's walk and the last component.
    fn walk_parent<'p>(&self, path: &'p str) -> io::Result<(Walk<'_>, &'p str)> {
        let path = path.trim_end_matches('/');
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        if name.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok((self.walk(dir)?, name))
    }

    fn setattr(&self, path: &str, attr: stat64, valid: SetattrValid) -> io::Result<()> {
        let w = self.walk(path)?;
        self.fs
            .setattr(&root_ctx(), w.node(), attr, None, valid)
            .map(|_| ())
    }

    /// Makes a directory inside `parent_path` (used for `.snap/NAME`, a snapshot).
    pub fn mkdir_in(&self, parent_path: &str, name: &str) -> Result<()> {
        let r = (|| {
            let w = self.walk(parent_path)?;
            let e = self
                .fs
                .mkdir(&root_ctx(), w.node(), &cname(name)?, 0o755, 0)?;
            self.fs.forget(&root_ctx(), e.inode, 1);
            Ok(())
        })();
        self.wrap("mkdir", &format!("{parent_path}/{name}"), r)
    }

    /// Sets an extended attribute (e.g. `ceph.quota.max_bytes`).
    pub fn setxattr(&self, path: &str, name: &str, value: &[u8]) -> Result<()> {
        let r = (|| {
            let w = self.walk(path)?;
            self.fs
                .setxattr(&root_ctx(), w.node(), &cname(name)?, value, 0)
        })();
        self.wrap("setxattr", path, r)
    }
}

fn zero_stat() -> stat64 {
    // SAFETY: stat64 is plain old data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

impl HostView for CephVolumeView {
    fn describe(&self) -> String {
        format!("CephFS volume {} (admin libcephfs mount)", self.root)
    }

    fn write_file(&self, path: &str, data: &[u8]) -> Result<()> {
        let r = (|| {
            let (dir, name) = self.walk_parent(path)?;
            let ctx = root_ctx();
            let name = cname(name)?;
            let (node, handle) = match self.fs.lookup(&ctx, dir.node(), &name) {
                Ok(e) => {
                    let (h, _, _) =
                        self.fs
                            .open(&ctx, e.inode, (libc::O_WRONLY | libc::O_TRUNC) as u32, 0)?;
                    (e.inode, h)
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let args = CreateIn {
                        flags: (libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL) as u32,
                        mode: libc::S_IFREG | 0o644,
                        umask: 0,
                        fuse_flags: 0,
                    };
                    let (e, h, _, _) = self.fs.create(&ctx, dir.node(), &name, args)?;
                    (e.inode, h)
                }
                Err(e) => return Err(e),
            };
            let handle = handle.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            let written = (|| {
                let mut off = 0usize;
                for chunk in data.chunks(IO_CHUNK as usize) {
                    let n = self.fs.write(
                        &ctx,
                        node,
                        handle,
                        &mut SliceReader(chunk),
                        chunk.len() as u32,
                        off as u64,
                        None,
                        false,
                        0,
                        0,
                    )?;
                    if n != chunk.len() {
                        return Err(io::Error::from_raw_os_error(libc::EIO));
                    }
                    off += n;
                }
                self.fs.fsync(&ctx, node, false, handle)
            })();
            let released = self.fs.release(&ctx, node, 0, handle, true, false, None);
            self.fs.forget(&ctx, node, 1);
            written.and(released)
        })();
        self.wrap("write", path, r)
    }

    fn mkdir(&self, path: &str) -> Result<()> {
        let r = (|| {
            let (dir, name) = self.walk_parent(path)?;
            let e = self
                .fs
                .mkdir(&root_ctx(), dir.node(), &cname(name)?, 0o755, 0)?;
            self.fs.forget(&root_ctx(), e.inode, 1);
            Ok(())
        })();
        self.wrap("mkdir", path, r)
    }

    fn symlink(&self, target: &str, path: &str) -> Result<()> {
        let r = (|| {
            let (dir, name) = self.walk_parent(path)?;
            let e = self
                .fs
                .symlink(&root_ctx(), &cname(target)?, dir.node(), &cname(name)?)?;
            self.fs.forget(&root_ctx(), e.inode, 1);
            Ok(())
        })();
        self.wrap("symlink", path, r)
    }

    fn chmod(&self, path: &str, perm: u32) -> Result<()> {
        let mut attr = zero_stat();
        attr.st_mode = perm;
        self.wrap("chmod", path, self.setattr(path, attr, SetattrValid::MODE))
    }

    fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<()> {
        let mut attr = zero_stat();
        attr.st_uid = uid;
        attr.st_gid = gid;
        self.wrap(
            "chown",
            path,
            self.setattr(path, attr, SetattrValid::UID | SetattrValid::GID),
        )
    }

    fn unlink(&self, path: &str) -> Result<()> {
        let r = (|| {
            let (dir, name) = self.walk_parent(path)?;
            self.fs.unlink(&root_ctx(), dir.node(), &cname(name)?)
        })();
        self.wrap("unlink", path, r)
    }

    fn read(&self, path: &str) -> Result<Vec<u8>> {
        let r = (|| {
            let w = self.walk(path)?;
            let ctx = root_ctx();
            let node = w.node();
            let (h, _, _) = self.fs.open(&ctx, node, libc::O_RDONLY as u32, 0)?;
            let h = h.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            let mut buf = VecWriter::default();
            let read = (|| loop {
                let before = buf.0.len();
                self.fs
                    .read(&ctx, node, h, &mut buf, IO_CHUNK, before as u64, None, 0)?;
                if buf.0.len() == before {
                    return Ok(());
                }
            })();
            let released = self.fs.release(&ctx, node, 0, h, false, false, None);
            read.and(released).map(|_| buf.0)
        })();
        self.wrap("read", path, r)
    }

    fn stat(&self, path: &str) -> Result<HostStat> {
        let r = (|| {
            let w = self.walk(path)?;
            let (st, _) = self.fs.getattr(&root_ctx(), w.node(), None)?;
            Ok(HostStat {
                kind: HostFileKind::from_mode(st.st_mode),
                perm: st.st_mode & 0o7777,
                uid: st.st_uid,
                gid: st.st_gid,
                nlink: st.st_nlink,
                ino: st.st_ino,
                size: st.st_size as u64,
                blocks: st.st_blocks as u64,
                atime: st.st_atime,
                mtime: st.st_mtime,
            })
        })();
        self.wrap("lstat", path, r)
    }

    fn read_link(&self, path: &str) -> Result<String> {
        let r = (|| {
            let w = self.walk(path)?;
            self.fs.readlink(&root_ctx(), w.node())
        })();
        let t = self.wrap("readlink", path, r)?;
        Ok(String::from_utf8_lossy(&t).into_owned())
    }

    fn list(&self, path: &str) -> Result<Vec<String>> {
        let r = (|| {
            let w = self.walk(path)?;
            let ctx = root_ctx();
            let node = w.node();
            let (h, _) = self.fs.opendir(&ctx, node, 0)?;
            let h = h.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
            let mut names = Vec::new();
            let mut offset = 0;
            let listed = loop {
                let mut batch = Vec::new();
                let r = self
                    .fs
                    .readdir(&ctx, node, h, 64 * 1024, offset, &mut |d: DirEntry| {
                        batch.push((String::from_utf8_lossy(d.name).into_owned(), d.offset));
                        Ok(1)
                    });
                if let Err(e) = r {
                    break Err(e);
                }
                let Some(last) = batch.last() else {
                    break Ok(());
                };
                offset = last.1;
                names.extend(batch.into_iter().map(|(n, _)| n));
            };
            let released = self.fs.releasedir(&ctx, node, 0, h);
            listed.and(released)?;
            names.retain(|n| n != "." && n != "..");
            names.sort();
            Ok(names)
        })();
        self.wrap("readdir", path, r)
    }

    fn getxattr(&self, path: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let r = (|| {
            let w = self.walk(path)?;
            match self
                .fs
                .getxattr(&root_ctx(), w.node(), &cname(name)?, 64 * 1024)
            {
                Ok(GetxattrReply::Value(v)) => Ok(Some(v)),
                Ok(GetxattrReply::Count(_)) => Err(io::Error::from_raw_os_error(libc::EIO)),
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(None),
                Err(e) => Err(e),
            }
        })();
        self.wrap("getxattr", path, r)
    }
}
