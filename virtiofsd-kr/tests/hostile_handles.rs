//! What a hostile guest can do with handles, open flags and inode counts, against the real
//! daemon through the test VMM.
//!
//! Each test pins one class of defect found by fuzzing the daemon from a guest's side:
//! - a failed READ or WRITE must never close the handle's host descriptor (the next open
//!   would reuse its number, and the handle would then reach another file);
//! - the flags a guest sends with READ/WRITE never change the host descriptor (`O_DIRECT`
//!   without `--allow-direct-io`, `O_APPEND`, `O_ASYNC`, ...);
//! - `O_PATH` and `O_TMPFILE` are refused in OPEN, OPENDIR and CREATE, and nothing a guest
//!   opens can block a queue thread (FIFOs, sockets, device nodes, symlinks);
//! - DESTROY then INIT serves the same tree in every sandbox mode, with file handles;
//! - a guest may hold more inodes than the daemon's descriptor limit, and the descriptors
//!   kept for file-handle inodes stay within their budget and close at FORGET;
//! - the daemon exits when the VMM leaves even while a request is stuck in the host, and
//!   ends the connection with the reason when it cannot take a message's descriptors.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use fuse_backend_rs::abi::fuse_abi::{CreateIn, Opcode, OpenIn, ReadIn, WriteIn};
use vm_memory::ByteValued;
use vm_tests::frontend::{FrontendConfig, REQUEST_QUEUE};
use vm_tests::fuse::{cname, request, FuseError, FuseReply, FuseSession, REPLY_SPACE, ROOT};

/// Confinement of a production daemon.
const CONFINED: &[&str] = &["--sandbox", "namespace", "--seccomp", "kill"];

fn errno<T: std::fmt::Debug>(r: Result<T, FuseError>) -> i32 {
    match r {
        Err(FuseError::Errno(e)) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// READ with the guest's file flags set to `flags`.
fn read_with_flags(
    s: &mut FuseSession,
    node: u64,
    fh: u64,
    flags: u32,
) -> Result<Vec<u8>, FuseError> {
    let arg = ReadIn {
        fh,
        offset: 0,
        size: 4096,
        flags,
        ..Default::default()
    };
    Ok(
        s.call_ok(Opcode::Read as u32, node, &[arg.as_slice()], REPLY_SPACE)?
            .body,
    )
}

/// WRITE of `data` at 0 with the guest's file flags set to `flags`.
fn write_with_flags(
    s: &mut FuseSession,
    node: u64,
    fh: u64,
    flags: u32,
    data: &[u8],
) -> Result<FuseReply, FuseError> {
    let arg = WriteIn {
        fh,
        offset: 0,
        size: data.len() as u32,
        flags,
        ..Default::default()
    };
    s.call_ok(
        Opcode::Write as u32,
        node,
        &[arg.as_slice(), data],
        REPLY_SPACE,
    )
}

fn create_with_flags(s: &mut FuseSession, name: &str, flags: i32) -> Result<FuseReply, FuseError> {
    let arg = CreateIn {
        flags: flags as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    s.call_ok(
        Opcode::Create as u32,
        ROOT,
        &[arg.as_slice(), &cname(name)],
        REPLY_SPACE,
    )
}

fn open_with_flags(s: &mut FuseSession, node: u64, flags: i32) -> Result<FuseReply, FuseError> {
    let arg = OpenIn {
        flags: flags as u32,
        fuse_flags: 0,
    };
    s.call_ok(Opcode::Open as u32, node, &[arg.as_slice()], REPLY_SPACE)
}

/// The daemon's open-file descriptors (not `O_PATH`, such as an inode keeps) that name
/// `path`, with the flags `/proc/PID/fdinfo` shows.
fn host_descriptors(pid: u32, path: &Path) -> Vec<(u32, i32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("daemon's fd dir") {
        let entry = entry.unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if target != path {
            continue;
        }
        let fd: u32 = entry.file_name().to_str().unwrap().parse().unwrap();
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| i32::from_str_radix(f.trim(), 8).unwrap())
            .expect("flags in fdinfo");
        if flags & libc::O_PATH == 0 {
            found.push((fd, flags));
        }
    }
    found
}

#[test]
fn failed_read_or_write_never_closes_the_handles_descriptor() {
    for extra in [&[][..], &["--allow-direct-io"][..]] {
        let daemon =
            Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], extra, |dir| {
                std::fs::create_dir(dir.join("d")).unwrap();
                std::fs::write(dir.join("d/inside"), b"x").unwrap();
            });
        let mut s = daemon.session();
        let d = s.lookup(ROOT, "d").expect("LOOKUP d").nodeid;
        let dh = s.opendir(d).expect("OPENDIR d").fh;

        // READ and WRITE on a directory handle fail (with O_DIRECT, which a directory
        // refuses, and without)...
        for flags in [libc::O_DIRECT as u32, 0] {
            assert_ne!(errno(read_with_flags(&mut s, d, dh, flags)), 0);
            assert_ne!(errno(write_with_flags(&mut s, d, dh, flags, b"no")), 0);
        }
        // ... new files take whatever descriptor numbers are free ...
        for i in 0..8 {
            let (e, open) = s
                .create(ROOT, &format!("f{i}"), libc::O_RDWR, 0o644)
                .expect("CREATE");
            s.write(e.nodeid, open.fh, 0, b"file data").expect("WRITE");
        }
        // ... and the directory handle still lists the directory.
        let names: Vec<Vec<u8>> = s
            .readdir(d, dh, 0)
            .unwrap_or_else(|e| panic!("READDIR on the handle after failed I/O ({extra:?}): {e}"))
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert!(
            names.iter().any(|n| n == b"inside"),
            "{extra:?}: the directory handle lists {names:?}"
        );
        for i in 0..8 {
            assert_eq!(
                std::fs::read(daemon.host(&format!("f{i}"))).unwrap(),
                b"file data"
            );
        }
    }
}

