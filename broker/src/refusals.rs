//! Refusals of callers who proved nothing — a CI token that does not
//! verify, a request head too large for the HTTP layer, a connection over a
//! listener's cap — counted per window and written as **one record per
//! window** (counts by listener and reason, and the first few as samples),
//! not one fsync'd chained record each. A flood then costs a counter, not
//! the disk every issuance needs, and still leaves its trace in the log and
//! in `mintguard_unauthenticated_refusals_total{listener,reason}`.
//!
//! The window's record is a refusal before any decision (`ci.refused =
//! "unauthenticated"`), so every reader of decision records reads it. A
//! broker that stops loses at most the window it was counting (refusals
//! issue nothing, so no credential is without its record).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::{Value, json};

/// Samples kept per window (the rest are counted only).
pub const MAX_SAMPLES: usize = 8;

/// One refusal, as a sample.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// The id the caller was given.
    pub request_id: String,
    /// When, ms since the epoch.
    pub time_ms: i64,
    /// The client's address.
    pub client: String,
    /// Why.
    pub reason: &'static str,
    /// What it said, cut short.
    pub message: String,
}

#[derive(Debug, Default)]
struct Window {
    since_ms: i64,
    counts: BTreeMap<(&'static str, &'static str), u64>,
    samples: Vec<Sample>,
}

/// The current window's counts.
#[derive(Debug, Default)]
pub struct RefusalTally {
    window: Mutex<Window>,
}

impl RefusalTally {
    /// Counts a refusal on `listener` for `reason`; `sample` is built only
    /// while the window still takes samples.
    pub fn count(
        &self,
        listener: &'static str,
        reason: &'static str,
        now_ms: i64,
        sample: impl FnOnce() -> Sample,
    ) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        if w.counts.is_empty() {
            w.since_ms = now_ms;
        }
        *w.counts.entry((listener, reason)).or_default() += 1;
        if w.samples.len() < MAX_SAMPLES {
            w.samples.push(sample());
        }
    }

    /// The window so far as a record body (`None` if nothing was refused),
    /// and a fresh window.
    pub fn take(&self, now_ms: i64) -> Option<TakenWindow> {
        let mut w = self.window.lock().ok()?;
        if w.counts.is_empty() {
            return None;
        }
        Some(TakenWindow {
            window: std::mem::take(&mut *w),
            until_ms: now_ms,
        })
    }

    /// Puts back a window whose record could not be written, so its counts
    /// go into the next one.
    pub fn restore(&self, taken: TakenWindow) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        let mut old = taken.window;
        w.since_ms = if w.counts.is_empty() {
            old.since_ms
        } else {
            w.since_ms.min(old.since_ms)
        };
        for (key, n) in std::mem::take(&mut old.counts) {
            *w.counts.entry(key).or_default() += n;
        }
        let room = MAX_SAMPLES.saturating_sub(w.samples.len());
        w.samples.extend(old.samples.into_iter().take(room));
    }
}

/// A window taken for writing.
#[derive(Debug)]
pub struct TakenWindow {
    window: Window,
    until_ms: i64,
}

impl TakenWindow {
    /// Refusals in it.
    pub fn total(&self) -> u64 {
        self.window.counts.values().sum()
    }

    /// The record body: a refusal before any decision, with the counts.
    pub fn body(&self) -> Value {
        let counts: Vec<Value> = self
            .window
            .counts
            .iter()
            .map(|((listener, reason), n)| {
                json!({"listener": listener, "reason": reason, "count": n})
            })
            .collect();
        json!({"ci": {
            "refused": "unauthenticated",
            "message": format!("{} refusals of unauthenticated callers", self.total()),
            "detail": {
                "since_ms": self.window.since_ms,
                "until_ms": self.until_ms,
                "counts": counts,
                "samples": self.window.samples,
            },
        }})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: i64) -> Sample {
        Sample {
            request_id: format!("req-{n}"),
            time_ms: n,
            client: "192.0.2.1".into(),
            reason: "bad_signature",
            message: "m".into(),
        }
    }

    #[test]
    fn counts_everything_samples_a_few_and_puts_back_what_was_not_written() {
        let tally = RefusalTally::default();
        assert!(tally.take(0).is_none());
        for n in 0..20 {
            tally.count("public", "bad_signature", 100 + n, || sample(n));
        }
        tally.count("public", "header_too_large", 200, || sample(99));
        let taken = tally.take(300).unwrap();
        assert_eq!(taken.total(), 21);
        let body = taken.body();
        let detail = &body["ci"]["detail"];
        assert_eq!(detail["since_ms"], 100);
        assert_eq!(detail["samples"].as_array().unwrap().len(), MAX_SAMPLES);
        assert_eq!(
            detail["counts"],
            json!([
                {"listener": "public", "reason": "bad_signature", "count": 20},
                {"listener": "public", "reason": "header_too_large", "count": 1},
            ])
        );
        assert!(tally.take(301).is_none(), "a fresh window");
        tally.count("public", "bad_signature", 400, || sample(1));
        tally.restore(taken);
        let again = tally.take(500).unwrap();
        assert_eq!(again.total(), 22);
        assert_eq!(again.body()["ci"]["detail"]["since_ms"], 100);
    }
}
