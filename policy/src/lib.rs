//! # mintguard-policy
//!
//! Mintguard's decision core: the trust score ([`trust`]), ECI — Expected
//! Compromise Impact — over an exposure graph ([`eci`]), budget math
//! ([`budget`]), Cedar rules ([`rules`]) and [`decide`], which combines them
//! into one graduated [`Outcome`] with its [`Reason`]s and every number used.
//!
//! It is **pure**: no tokio, no sockets, no files, no clock reads. Time,
//! balances, signals and ECI values come in as arguments; a decision comes out
//! and mutates nothing. The broker does the I/O: it loads the graph and the
//! policies, computes ECI off the request path, spends the budget costs a
//! decision returns atomically with the decision's log record, and mints.
//!
//! Security properties enforced here:
//!
//! - No fresh signals, no trust: a missing or stale signal takes the unknown
//!   value (default 0); no signal at all denies.
//! - `suspend` only with positive evidence (a detection, an external
//!   compromise signal, an operator); a rule's `suspend` without it is a
//!   `deny` (`suspend_downgraded_no_evidence`). Missing data never suspends.
//! - Default deny in Cedar; `forbid` beats `permit`; a policy that errors
//!   fails closed.
//! - The strongest outcome wins: `suspend > deny > step_up > allow_reduced > allow`.
//!
//! Refinements of the design, documented where they live: signal values are
//! integers 0–100 (the score is exact integer arithmetic); budgets are kept
//! in millitokens; `allow_reduced` on a grant without a reduced variant halves
//! the TTL; an issuer that is suspended or anomalous is a `deny` (the
//! identity's own suspension is a `suspend`).
//!
//! ```
//! use mintguard_policy::rules::{PolicySource, RuleSet};
//! use mintguard_policy::trust::TrustConfig;
//!
//! let rules = RuleSet::new(
//!     vec![PolicySource {
//!         name: "payments.cedar".into(),
//!         text: r#"permit(principal, action == Mintguard::Action::"mint", resource == Mintguard::Grant::"payments-db");"#.into(),
//!     }],
//!     TrustConfig::default(),
//! )?;
//! assert_eq!(rules.len(), 1);
//! # Ok::<(), mintguard_policy::PolicyError>(())
//! ```

#![forbid(unsafe_code)]

pub mod budget;
pub mod decision;
pub mod eci;
mod error;
pub mod outcome;
pub mod reason;
pub mod rules;
pub mod trust;

pub use decision::{Decision, DecisionInput, Verdict, decide};
pub use error::PolicyError;
pub use outcome::Outcome;
pub use reason::Reason;
