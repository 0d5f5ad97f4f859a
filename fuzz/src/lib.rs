//! Shared harness of the fuzz targets: a temporary share served in-process through the
//! daemon's own request path (guard -> Server -> ExportFs -> PassthroughFs), guest memory with
//! a split virtqueue in it, FUSE request encoders, and the invariants every target checks.
//!
//! It owns nothing of the daemon's behaviour: it only builds inputs the way a guest would and
//! checks what came back. It must never weaken a check of the daemon to make a target pass.

use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use virtiofsd_kr::accounting::limiter::Limits;
use virtiofsd_kr::accounting::meter::Totals;
use virtiofsd_kr::accounting::{Accounting, Labels};
use virtiofsd_kr::backend::passthrough::{self, HostFs, InodeFileHandles, PassthroughOptions};
use virtiofsd_kr::backend::CacheMode;
use virtiofsd_kr::fuse::export::{ExportFs, ExportPolicy};
use virtiofsd_kr::fuse::guard::RequestGuard;
use virtiofsd_kr::vhost::device::RequestCore;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

pub type Mem = GuestMemoryMmap<()>;
pub type Chain = DescriptorChain<Arc<Mem>>;

/// Guest memory size: rings in the first pages, request and reply buffers above.
pub const MEM_SIZE: usize = 8 << 20;
/// Descriptor table, available ring, used ring and one indirect table.
pub const DESC_TABLE: u64 = 0x0;
pub const AVAIL_RING: u64 = 0x1_0000;
pub const USED_RING: u64 = 0x2_0000;
pub const INDIRECT_TABLE: u64 = 0x3_0000;
/// Readable buffers start here, writable buffers at [`WRITABLE_BASE`].
pub const READABLE_BASE: u64 = 0x10_0000;
pub const WRITABLE_BASE: u64 = 0x40_0000;
/// The most reply space a target offers (1 MiB READ plus header, with room to spare).
pub const MAX_WRITABLE: u64 = (MEM_SIZE as u64) - WRITABLE_BASE;
pub const QUEUE_SIZE: u16 = 256;

pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// The largest FALLOCATE / COPY_FILE_RANGE length a target lets through: the share is on the
/// host's disk, and a guest that fills its own volume is a quota matter, not a defect.
pub const MAX_ALLOC_LEN: u64 = 1 << 20;

pub fn new_memory() -> Arc<Mem> {
    Arc::new(
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)])
            .expect("guest memory for the fuzz harness"),
    )
}

/// One split-ring descriptor as the guest writes it.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..14].copy_from_slice(&self.flags.to_le_bytes());
        b[14..16].copy_from_slice(&self.next.to_le_bytes());
        b
    }
}

/// Writes `descs` at `table` (index i at table + 16 i).
pub fn write_table(mem: &Mem, table: u64, descs: &[Desc]) {
    for (i, d) in descs.iter().enumerate() {
        mem.write_slice(&d.bytes(), GuestAddress(table + 16 * i as u64))
            .expect("descriptor table inside guest memory");
    }
}

/// A queue over the harness's rings, as the device sees it after the frontend set it up.
pub fn new_queue(size: u16, event_idx: bool) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).expect("queue");
    q.set_size(size);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

/// Publishes `heads` in the available ring (from index 0) and sets its index.
pub fn publish(mem: &Mem, heads: &[u16], avail_idx: u16) {
    mem.write_obj(0u16, GuestAddress(AVAIL_RING)).unwrap();
    for (i, h) in heads.iter().enumerate() {
        mem.write_obj(*h, GuestAddress(AVAIL_RING + 4 + 2 * i as u64))
            .unwrap();
    }
    mem.write_obj(avail_idx, GuestAddress(AVAIL_RING + 2))
        .unwrap();
}

