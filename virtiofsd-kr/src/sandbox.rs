//! Sandbox: confines the daemon to the shared directory before it serves a guest.
//!
//! INTERFACE CONTRACT (used by `daemon`; the implementation is being completed):
//! 1. `Sandbox::new(mode, shared_dir)`.
//! 2. `enter()`: for `namespace`, unshare + fork; only the child returns. For others, no-op.
//! 3. The daemon opens the backend at `backend_root()`.
//! 4. `confine()`: pivot_root (namespace) or chroot (chroot) into the shared directory.
//! 5. `drop_capabilities()`.

use std::path::{Path, PathBuf};

use crate::cli::SandboxMode;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox mode {0:?} is not available in this build yet")]
    Unsupported(SandboxMode),
}

pub struct Sandbox {
    mode: SandboxMode,
    shared_dir: PathBuf,
}

impl Sandbox {
    pub fn new(mode: SandboxMode, shared_dir: &Path) -> Self {
        Sandbox {
            mode,
            shared_dir: shared_dir.to_path_buf(),
        }
    }

    pub fn enter(&mut self) -> Result<(), SandboxError> {
        match self.mode {
            SandboxMode::None => Ok(()),
            other => Err(SandboxError::Unsupported(other)),
        }
    }

    pub fn backend_root(&self) -> PathBuf {
        self.shared_dir.clone()
    }

    pub fn confine(&mut self) -> Result<(), SandboxError> {
        Ok(())
    }

    pub fn drop_capabilities(&self) -> Result<(), SandboxError> {
        Ok(())
    }
}
