//! Request guard: looks at each FUSE request header before fuse-backend-rs does.
//!
//! It owns two early answers: ENOSYS for an opcode fuse-backend-rs does not define (its 0.14
//! `Opcode::from` transmutes any number below `MaxOpcode`, undefined behaviour for the holes
//! 0, 7 and 19; the vendored copy adds SYNCFS, 50), and EROFS for a request that would change a read-only export. Both look at the
//! daemon's own copy of the header, which the guest can rewrite before the server reads it
//! again: so neither is the only line of defence. The vendored fuse-backend-rs maps the holes
//! safely (`third_party/README.md`), and `ExportFs` refuses changes to a read-only export on
//! the arguments the backend receives. It must not parse request bodies beyond the fixed
//! headers it needs, and never panics on guest bytes.

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OpenIn, OutHeader};
use fuse_backend_rs::abi::virtio_fs::SetupmappingFlags;
use fuse_backend_rs::transport::Reader;
use vm_memory::ByteValued;

/// What to do with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it to the FUSE server.
    Serve,
    /// Answer with this errno without calling the server.
    Refuse(i32),
}

/// Opcodes the guest may send that never receive a reply.
pub fn is_no_reply(opcode: u32) -> bool {
    opcode == Opcode::Forget as u32 || opcode == Opcode::BatchForget as u32
}

/// Whether `opcode` names a request the vendored fuse-backend-rs defines (and so may be
/// converted with `Opcode::from`): 0.14's, and SYNCFS.
pub fn is_known_opcode(opcode: u32) -> bool {
    matches!(opcode, 1..=6 | 8..=18 | 20..=50)
}

/// Opcodes that change the exported tree and so are refused on a read-only export.
fn modifies(opcode: u32) -> bool {
    const MODIFYING: [Opcode; 15] = [
        Opcode::Setattr,
        Opcode::Symlink,
        Opcode::Mknod,
        Opcode::Mkdir,
        Opcode::Unlink,
        Opcode::Rmdir,
        Opcode::Rename,
        Opcode::Rename2,
        Opcode::Link,
        Opcode::Write,
        Opcode::Setxattr,
        Opcode::Removexattr,
        Opcode::Create,
        Opcode::Fallocate,
        Opcode::CopyFileRange,
    ];
    MODIFYING.iter().any(|op| *op as u32 == opcode)
}

/// Decides, per request, from the in-header and (for OPEN) the fixed-size body after it.
#[derive(Debug, Clone, Copy)]
pub struct RequestGuard {
    readonly: bool,
}

impl RequestGuard {
    pub fn new(readonly: bool) -> Self {
        RequestGuard { readonly }
    }

    /// Whether [`check`](Self::check) looks at the body of a request with this opcode (it
    /// needs only the header for every other one).
    pub fn needs_body(&self, opcode: u32) -> bool {
        self.readonly && (opcode == Opcode::Open as u32 || opcode == Opcode::SetupMapping as u32)
    }

    /// `body` is whatever follows the in-header in the request (possibly short or empty).
    pub fn check(&self, header: &InHeader, body: &[u8]) -> Verdict {
        let op = header.opcode;
        if !is_known_opcode(op) {
            return Verdict::Refuse(libc::ENOSYS);
        }
        if !self.readonly {
            return Verdict::Serve;
        }
        if modifies(op) {
            return Verdict::Refuse(libc::EROFS);
        }
        if op == Opcode::Open as u32 {
            // A short OPEN body is left for the server to reject as malformed.
            if let Some(open) = read_prefix::<OpenIn>(body) {
                let flags = open.flags as i32;
                if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
                    return Verdict::Refuse(libc::EROFS);
                }
            }
        }
        if op == Opcode::SetupMapping as u32 {
            // fuse_setupmapping_in: fh, foffset, len, flags (u64 each), moffset.
            if let Some(flags) = body.get(24..32) {
                let flags = u64::from_le_bytes(flags.try_into().unwrap_or([0; 8]));
                if flags & SetupmappingFlags::WRITE.bits() != 0 {
                    return Verdict::Refuse(libc::EROFS);
                }
            }
        }
        Verdict::Serve
    }
}

