//! The two-guest coherence measurement of `guest_coherence.rs`, shared by both backends: two
//! guests, each with its own daemon (for CephFS: its own libcephfs client), sharing one
//! directory or volume.
//!
//! Guest B first reads the files (so its caches hold the old state) and starts polling; then
//! guest A overwrites one file in place (same size), creates a new file and appends to a third,
//! each written and closed. The delay until B sees each change is measured on the host from
//! the arrival times of A's "wrote" and B's "seen" console lines. For `cache=never` and
//! `cache=auto` every change must become visible within the polling window and stay visible,
//! and every whole-file read must show content the file has had (a read that races a change may
//! show the old state, never bytes out of place); for `cache=always` and `cache=metadata` (attributes and names kept for a day) the outcome is
//! only recorded. The delays are printed and are part of every assertion message.

use std::sync::Mutex;
use std::time::Duration;

use vm_tests::workload::script;
use vm_tests::{CacheMode, ShareBackend, VmBuilder};

use super::host_view::HostView;

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

/// B's script. Each poll reads every file whole (newlines shown as commas, `ABSENT` for a
/// missing file) and reports, as `torn_<file>`, any content the file never had: a stale view is
/// what the cache modes trade for speed, bytes out of place never are.
fn reader(poll_secs: u32) -> String {
    format!(
        r#"
seen() {{ tr '\n' , < "$1" 2>/dev/null || echo ABSENT; }}
check primed_ow v1-old, "$(seen /data/ow.txt)"
check primed_ap line1, "$(seen /data/ap.txt)"
check primed_new ABSENT "$(seen /data/new.txt)"
stat /data/ow.txt /data/ap.txt >/dev/null
r primed 1
read -r cmd
r polling 1
end=$(( $(date +%s) + {poll_secs} ))
n=0; sow=; snew=; sap=
while :; do
    n=$((n + 1))
    ow=$(seen /data/ow.txt); new=$(seen /data/new.txt); ap=$(seen /data/ap.txt)
    case "$ow" in v1-old,|""|v2-new,) ;; *) r torn_ow "$ow" ;; esac
    case "$new" in ABSENT|""|created,) ;; *) r torn_new "$new" ;; esac
    case "$ap" in line1,|line1,line2,) ;; *) r torn_ap "$ap" ;; esac
    if [ -z "$sow" ] && [ "$ow" = v2-new, ]; then sow=1; r seen_overwrite $n; fi
    if [ -z "$snew" ] && [ "$new" = created, ]; then snew=1; r seen_new $n; fi
    if [ -z "$sap" ] && [ "$ap" = line1,line2, ]; then sap=1; r seen_append $n; fi
    [ -n "$sow" ] && [ -n "$snew" ] && [ -n "$sap" ] && break
    [ "$(date +%s)" -ge "$end" ] && break
done
r polls $n
r final_ow "$(seen /data/ow.txt)"
r final_ap "$(seen /data/ap.txt)"
r final_new "$(seen /data/new.txt)"
"#
    )
}

/// One of the two guests: one vCPU, 512 MiB, running `body`, its own daemon serving `backend`.
fn one_of_two(
    name: &str,
    backend: &ShareBackend,
    cache: CacheMode,
    body: &str,
) -> vm_tests::RunningVm {
    VmBuilder::new()
        .name(name)
        .backend(backend.clone())
        .cache(cache)
        .smp(1)
        .memory_mib(512)
        .workload(&script(body))
        .timeout(Duration::from_secs(240))
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// How long B took to see each of A's changes (`None`: not within the polling window).
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub overwrite: Option<Duration>,
    pub new_file: Option<Duration>,
    pub append: Option<Duration>,
}

fn fmt(d: Option<Duration>, limit: u32) -> String {
    match d {
        Some(d) => format!("{:.0} ms", d.as_secs_f64() * 1000.0),
        None => format!("not seen within {limit} s"),
    }
}

