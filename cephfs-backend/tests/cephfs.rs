//! The CephFS backend against a real single-node cluster (see `common`): a tenant mounts its
//! volume directory and drives `CephFs` through the `FileSystem` trait.

mod common;

use std::time::{Duration, Instant};

use cephfs_backend::{CephConfig, CephError, CephFs};
use fuse_backend_rs::abi::fuse_abi::stat64;
use fuse_backend_rs::api::filesystem::{
    DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid,
};

use common::*;

/// O_TRUNC of an open stays with the guest kernel, which truncates with a SETATTR after its own
/// checks (ETXTBSY for a file being executed): FUSE_ATOMIC_O_TRUNC is never negotiated, even
/// when the kernel offers every option (`guest_etxtbsy.rs` shows what it broke).
#[test]
fn init_leaves_o_trunc_to_the_guest() {
    let vol = Volume::new("init");
    let fs = vol.mount();
    let got = fs.init(FsOptions::all()).expect("init");
    assert!(!got.contains(FsOptions::ATOMIC_O_TRUNC), "{got:?}");
    assert!(got.contains(FsOptions::DO_READDIRPLUS), "{got:?}");
    assert!(got.contains(FsOptions::EXPORT_SUPPORT), "{got:?}");
    // POSIX locks stay in the guest: the reason OPEN and CREATE may answer FOPEN_NOFLUSH.
    assert!(!got.contains(FsOptions::POSIX_LOCKS), "{got:?}");
}

