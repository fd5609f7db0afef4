//! Minters, and the proof types that order minting after logging.
//!
//! A [`Minter`] is one kind of credential, in a file of its own ([`jwt`],
//! [`vault`], [`sts`], [`static_secret`]) that holds everything of its kind:
//! its grant settings (`<kind> = { … }` on a grant, a [`GrantSettings`]
//! that validates itself), the minter, and `build`, which makes it from the
//! broker's [`Deps`]. The kinds are registered in one line each, in
//! `crate::lease::lease_kinds!`; from that list this module declares the
//! modules, the kind-tagged [`GrantSpec`] and [`build`]. Every
//! irreversible step takes a proof: an [`Approved`] that only a minting
//! decision yields, then a [`Durable`] (a local credential's record, spend
//! and lease are committed) or a [`LoggedIntent`] (an upstream mint's intent
//! is). A local credential is signed first, as a [`Sealed`], and can be
//! turned into what the workload receives only with a `Durable`: no code
//! path releases a credential without its durable record.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use mintguard_certs::jwt::{JwtAlgorithm, JwtKeySet};
use mintguard_policy::Decision;
use serde_json::Value;

use crate::setting::Invalid;
use crate::store::Appended;
use crate::store::Lease;

pub use crate::lease::{LeaseKind, NEVER_MS, Revocation, UnknownForm};

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

/// Proof that a decision mints: only [`Approved::check`] makes one, and
/// only for an outcome that mints (`allow`, `allow_reduced`, or a confirmed
/// break-glass override of the decision).
#[derive(Debug)]
pub struct Approved<'a> {
    decision: &'a Decision,
}

impl<'a> Approved<'a> {
    /// The proof, if `decision` mints.
    pub fn check(decision: &'a Decision) -> Option<Self> {
        decision.outcome.mints().then_some(Self { decision })
    }

    /// The decision.
    pub fn decision(&self) -> &'a Decision {
        self.decision
    }
}

/// Whether a minter's credential is made by the broker itself (and released
/// after its one record is durable) or by an upstream (after an intent
/// record, then an outcome record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Signed here ([`Minter::seal`]).
    Local,
    /// Minted by an upstream ([`Minter::mint`]).
    Upstream,
}

/// What one mint is for.
#[derive(Clone, Copy, Debug)]
pub struct MintRequest<'a> {
    /// The workload's (or CI job's) SPIFFE ID.
    pub identity: &'a str,
    /// The node or CI issuer that vouched for it.
    pub node: &'a str,
    /// The grant's name.
    pub grant: &'a str,
    /// The grant's kind and settings.
    pub spec: &'a GrantSpec,
    /// The broker's URL (`iss`).
    pub issuer_url: &'a str,
    /// The lease the credential is tracked as.
    pub lease_id: &'a str,
    /// The TTL the minter agreed to ([`Minter::ttl_seconds`]).
    pub ttl_seconds: u64,
    /// The issuance's one reading of the clock, milliseconds.
    pub now_ms: i64,
    /// The audiences the request named (JWT-SVIDs).
    pub audience: Option<&'a [String]>,
    /// The request's CSR, checked (X.509-SVIDs): never recorded.
    pub csr: Option<&'a mintguard_certs::ca::Csr>,
}

impl<'a> MintRequest<'a> {
    /// The grant's settings of a minter's kind, or a mint error naming the
    /// grant (a grant of another kind).
    pub fn settings<T: SettingsOf>(&self) -> Result<&'a T, MintError> {
        T::of(self.spec).ok_or_else(|| {
            MintError::new(format!(
                "grant {} is of kind {}, not this minter's",
                self.grant,
                self.spec.kind()
            ))
        })
    }

    /// The lease this mint is tracked as, for the decision `request_id`:
    /// from now until `minter`'s expiry of it.
    pub fn lease(&self, minter: &dyn Minter, request_id: &str) -> Lease {
        Lease {
            id: self.lease_id.to_owned(),
            request_id: request_id.to_owned(),
            identity: self.identity.to_owned(),
            grant: self.grant.to_owned(),
            node: Some(self.node.to_owned()),
            kind: minter.kind(),
            revocation: minter.revocation(),
            issued_at_ms: self.now_ms,
            expires_at_ms: minter.lease_expires_at_ms(self),
            revoked_at_ms: None,
            task_ended_at_ms: None,
        }
    }

    /// When the credential expires, milliseconds.
    pub fn expires_at_ms(&self) -> i64 {
        self.now_ms.saturating_add(
            i64::try_from(self.ttl_seconds)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000),
        )
    }
}

