//! The `gfs` Docker volume plugin driven by a real dockerd (Debian's docker.io 20.10) against
//! the single-node Ceph dev cluster: `docker volume create --driver gfs`, containers sharing
//! a volume, quota, removal while in use, a SIGKILLed plugin, a restarted dockerd, bad names
//! and options, data pools, and the per-container metrics.
//!
//! The test starts its own dockerd (own --data-root, --exec-root, -H unix://..., no
//! networking set-up) and the plugin inside a private mount namespace whose
//! `/run/docker/plugins` is a tmpfs: the plugin can listen at its default socket path, and a
//! dockerd of the host (if any) never sees it. The image is a busybox-static rootfs imported
//! with `docker import`; nothing is pulled. Needs root, docker.io, busybox-static, util-linux
//! (`unshare`, `nsenter`): `scripts/setup.sh` installs them. Fails, never skips, without them.

mod ceph_cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ceph_cluster::{cluster, unique, volume_cmd};
use nix::sys::signal::Signal;
use virtiofsd_kr::accounting::server::{http_request, MetricsAddr};

const BIN: &str = env!("CARGO_BIN_EXE_virtiofsd-kr");

fn must_have(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} not found: these tests need docker.io, busybox-static and util-linux \
         (run scripts/setup.sh as root)"
    );
}

/// A private mount namespace (kept alive by a `sleep`), a dockerd and the plugin in it.
struct DockerEnv {
    dir: tempfile::TempDir,
    ns: Child,
    dockerd: Option<Child>,
    plugin: Option<Child>,
    plugin_runs: u32,
}

impl DockerEnv {
    fn start() -> DockerEnv {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the docker tests need root"
        );
        for p in ["dockerd", "docker", "busybox", "unshare", "nsenter"] {
            must_have(p);
        }
        cluster();
        // Short paths: containerd's sockets live under --exec-root (sun_path is 108 bytes).
        let dir = tempfile::Builder::new()
            .prefix("gfs")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir_all("/run/docker/plugins").unwrap();
        let ns = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=0700 gfs-test /run/docker/plugins && echo ready && exec sleep 100000")
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut env = DockerEnv {
            dir,
            ns,
            dockerd: None,
            plugin: None,
            plugin_runs: 0,
        };
        {
            use std::io::BufRead;
            let out = env.ns.stdout.take().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(out).read_line(&mut line).unwrap();
            assert_eq!(
                line.trim(),
                "ready",
                "private /run/docker/plugins not mounted"
            );
        }
        env.start_plugin();
        env.start_dockerd();
        env.make_image();
        env
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn state_dir(&self) -> PathBuf {
        self.path("state")
    }

