//! # mintguard-broker
//!
//! The Mintguard broker: it authenticates who asks (a node's SVID over mTLS, a
//! CI runner's OIDC token over HTTPS), decides at issuance time with
//! `mintguard-policy`, writes every decision to a durable, hash-chained
//! issuance log, and only then mints a short-lived credential (its own JWT, a
//! Vault secret or token, AWS STS credentials) tracked as a lease.
//!
//! The map:
//!
//! - [`config`]: the TOML configuration, validated before anything binds
//!   (a folder: `config::ci` the CI policies and their claim language,
//!   `config::anomaly` the analyzer's and responses' tuning).
//! - [`state`]: the running broker — store, CA, keys, reloadable rules, grants
//!   and ECI, checkpointing, rate limiters, metrics.
//! - [`routes`]: the public, agents and admin listeners; [`http`] the shared
//!   plumbing (the one place errors become statuses, TLS accept loops).
//! - [`issue`]: the issuance core — `Issuer::issue` decides, logs and mints,
//!   returning an `Issued` or a `Refusal` (never a response); revocation and
//!   reconciliation of upstream mints. Collaborators are passed in.
//! - [`doors`]: the front doors — a node (mTLS + attested selectors) and a
//!   CI runner (its OIDC token); [`ci`]: CI trust policies and what a
//!   token's claims say; [`approvals`]: the operators' side of step-up and
//!   break-glass approvals.
//! - [`mint`]: the `Minter` trait and one file per kind (JWT, Vault, STS,
//!   static secret) holding the kind's grant settings (validating
//!   themselves), its minter and how it is built; a kind is registered by
//!   one line in `lease::lease_kinds!`, from which `mint` derives the
//!   kind-tagged `GrantSpec` and the registry. The proof types (`Approved`,
//!   `Durable`, `LoggedIntent`) order minting after deciding and logging.
//! - [`log`]: records, the JCS/SHA-256 hash chain, signed checkpoints, verification.
//! - [`store`]: the store, one trait per aggregate (`LogStore`, `LeaseStore`,
//!   `BudgetStore`, `ApprovalStore`, `RegistryStore`, `SubjectStore`) under
//!   `Store`, opened from a URL by `store::open`; the schema once in
//!   `store::migrations` (dialect tokens); each backend a folder with its
//!   writer and a file per aggregate (`store/sqlite/leases.rs`, …).
//! - [`outbound`]: the broker's own HTTPS calls (CI issuers, Vault).
//! - The leaves: [`clock`], the one source of "now" (a [`clock::Clock`]
//!   tests can set); [`ids`], ids (unique), secrets (CSPRNG, fail closed),
//!   hex and excerpts of untrusted text; [`lease`], lease kinds and
//!   revocations; [`setting`], durations and validation findings; [`health`], whether anomaly analysis keeps up; [`fault`],
//!   the crash-safety tests' hooks. `tests/import_circles.py` checks there
//!   are no import circles among these modules.
//! - [`tasks`]: the background tasks (identity and key rotation, log
//!   timers, upstream expiry and reconciliation, analysis), started in one place.
//! - Safe policy change: [`whatif`] re-decides the logged decisions under
//!   proposed rules; [`shadow`] decides every live request under a shadow
//!   rule set beside the enforced one, and tallies where they disagree.
//! - [`metrics`]: Prometheus metrics. [`cli`]: the `mintguard` CLI's commands.
//!
//! What it deliberately does not do: trust a caller's claims about itself (a
//! node is its SVID; a workload is what its agent attested), release a
//! credential before its record is durable, or keep a secret in the log.

#![forbid(unsafe_code)]

pub mod anomaly;
pub mod approvals;
pub mod ci;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod doors;
pub mod fault;
pub mod health;
pub mod http;
pub mod ids;
pub mod issue;
pub mod lease;
pub mod log;
pub mod metrics;
pub mod mint;
pub mod outbound;
pub mod refusals;
pub mod routes;
pub mod seed;
pub mod setting;
pub mod shadow;
pub mod state;
pub mod store;
pub mod tasks;
pub mod whatif;
