//! DAX through vhost-user shared memory, with the test VMM playing QEMU: it negotiates SHMEM,
//! reserves the window the daemon announces and `mmap`s every `SHMEM_MAP` into it. Real FUSE
//! SETUPMAPPING / REMOVEMAPPING messages drive the daemon.

mod common;

use std::sync::Arc;

use common::Daemon;
use fuse_backend_rs::abi::fuse_abi::Opcode;
use fuse_backend_rs::abi::virtio_fs::{
    RemovemappingIn, RemovemappingOne, SetupmappingFlags, SetupmappingIn,
};
use vm_memory::ByteValued;
use vm_tests::dax_window::{DaxWindowMapper, WindowRequest};
use vm_tests::frontend::{FrontendConfig, TestFrontend};
use vm_tests::fuse::{FuseSession, ROOT};

const MIB: u64 = 1 << 20;
const WINDOW: u64 = 64 * MIB;
const REPLY_SPACE: usize = 4096;

/// A pattern that differs at every 4 KiB page and every byte inside it.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ ((i >> 12) as u8).wrapping_mul(31) ^ seed)
        .collect()
}

struct DaxPod {
    session: FuseSession,
    window: Arc<DaxWindowMapper>,
}

fn connect_dax(daemon: &Daemon) -> DaxPod {
    let window = Arc::new(DaxWindowMapper::new(WINDOW).expect("reserving the window"));
    let config = FrontendConfig {
        shmem: true,
        ..Default::default()
    };
    let mut frontend = TestFrontend::connect_with_handler(&daemon.socket, config, window.clone())
        .unwrap_or_else(|e| panic!("connecting: {e}; stderr:\n{}", daemon.stderr()));
    assert_eq!(
        frontend.shmem_regions().expect("GET_SHMEM_CONFIG"),
        vec![WINDOW],
        "the daemon must announce one region of --dax-window bytes"
    );
    let mut session = FuseSession::new(frontend);
    session.init().expect("FUSE_INIT");
    DaxPod { session, window }
}

fn dax_daemon(extra: &[&str], prepare: impl FnOnce(&std::path::Path)) -> Daemon {
    let mut args = vec!["--dax-window", "64M"];
    args.extend_from_slice(extra);
    Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], &args, prepare)
}

fn setupmapping(
    s: &mut FuseSession,
    node: u64,
    fh: u64,
    foffset: u64,
    moffset: u64,
    len: u64,
    flags: u64,
) -> i32 {
    let arg = SetupmappingIn {
        fh,
        foffset,
        len,
        flags,
        moffset,
    };
    s.call(
        Opcode::SetupMapping as u32,
        node,
        &[arg.as_slice()],
        REPLY_SPACE,
    )
    .expect("SETUPMAPPING reply")
    .errno()
}

fn removemapping(s: &mut FuseSession, node: u64, ranges: &[(u64, u64)]) -> i32 {
    let head = RemovemappingIn {
        count: ranges.len() as u32,
    };
    let ones: Vec<u8> = ranges
        .iter()
        .flat_map(|&(moffset, len)| RemovemappingOne { moffset, len }.as_slice().to_vec())
        .collect();
    s.call(
        Opcode::RemoveMapping as u32,
        node,
        &[head.as_slice(), &ones],
        REPLY_SPACE,
    )
    .expect("REMOVEMAPPING reply")
    .errno()
}

#[test]
fn data_read_through_the_window_equals_the_host_file() {
    let data = pattern(4 * MIB as usize, 7);
    let daemon = dax_daemon(&[], |d| std::fs::write(d.join("big"), &data).unwrap());
    let mut pod = connect_dax(&daemon);
    let node = pod.session.lookup(ROOT, "big").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDONLY).unwrap().fh;
    // Map the second 2 MiB of the file at window offset 8 MiB.
    let errno = setupmapping(
        &mut pod.session,
        node,
        fh,
        2 * MIB,
        8 * MIB,
        2 * MIB,
        SetupmappingFlags::READ.bits(),
    );
    assert_eq!(
        errno,
        0,
        "SETUPMAPPING failed; stderr:\n{}",
        daemon.stderr()
    );
    let seen = pod.window.read(8 * MIB, 2 * MIB as usize).unwrap();
    assert!(
        seen == data[2 * MIB as usize..4 * MIB as usize],
        "window bytes differ from the file"
    );
    // A read mapping on a writable export is made through a read-write descriptor (QEMU 11.1
    // cannot map a read-only one): the guest could open the file read-write through FUSE.
    assert_eq!(
        pod.window.requests(),
        vec![WindowRequest::Map {
            shm_offset: 8 * MIB,
            fd_offset: 2 * MIB,
            len: 2 * MIB,
            writable: true
        }]
    );
}