#[test]
fn guest_read_write_flags_never_change_the_host_descriptor() {
    let daemon = Daemon::start(&[]);
    let mut s = daemon.session();
    let (e, open) = s.create(ROOT, "file", libc::O_RDWR, 0o644).expect("CREATE");
    s.write(e.nodeid, open.fh, 0, b"0123456789").expect("WRITE");
    let host = daemon.host("file");
    let before = host_descriptors(daemon.pid(), &host);
    assert_eq!(before.len(), 1, "one descriptor for the handle: {before:?}");

    let hostile =
        (libc::O_DIRECT | libc::O_APPEND | libc::O_NONBLOCK | libc::O_ASYNC | libc::O_NOATIME)
            as u32;
    // Whatever the outcome of each request, the host descriptor keeps its flags.
    let _ = write_with_flags(&mut s, e.nodeid, open.fh, hostile, b"ab");
    let _ = read_with_flags(&mut s, e.nodeid, open.fh, hostile);
    let after = host_descriptors(daemon.pid(), &host);
    assert_eq!(
        before,
        after,
        "guest READ/WRITE flags changed the host descriptor (octal flags {:o} -> {:o})",
        before[0].1,
        after.first().map(|a| a.1).unwrap_or(0)
    );
    // A write at offset 0 stays at offset 0 (with O_APPEND on the host it would append).
    let _ = write_with_flags(&mut s, e.nodeid, open.fh, libc::O_APPEND as u32, b"AB");
    assert_eq!(std::fs::read(&host).unwrap(), b"AB23456789");

    // CREATE with O_DIRECT without --allow-direct-io: no O_DIRECT on the host either.
    let (e2, _open2) = s
        .create(ROOT, "direct", libc::O_RDWR | libc::O_DIRECT, 0o644)
        .expect("CREATE O_DIRECT");
    assert_ne!(e2.nodeid, 0);
    for (_, flags) in host_descriptors(daemon.pid(), &daemon.host("direct")) {
        assert_eq!(flags & libc::O_DIRECT, 0, "CREATE set O_DIRECT: {flags:o}");
    }
}

