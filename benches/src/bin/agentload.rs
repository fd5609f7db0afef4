//! End-to-end load through the node agent: N concurrent workloads (this
//! process, kept-alive HTTP/1.1 on the agent's Unix socket) → the real
//! `mintguard-agent` (attestation from the kernel on every request, kept-alive
//! mTLS to the broker) → the real `mintguard-broker` (SQLite WAL,
//! `synchronous=FULL`, group commit) → an ES256 JWT. Prints throughput,
//! latency percentiles and the agent's resident memory.
//!
//! ```text
//! cargo build --release -p mintguard-broker -p mintguard-agent -p mintguard-benches --bins
//! target/release/agentload [--clients 32] [--requests 20000]
//! ```

#![allow(clippy::print_stdout, clippy::expect_used, clippy::unwrap_used)] // a report tool; setup failures stop it

use std::process::{Command, Stdio};
use std::time::Instant;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_benches::load::{Kill, arg, free_port, percentile, sha256_hex, sibling, wait_for};

fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let clients = arg("--clients", 32);
    let requests = arg("--requests", 20_000);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (public, agents, admin) = (free_port(), free_port(), free_port());
    std::fs::create_dir_all(root.join("policies")).unwrap();
    std::fs::write(
        root.join("policies/all.cedar"),
        r#"permit (principal, action == Mintguard::Action::"mint", resource == Mintguard::Grant::"payments-token");"#,
    )
    .unwrap();
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
[limits]
per_node_per_second = 1000000
per_identity_per_second = 1000000
[[grants]]
name = "payments-token"
kind = "jwt"
max_ttl = "15m"
jwt = {{ audience = "payments" }}
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
[socket]
path = "agent.sock"
mode = "0600"
"#
        ),
    )
    .unwrap();
    let run = |cmd: &mut Command| {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    run(Command::new(sibling("mintguard-broker"))
        .args(["operator", "create", "bench", "--config"])
        .arg(root.join("broker.toml")));
    let _broker = Kill(
        Command::new(sibling("mintguard-broker"))
            .args(["run", "--config"])
            .arg(root.join("broker.toml"))
            .stderr(std::fs::File::create(root.join("broker.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&root.join("data/listen.json"), None);
    let mg = |args: &[&str]| {
        run(Command::new(sibling("mintguard"))
            .arg("--data-dir")
            .arg(root.join("data"))
            .args(args))
    };
    let token: serde_json::Value =
        serde_json::from_slice(&mg(&["token", "create", "--node", "node-1"])).unwrap();
    let exe = std::fs::read("/proc/self/exe").unwrap();
    let sha = sha256_hex(&exe);
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("Uid:")
                .map(|v| v.split_whitespace().next().unwrap().to_owned())
        })
        .unwrap();
    mg(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/ns/pay/sa/api",
        "--parent",
        "node-1",
        "--selector",
        &format!("unix:uid:{uid}"),
        "--selector",
        &format!("unix:sha256:{sha}"),
        "--grant",
        "payments-token",
    ]);
    let agent = Kill(
        Command::new(sibling("mintguard-agent"))
            .args(["run", "--config"])
            .arg(root.join("agent.toml"))
            .env("MINTGUARD_JOIN_TOKEN", token["token"].as_str().unwrap())
            .env("RUST_LOG", "warn,mintguard_agent=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(root.join("agent.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for(&root.join("agent.log"), Some("serving workloads"));
    let agent_pid = agent.0.id();
    let socket = root.join("agent.sock");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (label, n) in [("warm-up", requests / 10), ("measured", requests)] {
            let per_client = n.div_ceil(clients);
            let start = Instant::now();
            let tasks: Vec<_> = (0..clients)
                .map(|_| {
                    let socket = socket.clone();
                    tokio::spawn(async move {
                        let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
                        let (mut sender, conn) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                        tokio::spawn(conn);
                        let mut latencies = Vec::with_capacity(per_client);
                        let mut failures = 0usize;
                        for _ in 0..per_client {
                            let t = Instant::now();
                            sender.ready().await.unwrap();
                            let req = hyper::Request::post("/v1/credentials")
                                .header("host", "agent")
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(
                                    br#"{"grant":"payments-token","ttl_seconds":300}"#,
                                )))
                                .unwrap();
                            let res = sender.send_request(req).await.unwrap();
                            let ok = res.status() == 200;
                            let _ = res.into_body().collect().await.unwrap();
                            latencies.push(t.elapsed());
                            failures += usize::from(!ok);
                        }
                        (latencies, failures)
                    })
                })
                .collect();
            let mut all = Vec::with_capacity(n);
            let mut failures = 0;
            for t in tasks {
                let (l, f) = t.await.unwrap();
                all.extend(l);
                failures += f;
            }
            let elapsed = start.elapsed();
            all.sort_unstable();
            if label == "measured" {
                let (rss, hwm) = memory_kib(agent_pid);
                println!(
                    "{clients} clients via the agent, {} issuances in {:.2} s: {:.0} issuances/s; latency p50 {:?} p90 {:?} p99 {:?} max {:?}; {failures} non-200; agent RSS {} KiB (peak {} KiB)",
                    all.len(),
                    elapsed.as_secs_f64(),
                    all.len() as f64 / elapsed.as_secs_f64(),
                    percentile(&all, 0.5),
                    percentile(&all, 0.9),
                    percentile(&all, 0.99),
                    all[all.len() - 1],
                    rss,
                    hwm,
                );
            }
        }
    });
    println!("broker store: SQLite WAL, synchronous=FULL (fsync per commit), group commit");
    drop(agent);
}
