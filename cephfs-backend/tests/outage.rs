//! The cluster's MDS going away under a running `CephFs` (with a 3 s op timeout), against the
//! real single-node dev cluster (see `common`). In its own test binary, so that no other
//! CephFS test runs while the shared cluster has no MDS; the tests here take one lock, and
//! [`MdsOutage`] restarts the MDS however a test ends.
//!
//! Asserted: with the MDS killed, calls that need it (create, mkdir, lookup of a name this
//! client never saw) fail with ETIMEDOUT after the op timeout, not later; nothing panics; the
//! node table and the open handles are as before; dropping a `CephFs` returns promptly, with a
//! call still stuck (at once) or with nothing in flight (the unmount is bounded). Once the MDS
//! is active again the same `CephFs` serves again (the time that takes is printed), the late
//! calls all come back, and a file written before the outage reads back intact.
//! `CEPHFS_OUTAGE_TEST_HOLD_SECS=N` keeps the MDS down at least N s (the default outage is as
//! long as the calls take, about 3 s: short, the cluster is shared).
//!
//! A healthy-cluster check of the same teardown: dropping a `CephFs` closes and flushes
//! what the guest left open.
//!
//! The `#[ignore]`d benchmark measures what the hop to the call threads costs on a healthy
//! cluster: `cargo test -p cephfs-backend --release --test outage -- --ignored --nocapture`.

mod common;

use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cephfs_backend::deadline::DeadlinePool;
use cephfs_backend::CephFs;
use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Entry, FileSystem};

use common::*;

/// The op timeout of the mounts under test.
const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// What a timed-out call may take beyond the op timeout (thread wake-ups on 2 busy cores).
const SLACK: Duration = Duration::from_secs(2);
/// Seconds the MDS stays down at least (default: as long as the calls take, ~3 s).
const HOLD_ENV: &str = "CEPHFS_OUTAGE_TEST_HOLD_SECS";
/// Longest wait for the client to serve again after the MDS is active.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);

/// One test at a time in this binary: the outage and the benchmark both need the cluster to
/// themselves.
fn exclusive() -> MutexGuard<'static, ()> {
    static EXCLUSIVE: Mutex<()> = Mutex::new(());
    EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner())
}

fn mount_with_timeout(vol: &Volume, op_timeout: Option<Duration>) -> CephFs {
    let mut cfg = vol.config();
    cfg.op_timeout = op_timeout;
    CephFs::connect(cfg).expect("tenant mount of its volume")
}

fn try_create(fs: &CephFs, parent: u64, name: &str) -> io::Result<(Entry, u64)> {
    let args = CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (entry, handle, _, _) = fs.create(&ctx(), parent, &cstr(name), args)?;
    let handle = handle.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
    Ok((entry, handle))
}

/// What one call during the outage did and how long it took.
struct Outcome {
    what: &'static str,
    result: Result<(), i32>,
    took: Duration,
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.result {
            Ok(()) => write!(f, "{}=ok/{:?}", self.what, self.took),
            Err(e) => write!(
                f,
                "{}={}/{:?}",
                self.what,
                io::Error::from_raw_os_error(e),
                self.took
            ),
        }
    }
}

fn timed<T>(what: &'static str, call: impl FnOnce() -> io::Result<T>) -> Outcome {
    let t0 = Instant::now();
    let result = call().map(|_| ()).map_err(errno);
    Outcome {
        what,
        result,
        took: t0.elapsed(),
    }
}

/// Asserts `o` failed with ETIMEDOUT after about the op timeout.
fn assert_timed_out(o: &Outcome, all: &[Outcome]) {
    assert_eq!(
        o.result,
        Err(libc::ETIMEDOUT),
        "{} without an MDS: want ETIMEDOUT; all calls: {all:?}",
        o.what
    );
    assert!(
        o.took >= OP_TIMEOUT - Duration::from_millis(50) && o.took <= OP_TIMEOUT + SLACK,
        "{} took {:?} for a {OP_TIMEOUT:?} op timeout; all calls: {all:?}",
        o.what,
        o.took
    );
}

