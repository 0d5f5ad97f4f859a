//! End to end through the Linux FUSE driver: a tenant's volume served by `CephFs` behind
//! fuse-backend-rs' `Server` on `/dev/fuse`, used with ordinary file system calls. This is the
//! request path the daemon uses for guests, minus the virtqueue. Needs root and `/dev/fuse`;
//! fails (never skips) without them.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{FuseSession, Writer};

use common::*;

#[test]
fn volume_served_through_dev_fuse() {
    assert!(
        std::path::Path::new("/dev/fuse").exists(),
        "this test needs /dev/fuse (modprobe fuse) and root"
    );
    let vol = Volume::new("fuse");
    let fs = vol.mount();
    let server = Arc::new(Server::new(fs));

    let mnt: PathBuf = std::env::temp_dir().join(unique("cephfs-fuse-"));
    std::fs::create_dir_all(&mnt).expect("mountpoint");
    let mut session = FuseSession::new(&mnt, "cephfs-test", "", false).expect("fuse session");
    session.mount().expect("mount /dev/fuse (needs root)");
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut ch = session.new_channel().expect("channel");
        let server = server.clone();
        workers.push(thread::spawn(move || loop {
            match ch.get_request() {
                Ok(Some((r, w))) => {
                    let _ = server.handle_message(r, Writer::FuseDev(w), None, None);
                }
                Ok(None) | Err(_) => return,
            }
        }));
    }

    let result = std::panic::catch_unwind(|| exercise(&mnt));

    session.wake().expect("wake");
    session.umount().expect("umount");
    for w in workers {
        let _ = w.join();
    }
    let _ = std::fs::remove_dir(&mnt);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn exercise(mnt: &std::path::Path) {
    let f = mnt.join("hello.txt");
    std::fs::write(&f, b"hello from the kernel").expect("write");
    assert_eq!(std::fs::read(&f).expect("read"), b"hello from the kernel");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&f)
        .expect("open append");
    file.write_all(b", appended").expect("append");
    drop(file);
    assert_eq!(
        std::fs::read_to_string(&f).expect("read"),
        "hello from the kernel, appended"
    );
    let big: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(mnt.join("big"), &big).expect("write 3 MiB");
    assert!(
        std::fs::read(mnt.join("big")).expect("read big") == big,
        "3 MiB round trip"
    );

    std::fs::create_dir_all(mnt.join("a/b/c")).expect("mkdir -p");
    std::fs::rename(&f, mnt.join("a/b/c/moved.txt")).expect("rename");
    std::fs::hard_link(mnt.join("a/b/c/moved.txt"), mnt.join("link")).expect("link");
    std::os::unix::fs::symlink("a/b/c/moved.txt", mnt.join("sym")).expect("symlink");
    assert_eq!(
        std::fs::read_to_string(mnt.join("sym")).expect("read through symlink"),
        "hello from the kernel, appended"
    );
    assert_eq!(
        std::fs::metadata(mnt.join("link")).expect("stat").nlink(),
        2
    );
    std::fs::set_permissions(mnt.join("link"), std::fs::Permissions::from_mode(0o640))
        .expect("chmod");
    assert_eq!(
        std::fs::metadata(mnt.join("a/b/c/moved.txt"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o640
    );
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("link"))
        .expect("open");
    file.set_len(5).expect("ftruncate");
    drop(file);
    assert_eq!(std::fs::read(mnt.join("sym")).expect("read"), b"hello");

    let mut names: Vec<String> = std::fs::read_dir(mnt)
        .expect("readdir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a", "big", "link", "sym"]);
    // Many entries: READDIRPLUS over several replies.
    for i in 0..300 {
        std::fs::write(mnt.join(format!("a/f{i:03}")), b"x").expect("create many");
    }
    assert_eq!(
        std::fs::read_dir(mnt.join("a")).expect("readdir").count(),
        301
    );

    let st = nix_statvfs(mnt);
    assert!(st > 0, "statfs reports blocks");

    std::fs::remove_file(mnt.join("link")).expect("unlink");
    std::fs::remove_file(mnt.join("sym")).expect("unlink");
    std::fs::remove_dir_all(mnt.join("a")).expect("rm -r");
    std::fs::remove_file(mnt.join("big")).expect("unlink big");
    assert_eq!(std::fs::read_dir(mnt).expect("readdir").count(), 0);
}

/// Total blocks from `df`-like statfs, via the `stat -f` tool to keep this test free of
/// unsafe code.
fn nix_statvfs(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("stat")
        .args(["-f", "-c", "%b"])
        .arg(path)
        .output()
        .expect("run stat -f");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}
