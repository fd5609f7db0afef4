//! The decision's inputs: the issuer's posture, the trust signals the broker
//! observes and those posted about the identity or its node, compromise
//! evidence, and the policy's view of a grant.

use mintguard_api::NodeFacts;
use mintguard_policy::decision::{Evidence, EvidenceKind, GrantInput};
use mintguard_policy::trust::{Signal, SignalKind, TrustInput};
use time::OffsetDateTime;

use mintguard_policy::{Decision, Outcome};

use super::refusal::Refusal;
use crate::config::GrantConfig;
use crate::store::SignalRecord;

/// What the broker observed about the caller, for the trust signals.
pub struct Observed<'a> {
    /// Posture of the issuer (value, source).
    pub posture: (u8, &'a str),
    /// Attestation strength (value, source).
    pub attestation: (u8, &'a str),
    /// The network signal when a constraint is configured.
    pub network: Option<(u8, &'a str)>,
}

/// The signals: the ones the broker observes itself (DESIGN's table;
/// location, time and network drop out until their constraints are
/// configured), lowered by fresh external signals about the identity or its
/// node (signals API): per kind, the lowest fresh value counts.
/// The node's posture as the broker observes it: the mTLS handshake proved a
/// current SVID; one past three quarters of its life means the agent is not
/// renewing on schedule (renewal is due at half-life), which lowers posture.
pub fn node_posture(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
) -> (u8, &'static str) {
    let life = (not_after - not_before).whole_milliseconds().max(1);
    let age = (now - not_before).whole_milliseconds();
    if age * 4 <= life * 3 {
        (100, "broker:node_svid")
    } else {
        (50, "broker:node_svid_not_renewed")
    }
}

/// Node facts the agent reports can only lower posture: an agent older than
/// `signals.min_agent_version` (or one that does not say) gets
/// `outdated_agent_posture` when a minimum is configured.
pub fn lower_posture_by_facts<'a>(
    signals: &crate::config::SignalsConfig,
    posture: (u8, &'a str),
    facts: Option<&NodeFacts>,
) -> (u8, &'a str) {
    let Some(minimum) = signals
        .min_agent_version
        .as_deref()
        .and_then(crate::config::parse_version)
    else {
        return posture;
    };
    let reported = facts.and_then(|f| crate::config::parse_version(&f.agent_version));
    if reported.is_some_and(|v| v >= minimum) || posture.0 <= signals.outdated_agent_posture {
        posture
    } else {
        (
            signals.outdated_agent_posture,
            "agent:version_below_minimum",
        )
    }
}

/// The trust signals of one decision: what the broker observed, the grant's
/// allowed hours, and the fresh external signals (the lowest per kind).
/// `behaviour` is the broker's neutral value only while anomaly analysis
/// keeps up; lagging, it is recorded with the age of analysis's last step
/// (so it counts as expired); switched off, it is left out.
pub fn observed_signals(
    signals: &crate::config::SignalsConfig,
    grant: &GrantConfig,
    observed: &Observed<'_>,
    external: &[SignalRecord],
    behaviour: crate::health::Behaviour,
    now_ms: i64,
) -> TrustInput {
    let now_s = now_ms.div_euclid(1000);
    let ttl = signals.ttl.0.as_secs();
    let signal = |value, source: &str| Signal {
        value,
        observed_at: now_s,
        ttl_seconds: ttl,
        source: source.into(),
    };
    let mut input = TrustInput {
        signals: [
            (
                SignalKind::Posture,
                signal(observed.posture.0, observed.posture.1),
            ),
            (
                SignalKind::Attestation,
                signal(observed.attestation.0, observed.attestation.1),
            ),
        ]
        .into(),
        unconstrained: [SignalKind::Location, SignalKind::Time, SignalKind::Network].into(),
    };
    match behaviour {
        crate::health::Behaviour::Fresh => {
            input.signals.insert(
                SignalKind::Behaviour,
                signal(signals.behaviour_neutral, "broker:neutral"),
            );
        }
        crate::health::Behaviour::Stale {
            last_ms,
            window_seconds,
        } => {
            input.signals.insert(
                SignalKind::Behaviour,
                Signal {
                    value: signals.behaviour_neutral,
                    observed_at: last_ms.div_euclid(1000),
                    ttl_seconds: window_seconds,
                    source: "broker:analysis_stale".into(),
                },
            );
        }
        crate::health::Behaviour::Off => {
            input.unconstrained.insert(SignalKind::Behaviour);
        }
    }
    if let Some((value, source)) = observed.network {
        input
            .signals
            .insert(SignalKind::Network, signal(value, source));
        input.unconstrained.remove(&SignalKind::Network);
    }
    let hour = OffsetDateTime::from_unix_timestamp(now_s).map_or(0, |t| t.hour());
    if let Some(allowed) = grant.hour_allowed(hour) {
        let value = if allowed { 100 } else { 0 };
        input
            .signals
            .insert(SignalKind::Time, signal(value, "broker:allowed_hours"));
        input.unconstrained.remove(&SignalKind::Time);
    }
    for ext in external {
        let fresh =
            ext.observed_at_ms + i64::try_from(ext.ttl_seconds).unwrap_or(0) * 1000 >= now_ms;
        let Ok(kind) = ext.kind.parse::<SignalKind>() else {
            continue;
        };
        if !fresh {
            continue;
        }
        let candidate = Signal {
            value: ext.value.min(100),
            observed_at: ext.observed_at_ms.div_euclid(1000),
            ttl_seconds: ext.ttl_seconds,
            source: format!("{} ({})", ext.source, ext.subject),
        };
        match input.signals.get(&kind) {
            Some(current) if current.value <= candidate.value => {}
            _ => {
                input.signals.insert(kind, candidate);
                // An outside behaviour signal takes part even with analysis off.
                if kind == SignalKind::Behaviour {
                    input.unconstrained.remove(&kind);
                }
            }
        }
    }
    input
}

/// Fresh `compromise` signals about the identity or its node: positive evidence.
pub fn compromise_evidence(external: &[SignalRecord], now_ms: i64) -> Vec<Evidence> {
    external
        .iter()
        .filter(|s| {
            s.kind == mintguard_policy::trust::COMPROMISE_SIGNAL
                && s.observed_at_ms + i64::try_from(s.ttl_seconds).unwrap_or(0) * 1000 >= now_ms
        })
        .map(|s| Evidence {
            kind: EvidenceKind::CompromiseSignal,
            detail: format!("{} about {}", s.source, s.subject),
        })
        .collect()
}

pub fn evidence_kind(by: &str) -> EvidenceKind {
    if by.starts_with("operator:") {
        EvidenceKind::Operator
    } else if by.starts_with("signal:") {
        EvidenceKind::CompromiseSignal
    } else {
        EvidenceKind::Detection
    }
}

/// The policy's view of a grant.
pub fn grant_input(grant: &GrantConfig) -> GrantInput {
    GrantInput {
        name: grant.name.clone(),
        kind: grant.kind.as_str().into(),
        max_ttl_seconds: grant.max_ttl.0.as_secs(),
        reduced_max_ttl_seconds: grant
            .reduced
            .as_ref()
            .and_then(|r| r.max_ttl)
            .map(|d| d.0.as_secs()),
    }
}

/// A confirmed break-glass request issues whatever was decided — except
/// over a suspended identity (compromise evidence stands) — with the grant's
/// TTL cap, no reduction and no budget spend.
pub fn break_glass_override(decided: &Decision, grant: &GrantConfig) -> Result<Decision, Refusal> {
    if decided.outcome == Outcome::Suspend {
        return Err(Refusal::BreakGlassOverSuspension);
    }
    let mut d = decided.clone();
    d.outcome = Outcome::Allow;
    d.reduced = false;
    d.spend.clear();
    d.ttl_seconds = d
        .requested_ttl_seconds
        .min(grant.max_ttl.0.as_secs())
        .max(1);
    d.reasons.push(mintguard_policy::Reason::BreakGlass);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_facts_only_lower_posture() {
        let mut signals = crate::config::SignalsConfig::default();
        let facts = |v: &str| NodeFacts {
            agent_version: v.into(),
            ..NodeFacts::default()
        };
        let fresh = (100, "broker:node_svid");
        // No minimum configured: facts change nothing.
        assert_eq!(
            lower_posture_by_facts(&signals, fresh, Some(&facts("0.0.1"))),
            fresh
        );
        signals.min_agent_version = Some("0.2.0".into());
        let cases = [
            (Some(facts("0.2.0")), 100),
            (Some(facts("1.0.0-rc1")), 100),
            (Some(facts("0.1.9")), 30),
            (Some(facts("not a version")), 30),
            (None, 30),
        ];
        for (f, want) in cases {
            assert_eq!(
                lower_posture_by_facts(&signals, fresh, f.as_ref()).0,
                want,
                "{f:?}"
            );
        }
        // Never raised: an already lower posture stays.
        let stale = (20, "broker:node_svid_not_renewed");
        assert_eq!(
            lower_posture_by_facts(&signals, stale, Some(&facts("0.0.1"))),
            stale
        );
    }

    #[test]
    fn posture_drops_when_the_node_stops_renewing() {
        let start = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let end = start + time::Duration::hours(1);
        assert_eq!(
            node_posture(start, end, start + time::Duration::minutes(10)).0,
            100
        );
        assert_eq!(
            node_posture(start, end, start + time::Duration::minutes(45)).0,
            100
        );
        assert_eq!(
            node_posture(start, end, start + time::Duration::minutes(46)).0,
            50
        );
    }
}
