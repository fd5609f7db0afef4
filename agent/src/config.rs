//! The agent's TOML configuration (`deploy/agent_full.toml` documents every
//! key), validated before anything is bound or contacted.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mintguard_certs::id::{self, SpiffeId};
use serde::Deserialize;

/// A duration written like `30s`, `10m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

/// A configuration error: the file, the key and why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The key (dotted).
    pub key: String,
    /// Why.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: PathBuf,
    broker: RawBroker,
    #[serde(default)]
    join_token: JoinTokenSource,
    socket: RawSocket,
    #[serde(default)]
    workloads: WorkloadsConfig,
    #[serde(default)]
    container_credentials: Option<ContainerCredentialsConfig>,
    #[serde(default)]
    workload_api: Option<RawWorkloadApi>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloadApi {
    socket: PathBuf,
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default)]
    group: Option<u32>,
    #[serde(default = "default_x509_grant")]
    x509_grant: String,
    #[serde(default = "default_jwt_grant")]
    jwt_grant: String,
    #[serde(default = "default_poll")]
    poll_interval: Dur,
    #[serde(default = "default_refusal_hold")]
    refusal_hold: Dur,
}

fn default_x509_grant() -> String {
    "x509-svid".into()
}
fn default_jwt_grant() -> String {
    "jwt-svid".into()
}
fn default_poll() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_refusal_hold() -> Dur {
    Dur(Duration::from_secs(5))
}

/// `[workload_api]`: the SPIFFE Workload API (gRPC) and Envoy SDS socket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadApiConfig {
    /// Its Unix socket (`SPIFFE_ENDPOINT_SOCKET=unix://<path>`).
    pub socket_path: PathBuf,
    /// The socket's mode. Default `0666`.
    pub socket_mode: u32,
    /// The socket's group (gid), if set.
    pub socket_group: Option<u32>,
    /// The grant X.509-SVIDs are asked under (kind `x509_svid`). Default `x509-svid`.
    pub x509_grant: String,
    /// The grant JWT-SVIDs are asked under (kind `jwt_svid`). Default `jwt-svid`.
    pub jwt_grant: String,
    /// How often the agent asks the broker for bundles, the CRL and
    /// suspensions (a suspension ends the identity's streams within it).
    /// Default 2 s.
    pub poll_interval: Duration,
    /// How long a refusal is remembered for the same workload, so one that
    /// keeps reconnecting costs one decision per hold. Default 5 s.
    pub refusal_hold: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    public: String,
    agents: String,
    spiffe_id: String,
    trust_bundle: PathBuf,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: Dur,
    #[serde(default = "default_request_timeout")]
    request_timeout: Dur,
    #[serde(default = "default_retries")]
    retries: u32,
    #[serde(default = "default_pool")]
    max_idle_connections: usize,
}

fn default_connect_timeout() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_retries() -> u32 {
    2
}
fn default_pool() -> usize {
    32
}

/// Where the first start reads its join token: a file or an environment
/// variable, never argv (other users can read `/proc/PID/cmdline`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JoinTokenSource {
    /// A file holding the token (removed after a successful enrollment if
    /// the agent may).
    pub file: Option<PathBuf>,
    /// An environment variable holding the token. Default `MINTGUARD_JOIN_TOKEN`.
    pub env: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSocket {
    path: PathBuf,
    #[serde(default = "default_mode")]
    mode: String,
    #[serde(default)]
    group: Option<u32>,
}

fn default_mode() -> String {
    "0666".into()
}

/// `[workloads]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkloadsConfig {
    /// How often the agent refreshes this node's entries. Default 30 s.
    pub entries_refresh: Dur,
    /// How often `bind_to_process` watches check their processes. Default 500 ms.
    pub bind_poll_interval: Dur,
    /// Most concurrent workload connections; more wait in the kernel backlog.
    /// Default 2048.
    pub max_connections: usize,
    /// Most concurrent connections of one uid; more are closed at once, so
    /// one user cannot take every slot from the others. Default 256 (or
    /// `max_connections`, if lower).
    pub max_connections_per_uid: Option<usize>,
}

impl WorkloadsConfig {
    /// The per-uid cap in force.
    pub fn per_uid(&self) -> usize {
        self.max_connections_per_uid
            .unwrap_or(256)
            .min(self.max_connections)
    }
}

