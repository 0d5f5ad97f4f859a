//! Per-request cost probe (not a benchmark, `#[ignore]`d): 1 MiB and 4 KiB READs, 4 KiB
//! WRITEs and GETATTRs through `CephFs`, with the op timeout (calls on the deadline pool) and
//! without (calls inline). Run: cargo test --release -p cephfs-backend --test probe -- \
//! --ignored --nocapture

mod common;

use std::time::{Duration, Instant};

use common::*;
use fuse_backend_rs::api::filesystem::FileSystem;

/// CPU microseconds this process (all its threads) has used so far.
fn process_cpu_us() -> f64 {
    // SAFETY: `libc::rusage` is plain old data; all zeroes is a valid value.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given (a valid out pointer).
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let d = |tv: libc::timeval| tv.tv_sec as f64 * 1e6 + tv.tv_usec as f64;
    d(r.ru_utime) + d(r.ru_stime)
}

fn probe(timeout: Option<Duration>) {
    let vol = Volume::new("probe");
    let mut cfg = vol.config();
    cfg.op_timeout = timeout;
    let fs = cephfs_backend::CephFs::connect(cfg).expect("mount");
    let c = ctx();
    let (f, h) = write_data(&fs, 64);
    let block = vec![0x5au8; 1 << 20];
    let run = |what: &str, n: u64, mut op: Box<dyn FnMut(u64) + '_>| {
        let (t0, c0) = (Instant::now(), process_cpu_us());
        for i in 0..n {
            op(i);
        }
        let wall = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
        let cpu = (process_cpu_us() - c0) / n as f64;
        eprintln!("{timeout:?} {what}: {wall:.1} us wall, {cpu:.1} us CPU per request");
    };
    run(
        "read-1m",
        256,
        Box::new(|i| {
            read(&fs, f.inode, h, (i % 64) << 20, 1 << 20).unwrap();
        }),
    );
    run(
        "read-4k",
        4000,
        Box::new(|i| {
            read(&fs, f.inode, h, (i * 7919 % 16384) * 4096, 4096).unwrap();
        }),
    );
    run(
        "write-4k",
        4000,
        Box::new(|i| {
            write(&fs, f.inode, h, (i * 7919 % 16384) * 4096, &block[..4096]);
        }),
    );
    run(
        "getattr",
        4000,
        Box::new(|_| {
            fs.getattr(&c, f.inode, None).unwrap();
        }),
    );
    release(&fs, f.inode, h);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status
        .lines()
        .filter(|l| l.starts_with("RssAnon") || l.starts_with("VmHWM"))
    {
        eprintln!("{timeout:?} {line}");
    }
}

#[test]
#[ignore]
fn per_request_cost() {
    for _ in 0..2 {
        probe(Some(Duration::from_secs(30)));
        probe(None);
    }
}

/// Bytes this process has read with system calls so far (`rchar`: sockets included).
fn rchar() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("rchar: "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU microseconds used so far by this process's threads named `name`.
fn thread_cpu(name: &str) -> f64 {
    let mut total = 0.0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map_or("", |(_, a)| a);
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are 12 and 13 after the comm.
        let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        total += ticks * 1e6 / 100.0;
    }
    total
}

/// Creates `data` in the root with `mib` MiB of 0x5a written and synced; its entry and open
/// handle.
fn write_data(
    fs: &cephfs_backend::CephFs,
    mib: u64,
) -> (fuse_backend_rs::api::filesystem::Entry, u64) {
    let c = ctx();
    let (f, h) = create(fs, &c, ROOT, "data", 0o644);
    let block = vec![0x5au8; 1 << 20];
    for i in 0..mib {
        write(fs, f.inode, h, i << 20, &block);
    }
    fs.fsync(&c, f.inode, false, h).expect("fsync");
    (f, h)
}

/// Lays `data` out in `vol` (`write_data`) with a client that is gone when this returns, so
/// the next client starts cold.
fn lay_out_data(vol: &Volume, mib: u64) {
    let fs = vol.mount();
    let (f, h) = write_data(&fs, mib);
    release(&fs, f.inode, h);
}

