//! The broker's one store interface, with an embedded SQLite implementation
//! ([`sqlite`], the default) and a PostgreSQL one ([`postgres`], for several
//! replicas). Everything stateful goes through it.
//!
//! Writes that belong together are one transaction: a log record, the budget
//! spends of its decision and its lease are appended atomically
//! ([`LogStore::append`]). A spend is a conditional update computed in SQL from
//! the stored balance (never a read-modify-write in the broker), so N
//! concurrent requests against balance B at cost c succeed exactly
//! min(N, ⌊B/c⌋) times, across replicas too. Appends are group-committed: one
//! writer batches concurrent appends into one transaction and one fsync.

mod entry;
mod lease_query;
mod log_read;
pub mod migrations;
mod open;
pub mod postgres;
pub mod sqlite;

pub use entry::{Entry, KNOWN_SELECTORS, WEAK_ENTRY};
pub(crate) use lease_query::{CLOSE_LEASE, CLOSE_UNANSWERED, numbered};
pub use lease_query::{LeaseOwner, LeaseQuery, SqlValue};
pub use log_read::{
    HOT_OUTCOMES, LogCursor, NOTABLE_SQL, RecentPage, SCAN_WINDOW, decisions_after, read_log,
    read_log_newer, read_log_recent, read_log_recent_within,
};
pub use open::{check_url, open, open_existing, open_replica};

use async_trait::async_trait;
use mintguard_policy::budget::{BudgetPolicy, BudgetSnapshot, Refill};
use serde::{Deserialize, Serialize};

use crate::log::checkpoint::Checkpoint;
use crate::log::{LogEntry, LogRecord};

/// Errors from a store.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or written (disk full, connection lost…):
    /// the broker fails closed with 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A uniqueness constraint refused the write.
    #[error("already exists: {0}")]
    Conflict(String),
    /// Stored data is malformed.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// Opening or migrating the store failed.
    #[error("store setup: {0}")]
    Setup(String),
}

/// Shorthand.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One budget spend, applied only if the bucket can pay.
#[derive(Clone, Debug, PartialEq)]
pub struct SpendOp {
    /// The bucket.
    pub key: String,
    /// Its configuration (capacity and refill).
    pub policy: BudgetPolicy,
    /// Tokens.
    pub cost: u64,
}

/// A credential tracked until expiry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lease id (for JWTs also the `jti`).
    pub id: String,
    /// The request that created it.
    pub request_id: String,
    /// The identity.
    pub identity: String,
    /// The grant.
    pub grant: String,
    /// The vouching node or CI issuer.
    pub node: Option<String>,
    /// What was minted.
    pub kind: crate::lease::LeaseKind,
    /// How it ends before its expiry.
    pub revocation: crate::lease::Revocation,
    /// Issued, ms since the epoch.
    pub issued_at_ms: i64,
    /// Expires, ms since the epoch.
    pub expires_at_ms: i64,
    /// Revoked, if it was.
    pub revoked_at_ms: Option<i64>,
    /// When the workload said its task ended (`DELETE`), if it did.
    pub task_ended_at_ms: Option<i64>,
}

/// What a node SVID renewal found of the node's lineage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeRenewal {
    /// The SVID presented is the node's own (its current one, or the one
    /// last issued to it): renewed, in enrollment `generation`.
    Renewed {
        /// The node's enrollment generation.
        generation: i64,
    },
    /// The SVID presented is neither: an SVID of an earlier enrollment, or
    /// a second holder of the node's key renewing on its own (a fork).
    Stale {
        /// The node's current enrollment generation.
        generation: i64,
    },
}

