//! Dependencies point down: the layers of `virtiofsd-kr/src` (see `src/lib.rs` and
//! docs/architecture.md) may only use the layers below them, and only the control plane's
//! assembly points read the command line.
//!
//! The check reads the source: comments and string literals are stripped, then every path
//! that names a crate-root module (`crate::X`, `crate::{X, ..}`, or `super::` climbing to the
//! root) is compared with the layer's allowed list. A new upward import fails here with the
//! file, the line and the rule it breaks.
//!
//! The same reading checks one more rule of the process's shape: every way out of the
//! process after start-up goes through `process::exit_now` (flush, then `_exit`).
//! `std::process::exit` and libc's `exit` run the C exit handlers and libceph-common's static
//! destructors while libcephfs' threads may still run: a CephFS daemon died with SIGSEGV
//! after its guest powered off because `main` returned normally, and the signal threads of
//! the daemon and of the Docker plugin still called `std::process::exit` after that was fixed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The crate-root modules each layer may use (besides itself).
fn allowed(layer: &str) -> Option<&'static [&'static str]> {
    Some(match layer {
        "control" => &[
            "vhost",
            "fuse",
            "backend",
            "confine",
            "accounting",
            "http",
            "size",
            "process",
            "stall",
            "unix_socket",
        ],
        "vhost" => &[
            "fuse",
            "backend",
            "confine",
            "accounting",
            "size",
            "process",
        ],
        "fuse" => &["backend", "confine", "accounting", "size", "process"],
        "backend" => &["confine", "size", "process"],
        "confine" => &["size", "process", "stall"],
        "accounting" => &["http", "size", "process", "unix_socket"],
        "unix_socket" => &["stall"],
        "size" | "http" | "process" | "stall" => &[],
        _ => return None,
    })
}

/// Imports that break the rules today, each with the reason it is still there. Remove an
/// entry when its import goes (the test fails on a stale entry too).
const KNOWN_EXCEPTIONS: &[(&str, &str, &str)] = &[];

