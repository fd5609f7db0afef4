//! RFC 8785 (JCS) canonical JSON of a `serde_json::Value`, written in one
//! pass into one buffer. Byte-for-byte what `serde_jcs` produces (a property
//! test checks it), several times faster: that crate re-parses every object
//! key and buffers each member, which made canonicalization the single
//! largest cost of an issuance.
//!
//! JCS: object members sorted by the UTF-16 code units of their names; no
//! whitespace; floats in ECMAScript `Number.prototype.toString` form;
//! strings escape only `"`, `\` and control characters (`\b \t \n \f \r`,
//! else `\u00xx` in lowercase hex).
//!
//! **Integers are written exactly.** RFC 8785 treats every number as an
//! IEEE-754 double, so an integer beyond 2^53 would round — `u64::MAX`
//! became `18446744073709552000`, which no reader could decode as the
//! integer it was. Here an integer (a JSON number serde holds as `u64` or
//! `i64`) is written in plain decimal, exactly; for every integer of
//! magnitude at most 2^53 that is the RFC's form too. Records written
//! before stay verifiable: an integer literal parses back to a value whose
//! form here is the same digits.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::Write;
use std::ops::Range;

use serde::{Serialize, ser};
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
    let plain = |b: u8| b >= 0x20 && b != b'"' && b != b'\\';
    if s.bytes().all(plain) {
        out.push_str(s);
        out.push('"');
        return;
    }
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

/// UTF-16 code-unit order, read from the UTF-8 bytes: byte order is code
/// point order, which UTF-16's differs from only between U+E000–U+FFFF
/// (lead bytes 0xEE, 0xEF) and the supplementary planes (lead bytes 0xF0
/// and up), whose surrogates sort below them. Strings that agree up to a
/// byte agree up to a character boundary or inside one character, so the
/// first differing bytes are both lead bytes or both continuation bytes.
fn utf16_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) else {
        return a.len().cmp(&b.len());
    };
    let (x, y) = (a[i], b[i]);
    let high_bmp = |b: u8| matches!(b, 0xEE | 0xEF);
    if (high_bmp(x) && y >= 0xF0) || (x >= 0xF0 && high_bmp(y)) {
        y.cmp(&x)
    } else {
        x.cmp(&y)
    }
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                write_integer(out, u);
            } else if let Some(i) = n.as_i64() {
                write_integer(out, i);
            } else {
                // A Value holds only finite floats.
                out.push_str(ryu_js::Buffer::new().format_finite(n.as_f64().unwrap_or(0.0)));
            }
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

/// The canonical form of any `Serialize` value, written directly: the same
/// bytes as [`to_string`] of `serde_json::to_value(value)` (a property test
/// checks it), without building the `Value` tree first — serde_json's maps
/// here keep insertion order, so every member of that tree cost a hashed
/// insert, only for the members to be sorted again here. Shapes the direct
/// writer does not take (128-bit integers, non-string map keys other than
/// integers and booleans, raw JSON) go through the `Value` path.
///
/// A map key serde_json reserves for itself (`$serde_json::private::…`) is
/// an error: serde_json's own readers take an object whose first member has
/// such a name for one of its private types and fail on it, so a record
/// holding one would be unreadable — found by fuzzing (`fuzz/fuzz_targets/
/// jcs.rs`). Such a record is never written.
pub fn to_canonical<T: Serialize + ?Sized>(value: &T) -> Result<String, serde_json::Error> {
    let mut out = String::with_capacity(1024);
    match value.serialize(Canon { out: &mut out }) {
        Ok(()) => Ok(out),
        Err(Unsupported) => {
            let value = serde_json::to_value(value)?;
            if let Some(key) = reserved_key(&value) {
                return Err(ser::Error::custom(format!(
                    "the map key {key:?} is reserved by the JSON reader"
                )));
            }
            Ok(to_string(&value))
        }
    }
}

/// The prefix of the map keys serde_json reserves for its private types.
pub const RESERVED_KEY_PREFIX: &str = "$serde_json::private::";

