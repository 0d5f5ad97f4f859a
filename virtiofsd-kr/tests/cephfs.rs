//! `--backend cephfs` and the `volume` commands, driven from outside the real daemon against
//! the single-node dev cluster: start-up refusals, volume life cycle (quota, identity,
//! snapshots, removal), and FUSE traffic through the test VMM. The guests' view of the same
//! is in `vm-tests/tests/guest_ceph*.rs`.

mod ceph_cluster;

use std::time::{Duration, Instant};

use ceph_cluster::{cluster, volume_cmd, CephDaemon, Volume};
use fuse_backend_rs::abi::fuse_abi::{Opcode, SetxattrIn};
use vm_memory::ByteValued;
use vm_tests::fuse::{cname, FuseError, FuseSession, REPLY_SPACE, ROOT};

fn errno_of<T: std::fmt::Debug>(r: Result<T, FuseError>) -> i32 {
    match r {
        Err(FuseError::Errno(e)) => e,
        other => panic!("expected an errno, got {other:?}"),
    }
}

/// The error line of a refused start: exactly one line, prefixed, naming `needle`.
fn assert_one_line(stderr: &str, needle: &str) {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("virtiofsd-kr: ") || l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert!(
        errors[0].contains(needle),
        "{needle:?} not in the error line {:?}",
        errors[0]
    );
}

#[test]
fn startup_refusals_come_before_the_socket() {
    cluster();
    let vol = Volume::create("refuse", None);
    let other = Volume::create("refuse-other", None);
    let with = |edit: &dyn Fn(&mut Vec<String>)| {
        let mut args = vol.daemon_args();
        edit(&mut args);
        args
    };
    let set = |args: &mut Vec<String>, flag: &str, value: &str| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1] = value.to_string();
    };
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "missing keyring",
            with(&|a| set(a, "--ceph-keyring", "/nonexistent/k.keyring")),
            "--ceph-keyring \"/nonexistent/k.keyring\"",
        ),
        (
            "missing conf",
            with(&|a| set(a, "--ceph-conf", "/nonexistent/ceph.conf")),
            "--ceph-conf \"/nonexistent/ceph.conf\"",
        ),
        (
            "missing root",
            with(&|a| set(a, "--ceph-root", &format!("{}/does-not-exist", vol.path))),
            "does not exist",
        ),
        (
            "a root outside the identity's caps",
            with(&|a| set(a, "--ceph-root", &other.path)),
            "may not mount",
        ),
        (
            "another tenant's identity",
            with(&|a| {
                set(a, "--ceph-id", &other.id);
                set(a, "--ceph-keyring", &other.keyring.display().to_string());
            }),
            "may not mount",
        ),
        (
            "a key that is not the id's",
            with(&|a| set(a, "--ceph-keyring", &other.keyring.display().to_string())),
            "client.",
        ),
        (
            "--shared-dir with cephfs",
            with(&|a| a.extend(["--shared-dir".to_string(), "/tmp".to_string()])),
            "--shared-dir is for --backend passthrough",
        ),
        (
            "--dax-window with cephfs",
            with(&|a| a.extend(["--dax-window".to_string(), "1G".to_string()])),
            "--dax-window is not available with --backend cephfs",
        ),
        (
            "relative root",
            with(&|a| set(a, "--ceph-root", "volumes/x")),
            "--ceph-root \"volumes/x\"",
        ),
        (
            "dot-dot in the root",
            with(&|a| set(a, "--ceph-root", &format!("{}/..", vol.path))),
            "without `.` or `..`",
        ),
    ];
    for (what, args, needle) in cases {
        let started = Instant::now();
        let (code, stderr) = CephDaemon::spawn(&args).refused();
        assert_ne!(code, 0, "{what}: exit 0:\n{stderr}");
        assert_one_line(&stderr, needle);
        eprintln!("{what}: refused in {:?}", started.elapsed());
    }
}

