//! Per-request cost probe (not a benchmark, `#[ignore]`d): 1 MiB and 4 KiB READs, 4 KiB
//! WRITEs and GETATTRs through `CephFs`, with the op timeout (calls on the deadline pool) and
//! without (calls inline). Run: cargo test --release -p cephfs-backend --test probe -- \
//! --ignored --nocapture

mod common;

use std::time::{Duration, Instant};

use common::*;
use fuse_backend_rs::api::filesystem::FileSystem;

fn probe(timeout: Option<Duration>) {
    let vol = Volume::new("probe");
    let mut cfg = vol.config();
    cfg.op_timeout = timeout;
    let fs = cephfs_backend::CephFs::connect(cfg).expect("mount");
    let c = ctx();
    let (f, h) = create(&fs, &c, ROOT, "data", 0o644);
    let block = vec![0x5au8; 1 << 20];
    for i in 0..64u64 {
        write(&fs, f.inode, h, i << 20, &block);
    }
    fs.fsync(&c, f.inode, false, h).expect("fsync");
    let cpu = || {
        // SAFETY: `libc::rusage` is plain old data; all zeroes is a valid value.
        let mut r: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct it is given (a valid out pointer).
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
        let d = |tv: libc::timeval| tv.tv_sec as f64 * 1e6 + tv.tv_usec as f64;
        d(r.ru_utime) + d(r.ru_stime)
    };
    let run = |what: &str, n: u64, mut op: Box<dyn FnMut(u64) + '_>| {
        let (t0, c0) = (Instant::now(), cpu());
        for i in 0..n {
            op(i);
        }
        let wall = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
        let cpu = (cpu() - c0) / n as f64;
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
}

#[test]
#[ignore]
fn per_request_cost() {
    for _ in 0..2 {
        probe(Some(Duration::from_secs(30)));
        probe(None);
    }
}
