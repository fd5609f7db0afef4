//! The helpers' side of the Workload API: `credential-process` (AWS SDK
//! `credential_process` JSON) and `fetch` (for shell scripts). The agent
//! attests a helper by its own uid and gid and its parent's executable.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_api::{CredentialRequest, CredentialResponse, ErrorBody};
use serde_json::{Value, json};

/// The default Workload API socket.
pub const DEFAULT_SOCKET: &str = "/run/mintguard/agent.sock";

/// Asks the agent on `socket` for `request`'s credential.
pub async fn request_credential(
    socket: &Path,
    request: &CredentialRequest,
) -> Result<CredentialResponse, String> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("{}: {e} (is mintguard-agent running?)", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    let req = hyper::Request::post("/v1/credentials")
        .header(hyper::header::HOST, "mintguard-agent")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status();
    let bytes = http_body_util::Limited::new(res.into_body(), 1024 * 1024)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(|e| format!("agent answer: {e}"));
    }
    Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(e) if e.error.reasons.is_empty() => {
            format!("{} {}: {}", status.as_u16(), e.error.code, e.error.message)
        }
        Ok(e) => format!(
            "{} {}: {} ({})",
            status.as_u16(),
            e.error.code,
            e.error.message,
            e.error.reasons.join(", ")
        ),
        Err(_) => format!("{} {}", status.as_u16(), String::from_utf8_lossy(&bytes)),
    })
}

/// The AWS `credential_process` JSON for an issued credential, or why not.
pub fn credential_process_json(grant: &str, issued: &CredentialResponse) -> Result<Value, String> {
    let c = &issued.credential;
    match c["type"].as_str() {
        Some("aws") => Ok(json!({
            "Version": 1,
            "AccessKeyId": c["access_key_id"],
            "SecretAccessKey": c["secret_access_key"],
            "SessionToken": c["session_token"],
            "Expiration": issued.expires_at,
        })),
        other => Err(format!(
            "grant_kind_unavailable: grant {grant:?} issues a {} credential; credential-process needs an aws_sts grant",
            other.unwrap_or("unknown")
        )),
    }
}

/// `fetch --format env`: shell assignments, values single-quoted.
pub fn env_lines(issued: &CredentialResponse) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\'', r"'\''"));
    let mut out = format!(
        "MINTGUARD_LEASE_ID={}\nMINTGUARD_EXPIRES_AT={}\n",
        quote(&issued.lease_id),
        quote(&issued.expires_at)
    );
    let c = &issued.credential;
    for (key, field) in [
        ("MINTGUARD_TOKEN", "token"),
        ("AWS_ACCESS_KEY_ID", "access_key_id"),
        ("AWS_SECRET_ACCESS_KEY", "secret_access_key"),
        ("AWS_SESSION_TOKEN", "session_token"),
    ] {
        if let Some(v) = c[field].as_str() {
            out.push_str(&format!("{key}={}\n", quote(v)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issued(credential: Value) -> CredentialResponse {
        CredentialResponse {
            lease_id: "lease-1".into(),
            expires_at: "2026-11-24T22:00:00Z".into(),
            credential,
            decision: Value::Null,
        }
    }

    #[test]
    fn credential_process_json_has_the_sdk_fields_or_a_clear_refusal() {
        let aws = issued(
            json!({"type": "aws", "access_key_id": "AKIA", "secret_access_key": "s", "session_token": "t"}),
        );
        let out = credential_process_json("g", &aws).unwrap();
        assert_eq!(out["Version"], 1);
        assert_eq!(out["SessionToken"], "t");
        assert_eq!(out["Expiration"], "2026-11-24T22:00:00Z");
        let jwt = issued(json!({"type": "jwt", "token": "x"}));
        let e = credential_process_json("g", &jwt).unwrap_err();
        assert!(e.starts_with("grant_kind_unavailable"), "{e}");
    }

    #[test]
    fn env_lines_quote_values() {
        let out = env_lines(&issued(json!({"type": "jwt", "token": "a'b"})));
        assert!(out.contains("MINTGUARD_TOKEN='a'\\''b'\n"), "{out}");
    }
}
