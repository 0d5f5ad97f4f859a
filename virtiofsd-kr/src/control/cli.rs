//! Command line: the flags a hypervisor written for the reference `virtiofsd` passes, plus
//! this daemon's own subcommands.
//!
//! This module owns parsing and the checks that need no system call. It must not open files,
//! sockets or touch the process: that is `daemon`'s job, so a bad command line is refused
//! before anything is created.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::accounting::rados_sink::SinkConfig;
use crate::accounting::report::ReportOptions;
use crate::accounting::server::MetricsAddr;
use crate::backend::passthrough::{InodeFileHandles, PassthroughOptions};
use crate::backend::CacheMode;
use crate::confine::sandbox::SandboxMode;
use crate::confine::seccomp::SeccompAction;
use crate::control::logging::LogLevel;
use crate::fuse::export::{AclMode, ExportPolicy};
use crate::fuse::id_map::{IdMaps, IdTranslation};

/// vhost-user virtio-fs daemon for microVMs.
///
/// Started by the hypervisor once per pod, like the reference virtiofsd: it listens on
/// --socket-path (or the inherited --fd), serves --shared-dir to the guest, and exits 0 when
/// the VM disconnects.
#[derive(Debug, Parser)]
#[command(name = "virtiofsd-kr", version, about, long_about = None)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the shared directory to this host through /dev/fuse instead of a guest.
    Mount(MountArgs),
    /// Print a readable summary of a running daemon's metrics (--metrics-addr).
    Stats(StatsArgs),
    /// Show, or change at run time, a running daemon's rate limits.
    Limits(LimitsArgs),
    /// Accounting reports: `accounting report --tenant T` over journals (--accounting-dir)
    /// and/or a RADOS pool (--rados-pool).
    #[command(subcommand)]
    Accounting(AccountingCommand),
    /// CephFS volumes for `--backend cephfs`: directories with a quota and their own cephx
    /// identity (run on the host as a cluster administrator).
    Volume(VolumeCli),
    /// The `gfs` Docker volume plugin: `docker volume create NAME --driver gfs [-o size=10G]
    /// [-o pool=POOL]`, `docker run -v NAME:/data`. Runs as root beside dockerd, as the
    /// cluster administrator (the `volume` flags); each container's mount is served by a
    /// `virtiofsd-kr mount --backend cephfs` process as the volume's own identity.
    DockerPlugin(DockerPluginArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DockerPluginArgs {
    /// Unix socket dockerd finds the plugin at (`/run/docker/plugins/NAME.sock`: the file
    /// name is the driver's name).
    #[arg(long, value_name = "PATH", default_value = crate::control::docker_plugin::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Where the plugin keeps its mount table, the mountpoints, logs and accounting journals.
    #[arg(long, value_name = "DIR", default_value = crate::control::docker_plugin::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Tenant label of every mount's accounting.
    #[arg(long, value_name = "NAME", value_parser = label_arg, default_value = "docker")]
    pub tenant: String,

    /// A flag for every `virtiofsd-kr mount` the plugin starts (repeatable), e.g.
    /// `--mount-flag=--cache=never`.
    #[arg(long, value_name = "FLAG", allow_hyphen_values = true)]
    pub mount_flag: Vec<String>,

    #[command(flatten)]
    pub admin: VolumeArgs,

    /// Log level: error, warn, info, debug, trace or off.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
}

impl DockerPluginArgs {
    /// The plugin's options.
    pub fn plugin_options(&self) -> crate::control::docker_plugin::PluginOptions {
        crate::control::docker_plugin::PluginOptions {
            socket: self.socket.clone(),
            state_dir: self.state_dir.clone(),
            admin: self.admin.admin_options(),
            tenant: self.tenant.clone(),
            mount_flags: self.mount_flag.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct VolumeCli {
    #[command(subcommand)]
    pub command: VolumeCommand,

    #[command(flatten)]
    pub args: VolumeArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: its directory, quota, cephx identity `client.vol-NAME` (caps limited
    /// to the directory) and that identity's keyring in --keyring-dir. Prints it as JSON.
    Create {
        #[arg(value_name = "NAME", value_parser = volume_name_arg)]
        name: String,
        /// Most bytes the volume may hold (ceph.quota.max_bytes), e.g. 10G.
        #[arg(long, value_name = "SIZE", value_parser = size_arg)]
        quota: Option<u64>,
        /// Put the volume's file data in this RADOS pool (the directory layout's pool), e.g.
        /// a pool on magnetic disks for large intermediate data; it is made a data pool of
        /// the filesystem if it is not one yet. The pool must exist.
        #[arg(long, value_name = "POOL", value_parser = pool_arg)]
        data_pool: Option<String>,
        /// Data bytes/s every daemon serving the volume allows (READ+WRITE), e.g. 20MiB.
        #[arg(long, value_name = "SIZE", value_parser = size_arg)]
        rate_limit_bytes: Option<u64>,
        /// FUSE requests/s every daemon serving the volume allows.
        #[arg(long, value_name = "N")]
        rate_limit_ops: Option<u64>,
    },
    /// Serve a volume to one microVM: resolves its root, identity and keyring (writing the
    /// keyring on this host if needed) and runs the daemon with `--backend cephfs` and every
    /// daemon flag that follows NAME (`--socket-path S`, `--cache`, `--pod`, ...). The volume's
    /// rate limits apply unless given here; `--volume` defaults to NAME.
    Serve {
        #[arg(value_name = "NAME", value_parser = volume_name_arg)]
        name: String,
        /// Daemon flags (as for `virtiofsd-kr` itself, without the `--ceph-*` ones, which
        /// come from the volume). The admin's --ceph-conf, --ceph-keyring, --keyring-dir,
        /// --volumes-root and --ceph-fs may appear among them too.
        #[arg(
            value_name = "DAEMON-FLAG",
            trailing_var_arg = true,
            allow_hyphen_values = true
        )]
        daemon_args: Vec<String>,
    },
    /// Remove a volume: its files, snapshots, directory, identity and keyring.
    Rm {
        #[arg(value_name = "NAME", value_parser = volume_name_arg)]
        name: String,
    },
    /// List the volumes (JSON, one object per line).
    Ls,
    /// Print a volume as JSON: path, quota, usage, identity, keyring, snapshots.
    Inspect {
        #[arg(value_name = "NAME", value_parser = volume_name_arg)]
        name: String,
    },
    /// Make a snapshot of a volume (guests see it read-only in /.snap/SNAP).
    Snapshot {
        #[arg(value_name = "NAME", value_parser = volume_name_arg)]
        name: String,
        #[arg(value_name = "SNAP", value_parser = volume_name_arg)]
        snap: String,
        /// Remove the snapshot instead.
        #[arg(long)]
        rm: bool,
    },
}

/// How the `volume` commands reach the cluster, as its administrator.
#[derive(Debug, Clone, Args)]
pub struct VolumeArgs {
    /// ceph.conf naming the cluster's monitors.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/ceph/ceph.conf",
        global = true
    )]
    pub ceph_conf: PathBuf,

    /// cephx user allowed to make directories, set quotas and create identities.
    #[arg(long, value_name = "NAME", default_value = "admin", value_parser = ceph_id_arg, global = true)]
    pub ceph_id: String,

    /// That user's keyring.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/etc/ceph/ceph.client.admin.keyring",
        global = true
    )]
    pub ceph_keyring: PathBuf,

    /// The CephFS filesystem (default: the cluster's only one).
    #[arg(long, value_name = "NAME", global = true)]
    pub ceph_fs: Option<String>,

    /// Directory inside CephFS that holds the volumes.
    #[arg(long, value_name = "PATH", default_value = "/volumes", global = true)]
    pub volumes_root: String,

    /// Where the volumes' keyrings are written (`client.vol-NAME.keyring`, mode 0600).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/etc/ceph/virtiofsd-kr",
        global = true
    )]
    pub keyring_dir: PathBuf,
}

#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// The daemon's metrics endpoint: HOST:PORT or unix:PATH.
    #[arg(long, value_name = "ADDR", value_parser = metrics_addr_arg)]
    pub metrics_addr: MetricsAddr,
}

#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// The daemon's metrics endpoint: HOST:PORT or unix:PATH.
    #[arg(long, value_name = "ADDR", value_parser = metrics_addr_arg)]
    pub metrics_addr: MetricsAddr,

    /// New limits, e.g. `bytes=20MiB ops=500 bytes-burst=4M ops-burst=50` (`0`/`off`:
    /// unlimited; keys not given are kept). Without it, print the limits in force.
    #[arg(value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum AccountingCommand {
    /// Sum a tenant's totals over every pod's journal, each counter stream counted once.
    Report(ReportArgs),
}

/// Where a report reads records: journals, RADOS, or both (a stream found in both counts
/// once). At least one source is required.
#[derive(Debug, Clone, Args)]
#[command(group(
    clap::ArgGroup::new("report_source")
        .args(["accounting_dir", "rados_pool"])
        .required(true)
        .multiple(true)
))]
pub struct ReportArgs {
    /// The tenant to report.
    #[arg(long, value_name = "NAME", value_parser = label_arg)]
    pub tenant: String,

    /// Accounting directories to read (repeat for several hosts' directories).
    #[arg(long, value_name = "DIR")]
    pub accounting_dir: Vec<PathBuf>,

    /// Read the tenant's records from this RADOS pool (what `--accounting-rados` wrote from
    /// every host), connecting with --ceph-conf, --ceph-id and --ceph-keyring.
    #[arg(long, value_name = "POOL")]
    pub rados_pool: Option<String>,

    #[command(flatten)]
    pub ceph: CephClientArgs,
}

impl ReportArgs {
    /// The `accounting::report` module's options, checked.
    pub fn options(&self) -> Result<ReportOptions, CliError> {
        let rados = match &self.rados_pool {
            Some(pool) => {
                let (conf, id, keyring) = self.ceph.required("--rados-pool")?;
                Some(SinkConfig {
                    pool: pool.clone(),
                    conf,
                    id,
                    keyring,
                })
            }
            None if self.ceph.any() => return Err(CliError::CephFlagsWithoutPool),
            None => None,
        };
        Ok(ReportOptions {
            tenant: self.tenant.clone(),
            accounting_dirs: self.accounting_dir.clone(),
            rados,
        })
    }
}