/// How a request's bytes are laid over descriptors.
#[derive(Debug, Clone, Default)]
pub struct ChainShape {
    /// Lengths of the readable descriptors; the last one takes what is left of the request
    /// (and any extra length given here beyond the request is zero padding).
    pub readable: Vec<u32>,
    /// Gap (in bytes) left between readable buffers.
    pub gap: u32,
    /// Lengths of the writable descriptors (laid out back to back from WRITABLE_BASE).
    pub writable: Vec<u32>,
    /// Put the chain in an indirect table.
    pub indirect: bool,
}

impl ChainShape {
    /// One readable descriptor with the request, one writable of `reply` bytes.
    pub fn simple(reply: u32) -> Self {
        ChainShape {
            readable: vec![],
            gap: 0,
            writable: vec![reply],
            indirect: false,
        }
    }

    pub fn writable_total(&self) -> u64 {
        self.writable.iter().map(|l| u64::from(*l)).sum()
    }
}

/// Lays `request` out in guest memory as `shape` says, publishes it as the only available
/// chain, zeroes the reply space and returns the chain the device pops.
pub fn build_chain(mem: &Arc<Mem>, request: &[u8], shape: &ChainShape) -> Chain {
    let mut descs = Vec::new();
    let mut addr = READABLE_BASE;
    let mut rest = request;
    let n = shape.readable.len().max(1);
    for i in 0..n {
        let want = if i + 1 == n {
            rest.len()
                .max(shape.readable.get(i).copied().unwrap_or(0) as usize)
        } else {
            (shape.readable[i] as usize).min(rest.len())
        };
        let take = want.min(rest.len());
        mem.write_slice(&rest[..take], GuestAddress(addr)).unwrap();
        if want > take {
            let zeros = vec![0u8; want - take];
            mem.write_slice(&zeros, GuestAddress(addr + take as u64))
                .unwrap();
        }
        rest = &rest[take..];
        descs.push(Desc {
            addr,
            len: want as u32,
            flags: 0,
            next: 0,
        });
        addr += want as u64 + u64::from(shape.gap);
        assert!(addr < WRITABLE_BASE, "readable part beyond its window");
    }
    let mut waddr = WRITABLE_BASE;
    for len in &shape.writable {
        let end = waddr + u64::from(*len);
        assert!(end <= MEM_SIZE as u64, "writable part beyond guest memory");
        let zeros = vec![0u8; *len as usize];
        mem.write_slice(&zeros, GuestAddress(waddr)).unwrap();
        descs.push(Desc {
            addr: waddr,
            len: *len,
            flags: VRING_DESC_F_WRITE,
            next: 0,
        });
        waddr = end;
    }
    let count = descs.len();
    for (i, d) in descs.iter_mut().enumerate() {
        if i + 1 < count {
            d.flags |= VRING_DESC_F_NEXT;
            d.next = i as u16 + 1;
        }
    }
    if shape.indirect {
        write_table(mem, INDIRECT_TABLE, &descs);
        write_table(
            mem,
            DESC_TABLE,
            &[Desc {
                addr: INDIRECT_TABLE,
                len: 16 * count as u32,
                flags: VRING_DESC_F_INDIRECT,
                next: 0,
            }],
        );
    } else {
        write_table(mem, DESC_TABLE, &descs);
    }
    publish(mem, &[0], 1);
    let mut q = new_queue(QUEUE_SIZE, false);
    let chain = q
        .iter(mem.clone())
        .expect("well-formed rings")
        .next()
        .expect("the chain just published");
    chain
}

/// The reply the device wrote for a request: its used length and the bytes of the writable
/// area (contiguous in the harness's layout).
pub fn read_reply(mem: &Mem, used: u32) -> Vec<u8> {
    let mut out = vec![0u8; used as usize];
    mem.read_slice(&mut out, GuestAddress(WRITABLE_BASE))
        .unwrap();
    out
}

