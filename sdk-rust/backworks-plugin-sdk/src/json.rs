//! JSON values in the spirit of `serde_json`, with the standard library only.
//!
//! Enough for plugin configs and API responses: parse ([`from_str`], `str::parse`),
//! build ([`json!`](crate::json!) and `From`), read (`v["key"]`, `v[0]`, `as_str`,
//! `as_i64`, `as_f64`, `as_bool`, [`Value::pointer`]) and serialise (`Display` gives
//! compact JSON, `{:#}` pretty JSON).
//!
//! ```
//! use backworks_plugin_sdk::*;
//!
//! let city = "Oslo";
//! let v = json!({"city": city, "temperature": 25, "tags": ["cold", null], "ok": true});
//! assert_eq!(v["city"], "Oslo");
//! assert_eq!(v["temperature"].as_i64(), Some(25));
//! assert_eq!(v["tags"][0], "cold");
//! assert!(v["missing"].is_null());
//! let text = v.to_string();
//! assert_eq!(text, r#"{"city":"Oslo","temperature":25,"tags":["cold",null],"ok":true}"#);
//! assert_eq!(text.parse::<Value>().unwrap(), v);
//! ```
//!
//! Objects keep their keys in insertion order (responses read the way they were
//! written); equality of objects ignores order. Lookups are linear for small objects
//! and hashed once an object has more than a few dozen keys.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::ops;
use std::str::FromStr;

mod writer;
pub use writer::{
    write, write_to_string, ArrayWriter, AsJsonString, ObjectWriter, ValueWriter, WriteJson,
};

/// Any JSON value.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Value {
    /// `null`; also what indexing a missing key or position gives.
    #[default]
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A number: an integer (kept exact up to 64 bits) or a finite float.
    Number(Number),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<Value>),
    /// An object.
    Object(Map),
}

/// A JSON number: a signed or unsigned 64-bit integer, or a finite `f64`.
#[derive(Debug, Clone, Copy)]
pub struct Number(N);

#[derive(Debug, Clone, Copy)]
enum N {
    PosInt(u64),
    /// Always negative.
    NegInt(i64),
    /// Always finite.
    Float(f64),
}

impl Number {
    /// A float number, or `None` for NaN and infinities (JSON has no such numbers).
    pub fn from_f64(f: f64) -> Option<Number> {
        f.is_finite().then_some(Number(N::Float(f)))
    }

    /// The number as an `i64`, when it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match self.0 {
            N::PosInt(u) => i64::try_from(u).ok(),
            N::NegInt(i) => Some(i),
            N::Float(_) => None,
        }
    }

    /// The number as a `u64`, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self.0 {
            N::PosInt(u) => Some(u),
            _ => None,
        }
    }

    /// The number as an `f64` (integers convert, possibly rounding beyond 2^53).
    pub fn as_f64(&self) -> f64 {
        match self.0 {
            N::PosInt(u) => u as f64,
            N::NegInt(i) => i as f64,
            N::Float(f) => f,
        }
    }

    /// True when the number was written or built as a float.
    pub fn is_f64(&self) -> bool {
        matches!(self.0, N::Float(_))
    }
}

impl PartialEq for Number {
    /// Integers equal integers of the same value and floats equal floats, as in
    /// `serde_json`: `1` and `1.0` are different numbers.
    fn eq(&self, other: &Number) -> bool {
        match (self.0, other.0) {
            (N::PosInt(a), N::PosInt(b)) => a == b,
            (N::NegInt(a), N::NegInt(b)) => a == b,
            (N::Float(a), N::Float(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            N::PosInt(u) => write!(f, "{u}"),
            N::NegInt(i) => write!(f, "{i}"),
            // `{:?}` is the shortest text that reads back as the same f64, keeps a
            // ".0" on whole numbers (so a float stays a float) and switches to
            // exponent notation for very large and small magnitudes: valid JSON.
            N::Float(x) => write!(f, "{x:?}"),
        }
    }
}

/// Objects with more keys than this get a hash index for lookups.
const INDEX_THRESHOLD: usize = 32;

/// A JSON object: string keys in insertion order, each at most once.
#[derive(Debug, Clone, Default)]
pub struct Map {
    entries: Vec<(String, Value)>,
    /// Key to position in `entries`, kept only for large objects.
    index: Option<HashMap<String, usize>>,
}

impl Map {
    /// An empty object.
    pub fn new() -> Map {
        Map::default()
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, key: &str) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.entries.iter().position(|(k, _)| k == key),
        }
    }

