//! pjdfstest, the POSIX file system test suite others wrote (the Rust rewrite, crate
//! `pjdfstest` 0.2.2, built statically by `scripts/setup.sh` into `.cache/pjdfstest/`), run in a
//! real guest on the virtio-fs share, and its verdicts held against the committed list of
//! expected failures (`vm-tests/pjdfstest-expected-failures.txt`).
//!
//! A failure that is not on the list fails the test; a listed failure that passes (or no
//! longer runs) is reported on stderr so the list can shrink. Owns only running the suite
//! and judging its output; the backends' set-up belongs to the caller.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vm_tests::workload::script;
use vm_tests::{CacheMode, VmBuilder, VmOutcome};

/// The suite's binary: `PJDFSTEST_BIN`, or what `scripts/setup.sh` builds.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PJDFSTEST_BIN") {
        return PathBuf::from(p);
    }
    let root = vm_tests::paths::repo_root().unwrap_or_else(|e| panic!("{e}"));
    root.join(".cache/pjdfstest/bin/pjdfstest")
}

/// The committed list of expected failures.
pub fn expectations_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pjdfstest-expected-failures.txt")
}

/// The suite's groups run in every guest: every group of the suite that applies to Linux.
/// Left out: `chflags` (BSD file flags) and `nfsv4acl` (need features Linux file systems do
/// not have; the suite skips them anyway), `errors::erofs` (remounts the share read-only;
/// `guest_readonly.rs` covers a read-only share), `errors::exdev` (needs a second file
/// system; the guest kernel answers EXDEV, not the daemon).
pub const GROUPS: &[&str] = &[
    "chmod",
    "chown",
    "ftruncate",
    "link",
    "mkdir",
    "mkfifo",
    "mknod",
    "open",
    "posix_fallocate",
    "rename",
    "rmdir",
    "symlink",
    "truncate",
    "unlink",
    "utimensat",
    "errors::eexist",
    "errors::efault",
    "errors::eloop",
    "errors::enametoolong",
    "errors::enoent",
    "errors::enotdir",
    "errors::etxtbsy",
];

/// The case patterns given to the suite: `PJDFSTEST_PATTERNS` (space-separated substrings of
/// case names, to rerun a few cases while debugging), else [`GROUPS`].
fn patterns() -> String {
    std::env::var("PJDFSTEST_PATTERNS").unwrap_or_else(|_| GROUPS.join(" "))
}

/// The suite's configuration in the guest: the optional features both backends have (rename
/// updates ctime on both), and a nap longer than the guest's timestamp granularity
/// (nanoseconds on both backends).
const CONFIG: &str = r#"[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.01
allow_remount = false

[dummy_auth]
entries = [["nobody", "nogroup"], ["tests", "tests"]]
"#;

/// The two unprivileged users the suite switches to (the guest runs it as root).
const PASSWD: &str = "root:x:0:0:root:/:/bin/sh\n\
nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
tests:x:1001:1001:pjdfstest:/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\ntests:x:1001:\n";

/// The `sleep` the suite's ETXTBSY cases copy and execute (they find it with `which`): the
/// host's coreutils one, first in the suite's PATH. The guest's own `sleep` is busybox, whose
/// copy under another name exits at once ("applet not found"), so the file would no longer be
/// busy when the case tries to write it.
const SLEEP: &str = "/usr/bin/sleep";

/// Where the guest's copy of the suite's output starts each line.
const LINE_TAG: &str = "@@PJD ";

/// One combination of backend and cache mode, as the list names it: `host/auto`,
/// `cephfs/never`, ...
#[derive(Debug, Clone, Copy)]
pub struct Combination {
    pub backend: &'static str,
    pub cache: CacheMode,
}

impl Combination {
    fn cache_name(&self) -> &'static str {
        self.cache.as_str()
    }

    /// Whether a scope of the list (`all`, `host`, `cephfs/never`, ...) covers this
    /// combination.
    pub fn in_scope(&self, scope: &str) -> bool {
        scope.split(',').any(|s| {
            let (backend, cache) = s.split_once('/').unwrap_or((s, "*"));
            (backend == "all" || backend == "*" || backend == self.backend)
                && (cache == "*" || cache == self.cache_name())
        })
    }
}

/// One line of the list: a test case, where it fails and why.
#[derive(Debug, Clone)]
pub struct Expected {
    pub test: String,
    pub scope: String,
    pub reason: String,
}

/// Parses the list: `TEST SCOPE REASON...` per line, `#` comments and blank lines ignored.
/// Panics on a malformed line (a reason is required).
pub fn parse_expectations(text: &str) -> Vec<Expected> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.splitn(3, char::is_whitespace);
        let test = parts.next().unwrap_or_default();
        let scope = parts.next().unwrap_or_default();
        let reason = parts.next().unwrap_or_default().trim();
        assert!(
            !test.is_empty() && !scope.is_empty() && !reason.is_empty(),
            "{}:{}: expected `TEST SCOPE REASON`, got {line:?}",
            expectations_file().display(),
            n + 1
        );
        out.push(Expected {
            test: test.to_string(),
            scope: scope.to_string(),
            reason: reason.to_string(),
        });
    }
    out
}

/// The suite's verdict on one test case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Failed(String),
    Skipped,
}

/// The suite's verdicts in the order it printed them, and its summary line.
#[derive(Debug, Default)]
pub struct SuiteRun {
    pub verdicts: Vec<(String, Verdict)>,
    pub summary: Option<String>,
}