#[test]
fn file_operations() {
    let vol = Volume::new("ops");
    let fs = vol.mount();
    let c = ctx();

    // create + write + read; a close sends no FLUSH (there is nothing for it to do)
    let args = fuse_backend_rs::abi::fuse_abi::CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    let (f, h, options, _) = fs.create(&c, ROOT, &cstr("a.txt"), args).expect("create");
    assert!(options.contains(OpenOptions::NOFLUSH), "{options:?}");
    let h = h.expect("a handle");
    assert_eq!(f.attr.st_mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(write(&fs, f.inode, h, 0, b"hello ceph"), 10);
    assert_eq!(write(&fs, f.inode, h, 6, b"CEPH!"), 5);
    assert_eq!(read(&fs, f.inode, h, 0, 100).unwrap(), b"hello CEPH!");
    assert_eq!(read(&fs, f.inode, h, 6, 4).unwrap(), b"CEPH");
    assert_eq!(read(&fs, f.inode, h, 100, 4).unwrap(), b"");
    fs.fsync(&c, f.inode, false, h).expect("fsync");
    release(&fs, f.inode, h);
    assert_eq!(read_file(&fs, ROOT, "a.txt").unwrap(), b"hello CEPH!");
    assert_eq!(
        errno(read(&fs, f.inode, h, 0, 1).unwrap_err()),
        libc::EBADF,
        "a released handle is gone"
    );

    // truncate through setattr
    let mut attr: stat64 = f.attr;
    attr.st_size = 5;
    let (st, _) = fs
        .setattr(&c, f.inode, attr, None, SetattrValid::SIZE)
        .expect("truncate");
    assert_eq!(st.st_size, 5);
    assert_eq!(read_file(&fs, ROOT, "a.txt").unwrap(), b"hello");
    attr.st_mode = 0o600;
    let (st, _) = fs
        .setattr(&c, f.inode, attr, None, SetattrValid::MODE)
        .expect("chmod");
    assert_eq!(st.st_mode & 0o7777, 0o600);

    // O_TRUNC on open, fallocate, lseek, mknod
    let (h2, _, _) = fs
        .open(&c, f.inode, (libc::O_RDWR | libc::O_TRUNC) as u32, 0)
        .expect("open O_TRUNC");
    let h2 = h2.expect("handle");
    assert_eq!(fs.getattr(&c, f.inode, None).expect("getattr").0.st_size, 0);
    fs.fallocate(&c, f.inode, h2, 0, 0, 8192)
        .expect("fallocate");
    assert_eq!(
        fs.getattr(&c, f.inode, None).expect("getattr").0.st_size,
        8192
    );
    assert_eq!(
        fs.lseek(&c, f.inode, h2, 0, libc::SEEK_END as u32)
            .expect("lseek"),
        8192
    );
    fs.setattr(&c, f.inode, attr, None, SetattrValid::SIZE)
        .expect("truncate to 5 again");
    write(&fs, f.inode, h2, 0, b"hello");
    release(&fs, f.inode, h2);
    assert_eq!(read_file(&fs, ROOT, "a.txt").unwrap(), b"hello");
    let fifo = fs
        .mknod(&c, ROOT, &cstr("fifo"), libc::S_IFIFO | 0o644, 0, 0)
        .expect("mknod fifo");
    assert_eq!(fifo.attr.st_mode & libc::S_IFMT, libc::S_IFIFO);
    fs.unlink(&c, ROOT, &cstr("fifo")).expect("unlink fifo");
    // A huge WRITE size from the guest is refused, not allocated.
    let (h3, options, _) = fs.open(&c, f.inode, libc::O_RDWR as u32, 0).expect("open");
    assert!(options.contains(OpenOptions::NOFLUSH), "{options:?}");
    let h3 = h3.expect("handle");
    let mut r = SliceReader(b"x");
    assert_eq!(
        errno(
            fs.write(&c, f.inode, h3, &mut r, u32::MAX, 0, None, false, 0, 0)
                .unwrap_err()
        ),
        libc::EINVAL
    );
    release(&fs, f.inode, h3);

    // mkdir, readdir, rename, link, symlink
    let d = fs.mkdir(&c, ROOT, &cstr("dir"), 0o755, 0).expect("mkdir");
    assert_eq!(d.attr.st_mode & libc::S_IFMT, libc::S_IFDIR);
    fs.rename(&c, ROOT, &cstr("a.txt"), d.inode, &cstr("b.txt"), 0)
        .expect("rename");
    assert_eq!(
        errno(fs.lookup(&c, ROOT, &cstr("a.txt")).unwrap_err()),
        libc::ENOENT
    );
    let l = fs.link(&c, f.inode, ROOT, &cstr("hard")).expect("link");
    assert_eq!(l.inode, f.inode, "a hard link is the same node");
    assert_eq!(l.attr.st_nlink, 2);
    let s = fs
        .symlink(&c, &cstr("dir/b.txt"), ROOT, &cstr("sym"))
        .expect("symlink");
    assert_eq!(s.attr.st_mode & libc::S_IFMT, libc::S_IFLNK);
    assert_eq!(fs.readlink(&c, s.inode).expect("readlink"), b"dir/b.txt");

    for i in 0..7 {
        let (e, h) = create(&fs, &c, d.inode, &format!("n{i}"), 0o644);
        release(&fs, e.inode, h);
    }
    let mut names: Vec<String> = list(&fs, d.inode).into_iter().map(|(n, _)| n).collect();
    names.sort();
    let mut want: Vec<String> = [".", "..", "b.txt"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..7).map(|i| format!("n{i}")))
        .collect();
    want.sort();
    assert_eq!(names, want, "readdir across several small replies");
    // Replies filled to the byte, as the guest's pages are: every entry exactly once,
    // whatever the page size (an entry that does not fit starts the next reply).
    for page in [4096, 1000, 200, 160] {
        let mut paged: Vec<String> = list_paged(&fs, d.inode, page)
            .expect("paged listing")
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        paged.sort();
        assert_eq!(paged, want, "readdir in {page}-byte replies");
    }
    let mut root_names: Vec<String> = list(&fs, ROOT).into_iter().map(|(n, _)| n).collect();
    root_names.sort();
    assert_eq!(root_names, [".", "..", "dir", "hard", "sym"]);

    // xattrs
    let x = cstr("user.tenant");
    fs.setxattr(&c, f.inode, &x, b"blue", 0).expect("setxattr");
    match fs.getxattr(&c, f.inode, &x, 0).expect("getxattr size") {
        GetxattrReply::Count(n) => assert_eq!(n, 4),
        GetxattrReply::Value(v) => panic!("size query returned {v:?}"),
    }
    match fs.getxattr(&c, f.inode, &x, 64).expect("getxattr") {
        GetxattrReply::Value(v) => assert_eq!(v, b"blue"),
        GetxattrReply::Count(n) => panic!("value query returned count {n}"),
    }
    match fs.listxattr(&c, f.inode, 1024).expect("listxattr") {
        ListxattrReply::Names(v) => assert!(
            v.split(|&b| b == 0).any(|n| n == b"user.tenant"),
            "listxattr: {:?}",
            String::from_utf8_lossy(&v)
        ),
        ListxattrReply::Count(n) => panic!("names query returned count {n}"),
    }
    assert!(matches!(
        fs.listxattr(&c, f.inode, 0).expect("listxattr size"),
        ListxattrReply::Count(n) if n >= 12
    ));
    fs.removexattr(&c, f.inode, &x).expect("removexattr");
    assert_eq!(
        errno(
            fs.getxattr(&c, f.inode, &x, 64)
                .err()
                .expect("removed xattr")
        ),
        libc::ENODATA
    );

    // statfs
    let st = fs.statfs(&c, ROOT).expect("statfs");
    assert!(
        st.f_blocks > 0 && st.f_bsize > 0,
        "statfs: {} blocks",
        st.f_blocks
    );

    // unlink, rmdir (ENOTEMPTY first)
    assert_eq!(
        errno(fs.rmdir(&c, ROOT, &cstr("dir")).unwrap_err()),
        libc::ENOTEMPTY
    );
    for i in 0..7 {
        fs.unlink(&c, d.inode, &cstr(&format!("n{i}")))
            .expect("unlink");
    }
    fs.unlink(&c, d.inode, &cstr("b.txt")).expect("unlink b");
    fs.rmdir(&c, ROOT, &cstr("dir")).expect("rmdir");
    let (st, _) = fs
        .getattr(&c, f.inode, None)
        .expect("getattr via hard link");
    assert_eq!(st.st_nlink, 1);
    assert_eq!(read_file(&fs, ROOT, "hard").unwrap(), b"hello");
}

