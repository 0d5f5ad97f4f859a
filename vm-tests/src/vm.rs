//! Booting one guest: the `VmBuilder` API, the per-boot archive, the QEMU command line, the
//! serial console reader, timeouts, and the outcome a test asserts on.
//!
//! A boot is: (optionally) start a daemon on the share (a host directory, or a CephFS volume
//! with `--backend cephfs`, see [`ShareBackend`]), write a small cpio archive
//! with the workload script (and helper programs) and append it to the base initramfs, start
//! QEMU with the serial console on a pipe, collect `@@VMTEST` lines, wait for the guest to
//! power off (or kill it at the deadline), then wait for the daemon to exit and record its
//! status.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::accel::{self, Accel, AccelChoice};
use crate::cpio::CpioWriter;
use crate::daemon::{CacheMode, CephShare, Daemon, DaemonConfig, DaemonOutcome, ShareBackend};
use crate::error::{HarnessError, Result};
use crate::paths::{self, GuestImage, GuestKernel, QemuVersion};
use crate::results::{GuestResults, ResultEntry, SerialLine};

/// Where the share is mounted in the guest.
pub const GUEST_MOUNT: &str = "/data";
/// The virtio-fs tag used for the share.
pub const SHARE_TAG: &str = "share";
/// Where a second share ([`VmBuilder::second_share`]) is mounted in the guest.
pub const SECOND_MOUNT: &str = "/data2";
/// The virtio-fs tag of a second share.
pub const SECOND_TAG: &str = "share2";

#[derive(Clone)]
enum Source {
    Bytes(Vec<u8>),
    Host(PathBuf),
}

#[derive(Clone)]
struct OverlayFile {
    guest_path: String,
    mode: u32,
    source: Source,
}

/// Describes one guest boot.
#[derive(Clone)]
pub struct VmBuilder {
    name: String,
    share: Option<ShareBackend>,
    daemon: DaemonConfig,
    workload: String,
    files: Vec<OverlayFile>,
    memory_mib: u32,
    smp: u32,
    timeout: Duration,
    daemon_exit_timeout: Duration,
    accel: Option<AccelChoice>,
    kernel_args: Vec<String>,
    qemu_args: Vec<String>,
    /// See [`VmBuilder::boot_limit`].
    boot_limit: Duration,
    fio: bool,
    qemu: QemuVersion,
    kernel: GuestKernel,
    device: FsDevice,
    mount_options: Option<String>,
    /// A second virtio-fs device with a daemon of its own, mounted at [`SECOND_MOUNT`].
    second: Option<(ShareBackend, DaemonConfig)>,
}

/// How the share reaches the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsDevice {
    /// `vhost-user-fs-pci` with this many request queues (QEMU's own virtio-fs device).
    FsPci { request_queues: u32 },
    /// QEMU 11.1's generic `vhost-user-test-device-pci` (virtio id 26): the only device with a
    /// vhost-user shared memory region, so the one that gives the guest a DAX window. Its
    /// configuration space (tag, queue count) comes from the daemon (`--tag`).
    Generic { request_queues: u32 },
}

impl FsDevice {
    fn request_queues(self) -> u32 {
        match self {
            FsDevice::FsPci { request_queues } | FsDevice::Generic { request_queues } => {
                request_queues
            }
        }
    }

    /// The `-device` argument for the chardev `vfs0`.
    pub fn qemu_arg(self) -> String {
        match self {
            FsDevice::FsPci { request_queues: 1 } => {
                format!("vhost-user-fs-pci,chardev=vfs0,tag={SHARE_TAG}")
            }
            FsDevice::FsPci { request_queues } => format!(
                "vhost-user-fs-pci,chardev=vfs0,tag={SHARE_TAG},num-request-queues={request_queues}"
            ),
            FsDevice::Generic { request_queues } => format!(
                "vhost-user-test-device-pci,chardev=vfs0,virtio-id=26,num_vqs={},vq_size=128,config_size=40",
                request_queues + 1
            ),
        }
    }
}

impl Default for VmBuilder {
    fn default() -> Self {
        Self::new()
    }
}

