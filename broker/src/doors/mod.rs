//! The front doors: each authenticates its caller its own way, establishes
//! the issuer context, and hands a [`crate::issue::Subject`] to the
//! issuance core. Break-glass is an operator's (`routes::admin`).

pub mod ci;
pub mod node;
