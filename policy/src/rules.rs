//! Rules in Cedar: loading, validation against Mintguard's schema, and
//! evaluation into a graduated outcome.
//!
//! - Every policy is validated (strict mode) against the shipped schema
//!   ([`SCHEMA`]) at load; an invalid one is refused with Cedar's diagnostic.
//! - Default deny: no satisfied `permit` → `deny` (`no_permit`).
//! - A `forbid` without annotation → `deny` (`rule_forbid`).
//! - `@outcome("step_up" | "allow_reduced" | "suspend")` on a `forbid` selects
//!   the graduated response instead. The strongest satisfied one wins:
//!   `suspend > deny > step_up > allow_reduced > allow`.
//! - A policy that errors during evaluation fails closed (`rule_error`, `deny`).
//! - `@id("…")` names a policy; otherwise it is `<source>#<n>`.
//!
//! Implementation: annotated `forbid`s are evaluated as `permit`s in the same
//! policy set, so one Cedar evaluation tells which graduated rules matched and
//! whether a real `permit` did; only when a hard `forbid` denies is a second,
//! small evaluation needed to see whether a `suspend` rule also matched.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Decision as CedarDecision, Effect, Entities, Policy, PolicyId, PolicySet, Request,
    ResourceConstraint, Schema, ValidationMode, Validator,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::PolicyError;
use crate::outcome::Outcome;
use crate::reason::Reason;
use crate::trust::TrustConfig;

/// Mintguard's Cedar schema (Cedar schema syntax).
pub const SCHEMA: &str = include_str!("mintguard.cedarschema");

/// Most policies a rule set may hold.
pub const MAX_POLICIES: usize = 10_000;
/// Largest policy source, in bytes.
pub const MAX_SOURCE_BYTES: usize = 1024 * 1024;

/// A named Cedar source (a file's name and text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySource {
    /// File name, e.g. `payments.cedar`.
    pub name: String,
    /// Cedar policies.
    pub text: String,
}

/// A rule that matched a request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MatchedRule {
    /// The policy id.
    pub id: String,
    /// `allow` for a permit, else the outcome the forbid selects.
    pub outcome: Outcome,
}

/// What the rules say about one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RuleVerdict {
    /// The strongest outcome the rules select (`allow` when permitted and no
    /// forbid matched).
    pub outcome: Outcome,
    /// Reasons, one per kind of rule that acted.
    pub reasons: Vec<Reason>,
    /// The rules that matched, sorted by id.
    pub matched: Vec<MatchedRule>,
    /// Evaluation errors, if any (they fail closed).
    pub errors: Vec<String>,
}

/// A validated rule set: the Cedar policies and the trust configuration,
/// identified by a stable content hash.
#[derive(Clone, Debug)]
pub struct RuleSet {
    sources: Vec<PolicySource>,
    trust: TrustConfig,
    hash: String,
    /// Per grant named in a resource scope: the policies that can apply to it.
    slices: HashMap<String, Slice>,
    /// For other grants: the policies whose resource scope names no grant.
    unscoped: Slice,
    count: usize,
    graduated: HashMap<PolicyId, Outcome>,
    permits: HashSet<PolicyId>,
    /// Every policy as written (ids from `@id`), validated: what static
    /// analysis reads ([`RuleSet::at_most`]).
    validated: PolicySet,
    authorizer: std::sync::Arc<Authorizer>,
    entities: std::sync::Arc<EntityCache>,
}

/// Cedar entities of recent requests, by the strings they are built from
/// (issuer, identity, grant): building them (and their transitive closure)
/// cost more than evaluating the policies. Bounded: cleared when full.
#[derive(Debug, Default)]
struct EntityCache(std::sync::Mutex<HashMap<String, std::sync::Arc<Entities>>>);

/// Entity sets kept before the cache is cleared.
const ENTITY_CACHE_CAPACITY: usize = 4096;

/// The stored form of a rule set (by hash), for replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredRuleSet {
    /// The trust configuration.
    pub trust: TrustConfig,
    /// The Cedar sources, sorted by name.
    pub policies: Vec<PolicySource>,
}

fn cedar_err(source: &str, diagnostic: impl std::fmt::Display) -> PolicyError {
    PolicyError::Cedar {
        source_name: source.to_owned(),
        diagnostic: diagnostic.to_string(),
    }
}

/// Parses Mintguard's schema.
pub fn schema() -> Result<Schema, PolicyError> {
    Schema::from_cedarschema_str(SCHEMA)
        .map(|(schema, _warnings)| schema)
        .map_err(|e| cedar_err("<schema>", e))
}

