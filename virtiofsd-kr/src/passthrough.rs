//! The host-directory backend: fuse-backend-rs `PassthroughFs` configured from the command
//! line.
//!
//! Owns the mapping from `FsOptions` to `passthrough::Config` and the start-up checks that
//! make a flag's promise true (file handles that must work). It must not enter the sandbox:
//! the daemon builds the backend after `Sandbox::enter` and before `Sandbox::confine`, so the
//! root and `/proc/self/fd` descriptors it opens stay valid inside.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fuse_backend_rs::passthrough::{CachePolicy, Config, PassthroughFs};

use crate::cli::{CacheMode, FsOptions, InodeFileHandles};

/// The passthrough filesystem type served to guests.
pub type HostFs = PassthroughFs<()>;

#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    #[error("shared directory {0:?} is not valid UTF-8")]
    NonUtf8Root(PathBuf),
    #[error("--inode-file-handles=mandatory: the filesystem of {path:?} cannot give file handles: {source}")]
    NoFileHandles {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("opening shared directory {path:?}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Attribute/entry timeouts per cache mode, as the reference daemon uses them.
pub fn cache_timeouts(mode: CacheMode) -> (CachePolicy, Duration) {
    match mode {
        CacheMode::Never => (CachePolicy::Never, Duration::ZERO),
        CacheMode::Metadata => (CachePolicy::Metadata, Duration::from_secs(86400)),
        CacheMode::Auto => (CachePolicy::Auto, Duration::from_secs(1)),
        CacheMode::Always => (CachePolicy::Always, Duration::from_secs(86400)),
    }
}

/// The `PassthroughFs` configuration for `opts`, rooted at `root`.
///
/// `dax_file_size`: with a DAX window, files at least this large get `FUSE_ATTR_DAX`.
pub fn config(
    opts: &FsOptions,
    root: &Path,
    dax_file_size: Option<u64>,
) -> Result<Config, PassthroughError> {
    let root_dir = root
        .to_str()
        .ok_or_else(|| PassthroughError::NonUtf8Root(root.to_path_buf()))?
        .to_string();
    let (cache_policy, timeout) = cache_timeouts(opts.cache);
    Ok(Config {
        root_dir,
        cache_policy,
        attr_timeout: timeout,
        entry_timeout: timeout,
        xattr: opts.xattr,
        writeback: opts.writeback,
        allow_direct_io: opts.allow_direct_io,
        inode_file_handles: opts.inode_file_handles != InodeFileHandles::Never,
        do_import: true,
        dax_file_size,
        ..Default::default()
    })
}

/// Builds and imports the backend, so the root is open before the sandbox closes.
pub fn open(
    opts: &FsOptions,
    root: &Path,
    dax_file_size: Option<u64>,
) -> Result<HostFs, PassthroughError> {
    if opts.inode_file_handles == InodeFileHandles::Mandatory {
        check_file_handles(root)?;
    }
    let fs = PassthroughFs::new(config(opts, root, dax_file_size)?).map_err(|source| {
        PassthroughError::Open {
            path: root.to_path_buf(),
            source,
        }
    })?;
    fs.import().map_err(|source| PassthroughError::Open {
        path: root.to_path_buf(),
        source,
    })?;
    Ok(fs)
}

/// Asks the kernel for a file handle of `root`, as `mandatory` file handles require.
fn check_file_handles(root: &Path) -> Result<(), PassthroughError> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; 128],
    }
    let err = |source| PassthroughError::NoFileHandles {
        path: root.to_path_buf(),
        source,
    };
    let path = CString::new(root.as_os_str().as_bytes())
        .map_err(|_| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
    let mut handle = Handle {
        bytes: 128,
        kind: 0,
        data: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `path` is a valid C string; `handle` is a properly sized file_handle buffer
    // whose `handle_bytes` says how much room follows; `mount_id` is a valid out pointer.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            path.as_ptr(),
            &mut handle as *mut Handle,
            &mut mount_id as *mut libc::c_int,
            0,
        )
    };
    if ret < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        fs: FsOptions,
    }

    fn opts(args: &[&str]) -> FsOptions {
        T::parse_from(std::iter::once("t").chain(args.iter().copied())).fs
    }

    #[test]
    fn cache_modes_map_to_policies_and_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&opts(&["--cache=never"]), dir.path(), None).unwrap();
        assert!(matches!(c.cache_policy, CachePolicy::Never));
        assert_eq!(c.attr_timeout, Duration::ZERO);
        let c = config(
            &opts(&["--cache=always", "--xattr", "--writeback"]),
            dir.path(),
            None,
        )
        .unwrap();
        assert!(matches!(c.cache_policy, CachePolicy::Always));
        assert_eq!(c.entry_timeout, Duration::from_secs(86400));
        assert!(c.xattr && c.writeback);
        let c = config(&opts(&[]), dir.path(), None).unwrap();
        assert!(matches!(c.cache_policy, CachePolicy::Auto));
        assert_eq!(c.attr_timeout, Duration::from_secs(1));
        assert!(!c.inode_file_handles);
        let c = config(&opts(&["--inode-file-handles=prefer"]), dir.path(), Some(0)).unwrap();
        assert!(c.inode_file_handles);
    }

    #[test]
    fn open_serves_an_existing_directory_and_refuses_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        assert!(open(&opts(&[]), dir.path(), None).is_ok());
        let missing = dir.path().join("missing");
        assert!(open(&opts(&[]), &missing, None).is_err());
    }
}
