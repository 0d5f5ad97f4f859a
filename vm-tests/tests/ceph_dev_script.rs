//! `scripts/ceph-dev-cluster.sh` says why it failed: a Ceph daemon that refuses to start
//! (here a `ceph-mon` that exits 28, as the real one does when its disk is below `mon data
//! avail crit`) ends `start` with the daemon's command, its status and the ENOSPC hint on the
//! script's own stderr, not with a bare exit status (the script used to print nothing, and the
//! monitor's own message went to a log or nowhere). No cluster is started: the shim fails first.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

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
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("scripts/ceph-dev-cluster.sh");
    let out = Command::new(&script)
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
