//! Streaming decoding of the normal-sync request bodies (`start`,
//! `applyGraves`, `applyChanges`, `applyChunk`).
//!
//! A body is parsed as it arrives, straight into typed items (rows, ids,
//! tags), which are handed to the caller in batches, so no request ever holds
//! more than a batch plus the item being read. The protocol's shape is
//! checked while parsing: row arity and element types, how many rows a
//! request may carry, and through the [`Account`] under the parser, the size
//! of every item (`crate::budget`). The only JSON trees built are those of
//! the schema-11 objects and config values, whose unknown keys must be kept:
//! one at a time, each with its own size limit ([`Json`]).

use std::cell::Cell;
use std::fmt;
use std::io::{self, Read};

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::budget::Account;
use crate::error::SyncError;

/// A batch is applied once it holds this many bytes of JSON...
pub const BATCH_BYTES: u64 = 128 * 1024;
/// ...or this many items (a full chunk of small rows is one batch, merged
/// with statements prepared once for it in `chunks`).
pub const BATCH_ITEMS: usize = 256;

/// What decoding a body can fail with.
#[derive(Debug)]
pub enum DecodeError {
    /// Reading the body failed: the connection, the codec, a byte limit or
    /// the memory budget (`http` tells them apart).
    Body(io::Error),
    /// The body is not what the protocol sends.
    Shape(String),
    /// One object is too large once decoded.
    TooLarge(String),
    /// Applying a batch failed.
    Apply(SyncError),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Body(e) => write!(f, "reading the request: {e}"),
            DecodeError::Shape(m) => write!(f, "request json: {m}"),
            DecodeError::TooLarge(m) => write!(f, "request json: {m}"),
            DecodeError::Apply(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<SyncError> for DecodeError {
    fn from(e: SyncError) -> Self {
        DecodeError::Apply(e)
    }
}

/// A body of at most this many bytes (decoded) is read whole and parsed
/// from memory; a larger one is parsed as it streams in. Parsing from a
/// slice costs a fraction of parsing from a reader, which serde_json reads
/// one byte at a time (a quarter of a 5,000-note sync's instructions went
/// there). Clients send 250 objects per request, which for ordinary notes
/// is well under this. It is also at most the item limit and the free
/// allowance (`budget::Limits`): no item of such a body can be too large,
/// and the body with its decoded batch stays within twice the allowance.
pub const WHOLE_BODY_BYTES: usize = 128 * 1024;

/// Reads at most `limit + 1` bytes of `body`: all of it and `true` if it
/// ended within `limit`, else its first bytes and `false`, the rest still
/// unread. For parsing a small body from memory and a large one as it
/// streams (the bytes read go first).
pub fn read_up_to(body: &mut impl Read, limit: u64) -> io::Result<(Vec<u8>, bool)> {
    let mut head = Vec::new();
    body.take(limit + 1).read_to_end(&mut head)?;
    let ended = head.len() as u64 <= limit;
    Ok((head, ended))
}

/// Parses `body` with `seed`, then checks nothing but whitespace follows.
/// Errors of `seed` that carry a cause (a failed batch, an object too
/// large) are taken from `stash` first.
pub fn run<R: Read, S, T>(
    mut body: R,
    account: &Account<'_>,
    stash: &Stash,
    seed: S,
) -> Result<T, DecodeError>
where
    S: for<'de> DeserializeSeed<'de, Value = T>,
{
    let limits = account.limits();
    let whole = (WHOLE_BODY_BYTES as u64)
        .min(limits.item)
        .min(limits.allowance);
    let (head, ended) = read_up_to(&mut body, whole).map_err(DecodeError::Body)?;
    let result = if ended {
        account.hold_whole(head.len() as u64);
        let mut parser = serde_json::Deserializer::from_slice(&head);
        seed.deserialize(&mut parser)
            .and_then(|value| parser.end().map(|_| value))
    } else {
        // The bytes read so far go through the account again, at the
        // parser's position, like the rest.
        let reader = account.reader(io::Cursor::new(head).chain(body));
        let mut parser = serde_json::Deserializer::from_reader(reader);
        seed.deserialize(&mut parser)
            .and_then(|value| parser.end().map(|_| value))
    };
    result.map_err(|e| match stash.take() {
        Some(cause) => cause,
        None if e.is_io() => DecodeError::Body(io::Error::from(e)),
        None => DecodeError::Shape(e.to_string()),
    })
}

/// Where a visitor leaves the real cause of a failure it can only report to
/// serde as text.
#[derive(Default)]
pub struct Stash(Cell<Option<DecodeError>>);

impl Stash {
    /// Keeps `cause` and returns the error that unwinds the parser.
    pub fn fail<E: de::Error>(&self, cause: DecodeError) -> E {
        let text = cause.to_string();
        self.0.set(Some(cause));
        E::custom(text)
    }

    fn take(&self) -> Option<DecodeError> {
        self.0.take()
    }
}

/// Collects decoded items and hands them to `apply` in batches: when a
/// batch holds [`BATCH_BYTES`] of JSON or [`BATCH_ITEMS`] items, and at the
/// end. Also counts items against a per-request maximum.
pub struct Batcher<'a, 'b, B> {
    pub account: &'a Account<'b>,
    pub stash: &'a Stash,
    batch: B,
    in_batch: usize,
    total: usize,
    /// At most this many items in the whole request, named for the message.
    most: Option<(usize, &'static str)>,
    apply: &'a mut dyn FnMut(&mut B) -> Result<(), SyncError>,
}

impl<'a, 'b, B: Default> Batcher<'a, 'b, B> {
    pub fn new(
        account: &'a Account<'b>,
        stash: &'a Stash,
        apply: &'a mut dyn FnMut(&mut B) -> Result<(), SyncError>,
    ) -> Self {
        Batcher {
            account,
            stash,
            batch: B::default(),
            in_batch: 0,
            total: 0,
            most: None,
            apply,
        }
    }

    /// Refuses a request with more than `most` items (`what` names them).
    pub fn at_most(mut self, most: usize, what: &'static str) -> Self {
        self.most = Some((most, what));
        self
    }

    /// Items decoded so far.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Names the item about to be read (for the size limit's message).
    pub fn begin(&self, what: &'static str) {
        self.account.begin_item(what);
    }

    /// Before the next key of an object: the key and its value are counted
    /// afresh against the item limit, and, where the items waiting may be
    /// applied, they are (so skipped values are not counted as held).
    pub fn next_key<E: de::Error>(&mut self, may_apply: bool) -> Result<(), E> {
        if may_apply {
            self.flush()?;
        }
        self.begin("request");
        Ok(())
    }

    /// Adds one decoded item; applies the batch when it is full.
    pub fn add<E: de::Error>(&mut self, put: impl FnOnce(&mut B)) -> Result<(), E> {
        self.keep(put)?;
        if self.in_batch >= BATCH_ITEMS || self.account.held() >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Adds one decoded item that must wait for a later [`flush`](Self::flush),
    /// however full the batch is.
    pub fn keep<E: de::Error>(&mut self, put: impl FnOnce(&mut B)) -> Result<(), E> {
        self.total += 1;
        if let Some((most, what)) = self.most {
            if self.total > most {
                return Err(self.stash.fail(DecodeError::Shape(format!(
                    "more than {most} {what} in one request"
                ))));
            }
        }
        put(&mut self.batch);
        self.in_batch += 1;
        self.account.begin_item("request");
        Ok(())
    }

    /// Items waiting in the batch.
    pub fn waiting(&self) -> usize {
        self.in_batch
    }

    /// Applies what is waiting (also when nothing is: the bytes read are
    /// then no longer held).
    pub fn flush<E: de::Error>(&mut self) -> Result<(), E> {
        if self.in_batch > 0 {
            if let Err(e) = (self.apply)(&mut self.batch) {
                return Err(self.stash.fail(DecodeError::Apply(e)));
            }
            self.batch = B::default();
            self.in_batch = 0;
        }
        self.account.flushed();
        Ok(())
    }
}

/// A request body that is an object with one field of interest
/// (`{"chunk": …}`, `{"changes": …}`): that field is decoded with `seed`,
/// other keys are skipped (each counted as an item); a missing field is a
/// shape error.
pub struct Field<'a, 'b, S> {
    pub name: &'static str,
    pub seed: S,
    pub account: &'a Account<'b>,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Field<'_, '_, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Field<'_, '_, S> {
    type Value = S::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object with `{}`", self.name)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<S::Value, A::Error> {
        let name = self.name;
        let mut seed = Some(self.seed);
        let mut value = None;
        loop {
            self.account.begin_item("request");
            let Some(key) = map.next_key_seed(Key(std::slice::from_ref(&name)))? else {
                break;
            };
            match (key, seed.take()) {
                (Some(_), Some(seed)) => value = Some(map.next_value_seed(seed)?),
                (Some(_), None) => {
                    return Err(de::Error::custom(format!("duplicate field `{name}`")));
                }
                (None, kept) => {
                    seed = kept;
                    map.next_value::<IgnoredAny>()?;
                    // Skipped, not held (the field's own items were applied).
                    self.account.flushed();
                }
            }
        }
        value.ok_or_else(|| de::Error::missing_field(name))
    }
}

/// `null`, or what `S` decodes.
pub struct Nullable<S>(pub S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Nullable<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for Nullable<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("null or a value")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

/// Map keys compared with a fixed list, without keeping them: the index of
/// the key in the list, or `None` for a key that is not in it.
pub struct Key<'k>(pub &'k [&'k str]);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<usize>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

/// A JSON number as an integer; floats are truncated and integers beyond
/// `i64` saturate, as before (upstream accepts floats for several columns).
pub struct Int;

impl<'de> DeserializeSeed<'de> for Int {
    type Value = i64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_i64(self)
    }
}

impl<'de> Visitor<'de> for Int {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(v)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        Ok(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        Ok(v as i64)
    }
}

/// A JSON string.
pub struct Text;

impl<'de> DeserializeSeed<'de> for Text {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_string(self)
    }
}

impl<'de> Visitor<'de> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
}

/// A string or a number whose value is not needed (a note's `sfld`/`csum`).
pub struct Scalar;

impl<'de> DeserializeSeed<'de> for Scalar {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scalar {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
}

/// Reads element `at` of a fixed-size array with `seed`; a missing one
/// names the array, how many elements it had and how many it needs.
pub fn element<'de, A: SeqAccess<'de>, S: DeserializeSeed<'de>>(
    seq: &mut A,
    seed: S,
    row: &str,
    at: usize,
    arity: usize,
) -> Result<S::Value, A::Error> {
    seq.next_element_seed(seed)?
        .ok_or_else(|| de::Error::custom(format!("{row} row has {at} elements, expected {arity}")))
}

/// Fails if a fixed-size array has elements beyond its arity.
pub fn end_of_row<'de, A: SeqAccess<'de>>(
    seq: &mut A,
    row: &str,
    arity: usize,
) -> Result<(), A::Error> {
    if seq.next_element::<IgnoredAny>()?.is_some() {
        return Err(de::Error::custom(format!(
            "{row} row has more than {arity} elements"
        )));
    }
    Ok(())
}

/// The decoded size of one JSON tree, counted as it is built: each value
/// costs its slot (twice, for the slack of a growing array) and its text,
/// each object entry its key and a share of the map's nodes.
pub struct TreeBudget {
    left: Cell<u64>,
    limit: u64,
}

const VALUE_COST: u64 = 2 * std::mem::size_of::<Value>() as u64;
const ENTRY_COST: u64 = 96;

impl TreeBudget {
    pub fn new(limit: u64) -> TreeBudget {
        TreeBudget {
            left: Cell::new(limit),
            limit,
        }
    }

    fn spend<E: de::Error>(&self, bytes: u64, stash: &Stash, what: &str) -> Result<(), E> {
        match self.left.get().checked_sub(bytes) {
            Some(left) => {
                self.left.set(left);
                Ok(())
            }
            None => Err(stash.fail(DecodeError::TooLarge(format!(
                "one {what} is larger than the limit of {} bytes once decoded",
                self.limit
            )))),
        }
    }
}

/// Any JSON value, built as a tree under a [`TreeBudget`]. Used for the
/// schema-11 objects and config values, which are kept whole.
#[derive(Clone, Copy)]
pub struct Json<'t> {
    pub budget: &'t TreeBudget,
    pub stash: &'t Stash,
    /// What the tree is, for the message.
    pub what: &'static str,
}

impl<'de> DeserializeSeed<'de> for Json<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Json<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        self.budget.spend(VALUE_COST, self.stash, self.what)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        self.budget.spend(VALUE_COST, self.stash, self.what)?;
        Ok(Value::from(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        self.budget.spend(VALUE_COST, self.stash, self.what)?;
        Ok(Value::from(v))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        self.budget.spend(VALUE_COST, self.stash, self.what)?;
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        self.budget
            .spend(VALUE_COST + v.len() as u64, self.stash, self.what)?;
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        self.budget
            .spend(VALUE_COST + v.len() as u64, self.stash, self.what)?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        self.budget.spend(VALUE_COST, self.stash, self.what)?;
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.budget.spend(VALUE_COST, self.stash, self.what)?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.budget.spend(VALUE_COST, self.stash, self.what)?;
        let mut object = Map::new();
        while let Some(key) = map.next_key_seed(Text)? {
            self.budget
                .spend(ENTRY_COST + key.len() as u64, self.stash, self.what)?;
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::budget::{Limits, MemoryBudget, Refusal, refusal};

    pub const LIMITS: Limits = Limits {
        item: 4096,
        allowance: 1 << 20,
    };

    pub fn budget() -> MemoryBudget {
        MemoryBudget::new(1 << 20, Duration::ZERO)
    }

    /// The limit error inside a `DecodeError::Body`, if any.
    pub fn refused(e: &DecodeError) -> Option<Refusal> {
        match e {
            DecodeError::Body(io) => refusal(io),
            _ => None,
        }
    }

    fn tree(text: &str, limit: u64) -> Result<Value, DecodeError> {
        let budget = budget();
        let account = Account::new(&budget, LIMITS);
        let stash = Stash::default();
        let tree = TreeBudget::new(limit);
        run(
            text.as_bytes(),
            &account,
            &stash,
            Json {
                budget: &tree,
                stash: &stash,
                what: "thing",
            },
        )
    }

    #[test]
    fn trees_are_built_whole_within_their_budget() {
        let text = r#"{"a":[1,2.5,"x",null,true,{"b":-3}],"c":18446744073709551615}"#;
        assert_eq!(
            tree(text, 10_000).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        // A thousand tiny values cost far more as a tree than as text.
        let many = format!("[{}]", vec!["0"; 1000].join(","));
        match tree(&many, 10_000) {
            Err(DecodeError::TooLarge(m)) => {
                assert!(
                    m.contains("one thing is larger than the limit of 10000"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nesting_stops_at_the_parsers_depth_limit() {
        let deep = format!("{}{}", "[".repeat(1000), "]".repeat(1000));
        assert!(matches!(tree(&deep, 1 << 20), Err(DecodeError::Shape(_))));
    }

    #[test]
    fn an_item_larger_than_the_limit_is_refused_while_reading() {
        let big = format!("\"{}\"", "x".repeat(10_000));
        let budget = budget();
        let account = Account::new(&budget, LIMITS);
        let stash = Stash::default();
        account.begin_item("tag");
        let err = run(big.as_bytes(), &account, &stash, Text).unwrap_err();
        assert_eq!(
            refused(&err),
            Some(Refusal::ItemTooLarge {
                what: "tag",
                limit: 4096
            })
        );
    }

    #[test]
    fn ints_accept_what_clients_send() {
        let int = |text: &str| {
            let budget = budget();
            let account = Account::new(&budget, LIMITS);
            run(text.as_bytes(), &account, &Stash::default(), Int)
        };
        assert_eq!(int("-5").unwrap(), -5);
        assert_eq!(int("4.9").unwrap(), 4);
        assert_eq!(int("18446744073709551615").unwrap(), i64::MAX);
        assert!(matches!(int("\"5\""), Err(DecodeError::Shape(_))));
        assert!(matches!(int("true"), Err(DecodeError::Shape(_))));
        assert!(matches!(int("5 6"), Err(DecodeError::Shape(_))));
    }
}