#[test]
fn lookup_counts_and_forget() {
    let vol = Volume::new("cnt");
    let fs = vol.mount();
    let c = ctx();
    let (e, h) = create(&fs, &c, ROOT, "f", 0o644);
    release(&fs, e.inode, h);
    assert_eq!(fs.inodes().lookup_count(e.inode), Some(1));
    let e2 = fs.lookup(&c, ROOT, &cstr("f")).expect("lookup");
    let e3 = fs.lookup(&c, ROOT, &cstr("f")).expect("lookup");
    assert_eq!((e2.inode, e3.inode), (e.inode, e.inode));
    assert_eq!(fs.inodes().lookup_count(e.inode), Some(3));
    fs.forget(&c, e.inode, 2);
    assert_eq!(fs.inodes().lookup_count(e.inode), Some(1));
    fs.getattr(&c, e.inode, None).expect("still held");
    fs.batch_forget(&c, vec![(e.inode, 1)]);
    assert_eq!(fs.inodes().lookup_count(e.inode), None);
    assert_eq!(
        errno(fs.getattr(&c, e.inode, None).unwrap_err()),
        libc::EBADF,
        "a forgotten node is gone"
    );
    let again = fs.lookup(&c, ROOT, &cstr("f")).expect("lookup again");
    assert_ne!(again.inode, e.inode, "node ids are not reused");
    assert_eq!(again.attr.st_ino, e.attr.st_ino, "same ceph inode");

    // READDIRPLUS entries count as lookups; `.`/`..` do not.
    let d = fs.mkdir(&c, ROOT, &cstr("d"), 0o755, 0).expect("mkdir");
    for i in 0..3 {
        let (e, h) = create(&fs, &c, d.inode, &format!("x{i}"), 0o644);
        release(&fs, e.inode, h);
        fs.forget(&c, e.inode, 1);
    }
    let before = fs.inodes().len();
    let (dh, _) = fs.opendir(&c, d.inode, 0).expect("opendir");
    let dh = dh.expect("handle");
    let mut got: Vec<Entry> = Vec::new();
    fs.readdirplus(&c, d.inode, dh, 4096, 0, &mut |de: DirEntry, en: Entry| {
        if de.name == b"." || de.name == b".." {
            assert_eq!(en.inode, 0, "no node for . and ..");
        } else {
            got.push(en);
        }
        Ok(1)
    })
    .expect("readdirplus");
    fs.releasedir(&c, d.inode, 0, dh).expect("releasedir");
    assert_eq!(got.len(), 3);
    assert_eq!(fs.inodes().len(), before + 3);
    for en in &got {
        assert_eq!(fs.inodes().lookup_count(en.inode), Some(1));
        fs.forget(&c, en.inode, 1);
    }
    assert_eq!(fs.inodes().len(), before);

    // An entry the reply buffer had no room for takes no lookup.
    let (dh, _) = fs.opendir(&c, d.inode, 0).expect("opendir");
    let dh = dh.expect("handle");
    fs.readdirplus(&c, d.inode, dh, 4096, 0, &mut |_, _| Ok(0))
        .expect("readdirplus full");
    fs.releasedir(&c, d.inode, 0, dh).expect("releasedir");
    assert_eq!(fs.inodes().len(), before);

    // The root is never forgotten; unknown nodes are EBADF, not a panic.
    fs.forget(&c, ROOT, 1000);
    fs.getattr(&c, ROOT, None).expect("root stays");
    assert_eq!(
        errno(fs.getattr(&c, 999_999, None).unwrap_err()),
        libc::EBADF
    );
    assert_eq!(
        errno(fs.lookup(&c, 999_999, &cstr("x")).unwrap_err()),
        libc::EBADF
    );
    fs.forget(&c, 999_999, 1);
    let (open_files, open_dirs) = fs.open_handles();
    assert_eq!((open_files, open_dirs), (0, 0));
}

