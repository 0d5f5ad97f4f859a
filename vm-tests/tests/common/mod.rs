//! Support shared by the guest test binaries (each includes it with `mod common;`):
//!
//! - [`acl_suite`]: the POSIX ACL checks run in a guest on both backends;
//! - [`ceph`]: the CephFS dev cluster, volumes, tenants, quotas, snapshots and the MDS outage
//!   guard, made the way an operator would today (admin libcephfs mount, `ceph fs authorize`);
//!   the one place to switch to `virtiofsd-kr volume create/snapshot` once it exists;
//! - [`host_view`]: checks made outside the guest, on a host directory or through an admin
//!   libcephfs mount of a volume, behind one trait;
//! - [`posix_suite`]: the guest POSIX suite and its host-side checks, run on both backends;
//! - [`pjdfstest`]: the pjdfstest conformance suite in a guest, judged against the committed
//!   list of expected failures.
//!
//! Not every binary uses every part.

#![allow(dead_code)]

pub mod acl_suite;
pub mod ceph;
pub mod coherence;
pub mod host_view;
pub mod pjdfstest;
pub mod posix_suite;
