//! The unsent part of a stream transport's writes.
//!
//! Small writes are copied and coalesced into the tail chunk (many of them
//! then leave in one iovec). A big `bytes` object is kept by reference
//! instead of copied: bytes are immutable, so what is sent later is what the
//! caller passed. Anything mutable (bytearray, memoryview, array...) is always
//! copied, as the stdlib does, since the caller may change it after write()
//! returns.

use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::collections::VecDeque;

/// From this many unsent bytes on, a bytes object is queued by reference.
pub const SHARE_MIN: usize = 16 * 1024;
/// A copied chunk takes more small writes until it holds this much.
const COALESCE_MAX: usize = 64 * 1024;

enum Chunk {
    Owned(Vec<u8>),
    /// A bytes object, of which everything from `.1` on is queued.
    Shared(Py<PyBytes>, usize),
}

impl Chunk {
    fn data<'a>(&'a self, py: Python<'_>) -> &'a [u8] {
        match self {
            Chunk::Owned(v) => v,
            Chunk::Shared(b, start) => &b.as_bytes(py)[*start..],
        }
    }
}

#[derive(Default)]
pub struct WriteBuf {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent.
    off: usize,
    /// Unsent bytes in all chunks.
    size: usize,
}

impl WriteBuf {
    pub fn len(&self) -> usize {
        self.size
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.off = 0;
        self.size = 0;
    }

    /// Queues a copy of `data`.
    pub fn push_copy(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        self.size += data.len();
        if let Some(Chunk::Owned(tail)) = self.chunks.back_mut() {
            if tail.len() + data.len() <= COALESCE_MAX {
                tail.extend_from_slice(data);
                return;
            }
        }
        self.chunks.push_back(Chunk::Owned(data.to_vec()));
    }

    /// Queues `bytes[start..]` without copying it.
    pub fn push_shared(&mut self, bytes: Py<PyBytes>, start: usize, len: usize) {
        debug_assert!(len > 0);
        self.size += len;
        self.chunks.push_back(Chunk::Shared(bytes, start));
    }

    /// The unsent data as at most `max` iovecs, valid until the buffer is
    /// next changed (the GIL must stay held: the bytes objects are Python's).
    pub fn iovecs(&self, py: Python<'_>, max: usize) -> Vec<libc::iovec> {
        let mut iov = Vec::with_capacity(self.chunks.len().min(max));
        for (i, chunk) in self.chunks.iter().take(max).enumerate() {
            let data = chunk.data(py);
            let data = if i == 0 { &data[self.off..] } else { data };
            iov.push(libc::iovec {
                iov_base: data.as_ptr() as *mut libc::c_void,
                iov_len: data.len(),
            });
        }
        iov
    }

    /// Drops the first `sent` unsent bytes.
    pub fn consume(&mut self, py: Python<'_>, mut sent: usize) {
        self.size -= sent;
        while sent > 0 {
            let Some(front) = self.chunks.front() else {
                break;
            };
            let left = front.data(py).len() - self.off;
            if sent >= left {
                sent -= left;
                self.chunks.pop_front();
                self.off = 0;
            } else {
                self.off += sent;
                sent = 0;
            }
        }
    }
}
