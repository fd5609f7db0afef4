//! The CLI's client of the broker's admin API: HTTPS to the admin listener,
//! verifying the broker's exact SPIFFE ID against the trust bundle, with an
//! operator certificate (mTLS) or bearer token.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use mintguard_certs::bundle::TrustBundle;
use mintguard_certs::id::{self, IdMatcher};
use mintguard_certs::svid::X509Svid;
use mintguard_certs::tls::SpiffeConnector;
use serde_json::Value;

/// Where the broker is and how to authenticate, from flags or the environment.
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// The broker's data dir on this host: reads listen.json, bundle.pem and
    /// the operator token (the default for everything below).
    #[arg(long, env = "MINTGUARD_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// The admin listener, host:port.
    #[arg(long, env = "MINTGUARD_BROKER", global = true)]
    pub broker: Option<String>,
    /// The broker's trust domain (its ID is spiffe://<td>/mintguard/broker).
    #[arg(long, env = "MINTGUARD_TRUST_DOMAIN", global = true)]
    pub trust_domain: Option<String>,
    /// The trust bundle (PEM).
    #[arg(long, env = "MINTGUARD_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// A file holding the operator token.
    #[arg(long, env = "MINTGUARD_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The operator certificate (PEM chain) for mTLS instead of a token
    /// (`mintguard-broker operator create NAME --cert`).
    #[arg(long, env = "MINTGUARD_CERT", global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The operator certificate's private key (PEM).
    #[arg(long, env = "MINTGUARD_KEY", global = true, requires = "cert")]
    pub key: Option<PathBuf>,
}

/// An admin API client.
pub struct AdminClient {
    addr: String,
    connector: SpiffeConnector,
    /// The bearer token, unless the client authenticates with a certificate.
    token: Option<String>,
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

impl AdminClient {
    /// Builds a client from flags, the environment and the data dir.
    pub fn new(target: &Target) -> Result<Self, String> {
        let listen: Option<Value> = match &target.data_dir {
            Some(dir) => Some(
                serde_json::from_str(&read(&dir.join("listen.json"))?)
                    .map_err(|e| format!("listen.json: {e}"))?,
            ),
            None => None,
        };
        let addr = target
            .broker
            .clone()
            .or_else(|| {
                listen
                    .as_ref()
                    .and_then(|l| l["admin"].as_str().map(str::to_owned))
            })
            .ok_or("no broker: pass --broker HOST:PORT or --data-dir")?;
        let td = target
            .trust_domain
            .clone()
            .or_else(|| {
                listen
                    .as_ref()
                    .and_then(|l| l["trust_domain"].as_str().map(str::to_owned))
            })
            .ok_or("no trust domain: pass --trust-domain or --data-dir")?;
        let td = id::parse_trust_domain(&td).map_err(|e| e.to_string())?;
        let ca = target
            .ca
            .clone()
            .or_else(|| target.data_dir.as_ref().map(|d| d.join("bundle.pem")))
            .ok_or("no trust bundle: pass --ca FILE or --data-dir")?;
        let bundle = TrustBundle::from_pem(td.clone(), &read(&ca)?)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
        let broker_id = IdMatcher::exact(id::broker_id(&td));
        let (connector, token) = match (&target.cert, &target.key) {
            (Some(cert), Some(key)) => {
                let svid = X509Svid::from_pem(&read(cert)?, &read(key)?)
                    .map_err(|e| format!("{}: {e}", cert.display()))?;
                let connector = SpiffeConnector::new(Some(&svid), &bundle, broker_id)
                    .map_err(|e| e.to_string())?;
                (connector, None)
            }
            _ => {
                let token_file = match &target.token_file {
                    Some(f) => f.clone(),
                    None => single_token(target.data_dir.as_deref())?,
                };
                let token = read(&token_file)?.trim().to_owned();
                let connector =
                    SpiffeConnector::new(None, &bundle, broker_id).map_err(|e| e.to_string())?;
                (connector, Some(token))
            }
        };
        Ok(Self {
            addr,
            connector,
            token,
        })
    }

    /// Sends one request; returns the status and the JSON body (`Null` if empty).
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let tcp = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let (tls, _) = self
            .connector
            .connect("mintguard-broker", tcp)
            .await
            .map_err(|e| format!("TLS to {}: {e}", self.addr))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "mintguard-broker");
        if let Some(token) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let payload = match body {
            Some(b) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                b.to_string()
            }
            None => String::new(),
        };
        let req = req
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| e.to_string())?;
        let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = res.status().as_u16();
        let bytes = res
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((
            status,
            if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap_or(Value::Null)
            },
        ))
    }

    /// Sends a request and turns a non-2xx answer into an error message.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        let (status, value) = self.request(method, path, body).await?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            let e = &value["error"];
            Err(format!(
                "{status} {}: {}{}",
                e["code"].as_str().unwrap_or("error"),
                e["message"].as_str().unwrap_or(""),
                e["reasons"]
                    .as_array()
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(
                        " ({})",
                        r.iter()
                            .filter_map(|x| x.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                    .unwrap_or_default()
            ))
        }
    }
}

fn single_token(data_dir: Option<&Path>) -> Result<PathBuf, String> {
    let dir = data_dir
        .ok_or("no operator token: pass --token-file or --data-dir")?
        .join("operators");
    let mut tokens: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "token"))
        .collect();
    tokens.sort();
    match tokens.len() {
        1 => Ok(tokens.remove(0)),
        0 => Err(format!(
            "no operator token in {}: run mintguard-broker operator create",
            dir.display()
        )),
        _ => Err(format!(
            "several operator tokens in {}: pass --token-file",
            dir.display()
        )),
    }
}
