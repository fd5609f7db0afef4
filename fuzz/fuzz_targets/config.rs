//! Broker configuration loading: any TOML either loads or is refused with
//! the key and the reason, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) =
        mintguard_broker::config::Config::parse(std::path::Path::new("/fuzz/broker.toml"), text)
    {
        assert!(!e.reason.is_empty());
    }
});
