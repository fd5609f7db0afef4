//! What the load generators share: command-line arguments, the real
//! binaries they start, kept-alive HTTP/1.1 clients over mTLS, and the
//! measured run with its percentiles.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_certs::tls::SpiffeConnector;

/// A binary built beside the running one (same profile).
///
/// # Panics
/// When it is missing.
pub fn sibling(name: &str) -> std::path::PathBuf {
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(name)))
        .unwrap_or_default();
    assert!(
        path.exists(),
        "{} missing: build the broker and agent binaries in the same profile",
        path.display()
    );
    path
}

/// A free loopback TCP port.
///
/// # Panics
/// When none can be bound.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

/// A child process killed (and reaped) when dropped.
pub struct Kill(pub std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `path` exists (and holds `needle`, if given), up to 30 s.
///
/// # Panics
/// When it does not in time.
pub fn wait_for(path: &std::path::Path, needle: Option<&str>) {
    for _ in 0..600 {
        if let Ok(text) = std::fs::read_to_string(path)
            && needle.is_none_or(|n| text.contains(n))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {}", path.display());
}

/// Lowercase hex SHA-256 of `bytes` (an executable's selector).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A numeric argument (`--name N`), or `default`.
pub fn arg(name: &str, default: usize) -> usize {
    arg_str(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A string argument (`--name VALUE`).
pub fn arg_str(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Whether a flag is given.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// One client's HTTP/1.1 connection.
pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A kept-alive mTLS connection to `addr` (TCP_NODELAY, as the agent's pool).
///
/// # Panics
/// When the connection or the handshake fails (a report tool stops there).
pub async fn connect(addr: &str, connector: &SpiffeConnector) -> Sender {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    tcp.set_nodelay(true)
        .unwrap_or_else(|e| panic!("nodelay: {e}"));
    let (tls, _) = connector
        .connect("mintguard-broker", tcp)
        .await
        .unwrap_or_else(|e| panic!("mTLS to {addr}: {e}"));
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap_or_else(|e| panic!("HTTP/1.1 to {addr}: {e}"));
    tokio::spawn(conn);
    sender
}

/// `POST path` with a JSON body; the status and the whole answer.
///
/// # Panics
/// When the connection fails.
pub async fn post(sender: &mut Sender, path: &str, body: &str) -> (u16, Bytes) {
    sender
        .ready()
        .await
        .unwrap_or_else(|e| panic!("connection lost: {e}"));
    let req = hyper::Request::post(path)
        .header("host", "mintguard-broker")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_else(|e| panic!("request: {e}"));
    let res = sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("answer lost: {e}"))
        .to_bytes();
    (status, body)
}

/// Runs `n` requests over `clients` connections (`connect` makes one
/// client's request function); the throughput and a report line.
///
/// # Panics
/// When a client task panics.
pub async fn measure<C, CF, R, RF>(clients: usize, n: usize, connect: C) -> (f64, String)
where
    C: Fn() -> CF,
    CF: Future<Output = R> + Send + 'static,
    R: Fn() -> RF + Send + 'static,
    RF: Future<Output = u16> + Send,
{
    let per_client = n.div_ceil(clients);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let connected = connect();
            tokio::spawn(async move {
                let request = connected.await;
                let mut latencies = Vec::with_capacity(per_client);
                let mut failures = 0usize;
                for _ in 0..per_client {
                    let t = Instant::now();
                    let status = request().await;
                    latencies.push(t.elapsed());
                    failures += usize::from(status != 200);
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(n);
    let mut failures = 0;
    for t in tasks {
        let (l, f) = t.await.unwrap_or_else(|e| panic!("client: {e}"));
        all.extend(l);
        failures += f;
    }
    let elapsed = start.elapsed();
    all.sort_unstable();
    let rate = all.len() as f64 / elapsed.as_secs_f64();
    let line = format!(
        "{} requests in {:.2} s: {rate:.0}/s; latency p50 {:?} p90 {:?} p99 {:?} max {:?}; {failures} non-200",
        all.len(),
        elapsed.as_secs_f64(),
        percentile(&all, 0.5),
        percentile(&all, 0.9),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or_default(),
    );
    (rate, line)
}

/// The `p` quantile (0–1) of sorted latencies (zero when there are none).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
