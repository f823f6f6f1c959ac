//! `InvitationToken`: the binary form from arbitrary bytes, the text form from arbitrary UTF-8.
//! Whatever decodes must re-encode to the same bytes and decode again to the same token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use x0_wire::InvitationToken;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = InvitationToken::decode(data) {
        let bytes = token.encode();
        assert_eq!(bytes, data, "binary form is canonical");
        assert_eq!(InvitationToken::decode(&bytes).as_ref(), Ok(&token));
        assert_eq!(InvitationToken::from_text(&token.to_text()), Ok(token));
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(token) = InvitationToken::from_text(text)
    {
        let again = token.to_text();
        assert_eq!(again, text.trim(), "text form is canonical");
        assert_eq!(InvitationToken::from_text(&again).as_ref(), Ok(&token));
        assert_eq!(InvitationToken::decode(&token.encode()), Ok(token));
    }
});
