//! `vmtest-helper`: a small program copied into test guests (with its shared libraries) for the
//! file operations busybox cannot do precisely: pwrite/pread at offsets, O_APPEND and O_EXCL
//! opens, fsync, mmap, POSIX and flock locks with a second process, statfs, bulk file
//! creation/stat/removal, writing a large pseudo-random file fast, single system calls whose
//! exact errno a test asserts (unlink, mkdir, rename, ...), writing until the filesystem says
//! no (quotas), and a timed loop of file operations for outage tests.
//!
//! Every command prints one line (`io-loop` prints one per round); a failing system call prints
//! `ERR:<ERRNO NAME>` and exits 1.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{Error, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;

const USAGE: &str = "usage: vmtest-helper CMD ARGS
  pwrite FILE OFFSET TEXT      write TEXT at OFFSET (pwrite)
  pread FILE OFFSET LEN        print LEN bytes at OFFSET (pread)
  append FILE TEXT             O_APPEND write after seeking to 0; print the new offset
  excl FILE                    open O_CREAT|O_EXCL; print created
  fsync FILE TEXT              write TEXT, fsync, fdatasync
  mmap-write FILE OFFSET TEXT  MAP_SHARED write + msync
  mmap-read FILE OFFSET LEN    MAP_SHARED read
  posix-lock FILE              fcntl lock conflict between two processes
  flock FILE                   flock conflict between two processes
  statfs PATH                  print statfs fields
  mkfiles DIR N                create N files; print the count
  statfiles DIR N              stat N files; print how many exist as regular files
  rmfiles DIR N                remove N files; print the count
  fill FILE MIB SEED           write MIB MiB of pseudo-random data
  unlink PATH | rmdir PATH | mkdir PATH | rename FROM TO | link FROM TO | symlink TARGET PATH
  truncate PATH LEN | chmod PATH OCTAL | setxattr PATH NAME VALUE | open-write PATH |
  create PATH                  one system call (open-write: O_WRONLY; create: O_CREAT|O_WRONLY)
  mkfile PATH OCTAL            open O_CREAT|O_EXCL with that mode (the umask applies)
  read PATH                    print the file's contents
  as UID GID UMASK CMD ARGS    run CMD with those credentials (no supplementary groups) and
                               that umask
  setacl PATH access|default SPEC
                               set a POSIX ACL through its xattr; SPEC is comma-separated
                               u::rwx, u:ID:rw-, g::r-x, g:ID:..., m::..., o::...
  getacl PATH access|default   print the ACL in the same form (ERR:ENODATA when none)
  utimens PATH ATIME MTIME     utimensat; each time is seconds (64-bit), now or omit
  times PATH                   print atime mtime ctime (seconds, 64-bit)
  create0-ftruncate FILE LEN UID
                               as UID:UID, create FILE with mode 0 (O_RDWR|O_EXCL), ftruncate
                               the descriptor to LEN; print the size fstat sees
  write-until-error FILE MAXMIB
                               write 1 MiB blocks until an error or MAXMIB, then fsync; print
                               written=BYTES write=ok|ERRNO fsync=ok|ERRNO
  exec-busy SRC DIR ROUNDS     per round: copy SRC (a `sleep`) to a new file in DIR, chmod 755,
                               run it, open it for writing three ways (O_WRONLY, O_RDWR,
                               O_RDONLY|O_TRUNC; each must fail with ETXTBSY), then check the
                               child still runs and the file still holds SRC; print a
                               `busy-fail ...` line per round that went wrong, then
                               `refused=N/M intact=N/R alive=N/R`
  io-loop DIR                  until a line arrives on stdin: stat, read, overwrite, create and
                               unlink files in DIR; print one `@@VMTEST round=...` line per
                               round (each call's result and milliseconds), and a
                               `@@VMTEST blocked=...` line every 2 s while a call is stuck";

#[derive(Debug)]
enum Failure {
    Usage(String),
    Sys(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Sys(e)
    }
}

type Res<T> = Result<T, Failure>;

fn errno_name(e: &Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
        None => e.to_string(),
    }
}

