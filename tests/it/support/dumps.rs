//! Comparing two devices' dumps (from the client drivers' `dump`): the first
//! differing path, ignoring only what legitimately differs between devices.

use serde_json::Value;

/// The first place where two JSON values differ, as a path.
pub fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let (l, r) = (
                    x.get(key).unwrap_or(&Value::Null),
                    y.get(key).unwrap_or(&Value::Null),
                );
                if let Some(d) = first_difference(&format!("{path}.{key}"), l, r) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (l, r))| first_difference(&format!("{path}[{i}]"), l, r)),
        _ if a == b || legitimately_local(path) => None,
        _ => Some(format!("{path}:\n  A: {a:.300}\n  B: {b:.300}")),
    }
}

/// Values that differ between devices by design: a client that receives the
/// config stamps each config row with its own time and usn (the values
/// themselves are compared under `config`), and each device's graves are its
/// own deletion log, stamped with the usn of the sync that recorded them. A
/// tag a device registers itself (from a note it received) carries that
/// device's usn. All three show the same differences against the official
/// server (`ANKI_SYNC_TEST_SERVER=official`).
pub fn legitimately_local(path: &str) -> bool {
    (path.starts_with("dump.tables.config[")
        && (path.ends_with(".mtime_secs") || path.ends_with(".usn")))
        || (path.starts_with("dump.tables.graves[") && path.ends_with(".usn"))
        || (path.starts_with("dump.tables.tags[") && path.ends_with(".usn"))
}

/// Two devices hold the same content.
pub fn assert_same(a: &Value, b: &Value) {
    if let Some(diff) = first_difference("dump", a, b) {
        panic!("devices differ at {diff}");
    }
}