/// Peeks at a request without consuming it: its header and the guard's verdict, or `None`
/// when the request is shorter than a FUSE header (nothing to answer to).
pub fn inspect<S: vm_memory::bitmap::BitmapSlice>(
    guard: &RequestGuard,
    reader: &Reader<'_, S>,
) -> Option<(InHeader, Verdict)> {
    let mut prefix = [0u8; PEEK_LEN];
    let filled = reader.peek(&mut prefix);
    inspect_prefix(guard, &prefix[..filled])
}

/// How much of a request the guard looks at: the in-header plus the fixed-size bodies it
/// checks (OPEN, SETUPMAPPING).
pub const PEEK_LEN: usize = std::mem::size_of::<InHeader>() + 40;

/// Like [`inspect`], from the first bytes of the request (up to [`PEEK_LEN`]) already copied
/// out: the virtqueue path copies the body only for the opcodes the guard looks into.
pub fn inspect_prefix(guard: &RequestGuard, prefix: &[u8]) -> Option<(InHeader, Verdict)> {
    let header: InHeader = read_prefix(prefix)?;
    let body = &prefix[std::mem::size_of::<InHeader>()..];
    Some((header, guard.check(&header, body)))
}

/// The bytes of a bare error reply to request `unique`.
pub fn error_reply(unique: u64, errno: i32) -> OutHeader {
    OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    }
}