fn arg<'a>(args: &'a [String], i: usize, what: &str) -> Res<&'a str> {
    args.get(i)
        .map(String::as_str)
        .ok_or_else(|| Failure::Usage(format!("missing {what}")))
}

fn num(args: &[String], i: usize, what: &str) -> Res<u64> {
    let s = arg(args, i, what)?;
    s.parse()
        .map_err(|_| Failure::Usage(format!("{what}: not a number: {s}")))
}

fn cvt(ret: libc::c_int) -> Res<libc::c_int> {
    if ret < 0 {
        Err(Failure::Sys(Error::last_os_error()))
    } else {
        Ok(ret)
    }
}

fn file_name(dir: &str, i: u64) -> String {
    format!("{dir}/f{i:05}")
}

/// Maps `len` bytes of `file` shared, runs `f` on them, syncs and unmaps.
fn with_mmap<T>(file: &File, len: usize, f: impl FnOnce(&mut [u8]) -> T) -> Res<T> {
    // SAFETY: a fresh shared mapping of a file we hold open; the slice does not outlive it.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(Failure::Sys(Error::last_os_error()));
        }
        let out = f(std::slice::from_raw_parts_mut(p.cast::<u8>(), len));
        let r = libc::msync(p, len, libc::MS_SYNC);
        let e = Error::last_os_error();
        libc::munmap(p, len);
        if r < 0 {
            return Err(Failure::Sys(e));
        }
        Ok(out)
    }
}

/// Forks; the child runs `f` and exits with its result code; returns that code.
fn in_child(f: impl FnOnce() -> i32) -> Res<i32> {
    // SAFETY: the child only runs simple system calls and exits with _exit.
    let pid = cvt(unsafe { libc::fork() })?;
    if pid == 0 {
        let code = f();
        // SAFETY: terminating the forked child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    cvt(unsafe { libc::waitpid(pid, &mut status, 0) })?;
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        255
    })
}

const CHILD_EAGAIN: i32 = 11;
const CHILD_OK: i32 = 0;

fn setlk(fd: i32, kind: libc::c_int) -> libc::c_int {
    // SAFETY: zero is a valid flock value; fcntl reads it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: valid fd and flock pointer.
    unsafe { libc::fcntl(fd, libc::F_SETLK, &fl) }
}

fn posix_lock(path: &str) -> Res<String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let fd = f.as_raw_fd();
    cvt(setlk(fd, libc::F_WRLCK))?;
    let me = std::process::id() as i32;
    let path_c = CString::new(path).map_err(|_| Failure::Usage("NUL in path".into()))?;
    let path_ref = &path_c;
    let child_try = |want_getlk: bool| {
        move || {
            // SAFETY: plain open/fcntl in the child.
            let cfd = unsafe { libc::open(path_ref.as_ptr(), libc::O_RDWR) };
            if cfd < 0 {
                return 3;
            }
            if want_getlk {
                // SAFETY: as above.
                let mut fl: libc::flock = unsafe { std::mem::zeroed() };
                fl.l_type = libc::F_WRLCK as libc::c_short;
                fl.l_whence = libc::SEEK_SET as libc::c_short;
                // SAFETY: valid fd and pointer.
                if unsafe { libc::fcntl(cfd, libc::F_GETLK, &mut fl) } < 0 {
                    return 4;
                }
                if fl.l_type != libc::F_WRLCK as libc::c_short || fl.l_pid != me {
                    return 5;
                }
            }
            if setlk(cfd, libc::F_WRLCK) < 0 {
                let e = Error::last_os_error().raw_os_error();
                return if e == Some(libc::EAGAIN) || e == Some(libc::EACCES) {
                    CHILD_EAGAIN
                } else {
                    6
                };
            }
            CHILD_OK
        }
    };
    let conflict = in_child(child_try(false))?;
    let getlk = in_child(child_try(true))?;
    cvt(setlk(fd, libc::F_UNLCK))?;
    let after = in_child(child_try(false))?;
    Ok(format!(
        "conflict={} getlk={} after_unlock={}",
        if conflict == CHILD_EAGAIN {
            "EAGAIN"
        } else {
            "none"
        },
        match getlk {
            CHILD_EAGAIN => "holder".to_string(),
            c => format!("code{c}"),
        },
        if after == CHILD_OK { "ok" } else { "blocked" }
    ))
}

