//! Choosing the QEMU accelerator.
//!
//! `auto` tries KVM when `/dev/kvm` is usable and falls back to TCG when a probe guest does not
//! boot under KVM (some hosts expose a `/dev/kvm` that cannot run a stock guest: it stops with
//! "KVM internal error ... emulation failure"). The probe result is cached for the rest of the
//! process and in `.cache/guest/accel-probe`, keyed by the guest kernel and the host kernel, so
//! only the first test on a machine pays for it.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{HarnessError, Result};
use crate::paths::GuestImage;

/// An accelerator QEMU runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The QEMU arguments selecting it.
    pub fn qemu_args(self) -> Vec<String> {
        match self {
            Accel::Kvm => vec!["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()],
            Accel::Tcg => vec![
                "-accel".into(),
                "tcg,thread=multi".into(),
                "-cpu".into(),
                "max".into(),
            ],
        }
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the test (or `VMTEST_ACCEL`) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelChoice {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    /// Parses `auto`, `kvm` or `tcg`.
    pub fn parse(s: &str) -> Result<AccelChoice> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(AccelChoice::Auto),
            "kvm" => Ok(AccelChoice::Kvm),
            "tcg" => Ok(AccelChoice::Tcg),
            other => Err(HarnessError::Config(format!(
                "accelerator {other:?} (want auto, kvm or tcg)"
            ))),
        }
    }

    /// `VMTEST_ACCEL`, default `auto`.
    pub fn from_env() -> Result<AccelChoice> {
        match std::env::var("VMTEST_ACCEL") {
            Ok(v) => AccelChoice::parse(&v),
            Err(_) => Ok(AccelChoice::Auto),
        }
    }
}

/// True when QEMU output shows that KVM cannot run this guest.
pub fn kvm_failure(text: &str) -> bool {
    const SIGNS: [&str; 6] = [
        "KVM internal error",
        "failed to set MSR",
        "emulation failure",
        "failed to initialize kvm",
        "Could not access KVM kernel module",
        "kvm run failed",
    ];
    SIGNS.iter().any(|s| text.contains(s))
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

static PROBED: Mutex<Option<Accel>> = Mutex::new(None);

fn cache_key(image: &GuestImage) -> String {
    let size = std::fs::metadata(&image.kernel)
        .map(|m| m.len())
        .unwrap_or(0);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "guest={} kernel-bytes={} host={}",
        image.kernel_version,
        size,
        host.trim()
    )
}

fn read_cached(file: &Path, key: &str) -> Option<Accel> {
    let text = std::fs::read_to_string(file).ok()?;
    let (k, v) = text.trim().rsplit_once(" result=")?;
    if k != key {
        return None;
    }
    match v {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

/// Resolves a choice to an accelerator, probing (once) for `auto`.
pub fn resolve(choice: AccelChoice, image: &GuestImage) -> Result<Accel> {
    match choice {
        AccelChoice::Kvm => return Ok(Accel::Kvm),
        AccelChoice::Tcg => return Ok(Accel::Tcg),
        AccelChoice::Auto => {}
    }
    if !kvm_usable() {
        return Ok(Accel::Tcg);
    }
    let mut guard = PROBED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(a) = *guard {
        return Ok(a);
    }
    let cache_file = image.dir.join("accel-probe");
    let key = cache_key(image);
    if let Some(a) = read_cached(&cache_file, &key) {
        *guard = Some(a);
        return Ok(a);
    }
    eprintln!(
        "vm-tests: probing whether KVM can run the guest (result cached in {})",
        cache_file.display()
    );
    let ok = probe_kvm()?;
    let accel = if ok { Accel::Kvm } else { Accel::Tcg };
    eprintln!("vm-tests: accelerator probe chose {accel}");
    let _ = std::fs::write(&cache_file, format!("{key} result={accel}\n"));
    *guard = Some(accel);
    Ok(accel)
}

/// Boots a share-less guest under KVM and checks that its workload ran.
fn probe_kvm() -> Result<bool> {
    let outcome = crate::vm::VmBuilder::new()
        .name("kvm-probe")
        .accel(AccelChoice::Kvm)
        .workload("echo \"@@VMTEST probe=ok\"\n")
        .timeout(Duration::from_secs(30))
        .spawn()?
        .wait()?;
    let failed = kvm_failure(&outcome.qemu_stderr) || kvm_failure(&outcome.serial_text());
    let ok = !failed
        && !outcome.timed_out
        && outcome.results.get("probe") == Some("ok")
        && outcome.results.exit_code == Some(0);
    if !ok {
        let why: Vec<&str> = outcome
            .qemu_stderr
            .lines()
            .chain(outcome.serial.iter().map(|l| l.text.as_str()))
            .filter(|l| kvm_failure(l))
            .take(3)
            .collect();
        eprintln!(
            "vm-tests: KVM cannot run the guest here ({}); using TCG",
            if why.is_empty() {
                if outcome.timed_out {
                    "the probe guest timed out".to_string()
                } else {
                    "the probe guest did not finish its workload".to_string()
                }
            } else {
                why.join(" | ")
            }
        );
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_choice() {
        assert_eq!(AccelChoice::parse("auto").unwrap(), AccelChoice::Auto);
        assert_eq!(AccelChoice::parse("KVM").unwrap(), AccelChoice::Kvm);
        assert_eq!(AccelChoice::parse(" tcg ").unwrap(), AccelChoice::Tcg);
        assert!(AccelChoice::parse("hvf").is_err());
    }

    #[test]
    fn recognises_kvm_failures() {
        assert!(kvm_failure(
            "KVM internal error. Suberror: 1\nextra data[0]: 0x0\nemulation failure"
        ));
        assert!(!kvm_failure("qemu-system-x86_64: terminating on signal 15"));
    }

    #[test]
    fn probe_cache_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("accel-probe");
        std::fs::write(&f, "guest=6.1 kernel-bytes=1 host=x result=tcg\n").unwrap();
        assert_eq!(
            read_cached(&f, "guest=6.1 kernel-bytes=1 host=x"),
            Some(Accel::Tcg)
        );
        assert_eq!(read_cached(&f, "guest=6.2 kernel-bytes=1 host=x"), None);
        std::fs::write(&f, "garbage").unwrap();
        assert_eq!(read_cached(&f, "garbage"), None);
    }
}
