//! The librados binding (`cephfs_backend::rados`) against the real single-node dev cluster
//! (`scripts/ceph-dev-cluster.sh start`, run by `common::cluster`): declarations checked
//! against the installed header, connection errors, monitor commands with their output byte
//! for byte, whole-object round trips in namespaces, guarded writes, and a tenant-scoped
//! cephx identity that reaches its own namespace only. No mocks.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cephfs_backend::rados::{Rados, RadosError};
use common::{cluster, unique};

/// The pool these tests use (created once per cluster; tests separate by namespace).
const POOL: &str = "vkr-rados-test";
const TIMEOUT: Duration = Duration::from_secs(10);

fn admin() -> Rados {
    let c = cluster();
    Rados::connect(&c.conf, "admin", &c.admin_keyring, TIMEOUT)
        .unwrap_or_else(|e| panic!("admin connection to the dev cluster: {e}"))
}

/// Creates the test pool (a no-op when it exists) with `osd pool create` through the binding.
fn pool(rados: &Rados) -> &'static str {
    let reply = rados
        .mon_command(
            &format!(r#"{{"prefix": "osd pool create", "pool": "{POOL}", "pg_num": 8}}"#),
            b"",
        )
        .unwrap_or_else(|e| panic!("osd pool create: {e}"));
    assert!(reply.status.contains(POOL), "{reply:?}");
    rados
        .mon_command(
            &format!(
                concat!(
                    r#"{{"prefix": "osd pool application enable", "#,
                    r#""pool": "{}", "app": "virtiofsd-kr"}}"#
                ),
                POOL
            ),
            b"",
        )
        .unwrap_or_else(|e| panic!("osd pool application enable: {e}"));
    POOL
}

