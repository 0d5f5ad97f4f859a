//! A writer (and a small reader, for tests) of the `newc` cpio format, which the Linux kernel
//! unpacks as an initramfs. The harness writes one small archive per boot (the workload script
//! and helper programs) and concatenates it after the base initramfs, so nothing has to be
//! placed in the shared directory.

use std::io::Write;

use thiserror::Error;

/// Errors of the cpio writer and reader.
#[derive(Debug, Error)]
pub enum CpioError {
    /// The entry name is not usable in an archive.
    #[error("invalid entry name {0:?}")]
    BadName(String),
    /// A file is larger than the 32-bit size field allows.
    #[error("entry {name} is too large for newc ({size} bytes)")]
    TooLarge { name: String, size: u64 },
    /// Writing failed.
    #[error("write: {0}")]
    Io(#[from] std::io::Error),
    /// The archive being read is malformed.
    #[error("malformed archive at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: String },
}

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040000;
/// Regular file type bits.
pub const S_IFREG: u32 = 0o100000;
/// Symbolic link type bits.
pub const S_IFLNK: u32 = 0o120000;
/// Character device type bits.
pub const S_IFCHR: u32 = 0o020000;

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

/// Streams a newc archive into `W`.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    fn check_name(name: &str) -> Result<String, CpioError> {
        let trimmed = name.trim_start_matches('/');
        if trimmed.is_empty() || trimmed.contains('\0') || trimmed.split('/').any(|c| c == "..") {
            return Err(CpioError::BadName(name.to_string()));
        }
        Ok(trimmed.to_string())
    }

    fn write_all(&mut self, data: &[u8]) -> Result<(), CpioError> {
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
        check_name: bool,
    ) -> Result<(), CpioError> {
        let name = if check_name {
            Self::check_name(name)?
        } else {
            name.to_string()
        };
        let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge {
            name: name.clone(),
            size: data.len() as u64,
        })?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        self.next_ino += 1;
        let namesize = name.len() + 1;
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            size,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            namesize as u32,
            0, // check
        ];
        let mut header = Vec::with_capacity(HEADER_LEN + namesize + 4);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        header.resize(header.len() + pad4(HEADER_LEN + namesize), 0);
        self.write_all(&header)?;
        self.write_all(data)?;
        self.write_all(&[0u8; 3][..pad4(data.len())])?;
        Ok(())
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str, perm: u32) -> Result<(), CpioError> {
        self.entry(name, S_IFDIR | (perm & 0o7777), 2, (0, 0), &[], true)
    }

    /// Adds a regular file with the given contents.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> Result<(), CpioError> {
        self.entry(name, S_IFREG | (perm & 0o7777), 1, (0, 0), data, true)
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) -> Result<(), CpioError> {
        if target.is_empty() || target.contains('\0') {
            return Err(CpioError::BadName(target.to_string()));
        }
        self.entry(name, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes(), true)
    }

    /// Adds a character device node.
    pub fn char_dev(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), CpioError> {
        self.entry(
            name,
            S_IFCHR | (perm & 0o7777),
            1,
            (major, minor),
            &[],
            true,
        )
    }

    /// Adds `name`'s parent directories (not `name` itself), e.g. `a`, `a/b` for `a/b/c`.
    pub fn parents(&mut self, name: &str) -> Result<(), CpioError> {
        let name = Self::check_name(name)?;
        let comps: Vec<&str> = name.split('/').collect();
        for i in 1..comps.len() {
            self.dir(&comps[..i].join("/"), 0o755)?;
        }
        Ok(())
    }

    /// Writes the trailer, pads the archive to 512 bytes and returns the writer.
    pub fn finish(mut self) -> Result<W, CpioError> {
        self.entry(TRAILER, 0, 1, (0, 0), &[], false)?;
        let rem = (self.written % 512) as usize;
        if rem != 0 {
            let zeros = vec![0u8; 512 - rem];
            self.write_all(&zeros)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// One entry read back from a newc archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpioEntry {
    /// Path inside the archive.
    pub name: String,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Device numbers for device nodes.
    pub rdev: (u32, u32),
    /// File contents, or the link target for symlinks.
    pub data: Vec<u8>,
}

/// Parses a (possibly concatenated, zero-padded) newc archive. Used by the unit tests.
pub fn parse_newc(buf: &[u8]) -> Result<Vec<CpioEntry>, CpioError> {
    let mut out = Vec::new();
    let mut off = 0usize;
    let bad = |offset: usize, reason: &str| CpioError::Malformed {
        offset,
        reason: reason.to_string(),
    };
    while off < buf.len() {
        if buf[off] == 0 {
            off += 1;
            continue;
        }
        let header = buf
            .get(off..off + HEADER_LEN)
            .ok_or_else(|| bad(off, "truncated header"))?;
        if &header[..6] != MAGIC {
            return Err(bad(off, "bad magic"));
        }
        let mut fields = [0u32; 13];
        for (i, f) in fields.iter_mut().enumerate() {
            let s = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| bad(off, "non-ASCII header field"))?;
            *f = u32::from_str_radix(s, 16).map_err(|_| bad(off, "non-hex header field"))?;
        }
        let (mode, size, namesize) = (fields[1], fields[6] as usize, fields[11] as usize);
        let name_start = off + HEADER_LEN;
        let name_bytes = buf
            .get(name_start..name_start + namesize)
            .ok_or_else(|| bad(off, "truncated name"))?;
        let name = std::str::from_utf8(name_bytes.strip_suffix(&[0]).unwrap_or(name_bytes))
            .map_err(|_| bad(off, "non-UTF-8 name"))?
            .to_string();
        let data_start = name_start + namesize + pad4(HEADER_LEN + namesize);
        let data = buf
            .get(data_start..data_start + size)
            .ok_or_else(|| bad(off, "truncated data"))?
            .to_vec();
        off = data_start + size + pad4(size);
        if name == TRAILER {
            continue;
        }
        out.push(CpioEntry {
            name,
            mode,
            rdev: (fields[9], fields[10]),
            data,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_entries_and_alignment() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("vmtest", 0o755).unwrap();
        w.file("/vmtest/workload.sh", 0o755, b"echo hi\n").unwrap();
        w.file("vmtest/empty", 0o644, b"").unwrap();
        w.symlink("vmtest/link", "workload.sh").unwrap();
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let buf = w.finish().unwrap();
        assert_eq!(buf.len() % 512, 0);
        let entries = parse_newc(&buf).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "vmtest",
                "vmtest/workload.sh",
                "vmtest/empty",
                "vmtest/link",
                "dev/console"
            ]
        );
        assert_eq!(entries[0].mode, S_IFDIR | 0o755);
        assert_eq!(entries[1].data, b"echo hi\n");
        assert_eq!(entries[1].mode, S_IFREG | 0o755);
        assert_eq!(entries[3].data, b"workload.sh");
        assert_eq!(entries[3].mode & 0o170000, S_IFLNK);
        assert_eq!(entries[4].rdev, (5, 1));
    }

    #[test]
    fn header_layout_is_newc() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("a", 0o644, b"xyz").unwrap();
        let buf = w.finish().unwrap();
        assert_eq!(&buf[..6], b"070701");
        // mode field (second) is 000081A4 for a 0644 regular file
        assert_eq!(&buf[14..22], b"000081A4");
        // filesize field
        assert_eq!(&buf[54..62], b"00000003");
        // namesize "a\0" = 2
        assert_eq!(&buf[94..102], b"00000002");
        // name at 110, padded so data starts at a multiple of 4 (110 + 2 = 112)
        assert_eq!(&buf[110..112], b"a\0");
        assert_eq!(&buf[112..115], b"xyz");
        let trailer = buf
            .windows(TRAILER.len())
            .position(|w| w == TRAILER.as_bytes())
            .unwrap();
        assert_eq!((trailer - HEADER_LEN) % 4, 0);
    }

    #[test]
    fn concatenated_archives_parse() {
        let mut a = CpioWriter::new(Vec::new());
        a.file("one", 0o644, b"1").unwrap();
        let mut buf = a.finish().unwrap();
        let mut b = CpioWriter::new(Vec::new());
        b.file("two", 0o644, b"22").unwrap();
        buf.extend(b.finish().unwrap());
        let names: Vec<String> = parse_newc(&buf)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["one", "two"]);
    }

    #[test]
    fn rejects_bad_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("", 0o644, b"").is_err());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("a/../b", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
        assert!(w.symlink("l", "").is_err());
    }

    #[test]
    fn parents_creates_each_level() {
        let mut w = CpioWriter::new(Vec::new());
        w.parents("usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let names: Vec<String> = parse_newc(&w.finish().unwrap())
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["usr", "usr/lib", "usr/lib/x86_64-linux-gnu"]);
    }

    #[test]
    fn system_cpio_lists_our_archive() {
        // Cross-check with GNU cpio when it is installed.
        let Ok(out) = std::process::Command::new("cpio").arg("--version").output() else {
            return;
        };
        if !out.status.success() {
            return;
        }
        let mut w = CpioWriter::new(Vec::new());
        w.dir("d", 0o755).unwrap();
        w.file("d/f", 0o600, b"hello").unwrap();
        w.symlink("d/l", "f").unwrap();
        let buf = w.finish().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&buf).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "d\nd/f\nd/l\n");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(parse_newc(b"070701zz").is_err());
        assert!(parse_newc(b"garbage-garbage").is_err());
        let mut w = CpioWriter::new(Vec::new());
        w.file("a", 0o644, b"xyz").unwrap();
        let buf = w.finish().unwrap();
        assert!(parse_newc(&buf[..100]).is_err());
        assert!(parse_newc(&buf[..113]).is_err());
    }
}
