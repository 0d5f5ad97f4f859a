//! Confinement: what the serving process may still reach once it serves a guest.
//!
//! [`sandbox`] owns namespaces, `pivot_root`/`chroot` and capabilities; [`seccomp`] owns
//! the system-call allow-list. The control plane calls them in a fixed order around opening
//! the backend (see [`crate::control::daemon`]); they must not open the backend or the
//! vhost-user socket themselves, and take their own option types, never the command line.

pub mod sandbox;
pub mod seccomp;
