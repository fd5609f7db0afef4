//! Shared by the broker's end-to-end tests: a real `mintguard-broker`
//! process on a temp config, the real `mintguard` CLI, and a minimal agent
//! (node key, CSR, enrollment, mTLS) built from mintguard-certs.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // shared test support; a failed setup must fail

pub mod records;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_certs::bundle::TrustBundle;
use mintguard_certs::id::{self, IdMatcher};
use mintguard_certs::svid::{self, X509Svid};
use mintguard_certs::tls::SpiffeConnector;
use serde_json::Value;

pub const POLICIES: &str = r#"
@id("api-may-mint")
permit (principal == Mintguard::Workload::"spiffe://example.org/ns/pay/sa/api",
        action == Mintguard::Action::"mint", resource == Mintguard::Grant::"payments-token");
"#;

pub const INTROSPECTION_TOKEN: &str = "introspection-client-token-0123456789abcdef";

/// A running broker in a temp dir, killed on drop.
pub struct BrokerProcess {
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub listen: Value,
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn config_text(extra: &str) -> String {
    config_text_with("", extra)
}

/// The test config with top-level keys (`store = …`) and trailing tables.
pub fn config_text_with(top: &str, extra: &str) -> String {
    format!(
        r#"
{top}
trust_domain = "example.org"
data_dir = "data"
issuer_url = "https://mintguard.example.org"
[listen]
public = "127.0.0.1:0"
agents = "127.0.0.1:0"
admin = "127.0.0.1:0"
public_dns_names = ["localhost"]
[policies]
cedar = "policies"
[log]
checkpoint_every = 5
checkpoint_interval = "1h"
[[introspection_clients]]
name = "payments-db"
token_file = "introspection.token"
audiences = ["payments"]
[[grants]]
name = "payments-token"
kind = "jwt"
max_ttl = "15m"
jwt = {{ audience = "payments" }}
budget = {{ amount = 100, per = "1h" }}
{extra}
"#
    )
}

impl BrokerProcess {
    /// Writes a config, creates an operator, starts the broker, waits for it.
    pub fn start(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    pub fn start_in(dir: tempfile::TempDir, extra: &str) -> Self {
        Self::start_with(dir, "", extra)
    }

    /// Starts with top-level config keys too (e.g. a PostgreSQL store).
    pub fn start_with(dir: tempfile::TempDir, top: &str, extra: &str) -> Self {
        Self::start_with_env(dir, top, extra, &[])
    }

    /// Starts with environment variables for the broker process.
    pub fn start_with_env(
        dir: tempfile::TempDir,
        top: &str,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let root = dir.path();
        std::fs::create_dir_all(root.join("policies")).unwrap();
        std::fs::write(root.join("policies/api.cedar"), POLICIES).unwrap();
        std::fs::write(root.join("broker.toml"), config_text_with(top, extra)).unwrap();
        write_private(&root.join("introspection.token"), INTROSPECTION_TOKEN);
        if !root.join("data/operators/alice.token").exists() {
            let out = Command::new(env!("CARGO_BIN_EXE_mintguard-broker"))
                .args(["operator", "create", "alice", "--role", "admin", "--config"])
                .arg(root.join("broker.toml"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let _ = std::fs::remove_file(root.join("data/listen.json"));
        // Killed and waited for in Drop.
        #[allow(clippy::zombie_processes)]
        let mut child = Command::new(env!("CARGO_BIN_EXE_mintguard-broker"))
            .args(["run", "--config"])
            .arg(root.join("broker.toml"))
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("broker.log")).unwrap())
            .spawn()
            .unwrap();
        let listen_path = root.join("data/listen.json");
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(&listen_path)
                && let Ok(listen) = serde_json::from_str::<Value>(&text)
            {
                return Self { dir, child, listen };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "broker did not start: {}",
            std::fs::read_to_string(root.join("broker.log")).unwrap_or_default()
        );
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn addr(&self, listener: &str) -> String {
        self.listen[listener].as_str().unwrap().to_owned()
    }

    /// Runs the `mintguard` CLI against this broker.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_mintguard"))
            .arg("--data-dir")
            .arg(self.data())
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `mintguard logs verify` and fails the test, with its output, if
    /// the chain or the checkpoints do not hold.
    pub fn assert_log_verifies(&self) -> Output {
        let verify = self.cli(&["logs", "verify"]);
        assert!(
            verify.status.success(),
            "logs verify failed:\n{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        verify
    }

    /// Fails the test unless each of `request_ids` (credentials a client
    /// received for `grant`) has exactly one `allow` decision record.
    pub fn assert_one_record_each<'a>(
        &self,
        grant: &str,
        request_ids: impl IntoIterator<Item = &'a str>,
    ) {
        let out = self.cli(&["logs", "--json", "--grant", grant]);
        let mut records: std::collections::HashMap<String, usize> = Default::default();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            if r["kind"] == "decision" && r["outcome"] == "allow" {
                *records
                    .entry(r["request_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
        }
        for id in request_ids {
            assert_eq!(
                records.get(id),
                Some(&1),
                "credential {id} without exactly one record"
            );
        }
    }

    /// `mintguard-broker operator create NAME --role ROLE`: a token file, or
    /// with `cert_dir` a client certificate and key written there.
    pub fn create_operator(&self, name: &str, role: &str, cert_dir: Option<&Path>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mintguard-broker"));
        cmd.args(["operator", "create", name, "--role", role, "--config"])
            .arg(self.dir.path().join("broker.toml"));
        if let Some(dir) = cert_dir {
            cmd.arg("--cert").arg("--out").arg(dir);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `mintguard logs prune --before 0s --export EXPORT`: retention through
    /// the newest checkpoint it may prune.
    pub fn prune_all(&self, export: &Path) -> Output {
        self.cli(&[
            "logs",
            "prune",
            "--before",
            "0s",
            "--export",
            export.to_str().unwrap(),
        ])
    }

    /// `mintguard logs --json` with `filters`: the records, oldest first.
    pub fn logs(&self, filters: &[&str]) -> Vec<Value> {
        let mut args = vec!["logs", "--json"];
        args.extend_from_slice(filters);
        let out = self.cli(&args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The leases `mintguard leases` lists as live.
    pub fn live_leases(&self) -> Vec<Value> {
        let leases = self.cli_json(&["leases"]);
        leases
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["live"] == true)
            .cloned()
            .collect()
    }

    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "mintguard {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn bundle(&self) -> TrustBundle {
        TrustBundle::from_pem(
            id::parse_trust_domain("example.org").unwrap(),
            &std::fs::read_to_string(self.data().join("bundle.pem")).unwrap(),
        )
        .unwrap()
    }

    /// Stops the broker and starts it again on the same directory (and
    /// config `extra`).
    pub fn restart(&mut self, extra: &str) {
        self.stop();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let mut next = Self::start_in(dir, extra);
        std::mem::swap(self, &mut next);
    }

    /// `GET path` on the admin listener as the admin operator.
    pub async fn admin_get(&self, path: &str) -> Reply {
        let token = std::fs::read_to_string(self.data().join("operators/alice.token")).unwrap();
        let auth = format!("Bearer {}", token.trim());
        https(
            &self.addr("admin"),
            &self.bundle(),
            None,
            "GET",
            path,
            &[("authorization", &auth)],
            vec![],
        )
        .await
        .unwrap()
    }

    /// Stops the broker (SIGKILL) and waits.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// An HTTP exchange over TLS: (status, headers' Retry-After, JSON body or Null).
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: Value,
    pub text: String,
}

/// Sends one request over TLS (`client` = the node SVID for mTLS, or none).
pub async fn https(
    addr: &str,
    bundle: &TrustBundle,
    client: Option<&X509Svid>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Reply, String> {
    let connector = SpiffeConnector::new(
        client,
        bundle,
        IdMatcher::exact(id::broker_id(bundle.trust_domain())),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let (tls, _) = connector
        .connect("mintguard-broker", tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "mintguard-broker");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = sender
        .send_request(req.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(Reply {
        status,
        retry_after,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        text: String::from_utf8_lossy(&bytes).into_owned(),
    })
}

/// Writes `bytes` as they are over TLS (`client` = a node SVID for mTLS)
/// and reads the answer until the broker closes: for requests an HTTP
/// client would not send.
pub async fn raw_tls(
    addr: &str,
    bundle: &TrustBundle,
    client: Option<&X509Svid>,
    bytes: &[u8],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let connector = SpiffeConnector::new(
        client,
        bundle,
        IdMatcher::exact(id::broker_id(bundle.trust_domain())),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut tls, _) = connector.connect("mintguard-broker", tcp).await.unwrap();
    tls.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn post_json(
    addr: &str,
    bundle: &TrustBundle,
    client: Option<&X509Svid>,
    path: &str,
    body: &Value,
) -> Reply {
    https(
        addr,
        bundle,
        client,
        "POST",
        path,
        &[("content-type", "application/json")],
        body.to_string().into_bytes(),
    )
    .await
    .unwrap()
}

/// Enrolls a node with a join token, like the agent will.
pub async fn enroll(broker: &BrokerProcess, token: &str) -> X509Svid {
    let key = svid::generate_key().unwrap();
    let csr = svid::csr_pem(&key).unwrap();
    let reply = post_json(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "/v1/node/enroll",
        &serde_json::json!({"join_token": token, "csr": csr}),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    X509Svid::from_pem(reply.body["svid_pem"].as_str().unwrap(), &key.to_pem()).unwrap()
}

/// Creates a join token with the CLI and enrolls `node`.
pub async fn enrolled_node(broker: &BrokerProcess, node: &str) -> X509Svid {
    let token = broker.cli_json(&["token", "create", "--node", node]);
    enroll(broker, token["token"].as_str().unwrap()).await
}

pub const API: &str = "spiffe://example.org/ns/pay/sa/api";
pub const SELECTORS: &[&str] = &["unix:uid:1000", "unix:gid:1000", "unix:sha256:0a1b2c"];

/// Issues `payments-token` to the API workload `n` times, each a 200.
pub async fn issue_ok(broker: &BrokerProcess, node: &X509Svid, n: usize) {
    for _ in 0..n {
        let reply = issue(broker, node, serde_json::json!({"grant": "payments-token"})).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
}

/// `POST /v1/introspect` of `token` as the relying party whose bearer is
/// `client`.
pub async fn introspect(broker: &BrokerProcess, client: &str, token: &str) -> Reply {
    https(
        &broker.addr("public"),
        &broker.bundle(),
        None,
        "POST",
        "/v1/introspect",
        &[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", &format!("Bearer {client}")),
        ],
        format!("token={token}").into_bytes(),
    )
    .await
    .unwrap()
}

/// Registers the payments API workload under `node`.
pub fn register_api(broker: &BrokerProcess, node: &str) {
    register_api_with(
        broker,
        node,
        &["unix:uid:1000", "unix:sha256:0a1b2c"],
        &["payments-token"],
    );
}

/// Registers the API workload under `node` with these selectors and grants.
pub fn register_api_with(broker: &BrokerProcess, node: &str, selectors: &[&str], grants: &[&str]) {
    let mut args = vec!["entry", "create", "--spiffe-id", API, "--parent", node];
    for s in selectors {
        args.extend(["--selector", s]);
    }
    for g in grants {
        args.extend(["--grant", g]);
    }
    let out = broker.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Verifies `token` the way an independent relying party does — with only
/// the JWKS `jwks` (as served), the audience and the test issuer — and
/// returns its claims.
pub fn verify_with_jwks(jwks: Value, token: &str, audience: &str) -> Value {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let key = set
        .find(header.kid.as_deref().unwrap())
        .expect("the token's key is not in the JWKS");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&["https://mintguard.example.org"]);
    jsonwebtoken::decode::<Value>(
        token,
        &jsonwebtoken::DecodingKey::from_jwk(key).unwrap(),
        &validation,
    )
    .unwrap()
    .claims
}

/// Issues a credential for the API workload through `node`.
pub async fn issue(broker: &BrokerProcess, node: &X509Svid, request: Value) -> Reply {
    post_json(
        &broker.addr("agents"),
        &broker.bundle(),
        Some(node),
        "/v1/issue",
        &serde_json::json!({"selectors": SELECTORS, "request": request}),
    )
    .await
}

/// Renews `node`'s SVID over mTLS with a fresh key, as the agent will.
pub async fn renew(broker: &BrokerProcess, node: &X509Svid) -> (Reply, Option<X509Svid>) {
    let key = svid::generate_key().unwrap();
    let csr = svid::csr_pem(&key).unwrap();
    let reply = post_json(
        &broker.addr("agents"),
        &broker.bundle(),
        Some(node),
        "/v1/node/renew",
        &serde_json::json!({"csr": csr}),
    )
    .await;
    let renewed = reply.body["svid_pem"]
        .as_str()
        .map(|pem| X509Svid::from_pem(pem, &key.to_pem()).unwrap());
    (reply, renewed)
}

/// A fresh database on the PostgreSQL peer from tests/peers.sh; its URL.
/// Fails (never skips) without MINTGUARD_PG_URL.
pub async fn fresh_postgres_database(prefix: &str) -> String {
    let url = std::env::var("MINTGUARD_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            panic!("MINTGUARD_PG_URL is not set: run under tests/peers.sh (see README)")
        });
    let admin: tokio_postgres::Config = url.parse().unwrap();
    let (client, conn) = admin.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut random = [0u8; 6];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut random,
    )
    .unwrap();
    let db = format!(
        "{prefix}_{}",
        random
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    client
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .unwrap();
    let (base, _) = url.rsplit_once('/').unwrap();
    format!("{base}/{db}")
}

/// Sends `request` to a broker started with `MINTGUARD_FAULT` set, checks it
/// aborted instead of answering, and hands back its directory for a restart.
pub async fn issue_into_crash(
    mut broker: BrokerProcess,
    node: &X509Svid,
    request: Value,
) -> tempfile::TempDir {
    let reply = https(
        &broker.addr("agents"),
        &broker.bundle(),
        Some(node),
        "POST",
        "/v1/issue",
        &[("content-type", "application/json")],
        serde_json::json!({"selectors": SELECTORS, "request": request})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert!(reply.is_err(), "the broker answered instead of crashing");
    let _ = broker.child.wait();
    std::mem::replace(&mut broker.dir, tempfile::tempdir().unwrap())
}

/// Waits until `done` holds, polling every 50 ms for up to 60 s; a timeout
/// fails the test naming `what`. (For load tests: wait on what happened,
/// not on the clock.)
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The first log record with `outcome`, waiting up to 30 s for it.
pub async fn wait_for_outcome(broker: &BrokerProcess, outcome: &str) -> Value {
    for _ in 0..300 {
        let out = broker.cli(&["logs", "--json", "--outcome", outcome]);
        if let Some(line) = String::from_utf8_lossy(&out.stdout).lines().next() {
            return serde_json::from_str(line).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {outcome} record in 30 s");
}

/// `mintguard logs verify` on the SQLite file `db` with the broker's
/// exported checkpoints and key: (verified, what it printed).
pub fn verify_offline(broker: &BrokerProcess, db: &Path) -> (bool, String) {
    let data = broker.data();
    let out = Command::new(env!("CARGO_BIN_EXE_mintguard"))
        .args(["logs", "verify", "--store"])
        .arg(format!("sqlite://{}", db.display()))
        .arg("--checkpoints")
        .arg(data.join("checkpoints.jsonl"))
        .arg("--key")
        .arg(data.join("log-signing.jwk.json"))
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every record of a SQLite store, oldest first.
pub fn read_records(conn: &rusqlite::Connection) -> Vec<mintguard_broker::log::LogRecord> {
    let bodies = mintguard_broker::store::sqlite::bodies::Bodies::load(conn).unwrap();
    let mut stmt = conn.prepare("SELECT seq, time_ms, kind, request_id, identity, grant_name, node, outcome, body, prev_hash, hash FROM log ORDER BY seq").unwrap();
    stmt.query_map([], |r| {
        Ok(mintguard_broker::log::LogRecord {
            chain: String::new(),
            seq: r.get(0)?,
            entry: mintguard_broker::log::LogEntry {
                time_ms: r.get(1)?,
                kind: mintguard_broker::log::RecordKind::parse(&r.get::<_, String>(2)?).unwrap(),
                request_id: r.get(3)?,
                identity: r.get(4)?,
                grant: r.get(5)?,
                node: r.get(6)?,
                outcome: r.get(7)?,
                body: serde_json::from_str(
                    &bodies
                        .decode(
                            conn,
                            (&r.get::<_, rusqlite::types::Value>(8)?).into(),
                            &mut Default::default(),
                        )
                        .unwrap(),
                )
                .unwrap(),
            },
            prev_hash: r.get(9)?,
            hash: r.get(10)?,
        })
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// Replaces every record of a SQLite store with `records`.
pub fn rewrite(conn: &rusqlite::Connection, records: &[mintguard_broker::log::LogRecord]) {
    conn.execute("DELETE FROM log", []).unwrap();
    for r in records {
        let e = &r.entry;
        conn.execute(
            "INSERT INTO log VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            rusqlite::params![
                r.seq,
                e.time_ms,
                e.kind.as_str(),
                e.request_id,
                e.identity,
                e.grant,
                e.node,
                e.outcome,
                e.body.to_string(),
                r.prev_hash,
                r.hash
            ],
        )
        .unwrap();
    }
}

/// Copies the broker's SQLite store to `<dir>/<name>.db`.
pub fn copy_store(broker: &BrokerProcess, name: &str) -> PathBuf {
    let path = broker.dir.path().join(format!("{name}.db"));
    rusqlite::Connection::open(broker.data().join("broker.db"))
        .unwrap()
        .execute("VACUUM INTO ?1", [path.to_str().unwrap()])
        .unwrap();
    path
}