#[test]
fn mds_outage_times_out_and_recovers() {
    let _only = exclusive();
    let vol = Volume::new("outage");
    let fs = mount_with_timeout(&vol, Some(OP_TIMEOUT));
    let c = ctx();

    // Before the outage: a file written and closed, a directory, and a name only another
    // client ever looked at (this client must ask the MDS for it).
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (f, h) = create(&fs, &c, ROOT, "before.txt", 0o644);
    assert_eq!(write(&fs, f.inode, h, 0, &data), data.len());
    fs.fsync(&c, f.inode, false, h)
        .expect("fsync before the outage");
    release(&fs, f.inode, h);
    let dir = fs
        .mkdir(&c, ROOT, &cstr("dir"), 0o755, 0)
        .expect("mkdir before the outage");
    let other = mount_with_timeout(&vol, Some(OP_TIMEOUT));
    let (o, oh) = create(&other, &c, ROOT, "other.txt", 0o644);
    write(&other, o.inode, oh, 0, b"written by another client");
    release(&other, o.inode, oh);
    // A third client to drop while one of its calls is stuck.
    let doomed = mount_with_timeout(&vol, Some(OP_TIMEOUT));

    let nodes = fs.inodes().len();
    let handles = fs.open_handles();
    let dir_lookups = fs.inodes().lookup_count(dir.inode);
    let file_lookups = fs.inodes().lookup_count(f.inode);

    let mut outage = MdsOutage::begin();
    let outage_start = Instant::now();
    let (outcomes, doomed_drop, other_drop) = std::thread::scope(|s| {
        let fs = &fs;
        let calls = [
            s.spawn(move || timed("create", || try_create(fs, ROOT, "during-create"))),
            s.spawn(move || {
                timed("mkdir", || {
                    fs.mkdir(&ctx(), ROOT, &cstr("during-mkdir"), 0o755, 0)
                })
            }),
            s.spawn(move || {
                timed("lookup-uncached", || {
                    fs.lookup(&ctx(), ROOT, &cstr("other.txt"))
                })
            }),
            s.spawn(move || timed("create-in-dir", || try_create(fs, dir.inode, "during"))),
            // Not asserted: the client may answer these from what it has cached.
            s.spawn(move || {
                timed("lookup-missing", || {
                    fs.lookup(&ctx(), ROOT, &cstr("never-existed"))
                })
            }),
            s.spawn(move || timed("getattr-cached", || fs.getattr(&ctx(), f.inode, None))),
        ];
        // A CephFs dropped with a call stuck returns at once; one dropped with nothing in
        // flight waits at most the op timeout for its unmount.
        let doomed_drop = s.spawn(move || {
            let stuck = timed("create-then-drop", || {
                try_create(&doomed, ROOT, "late-after-drop")
            });
            let t0 = Instant::now();
            drop(doomed);
            (stuck, t0.elapsed())
        });
        let other_drop = s.spawn(move || {
            let t0 = Instant::now();
            drop(other);
            t0.elapsed()
        });
        let outcomes: Vec<Outcome> = calls
            .into_iter()
            .map(|t| t.join().expect("no panic in a call"))
            .collect();
        (
            outcomes,
            doomed_drop.join().expect("no panic in drop"),
            other_drop.join().expect("no panic in drop"),
        )
    });
    let outage_calls = outage_start.elapsed();
    eprintln!(
        "outage: calls {outcomes:?}; {:?}, then drop took {:?}; drop of an idle client took \
         {other_drop:?}; all done {outage_calls:?} after mds-stop",
        doomed_drop.0, doomed_drop.1
    );
    for o in &outcomes[..4] {
        assert_timed_out(o, &outcomes);
    }
    for o in &outcomes[4..] {
        assert!(
            matches!(o.result, Ok(()) | Err(libc::ENOENT) | Err(libc::ETIMEDOUT))
                && o.took <= OP_TIMEOUT + SLACK,
            "{o:?}: want a cached answer or ETIMEDOUT in time; all calls: {outcomes:?}"
        );
    }
    assert_timed_out(&doomed_drop.0, &outcomes);
    assert!(
        doomed_drop.1 < Duration::from_secs(1),
        "dropping a CephFs with a call stuck took {:?}",
        doomed_drop.1
    );
    assert!(
        other_drop <= OP_TIMEOUT + SLACK,
        "dropping an idle CephFs without an MDS took {other_drop:?}"
    );
    assert_eq!(fs.inodes().len(), nodes, "timed-out calls added nodes");
    assert_eq!(fs.open_handles(), handles, "timed-out calls left handles");
    assert_eq!(fs.inodes().lookup_count(dir.inode), dir_lookups);
    let getattr_ok = outcomes[5].result.is_ok();
    assert_eq!(fs.inodes().lookup_count(f.inode), file_lookups);
    assert!(
        fs.late_calls() >= 4,
        "the timed-out calls are still waiting for the MDS: {} late",
        fs.late_calls()
    );

    // Longer outages (past the monitors' beacon grace, the MDS is marked failed and the new
    // one replays and waits for clients to reconnect) on request.
    let hold = std::env::var(HOLD_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    std::thread::sleep(hold.saturating_sub(outage_start.elapsed()));
    let outage_len = outage_start.elapsed();

    // The MDS comes back: the same CephFs serves again.
    let mds_start = outage.end();
    let active_at = Instant::now();
    let mut attempts = Vec::new();
    let recovered = loop {
        let name = format!("after-{}", attempts.len());
        let t0 = Instant::now();
        match try_create(&fs, ROOT, &name) {
            Ok((e, h)) => {
                attempts.push((Ok(()), t0.elapsed()));
                break (e, h);
            }
            Err(e) if errno_of(&e) == libc::ETIMEDOUT => {
                attempts.push((Err(libc::ETIMEDOUT), t0.elapsed()));
            }
            Err(e) => panic!("create {name} after the outage: {e}; attempts {attempts:?}"),
        }
        assert!(
            active_at.elapsed() < RECOVERY_LIMIT,
            "no create succeeded {RECOVERY_LIMIT:?} after the MDS was active: {attempts:?}"
        );
    };
    let serving_after = active_at.elapsed();
    release(&fs, recovered.0.inode, recovered.1);
    fs.forget(&c, recovered.0.inode, 1);
    let e = fs
        .mkdir(&c, ROOT, &cstr("after-mkdir"), 0o755, 0)
        .expect("mkdir after the outage");
    fs.forget(&c, e.inode, 1);
    assert_eq!(
        read_file(&fs, ROOT, "other.txt").expect("the name that timed out is found now"),
        b"written by another client"
    );
    assert_eq!(
        read_file(&fs, ROOT, "before.txt").expect("read back the file from before"),
        data,
        "the file written before the outage is intact"
    );
    let t0 = Instant::now();
    while fs.late_calls() > 0 {
        assert!(
            t0.elapsed() < RECOVERY_LIMIT,
            "{} calls never came back after the outage",
            fs.late_calls()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let late_back = active_at.elapsed();
    // What the late calls did is done (like a soft NFS mount): report it.
    let mut effects = Vec::new();
    for name in ["during-create", "during-mkdir", "late-after-drop"] {
        let found = match fs.lookup(&c, ROOT, &cstr(name)) {
            Ok(e) => {
                fs.forget(&c, e.inode, 1);
                "exists"
            }
            Err(e) if errno_of(&e) == libc::ENOENT => "absent",
            Err(e) => panic!("lookup {name} after the outage: {e}"),
        };
        effects.push((name, found));
    }
    eprintln!(
        "recovery: MDS down {outage_len:?}; mds-start took {mds_start:?}; first create served {serving_after:?} after \
         the MDS was active (attempts {attempts:?}); late calls all back after {late_back:?}; \
         cached getattr during the outage ok: {getattr_ok}; late effects {effects:?}; \
         {} calls timed out in all",
        fs.timed_out_calls()
    );
    assert_eq!(fs.open_handles(), handles);
}

/// Set in the child process of [`drop_flushes_files_left_open`]: `<root>\n<id>\n<keyring>`.
const DROP_CHILD_ENV: &str = "CEPHFS_OUTAGE_TEST_DROP_CHILD";

/// The bounded teardown still closes and flushes on a healthy cluster, before the process
/// exits: a child process writes a file it never closes (no fsync, no RELEASE) and one it
/// closes just before dropping its `CephFs`, then exits at once (`process::exit`, no other
/// cleanup), like the daemon. The data is on the cluster afterwards.
#[test]
fn drop_flushes_files_left_open() {
    let data: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 253) as u8).collect();
    if let Ok(spec) = std::env::var(DROP_CHILD_ENV) {
        let mut parts = spec.lines();
        let (Some(root), Some(id), Some(keyring)) = (parts.next(), parts.next(), parts.next())
        else {
            panic!("bad {DROP_CHILD_ENV}: {spec:?}");
        };
        let mut cfg = cephfs_backend::CephConfig::new(&cluster().conf, id, keyring, root);
        cfg.op_timeout = Some(OP_TIMEOUT);
        let fs = CephFs::connect(cfg).expect("child mount");
        let (f, h) = create(&fs, &ctx(), ROOT, "left-open", 0o644);
        assert_eq!(write(&fs, f.inode, h, 0, &data), data.len());
        let (g, gh) = create(&fs, &ctx(), ROOT, "closed-last", 0o644);
        write(&fs, g.inode, gh, 0, b"closed just before the drop");
        release(&fs, g.inode, gh);
        let t0 = Instant::now();
        drop(fs);
        eprintln!(
            "child: drop with an open, unflushed file took {:?}",
            t0.elapsed()
        );
        std::process::exit(0);
    }
    let _only = exclusive();
    let vol = Volume::new("dropflush");
    let spec = format!("{}\n{}\n{}", vol.path, vol.id, vol.keyring.display());
    let t0 = Instant::now();
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["drop_flushes_files_left_open", "--exact", "--nocapture"])
        .env(DROP_CHILD_ENV, spec)
        .output()
        .expect("run the child");
    let child_took = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprint!("{stderr}");
    assert!(out.status.success(), "child: {}", out.status);
    assert!(
        stderr.contains("child: drop"),
        "the child did not get to its drop"
    );
    let reader = vol.mount();
    let t1 = Instant::now();
    assert_eq!(
        read_file(&reader, ROOT, "left-open").expect("read"),
        data,
        "data of a file left open is on the cluster after the process exited"
    );
    assert_eq!(
        read_file(&reader, ROOT, "closed-last").expect("read"),
        b"closed just before the drop"
    );
    let read_took = t1.elapsed();
    eprintln!("child process took {child_took:?}; reading its files back took {read_took:?}");
    // A client that vanished holding caps would block the reader for the eviction timeout.
    assert!(
        read_took < Duration::from_secs(5),
        "the reader waited {read_took:?}: the child's session was not closed"
    );
}

fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Per-op latency figures of `n` runs of `op`.
struct Latency {
    mean: Duration,
    p50: Duration,
    p99: Duration,
}

fn measure(n: usize, mut op: impl FnMut()) -> Latency {
    let mut took: Vec<Duration> = (0..n)
        .map(|_| {
            let t0 = Instant::now();
            op();
            t0.elapsed()
        })
        .collect();
    took.sort();
    let total: Duration = took.iter().sum();
    Latency {
        mean: total / n as u32,
        p50: took[n / 2],
        p99: took[n * 99 / 100],
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "mean {:>6.1} us  p50 {:>6.1} us  p99 {:>6.1} us",
            self.mean.as_secs_f64() * 1e6,
            self.p50.as_secs_f64() * 1e6,
            self.p99.as_secs_f64() * 1e6
        )
    }
}

#[test]
#[ignore = "benchmark: cargo test -p cephfs-backend --release --test outage -- --ignored --nocapture"]
fn bounded_call_hop_cost() {
    let _only = exclusive();
    const N: usize = 5000;
    const ROUNDS: usize = 3;

    let pool = DeadlinePool::new("bench-call", 16, Duration::from_secs(30)).expect("pool");
    for _ in 0..1000 {
        pool.run("warm-up", || Ok(())).expect("no-op");
    }
    let hop = measure(N * 4, || pool.run("no-op", || Ok(())).expect("no-op"));
    eprintln!("hop of an empty job                 {hop}");

    // Each mount has its own volume and file: no caps shared between the two clients.
    let mounts = [
        ("inline (no op timeout)", None),
        ("bounded (30 s op timeout)", Some(Duration::from_secs(30))),
    ]
    .map(|(label, timeout)| {
        let vol = Volume::new("bench");
        let fs = mount_with_timeout(&vol, timeout);
        let (e, h) = create(&fs, &ctx(), ROOT, "file", 0o644);
        write(&fs, e.inode, h, 0, &[7u8; 4096]);
        release(&fs, e.inode, h);
        (label, vol, fs, e.inode)
    });
    for round in 0..ROUNDS {
        for (label, _, fs, node) in &mounts {
            let getattr = measure(N, || {
                fs.getattr(&ctx(), *node, None).expect("getattr");
            });
            let name = cstr("file");
            let lookup = measure(N, || {
                let e = fs.lookup(&ctx(), ROOT, &name).expect("lookup");
                fs.forget(&ctx(), e.inode, 1);
            });
            let (h, _, _) = fs
                .open(&ctx(), *node, libc::O_RDONLY as u32, 0)
                .expect("open");
            let h = h.expect("handle");
            let read4k = measure(N, || {
                assert_eq!(read(fs, *node, h, 0, 4096).expect("read").len(), 4096);
            });
            release(fs, *node, h);
            eprintln!("round {round} {label:<26} GETATTR {getattr}");
            eprintln!("round {round} {label:<26} LOOKUP  {lookup}");
            eprintln!("round {round} {label:<26} READ 4k {read4k}");
        }
    }
}

