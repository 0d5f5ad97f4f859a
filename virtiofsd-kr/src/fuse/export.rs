//! Export policy over a backend: what the guest is told at INIT and in each entry, on top of
//! any `FileSystem`.
//!
//! Owns the flags that change the FUSE contract rather than the storage: `--no-readdirplus`
//! (READDIRPLUS is neither offered nor served) and `--announce-submounts` (an entry whose
//! device differs from its parent's is flagged `FUSE_ATTR_SUBMOUNT`, so the guest gives it
//! its own st_dev), and with a DAX window, which files may be mapped writable: only those
//! the guest holds open for writing (the guest's SETUPMAPPING carries no file handle, so the
//! count of write-opens per inode is kept here). On a host directory it also tells the guest
//! not to send FLUSH on close (`FOPEN_NOFLUSH` in OPEN and CREATE replies) for regular files
//! whose device is one of the local filesystems found at start-up (`local_fs`): there the
//! backend's FLUSH (`close(dup(fd))`) is a no-op, while on network filesystems it writes back
//! and reports errors. It filters the guest's open flags for every backend
//! ([`guest_open_flags`]: `O_PATH`, `O_TMPFILE` refused, bits no guest sends dropped). Every
//! other call is forwarded unchanged. It must not keep any other per-inode state: the backend
//! owns lookup counts.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, ATTR_SUBMOUNT};
use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

use crate::backend::local_fs::LocalDevices;

thread_local! {
    /// Bytes the backend reported written by WRITE calls on this thread since the last
    /// [`take_written`]. A request is served start to finish on one thread, so the request
    /// loop reads here what its WRITE really wrote: the backend's own count, which the guest
    /// cannot touch (unlike the reply in guest memory).
    static WRITTEN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Returns and clears the bytes written on this thread since the last call.
pub fn take_written() -> u64 {
    WRITTEN.with(|w| w.replace(0))
}

/// Options the FUSE transport supports whatever the backend: 1 MiB requests (`BIG_WRITES`,
/// `MAX_PAGES`; without them Linux sends 4 KiB writes), concurrent reads and directory
/// operations, asynchronous direct I/O, and invalidating cached data when the mtime changes
/// (what keeps `cache=auto` coherent across pods).
pub const TRANSPORT_OPTIONS: FsOptions = FsOptions::ASYNC_READ
    .union(FsOptions::PARALLEL_DIROPS)
    .union(FsOptions::BIG_WRITES)
    .union(FsOptions::MAX_PAGES)
    .union(FsOptions::ASYNC_DIO)
    .union(FsOptions::AUTO_INVAL_DATA);

/// The export flags `ExportFs` applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportPolicy {
    pub no_readdirplus: bool,
    pub announce_submounts: bool,
    /// A DAX window is offered: track write-opens so writable mappings can be checked.
    pub dax: bool,
    /// `--readonly`: every call that would change the export gets EROFS here, on the
    /// arguments the backend receives (the guard's earlier check reads guest memory, which
    /// the guest can change between that check and the server's own parse).
    pub readonly: bool,
}

/// A backend served under an `ExportPolicy`.
pub struct ExportFs<F> {
    inner: F,
    policy: ExportPolicy,
    /// Handles open for writing and their inodes (only with `policy.dax`).
    write_opens: Mutex<WriteOpens>,
    /// Devices of local filesystems, on which the guest is told to skip FLUSH (only for a
    /// host directory; never empty when set).
    local_devices: Option<LocalDevices>,
}

/// Which handles are open for writing, counted per inode. Keyed by handle so a RELEASE is
/// matched to its OPEN whatever flags the guest claims in it.
#[derive(Default)]
struct WriteOpens {
    handles: HashMap<u64, u64>,
    per_inode: HashMap<u64, u64>,
}

impl WriteOpens {
    fn opened(&mut self, handle: u64, inode: u64) {
        if self.handles.insert(handle, inode).is_none() {
            *self.per_inode.entry(inode).or_insert(0) += 1;
        }
    }