    fn reindex(&mut self) {
        self.index = (self.entries.len() > INDEX_THRESHOLD).then(|| {
            self.entries
                .iter()
                .enumerate()
                .map(|(i, (k, _))| (k.clone(), i))
                .collect()
        });
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.position(key).map(|i| &self.entries[i].1)
    }

    /// The value of `key`, mutably.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.position(key).map(|i| &mut self.entries[i].1)
    }

    /// True when `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// Sets `key` to `value`; returns the value it replaces. A new key goes last,
    /// a replaced one keeps its place.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        if let Some(i) = self.position(&key) {
            return Some(std::mem::replace(&mut self.entries[i].1, value));
        }
        match &mut self.index {
            Some(index) => {
                index.insert(key.clone(), self.entries.len());
            }
            None if self.entries.len() == INDEX_THRESHOLD => {
                self.entries.push((key, value));
                self.reindex();
                return None;
            }
            None => {}
        }
        self.entries.push((key, value));
        None
    }

    /// Removes `key`, keeping the order of the others; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let i = self.position(key)?;
        let (_, value) = self.entries.remove(i);
        if self.index.is_some() {
            self.reindex();
        }
        Some(value)
    }

    /// The `(key, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Value)> {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in order.
    pub fn values(&self) -> impl Iterator<Item = &Value> {
        self.entries.iter().map(|(_, v)| v)
    }
}

impl PartialEq for Map {
    /// Same keys with equal values, in any order.
    fn eq(&self, other: &Map) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Map {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Map {
        let mut map = Map::new();
        map.extend(iter);
        map
    }
}

impl<K: Into<String>, V: Into<Value>> Extend<(K, V)> for Map {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl IntoIterator for Map {
    type Item = (String, Value);
    type IntoIter = std::vec::IntoIter<(String, Value)>;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a> IntoIterator for &'a Map {
    type Item = (&'a String, &'a Value);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, Value)>,
        fn(&'a (String, Value)) -> (&'a String, &'a Value),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter().map(|(k, v)| (k, v))
    }
}

// ---------------------------------------------------------------------------
// Reading values

static NULL: Value = Value::Null;

impl Value {
    /// True for `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
    /// True for `true` and `false`.
    pub fn is_boolean(&self) -> bool {
        matches!(self, Value::Bool(_))
    }
    /// True for numbers.
    pub fn is_number(&self) -> bool {
        matches!(self, Value::Number(_))
    }
    /// True for strings.
    pub fn is_string(&self) -> bool {
        matches!(self, Value::String(_))
    }
    /// True for arrays.
    pub fn is_array(&self) -> bool {
        matches!(self, Value::Array(_))
    }
    /// True for objects.
    pub fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    /// The integer, if this is an integer that fits an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }
    /// The integer, if this is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Number(n) => n.as_u64(),
            _ => None,
        }
    }
    /// The number as an `f64`, if this is any number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(n.as_f64()),
            _ => None,
        }
    }
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// The elements, mutably, if this is an array.
    pub fn as_array_mut(&mut self) -> Option<&mut Vec<Value>> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// The map, if this is an object.
    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }
    /// The map, mutably, if this is an object.
    pub fn as_object_mut(&mut self) -> Option<&mut Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    /// `"null"`, `"boolean"`, `"number"`, `"string"`, `"array"` or `"object"`, for
    /// error messages such as "api_key must be a string (got number)".
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// `v.get("key")` or `v.get(0)`: the member, or `None` when it is absent or
    /// `v` has the wrong type. (Indexing with `v["key"]` gives `null` instead.)
    pub fn get<I: JsonIndex>(&self, index: I) -> Option<&Value> {
        index.index_into(self)
    }

    /// Like [`get`](Value::get), mutably.
    pub fn get_mut<I: JsonIndex>(&mut self, index: I) -> Option<&mut Value> {
        index.index_into_mut(self)
    }

    /// A JSON Pointer (RFC 6901) lookup: `v.pointer("/forecast/0/high")`.
    pub fn pointer(&self, pointer: &str) -> Option<&Value> {
        if pointer.is_empty() {
            return Some(self);
        }
        let rest = pointer.strip_prefix('/')?;
        rest.split('/').try_fold(self, |v, token| {
            let token = token.replace("~1", "/").replace("~0", "~");
            match v {
                Value::Object(m) => m.get(&token),
                Value::Array(a) => token.parse::<usize>().ok().and_then(|i| a.get(i)),
                _ => None,
            }
        })
    }

    /// Takes the value out, leaving `null`.
    pub fn take(&mut self) -> Value {
        std::mem::take(self)
    }

    /// Indented JSON (two spaces), like `format!("{value:#}")`.
    pub fn to_string_pretty(&self) -> String {
        format!("{self:#}")
    }
}