/// A log append with what must commit with it.
#[derive(Clone, Debug)]
pub struct Append {
    /// The record to add.
    pub entry: LogEntry,
    /// Budget spends: all succeed or none does; if one cannot pay, the record
    /// is written with outcome `budget_exhausted` and no lease.
    pub spend: Vec<SpendOp>,
    /// The lease to start tracking (dropped when a spend fails).
    pub lease: Option<Lease>,
    /// The rule set the decision used, stored by hash if new.
    pub rule_set: Option<(String, std::sync::Arc<str>)>,
    /// The body's canonical JSON when the caller wrote it directly
    /// ([`crate::log::jcs::to_canonical`]); `entry.body` is then not read
    /// (leave it `Null`). `None`: the store canonicalizes `entry.body`.
    pub canonical_body: Option<String>,
    /// Subjects (the identity, its issuer) checked for a suspension in the
    /// write itself: if one is suspended by then, nothing is spent, no lease
    /// starts, and the record is written with outcome `suspended`. A
    /// decision read the suspensions earlier; this closes the window between
    /// that read and its write (a suspension's revocation could not see a
    /// lease written after it).
    pub refuse_if_suspended: Vec<String>,
    /// A lease checked in the write itself: if it is closed (revoked, e.g.
    /// reconciled while its mint was still running) or unknown, the record
    /// is written with final outcome `lease_closed` and
    /// [`Appended::lease_closed`] says so: an upstream mint's outcome then
    /// never releases a credential its lease no longer tracks. An open
    /// lease is marked as answered in the same write, so
    /// [`LeaseStore::close_unanswered`] no longer closes it.
    pub refuse_if_lease_closed: Option<String>,
}

impl Append {
    /// A record on its own: nothing spent, no lease, no check at write time.
    pub fn record(entry: LogEntry) -> Self {
        Self {
            canonical_body: None,
            entry,
            spend: Vec::new(),
            lease: None,
            rule_set: None,
            refuse_if_suspended: Vec::new(),
            refuse_if_lease_closed: None,
        }
    }

    /// The canonical body to store: the caller's, or `entry.body`'s.
    pub fn take_canonical_body(&mut self) -> String {
        self.canonical_body
            .take()
            .unwrap_or_else(|| crate::log::canonical_body(&self.entry.body))
    }
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The record's sequence number.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// Whether the spends (if any) were applied; `false` means the record was
    /// logged as `budget_exhausted` (or `suspended`).
    pub spent: bool,
    /// A subject of `refuse_if_suspended` was suspended at write time: the
    /// record was logged as `suspended`, nothing spent, no lease.
    pub suspended: bool,
    /// The lease of `refuse_if_lease_closed` was closed at write time.
    pub lease_closed: bool,
}

/// A suspension of an identity or issuer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspensionRecord {
    /// The suspended SPIFFE ID or issuer.
    pub subject: String,
    /// Why.
    pub reason: String,
    /// Who or what: `operator:<name>`, `detection:<id>`, `signal:<source>`.
    pub by: String,
    /// When, ms since the epoch.
    pub at_ms: i64,
}

/// A request held for approval (a `step_up` decision), or a break-glass
/// request, with its approvers so far.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `apr-…`, unguessable.
    pub id: String,
    /// SHA-256 of the exact request (identity, grant, TTL, purpose).
    pub request_hash: String,
    /// The identity the credential is for.
    pub identity: String,
    /// The grant.
    pub grant: String,
    /// The TTL asked for, seconds.
    pub ttl_seconds: Option<u64>,
    /// The purpose given.
    pub purpose: Option<String>,
    /// Who asked: the node or CI issuer (step-up) or `operator:<name>`.
    pub requested_by: String,
    /// The decision that was held.
    pub request_id: String,
    /// When created, ms.
    pub created_at_ms: i64,
    /// When it lapses unless used, ms.
    pub expires_at_ms: i64,
    /// Pending, approved, rejected, used or reviewed (a lapsed one reads
    /// as expired: [`Approval::state_at`]).
    pub state: ApprovalState,
    /// Approvers so far (`operator:<name>`).
    pub approvers: Vec<String>,
    /// Approvers needed.
    pub approvals_needed: u32,
    /// A TTL cap an approver set, seconds.
    pub approved_ttl_seconds: Option<u64>,
    /// The rejection reason.
    pub reason: Option<String>,
    /// Compare-and-set version.
    pub version: i64,
    /// A held request's step-up, or an operator's break-glass.
    #[serde(default)]
    pub kind: ApprovalKind,
}

