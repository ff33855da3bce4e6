//! Writing JSON straight into a byte buffer, without building a [`Value`] first.
//!
//! A [`Value`] tree costs an allocation per string, key and container, and then a
//! walk to serialise it and another to free it: for an answer built once and sent
//! at once, that is most of the work. The writer appends the text as the handler
//! produces it, into the buffer that becomes the response body, and writes exactly
//! the bytes `Value`'s `Display` would for the same content (same escapes, same
//! number forms), so a handler can switch from one to the other without its
//! answers changing.
//!
//! Containers are written by closures, so brackets and commas cannot be misplaced:
//!
//! ```
//! use backworks_plugin_sdk::*;
//! use backworks_plugin_sdk::json::{self, AsJsonString};
//!
//! let days = [("mon", 21.5), ("tue", 19.0)];
//! let mut body = Vec::new();
//! json::write(&mut body, |w| {
//!     w.object(|o| {
//!         o.field("city", "Oslo")
//!             .field("updated", AsJsonString(format_args!("{:02}:{:02}", 9, 5)))
//!             .array("forecast", |a| {
//!                 for (day, high) in days {
//!                     a.object(|o| {
//!                         o.field("day", day).field("high", high);
//!                     });
//!                 }
//!             });
//!     })
//! });
//! let expected = json!({"city": "Oslo", "updated": "09:05", "forecast": [
//!     {"day": "mon", "high": 21.5}, {"day": "tue", "high": 19.0}]});
//! assert_eq!(body, expected.to_string().into_bytes());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use super::{Map, Number, Value, N};

/// A value that can write itself as JSON text, the way its [`Value`] would print.
pub trait WriteJson {
    /// Appends the JSON text of `self` to `out`.
    fn write_json(&self, out: &mut Vec<u8>);
}

/// Writes one value into `out`: the entry point of the writer.
pub fn write<R>(out: &mut Vec<u8>, write: impl FnOnce(ValueWriter<'_>) -> R) -> R {
    write(ValueWriter { out })
}

/// The JSON text of one value, written by `write`, as a `String`.
pub fn write_to_string(write: impl FnOnce(ValueWriter<'_>)) -> String {
    let mut out = Vec::new();
    self::write(&mut out, write);
    // Every method of the writer appends whole UTF-8 sequences.
    String::from_utf8(out).expect("the JSON writer writes UTF-8")
}

/// The place of exactly one value; consumed by writing it.
pub struct ValueWriter<'b> {
    out: &'b mut Vec<u8>,
}

impl ValueWriter<'_> {
    /// Writes `value` (a string, a number, a bool, an `Option`, a `Value`, ...).
    pub fn value(self, value: impl WriteJson) {
        value.write_json(self.out);
    }

    /// Writes `null`.
    pub fn null(self) {
        self.out.extend_from_slice(b"null");
    }

    /// Writes an object whose members `members` writes.
    pub fn object<R>(self, members: impl FnOnce(&mut ObjectWriter<'_>) -> R) -> R {
        self.out.push(b'{');
        let mut object = ObjectWriter {
            out: self.out,
            first: true,
        };
        let result = members(&mut object);
        object.out.push(b'}');
        result
    }

    /// Writes an array whose items `items` writes.
    pub fn array<R>(self, items: impl FnOnce(&mut ArrayWriter<'_>) -> R) -> R {
        self.out.push(b'[');
        let mut array = ArrayWriter {
            out: self.out,
            first: true,
        };
        let result = items(&mut array);
        array.out.push(b']');
        result
    }
}

/// Writes the members of one object, in the order they are given.
///
/// Keys are not checked for duplicates (a `Map` would keep the last one in the
/// first one's place): write each key once.
pub struct ObjectWriter<'b> {
    out: &'b mut Vec<u8>,
    first: bool,
}

impl ObjectWriter<'_> {
    /// The place of the value of member `key`.
    pub fn key(&mut self, key: &str) -> ValueWriter<'_> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        escape_into(self.out, key);
        self.out.push(b':');
        ValueWriter { out: self.out }
    }

    /// One member: `key` and `value`.
    pub fn field(&mut self, key: &str, value: impl WriteJson) -> &mut Self {
        self.key(key).value(value);
        self
    }

    /// One member whose value is an object.
    pub fn object(&mut self, key: &str, members: impl FnOnce(&mut ObjectWriter<'_>)) -> &mut Self {
        self.key(key).object(members);
        self
    }

    /// One member whose value is an array.
    pub fn array(&mut self, key: &str, items: impl FnOnce(&mut ArrayWriter<'_>)) -> &mut Self {
        self.key(key).array(items);
        self
    }
}

/// Writes the items of one array.
pub struct ArrayWriter<'b> {
    out: &'b mut Vec<u8>,
    first: bool,
}

