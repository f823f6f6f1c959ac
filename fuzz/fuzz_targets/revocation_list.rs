//! `SignedRevocationList::decode` (and the bare `RevocationList::decode`) on arbitrary bytes.
//! Whatever decodes must re-encode to the same bytes and decode again to the same list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x0_wire::{RevocationList, SignedRevocationList};

fuzz_target!(|data: &[u8]| {
    if let Ok((signed, list)) = SignedRevocationList::decode(data) {
        let bytes = signed.encode();
        assert_eq!(bytes, data, "container encoding is canonical");
        assert_eq!(list.encode(), signed.body, "body encoding is canonical");
        assert!(
            list.revoked.windows(2).all(|w| w[0] < w[1]),
            "sorted, unique"
        );
        let (signed2, list2) = SignedRevocationList::decode(&bytes).expect("re-encoded decodes");
        assert_eq!(signed2, signed);
        assert_eq!(list2, list);
    }
    if let Ok(list) = RevocationList::decode(data) {
        let bytes = list.encode();
        assert_eq!(bytes, data, "body encoding is canonical");
        assert_eq!(RevocationList::decode(&bytes), Ok(list));
    }
});