/// The arguments of the vhost-user daemon (the default mode).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// vhost-user socket path to listen on (created, replacing a stale socket). `--socket`
    /// is the reference daemon's deprecated spelling.
    #[arg(long, value_name = "PATH", conflicts_with = "fd", alias = "socket")]
    pub socket_path: Option<PathBuf>,

    /// File descriptor of an already listening vhost-user socket, inherited from the caller.
    #[arg(long, value_name = "FD")]
    pub fd: Option<i32>,

    /// Name of the group that owns the socket (given with --socket-path).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,

    /// Directory to share with the guest; it becomes the guest's root of the mount
    /// (`--backend passthrough`).
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// Where the files come from: `passthrough` (the host directory --shared-dir) or `cephfs`
    /// (a CephFS directory through libcephfs, no host mount: --ceph-conf, --ceph-id,
    /// --ceph-keyring, --ceph-root).
    #[arg(long, value_enum, default_value_t = Backend::Passthrough)]
    pub backend: Backend,

    #[command(flatten)]
    pub ceph: CephClientArgs,

    /// `--backend cephfs`: the volume's directory inside CephFS (absolute, e.g.
    /// `/volumes/shared`); it becomes the guest's root and the guest can never reach above it.
    #[arg(long, value_name = "PATH")]
    pub ceph_root: Option<String>,

    /// `--backend cephfs`: the CephFS filesystem to mount (default: the cluster's default).
    #[arg(long, value_name = "NAME")]
    pub ceph_fs: Option<String>,

    /// `--backend cephfs`: seconds a guest request may wait for the cluster (e.g. while the
    /// MDS is down) before it fails with ETIMEDOUT; 0 waits as long as the cluster takes. A
    /// CREATE or MKDIR that timed out may still happen once the cluster is back (like a soft
    /// NFS mount); the exit waits at most this long to flush.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub ceph_op_timeout: u64,

    /// `--backend cephfs` with an op timeout: make libcephfs calls on the request's own
    /// thread while the cluster answers, the device answering any request held past the
    /// timeout with ETIMEDOUT in the backend's place (`true`, the default); `false`: hand
    /// every call to a fixed set of call threads and wait for it there (a thread hand-off per
    /// call, 10-70 us of CPU each).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub ceph_inline_calls: bool,

    /// Tag of the filesystem, answered in the device configuration space for VMMs that ask
    /// the backend (QEMU's vhost-user-fs-pci takes the tag from its own command line).
    #[arg(long, value_name = "TAG")]
    pub tag: Option<String>,

    #[command(flatten)]
    pub fs: FsOptions,

    #[command(flatten)]
    pub accounting: AccountingArgs,

    /// Offer a DAX window of this size (e.g. 8G) through a vhost-user shared memory region,
    /// so the guest can map host page cache (`mount -o dax`). Needs a VMM that negotiates the
    /// SHMEM protocol feature; see docs/dax.md.
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub dax_window: Option<u64>,

    /// With --dax-window: files at least this large are flagged for DAX (FUSE_ATTR_DAX, used
    /// by the guest's `dax=inode`); smaller ones stay on the virtqueue. Default 0: all files.
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub dax_file_size: Option<u64>,

    /// Size of the request thread pool; 0 handles requests on the queue's own thread.
    /// With a pool every request goes through it (and --overlap-threads is not used).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub thread_pool_size: usize,

    /// When the guest has several data requests (READ, WRITE, FSYNC, FALLOCATE) waiting at
    /// once, the queue thread serves the first and up to N helper threads the others, so
    /// their disk waits overlap; a lone request is always served on the queue thread. Helpers
    /// start when first needed. 0 serves every request on the queue thread.
    #[arg(long, value_name = "N")]
    pub overlap_threads: Option<usize>,

    /// Request queues offered to the VMM (GET_QUEUE_NUM answers one more, for the hiprio
    /// queue), 1 to 16, each served by a vring thread of its own. QEMU's vhost-user-fs-pci uses
    /// as many as its `num-request-queues` asks for (Linux >= 6.10 spreads requests over
    /// them); a device that takes its configuration space from the daemon (QEMU's generic
    /// vhost-user-test-device-pci, used for DAX, with `--tag`) tells the guest this number,
    /// so there it must be the device's `num_vqs` - 1.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_REQUEST_QUEUES)]
    pub request_queues: usize,

    /// Most vring threads serving the request queues, 1 to 16 (default: the CPUs this process
    /// may run on). The queues a frontend starts are spread over them round-robin, the hiprio
    /// queue with the first; a thread whose queues are all busy serves them in one wake-up.
    /// Where a request may wait long (`--backend cephfs`, accounting and its rate limits)
    /// every queue keeps a thread of its own.
    #[arg(long, value_name = "N")]
    pub queue_threads: Option<usize>,

    /// When the request queue runs dry, keep watching it for up to this many microseconds
    /// before sleeping, so a guest's next request costs no kick and no wake-up. Only where
    /// that pays: the window is the one that saves the guest more time than it costs in CPU
    /// for the gaps seen (0, no polling, for guests that pause longer than a wake-up costs),
    /// one queue of the daemon spins at a time within a daemon-wide budget, and polling
    /// stops while other threads want the CPU; never while the guest is idle. 0 (the
    /// default) turns polling off.
    #[arg(long, value_name = "US", default_value_t = DEFAULT_POLL_MAX_US)]
    pub poll_max_us: u64,

    /// Sandbox mode: `namespace` (mount/pid/net namespaces and pivot_root into the shared
    /// directory), `chroot`, or `none`.
    #[arg(long, value_enum, default_value_t = SandboxMode::Namespace)]
    pub sandbox: SandboxMode,

    /// Action on a system call outside the allow-list.
    #[arg(long, value_enum, default_value_t = SeccompAction::Kill)]
    pub seccomp: SeccompAction,

    /// Set the maximum number of open files (RLIMIT_NOFILE). Default: raise the soft limit to
    /// the hard limit; 0 leaves the limit untouched.
    #[arg(long, value_name = "N")]
    pub rlimit_nofile: Option<u64>,

    /// Log level: error, warn, info, debug, trace or off.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Print the vhost-user backend capabilities as JSON (as libvirt asks) and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Log to syslog (/dev/log, opened before the sandbox) instead of stderr.
    #[arg(long)]
    pub syslog: bool,

    #[command(flatten)]
    pub compat: CompatArgs,
}

/// The reference virtiofsd's flags this daemon does not implement the same way: accepted
/// where the meaning is this daemon's behaviour anyway, refused (with the alternative)
/// where it is not. See [`ServeArgs::normalized`].
#[derive(Debug, Clone, Default, Args)]
pub struct CompatArgs {
    /// POSIX ACLs (implies --xattr; host-directory backend): `never` (the default), `auto`
    /// (when the guest supports them), `always` (FUSE_INIT fails if the guest does not).
    #[arg(long, value_name = "never|auto|always", num_args = 0..=1, default_missing_value = "always", conflicts_with = "no_posix_acl")]
    pub posix_acl: Option<String>,

    /// No POSIX ACLs (the default; same as --posix-acl=never).
    #[arg(long)]
    pub no_posix_acl: bool,

    /// Extended attribute name mapping rules: refused (attributes pass through unchanged with
    /// --xattr).
    #[arg(long, value_name = "RULES")]
    pub xattrmap: Option<String>,

    /// Guest/host UID translation, repeatable: `map:GUEST:HOST:N`, `guest:GUEST:HOST:N`,
    /// `host:HOST:GUEST:N`, `squash-guest:GUEST:HOST:N`, `squash-host:HOST:GUEST:N`,
    /// `forbid-guest:GUEST:N`. Unmapped IDs stay as they are. Not with --posix-acl.
    #[arg(long, value_name = "TYPE:SOURCE:TARGET:COUNT")]
    pub translate_uid: Vec<String>,

    /// Guest/host GID translation, as --translate-uid.
    #[arg(long, value_name = "TYPE:SOURCE:TARGET:COUNT")]
    pub translate_gid: Vec<String>,

    /// The reference's user-namespace UID map `:GUEST:HOST:N:`, repeatable: applied by the
    /// daemon (no user namespace); host UIDs outside it show as 65534, guest UIDs outside it
    /// cannot own files (EINVAL).
    #[arg(long, value_name = ":NS:HOST:COUNT:")]
    pub uid_map: Vec<String>,

    /// The GID counterpart of --uid-map.
    #[arg(long, value_name = ":NS:HOST:COUNT:")]
    pub gid_map: Vec<String>,

    /// FUSE_HANDLE_KILLPRIV_V2: refused (the host kernel clears setuid/setgid on write, as
    /// with --no-killpriv-v2).
    #[arg(long, conflicts_with = "no_killpriv_v2")]
    pub killpriv_v2: bool,

    /// No FUSE_HANDLE_KILLPRIV_V2: this daemon's behaviour (accepted).
    #[arg(long)]
    pub no_killpriv_v2: bool,

    /// Security labels on create: `never` (accepted); `auto`/`always` are refused.
    #[arg(long, value_name = "never|auto|always", num_args = 0..=1, default_missing_value = "always")]
    pub security_label: Option<String>,

    /// Changing the kept capabilities: refused (the sandbox's set is fixed).
    #[arg(long, value_name = "CAPS")]
    pub modcaps: Option<String>,

    /// Keep the guest's O_NOATIME (accepted: it is always passed to the host).
    #[arg(long)]
    pub preserve_noatime: bool,

    /// Shared mmap with --cache=never|metadata: refused there (needs
    /// FUSE_DIRECT_IO_ALLOW_MMAP, not offered); with auto/always mmap works anyway.
    #[arg(long)]
    pub allow_mmap: bool,

    /// Do not announce submounts: this daemon's default (accepted).
    #[arg(long, conflicts_with = "announce_submounts")]
    pub no_announce_submounts: bool,

    /// Options in the legacy `-o a,b=c` form (announce_submounts, xattr, no_xattr, cache=,
    /// source=, writeback, no_writeback, readdirplus, no_readdirplus, allow_direct_io,
    /// no_killpriv_v2, log_level=, sandbox=, flock/posix_lock and their no_ forms).
    #[arg(short = 'o', value_name = "OPTIONS")]
    pub compat_options: Vec<String>,

    /// Log level debug (legacy `-d`).
    #[arg(short = 'd')]
    pub debug: bool,

    /// Foreground (legacy `-f`, no effect: the daemon always runs in the foreground).
    #[arg(short = 'f')]
    pub foreground: bool,
}

/// How to reach a Ceph cluster: for `--backend cephfs`, `--accounting-rados` and the
/// `volume` commands.
#[derive(Debug, Clone, Default, Args)]
pub struct CephClientArgs {
    /// ceph.conf naming the cluster's monitors.
    #[arg(long, value_name = "PATH")]
    pub ceph_conf: Option<PathBuf>,

    /// cephx user, without `client.` (e.g. `vol-shared`).
    #[arg(long, value_name = "NAME", value_parser = ceph_id_arg)]
    pub ceph_id: Option<String>,

    /// Keyring file holding that user's key.
    #[arg(long, value_name = "PATH")]
    pub ceph_keyring: Option<PathBuf>,
}

impl CephClientArgs {
    /// conf, id and keyring, or which flag is missing (`why`: what needs them).
    pub fn required(&self, why: &'static str) -> Result<(PathBuf, String, PathBuf), CliError> {
        let missing = |flag| CliError::MissingCephFlag { flag, why };
        Ok((
            self.ceph_conf.clone().ok_or(missing("--ceph-conf"))?,
            self.ceph_id.clone().ok_or(missing("--ceph-id"))?,
            self.ceph_keyring.clone().ok_or(missing("--ceph-keyring"))?,
        ))
    }

