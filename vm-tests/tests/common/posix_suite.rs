//! The guest POSIX suite of `guest_posix.rs`, shared by both backends: the guest script is
//! the same byte for byte, and the checks made outside the guest go through a [`HostView`]
//! (the host directory for passthrough, an admin libcephfs mount for CephFS).
//!
//! Where CephFS legitimately differs from a local filesystem a check says so in a comment and
//! takes the backend into account; the passthrough checks are never weakened.

use std::path::Path;

use vm_tests::workload::{failed_checks, script, HELPER};
use vm_tests::{CacheMode, VmBuilder, VmOutcome};

use super::host_view::{HostFileKind, HostView};

fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmtest-helper"))
}

/// Panics with the report when a guest `check` failed.
pub fn assert_no_failed_checks(out: &VmOutcome) {
    let failed = failed_checks(&out.results);
    if !failed.is_empty() {
        panic!(
            "guest checks failed:\n  {}\n{}",
            failed.join("\n  "),
            out.report()
        );
    }
}

/// Unwraps a host-view result, panicking with its context.
#[track_caller]
fn ok<T>(r: super::host_view::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

pub const POSIX_BODY: &str = r#"
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

/// Boots `guest` (named, with its share, by the caller) with `cache=auto` and `--xattr`, runs
/// [`POSIX_BODY`], and checks the result in the guest and then through `view`, which must show
/// the same share.
pub fn posix_operations(guest: VmBuilder, view: &dyn HostView) -> VmOutcome {
    ok(view.write_file("host.txt", b"made on the host"));
    ok(view.chmod("host.txt", 0o600));
    ok(view.chown("host.txt", 4321, 8765));

    let out = guest
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
    let st = |p: &str| ok(view.stat(&format!("posix/{p}")));
    let read = |p: &str| ok(view.read(&format!("posix/{p}")));
    let exists = |p: &str| ok(view.exists(&format!("posix/{p}")));
    let p_bin = read("p.bin");
    assert_eq!(p_bin.len(), 4096);
    assert_eq!(&p_bin[..4], b"AAAA");
    assert!(p_bin[4..].iter().all(|&b| b == 0));
    assert_eq!(read("r2"), b"two\n");
    assert!(!exists("r1") && !exists("r3"));
    assert_eq!(read("sub1/sub2/g"), b"moved\n");
    assert_eq!(st("l1").nlink, 2);
    assert_eq!(st("l1").ino, st("l2").ino);
    assert_eq!(read("l1"), b"linked\nmore\n");
    assert_eq!(ok(view.read_link("posix/s1")), "l1");
    assert_eq!(st("s1").kind, HostFileKind::Symlink);
    assert_eq!(st("s1").mtime, 1009843200);
    assert_eq!(st("fifo").kind, HostFileKind::Fifo);
    let m = st("m");
    assert_eq!(m.perm, 0o640);
    assert_eq!((m.uid, m.gid), (1234, 5678));
    assert_eq!((m.mtime, m.atime), (981173106, 981173106));
    assert_eq!(st("d1").perm, 0o2755);
    assert_eq!(
        ok(view.getxattr("posix/m", "user.keep")).as_deref(),
        Some(&b"kept"[..])
    );
    assert_eq!(ok(view.getxattr("posix/m", "user.vmtest")), None);
    // On CephFS this holds without any space being reserved: libcephfs reports st_blocks as
    // the size rounded up to 512 bytes, and fallocate(mode 0) only extends the size (CephFS
    // has no preallocation). The check is kept as is for both backends; it only proves
    // something about allocation on passthrough.
    let falloc = st("falloc.bin");
    assert_eq!(falloc.size, 1052672);
    assert!(
        falloc.blocks >= 2048,
        "fallocate reserved {} blocks",
        falloc.blocks
    );
    assert_eq!(ok(view.list("posix/big")).len(), 2000);
    let mm = read("mm.bin");
    assert_eq!(&mm[4090..4098], b"MMAPDATA");
    assert_eq!(read("ap"), b"12345abcdef");
    assert_eq!(st("ex").kind, HostFileKind::File);
    assert_eq!(read("fs.txt"), b"synced");
    assert!(!exists("a.copy"));
    assert!(!exists("d1/x/y/z") && st("d1/x/y").kind == HostFileKind::Dir);
    out
}

pub const MMAP_BODY: &str = r#"
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

/// Boots `guest` (named, with its share, by the caller) with `cache=always`, runs
/// [`MMAP_BODY`] and checks the files through `view`.
pub fn mmap_with_cache_always(guest: VmBuilder, view: &dyn HostView) -> VmOutcome {
    let mut host = vec![0u8; 8192];
    host[100..108].copy_from_slice(b"HOSTDATA");
    ok(view.write_file("host.bin", &host));
    let out = guest
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
    let mm = ok(view.read("mm/mm.bin"));
    assert_eq!(&mm[8190..8199], b"ALWAYSMAP");
    assert_eq!(ok(view.stat("mm/fio-mmap.bin")).size, 4 << 20);
    out
}

/// Edge cases a POSIX conformance run found on the CephFS backend only (issue 14), run on
/// both backends with cache=auto and cache=never. `$TMAX` is the latest second the backend
/// stores (set by [`posix_edges`]).
pub const EDGES_BODY: &str = r#"
H=/bin/vmtest-helper
D=/data/edges
mkdir $D && chmod 777 $D; check edges_dir 0 "$?"

# times past 2038 and past 2106 (utimensat); never wrapped to 1970
touch $D/t
check utimens_2_31 ok "$($H utimens $D/t 2147483648 2147483648)"
check time_2_31 "2147483648 2147483648" "$($H times $D/t | cut -d' ' -f1,2)"
check utimens_2_32 ok "$($H utimens $D/t 4294967296 4294967296)"
check time_2_32 "$TMAX $TMAX" "$($H times $D/t | cut -d' ' -f1,2)"
sync; echo 3 > /proc/sys/vm/drop_caches
check time_2_32_reread "$TMAX $TMAX" "$($H times $D/t | cut -d' ' -f1,2)"

# UTIME_NOW sets atime and mtime to now, UTIME_OMIT leaves a time alone
now_ok() { [ "$1" -ge "$2" ] && [ "$1" -le "$(( $(date +%s) + 2 ))" ] && echo yes || echo "no($1 vs $2)"; }
$H utimens $D/t 1000000000 1000000000 >/dev/null
before=$(( $(date +%s) - 2 ))
check utimens_now ok "$($H utimens $D/t now now)"
set -- $($H times $D/t)
check utime_now_atime yes "$(now_ok $1 $before)"
check utime_now_mtime yes "$(now_ok $2 $before)"
$H utimens $D/t 1000000000 1000000000 >/dev/null
check utimens_now_omit ok "$($H utimens $D/t now omit)"
set -- $($H times $D/t)
check utime_now_atime_only yes "$(now_ok $1 $before)"
check utime_omit_mtime 1000000000 "$2"
$H utimens $D/t 1000000000 1000000000 >/dev/null
check utimens_omit_now ok "$($H utimens $D/t omit now)"
set -- $($H times $D/t)
check utime_omit_atime 1000000000 "$1"
check utime_now_mtime_only yes "$(now_ok $2 $before)"
# a fresh file: UTIME_NOW a moment after its creation moves both times forward
touch $D/fresh; set -- $($H times $D/fresh); created_a=$1; created_m=$2
sleep 2
$H utimens $D/fresh now now >/dev/null
set -- $($H times $D/fresh)
check utime_now_fresh_atime yes "$([ "$1" -gt "$created_a" ] && echo yes || echo "no($1 vs $created_a)")"
check utime_now_fresh_mtime yes "$([ "$2" -gt "$created_m" ] && echo yes || echo "no($2 vs $created_m)")"
cat $D/fresh; sleep 2
$H utimens $D/fresh now omit >/dev/null
set -- $($H times $D/fresh); prev=$1
check utime_now_after_read yes "$([ "$1" -gt "$created_a" ] && echo yes || echo "no($1 vs $created_a)")"
# the same through a file a process holds open for writing
exec 7>>$D/t
$H utimens $D/t 1000000000 1000000000 >/dev/null
$H utimens $D/t now now >/dev/null
set -- $($H times $D/t)
check utime_now_open_atime yes "$(now_ok $1 $before)"
exec 7>&-

# UTIME_NOW is the filesystem's now (the clock that stamps ctime and new files), not the
# guest's: a guest clock behind the host's must not move a fresh file's times back
$H create $D/skew >/dev/null; set -- $($H times $D/skew); skew_a=$1; skew_m=$2
date -s "@$(( $(date +%s) - 86400 ))" >/dev/null; check clock_back 0 "$?"
sleep 1
check utimens_now_skew ok "$($H utimens $D/skew now now)"
set -- $($H times $D/skew)
date -s "@$(( $(date +%s) + 86400 ))" >/dev/null
check utime_now_skew_atime yes "$([ "$1" -gt "$skew_a" ] && echo yes || echo "no($1 vs $skew_a)")"
check utime_now_skew_mtime yes "$([ "$2" -gt "$skew_m" ] && echo yes || echo "no($2 vs $skew_m)")"

# ftruncate through the descriptor of a file just created with mode 0, as a plain user
check ftruncate_mode0 1234 "$($H create0-ftruncate $D/zero 1234 65534)"
check ftruncate_mode0_size "1234 0 65534" "$(stat -c '%s %a %u' $D/zero)"

# a directory moved into another: both parents' link counts follow
mkdir $D/a $D/b $D/a/sub
check nlink_before "3 2" "$(stat -c %h $D/a) $(stat -c %h $D/b)"
mv $D/a/sub $D/b/sub
check nlink_old_parent 2 "$(stat -c %h $D/a)"
check nlink_new_parent 3 "$(stat -c %h $D/b)"
mv $D/b/sub $D/sub
check nlink_old_parent_again 2 "$(stat -c %h $D/b)"
check nlink_edges 5 "$(stat -c %h $D)"
rmdir $D/sub
check nlink_after_rmdir 4 "$(stat -c %h $D)"
check edges_done ok ok
"#;

/// Boots `guest` (named, with its share, by the caller) with `cache`, runs [`EDGES_BODY`]
/// with `time_max` as the latest second the backend stores.
pub fn posix_edges(guest: VmBuilder, cache: CacheMode, time_max: i64) -> VmOutcome {
    let body = format!("TMAX={time_max}\n{EDGES_BODY}");
    let out = guest
        .cache(cache)
        .program(helper(), HELPER)
        .unwrap()
        .workload(&script(&body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_no_failed_checks(&out);
    out.assert_ok();
    out.expect("edges_done", "ok");
    out
}
