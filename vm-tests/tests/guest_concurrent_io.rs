//! Concurrent data requests from a real guest: fio writes a file with 4 KiB O_DIRECT writes
//! at queue depth 16 and reads every block back at the same depth, checking each block's
//! CRC32C. The guest sends those as batches, which the daemon serves on its overlap helpers
//! (`--overlap-threads`); at exit it logs how many it started and how many requests it handed
//! over, which this test reads.

use std::path::Path;

use vm_tests::workload::{script, temp_share};
use vm_tests::{CacheMode, VmBuilder};

const BODY: &str = r#"
fio --name=qd16 --filename=/data/qd16.bin --size=32m --bs=4k --direct=1 \
    --ioengine=libaio --iodepth=16 --rw=randwrite --randrepeat=0 \
    --verify=crc32c --do_verify=1 --verify_fatal=1 >/tmp/fio.out 2>&1
rc=$?
check fio_qd16_write_and_verify 0 "$rc"
[ "$rc" = 0 ] || cat /tmp/fio.out
r size "$(stat -c %s /data/qd16.bin)"
"#;

/// The `key=N` value of the daemon's `request workers:` line at exit.
fn worker_total(log: &str, key: &str) -> Option<u64> {
    let line = log.lines().find(|l| l.contains("request workers:"))?;
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn queue_depth_16_direct_io_verifies_through_the_overlap_helpers() {
    let share = temp_share();
    let out = VmBuilder::new()
        .name("concurrent-io")
        .share(share.path())
        .cache(CacheMode::Auto)
        .fio(true)
        .daemon_arg("--allow-direct-io")
        .workload(&script(BODY))
        .timeout(std::time::Duration::from_secs(600))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    assert_eq!(out.int("size"), 32 << 20);
    assert_eq!(
        std::fs::metadata(Path::new(share.path()).join("qd16.bin"))
            .unwrap()
            .len(),
        32 << 20
    );
    let log = &out.daemon.as_ref().expect("a daemon served the share").log;
    let started = worker_total(log, "started");
    let handed = worker_total(log, "handed_over");
    eprintln!("concurrent-io: helpers started {started:?}, requests handed over {handed:?}");
    out.check(
        started.is_some_and(|n| n >= 1) && handed.is_some_and(|n| n >= 1),
        &format!("no overlap helper served the QD16 batches (started {started:?}, handed over {handed:?})"),
    );
}
