//! A small safe librados client: connect as one cephx identity, send monitor commands, and
//! read/write/list/remove whole objects in one pool namespace.
//!
//! Owns the lifetime rules of the librados handles it wraps: [`Rados`] (a connected
//! `rados_t`, shut down when the last clone and the last [`IoCtx`] made from it are gone) and
//! [`IoCtx`] (a `rados_ioctx_t` bound to one pool and one namespace, destroyed on drop), and
//! turns every failure into a [`RadosError`] that names the step, the identity or the
//! object. Monitor command output is copied by its length, never read as a C string.
//!
//! Must not: interpret what is stored (callers own their object formats), keep state between
//! calls beyond the handles, or be used across `fork` (librados runs threads: connect in the
//! process that uses the handle, after any fork).
//!
//! ```no_run
//! use std::time::Duration;
//! use cephfs_backend::rados::Rados;
//! # fn main() -> Result<(), cephfs_backend::rados::RadosError> {
//! let rados = Rados::connect(
//!     "/etc/ceph/ceph.conf".as_ref(),
//!     "admin",
//!     "/etc/ceph/ceph.client.admin.keyring".as_ref(),
//!     Duration::from_secs(10),
//! )?;
//! let reply = rados.mon_command(r#"{"prefix": "osd pool ls", "format": "json"}"#, b"")?;
//! let io = rados.ioctx("accounting", "acme")?;
//! io.write_full("object", b"bytes")?;
//! assert_eq!(io.read("object")?, b"bytes");
//! # let _ = reply; Ok(()) }
//! ```

use std::ffi::{CStr, CString};
use std::io;
use std::path::{Path, PathBuf};
use std::ptr::{self, NonNull};
use std::sync::Arc;
use std::time::Duration;

use libc::{c_char, c_int, c_void};

use crate::error::{check, errno, LibraryError};
use crate::rados_ffi as ffi;

/// Loads librados (`librados.so.2`, with libceph-common and its C++ dependencies) into the
/// process, once: later calls return at once. [`Rados::connect`] calls it first; call it
/// earlier only where the library would be out of reach at connect (a sandbox). Starts no
/// thread.
///
/// # Errors
///
/// [`RadosError::Library`] naming the library and the package to install when it (or a
/// library it needs) is missing, or a function this module calls is not in it.
pub fn load_librados() -> Result<(), RadosError> {
    ffi::Librados::load()?;
    Ok(())
}

/// Largest object [`IoCtx::read`] returns; larger ones fail with `EFBIG`.
pub const MAX_READ: usize = 64 << 20;

/// A failed librados step, with what it was doing and for whom.
#[derive(Debug, thiserror::Error)]
pub enum RadosError {
    #[error("RADOS access needs librados: {0}")]
    Library(#[from] LibraryError),
    #[error("ceph config file {path:?}: {source}")]
    ConfFile { path: PathBuf, source: io::Error },
    #[error("ceph keyring {path:?}: {source}")]
    Keyring { path: PathBuf, source: io::Error },
    #[error("{what} {value:?} contains a NUL byte")]
    NulByte { what: &'static str, value: String },
    #[error("creating a librados handle for client.{id}: {source}")]
    Create { id: String, source: io::Error },
    #[error("reading ceph config {path:?}: {source}")]
    ReadConf { path: PathBuf, source: io::Error },
    #[error("setting ceph option {option}: {source}")]
    SetOption { option: String, source: io::Error },
    #[error(
        "connecting to the ceph cluster as client.{id} (conf {conf:?}, keyring {keyring:?}): \
         {source}{hint}"
    )]
    Connect {
        id: String,
        conf: PathBuf,
        keyring: PathBuf,
        source: io::Error,
        /// What the errno usually means here (empty when nothing more is known).
        hint: String,
    },
    #[error("monitor command {command}: {source}{}", status_suffix(.status))]
    MonCommand {
        command: String,
        /// The monitors' status text (`outs`), often the reason of a failure.
        status: String,
        source: io::Error,
    },
    #[error("pool {pool:?}: {source}{}", pool_hint(.source))]
    Pool { pool: String, source: io::Error },
    #[error("{op} of object {object:?} in pool {pool:?} namespace {namespace:?}: {source}")]
    Object {
        op: &'static str,
        pool: String,
        namespace: String,
        object: String,
        source: io::Error,
    },
    #[error("listing pool {pool:?} namespace {namespace:?}: {source}")]
    List {
        pool: String,
        namespace: String,
        source: io::Error,
    },
}

