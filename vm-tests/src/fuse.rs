//! FUSE over the test frontend: building requests and parsing replies.
//!
//! This module owns the FUSE wire format as a guest kernel speaks it (the
//! `fuse_backend_rs::abi::fuse_abi` structs): [`request`] builds the bytes of any request,
//! including deliberately wrong ones, [`FuseReply::parse`] checks and splits a reply, and
//! [`FuseSession`] runs well-formed operations (INIT, LOOKUP, GETATTR, MKDIR, CREATE, OPEN,
//! WRITE, READ, OPENDIR/READDIR, UNLINK, FORGET, RELEASE, STATFS) over a [`TestFrontend`],
//! returning the guest-visible errno on failure. It does not touch virtqueues itself.

use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    AttrOut, CreateIn, Dirent, EntryOut, ForgetIn, FsOptions, GetattrIn, InHeader, InitIn, InitIn2,
    InitOut, Kstatfs, MkdirIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, WriteIn,
    WriteOut, KERNEL_VERSION, ROOT_ID,
};
use vm_memory::ByteValued;

use crate::frontend::{FrontendError, Reply, TestFrontend, HIPRIO_QUEUE, REQUEST_QUEUE};

/// Size of the FUSE request header.
pub const IN_HEADER_LEN: usize = std::mem::size_of::<InHeader>();
/// Size of the FUSE reply header.
pub const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();
/// Writable space offered for replies with a bounded size.
pub const REPLY_SPACE: usize = 4096;
/// The root directory's node id.
pub const ROOT: u64 = ROOT_ID;

/// Errors of FUSE operations over the test frontend.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// The daemon answered with this (positive) errno.
    #[error("daemon replied errno {0} ({msg})", msg = std::io::Error::from_raw_os_error(*.0))]
    Errno(i32),
    /// The chain never came back, or the frontend failed.
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    /// The reply does not follow the FUSE protocol.
    #[error("malformed reply: {0}")]
    Malformed(String),
}

type Result<T> = std::result::Result<T, FuseError>;

/// The FUSE minor version a Linux 6.1 guest speaks.
pub const LINUX_MINOR_VERSION: u32 = 37;

/// The INIT flags a Linux 6.1 virtio-fs guest offers (DAX off).
pub fn linux_init_flags() -> FsOptions {
    FsOptions::ASYNC_READ
        | FsOptions::POSIX_LOCKS
        | FsOptions::ATOMIC_O_TRUNC
        | FsOptions::EXPORT_SUPPORT
        | FsOptions::BIG_WRITES
        | FsOptions::DONT_MASK
        | FsOptions::FLOCK_LOCKS
        | FsOptions::HAS_IOCTL_DIR
        | FsOptions::AUTO_INVAL_DATA
        | FsOptions::DO_READDIRPLUS
        | FsOptions::READDIRPLUS_AUTO
        | FsOptions::ASYNC_DIO
        | FsOptions::WRITEBACK_CACHE
        | FsOptions::ZERO_MESSAGE_OPEN
        | FsOptions::PARALLEL_DIROPS
        | FsOptions::HANDLE_KILLPRIV
        | FsOptions::POSIX_ACL
        | FsOptions::ABORT_ERROR
        | FsOptions::MAX_PAGES
        | FsOptions::CACHE_SYMLINKS
        | FsOptions::ZERO_MESSAGE_OPENDIR
        | FsOptions::EXPLICIT_INVAL_DATA
        | FsOptions::SUBMOUNTS
        | FsOptions::HANDLE_KILLPRIV_V2
        | FsOptions::INIT_EXT
}

/// The body of an INIT request: `InitIn`, plus `InitIn2` when `flags` has `INIT_EXT`.
pub fn init_body(major: u32, minor: u32, flags: FsOptions) -> Vec<u8> {
    let bits = flags.bits();
    let init = InitIn {
        major,
        minor,
        max_readahead: 128 << 10,
        flags: bits as u32,
    };
    let mut body = init.as_slice().to_vec();
    if flags.contains(FsOptions::INIT_EXT) {
        let ext = InitIn2 {
            flags2: (bits >> 32) as u32,
            unused: [0; 11],
        };
        body.extend_from_slice(ext.as_slice());
    }
    body
}