/// What an approval is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalKind {
    /// A request the decision held for approval (the default of records
    /// written before kinds were stored).
    #[default]
    StepUp,
    /// An operator's override of a refusal, reviewed afterwards.
    BreakGlass,
}

/// Where an approval is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for approvers.
    Pending,
    /// Approved by enough approvers; not yet redeemed.
    Approved,
    /// Rejected by an approver.
    Rejected,
    /// Redeemed (once).
    Used,
    /// A used break-glass, reviewed by an operator.
    Reviewed,
    /// Lapsed before it was used (never stored: [`Approval::state_at`]).
    Expired,
}

impl ApprovalState {
    /// The one string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Used => "used",
            Self::Reviewed => "reviewed",
            Self::Expired => "expired",
        }
    }
}

impl std::fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Approval {
    /// The state as of `now_ms` (expired once lapsed, unless used or rejected).
    pub fn state_at(&self, now_ms: i64) -> ApprovalState {
        match self.state {
            ApprovalState::Pending | ApprovalState::Approved if now_ms >= self.expires_at_ms => {
                ApprovalState::Expired
            }
            s => s,
        }
    }
}

/// A signal about a subject (an identity or a node), from the signals API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRecord {
    /// The SPIFFE ID it is about.
    pub subject: String,
    /// `posture`, `attestation`, `behaviour`, `location`, `time`, `network`,
    /// or `compromise` (positive evidence of compromise).
    pub kind: String,
    /// Who reports it (`edr:crowdstrike`, `mdm:jamf`, `anomaly`, an operator).
    pub source: String,
    /// 0 (no trust) – 100.
    pub value: u8,
    /// When observed, ms since the epoch.
    pub observed_at_ms: i64,
    /// How long it stays fresh, seconds.
    pub ttl_seconds: u64,
}

/// A decision (a `decision` or `intent` record) as the anomaly analysis
/// reads it: the indexed columns,
/// and the body left as its stored canonical JSON (the reader picks out the
/// few fields it needs instead of building the whole tree).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecisionRow {
    /// The chain.
    pub chain: String,
    /// Position in the chain.
    pub seq: i64,
    /// When decided, ms since the epoch.
    pub time_ms: i64,
    /// The request.
    pub request_id: String,
    /// The identity.
    pub identity: Option<String>,
    /// The grant.
    pub grant: Option<String>,
    /// The node or CI issuer.
    pub node: Option<String>,
    /// The logged outcome.
    pub outcome: Option<String>,
    /// The body's canonical JSON text, or why the store could not read it
    /// (the reader counts it as a finding and goes on: one unreadable row
    /// never stops a page).
    pub body: std::result::Result<String, String>,
}

/// What the pipeline reads from the store for one request, in one read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestState {
    /// The identity's suspension, if any.
    pub identity_suspension: Option<SuspensionRecord>,
    /// The issuer's (node's or CI issuer's) suspension, if any.
    pub issuer_suspension: Option<SuspensionRecord>,
    /// The latest signals about the identity and the issuer.
    pub signals: Vec<SignalRecord>,
    /// The grant's budget bucket (`None`: never used, i.e. full).
    pub budget: Option<BudgetSnapshot>,
}

/// Filters for reading one chain of the log ([`read_log`] reads them all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// The chain (`""`: the unnamed one).
    pub chain: String,
    /// Only this identity.
    pub identity: Option<String>,
    /// Only this grant.
    pub grant: Option<String>,
    /// Only this node or issuer.
    pub node: Option<String>,
    /// Only this outcome.
    pub outcome: Option<String>,
    /// From this time (inclusive), ms.
    pub since_ms: Option<i64>,
    /// Until this time (exclusive), ms.
    pub until_ms: Option<i64>,
    /// After this sequence number of the chain.
    pub after_seq: Option<i64>,
    /// Before this sequence number of the chain.
    pub before_seq: Option<i64>,
    /// The newest first (`seq` descending), not the oldest.
    pub newest_first: bool,
    /// At most this many records (in `seq` order, or its reverse).
    pub limit: usize,
}

