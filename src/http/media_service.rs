//! `/msync/*`: the media-sync methods, under the user's media lock (which
//! is separate from the collection lock, so media and collection syncs of
//! one user never block each other).

use super::error::HandlerError;
use super::framing::SyncHeader;
use super::route::MediaMethod;
use super::service::{Body, Reply, Service};
use crate::collection::SyncError;
use crate::user::UserSlot;

impl Service {
    pub(super) fn media<'s>(
        &'s self,
        method: MediaMethod,
        _header: &SyncHeader,
        body: &mut Body<'_>,
        _slot: &'s UserSlot,
    ) -> Result<Reply<'s>, HandlerError> {
        body.discard()?;
        Err(SyncError::Internal(format!(
            "media sync ({}) is not implemented yet",
            method.name()
        ))
        .into())
    }
}
