//! JWT signing keys, JWKS, and key rotation.
//!
//! ES256 is the default (what AWS web identity federation and most verifiers
//! accept); EdDSA (Ed25519) is the option. The parsed key pair is cached in
//! [`SigningKey`], and the encoded header is computed once per key, so a
//! signature costs one JSON serialization, two base64 encodings and one
//! signing operation. `kid` is the key's RFC 7638 JWK thumbprint.
//!
//! Rotation ([`JwtKeySet::rotate`]) keeps each retired public key in the JWKS
//! until `retired_at + max_token_ttl`, and [`JwtKeySet::sign`] refuses tokens
//! that live longer than `max_token_ttl`, so every token a key signed expires
//! before its key leaves the JWKS.
//!
//! On disk (`JwtKeySet::create` / `load`):
//!
//! ```text
//! <dir>/state.json   {"active": {"kid", "alg"}, "retired": [{"jwk", "retain_until"}]}
//! <dir>/<kid>.key    the active private key, PKCS#8 PEM, 0600
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{CertsError, Result};
use crate::fs;
use crate::svid::PrivateKey;

/// A JWS signature algorithm Mintguard signs with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// ECDSA P-256 with SHA-256 (the default).
    #[default]
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519.
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl JwtAlgorithm {
    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A public key in JWK form (RFC 7517), as served in the JWKS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// `EC` or `OKP`.
    pub kty: String,
    /// `P-256` or `Ed25519`.
    pub crv: String,
    /// The x coordinate (EC) or the public key (OKP), base64url.
    pub x: String,
    /// The y coordinate (EC only), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// The key id: the RFC 7638 thumbprint.
    pub kid: String,
    /// The algorithm.
    pub alg: JwtAlgorithm,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
}

impl Jwk {
    /// The RFC 7638 SHA-256 thumbprint of the required members, base64url.
    fn thumbprint(kty: &str, crv: &str, x: &str, y: Option<&str>) -> String {
        // Required members in lexicographic order, no whitespace (RFC 7638 §3.2).
        let canonical = match y {
            Some(y) => format!(r#"{{"crv":"{crv}","kty":"{kty}","x":"{x}","y":"{y}"}}"#),
            None => format!(r#"{{"crv":"{crv}","kty":"{kty}","x":"{x}"}}"#),
        };
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
        B64.encode(digest.as_ref())
    }
}

impl Jwk {
    /// Verifies a compact JWS signed by this key and returns its payload.
    ///
    /// The header's `alg` must be this key's and its `kid`, when present, this
    /// key's; nothing in the header is followed (`jku`, `x5u`, `jwk` are
    /// ignored). This checks the signature only, not `exp` or other claims.
    pub fn verify(&self, token: &str) -> Result<serde_json::Value> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};
        let bad = |why: &str| CertsError::InvalidKey(format!("jws: {why}"));
        if token.len() > MAX_JWS_LEN {
            return Err(CertsError::LimitExceeded {
                kind: "JWS length",
                limit: MAX_JWS_LEN,
                actual: token.len(),
            });
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("not a compact JWS"));
        };
        let header: serde_json::Value =
            serde_json::from_slice(&B64.decode(h).map_err(|_| bad("header is not base64url"))?)
                .map_err(|_| bad("header is not JSON"))?;
        if header.get("alg").and_then(|a| a.as_str()) != Some(self.alg.as_str()) {
            return Err(bad("algorithm mismatch"));
        }
        if header
            .get("kid")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k != self.kid)
        {
            return Err(bad("kid mismatch"));
        }
        let signature = B64
            .decode(sig)
            .map_err(|_| bad("signature is not base64url"))?;
        let message = &token.as_bytes()[..h.len() + 1 + p.len()];
        let x = B64.decode(&self.x).map_err(|_| bad("bad key"))?;
        let ok = match self.alg {
            JwtAlgorithm::Es256 => {
                let y = B64
                    .decode(self.y.as_deref().unwrap_or_default())
                    .map_err(|_| bad("bad key"))?;
                let mut point = Vec::with_capacity(65);
                point.push(4u8);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, &signature)
                    .is_ok()
            }
            JwtAlgorithm::EdDsa => UnparsedPublicKey::new(&ED25519, x)
                .verify(message, &signature)
                .is_ok(),
        };
        if !ok {
            return Err(bad("bad signature"));
        }
        serde_json::from_slice(&B64.decode(p).map_err(|_| bad("payload is not base64url"))?)
            .map_err(|_| bad("payload is not JSON"))
    }
}