impl Default for WorkloadsConfig {
    fn default() -> Self {
        Self {
            entries_refresh: Dur(Duration::from_secs(30)),
            bind_poll_interval: Dur(Duration::from_millis(500)),
            max_connections: 2048,
            max_connections_per_uid: None,
        }
    }
}

/// `[container_credentials]`: the loopback endpoint for
/// `AWS_CONTAINER_CREDENTIALS_FULL_URI`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContainerCredentialsConfig {
    /// Loopback address to listen on (port 0 picks one; written to
    /// `<data_dir>/listen.json`).
    pub listen: SocketAddr,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// Node key, SVID and bundle live here (0700).
    pub data_dir: PathBuf,
    /// The broker's public listener (enrollment), host:port.
    pub broker_public: String,
    /// The broker's agents listener (mTLS), host:port.
    pub broker_agents: String,
    /// The broker's exact SPIFFE ID, pinned.
    pub broker_id: SpiffeId,
    /// The bootstrap trust bundle (PEM); renewals keep `<data_dir>/bundle.pem` current.
    pub trust_bundle: PathBuf,
    /// TCP + TLS connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout to the broker.
    pub request_timeout: Duration,
    /// Retries after a failed connection to the broker.
    pub retries: u32,
    /// Idle kept-alive connections to the broker.
    pub max_idle_connections: usize,
    /// Join token source.
    pub join_token: JoinTokenSource,
    /// Workload socket path.
    pub socket_path: PathBuf,
    /// Workload socket mode.
    pub socket_mode: u32,
    /// Workload socket group (gid), if set.
    pub socket_group: Option<u32>,
    /// Workloads.
    pub workloads: WorkloadsConfig,
    /// Container credentials endpoint.
    pub container_credentials: Option<ContainerCredentialsConfig>,
    /// The SPIFFE Workload API, if configured.
    pub workload_api: Option<WorkloadApiConfig>,
}

fn octal_mode(text: &str) -> Option<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

