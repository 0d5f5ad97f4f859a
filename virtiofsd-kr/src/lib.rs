//! virtiofsd-kr: a vhost-user virtio-fs daemon for microVMs.
//!
//! The folders follow a request from the guest's virtqueue to the backend (the picture is in
//! `docs/architecture.md`); dependencies point down this list, never up:
//!
//! * [`control`]: the command line and the processes it starts (the vhost-user daemon, the
//!   host mount, volume commands, the Docker plugin, logging); it assembles the layers below;
//! * [`vhost`]: the vhost-user virtio-fs device: virtqueues, request threads, the DAX window;
//! * [`fuse`]: what a FUSE request may do before and after fuse-backend-rs decodes it (the
//!   request guard, the export policy over a backend);
//! * [`backend`]: where files live: a host directory or a CephFS volume;
//! * [`confine`]: the sandbox and the seccomp allow-list the serving process runs under;
//! * [`accounting`]: per-tenant meters, rate limits, metrics and journals, fed by the layers
//!   above through small calls and knowing none of their types;
//! * [`http`]: the one hyper serve loop the metrics endpoint and the Docker plugin share;
//! * [`unix_socket`]: listening Unix sockets that appear at their path ready (mode, group);
//! * [`size`]: byte sizes as written on command lines and in admin requests;
//! * [`process`]: how the process ends once it has threads (one exit for every path);
//! * [`stall`]: test-only pauses at named start-up points (`VIRTIOFSD_KR_TEST_STALL`).

pub mod accounting;
pub mod backend;
pub mod confine;
pub mod control;
pub mod fuse;
pub mod http;
pub mod process;
pub mod size;
pub mod stall;
pub mod unix_socket;
pub mod vhost;
