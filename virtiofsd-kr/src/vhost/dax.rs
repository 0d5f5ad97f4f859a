//! DAX window: FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING turned into vhost-user `SHMEM_MAP` /
//! `SHMEM_UNMAP` requests on the backend channel, so the guest maps host page cache directly.
//!
//! Owns the window's geometry and every check on a mapping request (inside the window,
//! page-aligned, a sane length, known flags), the DAX meters (bytes mapped, map and unmap
//! operations), and the record of every live mapping: QEMU refuses a mapping over a live one
//! and an unmap that does not match a mapping exactly, and the guest sends no unmaps at
//! umount, so the daemon unmaps what is live itself (a SETUPMAPPING over a live range, "remove
//! all", a new INIT, DESTROY). A mapping that reaches past the end of its file (the guest maps
//! 2 MiB chunks; QEMU refuses to map past EOF) is made of the file's whole pages plus a
//! padding taken from a memfd the size of the window: the file's last partial page copied in,
//! zeros after it; what the guest stores there is written back to the file. The protocol
//! feature bit and the shared-memory region id live here and only here. It must not decide whether a file may be mapped writable (that depends on how the
//! file was opened: `export`), and it never maps anything itself: the VMM does, at the
//! offsets this module has checked.
//!
//! Protocol: the daemon announces one shared memory region (`GET_SHMEM_CONFIG`, region id
//! [`DAX_SHMID`]) when the frontend negotiates [`SHMEM_PROTOCOL_FEATURE`]: bit 22, as in the
//! vhost-user specification, QEMU 11.1 and vhost 0.17. vhost 0.16.0 had it at 21 (QEMU's
//! F_GPA_ADDRESSES); the workspace builds against `third_party/vhost`, which carries the fix.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::transport::FsCacheReqHandler;
use tracing::{debug, warn};
use vhost::vhost_user::message::{
    VhostUserMMap, VhostUserMMapFlags, VhostUserProtocolFeatures, VhostUserShMemConfig,
};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};

/// The vhost-user protocol feature that carries shared memory regions: bit 22.
pub const SHMEM_PROTOCOL_FEATURE: VhostUserProtocolFeatures = VhostUserProtocolFeatures::SHMEM;
/// Shared memory region id of the DAX window (the only region this device has).
pub const DAX_SHMID: u8 = 0;
/// Alignment of window offsets, file offsets and lengths: the host page size. Linux guests
/// map in 2 MiB chunks, which satisfies it.
pub const DAX_ALIGNMENT: u64 = 4096;
/// `len` value in a REMOVEMAPPING entry that means "the whole window" (as the guest sends it
/// when it drops every mapping).
pub const REMOVE_ALL: u64 = u64::MAX;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DaxError {
    #[error("DAX window size {0} is not a positive multiple of {DAX_ALIGNMENT}")]
    BadWindowSize(u64),
    #[error("mapping of {len} bytes at window offset {moffset:#x} does not fit the {window:#x}-byte window")]
    OutsideWindow { moffset: u64, len: u64, window: u64 },
    #[error("mapping offset {moffset:#x}, file offset {foffset:#x} or length {len:#x} is not {DAX_ALIGNMENT}-aligned")]
    Misaligned {
        moffset: u64,
        foffset: u64,
        len: u64,
    },
    #[error("mapping length is zero")]
    ZeroLength,
    #[error("unknown mapping flags {0:#x}")]
    UnknownFlags(u64),
    #[error("file offset {foffset:#x} + length {len:#x} overflows")]
    FileRangeOverflow { foffset: u64, len: u64 },
    #[error("the frontend did not open a backend request channel with SHMEM")]
    NoChannel,
    #[error("the frontend refused the mapping: {0}")]
    Frontend(String),
    #[error("the mapped file: {0}")]
    File(String),
}

