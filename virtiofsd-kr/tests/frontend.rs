//! The daemon against a test vhost-user frontend: no guest, real FUSE messages.
//!
//! Each test starts the real binary on a fresh temporary directory, plays the VMM over its
//! socket (`vm_tests::frontend`), and checks FUSE semantics against the host directory,
//! the request guard (unknown opcodes, read-only export), malformed requests and hostile
//! descriptor chains (after each, the daemon must still answer a GETATTR), and the exit on
//! disconnect.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use common::{Daemon, EXIT_TIMEOUT, START_TIMEOUT};
use fuse_backend_rs::abi::fuse_abi::{
    FsOptions, GetattrIn, InHeader, InitOut, Opcode, OpenIn, OutHeader, ReadIn, WriteIn,
};
use vhost::vhost_user::VhostUserProtocolFeatures;
use vm_memory::{ByteValued, GuestAddress};
use vm_tests::frontend::{
    FrontendConfig, FrontendError, MemoryMessage, RawDescriptor, Reply, Segment, TestFrontend,
    DATA_BASE, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, HIPRIO_QUEUE, REQUEST_QUEUE,
};
use vm_tests::fuse::{
    cname, init_body, linux_init_flags, request, request_with_len, FuseError, FuseReply,
    FuseSession, IN_HEADER_LEN, OUT_HEADER_LEN, REPLY_SPACE, ROOT,
};

/// How long to wait for a chain the daemon may legitimately never return.
const SHORT: Duration = Duration::from_secs(2);

fn errno_of<T: std::fmt::Debug>(r: Result<T, FuseError>) -> i32 {
    match r {
        Err(FuseError::Errno(e)) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Sends raw request bytes and parses the reply to `unique`, which must be an error reply.
fn expect_error_reply(s: &mut FuseSession, req: &[u8], unique: u64) -> i32 {
    let reply = s
        .send_raw(req, REPLY_SPACE)
        .expect("the daemon returned the chain");
    let parsed = FuseReply::from_reply(&reply, unique)
        .unwrap_or_else(|e| panic!("reply to {:02x?}: {e}", &req[..req.len().min(64)]));
    assert_ne!(
        parsed.errno(),
        0,
        "request {:02x?} succeeded",
        &req[..req.len().min(64)]
    );
    parsed.errno()
}

fn getattr_request(unique: u64, nodeid: u64) -> Vec<u8> {
    request(
        Opcode::Getattr as u32,
        unique,
        nodeid,
        &[GetattrIn::default().as_slice()],
    )
}

// ---- negotiation and round trips ----------------------------------------------------------

#[test]
fn init_negotiates_like_qemu_and_fuse_7() {
    let daemon = Daemon::start(&[]);
    let frontend = daemon.connect();
    let protocol = frontend.acked_protocol_features();
    for wanted in [
        VhostUserProtocolFeatures::MQ,
        VhostUserProtocolFeatures::REPLY_ACK,
        VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS,
        VhostUserProtocolFeatures::BACKEND_REQ,
    ] {
        assert!(
            protocol.contains(wanted),
            "{wanted:?} not negotiated: {protocol:?}"
        );
    }
    assert!(frontend.has_backend_channel());
    assert_ne!(
        frontend.acked_features() & (1 << 29),
        0,
        "EVENT_IDX not negotiated"
    );

    let mut s = FuseSession::new(frontend);
    let init = s.init().expect("FUSE_INIT");
    assert_eq!(init.major, 7);
    assert!(init.minor >= 27, "minor {}", init.minor);
    assert!(init.max_write > 0);
    let attr = s.getattr(ROOT).expect("GETATTR root").attr;
    let host = std::fs::metadata(daemon.shared.path()).unwrap();
    assert_eq!(attr.ino, host.ino());
    assert_eq!(attr.mode & libc::S_IFMT, libc::S_IFDIR);
}

#[test]
fn init_versions_and_flags() {
    let daemon = Daemon::start(&[]);
    let mut s = FuseSession::new(daemon.connect());
    // A newer major: the daemon answers with its own 7.x and waits for a 7.x INIT.
    let u = s.unique();
    let reply = s
        .send_raw(
            &request(
                Opcode::Init as u32,
                u,
                0,
                &[&init_body(8, 0, FsOptions::empty())],
            ),
            REPLY_SPACE,
        )
        .unwrap();
    let out: InitOut = FuseReply::from_reply(&reply, u)
        .unwrap()
        .ok()
        .unwrap()
        .body_as()
        .unwrap();
    assert_eq!(out.major, 7);
    // An older major is refused.
    let u = s.unique();
    let req = request(
        Opcode::Init as u32,
        u,
        0,
        &[&init_body(6, 0, FsOptions::empty())],
    );
    assert_eq!(expect_error_reply(&mut s, &req, u), libc::EPROTO);
    // INIT_EXT announced but its second half missing.
    let u = s.unique();
    let mut body = init_body(7, 37, linux_init_flags());
    body.truncate(16);
    let req = request(Opcode::Init as u32, u, 0, &[&body]);
    expect_error_reply(&mut s, &req, u);
    // What Linux sends.
    let out = s.init().expect("INIT with Linux flags");
    let flags = u64::from(out.flags) | (u64::from(out.flags2) << 32);
    assert_eq!(
        flags & !linux_init_flags().bits(),
        0,
        "the daemon enabled flags the guest did not offer: {flags:#x}"
    );
    // An old 7.12 kernel: the short reply still parses.
    let out = s
        .init_with(7, 12, FsOptions::ASYNC_READ)
        .expect("INIT 7.12");
    assert_eq!(out.major, 7);
    s.getattr(ROOT).expect("GETATTR");
}

#[test]
fn init_with_linux_flags_negotiates_large_requests() {
    let daemon = Daemon::start(&[]);
    let mut s = FuseSession::new(daemon.connect());
    let out = s.init().expect("INIT with Linux flags");
    let flags = FsOptions::from_bits_truncate(u64::from(out.flags) | (u64::from(out.flags2) << 32));
    assert!(
        out.max_write >= 1 << 20,
        "max_write {} ({flags:?})",
        out.max_write
    );
    assert!(out.max_pages >= 256, "max_pages {}", out.max_pages);
    for wanted in [
        FsOptions::BIG_WRITES,
        FsOptions::MAX_PAGES,
        FsOptions::ASYNC_READ,
        FsOptions::PARALLEL_DIROPS,
    ] {
        assert!(flags.contains(wanted), "{wanted:?} not enabled: {flags:?}");
    }
}

#[test]
fn add_mem_region_without_event_idx_or_reply_ack_also_serves() {
    let daemon = Daemon::start(&[]);
    let frontend = daemon.connect_with(FrontendConfig {
        memory_message: MemoryMessage::AddMemRegion,
        event_idx: false,
        reply_ack: false,
        backend_req: false,
        queue_size: 64,
        ..Default::default()
    });
    assert_eq!(frontend.acked_features() & (1 << 29), 0);
    let mut s = FuseSession::new(frontend);
    s.init().expect("FUSE_INIT");
    // More requests than the queue has entries: the rings wrap.
    for _ in 0..150 {
        s.getattr(ROOT).expect("GETATTR");
    }
}

#[test]
fn create_write_read_getattr_round_trip_against_host() {
    let daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let (entry, open) = s
        .create(ROOT, "hello.txt", libc::O_RDWR, 0o644)
        .expect("CREATE");
    assert_ne!(entry.nodeid, 0);
    assert_eq!(entry.attr.mode & libc::S_IFMT, libc::S_IFREG);

    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(
        s.write(entry.nodeid, open.fh, 0, &data).expect("WRITE"),
        10_000
    );
    assert_eq!(std::fs::read(daemon.host("hello.txt")).unwrap(), data);

    // The host changes the file; the guest reads the change.
    std::fs::write(daemon.host("hello.txt"), b"written by the host").unwrap();
    let back = s.read(entry.nodeid, open.fh, 0, 4096).expect("READ");
    assert_eq!(back, b"written by the host");
    let back = s
        .read(entry.nodeid, open.fh, 8, 4096)
        .expect("READ at offset");
    assert_eq!(back, b"by the host");

    let attr = s.getattr(entry.nodeid).expect("GETATTR").attr;
    let host = std::fs::metadata(daemon.host("hello.txt")).unwrap();
    assert_eq!(attr.size, host.len());
    assert_eq!(attr.ino, host.ino());
    assert_eq!(attr.mode & 0o777, host.mode() & 0o777);
    s.release(entry.nodeid, open.fh).expect("RELEASE");
}

#[test]
fn mkdir_readdir_unlink_forget_against_host() {
    let daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let dir = s.mkdir(ROOT, "sub", 0o755).expect("MKDIR");
    assert!(daemon.host("sub").is_dir());
    assert_eq!(
        dir.attr.ino,
        std::fs::metadata(daemon.host("sub")).unwrap().ino()
    );

    let mut names: Vec<String> = (0..40)
        .map(|i| format!("file-{i:02}-{}", "x".repeat(i)))
        .collect();
    for n in &names {
        std::fs::write(daemon.host("sub").join(n), n.as_bytes()).unwrap();
    }
    let entries = s.list_dir(dir.nodeid).expect("READDIR");
    let mut listed: Vec<String> = entries
        .iter()
        .map(|e| e.name_str())
        .filter(|n| n != "." && n != "..")
        .collect();
    listed.sort();
    names.sort();
    assert_eq!(
        listed, names,
        "READDIR spans several calls and lists every file once"
    );
    // `fuse_dirent.ino` is the host's d_ino, the st_ino LOOKUP reports for the same name.
    for e in entries.iter().filter(|e| e.name_str().starts_with("file-")) {
        let looked = s
            .lookup(dir.nodeid, &e.name_str())
            .expect("LOOKUP listed name");
        let host = std::fs::metadata(daemon.host("sub").join(e.name_str())).unwrap();
        assert_eq!(looked.attr.ino, host.ino());
        assert_eq!(
            e.ino,
            host.ino(),
            "{}: dirent ino is not the host inode",
            e.name_str()
        );
        assert_eq!(e.type_, libc::DT_REG as u32, "{}: d_type", e.name_str());
    }

    let victim = names[3].clone();
    let looked = s.lookup(dir.nodeid, &victim).expect("LOOKUP");
    s.unlink(dir.nodeid, &victim).expect("UNLINK");
    assert!(!daemon.host("sub").join(&victim).exists());
    assert_eq!(errno_of(s.lookup(dir.nodeid, &victim)), libc::ENOENT);
    assert_eq!(s.forget(looked.nodeid, 1).expect("FORGET returned"), 0);
    s.assert_alive().expect("alive after FORGET");
}

#[test]
fn readdir_inode_numbers_match_stat() {
    let daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], &[], |d| {
        std::fs::write(d.join("a"), b"a").unwrap();
    });
    let mut s = daemon.session();
    let entries = s.list_dir(ROOT).expect("READDIR");
    let a = entries.iter().find(|e| e.name == b"a").expect("listed");
    let node = s.lookup(ROOT, "a").unwrap().nodeid;
    let getattr = s.getattr(node).unwrap().attr.ino;
    // In the guest: getdents d_ino must equal stat st_ino (find -inum, du, ls -i rely on it).
    assert_eq!(a.ino, getattr);
    assert_eq!(a.ino, std::fs::metadata(daemon.host("a")).unwrap().ino());
}

#[test]
fn lookup_and_statfs_match_host() {
    let daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], &[], |dir| {
        std::fs::write(dir.join("data.bin"), vec![7u8; 12_345]).unwrap();
    });
    let mut s = daemon.session();
    let e = s.lookup(ROOT, "data.bin").expect("LOOKUP");
    let host = std::fs::metadata(daemon.host("data.bin")).unwrap();
    assert_eq!(e.attr.size, 12_345);
    assert_eq!(e.attr.ino, host.ino());
    assert_eq!(errno_of(s.lookup(ROOT, "missing")), libc::ENOENT);

    let st = s.statfs(ROOT).expect("STATFS");
    let host = nix::sys::statvfs::statvfs(daemon.shared.path()).unwrap();
    assert_eq!(u64::from(st.namelen), host.name_max() as u64);
    assert_eq!(u64::from(st.bsize), host.block_size() as u64);
    assert_eq!(st.blocks, host.blocks() as u64);
}

#[test]
fn header_split_across_descriptors_is_reassembled() {
    let daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let unique = s.unique();
    let req = getattr_request(unique, ROOT);
    let (a, rest) = req.split_at(7);
    let (b, c) = rest.split_at(20);
    let reply = s
        .frontend()
        .send_chain(REQUEST_QUEUE, &[a, b, c], &[8, 200])
        .expect("chain returned");
    let parsed = FuseReply::from_reply(&reply, unique).expect("reply");
    assert_eq!(parsed.errno(), 0);
    assert_eq!(
        parsed.body.len(),
        std::mem::size_of::<fuse_backend_rs::abi::fuse_abi::AttrOut>()
    );
}

// ---- the request guard --------------------------------------------------------------------

#[test]
fn unknown_opcodes_get_enosys() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    for opcode in [0u32, 7, 19, 51, 999, 4096, 1_048_576, 436_207_616, u32::MAX] {
        let unique = s.unique();
        let req = request(opcode, unique, ROOT, &[&[0u8; 64]]);
        assert_eq!(
            expect_error_reply(&mut s, &req, unique),
            libc::ENOSYS,
            "opcode {opcode}"
        );
    }
    s.assert_alive().expect("alive");
    daemon.assert_running("unknown opcodes");
}

/// A daemon serving a `--readonly` export that holds `ro.txt` ("read-only content").
fn readonly_daemon() -> Daemon {
    Daemon::start_with(
        &["--sandbox", "none", "--seccomp", "none"],
        &["--readonly"],
        |dir| std::fs::write(dir.join("ro.txt"), b"read-only content").unwrap(),
    )
}