impl From<&ChainHead> for crate::log::verify::ChainStart {
    fn from(head: &ChainHead) -> Self {
        Self {
            chain: head.chain.clone(),
            base: head.base.clone(),
            head: Some((head.seq, head.hash.clone())),
            retired: head.retired_at_ms.is_some(),
        }
    }
}

/// One chain of the log as the store keeps it (see [`crate::log`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainHead {
    /// Its name: a replica's instance id, or `""`.
    pub chain: String,
    /// Its last record's seq (0 when it has none).
    pub seq: i64,
    /// That record's hash (the genesis hash when it has none).
    pub hash: String,
    /// The last pruned record (seq, hash), if retention pruned it.
    pub base: Option<(i64, String)>,
    /// When an operator retired it (no record is appended to it after).
    pub retired_at_ms: Option<i64>,
}

/// Leadership among replicas sharing a store: which one acts where only
/// one may (anomaly analysis's detections, signals and suspensions).
#[async_trait]
pub trait Leader: Send {
    /// Whether this replica leads now, trying to become leader if not.
    async fn leads(&mut self) -> bool;
}

/// A store no other broker shares (SQLite): its one broker leads.
pub struct SoleLeader;

#[async_trait]
impl Leader for SoleLeader {
    async fn leads(&mut self) -> bool {
        true
    }
}

/// The store: one interface per aggregate, and what spans them. Every
/// backend implements each aggregate in a file of its own
/// (`store/<backend>/<aggregate>.rs`).
#[async_trait]
pub trait Store:
    LogStore + BudgetStore + RegistryStore + LeaseStore + SubjectStore + ApprovalStore + Send + Sync
{
    /// This replica's leadership handle: it leads while it holds what the
    /// backend elects by (a PostgreSQL session advisory lock), and another
    /// replica takes over when it lets go. Every backend says how it
    /// elects: there is no default that would make two replicas both lead.
    fn leader(&self) -> Box<dyn Leader>;
    /// The suspensions of `identity` and `issuer`, their signals and the
    /// budget bucket `budget_key`: what a decision reads. A store that can
    /// reads them in one go (SQLite: one read transaction).
    async fn request_state(
        &self,
        identity: &str,
        issuer: &str,
        budget_key: Option<&str>,
    ) -> Result<RequestState> {
        let subjects = [identity, issuer];
        let (identity_suspension, issuer_suspension, signals) = tokio::try_join!(
            self.suspension(identity),
            self.suspension(issuer),
            self.signals(&subjects),
        )?;
        let budget = match budget_key {
            Some(key) => self.budget(key).await?,
            None => None,
        };
        Ok(RequestState {
            identity_suspension,
            issuer_suspension,
            signals,
            budget,
        })
    }
}