mod private {
    pub trait Sealed {}
    impl Sealed for usize {}
    impl Sealed for str {}
    impl Sealed for String {}
    impl<T: Sealed + ?Sized> Sealed for &T {}
}

/// What can index a [`Value`]: `usize` for arrays, `str`/`String` for objects.
pub trait JsonIndex: private::Sealed {
    /// The member of `v`, if present.
    fn index_into<'v>(&self, v: &'v Value) -> Option<&'v Value>;
    /// The member of `v`, mutably, if present.
    fn index_into_mut<'v>(&self, v: &'v mut Value) -> Option<&'v mut Value>;
    /// The member of `v`, inserting `null` for a missing key (turning a `null` `v`
    /// into an object first). Panics where `serde_json` panics: a key into a
    /// non-object, or a position past an array's end.
    fn index_or_insert<'v>(&self, v: &'v mut Value) -> &'v mut Value;
}

impl JsonIndex for usize {
    fn index_into<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        v.as_array().and_then(|a| a.get(*self))
    }
    fn index_into_mut<'v>(&self, v: &'v mut Value) -> Option<&'v mut Value> {
        v.as_array_mut().and_then(|a| a.get_mut(*self))
    }
    fn index_or_insert<'v>(&self, v: &'v mut Value) -> &'v mut Value {
        match v {
            Value::Array(a) => {
                let len = a.len();
                a.get_mut(*self).unwrap_or_else(|| {
                    panic!("cannot access index {self} of a JSON array of length {len}")
                })
            }
            other => panic!("cannot access index {self} of JSON {}", other.type_name()),
        }
    }
}

impl JsonIndex for str {
    fn index_into<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        v.as_object().and_then(|m| m.get(self))
    }
    fn index_into_mut<'v>(&self, v: &'v mut Value) -> Option<&'v mut Value> {
        v.as_object_mut().and_then(|m| m.get_mut(self))
    }
    fn index_or_insert<'v>(&self, v: &'v mut Value) -> &'v mut Value {
        if v.is_null() {
            *v = Value::Object(Map::new());
        }
        match v {
            Value::Object(m) => {
                if !m.contains_key(self) {
                    m.insert(self, Value::Null);
                }
                m.get_mut(self).expect("just inserted")
            }
            other => panic!("cannot access key {self:?} of JSON {}", other.type_name()),
        }
    }
}

impl JsonIndex for String {
    fn index_into<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        self.as_str().index_into(v)
    }
    fn index_into_mut<'v>(&self, v: &'v mut Value) -> Option<&'v mut Value> {
        self.as_str().index_into_mut(v)
    }
    fn index_or_insert<'v>(&self, v: &'v mut Value) -> &'v mut Value {
        self.as_str().index_or_insert(v)
    }
}

impl<T: JsonIndex + ?Sized> JsonIndex for &T {
    fn index_into<'v>(&self, v: &'v Value) -> Option<&'v Value> {
        (**self).index_into(v)
    }
    fn index_into_mut<'v>(&self, v: &'v mut Value) -> Option<&'v mut Value> {
        (**self).index_into_mut(v)
    }
    fn index_or_insert<'v>(&self, v: &'v mut Value) -> &'v mut Value {
        (**self).index_or_insert(v)
    }
}

impl<I: JsonIndex> ops::Index<I> for Value {
    type Output = Value;
    /// `v["key"]` / `v[0]`: the member, or `null` when absent or of the wrong type.
    fn index(&self, index: I) -> &Value {
        index.index_into(self).unwrap_or(&NULL)
    }
}

impl<I: JsonIndex> ops::IndexMut<I> for Value {
    /// `v["key"] = json!(1)` inserts; see [`JsonIndex::index_or_insert`].
    fn index_mut(&mut self, index: I) -> &mut Value {
        index.index_or_insert(self)
    }
}

// Comparisons with plain Rust values: `v["city"] == "Oslo"`, `v["n"] == 3`.
impl PartialEq<str> for Value {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == Some(other)
    }
}
impl PartialEq<&str> for Value {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == Some(*other)
    }
}
impl PartialEq<String> for Value {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == Some(other.as_str())
    }
}
impl PartialEq<bool> for Value {
    fn eq(&self, other: &bool) -> bool {
        self.as_bool() == Some(*other)
    }
}
impl PartialEq<f64> for Value {
    fn eq(&self, other: &f64) -> bool {
        self.as_f64() == Some(*other)
    }
}
macro_rules! eq_signed {
    ($($t:ty)*) => {$(
        impl PartialEq<$t> for Value {
            fn eq(&self, other: &$t) -> bool {
                self.as_i64() == Some(i64::from(*other))
            }
        }
    )*};
}
eq_signed!(i8 i16 i32 i64);
macro_rules! eq_unsigned {
    ($($t:ty)*) => {$(
        impl PartialEq<$t> for Value {
            fn eq(&self, other: &$t) -> bool {
                self.as_u64() == u64::try_from(*other).ok()
            }
        }
    )*};
}
eq_unsigned!(u8 u16 u32 u64 usize);

