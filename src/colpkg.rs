//! `backup export`: a user's collection (the live one, or one of its
//! backups) as a collection package (`.colpkg`) that Anki desktop and
//! AnkiDroid open with their normal Import, optionally with the user's media.
//!
//! The package is the current format (version 3), which Anki 2.1.50 and
//! later and AnkiDroid 2.17 and later read: a zip of Stored entries holding
//! - `meta`: the package version (protobuf, not compressed);
//! - `collection.anki21b`: the schema-18 SQLite file, zstd-compressed;
//! - `0`, `1`, …: the media files, each zstd-compressed;
//! - `media`: for each numbered entry, the file's name, size and SHA-1
//!   (protobuf, zstd-compressed).
//!
//! Nothing is held in memory but the media list (names and hashes). The
//! collection is first copied to a scratch file beside the output, from a
//! consistent view: the live one through SQLite's online backup in one read
//! transaction (a running server keeps writing; readers never block it),
//! a backup by decompressing it. The copy is checked like an upload
//! (integrity, schema 18), then streamed through zstd into the package;
//! media files stream through zstd one at a time. The package is written
//! under a temporary name and renamed when complete, so a failure never
//! leaves half a package under the name asked for.
//!
//! Run as root on a service's data folder, SQLite gives any `-shm` file it
//! creates beside the live collection the collection's owner, so the
//! service can still open its collection afterwards.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek};
use std::path::{Path, PathBuf};

use prost::Message;
use rusqlite::{Connection, OpenFlags, backup::StepResult};
use sha1::{Digest, Sha1};

use crate::media::store::MEDIA_DIR;
use crate::media::zip::ZipWriter;
use crate::storage::COLLECTION_FILE;

/// Package `anki.import_export`: the package version and the media list.
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/anki.import_export.rs"));
}

use proto::media_entries::MediaEntry;
use proto::package_metadata::Version;
use proto::{MediaEntries, PackageMetadata};

const COLLECTION_ENTRY: &str = "collection.anki21b";
/// zstd's default level, as Anki uses for packages.
const LEVEL: i32 = 3;
/// Longest media name Anki's importer accepts as it is, in bytes.
const MAX_MEDIA_NAME: usize = 120;

/// Which collection to export.
pub enum Source<'a> {
    /// The user's collection as it is now (the server may be running).
    Live,
    /// A backup file (`collection-….anki2.zst`).
    Backup(&'a Path),
}

/// What went into a package.
#[derive(Debug, Default)]
pub struct Summary {
    pub notes: i64,
    pub cards: i64,
    pub media_files: usize,
    pub media_bytes: u64,
    /// Files left out, with the reason.
    pub skipped: Vec<(String, String)>,
    /// Size of the package.
    pub bytes: u64,
}

/// Writes the package to `out` (replacing a file of that name).
pub fn export(
    user_dir: &Path,
    source: Source,
    out: &Path,
    with_media: bool,
) -> Result<Summary, String> {
    let dir = parent(out);
    let mut summary = Summary::default();
    let snapshot = Scratch::new(dir, "collection")?;
    match source {
        Source::Live => copy_live(&user_dir.join(COLLECTION_FILE), snapshot.path())?,
        Source::Backup(path) => decompress(path, snapshot.path())?,
    }
    (summary.notes, summary.cards) = check(snapshot.path())?;

    let package = Scratch::new(dir, "colpkg")?;
    let writing = |e: io::Error| format!("writing {}: {e}", package.path().display());
    let file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(package.path())
        .map_err(writing)?;
    let mut zip = ZipWriter::new(BufWriter::with_capacity(64 * 1024, file));
    let meta = PackageMetadata {
        version: Version::Latest as i32,
    };
    zip.add("meta", &mut &meta.encode_to_vec()[..])
        .map_err(writing)?;
    let collection = File::open(snapshot.path()).map_err(writing)?;
    zip.add(
        COLLECTION_ENTRY,
        &mut compressing(collection).map_err(writing)?,
    )
    .map_err(writing)?;
    drop(snapshot);

    let mut entries = Vec::new();
    if with_media {
        add_media(
            &user_dir.join(MEDIA_DIR),
            &mut zip,
            &mut entries,
            &mut summary,
        )
        .map_err(writing)?;
    }
    let list = MediaEntries { entries }.encode_to_vec();
    zip.add("media", &mut compressing(&list[..]).map_err(writing)?)
        .map_err(writing)?;
    let (buffered, len) = zip.finish().map_err(writing)?;
    let file = buffered.into_inner().map_err(|e| writing(e.into_error()))?;
    file.sync_all().map_err(writing)?;
    package
        .persist(out)
        .map_err(|e| format!("renaming the package to {}: {e}", out.display()))?;
    summary.bytes = len;
    Ok(summary)
}

