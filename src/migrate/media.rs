//! Turning ankisyncd's media folder and `collection.media.server.db` into
//! our `media/` and `media.db` (schema 4) with the same USNs.
//!
//! ankisyncd's media USN is the highest `usn` in its table, and a device's
//! media state is "everything up to the USN I last saw". Keeping every
//! row's USN (deletions included) and that highest value means devices
//! find nothing new and download nothing; a device that was behind gets
//! exactly the changes it missed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::Path;

use sha1::{Digest, Sha1};

use super::source::{self, OldMedia};
use crate::media::db::{self, Meta};
use crate::media::names;
use crate::media::store::MEDIA_DIR;

/// What went into the new media store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub files: u64,
    pub bytes: u64,
    pub deleted: u64,
    pub last_usn: i32,
}

/// Builds `staging/media/` and `staging/media.db` from the user's ankisyncd
/// folder. Files the old database does not describe exactly are left out
/// with a warning: a device that has them uploads them again.
pub fn prepare(
    user_folder: &Path,
    staging: &Path,
    warnings: &mut Vec<String>,
) -> Result<Prepared, String> {
    let media_dir = staging.join(MEDIA_DIR);
    fs::create_dir(&media_dir).map_err(|e| format!("creating {}: {e}", media_dir.display()))?;
    let mut conn = db::open(&staging.join(db::DB_FILE))
        .map_err(|e| format!("creating the media database: {e}"))?;
    let old_folder = user_folder.join(source::MEDIA_FOLDER);
    let old_db = user_folder.join(source::MEDIA_DB);
    if !old_db.is_file() {
        if has_entries(&old_folder) {
            warnings.push(format!(
                "{} has files but there is no {}: media not imported; devices will upload their media again",
                old_folder.display(),
                source::MEDIA_DB
            ));
        }
        return Ok(Prepared::default());
    }
    let copy = staging.join("old-media.db");
    source::copy_database(&old_db, &copy)
        .map_err(|e| format!("copying {}: {e}", old_db.display()))?;
    let rows = source::old_media_rows(&copy).map_err(|e| format!("{}: {e}", old_db.display()))?;

    let now = now_secs();
    let mut out = Prepared::default();
    let mut highest = 0i64;
    let mut skipped = 0u64;
    let tx = conn.transaction().map_err(|e| e.to_string())?;
    for row in &rows {
        highest = highest.max(row.usn);
        let usn = i32::try_from(row.usn)
            .map_err(|_| format!("{:?}: usn {} is out of range", row.fname, row.usn))?;
        if let Err(why) = names::check(&row.fname) {
            warnings.push(format!("left out {:?}: {why}", row.fname));
            skipped += 1;
            continue;
        }
        let Some(old_sha1) = &row.sha1 else {
            // A deletion: the tombstone keeps its USN; its last checksum is
            // unknown, and nothing compares a tombstone's checksum.
            db::put(&tx, &row.fname, &[0; 20], 0, usn, now).map_err(|e| e.to_string())?;
            out.deleted += 1;
            continue;
        };
        match copy_file(&old_folder, &media_dir, row) {
            Ok((sha1, size)) => {
                if sha1.as_slice() != old_sha1.as_slice() {
                    warnings.push(format!(
                        "{:?} on disk differs from the checksum in {}; the file on disk is kept",
                        row.fname,
                        source::MEDIA_DB
                    ));
                }
                db::put(&tx, &row.fname, &sha1, size, usn, now).map_err(|e| e.to_string())?;
                out.files += 1;
                out.bytes += size;
            }
            Err(why) => {
                warnings.push(format!("left out {:?}: {why}", row.fname));
                skipped += 1;
            }
        }
    }
    out.last_usn =
        i32::try_from(highest).map_err(|_| format!("media usn {highest} is out of range"))?;
    db::set_meta(
        &tx,
        &Meta {
            last_usn: out.last_usn,
            total_bytes: out.bytes as i64,
            total_nonempty_files: out.files as i64,
        },
    )
    .map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    conn.close().map_err(|(_, e)| e.to_string())?;
    fs::remove_file(&copy).map_err(|e| format!("removing {}: {e}", copy.display()))?;
    for suffix in ["-wal", "-journal"] {
        let _ = fs::remove_file(crate::fsutil::sidecar(&copy, suffix));
    }
    if skipped > 0 {
        warnings.push(format!(
            "{skipped} media file(s) left out; run Tools > Check Media on a device, then sync"
        ));
    }
    let unlisted = count_unlisted(&old_folder, &rows);
    if unlisted > 0 {
        warnings.push(format!(
            "{unlisted} file(s) in {} are not in its database and were not imported",
            old_folder.display()
        ));
    }
    crate::fsutil::sync_dir(&media_dir)
        .map_err(|e| format!("syncing {}: {e}", media_dir.display()))?;
    Ok(out)
}