/// The dev cluster's conf with `PROBE_EXTRA_CONF` appended (`;` for a new line), written
/// for `vol`'s probe.
fn conf_with_extra(vol: &Volume) -> std::path::PathBuf {
    let extra = std::env::var("PROBE_EXTRA_CONF").unwrap_or_default();
    conf_variant(&format!("{}-probe", vol.id), &extra.replace(';', "\n"))
}

/// Cold 4 KiB random reads (a fresh client per round, every block read once), as the bench's
/// random-read job sees them, alternating the volume's conf as given and with
/// `PROBE_EXTRA_CONF` appended (`;` for a new line), e.g. `[client];err_to_syslog = true`
/// (Ceph's default log levels again: the log has somewhere to go).
#[test]
#[ignore]
fn cold_read_cost() {
    let vol = Volume::new("probe-cold");
    let variant = conf_with_extra(&vol);
    lay_out_data(&vol, 64);
    for round in 0..8 {
        let quiet = round % 2 == 1;
        let mut cfg = vol.config();
        cfg.op_timeout = Some(Duration::from_secs(30));
        if quiet {
            cfg.conf = variant.clone();
        }
        let fs = cephfs_backend::CephFs::connect(cfg).expect("mount");
        let c = ctx();
        let e = fs.lookup(&c, ROOT, &cstr("data")).unwrap();
        let (h, _, _) = fs.open(&c, e.inode, libc::O_RDONLY as u32, 0).unwrap();
        let h = h.unwrap();
        const N: u64 = 1500;
        let (t0, c0, r0, l0) = (Instant::now(), process_cpu_us(), rchar(), thread_cpu("log"));
        for i in 0..N {
            read(&fs, e.inode, h, (i * 7919 % 16384) * 4096, 4096).unwrap();
        }
        let wall = t0.elapsed().as_secs_f64() * 1e6 / N as f64;
        let used = (process_cpu_us() - c0) / N as f64;
        let bytes = (rchar() - r0) / N;
        let log = (thread_cpu("log") - l0) / N as f64;
        eprintln!(
            "{}: cold read-4k: {wall:.1} us wall, {used:.1} us CPU ({log:.1} on log threads), \
             {bytes} bytes read per request",
            if quiet { "with extra" } else { "as given" }
        );
        release(&fs, e.inode, h);
    }
    let _ = std::fs::remove_file(&variant);
}

/// The client's anonymous memory after writing a 256 MiB file and reading it back in 1 MiB
/// and 4 KiB requests, as the bench's jobs do, with the conf as given or with
/// `PROBE_EXTRA_CONF` appended (`;` for a new line).
#[test]
#[ignore]
fn memory_after_io() {
    let vol = Volume::new("probe-mem");
    let variant = conf_with_extra(&vol);
    let mut cfg = vol.config();
    cfg.conf = variant.clone();
    cfg.op_timeout = Some(Duration::from_secs(30));
    let fs = cephfs_backend::CephFs::connect(cfg).expect("mount");
    let _ = std::fs::remove_file(&variant);
    let rss = |when: &str| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let line = status
            .lines()
            .find(|l| l.starts_with("RssAnon"))
            .unwrap_or("?")
            .to_string();
        eprintln!("{when}: {line}");
    };
    rss("mounted");
    let c = ctx();
    let (f, h) = create(&fs, &c, ROOT, "data", 0o644);
    let block = vec![0x5au8; 1 << 20];
    for i in 0..256u64 {
        write(&fs, f.inode, h, i << 20, &block);
    }
    rss("256 MiB written");
    fs.fsync(&c, f.inode, false, h).expect("fsync");
    rss("fsync");
    for i in 0..256u64 {
        read(&fs, f.inode, h, i << 20, 1 << 20).unwrap();
    }
    rss("read back in 1 MiB");
    for i in 0..20000u64 {
        read(&fs, f.inode, h, (i * 7919 % 65536) * 4096, 4096).unwrap();
    }
    rss("20,000 random 4 KiB reads");
    release(&fs, f.inode, h);
    // The dev cluster keeps its data in memory: give it back.
    fs.unlink(&c, ROOT, &cstr("data")).expect("unlink");
}