impl DaxError {
    /// The errno the guest gets for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DaxError::NoChannel => libc::ENOSYS,
            DaxError::Frontend(_) | DaxError::File(_) => libc::EIO,
            _ => libc::EINVAL,
        }
    }
}

impl From<DaxError> for io::Error {
    fn from(e: DaxError) -> Self {
        debug!("DAX request refused: {e}");
        io::Error::from_raw_os_error(e.errno())
    }
}

/// DAX counters of one daemon: what was made available to the guest through the window,
/// which reads and writes through it bypass the FUSE path (and so its byte meters).
#[derive(Debug, Default)]
pub struct DaxMeter {
    pub map_ops: AtomicU64,
    pub mapped_bytes: AtomicU64,
    pub unmap_ops: AtomicU64,
    pub unmapped_bytes: AtomicU64,
    pub refused_ops: AtomicU64,
}

impl crate::accounting::meter::MappedTraffic for DaxWindow {
    fn mapped_traffic(&self) -> crate::accounting::meter::MappedCounts {
        let d = self.meter().snapshot();
        crate::accounting::meter::MappedCounts {
            map_ops: d.map_ops,
            mapped_bytes: d.mapped_bytes,
            unmap_ops: d.unmap_ops,
            unmapped_bytes: d.unmapped_bytes,
        }
    }
}

/// A snapshot of [`DaxMeter`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DaxCounts {
    pub map_ops: u64,
    pub mapped_bytes: u64,
    pub unmap_ops: u64,
    pub unmapped_bytes: u64,
    pub refused_ops: u64,
}

impl DaxMeter {
    pub fn snapshot(&self) -> DaxCounts {
        DaxCounts {
            map_ops: self.map_ops.load(Ordering::Relaxed),
            mapped_bytes: self.mapped_bytes.load(Ordering::Relaxed),
            unmap_ops: self.unmap_ops.load(Ordering::Relaxed),
            unmapped_bytes: self.unmapped_bytes.load(Ordering::Relaxed),
            refused_ops: self.refused_ops.load(Ordering::Relaxed),
        }
    }
}

/// One checked mapping request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    pub moffset: u64,
    pub foffset: u64,
    pub len: u64,
    pub writable: bool,
}

/// One guest mapping the VMM holds: the window range of one SETUPMAPPING and the VMM
/// mappings (`pieces`: window offset, length) it was made of.
struct Live {
    len: u64,
    writable: bool,
    pieces: Vec<(u64, u64)>,
    tail: Option<Tail>,
}

/// The padded end of a mapping that reaches past the end of its file.
struct Tail {
    /// The mapped file (to write the guest's stores back and to map again when it grows).
    file: File,
    foffset: u64,
    /// The file's size when mapped.
    size: u64,
    /// Where the padding starts: in the window (and in the padding memfd), and in the file.
    pad_moffset: u64,
    pad_foffset: u64,
    /// The file's bytes copied into the padding (its last partial page), as last seen.
    copied: Vec<u8>,
}

/// The DAX window of one device and the channel its mappings are sent on.
pub struct DaxWindow {
    size: u64,
    channel: Mutex<Option<Backend>>,
    meter: DaxMeter,
    /// Live mappings by window offset. Held while talking to the VMM, so requests from
    /// several queues see and change one consistent record.
    live: Mutex<BTreeMap<u64, Live>>,
    /// How many live mappings have a padded tail (checked without the lock on every WRITE,
    /// SETATTR, GETATTR...).
    tails: AtomicUsize,
    /// Backing of the paddings: a memfd as large as the window, window offset = memfd offset,
    /// created before the sandbox (memfd_create is not in the seccomp allow-list).
    padding: Option<File>,
}