/// The first map key in `value` that serde_json reserves, if any.
pub fn reserved_key(value: &Value) -> Option<&str> {
    match value {
        Value::Array(items) => items.iter().find_map(reserved_key),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            if k.starts_with(RESERVED_KEY_PREFIX) {
                Some(k.as_str())
            } else {
                reserved_key(v)
            }
        }),
        _ => None,
    }
}

/// A shape the direct writer leaves to the `Value` path (or an error the
/// value's own `Serialize` raised, which that path reports).
#[derive(Debug)]
struct Unsupported;

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not written directly")
    }
}

impl std::error::Error for Unsupported {}

impl ser::Error for Unsupported {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Unsupported
    }
}

/// serde_json's marker for `RawValue`.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

/// An integer, exactly (see the module's note on integers).
fn write_integer(out: &mut String, n: impl itoa::Integer) {
    out.push_str(itoa::Buffer::new().format(n));
}

fn write_number(out: &mut String, f: f64) {
    // As `Value` does: a non-finite float is null; every number is a double.
    if f.is_finite() {
        out.push_str(ryu_js::Buffer::new().format_finite(f));
    } else {
        out.push_str("null");
    }
}

struct Canon<'a> {
    out: &'a mut String,
}

/// Writes a `[...]`, and a closing `}` after it for a tuple variant.
struct SeqCanon<'a> {
    out: &'a mut String,
    first: bool,
    close_variant: bool,
}

/// Writes an object (and a closing `}` after it for a struct variant).
/// While its members arrive in strictly increasing order (a map's keys, a
/// struct whose fields are declared in order), each is written to `out` as
/// it comes; from the first member out of order on, the members are
/// collected, then sorted and written at the end.
struct MapCanon<'a> {
    out: &'a mut String,
    /// Where the members start in `out` (after the `{`).
    start: usize,
    /// The collected members' values, one after another, once a member
    /// came out of order (`None` while they are written as they come).
    values: Option<String>,
    /// Each member's name and where its value is: in `out` while the
    /// members are written as they come, in `values` once collected.
    members: Vec<(Cow<'static, str>, Range<usize>)>,
    key: Option<Cow<'static, str>>,
    close_variant: bool,
}

impl<'a> Canon<'a> {
    fn open_variant(self, variant: &str) -> &'a mut String {
        self.out.push('{');
        write_str(self.out, variant);
        self.out.push(':');
        self.out
    }
}

impl<'a> ser::Serializer for Canon<'a> {
    type Ok = ();
    type Error = Unsupported;
    type SerializeSeq = SeqCanon<'a>;
    type SerializeTuple = SeqCanon<'a>;
    type SerializeTupleStruct = SeqCanon<'a>;
    type SerializeTupleVariant = SeqCanon<'a>;
    type SerializeMap = MapCanon<'a>;
    type SerializeStruct = MapCanon<'a>;
    type SerializeStructVariant = MapCanon<'a>;

