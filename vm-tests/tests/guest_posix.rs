//! POSIX file operations from a real guest through virtio-fs, each checked in the guest and,
//! where it leaves a trace, again on the host directory afterwards.

use std::ffi::CString;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use vm_tests::workload::{failed_checks, script, temp_share, HELPER};
use vm_tests::{CacheMode, VmBuilder, VmOutcome};

fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmtest-helper"))
}

fn assert_no_failed_checks(out: &VmOutcome) {
    let failed = failed_checks(&out.results);
    if !failed.is_empty() {
        panic!(
            "guest checks failed:\n  {}\n{}",
            failed.join("\n  "),
            out.report()
        );
    }
}

fn host_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and buffer.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return None;
    }
    buf.truncate(r as usize);
    Some(buf)
}

const POSIX_BODY: &str = r#"
H=/bin/vmtest-helper
D=/data/posix
mkdir $D; check mkdir_root 0 "$?"

# files made on the host are seen with their contents, mode and owner
check host_read "made on the host" "$(cat /data/host.txt)"
check host_mode "600 4321:8765" "$(stat -c '%a %u:%g' /data/host.txt)"

# create, write, read, unlink
echo "hello world" > $D/a.txt
check create_read "hello world" "$(cat $D/a.txt)"
echo "second line" >> $D/a.txt
check write_append_shell "2" "$(wc -l < $D/a.txt)"
check cp_read "$(cat $D/a.txt)" "$(cp $D/a.txt $D/a.copy && cat $D/a.copy)"
rm $D/a.copy; check unlink ERR "$(err cat $D/a.copy)"

# pwrite / pread at offsets, holes
check pwrite0 ok "$($H pwrite $D/p.bin 0 AAAAAAAAAA)"
check pwrite4 ok "$($H pwrite $D/p.bin 4 XY)"
check pwrite20 ok "$($H pwrite $D/p.bin 20 END)"
check pread4 XY "$($H pread $D/p.bin 4 2)"
check pread0 AAAAXYAAAA "$($H pread $D/p.bin 0 10)"
check pread20 END "$($H pread $D/p.bin 20 3)"
check pwrite_size 23 "$(stat -c %s $D/p.bin)"
check hole_zeros 00000000000000000000 "$(od -An -tx1 -j10 -N10 $D/p.bin | tr -d ' \n')"

# truncate (shrink and grow)
truncate -s 4 $D/p.bin; check truncate_shrink AAAA "$(cat $D/p.bin)"
truncate -s 4096 $D/p.bin; check truncate_grow 4096 "$(stat -c %s $D/p.bin)"
check truncate_grow_zeros 0000 "$(od -An -tx1 -j4 -N2 $D/p.bin | tr -d ' \n')"

# fallocate
fallocate -l 1048576 $D/falloc.bin; check fallocate_rc 0 "$?"
check fallocate_size 1048576 "$(stat -c %s $D/falloc.bin)"
blocks=$(stat -c %b $D/falloc.bin)
check fallocate_blocks yes "$([ "$blocks" -ge 2048 ] && echo yes || echo "no($blocks)")"
fallocate -o 1048576 -l 4096 $D/falloc.bin
check fallocate_offset_size 1052672 "$(stat -c %s $D/falloc.bin)"

# rename: new name, over an existing file, across directories, a directory
echo one > $D/r1; mv $D/r1 $D/r2
check rename_new one "$(cat $D/r2)"; check rename_old_gone ERR "$(err stat $D/r1)"
echo two > $D/r3; mv -f $D/r3 $D/r2
check rename_over two "$(cat $D/r2)"; check rename_over_src_gone ERR "$(err stat $D/r3)"
mkdir $D/sub1 $D/sub2; echo moved > $D/sub1/f; mv $D/sub1/f $D/sub2/g
check rename_xdir moved "$(cat $D/sub2/g)"; check rename_xdir_src_gone ERR "$(err stat $D/sub1/f)"
mv $D/sub2 $D/sub1/sub2
check rename_dir moved "$(cat $D/sub1/sub2/g)"

# hard links
echo linked > $D/l1; ln $D/l1 $D/l2
check link_nlink 2 "$(stat -c %h $D/l1)"
check link_same_inode "$(stat -c %i $D/l1)" "$(stat -c %i $D/l2)"
echo more >> $D/l2
check link_shared_data "linked more" "$(cat $D/l1 | tr '\n' ' ' | sed 's/ $//')"

# symlinks
ln -s l1 $D/s1
check readlink l1 "$(readlink $D/s1)"
check symlink_type "symbolic link" "$(stat -c %F $D/s1)"
check symlink_follow linked "$(head -1 $D/s1)"
ln -s /nonexistent/target $D/dangling
check readlink_dangling /nonexistent/target "$(readlink $D/dangling)"

