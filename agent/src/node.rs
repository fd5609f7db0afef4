//! The node's identity: enrollment with a join token on first start, the
//! node key (0600) and SVID kept in the data dir and reused on restart, and
//! renewal over mTLS at half of the SVID's life with a fresh key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use mintguard_api::{EnrollRequest, ErrorBody, RenewRequest, SvidResponse};
use mintguard_certs::bundle::TrustBundle;
use mintguard_certs::id::IdMatcher;
use mintguard_certs::svid::{self, X509Svid};
use mintguard_certs::tls::SpiffeConnector;
use time::OffsetDateTime;

use crate::broker::{BrokerClient, Limits};
use crate::config::Config;

/// Why the node has no identity.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Reading or writing the data dir.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// No join token where the config says to read one.
    #[error(
        "no node SVID in {0} and no join token: set the environment variable or file [join_token] names"
    )]
    NoJoinToken(String),
    /// The broker refused or failed.
    #[error("{0}")]
    Broker(String),
    /// Certificates.
    #[error(transparent)]
    Certs(#[from] mintguard_certs::CertsError),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> NodeError + '_ {
    move |e| NodeError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Writes `bytes` to `path` with `mode` atomically (temp file, fsync,
/// rename). The temp file is created new, never through a symlink: a stale
/// one (a crash mid-write) is removed first, not followed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    Ok(())
}

/// Refuses a directory the agent's files must not be swapped in: a
/// symlink, one owned by another user than root or the agent's, or one
/// others may write (group or world).
pub fn check_private_dir(dir: &Path, what: &str) -> Result<(), NodeError> {
    use std::os::unix::fs::MetadataExt as _;
    let refuse = |reason: String| NodeError::Io {
        path: dir.display().to_string(),
        reason: format!("{what} {reason}"),
    };
    let meta = std::fs::symlink_metadata(dir).map_err(io(dir))?;
    if meta.file_type().is_symlink() {
        return Err(refuse("is a symlink; name the directory itself".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("is not a directory".into()));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(refuse(format!(
            "is owned by uid {}, neither root nor the agent's uid {me}",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(refuse(format!(
            "is writable by its group or by anyone (mode {:o}): another user could replace its files",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// The node's SVID and the trust bundle, swapped on renewal.
pub struct NodeIdentity {
    svid: ArcSwap<X509Svid>,
    bundle: ArcSwap<TrustBundle>,
    /// The agents-listener client (mTLS with the current SVID).
    pub broker: BrokerClient,
    config: Config,
}

fn limits(config: &Config) -> Limits {
    Limits {
        connect_timeout: config.connect_timeout,
        request_timeout: config.request_timeout,
        retries: config.retries,
        max_idle: config.max_idle_connections,
    }
}

fn broker_error(what: &str, status: u16, body: &[u8]) -> NodeError {
    let detail = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| format!("{} ({})", e.error.code, e.error.message))
        .unwrap_or_else(|_| String::from_utf8_lossy(body).chars().take(200).collect());
    NodeError::Broker(format!("{what} refused: {status} {detail}"))
}

impl NodeIdentity {
    /// Loads the stored SVID, or enrolls with the join token.
    pub async fn start(config: &Config) -> Result<Arc<Self>, NodeError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        check_private_dir(dir, "the data directory")?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let td = config.broker_id.trust_domain().clone();
        let bundle_path = dir.join("bundle.pem");
        let bundle_file = if bundle_path.exists() {
            &bundle_path
        } else {
            &config.trust_bundle
        };
        let bundle = TrustBundle::from_pem(
            td,
            &std::fs::read_to_string(bundle_file).map_err(io(bundle_file))?,
        )?;
        let stored = match std::fs::read(dir.join(NODE_FILE)) {
            Ok(bytes) => {
                let node: StoredNode =
                    serde_json::from_slice(&bytes).map_err(|e| NodeError::Io {
                        path: dir.join(NODE_FILE).display().to_string(),
                        reason: e.to_string(),
                    })?;
                let svid = X509Svid::from_pem(&node.svid_pem, &node.key_pem)?;
                if svid.not_after() > OffsetDateTime::now_utc() {
                    tracing::info!(id = %svid.spiffe_id(), until = %svid.not_after(), "reusing the stored node SVID");
                    Some(svid)
                } else {
                    tracing::warn!(until = %svid.not_after(), "the stored node SVID expired; enrolling again");
                    None
                }
            }
            Err(_) => None,
        };
        let (svid, bundle) = match stored {
            Some(svid) => (svid, bundle),
            None => enroll(config, &bundle).await?,
        };
        let connector = connector(config, &svid, &bundle)?;
        Ok(Arc::new(Self {
            broker: BrokerClient::new(config.broker_agents.clone(), connector, limits(config)),
            svid: ArcSwap::from_pointee(svid),
            bundle: ArcSwap::from_pointee(bundle),
            config: config.clone(),
        }))
    }

    /// The current SVID.
    pub fn svid(&self) -> Arc<X509Svid> {
        self.svid.load_full()
    }

    /// Renews at half of the remaining life, for ever; a failure is retried
    /// with backoff (the SVID stays valid until its expiry).
    pub async fn renew_forever(self: Arc<Self>) {
        loop {
            let remaining = self.svid.load().not_after() - OffsetDateTime::now_utc();
            let half: time::Duration = remaining / 2;
            let wait = half.max(time::Duration::seconds(1));
            tokio::time::sleep(Duration::from_millis(
                u64::try_from(wait.whole_milliseconds()).unwrap_or(1000),
            ))
            .await;
            let mut delay = Duration::from_secs(1);
            while let Err(e) = self.renew().await {
                tracing::error!(%e, "node SVID renewal failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }

    /// Renews now: a fresh key and CSR over mTLS; stores and swaps it in.
    pub async fn renew(&self) -> Result<(), NodeError> {
        let key = svid::generate_key()?;
        let body = serde_json::to_vec(&RenewRequest {
            csr: svid::csr_pem(&key)?,
        })
        .map_err(|e| NodeError::Broker(e.to_string()))?;
        let reply = self
            .broker
            .send("POST", "/v1/node/renew", Some(body))
            .await
            .map_err(|e| NodeError::Broker(e.to_string()))?;
        if reply.status != 200 {
            return Err(broker_error("renewal", reply.status, &reply.body));
        }
        let answer: SvidResponse = serde_json::from_slice(&reply.body)
            .map_err(|e| NodeError::Broker(format!("renewal answer: {e}")))?;
        let (svid, bundle) = store(&self.config, &answer, &key)?;
        self.broker
            .set_connector(connector(&self.config, &svid, &bundle)?);
        tracing::info!(until = %svid.not_after(), "node SVID renewed");
        self.svid.store(Arc::new(svid));
        self.bundle.store(Arc::new(bundle));
        Ok(())
    }
}

fn connector(
    config: &Config,
    svid: &X509Svid,
    bundle: &TrustBundle,
) -> Result<SpiffeConnector, NodeError> {
    Ok(SpiffeConnector::new(
        Some(svid),
        bundle,
        IdMatcher::exact(config.broker_id.clone()),
    )?)
}

fn read_join_token(config: &Config) -> Result<String, NodeError> {
    let src = &config.join_token;
    if let Some(file) = &src.file
        && let Ok(text) = std::fs::read_to_string(file)
        && !text.trim().is_empty()
    {
        return Ok(text.trim().to_owned());
    }
    let var = src.env.as_deref().unwrap_or("MINTGUARD_JOIN_TOKEN");
    std::env::var(var)
        .ok()
        .filter(|t| !t.trim().is_empty())
        .map(|t| t.trim().to_owned())
        .ok_or_else(|| NodeError::NoJoinToken(config.data_dir.display().to_string()))
}

async fn enroll(
    config: &Config,
    bundle: &TrustBundle,
) -> Result<(X509Svid, TrustBundle), NodeError> {
    let token = read_join_token(config)?;
    let key = svid::generate_key()?;
    let body = serde_json::to_vec(&EnrollRequest {
        join_token: token,
        csr: svid::csr_pem(&key)?,
    })
    .map_err(|e| NodeError::Broker(e.to_string()))?;
    let anonymous = SpiffeConnector::new(None, bundle, IdMatcher::exact(config.broker_id.clone()))?;
    let public = BrokerClient::new(config.broker_public.clone(), anonymous, limits(config));
    let reply = public
        .send("POST", "/v1/node/enroll", Some(body))
        .await
        .map_err(|e| NodeError::Broker(e.to_string()))?;
    if reply.status != 200 {
        return Err(broker_error("enrollment", reply.status, &reply.body));
    }
    let answer: SvidResponse = serde_json::from_slice(&reply.body)
        .map_err(|e| NodeError::Broker(format!("enrollment answer: {e}")))?;
    let stored = store(config, &answer, &key)?;
    tracing::info!(id = %answer.spiffe_id, until = %answer.expires_at, "enrolled");
    if let Some(file) = &config.join_token.file {
        // A used token is worthless, but leave nothing behind that looks live.
        let _ = std::fs::remove_file(file);
    }
    Ok(stored)
}

fn store(
    config: &Config,
    answer: &SvidResponse,
    key: &svid::PrivateKey,
) -> Result<(X509Svid, TrustBundle), NodeError> {
    let svid = X509Svid::from_pem(&answer.svid_pem, &key.to_pem())?;
    let bundle =
        TrustBundle::from_pem(config.broker_id.trust_domain().clone(), &answer.bundle_pem)?;
    let dir = &config.data_dir;
    // Key and certificate in one file, replaced atomically: a crash never
    // pairs a new certificate with an old key.
    let node = serde_json::to_vec(&StoredNode {
        svid_pem: answer.svid_pem.clone(),
        key_pem: key.to_pem().to_string(),
    })
    .map_err(|e| NodeError::Broker(e.to_string()))?;
    write_atomic(&dir.join(NODE_FILE), &node, 0o600)?;
    write_atomic(&dir.join("bundle.pem"), answer.bundle_pem.as_bytes(), 0o644)?;
    Ok((svid, bundle))
}

/// The node's key and SVID in the data dir (0600).
const NODE_FILE: &str = "node.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct StoredNode {
    svid_pem: String,
    key_pem: String,
}
