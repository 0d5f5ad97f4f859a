//! `virtiofsd-kr volume serve NAME --socket-path S [daemon flags]`: what a hypervisor runs per
//! microVM pod mounting a volume.
//!
//! Owns turning a volume name into the daemon's `--backend cephfs` command line: the admin
//! flags are taken out of the trailing arguments, the volume's root, identity and keyring are
//! resolved as the administrator (the keyring written on this host if it is not here yet),
//! the volume's rate limits and `--volume NAME` added unless given, the whole line checked by
//! the daemon's own parser, and then this process re-executes itself as that daemon. The
//! exec matters: the administrator's libcephfs connection has started threads, and the
//! daemon's sandbox needs a single-threaded process holding no admin key.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;

use clap::Parser;

use crate::control::cli::{Cli, VolumeArgs, VolumeCli, VolumeCommand};
use crate::control::volume::{ServeIdentity, VolumeAdmin, VolumeError};

#[derive(Debug, thiserror::Error)]
pub enum VolumeServeError {
    #[error("volume serve: {0}")]
    Volume(#[from] VolumeError),
    #[error("volume serve: {flag} comes from the volume; do not give it")]
    FromVolume { flag: &'static str },
    #[error("volume serve: {flag} needs a value")]
    MissingValue { flag: String },
    #[error("volume serve: daemon flags: {0}")]
    Daemon(String),
    #[error("volume serve: exec {exe:?}: {source}")]
    Exec { exe: String, source: nix::Error },
}

/// Flags that name the volume's serving identity: `volume serve` sets them itself.
const FROM_VOLUME: [&str; 4] = ["--backend", "--ceph-root", "--ceph-id", "--shared-dir"];

/// The administrator's flags allowed among the trailing arguments.
const ADMIN_FLAGS: [&str; 6] = [
    "--ceph-conf",
    "--ceph-keyring",
    "--ceph-id",
    "--ceph-fs",
    "--volumes-root",
    "--keyring-dir",
];

/// Splits the administrator's flags out of `args` into `admin`; returns the daemon's flags.
pub fn split_admin_flags(
    args: &[String],
    admin: &mut VolumeArgs,
) -> Result<Vec<String>, VolumeServeError> {
    let mut daemon = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if flag == "--" {
            daemon.extend(it.cloned());
            break;
        }
        if let Some(&banned) = FROM_VOLUME.iter().find(|f| **f == flag) {
            // --ceph-id is the admin's among these flags; the others name the volume.
            if banned != "--ceph-id" {
                return Err(VolumeServeError::FromVolume { flag: banned });
            }
        }
        if !ADMIN_FLAGS.contains(&flag) {
            daemon.push(arg.clone());
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| VolumeServeError::MissingValue {
                    flag: flag.to_string(),
                })?,
        };
        match flag {
            "--ceph-conf" => admin.ceph_conf = value.into(),
            "--ceph-keyring" => admin.ceph_keyring = value.into(),
            "--ceph-id" => admin.ceph_id = value,
            "--ceph-fs" => admin.ceph_fs = Some(value),
            "--volumes-root" => admin.volumes_root = value,
            _ => admin.keyring_dir = value.into(),
        }
    }
    Ok(daemon)
}

fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter()
        .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
}

/// The daemon's full argument list (without `argv[0]`) for `identity` and `daemon_flags`.
pub fn daemon_command_line(
    name: &str,
    identity: &ServeIdentity,
    daemon_flags: &[String],
) -> Vec<String> {
    let mut argv: Vec<String> = daemon_flags.to_vec();
    argv.extend([
        "--backend".to_string(),
        "cephfs".to_string(),
        "--ceph-conf".to_string(),
        identity.conf.display().to_string(),
        "--ceph-id".to_string(),
        identity.ceph_id.clone(),
        "--ceph-keyring".to_string(),
        identity.keyring.display().to_string(),
        "--ceph-root".to_string(),
        identity.root.clone(),
    ]);
    if let Some(fs) = &identity.fs_name {
        argv.extend(["--ceph-fs".to_string(), fs.clone()]);
    }
    if !has_flag(daemon_flags, "--volume") {
        argv.extend(["--volume".to_string(), name.to_string()]);
    }
    if identity.limits.bytes_per_sec > 0 && !has_flag(daemon_flags, "--rate-limit-bytes") {
        argv.extend([
            "--rate-limit-bytes".to_string(),
            identity.limits.bytes_per_sec.to_string(),
        ]);
    }
    if identity.limits.ops_per_sec > 0 && !has_flag(daemon_flags, "--rate-limit-ops") {
        argv.extend([
            "--rate-limit-ops".to_string(),
            identity.limits.ops_per_sec.to_string(),
        ]);
    }
    argv
}