fn default_timeout() -> Duration {
    let secs = std::env::var("VMTEST_TIMEOUT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    Duration::from_secs(secs)
}

impl VmBuilder {
    /// A guest without a share whose workload does nothing.
    pub fn new() -> Self {
        VmBuilder {
            name: "guest".into(),
            share: None,
            daemon: DaemonConfig::default(),
            workload: "true\n".into(),
            files: Vec::new(),
            memory_mib: 1024,
            smp: 2,
            timeout: default_timeout(),
            daemon_exit_timeout: Duration::from_secs(10),
            accel: None,
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
            boot_limit: BOOT_LIMIT,
            fio: false,
            qemu: QemuVersion::default(),
            kernel: GuestKernel::default(),
            device: FsDevice::FsPci { request_queues: 1 },
            mount_options: None,
            second: None,
        }
    }

    /// Name used in messages.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Shares `dir` (mounted at `/data` in the guest) through a daemon started for this boot.
    pub fn share(mut self, dir: impl Into<PathBuf>) -> Self {
        self.share = Some(ShareBackend::Passthrough(dir.into()));
        self
    }

    /// Shares a CephFS volume (mounted at `/data` in the guest) through a daemon started for
    /// this boot with `--backend cephfs`.
    pub fn ceph_share(mut self, volume: CephShare) -> Self {
        self.share = Some(ShareBackend::CephFs(volume));
        self
    }

    /// Shares whatever `backend` names.
    pub fn backend(mut self, backend: ShareBackend) -> Self {
        self.share = Some(backend);
        self
    }

    /// `--cache` of the daemon.
    pub fn cache(mut self, mode: CacheMode) -> Self {
        self.daemon.cache = mode;
        self
    }

    /// `--xattr`.
    pub fn xattr(mut self, on: bool) -> Self {
        self.daemon.xattr = on;
        self
    }

    /// `--sandbox` (`None`: no flag, the daemon's default).
    pub fn sandbox(mut self, mode: Option<&str>) -> Self {
        self.daemon.sandbox = mode.map(str::to_string);
        self
    }

    /// `--seccomp` (`None`: no flag, the daemon's default).
    pub fn seccomp(mut self, mode: Option<&str>) -> Self {
        self.daemon.seccomp = mode.map(str::to_string);
        self
    }

    /// Appends a daemon argument.
    pub fn daemon_arg(mut self, arg: &str) -> Self {
        self.daemon.extra_args.push(arg.to_string());
        self
    }

    /// Replaces the whole daemon configuration.
    pub fn daemon_config(mut self, config: DaemonConfig) -> Self {
        self.daemon = config;
        self
    }

    /// The workload: a `sh` script run by `/init` after mounting the share, with the console
    /// as stdin/stdout. Its exit code is reported as `@@VMTEST-EXIT`.
    pub fn workload(mut self, script: &str) -> Self {
        self.workload = script.to_string();
        self
    }

    /// Adds a file with the given contents to the guest.
    pub fn file(mut self, guest_path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        self.files.push(OverlayFile {
            guest_path: guest_path.to_string(),
            mode,
            source: Source::Bytes(data.into()),
        });
        self
    }

    /// Adds a host program at `guest_path`, with every shared library `ldd` lists for it
    /// (at their host paths).
    pub fn program(mut self, host_path: &Path, guest_path: &str) -> Result<Self> {
        self.files.push(OverlayFile {
            guest_path: guest_path.to_string(),
            mode: 0o755,
            source: Source::Host(host_path.to_path_buf()),
        });
        for lib in paths::shared_libraries(host_path)? {
            let gp = lib.display().to_string();
            if !self.files.iter().any(|f| f.guest_path == gp) {
                self.files.push(OverlayFile {
                    guest_path: gp,
                    mode: 0o755,
                    source: Source::Host(lib),
                });
            }
        }
        Ok(self)
    }

    /// Boots the initramfs that contains `fio` (and its ~80 MiB of libraries); without it the
    /// smaller one is used when available, which boots about a second faster under TCG.
    pub fn fio(mut self, on: bool) -> Self {
        self.fio = on;
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Number of vCPUs.
    pub fn smp(mut self, n: u32) -> Self {
        self.smp = n;
        self
    }

    /// Hard limit for the whole boot (QEMU is killed after it).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    /// How long the daemon may take to exit after the guest powered off.
    pub fn daemon_exit_timeout(mut self, t: Duration) -> Self {
        self.daemon_exit_timeout = t;
        self
    }

    /// The accelerator (default: `VMTEST_ACCEL`, else `auto`).
    pub fn accel(mut self, a: AccelChoice) -> Self {
        self.accel = Some(a);
        self
    }

    /// Which QEMU runs the guest (default: the host's 7.2).
    pub fn qemu(mut self, version: QemuVersion) -> Self {
        self.qemu = version;
        self
    }

    /// Which guest kernel boots (default: Debian 12's 6.1).
    pub fn kernel(mut self, kernel: GuestKernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The modern rig: QEMU 11.1 and the 6.12 guest kernel.
    pub fn modern(self) -> Self {
        self.qemu(QemuVersion::V11_1).kernel(GuestKernel::Trixie612)
    }

    /// `num-request-queues` of `vhost-user-fs-pci` (or the generic device's queue count).
    pub fn request_queues(mut self, n: u32) -> Self {
        self.device = match self.device {
            FsDevice::FsPci { .. } => FsDevice::FsPci { request_queues: n },
            FsDevice::Generic { .. } => FsDevice::Generic { request_queues: n },
        };
        self
    }

    /// A DAX window of `size` (as `--dax-window` takes it, e.g. `64M`): the daemon gets
    /// `--dax-window` and `--tag`, the guest QEMU 11.1's generic device (needs
    /// [`QemuVersion::V11_1`]).
    pub fn dax_window(mut self, size: &str) -> Self {
        self.device = FsDevice::Generic {
            request_queues: self.device.request_queues(),
        };
        self.daemon.extra_args.push(format!("--dax-window={size}"));
        self.daemon.extra_args.push(format!("--tag={SHARE_TAG}"));
        self
    }

    /// Options of the guest's `mount -t virtiofs` (e.g. `dax=always`; no spaces).
    pub fn mount_options(mut self, opts: &str) -> Self {
        self.mount_options = Some(opts.to_string());
        self
    }

    /// A second share: its own daemon (started with `config`) behind a second
    /// `vhost-user-fs-pci` (tag [`SECOND_TAG`], one request queue), mounted at
    /// [`SECOND_MOUNT`] before the workload runs and unmounted after it. For comparing two
    /// daemons inside one boot: the same guest, the same moment of the machine.
    pub fn second_share(mut self, backend: ShareBackend, config: DaemonConfig) -> Self {
        self.second = Some((backend, config));
        self
    }

    /// An extra kernel command-line argument.
    pub fn kernel_arg(mut self, arg: &str) -> Self {
        self.kernel_args.push(arg.to_string());
        self
    }

    /// Adds an argument to QEMU's command line (after the harness's own).
    pub fn qemu_arg(mut self, arg: &str) -> Self {
        self.qemu_args.push(arg.to_string());
        self
    }

    /// How long the kernel may take to reach `/init` before [`spawn`](Self::spawn) counts its
    /// boot as hung ([`BOOT_LIMIT`] unless set).
    pub fn boot_limit(mut self, limit: Duration) -> Self {
        self.boot_limit = limit;
        self
    }

    fn write_initrd(&self, image: &GuestImage, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("initrd.cpio");
        let mut out = std::fs::File::create(&path)
            .map_err(|e| HarnessError::io(format!("creating {}", path.display()), e))?;
        let base_path = image.initramfs_for(self.fio);
        let mut base = std::fs::File::open(base_path)
            .map_err(|e| HarnessError::io(format!("opening {}", base_path.display()), e))?;
        std::io::copy(&mut base, &mut out)
            .map_err(|e| HarnessError::io("copying the base initramfs", e))?;
        let mut w = CpioWriter::new(std::io::BufWriter::new(out));
        w.dir("vmtest", 0o755)?;
        if self.second.is_some() {
            // The guest's /init mounts one share; the second is mounted around the workload.
            w.file("vmtest/main.sh", 0o755, self.workload.as_bytes())?;
            w.file(
                "vmtest/workload.sh",
                0o755,
                second_mount_wrapper().as_bytes(),
            )?;
        } else {
            w.file("vmtest/workload.sh", 0o755, self.workload.as_bytes())?;
        }
        for f in &self.files {
            w.parents(&f.guest_path)?;
            match &f.source {
                Source::Bytes(b) => w.file(&f.guest_path, f.mode, b)?,
                Source::Host(p) => {
                    let data = std::fs::read(p)
                        .map_err(|e| HarnessError::io(format!("reading {}", p.display()), e))?;
                    w.file(&f.guest_path, f.mode, &data)?
                }
            }
        }
        w.finish()?;
        Ok(path)
    }

    /// Serialises boots inside one test process, then boots and waits for the outcome.
    pub fn run(self) -> Result<VmOutcome> {
        static BOOT_LOCK: Mutex<()> = Mutex::new(());
        let _guard = BOOT_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        self.spawn()?.wait()
    }

    /// Starts the daemon (when sharing) and QEMU, and returns once the guest's `/init` runs
    /// (or the guest has ended, or its deadline passed). A guest whose kernel died in its own
    /// initcalls, or hung in its boot with its vCPUs running ([`BootFailure`]), is booted once
    /// more, loudly: the kernel never reached /init, so nothing of the test ran and the share
    /// was not even probed; this hides no fault of the daemon. Multi-threaded TCG has been
    /// seen to do both now and then: an int3 "Oops" in patched kernel text with 4 vCPUs, and
    /// a q35 guest silent for its whole 180 s (twice in the project's full CI runs so far).
    pub fn spawn(self) -> Result<RunningVm> {
        let again = self.clone();
        let limit = self.boot_limit;
        let vm = self.spawn_once()?;
        match vm.boot_failure(limit) {
            None => Ok(vm),
            Some(failure) => {
                eprintln!(
                    "vm-tests: [{}] {failure}; booting it once more\n{}",
                    vm.name,
                    failure.log()
                );
                drop(vm);
                let mut vm = again.spawn_once()?;
                vm.boot_retries.push(failure.to_string());
                Ok(vm)
            }
        }
    }

    /// Starts the daemon (when sharing) and QEMU; returns at once.
    fn spawn_once(mut self) -> Result<RunningVm> {
        let image = GuestImage::locate_with(self.kernel)?;
        let qemu = paths::qemu_command(self.qemu)?;
        let choice = match self.accel {
            Some(c) => c,
            None => AccelChoice::from_env()?,
        };
        if matches!(self.device, FsDevice::Generic { .. }) && self.qemu != QemuVersion::V11_1 {
            return Err(HarnessError::Config(
                "a DAX window needs QEMU 11.1 (the host QEMU has no vhost-user shared memory)"
                    .into(),
            ));
        }
        if self.second.is_some()
            && (self.share.is_none() || self.device != FsDevice::FsPci { request_queues: 1 })
        {
            return Err(HarnessError::Config(
                "a second share needs a first one on vhost-user-fs-pci with one request queue"
                    .into(),
            ));
        }
        if let Some(opts) = &self.mount_options {
            if opts.is_empty() || opts.contains(char::is_whitespace) {
                return Err(HarnessError::Config(format!(
                    "mount options {opts:?} must be one word"
                )));
            }
        }
        // The KVM probe boots the host QEMU; QEMU 11.1 runs under TCG unless KVM is asked for.
        let accel = match (self.qemu, choice) {
            (QemuVersion::V11_1, AccelChoice::Auto) => accel::resolve(AccelChoice::Tcg, &image)?,
            _ => accel::resolve(choice, &image)?,
        };
        let workdir = tempfile::Builder::new()
            .prefix("vmtest-vm-")
            .tempdir()
            .map_err(|e| HarnessError::io("creating the VM temp dir", e))?;
        let initrd = self.write_initrd(&image, workdir.path())?;
        paths::no_comma(&initrd)?;
        paths::no_comma(&image.kernel)?;

        if let FsDevice::Generic { request_queues } = self.device {
            // This device tells the guest the daemon's queue count (its configuration space).
            self.daemon
                .extra_args
                .push(format!("--request-queues={request_queues}"));
        }
        let daemon = match &self.share {
            Some(backend) => Some(Daemon::start_backend(&self.daemon, backend)?),
            None => None,
        };
        let second_daemon = match &self.second {
            Some((backend, config)) => Some(Daemon::start_backend(config, backend)?),
            None => None,
        };

        let mut append = vec![
            "console=ttyS0".to_string(),
            "panic=-1".into(),
            // No `quiet`: /init turns the console down to warnings as soon as it runs, so the
            // kernel's boot messages show only where a boot hung or died before it.
            "i8042.noaux=1".into(),
            "i8042.nokbd=1".into(),
        ];
        if daemon.is_some() {
            append.push(format!("vmtest.tag={SHARE_TAG}"));
            append.push(format!("vmtest.mnt={GUEST_MOUNT}"));
            if let Some(opts) = &self.mount_options {
                append.push(format!("vmtest.opts={opts}"));
            }
        }
        append.extend(self.kernel_args.iter().cloned());

        let mem = self.memory_mib;
        let mut args: Vec<String> = vec![
            "-name".into(),
            // Named threads (`CPU 0/TCG`, ...): the hang report and the boot check read them.
            format!("vmtest-{},debug-threads=on", self.name.replace(',', "_")),
            "-M".into(),
            "q35,memory-backend=mem".into(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem}M,share=on"),
            "-m".into(),
            format!("{mem}M"),
            "-smp".into(),
            self.smp.to_string(),
        ];
        args.extend(accel.qemu_args());
        args.extend([
            "-kernel".into(),
            image.kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            append.join(" "),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-no-reboot".into(),
        ]);
        if let Some(d) = &daemon {
            args.extend([
                "-chardev".into(),
                format!("socket,id=vfs0,path={}", d.socket().display()),
                "-device".into(),
                self.device.qemu_arg(),
            ]);
        }
        if let Some(d) = &second_daemon {
            args.extend([
                "-chardev".into(),
                format!("socket,id=vfs1,path={}", d.socket().display()),
                "-device".into(),
                format!("vhost-user-fs-pci,chardev=vfs1,tag={SECOND_TAG}"),
            ]);
        }
        args.extend(self.qemu_args.iter().cloned());
        let command_line = format!("{} {}", qemu.display(), args.join(" "));
        eprintln!(
            "vm-tests: [{}] booting QEMU {} with kernel {}, accel={accel}, device {}, backend={}, cache={}",
            self.name,
            self.qemu.as_str(),
            image.kernel_version,
            self.device.qemu_arg(),
            self.share.as_ref().map_or("-", ShareBackend::kind),
            if daemon.is_some() {
                self.daemon.cache.as_str()
            } else {
                "-"
            }
        );
        let started = Instant::now();
        let mut child = Command::new(&qemu)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| HarnessError::io(format!("starting {}", qemu.display()), e))?;
        let shared = Arc::new(Shared::default());
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let stdin = child.stdin.take();
        let verbose = std::env::var_os("VMTEST_VERBOSE").is_some();
        let name = self.name.clone();
        let s2 = Arc::clone(&shared);
        let out_thread = std::thread::spawn(move || {
            if let Some(out) = stdout {
                read_serial(out, &s2, verbose.then_some(name.as_str()));
            }
            s2.mark_ended();
        });
        let s3 = Arc::clone(&shared);
        let err_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut e) = stderr {
                let _ = e.read_to_end(&mut buf);
            }
            let mut st = s3.state.lock().unwrap_or_else(|p| p.into_inner());
            st.stderr = String::from_utf8_lossy(&buf).into_owned();
        });
        Ok(RunningVm {
            name: self.name,
            accel,
            cache: daemon.as_ref().map(|_| self.daemon.cache),
            child: Some(child),
            stdin,
            daemon,
            second_daemon,
            shared,
            threads: vec![out_thread, err_thread],
            started,
            deadline: started + self.timeout,
            timeout: self.timeout,
            daemon_exit_timeout: self.daemon_exit_timeout,
            command_line,
            boot_retries: Vec::new(),
            _workdir: workdir,
        })
    }
}