// ---------------------------------------------------------------------------
// Building values

/// Turns a Rust value into a [`Value`] by reference; what [`json!`](crate::json!)
/// uses for interpolated expressions, so `json!({"name": self.name})` does not
/// move out of `self`.
pub trait ToJson {
    /// The JSON form of `self`.
    fn to_json(&self) -> Value;
}

impl ToJson for Value {
    fn to_json(&self) -> Value {
        self.clone()
    }
}
impl ToJson for Map {
    fn to_json(&self) -> Value {
        Value::Object(self.clone())
    }
}
impl ToJson for Number {
    fn to_json(&self) -> Value {
        Value::Number(*self)
    }
}
impl ToJson for bool {
    fn to_json(&self) -> Value {
        Value::Bool(*self)
    }
}
impl ToJson for str {
    fn to_json(&self) -> Value {
        Value::String(self.to_owned())
    }
}
impl ToJson for String {
    fn to_json(&self) -> Value {
        Value::String(self.clone())
    }
}
impl ToJson for char {
    fn to_json(&self) -> Value {
        Value::String(self.to_string())
    }
}
impl ToJson for () {
    fn to_json(&self) -> Value {
        Value::Null
    }
}
impl<T: ToJson + ?Sized> ToJson for &T {
    fn to_json(&self) -> Value {
        (**self).to_json()
    }
}
impl<T: ToJson + ?Sized> ToJson for &mut T {
    fn to_json(&self) -> Value {
        (**self).to_json()
    }
}
impl<T: ToJson + ?Sized> ToJson for Box<T> {
    fn to_json(&self) -> Value {
        (**self).to_json()
    }
}
impl<T: ToJson> ToJson for Option<T> {
    /// `None` is `null`.
    fn to_json(&self) -> Value {
        self.as_ref().map_or(Value::Null, ToJson::to_json)
    }
}
impl<T: ToJson> ToJson for [T] {
    fn to_json(&self) -> Value {
        Value::Array(self.iter().map(ToJson::to_json).collect())
    }
}
impl<T: ToJson, const LEN: usize> ToJson for [T; LEN] {
    fn to_json(&self) -> Value {
        self.as_slice().to_json()
    }
}
impl<T: ToJson> ToJson for Vec<T> {
    fn to_json(&self) -> Value {
        self.as_slice().to_json()
    }
}
impl<K: AsRef<str>, V: ToJson> ToJson for BTreeMap<K, V> {
    fn to_json(&self) -> Value {
        Value::Object(
            self.iter()
                .map(|(k, v)| (k.as_ref().to_owned(), v.to_json()))
                .collect(),
        )
    }
}
impl<K: AsRef<str>, V: ToJson, S> ToJson for HashMap<K, V, S> {
    /// Keys are sorted, so the output does not depend on hashing.
    fn to_json(&self) -> Value {
        let mut pairs: Vec<(&str, &V)> = self.iter().map(|(k, v)| (k.as_ref(), v)).collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        Value::Object(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_json()))
                .collect(),
        )
    }
}

macro_rules! number_impls {
    (unsigned: $($u:ty)*; signed: $($i:ty)*; float: $($f:ty)*) => {
        $(
            impl ToJson for $u {
                fn to_json(&self) -> Value {
                    Value::Number(Number(N::PosInt(*self as u64)))
                }
            }
        )*
        $(
            impl ToJson for $i {
                fn to_json(&self) -> Value {
                    let i = *self as i64;
                    Value::Number(Number(if i < 0 { N::NegInt(i) } else { N::PosInt(i as u64) }))
                }
            }
        )*
        $(
            impl ToJson for $f {
                /// NaN and infinities become `null`, as in `serde_json`.
                fn to_json(&self) -> Value {
                    Number::from_f64(f64::from(*self)).map_or(Value::Null, Value::Number)
                }
            }
        )*
        $(
            impl From<$u> for Value {
                fn from(v: $u) -> Value {
                    v.to_json()
                }
            }
        )*
        $(
            impl From<$i> for Value {
                fn from(v: $i) -> Value {
                    v.to_json()
                }
            }
        )*
        $(
            impl From<$f> for Value {
                fn from(v: $f) -> Value {
                    v.to_json()
                }
            }
        )*
    };
}
number_impls!(unsigned: u8 u16 u32 u64 usize; signed: i8 i16 i32 i64 isize; float: f32 f64);