    /// A command run inside the test's mount namespace.
    fn in_ns(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.ns.id().to_string())
            .args(["-m", "--", program]);
        cmd
    }

    fn start_plugin(&mut self) {
        let c = cluster();
        self.plugin_runs += 1;
        let log =
            std::fs::File::create(self.path(&format!("plugin.{}.log", self.plugin_runs))).unwrap();
        let child = self
            .in_ns(BIN)
            .arg("docker-plugin")
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--ceph-conf")
            .arg(&c.conf)
            .arg("--ceph-keyring")
            .arg(&c.admin_keyring)
            .arg("--keyring-dir")
            .arg(c.dir.join("volume-keyrings"))
            .args(["--log-level", "debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the plugin");
        self.plugin = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(self.plugin_socket()).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the plugin did not create its socket:\n{}",
                self.plugin_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn plugin_log(&self) -> String {
        std::fs::read_to_string(self.path(&format!("plugin.{}.log", self.plugin_runs)))
            .unwrap_or_default()
    }

    fn host(&self) -> String {
        format!("unix://{}", self.path("docker.sock").display())
    }

    fn start_dockerd(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("dockerd.log"))
            .unwrap();
        let child = self
            .in_ns("dockerd")
            .arg("--data-root")
            .arg(self.path("root"))
            .arg("--exec-root")
            .arg(self.path("exec"))
            .arg("--pidfile")
            .arg(self.path("dockerd.pid"))
            .arg("-H")
            .arg(self.host())
            .args([
                "--storage-driver=vfs",
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.dockerd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.docker(&["version"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "dockerd did not answer:\n{}",
                std::fs::read_to_string(self.path("dockerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn stop_dockerd(&mut self) {
        if let Some(mut d) = self.dockerd.take() {
            // dockerd runs under nsenter, which passes signals on.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(d.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(d.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    fn kill_plugin(&mut self) {
        if let Some(mut p) = self.plugin.take() {
            // nsenter execs the plugin in place: this is the plugin's own pid. Its mount
            // servers (its children) must survive.
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    }

    /// `docker ARGS` that must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed: {}\n{}\nplugin log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.plugin_log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `docker run --rm --network none -v VOL:/data gfs-test:1 CMD...`: its output.
    fn docker_in(&self, vol: &str, cmd: &[&str]) -> Output {
        let data = format!("{vol}:/data");
        self.docker(&run_with_volume(&data, cmd))
    }

    /// [`Self::docker_in`] that must succeed: its stdout.
    fn ok_in(&self, vol: &str, cmd: &[&str]) -> String {
        let data = format!("{vol}:/data");
        self.ok(&run_with_volume(&data, cmd))
    }

    /// `docker ARGS` that must fail: its stderr.
    fn refused(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            !out.status.success(),
            "docker {args:?} succeeded but must fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn make_image(&self) {
        let root = self.path("rootfs");
        for d in ["bin", "data", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let busybox = root.join("bin/busybox");
        std::fs::copy(which("busybox"), &busybox).unwrap();
        let list = Command::new(&busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
        }
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = Command::new("docker")
            .arg("-H")
            .arg(self.host())
            .args(["import", "-", "gfs-test:1"])
            .stdin(tar.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(
            tar.wait().unwrap().success(),
            "tar of the image rootfs failed"
        );
        assert!(
            out.status.success(),
            "docker import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn state(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.state_dir().join("state.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// The plugin's socket as seen from outside the namespace.
    fn plugin_socket(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/run/docker/plugins/gfs.sock",
            self.ns.id()
        ))
    }

    /// A raw plugin call on its socket, as dockerd makes it (no Content-Type, empty Host).
    fn plugin_call(&self, call: &str, body: &str) -> serde_json::Value {
        let s = std::os::unix::net::UnixStream::connect(self.plugin_socket()).unwrap();
        plugin_call_on(s, call, body)
    }
}

/// A raw plugin call on a connection to its socket, as dockerd makes it.
fn plugin_call_on(
    mut s: std::os::unix::net::UnixStream,
    call: &str,
    body: &str,
) -> serde_json::Value {
    use std::io::{Read, Write};
    let request = format!(
        "POST /{call} HTTP/1.1\r\nHost: \r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{call}: {e}: {text:?}"))
}

fn which(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{program} not found"))
}

impl Drop for DockerEnv {
    fn drop(&mut self) {
        let ids = self.docker(&["ps", "-aq"]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = self.docker(&["rm", "-f", id]);
        }
        self.stop_dockerd();
        if let Some(p) = &self.plugin {
            // A clean stop: a SIGKILLed plugin's cluster session would hold capabilities
            // until the MDS evicts it, slowing the next test's administrator calls.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && process_alive(u64::from(p.id())) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.kill_plugin();
        // The serving processes the plugin started (recorded in its state).
        if let Ok(text) = std::fs::read_to_string(self.state_dir().join("state.json")) {
            if let Ok(state) = serde_json::from_str::<serde_json::Value>(&text) {
                for mounts in state["mounts"]
                    .as_object()
                    .into_iter()
                    .flat_map(|m| m.values())
                {
                    for m in mounts.as_object().into_iter().flat_map(|m| m.values()) {
                        if let Some(pid) = m["pid"].as_u64() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGTERM,
                            );
                        }
                    }
                }
            }
        }
        let _ = self.ns.kill();
        let _ = self.ns.wait();
        if std::thread::panicking() || std::env::var_os("DOCKER_TEST_KEEP").is_some() {
            eprintln!(
                "docker test files kept in {} (dockerd.log, plugin.*.log, state/log/)",
                self.dir.path().display()
            );
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
            let _ = dir.keep();
        }
    }
}

/// The metrics of a mount: (written bytes, labels line) of `virtiofs_written_bytes_total`.
fn written_bytes(metrics_addr: &str) -> (u64, String) {
    let addr: MetricsAddr = metrics_addr.parse().unwrap();
    let (status, body) = http_request(&addr, "GET", "/metrics", "").unwrap();
    assert_eq!(status, 200);
    let line = body
        .lines()
        .find(|l| l.starts_with("virtiofs_written_bytes_total{"))
        .unwrap_or_else(|| panic!("no written_bytes_total in:\n{body}"))
        .to_string();
    let value = line.rsplit(' ').next().unwrap().parse().unwrap();
    (value, line)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn process_alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

/// The arguments of a throw-away container with `data` (`VOL:/data`) mounted, running `cmd`.
fn run_with_volume<'a>(data: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--rm", "--network", "none", "-v", data, "gfs-test:1"];
    args.extend_from_slice(cmd);
    args
}

#[test]
fn docker_volume_plugin_end_to_end() {
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("[{:6.1} s] {what}", t0.elapsed().as_secs_f64());
    let mut env = DockerEnv::start();
    phase("dockerd and the plugin started, image imported");
    let vol = unique("shared");

    // ---- create, ls, inspect
    env.ok(&[
        "volume", "create", &vol, "--driver", "gfs", "-o", "size=64M",
    ]);
    let ls = env.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(ls.lines().any(|l| l == format!("gfs {vol}")), "{ls}");
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "inspect", &vol])).unwrap();
    let status = &inspect[0]["Status"];
    assert_eq!(inspect[0]["Driver"], "gfs");
    assert_eq!(inspect[0]["Scope"], "global");
    assert_eq!(status["quota"], "64.0 MiB", "{inspect}");
    assert_eq!(status["quota_bytes"], 64 << 20);
    assert_eq!(status["path"], format!("/volumes/{vol}"));
    // The cluster has it, with its quota.
    let (ok, out, err) = volume_cmd(&["inspect", &vol]);
    assert!(ok, "{err}");
    assert!(out.contains("\"quota_bytes\": 67108864"), "{out}");

    // ---- bad names and options: refused, nothing made in the cluster
    phase("bad names and options: refused, nothing made in the cluster");
    let before = volume_cmd(&["ls"]).1;
    let long = "x".repeat(65);
    for bad in ["..", "../etc", "a/b", long.as_str()] {
        let err = env.refused(&["volume", "create", bad, "--driver", "gfs"]);
        assert!(!err.is_empty(), "{bad}");
    }
    let err = env.refused(&[
        "volume",
        "create",
        "okname",
        "--driver",
        "gfs",
        "-o",
        "colour=blue",
    ]);
    assert!(err.contains("unknown option \"colour\""), "{err}");
    for bad in ["", "..", "/", "a/../b", long.as_str()] {
        for call in [
            "VolumeDriver.Create",
            "VolumeDriver.Get",
            "VolumeDriver.Mount",
        ] {
            let body = serde_json::json!({"Name": bad, "ID": "x1"}).to_string();
            let reply = env.plugin_call(call, &body);
            let e = reply["Err"].as_str().unwrap_or("");
            assert!(e.contains("invalid volume name"), "{call} {bad:?}: {reply}");
        }
    }
    // Nothing of what was refused exists in the cluster (other tests add volumes meanwhile).
    let after = volume_cmd(&["ls"]).1;
    let names = |ls: &str| -> Vec<String> {
        ls.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect()
    };
    for refused in ["okname", "a", "etc", long.as_str()] {
        assert!(
            !names(&after).iter().any(|n| n == refused),
            "a refused name reached the cluster: {refused}"
        );
    }
    assert!(names(&before).contains(&vol) && names(&after).contains(&vol));
    // A name the plugin does not own.
    let reply = env.plugin_call("VolumeDriver.Get", r#"{"Name":"never-made"}"#);
    assert!(
        reply["Err"].as_str().unwrap().contains("no such volume"),
        "{reply}"
    );

    // ---- two containers: one writes, the other reads
    phase("two containers: one writes, the other reads");
    let a = env.ok(&[
        "run", "-d", "--network", "none", "-v", &format!("{vol}:/data"), "gfs-test:1", "sh", "-c",
        "echo data-from-a > /data/a.txt && dd if=/dev/zero of=/data/one-mib bs=64k count=16 && sleep 600",
    ]);
    let a = a.trim().to_string();
    wait_for("container a's write", || {
        env.docker(&["exec", &a, "test", "-s", "/data/one-mib"])
            .status
            .success()
    });
    let read = env.ok_in(&vol, &["cat", "/data/a.txt"]);
    assert_eq!(read.trim(), "data-from-a");

    // ---- POSIX ACLs, as on a local volume: set on the host mount, kept, enforced in containers
    phase("POSIX ACLs: set on the host mount, kept in the volume, enforced for a container user");
    env.ok_in(&vol, &["chmod", "600", "/data/a.txt"]);
    let as_user = |cmd: &[&str]| {
        let data = format!("{vol}:/data");
        let mut args = vec![
            "run",
            "--rm",
            "--network",
            "none",
            "--user",
            "4321:4321",
            "-v",
        ];
        args.push(&data);
        args.push("gfs-test:1");
        args.extend_from_slice(cmd);
        env.docker(&args)
    };
    let denied = as_user(&["cat", "/data/a.txt"]);
    assert!(
        !denied.status.success(),
        "uid 4321 read a root-owned 0600 file without an ACL entry"
    );
    // The plugin's own answer: a mount that is live (container a's). dockerd's `volume
    // inspect` shows the path of its last Mount call, whose container has gone.
    let path = env.plugin_call(
        "VolumeDriver.Path",
        &serde_json::json!({ "Name": vol }).to_string(),
    );
    let mountpoint = PathBuf::from(path["Mountpoint"].as_str().expect("Mountpoint"));
    let host_file = mountpoint.join("a.txt");
    // An ACL tool run on the file in the test's mount namespace, where dockerd and the
    // plugin mount.
    let acl_tool = |tool: &str, args: &[&str]| {
        env.in_ns(tool)
            .args(args)
            .arg(&host_file)
            .output()
            .unwrap_or_else(|e| panic!("{tool} (package acl): {e}"))
    };
    let setfacl = acl_tool("setfacl", &["-m", "u:4321:r"]);
    assert!(
        setfacl.status.success(),
        "setfacl on the plugin's mount: {}\nplugin log:\n{}",
        String::from_utf8_lossy(&setfacl.stderr),
        env.plugin_log()
    );
    let allowed = as_user(&["cat", "/data/a.txt"]);
    assert!(
        allowed.status.success()
            && String::from_utf8_lossy(&allowed.stdout).trim() == "data-from-a",
        "uid 4321 with an ACL entry r: {}",
        String::from_utf8_lossy(&allowed.stderr)
    );
    let getfacl = acl_tool("getfacl", &["--omit-header", "--numeric"]);
    let acl = String::from_utf8_lossy(&getfacl.stdout);
    assert!(acl.contains("user:4321:r--"), "{acl}");
    assert!(acl.contains("mask::r--"), "{acl}");

    // ---- df shows the quota; writing past it gives EDQUOT
    phase("df shows the quota; writing past it gives EDQUOT");
    let df = env.ok_in(&vol, &["df", "-k", "/data"]);
    let size_kib: u64 = df
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().rev().nth(4))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("df output: {df}"));
    assert_eq!(size_kib, 64 * 1024, "{df}");
    let out = env.docker_in(
        &vol,
        &[
            "dd",
            "if=/dev/zero",
            "of=/data/too-big",
            "bs=1M",
            "count=100",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "writing 100 MiB into 64 MiB succeeded"
    );
    assert!(err.contains("Disk quota exceeded"), "{err}");
    env.ok_in(&vol, &["rm", "/data/too-big"]);

    // ---- the container's bytes in the metrics, under its volume (pod: its mount ID)
    phase("the container's bytes in the metrics, under its volume (pod: its mount ID)");
    let state = env.state();
    let mounts = state["mounts"][&vol]
        .as_object()
        .expect("a's mount recorded");
    assert_eq!(
        mounts.len(),
        1,
        "only container a is still running: {state}"
    );
    let (mount_id, a_mount) = mounts.iter().next().unwrap();
    let metrics = a_mount["metrics"].as_str().unwrap().to_string();
    let (written, labels) = written_bytes(&metrics);
    assert!(written >= (1 << 20) + 12, "{labels}");
    assert!(labels.contains(&format!("volume=\"{vol}\"")), "{labels}");
    assert!(labels.contains("tenant=\"docker\""), "{labels}");
    assert!(labels.contains(&format!("pod=\"{mount_id}\"")), "{labels}");
    // The serving process is confined: no capability left, under seccomp.
    let pid = a_mount["pid"].as_u64().unwrap();
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        proc_status.contains("CapEff:\t0000000000000000"),
        "{proc_status}"
    );
    assert!(proc_status.contains("Seccomp:\t2"), "{proc_status}");

    // ---- docker volume rm refused while a container uses it
    phase("docker volume rm refused while a container uses it");
    let err = env.refused(&["volume", "rm", &vol]);
    assert!(err.contains("in use"), "{err}");
    assert!(
        volume_cmd(&["inspect", &vol]).0,
        "the volume went away while in use"
    );
    // The plugin refuses too, whoever asks.
    let reply = env.plugin_call("VolumeDriver.Remove", &format!(r#"{{"Name":"{vol}"}}"#));
    assert!(reply["Err"].as_str().unwrap().contains("in use"), "{reply}");

    // ---- the plugin SIGKILLed and restarted: volumes listed, mounts served
    phase("the plugin SIGKILLed and restarted: volumes listed, mounts served");
    env.kill_plugin();
    assert!(
        process_alive(pid),
        "the mount's server died with the plugin"
    );
    env.start_plugin();
    assert!(env.plugin_log().contains("kept=1"), "{}", env.plugin_log());
    let ls = env.ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(ls.lines().any(|l| l == vol), "{ls}");
    let still = env.ok(&["exec", &a, "cat", "/data/a.txt"]);
    assert_eq!(still.trim(), "data-from-a");
    env.ok(&["exec", &a, "sh", "-c", "echo after-restart > /data/b.txt"]);
    let read = env.ok_in(&vol, &["cat", "/data/b.txt"]);
    assert_eq!(read.trim(), "after-restart");

    // ---- container a ends: its mount is unmounted and its server exits
    phase("container a ends: its mount is unmounted and its server exits");
    env.ok(&["rm", "-f", &a]);
    wait_for("a's server to exit", || !process_alive(pid));
    assert!(env.state()["mounts"].get(&vol).is_none(), "{}", env.state());

    // ---- dockerd restarted: the volume is still there
    phase("dockerd restarted: the volume is still there");
    env.stop_dockerd();
    env.start_dockerd();
    let ls = env.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(ls.lines().any(|l| l == format!("gfs {vol}")), "{ls}");
    let read = env.ok_in(&vol, &["cat", "/data/a.txt"]);
    assert_eq!(read.trim(), "data-from-a");

    // ---- now unused: docker volume rm succeeds, the cluster forgets it
    phase("now unused: docker volume rm succeeds, the cluster forgets it");
    env.ok(&["volume", "rm", &vol]);
    assert!(
        !volume_cmd(&["inspect", &vol]).0,
        "volume still in the cluster"
    );
    let ls = env.ok(&["volume", "ls", "--format", "{{.Name}}"]);
    assert!(!ls.lines().any(|l| l == vol), "{ls}");
}

#[test]
fn docker_volume_on_another_data_pool() {
    let c = cluster();
    let pool = unique("gfsbulk");
    let out = c.ceph(&["osd", "pool", "create", &pool, "8", "8"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let env = DockerEnv::start();
    let vol = unique("bulk");
    let err = env.refused(&[
        "volume",
        "create",
        &vol,
        "--driver",
        "gfs",
        "-o",
        "pool=no-such-pool",
    ]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(
        !volume_cmd(&["inspect", &vol]).0,
        "a refused volume was made"
    );
    env.ok(&[
        "volume",
        "create",
        &vol,
        "--driver",
        "gfs",
        "-o",
        &format!("pool={pool}"),
    ]);
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["volume", "inspect", &vol])).unwrap();
    assert_eq!(
        inspect[0]["Status"]["data_pool"],
        pool.as_str(),
        "{inspect}"
    );
    env.ok_in(
        &vol,
        &[
            "sh",
            "-c",
            "dd if=/dev/urandom of=/data/blob bs=64k count=4 && sync",
        ],
    );
    // The file's data objects are in that pool.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("rados")
            .arg("-c")
            .arg(&c.conf)
            .arg("-k")
            .arg(&c.admin_keyring)
            .args(["-p", &pool, "ls"])
            .output()
            .expect("run rados");
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no object in pool {pool}");
        std::thread::sleep(Duration::from_millis(200));
    }
    env.ok(&["volume", "rm", &vol]);
}

/// The plugin alone, without dockerd or a cluster (creating its socket needs neither), on
/// `dir`'s `run/gfs.sock` and `state/`, pausing `stall_ms` right after it binds its socket
/// (`VIRTIOFSD_KR_TEST_STALL`, `src/stall.rs`).
fn start_bare_plugin(dir: &Path, stall_ms: u64) -> Child {
    Command::new(BIN)
        .arg("docker-plugin")
        .arg("--socket")
        .arg(dir.join("run/gfs.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env(
            virtiofsd_kr::stall::ENV,
            format!("{}:{stall_ms}", virtiofsd_kr::stall::SOCKET_BOUND),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("plugin.log")).unwrap())
        .spawn()
        .expect("start the plugin")
}

/// The temporary socket names (`.vkr-*`) in `dir`.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".vkr-"))
                .collect()
        })
        .unwrap_or_default()
}

/// dockerd connects the moment the plugin's socket appears in its plugins directory: the
/// socket must already listen and carry its final mode 0600 (root's dockerd is the only
/// client), never the mode bind gives before a chmod. The plugin pauses right after binding,
/// before the mode is set: a socket bound in place shows the wrong mode for the whole pause.
#[test]
fn the_plugin_socket_listens_with_its_mode_from_the_moment_it_appears() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/gfs.sock");
    let mut plugin = start_bare_plugin(dir.path(), 1500);
    let log = || std::fs::read_to_string(dir.path().join("plugin.log")).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    let meta = loop {
        if let Ok(meta) = std::fs::symlink_metadata(&socket) {
            break meta;
        }
        if let Some(status) = plugin.try_wait().unwrap() {
            panic!("the plugin exited ({status}):\n{}", log());
        }
        assert!(Instant::now() < deadline, "no plugin socket:\n{}", log());
        std::thread::yield_now();
    };
    let connected = std::os::unix::net::UnixStream::connect(&socket);
    let mode = meta.permissions().mode() & 0o7777;
    let stream = connected.unwrap_or_else(|e| {
        panic!(
            "connecting the moment the plugin socket appeared: {e}\n{}",
            log()
        )
    });
    assert_eq!(
        format!("{mode:o}"),
        "600",
        "mode of the plugin socket when it appeared"
    );
    let answer = plugin_call_on(stream, "Plugin.Activate", "{}");
    assert_eq!(answer["Implements"][0], "VolumeDriver", "{answer}");
    assert!(temporaries(&dir.path().join("run")).is_empty());
    kill(plugin.id(), Signal::SIGTERM);
    assert!(plugin.wait().unwrap().success(), "{}", log());
    assert!(!socket.exists(), "socket left behind by a clean exit");
}

/// A plugin that dies between binding its socket and putting it in place leaves its
/// temporary name behind; the next start removes it (its process is gone) and serves.
#[test]
fn a_temporary_socket_of_a_plugin_that_died_is_removed_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let socket = run.join("gfs.sock");
    let mut plugin = start_bare_plugin(dir.path(), 60_000);
    wait_for("the plugin's temporary socket", || {
        !temporaries(&run).is_empty()
    });
    plugin.kill().unwrap();
    plugin.wait().unwrap();
    let left = temporaries(&run);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        !socket.exists(),
        "the socket appeared before it was put in place"
    );

    let mut plugin = start_bare_plugin(dir.path(), 0);
    wait_for("the restarted plugin's socket", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    assert_eq!(
        temporaries(&run),
        Vec::<String>::new(),
        "left behind: {left:?}"
    );
    kill(plugin.id(), Signal::SIGTERM);
    plugin.wait().unwrap();
}

fn kill(pid: u32, signal: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}
