//! GGUF metadata values: the 13 value types of the format, arrays (nested arrays included), and
//! an ordered key -> value map that keeps the file's order so that re-writing is byte-identical.

use std::collections::HashMap;

/// Value type ids as stored in the file.
pub mod type_id {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(GgufArray),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// A typed array value; arrays of arrays hold one [`GgufArray`] per element, each with its own
/// element type.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufArray {
    U8(Vec<u8>),
    I8(Vec<i8>),
    U16(Vec<u16>),
    I16(Vec<i16>),
    U32(Vec<u32>),
    I32(Vec<i32>),
    F32(Vec<f32>),
    Bool(Vec<bool>),
    String(Vec<String>),
    Array(Vec<GgufArray>),
    U64(Vec<u64>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

impl GgufValue {
    pub fn type_id(&self) -> u32 {
        use type_id::*;
        match self {
            GgufValue::U8(_) => U8,
            GgufValue::I8(_) => I8,
            GgufValue::U16(_) => U16,
            GgufValue::I16(_) => I16,
            GgufValue::U32(_) => U32,
            GgufValue::I32(_) => I32,
            GgufValue::F32(_) => F32,
            GgufValue::Bool(_) => BOOL,
            GgufValue::String(_) => STRING,
            GgufValue::Array(_) => ARRAY,
            GgufValue::U64(_) => U64,
            GgufValue::I64(_) => I64,
            GgufValue::F64(_) => F64,
        }
    }

    /// The type's name as the `gguf` Python package prints it.
    pub fn type_name(&self) -> &'static str {
        type_name(self.type_id())
    }

    /// Any integer value that is non-negative, widened to u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float or integer value as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            GgufValue::I8(v) => Some(v as f64),
            GgufValue::I16(v) => Some(v as f64),
            GgufValue::I32(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short human rendering: scalars in full, strings up to `max_chars`, arrays as
    /// `[type; n]` plus their first elements.
    pub fn render(&self, max_chars: usize) -> String {
        fn cut(s: &str, n: usize) -> String {
            if s.chars().count() <= n {
                s.to_string()
            } else {
                format!("{}...", s.chars().take(n).collect::<String>())
            }
        }
        match self {
            GgufValue::String(s) => format!("{:?}", cut(s, max_chars)),
            GgufValue::Array(a) => {
                let head = a.preview(3);
                format!("[{}; {}] {}", type_name(a.elem_type_id()), a.len(), cut(&head, max_chars))
            }
            GgufValue::F32(v) => format!("{v}"),
            GgufValue::F64(v) => format!("{v}"),
            GgufValue::Bool(b) => format!("{b}"),
            other => other.as_u64().map(|v| v.to_string()).unwrap_or_else(|| format!("{}", other.as_f64().unwrap_or(f64::NAN))),
        }
    }

    /// JSON form (arrays in full).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            GgufValue::String(s) => J::String(s.clone()),
            GgufValue::Bool(b) => J::Bool(*b),
            GgufValue::F32(v) => serde_json::Number::from_f64(*v as f64).map_or(J::Null, J::Number),
            GgufValue::F64(v) => serde_json::Number::from_f64(*v).map_or(J::Null, J::Number),
            GgufValue::Array(a) => a.to_json(),
            GgufValue::I8(v) => J::from(*v),
            GgufValue::I16(v) => J::from(*v),
            GgufValue::I32(v) => J::from(*v),
            GgufValue::I64(v) => J::from(*v),
            other => J::from(other.as_u64().unwrap_or(0)),
        }
    }
}

impl GgufArray {
    pub fn elem_type_id(&self) -> u32 {
        use type_id::*;
        match self {
            GgufArray::U8(_) => U8,
            GgufArray::I8(_) => I8,
            GgufArray::U16(_) => U16,
            GgufArray::I16(_) => I16,
            GgufArray::U32(_) => U32,
            GgufArray::I32(_) => I32,
            GgufArray::F32(_) => F32,
            GgufArray::Bool(_) => BOOL,
            GgufArray::String(_) => STRING,
            GgufArray::Array(_) => ARRAY,
            GgufArray::U64(_) => U64,
            GgufArray::I64(_) => I64,
            GgufArray::F64(_) => F64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::Array(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn as_strings(&self) -> Option<&[String]> {
        match self {
            GgufArray::String(v) => Some(v),
            _ => None,
        }
    }

    fn preview(&self, n: usize) -> String {
        let items: Vec<String> = match self.to_json() {
            serde_json::Value::Array(v) => v.iter().take(n).map(|x| x.to_string()).collect(),
            _ => vec![],
        };
        let more = if self.len() > n { ", ..." } else { "" };
        format!("[{}{}]", items.join(", "), more)
    }

    pub fn to_json(&self) -> serde_json::Value {
        fn num<T: Copy>(v: &[T], f: impl Fn(T) -> serde_json::Value) -> serde_json::Value {
            serde_json::Value::Array(v.iter().map(|&x| f(x)).collect())
        }
        let float = |x: f64| serde_json::Number::from_f64(x).map_or(serde_json::Value::Null, serde_json::Value::Number);
        match self {
            GgufArray::U8(v) => num(v, serde_json::Value::from),
            GgufArray::I8(v) => num(v, serde_json::Value::from),
            GgufArray::U16(v) => num(v, serde_json::Value::from),
            GgufArray::I16(v) => num(v, serde_json::Value::from),
            GgufArray::U32(v) => num(v, serde_json::Value::from),
            GgufArray::I32(v) => num(v, serde_json::Value::from),
            GgufArray::U64(v) => num(v, serde_json::Value::from),
            GgufArray::I64(v) => num(v, serde_json::Value::from),
            GgufArray::F32(v) => num(v, |x| float(x as f64)),
            GgufArray::F64(v) => num(v, float),
            GgufArray::Bool(v) => num(v, serde_json::Value::Bool),
            GgufArray::String(v) => serde_json::Value::Array(v.iter().map(|s| serde_json::Value::String(s.clone())).collect()),
            GgufArray::Array(v) => serde_json::Value::Array(v.iter().map(|a| a.to_json()).collect()),
        }
    }
}

/// The name of a value type id (`"UINT32"`, `"STRING"`, ...), `"UNKNOWN"` otherwise.
pub fn type_name(id: u32) -> &'static str {
    const NAMES: [&str; 13] = ["UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"];
    NAMES.get(id as usize).copied().unwrap_or("UNKNOWN")
}

/// Ordered metadata: keeps insertion (file) order, looks keys up in O(1).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, GgufValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Sets `key`, replacing the value in place if the key exists, appending otherwise.
    pub fn set(&mut self, key: impl Into<String>, value: GgufValue) {
        let key = key.into();
        match self.index.get(&key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
            }
        }
    }

    /// Inserts a key that must be new; returns `false` (and changes nothing) for a duplicate.
    pub fn insert_new(&mut self, key: String, value: GgufValue) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    pub fn remove(&mut self, key: &str) -> Option<GgufValue> {
        let i = self.index.remove(key)?;
        let (_, v) = self.entries.remove(i);
        for (j, (k, _)) in self.entries.iter().enumerate().skip(i) {
            self.index.insert(k.clone(), j);
        }
        Some(v)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
