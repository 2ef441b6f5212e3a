//! Lenient readers for schema-11 JSON values, mirroring the reference
//! library's deserialisation rules (storage.md §7.1), and the writers for the
//! `other` catch-all and for `f32` numbers.
//!
//! Each reader takes the value and the key it came from (for the error
//! message) and returns `Err` for a "wrong type"; callers turn that into a
//! default where a rule is lenient.

use serde_json::{Map, Value};

use super::ConvertError;

pub(super) type Obj = Map<String, Value>;
pub(super) type Res<T> = Result<T, ConvertError>;

fn wrong(key: &str, expected: &str, v: &Value) -> ConvertError {
    ConvertError::Json(format!("`{key}`: expected {expected}, got {v}"))
}

/// The object itself, or an error naming `what`.
pub(super) fn object<'a>(v: &'a Value, what: &str) -> Res<&'a Obj> {
    v.as_object()
        .ok_or_else(|| ConvertError::Json(format!("{what}: expected an object, got {v}")))
}

/// A key that must be present (its type is checked by the caller).
pub(super) fn req<'a>(o: &'a Obj, key: &str) -> Res<&'a Value> {
    o.get(key)
        .ok_or_else(|| ConvertError::Json(format!("missing key `{key}`")))
}

/// A plain JSON integer converted to `T`; floats, strings and out-of-range
/// values (300 for a `u8`, -1 for a `u32`) are wrong types.
pub(super) fn int<T: TryFrom<i64>>(v: &Value, key: &str) -> Res<T> {
    v.as_i64()
        .and_then(|i| T::try_from(i).ok())
        .ok_or_else(|| wrong(key, "an integer in range", v))
}

/// An integer, or a string holding one (`"123"`, `"-3"`); no floats.
pub(super) fn int_or_string(v: &Value, key: &str) -> Res<i64> {
    match v {
        Value::String(s) => s.parse().map_err(|_| wrong(key, "an integer string", v)),
        _ => int(v, key),
    }
}

/// `true`/`false`, the numbers 1/0 (also 1.0/0.0), or the strings
/// `"1"`/`"0"`/`"true"`/`"false"` (case-insensitive); anything else fails.
pub(super) fn bool_ish(v: &Value, key: &str) -> Res<bool> {
    let from_number = |n: f64| {
        if n == 1.0 {
            Some(true)
        } else if n == 0.0 {
            Some(false)
        } else {
            None
        }
    };
    let parsed = match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n.as_f64().and_then(from_number),
        Value::String(s) => match s.to_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            other => other
                .parse::<i64>()
                .ok()
                .map(|i| i as f64)
                .or_else(|| other.parse::<f64>().ok())
                .and_then(from_number),
        },
        _ => None,
    };
    parsed.ok_or_else(|| wrong(key, "a boolean, 0/1 or \"true\"/\"false\"", v))
}

/// Only JSON `true`/`false`.
pub(super) fn strict_bool(v: &Value, key: &str) -> Res<bool> {
    v.as_bool().ok_or_else(|| wrong(key, "a boolean", v))
}

pub(super) fn string(v: &Value, key: &str) -> Res<String> {
    v.as_str()
        .map(str::to_owned)
        .ok_or_else(|| wrong(key, "a string", v))
}

/// Any JSON number, narrowed to `f32` as the reference library does.
pub(super) fn float(v: &Value, key: &str) -> Res<f32> {
    v.as_f64()
        .map(|f| f as f32)
        .ok_or_else(|| wrong(key, "a number", v))
}

pub(super) fn float_vec(v: &Value, key: &str) -> Res<Vec<f32>> {
    v.as_array()
        .ok_or_else(|| wrong(key, "an array of numbers", v))?
        .iter()
        .map(|x| float(x, key))
        .collect()
}

pub(super) fn array<'a>(v: &'a Value, key: &str) -> Res<&'a Vec<Value>> {
    v.as_array().ok_or_else(|| wrong(key, "an array", v))
}

/// An optional key (absent ⇒ `default`); present values must parse.
pub(super) fn opt<T>(
    o: &Obj,
    key: &str,
    default: T,
    parse: impl FnOnce(&Value, &str) -> Res<T>,
) -> Res<T> {
    match o.get(key) {
        None => Ok(default),
        Some(v) => parse(v, key),
    }
}

/// A nullable optional key: absent or `null` ⇒ `None`; other values must
/// parse.
pub(super) fn opt_nullable<T>(
    o: &Obj,
    key: &str,
    parse: impl FnOnce(&Value, &str) -> Res<T>,
) -> Res<Option<T>> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse(v, key).map(Some),
    }
}

/// A nullable key whose wrong types also become `None` (absent ⇒ `None`).
pub(super) fn lenient_nullable<T>(
    o: &Obj,
    key: &str,
    parse: impl FnOnce(&Value, &str) -> Res<T>,
) -> Option<T> {
    opt_nullable(o, key, parse).unwrap_or(None)
}