fn status_suffix(status: &str) -> String {
    match status.trim() {
        "" => String::new(),
        s => format!(" ({s})"),
    }
}

fn pool_hint(source: &io::Error) -> &'static str {
    match source.raw_os_error() {
        Some(libc::ENOENT) => " (no such pool)",
        _ => "",
    }
}

impl RadosError {
    /// The errno behind the failure, if librados or the system gave one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            RadosError::NulByte { .. } | RadosError::Library(_) => None,
            RadosError::ConfFile { source, .. }
            | RadosError::Keyring { source, .. }
            | RadosError::Create { source, .. }
            | RadosError::ReadConf { source, .. }
            | RadosError::SetOption { source, .. }
            | RadosError::Connect { source, .. }
            | RadosError::MonCommand { source, .. }
            | RadosError::Pool { source, .. }
            | RadosError::Object { source, .. }
            | RadosError::List { source, .. } => source.raw_os_error(),
        }
    }

    /// Whether the object (or pool) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno() == Some(libc::ENOENT)
    }
}

fn cstring(what: &'static str, value: &str) -> Result<CString, RadosError> {
    CString::new(value).map_err(|_| RadosError::NulByte {
        what,
        value: value.to_string(),
    })
}

fn conf_set(h: *mut c_void, option: &str, value: &str) -> Result<(), RadosError> {
    let c_opt = cstring("ceph option", option)?;
    let c_val = cstring("ceph option value", value)?;
    // SAFETY: `h` is a live handle; both strings NUL-terminated, copied by librados.
    let ret = unsafe { ffi::rados_conf_set(h, c_opt.as_ptr(), c_val.as_ptr()) };
    check(ret).map_err(|source| RadosError::SetOption {
        option: option.to_string(),
        source,
    })?;
    Ok(())
}

/// The value of `option` in the handle's configuration.
fn conf_get(h: *mut c_void, option: &str) -> io::Result<String> {
    crate::client_conf::read_value(option, |o, buf| {
        // SAFETY: `h` is a live handle, `o` NUL-terminated, and `buf` has `buf.len()` bytes
        // that librados fills with a NUL-terminated value (or reports ENAMETOOLONG).
        unsafe { ffi::rados_conf_get(h, o.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    })
}

/// One `rados_t`, shut down when dropped.
struct Cluster {
    handle: NonNull<c_void>,
}

// SAFETY: a connected `rados_t` (librados' RadosClient) is built to be used from many
// threads at once; it is only released in `Drop`, when no other reference exists.
unsafe impl Send for Cluster {}
// SAFETY: as above: concurrent calls through `&Cluster` are what librados supports.
unsafe impl Sync for Cluster {}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SAFETY: the handle came from rados_create; every IoCtx holds an Arc of this
        // Cluster, so none is left, and nothing else uses the handle after this call.
        unsafe { ffi::rados_shutdown(self.handle.as_ptr()) }
    }
}

/// A connected cluster handle. Clones share the connection.
#[derive(Clone)]
pub struct Rados {
    cluster: Arc<Cluster>,
}

impl std::fmt::Debug for Rados {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rados").finish_non_exhaustive()
    }
}

/// What a monitor command answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MonReply {
    /// The output buffer (`outbuf`), byte for byte: JSON, plain text or binary, as asked.
    pub output: Vec<u8>,
    /// The status text (`outs`), e.g. `pool 'x' created`.
    pub status: String,
}

/// Copies and frees a librados-allocated output buffer.
///
/// # Safety
///
/// `buf` is NULL or a buffer librados allocated with `len` readable bytes for the caller,
/// which nothing else refers to or frees.
unsafe fn take_buffer(buf: *mut c_char, len: usize) -> Vec<u8> {
    if buf.is_null() {
        return Vec::new();
    }
    // SAFETY: per this function's contract, `len` bytes are readable (the buffer is not
    // NUL-terminated: it is read by length only).
    let bytes = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) }.to_vec();
    // SAFETY: the buffer came from librados and is freed once, here.
    unsafe { ffi::rados_buffer_free(buf) };
    bytes
}