/// Builds a request: an `InHeader` whose `len` is the true total length, then `body` parts.
pub fn request(opcode: u32, unique: u64, nodeid: u64, body: &[&[u8]]) -> Vec<u8> {
    let len = IN_HEADER_LEN + body.iter().map(|b| b.len()).sum::<usize>();
    request_with_len(opcode, unique, nodeid, len as u32, body)
}

/// Like [`request`] but with any `len` in the header, true or not.
pub fn request_with_len(
    opcode: u32,
    unique: u64,
    nodeid: u64,
    len: u32,
    body: &[&[u8]],
) -> Vec<u8> {
    let header = InHeader {
        len,
        opcode,
        unique,
        nodeid,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
        pid: std::process::id(),
        padding: 0,
    };
    let mut bytes = header.as_slice().to_vec();
    for part in body {
        bytes.extend_from_slice(part);
    }
    bytes
}

/// A file name as FUSE sends it: the bytes and a NUL.
pub fn cname(name: &str) -> Vec<u8> {
    let mut v = name.as_bytes().to_vec();
    v.push(0);
    v
}

/// Reads a `T` from the start of `bytes`, if there are enough of them.
pub fn read_struct<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let src = bytes.get(..std::mem::size_of::<T>())?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Some(value)
}

/// A FUSE reply: its header and the body after it.
#[derive(Debug, Clone)]
pub struct FuseReply {
    pub header: OutHeader,
    pub body: Vec<u8>,
}

impl FuseReply {
    /// Splits and checks `bytes` (what the device wrote): the header's `len` must be the number
    /// of bytes written, and an error reply has no body.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let header: OutHeader = read_struct(bytes).ok_or_else(|| {
            FuseError::Malformed(format!(
                "{} bytes is shorter than a reply header",
                bytes.len()
            ))
        })?;
        if header.len as usize != bytes.len() {
            return Err(FuseError::Malformed(format!(
                "header len {} but {} bytes written",
                header.len,
                bytes.len()
            )));
        }
        if header.error > 0 || header.error < -4095 {
            return Err(FuseError::Malformed(format!(
                "error field {}",
                header.error
            )));
        }
        if header.error != 0 && bytes.len() != OUT_HEADER_LEN {
            return Err(FuseError::Malformed(format!(
                "error reply {} carries {} body bytes",
                header.error,
                bytes.len() - OUT_HEADER_LEN
            )));
        }
        Ok(FuseReply {
            header,
            body: bytes[OUT_HEADER_LEN..].to_vec(),
        })
    }

    /// Parses the reply to request `unique` from a device reply.
    pub fn from_reply(reply: &Reply, unique: u64) -> Result<Self> {
        let parsed = Self::parse(&reply.bytes)?;
        if parsed.header.unique != unique {
            return Err(FuseError::Malformed(format!(
                "reply to unique {} for request {unique}",
                parsed.header.unique
            )));
        }
        Ok(parsed)
    }

    /// The positive errno of an error reply, 0 for success.
    pub fn errno(&self) -> i32 {
        -self.header.error
    }

    /// `Ok(self)` for a success reply, the errno otherwise.
    pub fn ok(self) -> Result<Self> {
        match self.errno() {
            0 => Ok(self),
            e => Err(FuseError::Errno(e)),
        }
    }

    /// The body as a `T`, which must fill it at least.
    pub fn body_as<T: ByteValued + Default>(&self) -> Result<T> {
        read_struct(&self.body).ok_or_else(|| {
            FuseError::Malformed(format!(
                "{}-byte body, expected {}",
                self.body.len(),
                std::mem::size_of::<T>()
            ))
        })
    }
}

/// One entry of a READDIR reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub off: u64,
    pub type_: u32,
    pub name: Vec<u8>,
}

impl DirEntry {
    pub fn name_str(&self) -> String {
        String::from_utf8_lossy(&self.name).into_owned()
    }
}