/// Copies one live file, hashing it on the way; the error says why it was
/// left out.
fn copy_file(
    old_folder: &Path,
    media_dir: &Path,
    row: &OldMedia,
) -> Result<([u8; 20], u64), String> {
    let src = old_folder.join(&row.fname);
    let meta = match fs::metadata(&src) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err("listed in the media database but missing from the folder".into());
        }
        Err(e) => return Err(e.to_string()),
    };
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() == 0 {
        // An empty live file cannot exist in media.db (size 0 means deleted),
        // and clients never upload one.
        return Err("empty file".into());
    }
    let dest = media_dir.join(&row.fname);
    let result = copy_hashed(&src, &dest);
    if result.is_err() {
        let _ = fs::remove_file(&dest);
    }
    result.map_err(|e| e.to_string())
}

fn copy_hashed(src: &Path, dest: &Path) -> io::Result<([u8; 20], u64)> {
    let mut input = File::open(src)?;
    let mut output = OpenOptions::new().write(true).create_new(true).open(dest)?;
    let mut hasher = Sha1::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n])?;
        size += n as u64;
    }
    output.sync_all()?;
    Ok((hasher.finalize().into(), size))
}

fn has_entries(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

fn count_unlisted(folder: &Path, rows: &[OldMedia]) -> u64 {
    let listed: std::collections::HashSet<&str> = rows
        .iter()
        .filter(|r| r.sha1.is_some())
        .map(|r| r.fname.as_str())
        .collect();
    let Ok(entries) = fs::read_dir(folder) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.path().is_file())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_none_or(|name| !listed.contains(name))
        })
        .count() as u64
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn sha1_hex(data: &[u8]) -> String {
        crate::media::hex(&Sha1::digest(data))
    }

    /// An ankisyncd user folder with the given files and media rows.
    fn old_user(dir: &Path, files: &[(&str, &[u8])], rows: &[(&str, i64, Option<String>)]) {
        let folder = dir.join(source::MEDIA_FOLDER);
        fs::create_dir_all(&folder).unwrap();
        for (name, data) in files {
            fs::write(folder.join(name), data).unwrap();
        }
        let conn = Connection::open(dir.join(source::MEDIA_DB)).unwrap();
        conn.execute_batch(
            "CREATE TABLE media (fname TEXT NOT NULL PRIMARY KEY, usn INT NOT NULL, csum TEXT);
             CREATE INDEX idx_media_usn ON media (usn);",
        )
        .unwrap();
        for (name, usn, csum) in rows {
            conn.execute(
                "INSERT INTO media VALUES (?, ?, ?)",
                rusqlite::params![name, usn, csum],
            )
            .unwrap();
        }
    }

    #[test]
    fn keeps_usns_tombstones_and_counters() {
        let old = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        old_user(
            old.path(),
            &[
                ("a.jpg", b"apple"),
                ("c d.mp3", b"cherry!"),
                ("stray.png", b"?"),
            ],
            &[
                ("a.jpg", 1, Some(sha1_hex(b"apple"))),
                ("gone.jpg", 5, None),
                ("c d.mp3", 4, Some(sha1_hex(b"cherry!"))),
            ],
        );
        let mut warnings = Vec::new();
        let got = prepare(old.path(), staging.path(), &mut warnings).unwrap();
        assert_eq!(
            got,
            Prepared {
                files: 2,
                bytes: 12,
                deleted: 1,
                last_usn: 5
            }
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("1 file(s)"), "{warnings:?}");

        let conn = db::open(&staging.path().join(db::DB_FILE)).unwrap();
        assert_eq!(
            db::meta(&conn).unwrap(),
            Meta {
                last_usn: 5,
                total_bytes: 12,
                total_nonempty_files: 2
            }
        );
        assert_eq!(
            db::changes(&conn, 0, 100).unwrap(),
            [
                ("a.jpg".to_string(), 1, sha1_hex(b"apple")),
                ("c d.mp3".to_string(), 4, sha1_hex(b"cherry!")),
                ("gone.jpg".to_string(), 5, String::new()),
            ]
        );
        assert!(db::changes(&conn, 5, 100).unwrap().is_empty());
        let media = staging.path().join(MEDIA_DIR);
        assert_eq!(fs::read(media.join("c d.mp3")).unwrap(), b"cherry!");
        assert!(!media.join("stray.png").exists());
        assert!(!staging.path().join("old-media.db").exists());
        // The source is untouched.
        assert_eq!(
            fs::read(old.path().join("collection.media/a.jpg")).unwrap(),
            b"apple"
        );
    }

    #[test]
    fn bad_rows_are_left_out_without_lowering_the_usn() {
        let old = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        old_user(
            old.path(),
            &[
                ("ok.jpg", b"fine"),
                ("empty.jpg", b""),
                ("changed.jpg", b"new"),
            ],
            &[
                ("ok.jpg", 1, Some(sha1_hex(b"fine"))),
                ("missing.jpg", 2, Some(sha1_hex(b"x"))),
                ("empty.jpg", 3, Some(sha1_hex(b""))),
                ("cafe\u{301}.jpg", 4, Some(sha1_hex(b"nfd"))),
                ("changed.jpg", 6, Some(sha1_hex(b"old"))),
                ("late.jpg", 9, Some(sha1_hex(b"late"))),
            ],
        );
        let mut warnings = Vec::new();
        let got = prepare(old.path(), staging.path(), &mut warnings).unwrap();
        assert_eq!((got.files, got.last_usn), (2, 9));
        let text = warnings.join("\n");
        for needle in [
            "missing.jpg",
            "empty.jpg",
            "NFC",
            "changed.jpg",
            "late.jpg",
            "4 media file(s)",
        ] {
            assert!(text.contains(needle), "{needle} not in:\n{text}");
        }
        let conn = db::open(&staging.path().join(db::DB_FILE)).unwrap();
        let changed = db::get(&conn, "changed.jpg").unwrap().unwrap();
        assert_eq!(crate::media::hex(&changed.sha1), sha1_hex(b"new"));
    }

    #[test]
    fn no_media_database_means_an_empty_store() {
        let old = tempfile::tempdir().unwrap();
        let staging = tempfile::tempdir().unwrap();
        fs::create_dir(old.path().join(source::MEDIA_FOLDER)).unwrap();
        let mut warnings = Vec::new();
        assert_eq!(
            prepare(old.path(), staging.path(), &mut warnings).unwrap(),
            Prepared::default()
        );
        assert!(warnings.is_empty());
        fs::write(old.path().join("collection.media/x.jpg"), b"x").unwrap();
        let staging = tempfile::tempdir().unwrap();
        prepare(old.path(), staging.path(), &mut warnings).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(staging.path().join("media.db").is_file());
        assert!(staging.path().join("media").is_dir());
    }
}
