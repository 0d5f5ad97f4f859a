//! DAX window: FUSE_SETUPMAPPING / FUSE_REMOVEMAPPING turned into vhost-user `SHMEM_MAP` /
//! `SHMEM_UNMAP` requests on the backend channel, so the guest maps host page cache directly.
//!
//! Owns the window's geometry and every check on a mapping request (inside the window,
//! page-aligned, a sane length, known flags) and the DAX meters (bytes mapped, map and unmap
//! operations). The protocol feature bit and the shared-memory region id live here and only
//! here. It must not decide whether a file may be mapped writable (that depends on how the
//! file was opened: `export`), and it never maps anything itself: the VMM does, at the
//! offsets this module has checked.
//!
//! Protocol: the daemon announces one shared memory region (`GET_SHMEM_CONFIG`, region id
//! [`DAX_SHMID`]) when the frontend negotiates [`SHMEM_PROTOCOL_FEATURE`]: bit 22, as in the
//! vhost-user specification, QEMU 11.1 and vhost 0.17. vhost 0.16.0 had it at 21 (QEMU's
//! F_GPA_ADDRESSES); the workspace builds against `third_party/vhost`, which carries the fix.

use std::io;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::transport::FsCacheReqHandler;
use tracing::debug;
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
}

impl DaxError {
    /// The errno the guest gets for this error.
    pub fn errno(&self) -> i32 {
        match self {
            DaxError::NoChannel => libc::ENOSYS,
            DaxError::Frontend(_) => libc::EIO,
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

/// The DAX window of one device and the channel its mappings are sent on.
pub struct DaxWindow {
    size: u64,
    channel: Mutex<Option<Backend>>,
    meter: DaxMeter,
}

impl DaxWindow {
    pub fn new(size: u64) -> Result<Self, DaxError> {
        if size == 0 || size % DAX_ALIGNMENT != 0 {
            return Err(DaxError::BadWindowSize(size));
        }
        Ok(DaxWindow {
            size,
            channel: Mutex::new(None),
            meter: DaxMeter::default(),
        })
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

    /// Keeps the backend request channel the frontend opened (`SET_BACKEND_REQ_FD`).
    pub fn set_channel(&self, backend: Backend) {
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

    /// Sends one checked mapping of `fd` to the frontend.
    pub fn map(&self, m: Mapping, fd: BorrowedFd<'_>) -> Result<(), DaxError> {
        let req = VhostUserMMap {
            shmid: DAX_SHMID,
            fd_offset: m.foffset,
            shm_offset: m.moffset,
            len: m.len,
            flags: if m.writable {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                VhostUserMMapFlags::empty().bits()
            },
            ..Default::default()
        };
        self.with_channel(|b| {
            b.shmem_map(&req, &fd)
                .map_err(|e| DaxError::Frontend(e.to_string()))
        })?;
        self.meter.map_ops.fetch_add(1, Ordering::Relaxed);
        self.meter.mapped_bytes.fetch_add(m.len, Ordering::Relaxed);
        Ok(())
    }

    /// Sends one checked unmapping to the frontend.
    pub fn unmap(&self, moffset: u64, len: u64) -> Result<(), DaxError> {
        let req = VhostUserMMap {
            shmid: DAX_SHMID,
            shm_offset: moffset,
            len,
            ..Default::default()
        };
        self.with_channel(|b| {
            b.shmem_unmap(&req)
                .map_err(|e| DaxError::Frontend(e.to_string()))
        })?;
        self.meter.unmap_ops.fetch_add(1, Ordering::Relaxed);
        self.meter.unmapped_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn refused(&self, e: DaxError) -> io::Error {
        self.meter.refused_ops.fetch_add(1, Ordering::Relaxed);
        e.into()
    }
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
