//! In-memory stand-ins for guest buffers, for tests that call a `fuse_backend_rs`
//! `FileSystem` directly (no virtqueue): [`VecWriter`] collects what a READ writes,
//! [`SliceReader`] is the payload a WRITE reads.
//!
//! Owns only these two adapters. Their zero-copy paths answer `Unsupported`: a backend that
//! needs a host file descriptor for its data (the passthrough) is not driven this way.

use std::io;

use fuse_backend_rs::api::filesystem::{ZeroCopyReader, ZeroCopyWriter};
use fuse_backend_rs::common::file_traits::FileReadWriteVolatile;

/// Collects the bytes of READ replies.
#[derive(Debug, Default)]
pub struct VecWriter(pub Vec<u8>);

impl io::Write for VecWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for VecWriter {
    fn write_from(
        &mut self,
        _f: &mut dyn FileReadWriteVolatile,
        _count: usize,
        _off: u64,
    ) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
    fn available_bytes(&self) -> usize {
        usize::MAX
    }
}

/// The payload of one WRITE request.
#[derive(Debug)]
pub struct SliceReader<'a>(pub &'a [u8]);

impl io::Read for SliceReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.0, buf)
    }
}

impl ZeroCopyReader for SliceReader<'_> {
    fn read_to(
        &mut self,
        _f: &mut dyn FileReadWriteVolatile,
        _count: usize,
        _off: u64,
    ) -> io::Result<usize> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn writer_collects_and_reader_drains() {
        let mut w = VecWriter::default();
        w.write_all(b"abc").unwrap();
        w.write_all(b"de").unwrap();
        assert_eq!(w.0, b"abcde");
        let mut r = SliceReader(b"xyz");
        let mut buf = [0u8; 2];
        assert_eq!(r.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf, b"xy");
        assert_eq!(r.read(&mut buf).unwrap(), 1);
        assert_eq!(r.read(&mut buf).unwrap(), 0);
    }
}