# mkdir, rmdir
mkdir $D/d1; check mkdir_type directory "$(stat -c %F $D/d1)"
mkdir -p $D/d1/x/y/z; check mkdir_deep directory "$(stat -c %F $D/d1/x/y/z)"
rmdir $D/d1/x/y/z; check rmdir ERR "$(err stat $D/d1/x/y/z)"
check rmdir_nonempty ERR "$(err rmdir $D/d1)"
mkfifo $D/fifo; check mkfifo fifo "$(stat -c %F $D/fifo)"

# readdir of a large directory
mkdir $D/big
check big_created 2000 "$($H mkfiles $D/big 2000)"
check readdir_count 2000 "$(ls $D/big | wc -l)"
check readdir_long_count 2000 "$(ls -l $D/big | grep -c '^-')"
check readdir_find_count 2000 "$(find $D/big -type f | wc -l)"
check readdir_first f00000 "$(ls $D/big | sort | head -1)"
check readdir_last f01999 "$(ls $D/big | sort | tail -1)"
check readdir_unique 2000 "$(ls $D/big | sort -u | wc -l)"

# chmod, chown, utimens
touch $D/m
chmod 0640 $D/m; check chmod 640 "$(stat -c %a $D/m)"
chmod 2755 $D/d1; check chmod_dir_setgid 2755 "$(stat -c %a $D/d1)"
chown 1234:5678 $D/m; check chown 1234:5678 "$(stat -c %u:%g $D/m)"
touch -d "2001-02-03 04:05:06" $D/m
check utimens_mtime 981173106 "$(stat -c %Y $D/m)"
check utimens_atime 981173106 "$(stat -c %X $D/m)"
touch -h -d "2002-01-01 00:00:00" $D/s1
check utimens_symlink_nofollow 1009843200 "$(stat -c %Y $D/s1)"

# xattrs
setfattr -n user.vmtest -v hello $D/m; check setxattr 0 "$?"
check getxattr hello "$(getfattr --only-values -n user.vmtest $D/m)"
setfattr -n user.keep -v kept $D/m
check listxattr "user.keep user.vmtest" "$(getfattr -d $D/m | grep '^user' | cut -d= -f1 | sort | tr '\n' ' ' | sed 's/ $//')"
setfattr -x user.vmtest $D/m
check removexattr ERR "$(err getfattr -n user.vmtest $D/m)"
check getxattr_missing ERR "$(err getfattr -n user.nothere $D/m)"

# fsync / fdatasync
check fsync ok "$($H fsync $D/fs.txt synced)"

# mmap (MAP_SHARED write, read back through mmap and read(2))
dd if=/dev/zero of=$D/mm.bin bs=4096 count=2 2>/dev/null
check mmap_write ok "$($H mmap-write $D/mm.bin 4090 MMAPDATA)"
check mmap_read MMAPDATA "$($H mmap-read $D/mm.bin 4090 8)"
check mmap_pread MMAPDATA "$($H pread $D/mm.bin 4090 8)"
fio --name=mm --filename=$D/fio-mmap.bin --ioengine=mmap --rw=randrw --size=4m --bs=4k \
    --verify=crc32c --do_verify=1 --output=/tmp/fio.out >/dev/null 2>&1
rc=$?; check fio_mmap 0 "$rc"; [ "$rc" = 0 ] || cat /tmp/fio.out

# statfs
check statfs_type 65735546 "$(stat -f -c %t /data)"
r statfs "$($H statfs /data)"
check df_ok yes "$(df /data | tail -1 | awk '{ print ($2 > 0) ? "yes" : "no" }')"

# O_APPEND, O_EXCL
printf 12345 > $D/ap
check append_offset 8 "$($H append $D/ap abc)"
printf def >> $D/ap
check append_content 12345abcdef "$(cat $D/ap)"
check excl_new created "$($H excl $D/ex)"
check excl_exists ERR:EEXIST "$($H excl $D/ex)"
check excl_over_symlink ERR:EEXIST "$($H excl $D/dangling)"

# locks
check flock "conflict=EWOULDBLOCK after_unlock=ok" "$($H flock $D/lk)"
check posix_lock "conflict=EAGAIN getlk=holder after_unlock=ok" "$($H posix-lock $D/lk2)"

# data reaches the daemon: drop the guest's caches and read again
sync; echo 3 > /proc/sys/vm/drop_caches
check reread_after_drop "linked more" "$(cat $D/l2 | tr '\n' ' ' | sed 's/ $//')"
check reread_mmap MMAPDATA "$($H pread $D/mm.bin 4090 8)"
sync
"#;