/// A credential signed here that may not leave the broker yet.
pub struct Sealed {
    credential: Value,
    record: Option<Value>,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealed([redacted])")
    }
}

impl Sealed {
    /// Seals what the workload will receive.
    pub(crate) fn new(credential: Value) -> Self {
        Self {
            credential,
            record: None,
        }
    }

    /// What its decision record says of it (an X.509-SVID's serial and
    /// key digest): public facts, never the credential.
    pub(crate) fn recording(mut self, record: Value) -> Self {
        self.record = Some(record);
        self
    }

    /// What the record says of it.
    pub fn record(&self) -> Option<&Value> {
        self.record.as_ref()
    }

    /// What the workload receives, once its record is durable.
    pub fn release(self, _proof: &Durable) -> Value {
        self.credential
    }
}

/// What an upstream mint produced.
pub struct Minted {
    /// The credential for the workload (never logged).
    pub credential: Value,
    /// The upstream reference, logged and used to revoke.
    pub upstream: Value,
    /// The upstream lease duration, seconds (0 = none).
    pub lease_seconds: u64,
}

/// A failed mint or revocation.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct MintError {
    /// What failed.
    pub message: String,
    /// Whether the upstream may have minted all the same (a call sent and
    /// no readable answer): not refunded, left to reconciliation.
    pub ambiguous: bool,
}

impl MintError {
    /// A failure that minted nothing.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ambiguous: false,
        }
    }
}

/// Why a local credential could not be sealed (nothing was signed).
#[derive(Clone, Debug, thiserror::Error)]
pub enum SealError {
    /// The signing keys could not be read.
    #[error("signing keys unavailable: {0}")]
    KeysUnavailable(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Failed(String),
}

/// A decided TTL the upstream cannot mint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlBelowMinimum {
    /// The decided TTL, seconds.
    pub ttl_seconds: u64,
    /// The upstream's shortest, seconds.
    pub minimum: u64,
}

/// What reconciling an intent without an outcome found.
#[derive(Debug)]
pub enum Reconcile {
    /// Minted, found upstream and revoked: closed as `reconciled_revoked`.
    Revoked {
        /// What was revoked.
        upstream: Value,
    },
    /// Never minted: closed as `reconciled_not_minted`.
    NotMinted,
    /// Cannot be settled by the broker: logged as
    /// `reconcile_operator_action` with `detail`; `end_task` records the
    /// lease's task as ended (an advisory lease).
    OperatorAction {
        /// What the operator reads (the action to take).
        detail: serde_json::Map<String, Value>,
        /// Whether to record the task as ended.
        end_task: bool,
    },
    /// Nothing to do (already handed to an operator).
    Nothing,
    /// The upstream could not be asked now: look again at the next pass.
    Retry,
}

/// What a request carries for its minter besides the grant: a JWT-SVID's
/// audiences, an X.509-SVID's CSR.
#[derive(Clone, Copy, Debug, Default)]
pub struct Material<'a> {
    /// `audience`.
    pub audience: Option<&'a [String]>,
    /// `csr`, parsed and checked.
    pub csr: Option<&'a mintguard_certs::ca::Csr>,
}

/// Material a grant's kind does not take, or cannot use: refused before
/// anything is decided, spent or recorded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct MaterialError {
    /// A stable reason code (`csr_required`, `bad_csr`, `audience_not_allowed`, …).
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// Well formed, but outside what the grant allows (403, not 400).
    pub forbidden: bool,
}

impl MaterialError {
    /// Malformed or missing material (400).
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            forbidden: false,
        }
    }
}

/// One kind of credential.
#[async_trait]
pub trait Minter: Send + Sync {
    /// The lease kind it mints.
    fn kind(&self) -> LeaseKind;

    /// How its leases end before they expire.
    fn revocation(&self) -> Revocation;

    /// Local or upstream.
    fn flow(&self) -> Flow;