/// The issuance log: its appends (group-committed with their spends and
/// leases), reads, checkpoints and retention. A store holds one chain per
/// replica that appends to it ([`crate::log`]); this handle appends to
/// [`LogStore::chain`].
#[async_trait]
pub trait LogStore: Send + Sync {
    /// The chain this handle appends to.
    fn chain(&self) -> &str;
    /// Appends a record atomically with its spends, lease and rule set (group-committed).
    async fn append(&self, append: Append) -> Result<Appended>;
    /// Records of `query.chain` in `seq` order matching `query`.
    async fn log(&self, query: &LogQuery) -> Result<Vec<LogRecord>>;
    /// Decisions of `chain` after `after_seq` (from `since_ms` if given), in
    /// `seq` order, at most `limit`, bodies unparsed (see [`DecisionRow`]):
    /// the `decision` records and the `intent` records, which are the
    /// decisions of upstream (Vault, STS) grants that were allowed.
    async fn decision_rows(
        &self,
        chain: &str,
        after_seq: i64,
        since_ms: Option<i64>,
        limit: usize,
    ) -> Result<Vec<DecisionRow>>;
    /// All records of one request, in time order (a request's records may
    /// be on several chains: an intent, and the outcome another replica's
    /// reconciliation wrote).
    async fn log_for_request(&self, request_id: &str) -> Result<Vec<LogRecord>>;
    /// The head of [`LogStore::chain`]: (last seq, its hash); (0, genesis) when empty.
    async fn head(&self) -> Result<(i64, String)>;
    /// Every chain the store holds, by name.
    async fn chains(&self) -> Result<Vec<ChainHead>>;
    /// A record no chain accounts for, if there is one: of a chain the
    /// store does not hold, or beyond its chain's head. Readers never see
    /// such a record; `logs verify` reports it.
    async fn stray_record(&self) -> Result<Option<(String, i64)>>;
    /// Whether what the store reads its records with is intact and the
    /// same as this handle reads with (SQLite's body dictionaries; nothing
    /// for a store keeping bodies as text): `logs verify` asks, since a
    /// running broker would go on reading with what it loaded.
    async fn check_codec(&self) -> Result<()> {
        Ok(())
    }
    /// Retires `chain` (a replica taken out of service): no record is
    /// appended to it after. Its head, which the caller signs as the
    /// chain's final statement. A conflict for this handle's own chain,
    /// an unknown chain, or one already retired.
    async fn retire_chain(&self, chain: &str, now_ms: i64) -> Result<(i64, String)>;
    /// A stored rule set by hash.
    async fn rule_set(&self, hash: &str) -> Result<Option<String>>;
    /// Stores a signed checkpoint (also exported outside the store).
    async fn add_checkpoint(&self, checkpoint: &Checkpoint) -> Result<()>;
    /// The stored checkpoints, in order.
    async fn checkpoints(&self) -> Result<Vec<Checkpoint>>;
    /// The newest `limit` signed statements (checkpoints, prune and final
    /// statements), newest first (the console's integrity badge).
    async fn newest_checkpoints(&self, limit: usize) -> Result<Vec<Checkpoint>>;
    /// Deletes the records of `chain` through `seq` (already exported) and
    /// remembers `(seq, hash)` as the base the chain resumes from; the
    /// number deleted.
    async fn prune_through(&self, chain: &str, seq: i64) -> Result<u64>;
}

/// Budget buckets (spent inside [`LogStore::append`]; topped up and refunded here).
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// A bucket's stored balance (`None`: never used, i.e. full).
    async fn budget(&self, key: &str) -> Result<Option<BudgetSnapshot>>;
    /// Adds `tokens` to a bucket (may exceed capacity); returns the new snapshot.
    async fn top_up(
        &self,
        key: &str,
        policy: &BudgetPolicy,
        tokens: u64,
        now_ms: i64,
    ) -> Result<BudgetSnapshot>;
    /// Returns `cost` tokens after a failed mint (never past capacity).
    async fn refund(&self, key: &str, policy: &BudgetPolicy, cost: u64, now_ms: i64) -> Result<()>;
}

