//! Where things are: the repository root, the guest image in `.cache/guest/`, the daemon
//! binary, QEMU, and the shared-library closure of programs copied into a guest.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{HarnessError, Result};

/// The repository root: `VMTEST_REPO_ROOT`, else the parent of this crate's manifest folder.
pub fn repo_root() -> Result<PathBuf> {
    let candidate = match std::env::var_os("VMTEST_REPO_ROOT") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    if candidate.join("Cargo.toml").is_file() && candidate.join("scripts").is_dir() {
        Ok(candidate)
    } else {
        Err(HarnessError::RepoRoot(candidate))
    }
}

/// The guest kernel and initramfs built by `scripts/build-guest.sh`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    /// Folder holding the image (`.cache/guest`).
    pub dir: PathBuf,
    /// Kernel given to `-kernel`: the uncompressed `vmlinux` (PVH entry), else `vmlinuz`.
    pub kernel: PathBuf,
    /// Full initramfs (uncompressed newc), with fio.
    pub initramfs: PathBuf,
    /// The initramfs without fio (boots about a second faster under TCG), when built.
    pub initramfs_base: Option<PathBuf>,
    /// Kernel release, e.g. `6.1.0-56-amd64` (empty when unknown).
    pub kernel_version: String,
}

impl GuestImage {
    /// The initramfs to boot: the full one when fio is wanted (or no base was built).
    pub fn initramfs_for(&self, fio: bool) -> &Path {
        match (&self.initramfs_base, fio) {
            (Some(base), false) => base,
            _ => &self.initramfs,
        }
    }

    /// The image with `kernel` in place of the default one.
    pub fn locate_with(kernel: GuestKernel) -> Result<GuestImage> {
        let mut image = GuestImage::locate()?;
        if kernel == GuestKernel::Trixie612 {
            let dir = repo_root()?.join(".cache").join("guest-6.12");
            let vmlinux = dir.join("vmlinux");
            if !vmlinux.is_file() {
                return Err(HarnessError::GuestImageMissing { path: vmlinux });
            }
            image.kernel = vmlinux;
            image.kernel_version = std::fs::read_to_string(dir.join("kernel-version"))
                .map(|s| s.trim().to_string())
                .unwrap_or_default();
        }
        Ok(image)
    }

