//! `scripts/ceph-dev-cluster.sh` starts wherever there is room for a dev cluster and, where
//! there is not, says why:
//!
//! - a Ceph daemon that refuses to start (here a `ceph-mon` shim that exits 28, ENOSPC) ends
//!   `start` with the daemon's command, its status and the ENOSPC hint on the script's own
//!   stderr, not with a bare exit status (the script used to print nothing, and the monitor's
//!   own message went to a log or nowhere);
//! - the space a cluster needs is counted in bytes, not in a percentage of the disk: a CI
//!   machine's 252 GB disk with 4.9 GB free (1.9 %) made the real monitor refuse to start
//!   (its check truncates to a whole percent), and every CephFS test failed. A big, nearly
//!   full filesystem (a sparse ext4 image on a loop device, 1.9 % free) must start a real
//!   cluster; one with less than the script's floor in bytes is refused with a message that
//!   says how much is free and how much is needed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("scripts/ceph-dev-cluster.sh")
}

#[test]
fn a_daemon_that_refuses_to_start_is_named_with_its_status_and_the_reason() {
    let shim = tempfile::tempdir().unwrap();
    let mon = shim.path().join("ceph-mon");
    std::fs::write(&mon, "#!/bin/sh\nexit 28\n").unwrap();
    std::fs::set_permissions(&mon, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = format!(
        "{}:{}",
        shim.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(script())
        .arg("start")
        .env("PATH", path)
        .env("CEPH_DEV_DIR", dir.path().join("ceph"))
        // A port nothing listens on: the shim fails before anything would bind it.
        .env("CEPH_DEV_PORT", "3397")
        .stdin(Stdio::null())
        .output()
        .expect("running ceph-dev-cluster.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(28), "stderr:\n{stderr}");
    assert!(
        stderr.contains("'ceph-mon -c ")
            && stderr.contains("failed with status 28")
            && stderr.contains("ENOSPC"),
        "no reason on stderr:\n{stderr}"
    );
}

/// A filesystem of `GIB` GiB (a sparse ext4 image on a loop device, so neither the host's disk
/// nor its memory pays for its size), unmounted when dropped.
struct BigFilesystem {
    dir: tempfile::TempDir,
}

impl BigFilesystem {
    const GIB: u64 = 16;

    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(Self::GIB << 30)
            .unwrap();
        // Lazy init and no reserved blocks: mkfs writes a few MiB, not the inode tables.
        run(Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-m",
                "0",
                "-E",
                "lazy_itable_init=1,lazy_journal_init=1",
            ])
            .arg(&image));
        let fs = BigFilesystem { dir };
        std::fs::create_dir(fs.mountpoint()).unwrap();
        let mounted = Command::new("mount")
            .args(["-o", "loop,noinit_itable"])
            .arg(&image)
            .arg(fs.mountpoint())
            .output()
            .expect("running mount");
        assert!(
            mounted.status.success(),
            "this test mounts an ext4 image on a loop device (as root, with /dev/loop-control) \
             and could not: {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        fs
    }

    fn mountpoint(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn free_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.mountpoint()).unwrap();
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    fn total_bytes(&self) -> u64 {
        let st = nix::sys::statvfs::statvfs(&self.mountpoint()).unwrap();
        st.blocks() as u64 * st.fragment_size() as u64
    }

    /// Allocates (without writing) a filler file so that `free` bytes are left.
    fn leave_free(&self, free: u64) {
        let filler = self.mountpoint().join("filler");
        let have = std::fs::metadata(&filler).map(|m| m.len()).unwrap_or(0);
        let grow = self
            .free_bytes()
            .checked_sub(free)
            .expect("less free than asked already");
        run(Command::new("fallocate")
            .args(["-o", &have.to_string(), "-l", &grow.to_string()])
            .arg(&filler));
        let left = self.free_bytes();
        assert!(
            left <= free && left + (64 << 20) > free,
            "asked to leave {free} bytes free, {left} are"
        );
    }
}

impl Drop for BigFilesystem {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.mountpoint())
            .status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs the script with `action` on a cluster in `dir`, for two minutes at most (a start
/// takes 5 s here).
fn cluster_script(dir: &Path, action: &str) -> Output {
    Command::new("timeout")
        .args(["-k", "5", "120"])
        .arg(script())
        .arg(action)
        .env("CEPH_DEV_DIR", dir)
        // Its own port and a small memstore: it may run beside the tests' cluster.
        .env("CEPH_DEV_PORT", "3398")
        .env("CEPH_DEV_MEM_MB", "256")
        .stdin(Stdio::null())
        .output()
        .expect("running ceph-dev-cluster.sh")
}

#[test]
fn the_space_a_cluster_needs_is_counted_in_bytes_not_in_a_percentage_of_the_disk() {
    let fs = BigFilesystem::new();
    let dir = fs.mountpoint().join("ceph");

    // What the CI machine had: 1.9 % of a big disk free, plenty in bytes (about 300 MiB here).
    let free = fs.total_bytes() * 19 / 1000;
    fs.leave_free(free);
    let started = cluster_script(&dir, "start");
    let status = cluster_script(&dir, "status");
    let stopped = cluster_script(&dir, "stop");
    assert!(
        started.status.success(),
        "with {} MiB free ({:.1} %) the cluster did not start:\n{}",
        free >> 20,
        free as f64 * 100.0 / fs.total_bytes() as f64,
        String::from_utf8_lossy(&started.stderr)
    );
    assert_eq!(
        status.status.code(),
        Some(0),
        "started, but `status` says:\n{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(stopped.status.success());

    // Below the floor in bytes: refused before any daemon starts, saying what is free and
    // what is needed.
    fs.leave_free(200 << 20);
    let refused = cluster_script(&dir, "start");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        stderr.contains("MiB free on") && stderr.contains("needs 256 MiB"),
        "no reason on stderr:\n{stderr}"
    );
    assert!(
        !dir.join("run/mon.a.pid").exists(),
        "a monitor was started on a filesystem the script refused"
    );
}