    /// Checks what the request carries for this kind before anything is
    /// decided; by default a kind takes neither audiences nor a CSR.
    fn check_material(
        &self,
        _spec: &GrantSpec,
        material: &Material<'_>,
    ) -> Result<(), MaterialError> {
        if material.audience.is_some() {
            return Err(MaterialError::bad(
                "audience_not_expected",
                format!(
                    "a {} grant takes no audience (jwt_svid grants do)",
                    self.kind()
                ),
            ));
        }
        if material.csr.is_some() {
            return Err(MaterialError::bad(
                "csr_not_expected",
                format!("a {} grant takes no CSR (x509_svid grants do)", self.kind()),
            ));
        }
        Ok(())
    }

    /// The TTL it mints for a decided one (an upstream's floor and ceiling).
    fn ttl_seconds(&self, _spec: &GrantSpec, decided: u64) -> Result<u64, TtlBelowMinimum> {
        Ok(decided)
    }

    /// Signs a local credential ([`Flow::Local`]), released only with its [`Durable`].
    fn seal(
        &self,
        _approved: &Approved<'_>,
        request: &MintRequest<'_>,
    ) -> Result<Sealed, SealError> {
        Err(SealError::Failed(format!(
            "grant {} is not minted locally",
            request.grant
        )))
    }

    /// Mints upstream ([`Flow::Upstream`]), after its intent is logged.
    async fn mint(
        &self,
        approved: &Approved<'_>,
        request: &MintRequest<'_>,
        intent: &LoggedIntent,
    ) -> Result<Minted, MintError>;

    /// Revokes what `upstream` names and confirms it: `Ok(true)` when the
    /// upstream no longer knows it.
    async fn revoke(&self, upstream: &Value) -> Result<bool, MintError>;

    /// Settles an intent without an outcome (the broker died between the
    /// mint and its answer). `spec` is the lease's grant's, if still configured.
    async fn reconcile(&self, lease: &Lease, spec: Option<&GrantSpec>) -> Reconcile;

    /// When a lease of this mint expires, milliseconds: the decided TTL's
    /// end, or [`NEVER_MS`] for a credential that does not expire by itself
    /// (its lease stays live until it is revoked or confirmed ended).
    fn lease_expires_at_ms(&self, request: &MintRequest<'_>) -> i64 {
        request.expires_at_ms()
    }

    /// Whether a mint leaves something upstream (a token, a session) that
    /// must be revoked when its credential is not released; `false` for a
    /// read (a static secret), whose unreleased copy simply goes away.
    fn leaves_upstream(&self) -> bool {
        true
    }

    /// What an operator does to end one of its advisory leases.
    fn advisory_action(&self, lease_id: &str) -> String {
        format!(
            "revoke lease {lease_id} upstream, then `mintguard revoke {lease_id} --confirm-revoked-upstream`"
        )
    }
}

/// The minters this broker runs: the one place a kind is registered.
#[derive(Default)]
pub struct Minters {
    minters: Vec<Box<dyn Minter>>,
}

impl Minters {
    /// Registers a minter (the last registration of a kind wins).
    pub fn register(&mut self, minter: Box<dyn Minter>) {
        self.minters.retain(|m| m.kind() != minter.kind());
        self.minters.push(minter);
    }

    /// The minter of `kind`, if configured.
    pub fn get(&self, kind: LeaseKind) -> Option<&dyn Minter> {
        self.minters
            .iter()
            .find(|m| m.kind() == kind)
            .map(|m| m.as_ref())
    }

    /// What an operator does to end an advisory lease of `kind`: its
    /// minter's words, or (its minter no longer configured) the generic ones.
    pub fn advisory_action(&self, kind: LeaseKind, lease_id: &str) -> String {
        self.get(kind).map_or_else(
            || {
                format!(
                    "end the {kind} credential of lease {lease_id} upstream by hand (no {kind} minter is configured), then `mintguard revoke {lease_id} --confirm-attached`"
                )
            },
            |m| m.advisory_action(lease_id),
        )
    }

    /// Whether any upstream minter is configured (reconciliation runs).
    pub fn any_upstream(&self) -> bool {
        self.minters.iter().any(|m| m.flow() == Flow::Upstream)
    }
}

/// What a grant's settings are checked against.
pub struct SpecContext<'a> {
    /// The settings' key as the file spells it (`grants[2].vault`).
    pub key: &'a dyn Fn(&str) -> String,
    /// The grant's longest TTL.
    pub max_ttl: Duration,
    /// `[jwt] algorithm`.
    pub jwt_algorithm: JwtAlgorithm,
    /// `[jwt] max_ttl`.
    pub jwt_max_ttl: Duration,
    /// Whether `[vault]` is configured.
    pub has_vault: bool,
    /// `[ca] svid_ttl`: the longest SVID the CA signs.
    pub ca_svid_ttl: Duration,
}

