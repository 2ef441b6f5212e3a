//! `/sync/*` after login: each method decodes its request, calls the
//! per-user layer (`crate::user`) and encodes the answer.

use log::{error, warn};

use super::body::Body;
use super::error::HandlerError;
use super::framing::{FramingError, SyncHeader};
use super::reply::{Reply, json_null, json_reply};
use super::route::SyncMethod;
use super::service::Service;
use crate::budget::{self, Account};
use crate::clock::now_millis;
use crate::collection::changes;
use crate::collection::chunks;
use crate::collection::decode::DecodeError;
use crate::collection::full;
use crate::collection::graves;
use crate::collection::meta::{self, MetaRequest};
use crate::collection::outgoing;
use crate::collection::sanity::{self, SanityRequest};
use crate::collection::unbury;
use crate::error::SyncError;
use crate::protocol::SYNC_VERSION_ZSTD;
use crate::storage::install::{self, ReceiveError};
use crate::user::UserSlot;

impl Service {
    /// `/sync/*` after login: decode, call the per-user layer, encode.
    pub(super) fn collection<'s>(
        &'s self,
        method: SyncMethod,
        header: &SyncHeader,
        body: &mut Body<'_>,
        slot: &'s UserSlot,
    ) -> Result<Reply<'s>, HandlerError> {
        let session = header.session.as_str();
        if method.continues_a_sync() {
            // Before the body is read or decoded: a step without its sync
            // costs nothing but this answer.
            slot.require_sync(session)?;
        }
        match method {
            SyncMethod::Meta => {
                let req: MetaRequest = body.json()?;
                let media_usn = slot.media.usn()?;
                let limit = self.config.max_payload_bytes();
                json_reply(&slot.with_col(|col| meta::meta(col, &req, limit, media_usn))?)
            }
            SyncMethod::Upload => self.upload(body, slot),
            SyncMethod::Download => {
                body.discard()?;
                let legacy = header.version < SYNC_VERSION_ZSTD;
                let download = slot.download(legacy, now_millis())?;
                Ok(Reply::Stream {
                    body: Box::new(download.file),
                    len: download.len,
                    _hold: Box::new(download.hold),
                })
            }
            SyncMethod::Abort => {
                body.discard()?;
                slot.abort_sync();
                Ok(json_null())
            }
            SyncMethod::Start => {
                let account = self.account();
                let mut ours = None;
                let received = graves::receive_start(
                    body.decoded()?,
                    &account,
                    &mut |start| {
                        let answer =
                            slot.start_sync(session, start.min_usn, start.lnewer, 0, |col, st| {
                                unbury::unbury_if_day_rolled_over(col, now_millis() / 1000)?;
                                // Ours first: the client's legacy graves must not echo back.
                                graves::since(col, st.client_usn)
                            })?;
                        ours = Some(answer);
                        Ok(())
                    },
                    &mut |batch| {
                        slot.with_sync_state(session, batch.len(), |col, st| {
                            graves::apply(col, batch, st.server_usn)
                        })
                    },
                );
                decoded(received, slot, session)?;
                json_reply(&ours.unwrap_or_default())
            }
            SyncMethod::ApplyGraves => {
                let account = self.account();
                let received = graves::receive(body.decoded()?, &account, &mut |batch| {
                    slot.with_sync_state(session, batch.len(), |col, st| {
                        graves::apply(col, batch, st.server_usn)
                    })
                });
                decoded(received, slot, session)?;
                Ok(json_null())
            }
            SyncMethod::ApplyChanges => {
                // Our answer first, so the client never gets its own changes back.
                let answer =
                    slot.with_sync_state(session, 0, |col, st| changes::server_changes(col, st))?;
                let now = now_millis() / 1000;
                let account = self.account();
                let received = changes::receive(body.decoded()?, &account, &mut |batch| {
                    let objects = batch.iter().filter(|c| c.is_object()).count();
                    slot.with_sync_state(session, objects, |col, st| {
                        changes::apply(col, st, batch, now)
                    })
                });
                decoded(received, slot, session)?;
                json_reply(&answer)
            }
            SyncMethod::Chunk => {
                body.discard()?;
                let chunk = slot.with_sync_state(session, 0, |col, st| outgoing::next(col, st))?;
                Ok(Reply::Bytes(chunk.into_json()))
            }
            SyncMethod::ApplyChunk => {
                let account = self.account();
                let received = chunks::receive(body.decoded()?, &account, &mut |batch| {
                    slot.with_sync_state(session, batch.len(), |col, st| {
                        chunks::apply(col, st, batch)
                    })
                });
                decoded(received, slot, session)?;
                Ok(json_null())
            }
            SyncMethod::SanityCheck2 => {
                let req: SanityRequest = body.json()?;
                let answer =
                    slot.with_sync_state(session, 0, |col, _| sanity::check(col, req.client))?;
                json_reply(&answer)
            }
            SyncMethod::Finish => {
                body.discard()?;
                json_reply(&slot.finish_sync(session, now_millis())?)
            }
        }
    }

    /// `upload`: the body goes to a checked temporary file without the
    /// user's lock; the per-user layer swaps it in. The failures a user can
    /// act on are answered 200 with upstream's texts, which clients show.
    fn upload<'s>(
        &self,
        body: &mut Body<'_>,
        slot: &'s UserSlot,
    ) -> Result<Reply<'s>, HandlerError> {
        let name = slot.name.as_str();
        slot.abort_sync();
        let _permit = slot.upload_permit()?;
        let temp = match install::receive(slot.dir(), &mut body.decoded()?) {
            Ok(temp) => temp,
            Err(ReceiveError::Body(e)) => {
                return match FramingError::from_body_error(e) {
                    FramingError::TooLarge(limit) => {
                        warn!("upload from {name} refused: {limit}");
                        Ok(Reply::Bytes(full::UPLOAD_TOO_LARGE.into()))
                    }
                    other => Err(other.into()),
                };
            }
            Err(ReceiveError::Disk(e)) => {
                error!("upload from {name} could not be stored: {e}");
                return Ok(Reply::Bytes(full::UPLOAD_NOT_STORED.into()));
            }
        };
        if let Err(reason) = install::validate(&temp) {
            warn!("upload from {name} rejected: {reason}");
            return Ok(Reply::Bytes(full::UPLOAD_CORRUPT.into()));
        }
        slot.replace_collection(temp)?;
        Ok(Reply::Bytes(full::UPLOAD_OK.into()))
    }

    /// A request's account with the memory budget for decoded bodies.
    fn account(&self) -> Account<'_> {
        Account::new(&self.budget, budget::LIMITS)
    }
}

/// The outcome of decoding a normal-sync body. A body that broke off or was
/// malformed ends the sync it belonged to, as a failed step does (the
/// batches applied before it are rolled back with it).
fn decoded<T>(
    result: Result<T, DecodeError>,
    slot: &UserSlot,
    session: &str,
) -> Result<T, HandlerError> {
    result.map_err(|e| {
        if !matches!(e, DecodeError::Apply(_)) {
            slot.abort_owned(session);
        }
        match e {
            DecodeError::Body(e) => FramingError::from_body_error(e).into(),
            DecodeError::Shape(m) => SyncError::bad_request(format!("request json: {m}")).into(),
            DecodeError::TooLarge(m) => FramingError::ItemTooLarge(m).into(),
            DecodeError::Apply(e) => e.into(),
        }
    })
}