#[derive(Default)]
struct State {
    lines: Vec<SerialLine>,
    results: GuestResults,
    stderr: String,
    ended: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

impl Shared {
    fn mark_ended(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ended = true;
        self.cond.notify_all();
    }
}

fn read_serial(out: impl Read, shared: &Shared, echo: Option<&str>) {
    let mut reader = BufReader::new(out);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&buf)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if let Some(name) = echo {
            eprintln!("[{name}] {text}");
        }
        let line = SerialLine {
            at: Instant::now(),
            text,
        };
        let mut st = shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.results.push_line(&line);
        st.lines.push(line);
        shared.cond.notify_all();
    }
}

fn render_log(lines: &[SerialLine]) -> String {
    let mut s = String::new();
    for l in lines {
        s.push_str(&l.text);
        s.push('\n');
    }
    s
}

/// A guest that is running.
pub struct RunningVm {
    name: String,
    accel: Accel,
    cache: Option<CacheMode>,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    daemon: Option<Daemon>,
    /// The daemon of [`VmBuilder::second_share`].
    second_daemon: Option<Daemon>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    started: Instant,
    deadline: Instant,
    timeout: Duration,
    daemon_exit_timeout: Duration,
    command_line: String,
    /// Why earlier boots of this guest were given up ([`VmBuilder::spawn`]).
    boot_retries: Vec<String>,
    _workdir: tempfile::TempDir,
}