fn flock_cmd(path: &str) -> Res<String> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // SAFETY: valid fd.
    cvt(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) })?;
    let path_c = CString::new(path).map_err(|_| Failure::Usage("NUL in path".into()))?;
    let try_lock = || {
        // SAFETY: plain open/flock in the child (a separate open file description).
        let cfd = unsafe { libc::open(path_c.as_ptr(), libc::O_RDWR) };
        if cfd < 0 {
            return 3;
        }
        // SAFETY: valid fd.
        if unsafe { libc::flock(cfd, libc::LOCK_EX | libc::LOCK_NB) } < 0 {
            return if Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK) {
                CHILD_EAGAIN
            } else {
                6
            };
        }
        CHILD_OK
    };
    let conflict = in_child(try_lock)?;
    // SAFETY: valid fd.
    cvt(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_UN) })?;
    let after = in_child(try_lock)?;
    Ok(format!(
        "conflict={} after_unlock={}",
        if conflict == CHILD_EAGAIN {
            "EWOULDBLOCK"
        } else {
            "none"
        },
        if after == CHILD_OK { "ok" } else { "blocked" }
    ))
}

fn fill(path: &str, mib: u64, seed: u64) -> Res<String> {
    let mut f = File::create(path)?;
    // One pseudo-random MiB (xorshift64), made distinct per MiB by stamping the block number
    // into its first 8 bytes: cheap to generate even in an unoptimised build under TCG.
    let mut state = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    for chunk in buf.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes());
    }
    for block in 0..mib {
        buf[..8].copy_from_slice(&block.to_le_bytes());
        f.write_all(&buf)?;
    }
    f.sync_all()?;
    Ok(format!("{}", mib << 20))
}

fn cpath(path: &str) -> Res<CString> {
    CString::new(path).map_err(|_| Failure::Usage("NUL in path".into()))
}