#[test]
fn dotdot_at_root_stays_at_root() {
    let vol = Volume::new("dot");
    let fs = vol.mount();
    let c = ctx();
    let (root, _) = fs.getattr(&c, ROOT, None).expect("getattr root");
    let up = fs.lookup(&c, ROOT, &cstr("..")).expect("lookup ..");
    assert_eq!(up.inode, ROOT);
    assert_eq!(up.attr.st_ino, root.st_ino);
    let dot = fs.lookup(&c, ROOT, &cstr(".")).expect("lookup .");
    assert_eq!(dot.inode, ROOT);
    let d = fs.mkdir(&c, ROOT, &cstr("sub"), 0o755, 0).expect("mkdir");
    let back = fs.lookup(&c, d.inode, &cstr("..")).expect("sub/..");
    assert_eq!(back.inode, ROOT, "sub/.. is the root node");
    let upup = fs.lookup(&c, up.inode, &cstr("..")).expect("../..");
    assert_eq!(upup.inode, ROOT);
    // `..` in READDIR at the root names the root itself.
    let entries = list(&fs, ROOT);
    let dd = entries.iter().find(|(n, _)| n == "..").expect(".. listed");
    assert_eq!(dd.1, root.st_ino);
    // Names cannot smuggle paths; `.`/`..` cannot be made or removed.
    assert_eq!(
        errno(fs.lookup(&c, ROOT, &cstr("../x")).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.lookup(&c, ROOT, &cstr("")).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.mkdir(&c, ROOT, &cstr(".."), 0o755, 0).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno(fs.rmdir(&c, ROOT, &cstr("..")).unwrap_err()),
        libc::EINVAL
    );
    assert_eq!(
        errno(
            fs.rename(&c, d.inode, &cstr(".."), ROOT, &cstr("x"), 0)
                .unwrap_err()
        ),
        libc::EINVAL
    );
    // The volume's siblings are invisible: the root lists only what is inside.
    let names: Vec<String> = entries.into_iter().map(|(n, _)| n).collect();
    assert!(
        names
            .iter()
            .all(|n| [".", "..", "sub"].contains(&n.as_str())),
        "{names:?}"
    );
}

#[test]
fn second_client_sees_closed_writes() {
    let vol = Volume::new("two");
    let a = vol.mount();
    let b = vol.mount();
    let c = ctx();

    let mut delays = Vec::new();
    for round in 0..3 {
        let name = format!("shared{round}");
        let payload = format!("round {round} from client A").into_bytes();
        let (e, h) = create(&a, &c, ROOT, &name, 0o644);
        write(&a, e.inode, h, 0, &payload);
        release(&a, e.inode, h);
        let t0 = Instant::now();
        wait_for(&b, &name, &payload, t0, &mut delays);

        // Overwrite through A while B has read (and may cache) the old content.
        let newer = format!("round {round} rewritten by A").into_bytes();
        let (h, _, _) = a
            .open(&c, e.inode, (libc::O_WRONLY | libc::O_TRUNC) as u32, 0)
            .expect("open for rewrite");
        let h = h.expect("handle");
        write(&a, e.inode, h, 0, &newer);
        release(&a, e.inode, h);
        let t0 = Instant::now();
        wait_for(&b, &name, &newer, t0, &mut delays);
        a.forget(&c, e.inode, 1);
    }
    // And the other way round.
    let (e, h) = create(&b, &c, ROOT, "from-b", 0o644);
    write(&b, e.inode, h, 0, b"written by B");
    release(&b, e.inode, h);
    let t0 = Instant::now();
    wait_for(&a, "from-b", b"written by B", t0, &mut delays);

    let max = delays.iter().max().copied().unwrap_or_default();
    eprintln!("two-client visibility delays after close: {delays:?} (max {max:?})");
    assert!(
        max < Duration::from_secs(10),
        "closed writes took {max:?} to show"
    );
}

/// Two pods append to one log, each guest writing at the end of file it last saw (a guest
/// kernel sends an `O_APPEND` write at its own, possibly stale, size). As `pwrite` on an
/// `O_APPEND` descriptor of a host mount does, the backend appends at the file's end, so no
/// line overwrites another; a page written back from the cache (FUSE_WRITE_CACHE) still goes
/// where the guest says.
#[test]
fn appends_from_two_clients_keep_both_lines() {
    let vol = Volume::new("appends");
    let a = vol.mount();
    let b = vol.mount();
    let c = ctx();
    let (e, h) = create(&a, &c, ROOT, "shared.log", 0o644);
    write(&a, e.inode, h, 0, b"start\n");
    release(&a, e.inode, h);
    let eb = b
        .lookup(&c, ROOT, &cstr("shared.log"))
        .expect("B looks up the log");

    let append = |fs: &CephFs, node: u64, stale_end: u64, line: &[u8]| {
        let (h, _, _) = fs
            .open(&c, node, (libc::O_WRONLY | libc::O_APPEND) as u32, 0)
            .expect("open O_APPEND");
        let h = h.expect("handle");
        let mut r = SliceReader(line);
        let n = fs
            .write(
                &c,
                node,
                h,
                &mut r,
                line.len() as u32,
                stale_end,
                None,
                false,
                libc::O_WRONLY as u32 | libc::O_APPEND as u32,
                0,
            )
            .expect("append");
        assert_eq!(n, line.len());
        release(fs, node, h);
    };
    // Both guests last saw 6 bytes.
    append(&a, e.inode, 6, b"a1\n");
    append(&b, eb.inode, 6, b"b1\n");
    append(&a, e.inode, 6, b"a2\n");
    assert_eq!(
        String::from_utf8(read_file(&b, ROOT, "shared.log").expect("read")).unwrap(),
        "start\na1\nb1\na2\n"
    );

    // A write-back of cached pages through an O_APPEND handle lands at its offset.
    let (h, _, _) = a
        .open(&c, e.inode, (libc::O_RDWR | libc::O_APPEND) as u32, 0)
        .expect("open O_APPEND");
    let h = h.expect("handle");
    let mut r = SliceReader(b"START");
    a.write(&c, e.inode, h, &mut r, 5, 0, None, true, 0, 0)
        .expect("write-back");
    release(&a, e.inode, h);
    assert_eq!(
        String::from_utf8(read_file(&b, ROOT, "shared.log").expect("read")).unwrap(),
        "START\na1\nb1\na2\n"
    );
}

/// One append record: fixed width, so a byte's offset names the record it belongs to.
fn record(k: usize) -> String {
    format!("rec{k:06}\n")
}

/// Client A appends records to a file, one open-write-close each, while client B reads the
/// whole file from offset 0 again and again, as two pods would. Whatever B reads must be the
/// file's first bytes: a prefix of the records in order. libcephfs 16.2 can answer a short read
/// that races a growing file with the bytes past the old end of file placed at the read's
/// offset (`CephMount::read_into` says how); a guest then sees its file go back or scramble.
#[test]
fn reads_racing_appends_return_the_files_first_bytes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let vol = Volume::new("race");
    let a = vol.mount();
    let b = vol.mount();
    let c = ctx();
    // A appends until B has read the growing file this often (and at least this many
    // records): while A holds the file's caps alone its appends are local and quick, so a
    // fixed count could be over before B's first read returns.
    let (min_appends, min_reads) = (400, 100);
    let (max_appends, give_up) = (99_999, Duration::from_secs(60));
    let (e, h) = create(&a, &c, ROOT, "log", 0o644);
    write(&a, e.inode, h, 0, record(0).as_bytes());
    release(&a, e.inode, h);

    let done = AtomicBool::new(false);
    let reads = AtomicUsize::new(0);
    let t0 = Instant::now();
    let (appended, bad) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut k = 1;
            while (k < min_appends || reads.load(Ordering::Acquire) < min_reads)
                && k < max_appends
                && t0.elapsed() < give_up
            {
                let (h, _, _) = a
                    .open(&c, e.inode, (libc::O_WRONLY | libc::O_APPEND) as u32, 0)
                    .expect("open for append");
                let h = h.expect("handle");
                let at = (k * record(0).len()) as u64;
                write(&a, e.inode, h, at, record(k).as_bytes());
                release(&a, e.inode, h);
                k += 1;
            }
            done.store(true, Ordering::Release);
            k
        });
        let reader = s.spawn(|| {
            let mut bad = Vec::new();
            while !done.load(Ordering::Acquire) {
                let data = read_file(&b, ROOT, "log").expect("B reads the log");
                reads.fetch_add(1, Ordering::Release);
                if !is_records_prefix(&data) && bad.len() < 5 {
                    let head = String::from_utf8_lossy(&data[..data.len().min(21)]).into_owned();
                    bad.push(format!("{} bytes starting {head:?}", data.len()));
                }
            }
            bad
        });
        (
            writer.join().expect("writer thread"),
            reader.join().expect("reader thread"),
        )
    });
    let reads = reads.into_inner();
    eprintln!("B read the growing file {reads} times while A appended {appended} records");
    assert!(
        reads >= min_reads,
        "B read only {reads} times in {give_up:?} of appends: the race was not exercised"
    );
    assert!(
        bad.is_empty(),
        "B read bytes that are not the file's first bytes: {bad:?}"
    );
    let expected: String = (0..appended).map(record).collect();
    assert_eq!(
        read_file(&b, ROOT, "log").expect("final read"),
        expected.as_bytes()
    );
}