impl RunningVm {
    /// The accelerator in use.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// What a guest that stopped reporting was waiting on: the daemon's log (its last 60
    /// lines) and the state of every thread of the daemon's and QEMU's process trees (`wchan`
    /// tells a thread blocked in the kernel from one that spins).
    fn hang_report(&self) -> String {
        let mut out = String::new();
        for d in self.daemon.iter().chain(&self.second_daemon) {
            let log = d.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(60)..];
            let _ = writeln!(out, "---- daemon log (last {} lines):", tail.len());
            for l in tail {
                let _ = writeln!(out, "{l}");
            }
        }
        let roots = self
            .daemon_pid()
            .into_iter()
            .chain(self.second_daemon_pid())
            .chain(self.child.as_ref().map(Child::id));
        let _ = writeln!(out, "---- threads (pid/tid comm state wchan cpu-seconds):");
        for root in roots {
            for pid in crate::cpu::process_tree(&[root]) {
                let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                    continue;
                };
                for task in tasks.flatten() {
                    let tid = task.file_name().to_string_lossy().into_owned();
                    let read = |f: &str| {
                        std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{f}"))
                            .unwrap_or_default()
                    };
                    let (state, cpu) = task_state(&read("stat")).unwrap_or(('?', Duration::ZERO));
                    let _ = writeln!(
                        out,
                        "{pid}/{tid} {} {state} {} {:.2}",
                        read("comm").trim(),
                        read("wchan").trim(),
                        cpu.as_secs_f64()
                    );
                }
            }
        }
        out
    }

    /// The process id of this boot's daemon (`None` without a share or once collected).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(Daemon::pid)
    }

    /// The process id of the second share's daemon ([`VmBuilder::second_share`]).
    pub fn second_daemon_pid(&self) -> Option<u32> {
        self.second_daemon.as_ref().and_then(Daemon::pid)
    }

    /// True while this boot's daemon runs (false without a share, or once it exited).
    pub fn daemon_running(&mut self) -> bool {
        self.daemon.as_mut().is_some_and(Daemon::is_running)
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// True once the guest's console closed (QEMU exited).
    pub fn ended(&self) -> bool {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.ended
    }

    /// Everything the guest reported so far.
    pub fn results(&self) -> GuestResults {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        st.results.clone()
    }

    /// The serial log so far.
    pub fn serial_text(&self) -> String {
        let st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        render_log(&st.lines)
    }

    /// Waits until the guest reports `key` (returns its last entry), the guest ends, or
    /// `timeout` passes.
    pub fn wait_for(&self, key: &str, timeout: Duration) -> Result<ResultEntry> {
        let deadline = (Instant::now() + timeout).min(self.deadline);
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(e) = st.results.entry(key) {
                return Ok(e.clone());
            }
            if st.ended {
                return Err(HarnessError::GuestEnded {
                    what: format!("reporting {key}"),
                    log: render_log(&st.lines),
                });
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("[{}] to report {key}", self.name),
                    timeout,
                    log: format!("{}{}", render_log(&st.lines), self.hang_report()),
                });
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }

    /// Waits until the guest's `/init` runs (`None`), the guest ends, or `limit` passes (at
    /// most until the boot's deadline); then whether the kernel failed in its own boot: it
    /// died in its initcalls ([`kernel_death_in_boot`]), or it is still booting after `limit`
    /// although it ran (it printed something, or its vCPUs used a quarter of a second). A
    /// QEMU that never started the guest (for one, its vhost-user handshake with the daemon
    /// may be stuck) is not a boot failure: the test goes on to fail, with the threads' state
    /// in its report.
    fn boot_failure(&self, limit: Duration) -> Option<BootFailure> {
        let until = (self.started + limit).min(self.deadline);
        let mut st = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.results.init_at.is_some() || reported(&st.results) {
                return None;
            }
            if st.ended {
                return kernel_death_in_boot(&st.results, &st.lines).map(|why| {
                    BootFailure::KernelDied {
                        why,
                        log: render_log(&st.lines),
                    }
                });
            }
            let now = Instant::now();
            if now >= until {
                break;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, until - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        let log = render_log(&st.lines);
        drop(st);
        let vcpu = self
            .child
            .as_ref()
            .map_or(Duration::ZERO, |c| vcpu_time(c.id()));
        let ran = !log.trim().is_empty() || vcpu >= Duration::from_millis(250);
        ran.then(|| BootFailure::Hung {
            after: limit,
            vcpu,
            log: format!("{log}{}", self.hang_report()),
        })
    }

    /// Sends a line to the guest's console (the workload reads it with `read`).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| HarnessError::Config("console input already closed".into()))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| HarnessError::io("writing to the guest console", e))
    }

    /// Kills QEMU now (the outcome counts as timed out), then collects everything like
    /// [`wait`](Self::wait): for a test that gives up on a guest.
    pub fn kill_and_wait(mut self) -> Result<VmOutcome> {
        self.deadline = Instant::now();
        self.wait()
    }

    /// Waits for the guest to power off (killing QEMU at the deadline), then for the daemon to
    /// exit, and returns everything that happened.
    pub fn wait(mut self) -> Result<VmOutcome> {
        let mut timed_out = false;
        let mut qemu_status = None;
        let mut hang = None;
        while let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(Some(s)) => {
                    qemu_status = Some(s);
                    self.child = None;
                }
                Ok(None) if Instant::now() < self.deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) => {
                    timed_out = true;
                    // Before QEMU goes: what its threads and the daemon's were doing.
                    hang = Some(self.hang_report());
                    if let Some(mut child) = self.child.take() {
                        let _ = child.kill();
                        qemu_status = child.wait().ok();
                    }
                }
                Err(e) => return Err(HarnessError::io("waiting for QEMU", e)),
            }
        }
        drop(self.stdin.take());
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let elapsed = self.started.elapsed();
        let daemon = self
            .daemon
            .as_mut()
            .map(|d| d.finish(self.daemon_exit_timeout));
        let second_daemon = self
            .second_daemon
            .as_mut()
            .map(|d| d.finish(self.daemon_exit_timeout));
        let st = std::mem::take(&mut *self.shared.state.lock().unwrap_or_else(|p| p.into_inner()));
        let kvm_failed = self.accel == Accel::Kvm
            && (accel::kvm_failure(&st.stderr) || accel::kvm_failure(&render_log(&st.lines)));
        eprintln!(
            "vm-tests: [{}] finished in {:.1}s (accel={}{}), workload exit {:?}{}",
            self.name,
            elapsed.as_secs_f64(),
            self.accel,
            if timed_out { ", TIMED OUT" } else { "" },
            st.results.exit_code,
            match &daemon {
                Some(d) => format!(", daemon exit {:?}", d.status.and_then(|s| s.code())),
                None => String::new(),
            }
        );
        Ok(VmOutcome {
            name: self.name.clone(),
            accel: self.accel,
            cache: self.cache,
            results: st.results,
            serial: st.lines,
            qemu_stderr: st.stderr,
            qemu_status,
            qemu_command: self.command_line.clone(),
            daemon,
            second_daemon,
            elapsed,
            timeout: self.timeout,
            timed_out,
            hang,
            boot_retries: std::mem::take(&mut self.boot_retries),
            kvm_failed,
        })
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The guest kernel's panic line when it panicked inside its boot-time initcalls
/// (`kernel_init_freeable` in the call trace) and the guest reported nothing: no test code,
/// no mount, no FUSE request can have run. `None` otherwise.
fn kernel_death_in_boot(r: &GuestResults, serial: &[SerialLine]) -> Option<String> {
    if reported(r) || r.init_at.is_some() {
        return None;
    }
    let panic = serial
        .iter()
        .find(|l| l.text.contains("Kernel panic - not syncing"))?;
    serial
        .iter()
        .any(|l| l.text.contains("kernel_init_freeable"))
        .then(|| panic.text.trim().to_string())
}

