//! `CephFs`: the `fuse_backend_rs` `FileSystem` served straight from a CephFS subtree.
//!
//! Owns the FUSE side of the backend: node ids through `CephInodeTable`, open file and
//! directory handle numbers, the guest's credentials per request (`Context` uid/gid become a
//! ceph `UserPerm`, so the client's permission checks run as the guest user), cache timeouts,
//! and the confinement of names: no `/` in a name, `.`/`..` never created or removed, and
//! `..` at the root resolves to the root. The mount itself is rooted at the volume directory
//! (`ceph_mount(root)`), and the cephx identity's caps bound it on the MDS side as well.
//!
//! It also owns bounding every request by `CephConfig::op_timeout`: each libcephfs call runs
//! as a job on a `DeadlinePool` started at `connect`, and a request whose call does not come
//! back in time (an MDS or OSD that is gone) fails with ETIMEDOUT while the call goes on in
//! the background. Jobs own what they use (`Arc`s of inodes and files, owned names, the
//! `UserPerm`, a copy of WRITE data); guest memory is read before and written after a job, on
//! the request's thread, and the node table and handle maps change only there, once a result
//! came in time: a late LOOKUP or CREATE leaves no node, lookup count or handle behind, its
//! references are dropped on the worker. What a late call did stays done (a CREATE that
//! timed out while it ran may still create the file, like a soft NFS mount); one that timed
//! out while still queued is never run. RELEASE, RELEASEDIR and DESTROY hand the file and
//! directory handles to the call threads to close and do not wait (dropping the `CephFs`
//! waits for those closes and its unmount, bounded, unless calls are stuck). FORGET puts inode
//! references inline (local to the client, no MDS round trip). Without an op timeout, every
//! call runs on the request's thread.
//!
//! POSIX corners CephFS itself does not give: times outside CephFS's 32-bit seconds are
//! clamped (never wrapped), `UTIME_NOW` is the host's now, an ftruncate through a descriptor
//! opened for writing takes its permission from the descriptor, and a directory moved to
//! another parent refreshes the old parent's link count. READ and WRITE data goes through a
//! few reused buffers (`IoBuffers`), owned by the job while it runs.
//!
//! Must not: use `unsafe` (everything unsafe is in `mount`), or trust anything from the guest:
//! unknown nodes and handles are EBADF, bad names EINVAL, never a panic.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};

use crate::deadline::DeadlinePool;
use crate::error::CephError;
use crate::ffi;
use crate::inode::{CephInodeTable, ROOT_ID};
use crate::mount::{
    CephDir, CephFile, CephInode, CephMount, DirEntryPlus, MountOptions, SetAttr, Statx, UserPerm,
    XattrReply,
};
use crate::{CachePolicy, CephConfig, InlineCalls};

/// Largest READ/WRITE payload served (what fuse-backend-rs negotiates at INIT).
const MAX_IO: usize = fuse_backend_rs::api::server::MAX_BUFFER_SIZE as usize;

/// Threads running libcephfs calls when there is an op timeout. A call stuck on a missing
/// MDS holds one until the MDS is back; once all are stuck, further calls queue and time out.
const CALL_WORKERS: usize = 16;

/// Data buffers kept for reuse by READ and WRITE ([`IoBuffers`]).
const KEPT_BUFFERS: usize = 4;

/// READ and WRITE data buffers, reused. A job owns the buffer it reads into or writes from
/// (guest memory is copied on the request's thread, before or after it), and hands it back
/// with its result; a late job drops it. Allocating a fresh buffer per request cost a 1 MiB
/// allocation, its zeroing and its page faults each time (tests/probe.rs).
struct IoBuffers {
    free: Mutex<Vec<Vec<u8>>>,
}

impl IoBuffers {
    fn new() -> IoBuffers {
        IoBuffers {
            free: Mutex::new(Vec::new()),
        }
    }

    /// A buffer of `len` bytes (contents unspecified).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut buf = lock(&self.free).pop().unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, 0);
        }
        buf.truncate(len);
        buf
    }

    /// Keeps `buf` for a later request (up to [`KEPT_BUFFERS`]).
    fn give(&self, buf: Vec<u8>) {
        let mut free = lock(&self.free);
        if free.len() < KEPT_BUFFERS && buf.capacity() <= MAX_IO {
            free.push(buf);
        }
    }
}

/// Bytes of a READDIR reply entry before its name (`struct fuse_dirent`).
const DIRENT_HEADER: usize = 24;
/// Bytes a READDIRPLUS entry adds (`struct fuse_entry_out`).
const ENTRY_OUT: usize = 128;

/// Reply bytes one directory entry takes, as fuse-backend-rs counts them.
fn reply_bytes(name_len: usize, plus: bool) -> usize {
    let dirent = (DIRENT_HEADER + name_len + 7) & !7;
    if plus {
        dirent + ENTRY_OUT
    } else {
        dirent
    }
}

fn err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

