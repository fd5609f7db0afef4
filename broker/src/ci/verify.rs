//! OIDC token validation for CI issuers: discovery and JWKS fetched over
//! HTTPS (plain HTTP only for a loopback issuer that allows it), cached and
//! refreshed on an unknown `kid` or an old cache, attempted at most every
//! `refresh_min_interval` whether it succeeds or not, by one request at a
//! time while the others use the cached keys;
//! asymmetric algorithms only, and only the one the key allows; `iss`,
//! `exp`, `nbf`, `iat` with a small skew; `jku`, `x5u`, `x5c`, `jwk` and
//! `crit` headers refused, never followed; size limits on the token and on
//! every claim.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::config::{CiConfig, IssuerConfig};

/// Why a token was refused: a reason code and a message (401 unless said).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenError {
    /// Reason code.
    pub code: &'static str,
    /// Detail.
    pub message: String,
    /// 503 when the issuer could not be reached (not the token's fault).
    pub unavailable: bool,
}

fn refuse(code: &'static str, message: impl Into<String>) -> TokenError {
    TokenError {
        code,
        message: message.into(),
        unavailable: false,
    }
}

/// Most keys kept per issuer.
const MAX_KEYS: usize = 64;
/// Largest discovery document or JWKS, bytes.
const MAX_DOC: usize = 512 * 1024;
/// Most top-level claims; longest claim string; deepest nesting.
const MAX_CLAIMS: usize = 128;
const MAX_CLAIM_LEN: usize = 4096;
const MAX_DEPTH: usize = 4;
/// Algorithms accepted (asymmetric only).
const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// One issuer's key cache.
#[derive(Default)]
struct IssuerKeys {
    /// The keys, when they were fetched, and when a fetch was last tried
    /// (successful or not): held only to read or swap, never across a fetch.
    state: Mutex<KeyState>,
    /// Taken by the one request that fetches.
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KeyState {
    keys: HashMap<String, Value>,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

/// The floor between attempts while no key was ever fetched (a broker
/// started while its issuer was down must not wait out a long interval).
const FIRST_FETCH_RETRY: Duration = Duration::from_secs(5);

impl KeyState {
    fn may_attempt(&self, min_interval: Duration) -> bool {
        let floor = match self.fetched {
            None => min_interval.min(FIRST_FETCH_RETRY),
            Some(_) => min_interval,
        };
        self.attempted.is_none_or(|t| t.elapsed() >= floor)
    }
}

/// Verified claims of a CI token.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The issuer URL.
    pub issuer: String,
    /// All claims.
    pub claims: Value,
    /// `jti`.
    pub jti: String,
    /// `exp`, seconds.
    pub exp: i64,
}

/// The CI token verifier with its per-issuer key caches.
#[derive(Default)]
pub struct CiVerifier {
    cache: Mutex<HashMap<String, Arc<IssuerKeys>>>,
}

fn b64(part: &str) -> Result<Vec<u8>, TokenError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| refuse("malformed_token", "a token part is not base64url"))
}

fn depth_and_sizes(v: &Value, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    match v {
        Value::String(s) => s.len() <= MAX_CLAIM_LEN,
        Value::Array(a) => a.len() <= MAX_CLAIMS && a.iter().all(|x| depth_and_sizes(x, depth + 1)),
        Value::Object(o) => {
            o.len() <= MAX_CLAIMS
                && o.iter().all(|(k, x)| {
                    k.len() <= 256
                        && !k.starts_with(crate::log::jcs::RESERVED_KEY_PREFIX)
                        && depth_and_sizes(x, depth + 1)
                })
        }
        _ => true,
    }
}

/// A token's header and claims before any signature is checked: the
/// untrusted parse, bounded (sizes, nesting, claim types), that picks the
/// issuer and key. Fuzzed (`fuzz/fuzz_targets/ci_token.rs`).
#[derive(Debug)]
pub struct Unverified {
    /// The header's `alg`, one of the accepted algorithms.
    pub alg: String,
    /// The header's `kid`.
    pub kid: String,
    /// The claims, an object within the limits.
    pub claims: Value,
}

