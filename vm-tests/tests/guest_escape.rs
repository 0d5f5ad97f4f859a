//! Escape attempts from the guest: `..` at the root of the share, host symlinks pointing
//! outside (`/etc`, `../..`, absolute paths), absolute symlinks made by the guest, and hard
//! links to such symlinks. The guest must never see the contents of a secret file placed
//! next to (outside) the shared directory, and must not create anything outside it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use vm_tests::workload::{script, temp_share};
use vm_tests::{CacheMode, VmBuilder, VmOutcome};

fn run_escape(cache: CacheMode, sandbox: Option<&str>) -> VmOutcome {
    let root = temp_share();
    let token = format!(
        "TOPSECRET-{}-{}",
        std::process::id(),
        root.path().display().to_string().len() * 7919
    );
    let secret = root.path().join("secret.txt");
    std::fs::write(&secret, format!("{token}\n")).unwrap();
    let share = root.path().join("share");
    std::fs::create_dir(&share).unwrap();
    std::fs::create_dir(share.join("dir")).unwrap();
    std::fs::write(share.join("dir/inside.txt"), "inside\n").unwrap();
    let ln =
        |target: &str, name: &str| std::os::unix::fs::symlink(target, share.join(name)).unwrap();
    ln("/etc", "etc_link");
    ln("../..", "up2");
    ln("..", "up1");
    ln("../secret.txt", "secret_rel");
    ln(&secret.display().to_string(), "secret_abs");
    ln(&root.path().display().to_string(), "root_abs");
    ln("../../secret.txt", "dir_secret_rel");
    std::fs::rename(share.join("dir_secret_rel"), share.join("dir/secret_rel2")).unwrap();

    let secret_path = secret.display().to_string();
    let root_path = root.path().display().to_string();
    let body = format!(
        r#"
SECRET_PATH='{secret_path}'
ROOT_PATH='{root_path}'
cd /data/dir; cd ../..; check dotdot_root_pwd / "$(pwd)"
check dotdot_is_guest_root yes "$([ -d /data/../proc/self ] && echo yes)"
check dotdot_no_secret ERR "$(err cat /data/../secret.txt)"
check dotdot_deep ERR "$(err cat /data/dir/../../secret.txt)"
check dotdot_share_name ERR "$(err ls /data/../share)"
# host symlinks are resolved by the guest, in the guest
check readlink_etc /etc "$(readlink /data/etc_link)"
check etc_is_guest_etc 1 "$(cat /data/etc_link/passwd | wc -l)"
check etc_no_host_files ERR "$(err cat /data/etc_link/hostname)"
check up2_is_guest_root yes "$([ -d /data/up2/proc/self ] && echo yes)"
check up1_is_guest_root yes "$([ -d /data/up1/proc/self ] && echo yes)"
check up1_no_secret ERR "$(err cat /data/up1/secret.txt)"
check secret_rel ERR "$(err cat /data/secret_rel)"
check secret_rel_deep ERR "$(err cat /data/dir/secret_rel2)"
check secret_abs ERR "$(err cat /data/secret_abs)"
check readlink_abs "$SECRET_PATH" "$(readlink /data/secret_abs)"
check root_abs ERR "$(err ls /data/root_abs/secret.txt)"
# print whatever the links lead to: the host checks the token never shows up
for p in /data/secret_rel /data/dir/secret_rel2 /data/secret_abs /data/up1/secret.txt \
         /data/up2/secret.txt /data/root_abs/secret.txt /data/../secret.txt "$SECRET_PATH"; do
    cat "$p" 2>/dev/null
done
ls -la /data /data/up1 /data/up2 /data/root_abs 2>&1
# symlinks created by the guest that point outside
ln -s "$SECRET_PATH" /data/guest_abs; check guest_abs_link ERR "$(err cat /data/guest_abs)"
ln -s ../secret.txt /data/dir/guest_rel; check guest_rel_link ERR "$(err cat /data/dir/guest_rel)"
ln -s /proc/self/root/"$SECRET_PATH" /data/guest_proc; check guest_proc_link ERR "$(err cat /data/guest_proc)"
# hard links: of a symlink (links the symlink itself), across filesystems (EXDEV)
ln /data/secret_rel /data/hl_secret_rel; check hardlink_symlink_rc 0 "$?"
check hardlink_symlink_readlink ../secret.txt "$(readlink /data/hl_secret_rel)"
check hardlink_symlink_cat ERR "$(err cat /data/hl_secret_rel)"
ln /data/secret_abs /data/hl_secret_abs
check hardlink_abs_cat ERR "$(err cat /data/hl_secret_abs)"
check hardlink_cross_fs ERR "$(err ln /etc/passwd /data/hl_passwd)"
# creating through the escape links lands in the guest, not on the host
mkdir /data/up2/guest_made_dir 2>/dev/null
echo x > /data/up1/guest_made_file 2>/dev/null
mv /data/dir/inside.txt /data/../moved_out.txt 2>/dev/null
check moved_out_in_guest yes "$([ -f /moved_out.txt ] && echo yes)"
sync
"#
    );
    let mut builder = VmBuilder::new()
        .name(&format!("escape-{cache}-{}", sandbox.unwrap_or("none")))
        .share(&share)
        .cache(cache)
        .workload(&script(&body));
    if let Some(s) = sandbox {
        builder = builder.sandbox(Some(s));
    }
    let out = builder.run().unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    out.expect("moved_out_in_guest", "ok");
    out.check(
        !out.serial_text().contains(&token),
        "the secret token appeared on the guest console",
    );

    // Host side: the secret is untouched, and nothing appeared outside the share.
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        format!("{token}\n")
    );
    assert_eq!(std::fs::metadata(&secret).unwrap().nlink(), 1);
    let mut outside: Vec<String> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    outside.sort();
    assert_eq!(outside, ["secret.txt", "share"]);
    for name in ["/guest_made_dir", "/guest_made_file", "/moved_out.txt"] {
        assert!(!Path::new(name).exists(), "{name} appeared on the host");
    }
    // Hard links of symlinks are symlinks on the host, not links to the secret.
    let hl = std::fs::symlink_metadata(share.join("hl_secret_rel")).unwrap();
    assert!(hl.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(share.join("hl_secret_rel")).unwrap(),
        Path::new("../secret.txt")
    );
    assert!(std::fs::symlink_metadata(share.join("hl_secret_abs"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(!share.join("hl_passwd").exists());
    out
}

#[test]
fn escape_attempts_fail_cache_auto() {
    run_escape(CacheMode::Auto, None);
}

#[test]
fn escape_attempts_fail_cache_never() {
    run_escape(CacheMode::Never, None);
}

#[test]
fn escape_attempts_fail_sandbox_namespace() {
    run_escape(CacheMode::Auto, Some("namespace"));
}

#[test]
fn escape_attempts_fail_sandbox_chroot() {
    run_escape(CacheMode::Auto, Some("chroot"));
}
