//! Errors of connecting to and mounting a CephFS volume.
//!
//! Owns `CephError`: one variant per start-up step, each carrying the context an operator
//! needs (which file, which identity, which root) and the errno libcephfs returned; and
//! `LibraryError`, why libcephfs or librados could not be loaded (shared with
//! `rados::RadosError`). Must not: be used for per-request failures, which are plain
//! `io::Error` errnos handed back to the guest.

use std::io;
use std::path::PathBuf;

/// A failure to bring up the CephFS backend; the daemon reports it and exits before it offers
/// its socket.
#[derive(Debug, thiserror::Error)]
pub enum CephError {
    #[error("the CephFS backend needs libcephfs: {0}")]
    Library(#[from] LibraryError),
    #[error("ceph config file {path:?}: {source}")]
    ConfFile { path: PathBuf, source: io::Error },
    #[error("ceph keyring {path:?}: {source}")]
    Keyring { path: PathBuf, source: io::Error },
    #[error("{what} {value:?} contains a NUL byte")]
    NulByte { what: &'static str, value: String },
    #[error("ceph root {0:?} must be an absolute path inside the filesystem")]
    RelativeRoot(String),
    #[error("creating a libcephfs handle for client.{id}: {source}")]
    Create { id: String, source: io::Error },
    #[error("reading ceph config {path:?}: {source}")]
    ReadConf { path: PathBuf, source: io::Error },
    #[error("setting ceph option {option}: {source}")]
    SetOption { option: String, source: io::Error },
    #[error(
        "connecting to the ceph cluster as client.{id} (conf {conf:?}, keyring {keyring:?}): \
         {source}"
    )]
    Connect {
        id: String,
        conf: PathBuf,
        keyring: PathBuf,
        source: io::Error,
    },
    #[error("selecting CephFS filesystem {name:?}: {source}")]
    SelectFs { name: String, source: io::Error },
    #[error("ceph root {root:?} does not exist in the filesystem")]
    RootMissing { root: String },
    #[error("client.{id} may not mount ceph root {root:?} (wrong key, or its mds caps do not cover this path): {source}")]
    RootDenied {
        id: String,
        root: String,
        source: io::Error,
    },
    #[error("mounting ceph root {root:?} as client.{id}: {source}")]
    Mount {
        id: String,
        root: String,
        source: io::Error,
    },
    #[error("ceph root {root:?} is not a directory")]
    RootNotDir { root: String },
    #[error("starting the threads that bound each call (--ceph-op-timeout): {0}")]
    CallThreads(io::Error),
    #[error("looking up the root inode of {root:?}: {source}")]
    RootInode { root: String, source: io::Error },
}

/// Why a Ceph library could not be loaded at run time (see `dynload`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LibraryError {
    /// The library, or one it depends on, is missing or unusable.
    #[error(
        "cannot load {soname} ({detail}): install package {package} \
         (Debian/Ubuntu: apt install {package}; Fedora/RHEL: dnf install {package})"
    )]
    Open {
        soname: String,
        package: &'static str,
        /// The dynamic loader's message (`dlerror`).
        detail: String,
    },
    /// The library lacks a function this build calls: too old (or not a Ceph library).
    #[error(
        "{soname} has no function {symbol} ({detail}): this build needs the Ceph Pacific \
         (16.2) or newer {package}"
    )]
    Symbol {
        soname: String,
        package: &'static str,
        symbol: &'static str,
        /// The dynamic loader's message (`dlerror`).
        detail: String,
    },
}

/// `io::Error` for a negative libcephfs return value (`-errno`).
pub(crate) fn errno(ret: i64) -> io::Error {
    let code = i32::try_from(ret.unsigned_abs()).unwrap_or(libc::EIO);
    io::Error::from_raw_os_error(code)
}

/// A libcephfs/librados `int` return: itself when not negative, else its errno.
pub(crate) fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(errno(ret.into()))
    } else {
        Ok(ret)
    }
}
