//! The hand-written declarations in `src/ffi.rs` must match the installed
//! `<cephfs/libcephfs.h>`: compile a C program against it and compare `struct ceph_statx`'s
//! layout and the constants with the numbers `ffi.rs` asserts at compile time.

use std::process::Command;

#[test]
fn ceph_statx_layout_matches_the_installed_header() {
    let dir = std::env::temp_dir().join(format!("cephfs-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("layout.c");
    let bin = dir.join("layout");
    std::fs::write(
        &src,
        r#"
#define _FILE_OFFSET_BITS 64
#include <stdio.h>
#include <stddef.h>
#include <cephfs/libcephfs.h>
#define O(f) printf("%zu ", offsetof(struct ceph_statx, f));
int main(void) {
    printf("%zu %zu ", sizeof(struct ceph_statx), _Alignof(struct ceph_statx));
    O(stx_mode) O(stx_ino) O(stx_dev) O(stx_rdev) O(stx_atime) O(stx_ctime) O(stx_mtime)
    O(stx_btime) O(stx_version)
    printf("%u %d %d %d %d %d %d %d %d %d %d\n", CEPH_STATX_BASIC_STATS, CEPH_SETATTR_MODE,
        CEPH_SETATTR_UID, CEPH_SETATTR_GID, CEPH_SETATTR_MTIME, CEPH_SETATTR_ATIME,
        CEPH_SETATTR_SIZE, CEPH_SETATTR_CTIME, CEPH_SETATTR_MTIME_NOW, CEPH_SETATTR_ATIME_NOW,
        CEPH_SETATTR_KILL_SGUID);
    return 0;
}
"#,
    )
    .expect("write C source");
    let cc = Command::new("cc")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc (apt install gcc libcephfs-dev)");
    assert!(
        cc.status.success(),
        "compiling against <cephfs/libcephfs.h> failed (is libcephfs-dev installed? \
         scripts/ceph-dev-cluster.sh start installs it): {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(&bin).output().expect("run layout program");
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    // Must equal the assertions and constants in src/ffi.rs.
    assert_eq!(
        got,
        "136 8 20 24 48 56 64 80 96 112 128 2047 1 2 4 8 16 32 64 128 256 1024"
    );
}