/// A name the guest sent: non-empty, no `/`.
fn check_name(name: &CStr) -> io::Result<()> {
    let b = name.to_bytes();
    if b.is_empty() || b.contains(&b'/') {
        return Err(err(libc::EINVAL));
    }
    Ok(())
}

/// A name to create, remove or rename: also not `.` or `..`.
fn check_new_name(name: &CStr) -> io::Result<()> {
    check_name(name)?;
    match name.to_bytes() {
        b"." | b".." => Err(err(libc::EINVAL)),
        _ => Ok(()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// CephFS served to one guest.
pub struct CephFs {
    /// Runs the libcephfs calls when requests are bounded by an op timeout.
    calls: Option<DeadlinePool>,
    /// With `calls`: make calls on the request's thread while the serving side keeps the op
    /// timeout for us (`CephConfig::inline_calls`).
    inline: Option<InlineCalls>,
    /// Holds the root, and with it the mount (every `CephInode` holds an `Arc<CephMount>`).
    inodes: CephInodeTable,
    files: Mutex<HashMap<u64, Arc<CephFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Mutex<CephDir>>>>,
    next_handle: AtomicU64,
    buffers: IoBuffers,
    cache: CachePolicy,
    /// `CephConfig::honour_o_direct`.
    honour_o_direct: bool,
    /// Ceph inode number of the root, reported for `..` at the root.
    root_ino: u64,
}

/// Runs `call` on `calls` (waiting at most its timeout) or, without a pool, right here.
fn bounded<T, F>(calls: Option<&DeadlinePool>, what: &'static str, call: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    match calls {
        Some(pool) => pool.run(what, call),
        None => call(),
    }
}

/// Reads the directory entries from `offset` that fit in `budget` reply bytes, counted as
/// fuse-backend-rs counts them (at least one entry; none at the end). The first entry that
/// does not fit is put back in the stream, so a guest reading on from where the reply ended
/// never makes the stream seek backwards (which would keep libcephfs from caching the
/// directory: every listing would go to the MDS).
fn read_dir_batch(
    dir: &Mutex<CephDir>,
    offset: u64,
    budget: usize,
    plus: bool,
) -> io::Result<Vec<DirEntryPlus>> {
    let mut dir = lock(dir);
    dir.seek(offset);
    let mut batch: Vec<DirEntryPlus> = Vec::new();
    let mut used = 0;
    loop {
        let Some(e) = dir.read_entry()? else {
            break;
        };
        let bytes = reply_bytes(e.name.len(), plus);
        if let Some(last) = batch.last().filter(|_| used + bytes > budget) {
            // No room: the next request, from where the last entry sent ends, starts with
            // it (a reply of none would end the listing, so the first entry goes in
            // whatever its size).
            let at = last.next_offset;
            dir.unread(at, e);
            break;
        }
        used += bytes;
        batch.push(e);
    }
    Ok(batch)
}

impl CephFs {
    /// Connects as `client.<id>`, mounts `root` and checks it is a directory. Every failure
    /// is one `CephError` naming the step, the identity and the path. With an op timeout, the
    /// threads that run libcephfs calls start here.
    pub fn connect(cfg: CephConfig) -> Result<CephFs, CephError> {
        let mount = CephMount::connect(&MountOptions {
            conf: &cfg.conf,
            id: &cfg.id,
            keyring: &cfg.keyring,
            root: &cfg.root,
            fs_name: cfg.fs_name.as_deref(),
            mount_timeout: cfg.mount_timeout,
            posix_acl: cfg.posix_acl,
        })?;
        // From here on, dropping the mount (on an error below, or at the end) must not hang
        // on a cluster that went away either.
        mount.bound_unmount(cfg.op_timeout);
        let calls = cfg
            .op_timeout
            .map(|timeout| DeadlinePool::new("ceph-call", CALL_WORKERS, timeout))
            .transpose()
            .map_err(CephError::CallThreads)?;
        let root_mount = Arc::clone(&mount);
        let (root, stat) = bounded(calls.as_ref(), "root lookup", move || {
            let root = root_mount.root()?;
            let perm = UserPerm::new(0, 0, &[])?;
            let stat = root_mount.getattr(&root, &perm)?;
            Ok((root, stat))
        })
        .map_err(|source| CephError::RootInode {
            root: cfg.root.clone(),
            source,
        })?;
        if stat.mode() & libc::S_IFMT != libc::S_IFDIR {
            return Err(CephError::RootNotDir { root: cfg.root });
        }
        tracing::info!(
            "cephfs: mounted {:?} as client.{} (conf {:?}, op timeout {:?})",
            cfg.root,
            cfg.id,
            cfg.conf,
            cfg.op_timeout
        );
        Ok(CephFs {
            inline: cfg.inline_calls.filter(|_| calls.is_some()),
            calls,
            inodes: CephInodeTable::new(root, &stat),
            root_ino: stat.ino(),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            buffers: IoBuffers::new(),
            cache: cfg.cache,
            honour_o_direct: cfg.honour_o_direct,
        })
    }

    /// The node table (lookup counts are visible to tests and diagnostics).
    pub fn inodes(&self) -> &CephInodeTable {
        &self.inodes
    }

    /// How many files and directories the guest holds open.
    pub fn open_handles(&self) -> (usize, usize) {
        (lock(&self.files).len(), lock(&self.dirs).len())
    }

    /// Calls that timed out and are still waiting for the cluster in the background (0
    /// without an op timeout): non-zero while the cluster does not answer.
    pub fn late_calls(&self) -> usize {
        self.calls.as_ref().map_or(0, DeadlinePool::late_calls)
    }

    /// Calls that timed out since `connect`.
    pub fn timed_out_calls(&self) -> u64 {
        self.calls.as_ref().map_or(0, DeadlinePool::timed_out_calls)
    }

    /// Runs libcephfs call(s) bounded by the op timeout (see the module doc).
    fn call<T, F>(&self, what: &'static str, call: F) -> io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> io::Result<T> + Send + 'static,
    {
        if let (Some(inline), Some(pool)) = (&self.inline, &self.calls) {
            // Inline while the cluster answers: nothing answered in our place is still out,
            // on a request thread or on the call threads.
            if inline.answered_running.load(Ordering::Acquire) == 0 && pool.late_calls() == 0 {
                let result = call();
                if (inline.request_answered)() {
                    // The guest was told this request failed: release what the call made
                    // (off this thread: closing a file may wait on the cluster).
                    pool.drop_later(result);
                    return Err(err(libc::ETIMEDOUT));
                }
                return result;
            }
        }
        bounded(self.calls.as_ref(), what, call)
    }

    /// Drops what may close a Ceph file or directory stream: with an op timeout on the call
    /// threads, without waiting (the guest does not wait on a close, and a directory stream's
    /// lock may be held by a READDIR stuck on the cluster); without one, right here.
    fn drop_later<T: Send + 'static>(&self, held: T) {
        match &self.calls {
            Some(pool) => pool.drop_later(held),
            None => drop(held),
        }
    }

    fn perm(ctx: &Context) -> io::Result<UserPerm> {
        UserPerm::new(ctx.uid, ctx.gid, &[])
    }

    fn node(&self, node: u64) -> io::Result<Arc<CephInode>> {
        self.inodes.get(node)
    }

    fn file(&self, handle: u64) -> io::Result<Arc<CephFile>> {
        lock(&self.files)
            .get(&handle)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    fn dir(&self, handle: u64) -> io::Result<Arc<Mutex<CephDir>>> {
        lock(&self.dirs)
            .get(&handle)
            .cloned()
            .ok_or_else(|| err(libc::EBADF))
    }

    fn new_handle(&self) -> u64 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }

    fn entry(&self, node: u64, stat: &Statx) -> Entry {
        Entry {
            inode: node,
            generation: 0,
            attr: stat.to_stat64(),
            attr_flags: 0,
            attr_timeout: self.cache.attr_timeout,
            entry_timeout: self.cache.entry_timeout,
        }
    }

    /// Registers a new reference from a create/lookup call and builds its entry.
    fn new_entry(&self, inode: CephInode, stat: &Statx) -> Entry {
        let node = self.inodes.add(inode, stat);
        self.entry(node, stat)
    }

    /// Options of an OPEN or CREATE reply. Always `FOPEN_NOFLUSH`: FLUSH has nothing to do
    /// here (see `flush`), and POSIX locks, which FLUSH would release, stay in the guest (no
    /// `FUSE_POSIX_LOCKS`), so a close needs no round trip.
    fn open_options(&self) -> OpenOptions {
        let mut o = OpenOptions::NOFLUSH;
        if self.cache.keep_cache {
            o |= OpenOptions::KEEP_CACHE;
        }
        if self.cache.direct_io {
            o |= OpenOptions::DIRECT_IO;
        }
        o
    }

    /// Open flags passed to libcephfs: creation flags belong to `create`; `O_DIRECT` only
    /// when the daemon honours it (`CephConfig::honour_o_direct`), else the client caches.
    fn open_flags(&self, flags: u32) -> i32 {
        let mut drop = libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY;
        if !self.honour_o_direct {
            drop |= libc::O_DIRECT;
        }
        (flags as i32) & !drop
    }

    /// A call on `parent` with an owned copy of `name` that returns a new inode (lookup and
    /// the create family), registered in the node table only if it came in time.
    fn new_node<F>(
        &self,
        what: &'static str,
        parent: u64,
        name: &CStr,
        call: F,
    ) -> io::Result<Entry>
    where
        F: FnOnce(&Arc<CephMount>, &CephInode, &CStr) -> io::Result<(CephInode, Statx)>
            + Send
            + 'static,
    {
        let dir = self.node(parent)?;
        let name: CString = name.to_owned();
        let (inode, stat) = self.call(what, move || call(dir.mount(), &dir, &name))?;
        Ok(self.new_entry(inode, &stat))
    }

    #[allow(clippy::too_many_arguments)]
    fn do_readdir(
        &self,
        ctx: &Context,
        node: u64,
        handle: u64,
        size: u32,
        offset: u64,
        plus: bool,
        add: &mut dyn FnMut(DirEntry, Option<Entry>) -> io::Result<usize>,
    ) -> io::Result<()> {
        let _ = ctx;
        let dir = self.dir(handle)?;
        let budget = size as usize;
        let batch = self.call("readdir", move || {
            read_dir_batch(&dir, offset, budget, plus)
        })?;
        // Entries the reply has no room for are dropped (their references put); the next
        // READDIR starts at the first of them.
        for e in batch {
            let dot = e.name == b"." || e.name == b"..";
            let ino = if node == ROOT_ID && e.name == b".." {
                self.root_ino
            } else {
                e.stat.ino()
            };
            let dirent = DirEntry {
                ino,
                offset: e.next_offset,
                type_: u32::from(e.d_type),
                name: &e.name,
            };
            let (entry, added) = if !plus {
                (None, None)
            } else if dot {
                // The kernel ignores `.`/`..` in READDIRPLUS; node 0 takes no lookup, and the
                // root's parent (outside the volume) is never exposed.
                let mut entry = self.entry(0, &e.stat);
                entry.attr = stat_zero_with_ino(ino);
                (Some(entry), None)
            } else {
                let node = self.inodes.add(e.inode, &e.stat);
                (Some(self.entry(node, &e.stat)), Some(node))
            };
            match add(dirent, entry) {
                Ok(0) => {
                    if let Some(n) = added {
                        self.inodes.forget(n, 1);
                    }
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(n) = added {
                        self.inodes.forget(n, 1);
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

impl Drop for CephFs {
    /// Closes what the guest left open and lets the mount go with its last reference, its
    /// unmount (which flushes buffered writes) bounded by the op timeout
    /// (`CephMount::bound_unmount`). The closes, and those RELEASE handed over, are waited for
    /// at most the op timeout, so that the unmount runs here before the process may exit;
    /// unless calls are stuck on the cluster: they keep the mount until they return, so
    /// nothing here waits for them.
    fn drop(&mut self) {
        self.destroy();
        if let Some(pool) = &self.calls {
            if pool.late_calls() == 0 && !pool.wait_idle(pool.timeout()) {
                tracing::warn!(
                    "cephfs: closing open files did not finish within {:?}: leaving it to the \
                     call threads",
                    pool.timeout()
                );
            }
        }
    }
}

/// The host's real-time clock, for `UTIME_NOW`.
fn host_now() -> ffi::Timespec {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    timespec(
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i64::from(d.subsec_nanos()),
    )
}

/// `CEPH_SETATTR_*` bits an ftruncate through a descriptor may carry besides the size: the
/// times the kernel sets to now (never a time the caller chose), and the setuid/setgid kill.
fn descriptor_setattr_mask(mask: i32) -> bool {
    let mut allowed = ffi::CEPH_SETATTR_SIZE
        | ffi::CEPH_SETATTR_CTIME
        | ffi::CEPH_SETATTR_KILL_SGUID
        | ffi::CEPH_SETATTR_MTIME_NOW
        | ffi::CEPH_SETATTR_ATIME_NOW;
    if mask & ffi::CEPH_SETATTR_MTIME_NOW != 0 {
        allowed |= ffi::CEPH_SETATTR_MTIME;
    }
    if mask & ffi::CEPH_SETATTR_ATIME_NOW != 0 {
        allowed |= ffi::CEPH_SETATTR_ATIME;
    }
    mask & ffi::CEPH_SETATTR_SIZE != 0 && mask & !allowed == 0
}

/// Whether a SETATTR that libcephfs refused for the caller's permission is an ftruncate
/// through a descriptor opened for writing, which POSIX allows whatever the file's mode.
fn through_descriptor(e: &io::Error, file: Option<&CephFile>, mask: i32) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
        && file.is_some_and(CephFile::writable)
        && descriptor_setattr_mask(mask)
}

fn stat_zero_with_ino(ino: u64) -> stat64 {
    let mut st = Statx(ffi::CephStatx::default()).to_stat64();
    st.st_ino = ino;
    st.st_mode = libc::S_IFDIR;
    st
}

/// Latest time CephFS stores: its `utime_t` keeps seconds in 32 unsigned bits (Pacific and
/// Reef alike), and libcephfs silently wraps anything outside (2^32 s would read back as 0).
const CEPH_TIME_MAX: i64 = u32::MAX as i64;

/// A time the guest sets, clamped to what CephFS can store, `[0, 2^32 - 1]` seconds, the way
/// the Linux CephFS client does (`s_time_min`/`s_time_max`, with the nanoseconds zeroed at
/// either end): a time past 2106 reads back as the last second CephFS has, not as 1970.
fn timespec(sec: i64, nsec: i64) -> ffi::Timespec {
    if sec < 0 {
        ffi::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        }
    } else if sec >= CEPH_TIME_MAX {
        ffi::Timespec {
            tv_sec: CEPH_TIME_MAX,
            tv_nsec: 0,
        }
    } else {
        ffi::Timespec {
            tv_sec: sec,
            tv_nsec: nsec.clamp(0, 999_999_999),
        }
    }
}

impl FileSystem for CephFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        // Not FUSE_ATOMIC_O_TRUNC: with it the guest kernel passes O_TRUNC to OPEN *before*
        // its own checks of the truncation (`handle_truncate`: ETXTBSY for a file being
        // executed, leases), so an `open(O_RDONLY|O_TRUNC)` that the guest then refuses
        // with ETXTBSY has already emptied the file, and the running program dies of SIGBUS
        // on its next page (pjdfstest `open::etxtbsy`). Without it the guest truncates with
        // a SETATTR after those checks, as with the host-directory backend.
        let wanted =
            FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO | FsOptions::EXPORT_SUPPORT;
        Ok(capable & wanted)
    }

    fn destroy(&self) {
        let files: Vec<_> = lock(&self.files).drain().map(|(_, f)| f).collect();
        let dirs: Vec<_> = lock(&self.dirs).drain().map(|(_, d)| d).collect();
        self.drop_later((files, dirs));
        // Putting inode references needs no MDS round trip.
        self.inodes.clear();
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        check_name(name)?;
        let perm = Self::perm(ctx)?;
        let same = name.to_bytes() == b"." || (parent == ROOT_ID && name.to_bytes() == b"..");
        if same {
            // `..` at the root stays at the root.
            let dir = self.node(parent)?;
            let stat = self.call("getattr", move || dir.mount().getattr(&dir, &perm))?;
            self.inodes.add_existing(parent)?;
            return Ok(self.entry(parent, &stat));
        }
        self.new_node("lookup", parent, name, move |mount, dir, name| {
            mount.lookup(dir, name, &perm)
        })
    }

    fn forget(&self, _ctx: &Context, inode: u64, count: u64) {
        // Putting an inode reference is local to the client (no MDS round trip): inline.
        self.inodes.forget(inode, count);
    }

    fn batch_forget(&self, _ctx: &Context, requests: Vec<(u64, u64)>) {
        for (inode, count) in requests {
            self.inodes.forget(inode, count);
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        let stat = self.call("getattr", move || i.mount().getattr(&i, &perm))?;
        Ok((stat.to_stat64(), self.cache.attr_timeout))
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        // A size change through an open descriptor (ftruncate) takes its permission from the
        // descriptor: an unknown handle is EBADF like any other.
        let file = match handle {
            Some(h) if valid.contains(SetattrValid::SIZE) => Some(self.file(h)?),
            _ => None,
        };
        let mut s = SetAttr::default();
        let now = host_now();
        if valid.contains(SetattrValid::MODE) {
            s.mask |= ffi::CEPH_SETATTR_MODE;
            s.mode = attr.st_mode;
        }
        if valid.contains(SetattrValid::UID) {
            s.mask |= ffi::CEPH_SETATTR_UID;
            s.uid = attr.st_uid;
        }
        if valid.contains(SetattrValid::GID) {
            s.mask |= ffi::CEPH_SETATTR_GID;
            s.gid = attr.st_gid;
        }
        if valid.contains(SetattrValid::SIZE) {
            s.mask |= ffi::CEPH_SETATTR_SIZE;
            s.size = u64::try_from(attr.st_size).map_err(|_| err(libc::EINVAL))?;
        }
        if valid.contains(SetattrValid::ATIME) {
            s.mask |= ffi::CEPH_SETATTR_ATIME;
            s.atime = timespec(attr.st_atime, attr.st_atime_nsec);
        }
        if valid.contains(SetattrValid::ATIME_NOW) {
            // Now is the filesystem's now, from the clock that also stamps ctime and the
            // times of new files: the host's, not the one the guest sent (a TCG guest's
            // clock lags, and the time would go back). libcephfs uses the mask bit only to
            // check permission (write access suffices for "now").
            s.mask |= ffi::CEPH_SETATTR_ATIME | ffi::CEPH_SETATTR_ATIME_NOW;
            s.atime = now;
        }
        if valid.contains(SetattrValid::MTIME) {
            s.mask |= ffi::CEPH_SETATTR_MTIME;
            s.mtime = timespec(attr.st_mtime, attr.st_mtime_nsec);
        }
        if valid.contains(SetattrValid::MTIME_NOW) {
            s.mask |= ffi::CEPH_SETATTR_MTIME | ffi::CEPH_SETATTR_MTIME_NOW;
            s.mtime = now;
        }
        if valid.contains(SetattrValid::CTIME) {
            s.mask |= ffi::CEPH_SETATTR_CTIME;
            s.ctime = timespec(attr.st_ctime, attr.st_ctime_nsec);
        }
        if valid.contains(SetattrValid::KILL_SUIDGID) {
            s.mask |= ffi::CEPH_SETATTR_KILL_SGUID;
        }
        let stat = self.call("setattr", move || {
            if s.mask != 0 {
                match i.mount().setattr(&i, &s, &perm) {
                    Err(e) if through_descriptor(&e, file.as_deref(), s.mask) => {
                        // POSIX ftruncate: the descriptor was opened for writing (checked
                        // against the file's mode then, as the guest's user), so the file's
                        // mode now (0 for a file just created with mode 0) does not matter.
                        // libcephfs has no setattr on an `Fh`, and `ceph_ll_setattr` checks
                        // the mode for the caller: run it with credentials the client does
                        // not check (the cephx identity still bounds it on the MDS).
                        i.mount().setattr(&i, &s, &UserPerm::new(0, 0, &[])?)?;
                    }
                    r => r?,
                }
            }
            i.mount().getattr(&i, &perm)
        })?;
        Ok((stat.to_stat64(), self.cache.attr_timeout))
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        self.call("readlink", move || i.mount().readlink(&i, &perm))
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        check_new_name(name)?;
        let perm = Self::perm(ctx)?;
        let target: CString = linkname.to_owned();
        self.new_node("symlink", parent, name, move |mount, dir, name| {
            mount.symlink(dir, name, &target, &perm)
        })
    }

    fn mknod(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        check_new_name(name)?;
        let perm = Self::perm(ctx)?;
        // The guest applied its umask already unless it negotiated FUSE_DONT_MASK (POSIX
        // ACLs); applying it again changes nothing. The export layer passes 0 where a default
        // ACL of the parent decides instead.
        let mode = mode & !(umask & 0o7777);
        self.new_node("mknod", parent, name, move |mount, dir, name| {
            mount.mknod(dir, name, mode, u64::from(rdev), &perm)
        })
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        check_new_name(name)?;
        let perm = Self::perm(ctx)?;
        let mode = mode & !(umask & 0o7777);
        self.new_node("mkdir", parent, name, move |mount, dir, name| {
            mount.mkdir(dir, name, mode, &perm)
        })
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        check_new_name(name)?;
        let perm = Self::perm(ctx)?;
        let dir = self.node(parent)?;
        let name: CString = name.to_owned();
        self.call("unlink", move || dir.mount().unlink(&dir, &name, &perm))
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        check_new_name(name)?;
        let perm = Self::perm(ctx)?;
        let dir = self.node(parent)?;
        let name: CString = name.to_owned();
        self.call("rmdir", move || dir.mount().rmdir(&dir, &name, &perm))
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        check_new_name(oldname)?;
        check_new_name(newname)?;
        if flags != 0 {
            // libcephfs has no RENAME_NOREPLACE/EXCHANGE/WHITEOUT.
            return Err(err(libc::EINVAL));
        }
        let perm = Self::perm(ctx)?;
        let od = self.node(olddir)?;
        let nd = self.node(newdir)?;
        let oldname: CString = oldname.to_owned();
        let newname: CString = newname.to_owned();
        let across = olddir != newdir;
        self.call("rename", move || {
            od.mount().rename(&od, &oldname, &nd, &newname, &perm)?;
            if across {
                // A directory moved to another parent: the old parent lost a link, which
                // libcephfs does not see by itself (see `CephMount::refresh_dir`). The moved
                // entry's type comes from the client's cache (the rename reply put it there).
                // Best effort: the rename itself succeeded whatever happens here.
                let moved = od.mount().lookup(&nd, &newname, &perm);
                if let Ok((_, st)) = moved {
                    if st.mode() & libc::S_IFMT == libc::S_IFDIR {
                        let root = UserPerm::new(0, 0, &[])?;
                        if let Err(e) = od.mount().refresh_dir(&od, &root) {
                            tracing::debug!("cephfs: refreshing a rename's old parent: {e}");
                        }
                    }
                }
            }
            Ok(())
        })
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        check_new_name(newname)?;
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        let dir = self.node(newparent)?;
        let newname: CString = newname.to_owned();
        let stat = self.call("link", move || {
            i.mount().link(&i, &dir, &newname, &perm)?;
            i.mount().getattr(&i, &perm)
        })?;
        self.inodes.add_existing(inode)?;
        Ok(self.entry(inode, &stat))
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        let flags = self.open_flags(flags);
        let file = self.call("open", move || i.mount().open(&i, flags, &perm))?;
        let h = self.new_handle();
        lock(&self.files).insert(h, Arc::new(file));
        Ok((Some(h), self.open_options(), None))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        check_new_name(name)?;
        let perm = Self::perm(ctx)?;
        let dir = self.node(parent)?;
        let flags =
            self.open_flags(args.flags) | libc::O_CREAT | (args.flags as i32 & libc::O_EXCL);
        let name: CString = name.to_owned();
        let mode = args.mode & !(args.umask & 0o7777);
        let (inode, file, stat) = self.call("create", move || {
            dir.mount().create(&dir, &name, mode, flags, &perm)
        })?;
        let entry = self.new_entry(inode, &stat);
        let h = self.new_handle();
        lock(&self.files).insert(h, Arc::new(file));
        Ok((entry, Some(h), self.open_options(), None))
    }

    fn read(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let f = self.file(handle)?;
        // Never allocate more than the reply can carry, whatever size the guest asks.
        let size = (size as usize).min(w.available_bytes()).min(MAX_IO);
        // The job reads into a buffer it owns; guest memory is written here, after it.
        let mut buf = self.buffers.take(size);
        let (buf, n) = self.call("read", move || {
            let n = f.mount().read_into(&f, offset, &mut buf)?;
            Ok((buf, n))
        })?;
        let written = w.write_all(&buf[..n]);
        self.buffers.give(buf);
        written?;
        Ok(n)
    }

    fn write(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<usize> {
        if size as usize > MAX_IO {
            return Err(err(libc::EINVAL));
        }
        let f = self.file(handle)?;
        // A guest's write(2) on an O_APPEND file comes at the end of file the guest last saw,
        // which another pod may have moved: append at the file's real end, as pwrite on an
        // O_APPEND descriptor of a host mount does. A page written back from the guest's cache
        // (FUSE_WRITE_CACHE, through whichever handle) goes where the guest says.
        let append = flags as i32 & libc::O_APPEND != 0 && !delayed_write && f.appends();
        // Guest memory is copied out here, before the job: a late job never touches it.
        let mut buf = self.buffers.take(size as usize);
        let mut filled = 0;
        while filled < buf.len() {
            match r.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        let (buf, done) = self.call("write", move || {
            let mut done = 0;
            while done < buf.len() {
                let at = offset
                    .checked_add(done as u64)
                    .ok_or_else(|| err(libc::EFBIG))?;
                let n = if append {
                    f.mount().append(&f, &buf[done..])?
                } else {
                    f.mount().write(&f, at, &buf[done..])?
                };
                if n == 0 {
                    return Err(err(libc::EIO));
                }
                done += n;
            }
            Ok((buf, done))
        })?;
        self.buffers.give(buf);
        Ok(done)
    }

    fn flush(&self, _ctx: &Context, _inode: u64, handle: u64, _lock_owner: u64) -> io::Result<()> {
        // Coherence between clients comes from Ceph's caps: the MDS makes this client flush
        // its dirty data before another client may read it. Only check the handle.
        self.file(handle).map(|_| ())
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        let f = self.file(handle)?;
        self.call("fsync", move || f.mount().fsync(&f, datasync))
    }

    fn syncfs(&self, _ctx: &Context, inode: u64) -> io::Result<()> {
        // The whole client, whichever node the guest names (its root).
        let i = self.node(inode)?;
        self.call("syncfs", move || i.mount().sync_fs())
    }

    fn fallocate(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let f = self.file(handle)?;
        self.call("fallocate", move || {
            f.mount().fallocate(&f, mode as i32, offset, length)
        })
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        // The Fh is closed when the last in-flight request using it finishes.
        let file = lock(&self.files)
            .remove(&handle)
            .ok_or_else(|| err(libc::EBADF))?;
        self.drop_later(file);
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        let i = self.node(inode)?;
        self.call("statfs", move || i.mount().statfs(&i))
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        let name: CString = name.to_owned();
        let value = value.to_vec();
        self.call("setxattr", move || {
            i.mount().setxattr(&i, &name, &value, flags as i32, &perm)
        })
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        let name: CString = name.to_owned();
        let reply = self.call("getxattr", move || {
            i.mount().getxattr(&i, &name, size as usize, &perm)
        })?;
        match reply {
            XattrReply::Size(n) => Ok(GetxattrReply::Count(
                u32::try_from(n).map_err(|_| err(libc::E2BIG))?,
            )),
            XattrReply::Data(v) => Ok(GetxattrReply::Value(v)),
        }
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        let reply = self.call("listxattr", move || {
            i.mount().listxattr(&i, size as usize, &perm)
        })?;
        match reply {
            XattrReply::Size(n) => Ok(ListxattrReply::Count(
                u32::try_from(n).map_err(|_| err(libc::E2BIG))?,
            )),
            XattrReply::Data(v) => Ok(ListxattrReply::Names(v)),
        }
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        let name: CString = name.to_owned();
        self.call("removexattr", move || {
            i.mount().removexattr(&i, &name, &perm)
        })
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        let dir = self.call("opendir", move || i.mount().opendir(&i, &perm))?;
        let h = self.new_handle();
        lock(&self.dirs).insert(h, Arc::new(Mutex::new(dir)));
        let mut o = OpenOptions::empty();
        if self.cache.keep_cache {
            o |= OpenOptions::CACHE_DIR;
        }
        Ok((Some(h), o))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(ctx, inode, handle, size, offset, false, &mut |d, _| {
            add_entry(d)
        })
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.do_readdir(
            ctx,
            inode,
            handle,
            size,
            offset,
            true,
            &mut |d, e| match e {
                Some(e) => add_entry(d, e),
                None => Err(err(libc::EIO)),
            },
        )
    }

    fn fsyncdir(
        &self,
        _ctx: &Context,
        _inode: u64,
        _datasync: bool,
        handle: u64,
    ) -> io::Result<()> {
        // Directory operations are synchronous on the MDS (journaled before they return).
        self.dir(handle).map(|_| ())
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, handle: u64) -> io::Result<()> {
        let dir = lock(&self.dirs)
            .remove(&handle)
            .ok_or_else(|| err(libc::EBADF))?;
        self.drop_later(dir);
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let perm = Self::perm(ctx)?;
        let i = self.node(inode)?;
        let st = self.call("getattr", move || i.mount().getattr(&i, &perm))?;
        let mode = st.mode();
        let mask = mask & 0o7;
        if mask == 0 {
            return Ok(());
        }
        let s = st.to_stat64();
        if ctx.uid == 0 {
            // Root may do anything but execute a file nobody may execute.
            if mask & 1 != 0 && mode & 0o111 == 0 && mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(err(libc::EACCES));
            }
            return Ok(());
        }
        let bits = if s.st_uid == ctx.uid {
            (mode >> 6) & 7
        } else if s.st_gid == ctx.gid {
            (mode >> 3) & 7
        } else {
            mode & 7
        };
        if bits & mask == mask {
            Ok(())
        } else {
            Err(err(libc::EACCES))
        }
    }

    fn lseek(
        &self,
        _ctx: &Context,
        _inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        let f = self.file(handle)?;
        self.call("lseek", move || f.mount().lseek(&f, offset, whence as i32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_buffers_are_reused_and_bounded() {
        let b = IoBuffers::new();
        let first = b.take(4096);
        assert_eq!(first.len(), 4096);
        let ptr = first.as_ptr();
        b.give(first);
        let again = b.take(100);
        assert_eq!(again.len(), 100);
        assert_eq!(again.as_ptr(), ptr, "the kept buffer is handed out again");
        let big = b.take(MAX_IO);
        assert_eq!(big.len(), MAX_IO);
        b.give(again);
        b.give(big);
        for _ in 0..10 {
            b.give(vec![0; 16]);
        }
        assert_eq!(
            lock(&b.free).len(),
            KEPT_BUFFERS,
            "at most KEPT_BUFFERS are kept"
        );
        b.give(Vec::with_capacity(MAX_IO * 2));
        assert!(lock(&b.free).iter().all(|v| v.capacity() <= MAX_IO));
    }

    #[test]
    fn times_are_clamped_to_what_cephfs_stores() {
        let t = |s, n| {
            let ts = timespec(s, n);
            (ts.tv_sec, ts.tv_nsec)
        };
        assert_eq!(t(0, 5), (0, 5));
        assert_eq!(t(1 << 31, 7), (1 << 31, 7));
        assert_eq!(
            t(CEPH_TIME_MAX - 1, 999_999_999),
            (CEPH_TIME_MAX - 1, 999_999_999)
        );
        assert_eq!(t(CEPH_TIME_MAX, 5), (CEPH_TIME_MAX, 0));
        assert_eq!(
            t(1 << 32, 5),
            (CEPH_TIME_MAX, 0),
            "2^32 s is not wrapped to 0"
        );
        assert_eq!(t(i64::MAX, 5), (CEPH_TIME_MAX, 0));
        assert_eq!(t(-1, 5), (0, 0), "before 1970 is not wrapped to 2106");
        assert_eq!(t(5, -3), (5, 0));
        assert_eq!(t(5, 2_000_000_000), (5, 999_999_999));
    }

    #[test]
    fn only_an_ftruncate_takes_its_permission_from_the_descriptor() {
        use ffi::*;
        assert!(descriptor_setattr_mask(CEPH_SETATTR_SIZE));
        assert!(descriptor_setattr_mask(
            CEPH_SETATTR_SIZE | CEPH_SETATTR_MTIME | CEPH_SETATTR_MTIME_NOW | CEPH_SETATTR_CTIME
        ));
        assert!(descriptor_setattr_mask(
            CEPH_SETATTR_SIZE | CEPH_SETATTR_KILL_SGUID
        ));
        assert!(!descriptor_setattr_mask(0));
        assert!(!descriptor_setattr_mask(
            CEPH_SETATTR_MTIME | CEPH_SETATTR_MTIME_NOW
        ));
        assert!(
            !descriptor_setattr_mask(CEPH_SETATTR_SIZE | CEPH_SETATTR_MTIME),
            "a chosen time needs ownership"
        );
        assert!(!descriptor_setattr_mask(
            CEPH_SETATTR_SIZE | CEPH_SETATTR_MODE
        ));
        assert!(!descriptor_setattr_mask(
            CEPH_SETATTR_SIZE | CEPH_SETATTR_UID
        ));
        assert!(!descriptor_setattr_mask(
            CEPH_SETATTR_SIZE | CEPH_SETATTR_GID
        ));
    }
}
