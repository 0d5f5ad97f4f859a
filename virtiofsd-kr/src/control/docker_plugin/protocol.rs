//! Docker's legacy volume plugin protocol: one `POST` per call, a JSON body in, a JSON body
//! out (`/Plugin.Activate`, `/VolumeDriver.Capabilities|Create|Remove|Get|List|Path|Mount|
//! Unmount`).
//!
//! Owns decoding a request, every check on what dockerd sends (names reach the plugin
//! unchecked: `..`, `/`, empty and over-long names are refused here, before the cluster is
//! asked anything), the mount table counted per (volume, mount ID), and encoding the answer.
//! [`handle`] is a function of the plugin's state, the request's path and body bytes, and
//! the two effect traits ([`VolumeStore`]: the cluster; [`Mounter`]: host mounts), so a
//! fuzzer or a unit test drives it with in-memory fakes. It must not do I/O of its own, and
//! never panics on any input.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::control::volume::{check_name, CreateSpec, ServeIdentity, VolumeLimits};

/// Largest request body accepted (dockerd's are a few hundred bytes).
pub const MAX_BODY: usize = 64 << 10;

/// The content type dockerd's plugin client expects in answers.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// Options `docker volume create -o KEY=VALUE` accepts.
pub const KNOWN_OPTIONS: [&str; 4] = ["size", "pool", "rate-limit-bytes", "rate-limit-ops"];

/// What the cluster knows of a volume (for `Get`, `List` and `docker volume inspect`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VolumeStatus {
    pub name: String,
    /// Shown as `Status` by `docker volume inspect`.
    pub status: BTreeMap<String, Value>,
}

/// The cluster side: volumes as `virtiofsd-kr volume` makes them.
pub trait VolumeStore {
    fn create(&mut self, name: &str, spec: &CreateSpec) -> Result<(), String>;
    fn remove(&mut self, name: &str) -> Result<(), String>;
    /// `Ok(None)`: no such volume (a name this plugin does not own).
    fn get(&mut self, name: &str) -> Result<Option<VolumeStatus>, String>;
    fn list(&mut self) -> Result<Vec<String>, String>;
    /// What serving the volume as its own identity needs.
    fn identity(&mut self, name: &str) -> Result<ServeIdentity, String>;
}

/// One served mount of a volume on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActiveMount {
    /// Where it is mounted (what `Mount` answered).
    pub path: PathBuf,
    /// The serving process.
    pub pid: u32,
    /// Its metrics endpoint (`unix:PATH`).
    pub metrics: String,
}

/// The host side: serving a volume at a mountpoint.
pub trait Mounter {
    fn mount(
        &mut self,
        name: &str,
        id: &str,
        identity: &ServeIdentity,
    ) -> Result<ActiveMount, String>;
    fn unmount(&mut self, name: &str, id: &str, mount: &ActiveMount) -> Result<(), String>;
}

/// A mount and how many `Mount` calls with its ID are not yet matched by an `Unmount`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountedMount {
    pub count: u32,
    #[serde(flatten)]
    pub mount: ActiveMount,
}

/// What the plugin keeps across restarts: the mounts it serves, by volume then mount ID.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginState {
    pub mounts: BTreeMap<String, BTreeMap<String, CountedMount>>,
}

impl PluginState {
    /// Where `name` is mounted (the first mount), if it is.
    pub fn mountpoint(&self, name: &str) -> Option<&PathBuf> {
        self.mounts
            .get(name)
            .and_then(|m| m.values().next())
            .map(|m| &m.mount.path)
    }

    fn in_use(&self, name: &str) -> usize {
        self.mounts.get(name).map_or(0, |m| m.len())
    }
}

/// An answer: HTTP status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Value,
}

impl Response {
    fn ok(body: Value) -> Self {
        Response { status: 200, body }
    }

    /// An error as dockerd reads it: `{"Err": "..."}` (status 500, like the plugin helpers).
    fn err(message: impl Into<String>) -> Self {
        Response {
            status: 500,
            body: json!({ "Err": message.into() }),
        }
    }

    /// The error message, if this is an error.
    pub fn error(&self) -> Option<&str> {
        self.body
            .get("Err")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.body).unwrap_or_else(|_| b"{\"Err\":\"encoding\"}".to_vec())
    }
}

#[derive(Debug, Deserialize)]
struct NameRequest {
    #[serde(rename = "Name")]
    name: String,
}

#[derive(Debug, Deserialize)]
struct CreateRequest {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Opts", default)]
    opts: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
struct MountRequest {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "ID", default)]
    id: String,
}

fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    if body.len() > MAX_BODY {
        return Err(Response::err(format!("request body over {MAX_BODY} bytes")));
    }
    serde_json::from_slice(body).map_err(|e| Response::err(format!("malformed request: {e}")))
}

fn checked_name(name: &str) -> Result<&str, Response> {
    check_name(name).map_err(|e| Response::err(format!("invalid volume name {e}")))
}

/// Mount IDs become a path component and a metric label: 1 to 128 of `A-Z a-z 0-9 . _ -`,
/// not starting with a dot (dockerd's are 64 hex digits).
pub fn check_mount_id(id: &str) -> Result<&str, String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(id)
    } else {
        let shown: String = id.chars().take(80).collect();
        Err(format!("invalid mount ID {shown:?}"))
    }
}

/// `-o` options of `docker volume create`.
pub fn parse_options(opts: &BTreeMap<String, String>) -> Result<CreateSpec, String> {
    let mut spec = CreateSpec::default();
    let mut limits = VolumeLimits::default();
    for (key, value) in opts {
        let size = |v: &str| crate::size::parse_size(v).map_err(|e| format!("-o {key}={v}: {e}"));
        match key.as_str() {
            "size" => spec.quota = Some(size(value)?).filter(|q| *q > 0),
            "pool" => {
                crate::control::volume::check_pool_name(value)
                    .map_err(|e| format!("-o pool: {e}"))?;
                spec.data_pool = Some(value.clone());
            }
            "rate-limit-bytes" => limits.bytes_per_sec = size(value)?,
            "rate-limit-ops" => {
                limits.ops_per_sec = value
                    .parse()
                    .map_err(|_| format!("-o {key}={value}: expected a whole number"))?
            }
            other => {
                let shown: String = other.chars().take(64).collect();
                return Err(format!(
                    "unknown option {shown:?} (known: {})",
                    KNOWN_OPTIONS.join(", ")
                ));
            }
        }
    }
    spec.limits = limits;
    Ok(spec)
}

fn volume_json(state: &PluginState, status: &VolumeStatus) -> Value {
    let mountpoint = state
        .mountpoint(&status.name)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    json!({
        "Name": status.name,
        "Mountpoint": mountpoint,
        "Status": status.status,
    })
}

/// Answers one request. `path` is the HTTP path (`/VolumeDriver.Create`), `body` the raw
/// body (any bytes). `state` changes only on a successful Mount or Unmount.
pub fn handle(
    state: &mut PluginState,
    store: &mut dyn VolumeStore,
    mounter: &mut dyn Mounter,
    path: &str,
    body: &[u8],
) -> Response {
    let result = match path {
        "/Plugin.Activate" => Ok(Response::ok(json!({ "Implements": ["VolumeDriver"] }))),
        "/VolumeDriver.Capabilities" => Ok(Response::ok(
            json!({ "Capabilities": { "Scope": "global" } }),
        )),
        "/VolumeDriver.Create" => create(store, body),
        "/VolumeDriver.Remove" => remove(state, store, body),
        "/VolumeDriver.Get" => get(state, store, body),
        "/VolumeDriver.List" => list(state, store),
        "/VolumeDriver.Path" => decode::<NameRequest>(body).and_then(|r| {
            let name = checked_name(&r.name)?;
            let mountpoint = state
                .mountpoint(name)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            Ok(Response::ok(json!({ "Mountpoint": mountpoint, "Err": "" })))
        }),
        "/VolumeDriver.Mount" => mount(state, store, mounter, body),
        "/VolumeDriver.Unmount" => unmount(state, mounter, body),
        _ => Ok(Response {
            status: 404,
            body: json!({ "Err": "unknown plugin call" }),
        }),
    };
    result.unwrap_or_else(|e| e)
}

fn create(store: &mut dyn VolumeStore, body: &[u8]) -> Result<Response, Response> {
    let req: CreateRequest = decode(body)?;
    let name = checked_name(&req.name)?;
    let spec = parse_options(&req.opts.unwrap_or_default()).map_err(Response::err)?;
    store.create(name, &spec).map_err(Response::err)?;
    Ok(Response::ok(json!({ "Err": "" })))
}

fn remove(
    state: &PluginState,
    store: &mut dyn VolumeStore,
    body: &[u8],
) -> Result<Response, Response> {
    let req: NameRequest = decode(body)?;
    let name = checked_name(&req.name)?;
    let users = state.in_use(name);
    if users > 0 {
        return Err(Response::err(format!(
            "volume {name} is in use ({users} mount(s) on this host): unmount it first"
        )));
    }
    store.remove(name).map_err(Response::err)?;
    Ok(Response::ok(json!({ "Err": "" })))
}