#[test]
fn o_path_and_o_tmpfile_are_refused_and_special_files_never_block() {
    let daemon = Daemon::start_with(&["--sandbox", "none", "--seccomp", "none"], &[], |dir| {
        std::os::unix::fs::symlink("/etc/passwd", dir.join("outside")).unwrap();
        nix::unistd::mkfifo(
            &dir.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o666),
        )
        .unwrap();
        std::os::unix::net::UnixListener::bind(dir.join("socket")).unwrap();
        std::fs::write(dir.join("regular"), b"data").unwrap();
    });
    let mut s = daemon.session();
    let started = Instant::now();

    // CREATE with O_PATH on an existing symlink (would open its target outside the share)
    // and on a new name: EINVAL, nothing created.
    for name in ["outside", "new-name"] {
        assert_eq!(
            errno(create_with_flags(
                &mut s,
                name,
                libc::O_PATH | libc::O_CREAT | libc::O_RDWR
            )),
            libc::EINVAL,
            "CREATE {name} with O_PATH"
        );
    }
    assert!(!daemon.host("new-name").exists());
    assert!(daemon
        .host("outside")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_symlink());
    // O_TMPFILE through CREATE: EINVAL.
    assert_eq!(
        errno(create_with_flags(
            &mut s,
            "tmp",
            libc::O_TMPFILE | libc::O_RDWR
        )),
        libc::EINVAL
    );

    // OPEN with O_PATH of a regular file: EINVAL.
    let regular = s.lookup(ROOT, "regular").expect("LOOKUP").nodeid;
    assert_eq!(
        errno(open_with_flags(&mut s, regular, libc::O_PATH)),
        libc::EINVAL
    );
    // OPEN and CREATE (no O_EXCL) of a FIFO, a socket and a symlink are refused at once: a
    // FIFO opened for writing with no reader would block the queue thread.
    for name in ["fifo", "socket", "outside"] {
        let node = s.lookup(ROOT, name).expect("LOOKUP").nodeid;
        for flags in [libc::O_WRONLY, libc::O_RDONLY, libc::O_RDWR] {
            assert_ne!(
                errno(open_with_flags(&mut s, node, flags)),
                0,
                "OPEN {name}"
            );
        }
        assert_ne!(
            errno(create_with_flags(&mut s, name, libc::O_WRONLY)),
            0,
            "CREATE over {name}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "requests took {:?}",
        started.elapsed()
    );
    assert!(daemon
        .host("fifo")
        .metadata()
        .unwrap()
        .file_type()
        .is_fifo());
    s.assert_alive().expect("the daemon still answers");
}

/// DESTROY (a guest umount) then INIT (a new mount), twice, and the same tree is served.
fn remount_twice(daemon: &Daemon, s: &mut FuseSession) {
    let (e, open) = s.create(ROOT, "kept", libc::O_RDWR, 0o644).expect("CREATE");
    s.write(e.nodeid, open.fh, 0, b"kept across mounts")
        .expect("WRITE");
    s.release(e.nodeid, open.fh).expect("RELEASE");
    let root_ino = std::fs::metadata(daemon.host("")).unwrap().ino();
    for round in 0..2 {
        let u = s.unique();
        s.send_raw(&request(Opcode::Destroy as u32, u, 0, &[]), REPLY_SPACE)
            .expect("DESTROY returned");
        s.init()
            .unwrap_or_else(|e| panic!("INIT after DESTROY {round}: {e}; {}", daemon.stderr()));
        let node = s
            .lookup(ROOT, "kept")
            .unwrap_or_else(|e| panic!("LOOKUP after remount {round}: {e}; {}", daemon.stderr()))
            .nodeid;
        let fh = s.open(node, libc::O_RDONLY).expect("OPEN after remount").fh;
        assert_eq!(
            s.read(node, fh, 0, 100).expect("READ"),
            b"kept across mounts"
        );
        s.release(node, fh).expect("RELEASE");
        assert_eq!(s.getattr(ROOT).expect("GETATTR root").attr.ino, root_ino);
    }
}

