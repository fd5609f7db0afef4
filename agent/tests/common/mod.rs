//! What the agent's end-to-end tests share: the real broker and agent
//! binaries in one temp dir, a registration helper, and the Python workload.

#![allow(dead_code, unreachable_pub)] // each test file uses its own share

use std::os::unix::fs::PermissionsExt;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

/// The workspace's target dir (this test runs from `target/debug/deps`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

pub fn python() -> String {
    std::env::var("MINTGUARD_SYSTEM_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".into())
}

pub fn sha256_of(path: &Path) -> String {
    let bytes = std::fs::read(std::fs::canonicalize(path).unwrap()).unwrap();
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `done`, failing after `limit` (a bound on a hang, not a timing assertion).
pub fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub const POLICY: &str = r#"
@id("workloads-may-mint")
permit (principal, action == Mintguard::Action::"mint", resource);
"#;

/// A broker on fixed loopback ports (so it can restart where the agent
/// expects it) and the agent, in one temp dir readable by the test user.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub broker: Option<Child>,
    pub agents: Vec<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in self.agents.iter_mut().chain(self.broker.as_mut()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Node {
    pub fn new() -> Self {
        Self::with_broker_config("")
    }

    /// With extra broker configuration tables (e.g. `[ca]`).
    pub fn with_broker_config(extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir_all(root.join("policies")).unwrap();
        std::fs::create_dir_all(root.join("sock")).unwrap();
        std::fs::set_permissions(root.join("sock"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(root.join("policies/all.cedar"), POLICY).unwrap();
        // Free ports are picked then bound by the broker: another test may
        // take one in between, so a start that finds its port taken retries.
        let write_configs = |root: &Path| {
            let (public, agents, admin) = (free_port(), free_port(), free_port());
            std::fs::write(
                root.join("broker.toml"),
                format!(
                    r#"
trust_domain = "example.org"
data_dir = "data"
issuer_url = "https://mintguard.example.org"
[listen]
public = "127.0.0.1:{public}"
agents = "127.0.0.1:{agents}"
admin = "127.0.0.1:{admin}"
[policies]
cedar = "policies"
[[grants]]
name = "payments-token"
kind = "jwt"
max_ttl = "15m"
jwt = {{ audience = "payments" }}
{extra}
"#
                ),
            )
            .unwrap();
            std::fs::write(
                root.join("agent.toml"),
                format!(
                    r#"
data_dir = "agent-data"
[broker]
public = "127.0.0.1:{public}"
agents = "127.0.0.1:{agents}"
spiffe_id = "spiffe://example.org/mintguard/broker"
trust_bundle = "data/bundle.pem"
connect_timeout = "1s"
[socket]
path = "sock/agent.sock"
mode = "0666"
[workloads]
bind_poll_interval = "100ms"
[container_credentials]
listen = "127.0.0.1:0"
"#
                ),
            )
            .unwrap();
        };
        write_configs(root);
        std::fs::copy(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workload.py"),
            root.join("workload.py"),
        )
        .unwrap();
        let out = Command::new(bin("mintguard-broker"))
            .args(["operator", "create", "ops", "--role", "admin", "--config"])
            .arg(root.join("broker.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut node = Self {
            dir,
            broker: None,
            agents: Vec::new(),
        };
        for attempt in 0.. {
            match node.try_start_broker() {
                Ok(()) => break,
                Err(log) if log.contains("Address already in use") && attempt < 10 => {
                    write_configs(node.dir.path());
                }
                Err(log) => panic!("the broker did not start: {log}"),
            }
        }
        node
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.root().join("sock/agent.sock")
    }

    pub fn start_broker(&mut self) {
        if let Err(log) = self.try_start_broker() {
            panic!("the broker did not start: {log}");
        }
    }

    /// Starts the broker; its log if it exits or does not come up.
    pub fn try_start_broker(&mut self) -> Result<(), String> {
        let root = self.root().to_owned();
        let _ = std::fs::remove_file(root.join("data/listen.json"));
        let child = Command::new(bin("mintguard-broker"))
            .args(["run", "--config"])
            .arg(root.join("broker.toml"))
            // The broker's own AWS credentials (moto accepts any).
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("broker.log")).unwrap())
            .spawn()
            .unwrap();
        self.broker = Some(child);
        let log = root.join("broker.log");
        let start = Instant::now();
        while !root.join("data/listen.json").exists() {
            let exited = self.broker.as_mut().and_then(|c| c.try_wait().unwrap());
            if exited.is_some() || start.elapsed() >= Duration::from_secs(30) {
                self.kill_broker();
                return Err(std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn kill_broker(&mut self) {
        if let Some(mut b) = self.broker.take() {
            b.kill().unwrap();
            b.wait().unwrap();
        }
    }

    pub fn mg(&self, args: &[&str]) -> Output {
        Command::new(bin("mintguard"))
            .arg("--data-dir")
            .arg(self.root().join("data"))
            .args(args)
            .output()
            .unwrap()
    }

    pub fn mg_json(&self, args: &[&str]) -> Value {
        let out = self.mg(args);
        assert!(
            out.status.success(),
            "mintguard {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn join_token(&self) -> String {
        self.mg_json(&["token", "create", "--node", "node-1", "--ttl", "10m"])["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn entry(&self, id: &str, selectors: &[String]) {
        self.entry_with_grants(id, selectors, &["payments-token"]);
    }

    /// An entry of node-1 for `id` with `selectors` and `grants`.
    pub fn entry_with_grants(&self, id: &str, selectors: &[String], grants: &[&str]) {
        let mut args = vec!["entry", "create", "--spiffe-id", id, "--parent", "node-1"];
        for g in grants {
            args.push("--grant");
            args.push(g);
        }
        for s in selectors {
            args.push("--selector");
            args.push(s);
        }
        let out = self.mg(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the agent (with `token` in its environment, if any) and waits
    /// until it serves; returns its exit and stderr if it stopped instead.
    pub fn start_agent(&mut self, token: Option<&str>, config: &str) -> Result<(), String> {
        let root = self.root().to_owned();
        let log = root.join(format!("{config}.log"));
        let mut cmd = Command::new("prlimit");
        cmd.arg("--nofile=4096:4096")
            .arg("--")
            .arg(bin("mintguard-agent"))
            .args(["run", "--config"])
            .arg(root.join(config))
            .env_remove("MINTGUARD_JOIN_TOKEN")
            // Stream opens are debug lines; the tests count them.
            .env(
                "RUST_LOG",
                "info,mintguard_agent::workload_api::service=debug",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(t) = token {
            cmd.env("MINTGUARD_JOIN_TOKEN", t);
        }
        let mut child = cmd.spawn().unwrap();
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("serving workloads") {
                self.agents.push(child);
                return Ok(());
            }
            if let Some(status) = child.try_wait().unwrap() {
                return Err(format!("{status}: {text}"));
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "agent did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill_agents(&mut self) {
        for mut a in self.agents.drain(..) {
            a.kill().unwrap();
            a.wait().unwrap();
        }
    }

    /// A second agent's config (own data dir and socket).
    pub fn second_agent_config(&self) -> &'static str {
        let second = std::fs::read_to_string(self.root().join("agent.toml"))
            .unwrap()
            .replace("agent-data", "agent2-data")
            .replace("sock/agent.sock", "sock/agent2.sock")
            .replace("sock/workload.sock", "sock/workload2.sock");
        std::fs::write(self.root().join("agent2.toml"), second).unwrap();
        "agent2.toml"
    }

    /// Runs the Python workload (`as_user` via runuser); its output lines.
    pub fn workload(&self, as_user: Option<&str>, python: &str, args: &[&str]) -> Vec<String> {
        let mut cmd = match as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", python]);
                c
            }
            None => Command::new(python),
        };
        let out = cmd
            .arg(self.root().join("workload.py"))
            .args(args)
            .output()
            .unwrap();
        // Shown with the test's output if it fails.
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    pub fn request(&self, as_user: Option<&str>, python: &str) -> (u16, Value) {
        let socket = self.socket();
        let lines = self.workload(
            as_user,
            python,
            &["request", socket.to_str().unwrap(), "payments-token"],
        );
        parse_line(lines.first().expect("no answer from the workload"))
    }
}

pub fn parse_line(line: &str) -> (u16, Value) {
    let (status, body) = line.split_once(' ').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The `sub` of an issued JWT.
pub fn subject(answer: &Value) -> String {
    let token = answer["credential"]["token"].as_str().unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["sub"].as_str().unwrap().to_owned()
}

pub fn uid_of(user: &str) -> String {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    assert!(
        out.status.success(),
        "the test user {user} is missing (tests/peers.sh creates it)"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

pub fn test_user() -> String {
    std::env::var("MINTGUARD_TEST_USER").unwrap_or_else(|_| "mg-test".into())
}

/// A client of the broker's agents listener with the SVID in `root/data`.
pub fn node_client(root: &Path, data: &str) -> mintguard_agent::broker::BrokerClient {
    let stored: Value =
        serde_json::from_slice(&std::fs::read(root.join(data).join("node.json")).unwrap()).unwrap();
    let svid = mintguard_certs::svid::X509Svid::from_pem(
        stored["svid_pem"].as_str().unwrap(),
        stored["key_pem"].as_str().unwrap(),
    )
    .unwrap();
    let bundle = mintguard_certs::bundle::TrustBundle::from_pem(
        mintguard_certs::id::parse_trust_domain("example.org").unwrap(),
        &std::fs::read_to_string(root.join("data/bundle.pem")).unwrap(),
    )
    .unwrap();
    let listen: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("data/listen.json")).unwrap())
            .unwrap();
    mintguard_agent::broker::BrokerClient::new(
        listen["agents"].as_str().unwrap().to_owned(),
        mintguard_certs::tls::SpiffeConnector::new(
            Some(&svid),
            &bundle,
            mintguard_certs::id::IdMatcher::exact(mintguard_certs::id::broker_id(
                bundle.trust_domain(),
            )),
        )
        .unwrap(),
        mintguard_agent::broker::Limits {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retries: 0,
            max_idle: 1,
        },
    )
}
