//! One FUSE request through guard -> Server -> ExportFs -> PassthroughFs on a fresh temporary
//! share, in-process, with the descriptor-chain shape part of the input.
//!
//! Input: `flags` (bit 0 indirect table, bit 1 keep the header's `len` as given instead of
//! fixing it, bits 2-4 a gap between readable buffers), `n` readable lengths (u16 each),
//! `m` writable lengths (a size class or a raw u16 each), a node selector, then the request
//! (header and body). Before it the harness sends INIT, LOOKUPs of the share's entries and
//! opens a file and a directory, so node ids 1 (root), 2.. and handles exist.
//!
//! Checks: the reply is well formed (header length = used length <= writable space, same
//! unique, errno range), nothing changed outside the share, and no descriptor is left open
//! once the share is dropped.
#![no_main]

use fuzz_harness::*;
use libfuzzer_sys::fuzz_target;

const SIZE_CLASSES: [u32; 8] = [0, 15, 16, 40, 144, 4096, 4096 + 16, (1 << 20) + 16];

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let flags = c.u8();
    let mut shape = ChainShape {
        indirect: flags & 1 != 0,
        gap: u32::from((flags >> 2) & 7) * 8,
        ..ChainShape::default()
    };
    for _ in 0..c.u8() % 4 {
        shape.readable.push(u32::from(c.u16() % 8192));
    }
    for _ in 0..c.u8() % 4 {
        let class = c.u8();
        let len = if class < 0x80 {
            SIZE_CLASSES[class as usize % SIZE_CLASSES.len()]
        } else {
            u32::from(c.u16())
        };
        shape.writable.push(len);
    }
    let node = c.u8();
    let mut req = c.rest().to_vec();
    if req.len() > 1 << 20 {
        return;
    }

    let fds = open_fds();
    {
        let mut share = Share::new(new_memory());
        share.init();
        let mut nodes = vec![1u64];
        for name in [&b"file"[..], b"dir", b"up", b"abs", b"fifo"] {
            nodes.extend(share.lookup(1, name));
        }
        share.open(14, nodes[1], libc::O_RDWR as u32);
        share.open(27, nodes[2], 0);

        if req.len() >= 40 {
            if flags & 2 == 0 {
                let len = req.len() as u32;
                req[0..4].copy_from_slice(&len.to_le_bytes());
            }
            if node != 0 {
                let id = nodes[(node as usize - 1) % nodes.len()];
                req[16..24].copy_from_slice(&id.to_le_bytes());
            }
        }
        clamp_allocations(&mut req);
        share.serve(&req, &shape);
        share.dir.check_escape();
    }
    assert_eq!(
        open_fds(),
        fds,
        "descriptors left open after the share was dropped: {:?}",
        fd_targets()
    );
});
