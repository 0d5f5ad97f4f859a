//! The vhost-user virtio-fs device: the guest's side of the request path.
//!
//! Owns everything between the vhost-user socket and one FUSE call: the virtqueues and the
//! threads that drain them ([`device`]), the request threads a queue hands work to
//! ([`request_pool`]), polling a dry queue where it pays ([`queue_poll`]), and the DAX
//! window that maps host page cache into the guest ([`dax`]), and answering requests a
//! backend holds past a deadline ([`late_reply`]). It must not decide what a
//! request may do (that is [`crate::fuse`]) nor know how a backend stores files, and it
//! never trusts a length, index or opcode the guest wrote.

pub mod dax;
pub mod device;
pub mod late_reply;
pub mod queue_poll;
pub mod request_pool;
