//! virtiofsd-kr: a vhost-user virtio-fs daemon for microVMs.
//!
//! The request path, from the guest's virtqueue to the backend, is one picture in
//! `docs/architecture.md`; each module below owns one step of it.

pub mod accounting;
pub mod cephfs;
pub mod cli;
pub mod daemon;
pub mod dax;
pub mod device;
pub mod docker_plugin;
pub mod export;
pub mod fusedev;
pub mod guard;
pub mod id_map;
pub mod local_fs;
pub mod logging;
pub mod passthrough;
pub mod queue_poll;
pub mod request_pool;
pub mod sandbox;
pub mod seccomp;
pub mod size;
pub mod volume;
pub mod volume_serve;