#[test]
fn readonly_export_refuses_modifications_and_serves_reads() {
    let mut daemon = readonly_daemon();
    let mut s = daemon.session();
    assert_eq!(
        errno_of(s.create(ROOT, "new.txt", libc::O_RDWR, 0o644)),
        libc::EROFS
    );
    assert_eq!(errno_of(s.mkdir(ROOT, "newdir", 0o755)), libc::EROFS);
    let e = s.lookup(ROOT, "ro.txt").expect("LOOKUP works");
    assert_eq!(errno_of(s.open(e.nodeid, libc::O_RDWR)), libc::EROFS);
    assert_eq!(errno_of(s.open(e.nodeid, libc::O_WRONLY)), libc::EROFS);
    assert_eq!(
        errno_of(s.open(e.nodeid, libc::O_RDONLY | libc::O_TRUNC)),
        libc::EROFS
    );
    let fh = s.open(e.nodeid, libc::O_RDONLY).expect("OPEN O_RDONLY").fh;
    assert_eq!(
        errno_of(s.write(e.nodeid, fh, 0, b"overwrite")),
        libc::EROFS
    );
    assert_eq!(errno_of(s.unlink(ROOT, "ro.txt")), libc::EROFS);
    assert_eq!(
        s.read(e.nodeid, fh, 0, 4096).expect("READ"),
        b"read-only content"
    );
    assert!(s
        .list_dir(ROOT)
        .expect("READDIR")
        .iter()
        .any(|d| d.name == b"ro.txt"));
    s.release(e.nodeid, fh).expect("RELEASE");

    let mut names: Vec<_> = std::fs::read_dir(daemon.shared.path())
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["ro.txt"], "the host directory is unchanged");
    assert_eq!(
        std::fs::read(daemon.host("ro.txt")).unwrap(),
        b"read-only content"
    );
    daemon.assert_running("read-only refusals");
}

/// The guard reads the in-header and OPEN's flags from wherever the guest's descriptors split
/// them: a write-open cut at any byte of the header or of `fuse_open_in` is still refused on
/// a read-only export, and a read-only open cut the same way is still served.
#[test]
fn readonly_open_split_anywhere_is_judged_on_its_flags() {
    let mut daemon = readonly_daemon();
    let mut s = daemon.session();
    let node = s.lookup(ROOT, "ro.txt").expect("LOOKUP").nodeid;
    let open_len = IN_HEADER_LEN + std::mem::size_of::<OpenIn>();
    for cut in 1..open_len {
        for (flags, refused) in [(libc::O_RDWR, true), (libc::O_RDONLY, false)] {
            let unique = s.unique();
            let arg = OpenIn {
                flags: flags as u32,
                fuse_flags: 0,
            };
            let req = request(Opcode::Open as u32, unique, node, &[arg.as_slice()]);
            let (a, b) = req.split_at(cut);
            let reply = s
                .frontend()
                .send_chain(REQUEST_QUEUE, &[a, b], &[REPLY_SPACE])
                .expect("chain returned");
            let parsed = FuseReply::from_reply(&reply, unique).expect("reply");
            if refused {
                assert_eq!(parsed.errno(), libc::EROFS, "O_RDWR cut at byte {cut}");
            } else {
                assert_eq!(parsed.errno(), 0, "O_RDONLY cut at byte {cut}");
                let open: fuse_backend_rs::abi::fuse_abi::OpenOut =
                    parsed.body_as().expect("fuse_open_out");
                let fh = open.fh;
                s.release(node, fh).expect("RELEASE");
            }
        }
    }
    s.assert_alive().expect("alive");
    daemon.assert_running("split OPENs on a read-only export");
}

// ---- malformed FUSE requests ---------------------------------------------------------------

#[test]
fn truncated_header_is_not_answered_and_does_not_hurt() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let full = getattr_request(77, ROOT);
    for cut in [0usize, 1, 10, IN_HEADER_LEN - 1] {
        let reply = if cut == 0 {
            // A zero-length readable descriptor.
            let addr = s.frontend().alloc(REPLY_SPACE).unwrap();
            let head = s
                .frontend()
                .post_chain(
                    REQUEST_QUEUE,
                    &[
                        Segment::readable(GuestAddress(DATA_BASE), 0),
                        Segment::writable(addr, REPLY_SPACE as u32),
                    ],
                )
                .unwrap();
            let used = s
                .frontend()
                .wait_used(REQUEST_QUEUE, SHORT)
                .expect("returned");
            assert_eq!(used.id, u32::from(head));
            used.len
        } else {
            s.send_raw(&full[..cut], REPLY_SPACE).expect("returned").len
        };
        // Nothing to answer to: no unique to reply with.
        assert_eq!(reply, 0, "a {cut}-byte request was answered");
        s.assert_alive().expect("alive after truncated header");
    }
    daemon.assert_running("truncated headers");
}

/// Requests too broken to answer (a cut header; a writable descriptor past the end of
/// memory), sent in a loop, leave one warning in the daemon's log, not one each: a guest
/// cannot flood the host's logs with them.
#[test]
fn broken_requests_in_a_loop_log_one_warning() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let full = getattr_request(78, ROOT);
    for _ in 0..40 {
        assert_eq!(
            s.send_raw(&full[..10], REPLY_SPACE).expect("returned").len,
            0
        );
        let (req, len) = staged_getattr(s.frontend());
        s.frontend()
            .post_chain(
                REQUEST_QUEUE,
                &[
                    Segment::readable(req, len),
                    Segment::writable(GuestAddress(u64::MAX - 7), REPLY_SPACE as u32),
                ],
            )
            .unwrap();
        let used = s
            .frontend()
            .wait_used(REQUEST_QUEUE, SHORT)
            .expect("returned");
        assert_eq!(used.len, 0);
    }
    s.assert_alive().expect("alive");
    let stderr = daemon.stderr();
    let warnings = stderr
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("dropping request"))
        .count();
    assert_eq!(warnings, 1, "80 broken requests, log:\n{stderr}");
    daemon.assert_running("broken requests in a loop");
}

/// Requests a guest can send in a loop that fuse-backend-rs answers with an error and used
/// to log at error level each (a GETATTR of a node id that does not exist, a LOOKUP whose
/// name has no NUL, with the request's 4,000 bytes in the line): the daemon keeps 10 such
/// lines a minute, then says once that it logs the rest at debug level, and cuts each line.
#[test]
fn guest_errors_in_a_loop_do_not_fill_the_log() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    for _ in 0..50 {
        assert_ne!(errno_of(s.getattr(987_654)), 0);
        let unique = s.unique();
        let req = request(Opcode::Lookup as u32, unique, ROOT, &[&[b'x'; 4000]]);
        assert_ne!(expect_error_reply(&mut s, &req, unique), 0);
    }
    s.assert_alive().expect("alive");
    let stderr = daemon.stderr();
    let complaints = stderr
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .count();
    assert!(complaints <= 11, "100 failed requests, log:\n{stderr}");
    let longest = stderr.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 1_500, "a {longest}-byte log line");
    daemon.assert_running("guest errors in a loop");
}

/// Our own warnings and errors, not only the FUSE library's, are paced per call site: an
/// INIT without the POSIX ACL options, refused under `--posix-acl=always`, logs an error each
/// time; a guest repeating it gets ten of them a minute into the log and one notice.
#[test]
fn a_refusal_our_code_logs_repeated_by_the_guest_stays_ten_lines_and_a_notice() {
    let mut daemon = Daemon::start(&["--posix-acl=always"]);
    let mut s = FuseSession::new(daemon.connect());
    for _ in 0..40 {
        let u = s.unique();
        let req = request(
            Opcode::Init as u32,
            u,
            0,
            &[&init_body(7, 31, FsOptions::ASYNC_READ)],
        );
        assert_eq!(expect_error_reply(&mut s, &req, u), libc::EPROTO);
    }
    // With the options, the same session still comes up.
    let acl = FsOptions::POSIX_ACL | FsOptions::DONT_MASK | FsOptions::SETXATTR_EXT;
    let out = s
        .init_with(7, 38, linux_init_flags() | acl)
        .expect("INIT with the ACL options");
    assert_eq!(out.major, 7);
    s.getattr(ROOT).expect("GETATTR");
    let stderr = daemon.stderr();
    let refusals = stderr
        .lines()
        .filter(|l| l.contains("does not support POSIX ACLs"))
        .count();
    assert_eq!(refusals, 10, "40 refused INITs, log:\n{stderr}");
    let notices = stderr
        .lines()
        .filter(|l| l.contains("Z  WARN 10 messages from ") && l.contains("export.rs"))
        .count();
    assert_eq!(notices, 1, "log:\n{stderr}");
    daemon.assert_running("repeated refused INITs");
}

#[test]
fn lying_len_field_gets_an_error_reply() {
    let mut daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], &[], |d| {
        std::fs::write(d.join("abc"), b"x").unwrap();
    });
    let mut s = daemon.session();
    let name = cname("abc");
    let true_len = (IN_HEADER_LEN + name.len()) as u32;
    // Sanity: with the true length, the lookup works.
    let u = s.unique();
    let ok = s
        .send_raw(
            &request_with_len(Opcode::Lookup as u32, u, ROOT, true_len, &[&name]),
            REPLY_SPACE,
        )
        .unwrap();
    assert_eq!(FuseReply::from_reply(&ok, u).unwrap().errno(), 0);

    for (what, len) in [
        ("a little too big", true_len + 1),
        ("much too big", true_len + 100_000),
        ("u32::MAX", u32::MAX),
        ("shorter than the header", 8),
        ("zero", 0),
        ("cutting the name before its NUL", true_len - 2),
    ] {
        let u = s.unique();
        let req = request_with_len(Opcode::Lookup as u32, u, ROOT, len, &[&name]);
        let errno = expect_error_reply(&mut s, &req, u);
        assert!(
            [libc::EINVAL, libc::ENOMEM, libc::EIO].contains(&errno),
            "len {what}: errno {errno}"
        );
        s.assert_alive()
            .unwrap_or_else(|e| panic!("dead after len {what}: {e}"));
    }
    daemon.assert_running("lying len fields");
}

#[test]
fn lookup_name_without_nul_is_einval() {
    let daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], &[], |d| {
        std::fs::write(d.join("abc"), b"x").unwrap();
    });
    let mut s = daemon.session();
    for name in [&b"abc"[..], b"", b"a\0b\0", b"../abc\0", b"sub/abc\0"] {
        let u = s.unique();
        let req = request(Opcode::Lookup as u32, u, ROOT, &[name]);
        let errno = expect_error_reply(&mut s, &req, u);
        assert!(
            errno == libc::EINVAL || errno == libc::ENOENT,
            "name {name:?}: errno {errno}"
        );
        s.assert_alive().expect("alive");
    }
}

#[test]
fn lookup_dotdot_at_the_root_returns_the_root() {
    let daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let root_ino = std::fs::metadata(daemon.shared.path()).unwrap().ino();
    let parent_ino = std::fs::metadata(daemon.shared.path().parent().unwrap())
        .unwrap()
        .ino();
    assert_ne!(root_ino, parent_ino);

    let e = s.lookup(ROOT, "..").expect("LOOKUP ..");
    assert_eq!(
        e.attr.ino, root_ino,
        "'..' of the root escaped to its parent"
    );
    assert_eq!(e.nodeid, ROOT);
    let e = s.lookup(ROOT, ".").expect("LOOKUP .");
    assert_eq!(e.attr.ino, root_ino);

    // From a subdirectory, "..", then ".." again, still stays inside.
    let sub = s.mkdir(ROOT, "d", 0o755).expect("MKDIR");
    let up = s.lookup(sub.nodeid, "..").expect("LOOKUP d/..");
    assert_eq!(up.attr.ino, root_ino);
    let up2 = s.lookup(up.nodeid, "..").expect("LOOKUP d/../..");
    assert_eq!(
        up2.attr.ino, root_ino,
        "'..' of the root (reached via d/..) escaped"
    );
}

#[test]
fn forged_node_ids_and_handles_are_refused() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    for node in [0u64, 2, 0xdead_beef, u64::MAX, 1 << 63] {
        let u = s.unique();
        let errno = expect_error_reply(&mut s, &getattr_request(u, node), u);
        assert!(
            [libc::EBADF, libc::ENOENT, libc::EINVAL, libc::ESTALE].contains(&errno),
            "GETATTR of forged node {node:#x}: errno {errno}"
        );
        assert!(
            s.lookup(node, "x").is_err(),
            "LOOKUP under forged node {node:#x}"
        );
    }
    let (e, open) = s.create(ROOT, "f", libc::O_RDWR, 0o600).expect("CREATE");
    for fh in [open.fh + 1000, u64::MAX] {
        assert!(
            matches!(s.read(e.nodeid, fh, 0, 16), Err(FuseError::Errno(_))),
            "READ with forged fh {fh:#x}"
        );
        assert!(
            matches!(s.write(e.nodeid, fh, 0, b"zz"), Err(FuseError::Errno(_))),
            "WRITE with forged fh {fh:#x}"
        );
    }
    assert_eq!(std::fs::metadata(daemon.host("f")).unwrap().len(), 0);
    s.assert_alive().expect("alive");
    daemon.assert_running("forged ids");
}