/// Creating, listing and unlinking 1,000 files as the bench's metadata job does, wall and
/// CPU per file. Creates are LOOKUP (ENOENT), CREATE, RELEASE; unlinks LOOKUP, UNLINK. Each
/// listing is as after the guest dropped its caches: every inode forgotten, then OPENDIR,
/// one READDIRPLUS of a page and plain READDIRs of a page each until the end (the guest's
/// `READDIRPLUS_AUTO`); `PROBE_ROUNDS` listings (3). `PROBE_INLINE=1`: no op timeout, every
/// call on the calling thread (what the deadline pool's hand-off costs).
#[test]
#[ignore]
fn readdir_cost() {
    let vol = Volume::new("probe-dir");
    let mut cfg = vol.config();
    // `PROBE_INLINE=1`: no op timeout, every call on the calling thread.
    cfg.op_timeout = match std::env::var_os("PROBE_INLINE") {
        Some(_) => None,
        None => Some(Duration::from_secs(30)),
    };
    let fs = cephfs_backend::CephFs::connect(cfg).expect("mount");
    let c = ctx();
    let d = fs.mkdir(&c, ROOT, &cstr("d"), 0o755, 0).expect("mkdir");
    const N: u64 = 1000;
    let m0 = mds_requests(); // ~0.1 s: before the clock starts
    let (t0, c0) = (Instant::now(), process_cpu_us());
    for i in 0..N {
        let name = cstr(&format!("f{i:05}"));
        assert!(fs.lookup(&c, d.inode, &name).is_err());
        let (e, h) = create(&fs, &c, d.inode, &format!("f{i:05}"), 0o644);
        release(&fs, e.inode, h);
        fs.forget(&c, e.inode, 1);
    }
    eprintln!(
        "create (LOOKUP, CREATE, RELEASE): {:.1} us wall, {:.1} us CPU, {:.2} MDS requests per file",
        t0.elapsed().as_secs_f64() * 1e6 / N as f64,
        (process_cpu_us() - c0) / N as f64,
        mds_requests().saturating_sub(m0) as f64 / N as f64
    );
    let rounds: u32 = std::env::var("PROBE_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    for round in 0..rounds {
        let (t0, c0) = (Instant::now(), process_cpu_us());
        let (h, _) = fs.opendir(&c, d.inode, 0).expect("opendir");
        let h = h.unwrap();
        let (mut offset, mut requests, mut seen) = (0u64, 0u32, 0u64);
        let mut looked_up = Vec::new();
        loop {
            let mut used = 0usize;
            let mut last = None;
            requests += 1;
            if offset == 0 {
                fs.readdirplus(&c, d.inode, h, 4096, offset, &mut |de, e| {
                    let n = 24 + de.name.len() + 128;
                    if used + n > 4096 {
                        return Ok(0);
                    }
                    used += n;
                    last = Some(de.offset);
                    if e.inode != 0 {
                        looked_up.push(e.inode);
                    }
                    Ok(n)
                })
                .expect("readdirplus");
            } else {
                fs.readdir(&c, d.inode, h, 4096, offset, &mut |de| {
                    let n = (24 + de.name.len() + 7) & !7;
                    if used + n > 4096 {
                        return Ok(0);
                    }
                    used += n;
                    last = Some(de.offset);
                    Ok(n)
                })
                .expect("readdir");
            }
            match last {
                Some(o) => {
                    seen += u64::from(used > 0);
                    offset = o;
                }
                None => break,
            }
        }
        fs.releasedir(&c, d.inode, 0, h).expect("releasedir");
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        let cpu = (process_cpu_us() - c0) / N as f64;
        eprintln!(
            "listing {round}: {wall:.2} ms wall, {cpu:.2} us CPU per entry, {requests} requests \
             ({seen} with entries)"
        );
        for n in looked_up {
            fs.forget(&c, n, 1);
        }
    }
    let m0 = mds_requests(); // ~0.1 s: before the clock starts
    let (t0, c0) = (Instant::now(), process_cpu_us());
    for i in 0..N {
        let name = cstr(&format!("f{i:05}"));
        let e = fs.lookup(&c, d.inode, &name).expect("lookup");
        fs.unlink(&c, d.inode, &name).expect("unlink");
        fs.forget(&c, e.inode, 1);
    }
    eprintln!(
        "unlink (LOOKUP, UNLINK): {:.1} us wall, {:.1} us CPU, {:.2} MDS requests per file",
        t0.elapsed().as_secs_f64() * 1e6 / N as f64,
        (process_cpu_us() - c0) / N as f64,
        mds_requests().saturating_sub(m0) as f64 / N as f64
    );
}

