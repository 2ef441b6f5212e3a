//! `/msync/*`: the media-sync methods, under the user's media lock (which
//! is separate from the collection lock, so media and collection syncs of
//! one user never block each other). This file only decodes requests and
//! encodes answers; the store itself is `crate::media`.
//!
//! Every answer but `downloadFiles` is the envelope `{"data": …, "err": ""}`;
//! `downloadFiles` answers with the bare zip. Failures become statuses in
//! `http::error`, as for every other route.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::body::{Body, parse_json};
use super::error::HandlerError;
use super::framing::{FramingError, SyncHeader};
use super::limit::LimitReader;
use super::reply::Reply;
use super::route::MediaMethod;
use super::service::Service;
use crate::error::{OrSyncError, SyncError};
use crate::media::SpoolError;
use crate::media::{MAX_ENTRIES, MAX_UPLOAD_ZIP_BYTES};
use crate::user::UserSlot;

/// Media JSON requests are a few bytes (at most 25 file names); a bigger
/// one is refused before it can grow a large string in memory.
const MEDIA_JSON_LIMIT: u64 = 64 * 1024;

#[derive(Deserialize)]
struct BeginRequest {
    /// Client version; required and non-empty, as upstream.
    v: String,
}

#[derive(Deserialize)]
struct ChangesRequest {
    #[serde(rename = "lastUsn")]
    last_usn: i64,
}

#[derive(Deserialize)]
struct DownloadRequest {
    files: Vec<String>,
}

#[derive(Deserialize)]
struct SanityRequest {
    /// Files the client believes exist; negative is a 400, as upstream.
    local: u32,
}

impl Service {
    pub(super) fn media<'s>(
        &'s self,
        method: MediaMethod,
        header: &SyncHeader,
        body: &mut Body<'_>,
        slot: &'s UserSlot,
    ) -> Result<Reply<'s>, HandlerError> {
        let media = &slot.media;
        match method {
            MediaMethod::Begin => {
                let req: BeginRequest = media_json(body)?;
                if req.v.is_empty() {
                    return Err(SyncError::bad_request("begin without a client version").into());
                }
                let usn = media.meta()?.last_usn;
                envelope(json!({ "usn": usn, "sk": header.hkey }))
            }
            MediaMethod::MediaChanges => {
                let req: ChangesRequest = media_json(body)?;
                let rows: Vec<Value> = media
                    .changes(req.last_usn)?
                    .into_iter()
                    .map(|(name, usn, sha1)| json!([name, usn, sha1]))
                    .collect();
                envelope(Value::Array(rows))
            }
            MediaMethod::UploadChanges => {
                let limit = MAX_UPLOAD_ZIP_BYTES.min(self.config.max_payload_bytes());
                let _permit = slot.upload_permit()?;
                let zip = {
                    let mut reader = LimitReader::new(body.decoded()?, limit, "media upload zip");
                    media.spool(&mut reader).map_err(|e| match e {
                        SpoolError::Body(e) => HandlerError::from(FramingError::from_body_error(e)),
                        SpoolError::Disk(e) => SyncError::internal("spooling a media upload")
                            .with_source(e)
                            .into(),
                    })?
                };
                let upload = media.prepare_upload(zip)?;
                let (processed, usn) = media.apply(upload)?;
                envelope(json!([processed, usn]))
            }
            MediaMethod::DownloadFiles => {
                let req: DownloadRequest = media_json(body)?;
                if req.files.len() > MAX_ENTRIES {
                    return Err(SyncError::bad_request(format!(
                        "downloadFiles asked for {} files",
                        req.files.len()
                    ))
                    .into());
                }
                let zip = media.download(&req.files)?;
                // The zip reads files opened under the media lock: an upload
                // replaces or deletes a file by name, never in place, so no
                // lock needs to be held while it is sent.
                Ok(Reply::Stream {
                    len: zip.size(),
                    body: Box::new(zip),
                    _hold: Box::new(()),
                })
            }
            MediaMethod::MediaSanity => {
                let req: SanityRequest = media_json(body)?;
                let files = media.meta()?.total_nonempty_files;
                let answer = if i64::from(req.local) == files {
                    "OK"
                } else {
                    "mediaSanity"
                };
                envelope(Value::from(answer))
            }
        }
    }
}

/// Parses a small media JSON body under its own byte budget.
fn media_json<T: DeserializeOwned>(body: &mut Body<'_>) -> Result<T, HandlerError> {
    let reader = LimitReader::new(body.decoded()?, MEDIA_JSON_LIMIT, "media request json");
    parse_json(reader, "media request json")
}

/// The media envelope around a successful answer.
fn envelope<'s>(data: Value) -> Result<Reply<'s>, HandlerError> {
    let body = json!({ "data": data, "err": "" });
    let bytes = serde_json::to_vec(&body).or_internal("encoding the answer")?;
    Ok(Reply::Bytes(bytes))
}