/// Checks a reply is well formed: its header's length is the used length, its unique is the
/// request's, its error a negated errno (and then the reply is a bare header). FORGET and
/// BATCH_FORGET get no reply at all.
pub fn check_reply(request: &[u8], used: u32, writable: u64, reply: &[u8]) {
    assert!(
        u64::from(used) <= writable,
        "used length {used} beyond the {writable} writable bytes offered"
    );
    let opcode = request
        .get(4..8)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()));
    if matches!(opcode, Some(2 | 42)) {
        assert_eq!(used, 0, "FORGET/BATCH_FORGET got a reply");
        return;
    }
    if used == 0 {
        return; // dropped: no room for a reply, or shorter than a header
    }
    assert!(
        used >= 16,
        "reply of {used} bytes, shorter than fuse_out_header"
    );
    let len = u32::from_le_bytes(reply[0..4].try_into().unwrap());
    let error = i32::from_le_bytes(reply[4..8].try_into().unwrap());
    let unique = u64::from_le_bytes(reply[8..16].try_into().unwrap());
    assert_eq!(
        len, used,
        "reply header length differs from the used length"
    );
    if let Some(u) = request.get(8..16) {
        assert_eq!(
            unique,
            u64::from_le_bytes(u.try_into().unwrap()),
            "reply to another request"
        );
    }
    assert!(
        (-4095..=0).contains(&error),
        "reply error {error} is not a negated errno"
    );
    if error != 0 {
        assert_eq!(used, 16, "error reply carries a body");
    }
}

/// A FUSE request: header (with `len` filled in) and body.
pub fn request(opcode: u32, unique: u64, nodeid: u64, body: &[u8]) -> Vec<u8> {
    let len = 40 + body.len();
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(&(len as u32).to_le_bytes());
    r.extend_from_slice(&opcode.to_le_bytes());
    r.extend_from_slice(&unique.to_le_bytes());
    r.extend_from_slice(&nodeid.to_le_bytes());
    r.extend_from_slice(&0u32.to_le_bytes()); // uid
    r.extend_from_slice(&0u32.to_le_bytes()); // gid
    r.extend_from_slice(&1u32.to_le_bytes()); // pid
    r.extend_from_slice(&0u16.to_le_bytes()); // total_extlen
    r.extend_from_slice(&0u16.to_le_bytes()); // padding
    r.extend_from_slice(body);
    r
}

/// Little-endian body builder.
#[derive(Default)]
pub struct Body(pub Vec<u8>);

impl Body {
    pub fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// A name and its terminating NUL.
    pub fn name(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self.0.push(0);
        self
    }
}

/// INIT body: protocol 7.38, the flags a Linux 6.x guest offers (without SETXATTR_EXT).
pub fn init_body() -> Vec<u8> {
    // ASYNC_READ|POSIX_LOCKS|ATOMIC_O_TRUNC|EXPORT_SUPPORT|BIG_WRITES|DONT_MASK|SPLICE_*|
    // FLOCK_LOCKS|AUTO_INVAL_DATA|DO_READDIRPLUS|READDIRPLUS_AUTO|ASYNC_DIO|WRITEBACK_CACHE|
    // PARALLEL_DIROPS|HANDLE_KILLPRIV|POSIX_ACL|MAX_PAGES|CACHE_SYMLINKS|EXPLICIT_INVAL_DATA|
    // MAP_ALIGNMENT|INIT_EXT
    let flags: u32 = 0x7fff_ffff & !(1 << 29);
    Body::default()
        .u32(7)
        .u32(38)
        .u32(0x2_0000)
        .u32(flags)
        .u32(0) // flags2
        .bytes(&[0u8; 44])
        .0
}

/// Clamps the lengths a request could use to fill the host's disk ([`MAX_ALLOC_LEN`]).
pub fn clamp_allocations(request: &mut [u8]) {
    let opcode = match request.get(4..8) {
        Some(b) => u32::from_le_bytes(b.try_into().unwrap()),
        None => return,
    };
    // FALLOCATE: fuse_fallocate_in.length at body offset 16; COPY_FILE_RANGE: len at 40.
    let field = match opcode {
        43 => 40 + 16,
        47 => 40 + 40,
        _ => return,
    };
    if let Some(b) = request.get_mut(field..field + 8) {
        let v = u64::from_le_bytes((&*b).try_into().unwrap());
        if v > MAX_ALLOC_LEN {
            b.copy_from_slice(&(v % MAX_ALLOC_LEN).to_le_bytes());
        }
    }
}

