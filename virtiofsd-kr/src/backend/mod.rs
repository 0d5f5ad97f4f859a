//! Backends: where the exported files live, behind fuse-backend-rs's `FileSystem` trait.
//!
//! [`passthrough`] serves a host directory, [`local_fs`] tells it on which host filesystems
//! the guest's FLUSH is a no-op, and [`cephfs`] starts a CephFS volume through libcephfs
//! (the `cephfs-backend` crate). Each takes its own option types, built by the control
//! plane; a backend must not read the command line, enter the sandbox or install seccomp,
//! and never trusts a name or offset the guest sent.

pub mod cephfs;
pub mod local_fs;
pub mod passthrough;

/// The guest's caching policy (`--cache`), which each backend turns into its own timeouts
/// and open flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    // Close-to-open consistency, 1 s attribute timeout.
    #[default]
    Auto,
    // Cache everything.
    Always,
    // Cache metadata, not file data.
    Metadata,
    // Cache nothing.
    Never,
}