#[test]
fn writes_through_a_writable_mapping_reach_the_host_file() {
    let daemon = dax_daemon(&[], |d| {
        std::fs::write(d.join("f"), vec![0u8; 2 * MIB as usize]).unwrap()
    });
    let mut pod = connect_dax(&daemon);
    let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDWR).unwrap().fh;
    let rw = (SetupmappingFlags::READ | SetupmappingFlags::WRITE).bits();
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 0, 0, 2 * MIB, rw),
        0
    );
    pod.window.write(4096 + 10, b"written through DAX").unwrap();
    let host = std::fs::read(daemon.host("f")).unwrap();
    assert_eq!(&host[4096 + 10..4096 + 29], b"written through DAX");
}

#[test]
fn writable_mappings_need_a_file_open_for_writing() {
    let daemon = dax_daemon(&[], |d| {
        std::fs::write(d.join("f"), vec![1u8; 8192]).unwrap()
    });
    let mut pod = connect_dax(&daemon);
    let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDONLY).unwrap().fh;
    let rw = (SetupmappingFlags::READ | SetupmappingFlags::WRITE).bits();
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 0, 0, 4096, rw),
        libc::EACCES
    );
    // Once a handle open for writing exists, the same request is granted; after its release
    // it is refused again.
    let wfh = pod.session.open(node, libc::O_WRONLY).unwrap().fh;
    assert_eq!(setupmapping(&mut pod.session, node, wfh, 0, 0, 4096, rw), 0);
    pod.session.release(node, wfh).unwrap();
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 0, 4096, 4096, rw),
        libc::EACCES
    );
    let maps: Vec<_> = pod
        .window
        .requests()
        .into_iter()
        .filter(|r| matches!(r, WindowRequest::Map { .. }))
        .collect();
    assert_eq!(maps.len(), 1, "only the granted request may reach the VMM");
}

#[test]
fn readonly_exports_refuse_writable_mappings() {
    let daemon = dax_daemon(&["--readonly"], |d| {
        std::fs::write(d.join("f"), b"ro").unwrap()
    });
    let mut pod = connect_dax(&daemon);
    let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDONLY).unwrap().fh;
    let rw = (SetupmappingFlags::READ | SetupmappingFlags::WRITE).bits();
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 0, 0, 4096, rw),
        libc::EROFS
    );
    assert_eq!(
        setupmapping(
            &mut pod.session,
            node,
            fh,
            0,
            0,
            4096,
            SetupmappingFlags::READ.bits()
        ),
        0
    );
    // Read mappings of a --readonly export are read-only, never a writable descriptor.
    assert_eq!(
        pod.window.requests(),
        vec![WindowRequest::Map {
            shm_offset: 0,
            fd_offset: 0,
            len: 4096,
            writable: false
        }]
    );
}

#[test]
fn removemapping_unmaps() {
    let daemon = dax_daemon(&[], |d| {
        std::fs::write(d.join("f"), pattern(4 * MIB as usize, 1)).unwrap()
    });
    let mut pod = connect_dax(&daemon);
    let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDONLY).unwrap().fh;
    let r = SetupmappingFlags::READ.bits();
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 0, 0, 2 * MIB, r),
        0
    );
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 2 * MIB, 2 * MIB, 2 * MIB, r),
        0
    );
    assert_eq!(pod.window.live().len(), 2);
    assert_eq!(removemapping(&mut pod.session, node, &[(0, 2 * MIB)]), 0);
    assert_eq!(
        pod.window.live().into_iter().collect::<Vec<_>>(),
        vec![(2 * MIB, 2 * MIB)]
    );
    assert!(
        pod.window.read(0, 16).is_err(),
        "unmapped range must not be readable"
    );
    // The guest's "remove everything" form unmaps each live mapping exactly (QEMU refuses an
    // unmap that matches no mapping), and nothing for the empty rest of the window.
    assert_eq!(removemapping(&mut pod.session, node, &[(0, u64::MAX)]), 0);
    assert!(pod.window.live().is_empty());
    assert_eq!(
        pod.window.requests().last(),
        Some(&WindowRequest::Unmap {
            shm_offset: 2 * MIB,
            len: 2 * MIB
        })
    );
    // Removing a range with nothing mapped succeeds and sends nothing.
    let before = pod.window.requests().len();
    assert_eq!(
        removemapping(&mut pod.session, node, &[(8 * MIB, 2 * MIB)]),
        0
    );
    assert_eq!(pod.window.requests().len(), before);
}