impl DaxWindow {
    pub fn new(size: u64) -> Result<Self, DaxError> {
        if size == 0 || size % DAX_ALIGNMENT != 0 {
            return Err(DaxError::BadWindowSize(size));
        }
        let padding = match padding_memfd(size) {
            Ok(f) => Some(f),
            Err(e) => {
                warn!("DAX: no padding memfd ({e}); mappings past the end of a file will fail");
                None
            }
        };
        Ok(DaxWindow {
            size,
            channel: Mutex::new(None),
            meter: DaxMeter::default(),
            live: Mutex::new(BTreeMap::new()),
            tails: AtomicUsize::new(0),
            padding,
        })
    }

    /// Live mappings (window offset, length), for tests and logs.
    pub fn live_ranges(&self) -> Vec<(u64, u64)> {
        self.lock_live().iter().map(|(m, l)| (*m, l.len)).collect()
    }

    fn lock_live(&self) -> MutexGuard<'_, BTreeMap<u64, Live>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn meter(&self) -> &DaxMeter {
        &self.meter
    }

    /// The answer to `GET_SHMEM_CONFIG`: one region, the window.
    pub fn shmem_config(&self) -> VhostUserShMemConfig {
        VhostUserShMemConfig::new(1, &[self.size])
    }

    /// Keeps the backend request channel the frontend opened (`SET_BACKEND_REQ_FD`). A new
    /// frontend holds none of the old one's mappings: they are forgotten (the guest's stores
    /// into paddings written back first).
    pub fn set_channel(&self, backend: Backend) {
        let mut live = self.lock_live();
        for (_, l) in std::mem::take(&mut *live) {
            self.forget(l);
        }
        if let Ok(mut slot) = self.channel.lock() {
            *slot = Some(backend);
        }
    }

    /// Checks a SETUPMAPPING request against the window.
    pub fn check_map(
        &self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
    ) -> Result<Mapping, DaxError> {
        let known = SetupmappingFlags::READ | SetupmappingFlags::WRITE;
        let flags = SetupmappingFlags::from_bits(flags).ok_or(DaxError::UnknownFlags(flags))?;
        debug_assert!(known.contains(flags));
        if len == 0 {
            return Err(DaxError::ZeroLength);
        }
        if moffset % DAX_ALIGNMENT != 0 || foffset % DAX_ALIGNMENT != 0 || len % DAX_ALIGNMENT != 0
        {
            return Err(DaxError::Misaligned {
                moffset,
                foffset,
                len,
            });
        }
        self.check_range(moffset, len)?;
        if foffset
            .checked_add(len)
            .map_or(true, |end| end > i64::MAX as u64)
        {
            return Err(DaxError::FileRangeOverflow { foffset, len });
        }
        Ok(Mapping {
            moffset,
            foffset,
            len,
            writable: flags.contains(SetupmappingFlags::WRITE),
        })
    }

    /// Checks a REMOVEMAPPING entry; `REMOVE_ALL` at offset 0 means the whole window.
    pub fn check_unmap(&self, one: &RemovemappingOne) -> Result<(u64, u64), DaxError> {
        if one.len == REMOVE_ALL && one.moffset == 0 {
            return Ok((0, self.size));
        }
        if one.len == 0 {
            return Err(DaxError::ZeroLength);
        }
        if one.moffset % DAX_ALIGNMENT != 0 || one.len % DAX_ALIGNMENT != 0 {
            return Err(DaxError::Misaligned {
                moffset: one.moffset,
                foffset: 0,
                len: one.len,
            });
        }
        self.check_range(one.moffset, one.len)?;
        Ok((one.moffset, one.len))
    }

    fn check_range(&self, moffset: u64, len: u64) -> Result<(), DaxError> {
        match moffset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(DaxError::OutsideWindow {
                moffset,
                len,
                window: self.size,
            }),
        }
    }

    fn with_channel<T>(
        &self,
        f: impl FnOnce(&Backend) -> Result<T, DaxError>,
    ) -> Result<T, DaxError> {
        let slot = self.channel.lock().map_err(|_| DaxError::NoChannel)?;
        f(slot.as_ref().ok_or(DaxError::NoChannel)?)
    }

    /// Asks the VMM to map `len` bytes of `fd` at `fd_offset` to window offset `moffset`.
    fn send_map(
        &self,
        moffset: u64,
        fd_offset: u64,
        len: u64,
        writable: bool,
        fd: BorrowedFd<'_>,
    ) -> Result<(), DaxError> {
        let req = VhostUserMMap {
            shmid: DAX_SHMID,
            fd_offset,
            shm_offset: moffset,
            len,
            flags: if writable {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                VhostUserMMapFlags::empty().bits()
            },
            ..Default::default()
        };
        self.with_channel(|b| {
            b.shmem_map(&req, &fd)
                .map(|_| ())
                .map_err(|e| DaxError::Frontend(e.to_string()))
        })
    }

    /// Asks the VMM to unmap one of its mappings.
    fn send_unmap(&self, moffset: u64, len: u64) -> Result<(), DaxError> {
        let req = VhostUserMMap {
            shmid: DAX_SHMID,
            shm_offset: moffset,
            len,
            ..Default::default()
        };
        self.with_channel(|b| {
            b.shmem_unmap(&req)
                .map(|_| ())
                .map_err(|e| DaxError::Frontend(e.to_string()))
        })
    }

    /// Maps a checked request of `fd`, first unmapping whatever live mapping overlaps its
    /// window range.
    pub fn map(&self, m: Mapping, fd: BorrowedFd<'_>) -> Result<(), DaxError> {
        let mut live = self.lock_live();
        self.evict(&mut live, m.moffset, m.len);
        let entry = self.map_pieces(m, fd)?;
        if entry.tail.is_some() {
            self.tails.fetch_add(1, Ordering::Relaxed);
        }
        live.insert(m.moffset, entry);
        self.meter.map_ops.fetch_add(1, Ordering::Relaxed);
        self.meter.mapped_bytes.fetch_add(m.len, Ordering::Relaxed);
        Ok(())
    }

    /// Sends the VMM mappings for `m`: the file's range, or, when it reaches past the end of
    /// the file, the file's whole pages and a padding (the partial last page copied, zeros).
    fn map_pieces(&self, m: Mapping, fd: BorrowedFd<'_>) -> Result<Live, DaxError> {
        let size = file_size(fd)?;
        let end = m.foffset + m.len;
        if end <= size {
            self.send_map(m.moffset, m.foffset, m.len, m.writable, fd)?;
            return Ok(Live {
                len: m.len,
                writable: m.writable,
                pieces: vec![(m.moffset, m.len)],
                tail: None,
            });
        }
        let padding = self.padding.as_ref().ok_or_else(|| {
            DaxError::File("no padding for a mapping past the end of the file".into())
        })?;
        let whole = size.saturating_sub(m.foffset) / DAX_ALIGNMENT * DAX_ALIGNMENT;
        let whole = whole.min(m.len);
        let (pad_moffset, pad_foffset) = (m.moffset + whole, m.foffset + whole);
        let pad_len = m.len - whole;
        let file = File::from(
            fd.try_clone_to_owned()
                .map_err(|e| DaxError::File(e.to_string()))?,
        );
        // The padding: zeros (a punched hole), then the file's bytes after its last whole page.
        punch_hole(padding, pad_moffset, pad_len)?;
        let mut copied = vec![0u8; size.saturating_sub(pad_foffset).min(pad_len) as usize];
        if !copied.is_empty() {
            file.read_exact_at(&mut copied, pad_foffset)
                .and_then(|()| padding.write_all_at(&copied, pad_moffset))
                .map_err(|e| DaxError::File(e.to_string()))?;
        }
        let mut pieces = Vec::with_capacity(2);
        if whole > 0 {
            self.send_map(m.moffset, m.foffset, whole, m.writable, fd)?;
            pieces.push((m.moffset, whole));
        }
        if let Err(e) = self.send_map(
            pad_moffset,
            pad_moffset,
            pad_len,
            m.writable,
            padding.as_fd(),
        ) {
            for (moffset, len) in pieces {
                let _ = self.send_unmap(moffset, len);
            }
            return Err(e);
        }
        pieces.push((pad_moffset, pad_len));
        Ok(Live {
            len: m.len,
            writable: m.writable,
            pieces,
            tail: Some(Tail {
                file,
                foffset: m.foffset,
                size,
                pad_moffset,
                pad_foffset,
                copied,
            }),
        })
    }

    /// Unmaps every live mapping that overlaps `[moffset, moffset + len)`.
    fn evict(&self, live: &mut BTreeMap<u64, Live>, moffset: u64, len: u64) {
        let end = moffset.saturating_add(len);
        let hit: Vec<u64> = live
            .iter()
            .filter(|(start, l)| **start < end && moffset < *start + l.len)
            .map(|(start, _)| *start)
            .collect();
        for start in hit {
            if let Some(l) = live.remove(&start) {
                self.unmap_live(start, l);
            }
        }
    }

    /// Writes back a live mapping's padding and unmaps its pieces (a VMM that refuses an
    /// unmap is logged: the record goes either way, the VMM holds nothing the daemon must
    /// track).
    fn unmap_live(&self, start: u64, l: Live) {
        for &(moffset, len) in &l.pieces {
            if let Err(e) = self.send_unmap(moffset, len) {
                debug!("DAX: unmapping {moffset:#x}+{len:#x}: {e}");
            }
        }
        self.meter.unmap_ops.fetch_add(1, Ordering::Relaxed);
        self.meter
            .unmapped_bytes
            .fetch_add(l.len, Ordering::Relaxed);
        debug!("DAX: unmapped {start:#x}+{:#x}", l.len);
        self.forget(l);
    }

    /// Drops a mapping's record, writing the guest's stores into its padding back first.
    fn forget(&self, mut l: Live) {
        if let Some(tail) = &mut l.tail {
            if l.writable {
                self.write_back(tail);
            }
            self.tails.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Copies what the guest changed in the file's bytes in a padding back to the file,
    /// never past the file's current end.
    fn write_back(&self, tail: &mut Tail) {
        let Some(padding) = &self.padding else { return };
        if tail.copied.is_empty() {
            return;
        }
        let mut now = vec![0u8; tail.copied.len()];
        if padding.read_exact_at(&mut now, tail.pad_moffset).is_err() || now == tail.copied {
            return;
        }
        let size = file_size(tail.file.as_fd()).unwrap_or(0);
        let n = size.saturating_sub(tail.pad_foffset).min(now.len() as u64) as usize;
        if let Err(e) = tail.file.write_all_at(&now[..n], tail.pad_foffset) {
            warn!("DAX: writing a padded page back: {e}");
            return;
        }
        tail.copied = now;
    }

    /// Unmaps one REMOVEMAPPING range: every live mapping it overlaps (nothing is sent for a
    /// range with no live mapping: QEMU refuses an unmap that matches no mapping).
    pub fn unmap(&self, moffset: u64, len: u64) -> Result<(), DaxError> {
        let mut live = self.lock_live();
        self.evict(&mut live, moffset, len);
        Ok(())
    }

    /// Unmaps every live mapping: at a new INIT and at DESTROY (the guest unmounted without
    /// removing its mappings, and a new mount would map over them).
    pub fn unmap_all(&self) {
        let mut live = self.lock_live();
        for (start, l) in std::mem::take(&mut *live) {
            self.unmap_live(start, l);
        }
    }

    /// After a request that may have changed a file's size or data (WRITE, SETATTR,
    /// FALLOCATE, FSYNC, GETATTR...): paddings of files whose size changed are mapped again
    /// from the file's new size (so data appended through FUSE is seen through the window),
    /// and the guest's stores in the others are written back. Costs nothing without paddings.
    pub fn refresh_tails(&self) {
        if self.tails.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut live = self.lock_live();
        let changed: Vec<u64> = live
            .iter_mut()
            .filter_map(|(start, l)| {
                let writable = l.writable;
                let tail = l.tail.as_mut()?;
                let size = file_size(tail.file.as_fd()).ok()?;
                if size == tail.size {
                    if writable {
                        self.write_back(tail);
                    }
                    None
                } else {
                    Some(*start)
                }
            })
            .collect();
        for start in changed {
            let Some(mut l) = live.remove(&start) else {
                continue;
            };
            let Some(mut tail) = l.tail.take() else {
                continue;
            };
            if l.writable {
                self.write_back(&mut tail);
            }
            self.tails.fetch_sub(1, Ordering::Relaxed);
            for &(moffset, len) in &l.pieces {
                let _ = self.send_unmap(moffset, len);
            }
            let m = Mapping {
                moffset: start,
                foffset: tail.foffset,
                len: l.len,
                writable: l.writable,
            };
            match self.map_pieces(m, tail.file.as_fd()) {
                Ok(entry) => {
                    if entry.tail.is_some() {
                        self.tails.fetch_add(1, Ordering::Relaxed);
                    }
                    live.insert(start, entry);
                }
                Err(e) => warn!("DAX: mapping {start:#x} again after its file changed size: {e}"),
            }
        }
    }

    fn refused(&self, e: DaxError) -> io::Error {
        self.meter.refused_ops.fetch_add(1, Ordering::Relaxed);
        e.into()
    }
}

/// A memfd of `size` bytes (sparse) for paddings.
fn padding_memfd(size: u64) -> io::Result<File> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let fd = memfd_create(c"virtiofsd-kr-dax-padding", MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(io::Error::from)?;
    let file = File::from(fd);
    file.set_len(size)?;
    Ok(file)
}

fn punch_hole(file: &File, offset: u64, len: u64) -> Result<(), DaxError> {
    use nix::fcntl::{fallocate, FallocateFlags};
    fallocate(
        std::os::fd::AsRawFd::as_raw_fd(file),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )
    .map_err(|e| DaxError::File(format!("zeroing the padding: {e}")))
}

fn file_size(fd: BorrowedFd<'_>) -> Result<u64, DaxError> {
    nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd))
        .map(|st| st.st_size.max(0) as u64)
        .map_err(|e| DaxError::File(format!("fstat: {e}")))
}