    pub fn any(&self) -> bool {
        self.ceph_conf.is_some() || self.ceph_id.is_some() || self.ceph_keyring.is_some()
    }
}

impl VolumeArgs {
    /// The `volume` module's options.
    pub fn admin_options(&self) -> crate::control::volume::AdminOptions {
        crate::control::volume::AdminOptions {
            ceph_conf: self.ceph_conf.clone(),
            ceph_id: self.ceph_id.clone(),
            ceph_keyring: self.ceph_keyring.clone(),
            ceph_fs: self.ceph_fs.clone(),
            volumes_root: self.volumes_root.clone(),
            keyring_dir: self.keyring_dir.clone(),
        }
    }
}

impl VolumeCommand {
    /// The `volume` module's action (`None` for `serve`, which `volume_serve` runs).
    pub fn action(&self) -> Option<crate::control::volume::VolumeAction> {
        use crate::control::volume::{CreateSpec, VolumeAction, VolumeLimits};
        Some(match self.clone() {
            VolumeCommand::Create {
                name,
                quota,
                data_pool,
                rate_limit_bytes,
                rate_limit_ops,
            } => VolumeAction::Create {
                name,
                spec: CreateSpec {
                    quota,
                    data_pool,
                    limits: VolumeLimits {
                        bytes_per_sec: rate_limit_bytes.unwrap_or(0),
                        ops_per_sec: rate_limit_ops.unwrap_or(0),
                    },
                },
            },
            VolumeCommand::Rm { name } => VolumeAction::Remove { name },
            VolumeCommand::Ls => VolumeAction::List,
            VolumeCommand::Inspect { name } => VolumeAction::Inspect { name },
            VolumeCommand::Snapshot { name, snap, rm } => match rm {
                false => VolumeAction::Snapshot { name, snap },
                true => VolumeAction::DeleteSnapshot { name, snap },
            },
            VolumeCommand::Serve { .. } => return None,
        })
    }
}

/// RADOS pool names for `--data-pool`: 1 to 128 of `A-Z a-z 0-9 . _ -`.
pub fn pool_arg(text: &str) -> Result<String, String> {
    crate::control::volume::check_pool_name(text).map(str::to_string)
}

/// A name made of 1 to `max` of `A-Z a-z 0-9 . _ -` that does not start with `banned`.
fn plain_name(text: &str, max: usize, banned: &str) -> Result<String, String> {
    let ok = !text.is_empty()
        && text.len() <= max
        && !text.starts_with(banned)
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(text.to_string())
    } else {
        Err(format!(
            "{text:?}: use 1 to {max} of A-Z a-z 0-9 . _ - (not starting with `{banned}`)"
        ))
    }
}

/// Names of volumes and snapshots: 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with a dot.
pub fn volume_name_arg(text: &str) -> Result<String, String> {
    crate::control::volume::check_name(text).map(str::to_string)
}

/// cephx user names: 1 to 64 of `A-Z a-z 0-9 . _ -`, without the `client.` prefix.
fn ceph_id_arg(text: &str) -> Result<String, String> {
    plain_name(text, 64, "client.")
}

/// Filesystem behaviour shared by the vhost-user daemon and `mount`.
#[derive(Debug, Clone, Args)]
pub struct FsOptions {
    /// Guest caching policy: `auto` (close-to-open, 1 s attribute timeout), `always`,
    /// `metadata` (cache metadata, not file data) or `never`.
    #[arg(long, value_enum, default_value_t = CacheMode::Auto)]
    pub cache: CacheMode,

    /// Enable extended attributes.
    #[arg(long)]
    pub xattr: bool,

    /// Export the directory read-only: every modifying request is answered with EROFS.
    #[arg(long)]
    pub readonly: bool,

    /// Enable the guest's writeback cache.
    #[arg(long)]
    pub writeback: bool,

    /// Honour O_DIRECT from the guest: a host directory's file is opened O_DIRECT; with
    /// `--backend cephfs` libcephfs reads and writes that file synchronously, past its cache,
    /// as ceph-fuse and the kernel client do. Otherwise O_DIRECT is dropped and the host page
    /// cache (libcephfs' cache) used.
    #[arg(long)]
    pub allow_direct_io: bool,

    /// Answer READDIR only; never READDIRPLUS.
    #[arg(long)]
    pub no_readdirplus: bool,

    /// Tell the guest about host submounts so it gives them their own st_dev.
    #[arg(long)]
    pub announce_submounts: bool,

    /// Reference inodes by file handle instead of an O_PATH descriptor, so the guest can hold
    /// more inodes than the descriptor limit: `prefer` (default, as the reference daemon:
    /// handles where the filesystem and the daemon's privileges allow, descriptors
    /// otherwise), `never`, or `mandatory` (refuse to start without).
    #[arg(long, value_enum, default_value_t = InodeFileHandles::Prefer)]
    pub inode_file_handles: InodeFileHandles,
}

impl FsOptions {
    /// The host-directory backend's options.
    pub fn passthrough(&self) -> PassthroughOptions {
        PassthroughOptions {
            cache: self.cache,
            xattr: self.xattr,
            writeback: self.writeback,
            allow_direct_io: self.allow_direct_io,
            inode_file_handles: self.inode_file_handles,
        }
    }

    /// The export policy these flags ask for (no DAX window: the daemon adds it).
    pub fn export_policy(&self) -> ExportPolicy {
        ExportPolicy {
            no_readdirplus: self.no_readdirplus,
            announce_submounts: self.announce_submounts,
            dax: false,
            readonly: self.readonly,
            xattr: self.xattr,
            posix_acl: AclMode::Never,
            ids: IdMaps::default(),
        }
    }
}

/// Per-tenant accounting, rate limits and metrics (see docs/accounting.md).
#[derive(Debug, Clone, Args)]
pub struct AccountingArgs {
    /// Tenant whose traffic this daemon serves (metric label and journal key).
    #[arg(long, value_name = "NAME", value_parser = label_arg)]
    pub tenant: Option<String>,

    /// Volume this daemon serves (metric label and journal key).
    #[arg(long, value_name = "NAME", value_parser = label_arg)]
    pub volume: Option<String>,

    /// Pod this daemon serves (metric label and journal key).
    #[arg(long, value_name = "NAME", value_parser = label_arg)]
    pub pod: Option<String>,

    /// Traffic class label: `internal` or `external`.
    #[arg(long, value_enum, default_value_t = TrafficClass::Internal)]
    pub traffic_class: TrafficClass,

    /// Serve Prometheus metrics and the admin endpoint (`PUT /limits`) on a loopback
    /// HOST:PORT or unix:PATH (created before the sandbox).
    #[arg(long, value_name = "ADDR", value_parser = metrics_addr_arg)]
    pub metrics_addr: Option<MetricsAddr>,

    /// Keep the counters in a crash-safe journal under DIR (DIR/TENANT/VOLUME/POD.journal);
    /// a restarted daemon continues from it. Needs --tenant, --volume and --pod.
    #[arg(long, value_name = "DIR")]
    pub accounting_dir: Option<PathBuf>,

    /// Also write the accounting records to this RADOS pool (connecting with --ceph-conf,
    /// --ceph-id, --ceph-keyring), keyed so that a report over all pods counts each once.
    #[arg(long, value_name = "POOL")]
    pub accounting_rados: Option<String>,

    /// Limit data bytes per second (READ + WRITE payload), e.g. 20MiB; requests over the
    /// limit wait in the queue.
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub rate_limit_bytes: Option<u64>,

    /// Burst for --rate-limit-bytes (default: a tenth of a second of the rate, at least 1M).
    #[arg(long, value_name = "SIZE", value_parser = size_arg)]
    pub rate_limit_bytes_burst: Option<u64>,

    /// Limit FUSE requests per second.
    #[arg(long, value_name = "N")]
    pub rate_limit_ops: Option<u64>,

    /// Burst for --rate-limit-ops (default: a tenth of a second of the rate, at least 1).
    #[arg(long, value_name = "N")]
    pub rate_limit_ops_burst: Option<u64>,
}

impl AccountingArgs {
    /// Whether any accounting was asked for (otherwise requests are not metered at all).
    pub fn enabled(&self) -> bool {
        self.tenant.is_some()
            || self.volume.is_some()
            || self.pod.is_some()
            || self.metrics_addr.is_some()
            || self.accounting_dir.is_some()
            || self.accounting_rados.is_some()
            || self.rate_limit_bytes.is_some()
            || self.rate_limit_ops.is_some()
    }

    /// The limits given on the command line.
    pub fn limits(&self) -> crate::accounting::limiter::Limits {
        crate::accounting::limiter::Limits {
            bytes_per_sec: self.rate_limit_bytes.unwrap_or(0),
            bytes_burst: self.rate_limit_bytes_burst.unwrap_or(0),
            ops_per_sec: self.rate_limit_ops.unwrap_or(0),
            ops_burst: self.rate_limit_ops_burst.unwrap_or(0),
        }
    }

    /// The `accounting` module's configuration (`None`: nothing asked for). `host` goes in
    /// the journal records.
    pub fn config(
        &self,
        ceph: &CephClientArgs,
        host: String,
    ) -> Result<Option<crate::accounting::Config>, CliError> {
        if !self.enabled() {
            return Ok(None);
        }
        let unset = || "none".to_string();
        let labels = crate::accounting::Labels {
            tenant: self.tenant.clone().unwrap_or_else(unset),
            volume: self.volume.clone().unwrap_or_else(unset),
            pod: self.pod.clone().unwrap_or_else(unset),
            traffic_class: self.traffic_class.as_str().to_string(),
            host,
        };
        let rados = match &self.accounting_rados {
            Some(pool) => {
                let (conf, id, keyring) = ceph.required("--accounting-rados")?;
                Some(crate::accounting::rados_sink::SinkConfig {
                    pool: pool.clone(),
                    conf,
                    id,
                    keyring,
                })
            }
            None => None,
        };
        Ok(Some(crate::accounting::Config {
            labels,
            limits: self.limits(),
            metrics_addr: self.metrics_addr.clone(),
            accounting_dir: self.accounting_dir.clone(),
            rados,
        }))
    }