#[test]
fn huge_read_size_is_bounded_by_the_reply_space() {
    let mut daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], &[], |d| {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(d.join("big"), data).unwrap();
    });
    let expected = std::fs::read(daemon.host("big")).unwrap();
    let mut s = daemon.session();
    let e = s.lookup(ROOT, "big").expect("LOOKUP");
    let fh = s.open(e.nodeid, libc::O_RDONLY).expect("OPEN").fh;
    for (size, space) in [
        (u32::MAX, OUT_HEADER_LEN + 4096),
        (u32::MAX, OUT_HEADER_LEN + 100),
        (1 << 30, OUT_HEADER_LEN + (1 << 20)),
        (u32::MAX, OUT_HEADER_LEN),
    ] {
        match s.read_with_space(e.nodeid, fh, 0, size, space) {
            Ok(data) => {
                assert!(
                    data.len() <= space - OUT_HEADER_LEN,
                    "{} bytes in {space}",
                    data.len()
                );
                assert_eq!(
                    data,
                    expected[..data.len()],
                    "READ size {size} space {space}"
                );
            }
            Err(FuseError::Errno(_)) => {}
            Err(other) => panic!("READ size {size} space {space}: {other}"),
        }
        s.assert_alive().expect("alive after huge READ");
    }
    // A large but honest READ (space for all it asks) returns the whole file.
    let data = s
        .read_with_space(e.nodeid, fh, 0, 1 << 20, OUT_HEADER_LEN + (1 << 20))
        .expect("1 MiB READ of a 20 kB file");
    assert_eq!(data, expected);
    // Reply space smaller than a reply header.
    let u = s.unique();
    let arg = ReadIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    let req = request(Opcode::Read as u32, u, e.nodeid, &[arg.as_slice()]);
    let r = s.send_raw(&req, 8).expect("chain returned");
    assert!(r.len <= 8);
    s.assert_alive().expect("alive");
    daemon.assert_running("huge reads");
}

/// WRITEs `data` at `offset`: the header and `WriteIn` in one descriptor, the payload in
/// descriptors of `piece` bytes (the last one shorter); what the reply says was written.
fn write_in_pieces(
    s: &mut FuseSession,
    node: u64,
    fh: u64,
    offset: u64,
    data: &[u8],
    piece: usize,
) -> usize {
    let (u, req) = s.write_request(node, fh, offset, data.len() as u32, data);
    let head_len = req.len() - data.len();
    let mut parts: Vec<&[u8]> = vec![&req[..head_len]];
    parts.extend(req[head_len..].chunks(piece));
    assert_eq!(parts.len(), 1 + data.len().div_ceil(piece));
    let reply = s
        .frontend()
        .send_chain(REQUEST_QUEUE, &parts, &[REPLY_SPACE])
        .expect("WRITE returned");
    let out: fuse_backend_rs::abi::fuse_abi::WriteOut = FuseReply::from_reply(&reply, u)
        .unwrap()
        .ok()
        .unwrap()
        .body_as()
        .unwrap();
    out.size as usize
}

#[test]
fn large_io_scattered_over_many_descriptors() {
    let daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let (e, open) = s
        .create(ROOT, "scattered", libc::O_RDWR, 0o644)
        .expect("CREATE");
    let data: Vec<u8> = (0..128 * 1024u32).map(|i| (i * 7 % 256) as u8).collect();
    // WRITE: header + WriteIn in one descriptor, the payload in 32 descriptors of 4 KiB.
    let written = write_in_pieces(&mut s, e.nodeid, open.fh, 0, &data, 4096);
    assert_eq!(written, data.len());
    assert_eq!(std::fs::read(daemon.host("scattered")).unwrap(), data);

    // READ: the reply header in its own 16-byte descriptor, the data over 32 of 4 KiB.
    let u = s.unique();
    let arg = ReadIn {
        fh: open.fh,
        size: data.len() as u32,
        ..Default::default()
    };
    let req = request(Opcode::Read as u32, u, e.nodeid, &[arg.as_slice()]);
    let mut writable = vec![OUT_HEADER_LEN];
    writable.extend(std::iter::repeat_n(4096, 32));
    let reply = s
        .frontend()
        .send_chain(REQUEST_QUEUE, &[&req], &writable)
        .expect("READ returned");
    let parsed = FuseReply::from_reply(&reply, u).unwrap().ok().unwrap();
    assert_eq!(parsed.body, data);
    // Odd-sized pieces: 1000-byte descriptors.
    let u = s.unique();
    let req = request(Opcode::Read as u32, u, e.nodeid, &[arg.as_slice()]);
    let writable = vec![1000; (data.len() + OUT_HEADER_LEN).div_ceil(1000)];
    let reply = s
        .frontend()
        .send_chain(REQUEST_QUEUE, &[&req], &writable)
        .expect("READ returned");
    assert_eq!(
        FuseReply::from_reply(&reply, u).unwrap().ok().unwrap().body,
        data
    );
}

/// WRITE payloads and READ replies spread over 1 to 12 descriptors of odd sizes, the reply
/// header split too: every byte lands where it belongs (few slices are passed on from the
/// stack, more from the heap; both paths and the step between them).
#[test]
fn io_over_one_to_twelve_odd_descriptors_keeps_every_byte() {
    let daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let (e, open) = s
        .create(ROOT, "pieces", libc::O_RDWR, 0o644)
        .expect("CREATE");
    for pieces in 1..=12usize {
        let data: Vec<u8> = (0..pieces * 997).map(|i| (i * 31 + pieces) as u8).collect();
        let offset = (pieces * 5003) as u64;
        let written = write_in_pieces(&mut s, e.nodeid, open.fh, offset, &data, 997);
        assert_eq!(written, data.len(), "{pieces} pieces");
        let host = std::fs::read(daemon.host("pieces")).unwrap();
        assert_eq!(
            &host[offset as usize..offset as usize + data.len()],
            &data[..],
            "WRITE over {pieces} payload descriptors"
        );

        let u = s.unique();
        let arg = ReadIn {
            fh: open.fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        let req = request(Opcode::Read as u32, u, e.nodeid, &[arg.as_slice()]);
        // The 16-byte reply header over a 5-byte and an 11-byte descriptor, then the data.
        let mut writable = vec![5, 11];
        writable.extend(std::iter::repeat_n(997, pieces));
        let reply = s
            .frontend()
            .send_chain(REQUEST_QUEUE, &[&req], &writable)
            .expect("READ returned");
        let parsed = FuseReply::from_reply(&reply, u).unwrap().ok().unwrap();
        assert_eq!(parsed.body, data, "READ over {} descriptors", pieces + 2);
    }
}

/// However a GETATTR, READ or WRITE and its reply space are cut into descriptors (up to 7
/// readable, 1-8 writable, odd sizes), it is answered as if each were one descriptor: the
/// reader and the writer of a request are built from one walk of the chain, and this holds
/// each to exactly its own part.
#[test]
fn any_cut_of_a_request_and_its_reply_space_is_served_alike() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use std::cell::RefCell;

    let content: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let host_content = content.clone();
    let daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], &[], |dir| {
        std::fs::write(dir.join("cut.bin"), &host_content).unwrap()
    });
    let session = RefCell::new(daemon.session());
    let (node, fh) = {
        let mut s = session.borrow_mut();
        let node = s.lookup(ROOT, "cut.bin").expect("LOOKUP").nodeid;
        (node, s.open(node, libc::O_RDWR).expect("OPEN").fh)
    };
    let expected = RefCell::new(content);
    let strategy = (
        0..3u8,
        0u64..15_000,
        1usize..5_000,
        proptest::collection::vec(1usize..120, 0..6),
        proptest::collection::vec(1usize..3_000, 0..7),
    );
    let mut runner = TestRunner::new(Config {
        cases: 300,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&strategy, |(kind, offset, size, cuts, reply_cuts)| {
        let mut s = session.borrow_mut();
        let unique = s.unique();
        let payload: Vec<u8> = (0..size).map(|i| (i as u64 * 13 + offset) as u8).collect();
        let (req, reply_len) = match kind {
            0 => (
                getattr_request(unique, node),
                OUT_HEADER_LEN + std::mem::size_of::<fuse_backend_rs::abi::fuse_abi::AttrOut>(),
            ),
            1 => {
                let arg = ReadIn {
                    fh,
                    offset,
                    size: size as u32,
                    ..Default::default()
                };
                let req = request(Opcode::Read as u32, unique, node, &[arg.as_slice()]);
                (req, OUT_HEADER_LEN + size)
            }
            _ => {
                let arg = WriteIn {
                    fh,
                    offset,
                    size: size as u32,
                    ..Default::default()
                };
                let req = request(
                    Opcode::Write as u32,
                    unique,
                    node,
                    &[arg.as_slice(), &payload],
                );
                (req, OUT_HEADER_LEN + 8)
            }
        };
        // The request cut at the given lengths (the rest in a last descriptor).
        let mut readable: Vec<&[u8]> = Vec::new();
        let mut rest = &req[..];
        for cut in cuts {
            if cut >= rest.len() {
                break;
            }
            let (a, b) = rest.split_at(cut);
            readable.push(a);
            rest = b;
        }
        readable.push(rest);
        // Reply space of the given lengths, then whatever is still missing.
        let mut writable = reply_cuts;
        let posted: usize = writable.iter().sum();
        if posted < reply_len {
            writable.push(reply_len - posted);
        }
        let reply = s
            .frontend()
            .send_chain(REQUEST_QUEUE, &readable, &writable)
            .map_err(|e| TestCaseError::fail(format!("chain not returned: {e}")))?;
        let parsed = FuseReply::from_reply(&reply, unique)
            .map_err(|e| TestCaseError::fail(format!("reply: {e}")))?;
        prop_assert_eq!(
            parsed.errno(),
            0,
            "kind {} cut {:?}",
            kind,
            readable.iter().map(|r| r.len()).collect::<Vec<_>>()
        );
        let mut content = expected.borrow_mut();
        match kind {
            0 => {
                let attr: fuse_backend_rs::abi::fuse_abi::AttrOut = parsed
                    .body_as()
                    .map_err(|e| TestCaseError::fail(format!("GETATTR body: {e}")))?;
                prop_assert_eq!(attr.attr.size, content.len() as u64);
            }
            1 => {
                let start = (offset as usize).min(content.len());
                let end = (start + size).min(content.len());
                prop_assert_eq!(&parsed.body[..], &content[start..end]);
            }
            _ => {
                let out: fuse_backend_rs::abi::fuse_abi::WriteOut = parsed
                    .body_as()
                    .map_err(|e| TestCaseError::fail(format!("WRITE body: {e}")))?;
                prop_assert_eq!(out.size as usize, size);
                let end = offset as usize + size;
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[offset as usize..end].copy_from_slice(&payload);
            }
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    assert_eq!(
        std::fs::read(daemon.host("cut.bin")).unwrap(),
        *expected.borrow(),
        "the file holds every WRITE"
    );
}

#[test]
fn write_declaring_more_than_its_payload_writes_at_most_the_payload() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let (e, open) = s.create(ROOT, "w", libc::O_RDWR, 0o600).expect("CREATE");
    for declared in [11u32, 4096, 1 << 20, u32::MAX] {
        let payload = b"0123456789";
        let (u, req) = s.write_request(e.nodeid, open.fh, 0, declared, payload);
        let reply = s.send_raw(&req, REPLY_SPACE).expect("returned");
        let parsed = FuseReply::from_reply(&reply, u).expect("well-formed reply");
        if parsed.errno() == 0 {
            let out: fuse_backend_rs::abi::fuse_abi::WriteOut = parsed.body_as().unwrap();
            assert!(
                out.size <= 10,
                "declared {declared}: reported {} written",
                out.size
            );
        }
        let host = std::fs::read(daemon.host("w")).unwrap();
        assert!(
            host.len() <= 10,
            "declared {declared}: host file is {} bytes",
            host.len()
        );
        assert_eq!(host, payload[..host.len()]);
        s.assert_alive().expect("alive");
    }
    // The payload split over a second descriptor is still one write.
    let (u, mut req) = s.write_request(e.nodeid, open.fh, 0, 10, b"");
    let hdr_len = req.len();
    req.extend_from_slice(b"abcdefghij");
    let reply = s
        .frontend()
        .send_chain(
            REQUEST_QUEUE,
            &[&req[..hdr_len], &req[hdr_len..]],
            &[REPLY_SPACE],
        )
        .unwrap();
    assert_eq!(FuseReply::from_reply(&reply, u).unwrap().errno(), 0);
    assert_eq!(std::fs::read(daemon.host("w")).unwrap(), b"abcdefghij");
    daemon.assert_running("short writes");
}

#[test]
fn request_without_reply_space_and_forget_without_body() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    // GETATTR with no writable descriptor: nothing can be written back.
    let r = s.send_raw(&getattr_request(5, ROOT), 0).expect("returned");
    assert_eq!(r.len, 0);
    // FORGET with no body and a forged node on the request queue.
    let req = request(Opcode::Forget as u32, 6, 0xdead, &[]);
    let r = s.send_raw(&req, REPLY_SPACE).expect("returned");
    assert_eq!(r.len, 0, "FORGET must not be answered: {:02x?}", r.bytes);
    // BATCH_FORGET claiming more entries than it carries.
    let mut body = 1000u32.to_le_bytes().to_vec();
    body.extend_from_slice(&[0u8; 4 + 16]);
    let req = request(Opcode::BatchForget as u32, 7, 0, &[&body]);
    let r = s.send_raw(&req, REPLY_SPACE).expect("returned");
    assert_eq!(
        r.len, 0,
        "BATCH_FORGET must not be answered: {:02x?}",
        r.bytes
    );
    s.assert_alive().expect("alive");
    daemon.assert_running("reply-less requests");
}

// ---- hostile descriptor chains --------------------------------------------------------------

/// Runs `post` (which publishes one bad chain and returns its head and total writable bytes),
/// then checks the daemon gave the chain back without claiming more than it could write, and
/// still serves a GETATTR.
fn bad_chain(what: &str, post: impl FnOnce(&mut TestFrontend) -> (u16, u64)) {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let (head, writable) = post(s.frontend());
    let used = s
        .frontend()
        .wait_used(REQUEST_QUEUE, SHORT)
        .unwrap_or_else(|e| {
            panic!(
                "{what}: chain not returned: {e}; stderr:\n{}",
                daemon.stderr()
            )
        });
    assert_eq!(used.id, u32::from(head), "{what}: wrong head returned");
    assert!(
        u64::from(used.len) <= writable,
        "{what}: used len {} but only {writable} writable bytes",
        used.len
    );
    s.assert_alive().unwrap_or_else(|e| {
        panic!(
            "{what}: no GETATTR reply afterwards: {e}; stderr:\n{}",
            daemon.stderr()
        )
    });
    daemon.assert_running(what);
}

/// A valid GETATTR request staged in guest memory: (address, length).
fn staged_getattr(f: &mut TestFrontend) -> (GuestAddress, u32) {
    let req = getattr_request(4242, ROOT);
    (f.stage(&req).unwrap(), req.len() as u32)
}

#[test]
fn chain_readable_descriptor_outside_guest_memory() {
    bad_chain("readable outside memory", |f| {
        let reply = f.alloc(REPLY_SPACE).unwrap();
        let end = f.mem_size();
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[
                    Segment::readable(GuestAddress(end + 0x1000), 64),
                    Segment::writable(reply, REPLY_SPACE as u32),
                ],
            )
            .unwrap();
        (head, REPLY_SPACE as u64)
    });
}

