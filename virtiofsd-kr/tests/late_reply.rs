//! A CephFS call stuck on the cluster, answered in the backend's place (`vhost/late_reply.rs`):
//! the real daemon (`--backend cephfs`, libcephfs calls on the request's thread) driven by the
//! test VMM while the dev cluster's only MDS is stopped. In its own test binary: no other test
//! may need the MDS meanwhile (and the two here run one at a time).
//!
//! Asserted: the request in flight when the MDS went away is answered ETIMEDOUT at the op
//! timeout (not when the MDS returns), and so is one taken with it that waits behind it on
//! the same thread; the queue is served meanwhile although the thread serving it is still
//! stuck in libcephfs; when the stuck call finally returns, nothing is
//! written into the buffers the guest got back with the answer; and service resumes. And a
//! SIGTERM during the outage ends the daemon within its exit limit.

mod ceph_cluster;

use std::time::{Duration, Instant};

use ceph_cluster::{CephDaemon, MdsOutage, Volume};
use fuse_backend_rs::abi::fuse_abi::{CreateIn, Opcode};
use vm_memory::ByteValued;
use vm_tests::frontend::{PendingChain, REQUEST_QUEUE};
use vm_tests::fuse::{cname, request, FuseError, FuseReply, FuseSession, REPLY_SPACE, ROOT};

const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// The tests here stop the MDS, which a daemon of another test needs to start: one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Posts a CREATE of `name` in the root without waiting for its answer (kicking the queue
/// if `kick`): its request id and chain.
fn post_create(s: &mut FuseSession, name: &str, kick: bool) -> (u64, PendingChain) {
    let unique = s.unique();
    let arg = CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT) as u32,
        mode: 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let req = request(
        Opcode::Create as u32,
        unique,
        ROOT,
        &[arg.as_slice(), &cname(name)],
    );
    let pending = s
        .frontend()
        .post_request(REQUEST_QUEUE, &[&req], &[REPLY_SPACE], kick)
        .expect("posting a CREATE");
    (unique, pending)
}

