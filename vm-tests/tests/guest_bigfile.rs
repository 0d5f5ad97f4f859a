//! Large-file integrity: a 256 MiB file written in the guest has the same SHA-256 on the host,
//! and when read back in the guest after dropping its page cache; a file written on the host
//! reads back identically in the guest.

use std::path::Path;
use std::process::Command;

use vm_tests::workload::{script, temp_share, HELPER};
use vm_tests::{CacheMode, VmBuilder};

fn host_sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum on the host");
    assert!(out.status.success(), "sha256sum failed: {out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

const BODY: &str = r#"
H=/bin/vmtest-helper
t0=$(date +%s)
check fill_bytes 268435456 "$($H fill /data/big.bin 256 20261123)"
t1=$(date +%s)
r write_secs $((t1 - t0))
r size "$(stat -c %s /data/big.bin)"
r sha_written "$(sha256sum /data/big.bin | cut -d' ' -f1)"
sync; echo 3 > /proc/sys/vm/drop_caches
t2=$(date +%s)
r sha_reread "$(sha256sum /data/big.bin | cut -d' ' -f1)"
t3=$(date +%s)
r reread_secs $((t3 - t2))
r sha_host_file "$(sha256sum /data/from-host.bin | cut -d' ' -f1)"
"#;

#[test]
fn sha256_of_256_mib_matches_between_guest_and_host() {
    let share = temp_share();
    // 32 MiB of non-trivial data written by the host, read by the guest.
    let mut host_data = Vec::with_capacity(32 << 20);
    let mut x: u32 = 0x1234_5678;
    while host_data.len() < 32 << 20 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        host_data.extend_from_slice(&x.to_le_bytes());
    }
    let host_file = share.path().join("from-host.bin");
    std::fs::write(&host_file, &host_data).unwrap();

    let out = VmBuilder::new()
        .name("bigfile")
        .share(share.path())
        .cache(CacheMode::Auto)
        .program(Path::new(env!("CARGO_BIN_EXE_vmtest-helper")), HELPER)
        .unwrap()
        .workload(&script(BODY))
        .timeout(std::time::Duration::from_secs(600))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();

    let big = share.path().join("big.bin");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 256 << 20);
    assert_eq!(out.int("size"), 256 << 20);
    let host = host_sha256(&big);
    eprintln!(
        "bigfile: host sha256 {host}; guest write {} s, guest re-read+hash {} s",
        out.value("write_secs"),
        out.value("reread_secs")
    );
    out.expect("sha_written", &host);
    out.expect("sha_reread", &host);
    out.expect("sha_host_file", &host_sha256(&host_file));
}
