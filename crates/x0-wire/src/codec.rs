//! Checked big-endian readers and writers shared by every wire format.

use thiserror::Error;

/// Why bytes could not be decoded. Every decoder in this crate returns it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before `field` was complete.
    #[error("truncated input: {field} needs {needed} more bytes")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// Bytes missing.
        needed: usize,
    },
    /// Bytes were left after the last field.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A length-prefixed field is longer than its format allows.
    #[error("{field} is {len} bytes, more than the allowed {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its declared length.
        len: usize,
        /// The largest allowed.
        max: usize,
    },
    /// A message type or enum tag this version does not know.
    #[error("unknown {field} tag {tag}")]
    UnknownTag {
        /// The field.
        field: &'static str,
        /// The tag read.
        tag: u64,
    },
    /// A format version this build does not speak.
    #[error("unsupported {what} version {version}")]
    UnsupportedVersion {
        /// What carried the version.
        what: &'static str,
        /// The version read.
        version: u8,
    },
    /// A text field that is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A field whose value is outside its domain.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A cursor over untrusted bytes. Every accessor checks the length first.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Reads from `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes exactly `n` bytes.
    pub fn bytes(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    /// Reads a `u8`.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Reads a big-endian `u16`.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u32`.
    pub fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Reads a big-endian `u64`.
    pub fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// Reads bytes prefixed by a `u8` length.
    pub fn bytes_u8(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u8(field)?);
        self.bytes(len, field)
    }

    /// Reads bytes prefixed by a `u16` length, refusing more than `max`.
    pub fn bytes_u16(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16(field)?);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.bytes(len, field)
    }

    /// Reads bytes prefixed by a `u32` length, refusing more than `max`.
    pub fn bytes_u32(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.u32(field)?).unwrap_or(usize::MAX);
        if len > max {
            return Err(DecodeError::TooLong { field, len, max });
        }
        self.bytes(len, field)
    }

    /// Reads a UTF-8 string prefixed by a `u8` length.
    pub fn str_u8(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes_u8(field)?).map_err(|_| DecodeError::InvalidUtf8(field))
    }

    /// Reads a UTF-8 string prefixed by a `u16` length, refusing more than `max` bytes.
    pub fn str_u16(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.bytes_u16(field, max)?)
            .map_err(|_| DecodeError::InvalidUtf8(field))
    }

    /// Fails unless every byte was consumed.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

/// Big-endian writer. Length-prefixed writers saturate nothing: callers encode only values their
/// own types already bounded, and the `debug_assert`s catch a violation in tests.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }

    /// The bytes written.
    pub fn into_inner(self) -> Vec<u8> {
        self.buf
    }

    /// Appends raw bytes.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    /// Appends a `u8`.
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    /// Appends a big-endian `u16`.
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Appends a big-endian `u32`.
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Appends a big-endian `u64`.
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_be_bytes())
    }

    /// Appends bytes with a `u8` length prefix (at most 255 bytes).
    pub fn bytes_u8(&mut self, b: &[u8]) -> &mut Self {
        debug_assert!(b.len() <= usize::from(u8::MAX));
        self.u8(u8::try_from(b.len()).unwrap_or(u8::MAX));
        self.bytes(&b[..b.len().min(usize::from(u8::MAX))])
    }

    /// Appends bytes with a `u16` length prefix (at most 65,535 bytes).
    pub fn bytes_u16(&mut self, b: &[u8]) -> &mut Self {
        debug_assert!(b.len() <= usize::from(u16::MAX));
        self.u16(u16::try_from(b.len()).unwrap_or(u16::MAX));
        self.bytes(&b[..b.len().min(usize::from(u16::MAX))])
    }

    /// Appends bytes with a `u32` length prefix.
    pub fn bytes_u32(&mut self, b: &[u8]) -> &mut Self {
        let len = u32::try_from(b.len()).unwrap_or(u32::MAX);
        self.u32(len);
        self.bytes(&b[..len as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reader_reports_truncation_with_field_name() {
        let mut r = Reader::new(&[1, 2]);
        assert_eq!(
            r.u32("length"),
            Err(DecodeError::Truncated {
                field: "length",
                needed: 2
            })
        );
    }

    #[test]
    fn reader_refuses_overlong_prefix_before_reading() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            r.bytes_u32("blob", 16),
            Err(DecodeError::TooLong {
                len: 0xffff_ffff,
                ..
            })
        ));
    }

    #[test]
    fn writer_and_reader_agree() {
        let mut w = Writer::new();
        w.u8(7)
            .u16(300)
            .u32(70_000)
            .u64(1 << 40)
            .bytes_u8(b"ab")
            .bytes_u16(b"cde");
        let bytes = w.into_inner();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a").unwrap(), 7);
        assert_eq!(r.u16("b").unwrap(), 300);
        assert_eq!(r.u32("c").unwrap(), 70_000);
        assert_eq!(r.u64("d").unwrap(), 1 << 40);
        assert_eq!(r.bytes_u8("e").unwrap(), b"ab");
        assert_eq!(r.bytes_u16("f", 10).unwrap(), b"cde");
        r.finish().unwrap();
    }

    #[test]
    fn finish_rejects_trailing_bytes() {
        let r = Reader::new(&[0]);
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(1)));
    }
}
