//! `dax-bench`: read bandwidth of one file through a DAX window against FUSE READs of the
//! same file, both served by the real daemon and driven by the test VMM (no guest: the
//! figures are the data path alone, without a guest kernel on top).
//!
//! Usage: `dax-bench [--size-mib N] [--rounds N]` (the daemon binary comes from
//! `VIRTIOFSD_KR_BIN` or `target/release`). Prints a Markdown table.
//!
//! Method, per round: FUSE: READ requests of 1 MiB over the whole file, each reply copied out
//! of guest memory (as a guest copies to its user buffer). DAX cold: SETUPMAPPING of every
//! 2 MiB chunk, then one copy out of the window. DAX warm: the same copy again with the
//! mappings in place. The host page cache is warm for all three (the file is read once
//! first), so the comparison is of the transports, not of the disk.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::Opcode;
use fuse_backend_rs::abi::virtio_fs::{
    RemovemappingIn, RemovemappingOne, SetupmappingFlags, SetupmappingIn,
};
use vm_memory::ByteValued;
use vm_tests::daemon::{Daemon, DaemonConfig};
use vm_tests::dax_window::DaxWindowMapper;
use vm_tests::frontend::{FrontendConfig, TestFrontend};
use vm_tests::fuse::{FuseSession, ROOT};

const MIB: u64 = 1 << 20;
const CHUNK: u64 = 2 * MIB;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mib_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let size = arg(&args, "--size-mib", 128) * MIB;
    let rounds = arg(&args, "--rounds", 5).max(1) as usize;
    if size == 0 || size % CHUNK != 0 {
        return Err("--size-mib must be a positive multiple of 2".into());
    }

    let share = tempfile::Builder::new().prefix("dax-bench-").tempdir_in(
        std::env::var_os("DAX_BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir),
    )?;
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    std::fs::write(share.path().join("file"), &data)?;
    let _ = std::fs::read(share.path().join("file"))?; // warm the host page cache

    let config = DaemonConfig {
        sandbox: Some("none".into()),
        seccomp: Some("none".into()),
        extra_args: vec!["--dax-window".into(), format!("{}", size)],
        ..DaemonConfig::default()
    };
    let mut daemon = Daemon::start(&config, share.path())?;
    let window = Arc::new(DaxWindowMapper::new(size)?);
    let frontend = TestFrontend::connect_with_handler(
        daemon.socket(),
        FrontendConfig {
            shmem: true,
            mem_size: 256 << 20,
            reply_timeout: Duration::from_secs(30),
            ..Default::default()
        },
        window.clone(),
    )?;
    let mut s = FuseSession::new(frontend);
    s.init()?;
    let node = s.lookup(ROOT, "file")?.nodeid;
    let fh = s.open(node, libc::O_RDONLY)?.fh;

    let (mut fuse, mut cold, mut warm, mut map_us) = (vec![], vec![], vec![], vec![]);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut off = 0;
        while off < size {
            let got = s.read(node, fh, off, MIB as u32)?;
            if got.len() as u64 != MIB {
                return Err(format!("short FUSE read at {off}: {}", got.len()).into());
            }
            off += MIB;
        }
        fuse.push(mib_per_s(size, t.elapsed()));

        let t = Instant::now();
        let mut off = 0;
        while off < size {
            let arg = SetupmappingIn {
                fh,
                foffset: off,
                len: CHUNK,
                flags: SetupmappingFlags::READ.bits(),
                moffset: off,
            };
            s.call_ok(Opcode::SetupMapping as u32, node, &[arg.as_slice()], 4096)?;
            off += CHUNK;
        }
        let mapped = t.elapsed();
        let copy = window.read(0, size as usize)?;
        cold.push(mib_per_s(size, t.elapsed()));
        map_us.push(mapped.as_secs_f64() * 1e6 / (size / CHUNK) as f64);
        if copy != data {
            return Err("data read through the window differs from the file".into());
        }

        let t = Instant::now();
        let copy = window.read(0, size as usize)?;
        warm.push(mib_per_s(size, t.elapsed()));
        drop(copy);

        let head = RemovemappingIn { count: 1 };
        let all = RemovemappingOne {
            moffset: 0,
            len: u64::MAX,
        };
        s.call_ok(
            Opcode::RemoveMapping as u32,
            node,
            &[head.as_slice(), all.as_slice()],
            4096,
        )?;
    }
    drop(s);
    let outcome = daemon.finish(Duration::from_secs(10));
    if !outcome.success() {
        return Err(format!("daemon did not exit 0: {}", daemon.log()).into());
    }

    let f = median(fuse);
    println!(
        "DAX vs FUSE reads, {} MiB file, {rounds} rounds, medians (test VMM, no guest)\n",
        size / MIB
    );
    println!("| path | MiB/s | vs FUSE READ |");
    println!("|---|---|---|");
    println!("| FUSE READ, 1 MiB requests | {f:.0} | 1.00x |");
    let c = median(cold);
    println!(
        "| DAX, map 2 MiB chunks + copy (cold) | {c:.0} | {:.2}x |",
        c / f
    );
    let w = median(warm);
    println!(
        "| DAX, copy with mappings in place (warm) | {w:.0} | {:.2}x |",
        w / f
    );
    println!(
        "\nSETUPMAPPING round trip per 2 MiB chunk: {:.0} us (median)",
        median(map_us)
    );
    Ok(())
}
