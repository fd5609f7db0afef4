//! Identity templates: `spiffe://<td>/ci/github/{repository}/{ref}`. Each
//! `{claim}` is replaced by the claim's text, which must be a valid SPIFFE
//! path (segments of `[A-Za-z0-9._-]`, no empty, `.` or `..` segment): a
//! claim that would change the ID's shape any other way is refused, never
//! rewritten (two different claims must never map to one ID).

use serde_json::Value;

use super::matcher::claim_text;

/// Checks a template's shape (placeholders balanced, the literal parts a
/// SPIFFE ID once filled with `x`).
pub fn check(template: &str) -> Result<(), String> {
    let filled = fill(template, |_| Some("x".into()))?;
    mintguard_certs::id::parse_spiffe_id(&filled).map_err(|e| e.to_string())?;
    Ok(())
}

fn fill(template: &str, mut value: impl FnMut(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("unclosed {{ in {template:?}"))?;
        let name = &after[..close];
        if name.is_empty() || name.contains('{') {
            return Err(format!("bad placeholder in {template:?}"));
        }
        out.push_str(
            &value(name).ok_or_else(|| format!("claim {name:?} is missing or not a string"))?,
        );
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("unbalanced }} in {template:?}"));
    }
    out.push_str(rest);
    Ok(out)
}

/// The identity for `claims`, or why not.
pub fn render(template: &str, claims: &Value) -> Result<String, String> {
    let mut bad = None;
    let id = fill(template, |name| {
        let text = claim_text(claims, name)?;
        let ok = !text.is_empty()
            && text.split('/').all(|seg| {
                !seg.is_empty()
                    && seg != "."
                    && seg != ".."
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            });
        if !ok {
            bad = Some(format!(
                "claim {name:?} ({:?}) is not a valid SPIFFE path",
                crate::ids::excerpt(&text)
            ));
        }
        Some(text.into_owned())
    })?;
    if let Some(b) = bad {
        return Err(b);
    }
    mintguard_certs::id::parse_spiffe_id(&id).map_err(|e| e.to_string())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_and_refuses_shape_changes() {
        let t = "spiffe://example.org/ci/github/{repository}/{ref}";
        check(t).unwrap();
        assert!(check("spiffe://example.org/{unclosed").is_err());
        let claims =
            json!({"repository": "octo/app", "ref": "refs/heads/main", "bad": "../x", "sp": "a b"});
        assert_eq!(
            render(t, &claims).unwrap(),
            "spiffe://example.org/ci/github/octo/app/refs/heads/main"
        );
        assert!(render("spiffe://example.org/ci/{bad}", &claims).is_err());
        assert!(render("spiffe://example.org/ci/{sp}", &claims).is_err());
        assert!(render("spiffe://example.org/ci/{missing}", &claims).is_err());
    }
}
