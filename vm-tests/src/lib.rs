//! End-to-end tests of `virtiofsd-kr` with real Linux guests under QEMU.
//!
//! The guest image (kernel + busybox initramfs with the virtio-fs modules and fio) is built by
//! `scripts/build-guest.sh` into `.cache/guest/`. A test describes one boot with
//! [`VmBuilder`]: the share (a host directory, or a CephFS volume served with
//! `--backend cephfs`: [`ShareBackend`]) and daemon flags, a shell workload, helper programs.
//! The harness starts one daemon per share, appends a per-boot cpio archive with the workload
//! to the base initramfs, boots QEMU, parses `@@VMTEST key=value` lines from the serial
//! console into [`GuestResults`], and after power-off collects the daemon's exit status into
//! a [`VmOutcome`] the test asserts on.
//!
//! Environment: `VIRTIOFSD_KR_BIN` (daemon binary), `VMTEST_ACCEL` (`auto`|`kvm`|`tcg`),
//! `VMTEST_SANDBOX` / `VMTEST_SECCOMP` (daemon flags), `VMTEST_TIMEOUT_SECS`,
//! `VMTEST_VERBOSE` (echo the serial console), `VMTEST_GUEST_DIR`, `VMTEST_REPO_ROOT`.

pub mod accel;
pub mod ceph_dev;
pub mod cpio;
pub mod cpu;
pub mod daemon;
pub mod dax_window;
pub mod error;
pub mod frontend;
pub mod fs_buffers;
pub mod fuse;
pub mod paths;
pub mod results;
pub mod stats;
pub mod vm;
pub mod workload;

pub use accel::{Accel, AccelChoice};
pub use daemon::{CacheMode, CephShare, DaemonConfig, DaemonOutcome, ShareBackend};
pub use error::{HarnessError, Result};
pub use paths::{GuestImage, GuestKernel, QemuVersion};
pub use results::{GuestResults, ResultEntry, SerialLine};
pub use vm::{FsDevice, RunningVm, VmBuilder, VmOutcome, GUEST_MOUNT, SECOND_MOUNT};
