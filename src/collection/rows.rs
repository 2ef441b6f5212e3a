//! The rows a chunk carries (notes, cards, review-log entries), typed, in
//! their wire form: positional JSON arrays (collection-sync.md §6.5). They
//! are decoded straight from the request stream with their arity and element
//! types checked. (The server's own rows are written by SQLite: `outgoing`.)

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, SeqAccess, Visitor};

use super::decode::{Int, Scalar, Text, element, end_of_row};

/// A note: the columns that travel (`sfld`, `csum`, `flags` and `data` are
/// sent as `""`, `""`, `0`, `""` and ignored on input).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NoteRow {
    pub id: i64,
    pub guid: String,
    pub mid: i64,
    pub mtime: i64,
    pub usn: i64,
    /// Space-separated.
    pub tags: String,
    /// Fields joined by U+001F. Decoded without ASCII control characters
    /// other than newline, tab and the separator, as notes are stored.
    pub fields: String,
}

/// A card; every column but `data` is an integer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CardRow {
    pub id: i64,
    pub nid: i64,
    pub did: i64,
    pub ord: i64,
    pub mtime: i64,
    pub usn: i64,
    pub ctype: i64,
    pub queue: i64,
    pub due: i64,
    pub ivl: i64,
    pub factor: i64,
    pub reps: i64,
    pub lapses: i64,
    pub left: i64,
    pub odue: i64,
    pub odid: i64,
    pub flags: i64,
    pub data: String,
}

/// A review-log entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevlogRow {
    pub id: i64,
    pub cid: i64,
    pub usn: i64,
    pub ease: i64,
    pub ivl: i64,
    pub last_ivl: i64,
    pub factor: i64,
    pub time: i64,
    /// 0..=5; a missing or invalid value is 0, as upstream reads it.
    pub kind: i64,
}

const NOTE: &str = "note";
const CARD: &str = "card";
const REVLOG: &str = "revlog";

impl CardRow {
    /// The 17 integer columns in wire order.
    pub fn ints(&self) -> [i64; 17] {
        [
            self.id,
            self.nid,
            self.did,
            self.ord,
            self.mtime,
            self.usn,
            self.ctype,
            self.queue,
            self.due,
            self.ivl,
            self.factor,
            self.reps,
            self.lapses,
            self.left,
            self.odue,
            self.odid,
            self.flags,
        ]
    }

    fn from_ints(v: [i64; 17], data: String) -> CardRow {
        let [
            id,
            nid,
            did,
            ord,
            mtime,
            usn,
            ctype,
            queue,
            due,
            ivl,
            factor,
            reps,
            lapses,
            left,
            odue,
            odid,
            flags,
        ] = v;
        CardRow {
            id,
            nid,
            did,
            ord,
            mtime,
            usn,
            ctype,
            queue,
            due,
            ivl,
            factor,
            reps,
            lapses,
            left,
            odue,
            odid,
            flags,
            data,
        }
    }
}

/// Decodes one row of a kind from a JSON array.
pub struct RowSeed<T>(std::marker::PhantomData<T>);

impl<T> Default for RowSeed<T> {
    fn default() -> Self {
        RowSeed(std::marker::PhantomData)
    }
}

macro_rules! row_seed {
    ($row:ty, $expecting:literal, $visit:ident) => {
        impl<'de> DeserializeSeed<'de> for RowSeed<$row> {
            type Value = $row;

            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<$row, D::Error> {
                d.deserialize_seq(self)
            }
        }

        impl<'de> Visitor<'de> for RowSeed<$row> {
            type Value = $row;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str($expecting)
            }

            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<$row, A::Error> {
                $visit(seq)
            }
        }
    };
}

row_seed!(NoteRow, "a note row (an array of 11 elements)", note_row);
row_seed!(CardRow, "a card row (an array of 18 elements)", card_row);
row_seed!(
    RevlogRow,
    "a revlog row (an array of 9 elements)",
    revlog_row
);

fn note_row<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<NoteRow, A::Error> {
    let s = &mut seq;
    let row = NoteRow {
        id: element(s, Int, NOTE, 0, 11)?,
        guid: element(s, Text, NOTE, 1, 11)?,
        mid: element(s, Int, NOTE, 2, 11)?,
        mtime: element(s, Int, NOTE, 3, 11)?,
        usn: element(s, Int, NOTE, 4, 11)?,
        tags: element(s, Text, NOTE, 5, 11)?,
        fields: element(s, Fields, NOTE, 6, 11)?,
    };
    element(s, Scalar, NOTE, 7, 11)?;
    element(s, Scalar, NOTE, 8, 11)?;
    element(s, Int, NOTE, 9, 11)?;
    element(s, Text, NOTE, 10, 11)?;
    end_of_row(s, NOTE, 11)?;
    Ok(row)
}

fn card_row<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<CardRow, A::Error> {
    let mut ints = [0i64; 17];
    for (at, value) in ints.iter_mut().enumerate() {
        *value = element(&mut seq, Int, CARD, at, 18)?;
    }
    let data = element(&mut seq, Text, CARD, 17, 18)?;
    end_of_row(&mut seq, CARD, 18)?;
    Ok(CardRow::from_ints(ints, data))
}

fn revlog_row<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<RevlogRow, A::Error> {
    let mut ints = [0i64; 8];
    for (at, value) in ints.iter_mut().enumerate() {
        *value = element(&mut seq, Int, REVLOG, at, 9)?;
    }
    // Upstream gives `type` a default: it may be missing or of any kind.
    let kind = seq.next_element_seed(ReviewKind)?.unwrap_or(0);
    end_of_row(&mut seq, REVLOG, 9)?;
    let [id, cid, usn, ease, ivl, last_ivl, factor, time] = ints;
    Ok(RevlogRow {
        id,
        cid,
        usn,
        ease,
        ivl,
        last_ivl,
        factor,
        time,
        kind,
    })
}