#[test]
fn chain_readable_descriptor_crossing_the_end_of_memory() {
    bad_chain("readable across the end of memory", |f| {
        let reply = f.alloc(REPLY_SPACE).unwrap();
        let end = f.mem_size();
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[
                    Segment::readable(GuestAddress(end - 16), 64),
                    Segment::writable(reply, REPLY_SPACE as u32),
                ],
            )
            .unwrap();
        (head, REPLY_SPACE as u64)
    });
}

#[test]
fn chain_writable_descriptor_outside_guest_memory() {
    bad_chain("writable outside memory", |f| {
        let (req, len) = staged_getattr(f);
        let end = f.mem_size();
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[
                    Segment::readable(req, len),
                    Segment::writable(GuestAddress(end + 0x1000), REPLY_SPACE as u32),
                ],
            )
            .unwrap();
        // Nothing can be written: the used length must be 0.
        (head, 0)
    });
}

#[test]
fn chain_writable_descriptor_at_address_wrapping_u64() {
    bad_chain("writable at u64::MAX - 7", |f| {
        let (req, len) = staged_getattr(f);
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[
                    Segment::readable(req, len),
                    Segment::writable(GuestAddress(u64::MAX - 7), REPLY_SPACE as u32),
                ],
            )
            .unwrap();
        (head, 0)
    });
}

#[test]
fn chain_of_only_readable_descriptors() {
    bad_chain("only readable descriptors", |f| {
        let (req, len) = staged_getattr(f);
        let extra = f.stage(&[0u8; 128]).unwrap();
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[Segment::readable(req, len), Segment::readable(extra, 128)],
            )
            .unwrap();
        (head, 0)
    });
}

#[test]
fn chain_with_zero_length_writable_descriptor() {
    bad_chain("zero-length writable", |f| {
        let (req, len) = staged_getattr(f);
        let reply = f.alloc(16).unwrap();
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[Segment::readable(req, len), Segment::writable(reply, 0)],
            )
            .unwrap();
        (head, 0)
    });
}

#[test]
fn chain_with_writable_space_smaller_than_the_reply() {
    bad_chain("8 writable bytes", |f| {
        let (req, len) = staged_getattr(f);
        let reply = f.alloc(8).unwrap();
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[Segment::readable(req, len), Segment::writable(reply, 8)],
            )
            .unwrap();
        (head, 8)
    });
}

#[test]
fn chain_with_huge_readable_length() {
    bad_chain("readable len u32::MAX", |f| {
        let (req, _) = staged_getattr(f);
        let reply = f.alloc(REPLY_SPACE).unwrap();
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[
                    Segment::readable(req, u32::MAX),
                    Segment::writable(reply, REPLY_SPACE as u32),
                ],
            )
            .unwrap();
        (head, REPLY_SPACE as u64)
    });
}

#[test]
fn chain_with_huge_writable_length() {
    bad_chain("writable len u32::MAX", |f| {
        let (req, len) = staged_getattr(f);
        let reply = f.alloc(REPLY_SPACE).unwrap();
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[
                    Segment::readable(req, len),
                    Segment::writable(reply, u32::MAX),
                ],
            )
            .unwrap();
        // The buffer does not fit in guest memory: nothing may be written.
        (head, 0)
    });
}

#[test]
fn chain_longer_than_four_gib_in_total() {
    bad_chain("chain over 4 GiB", |f| {
        let (req, len) = staged_getattr(f);
        let a = f.alloc(REPLY_SPACE).unwrap();
        let segs: Vec<Segment> = std::iter::once(Segment::readable(req, len))
            .chain((0..3).map(|_| Segment::writable(a, u32::MAX / 2)))
            .collect();
        let head = f.post_chain(REQUEST_QUEUE, &segs).unwrap();
        (head, 0)
    });
}

#[test]
fn chain_with_a_descriptor_loop() {
    bad_chain("descriptor loop", |f| {
        let (req, len) = staged_getattr(f);
        let reply = f.alloc(REPLY_SPACE).unwrap();
        let slots = f.take_slots(REQUEST_QUEUE, 2).unwrap();
        // R -> W -> R -> W ... forever.
        f.write_descriptor(
            REQUEST_QUEUE,
            slots[0],
            RawDescriptor::new(req.0, len, DESC_F_NEXT, slots[1]),
        )
        .unwrap();
        f.write_descriptor(
            REQUEST_QUEUE,
            slots[1],
            RawDescriptor::new(
                reply.0,
                REPLY_SPACE as u32,
                DESC_F_NEXT | DESC_F_WRITE,
                slots[0],
            ),
        )
        .unwrap();
        f.push_avail(REQUEST_QUEUE, slots[0]).unwrap();
        // The device may follow the loop up to the queue size: at most that many copies.
        let size = u64::from(f.queue_size(REQUEST_QUEUE).unwrap());
        (slots[0], size * REPLY_SPACE as u64)
    });
}

#[test]
fn chain_with_a_self_loop() {
    bad_chain("self loop", |f| {
        let (req, len) = staged_getattr(f);
        let slot = f.take_slots(REQUEST_QUEUE, 1).unwrap()[0];
        f.write_descriptor(
            REQUEST_QUEUE,
            slot,
            RawDescriptor::new(req.0, len, DESC_F_NEXT, slot),
        )
        .unwrap();
        f.push_avail(REQUEST_QUEUE, slot).unwrap();
        (slot, 0)
    });
}

#[test]
fn chain_with_next_index_past_the_table() {
    bad_chain("next past the table", |f| {
        let (req, len) = staged_getattr(f);
        let size = f.queue_size(REQUEST_QUEUE).unwrap();
        let slot = f.take_slots(REQUEST_QUEUE, 1).unwrap()[0];
        f.write_descriptor(
            REQUEST_QUEUE,
            slot,
            RawDescriptor::new(req.0, len, DESC_F_NEXT, size + 5),
        )
        .unwrap();
        f.push_avail(REQUEST_QUEUE, slot).unwrap();
        (slot, 0)
    });
}

#[test]
fn chain_with_writable_before_readable() {
    bad_chain("writable before readable", |f| {
        let (req, len) = staged_getattr(f);
        let reply = f.alloc(REPLY_SPACE).unwrap();
        let head = f
            .post_chain(
                REQUEST_QUEUE,
                &[
                    Segment::writable(reply, REPLY_SPACE as u32),
                    Segment::readable(req, len),
                ],
            )
            .unwrap();
        (head, REPLY_SPACE as u64)
    });
}

#[test]
fn indirect_table_carrying_a_valid_request_is_served() {
    let daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let f = s.frontend();
    let (req, len) = staged_getattr(f);
    let reply = f.alloc(REPLY_SPACE).unwrap();
    let (table, table_len) = f
        .stage_indirect_table(&[
            RawDescriptor::new(req.0, len, DESC_F_NEXT, 1),
            RawDescriptor::new(reply.0, REPLY_SPACE as u32, DESC_F_WRITE, 0),
        ])
        .unwrap();
    let slot = f.take_slots(REQUEST_QUEUE, 1).unwrap()[0];
    f.write_descriptor(
        REQUEST_QUEUE,
        slot,
        RawDescriptor::new(table.0, table_len, DESC_F_INDIRECT, 0),
    )
    .unwrap();
    f.push_avail(REQUEST_QUEUE, slot).unwrap();
    let used = f.wait_used(REQUEST_QUEUE, SHORT).expect("returned");
    assert_eq!(used.id, u32::from(slot));
    let bytes = f.read_memory(reply, used.len as usize).unwrap();
    let parsed = FuseReply::from_reply(
        &vm_tests::frontend::Reply {
            head: slot,
            len: used.len,
            bytes,
        },
        4242,
    )
    .expect("GETATTR reply through an indirect table");
    assert_eq!(parsed.errno(), 0);
}

/// Publishes a chain whose head descriptor is `head_desc` pointing at an indirect table.
fn post_indirect(
    f: &mut TestFrontend,
    head_desc: impl FnOnce(&mut TestFrontend) -> RawDescriptor,
) -> u16 {
    let desc = head_desc(f);
    let slot = f.take_slots(REQUEST_QUEUE, 1).unwrap()[0];
    f.write_descriptor(REQUEST_QUEUE, slot, desc).unwrap();
    f.push_avail(REQUEST_QUEUE, slot).unwrap();
    slot
}

fn valid_indirect_entries(f: &mut TestFrontend) -> Vec<RawDescriptor> {
    let (req, len) = staged_getattr(f);
    let reply = f.alloc(REPLY_SPACE).unwrap();
    vec![
        RawDescriptor::new(req.0, len, DESC_F_NEXT, 1),
        RawDescriptor::new(reply.0, REPLY_SPACE as u32, DESC_F_WRITE, 0),
    ]
}

#[test]
fn indirect_table_outside_guest_memory() {
    bad_chain("indirect table outside memory", |f| {
        let end = f.mem_size();
        let head = post_indirect(f, |_| {
            RawDescriptor::new(end + 4096, 32, DESC_F_INDIRECT, 0)
        });
        (head, 0)
    });
}

#[test]
fn indirect_table_with_odd_length() {
    bad_chain("indirect table length 17", |f| {
        let head = post_indirect(f, |f| {
            let entries = valid_indirect_entries(f);
            let (table, _) = f.stage_indirect_table(&entries).unwrap();
            RawDescriptor::new(table.0, 17, DESC_F_INDIRECT, 0)
        });
        (head, REPLY_SPACE as u64)
    });
}

#[test]
fn indirect_table_with_zero_and_huge_length() {
    for len in [0u32, 16 * 65_536, 0xFFFF_FFF0] {
        bad_chain(&format!("indirect table length {len}"), |f| {
            let head = post_indirect(f, |f| {
                let entries = valid_indirect_entries(f);
                let (table, _) = f.stage_indirect_table(&entries).unwrap();
                RawDescriptor::new(table.0, len, DESC_F_INDIRECT, 0)
            });
            (head, REPLY_SPACE as u64)
        });
    }
}

#[test]
fn nested_indirect_table() {
    bad_chain("indirect inside indirect", |f| {
        let head = post_indirect(f, |f| {
            let entries = valid_indirect_entries(f);
            let (inner, inner_len) = f.stage_indirect_table(&entries).unwrap();
            let (outer, outer_len) = f
                .stage_indirect_table(&[RawDescriptor::new(inner.0, inner_len, DESC_F_INDIRECT, 0)])
                .unwrap();
            RawDescriptor::new(outer.0, outer_len, DESC_F_INDIRECT, 0)
        });
        (head, REPLY_SPACE as u64)
    });
}

#[test]
fn indirect_table_entries_looping() {
    bad_chain("loop inside an indirect table", |f| {
        let head = post_indirect(f, |f| {
            let mut entries = valid_indirect_entries(f);
            entries[1].flags |= DESC_F_NEXT;
            entries[1].next = 0;
            let (table, len) = f.stage_indirect_table(&entries).unwrap();
            RawDescriptor::new(table.0, len, DESC_F_INDIRECT, 0)
        });
        (head, 2 * REPLY_SPACE as u64)
    });
}

#[test]
fn avail_ring_head_index_past_the_table() {
    bad_avail_head(&[]);
}

#[test]
fn avail_ring_head_index_past_the_table_with_a_thread_pool() {
    bad_avail_head(&["--thread-pool-size", "2"]);
}

fn bad_avail_head(extra: &[&str]) {
    let mut daemon = Daemon::start(extra);
    let mut s = daemon.session();
    let size = s.frontend().queue_size(REQUEST_QUEUE).unwrap();
    s.frontend().push_avail(REQUEST_QUEUE, size + 3).unwrap();
    // The device cannot return a head it cannot name; it may return nothing.
    match s.frontend().wait_used(REQUEST_QUEUE, SHORT) {
        Ok(used) => assert!(
            u32::from(size) > used.id,
            "returned impossible head {}",
            used.id
        ),
        Err(FrontendError::Timeout { .. }) => {}
        Err(e) => panic!("{e}"),
    }
    s.assert_alive().unwrap_or_else(|e| {
        panic!(
            "no GETATTR reply after a bad avail head: {e}; stderr:\n{}",
            daemon.stderr()
        )
    });
    daemon.assert_running("bad avail head");
}

#[test]
fn avail_index_jumping_past_the_queue_size() {
    bad_avail_index(&[]);
}

#[test]
fn avail_index_jumping_past_the_queue_size_with_a_thread_pool() {
    bad_avail_index(&["--thread-pool-size", "2"]);
}