#[test]
fn destroy_then_init_serves_the_tree_with_file_handles_in_every_sandbox_mode() {
    for sandbox in ["namespace", "chroot", "none"] {
        for handles in ["prefer", "mandatory", "never"] {
            for xattr in [&[][..], &["--xattr"][..]] {
                if sandbox == "chroot" && !xattr.is_empty() {
                    continue; // refused at start, by design
                }
                let mut extra = vec!["--inode-file-handles", handles];
                extra.extend_from_slice(xattr);
                let mut daemon = Daemon::start_with(
                    &["--sandbox", sandbox, "--seccomp", "kill"],
                    &extra,
                    |_| {},
                );
                let mut s = daemon.session();
                remount_twice(&daemon, &mut s);
                daemon.assert_running(&format!("remounts, --sandbox {sandbox} {extra:?}"));
            }
        }
    }
}

#[test]
fn a_guest_can_hold_more_inodes_than_the_descriptor_limit() {
    const FILES: usize = 1500;
    const LIMIT: &str = "256";
    let populate = |dir: &Path| {
        for i in 0..FILES {
            std::fs::write(dir.join(format!("f{i:05}")), i.to_string()).unwrap();
        }
    };
    // The default (file handles where possible) in the production sandbox: every file is
    // looked up and kept (no FORGET), as a guest with cache=always keeps them, and read.
    let daemon = Daemon::start_with(
        CONFINED,
        &["--rlimit-nofile", LIMIT, "--cache", "always"],
        populate,
    );
    let mut s = daemon.session();
    let mut nodes = Vec::with_capacity(FILES);
    for i in 0..FILES {
        let e = s
            .lookup(ROOT, &format!("f{i:05}"))
            .unwrap_or_else(|e| panic!("LOOKUP f{i:05} of {FILES}: {e}; {}", daemon.stderr()));
        nodes.push(e.nodeid);
    }
    for (i, node) in nodes.iter().enumerate().step_by(97) {
        assert_eq!(
            s.getattr(*node).expect("GETATTR").attr.size,
            i.to_string().len() as u64
        );
        let fh = s.open(*node, libc::O_RDONLY).expect("OPEN").fh;
        assert_eq!(
            s.read(*node, fh, 0, 64).expect("READ"),
            i.to_string().as_bytes()
        );
        s.release(*node, fh).expect("RELEASE");
    }
    let (e, open) = s
        .create(ROOT, "one-more", libc::O_RDWR, 0o644)
        .expect("CREATE past the limit");
    s.write(e.nodeid, open.fh, 0, b"ok").expect("WRITE");

    // The same with descriptors only runs out: the limit above is real.
    let daemon = Daemon::start_with(
        CONFINED,
        &[
            "--rlimit-nofile",
            LIMIT,
            "--cache",
            "always",
            "--inode-file-handles",
            "never",
        ],
        populate,
    );
    let mut s = daemon.session();
    let failed = (0..FILES).find_map(|i| s.lookup(ROOT, &format!("f{i:05}")).err());
    assert!(
        matches!(failed, Some(FuseError::Errno(libc::EMFILE))),
        "with descriptors only, LOOKUP should run out of descriptors: {failed:?}"
    );
}

/// The daemon's `O_PATH` descriptors that name `dir` or something under it.
fn path_descriptors_under(pid: u32, dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("daemon's fd dir") {
        let entry = entry.unwrap();
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.starts_with(dir) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            entry.file_name().to_str().unwrap()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map_or(0, |f| i32::from_str_radix(f.trim(), 8).unwrap());
        if flags & libc::O_PATH != 0 {
            found.push(target);
        }
    }
    found
}

