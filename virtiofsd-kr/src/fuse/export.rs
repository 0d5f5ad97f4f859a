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
//! ([`guest_open_flags`]: `O_PATH`, `O_TMPFILE` refused, bits no guest sends dropped).
//!
//! POSIX ACLs (`--posix-acl`): FUSE_POSIX_ACL, DONT_MASK and SETXATTR_EXT are negotiated
//! together, as the reference virtiofsd does; the guest kernel then enforces ACLs and stores
//! them as `system.posix_acl_*` attributes, and the guest's umask reaches the export
//! unapplied. It is applied here on create unless the parent directory has a default ACL
//! (which replaces the umask, as on any Linux filesystem); `SETXATTR_ACL_KILL_SGID` clears the
//! setgid bit after an access ACL is set. Without ACLs those two attributes are refused
//! (ENOTSUP), whatever a guest sends. A mode change keeps the ACL's mask in step on the host
//! (the host kernel's chmod does it).
//!
//! ID translation (`--translate-uid/-gid`, `--uid-map/--gid-map`, rules in `id_map`): every
//! call reaches the backend with host credentials; files are created with them (a guest ID the
//! rules refuse gets EPERM/EINVAL there), SETATTR's new owner is translated to the host, and
//! every attribute in a reply (LOOKUP, GETATTR, SETATTR, CREATE, MKNOD, MKDIR, SYMLINK, LINK,
//! READDIRPLUS) is translated back to the guest.
//!
//! Every other call is forwarded unchanged. It must not keep any other per-inode state: the
//! backend owns lookup counts.

use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, ATTR_SUBMOUNT, SETXATTR_ACL_KILL_SGID,
};
use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, FsOptions, GetxattrReply, IoctlData,
    ListxattrReply, OpenOptions, SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

use crate::backend::local_fs::LocalDevices;
use crate::fuse::id_map::{IdMaps, OVERFLOW_ID};

/// The access ACL's extended attribute.
const ACL_ACCESS: &[u8] = b"system.posix_acl_access";
/// The default ACL's extended attribute (directories).
const ACL_DEFAULT: &[u8] = b"system.posix_acl_default";

/// What FUSE_INIT needs from the guest for POSIX ACLs: the guest enforces ACLs
/// (`POSIX_ACL`), leaves the umask to the export (`DONT_MASK`, since a default ACL replaces
/// it), and says when setting an ACL must clear setgid (`SETXATTR_EXT`).
pub const ACL_OPTIONS: FsOptions = FsOptions::POSIX_ACL
    .union(FsOptions::DONT_MASK)
    .union(FsOptions::SETXATTR_EXT);

