//! Many files: 10,000 files are created, listed, stat'ed and removed in the guest, with the
//! counts checked in the guest and, between the phases, on the host.

use std::path::Path;
use std::time::Duration;

use vm_tests::workload::{script, temp_share, HELPER};
use vm_tests::{CacheMode, VmBuilder};

const N: usize = 10_000;

const BODY: &str = r#"
H=/bin/vmtest-helper
D=/data/many
mkdir $D
r phase_create_start 1
check created 10000 "$($H mkfiles $D 10000)"
r phase_list_start 1
check ls_count 10000 "$(ls $D | wc -l)"
check ls_long_count 10000 "$(ls -l $D | grep -c '^-')"
check ls_unique 10000 "$(ls $D | sort -u | wc -l)"
r phase_host_check 1
read -r answer
r host_said "$answer"
sync; echo 3 > /proc/sys/vm/drop_caches
r phase_stat_start 1
check stat_ok 10000 "$($H statfiles $D 10000)"
check content_9999 9999 "$(cat $D/f09999)"
r phase_remove_start 1
check removed 10000 "$($H rmfiles $D 10000)"
r phase_remove_end 1
check ls_after_remove 0 "$(ls -a $D | grep -vc '^\.\.\?$')"
rmdir $D; check rmdir 0 "$?"
"#;

#[test]
fn ten_thousand_files_created_listed_stated_removed() {
    let share = temp_share();
    let mut vm = VmBuilder::new()
        .name("manyfiles")
        .share(share.path())
        .cache(CacheMode::Auto)
        .program(Path::new(env!("CARGO_BIN_EXE_vmtest-helper")), HELPER)
        .unwrap()
        .workload(&script(BODY))
        .timeout(Duration::from_secs(600))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let phase = vm.wait_for("phase_host_check", Duration::from_secs(500));
    let host_count = match &phase {
        Ok(_) => {
            let dir = share.path().join("many");
            let entries: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
            let ok_contents = (0..N).step_by(997).all(|i| {
                std::fs::read_to_string(dir.join(format!("f{i:05}"))).ok() == Some(format!("{i}\n"))
            });
            let answer = if entries.len() == N && ok_contents {
                "ok"
            } else {
                "bad"
            };
            vm.send_line(answer).unwrap();
            Some((entries.len(), ok_contents))
        }
        Err(_) => None,
    };
    let out = vm.wait().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = phase {
        panic!("{e}\n{}", out.report());
    }
    out.assert_checks_passed();
    out.check(
        host_count == Some((N, true)),
        &format!("host saw {host_count:?} files/contents, want {N} with the right contents"),
    );
    out.expect("host_said", "ok");
    out.check(
        !share.path().join("many").exists(),
        "directory removed on the host",
    );

    let at = |k: &str| out.results.entry(k).map(|e| e.at).unwrap();
    let secs = |a: &str, b: &str| at(b).duration_since(at(a)).as_secs_f64();
    eprintln!(
        "manyfiles ({N}, accel={}): create {:.1}s, list x3 {:.1}s, stat {:.1}s, remove {:.1}s",
        out.accel,
        secs("phase_create_start", "phase_list_start"),
        secs("phase_list_start", "phase_host_check"),
        secs("phase_stat_start", "phase_remove_start"),
        secs("phase_remove_start", "phase_remove_end"),
    );
}

/// A guest holding four times as many inodes as the daemon may open descriptors: with
/// cache=always the guest keeps every inode it looked up (no FORGET), which with one O_PATH
/// descriptor per inode failed with EMFILE at the limit; file handles (the default) need no
/// descriptor per inode.
const HELD: usize = 4000;
const HELD_BODY: &str = r#"
H=/bin/vmtest-helper
D=/data/held
mkdir $D
check created 4000 "$($H mkfiles $D 4000)"
check ls_long_count 4000 "$(ls -l $D | grep -c '^-')"
check stat_ok 4000 "$($H statfiles $D 4000)"
check content_3999 3999 "$(cat $D/f03999)"
echo more > $D/one-more; check write_after 0 "$?"
check read_after more "$(cat $D/one-more)"
"#;

#[test]
fn a_guest_holds_four_times_more_files_than_the_descriptor_limit() {
    let share = temp_share();
    let out = VmBuilder::new()
        .name("heldfiles")
        .share(share.path())
        .cache(CacheMode::Always)
        .daemon_arg("--rlimit-nofile=1000")
        .program(Path::new(env!("CARGO_BIN_EXE_vmtest-helper")), HELPER)
        .unwrap()
        .workload(&script(HELD_BODY))
        .timeout(Duration::from_secs(600))
        .run()
        .unwrap_or_else(|e| panic!("{e}"));
    out.assert_checks_passed();
    let on_host = std::fs::read_dir(share.path().join("held"))
        .unwrap()
        .count();
    out.check(
        on_host == HELD + 1,
        &format!("host has {on_host} files, want {}", HELD + 1),
    );
}