impl From<bool> for Value {
    fn from(v: bool) -> Value {
        Value::Bool(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Value {
        Value::String(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Value {
        Value::String(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Value {
        Value::String(v.clone())
    }
}
impl From<char> for Value {
    fn from(v: char) -> Value {
        Value::String(v.to_string())
    }
}
impl From<Number> for Value {
    fn from(v: Number) -> Value {
        Value::Number(v)
    }
}
impl From<Map> for Value {
    fn from(v: Map) -> Value {
        Value::Object(v)
    }
}
impl From<()> for Value {
    fn from(_: ()) -> Value {
        Value::Null
    }
}
impl<T: Into<Value>> From<Vec<T>> for Value {
    fn from(v: Vec<T>) -> Value {
        Value::Array(v.into_iter().map(Into::into).collect())
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}
impl<T: Into<Value>> FromIterator<T> for Value {
    /// Collects into an array.
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Value {
        Value::Array(iter.into_iter().map(Into::into).collect())
    }
}

/// Builds a [`Value`] from JSON-like syntax, as `serde_json::json!` does.
///
/// Keys are string literals (or any single token whose `to_string()` is the key);
/// values are `null`, `true`, `false`, nested `[...]` / `{...}`, or any Rust
/// expression whose type implements [`ToJson`](crate::json::ToJson), taken by
/// reference. Very large literals can hit the compiler's macro recursion limit
/// (raise it with `#![recursion_limit = "256"]`).
///
/// ```
/// use backworks_plugin_sdk::*;
///
/// let days = vec![json!({"day": 1}), json!({"day": 2})];
/// let celsius = 21.5;
/// let v = json!({
///     "temperature": 25,
///     "humidity": 60,
///     "nested": {"list": [1, 2.5, "three", null, [true, false]]},
///     "feels_like": celsius - 1.0,
///     "forecast": days,
/// });
/// assert_eq!(v["nested"]["list"][1].as_f64(), Some(2.5));
/// assert_eq!(v["feels_like"], 20.5);
/// assert_eq!(v["forecast"][1]["day"], 2);
/// ```
#[macro_export]
macro_rules! json {
    (null) => { $crate::Value::Null };
    (true) => { $crate::Value::Bool(true) };
    (false) => { $crate::Value::Bool(false) };
    ([]) => { $crate::Value::Array(::std::vec::Vec::new()) };
    ([ $($tt:tt)+ ]) => { $crate::Value::Array($crate::__json_array!([] ($($tt)+))) };
    ({}) => { $crate::Value::Object($crate::Map::new()) };
    ({ $($tt:tt)+ }) => {{
        let mut object = $crate::Map::new();
        $crate::__json_object!(object ($($tt)+));
        $crate::Value::Object(object)
    }};
    ($other:expr) => { $crate::json::ToJson::to_json(&$other) };
}

/// Collects the elements of a `json!` array literal, one per step, into `vec![...]`.
#[doc(hidden)]
#[macro_export]
macro_rules! __json_array {
    ([$($done:expr,)*] ()) => { ::std::vec![$($done,)*] };
    ([$($done:expr,)*] (null $(, $($rest:tt)*)?)) => {
        $crate::__json_array!([$($done,)* $crate::Value::Null,] ($($($rest)*)?))
    };
    ([$($done:expr,)*] (true $(, $($rest:tt)*)?)) => {
        $crate::__json_array!([$($done,)* $crate::Value::Bool(true),] ($($($rest)*)?))
    };
    ([$($done:expr,)*] (false $(, $($rest:tt)*)?)) => {
        $crate::__json_array!([$($done,)* $crate::Value::Bool(false),] ($($($rest)*)?))
    };
    ([$($done:expr,)*] ([ $($inner:tt)* ] $(, $($rest:tt)*)?)) => {
        $crate::__json_array!([$($done,)* $crate::json!([ $($inner)* ]),] ($($($rest)*)?))
    };
    ([$($done:expr,)*] ({ $($inner:tt)* } $(, $($rest:tt)*)?)) => {
        $crate::__json_array!([$($done,)* $crate::json!({ $($inner)* }),] ($($($rest)*)?))
    };
    ([$($done:expr,)*] ($value:expr $(, $($rest:tt)*)?)) => {
        $crate::__json_array!([$($done,)* $crate::json::ToJson::to_json(&$value),] ($($($rest)*)?))
    };
}

/// Inserts the members of a `json!` object literal, one per step.
#[doc(hidden)]
#[macro_export]
macro_rules! __json_object {
    ($object:ident ()) => {};
    ($object:ident ($key:tt : null $(, $($rest:tt)*)?)) => {
        $object.insert(::std::string::ToString::to_string(&$key), $crate::Value::Null);
        $crate::__json_object!($object ($($($rest)*)?));
    };
    ($object:ident ($key:tt : true $(, $($rest:tt)*)?)) => {
        $object.insert(::std::string::ToString::to_string(&$key), $crate::Value::Bool(true));
        $crate::__json_object!($object ($($($rest)*)?));
    };
    ($object:ident ($key:tt : false $(, $($rest:tt)*)?)) => {
        $object.insert(::std::string::ToString::to_string(&$key), $crate::Value::Bool(false));
        $crate::__json_object!($object ($($($rest)*)?));
    };
    ($object:ident ($key:tt : [ $($inner:tt)* ] $(, $($rest:tt)*)?)) => {
        $object.insert(::std::string::ToString::to_string(&$key), $crate::json!([ $($inner)* ]));
        $crate::__json_object!($object ($($($rest)*)?));
    };
    ($object:ident ($key:tt : { $($inner:tt)* } $(, $($rest:tt)*)?)) => {
        $object.insert(::std::string::ToString::to_string(&$key), $crate::json!({ $($inner)* }));
        $crate::__json_object!($object ($($($rest)*)?));
    };
    ($object:ident ($key:tt : $value:expr $(, $($rest:tt)*)?)) => {
        $object.insert(::std::string::ToString::to_string(&$key), $crate::json::ToJson::to_json(&$value));
        $crate::__json_object!($object ($($($rest)*)?));
    };
}

// ---------------------------------------------------------------------------
// Serialising

impl fmt::Display for Value {
    /// Compact JSON; the alternate form (`{:#}`) is indented with two spaces.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            // Compact text goes through the writer: bytes, escapes copied in runs.
            let mut out = Vec::new();
            writer::write_value(&mut out, self);
            return f.write_str(&String::from_utf8_lossy(&out));
        }
        let mut out = String::new();
        write_value(&mut out, self, Some(0));
        f.write_str(&out)
    }
}

/// Compact JSON text of `value`.
pub fn to_string(value: &Value) -> String {
    value.to_string()
}

/// Indented JSON text of `value`.
pub fn to_string_pretty(value: &Value) -> String {
    value.to_string_pretty()
}

fn newline(out: &mut String, level: usize) {
    out.push('\n');
    for _ in 0..level {
        out.push_str("  ");
    }
}

/// `pretty` is the indentation level, or `None` for compact output.
fn write_value(out: &mut String, value: &Value, pretty: Option<usize>) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Some(level) = pretty {
                    newline(out, level + 1);
                }
                write_value(out, item, pretty.map(|l| l + 1));
            }
            if let (Some(level), false) = (pretty, items.is_empty()) {
                newline(out, level);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                if let Some(level) = pretty {
                    newline(out, level + 1);
                }
                write_string(out, key);
                out.push(':');
                if pretty.is_some() {
                    out.push(' ');
                }
                write_value(out, item, pretty.map(|l| l + 1));
            }
            if let (Some(level), false) = (pretty, map.is_empty()) {
                newline(out, level);
            }
            out.push('}');
        }
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Parsing

/// Why a text is not JSON, and where (1-based line and column, in characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    message: String,
    line: usize,
    column: usize,
}

impl JsonError {
    /// What was wrong, e.g. "expected `,` or `}`".
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The 1-based line of the problem.
    pub fn line(&self) -> usize {
        self.line
    }
    /// The 1-based column of the problem.
    pub fn column(&self) -> usize {
        self.column
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.message, self.line, self.column
        )
    }
}

impl std::error::Error for JsonError {}

/// Nesting deeper than this is refused, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 128;

/// Parses JSON text (RFC 8259: one value, surrounded by optional whitespace).
pub fn from_str(text: &str) -> Result<Value, JsonError> {
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        depth: 0,
    };
    parser.skip_whitespace();
    let value = parser.value()?;
    parser.skip_whitespace();
    if parser.pos < parser.bytes.len() {
        return Err(parser.error("trailing characters after the JSON value"));
    }
    Ok(value)
}

