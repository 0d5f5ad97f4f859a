//! A sequence of FUSE requests with state, in-process on a fresh temporary share: INIT first,
//! then operations chosen by the input, whose node ids and handles come from earlier replies
//! (LOOKUP, MKDIR, MKNOD, SYMLINK, LINK, CREATE, OPEN, OPENDIR) or, now and then, are raw.
//!
//! Input: per operation, an op byte then its fields (node and handle selectors index the ids
//! learnt so far; names come from a table or the input). DESTROY is followed by INIT, as a
//! guest's umount and mount.
//!
//! Checks: every reply well formed; after every operation nothing changed outside the share;
//! after the session, once the share is dropped, no descriptor is left open.
#![no_main]

use fuzz_harness::*;
use libfuzzer_sys::fuzz_target;

const NAMES: [&[u8]; 12] = [
    b"file", b"dir", b"up", b"abs", b"fifo", b"new", b"n2", b".", b"..", b"", b"a/b", b"inner",
];

struct Session {
    share: Share,
    nodes: Vec<u64>,
    handles: Vec<u64>,
}

impl Session {
    fn node(&self, c: &mut Cursor) -> u64 {
        let sel = c.u8();
        if sel == 0xff {
            return c.u64();
        }
        self.nodes[sel as usize % self.nodes.len()]
    }

    fn handle(&self, c: &mut Cursor) -> u64 {
        let sel = c.u8();
        if sel == 0xff || self.handles.is_empty() {
            return c.u64();
        }
        self.handles[sel as usize % self.handles.len()]
    }