/// `--posix-acl`: whether POSIX ACLs are offered, and what happens when the guest cannot take
/// them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AclMode {
    /// Not offered; the ACL attributes are refused (the default).
    #[default]
    Never,
    /// Offered when the guest supports them, else served without.
    Auto,
    /// Offered; a guest that cannot take them fails FUSE_INIT (EPROTO).
    Always,
}

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
#[derive(Debug, Clone, Default)]
pub struct ExportPolicy {
    pub no_readdirplus: bool,
    pub announce_submounts: bool,
    /// A DAX window is offered: track write-opens so writable mappings can be checked.
    pub dax: bool,
    /// `--readonly`: every call that would change the export gets EROFS here, on the
    /// arguments the backend receives (the guard's earlier check reads guest memory, which
    /// the guest can change between that check and the server's own parse).
    pub readonly: bool,
    /// `--xattr`: extended attribute requests reach the backend. Without it every one of
    /// them gets ENOSYS here, whatever the backend, so the guest kernel stops sending them
    /// (as with the reference virtiofsd). The CephFS backend used to answer them anyway, so a
    /// cache=auto guest paid a round trip to the cluster before every WRITE (its
    /// `security.capability` check) that a daemon without `--xattr` never pays.
    pub xattr: bool,
    /// `--posix-acl`.
    pub posix_acl: AclMode,
    /// Guest/host UID and GID translation (identity when no rule is given).
    pub ids: IdMaps,
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
    /// POSIX ACLs were negotiated at the last FUSE_INIT.
    acl: AtomicBool,
    /// The ID translation, when there is one.
    ids: Option<IdMaps>,
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
        let ids = Some(policy.ids.clone()).filter(|ids| !ids.is_identity());
        ExportFs {
            inner,
            policy,
            write_opens: Mutex::new(WriteOpens::default()),
            local_devices: None,
            acl: AtomicBool::new(false),
            ids,
        }
    }

    /// The request's credentials as the backend is to see them: the host IDs of the guest's.
    /// A guest ID the rules refuse becomes the overflow ID, which owns nothing; calls that
    /// create a file use [`Self::creator`] instead, which refuses it.
    fn host_ctx(&self, ctx: &Context) -> Context {
        match &self.ids {
            None => *ctx,
            Some(ids) => Context {
                uid: ids.uid.to_host(ctx.uid).unwrap_or(OVERFLOW_ID),
                gid: ids.gid.to_host(ctx.gid).unwrap_or(OVERFLOW_ID),
                ..*ctx
            },
        }
    }

    /// The host credentials a new file is created with, or the errno refusing the guest's.
    fn creator(&self, ctx: &Context) -> io::Result<Context> {
        match &self.ids {
            None => Ok(*ctx),
            Some(ids) => Ok(Context {
                uid: ids.uid.to_host(ctx.uid).map_err(refused)?,
                gid: ids.gid.to_host(ctx.gid).map_err(refused)?,
                ..*ctx
            }),
        }
    }

    /// Host attributes as the guest is shown them.
    fn guest_attr(&self, mut attr: stat64) -> stat64 {
        if let Some(ids) = &self.ids {
            attr.st_uid = ids.uid.to_guest(attr.st_uid);
            attr.st_gid = ids.gid.to_guest(attr.st_gid);
        }
        attr
    }

    fn guest_entry(&self, mut entry: Entry) -> Entry {
        entry.attr = self.guest_attr(entry.attr);
        entry
    }

    fn acl_on(&self) -> bool {
        self.acl.load(Ordering::Relaxed)
    }

    /// ENOTSUP for the ACL attributes while ACLs are not negotiated.
    fn xattr_on(&self) -> io::Result<()> {
        if self.policy.xattr {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(libc::ENOSYS))
        }
    }

    fn xattr_allowed(&self, name: &CStr) -> io::Result<()> {
        self.xattr_on()?;
        if is_acl_name(name) && !self.acl_on() {
            return Err(io::Error::from_raw_os_error(libc::ENOTSUP));
        }
        Ok(())
    }

    /// The umask the backend is to apply to a new node in `parent`: with ACLs, the guest's
    /// unless the directory has a default ACL (then the ACL decides, the umask is ignored, as
    /// POSIX.1e and every Linux filesystem do); without ACLs, the guest kernel has applied it
    /// already and applying it again changes nothing.
    fn create_umask(&self, ctx: &Context, parent: F::Inode, umask: u32) -> u32 {
        if !self.acl_on() {
            return umask;
        }
        match self.inner.getxattr(ctx, parent, cstr(ACL_DEFAULT), 0) {
            Ok(GetxattrReply::Count(n)) if n > 0 => 0,
            Ok(GetxattrReply::Value(v)) if !v.is_empty() => 0,
            _ => umask,
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
        match self.inner.getattr(&self.host_ctx(ctx), inode, None) {
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
    /// removed when asked, SUBMOUNTS added when asked and the guest supports it, the ACL
    /// options when asked (EPROTO under `--posix-acl=always` if the guest lacks one).
    fn negotiate(&self, capable: FsOptions, wanted: FsOptions) -> io::Result<FsOptions> {
        let mut opts = (wanted - ACL_OPTIONS) | (capable & TRANSPORT_OPTIONS);
        let acl = match self.policy.posix_acl {
            AclMode::Never => false,
            _ if capable.contains(ACL_OPTIONS) => true,
            AclMode::Auto => {
                tracing::warn!("--posix-acl=auto: the guest does not support POSIX ACLs (FUSE_POSIX_ACL, DONT_MASK, SETXATTR_EXT); serving without");
                false
            }
            AclMode::Always => {
                tracing::error!("--posix-acl: the guest does not support POSIX ACLs (FUSE_POSIX_ACL, DONT_MASK, SETXATTR_EXT); refusing FUSE_INIT");
                return Err(io::Error::from_raw_os_error(libc::EPROTO));
            }
        };
        if acl {
            opts |= ACL_OPTIONS;
        }
        self.acl.store(acl, Ordering::Relaxed);
        if self.policy.no_readdirplus {
            opts.remove(FsOptions::DO_READDIRPLUS | FsOptions::READDIRPLUS_AUTO);
        }
        // Never FUSE_ATOMIC_O_TRUNC, whatever the backend asks: with it the guest kernel hands
        // O_TRUNC to OPEN before its own checks of the truncation (ETXTBSY for a running
        // program, in `handle_truncate`), so a refused `open(O_RDONLY|O_TRUNC)` would already
        // have emptied the file (the CephFS backend asked for it; `guest_etxtbsy.rs`).
        opts.remove(FsOptions::ATOMIC_O_TRUNC);
        if self.policy.announce_submounts && capable.contains(FsOptions::SUBMOUNTS) {
            opts.insert(FsOptions::SUBMOUNTS);
        }
        // Options above bit 31 (PERFILE_DAX, the guest's dax=inode, among them) travel in
        // `flags2`, which Linux reads only when the reply carries INIT_EXT; fuse-backend-rs
        // fills `flags2` but does not set the flag.
        if capable.contains(FsOptions::INIT_EXT) && (capable & opts).bits() >> 32 != 0 {
            opts.insert(FsOptions::INIT_EXT);
        }
        Ok(opts)
    }

    /// Flags `entry` as a submount root when its device differs from its parent's.
    fn mark_submount(&self, ctx: &Context, parent: F::Inode, mut entry: Entry) -> Entry {
        if !self.policy.announce_submounts || entry.inode == 0 {
            return entry;
        }
        if let Ok((parent_attr, _)) = self.inner.getattr(&self.host_ctx(ctx), parent, None) {
            if parent_attr.st_dev != entry.attr.st_dev {
                entry.attr_flags |= ATTR_SUBMOUNT;
            }
        }
        entry
    }
}

fn refused(r: crate::fuse::id_map::Refused) -> io::Error {
    io::Error::from_raw_os_error(r.0)
}

/// A NUL-separated attribute name list without the ACL names.
fn without_acl_names(list: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len());
    for name in list.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        if !matches!(name, ACL_ACCESS | ACL_DEFAULT) {
            out.extend_from_slice(name);
            out.push(0);
        }
    }
    out
}

