//! RFC 8785 (JCS) canonical JSON of a `serde_json::Value`, written in one
//! pass into one buffer. Byte-for-byte what `serde_jcs` produces (a property
//! test checks it), several times faster: that crate re-parses every object
//! key and buffers each member, which made canonicalization the single
//! largest cost of an issuance.
//!
//! JCS: object members sorted by the UTF-16 code units of their names; no
//! whitespace; numbers in ECMAScript `Number.prototype.toString` form (every
//! number is an IEEE-754 double, so integers beyond 2^53 round as they would
//! in JavaScript); strings escape only `"`, `\` and control characters
//! (`\b \t \n \f \r`, else `\u00xx` in lowercase hex).

use std::cmp::Ordering;
use std::fmt::Write;

use serde_json::Value;

/// The canonical form of `value`.
pub fn to_string(value: &Value) -> String {
    let mut out = String::with_capacity(1024);
    write_value(&mut out, value);
    out
}

/// Appends the canonical form of the string `s`.
pub fn write_str(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            0x08 => "\\b",
            0x09 => "\\t",
            0x0a => "\\n",
            0x0c => "\\f",
            0x0d => "\\r",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// UTF-16 code-unit order; for two ASCII names, byte order is the same.
fn utf16_cmp(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        a.encode_utf16().cmp(b.encode_utf16())
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            // A Value holds only finite numbers; integers are doubles in JCS.
            let f = n.as_f64().unwrap_or(0.0);
            out.push_str(ryu_js::Buffer::new().format_finite(f));
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|a, b| utf16_cmp(a.0, b.0));
            out.push('{');
            for (i, (name, item)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_str(out, name);
                out.push(':');
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::*;

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            any::<String>().prop_map(Value::String),
            "[\\x00-\\x1f\"\\\\a-z\u{e9}\u{1f600}\u{ffff}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(
                    ("[a-zA-Z_\u{e9}\u{1f600}\u{ff61}\u{10000}]{0,6}", inner),
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn identical_to_serde_jcs(v in arb_value()) {
            prop_assert_eq!(to_string(&v), serde_jcs::to_string(&v).unwrap());
        }
    }

    #[test]
    #[allow(clippy::excessive_precision)] // the RFC's own literal
    fn rfc8785_examples() {
        // RFC 8785 §3.2.2 number forms and §3.2.3 sorting (UTF-16 order:
        // U+1F600's surrogates sort before U+FF61).
        let v = json!({"\u{ff61}": 1, "\u{1f600}": 2, "b": [1e21, 1e-7, -0.0, 333333333.33333329, 9007199254740993u64], "a\n": "\u{1f}"});
        assert_eq!(
            to_string(&v),
            "{\"a\\n\":\"\\u001f\",\"b\":[1e+21,1e-7,0,333333333.3333333,9007199254740992],\"\u{1f600}\":2,\"\u{ff61}\":1}"
        );
    }
}