    /// Locates the image: `VMTEST_GUEST_DIR`, else `<repo>/.cache/guest`.
    pub fn locate() -> Result<GuestImage> {
        let dir = match std::env::var_os("VMTEST_GUEST_DIR") {
            Some(p) => PathBuf::from(p),
            None => repo_root()?.join(".cache").join("guest"),
        };
        let vmlinux = dir.join("vmlinux");
        let vmlinuz = dir.join("vmlinuz");
        let kernel = if vmlinux.is_file() {
            vmlinux
        } else if vmlinuz.is_file() {
            vmlinuz
        } else {
            return Err(HarnessError::GuestImageMissing { path: vmlinux });
        };
        let initramfs = dir.join("initramfs.cpio");
        if !initramfs.is_file() {
            return Err(HarnessError::GuestImageMissing { path: initramfs });
        }
        let base = dir.join("initramfs-base.cpio");
        let initramfs_base = base.is_file().then_some(base);
        let kernel_version = std::fs::read_to_string(dir.join("kernel-version"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Ok(GuestImage {
            dir,
            kernel,
            initramfs,
            initramfs_base,
            kernel_version,
        })
    }
}

/// The daemon binary: `VIRTIOFSD_KR_BIN`, else `target/release/virtiofsd-kr`, else
/// `target/debug/virtiofsd-kr` (under `CARGO_TARGET_DIR` when set).
pub fn daemon_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VIRTIOFSD_KR_BIN") {
        let mut p = PathBuf::from(p);
        // Relative paths are taken from the current directory, else from the repository root
        // (cargo runs tests in the package folder).
        if p.is_relative() && !p.is_file() {
            if let Ok(root) = repo_root() {
                p = root.join(p);
            }
        }
        return if p.is_file() {
            Ok(p)
        } else {
            Err(HarnessError::DaemonMissing {
                looked: format!("VIRTIOFSD_KR_BIN={}", p.display()),
            })
        };
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => repo_root()?.join("target"),
    };
    let candidates = [
        target.join("release").join("virtiofsd-kr"),
        target.join("debug").join("virtiofsd-kr"),
    ];
    for c in &candidates {
        if c.is_file() {
            return Ok(c.clone());
        }
    }
    Err(HarnessError::DaemonMissing {
        looked: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Which QEMU boots a guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QemuVersion {
    /// The host's QEMU (Debian 12: 7.2), the default drop-in check.
    #[default]
    Host,
    /// QEMU 11.1 from Debian trixie-backports, run out of `.cache/trixie-root` by
    /// `scripts/qemu11.sh` (built by `scripts/setup.sh`): the first QEMU with vhost-user shared
    /// memory (DAX) and the VMM for several request queues.
    V11_1,
}

impl QemuVersion {
    /// Short name for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            QemuVersion::Host => "host (7.2)",
            QemuVersion::V11_1 => "11.1",
        }
    }
}

/// The command that runs `version`'s QEMU: the host binary, or the `scripts/qemu11.sh`
/// wrapper once the trixie root holds QEMU (a missing root is an error, never a silent
/// fallback to the host's QEMU).
pub fn qemu_command(version: QemuVersion) -> Result<PathBuf> {
    match version {
        QemuVersion::Host => qemu_binary(),
        QemuVersion::V11_1 => {
            let root = repo_root()?;
            let qemu = root.join(".cache/trixie-root/usr/bin/qemu-system-x86_64");
            if !qemu.is_file() {
                return Err(HarnessError::GuestImageMissing { path: qemu });
            }
            Ok(root.join("scripts").join("qemu11.sh"))
        }
    }
}

/// Which guest kernel boots (both with the initramfs of `.cache/guest`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuestKernel {
    /// Debian 12's 6.1 (virtio-fs as modules), `.cache/guest`.
    #[default]
    Debian61,
    /// Debian trixie's 6.12 (virtio-fs built in; spreads requests over several request
    /// queues), `.cache/guest-6.12`.
    Trixie612,
}

/// The QEMU 7.2 that `scripts/setup.sh` unpacked into `.cache/qemu-7.2` where installing it
/// on the host would have removed a package (it runs from there as installed).
pub const PRIVATE_QEMU: &str = ".cache/qemu-7.2/usr/bin/qemu-system-x86_64";

/// The host's QEMU: `VMTEST_QEMU`, else the one `scripts/setup.sh` unpacked into
/// `.cache/qemu-7.2` (see [`PRIVATE_QEMU`]), else `qemu-system-x86_64` on PATH.
pub fn qemu_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("VMTEST_QEMU") {
        return Ok(PathBuf::from(p));
    }
    if let Ok(root) = repo_root() {
        let private = root.join(PRIVATE_QEMU);
        if private.is_file() {
            return Ok(private);
        }
    }
    which("qemu-system-x86_64").ok_or(HarnessError::QemuMissing)
}

/// Finds a program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The shared libraries (and the dynamic loader) `ldd` lists for `binary`; empty for a
/// static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| HarnessError::io("running ldd", e))?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// Parses `ldd` output into absolute library paths.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = if let Some((_, rhs)) = line.split_once("=>") {
            rhs.split_whitespace().next()
        } else {
            line.split_whitespace().next()
        };
        if let Some(p) = path {
            if p.starts_with('/') && !libs.iter().any(|l: &PathBuf| l == Path::new(p)) {
                libs.push(PathBuf::from(p));
            }
        }
    }
    libs
}

/// Fails when `path` contains a comma (it would break a QEMU option).
pub fn no_comma(path: &Path) -> Result<()> {
    if path.to_string_lossy().contains(',') {
        Err(HarnessError::CommaInPath(path.to_path_buf()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n\
                    \tlibmissing.so => not found\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn comma_check() {
        assert!(no_comma(Path::new("/tmp/a/b.sock")).is_ok());
        assert!(no_comma(Path::new("/tmp/a,b.sock")).is_err());
    }

    #[test]
    fn repo_root_found() {
        let root = repo_root().unwrap();
        assert!(root.join("vm-tests").is_dir());
    }
}
