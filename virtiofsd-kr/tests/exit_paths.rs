//! Every way out of the process goes through `process::exit_now` (flush, then `_exit`).
//!
//! `std::process::exit` and libc's `exit` run the C exit handlers and libceph-common's
//! static destructors while libcephfs' threads may still run: a CephFS daemon died with
//! SIGSEGV after its guest powered off because `main` returned normally, and the signal
//! threads of the daemon and of the Docker plugin still called `std::process::exit` after
//! that was fixed. This reads the source (comments stripped) and fails on any other exit.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text of each line before a `//` comment (string literals here never hold `//`
/// next to an exit call, and a false hit would only make this test stricter).
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split("//").next().unwrap_or("")))
}

/// Calls that end the process some other way.
const FORBIDDEN: &[&str] = &["process::exit(", "libc::exit(", "std::process::abort("];

fn offenders(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for (n, code) in code_lines(&text) {
            for f in FORBIDDEN {
                if code.contains(f) {
                    found.push(format!("{}:{n}: {}", file.display(), code.trim()));
                }
            }
        }
    }
    found
}

#[test]
fn no_exit_but_exit_now_in_the_daemon_or_the_ceph_backend() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut found = offenders(&here.join("src"));
    found.extend(offenders(&here.join("../cephfs-backend/src")));
    assert!(
        found.is_empty(),
        "exit through virtiofsd_kr::process::exit_now instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_check_sees_an_exit_call() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.rs"),
        "fn f() {\n    // std::process::exit(0) in a comment is fine\n    std::process::exit(3);\n}\n",
    )
    .unwrap();
    let found = offenders(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with("a.rs:3: std::process::exit(3);"),
        "{found:?}"
    );
}
