//! Whether anomaly analysis is keeping up, which is what makes the
//! `behaviour` signal fresh.
//!
//! The analysis loop beats after every step it completes. A decision reads
//! the beat: within `interval × stale_after_intervals` of the last one (or
//! of the broker's start, before the first), analysis is keeping up and the
//! broker's own `behaviour` value is fresh; past it, analysis is lagging or
//! down, and `behaviour` is recorded with the age of the last beat, so the
//! trust score counts it as expired (unknown), never as a fresh neutral.
//! With analysis switched off in the config, there is no behaviour signal
//! at all (dropped, the other weights renormalized), as for any signal with
//! nothing configured behind it.

use std::sync::atomic::{AtomicI64, Ordering};

/// What a decision may take of anomaly analysis now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Analysis is off (`[anomaly] enabled = false`): no signal.
    Off,
    /// Analysis advanced within its window.
    Fresh,
    /// Analysis has not advanced since `last_ms` (ms since the epoch) for
    /// longer than `window_seconds`.
    Stale {
        /// The last beat (or the broker's start).
        last_ms: i64,
        /// The window it had.
        window_seconds: u64,
    },
}

/// The analysis loop's heartbeat.
#[derive(Debug)]
pub struct AnalysisHealth {
    enabled: bool,
    window_ms: i64,
    last_ms: AtomicI64,
}

impl AnalysisHealth {
    /// A heartbeat that starts at `started_ms` with a window of `window_ms`.
    pub fn new(enabled: bool, window_ms: i64, started_ms: i64) -> Self {
        Self {
            enabled,
            window_ms: window_ms.max(1),
            last_ms: AtomicI64::new(started_ms),
        }
    }

    /// Analysis completed a step at `now_ms`.
    pub fn beat(&self, now_ms: i64) {
        self.last_ms.fetch_max(now_ms, Ordering::Relaxed);
    }

    /// What a decision at `now_ms` may take.
    pub fn behaviour(&self, now_ms: i64) -> Behaviour {
        if !self.enabled {
            return Behaviour::Off;
        }
        let last_ms = self.last_ms.load(Ordering::Relaxed);
        if now_ms - last_ms <= self.window_ms {
            Behaviour::Fresh
        } else {
            Behaviour::Stale {
                last_ms,
                window_seconds: u64::try_from(self.window_ms / 1000).unwrap_or(0),
            }
        }
    }

    /// Milliseconds since the last beat at `now_ms`.
    pub fn age_ms(&self, now_ms: i64) -> i64 {
        now_ms - self.last_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_until_the_window_passes_without_a_beat() {
        let health = AnalysisHealth::new(true, 30_000, 1_000);
        assert_eq!(health.behaviour(31_000), Behaviour::Fresh);
        assert_eq!(
            health.behaviour(31_001),
            Behaviour::Stale {
                last_ms: 1_000,
                window_seconds: 30
            }
        );
        health.beat(31_000);
        assert_eq!(health.behaviour(31_001), Behaviour::Fresh);
        // A beat never moves the clock back.
        health.beat(5);
        assert_eq!(health.age_ms(31_001), 1);
        assert_eq!(
            AnalysisHealth::new(false, 1, 0).behaviour(0),
            Behaviour::Off
        );
    }
}
