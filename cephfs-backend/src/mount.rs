//! The safe wrapper over libcephfs: the only module with `unsafe` code.
//!
//! Owns the lifetime rules of every libcephfs object: `CephMount` (one `ceph_mount_info`,
//! unmounted and released on drop, which may wait at most a set time for the unmount),
//! `CephInode` (one client reference to an `Inode`, put on drop), `CephFile` (an open `Fh`,
//! closed on drop), `CephDir` (a directory stream, released on drop) and `UserPerm`
//! (credentials, destroyed on drop). Every object that refers to a mount
//! holds an `Arc<CephMount>`, so the mount is torn down only after the last of them is gone.
//! Errors are `-errno` turned into `io::Error`s.
//!
//! Must not: keep FUSE state (node ids, lookup counts, handle numbers: that is `inode` and
//! `fs`), or interpret paths beyond the one mount root.

use std::ffi::{CStr, CString};
use std::io;
use std::path::Path;
use std::ptr::{self, NonNull};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64};
use libc::{c_char, c_int};

use crate::error::{check, errno, CephError};
use crate::ffi;

/// How many times [`CephMount::read_into`] reads before giving up on a file whose size keeps
/// changing under it. The second read normally settles it (see there).
const READ_ATTEMPTS: usize = 4;

/// `ptr`, or EIO when libcephfs reported success but handed back NULL.
fn non_null<T>(ptr: *mut T) -> io::Result<NonNull<T>> {
    NonNull::new(ptr).ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
}

fn cstring(what: &'static str, value: &str) -> Result<CString, CephError> {
    CString::new(value).map_err(|_| CephError::NulByte {
        what,
        value: value.to_string(),
    })
}

/// Where and as whom to mount.
#[derive(Debug, Clone)]
pub struct MountOptions<'a> {
    /// ceph.conf (monitor addresses, options).
    pub conf: &'a Path,
    /// cephx id without the `client.` prefix.
    pub id: &'a str,
    /// keyring holding `client.<id>`'s key.
    pub keyring: &'a Path,
    /// Absolute path inside the filesystem that becomes the root of the mount.
    pub root: &'a str,
    /// CephFS filesystem name; `None` takes the cluster's default.
    pub fs_name: Option<&'a str>,
    /// How long to wait for the monitors and the MDS before failing.
    pub mount_timeout: Duration,
    /// POSIX ACLs kept and enforced by the client (`client_acl_type=posix_acl`), and a mount
    /// umask of 0: each create applies its caller's umask itself.
    pub posix_acl: bool,
}

/// A mounted CephFS subtree (`ceph_mount_info`).
pub struct CephMount {
    cmount: NonNull<ffi::CephMountInfo>,
    /// Longest `drop` waits for `ceph_unmount` (see [`CephMount::bound_unmount`]).
    unmount_timeout: Mutex<Option<Duration>>,
}

// SAFETY: libcephfs' `Client` serialises every call on a mount with its own client lock; the
// `ceph_mount_info` pointer is only freed in `Drop`, when no other reference exists.
unsafe impl Send for CephMount {}
// SAFETY: as above: concurrent calls through `&CephMount` are what libcephfs is built for.
unsafe impl Sync for CephMount {}

impl std::fmt::Debug for CephMount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CephMount").finish_non_exhaustive()
    }
}

/// A `ceph_mount_info` that is released if set-up fails half way.
struct Pending(NonNull<ffi::CephMountInfo>);

impl Drop for Pending {
    fn drop(&mut self) {
        // SAFETY: the handle came from ceph_create and was never mounted (or the mount
        // failed), so ceph_release is the one call that frees it; nothing else holds it.
        unsafe {
            ffi::ceph_release(self.0.as_ptr());
        }
    }
}

impl CephMount {
    /// The value of a configuration option as this client uses it (the conf, then the
    /// daemon's own settings).
    pub fn conf_value(&self, option: &str) -> io::Result<String> {
        conf_get(self.cmount.as_ptr(), option)
    }

