//! RFC 8785 examples, property tests against serde_jcs, and the direct
//! writer against the value path.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;

/// 2^53: up to here, an integer's exact form is also RFC 8785's.
const EXACT: i64 = 1 << 53;

/// Found by fuzzing: an object whose first member (after sorting) has a
/// name serde_json reserves cannot be read back, so no canonical form
/// of one is produced — directly, through a map, or nested.
#[test]
fn a_key_the_json_reader_reserves_is_refused() {
    let value = json!({"6": {}, "$serde_json::private::RawValue": {}});
    let written = to_string(&value);
    assert!(
        serde_json::from_str::<Value>(&written).is_err(),
        "{written}"
    );
    assert!(to_canonical(&value).is_err());
    let mut claims = std::collections::BTreeMap::new();
    claims.insert("$serde_json::private::Number", 1);
    assert!(to_canonical(&claims).is_err(), "the direct writer");
    assert!(
        to_canonical(&json!({"a": [{"b": claims}]})).is_err(),
        "nested"
    );
    assert_eq!(reserved_key(&json!({"x": [{"y": 1}]})), None);
}

fn arb_value() -> impl Strategy<Value = Value> {
    arb_value_with(any::<i64>().boxed(), any::<u64>().boxed())
}

/// Values whose integers RFC 8785 (and so serde_jcs) writes exactly.
fn arb_rfc_value() -> impl Strategy<Value = Value> {
    arb_value_with((-EXACT..=EXACT).boxed(), (0..=EXACT.unsigned_abs()).boxed())
}

fn arb_value_with(
    signed: BoxedStrategy<i64>,
    unsigned: BoxedStrategy<u64>,
) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        signed.prop_map(|i| json!(i)),
        unsigned.prop_map(|u| json!(u)),
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
    fn identical_to_serde_jcs(v in arb_rfc_value()) {
        prop_assert_eq!(to_string(&v), serde_jcs::to_string(&v).unwrap());
    }

    #[test]
    fn reads_back_as_written(v in arb_value()) {
        // Every value comes back from its canonical form as the same
        // value (floats as the same double), so any reader decodes
        // exactly what was recorded.
        let text = to_string(&v);
        let back: Value = serde_json::from_str(&text).unwrap();
        prop_assert_eq!(to_string(&back), text);
        prop_assert_eq!(same_numbers(&back, &v), true);
    }

    #[test]
    fn names_sort_in_utf16_order(
        a in "[a\u{7f}\u{e9}\u{d7ff}\u{e000}\u{ff61}\u{ffff}\u{10000}\u{1f600}]{0,4}",
        b in "[a\u{7f}\u{e9}\u{d7ff}\u{e000}\u{ff61}\u{ffff}\u{10000}\u{1f600}]{0,4}",
    ) {
        prop_assert_eq!(utf16_cmp(&a, &b), a.encode_utf16().cmp(b.encode_utf16()));
    }

    #[test]
    fn direct_writing_is_identical_for_values(v in arb_value()) {
        prop_assert_eq!(to_canonical(&v).unwrap(), to_string(&v));
    }

    #[test]
    fn direct_writing_is_identical_for_every_serde_shape(s in arb_shapes()) {
        let through_value = to_string(&serde_json::to_value(&s).unwrap());
        prop_assert_eq!(to_canonical(&s).unwrap(), through_value);
    }
}

#[derive(Clone, Debug, serde::Serialize)]
enum Kind {
    Unit,
    Newtype(u16),
    Tuple(i8, String),
    Struct { z: Option<bool>, a: f32 },
}

#[derive(Clone, Debug, serde::Serialize)]
struct Unit;

#[derive(Clone, Debug, serde::Serialize)]
struct Wrapper(String);

#[derive(Clone, Debug, serde::Serialize)]
struct Pair(u8, char);

/// Every shape serde's data model has, in one struct.
#[derive(Clone, Debug, serde::Serialize)]
struct Shapes {
    zeta: i64,
    alpha: u64,
    #[serde(rename = "\u{e9}t\u{e9}")]
    renamed: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    skipped_when_none: Option<f64>,
    optional: Option<Kind>,
    kinds: Vec<Kind>,
    unit: (),
    unit_struct: Unit,
    wrapper: Wrapper,
    pair: Pair,
    tuple: (bool, f64, Vec<u8>),
    by_number: std::collections::BTreeMap<i32, String>,
    by_name: std::collections::HashMap<String, Value>,
    by_kind: std::collections::BTreeMap<Flag, u32>,
    in_order: InOrder,
    #[serde(flatten)]
    flattened: std::collections::BTreeMap<String, i64>,
}

/// Fields declared in their canonical order: written as they come, until
/// a flattened map's names break the order.
#[derive(Clone, Debug, serde::Serialize)]
struct InOrder {
    a: u8,
    b: Vec<Kind>,
    c: std::collections::BTreeMap<String, i64>,
    #[serde(flatten)]
    more: std::collections::BTreeMap<String, bool>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
enum Flag {
    On,
    Off,
}

fn arb_kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        Just(Kind::Unit),
        any::<u16>().prop_map(Kind::Newtype),
        (any::<i8>(), "[a-z\"\\\u{1}]{0,4}").prop_map(|(i, s)| Kind::Tuple(i, s)),
        (proptest::option::of(any::<bool>()), any::<f32>())
            .prop_map(|(z, a)| Kind::Struct { z, a }),
    ]
}

