//! The harness's error type: everything that can go wrong while locating the guest image and
//! the daemon, starting processes, writing the per-boot archive or parsing guest output.

use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

/// Errors of the guest harness.
#[derive(Debug, Error)]
pub enum HarnessError {
    /// The kernel or initramfs in `.cache/guest/` is missing.
    #[error(
        "guest image missing: {path} does not exist; run `scripts/setup.sh` (as root) or \
         `scripts/build-guest.sh` at the repository root first"
    )]
    GuestImageMissing { path: PathBuf },

    /// No daemon binary was found.
    #[error(
        "virtiofsd-kr binary not found (looked at: {looked}); build it with \
         `cargo build --release -p virtiofsd-kr` or set VIRTIOFSD_KR_BIN"
    )]
    DaemonMissing { looked: String },

    /// No QEMU 7.2: neither the one `scripts/setup.sh` unpacks into `.cache/qemu-7.2` nor
    /// `qemu-system-x86_64` on PATH.
    #[error("qemu-system-x86_64 not found in .cache/qemu-7.2 or on PATH; run `scripts/setup.sh`")]
    QemuMissing,

    /// The repository root could not be found.
    #[error("cannot locate the repository root (tried {0}); set VMTEST_REPO_ROOT")]
    RepoRoot(PathBuf),

    /// A path that ends up in a QEMU option contains a comma.
    #[error("path {0} contains a comma, which QEMU's option syntax cannot carry")]
    CommaInPath(PathBuf),

    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    /// The daemon did not start listening.
    #[error(
        "virtiofsd-kr did not create its socket {socket} within {timeout:?}; its output:\n{log}"
    )]
    DaemonStart {
        socket: PathBuf,
        timeout: Duration,
        log: String,
    },

    /// Waiting for a guest event timed out.
    #[error("timed out after {timeout:?} waiting for {what}; serial log so far:\n{log}")]
    Timeout {
        what: String,
        timeout: Duration,
        log: String,
    },

    /// The guest ended before an awaited event happened.
    #[error("the guest ended before {what}; serial log:\n{log}")]
    GuestEnded { what: String, log: String },

    /// Writing the per-boot archive failed.
    #[error("cpio: {0}")]
    Cpio(#[from] crate::cpio::CpioError),

    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl HarnessError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        HarnessError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result alias for the harness.
pub type Result<T> = std::result::Result<T, HarnessError>;
