//! The configuration the daemon's Ceph clients run with: its libcephfs mounts and its
//! librados handles (accounting sink, volume administration).
//!
//! Owns reading a value back from a client's conf (`read_value`), which options route a
//! client's log out of the process, which log subsystems a client has, and the rule for
//! their levels (`quiet_unless_routed`). With no file, no stderr and no other route a
//! client's log reaches nobody, yet by default Ceph formats entries up to level 5
//! (`debug_client = 0/5`: kept in memory for a crash dump that has nowhere to go) and wakes
//! its log thread for each: a fifth of the CPU of a cold 4 KiB read (tests/probe.rs
//! `cold_read_cost`). Sees a client only through the functions it is given (the `unsafe`
//! library calls stay in `mount` and `rados`); opens nothing and talks to no cluster.

use std::ffi::{c_int, CString};
use std::io;

/// Reads the value of `option` with `get_into(option, buf)`, a libcephfs or librados
/// `*_conf_get` call: it returns 0 with a NUL-terminated value in `buf`, or a negative errno;
/// on `-ENAMETOOLONG` a buffer four times larger is tried, up to 1 MiB.
pub(crate) fn read_value(
    option: &str,
    mut get_into: impl FnMut(&std::ffi::CStr, &mut [u8]) -> c_int,
) -> io::Result<String> {
    let o = CString::new(option).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let mut buf = vec![0u8; 256];
    loop {
        let ret = get_into(&o, &mut buf);
        if ret == -libc::ENAMETOOLONG && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        crate::error::check(ret)?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        return Ok(String::from_utf8_lossy(&buf[..end]).into_owned());
    }
}

/// Options that send a client's log out of the process when the conf sets them (the daemon
/// already turned off the file and stderr). The journald ones are Reef's; unknown to Pacific.
pub(crate) const LOG_ROUTES: [&str; 6] = [
    "log_to_syslog",
    "err_to_syslog",
    "log_to_graylog",
    "err_to_graylog",
    "log_to_journald",
    "err_to_journald",
];

/// Every Ceph log subsystem a client links in (Pacific's list, and Reef's additions, which
/// Pacific does not know and skips).
pub(crate) const LOG_SUBSYSTEMS: &[&str] = &[
    "none",
    "lockdep",
    "context",
    "crush",
    "mds",
    "mds_balancer",
    "mds_locker",
    "mds_log",
    "mds_log_expire",
    "mds_migrator",
    "buffer",
    "timer",
    "filer",
    "striper",
    "objecter",
    "rados",
    "rbd",
    "rbd_mirror",
    "rbd_replay",
    "rbd_pwl",
    "journaler",
    "objectcacher",
    "immutable_obj_cache",
    "client",
    "osd",
    "optracker",
    "objclass",
    "filestore",
    "journal",
    "ms",
    "mon",
    "monc",
    "paxos",
    "tp",
    "auth",
    "crypto",
    "finisher",
    "reserver",
    "heartbeatmap",
    "perfcounter",
    "rgw",
    "rgw_sync",
    "javaclient",
    "asok",
    "throttle",
    "refs",
    "compressor",
    "bluestore",
    "bluefs",
    "bdev",
    "kstore",
    "rocksdb",
    "leveldb",
    "memdb",
    "fuse",
    "mgr",
    "mgrc",
    "dpdk",
    "eventtrace",
    "prioritycache",
    "test",
    "cephfs_mirror",
    "cephsqlite",
    "seastore",
    "seastore_onode",
    "seastore_odata",
    "seastore_omap",
    "seastore_tm",
    "seastore_t",
    "seastore_cleaner",
    "seastore_epm",
    "seastore_lba",
    "seastore_fixedkv_tree",
    "seastore_cache",
    "seastore_journal",
    "seastore_device",
    "seastore_backref",
    "alienstore",
    "mclock",
    "cyanstore",
    "ceph_exporter",
    "memstore",
    "trace",
    "rgw_datacache",
    "rgw_access",
    "rgw_dbstore",
    "rgw_flight",
    "rgw_lifecycle",
    "rgw_notification",
    "rgw_restore",
    "jaeger",
];

/// Sets every log subsystem to `0/0` (no entry below an error), unless the conf routes the
/// log somewhere (syslog, graylog, journald), in which case its levels are the operator's.
/// `get` reads an option of the client's conf, `set` sets one; a subsystem this client's
/// release does not know (`is_unknown` of `set`'s error) is skipped.
pub(crate) fn quiet_unless_routed<E>(
    get: impl Fn(&str) -> std::io::Result<String>,
    mut set: impl FnMut(&str, &str) -> Result<(), E>,
    is_unknown: impl Fn(&E) -> bool,
) -> Result<(), E> {
    if LOG_ROUTES
        .iter()
        .any(|option| get(option).is_ok_and(|v| v == "true"))
    {
        return Ok(());
    }
    for subsys in LOG_SUBSYSTEMS {
        match set(&format!("debug_{subsys}"), "0/0") {
            Err(e) if is_unknown(&e) => {}
            other => other?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A conf as a map; unknown options are ENOENT on get and set, as in Ceph.
    fn run(conf: &[(&str, &str)], known: &[&str]) -> BTreeMap<String, String> {
        let conf = std::cell::RefCell::new(
            conf.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        );
        quiet_unless_routed(
            |o| {
                conf.borrow()
                    .get(o)
                    .cloned()
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
            },
            |o, v| {
                if o.starts_with("debug_") && !known.contains(&o) {
                    return Err(io::Error::from_raw_os_error(libc::ENOENT));
                }
                conf.borrow_mut().insert(o.to_string(), v.to_string());
                Ok(())
            },
            |e| e.raw_os_error() == Some(libc::ENOENT),
        )
        .expect("unknown subsystems are skipped");
        conf.into_inner()
    }

    #[test]
    fn every_known_subsystem_goes_quiet_unless_the_log_is_routed() {
        let known = ["debug_client", "debug_ms", "debug_objecter"];
        let conf = run(
            &[("debug_client", "0/5"), ("log_to_syslog", "false")],
            &known,
        );
        for k in known {
            assert_eq!(conf.get(k).map(String::as_str), Some("0/0"), "{k}");
        }
        assert!(!conf.contains_key("debug_rgw"), "an unknown one is skipped");
        for route in LOG_ROUTES {
            let conf = run(&[("debug_client", "3/7"), (route, "true")], &known);
            assert_eq!(conf["debug_client"], "3/7", "{route}");
            assert!(!conf.contains_key("debug_ms"), "{route}");
        }
    }

    #[test]
    fn a_value_longer_than_the_first_buffer_is_read_whole() {
        let value = "x".repeat(2000);
        let mut calls = 0;
        let got = read_value("some_option", |o, buf| {
            calls += 1;
            assert_eq!(o.to_bytes(), b"some_option");
            if buf.len() <= value.len() {
                return -libc::ENAMETOOLONG;
            }
            buf[..value.len()].copy_from_slice(value.as_bytes());
            buf[value.len()] = 0;
            0
        })
        .unwrap();
        assert_eq!(got, value);
        assert_eq!(calls, 3, "256, 1024, then 4096 bytes");
        let missing = read_value("nope", |_, _| -libc::ENOENT).unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn an_error_other_than_unknown_is_returned() {
        let r = quiet_unless_routed(
            |_| Ok("false".to_string()),
            |_, _| Err(io::Error::from_raw_os_error(libc::EINVAL)),
            |e| e.raw_os_error() == Some(libc::ENOENT),
        );
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    }
}
