//! `--readonly`: the guest reads the share, and every modifying operation fails with EROFS
//! without touching the host directory.

use vm_tests::workload::{script, temp_share};
use vm_tests::{CacheMode, VmBuilder};

const BODY: &str = r#"
check read "read me" "$(cat /data/file.txt)"
check ls "dir file.txt" "$(ls /data | tr '\n' ' ' | sed 's/ $//')"
check create ERR "$(err sh -c 'echo x > /data/new.txt')"
check create_erofs yes "$(sh -c 'echo x > /data/new.txt' 2>&1 | grep -q 'Read-only file system' && echo yes)"
check append ERR "$(err sh -c 'echo x >> /data/file.txt')"
check truncate ERR "$(err truncate -s 0 /data/file.txt)"
check unlink ERR "$(err rm /data/file.txt)"
check mkdir ERR "$(err mkdir /data/d2)"
check rmdir ERR "$(err rmdir /data/dir)"
check rename ERR "$(err mv /data/file.txt /data/moved.txt)"
check chmod ERR "$(err chmod 777 /data/file.txt)"
check touch ERR "$(err touch -d '2001-01-01 00:00:00' /data/file.txt)"
check symlink ERR "$(err ln -s file.txt /data/link)"
check link ERR "$(err ln /data/file.txt /data/hard)"
check read_after "read me" "$(cat /data/file.txt)"
"#;

#[test]
fn readonly_share_refuses_every_change() {
    let share = temp_share();
    std::fs::write(share.path().join("file.txt"), "read me\n").unwrap();
    std::fs::create_dir(share.path().join("dir")).unwrap();
    let before = std::fs::metadata(share.path().join("file.txt")).unwrap();
    let out = VmBuilder::new()
        .name("readonly")
        .share(share.path())
        .cache(CacheMode::Auto)
        .daemon_arg("--readonly")
        .workload(&script(BODY))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let failed = vm_tests::workload::failed_checks(&out.results);
    out.check(failed.is_empty(), &format!("failed checks: {failed:?}"));
    out.assert_ok();
    out.expect("read_after", "ok");
    let mut names: Vec<String> = std::fs::read_dir(share.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["dir", "file.txt"]);
    let after = std::fs::metadata(share.path().join("file.txt")).unwrap();
    assert_eq!(
        std::fs::read_to_string(share.path().join("file.txt")).unwrap(),
        "read me\n"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        (before.mode(), before.mtime()),
        (after.mode(), after.mtime())
    );
}