fn get(
    state: &PluginState,
    store: &mut dyn VolumeStore,
    body: &[u8],
) -> Result<Response, Response> {
    let req: NameRequest = decode(body)?;
    let name = checked_name(&req.name)?;
    match store.get(name).map_err(Response::err)? {
        Some(status) => Ok(Response::ok(
            json!({ "Volume": volume_json(state, &status), "Err": "" }),
        )),
        None => Err(Response::err(format!("no such volume: {name}"))),
    }
}

fn list(state: &PluginState, store: &mut dyn VolumeStore) -> Result<Response, Response> {
    let names = store.list().map_err(Response::err)?;
    let volumes: Vec<Value> = names
        .iter()
        .map(|name| {
            let mountpoint = state
                .mountpoint(name)
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            json!({ "Name": name, "Mountpoint": mountpoint })
        })
        .collect();
    Ok(Response::ok(json!({ "Volumes": volumes, "Err": "" })))
}

fn mount(
    state: &mut PluginState,
    store: &mut dyn VolumeStore,
    mounter: &mut dyn Mounter,
    body: &[u8],
) -> Result<Response, Response> {
    let req: MountRequest = decode(body)?;
    let name = checked_name(&req.name)?;
    let id = check_mount_id(&req.id).map_err(Response::err)?;
    if let Some(existing) = state.mounts.get_mut(name).and_then(|m| m.get_mut(id)) {
        // dockerd repeats an ID while its mount is active (`docker cp`): count it.
        existing.count = existing.count.saturating_add(1);
        let path = existing.mount.path.display().to_string();
        return Ok(Response::ok(json!({ "Mountpoint": path, "Err": "" })));
    }
    let identity = store.identity(name).map_err(Response::err)?;
    let mount = mounter.mount(name, id, &identity).map_err(Response::err)?;
    let path = mount.path.display().to_string();
    state
        .mounts
        .entry(name.to_string())
        .or_default()
        .insert(id.to_string(), CountedMount { count: 1, mount });
    Ok(Response::ok(json!({ "Mountpoint": path, "Err": "" })))
}

fn unmount(
    state: &mut PluginState,
    mounter: &mut dyn Mounter,
    body: &[u8],
) -> Result<Response, Response> {
    let req: MountRequest = decode(body)?;
    let name = checked_name(&req.name)?;
    let id = check_mount_id(&req.id).map_err(Response::err)?;
    let Some(mounts) = state.mounts.get_mut(name) else {
        return Err(Response::err(format!("volume {name} is not mounted")));
    };
    let Some(counted) = mounts.get_mut(id) else {
        return Err(Response::err(format!(
            "volume {name} is not mounted with ID {id}"
        )));
    };
    if counted.count > 1 {
        counted.count -= 1;
        return Ok(Response::ok(json!({ "Err": "" })));
    }
    mounter
        .unmount(name, id, &counted.mount)
        .map_err(Response::err)?;
    mounts.remove(id);
    if mounts.is_empty() {
        state.mounts.remove(name);
    }
    Ok(Response::ok(json!({ "Err": "" })))
}

#[cfg(test)]
mod tests {
    use super::super::fakes::*;
    use super::*;

    struct Plugin {
        state: PluginState,
        store: MemStore,
        mounter: MemMounter,
    }

    impl Plugin {
        fn new() -> Self {
            Plugin {
                state: PluginState::default(),
                store: MemStore::default(),
                mounter: MemMounter::default(),
            }
        }
        fn call(&mut self, path: &str, body: &str) -> Response {
            handle(
                &mut self.state,
                &mut self.store,
                &mut self.mounter,
                path,
                body.as_bytes(),
            )
        }
    }

    #[test]
    fn activate_and_capabilities() {
        let mut p = Plugin::new();
        let r = p.call("/Plugin.Activate", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.body["Implements"], json!(["VolumeDriver"]));
        // dockerd sends `{}` or nothing at all.
        for body in ["", "{}", "null"] {
            let r = p.call("/VolumeDriver.Capabilities", body);
            assert_eq!(r.body["Capabilities"]["Scope"], "global", "{body:?}");
        }
        assert_eq!(p.call("/VolumeDriver.Nope", "{}").status, 404);
    }