/// Inodes referenced by file handle keep the `O_PATH` descriptor of their LOOKUP, within a
/// budget (a quarter of RLIMIT_NOFILE; files at most half of it, directories the rest), and
/// close it when the guest forgets them: requests on them then need no `open_by_handle_at`,
/// a guest still holds any number of inodes, and nothing is kept for a forgotten one.
#[test]
fn file_handle_inodes_keep_descriptors_within_a_budget_and_close_them_at_forget() {
    const FILES: usize = 40;
    const DIRS: usize = 30;
    // RLIMIT_NOFILE 160 (one request queue: the least the daemon starts with): a budget of
    // 40 descriptors, files at most 20.
    let daemon = Daemon::start_with(
        &["--sandbox", "none", "--seccomp", "none"],
        &[
            "--rlimit-nofile",
            "160",
            "--request-queues",
            "1",
            "--cache",
            "always",
            "--inode-file-handles",
            "mandatory",
        ],
        |dir| {
            for i in 0..FILES {
                std::fs::write(dir.join(format!("f{i:02}")), i.to_string()).unwrap();
            }
            for i in 0..DIRS {
                std::fs::create_dir(dir.join(format!("d{i:02}"))).unwrap();
            }
        },
    );
    let share = daemon.host("");
    let share = share.canonicalize().unwrap();
    let mut s = daemon.session();

    // One file: its descriptor is kept, and GETATTR is served through it: the file still
    // answers after the host unlinked it (a handle of an unlinked file no longer opens).
    let one = s.lookup(ROOT, "f00").expect("LOOKUP f00").nodeid;
    // The root keeps its descriptor from the start.
    let mut kept = path_descriptors_under(daemon.pid(), &share);
    kept.sort();
    assert_eq!(
        kept,
        vec![share.clone(), share.join("f00")],
        "after one LOOKUP"
    );
    std::fs::remove_file(share.join("f00")).unwrap();
    let attr = s
        .getattr(one)
        .expect("GETATTR of a file unlinked on the host")
        .attr;
    assert_eq!((attr.size, attr.nlink), (1, 0));
    s.forget(one, 1).expect("FORGET f00");
    s.assert_alive().expect("alive after FORGET");
    assert_eq!(
        path_descriptors_under(daemon.pid(), &share),
        vec![share.clone()],
        "FORGET closes the kept descriptor"
    );

    // Many files, then many directories: files keep at most half the budget, directories
    // fill the rest, and every one of them is served, kept or not.
    let mut nodes = Vec::new();
    for i in 1..FILES {
        nodes.push((
            format!("f{i:02}"),
            s.lookup(ROOT, &format!("f{i:02}")).unwrap().nodeid,
        ));
    }
    let files_kept = path_descriptors_under(daemon.pid(), &share).len();
    assert_eq!(
        files_kept, 20,
        "the root and files keep half the budget of 40"
    );
    for i in 0..DIRS {
        nodes.push((
            format!("d{i:02}"),
            s.lookup(ROOT, &format!("d{i:02}")).unwrap().nodeid,
        ));
    }
    let kept = path_descriptors_under(daemon.pid(), &share);
    assert_eq!(kept.len(), 40, "directories fill the budget: {kept:?}");
    assert_eq!(
        kept.iter().filter(|p| p.is_dir()).count(),
        21,
        "the directories looked up first are kept: {kept:?}"
    );
    for (name, node) in &nodes {
        let attr = s
            .getattr(*node)
            .unwrap_or_else(|e| panic!("GETATTR {name}: {e}"));
        assert_eq!(
            attr.attr.ino,
            std::fs::metadata(share.join(name)).unwrap().ino()
        );
    }
    // A name operation under a directory whose descriptor is not kept works too.
    let last_dir = nodes.last().unwrap().1;
    let e = s
        .mkdir(last_dir, "below", 0o755)
        .expect("MKDIR under an unkept directory");
    assert!(share.join("d29/below").is_dir());
    assert!(
        !kept.contains(&share.join("d29")),
        "d29 was past the budget: {kept:?}"
    );

    // Forgetting everything closes everything, and the budget is free again.
    s.forget(e.nodeid, 1).unwrap();
    for (_, node) in &nodes {
        s.forget(*node, 1).unwrap();
    }
    s.assert_alive().expect("alive after the FORGETs");
    assert_eq!(
        path_descriptors_under(daemon.pid(), &share),
        vec![share.clone()],
        "every FORGET closed its inode's descriptor"
    );
    for i in 0..10 {
        s.lookup(ROOT, &format!("d{i:02}")).unwrap();
    }
    assert_eq!(path_descriptors_under(daemon.pid(), &share).len(), 11);
}