/// Runs the measurement for `cache`, B polling for up to `poll_secs`. `backend` is what both
/// daemons serve and `view` the host's view of it; `label` names the backend in messages.
pub fn coherence(
    label: &str,
    backend: ShareBackend,
    view: &dyn HostView,
    cache: CacheMode,
    poll_secs: u32,
) -> Measured {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let write = |path: &str, data: &[u8]| {
        view.write_file(path, data)
            .unwrap_or_else(|e| panic!("{e}"))
    };
    write("ow.txt", b"v1-old\n");
    write("ap.txt", b"line1\n");
    let guest = |name: &str, body: &str| {
        one_of_two(
            &format!("coherence-{label}-{cache}-{name}"),
            &backend,
            cache,
            body,
        )
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
    let torn: Vec<String> = ["torn_ow", "torn_ap", "torn_new"]
        .iter()
        .flat_map(|k| {
            out_b
                .results
                .get_all(k)
                .into_iter()
                .map(move |v| format!("{k}={v:?}"))
        })
        .collect();
    let summary = format!(
        "coherence backend={label} cache={cache} (accel={}, {} polls by B): overwrite {}, new \
         file {}, append {}; B's final view: ow={:?} ap={:?} new={:?}; content no file ever \
         had: {torn:?}",
        out_b.accel,
        out_b.value("polls"),
        fmt(m.overwrite, poll_secs),
        fmt(m.new_file, poll_secs),
        fmt(m.append, poll_secs),
        out_b.value("final_ow"),
        out_b.value("final_ap"),
        out_b.value("final_new"),
    );
    eprintln!("{summary}");
    // The host sees what A wrote, whatever the cache mode.
    let read = |path: &str| view.read_string(path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read("ow.txt"), "v2-new\n", "{summary}");
    assert_eq!(read("ap.txt"), "line1\nline2\n", "{summary}");
    assert_eq!(read("new.txt"), "created\n", "{summary}");
    let all_seen = m.overwrite.is_some() && m.new_file.is_some() && m.append.is_some();
    if matches!(cache, CacheMode::Never | CacheMode::Auto) {
        // Every read shows a state the file has had.
        out_b.check(
            torn.is_empty(),
            &format!("with cache={cache} guest B read bytes out of place: {summary}"),
        );
        out_b.check(
            all_seen,
            &format!("with cache={cache} guest B must see every change of guest A: {summary}"),
        );
        // Once seen, a change stays seen: B's last reads, after the polling, show A's writes.
        let final_view = (
            out_b.value("final_ow"),
            out_b.value("final_ap"),
            out_b.value("final_new"),
        );
        out_b.check(
            final_view == ("v2-new,", "line1,line2,", "created,"),
            &format!("with cache={cache} guest B's view went back to an older state: {summary}"),
        );
    }
    m
}

const APPENDER: &str = r#"
cat /data/shared.log >/dev/null
r ready 1
while read -r line; do
    [ "$line" = done ] && break
    echo "$line" >> /data/shared.log
    r "appended_$line" 1
done
"#;

/// Two guests take turns appending a line to one log (`echo line >> log`), each turn much
/// quicker than the attribute timeout, so the end of file each guest kernel writes at is the
/// one it saw before the other's last line. Every line must be in the log once, in turn
/// order, as `O_APPEND` writes on one host mount from two processes would leave it.
pub fn alternating_appends(
    label: &str,
    backend: ShareBackend,
    view: &dyn HostView,
    cache: CacheMode,
) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    view.write_file("shared.log", b"start\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let guest = |name: &str| {
        one_of_two(
            &format!("appends-{label}-{cache}-{name}"),
            &backend,
            cache,
            APPENDER,
        )
    };
    let mut a = guest("A");
    let mut b = guest("B");
    let wait = Duration::from_secs(200);
    let mut expected = String::from("start\n");
    let steps = (|| -> vm_tests::Result<()> {
        a.wait_for("ready", wait)?;
        b.wait_for("ready", wait)?;
        for turn in 0..6 {
            for (name, g) in [("A", &mut a), ("B", &mut b)] {
                let line = format!("{name}{turn}");
                g.send_line(&line)?;
                g.wait_for(&format!("appended_{line}"), wait)?;
                expected.push_str(&line);
                expected.push('\n');
            }
        }
        a.send_line("done")?;
        b.send_line("done")?;
        Ok(())
    })();
    let out_a = a.wait().unwrap_or_else(|e| panic!("{e}"));
    let out_b = b.wait().unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = steps {
        panic!("{e}\n{}\n{}", out_a.report(), out_b.report());
    }
    out_a.assert_ok();
    out_b.assert_ok();
    let log = view
        .read_string("shared.log")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        log, expected,
        "backend={label} cache={cache}: lines of one guest overwrote the other's"
    );
}
