//! The plugin's volumes in the cluster: [`VolumeStore`] over `volume::VolumeAdmin`.
//!
//! Owns the administrator's connection (made on first use, dropped and remade after a
//! failure) and what `docker volume inspect` shows as a volume's `Status`. The cluster is the
//! only record of which volumes exist, so every host's plugin and every restart of dockerd
//! or the plugin see the same list. It must not mount anything.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::protocol::{VolumeStatus, VolumeStore};
use crate::control::volume::{AdminOptions, CreateSpec, ServeIdentity, VolumeAdmin, VolumeError};

pub struct CephVolumes {
    options: AdminOptions,
    admin: Option<VolumeAdmin>,
}

impl CephVolumes {
    pub fn new(options: AdminOptions) -> Self {
        CephVolumes {
            options,
            admin: None,
        }
    }

    /// Closes the administrator's connection (its MDS session ends at once; a session left
    /// to time out would hold capabilities that the next connection waits for).
    pub fn disconnect(&mut self) {
        self.admin = None;
    }

    /// Runs `f` on the connection, connecting first if needed; a failure that is not about
    /// the volume itself drops the connection so the next call starts afresh.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&VolumeAdmin) -> Result<T, VolumeError>,
    ) -> Result<T, VolumeError> {
        if self.admin.is_none() {
            self.admin = Some(VolumeAdmin::connect(&self.options)?);
        }
        let admin = self.admin.as_ref().expect("connected just above");
        let result = f(admin);
        if let Err(e) = &result {
            if matches!(
                e,
                VolumeError::Connect(_) | VolumeError::Io { .. } | VolumeError::Mon { .. }
            ) {
                self.admin = None;
            }
        }
        result
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

impl VolumeStore for CephVolumes {
    fn create(&mut self, name: &str, spec: &CreateSpec) -> Result<(), String> {
        self.with(|a| a.create(name, spec))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn remove(&mut self, name: &str) -> Result<(), String> {
        self.with(|a| a.remove(name)).map_err(|e| e.to_string())
    }

    fn get(&mut self, name: &str) -> Result<Option<VolumeStatus>, String> {
        match self.with(|a| a.inspect(name)) {
            Ok(info) => {
                let mut status: BTreeMap<String, Value> = BTreeMap::new();
                status.insert("path".into(), json!(info.path));
                status.insert("ceph_id".into(), json!(format!("client.{}", info.ceph_id)));
                status.insert(
                    "quota".into(),
                    json!(info.quota_bytes.map(human).unwrap_or_else(|| "none".into())),
                );
                status.insert("quota_bytes".into(), json!(info.quota_bytes.unwrap_or(0)));
                status.insert("used_bytes".into(), json!(info.used_bytes));
                status.insert(
                    "data_pool".into(),
                    json!(info.data_pool.unwrap_or_else(|| "default".into())),
                );
                status.insert("rate_limit_bytes".into(), json!(info.limits.bytes_per_sec));
                status.insert("rate_limit_ops".into(), json!(info.limits.ops_per_sec));
                status.insert("snapshots".into(), json!(info.snapshots));
                Ok(Some(VolumeStatus {
                    name: info.name,
                    status,
                }))
            }
            Err(VolumeError::NoSuchVolume(_)) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    fn list(&mut self) -> Result<Vec<String>, String> {
        self.with(|a| a.list())
            .map(|v| v.into_iter().map(|i| i.name).collect())
            .map_err(|e| e.to_string())
    }

    fn identity(&mut self, name: &str) -> Result<ServeIdentity, String> {
        self.with(|a| a.serve_identity(name))
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(64 << 20), "64.0 MiB");
        assert_eq!(human(10 << 30), "10.0 GiB");
    }
}