/// The per-request adapter fuse-backend-rs calls for SETUPMAPPING / REMOVEMAPPING.
pub struct DaxRequest {
    pub window: Arc<DaxWindow>,
}

impl FsCacheReqHandler for DaxRequest {
    fn map(
        &mut self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
        fd: RawFd,
    ) -> io::Result<()> {
        let mapping = self
            .window
            .check_map(foffset, moffset, len, flags)
            .map_err(|e| self.window.refused(e))?;
        // SAFETY: fuse-backend-rs passes the descriptor of a file it holds open for the whole
        // call; it is only borrowed until `map` returns.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        self.window
            .map(mapping, fd)
            .map_err(|e| self.window.refused(e))
    }

    fn unmap(&mut self, requests: Vec<RemovemappingOne>) -> io::Result<()> {
        // Check everything first, so a bad entry changes nothing (the check is pure
        // arithmetic, so repeating it below cannot fail).
        for one in &requests {
            self.window
                .check_unmap(one)
                .map_err(|e| self.window.refused(e))?;
        }
        for one in &requests {
            if one.len == REMOVE_ALL && one.moffset == 0 {
                self.window.unmap_all();
                continue;
            }
            let (moffset, len) = self
                .window
                .check_unmap(one)
                .map_err(|e| self.window.refused(e))?;
            self.window
                .unmap(moffset, len)
                .map_err(|e| self.window.refused(e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn window() -> DaxWindow {
        DaxWindow::new(64 * MIB).unwrap()
    }

    #[test]
    fn shmem_is_bit_22_and_bit_21_is_not_it() {
        // QEMU 11.1 reads bit 21 as F_GPA_ADDRESSES: offering it would make QEMU send guest
        // physical addresses and never ask for the window (third_party/README.md).
        assert_eq!(SHMEM_PROTOCOL_FEATURE.bits(), 1 << 22);
        assert_eq!(VhostUserProtocolFeatures::from_bits(1 << 21), None);
    }

    #[test]
    fn window_size_must_be_page_multiple() {
        assert!(DaxWindow::new(0).is_err());
        assert!(DaxWindow::new(4095).is_err());
        assert_eq!(window().shmem_config().nregions, 1);
    }

    #[test]
    fn mappings_inside_the_window_pass() {
        let w = window();
        let read = SetupmappingFlags::READ.bits();
        let rw = (SetupmappingFlags::READ | SetupmappingFlags::WRITE).bits();
        let m = w.check_map(0, 0, 2 * MIB, read).unwrap();
        assert!(!m.writable);
        let m = w.check_map(4 * MIB, 62 * MIB, 2 * MIB, rw).unwrap();
        assert!(m.writable);
        assert_eq!(m.moffset + m.len, 64 * MIB);
    }

    #[test]
    fn bad_mappings_are_refused() {
        let w = window();
        let read = SetupmappingFlags::READ.bits();
        assert!(matches!(
            w.check_map(0, 63 * MIB, 2 * MIB, read),
            Err(DaxError::OutsideWindow { .. })
        ));
        assert!(matches!(
            w.check_map(0, u64::MAX - 4095, 8192, read),
            Err(DaxError::OutsideWindow { .. })
        ));
        assert!(matches!(
            w.check_map(0, 100, 4096, read),
            Err(DaxError::Misaligned { .. })
        ));
        assert!(matches!(
            w.check_map(1, 0, 4096, read),
            Err(DaxError::Misaligned { .. })
        ));
        assert!(matches!(
            w.check_map(0, 0, 4097, read),
            Err(DaxError::Misaligned { .. })
        ));
        assert_eq!(w.check_map(0, 0, 0, read), Err(DaxError::ZeroLength));
        assert_eq!(
            w.check_map(0, 0, 4096, 0x80),
            Err(DaxError::UnknownFlags(0x80))
        );
        assert!(matches!(
            w.check_map(u64::MAX - 4095, 0, 8192, read),
            Err(DaxError::FileRangeOverflow { .. })
        ));
    }

    #[test]
    fn unmapping_is_checked_and_remove_all_covers_the_window() {
        let w = window();
        let all = RemovemappingOne {
            moffset: 0,
            len: REMOVE_ALL,
        };
        assert_eq!(w.check_unmap(&all), Ok((0, 64 * MIB)));
        let one = RemovemappingOne {
            moffset: 2 * MIB,
            len: 2 * MIB,
        };
        assert_eq!(w.check_unmap(&one), Ok((2 * MIB, 2 * MIB)));
        let outside = RemovemappingOne {
            moffset: 64 * MIB,
            len: 4096,
        };
        assert!(w.check_unmap(&outside).is_err());
        let odd = RemovemappingOne {
            moffset: 1,
            len: 4096,
        };
        assert!(w.check_unmap(&odd).is_err());
    }

    #[test]
    fn requests_without_a_channel_fail_and_count_as_refused() {
        let window = Arc::new(window());
        let mut req = DaxRequest {
            window: window.clone(),
        };
        let err = req
            .map(0, 0, 4096, SetupmappingFlags::READ.bits(), 0)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSYS));
        let err = req
            .map(0, 1, 4096, SetupmappingFlags::READ.bits(), 0)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
        let counts = window.meter().snapshot();
        assert_eq!(counts.refused_ops, 2);
        assert_eq!(counts.map_ops, 0);
        assert_eq!(counts.mapped_bytes, 0);
    }
}
