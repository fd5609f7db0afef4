//! The `mintguard` operator CLI's commands. `main` parses arguments and calls
//! one of these; each returns an error message for a non-zero exit.

pub mod client;
pub mod eci;
pub mod log_chain;
pub mod ops;
pub mod rules;
pub mod shadow;
pub mod whatif;
