//! CephFS volumes served with `--backend cephfs`, seen from real guests: tenant isolation (a
//! daemon with the wrong tenant's key refuses to start; `..`, symlinks and hard links from the
//! guest never reach a sibling volume, nor does `..` sent as a FUSE name by a hostile guest),
//! quotas (EDQUOT past the quota, `df` shows it as the size), snapshots (`.snap` shows the old
//! contents and is read-only), a change made by another Ceph client read fresh with
//! `cache=never`, and O_DIRECT I/O with `--allow-direct-io`.
//!
//! Needs root, QEMU and the single-node dev cluster (`scripts/ceph-dev-cluster.sh start`,
//! started here when it is not running; the tests fail, never skip, when it cannot start).

mod common;

use std::time::Duration;

use common::ceph::{self, CephVolume};
use common::host_view::HostView;
use vm_tests::daemon::{attempt_start, StartAttempt};
use vm_tests::workload::{script, HELPER};
use vm_tests::{CacheMode, DaemonConfig, ShareBackend, VmBuilder};

const GUEST_TIMEOUT: Duration = Duration::from_secs(600);

fn helper() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_BIN_EXE_vmtest-helper"))
}

#[track_caller]
/// What is wrong with a start that must be refused: it must exit non-zero, print exactly one
/// line on stderr, starting with `virtiofsd-kr: ` and naming each of `mentions`, and never
/// have a socket a VMM could connect to. Empty when all is well.
fn refusal_problems(case: &str, attempt: &StartAttempt, mentions: &[&str]) -> Vec<String> {
    eprintln!(
        "{case}: exit {:?} after {:?}, stderr: {}",
        attempt.status,
        attempt.ran_for,
        attempt.stderr.trim_end()
    );
    let mut problems = Vec::new();
    if !attempt.refused() {
        problems.push("the daemon must exit non-zero by itself".to_string());
    }
    let lines: Vec<&str> = attempt
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.len() != 1 {
        problems.push(format!(
            "want exactly one line on stderr, got {}",
            lines.len()
        ));
    }
    match lines.iter().find(|l| l.starts_with("virtiofsd-kr: ")) {
        None => problems.push("no stderr line starts with `virtiofsd-kr: `".into()),
        Some(line) => {
            for m in mentions {
                if !line.contains(m) {
                    problems.push(format!("the error line should name {m:?}"));
                }
            }
        }
    }
    if attempt.socket_appeared || attempt.socket_accepted {
        problems.push("the socket must never exist when the backend cannot start".into());
    }
    problems
        .into_iter()
        .map(|p| format!("{case}: {p}\n{}", attempt.report()))
        .collect()
}