fn unmaps(window: &DaxWindowMapper) -> Vec<(u64, u64)> {
    window
        .requests()
        .into_iter()
        .filter_map(|r| match r {
            WindowRequest::Unmap { shm_offset, len } => Some((shm_offset, len)),
            _ => None,
        })
        .collect()
}

#[test]
fn setupmapping_over_a_live_range_unmaps_it_first() {
    let data = pattern(8 * MIB as usize, 5);
    let daemon = dax_daemon(&[], |d| std::fs::write(d.join("f"), &data).unwrap());
    let mut pod = connect_dax(&daemon);
    let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDONLY).unwrap().fh;
    let r = SetupmappingFlags::READ.bits();
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 0, 0, 4 * MIB, r),
        0
    );
    // The guest reuses window offset 2 MiB for another part of the file (its range was
    // reclaimed without a REMOVEMAPPING): the live 4 MiB mapping there goes first, or the
    // VMM would refuse the overlap.
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 6 * MIB, 2 * MIB, 2 * MIB, r),
        0,
        "stderr:\n{}",
        daemon.stderr()
    );
    assert_eq!(unmaps(&pod.window), vec![(0, 4 * MIB)]);
    assert_eq!(
        pod.window.live().into_iter().collect::<Vec<_>>(),
        vec![(2 * MIB, 2 * MIB)]
    );
    let seen = pod.window.read(2 * MIB, 2 * MIB as usize).unwrap();
    assert!(
        seen == data[6 * MIB as usize..],
        "window holds the old range"
    );
}

#[test]
fn a_new_init_and_destroy_unmap_every_live_mapping() {
    let daemon = dax_daemon(&[], |d| {
        std::fs::write(d.join("f"), pattern(4 * MIB as usize, 2)).unwrap()
    });
    let mut pod = connect_dax(&daemon);
    let r = SetupmappingFlags::READ.bits();
    let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDONLY).unwrap().fh;
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 0, 0, 2 * MIB, r),
        0
    );
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 2 * MIB, 10 * MIB, 2 * MIB, r),
        0
    );
    // umount sends DESTROY and no REMOVEMAPPING. (fuse-backend-rs 0.14 returns a used length
    // of 0 for its DESTROY reply, so the reply itself is not checked here.)
    let _ = pod
        .session
        .call(Opcode::Destroy as u32, 0, &[], REPLY_SPACE);
    assert!(pod.window.live().is_empty(), "{:?}", pod.window.live());
    assert_eq!(unmaps(&pod.window), vec![(0, 2 * MIB), (10 * MIB, 2 * MIB)]);
    // The next mount: INIT, and the same window offsets are mapped again without an overlap.
    pod.session.init().expect("second FUSE_INIT");
    let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDONLY).unwrap().fh;
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 0, 0, 2 * MIB, r),
        0
    );
    // A new INIT without DESTROY (a guest that rebooted) unmaps too.
    pod.session.init().expect("third FUSE_INIT");
    assert!(pod.window.live().is_empty());
    assert_eq!(unmaps(&pod.window).len(), 3);
}