/// A vhost-user message whose descriptors the daemon cannot take (here: the frontend attaches
/// more than the protocol's 32; a daemon at its RLIMIT_NOFILE sees the same `MSG_CTRUNC`)
/// ends the connection with the reason in the log and a non-zero exit. It used to be dropped
/// without a word (vhost treated the truncated message as "try again"), and the frontend then
/// waited for its reply forever.
#[test]
fn a_message_whose_descriptors_cannot_be_received_ends_the_connection_with_the_reason() {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let mut daemon = Daemon::start(&[]);
    let mut conn = std::os::unix::net::UnixStream::connect(&daemon.socket).unwrap();
    // GET_FEATURES (1), version 1, no payload: a header a frontend sends first.
    let header: Vec<u8> = [1u32, 1, 0].iter().flat_map(|w| w.to_le_bytes()).collect();
    let files: Vec<std::fs::File> = (0..40)
        .map(|_| std::fs::File::open("/dev/null").unwrap())
        .collect();
    let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
    let iov = [std::io::IoSlice::new(&header)];
    sendmsg::<()>(
        conn.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .expect("sending 40 descriptors");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reply = Vec::new();
    match conn.read_to_end(&mut reply) {
        Ok(_) => assert!(reply.is_empty(), "the daemon answered: {reply:?}"),
        Err(e) => panic!(
            "the frontend still waits after 30 s ({e}); stderr:\n{}",
            daemon.stderr()
        ),
    }
    let status = daemon
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("the daemon did not exit; stderr:\n{}", daemon.stderr()));
    assert!(!status.success(), "exit status {status}");
    let stderr = daemon.stderr();
    assert!(
        stderr.contains("could not be received") && stderr.contains("more than the protocol"),
        "no reason in the log:\n{stderr}"
    );
}

/// The number after `before` in `text` (as the daemon's refusal spells its figures).
fn number_after(text: &str, before: &str) -> u64 {
    let rest = &text[text
        .find(before)
        .unwrap_or_else(|| panic!("no {before:?} in {text}"))
        + before.len()..];
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no number after {before:?} in {text}"))
}

/// The daemon's refusal to start under `limit` descriptors with `queues` request queues.
fn refusal_under(limit: u64, queues: usize) -> String {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vhost.sock");
    let out = Command::new(common::daemon_bin())
        .arg("--socket-path")
        .arg(&socket)
        .arg("--shared-dir")
        .arg(dir.path())
        .args(["--sandbox", "none", "--seccomp", "none"])
        .arg(format!("--rlimit-nofile={limit}"))
        .arg(format!("--request-queues={queues}"))
        .stdin(Stdio::null())
        .output()
        .expect("running the daemon");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(!socket.exists(), "a refused daemon created its socket");
    stderr
}

