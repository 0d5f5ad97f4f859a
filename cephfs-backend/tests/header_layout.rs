//! The hand-written declarations in `src/ffi.rs` must match the installed
//! `<cephfs/libcephfs.h>`: compile a C program against it and compare `struct ceph_statx`'s
//! layout and the constants with the numbers `ffi.rs` asserts at compile time, and compile
//! (without linking: the crate resolves the functions at run time) an assignment of every
//! function `ffi.rs` declares to a pointer of the type declared there.

use std::collections::BTreeSet;
use std::path::Path;
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
    printf("%u %d\n", CEPH_STATX_SIZE, AT_STATX_DONT_SYNC);
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
        "136 8 20 24 48 56 64 80 96 112 128 2047 1 2 4 8 16 32 64 128 256 1024\n512 16384"
    );
}

/// Each libcephfs function `src/ffi.rs` declares, as a C pointer of the type written there
/// (Rust to C: `*mut T` is `T *`, `*const T` is `const T *`, `c_uint` is `unsigned`, `i64` is
/// `int64_t`, `u64` is `uint64_t`; the opaque structs by their C names), initialised with
/// the header's function. With `-Werror` any difference in a parameter or return type fails
/// the compilation.
const DECLARED_SIGNATURES: &str = r#"
#define _FILE_OFFSET_BITS 64
#include <stdint.h>
#include <dirent.h>
#include <sys/statvfs.h>
#include <cephfs/libcephfs.h>
typedef struct ceph_mount_info M;
typedef struct ceph_statx X;
typedef struct ceph_dir_result D;
int (*p_ceph_create)(M **, const char *) = ceph_create;
int (*p_ceph_conf_read_file)(M *, const char *) = ceph_conf_read_file;
int (*p_ceph_conf_set)(M *, const char *, const char *) = ceph_conf_set;
int (*p_ceph_conf_get)(M *, const char *, char *, size_t) = ceph_conf_get;
int (*p_ceph_init)(M *) = ceph_init;
mode_t (*p_ceph_umask)(M *, mode_t) = ceph_umask;
int (*p_ceph_select_filesystem)(M *, const char *) = ceph_select_filesystem;
int (*p_ceph_mount)(M *, const char *) = ceph_mount;
int (*p_ceph_unmount)(M *) = ceph_unmount;
int (*p_ceph_release)(M *) = ceph_release;
UserPerm *(*p_ceph_userperm_new)(uid_t, gid_t, int, gid_t *) = ceph_userperm_new;
UserPerm *(*p_ceph_mount_perms)(M *) = ceph_mount_perms;
void (*p_ceph_userperm_destroy)(UserPerm *) = ceph_userperm_destroy;
int (*p_ceph_ll_lookup_root)(M *, struct Inode **) = ceph_ll_lookup_root;
int (*p_ceph_ll_lookup)(M *, struct Inode *, const char *, struct Inode **, X *, unsigned,
    unsigned, const UserPerm *) = ceph_ll_lookup;
int (*p_ceph_ll_put)(M *, struct Inode *) = ceph_ll_put;
int (*p_ceph_ll_getattr)(M *, struct Inode *, X *, unsigned, unsigned, const UserPerm *) =
    ceph_ll_getattr;
int (*p_ceph_ll_setattr)(M *, struct Inode *, X *, int, const UserPerm *) = ceph_ll_setattr;
int (*p_ceph_ll_open)(M *, struct Inode *, int, struct Fh **, const UserPerm *) =
    ceph_ll_open;
off_t (*p_ceph_ll_lseek)(M *, struct Fh *, off_t, int) = ceph_ll_lseek;
int (*p_ceph_ll_read)(M *, struct Fh *, int64_t, uint64_t, char *) = ceph_ll_read;
int (*p_ceph_ll_write)(M *, struct Fh *, int64_t, uint64_t, const char *) = ceph_ll_write;
int (*p_ceph_ll_fsync)(M *, struct Fh *, int) = ceph_ll_fsync;
int (*p_ceph_sync_fs)(M *) = ceph_sync_fs;
int (*p_ceph_ll_fallocate)(M *, struct Fh *, int, int64_t, int64_t) = ceph_ll_fallocate;
int (*p_ceph_ll_close)(M *, struct Fh *) = ceph_ll_close;
int (*p_ceph_ll_getxattr)(M *, struct Inode *, const char *, void *, size_t,
    const UserPerm *) = ceph_ll_getxattr;