/// Random 4 KiB writes over an existing 256 MiB file by a fresh client, as the bench's
/// random-write job sends them (a new daemon per boot, the file laid out before): wall and
/// CPU per write in windows of 1,000 writes (does a write stay a copy into the client's
/// cache, or does it come to wait for the cluster as dirty data grows?), then the fsync.
/// `PROBE_WRITES` (10,000) writes; `PROBE_WRITE_GAP_US` (0) microseconds between writes, a
/// guest's pace; `PROBE_EXTRA_CONF` as for `cold_read_cost`, for both rounds.
#[test]
#[ignore]
fn cold_write_cost() {
    let vol = Volume::new("probe-wr");
    let variant = conf_with_extra(&vol);
    lay_out_data(&vol, 256);
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (n, gap) = (env("PROBE_WRITES", 10_000), env("PROBE_WRITE_GAP_US", 0));
    let block = vec![0xa5u8; 4096];
    for round in 0..2 {
        let mut cfg = vol.config();
        cfg.op_timeout = None;
        cfg.conf = variant.clone();
        let fs = cephfs_backend::CephFs::connect(cfg).expect("mount");
        let c = ctx();
        let e = fs.lookup(&c, ROOT, &cstr("data")).unwrap();
        let (h, _, _) = fs.open(&c, e.inode, libc::O_RDWR as u32, 0).unwrap();
        let h = h.unwrap();
        let (mut t, mut cpu) = (Instant::now(), process_cpu_us());
        let mut worst = Duration::ZERO;
        for i in 0..n {
            let w0 = Instant::now();
            write(&fs, e.inode, h, (i * 7919 % 65536) * 4096, &block);
            worst = worst.max(w0.elapsed());
            if gap > 0 {
                std::thread::sleep(Duration::from_micros(gap));
            }
            if (i + 1) % 1000 == 0 {
                let wall = t.elapsed().as_secs_f64() * 1e6 / 1000.0 - gap as f64;
                let used = (process_cpu_us() - cpu) / 1000.0;
                eprintln!(
                    "round {round}, writes {}-{}: {wall:.1} us wall (less the gap), {used:.1} us \
                     CPU per write, slowest {:.0} us",
                    i - 998,
                    i + 1,
                    worst.as_secs_f64() * 1e6
                );
                (t, cpu, worst) = (Instant::now(), process_cpu_us(), Duration::ZERO);
            }
        }
        let t0 = Instant::now();
        fs.fsync(&c, e.inode, false, h).expect("fsync");
        eprintln!(
            "round {round}: fsync {:.1} ms",
            t0.elapsed().as_secs_f64() * 1e3
        );
        release(&fs, e.inode, h);
    }
    let _ = std::fs::remove_file(&variant);
    // The dev cluster keeps its data in memory: give it back.
    vol.mount()
        .unlink(&ctx(), ROOT, &cstr("data"))
        .expect("unlink");
}