/// A descriptor limit that cannot carry the offered queues is refused at start, with the
/// figures and the two ways out, before a socket exists (a frontend used to fail part-way
/// through connecting). At exactly the figure it names, a frontend that starts every queue
/// connects and the guest holds the open files the refusal promised room for.
#[test]
fn a_descriptor_limit_too_low_for_the_queues_is_refused_at_start_and_the_minimum_serves() {
    let refused = refusal_under(64, 16);
    assert!(
        refused.contains("RLIMIT_NOFILE is 64")
            && refused.contains("--rlimit-nofile")
            && refused.contains("--request-queues"),
        "{refused}"
    );
    let needed = number_after(&refused, "below the ");
    let files = number_after(&refused, "process, ");
    let needed_one = number_after(&refusal_under(64, 1), "below the ");
    assert!(
        needed_one < needed,
        "1 queue needs {needed_one}, 16 {needed}"
    );
    assert!(refusal_under(needed - 1, 16).contains(&format!("below the {needed} ")));

    let limit = needed.to_string();
    let daemon = Daemon::start_with(
        &["--sandbox", "none", "--seccomp", "none"],
        &["--rlimit-nofile", &limit, "--request-queues", "16"],
        |dir| {
            for i in 0..files {
                std::fs::write(dir.join(format!("f{i:03}")), b"x").unwrap();
            }
        },
    );
    let config = FrontendConfig {
        queues: 17,
        ..Default::default()
    };
    let mut s = FuseSession::new(daemon.connect_with(config));
    s.init().expect("FUSE_INIT");
    let mut open = Vec::new();
    for i in 0..files {
        let name = format!("f{i:03}");
        let e = s
            .lookup(ROOT, &name)
            .unwrap_or_else(|e| panic!("LOOKUP {name}: {e}; stderr:\n{}", daemon.stderr()));
        let o = s
            .open(e.nodeid, libc::O_RDONLY)
            .unwrap_or_else(|e| panic!("OPEN {name}: {e}; stderr:\n{}", daemon.stderr()));
        open.push((e.nodeid, o.fh));
    }
    for (node, fh) in &open {
        assert_eq!(s.read(*node, *fh, 0, 16).unwrap(), b"x");
    }
}

/// A FUSE mount of the host, served by `virtiofsd-kr mount`, whose server can be stopped:
/// a host filesystem that stops answering.
struct StoppableMount {
    server: std::process::Child,
    mountpoint: tempfile::TempDir,
    _backing: tempfile::TempDir,
}

