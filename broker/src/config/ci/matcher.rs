//! Claim matchers: exact, glob and anchored regex, on claims found by dotted
//! path (nested objects) and compared as strings (numbers and booleans by
//! their JSON text).

use serde_json::Value;

use super::Matcher;

/// Longest pattern accepted.
pub const MAX_PATTERN: usize = 1024;

/// A compiled matcher.
#[derive(Clone, Debug)]
pub enum Compiled {
    /// Exact.
    Exact(String),
    /// Glob.
    Glob(String),
    /// Anchored regex.
    Regex(regex::Regex),
}

/// Compiles `m` (regexes anchored; size-limited).
pub fn compile(m: &Matcher) -> Result<Compiled, String> {
    match m {
        Matcher::Exact(s) => Ok(Compiled::Exact(s.clone())),
        Matcher::Glob { glob } if glob.len() <= MAX_PATTERN => Ok(Compiled::Glob(glob.clone())),
        Matcher::Regex { regex } if regex.len() <= MAX_PATTERN => {
            regex::RegexBuilder::new(&format!("^(?:{regex})$"))
                .size_limit(1 << 20)
                .build()
                .map(Compiled::Regex)
                .map_err(|e| e.to_string())
        }
        _ => Err(format!("pattern longer than {MAX_PATTERN} bytes")),
    }
}

/// The claim at a dotted `path` as a string: strings as they are, numbers
/// and booleans by their JSON text; objects, arrays and null do not match.
pub fn claim_text<'a>(claims: &'a Value, path: &str) -> Option<std::borrow::Cow<'a, str>> {
    let value = claims
        .get(path)
        .or_else(|| path.split('.').try_fold(claims, |v, k| v.get(k)))?;
    match value {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
        Value::Bool(b) => Some(std::borrow::Cow::Owned(b.to_string())),
        _ => None,
    }
}

impl Compiled {
    /// Whether `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Compiled::Exact(s) => s == text,
            Compiled::Glob(g) => glob(g.as_bytes(), text.as_bytes()),
            Compiled::Regex(r) => r.is_match(text),
        }
    }
}

/// `*` matches any run (including `/`), `?` one byte; everything else is literal.
/// Iterative with one backtrack point: linear in practice, never exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        for (p, t, want) in [
            ("refs/heads/*", "refs/heads/main", true),
            ("refs/heads/*", "refs/tags/v1", false),
            (
                "repo:octo/*:ref:refs/heads/main",
                "repo:octo/app:ref:refs/heads/main",
                true,
            ),
            ("v?.*", "v1.2", true),
            ("*a*b", "xaxxb", true),
            ("*a*b", "xaxxbc", false),
            ("", "", true),
        ] {
            assert_eq!(glob(p.as_bytes(), t.as_bytes()), want, "{p} {t}");
        }
    }

    #[test]
    fn regexes_are_anchored_and_claims_found_nested() {
        let m = compile(&Matcher::Regex {
            regex: "octo/.+@refs/heads/main".into(),
        })
        .unwrap();
        assert!(m.matches("octo/ci/.github/workflows/d.yml@refs/heads/main"));
        assert!(!m.matches("evil/octo/x@refs/heads/main-not"));
        let claims = json!({"a": {"b": 7}, "x.y": "dotted", "t": true, "o": {}});
        assert_eq!(claim_text(&claims, "a.b").as_deref(), Some("7"));
        assert_eq!(claim_text(&claims, "x.y").as_deref(), Some("dotted"));
        assert_eq!(claim_text(&claims, "t").as_deref(), Some("true"));
        assert_eq!(claim_text(&claims, "o"), None);
        assert_eq!(claim_text(&claims, "missing"), None);
    }
}
