//! What a lease is, as closed sets with one string form each: the kind of
//! credential minted and how it ends early. A leaf: the store, the minters
//! and the log all name these, and import nothing for it.

/// The expiry of a lease whose credential does not expire by itself
/// (9999-12-31T23:59:59Z, exact in a JSON number): it stays live until it is
/// revoked or an operator confirms it ended.
pub const NEVER_MS: i64 = 253_402_300_799_000;

/// Every kind of credential: **the one place a kind is registered**. Each
/// line names the variant of [`LeaseKind`], its one string form (a grant's
/// `kind`, the key of its settings, the stored lease kind) and the module
/// of `crate::mint` that mints it (its settings type, its minter and how
/// the minter is built). The list is handed to `$then!`: here it makes
/// [`LeaseKind`]; in `crate::mint` the modules, the grant settings and the
/// registry. Adding a kind is its module's file and one line here.
macro_rules! lease_kinds {
    ($then:ident) => {
        $then! {
            /// A broker-signed JWT.
            Jwt => "jwt" in jwt,
            /// A Vault / OpenBao token or secret.
            Vault => "vault" in vault,
            /// AWS STS credentials.
            AwsSts => "aws_sts" in sts,
            /// A static secret read from Vault's KV store.
            StaticSecret => "static_secret" in static_secret,
            /// An X.509-SVID signed by the broker's CA (Workload API).
            X509Svid => "x509_svid" in x509_svid,
            /// A JWT-SVID signed by the broker's keys (Workload API).
            JwtSvid => "jwt_svid" in jwt_svid,
        }
    };
}
pub(crate) use lease_kinds;

macro_rules! lease_kind_enum {
    ($($(#[$doc:meta])* $variant:ident => $text:literal in $module:ident),+ $(,)?) => {
        /// What a lease is a lease on: the kind of credential minted.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        pub enum LeaseKind {
            $($(#[$doc])* #[serde(rename = $text)] $variant,)+
        }

        impl LeaseKind {
            /// Every kind, in registration order.
            pub const ALL: &[LeaseKind] = &[$(LeaseKind::$variant),+];
        }

        string_forms!(LeaseKind, "lease kind", { $($variant => $text),+ });
    };
}

impl LeaseKind {
    /// The kinds the broker signs itself (one record each, nothing
    /// upstream): reconciliation and retention never look at their leases.
    pub const LOCAL: &[LeaseKind] = &[LeaseKind::Jwt, LeaseKind::X509Svid, LeaseKind::JwtSvid];
}

/// [`LeaseKind::LOCAL`] as the lease queries and their index (migration 10)
/// spell it.
pub const UPSTREAM_KIND_SQL: &str = "kind NOT IN ('jwt', 'x509_svid', 'jwt_svid')";

/// How a lease ends before it expires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Revocation {
    /// Relying parties that introspect see the revocation; offline
    /// verifiers honour only the expiry (JWTs).
    IntrospectionOnly,
    /// Revoked upstream and confirmed by a lookup (Vault).
    Effective,
    /// Cannot be revoked one by one: an operator attaches a deny policy
    /// (STS sessions).
    Advisory,
}

/// A stored lease kind or revocation that this broker does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownForm {
    /// Which closed set.
    pub what: &'static str,
    /// The stored text.
    pub value: String,
}

macro_rules! string_forms {
    ($ty:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The one string form (log records, the store, the API).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $ty {
            type Err = UnknownForm;

            fn from_str(s: &str) -> Result<Self, UnknownForm> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(UnknownForm { what: $what, value: s.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

lease_kinds!(lease_kind_enum);
string_forms!(Revocation, "revocation", {
    IntrospectionOnly => "introspection_only",
    Effective => "effective",
    Advisory => "advisory",
});

#[cfg(test)]
mod tests {
    #[test]
    fn the_upstream_predicate_names_every_local_kind() {
        for kind in LeaseKind::LOCAL {
            assert!(UPSTREAM_KIND_SQL.contains(&format!("'{kind}'")), "{kind}");
        }
        assert_eq!(
            UPSTREAM_KIND_SQL.matches('\'').count(),
            2 * LeaseKind::LOCAL.len()
        );
    }

    use super::*;

    #[test]
    fn each_closed_set_has_one_string_form() {
        let forms: std::collections::HashSet<_> =
            LeaseKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(forms.len(), LeaseKind::ALL.len(), "one string form each");
        for &kind in LeaseKind::ALL {
            assert_eq!(kind.as_str().parse::<LeaseKind>(), Ok(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(kind.as_str())
            );
        }
        for r in [
            Revocation::IntrospectionOnly,
            Revocation::Effective,
            Revocation::Advisory,
        ] {
            assert_eq!(r.as_str().parse::<Revocation>(), Ok(r));
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::from(r.as_str())
            );
        }
        let unknown = "gcp".parse::<LeaseKind>().unwrap_err();
        assert_eq!(unknown.to_string(), "unknown lease kind \"gcp\"");
    }
}