    fn serialize_bool(self, v: bool) -> Result<(), Unsupported> {
        self.out.push_str(if v { "true" } else { "false" });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), Unsupported> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<(), Unsupported> {
        self.serialize_i64(i64::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<(), Unsupported> {
        self.serialize_i64(i64::from(v))
    }
    #[allow(clippy::cast_precision_loss)] // JCS numbers are doubles
    fn serialize_i64(self, v: i64) -> Result<(), Unsupported> {
        write_integer(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<(), Unsupported> {
        self.serialize_u64(u64::from(v))
    }
    #[allow(clippy::cast_precision_loss)] // JCS numbers are doubles
    fn serialize_u64(self, v: u64) -> Result<(), Unsupported> {
        write_integer(self.out, v);
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_u128(self, _: u128) -> Result<(), Unsupported> {
        Err(Unsupported)
    }
    fn serialize_f32(self, v: f32) -> Result<(), Unsupported> {
        write_number(self.out, f64::from(v));
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), Unsupported> {
        write_number(self.out, v);
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), Unsupported> {
        write_str(self.out, v.encode_utf8(&mut [0; 4]));
        Ok(())
    }
    fn serialize_str(self, v: &str) -> Result<(), Unsupported> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Unsupported> {
        let mut seq = self.serialize_seq(Some(v.len()))?;
        for b in v {
            ser::SerializeSeq::serialize_element(&mut seq, b)?;
        }
        ser::SerializeSeq::end(seq)
    }
    fn serialize_none(self) -> Result<(), Unsupported> {
        self.serialize_unit()
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Unsupported> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Unsupported> {
        self.out.push_str("null");
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Unsupported> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), Unsupported> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        if name == RAW_VALUE_TOKEN {
            return Err(Unsupported);
        }
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Unsupported> {
        let out = self.open_variant(variant);
        value.serialize(Canon { out: &mut *out })?;
        out.push('}');
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<SeqCanon<'a>, Unsupported> {
        self.out.push('[');
        Ok(SeqCanon {
            out: self.out,
            first: true,
            close_variant: false,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqCanon<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        len: usize,
    ) -> Result<SeqCanon<'a>, Unsupported> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<SeqCanon<'a>, Unsupported> {
        let out = self.open_variant(variant);
        out.push('[');
        Ok(SeqCanon {
            out,
            first: true,
            close_variant: true,
        })
    }
    fn serialize_map(self, len: Option<usize>) -> Result<MapCanon<'a>, Unsupported> {
        Ok(MapCanon::open(self.out, len.unwrap_or(8), false))
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<MapCanon<'a>, Unsupported> {
        if name == RAW_VALUE_TOKEN {
            return Err(Unsupported);
        }
        self.serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapCanon<'a>, Unsupported> {
        let out = self.open_variant(variant);
        Ok(MapCanon::open(out, len, true))
    }
}

impl SeqCanon<'_> {
    fn element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        if !std::mem::take(&mut self.first) {
            self.out.push(',');
        }
        value.serialize(Canon {
            out: &mut *self.out,
        })
    }

    fn finish(self) -> Result<(), Unsupported> {
        self.out.push(']');
        if self.close_variant {
            self.out.push('}');
        }
        Ok(())
    }
}

/// serde's four sequence traits, all writing elements of a `SeqCanon`.
macro_rules! seq_traits {
    ($($trait:ident::$method:ident),*) => {
        $(impl ser::$trait for SeqCanon<'_> {
            type Ok = ();
            type Error = Unsupported;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
                self.element(value)
            }
            fn end(self) -> Result<(), Unsupported> {
                self.finish()
            }
        })*
    };
}

seq_traits!(
    SerializeSeq::serialize_element,
    SerializeTuple::serialize_element,
    SerializeTupleStruct::serialize_field,
    SerializeTupleVariant::serialize_field
);

impl<'a> MapCanon<'a> {
    fn open(out: &'a mut String, len: usize, close_variant: bool) -> Self {
        out.push('{');
        Self {
            start: out.len(),
            out,
            values: None,
            members: Vec::with_capacity(len),
            key: None,
            close_variant,
        }
    }

    fn member<T: Serialize + ?Sized>(
        &mut self,
        key: Cow<'static, str>,
        value: &T,
    ) -> Result<(), Unsupported> {
        if self.values.is_none() {
            let in_order = self
                .members
                .last()
                .is_none_or(|(last, _)| utf16_cmp(last, &key) == Ordering::Less);
            if in_order {
                let mark = self.out.len();
                if !self.members.is_empty() {
                    self.out.push(',');
                }
                write_str(self.out, &key);
                self.out.push(':');
                let start = self.out.len();
                if let Err(e) = value.serialize(Canon { out: self.out }) {
                    // Nothing of a member that failed stays written.
                    self.out.truncate(mark);
                    return Err(e);
                }
                self.members.push((key, start..self.out.len()));
                return Ok(());
            }
            self.collect_written();
        }
        let values = self.values.get_or_insert_default();
        let start = values.len();
        value.serialize(Canon { out: values })?;
        let end = values.len();
        self.members.push((key, start..end));
        Ok(())
    }

    /// Moves the members written so far out of `out`, to be sorted with the rest.
    fn collect_written(&mut self) {
        let mut values = String::with_capacity(2 * (self.out.len() - self.start));
        for (_, range) in &mut self.members {
            let start = values.len();
            values.push_str(&self.out[range.clone()]);
            *range = start..values.len();
        }
        self.out.truncate(self.start);
        self.values = Some(values);
    }

    fn finish(mut self) -> Result<(), Unsupported> {
        if let Some(values) = &self.values {
            // Stable: of duplicate names the last one written wins, as in a map.
            self.members.sort_by(|a, b| utf16_cmp(&a.0, &b.0));
            let mut members = self.members.iter().peekable();
            let mut first = true;
            while let Some((name, range)) = members.next() {
                if members.peek().is_some_and(|(next, _)| next == name) {
                    continue;
                }
                if !std::mem::take(&mut first) {
                    self.out.push(',');
                }
                write_str(self.out, name);
                self.out.push(':');
                self.out.push_str(&values[range.clone()]);
            }
        }
        self.out.push('}');
        if self.close_variant {
            self.out.push('}');
        }
        Ok(())
    }
}

impl ser::SerializeMap for MapCanon<'_> {
    type Ok = ();
    type Error = Unsupported;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Unsupported> {
        self.key = Some(Cow::Owned(key.serialize(KeyCanon)?));
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Unsupported> {
        let key = self.key.take().ok_or(Unsupported)?;
        self.member(key, value)
    }
    fn end(self) -> Result<(), Unsupported> {
        self.finish()
    }
}

/// serde's two struct traits, both collecting members of a `MapCanon`.
macro_rules! struct_traits {
    ($($trait:ident),*) => {
        $(impl ser::$trait for MapCanon<'_> {
            type Ok = ();
            type Error = Unsupported;
            fn serialize_field<T: Serialize + ?Sized>(
                &mut self,
                key: &'static str,
                value: &T,
            ) -> Result<(), Unsupported> {
                self.member(Cow::Borrowed(key), value)
            }
            fn end(self) -> Result<(), Unsupported> {
                self.finish()
            }
        })*
    };
}

struct_traits!(SerializeStruct, SerializeStructVariant);

/// A map key: strings as they are, integers and booleans as their text (as
/// serde_json's `Value` does); anything else goes the `Value` path.
struct KeyCanon;

macro_rules! key_as_text {
    ($($method:ident: $ty:ty),* $(,)?) => {
        $(fn $method(self, v: $ty) -> Result<String, Unsupported> {
            Ok(v.to_string())
        })*
    };
}

macro_rules! key_unsupported {
    ($($method:ident$(: $ty:ty)?),* $(,)?) => {
        $(fn $method(self $(, _: $ty)?) -> Result<String, Unsupported> {
            Err(Unsupported)
        })*
    };
}

impl ser::Serializer for KeyCanon {
    type Ok = String;
    type Error = Unsupported;
    type SerializeSeq = ser::Impossible<String, Unsupported>;
    type SerializeTuple = ser::Impossible<String, Unsupported>;
    type SerializeTupleStruct = ser::Impossible<String, Unsupported>;
    type SerializeTupleVariant = ser::Impossible<String, Unsupported>;
    type SerializeMap = ser::Impossible<String, Unsupported>;
    type SerializeStruct = ser::Impossible<String, Unsupported>;
    type SerializeStructVariant = ser::Impossible<String, Unsupported>;

    key_as_text!(
        serialize_bool: bool, serialize_i8: i8, serialize_i16: i16, serialize_i32: i32,
        serialize_i64: i64, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_char: char,
    );
    fn serialize_str(self, v: &str) -> Result<String, Unsupported> {
        // A reserved key goes the `Value` path, which refuses it.
        if v.starts_with(RESERVED_KEY_PREFIX) {
            return Err(Unsupported);
        }
        Ok(v.to_owned())
    }
    key_unsupported!(
        serialize_i128: i128, serialize_u128: u128, serialize_f32: f32, serialize_f64: f64,
        serialize_bytes: &[u8], serialize_none, serialize_unit,
    );

    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<String, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<String, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<String, Unsupported> {
        Ok(variant.to_owned())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<String, Unsupported> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<String, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStruct, Unsupported> {
        Err(Unsupported)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, Unsupported> {
        Err(Unsupported)
    }
}

#[cfg(test)]
mod tests;
