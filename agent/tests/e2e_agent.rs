//! The real `mintguard-agent` against the real `mintguard-broker`: workloads
//! as separate processes (root and a second Unix user via `runuser`) talking
//! HTTP over the agent's Unix socket, attested from the kernel.
//!
//! Needs the workspace's binaries built (`cargo build --workspace`, as
//! tests/run.sh does), `/usr/bin/python3` (or `MINTGUARD_SYSTEM_PYTHON`), the
//! second user `MINTGUARD_TEST_USER` (default `mg-test`, created by
//! tests/peers.sh) and root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

#[test]
fn attestation_follows_the_kernel_uid_executable_and_helper_parent() {
    let mut node = Node::new();
    let token = node.join_token();
    node.start_agent(Some(&token), "agent.toml").unwrap();
    let py = python();
    let py_sha = sha256_of(Path::new(&py));
    let user = test_user();
    let user_uid = uid_of(&user);
    node.entry(
        "spiffe://example.org/w/root",
        &["unix:uid:0".into(), format!("unix:sha256:{py_sha}")],
    );
    node.entry(
        "spiffe://example.org/w/user",
        &[
            format!("unix:uid:{user_uid}"),
            format!("unix:sha256:{py_sha}"),
        ],
    );

    // Same program, two users, two identities.
    let (status, answer) = node.request(None, &py);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(subject(&answer), "spiffe://example.org/w/root");
    let (status, answer) = node.request(Some(&user), &py);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(subject(&answer), "spiffe://example.org/w/user");

    // Another executable (one byte more): unattested, with its selectors.
    let modified = node.root().join("python-modified");
    let mut bytes = std::fs::read(std::fs::canonicalize(&py).unwrap()).unwrap();
    bytes.push(0);
    std::fs::write(&modified, &bytes).unwrap();
    std::fs::set_permissions(&modified, std::fs::Permissions::from_mode(0o755)).unwrap();
    let modified_sha = sha256_of(&modified);
    let (status, answer) = node.request(None, modified.to_str().unwrap());
    assert_eq!(status, 401, "{answer}");
    assert_eq!(answer["error"]["code"], "not_attested");
    let reasons = answer["error"]["reasons"].to_string();
    assert!(
        reasons.contains(&format!("unix:sha256:{modified_sha}")),
        "{reasons}"
    );

    // A path that names another file in the agent's view (as a container's
    // own filesystem does): no unix:path selector. Here a private mount
    // namespace binds the unattested binary over `app`, a copy of the
    // trusted one, and runs it as `app`.
    let app = node.root().join("app");
    std::fs::copy(std::fs::canonicalize(&py).unwrap(), &app).unwrap();
    let socket = node.socket();
    let script = format!(
        "mount --bind {modified} {app} && exec {app} {workload} request {socket} payments-token",
        modified = modified.display(),
        app = app.display(),
        workload = node.root().join("workload.py").display(),
        socket = socket.display(),
    );
    let out = Command::new("unshare")
        .args(["--mount", "--", "/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(!line.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, answer) = parse_line(&line);
    assert_eq!(status, 401, "{answer}");
    let reasons = answer["error"]["reasons"].to_string();
    assert!(
        reasons.contains(&format!("unix:sha256:{modified_sha}")),
        "{reasons}"
    );
    assert!(!reasons.contains("unix:path:"), "{reasons}");
    assert!(
        node.request(None, modified.to_str().unwrap()).1["error"]["reasons"]
            .to_string()
            .contains("unix:path:"),
        "where the path names the file it runs, it is given"
    );

    // Exec on a kept-alive connection: refused (what the process wrote
    // before its exec would otherwise pass as the new binary's), and the
    // connection closed; a new connection is attested as the new binary.
    let lines = node.workload(
        None,
        &py,
        &[
            "exec",
            socket.to_str().unwrap(),
            "payments-token",
            modified.to_str().unwrap(),
        ],
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(parse_line(&lines[0]).0, 200, "{lines:?}");
    let (status, answer) = parse_line(&lines[1]);
    assert_eq!(status, 401, "{lines:?}");
    assert_eq!(answer["error"]["code"], "executed_since_connect");

    // The other way round: an unattested binary connects, forks a child
    // that keeps the socket, and execs the trusted one. The child must not
    // borrow the trusted identity through the connection: the kernel
    // stamps its bytes with its own pid.
    let lines = node.workload(
        None,
        modified.to_str().unwrap(),
        &["lend", socket.to_str().unwrap(), "payments-token", &py],
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    let (status, answer) = parse_line(&lines[0]);
    assert_eq!(status, 401, "{lines:?}");
    assert_eq!(answer["error"]["code"], "connection_shared");

    // The agent's own helper is attested as its parent (here: sh).
    let sh = std::fs::canonicalize("/bin/sh").unwrap();
    node.entry(
        "spiffe://example.org/w/script",
        &[
            "unix:uid:0".into(),
            format!("unix:sha256:{}", sha256_of(&sh)),
        ],
    );
    let agent = bin("mintguard-agent");
    let helper = format!(
        "{} credential-process --grant payments-token --socket {}",
        agent.display(),
        socket.display()
    );
    let out = Command::new("/bin/sh")
        .args(["-c", &helper])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Attested as sh, issued a JWT, which credential_process cannot carry.
    assert!(!out.status.success());
    assert!(stderr.contains("grant_kind_unavailable"), "{stderr}");
    let fetched = Command::new("/bin/sh")
        .args([
            "-c",
            &format!(
                "{} fetch --grant payments-token --format token --socket {}",
                agent.display(),
                socket.display()
            ),
        ])
        .output()
        .unwrap();
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&fetched.stdout).split('.').count(),
        3
    );

    // An orphaned helper (its parent exited; reparented to init or a
    // subreaper) never borrows its new parent's identity.
    let err = node.root().join("orphan.err");
    let orphan = format!("(sleep 0.5; exec {helper} 2>{}) & exit 0", err.display());
    assert!(
        Command::new("/bin/sh")
            .args(["-c", &orphan])
            .status()
            .unwrap()
            .success()
    );
    wait_for("the orphaned helper", Duration::from_secs(30), || {
        std::fs::read_to_string(&err).is_ok_and(|t| !t.is_empty())
    });
    let text = std::fs::read_to_string(&err).unwrap();
    assert!(text.contains("credential helper refused"), "{text}");

    // The same in a pid namespace (as in a container): reparented to the
    // namespace's init, which is PID 1 only there.
    let err = node.root().join("orphan-in-namespace.err");
    let inner = format!("(sleep 0.5; exec {helper} 2>{}) & exit 0", err.display());
    let script = format!("/bin/sh -c '{inner}'; sleep 5; true");
    let mut init = Command::new("unshare")
        .args(["--pid", "--fork", "--", "/bin/sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_for(
        "the helper orphaned in a namespace",
        Duration::from_secs(30),
        || std::fs::read_to_string(&err).is_ok_and(|t| !t.is_empty()),
    );
    let text = std::fs::read_to_string(&err).unwrap();
    assert!(text.contains("PID 1 of its pid namespace"), "{text}");
    let _ = init.kill();
    let _ = init.wait();
}

#[test]
fn bound_leases_outages_restarts_and_used_tokens() {
    let mut node = Node::new();
    let token = node.join_token();
    node.start_agent(Some(&token), "agent.toml").unwrap();
    let py = python();
    node.entry(
        "spiffe://example.org/w/root",
        &[
            "unix:uid:0".into(),
            format!("unix:sha256:{}", sha256_of(Path::new(&py))),
        ],
    );

    // bind_to_process: the lease is revoked once the process exits.
    let socket = node.socket();
    let mut bound = Command::new(&py)
        .arg(node.root().join("workload.py"))
        .args(["bind", socket.to_str().unwrap(), "payments-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(bound.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (status, answer) = parse_line(line.trim());
    assert_eq!(status, 200, "{answer}");
    let lease = answer["lease_id"].as_str().unwrap().to_owned();
    let live = |node: &Node| {
        node.mg_json(&["leases"])
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["id"] == lease.as_str())
            .map(|l| l["live"] == true)
    };
    assert_eq!(live(&node), Some(true));
    drop(bound.stdin.take()); // EOF: the workload exits
    bound.wait().unwrap();
    wait_for(
        "the bound lease's revocation",
        Duration::from_secs(30),
        || live(&node) == Some(false),
    );
    assert!(
        node.mg_json(&["leases", "--outlived"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    // The broker down: a 503 with a reason; back up: served, same agent.
    node.kill_broker();
    let (status, answer) = node.request(None, &py);
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer["error"]["code"], "broker_unavailable");
    node.start_broker();
    let (status, answer) = node.request(None, &py);
    assert_eq!(status, 200, "{answer}");

    // An agent restart reuses its SVID: no join token needed.
    node.kill_agents();
    node.start_agent(None, "agent.toml").unwrap();
    let log = std::fs::read_to_string(node.root().join("agent.toml.log")).unwrap();
    assert!(log.contains("reusing the stored node SVID"), "{log}");
    assert_eq!(node.request(None, &py).0, 200);

    // A used join token is refused to a second agent.
    let second = node.second_agent_config();
    let e = node
        .start_agent(Some(&token), second)
        .expect_err("a used join token enrolled a second node");
    assert!(e.contains("invalid_join_token"), "{e}");
}

fn raw(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(reply: &str) -> u16 {
    reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

#[test]
fn bad_input_on_the_socket_never_blocks_other_workloads() {
    // Room for the idle connections below in this process.
    let pid = std::process::id().to_string();
    assert!(
        Command::new("prlimit")
            .args(["--pid", &pid, "--nofile=4096:4096"])
            .status()
            .unwrap()
            .success()
    );
    let mut node = Node::new();
    let token = node.join_token();
    node.start_agent(Some(&token), "agent.toml").unwrap();
    let py = python();
    node.entry(
        "spiffe://example.org/w/root",
        &[
            "unix:uid:0".into(),
            format!("unix:sha256:{}", sha256_of(Path::new(&py))),
        ],
    );
    let socket = node.socket();

    // 1,000 connections of another user at once: it keeps its share (256
    // by default), the rest are closed at once and take no slot.
    let mut flood = Command::new("runuser")
        .args(["-u", &test_user(), "--", &py])
        .arg(node.root().join("workload.py"))
        .args(["flood", socket.to_str().unwrap(), "1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut counts = String::new();
    BufReader::new(flood.stdout.take().unwrap())
        .read_line(&mut counts)
        .unwrap();
    assert_eq!(counts.trim(), "256 744", "served and closed");
    let mut slow = UnixStream::connect(&socket).unwrap();
    slow.write_all(b"POST /v1/credentials HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        .unwrap();

    let json = "Content-Type: application/json\r\n";
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("malformed HTTP", b"GARBAGE\r\n\r\n".to_vec(), 400, ""),
        (
            "huge headers",
            format!("GET /v1/health HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "a".repeat(100_000)).into_bytes(),
            431,
            "",
        ),
        (
            "huge body",
            format!("POST /v1/credentials HTTP/1.1\r\nHost: a\r\n{json}Content-Length: 10000000\r\nConnection: close\r\n\r\n{}", "x".repeat(70_000)).into_bytes(),
            413,
            "",
        ),
        (
            "wrong content type",
            b"POST /v1/credentials HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec(),
            415,
            "bad_content_type",
        ),
        (
            "bad JSON",
            format!("POST /v1/credentials HTTP/1.1\r\nHost: a\r\n{json}Content-Length: 5\r\nConnection: close\r\n\r\n{{nope").into_bytes(),
            400,
            "bad_json",
        ),
        (
            "unknown field",
            {
                let body = r#"{"grant":"g","sneaky":"field"}"#;
                format!("POST /v1/credentials HTTP/1.1\r\nHost: a\r\n{json}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
            },
            400,
            "bad_json",
        ),
        (
            "bad lease id",
            b"DELETE /v1/credentials/..%2Fetc HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(),
            400,
            "bad_lease_id",
        ),
        ("unknown path", b"GET /v2/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".to_vec(), 404, "not_found"),
        (
            "Content-Length and Transfer-Encoding",
            format!("POST /v1/credentials HTTP/1.1\r\nHost: a\r\n{json}Content-Length: 3\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n10\r\n{{\"grant\":\"g\"}}\r\n0\r\n\r\n").into_bytes(),
            400,
            "ambiguous_framing",
        ),
    ];
    // Bodies past every bound: a 400 with its reason, nothing forwarded.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let huge_purpose = format!(r#"{{"grant":"g","purpose":"{}"}}"#, "p".repeat(1_000_000));
    let bodies: Vec<(&str, String, u16, &str)> = vec![
        (
            "u64::MAX ttl",
            r#"{"grant":"g","ttl_seconds":18446744073709551615}"#.into(),
            400,
            "bad_ttl",
        ),
        (
            "ttl past the bound",
            r#"{"grant":"g","ttl_seconds":2678401}"#.into(),
            400,
            "bad_ttl",
        ),
        (
            "float ttl",
            r#"{"grant":"g","ttl_seconds":1.5}"#.into(),
            400,
            "bad_json",
        ),
        (
            "NUL in the grant",
            r#"{"grant":"g\u0000"}"#.into(),
            400,
            "bad_grant",
        ),
        (
            "escape in the purpose",
            r#"{"grant":"g","purpose":"\u001b[2J"}"#.into(),
            400,
            "bad_purpose",
        ),
        (
            "duplicate keys",
            r#"{"grant":"g","grant":"h"}"#.into(),
            400,
            "bad_json",
        ),
        ("nesting 10,000 deep", deep, 400, "bad_json"),
        ("1 MB purpose", huge_purpose, 413, ""),
    ];
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = cases
        .into_iter()
        .chain(bodies.into_iter().map(|(name, body, status, code)| {
            let bytes = format!(
                "POST /v1/credentials HTTP/1.1\r\nHost: a\r\n{json}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            (name, bytes.into_bytes(), status, code)
        }))
        .collect();
    let mut failures = Vec::new();
    for (name, bytes, status, code) in &cases {
        let reply = raw(&socket, bytes);
        if status_of(&reply) != *status || !reply.contains(code) {
            failures.push(format!(
                "{name}: expected {status} {code}, got {:?}",
                reply.chars().take(200).collect::<String>()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // With another user's connections held and a slowloris open, a workload
    // is served.
    let (status, answer) = node.request(None, &py);
    assert_eq!(status, 200, "{answer}");
    let health = raw(
        &socket,
        b"GET /v1/health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&health), 200, "{health}");
    assert!(
        node.agents[0].try_wait().unwrap().is_none(),
        "the agent died"
    );
    // A body announced and never sent: answered (4xx) once the body
    // deadline passes instead of holding its slot. (raw's read gives up
    // after 20 s, twice the deadline, and then finds no answer.)
    let stalled = raw(
        &socket,
        format!(
            "POST /v1/credentials HTTP/1.1\r\nHost: a\r\n{json}Content-Length: 1000\r\n\r\n{{\"grant\""
        )
        .as_bytes(),
    );
    assert_eq!(status_of(&stalled), 408, "{stalled:?}");
    assert!(stalled.contains("body_timeout"), "{stalled:?}");
    // Trickled a byte at a time, every 2 s: the deadline is the total, not
    // the gap between bytes.
    let mut trickle = UnixStream::connect(&socket).unwrap();
    trickle
        .write_all(
            format!(
                "POST /v1/credentials HTTP/1.1\r\nHost: a\r\n{json}Content-Length: 100\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    trickle.set_nonblocking(true).unwrap();
    let mut answer = Vec::new();
    for _ in 0..15 {
        if trickle.write_all(b" ").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_secs(2));
        let mut chunk = [0u8; 4096];
        if let Ok(n) = trickle.read(&mut chunk) {
            answer.extend_from_slice(&chunk[..n]);
            if n > 0 {
                break;
            }
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&answer), 408, "{answer:?}");
    drop(flood.stdin.take());
    flood.wait().unwrap();
    drop(slow);
}

/// One HTTP/1.1 GET over TCP; (status, JSON body).
fn tcp_get(url: &str, token: &str) -> (u16, Value) {
    let rest = url.strip_prefix("http://").unwrap();
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {token}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (
        status_of(&out),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

#[test]
fn container_credentials_tokens_are_bound_to_their_process() {
    let mut node = Node::new();
    let token = node.join_token();
    node.start_agent(Some(&token), "agent.toml").unwrap();
    let py = python();
    node.entry(
        "spiffe://example.org/w/root",
        &[
            "unix:uid:0".into(),
            format!("unix:sha256:{}", sha256_of(Path::new(&py))),
        ],
    );
    let socket = node.socket();
    let mut holder = Command::new(&py)
        .arg(node.root().join("workload.py"))
        .args(["cctoken", socket.to_str().unwrap(), "payments-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (status, answer) = parse_line(line.trim());
    assert_eq!(status, 200, "{answer}");
    let (cc_token, url) = (
        answer["token"].as_str().unwrap(),
        answer["full_uri"].as_str().unwrap(),
    );
    let listen: Value = serde_json::from_str(
        &std::fs::read_to_string(node.root().join("agent-data/listen.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(listen["container_credentials"], url);

    // The token works for its process: attested, decided, minted — a JWT
    // grant, which the container-credentials JSON cannot carry.
    let (status, body) = tcp_get(url, cc_token);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("grant_kind_unavailable")),
        "{body}"
    );
    let (status, body) = tcp_get(url, "mgcc-not-a-token");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unknown_token")),
        "{body}"
    );

    // The process exits: its token dies with it.
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let (status, body) = tcp_get(url, cc_token);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unknown_token")),
        "{body}"
    );
}

/// Node 2 forges node 1's workload's selectors in a hand-made request to the
/// broker (its own SVID, mTLS): the broker matches only node 2's entries.
#[test]
fn a_node_cannot_vouch_for_another_nodes_entries() {
    let mut node = Node::new();
    let token = node.join_token();
    node.start_agent(Some(&token), "agent.toml").unwrap();
    let py = python();
    let selectors = vec![
        "unix:uid:0".to_owned(),
        format!("unix:sha256:{}", sha256_of(Path::new(&py))),
    ];
    node.entry("spiffe://example.org/w/root", &selectors);
    let token2 = node.mg_json(&["token", "create", "--node", "node-2", "--ttl", "10m"])["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = node.second_agent_config();
    node.start_agent(Some(&token2), second).unwrap();

    // Through node 2's agent: not attested (no entry of node 2 matches).
    let socket2 = node.root().join("sock/agent2.sock");
    let lines = node.workload(
        None,
        &py,
        &["request", socket2.to_str().unwrap(), "payments-token"],
    );
    let (status, answer) = parse_line(&lines[0]);
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (401, Some("not_attested")),
        "{answer}"
    );

    // By hand, with node 2's SVID and node 1's workload's selectors.
    let stored: Value =
        serde_json::from_slice(&std::fs::read(node.root().join("agent2-data/node.json")).unwrap())
            .unwrap();
    let svid = mintguard_certs::svid::X509Svid::from_pem(
        stored["svid_pem"].as_str().unwrap(),
        stored["key_pem"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/mintguard/node/node-2"
    );
    let client = node_client(node.root(), "agent2-data");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for wanted in [None, Some("spiffe://example.org/w/root")] {
        let forged = serde_json::json!({
            "selectors": selectors,
            "request": {"grant": "payments-token", "spiffe_id": wanted},
        });
        let reply = runtime
            .block_on(client.send("POST", "/v1/issue", Some(forged.to_string().into_bytes())))
            .unwrap();
        let body: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(
            (reply.status, body["error"]["code"].as_str()),
            (401, Some("not_attested")),
            "{body}"
        );
    }
    // Node 1's own agent still serves it.
    assert_eq!(node.request(None, &py).0, 200);
}

#[test]
fn the_agent_refuses_unsafe_socket_paths_and_renews_its_svid() {
    let mut node = Node::with_broker_config("[ca]\nsvid_ttl = \"4s\"\nca_ttl = \"1h\"\n");
    let token = node.join_token();
    let config = std::fs::read_to_string(node.root().join("agent.toml")).unwrap();

    // A world-writable parent directory: anyone could swap the socket.
    std::fs::create_dir_all(node.root().join("open")).unwrap();
    std::fs::set_permissions(
        node.root().join("open"),
        std::fs::Permissions::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(
        node.root().join("unsafe.toml"),
        config.replace("sock/agent.sock", "open/agent.sock"),
    )
    .unwrap();
    let e = node.start_agent(Some(&token), "unsafe.toml").unwrap_err();
    assert!(e.contains("writable by its group or by anyone"), "{e}");
    // Group-writable, or owned by another user, neither.
    std::fs::set_permissions(
        node.root().join("open"),
        std::fs::Permissions::from_mode(0o770),
    )
    .unwrap();
    let e = node.start_agent(Some(&token), "unsafe.toml").unwrap_err();
    assert!(e.contains("writable by its group or by anyone"), "{e}");
    std::fs::set_permissions(
        node.root().join("open"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::chown(node.root().join("open"), Some(4242), None).unwrap();
    let e = node.start_agent(Some(&token), "unsafe.toml").unwrap_err();
    assert!(e.contains("neither root nor the agent's uid"), "{e}");
    // An existing file that is not a socket is never replaced.
    std::fs::write(node.root().join("sock/file"), "keep me").unwrap();
    std::fs::write(
        node.root().join("file.toml"),
        config.replace("sock/agent.sock", "sock/file"),
    )
    .unwrap();
    let e = node.start_agent(Some(&token), "file.toml").unwrap_err();
    assert!(e.contains("not a socket"), "{e}");
    assert_eq!(
        std::fs::read_to_string(node.root().join("sock/file")).unwrap(),
        "keep me"
    );

    // The join token was not spent by the refused starts; the SVID (4 s) is
    // renewed at half-life, and workloads are served across renewals.
    node.start_agent(Some(&token), "agent.toml").unwrap();
    let py = python();
    node.entry(
        "spiffe://example.org/w/root",
        &[
            "unix:uid:0".into(),
            format!("unix:sha256:{}", sha256_of(Path::new(&py))),
        ],
    );
    let log = node.root().join("agent.toml.log");
    wait_for("two SVID renewals", Duration::from_secs(60), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("node SVID renewed")
            .count()
            >= 2
    });
    assert_eq!(node.request(None, &py).0, 200);
}

/// A workload gets a Vault token through the agent and the broker (the
/// OpenBao from tests/peers.sh) and uses it; revoking its lease revokes the
/// token in Vault. It gets database credentials from OpenBao's database
/// engine on the test PostgreSQL, logs in with them, and after its own
/// `DELETE /v1/credentials/{lease}` (and, separately, after `mintguard
/// suspend`) they no longer log in.
#[test]
fn a_workload_gets_vault_tokens_and_database_credentials_through_the_agent() {
    let addr = std::env::var("VAULT_ADDR").expect("VAULT_ADDR: run under tests/peers.sh");
    let root = std::env::var("VAULT_TOKEN").expect("VAULT_TOKEN: run under tests/peers.sh");
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("vault.token");
    std::fs::write(&token_file, &root).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db_path = rt.block_on(mintguard_tests::database_engine(
        &addr,
        &root,
        &format!("agentdb{}", std::process::id()),
    ));
    let mut node = Node::with_broker_config(&format!(
        "[vault]\naddress = \"{addr}\"\ntoken_file = \"{}\"\n[[grants]]\nname = \"vault-token\"\nkind = \"vault\"\nmax_ttl = \"10m\"\nvault = {{ token = {{ policies = [\"default\"] }} }}\n[[grants]]\nname = \"payments-db\"\nkind = \"vault\"\nmax_ttl = \"10m\"\nvault = {{ secret = {{ path = \"{db_path}\" }} }}\n",
        token_file.display()
    ));
    let token = node.join_token();
    node.start_agent(Some(&token), "agent.toml").unwrap();
    let py = python();
    let selectors = [
        "unix:uid:0".to_owned(),
        format!("unix:sha256:{}", sha256_of(Path::new(&py))),
    ];
    let mut args = vec![
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://example.org/w/root",
        "--parent",
        "node-1",
        "--grant",
        "vault-token",
        "--grant",
        "payments-db",
    ];
    for s in &selectors {
        args.push("--selector");
        args.push(s);
    }
    assert!(node.mg(&args).status.success());
    let socket = node.socket();
    let lines = node.workload(
        None,
        &py,
        &["request", socket.to_str().unwrap(), "vault-token"],
    );
    let (status, answer) = parse_line(&lines[0]);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["credential"]["type"], "vault_token");
    let vault_token = answer["credential"]["token"].as_str().unwrap().to_owned();
    let lookup = |t: &str| {
        let host = addr.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(host).unwrap();
        write!(s, "GET /v1/auth/token/lookup-self HTTP/1.1\r\nHost: {host}\r\nX-Vault-Token: {t}\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        status_of(&out)
    };
    assert_eq!(lookup(&vault_token), 200);

    // Revoking the lease (an operator, here) revokes the token in Vault.
    let lease = answer["lease_id"].as_str().unwrap();
    assert!(node.mg(&["revoke", lease]).status.success());
    assert_ne!(lookup(&vault_token), 200);

    // Database credentials: they log in until the workload deletes its lease.
    let db_credentials = || {
        let lines = node.workload(
            None,
            &py,
            &["request", socket.to_str().unwrap(), "payments-db"],
        );
        let (status, answer) = parse_line(&lines[0]);
        assert_eq!(status, 200, "{answer}");
        let data = &answer["credential"]["data"];
        (
            answer["lease_id"].as_str().unwrap().to_owned(),
            data["username"].as_str().unwrap().to_owned(),
            data["password"].as_str().unwrap().to_owned(),
        )
    };
    let login = |user: &str, password: &str| rt.block_on(mintguard_tests::pg_login(user, password));
    let (lease, user, password) = db_credentials();
    login(&user, &password).unwrap();
    let lines = node.workload(None, &py, &["delete", socket.to_str().unwrap(), &lease]);
    assert_eq!(parse_line(&lines[0]).0, 204, "{lines:?}");
    assert!(
        login(&user, &password).is_err(),
        "deleted credentials still log in"
    );
    // … and until the identity is suspended.
    let (_, user, password) = db_credentials();
    login(&user, &password).unwrap();
    let out = node.mg(&[
        "suspend",
        "spiffe://example.org/w/root",
        "--reason",
        "compromised",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        login(&user, &password).is_err(),
        "a suspended identity's credentials still log in"
    );
}

/// The real AWS CLI gets STS credentials (from moto) through the agent:
/// once with a `credential_process` profile running `mintguard-agent
/// credential-process` (attested as the CLI's interpreter, its parent), once
/// through the container-credentials endpoint with a token bound to the
/// attested workload that asked for it.
#[test]
fn the_aws_cli_gets_sts_credentials_through_the_agent() {
    let endpoint = std::env::var("MINTGUARD_STS_ENDPOINT")
        .expect("MINTGUARD_STS_ENDPOINT: run under tests/peers.sh");
    let aws =
        std::env::var("MINTGUARD_AWS_CLI").expect("MINTGUARD_AWS_CLI: run under tests/peers.sh");
    let mut node = Node::with_broker_config(&format!(
        "[aws]\nregion = \"us-east-1\"\nendpoint = \"{endpoint}\"\n[[grants]]\nname = \"aws-payments\"\nkind = \"aws_sts\"\nmax_ttl = \"1h\"\naws_sts = {{ role_arn = \"arn:aws:iam::123456789012:role/payments\", ttl_floor = \"upstream\" }}\n"
    ));
    let token = node.join_token();
    node.start_agent(Some(&token), "agent.toml").unwrap();
    let py = python();
    let py_sha = sha256_of(Path::new(&py));
    // The CLI's interpreter (its shebang), the credential helper's parent.
    let shebang = std::fs::read_to_string(&aws)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .trim_start_matches("#!")
        .trim()
        .to_owned();
    let cli_sha = sha256_of(Path::new(&shebang));
    let entry = |id: &str, sha: &str| {
        let sel = format!("unix:sha256:{sha}");
        let out = node.mg(&[
            "entry",
            "create",
            "--spiffe-id",
            id,
            "--parent",
            "node-1",
            "--selector",
            "unix:uid:0",
            "--selector",
            &sel,
            "--grant",
            "aws-payments",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    entry("spiffe://example.org/w/python", &py_sha);
    let cli_id = if cli_sha == py_sha {
        "example.org@w@python"
    } else {
        entry("spiffe://example.org/w/awscli", &cli_sha);
        "example.org@w@awscli"
    };
    let socket = node.socket();
    let run_cli = |envs: &[(&str, String)]| {
        let out = Command::new(&aws)
            .args([
                "sts",
                "get-caller-identity",
                "--output",
                "json",
                "--endpoint-url",
                &endpoint,
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", node.root())
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "aws cli: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        v["Arn"].as_str().unwrap().to_owned()
    };

    // credential_process.
    let config = node.root().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[profile mg]\ncredential_process = {} credential-process --grant aws-payments --socket {}\n",
            bin("mintguard-agent").display(),
            socket.display()
        ),
    )
    .unwrap();
    let arn = run_cli(&[
        ("AWS_CONFIG_FILE", config.display().to_string()),
        ("AWS_PROFILE", "mg".into()),
    ]);
    assert!(
        arn.ends_with(&format!("assumed-role/payments/{cli_id}")),
        "{arn}"
    );

    // Container credentials, with a token the Python workload asked for.
    let mut holder = Command::new(&py)
        .arg(node.root().join("workload.py"))
        .args(["cctoken", socket.to_str().unwrap(), "aws-payments"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let (status, answer) = parse_line(line.trim());
    assert_eq!(status, 200, "{answer}");
    let arn = run_cli(&[
        (
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            answer["full_uri"].as_str().unwrap().to_owned(),
        ),
        (
            "AWS_CONTAINER_AUTHORIZATION_TOKEN",
            answer["token"].as_str().unwrap().to_owned(),
        ),
    ]);
    assert!(
        arn.ends_with("assumed-role/payments/example.org@w@python"),
        "{arn}"
    );
    drop(holder.stdin.take());
    holder.wait().unwrap();
}
