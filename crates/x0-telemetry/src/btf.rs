//! A minimal reader for the kernel's BTF type information: just enough to list the
//! enumerators of one named enum (`enum skb_drop_reason`).
//!
//! aya parses BTF too, but keeps its type table private; this reader walks the type section
//! itself. BTF is a header, a type section of variable-length records and a string table
//! (<https://docs.kernel.org/bpf/btf.html>). Every read is bounds-checked: a truncated or
//! garbled file gives an error, never a panic.

/// One enumerator: its name and value (two's complement for signed enums).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Enumerator {
    /// The enumerator's name as the kernel spells it (`SKB_DROP_REASON_NO_SOCKET`).
    pub name: String,
    /// Its value.
    pub value: u64,
}

/// Why a BTF blob could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BtfReadError {
    /// The blob does not start with the BTF magic number.
    #[error("not BTF (bad magic number)")]
    BadMagic,
    /// A header, type record or string runs past the end of its section.
    #[error("BTF truncated at byte {offset}")]
    Truncated {
        /// Where the read went past the end.
        offset: usize,
    },
    /// A type kind this reader does not know, so it cannot skip the record.
    #[error("unknown BTF type kind {kind} at byte {offset}")]
    UnknownKind {
        /// The kind number.
        kind: u32,
        /// Where the record starts.
        offset: usize,
    },
    /// A name is not valid UTF-8.
    #[error("BTF string at offset {offset} is not UTF-8")]
    BadString {
        /// Offset in the string section.
        offset: u32,
    },
}

const MAGIC: u16 = 0xeb9f;
const KIND_ENUM: u32 = 6;
const KIND_ENUM64: u32 = 19;

