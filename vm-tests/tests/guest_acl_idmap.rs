//! POSIX ACLs (`--posix-acl`) and guest/host ID translation (`--translate-uid/-gid`) seen
//! from a real guest: ACLs set and read back with the guest kernel enforcing them for other
//! UIDs, a default ACL inherited (and replacing the umask), chmod keeping the ACL mask in step,
//! setgid cleared when a non-member sets an ACL; and, in a second guest without
//! `--posix-acl`, ACLs refused as before, files created by guest root owned on the host by the
//! mapped IDs, host owners shown as guest IDs, and chown translated.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::acl_suite::{access_acl, ACL_BODY};
use common::host_view::LocalDirView;
use common::posix_suite::assert_no_failed_checks;
use vm_tests::workload::{script, temp_share, HELPER};
use vm_tests::{CacheMode, VmBuilder};

fn helper() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vmtest-helper"))
}

#[test]
fn posix_acls_are_kept_enforced_and_inherited() {
    let share = temp_share();
    let out = VmBuilder::new()
        .name("posix-acl")
        .share(share.path())
        .cache(CacheMode::Auto)
        .daemon_arg("--posix-acl")
        .program(helper(), HELPER)
        .unwrap()
        .workload(&script(ACL_BODY))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_no_failed_checks(&out);
    out.assert_ok();
    out.expect("acl_done", "ok");

    // The ACLs live on the host as ACLs, with the guest's IDs.
    let host = LocalDirView::new(share.path());
    let g = access_acl(&host, "g");
    assert!(g.contains(&(0x02, 6, 1234)), "{g:?}");
    assert!(g.contains(&(0x10, 4, u32::MAX)), "mask after chmod: {g:?}");
    let f = access_acl(&host, "inh/f");
    assert!(f.contains(&(0x02, 6, 1234)), "{f:?}");
    let mode = |p: &str| std::fs::metadata(share.path().join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("inh/f"), 0o664);
    assert_eq!(mode("plain/f"), 0o644);
    assert_eq!(mode("s"), 0o770);
}

const IDMAP_BODY: &str = r#"
H=/bin/vmtest-helper
D=/data
check share_owner "0:0" "$(stat -c %u:%g $D)"
check host_owner "5:7" "$(stat -c %u:%g $D/hostfile)"
check host_root_squashed "65534:0" "$(stat -c %u:%g $D/rootfile)"
check listed_owner "5 7" "$(ls -ln $D | awk '$NF == "hostfile" {print $3, $4}')"
echo mine > $D/mine; check create 0 "$?"
check mine_owner "0:0" "$(stat -c %u:%g $D/mine)"
mkdir $D/d; check mkdir 0 "$?"
ln -s mine $D/sl; check symlink 0 "$?"
chown 3:4 $D/d; check chown 0 "$?"
check chown_owner "3:4" "$(stat -c %u:%g $D/d)"
check user_mkfile ok "$($H as 3 4 022 mkfile $D/d/byuser 644)"
check user_owner "3:4" "$(stat -c %u:%g $D/d/byuser)"
# Without --posix-acl, ACLs are refused as before; other attributes pass.
check no_acl ERR:EOPNOTSUPP "$($H setacl $D/mine access u::rw-,u:1234:rw-,g::r--,m::rw-,o::r--)"
check user_xattr ok "$($H setxattr $D/mine user.k v)"
r idmap_done ok
"#;

#[test]
fn translated_ids_own_guest_files_on_the_host_and_show_host_owners_as_guest_ids() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let share = temp_share();
    let dir = share.path();
    chown(dir, Some(1000), Some(2000)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("hostfile"), b"h").unwrap();
    chown(dir.join("hostfile"), Some(1005), Some(2007)).unwrap();
    std::fs::write(dir.join("rootfile"), b"r").unwrap();
    chown(dir.join("rootfile"), Some(0), Some(0)).unwrap();

    let out = VmBuilder::new()
        .name("idmap")
        .share(dir)
        .cache(CacheMode::Auto)
        .xattr(true)
        .daemon_arg("--translate-uid=map:0:1000:100")
        .daemon_arg("--translate-uid=squash-host:0:65534:1")
        .daemon_arg("--translate-gid=map:0:2000:100")
        .program(helper(), HELPER)
        .unwrap()
        .workload(&script(IDMAP_BODY))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_no_failed_checks(&out);
    out.assert_ok();
    out.expect("idmap_done", "ok");

    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(dir.join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("mine"), (1000, 2000));
    assert_eq!(owner("sl"), (1000, 2000));
    assert_eq!(owner("d"), (1003, 2004));
    assert_eq!(owner("d/byuser"), (1003, 2004));
    assert_eq!(owner("hostfile"), (1005, 2007));
}