    fn name<'a>(c: &mut Cursor<'a>) -> Vec<u8> {
        let sel = c.u8();
        match sel {
            0xf0 => vec![b'x'; 300],
            0xf1..=0xff => c.short_bytes().to_vec(),
            _ => NAMES[sel as usize % NAMES.len()].to_vec(),
        }
    }

    /// Serves `body` as `opcode` on `node`; learns node ids and handles from the reply.
    fn call(&mut self, opcode: u32, node: u64, body: Body, reply_len: u32) -> Vec<u8> {
        let reply = self.share.call(opcode, node, &body.0, reply_len);
        if error_of(&reply) == 0 && reply.len() > 16 {
            match opcode {
                1 | 6 | 8 | 9 | 13 => self.nodes.extend(u64_at(&reply, 16)),
                35 => {
                    self.nodes.extend(u64_at(&reply, 16));
                    self.handles.extend(u64_at(&reply, 16 + 128));
                }
                14 | 27 => self.handles.extend(u64_at(&reply, 16)),
                _ => {}
            }
        }
        reply
    }

    fn step(&mut self, c: &mut Cursor) {
        let op = c.u8() % 40;
        let reply_len = match c.u8() {
            0 => 16,
            1 => 0,
            2 => 100,
            _ => (1 << 20) + 4096,
        };
        let node = self.node(c);
        let d = Body::default();
        match op {
            0 => {
                let n = Self::name(c);
                self.call(1, node, d.name(&n), reply_len);
            }
            1 => {
                let n = c.u64();
                self.call(2, node, d.u64(n), reply_len);
            }
            2 => {
                let (f, h) = (c.u32(), self.handle(c));
                self.call(3, node, d.u32(f).u32(0).u64(h), reply_len);
            }
            3 => {
                let (valid, h, size) = (c.u32(), self.handle(c), u64::from(c.u32()));
                let (t, mode, uid) = (c.u64(), c.u32(), c.u32());
                let b = d
                    .u32(valid)
                    .u32(0)
                    .u64(h)
                    .u64(size)
                    .u64(0)
                    .u64(t)
                    .u64(t)
                    .u64(t)
                    .u32(0)
                    .u32(0)
                    .u32(0)
                    .u32(mode)
                    .u32(0)
                    .u32(uid)
                    .u32(uid)
                    .u32(0);
                self.call(4, node, b, reply_len);
            }
            4 => {
                self.call(5, node, d, reply_len);
            }
            5 => {
                let (n, t) = (Self::name(c), Self::name(c));
                self.call(6, node, d.name(&n).name(&t), reply_len);
            }
            6 => {
                let (mode, rdev, n) = (c.u32(), c.u32(), Self::name(c));
                self.call(
                    8,
                    node,
                    d.u32(mode).u32(rdev).u32(0).u32(0).name(&n),
                    reply_len,
                );
            }
            7 => {
                let (mode, n) = (c.u32(), Self::name(c));
                self.call(9, node, d.u32(mode).u32(0).name(&n), reply_len);
            }
            8 => {
                let n = Self::name(c);
                self.call(10, node, d.name(&n), reply_len);
            }
            9 => {
                let n = Self::name(c);
                self.call(11, node, d.name(&n), reply_len);
            }
            10 => {
                let (new_dir, a, b) = (self.node(c), Self::name(c), Self::name(c));
                self.call(12, node, d.u64(new_dir).name(&a).name(&b), reply_len);
            }
            11 => {
                let (old, n) = (self.node(c), Self::name(c));
                self.call(13, node, d.u64(old).name(&n), reply_len);
            }
            12 => {
                let f = c.u32();
                self.call(14, node, d.u32(f).u32(0), reply_len);
            }
            13 | 24 | 34 => {
                let (h, off, size, f) = (self.handle(c), c.u64(), c.u32() % (2 << 20), c.u32());
                let opcode = [15, 28, 44][(op == 24) as usize + 2 * (op == 34) as usize];
                self.call(
                    opcode,
                    node,
                    d.u64(h).u64(off).u32(size).u32(0).u64(0).u32(f).u32(0),
                    reply_len,
                );
            }
            14 => {
                let (h, off, f) = (self.handle(c), u64::from(c.u32()), c.u32());
                let data = c.short_bytes().repeat(1 + c.u8() as usize % 16);
                let b = d
                    .u64(h)
                    .u64(off)
                    .u32(data.len() as u32)
                    .u32(f)
                    .u64(0)
                    .u32(0)
                    .u32(0)
                    .bytes(&data);
                self.call(16, node, b, reply_len);
            }
            15 => {
                self.call(17, node, d, reply_len);
            }
            16 | 25 => {
                let (h, f) = (self.handle(c), c.u32());
                self.call(
                    if op == 16 { 18 } else { 29 },
                    node,
                    d.u64(h).u32(f).u32(c.u32()).u64(0),
                    reply_len,
                );
            }
            17 | 26 => {
                let (h, f) = (self.handle(c), c.u32());
                self.call(
                    if op == 17 { 20 } else { 30 },
                    node,
                    d.u64(h).u32(f).u32(0),
                    reply_len,
                );
            }
            18 => {
                let (n, v, f) = (Self::name(c), c.short_bytes().to_vec(), c.u32());
                self.call(
                    21,
                    node,
                    d.u32(v.len() as u32).u32(f).name(&n).bytes(&v),
                    reply_len,
                );
            }
            19 => {
                let (size, n) = (c.u32() % 70000, Self::name(c));
                self.call(22, node, d.u32(size).u32(0).name(&n), reply_len);
            }
            20 => {
                let size = c.u32() % 70000;
                self.call(23, node, d.u32(size).u32(0), reply_len);
            }
            21 => {
                let n = Self::name(c);
                self.call(24, node, d.name(&n), reply_len);
            }
            22 => {
                let h = self.handle(c);
                self.call(25, node, d.u64(h).u32(0).u32(0).u64(c.u64()), reply_len);
            }
            23 => {
                let f = c.u32();
                self.call(27, node, d.u32(f).u32(0), reply_len);
            }
            27 => {
                let (h, owner, start, end, ty) =
                    (self.handle(c), c.u64(), c.u64(), c.u64(), c.u32());
                // GETLK, SETLK; never SETLKW (a wait the harness cannot end).
                let opcode = 31 + u32::from(c.u8() & 1);
                self.call(
                    opcode,
                    node,
                    d.u64(h)
                        .u64(owner)
                        .u64(start)
                        .u64(end)
                        .u32(ty)
                        .u32(1)
                        .u32(c.u32())
                        .u32(0),
                    reply_len,
                );
            }
            28 => {
                let m = c.u32();
                self.call(34, node, d.u32(m).u32(0), reply_len);
            }
            29 => {
                let (f, mode, n) = (c.u32(), c.u32(), Self::name(c));
                self.call(
                    35,
                    node,
                    d.u32(f).u32(mode).u32(0).u32(0).name(&n),
                    reply_len,
                );
            }
            30 => {
                let u = c.u64();
                self.call(36, node, d.u64(u), reply_len);
            }
            31 => {
                self.call(38, node, d, reply_len);
                self.share.init();
                self.nodes.truncate(1);
                self.handles.clear();
            }
            32 => {
                let n = c.u8() % 8;
                let mut b = d.u32(u32::from(n)).u32(0);
                for _ in 0..n {
                    b = b.u64(self.node(c)).u64(c.u64() % 4);
                }
                self.call(42, node, b, reply_len);
            }
            33 => {
                let (h, off, len, mode) = (
                    self.handle(c),
                    u64::from(c.u32()),
                    c.u64() % MAX_ALLOC_LEN,
                    c.u32(),
                );
                self.call(
                    43,
                    node,
                    d.u64(h).u64(off).u64(len).u32(mode).u32(0),
                    reply_len,
                );
            }
            35 => {
                let (new_dir, f, a, b) = (self.node(c), c.u32(), Self::name(c), Self::name(c));
                self.call(
                    45,
                    node,
                    d.u64(new_dir).u32(f).u32(0).name(&a).name(&b),
                    reply_len,
                );
            }
            36 => {
                let (h, off, w) = (self.handle(c), c.u64(), c.u32());
                self.call(46, node, d.u64(h).u64(off).u32(w).u32(0), reply_len);
            }
            37 => {
                let (hi, oi, no, ho, oo) = (
                    self.handle(c),
                    u64::from(c.u32()),
                    self.node(c),
                    self.handle(c),
                    u64::from(c.u32()),
                );
                let (len, f) = (c.u64() % MAX_ALLOC_LEN, c.u64());
                self.call(
                    47,
                    node,
                    d.u64(hi).u64(oi).u64(no).u64(ho).u64(oo).u64(len).u64(f),
                    reply_len,
                );
            }
            38 => {
                let opcode = u32::from(c.u8());
                if opcode == 33 {
                    return; // SETLKW: see above
                }
                let mut req = request(opcode, 0xabc, node, c.short_bytes());
                clamp_allocations(&mut req);
                self.share.serve(&req, &ChainShape::simple(reply_len));
            }
            _ => {
                self.call(26, 0, Body(init_body()), reply_len);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let fds = open_fds();
    {
        let mut s = Session {
            share: Share::new(new_memory()),
            nodes: vec![1],
            handles: Vec::new(),
        };
        s.share.init();
        let mut c = Cursor::new(data);
        let mut steps = 0;
        while !c.is_empty() && steps < 64 {
            s.step(&mut c);
            s.share.dir.check_escape();
            steps += 1;
        }
    }
    assert_eq!(
        open_fds(),
        fds,
        "descriptors left open after the share was dropped: {:?}",
        fd_targets()
    );
});
