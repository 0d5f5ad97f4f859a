//! The docker `gfs` volume plugin's requests (`/Plugin.Activate`, `/VolumeDriver.*` with JSON
//! bodies, as dockerd sends them) through `docker_plugin::protocol::handle`, over an in-memory
//! volume store and mounter that record what reached them.
//!
//! Input: per call, a path selector (the plugin's calls, or raw bytes) and a body: one of a
//! few templates with an input name, mount ID and options, or raw bytes.
//!
//! Checks: every answer is 200, 404 or 500 and encodes as JSON; a 500 names its error; no name
//! or mount ID that fails the plugin's own checks reaches the store or the mounter; the plugin's
//! mount table always matches what the mounter has mounted (no mount lost or doubled), and a
//! volume in use is never removed.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};

use fuzz_harness::Cursor;
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use virtiofsd_kr::control::docker_plugin::protocol::{
    check_mount_id, handle, ActiveMount, Mounter, PluginState, VolumeStatus, VolumeStore,
};
use virtiofsd_kr::control::volume::{check_name, CreateSpec, ServeIdentity};

#[derive(Default)]
struct Store {
    volumes: BTreeMap<String, CreateSpec>,
}

fn checked(name: &str) {
    assert!(
        check_name(name).is_ok(),
        "unchecked name {name:?} reached the store"
    );
}

impl VolumeStore for Store {
    fn create(&mut self, name: &str, spec: &CreateSpec) -> Result<(), String> {
        checked(name);
        if self.volumes.contains_key(name) {
            return Err("exists".into());
        }
        self.volumes.insert(name.to_string(), spec.clone());
        Ok(())
    }
    fn remove(&mut self, name: &str) -> Result<(), String> {
        checked(name);
        self.volumes
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| "absent".into())
    }
    fn get(&mut self, name: &str) -> Result<Option<VolumeStatus>, String> {
        checked(name);
        Ok(self.volumes.get(name).map(|s| VolumeStatus {
            name: name.to_string(),
            status: [("quota".to_string(), json!(s.quota))].into(),
        }))
    }
    fn list(&mut self) -> Result<Vec<String>, String> {
        Ok(self.volumes.keys().cloned().collect())
    }
    fn identity(&mut self, name: &str) -> Result<ServeIdentity, String> {
        checked(name);
        if !self.volumes.contains_key(name) {
            return Err("absent".into());
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

#[derive(Default)]
struct Mounts {
    mounted: BTreeSet<(String, String)>,
    fail_next: bool,
}

impl Mounter for Mounts {
    fn mount(
        &mut self,
        name: &str,
        id: &str,
        identity: &ServeIdentity,
    ) -> Result<ActiveMount, String> {
        checked(name);
        assert!(
            check_mount_id(id).is_ok(),
            "unchecked mount ID {id:?} reached the mounter"
        );
        assert_eq!(
            identity.root,
            format!("/volumes/{name}"),
            "served with another volume's identity"
        );
        if std::mem::take(&mut self.fail_next) {
            return Err("mount failed".into());
        }
        assert!(
            self.mounted.insert((name.into(), id.into())),
            "mounted twice"
        );
        Ok(ActiveMount {
            path: format!("/mnt/{name}/{id}").into(),
            pid: 1,
            metrics: "unix:/m".into(),
        })
    }
    fn unmount(&mut self, name: &str, id: &str, _m: &ActiveMount) -> Result<(), String> {
        if std::mem::take(&mut self.fail_next) {
            return Err("unmount failed".into());
        }
        assert!(
            self.mounted.remove(&(name.into(), id.into())),
            "unmounted what was not mounted"
        );
        Ok(())
    }
}

const PATHS: [&str; 10] = [
    "/Plugin.Activate",
    "/VolumeDriver.Capabilities",
    "/VolumeDriver.Create",
    "/VolumeDriver.Remove",
    "/VolumeDriver.Get",
    "/VolumeDriver.List",
    "/VolumeDriver.Path",
    "/VolumeDriver.Mount",
    "/VolumeDriver.Unmount",
    "/VolumeDriver.Bogus",
];
const NAMES: [&str; 8] = [
    "v1",
    "v2",
    "..",
    "a/b",
    "",
    ".hidden",
    "vol.ume_1-x",
    "v1\u{0}",
];

fn text(c: &mut Cursor) -> String {
    let sel = c.u8();
    if sel >= 0xf0 {
        String::from_utf8_lossy(c.short_bytes()).into_owned()
    } else {
        NAMES[sel as usize % NAMES.len()].to_string()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut c = Cursor::new(data);
    let mut state = PluginState::default();
    let mut store = Store::default();
    let mut mounts = Mounts::default();
    let mut calls = 0;
    while !c.is_empty() && calls < 64 {
        calls += 1;
        let sel = c.u8();
        let path = if sel >= 0xf0 {
            String::from_utf8_lossy(c.short_bytes()).into_owned()
        } else {
            PATHS[sel as usize % PATHS.len()].to_string()
        };
        mounts.fail_next = c.u8() == 0xff;
        let body: Vec<u8> = match c.u8() % 4 {
            0 => serde_json::to_vec(&json!({ "Name": text(&mut c) })).unwrap(),
            1 => serde_json::to_vec(&json!({ "Name": text(&mut c), "ID": text(&mut c) })).unwrap(),
            2 => {
                let mut opts = BTreeMap::new();
                for _ in 0..c.u8() % 4 {
                    let key = ["size", "pool", "rate-limit-bytes", "rate-limit-ops", "x"]
                        [c.u8() as usize % 5];
                    opts.insert(key.to_string(), text(&mut c));
                }
                serde_json::to_vec(&json!({ "Name": text(&mut c), "Opts": opts })).unwrap()
            }
            _ => c.short_bytes().to_vec(),
        };
        let in_use_before: BTreeSet<String> = state.mounts.keys().cloned().collect();
        let volumes_before: BTreeSet<String> = store.volumes.keys().cloned().collect();
        let response = handle(&mut state, &mut store, &mut mounts, &path, &body);
        assert!(
            matches!(response.status, 200 | 404 | 500),
            "status {}",
            response.status
        );
        let encoded: Value = serde_json::from_slice(&response.to_bytes()).expect("answer is JSON");
        if response.status != 200 {
            assert!(
                response.error().is_some(),
                "error answer without Err: {encoded}"
            );
        }
        // A volume mounted on this host is never removed from the store.
        for name in &in_use_before {
            if volumes_before.contains(name) {
                assert!(
                    store.volumes.contains_key(name),
                    "volume {name} removed while mounted"
                );
            }
        }
        // The plugin's table is what the mounter has mounted.
        let table: BTreeSet<(String, String)> = state
            .mounts
            .iter()
            .flat_map(|(n, ids)| ids.keys().map(move |id| (n.clone(), id.clone())))
            .collect();
        assert_eq!(table, mounts.mounted, "mount table and mounts differ");
        assert!(
            state.mounts.values().all(|m| !m.is_empty()),
            "empty entry kept"
        );
        assert!(state
            .mounts
            .values()
            .flat_map(|m| m.values())
            .all(|m| m.count >= 1));
    }
});
