//! The one place the binary reads the wall clock for identity decisions.

use std::time::{Duration, UNIX_EPOCH};

use rustls_pki_types::UnixTime;

/// The wall clock now.
pub fn now() -> UnixTime {
    UnixTime::now()
}

/// The wall clock now, Unix seconds.
pub fn now_secs() -> u64 {
    now().as_secs()
}

/// RFC 3339 rendering of a Unix time in seconds.
pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}
