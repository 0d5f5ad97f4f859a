//! CephFS backend for virtiofsd-kr: libcephfs bindings and a `fuse_backend_rs` filesystem
//! served straight from a Ceph cluster, with no host mount.
//!
//! Layers, bottom up:
//! - `dynload`: turns a declaration list into a function table loaded with `dlopen` at the
//!   first use, so the Ceph libraries are not linked: a daemon serving a host directory never
//!   maps them;
//! - `ffi`: hand-written declarations of the libcephfs subset used (no code), loaded through
//!   `dynload` by [`load_libcephfs`];
//! - `mount`: the safe wrapper (`CephMount`, `CephInode`, `CephFile`, `CephDir`, `UserPerm`);
//!   with `dynload`, `ffi`, `rados` and `rados_ffi` the only modules allowed `unsafe`;
//! - `client_conf`: reading a Ceph client's conf values, and the log levels every client of
//!   the daemon runs with (quiet unless the conf routes the log out), for `mount` and `rados`;
//! - `inode`: `CephInodeTable`, FUSE node ids and lookup counts;
//! - `deadline`: `DeadlinePool`, the threads that bound every libcephfs call of a request by
//!   `CephConfig::op_timeout` (ETIMEDOUT to the guest while the MDS is gone);
//! - `fs`: `CephFs`, the `FileSystem` implementation the daemon serves;
//! - `rados` (over `rados_ffi`): a small librados client (monitor commands, objects in a
//!   namespace) for volume identities and the accounting sink.
//!
//! The crate owns talking to Ceph for one volume directory as one cephx identity. It must not
//! know about vhost-user, the sandbox or the command line: the daemon builds a `CephConfig`
//! and calls `CephFs::connect` before it offers its socket. `CephMount::connect` (under
//! `CephFs::connect`) and `rados::Rados::connect` load their library themselves; a process
//! that connects where the library is out of reach (a sandbox) calls [`load_libcephfs`] /
//! [`rados::load_librados`] before entering it.

#![deny(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

mod client_conf;
pub mod deadline;
#[allow(unsafe_code)]
mod dynload;
pub mod error;
#[allow(unsafe_code)]
mod ffi;
pub mod fs;
pub mod inode;
#[allow(unsafe_code)]
pub mod mount;
#[allow(unsafe_code)]
pub mod rados;
#[allow(unsafe_code)]
mod rados_ffi;

pub use error::{CephError, LibraryError};
pub use fs::CephFs;
pub use inode::CephInodeTable;
pub use mount::{CephInode, CephMount, UserPerm};

/// Loads libcephfs (`libcephfs.so.2`, with libceph-common and its C++ dependencies) into the
/// process, once: later calls return at once. `CephMount::connect` calls it first; a daemon
/// whose sandbox hides the system libraries calls it before entering the sandbox. Starts no
/// thread (the libraries' initialisers only set up static data), so it may run before a
/// `fork`.
///
/// # Errors
///
/// [`CephError::Library`] naming the library and the package to install when it (or a
/// library it needs) is missing, or a function this crate calls is not in it.
pub fn load_libcephfs() -> Result<(), CephError> {
    ffi::Libcephfs::load()?;
    Ok(())
}

/// How long the guest may cache what the backend tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    /// Attribute validity of replies.
    pub attr_timeout: Duration,
    /// Name (dentry) validity of replies.
    pub entry_timeout: Duration,
    /// Keep the guest's page cache across opens (`FOPEN_KEEP_CACHE`, `FOPEN_CACHE_DIR`).
    pub keep_cache: bool,
    /// Bypass the guest's page cache (`FOPEN_DIRECT_IO`).
    pub direct_io: bool,
}

impl CachePolicy {
    /// `--cache=never`: nothing cached in the guest.
    pub const fn never() -> CachePolicy {
        CachePolicy {
            attr_timeout: Duration::ZERO,
            entry_timeout: Duration::ZERO,
            keep_cache: false,
            direct_io: true,
        }
    }

    /// `--cache=auto`: close-to-open, 1 s attributes (the default).
    pub const fn auto() -> CachePolicy {
        CachePolicy {
            attr_timeout: Duration::from_secs(1),
            entry_timeout: Duration::from_secs(1),
            keep_cache: false,
            direct_io: false,
        }
    }

    /// `--cache=metadata`: metadata for a day, data not kept across opens.
    pub const fn metadata() -> CachePolicy {
        CachePolicy {
            attr_timeout: Duration::from_secs(86400),
            entry_timeout: Duration::from_secs(86400),
            keep_cache: false,
            direct_io: false,
        }
    }

    /// `--cache=always`: everything for a day.
    pub const fn always() -> CachePolicy {
        CachePolicy {
            attr_timeout: Duration::from_secs(86400),
            entry_timeout: Duration::from_secs(86400),
            keep_cache: true,
            direct_io: false,
        }
    }
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy::auto()
    }
}