/// The cluster's daemons run the release asked for (`CEPH_DEV_RELEASE`, pacific by default;
/// `scripts/test.sh` runs this file again against Reef) while the daemon under test keeps the
/// host's libcephfs: the rest of this file then checks a client of another release.
#[test]
fn cluster_runs_the_release_asked_for() {
    let release = std::env::var("CEPH_DEV_RELEASE").unwrap_or_else(|_| "pacific".into());
    let major = match release.as_str() {
        "pacific" => "16.",
        "reef" => "18.",
        other => panic!("CEPH_DEV_RELEASE={other}: this test knows pacific and reef"),
    };
    let versions = String::from_utf8_lossy(&ceph::ceph_command(&["versions"])).into_owned();
    for daemon in ["\"mon\"", "\"osd\"", "\"mds\"", "\"mgr\""] {
        let section = versions
            .split_once(daemon)
            .map(|(_, rest)| rest.split('}').next().unwrap_or(""))
            .unwrap_or_else(|| panic!("`ceph versions` names no {daemon}: {versions}"));
        assert!(
            section.contains(&format!("ceph version {major}")) && section.contains(&release),
            "{daemon} is not {release} ({major}x): {versions}"
        );
    }
    eprintln!(
        "cluster: {release}; the daemon's libcephfs: {}",
        String::from_utf8_lossy(
            &std::process::Command::new("ceph")
                .arg("--version")
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
        .trim()
    );
}

#[test]
fn daemon_refuses_another_tenants_key_and_bad_roots() {
    let mine = CephVolume::create("refa");
    let other = CephVolume::create("refb");
    let config = DaemonConfig::default();
    let limit = Duration::from_secs(90);
    let start = |share: vm_tests::CephShare| {
        attempt_start(&config, &ShareBackend::CephFs(share), limit)
            .unwrap_or_else(|e| panic!("{e}"))
    };

    let mut problems = Vec::new();

    // Another tenant's identity and key, on this volume's root.
    problems.extend(refusal_problems(
        "other tenant's key on this volume",
        &start(mine.share_as(&other.tenant)),
        &[&other.tenant.id, &mine.path],
    ));

    // The tenant's own key on a root above its volume.
    let mut above = mine.share();
    above.root = "/volumes".into();
    problems.extend(refusal_problems(
        "own key on /volumes",
        &start(above),
        &[&mine.tenant.id, "/volumes"],
    ));

    // A keyring file that does not exist.
    let mut no_keyring = mine.share();
    no_keyring.keyring = ceph::cluster().dir.join("tenants/no-such.keyring");
    problems.extend(refusal_problems(
        "missing keyring",
        &start(no_keyring),
        &["no-such.keyring"],
    ));

    // A root that does not exist inside the tenant's volume.
    let mut missing_root = mine.share();
    missing_root.root = format!("{}/no-such-dir", mine.path);
    problems.extend(refusal_problems(
        "missing root",
        &start(missing_root.clone()),
        &[&missing_root.root],
    ));

    // The right key on the right root starts (so the refusals above are about the identity
    // and the root, not about the daemon failing for every CephFS start).
    let out = VmBuilder::new()
        .name("ceph-right-tenant")
        .ceph_share(mine.share())
        .timeout(GUEST_TIMEOUT)
        .workload(&script(
            "echo hi > /data/hello; check hello hi \"$(cat /data/hello)\"",
        ))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    assert_eq!(
        mine.view()
            .read_string("hello")
            .unwrap_or_else(|e| panic!("{e}")),
        "hi\n"
    );
    assert!(
        problems.is_empty(),
        "{} problem(s) with refused starts:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn guest_never_sees_a_sibling_volume() {
    let mine = CephVolume::create("isoa");
    let sibling = CephVolume::create("isob");
    let token = format!("SIBLING-SECRET-{}", ceph::unique("t"));
    let sib_view = sibling.view();
    sib_view
        .write_file("secret.txt", format!("{token}\n").as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let my_view = mine.view();
    let sib = &sibling.name;
    let ok = |r: common::host_view::Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(my_view.mkdir("dir"));
    ok(my_view.write_file("dir/inside.txt", b"inside\n"));
    // Links a host-side tool (or an earlier tenant) could have left in the volume.
    ok(my_view.symlink(&format!("../{sib}/secret.txt"), "sib_rel"));
    ok(my_view.symlink(&format!("../../volumes/{sib}/secret.txt"), "sib_rel2"));
    ok(my_view.symlink(&format!("/volumes/{sib}/secret.txt"), "sib_abs"));
    ok(my_view.symlink(&format!("../../{sib}"), "dir/sib_dir"));
    ok(my_view.symlink("../..", "up2"));
    drop(my_view);

    let body = format!(
        r#"
SIB={sib}
cd /data/dir; cd ../..; check dotdot_pwd / "$(pwd)"
check dotdot_is_guest_root yes "$([ -d /data/../proc/self ] && echo yes)"
check dotdot2_is_guest_root "$(ls /)" "$(ls /data/../..)"
check dotdot_sibling ERR "$(err ls /data/../$SIB)"
check dotdot2_sibling ERR "$(err cat /data/../../volumes/$SIB/secret.txt)"
check dotdot_volumes ERR "$(err ls /data/../volumes)"
check deep_dotdot ERR "$(err cat /data/dir/../../$SIB/secret.txt)"
check snap_dotdot ERR "$(err cat /data/.snap/../../$SIB/secret.txt)"
check listing "dir sib_abs sib_rel sib_rel2 up2" "$(ls /data | tr '\n' ' ' | sed 's/ $//')"
check sib_rel ERR "$(err cat /data/sib_rel)"
check sib_rel2 ERR "$(err cat /data/sib_rel2)"
check sib_abs ERR "$(err cat /data/sib_abs)"
check sib_dir ERR "$(err ls /data/dir/sib_dir)"
check up2_is_guest_root yes "$([ -d /data/up2/proc/self ] && echo yes)"
check readlink_abs "/volumes/$SIB/secret.txt" "$(readlink /data/sib_abs)"
ln -s ../$SIB/secret.txt /data/guest_rel; check guest_rel ERR "$(err cat /data/guest_rel)"
ln -s /volumes/$SIB /data/guest_abs; check guest_abs ERR "$(err ls /data/guest_abs/secret.txt)"
ln -s ../../volumes/$SIB /data/dir/guest_up; check guest_up ERR "$(err ls /data/dir/guest_up/secret.txt)"
check hardlink_out ERR "$(err ln /etc/passwd /data/hl_passwd)"
mkdir /data/../$SIB 2>/dev/null; echo planted > /data/../$SIB/planted 2>/dev/null
mv /data/dir/inside.txt /data/../$SIB/moved.txt 2>/dev/null
check moved_lands_in_guest yes "$([ -f /$SIB/moved.txt ] && echo yes)"
# whatever the paths lead to goes to the console: the host checks the token never shows
for p in /data/sib_rel /data/sib_rel2 /data/sib_abs /data/dir/sib_dir/secret.txt \
         /data/up2/$SIB/secret.txt /data/../$SIB/secret.txt /data/guest_rel \
         /data/guest_abs/secret.txt /data/dir/guest_up/secret.txt \
         /data/.snap/../../$SIB/secret.txt; do
    cat "$p" 2>/dev/null
done
ls -la /data /data/dir /data/.. /data/up2/ 2>&1
sync
"#
    );
    let out = VmBuilder::new()
        .name("ceph-isolation")
        .ceph_share(mine.share())
        .timeout(GUEST_TIMEOUT)
        .workload(&script(&body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    out.expect("moved_lands_in_guest", "ok");
    out.check(
        !out.serial_text().contains(&token),
        "the sibling volume's secret appeared on the guest console",
    );

    // Host side: the sibling is exactly as it was, and nothing the guest did reached it.
    let sib_view = sibling.view();
    assert_eq!(
        sib_view.list("").unwrap_or_else(|e| panic!("{e}")),
        ["secret.txt"],
        "the sibling volume changed"
    );
    assert_eq!(
        sib_view
            .read_string("secret.txt")
            .unwrap_or_else(|e| panic!("{e}")),
        format!("{token}\n")
    );
    let my_view = mine.view();
    let mut names = my_view.list("").unwrap_or_else(|e| panic!("{e}"));
    names.sort();
    assert_eq!(
        names,
        [
            "dir",
            "guest_abs",
            "guest_rel",
            "sib_abs",
            "sib_rel",
            "sib_rel2",
            "up2"
        ]
    );
    // The move out of /data copied the file into the guest and removed it from the volume.
    assert_eq!(
        my_view.list("dir").unwrap_or_else(|e| panic!("{e}")),
        ["guest_up", "sib_dir"]
    );
}

/// 64 MiB: a whole number of CephFS statfs blocks (4 MiB), so `df` shows it exactly.
const QUOTA_BYTES: u64 = 64 << 20;

#[test]
fn quota_gives_edquot_and_is_the_size_in_df() {
    let volume = CephVolume::create("quota");
    volume.set_quota(QUOTA_BYTES);
    let body = r#"
H=/bin/vmtest-helper
r df_kib "$(df -k /data | tail -1 | awk '{ print $2 }')"
r statfs "$($H statfs /data)"
r fill "$($H write-until-error /data/fill.bin 256)"
r more_write "$($H write-until-error /data/more.bin 4)"
r dd_message "$(dd if=/dev/zero of=/data/dd.bin bs=1M count=16 2>&1 | grep -o 'Disk quota exceeded' | head -1)"
r df_after "$(df -k /data | tail -1)"
sync
"#;
    let out = VmBuilder::new()
        .name("ceph-quota")
        .ceph_share(volume.share())
        .timeout(GUEST_TIMEOUT)
        .program(helper(), HELPER)
        .unwrap()
        .workload(&script(body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    let df_kib = out.int("df_kib");
    let fill = out.value("fill").to_string();
    eprintln!(
        "quota {QUOTA_BYTES} bytes: df size {df_kib} KiB; statfs: {}; first file: {fill}; a \
         second file: {}; dd: {:?}; df after: {}",
        out.value("statfs"),
        out.value("more_write"),
        out.value("dd_message"),
        out.value("df_after")
    );
    let quota_kib = (QUOTA_BYTES / 1024) as i64;
    out.check(
        (df_kib - quota_kib).abs() <= 4096,
        &format!("df must show the quota ({quota_kib} KiB) as the size, got {df_kib} KiB"),
    );
    let field = |text: &str, key: &str| -> String {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
            .unwrap_or_default()
    };
    out.check(
        field(&fill, "write") == "EDQUOT",
        &format!("writing past the quota must fail with EDQUOT, got {fill:?}"),
    );
    let written: u64 = field(&fill, "written").parse().unwrap_or(0);
    out.check(
        written + (8 << 20) >= QUOTA_BYTES && written <= QUOTA_BYTES + (8 << 20),
        &format!(
            "EDQUOT must come near the quota ({QUOTA_BYTES} bytes), it came after {written} \
             bytes"
        ),
    );
    let more = out.value("more_write");
    out.check(
        field(more, "write") == "EDQUOT",
        &format!("a new file in a full volume must get EDQUOT, got {more:?}"),
    );
    out.expect("dd_message", "Disk quota exceeded");
    let size = volume
        .view()
        .stat("fill.bin")
        .unwrap_or_else(|e| panic!("{e}"))
        .size;
    assert_eq!(size, written, "the host sees what the guest wrote");
}

/// The errno of each write attempt inside `.snap`, as libcephfs reports it through the daemon.
const SNAPSHOT_WRITE_ERRORS: &[(&str, &str)] = &[
    ("snap_open_write", "ERR:EROFS"),
    ("snap_truncate", "ERR:EROFS"),
    ("snap_create", "ERR:EROFS"),
    ("snap_unlink", "ERR:EROFS"),
    ("snap_mkdir_inside", "ERR:EROFS"),
    ("snap_rmdir_inside", "ERR:EROFS"),
    ("snap_rename_inside", "ERR:EROFS"),
    ("snap_rename_out", "ERR:EXDEV"),
    ("snap_chmod", "ERR:EROFS"),
    ("snap_setxattr", "ERR:EROFS"),
    ("snap_symlink", "ERR:EROFS"),
    ("snap_link_in", "ERR:EROFS"),
    // Making or removing a snapshot needs the `s` flag in the tenant's MDS caps, which
    // `ceph fs authorize ... rw` does not give.
    ("snapdir_mkdir", "ERR:EACCES"),
    ("snapdir_rmdir", "ERR:EACCES"),
];

#[test]
fn snapshots_show_old_contents_and_are_read_only() {
    let volume = CephVolume::create("snap");
    let view = volume.view();
    let ok = |r: common::host_view::Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(view.write_file("file.txt", b"v1 before the snapshot\n"));
    ok(view.write_file("gone.txt", b"removed after the snapshot\n"));
    ok(view.mkdir("dir"));
    ok(view.write_file("dir/sub.txt", b"in a subdirectory\n"));
    volume.snapshot("before");
    ok(view.write_file("file.txt", b"v2 after the snapshot\n"));
    ok(view.unlink("gone.txt"));
    ok(view.write_file("new.txt", b"made after the snapshot\n"));
    drop(view);

    let body = r#"
H=/bin/vmtest-helper
S=/data/.snap/before
check live_file "v2 after the snapshot" "$(cat /data/file.txt)"
check live_gone ERR "$(err cat /data/gone.txt)"
check snapdir_hidden "dir file.txt new.txt" "$(ls -A /data | tr '\n' ' ' | sed 's/ $//')"
check snap_list before "$(ls /data/.snap)"
check snap_file "v1 before the snapshot" "$(cat $S/file.txt)"
check snap_gone "removed after the snapshot" "$(cat $S/gone.txt)"
check snap_sub "in a subdirectory" "$(cat $S/dir/sub.txt)"
check snap_no_new ERR "$(err cat $S/new.txt)"
check snap_names "dir file.txt gone.txt" "$(ls $S | tr '\n' ' ' | sed 's/ $//')"
r snap_open_write "$($H open-write $S/file.txt)"
r snap_truncate "$($H truncate $S/file.txt 0)"
r snap_create "$($H create $S/created.txt)"
r snap_unlink "$($H unlink $S/file.txt)"
r snap_mkdir_inside "$($H mkdir $S/newdir)"
r snap_rmdir_inside "$($H rmdir $S/dir)"
r snap_rename_inside "$($H rename $S/file.txt $S/renamed.txt)"
r snap_rename_out "$($H rename $S/file.txt /data/out.txt)"
r snap_chmod "$($H chmod $S/file.txt 600)"
r snap_setxattr "$($H setxattr $S/file.txt user.x y)"
r snap_symlink "$($H symlink file.txt $S/link)"
r snap_link_in "$($H link /data/file.txt $S/hard)"
r snapdir_mkdir "$($H mkdir /data/.snap/made-by-guest)"
r snapdir_rmdir "$($H rmdir /data/.snap/before)"
r shell_write "$(sh -c "echo x > $S/file.txt" 2>&1)"
check snap_file_after "v1 before the snapshot" "$(cat $S/file.txt)"
check snap_names_after "dir file.txt gone.txt" "$(ls $S | tr '\n' ' ' | sed 's/ $//')"
check snap_list_after before "$(ls /data/.snap)"
# a snapshot taken while the guest runs, of what it wrote
echo "guest v1" > /data/live.txt; sync
r wrote 1
read -r cmd
r got "$cmd"
echo "guest v2" > /data/live.txt
check live_now "guest v2" "$(cat /data/live.txt)"
check snap2_list "before during" "$(ls /data/.snap | tr '\n' ' ' | sed 's/ $//')"
check snap2_file "guest v1" "$(cat /data/.snap/during/live.txt)"
check snap2_old_file "v2 after the snapshot" "$(cat /data/.snap/during/file.txt)"
sync
"#;
    let mut vm = VmBuilder::new()
        .name("ceph-snapshots")
        .ceph_share(volume.share())
        .xattr(true)
        .timeout(GUEST_TIMEOUT)
        .program(helper(), HELPER)
        .unwrap()
        .workload(&script(body))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let steps = (|| -> vm_tests::Result<()> {
        vm.wait_for("wrote", GUEST_TIMEOUT)?;
        volume.snapshot("during");
        vm.send_line("go")?;
        vm.wait_for("got", Duration::from_secs(60))?;
        Ok(())
    })();
    let out = vm.wait().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = steps {
        panic!("{e}\n{}", out.report());
    }
    out.assert_checks_passed();
    let observed: Vec<String> = SNAPSHOT_WRITE_ERRORS
        .iter()
        .map(|(k, _)| format!("{k}={}", out.value(k)))
        .collect();
    eprintln!(
        "writes inside .snap: {}; shell: {:?}",
        observed.join(" "),
        out.value("shell_write")
    );
    for (key, want) in SNAPSHOT_WRITE_ERRORS {
        let got = out.value(key);
        out.check(
            got == *want,
            &format!(
                "{key}: want {want}, got {got} (all: {})",
                observed.join(" ")
            ),
        );
    }
    out.check(
        out.value("shell_write").contains("Read-only file system"),
        "a shell redirect into a snapshot must say `Read-only file system`",
    );

    // Host side: the snapshots are intact and the live volume has what the guest wrote.
    let view = volume.view();
    let read = |p: &str| view.read_string(p).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read(".snap/before/file.txt"), "v1 before the snapshot\n");
    assert_eq!(
        view.list(".snap/before").unwrap_or_else(|e| panic!("{e}")),
        ["dir", "file.txt", "gone.txt"]
    );
    assert_eq!(read(".snap/during/live.txt"), "guest v1\n");
    assert_eq!(read("live.txt"), "guest v2\n");
    assert_eq!(
        view.list(".snap").unwrap_or_else(|e| panic!("{e}")),
        ["before", "during"]
    );
}

#[test]
fn guest_cache_never_reads_through_to_the_cluster() {
    // A file changed by another client (the host's admin mount) while the guest runs is read
    // fresh with cache=never: the daemon holds no stale copy of its own.
    let volume = CephVolume::create("fresh");
    let view = volume.view();
    view.write_file("f.txt", b"one\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let body = r#"
check first one "$(cat /data/f.txt)"
r read_first 1
read -r cmd
check second two "$(cat /data/f.txt)"
"#;
    let mut vm = VmBuilder::new()
        .name("ceph-fresh")
        .ceph_share(volume.share())
        .cache(CacheMode::Never)
        .timeout(GUEST_TIMEOUT)
        .workload(&script(body))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let steps = (|| -> vm_tests::Result<()> {
        vm.wait_for("read_first", GUEST_TIMEOUT)?;
        view.write_file("f.txt", b"two\n")
            .map_err(|e| vm_tests::HarnessError::Config(e.to_string()))?;
        vm.send_line("go")
    })();
    let out = vm.wait().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = steps {
        panic!("{e}\n{}", out.report());
    }
    out.assert_checks_passed();
    out.expect("second", "ok");
}

#[test]
fn o_direct_io_with_allow_direct_io_verifies_and_reaches_other_clients() {
    // With --allow-direct-io the guest's O_DIRECT opens reach libcephfs, whose reads and
    // writes on them go to the OSDs synchronously (`cephfs-backend`'s
    // `o_direct_bypasses_the_clients_cache_only_when_honoured` shows the bypass itself):
    // fio's 4 KiB O_DIRECT random writes at depth 4 read back with every block's checksum
    // right, and a file written O_DIRECT in 64 KiB requests reads the same from another
    // client of the cluster (the host's view).
    let volume = CephVolume::create("odirect");
    // Connected before the guest, as the other tests' views. Mounted after the guest, in
    // full runs of this file (tests in parallel) the mount timed out at 10 s in 3 runs of 5,
    // each time while the MDS evicted a client that had not answered a cap revoke for 10 s
    // (a run of this test alone never showed it). A daemon whose session outlived it is such
    // a client, and every daemon whose request workers had started was one until the pool
    // joined them (`last_writes_before_power_off_reach_the_cluster`); that it was the one
    // here is not shown.
    let view = volume.view();
    let body = r#"
fio --name=vfy --filename=/data/vfy.bin --size=4m --bs=4k --direct=1 --ioengine=libaio \
    --iodepth=4 --rw=randwrite --randrepeat=0 --verify=crc32c --do_verify=1 \
    --verify_fatal=1 >/tmp/fio.out 2>&1
rc=$?
check fio_direct_write_and_verify 0 "$rc"
[ "$rc" = 0 ] || cat /tmp/fio.out
fio --name=pat --filename=/data/pat.bin --size=1m --bs=64k --direct=1 --ioengine=psync \
    --rw=write --buffer_pattern=0x78 >/tmp/fio2.out 2>&1
rc=$?
check fio_direct_pattern_write 0 "$rc"
[ "$rc" = 0 ] || cat /tmp/fio2.out
r size "$(stat -c %s /data/vfy.bin)"
"#;
    let out = VmBuilder::new()
        .name("ceph-odirect")
        .ceph_share(volume.share())
        .cache(CacheMode::Auto)
        .daemon_arg("--allow-direct-io")
        .fio(true)
        .timeout(GUEST_TIMEOUT)
        .workload(&script(body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    assert_eq!(out.int("size"), 4 << 20, "{}", out.report());
    // The daemon ended with the guest and closed its MDS session on the way (nothing left
    // for the MDS to evict while other clients wait on its capabilities).
    assert_eq!(
        ceph::cluster().mds_sessions_of(&volume.tenant.id),
        0,
        "the daemon's session outlived it; {}",
        out.report()
    );
    let pattern = view.read("pat.bin").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        pattern.len() == 1 << 20 && pattern.iter().all(|&b| b == b'x'),
        "pat.bin from another client: {} bytes, first {:?}",
        pattern.len(),
        &pattern[..pattern.len().min(16)]
    );
}

/// What the guest wrote just before it powered off, buffered and never synced, is on the
/// cluster once the daemon has exited, and the daemon's MDS session is closed. Two files
/// written at once start the request workers, which held the last reference to the backend
/// when the daemon exited: its unmount ran on a worker thread, racing the process's exit, and
/// lost: the session (with its capabilities) stayed until the MDS evicted it (the data had
/// been written back in the runs seen, but nothing ordered that).
#[test]
fn last_writes_before_power_off_reach_the_cluster() {
    let volume = CephVolume::create("lastw");
    let view = volume.view();
    let body = r#"
write() { dd if=/dev/zero bs=64k count=64 2>/dev/null | tr '\000' "$2" > "/data/$1"; }
write a.bin a & write b.bin b & wait
r sizes "$(stat -c %s /data/a.bin) $(stat -c %s /data/b.bin)"
"#;
    let out = VmBuilder::new()
        .name("ceph-last-writes")
        .ceph_share(volume.share())
        .cache(CacheMode::Auto)
        .timeout(GUEST_TIMEOUT)
        .workload(&script(body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    out.expect("sizes", "4194304 4194304");
    for (name, byte) in [("a.bin", b'a'), ("b.bin", b'b')] {
        let data = view.read(name).unwrap_or_else(|e| panic!("{e}"));
        let wrong = data.iter().filter(|&&b| b != byte).count();
        assert!(
            data.len() == 4 << 20 && wrong == 0,
            "{name} from another client: {} bytes, {wrong} not {:?}",
            data.len(),
            byte as char
        );
    }
    assert_eq!(
        ceph::cluster().mds_sessions_of(&volume.tenant.id),
        0,
        "the daemon's session outlived it; {}",
        out.report()
    );
}

#[test]
fn fuse_dotdot_at_the_root_stays_in_the_volume() {
    // A guest kernel resolves `..` itself and never sends it; a hostile guest can. Speak FUSE
    // to the daemon directly (the test VMM of `frontend.rs`) and try to climb out of the
    // volume by name.
    use vm_tests::daemon::Daemon;
    use vm_tests::frontend::TestFrontend;
    use vm_tests::fuse::{FuseError, FuseSession, ROOT};

    let mine = CephVolume::create("fusea");
    let sibling = CephVolume::create("fuseb");
    sibling
        .view()
        .write_file("secret.txt", b"sibling\n")
        .unwrap_or_else(|e| panic!("{e}"));
    mine.view()
        .write_file("mine.txt", b"mine\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let daemon = Daemon::start_backend(
        &DaemonConfig::default(),
        &ShareBackend::CephFs(mine.share()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let result = (|| -> Result<(), String> {
        let frontend = TestFrontend::connect(daemon.socket()).map_err(|e| e.to_string())?;
        let mut s = FuseSession::new(frontend);
        s.init().map_err(|e| e.to_string())?;
        let root_ino = s.getattr(ROOT).map_err(|e| e.to_string())?.attr.ino;
        let mut node = ROOT;
        for step in 1..=3 {
            let up = s
                .lookup(node, "..")
                .map_err(|e| format!("lookup ..: {e}"))?;
            if up.attr.ino != root_ino {
                return Err(format!(
                    "`..` step {step} left the volume root (ino {} != {root_ino})",
                    up.attr.ino
                ));
            }
            node = up.nodeid;
        }
        let mut names: Vec<String> = s
            .list_dir(node)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|d| d.name_str())
            .filter(|n| n != "." && n != "..")
            .collect();
        names.sort();
        if names != ["mine.txt"] {
            return Err(format!("`../../..` lists {names:?}, not the volume"));
        }
        let sibling_path = format!("../{}/secret.txt", sibling.name);
        for name in [
            sibling.name.as_str(),
            "volumes",
            "secret.txt",
            sibling_path.as_str(),
            "../volumes",
        ] {
            match s.lookup(node, name) {
                Err(FuseError::Errno(e)) if e == libc::ENOENT || e == libc::EINVAL => {}
                other => return Err(format!("lookup {name:?} above the root: {other:?}")),
            }
        }
        Ok(())
    })();
    let log = daemon.log();
    drop(daemon);
    if let Err(e) = result {
        panic!("{e}\ndaemon log:\n{log}");
    }
}
