#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/TARGET/*) in each target's input format.

Small and readable on purpose: one seed per request kind or per scenario, each a few hundred
bytes at most. libFuzzer grows its working corpus from these (scripts/fuzz-smoke.sh and
scripts/fuzz-long.sh copy them into a scratch corpus; the committed seeds never change by
themselves). Rerun after changing a target's input format:  python3 fuzz/write_seeds.py
"""
import json
import os
import shutil
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def u8(v): return struct.pack("<B", v & 0xFF)
def u16(v): return struct.pack("<H", v & 0xFFFF)
def u32(v): return struct.pack("<I", v & 0xFFFFFFFF)
def u64(v): return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)
def name(s): return s + b"\0"


def fuse(opcode, nodeid, body, unique=7, uid=0, gid=0):
    return u32(40 + len(body)) + u32(opcode) + u64(unique) + u64(nodeid) + u32(uid) + u32(gid) \
        + u32(1) + u16(0) + u16(0) + body


INIT = u32(7) + u32(38) + u32(0x20000) + u32(0x7FFFFFFF & ~(1 << 29)) + u32(0) + bytes(44)


def write(target, seeds):
    d = os.path.join(ROOT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for label, data in seeds:
        with open(os.path.join(d, label), "wb") as f:
            f.write(data)


# ---- fuse_request: flags, readable lens, writable classes, node selector, request --------
# Node selectors after the harness's set-up: 1 root, 2 file, 3 dir, 4 up, 5 abs, 6 fifo.
# Handles: the harness opens file (RDWR) then dir; they are small numbers (1, 2).
def req_input(request, node=0, flags=0, readable=(), writable=(6,)):
    out = u8(flags) + u8(len(readable))
    for r in readable:
        out += u16(r)
    out += u8(len(writable))
    for w in writable:
        out += u8(w)
    return out + u8(node) + request


READ_IN = lambda fh, off, size: u64(fh) + u64(off) + u32(size) + u32(0) + u64(0) + u32(0) + u32(0)
SETATTR = u32(0x1 | 0x8) + u32(0) + u64(0) + u64(100) + u64(0) * 4 + u32(0) * 3 + u32(0o100600) \
    + u32(0) + u32(0) + u32(0) + u32(0)
requests = {
    "lookup": (1, 1, name(b"file")),
    "lookup_dotdot": (1, 1, name(b"..")),
    "lookup_slash": (1, 1, name(b"dir/inner")),
    "forget": (2, 2, u64(1)),
    "getattr": (3, 2, u32(0) + u32(0) + u64(0)),
    "getattr_fh": (3, 2, u32(1) + u32(0) + u64(1)),
    "setattr": (4, 2, SETATTR),
    "readlink": (5, 4, b""),
    "symlink": (6, 1, name(b"s") + name(b"../canary/secret")),
    "mknod_fifo": (8, 1, u32(0o10644) + u32(0) + u32(0) + u32(0) + name(b"f2")),
    "mknod_dev": (8, 1, u32(0o20644) + u32(0x0103) + u32(0) + u32(0) + name(b"null")),
    "mkdir": (9, 1, u32(0o755) + u32(0) + name(b"d2")),
    "unlink": (10, 1, name(b"file")),
    "rmdir": (11, 1, name(b"dir")),
    "rename": (12, 1, u64(3) + name(b"file") + name(b"moved")),
    "link": (13, 3, u64(2) + name(b"hard")),
    "open_rw": (14, 2, u32(2) + u32(0)),
    "open_path": (14, 2, u32(0o10000000) + u32(0)),
    "open_fifo": (14, 6, u32(1) + u32(0)),
    "read": (15, 2, READ_IN(1, 0, 4096)),
    "read_dir_handle": (15, 2, READ_IN(2, 0, 4096)),
    "write": (16, 2, u64(1) + u64(0) + u32(5) + u32(0) + u64(0) + u32(0) + u32(0) + b"hello"),
    "statfs": (17, 1, b""),
    "release": (18, 2, u64(1) + u32(2) + u32(0) + u64(0)),
    "fsync": (20, 2, u64(1) + u32(0) + u32(0)),
    "setxattr": (21, 2, u32(3) + u32(0) + name(b"user.k") + b"val"),
    "getxattr": (22, 2, u32(64) + u32(0) + name(b"user.k")),
    "getxattr_huge": (22, 2, u32(0xFFFFFFFF) + u32(0) + name(b"user.k")),
    "listxattr": (23, 2, u32(256) + u32(0)),
    "listxattr_huge": (23, 2, u32(0xFFFFFFFF) + u32(0)),
    "removexattr": (24, 2, name(b"user.k")),
    "flush": (25, 2, u64(1) + u32(0) + u32(0) + u64(0)),
    "init": (26, 0, INIT),
    "opendir": (27, 3, u32(0) + u32(0)),
    "readdir": (28, 3, READ_IN(2, 0, 4096)),
    "releasedir": (29, 3, u64(2) + u32(0) + u32(0) + u64(0)),
    "fsyncdir": (30, 3, u64(2) + u32(0) + u32(0)),
    "getlk": (31, 2, u64(1) + u64(9) + u64(0) + u64(100) + u32(1) + u32(1) + u32(0) + u32(0)),
    "setlk": (32, 2, u64(1) + u64(9) + u64(0) + u64(100) + u32(1) + u32(1) + u32(0) + u32(0)),
    "access": (34, 2, u32(4) + u32(0)),
    "create": (35, 1, u32(0o302) + u32(0o100644) + u32(0o22) + u32(0) + name(b"c")),
    "create_opath": (35, 1, u32(0o10000302) + u32(0o100644) + u32(0) + u32(0) + name(b"fifo")),
    "interrupt": (36, 0, u64(7)),
    "bmap": (37, 2, u64(0) + u32(4096) + u32(0)),
    "destroy": (38, 0, b""),
    "ioctl": (39, 2, u64(1) + u32(0) + u32(0x5401) + u64(0) + u32(0) + u32(0)),
    "poll": (40, 2, u64(1) + u64(0) + u32(0) + u32(0)),
    "batch_forget": (42, 0, u32(2) + u32(0) + u64(2) + u64(1) + u64(3) + u64(1)),
    "fallocate": (43, 2, u64(1) + u64(0) + u64(65536) + u32(0) + u32(0)),
    "readdirplus": (44, 3, READ_IN(2, 0, 4096)),
    "rename2_exchange": (45, 1, u64(1) + u32(2) + u32(0) + name(b"file") + name(b"dir")),
    "lseek": (46, 2, u64(1) + u64(0) + u32(3) + u32(0)),
    "copy_file_range": (47, 2, u64(1) + u64(0) + u64(2) + u64(1) + u64(100) + u64(4096) + u64(0)),
    "setupmapping": (48, 2, u64(1) + u64(0) + u64(4096) + u64(3) + u64(0)),
    "removemapping": (49, 2, u32(1) + u64(0) + u64(4096)),
    "unknown_opcode": (7, 1, b""),
    "syncfs": (50, 1, u64(0)),
}
seeds = []
for label, (op, node, body) in sorted(requests.items()):
    # node selector: the harness's id for the node number used here (1 root .. 6 fifo)
    seeds.append((label, req_input(fuse(op, 0, body), node=node, writable=(7,) if op in (15, 28, 44) else (6,))))
seeds.append(("shape_split_header", req_input(fuse(1, 0, name(b"file")), node=1, readable=(3, 20, 0), writable=(3, 0, 6))))
seeds.append(("shape_indirect", req_input(fuse(15, 0, READ_IN(1, 0, 8192)), node=2, flags=1 | (2 << 2), readable=(40,), writable=(3, 5, 5))))
seeds.append(("shape_no_room", req_input(fuse(3, 0, u32(0) + u32(0) + u64(0)), node=2, writable=(1,))))
seeds.append(("shape_short_header", req_input(fuse(1, 0, b"")[:30], node=0, flags=2)))
seeds.append(("shape_bad_len", req_input(u32(9999) + fuse(16, 0, b"")[4:], node=2, flags=2)))
write("fuse_request", seeds)


# ---- fuse_session: op byte, reply-size selector, node selector, then the op's fields --------
BIG = 3


def op(code, node, *fields):
    return u8(code) + u8(BIG) + u8(node) + b"".join(fields)


def nm(i): return u8(i)  # index into the target's NAMES table
def raw_name(s): return u8(0xF1) + u8(len(s)) + s
def short(s): return u8(len(s)) + s


sessions = {
    "file_io": [
        op(0, 0, nm(0)), op(12, 1, u32(2)),
        op(14, 1, u8(0), u32(10), u32(0), short(b"0123456789"), u8(3)),
        op(13, 1, u8(0), u64(0), u32(4096), u32(0)),
        op(22, 1, u8(0), u64(1)), op(17, 1, u8(0), u32(1)),
        op(16, 1, u8(0), u32(2), u32(0)), op(1, 1, u64(1)),
    ],
    "dir_tree": [
        op(7, 0, u32(0o40755), nm(5)),
        op(29, 1, u32(0o302), u32(0o100644), nm(6)),
        op(10, 1, u8(0), nm(6), nm(6)),
        op(8, 0, nm(6)), op(9, 0, nm(5)),
    ],
    "readdir": [
        op(23, 0, u32(0)), op(24, 0, u8(0), u64(0), u32(4096), u32(0)),
        op(34, 0, u8(0), u64(0), u32(65536), u32(0)),
        op(24, 0, u8(0), u64(3), u32(100), u32(0)),
        op(25, 0, u8(0), u32(0), u32(0)),
    ],
    "remount": [
        op(0, 0, nm(1)), op(2, 1, u32(0), u8(0xFF), u64(0)),
        op(31, 0), op(0, 0, nm(1)), op(0, 1, nm(11)), op(23, 2, u32(0)),
    ],
    "xattr": [
        op(0, 0, nm(0)),
        op(18, 1, raw_name(b"user.k"), short(b"value"), u32(0)),
        op(19, 1, u32(64), raw_name(b"user.k")),
        op(20, 1, u32(256)), op(20, 1, u32(0)),
        op(21, 1, raw_name(b"user.k")),
        op(18, 1, raw_name(b"trusted.overlay.x"), short(b"v"), u32(1)),
    ],
    "links": [
        op(5, 0, nm(5), raw_name(b"../canary/secret")), op(4, 1),
        op(0, 0, nm(0)), op(11, 0, u8(2), nm(6)),
        op(0, 0, nm(2)), op(12, 3, u32(0)), op(2, 3, u32(1), u8(0), u64(0)),
        op(35, 0, u8(1), u32(2), nm(1), nm(7)),
    ],
    "space": [
        op(0, 0, nm(0)), op(12, 1, u32(2)),
        op(33, 1, u8(0), u32(4096), u64(65536), u32(0)),
        op(36, 1, u8(0), u64(0), u32(3)), op(36, 1, u8(0), u64(0), u32(4)),
        op(37, 1, u8(0), u32(0), u8(1), u8(0), u32(100), u64(4096), u64(0)),
        op(3, 1, u32(0x9), u8(0), u32(12), u64(0), u32(0o100600), u32(0)),
    ],
    "special_nodes": [
        op(6, 0, u32(0o10644), u32(0), nm(5)), op(12, 1, u32(1)),
        op(6, 0, u32(0o140644), u32(0), nm(6)), op(12, 2, u32(0)),
        op(28, 0, u32(4)), op(15, 0),
        op(32, 0, u8(2), u8(1), u64(1), u8(0), u64(1)),
        op(0, 0, nm(0)), op(12, 3, u32(2)),
        op(27, 3, u8(0), u64(9), u64(0), u64(100), u32(1), u8(1), u32(0)),
        op(30, 0, u64(5)), op(38, 1, u8(39), short(bytes(32))), op(39, 0),
    ],
    "hostile_handles": [
        op(0, 0, nm(0)), op(12, 1, u32(0o10000000)), op(12, 1, u32(0)),
        op(13, 1, u8(0), u64(0), u32(4096), u32(0o40000)),
        op(14, 1, u8(0), u32(0), u32(0o40000), short(b"x"), u8(0)),
        op(0, 0, nm(1)), op(23, 2, u32(0)),
        op(13, 2, u8(1), u64(0), u32(4096), u32(0o40000)),
        op(12, 1, u32(1)),
    ],
}
write("fuse_session", [(k, b"".join(v)) for k, v in sorted(sessions.items())])


# ---- virtqueue -----------------------------------------------------------------------------
def desc(sel, addr, length, flags, nxt, raw_addr=None):
    out = u8(sel)
    if sel >= 0xF0:
        out += u64(raw_addr)
    elif sel < 0xE0:
        out += u32(addr)
    return out + u8(0) + u16(length) + u8(flags) + u16(nxt)


WRITABLE = 0x300000  # data-area offset of the harness's writable window
INIT_REQ = fuse(26, 0, INIT)


def vq(cfg, base, descs, indirect, heads, used_event=0, payload=INIT_REQ, avail=None):
    out = u8(cfg) + u16(base) + u8(len(descs)) + b"".join(descs)
    out += u8(len(indirect)) + b"".join(indirect)
    out += u8(len(heads)) + b"".join(u16(h) for h in heads)
    out += u8(0) if avail is None else u8(0xF0) + u16(avail)
    return out + u16(used_event) + payload


two = [desc(0, 0, len(INIT_REQ), 1, 1), desc(0, WRITABLE, 4096, 2, 0)]
size256 = 7 << 2
write("virtqueue", [
    ("simple", vq(size256, 0, two, [], [0])),
    ("event_idx_wrap", vq(size256 | 1, 65534, two, [], [0], used_event=65534)),
    ("hiprio_forget", vq(size256 | 2, 0, [desc(0, 0, 48, 0, 0)], [], [0],
                         payload=fuse(2, 1, u64(1)))),
    ("indirect", vq(size256, 0, [desc(0xE0, 0, 32, 4, 0)], two, [0])),
    ("loop", vq(size256, 0, [desc(0, 0, 40, 1, 1), desc(0, 64, 40, 1, 0)], [], [0])),
    ("out_of_memory_addr", vq(size256, 0, [desc(0xF0, 0, 40, 0, 0, raw_addr=1 << 40)], [], [0])),
    ("bad_avail_idx", vq(1 << 2, 0, two, [], [0], avail=1000)),
    ("many_heads", vq(3 << 2, 5, two, [], [0, 0, 1, 9], used_event=7)),
    ("nested_indirect", vq(size256, 0, [desc(0xE0, 0, 32, 4, 0)],
                           [desc(0xE0, 0, 32, 4, 1), desc(0, WRITABLE, 4096, 2, 0)], [0])),
])


# ---- journal_replay ------------------------------------------------------------------------
def record_fields(seq, read=100, written=50, ops=((15, 3),), version=1):
    out = u64(read) + u64(written) + u8(len(ops))
    for opcode, count in ops:
        out += u32(opcode) + u64(count) + u32(2) + u64(1) + u8(3) + u64(1) + u64(2) + u64(0) \
            + u32(opcode) + u64(12345)
    out += u64(0) + u32(version) + u8(0) + u64(seq) + u64(1700000000000)
    return out + u8(0) + u8(1) + u8(2) + u8(0) + u8(0)


def checksummed(payload):
    return u8(3) + u8(len(payload)) + payload


rec_json = json.dumps({"version": 1, "stream": "s", "seq": 4, "unix_ms": 1, "tenant": "t",
                       "volume": "v", "pod": "p", "traffic_class": "internal", "host": "h",
                       "totals": {"read_bytes": 1, "written_bytes": 2}}).encode()
write("journal_replay", [
    ("one", u8(1) + record_fields(1)),
    ("two_in_order", u8(1) + record_fields(1) + u8(1) + record_fields(2, read=200)),
    ("out_of_order", u8(1) + record_fields(5) + u8(1) + record_fields(3)),
    ("torn_tail", u8(1) + record_fields(1) + u8(2) + record_fields(2) + u16(30)),
    ("garbage_between", u8(0) + u8(6) + b"VKAJ\xff\xff" + u8(1) + record_fields(7)),
    ("bad_checksum", u8(4) + u8(len(rec_json)) + rec_json + u8(1) + record_fields(1)),
    ("json_payload", checksummed(rec_json)),
    ("hostile_json", checksummed(b'{"version":1,"seq":1,"totals":{"latency":{"15":[1,2]}}}')),
    ("high_seq", u8(1) + record_fields(0xFFFFFFFFFFFFFFF0)),
])


# ---- metrics_http --------------------------------------------------------------------------
def http(text, split=None):
    if split is None:
        return u8(0) + text
    return u8(1) + u16(split) + text


write("metrics_http", [
    ("get_metrics", http(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")),
    ("get_limits", http(b"GET /limits?x=1 HTTP/1.1\r\n\r\n")),
    ("put_limits", http(b"PUT /limits HTTP/1.1\r\nContent-Length: 30\r\n\r\nbytes=20MiB ops=500 ops-burst=5")),
    ("post_limits_split", http(b"POST /limits HTTP/1.1\r\ncontent-length: 17\r\n\r\nbytes-burst=4M&ops=off", split=20)),
    ("put_bad", http(b"PUT /limits HTTP/1.1\r\nContent-Length: 9\r\n\r\nbytes=-1k")),
    ("delete", http(b"DELETE /metrics HTTP/1.1\r\n\r\n")),
    ("not_found", http(b"GET /../etc HTTP/1.1\r\n\r\n")),
    ("huge_length", http(b"PUT /limits HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n")),
    ("no_end", http(b"GET /metrics HTTP/1.1\r\n")),
])

# ---- docker_plugin: per call a path selector, a mount-failure byte, a body kind and fields ---
# Paths: 0 Activate, 1 Capabilities, 2 Create, 3 Remove, 4 Get, 5 List, 6 Path, 7 Mount,
# 8 Unmount, 9 unknown. Names: 0 v1, 1 v2, 2 .., 3 a/b, 4 empty, 5 .hidden, 6 vol.ume_1-x.
def call(path, kind, *fields, fail=0):
    return u8(path) + u8(fail) + u8(kind) + b"".join(fields)


def text(s): return u8(0xF0) + short(s)


write("docker_plugin", [
    ("lifecycle", call(0, 0, u8(0)) + call(2, 2, u8(2), u8(0), text(b"10G"), u8(3), text(b"100"), u8(0))
     + call(4, 0, u8(0)) + call(7, 1, u8(0), text(b"abc123")) + call(7, 1, u8(0), text(b"abc123"))
     + call(3, 0, u8(0)) + call(8, 1, u8(0), text(b"abc123")) + call(8, 1, u8(0), text(b"abc123"))
     + call(3, 0, u8(0)) + call(5, 0, u8(0))),
    ("hostile_names", call(2, 0, u8(2)) + call(2, 0, u8(3)) + call(7, 1, u8(2), text(b"../x"))
     + call(2, 2, u8(1), u8(4), text(b"x"), u8(5))),
    ("failing_mount", call(2, 0, u8(1)) + call(7, 1, u8(1), text(b"id"), fail=0xFF)
     + call(7, 1, u8(1), text(b"id")) + call(8, 1, u8(1), text(b"id"), fail=0xFF)),
    ("raw_json", call(7, 3, short(b'{"Name":"v1","ID":"a","Extra":[1,2]}')) + u8(0xF0) + short(b"/VolumeDriver.Get") + u8(0) + u8(3) + short(b"{}")),
])
print("seeds written to", ROOT)