/// Whether the guest reported anything of the protocol besides `@@VMTEST-INIT`.
fn reported(r: &GuestResults) -> bool {
    !r.entries.is_empty() || !r.errors.is_empty() || r.exit_code.is_some() || r.ready_at.is_some()
}

/// How long a kernel may take to reach `/init` before its boot counts as hung: it takes about
/// 2 s under TCG (1 s with KVM), so a minute leaves room for a machine busy with other work.
pub const BOOT_LIMIT: Duration = Duration::from_secs(60);

/// A guest kernel that failed before running `/init` ([`VmBuilder::spawn`] boots it again).
#[derive(Debug)]
enum BootFailure {
    /// It panicked in its initcalls ([`kernel_death_in_boot`]).
    KernelDied { why: String, log: String },
    /// It was still booting `after` that long (its vCPUs had run for `vcpu`).
    Hung {
        after: Duration,
        vcpu: Duration,
        log: String,
    },
}

impl BootFailure {
    /// The serial log (and, for a hang, the threads' state) to show with the retry.
    fn log(&self) -> &str {
        match self {
            BootFailure::KernelDied { log, .. } | BootFailure::Hung { log, .. } => log,
        }
    }
}

impl std::fmt::Display for BootFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootFailure::KernelDied { why, .. } => {
                write!(f, "the guest kernel died before running /init ({why})")
            }
            BootFailure::Hung { after, vcpu, .. } => write!(
                f,
                "the guest kernel had not reached /init after {after:?} (its vCPUs ran {:.1} s)",
                vcpu.as_secs_f64()
            ),
        }
    }
}

