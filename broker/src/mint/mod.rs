//! Minters, and the proof types that order minting after logging.
//!
//! A [`Durable`] exists only once a decision's record (with its budget spend
//! and lease) is committed; a local credential is signed first, as an
//! [`jwt::UnreleasedJwt`], and can be turned into its token only with a
//! `Durable` — no code path releases a credential without its durable record.

pub mod jwt;

use crate::store::Appended;

/// Proof that a minting decision's record, spend and lease are durable.
#[derive(Debug)]
pub struct Durable {
    seq: i64,
}

impl Durable {
    /// Only a committed append that spent its budget yields the proof.
    pub(crate) fn from_appended(appended: &Appended) -> Option<Self> {
        appended.spent.then_some(Self { seq: appended.seq })
    }

    /// The record's sequence number.
    pub fn seq(&self) -> i64 {
        self.seq
    }
}