    /// Creates a client as `client.<id>`, reads `conf`, uses `keyring`, and mounts `root`.
    pub fn connect(opts: &MountOptions<'_>) -> Result<Arc<CephMount>, CephError> {
        crate::load_libcephfs()?;
        if !opts.root.starts_with('/') {
            return Err(CephError::RelativeRoot(opts.root.to_string()));
        }
        // Check the files first: libcephfs' own messages for a missing keyring are vague.
        std::fs::File::open(opts.conf).map_err(|source| CephError::ConfFile {
            path: opts.conf.to_path_buf(),
            source,
        })?;
        std::fs::File::open(opts.keyring).map_err(|source| CephError::Keyring {
            path: opts.keyring.to_path_buf(),
            source,
        })?;
        let id = cstring("ceph id", opts.id)?;
        let conf_s = opts.conf.to_str().ok_or_else(|| CephError::ConfFile {
            path: opts.conf.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"),
        })?;
        let conf = cstring("ceph config path", conf_s)?;
        let keyring_s = opts.keyring.to_str().ok_or_else(|| CephError::Keyring {
            path: opts.keyring.to_path_buf(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"),
        })?;
        let root = cstring("ceph root", opts.root)?;

        let mut raw: *mut ffi::CephMountInfo = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer and `id` a NUL-terminated string that outlives
        // the call (libcephfs copies it).
        let ret = unsafe { ffi::ceph_create(&mut raw, id.as_ptr()) };
        check(ret).map_err(|source| CephError::Create {
            id: opts.id.to_string(),
            source,
        })?;
        let pending = Pending(NonNull::new(raw).ok_or_else(|| CephError::Create {
            id: opts.id.to_string(),
            source: io::Error::from_raw_os_error(libc::ENOMEM),
        })?);
        let cm = pending.0.as_ptr();

        // SAFETY: `cm` is a live, unmounted handle; `conf` is NUL-terminated.
        let ret = unsafe { ffi::ceph_conf_read_file(cm, conf.as_ptr()) };
        check(ret).map_err(|source| CephError::ReadConf {
            path: opts.conf.to_path_buf(),
            source,
        })?;
        let timeout = opts.mount_timeout.as_secs().max(1).to_string();
        let settings: [(&str, &str); 8] = [
            ("keyring", keyring_s),
            // Fail fast on an unreachable cluster instead of libcephfs' 300 s.
            ("client_mount_timeout", &timeout),
            ("rados_mon_op_timeout", &timeout),
            // Several clients of one id may live in one process: no admin socket clashes.
            ("admin_socket", ""),
            // Logs go through the daemon's own; a log file named in the conf would be out of
            // reach in the sandbox.
            ("log_file", ""),
            // Nor on stderr (a conf may say err_to_stderr): the daemon reports failures as
            // one line of its own.
            ("err_to_stderr", "false"),
            ("log_to_stderr", "false"),
            // Permission checks on behalf of the guest's uid/gid, whatever the conf says.
            ("client_permissions", "true"),
        ];
        for (option, value) in settings {
            set_option(cm, option, value)?;
        }
        crate::client_conf::quiet_unless_routed(
            |option| conf_get(cm, option),
            |option, value| set_option(cm, option, value),
            |e| matches!(e, CephError::SetOption { source, .. } if source.raw_os_error() == Some(libc::ENOENT)),
        )?;
        if opts.posix_acl {
            set_option(cm, "client_acl_type", "posix_acl")?;
            // The client applies its mount's umask to a node created without a default ACL
            // in its parent; the guest's own umask comes with each request instead.
            // SAFETY: live, unmounted handle.
            unsafe { ffi::ceph_umask(cm, 0) };
        }
        if let Some(name) = opts.fs_name {
            let cname = cstring("ceph filesystem name", name)?;
            // SAFETY: live unmounted handle, NUL-terminated name.
            let ret = unsafe { ffi::ceph_select_filesystem(cm, cname.as_ptr()) };
            check(ret).map_err(|source| CephError::SelectFs {
                name: name.to_string(),
                source,
            })?;
        }
        // SAFETY: live handle with its configuration read.
        let ret = unsafe { ffi::ceph_init(cm) };
        check(ret).map_err(|source| CephError::Connect {
            id: opts.id.to_string(),
            conf: opts.conf.to_path_buf(),
            keyring: opts.keyring.to_path_buf(),
            source,
        })?;
        // SAFETY: live, initialised handle; `root` is NUL-terminated.
        let ret = unsafe { ffi::ceph_mount(cm, root.as_ptr()) };
        if ret < 0 {
            let source = errno(ret.into());
            return Err(match -ret {
                libc::ENOENT => CephError::RootMissing {
                    root: opts.root.to_string(),
                },
                libc::EPERM | libc::EACCES => CephError::RootDenied {
                    id: opts.id.to_string(),
                    root: opts.root.to_string(),
                    source,
                },
                libc::ENOTDIR => CephError::RootNotDir {
                    root: opts.root.to_string(),
                },
                libc::ETIMEDOUT | libc::ECONNREFUSED | libc::ENOTCONN => CephError::Connect {
                    id: opts.id.to_string(),
                    conf: opts.conf.to_path_buf(),
                    keyring: opts.keyring.to_path_buf(),
                    source,
                },
                _ => CephError::Mount {
                    id: opts.id.to_string(),
                    root: opts.root.to_string(),
                    source,
                },
            });
        }
        let cmount = pending.0;
        std::mem::forget(pending);
        Ok(Arc::new(CephMount {
            cmount,
            unmount_timeout: Mutex::new(None),
        }))
    }

    fn raw(&self) -> *mut ffi::CephMountInfo {
        self.cmount.as_ptr()
    }

    /// Makes the final drop wait at most `limit` for `ceph_unmount`, which flushes dirty
    /// data and caps and closes the MDS session, and so waits as long as the cluster is
    /// gone. Past `limit` the unmount (and the release of the handle) goes on in its own
    /// thread and the drop returns; the process may exit first. `None` (the default): the
    /// drop unmounts on the dropping thread, however long that takes.
    ///
    /// `ceph_abort_conn` is not the way out: it deletes the `Client`, so it is only safe with
    /// no call in flight, and it throws away buffered writes. When the last reference goes,
    /// no call is in flight (every call holds one), and either the cluster answered the last
    /// of them or nothing is known to be wrong: an unmount is right, bounded by this limit.
    pub fn bound_unmount(&self, limit: Option<Duration>) {
        *self
            .unmount_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = limit;
    }

    /// The root inode of the mount (the configured root directory).
    pub fn root(self: &Arc<Self>) -> io::Result<CephInode> {
        let mut out: *mut ffi::Inode = ptr::null_mut();
        // SAFETY: live mount; `out` is a valid out-pointer that receives a new reference.
        check(unsafe { ffi::ceph_ll_lookup_root(self.raw(), &mut out) })?;
        self.adopt(out)
    }

    /// Wraps a freshly referenced `Inode` pointer.
    fn adopt(self: &Arc<Self>, ptr: *mut ffi::Inode) -> io::Result<CephInode> {
        Ok(CephInode {
            mount: Arc::clone(self),
            ptr: non_null(ptr)?,
        })
    }

    /// Runs `call`, a libcephfs call that stores a new `Inode` reference and that inode's
    /// `CEPH_STATX_BASIC_STATS` through the two out-pointers it is given, and adopts the
    /// reference.
    fn new_inode(
        self: &Arc<Self>,
        call: impl FnOnce(*mut *mut ffi::Inode, *mut ffi::CephStatx) -> c_int,
    ) -> io::Result<(CephInode, Statx)> {
        let mut out = ptr::null_mut();
        let mut stx = ffi::CephStatx::default();
        check(call(&mut out, &mut stx))?;
        Ok((self.adopt(out)?, Statx(stx)))
    }

    pub fn lookup(
        self: &Arc<Self>,
        parent: &CephInode,
        name: &CStr,
        perm: &UserPerm,
    ) -> io::Result<(CephInode, Statx)> {
        // SAFETY: live mount, live parent reference, NUL-terminated name, valid out-pointers
        // (`new_inode`'s), live credentials.
        self.new_inode(|out, stx| unsafe {
            ffi::ceph_ll_lookup(
                self.raw(),
                parent.ptr.as_ptr(),
                name.as_ptr(),
                out,
                stx,
                ffi::CEPH_STATX_BASIC_STATS,
                0,
                perm.raw(),
            )
        })
    }

    pub fn getattr(&self, inode: &CephInode, perm: &UserPerm) -> io::Result<Statx> {
        self.getattr_flags(inode, perm, 0)
    }

    /// `getattr` with `AT_STATX_*` flags.
    pub fn getattr_flags(
        &self,
        inode: &CephInode,
        perm: &UserPerm,
        flags: u32,
    ) -> io::Result<Statx> {
        let mut stx = ffi::CephStatx::default();
        // SAFETY: live mount, inode reference and credentials; `stx` is writable.
        check(unsafe {
            ffi::ceph_ll_getattr(
                self.raw(),
                inode.ptr.as_ptr(),
                &mut stx,
                ffi::CEPH_STATX_BASIC_STATS,
                flags,
                perm.raw(),
            )
        })?;
        Ok(Statx(stx))
    }

    pub fn setattr(&self, inode: &CephInode, attr: &SetAttr, perm: &UserPerm) -> io::Result<()> {
        let mut stx = ffi::CephStatx {
            stx_mode: attr.mode as u16,
            stx_uid: attr.uid,
            stx_gid: attr.gid,
            stx_size: attr.size,
            stx_atime: attr.atime,
            stx_mtime: attr.mtime,
            stx_ctime: attr.ctime,
            ..Default::default()
        };
        // SAFETY: live mount, inode and credentials; `stx` is readable for the call.
        check(unsafe {
            ffi::ceph_ll_setattr(
                self.raw(),
                inode.ptr.as_ptr(),
                &mut stx,
                attr.mask,
                perm.raw(),
            )
        })?;
        Ok(())
    }

    pub fn open(
        self: &Arc<Self>,
        inode: &CephInode,
        flags: i32,
        perm: &UserPerm,
    ) -> io::Result<CephFile> {
        let mut fh = ptr::null_mut();
        // SAFETY: live mount, inode, credentials; `fh` is a valid out-pointer.
        check(unsafe {
            ffi::ceph_ll_open(self.raw(), inode.ptr.as_ptr(), flags, &mut fh, perm.raw())
        })?;
        Ok(CephFile {
            mount: Arc::clone(self),
            fh: non_null(fh)?,
            inode: inode.ptr,
            flags,
        })
    }

    pub fn create(
        self: &Arc<Self>,
        parent: &CephInode,
        name: &CStr,
        mode: u32,
        flags: i32,
        perm: &UserPerm,
    ) -> io::Result<(CephInode, CephFile, Statx)> {
        let mut out = ptr::null_mut();
        let mut fh = ptr::null_mut();
        let mut stx = ffi::CephStatx::default();
        // SAFETY: live mount, parent, credentials; NUL-terminated name; valid out-pointers.
        check(unsafe {
            ffi::ceph_ll_create(
                self.raw(),
                parent.ptr.as_ptr(),
                name.as_ptr(),
                mode,
                flags,
                &mut out,
                &mut fh,
                &mut stx,
                ffi::CEPH_STATX_BASIC_STATS,
                0,
                perm.raw(),
            )
        })?;
        // Adopt both before checking either, so neither leaks.
        let inode = NonNull::new(out).map(|ptr| CephInode {
            mount: Arc::clone(self),
            ptr,
        });
        let file = NonNull::new(fh)
            .zip(NonNull::new(out))
            .map(|(fh, inode)| CephFile {
                mount: Arc::clone(self),
                fh,
                inode,
                flags,
            });
        match (inode, file) {
            (Some(i), Some(f)) => Ok((i, f, Statx(stx))),
            _ => Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }

    /// Reads `len` bytes at `offset` (fewer at the end of the file) into a new buffer.
    pub fn read(&self, file: &CephFile, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let n = self.read_into(file, offset, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Reads into `buf` (as much as it holds) at `offset`; the bytes read, which are the
    /// file's bytes from `offset` on.
    ///
    /// `ceph_ll_read` alone does not promise that. libcephfs 16.2's `Client::_read` reads
    /// synchronously up to the size it knows and, when the OSDs have no more, asks the MDS for
    /// the size; if the file grew meanwhile it reads the rest in a second pass, and if that pass
    /// goes through the object cacher (the client now holds the cache cap), the cacher
    /// *replaces* the first pass's bytes instead of appending to them (`ObjectCacher::_readx`
    /// clears the result list): the caller gets the bytes past the old end of file as if they
    /// were at `offset`. Such an answer is always shorter than asked and stops before the size
    /// the client then knows, which an honest short read never does (it stops at the end of
    /// the file). So a short read is checked against the client's cached size (no MDS round
    /// trip) and, if it stops early, done again for no more than that size: a read that does
    /// not pass the size the client knows never takes the second pass.
    pub fn read_into(&self, file: &CephFile, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let mut want = buf.len();
        for _ in 0..READ_ATTEMPTS {
            let n = self.read_once(file, offset, &mut buf[..want])?;
            if n == want {
                return Ok(n);
            }
            let size = self.cached_size(file)?;
            if offset.saturating_add(n as u64) >= size {
                return Ok(n);
            }
            // Stopped before the end of file: read again, no further than it.
            want = want.min(usize::try_from(size - offset).unwrap_or(usize::MAX));
            tracing::debug!(
                offset,
                n,
                size,
                "cephfs: a short read stopped before the end of file; read again"
            );
        }
        tracing::warn!(
            offset,
            "cephfs: {READ_ATTEMPTS} reads in a row stopped before the end of file (the file's \
             size keeps changing); the read fails with EIO rather than return misplaced bytes"
        );
        Err(io::Error::from_raw_os_error(libc::EIO))
    }

    /// One `ceph_ll_read` into `buf`: the count libcephfs returned (see [`Self::read_into`]).
    fn read_once(&self, file: &CephFile, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: live mount and open file; `buf` is writable for its length.
        let n = check(unsafe {
            ffi::ceph_ll_read(
                self.raw(),
                file.fh.as_ptr(),
                off,
                buf.len() as u64,
                buf.as_mut_ptr().cast::<c_char>(),
            )
        })?;
        Ok((n as usize).min(buf.len()))
    }

    /// The size of `file` as this client knows it now, without asking the MDS.
    fn cached_size(&self, file: &CephFile) -> io::Result<u64> {
        // The mount's own credentials, owned by the mount: no allocation per call. An answer
        // from the cache checks no permission.
        // SAFETY: live mount.
        let perm = non_null(unsafe { ffi::ceph_mount_perms(self.raw()) })?;
        let mut stx = ffi::CephStatx::default();
        // SAFETY: live mount; the inode is alive while its open `Fh` is (see `CephFile`);
        // `stx` is writable; `perm` lives as long as the mount. `AT_STATX_DONT_SYNC` answers
        // from the client's cache.
        check(unsafe {
            ffi::ceph_ll_getattr(
                self.raw(),
                file.inode.as_ptr(),
                &mut stx,
                ffi::CEPH_STATX_SIZE,
                ffi::AT_STATX_DONT_SYNC,
                perm.as_ptr(),
            )
        })?;
        Ok(stx.stx_size)
    }

    pub fn write(&self, file: &CephFile, offset: u64, data: &[u8]) -> io::Result<usize> {
        let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        self.write_at(file, off, data)
    }

    /// Writes `data` at the file's end as the MDS knows it now, as `write` on an `O_APPEND`
    /// descriptor does: libcephfs seeks to the end (asking for the size, so other clients'
    /// writes are flushed first) when given no offset on an `O_APPEND` handle. EBADF for a
    /// handle opened without `O_APPEND`, where no offset would mean the handle's own position.
    pub fn append(&self, file: &CephFile, data: &[u8]) -> io::Result<usize> {
        if !file.appends() {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        self.write_at(file, -1, data)
    }

    /// `ceph_ll_write` at `off` (-1: the handle's position, or its end with `O_APPEND`).
    fn write_at(&self, file: &CephFile, off: i64, data: &[u8]) -> io::Result<usize> {
        // SAFETY: live mount and open file; `data` is readable for its length.
        let n = check(unsafe {
            ffi::ceph_ll_write(
                self.raw(),
                file.fh.as_ptr(),
                off,
                data.len() as u64,
                data.as_ptr().cast::<c_char>(),
            )
        })?;
        Ok(n as usize)
    }

    pub fn fsync(&self, file: &CephFile, datasync: bool) -> io::Result<()> {
        // SAFETY: live mount and open file.
        check(unsafe { ffi::ceph_ll_fsync(self.raw(), file.fh.as_ptr(), datasync as c_int) })?;
        Ok(())
    }

    /// Writes back everything this client has buffered (data and metadata, every file) and
    /// waits until the cluster has it.
    pub fn sync_fs(&self) -> io::Result<()> {
        // SAFETY: live mount.
        check(unsafe { ffi::ceph_sync_fs(self.raw()) })?;
        Ok(())
    }

    pub fn fallocate(&self, file: &CephFile, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let einval = || io::Error::from_raw_os_error(libc::EINVAL);
        let off = i64::try_from(offset).map_err(|_| einval())?;
        let len = i64::try_from(len).map_err(|_| einval())?;
        // SAFETY: live mount and open file.
        check(unsafe { ffi::ceph_ll_fallocate(self.raw(), file.fh.as_ptr(), mode, off, len) })?;
        Ok(())
    }

    pub fn lseek(&self, file: &CephFile, offset: u64, whence: i32) -> io::Result<u64> {
        let off = i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: live mount and open file.
        let ret = unsafe { ffi::ceph_ll_lseek(self.raw(), file.fh.as_ptr(), off, whence) };
        if ret < 0 {
            return Err(errno(ret));
        }
        Ok(ret as u64)
    }

    pub fn mknod(
        self: &Arc<Self>,
        parent: &CephInode,
        name: &CStr,
        mode: u32,
        rdev: u64,
        perm: &UserPerm,
    ) -> io::Result<(CephInode, Statx)> {
        // SAFETY: live mount, parent, credentials; NUL-terminated name; valid out-pointers.
        self.new_inode(|out, stx| unsafe {
            ffi::ceph_ll_mknod(
                self.raw(),
                parent.ptr.as_ptr(),
                name.as_ptr(),
                mode,
                rdev,
                out,
                stx,
                ffi::CEPH_STATX_BASIC_STATS,
                0,
                perm.raw(),
            )
        })
    }

    pub fn mkdir(
        self: &Arc<Self>,
        parent: &CephInode,
        name: &CStr,
        mode: u32,
        perm: &UserPerm,
    ) -> io::Result<(CephInode, Statx)> {
        // SAFETY: live mount, parent, credentials; NUL-terminated name; valid out-pointers.
        self.new_inode(|out, stx| unsafe {
            ffi::ceph_ll_mkdir(
                self.raw(),
                parent.ptr.as_ptr(),
                name.as_ptr(),
                mode,
                out,
                stx,
                ffi::CEPH_STATX_BASIC_STATS,
                0,
                perm.raw(),
            )
        })
    }

    pub fn symlink(
        self: &Arc<Self>,
        parent: &CephInode,
        name: &CStr,
        target: &CStr,
        perm: &UserPerm,
    ) -> io::Result<(CephInode, Statx)> {
        // SAFETY: live mount, parent, credentials; NUL-terminated strings; valid out-pointers.
        self.new_inode(|out, stx| unsafe {
            ffi::ceph_ll_symlink(
                self.raw(),
                parent.ptr.as_ptr(),
                name.as_ptr(),
                target.as_ptr(),
                out,
                stx,
                ffi::CEPH_STATX_BASIC_STATS,
                0,
                perm.raw(),
            )
        })
    }

    pub fn link(
        &self,
        inode: &CephInode,
        newparent: &CephInode,
        name: &CStr,
        perm: &UserPerm,
    ) -> io::Result<()> {
        // SAFETY: live mount, inodes and credentials; NUL-terminated name.
        check(unsafe {
            ffi::ceph_ll_link(
                self.raw(),
                inode.ptr.as_ptr(),
                newparent.ptr.as_ptr(),
                name.as_ptr(),
                perm.raw(),
            )
        })?;
        Ok(())
    }

    pub fn unlink(&self, parent: &CephInode, name: &CStr, perm: &UserPerm) -> io::Result<()> {
        // SAFETY: live mount, parent and credentials; NUL-terminated name.
        check(unsafe {
            ffi::ceph_ll_unlink(self.raw(), parent.ptr.as_ptr(), name.as_ptr(), perm.raw())
        })?;
        Ok(())
    }

    pub fn rmdir(&self, parent: &CephInode, name: &CStr, perm: &UserPerm) -> io::Result<()> {
        // SAFETY: live mount, parent and credentials; NUL-terminated name.
        check(unsafe {
            ffi::ceph_ll_rmdir(self.raw(), parent.ptr.as_ptr(), name.as_ptr(), perm.raw())
        })?;
        Ok(())
    }

    pub fn rename(
        &self,
        olddir: &CephInode,
        oldname: &CStr,
        newdir: &CephInode,
        newname: &CStr,
        perm: &UserPerm,
    ) -> io::Result<()> {
        // SAFETY: live mount, directories and credentials; NUL-terminated names.
        check(unsafe {
            ffi::ceph_ll_rename(
                self.raw(),
                olddir.ptr.as_ptr(),
                oldname.as_ptr(),
                newdir.ptr.as_ptr(),
                newname.as_ptr(),
                perm.raw(),
            )
        })?;
        Ok(())
    }

    pub fn readlink(&self, inode: &CephInode, perm: &UserPerm) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; libc::PATH_MAX as usize];
        // SAFETY: live mount, inode and credentials; `buf` is writable for its length.
        let n = check(unsafe {
            ffi::ceph_ll_readlink(
                self.raw(),
                inode.ptr.as_ptr(),
                buf.as_mut_ptr().cast::<c_char>(),
                buf.len(),
                perm.raw(),
            )
        })?;
        buf.truncate(n as usize);
        Ok(buf)
    }

    /// The value of `name`; with `size` 0 only its length (returned as an empty-valued
    /// `Err`-free `XattrSize`).
    pub fn getxattr(
        &self,
        inode: &CephInode,
        name: &CStr,
        size: usize,
        perm: &UserPerm,
    ) -> io::Result<XattrReply> {
        let mut buf = vec![0u8; size];
        let ptr = if size == 0 {
            ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast::<libc::c_void>()
        };
        // SAFETY: live mount, inode and credentials; `ptr` is null with size 0 or writable
        // for `size` bytes.
        let n = check(unsafe {
            ffi::ceph_ll_getxattr(
                self.raw(),
                inode.ptr.as_ptr(),
                name.as_ptr(),
                ptr,
                size,
                perm.raw(),
            )
        })? as usize;
        if size == 0 {
            return Ok(XattrReply::Size(n));
        }
        buf.truncate(n.min(size));
        Ok(XattrReply::Data(buf))
    }

    pub fn setxattr(
        &self,
        inode: &CephInode,
        name: &CStr,
        value: &[u8],
        flags: i32,
        perm: &UserPerm,
    ) -> io::Result<()> {
        // SAFETY: live mount, inode and credentials; `value` readable for its length.
        check(unsafe {
            ffi::ceph_ll_setxattr(
                self.raw(),
                inode.ptr.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast::<libc::c_void>(),
                value.len(),
                flags,
                perm.raw(),
            )
        })?;
        Ok(())
    }

    /// NUL-separated names; with `size` 0 only the length needed.
    pub fn listxattr(
        &self,
        inode: &CephInode,
        size: usize,
        perm: &UserPerm,
    ) -> io::Result<XattrReply> {
        let mut buf = vec![0u8; size];
        let ptr = if size == 0 {
            ptr::null_mut()
        } else {
            buf.as_mut_ptr().cast::<c_char>()
        };
        let mut len: libc::size_t = 0;
        // SAFETY: live mount, inode and credentials; `ptr` null with size 0 or writable for
        // `size` bytes; `len` is a valid out-pointer.
        check(unsafe {
            ffi::ceph_ll_listxattr(
                self.raw(),
                inode.ptr.as_ptr(),
                ptr,
                size,
                &mut len,
                perm.raw(),
            )
        })?;
        if size == 0 {
            return Ok(XattrReply::Size(len));
        }
        buf.truncate(len.min(size));
        Ok(XattrReply::Data(buf))
    }

    pub fn removexattr(&self, inode: &CephInode, name: &CStr, perm: &UserPerm) -> io::Result<()> {
        // SAFETY: live mount, inode and credentials; NUL-terminated name.
        check(unsafe {
            ffi::ceph_ll_removexattr(self.raw(), inode.ptr.as_ptr(), name.as_ptr(), perm.raw())
        })?;
        Ok(())
    }

    pub fn statfs(&self, inode: &CephInode) -> io::Result<statvfs64> {
        // SAFETY: statvfs is plain old data; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: live mount and inode; `st` is writable.
        check(unsafe { ffi::ceph_ll_statfs(self.raw(), inode.ptr.as_ptr(), &mut st) })?;
        // SAFETY: statvfs64 is plain old data; all-zero is a valid value.
        let mut out: statvfs64 = unsafe { std::mem::zeroed() };
        out.f_bsize = st.f_bsize;
        out.f_frsize = st.f_frsize;
        out.f_blocks = st.f_blocks;
        out.f_bfree = st.f_bfree;
        out.f_bavail = st.f_bavail;
        out.f_files = st.f_files;
        out.f_ffree = st.f_ffree;
        out.f_favail = st.f_favail;
        out.f_fsid = st.f_fsid;
        out.f_flag = st.f_flag;
        out.f_namemax = st.f_namemax;
        Ok(out)
    }

    /// Makes the client fetch `dir`'s attributes from the MDS again by reading the first
    /// chunk of its entries: the readdir reply carries the directory's current inode (link
    /// count, sizes). libcephfs keeps the old parent's subdirectory count after a directory
    /// was renamed out of it while it holds the caps, and `ceph_ll_getattr` has no way to
    /// force a round trip (`AT_STATX_FORCE_SYNC` is refused there).
    pub fn refresh_dir(self: &Arc<Self>, dir: &CephInode, perm: &UserPerm) -> io::Result<()> {
        let mut stream = self.opendir(dir, perm)?;
        stream.read_entry()?;
        Ok(())
    }

    pub fn opendir(self: &Arc<Self>, inode: &CephInode, perm: &UserPerm) -> io::Result<CephDir> {
        let mut dir = ptr::null_mut();
        // SAFETY: live mount, inode and credentials; `dir` is a valid out-pointer.
        check(unsafe {
            ffi::ceph_ll_opendir(self.raw(), inode.ptr.as_ptr(), &mut dir, perm.raw())
        })?;
        Ok(CephDir {
            unread: None,
            mount: Arc::clone(self),
            dir: non_null(dir)?,
        })
    }
}

/// The handle of a mount whose last reference is gone, on its way out.
#[derive(Clone, Copy)]
struct Unmounting(NonNull<ffi::CephMountInfo>);

// SAFETY: the handle is moved to the one thread that unmounts and releases it; the
// `CephMount` it came from is being dropped, so no other thread uses it.
unsafe impl Send for Unmounting {}

impl Unmounting {
    /// Unmounts and frees the handle. Called exactly once per handle.
    fn unmount_and_release(self) {
        // SAFETY: the `CephMount` this came from was the last reference to the handle (every
        // inode, file and directory holds an Arc), so nothing else uses the mount.
        let ret = unsafe { ffi::ceph_unmount(self.0.as_ptr()) };
        if ret < 0 {
            tracing::warn!("ceph_unmount: {}", errno(ret.into()));
        }
        // SAFETY: as above; the handle is unmounted and never used again.
        unsafe {
            ffi::ceph_release(self.0.as_ptr());
        }
    }
}

impl Drop for CephMount {
    fn drop(&mut self) {
        let handle = Unmounting(self.cmount);
        let limit = *self
            .unmount_timeout
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(limit) = limit else {
            handle.unmount_and_release();
            return;
        };
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("ceph-unmount".into())
            .spawn(move || {
                handle.unmount_and_release();
                let _ = done_tx.send(());
            });
        if let Err(e) = spawned {
            // The closure (and its copy of the handle) was dropped unrun: unmount here.
            tracing::warn!("no thread for ceph_unmount ({e}): unmounting without a time limit");
            handle.unmount_and_release();
            return;
        }
        if done_rx.recv_timeout(limit).is_err() {
            tracing::warn!(
                "ceph_unmount did not finish within {limit:?} (is the cluster gone?): leaving \
                 it to finish in the background"
            );
        }
    }
}

/// The value of `option` in the handle's configuration.
fn conf_get(cm: *mut ffi::CephMountInfo, option: &str) -> io::Result<String> {
    crate::client_conf::read_value(option, |o, buf| {
        // SAFETY: `cm` is a live handle, `o` NUL-terminated, and `buf` has `buf.len()` bytes
        // that libcephfs fills with a NUL-terminated value (or reports ENAMETOOLONG).
        unsafe { ffi::ceph_conf_get(cm, o.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    })
}

fn set_option(cm: *mut ffi::CephMountInfo, option: &str, value: &str) -> Result<(), CephError> {
    let o = cstring("ceph option", option)?;
    let v = cstring("ceph option value", value)?;
    // SAFETY: `cm` is a live unmounted handle; both strings are NUL-terminated.
    let ret = unsafe { ffi::ceph_conf_set(cm, o.as_ptr(), v.as_ptr()) };
    check(ret).map_err(|source| CephError::SetOption {
        option: option.to_string(),
        source,
    })?;
    Ok(())
}

/// Reply of `getxattr`/`listxattr`.
#[derive(Debug, PartialEq, Eq)]
pub enum XattrReply {
    Size(usize),
    Data(Vec<u8>),
}

/// One client reference to a Ceph `Inode`, put when dropped.
pub struct CephInode {
    mount: Arc<CephMount>,
    ptr: NonNull<ffi::Inode>,
}

// SAFETY: an `Inode` reference may be used and put from any thread; the client lock guards
// the object.
unsafe impl Send for CephInode {}
// SAFETY: every use goes through libcephfs calls that take the client lock.
unsafe impl Sync for CephInode {}

impl std::fmt::Debug for CephInode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CephInode({:p})", self.ptr)
    }
}

impl Drop for CephInode {
    fn drop(&mut self) {
        // SAFETY: we own exactly one reference, taken by a lookup/create call, and give it
        // back once; the mount is alive (we hold an Arc).
        unsafe {
            ffi::ceph_ll_put(self.mount.raw(), self.ptr.as_ptr());
        }
    }
}

/// An open file (`Fh`), closed when dropped.
pub struct CephFile {
    mount: Arc<CephMount>,
    fh: NonNull<ffi::Fh>,
    /// The file's inode. The `Fh` holds a reference to it until `ceph_ll_close`, so it is
    /// alive as long as this is.
    inode: NonNull<ffi::Inode>,
    /// The open flags (`O_ACCMODE` says what the descriptor grants).
    flags: i32,
}

// SAFETY: an `Fh` may be used from any thread; libcephfs serialises through the client lock.
unsafe impl Send for CephFile {}
// SAFETY: as above; reads and writes at explicit offsets share no cursor state.
unsafe impl Sync for CephFile {}

impl CephFile {
    /// The mount this file belongs to.
    pub fn mount(&self) -> &Arc<CephMount> {
        &self.mount
    }

    /// Opened for writing (`O_WRONLY` or `O_RDWR`).
    pub fn writable(&self) -> bool {
        matches!(self.flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
    }

    /// Opened with `O_APPEND`.
    pub fn appends(&self) -> bool {
        self.flags & libc::O_APPEND != 0
    }
}

impl Drop for CephFile {
    fn drop(&mut self) {
        // SAFETY: the handle came from ll_open/ll_create, is closed exactly once, and the
        // mount is alive.
        let ret = unsafe { ffi::ceph_ll_close(self.mount.raw(), self.fh.as_ptr()) };
        if ret < 0 {
            tracing::warn!("ceph_ll_close: {}", errno(ret.into()));
        }
    }
}

/// One entry read by `CephDir::read_entry`.
pub struct DirEntryPlus {
    pub name: Vec<u8>,
    pub d_type: u8,
    /// Position of the entry after this one (`ceph_telldir`).
    pub next_offset: u64,
    pub stat: Statx,
    pub inode: CephInode,
}

/// An open directory stream, released when dropped.
///
/// One entry can be put back (`unread`): a reply that has no room for the entry just read
/// leaves it for the next one instead of seeking back, because a backward `ceph_seekdir`
/// stops libcephfs from filling its directory cache, and every later listing of the
/// directory then goes to the MDS again.
pub struct CephDir {
    mount: Arc<CephMount>,
    dir: NonNull<ffi::CephDirResult>,
    /// An entry read but not consumed, with the stream position it was read at.
    unread: Option<(u64, DirEntryPlus)>,
}

// SAFETY: the stream is only used through `&mut self` (callers wrap it in a Mutex); the
// client lock guards the libcephfs side.
unsafe impl Send for CephDir {}

impl CephDir {
    /// The position of the next entry `read_entry` returns.
    pub fn tell(&mut self) -> u64 {
        match &self.unread {
            Some((at, _)) => *at,
            None => self.stream_pos(),
        }
    }

    fn stream_pos(&mut self) -> u64 {
        // SAFETY: live mount and stream.
        let pos = unsafe { ffi::ceph_telldir(self.mount.raw(), self.dir.as_ptr()) };
        pos.max(0) as u64
    }

    /// Puts back `entry`, read at position `at`: the next `read_entry` returns it, and
    /// `tell` is `at` until then.
    pub fn unread(&mut self, at: u64, entry: DirEntryPlus) {
        self.unread = Some((at, entry));
    }

    /// Moves the stream to `offset` (a position `tell` or an entry's `next_offset` gave).
    pub fn seek(&mut self, offset: u64) {
        if self.tell() == offset {
            return;
        }
        self.unread = None;
        let off = i64::try_from(offset).unwrap_or(i64::MAX);
        // SAFETY: live mount and stream; libcephfs accepts any offset (an unknown one ends
        // the stream).
        unsafe { ffi::ceph_seekdir(self.mount.raw(), self.dir.as_ptr(), off) }
    }

    /// The next entry with its attributes and a reference to its inode, `None` at the end.
    pub fn read_entry(&mut self) -> io::Result<Option<DirEntryPlus>> {
        if let Some((_, entry)) = self.unread.take() {
            return Ok(Some(entry));
        }
        // SAFETY: dirent is plain old data; all-zero is a valid value.
        let mut de: libc::dirent = unsafe { std::mem::zeroed() };
        let mut stx = ffi::CephStatx::default();
        let mut out = ptr::null_mut();
        // SAFETY: live mount and stream; `de`, `stx` and `out` are valid out-pointers.
        let ret = check(unsafe {
            ffi::ceph_readdirplus_r(
                self.mount.raw(),
                self.dir.as_ptr(),
                &mut de,
                &mut stx,
                ffi::CEPH_STATX_BASIC_STATS,
                0,
                &mut out,
            )
        })?;
        if ret == 0 {
            return Ok(None);
        }
        let inode = self.mount.adopt(out)?;
        // SAFETY: libcephfs NUL-terminates d_name within the array.
        let name = unsafe { CStr::from_ptr(de.d_name.as_ptr()) }
            .to_bytes()
            .to_vec();
        let next_offset = self.stream_pos();
        Ok(Some(DirEntryPlus {
            name,
            d_type: de.d_type,
            next_offset,
            stat: Statx(stx),
            inode,
        }))
    }
}

impl Drop for CephDir {
    fn drop(&mut self) {
        // SAFETY: the stream came from ll_opendir, is released exactly once, mount alive.
        unsafe {
            ffi::ceph_ll_releasedir(self.mount.raw(), self.dir.as_ptr());
        }
    }
}

/// Credentials a request runs with (`UserPerm`), destroyed when dropped.
pub struct UserPerm {
    ptr: NonNull<ffi::UserPerm>,
    /// libcephfs keeps pointing at the group list: it must live as long as the object.
    _groups: Box<[libc::gid_t]>,
}

// SAFETY: a UserPerm is immutable after creation and only read by libcephfs.
unsafe impl Send for UserPerm {}
// SAFETY: as above.
unsafe impl Sync for UserPerm {}

impl UserPerm {
    pub fn new(uid: u32, gid: u32, groups: &[u32]) -> io::Result<UserPerm> {
        let mut groups: Box<[libc::gid_t]> = groups.into();
        let n = c_int::try_from(groups.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let list = if groups.is_empty() {
            ptr::null_mut()
        } else {
            groups.as_mut_ptr()
        };
        // SAFETY: `list` is null or points at `n` gids that live as long as the object.
        let ptr = unsafe { ffi::ceph_userperm_new(uid, gid, n, list) };
        let ptr = NonNull::new(ptr).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(UserPerm {
            ptr,
            _groups: groups,
        })
    }

    fn raw(&self) -> *const ffi::UserPerm {
        self.ptr.as_ptr()
    }
}

impl Drop for UserPerm {
    fn drop(&mut self) {
        // SAFETY: created by ceph_userperm_new, destroyed exactly once.
        unsafe { ffi::ceph_userperm_destroy(self.ptr.as_ptr()) }
    }
}

/// What `setattr` changes: `mask` is a set of `CEPH_SETATTR_*` bits.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetAttr {
    pub mask: i32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub atime: ffi::Timespec,
    pub mtime: ffi::Timespec,
    pub ctime: ffi::Timespec,
}

/// Attributes of an inode (`struct ceph_statx`).
#[derive(Debug, Clone, Copy)]
pub struct Statx(pub(crate) ffi::CephStatx);

impl Statx {
    pub fn ino(&self) -> u64 {
        self.0.stx_ino
    }

    /// The snapshot id (libcephfs reports it in `stx_dev`; `CEPH_NOSNAP` for live files).
    pub fn snap(&self) -> u64 {
        self.0.stx_dev
    }

    pub fn mode(&self) -> u32 {
        u32::from(self.0.stx_mode)
    }

    pub fn size(&self) -> u64 {
        self.0.stx_size
    }

    pub fn nlink(&self) -> u32 {
        self.0.stx_nlink
    }

    /// As a `stat64` for the guest. `st_dev` is left 0: the guest's kernel picks its own.
    pub fn to_stat64(&self) -> stat64 {
        let s = &self.0;
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_ino = s.stx_ino;
        st.st_mode = u32::from(s.stx_mode);
        st.st_nlink = u64::from(s.stx_nlink);
        st.st_uid = s.stx_uid;
        st.st_gid = s.stx_gid;
        st.st_rdev = s.stx_rdev;
        st.st_size = i64::try_from(s.stx_size).unwrap_or(i64::MAX);
        st.st_blksize = i64::from(s.stx_blksize);
        st.st_blocks = i64::try_from(s.stx_blocks).unwrap_or(i64::MAX);
        st.st_atime = s.stx_atime.tv_sec;
        st.st_atime_nsec = s.stx_atime.tv_nsec;
        st.st_mtime = s.stx_mtime.tv_sec;
        st.st_mtime_nsec = s.stx_mtime.tv_nsec;
        st.st_ctime = s.stx_ctime.tv_sec;
        st.st_ctime_nsec = s.stx_ctime.tv_nsec;
        st
    }
}

impl CephInode {
    /// The mount this inode belongs to.
    pub fn mount(&self) -> &Arc<CephMount> {
        &self.mount
    }
}