#[test]
fn volume_quota_snapshot_and_removal() {
    let vol = Volume::create("life", Some("8M"));
    assert_eq!(vol.info["quota_bytes"], 8 << 20);
    assert!(vol.info["snapshots"].as_array().unwrap().is_empty());
    assert_eq!(vol.id, format!("vol-{}", vol.name));
    let meta = std::fs::metadata(&vol.keyring).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // Creating it twice is refused and changes nothing.
    let (ok, _, err) = volume_cmd(&["create", &vol.name]);
    assert!(!ok && err.contains("already exists"), "{err}");

    let d = CephDaemon::start(&vol, &["--sandbox", "namespace", "--cache", "never"]);
    let mut s = d.session();
    // df in the guest shows the quota as the size.
    let st = s.statfs(ROOT).expect("STATFS");
    let total = st.blocks * u64::from(st.frsize.max(st.bsize));
    assert_eq!(total, 8 << 20, "statfs total {total} != quota ({st:?})");

    let (f, open) = s.create(ROOT, "data", libc::O_RDWR, 0o644).expect("CREATE");
    let v1 = vec![b'1'; 4096];
    assert_eq!(s.write(f.nodeid, open.fh, 0, &v1).expect("WRITE"), 4096);
    s.release(f.nodeid, open.fh).expect("RELEASE");

    let (ok, out, err) = volume_cmd(&["snapshot", &vol.name, "before"]);
    assert!(ok, "snapshot: {err}");
    assert!(out.contains("\"before\""), "{out}");

    // Change the live file; the snapshot keeps the old bytes.
    let open = s.open(f.nodeid, libc::O_RDWR).expect("OPEN");
    let v2 = vec![b'2'; 4096];
    assert_eq!(s.write(f.nodeid, open.fh, 0, &v2).expect("WRITE"), 4096);
    s.release(f.nodeid, open.fh).expect("RELEASE");
    let snapdir = s.lookup(ROOT, ".snap").expect("LOOKUP .snap");
    let snap = s.lookup(snapdir.nodeid, "before").expect("LOOKUP before");
    let old = s
        .lookup(snap.nodeid, "data")
        .expect("LOOKUP data in snapshot");
    assert_ne!(
        old.nodeid, f.nodeid,
        "snapshot and live file share a node id"
    );
    let ro = s
        .open(old.nodeid, libc::O_RDONLY)
        .expect("OPEN snapshot file");
    assert_eq!(s.read(old.nodeid, ro.fh, 0, 4096).expect("READ"), v1);
    s.release(old.nodeid, ro.fh).expect("RELEASE");
    let live = s.open(f.nodeid, libc::O_RDONLY).expect("OPEN");
    assert_eq!(s.read(f.nodeid, live.fh, 0, 4096).expect("READ"), v2);
    s.release(f.nodeid, live.fh).expect("RELEASE");
    // The snapshot is immutable.
    assert_eq!(
        errno_of(s.open(old.nodeid, libc::O_RDWR)),
        libc::EROFS,
        "open for writing in .snap"
    );
    assert_eq!(
        errno_of(s.create(snap.nodeid, "new", libc::O_RDWR, 0o644)),
        libc::EROFS,
        "create in .snap"
    );
    assert_eq!(
        errno_of(s.unlink(snap.nodeid, "data")),
        libc::EROFS,
        "unlink in .snap"
    );

    // Past the quota: EDQUOT (enforcement is approximate: up to ~1 MiB over).
    let (big, open) = s.create(ROOT, "big", libc::O_RDWR, 0o644).expect("CREATE");
    let chunk = vec![0x42u8; 1 << 20];
    let mut written = 0u64;
    let errno = loop {
        let (unique, req) = s.write_request(big.nodeid, open.fh, written, 1 << 20, &chunk);
        let reply = s.send_raw(&req, REPLY_SPACE).expect("WRITE sent");
        let r = vm_tests::fuse::FuseReply::from_reply(&reply, unique).expect("reply");
        if r.errno() != 0 {
            break r.errno();
        }
        written += 1 << 20;
        if written > 64 << 20 {
            break 0;
        }
        // The MDS learns the usage from the client's cap updates.
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        errno,
        libc::EDQUOT,
        "writes past an 8 MiB quota stopped at {written} bytes"
    );
    eprintln!("EDQUOT after {} MiB with an 8 MiB quota", written >> 20);
    s.release(big.nodeid, open.fh).expect("RELEASE");

    // xattrs of the guest's own namespace work; Ceph's own (quota) are not the guest's to set.
    let set = SetxattrIn { size: 1, flags: 0 };
    let r = s
        .call(
            Opcode::Setxattr as u32,
            ROOT,
            &[set.as_slice(), &cname("ceph.quota.max_bytes"), b"0"],
            REPLY_SPACE,
        )
        .unwrap();
    assert_ne!(r.errno(), 0, "the guest lifted its own quota");
    drop(s);
    drop(d);

    let (ok, out, err) = volume_cmd(&["inspect", &vol.name]);
    assert!(ok, "{err}");
    let info: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(info["quota_bytes"], 8 << 20, "{out}");
    assert_eq!(info["snapshots"], serde_json::json!(["before"]));

    let (ok, _, err) = volume_cmd(&["rm", &vol.name]);
    assert!(ok, "rm: {err}");
    assert!(!vol.keyring.exists(), "keyring left behind");
    let (ok, _, err) = volume_cmd(&["inspect", &vol.name]);
    assert!(!ok && err.contains("does not exist"), "{err}");
    let (_, list, _) = volume_cmd(&["ls"]);
    assert!(!list.contains(&format!("\"{}\"", vol.name)), "{list}");
}

