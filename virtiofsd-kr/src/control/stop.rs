//! `ServeStop`: how a termination signal ends the vhost-user daemon by the same path as a
//! frontend that disconnects.
//!
//! Owns duplicates of the listening socket and, once a frontend has connected, of its
//! connection, and the thread that takes SIGTERM, SIGINT and SIGHUP. The first signal shuts
//! the sockets down (`shutdown(2)`): the thread serving them returns as if the frontend had
//! left (a waiting `accept` fails, the connection reads end-of-file), and the daemon ends
//! through its one orderly path: queue threads and request workers joined, the backend
//! closed (a CephFS client writes back what the guest wrote and ends its MDS session, so no
//! other pod waits for the MDS to evict it), accounting flushed, sockets removed. A second
//! signal, or that path outlasting its limit, ends the process at once.
//!
//! Must not: close or read the sockets it duplicates (the serving thread owns them), or do
//! the daemon's work of ending; it only starts it, and runs the caller's last step (`on_exit`)
//! when it has to end the process itself.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::SigSet;
use nix::sys::socket::Shutdown;
use tracing::{info, warn};

/// Ends the serving of the vhost-user socket from another thread.
#[derive(Debug)]
pub struct ServeStop {
    state: Mutex<StopState>,
}

#[derive(Debug)]
struct StopState {
    stopping: bool,
    /// Duplicates of the listening socket and of the frontend's connection.
    sockets: Vec<OwnedFd>,
}

fn shut_down(socket: &OwnedFd) {
    // A socket the peer already closed reports ENOTCONN: nothing left to wake.
    let _ = nix::sys::socket::shutdown(std::os::fd::AsRawFd::as_raw_fd(socket), Shutdown::Both);
}

impl ServeStop {
    /// For the daemon listening on `listener`.
    pub fn new(listener: BorrowedFd<'_>) -> std::io::Result<ServeStop> {
        Ok(ServeStop {
            state: Mutex::new(StopState {
                stopping: false,
                sockets: vec![listener.try_clone_to_owned()?],
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, StopState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A frontend connected on `socket`; a stop that came first (between `accept` and here)
    /// ends it right away.
    pub fn connected(&self, socket: BorrowedFd<'_>) {
        let mut state = self.state();
        match socket.try_clone_to_owned() {
            Ok(dup) => {
                if state.stopping {
                    shut_down(&dup);
                }
                state.sockets.push(dup);
            }
            Err(e) => warn!(
                "no duplicate of the frontend's socket ({e}): a signal will end the daemon only at \
                 its exit limit, without closing the backend"
            ),
        }
    }

    /// Makes the serving thread return: the listener and the connection are shut down.
    pub fn stop(&self) {
        let mut state = self.state();
        state.stopping = true;
        state.sockets.iter().for_each(shut_down);
    }

    /// Whether [`Self::stop`] was called (an `accept` that then failed is the stop, not an
    /// error).
    pub fn stopping(&self) -> bool {
        self.state().stopping
    }

    /// Whether a frontend connection can still be shut down (for tests).
    #[cfg(test)]
    fn sockets(&self) -> usize {
        self.state().sockets.len()
    }
}

/// Takes `signals` on a thread of its own: the first stops `stop` and leaves the process to
/// end by itself within `limit`; a second one, or the limit passing, calls `on_exit` and ends
/// the process with 0.
pub fn spawn_signal_thread(
    signals: SigSet,
    stop: Arc<ServeStop>,
    limit: Duration,
    on_exit: impl Fn() + Send + Sync + 'static,
) {
    let on_exit = Arc::new(on_exit);
    let spawned = std::thread::Builder::new()
        .name("vfs-signals".to_string())
        .spawn(move || {
            let Ok(sig) = signals.wait() else {
                return;
            };
            info!(
                "received {sig}: closing the backend and exiting (a second signal exits at once)"
            );
            stop.stop();
            let at_limit = on_exit.clone();
            let timer = std::thread::Builder::new()
                .name("vfs-exit-limit".to_string())
                .spawn(move || {
                    std::thread::sleep(limit);
                    warn!(
                        "still ending {limit:?} after the signal: exiting without waiting longer"
                    );
                    at_limit();
                    crate::process::exit_now(0);
                });
            if let Err(e) = timer {
                warn!("no thread to bound the exit ({e}): a second signal ends the daemon at once");
            }
            if let Ok(sig) = signals.wait() {
                warn!("received {sig} again: exiting without waiting for the backend");
                on_exit();
                crate::process::exit_now(0);
            }
        });
    if let Err(e) = spawned {
        warn!("no signal thread ({e}); SIGTERM will not exit cleanly");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::time::Instant;

    fn listener() -> (tempfile::TempDir, UnixListener) {
        let dir = tempfile::tempdir().unwrap();
        let l = UnixListener::bind(dir.path().join("s")).unwrap();
        (dir, l)
    }

    /// Runs `blocking` on a thread and returns its result, failing if `stop` does not end
    /// it within 5 s.
    fn ended_by<T: Send + 'static>(
        stop: &ServeStop,
        blocking: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(blocking()).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert!(rx.try_recv().is_err(), "returned before the stop");
        let t = Instant::now();
        stop.stop();
        let r = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("the stop ended it");
        assert!(t.elapsed() < Duration::from_secs(5));
        r
    }

    #[test]
    fn a_waiting_accept_fails_when_stopped() {
        let (_dir, l) = listener();
        let stop = ServeStop::new(l.as_fd()).unwrap();
        let r = ended_by(&stop, move || l.accept().map(|_| ()));
        assert!(r.is_err(), "accept after the stop: {r:?}");
        assert!(stop.stopping());
    }

    #[test]
    fn a_stop_before_accept_makes_it_fail_at_once() {
        let (_dir, l) = listener();
        let stop = ServeStop::new(l.as_fd()).unwrap();
        stop.stop();
        assert!(l.accept().is_err());
    }

    #[test]
    fn the_connection_reads_end_of_file_when_stopped() {
        let (dir, l) = listener();
        let stop = ServeStop::new(l.as_fd()).unwrap();
        // The frontend stays connected and silent.
        let _frontend = UnixStream::connect(dir.path().join("s")).unwrap();
        let (mut conn, _) = l.accept().unwrap();
        stop.connected(conn.as_fd());
        assert_eq!(stop.sockets(), 2);
        let n = ended_by(&stop, move || conn.read(&mut [0u8; 8]).unwrap());
        assert_eq!(n, 0, "end-of-file, as when the frontend leaves");
    }

    #[test]
    fn a_connection_made_after_the_stop_is_shut_at_once() {
        let (dir, l) = listener();
        let stop = ServeStop::new(l.as_fd()).unwrap();
        let _frontend = UnixStream::connect(dir.path().join("s")).unwrap();
        let (mut conn, _) = l.accept().unwrap();
        stop.stop();
        stop.connected(conn.as_fd());
        assert_eq!(conn.read(&mut [0u8; 8]).unwrap(), 0);
    }
}