#[test]
fn declarations_match_the_installed_header() {
    let dir = std::env::temp_dir().join(format!("rados-decl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let src = dir.join("decl.c");
    let bin = dir.join("decl");
    // Each function assigned to a pointer of the type src/rados_ffi.rs declares: with
    // -Werror any difference in a parameter or return type fails the compilation.
    std::fs::write(
        &src,
        r#"
#include <stdio.h>
#include <rados/librados.h>
int (*p_create)(rados_t *, const char *const) = rados_create;
int (*p_conf_read_file)(rados_t, const char *) = rados_conf_read_file;
int (*p_conf_set)(rados_t, const char *, const char *) = rados_conf_set;
int (*p_conf_get)(rados_t, const char *, char *, size_t) = rados_conf_get;
int (*p_connect)(rados_t) = rados_connect;
void (*p_shutdown)(rados_t) = rados_shutdown;
int (*p_mon_command)(rados_t, const char **, size_t, const char *, size_t, char **, size_t *,
                   char **, size_t *) = rados_mon_command;
void (*p_buffer_free)(char *) = rados_buffer_free;
int (*p_ioctx_create)(rados_t, const char *, rados_ioctx_t *) = rados_ioctx_create;
void (*p_ioctx_destroy)(rados_ioctx_t) = rados_ioctx_destroy;
void (*p_set_namespace)(rados_ioctx_t, const char *) = rados_ioctx_set_namespace;
int (*p_write_full)(rados_ioctx_t, const char *, const char *, size_t) = rados_write_full;
int (*p_read)(rados_ioctx_t, const char *, char *, size_t, uint64_t) = rados_read;
int (*p_remove)(rados_ioctx_t, const char *) = rados_remove;
int (*p_list_open)(rados_ioctx_t, rados_list_ctx_t *) = rados_nobjects_list_open;
int (*p_list_next2)(rados_list_ctx_t, const char **, const char **, const char **, size_t *,
                  size_t *, size_t *) = rados_nobjects_list_next2;
void (*p_list_close)(rados_list_ctx_t) = rados_nobjects_list_close;
rados_write_op_t (*p_create_write_op)(void) = rados_create_write_op;
void (*p_release_write_op)(rados_write_op_t) = rados_release_write_op;
void (*p_op_create)(rados_write_op_t, int, const char *) = rados_write_op_create;
void (*p_op_cmpxattr)(rados_write_op_t, const char *, uint8_t, const char *, size_t) =
    rados_write_op_cmpxattr;
void (*p_op_setxattr)(rados_write_op_t, const char *, const char *, size_t) =
    rados_write_op_setxattr;
void (*p_op_write_full)(rados_write_op_t, const char *, size_t) = rados_write_op_write_full;
int (*p_op_operate)(rados_write_op_t, rados_ioctx_t, const char *, time_t *, int) =
    rados_write_op_operate;
int main(void) {
    printf("%d %d %d %zu\n", LIBRADOS_CREATE_EXCLUSIVE, LIBRADOS_CMPXATTR_OP_GT,
        LIBRADOS_OPERATION_NOFLAG, sizeof(time_t));
    return 0;
}
"#,
    )
    .expect("write C source");
    let cc = Command::new("cc")
        .args(["-Werror", "-Wall", "-Wno-unused-variable", "-o"])
        .arg(&bin)
        .arg(&src)
        .arg("-lrados")
        .output()
        .expect("run cc (apt install gcc librados-dev)");
    assert!(
        cc.status.success(),
        "compiling against <rados/librados.h> failed (is librados-dev installed? \
         scripts/ceph-dev-cluster.sh start installs it): {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(&bin).output().expect("run the program");
    let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let _ = std::fs::remove_dir_all(&dir);
    // Must equal the constants in src/rados_ffi.rs (time_t: libc's i64).
    assert_eq!(got, "1 3 0 8");
}

fn connect_err(conf: &Path, id: &str, keyring: &Path, timeout: Duration) -> (RadosError, String) {
    match Rados::connect(conf, id, keyring, timeout) {
        Ok(_) => panic!("connecting as client.{id} with {conf:?} / {keyring:?} succeeded"),
        Err(e) => {
            let text = e.to_string();
            (e, text)
        }
    }
}

#[test]
fn connect_errors_name_the_step_the_identity_and_the_cause() {
    let c = cluster();
    let dir = tempfile_dir("rados-connect");

    let missing = dir.join("missing.conf");
    let (e, text) = connect_err(&missing, "admin", &c.admin_keyring, TIMEOUT);
    assert!(matches!(e, RadosError::ConfFile { .. }), "{e:?}");
    assert!(text.contains("missing.conf"), "{text}");

    let missing = dir.join("missing.keyring");
    let (e, text) = connect_err(&c.conf, "admin", &missing, TIMEOUT);
    assert!(matches!(e, RadosError::Keyring { .. }), "{e:?}");
    assert!(text.contains("missing.keyring"), "{text}");

    // A well-formed key the monitors do not know for this user.
    let wrong = dir.join("wrong.keyring");
    std::fs::write(
        &wrong,
        "[client.admin]\n\tkey = AQBbAAAAAAAAABAAAAAAAAAAAAAAAAAAAAAAAA==\n",
    )
    .unwrap();
    let started = Instant::now();
    let (e, text) = connect_err(&c.conf, "admin", &wrong, TIMEOUT);
    println!("wrong key after {:.2?}: {text}", started.elapsed());
    assert!(matches!(e, RadosError::Connect { .. }), "{e:?}");
    assert!(
        matches!(e.errno(), Some(libc::EACCES) | Some(libc::EPERM)),
        "{e:?}"
    );
    assert!(text.contains("client.admin"), "{text}");
    assert!(text.contains("refused this key"), "{text}");

    // No monitor on that port: fails within the timeout, saying so.
    let nowhere = dir.join("nowhere.conf");
    std::fs::write(
        &nowhere,
        "[global]\nmon_host = v2:127.0.0.1:1\nms_bind_msgr1 = false\nlog_to_stderr = false\n\
         err_to_stderr = false\n",
    )
    .unwrap();
    let started = Instant::now();
    let (e, text) = connect_err(&nowhere, "admin", &c.admin_keyring, Duration::from_secs(2));
    let took = started.elapsed();
    println!("unreachable monitor after {took:.2?}: {text}");
    assert!(matches!(e, RadosError::Connect { .. }), "{e:?}");
    assert_eq!(e.errno(), Some(libc::ETIMEDOUT), "{e:?}");
    assert!(text.contains("no monitor answered within 2 s"), "{text}");
    assert!(took < Duration::from_secs(8), "took {took:?}");

    // A pool that does not exist.
    let rados = admin();
    let e = rados.ioctx(&unique("no-such-pool-"), "").unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert!(e.to_string().contains("no such pool"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn objects_round_trip_and_listing_stays_in_its_namespace() {
    let rados = admin();
    let pool = pool(&rados);
    let ns_a = unique("ns-a-");
    let ns_b = unique("ns-b-");
    let a = rados.ioctx(pool, &ns_a).unwrap();
    let b = rados.ioctx(pool, &ns_b).unwrap();
    assert_eq!((a.pool(), a.namespace()), (pool, ns_a.as_str()));
    assert!(a.list().unwrap().is_empty());

    a.write_full("one", b"first content").unwrap();
    a.write_full("two/with/slashes", b"").unwrap();
    b.write_full("one", b"namespace b").unwrap();
    assert_eq!(a.read("one").unwrap(), b"first content");
    assert_eq!(b.read("one").unwrap(), b"namespace b");
    assert_eq!(a.read("two/with/slashes").unwrap(), b"");
    // write_full replaces: a shorter content leaves nothing of the longer one.
    a.write_full("one", b"2nd").unwrap();
    assert_eq!(a.read("one").unwrap(), b"2nd");
    // Larger than the first read buffer (64 KiB), with every byte value: read whole.
    let big: Vec<u8> = (0..300_017u32).map(|i| (i * 7 % 256) as u8).collect();
    a.write_full("big", &big).unwrap();
    assert_eq!(a.read("big").unwrap(), big);

    assert_eq!(
        sorted(a.list().unwrap()),
        vec!["big", "one", "two/with/slashes"]
    );
    assert_eq!(b.list().unwrap(), vec!["one"]);

    a.remove("one").unwrap();
    let e = a.read("one").unwrap_err();
    assert!(e.is_not_found(), "{e:?}");
    assert!(e.to_string().contains(&ns_a), "{e}");
    assert!(a.remove("one").unwrap_err().is_not_found());
    assert_eq!(b.read("one").unwrap(), b"namespace b");
    assert_eq!(sorted(a.list().unwrap()), vec!["big", "two/with/slashes"]);
    for name in a.list().unwrap() {
        a.remove(&name).unwrap();
    }
    b.remove("one").unwrap();
    assert!(a.list().unwrap().is_empty() && b.list().unwrap().is_empty());
}

#[test]
fn guarded_writes_never_move_an_object_backwards() {
    let rados = admin();
    let io = rados.ioctx(pool(&rados), &unique("ns-guard-")).unwrap();
    const SEQ: &str = "test.seq";
    assert!(io.write_full_if_newer("s", SEQ, 5, b"five").unwrap());
    assert!(!io.write_full_if_newer("s", SEQ, 3, b"three").unwrap());
    assert!(!io.write_full_if_newer("s", SEQ, 5, b"five again").unwrap());
    assert_eq!(io.read("s").unwrap(), b"five");
    // 12 > 5 as numbers (and as zero-padded strings, which is what the OSD compares).
    assert!(io.write_full_if_newer("s", SEQ, 12, b"twelve").unwrap());
    assert!(!io.write_full_if_newer("s", SEQ, 9, b"nine").unwrap());
    assert_eq!(io.read("s").unwrap(), b"twelve");
    // An object written without a version takes any version.
    io.write_full("plain", b"unversioned").unwrap();
    assert!(io.write_full_if_newer("plain", SEQ, 1, b"one").unwrap());
    assert_eq!(io.read("plain").unwrap(), b"one");
    // Racing writers of versions 1..=40 on one object: the highest always ends up stored.
    let writers: Vec<_> = (0..4u64)
        .map(|t| {
            let rados = rados.clone();
            let ns = io.namespace().to_string();
            std::thread::spawn(move || {
                let io = rados.ioctx(POOL, &ns).unwrap();
                for v in (1..=10u64).map(|i| i * 4 - t) {
                    io.write_full_if_newer("raced", SEQ, v, v.to_string().as_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(io.read("raced").unwrap(), b"40");
    for name in io.list().unwrap() {
        io.remove(&name).unwrap();
    }
}

#[test]
fn mon_command_output_is_returned_byte_for_byte() {
    let rados = admin();
    let pool = pool(&rados);
    // Binary input with NUL bytes (no C string could carry it), stored and read back.
    let key = unique("vkr/test/");
    let value: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    rados
        .mon_command(
            &format!(r#"{{"prefix": "config-key set", "key": "{key}"}}"#),
            &value,
        )
        .unwrap();
    let reply = rados
        .mon_command(
            &format!(r#"{{"prefix": "config-key get", "key": "{key}"}}"#),
            b"",
        )
        .unwrap();
    assert_eq!(reply.output.len(), value.len());
    assert!(reply.output == value, "config-key get returned other bytes");
    rados
        .mon_command(
            &format!(r#"{{"prefix": "config-key rm", "key": "{key}"}}"#),
            b"",
        )
        .unwrap();
    let e = rados
        .mon_command(
            &format!(r#"{{"prefix": "config-key get", "key": "{key}"}}"#),
            b"",
        )
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e:?}");

    // JSON output, exactly as long as it is: ends with the closing bracket.
    let reply = rados
        .mon_command(r#"{"prefix": "osd pool ls", "format": "json"}"#, b"")
        .unwrap();
    let text = String::from_utf8(reply.output).expect("JSON is UTF-8");
    assert!(text.trim_end().starts_with('[') && text.trim_end().ends_with(']'));
    assert!(text.contains(&format!("\"{pool}\"")), "{text}");

    // A refused command: the monitors' status text is in the error.
    let e = rados
        .mon_command(
            r#"{"prefix": "osd pool get", "pool": "no-such-pool-x", "var": "size"}"#,
            b"",
        )
        .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e:?}");
    assert!(text.contains("osd pool get"), "{text}");
    assert!(text.contains("no-such-pool-x"), "{text}");
    let e = rados.mon_command("not json", b"").unwrap_err();
    assert!(matches!(e, RadosError::MonCommand { .. }), "{e:?}");
}

#[test]
fn a_tenant_scoped_identity_reaches_only_its_namespace() {
    let c = cluster();
    let rados = admin();
    let pool = pool(&rados);
    let tenant = unique("tenant-");
    let id = format!("acct-{tenant}");
    // The caps docs/accounting.md documents for a tenant's accounting identity.
    let reply = rados
        .mon_command(
            &format!(
                r#"{{"prefix": "auth get-or-create", "entity": "client.{id}",
                    "caps": ["mon", "allow r", "osd", "allow rw pool={pool} namespace={tenant}"]}}"#
            ),
            b"",
        )
        .unwrap();
    let keyring_text = String::from_utf8(reply.output).unwrap();
    assert!(
        keyring_text.contains(&format!("[client.{id}]")),
        "{keyring_text}"
    );
    let dir = tempfile_dir("rados-tenant");
    let keyring = dir.join("keyring");
    std::fs::write(&keyring, keyring_text).unwrap();

    let scoped = Rados::connect(&c.conf, &id, &keyring, TIMEOUT).unwrap();
    let own = scoped.ioctx(pool, &tenant).unwrap();
    own.write_full("record", b"mine").unwrap();
    assert_eq!(own.read("record").unwrap(), b"mine");
    assert!(own
        .write_full_if_newer("record", "v", 2, b"mine 2")
        .unwrap());
    assert_eq!(own.list().unwrap(), vec!["record"]);

    let other_ns = unique("other-");
    rados
        .ioctx(pool, &other_ns)
        .unwrap()
        .write_full("theirs", b"x")
        .unwrap();
    let other = scoped.ioctx(pool, &other_ns).unwrap();
    let e = other.write_full("intrusion", b"x").unwrap_err();
    assert_eq!(e.errno(), Some(libc::EPERM), "{e:?}");
    let e = other.read("theirs").unwrap_err();
    assert_eq!(e.errno(), Some(libc::EPERM), "{e:?}");
    assert!(other.list().is_err(), "listing another namespace must fail");
    // Nor may it change cluster state through the monitors.
    let e = scoped
        .mon_command(
            r#"{"prefix": "osd pool create", "pool": "not-allowed", "pg_num": 8}"#,
            b"",
        )
        .unwrap_err();
    assert!(
        matches!(e.errno(), Some(libc::EACCES) | Some(libc::EPERM)),
        "{e:?}"
    );

    own.remove("record").unwrap();
    rados
        .ioctx(pool, &other_ns)
        .unwrap()
        .remove("theirs")
        .unwrap();
    rados
        .mon_command(
            &format!(r#"{{"prefix": "auth rm", "entity": "client.{id}"}}"#),
            b"",
        )
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Like the CephFS mounts (`cephfs.rs`, the same name), a librados client keeps no log
/// nobody reads: every subsystem at `0/0` unless the conf sends the log somewhere, then the
/// conf's levels stand.
#[test]
fn the_client_log_is_quiet_unless_the_conf_sends_it_somewhere() {
    let c = cluster();
    let connect = |name: &str, extra: &str| {
        let conf = common::conf_variant(&format!("rlog-{name}"), &format!("[client]\n{extra}"));
        let rados = Rados::connect(&conf, "admin", &c.admin_keyring, TIMEOUT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let _ = std::fs::remove_file(&conf);
        let value = |option: &str| {
            rados
                .conf_value(option)
                .unwrap_or_else(|e| panic!("{name}: {option}: {e}"))
        };
        (
            value("debug_rados"),
            value("debug_objecter"),
            value("debug_monc"),
        )
    };
    let zero = ("0/0".to_string(), "0/0".to_string(), "0/0".to_string());
    assert_eq!(
        connect("default", ""),
        zero,
        "Ceph's defaults (0/5, 0/1, 0/10)"
    );
    assert_eq!(
        connect("levels-only", "debug_rados = 3/7"),
        zero,
        "levels with nowhere to go"
    );
    let (rados, objecter, _) = connect("syslog", "debug_rados = 3/7\nerr_to_syslog = true");
    assert_eq!(
        (rados.as_str(), objecter.as_str()),
        ("3/7", "0/1"),
        "a conf that routes the log out keeps its levels"
    );
}