impl ArrayWriter<'_> {
    /// The place of the next item.
    pub fn slot(&mut self) -> ValueWriter<'_> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        ValueWriter { out: self.out }
    }

    /// One item.
    pub fn item(&mut self, value: impl WriteJson) -> &mut Self {
        self.slot().value(value);
        self
    }

    /// One item that is an object.
    pub fn object(&mut self, members: impl FnOnce(&mut ObjectWriter<'_>)) -> &mut Self {
        self.slot().object(members);
        self
    }

    /// One item that is an array.
    pub fn array(&mut self, items: impl FnOnce(&mut ArrayWriter<'_>)) -> &mut Self {
        self.slot().array(items);
        self
    }
}

/// Writes `T`'s `Display` text as a JSON string, with no `String` in between:
/// `AsJsonString(format_args!("{h:02}:{m:02}"))`, or any `Display` type.
#[derive(Debug, Clone, Copy)]
pub struct AsJsonString<T>(pub T);

impl<T: fmt::Display> WriteJson for AsJsonString<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        let _ = fmt::write(&mut Escaping(out), format_args!("{}", self.0));
        out.push(b'"');
    }
}

/// `fmt::Write` that escapes what it is given as the inside of a JSON string.
struct Escaping<'b>(&'b mut Vec<u8>);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_inside(self.0, s);
        Ok(())
    }
}

/// `fmt::Write` that appends as is (numbers: nothing to escape).
struct Raw<'b>(&'b mut Vec<u8>);

impl fmt::Write for Raw<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `s` as a quoted JSON string.
pub(crate) fn escape_into(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    escape_inside(out, s);
    out.push(b'"');
}

/// The escapes of `Value`'s serialiser: `\"`, `\\`, `\n`, `\r`, `\t`, `\b`, `\f`,
/// other control characters as `\u00xx`; everything else (all of non-ASCII) as is.
/// Works on bytes: every byte that needs an escape is ASCII, so the runs copied
/// between escapes are whole UTF-8 sequences.
fn escape_inside(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Eight bytes at a time while none of them needs an escape: most text.
        if let Some(chunk) = bytes.get(i..i + 8) {
            let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            if !needs_escape(word) {
                i += 8;
                continue;
            }
        } else {
            // The last few bytes, padded with a letter: one test instead of a loop.
            let mut padded = [b'a'; 8];
            padded[..bytes.len() - i].copy_from_slice(&bytes[i..]);
            if !needs_escape(u64::from_le_bytes(padded)) {
                break;
            }
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// True when one of the eight bytes of `word` is a control character, `"` or `\\`
/// (the classic "has a byte less than n" and "has a zero byte" bit tricks; they may
/// flag a byte next to a real hit, never miss one, so a flagged word is looked at
/// byte by byte).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word;
    let quote =
        (word ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'"')));
    let backslash =
        (word ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES) & !(word ^ (ONES * u64::from(b'\\')));
    (below_space | quote | backslash) & HIGH != 0
}

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

/// A finite float as `Number`'s `Display` writes it (`{:?}`: the shortest text that
/// reads back as the same `f64`, with a `.0` on whole numbers); NaN and infinities
/// as `null`, as `ToJson` makes them.
fn write_f64(out: &mut Vec<u8>, f: f64) {
    if !f.is_finite() {
        out.extend_from_slice(b"null");
    } else if !write_short_decimal(out, f) {
        let _ = fmt::write(&mut Raw(out), format_args!("{f:?}"));
    }
}

/// Writes `f` without the general algorithm when it is the double nearest to a
/// decimal with at most three places and at most 15 significant digits (measured
/// data, rounded values): such a decimal is then exactly what `{:?}` prints, since
/// decimals of 15 digits or fewer map to distinct doubles, so no shorter text reads
/// back as `f`, and `{:?}` uses plain notation from 1e-4 to 1e16. False when `f` is
/// not such a number (the caller then formats it the general way).
fn write_short_decimal(out: &mut Vec<u8>, f: f64) -> bool {
    const LIMIT: f64 = 1e15; // scaled values below this have at most 15 digits
    for (places, scale) in [(1u32, 10.0), (2, 100.0), (3, 1000.0)] {
        let scaled = (f * scale).round();
        if scaled.abs() >= LIMIT {
            return false;
        }
        // Exact: `scaled` is an integer below 2^53 and the division is correctly
        // rounded, so equality means `f` is the double nearest to scaled/10^places.
        if scaled / scale != f {
            continue;
        }
        if f.is_sign_negative() {
            out.push(b'-');
        }
        let n = scaled.abs() as u64;
        let unit = 10u64.pow(places);
        write_u64(out, n / unit);
        out.push(b'.');
        let mut fraction = n % unit;
        let mut width = places;
        // The shortest text has no trailing zeros, but keeps one digit (`2.0`).
        while width > 1 && fraction % 10 == 0 {
            fraction /= 10;
            width -= 1;
        }
        let start = out.len();
        write_u64(out, fraction);
        let written = (out.len() - start) as u32;
        for _ in written..width {
            out.insert(start, b'0');
        }
        return true;
    }
    false
}