impl RuleSet {
    /// Parses, validates and indexes `sources` with the trust configuration.
    pub fn new(mut sources: Vec<PolicySource>, trust: TrustConfig) -> Result<Self, PolicyError> {
        trust.validate()?;
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        let mut all = PolicySet::new();
        // Which source each policy id came from, for error messages.
        let mut origin: HashMap<String, String> = HashMap::new();
        let mut count = 0usize;
        for source in &sources {
            if source.text.len() > MAX_SOURCE_BYTES {
                return Err(PolicyError::LimitExceeded {
                    kind: "policy source bytes",
                    limit: MAX_SOURCE_BYTES,
                    actual: source.text.len(),
                });
            }
            let parsed =
                PolicySet::from_str(&source.text).map_err(|e| cedar_err(&source.name, e))?;
            if parsed.templates().next().is_some() {
                return Err(cedar_err(
                    &source.name,
                    "policy templates are not supported",
                ));
            }
            for (n, policy) in parsed.policies().enumerate() {
                count += 1;
                if count > MAX_POLICIES {
                    return Err(PolicyError::LimitExceeded {
                        kind: "policies",
                        limit: MAX_POLICIES,
                        actual: count,
                    });
                }
                let id = policy
                    .annotation("id")
                    .map_or_else(|| format!("{}#{n}", source.name), str::to_owned);
                let renamed = policy.new_id(PolicyId::new(&id));
                origin.insert(id.clone(), source.name.clone());
                all.add(renamed)
                    .map_err(|e| cedar_err(&source.name, format!("policy {id:?}: {e}")))?;
            }
        }
        let schema = schema()?;
        let validation = Validator::new(schema).validate(&all, ValidationMode::Strict);
        if !validation.validation_passed() {
            let diagnostics: Vec<String> = validation
                .validation_errors()
                .map(|e| format!("{e}: {e:?}"))
                .collect();
            let first = validation
                .validation_errors()
                .next()
                .map(|e| e.policy_id().to_string());
            let source_name = first
                .as_deref()
                .and_then(|id| id.split('#').next())
                .unwrap_or("<policies>")
                .to_owned();
            return Err(PolicyError::Cedar {
                source_name,
                diagnostic: diagnostics.join("; "),
            });
        }

        // (policy as evaluated, whether graduated, the grant its resource scope names)
        let mut evaluated: Vec<(Policy, bool, Option<String>)> = Vec::new();
        let mut graduated = HashMap::new();
        let mut permits = HashSet::new();
        let id_source = |policy: &Policy| {
            let id: &str = policy.id().as_ref();
            origin.get(id).cloned().unwrap_or_default()
        };
        for policy in all.policies() {
            let id = policy.id().clone();
            let annotation = policy.annotation("outcome");
            match (policy.effect(), annotation) {
                (Effect::Permit, None) => {
                    permits.insert(id);
                    evaluated.push((policy.clone(), false, scoped_grant(policy)));
                }
                (Effect::Permit, Some(_)) => {
                    return Err(cedar_err(
                        &id_source(policy),
                        format!("policy {id}: @outcome applies to forbid only"),
                    ));
                }
                (Effect::Forbid, None) => {
                    evaluated.push((policy.clone(), false, scoped_grant(policy)));
                }
                (Effect::Forbid, Some(name)) => {
                    let outcome = match Outcome::parse(name) {
                        Some(o @ (Outcome::StepUp | Outcome::AllowReduced | Outcome::Suspend)) => o,
                        _ => {
                            return Err(cedar_err(
                                &id_source(policy),
                                format!(
                                    "policy {id}: @outcome({name:?}) must be \"step_up\", \"allow_reduced\" or \"suspend\""
                                ),
                            ));
                        }
                    };
                    let as_permit =
                        flip_to_permit(policy).map_err(|e| cedar_err(&id_source(policy), e))?;
                    evaluated.push((as_permit, true, scoped_grant(policy)));
                    graduated.insert(id, outcome);
                }
            }
        }
        // Slice by grant: a policy whose resource scope names another grant
        // can never be satisfied (nor error) for this one, so leaving it out
        // gives the same answer with less work.
        let build = |keep: &dyn Fn(&Option<String>) -> bool| -> Result<Slice, PolicyError> {
            let mut slice = Slice::default();
            for (policy, is_graduated, grant) in &evaluated {
                if keep(grant) {
                    let err = |e| cedar_err(&id_source(policy), e);
                    slice.main.add(policy.clone()).map_err(err)?;
                    if *is_graduated {
                        slice.graduated_only.add(policy.clone()).map_err(err)?;
                        slice.has_graduated = true;
                    }
                }
            }
            Ok(slice)
        };
        let unscoped = build(&|grant| grant.is_none())?;
        let mut slices = HashMap::new();
        for grant in evaluated.iter().filter_map(|(_, _, g)| g.clone()) {
            if let std::collections::hash_map::Entry::Vacant(entry) = slices.entry(grant) {
                let grant = entry.key().clone();
                entry.insert(build(&|g| g.is_none() || g.as_ref() == Some(&grant))?);
            }
        }
        let count = evaluated.len();
        let stored = StoredRuleSet {
            trust: trust.clone(),
            policies: sources.clone(),
        };
        let hash = stored.hash();
        Ok(Self {
            sources,
            trust,
            hash,
            slices,
            unscoped,
            count,
            graduated,
            permits,
            validated: all,
            authorizer: std::sync::Arc::new(Authorizer::new()),
            entities: std::sync::Arc::default(),
        })
    }

