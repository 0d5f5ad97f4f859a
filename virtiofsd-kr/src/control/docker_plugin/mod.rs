//! `virtiofsd-kr docker-plugin`: the `gfs` Docker volume driver (`docker volume create
//! shared --driver gfs`, `docker run -v shared:/data`), speaking Docker's legacy plugin
//! protocol on a Unix socket (`/run/docker/plugins/gfs.sock` by default, where dockerd looks
//! for a plugin named `gfs` at first use).
//!
//! A volume is a CephFS volume as `virtiofsd-kr volume` makes it (directory, quota, data pool,
//! identity `client.vol-NAME`, rate limits); a container's mount is a host FUSE mount served
//! by `virtiofsd-kr mount --backend cephfs` as that identity. The pieces:
//!
//! * [`protocol`]: requests to answers, a function of (state, path, body) over two traits;
//! * [`store`]: the cluster (volumes exist there, so every host and restart sees the same);
//! * [`mounts`]: the serving processes, and reconciling them at start;
//! * [`server`]: hyper's http1 server on the socket.
//!
//! The plugin's own state (which mounts it serves, counted per mount ID) is one JSON file in
//! the state directory, replaced atomically after every change. The plugin runs as root on
//! the host beside dockerd; it never serves file data itself.

pub mod fakes;
pub mod mounts;
pub mod protocol;
pub mod server;
pub mod store;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, Signal};
use tracing::{info, warn};

use crate::control::volume::AdminOptions;
use mounts::{MountConfig, ProcessMounter};
use protocol::PluginState;
use store::CephVolumes;

/// The plugin's socket where dockerd finds a plugin named `gfs`.
pub const DEFAULT_SOCKET: &str = "/run/docker/plugins/gfs.sock";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/virtiofsd-kr/docker";

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error("state {path:?}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("blocking termination signals: {0}")]
    Signals(nix::Error),
    #[error("cannot find this program's path: {0}")]
    Exe(std::io::Error),
}

/// How the plugin runs (converted from the command line by `cli`).
#[derive(Debug, Clone)]
pub struct PluginOptions {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub admin: AdminOptions,
    pub tenant: String,
    /// Extra flags for every `virtiofsd-kr mount` it starts.
    pub mount_flags: Vec<String>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

/// Reads the state file (none yet: empty state).
pub fn load_state(dir: &Path) -> Result<PluginState, PluginError> {
    let path = state_path(dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| PluginError::State {
            path,
            reason: format!("unreadable ({e}); move it away to start afresh"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PluginState::default()),
        Err(e) => Err(PluginError::State {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Replaces the state file atomically (write, fsync, rename).
pub fn save_state(dir: &Path, state: &PluginState) -> Result<(), PluginError> {
    let path = state_path(dir);
    let err = |e: std::io::Error| PluginError::State {
        path: path.clone(),
        reason: e.to_string(),
    };
    let tmp = dir.join("state.json.tmp");
    let text = serde_json::to_vec_pretty(state).map_err(|e| PluginError::State {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(&text).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)
}

/// The plugin's mutable core, behind one lock: calls are served one at a time.
struct Core {
    state: PluginState,
    store: CephVolumes,
    mounter: ProcessMounter,
    state_dir: PathBuf,
}

impl Core {
    fn call(&mut self, path: &str, body: &[u8]) -> protocol::Response {
        let before = self.state.clone();
        let response = protocol::handle(
            &mut self.state,
            &mut self.store,
            &mut self.mounter,
            path,
            body,
        );
        if self.state != before {
            if let Err(e) = save_state(&self.state_dir, &self.state) {
                warn!("{e}: the mount table will not survive a restart");
            }
        }
        response
    }
}

/// Runs the plugin until SIGTERM/SIGINT (mounts stay served: a restarted plugin takes them
/// over).
pub fn run(opts: PluginOptions) -> Result<(), PluginError> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(PluginError::Signals)?;
    std::fs::create_dir_all(&opts.state_dir).map_err(|e| PluginError::State {
        path: opts.state_dir.clone(),
        reason: e.to_string(),
    })?;
    let exe = std::env::current_exe().map_err(PluginError::Exe)?;
    let mut state = load_state(&opts.state_dir)?;
    let mut store = CephVolumes::new(opts.admin.clone());
    let mut mounter = ProcessMounter::new(MountConfig {
        exe,
        state_dir: opts.state_dir.clone(),
        tenant: opts.tenant.clone(),
        extra: opts.mount_flags.clone(),
    });
    mounts::reconcile(&mut state, &mut mounter, |name| {
        protocol::VolumeStore::identity(&mut store, name)
    });
    save_state(&opts.state_dir, &state)?;
    let listener = server::bind(&opts.socket)?;
    let core = Arc::new(Mutex::new(Core {
        state,
        store,
        mounter,
        state_dir: opts.state_dir.clone(),
    }));

    let socket = opts.socket.clone();
    let signal_core = core.clone();
    std::thread::Builder::new()
        .name("plugin-signals".to_string())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                info!("received {sig}: exiting; mounts stay served");
                let _ = std::fs::remove_file(&socket);
                // Waits for a call in progress, then ends the cluster session cleanly.
                let mut core = signal_core.lock().unwrap_or_else(|p| p.into_inner());
                core.store.disconnect();
                crate::process::exit_now(0);
            }
        })
        .map_err(PluginError::Exe)?;

    info!(socket = %opts.socket.display(), state = %opts.state_dir.display(), "gfs volume plugin ready");
    let handler: server::Handler = Arc::new(move |path, body| {
        let mut core = core.lock().unwrap_or_else(|p| p.into_inner());
        core.call(path, body)
    });
    server::serve(listener, handler)?;
    Ok(())
}