    fn validate(&self) -> Result<(), CliError> {
        if self.accounting_dir.is_some()
            && (self.tenant.is_none() || self.volume.is_none() || self.pod.is_none())
        {
            return Err(CliError::AccountingDirWithoutLabels);
        }
        if self.accounting_rados.is_some() && self.accounting_dir.is_none() {
            return Err(CliError::RadosWithoutJournal);
        }
        if self.rate_limit_bytes_burst.is_some() && self.rate_limit_bytes.is_none() {
            return Err(CliError::BurstWithoutLimit("--rate-limit-bytes"));
        }
        if self.rate_limit_ops_burst.is_some() && self.rate_limit_ops.is_none() {
            return Err(CliError::BurstWithoutLimit("--rate-limit-ops"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrafficClass {
    Internal,
    External,
}

impl TrafficClass {
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficClass::Internal => "internal",
            TrafficClass::External => "external",
        }
    }
}

/// Tenant, volume and pod names: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting with a dot
/// (they name journal files and directories).
fn label_arg(text: &str) -> Result<String, String> {
    plain_name(text, 128, ".")
}

fn metrics_addr_arg(text: &str) -> Result<MetricsAddr, String> {
    text.parse()
        .map_err(|e: crate::accounting::server::ServerError| e.to_string())
}

#[derive(Debug, Clone, Args)]
pub struct MountArgs {
    /// Directory to serve (`--backend passthrough`).
    #[arg(long, value_name = "DIR")]
    pub shared_dir: Option<PathBuf>,

    /// Where to mount it on this host.
    #[arg(value_name = "MOUNTPOINT")]
    pub mountpoint: PathBuf,

    /// `passthrough` (--shared-dir) or `cephfs` (--ceph-conf, --ceph-id, --ceph-keyring,
    /// --ceph-root: a CephFS volume as its own identity, no kernel CephFS mount).
    #[arg(long, value_enum, default_value_t = Backend::Passthrough)]
    pub backend: Backend,

    #[command(flatten)]
    pub ceph: CephClientArgs,

    /// `--backend cephfs`: the volume's directory inside CephFS.
    #[arg(long, value_name = "PATH")]
    pub ceph_root: Option<String>,

    /// `--backend cephfs`: the CephFS filesystem (default: the cluster's default).
    #[arg(long, value_name = "NAME")]
    pub ceph_fs: Option<String>,

    /// `--backend cephfs`: seconds a request may wait for the cluster before ETIMEDOUT.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    pub ceph_op_timeout: u64,

    #[command(flatten)]
    pub fs: FsOptions,

    #[command(flatten)]
    pub accounting: AccountingArgs,

    /// With `--backend cephfs`: after mounting, drop every capability and install the seccomp
    /// allow-list (`--seccomp`); a small helper process keeps CAP_SYS_ADMIN only to unmount
    /// when the server ends, however it ends. (A host directory keeps the host's view and
    /// capabilities: it acts on host files as the caller.)
    #[arg(long, value_enum, default_value_t = SeccompAction::Kill)]
    pub seccomp: SeccompAction,

    /// Number of threads reading /dev/fuse.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub threads: usize,

    /// POSIX ACLs on the mount (implies --xattr; the host kernel checks them): `never` (the
    /// default), `auto` (when the kernel supports them), `always` (the mount fails without).
    #[arg(long, value_name = "never|auto|always", num_args = 0..=1, default_missing_value = "always")]
    pub posix_acl: Option<String>,

    /// Log level: error, warn, info, debug, trace or off.
    #[arg(long, value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,
}

impl MountArgs {
    /// The `fusedev` module's options, checked.
    pub fn mount_options(
        &self,
        host: String,
    ) -> Result<crate::control::fusedev::MountOptions, CliError> {
        use crate::control::fusedev::{MountBackend, MountOptions};
        self.accounting.validate()?;
        let acl = parse_acl_mode(self.posix_acl.as_deref())?;
        let mut fs = self.fs.clone();
        if acl != AclMode::Never {
            // ACLs are extended attributes.
            fs.xattr = true;
        }
        let backend = match self.backend {
            Backend::Passthrough => {
                if self.ceph_root.is_some() {
                    return Err(CliError::CephFlagWithoutCephfs("--ceph-root"));
                }
                if self.ceph_fs.is_some() {
                    return Err(CliError::CephFlagWithoutCephfs("--ceph-fs"));
                }
                if self.ceph.any() && self.accounting.accounting_rados.is_none() {
                    return Err(CliError::CephClientUnused);
                }
                MountBackend::HostDir {
                    dir: self.shared_dir.clone().ok_or(CliError::NoSharedDir)?,
                    fs: fs.passthrough(),
                }
            }
            Backend::Cephfs => {
                if self.shared_dir.is_some() {
                    return Err(CliError::SharedDirWithCephfs);
                }
                cephfs_fs_flags(&fs)?;
                MountBackend::CephFs(ceph_options(
                    &self.ceph,
                    self.ceph_root.as_deref(),
                    self.ceph_fs.clone(),
                    self.ceph_op_timeout,
                    &fs,
                    acl != AclMode::Never,
                )?)
            }
        };
        Ok(MountOptions {
            mountpoint: self.mountpoint.clone(),
            backend,
            policy: ExportPolicy {
                posix_acl: acl,
                ..fs.export_policy()
            },
            readonly: self.fs.readonly,
            threads: self.threads,
            seccomp: crate::confine::seccomp::mismatch_action(self.seccomp),
            accounting: self.accounting.config(&self.ceph, host)?,
        })
    }
}

/// `--posix-acl[=never|auto|always]` (absent: never), for the daemon and the host mount.
fn parse_acl_mode(value: Option<&str>) -> Result<AclMode, CliError> {
    match value {
        None | Some("never") => Ok(AclMode::Never),
        Some("auto") => Ok(AclMode::Auto),
        Some("always") => Ok(AclMode::Always),
        Some(other) => Err(CliError::BadFlagValue {
            flag: "--posix-acl",
            value: other.to_string(),
            expected: "never, auto or always",
        }),
    }
}

/// A CephFS volume root, checked: absolute, normal components only.
fn checked_ceph_root(root: Option<&str>) -> Result<&str, CliError> {
    let root = root.ok_or(CliError::MissingCephFlag {
        flag: "--ceph-root",
        why: "--backend cephfs",
    })?;
    let bad = || CliError::BadCephRoot(root.to_string());
    if !root.starts_with('/') || root.contains('\0') {
        return Err(bad());
    }
    if root
        .split('/')
        .skip(1)
        .any(|c| c == "." || c == ".." || (c.is_empty() && root != "/"))
    {
        return Err(bad());
    }
    Ok(root)
}

/// The `cephfs` module's options from the `--ceph-*` flags.
fn ceph_options(
    ceph: &CephClientArgs,
    root: Option<&str>,
    fs_name: Option<String>,
    op_timeout: u64,
    fs: &FsOptions,
    posix_acl: bool,
) -> Result<crate::backend::cephfs::CephOptions, CliError> {
    let (conf, id, keyring) = ceph.required("--backend cephfs")?;
    Ok(crate::backend::cephfs::CephOptions {
        conf,
        id,
        keyring,
        root: checked_ceph_root(root)?.to_string(),
        fs_name,
        cache: crate::backend::cephfs::cache_policy(fs.cache),
        op_timeout: Some(std::time::Duration::from_secs(op_timeout)).filter(|t| !t.is_zero()),
        posix_acl,
        honour_o_direct: fs.allow_direct_io,
    })
}

/// Refuses the filesystem flags `--backend cephfs` cannot honour, rather than ignoring them:
/// every other flag of `FsOptions` is honoured by the CephFS backend or the export layer
/// above it (`cephfs_honours_or_refuses_every_filesystem_flag` checks that).
fn cephfs_fs_flags(fs: &FsOptions) -> Result<(), CliError> {
    if fs.inode_file_handles == InodeFileHandles::Mandatory {
        return Err(CliError::FileHandlesWithCephfs);
    }
    if fs.writeback {
        return Err(unsupported(
            "--writeback with --backend cephfs",
            "the guest's writeback cache would keep writes that CephFS cannot recall when another pod opens the file (its caps reach this daemon, not the guest); libcephfs already buffers writes in the daemon under those caps",
        ));
    }
    Ok(())
}

fn size_arg(text: &str) -> Result<u64, String> {
    crate::size::parse_size(text).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Passthrough,
    Cephfs,
}

/// Where the daemon gets its listening socket from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    Path {
        path: PathBuf,
        group: Option<String>,
    },
    Fd(i32),
}

/// A command line that parsed but cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CliError {
    #[error("one of --socket-path or --fd is required")]
    NoSocket,
    #[error("--shared-dir is required")]
    NoSharedDir,
    #[error("--fd {0}: not a valid file descriptor number (must be 3 or more)")]
    BadFd(i32),
    #[error("--socket-path {0:?}: QEMU cannot name a socket whose path contains a comma")]
    CommaInSocketPath(PathBuf),
    #[error("--socket-group applies to a socket this daemon creates (--socket-path), not to --fd")]
    SocketGroupWithFd,
    #[error("--dax-file-size needs --dax-window")]
    DaxFileSizeWithoutWindow,
    #[error("--thread-pool-size {0}: at most {max} threads", max = MAX_THREAD_POOL)]
    ThreadPoolTooLarge(usize),
    #[error("--overlap-threads {0}: at most {max} threads", max = MAX_THREAD_POOL)]
    OverlapTooLarge(usize),
    #[error(
        "--overlap-threads and --thread-pool-size both choose where requests are served: give one"
    )]
    OverlapWithPool,
    #[error("--poll-max-us {0}: at most {max} (a longer spin only burns CPU)", max = MAX_POLL_US)]
    PollTooLong(u64),
    #[error("--request-queues {0}: 1 to {MAX_REQUEST_QUEUES} are supported")]
    RequestQueues(usize),
    #[error("--queue-threads {0}: 1 to {MAX_REQUEST_QUEUES}")]
    QueueThreads(usize),
    #[error("--accounting-dir needs --tenant, --volume and --pod (they name the journal)")]
    AccountingDirWithoutLabels,
    #[error("a burst needs its limit: {0}")]
    BurstWithoutLimit(&'static str),
    #[error("--accounting-rados ships the journal's records: it needs --accounting-dir (and so --tenant, --volume, --pod)")]
    RadosWithoutJournal,
    #[error("{flag} is required with {why}")]
    MissingCephFlag {
        flag: &'static str,
        why: &'static str,
    },
    #[error("--shared-dir is for --backend passthrough; with --backend cephfs the guest's root is --ceph-root")]
    SharedDirWithCephfs,
    #[error("{0} needs --backend cephfs")]
    CephFlagWithoutCephfs(&'static str),
    #[error("--ceph-root {0:?}: give the volume's absolute path inside CephFS, without `.` or `..` (e.g. /volumes/shared)")]
    BadCephRoot(String),
    #[error("--dax-window is not available with --backend cephfs: DAX maps host file descriptors and libcephfs gives none (see docs/dax.md)")]
    DaxWithCephfs,
    #[error("--sandbox chroot is not available with --backend cephfs (libcephfs needs the network and its config files): use namespace or none")]
    ChrootWithCephfs,
    #[error(
        "--inode-file-handles=mandatory is for --backend passthrough: CephFS inodes are addressed by number"
    )]
    FileHandlesWithCephfs,
    #[error(
        "--ceph-conf, --ceph-id and --ceph-keyring need --backend cephfs or --accounting-rados"
    )]
    CephClientUnused,
    #[error("{flag}: {reason}")]
    Unsupported { flag: String, reason: &'static str },
    #[error("--ceph-conf, --ceph-id and --ceph-keyring are for --rados-pool")]
    CephFlagsWithoutPool,
    #[error("{flag}={value}: expected {expected}")]
    BadFlagValue {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("{0}: {1}")]
    IdMap(&'static str, crate::fuse::id_map::IdMapError),
    #[error("-o {0}: unknown legacy option (give the flag instead; see --help)")]
    UnknownCompatOption(String),
    #[error("-o {option}: {reason}")]
    BadCompatOption { option: String, reason: String },
}

/// Upper bound for --thread-pool-size: more threads than this only add contention.
pub const MAX_THREAD_POOL: usize = 1024;

/// Default --overlap-threads: two helpers beside the queue thread. Against eight (our daemon
/// on both sides of a paired bench) they cost a QD16 guest's 4 KiB reads no established
/// throughput and 10 % less CPU per read; against the reference they still win 1.22x at 0.94x
/// its CPU per read (docs/benchmarks.md, "Overlapping data requests").
pub const DEFAULT_OVERLAP_THREADS: usize = 2;

/// Default --poll-max-us: off. Measured in docs/benchmarks.md ("Polling the request queue"):
/// in TCG guests on a shared machine polling cost 1.4x the CPU per metadata file and bought
/// no throughput; it is for hosts whose guests' gaps are a few microseconds (try 200).
pub const DEFAULT_POLL_MAX_US: u64 = 0;
/// Most request queues (`--request-queues`): the device's limit.
pub const MAX_REQUEST_QUEUES: usize = crate::vhost::device::MAX_REQUEST_QUEUES;
/// Default `--request-queues`: the most QEMU's vhost-user-fs-pci may be configured with, so
/// any `num-request-queues` works without a flag; unused queues cost one idle thread each.
pub const DEFAULT_REQUEST_QUEUES: usize = MAX_REQUEST_QUEUES;
/// Upper bound for --poll-max-us.
pub const MAX_POLL_US: u64 = 10_000;

fn unsupported(flag: impl Into<String>, reason: &'static str) -> CliError {
    CliError::Unsupported {
        flag: flag.into(),
        reason,
    }
}

impl ServeArgs {
    /// Applies the reference daemon's legacy forms (`-o`, `-d`) and refuses its flags whose
    /// meaning this daemon does not provide, naming the alternative.
    pub fn normalized(mut self) -> Result<ServeArgs, CliError> {
        let c = self.compat.clone();
        if c.debug {
            self.log_level = LogLevel::Debug;
        }
        for list in &c.compat_options {
            for option in list.split(',').filter(|o| !o.is_empty()) {
                self.apply_compat_option(option)?;
            }
        }
        if self.compat.no_announce_submounts {
            self.fs.announce_submounts = false;
        }
        let acl = self.acl_mode()?;
        let ids = self.id_maps()?;
        if acl != AclMode::Never {
            if !ids.is_identity() {
                return Err(unsupported(
                    "--posix-acl",
                    "ACL entries name host IDs, so they cannot be combined with ID translation (--translate-uid/--translate-gid/--uid-map/--gid-map), as in the reference virtiofsd; choose one",
                ));
            }
            // ACLs are extended attributes.
            self.fs.xattr = true;
        }
        let c = &self.compat;
        if c.xattrmap.is_some() {
            return Err(unsupported(
                "--xattrmap",
                "extended attribute names are not mapped; --xattr passes them through unchanged",
            ));
        }
        if c.killpriv_v2 {
            return Err(unsupported(
                "--killpriv-v2",
                "FUSE_HANDLE_KILLPRIV_V2 is not offered; the host kernel clears setuid/setgid bits on write (--no-killpriv-v2, the default)",
            ));
        }
        if let Some(mode) = c.security_label.as_deref().filter(|m| *m != "never") {
            return Err(unsupported(
                format!("--security-label={mode}"),
                "security labels on create are not supported; --xattr passes security.* attributes set after creation",
            ));
        }
        if c.modcaps.is_some() {
            return Err(unsupported(
                "--modcaps",
                "the kept capabilities are fixed by the sandbox (see docs/architecture.md); --sandbox=none keeps the caller's",
            ));
        }
        if c.allow_mmap && matches!(self.fs.cache, CacheMode::Never | CacheMode::Metadata) {
            return Err(unsupported(
                "--allow-mmap",
                "shared mmap with --cache=never|metadata needs FUSE_DIRECT_IO_ALLOW_MMAP, which this daemon does not offer; use --cache=auto or --cache=always, where mmap works",
            ));
        }
        Ok(self)
    }

    /// `--posix-acl`'s mode (`--no-posix-acl`: never).
    pub fn acl_mode(&self) -> Result<AclMode, CliError> {
        if self.compat.no_posix_acl {
            return Ok(AclMode::Never);
        }
        parse_acl_mode(self.compat.posix_acl.as_deref())
    }

    /// The UID and GID translation the `--translate-*` and `--*-map` flags describe.
    pub fn id_maps(&self) -> Result<IdMaps, CliError> {
        let c = &self.compat;
        let uid = IdTranslation::from_flags(&c.translate_uid, &c.uid_map)
            .map_err(|e| CliError::IdMap("--translate-uid/--uid-map", e))?;
        let gid = IdTranslation::from_flags(&c.translate_gid, &c.gid_map)
            .map_err(|e| CliError::IdMap("--translate-gid/--gid-map", e))?;
        Ok(IdMaps { uid, gid })
    }

    fn apply_compat_option(&mut self, option: &str) -> Result<(), CliError> {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        let bad = |reason: String| CliError::BadCompatOption {
            option: option.to_string(),
            reason,
        };
        let parse = |v: Option<&str>| -> Result<String, CliError> {
            v.map(str::to_string)
                .ok_or_else(|| bad("needs a value".to_string()))
        };
        match key {
            "announce_submounts" => self.fs.announce_submounts = true,
            "no_announce_submounts" => self.fs.announce_submounts = false,
            "xattr" => self.fs.xattr = true,
            "no_xattr" => self.fs.xattr = false,
            "writeback" => self.fs.writeback = true,
            "no_writeback" => self.fs.writeback = false,
            "readdirplus" => self.fs.no_readdirplus = false,
            "no_readdirplus" => self.fs.no_readdirplus = true,
            "allow_direct_io" => self.fs.allow_direct_io = true,
            "no_allow_direct_io" => self.fs.allow_direct_io = false,
            // The daemon's behaviour anyway: locks are served, KILLPRIV_V2 is not offered.
            "flock" | "posix_lock" | "no_killpriv_v2" => {}
            "no_flock" | "no_posix_lock" => return Err(bad("locks are always served".to_string())),
            "killpriv_v2" => self.compat.killpriv_v2 = true,
            "posix_acl" => {
                self.compat.posix_acl = Some("always".to_string());
                self.compat.no_posix_acl = false;
            }
            "no_posix_acl" => self.compat.posix_acl = Some("never".to_string()),
            "cache" => {
                self.fs.cache = match parse(value)?.as_str() {
                    "auto" => CacheMode::Auto,
                    "always" => CacheMode::Always,
                    "never" | "none" => CacheMode::Never,
                    "metadata" => CacheMode::Metadata,
                    other => return Err(bad(format!("unknown cache mode {other:?}"))),
                }
            }
            "source" => self.shared_dir = Some(PathBuf::from(parse(value)?)),
            "sandbox" => {
                self.sandbox = match parse(value)?.as_str() {
                    "namespace" => SandboxMode::Namespace,
                    "chroot" => SandboxMode::Chroot,
                    "none" => SandboxMode::None,
                    other => return Err(bad(format!("unknown sandbox {other:?}"))),
                }
            }
            "log_level" => {
                self.log_level = LogLevel::from_str(&parse(value)?, true).map_err(|_| {
                    bad("expected error, warn, info, debug, trace or off".to_string())
                })?
            }
            _ => return Err(CliError::UnknownCompatOption(option.to_string())),
        }
        Ok(())
    }

    /// The listening socket this invocation asks for.
    pub fn socket_source(&self) -> Result<SocketSource, CliError> {
        match (&self.socket_path, self.fd) {
            (Some(path), None) => {
                if path.to_string_lossy().contains(',') {
                    return Err(CliError::CommaInSocketPath(path.clone()));
                }
                Ok(SocketSource::Path {
                    path: path.clone(),
                    group: self.socket_group.clone(),
                })
            }
            (None, Some(_)) if self.socket_group.is_some() => Err(CliError::SocketGroupWithFd),
            (None, Some(fd)) if fd >= 3 => Ok(SocketSource::Fd(fd)),
            (None, Some(fd)) => Err(CliError::BadFd(fd)),
            // clap refuses both at once; keep the match total.
            _ => Err(CliError::NoSocket),
        }
    }

    /// The shared directory, which the passthrough backend requires.
    pub fn shared_dir(&self) -> Result<&PathBuf, CliError> {
        self.shared_dir.as_ref().ok_or(CliError::NoSharedDir)
    }

    /// The CephFS volume root (`--ceph-root`), checked: absolute, normal components only.
    pub fn ceph_root(&self) -> Result<&str, CliError> {
        checked_ceph_root(self.ceph_root.as_deref())
    }

    /// The `cephfs` module's options (`--backend cephfs`).
    pub fn ceph_options(&self) -> Result<crate::backend::cephfs::CephOptions, CliError> {
        ceph_options(
            &self.ceph,
            self.ceph_root.as_deref(),
            self.ceph_fs.clone(),
            self.ceph_op_timeout,
            &self.fs,
            self.acl_mode()? != AclMode::Never,
        )
    }

    fn validate_backend(&self) -> Result<(), CliError> {
        match self.backend {
            Backend::Passthrough => {
                if self.ceph_root.is_some() {
                    return Err(CliError::CephFlagWithoutCephfs("--ceph-root"));
                }
                if self.ceph_fs.is_some() {
                    return Err(CliError::CephFlagWithoutCephfs("--ceph-fs"));
                }
                if self.ceph.any() && self.accounting.accounting_rados.is_none() {
                    return Err(CliError::CephClientUnused);
                }
                self.shared_dir()?;
            }
            Backend::Cephfs => {
                if self.shared_dir.is_some() {
                    return Err(CliError::SharedDirWithCephfs);
                }
                self.ceph.required("--backend cephfs")?;
                self.ceph_root()?;
                if self.dax_window.is_some() {
                    return Err(CliError::DaxWithCephfs);
                }
                if self.sandbox == SandboxMode::Chroot {
                    return Err(CliError::ChrootWithCephfs);
                }
                cephfs_fs_flags(&self.fs)?;
            }
        }
        if self.accounting.accounting_rados.is_some() {
            self.ceph.required("--accounting-rados")?;
        }
        Ok(())
    }

    /// Checks that need no system call.
    pub fn validate(&self) -> Result<(), CliError> {
        if self.thread_pool_size > MAX_THREAD_POOL {
            return Err(CliError::ThreadPoolTooLarge(self.thread_pool_size));
        }
        match self.overlap_threads {
            Some(n) if n > MAX_THREAD_POOL => return Err(CliError::OverlapTooLarge(n)),
            Some(n) if n > 0 && self.thread_pool_size > 0 => return Err(CliError::OverlapWithPool),
            _ => {}
        }
        if self.poll_max_us > MAX_POLL_US {
            return Err(CliError::PollTooLong(self.poll_max_us));
        }
        if !(1..=MAX_REQUEST_QUEUES).contains(&self.request_queues) {
            return Err(CliError::RequestQueues(self.request_queues));
        }
        if let Some(n) = self
            .queue_threads
            .filter(|n| !(1..=MAX_REQUEST_QUEUES).contains(n))
        {
            return Err(CliError::QueueThreads(n));
        }
        if self.dax_file_size.is_some() && self.dax_window.is_none() {
            return Err(CliError::DaxFileSizeWithoutWindow);
        }
        self.accounting.validate()?;
        self.socket_source()?;
        self.validate_backend()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("virtiofsd-kr").chain(args.iter().copied()))
    }

    /// The flags reach each layer's own option types unchanged.
    #[test]
    fn fs_flags_convert_into_the_backend_and_export_options() {
        let serve = |args: &[&str]| {
            let mut all = vec!["--socket-path=/s", "--shared-dir=/d"];
            all.extend_from_slice(args);
            parse(&all).unwrap().serve
        };
        let s = serve(&[]);
        assert_eq!(s.fs.passthrough(), PassthroughOptions::default());
        let p = s.fs.export_policy();
        assert!(!p.no_readdirplus && !p.announce_submounts && !p.dax && !p.readonly);
        let s = serve(&[
            "--cache=always",
            "--xattr",
            "--writeback",
            "--allow-direct-io",
            "--inode-file-handles=never",
            "--readonly",
            "--no-readdirplus",
            "--announce-submounts",
        ]);
        assert_eq!(
            s.fs.passthrough(),
            PassthroughOptions {
                cache: CacheMode::Always,
                xattr: true,
                writeback: true,
                allow_direct_io: true,
                inode_file_handles: InodeFileHandles::Never,
            }
        );
        let p = s.fs.export_policy();
        assert!(p.no_readdirplus && p.announce_submounts && !p.dax && p.readonly);
    }

    #[test]
    fn reference_style_command_line_parses() {
        let cli = parse(&[
            "--socket-path=/run/vfs.sock",
            "--shared-dir",
            "/srv/share",
            "--cache=never",
            "--thread-pool-size=4",
            "--sandbox=chroot",
            "--seccomp=log",
            "--xattr",
            "--readonly",
            "--writeback",
            "--allow-direct-io",
            "--no-readdirplus",
            "--announce-submounts",
            "--inode-file-handles=prefer",
            "--rlimit-nofile=4096",
            "--log-level=debug",
        ])
        .unwrap();
        assert!(cli.command.is_none());
        let s = cli.serve;
        s.validate().unwrap();
        assert_eq!(s.fs.cache, CacheMode::Never);
        assert_eq!(s.thread_pool_size, 4);
        assert_eq!(s.sandbox, SandboxMode::Chroot);
        assert_eq!(s.seccomp, SeccompAction::Log);
        assert!(s.fs.xattr && s.fs.readonly && s.fs.writeback && s.fs.allow_direct_io);
        assert!(s.fs.no_readdirplus && s.fs.announce_submounts);
        assert_eq!(s.fs.inode_file_handles, InodeFileHandles::Prefer);
        assert_eq!(s.rlimit_nofile, Some(4096));
        assert_eq!(s.log_level, LogLevel::Debug);
        assert_eq!(
            s.socket_source().unwrap(),
            SocketSource::Path {
                path: "/run/vfs.sock".into(),
                group: None
            }
        );
    }

    #[test]
    fn defaults_match_the_reference_daemon() {
        let s = parse(&["--fd=3", "--shared-dir=/x"]).unwrap().serve;
        assert_eq!(s.fs.cache, CacheMode::Auto);
        assert_eq!(s.sandbox, SandboxMode::Namespace);
        assert_eq!(s.seccomp, SeccompAction::Kill);
        assert_eq!(s.thread_pool_size, 0);
        assert_eq!(s.fs.inode_file_handles, InodeFileHandles::Prefer);
        assert_eq!(s.socket_source().unwrap(), SocketSource::Fd(3));
    }

    #[test]
    fn unknown_and_conflicting_flags_are_refused() {
        assert!(parse(&["--socket-path=/a", "--shared-dir=/x", "--no-such-flag"]).is_err());
        assert!(parse(&["--socket-path=/a", "--fd=3", "--shared-dir=/x"]).is_err());
        assert!(parse(&["--socket-path=/a", "--shared-dir=/x", "--cache=sometimes"]).is_err());
        assert!(parse(&["--socket-path=/a", "--shared-dir=/x", "--sandbox=jail"]).is_err());
    }

    #[test]
    fn incomplete_command_lines_get_clear_errors() {
        let s = parse(&["--shared-dir=/x"]).unwrap().serve;
        assert_eq!(s.validate(), Err(CliError::NoSocket));
        let s = parse(&["--socket-path=/a"]).unwrap().serve;
        assert_eq!(s.validate(), Err(CliError::NoSharedDir));
        let s = parse(&["--fd=1", "--shared-dir=/x"]).unwrap().serve;
        assert_eq!(s.validate(), Err(CliError::BadFd(1)));
        let s = parse(&["--fd=3", "--socket-group=kvm", "--shared-dir=/x"])
            .unwrap()
            .serve;
        assert_eq!(s.validate(), Err(CliError::SocketGroupWithFd));
        let s = parse(&["--socket-path=/a,b", "--shared-dir=/x"])
            .unwrap()
            .serve;
        assert!(matches!(s.validate(), Err(CliError::CommaInSocketPath(_))));
        let s = parse(&["--fd=3", "--shared-dir=/x", "--thread-pool-size=5000"])
            .unwrap()
            .serve;
        assert_eq!(s.validate(), Err(CliError::ThreadPoolTooLarge(5000)));
        let s = parse(&["--fd=3", "--shared-dir=/x", "--poll-max-us=20000"])
            .unwrap()
            .serve;
        assert_eq!(s.validate(), Err(CliError::PollTooLong(20000)));
        assert!(parse(&["--fd=3", "--shared-dir=/x", "--poll-max-us=-1"]).is_err());
        let s = parse(&["--fd=3", "--shared-dir=/x"]).expect("parses").serve;
        assert_eq!(s.poll_max_us, 0, "polling is off by default");
        let s = parse(&["--fd=3", "--shared-dir=/x", "--poll-max-us=0"])
            .unwrap()
            .serve;
        assert_eq!((s.validate(), s.poll_max_us), (Ok(()), 0));
        for (n, ok) in [("0", false), ("1", true), ("16", true), ("17", false)] {
            let s = parse(&["--fd=3", "--shared-dir=/x", &format!("--queue-threads={n}")])
                .unwrap()
                .serve;
            let want = if ok {
                Ok(())
            } else {
                Err(CliError::QueueThreads(n.parse().unwrap()))
            };
            assert_eq!(s.validate(), want, "--queue-threads={n}");
        }
        let s = parse(&["--fd=3", "--shared-dir=/x", "--overlap-threads=5000"])
            .unwrap()
            .serve;
        assert_eq!(s.validate(), Err(CliError::OverlapTooLarge(5000)));
        let both = ["--fd=3", "--shared-dir=/x", "--thread-pool-size=4"];
        let s = parse(&[&both[..], &["--overlap-threads=2"]].concat())
            .unwrap()
            .serve;
        assert_eq!(s.validate(), Err(CliError::OverlapWithPool));
        // Turning overlap off explicitly next to a pool says nothing contradictory.
        let s = parse(&[&both[..], &["--overlap-threads=0"]].concat())
            .unwrap()
            .serve;
        assert_eq!(s.validate(), Ok(()));
        let s = parse(&["--fd=3", "--shared-dir=/x", "--dax-file-size=1M"])
            .unwrap()
            .serve;
        assert_eq!(s.validate(), Err(CliError::DaxFileSizeWithoutWindow));
    }

    #[test]
    fn dax_sizes_parse() {
        let s = parse(&[
            "--fd=3",
            "--shared-dir=/x",
            "--dax-window=8G",
            "--dax-file-size=64K",
        ])
        .unwrap()
        .serve;
        s.validate().unwrap();
        assert_eq!(s.dax_window, Some(8 << 30));
        assert_eq!(s.dax_file_size, Some(64 << 10));
        assert!(parse(&["--fd=3", "--shared-dir=/x", "--dax-window=lots"]).is_err());
    }

    #[test]
    fn mount_subcommand_parses() {
        let cli = parse(&["mount", "--shared-dir=/src", "/mnt/x", "--cache=always"]).unwrap();
        match cli.command {
            Some(Command::Mount(m)) => {
                assert_eq!(m.shared_dir, Some(PathBuf::from("/src")));
                assert_eq!(m.mountpoint, PathBuf::from("/mnt/x"));
                assert_eq!(m.fs.cache, CacheMode::Always);
            }
            other => panic!("expected mount, got {other:?}"),
        }
    }

    #[test]
    fn accounting_flags_parse_and_check() {
        let s = parse(&[
            "--fd=3",
            "--shared-dir=/x",
            "--tenant=acme",
            "--volume=vol-1",
            "--pod=pod.a_1",
            "--traffic-class=external",
            "--metrics-addr=127.0.0.1:9100",
            "--accounting-dir=/var/lib/vfs",
            "--rate-limit-bytes=20MiB",
            "--rate-limit-bytes-burst=4M",
            "--rate-limit-ops=1000",
        ])
        .unwrap()
        .serve;
        s.validate().unwrap();
        let a = &s.accounting;
        assert!(a.enabled());
        assert_eq!(a.traffic_class, TrafficClass::External);
        assert_eq!(a.limits().bytes_per_sec, 20 << 20);
        assert_eq!(a.limits().bytes_burst, 4 << 20);
        assert_eq!(a.limits().ops_per_sec, 1000);
        assert!(!parse(&["--fd=3", "--shared-dir=/x"])
            .unwrap()
            .serve
            .accounting
            .enabled());
        for bad in [
            "--tenant=a/b",
            "--pod=..",
            "--volume=",
            "--metrics-addr=0.0.0.0:9100",
            "--rate-limit-bytes=fast",
            "--traffic-class=dmz",
        ] {
            assert!(parse(&["--fd=3", "--shared-dir=/x", bad]).is_err(), "{bad}");
        }
        let s = parse(&[
            "--fd=3",
            "--shared-dir=/x",
            "--accounting-dir=/d",
            "--tenant=t",
        ])
        .unwrap()
        .serve;
        assert_eq!(s.validate(), Err(CliError::AccountingDirWithoutLabels));
        let s = parse(&["--fd=3", "--shared-dir=/x", "--rate-limit-ops-burst=5"])
            .unwrap()
            .serve;
        assert!(matches!(s.validate(), Err(CliError::BurstWithoutLimit(_))));
    }

    #[test]
    fn accounting_subcommands_parse() {
        let cli = parse(&["stats", "--metrics-addr=unix:/run/m.sock"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Stats(_))));
        let cli = parse(&["limits", "--metrics-addr=127.0.0.1:1", "bytes=1M", "ops=5"]).unwrap();
        match cli.command {
            Some(Command::Limits(l)) => assert_eq!(l.set, vec!["bytes=1M", "ops=5"]),
            other => panic!("expected limits, got {other:?}"),
        }
        let cli = parse(&[
            "accounting",
            "report",
            "--tenant=acme",
            "--accounting-dir=/a",
            "--accounting-dir=/b",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Accounting(AccountingCommand::Report(r))) => {
                assert_eq!(r.tenant, "acme");
                assert_eq!(r.accounting_dir.len(), 2);
            }
            other => panic!("expected a report, got {other:?}"),
        }
        assert!(parse(&["accounting", "report", "--tenant=acme"]).is_err());
        // RADOS alone is a source; the ceph flags come with it.
        let cli = parse(&[
            "accounting",
            "report",
            "--tenant=acme",
            "--rados-pool=acct",
            "--ceph-conf=/etc/ceph/ceph.conf",
            "--ceph-id=acct-acme",
            "--ceph-keyring=/k",
        ])
        .unwrap();
        match cli.command {
            Some(Command::Accounting(AccountingCommand::Report(r))) => {
                assert!(r.accounting_dir.is_empty());
                assert_eq!(r.rados_pool.as_deref(), Some("acct"));
                let (conf, id, keyring) = r.ceph.required("--rados-pool").unwrap();
                assert_eq!(
                    (conf, id.as_str(), keyring),
                    ("/etc/ceph/ceph.conf".into(), "acct-acme", "/k".into())
                );
                let opts = r.options().unwrap();
                let sink = opts.rados.expect("a RADOS source");
                assert_eq!(
                    (sink.pool.as_str(), sink.id.as_str()),
                    ("acct", "acct-acme")
                );
                assert!(opts.accounting_dirs.is_empty());
            }
            other => panic!("expected a report, got {other:?}"),
        }
        // Both sources at once; the ceph flags alone are not a source.
        assert!(parse(&[
            "accounting",
            "report",
            "--tenant=acme",
            "--rados-pool=acct",
            "--accounting-dir=/a",
        ])
        .is_ok());
        let err = parse(&["accounting", "report", "--tenant=acme", "--ceph-id=x"]).unwrap_err();
        assert!(err.to_string().contains("--rados-pool"), "{err}");
        // A journal source with ceph flags that nothing uses, or a pool without its flags.
        let report = |args: &[&str]| match parse(args).unwrap().command {
            Some(Command::Accounting(AccountingCommand::Report(r))) => r.options(),
            other => panic!("expected a report, got {other:?}"),
        };
        assert_eq!(
            report(&[
                "accounting",
                "report",
                "--tenant=a",
                "--accounting-dir=/a",
                "--ceph-id=x"
            ])
            .unwrap_err(),
            CliError::CephFlagsWithoutPool
        );
        assert!(matches!(
            report(&[
                "accounting",
                "report",
                "--tenant=a",
                "--rados-pool=p",
                "--ceph-id=x"
            ]),
            Err(CliError::MissingCephFlag {
                flag: "--ceph-conf",
                ..
            })
        ));
        assert!(parse(&[
            "accounting",
            "report",
            "--tenant=acme",
            "--ceph-id=client.x"
        ])
        .is_err());
    }

    #[test]
    fn cephfs_backend_flags_are_checked() {
        let ceph = [
            "--fd=3",
            "--backend=cephfs",
            "--ceph-conf=/etc/ceph/ceph.conf",
            "--ceph-id=vol-a",
            "--ceph-keyring=/k",
            "--ceph-root=/volumes/a",
        ];
        let with = |extra: &[&str]| {
            let args: Vec<&str> = ceph.iter().chain(extra).copied().collect();
            parse(&args).map(|c| c.serve)
        };
        let s = with(&[]).unwrap();
        s.validate().unwrap();
        assert_eq!(s.backend, Backend::Cephfs);
        assert_eq!(s.ceph_root().unwrap(), "/volumes/a");
        assert_eq!(s.ceph_op_timeout, 30);
        let refused = |extra: &[&str]| with(extra).unwrap().validate().unwrap_err();
        assert_eq!(refused(&["--shared-dir=/x"]), CliError::SharedDirWithCephfs);
        assert_eq!(refused(&["--dax-window=1G"]), CliError::DaxWithCephfs);
        assert_eq!(refused(&["--sandbox=chroot"]), CliError::ChrootWithCephfs);
        assert_eq!(
            refused(&["--inode-file-handles=mandatory"]),
            CliError::FileHandlesWithCephfs
        );
        assert!(matches!(
            refused(&["--writeback"]),
            CliError::Unsupported { ref flag, .. } if flag.starts_with("--writeback")
        ));
        let direct = |extra: &[&str]| with(extra).unwrap().ceph_options().unwrap();
        assert!(direct(&["--allow-direct-io"]).honour_o_direct);
        assert!(!direct(&[]).honour_o_direct);
        // `prefer`, the default, means nothing without host descriptors: accepted.
        with(&["--inode-file-handles=prefer"])
            .unwrap()
            .validate()
            .unwrap();
        for root in ["volumes/a", "/volumes/../x", "/volumes/./a", "/a//b"] {
            let mut s = with(&[]).unwrap();
            s.ceph_root = Some(root.to_string());
            assert_eq!(
                s.validate(),
                Err(CliError::BadCephRoot(root.to_string())),
                "{root}"
            );
        }
        for (missing, flag) in [
            ("--ceph-conf", "--ceph-conf"),
            ("--ceph-id", "--ceph-id"),
            ("--ceph-keyring", "--ceph-keyring"),
            ("--ceph-root", "--ceph-root"),
        ] {
            let args: Vec<&str> = ceph
                .iter()
                .filter(|a| !a.starts_with(missing))
                .copied()
                .collect();
            let s = parse(&args).unwrap().serve;
            assert!(
                matches!(s.validate(), Err(CliError::MissingCephFlag { flag: f, .. }) if f == flag),
                "{missing}"
            );
        }
        assert!(parse(&["--fd=3", "--shared-dir=/x", "--ceph-id=client.admin"]).is_err());
        let s = parse(&["--fd=3", "--shared-dir=/x", "--ceph-root=/v"])
            .unwrap()
            .serve;
        assert_eq!(
            s.validate(),
            Err(CliError::CephFlagWithoutCephfs("--ceph-root"))
        );
        let s = parse(&["--fd=3", "--shared-dir=/x", "--ceph-conf=/c"])
            .unwrap()
            .serve;
        assert_eq!(s.validate(), Err(CliError::CephClientUnused));
    }

    /// Every filesystem flag, on both command lines that serve CephFS (the daemon and
    /// `mount`), is either refused with `--backend cephfs` or changes what the backend or the
    /// export layer is given: none is accepted and silently ignored (as `--allow-direct-io`
    /// and `--writeback` once were). The flags come from clap's own list, so a new one is
    /// checked too.
    #[test]
    fn cephfs_honours_or_refuses_every_filesystem_flag() {
        use clap::Args as _;
        // Accepted although they change nothing for CephFS, and why that is right.
        let exempt = [(
            "inode-file-handles",
            "CephFS holds no host inodes: prefer (the default) and never are what it does",
        )];
        let ceph = [
            "--backend=cephfs",
            "--ceph-conf=/c",
            "--ceph-id=vol-a",
            "--ceph-keyring=/k",
            "--ceph-root=/volumes/a",
        ];
        let serve = |flag: Option<&str>| -> Result<String, CliError> {
            let mut args = vec!["--fd=3"];
            args.extend(ceph);
            args.extend(flag);
            let s = normalized(&args)?;
            s.validate()?;
            Ok(format!(
                "{:?} {:?}",
                s.ceph_options()?,
                s.fs.export_policy()
            ))
        };
        let mount = |flag: Option<&str>| -> Result<String, CliError> {
            let mut args = vec!["mount"];
            args.extend(ceph);
            args.extend(flag);
            args.push("/mnt/a");
            match parse(&args).unwrap().command {
                Some(Command::Mount(m)) => {
                    let o = m.mount_options("host".into())?;
                    Ok(format!("{:?} {:?} {}", o.backend, o.policy, o.readonly))
                }
                other => panic!("expected mount, got {other:?}"),
            }
        };
        let (serve_base, mount_base) = (serve(None).unwrap(), mount(None).unwrap());
        let fs_flags = FsOptions::augment_args(clap::Command::new("fs"));
        let mut checked = Vec::new();
        for arg in fs_flags.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if exempt.iter().any(|(f, _)| *f == long) {
                continue;
            }
            let flag = match arg.get_action() {
                clap::ArgAction::SetTrue => format!("--{long}"),
                _ => {
                    let default: Vec<String> = arg
                        .get_default_values()
                        .iter()
                        .map(|v| v.to_string_lossy().into_owned())
                        .collect();
                    let other = arg
                        .get_possible_values()
                        .into_iter()
                        .map(|v| v.get_name().to_string())
                        .find(|v| !default.contains(v))
                        .unwrap_or_else(|| panic!("--{long}: no value other than the default"));
                    format!("--{long}={other}")
                }
            };
            for (what, base, seen) in [
                ("daemon", &serve_base, serve(Some(&flag))),
                ("mount", &mount_base, mount(Some(&flag))),
            ] {
                if let Ok(seen) = seen {
                    assert_ne!(
                        &seen, base,
                        "{what} {flag} with --backend cephfs: accepted, yet nothing the backend \
                         or the export layer is given changed"
                    );
                }
            }
            checked.push(flag);
        }
        for (f, _) in exempt {
            assert!(
                fs_flags.get_arguments().any(|a| a.get_long() == Some(f)),
                "exemption for --{f}, which is no filesystem flag any more"
            );
        }
        assert!(
            checked.len() >= 7 && checked.iter().any(|f| f == "--allow-direct-io"),
            "{checked:?}"
        );
    }

    #[test]
    fn volume_subcommands_parse() {
        let cli = parse(&["volume", "create", "shared", "--quota", "10G"]).unwrap();
        match cli.command {
            Some(Command::Volume(v)) => {
                assert!(matches!(
                    v.command,
                    VolumeCommand::Create { ref name, quota: Some(q), .. } if name == "shared" && q == 10 << 30
                ));
                assert_eq!(v.args.ceph_id, "admin");
                assert_eq!(v.args.volumes_root, "/volumes");
            }
            other => panic!("expected volume create, got {other:?}"),
        }
        let cli = parse(&["volume", "snapshot", "shared", "s1", "--ceph-conf=/c.conf"]).unwrap();
        match cli.command {
            Some(Command::Volume(v)) => {
                assert!(matches!(
                    v.command,
                    VolumeCommand::Snapshot { rm: false, .. }
                ));
                assert_eq!(v.args.ceph_conf, PathBuf::from("/c.conf"));
            }
            other => panic!("expected volume snapshot, got {other:?}"),
        }
        for bad in [
            &["volume", "create", ".snap"][..],
            &["volume", "create", "a/b"],
            &["volume", "snapshot", "v", ".."],
            &["volume", "create", "v", "--quota", "lots"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mount_of_a_cephfs_volume_converts_with_the_defaults() {
        let base = [
            "mount",
            "--backend=cephfs",
            "--ceph-conf=/c",
            "--ceph-id=vol-a",
            "--ceph-keyring=/k",
            "--ceph-root=/volumes/a",
            "--tenant=docker",
            "--volume=a",
            "--pod=p1",
            "--rate-limit-bytes=1M",
            "/mnt/a",
        ];
        let opts = |extra: &[&str]| match parse(&[&base[..], extra].concat()).unwrap().command {
            Some(Command::Mount(m)) => m.mount_options("host".to_string()),
            other => panic!("expected mount, got {other:?}"),
        };
        let o = opts(&[]).unwrap();
        assert!(
            matches!(o.backend, crate::control::fusedev::MountBackend::CephFs(ref c) if c.root == "/volumes/a" && c.id == "vol-a")
        );
        let acct = o.accounting.expect("accounting asked for");
        assert_eq!(acct.labels.pod, "p1");
        assert_eq!(acct.limits.bytes_per_sec, 1 << 20);
        assert!(o.seccomp.is_some());
        assert_eq!(
            opts(&["--inode-file-handles=mandatory"]).unwrap_err(),
            CliError::FileHandlesWithCephfs
        );
        assert_eq!(
            opts(&["--shared-dir=/x"]).unwrap_err(),
            CliError::SharedDirWithCephfs
        );
        // No ACLs unless asked; asked, they reach the export and the Ceph client, with xattrs.
        let ceph_acl = |o: &crate::control::fusedev::MountOptions| match &o.backend {
            crate::control::fusedev::MountBackend::CephFs(c) => c.posix_acl,
            other => panic!("expected cephfs, got {other:?}"),
        };
        let o = opts(&[]).unwrap();
        assert_eq!(o.policy.posix_acl, AclMode::Never);
        assert!(!ceph_acl(&o) && !o.policy.xattr);
        for (flag, mode) in [
            ("--posix-acl", AclMode::Always),
            ("--posix-acl=auto", AclMode::Auto),
            ("--posix-acl=always", AclMode::Always),
        ] {
            let o = opts(&[flag]).unwrap();
            assert_eq!(o.policy.posix_acl, mode, "{flag}");
            assert!(ceph_acl(&o) && o.policy.xattr, "{flag}");
        }
        let o = opts(&["--posix-acl=never"]).unwrap();
        assert!(!ceph_acl(&o) && o.policy.posix_acl == AclMode::Never);
        assert!(matches!(
            opts(&["--posix-acl=sometimes"]).unwrap_err(),
            CliError::BadFlagValue {
                flag: "--posix-acl",
                ..
            }
        ));
    }

    fn normalized(args: &[&str]) -> Result<ServeArgs, CliError> {
        parse(args).unwrap().serve.normalized()
    }

    #[test]
    fn integrators_argument_lists_are_accepted() {
        // Kata's Go runtime (virtiofsd.go) with its default extra arguments.
        let s = normalized(&[
            "--syslog",
            "--cache=auto",
            "--shared-dir=/run/kata/shared",
            "--fd=3",
            "--thread-pool-size=1",
            "--announce-submounts",
        ])
        .unwrap();
        s.validate().unwrap();
        assert!(s.syslog && s.fs.announce_submounts);
        assert_eq!(s.socket_source().unwrap(), SocketSource::Fd(3));
        // Older Kata configurations: the legacy `-o` form.
        let s = normalized(&[
            "--fd=3",
            "--shared-dir=/d",
            "-o",
            "announce_submounts,cache=never,xattr",
            "-d",
            "-f",
        ])
        .unwrap();
        s.validate().unwrap();
        assert!(s.fs.announce_submounts && s.fs.xattr);
        assert_eq!(s.fs.cache, CacheMode::Never);
        assert_eq!(s.log_level, LogLevel::Debug);
        // Kata runtime-rs, libvirt, cloud-hypervisor's docs.
        for list in [
            &[
                "--socket-path=/run/v.sock",
                "--shared-dir=/d",
                "--cache=never",
                "--sandbox=none",
                "--seccomp=none",
            ][..],
            &[
                "--fd=3",
                "--shared-dir=/d",
                "--xattr",
                "--cache=always",
                "--thread-pool-size=4",
            ],
            &["--socket=/run/v.sock", "--shared-dir=/d", "--cache=never"],
            &[
                "--socket-path=/s",
                "--shared-dir=/d",
                "--no-killpriv-v2",
                "--posix-acl=never",
                "--security-label=never",
                "--preserve-noatime",
                "--no-announce-submounts",
                "--allow-mmap",
                "--log-level=info",
            ],
        ] {
            let s = normalized(list).unwrap_or_else(|e| panic!("{list:?}: {e}"));
            s.validate().unwrap_or_else(|e| panic!("{list:?}: {e}"));
        }
        let s = normalized(&["--socket=/run/v.sock", "--shared-dir=/d"]).unwrap();
        assert_eq!(s.socket_path, Some(PathBuf::from("/run/v.sock")));
        assert!(
            !normalized(&[
                "--socket-path=/s",
                "--shared-dir=/d",
                "-o",
                "announce_submounts",
                "--no-announce-submounts"
            ])
            .unwrap()
            .fs
            .announce_submounts
        );
    }

    #[test]
    fn unsupported_reference_flags_are_refused_with_the_alternative() {
        for (flag, alternative) in [
            ("--xattrmap=:map::user.virtiofs.:", "--xattr"),
            ("--killpriv-v2", "--no-killpriv-v2"),
            ("--security-label", "--xattr"),
            ("--modcaps=+sys_admin", "--sandbox=none"),
        ] {
            let e = normalized(&["--socket-path=/s", "--shared-dir=/d", flag]).unwrap_err();
            assert!(matches!(e, CliError::Unsupported { .. }), "{flag}: {e}");
            assert!(e.to_string().contains(alternative), "{flag}: {e}");
        }
        let e = normalized(&[
            "--socket-path=/s",
            "--shared-dir=/d",
            "--cache=never",
            "--allow-mmap",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("--cache=auto"), "{e}");
        let e =
            normalized(&["--socket-path=/s", "--shared-dir=/d", "-o", "frobnicate"]).unwrap_err();
        assert_eq!(e, CliError::UnknownCompatOption("frobnicate".into()));
        let e = normalized(&[
            "--socket-path=/s",
            "--shared-dir=/d",
            "-o",
            "cache=sometimes",
        ])
        .unwrap_err();
        assert!(matches!(e, CliError::BadCompatOption { .. }), "{e}");
        assert!(parse(&[
            "--socket-path=/s",
            "--shared-dir=/d",
            "--killpriv-v2",
            "--no-killpriv-v2"
        ])
        .is_err());
    }

    #[test]
    fn help_documents_every_flag() {
        use clap::CommandFactory;
        let help = Cli::command().render_long_help().to_string();
        for flag in [
            "--socket-path",
            "--fd",
            "--socket-group",
            "--shared-dir",
            "--cache",
            "--thread-pool-size",
            "--sandbox",
            "--seccomp",
            "--xattr",
            "--readonly",
            "--writeback",
            "--allow-direct-io",
            "--no-readdirplus",
            "--announce-submounts",
            "--inode-file-handles",
            "--rlimit-nofile",
            "--log-level",
            "--tenant",
            "--volume",
            "--pod",
            "--traffic-class",
            "--metrics-addr",
            "--accounting-dir",
            "--rate-limit-bytes",
            "--rate-limit-bytes-burst",
            "--rate-limit-ops",
            "--rate-limit-ops-burst",
            "--backend",
            "--ceph-conf",
            "--ceph-id",
            "--ceph-keyring",
            "--ceph-root",
            "--ceph-fs",
            "--ceph-op-timeout",
        ] {
            assert!(help.contains(flag), "--help does not mention {flag}");
        }
    }

    #[test]
    fn posix_acl_and_id_translation_flags_are_served_with_the_reference_rules() {
        let base = ["--socket-path=/s", "--shared-dir=/d"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            normalized(&v)
        };
        for (flags, mode) in [
            (&["--posix-acl"][..], AclMode::Always),
            (&["--posix-acl=auto"][..], AclMode::Auto),
            (&["--posix-acl=never"][..], AclMode::Never),
            (&["--no-posix-acl"][..], AclMode::Never),
            (&["-o", "posix_acl"][..], AclMode::Always),
            (&["-o", "posix_acl,no_posix_acl"][..], AclMode::Never),
            (&[][..], AclMode::Never),
        ] {
            let s = with(flags).unwrap();
            assert_eq!(s.acl_mode().unwrap(), mode, "{flags:?}");
            // ACLs are extended attributes: --posix-acl turns them on.
            assert_eq!(s.fs.xattr, mode != AclMode::Never, "{flags:?}");
        }
        assert!(matches!(
            with(&["--posix-acl=sometimes"]).unwrap_err(),
            CliError::BadFlagValue { .. }
        ));
        let e = with(&["--posix-acl", "--translate-uid=map:0:1000:1"]).unwrap_err();
        assert!(e.to_string().contains("choose one"), "{e}");
        let s = with(&[
            "--translate-uid=map:0:1000:10",
            "--translate-uid=squash-guest:10:65534:100",
            "--gid-map=:0:2000:10:",
        ])
        .unwrap();
        let ids = s.id_maps().unwrap();
        assert_eq!(ids.uid.to_host(3), Ok(1003));
        assert_eq!(ids.uid.to_host(50), Ok(65534));
        assert_eq!(ids.gid.to_guest(2004), 4);
        assert_eq!(ids.gid.to_guest(7), crate::fuse::id_map::OVERFLOW_ID);
        for bad in [
            "--translate-uid=map:0:1000",
            "--translate-gid=map:0:1000:10:5",
            "--uid-map=0:1:2",
            "--translate-uid=map:0:1:10 --translate-uid=guest:5:9:1",
        ] {
            let args: Vec<&str> = bad.split(' ').collect();
            let e = with(&args).unwrap_err();
            assert!(matches!(e, CliError::IdMap(..)), "{bad}: {e}");
        }
        // On CephFS, libcephfs keeps and enforces the ACLs: the flag reaches its options.
        let ceph = |acl: &[&str]| {
            let mut a = vec![
                "--socket-path=/s",
                "--backend=cephfs",
                "--ceph-root=/volumes/a",
                "--ceph-id=a",
                "--ceph-conf=/c",
                "--ceph-keyring=/k",
            ];
            a.extend_from_slice(acl);
            normalized(&a).unwrap()
        };
        let with_acl = ceph(&["--posix-acl"]);
        assert!(with_acl.fs.xattr);
        assert!(with_acl.ceph_options().unwrap().posix_acl);
        assert!(!ceph(&[]).ceph_options().unwrap().posix_acl);
        assert!(
            !ceph(&["--posix-acl=never"])
                .ceph_options()
                .unwrap()
                .posix_acl
        );
    }
}
