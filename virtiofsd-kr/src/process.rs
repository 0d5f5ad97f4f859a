//! How this process ends once it has started threads: [`exit_now`], the one exit every
//! command uses after start-up (the end of `main`, the signal threads of the daemon and of
//! the Docker plugin, the sandbox's supervisor and its child).
//!
//! Owns nothing else; it must not do the work of exiting (journal flush, socket removal):
//! that is each caller's, before it calls here. `tests/layering.rs` checks that no other
//! way of exiting (`std::process::exit`, libc `exit`) appears in the source.

/// Ends the process with `code` now: stdout and stderr flushed, then `_exit`, so neither the
/// C exit handlers nor the C++ static destructors run. libcephfs' and librados' threads
/// (messenger, timers, an unmount still finishing in the background) may still be running,
/// and libceph-common's static destructors under them crashed a CephFS daemon with SIGSEGV
/// after the guest had powered off (status 139). Rust runs no destructors for statics.
pub fn exit_now(code: i32) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process at once; no state needs to survive it.
    unsafe { libc::_exit(code) }
}