/// A key whose absence or wrong type gives `default`.
pub(super) fn lenient<T>(
    o: &Obj,
    key: &str,
    default: T,
    parse: impl FnOnce(&Value, &str) -> Res<T>,
) -> T {
    match o.get(key) {
        None => default,
        Some(v) => parse(v, key).unwrap_or(default),
    }
}

/// A key that must be present but whose wrong type gives `default`.
pub(super) fn req_lenient<T>(
    o: &Obj,
    key: &str,
    default: T,
    parse: impl FnOnce(&Value, &str) -> Res<T>,
) -> Res<T> {
    let v = req(o, key)?;
    Ok(parse(v, key).unwrap_or(default))
}

/// The keys of `o` not listed in `known`, as the object that goes into an
/// `other` field.
pub(super) fn unknown_keys(o: &Obj, known: &[&str]) -> Obj {
    o.iter()
        .filter(|(k, _)| !known.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The bytes stored in an `other` field: empty for no keys, else the JSON
/// object (keys sorted; upstream's order is arbitrary and irrelevant).
pub(super) fn other_bytes(other: &Obj) -> Vec<u8> {
    if other.is_empty() {
        Vec::new()
    } else {
        // Serialising a map of JSON values cannot fail.
        serde_json::to_vec(other).unwrap_or_default()
    }
}

/// Parses an `other` field; anything but a JSON object counts as empty.
pub(super) fn parse_other(bytes: &[u8]) -> Obj {
    if bytes.is_empty() {
        return Obj::new();
    }
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(map)) => map,
        _ => Obj::new(),
    }
}

/// Starts an output object with the non-reserved entries of `other`; the
/// caller then inserts the known keys, which win over any leftover clash.
pub(super) fn start_with_other(other: Obj, reserved: &[&str]) -> Obj {
    other
        .into_iter()
        .filter(|(k, _)| !reserved.contains(&k.as_str()))
        .collect()
}

/// An `f32` as JSON with its shortest round-trip decimal form (`1.3`, not
/// `1.2999999523162842`), as upstream's serializer prints it. Non-finite
/// values become `null`, as serde_json writes them.
pub(super) fn f32_value(f: f32) -> Value {
    if !f.is_finite() {
        return Value::Null;
    }
    // Rust prints the shortest string that reads back as the same f32.
    format!("{f}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

pub(super) fn f32_array(values: &[f32]) -> Value {
    Value::Array(values.iter().copied().map(f32_value).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bool_ish_accepts_exactly_the_documented_forms() {
        for (v, want) in [
            (json!(true), true),
            (json!(false), false),
            (json!(1), true),
            (json!(0), false),
            (json!(1.0), true),
            (json!(0.0), false),
            (json!("1"), true),
            (json!("0"), false),
            (json!("TRUE"), true),
            (json!("False"), false),
        ] {
            assert_eq!(bool_ish(&v, "k").ok(), Some(want), "{v}");
        }
        for v in [json!(null), json!(2), json!("yes"), json!([]), json!(0.5)] {
            assert!(bool_ish(&v, "k").is_err(), "{v}");
        }
    }

    #[test]
    fn int_or_string_rejects_floats_and_padding() {
        assert_eq!(int_or_string(&json!(5), "k").ok(), Some(5));
        assert_eq!(int_or_string(&json!("123"), "k").ok(), Some(123));
        assert_eq!(int_or_string(&json!("-3"), "k").ok(), Some(-3));
        assert!(int_or_string(&json!(1.5), "k").is_err());
        assert!(int_or_string(&json!(" 1"), "k").is_err());
        assert!(int_or_string(&json!(null), "k").is_err());
    }

    #[test]
    fn int_checks_the_target_width() {
        assert!(int::<u8>(&json!(300), "k").is_err());
        assert!(int::<u32>(&json!(-1), "k").is_err());
        assert!(int::<u16>(&json!(20.0), "k").is_err());
        assert_eq!(int::<u16>(&json!(20), "k").ok(), Some(20));
    }

    #[test]
    fn floats_print_like_f32() {
        assert_eq!(f32_value(1.3).to_string(), "1.3");
        assert_eq!(f32_value(1.0).to_string(), "1.0");
        assert_eq!(f32_value(0.9).to_string(), "0.9");
        assert_eq!(f32_value(f32::NAN), Value::Null);
    }

    #[test]
    fn other_round_trips_and_ignores_garbage() {
        let o = unknown_keys(
            json!({"a": 1, "known": 2, "b": [true]})
                .as_object()
                .unwrap(),
            &["known"],
        );
        let bytes = other_bytes(&o);
        assert_eq!(bytes, br#"{"a":1,"b":[true]}"#);
        assert_eq!(parse_other(&bytes), o);
        assert!(parse_other(b"not json").is_empty());
        assert!(parse_other(b"[1]").is_empty());
        assert!(other_bytes(&Obj::new()).is_empty());
    }
}
