//! The modern guest rig: QEMU 11.1 (Debian trixie-backports, run from `.cache/trixie-root`)
//! and Debian trixie's 6.12 kernel, built by `scripts/setup.sh`. The daemon works as a drop-in
//! on `vhost-user-fs-pci`, and with `--dax-window` QEMU 11.1's generic vhost-user device gives
//! the guest a DAX window (the SHMEM protocol feature at bit 22).

use vm_tests::workload::{script, temp_share};
use vm_tests::VmBuilder;

#[test]
fn qemu_11_1_runs_the_6_12_guest_on_vhost_user_fs_pci() {
    let share = temp_share();
    std::fs::write(share.path().join("hello.txt"), "hello from the host\n").unwrap();
    let out = VmBuilder::new()
        .name("modern-drop-in")
        .modern()
        .share(share.path())
        .workload(&script(
            r#"
r kernel "$(uname -r)"
check hello "hello from the host" "$(cat /data/hello.txt)"
echo "from the guest" > /data/guest.txt
check write "from the guest" "$(cat /data/guest.txt)"
check no_window yes "$(dmesg | grep -q 'Cache len' && echo no || echo yes)"
"#,
        ))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    let kernel = out.value("kernel").to_string();
    out.check(kernel.starts_with("6.12."), &format!("kernel {kernel}"));
    out.check(
        out.qemu_command.contains("qemu11.sh"),
        "QEMU 11.1 wrapper not used",
    );
    assert_eq!(
        std::fs::read_to_string(share.path().join("guest.txt")).unwrap(),
        "from the guest\n"
    );
}

#[test]
fn dax_window_reaches_the_guest_and_dax_always_mounts() {
    let share = temp_share();
    let out = VmBuilder::new()
        .name("modern-dax-window")
        .modern()
        .share(share.path())
        .dax_window("64M")
        .mount_options("dax=always")
        .workload(&script(
            r#"
check cache_len yes "$(dmesg | grep -q 'virtiofs virtio0: Cache len: 0x4000000' && echo yes)"
check dax_mount yes "$(grep ' /data virtiofs ' /proc/mounts | grep -q 'dax=always' && echo yes)"
"#,
        ))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
}