fn bad_avail_index(extra: &[&str]) {
    let mut daemon = Daemon::start(extra);
    let mut s = daemon.session();
    let size = s.frontend().queue_size(REQUEST_QUEUE).unwrap();
    let idx = s.frontend().avail_idx(REQUEST_QUEUE).unwrap();
    // Claim size + 10 new buffers at once, then kick.
    s.frontend()
        .publish_avail_idx(REQUEST_QUEUE, idx.wrapping_add(size + 10))
        .unwrap();
    s.frontend().kick(REQUEST_QUEUE).unwrap();
    // Waits for the daemon to have looked at the impossible index (it logs the ring error),
    // not for a fixed time that a loaded machine may not give it.
    let deadline = Instant::now() + START_TIMEOUT;
    while !daemon.stderr().contains("virtqueue error") {
        daemon.assert_running("an impossible avail index");
        assert!(
            Instant::now() < deadline,
            "the daemon never reported the impossible avail index; stderr:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    daemon.assert_running("an impossible avail index");
    // The driver comes to its senses: restore the index and send a good request.
    s.frontend().publish_avail_idx(REQUEST_QUEUE, idx).unwrap();
    let drained = s.drain(Duration::from_millis(200)).unwrap();
    assert_eq!(
        drained, 0,
        "the device consumed buffers that were never made available"
    );
    s.assert_alive().unwrap_or_else(|e| {
        panic!(
            "no GETATTR reply after a bad avail index: {e}; stderr:\n{}",
            daemon.stderr()
        )
    });
}

#[test]
fn many_bad_chains_in_one_session() {
    // A guest that keeps misbehaving: the same daemon survives all of it in a row.
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    for round in 0..3u64 {
        let end = s.frontend().mem_size();
        let reply = s.frontend().alloc(REPLY_SPACE).unwrap();
        let (req, len) = staged_getattr(s.frontend());
        let cases: Vec<Vec<Segment>> = vec![
            vec![
                Segment::readable(GuestAddress(end), 40),
                Segment::writable(reply, 4096),
            ],
            vec![
                Segment::readable(req, len),
                Segment::writable(GuestAddress(end - 8), 64),
            ],
            vec![Segment::readable(req, len)],
            vec![Segment::readable(req, 3), Segment::writable(reply, 4096)],
            vec![Segment::readable(req, len), Segment::writable(reply, 0)],
        ];
        for (i, segs) in cases.iter().enumerate() {
            let head = s.frontend().post_chain(REQUEST_QUEUE, segs).unwrap();
            let used = s
                .frontend()
                .wait_used(REQUEST_QUEUE, SHORT)
                .unwrap_or_else(|e| panic!("round {round} case {i}: {e}"));
            assert_eq!(used.id, u32::from(head), "round {round} case {i}");
        }
        s.assert_alive().expect("alive");
        // A bad opcode between rounds, too.
        let u = s.unique();
        let req = request(19, u, ROOT, &[]);
        assert_eq!(expect_error_reply(&mut s, &req, u), libc::ENOSYS);
    }
    daemon.assert_running("a stream of bad chains");
}

/// DESTROY as Linux sends it at unmount; returns the used length.
fn destroy(s: &mut FuseSession) -> u32 {
    let u = s.unique();
    let reply = s
        .send_raw(&request(Opcode::Destroy as u32, u, 0, &[]), REPLY_SPACE)
        .expect("DESTROY returned");
    if reply.len != 0 {
        // A reply, if any, must be a well-formed success for this request.
        let parsed = FuseReply::from_reply(&reply, u).expect("DESTROY reply");
        assert_eq!(parsed.errno(), 0);
    }
    reply.len
}

/// Unmount and mount again in the same guest: DESTROY, then a new INIT on the same
/// connection, and the tree is served as before (node ids of the old mount are gone).
fn remount_cycle(daemon: &Daemon, s: &mut FuseSession) {
    let (e, open) = s
        .create(ROOT, "survives-remount", libc::O_RDWR, 0o644)
        .expect("CREATE");
    s.write(e.nodeid, open.fh, 0, b"still here").expect("WRITE");
    s.release(e.nodeid, open.fh).expect("RELEASE");
    destroy(s);
    s.init().expect("INIT after DESTROY");
    let again = s
        .lookup(ROOT, "survives-remount")
        .expect("LOOKUP after remount");
    let fh = s
        .open(again.nodeid, libc::O_RDONLY)
        .expect("OPEN after remount")
        .fh;
    assert_eq!(
        s.read(again.nodeid, fh, 0, 100).expect("READ"),
        b"still here"
    );
    s.release(again.nodeid, fh).expect("RELEASE");
    assert!(s
        .list_dir(ROOT)
        .expect("READDIR after remount")
        .iter()
        .any(|d| d.name == b"survives-remount"));
    let root = s.getattr(ROOT).expect("GETATTR root after remount");
    assert_eq!(
        root.attr.ino,
        std::fs::metadata(daemon.shared.path()).unwrap().ino()
    );
}

#[test]
fn destroy_then_init_again_serves_the_same_tree() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    remount_cycle(&daemon, &mut s);
    daemon.assert_running("a remount");
}

#[test]
fn guest_reset_restarts_the_queues_and_a_new_init_is_served() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let (e, open) = s
        .create(ROOT, "before-reset", libc::O_RDWR, 0o644)
        .expect("CREATE");
    s.write(e.nodeid, open.fh, 0, b"kept").expect("WRITE");
    s.forget(e.nodeid, 1).expect("FORGET");
    let sent = [
        s.frontend().avail_idx(HIPRIO_QUEUE).unwrap(),
        s.frontend().avail_idx(REQUEST_QUEUE).unwrap(),
    ];
    let bases = s
        .frontend()
        .restart_queues()
        .expect("restarting the queues");
    assert_eq!(
        bases, sent,
        "GET_VRING_BASE must report how far each queue was consumed"
    );
    // The rebooted guest mounts again: INIT on fresh rings, then the old file is there.
    s.init().expect("INIT after reset");
    let again = s.lookup(ROOT, "before-reset").expect("LOOKUP after reset");
    let fh = s.open(again.nodeid, libc::O_RDONLY).expect("OPEN").fh;
    assert_eq!(s.read(again.nodeid, fh, 0, 100).expect("READ"), b"kept");
    for _ in 0..300 {
        s.getattr(ROOT).expect("GETATTR after reset");
    }
    assert_eq!(s.forget(again.nodeid, 1).expect("FORGET after reset"), 0);
    daemon.assert_running("a guest reset");
}

// ---- several requests in flight ------------------------------------------------------------

/// Posts `requests` on the request queue with one kick after the last, so the daemon finds
/// them in one batch, and returns the replies in the order of `requests`.
fn send_batch(
    s: &mut FuseSession,
    daemon: &Daemon,
    requests: &[Vec<u8>],
    reply_space: usize,
) -> Vec<Reply> {
    let pending: Vec<_> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let last = i + 1 == requests.len();
            s.frontend()
                .post_request(REQUEST_QUEUE, &[r], &[reply_space], last)
                .expect("posting a request")
        })
        .collect();
    let heads: Vec<u16> = pending.iter().map(|p| p.head).collect();
    let mut replies = s
        .frontend()
        .collect(pending, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("batch: {e}; stderr:\n{}", daemon.stderr()));
    heads
        .iter()
        .map(|h| {
            let i = replies
                .iter()
                .position(|r| r.head == *h)
                .expect("a reply per request");
            replies.swap_remove(i)
        })
        .collect()
}

/// Publishes a batch of mixed requests (good and bad) with one kick, then checks every one
/// comes back, in any order, with the right answer.
fn batch_of_requests(extra: &[&str]) {
    let mut daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], extra, |d| {
        std::fs::write(d.join("f"), b"batch contents").unwrap();
    });
    let mut s = daemon.session();
    let f = s.lookup(ROOT, "f").expect("LOOKUP");
    let fh = s.open(f.nodeid, libc::O_RDONLY).expect("OPEN").fh;
    let root_ino = std::fs::metadata(daemon.shared.path()).unwrap().ino();

    #[derive(Debug, Clone, Copy)]
    enum Kind {
        Getattr,
        Lookup,
        Read,
        BadOpcode,
    }
    let mut sent = Vec::new();
    for i in 0..96 {
        let u = s.unique();
        let (kind, req) = match i % 4 {
            0 => (Kind::Getattr, getattr_request(u, ROOT)),
            1 => (
                Kind::Lookup,
                request(Opcode::Lookup as u32, u, ROOT, &[&cname("f")]),
            ),
            2 => {
                let arg = ReadIn {
                    fh,
                    size: 100,
                    ..Default::default()
                };
                (
                    Kind::Read,
                    request(Opcode::Read as u32, u, f.nodeid, &[arg.as_slice()]),
                )
            }
            _ => (Kind::BadOpcode, request(7, u, ROOT, &[])),
        };
        sent.push((u, kind, req));
    }
    let requests: Vec<Vec<u8>> = sent.iter().map(|(_, _, r)| r.clone()).collect();
    let replies = send_batch(&mut s, &daemon, &requests, REPLY_SPACE);
    assert_eq!(replies.len(), 96);
    for ((u, kind, _), r) in sent.iter().zip(&replies) {
        let (u, kind) = (*u, *kind);
        let parsed = FuseReply::from_reply(r, u).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        match kind {
            Kind::Getattr => {
                let a: fuse_backend_rs::abi::fuse_abi::AttrOut =
                    parsed.ok().unwrap().body_as().unwrap();
                assert_eq!(a.attr.ino, root_ino);
            }
            Kind::Lookup => {
                let e: fuse_backend_rs::abi::fuse_abi::EntryOut =
                    parsed.ok().unwrap().body_as().unwrap();
                assert_eq!(e.nodeid, f.nodeid);
            }
            Kind::Read => assert_eq!(parsed.ok().unwrap().body, b"batch contents"),
            Kind::BadOpcode => assert_eq!(parsed.errno(), libc::ENOSYS),
        }
    }
    // Nothing extra comes back, and the daemon still serves.
    assert_eq!(s.drain(Duration::from_millis(200)).unwrap(), 0);
    s.assert_alive().expect("alive");
    daemon.assert_running("a batch");
}

#[test]
fn batched_requests_all_complete_on_the_queue_thread() {
    batch_of_requests(&["--overlap-threads", "0"]);
}

#[test]
fn batched_requests_all_complete_with_overlap_helpers_repeatedly() {
    // The default: the batch's READs go to helpers, the rest stay; completions race between
    // helpers and the queue thread (and its take-back). A lost notification is a timeout.
    for _ in 0..5 {
        batch_of_requests(&[]);
    }
}

#[test]
fn batched_requests_all_complete_with_a_thread_pool() {
    batch_of_requests(&["--thread-pool-size", "4"]);
}

#[test]
fn batched_requests_with_a_thread_pool_repeatedly() {
    // Completions race between workers; a lost notification shows up as a timeout.
    for _ in 0..5 {
        batch_of_requests(&["--thread-pool-size", "3"]);
    }
}

/// One thread serves both queues, and with `--poll-max-us` (off by default) it polls the
/// request queue when that runs dry: a guest that keeps the request queue busy must not hold
/// up a FORGET.
/// Back-to-back GETATTRs come within the polling window, so the thread never goes back to
/// `epoll_wait`, where the FORGET's kick waits; the poller has to serve it (without that,
/// the FORGET waited for 53 to 169 GETATTRs in six runs; with it, six runs passed).
#[test]
fn forget_is_served_while_requests_keep_the_polled_queue_busy() {
    forget_is_served_during_back_to_back_getattrs(&["--poll-max-us", "200"]);
}

/// The same without polling (the default): a request posted before the thread turns the
/// queue's notifications back on sends it round again without `epoll_wait`; the FORGET must
/// not wait for that either.
#[test]
fn forget_is_served_while_back_to_back_requests_keep_the_queue_busy() {
    forget_is_served_during_back_to_back_getattrs(&[]);
}

fn forget_is_served_during_back_to_back_getattrs(flags: &[&str]) {
    let mut daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], flags, |d| {
        std::fs::write(d.join("f"), b"x").unwrap();
    });
    let mut s = daemon.session();
    let f = s.lookup(ROOT, "f").expect("LOOKUP");
    // Teach the poller this frontend's gaps.
    for _ in 0..200 {
        s.getattr(ROOT).expect("GETATTR");
    }
    let unique = s.unique();
    let forget = request(
        Opcode::Forget as u32,
        unique,
        f.nodeid,
        &[fuse_backend_rs::abi::fuse_abi::ForgetIn { nlookup: 1 }.as_slice()],
    );
    let pending = s
        .frontend()
        .post_request(HIPRIO_QUEUE, &[&forget], &[], true)
        .unwrap();
    let mut returned_after = None;
    for i in 0..20_000 {
        s.getattr(ROOT).expect("GETATTR while the FORGET waits");
        if let Some(used) = s.frontend().try_pop_used(HIPRIO_QUEUE).unwrap() {
            assert_eq!((used.id, used.len), (u32::from(pending.head), 0));
            returned_after = Some(i);
            break;
        }
    }
    let Some(i) = returned_after else {
        panic!(
            "the FORGET was not returned during 20,000 back-to-back GETATTRs; stderr:\n{}",
            daemon.stderr()
        );
    };
    assert!(
        i < 10,
        "the FORGET waited for {i} GETATTRs; stderr:\n{}",
        daemon.stderr()
    );
    daemon.assert_running("a FORGET during back-to-back requests");
}

/// Names of the daemon's threads that are request workers (`vfs-worker-N`).
fn worker_threads(daemon: &Daemon) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", daemon.pid())).expect("/proc/PID/task");
    let mut names: Vec<String> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with("vfs-worker-"))
        .collect();
    names.sort();
    names
}

/// The daemon's threads, named or not yet: a thread names itself only once it first runs,
/// so on a busy machine a worker just spawned still carries its parent's name for a while.
fn thread_count(daemon: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", daemon.pid()))
        .expect("/proc/PID/task")
        .count()
}