    fn released(&mut self, handle: u64) {
        let Some(inode) = self.handles.remove(&handle) else {
            return;
        };
        if let Some(n) = self.per_inode.get_mut(&inode) {
            *n -= 1;
            if *n == 0 {
                self.per_inode.remove(&inode);
            }
        }
    }
}

fn opens_for_writing(flags: u32) -> bool {
    (flags as i32) & libc::O_ACCMODE != libc::O_RDONLY
}

/// The most an extended attribute's value or name list can hold on Linux (`XATTR_SIZE_MAX`,
/// `XATTR_LIST_MAX`): a larger GETXATTR/LISTXATTR size asks for nothing more, so it is
/// clamped before a backend sizes its buffer by it (the passthrough backend allocated the
/// guest's size up front: 4 GiB for `u32::MAX`; found by the `fuse_request` fuzz target).
pub const XATTR_SIZE_MAX: u32 = 64 << 10;

/// The open flags a guest kernel sends in OPEN, OPENDIR and CREATE. Anything else is dropped
/// before a backend sees it (`O_ASYNC` would have the host signal the daemon).
const GUEST_OPEN_FLAGS: i32 = libc::O_ACCMODE
    | libc::O_CREAT
    | libc::O_EXCL
    | libc::O_NOCTTY
    | libc::O_TRUNC
    | libc::O_APPEND
    | libc::O_NONBLOCK
    | libc::O_SYNC
    | libc::O_DSYNC
    | libc::O_DIRECT
    | libc::O_LARGEFILE
    | libc::O_DIRECTORY
    | libc::O_NOFOLLOW
    | libc::O_NOATIME
    | libc::O_CLOEXEC;

/// The guest's open flags as a backend may use them, or EINVAL for flags no guest kernel
/// sends in a FUSE open: `O_PATH` (under which Linux ignores `O_CREAT | O_EXCL`, so a CREATE
/// would open whatever has the name: a symlink's target, a FIFO), `O_TMPFILE` (an unnamed
/// file in the directory being opened), and access mode 3. `O_DIRECT` stays: each backend
/// decides whether it honours it (`--allow-direct-io`).
pub fn guest_open_flags(flags: u32) -> io::Result<u32> {
    let flags = flags as i32;
    let tmpfile = libc::O_TMPFILE & !libc::O_DIRECTORY;
    if flags & (libc::O_PATH | tmpfile) != 0 || flags & libc::O_ACCMODE == libc::O_ACCMODE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok((flags & GUEST_OPEN_FLAGS) as u32)
}

impl<F: FileSystem> ExportFs<F> {
    pub fn new(inner: F, policy: ExportPolicy) -> Self {
        ExportFs {
            inner,
            policy,
            write_opens: Mutex::new(WriteOpens::default()),
            local_devices: None,
        }
    }

    /// Regular files on these devices are opened with `FOPEN_NOFLUSH`. Only for a backend
    /// whose FLUSH is `close(dup(fd))` on the host (the passthrough one).
    pub fn with_local_devices(mut self, devices: LocalDevices) -> Self {
        self.local_devices = Some(devices).filter(|d| !d.is_empty());
        self
    }

    /// Whether the guest may skip FLUSH for a file with these attributes: a regular file (a
    /// device node's driver can have its own flush) on one of the local devices.
    fn flush_is_noop(&self, attr: &stat64) -> bool {
        self.local_devices.as_ref().is_some_and(|local| {
            attr.st_mode & libc::S_IFMT == libc::S_IFREG && local.contains(attr.st_dev)
        })
    }

    /// `FOPEN_NOFLUSH` for an inode just opened, when it is a local regular file. Costs one
    /// `fstatat` on the inode's descriptor, and only when there are local devices; if that
    /// fails, FLUSH is kept.
    fn open_options_for(&self, ctx: &Context, inode: F::Inode) -> OpenOptions {
        if self.local_devices.is_none() {
            return OpenOptions::empty();
        }
        match self.inner.getattr(ctx, inode, None) {
            Ok((attr, _)) if self.flush_is_noop(&attr) => OpenOptions::NOFLUSH,
            _ => OpenOptions::empty(),
        }
    }

