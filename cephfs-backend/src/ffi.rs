//! Raw declarations of the libcephfs C API subset this crate uses (Ceph Pacific 16.2.x,
//! Debian bookworm's `libcephfs-dev`: `/usr/include/cephfs/libcephfs.h` and
//! `ceph_ll_client.h`).
//!
//! Hand-written, not generated: builds need neither libclang, the header nor the library.
//! The functions are not linked: `dynload::dynamic_library!` makes the declaration list below
//! a table resolved from `libcephfs.so.2` (package `libcephfs2`) at the first connect, and
//! same-named `unsafe fn`s calling through it, so a daemon that serves a host directory never
//! maps libcephfs and libceph-common. Every declaration was transcribed from the 16.2.15
//! header; `struct ceph_statx`'s layout is pinned by compile-time assertions whose numbers
//! were measured with a C program including the header (`_FILE_OFFSET_BITS=64`, x86_64), and
//! the `header_layout` integration test re-checks them, and each function's signature,
//! against the installed header with the system C compiler. Types from `<sys/statvfs.h>` and
//! `<dirent.h>` come from the `libc` crate (on 64-bit Linux `statvfs`/`dirent` are the
//! 64-bit-offset layouts).
//!
//! Owns: declarations and constants only. Must not: contain code of its own (the loader is
//! `dynload`, the callers' `unsafe` blocks are all in `mount`), or declare functions the crate
//! does not call (each one is resolved at load, so an unused one could only fail a load).

use libc::{c_char, c_int, c_uint, c_void, dev_t, gid_t, mode_t, off_t, size_t, uid_t};

/// `struct ceph_mount_info` (opaque).
#[repr(C)]
pub struct CephMountInfo {
    _private: [u8; 0],
}

/// `struct Inode` (opaque, reference counted by the client).
#[repr(C)]
pub struct Inode {
    _private: [u8; 0],
}

/// `struct Fh` (opaque open file).
#[repr(C)]
pub struct Fh {
    _private: [u8; 0],
}

/// `struct ceph_dir_result` (opaque directory stream).
#[repr(C)]
pub struct CephDirResult {
    _private: [u8; 0],
}

/// `UserPerm` (opaque credentials).
#[repr(C)]
pub struct UserPerm {
    _private: [u8; 0],
}

/// `struct ceph_statx` from `ceph_ll_client.h`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CephStatx {
    pub stx_mask: u32,
    pub stx_blksize: u32,
    pub stx_nlink: u32,
    pub stx_uid: u32,
    pub stx_gid: u32,
    pub stx_mode: u16,
    pub stx_ino: u64,
    pub stx_size: u64,
    pub stx_blocks: u64,
    pub stx_dev: dev_t,
    pub stx_rdev: dev_t,
    pub stx_atime: Timespec,
    pub stx_ctime: Timespec,
    pub stx_mtime: Timespec,
    pub stx_btime: Timespec,
    pub stx_version: u64,
}

/// `struct timespec` (x86_64 / aarch64 glibc layout: two 64-bit fields).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timespec {
    pub tv_sec: i64,
    pub tv_nsec: i64,
}

// Layout measured from the installed header (see module docs).
const _: () = {
    assert!(std::mem::size_of::<CephStatx>() == 136);
    assert!(std::mem::align_of::<CephStatx>() == 8);
    assert!(std::mem::offset_of!(CephStatx, stx_mode) == 20);
    assert!(std::mem::offset_of!(CephStatx, stx_ino) == 24);
    assert!(std::mem::offset_of!(CephStatx, stx_dev) == 48);
    assert!(std::mem::offset_of!(CephStatx, stx_rdev) == 56);
    assert!(std::mem::offset_of!(CephStatx, stx_atime) == 64);
    assert!(std::mem::offset_of!(CephStatx, stx_ctime) == 80);
    assert!(std::mem::offset_of!(CephStatx, stx_mtime) == 96);
    assert!(std::mem::offset_of!(CephStatx, stx_btime) == 112);
    assert!(std::mem::offset_of!(CephStatx, stx_version) == 128);
    assert!(std::mem::size_of::<libc::dirent>() == 280);
    assert!(std::mem::size_of::<libc::statvfs>() == 112);
};