fn is_acl_name(name: &CStr) -> bool {
    matches!(name.to_bytes(), ACL_ACCESS | ACL_DEFAULT)
}

fn cstr(bytes_without_nul: &'static [u8]) -> &'static CStr {
    match bytes_without_nul {
        ACL_ACCESS => c"system.posix_acl_access",
        _ => c"system.posix_acl_default",
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
        self.negotiate(capable, wanted)
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        let entry = self.inner.lookup(&self.host_ctx(ctx), parent, name)?;
        Ok(self.guest_entry(self.mark_submount(ctx, parent, entry)))
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
        let host_ctx = self.host_ctx(ctx);
        if !self.policy.announce_submounts && self.ids.is_none() {
            return self
                .inner
                .readdirplus(&host_ctx, inode, handle, size, offset, add_entry);
        }
        // The directory's device, asked once per call rather than once per entry.
        let mut parent_dev: Option<Option<libc::dev_t>> = None;
        self.inner.readdirplus(
            &host_ctx,
            inode,
            handle,
            size,
            offset,
            &mut |dirent, mut entry| {
                entry = self.guest_entry(entry);
                if self.policy.announce_submounts && entry.inode != 0 {
                    let dev = *parent_dev.get_or_insert_with(|| {
                        self.inner
                            .getattr(&host_ctx, inode, None)
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
        self.inner.forget(&self.host_ctx(ctx), inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        self.inner.batch_forget(&self.host_ctx(ctx), requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        let (attr, timeout) = self.inner.getattr(&self.host_ctx(ctx), inode, handle)?;
        Ok((self.guest_attr(attr), timeout))
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
        let mut attr = attr;
        if let Some(ids) = &self.ids {
            if valid.contains(SetattrValid::UID) {
                attr.st_uid = ids.uid.to_host(attr.st_uid).map_err(refused)?;
            }
            if valid.contains(SetattrValid::GID) {
                attr.st_gid = ids.gid.to_host(attr.st_gid).map_err(refused)?;
            }
        }
        let (attr, timeout) =
            self.inner
                .setattr(&self.host_ctx(ctx), inode, attr, handle, valid)?;
        Ok((self.guest_attr(attr), timeout))
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(&self.host_ctx(ctx), inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        let entry = self
            .inner
            .symlink(&self.creator(ctx)?, linkname, parent, name)?;
        Ok(self.guest_entry(entry))
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
        let ctx = self.creator(ctx)?;
        let umask = self.create_umask(&ctx, inode, umask);
        let entry = self.inner.mknod(&ctx, inode, name, mode, rdev, umask)?;
        Ok(self.guest_entry(entry))
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
        let ctx = self.creator(ctx)?;
        let umask = self.create_umask(&ctx, parent, umask);
        let entry = self.inner.mkdir(&ctx, parent, name, mode, umask)?;
        Ok(self.guest_entry(entry))
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(&self.host_ctx(ctx), parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(&self.host_ctx(ctx), parent, name)
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
            .rename(&self.host_ctx(ctx), olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        let entry = self
            .inner
            .link(&self.host_ctx(ctx), inode, newparent, newname)?;
        Ok(self.guest_entry(entry))
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
        let (handle, options, passthrough) =
            self.inner
                .open(&self.host_ctx(ctx), inode, flags, fuse_flags)?;
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
        let ctx = &self.creator(ctx)?;
        let umask = self.create_umask(ctx, parent, args.umask);
        let args = CreateIn {
            flags,
            umask,
            ..args
        };
        let (entry, handle, mut options, passthrough) =
            self.inner.create(ctx, parent, name, args)?;
        let entry = self.guest_entry(entry);
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
        self.inner.read(
            &self.host_ctx(ctx),
            inode,
            handle,
            w,
            size,
            offset,
            lock_owner,
            flags,
        )
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
            &self.host_ctx(ctx),
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
        self.inner
            .flush(&self.host_ctx(ctx), inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner
            .fsync(&self.host_ctx(ctx), inode, datasync, handle)
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
            .fallocate(&self.host_ctx(ctx), inode, handle, mode, offset, length)
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
        self.inner.release(
            &self.host_ctx(ctx),
            inode,
            flags,
            handle,
            flush,
            flock_release,
            lock_owner,
        )
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(&self.host_ctx(ctx), inode)
    }

    fn syncfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<()> {
        self.inner.syncfs(&self.host_ctx(ctx), inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.setxattr_ext(ctx, inode, name, value, flags, 0)
    }

    fn setxattr_ext(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
        setxattr_flags: u32,
    ) -> io::Result<()> {
        self.xattr_on()?;
        self.writable()?;
        self.xattr_allowed(name)?;
        let ctx = &self.host_ctx(ctx);
        self.inner.setxattr(ctx, inode, name, value, flags)?;
        // The guest kernel found that the caller may not keep setgid (not in the file's
        // group, no CAP_FSETID); the host kernel cannot tell, since the daemon sets the ACL
        // with its own rights.
        if self.acl_on()
            && setxattr_flags & SETXATTR_ACL_KILL_SGID != 0
            && name.to_bytes() == ACL_ACCESS
        {
            let (mut attr, _) = self.inner.getattr(ctx, inode, None)?;
            if attr.st_mode & libc::S_ISGID != 0 {
                attr.st_mode &= !libc::S_ISGID & 0o7777;
                self.inner
                    .setattr(ctx, inode, attr, None, SetattrValid::MODE)?;
            }
        }
        Ok(())
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.xattr_allowed(name)?;
        self.inner
            .getxattr(&self.host_ctx(ctx), inode, name, size.min(XATTR_SIZE_MAX))
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.xattr_on()?;
        let ctx = &self.host_ctx(ctx);
        let size = size.min(XATTR_SIZE_MAX);
        let reply = self.inner.listxattr(ctx, inode, size);
        if self.acl_on() {
            return reply;
        }
        // Without ACLs their attributes are not listed either (as the reference virtiofsd):
        // a guest would list a name it then cannot read.
        let all_names = |n: u32| match self.inner.listxattr(ctx, inode, n)? {
            ListxattrReply::Names(v) => Ok(without_acl_names(&v)),
            ListxattrReply::Count(_) => Err(io::Error::from_raw_os_error(libc::EIO)),
        };
        match reply {
            Ok(ListxattrReply::Names(v)) => Ok(ListxattrReply::Names(without_acl_names(&v))),
            Ok(ListxattrReply::Count(0)) => Ok(ListxattrReply::Count(0)),
            Ok(ListxattrReply::Count(n)) => Ok(ListxattrReply::Count(
                all_names(n.min(XATTR_SIZE_MAX))?.len() as u32,
            )),
            // The list may fit once the ACL names are left out.
            Err(e) if size > 0 && e.raw_os_error() == Some(libc::ERANGE) => {
                let names = all_names(XATTR_SIZE_MAX)?;
                if names.len() > size as usize {
                    return Err(e);
                }
                Ok(ListxattrReply::Names(names))
            }
            other => other,
        }
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.xattr_on()?;
        self.writable()?;
        self.xattr_allowed(name)?;
        self.inner.removexattr(&self.host_ctx(ctx), inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        self.inner
            .opendir(&self.host_ctx(ctx), inode, guest_open_flags(flags)?)
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
            .readdir(&self.host_ctx(ctx), inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner
            .fsyncdir(&self.host_ctx(ctx), inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner
            .releasedir(&self.host_ctx(ctx), inode, flags, handle)
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
                &self.host_ctx(ctx),
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
        self.inner.setupmapping(
            &self.host_ctx(ctx),
            inode,
            handle,
            foffset,
            len,
            flags,
            moffset,
            vu_req,
        )
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner
            .removemapping(&self.host_ctx(ctx), inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        self.inner.access(&self.host_ctx(ctx), inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner
            .lseek(&self.host_ctx(ctx), inode, handle, offset, whence)
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
        self.inner
            .getlk(&self.host_ctx(ctx), inode, handle, owner, lock, flags)
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
        self.inner
            .setlk(&self.host_ctx(ctx), inode, handle, owner, lock, flags)
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
        self.inner
            .setlkw(&self.host_ctx(ctx), inode, handle, owner, lock, flags)
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
        self.inner.ioctl(
            &self.host_ctx(ctx),
            inode,
            handle,
            flags,
            cmd,
            data,
            out_size,
        )
    }

    fn bmap(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        block: u64,
        blocksize: u32,
    ) -> io::Result<u64> {
        self.inner
            .bmap(&self.host_ctx(ctx), inode, block, blocksize)
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
        self.inner
            .poll(&self.host_ctx(ctx), inode, handle, khandle, flags, events)
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

    /// A backend that answers every extended attribute request and counts them.
    #[derive(Default)]
    struct XattrCalls(Mutex<u32>);

    impl FileSystem for XattrCalls {
        type Inode = u64;
        type Handle = u64;
        fn getxattr(&self, _: &Context, _: u64, _: &CStr, _: u32) -> io::Result<GetxattrReply> {
            *self.0.lock().unwrap() += 1;
            Ok(GetxattrReply::Count(0))
        }
        fn listxattr(&self, _: &Context, _: u64, _: u32) -> io::Result<ListxattrReply> {
            *self.0.lock().unwrap() += 1;
            Ok(ListxattrReply::Count(0))
        }
        fn setxattr(&self, _: &Context, _: u64, _: &CStr, _: &[u8], _: u32) -> io::Result<()> {
            *self.0.lock().unwrap() += 1;
            Ok(())
        }
        fn removexattr(&self, _: &Context, _: u64, _: &CStr) -> io::Result<()> {
            *self.0.lock().unwrap() += 1;
            Ok(())
        }
    }

    /// `--xattr` means the same for every backend: without it no extended attribute request
    /// reaches the backend (the CephFS backend answered them all, through the cluster, and a
    /// cache=auto guest sends a GETXATTR before every WRITE until it gets ENOSYS), readonly
    /// or not; with it every one does.
    #[test]
    fn without_xattr_no_backend_sees_an_xattr_request() {
        let ctx = Context::default();
        let name = c"security.capability";
        for readonly in [false, true] {
            let fs = ExportFs::new(
                XattrCalls::default(),
                ExportPolicy {
                    readonly,
                    ..ExportPolicy::default()
                },
            );
            let enosys = |r: io::Result<()>, what: &str| {
                assert_eq!(
                    r.err().and_then(|e| e.raw_os_error()),
                    Some(libc::ENOSYS),
                    "{what}"
                );
            };
            enosys(fs.getxattr(&ctx, 1, name, 64).map(|_| ()), "getxattr");
            enosys(fs.listxattr(&ctx, 1, 64).map(|_| ()), "listxattr");
            enosys(fs.setxattr(&ctx, 1, name, b"v", 0), "setxattr");
            enosys(fs.setxattr_ext(&ctx, 1, name, b"v", 0, 0), "setxattr_ext");
            enosys(fs.removexattr(&ctx, 1, name), "removexattr");
            assert_eq!(*fs.inner.0.lock().unwrap(), 0, "readonly={readonly}");
        }
        let fs = ExportFs::new(
            XattrCalls::default(),
            ExportPolicy {
                xattr: true,
                ..ExportPolicy::default()
            },
        );
        fs.getxattr(&ctx, 1, name, 64).unwrap();
        fs.listxattr(&ctx, 1, 64).unwrap();
        fs.setxattr(&ctx, 1, c"user.x", b"v", 0).unwrap();
        fs.removexattr(&ctx, 1, c"user.x").unwrap();
        assert_eq!(*fs.inner.0.lock().unwrap(), 4);
    }

    /// Regression test for a `fuse_request` fuzz finding: GETXATTR with size `u32::MAX` made
    /// the passthrough backend allocate 4 GiB.
    #[test]
    fn xattr_sizes_are_clamped_to_what_linux_can_return() {
        let fs = ExportFs::new(
            XattrSizes::default(),
            ExportPolicy {
                xattr: true,
                ..ExportPolicy::default()
            },
        );
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

    /// A backend that asks for every option the guest offers.
    struct WantsAll;

    impl FileSystem for WantsAll {
        type Inode = u64;
        type Handle = u64;
        fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
            Ok(capable)
        }
    }

    /// O_TRUNC stays with the guest kernel, which truncates after its ETXTBSY check, even for
    /// a backend that asks for FUSE_ATOMIC_O_TRUNC.
    #[test]
    fn atomic_o_trunc_is_never_negotiated() {
        let fs = ExportFs::new(WantsAll, ExportPolicy::default());
        let opts = fs
            .init(FsOptions::ATOMIC_O_TRUNC | FsOptions::DO_READDIRPLUS)
            .unwrap();
        assert!(!opts.contains(FsOptions::ATOMIC_O_TRUNC), "{opts:?}");
        assert!(opts.contains(FsOptions::DO_READDIRPLUS), "{opts:?}");
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
        let fs = ExportFs::new(backend(dir.path()), policy.clone());
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
            xattr: true,
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

    fn xattr_backend(dir: &std::path::Path) -> crate::backend::passthrough::HostFs {
        let opts = crate::backend::passthrough::PassthroughOptions {
            xattr: true,
            ..Default::default()
        };
        crate::backend::passthrough::open(&opts, dir, None).unwrap()
    }

    /// An ACL in the kernel's xattr form: version 2, then (tag, perm, id) entries.
    fn acl_xattr(entries: &[(u16, u16, u32)]) -> Vec<u8> {
        let mut v = 2u32.to_le_bytes().to_vec();
        for &(tag, perm, id) in entries {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&perm.to_le_bytes());
            v.extend_from_slice(&id.to_le_bytes());
        }
        v
    }

    const USER_OBJ: u16 = 1;
    const USER: u16 = 2;
    const GROUP_OBJ: u16 = 4;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const NO_ID: u32 = u32::MAX;

    fn acl_policy(mode: AclMode) -> ExportPolicy {
        ExportPolicy {
            posix_acl: mode,
            xattr: true,
            ..Default::default()
        }
    }

    fn host_mode(path: &std::path::Path) -> u32 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn acl_options_are_negotiated_together_or_refused_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let capable = ACL_OPTIONS | FsOptions::BIG_WRITES;
        let lacking = FsOptions::POSIX_ACL | FsOptions::DONT_MASK;
        let always = ExportFs::new(xattr_backend(dir.path()), acl_policy(AclMode::Always));
        assert!(always.init(capable).unwrap().contains(ACL_OPTIONS));
        assert!(always.acl_on());
        let err = always.init(lacking).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPROTO));
        let auto = ExportFs::new(xattr_backend(dir.path()), acl_policy(AclMode::Auto));
        let opts = auto.init(lacking).unwrap();
        assert!(!opts.intersects(ACL_OPTIONS), "{opts:?}");
        assert!(!auto.acl_on());
        assert!(auto.init(capable).unwrap().contains(ACL_OPTIONS));
        let never = ExportFs::new(xattr_backend(dir.path()), acl_policy(AclMode::Never));
        assert!(!never.init(capable).unwrap().intersects(ACL_OPTIONS));
    }

    #[test]
    fn without_acls_the_acl_attributes_are_refused_and_others_pass() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let fs = ExportFs::new(xattr_backend(dir.path()), acl_policy(AclMode::Never));
        fs.init(ACL_OPTIONS).unwrap();
        let ctx = Context::default();
        let f = fs.lookup(&ctx, ROOT_ID, c"f").unwrap().inode;
        let acl = acl_xattr(&[
            (USER_OBJ, 6, NO_ID),
            (GROUP_OBJ, 4, NO_ID),
            (OTHER, 4, NO_ID),
        ]);
        for name in [c"system.posix_acl_access", c"system.posix_acl_default"] {
            let e = fs.setxattr(&ctx, f, name, &acl, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP), "{name:?}");
            let e = fs.getxattr(&ctx, f, name, 100).err().unwrap();
            assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP), "{name:?}");
            let e = fs.removexattr(&ctx, f, name).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOTSUP), "{name:?}");
        }
        fs.setxattr(&ctx, f, c"user.k", b"v", 0).unwrap();

        // An ACL the host has is not listed either; the count and the list agree. (One with a
        // named entry: an ACL the mode bits express is not stored at all.)
        let acl = acl_xattr(&[
            (USER_OBJ, 6, NO_ID),
            (USER, 6, 1234),
            (GROUP_OBJ, 4, NO_ID),
            (MASK, 6, NO_ID),
            (OTHER, 4, NO_ID),
        ]);
        let host =
            CString::new(dir.path().join("f").into_os_string().into_encoded_bytes()).unwrap();
        // SAFETY: NUL-terminated path and name; `acl` is readable for its length.
        let rc = unsafe {
            libc::setxattr(
                host.as_ptr(),
                c"system.posix_acl_access".as_ptr(),
                acl.as_ptr().cast(),
                acl.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        let want = b"user.k\0".to_vec();
        assert!(
            matches!(fs.listxattr(&ctx, f, 0), Ok(ListxattrReply::Count(n)) if n as usize == want.len())
        );
        assert!(matches!(fs.listxattr(&ctx, f, 4096), Ok(ListxattrReply::Names(v)) if v == want));
        // A buffer that holds the list only without the ACL name is enough.
        assert!(
            matches!(fs.listxattr(&ctx, f, want.len() as u32), Ok(ListxattrReply::Names(v)) if v == want)
        );
        let e = fs.listxattr(&ctx, f, 3).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ERANGE));
        // With ACLs on, it is listed.
        let acl_fs = ExportFs::new(xattr_backend(dir.path()), acl_policy(AclMode::Always));
        acl_fs.init(ACL_OPTIONS).unwrap();
        let f = acl_fs.lookup(&ctx, ROOT_ID, c"f").unwrap().inode;
        let listed = match acl_fs.listxattr(&ctx, f, 4096) {
            Ok(ListxattrReply::Names(v)) => v,
            _ => panic!("listxattr"),
        };
        assert!(listed.windows(23).any(|w| w == b"system.posix_acl_access"));
    }

    #[test]
    fn with_acls_a_default_acl_replaces_the_umask_and_kill_sgid_clears_setgid() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("inherit")).unwrap();
        std::fs::create_dir(dir.path().join("plain")).unwrap();
        let fs = ExportFs::new(xattr_backend(dir.path()), acl_policy(AclMode::Always));
        fs.init(ACL_OPTIONS).unwrap();
        let ctx = Context::default();
        let inherit = fs.lookup(&ctx, ROOT_ID, c"inherit").unwrap().inode;
        let plain = fs.lookup(&ctx, ROOT_ID, c"plain").unwrap().inode;
        let default_acl = acl_xattr(&[
            (USER_OBJ, 7, NO_ID),
            (USER, 6, 1234),
            (GROUP_OBJ, 5, NO_ID),
            (MASK, 7, NO_ID),
            (OTHER, 5, NO_ID),
        ]);
        fs.setxattr(&ctx, inherit, c"system.posix_acl_default", &default_acl, 0)
            .unwrap();

        // DONT_MASK: the guest sends mode 0666 and its umask 022 apart.
        let args = CreateIn {
            flags: libc::O_RDWR as u32,
            mode: libc::S_IFREG | 0o666,
            umask: 0o022,
            fuse_flags: 0,
        };
        fs.create(&ctx, plain, c"f", args).unwrap();
        assert_eq!(host_mode(&dir.path().join("plain/f")), 0o644);
        fs.create(&ctx, inherit, c"f", args).unwrap();
        // The ACL's mask (rw- after the mode) is the group bits; the umask is not applied.
        assert_eq!(host_mode(&dir.path().join("inherit/f")), 0o664);
        let got = fs
            .getxattr(&ctx, inherit, c"system.posix_acl_default", 4096)
            .unwrap();
        assert!(matches!(got, GetxattrReply::Value(v) if v == default_acl));
        fs.mkdir(&ctx, plain, c"d", 0o777, 0o027).unwrap();
        assert_eq!(host_mode(&dir.path().join("plain/d")), 0o750);
        fs.mkdir(&ctx, inherit, c"d", 0o777, 0o027).unwrap();
        assert_eq!(host_mode(&dir.path().join("inherit/d")), 0o775);

        // Setting an access ACL with SETXATTR_ACL_KILL_SGID clears setgid; without, it stays.
        let access = acl_xattr(&[
            (USER_OBJ, 6, NO_ID),
            (USER, 6, 1234),
            (GROUP_OBJ, 4, NO_ID),
            (MASK, 6, NO_ID),
            (OTHER, 4, NO_ID),
        ]);
        for (name, flags, kept) in [("keep", 0, true), ("kill", SETXATTR_ACL_KILL_SGID, false)] {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o2674)).unwrap();
            let cname = CString::new(name).unwrap();
            let f = fs.lookup(&ctx, ROOT_ID, &cname).unwrap().inode;
            fs.setxattr_ext(&ctx, f, c"system.posix_acl_access", &access, 0, flags)
                .unwrap();
            let mode = host_mode(&path);
            assert_eq!(mode & libc::S_ISGID != 0, kept, "{name}: {mode:o}");
            // The group bits are the ACL's mask either way.
            assert_eq!(mode & 0o070, 0o060, "{name}: {mode:o}");
        }
    }

    fn id_policy(uid: &[&str], gid: &[&str]) -> ExportPolicy {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        ExportPolicy {
            ids: IdMaps {
                uid: crate::fuse::id_map::IdTranslation::from_flags(&owned(uid), &[]).unwrap(),
                gid: crate::fuse::id_map::IdTranslation::from_flags(&owned(gid), &[]).unwrap(),
            },
            ..Default::default()
        }
    }

    fn host_owner(path: &std::path::Path) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path).unwrap();
        (m.uid(), m.gid())
    }

    #[test]
    fn ids_are_translated_in_credentials_chown_and_every_reply() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(dir.path().join("hostfile"), b"x").unwrap();
        std::os::unix::fs::chown(dir.path().join("hostfile"), Some(1005), Some(2007)).unwrap();
        let policy = id_policy(&["map:0:1000:10", "forbid-guest:50:1"], &["map:0:2000:10"]);
        let fs = ExportFs::new(backend(dir.path()), policy);
        fs.init(FsOptions::DO_READDIRPLUS).unwrap();
        let root = Context {
            uid: 0,
            gid: 0,
            pid: 1,
        };

        let hostfile = fs.lookup(&root, ROOT_ID, c"hostfile").unwrap();
        assert_eq!((hostfile.attr.st_uid, hostfile.attr.st_gid), (5, 7));
        let (attr, _) = fs.getattr(&root, hostfile.inode, None).unwrap();
        assert_eq!((attr.st_uid, attr.st_gid), (5, 7));

        let (entry, ..) = fs
            .create(&root, ROOT_ID, c"new", create_args(libc::O_RDWR))
            .unwrap();
        assert_eq!(host_owner(&dir.path().join("new")), (1000, 2000));
        assert_eq!((entry.attr.st_uid, entry.attr.st_gid), (0, 0));
        let d = fs.mkdir(&root, ROOT_ID, c"d", 0o755, 0).unwrap();
        assert_eq!(host_owner(&dir.path().join("d")), (1000, 2000));
        assert_eq!((d.attr.st_uid, d.attr.st_gid), (0, 0));
        let s = fs.symlink(&root, c"new", ROOT_ID, c"s").unwrap();
        assert_eq!(host_owner(&dir.path().join("s")), (1000, 2000));
        assert_eq!(s.attr.st_uid, 0);
        let n = fs
            .mknod(&root, ROOT_ID, c"fifo", libc::S_IFIFO | 0o600, 0, 0)
            .unwrap();
        assert_eq!(host_owner(&dir.path().join("fifo")), (1000, 2000));
        assert_eq!(n.attr.st_gid, 0);
        let l = fs.link(&root, hostfile.inode, ROOT_ID, c"hard").unwrap();
        assert_eq!((l.attr.st_uid, l.attr.st_gid), (5, 7));

        // chown to guest 3:4 is host 1003:2004, shown back as 3:4.
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut attr: stat64 = unsafe { std::mem::zeroed() };
        attr.st_uid = 3;
        attr.st_gid = 4;
        let (got, _) = fs
            .setattr(
                &root,
                entry.inode,
                attr,
                None,
                SetattrValid::UID | SetattrValid::GID,
            )
            .unwrap();
        assert_eq!(host_owner(&dir.path().join("new")), (1003, 2004));
        assert_eq!((got.st_uid, got.st_gid), (3, 4));
        // A forbidden guest ID can neither be given a file nor create one.
        attr.st_uid = 50;
        let e = fs
            .setattr(&root, entry.inode, attr, None, SetattrValid::UID)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert_eq!(host_owner(&dir.path().join("new")), (1003, 2004));
        let forbidden = Context { uid: 50, ..root };
        let e = fs.mkdir(&forbidden, ROOT_ID, c"no", 0o755, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        assert!(!dir.path().join("no").exists());

        // READDIRPLUS entries carry guest IDs too.
        let (h, _) = fs.opendir(&root, ROOT_ID, 0).unwrap();
        let mut seen = HashMap::new();
        fs.readdirplus(
            &root,
            ROOT_ID,
            h.unwrap(),
            65536,
            0,
            &mut |dirent, entry| {
                let name = String::from_utf8_lossy(dirent.name).into_owned();
                seen.insert(name, (entry.attr.st_uid, entry.attr.st_gid));
                Ok(1)
            },
        )
        .unwrap();
        assert_eq!(seen.get("hostfile"), Some(&(5, 7)), "{seen:?}");
        assert_eq!(seen.get("new"), Some(&(3, 4)), "{seen:?}");
        assert_eq!(seen.get("d"), Some(&(0, 0)), "{seen:?}");
    }
}