/// `value` as `Value`'s `Display` writes it, into bytes.
pub(crate) fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => b.write_json(out),
        Value::Number(n) => n.write_json(out),
        Value::String(s) => escape_into(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => map.write_json(out),
    }
}

impl WriteJson for Value {
    fn write_json(&self, out: &mut Vec<u8>) {
        write_value(out, self);
    }
}

impl WriteJson for Map {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (key, item)) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            escape_into(out, key);
            out.push(b':');
            write_value(out, item);
        }
        out.push(b'}');
    }
}

impl WriteJson for Number {
    fn write_json(&self, out: &mut Vec<u8>) {
        match self.0 {
            N::PosInt(u) => write_u64(out, u),
            N::NegInt(i) => write_i64(out, i),
            N::Float(f) => write_f64(out, f),
        }
    }
}

impl WriteJson for bool {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl WriteJson for str {
    fn write_json(&self, out: &mut Vec<u8>) {
        escape_into(out, self);
    }
}

impl WriteJson for String {
    fn write_json(&self, out: &mut Vec<u8>) {
        escape_into(out, self);
    }
}

impl WriteJson for char {
    fn write_json(&self, out: &mut Vec<u8>) {
        escape_into(out, self.encode_utf8(&mut [0; 4]));
    }
}

impl WriteJson for () {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"null");
    }
}

impl<T: WriteJson + ?Sized> WriteJson for &T {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out);
    }
}

impl<T: WriteJson + ?Sized> WriteJson for &mut T {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out);
    }
}

impl<T: WriteJson + ?Sized> WriteJson for Box<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        (**self).write_json(out);
    }
}

impl<T: WriteJson> WriteJson for Option<T> {
    /// `None` is `null`.
    fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Some(value) => value.write_json(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl<T: WriteJson> WriteJson for [T] {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, item) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            item.write_json(out);
        }
        out.push(b']');
    }
}

impl<T: WriteJson, const LEN: usize> WriteJson for [T; LEN] {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out);
    }
}

impl<T: WriteJson> WriteJson for Vec<T> {
    fn write_json(&self, out: &mut Vec<u8>) {
        self.as_slice().write_json(out);
    }
}

impl<K: AsRef<str>, V: WriteJson> WriteJson for BTreeMap<K, V> {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, (key, item)) in self.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            escape_into(out, key.as_ref());
            out.push(b':');
            item.write_json(out);
        }
        out.push(b'}');
    }
}

impl<K: AsRef<str>, V: WriteJson, S> WriteJson for HashMap<K, V, S> {
    /// Keys are sorted, as `ToJson` sorts them.
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut pairs: Vec<(&str, &V)> = self.iter().map(|(k, v)| (k.as_ref(), v)).collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        out.push(b'{');
        for (i, (key, item)) in pairs.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            escape_into(out, key);
            out.push(b':');
            item.write_json(out);
        }
        out.push(b'}');
    }
}

macro_rules! number_writers {
    (unsigned: $($u:ty)*; signed: $($i:ty)*) => {
        $(
            impl WriteJson for $u {
                fn write_json(&self, out: &mut Vec<u8>) {
                    write_u64(out, *self as u64);
                }
            }
        )*
        $(
            impl WriteJson for $i {
                fn write_json(&self, out: &mut Vec<u8>) {
                    write_i64(out, *self as i64);
                }
            }
        )*
    };
}
number_writers!(unsigned: u8 u16 u32 u64 usize; signed: i8 i16 i32 i64 isize);

impl WriteJson for f64 {
    /// NaN and infinities become `null`, as with `ToJson`.
    fn write_json(&self, out: &mut Vec<u8>) {
        write_f64(out, *self);
    }
}