/// A directory the client has listed in full is listed again from its cache: paging through
/// it as the guest does (each READDIR from where the last reply ended) asks the MDS nothing
/// per page. It used to ask for every page: reading one entry too many and seeking back to
/// it made libcephfs drop the cached listing.
#[test]
fn a_listing_the_client_has_cached_asks_the_mds_nothing_per_page() {
    let _only = exclusive();
    let vol = Volume::new("listing");
    let fs = mount_with_timeout(&vol, Some(OP_TIMEOUT));
    let c = ctx();
    let dir = fs.mkdir(&c, ROOT, &cstr("d"), 0o755, 0).expect("mkdir");
    const FILES: usize = 2000;
    let names: Vec<String> = (0..FILES).map(|i| format!("file-{i:05}")).collect();
    for n in &names {
        let (e, h) = create(&fs, &c, dir.inode, n, 0o644);
        release(&fs, e.inode, h);
        fs.forget(&c, e.inode, 1);
    }
    let mut asked = Vec::new();
    for _ in 0..3 {
        let before = mds_requests();
        let listing = list_paged(&fs, dir.inode, 4096).expect("listing");
        asked.push(mds_requests() - before);
        assert_eq!(listing.len(), FILES + 2, "every entry, . and ..");
    }
    eprintln!("MDS requests per listing of {FILES} entries: {asked:?}");
    // About 20 pages of 4 KiB: one request per page would be 20 or more (the old code asked
    // 24 every time). The `.` and `..` entries take a getattr each (directory sizes are
    // recursive byte counts, which only the MDS knows).
    assert!(
        asked[1..].iter().all(|&n| n <= 4),
        "listings after the first asked the MDS {asked:?} times"
    );
    for n in &names {
        fs.unlink(&c, dir.inode, &cstr(n)).expect("unlink");
    }
}