/// What a directory tree looks like: every entry's path, type, size and mode.
fn snapshot(dir: &Path, skip: &Path) -> BTreeMap<PathBuf, (u32, u64, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if d == skip {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p == skip {
                continue; // the share itself: its link count follows what the guest creates
            }
            if let Ok(m) = std::fs::symlink_metadata(&p) {
                out.insert(p.clone(), (m.mode(), m.size(), m.nlink() as u32));
                if m.is_dir() {
                    stack.push(p);
                }
            }
        }
    }
    out
}

/// Number of descriptors this process has open, after a first share has been built and
/// dropped (so descriptors opened once per process, not per share, are already counted).
pub fn open_fds() -> usize {
    static WARM: std::sync::Once = std::sync::Once::new();
    WARM.call_once(|| {
        let mut share = Share::new(new_memory());
        share.init();
        drop(share);
    });
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// The descriptors this process has open (for a leak's message).
pub fn fd_targets() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .map(|e| {
                    std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A temporary share beside a canary directory, served by the daemon's request path.
///
/// Layout: `BASE/share/{file (8 KiB), dir/, dir/inner, up -> ../canary/secret, abs -> /etc,
/// fifo}` and `BASE/canary/secret`. Whatever the guest sends, nothing may change outside
/// `BASE/share` ([`Share::check_escape`]).
pub struct Share {
    pub core: RequestCore<ExportFs<HostFs>>,
    pub mem: Arc<Mem>,
    pub dir: ShareDir,
    unique: u64,
}

/// The temporary directories of a share and what lies outside the share at the start.
pub struct ShareDir {
    base: tempfile::TempDir,
    outside_before: BTreeMap<PathBuf, (u32, u64, u32)>,
}

/// Where the harness creates its temporary shares (`FUZZ_SHARE_DIR`, default the system
/// temporary directory).
fn share_parent() -> PathBuf {
    std::env::var_os("FUZZ_SHARE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

impl ShareDir {
    pub fn new() -> ShareDir {
        let base = tempfile::Builder::new()
            .prefix("vkr-fuzz-")
            .tempdir_in(share_parent())
            .expect("temporary directory");
        let share = base.path().join("share");
        let canary = base.path().join("canary");
        std::fs::create_dir(&share).unwrap();
        std::fs::create_dir(&canary).unwrap();
        std::fs::write(canary.join("secret"), b"canary").unwrap();
        std::fs::write(share.join("file"), vec![0x5a; 8192]).unwrap();
        std::fs::create_dir(share.join("dir")).unwrap();
        std::fs::write(share.join("dir/inner"), b"inner").unwrap();
        symlink("../canary/secret", share.join("up")).unwrap();
        symlink("/etc", share.join("abs")).unwrap();
        mkfifo(&share.join("fifo"));
        let outside_before = snapshot(base.path(), &share);
        ShareDir {
            base,
            outside_before,
        }
    }

    pub fn path(&self) -> PathBuf {
        self.base.path().join("share")
    }

    /// The daemon's request path over this share, as `virtiofsd-kr` builds it for a host
    /// directory (file handles preferred, xattrs on, accounting on), without the sandbox: so
    /// an escape here is an escape of the backend's own checks.
    pub fn request_core(&self) -> RequestCore<ExportFs<HostFs>> {
        let opts = PassthroughOptions {
            cache: CacheMode::Auto,
            xattr: true,
            writeback: false,
            allow_direct_io: false,
            inode_file_handles: InodeFileHandles::Prefer,
        };
        let fs = passthrough::open(&opts, &self.path(), None).expect("passthrough backend");
        let export = ExportFs::new(
            fs,
            ExportPolicy {
                announce_submounts: true,
                xattr: true,
                ..ExportPolicy::default()
            },
        );
        let acct = test_accounting();
        RequestCore::new(export, RequestGuard::new(false), None).with_accounting(acct)
    }

    /// Nothing outside the share changed: the canary directory (and its secret's content)
    /// and no new entry beside the share.
    pub fn check_escape(&self) {
        let now = snapshot(self.base.path(), &self.path());
        assert_eq!(
            now, self.outside_before,
            "something changed outside the share"
        );
        assert_eq!(
            std::fs::read(self.base.path().join("canary/secret"))
                .ok()
                .as_deref(),
            Some(&b"canary"[..]),
            "the canary's content changed"
        );
    }

    /// Entries under the share, to bound how much a long session may build.
    pub fn share_entries(&self) -> usize {
        snapshot(&self.path(), Path::new("")).len()
    }
}

impl Default for ShareDir {
    fn default() -> Self {
        ShareDir::new()
    }
}

impl Share {
    pub fn new(mem: Arc<Mem>) -> Share {
        let dir = ShareDir::new();
        let core = dir.request_core();
        Share {
            core,
            mem,
            dir,
            unique: 0,
        }
    }

    /// Serves one request laid out as `shape`; checks the reply; returns it.
    pub fn serve(&mut self, request: &[u8], shape: &ChainShape) -> Vec<u8> {
        let chain = build_chain(&self.mem, request, shape);
        let used = self.core.serve_chain(&chain);
        let reply = read_reply(&self.mem, used);
        check_reply(request, used, shape.writable_total(), &reply);
        reply
    }

    /// Serves a request built by [`request`] with the next unique, in a simple chain.
    pub fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8], reply_len: u32) -> Vec<u8> {
        self.unique += 1;
        let r = request(opcode, self.unique, nodeid, body);
        self.serve(&r, &ChainShape::simple(reply_len))
    }

    pub fn init(&mut self) {
        let reply = self.call(26, 0, &init_body(), 4096);
        assert_eq!(error_of(&reply), 0, "INIT failed");
    }

    /// LOOKUP of `name` in `parent`: the node id, if found.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let reply = self.call(1, parent, &Body::default().name(name).0, 4096);
        (error_of(&reply) == 0)
            .then(|| u64_at(&reply, 16))
            .flatten()
    }

    /// OPEN or OPENDIR of `node`: the handle, if opened.
    pub fn open(&mut self, opcode: u32, node: u64, flags: u32) -> Option<u64> {
        let reply = self.call(opcode, node, &Body::default().u32(flags).u32(0).0, 4096);
        (error_of(&reply) == 0)
            .then(|| u64_at(&reply, 16))
            .flatten()
    }
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo");
}

/// The labels every target's meter and journal use.
pub fn test_labels() -> Labels {
    Labels {
        tenant: "t".into(),
        volume: "v".into(),
        pod: "p".into(),
        traffic_class: "internal".into(),
        host: "h".into(),
    }
}

/// The meter every target that needs one uses: [`test_labels`], no limits, zero totals.
pub fn test_accounting() -> Arc<Accounting> {
    Arc::new(Accounting::new(
        test_labels(),
        Limits::default(),
        Totals::default(),
        None,
    ))
}

pub fn error_of(reply: &[u8]) -> i32 {
    reply
        .get(4..8)
        .map_or(0, |b| i32::from_le_bytes(b.try_into().unwrap()))
}

/// Reads a little-endian u64 at `off` of a reply, if it is there.
pub fn u64_at(reply: &[u8], off: usize) -> Option<u64> {
    reply
        .get(off..off + 8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
}

/// A byte cursor for the targets' own input formats: every read succeeds (zeros once the
/// input runs out), so any input decodes.
pub struct Cursor<'a> {
    data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Cursor { data }
    }
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        head
    }
    fn fixed<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let b = self.bytes(N);
        out[..b.len()].copy_from_slice(b);
        out
    }
    pub fn u8(&mut self) -> u8 {
        self.fixed::<1>()[0]
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.fixed())
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.fixed())
    }
    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.fixed())
    }
    /// A length-prefixed (one byte) slice.
    pub fn short_bytes(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.bytes(n)
    }
    pub fn rest(&mut self) -> &'a [u8] {
        self.bytes(self.data.len())
    }
}
