//! DAX in real guests: Debian trixie's 6.12 kernel under QEMU 11.1 (TCG here), whose generic
//! vhost-user device gives the guest the daemon's window. Content read through the window
//! equals the host's for files of several sizes (2 MiB multiples, a 3.5 MiB file, an odd
//! size, a sparse file, one that grows while mapped), stores through it reach the host and
//! survive a remount, a window smaller than the data read works (the guest reclaims and the
//! daemon unmaps), `dax=inode` maps only the files the daemon flags, a `--readonly` export is
//! never written (with `dax=inode` and with `dax=always`, where QEMU 11.1 refuses the
//! read-only mappings and the daemon goes on serving), and two guests mapping one file see
//! each other's stores at once.

use std::path::Path;
use std::time::Duration;

use vm_tests::workload::{script, temp_share};
use vm_tests::{VmBuilder, VmOutcome};

const MIB: usize = 1 << 20;

/// A pattern that differs at every 4 KiB page and every byte inside it.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8) ^ ((i >> 12) as u8).wrapping_mul(31) ^ seed)
        .collect()
}

fn md5_of(path: &Path) -> String {
    let out = std::process::Command::new("md5sum")
        .arg(path)
        .output()
        .expect("md5sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The daemon's `dax totals` line: (map_ops, mapped_bytes, unmap_ops, refused_ops).
fn dax_totals(out: &VmOutcome) -> (u64, u64, u64, u64) {
    let log = &out.daemon.as_ref().expect("a daemon").log;
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("dax totals:"))
        .unwrap_or_else(|| panic!("no dax totals in the daemon log\n{}", out.report()));
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (
        field("map_ops"),
        field("mapped_bytes"),
        field("unmap_ops"),
        field("refused_ops"),
    )
}

fn dax_guest(name: &str, share: &Path, window: &str, mount: &str) -> VmBuilder {
    VmBuilder::new()
        .name(name)
        .modern()
        .share(share)
        .dax_window(window)
        .mount_options(mount)
        .daemon_arg("--log-level=info")
        .timeout(Duration::from_secs(
            std::env::var("VMTEST_TIMEOUT_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(240),
        ))
}

#[test]
fn dax_always_reads_equal_the_host_stores_reach_it_and_a_small_window_reclaims() {
    let share = temp_share();
    let d = share.path();
    let files: [(&str, Vec<u8>); 5] = [
        ("a4m", pattern(4 * MIB, 1)),
        ("b3m5", pattern(3 * MIB + MIB / 2, 2)),
        ("c_odd", pattern(1_000_001, 3)),
        ("d_big", pattern(24 * MIB, 4)),
        ("grow", pattern(3 * MIB + 100, 5)),
    ];
    for (name, data) in &files {
        std::fs::write(d.join(name), data).unwrap();
    }
    // Sparse: 5 MiB with one page of data at 3 MiB.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(d.join("sparse")).unwrap();
        f.set_len(5 * MIB as u64).unwrap();
        f.write_all_at(&pattern(4096, 6), 3 * MIB as u64).unwrap();
    }
    std::fs::write(d.join("w4m"), vec![0u8; 4 * MIB]).unwrap();
    // A 16 MiB window (8 ranges of 2 MiB) against 41 MiB of data read.
    let out = dax_guest("dax-always", d, "16M", "dax=always")
        .workload(&script(
            r#"
cd /
m() { md5sum "$1" | cut -d' ' -f1; }
for f in a4m b3m5 c_odd d_big sparse; do r "md5_$f" "$(m /data/$f)"; done
# Grows while mapped: read (mapped, the tail padded), append through FUSE, read again.
exec 3</data/grow
m /data/grow >/dev/null
printf 'appended-by-the-guest' >> /data/grow
r md5_grow "$(m /data/grow)"
exec 3<&-
# Stores through the window: 2 MiB of a4m copied into w4m at 1 MiB, in place.
dd if=/data/a4m of=/data/w4m bs=1M count=2 seek=1 conv=notrunc 2>/dev/null
r dd_rc $?
# An in-place store into the last partial page of c_odd (written back at sync).
printf 'TAIL' | dd of=/data/c_odd bs=1 seek=999990 conv=notrunc 2>/dev/null
sync
r md5_w4m "$(m /data/w4m)"
umount /data && mount -t virtiofs -o dax=always share /data && r remounted yes
r md5_w4m_after "$(m /data/w4m)"
r md5_a4m_after "$(m /data/a4m)"
r md5_c_odd_after "$(m /data/c_odd)"
r dax_mount "$(grep ' /data virtiofs ' /proc/mounts | grep -c dax=always)"
"#,
        ))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    for name in ["a4m", "b3m5", "d_big", "sparse"] {
        out.expect(&format!("md5_{name}"), &md5_of(&d.join(name)));
    }
    out.expect("dd_rc", "0");
    out.expect("remounted", "yes");
    out.expect("dax_mount", "1");
    // The guest read c_odd before its store; the host now has the store in its last page.
    let c_odd = std::fs::read(d.join("c_odd")).unwrap();
    assert_eq!(c_odd.len(), 1_000_001, "c_odd changed size");
    assert_eq!(
        &c_odd[999_990..999_994],
        b"TAIL",
        "store into the last page lost"
    );
    let mut c_expected = files[2].1.clone();
    c_expected[999_990..999_994].copy_from_slice(b"TAIL");
    assert!(c_odd == c_expected, "c_odd differs outside the store");
    out.expect("md5_c_odd_after", &md5_of(&d.join("c_odd")));
    let mut grown = files[4].1.clone();
    grown.extend_from_slice(b"appended-by-the-guest");
    assert!(std::fs::read(d.join("grow")).unwrap() == grown);
    out.expect("md5_grow", &md5_of(&d.join("grow")));
    let mut w = vec![0u8; 4 * MIB];
    w[MIB..3 * MIB].copy_from_slice(&files[0].1[..2 * MIB]);
    assert!(
        std::fs::read(d.join("w4m")).unwrap() == w,
        "stores through DAX did not reach the host file"
    );
    out.expect("md5_w4m", &md5_of(&d.join("w4m")));
    out.expect("md5_w4m_after", &md5_of(&d.join("w4m")));
    out.expect("md5_a4m_after", &md5_of(&d.join("a4m")));
    let (map_ops, mapped, unmap_ops, refused) = dax_totals(&out);
    assert!(
        mapped > 16 * MIB as u64 && unmap_ops > 0,
        "the 16 MiB window was not reused: map_ops={map_ops} mapped={mapped} unmap_ops={unmap_ops}\n{}",
        out.report()
    );
    assert_eq!(refused, 0, "{}", out.report());
}

#[test]
fn dax_inode_maps_only_flagged_files_and_readonly_exports_are_never_written() {
    let share = temp_share();
    let d = share.path();
    std::fs::write(d.join("large"), pattern(4 * MIB, 7)).unwrap();
    std::fs::write(d.join("small"), pattern(100_000, 8)).unwrap();
    let body = r#"
cd /
m() { md5sum "$1" | cut -d' ' -f1; }
r md5_small "$(m /data/small)"
r md5_large "$(m /data/large)"
"#;
    // dax=inode with --dax-file-size 1M: the large file alone goes through the window.
    let out = dax_guest("dax-inode", d, "64M", "dax=inode")
        .daemon_arg("--dax-file-size=1M")
        .workload(&script(body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    out.expect("md5_small", &md5_of(&d.join("small")));
    out.expect("md5_large", &md5_of(&d.join("large")));
    let (_, mapped, _, refused) = dax_totals(&out);
    assert_eq!(
        (mapped, refused),
        (4 * MIB as u64, 0),
        "only the large file's two chunks may be mapped\n{}",
        out.report()
    );

    // --readonly: no file is flagged, reads go through FUSE, every write is refused, and
    // nothing is mapped (no writable descriptor ever reaches QEMU).
    let before = std::fs::read(d.join("large")).unwrap();
    let out = dax_guest("dax-inode-readonly", d, "64M", "dax=inode")
        .daemon_arg("--readonly")
        .workload(&script(&format!(
            r#"{body}
check write_refused ERR "$(err sh -c 'printf x | dd of=/data/large bs=1 seek=4096 conv=notrunc')"
check write_erofs yes "$(printf x | dd of=/data/large bs=1 conv=notrunc 2>&1 | grep -q 'Read-only file system' && echo yes)"
"#
        )))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    out.expect("md5_large", &md5_of(&d.join("large")));
    assert!(std::fs::read(d.join("large")).unwrap() == before);
    let (map_ops, _, _, _) = dax_totals(&out);
    assert_eq!(
        map_ops,
        0,
        "a --readonly export was mapped\n{}",
        out.report()
    );
}

#[test]
fn a_pair_of_guests_mapping_one_file_see_each_others_stores() {
    let share = temp_share();
    let d = share.path();
    std::fs::write(d.join("shared"), vec![b'.'; 4 * MIB]).unwrap();
    let guest = |name: &str, mine: u64, theirs: u64, tag: &str| {
        dax_guest(name, d, "16M", "dax=always").workload(&script(&format!(
            r#"
cd /
exec 3<>/data/shared
# Map the whole file (both chunks) before the other guest stores anything.
md5sum /data/shared >/dev/null
r primed 1
read -r go
printf '{tag}' | dd of=/data/shared bs=1 seek={mine} conv=notrunc 2>/dev/null
r stored 1
read -r go
r seen "$(dd if=/data/shared bs=1 skip={theirs} count=8 2>/dev/null)"
exec 3<&-
"#
        )))
    };
    let mut a = guest("dax-pod-a", MIB as u64, 3 * MIB as u64, "STORE-A!")
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut b = guest("dax-pod-b", 3 * MIB as u64, MIB as u64, "STORE-B!")
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let wait = Duration::from_secs(180);
    a.wait_for("primed", wait).unwrap_or_else(|e| panic!("{e}"));
    b.wait_for("primed", wait).unwrap_or_else(|e| panic!("{e}"));
    a.send_line("go").unwrap();
    a.wait_for("stored", wait).unwrap_or_else(|e| panic!("{e}"));
    b.send_line("go").unwrap();
    b.wait_for("stored", wait).unwrap_or_else(|e| panic!("{e}"));
    a.send_line("go").unwrap();
    b.send_line("go").unwrap();
    let a = a.wait().unwrap_or_else(|e| panic!("{e}"));
    let b = b.wait().unwrap_or_else(|e| panic!("{e}"));
    a.assert_checks_passed();
    b.assert_checks_passed();
    // Each guest's second read went through its own mapping made before the other's store.
    b.expect("seen", "STORE-A!");
    a.expect("seen", "STORE-B!");
    let host = std::fs::read(d.join("shared")).unwrap();
    assert_eq!(&host[MIB..MIB + 8], b"STORE-A!");
    assert_eq!(&host[3 * MIB..3 * MIB + 8], b"STORE-B!");
}

#[test]
fn a_readonly_export_under_dax_always_is_never_written_and_the_daemon_goes_on() {
    // `dax=always` on a `--readonly` export: every write is refused before any mapping (no
    // writable descriptor ever reaches QEMU). QEMU 11.1 cannot map the read-only descriptors
    // the daemon then hands it, so a read through the window gets an error (docs/dax.md); it
    // must never get wrong data, and after those refused mappings the daemon goes on serving:
    // the same guest remounts without DAX and reads the file right.
    let share = temp_share();
    let d = share.path();
    std::fs::write(d.join("large"), pattern(4 * MIB, 9)).unwrap();
    let before = std::fs::read(d.join("large")).unwrap();
    let out = dax_guest("dax-always-readonly", d, "64M", "dax=always")
        .daemon_arg("--readonly")
        .workload(&script(
            r#"
cd /
m() { md5sum "$1" | cut -d' ' -f1; }
check write_erofs yes "$(printf x | dd of=/data/large bs=1 conv=notrunc 2>&1 | grep -q 'Read-only file system' && echo yes)"
check rdwr_open_refused ERR "$(err sh -c 'exec 3<>/data/large')"
if sum=$(md5sum /data/large 2>/dev/null); then r dax_read "${sum%% *}"; else r dax_read failed; fi
r listed "$(ls /data | tr '\n' ' ')"
umount /data && mount -t virtiofs -o dax=never share /data && r remounted yes
r md5_after "$(m /data/large)"
"#,
        ))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    let host_md5 = md5_of(&d.join("large"));
    let read = out.value("dax_read").to_string();
    assert!(
        read == "failed" || read == host_md5,
        "a read through the window returned wrong data: {read}\n{}",
        out.report()
    );
    out.expect("listed", "large ");
    out.expect("remounted", "yes");
    out.expect("md5_after", &host_md5);
    assert!(std::fs::read(d.join("large")).unwrap() == before);
    let (map_ops, mapped, _, refused) = dax_totals(&out);
    eprintln!(
        "readonly dax=always: read through the window {read}; map_ops={map_ops} \
         mapped={mapped} refused={refused}"
    );
}