/// `data` is the start of `record(0) record(1) ...`.
fn is_records_prefix(data: &[u8]) -> bool {
    let width = record(0).len();
    data.chunks(width)
        .enumerate()
        .all(|(k, chunk)| record(k).as_bytes().starts_with(chunk))
}

fn wait_for(fs: &CephFs, name: &str, want: &[u8], t0: Instant, delays: &mut Vec<Duration>) {
    loop {
        if let Ok(data) = read_file(fs, ROOT, name) {
            if data == want {
                delays.push(t0.elapsed());
                return;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{name}: the second client never saw {:?}",
            String::from_utf8_lossy(want)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn cephx_caps_confine_the_tenant() {
    let mine = Volume::new("capa");
    let other = Volume::new("capb");
    // The tenant's own volume mounts.
    let fs = mine.mount();
    drop(fs);
    // Its key on another tenant's volume, or on the filesystem root, does not.
    for root in [other.path.as_str(), "/", "/volumes"] {
        let cfg = CephConfig::new(&cluster().conf, &mine.id, &mine.keyring, root);
        match CephFs::connect(cfg) {
            Ok(_) => panic!("client.{} mounted {root} outside its caps", mine.id),
            Err(e) => {
                eprintln!("client.{} on {root}: {e}", mine.id);
                assert!(
                    matches!(e, CephError::RootDenied { .. } | CephError::Mount { .. }),
                    "unexpected error kind: {e:?}"
                );
            }
        }
    }
}

#[test]
fn startup_errors_are_clear() {
    let vol = Volume::new("err");
    let conf = cluster().conf.clone();
    let missing_key = CephConfig::new(&conf, &vol.id, "/nonexistent/keyring", &vol.path);
    let e = CephFs::connect(missing_key)
        .err()
        .expect("missing keyring fails");
    assert!(matches!(e, CephError::Keyring { .. }), "{e:?}");
    eprintln!("{e}");

    let missing_conf = CephConfig::new("/nonexistent/ceph.conf", &vol.id, &vol.keyring, &vol.path);
    let e = CephFs::connect(missing_conf)
        .err()
        .expect("missing conf fails");
    assert!(matches!(e, CephError::ConfFile { .. }), "{e:?}");

    let missing_root = CephConfig::new(&conf, "admin", &cluster().admin_keyring, "/no/such/dir");
    let e = CephFs::connect(missing_root)
        .err()
        .expect("missing root fails");
    assert!(matches!(e, CephError::RootMissing { .. }), "{e:?}");
    eprintln!("{e}");

    let relative = CephConfig::new(&conf, &vol.id, &vol.keyring, "volumes/x");
    let e = CephFs::connect(relative)
        .err()
        .expect("relative root fails");
    assert!(matches!(e, CephError::RelativeRoot(_)), "{e:?}");

    // A key that is not the one the cluster knows.
    let bad = cluster()
        .dir
        .join("tenants")
        .join(format!("{}-bad.keyring", vol.id));
    std::fs::write(
        &bad,
        format!(
            "[client.{}]\n\tkey = AQBVKyZnAAAAABAAcV0bH3u3n8jO2Y5p1xLxMw==\n",
            vol.id
        ),
    )
    .expect("write bad keyring");
    let t0 = Instant::now();
    let mut cfg = CephConfig::new(&conf, &vol.id, &bad, &vol.path);
    cfg.mount_timeout = Duration::from_secs(3);
    let e = CephFs::connect(cfg).err().expect("a wrong key fails");
    eprintln!("wrong key after {:?}: {e}", t0.elapsed());
    assert!(matches!(e, CephError::Connect { .. }), "{e:?}");

    // No cluster at the address: fails within the mount timeout with a connect error.
    let dead = cluster().dir.join("dead.conf");
    std::fs::write(
        &dead,
        "[global]\nmon_host = v2:127.0.0.1:1\nms_bind_msgr1 = false\n",
    )
    .expect("write conf");
    let t0 = Instant::now();
    let mut cfg = CephConfig::new(&dead, &vol.id, &vol.keyring, &vol.path);
    cfg.mount_timeout = Duration::from_secs(2);
    let e = CephFs::connect(cfg).err().expect("no cluster fails");
    let took = t0.elapsed();
    eprintln!("unreachable cluster after {took:?}: {e}");
    assert!(matches!(e, CephError::Connect { .. }), "{e:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
}

#[test]
fn guest_credentials_are_used() {
    let vol = Volume::new("cred");
    let fs = vol.mount();
    let root = ctx();
    let alice = user(1000, 1000);
    let bob = user(1001, 1001);

    // The volume root belongs to root, 0755: alice cannot create in it.
    let args = fuse_backend_rs::abi::fuse_abi::CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT) as u32,
        mode: libc::S_IFREG | 0o644,
        umask: 0,
        fuse_flags: 0,
    };
    assert_eq!(
        errno(fs.create(&alice, ROOT, &cstr("nope"), args).unwrap_err()),
        libc::EACCES
    );
    // A shared 1777 directory: alice's file is hers, bob may not remove it.
    let shared = fs
        .mkdir(&root, ROOT, &cstr("shared"), 0o777, 0)
        .expect("mkdir");
    let mut attr = shared.attr;
    attr.st_mode = libc::S_IFDIR | 0o1777;
    fs.setattr(&root, shared.inode, attr, None, SetattrValid::MODE)
        .expect("chmod 1777");
    let (f, h) = create(&fs, &alice, shared.inode, "alice.txt", 0o600);
    assert_eq!((f.attr.st_uid, f.attr.st_gid), (1000, 1000));
    release(&fs, f.inode, h);
    assert_eq!(
        errno(
            fs.open(&bob, f.inode, libc::O_RDONLY as u32, 0)
                .unwrap_err()
        ),
        libc::EACCES
    );
    assert_eq!(
        errno(
            fs.unlink(&bob, shared.inode, &cstr("alice.txt"))
                .unwrap_err()
        ),
        libc::EPERM
    );
    let (h, _, _) = fs
        .open(&alice, f.inode, libc::O_RDONLY as u32, 0)
        .expect("owner opens");
    release(&fs, f.inode, h.expect("handle"));
    // A private directory stops bob's lookups.
    let private = fs
        .mkdir(&alice, shared.inode, &cstr("private"), 0o700, 0)
        .expect("mkdir private");
    let (e, h) = create(&fs, &alice, private.inode, "secret", 0o644);
    release(&fs, e.inode, h);
    assert_eq!(
        errno(fs.lookup(&bob, private.inode, &cstr("secret")).unwrap_err()),
        libc::EACCES
    );
    assert_eq!(
        errno(
            fs.access(&bob, private.inode, libc::X_OK as u32)
                .unwrap_err()
        ),
        libc::EACCES
    );
    fs.access(&alice, private.inode, (libc::R_OK | libc::X_OK) as u32)
        .expect("owner access");
}

/// The four defects a POSIX conformance run found on this backend only (issue 14): times
/// past 2106, UTIME_NOW of atime, ftruncate through a descriptor of a mode-0 file, and the
/// old parent's link count after a directory moved away.
#[test]
fn posix_edge_cases() {
    let vol = Volume::new("edges");
    let fs = vol.mount();
    let root = ctx();
    let alice = user(1000, 1000);

    // Times: CephFS stores 32-bit unsigned seconds (utime_t). Beyond that range a time is
    // clamped like the Linux CephFS client does (s_time_max = U32_MAX), never wrapped.
    let (f, h) = create(&fs, &root, ROOT, "t", 0o644);
    release(&fs, f.inode, h);
    let mut attr = f.attr;
    for (set, want) in [
        (1_i64 << 31, 1_i64 << 31),
        ((1_i64 << 32) - 1, (1_i64 << 32) - 1),
        (1_i64 << 32, (1_i64 << 32) - 1),
        (1_i64 << 40, (1_i64 << 32) - 1),
        (-1, 0),
    ] {
        attr.st_atime = set;
        attr.st_atime_nsec = 0;
        attr.st_mtime = set;
        attr.st_mtime_nsec = 0;
        let (st, _) = fs
            .setattr(
                &root,
                f.inode,
                attr,
                None,
                SetattrValid::ATIME | SetattrValid::MTIME,
            )
            .expect("utimens");
        assert_eq!((st.st_atime, st.st_mtime), (want, want), "set {set}");
        let (st, _) = fs.getattr(&root, f.inode, None).expect("getattr");
        assert_eq!((st.st_atime, st.st_mtime), (want, want), "set {set}");
    }

    // UTIME_NOW: the guest sends ATIME|ATIME_NOW (and MTIME|MTIME_NOW) with its own clock.
    attr.st_atime = 1_000_000_000;
    attr.st_mtime = 1_000_000_000;
    fs.setattr(
        &root,
        f.inode,
        attr,
        None,
        SetattrValid::ATIME | SetattrValid::MTIME,
    )
    .expect("utimens past");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // A guest whose clock is a day behind: now is still the host's now.
    attr.st_atime = now - 86400;
    attr.st_mtime = now - 86400;
    let (st, _) = fs
        .setattr(
            &root,
            f.inode,
            attr,
            None,
            SetattrValid::ATIME
                | SetattrValid::ATIME_NOW
                | SetattrValid::MTIME
                | SetattrValid::MTIME_NOW,
        )
        .expect("utimens now");
    assert!(st.st_atime >= now - 5, "atime {} now {now}", st.st_atime);
    assert!(st.st_mtime >= now - 5, "mtime {} now {now}", st.st_mtime);
    let (st, _) = fs.getattr(&root, f.inode, None).expect("getattr");
    assert!(st.st_atime >= now - 5, "atime {} now {now}", st.st_atime);

    // ftruncate through the descriptor of a file created with mode 0, as a plain user.
    let shared = fs
        .mkdir(&root, ROOT, &cstr("shared"), 0o777, 0)
        .expect("mkdir");
    let mut dattr = shared.attr;
    dattr.st_mode = libc::S_IFDIR | 0o777;
    fs.setattr(&root, shared.inode, dattr, None, SetattrValid::MODE)
        .expect("chmod 777");
    let (z, zh) = create(&fs, &alice, shared.inode, "zero", 0);
    assert_eq!(z.attr.st_mode & 0o7777, 0);
    let mut zattr = z.attr;
    zattr.st_size = 1234;
    let (st, _) = fs
        .setattr(&alice, z.inode, zattr, Some(zh), SetattrValid::SIZE)
        .expect("ftruncate through the open handle");
    assert_eq!(st.st_size, 1234);
    // Without the handle the mode decides.
    assert_eq!(
        errno(
            fs.setattr(&alice, z.inode, zattr, None, SetattrValid::SIZE)
                .unwrap_err()
        ),
        libc::EACCES
    );
    release(&fs, z.inode, zh);

    // A directory moved into another: the old parent loses a link, the new one gains one.
    let a = fs
        .mkdir(&root, ROOT, &cstr("a"), 0o755, 0)
        .expect("mkdir a");
    let b = fs
        .mkdir(&root, ROOT, &cstr("b"), 0o755, 0)
        .expect("mkdir b");
    fs.mkdir(&root, a.inode, &cstr("sub"), 0o755, 0)
        .expect("mkdir a/sub");
    assert_eq!(fs.getattr(&root, a.inode, None).unwrap().0.st_nlink, 3);
    assert_eq!(fs.getattr(&root, b.inode, None).unwrap().0.st_nlink, 2);
    fs.rename(&root, a.inode, &cstr("sub"), b.inode, &cstr("sub"), 0)
        .expect("rename dir");
    assert_eq!(
        fs.getattr(&root, a.inode, None).unwrap().0.st_nlink,
        2,
        "old parent"
    );
    assert_eq!(
        fs.getattr(&root, b.inode, None).unwrap().0.st_nlink,
        3,
        "new parent"
    );
}

/// libcephfs' log reaches nobody in the daemon (no file, no stderr), so unless the conf routes
/// it out (syslog, graylog, journald) every subsystem is quiet (`0/0`), whatever the conf
/// asks; a conf that routes it out keeps its levels. Each entry libcephfs made cost a log
/// thread wake-up: a fifth of a cold read's CPU (tests/probe.rs `cold_read_cost`).
#[test]
fn the_client_log_is_quiet_unless_the_conf_sends_it_somewhere() {
    use cephfs_backend::mount::MountOptions;
    use cephfs_backend::CephMount;
    let vol = Volume::new("log");
    let connect = |name: &str, extra: &str| {
        let conf = conf_variant(&format!("{}-{name}", vol.id), &format!("[client]\n{extra}"));
        let mount = CephMount::connect(&MountOptions {
            conf: &conf,
            id: &vol.id,
            keyring: &vol.keyring,
            root: &vol.path,
            fs_name: None,
            mount_timeout: Duration::from_secs(30),
            posix_acl: false,
        })
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let _ = std::fs::remove_file(&conf);
        let value = |option: &str| {
            mount
                .conf_value(option)
                .unwrap_or_else(|e| panic!("{name}: {option}: {e}"))
        };
        (
            value("debug_client"),
            value("debug_objecter"),
            value("debug_finisher"),
        )
    };
    let zero = ("0/0".to_string(), "0/0".to_string(), "0/0".to_string());
    assert_eq!(
        connect("default", ""),
        zero,
        "Ceph's defaults (0/5, 0/1, 1/1)"
    );
    assert_eq!(
        connect("levels-only", "debug_client = 3/7"),
        zero,
        "levels with nowhere to go"
    );
    let (client, objecter, _) = connect("syslog", "debug_client = 3/7\nerr_to_syslog = true");
    assert_eq!(
        (client.as_str(), objecter.as_str()),
        ("3/7", "0/1"),
        "a conf that sends the log to syslog keeps its levels and Ceph's defaults"
    );
}

/// `rados -p cephfs_data ARGS...` as the dev cluster's admin (the conf names its keyring).
fn rados(args: &[&str]) -> Vec<u8> {
    let args = [&["-p", "cephfs_data"], args].concat();
    let out = cluster().rados(&args);
    assert!(
        out.status.success(),
        "rados {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// With `honour_o_direct` (`--allow-direct-io`), an O_DIRECT handle reads and writes the
/// file's RADOS object, past the client's cache, as ceph-fuse and the kernel client do with
/// O_DIRECT; without it, O_DIRECT is dropped and the same handle reads the client's cache.
/// Shown by changing the object behind the client's back (`rados put`) while the client
/// holds the file's data cached.
#[test]
fn o_direct_bypasses_the_clients_cache_only_when_honoured() {
    let vol = Volume::new("odirect");
    let c = ctx();
    for honour in [true, false] {
        let mut cfg = vol.config();
        cfg.honour_o_direct = honour;
        let fs = CephFs::connect(cfg).expect("mount");
        let name = format!("f-{honour}");
        let (e, h) = create(&fs, &c, ROOT, &name, 0o644);
        write(&fs, e.inode, h, 0, &[b'a'; 4096]);
        fs.fsync(&c, e.inode, false, h).expect("fsync");
        assert_eq!(read(&fs, e.inode, h, 0, 4096).unwrap(), [b'a'; 4096]);
        let object = format!("{:x}.00000000", e.attr.st_ino);
        let stored = std::env::temp_dir().join(format!("{}-{honour}", unique("odirect")));
        std::fs::write(&stored, [b'b'; 4096]).unwrap();
        rados(&["put", &object, stored.to_str().unwrap()]);
        let _ = std::fs::remove_file(&stored);

        let (d, _, _) = fs
            .open(&c, e.inode, (libc::O_RDWR | libc::O_DIRECT) as u32, 0)
            .expect("open O_DIRECT");
        let d = d.unwrap();
        let seen = read(&fs, e.inode, d, 0, 4096).unwrap();
        let expect = if honour { b'b' } else { b'a' };
        assert!(
            seen.iter().all(|&b| b == expect) && seen.len() == 4096,
            "honour_o_direct {honour}: an O_DIRECT read returned {:?}..., expected {:?}",
            &seen[..seen.len().min(8)],
            expect as char
        );
        if honour {
            write(&fs, e.inode, d, 0, &[b'c'; 4096]);
            assert_eq!(
                rados(&["get", &object, "-"]),
                [b'c'; 4096],
                "an O_DIRECT write is in the object when it returns"
            );
        }
        release(&fs, e.inode, d);
        release(&fs, e.inode, h);
        fs.unlink(&c, ROOT, &cstr(&name)).expect("unlink");
    }
}