#[test]
fn a_call_stuck_on_the_cluster_is_answered_at_the_op_timeout_and_never_writes_late() {
    let _one = one_at_a_time();
    let volume = Volume::create("late-reply", None);
    let timeout = OP_TIMEOUT.as_secs().to_string();
    let daemon = CephDaemon::start(&volume, &["--ceph-op-timeout", &timeout]);
    let mut s = daemon.session();
    let (f, open) = s
        .create(ROOT, "before", libc::O_RDWR, 0o644)
        .expect("CREATE before the outage");
    s.write(f.nodeid, open.fh, 0, b"kept").expect("WRITE");
    s.release(f.nodeid, open.fh).expect("RELEASE");

    let mds = MdsOutage::start();
    // Two CREATEs posted together, so the queue's thread takes both at once: the first is
    // stuck in libcephfs (a CREATE needs the MDS), the second waits behind it on that thread.
    let mut posted = Vec::new();
    let sent = Instant::now();
    for (i, name) in ["during-1", "during-2"].into_iter().enumerate() {
        posted.push(post_create(&mut s, name, i == 1));
    }
    for _ in 0..posted.len() {
        let used = s
            .frontend()
            .wait_used(REQUEST_QUEUE, OP_TIMEOUT * 5)
            .unwrap_or_else(|e| {
                panic!(
                    "no answer to a CREATE within {:?}: {e}\n{}",
                    OP_TIMEOUT * 5,
                    daemon.stderr()
                )
            });
        let took = sent.elapsed();
        let (unique, pending) = posted
            .iter()
            .find(|(_, p)| p.head == used.id as u16)
            .expect("the used element of a posted CREATE");
        let reply = s.frontend().complete(pending, used).expect("the reply");
        let reply = FuseReply::from_reply(&reply, *unique).expect("a FUSE reply");
        assert_eq!(reply.errno(), libc::ETIMEDOUT, "a CREATE's answer");
        assert!(
            took >= OP_TIMEOUT - Duration::from_millis(50) && took < OP_TIMEOUT * 2,
            "answered after {took:?}, the op timeout being {OP_TIMEOUT:?}"
        );
        // The guest reuses the reply buffers at once (here: fills them with a pattern).
        for (addr, len) in &pending.writable {
            s.frontend()
                .write_memory(*addr, &vec![0xa5; *len as usize])
                .unwrap();
        }
    }

    // The queue's thread is still in libcephfs: a stand-in serves the queue. A GETATTR may
    // be answered from the client's caps or time out, but it is answered in time.
    let t = Instant::now();
    let r = s.getattr(f.nodeid);
    assert!(
        matches!(r, Ok(_) | Err(FuseError::Errno(libc::ETIMEDOUT))),
        "GETATTR while the queue's thread is stuck: {r:?}"
    );
    assert!(
        t.elapsed() < OP_TIMEOUT * 2,
        "GETATTR answered after {:?}\n{}",
        t.elapsed(),
        daemon.stderr()
    );

    drop(mds);
    // The stuck CREATE comes back once the MDS is active again (the client resends it).
    let t = Instant::now();
    while !daemon.stderr().contains("has come back") {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the stuck call never came back after the MDS returned:\n{}",
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for (_, pending) in &posted {
        for (addr, len) in &pending.writable {
            let now = s.frontend().read_memory(*addr, *len as usize).unwrap();
            assert!(
                now.iter().all(|b| *b == 0xa5),
                "the late CREATE wrote into buffers the guest had got back"
            );
        }
    }
    // Service resumes on the queue's own thread.
    ceph_cluster::service_resumes(&mut s, f.nodeid);
    assert!(
        daemon.stderr().contains("answered with ETIMEDOUT"),
        "the answer in the backend's place is logged:\n{}",
        daemon.stderr()
    );
}

/// A launcher's SIGTERM while the cluster's MDS is down (a pod deleted during an outage),
/// with a write the guest left in the client's cache and a CREATE stuck on the cluster: the
/// daemon still ends, by its orderly path or at its exit limit (5 s + 5 s + twice the op
/// timeout + 5 s, `control/stop.rs`), and exits 0; it does not wait for the MDS.
#[test]
fn sigterm_during_an_mds_outage_ends_the_daemon_within_its_exit_limit() {
    let _one = one_at_a_time();
    let volume = Volume::create("outage-sigterm", None);
    let timeout = OP_TIMEOUT.as_secs().to_string();
    let mut daemon = CephDaemon::start(&volume, &["--ceph-op-timeout", &timeout]);
    let mut s = daemon.session();
    let (f, open) = s
        .create(ROOT, "left-open", libc::O_RDWR, 0o644)
        .expect("CREATE before the outage");
    s.write(f.nodeid, open.fh, 0, b"dirty").expect("WRITE");

    let mds = MdsOutage::start();
    post_create(&mut s, "during", true);
    // The CREATE is in libcephfs, waiting for the MDS.
    std::thread::sleep(Duration::from_millis(300));

    let limit = Duration::from_secs(5 + 5 + 5) + OP_TIMEOUT * 2;
    let pid = nix::unistd::Pid::from_raw(daemon.child.id() as i32);
    let signalled = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = loop {
        if let Some(status) = daemon.child.try_wait().expect("waiting for the daemon") {
            break status;
        }
        assert!(
            signalled.elapsed() < limit + Duration::from_secs(5),
            "still running {:?} after SIGTERM with the MDS down (limit {limit:?}):\n{}",
            signalled.elapsed(),
            daemon.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    drop(mds);
    let stderr = daemon.stderr();
    println!(
        "SIGTERM with the MDS down: exited {status} after {took:?} ({})",
        if stderr.contains("exiting without waiting longer") {
            "at the exit limit"
        } else {
            "by the orderly path"
        }
    );
    assert!(status.success(), "exit {status}:\n{stderr}");
    drop(s);
}
