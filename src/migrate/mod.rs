//! `anki-sync-lite import-ankisyncd DIR`: moving users of the old Python
//! ankisyncd to this server without a full sync.
//!
//! For each user the collection, the media folder and the media database
//! are copied (never moved: the source is only read) into a staging folder
//! inside the user's folder under `SYNC_BASE`, checked and converted there,
//! and only then renamed into place, collection last. The collection keeps
//! its `scm`, `usn` and `mod` and the media keeps its USNs, so devices that
//! synced with ankisyncd find the state they last saw and sync normally.
//! One user's failure is reported and the others go on.
//!
//! - `source`: ankisyncd's layout, read only.
//! - `collection`: checking and upgrading the collection copy to schema 18.
//! - `media`: building `media/` and `media.db` from ankisyncd's media.

mod collection;
mod media;
mod source;

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::media::db::DB_FILE as MEDIA_DB_FILE;
use crate::media::store::MEDIA_DIR;
use crate::storage::COLLECTION_FILE;
use source::{Source, SourceUser};

/// The folder inside a user's folder where an import is assembled. Not
/// removed by the server; an interrupted import removes it when run again.
pub const STAGING_DIR: &str = "import-ankisyncd.tmp";
/// Inside the staging folder: what `--force` replaced, kept until the new
/// data is in place.
const REPLACED_DIR: &str = "replaced";

/// What `import-ankisyncd` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// ankisyncd's working folder (with `collections/` and `auth.db`) or its
    /// data root.
    pub source: PathBuf,
    /// Our `SYNC_BASE`.
    pub base: PathBuf,
    /// Replace users that already have data here.
    pub force: bool,
    /// Names already set in `SYNC_USERn`, so the advice printed at the end
    /// only asks for the missing ones.
    pub configured: Vec<String>,
}

/// One user imported.
#[derive(Debug)]
struct Imported {
    collection: collection::Prepared,
    media: media::Prepared,
    warnings: Vec<String>,
    replaced: bool,
}

/// Runs the import, printing progress and advice to `out`. `Ok(true)` if
/// every user with data was imported; `Err` if nothing could be started.
pub fn run(options: &Options, out: &mut dyn Write) -> Result<bool, String> {
    let source = Source::locate(&options.source)?;
    let data_root = canonical(&source.data_root)?;
    // Checked before anything is created, so the source stays untouched.
    if canonical_to_be(&options.base)?.starts_with(&data_root) {
        return Err(format!(
            "SYNC_BASE {} is inside the ankisyncd data folder {}; choose another folder (the source is never changed)",
            options.base.display(),
            data_root.display()
        ));
    }
    let (users, warnings) = source.users()?;
    let auth = source
        .auth_db
        .as_ref()
        .map_or("no auth.db found".to_string(), |p| {
            format!("users from {}", p.display())
        });
    say(
        out,
        format!(
            "Importing ankisyncd data from {} ({auth}) into {}",
            data_root.display(),
            options.base.display()
        ),
    )?;
    for warning in &warnings {
        say(out, format!("warning: {warning}"))?;
    }
    if users.is_empty() {
        return Err(format!(
            "no users found in {}: expected one folder per user holding {}, or an auth.db",
            data_root.display(),
            source::COLLECTION_FILE
        ));
    }
    crate::fsutil::create_dir_all_durable(&options.base)
        .map_err(|e| format!("creating {}: {e}", options.base.display()))?;
    let base = canonical(&options.base)?;

    let mut ok = true;
    let mut accounts = Vec::new();
    for user in &users {
        if let Err(why) = check_name(&user.name) {
            say(out, format!("{:?}: FAILED: {why}", user.name))?;
            ok = false;
            continue;
        }
        let Some(folder) = user
            .folder
            .as_ref()
            .filter(|f| f.join(source::COLLECTION_FILE).is_file())
        else {
            if user.in_auth_db {
                say(
                    out,
                    format!("{}: nothing to import (never synced)", user.name),
                )?;
                accounts.push(user);
            } else {
                say(
                    out,
                    format!(
                        "{}: skipped: no {} in its folder",
                        user.name,
                        source::COLLECTION_FILE
                    ),
                )?;
            }
            continue;
        };
        match import_user(&user.name, folder, &data_root, &base, options.force) {
            Ok(imported) => {
                report(out, user, &imported)?;
                accounts.push(user);
            }
            Err(why) => {
                say(out, format!("{}: FAILED: {why}", user.name))?;
                ok = false;
            }
        }
    }
    advise(out, options, &base, &accounts)?;
    Ok(ok)
}