/// A consistent copy of a collection that may be in use: SQLite's online
/// backup, all pages in one step (one read transaction).
fn copy_live(live: &Path, to: &Path) -> Result<(), String> {
    if !live.is_file() {
        return Err("the user has no collection yet (nothing has been synced)".into());
    }
    let failed = |e: rusqlite::Error| format!("copying {}: {e}", live.display());
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let source = Connection::open_with_flags(live, flags).map_err(failed)?;
    source
        .busy_timeout(std::time::Duration::from_secs(30))
        .map_err(failed)?;
    let mut target = Connection::open(to).map_err(failed)?;
    let backup = rusqlite::backup::Backup::new(&source, &mut target).map_err(failed)?;
    match backup.step(-1).map_err(failed)? {
        StepResult::Done => Ok(()),
        other => Err(format!(
            "copying {}: the collection stayed busy ({other:?}); try again",
            live.display()
        )),
    }
}

/// A backup is a zstd stream of a collection file.
fn decompress(backup: &Path, to: &Path) -> Result<(), String> {
    let name = backup.display();
    let file = File::open(backup).map_err(|e| format!("{name}: {e}"))?;
    let mut decoder = zstd::stream::read::Decoder::new(file).map_err(|e| format!("{name}: {e}"))?;
    let mut out = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(to)
        .map_err(|e| format!("{}: {e}", to.display()))?;
    io::copy(&mut decoder, &mut out).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::Other => {
            format!("{name} is damaged: {e}")
        }
        _ => format!("decompressing {name} into {}: {e}", to.display()),
    })?;
    Ok(())
}

/// Checks the copy like an upload and returns its note and card counts.
/// Also turns it into a rollback-journal file: a package holds one file.
fn check(path: &Path) -> Result<(i64, i64), String> {
    let bad = |e: rusqlite::Error| format!("the collection cannot be exported: {e}");
    let conn = crate::storage::open(path).map_err(bad)?;
    conn.pragma_update(None, "trusted_schema", false)
        .map_err(bad)?;
    conn.pragma_update(None, "journal_mode", "delete")
        .map_err(bad)?;
    let integrity: String = conn
        .query_row("pragma integrity_check", [], |r| r.get(0))
        .map_err(bad)?;
    if integrity != "ok" {
        return Err(format!(
            "the collection fails SQLite's integrity check: {integrity}"
        ));
    }
    let version = crate::storage::schema_version(&conn).map_err(bad)?;
    if version != crate::storage::install::SCHEMA_VERSION {
        return Err(format!("unexpected collection schema {version}"));
    }
    let count = |table: &str| {
        conn.query_row(&format!("select count(*) from {table}"), [], |r| {
            r.get::<_, i64>(0)
        })
    };
    let counts = (count("notes").map_err(bad)?, count("cards").map_err(bad)?);
    conn.close().map_err(|(_, e)| bad(e))?;
    Ok(counts)
}

