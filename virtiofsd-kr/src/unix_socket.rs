//! Unix listening sockets that appear at their path ready to use: bound and listening under a
//! temporary name (`.vkr-PID-PIDNS-N`) in the path's directory, given their mode and group,
//! then renamed onto the path. A client that connects the moment the path exists is neither
//! refused (bound, not yet listening) nor denied (mode or group not yet set), and a watcher
//! never sees the socket with a mode or group it will not keep (it sees `IN_MOVED_TO`, not
//! `IN_CREATE`, for the path). Used by the vhost-user socket, the metrics endpoint's `unix:`
//! socket and the Docker plugin's socket.
//!
//! Owns the temporary name: removed on every error, and the ones a process of this PID
//! namespace left behind when it died between bind and rename are removed before the next
//! bind in that directory (only sockets, only there, never through a symlink; the ones of
//! live processes and of other PID namespaces are left alone). It must not resolve group
//! names or decide anything about an existing path beyond [`Existing`]: callers do, with
//! their own errors.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::unistd::Gid;
use tracing::info;

/// What to do about something already at the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Existing {
    /// Replace it, whatever it is (a directory stays and the rename fails).
    Replace,
    /// Replace a (stale) socket; refuse anything else with [`PlaceError::NotASocket`].
    ReplaceSocket,
}

/// How the socket appears.
#[derive(Debug, Clone, Copy)]
pub struct Placement {
    /// The mode bits to set; `None` keeps what bind gave (0777 less the umask).
    pub mode: Option<u32>,
    /// The group the socket is given, with read and write for that group added to the mode
    /// (so its members may connect).
    pub group: Option<Gid>,
    pub existing: Existing,
}

#[derive(Debug, thiserror::Error)]
pub enum PlaceError {
    #[error("{0:?} exists and is not a socket: refusing to replace it")]
    NotASocket(PathBuf),
    #[error("binding {path:?}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("giving {path:?} group {gid}: {source}")]
    Group {
        path: PathBuf,
        gid: Gid,
        source: std::io::Error,
    },
    #[error("setting the mode of {path:?}: {source}")]
    Mode {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("renaming {temp:?} to {path:?}: {source}")]
    Rename {
        temp: PathBuf,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `sun_path` holds 108 bytes with the terminating NUL.
const SUN_PATH_MAX: usize = 107;
/// What every temporary name starts with.
const TEMP_PREFIX: &str = ".vkr-";

/// Listens on a socket that appears at `path` already listening, with its final mode and
/// group. When the temporary name would not fit a socket address but `path` does, the
/// socket is bound at `path` directly, with the short windows the rename avoids.
pub fn listen_placed(path: &Path, placement: &Placement) -> Result<UnixListener, PlaceError> {
    if placement.existing == Existing::ReplaceSocket {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(PlaceError::NotASocket(path.to_path_buf()));
            }
        }
    }
    let namespace = pid_namespace();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Some(ns) = namespace {
        remove_stale_temporaries(dir, ns);
    }
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let temp = path.with_file_name(format!(
        "{TEMP_PREFIX}{}-{}-{}",
        std::process::id(),
        namespace.unwrap_or(0),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    ));
    if temp.as_os_str().len() > SUN_PATH_MAX {
        let _ = std::fs::remove_file(path);
        let listener = bind(path)?;
        // On an error the socket is left at `path`, as a stale one is: replaced next time.
        finish(path, placement)?;
        return Ok(listener);
    }
    let _ = std::fs::remove_file(&temp);
    let listener = bind(&temp)?;
    let placed = finish(&temp, placement).and_then(|()| {
        std::fs::rename(&temp, path).map_err(|source| PlaceError::Rename {
            temp: temp.clone(),
            path: path.to_path_buf(),
            source,
        })
    });
    if placed.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    placed.map(|()| listener)
}

