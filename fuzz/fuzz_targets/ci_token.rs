//! A CI runner's bearer token before its signature is checked: any input
//! is refused with a reason code or parsed within the limits, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mintguard_broker::ci::verify::Unverified;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    match Unverified::parse(token) {
        Ok(parsed) => {
            assert!(parsed.claims.is_object());
            assert!(!parsed.kid.is_empty() && parsed.kid.len() <= 128);
        }
        Err(e) => assert!(!e.code.is_empty()),
    }
});
