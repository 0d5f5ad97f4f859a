//! Raw declarations of the librados C API subset `rados` uses (Ceph Pacific 16.2.x, Debian
//! bookworm's `librados-dev`: `/usr/include/rados/librados.h`).
//!
//! Hand-written, not generated, like `ffi` for libcephfs, and not linked either: the
//! declaration list below becomes, through `dynload::dynamic_library!`, a table resolved
//! from `librados.so.2` (package `librados2`) at the first `Rados::connect`, and same-named
//! `unsafe fn`s calling through it. Every declaration was transcribed from the 16.2.15
//! header; `tests/rados.rs` (`declarations_match_the_installed_header`) compiles a C program
//! that assigns each function to a pointer of the type declared here (an error on any
//! mismatch) and prints the constants, compared with the values below. All handles are opaque
//! `void *` in the header, so there is no struct layout to pin.
//!
//! Owns: declarations and constants only. Must not: contain code of its own (the loader is
//! `dynload`, the callers' `unsafe` blocks all live in `rados`), or declare functions the
//! crate does not call (each one is resolved at load).

use libc::{c_char, c_int, c_void, size_t, time_t};

/// `rados_t`: a cluster handle.
pub type RadosT = *mut c_void;
/// `rados_ioctx_t`: an I/O context (one pool, one namespace).
pub type RadosIoctxT = *mut c_void;
/// `rados_list_ctx_t`: an object listing in progress.
pub type RadosListCtxT = *mut c_void;
/// `rados_write_op_t`: a compound write operation being built.
pub type RadosWriteOpT = *mut c_void;

/// `LIBRADOS_CREATE_EXCLUSIVE`: `rados_write_op_create` fails with `-EEXIST` on an existing
/// object.
pub const LIBRADOS_CREATE_EXCLUSIVE: c_int = 1;
/// `LIBRADOS_CMPXATTR_OP_GT`: the comparison holds when the value given is greater than the
/// stored one (string comparison through the C API).
pub const LIBRADOS_CMPXATTR_OP_GT: u8 = 3;
/// `LIBRADOS_OPERATION_NOFLAG`.
pub const LIBRADOS_OPERATION_NOFLAG: c_int = 0;

crate::dynload::dynamic_library! {
    /// librados, opened at the first `Rados::connect` (or `rados::load_librados`), not
    /// linked.
    pub struct Librados from "librados.so.2", package "librados2";

    pub fn rados_create(cluster: *mut RadosT, id: *const c_char) -> c_int;
    pub fn rados_conf_read_file(cluster: RadosT, path: *const c_char) -> c_int;
    pub fn rados_conf_set(cluster: RadosT, option: *const c_char, value: *const c_char) -> c_int;
    pub fn rados_conf_get(cluster: RadosT, option: *const c_char, buf: *mut c_char, len: size_t)
        -> c_int;
    pub fn rados_connect(cluster: RadosT) -> c_int;
    pub fn rados_shutdown(cluster: RadosT);

    pub fn rados_mon_command(
        cluster: RadosT,
        cmd: *mut *const c_char,
        cmdlen: size_t,
        inbuf: *const c_char,
        inbuflen: size_t,
        outbuf: *mut *mut c_char,
        outbuflen: *mut size_t,
        outs: *mut *mut c_char,
        outslen: *mut size_t,
    ) -> c_int;
    pub fn rados_buffer_free(buf: *mut c_char);

    pub fn rados_ioctx_create(
        cluster: RadosT,
        pool_name: *const c_char,
        ioctx: *mut RadosIoctxT,
    ) -> c_int;
    pub fn rados_ioctx_destroy(io: RadosIoctxT);
    pub fn rados_ioctx_set_namespace(io: RadosIoctxT, nspace: *const c_char);

    pub fn rados_write_full(
        io: RadosIoctxT,
        oid: *const c_char,
        buf: *const c_char,
        len: size_t,
    ) -> c_int;
    pub fn rados_read(
        io: RadosIoctxT,
        oid: *const c_char,
        buf: *mut c_char,
        len: size_t,
        off: u64,
    ) -> c_int;
    pub fn rados_remove(io: RadosIoctxT, oid: *const c_char) -> c_int;

    pub fn rados_nobjects_list_open(io: RadosIoctxT, ctx: *mut RadosListCtxT) -> c_int;
    pub fn rados_nobjects_list_next2(
        ctx: RadosListCtxT,
        entry: *mut *const c_char,
        key: *mut *const c_char,
        nspace: *mut *const c_char,
        entry_size: *mut size_t,
        key_size: *mut size_t,
        nspace_size: *mut size_t,
    ) -> c_int;
    pub fn rados_nobjects_list_close(ctx: RadosListCtxT);

    pub fn rados_create_write_op() -> RadosWriteOpT;
    pub fn rados_release_write_op(write_op: RadosWriteOpT);
    pub fn rados_write_op_create(
        write_op: RadosWriteOpT,
        exclusive: c_int,
        category: *const c_char,
    );
    pub fn rados_write_op_cmpxattr(
        write_op: RadosWriteOpT,
        name: *const c_char,
        comparison_operator: u8,
        value: *const c_char,
        value_len: size_t,
    );
    pub fn rados_write_op_setxattr(
        write_op: RadosWriteOpT,
        name: *const c_char,
        value: *const c_char,
        value_len: size_t,
    );
    pub fn rados_write_op_write_full(write_op: RadosWriteOpT, buffer: *const c_char, len: size_t);
    pub fn rados_write_op_operate(
        write_op: RadosWriteOpT,
        io: RadosIoctxT,
        oid: *const c_char,
        mtime: *mut time_t,
        flags: c_int,
    ) -> c_int;
}
