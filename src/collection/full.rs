//! Full sync: a client replaces the server's collection (`upload`) or takes
//! a copy of it (`download`). Receiving and checking an upload is
//! `storage::install`; here are what the protocol adds: the answers clients
//! show, and the collection prepared for a download.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::Path;

use rusqlite::Connection;

use crate::error::{OrSyncError, SyncError};
use crate::storage::{self, TempFile};

/// The body of a successful upload: two ASCII bytes, not JSON.
pub const UPLOAD_OK: &str = "OK";
/// Clients show any other upload answer to the user; these are upstream's texts.
pub const UPLOAD_CORRUPT: &str =
    "Your upload was corrupt. Please use Check Database, or restore from backup.";
pub const UPLOAD_TOO_LARGE: &str = "collection exceeds size limit";
pub const UPLOAD_NOT_STORED: &str = "The sync server could not store your collection (its disk may be full). Your collection on the server was not changed.";

/// Prepares a collection for a full download: bumps `usn` and sets `mod` to
/// now (as upstream does, so other devices notice), then checkpoints so the
/// main file alone is complete. The caller holds the user's lock until the
/// file has been sent.
pub fn prepare_download(col: &Connection, now_ms: i64) -> Result<(), SyncError> {
    col.execute("update col set usn = usn + 1, mod = ?", [now_ms])?;
    let busy: i64 = col.query_row("pragma wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        return Err(SyncError::internal(
            "collection is busy; checkpoint incomplete",
        ));
    }
    Ok(())
}

/// For current clients: a private copy of the (prepared) collection file in
/// `dir`, with no name (its space is freed when it is sent or the server
/// dies), so the download is sent without holding the user's lock: a client
/// that reads slowly, or not at all, cannot keep the user's other devices
/// waiting. The official server likewise reads the file under its lock and
/// sends it after. On Linux the copy is `copy_file_range`, made in the kernel
/// (or shared blocks, on file systems that can).
pub fn private_copy(path: &Path, dir: &Path) -> io::Result<(File, u64)> {
    let mut copy = TempFile::anonymous(dir, "download")?;
    let len = io::copy(&mut File::open(path)?, &mut copy)?;
    copy.seek(SeekFrom::Start(0))?;
    Ok((copy, len))
}

/// For clients before 2.1.57: a schema-11 rendition of the (prepared)
/// collection, written to a private temporary copy in `dir` (the stored
/// schema-18 file is only read). The copy is unlinked as soon as it is open,
/// so it vanishes when sent, even if the server dies mid-way; no lock is
/// needed while sending it.
pub fn legacy_copy(col: &Connection, dir: &Path) -> Result<(File, u64), SyncError> {
    let temp = TempFile::reserve(dir, "legacy");
    storage::legacy::write_schema11_copy(col, temp.path())
        .or_internal("writing the schema-11 copy")?;
    let file = File::open(temp.path())?;
    let len = file.metadata()?.len();
    drop(temp);
    Ok((file, len))
}