impl Unverified {
    /// Parses `token` (its length already bounded by the caller).
    pub fn parse(token: &str) -> Result<Self, TokenError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [header, payload, _sig] = parts.as_slice() else {
            return Err(refuse("malformed_token", "a JWT has three parts"));
        };
        let header: Value = serde_json::from_slice(&b64(header)?)
            .map_err(|_| refuse("malformed_token", "the header is not JSON"))?;
        for forbidden in ["jku", "x5u", "x5c", "jwk", "crit"] {
            if header.get(forbidden).is_some() {
                return Err(refuse(
                    "forbidden_header",
                    format!("header {forbidden:?} is not accepted"),
                ));
            }
        }
        let alg = header["alg"].as_str().unwrap_or_default();
        if !ALGORITHMS.contains(&alg) {
            return Err(refuse(
                "bad_algorithm",
                format!("algorithm {:?} is not accepted", crate::http::excerpt(alg)),
            ));
        }
        let kid = header["kid"].as_str().unwrap_or_default();
        if kid.is_empty()
            || kid.len() > 128
            || !kid
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(refuse("bad_kid", "kid must be 1..=128 of [A-Za-z0-9._-]"));
        }
        let unverified: Value = serde_json::from_slice(&b64(payload)?)
            .map_err(|_| refuse("malformed_token", "the payload is not JSON"))?;
        if !unverified.is_object() || !depth_and_sizes(&unverified, 0) {
            return Err(refuse(
                "bad_claims",
                "claims exceed the size or nesting limits, or use a name the JSON reader reserves",
            ));
        }
        for (claim, number) in [
            ("exp", true),
            ("nbf", true),
            ("iat", true),
            ("iss", false),
            ("jti", false),
        ] {
            let v = &unverified[claim];
            let ok = v.is_null()
                || if number {
                    v.is_i64() || v.is_u64()
                } else {
                    v.is_string()
                };
            if !ok {
                let kind = if number { "a number" } else { "a string" };
                return Err(refuse("bad_claims", format!("{claim} must be {kind}")));
            }
        }
        if !matches!(
            unverified["aud"],
            Value::Null | Value::String(_) | Value::Array(_)
        ) {
            return Err(refuse("bad_claims", "aud must be a string or an array"));
        }
        Ok(Self {
            alg: alg.to_owned(),
            kid: kid.to_owned(),
            claims: unverified,
        })
    }
}

