//! The broker's Vault (or OpenBao) client: `[vault]`, its login (a token
//! file or AppRole), kept-alive connections with one deadline per call, and
//! the calls the Vault minters make.

use std::path::PathBuf;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use zeroize::Zeroizing;

use super::*;
use crate::setting::Dur;

/// `[vault] timeout` when unset.
pub const VAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// `[vault.approle]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AppRoleConfig {
    /// The auth mount. Default `approle`.
    #[serde(default)]
    pub mount: Option<String>,
    /// A file holding the role id.
    pub role_id_file: PathBuf,
    /// A file holding the secret id (0600).
    pub secret_id_file: PathBuf,
}

/// `[vault]`: the Vault or OpenBao the broker mints from.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// `https://vault:8200` (plain http only on loopback).
    pub address: String,
    /// A file holding the broker's Vault token (0600), re-read when Vault
    /// refuses the current one. Exactly one of `token_file` and `approle`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// AppRole login (files holding the role id and secret id).
    #[serde(default)]
    pub approle: Option<AppRoleConfig>,
    /// Extra PEM roots for the Vault server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per-call timeout. Default 5 s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// An intent record without an outcome this old is reconciled (the
    /// broker died mid-mint). Default 2 min; keep it above any mint's time.
    #[serde(default)]
    pub reconcile_after: Option<Dur>,
}

impl VaultConfig {
    /// https (plain http only on loopback) and exactly one way to log in.
    pub fn validate(&self) -> Result<(), Invalid> {
        let url = url::Url::parse(&self.address)
            .map_err(|e| Invalid::new("vault.address", format!("{:?}: {e}", self.address)))?;
        let loopback = matches!(url.host(), Some(url::Host::Ipv4(a)) if a.is_loopback())
            || matches!(url.host(), Some(url::Host::Domain("localhost")));
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            return Err(Invalid::new(
                "vault.address",
                "https required (plain http only on loopback)",
            ));
        }
        if self.token_file.is_some() == self.approle.is_some() {
            return Err(Invalid::new(
                "vault",
                "exactly one of token_file and approle",
            ));
        }
        Ok(())
    }
}

/// A failed Vault call: what, and the status if Vault answered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("vault {what}: {reason}")]
pub struct VaultError {
    /// The call.
    pub what: String,
    /// Why.
    pub reason: String,
    /// Vault may have carried the call out: it was sent and no complete,
    /// readable answer came back (a timeout, a connection lost mid-answer).
    pub ambiguous: bool,
}

impl VaultError {
    /// A call Vault did not carry out (refused, or never sent).
    fn new(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            what: what.into(),
            reason: reason.into(),
            ambiguous: false,
        }
    }
}

/// How the broker gets its own Vault token.
enum Auth {
    /// A token file (re-read when Vault refuses the token).
    TokenFile(PathBuf),
    /// AppRole login.
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
}

fn read_secret_file(path: &std::path::Path) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Idle kept-alive connections to Vault.
const MAX_IDLE: usize = 32;

/// Most token accessors one reconciliation looks up.
pub const MAX_ACCESSORS_SCANNED: usize = 10_000;

/// A client of one Vault server, with the broker's token.
pub struct VaultClient {
    address: url::Url,
    token: std::sync::RwLock<Arc<Zeroizing<String>>>,
    auth: Auth,
    tls: Option<Arc<rustls::ClientConfig>>,
    idle: std::sync::Mutex<Vec<crate::outbound::Sender>>,
    timeout: Duration,
}

impl VaultClient {
    /// A client from `[vault]`: reads the token file now, or logs in with
    /// AppRole on the first call.
    pub fn new(config: &VaultConfig) -> Result<Self, String> {
        let address = url::Url::parse(&config.address).map_err(|e| e.to_string())?;
        let (auth, token) = match (&config.token_file, &config.approle) {
            (Some(file), _) => (Auth::TokenFile(file.clone()), read_secret_file(file)?),
            (None, Some(a)) => (
                Auth::AppRole {
                    mount: a.mount.clone().unwrap_or_else(|| "approle".into()),
                    role_id_file: a.role_id_file.clone(),
                    secret_id_file: a.secret_id_file.clone(),
                },
                String::new(),
            ),
            (None, None) => return Err("[vault] needs token_file or approle".into()),
        };
        let tls = if address.scheme() == "https" {
            Some(Arc::new(crate::outbound::tls_config(
                config.ca_file.as_deref(),
            )?))
        } else {
            None
        };
        Ok(Self {
            address,
            token: std::sync::RwLock::new(Arc::new(Zeroizing::new(token))),
            auth,
            idle: std::sync::Mutex::new(Vec::new()),
            tls,
            timeout: config
                .timeout
                .map_or(VAULT_TIMEOUT, |d| d.0),
        })
    }

