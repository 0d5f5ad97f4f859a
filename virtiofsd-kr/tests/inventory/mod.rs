//! /proc and strace helpers shared by the sandbox and CephFS daemon tests: finding the
//! serving process under its supervisor, reading its status, and listing the system calls
//! an `strace -f` log shows after the seccomp filter went in.

#![allow(dead_code)]

use nix::unistd::Pid;

pub fn status_field(pid: Pid, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

pub fn children_of(parent: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let pid = Pid::from_raw(pid);
        if status_field(pid, "PPid").as_deref() == Some(&parent.to_string()) {
            out.push(pid);
        }
    }
    out
}

/// Processes below `pid` (children, grandchildren, ...).
pub fn descendants(pid: Pid) -> Vec<Pid> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            out.push(c);
            todo.push(c);
        }
    }
    out
}

/// Names of the system calls in an `strace -f` log made under a filter: by the thread that
/// called `seccomp(`, and by every thread that first appears after that (threads started
/// under the filter; their ids cannot be matched to clone's return value, which counts in
/// the daemon's own PID namespace).
pub fn syscalls_after_filter(log: &str) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut filtered = std::collections::HashSet::new();
    let mut before = std::collections::HashSet::new();
    let mut installed = false;
    for line in log.lines() {
        // "<tid> name(args...) = ret", "<tid> name(... <unfinished ...>" or
        // "<tid> <... name resumed>...) = ret".
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let name = match rest.strip_prefix("<... ") {
            Some(resumed) => resumed.split_once(' ').map(|(n, _)| n),
            None => rest.split_once('(').map(|(n, _)| n),
        };
        let Some(name) = name else { continue };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if name == "seccomp" {
            filtered.insert(tid.to_string());
            installed = true;
            continue;
        }
        if !installed {
            before.insert(tid.to_string());
            continue;
        }
        if !before.contains(tid) {
            filtered.insert(tid.to_string());
        }
        if filtered.contains(tid) {
            seen.insert(name.to_string());
        }
    }
    seen
}
