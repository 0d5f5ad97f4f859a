//! Pauses at named points of start-up, for tests only: `VIRTIOFSD_KR_TEST_STALL=point:ms[,...]`
//! makes the daemon sleep `ms` milliseconds when it reaches `point`.
//!
//! What the daemon promises to an observer (the socket exists, so SIGTERM ends it cleanly and
//! the metrics endpoint answers; the sandboxed child serves, so the supervisor holds no
//! privilege) must be ordered by the code, not by luck of scheduling. A test slows one side
//! down on purpose at one of these points and checks the promise still holds: against code
//! that only happens to be fast enough, it fails every time instead of once in a while on a
//! loaded machine. The points:
//!
//! * [`SOCKET_CREATED`]: right after the vhost-user socket appeared (`control/daemon.rs`);
//! * [`SOCKET_BOUND`]: right after a listening Unix socket was bound, before it has its mode
//!   and group and is put at its path (`unix_socket.rs`: the vhost-user, metrics and Docker
//!   plugin sockets);
//! * [`SUPERVISOR_FORKED`]: in the namespace sandbox's supervisor, right after the fork,
//!   before it drops its capabilities (`confine/sandbox.rs`).
//!
//! Owns reading the variable and sleeping; it must not change anything else the daemon does.
//! An unset variable, an unknown point or a malformed entry is no pause at all (a daemon's
//! environment is its launcher's, and a pause only delays start-up).

use std::time::Duration;

/// The environment variable naming the pauses.
pub const ENV: &str = "VIRTIOFSD_KR_TEST_STALL";
/// Right after the vhost-user socket was created.
pub const SOCKET_CREATED: &str = "socket-created";
/// Right after a Unix socket was bound and listens, before its mode, group and path.
pub const SOCKET_BOUND: &str = "socket-bound";
/// In the namespace supervisor, right after the fork.
pub const SUPERVISOR_FORKED: &str = "supervisor-forked";

/// Sleeps as long as the environment asks for at `point` (usually not at all).
pub fn at(point: &str) {
    if let Some(pause) = std::env::var(ENV).ok().and_then(|v| pause_for(&v, point)) {
        std::thread::sleep(pause);
    }
}

/// The pause `spec` (`point:ms,...`) gives `point`, if any.
fn pause_for(spec: &str, point: &str) -> Option<Duration> {
    spec.split(',')
        .filter_map(|entry| entry.trim().split_once(':'))
        .find(|(name, _)| *name == point)
        .and_then(|(_, ms)| ms.parse().ok())
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_gets_its_own_pause_and_nothing_else_does() {
        let spec = "socket-created:1500, supervisor-forked:20";
        assert_eq!(
            pause_for(spec, SOCKET_CREATED),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            pause_for(spec, SUPERVISOR_FORKED),
            Some(Duration::from_millis(20))
        );
        assert_eq!(pause_for(spec, "elsewhere"), None);
        assert_eq!(pause_for("socket-created:soon", SOCKET_CREATED), None);
        assert_eq!(pause_for("", SOCKET_CREATED), None);
    }
}
