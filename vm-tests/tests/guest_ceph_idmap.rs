//! Guest/host ID translation (`--translate-uid/-gid`) on a CephFS volume served with
//! `--backend cephfs`: the export layer translates for every backend, so files the guest's
//! root creates are owned in CephFS by the mapped IDs (checked through an admin libcephfs
//! mount), and CephFS owners are shown to the guest as guest IDs.
//!
//! Needs root, QEMU and the single-node dev cluster (`scripts/ceph-dev-cluster.sh start`,
//! started here when it is not running; the test fails, never skips, when it cannot start).

mod common;

use std::time::Duration;

use common::ceph::CephVolume;
use common::host_view::HostView;
use common::posix_suite::assert_no_failed_checks;
use vm_tests::workload::script;
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