impl StoppableMount {
    fn new() -> StoppableMount {
        let backing = tempfile::tempdir().unwrap();
        std::fs::write(backing.path().join("slow"), vec![7u8; 65536]).unwrap();
        let mountpoint = tempfile::tempdir().unwrap();
        let server = Command::new(env!("CARGO_BIN_EXE_virtiofsd-kr"))
            .args(["mount", "--cache", "never", "--shared-dir"])
            .arg(backing.path())
            .arg(mountpoint.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("virtiofsd-kr mount");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !mountpoint.path().join("slow").exists() {
            assert!(Instant::now() < deadline, "the FUSE mount did not appear");
            std::thread::sleep(Duration::from_millis(50));
        }
        StoppableMount {
            server,
            mountpoint,
            _backing: backing,
        }
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.server.id() as i32), sig).unwrap();
    }

    /// Stops the server and waits until every one of its threads is stopped.
    fn stop(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
        let tasks = format!("/proc/{}/task", self.server.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let all_stopped = std::fs::read_dir(&tasks).unwrap().all(|t| {
                let stat =
                    std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap_or_default();
                // The state follows the parenthesised command name.
                matches!(
                    stat.rsplit(')')
                        .next()
                        .and_then(|r| r.trim_start().chars().next()),
                    Some('T' | 't')
                )
            });
            if all_stopped {
                return;
            }
            assert!(Instant::now() < deadline, "the FUSE server did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for StoppableMount {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mountpoint.path())
            .status();
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[test]
fn the_daemon_exits_when_the_vmm_leaves_while_a_request_is_stuck_in_the_host() {
    exits_while_a_request_is_stuck_in_the_host(|s, _| {
        drop(s);
        None
    });
}

/// A launcher stopping the daemon with SIGTERM while a request waits on the host: the orderly
/// exit (which closes the backend) waits for the queue threads only so long.
#[test]
fn the_daemon_exits_on_sigterm_while_a_request_is_stuck_in_the_host() {
    exits_while_a_request_is_stuck_in_the_host(|s, daemon| {
        let pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        // The frontend stays connected: the signal alone must end the daemon.
        Some(s)
    });
}

/// A second signal does not wait for the queue threads' grace: the process ends at once.
#[test]
fn a_second_sigterm_ends_the_daemon_at_once_while_a_request_is_stuck() {
    let mount = StoppableMount::new();
    let (mut daemon, s) = daemon_with_a_stuck_getattr(&mount);
    let pid = nix::unistd::Pid::from_raw(daemon.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    // The first signal's orderly exit waits 5 s for the stuck queue thread; the second ends
    // that wait.
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("second SIGTERM");
    exits_zero_saying(&mut daemon, "again");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the second signal took {took:?}; stderr:\n{}",
        daemon.stderr()
    );
    drop(s);
}

/// Waits (30 s at most) for `daemon` to exit: with 0, its stderr saying `says`.
fn exits_zero_saying(daemon: &mut Daemon, says: &str) {
    let status = daemon
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("daemon did not exit; stderr:\n{}", daemon.stderr()));
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        daemon.stderr()
    );
    assert!(
        daemon.stderr().contains(says),
        "no {says:?} in stderr:\n{}",
        daemon.stderr()
    );
}

/// Gets a GETATTR stuck in a host FUSE server that stopped answering, calls `end` (which
/// makes the daemon leave; a session it returns stays connected until the end), and checks
/// that the daemon exits 0 anyway, saying why it left a queue thread behind.
fn exits_while_a_request_is_stuck_in_the_host(
    end: impl FnOnce(FuseSession, &Daemon) -> Option<FuseSession>,
) {
    let mount = StoppableMount::new();
    let (mut daemon, s) = daemon_with_a_stuck_getattr(&mount);

    // The daemon must exit even though its queue thread never returns.
    let _connected = end(s, &daemon);
    exits_zero_saying(&mut daemon, "still inside a request");
}

/// A daemon serving `mount`, connected, with a GETATTR stuck in it: the host FUSE server
/// behind `mount` is stopped and the daemon is seen waiting for it.
fn daemon_with_a_stuck_getattr(mount: &StoppableMount) -> (Daemon, FuseSession) {
    let mut daemon = Daemon::start_sharing_dir_stuck(
        mount.mountpoint.path(),
        &["--sandbox", "none", "--seccomp", "none"],
        &["--cache", "never", "--inode-file-handles", "never"],
    );
    let mut s = daemon.session();
    stick_a_getattr(mount, &mut s, &mut daemon);
    (daemon, s)
}

/// Stops the host FUSE server behind `mount` and sends a GETATTR that waits for it, returning
/// once a thread of the daemon is seen waiting there.
fn stick_a_getattr(mount: &StoppableMount, s: &mut FuseSession, daemon: &mut Daemon) {
    let node = s.lookup(ROOT, "slow").expect("LOOKUP").nodeid;

    // The host filesystem stops answering; a GETATTR goes to it and waits. (Only O_PATH
    // descriptors are open on that mount: closing a file opened for I/O would send the host
    // FUSE server a FLUSH, and the kernel makes the exiting process wait for its answer.)
    mount.stop();
    let u = s.unique();
    let req = request(
        Opcode::Getattr as u32,
        u,
        node,
        &[fuse_backend_rs::abi::fuse_abi::GetattrIn::default().as_slice()],
    );
    s.frontend()
        .post_request(REQUEST_QUEUE, &[&req], &[REPLY_SPACE], true)
        .expect("post READ");
    // The request must be stuck in the host before the VMM leaves, or the exit below tests
    // nothing: wait until one of the daemon's threads waits for the stopped FUSE server's
    // answer (its wait channel), not for a fixed time a loaded machine may not give it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !waits_for_a_fuse_answer(daemon.pid()) {
        assert!(daemon.is_running(), "daemon: {}", daemon.stderr());
        assert!(
            Instant::now() < deadline,
            "no thread of the daemon waits in the host FUSE mount; stderr:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(daemon.is_running(), "daemon: {}", daemon.stderr());
}

/// Whether a thread of `pid` sleeps waiting for a FUSE server's answer (the kernel's
/// `request_wait_answer`, as `/proc/PID/task/TID/wchan` names it to root).
fn waits_for_a_fuse_answer(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("wchan")).ok())
        .any(|w| w == "request_wait_answer")
}