impl WriteJson for f32 {
    /// Widened to `f64` first, as `ToJson` does.
    fn write_json(&self, out: &mut Vec<u8>) {
        write_f64(out, f64::from(*self));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{from_str, ToJson};

    fn written(value: impl WriteJson) -> String {
        write_to_string(|w| w.value(value))
    }

    #[test]
    fn writes_what_value_prints() {
        let text = r#"{"a":[1,-2,3.5,1e300,-0.25,0.1,-0.0,true,false,null],"b":{"c":"d\n\"\\\u0001\u001fé😀\b\f\t\r"},"e":18446744073709551615,"f":-9223372036854775808}"#;
        let value = from_str(text).unwrap();
        assert_eq!(written(&value), value.to_string());
        assert_eq!(written(&value), text);
        // DEL is not a control character to JSON: written as is, as Value does.
        assert_eq!(written("\u{7f}"), Value::from("\u{7f}").to_string());
    }

    #[test]
    fn scalars_match_their_to_json_text() {
        for f in [
            0.0,
            -0.0,
            1.0,
            12.5,
            -3.1,
            1e16,
            1e-7,
            0.1 + 0.2,
            f64::MAX,
            f64::NAN,
        ] {
            assert_eq!(written(f), f.to_json().to_string(), "{f}");
        }
        assert_eq!(written(0.1f32), 0.1f32.to_json().to_string());
        for i in [0i64, 7, -7, i64::MIN, i64::MAX] {
            assert_eq!(written(i), i.to_json().to_string());
        }
        assert_eq!(written(u64::MAX), u64::MAX.to_json().to_string());
        assert_eq!(written('"'), '"'.to_json().to_string());
        assert_eq!(written(Some("x")), "\"x\"");
        assert_eq!(written(None::<&str>), "null");
        assert_eq!(written(["a", "b"]), r#"["a","b"]"#);
    }

    #[test]
    fn short_decimals_print_as_the_general_algorithm_does() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let check = |f: f64| {
            if !f.is_finite() {
                return; // null, checked elsewhere
            }
            let mut out = Vec::new();
            write_f64(&mut out, f);
            assert_eq!(String::from_utf8(out).unwrap(), format!("{f:?}"), "{f:e}");
        };
        for k in -30_000i64..30_000 {
            check(k as f64 / 10.0);
            check(k as f64 / 100.0);
            check(k as f64 / 1000.0);
        }
        for _ in 0..200_000 {
            let k = (random() % 2_000_000_000_000_000) as f64 - 1e15;
            check(k / 1000.0);
            check(k / 10.0);
            check(f64::from_bits(random()));
            check((random() % 100_000) as f64 * 1e-7);
        }
        for f in [
            0.0,
            -0.0,
            0.05,
            -0.001,
            1e-4,
            9.999e13,
            99999999999999.9,
            1e15,
            0.1 + 0.2,
        ] {
            check(f);
        }
    }

    #[test]
    fn escapes_every_byte_at_every_position_as_value_does() {
        for (b, len) in (0u8..0x80).flat_map(|b| (1..=17).map(move |len| (b, len))) {
            for at in 0..len {
                let mut text = "abcdefghijklmnopq".as_bytes()[..len].to_vec();
                text[at] = b;
                let text = String::from_utf8(text).unwrap();
                // Pretty printing still escapes char by char: the reference.
                assert_eq!(written(&text), format!("{:#}", Value::from(text.as_str())));
            }
        }
        assert_eq!(
            written("é😀\"\u{1}"),
            format!("{:#}", Value::from("é😀\"\u{1}"))
        );
    }

    #[test]
    fn display_text_is_escaped_as_a_string() {
        let quoted = "say \"hi\"\n";
        assert_eq!(
            written(AsJsonString(format_args!("{quoted}{}", 7))),
            format!("{quoted}7").to_json().to_string()
        );
        assert_eq!(
            written(AsJsonString(format_args!("{:02}:{:02}", 9, 5))),
            "\"09:05\""
        );
    }

    #[test]
    fn containers_place_their_commas() {
        let text = write_to_string(|w| {
            w.object(|o| {
                o.object("empty", |_| {})
                    .array("none", |_| {})
                    .array("mixed", |a| {
                        a.item(1).object(|o| {
                            o.field("k", "v");
                        });
                        a.array(|a| {
                            a.item(true).item(()).slot().null();
                        });
                    })
                    .field("last", Value::Null);
            })
        });
        assert_eq!(
            text,
            r#"{"empty":{},"none":[],"mixed":[1,{"k":"v"},[true,null,null]],"last":null}"#
        );
        assert_eq!(from_str(&text).unwrap().to_string(), text);
    }
}
