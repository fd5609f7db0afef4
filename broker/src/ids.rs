//! Ids and secrets, at the bottom of the broker: record, lease and approval
//! ids (unique, time-ordered), and secrets (join and operator tokens,
//! instance ids) from the system CSPRNG.
//!
//! The two differ in what a failing RNG means. An id needs uniqueness only,
//! so [`random_id`] falls back to a process counter. A secret needs
//! unpredictability, so [`secret_hex`] fails closed: no RNG, no token.

use std::sync::atomic::{AtomicU64, Ordering};

/// The system RNG failed: no secret can be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the system random number generator failed; no secret was made")]
pub struct RngError;

pub use mintguard_certs::hex;

/// `N` bytes from the system CSPRNG as hex, or [`RngError`] (never a
/// predictable fallback). Join and operator tokens take 32 bytes (256 bits).
pub fn secret_hex<const N: usize>() -> Result<String, RngError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| RngError)?;
    let out = hex(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    Ok(out)
}

/// A secret token with a prefix: `<prefix>-` and 256 random bits (hex).
pub fn secret_token(prefix: &str) -> Result<String, RngError> {
    Ok(format!("{prefix}-{}", secret_hex::<32>()?))
}

/// Whether `s` is a non-empty lowercase-hex string of at most 128 characters.
pub fn is_hex_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A unique id with a prefix: `req-…`, `lease-…` (128 bits, hex): 48 bits
/// of milliseconds, then 80 random bits. Time-ordered like a UUIDv7, so the
/// store's indexes on ids grow at their right edge instead of touching a
/// random page per insert (which multiplied the bytes each commit writes).
/// Not a secret: never use it for a token.
pub fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    let ms = crate::clock::now_ms().to_be_bytes();
    bytes[..6].copy_from_slice(&ms[2..]);
    // The system RNG failing is not recoverable; a counter keeps ids unique
    // within this process (uniqueness, not secrecy, matters here).
    if aws_lc_rs::rand::fill(&mut bytes[6..]).is_err() {
        static FALLBACK: AtomicU64 = AtomicU64::new(0);
        let n = FALLBACK.fetch_add(1, Ordering::Relaxed);
        bytes[8..].copy_from_slice(&n.to_be_bytes());
    }
    format!("{prefix}-{}", hex(&bytes))
}

/// Truncates untrusted input for an error message.
pub fn excerpt(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_256_bits_and_distinct() {
        let a = secret_token("jt").unwrap();
        let b = secret_token("jt").unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), "jt-".len() + 64);
        assert!(is_hex_id(a.trim_start_matches("jt-")));
        assert!(!is_hex_id("../x"));
        assert!(!is_hex_id(""));
    }
}