#[test]
fn a_mapping_past_the_end_of_a_file_is_its_pages_then_zeros_and_follows_the_file() {
    let size = 3 * MIB as usize + 100;
    let data = pattern(size, 9);
    let daemon = dax_daemon(&[], |d| std::fs::write(d.join("f"), &data).unwrap());
    let mut pod = connect_dax(&daemon);
    let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDWR).unwrap().fh;
    let r = SetupmappingFlags::READ.bits();
    // The guest maps the second 2 MiB chunk: 1 MiB + 100 bytes of file, then nothing.
    assert_eq!(
        setupmapping(&mut pod.session, node, fh, 2 * MIB, 4 * MIB, 2 * MIB, r),
        0,
        "stderr:\n{}",
        daemon.stderr()
    );
    let seen = pod.window.read(4 * MIB, 2 * MIB as usize).unwrap();
    let file_part = size - 2 * MIB as usize;
    assert!(
        seen[..file_part] == data[2 * MIB as usize..],
        "file bytes differ"
    );
    assert!(
        seen[file_part..].iter().all(|&b| b == 0),
        "padding not zero"
    );
    // A store into the file's last partial page reaches the file at the next sync.
    let at = 4 * MIB + file_part as u64 - 10;
    pod.window.write(at, b"0123456789").unwrap();
    let reply = pod
        .session
        .call(Opcode::Getattr as u32, node, &[&[0u8; 16]], REPLY_SPACE)
        .unwrap();
    assert_eq!(reply.errno(), 0);
    let host = std::fs::read(daemon.host("f")).unwrap();
    assert_eq!(host.len(), size, "the file must not grow");
    assert_eq!(&host[size - 10..], b"0123456789");
    // The file grows on the host: the next GETATTR maps the chunk again from the new size.
    use std::io::Write as _;
    let more = pattern(5000, 77);
    std::fs::OpenOptions::new()
        .append(true)
        .open(daemon.host("f"))
        .unwrap()
        .write_all(&more)
        .unwrap();
    pod.session.getattr(node).unwrap();
    let seen = pod
        .window
        .read(4 * MIB + file_part as u64, more.len())
        .unwrap();
    assert_eq!(seen, more, "appended bytes not seen through the window");
    pod.session.assert_alive().expect("daemon still serving");
}

#[test]
fn bad_mapping_requests_get_errors_and_change_nothing() {
    let daemon = dax_daemon(&[], |d| {
        std::fs::write(d.join("f"), vec![3u8; 8192]).unwrap()
    });
    let mut pod = connect_dax(&daemon);
    let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
    let fh = pod.session.open(node, libc::O_RDONLY).unwrap().fh;
    let r = SetupmappingFlags::READ.bits();
    let cases: [(&str, u64, u64, u64); 6] = [
        ("past the window end", 0, WINDOW - 4096, 8192),
        ("offset past the window", 0, WINDOW, 4096),
        ("wrapping offset", 0, u64::MAX - 4095, 8192),
        ("misaligned window offset", 0, 100, 4096),
        ("misaligned file offset", 17, 0, 4096),
        ("zero length", 0, 0, 0),
    ];
    for (what, foffset, moffset, len) in cases {
        let errno = setupmapping(&mut pod.session, node, fh, foffset, moffset, len, r);
        assert_eq!(errno, libc::EINVAL, "{what}");
    }
    let errno = setupmapping(&mut pod.session, node, fh, 0, 0, 4096, 0x40);
    assert_eq!(errno, libc::EINVAL, "unknown flags");
    assert_eq!(
        removemapping(&mut pod.session, node, &[(WINDOW, 4096)]),
        libc::EINVAL
    );
    // A bad entry after a good one: nothing is unmapped.
    assert_eq!(
        removemapping(&mut pod.session, node, &[(0, 4096), (3, 4096)]),
        libc::EINVAL
    );
    assert!(
        pod.window.requests().is_empty(),
        "a refused request reached the VMM: {:?}",
        pod.window.requests()
    );
    pod.session.assert_alive().expect("daemon still serving");
}

#[test]
fn two_pods_mapping_one_file_see_each_others_writes_at_once() {
    let a = dax_daemon(&[], |d| {
        std::fs::write(d.join("shared"), vec![0u8; 2 * MIB as usize]).unwrap()
    });
    let b = Daemon::start_sharing(
        &a,
        &["--sandbox", "none", "--seccomp", "none"],
        &["--dax-window", "64M"],
    );
    let mut pod_a = connect_dax(&a);
    let mut pod_b = connect_dax(&b);
    let rw = (SetupmappingFlags::READ | SetupmappingFlags::WRITE).bits();
    let na = pod_a.session.lookup(ROOT, "shared").unwrap().nodeid;
    let fa = pod_a.session.open(na, libc::O_RDWR).unwrap().fh;
    assert_eq!(
        setupmapping(&mut pod_a.session, na, fa, 0, 0, 2 * MIB, rw),
        0
    );
    let nb = pod_b.session.lookup(ROOT, "shared").unwrap().nodeid;
    let fb = pod_b.session.open(nb, libc::O_RDONLY).unwrap().fh;
    assert_eq!(
        setupmapping(
            &mut pod_b.session,
            nb,
            fb,
            0,
            4 * MIB,
            2 * MIB,
            SetupmappingFlags::READ.bits()
        ),
        0
    );
    for round in 0u8..5 {
        let msg = [round; 64];
        pod_a
            .window
            .write(MIB + u64::from(round) * 4096, &msg)
            .unwrap();
        // No FUSE round trip, no flush: both windows map the same host page.
        let seen = pod_b
            .window
            .read(4 * MIB + MIB + u64::from(round) * 4096, 64)
            .unwrap();
        assert_eq!(
            seen, msg,
            "pod B did not see pod A's write at once (round {round})"
        );
    }
}

