//! Budget math ("gas"): a token bucket with continuous refill and operator
//! top-ups, and the cost of one issuance. Pure functions over a snapshot; the
//! broker's store spends atomically (a conditional update) with the decision's
//! log record.
//!
//! Amounts are kept in **millitokens** (`i64`) so that refill, comparison and
//! spending are exact integer arithmetic the store can repeat in SQL:
//!
//! ```text
//! refill    = floor(elapsed_ms × amount × 1000 / per_ms)           (0 when per = never)
//! available = balance                                      if balance ≥ capacity (top-ups above it are kept)
//!           = min(capacity, balance + refill)              otherwise
//! cost      = base + per_5min × ceil(ttl / 300 s) + round_half_up(eci_factor × min(ECI, 100) / 100)   tokens
//! ```
//!
//! Flooring the refill at each update loses at most one millitoken per update:
//! the bucket errs on the side of refusing.

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;

/// Millitokens per token.
pub const MILLI: i64 = 1000;

/// How a budget refills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refill {
    /// Refills `amount` tokens every this many seconds, continuously.
    Every {
        /// The period, in seconds (> 0).
        seconds: u64,
    },
    /// Never refills: operator top-ups only.
    Never,
}

/// A budget's configuration (`budget = { amount, per, base, per_5min, eci_factor }`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetPolicy {
    /// Capacity, in tokens; also the refill amount per period.
    pub amount: u64,
    /// The refill period.
    pub per: Refill,
    /// Fixed cost of one issuance, in tokens. Default 1.
    #[serde(default = "one")]
    pub base: u64,
    /// Cost per started five minutes of TTL. Default 0.
    #[serde(default)]
    pub per_5min: u64,
    /// Cost per 100 points of effective ECI (capped at 100), rounded half-up. Default 0.
    #[serde(default)]
    pub eci_factor: f64,
}

fn one() -> u64 {
    1
}

/// The largest budget capacity accepted, in tokens.
pub const MAX_BUDGET_AMOUNT: u64 = 1_000_000;

/// The longest refill period accepted, in seconds (31 days; longer budgets use
/// `per = "never"` and top-ups). With [`MAX_BUDGET_AMOUNT`] this keeps
/// `elapsed_ms × capacity_milli` inside `i64`, so stores compute the refill in
/// SQL integers exactly as [`BudgetSnapshot::available`] does.
pub const MAX_REFILL_SECONDS: u64 = 31 * 24 * 3600;

impl BudgetPolicy {
    /// Checks the configuration.
    pub fn validate(&self, key: &str) -> Result<(), PolicyError> {
        let bad = |reason: String| PolicyError::Config {
            key: key.to_owned(),
            reason,
        };
        if self.amount == 0 || self.amount > MAX_BUDGET_AMOUNT {
            return Err(bad(format!(
                "amount must be 1..={MAX_BUDGET_AMOUNT}, got {}",
                self.amount
            )));
        }
        if let Refill::Every { seconds } = self.per
            && (seconds == 0 || seconds > MAX_REFILL_SECONDS)
        {
            return Err(bad(format!(
                "per must be 1 s..=31 days or \"never\", got {seconds} s"
            )));
        }
        if self.base > MAX_BUDGET_AMOUNT || self.per_5min > MAX_BUDGET_AMOUNT {
            return Err(bad(
                "base and per_5min must be at most the largest amount".into()
            ));
        }
        if !self.eci_factor.is_finite() || self.eci_factor < 0.0 || self.eci_factor > 1e6 {
            return Err(bad(format!(
                "eci_factor must be a finite number 0..=1e6, got {}",
                self.eci_factor
            )));
        }
        Ok(())
    }

    /// Capacity in millitokens.
    pub fn capacity_milli(&self) -> i64 {
        i64::try_from(self.amount).unwrap_or(i64::MAX / MILLI) * MILLI
    }

    /// The cost of one issuance with TTL `ttl_seconds` for an identity of
    /// effective ECI `eci` (capped at 100 here), in tokens.
    pub fn cost(&self, ttl_seconds: u64, eci: f64) -> u64 {
        let blocks = ttl_seconds.div_ceil(300);
        let eci = if eci.is_finite() {
            eci.clamp(0.0, 100.0)
        } else {
            100.0
        };
        let eci_term = (self.eci_factor * eci / 100.0 + 0.5).floor();
        // eci_term ≤ 1e6 by validation; the cast cannot truncate.
        let eci_term = eci_term as u64;
        self.base
            .saturating_add(self.per_5min.saturating_mul(blocks))
            .saturating_add(eci_term)
    }
}

