//! The single-node Ceph dev cluster every CephFS and RADOS test runs against, started once per
//! test process through `scripts/ceph-dev-cluster.sh start` (idempotent; a running cluster is
//! reused and left running, `scripts/test.sh` stops it at the end), and names no other test or
//! earlier run against the same cluster uses.
//!
//! Owns only finding or starting the cluster. It must not make volumes, identities or pools
//! (each test suite does that its own way), and never skips: a cluster that cannot start fails
//! the test with what to run.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The running dev cluster.
#[derive(Debug)]
pub struct DevCluster {
    /// Its directory (`.cache/ceph` by default).
    pub dir: PathBuf,
    /// Its ceph.conf.
    pub conf: PathBuf,
    /// The admin keyring next to it.
    pub admin_keyring: PathBuf,
}

impl DevCluster {
    /// Runs `program` (a Ceph command line tool) with `args` as the cluster's admin.
    fn as_admin(&self, program: &str, args: &[&str]) -> std::process::Output {
        Command::new(program)
            .arg("-c")
            .arg(&self.conf)
            .arg("-k")
            .arg(&self.admin_keyring)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running {program} {args:?}: {e}"))
    }

    /// Runs the `ceph` command line as the cluster's admin.
    pub fn ceph(&self, args: &[&str]) -> std::process::Output {
        self.as_admin("ceph", args)
    }

    /// Runs `rados` as the cluster's admin.
    pub fn rados(&self, args: &[&str]) -> std::process::Output {
        self.as_admin("rados", args)
    }

    /// The MDS sessions of clients connected as `client.<entity_id>`, whatever their state
    /// (a client that ended without closing its session stays listed until the MDS evicts it).
    pub fn mds_sessions_of(&self, entity_id: &str) -> usize {
        let out = self.ceph(&["tell", "mds.*", "session", "ls", "--format", "json"]);
        assert!(out.status.success(), "ceph tell mds.* session ls: {out:?}");
        // One JSON list per MDS, each on its own; the dev cluster has one MDS.
        let text = String::from_utf8_lossy(&out.stdout);
        let sessions: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
            .into_iter::<Vec<serde_json::Value>>()
            .flat_map(|list| list.unwrap_or_else(|e| panic!("session ls: {e}: {text}")))
            .collect();
        sessions
            .iter()
            .filter(|s| s["client_metadata"]["entity_id"] == entity_id)
            .count()
    }
}

/// `scripts/ceph-dev-cluster.sh` of this checkout.
pub fn script() -> PathBuf {
    crate::paths::repo_root()
        .unwrap_or_else(|e| panic!("{e}"))
        .join("scripts/ceph-dev-cluster.sh")
}

/// The dev cluster, started on first use.
pub fn cluster() -> &'static DevCluster {
    static CLUSTER: OnceLock<DevCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let script = script();
        let out = Command::new(&script)
            .arg("start")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("running `{} start`: {e}", script.display()));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            out.status.success(),
            "these tests need the single-node Ceph dev cluster, and starting it failed ({}). \
             Run `{} start` as root (it installs the ceph packages) and read its output and \
             the logs under .cache/ceph/log/",
            out.status,
            script.display()
        );
        let conf = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(
            conf.is_file(),
            "`{} start` printed no ceph.conf path (got {conf:?})",
            script.display()
        );
        let dir = conf
            .parent()
            .expect("the conf is in the cluster's directory")
            .to_path_buf();
        DevCluster {
            admin_keyring: dir.join("keyring"),
            conf,
            dir,
        }
    })
}

/// A name no other test (or earlier run against the same cluster: volumes, identities and
/// RADOS namespaces outlive a test run) uses: `[A-Za-z0-9x]` after `prefix`, valid in a
/// path, a cephx id, a RADOS namespace and a QEMU option.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}x{}x{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_differ_and_stay_in_the_safe_alphabet() {
        let (a, b) = (unique("vol-"), unique("vol-"));
        assert_ne!(a, b);
        for n in [a, b] {
            assert!(n.starts_with("vol-"));
            assert!(n[4..].bytes().all(|c| c.is_ascii_alphanumeric()), "{n}");
        }
    }
}
