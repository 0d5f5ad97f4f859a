//! The daemon's confinement modes with a real guest: with `--sandbox namespace` and
//! `--sandbox chroot` (and the daemon's default seccomp filter) the common file operations,
//! xattrs (namespace only), mmap and locks still work, and the daemon still exits 0 at
//! power-off.
//! (The other guest tests use `--sandbox none` unless `VMTEST_SANDBOX` says otherwise.)

use std::path::Path;

use vm_tests::workload::{failed_checks, script, temp_share, HELPER};
use vm_tests::{CacheMode, VmBuilder};

const BODY: &str = r#"
H=/bin/vmtest-helper
D=/data/sb
mkdir $D; check mkdir 0 "$?"
check host_read host "$(cat /data/host.txt)"
echo data > $D/f; check write_read data "$(cat $D/f)"
check pwrite ok "$($H pwrite $D/f 0 DA)"
check pread DAta "$($H pread $D/f 0 4)"
mv $D/f $D/g; check rename DAta "$(cat $D/g)"; check rename_src_gone ERR "$(err cat $D/f)"
ln $D/g $D/h; check link 2 "$(stat -c %h $D/g)"
ln -s g $D/s; check symlink g "$(readlink $D/s)"
chmod 600 $D/g; check chmod 600 "$(stat -c %a $D/g)"
chown 1000:1000 $D/g; check chown 1000:1000 "$(stat -c %u:%g $D/g)"
touch -d "2001-02-03 04:05:06" $D/g; check utimens 981173106 "$(stat -c %Y $D/g)"
truncate -s 8192 $D/g; check truncate 8192 "$(stat -c %s $D/g)"
fallocate -l 65536 $D/fa; check fallocate 65536 "$(stat -c %s $D/fa)"
if [ "$XATTR" = 1 ]; then
    setfattr -n user.sb -v on $D/g; check setxattr_file 0 "$?"
    check getxattr_file on "$(getfattr --only-values -n user.sb $D/g 2>/dev/null)"
    setfattr -n user.sbd -v dir $D; check setxattr_dir 0 "$?"
    check getxattr_dir dir "$(getfattr --only-values -n user.sbd $D 2>/dev/null)"
fi
check mmap_write ok "$($H mmap-write $D/g 100 MAPPED)"
check mmap_read MAPPED "$($H mmap-read $D/g 100 6)"
check flock "conflict=EWOULDBLOCK after_unlock=ok" "$($H flock $D/lk)"
check posix_lock "conflict=EAGAIN getlk=holder after_unlock=ok" "$($H posix-lock $D/lk2)"
check fsync ok "$($H fsync $D/fs synced)"
check statfs_type 65735546 "$(stat -f -c %t /data)"
check readdir 7 "$(ls -a $D | grep -vc '^\.\.\?$')"
rm $D/h; check unlink 1 "$(stat -c %h $D/g)"
mkdir $D/dd; rmdir $D/dd; check rmdir ERR "$(err stat $D/dd)"
sync
r done 1
"#;

fn sandbox_mode(mode: &str, xattr: bool) {
    let share = temp_share();
    std::fs::write(share.path().join("host.txt"), "host").unwrap();
    let out = VmBuilder::new()
        .name(&format!("sandbox-{mode}"))
        .share(share.path())
        .cache(CacheMode::Auto)
        .xattr(xattr)
        .sandbox(Some(mode))
        .seccomp(None)
        .program(Path::new(env!("CARGO_BIN_EXE_vmtest-helper")), HELPER)
        .unwrap()
        .workload(&script(&format!("XATTR={}\n{BODY}", u8::from(xattr))))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let failed = failed_checks(&out.results);
    out.check(
        failed.is_empty(),
        &format!("with --sandbox {mode}, failed checks: {failed:?}"),
    );
    out.assert_ok();
    out.expect("done", "1");
    let g = share.path().join("sb/g");
    assert_eq!(&std::fs::read(&g).unwrap()[100..106], b"MAPPED");
    assert!(!share.path().join("sb/h").exists());
}

#[test]
fn file_operations_under_sandbox_namespace() {
    sandbox_mode("namespace", true);
}

#[test]
fn file_operations_under_sandbox_chroot() {
    // A chroot hides /proc/self/fd, which xattr calls need: the daemon refuses
    // `--sandbox chroot --xattr`, so this mode runs without xattrs.
    sandbox_mode("chroot", false);
}
