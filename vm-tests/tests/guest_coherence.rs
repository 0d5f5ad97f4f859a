//! Coherence between two guests, each with its own daemon, sharing one host directory.
//!
//! Guest B first reads the files (so its caches hold the old state) and starts polling; then
//! guest A overwrites one file in place (same size), creates a new file and appends to a third,
//! each written and closed. The delay until B sees each change is measured on the host from
//! the arrival times of A's "wrote" and B's "seen" console lines. For `cache=never` and
//! `cache=auto` every change must become visible (within 10 s); for `cache=always` the wait
//! is bounded and the outcome is only recorded.

use std::sync::Mutex;
use std::time::Duration;

use vm_tests::workload::{script, temp_share};
use vm_tests::{CacheMode, VmBuilder};

/// The modes run one after another: two TCG guests per mode already fill two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const WRITER: &str = r#"
r ready 1
read -r cmd
r got "$cmd"
echo "v2-new" > /data/ow.txt
r wrote_overwrite 1
echo "created" > /data/new.txt
r wrote_new 1
echo "line2" >> /data/ap.txt
r wrote_append 1
sync
"#;

fn reader(poll_secs: u32) -> String {
    format!(
        r#"
check primed_ow v1-old "$(cat /data/ow.txt)"
check primed_ap line1 "$(tail -1 /data/ap.txt)"
check primed_new ERR "$(err cat /data/new.txt)"
stat /data/ow.txt /data/ap.txt >/dev/null
r primed 1
read -r cmd
r polling 1
end=$(( $(date +%s) + {poll_secs} ))
n=0; sow=; snew=; sap=
while :; do
    n=$((n + 1))
    if [ -z "$sow" ] && [ "$(cat /data/ow.txt)" = v2-new ]; then sow=1; r seen_overwrite $n; fi
    if [ -z "$snew" ] && [ "$(cat /data/new.txt 2>/dev/null)" = created ]; then snew=1; r seen_new $n; fi
    if [ -z "$sap" ] && [ "$(tail -1 /data/ap.txt)" = line2 ]; then sap=1; r seen_append $n; fi
    [ -n "$sow" ] && [ -n "$snew" ] && [ -n "$sap" ] && break
    [ "$(date +%s)" -ge "$end" ] && break
done
r polls $n
r final_ow "$(cat /data/ow.txt)"
r final_ap "$(tail -1 /data/ap.txt)"
r final_new "$(cat /data/new.txt 2>/dev/null)"
"#
    )
}

struct Measured {
    overwrite: Option<Duration>,
    new_file: Option<Duration>,
    append: Option<Duration>,
}

fn fmt(d: Option<Duration>, limit: u32) -> String {
    match d {
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1000.0),
        None => format!("not seen within {limit} s"),
    }
}

fn coherence(cache: CacheMode, poll_secs: u32) -> Measured {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let share = temp_share();
    std::fs::write(share.path().join("ow.txt"), "v1-old\n").unwrap();
    std::fs::write(share.path().join("ap.txt"), "line1\n").unwrap();
    let guest = |name: &str, body: &str| {
        VmBuilder::new()
            .name(&format!("coherence-{cache}-{name}"))
            .share(share.path())
            .cache(cache)
            .smp(1)
            .memory_mib(512)
            .workload(&script(body))
            .timeout(Duration::from_secs(240))
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let mut a = guest("A", WRITER);
    let mut b = guest("B", &reader(poll_secs));
    let wait = Duration::from_secs(200);
    let steps = (|| -> vm_tests::Result<()> {
        a.wait_for("ready", wait)?;
        b.wait_for("primed", wait)?;
        b.send_line("poll")?;
        b.wait_for("polling", wait)?;
        std::thread::sleep(Duration::from_millis(300));
        a.send_line("go")?;
        a.wait_for("wrote_append", wait)?;
        b.wait_for("polls", wait + Duration::from_secs(poll_secs.into()))?;
        Ok(())
    })();
    let out_a = a.wait().unwrap_or_else(|e| panic!("{e}"));
    let out_b = b.wait().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = steps {
        panic!("{e}\n{}\n{}", out_a.report(), out_b.report());
    }
    for out in [&out_a, &out_b] {
        let failed = vm_tests::workload::failed_checks(&out.results);
        out.check(failed.is_empty(), &format!("failed checks: {failed:?}"));
        out.assert_ok();
    }
    let delay = |wrote: &str, seen: &str| {
        let w = out_a.results.entry(wrote)?.at;
        let s = out_b.results.entry(seen)?.at;
        Some(s.saturating_duration_since(w))
    };
    let m = Measured {
        overwrite: delay("wrote_overwrite", "seen_overwrite"),
        new_file: delay("wrote_new", "seen_new"),
        append: delay("wrote_append", "seen_append"),
    };
    eprintln!(
        "coherence cache={cache} (accel={}, {} polls by B): overwrite {}, new file {}, append {}; \
         B's final view: ow={:?} ap={:?} new={:?}",
        out_b.accel,
        out_b.value("polls"),
        fmt(m.overwrite, poll_secs),
        fmt(m.new_file, poll_secs),
        fmt(m.append, poll_secs),
        out_b.value("final_ow"),
        out_b.value("final_ap"),
        out_b.value("final_new"),
    );
    // The host sees what A wrote, whatever the cache mode.
    assert_eq!(
        std::fs::read_to_string(share.path().join("ow.txt")).unwrap(),
        "v2-new\n"
    );
    assert_eq!(
        std::fs::read_to_string(share.path().join("ap.txt")).unwrap(),
        "line1\nline2\n"
    );
    assert_eq!(
        std::fs::read_to_string(share.path().join("new.txt")).unwrap(),
        "created\n"
    );
    let all_seen = m.overwrite.is_some() && m.new_file.is_some() && m.append.is_some();
    if cache != CacheMode::Always {
        out_b.check(
            all_seen,
            &format!("with cache={cache} guest B must see every change of guest A"),
        );
    }
    m
}

#[test]
fn two_guests_cache_never() {
    coherence(CacheMode::Never, 10);
}

#[test]
fn two_guests_cache_auto() {
    coherence(CacheMode::Auto, 10);
}

#[test]
fn two_guests_cache_always_recorded() {
    // Only recorded: with cache=always a guest may keep its cached view.
    coherence(CacheMode::Always, 5);
}