#[test]
fn posix_operations_cache_auto() {
    let share = temp_share();
    let host_file = share.path().join("host.txt");
    std::fs::write(&host_file, "made on the host").unwrap();
    std::fs::set_permissions(&host_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::lchown(&host_file, Some(4321), Some(8765)).unwrap();

    let out = VmBuilder::new()
        .name("posix-auto")
        .share(share.path())
        .cache(CacheMode::Auto)
        .xattr(true)
        .fio(true)
        .program(helper(), HELPER)
        .unwrap()
        .workload(&script(POSIX_BODY))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_no_failed_checks(&out);
    out.assert_ok();
    // Every check above must have been reached.
    out.expect("reread_mmap", "ok");

    // Host side.
    let d = share.path().join("posix");
    let md = |p: &str| std::fs::symlink_metadata(d.join(p)).unwrap();
    let p_bin = std::fs::read(d.join("p.bin")).unwrap();
    assert_eq!(p_bin.len(), 4096);
    assert_eq!(&p_bin[..4], b"AAAA");
    assert!(p_bin[4..].iter().all(|&b| b == 0));
    assert_eq!(std::fs::read_to_string(d.join("r2")).unwrap(), "two\n");
    assert!(!d.join("r1").exists() && !d.join("r3").exists());
    assert_eq!(
        std::fs::read_to_string(d.join("sub1/sub2/g")).unwrap(),
        "moved\n"
    );
    assert_eq!(md("l1").nlink(), 2);
    assert_eq!(md("l1").ino(), md("l2").ino());
    assert_eq!(
        std::fs::read_to_string(d.join("l1")).unwrap(),
        "linked\nmore\n"
    );
    assert_eq!(std::fs::read_link(d.join("s1")).unwrap(), Path::new("l1"));
    assert_eq!(md("s1").mtime(), 1009843200);
    assert!(md("fifo").file_type().is_fifo());
    let m = md("m");
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    assert_eq!((m.mtime(), m.atime()), (981173106, 981173106));
    assert_eq!(md("d1").mode() & 0o7777, 0o2755);
    assert_eq!(
        host_xattr(&d.join("m"), "user.keep").as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(host_xattr(&d.join("m"), "user.vmtest"), None);
    let falloc = md("falloc.bin");
    assert_eq!(falloc.len(), 1052672);
    assert!(
        falloc.blocks() >= 2048,
        "fallocate reserved {} blocks",
        falloc.blocks()
    );
    assert_eq!(std::fs::read_dir(d.join("big")).unwrap().count(), 2000);
    let mm = std::fs::read(d.join("mm.bin")).unwrap();
    assert_eq!(&mm[4090..4098], b"MMAPDATA");
    assert_eq!(
        std::fs::read_to_string(d.join("ap")).unwrap(),
        "12345abcdef"
    );
    assert!(d.join("ex").is_file());
    assert_eq!(std::fs::read_to_string(d.join("fs.txt")).unwrap(), "synced");
    assert!(!d.join("a.copy").exists());
    assert!(!d.join("d1/x/y/z").exists() && d.join("d1/x/y").is_dir());
}

const MMAP_BODY: &str = r#"
H=/bin/vmtest-helper
D=/data/mm
mkdir -p $D
dd if=/dev/zero of=$D/mm.bin bs=4096 count=4 2>/dev/null
check mmap_write ok "$($H mmap-write $D/mm.bin 8190 ALWAYSMAP)"
check mmap_read ALWAYSMAP "$($H mmap-read $D/mm.bin 8190 9)"
check mmap_pread ALWAYSMAP "$($H pread $D/mm.bin 8190 9)"
check mmap_host_file HOSTDATA "$($H mmap-read /data/host.bin 100 8)"
fio --name=mm --filename=$D/fio-mmap.bin --ioengine=mmap --rw=randrw --size=4m --bs=4k \
    --verify=crc32c --do_verify=1 --output=/tmp/fio.out >/dev/null 2>&1
rc=$?; check fio_mmap 0 "$rc"; [ "$rc" = 0 ] || cat /tmp/fio.out
sync; echo 3 > /proc/sys/vm/drop_caches
check reread ALWAYSMAP "$($H pread $D/mm.bin 8190 9)"
"#;

#[test]
fn mmap_with_cache_always() {
    let share = temp_share();
    let mut host = vec![0u8; 8192];
    host[100..108].copy_from_slice(b"HOSTDATA");
    std::fs::write(share.path().join("host.bin"), &host).unwrap();
    let out = VmBuilder::new()
        .name("mmap-always")
        .share(share.path())
        .cache(CacheMode::Always)
        .fio(true)
        .program(helper(), HELPER)
        .unwrap()
        .workload(&script(MMAP_BODY))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_no_failed_checks(&out);
    out.assert_ok();
    out.expect("reread", "ok");
    let mm = std::fs::read(share.path().join("mm/mm.bin")).unwrap();
    assert_eq!(&mm[8190..8199], b"ALWAYSMAP");
    assert_eq!(
        std::fs::metadata(share.path().join("mm/fio-mmap.bin"))
            .unwrap()
            .len(),
        4 << 20
    );
}
