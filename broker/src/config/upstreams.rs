//! `[vault]` and `[aws]`, the upstreams the broker mints from (each
//! section's type lives with its minter), and how long an intent may wait
//! for its outcome before reconciliation settles it.

use std::time::Duration;

pub use crate::mint::sts::{AWS_TIMEOUT, AwsConfig};
pub use crate::mint::vault::{AppRoleConfig, VAULT_TIMEOUT, VaultConfig};
use crate::setting::Invalid;

/// `reconcile_after` when neither section sets it.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(120);
/// How many upstream timeouts `reconcile_after` must outlast: a mint makes
/// at most three calls (a refused token re-read or a new login, then the
/// call again), so reconciliation never settles an intent whose mint may
/// still be running.
pub const RECONCILE_AFTER_TIMEOUTS: u32 = 3;

/// How old an intent without an outcome must be before reconciliation
/// looks at it: `[vault] reconcile_after`, else `[aws]`'s, else 2 min.
pub fn reconcile_after(vault: Option<&VaultConfig>, aws: &AwsConfig) -> Duration {
    vault
        .and_then(|v| v.reconcile_after)
        .or(aws.reconcile_after)
        .map_or(RECONCILE_AFTER, |d| d.0)
}

/// `reconcile_after` outlasts [`RECONCILE_AFTER_TIMEOUTS`] of each upstream
/// in use (`[vault]`, and `[aws]` when a grant mints from STS).
pub fn validate_reconcile_after(
    vault: Option<&VaultConfig>,
    aws: &AwsConfig,
    uses_aws: bool,
) -> Result<(), Invalid> {
    let after = reconcile_after(vault, aws);
    let timeouts = vault
        .map(|v| ("vault.timeout", v.timeout.map_or(VAULT_TIMEOUT, |d| d.0)))
        .into_iter()
        .chain(uses_aws.then(|| ("aws.timeout", aws.timeout.map_or(AWS_TIMEOUT, |d| d.0))));
    for (key, timeout) in timeouts {
        if timeout
            .checked_mul(RECONCILE_AFTER_TIMEOUTS)
            .is_none_or(|least| after < least)
        {
            return Err(Invalid::new(
                if vault.is_some_and(|v| v.reconcile_after.is_some()) {
                    "vault.reconcile_after"
                } else {
                    "aws.reconcile_after"
                },
                format!(
                    "{}s is shorter than {RECONCILE_AFTER_TIMEOUTS} × {key} ({}s): an intent could be settled while its mint still runs",
                    after.as_secs_f64(),
                    timeout.as_secs_f64()
                ),
            ));
        }
    }
    Ok(())
}
