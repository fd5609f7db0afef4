//! Minters, and the proof types that order minting after logging.
//!
//! A [`Durable`] exists only once a decision's record (with its budget spend
//! and lease) is committed; a local credential is signed first, as an
//! [`jwt::UnreleasedJwt`], and can be turned into its token only with a
//! `Durable` — no code path releases a credential without its durable record.

pub mod jwt;
pub mod sts;
pub mod vault;

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

/// Proof that an upstream mint's intent record, budget spend and lease are
/// durable: an upstream minter takes one, so it cannot be called for a
/// decision that was not allowed and logged first.
#[derive(Debug)]
pub struct LoggedIntent {
    seq: i64,
    lease_id: String,
}

impl LoggedIntent {
    /// Only a committed intent append that spent its budget yields the proof.
    pub(crate) fn from_appended(appended: &Appended, lease_id: &str) -> Option<Self> {
        appended.spent.then(|| Self {
            seq: appended.seq,
            lease_id: lease_id.to_owned(),
        })
    }

    /// The intent record's sequence number.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    /// The lease the mint is for.
    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }
}
