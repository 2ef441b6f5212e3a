//! Media sync storage: each user's flat `media/` folder and `media.db`
//! (schema 4, the official server's layout and file names, so either server
//! can be pointed at the same data). The HTTP side (`http::media_service`)
//! parses requests and builds envelopes; everything that touches the media
//! database or the folder lives here.
//!
//! - `names`: which file names an upload may carry.
//! - `zip`: a small reader for upload zips kept on disk and a writer for
//!   download zips, both streaming (Stored and Deflate).
//! - `db`: the media database: schema, USN and counter bookkeeping.
//! - `store`: one user's media store behind its own lock.
//! - `upload`: applying uploads all-or-nothing, crash-safe.
//! - `download`: choosing and packing downloads.

pub mod db;
mod download;
pub mod names;
pub mod store;
mod upload;
pub mod zip;

pub use store::MediaSlot;
pub use upload::{SpoolError, Upload};

/// Most entries in one upload `_meta` or one `downloadFiles` request.
pub const MAX_ENTRIES: usize = 25;
/// Largest single media file, as the official client and server.
pub const MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// Upload `_meta` is read up to this many bytes (longer → 400).
pub const MAX_META_BYTES: u64 = 50 * 1024;
/// `downloadFiles` stops adding files once their total exceeds this.
pub const DOWNLOAD_TARGET_BYTES: u64 = 2_621_440;
/// Most uncompressed content bytes one upload may carry. Clients stop
/// filling a zip once it exceeds 2.5 MiB, so a legal zip holds at most that
/// plus one file of up to 100 MiB; anything beyond is a zip bomb.
pub const MAX_UPLOAD_CONTENT_BYTES: u64 = DOWNLOAD_TARGET_BYTES + MAX_FILE_BYTES + 4 * 1024 * 1024;
/// Largest upload zip accepted as sent (after zstd): the content bound plus
/// room for headers, the central directory and `_meta`.
pub const MAX_UPLOAD_ZIP_BYTES: u64 = MAX_UPLOAD_CONTENT_BYTES + 1024 * 1024;
/// `mediaChanges` page size.
pub const CHANGES_PAGE: u32 = 1000;

/// Lowercase hex, as clients compare checksums as strings.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase() {
        assert_eq!(super::hex(&[0x2c, 0x70, 0xab, 0x0f]), "2c70ab0f");
    }
}