/// Every file of the media folder, in name order, as entries `0`, `1`, ….
fn add_media(
    folder: &Path,
    zip: &mut ZipWriter<impl io::Write + Seek>,
    entries: &mut Vec<MediaEntry>,
    summary: &mut Summary,
) -> io::Result<()> {
    let mut names = Vec::new();
    match fs::read_dir(folder) {
        Ok(dir) => {
            for entry in dir {
                let entry = entry?;
                if !entry.file_type()?.is_file() {
                    continue;
                }
                match entry.file_name().into_string() {
                    Ok(name) => names.push(name),
                    Err(raw) => summary
                        .skipped
                        .push((raw.to_string_lossy().into(), "not UTF-8".into())),
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    names.sort_unstable();
    for name in names {
        if let Some(why) = refused_by_anki(&name) {
            summary.skipped.push((name, why.into()));
            continue;
        }
        let file = match File::open(folder.join(&name)) {
            Ok(file) => file,
            // Deleted by a media sync since the folder was listed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file.metadata()?.len() >= u64::from(u32::MAX) {
            summary.skipped.push((name, "4 GiB or larger".into()));
            continue;
        }
        let mut hashing = Hashing {
            inner: file,
            sha1: Sha1::new(),
            size: 0,
        };
        let index = entries.len().to_string();
        zip.add(&index, &mut compressing(&mut hashing)?)?;
        let size = u32::try_from(hashing.size).map_err(io::Error::other)?;
        summary.media_files += 1;
        summary.media_bytes += hashing.size;
        entries.push(MediaEntry {
            name,
            size,
            sha1: hashing.sha1.finalize().to_vec(),
        });
    }
    Ok(())
}

/// Why Anki's importer would refuse `name` (it fails the whole import on a
/// name it would have to change): the characters its media check removes,
/// names Windows cannot store, and names it would shorten. Names the
/// server accepted from current clients never hit this; hand-copied files
/// can.
fn refused_by_anki(name: &str) -> Option<&'static str> {
    const BAD: &[char] = &['[', ']', '<', '>', ':', '"', '/', '?', '*', '^', '\\', '|'];
    if name.contains(BAD) || name.chars().any(|c| c.is_ascii_control()) {
        return Some("has a character Anki removes from media names");
    }
    if name.contains('\u{a0}') {
        return Some("has a non-breaking space, which Anki changes");
    }
    if name.len() > MAX_MEDIA_NAME {
        return Some("longer than the 120 bytes Anki keeps");
    }
    if name.ends_with([' ', '.']) {
        return Some("ends in a space or dot");
    }
    let stem = name.split('.').next().unwrap_or(name).to_ascii_uppercase();
    let device = matches!(stem.as_str(), "CON" | "PRN" | "AUX" | "NUL")
        || ((stem.starts_with("COM") || stem.starts_with("LPT"))
            && stem.len() == 4
            && matches!(stem.as_bytes()[3], b'1'..=b'9'));
    if device {
        return Some("a Windows device name");
    }
    if !unicode_normalization::is_nfc(name) {
        return Some("not in Unicode NFC");
    }
    None
}

/// zstd-compresses what `inner` yields, as it is read.
fn compressing<R: Read>(inner: R) -> io::Result<impl Read> {
    zstd::stream::read::Encoder::new(inner, LEVEL)
}

/// Counts and hashes the bytes read through it.
struct Hashing<R> {
    inner: R,
    sha1: Sha1,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sha1.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// A file beside the output that is removed unless persisted.
struct Scratch {
    path: PathBuf,
    kept: bool,
}

impl Scratch {
    fn new(dir: &Path, what: &str) -> Result<Scratch, String> {
        let path = dir.join(format!(
            ".anki-sync-lite-export-{}-{what}.tmp",
            std::process::id()
        ));
        // Left by an earlier run with our process id: ours to replace.
        let _ = fs::remove_file(&path);
        File::create(&path).map_err(|e| format!("creating {}: {e}", path.display()))?;
        Ok(Scratch { path, kept: false })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn persist(mut self, to: &Path) -> io::Result<()> {
        fs::rename(&self.path, to)?;
        self.kept = true;
        crate::fsutil::sync_parent(to)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !self.kept {
            for suffix in ["", "-journal", "-wal", "-shm"] {
                let _ = fs::remove_file(crate::fsutil::sidecar(&self.path, suffix));
            }
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_names_anki_would_change_are_recognised() {
        for ok in [
            "a.jpg",
            "café.mp3",
            "icon.png",
            "COM0.png",
            "x y.png",
            "日本語.ogg",
        ] {
            assert_eq!(refused_by_anki(ok), None, "{ok}");
        }
        let long = format!("{}.jpg", "a".repeat(117));
        for bad in [
            "a:b.jpg",
            "what?.png",
            "tab\there",
            "nb\u{a0}sp.jpg",
            "dot.",
            "space ",
            "CON",
            "nul.txt",
            "con.txt.jpg",
            "lpt3.mp3",
            "cafe\u{301}.mp3",
            long.as_str(),
        ] {
            assert!(refused_by_anki(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn hashing_reader_counts_and_hashes() {
        let mut reader = Hashing {
            inner: &b"hello world"[..],
            sha1: Sha1::new(),
            size: 0,
        };
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        assert_eq!(reader.size, 11);
        assert_eq!(
            crate::media::hex(&reader.sha1.finalize()),
            "2aae6c35c94fcfb415dbe95f408b9ce91ee846ed"
        );
    }
}