/// [`worker_threads`] once at least one has named itself (up to 10 s), or the empty list.
fn named_workers(daemon: &Daemon) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = worker_threads(daemon);
        if !names.is_empty() || Instant::now() > deadline {
            return names;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One READ of a batch: its unique, the request, and the bytes it must return.
struct BatchRead {
    unique: u64,
    request: Vec<u8>,
    want: Vec<u8>,
}

/// Eight 4 KiB READs of one file at distinct, unaligned offsets.
fn read_batch(s: &mut FuseSession, node: u64, fh: u64, content: &[u8]) -> Vec<BatchRead> {
    (0..8u64)
        .map(|i| {
            let offset = i * 4096 + i;
            let arg = ReadIn {
                fh,
                offset,
                size: 4096,
                ..Default::default()
            };
            let unique = s.unique();
            BatchRead {
                unique,
                request: request(Opcode::Read as u32, unique, node, &[arg.as_slice()]),
                want: content[offset as usize..offset as usize + 4096].to_vec(),
            }
        })
        .collect()
}

/// Sends a READ batch and checks every reply against the file's bytes.
fn check_read_batch(s: &mut FuseSession, daemon: &Daemon, batch: &[BatchRead], what: &str) {
    let requests: Vec<Vec<u8>> = batch.iter().map(|b| b.request.clone()).collect();
    let replies = send_batch(s, daemon, &requests, OUT_HEADER_LEN + 4096);
    for (b, reply) in batch.iter().zip(&replies) {
        let parsed = FuseReply::from_reply(reply, b.unique)
            .unwrap_or_else(|e| panic!("READ {} in {what}: {e}", b.unique));
        assert_eq!(parsed.errno(), 0, "READ {} in {what}", b.unique);
        assert_eq!(parsed.body, b.want, "READ {} in {what}", b.unique);
    }
}

#[test]
fn a_batch_of_reads_overlaps_on_helper_threads_and_metadata_stays_on_the_queue_thread() {
    let content: Vec<u8> = (0..64 * 1024u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let host_content = content.clone();
    // The production seccomp filter: helpers start long after it is in place.
    let mut daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "kill"], &[], |d| {
        std::fs::write(d.join("data"), &host_content).unwrap();
    });
    let mut s = daemon.session();
    let e = s.lookup(ROOT, "data").expect("LOOKUP");
    let open = s.open(e.nodeid, libc::O_RDONLY).expect("OPEN");
    assert_eq!(
        worker_threads(&daemon),
        Vec::<String>::new(),
        "a worker before any batch"
    );
    let threads_before = thread_count(&daemon);

    // Metadata in a batch: served on the queue thread, no worker started.
    let getattrs: Vec<(u64, Vec<u8>)> = (0..16)
        .map(|_| {
            let u = s.unique();
            (u, getattr_request(u, ROOT))
        })
        .collect();
    let requests: Vec<Vec<u8>> = getattrs.iter().map(|(_, r)| r.clone()).collect();
    let replies = send_batch(&mut s, &daemon, &requests, REPLY_SPACE);
    for ((u, _), reply) in getattrs.iter().zip(&replies) {
        let parsed = FuseReply::from_reply(reply, *u).expect("a GETATTR reply");
        assert_eq!(parsed.errno(), 0, "GETATTR in a batch");
    }
    assert_eq!(
        worker_threads(&daemon),
        Vec::<String>::new(),
        "a worker for GETATTRs"
    );
    // Also no thread yet to name itself.
    assert_eq!(
        thread_count(&daemon),
        threads_before,
        "a thread for GETATTRs"
    );

    // READs in a batch: every reply right, and helpers were started for them.
    for round in 0..3 {
        let batch = read_batch(&mut s, e.nodeid, open.fh, &content);
        check_read_batch(&mut s, &daemon, &batch, &format!("round {round}"));
    }
    let workers = named_workers(&daemon);
    assert!(
        !workers.is_empty() && workers.len() <= virtiofsd_kr::control::cli::DEFAULT_OVERLAP_THREADS,
        "workers after three batches of READs: {workers:?}; stderr:\n{}",
        daemon.stderr()
    );
    s.getattr(ROOT).expect("GETATTR after the batches");
    daemon.assert_running("batches of READs under seccomp kill");
}

#[test]
fn overlap_threads_zero_serves_a_batch_of_reads_on_the_queue_thread() {
    let content: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8).collect();
    let host_content = content.clone();
    let daemon = Daemon::start_with(
        &["--sandbox", "none", "--seccomp", "none"],
        &["--overlap-threads", "0"],
        |d| std::fs::write(d.join("data"), &host_content).unwrap(),
    );
    let mut s = daemon.session();
    let e = s.lookup(ROOT, "data").expect("LOOKUP");
    let open = s.open(e.nodeid, libc::O_RDONLY).expect("OPEN");
    let batch = read_batch(&mut s, e.nodeid, open.fh, &content);
    let threads_before = thread_count(&daemon);
    check_read_batch(&mut s, &daemon, &batch, "one batch");
    assert_eq!(worker_threads(&daemon), Vec::<String>::new());
    assert_eq!(
        thread_count(&daemon),
        threads_before,
        "a thread for the batch"
    );
}

// ---- lifecycle ------------------------------------------------------------------------------

#[test]
fn daemon_exits_zero_when_the_frontend_disconnects() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    s.getattr(ROOT).expect("GETATTR");
    let (e, open) = s.create(ROOT, "open-at-exit", libc::O_RDWR, 0o600).unwrap();
    s.write(e.nodeid, open.fh, 0, b"data").unwrap();
    drop(s);
    let status = daemon
        .wait_exit(EXIT_TIMEOUT)
        .unwrap_or_else(|| panic!("daemon still running {EXIT_TIMEOUT:?} after disconnect"));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        daemon.stderr()
    );
    assert!(!daemon.socket.exists(), "socket left behind");
    assert_eq!(std::fs::read(daemon.host("open-at-exit")).unwrap(), b"data");
}

#[test]
fn daemon_exits_zero_on_disconnect_after_hostile_traffic() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let end = s.frontend().mem_size();
    let reply = s.frontend().alloc(REPLY_SPACE).unwrap();
    s.frontend()
        .post_chain(
            REQUEST_QUEUE,
            &[
                Segment::readable(GuestAddress(end), 40),
                Segment::writable(reply, 4096),
            ],
        )
        .unwrap();
    let _ = s.frontend().wait_used(REQUEST_QUEUE, SHORT);
    let u = s.unique();
    let _ = s.send_raw(&request(0, u, ROOT, &[]), REPLY_SPACE);
    drop(s);
    daemon.assert_exits_zero();
}

#[test]
fn daemon_exits_zero_on_disconnect_after_its_queue_thread_failed() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let size = s.frontend().queue_size(REQUEST_QUEUE).unwrap();
    s.frontend().push_avail(REQUEST_QUEUE, size + 3).unwrap();
    let _ = s
        .frontend()
        .wait_used(REQUEST_QUEUE, Duration::from_millis(300));
    drop(s);
    daemon.assert_exits_zero();
}

