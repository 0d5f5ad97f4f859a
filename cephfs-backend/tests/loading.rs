//! libcephfs and librados are loaded at run time, not linked: a process using this crate maps
//! neither until `load_libcephfs` / `rados::load_librados` (or a connect) runs; loading starts
//! no thread (the daemon loads before its sandbox and may fork after) and is idempotent.
//!
//! Runs without the test harness (`harness = false` in Cargo.toml): the harness runs each test
//! on a thread of its own, so counting the process' threads would race with other tests.
//! Needs the libraries installed (`libcephfs2`, `librados2`), not the cluster.

use std::path::Path;

/// Thread ids of this process.
fn threads() -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("read /proc/self/task")
        .map(|entry| {
            entry
                .expect("task entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    ids.sort();
    ids
}

/// Paths of the shared objects mapped whose file name starts with `prefix`.
fn mapped(prefix: &str) -> Vec<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let mut paths: Vec<String> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| {
            Path::new(path)
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with(prefix))
        })
        .map(str::to_string)
        .collect();
    paths.dedup();
    paths
}

fn main() {
    let before = threads();
    assert_eq!(
        before.len(),
        1,
        "the test starts single-threaded: {before:?}"
    );
    for library in ["libcephfs.so", "librados.so", "libceph-common.so"] {
        assert_eq!(
            mapped(library),
            Vec::<String>::new(),
            "{library} is mapped before anything loaded it (is the crate linked against it?)"
        );
    }

    cephfs_backend::load_libcephfs().unwrap_or_else(|e| panic!("loading libcephfs: {e}"));
    let cephfs = mapped("libcephfs.so.2");
    assert_eq!(cephfs.len(), 1, "libcephfs.so.2 mapped once: {cephfs:?}");
    assert_eq!(mapped("libceph-common.so").len(), 1);
    assert_eq!(threads(), before, "loading libcephfs started a thread");

    cephfs_backend::load_libcephfs().unwrap_or_else(|e| panic!("loading libcephfs again: {e}"));
    assert_eq!(
        mapped("libcephfs.so.2"),
        cephfs,
        "a second load maps nothing new"
    );

    assert_eq!(
        mapped("librados.so"),
        Vec::<String>::new(),
        "librados comes with its own load"
    );
    cephfs_backend::rados::load_librados().unwrap_or_else(|e| panic!("loading librados: {e}"));
    cephfs_backend::rados::load_librados()
        .unwrap_or_else(|e| panic!("loading librados again: {e}"));
    assert_eq!(mapped("librados.so.2").len(), 1);
    assert_eq!(threads(), before, "loading librados started a thread");

    println!("loading: ok (libraries mapped only when loaded, no thread started, idempotent)");
}
