//! # mintguard-tests
//!
//! End-to-end tests for Mintguard: the real binaries against real peers
//! (PostgreSQL, an OpenBao server, moto's STS, the AWS CLI), which
//! `tests/peers.sh` installs and starts. The tests live in `tests/tests/`; this
//! library holds what they share.
//!
//! A test that needs a peer reads its address from the environment and
//! **fails** when it is missing: run the suite with `./tests/run.sh` (or
//! `tests/peers.sh cargo test --workspace`), never skip.

#![allow(clippy::expect_used)] // test support: a missing peer must fail the test loudly

/// The value of a peer's environment variable, or a failure naming the fix.
pub fn peer_env(name: &str) -> String {
    match std::env::var(name) {
        Ok(value) if !value.is_empty() => value,
        _ => panic!(
            "{name} is not set: this test needs a real peer. Run the suite with \
             `./tests/run.sh`, or wrap cargo in `tests/peers.sh` \
             (e.g. `tests/peers.sh cargo test -p mintguard-tests`)"
        ),
    }
}

/// Runs the AWS CLI from `tests/peers.sh` with the given credentials and
/// arguments, returning (success, stdout, stderr).
pub fn aws_cli(access_key: &str, secret_key: &str, args: &[&str]) -> (bool, String, String) {
    let output = std::process::Command::new(peer_env("MINTGUARD_AWS_CLI"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("AWS_ACCESS_KEY_ID", access_key)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("run the AWS CLI");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// GETs `url` (plain HTTP) and parses the body as JSON: (status, body).
pub async fn http_get_json(url: &str) -> (u16, serde_json::Value) {
    http_json("GET", url, &[], None).await
}

/// Sends one plain-HTTP request and parses the body as JSON (`Null` when it
/// is not JSON): (status, body).
pub async fn http_json(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    use http_body_util::BodyExt as _;
    let uri: hyper::Uri = url.parse().expect("a valid URL");
    let authority = uri
        .authority()
        .expect("an absolute URL")
        .as_str()
        .to_owned();
    let tcp = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("HTTP handshake");
    tokio::spawn(conn);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    if !body.is_empty() {
        request = request.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        .expect("a valid request");
    let response = sender.send_request(request).await.expect("send");
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// Calls the Vault / OpenBao at `addr` (plain HTTP) with `token`:
/// (status, body).
pub async fn vault_call(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let url = format!("{}/v1/{path}", addr.trim_end_matches('/'));
    http_json(method, &url, &[("x-vault-token", token)], body.as_ref()).await
}

/// Mounts OpenBao's database engine at `mount`, connected to the test
/// PostgreSQL (`MINTGUARD_PG_URL`) with a role `ro` that creates login roles;
/// returns the credentials path (`<mount>/creds/ro`).
pub async fn database_engine(addr: &str, root: &str, mount: &str) -> String {
    let pg: tokio_postgres::Config = peer_env("MINTGUARD_PG_URL")
        .parse()
        .expect("a PostgreSQL URL");
    let port = pg.get_ports()[0];
    let password = String::from_utf8_lossy(pg.get_password().unwrap_or_default()).into_owned();
    let user = pg.get_user().unwrap_or("postgres").to_owned();
    let calls = [
        (
            format!("sys/mounts/{mount}"),
            serde_json::json!({"type": "database"}),
        ),
        (
            format!("{mount}/config/pg"),
            serde_json::json!({
                "plugin_name": "postgresql-database-plugin",
                "connection_url": format!("postgresql://{{{{username}}}}:{{{{password}}}}@127.0.0.1:{port}/postgres?sslmode=disable"),
                "username": user,
                "password": password,
                "allowed_roles": "ro",
            }),
        ),
        (
            format!("{mount}/roles/ro"),
            serde_json::json!({
                "db_name": "pg",
                "creation_statements": ["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';"],
                "default_ttl": "1h",
                "max_ttl": "2h",
            }),
        ),
    ];
    for (path, body) in calls {
        let (status, answer) = vault_call(addr, root, "POST", &path, Some(body)).await;
        assert!((200..300).contains(&status), "{path}: {status} {answer}");
    }
    format!("{mount}/creds/ro")
}

/// Logs in to the test PostgreSQL as `user` / `password` and runs a query.
pub async fn pg_login(user: &str, password: &str) -> Result<(), String> {
    let mut config: tokio_postgres::Config = peer_env("MINTGUARD_PG_URL")
        .parse()
        .map_err(|e: tokio_postgres::Error| e.to_string())?;
    config.user(user).password(password);
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    client
        .simple_query("SELECT 1")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
