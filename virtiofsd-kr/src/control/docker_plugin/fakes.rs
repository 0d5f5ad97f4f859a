//! In-memory [`VolumeStore`] and [`Mounter`] for the protocol's unit tests and for fuzzing
//! [`super::protocol::handle`] as a pure function of (state, path, body bytes): nothing here
//! touches the cluster or the host.

use std::collections::BTreeMap;

use serde_json::json;

use super::protocol::{ActiveMount, Mounter, VolumeStatus, VolumeStore};
use crate::control::volume::{CreateSpec, ServeIdentity};

/// Volumes in a map; counts the calls that reached it.
#[derive(Default)]
pub struct MemStore {
    pub volumes: BTreeMap<String, CreateSpec>,
    pub calls: usize,
}

impl VolumeStore for MemStore {
    fn create(&mut self, name: &str, spec: &CreateSpec) -> Result<(), String> {
        self.calls += 1;
        if self.volumes.contains_key(name) {
            return Err(format!("volume {name:?} already exists"));
        }
        self.volumes.insert(name.to_string(), spec.clone());
        Ok(())
    }
    fn remove(&mut self, name: &str) -> Result<(), String> {
        self.calls += 1;
        self.volumes
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| format!("volume {name:?} does not exist"))
    }
    fn get(&mut self, name: &str) -> Result<Option<VolumeStatus>, String> {
        self.calls += 1;
        Ok(self.volumes.get(name).map(|spec| VolumeStatus {
            name: name.to_string(),
            status: [("quota_bytes".to_string(), json!(spec.quota.unwrap_or(0)))].into(),
        }))
    }
    fn list(&mut self) -> Result<Vec<String>, String> {
        self.calls += 1;
        Ok(self.volumes.keys().cloned().collect())
    }
    fn identity(&mut self, name: &str) -> Result<ServeIdentity, String> {
        self.calls += 1;
        if !self.volumes.contains_key(name) {
            return Err(format!("volume {name:?} does not exist"));
        }
        Ok(ServeIdentity {
            root: format!("/volumes/{name}"),
            ceph_id: format!("vol-{name}"),
            keyring: "/k".into(),
            conf: "/c".into(),
            fs_name: None,
            limits: Default::default(),
            quota_bytes: None,
        })
    }
}

/// Mounts in a list; paths `/mnt/NAME/ID`.
#[derive(Default)]
pub struct MemMounter {
    pub mounted: Vec<(String, String)>,
    pub next_pid: u32,
}

impl Mounter for MemMounter {
    fn mount(
        &mut self,
        name: &str,
        id: &str,
        _identity: &ServeIdentity,
    ) -> Result<ActiveMount, String> {
        self.mounted.push((name.to_string(), id.to_string()));
        self.next_pid += 1;
        Ok(ActiveMount {
            path: format!("/mnt/{name}/{id}").into(),
            pid: self.next_pid,
            metrics: format!("unix:/run/{id}.sock"),
        })
    }
    fn unmount(&mut self, name: &str, id: &str, _m: &ActiveMount) -> Result<(), String> {
        let before = self.mounted.len();
        self.mounted.retain(|(n, i)| !(n == name && i == id));
        if self.mounted.len() == before {
            return Err("not mounted".to_string());
        }
        Ok(())
    }
}