int (*p_ceph_ll_setxattr)(M *, struct Inode *, const char *, const void *, size_t, int,
    const UserPerm *) = ceph_ll_setxattr;
int (*p_ceph_ll_listxattr)(M *, struct Inode *, char *, size_t, size_t *, const UserPerm *) =
    ceph_ll_listxattr;
int (*p_ceph_ll_removexattr)(M *, struct Inode *, const char *, const UserPerm *) =
    ceph_ll_removexattr;
int (*p_ceph_ll_create)(M *, struct Inode *, const char *, mode_t, int, struct Inode **,
    struct Fh **, X *, unsigned, unsigned, const UserPerm *) = ceph_ll_create;
int (*p_ceph_ll_mknod)(M *, struct Inode *, const char *, mode_t, dev_t, struct Inode **, X *,
    unsigned, unsigned, const UserPerm *) = ceph_ll_mknod;
int (*p_ceph_ll_mkdir)(M *, struct Inode *, const char *, mode_t, struct Inode **, X *,
    unsigned, unsigned, const UserPerm *) = ceph_ll_mkdir;
int (*p_ceph_ll_link)(M *, struct Inode *, struct Inode *, const char *, const UserPerm *) =
    ceph_ll_link;
int (*p_ceph_ll_opendir)(M *, struct Inode *, D **, const UserPerm *) = ceph_ll_opendir;
int (*p_ceph_ll_releasedir)(M *, D *) = ceph_ll_releasedir;
int (*p_ceph_readdirplus_r)(M *, D *, struct dirent *, X *, unsigned, unsigned,
    struct Inode **) = ceph_readdirplus_r;
int64_t (*p_ceph_telldir)(M *, D *) = ceph_telldir;
void (*p_ceph_seekdir)(M *, D *, int64_t) = ceph_seekdir;
int (*p_ceph_ll_rename)(M *, struct Inode *, const char *, struct Inode *, const char *,
    const UserPerm *) = ceph_ll_rename;
int (*p_ceph_ll_unlink)(M *, struct Inode *, const char *, const UserPerm *) =
    ceph_ll_unlink;
int (*p_ceph_ll_rmdir)(M *, struct Inode *, const char *, const UserPerm *) = ceph_ll_rmdir;
int (*p_ceph_ll_statfs)(M *, struct Inode *, struct statvfs *) = ceph_ll_statfs;
int (*p_ceph_ll_readlink)(M *, struct Inode *, char *, size_t, const UserPerm *) =
    ceph_ll_readlink;
int (*p_ceph_ll_symlink)(M *, struct Inode *, const char *, const char *, struct Inode **,
    X *, unsigned, unsigned, const UserPerm *) = ceph_ll_symlink;
"#;

/// Names of the functions declared (`pub fn NAME(`) in a Rust source text.
fn declared_in_rust(source: &str) -> BTreeSet<String> {
    source
        .split("pub fn ")
        .skip(1)
        .filter_map(|rest| {
            rest.split_once('(')
                .map(|(name, _)| name.trim().to_string())
        })
        .collect()
}

/// Names of the functions a pointer `p_NAME` is initialised with in the C text above.
fn checked_in_c(source: &str) -> BTreeSet<String> {
    source
        .split("(*p_")
        .skip(1)
        .filter_map(|rest| rest.split_once(')').map(|(name, _)| name.to_string()))
        .collect()
}

#[test]
fn every_declared_function_has_the_installed_header_signature() {
    let ffi = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/ffi.rs"))
        .expect("read src/ffi.rs");
    let declared = declared_in_rust(&ffi);
    assert!(declared.len() >= 40, "parsed src/ffi.rs: {declared:?}");
    assert_eq!(
        checked_in_c(DECLARED_SIGNATURES),
        declared,
        "the C check must cover exactly the functions src/ffi.rs declares"
    );

    let dir = std::env::temp_dir().join(format!("cephfs-signatures-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("signatures.c");
    std::fs::write(&src, DECLARED_SIGNATURES).expect("write C source");
    let cc = Command::new("cc")
        .args(["-c", "-Werror", "-Wall", "-o"])
        .arg(dir.join("signatures.o"))
        .arg(&src)
        .output()
        .expect("run cc (apt install gcc libcephfs-dev)");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        cc.status.success(),
        "a declaration in src/ffi.rs differs from <cephfs/libcephfs.h> (or libcephfs-dev is \
         missing: scripts/ceph-dev-cluster.sh start installs it): {}",
        String::from_utf8_lossy(&cc.stderr)
    );
}