/// A bucket's stored state: the balance at `updated_at_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSnapshot {
    /// Balance in millitokens at `updated_at_ms` (≥ 0; may exceed capacity after a top-up).
    pub balance_milli: i64,
    /// When the balance was last updated, milliseconds since the Unix epoch.
    pub updated_at_ms: i64,
}

impl BudgetSnapshot {
    /// A full bucket at `now_ms`.
    pub fn full(policy: &BudgetPolicy, now_ms: i64) -> Self {
        Self {
            balance_milli: policy.capacity_milli(),
            updated_at_ms: now_ms,
        }
    }

    /// What is available at `now_ms`, in millitokens: never negative, and never
    /// above capacity through refill (top-ups above capacity are kept).
    pub fn available(&self, policy: &BudgetPolicy, now_ms: i64) -> i64 {
        let capacity = policy.capacity_milli();
        let balance = self.balance_milli.max(0);
        if balance >= capacity {
            return balance;
        }
        let refill = match policy.per {
            Refill::Never => 0,
            Refill::Every { seconds } => {
                // A clock that went backwards refills nothing; a full period
                // or more refills everything (clamping keeps the product small).
                let per_ms = i128::from(seconds) * 1000;
                let elapsed =
                    i128::from(now_ms.saturating_sub(self.updated_at_ms).max(0)).min(per_ms);
                let refill = elapsed * i128::from(policy.capacity_milli()) / per_ms;
                i64::try_from(refill).unwrap_or(i64::MAX)
            }
        };
        balance.saturating_add(refill).min(capacity)
    }

    /// The snapshot after spending `cost` tokens at `now_ms`, or `None` when
    /// the bucket cannot pay (it is then left as it was).
    pub fn spend(&self, policy: &BudgetPolicy, now_ms: i64, cost: u64) -> Option<Self> {
        let cost_milli = i64::try_from(cost).ok()?.checked_mul(MILLI)?;
        let available = self.available(policy, now_ms);
        (available >= cost_milli).then(|| Self {
            balance_milli: available - cost_milli,
            updated_at_ms: now_ms.max(self.updated_at_ms),
        })
    }

    /// The snapshot after an operator top-up of `tokens` at `now_ms`.
    pub fn top_up(&self, policy: &BudgetPolicy, now_ms: i64, tokens: u64) -> Self {
        let add = i64::try_from(tokens)
            .unwrap_or(i64::MAX / MILLI)
            .saturating_mul(MILLI);
        Self {
            balance_milli: self.available(policy, now_ms).saturating_add(add),
            updated_at_ms: now_ms.max(self.updated_at_ms),
        }
    }