/// The serving process's threads, by name (`/proc/PID/task/*/comm`), sorted. With
/// `--sandbox namespace` the serving process is the started one's only child.
fn thread_names(daemon: &Daemon) -> Vec<String> {
    let pid = daemon.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .expect("/proc/PID/task/PID/children");
    let server = children.split_whitespace().next().unwrap_or_default();
    let server = if server.is_empty() {
        pid.to_string()
    } else {
        server.to_string()
    };
    let tasks = std::fs::read_dir(format!("/proc/{server}/task")).expect("/proc/PID/task");
    let mut names: Vec<String> = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// A daemon offering 16 request queues to a frontend that starts two queues (the hiprio queue
/// and request queue 0, as a Linux 6.1 guest does) runs one vring thread, not 16: a request
/// queue's thread is spawned when the frontend starts that queue (`third_party/README.md`,
/// vhost-user-backend). A queue started later gets its own thread and is served on it, and
/// the daemon exits cleanly with the threads it never spawned. Under the production
/// confinement: the thread is spawned long after the seccomp filter is in place.
#[test]
fn request_queue_threads_start_with_their_queues_and_serve_them() {
    const LATE: usize = 4; // request queue 3
    let mut daemon = Daemon::start_with(
        &["--sandbox", "namespace", "--seccomp", "kill"],
        // A thread per queue (the default is one per CPU, which may be fewer).
        &["--request-queues", "16", "--queue-threads", "16"],
        |_| {},
    );
    let mut s = daemon.session();
    let root = s.getattr(ROOT).expect("GETATTR on request queue 0");
    // A thread names itself once it runs, so a name can lag behind the thread (the count of
    // threads cannot: a queue's thread is created before its SET_VRING_ENABLE is answered).
    let vring_threads = |daemon: &Daemon, want: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let names = thread_names(daemon);
            let vring = names.iter().filter(|n| *n == "vring_worker").count();
            if vring >= want || std::time::Instant::now() > deadline {
                return (vring, names);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    };

    let names = thread_names(&daemon);
    // main (serving the vhost-user connection), the signal thread and one vring thread.
    assert_eq!(names.len(), 3, "threads of an idle daemon: {names:?}");
    let (vring, names) = vring_threads(&daemon, 1);
    assert_eq!(
        vring, 1,
        "vring threads with the hiprio queue and request queue 0 started: {names:?}"
    );

    s.frontend().start_queue(LATE).expect("starting queue 4");
    let names = thread_names(&daemon);
    assert_eq!(
        names.len(),
        4,
        "threads after starting queue {LATE}: {names:?}"
    );
    let (vring, names) = vring_threads(&daemon, 2);
    assert_eq!(
        vring, 2,
        "vring threads after starting queue {LATE}: {names:?}"
    );
    let unique = s.unique();
    let reply = s
        .frontend()
        .send_chain(LATE, &[&getattr_request(unique, ROOT)], &[REPLY_SPACE])
        .unwrap_or_else(|e| panic!("GETATTR on queue {LATE}: {e}; stderr:\n{}", daemon.stderr()));
    let attr: fuse_backend_rs::abi::fuse_abi::AttrOut = FuseReply::from_reply(&reply, unique)
        .and_then(FuseReply::ok)
        .and_then(|r| r.body_as())
        .expect("GETATTR reply on the late queue");
    assert_eq!(attr.attr.ino, root.attr.ino);
    // Starting a queue twice is the frontend's error, caught before anything is sent.
    assert!(s.frontend().start_queue(LATE).is_err());
    s.getattr(ROOT).expect("GETATTR on request queue 0 again");
    assert_eq!(thread_names(&daemon).len(), 4);

    drop(s);
    daemon.assert_exits_zero();
    assert!(!daemon.socket.exists(), "socket left behind");
    // Each request counted on the queue it came on: 2 GETATTRs (and INIT) on queue 1, 1 on 4.
    let stderr = daemon.stderr();
    let counts = stderr
        .lines()
        .find(|l| l.contains("requests per queue"))
        .unwrap_or_else(|| panic!("no per-queue counts at exit; stderr:\n{stderr}"));
    assert!(
        counts.contains(" 1=3 ") && counts.contains(&format!(" {LATE}=1 ")),
        "{counts}"
    );
}

#[test]
fn disconnect_before_any_request_exits_zero() {
    let mut daemon = Daemon::start(&[]);
    drop(daemon.connect());
    daemon.assert_exits_zero();
}

#[test]
fn sanitizer_harness_recognises_reports_and_checks_leaks_only_where_they_can_run() {
    use common::{asan_options, sanitizer_report, LeakCheck};
    let report = "INFO frontend connected\n\
                  ==1108==ERROR: AddressSanitizer: heap-use-after-free on address 0x7ba0\n\
                  SUMMARY: AddressSanitizer: heap-use-after-free\n";
    assert_eq!(
        sanitizer_report(report),
        Some("==1108==ERROR: AddressSanitizer: heap-use-after-free on address 0x7ba0")
    );
    assert!(sanitizer_report("==7==ERROR: LeakSanitizer: detected memory leaks").is_some());
    assert!(sanitizer_report("thread 'vfs-q1' panicked at src/device.rs:1:1").is_some());
    assert_eq!(
        sanitizer_report("INFO frontend disconnected, exiting\n"),
        None
    );

    let unconfined = asan_options(
        &["--sandbox", "none", "--seccomp", "none"],
        LeakCheck::WhereItRuns,
    );
    assert!(unconfined.ends_with("exitcode=86:halt_on_error=1:abort_on_error=0:allocator_may_return_null=0:detect_leaks=1:symbolize=1"), "{unconfined}");
    for confined in [
        &["--sandbox", "namespace", "--seccomp", "none"][..],
        &["--sandbox", "none", "--seccomp", "kill"],
        &["--sandbox=none"],
    ] {
        let opts = asan_options(confined, LeakCheck::WhereItRuns);
        assert!(
            opts.ends_with("detect_leaks=0:symbolize=0"),
            "{confined:?}: {opts}"
        );
    }
    let stuck = asan_options(&["--sandbox", "none", "--seccomp=log"], LeakCheck::Off);
    assert!(stuck.ends_with("detect_leaks=0:symbolize=1"), "{stuck}");
}

#[test]
fn raw_header_helpers_agree_with_the_abi() {
    // Guards the helpers the tests above rely on.
    assert_eq!(IN_HEADER_LEN, std::mem::size_of::<InHeader>());
    assert_eq!(OUT_HEADER_LEN, std::mem::size_of::<OutHeader>());
    assert_eq!(IN_HEADER_LEN, 40);
    assert_eq!(OUT_HEADER_LEN, 16);
}

// ---- under the production confinement ---------------------------------------------------------

#[test]
fn sandboxed_daemon_with_seccomp_kill_serves_survives_and_exits_zero() {
    let mut daemon =
        Daemon::start_with(&["--sandbox", "namespace", "--seccomp", "kill"], &[], |d| {
            std::fs::write(d.join("pre"), b"before").unwrap()
        });
    let mut s = daemon.session();
    let (e, open) = s
        .create(ROOT, "in-sandbox", libc::O_RDWR, 0o644)
        .expect("CREATE");
    assert_eq!(
        s.write(e.nodeid, open.fh, 0, b"sandboxed").expect("WRITE"),
        9
    );
    assert_eq!(
        s.read(e.nodeid, open.fh, 0, 100).expect("READ"),
        b"sandboxed"
    );
    s.release(e.nodeid, open.fh).expect("RELEASE");
    assert_eq!(
        std::fs::read(daemon.host("in-sandbox")).unwrap(),
        b"sandboxed"
    );
    let dir = s.mkdir(ROOT, "d", 0o755).expect("MKDIR");
    let mut names: Vec<Vec<u8>> = s
        .list_dir(ROOT)
        .expect("READDIR")
        .into_iter()
        .map(|d| d.name)
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort();
    assert_eq!(names, [&b"d"[..], b"in-sandbox", b"pre"]);
    s.statfs(ROOT).expect("STATFS");
    // The root is the shared directory, also seen from inside the mount namespace.
    let up = s.lookup(dir.nodeid, "..").expect("LOOKUP d/..");
    let up = s.lookup(up.nodeid, "..").expect("LOOKUP ..");
    assert_eq!(
        up.attr.ino,
        std::fs::metadata(daemon.shared.path()).unwrap().ino()
    );
    // Malformed traffic must not trip a syscall outside the allow-list.
    for opcode in [0u32, 7, 19, 51, 999] {
        let u = s.unique();
        assert_eq!(
            expect_error_reply(&mut s, &request(opcode, u, ROOT, &[]), u),
            libc::ENOSYS
        );
    }
    let u = s.unique();
    let req = request_with_len(Opcode::Lookup as u32, u, ROOT, u32::MAX, &[b"x\0"]);
    expect_error_reply(&mut s, &req, u);
    let end = s.frontend().mem_size();
    let reply = s.frontend().alloc(REPLY_SPACE).unwrap();
    let head = s
        .frontend()
        .post_chain(
            REQUEST_QUEUE,
            &[
                Segment::readable(GuestAddress(end), 40),
                Segment::writable(reply, 4096),
            ],
        )
        .unwrap();
    assert_eq!(
        s.frontend()
            .wait_used(REQUEST_QUEUE, SHORT)
            .expect("returned")
            .id,
        u32::from(head)
    );
    assert_eq!(s.forget(e.nodeid, 1).expect("FORGET"), 0);
    s.assert_alive().expect("alive under seccomp");
    remount_cycle(&daemon, &mut s);
    daemon.assert_running("sandboxed traffic");
    drop(s);
    daemon.assert_exits_zero();
}

/// `FOPEN_NOFLUSH` in `fuse_open_out.open_flags` (Linux `include/uapi/linux/fuse.h`, 7.35).
const FOPEN_NOFLUSH: u32 = 1 << 5;

/// Whether the host's own `statfs` puts `path` on a filesystem the daemon must count as
/// local (ext2/3/4, xfs, tmpfs, zfs, f2fs: `local_fs::LOCAL_FS_TYPES`) or not local (NFS,
/// overlay, ...). `None` for btrfs, whose subvolumes report an `st_dev` of their own that the
/// mount table does not show.
fn statfs_says_local(path: &std::path::Path) -> Option<bool> {
    use nix::sys::statfs::{
        statfs, FsType, BTRFS_SUPER_MAGIC, EXT4_SUPER_MAGIC, TMPFS_MAGIC, XFS_SUPER_MAGIC,
    };
    // Not named by nix: include/uapi/linux/magic.h (F2FS) and ZFS's zfs_vfsops.h.
    const F2FS_SUPER_MAGIC: FsType = FsType(0xF2F5_2010);
    const ZFS_SUPER_MAGIC: FsType = FsType(0x2FC1_2FC1);
    let fs_type = statfs(path)
        .expect("statfs of the shared dir")
        .filesystem_type();
    if fs_type == BTRFS_SUPER_MAGIC {
        return None;
    }
    Some(
        [
            EXT4_SUPER_MAGIC,
            TMPFS_MAGIC,
            XFS_SUPER_MAGIC,
            F2FS_SUPER_MAGIC,
            ZFS_SUPER_MAGIC,
        ]
        .contains(&fs_type),
    )
}

fn flush(s: &mut FuseSession, node: u64, fh: u64) -> Result<FuseReply, FuseError> {
    use fuse_backend_rs::abi::fuse_abi::FlushIn;
    let arg = FlushIn {
        fh,
        ..Default::default()
    };
    s.call_ok(Opcode::Flush as u32, node, &[arg.as_slice()], REPLY_SPACE)
}

/// On a share on a local filesystem (here a temp dir) the guest is told to skip FLUSH on
/// close, in CREATE and OPEN replies, with the mount table read before the sandbox and no
/// system call outside the allow-list; a FLUSH sent anyway is still answered.
#[test]
fn local_share_opens_files_with_noflush_and_flush_sent_anyway_succeeds() {
    let mut daemon =
        Daemon::start_with(&["--sandbox", "namespace", "--seccomp", "kill"], &[], |d| {
            std::fs::write(d.join("pre"), b"before").unwrap()
        });
    let local = statfs_says_local(&daemon.shared_dir);
    let mut s = daemon.session();
    let noflush = |flags: u32| flags & FOPEN_NOFLUSH != 0;

    let (e, created) = s.create(ROOT, "new", libc::O_RDWR, 0o644).expect("CREATE");
    if let Some(local) = local {
        assert_eq!(
            noflush(created.open_flags),
            local,
            "CREATE open_flags {:#x}; stderr:\n{}",
            created.open_flags,
            daemon.stderr()
        );
    }
    assert_eq!(s.write(e.nodeid, created.fh, 0, b"data").expect("WRITE"), 4);
    flush(&mut s, e.nodeid, created.fh).expect("FLUSH after CREATE");
    s.release(e.nodeid, created.fh).expect("RELEASE");
    assert_eq!(std::fs::read(daemon.host("new")).unwrap(), b"data");

    let pre = s.lookup(ROOT, "pre").expect("LOOKUP");
    for flags in [libc::O_RDONLY, libc::O_RDWR] {
        let opened = s.open(pre.nodeid, flags).expect("OPEN");
        if let Some(local) = local {
            assert_eq!(
                noflush(opened.open_flags),
                local,
                "OPEN {flags:#o} open_flags {:#x}",
                opened.open_flags
            );
        }
        flush(&mut s, pre.nodeid, opened.fh).expect("FLUSH after OPEN");
        s.release(pre.nodeid, opened.fh).expect("RELEASE");
    }
    let dir = s.opendir(ROOT).expect("OPENDIR");
    assert!(!noflush(dir.open_flags), "OPENDIR {:#x}", dir.open_flags);

    if local == Some(true) {
        assert!(
            daemon
                .stderr()
                .contains("FLUSH skipped (FOPEN_NOFLUSH) on "),
            "no start-up line; stderr:\n{}",
            daemon.stderr()
        );
    }
    s.assert_alive().expect("alive under seccomp");
    daemon.assert_running("opens with FOPEN_NOFLUSH");
    drop(s);
    daemon.assert_exits_zero();
}

// ---- every operation, and garbage for every opcode ----------------------------------------------

/// One operation of [`exercise_every_operation`]: sends it, and if the chain never comes back
/// says whether the daemon died (a seccomp kill shows up here).
fn op(
    daemon: &mut Daemon,
    s: &mut FuseSession,
    what: &str,
    opcode: Opcode,
    node: u64,
    body: &[&[u8]],
) -> FuseReply {
    match s.call(opcode as u32, node, body, 64 * 1024) {
        Ok(r) => r,
        Err(e) => {
            let status = daemon.wait_exit(Duration::from_millis(500));
            panic!(
                "{what}: {e}; daemon exit status {status:?}; stderr:\n{}",
                daemon.stderr()
            )
        }
    }
}

/// Checks `r` is a success, naming the operation otherwise.
fn ok(what: &str, r: FuseReply) -> FuseReply {
    assert_eq!(
        r.errno(),
        0,
        "{what}: {}",
        std::io::Error::from_raw_os_error(r.errno())
    );
    r
}

/// Checks `r` is a success or one of `allowed` errnos; returns whether it succeeded.
fn ok_or(what: &str, r: &FuseReply, allowed: &[i32]) -> bool {
    assert!(
        r.errno() == 0 || allowed.contains(&r.errno()),
        "{what}: {}",
        std::io::Error::from_raw_os_error(r.errno())
    );
    r.errno() == 0
}

fn names(parts: &[&str]) -> Vec<u8> {
    parts.iter().flat_map(|p| cname(p)).collect()
}

/// Every FUSE operation a Linux guest uses, once, well-formed, checked against the host.
fn exercise_every_operation(daemon: &mut Daemon, s: &mut FuseSession, xattr: bool) {
    use fuse_backend_rs::abi::fuse_abi::{
        AccessIn, CopyFileRangeIn, EntryOut, FallocateIn, FlushIn, FsyncIn, GetxattrIn,
        GetxattrOut, LinkIn, LkIn, LseekIn, LseekOut, MknodIn, OpenOut, ReleaseIn, Rename2In,
        RenameIn, SetattrIn, SetxattrIn, WriteOut,
    };
    let root = daemon.shared.path().to_path_buf();
    let host = |n: &str| root.join(n);
    let uid = nix::unistd::geteuid().as_raw();
    let gid = nix::unistd::getegid().as_raw();

    let (a, fa) = s.create(ROOT, "a", libc::O_RDWR, 0o644).expect("CREATE");
    let w: WriteOut = ok(
        "WRITE",
        op(
            daemon,
            s,
            "WRITE",
            Opcode::Write,
            a.nodeid,
            &[
                WriteIn {
                    fh: fa.fh,
                    size: 11,
                    ..Default::default()
                }
                .as_slice(),
                b"hello world",
            ],
        ),
    )
    .body_as()
    .unwrap();
    assert_eq!(w.size, 11);
    for flags in [0u32, 1] {
        let arg = FsyncIn {
            fh: fa.fh,
            fsync_flags: flags,
            padding: 0,
        };
        ok(
            "FSYNC",
            op(
                daemon,
                s,
                "FSYNC",
                Opcode::Fsync,
                a.nodeid,
                &[arg.as_slice()],
            ),
        );
    }
    let arg = FlushIn {
        fh: fa.fh,
        ..Default::default()
    };
    ok(
        "FLUSH",
        op(
            daemon,
            s,
            "FLUSH",
            Opcode::Flush,
            a.nodeid,
            &[arg.as_slice()],
        ),
    );
    let arg = FallocateIn {
        fh: fa.fh,
        offset: 0,
        length: 8192,
        mode: 0,
        padding: 0,
    };
    let r = op(
        daemon,
        s,
        "FALLOCATE",
        Opcode::Fallocate,
        a.nodeid,
        &[arg.as_slice()],
    );
    if ok_or("FALLOCATE", &r, &[libc::EOPNOTSUPP]) {
        assert_eq!(std::fs::metadata(host("a")).unwrap().len(), 8192);
    }
    for whence in [
        libc::SEEK_SET,
        libc::SEEK_END,
        libc::SEEK_DATA,
        libc::SEEK_HOLE,
    ] {
        let arg = LseekIn {
            fh: fa.fh,
            offset: 0,
            whence: whence as u32,
            padding: 0,
        };
        let r = op(
            daemon,
            s,
            "LSEEK",
            Opcode::Lseek,
            a.nodeid,
            &[arg.as_slice()],
        );
        if ok_or("LSEEK", &r, &[libc::ENOSYS, libc::ENXIO]) {
            let _: LseekOut = r.body_as().unwrap();
        }
    }

    // SETATTR: size, mode, owner, times (given and now).
    let setattr = |valid: u32, f: &dyn Fn(&mut SetattrIn)| {
        let mut arg = SetattrIn {
            valid,
            ..Default::default()
        };
        f(&mut arg);
        arg
    };
    let cases: Vec<(&str, SetattrIn)> = vec![
        ("SETATTR size", setattr(0x8, &|a| a.size = 5)),
        (
            "SETATTR size via fh",
            setattr(0x8 | 0x40, &|a| {
                a.size = 4;
                a.fh = fa.fh;
            }),
        ),
        (
            "SETATTR mode",
            setattr(0x1, &|a| a.mode = libc::S_IFREG | 0o640),
        ),
        (
            "SETATTR owner",
            setattr(0x2 | 0x4, &|a| {
                a.uid = uid;
                a.gid = gid;
            }),
        ),
        (
            "SETATTR times",
            setattr(0x10 | 0x20, &|a| {
                a.atime = 1_000_000;
                a.mtime = 2_000_000;
            }),
        ),
        (
            "SETATTR times now",
            setattr(0x10 | 0x20 | 0x80 | 0x100, &|_| {}),
        ),
    ];
    for (what, arg) in cases {
        ok(
            what,
            op(
                daemon,
                s,
                what,
                Opcode::Setattr,
                a.nodeid,
                &[arg.as_slice()],
            ),
        );
    }
    let meta = std::fs::metadata(host("a")).unwrap();
    assert_eq!(meta.len(), 4);
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(std::fs::read(host("a")).unwrap(), b"hell");

    let arg = AccessIn {
        mask: libc::R_OK as u32,
        padding: 0,
    };
    ok(
        "ACCESS",
        op(
            daemon,
            s,
            "ACCESS",
            Opcode::Access,
            a.nodeid,
            &[arg.as_slice()],
        ),
    );
    let lk = LkIn {
        fh: fa.fh,
        owner: 1,
        ..Default::default()
    };
    for (what, code) in [("GETLK", Opcode::Getlk), ("SETLK", Opcode::Setlk)] {
        let r = op(daemon, s, what, code, a.nodeid, &[lk.as_slice()]);
        ok_or(what, &r, &[libc::ENOSYS]);
    }

    // Names: symlink, readlink, hard link, fifo, rename, rename2, mkdir, rmdir.
    let r = ok(
        "SYMLINK",
        op(
            daemon,
            s,
            "SYMLINK",
            Opcode::Symlink,
            ROOT,
            &[&names(&["lnk", "a"])],
        ),
    );
    let lnk: EntryOut = r.body_as().unwrap();
    assert_eq!(
        std::fs::read_link(host("lnk")).unwrap(),
        std::path::Path::new("a")
    );
    let r = ok(
        "READLINK",
        op(daemon, s, "READLINK", Opcode::Readlink, lnk.nodeid, &[]),
    );
    assert_eq!(r.body, b"a");
    let arg = LinkIn {
        oldnodeid: a.nodeid,
    };
    ok(
        "LINK",
        op(
            daemon,
            s,
            "LINK",
            Opcode::Link,
            ROOT,
            &[arg.as_slice(), &cname("hard")],
        ),
    );
    assert_eq!(std::fs::metadata(host("a")).unwrap().nlink(), 2);
    let arg = MknodIn {
        mode: libc::S_IFIFO | 0o644,
        rdev: 0,
        umask: 0,
        padding: 0,
    };
    ok(
        "MKNOD",
        op(
            daemon,
            s,
            "MKNOD",
            Opcode::Mknod,
            ROOT,
            &[arg.as_slice(), &cname("fifo")],
        ),
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(host("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    let arg = RenameIn { newdir: ROOT };
    ok(
        "RENAME",
        op(
            daemon,
            s,
            "RENAME",
            Opcode::Rename,
            ROOT,
            &[arg.as_slice(), &names(&["hard", "b"])],
        ),
    );
    assert!(host("b").exists() && !host("hard").exists());
    let arg = Rename2In {
        newdir: ROOT,
        flags: libc::RENAME_NOREPLACE,
        padding: 0,
    };
    ok(
        "RENAME2",
        op(
            daemon,
            s,
            "RENAME2",
            Opcode::Rename2,
            ROOT,
            &[arg.as_slice(), &names(&["b", "c"])],
        ),
    );
    assert!(host("c").exists() && !host("b").exists());
    let r = op(
        daemon,
        s,
        "RENAME2 noreplace",
        Opcode::Rename2,
        ROOT,
        &[arg.as_slice(), &names(&["c", "a"])],
    );
    assert_eq!(r.errno(), libc::EEXIST);
    let d = s.mkdir(ROOT, "d", 0o755).expect("MKDIR");
    ok(
        "RMDIR",
        op(daemon, s, "RMDIR", Opcode::Rmdir, ROOT, &[&cname("d")]),
    );
    assert!(!host("d").exists());

    // Copy between two open files.
    let (c2, fc2) = s
        .create(ROOT, "copy", libc::O_RDWR, 0o644)
        .expect("CREATE copy");
    let arg = CopyFileRangeIn {
        fh_in: fa.fh,
        offset_in: 0,
        nodeid_out: c2.nodeid,
        fh_out: fc2.fh,
        offset_out: 0,
        len: 4,
        flags: 0,
    };
    let r = op(
        daemon,
        s,
        "COPY_FILE_RANGE",
        Opcode::CopyFileRange,
        a.nodeid,
        &[arg.as_slice()],
    );
    if ok_or("COPY_FILE_RANGE", &r, &[libc::ENOSYS]) {
        assert_eq!(std::fs::read(host("copy")).unwrap(), b"hell");
    }

    // Directories: READDIRPLUS and FSYNCDIR.
    let dir: OpenOut = ok(
        "OPENDIR",
        op(
            daemon,
            s,
            "OPENDIR",
            Opcode::Opendir,
            ROOT,
            &[OpenIn::default().as_slice()],
        ),
    )
    .body_as()
    .unwrap();
    let arg = ReadIn {
        fh: dir.fh,
        size: 16 * 1024,
        ..Default::default()
    };
    let r = ok(
        "READDIRPLUS",
        op(
            daemon,
            s,
            "READDIRPLUS",
            Opcode::Readdirplus,
            ROOT,
            &[arg.as_slice()],
        ),
    );
    assert!(
        r.body.len() > std::mem::size_of::<EntryOut>(),
        "READDIRPLUS returned nothing"
    );
    let arg = FsyncIn {
        fh: dir.fh,
        fsync_flags: 0,
        padding: 0,
    };
    let r = op(
        daemon,
        s,
        "FSYNCDIR",
        Opcode::Fsyncdir,
        ROOT,
        &[arg.as_slice()],
    );
    ok_or("FSYNCDIR", &r, &[libc::ENOSYS]);
    let arg = ReleaseIn {
        fh: dir.fh,
        ..Default::default()
    };
    ok(
        "RELEASEDIR",
        op(
            daemon,
            s,
            "RELEASEDIR",
            Opcode::Releasedir,
            ROOT,
            &[arg.as_slice()],
        ),
    );
    s.statfs(ROOT).expect("STATFS");

    // Extended attributes.
    let value = b"xattr-value";
    let arg = SetxattrIn {
        size: value.len() as u32,
        flags: 0,
    };
    let r = op(
        daemon,
        s,
        "SETXATTR",
        Opcode::Setxattr,
        a.nodeid,
        &[arg.as_slice(), &cname("user.t"), value],
    );
    if xattr {
        ok("SETXATTR", r);
        let arg = GetxattrIn {
            size: 0,
            padding: 0,
        };
        let r = ok(
            "GETXATTR size",
            op(
                daemon,
                s,
                "GETXATTR",
                Opcode::Getxattr,
                a.nodeid,
                &[arg.as_slice(), &cname("user.t")],
            ),
        );
        let out: GetxattrOut = r.body_as().unwrap();
        assert_eq!(out.size as usize, value.len());
        let arg = GetxattrIn {
            size: 100,
            padding: 0,
        };
        let r = ok(
            "GETXATTR",
            op(
                daemon,
                s,
                "GETXATTR",
                Opcode::Getxattr,
                a.nodeid,
                &[arg.as_slice(), &cname("user.t")],
            ),
        );
        assert_eq!(r.body, value);
        let r = ok(
            "LISTXATTR",
            op(
                daemon,
                s,
                "LISTXATTR",
                Opcode::Listxattr,
                a.nodeid,
                &[arg.as_slice()],
            ),
        );
        assert!(r.body.windows(7).any(|w| w == b"user.t\0"));
        ok(
            "REMOVEXATTR",
            op(
                daemon,
                s,
                "REMOVEXATTR",
                Opcode::Removexattr,
                a.nodeid,
                &[&cname("user.t")],
            ),
        );
    } else {
        assert_eq!(r.errno(), libc::ENOSYS, "SETXATTR without --xattr");
    }

    // Odds and ends a guest may send.
    let r = op(daemon, s, "IOCTL", Opcode::Ioctl, a.nodeid, &[&[0u8; 32]]);
    assert_ne!(r.errno(), 0, "IOCTL");
    let r = op(daemon, s, "BMAP", Opcode::Bmap, a.nodeid, &[&[0u8; 16]]);
    assert_ne!(r.errno(), 0, "BMAP");
    let r = op(
        daemon,
        s,
        "SETUPMAPPING",
        Opcode::SetupMapping,
        a.nodeid,
        &[&[0u8; 40]],
    );
    assert_ne!(r.errno(), 0, "SETUPMAPPING without DAX");

    // Clean up: release, unlink, batch forget.
    for (node, fh) in [(a.nodeid, fa.fh), (c2.nodeid, fc2.fh)] {
        s.release(node, fh).expect("RELEASE");
    }
    for n in ["a", "c", "lnk", "fifo", "copy"] {
        s.unlink(ROOT, n)
            .unwrap_or_else(|e| panic!("UNLINK {n}: {e}"));
        assert!(
            std::fs::symlink_metadata(host(n)).is_err(),
            "{n} still on the host"
        );
    }
    let mut body = 3u32.to_le_bytes().to_vec();
    body.extend_from_slice(&0u32.to_le_bytes());
    for node in [a.nodeid, lnk.nodeid, d.nodeid] {
        body.extend_from_slice(&node.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
    }
    let u = s.unique();
    let reply = s
        .frontend()
        .send_chain(
            HIPRIO_QUEUE,
            &[&request(Opcode::BatchForget as u32, u, 0, &[&body])],
            &[],
        )
        .expect("BATCH_FORGET returned");
    assert_eq!(reply.len, 0);
    s.assert_alive().expect("alive after every operation");
    daemon.assert_running("every operation");
}

#[test]
fn every_operation_works_against_the_host() {
    let mut daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    exercise_every_operation(&mut daemon, &mut s, false);
}

#[test]
fn every_operation_works_with_xattr() {
    let mut daemon = Daemon::start(&["--xattr"]);
    let mut s = daemon.session();
    exercise_every_operation(&mut daemon, &mut s, true);
}

#[test]
fn every_operation_works_sandboxed_under_seccomp_kill() {
    let mut daemon = Daemon::start_with(
        &["--sandbox", "namespace", "--seccomp", "kill"],
        &[],
        |_| {},
    );
    let mut s = daemon.session();
    exercise_every_operation(&mut daemon, &mut s, false);
}

#[test]
fn every_operation_works_sandboxed_with_xattr() {
    let mut daemon = Daemon::start_with(
        &["--sandbox", "namespace", "--seccomp", "kill"],
        &["--xattr"],
        |_| {},
    );
    let mut s = daemon.session();
    exercise_every_operation(&mut daemon, &mut s, true);
}

/// Every defined opcode with garbage bodies of several sizes: each gets a well-formed reply
/// (or, for the opcodes that have none, nothing), and the daemon keeps serving.
fn garbage_for_every_opcode(daemon: &mut Daemon) {
    let mut s = daemon.session();
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let no_reply = [
        Opcode::Forget as u32,
        Opcode::Interrupt as u32,
        Opcode::Destroy as u32,
        Opcode::BatchForget as u32,
    ];
    for opcode in (1u32..Opcode::MaxOpcode as u32).filter(|o| ![7, 19].contains(o)) {
        for size in [0usize, 8, 64, 300, 4096] {
            let body: Vec<u8> = (0..size).map(|_| rnd() as u8).collect();
            let u = s.unique();
            let req = request(opcode, u, ROOT, &[&body]);
            let what = format!("opcode {opcode} with {size} garbage bytes");
            let reply = s.send_raw(&req, REPLY_SPACE).unwrap_or_else(|e| {
                let status = daemon.wait_exit(Duration::from_millis(500));
                panic!("{what}: {e}; exit {status:?}; stderr:\n{}", daemon.stderr())
            });
            if reply.len == 0 {
                assert!(no_reply.contains(&opcode), "{what}: no reply");
            } else {
                FuseReply::from_reply(&reply, u).unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            if opcode == Opcode::Init as u32 || opcode == Opcode::Destroy as u32 {
                s.init()
                    .unwrap_or_else(|e| panic!("INIT after {what}: {e}"));
            }
            s.assert_alive().unwrap_or_else(|e| {
                let status = daemon.wait_exit(Duration::from_millis(500));
                panic!(
                    "after {what}: {e}; exit {status:?}; stderr:\n{}",
                    daemon.stderr()
                )
            });
        }
    }
    daemon.assert_running("garbage for every opcode");
}

#[test]
fn garbage_bodies_for_every_opcode() {
    let mut daemon = Daemon::start(&[]);
    garbage_for_every_opcode(&mut daemon);
}

#[test]
fn garbage_bodies_for_every_opcode_sandboxed_under_seccomp_kill() {
    let mut daemon = Daemon::start_with(
        &["--sandbox", "namespace", "--seccomp", "kill"],
        &["--xattr"],
        |_| {},
    );
    garbage_for_every_opcode(&mut daemon);
}

#[test]
fn inode_file_handles_work_sandboxed_under_seccomp_kill() {
    for mode in [
        "--inode-file-handles=prefer",
        "--inode-file-handles=mandatory",
    ] {
        let mut daemon = Daemon::start_with(
            &["--sandbox", "namespace", "--seccomp", "kill"],
            &[mode],
            |d| std::fs::write(d.join("x"), b"data").unwrap(),
        );
        let mut s = daemon.session();
        let e = s.lookup(ROOT, "x").expect("LOOKUP");
        let fh = s.open(e.nodeid, libc::O_RDONLY).expect("OPEN").fh;
        assert_eq!(
            s.read(e.nodeid, fh, 0, 100).expect("READ"),
            b"data",
            "{mode}"
        );
        s.release(e.nodeid, fh).expect("RELEASE");
        // Forgotten, then found again: reopened from its handle.
        s.forget(e.nodeid, 1).expect("FORGET");
        let again = s.lookup(ROOT, "x").expect("LOOKUP again");
        let fh = s.open(again.nodeid, libc::O_RDWR).expect("OPEN again").fh;
        s.write(again.nodeid, fh, 4, b"+more").expect("WRITE");
        assert_eq!(
            std::fs::read(daemon.host("x")).unwrap(),
            b"data+more",
            "{mode}"
        );
        daemon.assert_running(mode);
    }
}

#[test]
fn kicks_wake_the_daemon_without_being_read_and_an_idle_daemon_sleeps() {
    // The daemon registers each queue's kick eventfd edge-triggered: every kick is one epoll
    // event, and the eventfd's counter is never read back (a system call per wake-up saved).
    // So the kicks stay counted in the eventfd, and the daemon must still sleep while they
    // do: a kick eventfd left readable in a level-triggered set would spin its thread.
    let daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    s.frontend()
        .unread_kicks(REQUEST_QUEUE)
        .expect("resetting the kick count");
    let requests = 20;
    for _ in 0..requests {
        s.getattr(ROOT).expect("GETATTR");
    }
    let pid = daemon.pid();
    let before = vm_tests::cpu::tree_run_ns(&[pid]);
    std::thread::sleep(Duration::from_millis(500));
    let idle_ns = vm_tests::cpu::tree_run_ns(&[pid]).saturating_sub(before);
    assert!(
        idle_ns < 50_000_000,
        "an idle daemon with unread kicks ran {} ms in 500 ms",
        idle_ns / 1_000_000
    );
    let unread = s
        .frontend()
        .unread_kicks(REQUEST_QUEUE)
        .expect("reading the kick count");
    assert_eq!(
        unread, requests,
        "the daemon read kicks it only needs to be woken by"
    );
    // The counter was reset under the daemon's feet: the next kick must still wake it.
    s.getattr(ROOT)
        .expect("GETATTR after the kick count was read");
}
