//! JWTs signed with Mintguard's keys verify with an independent verifier
//! (`jsonwebtoken`) that sees only the JWKS fetched over real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed setup must fail the test

use std::convert::Infallible;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mintguard_certs::jwt::{Expiring, JwtAlgorithm, JwtKeySet, JwtSettings};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    jti: String,
    iat: i64,
    exp: i64,
}

impl Expiring for Claims {
    fn expires_at(&self) -> i64 {
        self.exp
    }
}

fn claims(now: OffsetDateTime, ttl: i64, jti: &str) -> Claims {
    Claims {
        iss: "https://broker.example.org".into(),
        sub: "spiffe://example.org/ns/pay/sa/api".into(),
        aud: "payments".into(),
        jti: jti.into(),
        iat: now.unix_timestamp(),
        exp: now.unix_timestamp() + ttl,
    }
}

/// Serves whatever JWKS document `doc` holds at `/.well-known/jwks.json`.
async fn serve_jwks(doc: Arc<RwLock<String>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let doc = doc.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let doc = doc.clone();
                        async move {
                            let response = if req.uri().path() == "/.well-known/jwks.json" {
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(doc.read().unwrap().clone())))
                            } else {
                                Response::builder()
                                    .status(StatusCode::NOT_FOUND)
                                    .body(Full::new(Bytes::new()))
                            };
                            Ok::<_, Infallible>(response.unwrap())
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    format!("http://{addr}/.well-known/jwks.json")
}

/// Fetches the JWKS the way a relying party would: over HTTP, as JSON.
async fn fetch_jwks(url: &str) -> JwkSet {
    let uri: hyper::Uri = url.parse().unwrap();
    let tcp = TcpStream::connect(uri.authority().unwrap().as_str())
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(uri.path())
        .header("host", uri.authority().unwrap().as_str())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// The independent verifier: `jsonwebtoken`, fed only the fetched JWKS.
fn verify(token: &str, jwks: &JwkSet) -> Result<Claims, String> {
    let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
    let kid = header.kid.ok_or("no kid")?;
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not in JWKS"))?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&["payments"]);
    validation.set_issuer(&["https://broker.example.org"]);
    validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map(|d| d.claims)
        .map_err(|e| e.to_string())
}

async fn sign_serve_verify_rotate(alg: JwtAlgorithm, expected: Algorithm) {
    let settings = JwtSettings {
        algorithm: alg,
        max_token_ttl: Duration::from_secs(600),
    };
    let mut keys = JwtKeySet::in_memory(settings).unwrap();
    let now = OffsetDateTime::now_utc();
    let doc = Arc::new(RwLock::new(serde_json::to_string(&keys.jwks(now)).unwrap()));
    let url = serve_jwks(doc.clone()).await;

    let token = keys.sign(&claims(now, 300, "lease-1"), now).unwrap();
    assert_eq!(jsonwebtoken::decode_header(&token).unwrap().alg, expected);
    let got = verify(&token, &fetch_jwks(&url).await).unwrap();
    assert_eq!(got, claims(now, 300, "lease-1"));

    // A tampered payload does not verify.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    parts[1] = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        serde_json::to_vec(&claims(now, 300, "lease-2")).unwrap(),
    );
    assert!(verify(&parts.join("."), &fetch_jwks(&url).await).is_err());

    // Rotate: the relying party refetches; the old token still verifies, and
    // tokens from the new key verify too.
    keys.rotate(now).unwrap();
    *doc.write().unwrap() = serde_json::to_string(&keys.jwks(now)).unwrap();
    let jwks = fetch_jwks(&url).await;
    assert_eq!(jwks.keys.len(), 2);
    verify(&token, &jwks).unwrap();
    let fresh = keys.sign(&claims(now, 300, "lease-3"), now).unwrap();
    verify(&fresh, &jwks).unwrap();

    // After max_token_ttl every token of the old key has expired, and the key
    // leaves the JWKS.
    let later = now + time::Duration::seconds(601);
    *doc.write().unwrap() = serde_json::to_string(&keys.jwks(later)).unwrap();
    let jwks = fetch_jwks(&url).await;
    assert_eq!(jwks.keys.len(), 1);
    assert!(verify(&token, &jwks).unwrap_err().contains("not in JWKS"));
}

#[tokio::test]
async fn es256_tokens_verify_against_the_served_jwks_across_rotation() {
    sign_serve_verify_rotate(JwtAlgorithm::Es256, Algorithm::ES256).await;
}

#[tokio::test]
async fn eddsa_tokens_verify_against_the_served_jwks_across_rotation() {
    sign_serve_verify_rotate(JwtAlgorithm::EdDsa, Algorithm::EdDSA).await;
}

#[tokio::test]
async fn expired_tokens_are_refused_by_the_verifier() {
    let keys = JwtKeySet::in_memory(JwtSettings::default()).unwrap();
    let now = OffsetDateTime::now_utc();
    let doc = Arc::new(RwLock::new(serde_json::to_string(&keys.jwks(now)).unwrap()));
    let url = serve_jwks(doc).await;
    let past = now - time::Duration::seconds(900);
    let token = keys.sign(&claims(past, 300, "lease-1"), past).unwrap();
    assert!(
        verify(&token, &fetch_jwks(&url).await)
            .unwrap_err()
            .contains("ExpiredSignature")
    );
}