    /// Rebuilds a rule set from its stored form (for replay).
    pub fn from_stored(stored: StoredRuleSet) -> Result<Self, PolicyError> {
        Self::new(stored.policies, stored.trust)
    }

    /// The stored form.
    pub fn to_stored(&self) -> StoredRuleSet {
        StoredRuleSet {
            trust: self.trust.clone(),
            policies: self.sources.clone(),
        }
    }

    /// The content hash: SHA-256 (hex) of the stored form's JSON.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The trust configuration.
    pub fn trust(&self) -> &TrustConfig {
        &self.trust
    }

    /// Number of policies.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the rule set has no policy (everything is denied).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every policy as written (ids from `@id`), validated.
    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.validated.policies()
    }

    /// The requests these rules give `level` or a weaker outcome, as one
    /// plain Cedar policy set that allows exactly those (for static
    /// analysis): the permits, and as forbids the forbids that select a
    /// stronger outcome than `level` (a forbid without `@outcome` selects
    /// deny). At `deny` and above no permit is needed, so one permitting
    /// everything stands in for them. Cedar treats a policy that errors as
    /// not matching, where decisions deny on it.
    pub fn at_most(&self, level: Outcome) -> Result<PolicySet, PolicyError> {
        let mut set = PolicySet::new();
        let add = |set: &mut PolicySet, p: Policy| {
            let id = p.id().to_string();
            set.add(p)
                .map_err(|e| cedar_err("<analysis>", format!("policy {id:?}: {e}")))
        };
        if level >= Outcome::Deny {
            let any = Policy::from_str("permit (principal, action, resource);")
                .map_err(|e| cedar_err("<analysis>", e))?
                .new_id(PolicyId::new("mintguard-any-request"));
            add(&mut set, any)?;
        }
        for policy in self.validated.policies() {
            let keep = match policy.effect() {
                Effect::Permit => level < Outcome::Deny,
                Effect::Forbid => {
                    self.graduated
                        .get(policy.id())
                        .copied()
                        .unwrap_or(Outcome::Deny)
                        > level
                }
            };
            if keep {
                add(&mut set, policy.clone())?;
            }
        }
        Ok(set)
    }

    /// The entities for `key` (the strings they are built from), built by
    /// `build` on a miss. A build error is returned and not cached.
    pub(crate) fn entities<E>(
        &self,
        key: String,
        build: impl FnOnce() -> Result<Entities, E>,
    ) -> Result<std::sync::Arc<Entities>, E> {
        if let Ok(cache) = self.entities.0.lock()
            && let Some(hit) = cache.get(&key)
        {
            return Ok(hit.clone());
        }
        let built = std::sync::Arc::new(build()?);
        if let Ok(mut cache) = self.entities.0.lock() {
            if cache.len() >= ENTITY_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, built.clone());
        }
        Ok(built)
    }

    /// Evaluates a request.
    pub fn evaluate(&self, grant: &str, request: &Request, entities: &Entities) -> RuleVerdict {
        let slice = self.slices.get(grant).unwrap_or(&self.unscoped);
        let response = self
            .authorizer
            .is_authorized(request, &slice.main, entities);
        let errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|e| e.to_string())
            .collect();
        let mut matched: BTreeMap<String, Outcome> = BTreeMap::new();
        let mut outcome;
        let mut reasons = Vec::new();
        match response.decision() {
            CedarDecision::Allow => {
                let mut permitted = false;
                outcome = Outcome::Allow;
                for id in response.diagnostics().reason() {
                    match self.graduated.get(id) {
                        Some(o) => {
                            outcome = outcome.stronger(*o);
                            reasons.push(rule_reason(*o));
                            matched.insert(AsRef::<str>::as_ref(id).to_owned(), *o);
                        }
                        None => {
                            permitted |= self.permits.contains(id);
                            matched.insert(AsRef::<str>::as_ref(id).to_owned(), Outcome::Allow);
                        }
                    }
                }
                if !permitted {
                    // Only graduated forbids matched: no real permit, default deny
                    // (a matched suspend still wins).
                    outcome = outcome.stronger(Outcome::Deny);
                    reasons.push(Reason::NoPermit);
                }
            }
            CedarDecision::Deny => {
                let forbids: Vec<&PolicyId> = response.diagnostics().reason().collect();
                if forbids.is_empty() {
                    outcome = Outcome::Deny;
                    reasons.push(Reason::NoPermit);
                } else {
                    outcome = Outcome::Deny;
                    reasons.push(Reason::RuleForbid);
                    for id in forbids {
                        matched.insert(AsRef::<str>::as_ref(id).to_owned(), Outcome::Deny);
                    }
                    // Only a suspend outranks the hard deny; the other graduated
                    // rules that matched are reported too, for the explanation.
                    if slice.has_graduated {
                        let graduated =
                            self.authorizer
                                .is_authorized(request, &slice.graduated_only, entities);
                        for id in graduated.diagnostics().reason() {
                            if let Some(o) = self.graduated.get(id) {
                                matched.insert(AsRef::<str>::as_ref(id).to_owned(), *o);
                                outcome = outcome.stronger(*o);
                                reasons.push(rule_reason(*o));
                            }
                        }
                    }
                }
            }
        }
        if !errors.is_empty() {
            outcome = outcome.stronger(Outcome::Deny);
            reasons.push(Reason::RuleError);
        }
        reasons.sort();
        reasons.dedup();
        RuleVerdict {
            outcome,
            reasons,
            matched: matched
                .into_iter()
                .map(|(id, outcome)| MatchedRule { id, outcome })
                .collect(),
            errors,
        }
    }
}