/// Who may ask: join tokens and node SVID lineages, registration entries, and the CI tokens already seen.
#[async_trait]
pub trait RegistryStore: Send + Sync {
    /// Stores a join token (by hash) for `node`, valid until `expires_at_ms`.
    async fn create_join_token(
        &self,
        token_hash: &str,
        node: &str,
        expires_at_ms: i64,
    ) -> Result<()>;
    /// Consumes a join token once: the node name if it was unused and unexpired.
    async fn consume_join_token(&self, token_hash: &str, now_ms: i64) -> Result<Option<String>>;
    /// `node` enrolled with an SVID of `serial`: its lineage starts over and
    /// its generation advances (returned), so no SVID of an earlier
    /// enrollment renews again.
    async fn node_enrolled(&self, node: &str, serial: &str, now_ms: i64) -> Result<i64>;
    /// `node`, presenting the SVID `presented`, renews to `new`: allowed,
    /// in one conditional write, when `presented` is its current SVID or the
    /// one last issued to it (whose answer may have been lost; using it
    /// makes it current). A node enrolled before lineages were kept starts
    /// one with `presented`.
    async fn node_renewed(
        &self,
        node: &str,
        presented: &str,
        new: &str,
        now_ms: i64,
    ) -> Result<NodeRenewal>;
    /// Records a CI token's `jti` (`key` = issuer and jti) until
    /// `expires_at_ms`: true the first time, false if it was seen and has
    /// not expired (a replay). Expired entries are swept as it goes.
    async fn consume_ci_jti(&self, key: &str, expires_at_ms: i64, now_ms: i64) -> Result<bool>;
    /// Creates a registration entry.
    async fn create_entry(&self, entry: &Entry) -> Result<()>;
    /// Entries, all or those of one parent node.
    async fn entries(&self, parent: Option<&str>) -> Result<Vec<Entry>>;
    /// Deletes an entry; whether it existed.
    async fn delete_entry(&self, id: &str) -> Result<bool>;
}

/// Leases: every credential issued, until it is revoked or expires.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// A lease by id.
    async fn lease(&self, id: &str) -> Result<Option<Lease>>;
    /// The leases a query selects.
    async fn leases(&self, query: &LeaseQuery) -> Result<Vec<Lease>>;
    /// How many leases a query selects (at most its limit: the count is as
    /// bounded as the query).
    async fn count_leases(&self, query: &LeaseQuery) -> Result<u64>;
    /// Marks a lease revoked (and its task ended); whether it was live.
    async fn revoke_lease(&self, id: &str, now_ms: i64) -> Result<bool>;
    /// Closes a lease whose intent has no outcome (reconciliation found
    /// nothing minted), unless an outcome was recorded for it meanwhile:
    /// one conditional write, so a credential the issuer released is never
    /// closed as not minted, and one closed here is never released
    /// ([`Append::refuse_if_lease_closed`]). Whether it closed the lease.
    async fn close_unanswered(&self, id: &str, now_ms: i64) -> Result<bool>;
    /// Records that a lease's task ended (the credential may stay valid
    /// upstream: an advisory lease); true if it was not recorded before.
    async fn end_task(&self, id: &str, now_ms: i64) -> Result<bool>;
}

/// What is known about a subject (identity, node, CI issuer): its suspension and its trust signals.
#[async_trait]
pub trait SubjectStore: Send + Sync {
    /// Suspends a subject (idempotent).
    async fn suspend(&self, record: &SuspensionRecord) -> Result<()>;
    /// Lifts a suspension; whether there was one.
    async fn resume(&self, subject: &str) -> Result<bool>;
    /// A subject's suspension, if any.
    async fn suspension(&self, subject: &str) -> Result<Option<SuspensionRecord>>;
    /// Every suspended subject, sorted.
    async fn suspended_subjects(&self) -> Result<Vec<String>>;
    /// Records a signal (the latest per subject, kind and source wins).
    async fn put_signal(&self, signal: &SignalRecord) -> Result<()>;
    /// The latest signals about these subjects.
    async fn signals(&self, subjects: &[&str]) -> Result<Vec<SignalRecord>>;
}

/// Step-up and break-glass approvals, replaced by version.
#[async_trait]
pub trait ApprovalStore: Send + Sync {
    /// Stores a new approval.
    async fn create_approval(&self, approval: &Approval) -> Result<()>;
    /// An approval by id.
    async fn approval(&self, id: &str) -> Result<Option<Approval>>;
    /// Approvals created after `since_ms`, newest first (at most 1,000).
    async fn approvals(&self, since_ms: i64) -> Result<Vec<Approval>>;
    /// Replaces an approval if its stored version is still `approval.version`
    /// (the stored one gets `version + 1`); whether it was replaced.
    async fn update_approval(&self, approval: &Approval) -> Result<bool>;
}

