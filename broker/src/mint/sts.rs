//! The AWS STS minter: `AssumeRole` with a `RoleSessionName` and
//! `SourceIdentity` derived from the SPIFFE ID, session tags (identity,
//! lease, node), `DurationSeconds` within STS's limits and, for the reduced
//! variant, an inline session policy. The broker's own AWS credentials come
//! from the standard chain; `[aws] endpoint` overrides the endpoint.
//!
//! STS sessions cannot be revoked one by one: leases are `advisory` until an
//! operator attaches the deny policy `mintguard aws revoke-policy` prints.

use aws_sdk_sts::types::Tag;
use serde_json::json;

use super::LoggedIntent;
use super::vault::Minted;
use crate::config::{AwsConfig, AwsStsGrant, sts_limits};

/// A failed STS call.
#[derive(Debug, Clone, thiserror::Error)]
#[error("sts {0}")]
pub struct StsError(pub String);

/// The STS client.
pub struct StsMinter {
    client: aws_sdk_sts::Client,
}

/// A name STS accepts for `RoleSessionName` and `SourceIdentity`
/// (`[\w+=,.@-]`, 2–64 characters) derived from a SPIFFE ID: readable, and
/// unique (a hash suffix) when it has to be shortened.
pub fn session_name(identity: &str) -> String {
    let body: String = identity
        .trim_start_matches("spiffe://")
        .chars()
        .map(|c| match c {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) => c,
            _ => '-',
        })
        .collect();
    if body.len() <= 64 && body.len() >= 2 {
        return body;
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, identity.as_bytes());
    let hash: String = digest.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let keep = 64 - hash.len() - 1;
    let tail = &body[body.len().saturating_sub(keep)..];
    format!("{tail}-{hash}")
}

/// A session tag value STS accepts (≤ 256 of `[\p{L}\p{Z}\p{N}_.:/=+\-@]`).
fn tag_value(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(256)
        .collect()
}

impl StsMinter {
    /// A client for `[aws]`.
    pub async fn new(config: &AwsConfig) -> Self {
        let region = config.region.clone().unwrap_or_else(|| "us-east-1".into());
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region));
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        Self {
            client: aws_sdk_sts::Client::new(&loader.load().await),
        }
    }

    /// Assumes the grant's role for `identity` for `duration` seconds
    /// (already within STS's limits), with the reduced policy when `reduced`.
    pub async fn mint(
        &self,
        proof: &LoggedIntent,
        grant: &AwsStsGrant,
        identity: &str,
        node: &str,
        duration: u64,
        reduced: bool,
    ) -> Result<Minted, StsError> {
        let name = session_name(identity);
        let tag = |k: &str, v: &str| {
            Tag::builder()
                .key(k)
                .value(tag_value(v))
                .build()
                .map_err(|e| StsError(e.to_string()))
        };
        let mut call = self
            .client
            .assume_role()
            .role_arn(&grant.role_arn)
            .role_session_name(&name)
            .source_identity(&name)
            .duration_seconds(i32::try_from(duration).unwrap_or(i32::MAX))
            .tags(tag("mintguard:identity", identity)?)
            .tags(tag("mintguard:lease", proof.lease_id())?)
            .tags(tag("mintguard:node", node)?);
        if reduced && let Some(policy) = &grant.reduced_policy {
            if policy.chars().count() > sts_limits::MAX_POLICY_CHARS {
                return Err(StsError(
                    "the session policy exceeds 2,048 characters".into(),
                ));
            }
            call = call.policy(policy);
        }
        let answer = call
            .send()
            .await
            .map_err(|e| StsError(aws_sdk_sts::error::DisplayErrorContext(&e).to_string()))?;
        let creds = answer
            .credentials()
            .ok_or_else(|| StsError("no credentials in the answer".into()))?;
        let expiration = creds
            .expiration()
            .fmt(aws_sdk_sts::primitives::DateTimeFormat::DateTime)
            .unwrap_or_default();
        let arn = answer
            .assumed_role_user()
            .map(|u| u.arn().to_owned())
            .unwrap_or_default();
        Ok(Minted {
            credential: json!({
                "type": "aws",
                "access_key_id": creds.access_key_id(),
                "secret_access_key": creds.secret_access_key(),
                "session_token": creds.session_token(),
                "expiration": expiration,
                "assumed_role_arn": arn,
            }),
            upstream: json!({
                "assumed_role_arn": arn, "role_session_name": name, "source_identity": name,
                "lease_tag": proof.lease_id(), "duration_seconds": duration,
                "session_policy": reduced && grant.reduced_policy.is_some(),
            }),
            lease_seconds: duration,
        })
    }
}

/// The IAM deny policy that ends sessions an operator wants revoked: those
/// tagged with `lease`, or those whose `SourceIdentity` is the identity's
/// session name and were issued before `before` (RFC 3339).
pub fn revoke_policy(
    lease: Option<&str>,
    identity: Option<&str>,
    before: &str,
) -> serde_json::Value {
    let condition = match (lease, identity) {
        (Some(lease), _) => json!({
            "StringEquals": {"aws:PrincipalTag/mintguard:lease": lease},
            "DateLessThan": {"aws:TokenIssueTime": before},
        }),
        (None, Some(identity)) => json!({
            "StringEquals": {"aws:SourceIdentity": session_name(identity)},
            "DateLessThan": {"aws:TokenIssueTime": before},
        }),
        (None, None) => json!({}),
    };
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "MintguardRevoke",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": condition,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names_fit_sts_rules_and_stay_unique() {
        assert_eq!(
            session_name("spiffe://example.org/ns/pay/sa/api"),
            "example.org.ns.pay.sa.api"
        );
        let long = format!("spiffe://example.org/{}", "a".repeat(100));
        let other = format!("spiffe://example.org/{}b", "a".repeat(99));
        let (a, b) = (session_name(&long), session_name(&other));
        assert!(a.len() <= 64 && b.len() <= 64);
        assert_ne!(a, b);
        assert!(
            session_name("spiffe://x/y z~")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
        );
    }
}