    #[test]
    fn create_get_list_remove() {
        let mut p = Plugin::new();
        let r = p.call(
            "/VolumeDriver.Create",
            r#"{"Name":"shared","Opts":{"size":"64M","pool":"bulk","rate-limit-bytes":"20MiB"}}"#,
        );
        assert_eq!(r.error(), None, "{r:?}");
        let spec = &p.store.volumes["shared"];
        assert_eq!(spec.quota, Some(64 << 20));
        assert_eq!(spec.data_pool.as_deref(), Some("bulk"));
        assert_eq!(spec.limits.bytes_per_sec, 20 << 20);
        // Opts may be null or missing.
        assert_eq!(
            p.call("/VolumeDriver.Create", r#"{"Name":"b","Opts":null}"#)
                .error(),
            None
        );
        assert_eq!(
            p.call("/VolumeDriver.Create", r#"{"Name":"c"}"#).error(),
            None
        );
        let r = p.call("/VolumeDriver.Get", r#"{"Name":"shared"}"#);
        assert_eq!(r.body["Volume"]["Name"], "shared");
        assert_eq!(r.body["Volume"]["Status"]["quota_bytes"], 64 << 20);
        let r = p.call("/VolumeDriver.Get", r#"{"Name":"other"}"#);
        assert!(r.error().unwrap().contains("no such volume"), "{r:?}");
        let r = p.call("/VolumeDriver.List", "{}");
        let names: Vec<&str> = r.body["Volumes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["Name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["b", "c", "shared"]);
        assert_eq!(
            p.call("/VolumeDriver.Remove", r#"{"Name":"b"}"#).error(),
            None
        );
        assert!(!p.store.volumes.contains_key("b"));
        assert!(p
            .call("/VolumeDriver.Remove", r#"{"Name":"b"}"#)
            .error()
            .is_some());
    }

    #[test]
    fn unknown_and_bad_options_are_refused_before_the_store() {
        let mut p = Plugin::new();
        for opts in [
            r#"{"colour":"blue"}"#,
            r#"{"size":"lots"}"#,
            r#"{"pool":"a/b"}"#,
            r#"{"rate-limit-ops":"-1"}"#,
        ] {
            let r = p.call(
                "/VolumeDriver.Create",
                &format!(r#"{{"Name":"v","Opts":{opts}}}"#),
            );
            assert_eq!(r.status, 500, "{opts}");
            assert!(r.error().is_some(), "{opts}");
        }
        let r = p.call(
            "/VolumeDriver.Create",
            r#"{"Name":"v","Opts":{"colour":"x"}}"#,
        );
        assert!(
            r.error().unwrap().contains("unknown option \"colour\""),
            "{r:?}"
        );
        assert_eq!(p.store.calls, 0);
    }

    #[test]
    fn bad_names_never_reach_the_store() {
        let mut p = Plugin::new();
        let long = "x".repeat(65);
        for name in [
            "",
            ".",
            "..",
            "../etc",
            "a/b",
            "/",
            ".snap",
            long.as_str(),
            "a\u{0}b",
            "sp ace",
        ] {
            for call in [
                "/VolumeDriver.Create",
                "/VolumeDriver.Get",
                "/VolumeDriver.Remove",
                "/VolumeDriver.Mount",
                "/VolumeDriver.Path",
            ] {
                let body = json!({ "Name": name, "ID": "abc" }).to_string();
                let r = p.call(call, &body);
                assert!(
                    r.error().is_some_and(|e| e.contains("invalid volume name")),
                    "{call} {name:?}: {r:?}"
                );
            }
        }
        assert_eq!(p.store.calls, 0);
        assert!(p.mounter.mounted.is_empty());
    }

    #[test]
    fn malformed_bodies_get_an_error() {
        let mut p = Plugin::new();
        for body in ["", "{", "[]", r#"{"Name":5}"#, "\u{ff}\u{fe}"] {
            let r = p.call("/VolumeDriver.Get", body);
            assert_eq!(r.status, 500, "{body:?}");
            assert!(r.error().is_some());
        }
        let huge = format!(r#"{{"Name":"{}"}}"#, "a".repeat(MAX_BODY));
        assert!(p
            .call("/VolumeDriver.Get", &huge)
            .error()
            .unwrap()
            .contains("over"));
    }

    #[test]
    fn mounts_are_counted_per_name_and_id() {
        let mut p = Plugin::new();
        p.call("/VolumeDriver.Create", r#"{"Name":"v"}"#);
        let m1 = p.call("/VolumeDriver.Mount", r#"{"Name":"v","ID":"id1"}"#);
        assert_eq!(m1.error(), None);
        assert_eq!(m1.body["Mountpoint"], "/mnt/v/id1");
        // The same ID again (docker cp): same mountpoint, no new mount.
        let again = p.call("/VolumeDriver.Mount", r#"{"Name":"v","ID":"id1"}"#);
        assert_eq!(again.body["Mountpoint"], "/mnt/v/id1");
        assert_eq!(p.mounter.mounted.len(), 1);
        assert_eq!(p.state.mounts["v"]["id1"].count, 2);
        // Another container.
        let m2 = p.call("/VolumeDriver.Mount", r#"{"Name":"v","ID":"id2"}"#);
        assert_eq!(m2.body["Mountpoint"], "/mnt/v/id2");
        assert_eq!(p.mounter.mounted.len(), 2);
        let path = p.call("/VolumeDriver.Path", r#"{"Name":"v"}"#);
        assert_eq!(path.body["Mountpoint"], "/mnt/v/id1");
        let get = p.call("/VolumeDriver.Get", r#"{"Name":"v"}"#);
        assert_eq!(get.body["Volume"]["Mountpoint"], "/mnt/v/id1");
        // In use: Remove is refused and the volume stays.
        let r = p.call("/VolumeDriver.Remove", r#"{"Name":"v"}"#);
        assert!(r.error().unwrap().contains("in use"), "{r:?}");
        assert!(p.store.volumes.contains_key("v"));
        // Unmount id1 once: still mounted (count 2 -> 1).
        assert_eq!(
            p.call("/VolumeDriver.Unmount", r#"{"Name":"v","ID":"id1"}"#)
                .error(),
            None
        );
        assert_eq!(p.mounter.mounted.len(), 2);
        assert_eq!(
            p.call("/VolumeDriver.Unmount", r#"{"Name":"v","ID":"id1"}"#)
                .error(),
            None
        );
        assert_eq!(
            p.mounter.mounted,
            vec![("v".to_string(), "id2".to_string())]
        );
        // Unknown IDs and names are errors, and change nothing.
        assert!(p
            .call("/VolumeDriver.Unmount", r#"{"Name":"v","ID":"id1"}"#)
            .error()
            .is_some());
        assert!(p
            .call("/VolumeDriver.Unmount", r#"{"Name":"w","ID":"id2"}"#)
            .error()
            .is_some());
        assert!(p
            .call("/VolumeDriver.Remove", r#"{"Name":"v"}"#)
            .error()
            .is_some());
        assert_eq!(
            p.call("/VolumeDriver.Unmount", r#"{"Name":"v","ID":"id2"}"#)
                .error(),
            None
        );
        assert!(p.state.mounts.is_empty());
        assert_eq!(
            p.call("/VolumeDriver.Path", r#"{"Name":"v"}"#).body["Mountpoint"],
            ""
        );
        assert_eq!(
            p.call("/VolumeDriver.Remove", r#"{"Name":"v"}"#).error(),
            None
        );
    }

    #[test]
    fn mount_ids_are_checked_and_missing_volumes_not_mounted() {
        let mut p = Plugin::new();
        p.call("/VolumeDriver.Create", r#"{"Name":"v"}"#);
        for id in ["", "../x", "a/b", ".hidden", &"f".repeat(129)] {
            let body = json!({"Name": "v", "ID": id}).to_string();
            assert!(
                p.call("/VolumeDriver.Mount", &body).error().is_some(),
                "{id:?}"
            );
        }
        assert!(p
            .call("/VolumeDriver.Mount", r#"{"Name":"nope","ID":"a"}"#)
            .error()
            .is_some());
        assert!(p.mounter.mounted.is_empty());
        assert!(p.state.mounts.is_empty());
    }

    #[test]
    fn state_round_trips_through_json() {
        let mut p = Plugin::new();
        p.call("/VolumeDriver.Create", r#"{"Name":"v"}"#);
        p.call("/VolumeDriver.Mount", r#"{"Name":"v","ID":"id1"}"#);
        p.call("/VolumeDriver.Mount", r#"{"Name":"v","ID":"id1"}"#);
        let text = serde_json::to_string(&p.state).unwrap();
        let back: PluginState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, p.state);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_get_an_answer(path in "/(Plugin.Activate|VolumeDriver.(Create|Remove|Get|List|Path|Mount|Unmount))", body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let mut p = Plugin::new();
            p.call("/VolumeDriver.Create", r#"{"Name":"v"}"#);
            let r = handle(&mut p.state, &mut p.store, &mut p.mounter, &path, &body);
            proptest::prop_assert!(r.status == 200 || r.error().is_some());
        }
    }
}
