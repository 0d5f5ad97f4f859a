//! CephFS backend for virtiofsd-kr: libcephfs bindings and a `fuse_backend_rs` filesystem
//! served straight from a Ceph cluster, with no host mount.
//!
//! This crate is intentionally empty until the CephFS issue is taken: it exists so the
//! workspace layout is fixed from the start. It must not grow placeholder code that pretends
//! to talk to Ceph.