/// The longest JWS [`Jwk::verify`] accepts, in bytes.
pub const MAX_JWS_LEN: usize = 16 * 1024;

/// A JSON Web Key Set, as served at `/.well-known/jwks.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

enum Signer {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// A private signing key with its parsed key pair, public JWK and encoded header.
pub struct SigningKey {
    alg: JwtAlgorithm,
    signer: Signer,
    private: PrivateKey,
    jwk: Jwk,
    header_b64: String,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.jwk.kid)
            .field("private", &self.private)
            .finish()
    }
}

impl SigningKey {
    /// Generates a new key.
    pub fn generate(alg: JwtAlgorithm) -> Result<Self> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            JwtAlgorithm::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            JwtAlgorithm::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
        }
        .map_err(|_| CertsError::Signing)?;
        Self::from_pkcs8(alg, PrivateKey::from_pkcs8_der(pkcs8.as_ref().to_vec()))
    }

    /// Loads a PKCS#8 key for `alg`.
    pub fn from_pkcs8(alg: JwtAlgorithm, private: PrivateKey) -> Result<Self> {
        let bad =
            |e: aws_lc_rs::error::KeyRejected| CertsError::InvalidKey(format!("{alg} key: {e}"));
        let (signer, jwk) = match alg {
            JwtAlgorithm::Es256 => {
                let pair =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, private.der())
                        .map_err(bad)?;
                // Uncompressed point: 0x04 || x (32) || y (32).
                let point = pair.public_key().as_ref();
                if point.len() != 65 || point[0] != 4 {
                    return Err(CertsError::InvalidKey(
                        "unexpected P-256 public key encoding".into(),
                    ));
                }
                let (x, y) = (B64.encode(&point[1..33]), B64.encode(&point[33..]));
                let kid = Jwk::thumbprint("EC", "P-256", &x, Some(&y));
                let jwk = Jwk {
                    kty: "EC".into(),
                    crv: "P-256".into(),
                    x,
                    y: Some(y),
                    kid,
                    alg,
                    use_: "sig".into(),
                };
                (Signer::Es256(pair), jwk)
            }
            JwtAlgorithm::EdDsa => {
                let pair =
                    Ed25519KeyPair::from_pkcs8_maybe_unchecked(private.der()).map_err(bad)?;
                let x = B64.encode(pair.public_key().as_ref());
                let kid = Jwk::thumbprint("OKP", "Ed25519", &x, None);
                let jwk = Jwk {
                    kty: "OKP".into(),
                    crv: "Ed25519".into(),
                    x,
                    y: None,
                    kid,
                    alg,
                    use_: "sig".into(),
                };
                (Signer::EdDsa(pair), jwk)
            }
        };
        let header = format!(r#"{{"alg":"{}","kid":"{}","typ":"JWT"}}"#, alg, jwk.kid);
        Ok(Self {
            alg,
            signer,
            private,
            header_b64: B64.encode(header),
            jwk,
            rng: SystemRandom::new(),
        })
    }

    /// The key id (RFC 7638 thumbprint).
    pub fn kid(&self) -> &str {
        &self.jwk.kid
    }

    /// The algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.alg
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The private key (PKCS#8).
    pub fn private_key(&self) -> &PrivateKey {
        &self.private
    }

    /// Signs `claims` as a compact JWS with header `{"alg","kid","typ":"JWT"}`.
    ///
    /// This checks nothing about the claims; [`JwtKeySet::sign`] bounds their
    /// lifetime.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String> {
        let payload = serde_json::to_vec(claims)
            .map_err(|e| CertsError::InvalidKey(format!("claims: {e}")))?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        B64.encode_string(&payload, &mut token);
        let signature = match &self.signer {
            Signer::Es256(pair) => pair
                .sign(&self.rng, token.as_bytes())
                .map_err(|_| CertsError::Signing)?,
            Signer::EdDsa(pair) => pair.sign(token.as_bytes()),
        };
        token.push('.');
        B64.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

/// A token's lifetime, which [`JwtKeySet::sign`] checks against `max_token_ttl`.
pub trait Expiring {
    /// The `exp` claim, seconds since the Unix epoch.
    fn expires_at(&self) -> i64;
}

/// Settings of a [`JwtKeySet`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JwtSettings {
    /// The algorithm of new keys.
    pub algorithm: JwtAlgorithm,
    /// The longest token lifetime signed; also how long a retired key stays in
    /// the JWKS. Default 1 hour.
    pub max_token_ttl: Duration,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            algorithm: JwtAlgorithm::Es256,
            max_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// A retired public key, in the JWKS until `retain_until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredKey {
    /// The public key.
    pub jwk: Jwk,
    /// When it leaves the JWKS.
    #[serde(with = "time::serde::rfc3339")]
    pub retain_until: OffsetDateTime,
}

