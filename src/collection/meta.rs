//! `meta`: the first request of every sync. It tells the client the server
//! collection's stamps so the client can choose no-op, normal or full sync.

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

use crate::clock::now_millis;
use crate::error::SyncError;
use crate::protocol::{SYNC_VERSION_MAX, SYNC_VERSION_MIN};
use crate::storage;

#[derive(Deserialize, Debug)]
pub struct MetaRequest {
    /// The client's sync protocol version.
    pub v: u8,
    /// Client version string; informational.
    #[serde(default)]
    pub cv: String,
}

#[derive(Serialize, Debug, PartialEq, Eq)]
pub struct MetaResponse {
    #[serde(rename = "mod")]
    pub modified: i64,
    pub scm: i64,
    pub usn: i32,
    /// Server time in seconds (clients refuse to sync if it is off by 5 minutes).
    pub ts: i64,
    pub msg: String,
    pub cont: bool,
    #[serde(rename = "hostNum")]
    pub host_num: u32,
    pub empty: bool,
    pub media_usn: i32,
}

/// Facts about the server side that are not in the collection itself.
pub struct MetaContext {
    pub now_ms: i64,
    /// Size of the collection file in bytes.
    pub file_size: u64,
    /// Collections larger than this can only be fully synced, as upstream.
    pub max_payload_bytes: u64,
    pub media_usn: i32,
}

/// `meta` on the user's collection, now.
pub fn meta(
    col: &Connection,
    req: &MetaRequest,
    max_payload_bytes: u64,
    media_usn: i32,
) -> Result<MetaResponse, SyncError> {
    let ctx = MetaContext {
        now_ms: now_millis(),
        file_size: storage::file_size(col),
        max_payload_bytes,
        media_usn,
    };
    meta_at(col, req, &ctx)
}

fn meta_at(
    col: &Connection,
    req: &MetaRequest,
    ctx: &MetaContext,
) -> Result<MetaResponse, SyncError> {
    if !(SYNC_VERSION_MIN..=SYNC_VERSION_MAX).contains(&req.v) {
        return Err(SyncError::client_too_old(format!("meta version {}", req.v)));
    }
    let (modified, mut scm, usn): (i64, i64, i32) = col
        .prepare_cached("select mod, scm, usn from col")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    let empty = !col
        .prepare_cached("select exists(select 1 from cards)")?
        .query_row([], |r| r.get::<_, bool>(0))?;
    if ctx.file_size > ctx.max_payload_bytes {
        // Too big to send: a changing schema stamp forces a one-way sync.
        scm = ctx.now_ms;
    }
    let (cont, msg) = legacy_gate(col, req.v)?;
    Ok(MetaResponse {
        modified,
        scm,
        usn,
        ts: ctx.now_ms / 1000,
        msg,
        cont,
        host_num: 0,
        empty,
        media_usn: ctx.media_usn,
    })
}

/// Old clients cannot use collections made with newer scheduling: the
/// messages are the official server's, which old clients show verbatim.
fn legacy_gate(col: &Connection, version: u8) -> Result<(bool, String), SyncError> {
    if version >= 10 {
        return Ok((true, String::new()));
    }
    let sched_ver = config_value(col, "schedVer")?
        .and_then(|v| v.as_i64())
        .unwrap_or(1);
    if sched_ver >= 2 && version < 9 {
        return Ok((
            false,
            "Your client does not support the v2 scheduler".into(),
        ));
    }
    let offset = config_value(col, "creationOffset")?;
    if offset.is_some_and(|v| v.is_number()) {
        return Ok((
            false,
            "Your client does not support the new timezone handling.".into(),
        ));
    }
    Ok((true, String::new()))
}

fn config_value(col: &Connection, key: &str) -> Result<Option<serde_json::Value>, SyncError> {
    let raw: Option<Vec<u8>> = col
        .prepare_cached("select val from config where key = ?")?
        .query_row([key], |r| r.get(0))
        .optional()?;
    Ok(raw.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    fn collection(sched: &str, offset: &str, with_card: bool) -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "create table col (mod integer, scm integer, usn integer);
             insert into col values (5, 7, 3);
             create table cards (id integer);
             create table config (key text primary key, val blob);",
        )
        .unwrap();
        c.execute(
            "insert into config values ('schedVer', ?)",
            [sched.as_bytes()],
        )
        .unwrap();
        c.execute(
            "insert into config values ('creationOffset', ?)",
            [offset.as_bytes()],
        )
        .unwrap();
        if with_card {
            c.execute("insert into cards values (1)", []).unwrap();
        }
        c
    }

    fn ctx(file_size: u64) -> MetaContext {
        MetaContext {
            now_ms: 1_795_348_622_182,
            file_size,
            max_payload_bytes: 1000,
            media_usn: 4,
        }
    }

    fn req(v: u8) -> MetaRequest {
        MetaRequest {
            v,
            cv: "anki".into(),
        }
    }

    #[test]
    fn reports_the_col_row() {
        let m = meta_at(&collection("2", "null", true), &req(11), &ctx(10)).unwrap();
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"mod":5,"scm":7,"usn":3,"ts":1795348622,"msg":"","cont":true,"hostNum":0,"empty":false,"media_usn":4}"#
        );
        assert!(
            meta_at(&collection("2", "null", false), &req(11), &ctx(10))
                .unwrap()
                .empty
        );
    }

    #[test]
    fn oversized_collections_get_a_fresh_schema_stamp() {
        let m = meta_at(&collection("2", "null", true), &req(11), &ctx(1001)).unwrap();
        assert_eq!(m.scm, 1_795_348_622_182);
    }

    #[test]
    fn version_gates() {
        assert!(matches!(
            meta_at(&collection("2", "null", true), &req(7), &ctx(1)),
            Err(ref e) if e.kind() == Kind::ClientTooOld
        ));
        assert!(matches!(
            meta_at(&collection("2", "null", true), &req(12), &ctx(1)),
            Err(ref e) if e.kind() == Kind::ClientTooOld
        ));
        let m = meta_at(&collection("2", "null", true), &req(8), &ctx(1)).unwrap();
        assert!(!m.cont);
        assert!(m.msg.contains("v2 scheduler"));
        let m = meta_at(&collection("2", "-60", true), &req(9), &ctx(1)).unwrap();
        assert!(!m.cont);
        assert!(m.msg.contains("timezone"));
        let m = meta_at(&collection("2", "null", true), &req(9), &ctx(1)).unwrap();
        assert!(m.cont);
        let m = meta_at(&collection("1", "-60", true), &req(10), &ctx(1)).unwrap();
        assert!(m.cont);
    }
}