/// A kind's grant settings (`<kind> = { … }` on a grant): read with serde,
/// then checked against the rest of the file.
pub trait GrantSettings:
    serde::de::DeserializeOwned + Clone + std::fmt::Debug + PartialEq + Send + Sync + 'static
{
    /// Whether grants of the kind can be configured at all (an upstream
    /// section they need), checked before their settings are read.
    fn available(_cx: &SpecContext<'_>) -> Result<(), Invalid> {
        Ok(())
    }

    /// Whether the settings are usable, or the key and reason they are not.
    fn validate(&self, cx: &SpecContext<'_>) -> Result<(), Invalid>;
}

/// The settings type of one kind, found in a [`GrantSpec`].
pub trait SettingsOf: Sized {
    /// `spec`'s settings, if `spec` is of this kind.
    fn of(spec: &GrantSpec) -> Option<&Self>;
}

/// What minters are built from: the broker's shared clients and keys.
pub struct Deps<'a> {
    /// The broker's JWT signing keys (shared with the JWKS and rotation).
    pub jwt: &'a Arc<RwLock<JwtKeySet>>,
    /// The broker's JWT-SVID signing keys (ES256; the JWT bundle agents publish).
    pub jwt_svid: &'a Arc<RwLock<JwtKeySet>>,
    /// The broker's CA (X.509-SVIDs; shared with rotation and the bundle).
    pub ca: &'a Arc<RwLock<mintguard_certs::ca::CertificateAuthority>>,
    /// The broker's Vault client, if `[vault]` is configured.
    pub vault: Option<&'a Arc<vault::VaultClient>>,
    /// `[aws]`.
    pub aws: &'a sts::AwsConfig,
    /// Whether any grant is of a kind (a minter nothing uses is not started).
    pub used: &'a (dyn Fn(LeaseKind) -> bool + Sync),
}

/// Expands the kind list into the modules, [`GrantSpec`] and [`build`].
macro_rules! minter_kinds {
    ($($(#[$doc:meta])* $variant:ident => $text:literal in $module:ident),+ $(,)?) => {
        $(pub mod $module;)+

        /// A grant's kind with its settings (`kind = "<kind>"` and
        /// `<kind> = { … }` on a grant).
        #[derive(Clone, Debug, PartialEq)]
        pub enum GrantSpec {
            $($(#[$doc])* $variant($module::Settings),)+
        }

        impl GrantSpec {
            /// The kind.
            pub fn kind(&self) -> LeaseKind {
                match self {
                    $(Self::$variant(_) => LeaseKind::$variant,)+
                }
            }

            /// The settings of `kind` from a grant's `<kind>` table.
            pub fn parse(kind: LeaseKind, value: toml::Value) -> Result<Self, String> {
                match kind {
                    $(LeaseKind::$variant => value
                        .try_into::<$module::Settings>()
                        .map(Self::$variant)
                        .map_err(|e| e.to_string()),)+
                }
            }

            /// Whether grants of `kind` can be configured at all.
            pub fn available(kind: LeaseKind, cx: &SpecContext<'_>) -> Result<(), Invalid> {
                match kind {
                    $(LeaseKind::$variant => <$module::Settings as GrantSettings>::available(cx),)+
                }
            }

            /// Checks the settings (each kind its own).
            pub fn validate(&self, cx: &SpecContext<'_>) -> Result<(), Invalid> {
                match self {
                    $(Self::$variant(s) => GrantSettings::validate(s, cx),)+
                }
            }
        }

        $(impl SettingsOf for $module::Settings {
            fn of(spec: &GrantSpec) -> Option<&Self> {
                #[allow(unreachable_patterns)]
                match spec {
                    GrantSpec::$variant(s) => Some(s),
                    _ => None,
                }
            }
        })+

        /// Every kind's minter that `deps` can build (the registry).
        pub async fn build(deps: &Deps<'_>) -> Result<Minters, String> {
            let mut minters = Minters::default();
            $(if let Some(minter) = $module::build(deps).await? {
                minters.register(minter);
            })+
            Ok(minters)
        }
    };
}

crate::lease::lease_kinds!(minter_kinds);