    fn note_open(&self, handle: Option<u64>, inode: u64, flags: u32) {
        if !self.policy.dax || !opens_for_writing(flags) {
            return;
        }
        if let (Some(handle), Ok(mut opens)) = (handle, self.write_opens.lock()) {
            opens.opened(handle, inode);
        }
    }

    fn note_release(&self, handle: u64) {
        if !self.policy.dax {
            return;
        }
        if let Ok(mut opens) = self.write_opens.lock() {
            opens.released(handle);
        }
    }

    /// EROFS on a read-only export.
    fn writable(&self) -> io::Result<()> {
        if self.policy.readonly {
            return Err(io::Error::from_raw_os_error(libc::EROFS));
        }
        Ok(())
    }

    fn open_for_writing(&self, inode: u64) -> bool {
        self.write_opens
            .lock()
            .map(|opens| opens.per_inode.contains_key(&inode))
            .unwrap_or(false)
    }

    /// The INIT options after the policy: what the transport always supports added, READDIRPLUS
    /// removed when asked, SUBMOUNTS added when asked and the guest supports it.
    fn negotiate(&self, capable: FsOptions, wanted: FsOptions) -> FsOptions {
        let mut opts = wanted | (capable & TRANSPORT_OPTIONS);
        if self.policy.no_readdirplus {
            opts.remove(FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO);
        }
        if self.policy.announce_submounts && capable.contains(FsOptions::SUBMOUNTS) {
            opts.insert(FsOptions::SUBMOUNTS);
        }
        // Options above bit 31 (PERFILE_DAX, the guest's dax=inode, among them) travel in
        // `flags2`, which Linux reads only when the reply carries INIT_EXT; fuse-backend-rs
        // fills `flags2` but does not set the flag.
        if capable.contains(FsOptions::INIT_EXT) && (capable & opts).bits() >> 32 != 0 {
            opts.insert(FsOptions::INIT_EXT);
        }
        opts
    }

    /// Flags `entry` as a submount root when its device differs from its parent's.
    fn mark_submount(&self, ctx: &Context, parent: F::Inode, mut entry: Entry) -> Entry {
        if !self.policy.announce_submounts || entry.inode == 0 {
            return entry;
        }
        if let Ok((parent_attr, _)) = self.inner.getattr(ctx, parent, None) {
            if parent_attr.st_dev != entry.attr.st_dev {
                entry.attr_flags |= ATTR_SUBMOUNT;
            }
        }
        entry
    }
}