/// Parses the body of a READDIR reply (`fuse_dirent`s, each padded to 8 bytes).
pub fn parse_dirents(mut body: &[u8]) -> Result<Vec<DirEntry>> {
    const DIRENT_LEN: usize = std::mem::size_of::<Dirent>();
    let mut out = Vec::new();
    while !body.is_empty() {
        let d: Dirent = read_struct(body)
            .ok_or_else(|| FuseError::Malformed(format!("{}-byte dirent tail", body.len())))?;
        let name_end = DIRENT_LEN + d.namelen as usize;
        let name = body
            .get(DIRENT_LEN..name_end)
            .ok_or_else(|| FuseError::Malformed(format!("dirent name of {} bytes", d.namelen)))?;
        out.push(DirEntry {
            ino: d.ino,
            off: d.off,
            type_: d.type_,
            name: name.to_vec(),
        });
        let padded = (name_end + 7) & !7;
        body = body.get(padded..).unwrap_or(&[]);
    }
    Ok(out)
}

/// A FUSE session over a test frontend: hands out `unique`s and speaks each operation.
pub struct FuseSession {
    frontend: TestFrontend,
    next_unique: u64,
    init: Option<InitOut>,
}

impl FuseSession {
    pub fn new(frontend: TestFrontend) -> Self {
        FuseSession {
            frontend,
            next_unique: 1,
            init: None,
        }
    }

    /// The frontend, for raw chains.
    pub fn frontend(&mut self) -> &mut TestFrontend {
        &mut self.frontend
    }

    /// Ends the session, keeping the connection.
    pub fn into_frontend(self) -> TestFrontend {
        self.frontend
    }

    /// The INIT reply, once [`FuseSession::init`] has succeeded.
    pub fn init_out(&self) -> Option<&InitOut> {
        self.init.as_ref()
    }

    /// A fresh request id.
    pub fn unique(&mut self) -> u64 {
        let u = self.next_unique;
        self.next_unique += 1;
        u
    }

    /// Sends request bytes (one readable descriptor) with `writable` bytes of reply space on
    /// the request queue, and returns the raw device reply.
    pub fn send_raw(&mut self, req: &[u8], writable: usize) -> Result<Reply> {
        Ok(self.frontend.send(&[req], writable)?)
    }

