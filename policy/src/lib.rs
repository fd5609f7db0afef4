//! # mintguard-policy
//!
//! Mintguard's decision core: the trust score, ECI (Expected Compromise Impact)
//! over an exposure graph, budget costs, Cedar rules and the graduated outcome
//! (`allow`, `allow_reduced`, `step_up`, `deny`, `suspend`) with its reasons.
//!
//! It is **pure**: no tokio, no sockets, no files, no clock reads. Time,
//! balances, signals and ECI values come in as arguments, and a decision comes
//! out with every number it used; the broker does the I/O and spends budgets.
//!
//! The crate is being built up in order: the workspace and this map exist, the
//! trust score, ECI, budgets, rules and `decide()` follow.

#![forbid(unsafe_code)]
