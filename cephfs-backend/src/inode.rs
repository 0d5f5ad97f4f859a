//! FUSE node ids for Ceph inodes: `CephInodeTable`.
//!
//! Owns the map between the node ids the guest kernel holds and the Ceph inode references
//! behind them, and each node's lookup count: every `Entry` handed to the guest adds one,
//! FORGET takes them away, and at zero the node and its Ceph reference are dropped. A Ceph
//! inode is identified by its inode number *and* snapshot id (snapshot files share the live
//! file's number), so each (ino, snap) pair has at most one node. Node ids are never reused.
//! The root (node 1) is pinned: FORGET of it is ignored.
//!
//! Must not: call libcephfs other than by dropping `CephInode`s, and it drops them outside its
//! lock.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::mount::{CephInode, Statx};

/// The FUSE root node id.
pub const ROOT_ID: u64 = fuse_backend_rs::api::filesystem::ROOT_ID;

struct Node {
    inode: Arc<CephInode>,
    key: (u64, u64),
    lookups: u64,
}

#[derive(Default)]
struct Tables {
    nodes: HashMap<u64, Node>,
    by_key: HashMap<(u64, u64), u64>,
    next_id: u64,
}

/// Node id <-> Ceph inode map with lookup counts.
pub struct CephInodeTable {
    inner: Mutex<Tables>,
}

fn ebadf() -> io::Error {
    io::Error::from_raw_os_error(libc::EBADF)
}

impl CephInodeTable {
    /// A table holding the root as node 1.
    pub fn new(root: CephInode, root_stat: &Statx) -> CephInodeTable {
        let key = (root_stat.ino(), root_stat.snap());
        let mut t = Tables {
            next_id: ROOT_ID + 1,
            ..Default::default()
        };
        t.nodes.insert(
            ROOT_ID,
            Node {
                inode: Arc::new(root),
                key,
                lookups: 1,
            },
        );
        t.by_key.insert(key, ROOT_ID);
        CephInodeTable {
            inner: Mutex::new(t),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock leaves the maps consistent (every mutation is a
        // single insert/remove pair), so a poisoned lock is still usable.
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The Ceph inode of `node`, EBADF if the guest names a node it does not hold.
    pub fn get(&self, node: u64) -> io::Result<Arc<CephInode>> {
        self.lock()
            .nodes
            .get(&node)
            .map(|n| Arc::clone(&n.inode))
            .ok_or_else(ebadf)
    }

    /// Records one more lookup of `inode` and returns its node id. If the inode already has a
    /// node, the extra Ceph reference is dropped (after the lock is released).
    pub fn add(&self, inode: CephInode, stat: &Statx) -> u64 {
        let key = (stat.ino(), stat.snap());
        let mut t = self.lock();
        if let Some(&id) = t.by_key.get(&key) {
            if let Some(n) = t.nodes.get_mut(&id) {
                n.lookups = n.lookups.saturating_add(1);
                drop(t);
                drop(inode);
                return id;
            }
        }
        let id = t.next_id;
        t.next_id += 1;
        t.nodes.insert(
            id,
            Node {
                inode: Arc::new(inode),
                key,
                lookups: 1,
            },
        );
        t.by_key.insert(key, id);
        id
    }

    /// One more lookup of an existing node (`.` and `..` lookups).
    pub fn add_existing(&self, node: u64) -> io::Result<()> {
        let mut t = self.lock();
        let n = t.nodes.get_mut(&node).ok_or_else(ebadf)?;
        n.lookups = n.lookups.saturating_add(1);
        Ok(())
    }

    /// Drops `count` lookups of `node`; at zero the node goes (the root never does).
    pub fn forget(&self, node: u64, count: u64) {
        if node == ROOT_ID {
            return;
        }
        let mut t = self.lock();
        let Some(n) = t.nodes.get_mut(&node) else {
            return;
        };
        n.lookups = n.lookups.saturating_sub(count);
        if n.lookups > 0 {
            return;
        }
        let removed = t.nodes.remove(&node);
        if let Some(r) = &removed {
            if t.by_key.get(&r.key) == Some(&node) {
                t.by_key.remove(&r.key);
            }
        }
        drop(t);
        drop(removed);
    }

    /// Forgets every node but the root (the guest unmounted).
    pub fn clear(&self) {
        let mut t = self.lock();
        let nodes: Vec<Node> = {
            let ids: Vec<u64> = t.nodes.keys().copied().filter(|&i| i != ROOT_ID).collect();
            ids.into_iter().filter_map(|i| t.nodes.remove(&i)).collect()
        };
        let root_key = t.nodes.get(&ROOT_ID).map(|n| n.key);
        t.by_key.retain(|k, _| Some(*k) == root_key);
        drop(t);
        drop(nodes);
    }

    /// The lookup count of `node` (`None` when it is not held).
    pub fn lookup_count(&self, node: u64) -> Option<u64> {
        self.lock().nodes.get(&node).map(|n| n.lookups)
    }

    /// How many nodes are held, the root included.
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Always false: the root is always held.
    pub fn is_empty(&self) -> bool {
        false
    }
}
