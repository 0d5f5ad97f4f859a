//! Shared set-up of the CephFS integration tests: a real single-node cluster started through
//! `scripts/ceph-dev-cluster.sh start` (idempotent; left running for the next test run, stop it
//! with `scripts/ceph-dev-cluster.sh stop`), volume directories made with the admin identity,
//! and per-test cephx tenants made with `ceph fs authorize`. No mocks: if the cluster cannot be
//! started the tests fail and say which command to run.

#![allow(dead_code)]

use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::process::Command;

use cephfs_backend::{CephConfig, CephFs};
use fuse_backend_rs::abi::fuse_abi::CreateIn;
use fuse_backend_rs::api::filesystem::{Context, DirEntry, Entry, FileSystem};

pub const ROOT: u64 = 1;

pub use vm_tests::ceph_dev::{cluster, unique};
pub use vm_tests::fs_buffers::{SliceReader, VecWriter};

pub fn ctx() -> Context {
    Context::default()
}

pub fn user(uid: u32, gid: u32) -> Context {
    Context { uid, gid, pid: 1 }
}

pub fn cstr(s: &str) -> CString {
    CString::new(s).expect("test names have no NUL")
}

pub fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

/// Admin mount of the whole filesystem.
pub fn admin() -> CephFs {
    let c = cluster();
    CephFs::connect(CephConfig::new(&c.conf, "admin", &c.admin_keyring, "/"))
        .expect("admin mount of the dev cluster")
}

/// Makes `/volumes/<name>` and returns its path.
pub fn volume(name: &str) -> String {
    let fs = admin();
    let vols = match fs.mkdir(&ctx(), ROOT, &cstr("volumes"), 0o755, 0) {
        Ok(e) => e,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => fs
            .lookup(&ctx(), ROOT, &cstr("volumes"))
            .expect("lookup /volumes"),
        Err(e) => panic!("mkdir /volumes: {e}"),
    };
    fs.mkdir(&ctx(), vols.inode, &cstr(name), 0o755, 0)
        .expect("mkdir volume");
    format!("/volumes/{name}")
}