impl CiVerifier {
    /// Verifies `token` against the allowlisted issuer it names.
    pub async fn verify(
        &self,
        ci: &CiConfig,
        token: &str,
        now_s: i64,
    ) -> Result<Verified, TokenError> {
        if token.len() > ci.max_token_bytes() {
            return Err(refuse(
                "token_too_large",
                format!("tokens are limited to {} bytes", ci.max_token_bytes()),
            ));
        }
        let Unverified {
            alg,
            kid,
            claims: unverified,
        } = Unverified::parse(token)?;
        let (alg, kid) = (alg.as_str(), kid.as_str());
        let iss = unverified["iss"].as_str().unwrap_or_default();
        let issuer = ci.issuers.iter().find(|i| i.url == iss).ok_or_else(|| {
            refuse(
                "unknown_issuer",
                format!("issuer {:?} is not allowed", crate::http::excerpt(iss)),
            )
        })?;
        let jwk = self.key(issuer, kid).await?;
        if jwk
            .get("alg")
            .and_then(Value::as_str)
            .is_some_and(|a| a != alg)
        {
            return Err(refuse(
                "bad_algorithm",
                format!("key {kid} is for {}, not {alg}", jwk["alg"]),
            ));
        }
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwk)
            .map_err(|e| refuse("bad_key", format!("issuer key {kid}: {e}")))?;
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
            .map_err(|e| refuse("bad_key", format!("issuer key {kid}: {e}")))?;
        let algorithm: jsonwebtoken::Algorithm = alg
            .parse()
            .map_err(|_| refuse("bad_algorithm", alg.to_owned()))?;
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.leeway = ci.skew().as_secs();
        validation.validate_nbf = true;
        validation.validate_aud = false; // per policy, below
        validation.set_issuer(&[issuer.url.as_str()]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => refuse("token_expired", "the token has expired"),
                    K::ImmatureSignature => refuse("token_not_yet_valid", "nbf is in the future"),
                    K::InvalidSignature => refuse("bad_signature", "the signature does not verify"),
                    K::InvalidIssuer => refuse("unknown_issuer", "iss does not match"),
                    K::MissingRequiredClaim(c) => {
                        refuse("bad_claims", format!("missing claim {c}"))
                    }
                    _ => refuse("invalid_token", e.to_string()),
                }
            })?
            .claims;
        let skew = i64::try_from(ci.skew().as_secs()).unwrap_or(60);
        let iat = claims["iat"]
            .as_i64()
            .ok_or_else(|| refuse("bad_claims", "iat must be a number"))?;
        if iat > now_s + skew {
            return Err(refuse("token_not_yet_valid", "iat is in the future"));
        }
        let exp = claims["exp"]
            .as_i64()
            .ok_or_else(|| refuse("bad_claims", "exp must be a number"))?;
        let jti = claims["jti"]
            .as_str()
            .filter(|j| !j.is_empty() && j.len() <= 256)
            .ok_or_else(|| {
                refuse(
                    "bad_claims",
                    "jti (1..=256 bytes) is required for replay protection",
                )
            })?
            .to_owned();
        Ok(Verified {
            issuer: issuer.url.clone(),
            claims,
            jti,
            exp,
        })
    }

    /// The JWK for `kid`, refetching the JWKS when it is unknown or the
    /// cache is older than `max_cache_age`. A fetch is tried at most every
    /// `refresh_min_interval` (failures included: a down issuer is not asked
    /// on every request) and by one request at a time; a request whose key
    /// is cached never waits for it (an old cache is refreshed by whoever
    /// finds it free, the others use it meanwhile).
    async fn key(&self, issuer: &IssuerConfig, kid: &str) -> Result<Value, TokenError> {
        let poisoned = || refuse("unavailable", "key cache poisoned");
        let slot = {
            let mut cache = self.cache.lock().map_err(|_| poisoned())?;
            cache.entry(issuer.url.clone()).or_default().clone()
        };
        let min_interval = issuer
            .refresh_min_interval
            .map_or(Duration::from_secs(30), |d| d.0);
        let max_age = issuer
            .max_cache_age
            .map_or(Duration::from_secs(3600), |d| d.0);
        let (cached, stale) = {
            let state = slot.state.lock().map_err(|_| poisoned())?;
            (
                state.keys.get(kid).cloned(),
                state.fetched.is_none_or(|t| t.elapsed() >= max_age),
            )
        };
        let _refreshing = match (&cached, stale) {
            (Some(key), false) => return Ok(key.clone()),
            // Known but old: refreshed only if no one else is at it.
            (Some(key), true) => match slot.refresh.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(key.clone()),
            },
            // Unknown: wait for a refresh in progress, which may bring it.
            (None, _) => slot.refresh.lock().await,
        };
        {
            let mut state = slot.state.lock().map_err(|_| poisoned())?;
            let fresh = state.fetched.is_some_and(|t| t.elapsed() < max_age);
            let known = state.keys.get(kid).cloned();
            match known {
                // Refreshed by another request meanwhile.
                Some(key) if fresh => return Ok(key),
                _ if state.may_attempt(min_interval) => {}
                Some(key) => return Ok(key),
                None if state.fetched.is_none() => {
                    return Err(TokenError {
                        code: "issuer_unavailable",
                        message: format!(
                            "the issuer's keys could not be fetched; retried at most every {:?}",
                            min_interval.min(FIRST_FETCH_RETRY)
                        ),
                        unavailable: true,
                    });
                }
                None => {
                    return Err(refuse(
                        "unknown_kid",
                        format!("issuer has no key {kid:?} (its keys were fetched moments ago)"),
                    ));
                }
            }
            state.attempted = Some(Instant::now());
        }
        let fetched = fetch_jwks(issuer).await;
        let mut state = slot.state.lock().map_err(|_| poisoned())?;
        // The floor runs from the attempt's end: requests that waited behind
        // a slow failure get its answer, not a fetch each of their own.
        state.attempted = Some(Instant::now());
        match fetched {
            Ok(fresh) => {
                state.keys = fresh;
                state.fetched = Some(Instant::now());
            }
            Err(e) if state.keys.is_empty() => {
                return Err(TokenError {
                    code: "issuer_unavailable",
                    message: e,
                    unavailable: true,
                });
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer.url, %e, "JWKS refresh failed; using the cached keys");
            }
        }
        state
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| refuse("unknown_kid", format!("issuer has no key {kid:?}")))
    }
}