#[test]
fn dax_bytes_are_metered() {
    let mut daemon = dax_daemon(&[], |d| {
        std::fs::write(d.join("f"), vec![9u8; 8 * MIB as usize]).unwrap()
    });
    {
        let mut pod = connect_dax(&daemon);
        let node = pod.session.lookup(ROOT, "f").unwrap().nodeid;
        let fh = pod.session.open(node, libc::O_RDONLY).unwrap().fh;
        let r = SetupmappingFlags::READ.bits();
        assert_eq!(
            setupmapping(&mut pod.session, node, fh, 0, 0, 2 * MIB, r),
            0
        );
        assert_eq!(
            setupmapping(&mut pod.session, node, fh, 2 * MIB, 2 * MIB, 4 * MIB, r),
            0
        );
        assert_eq!(
            setupmapping(&mut pod.session, node, fh, 0, 1, 4096, r),
            libc::EINVAL
        );
        assert_eq!(removemapping(&mut pod.session, node, &[(0, 2 * MIB)]), 0);
    }
    daemon.assert_exits_zero();
    let log = daemon.stderr();
    let expected = format!(
        "dax totals: map_ops=2 mapped_bytes={} unmap_ops=1 unmapped_bytes={} refused_ops=1",
        6 * MIB,
        2 * MIB
    );
    assert!(log.contains(&expected), "expected {expected:?} in:\n{log}");
}

#[test]
fn without_a_window_no_shared_memory_is_offered() {
    let daemon = Daemon::start(&[]);
    let frontend = daemon.connect_with(FrontendConfig {
        shmem: true,
        ..Default::default()
    });
    assert!(
        !frontend
            .acked_protocol_features()
            .contains(vhost::vhost_user::message::VhostUserProtocolFeatures::SHMEM),
        "SHMEM offered without --dax-window"
    );
    let mut session = FuseSession::new(frontend);
    session.init().unwrap();
    let node = ROOT;
    assert_eq!(
        setupmapping(
            &mut session,
            node,
            0,
            0,
            0,
            4096,
            SetupmappingFlags::READ.bits()
        ),
        libc::EINVAL,
        "SETUPMAPPING without a window must fail"
    );
}

#[test]
fn dax_file_size_flags_only_large_files_for_dax() {
    use fuse_backend_rs::abi::fuse_abi::{FsOptions, FUSE_ATTR_DAX};
    let daemon = Daemon::start_with(
        &["--sandbox", "none", "--seccomp", "none"],
        &["--dax-window", "64M", "--dax-file-size", "1M"],
        |d| {
            std::fs::write(d.join("small"), vec![1u8; 4096]).unwrap();
            std::fs::write(d.join("large"), vec![2u8; 2 * MIB as usize]).unwrap();
        },
    );
    let window = Arc::new(DaxWindowMapper::new(WINDOW).unwrap());
    let config = FrontendConfig {
        shmem: true,
        ..Default::default()
    };
    let frontend = TestFrontend::connect_with_handler(&daemon.socket, config, window).unwrap();
    let mut s = FuseSession::new(frontend);
    // A guest mounted with dax=inode offers PERFILE_DAX (FUSE_HAS_INODE_DAX).
    let flags = vm_tests::fuse::linux_init_flags() | FsOptions::PERFILE_DAX;
    s.init_with(7, 38, flags).unwrap();
    let small = s.lookup(ROOT, "small").unwrap();
    let large = s.lookup(ROOT, "large").unwrap();
    assert_eq!(
        small.attr.flags & FUSE_ATTR_DAX,
        0,
        "small file flagged for DAX"
    );
    assert_eq!(
        large.attr.flags & FUSE_ATTR_DAX,
        FUSE_ATTR_DAX,
        "large file not flagged"
    );
}
