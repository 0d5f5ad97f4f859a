//! Building blocks for guest workload scripts (busybox `sh`).
//!
//! [`script`] prepends [`PRELUDE`], which defines:
//!
//! * `r KEY VALUE`: report a result (`@@VMTEST KEY=VALUE`);
//! * `check KEY EXPECTED ACTUAL`: report `KEY=ok`, or `KEY=FAIL expected=[..] got=[..]` and
//!   remember the failure (the script then exits 1 at the end via `finish`);
//! * `err CMD...`: run a command and print `ok` or `ERR` (for commands expected to fail);
//! * `finish`: exit 0, or 1 when a `check` failed.
//!
//! Tests then assert with [`crate::VmOutcome::expect`] or [`failed_checks`].

use crate::results::GuestResults;

/// Where the helper program (`vmtest-helper`) is placed in the guest.
pub const HELPER: &str = "/bin/vmtest-helper";

/// Shell functions available to every workload built with [`script`].
pub const PRELUDE: &str = r#"
VMTEST_FAILED=0
r() { echo "@@VMTEST $1=$2"; }
check() {
    if [ "$2" = "$3" ]; then
        r "$1" ok
    else
        r "$1" "FAIL expected=[$2] got=[$3]"
        VMTEST_FAILED=1
    fi
}
err() { if "$@" >/dev/null 2>&1; then echo ok; else echo ERR; fi; }
finish() { exit "$VMTEST_FAILED"; }
"#;

/// A workload: the prelude, then `body`, then `finish`.
pub fn script(body: &str) -> String {
    format!("{PRELUDE}\n{body}\nfinish\n")
}

/// A fresh shared directory for one test, under `<target>/vmtest-shares/` (a disk-backed
/// filesystem, unlike a tmpfs `/tmp`, so user xattrs and large files work), falling back to
/// the system temp dir. `VMTEST_SHARE_ROOT` overrides the location.
pub fn temp_share() -> tempfile::TempDir {
    let root = std::env::var_os("VMTEST_SHARE_ROOT")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            let target = match std::env::var_os("CARGO_TARGET_DIR") {
                Some(t) => std::path::PathBuf::from(t),
                None => crate::paths::repo_root().ok()?.join("target"),
            };
            Some(target.join("vmtest-shares"))
        });
    if let Some(root) = root {
        if std::fs::create_dir_all(&root).is_ok() {
            if let Ok(d) = tempfile::Builder::new().prefix("share-").tempdir_in(&root) {
                return d;
            }
        }
    }
    match tempfile::Builder::new().prefix("vmtest-share-").tempdir() {
        Ok(d) => d,
        Err(e) => panic!("cannot create a temporary shared directory: {e}"),
    }
}

/// Every `check` that failed, as `key: message`.
pub fn failed_checks(results: &GuestResults) -> Vec<String> {
    results
        .entries
        .iter()
        .filter(|e| e.value.starts_with("FAIL"))
        .map(|e| format!("{}: {}", e.key, e.value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::SerialLine;
    use std::time::Instant;

    #[test]
    fn script_shape() {
        let s = script("check a 1 1");
        assert!(s.starts_with(PRELUDE));
        assert!(s.trim_end().ends_with("finish"));
    }

    #[test]
    fn failed_checks_are_listed() {
        let lines = ["@@VMTEST a=ok", "@@VMTEST b=FAIL expected=[1] got=[2]"].map(|t| SerialLine {
            at: Instant::now(),
            text: t.into(),
        });
        let r = GuestResults::from_lines(lines.iter());
        assert_eq!(failed_checks(&r), ["b: FAIL expected=[1] got=[2]"]);
    }

    #[test]
    fn prelude_runs_under_sh() {
        // The prelude must be valid POSIX sh; run it with the host's sh.
        let body = "check same x x\ncheck diff x y\nr e \"$(err false)\"\nr o \"$(err true)\"";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script(body))
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(text.contains("@@VMTEST same=ok"));
        assert!(text.contains("@@VMTEST diff=FAIL expected=[x] got=[y]"));
        assert!(text.contains("@@VMTEST e=ERR"));
        assert!(text.contains("@@VMTEST o=ok"));
    }
}