async fn fetch_jwks(issuer: &IssuerConfig) -> Result<HashMap<String, Value>, String> {
    let base = issuer.url.trim_end_matches('/');
    let discovery = fetch_json(issuer, &format!("{base}/.well-known/openid-configuration")).await?;
    let jwks_uri = discovery["jwks_uri"]
        .as_str()
        .ok_or("the discovery document has no jwks_uri")?;
    check_jwks_host(issuer, jwks_uri)?;
    let jwks = fetch_json(issuer, jwks_uri).await?;
    let mut keys = HashMap::new();
    for k in jwks["keys"]
        .as_array()
        .ok_or("the JWKS has no keys array")?
        .iter()
        .take(MAX_KEYS)
    {
        let usable = k["use"].as_str().is_none_or(|u| u == "sig")
            && matches!(k["kty"].as_str(), Some("RSA" | "EC" | "OKP"));
        if let (true, Some(kid)) = (usable, k["kid"].as_str()) {
            keys.insert(kid.to_owned(), k.clone());
        }
    }
    Ok(keys)
}

/// Keys come from the issuer's own host (or one its config lists in
/// `jwks_hosts`): a discovery document cannot send the broker elsewhere.
fn check_jwks_host(issuer: &IssuerConfig, jwks_uri: &str) -> Result<(), String> {
    let host = |url: &str| {
        url::Url::parse(url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    };
    let (Some(own), Some(theirs)) = (host(&issuer.url), host(jwks_uri)) else {
        return Err(format!("jwks_uri {jwks_uri:?} has no host"));
    };
    if theirs == own
        || issuer
            .jwks_hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(&theirs))
    {
        Ok(())
    } else {
        Err(format!(
            "jwks_uri {jwks_uri:?} is not on the issuer's host {own:?} (list its host in jwks_hosts to allow it)"
        ))
    }
}