/// A note's fields, without the control characters notes never store.
struct Fields;

fn keep_in_fields(c: char) -> bool {
    !c.is_ascii_control() || matches!(c, '\n' | '\t' | '\x1f')
}

/// `keep_in_fields` for one byte of UTF-8: an ASCII control character is
/// one byte that never occurs inside a longer character, so the check needs
/// no decoding.
fn keep_byte_in_fields(b: u8) -> bool {
    !b.is_ascii_control() || matches!(b, b'\n' | b'\t' | b'\x1f')
}

impl<'de> DeserializeSeed<'de> for Fields {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Fields {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        if v.bytes().all(keep_byte_in_fields) {
            Ok(v.to_owned())
        } else {
            Ok(v.chars().filter(|&c| keep_in_fields(c)).collect())
        }
    }
}

/// A revlog entry's `type`: 0..=5, anything else (any JSON value) is 0.
struct ReviewKind;

impl<'de> DeserializeSeed<'de> for ReviewKind {
    type Value = i64;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<i64, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ReviewKind {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a review kind")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        Ok(if (0..=5).contains(&v) { v } else { 0 })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        Ok(if v <= 5 { v as i64 } else { 0 })
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<i64, E> {
        Ok(0)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<i64, E> {
        Ok(0)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<i64, E> {
        Ok(0)
    }

    fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<i64, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(0)
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<i64, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(text: &str) -> Result<NoteRow, serde_json::Error> {
        RowSeed::<NoteRow>::default().deserialize(&mut serde_json::Deserializer::from_str(text))
    }

    fn card(text: &str) -> Result<CardRow, serde_json::Error> {
        RowSeed::<CardRow>::default().deserialize(&mut serde_json::Deserializer::from_str(text))
    }

    fn revlog(text: &str) -> Result<RevlogRow, serde_json::Error> {
        RowSeed::<RevlogRow>::default().deserialize(&mut serde_json::Deserializer::from_str(text))
    }

    #[test]
    fn the_byte_check_keeps_what_the_character_check_keeps() {
        let chars = (0..0x3000)
            .chain(0x1_F600..0x1_F700)
            .filter_map(char::from_u32);
        for c in chars {
            let mut utf8 = [0; 4];
            let bytes = c.encode_utf8(&mut utf8).bytes();
            assert_eq!(
                bytes.clone().all(keep_byte_in_fields),
                keep_in_fields(c),
                "{c:?}"
            );
        }
    }

    #[test]
    fn a_note_row_is_decoded_with_its_fields_cleaned() {
        let row = note(r#"[1,"g",7,100,-1," a ","x\u0001y\u001fz\n\t","",123,0,""]"#).unwrap();
        assert_eq!(
            row,
            NoteRow {
                id: 1,
                guid: "g".into(),
                mid: 7,
                mtime: 100,
                usn: -1,
                tags: " a ".into(),
                fields: "xy\x1fz\n\t".into(),
            }
        );
    }

    #[test]
    fn rows_of_the_wrong_arity_are_refused() {
        let e = note(r#"[1,"g",7,100,-1,"","f","","",0]"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("note row has 10 elements, expected 11"),
            "{e}"
        );
        let e = note(r#"[1,"g",7,100,-1,"","f","","",0,"",0]"#).unwrap_err();
        assert!(e.to_string().contains("more than 11 elements"), "{e}");
        let long = format!("[{}]", vec!["0"; 10_000].join(","));
        assert!(note(&long).is_err());
        let e = card("[1,2,3]").unwrap_err();
        assert!(
            e.to_string()
                .contains("card row has 3 elements, expected 18"),
            "{e}"
        );
        assert!(revlog("[1,2,3,4,5,6,7]").is_err());
    }

    #[test]
    fn elements_of_the_wrong_type_are_refused() {
        // A string where an integer belongs, a number where text belongs,
        // an object for the fields, a row that is not an array.
        for bad in [
            r#"["1","g",7,100,-1,"","f","","",0,""]"#,
            r#"[1,2,7,100,-1,"","f","","",0,""]"#,
            r#"[1,"g",7,100,-1,"",{"a":1},"","",0,""]"#,
            r#"[1,"g",7,100,-1,"","f",[],"",0,""]"#,
            r#"{"id":1}"#,
        ] {
            assert!(note(bad).is_err(), "{bad}");
        }
        assert!(card(r#"[1,1,1,0,1,1,0,0,0,0,2500,0,0,0,0,0,0,{}]"#).is_err());
    }

    #[test]
    fn cards_take_floats_and_revlog_kinds_default_to_zero() {
        let c = card(r#"[1,2,3,0,5.9,6,2,2,-4.2,7,2500,1,0,0,0,0,0,"{}"]"#).unwrap();
        assert_eq!((c.mtime, c.due, c.data.as_str()), (5, -4, "{}"));
        for (text, kind) in [
            ("[1,2,3,4,5,6,7,8,3]", 3),
            ("[1,2,3,4,5,6,7,8,9]", 0),
            ("[1,2,3,4,5,6,7,8]", 0),
            (r#"[1,2,3,4,5,6,7,8,"x"]"#, 0),
            (r#"[1,2,3,4,5,6,7,8,[1]]"#, 0),
        ] {
            assert_eq!(revlog(text).unwrap().kind, kind, "{text}");
        }
    }
}
