//! Each integrator's own argument list boots a guest: the daemon started exactly as Kata's Go
//! runtime, Kata runtime-rs, libvirt and cloud-hypervisor's documentation start the reference
//! virtiofsd (an inherited listening socket with `--fd` where they pass one), the guest mounts
//! the share and does real I/O, and the daemon exits 0 when the guest powers off.
//!
//! The lists are the ones in `cli.rs`'s `integrators_argument_lists_are_accepted`; that test
//! checks the parse, these check that a daemon so started serves a real guest.

use vm_tests::daemon::DaemonConfig;
use vm_tests::workload::{script, temp_share};
use vm_tests::VmBuilder;

const BODY: &str = r#"
check hello "from the host" "$(cat /data/hello.txt)"
echo "from the guest" > /data/guest.txt; check write 0 "$?"
check sync_ok 0 "$(sync; echo $?)"
"#;

/// Boots a guest on a daemon started with `args` (placeholders: `{socket}`, `{shared_dir}`,
/// `{fd}`), the listening socket inherited as descriptor 3 when `inherit` is set.
fn boots(name: &str, args: &[&str], inherit: bool) -> String {
    let share = temp_share();
    std::fs::write(share.path().join("hello.txt"), "from the host\n").unwrap();
    let config = DaemonConfig {
        command_line: Some(args.iter().map(|a| a.to_string()).collect()),
        inherited_fd: inherit.then_some(3),
        ..DaemonConfig::default()
    };
    let out = VmBuilder::new()
        .name(name)
        .share(share.path())
        .daemon_config(config)
        .workload(&script(BODY))
        .run()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    out.assert_checks_passed();
    assert_eq!(
        std::fs::read_to_string(share.path().join("guest.txt")).unwrap(),
        "from the guest\n",
        "{name}"
    );
    let daemon = out.daemon.as_ref().expect("a daemon ran");
    assert!(
        daemon.status.and_then(|s| s.code()) == Some(0) && !daemon.timed_out,
        "{name}: the daemon must exit 0 after the guest powers off: {:?}\n{}",
        daemon.status,
        daemon.log
    );
    daemon.log.clone()
}

#[test]
fn kata_go_runtime() {
    // virtiofsd.go: --syslog --cache=X --shared-dir=D --fd=N, plus its default extra
    // arguments. runtime-rs also waits for the "Waiting for vhost-user socket connection" line.
    let log = boots(
        "kata-go",
        &[
            "--syslog",
            "--cache=auto",
            "--shared-dir={shared_dir}",
            "--fd={fd}",
            "--thread-pool-size=1",
            "--announce-submounts",
        ],
        true,
    );
    assert!(
        log.contains("Waiting for vhost-user socket connection"),
        "{log}"
    );
}

#[test]
fn kata_legacy_options() {
    boots(
        "kata-legacy",
        &[
            "--fd={fd}",
            "--shared-dir={shared_dir}",
            "-o",
            "announce_submounts,cache=never,xattr",
            "-f",
        ],
        true,
    );
}

#[test]
fn kata_runtime_rs() {
    boots(
        "kata-rs",
        &[
            "--socket-path={socket}",
            "--shared-dir={shared_dir}",
            "--cache=never",
            "--sandbox=none",
            "--seccomp=none",
        ],
        false,
    );
}

#[test]
fn libvirt() {
    // libvirt passes the listening socket and the domain's <binary> settings.
    boots(
        "libvirt",
        &[
            "--fd={fd}",
            "--shared-dir={shared_dir}",
            "--xattr",
            "--cache=always",
            "--thread-pool-size=4",
        ],
        true,
    );
}

#[test]
fn cloud_hypervisor_docs() {
    boots(
        "cloud-hypervisor",
        &[
            "--socket={socket}",
            "--shared-dir={shared_dir}",
            "--cache=never",
        ],
        false,
    );
}