/// One system call on paths; `ok` or the failure.
fn single_call(cmd: &str, args: &[String]) -> Res<String> {
    let p1 = || cpath(arg(args, 1, "path")?);
    let p2 = || cpath(arg(args, 2, "second path")?);
    // Every call below gets NUL-terminated paths that live until the end of its statement
    // (the `CString` temporaries), and a value buffer with its true length.
    let rc = match cmd {
        // SAFETY: a valid NUL-terminated path (see above).
        "unlink" => unsafe { libc::unlink(p1()?.as_ptr()) },
        // SAFETY: a valid NUL-terminated path.
        "rmdir" => unsafe { libc::rmdir(p1()?.as_ptr()) },
        // SAFETY: a valid NUL-terminated path.
        "mkdir" => unsafe { libc::mkdir(p1()?.as_ptr(), 0o755) },
        // SAFETY: two valid NUL-terminated paths.
        "rename" => unsafe { libc::rename(p1()?.as_ptr(), p2()?.as_ptr()) },
        // SAFETY: two valid NUL-terminated paths.
        "link" => unsafe { libc::link(p1()?.as_ptr(), p2()?.as_ptr()) },
        // SAFETY: two valid NUL-terminated paths.
        "symlink" => unsafe { libc::symlink(p1()?.as_ptr(), p2()?.as_ptr()) },
        // SAFETY: a valid NUL-terminated path.
        "truncate" => unsafe { libc::truncate(p1()?.as_ptr(), num(args, 2, "length")? as i64) },
        "chmod" => {
            let mode = u32::from_str_radix(arg(args, 2, "mode")?, 8)
                .map_err(|_| Failure::Usage("mode: not octal".into()))?;
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::chmod(p1()?.as_ptr(), mode) }
        }
        "setxattr" => {
            let name = cpath(arg(args, 2, "name")?)?;
            let value = arg(args, 3, "value")?;
            // SAFETY: NUL-terminated path and name; `value` is readable for `value.len()`.
            unsafe {
                libc::setxattr(
                    p1()?.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            }
        }
        "open-write" | "create" => {
            let flags = if cmd == "create" {
                libc::O_WRONLY | libc::O_CREAT
            } else {
                libc::O_WRONLY
            };
            // SAFETY: a valid NUL-terminated path.
            let fd = unsafe { libc::open(p1()?.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
            if fd >= 0 {
                // SAFETY: `fd` was just opened here and is not used after.
                unsafe { libc::close(fd) };
            }
            fd
        }
        other => return Err(Failure::Usage(format!("unknown command {other}"))),
    };
    cvt(rc)?;
    Ok("ok".into())
}

/// Writes 1 MiB blocks to a new `path` until a write fails or `max_mib` are written, then
/// fsyncs: reports how far it got and how each step ended (a quota shows up here).
fn write_until_error(path: &str, max_mib: u64) -> Res<String> {
    let mut f = File::create(path)?;
    let block = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    let mut write_result = "ok".to_string();
    'blocks: for _ in 0..max_mib {
        let mut done = 0;
        while done < block.len() {
            match f.write(&block[done..]) {
                Ok(0) => {
                    write_result = "short".into();
                    break 'blocks;
                }
                Ok(n) => {
                    done += n;
                    written += n as u64;
                }
                Err(e) => {
                    write_result = errno_name(&e);
                    break 'blocks;
                }
            }
        }
    }
    let fsync_result = match f.sync_all() {
        Ok(()) => "ok".to_string(),
        Err(e) => errno_name(&e),
    };
    Ok(format!(
        "written={written} write={write_result} fsync={fsync_result}"
    ))
}

/// What `io-loop`'s main thread is doing, for its watchdog.
struct LoopState {
    round: std::sync::atomic::AtomicU64,
    op: std::sync::Mutex<(&'static str, Option<std::time::Instant>)>,
    stop: std::sync::atomic::AtomicBool,
}

/// Runs `f` as operation `name` of the loop, timed; `ok/MS` or `ERRNO/MS`.
fn timed(state: &LoopState, name: &'static str, f: impl FnOnce() -> std::io::Result<()>) -> String {
    let t = std::time::Instant::now();
    *state.op.lock().unwrap_or_else(|p| p.into_inner()) = (name, Some(t));
    let r = f();
    *state.op.lock().unwrap_or_else(|p| p.into_inner()) = (name, None);
    let ms = t.elapsed().as_millis();
    match r {
        Ok(()) => format!("{name}=ok/{ms}"),
        Err(e) => format!("{name}={}/{ms}", errno_name(&e)),
    }
}

/// The outage probe: stat, read, overwrite, create+unlink in `dir`, round after round, until a
/// line arrives on stdin. A watchdog thread reports a call that has been stuck for 2 s or more.
fn io_loop(dir: &str) -> Res<String> {
    use std::io::Read;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let stat_path = format!("{dir}/stat-me");
    let read_path = format!("{dir}/read-me");
    let write_path = format!("{dir}/write-me");
    std::fs::write(&stat_path, "stat\n")?;
    std::fs::write(&read_path, "read me\n")?;
    let state = Arc::new(LoopState {
        round: 0.into(),
        op: std::sync::Mutex::new(("", None)),
        stop: false.into(),
    });
    let st = Arc::clone(&state);
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        loop {
            match std::io::stdin().read(&mut byte) {
                Ok(1) if byte[0] == b'\n' => break,
                Ok(1) => {}
                _ => break,
            }
        }
        st.stop.store(true, Ordering::SeqCst);
    });
    let st = Arc::clone(&state);
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_secs(2));
        let (op, since) = *st.op.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = since {
            let secs = since.elapsed().as_secs();
            if secs >= 2 {
                println!(
                    "@@VMTEST blocked=round {} {op} for {secs} s",
                    st.round.load(Ordering::SeqCst)
                );
            }
        }
    });
    let started = Instant::now();
    let mut round = 0u64;
    while !state.stop.load(Ordering::SeqCst) {
        round += 1;
        state.round.store(round, Ordering::SeqCst);
        let at = started.elapsed().as_millis();
        let stat = timed(&state, "stat", || std::fs::metadata(&stat_path).map(|_| ()));
        let read = timed(&state, "read", || {
            let text = std::fs::read(&read_path)?;
            if text == b"read me\n" {
                Ok(())
            } else {
                Err(Error::from_raw_os_error(libc::EBADMSG))
            }
        });
        let write = timed(&state, "write", || {
            std::fs::write(&write_path, format!("round {round}\n"))
        });
        let created = format!("{dir}/new-{round}");
        let create = timed(&state, "create", || {
            File::create(&created)?;
            std::fs::remove_file(&created)
        });
        println!("@@VMTEST round={round} at={at} {stat} {read} {write} {create}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(format!("rounds={round}"))
}

/// A `timespec` for utimensat: seconds, `now` or `omit`.
fn utime_arg(args: &[String], i: usize, what: &str) -> Res<libc::timespec> {
    let a = arg(args, i, what)?;
    let (tv_sec, tv_nsec) = match a {
        "now" => (0, libc::UTIME_NOW),
        "omit" => (0, libc::UTIME_OMIT),
        _ => (
            a.parse::<i64>()
                .map_err(|_| Failure::Usage(format!("{what}: not seconds, now or omit")))?,
            0,
        ),
    };
    Ok(libc::timespec { tv_sec, tv_nsec })
}

/// ftruncate through the descriptor of a file created with mode 0 by `uid` (POSIX: the
/// permission comes from the open descriptor, not from the file's mode).
fn create0_ftruncate(path: &str, len: u64, uid: u32) -> Res<String> {
    let p = cpath(path)?;
    // SAFETY: plain credential changes of this single-threaded process.
    cvt(unsafe { libc::setgid(uid) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::setuid(uid) })?;
    // SAFETY: valid NUL-terminated path.
    let fd =
        cvt(unsafe { libc::open(p.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0) })?;
    // SAFETY: `fd` is ours; closed below.
    let r = cvt(unsafe { libc::ftruncate(fd, len as libc::off_t) });
    // SAFETY: stat is plain old data; `fd` is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is valid and `st` a valid out pointer.
    let s = r.and_then(|_| cvt(unsafe { libc::fstat(fd, &mut st) }));
    // SAFETY: `fd` is ours.
    unsafe { libc::close(fd) };
    s?;
    Ok(st.st_size.to_string())
}

const ACL_TAGS: [(&str, u16); 6] = [
    ("u", 0x01),
    ("U", 0x02),
    ("g", 0x04),
    ("G", 0x08),
    ("m", 0x10),
    ("o", 0x20),
];

fn acl_xattr_name(which: &str) -> Res<CString> {
    match which {
        "access" => Ok(CString::from(c"system.posix_acl_access")),
        "default" => Ok(CString::from(c"system.posix_acl_default")),
        _ => Err(Failure::Usage("ACL kind: access or default".into())),
    }
}

/// `u::rw-,u:1234:rw-,...` to the kernel's xattr form: version 2, then (tag, perm, id).
fn acl_encode(spec: &str) -> Res<Vec<u8>> {
    let bad = |m: &str| Failure::Usage(format!("ACL entry: {m}"));
    let mut out = 2u32.to_le_bytes().to_vec();
    for entry in spec.split(',') {
        let parts: Vec<&str> = entry.split(':').collect();
        let [kind, id, perm] = parts[..] else {
            return Err(bad(entry));
        };
        let named = !id.is_empty();
        let tag: u16 = match (kind, named) {
            ("u", false) => 0x01,
            ("u", true) => 0x02,
            ("g", false) => 0x04,
            ("g", true) => 0x08,
            ("m", false) => 0x10,
            ("o", false) => 0x20,
            _ => return Err(bad(entry)),
        };
        let id: u32 = if named {
            id.parse().map_err(|_| bad(entry))?
        } else {
            u32::MAX
        };
        let mut p = 0u16;
        for (c, bit) in perm.chars().zip([4u16, 2, 1]) {
            if c != '-' {
                p |= bit;
            }
        }
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&p.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    Ok(out)
}

fn acl_decode(value: &[u8]) -> String {
    let mut entries = Vec::new();
    for e in value.get(4..).unwrap_or_default().chunks_exact(8) {
        let tag = u16::from_le_bytes([e[0], e[1]]);
        let perm = u16::from_le_bytes([e[2], e[3]]);
        let id = u32::from_le_bytes([e[4], e[5], e[6], e[7]]);
        let kind = ACL_TAGS
            .iter()
            .find(|(_, t)| *t == tag)
            .map(|(k, _)| k.to_ascii_lowercase())
            .unwrap_or_else(|| "?".into());
        let id = if matches!(tag, 0x02 | 0x08) {
            id.to_string()
        } else {
            String::new()
        };
        let rwx: String = [(4, 'r'), (2, 'w'), (1, 'x')]
            .iter()
            .map(|&(b, c)| if perm & b != 0 { c } else { '-' })
            .collect();
        entries.push(format!("{kind}:{id}:{rwx}"));
    }
    entries.join(",")
}

/// `exec-busy`: the sequence of pjdfstest's `open::etxtbsy` (`io::copy` into a new file,
/// chmod, `Command::spawn`, then the three opens for writing), repeated. After the opens the
/// child must still run and the file must still hold SRC's bytes (a refused open must not
/// have truncated it). An open that did not fail with ETXTBSY is reported with what the child
/// was doing then; every round that went wrong with how the child ended.
fn exec_busy(src: &str, dir: &str, rounds: u64) -> Res<String> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::ExitStatusExt;
    let original = std::fs::read(src)?;
    let (mut refused, mut tried, mut intact, mut alive) = (0, 0, 0, 0);
    let mut report = Vec::new();
    for round in 0..rounds {
        let path = format!("{dir}/busy{round}");
        std::io::copy(&mut File::open(src)?, &mut File::create(&path)?)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        let mut child = std::process::Command::new(&path).arg("60").spawn()?;
        let cpath = cpath(&path)?;
        let mut failed = Vec::new();
        for (how, flags) in [
            ("O_WRONLY", libc::O_WRONLY),
            ("O_RDWR", libc::O_RDWR),
            ("O_RDONLY|O_TRUNC", libc::O_RDONLY | libc::O_TRUNC),
        ] {
            tried += 1;
            // SAFETY: a valid NUL-terminated path.
            let fd = unsafe { libc::open(cpath.as_ptr(), flags | libc::O_CLOEXEC) };
            if fd >= 0 {
                // SAFETY: `fd` was just opened here.
                unsafe { libc::close(fd) };
                let state = std::fs::read_to_string(format!("/proc/{}/stat", child.id()))
                    .ok()
                    .and_then(|s| s.rsplit(')').next().and_then(|r| r.trim().chars().next()))
                    .unwrap_or('?');
                failed.push(format!("{how}=opened(child state {state})"));
            } else {
                let e = Error::last_os_error();
                if e.raw_os_error() == Some(libc::ETXTBSY) {
                    refused += 1;
                } else {
                    failed.push(format!("{how}=ERR:{}", errno_name(&e)));
                }
            }
        }
        let running = child.try_wait()?.is_none();
        alive += u64::from(running);
        let now = std::fs::read(&path)?;
        if now == original {
            intact += 1;
        } else {
            failed.push(format!("size={}/{}", now.len(), original.len()));
        }
        let _ = child.kill();
        let status = child.wait()?;
        if !failed.is_empty() || !running {
            report.push(format!(
                "busy-fail round={round} {} child-end={}",
                failed.join(" "),
                match (status.signal(), status.code()) {
                    (Some(sig), _) => format!("signal{sig}"),
                    (None, Some(c)) => format!("exit{c}"),
                    _ => "?".into(),
                }
            ));
        }
    }
    report.push(format!(
        "refused={refused}/{tried} intact={intact}/{rounds} alive={alive}/{rounds}"
    ));
    Ok(report.join("\n"))
}

fn run(args: &[String]) -> Res<String> {
    let cmd = arg(args, 0, "command")?;
    match cmd {
        "as" => {
            let uid = num(args, 1, "uid")? as libc::uid_t;
            let gid = num(args, 2, "gid")? as libc::gid_t;
            let umask = u32::from_str_radix(arg(args, 3, "umask")?, 8)
                .map_err(|_| Failure::Usage("umask: not octal".into()))?;
            // SAFETY: plain credential changes of this single-threaded process.
            cvt(unsafe { libc::setgroups(0, std::ptr::null()) })?;
            // SAFETY: as above.
            cvt(unsafe { libc::setgid(gid) })?;
            // SAFETY: as above.
            cvt(unsafe { libc::setuid(uid) })?;
            // SAFETY: sets this process's umask; no memory involved.
            unsafe { libc::umask(umask as libc::mode_t) };
            run(&args[4.min(args.len())..])
        }
        "mkfile" => {
            let p = cpath(arg(args, 1, "path")?)?;
            let mode = u32::from_str_radix(arg(args, 2, "mode")?, 8)
                .map_err(|_| Failure::Usage("mode: not octal".into()))?;
            // SAFETY: a valid NUL-terminated path.
            let fd = cvt(unsafe {
                libc::open(
                    p.as_ptr(),
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
                    mode,
                )
            })?;
            // SAFETY: `fd` was just opened here.
            unsafe { libc::close(fd) };
            Ok("ok".into())
        }
        "exec-busy" => exec_busy(
            arg(args, 1, "source")?,
            arg(args, 2, "dir")?,
            num(args, 3, "rounds")?,
        ),
        "read" => Ok(String::from_utf8_lossy(&std::fs::read(arg(args, 1, "path")?)?).into_owned()),
        "setacl" => {
            let p = cpath(arg(args, 1, "path")?)?;
            let name = acl_xattr_name(arg(args, 2, "kind")?)?;
            let value = acl_encode(arg(args, 3, "spec")?)?;
            // SAFETY: NUL-terminated path and name; `value` is readable for its length.
            cvt(unsafe {
                libc::setxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            })?;
            Ok("ok".into())
        }
        "getacl" => {
            let p = cpath(arg(args, 1, "path")?)?;
            let name = acl_xattr_name(arg(args, 2, "kind")?)?;
            let mut buf = vec![0u8; 4096];
            // SAFETY: NUL-terminated path and name; `buf` is writable for its length.
            let n = unsafe {
                libc::getxattr(
                    p.as_ptr(),
                    name.as_ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n < 0 {
                return Err(Error::last_os_error().into());
            }
            Ok(acl_decode(&buf[..n as usize]))
        }
        "utimens" => {
            let p = cpath(arg(args, 1, "path")?)?;
            let times = [utime_arg(args, 2, "atime")?, utime_arg(args, 3, "mtime")?];
            // SAFETY: valid path and two timespecs.
            cvt(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), times.as_ptr(), 0) })?;
            Ok("ok".into())
        }
        "times" => {
            let p = cpath(arg(args, 1, "path")?)?;
            // SAFETY: stat is plain old data; valid path and out-pointer.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: valid NUL-terminated path and out pointer.
            cvt(unsafe { libc::stat(p.as_ptr(), &mut st) })?;
            Ok(format!("{} {} {}", st.st_atime, st.st_mtime, st.st_ctime))
        }
        "create0-ftruncate" => create0_ftruncate(
            arg(args, 1, "file")?,
            num(args, 2, "length")?,
            u32::try_from(num(args, 3, "uid")?)
                .map_err(|_| Failure::Usage("uid: too large".into()))?,
        ),
        "pwrite" => {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(arg(args, 1, "file")?)?;
            let text = arg(args, 3, "text")?;
            f.write_all_at(text.as_bytes(), num(args, 2, "offset")?)?;
            Ok("ok".into())
        }
        "pread" => {
            let f = File::open(arg(args, 1, "file")?)?;
            let mut buf = vec![0u8; num(args, 3, "len")? as usize];
            let n = f.read_at(&mut buf, num(args, 2, "offset")?)?;
            buf.truncate(n);
            Ok(String::from_utf8_lossy(&buf).into_owned())
        }
        "append" => {
            let mut f = OpenOptions::new()
                .append(true)
                .open(arg(args, 1, "file")?)?;
            // SAFETY: valid fd; with O_APPEND the write must still go to the end.
            cvt(unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_SET) } as libc::c_int)?;
            f.write_all(arg(args, 2, "text")?.as_bytes())?;
            // SAFETY: valid fd.
            let pos = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_CUR) };
            Ok(pos.to_string())
        }
        "excl" => {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(arg(args, 1, "file")?)?;
            Ok("created".into())
        }
        "fsync" => {
            let mut f = File::create(arg(args, 1, "file")?)?;
            f.write_all(arg(args, 2, "text")?.as_bytes())?;
            f.sync_all()?;
            f.sync_data()?;
            Ok("ok".into())
        }
        "mmap-write" => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(arg(args, 1, "file")?)?;
            let off = num(args, 2, "offset")? as usize;
            let text = arg(args, 3, "text")?.as_bytes().to_vec();
            let len = f.metadata()?.len() as usize;
            if off + text.len() > len {
                return Err(Failure::Usage("write beyond the file size".into()));
            }
            with_mmap(&f, len, |m| m[off..off + text.len()].copy_from_slice(&text))?;
            Ok("ok".into())
        }
        "mmap-read" => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(arg(args, 1, "file")?)?;
            let off = num(args, 2, "offset")? as usize;
            let n = num(args, 3, "len")? as usize;
            let len = f.metadata()?.len() as usize;
            if off + n > len {
                return Err(Failure::Usage("read beyond the file size".into()));
            }
            let data = with_mmap(&f, len, |m| m[off..off + n].to_vec())?;
            Ok(String::from_utf8_lossy(&data).into_owned())
        }
        "posix-lock" => posix_lock(arg(args, 1, "file")?),
        "flock" => flock_cmd(arg(args, 1, "file")?),
        "statfs" => {
            let p = CString::new(arg(args, 1, "path")?)
                .map_err(|_| Failure::Usage("NUL in path".into()))?;
            // SAFETY: zeroed statfs is valid output storage.
            let mut s: libc::statfs = unsafe { std::mem::zeroed() };
            // SAFETY: valid C string and pointer.
            cvt(unsafe { libc::statfs(p.as_ptr(), &mut s) })?;
            Ok(format!(
                "type={:#x} bsize={} blocks={} bfree={} bavail={} files={} ffree={} namelen={}",
                s.f_type,
                s.f_bsize,
                s.f_blocks,
                s.f_bfree,
                s.f_bavail,
                s.f_files,
                s.f_ffree,
                s.f_namelen
            ))
        }
        "mkfiles" => {
            let dir = arg(args, 1, "dir")?;
            let n = num(args, 2, "count")?;
            for i in 0..n {
                let mut f = File::create(file_name(dir, i))?;
                f.write_all(format!("{i}\n").as_bytes())?;
            }
            Ok(n.to_string())
        }
        "statfiles" => {
            let dir = arg(args, 1, "dir")?;
            let n = num(args, 2, "count")?;
            let mut ok = 0u64;
            for i in 0..n {
                if let Ok(m) = std::fs::symlink_metadata(file_name(dir, i)) {
                    if m.is_file() && m.len() == format!("{i}\n").len() as u64 {
                        ok += 1;
                    }
                }
            }
            Ok(ok.to_string())
        }
        "rmfiles" => {
            let dir = arg(args, 1, "dir")?;
            let n = num(args, 2, "count")?;
            for i in 0..n {
                std::fs::remove_file(file_name(dir, i))?;
            }
            Ok(n.to_string())
        }
        "fill" => fill(
            arg(args, 1, "file")?,
            num(args, 2, "MiB")?,
            num(args, 3, "seed")?,
        ),
        "unlink" | "rmdir" | "mkdir" | "rename" | "link" | "symlink" | "truncate" | "chmod"
        | "setxattr" | "open-write" | "create" => single_call(cmd, args),
        "write-until-error" => write_until_error(arg(args, 1, "file")?, num(args, 2, "MiB")?),
        "io-loop" => io_loop(arg(args, 1, "dir")?),
        other => Err(Failure::Usage(format!("unknown command {other}"))),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(s) => {
            println!("{s}");
            ExitCode::SUCCESS
        }
        Err(Failure::Sys(e)) => {
            println!("ERR:{}", errno_name(&e));
            ExitCode::FAILURE
        }
        Err(Failure::Usage(m)) => {
            eprintln!("vmtest-helper: {m}\n{USAGE}");
            println!("ERR:usage");
            ExitCode::from(2)
        }
    }
}