/// Parses JSON from bytes, which must be UTF-8.
pub fn from_slice(bytes: &[u8]) -> Result<Value, JsonError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => from_str(text),
        Err(e) => {
            let valid = std::str::from_utf8(&bytes[..e.valid_up_to()]).expect("valid prefix");
            let (line, column) = location(valid, valid.len());
            Err(JsonError {
                message: "invalid UTF-8".into(),
                line,
                column: column + 1,
            })
        }
    }
}

impl FromStr for Value {
    type Err = JsonError;
    fn from_str(text: &str) -> Result<Value, JsonError> {
        from_str(text)
    }
}

/// 1-based line and 0-based column (in characters) of byte offset `pos`.
fn location(text: &str, pos: usize) -> (usize, usize) {
    let before = &text[..pos];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count());
    (line, column)
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> JsonError {
        let mut pos = self.pos.min(self.bytes.len());
        while !self.text.is_char_boundary(pos) {
            pos -= 1;
        }
        let (line, column) = location(self.text, pos);
        JsonError {
            message: message.to_owned(),
            line,
            column: column + 1,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &str, value: Value) -> Result<Value, JsonError> {
        if self.bytes[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(value)
        } else {
            Err(self.error("expected a JSON value"))
        }
    }

    fn value(&mut self) -> Result<Value, JsonError> {
        match self.peek() {
            None => Err(self.error("unexpected end of input, expected a JSON value")),
            Some(b'n') => self.expect_literal("null", Value::Null),
            Some(b't') => self.expect_literal("true", Value::Bool(true)),
            Some(b'f') => self.expect_literal("false", Value::Bool(false)),
            Some(b'"') => self.string().map(Value::String),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => self.nested(Parser::array),
            Some(b'{') => self.nested(Parser::object),
            Some(_) => Err(self.error("expected a JSON value")),
        }
    }

    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<Value, JsonError>,
    ) -> Result<Value, JsonError> {
        if self.depth == MAX_DEPTH {
            return Err(self.error("JSON nested too deeply"));
        }
        self.depth += 1;
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn array(&mut self) -> Result<Value, JsonError> {
        self.pos += 1; // [
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value()?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    fn object(&mut self) -> Result<Value, JsonError> {
        self.pos += 1; // {
        let mut map = Map::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(map));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected `:`"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let value = self.value()?;
            map.insert(key, value); // a repeated key: the last one wins, as in serde_json
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(map));
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("invalid \\u escape"))?;
        let code = u32::from_str_radix(text, 16).map_err(|_| self.error("invalid \\u escape"))?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(self.error("invalid \\u escape"));
        }
        self.pos += 4;
        Ok(code)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1; // "
        let mut out = String::new();
        loop {
            // Copy the run of plain characters in one go.
            let start = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[start..self.pos]);
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escape = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{08}'),
                        b'f' => out.push('\u{0c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&first) {
                                if !self.bytes[self.pos..].starts_with(b"\\u") {
                                    return Err(self.error("unpaired surrogate in \\u escape"));
                                }
                                self.pos += 2;
                                let second = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&second) {
                                    return Err(self.error("unpaired surrogate in \\u escape"));
                                }
                                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                            } else {
                                first
                            };
                            let c = char::from_u32(code)
                                .ok_or_else(|| self.error("unpaired surrogate in \\u escape"))?;
                            out.push(c);
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape"));
                        }
                    }
                }
                Some(_) => return Err(self.error("control character in string")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.pos;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.pos += 1;
                }
            }
            _ => return Err(self.error("invalid number")),
        }
        let mut is_float = false;
        if self.peek() == Some(b'.') {
            is_float = true;
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: expected a digit after `.`"));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            is_float = true;
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: expected a digit in the exponent"));
            }
            while matches!(self.peek(), Some(b'0'..=b'9')) {
                self.pos += 1;
            }
        }
        let text = &self.text[start..self.pos];
        if !is_float {
            // Integers stay exact when they fit 64 bits, and become floats otherwise.
            if negative {
                if let Ok(i) = text.parse::<i64>() {
                    return Ok(Value::Number(Number(if i == 0 {
                        N::PosInt(0)
                    } else {
                        N::NegInt(i)
                    })));
                }
            } else if let Ok(u) = text.parse::<u64>() {
                return Ok(Value::Number(Number(N::PosInt(u))));
            }
        }
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Number(Number(N::Float(f)))),
            _ => Err(self.error("number out of range")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        let text = r#"{"a":[1,-2,3.5,1e300,-0.25,true,false,null],"b":{"c":"d\n\"\\\u0001é😀"},"e":18446744073709551615}"#;
        let value = from_str(text).unwrap();
        assert_eq!(value.to_string(), text);
        assert_eq!(from_str(&value.to_string()).unwrap(), value);
        assert_eq!(from_str(&value.to_string_pretty()).unwrap(), value);
        assert_eq!(value["e"].as_u64(), Some(u64::MAX));
        assert_eq!(value["a"][3].as_f64(), Some(1e300));
    }

    #[test]
    fn keeps_insertion_order_and_compares_objects_by_content() {
        let a = json!({"z": 1, "a": 2});
        let b = json!({"a": 2, "z": 1});
        assert_eq!(a.to_string(), r#"{"z":1,"a":2}"#);
        assert_eq!(a, b);
    }

    #[test]
    fn parses_unicode_escapes_and_surrogate_pairs() {
        assert_eq!(from_str(r#""\u00e9\ud83d\ude00\/""#).unwrap(), "é😀/");
        assert!(from_str(r#""\ud83d""#).is_err());
        assert!(from_str(r#""\ude00x""#).is_err());
    }

    #[test]
    fn refuses_invalid_json_with_a_location() {
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "01",
            "1.",
            "-",
            "tru",
            "\"a",
            "[1] 2",
            "{\"a\":1,}",
            "\"\t\"",
            "nul",
        ] {
            assert!(from_str(bad).is_err(), "{bad:?} parsed");
        }
        let e = from_str("{\n  \"a\": ?\n}").unwrap_err();
        assert_eq!((e.line(), e.column()), (2, 8));
        assert_eq!(e.to_string(), "expected a JSON value at line 2 column 8");
    }

    #[test]
    fn refuses_nesting_beyond_the_depth_limit() {
        let deep = "[".repeat(MAX_DEPTH + 1) + &"]".repeat(MAX_DEPTH + 1);
        assert!(from_str(&deep).unwrap_err().message().contains("deeply"));
        let ok = "[".repeat(MAX_DEPTH) + &"]".repeat(MAX_DEPTH);
        assert!(from_str(&ok).is_ok());
    }

    #[test]
    fn numbers_keep_their_kind() {
        assert_eq!(json!(25).to_string(), "25");
        assert_eq!(json!(25.0).to_string(), "25.0");
        assert_eq!(json!(-3).as_i64(), Some(-3));
        assert_eq!(json!(0.1).to_string(), "0.1");
        assert_eq!(json!(f64::NAN), Value::Null);
        assert_eq!(from_str("-0").unwrap().as_i64(), Some(0));
        assert_eq!(from_str("1E2").unwrap().as_f64(), Some(100.0));
        assert_eq!(
            from_str("1e400").unwrap_err().message(),
            "number out of range"
        );
        assert_ne!(json!(1), json!(1.0));
    }

    #[test]
    fn index_mut_inserts_into_objects() {
        let mut v = Value::Null;
        v["a"]["b"] = json!([1, 2]);
        v["a"]["b"][1] = json!("two");
        assert_eq!(v.to_string(), r#"{"a":{"b":[1,"two"]}}"#);
        assert_eq!(v.pointer("/a/b/1"), Some(&json!("two")));
        assert_eq!(v.get("a").and_then(|a| a.get("missing")), None);
    }

    #[test]
    fn large_objects_are_indexed_and_stay_consistent() {
        let mut map = Map::new();
        for i in 0..100 {
            map.insert(format!("k{i}"), i);
        }
        map.insert("k5", "replaced");
        assert_eq!(map.len(), 100);
        assert_eq!(map.remove("k0"), Some(json!(0)));
        assert_eq!(map.get("k99"), Some(&json!(99)));
        assert_eq!(map.get("k5"), Some(&json!("replaced")));
        assert_eq!(map.keys().next().map(String::as_str), Some("k1"));
    }

    #[test]
    fn pretty_output_is_indented() {
        let v = json!({"a": [1, {}], "b": []});
        assert_eq!(
            v.to_string_pretty(),
            "{\n  \"a\": [\n    1,\n    {}\n  ],\n  \"b\": []\n}"
        );
    }

    #[test]
    fn json_macro_interpolates_by_reference() {
        struct Owner {
            name: String,
            tags: Vec<String>,
        }
        let owner = Owner {
            name: "ada".into(),
            tags: vec!["x".into()],
        };
        let n: Option<u8> = None;
        let v = json!({"name": owner.name, "tags": owner.tags, "n": n, "sum": 1 + 2, "neg": -4, "list": [owner.name, -1.5,],});
        assert_eq!(owner.name, "ada"); // not moved
        assert_eq!(
            v.to_string(),
            r#"{"name":"ada","tags":["x"],"n":null,"sum":3,"neg":-4,"list":["ada",-1.5]}"#
        );
    }
}