/// A thread's state letter and CPU time (`utime + stime`) from its `/proc/.../stat` line.
fn task_state(stat: &str) -> Option<(char, Duration)> {
    let mut f = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = f.next()?.chars().next()?;
    // After the state: utime and stime are the 11th and 12th fields.
    let mut f = f.skip(10);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    Some((
        state,
        Duration::from_secs_f64(ticks as f64 / crate::cpu::clock_ticks()?),
    ))
}

/// The name (`comm`) and CPU time of each thread of process `pid`.
fn thread_times(pid: u32) -> Vec<(String, Duration)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| {
            let dir = t.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            let (_, cpu) = task_state(&std::fs::read_to_string(dir.join("stat")).ok()?)?;
            Some((comm.trim().to_string(), cpu))
        })
        .collect()
}

/// The CPU time QEMU's vCPU threads (named `CPU <n>/TCG` or `CPU <n>/KVM`) used so far.
fn vcpu_time(qemu: u32) -> Duration {
    thread_times(qemu)
        .into_iter()
        .filter(|(comm, _)| comm.starts_with("CPU "))
        .map(|(_, t)| t)
        .sum()
}

/// The workload of a boot with a second share: mounts it (retrying while the device comes up,
/// as /init does for the first), runs the test's own workload (`/vmtest/main.sh`), unmounts it
/// and exits with the workload's status.
fn second_mount_wrapper() -> String {
    format!(
        "mkdir -p {m}\n\
         tries=0\n\
         until mount -t virtiofs {t} {m} 2>/tmp/mount2.err; do\n\
         \x20   tries=$((tries + 1))\n\
         \x20   if [ $tries -ge 20 ]; then\n\
         \x20       echo \"@@VMTEST-ERROR mount of virtiofs tag {t} on {m} failed: $(cat /tmp/mount2.err)\"\n\
         \x20       exit 125\n\
         \x20   fi\n\
         \x20   sleep 0.1\n\
         done\n\
         sh /vmtest/main.sh\n\
         rc=$?\n\
         cd /\n\
         sync\n\
         umount {m} 2>/dev/null\n\
         exit $rc\n",
        m = SECOND_MOUNT,
        t = SECOND_TAG
    )
}