/// A cephx client allowed rw on `path` only; returns its keyring file.
pub fn tenant(id: &str, path: &str) -> PathBuf {
    let c = cluster();
    let out = Command::new("ceph")
        .arg("-c")
        .arg(&c.conf)
        .args([
            "fs",
            "authorize",
            "cephfs",
            &format!("client.{id}"),
            path,
            "rw",
        ])
        .output()
        .expect("run ceph fs authorize");
    assert!(
        out.status.success(),
        "ceph fs authorize: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = c.dir.join("tenants");
    std::fs::create_dir_all(&dir).expect("tenants dir");
    let keyring = dir.join(format!("{id}.keyring"));
    std::fs::write(&keyring, &out.stdout).expect("write keyring");
    keyring
}

/// A fresh volume and a tenant confined to it, mounted as the volume's root.
pub struct Volume {
    pub path: String,
    pub id: String,
    pub keyring: PathBuf,
}

impl Volume {
    pub fn new(prefix: &str) -> Volume {
        let name = unique(prefix);
        let path = volume(&name);
        let id = format!("t{name}");
        let keyring = tenant(&id, &path);
        Volume { path, id, keyring }
    }

    pub fn config(&self) -> CephConfig {
        CephConfig::new(&cluster().conf, &self.id, &self.keyring, &self.path)
    }

    pub fn mount(&self) -> CephFs {
        CephFs::connect(self.config()).expect("tenant mount of its volume")
    }
}

pub fn create(fs: &CephFs, ctx: &Context, parent: u64, name: &str, mode: u32) -> (Entry, u64) {
    let args = CreateIn {
        flags: (libc::O_RDWR | libc::O_CREAT | libc::O_EXCL) as u32,
        mode: libc::S_IFREG | mode,
        umask: 0,
        fuse_flags: 0,
    };
    let (entry, handle, _, _) = fs
        .create(ctx, parent, &cstr(name), args)
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    (entry, handle.expect("create gives a handle"))
}

pub fn write(fs: &CephFs, node: u64, handle: u64, offset: u64, data: &[u8]) -> usize {
    let mut r = SliceReader(data);
    fs.write(
        &ctx(),
        node,
        handle,
        &mut r,
        data.len() as u32,
        offset,
        None,
        false,
        0,
        0,
    )
    .expect("write")
}

pub fn read(fs: &CephFs, node: u64, handle: u64, offset: u64, size: u32) -> io::Result<Vec<u8>> {
    let mut w = VecWriter::default();
    fs.read(&ctx(), node, handle, &mut w, size, offset, None, 0)?;
    Ok(w.0)
}

pub fn release(fs: &CephFs, node: u64, handle: u64) {
    fs.release(&ctx(), node, 0, handle, false, false, None)
        .expect("release");
}

/// Whole content of the file `name` in `parent`, opened and closed like a guest would.
pub fn read_file(fs: &CephFs, parent: u64, name: &str) -> io::Result<Vec<u8>> {
    let e = fs.lookup(&ctx(), parent, &cstr(name))?;
    let result = (|| {
        let (h, _, _) = fs.open(&ctx(), e.inode, libc::O_RDONLY as u32, 0)?;
        let h = h.ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?;
        let data = read(fs, e.inode, h, 0, 1 << 20);
        release(fs, e.inode, h);
        data
    })();
    fs.forget(&ctx(), e.inode, 1);
    result
}

/// Names (and inode numbers) READDIR returns for `node`.
pub fn list(fs: &CephFs, node: u64) -> Vec<(String, u64)> {
    let (h, _) = fs.opendir(&ctx(), node, 0).expect("opendir");
    let h = h.expect("dir handle");
    let mut names = Vec::new();
    let mut offset = 0;
    loop {
        let mut batch = Vec::new();
        fs.readdir(&ctx(), node, h, 4096, offset, &mut |d: DirEntry| {
            // A small reply buffer: at most 3 entries per call exercises the offsets.
            if batch.len() == 3 {
                return Ok(0);
            }
            batch.push((
                String::from_utf8_lossy(d.name).into_owned(),
                d.ino,
                d.offset,
            ));
            Ok(1)
        })
        .expect("readdir");
        let Some(last) = batch.last() else { break };
        offset = last.2;
        names.extend(batch.into_iter().map(|(n, i, _)| (n, i)));
    }
    fs.releasedir(&ctx(), node, 0, h).expect("releasedir");
    names
}

/// Lists `node` as the Linux guest does with `READDIRPLUS_AUTO`: one READDIRPLUS of `page`
/// bytes from offset 0, then READDIRs of `page` bytes, each from the offset of the last
/// entry the previous reply carried, every reply filled as fuse-backend-rs fills it (an
/// entry goes in only if it fits whole). Names with their inode numbers, in order; the
/// lookups READDIRPLUS added are forgotten.
pub fn list_paged(fs: &CephFs, node: u64, page: u32) -> io::Result<Vec<(String, u64)>> {
    const DIRENT: usize = 24;
    const ENTRY_OUT: usize = 128;
    let (h, _) = fs.opendir(&ctx(), node, 0)?;
    let h = h.expect("dir handle");
    let mut names = Vec::new();
    let mut looked_up = Vec::new();
    let mut offset = 0;
    let result = loop {
        let mut used = 0;
        let mut last = None;
        let mut fits = |name: &[u8], plus: bool| {
            let n = ((DIRENT + name.len() + 7) & !7) + if plus { ENTRY_OUT } else { 0 };
            if used + n > page as usize {
                return 0;
            }
            used += n;
            n
        };
        let r = if offset == 0 {
            fs.readdirplus(&ctx(), node, h, page, 0, &mut |d: DirEntry, e: Entry| {
                let n = fits(d.name, true);
                if n > 0 {
                    if e.inode != 0 {
                        looked_up.push(e.inode);
                    }
                    names.push((String::from_utf8_lossy(d.name).into_owned(), d.ino));
                    last = Some(d.offset);
                }
                Ok(n)
            })
        } else {
            fs.readdir(&ctx(), node, h, page, offset, &mut |d: DirEntry| {
                let n = fits(d.name, false);
                if n > 0 {
                    names.push((String::from_utf8_lossy(d.name).into_owned(), d.ino));
                    last = Some(d.offset);
                }
                Ok(n)
            })
        };
        if let Err(e) = r {
            break Err(e);
        }
        match last {
            Some(o) => offset = o,
            None => break Ok(names),
        }
    };
    for n in looked_up {
        fs.forget(&ctx(), n, 1);
    }
    fs.releasedir(&ctx(), node, 0, h)?;
    result
}

/// The dev cluster's conf with `extra` appended (Ceph conf lines, e.g. `[client]` and
/// options), written to a temporary file whose name starts with `tag`; the caller removes it.
pub fn conf_variant(tag: &str, extra: &str) -> PathBuf {
    let base = std::fs::read_to_string(&cluster().conf).expect("the dev cluster's conf");
    let path = std::env::temp_dir().join(format!("{}.conf", unique(tag)));
    std::fs::write(&path, format!("{base}\n{extra}\n")).expect("writing a conf variant");
    path
}

/// The client requests the cluster's MDS has had so far (`perf dump mds`, its `request`
/// counter, read through its admin socket with the `ceph` tool). Counts every client's:
/// callers keep other tests off the cluster while they compare two readings.
pub fn mds_requests() -> u64 {
    let run = cluster().dir.join("run");
    let socket = std::fs::read_dir(&run)
        .expect("the dev cluster's run directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with("ceph-mds.") && name.ends_with(".asok")
        })
        .expect("the MDS's admin socket");
    let out = Command::new("ceph")
        .arg("--admin-daemon")
        .arg(&socket)
        .args(["perf", "dump", "mds"])
        .output()
        .expect("ceph --admin-daemon");
    assert!(out.status.success(), "perf dump: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\"request\":").expect("a request counter") + "\"request\":".len();
    text[at..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a number")
}

/// Runs `scripts/ceph-dev-cluster.sh <subcommand>`; its stderr is echoed, its stdout returned.
pub fn cluster_script(subcommand: &str) -> io::Result<String> {
    let script = vm_tests::ceph_dev::script();
    let out = Command::new(&script).arg(subcommand).output()?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{} {subcommand}: {}",
            script.display(),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cluster's only MDS killed (`mds-stop`) until [`MdsOutage::end`], or until the guard is
/// dropped: a failing test never leaves the shared cluster without its MDS.
pub struct MdsOutage {
    ended: bool,
}

impl MdsOutage {
    /// Kills the MDS (SIGKILL, like a crash) and waits until it is gone.
    pub fn begin() -> MdsOutage {
        cluster();
        cluster_script("mds-stop").expect("stop the MDS");
        MdsOutage { ended: false }
    }

    /// Starts the MDS again and waits until it is up:active; returns how long that took.
    pub fn end(&mut self) -> std::time::Duration {
        let t0 = std::time::Instant::now();
        self.ended = true;
        cluster_script("mds-start").expect("restart the MDS");
        t0.elapsed()
    }
}

impl Drop for MdsOutage {
    fn drop(&mut self) {
        if !self.ended {
            self.ended = true;
            if let Err(e) = cluster_script("mds-start") {
                eprintln!("restarting the MDS after a failed test: {e}");
            }
        }
    }
}
