//! Media downloads (`downloadFiles`): the chosen files are opened under the
//! media lock (an open file stays valid when an upload later replaces or
//! deletes it), and the zip is made from them as the answer is sent, after
//! releasing it. A download keeps its files (at most `MAX_ENTRIES`) open
//! until each is sent; it is sent within one of the `SYNC_WORKERS` places,
//! which bounds the open files of all downloads together.

use std::fs::{self, File};
use std::io::{self, Cursor};

use log::warn;
use rusqlite::Connection;
use serde_json::Value;

use super::DOWNLOAD_TARGET_BYTES;
use super::db;
use super::store::{MediaSlot, disk};
use super::zip::{ReadSeek, ZipStream};
use crate::error::SyncError;

impl MediaSlot {
    /// `downloadFiles`: the longest prefix of `names` whose sizes first
    /// exceed 2.5 MiB (at least one file), as a zip made while it is read.
    /// An unknown or deleted name is a conflict; a file missing on disk is
    /// forgotten (row removed, no USN) and is a conflict too.
    pub fn download(&self, names: &[String]) -> Result<ZipStream<'static>, SyncError> {
        let files = self.open_for_download(names)?;
        let mut map = serde_json::Map::new();
        let mut entries = Vec::with_capacity(files.len() + 1);
        for (index, (name, file)) in files.into_iter().enumerate() {
            let size = file
                .metadata()
                .map_err(|e| disk("reading a media file's size", e))?
                .len();
            let entry = index.to_string();
            entries.push((entry.clone(), Box::new(file) as Box<dyn ReadSeek>, size));
            map.insert(entry, Value::String(name));
        }
        let meta = Value::Object(map).to_string().into_bytes();
        let meta_len = meta.len() as u64;
        entries.push(("_meta".to_string(), Box::new(Cursor::new(meta)), meta_len));
        ZipStream::new(entries).map_err(|e| disk("packing a download", e))
    }

    fn open_for_download(&self, names: &[String]) -> Result<Vec<(String, File)>, SyncError> {
        self.with_db(|conn| self.open_for_download_locked(conn, names))
    }

    fn open_for_download_locked(
        &self,
        conn: &mut Connection,
        names: &[String],
    ) -> Result<Vec<(String, File)>, SyncError> {
        let mut chosen = Vec::new();
        let mut total = 0u64;
        for name in names {
            let row = db::get(conn, name)?
                .filter(|row| row.size > 0)
                .ok_or_else(|| SyncError::conflict(format!("{name:?} is not on the server")))?;
            chosen.push(name);
            total += row.size;
            if total > DOWNLOAD_TARGET_BYTES {
                break;
            }
        }
        let mut files = Vec::with_capacity(chosen.len());
        let mut missing = Vec::new();
        for name in chosen {
            // The name came from the database, so it passed the upload
            // checks: one plain component. Symlinks are not followed.
            let path = self.media_dir.join(name);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() => {
                    let file = File::open(&path).map_err(|e| disk("opening a media file", e))?;
                    files.push((name.clone(), file));
                }
                Ok(_) => {
                    return Err(SyncError::internal(format!(
                        "{} is not a regular file",
                        path.display()
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(name),
                Err(e) => return Err(disk("opening a media file", e)),
            }
        }
        if missing.is_empty() {
            return Ok(files);
        }
        let tx = conn.transaction()?;
        let mut meta = db::meta(&tx)?;
        for name in &missing {
            if let Some(size) = db::forget(&tx, name)? {
                if size > 0 {
                    meta.total_bytes -= size as i64;
                    meta.total_nonempty_files -= 1;
                }
            }
        }
        db::set_meta(&tx, &meta)?;
        tx.commit()?;
        warn!(
            "media files missing on disk in {}, forgotten: {missing:?}",
            self.media_dir.display()
        );
        Err(SyncError::conflict(format!("{missing:?} missing on disk")))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::error::Kind;
    use crate::media::store::MEDIA_DIR;
    use crate::media::store::tests::{counters, slot};
    use crate::media::upload::tests::upload;
    use crate::media::zip::ZipReader;

    fn download(slot: &MediaSlot, names: &[&str]) -> Result<Vec<(String, Vec<u8>)>, SyncError> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut stream = slot.download(&names)?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, stream.size());
        let mut zip = ZipReader::open(std::io::Cursor::new(bytes)).unwrap();
        let mut read = |name: &str| {
            let entry = zip.entry(name).cloned().unwrap();
            let mut out = Vec::new();
            zip.read_entry(&entry)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            out
        };
        let meta: serde_json::Map<String, Value> = serde_json::from_slice(&read("_meta")).unwrap();
        let mut out = Vec::new();
        for i in 0..meta.len() {
            let name = meta[&i.to_string()].as_str().unwrap().to_string();
            out.push((name, read(&i.to_string())));
        }
        Ok(out)
    }

    #[test]
    fn downloads_a_prefix_past_the_size_target() {
        let (_dir, slot) = slot();
        let mib = vec![7u8; 1 << 20];
        let big = vec![9u8; 3 << 20];
        upload(
            &slot,
            &[
                ("small.txt", Some(b"tiny")),
                ("m0", Some(&mib)),
                ("m1", Some(&mib)),
                ("m2", Some(&mib)),
                ("huge", Some(&big)),
            ],
        )
        .unwrap();
        let got = download(&slot, &["m0", "m1", "m2", "small.txt"]).unwrap();
        let names: Vec<&str> = got.iter().map(|g| g.0.as_str()).collect();
        assert_eq!(names, ["m0", "m1", "m2"]);
        assert_eq!(got[0].1, mib);
        let got = download(&slot, &["huge", "small.txt"]).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1, big);
        // Names after the cut-off are not even looked up.
        assert_eq!(download(&slot, &["huge", "unknown"]).unwrap().len(), 1);
        assert_eq!(
            download(&slot, &["small.txt", "small.txt"]).unwrap().len(),
            2
        );
        assert!(download(&slot, &[]).unwrap().is_empty());
    }

    #[test]
    fn unknown_deleted_and_vanished_files_are_conflicts() {
        let (dir, slot) = slot();
        upload(
            &slot,
            &[
                ("a.txt", Some(b"aaa")),
                ("b.txt", Some(b"bb")),
                ("c.txt", Some(b"c")),
            ],
        )
        .unwrap();
        upload(&slot, &[("b.txt", None)]).unwrap();
        for names in [&["a.txt", "nope"][..], &["b.txt"][..]] {
            assert!(matches!(
                download(&slot, names),
                Err(ref e) if e.kind() == Kind::Conflict
            ));
        }
        fs::remove_file(dir.path().join(MEDIA_DIR).join("c.txt")).unwrap();
        assert!(matches!(
            download(&slot, &["c.txt"]),
            Err(ref e) if e.kind() == Kind::Conflict
        ));
        // Forgotten: no row, no USN, counters follow.
        assert_eq!(counters(&slot), (4, 3, 1));
        let listed: Vec<String> = slot.changes(0).unwrap().into_iter().map(|c| c.0).collect();
        assert_eq!(listed, ["a.txt", "b.txt"]);
    }
}