/// Everything one boot produced.
#[derive(Debug)]
pub struct VmOutcome {
    pub name: String,
    pub accel: Accel,
    /// The daemon's cache mode (`None` without a share).
    pub cache: Option<CacheMode>,
    pub results: GuestResults,
    pub serial: Vec<SerialLine>,
    pub qemu_stderr: String,
    pub qemu_status: Option<ExitStatus>,
    pub qemu_command: String,
    /// The daemon's end (`None` without a share).
    pub daemon: Option<DaemonOutcome>,
    /// The end of the second share's daemon ([`VmBuilder::second_share`]).
    pub second_daemon: Option<DaemonOutcome>,
    pub elapsed: Duration,
    pub timeout: Duration,
    /// QEMU had to be killed at the deadline.
    pub timed_out: bool,
    /// When it was: the daemon's log tail and every thread's state just before (see
    /// `RunningVm::hang_report`).
    pub hang: Option<String>,
    /// Why earlier boots of this guest were given up and it was booted again (its kernel died
    /// or hung before `/init`: see [`VmBuilder::spawn`]).
    pub boot_retries: Vec<String>,
    /// KVM could not run the guest.
    pub kvm_failed: bool,
}

impl VmOutcome {
    /// See [`kernel_death_in_boot`].
    pub fn kernel_died_before_userspace(&self) -> Option<String> {
        kernel_death_in_boot(&self.results, &self.serial)
    }

    /// The whole serial log.
    pub fn serial_text(&self) -> String {
        render_log(&self.serial)
    }

    /// A report for failure messages: status, daemon output, QEMU stderr and the serial log.
    pub fn report(&self) -> String {
        let mut s = format!(
            "==== guest {} (accel={}, elapsed {:.1}s, timeout {:?}{}{}) ====\n\
             qemu status: {:?}\nworkload exit: {:?}\nguest errors: {:?}\nbooted again after: {:?}\n\
             qemu: {}\n",
            self.name,
            self.accel,
            self.elapsed.as_secs_f64(),
            self.timeout,
            if self.timed_out { ", TIMED OUT" } else { "" },
            if self.kvm_failed {
                ", KVM FAILED (set VMTEST_ACCEL=tcg)"
            } else {
                ""
            },
            self.qemu_status,
            self.results.exit_code,
            self.results.errors,
            self.boot_retries,
            self.qemu_command,
        );
        for d in self.daemon.iter().chain(&self.second_daemon) {
            s.push_str(&format!(
                "---- daemon: {}\nstatus: {:?}{}\n{}\n",
                d.command,
                d.status,
                if d.timed_out {
                    " (did not exit; killed)"
                } else {
                    ""
                },
                d.log.trim_end()
            ));
        }
        if !self.qemu_stderr.trim().is_empty() {
            s.push_str(&format!(
                "---- qemu stderr:\n{}\n",
                self.qemu_stderr.trim_end()
            ));
        }
        if let Some(hang) = &self.hang {
            s.push_str("---- at the deadline, before QEMU was killed:\n");
            s.push_str(hang);
        }
        s.push_str("---- serial log:\n");
        s.push_str(&self.serial_text());
        s.push_str("==== end of report ====\n");
        s
    }

