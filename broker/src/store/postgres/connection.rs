//! A store URL's connection settings and TLS, as libpq reads them.

use super::*;

/// The connection settings of a store URL and its TLS connector.
///
/// Two query parameters are read here, with libpq's names: `sslmode`
/// (`disable`, `prefer`, `require`, `verify-ca`, `verify-full`) and
/// `sslrootcert` (a PEM file of CA certificates trusted besides the system
/// roots). Whenever TLS is used, the server's certificate chain and host name
/// are verified (libpq's `verify-full`): `require` and the `verify-*` modes
/// mean the same here, and `prefer` means TLS, verified, if the server offers
/// it. Without `sslmode`, `sslrootcert` implies `require`, and no parameter
/// means no TLS. Everything else in the URL is tokio-postgres's.
pub fn connection(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let bad = |reason: String| StoreError::Setup(format!("store url: {reason}"));
    // The query starts after the credentials (a password may hold a '?').
    let host_part = url.rfind('@').map_or(0, |at| at + 1);
    let (base, query) = match url[host_part..].find('?') {
        Some(q) => (&url[..host_part + q], &url[host_part + q + 1..]),
        None => (url, ""),
    };
    let (mut mode, mut root_cert) = (None, None);
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslmode", value)) => mode = Some(value.to_owned()),
            Some(("sslrootcert", value)) => root_cert = Some(percent_decode(value)),
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    let mut config: tokio_postgres::Config = url.parse().map_err(|e| bad(format!("{e}")))?;
    let ssl_mode = match (mode.as_deref(), &root_cert) {
        (Some("disable"), Some(_)) => {
            return Err(bad("sslrootcert with sslmode=disable".into()));
        }
        (Some("disable"), None) | (None, None) => SslMode::Disable,
        (Some("prefer"), _) => SslMode::Prefer,
        (Some("require" | "verify-ca" | "verify-full"), _) | (None, Some(_)) => SslMode::Require,
        (Some(other), _) => {
            return Err(bad(format!(
                "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
            )));
        }
    };
    config.ssl_mode(ssl_mode);
    let tls = crate::outbound::tls_config(root_cert.as_deref().map(std::path::Path::new))
        .map_err(|e| bad(format!("sslrootcert: {e}")))?;
    Ok((config, MakeRustlsConnect::new(tls)))
}

/// `%XX` escapes of a URL parameter decoded (a path may need them).
pub(super) fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An error with its causes ("error performing TLS handshake: invalid peer
/// certificate: UnknownIssuer").
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Whether `config` sends the store's traffic in clear text off this machine.
pub(super) fn plaintext_off_host(config: &tokio_postgres::Config) -> bool {
    config.get_ssl_mode() == SslMode::Disable
        && config.get_hosts().iter().any(|host| match host {
            Host::Tcp(name) => {
                !(name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback()))
            }
            Host::Unix(_) => false,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_choose_tls_like_libpq_and_keep_the_rest() {
        let mode = |url: &str| connection(url).map(|(c, _)| c.get_ssl_mode());
        assert_eq!(mode("postgres://u@db/m").unwrap(), SslMode::Disable);
        assert_eq!(
            mode("postgres://u@db/m?sslmode=disable").unwrap(),
            SslMode::Disable
        );
        assert_eq!(
            mode("postgres://u@db/m?sslmode=prefer").unwrap(),
            SslMode::Prefer
        );
        for verified in ["require", "verify-ca", "verify-full"] {
            assert_eq!(
                mode(&format!("postgres://u@db/m?sslmode={verified}")).unwrap(),
                SslMode::Require
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("my ca.pem");
        let authority = mintguard_certs::ca::Authority::generate(
            &mintguard_certs::id::parse_trust_domain("example.org").unwrap(),
            std::time::Duration::from_secs(3600),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        std::fs::write(&ca, authority.cert_pem()).unwrap();
        let escaped = ca.display().to_string().replace(' ', "%20");
        let (config, _) = connection(&format!(
            "postgres://u:pw@db:5433/m?connect_timeout=3&sslrootcert={escaped}&application_name=mg"
        ))
        .unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            SslMode::Require,
            "sslrootcert implies require"
        );
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        assert_eq!(config.get_application_name(), Some("mg"));
        assert_eq!(config.get_ports(), [5433]);

        let refused = |url: &str| connection(url).map(|_| ()).unwrap_err().to_string();
        assert!(refused("postgres://u@db/m?sslmode=maybe").contains("sslmode=maybe"));
        assert!(
            refused(&format!(
                "postgres://u@db/m?sslmode=disable&sslrootcert={escaped}"
            ))
            .contains("sslrootcert with sslmode=disable")
        );
        assert!(
            refused("postgres://u@db/m?sslrootcert=/nonexistent/ca.pem")
                .contains("/nonexistent/ca.pem")
        );
        assert!(refused("postgres://u@db/m?nonsense=1").contains("store url"));
        // A '?' in the password is not where the query starts.
        let (config, _) = connection("postgres://u:p%3Fw?x@db/m?sslmode=require").unwrap();
        assert_eq!(config.get_ssl_mode(), SslMode::Require);
        assert_eq!(config.get_dbname(), Some("m"));
    }

    #[test]
    fn only_clear_text_off_this_machine_is_warned_about() {
        let off = |url: &str| plaintext_off_host(&connection(url).unwrap().0);
        assert!(off("postgres://u@db.example.org/m"));
        assert!(off("postgres://u@10.0.0.5/m?sslmode=disable"));
        assert!(!off("postgres://u@127.0.0.1/m"));
        assert!(!off("postgres://u@localhost/m"));
        assert!(!off("postgres://u@db.example.org/m?sslmode=require"));
    }
}
