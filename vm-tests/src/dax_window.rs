//! The VMM side of a DAX window: a reserved address range into which each `SHMEM_MAP`
//! request from the daemon is `mmap`ped, as QEMU or cloud-hypervisor would map it into guest
//! physical memory.
//!
//! Owns the reservation and the bookkeeping of what is mapped where. It checks every request
//! against the window itself (a buggy daemon must not make the test process map outside its
//! window) and records every request so tests can assert what the daemon asked for. Like
//! QEMU 11.1 it refuses a mapping over a live one or past the end of the file, and an unmap
//! that does not match a mapping exactly.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Mutex;

use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags};
use vhost::vhost_user::{HandlerResult, VhostUserFrontendReqHandler};

/// One request received from the daemon, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowRequest {
    Map {
        shm_offset: u64,
        fd_offset: u64,
        len: u64,
        writable: bool,
    },
    Unmap {
        shm_offset: u64,
        len: u64,
    },
}

/// A reserved window that maps what the daemon asks for.
pub struct DaxWindowMapper {
    base: usize,
    size: u64,
    /// shm_offset -> len of live mappings.
    live: Mutex<BTreeMap<u64, u64>>,
    log: Mutex<Vec<WindowRequest>>,
}

impl DaxWindowMapper {
    /// Reserves `size` bytes of address space, inaccessible until mapped.
    pub fn new(size: u64) -> io::Result<Self> {
        let len = usize::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: an anonymous PROT_NONE reservation at an address of the kernel's choosing;
        // it touches no existing mapping and is released in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(DaxWindowMapper {
            base: base as usize,
            size,
            live: Mutex::new(BTreeMap::new()),
            log: Mutex::new(Vec::new()),
        })
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<WindowRequest> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Live mappings (offset -> length).
    pub fn live(&self) -> BTreeMap<u64, u64> {
        self.live.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Copies `len` bytes at window offset `offset`, which must be inside a live mapping.
    pub fn read(&self, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.check_live(offset, len as u64)?;
        let mut out = vec![0u8; len];
        // SAFETY: the range lies inside a live MAP_SHARED mapping of this window (checked
        // above), which stays mapped while the `live` map says so; tests do not unmap
        // concurrently with reads.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.base + offset as usize) as *const u8,
                out.as_mut_ptr(),
                len,
            )
        };
        Ok(out)
    }

    /// Writes `bytes` at window offset `offset`, which must be inside a live writable mapping.
    pub fn write(&self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        self.check_live(offset, bytes.len() as u64)?;
        // SAFETY: as in `read`; the mapping was made with PROT_WRITE only when the daemon said
        // it is writable, otherwise this faults, which the caller asked for.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.base + offset as usize) as *mut u8,
                bytes.len(),
            )
        };
        Ok(())
    }

    fn check_live(&self, offset: u64, len: u64) -> io::Result<()> {
        let live = self.live.lock().map_err(|_| io::Error::other("poisoned"))?;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // Walk contiguous mappings from the one containing `offset` until `end` is covered.
        let mut reached = match live.range(..=offset).next_back() {
            Some((start, l)) if start + l > offset => start + l,
            _ => offset,
        };
        while reached < end {
            match live.get(&reached) {
                Some(l) => reached += l,
                None => break,
            }
        }
        if reached >= end {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "window range {offset:#x}+{len:#x} is not mapped"
            )))
        }
    }

    fn in_window(&self, offset: u64, len: u64) -> bool {
        len > 0 && offset.checked_add(len).is_some_and(|end| end <= self.size)
    }

    fn record(&self, r: WindowRequest) {
        if let Ok(mut log) = self.log.lock() {
            log.push(r);
        }
    }
}

impl VhostUserFrontendReqHandler for DaxWindowMapper {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        let (shm_offset, fd_offset, len, flags) =
            (req.shm_offset, req.fd_offset, req.len, req.flags);
        let writable = flags & VhostUserMMapFlags::WRITABLE.bits() != 0;
        self.record(WindowRequest::Map {
            shm_offset,
            fd_offset,
            len,
            writable,
        });
        if req.shmid != 0 || !self.in_window(shm_offset, len) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // As QEMU 11.1 does: no mapping over a live one, none past the end of the file.
        let overlaps = self.live.lock().is_ok_and(|live| {
            live.iter()
                .any(|(start, l)| *start < shm_offset + len && shm_offset < start + l)
        });
        if overlaps {
            return Err(io::Error::other("VIRTIO Shared Memory mapping overlap"));
        }
        // SAFETY: `libc::stat` is plain old data; all zeroes is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat on the descriptor the daemon sent, valid for this call; `st` is a
        // valid out pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if st.st_size > 0 && (st.st_size as u64) < fd_offset.saturating_add(len) {
            return Err(io::Error::other(format!(
                "backing store size {:#x} does not match 'size' option {len:#x}",
                st.st_size
            )));
        }
        let prot = libc::PROT_READ | if writable { libc::PROT_WRITE } else { 0 };
        // SAFETY: MAP_FIXED replaces pages only inside this object's own reservation (checked
        // by `in_window`); the descriptor is valid for the duration of the call.
        let addr = unsafe {
            libc::mmap(
                (self.base + shm_offset as usize) as *mut libc::c_void,
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                fd_offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if let Ok(mut live) = self.live.lock() {
            live.insert(shm_offset, len);
        }
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        let (shm_offset, len) = (req.shm_offset, req.len);
        self.record(WindowRequest::Unmap { shm_offset, len });
        if req.shmid != 0 || !self.in_window(shm_offset, len) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // As QEMU 11.1 does: an unmap must match a mapping exactly.
        if self
            .live
            .lock()
            .map_or(true, |live| live.get(&shm_offset) != Some(&len))
        {
            return Err(io::Error::other(format!(
                "no mapping at {shm_offset:#x}+{len:#x} to unmap"
            )));
        }
        // SAFETY: puts the reservation back over a range inside this object's own window.
        let addr = unsafe {
            libc::mmap(
                (self.base + shm_offset as usize) as *mut libc::c_void,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        if let Ok(mut live) = self.live.lock() {
            let end = shm_offset + len;
            live.retain(|start, l| *start + *l <= shm_offset || *start >= end);
        }
        Ok(0)
    }
}

impl Drop for DaxWindowMapper {
    fn drop(&mut self) {
        // SAFETY: releases exactly the reservation made in `new`.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.size as usize) };
    }
}