/// The policies that can apply to one grant.
#[derive(Clone, Debug, Default)]
struct Slice {
    /// Permits, hard forbids, and graduated forbids turned into permits.
    main: PolicySet,
    /// Graduated forbids only (as permits), for the hard-deny path.
    graduated_only: PolicySet,
    has_graduated: bool,
}

/// The grant a policy's resource scope names (`resource == Mintguard::Grant::"x"`
/// or `resource in …`, the same for grants, which have no parents).
fn scoped_grant(policy: &Policy) -> Option<String> {
    match policy.resource_constraint() {
        ResourceConstraint::Eq(uid)
        | ResourceConstraint::In(uid)
        | ResourceConstraint::IsIn(_, uid)
            if uid.type_name().to_string() == "Mintguard::Grant" =>
        {
            Some(AsRef::<str>::as_ref(uid.id()).to_owned())
        }
        _ => None,
    }
}

impl StoredRuleSet {
    /// SHA-256 (hex) of this form's JSON (sources sorted by name).
    pub fn hash(&self) -> String {
        let mut sorted = self.clone();
        sorted.policies.sort_by(|a, b| a.name.cmp(&b.name));
        // Serializing plain structs and strings cannot fail.
        let json = serde_json::to_vec(&sorted).unwrap_or_default();
        let digest = Sha256::digest(&json);
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn rule_reason(outcome: Outcome) -> Reason {
    match outcome {
        Outcome::StepUp => Reason::RuleStepUp,
        Outcome::AllowReduced => Reason::RuleAllowReduced,
        Outcome::Suspend => Reason::RuleSuspend,
        Outcome::Deny | Outcome::Allow => Reason::RuleForbid,
    }
}

/// The same policy with effect `permit` (its conditions and annotations kept).
fn flip_to_permit(policy: &Policy) -> Result<Policy, String> {
    let mut json = policy.to_json().map_err(|e| e.to_string())?;
    if let Some(effect) = json.get_mut("effect") {
        *effect = serde_json::Value::String("permit".into());
    }
    Policy::from_json(Some(policy.id().clone()), json).map_err(|e| e.to_string())
}