    fn current_token(&self) -> Arc<Zeroizing<String>> {
        self.token
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|_| Arc::new(Zeroizing::new(String::new())))
    }

    /// Gets a fresh broker token: AppRole login, or the token file re-read.
    /// Returns its TTL in seconds (0 = none or unknown).
    pub async fn authenticate(&self) -> Result<u64, VaultError> {
        let fail = |reason: String| VaultError::new("authenticate", reason);
        let (token, ttl) = match &self.auth {
            Auth::TokenFile(file) => (read_secret_file(file).map_err(fail)?, 0),
            Auth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let body = json!({
                    "role_id": read_secret_file(role_id_file).map_err(fail)?,
                    "secret_id": read_secret_file(secret_id_file).map_err(fail)?,
                });
                let (status, answer) = self
                    .call_with("", "POST", &format!("auth/{mount}/login"), Some(&body))
                    .await?;
                let token = answer["auth"]["client_token"].as_str().unwrap_or_default();
                if !(200..300).contains(&status) || token.is_empty() {
                    return Err(fail(format!(
                        "AppRole login: HTTP {status}: {}",
                        answer["errors"]
                    )));
                }
                (
                    token.to_owned(),
                    answer["auth"]["lease_duration"].as_u64().unwrap_or(0),
                )
            }
        };
        if let Ok(mut t) = self.token.write() {
            *t = Arc::new(Zeroizing::new(token));
        }
        Ok(ttl)
    }

    /// Renews the broker's own token (`renew-self`); on failure it
    /// authenticates again. Returns the TTL now (seconds, 0 = none).
    pub async fn renew_or_login(&self) -> Result<u64, VaultError> {
        let token = self.current_token();
        let (status, answer) = self
            .call_with(&token, "POST", "auth/token/renew-self", Some(&json!({})))
            .await?;
        if (200..300).contains(&status) {
            return Ok(answer["auth"]["lease_duration"].as_u64().unwrap_or(0));
        }
        self.authenticate().await
    }

    /// Keeps the broker's token alive: renews at half its TTL (logging in
    /// again when renewal fails); checks every minute when it has none.
    pub async fn keep_token_fresh(self: Arc<Self>) {
        let mut ttl = if self.current_token().is_empty() {
            self.authenticate().await.unwrap_or(0)
        } else {
            self.lookup_ttl().await
        };
        loop {
            let wait = if ttl == 0 { 60 } else { (ttl / 2).max(1) };
            tokio::time::sleep(Duration::from_secs(wait)).await;
            match self.renew_or_login().await {
                Ok(t) => ttl = t,
                Err(e) => {
                    tracing::error!(%e, "the broker's Vault token could not be renewed or replaced");
                    ttl = 10;
                }
            }
        }
    }

    async fn lookup_ttl(&self) -> u64 {
        let token = self.current_token();
        match self
            .call_with(&token, "GET", "auth/token/lookup-self", None)
            .await
        {
            Ok((200, v)) => v["data"]["ttl"].as_u64().unwrap_or(0),
            _ => 0,
        }
    }

    /// A new connection (TLS when the address is https).
    async fn connect(&self, host: &str, port: u16) -> Result<crate::outbound::Sender, String> {
        let tcp = tokio::net::TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                    .map_err(|e| e.to_string())?;
                let tls = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                crate::outbound::handshake(TokioIo::new(tls)).await
            }
            None => crate::outbound::handshake(TokioIo::new(tcp)).await,
        }
    }

    /// One call with the current token; a 403 (an expired or revoked broker
    /// token) authenticates once and retries.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), VaultError> {
        let token = self.current_token();
        let answer = self.call_with(&token, method, path, body).await?;
        if answer.0 == 403 && self.authenticate().await.is_ok() {
            let token = self.current_token();
            return self.call_with(&token, method, path, body).await;
        }
        Ok(answer)
    }

    /// One call with `token`; `Ok((status, body))` when Vault answered.
    async fn call_with(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), VaultError> {
        let what = format!("{method} {path}");
        let fail = |reason: String| VaultError::new(what.clone(), reason);
        // Sent, and no answer read: Vault may have done it.
        let unknown = |e: crate::outbound::ExchangeError| VaultError {
            ambiguous: e.unsent.is_none(),
            ..VaultError::new(what.clone(), e.error)
        };
        let host = self
            .address
            .host_str()
            .ok_or_else(|| fail("no host".into()))?
            .to_owned();
        let port = self.address.port_or_known_default().unwrap_or(8200);
        let payload = body.map(Value::to_string).unwrap_or_default();
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("/v1/{path}"))
            .header(hyper::header::HOST, &host)
            .header("X-Vault-Token", token)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| fail(e.to_string()))?;
        // One deadline for the call. Until the request is written (the
        // connection, the TLS handshake) a failure is a plain one; after,
        // Vault may have carried it out.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let connect = || async {
            tokio::time::timeout_at(deadline, self.connect(&host, port))
                .await
                .map_err(|_| fail(format!("no connection within {:?}", self.timeout)))?
                .map_err(&fail)
        };
        let no_answer = || VaultError {
            ambiguous: true,
            ..fail(format!("no answer within {:?}", self.timeout))
        };
        // A kept-alive connection if one is idle, else a new one. A request
        // the kept-alive one never wrote (the server had closed it) is sent
        // once more on a fresh one; one that may have been written never is
        // (a second token would be minted).
        let pooled = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let (mut sender, reused) = match pooled {
            Some(s) if !s.is_closed() => (s, true),
            _ => (connect().await?, false),
        };
        let first = tokio::time::timeout_at(
            deadline,
            crate::outbound::exchange(&mut sender, request, 1024 * 1024),
        )
        .await
        .map_err(|_| no_answer())?;
        let (status, bytes) = match first {
            Ok(a) => a,
            Err(crate::outbound::ExchangeError {
                unsent: Some(request),
                ..
            }) if reused => {
                sender = connect().await?;
                tokio::time::timeout_at(
                    deadline,
                    crate::outbound::exchange(&mut sender, request, 1024 * 1024),
                )
                .await
                .map_err(|_| no_answer())?
                .map_err(unknown)?
            }
            Err(e) => return Err(unknown(e)),
        };
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push(sender);
        }
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or(Value::Null)
        };
        Ok((status, value))
    }

    /// One call whose answer must be a success (2xx): its JSON body.
    pub(crate) async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, VaultError> {
        let (status, value) = self.call(method, path, body).await?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(VaultError::new(
                format!("{method} {path}"),
                format!("HTTP {status}: {}", value["errors"]),
            ))
        }
    }


    /// Mints `grant` for `identity` with at most `ttl_seconds`.
    pub async fn mint(
        &self,
        proof: &LoggedIntent,
        grant: &VaultGrant,
        identity: &str,
        ttl_seconds: u64,
    ) -> Result<Minted, VaultError> {
        let lease_id = proof.lease_id();
        match grant {
            VaultGrant::Token { policies, num_uses } => {
                let answer = self
                    .ok(
                        "POST",
                        // Orphans: the broker tracks and revokes each lease
                        // itself, so a child must not die with the broker's
                        // own token when that is replaced.
                        "auth/token/create-orphan",
                        Some(&json!({
                            "policies": policies,
                            "ttl": format!("{ttl_seconds}s"),
                            "explicit_max_ttl": format!("{ttl_seconds}s"),
                            "num_uses": num_uses,
                            "renewable": false,
                            "display_name": "mintguard",
                            "meta": {"mintguard_lease": lease_id, "identity": identity},
                        })),
                    )
                    .await?;
                let auth = &answer["auth"];
                let token = auth["client_token"].as_str().unwrap_or_default();
                // (`auth/token/create-orphan` answers like `auth/token/create`.)
                let accessor = auth["accessor"].as_str().unwrap_or_default();
                if token.is_empty() || accessor.is_empty() {
                    // Vault said yes: a token may exist all the same.
                    return Err(VaultError {
                        ambiguous: true,
                        ..VaultError::new(
                            "auth/token/create-orphan",
                            "no client_token or accessor in the answer",
                        )
                    });
                }
                let lease_seconds = auth["lease_duration"].as_u64().unwrap_or(0);
                Ok(Minted {
                    credential: json!({"type": "vault_token", "token": token, "accessor": accessor,
                        "policies": policies, "num_uses": num_uses}),
                    upstream: json!({"vault_accessor": accessor, "lease_seconds": lease_seconds}),
                    lease_seconds,
                })
            }
            VaultGrant::Secret { path, body } => {
                let answer = match body {
                    Some(b) => {
                        let mut b = serde_json::to_value(b).unwrap_or_default();
                        b["ttl"] = json!(format!("{ttl_seconds}s"));
                        self.ok("POST", path, Some(&b)).await?
                    }
                    None => self.ok("GET", path, None).await?,
                };
                let vault_lease = answer["lease_id"].as_str().unwrap_or_default().to_owned();
                let lease_seconds = answer["lease_duration"].as_u64().unwrap_or(0);
                Ok(Minted {
                    credential: json!({"type": "vault_secret", "data": answer["data"],
                        "vault_lease_id": vault_lease, "lease_duration": lease_seconds}),
                    upstream: json!({"vault_lease_id": vault_lease, "lease_seconds": lease_seconds}),
                    lease_seconds,
                })
            }
        }
    }

    /// The accessor of the child token minted for `lease_id` (its
    /// `mintguard_lease` metadata), searching the token accessors (start-up
    /// reconciliation of an intent without an outcome; needs `sudo` on
    /// `auth/token/accessors`). At most `MAX_ACCESSORS_SCANNED` are looked at.
    pub async fn find_token_for_lease(&self, lease_id: &str) -> Result<Option<String>, VaultError> {
        let listed = self
            .ok("GET", "auth/token/accessors?list=true", None)
            .await?;
        let accessors = listed["data"]["keys"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for accessor in accessors
            .iter()
            .filter_map(Value::as_str)
            .take(MAX_ACCESSORS_SCANNED)
        {
            let (status, info) = self
                .call(
                    "POST",
                    "auth/token/lookup-accessor",
                    Some(&json!({"accessor": accessor})),
                )
                .await?;
            if (200..300).contains(&status) && info["data"]["meta"]["mintguard_lease"] == lease_id {
                return Ok(Some(accessor.to_owned()));
            }
        }
        Ok(None)
    }

    /// Revokes what `upstream` names and confirms with a lookup; `Ok(true)`
    /// when Vault no longer knows it.
    pub async fn revoke(&self, upstream: &Value) -> Result<bool, VaultError> {
        if let Some(accessor) = upstream["vault_accessor"].as_str() {
            let body = json!({"accessor": accessor});
            let (status, _) = self
                .call("POST", "auth/token/revoke-accessor", Some(&body))
                .await?;
            if !(200..300).contains(&status) && status != 400 {
                return Err(VaultError::new(
                    "auth/token/revoke-accessor",
                    format!("HTTP {status}"),
                ));
            }
            let (status, _) = self
                .call("POST", "auth/token/lookup-accessor", Some(&body))
                .await?;
            return gone_after_lookup("auth/token/lookup-accessor", status);
        }
        if let Some(lease) = upstream["vault_lease_id"]
            .as_str()
            .filter(|l| !l.is_empty())
        {
            let body = json!({"lease_id": lease});
            self.ok("PUT", "sys/leases/revoke", Some(&body)).await?;
            let (status, _) = self.call("PUT", "sys/leases/lookup", Some(&body)).await?;
            return gone_after_lookup("sys/leases/lookup", status);
        }
        // A secret without a lease (static): nothing to revoke upstream.
        Ok(true)
    }
}

/// What a lookup after a revocation says: 400 or 404 (Vault's "invalid
/// accessor" / "invalid lease") means gone, 2xx still there; anything else
/// (403, a sealed or failing Vault) confirms nothing and is an error, so a
/// revocation is never reported confirmed on an answer that did not say so.
pub(super) fn gone_after_lookup(what: &str, status: u16) -> Result<bool, VaultError> {
    match status {
        400 | 404 => Ok(true),
        200..=299 => Ok(false),
        _ => Err(VaultError::new(
            what,
            format!("HTTP {status} on the confirming lookup"),
        )),
    }
}

impl From<VaultError> for MintError {
    fn from(e: VaultError) -> Self {
        Self {
            message: e.to_string(),
            ambiguous: e.ambiguous,
        }
    }
}
