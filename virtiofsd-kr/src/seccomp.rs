//! Seccomp: the system-call allow-list the daemon runs under once it serves a guest.
//!
//! INTERFACE CONTRACT (used by `daemon`; the implementation is being completed):
//! `install(action)` applies the filter to every thread of the process (TSYNC), after the
//! sandbox is in place and before the first guest request.

use crate::cli::SeccompAction;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {0:?} is not available in this build yet")]
    Unsupported(SeccompAction),
}

pub fn install(action: SeccompAction) -> Result<(), SeccompError> {
    match action {
        SeccompAction::None => Ok(()),
        other => Err(SeccompError::Unsupported(other)),
    }
}
