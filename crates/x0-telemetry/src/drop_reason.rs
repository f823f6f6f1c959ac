//! Names for the kernel's packet drop reasons (`enum skb_drop_reason`).
//!
//! The numbers are not stable: new reasons are inserted in the middle of the enum from one
//! kernel release to the next. So the names are read at start from the running kernel's BTF,
//! the same source the `tp_btf/kfree_skb` program needs anyway, and never from a table built
//! into this crate. A number the enum does not hold is named `unknown(N)`; a number carrying a
//! subsystem in its upper 16 bits (`SKB_DROP_REASON_SUBSYS_MASK`, e.g. mac80211 or Open
//! vSwitch, whose reason names live in their modules' BTF) is named `SUBSYSTEM(N)`.

use std::collections::HashMap;
use std::fmt;

use crate::btf::{self, BtfReadError};

/// The kernel's enum of drop reasons.
pub(crate) const DROP_REASON_ENUM: &str = "skb_drop_reason";
/// The kernel's enum of drop reason subsystems.
pub(crate) const DROP_REASON_SUBSYS_ENUM: &str = "skb_drop_reason_subsys";

const REASON_PREFIX: &str = "SKB_DROP_REASON_";
const SUBSYS_PREFIX: &str = "SKB_DROP_REASON_SUBSYS_";
const SUBSYS_SHIFT: u32 = 16;

/// A drop reason: the kernel's number and its name without the `SKB_DROP_REASON_` prefix
/// (`NO_SOCKET`, `NETFILTER_DROP`: the names `perf trace`/tracefs print).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DropReason {
    /// The value of `enum skb_drop_reason` on this kernel.
    pub code: u32,
    /// Its name, or `unknown(N)` / `SUBSYSTEM(N)`.
    pub name: String,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// The running kernel's drop reason names, by number.
#[derive(Debug, Clone, Default)]
pub struct DropReasonNames {
    reasons: HashMap<u32, String>,
    subsystems: HashMap<u32, String>,
}

impl DropReasonNames {
    /// Reads both enums from a BTF blob (`/sys/kernel/btf/vmlinux`). A kernel without
    /// `skb_drop_reason` (before 5.17) gives an empty table: every reason is then `unknown(N)`.
    pub fn from_btf(data: &[u8]) -> Result<Self, BtfReadError> {
        let mut names = Self::default();
        for e in btf::enum_values(data, DROP_REASON_ENUM)?.unwrap_or_default() {
            let Ok(code) = u32::try_from(e.value) else {
                continue;
            };
            if let Some(short) = e.name.strip_prefix(REASON_PREFIX)
                && short != "MAX"
                && !short.starts_with("SUBSYS_")
            {
                names.reasons.insert(code, short.to_owned());
            }
        }
        for e in btf::enum_values(data, DROP_REASON_SUBSYS_ENUM)?.unwrap_or_default() {
            let (Ok(code), Some(short)) =
                (u32::try_from(e.value), e.name.strip_prefix(SUBSYS_PREFIX))
            else {
                continue;
            };
            if code != 0 && short != "NUM" {
                names.subsystems.insert(code, short.to_owned());
            }
        }
        Ok(names)
    }

    /// How many reasons the table names.
    pub fn len(&self) -> usize {
        self.reasons.len()
    }

    /// True when the kernel named no reason.
    pub fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The reason for a number as `kfree_skb` reports it.
    pub fn reason(&self, code: u32) -> DropReason {
        let name = match self.reasons.get(&code) {
            Some(name) => name.clone(),
            None => {
                let subsystem = code >> SUBSYS_SHIFT;
                match self.subsystems.get(&subsystem) {
                    Some(s) => format!("{s}({})", code & 0xffff),
                    None => format!("unknown({code})"),
                }
            }
        };
        DropReason { code, name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::BtfBuilder;

    fn table() -> DropReasonNames {
        let blob = BtfBuilder::new()
            .enumeration(
                DROP_REASON_ENUM,
                false,
                &[
                    ("SKB_NOT_DROPPED_YET", 0),
                    ("SKB_CONSUMED", 1),
                    ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                    ("SKB_DROP_REASON_NO_SOCKET", 3),
                    ("SKB_DROP_REASON_NETFILTER_DROP", 12),
                    ("SKB_DROP_REASON_MAX", 128),
                    ("SKB_DROP_REASON_SUBSYS_MASK", -65536),
                ],
            )
            .enumeration(
                DROP_REASON_SUBSYS_ENUM,
                false,
                &[
                    ("SKB_DROP_REASON_SUBSYS_CORE", 0),
                    ("SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE", 1),
                    ("SKB_DROP_REASON_SUBSYS_OPENVSWITCH", 3),
                    ("SKB_DROP_REASON_SUBSYS_NUM", 4),
                ],
            )
            .build();
        DropReasonNames::from_btf(&blob).unwrap()
    }

    #[test]
    fn names_lose_their_prefix() {
        let t = table();
        assert_eq!(t.reason(3).name, "NO_SOCKET");
        assert_eq!(t.reason(12).name, "NETFILTER_DROP");
        assert_eq!(t.reason(2).to_string(), "NOT_SPECIFIED");
        assert_eq!(t.reason(3).code, 3);
        // Not drops, and the sentinels, are not reasons.
        assert_eq!(t.len(), 3);
        assert_eq!(t.reason(128).name, "unknown(128)");
    }

    #[test]
    fn unknown_numbers_and_subsystems() {
        let t = table();
        assert_eq!(t.reason(77).name, "unknown(77)");
        assert_eq!(t.reason((3 << 16) | 2).name, "OPENVSWITCH(2)");
        assert_eq!(t.reason((1 << 16) | 5).name, "MAC80211_UNUSABLE(5)");
        assert_eq!(t.reason(9 << 16).name, format!("unknown({})", 9 << 16));
    }

    #[test]
    fn a_kernel_without_the_enum_names_nothing() {
        let blob = BtfBuilder::new().int("int").build();
        let t = DropReasonNames::from_btf(&blob).unwrap();
        assert!(t.is_empty());
        assert_eq!(t.reason(3).name, "unknown(3)");
    }

    #[test]
    fn the_running_kernel_names_its_reasons() {
        let Ok(blob) = std::fs::read(crate::KERNEL_BTF_PATH) else {
            eprintln!("SKIPPED: {} not readable", crate::KERNEL_BTF_PATH);
            return;
        };
        let t = DropReasonNames::from_btf(&blob).unwrap();
        assert!(t.len() > 10, "{t:?}");
        let no_socket = (0..1024)
            .map(|c| t.reason(c))
            .find(|r| r.name == "NO_SOCKET");
        assert!(no_socket.is_some());
    }
}