/// Default of [`CephConfig::op_timeout`].
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom the backend connects.
#[derive(Debug, Clone)]
pub struct CephConfig {
    /// ceph.conf with the monitor addresses (`--ceph-conf`).
    pub conf: PathBuf,
    /// cephx id without `client.` (`--ceph-id`, e.g. `tenant1`).
    pub id: String,
    /// Keyring holding `client.<id>`'s key (`--ceph-keyring`).
    pub keyring: PathBuf,
    /// Absolute path of the volume directory inside CephFS; it becomes the guest's `/`
    /// (`--ceph-root`).
    pub root: String,
    /// CephFS name; `None` for the cluster's default filesystem.
    pub fs_name: Option<String>,
    /// Guest cache timeouts.
    pub cache: CachePolicy,
    /// How long to wait for monitors/MDS before `connect` fails.
    pub mount_timeout: Duration,
    /// Longest a guest request may wait for the cluster (an MDS or OSD that is gone): past
    /// it the request fails with ETIMEDOUT while libcephfs keeps waiting in the background
    /// (on one of `CephFs`' call threads, see `deadline`, or with [`Self::inline_calls`] on
    /// the request's thread, the serving side answering for it). Also the longest dropping
    /// the backend waits for its unmount. `None`: calls run on the request's thread and wait
    /// as long as libcephfs does (forever for a missing MDS).
    pub op_timeout: Option<Duration>,
    /// POSIX ACLs (`--posix-acl`): libcephfs keeps and enforces `system.posix_acl_*`
    /// (`client_acl_type=posix_acl`), new nodes inherit a directory's default ACL, and the
    /// caller's umask comes with each create instead of the mount's.
    pub posix_acl: bool,
    /// With an op timeout: make the calls on the request's own thread, while the daemon
    /// answers any request held past the timeout in the backend's place (see
    /// [`InlineCalls`]); `None`: every call goes to the call threads.
    pub inline_calls: Option<InlineCalls>,
    /// `--allow-direct-io`: a guest's `O_DIRECT` reaches libcephfs, whose reads and writes
    /// on that file then bypass the client's object cacher and wait for the OSDs, as with an
    /// `O_DIRECT` open on ceph-fuse or the kernel client. Otherwise `O_DIRECT` is dropped and
    /// the client caches (reads ahead, buffers writes) as for any open.
    pub honour_o_direct: bool,
}

/// What lets `CephFs` make its calls on the request's thread and still keep the op timeout:
/// the serving side answers a request the backend holds too long with ETIMEDOUT itself (the
/// daemon's device does, through the request's reply gate) and says so here.
#[derive(Clone)]
pub struct InlineCalls {
    /// Requests answered in the backend's place whose call has not returned yet. While
    /// non-zero the cluster is not answering: calls go to the call threads (a fixed number,
    /// each waited for at most the op timeout) instead of tying up more request threads.
    pub answered_running: Arc<AtomicUsize>,
    /// Whether the request the calling thread serves was answered in its place: a call that
    /// returns after that drops its result (an inode reference, an open file) and fails
    /// with ETIMEDOUT, so nothing is registered for a guest that was told it failed.
    pub request_answered: fn() -> bool,
}

impl std::fmt::Debug for InlineCalls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InlineCalls")
            .field("answered_running", &self.answered_running)
            .finish_non_exhaustive()
    }
}

impl CephConfig {
    /// A configuration with the default cache policy, filesystem and a 10 s mount timeout.
    pub fn new(
        conf: impl Into<PathBuf>,
        id: impl Into<String>,
        keyring: impl Into<PathBuf>,
        root: impl Into<String>,
    ) -> CephConfig {
        CephConfig {
            conf: conf.into(),
            id: id.into(),
            keyring: keyring.into(),
            root: root.into(),
            fs_name: None,
            cache: CachePolicy::default(),
            mount_timeout: Duration::from_secs(10),
            op_timeout: Some(DEFAULT_OP_TIMEOUT),
            posix_acl: false,
            inline_calls: None,
            honour_o_direct: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use fuse_backend_rs::api::server::Server;

    use super::*;

    /// The daemon serves the backend from several threads through `Server`.
    #[test]
    fn cephfs_can_be_served_from_threads() {
        fn served<T: Send + Sync + 'static>() {}
        served::<CephFs>();
        served::<Server<Arc<CephFs>>>();
    }

    #[test]
    fn cache_policies() {
        assert_eq!(CachePolicy::default(), CachePolicy::auto());
        assert!(CachePolicy::never().direct_io);
        assert_eq!(CachePolicy::never().attr_timeout, Duration::ZERO);
        assert!(CachePolicy::always().keep_cache);
    }
}