#[derive(Serialize, Deserialize)]
struct ActiveState {
    kid: String,
    alg: JwtAlgorithm,
    /// When it became active (absent in sets written before it was kept).
    #[serde(default, with = "time::serde::rfc3339::option")]
    activated_at: Option<OffsetDateTime>,
}

#[derive(Serialize, Deserialize)]
struct State {
    active: ActiveState,
    retired: Vec<RetiredKey>,
}

/// The broker's JWT keys: one active signing key and the retired public keys
/// still in their retention window.
#[derive(Debug)]
pub struct JwtKeySet {
    settings: JwtSettings,
    active: SigningKey,
    active_since: OffsetDateTime,
    retired: Vec<RetiredKey>,
    dir: Option<PathBuf>,
}

impl JwtKeySet {
    /// A key set in memory only (tests, demos).
    pub fn in_memory(settings: JwtSettings) -> Result<Self> {
        Ok(Self {
            settings,
            active: SigningKey::generate(settings.algorithm)?,
            active_since: OffsetDateTime::now_utc(),
            retired: Vec::new(),
            dir: None,
        })
    }

    /// Creates a key set and writes it to `dir` (created 0700 if missing).
    pub fn create(dir: &Path, settings: JwtSettings) -> Result<Self> {
        let mut set = Self::in_memory(settings)?;
        set.dir = Some(dir.to_path_buf());
        fs::create_private_dir(dir)?;
        set.write_key(&set.active)?;
        set.write_state()?;
        Ok(set)
    }