pub const CEPH_STATX_BASIC_STATS: c_uint = 0x7ff;
pub const CEPH_STATX_SIZE: c_uint = 0x200;
/// `ceph_ll_getattr` flag: answer from the client's cache, never ask the MDS.
pub const AT_STATX_DONT_SYNC: c_uint = 0x4000;

pub const CEPH_SETATTR_MODE: c_int = 1 << 0;
pub const CEPH_SETATTR_UID: c_int = 1 << 1;
pub const CEPH_SETATTR_GID: c_int = 1 << 2;
pub const CEPH_SETATTR_MTIME: c_int = 1 << 3;
pub const CEPH_SETATTR_ATIME: c_int = 1 << 4;
pub const CEPH_SETATTR_SIZE: c_int = 1 << 5;
pub const CEPH_SETATTR_CTIME: c_int = 1 << 6;
pub const CEPH_SETATTR_MTIME_NOW: c_int = 1 << 7;
pub const CEPH_SETATTR_ATIME_NOW: c_int = 1 << 8;
pub const CEPH_SETATTR_KILL_SGUID: c_int = 1 << 10;

crate::dynload::dynamic_library! {
    /// libcephfs, opened at the first `CephMount::connect` (or `crate::load_libcephfs`), not
    /// linked: a daemon serving a host directory never maps it.
    pub struct Libcephfs from "libcephfs.so.2", package "libcephfs2";

    pub fn ceph_create(cmount: *mut *mut CephMountInfo, id: *const c_char) -> c_int;
    pub fn ceph_conf_read_file(cmount: *mut CephMountInfo, path_list: *const c_char) -> c_int;
    pub fn ceph_conf_set(
        cmount: *mut CephMountInfo,
        option: *const c_char,
        value: *const c_char,
    ) -> c_int;
    pub fn ceph_conf_get(
        cmount: *mut CephMountInfo,
        option: *const c_char,
        buf: *mut c_char,
        len: size_t,
    ) -> c_int;
    pub fn ceph_init(cmount: *mut CephMountInfo) -> c_int;
    pub fn ceph_umask(cmount: *mut CephMountInfo, mode: mode_t) -> mode_t;
    pub fn ceph_select_filesystem(cmount: *mut CephMountInfo, fs_name: *const c_char) -> c_int;
    pub fn ceph_mount(cmount: *mut CephMountInfo, root: *const c_char) -> c_int;
    pub fn ceph_unmount(cmount: *mut CephMountInfo) -> c_int;
    pub fn ceph_release(cmount: *mut CephMountInfo) -> c_int;

    pub fn ceph_userperm_new(
        uid: uid_t,
        gid: gid_t,
        ngids: c_int,
        gidlist: *mut gid_t,
    ) -> *mut UserPerm;
    pub fn ceph_userperm_destroy(perm: *mut UserPerm);
    pub fn ceph_mount_perms(cmount: *mut CephMountInfo) -> *mut UserPerm;

    pub fn ceph_ll_lookup_root(cmount: *mut CephMountInfo, parent: *mut *mut Inode) -> c_int;
    pub fn ceph_ll_lookup(
        cmount: *mut CephMountInfo,
        parent: *mut Inode,
        name: *const c_char,
        out: *mut *mut Inode,
        stx: *mut CephStatx,
        want: c_uint,
        flags: c_uint,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_put(cmount: *mut CephMountInfo, inode: *mut Inode) -> c_int;
    pub fn ceph_ll_getattr(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        stx: *mut CephStatx,
        want: c_uint,
        flags: c_uint,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_setattr(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        stx: *mut CephStatx,
        mask: c_int,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_open(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        flags: c_int,
        fh: *mut *mut Fh,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_lseek(
        cmount: *mut CephMountInfo,
        fh: *mut Fh,
        offset: off_t,
        whence: c_int,
    ) -> off_t;
    pub fn ceph_ll_read(
        cmount: *mut CephMountInfo,
        fh: *mut Fh,
        off: i64,
        len: u64,
        buf: *mut c_char,
    ) -> c_int;
    pub fn ceph_ll_write(
        cmount: *mut CephMountInfo,
        fh: *mut Fh,
        off: i64,
        len: u64,
        data: *const c_char,
    ) -> c_int;
    pub fn ceph_ll_fsync(cmount: *mut CephMountInfo, fh: *mut Fh, syncdataonly: c_int) -> c_int;
    pub fn ceph_sync_fs(cmount: *mut CephMountInfo) -> c_int;
    pub fn ceph_ll_fallocate(
        cmount: *mut CephMountInfo,
        fh: *mut Fh,
        mode: c_int,
        offset: i64,
        length: i64,
    ) -> c_int;
    pub fn ceph_ll_close(cmount: *mut CephMountInfo, fh: *mut Fh) -> c_int;

    pub fn ceph_ll_getxattr(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        name: *const c_char,
        value: *mut c_void,
        size: size_t,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_setxattr(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        name: *const c_char,
        value: *const c_void,
        size: size_t,
        flags: c_int,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_listxattr(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        list: *mut c_char,
        buf_size: size_t,
        list_size: *mut size_t,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_removexattr(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        name: *const c_char,
        perms: *const UserPerm,
    ) -> c_int;

    pub fn ceph_ll_create(
        cmount: *mut CephMountInfo,
        parent: *mut Inode,
        name: *const c_char,
        mode: mode_t,
        oflags: c_int,
        outp: *mut *mut Inode,
        fhp: *mut *mut Fh,
        stx: *mut CephStatx,
        want: c_uint,
        lflags: c_uint,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_mknod(
        cmount: *mut CephMountInfo,
        parent: *mut Inode,
        name: *const c_char,
        mode: mode_t,
        rdev: dev_t,
        out: *mut *mut Inode,
        stx: *mut CephStatx,
        want: c_uint,
        flags: c_uint,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_mkdir(
        cmount: *mut CephMountInfo,
        parent: *mut Inode,
        name: *const c_char,
        mode: mode_t,
        out: *mut *mut Inode,
        stx: *mut CephStatx,
        want: c_uint,
        flags: c_uint,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_link(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        newparent: *mut Inode,
        name: *const c_char,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_opendir(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        dirpp: *mut *mut CephDirResult,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_releasedir(cmount: *mut CephMountInfo, dir: *mut CephDirResult) -> c_int;
    pub fn ceph_readdirplus_r(
        cmount: *mut CephMountInfo,
        dirp: *mut CephDirResult,
        de: *mut libc::dirent,
        stx: *mut CephStatx,
        want: c_uint,
        flags: c_uint,
        out: *mut *mut Inode,
    ) -> c_int;
    pub fn ceph_telldir(cmount: *mut CephMountInfo, dirp: *mut CephDirResult) -> i64;
    pub fn ceph_seekdir(cmount: *mut CephMountInfo, dirp: *mut CephDirResult, offset: i64);
    pub fn ceph_ll_rename(
        cmount: *mut CephMountInfo,
        parent: *mut Inode,
        name: *const c_char,
        newparent: *mut Inode,
        newname: *const c_char,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_unlink(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        name: *const c_char,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_rmdir(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        name: *const c_char,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_statfs(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        stbuf: *mut libc::statvfs,
    ) -> c_int;
    pub fn ceph_ll_readlink(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        buf: *mut c_char,
        bufsize: size_t,
        perms: *const UserPerm,
    ) -> c_int;
    pub fn ceph_ll_symlink(
        cmount: *mut CephMountInfo,
        inode: *mut Inode,
        name: *const c_char,
        value: *const c_char,
        out: *mut *mut Inode,
        stx: *mut CephStatx,
        want: c_uint,
        flags: c_uint,
        perms: *const UserPerm,
    ) -> c_int;
}