/// The files of the control plane that may name `cli`: the assembly points.
const CLI_READERS: &[&str] = &[
    "main.rs",
    "control/mod.rs",
    "control/cli.rs",
    "control/daemon.rs",
    "control/volume_serve.rs",
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

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

/// `text` with comments, string literals and char literals replaced by spaces (newlines
/// kept, so line numbers stay right).
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            c[i..j.min(c.len())]
                .iter()
                .for_each(|&ch| out.push(blank(ch)));
            i = j;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && next == Some('\\') {
            // '\n', '\'', '\u{..}'
            let mut j = i + 2;
            while j < c.len() && c[j] != '\'' {
                j += 1;
            }
            (i..=j.min(c.len() - 1)).for_each(|_| out.push(' '));
            i = j + 1;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn ident_at(code: &[char], mut i: usize) -> (String, usize) {
    while i < code.len() && code[i].is_whitespace() {
        i += 1;
    }
    let start = i;
    while i < code.len() && (code[i].is_alphanumeric() || code[i] == '_') {
        i += 1;
    }
    (code[start..i].iter().collect(), i)
}

fn skip_path_sep(code: &[char], mut i: usize) -> Option<usize> {
    while i < code.len() && code[i].is_whitespace() {
        i += 1;
    }
    (code.get(i) == Some(&':') && code.get(i + 1) == Some(&':')).then_some(i + 2)
}

fn is_word_start(code: &[char], i: usize, word: &str) -> bool {
    let w: Vec<char> = word.chars().collect();
    code.get(i..i + w.len()) == Some(&w[..])
        && (i == 0 || !(code[i - 1].is_alphanumeric() || code[i - 1] == '_'))
        && !code
            .get(i + w.len())
            .is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// The crate-root modules a file names, with their line numbers. `module_path`: the file's
/// module path below the crate root (`["accounting", "report"]`).
fn root_modules_named(code: &str, module_path: &[String]) -> Vec<(String, usize)> {
    let c: Vec<char> = code.chars().collect();
    let line_of = |i: usize| c[..i].iter().filter(|&&ch| ch == '\n').count() + 1;
    let mut found = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let root_after = if is_word_start(&c, i, "crate") {
            skip_path_sep(&c, i + 5)
        } else if is_word_start(&c, i, "super") {
            // Climb as many `super::` as written; only a climb to the root names a layer.
            let mut j = i;
            let mut ups = 0;
            while is_word_start(&c, j, "super") {
                match skip_path_sep(&c, j + 5) {
                    Some(k) => {
                        ups += 1;
                        j = k;
                        while j < c.len() && c[j].is_whitespace() {
                            j += 1;
                        }
                    }
                    None => break,
                }
            }
            // Inline modules (`mod tests`) add levels the file path does not show: a climb at
            // least as deep as the file may reach the root; names that are not root modules
            // are dropped by the caller.
            let at_root = ups > 0 && ups >= module_path.len();
            if ups > 0 {
                i = j.max(i + 1);
                if !at_root {
                    continue;
                }
                Some(j)
            } else {
                None
            }
        } else {
            None
        };
        let Some(j) = root_after else {
            i += 1;
            continue;
        };
        let mut k = j;
        while k < c.len() && c[k].is_whitespace() {
            k += 1;
        }
        if c.get(k) == Some(&'{') {
            // `crate::{a, b::c, d}`: the first identifier of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            let mut m = k;
            while m < c.len() {
                match c[m] {
                    '{' => {
                        depth += 1;
                        item_start = depth == 1;
                        m += 1;
                    }
                    '}' => {
                        depth -= 1;
                        m += 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        item_start = true;
                        m += 1;
                    }
                    ch if item_start && (ch.is_alphanumeric() || ch == '_') => {
                        let (name, end) = ident_at(&c, m);
                        found.push((name, line_of(m)));
                        item_start = false;
                        m = end;
                    }
                    _ => m += 1,
                }
            }
            i = m;
        } else {
            let (name, end) = ident_at(&c, k);
            if !name.is_empty() {
                found.push((name, line_of(k)));
            }
            i = end.max(i + 1);
        }
    }
    found
}

/// The crate-root modules, from `lib.rs`'s `mod` items.
fn root_modules() -> BTreeSet<String> {
    let lib = code_only(&std::fs::read_to_string(src_dir().join("lib.rs")).unwrap());
    let words: Vec<&str> = lib
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .filter(|w| w[0] == "mod")
        .map(|w| w[1].to_string())
        .collect()
}

fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

#[test]
fn layers_only_use_the_layers_below_them() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut violations = Vec::new();
    let mut exceptions_used = BTreeSet::new();
    let mut layers_seen = BTreeSet::new();
    let roots = root_modules();
    assert!(
        roots.contains("control") && roots.contains("vhost"),
        "{roots:?}"
    );
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let path = module_path(rel);
        let Some(layer) = path.first().cloned() else {
            continue; // lib.rs, main.rs: the roots.
        };
        let allowed =
            allowed(&layer).unwrap_or_else(|| panic!("{rel:?}: layer `{layer}` has no rule here"));
        layers_seen.insert(layer.clone());
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        for (name, line) in root_modules_named(&code, &path) {
            if !roots.contains(&name) || name == layer || allowed.contains(&name.as_str()) {
                continue;
            }
            if let Some(e) = KNOWN_EXCEPTIONS
                .iter()
                .find(|(from, to, _)| *from == layer && *to == name)
            {
                exceptions_used.insert((e.0, e.1));
                continue;
            }
            violations.push(format!(
                "src/{}:{line}: `{layer}` uses `crate::{name}` (allowed: {allowed:?})",
                rel.display()
            ));
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies must point down:\n{}",
        violations.join("\n")
    );
    for (from, to, _) in KNOWN_EXCEPTIONS {
        assert!(
            exceptions_used.contains(&(*from, *to)),
            "KNOWN_EXCEPTIONS lists {from} -> {to}, which no longer happens: remove it"
        );
    }
    for layer in [
        "control",
        "vhost",
        "fuse",
        "backend",
        "confine",
        "accounting",
    ] {
        assert!(layers_seen.contains(layer), "no source found for `{layer}`");
    }
}

#[test]
fn only_the_assembly_points_read_the_command_line() {
    let src = src_dir();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut readers = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let code: Vec<char> = code_only(&std::fs::read_to_string(file).unwrap())
            .chars()
            .collect();
        let names_cli = (0..code.len()).any(|i| is_word_start(&code, i, "cli"));
        if names_cli && !CLI_READERS.iter().any(|r| Path::new(r) == rel) {
            readers.push(rel.display().to_string());
        }
    }
    assert!(
        readers.is_empty(),
        "these modules name `cli`; take an option type of their own, built by cli.rs: {readers:?}"
    );
}