/// Parses pjdfstest's output (`NAME   ok|FAILED|skipped`, then tab-indented detail lines).
pub fn parse_output(lines: &[String]) -> SuiteRun {
    let mut run = SuiteRun::default();
    for line in lines {
        if let Some(detail) = line.strip_prefix('\t') {
            if let Some((_, Verdict::Failed(msg))) = run.verdicts.last_mut() {
                if !msg.is_empty() {
                    msg.push_str(" | ");
                }
                msg.push_str(detail.trim());
            }
            continue;
        }
        let line = line.trim_end();
        if line.starts_with("Summary:") {
            run.summary = Some(line.to_string());
            continue;
        }
        let Some((name, verdict)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let verdict = match verdict.trim() {
            "ok" => Verdict::Ok,
            "FAILED" => Verdict::Failed(String::new()),
            "skipped" => Verdict::Skipped,
            _ => continue,
        };
        run.verdicts.push((name.to_string(), verdict));
    }
    run
}

/// Boots `guest` (named, with its share, by the caller) with `cache`, runs the suite's
/// [`GROUPS`] in `/data/pjdfstest`, and judges the verdicts against the list for `combo`.
pub fn run(guest: VmBuilder, combo: Combination, timeout: Duration) -> VmOutcome {
    let bin = binary();
    assert!(
        bin.is_file(),
        "{} is missing: run scripts/setup.sh (it builds pjdfstest 0.2.2 with cargo install)",
        bin.display()
    );
    let expectations = parse_expectations(
        &std::fs::read_to_string(expectations_file())
            .unwrap_or_else(|e| panic!("{}: {e}", expectations_file().display())),
    );
    let body = format!(
        r#"
mkdir /data/pjdfstest; check mkdir 0 "$?"
PATH=/opt/pjdfstest/bin:$PATH NO_COLOR=1 /bin/pjdfstest -c /etc/pjdfstest.toml -p /data/pjdfstest {groups} >/pjdfstest.log 2>&1
r pjdfstest_rc "$?"
sed 's/^/{LINE_TAG}/' /pjdfstest.log
r pjdfstest_lines "$(wc -l < /pjdfstest.log)"
"#,
        groups = patterns()
    );
    let out = guest
        .cache(combo.cache)
        .file("/etc/pjdfstest.toml", 0o644, CONFIG)
        .file("/etc/passwd", 0o644, PASSWD)
        .file("/etc/group", 0o644, GROUP)
        .program(&bin, "/bin/pjdfstest")
        .and_then(|g| g.program(Path::new(SLEEP), "/opt/pjdfstest/bin/sleep"))
        .unwrap_or_else(|e| panic!("{e}"))
        .timeout(timeout)
        .workload(&script(&body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();

    let lines: Vec<String> = out
        .serial
        .iter()
        .filter_map(|l| l.text.trim_end_matches('\r').strip_prefix(LINE_TAG))
        .map(str::to_string)
        .collect();
    let reported: usize = out.int("pjdfstest_lines").try_into().unwrap_or(0);
    out.check(
        lines.len() == reported,
        &format!(
            "the guest printed {reported} lines of pjdfstest output, the host read {}",
            lines.len()
        ),
    );
    let suite = parse_output(&lines);
    out.check(
        suite.summary.is_some(),
        "pjdfstest printed no summary line (did it run?)",
    );
    eprintln!(
        "pjdfstest on {}/{} ({} cases, {:.0} s guest): {}",
        combo.backend,
        combo.cache_name(),
        suite.verdicts.len(),
        out.elapsed.as_secs_f64(),
        suite.summary.as_deref().unwrap_or("")
    );

    let expected_here: Vec<&Expected> = expectations
        .iter()
        .filter(|e| combo.in_scope(&e.scope))
        .collect();
    let mut unexpected = Vec::new();
    let mut passes = 0;
    for (name, verdict) in &suite.verdicts {
        let listed = expected_here.iter().find(|e| &e.test == name);
        match (verdict, listed) {
            (Verdict::Failed(msg), None) => unexpected.push(format!("{name}: {msg}")),
            (Verdict::Failed(msg), Some(e)) => {
                eprintln!("  expected failure {name} ({}): {msg}", e.reason)
            }
            (Verdict::Ok, Some(e)) => eprintln!(
                "  NOTE: {name} is listed as an expected failure ({}) but PASSED: take it off \
                 the list",
                e.reason
            ),
            (Verdict::Ok, None) => passes += 1,
            (Verdict::Skipped, _) => {}
        }
    }
    for e in &expected_here {
        if !suite.verdicts.iter().any(|(n, _)| n == &e.test) {
            eprintln!(
                "  NOTE: {} is listed as an expected failure but did not run",
                e.test
            );
        }
    }
    out.check(
        unexpected.is_empty(),
        &format!(
            "pjdfstest failures on {}/{} that {} does not list:\n  {}",
            combo.backend,
            combo.cache_name(),
            expectations_file().display(),
            unexpected.join("\n  ")
        ),
    );
    // A run that passes nothing proves nothing: the groups above hold well over 100 cases
    // that a Linux file system passes.
    out.check(
        passes >= 100 || std::env::var_os("PJDFSTEST_PATTERNS").is_some(),
        &format!("only {passes} pjdfstest cases passed"),
    );
    out
}
