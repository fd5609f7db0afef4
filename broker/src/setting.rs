//! The value types settings are written in (durations, budget periods) and
//! what a section's validation finds. A leaf: each configuration section,
//! and each minter for its own grant settings, uses them.

use std::time::Duration;

use mintguard_policy::budget::Refill;
use serde::Deserialize;

/// What a section's `validate()` found: the key, as the file spells it,
/// and why. [`Config::parse`] adds the file.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The key (`grants[2].max_ttl`).
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl Invalid {
    /// A finding at `key`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Durations such as `"15m"`, `"1h"`, `"7d"`, `"90s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration like \"15m\" or \"1h\": {e}"
            ))
        })
    }
}

/// `per = "1h"` or `per = "never"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Per(pub Refill);

impl<'de> Deserialize<'de> for Per {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "never" {
            return Ok(Per(Refill::Never));
        }
        let d = humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is neither \"never\" nor a duration: {e}"))
        })?;
        Ok(Per(Refill::Every {
            seconds: d.as_secs(),
        }))
    }
}