/// GETs a JSON document from the issuer's host (the scheme rules of the
/// issuer URL apply to every URL fetched for it).
async fn fetch_json(issuer: &IssuerConfig, url: &str) -> Result<Value, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_owned();
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| format!("{url}: no port"))?;
    let insecure_ok = issuer.allow_insecure_loopback
        && matches!(parsed.host(), Some(url::Host::Ipv4(a)) if a.is_loopback());
    let path = match parsed.query() {
        Some(q) => format!("{}?{q}", parsed.path()),
        None => parsed.path().to_owned(),
    };
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, &host)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let response = match parsed.scheme() {
            "https" => {
                let config = crate::outbound::tls_config(issuer.ca_file.as_deref())?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|e| format!("{url}: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("{url}: TLS: {e}"))?;
                crate::outbound::send(TokioIo::new(tls), request, MAX_DOC).await?
            }
            "http" if insecure_ok => {
                crate::outbound::send(TokioIo::new(tcp), request, MAX_DOC).await?
            }
            _ => return Err(format!("{url}: https required")),
        };
        Ok::<_, String>(response)
    };
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| format!("{url}: no answer within 5 s"))??;
    if status != 200 {
        return Err(format!("{url}: HTTP {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A local OIDC issuer serving one key, `k1`; it counts the documents
    /// asked for and, while `hang` is set, never answers.
    async fn local_issuer(hang: Arc<AtomicBool>, fetches: Arc<AtomicUsize>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let serve = |doc: Value| {
            let (hang, fetches) = (hang.clone(), fetches.clone());
            move || async move {
                fetches.fetch_add(1, Ordering::SeqCst);
                if hang.load(Ordering::SeqCst) {
                    std::future::pending::<()>().await;
                }
                axum::Json(doc)
            }
        };
        let discovery = serde_json::json!({"issuer": url, "jwks_uri": format!("{url}/jwks")});
        let jwks = serde_json::json!({"keys": [{"kid": "k1", "kty": "EC", "use": "sig"}]});
        let app = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(serve(discovery)),
            )
            .route("/jwks", axum::routing::get(serve(jwks)));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    fn config(url: &str, min_interval: &str, max_age: &str) -> IssuerConfig {
        toml::from_str(&format!(
            r#"
            url = "{url}"
            allow_insecure_loopback = true
            refresh_min_interval = "{min_interval}"
            max_cache_age = "{max_age}"
            "#
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn a_refresh_is_tried_at_most_once_per_interval_even_when_it_fails() {
        let (hang, fetches) = (Arc::default(), Arc::new(AtomicUsize::new(0)));
        let url = local_issuer(Arc::clone(&hang), fetches.clone()).await;
        // Every request finds the cache old; a refresh may be tried hourly.
        let issuer = config(&url, "1h", "0s");
        let verifier = CiVerifier::default();
        assert!(verifier.key(&issuer, "k1").await.is_ok());
        assert_eq!(fetches.load(Ordering::SeqCst), 2, "discovery and JWKS");
        hang.store(true, Ordering::SeqCst);
        // The issuer hangs now: the cached key serves, nobody asks again.
        for _ in 0..3 {
            assert!(verifier.key(&issuer, "k1").await.is_ok());
        }
        let unknown = verifier.key(&issuer, "k2").await.unwrap_err();
        assert_eq!(unknown.code, "unknown_kid");
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_key_never_waits_for_a_refresh_in_progress() {
        let (hang, fetches) = (Arc::new(AtomicBool::new(false)), Arc::default());
        let url = local_issuer(hang.clone(), Arc::clone(&fetches)).await;
        let issuer = config(&url, "0s", "1h");
        let verifier = Arc::new(CiVerifier::default());
        assert!(verifier.key(&issuer, "k1").await.is_ok());
        hang.store(true, Ordering::SeqCst);
        // An unknown kid starts a refresh the issuer never answers.
        let refreshing = {
            let (verifier, issuer) = (verifier.clone(), issuer.clone());
            tokio::spawn(async move { verifier.key(&issuer, "k9").await })
        };
        while fetches.load(Ordering::SeqCst) < 3 {
            tokio::task::yield_now().await;
        }
        // Meanwhile a token signed with the cached key is checked at once.
        assert!(verifier.key(&issuer, "k1").await.is_ok());
        assert!(!refreshing.is_finished(), "the refresh was still hanging");
        refreshing.abort();
    }
}

#[cfg(test)]
mod jwks_host_tests {
    use super::*;

    #[test]
    fn keys_come_from_the_issuers_host_unless_another_is_listed() {
        let mut issuer: IssuerConfig = toml::from_str(r#"url = "https://ci.example.org""#).unwrap();
        assert!(check_jwks_host(&issuer, "https://CI.example.org/keys").is_ok());
        let elsewhere = check_jwks_host(&issuer, "https://attacker.example/keys").unwrap_err();
        assert!(elsewhere.contains("jwks_hosts"), "{elsewhere}");
        issuer.jwks_hosts = vec!["keys.example.net".into()];
        assert!(check_jwks_host(&issuer, "https://keys.example.net/jwks").is_ok());
        assert!(check_jwks_host(&issuer, "not a url").is_err());
    }
}
