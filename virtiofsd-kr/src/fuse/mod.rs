//! The FUSE layer: what a request may do, on both sides of fuse-backend-rs's decoder.
//!
//! [`guard`] looks at each request's headers before fuse-backend-rs does (unknown opcodes,
//! writes to a read-only export); [`export`] wraps any backend in the export policy (INIT
//! options, submounts, write-opens for DAX, `FOPEN_NOFLUSH`, open flags, POSIX ACLs, and
//! guest/host ID translation by the rules [`id_map`] parses). They serve the
//! guest's virtqueues ([`crate::vhost`]) and the host's `/dev/fuse` mount alike. They must
//! not know which transport a request came by, nor store files themselves.

pub mod export;
pub mod guard;
pub mod id_map;