/// The final outcome of an append the write refused, if it refused it: a
/// closed lease first (its caller revokes what was minted), then a
/// suspension, then a spend that could not pay.
pub(crate) fn refusal(lease_closed: bool, suspended: bool, spent: bool) -> Option<&'static str> {
    if lease_closed {
        Some("lease_closed")
    } else if suspended {
        Some("suspended")
    } else if !spent {
        Some("budget_exhausted")
    } else {
        None
    }
}

/// Records that a decision lost at write time (the budget race, or a
/// suspension that came first): its final outcome; returns the new canonical
/// body. (A body written directly, with `entry.body` left `Null`, is parsed
/// here: the tree is built only on this rare path.)
pub(crate) fn mark_final_outcome(
    entry: &mut LogEntry,
    body_jcs: &str,
    outcome: &str,
) -> Result<String> {
    if entry.body.is_null() {
        entry.body = serde_json::from_str(body_jcs)
            .map_err(|e| StoreError::Corrupt(format!("a record body is not JSON: {e}")))?;
    }
    entry.outcome = Some(outcome.into());
    if let Some(body) = entry.body.as_object_mut() {
        body.insert("final_outcome".into(), outcome.into());
    }
    Ok(crate::log::canonical_body(&entry.body))
}

/// Parameters of the SQL refill expression for a policy: (capacity millitokens,
/// period in ms or `None` for never).
pub(crate) fn bucket_params(policy: &BudgetPolicy) -> (i64, Option<i64>) {
    let per_ms = match policy.per {
        Refill::Never => None,
        Refill::Every { seconds } => Some(i64::try_from(seconds).unwrap_or(i64::MAX / 1000) * 1000),
    };
    (policy.capacity_milli(), per_ms)
}

/// Millitokens of a whole-token cost.
pub(crate) fn cost_milli(cost: u64) -> i64 {
    i64::try_from(cost)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_store_url_names_its_scheme_never_its_password() {
        let e = check_url("mysql://mintguard:hunter2@db.example/broker").unwrap_err();
        assert!(e.contains("\"mysql\""), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = check_url("hunter2@db.example").unwrap_err();
        assert!(e.contains("(none)") && !e.contains("hunter2"), "{e}");
        assert!(check_url("sqlite:///var/lib/mintguard/broker.db").is_ok());
    }

    #[test]
    fn approvals_keep_their_stored_forms() {
        let stored = serde_json::json!({
            "id": "apr-1", "request_hash": "h", "identity": "spiffe://example.org/w",
            "grant": "g", "ttl_seconds": null, "purpose": null,
            "requested_by": "operator:a", "request_id": "req-1", "created_at_ms": 1,
            "expires_at_ms": 2, "state": "used", "approvers": [], "approvals_needed": 1,
            "approved_ttl_seconds": null, "reason": null, "version": 3,
        });
        // Written before kinds were stored: a step-up.
        let a: Approval = serde_json::from_value(stored.clone()).unwrap();
        assert_eq!(
            (a.kind, a.state),
            (ApprovalKind::StepUp, ApprovalState::Used)
        );
        let back = serde_json::to_value(Approval {
            kind: ApprovalKind::BreakGlass,
            state: ApprovalState::Reviewed,
            ..a
        })
        .unwrap();
        assert_eq!(
            (back["kind"].as_str(), back["state"].as_str()),
            (Some("break_glass"), Some("reviewed"))
        );
        let mut unknown = stored;
        unknown["state"] = "lost".into();
        assert!(
            serde_json::from_value::<Approval>(unknown).is_err(),
            "never read as another state"
        );
    }
}