    /// Loads a key set from `dir`, refusing a key file readable by others.
    pub fn load(dir: &Path, settings: JwtSettings) -> Result<Self> {
        let path = dir.join("state.json");
        let bad = |reason: String| CertsError::BadState {
            path: path.clone(),
            reason,
        };
        let state: State =
            serde_json::from_slice(&fs::read_public(&path)?).map_err(|e| bad(e.to_string()))?;
        let kid = &state.active.kid;
        if kid.is_empty()
            || !kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(format!("bad kid {kid:?}")));
        }
        let pem = zeroize::Zeroizing::new(
            String::from_utf8(fs::read_private(&dir.join(format!("{kid}.key")))?)
                .map_err(|_| bad("key file is not UTF-8 PEM".into()))?,
        );
        let active = SigningKey::from_pkcs8(state.active.alg, PrivateKey::from_pem(&pem)?)?;
        if active.kid() != kid {
            return Err(bad(format!(
                "key file {kid}.key holds key {}",
                active.kid()
            )));
        }
        Ok(Self {
            settings,
            active,
            // A set written before activation times were kept counts from now.
            active_since: state
                .active
                .activated_at
                .unwrap_or_else(OffsetDateTime::now_utc),
            retired: state.retired,
            dir: Some(dir.to_path_buf()),
        })
    }

    /// Loads the key set from `dir`, or creates it there when `dir` holds none.
    pub fn load_or_create(dir: &Path, settings: JwtSettings) -> Result<Self> {
        if dir.join("state.json").exists() {
            Self::load(dir, settings)
        } else {
            Self::create(dir, settings)
        }
    }

    /// The active signing key.
    pub fn active(&self) -> &SigningKey {
        &self.active
    }

    /// The settings.
    pub fn settings(&self) -> JwtSettings {
        self.settings
    }

    /// When the active key became active.
    pub fn active_since(&self) -> OffsetDateTime {
        self.active_since
    }

    /// Rotates if the active key has been active for `every` or longer (so
    /// replicas sharing the key directory rotate once between them);
    /// whether it rotated.
    pub fn rotate_if_due(&mut self, now: OffsetDateTime, every: Duration) -> Result<bool> {
        let every = time::Duration::try_from(every).unwrap_or(time::Duration::MAX);
        if now - self.active_since < every {
            return Ok(false);
        }
        self.rotate(now)?;
        Ok(true)
    }

    /// Signs `claims` with the active key, refusing a token that expires more
    /// than `max_token_ttl` after `now` (it could outlive its key's retention).
    pub fn sign<T: Serialize + Expiring>(&self, claims: &T, now: OffsetDateTime) -> Result<String> {
        let max = now.unix_timestamp()
            + i64::try_from(self.settings.max_token_ttl.as_secs()).unwrap_or(i64::MAX / 2);
        if claims.expires_at() > max {
            return Err(CertsError::InvalidTtl(format!(
                "token expires {}s after now, past max_token_ttl {}s",
                claims.expires_at() - now.unix_timestamp(),
                self.settings.max_token_ttl.as_secs()
            )));
        }
        self.active.sign(claims)
    }

    /// The JWKS as of `now`: the active key and retired keys still retained.
    pub fn jwks(&self, now: OffsetDateTime) -> Jwks {
        let mut keys = vec![self.active.jwk.clone()];
        keys.extend(
            self.retired
                .iter()
                .filter(|r| r.retain_until > now)
                .map(|r| r.jwk.clone()),
        );
        Jwks { keys }
    }

    /// Replaces the active key with a new one of `settings.algorithm`; the old
    /// public key stays in the JWKS until `now + max_token_ttl`.
    pub fn rotate(&mut self, now: OffsetDateTime) -> Result<()> {
        let next = SigningKey::generate(self.settings.algorithm)?;
        self.write_key(&next)?;
        let old = std::mem::replace(&mut self.active, next);
        self.active_since = now;
        let ttl = time::Duration::seconds(
            i64::try_from(self.settings.max_token_ttl.as_secs()).unwrap_or(i64::MAX / 2),
        );
        self.retired.push(RetiredKey {
            jwk: old.jwk.clone(),
            retain_until: now + ttl,
        });
        self.retired.retain(|r| r.retain_until > now);
        self.write_state()?;
        if let Some(dir) = &self.dir {
            // The retired private key is no longer needed: only its public JWK is served.
            let path = dir.join(format!("{}.key", old.kid()));
            std::fs::remove_file(&path).map_err(|source| CertsError::Io { path, source })?;
        }
        Ok(())
    }

    fn write_key(&self, key: &SigningKey) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        fs::write_private(
            &dir.join(format!("{}.key", key.kid())),
            key.private.to_pem().as_bytes(),
        )
    }

    fn write_state(&self) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        let state = State {
            active: ActiveState {
                kid: self.active.kid().to_owned(),
                alg: self.active.alg,
                activated_at: Some(self.active_since),
            },
            retired: self.retired.clone(),
        };
        let json = serde_json::to_vec_pretty(&state).map_err(|e| CertsError::BadState {
            path: dir.join("state.json"),
            reason: e.to_string(),
        })?;
        fs::write_public(&dir.join("state.json"), &json)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Claims {
        sub: &'static str,
        exp: i64,
    }

    impl Expiring for Claims {
        fn expires_at(&self) -> i64 {
            self.exp
        }
    }

    #[test]
    fn kid_is_the_rfc7638_thumbprint() {
        // RFC 7638 §3.1 uses an RSA key; check the EC form against an
        // independently computed value instead: the canonical JSON is hashed.
        let kid = Jwk::thumbprint("EC", "P-256", "x", Some("y"));
        let expected = B64.encode(
            aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                br#"{"crv":"P-256","kty":"EC","x":"x","y":"y"}"#,
            )
            .as_ref(),
        );
        assert_eq!(kid, expected);
    }

    #[test]
    fn header_names_alg_and_kid() {
        for alg in [JwtAlgorithm::Es256, JwtAlgorithm::EdDsa] {
            let key = SigningKey::generate(alg).unwrap();
            let token = key.sign(&Claims { sub: "s", exp: 1 }).unwrap();
            let header = token.split('.').next().unwrap();
            let header: serde_json::Value =
                serde_json::from_slice(&B64.decode(header).unwrap()).unwrap();
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["kid"], key.kid());
            assert_eq!(token.split('.').count(), 3);
        }
    }

    #[test]
    fn jwk_verifies_its_own_signatures_only() {
        for alg in [JwtAlgorithm::Es256, JwtAlgorithm::EdDsa] {
            let key = SigningKey::generate(alg).unwrap();
            let other = SigningKey::generate(alg).unwrap();
            let token = key.sign(&Claims { sub: "s", exp: 7 }).unwrap();
            assert_eq!(key.jwk().verify(&token).unwrap()["exp"], 7);
            assert!(other.jwk().verify(&token).is_err());
            let mut tampered = token.clone();
            tampered.insert(token.find('.').unwrap() + 2, 'A');
            assert!(key.jwk().verify(&tampered).is_err());
            assert!(key.jwk().verify("a.b").is_err());
        }
    }

    #[test]
    fn refuses_tokens_outliving_retention() {
        let set = JwtKeySet::in_memory(JwtSettings::default()).unwrap();
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let ok = Claims {
            sub: "s",
            exp: 1_000_000 + 3600,
        };
        let too_long = Claims {
            sub: "s",
            exp: 1_000_000 + 3601,
        };
        assert!(set.sign(&ok, now).is_ok());
        assert!(matches!(
            set.sign(&too_long, now),
            Err(CertsError::InvalidTtl(_))
        ));
    }

    #[test]
    fn rotation_is_due_by_the_persisted_activation_time() {
        let dir = tempfile::tempdir().unwrap();
        let settings = JwtSettings::default();
        let t0 = OffsetDateTime::now_utc();
        let mut a = JwtKeySet::create(dir.path(), settings).unwrap();
        let every = Duration::from_secs(3600);
        assert!(!a.rotate_if_due(t0, every).unwrap());
        let later = t0 + time::Duration::hours(2);
        assert!(a.rotate_if_due(later, every).unwrap());
        // A replica reading the same directory sees the rotation and does
        // not rotate again.
        let mut b = JwtKeySet::load(dir.path(), settings).unwrap();
        assert_eq!(b.active().kid(), a.active().kid());
        assert_eq!(b.active_since(), later);
        assert!(
            !b.rotate_if_due(later + time::Duration::minutes(5), every)
                .unwrap()
        );
    }

    #[test]
    fn persisted_set_reloads_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwt");
        let now = OffsetDateTime::from_unix_timestamp(1_000_000).unwrap();
        let mut set = JwtKeySet::create(&path, JwtSettings::default()).unwrap();
        let first = set.active().kid().to_owned();
        set.rotate(now).unwrap();
        let reloaded = JwtKeySet::load(&path, JwtSettings::default()).unwrap();
        assert_eq!(reloaded.active().kid(), set.active().kid());
        let kids: Vec<_> = reloaded.jwks(now).keys.into_iter().map(|k| k.kid).collect();
        assert_eq!(kids, vec![set.active().kid().to_owned(), first.clone()]);
        let later = now + time::Duration::seconds(3601);
        assert_eq!(reloaded.jwks(later).keys.len(), 1);
        assert!(!path.join(format!("{first}.key")).exists());
    }

    #[test]
    fn load_refuses_world_readable_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let set = JwtKeySet::create(dir.path(), JwtSettings::default()).unwrap();
        let key = dir.path().join(format!("{}.key", set.active().kid()));
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            JwtKeySet::load(dir.path(), JwtSettings::default()),
            Err(CertsError::InsecureKeyFile { mode: 0o644, .. })
        ));
    }
}