fn canonical(path: &Path) -> Result<PathBuf, String> {
    fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The canonical form `path` will have once created: its nearest existing
/// ancestor, canonicalised, with the rest appended.
fn canonical_to_be(path: &Path) -> Result<PathBuf, String> {
    let absolute = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_owned());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut result = canonical(existing)?;
    result.extend(rest.iter().rev());
    Ok(result)
}

fn say(out: &mut dyn Write, line: String) -> Result<(), String> {
    writeln!(out, "{line}").map_err(|e| format!("writing the report: {e}"))
}

/// The rule every user name follows (`layout::user_name_problem`).
fn check_name(name: &str) -> Result<(), String> {
    match crate::layout::user_name_problem(name) {
        Some(problem) => Err(format!("this user name cannot be used: {problem}")),
        None => Ok(()),
    }
}

fn import_user(
    name: &str,
    folder: &Path,
    data_root: &Path,
    base: &Path,
    force: bool,
) -> Result<Imported, String> {
    let dest = base.join(name);
    if data_root.starts_with(&dest) {
        return Err(format!(
            "its folder {} would contain the ankisyncd data",
            dest.display()
        ));
    }
    let existing = existing_data(&dest);
    if let Some(what) = &existing {
        if !force {
            return Err(format!(
                "{} already holds {what}; pass --force to replace it",
                dest.display()
            ));
        }
    }
    crate::fsutil::create_dir_all_durable(&dest)
        .map_err(|e| format!("creating {}: {e}", dest.display()))?;
    let staging = dest.join(STAGING_DIR);
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .map_err(|e| format!("removing the leftover {}: {e}", staging.display()))?;
    }
    fs::create_dir(&staging).map_err(|e| format!("creating {}: {e}", staging.display()))?;

    let mut warnings = Vec::new();
    let prepared = prepare(folder, &staging, &mut warnings);
    let (collection, media) = match prepared {
        Ok(parts) => parts,
        Err(why) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(why);
        }
    };
    install(&staging, &dest).map_err(|e| {
        format!(
            "installing into {}: {e} (whatever was replaced is kept in {})",
            dest.display(),
            staging.join(REPLACED_DIR).display()
        )
    })?;
    fs::remove_dir_all(&staging).map_err(|e| format!("removing {}: {e}", staging.display()))?;
    Ok(Imported {
        collection,
        media,
        warnings,
        replaced: existing.is_some(),
    })
}

fn prepare(
    folder: &Path,
    staging: &Path,
    warnings: &mut Vec<String>,
) -> Result<(collection::Prepared, media::Prepared), String> {
    let src = folder.join(source::COLLECTION_FILE);
    let copy = staging.join(COLLECTION_FILE);
    source::copy_database(&src, &copy).map_err(|e| format!("copying {}: {e}", src.display()))?;
    let collection =
        collection::prepare(&copy).map_err(|e| format!("collection {}: {e}", src.display()))?;
    let media = media::prepare(folder, staging, warnings)?;
    Ok((collection, media))
}

/// What the user's folder already holds, if anything worth keeping. The
/// empty `media/` and `media.db` a server start creates do not count.
fn existing_data(dest: &Path) -> Option<String> {
    if dest.join(COLLECTION_FILE).exists() {
        return Some(format!("a {COLLECTION_FILE}"));
    }
    if fs::read_dir(dest.join(MEDIA_DIR)).is_ok_and(|mut e| e.next().is_some()) {
        return Some("media files".into());
    }
    let db = dest.join(MEDIA_DB_FILE);
    if db.exists() {
        let used = Connection::open(&db).and_then(|c| {
            c.query_row(
                "SELECT (SELECT count(*) FROM media) + (SELECT max(last_usn) FROM meta)",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )
        });
        match used {
            Ok(None | Some(0)) => {}
            Ok(Some(_)) => return Some(format!("a {MEDIA_DB_FILE} with entries")),
            Err(_) => return Some(format!("a {MEDIA_DB_FILE} that cannot be read")),
        }
    }
    None
}