impl Rados {
    /// Connects as `client.<id>` with the monitors of `conf` and the key in `keyring`.
    /// `timeout` bounds the connection and, afterwards, every monitor and OSD operation
    /// (they fail with `ETIMEDOUT` instead of waiting for an unreachable cluster).
    pub fn connect(
        conf: &Path,
        id: &str,
        keyring: &Path,
        timeout: Duration,
    ) -> Result<Rados, RadosError> {
        load_librados()?;
        // librados' own messages for a missing file are vague: check both first.
        std::fs::File::open(conf).map_err(|source| RadosError::ConfFile {
            path: conf.to_path_buf(),
            source,
        })?;
        std::fs::File::open(keyring).map_err(|source| RadosError::Keyring {
            path: keyring.to_path_buf(),
            source,
        })?;
        let utf8 = |path: &Path, wrap: fn(PathBuf, io::Error) -> RadosError| {
            path.to_str().map(str::to_string).ok_or_else(|| {
                wrap(
                    path.to_path_buf(),
                    io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"),
                )
            })
        };
        let conf_s = utf8(conf, |path, source| RadosError::ConfFile { path, source })?;
        let keyring_s = utf8(keyring, |path, source| RadosError::Keyring { path, source })?;
        let c_id = cstring("ceph id", id)?;
        let c_conf = cstring("ceph config path", &conf_s)?;

        let mut raw: ffi::RadosT = ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; `c_id` is NUL-terminated and outlives the
        // call (librados copies it).
        let ret = unsafe { ffi::rados_create(&mut raw, c_id.as_ptr()) };
        check(ret).map_err(|source| RadosError::Create {
            id: id.to_string(),
            source,
        })?;
        // From here the handle is shut down on every path (Cluster's Drop).
        let cluster = Cluster {
            handle: NonNull::new(raw).ok_or_else(|| RadosError::Create {
                id: id.to_string(),
                source: io::Error::from_raw_os_error(libc::ENOMEM),
            })?,
        };
        let h = cluster.handle.as_ptr();
        // SAFETY: `h` is a live, unconnected handle; `c_conf` is NUL-terminated.
        let ret = unsafe { ffi::rados_conf_read_file(h, c_conf.as_ptr()) };
        check(ret).map_err(|source| RadosError::ReadConf {
            path: conf.to_path_buf(),
            source,
        })?;
        let secs = timeout.as_secs().max(1).to_string();
        let settings: [(&str, &str); 8] = [
            ("keyring", &keyring_s),
            ("client_mount_timeout", &secs),
            ("rados_mon_op_timeout", &secs),
            ("rados_osd_op_timeout", &secs),
            // Several clients of one id may run on a host: no admin socket clashes.
            ("admin_socket", ""),
            // Failures are reported by the caller, as one line: no librados log lines.
            ("log_file", ""),
            ("err_to_stderr", "false"),
            ("log_to_stderr", "false"),
        ];
        for (option, value) in settings {
            conf_set(h, option, value)?;
        }
        crate::client_conf::quiet_unless_routed(
            |option| conf_get(h, option),
            |option, value| conf_set(h, option, value),
            |e| {
                matches!(e, RadosError::SetOption { source, .. }
                    if source.raw_os_error() == Some(libc::ENOENT))
            },
        )?;
        // SAFETY: live handle with its configuration set.
        let ret = unsafe { ffi::rados_connect(h) };
        if let Err(source) = check(ret) {
            let hint = match -ret {
                libc::EACCES | libc::EPERM => {
                    " (the monitors refused this key: wrong key, or no such user)".to_string()
                }
                libc::ETIMEDOUT => format!(
                    " (no monitor answered within {secs} s: is the cluster up and mon_host \
                     right?)"
                ),
                _ => String::new(),
            };
            return Err(RadosError::Connect {
                id: id.to_string(),
                conf: conf.to_path_buf(),
                keyring: keyring.to_path_buf(),
                source,
                hint,
            });
        }
        Ok(Rados {
            cluster: Arc::new(cluster),
        })
    }