#[allow(clippy::too_many_arguments)]
impl<F: FileSystem> FileSystem for ExportFs<F>
where
    F::Inode: Copy,
    F::Handle: Copy,
{
    type Inode = F::Inode;
    type Handle = F::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let wanted = self.inner.init(capable)?;
        Ok(self.negotiate(capable, wanted))
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        let entry = self.inner.lookup(ctx, parent, name)?;
        Ok(self.mark_submount(ctx, parent, entry))
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        if self.policy.no_readdirplus {
            return Err(io::Error::from_raw_os_error(libc::ENOSYS));
        }
        if !self.policy.announce_submounts {
            return self
                .inner
                .readdirplus(ctx, inode, handle, size, offset, add_entry);
        }
        // The directory's device, asked once per call rather than once per entry.
        let mut parent_dev: Option<Option<libc::dev_t>> = None;
        self.inner.readdirplus(
            ctx,
            inode,
            handle,
            size,
            offset,
            &mut |dirent, mut entry| {
                if entry.inode != 0 {
                    let dev = *parent_dev.get_or_insert_with(|| {
                        self.inner
                            .getattr(ctx, inode, None)
                            .ok()
                            .map(|(a, _)| a.st_dev)
                    });
                    if dev.is_some_and(|d| d != entry.attr.st_dev) {
                        entry.attr_flags |= ATTR_SUBMOUNT;
                    }
                }
                add_entry(dirent, entry)
            },
        )
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let flags = guest_open_flags(flags)?;
        if opens_for_writing(flags) || (flags as i32) & libc::O_TRUNC != 0 {
            self.writable()?;
        }
        let (handle, options, passthrough) = self.inner.open(ctx, inode, flags, fuse_flags)?;
        self.note_open(handle.map(Into::into), inode.into(), flags);
        let options = options | self.open_options_for(ctx, inode);
        Ok((handle, options, passthrough))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.writable()?;
        let flags = guest_open_flags(args.flags)?;
        let args = CreateIn { flags, ..args };
        let (entry, handle, mut options, passthrough) =
            self.inner.create(ctx, parent, name, args)?;
        self.note_open(handle.map(Into::into), entry.inode, flags);
        if self.flush_is_noop(&entry.attr) {
            options |= OpenOptions::NOFLUSH;
        }
        Ok((entry, handle, options, passthrough))
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let written = self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )?;
        WRITTEN.with(|w| w.set(w.get().saturating_add(written as u64)));
        Ok(written)
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.note_release(handle.into());
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner
            .getxattr(ctx, inode, name, size.min(XATTR_SIZE_MAX))
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_SIZE_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, guest_open_flags(flags)?)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn setupmapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        // The backend opens the file itself for the mapping, with the daemon's rights, read-write
        // when WRITE is asked, else read-only. A writable mapping is only granted on a writable
        // export while the guest holds the file open for writing.
        let write = SetupmappingFlags::WRITE.bits();
        if flags & write != 0 {
            self.writable()?;
            if !self.open_for_writing(inode.into()) {
                return Err(io::Error::from_raw_os_error(libc::EACCES));
            }
        } else if !self.policy.readonly {
            // A read mapping: QEMU 11.1 maps every descriptor read-write and fails on a
            // read-only one, so on a writable export the file is opened read-write when the
            // host allows it, which is exactly when a FUSE OPEN(O_RDWR) from the guest would
            // succeed: it grants nothing the guest could not take through FUSE. Files the host
            // will not open for writing, and every file of a --readonly export, get a
            // read-only descriptor (and no FUSE_ATTR_DAX), never a writable one.
            match self.inner.setupmapping(
                ctx,
                inode,
                handle,
                foffset,
                len,
                flags | write,
                moffset,
                vu_req,
            ) {
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EACCES | libc::EPERM | libc::EROFS | libc::ETXTBSY)
                    ) => {}
                done => return done,
            }
        }
        self.inner
            .setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        block: u64,
        blocksize: u32,
    ) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend that records the sizes GETXATTR and LISTXATTR reach it with.
    #[derive(Default)]
    struct XattrSizes(Mutex<Vec<u32>>);

    impl FileSystem for XattrSizes {
        type Inode = u64;
        type Handle = u64;
        fn getxattr(&self, _: &Context, _: u64, _: &CStr, size: u32) -> io::Result<GetxattrReply> {
            self.0.lock().unwrap().push(size);
            Ok(GetxattrReply::Count(0))
        }
        fn listxattr(&self, _: &Context, _: u64, size: u32) -> io::Result<ListxattrReply> {
            self.0.lock().unwrap().push(size);
            Ok(ListxattrReply::Count(0))
        }
    }

    /// Regression test for a `fuse_request` fuzz finding: GETXATTR with size `u32::MAX` made
    /// the passthrough backend allocate 4 GiB.
    #[test]
    fn xattr_sizes_are_clamped_to_what_linux_can_return() {
        let fs = ExportFs::new(XattrSizes::default(), ExportPolicy::default());
        let ctx = Context::default();
        let name = c"user.k";
        fs.getxattr(&ctx, 1, name, u32::MAX).unwrap();
        fs.listxattr(&ctx, 1, u32::MAX).unwrap();
        fs.getxattr(&ctx, 1, name, 100).unwrap();
        fs.listxattr(&ctx, 1, 0).unwrap();
        assert_eq!(
            *fs.inner.0.lock().unwrap(),
            [XATTR_SIZE_MAX, XATTR_SIZE_MAX, 100, 0]
        );
    }
    use fuse_backend_rs::api::filesystem::ROOT_ID;
    use std::ffi::CString;

    fn backend(dir: &std::path::Path) -> crate::backend::passthrough::HostFs {
        let opts = crate::backend::passthrough::PassthroughOptions::default();
        crate::backend::passthrough::open(&opts, dir, None).unwrap()
    }

    #[test]
    fn guest_open_flags_refuse_o_path_and_o_tmpfile_and_drop_unknown_bits() {
        let einval = |f: i32| guest_open_flags(f as u32).unwrap_err().raw_os_error();
        assert_eq!(einval(libc::O_PATH), Some(libc::EINVAL));
        assert_eq!(
            einval(libc::O_PATH | libc::O_CREAT | libc::O_EXCL),
            Some(libc::EINVAL)
        );
        assert_eq!(einval(libc::O_TMPFILE | libc::O_RDWR), Some(libc::EINVAL));
        assert_eq!(einval(libc::O_ACCMODE), Some(libc::EINVAL));
        let kept = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_TRUNC | libc::O_APPEND;
        assert_eq!(guest_open_flags(kept as u32).unwrap(), kept as u32);
        assert_eq!(
            guest_open_flags((libc::O_WRONLY | libc::O_ASYNC) as u32).unwrap(),
            libc::O_WRONLY as u32
        );
        assert_eq!(
            guest_open_flags((libc::O_RDONLY | libc::O_DIRECTORY) as u32).unwrap(),
            (libc::O_RDONLY | libc::O_DIRECTORY) as u32
        );
    }

    #[test]
    fn options_above_bit_31_come_with_init_ext() {
        let dir = tempfile::tempdir().unwrap();
        let fs = ExportFs::new(backend(dir.path()), ExportPolicy::default());
        // A dax=inode guest: PERFILE_DAX is bit 33, read from flags2 only with INIT_EXT.
        let opts = fs
            .init(FsOptions::PERFILE_DAX | FsOptions::INIT_EXT | FsOptions::BIG_WRITES)
            .unwrap();
        assert!(opts.contains(FsOptions::PERFILE_DAX | FsOptions::INIT_EXT));
        // Nothing above bit 31 enabled: no INIT_EXT either.
        let opts = fs
            .init(FsOptions::INIT_EXT | FsOptions::BIG_WRITES)
            .unwrap();
        assert!(!opts.contains(FsOptions::INIT_EXT));
    }

    #[test]
    fn no_readdirplus_removes_it_from_init_and_refuses_the_call() {
        let dir = tempfile::tempdir().unwrap();
        let policy = ExportPolicy {
            no_readdirplus: true,
            ..Default::default()
        };
        let fs = ExportFs::new(backend(dir.path()), policy);
        let capable = FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO;
        let opts = fs.init(capable).unwrap();
        assert!(!opts.intersects(FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO));
        let ctx = Context::default();
        let err = fs
            .readdirplus(&ctx, ROOT_ID, 0, 4096, 0, &mut |_, _| Ok(0))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSYS));

        // Transport options are offered whenever the guest supports them.
        let big = fs
            .init(FsOptions::BIG_WRITES | FsOptions::MAX_PAGES)
            .unwrap();
        assert!(big.contains(FsOptions::BIG_WRITES | FsOptions::MAX_PAGES));
        assert!(!fs
            .init(FsOptions::empty())
            .unwrap()
            .contains(FsOptions::BIG_WRITES));

        // Without the flag, the backend's readdirplus offer passes through.
        let plain = ExportFs::new(backend(dir.path()), ExportPolicy::default());
        assert!(plain
            .init(capable)
            .unwrap()
            .contains(FsOptions::DO_READDIRPLUS));
    }

    #[test]
    fn submounts_are_flagged_only_when_devices_differ() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        let policy = ExportPolicy {
            announce_submounts: true,
            ..Default::default()
        };
        let fs = ExportFs::new(backend(dir.path()), policy);
        let opts = fs.init(FsOptions::SUBMOUNTS).unwrap();
        assert!(opts.contains(FsOptions::SUBMOUNTS));
        let ctx = Context::default();
        let same_dev = fs
            .lookup(&ctx, ROOT_ID, &CString::new("sub").unwrap())
            .unwrap();
        assert_eq!(same_dev.attr_flags & ATTR_SUBMOUNT, 0);

        // /proc is another filesystem than the temp dir, so a share of / marks it.
        let root = ExportFs::new(backend(std::path::Path::new("/")), policy);
        root.init(FsOptions::SUBMOUNTS).unwrap();
        let proc_entry = root
            .lookup(&ctx, ROOT_ID, &CString::new("proc").unwrap())
            .unwrap();
        assert_eq!(proc_entry.attr_flags & ATTR_SUBMOUNT, ATTR_SUBMOUNT);
    }

    fn create_args(flags: i32) -> CreateIn {
        CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        }
    }

    fn device_of(path: &std::path::Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().dev()
    }

    #[test]
    fn create_and_open_on_a_local_device_set_noflush_and_flush_still_works() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let local = LocalDevices::single(device_of(dir.path()), "test");
        let fs =
            ExportFs::new(backend(dir.path()), ExportPolicy::default()).with_local_devices(local);
        fs.init(FsOptions::empty()).unwrap();
        let ctx = Context::default();
        let name = |n: &str| CString::new(n).unwrap();

        let (entry, handle, options, _) = fs
            .create(&ctx, ROOT_ID, &name("f"), create_args(libc::O_RDWR))
            .expect("create");
        assert!(options.contains(OpenOptions::NOFLUSH), "{options:?}");
        let handle = handle.expect("a handle");
        // A guest that sends FLUSH anyway (writeback cache, older kernel) is answered.
        fs.flush(&ctx, entry.inode, handle, 0).expect("flush");
        fs.release(&ctx, entry.inode, 0, handle, false, false, None)
            .unwrap();

        for flags in [
            libc::O_RDONLY,
            libc::O_WRONLY,
            libc::O_RDWR | libc::O_APPEND,
        ] {
            let (handle, options, _) = fs.open(&ctx, entry.inode, flags as u32, 0).expect("open");
            assert!(options.contains(OpenOptions::NOFLUSH), "{flags:#o}");
            let handle = handle.expect("a handle");
            fs.flush(&ctx, entry.inode, handle, 0).expect("flush");
            fs.release(&ctx, entry.inode, 0, handle, false, false, None)
                .unwrap();
        }

        // Not a regular file: FLUSH is kept.
        let d = fs.lookup(&ctx, ROOT_ID, &name("d")).unwrap().inode;
        let (_, options, _) = fs.open(&ctx, d, libc::O_RDONLY as u32, 0).expect("open d");
        assert!(!options.contains(OpenOptions::NOFLUSH));
        let (_, options) = fs.opendir(&ctx, d, 0).expect("opendir");
        assert!(!options.contains(OpenOptions::NOFLUSH));
    }

    #[test]
    fn without_the_file_device_in_the_set_flush_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dev = device_of(dir.path());
        let other = LocalDevices::single(dev.wrapping_add(1), "test");
        let ctx = Context::default();
        let name = |n: &str| CString::new(n).unwrap();
        let exports = [
            (
                "no set",
                ExportFs::new(backend(dir.path()), ExportPolicy::default()),
            ),
            (
                "empty set",
                ExportFs::new(backend(dir.path()), ExportPolicy::default())
                    .with_local_devices(LocalDevices::default()),
            ),
            (
                "another device",
                ExportFs::new(backend(dir.path()), ExportPolicy::default())
                    .with_local_devices(other),
            ),
        ];
        for (i, (what, fs)) in exports.iter().enumerate() {
            fs.init(FsOptions::empty()).unwrap();
            let file = name(&format!("f{i}"));
            let (entry, handle, options, _) = fs
                .create(&ctx, ROOT_ID, &file, create_args(libc::O_RDWR))
                .expect("create");
            assert!(!options.contains(OpenOptions::NOFLUSH), "create, {what}");
            fs.flush(&ctx, entry.inode, handle.unwrap(), 0)
                .expect("flush");
            let (handle, options, _) = fs
                .open(&ctx, entry.inode, libc::O_RDONLY as u32, 0)
                .expect("open");
            assert!(!options.contains(OpenOptions::NOFLUSH), "open, {what}");
            fs.flush(&ctx, entry.inode, handle.unwrap(), 0)
                .expect("flush");
        }
    }

    /// A read-only export refuses changes in ExportFs itself, whatever reached it: the
    /// guard in front reads guest memory that the guest can rewrite before the server parses
    /// it again, so this is the check that holds.
    #[test]
    fn readonly_export_refuses_every_change_at_the_backend_boundary() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"data").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let policy = ExportPolicy {
            readonly: true,
            ..Default::default()
        };
        let fs = ExportFs::new(backend(dir.path()), policy);
        fs.init(FsOptions::empty()).unwrap();
        let ctx = Context::default();
        let name = |n: &str| CString::new(n).unwrap();
        let erofs = |r: io::Result<()>, what: &str| {
            assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS), "{what}");
        };
        let f = fs.lookup(&ctx, ROOT_ID, &name("f")).unwrap().inode;
        for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
            erofs(
                fs.open(&ctx, f, flags as u32, 0).map(|_| ()),
                &format!("open {flags:#o}"),
            );
        }
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o644,
            umask: 0,
            fuse_flags: 0,
        };
        erofs(
            fs.create(&ctx, ROOT_ID, &name("new"), args).map(|_| ()),
            "create",
        );
        erofs(
            fs.mkdir(&ctx, ROOT_ID, &name("nd"), 0o755, 0).map(|_| ()),
            "mkdir",
        );
        erofs(
            fs.mknod(&ctx, ROOT_ID, &name("n"), libc::S_IFIFO | 0o600, 0, 0)
                .map(|_| ()),
            "mknod",
        );
        erofs(
            fs.symlink(&ctx, &name("f"), ROOT_ID, &name("s"))
                .map(|_| ()),
            "symlink",
        );
        erofs(fs.link(&ctx, f, ROOT_ID, &name("h")).map(|_| ()), "link");
        erofs(fs.unlink(&ctx, ROOT_ID, &name("f")), "unlink");
        erofs(fs.rmdir(&ctx, ROOT_ID, &name("d")), "rmdir");
        erofs(
            fs.rename(&ctx, ROOT_ID, &name("f"), ROOT_ID, &name("g"), 0),
            "rename",
        );
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut attr: stat64 = unsafe { std::mem::zeroed() };
        attr.st_size = 0;
        erofs(
            fs.setattr(&ctx, f, attr, None, SetattrValid::SIZE)
                .map(|_| ()),
            "setattr size",
        );
        erofs(fs.setxattr(&ctx, f, &name("user.x"), b"1", 0), "setxattr");
        erofs(fs.removexattr(&ctx, f, &name("user.x")), "removexattr");
        // Reading stays possible, and nothing changed on the host.
        fs.open(&ctx, f, libc::O_RDONLY as u32, 0)
            .expect("a read-only open of a read-only export");
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"data");
        assert!(dir.path().join("d").is_dir());
        assert!(!dir.path().join("new").exists());
        assert!(!dir.path().join("g").exists());
    }
}