/// Renames the staged media folder, media database and collection into
/// place, collection last (so a collection present means the rest is too).
/// Whatever they replace is moved into the staging folder first, and the
/// old files' `-wal`, `-shm` and `-journal` are removed so SQLite cannot
/// apply them to the new files.
fn install(staging: &Path, dest: &Path) -> io::Result<()> {
    let replaced = staging.join(REPLACED_DIR);
    fs::create_dir(&replaced)?;
    for name in [MEDIA_DIR, MEDIA_DB_FILE, COLLECTION_FILE] {
        let target = dest.join(name);
        for suffix in ["-wal", "-shm", "-journal"] {
            let side = crate::fsutil::sidecar(&target, suffix);
            match fs::remove_file(&side) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        if fs::symlink_metadata(&target).is_ok() {
            fs::rename(&target, replaced.join(name))?;
        }
        fs::rename(staging.join(name), &target)?;
    }
    crate::fsutil::sync_dir(dest)
}

fn report(out: &mut dyn Write, user: &SourceUser, imported: &Imported) -> Result<(), String> {
    let c = &imported.collection;
    let schema = if c.from_schema == 18 {
        "schema 18".to_string()
    } else {
        format!("upgraded from schema {} to 18", c.from_schema)
    };
    let m = &imported.media;
    say(
        out,
        format!(
            "{}: imported{}: {} notes, {} cards ({schema}; scm, usn {} and mod kept); \
             {} media files ({} bytes), {} deleted, media usn {}",
            user.name,
            if imported.replaced {
                " (replacing what was there)"
            } else {
                ""
            },
            c.notes,
            c.cards,
            c.usn,
            m.files,
            m.bytes,
            m.deleted,
            m.last_usn
        ),
    )?;
    for warning in &imported.warnings {
        say(out, format!("  warning: {warning}"))?;
    }
    Ok(())
}

fn advise(
    out: &mut dyn Write,
    options: &Options,
    base: &Path,
    accounts: &[&SourceUser],
) -> Result<(), String> {
    if accounts.is_empty() {
        return Ok(());
    }
    let missing: Vec<&str> = accounts
        .iter()
        .map(|u| u.name.as_str())
        .filter(|name| !options.configured.iter().any(|c| c == name))
        .collect();
    say(out, String::new())?;
    say(out, "Next steps:".into())?;
    if missing.is_empty() {
        say(out, "  1. Every imported user already has a SYNC_USERn; keep the passwords they had on ankisyncd.".into())?;
    } else {
        say(
            out,
            "  1. Add one SYNC_USERn per user, with the password the user had on ankisyncd. \
             ankisyncd keeps only salted SHA-256 hashes: the passwords cannot be recovered from \
             auth.db, and PASSWORDS_HASHED cannot use those hashes either."
                .into(),
        )?;
        for (i, name) in missing.iter().enumerate() {
            let n = options.configured.len() + i + 1;
            say(
                out,
                format!("       SYNC_USER{n}={name}:<{name}'s password>"),
            )?;
        }
    }
    let sessions: u64 = accounts.iter().map(|u| u.sessions).sum();
    say(
        out,
        format!(
            "  2. Start anki-sync-lite with SYNC_BASE={} and point each device at it. ankisyncd's \
             host keys are random tokens this server cannot honour ({sessions} device login(s) in \
             session.db), so each device asks for its password once; after that it syncs normally, \
             without a full sync and without downloading media again.",
            base.display()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage;

    /// An ankisyncd working folder with one user holding a fresh collection
    /// and no media.
    fn ankisyncd_tree(users: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for user in users {
            let folder = dir.path().join("collections").join(user);
            fs::create_dir_all(&folder).unwrap();
            storage::create_collection(&folder.join("collection.anki2"), 1_600_000_000_000)
                .unwrap();
        }
        dir
    }

    fn options(source: &Path, base: &Path) -> Options {
        Options {
            source: source.to_path_buf(),
            base: base.to_path_buf(),
            force: false,
            configured: vec!["bob".into()],
        }
    }

    fn run_to_string(options: &Options) -> (Result<bool, String>, String) {
        let mut out = Vec::new();
        let result = run(options, &mut out);
        (result, String::from_utf8(out).unwrap())
    }

    #[test]
    fn imports_each_user_and_refuses_to_overwrite_without_force() {
        let src = ankisyncd_tree(&["alice", "bob"]);
        let base = tempfile::tempdir().unwrap();
        let mut opts = options(src.path(), base.path());
        let (result, text) = run_to_string(&opts);
        assert_eq!(result, Ok(true), "{text}");
        assert!(text.contains("alice: imported"), "{text}");
        assert!(
            text.contains("SYNC_USER2=alice:<alice's password>"),
            "{text}"
        );
        assert!(!text.contains("SYNC_USER3"), "{text}");
        for user in ["alice", "bob"] {
            let dir = base.path().join(user);
            assert!(dir.join("collection.anki2").is_file());
            assert!(dir.join("media").is_dir());
            assert!(dir.join("media.db").is_file());
            assert!(!dir.join(STAGING_DIR).exists());
        }

        // A second run finds data and changes nothing without --force.
        storage::open(&base.path().join("alice/collection.anki2"))
            .unwrap()
            .execute("UPDATE col SET usn = 99", [])
            .unwrap();
        let (result, text) = run_to_string(&opts);
        assert_eq!(result, Ok(false), "{text}");
        assert!(text.contains("pass --force"), "{text}");
        let usn = |base: &Path| -> i64 {
            storage::open(&base.join("alice/collection.anki2"))
                .unwrap()
                .query_row("SELECT usn FROM col", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(usn(base.path()), 99);

        opts.force = true;
        let (result, text) = run_to_string(&opts);
        assert_eq!(result, Ok(true), "{text}");
        assert!(text.contains("replacing"), "{text}");
        assert_eq!(usn(base.path()), 0);
    }

    #[test]
    fn one_bad_user_does_not_stop_the_others() {
        let src = ankisyncd_tree(&["alice", "carol"]);
        fs::write(
            src.path().join("collections/alice/collection.anki2"),
            b"garbage, not SQLite at all; garbage, not SQLite at all",
        )
        .unwrap();
        let base = tempfile::tempdir().unwrap();
        let (result, text) = run_to_string(&options(src.path(), base.path()));
        assert_eq!(result, Ok(false), "{text}");
        assert!(text.contains("alice: FAILED"), "{text}");
        assert!(text.contains("carol: imported"), "{text}");
        assert!(!base.path().join("alice/collection.anki2").exists());
        assert!(!base.path().join("alice").join(STAGING_DIR).exists());
        assert!(base.path().join("carol/collection.anki2").exists());
    }

    #[test]
    fn server_start_up_files_are_not_data() {
        let src = ankisyncd_tree(&["alice"]);
        let base = tempfile::tempdir().unwrap();
        // What a server start leaves for a configured user.
        crate::media::MediaSlot::open(&base.path().join("alice")).unwrap();
        let (result, text) = run_to_string(&options(src.path(), base.path()));
        assert_eq!(result, Ok(true), "{text}");
        assert!(!text.contains("replacing"), "{text}");
    }

    #[test]
    fn refuses_a_base_inside_the_source_and_an_empty_source() {
        let src = ankisyncd_tree(&["alice"]);
        let inside = src.path().join("collections/new/base");
        let (result, _) = run_to_string(&options(src.path(), &inside));
        assert!(
            result
                .unwrap_err()
                .contains("inside the ankisyncd data folder")
        );
        assert!(!src.path().join("collections/new").exists());

        let empty = tempfile::tempdir().unwrap();
        let base = tempfile::tempdir().unwrap();
        let (result, _) = run_to_string(&options(empty.path(), base.path()));
        assert!(result.unwrap_err().contains("no users found"));
    }

    #[test]
    fn names_sync_user_cannot_express_are_refused() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("a:b").unwrap_err().contains("':'"));
        assert!(check_name("..").is_err());
    }
}