#[test]
fn two_daemons_see_each_others_closed_writes() {
    let vol = Volume::create("pods", None);
    let a = CephDaemon::start(&vol, &["--cache", "auto"]);
    let b = CephDaemon::start(&vol, &["--cache", "auto"]);
    let (mut sa, mut sb) = (a.session(), b.session());
    let (f, open) = sa
        .create(ROOT, "shared", libc::O_RDWR, 0o644)
        .expect("CREATE");
    sa.write(f.nodeid, open.fh, 0, b"from pod a")
        .expect("WRITE");
    sa.release(f.nodeid, open.fh).expect("RELEASE");
    let t0 = Instant::now();
    let seen = loop {
        if let Ok(e) = sb.lookup(ROOT, "shared") {
            let o = sb.open(e.nodeid, libc::O_RDONLY).expect("OPEN");
            let data = sb.read(e.nodeid, o.fh, 0, 64).expect("READ");
            sb.release(e.nodeid, o.fh).expect("RELEASE");
            if data == b"from pod a" {
                break t0.elapsed();
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "pod b never saw it");
        std::thread::sleep(Duration::from_millis(5));
    };
    eprintln!("pod b read pod a's closed write after {seen:?}");
}

/// Several `volume create` at once under a volumes root that does not exist yet: each makes
/// the root or finds it made by another, none fails (a fresh cluster used to give EEXIST).
#[test]
fn concurrent_creates_share_a_new_volumes_root() {
    cluster();
    let root = format!("/{}", ceph_cluster::unique("vroot-"));
    let names: Vec<String> = (0..4)
        .map(|i| ceph_cluster::unique(&format!("race{i}-")))
        .collect();
    let handles: Vec<_> = names
        .iter()
        .cloned()
        .map(|name| {
            let root = root.clone();
            std::thread::spawn(move || volume_cmd(&["create", &name, "--volumes-root", &root]))
        })
        .collect();
    for (name, h) in names.iter().zip(handles) {
        let (ok, out, err) = h.join().unwrap();
        assert!(ok, "volume create {name} under {root}: {err}");
        assert!(out.contains(&format!("\"{root}/{name}\"")), "{out}");
    }
    let (ok, list, err) = volume_cmd(&["ls", "--volumes-root", &root]);
    assert!(ok, "{err}");
    assert_eq!(list.lines().count(), names.len(), "{list}");
}

/// Every way the daemon ends on its own terms closes its CephFS client: the frontend leaving;
/// SIGTERM, SIGINT or SIGHUP with a guest connected; a signal before any guest connected.
/// What the guest wrote into a file it still holds open is then on the cluster, and the
/// daemon's MDS session is gone at once, so another pod reading that file does not wait for
/// the MDS to evict a client that no longer answers (10 s on the dev cluster, a minute or
/// more by default). A signal used to end the process without closing the client: the
/// other pod waited 10 s and then read an empty file.
#[test]
fn every_clean_end_writes_back_and_closes_the_session() {
    use nix::sys::signal::Signal;
    let _mds = ceph_cluster::mds_needed();
    let (vol, _other_pod, mut other) = volume_with_another_pod("ends");
    let sessions = || cluster().mds_sessions_of(&vol.id);
    assert_eq!(sessions(), 1, "the other pod's session");
    let cases = [
        ("disconnect", None, true),
        ("SIGTERM", Some(Signal::SIGTERM), true),
        ("SIGINT", Some(Signal::SIGINT), true),
        ("SIGHUP", Some(Signal::SIGHUP), true),
        ("SIGTERM-before-a-guest", Some(Signal::SIGTERM), false),
    ];
    for (case, signal, guest) in cases {
        let mut d = CephDaemon::start(&vol, &["--cache", "auto"]);
        assert_eq!(sessions(), 2, "{case}: the daemon's session is open");
        let name = format!("open-at-{case}");
        let body = format!("written before {case}, never closed");
        let mut s = guest.then(|| {
            let mut s = d.session();
            let (f, open) = s.create(ROOT, &name, libc::O_RDWR, 0o644).expect("CREATE");
            s.write(f.nodeid, open.fh, 0, body.as_bytes())
                .expect("WRITE");
            s
        });
        match signal {
            None => drop(s.take()),
            Some(sig) => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.child.id() as i32), sig)
                    .expect("kill")
            }
        }
        let log = d.stderr_path();
        exits_zero(&mut d.child, case, &log);
        drop(s);
        assert_eq!(
            sessions(),
            1,
            "{case}: the session outlived the daemon:\n{}",
            d.stderr()
        );
        if guest {
            reads_at_once(&mut other, &name, body.as_bytes(), case);
        }
    }
}