    /// Sends a well-formed request and parses the reply (errno included, not an error).
    pub fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        body: &[&[u8]],
        writable: usize,
    ) -> Result<FuseReply> {
        let unique = self.unique();
        let req = request(opcode, unique, nodeid, body);
        let reply = self.send_raw(&req, writable)?;
        FuseReply::from_reply(&reply, unique)
    }

    /// Like [`FuseSession::call`], turning an error reply into `FuseError::Errno`.
    pub fn call_ok(
        &mut self,
        opcode: u32,
        nodeid: u64,
        body: &[&[u8]],
        writable: usize,
    ) -> Result<FuseReply> {
        self.call(opcode, nodeid, body, writable)?.ok()
    }

    /// FUSE_INIT as a Linux 6.1 guest sends it (7.37, its usual flags).
    pub fn init(&mut self) -> Result<InitOut> {
        self.init_with(KERNEL_VERSION, LINUX_MINOR_VERSION, linux_init_flags())
    }

    /// FUSE_INIT with a chosen version and flags; the reply must be a success.
    pub fn init_with(&mut self, major: u32, minor: u32, flags: FsOptions) -> Result<InitOut> {
        let body = init_body(major, minor, flags);
        let reply = self.call_ok(Opcode::Init as u32, 0, &[&body], REPLY_SPACE)?;
        // Older minors get a shorter reply; pad what is missing with zeroes.
        let mut bytes = reply.body.clone();
        bytes.resize(bytes.len().max(std::mem::size_of::<InitOut>()), 0);
        let out: InitOut = read_struct(&bytes)
            .ok_or_else(|| FuseError::Malformed("INIT reply too short".into()))?;
        if out.major != KERNEL_VERSION {
            return Err(FuseError::Malformed(format!("INIT major {}", out.major)));
        }
        self.init = Some(out);
        Ok(out)
    }

    pub fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut> {
        self.call_ok(Opcode::Lookup as u32, parent, &[&cname(name)], REPLY_SPACE)?
            .body_as()
    }

    pub fn getattr(&mut self, node: u64) -> Result<AttrOut> {
        let arg = GetattrIn::default();
        self.call_ok(Opcode::Getattr as u32, node, &[arg.as_slice()], REPLY_SPACE)?
            .body_as()
    }

    pub fn mkdir(&mut self, parent: u64, name: &str, mode: u32) -> Result<EntryOut> {
        let arg = MkdirIn { mode, umask: 0 };
        self.call_ok(
            Opcode::Mkdir as u32,
            parent,
            &[arg.as_slice(), &cname(name)],
            REPLY_SPACE,
        )?
        .body_as()
    }

    /// FUSE_CREATE: creates and opens `name`; returns the entry and the open file.
    pub fn create(
        &mut self,
        parent: u64,
        name: &str,
        flags: i32,
        mode: u32,
    ) -> Result<(EntryOut, OpenOut)> {
        let arg = CreateIn {
            flags: flags as u32,
            mode,
            umask: 0,
            fuse_flags: 0,
        };
        let reply = self.call_ok(
            Opcode::Create as u32,
            parent,
            &[arg.as_slice(), &cname(name)],
            REPLY_SPACE,
        )?;
        let entry: EntryOut = reply.body_as()?;
        let open: OpenOut = read_struct(&reply.body[std::mem::size_of::<EntryOut>()..])
            .ok_or_else(|| FuseError::Malformed("CREATE reply without fuse_open_out".into()))?;
        Ok((entry, open))
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<OpenOut> {
        let arg = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call_ok(Opcode::Open as u32, node, &[arg.as_slice()], REPLY_SPACE)?
            .body_as()
    }

    /// The bytes of a WRITE request: `WriteIn` declaring `declared_size`, then `data`.
    pub fn write_request(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        declared_size: u32,
        data: &[u8],
    ) -> (u64, Vec<u8>) {
        let arg = WriteIn {
            fh,
            offset,
            size: declared_size,
            ..Default::default()
        };
        let unique = self.unique();
        (
            unique,
            request(Opcode::Write as u32, unique, node, &[arg.as_slice(), data]),
        )
    }

    /// Writes `data` at `offset`; returns the count the daemon reports.
    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32> {
        let (unique, req) = self.write_request(node, fh, offset, data.len() as u32, data);
        let reply = self.send_raw(&req, REPLY_SPACE)?;
        let out: WriteOut = FuseReply::from_reply(&reply, unique)?.ok()?.body_as()?;
        Ok(out.size)
    }

    /// Reads up to `size` bytes at `offset`, offering `size` bytes of reply space.
    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        self.read_with_space(node, fh, offset, size, OUT_HEADER_LEN + size as usize)
    }

    /// Reads with a declared `size` but `writable` bytes of reply space (they may disagree).
    pub fn read_with_space(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        size: u32,
        writable: usize,
    ) -> Result<Vec<u8>> {
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        Ok(self
            .call_ok(Opcode::Read as u32, node, &[arg.as_slice()], writable)?
            .body)
    }

    pub fn opendir(&mut self, node: u64) -> Result<OpenOut> {
        let arg = OpenIn {
            flags: libc::O_RDONLY as u32,
            fuse_flags: 0,
        };
        self.call_ok(Opcode::Opendir as u32, node, &[arg.as_slice()], REPLY_SPACE)?
            .body_as()
    }

    /// One READDIR call from `offset`.
    pub fn readdir(&mut self, node: u64, fh: u64, offset: u64) -> Result<Vec<DirEntry>> {
        let size = REPLY_SPACE as u32 - OUT_HEADER_LEN as u32;
        let arg = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let reply = self.call_ok(Opcode::Readdir as u32, node, &[arg.as_slice()], REPLY_SPACE)?;
        parse_dirents(&reply.body)
    }

    /// Every entry of directory `node` (OPENDIR, READDIR until empty, RELEASEDIR).
    pub fn list_dir(&mut self, node: u64) -> Result<Vec<DirEntry>> {
        let fh = self.opendir(node)?.fh;
        let mut all: Vec<DirEntry> = Vec::new();
        let mut offset = 0;
        loop {
            let batch = self.readdir(node, fh, offset)?;
            let Some(last) = batch.last() else { break };
            if all.len() > 100_000 {
                return Err(FuseError::Malformed("READDIR never ends".into()));
            }
            offset = last.off;
            all.extend(batch);
        }
        self.release_as(Opcode::Releasedir as u32, node, fh)?;
        Ok(all)
    }

    pub fn unlink(&mut self, parent: u64, name: &str) -> Result<()> {
        self.call_ok(Opcode::Unlink as u32, parent, &[&cname(name)], REPLY_SPACE)?;
        Ok(())
    }

    pub fn release(&mut self, node: u64, fh: u64) -> Result<()> {
        self.release_as(Opcode::Release as u32, node, fh)
    }

    fn release_as(&mut self, opcode: u32, node: u64, fh: u64) -> Result<()> {
        let arg = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call_ok(opcode, node, &[arg.as_slice()], REPLY_SPACE)?;
        Ok(())
    }

    pub fn statfs(&mut self, node: u64) -> Result<Kstatfs> {
        self.call_ok(Opcode::Statfs as u32, node, &[], REPLY_SPACE)?
            .body_as()
    }

    /// SYNCFS of the filesystem holding `node`, as Linux >= 5.15 sends it for `sync`.
    pub fn syncfs(&mut self, node: u64) -> Result<()> {
        let arg = fuse_backend_rs::abi::fuse_abi::SyncfsIn::default();
        self.call_ok(Opcode::SyncFs as u32, node, &[arg.as_slice()], REPLY_SPACE)?;
        Ok(())
    }

    /// FORGET on the hiprio queue, as Linux sends it: no reply space, no reply. Returns the
    /// used length the device reported (0 expected).
    pub fn forget(&mut self, node: u64, nlookup: u64) -> Result<u32> {
        let arg = ForgetIn { nlookup };
        let unique = self.unique();
        let req = request(Opcode::Forget as u32, unique, node, &[arg.as_slice()]);
        let reply = self.frontend.send_chain(HIPRIO_QUEUE, &[&req], &[])?;
        Ok(reply.len)
    }

    /// A GETATTR of the root that must succeed: the daemon is alive and serving.
    pub fn assert_alive(&mut self) -> Result<AttrOut> {
        self.getattr(ROOT)
    }

    /// Waits for any used buffers the daemon returns on the request queue within `quiet`.
    pub fn drain(&mut self, quiet: Duration) -> Result<usize> {
        Ok(self.frontend.drain_used(REQUEST_QUEUE, quiet)?.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_len_counts_header_and_body() {
        let req = request(Opcode::Lookup as u32, 9, 1, &[b"abc\0"]);
        let h: InHeader = read_struct(&req).unwrap();
        assert_eq!(h.len as usize, req.len());
        assert_eq!(req.len(), IN_HEADER_LEN + 4);
        assert_eq!(h.unique, 9);
    }

    #[test]
    fn reply_parse_rejects_lies() {
        let mut ok = OutHeader {
            len: 16,
            error: -libc::ENOENT,
            unique: 3,
        }
        .as_slice()
        .to_vec();
        assert_eq!(FuseReply::parse(&ok).unwrap().errno(), libc::ENOENT);
        ok.push(0);
        assert!(FuseReply::parse(&ok).is_err(), "len says 16, 17 written");
        assert!(FuseReply::parse(&[0u8; 8]).is_err());
    }

    #[test]
    fn dirents_are_padded_to_eight_bytes() {
        let mut body = Vec::new();
        for (ino, name) in [(5u64, "a"), (6, "longer-name")] {
            let d = Dirent {
                ino,
                off: ino,
                namelen: name.len() as u32,
                type_: 8,
            };
            body.extend_from_slice(d.as_slice());
            body.extend_from_slice(name.as_bytes());
            while body.len() % 8 != 0 {
                body.push(0);
            }
        }
        let entries = parse_dirents(&body).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name_str(), "longer-name");
        assert_eq!(entries[1].ino, 6);
    }
}
