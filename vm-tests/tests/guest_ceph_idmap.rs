//! Guest/host ID translation (`--translate-uid/-gid`) and POSIX ACLs (`--posix-acl`) on a
//! CephFS volume served with `--backend cephfs`: the export layer translates for every
//! backend, so files the guest's root creates are owned in CephFS by the mapped IDs (checked
//! through an admin libcephfs mount), and CephFS owners are shown to the guest as guest IDs;
//! the ACL suite that runs on a host directory passes unchanged, with the ACLs kept in CephFS.
//!
//! Needs root, QEMU and the single-node dev cluster (`scripts/ceph-dev-cluster.sh start`,
//! started here when it is not running; the test fails, never skips, when it cannot start).

mod common;

use std::time::Duration;

use common::acl_suite::{access_acl, ACL_BODY};
use common::ceph::CephVolume;
use common::host_view::HostView;
use common::posix_suite::assert_no_failed_checks;
use vm_tests::workload::{script, HELPER};
use vm_tests::{CacheMode, VmBuilder};

const BODY: &str = r#"
D=/data
check host_owner "5:7" "$(stat -c %u:%g $D/hostfile)"
check dir_owner "0:0" "$(stat -c %u:%g $D/w)"
check listed_owner "5 7" "$(ls -ln $D | awk '$NF == "hostfile" {print $3, $4}')"
echo mine > $D/w/mine; check create 0 "$?"
check mine_owner "0:0" "$(stat -c %u:%g $D/w/mine)"
mkdir $D/w/d; check mkdir 0 "$?"
check d_owner "0:0" "$(stat -c %u:%g $D/w/d)"
r idmap_done ok
"#;

#[test]
fn translated_ids_own_guest_files_in_cephfs() {
    let volume = CephVolume::create("idmap");
    let view = volume.view();
    view.write_file("hostfile", b"h").unwrap();
    view.chown("hostfile", 1005, 2007).unwrap();
    view.mkdir("w").unwrap();
    view.chown("w", 1000, 2000).unwrap();

    let out = VmBuilder::new()
        .name("ceph-idmap")
        .ceph_share(volume.share())
        .cache(CacheMode::Auto)
        .daemon_arg("--translate-uid=map:0:1000:100")
        .daemon_arg("--translate-gid=map:0:2000:100")
        .timeout(Duration::from_secs(600))
        .workload(&script(BODY))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_no_failed_checks(&out);
    out.assert_ok();
    out.expect("idmap_done", "ok");

    for path in ["w/mine", "w/d"] {
        let st = view.stat(path).unwrap();
        assert_eq!((st.uid, st.gid), (1000, 2000), "{path}");
    }
}

#[test]
fn posix_acls_are_kept_enforced_and_inherited_on_cephfs() {
    let volume = CephVolume::create("acl");
    let view = volume.view();
    let out = VmBuilder::new()
        .name("ceph-posix-acl")
        .ceph_share(volume.share())
        .cache(CacheMode::Auto)
        .daemon_arg("--posix-acl")
        .program(
            std::path::Path::new(env!("CARGO_BIN_EXE_vmtest-helper")),
            HELPER,
        )
        .unwrap()
        .timeout(Duration::from_secs(600))
        .workload(&script(ACL_BODY))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_no_failed_checks(&out);
    out.assert_ok();
    out.expect("acl_done", "ok");

    // The ACLs live in CephFS as ACLs, with the guest's IDs.
    let acl = |p: &str| access_acl(&view, p);
    assert!(acl("g").contains(&(0x02, 6, 1234)), "{:?}", acl("g"));
    assert!(
        acl("inh/f").contains(&(0x02, 6, 1234)),
        "{:?}",
        acl("inh/f")
    );
    let mode = |p: &str| view.stat(p).unwrap().perm;
    assert_eq!(mode("inh/f"), 0o664);
    assert_eq!(mode("plain/f"), 0o644);
    assert_eq!(mode("s"), 0o770);
}