    /// The snapshot after refunding `cost` tokens (a mint that failed after
    /// the spend). A refund does not push a balance within capacity above it;
    /// a balance already above capacity (a top-up) gets the refund in full.
    pub fn refund(&self, policy: &BudgetPolicy, now_ms: i64, cost: u64) -> Self {
        let add = i64::try_from(cost)
            .unwrap_or(i64::MAX / MILLI)
            .saturating_mul(MILLI);
        let available = self.available(policy, now_ms);
        let capacity = policy.capacity_milli();
        let balance = if available > capacity {
            available.saturating_add(add)
        } else {
            available.saturating_add(add).min(capacity)
        };
        Self {
            balance_milli: balance,
            updated_at_ms: now_ms.max(self.updated_at_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hourly(amount: u64) -> BudgetPolicy {
        BudgetPolicy {
            amount,
            per: Refill::Every { seconds: 3600 },
            base: 1,
            per_5min: 0,
            eci_factor: 0.0,
        }
    }

    #[test]
    fn cost_formula() {
        let policy = BudgetPolicy {
            base: 1,
            per_5min: 2,
            eci_factor: 2.0,
            ..hourly(20)
        };
        // 1 + 2 × ceil(301/300) + round(2 × 57.3 / 100 = 1.146) = 1 + 4 + 1.
        assert_eq!(policy.cost(301, 57.3), 6);
        // ECI capped at 100: 2 × 100 / 100 = 2.
        assert_eq!(policy.cost(300, 250.0), 1 + 2 + 2);
        // Half-up: 2 × 75 / 100 = 1.5 → 2.
        assert_eq!(policy.cost(0, 75.0), 1 + 2);
        assert_eq!(hourly(1).cost(900, 100.0), 1);
    }

    #[test]
    fn refill_is_continuous_and_capped() {
        let policy = hourly(20);
        let empty = BudgetSnapshot {
            balance_milli: 0,
            updated_at_ms: 0,
        };
        assert_eq!(empty.available(&policy, 0), 0);
        // A quarter hour refills a quarter of 20 tokens.
        assert_eq!(empty.available(&policy, 900_000), 5 * MILLI);
        assert_eq!(empty.available(&policy, 10 * 3_600_000), 20 * MILLI);
        // A clock going backwards refills nothing.
        let later = BudgetSnapshot {
            balance_milli: 0,
            updated_at_ms: 1_000_000,
        };
        assert_eq!(later.available(&policy, 0), 0);
    }

    #[test]
    fn never_refills_and_top_ups_may_exceed_capacity() {
        let policy = BudgetPolicy {
            per: Refill::Never,
            ..hourly(2)
        };
        let s = BudgetSnapshot::full(&policy, 0);
        let s = s.spend(&policy, 1, 1).unwrap();
        let s = s.spend(&policy, 2, 1).unwrap();
        assert!(s.spend(&policy, 10_000_000, 1).is_none());
        let s = s.top_up(&policy, 3, 5);
        assert_eq!(s.available(&policy, 4), 5 * MILLI);
        let s = s.refund(&policy, 5, 3);
        assert_eq!(
            s.available(&policy, 5),
            8 * MILLI,
            "refund on top of a top-up keeps it"
        );
    }

    #[test]
    fn refund_never_exceeds_capacity() {
        let policy = hourly(2);
        let s = BudgetSnapshot::full(&policy, 0).refund(&policy, 0, 5);
        assert_eq!(s.available(&policy, 0), 2 * MILLI);
    }

    #[test]
    fn validation() {
        assert!(hourly(0).validate("b").is_err());
        assert!(
            BudgetPolicy {
                per: Refill::Every { seconds: 0 },
                ..hourly(1)
            }
            .validate("b")
            .is_err()
        );
        assert!(
            BudgetPolicy {
                eci_factor: f64::NAN,
                ..hourly(1)
            }
            .validate("b")
            .is_err()
        );
        assert!(hourly(1).validate("b").is_ok());
    }

    fn arb_policy() -> impl Strategy<Value = BudgetPolicy> {
        (
            1u64..1000,
            prop_oneof![
                Just(Refill::Never),
                (1u64..100_000).prop_map(|seconds| Refill::Every { seconds })
            ],
        )
            .prop_map(|(amount, per)| BudgetPolicy {
                amount,
                per,
                base: 1,
                per_5min: 0,
                eci_factor: 0.0,
            })
    }

    #[derive(Clone, Debug)]
    enum Op {
        Spend(u64),
        TopUp(u64),
        Refund(u64),
    }

    proptest! {
        #[test]
        fn balance_never_negative_nor_refilled_past_capacity(
            policy in arb_policy(),
            ops in proptest::collection::vec(
                (0i64..10_000_000, prop_oneof![(0u64..50).prop_map(Op::Spend), (0u64..5).prop_map(Op::TopUp), (0u64..50).prop_map(Op::Refund)]),
                1..60,
            ),
        ) {
            let mut snapshot = BudgetSnapshot::full(&policy, 0);
            let mut now = 0i64;
            let mut topped_up = false;
            for (dt, op) in ops {
                now += dt;
                snapshot = match op {
                    Op::Spend(cost) => snapshot.spend(&policy, now, cost).unwrap_or(snapshot),
                    Op::TopUp(t) => { topped_up |= t > 0; snapshot.top_up(&policy, now, t) }
                    Op::Refund(c) => snapshot.refund(&policy, now, c),
                };
                let available = snapshot.available(&policy, now);
                prop_assert!(snapshot.balance_milli >= 0);
                prop_assert!(available >= 0);
                if !topped_up {
                    prop_assert!(available <= policy.capacity_milli());
                }
            }
        }

        #[test]
        fn n_spends_of_cost_c_against_b_succeed_floor_b_over_c_times(
            balance in 0u64..200, cost in 1u64..20, n in 0usize..100,
        ) {
            let policy = BudgetPolicy { per: Refill::Never, ..hourly(1000) };
            let mut s = BudgetSnapshot { balance_milli: i64::try_from(balance).unwrap() * MILLI, updated_at_ms: 0 };
            let mut ok = 0u64;
            for _ in 0..n {
                if let Some(next) = s.spend(&policy, 0, cost) { s = next; ok += 1; }
            }
            prop_assert_eq!(ok, (balance / cost).min(n as u64));
        }
    }
}
