//! The canonical JSON writer against serde_jcs (RFC 8785): the same bytes
//! for every value whose numbers are doubles or integers within ±2^53 (past
//! that Mintguard writes integers exactly, RFC 8785 rounds them), and a
//! fixed point: canonicalizing the canonical form changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Whether every number in `v` is one RFC 8785 and Mintguard write alike.
fn comparable(v: &Value) -> bool {
    const SAFE: u64 = 1 << 53;
    match v {
        Value::Number(n) => n.as_u64().map_or_else(
            || n.as_i64().map_or(true, |i| i.unsigned_abs() <= SAFE),
            |u| u <= SAFE,
        ),
        Value::Array(a) => a.iter().all(comparable),
        Value::Object(o) => o.values().all(comparable),
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(ours) = mintguard_broker::log::jcs::to_canonical(&value) else {
        return;
    };
    let again: Value = serde_json::from_str(&ours).expect("the canonical form is JSON");
    assert_eq!(
        mintguard_broker::log::jcs::to_canonical(&again).unwrap(),
        ours,
        "canonical form is a fixed point"
    );
    if comparable(&value)
        && let Ok(reference) = serde_jcs::to_string(&value)
    {
        assert_eq!(ours, reference);
    }
});