/// The checker itself: it must see through comments and strings, and catch each form of path.
#[test]
fn the_checker_finds_each_form_of_import() {
    let names = |text: &str, path: &[&str]| -> Vec<String> {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        root_modules_named(&code_only(text), &path)
            .into_iter()
            .map(|(n, _)| n)
            .collect()
    };
    assert_eq!(
        names("use crate::control::cli::X;", &["backend", "passthrough"]),
        ["control"]
    );
    assert_eq!(
        names(
            "use crate::{size, control::{cli, daemon}};",
            &["confine", "seccomp"]
        ),
        ["size", "control"]
    );
    assert_eq!(
        names("use super::super::control::cli;", &["accounting", "report"]),
        ["control"]
    );
    assert!(names("use super::journal::Record;", &["accounting", "report"]).is_empty());
    assert_eq!(names("use super::vhost;", &["accounting"]), ["vhost"]);
    assert!(names("// crate::control\n/* crate::control */", &["fuse"]).is_empty());
    assert!(names(
        r##"let s = "crate::control"; let r = r#"crate::vhost"#;"##,
        &["fuse"]
    )
    .is_empty());
    assert_eq!(
        names("let q = '\"'; crate::vhost::x()", &["fuse"]),
        ["vhost"]
    );
    assert_eq!(
        names("fn f<'a>(x: &'a u8) { crate::control::y() }", &["fuse"]),
        ["control"]
    );
}

/// Calls that end the process other than through `process::exit_now`.
const FORBIDDEN_EXITS: &[&str] = &["process::exit(", "libc::exit(", "process::abort("];

/// `file:line: code` for each forbidden exit call in the Rust files under `dir`.
fn exit_calls(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(dir, &mut files);
    let mut found = Vec::new();
    for file in files {
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        for (n, line) in code.lines().enumerate() {
            if FORBIDDEN_EXITS.iter().any(|f| line.contains(f)) {
                found.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
            }
        }
    }
    found
}

#[test]
fn the_process_ends_only_through_exit_now() {
    let mut found = exit_calls(&src_dir());
    found.extend(exit_calls(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../cephfs-backend/src"),
    ));
    assert!(
        found.is_empty(),
        "exit through virtiofsd_kr::process::exit_now instead:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_exit_check_sees_a_call_and_not_a_comment_or_a_string() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.rs"),
        "fn f() {\n    // std::process::exit(0) in a comment\n    let _ = \"process::exit(1)\";\n    std::process::exit(3);\n}\n",
    )
    .unwrap();
    let found = exit_calls(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with("a.rs:4: std::process::exit(3);"),
        "{found:?}"
    );
}

/// The crate names of the `[patch.crates-io]` table of the Cargo.toml at `path`.
fn patched_crates(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut in_patch = false;
    let mut names = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_patch = line == "[patch.crates-io]";
        } else if in_patch && !line.starts_with('#') {
            if let Some((name, _)) = line.split_once('=') {
                names.insert(name.trim().to_string());
            }
        }
    }
    names
}

/// The fuzz workspace builds virtiofsd-kr too, so it must patch the same crates: it once
/// patched only fuse-backend-rs and failed to build when the daemon started using the
/// patched vhost-user-backend's API (and fuzzed the unpatched vhost's SHMEM bit meanwhile).
#[test]
fn the_fuzz_workspace_patches_the_crates_the_main_workspace_patches() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let main = patched_crates(&root.join("Cargo.toml"));
    let fuzz = patched_crates(&root.join("fuzz/Cargo.toml"));
    assert!(main.contains("vhost-user-backend"), "{main:?}");
    assert_eq!(
        fuzz, main,
        "fuzz/Cargo.toml [patch.crates-io] against Cargo.toml's"
    );
}