/// A new volume and another pod's daemon serving it, connected: the reader of what a daemon
/// that ends leaves behind.
fn volume_with_another_pod(prefix: &str) -> (Volume, CephDaemon, FuseSession) {
    let vol = Volume::create(prefix, None);
    let other_pod = CephDaemon::start(&vol, &["--cache", "auto"]);
    let session = other_pod.session();
    (vol, other_pod, session)
}

/// Waits for `child` to exit, which must be with 0 within 20 s (`log`: its stderr).
fn exits_zero(child: &mut std::process::Child, what: &str, log: &std::path::Path) {
    let stderr = || std::fs::read_to_string(log).unwrap_or_default();
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{what}: still running 20 s later:\n{}",
            stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{what}: {status}:\n{}", stderr());
}

/// Another pod reads `name`: `body`, without waiting for the MDS to evict a client that left
/// (10 s on the dev cluster).
fn reads_at_once(other: &mut FuseSession, name: &str, body: &[u8], what: &str) {
    let t0 = Instant::now();
    let e = other.lookup(ROOT, name).expect("LOOKUP");
    let o = other.open(e.nodeid, libc::O_RDONLY).expect("OPEN");
    let data = other.read(e.nodeid, o.fh, 0, 256).expect("READ");
    other.release(e.nodeid, o.fh).expect("RELEASE");
    let waited = t0.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&data),
        String::from_utf8_lossy(body),
        "{what}: what was written"
    );
    assert!(
        waited < Duration::from_secs(5),
        "{what}: the other pod waited {waited:?} (for an eviction?)"
    );
}

/// The same for `virtiofsd-kr mount` (the host FUSE mount the Docker plugin starts): SIGTERM
/// with a file still open and written through the mount leaves its data on the cluster and no
/// MDS session behind.
#[test]
fn the_host_mount_writes_back_and_closes_the_session_on_sigterm() {
    use std::io::Write;
    let _mds = ceph_cluster::mds_needed();
    let (vol, _other_pod, mut other) = volume_with_another_pod("mount-end");
    let mountpoint = tempfile::tempdir().unwrap();
    let log = mountpoint.path().with_extension("log");
    let mut server = std::process::Command::new(env!("CARGO_BIN_EXE_virtiofsd-kr"))
        .arg("mount")
        .args(vol.daemon_args())
        .arg(mountpoint.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("virtiofsd-kr mount");
    let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mounted = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(&*mountpoint.path().to_string_lossy()))
    };
    while !mounted() {
        assert!(
            server.try_wait().unwrap().is_none(),
            "mount exited:\n{}",
            stderr()
        );
        assert!(Instant::now() < deadline, "not mounted:\n{}", stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(cluster().mds_sessions_of(&vol.id), 2);
    let body = b"written through the host mount, still open at SIGTERM";
    let mut file = std::fs::File::create(mountpoint.path().join("open")).expect("create");
    file.write_all(body).expect("write");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(server.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    exits_zero(&mut server, "mount", &log);
    drop(file);
    assert_eq!(
        cluster().mds_sessions_of(&vol.id),
        1,
        "the session outlived the mount:\n{}",
        stderr()
    );
    reads_at_once(&mut other, "open", body, "mount");
    let _ = std::fs::remove_file(&log);
}

/// The guest's `sync` (FUSE_SYNCFS, which Linux >= 5.15 sends) writes back what the client
/// buffered, for files still open too: when the reply comes, the data is in its RADOS object.
/// fuse-backend-rs 0.14 did not know the opcode: the guest got ENOSYS, took it for success,
/// and its `sync` left the writes in libcephfs' cache.
#[test]
fn syncfs_puts_the_guests_writes_on_the_osds() {
    let _mds = ceph_cluster::mds_needed();
    let vol = Volume::create("syncfs", None);
    let d = CephDaemon::start(&vol, &["--cache", "auto"]);
    let mut s = d.session();
    let (f, open) = s
        .create(ROOT, "unsynced", libc::O_RDWR, 0o644)
        .expect("CREATE");
    let body: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    s.write(f.nodeid, open.fh, 0, &body).expect("WRITE");
    let object = format!("{:x}.00000000", f.attr.ino);
    // How many bytes the object holds, and whether they are `body`.
    let stored = || {
        let out = cluster().rados(&["-p", "cephfs_data", "get", &object, "-"]);
        out.status
            .success()
            .then(|| (out.stdout.len(), out.stdout == body))
    };
    // Buffered: libcephfs writes dirty data back after 5 s on its own.
    let before = stored();
    assert_ne!(
        before,
        Some((body.len(), true)),
        "already on the OSDs before the sync: this test would show nothing"
    );
    s.syncfs(ROOT).expect("SYNCFS");
    assert_eq!(
        stored(),
        Some((body.len(), true)),
        "on the OSDs after SYNCFS (before it: {before:?})"
    );
    s.release(f.nodeid, open.fh).expect("RELEASE");
}