    /// The value of a configuration option as this client runs with it.
    pub fn conf_value(&self, option: &str) -> io::Result<String> {
        conf_get(self.cluster.handle.as_ptr(), option)
    }

    /// Sends one monitor command: `command` is its JSON (e.g. `{"prefix": "osd pool ls",
    /// "format": "json"}`), `input` its bulk input (empty for most commands). A negative
    /// answer is an error carrying the monitors' status text.
    pub fn mon_command(&self, command: &str, input: &[u8]) -> Result<MonReply, RadosError> {
        let c_cmd = cstring("monitor command", command)?;
        let mut cmds = [c_cmd.as_ptr()];
        let mut outbuf: *mut c_char = ptr::null_mut();
        let mut outbuf_len: usize = 0;
        let mut outs: *mut c_char = ptr::null_mut();
        let mut outs_len: usize = 0;
        // SAFETY: the handle is connected; `cmds` holds one NUL-terminated string that
        // outlives the call; `input` is valid for its length; the four out-pointers are valid
        // and receive librados-allocated buffers (or NULL), taken over just below.
        let ret = unsafe {
            ffi::rados_mon_command(
                self.cluster.handle.as_ptr(),
                cmds.as_mut_ptr(),
                1,
                input.as_ptr().cast::<c_char>(),
                input.len(),
                &mut outbuf,
                &mut outbuf_len,
                &mut outs,
                &mut outs_len,
            )
        };
        // SAFETY: librados filled each pointer with NULL or a buffer of the length beside it,
        // allocated for this call; each is taken (and freed) once.
        let (output, status) =
            unsafe { (take_buffer(outbuf, outbuf_len), take_buffer(outs, outs_len)) };
        let status = String::from_utf8_lossy(&status).into_owned();
        match check(ret) {
            Ok(_) => Ok(MonReply { output, status }),
            Err(source) => Err(RadosError::MonCommand {
                command: command.chars().take(200).collect(),
                status,
                source,
            }),
        }
    }

    /// An I/O context on `pool`, confined to `namespace` (`""`: the default namespace).
    pub fn ioctx(&self, pool: &str, namespace: &str) -> Result<IoCtx, RadosError> {
        let c_pool = cstring("pool name", pool)?;
        let c_ns = cstring("namespace", namespace)?;
        let mut raw: ffi::RadosIoctxT = ptr::null_mut();
        // SAFETY: connected handle; NUL-terminated pool name; valid out-pointer.
        let ret = unsafe {
            ffi::rados_ioctx_create(self.cluster.handle.as_ptr(), c_pool.as_ptr(), &mut raw)
        };
        let pool_err = |source| RadosError::Pool {
            pool: pool.to_string(),
            source,
        };
        check(ret).map_err(pool_err)?;
        let io = NonNull::new(raw)
            .ok_or_else(|| pool_err(io::Error::from_raw_os_error(libc::ENOMEM)))?;
        // SAFETY: `io` was just created and is not shared yet; librados copies the name.
        unsafe { ffi::rados_ioctx_set_namespace(io.as_ptr(), c_ns.as_ptr()) };
        Ok(IoCtx {
            io,
            pool: pool.to_string(),
            namespace: namespace.to_string(),
            _cluster: self.cluster.clone(),
        })
    }
}

/// Objects of one pool namespace. Keeps its cluster connection alive.
pub struct IoCtx {
    io: NonNull<c_void>,
    pool: String,
    namespace: String,
    // Dropped after `io` is destroyed (Drop runs before the fields are dropped).
    _cluster: Arc<Cluster>,
}

// SAFETY: the ioctx's namespace is fixed at creation and nothing here changes its settings;
// librados allows using an ioctx from any thread. It is not `Sync` (no shared use needed).
unsafe impl Send for IoCtx {}

impl std::fmt::Debug for IoCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoCtx")
            .field("pool", &self.pool)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for IoCtx {
    fn drop(&mut self) {
        // SAFETY: `io` came from rados_ioctx_create, is destroyed once, here, and the
        // cluster it belongs to is still alive (held by `_cluster`).
        unsafe { ffi::rados_ioctx_destroy(self.io.as_ptr()) }
    }
}