fn arb_shapes() -> impl Strategy<Value = Shapes> {
    (
        (
            any::<i64>(),
            any::<u64>(),
            any::<String>(),
            proptest::option::of(any::<f64>()),
        ),
        (
            proptest::option::of(arb_kind()),
            prop::collection::vec(arb_kind(), 0..4),
            "[a-z]{0,4}",
            (any::<u8>(), any::<char>()),
            (
                any::<bool>(),
                any::<f64>(),
                prop::collection::vec(any::<u8>(), 0..4),
            ),
        ),
        (
            prop::collection::btree_map(any::<i32>(), "[a-z]{0,3}", 0..4),
            prop::collection::hash_map("[a-zA-Z\u{e9}\u{1f600}]{0,4}", arb_value(), 0..4),
            prop::collection::btree_map(
                prop_oneof![Just(Flag::On), Just(Flag::Off)],
                any::<u32>(),
                0..2,
            ),
            // Names that may collide with the struct's own fields.
            prop::collection::btree_map("zeta|alpha|extra|[a-z]{1,3}", any::<i64>(), 0..3),
            (
                any::<u8>(),
                prop::collection::vec(arb_kind(), 0..3),
                prop::collection::btree_map("[a-c\u{e9}\u{1f600}]{0,2}", any::<i64>(), 0..4),
                // After `c`, before it, or the same name as a field.
                prop::collection::btree_map("[a-d]|ca|cb", any::<bool>(), 0..3),
            ),
        ),
    )
        .prop_map(
            |(
                (zeta, alpha, renamed, skipped_when_none),
                (optional, kinds, wrapper, (p, c), tuple),
                (by_number, by_name, by_kind, flattened, (a, b, by_letter, more)),
            )| Shapes {
                zeta,
                alpha,
                renamed,
                skipped_when_none,
                optional,
                kinds,
                unit: (),
                unit_struct: Unit,
                wrapper: Wrapper(wrapper),
                pair: Pair(p, c),
                tuple,
                by_number,
                by_name: by_name.into_iter().collect(),
                by_kind,
                in_order: InOrder {
                    a,
                    b,
                    c: by_letter,
                    more,
                },
                flattened,
            },
        )
}

#[test]
fn shapes_it_leaves_to_the_value_path_still_come_out_canonical() {
    let wide = std::collections::BTreeMap::from([(1u128 << 70, "x"), (7, "y")]);
    assert_eq!(
        to_canonical(&wide).unwrap(),
        to_string(&serde_json::to_value(&wide).unwrap())
    );
    let big = (u128::from(u64::MAX), 5i128);
    assert_eq!(
        to_canonical(&big).unwrap(),
        to_string(&serde_json::to_value(big).unwrap())
    );
    // What serde_json cannot represent is an error either way.
    let huge = (u128::MAX,);
    assert!(serde_json::to_value(huge).is_err());
    assert!(to_canonical(&huge).is_err());
    let raw = serde_json::value::RawValue::from_string("{\"b\": 1, \"a\": [2]}".into()).unwrap();
    assert_eq!(to_canonical(&raw).unwrap(), "{\"a\":[2],\"b\":1}");
}

/// Whether `a` and `b` are equal, floats compared as doubles.
fn same_numbers(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same_numbers(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| same_numbers(p, q)))
        }
        _ => a == b,
    }
}

#[test]
fn integers_are_exact_and_old_forms_keep_their_digits() {
    let v = json!({"max": u64::MAX, "min": i64::MIN, "big": 9007199254740993u64});
    let text = to_string(&v);
    assert_eq!(
        text,
        "{\"big\":9007199254740993,\"max\":18446744073709551615,\"min\":-9223372036854775808}"
    );
    #[derive(serde::Deserialize)]
    struct Ttl {
        max: u64,
    }
    assert_eq!(serde_json::from_str::<Ttl>(&text).unwrap().max, u64::MAX);
    assert_eq!(to_canonical(&v).unwrap(), text);
    // What the RFC's rounding wrote before re-reads to the same text,
    // so records written before still hash as they did.
    for old in [
        "18446744073709552000",
        "9007199254740992",
        "1e+21",
        "5000000000000000000",
    ] {
        let back: Value = serde_json::from_str(old).unwrap();
        assert_eq!(to_string(&back), old);
    }
}

#[test]
#[allow(clippy::excessive_precision)] // the RFC's own literal
fn rfc8785_examples() {
    // RFC 8785 §3.2.2 number forms and §3.2.3 sorting (UTF-16 order:
    // U+1F600's surrogates sort before U+FF61).
    let v = json!({"\u{ff61}": 1, "\u{1f600}": 2, "b": [1e21, 1e-7, -0.0, 333333333.33333329, 9007199254740992u64], "a\n": "\u{1f}"});
    assert_eq!(
        to_string(&v),
        "{\"a\\n\":\"\\u001f\",\"b\":[1e+21,1e-7,0,333333333.3333333,9007199254740992],\"\u{1f600}\":2,\"\u{ff61}\":1}"
    );
}
