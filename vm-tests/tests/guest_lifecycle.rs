//! Guest lifecycle: a guest mounts the share, does real I/O, powers off, and the daemon
//! exits 0 by itself afterwards.

use vm_tests::workload::{script, temp_share};
use vm_tests::{CacheMode, DaemonConfig, ShareBackend, VmBuilder};

#[test]
fn daemon_exits_zero_when_the_guest_powers_off() {
    let share = temp_share();
    std::fs::write(share.path().join("hello.txt"), "hello from the host\n").unwrap();
    let body = r#"
check hello "hello from the host" "$(cat /data/hello.txt)"
echo "written by the guest" > /data/from-guest.txt
check sync_ok 0 "$(sync; echo $?)"
r mounts "$(grep -c ' /data virtiofs ' /proc/mounts)"
"#;
    let out = VmBuilder::new()
        .name("lifecycle")
        .share(share.path())
        .cache(CacheMode::Auto)
        .workload(&script(body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_ok();
    out.expect("hello", "ok");
    out.expect("mounts", "1");
    let daemon = out.daemon.as_ref().expect("a daemon ran");
    out.check(
        daemon.status.and_then(|s| s.code()) == Some(0) && !daemon.timed_out,
        "the daemon must exit 0 by itself after the guest powers off",
    );
    assert_eq!(
        std::fs::read_to_string(share.path().join("from-guest.txt")).unwrap(),
        "written by the guest\n"
    );
}

/// The paired bench's rig (`vmbench --paired`): two shares, each behind its own device and
/// daemon, each mounted where the workload expects it, and each daemon exits 0 at the end.
#[test]
fn a_second_share_is_served_by_its_own_daemon() {
    let (a, b) = (temp_share(), temp_share());
    std::fs::write(a.path().join("a.txt"), "first\n").unwrap();
    std::fs::write(b.path().join("b.txt"), "second\n").unwrap();
    let body = r#"
check first first "$(cat /data/a.txt)"
check second second "$(cat /data2/b.txt)"
check apart 1 "$(test -e /data2/a.txt || test -e /data/b.txt; echo $?)"
echo "to the second" > /data2/from-guest.txt
check sync_ok 0 "$(sync; echo $?)"
r mounts "$(grep -c ' /data2* virtiofs ' /proc/mounts)"
"#;
    let second = DaemonConfig {
        cache: CacheMode::Never,
        ..DaemonConfig::default()
    };
    let out = VmBuilder::new()
        .name("two-shares")
        .share(a.path())
        .cache(CacheMode::Auto)
        .second_share(ShareBackend::Passthrough(b.path().to_path_buf()), second)
        .workload(&script(body))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_ok();
    for key in ["first", "second", "apart"] {
        out.expect(key, "ok");
    }
    out.expect("mounts", "2");
    let second = out.second_daemon.as_ref().expect("a second daemon ran");
    out.check(
        second.success() && second.command.contains("--cache never"),
        "the second daemon, started with its own flags, must exit 0 after the guest powers off",
    );
    assert_eq!(
        std::fs::read_to_string(b.path().join("from-guest.txt")).unwrap(),
        "to the second\n"
    );
    assert!(!a.path().join("from-guest.txt").exists());
}

#[test]
fn daemon_with_its_default_sandbox_and_seccomp_exits_zero() {
    let share = temp_share();
    std::fs::write(share.path().join("hello.txt"), "hi\n").unwrap();
    let out = VmBuilder::new()
        .name("lifecycle-defaults")
        .share(share.path())
        .sandbox(None)
        .seccomp(None)
        .workload(&script(
            "check hello hi \"$(cat /data/hello.txt)\"\necho x > /data/x; sync\n",
        ))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_ok();
    out.expect("hello", "ok");
    assert!(!out.daemon.as_ref().unwrap().command.contains("--sandbox"));
    assert_eq!(
        std::fs::read_to_string(share.path().join("x")).unwrap(),
        "x\n"
    );
}

/// A guest that reports `before=sleep` and then sleeps past its `timeout_secs`.
fn sleeping_guest(name: &str, share: &std::path::Path, timeout_secs: u64) -> VmBuilder {
    VmBuilder::new()
        .name(name)
        .share(share)
        .workload("echo \"@@VMTEST before=sleep\"\nsleep 100000\n")
        .timeout(std::time::Duration::from_secs(timeout_secs))
}

#[test]
fn a_hung_guest_is_killed_at_the_deadline_and_reported() {
    let share = temp_share();
    let started = std::time::Instant::now();
    let out = sleeping_guest("hung", share.path(), 20)
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.timed_out, "{}", out.report());
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
    assert_eq!(out.results.get("before"), Some("sleep"));
    let problems = out.problems();
    assert!(
        problems.iter().any(|p| p.contains("did not power off")),
        "{problems:?}"
    );
    assert!(out.report().contains("@@VMTEST before=sleep"));
    assert!(out.results.init_at.is_some() && out.boot_retries.is_empty());
    // What every thread did at the deadline, taken before QEMU was killed: the guest's vCPUs
    // and the daemon's queue threads, and the daemon saying which queues the driver started.
    let report = out.report();
    for wanted in [
        "---- at the deadline, before QEMU was killed",
        "---- threads",
        " vring_worker ",
        "CPU 0/",
        "queue started queue=1",
    ] {
        assert!(report.contains(wanted), "no {wanted:?} in:\n{report}");
    }
    // QEMU was killed: the daemon must notice the disconnect and end by itself.
    let d = out.daemon.as_ref().unwrap();
    assert!(
        !d.timed_out,
        "daemon kept running after QEMU was killed\n{}",
        out.report()
    );
}

/// A guest kernel that does not reach /init (as one q35 guest did in a CI run: 180 s, not a
/// line on its console) is booted once more, and says so; here /init is a `sleep` that prints
/// nothing, so both boots hang the same way and the second is killed at its deadline.
#[test]
fn a_guest_that_never_reaches_init_is_booted_once_more_and_says_why() {
    let share = temp_share();
    let out = VmBuilder::new()
        .name("no-init")
        .share(share.path())
        // Arguments without `=` go to init: PID 1 is `sleep 1000`.
        .kernel_arg("rdinit=/bin/sleep")
        .kernel_arg("1000")
        .boot_limit(std::time::Duration::from_secs(8))
        .timeout(std::time::Duration::from_secs(15))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let report = out.report();
    assert_eq!(out.boot_retries.len(), 1, "{report}");
    assert!(
        out.boot_retries[0].contains("had not reached /init after 8s"),
        "{report}"
    );
    assert!(out.timed_out && out.results.init_at.is_none(), "{report}");
    // The boot was shown, up to where it stopped.
    assert!(
        report.contains("Run /bin/sleep as init process"),
        "{report}"
    );
    assert!(out
        .problems()
        .iter()
        .any(|p| p.contains("did not power off")));
}

/// A QEMU that never starts its guest is not a boot to retry: that is where a vhost-user
/// handshake stuck on the daemon would leave it. Here QEMU is started paused (`-S`).
#[test]
fn a_guest_that_never_starts_is_not_booted_again() {
    let out = VmBuilder::new()
        .name("paused")
        .qemu_arg("-S")
        .boot_limit(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(5))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    let report = out.report();
    assert!(out.boot_retries.is_empty(), "{report}");
    assert!(out.timed_out && out.serial.is_empty(), "{report}");
    assert!(report.contains("CPU 0/"), "{report}");
}

/// A guest that stops reporting (as one did once in a full run, with an empty serial log)
/// is reported with what the daemon logged and where each thread of the daemon and of QEMU
/// waits, so a hang in CI can be told apart: guest, daemon or QEMU.
#[test]
fn a_guest_that_stops_reporting_is_reported_with_the_daemon_and_qemu_threads() {
    let share = temp_share();
    let vm = sleeping_guest("silent", share.path(), 300)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    vm.wait_for("before", std::time::Duration::from_secs(240))
        .unwrap_or_else(|e| panic!("{e}"));
    let report = vm
        .wait_for("never", std::time::Duration::from_secs(1))
        .expect_err("nothing reports 'never'")
        .to_string();
    for wanted in [
        "@@VMTEST before=sleep",
        "---- daemon log",
        "waiting for the vhost-user frontend",
        "---- threads",
        " vring_worker ",
        " qemu-system-x86",
    ] {
        assert!(report.contains(wanted), "no {wanted:?} in:\n{report}");
    }
}