struct Reader<'a> {
    data: &'a [u8],
    big_endian: bool,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, at: usize) -> Result<[u8; N], BtfReadError> {
        at.checked_add(N)
            .and_then(|end| self.data.get(at..end))
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or(BtfReadError::Truncated { offset: at })
    }

    fn u32(&self, at: usize) -> Result<u32, BtfReadError> {
        let b = self.bytes::<4>(at)?;
        Ok(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
}

/// Size of the data that follows a type record's 12-byte head, by kind.
fn trailing_len(kind: u32, vlen: usize, offset: usize) -> Result<usize, BtfReadError> {
    Ok(match kind {
        // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        // INT, VAR, DECL_TAG
        1 | 14 | 17 => 4,
        // ARRAY
        3 => 12,
        // STRUCT, UNION, DATASEC: 12 bytes per member / variable
        4 | 5 | 15 => 12 * vlen,
        // ENUM, FUNC_PROTO: 8 bytes per enumerator / parameter
        6 | 13 => 8 * vlen,
        // ENUM64: 12 bytes per enumerator
        19 => 12 * vlen,
        _ => return Err(BtfReadError::UnknownKind { kind, offset }),
    })
}

/// The enumerators of the first enum (or enum64) named `name` in a BTF blob such as
/// `/sys/kernel/btf/vmlinux`; `Ok(None)` when there is no such enum.
pub(crate) fn enum_values(
    data: &[u8],
    name: &str,
) -> Result<Option<Vec<Enumerator>>, BtfReadError> {
    let magic = data
        .get(0..2)
        .ok_or(BtfReadError::Truncated { offset: 0 })?;
    let big_endian = match [magic[0], magic[1]] {
        m if u16::from_le_bytes(m) == MAGIC => false,
        m if u16::from_be_bytes(m) == MAGIC => true,
        _ => return Err(BtfReadError::BadMagic),
    };
    let header = Reader { data, big_endian };
    let hdr_len = header.u32(4)? as usize;
    let type_off = header.u32(8)? as usize;
    let type_len = header.u32(12)? as usize;
    let str_off = header.u32(16)? as usize;
    let str_len = header.u32(20)? as usize;
    let section = |off: usize, len: usize| {
        let start = hdr_len.checked_add(off);
        let end = start.and_then(|s| s.checked_add(len));
        match (start, end) {
            (Some(s), Some(e)) => data.get(s..e).ok_or(BtfReadError::Truncated { offset: s }),
            _ => Err(BtfReadError::Truncated { offset: hdr_len }),
        }
    };
    let types = Reader {
        data: section(type_off, type_len)?,
        big_endian,
    };
    let strings = section(str_off, str_len)?;
    let string_at = |offset: u32| -> Result<&str, BtfReadError> {
        let tail = strings
            .get(offset as usize..)
            .ok_or(BtfReadError::Truncated {
                offset: offset as usize,
            })?;
        let end = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or(BtfReadError::Truncated {
                offset: offset as usize,
            })?;
        std::str::from_utf8(&tail[..end]).map_err(|_| BtfReadError::BadString { offset })
    };

    let mut at = 0;
    while at < types.data.len() {
        let name_off = types.u32(at)?;
        let info = types.u32(at + 4)?;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let signed = info >> 31 == 1;
        let body = at + 12;
        let next = body + trailing_len(kind, vlen, at)?;
        if next > types.data.len() {
            return Err(BtfReadError::Truncated { offset: at });
        }
        if (kind == KIND_ENUM || kind == KIND_ENUM64) && string_at(name_off)? == name {
            let step = if kind == KIND_ENUM { 8 } else { 12 };
            let mut values = Vec::with_capacity(vlen);
            for i in 0..vlen {
                let rec = body + i * step;
                let lo = types.u32(rec + 4)?;
                let value = if kind == KIND_ENUM64 {
                    u64::from(types.u32(rec + 8)?) << 32 | u64::from(lo)
                } else if signed {
                    i64::from(lo as i32) as u64
                } else {
                    u64::from(lo)
                };
                values.push(Enumerator {
                    name: string_at(types.u32(rec)?)?.to_owned(),
                    value,
                });
            }
            return Ok(Some(values));
        }
        at = next;
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a little-endian BTF blob from (name, info, size_or_type, trailing) records.
    pub(crate) struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
    }

    impl BtfBuilder {
        pub(crate) fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
            }
        }

        pub(crate) fn string(&mut self, s: &str) -> u32 {
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn head(&mut self, name: &str, kind: u32, vlen: u32, signed: bool, size: u32) {
            let name = if name.is_empty() {
                0
            } else {
                self.string(name)
            };
            let info = (kind << 24) | vlen | (u32::from(signed) << 31);
            for v in [name, info, size] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
        }

        pub(crate) fn int(&mut self, name: &str) -> &mut Self {
            self.head(name, 1, 0, false, 4);
            self.types.extend_from_slice(&32u32.to_le_bytes());
            self
        }

        pub(crate) fn structure(&mut self, name: &str, members: &[&str]) -> &mut Self {
            self.head(name, 4, members.len() as u32, false, 8);
            for m in members {
                let off = self.string(m);
                for v in [off, 1, 0] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            self
        }

        pub(crate) fn enumeration(
            &mut self,
            name: &str,
            signed: bool,
            values: &[(&str, i32)],
        ) -> &mut Self {
            self.head(name, KIND_ENUM, values.len() as u32, signed, 4);
            for (n, v) in values {
                let off = self.string(n);
                self.types.extend_from_slice(&off.to_le_bytes());
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            self
        }

        pub(crate) fn enum64(&mut self, name: &str, values: &[(&str, u64)]) -> &mut Self {
            self.head(name, KIND_ENUM64, values.len() as u32, false, 8);
            for (n, v) in values {
                let off = self.string(n);
                self.types.extend_from_slice(&off.to_le_bytes());
                self.types.extend_from_slice(&(*v as u32).to_le_bytes());
                self.types
                    .extend_from_slice(&((*v >> 32) as u32).to_le_bytes());
            }
            self
        }

        pub(crate) fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for v in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&u32::to_le_bytes(v));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn sample_blob() -> Vec<u8> {
        BtfBuilder::new()
            .int("int")
            .structure("sock", &["sk_protocol", "sk_type"])
            .enumeration("other", false, &[("A", 1)])
            .enumeration(
                "skb_drop_reason",
                false,
                &[("SKB_NOT_DROPPED_YET", 0), ("SKB_DROP_REASON_NO_SOCKET", 3)],
            )
            .enumeration("signed_enum", true, &[("MINUS_ONE", -1)])
            .enum64("wide", &[("BIG", 1 << 40)])
            .build()
    }

    #[test]
    fn finds_the_named_enum_after_other_kinds() {
        let blob = sample_blob();
        let values = enum_values(&blob, "skb_drop_reason").unwrap().unwrap();
        assert_eq!(
            values,
            vec![
                Enumerator {
                    name: "SKB_NOT_DROPPED_YET".into(),
                    value: 0
                },
                Enumerator {
                    name: "SKB_DROP_REASON_NO_SOCKET".into(),
                    value: 3
                },
            ]
        );
        assert_eq!(enum_values(&blob, "missing").unwrap(), None);
        // A struct of that name is not an enum.
        assert_eq!(enum_values(&blob, "sock").unwrap(), None);
    }

    #[test]
    fn signed_and_64_bit_enums() {
        let blob = sample_blob();
        let signed = enum_values(&blob, "signed_enum").unwrap().unwrap();
        assert_eq!(signed[0].value, u64::MAX);
        let wide = enum_values(&blob, "wide").unwrap().unwrap();
        assert_eq!(wide[0].value, 1 << 40);
    }

    #[test]
    fn big_endian_blob_is_read() {
        // The same one-enum blob, every u32 written big-endian.
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_be_bytes());
        out.extend_from_slice(&[1, 0]);
        let strings = b"\0e\0X\0";
        let mut types = Vec::new();
        for v in [1u32, (KIND_ENUM << 24) | 1, 4, 3, 7] {
            types.extend_from_slice(&v.to_be_bytes());
        }
        for v in [24u32, 0, types.len() as u32, types.len() as u32, 5] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        let values = enum_values(&out, "e").unwrap().unwrap();
        assert_eq!(
            values,
            vec![Enumerator {
                name: "X".into(),
                value: 7
            }]
        );
    }

    #[test]
    fn damaged_blobs_are_errors() {
        assert_eq!(
            enum_values(&[], "x"),
            Err(BtfReadError::Truncated { offset: 0 })
        );
        assert_eq!(enum_values(&[0; 32], "x"), Err(BtfReadError::BadMagic));
        let blob = sample_blob();
        for cut in [4, 23, 30, 60, blob.len() - 3] {
            assert!(enum_values(&blob[..cut], "wide").is_err(), "cut at {cut}");
        }
        // An unknown kind cannot be skipped.
        let mut bad = sample_blob();
        bad[24 + 7] = 31; // first record's kind byte (info's top byte, little-endian)
        assert!(matches!(
            enum_values(&bad, "wide"),
            Err(BtfReadError::UnknownKind { kind: 31, .. })
        ));
    }

    #[test]
    fn the_running_kernel_has_skb_drop_reason() {
        let Ok(blob) = std::fs::read(crate::KERNEL_BTF_PATH) else {
            eprintln!("SKIPPED: {} not readable", crate::KERNEL_BTF_PATH);
            return;
        };
        let values = enum_values(&blob, "skb_drop_reason").unwrap().unwrap();
        let find = |n: &str| values.iter().find(|e| e.name == n).map(|e| e.value);
        assert_eq!(find("SKB_NOT_DROPPED_YET"), Some(0));
        assert!(find("SKB_DROP_REASON_NO_SOCKET").is_some());
        assert!(find("SKB_DROP_REASON_NETFILTER_DROP").is_some());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = enum_values(&data, "skb_drop_reason");
        }

        #[test]
        fn never_panics_on_a_damaged_valid_blob(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
        ) {
            let mut blob = sample_blob();
            for (index, byte) in flips {
                let i = index.index(blob.len());
                blob[i] = byte;
            }
            let _ = enum_values(&blob, "wide");
        }
    }
}