    /// Problems that make the boot a failure, empty when it is fine: a timeout, a missing or
    /// non-zero workload exit code, guest errors, or a daemon that did not exit 0 or exited
    /// with its backend still held by a thread.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.timed_out {
            p.push(format!("guest did not power off within {:?}", self.timeout));
        }
        if self.kvm_failed {
            p.push("KVM could not run the guest".into());
        }
        match self.results.exit_code {
            Some(0) => {}
            Some(c) => p.push(format!("workload exited {c}")),
            None => p.push("no @@VMTEST-EXIT line".into()),
        }
        for e in &self.results.errors {
            p.push(format!("guest error: {e}"));
        }
        for d in self.daemon.iter().chain(&self.second_daemon) {
            if !d.success() {
                p.push(format!(
                    "daemon did not exit 0 after the guest powered off: status {:?}{}",
                    d.status,
                    if d.timed_out { " (killed)" } else { "" }
                ));
            }
            // The daemon's `BACKEND_NOT_CLOSED` (control/daemon.rs): a thread still held the
            // backend when it exited, so it was never closed (a CephFS session left open).
            if d.log.contains("backend not closed at exit") {
                p.push("the daemon exited with its backend still held by a thread".into());
            }
        }
        p
    }

    /// Panics with the full report unless every `check` of the workload passed and
    /// [`problems`](Self::problems) is empty.
    #[track_caller]
    pub fn assert_checks_passed(&self) {
        let failed = crate::workload::failed_checks(&self.results);
        self.check(
            failed.is_empty(),
            &format!("failed guest checks:\n  {}", failed.join("\n  ")),
        );
        self.assert_ok();
    }

    /// Panics with the full report unless [`problems`](Self::problems) is empty.
    #[track_caller]
    pub fn assert_ok(&self) {
        let p = self.problems();
        if !p.is_empty() {
            panic!(
                "guest {} failed: {}\n{}",
                self.name,
                p.join("; "),
                self.report()
            );
        }
    }

    /// The last value of `key`; panics with the report when missing.
    #[track_caller]
    pub fn value(&self, key: &str) -> &str {
        match self.results.get(key) {
            Some(v) => v,
            None => panic!(
                "guest {} did not report {key:?}\n{}",
                self.name,
                self.report()
            ),
        }
    }

    /// Asserts that `key` was reported as `expected`.
    #[track_caller]
    pub fn expect(&self, key: &str, expected: &str) {
        let v = self.value(key);
        if v != expected {
            panic!(
                "guest {}: {key} = {v:?}, expected {expected:?}\n{}",
                self.name,
                self.report()
            );
        }
    }

    /// The last value of `key` as an integer; panics with the report otherwise.
    #[track_caller]
    pub fn int(&self, key: &str) -> i64 {
        let v = self.value(key);
        match v.trim().parse() {
            Ok(n) => n,
            Err(_) => panic!(
                "guest {}: {key} = {v:?} is not an integer\n{}",
                self.name,
                self.report()
            ),
        }
    }

    /// Panics with `msg` and the report when `cond` is false.
    #[track_caller]
    pub fn check(&self, cond: bool, msg: &str) {
        if !cond {
            panic!("guest {}: {msg}\n{}", self.name, self.report());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(serial: &[&str]) -> VmOutcome {
        let now = Instant::now();
        VmOutcome {
            name: "t".into(),
            accel: Accel::Tcg,
            cache: None,
            results: GuestResults::default(),
            serial: serial
                .iter()
                .map(|t| SerialLine {
                    at: now,
                    text: t.to_string(),
                })
                .collect(),
            qemu_stderr: String::new(),
            qemu_status: None,
            qemu_command: String::new(),
            daemon: None,
            second_daemon: None,
            elapsed: Duration::ZERO,
            timeout: Duration::ZERO,
            timed_out: false,
            hang: None,
            boot_retries: Vec::new(),
            kvm_failed: false,
        }
    }

    #[test]
    fn a_threads_state_and_cpu_time_come_from_its_stat_line() {
        let hz = crate::cpu::clock_ticks().unwrap();
        // A name with spaces and a `)` of its own; utime 150, stime 50 ticks.
        let stat = "4242 (CPU 0/TCG) x)) R 1 4242 4242 0 -1 4194368 10 0 0 0 150 50 0 0 20 0 4";
        let (state, cpu) = task_state(stat).unwrap();
        assert_eq!(state, 'R');
        assert_eq!(cpu, Duration::from_secs_f64(200.0 / hz));
        assert_eq!(task_state("4242 (x) S 1 2"), None);
        // This very thread: it exists, and is running.
        let me = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        assert_eq!(task_state(&me).map(|(s, _)| s), Some('R'));
        let mine = thread_times(std::process::id());
        assert!(!mine.is_empty() && mine.iter().all(|(name, _)| !name.is_empty()));
    }

    const INITCALL_OOPS: &[&str] = &[
        "[    2.401430] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI",
        "[    2.401430]  do_one_initcall+0x5b/0x310",
        "[    2.401430]  kernel_init_freeable+0x23d/0x2a0",
        "[    2.401430] Kernel panic - not syncing: Fatal exception in interrupt",
    ];

    #[test]
    fn a_panic_in_the_kernels_initcalls_with_nothing_reported_is_a_boot_death() {
        let why = outcome(INITCALL_OOPS).kernel_died_before_userspace();
        assert_eq!(
            why.as_deref(),
            Some("[    2.401430] Kernel panic - not syncing: Fatal exception in interrupt")
        );
    }

    #[test]
    fn a_panic_after_the_guest_reported_anything_is_never_retried() {
        let mut out = outcome(INITCALL_OOPS);
        out.results.entries.push(ResultEntry {
            key: "mounted".into(),
            value: "/data".into(),
            at: Instant::now(),
        });
        assert_eq!(out.kernel_died_before_userspace(), None);
        let mut out = outcome(INITCALL_OOPS);
        out.results.ready_at = Some(Instant::now());
        assert_eq!(out.kernel_died_before_userspace(), None);
    }

    #[test]
    fn a_panic_outside_the_initcalls_or_no_panic_is_never_retried() {
        let later = [
            "Oops: 0000",
            "fuse_dev_do_read+0x10",
            "Kernel panic - not syncing: x",
        ];
        assert_eq!(outcome(&later).kernel_died_before_userspace(), None);
        assert_eq!(
            outcome(&INITCALL_OOPS[..3]).kernel_died_before_userspace(),
            None
        );
        assert_eq!(outcome(&[]).kernel_died_before_userspace(), None);
    }
}