/// Resolves the volume and becomes the daemon serving it (returns only on error).
pub fn run(cli: VolumeCli) -> Result<(), VolumeServeError> {
    let VolumeCommand::Serve { name, daemon_args } = cli.command else {
        return Ok(());
    };
    let mut admin_args = cli.args.clone();
    let daemon_flags = split_admin_flags(&daemon_args, &mut admin_args)?;
    // The daemon's flags are checked before the cluster is asked anything.
    let placeholder = ServeIdentity {
        root: "/volumes/x".to_string(),
        ceph_id: "vol-x".to_string(),
        keyring: "/k".into(),
        conf: admin_args.ceph_conf.clone(),
        fs_name: admin_args.ceph_fs.clone(),
        limits: Default::default(),
        quota_bytes: None,
    };
    check_daemon_flags(&daemon_command_line(&name, &placeholder, &daemon_flags))?;

    let admin = VolumeAdmin::connect(&admin_args.admin_options())?;
    let identity = admin.serve_identity(&name)?;
    drop(admin);
    let argv = daemon_command_line(&name, &identity, &daemon_flags);
    check_daemon_flags(&argv)?;
    tracing::info!(volume = %name, root = %identity.root, id = %identity.ceph_id, "serving the volume");
    exec_self(&argv)
}

fn check_daemon_flags(argv: &[String]) -> Result<(), VolumeServeError> {
    let cli =
        Cli::try_parse_from(std::iter::once("virtiofsd-kr").chain(argv.iter().map(String::as_str)))
            .map_err(|e| VolumeServeError::Daemon(e.render().to_string().trim().to_string()))?;
    if cli.command.is_some() {
        return Err(VolumeServeError::Daemon(
            "a subcommand is not a daemon flag".to_string(),
        ));
    }
    cli.serve
        .normalized()
        .and_then(|s| s.validate())
        .map_err(|e| VolumeServeError::Daemon(e.to_string()))
}

fn exec_self(argv: &[String]) -> Result<(), VolumeServeError> {
    let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| "/proc/self/exe".into());
    let err = |source| VolumeServeError::Exec {
        exe: exe.display().to_string(),
        source,
    };
    let c = |s: OsString| CString::new(s.into_vec()).map_err(|_| err(nix::errno::Errno::EINVAL));
    let path = c(exe.clone().into_os_string())?;
    let mut args = vec![c("virtiofsd-kr".into())?];
    for a in argv {
        args.push(c(a.into())?);
    }
    nix::unistd::execv(&path, &args).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::volume::VolumeLimits;

    fn admin() -> VolumeArgs {
        match Cli::try_parse_from(["virtiofsd-kr", "volume", "ls"])
            .unwrap()
            .command
        {
            Some(crate::control::cli::Command::Volume(v)) => v.args,
            _ => unreachable!(),
        }
    }

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn admin_flags_are_split_out() {
        let mut a = admin();
        let rest = split_admin_flags(
            &strings(&[
                "--socket-path",
                "/run/s.sock",
                "--ceph-conf=/c.conf",
                "--ceph-keyring",
                "/admin.keyring",
                "--keyring-dir",
                "/keys",
                "--cache",
                "never",
            ]),
            &mut a,
        )
        .unwrap();
        assert_eq!(
            rest,
            strings(&["--socket-path", "/run/s.sock", "--cache", "never"])
        );
        assert_eq!(a.ceph_conf, std::path::PathBuf::from("/c.conf"));
        assert_eq!(a.ceph_keyring, std::path::PathBuf::from("/admin.keyring"));
        assert_eq!(a.keyring_dir, std::path::PathBuf::from("/keys"));
        for banned in ["--ceph-root=/x", "--backend", "--shared-dir=/d"] {
            assert!(matches!(
                split_admin_flags(&strings(&[banned]), &mut admin()),
                Err(VolumeServeError::FromVolume { .. })
            ));
        }
        assert!(matches!(
            split_admin_flags(&strings(&["--ceph-conf"]), &mut admin()),
            Err(VolumeServeError::MissingValue { .. })
        ));
    }

    #[test]
    fn the_daemon_line_serves_the_volume_as_itself() {
        let id = ServeIdentity {
            root: "/volumes/shared".to_string(),
            ceph_id: "vol-shared".to_string(),
            keyring: "/keys/client.vol-shared.keyring".into(),
            conf: "/etc/ceph/ceph.conf".into(),
            fs_name: None,
            limits: VolumeLimits {
                bytes_per_sec: 1 << 20,
                ops_per_sec: 0,
            },
            quota_bytes: Some(1 << 30),
        };
        let argv = daemon_command_line("shared", &id, &strings(&["--socket-path", "/s"]));
        check_daemon_flags(&argv).unwrap();
        let cli = Cli::try_parse_from(std::iter::once("x".to_string()).chain(argv)).unwrap();
        let s = cli.serve;
        assert_eq!(s.ceph_root.as_deref(), Some("/volumes/shared"));
        assert_eq!(s.ceph.ceph_id.as_deref(), Some("vol-shared"));
        assert_eq!(s.accounting.volume.as_deref(), Some("shared"));
        assert_eq!(s.accounting.rate_limit_bytes, Some(1 << 20));
        assert_eq!(s.accounting.rate_limit_ops, None);
        // Flags given win over the volume's.
        let argv = daemon_command_line(
            "shared",
            &id,
            &strings(&["--socket-path=/s", "--volume=v2", "--rate-limit-bytes=5M"]),
        );
        let s = Cli::try_parse_from(std::iter::once("x".to_string()).chain(argv))
            .unwrap()
            .serve;
        assert_eq!(s.accounting.volume.as_deref(), Some("v2"));
        assert_eq!(s.accounting.rate_limit_bytes, Some(5 << 20));
        // A bad daemon flag is refused before the cluster is asked.
        let argv = daemon_command_line("shared", &id, &strings(&["--socket-path=/s", "--nope"]));
        assert!(check_daemon_flags(&argv).is_err());
    }
}