/// A `rados_write_op_t`, released on drop.
struct WriteOp(NonNull<c_void>);

impl WriteOp {
    fn new() -> io::Result<WriteOp> {
        // SAFETY: no arguments; a NULL return is an allocation failure.
        let raw = unsafe { ffi::rados_create_write_op() };
        NonNull::new(raw)
            .map(WriteOp)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
    }
}

impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: created by rados_create_write_op and released once, here.
        unsafe { ffi::rados_release_write_op(self.0.as_ptr()) }
    }
}

impl IoCtx {
    /// The pool this context writes to.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The namespace this context is confined to.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn object_err<'a>(
        &'a self,
        op: &'static str,
        object: &'a str,
    ) -> impl Fn(io::Error) -> RadosError + 'a {
        move |source| RadosError::Object {
            op,
            pool: self.pool.clone(),
            namespace: self.namespace.clone(),
            object: object.to_string(),
            source,
        }
    }

    /// Replaces `object`'s content with `data` atomically (creating it).
    pub fn write_full(&self, object: &str, data: &[u8]) -> Result<(), RadosError> {
        let oid = cstring("object name", object)?;
        // SAFETY: live ioctx; NUL-terminated name; `data` valid for its length.
        let ret = unsafe {
            ffi::rados_write_full(
                self.io.as_ptr(),
                oid.as_ptr(),
                data.as_ptr().cast::<c_char>(),
                data.len(),
            )
        };
        check(ret)
            .map(drop)
            .map_err(self.object_err("write", object))
    }

    /// Replaces `object`'s content with `data` only if `version` is greater than the one it
    /// holds, atomically: the object's xattr `version_xattr` keeps the version (20 decimal
    /// digits, so the OSD's string comparison orders it like the number). Returns `true`
    /// when written, `false` when the object already holds `version` or a later one. Two
    /// writers racing on one object can therefore never move it backwards.
    pub fn write_full_if_newer(
        &self,
        object: &str,
        version_xattr: &str,
        version: u64,
        data: &[u8],
    ) -> Result<bool, RadosError> {
        let oid = cstring("object name", object)?;
        let name = cstring("xattr name", version_xattr)?;
        let value = format!("{version:020}");
        let err = self.object_err("guarded write", object);
        // Three rounds cover a racing creator (EEXIST sends us back to the guarded update).
        for _ in 0..3 {
            // Update: only if the stored version is lower (ENOENT when there is no object).
            let op = WriteOp::new().map_err(&err)?;
            // SAFETY: `op` is a fresh write op; `name` is NUL-terminated and `value` valid
            // for its length (librados copies both).
            unsafe {
                ffi::rados_write_op_cmpxattr(
                    op.0.as_ptr(),
                    name.as_ptr(),
                    ffi::LIBRADOS_CMPXATTR_OP_GT,
                    value.as_ptr().cast::<c_char>(),
                    value.len(),
                );
            }
            let ret = self.write_versioned(op, &oid, &name, &value, data);
            match -ret {
                0 => return Ok(true),
                libc::ECANCELED => return Ok(false),
                libc::ENOENT => {}
                _ => return Err(err(errno(ret.into()))),
            }
            // Create: only if nobody created it meanwhile.
            let op = WriteOp::new().map_err(&err)?;
            // SAFETY: `op` is a fresh write op; `category` may be NULL (deprecated, ignored).
            unsafe {
                ffi::rados_write_op_create(
                    op.0.as_ptr(),
                    ffi::LIBRADOS_CREATE_EXCLUSIVE,
                    ptr::null(),
                );
            }
            let ret = self.write_versioned(op, &oid, &name, &value, data);
            match -ret {
                0 => return Ok(true),
                libc::EEXIST => continue,
                _ => return Err(err(errno(ret.into()))),
            }
        }
        Err(err(io::Error::from_raw_os_error(libc::EBUSY)))
    }

    /// Completes `op` (its guard already added) with "replace the content with `data` and set
    /// xattr `name` to `value`", runs it on `oid` and returns librados' result.
    fn write_versioned(
        &self,
        op: WriteOp,
        oid: &CStr,
        name: &CStr,
        value: &str,
        data: &[u8],
    ) -> c_int {
        // SAFETY: `op` is a live write op; every buffer is valid for its length and outlives
        // the operate call, which copies what it needs.
        unsafe {
            ffi::rados_write_op_write_full(op.0.as_ptr(), data.as_ptr().cast(), data.len());
            ffi::rados_write_op_setxattr(
                op.0.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast::<c_char>(),
                value.len(),
            );
            ffi::rados_write_op_operate(
                op.0.as_ptr(),
                self.io.as_ptr(),
                oid.as_ptr(),
                ptr::null_mut(),
                ffi::LIBRADOS_OPERATION_NOFLAG,
            )
        }
    }

    /// The whole content of `object` (at most [`MAX_READ`] bytes), read in one operation
    /// when it fits the first buffer. A missing object is an error with
    /// [`RadosError::is_not_found`].
    pub fn read(&self, object: &str) -> Result<Vec<u8>, RadosError> {
        let oid = cstring("object name", object)?;
        let err = self.object_err("read", object);
        let mut capacity = 64 << 10;
        loop {
            let mut buf = vec![0u8; capacity];
            // SAFETY: live ioctx; NUL-terminated name; `buf` is writable for `capacity`
            // bytes, which is at most MAX_READ + 1 and so fits the int librados returns.
            let ret = unsafe {
                ffi::rados_read(
                    self.io.as_ptr(),
                    oid.as_ptr(),
                    buf.as_mut_ptr().cast::<c_char>(),
                    capacity,
                    0,
                )
            };
            let n = usize::try_from(check(ret).map_err(&err)?).unwrap_or(0);
            if n < capacity {
                buf.truncate(n);
                return Ok(buf);
            }
            if capacity > MAX_READ {
                return Err(err(io::Error::from_raw_os_error(libc::EFBIG)));
            }
            // Full buffer: the object may be larger; read it again, whole, into twice as much.
            capacity = (capacity * 2).min(MAX_READ + 1);
        }
    }

    /// Deletes `object`. A missing object is an error with [`RadosError::is_not_found`].
    pub fn remove(&self, object: &str) -> Result<(), RadosError> {
        let oid = cstring("object name", object)?;
        // SAFETY: live ioctx; NUL-terminated name.
        let ret = unsafe { ffi::rados_remove(self.io.as_ptr(), oid.as_ptr()) };
        check(ret)
            .map(drop)
            .map_err(self.object_err("remove", object))
    }

    /// The names of the objects in this context's namespace (and only there), in the order
    /// the OSDs list them. Names that are not UTF-8 are returned lossily.
    pub fn list(&self) -> Result<Vec<String>, RadosError> {
        let err = |source| RadosError::List {
            pool: self.pool.clone(),
            namespace: self.namespace.clone(),
            source,
        };
        let mut raw: ffi::RadosListCtxT = ptr::null_mut();
        // SAFETY: live ioctx; valid out-pointer.
        let ret = unsafe { ffi::rados_nobjects_list_open(self.io.as_ptr(), &mut raw) };
        check(ret).map_err(err)?;
        struct Listing(ffi::RadosListCtxT);
        impl Drop for Listing {
            fn drop(&mut self) {
                // SAFETY: opened by rados_nobjects_list_open above, closed once, here.
                unsafe { ffi::rados_nobjects_list_close(self.0) }
            }
        }
        let listing = Listing(raw);
        let mut names = Vec::new();
        loop {
            let mut entry: *const c_char = ptr::null();
            let mut entry_len: usize = 0;
            // SAFETY: open listing; `entry`/`entry_len` are valid out-pointers; key and
            // namespace are not asked for (NULL).
            let ret = unsafe {
                ffi::rados_nobjects_list_next2(
                    listing.0,
                    &mut entry,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    &mut entry_len,
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            };
            if ret == -libc::ENOENT {
                return Ok(names);
            }
            check(ret).map_err(err)?;
            if entry.is_null() {
                continue;
            }
            // SAFETY: librados points `entry` at `entry_len` bytes valid until the next
            // listing call; they are copied before that.
            let bytes = unsafe { std::slice::from_raw_parts(entry.cast::<u8>(), entry_len) };
            names.push(String::from_utf8_lossy(bytes).into_owned());
        }
    }
}