fn bind(path: &Path) -> Result<UnixListener, PlaceError> {
    let listener = UnixListener::bind(path).map_err(|source| PlaceError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    crate::stall::at(crate::stall::SOCKET_BOUND);
    Ok(listener)
}

/// Gives the socket at `path` its mode and group.
fn finish(path: &Path, placement: &Placement) -> Result<(), PlaceError> {
    let mode_err = |source| PlaceError::Mode {
        path: path.to_path_buf(),
        source,
    };
    let mut mode = match placement.mode {
        Some(mode) => mode,
        None => std::fs::symlink_metadata(path).map_err(mode_err)?.mode() & 0o7777,
    };
    if let Some(gid) = placement.group {
        std::os::unix::fs::lchown(path, None, Some(gid.as_raw())).map_err(|source| {
            PlaceError::Group {
                path: path.to_path_buf(),
                gid,
                source,
            }
        })?;
        mode |= 0o060;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(mode_err)
}

/// This process's PID namespace (the inode of `/proc/self/ns/pid`), if `/proc` tells.
fn pid_namespace() -> Option<u64> {
    std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino())
}

/// The pid a temporary name of PID namespace `ns` was made by, if `name` is one.
fn temporary_of(name: &[u8], ns: u64) -> Option<i32> {
    let rest = std::str::from_utf8(name).ok()?.strip_prefix(TEMP_PREFIX)?;
    let mut parts = rest.split('-');
    let pid = parts.next()?.parse().ok()?;
    let its_ns: u64 = parts.next()?.parse().ok()?;
    let _sequence: u32 = parts.next()?.parse().ok()?;
    (parts.next().is_none() && its_ns == ns).then_some(pid)
}

/// Removes from `dir` the temporary sockets of PID namespace `ns` whose process is gone (it
/// died between bind and rename). Best effort: what cannot be read or removed stays.
fn remove_stale_temporaries(dir: &Path, ns: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(pid) = temporary_of(name.as_bytes(), ns) else {
            continue;
        };
        let gone = matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Err(nix::errno::Errno::ESRCH)
        );
        let path = entry.path();
        // lstat and unlink act on the entry itself, never on what a symlink points to.
        let socket = std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        if gone && socket && std::fs::remove_file(&path).is_ok() {
            info!(
                path = %path.display(),
                "removed a temporary socket left by a process that died while creating it"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket_mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    const PRIVATE: Placement = Placement {
        mode: Some(0o600),
        group: None,
        existing: Existing::ReplaceSocket,
    };

    #[test]
    fn the_socket_appears_listening_with_its_mode_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = listen_placed(&path, &PRIVATE).unwrap();
        assert_eq!(socket_mode(&path), 0o600);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("s.sock")]);
    }

    #[test]
    fn a_group_adds_group_read_write_to_the_mode_and_owns_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let gid = nix::unistd::getegid();
        let placement = Placement {
            group: Some(gid),
            ..PRIVATE
        };
        let _listener = listen_placed(&path, &placement).unwrap();
        assert_eq!(socket_mode(&path), 0o660);
        assert_eq!(
            std::fs::symlink_metadata(&path).unwrap().gid(),
            gid.as_raw()
        );
    }

    #[test]
    fn what_is_not_a_socket_is_refused_or_replaced_as_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let err = listen_placed(&path, &PRIVATE).unwrap_err();
        assert!(matches!(err, PlaceError::NotASocket(_)), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let replace = Placement {
            existing: Existing::Replace,
            ..PRIVATE
        };
        let _listener = listen_placed(&path, &replace).unwrap();
        assert!(std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket());
    }

    #[test]
    fn a_stale_socket_is_replaced_by_a_listening_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(std::os::unix::net::UnixStream::connect(&path).is_err());
        let _listener = listen_placed(&path, &PRIVATE).unwrap();
        std::os::unix::net::UnixStream::connect(&path).unwrap();
    }

    #[test]
    fn a_failed_rename_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        let replace = Placement {
            existing: Existing::Replace,
            ..PRIVATE
        };
        let err = listen_placed(&path, &replace).unwrap_err();
        assert!(matches!(err, PlaceError::Rename { .. }), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A pid that is not running: a child that has been reaped.
    fn gone_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn temporaries_of_dead_processes_of_this_namespace_are_removed_and_nothing_else() {
        let ns = pid_namespace().expect("/proc/self/ns/pid");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dead = gone_pid();
        let stale = format!(".vkr-{dead}-{ns}-0");
        drop(UnixListener::bind(d.join(&stale)).unwrap());
        // A live process's temporary (this one's), another namespace's, a regular file and a
        // symlink with a stale name, and a socket through that symlink's target: all kept.
        let live = format!(".vkr-{}-{ns}-7", std::process::id());
        drop(UnixListener::bind(d.join(&live)).unwrap());
        let other_ns = format!(".vkr-{dead}-{}-0", ns + 1);
        drop(UnixListener::bind(d.join(&other_ns)).unwrap());
        let file = format!(".vkr-{dead}-{ns}-1");
        std::fs::write(d.join(&file), b"").unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        drop(UnixListener::bind(elsewhere.path().join("target")).unwrap());
        let link = format!(".vkr-{dead}-{ns}-2");
        std::os::unix::fs::symlink(elsewhere.path().join("target"), d.join(&link)).unwrap();

        let _listener = listen_placed(&d.join("s.sock"), &PRIVATE).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut kept = vec![live, other_ns, file, link, "s.sock".to_string()];
        kept.sort();
        assert_eq!(names, kept);
        assert!(elsewhere.path().join("target").exists());
    }

    #[test]
    fn only_well_formed_temporary_names_of_this_namespace_are_recognised() {
        assert_eq!(temporary_of(b".vkr-12-99-0", 99), Some(12));
        assert_eq!(temporary_of(b".vkr-12-98-0", 99), None);
        assert_eq!(temporary_of(b".vkr-12-99", 99), None);
        assert_eq!(temporary_of(b".vkr-12-99-0-1", 99), None);
        assert_eq!(temporary_of(b"vkr-12-99-0", 99), None);
        assert_eq!(temporary_of(b".vkr-x-99-0", 99), None);
    }
}