impl Config {
    /// Reads and validates `file`; relative paths are relative to its directory.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let err = |key: &str, reason: String| ConfigError {
            file: file.to_path_buf(),
            key: key.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(file).map_err(|e| err("-", e.to_string()))?;
        let raw: RawConfig = toml::from_str(&text).map_err(|e| {
            let key = e
                .span()
                .map_or_else(|| "-".to_owned(), |s| format!("near byte {}", s.start));
            err(&key, e.message().to_owned())
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let broker_id = id::parse_spiffe_id(&raw.broker.spiffe_id)
            .map_err(|e| err("broker.spiffe_id", e.to_string()))?;
        if broker_id.path() != "/mintguard/broker" {
            return Err(err(
                "broker.spiffe_id",
                "must be spiffe://<td>/mintguard/broker".into(),
            ));
        }
        for (key, addr) in [
            ("broker.public", &raw.broker.public),
            ("broker.agents", &raw.broker.agents),
        ] {
            if addr
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(err(key, format!("{addr:?} is not HOST:PORT")));
            }
        }
        let mode = octal_mode(&raw.socket.mode).ok_or_else(|| {
            err(
                "socket.mode",
                format!("{:?} is not an octal mode", raw.socket.mode),
            )
        })?;
        let workload_api = match raw.workload_api {
            None => None,
            Some(w) => {
                let socket_mode = octal_mode(&w.mode).ok_or_else(|| {
                    err(
                        "workload_api.mode",
                        format!("{:?} is not an octal mode", w.mode),
                    )
                })?;
                for (key, grant) in [
                    ("workload_api.x509_grant", &w.x509_grant),
                    ("workload_api.jwt_grant", &w.jwt_grant),
                ] {
                    if !mintguard_api::is_name(grant, mintguard_api::MAX_GRANT_LEN) {
                        return Err(err(key, format!("{grant:?} is not a grant name")));
                    }
                }
                if w.poll_interval.0 < Duration::from_millis(100)
                    || w.poll_interval.0 > Duration::from_secs(300)
                {
                    return Err(err("workload_api.poll_interval", "100ms..=5m".into()));
                }
                if w.refusal_hold.0 > Duration::from_secs(300) {
                    return Err(err("workload_api.refusal_hold", "at most 5m".into()));
                }
                let socket_path = resolve(w.socket);
                if socket_path == resolve(raw.socket.path.clone()) {
                    return Err(err(
                        "workload_api.socket",
                        "must differ from socket.path".into(),
                    ));
                }
                Some(WorkloadApiConfig {
                    socket_path,
                    socket_mode,
                    socket_group: w.group,
                    x509_grant: w.x509_grant,
                    jwt_grant: w.jwt_grant,
                    poll_interval: w.poll_interval.0,
                    refusal_hold: w.refusal_hold.0,
                })
            }
        };
        if raw.broker.retries > 10 {
            return Err(err("broker.retries", "at most 10".into()));
        }
        if raw.workloads.max_connections == 0 || raw.workloads.max_connections > 65_536 {
            return Err(err("workloads.max_connections", "1..=65536".into()));
        }
        if raw
            .workloads
            .max_connections_per_uid
            .is_some_and(|n| n == 0 || n > raw.workloads.max_connections)
        {
            return Err(err(
                "workloads.max_connections_per_uid",
                "1..=max_connections".into(),
            ));
        }
        if raw.workloads.bind_poll_interval.0 < Duration::from_millis(10) {
            return Err(err("workloads.bind_poll_interval", "at least 10ms".into()));
        }
        if let Some(c) = &raw.container_credentials
            && !c.listen.ip().is_loopback()
        {
            return Err(err(
                "container_credentials.listen",
                "must be a loopback address".into(),
            ));
        }
        Ok(Self {
            file: file.to_path_buf(),
            data_dir: resolve(raw.data_dir),
            broker_public: raw.broker.public,
            broker_agents: raw.broker.agents,
            broker_id,
            trust_bundle: resolve(raw.broker.trust_bundle),
            connect_timeout: raw.broker.connect_timeout.0,
            request_timeout: raw.broker.request_timeout.0,
            retries: raw.broker.retries,
            max_idle_connections: raw.broker.max_idle_connections,
            join_token: JoinTokenSource {
                file: raw.join_token.file.map(resolve),
                env: raw.join_token.env,
            },
            socket_path: resolve(raw.socket.path),
            socket_mode: mode,
            socket_group: raw.socket.group,
            workloads: raw.workloads,
            container_credentials: raw.container_credentials,
            workload_api,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, text).unwrap();
        Config::load(&file)
    }

    const GOOD: &str = r#"
data_dir = "data"
[broker]
public = "127.0.0.1:8444"
agents = "127.0.0.1:8443"
spiffe_id = "spiffe://example.org/mintguard/broker"
trust_bundle = "bundle.pem"
[socket]
path = "agent.sock"
mode = "0660"
"#;

    #[test]
    fn a_good_config_loads_with_defaults_and_resolved_paths() {
        let c = load(GOOD).unwrap();
        assert_eq!(c.socket_mode, 0o660);
        assert!(c.data_dir.is_absolute());
        assert_eq!(c.retries, 2);
        assert_eq!(c.workloads.max_connections, 2048);
        assert_eq!(c.workloads.per_uid(), 256);
    }

    #[test]
    fn the_reference_config_loads() {
        let c = Config::load(Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/agent_full.toml"
        )))
        .unwrap();
        let api = c.workload_api.unwrap();
        assert_eq!(api.socket_path, Path::new("/run/mintguard/workload.sock"));
        assert_eq!((api.socket_mode, api.socket_group), (0o660, Some(990)));
        assert_eq!(
            (api.x509_grant.as_str(), api.jwt_grant.as_str()),
            ("x509-svid", "jwt-svid")
        );
        assert_eq!(api.refusal_hold, Duration::from_secs(5));
    }

    #[test]
    fn bad_configs_name_the_key() {
        for (edit, key) in [
            (
                GOOD.replace("mintguard/broker", "mintguard/node/x"),
                "broker.spiffe_id",
            ),
            (GOOD.replace("127.0.0.1:8443", "nope"), "broker.agents"),
            (GOOD.replace("0660", "0999"), "socket.mode"),
            (
                format!("{GOOD}\n[container_credentials]\nlisten = \"0.0.0.0:80\"\n"),
                "container_credentials.listen",
            ),
            (format!("{GOOD}\nsurprise = 1\n"), "near byte"),
            (
                format!("{GOOD}\n[workload_api]\nsocket = \"agent.sock\"\n"),
                "workload_api.socket",
            ),
            (
                format!("{GOOD}\n[workload_api]\nsocket = \"w.sock\"\npoll_interval = \"1ms\"\n"),
                "workload_api.poll_interval",
            ),
        ] {
            let e = load(&edit).unwrap_err();
            assert!(e.key.starts_with(key), "{key}: {e}");
        }
    }
}
