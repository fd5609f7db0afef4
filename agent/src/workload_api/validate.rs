//! `ValidateJWTSVID`: a JWT-SVID checked against the trust domain's JWT
//! bundle, offline (JWT-SVID §7): the header's `kid` names a bundle key and
//! `alg` is that key's, `typ` (if any) is `JWT` or `JOSE`, the signature
//! verifies, `sub` is a SPIFFE ID of this trust domain, `aud` holds the
//! validator's audience and `exp` is in the future.

use base64::Engine as _;
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value as ProtoValue};
use serde_json::Value;

use super::published::Published;

/// How deep a claim may nest before it is refused (a token is ≤ 16 KiB).
const MAX_DEPTH: usize = 16;

/// The SPIFFE ID and claims of a valid `token` for `audience` at `now`
/// (seconds), or why it is not valid.
pub fn jwt_svid(
    token: &str,
    audience: &str,
    published: &Published,
    now: i64,
) -> Result<(String, Struct), String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = token.split('.').next().unwrap_or_default();
    let header: Value = b64
        .decode(header)
        .ok()
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or("the token's header is not base64url JSON")?;
    let kid = header
        .get("kid")
        .and_then(Value::as_str)
        .ok_or("the token's header has no kid")?;
    if let Some(typ) = header.get("typ")
        && typ != "JWT"
        && typ != "JOSE"
    {
        return Err(format!("typ {typ} is not JWT or JOSE"));
    }
    let key = published
        .jwt_keys
        .iter()
        .find(|k| k.kid == kid)
        .ok_or_else(|| {
            format!(
                "no key {kid:?} in the bundle of {}",
                published.trust_domain_id
            )
        })?;
    let claims = key.verify(token).map_err(|e| e.to_string())?;
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("the token has no sub")?
        .to_owned();
    let id = mintguard_certs::id::parse_spiffe_id(&sub).map_err(|e| format!("sub: {e}"))?;
    if id.trust_domain().id_string() != published.trust_domain_id {
        return Err(format!("sub {sub} is not of {}", published.trust_domain_id));
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(all)) => all.iter().any(|a| a == audience),
        _ => false,
    };
    if !audience_ok {
        return Err(format!("the token is not for audience {audience:?}"));
    }
    match claims.get("exp").and_then(Value::as_i64) {
        Some(exp) if exp > now => {}
        Some(_) => return Err("the token has expired".into()),
        None => return Err("the token has no exp".into()),
    }
    let Value::Object(map) = claims else {
        return Err("the claims are not an object".into());
    };
    let fields = map
        .into_iter()
        .map(|(k, v)| Ok((k, to_proto(v, 0)?)))
        .collect::<Result<_, String>>()?;
    Ok((sub, Struct { fields }))
}

fn to_proto(v: Value, depth: usize) -> Result<ProtoValue, String> {
    if depth > MAX_DEPTH {
        return Err("the claims nest too deep".into());
    }
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a
                .into_iter()
                .map(|v| to_proto(v, depth + 1))
                .collect::<Result<_, _>>()?,
        }),
        Value::Object(o) => Kind::StructValue(Struct {
            fields: o
                .into_iter()
                .map(|(k, v)| Ok((k, to_proto(v, depth + 1)?)))
                .collect::<Result<_, String>>()?,
        }),
    };
    Ok(ProtoValue { kind: Some(kind) })
}
