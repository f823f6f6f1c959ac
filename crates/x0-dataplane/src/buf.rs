//! A packet in a caller-owned buffer, with room in front for headers and behind for tags.
//!
//! The daemon reads a TUN packet at offset [`HEADROOM`] of a buffer it reuses; each layer then
//! writes its header into the headroom ([`PacketBuf::prepend`]) and its tag into the tailroom
//! ([`PacketBuf::append`]); the receiving side strips them again ([`PacketBuf::trim_front`],
//! [`PacketBuf::trim_back`]). Nothing is copied or allocated on the way.

use std::ops::Range;

use crate::aead::TAG_LEN;
use crate::frame::{E2E_HEADER_LEN, LINK_HEADER_LEN, MAX_OVERLAY_HEADER_LEN};

/// Headroom that fits every header a frame can carry: link, overlay (with the longest explicit
/// path and a redundancy sequence) and end-to-end.
pub const HEADROOM: usize = LINK_HEADER_LEN + MAX_OVERLAY_HEADER_LEN + E2E_HEADER_LEN;
/// Tailroom for the two tags (end-to-end and link).
pub const TAILROOM: usize = 2 * TAG_LEN;

/// The buffer lacks room for a header, tag or trim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet buffer: {0}")]
pub struct NoRoom(pub &'static str);

/// A packet occupying `start..end` of a borrowed buffer.
#[derive(Debug)]
pub struct PacketBuf<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
}

impl<'a> PacketBuf<'a> {
    /// The packet is `buf[range]`.
    pub fn new(buf: &'a mut [u8], range: Range<usize>) -> Result<Self, NoRoom> {
        if range.start > range.end || range.end > buf.len() {
            return Err(NoRoom("range outside the buffer"));
        }
        Ok(Self {
            buf,
            start: range.start,
            end: range.end,
        })
    }

    /// The packet is `len` bytes at [`HEADROOM`] (where the caller read it).
    pub fn at_headroom(buf: &'a mut [u8], len: usize) -> Result<Self, NoRoom> {
        Self::new(buf, HEADROOM..HEADROOM.saturating_add(len))
    }

    /// The packet's bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The packet's bytes, mutable.
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Where the packet lies in the buffer.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// Length of the packet.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Free bytes in front.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Free bytes behind.
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.end
    }

    /// Grows the packet by `n` bytes at the front and returns them.
    pub fn prepend(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.start {
            return Err(NoRoom("headroom"));
        }
        self.start -= n;
        Ok(&mut self.buf[self.start..self.start + n])
    }

    /// Grows the packet by `n` bytes at the back and returns them.
    pub fn append(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.tailroom() {
            return Err(NoRoom("tailroom"));
        }
        self.end += n;
        Ok(&mut self.buf[self.end - n..self.end])
    }

    /// Drops `n` bytes from the front.
    pub fn trim_front(&mut self, n: usize) -> Result<(), NoRoom> {
        if n > self.len() {
            return Err(NoRoom("trim past the end"));
        }
        self.start += n;
        Ok(())
    }

    /// Drops `n` bytes from the back.
    pub fn trim_back(&mut self, n: usize) -> Result<(), NoRoom> {
        if n > self.len() {
            return Err(NoRoom("trim past the start"));
        }
        self.end -= n;
        Ok(())
    }

    /// The bytes in front of the packet and the packet itself, split (for headers written in
    /// front of a payload sealed in place).
    pub(crate) fn split_at_start(&mut self) -> (&mut [u8], &mut [u8]) {
        let (front, rest) = self.buf.split_at_mut(self.start);
        (front, &mut rest[..self.end - self.start])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_append_trim() {
        let mut raw = [0u8; 16];
        let mut p = PacketBuf::new(&mut raw, 4..8).unwrap();
        p.data_mut().copy_from_slice(b"data");
        p.prepend(2).unwrap().copy_from_slice(b"H:");
        p.append(2).unwrap().copy_from_slice(b":T");
        assert_eq!(p.data(), b"H:data:T");
        assert_eq!((p.headroom(), p.tailroom()), (2, 6));
        assert!(p.prepend(3).is_err());
        assert!(p.append(7).is_err());
        p.trim_front(2).unwrap();
        p.trim_back(2).unwrap();
        assert_eq!(p.data(), b"data");
        assert!(p.trim_front(5).is_err());
        #[allow(
            clippy::reversed_empty_ranges,
            reason = "a reversed range is the input under test"
        )]
        let reversed = 5..4;
        assert!(PacketBuf::new(&mut raw, reversed).is_err());
        assert!(PacketBuf::new(&mut raw, 0..17).is_err());
    }
}