/// Reads a `T` from the start of `bytes`, if there are enough of them.
pub fn read_prefix<T: ByteValued + Default>(bytes: &[u8]) -> Option<T> {
    let size = std::mem::size_of::<T>();
    let src = bytes.get(..size)?;
    let mut value = T::default();
    value.as_mut_slice().copy_from_slice(src);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(opcode: u32) -> InHeader {
        InHeader {
            len: 40,
            opcode,
            unique: 7,
            nodeid: 1,
            ..Default::default()
        }
    }

    fn open_body(flags: i32) -> Vec<u8> {
        let open = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        open.as_slice().to_vec()
    }

    #[test]
    fn opcode_holes_are_refused() {
        let guard = RequestGuard::new(false);
        for op in [0, 7, 19, 51, 52, 4096, u32::MAX, 1_048_576, 436_207_616] {
            assert_eq!(
                guard.check(&header(op), &[]),
                Verdict::Refuse(libc::ENOSYS),
                "opcode {op}"
            );
        }
        for op in [1, 6, 8, 18, 20, 26, 44, 48, 49, 50] {
            assert_eq!(guard.check(&header(op), &[]), Verdict::Serve, "opcode {op}");
        }
    }

    #[test]
    fn readonly_refuses_modifications() {
        let guard = RequestGuard::new(true);
        for op in [
            Opcode::Write,
            Opcode::Mkdir,
            Opcode::Rename2,
            Opcode::Setattr,
        ] {
            assert_eq!(
                guard.check(&header(op as u32), &[]),
                Verdict::Refuse(libc::EROFS)
            );
        }
        for op in [
            Opcode::Lookup,
            Opcode::Read,
            Opcode::Getattr,
            Opcode::Readdir,
        ] {
            assert_eq!(guard.check(&header(op as u32), &[]), Verdict::Serve);
        }
        let open = header(Opcode::Open as u32);
        assert_eq!(
            guard.check(&open, &open_body(libc::O_RDONLY)),
            Verdict::Serve
        );
        assert_eq!(
            guard.check(&open, &open_body(libc::O_RDWR)),
            Verdict::Refuse(libc::EROFS)
        );
        assert_eq!(
            guard.check(&open, &open_body(libc::O_WRONLY)),
            Verdict::Refuse(libc::EROFS)
        );
        assert_eq!(
            guard.check(&open, &open_body(libc::O_RDONLY | libc::O_TRUNC)),
            Verdict::Refuse(libc::EROFS)
        );
        // The same requests pass on a writable export.
        let rw = RequestGuard::new(false);
        assert_eq!(rw.check(&open, &open_body(libc::O_RDWR)), Verdict::Serve);
        assert_eq!(rw.check(&header(Opcode::Write as u32), &[]), Verdict::Serve);
    }

    #[test]
    fn readonly_refuses_writable_mappings() {
        let guard = RequestGuard::new(true);
        let map = header(Opcode::SetupMapping as u32);
        let mut body = vec![0u8; 40];
        body[24] = SetupmappingFlags::READ.bits() as u8;
        assert_eq!(guard.check(&map, &body), Verdict::Serve);
        body[24] = (SetupmappingFlags::READ | SetupmappingFlags::WRITE).bits() as u8;
        assert_eq!(guard.check(&map, &body), Verdict::Refuse(libc::EROFS));
    }

    #[test]
    fn prefix_inspection_needs_a_whole_header() {
        let guard = RequestGuard::new(true);
        let mut bytes = header(Opcode::Open as u32).as_slice().to_vec();
        assert!(inspect_prefix(&guard, &bytes[..bytes.len() - 1]).is_none());
        bytes.extend_from_slice(&open_body(libc::O_RDWR));
        let (h, v) = inspect_prefix(&guard, &bytes).unwrap();
        assert_eq!(h.unique, 7);
        assert_eq!(v, Verdict::Refuse(libc::EROFS));
        assert_eq!(
            inspect_prefix(&RequestGuard::new(false), &bytes).unwrap().1,
            Verdict::Serve
        );
    }

    /// `inspect` (the /dev/fuse path) reads the header and OPEN's flags without consuming
    /// them: the server then reads the whole request from the same reader.
    #[test]
    fn inspect_judges_a_reader_and_leaves_it_whole() {
        use fuse_backend_rs::transport::FuseBuf;
        use std::io::Read;
        let mut bytes = header(Opcode::Open as u32).as_slice().to_vec();
        bytes.extend_from_slice(&open_body(libc::O_RDWR));
        let original = bytes.clone();
        let mut reader = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut bytes)).unwrap();
        let (h, v) = inspect(&RequestGuard::new(true), &reader).expect("a whole header");
        assert_eq!((h.unique, v), (7, Verdict::Refuse(libc::EROFS)));
        assert_eq!(
            inspect(&RequestGuard::new(false), &reader).map(|(_, v)| v),
            Some(Verdict::Serve)
        );
        assert_eq!(reader.available_bytes(), original.len(), "nothing consumed");
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all, original);

        let mut short =
            original[..original.len() - OpenIn::default().as_slice().len() - 1].to_vec();
        let reader = Reader::<()>::from_fuse_buffer(FuseBuf::new(&mut short)).unwrap();
        assert!(
            inspect(&RequestGuard::new(true), &reader).is_none(),
            "header cut short"
        );
    }

    proptest! {
        #[test]
        fn any_header_and_body_gets_a_verdict(op in any::<u32>(), ro in any::<bool>(),
                                              body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let v = RequestGuard::new(ro).check(&header(op), &body);
            if !is_known_opcode(op) {
                prop_assert_eq!(v, Verdict::Refuse(libc::ENOSYS));
            }
            if v == Verdict::Serve {
                // Only then may the opcode be converted by fuse-backend-rs.
                prop_assert!(is_known_opcode(op));
            }
        }
    }

    /// The server maps the holes itself too (vendored patch): a guest that rewrites the
    /// opcode after the guard looked cannot reach the transmute with them.
    #[test]
    fn opcode_holes_map_to_max_opcode() {
        for hole in [0u32, 7, 19, 51, u32::MAX] {
            assert_eq!(
                Opcode::from(hole) as u32,
                Opcode::MaxOpcode as u32,
                "{hole}"
            );
        }
        assert_eq!(Opcode::from(6) as u32, Opcode::Symlink as u32);
        assert_eq!(Opcode::from(8) as u32, Opcode::Mknod as u32);
        assert_eq!(Opcode::from(50) as u32, Opcode::SyncFs as u32);
        assert!(is_known_opcode(Opcode::SyncFs as u32));
        assert!(!is_known_opcode(Opcode::MaxOpcode as u32));
    }
}
