//! `anki-sync-lite backup list|restore|export`: the command-line side of
//! backups, run beside (or without) a server on the same data folder.
//! Messages for people go to `out`; errors are returned for `main` to print.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::auth::users_file::{self, UsersFile};
use crate::backup;
use crate::cli::BackupCommand;
use crate::clock::now_millis;
use crate::colpkg::{self, Source};
use crate::config::Config;

pub fn run(
    env: &HashMap<String, String>,
    command: &BackupCommand,
    out: &mut dyn Write,
) -> Result<(), String> {
    let config = Config::from_env(env).map_err(|e| e.to_string())?;
    let user = match command {
        BackupCommand::List { user }
        | BackupCommand::Restore { user, .. }
        | BackupCommand::Export { user, .. } => user.as_str(),
    };
    let Some(dir) = user_dir(&config, user)? else {
        return match command {
            BackupCommand::List { .. } => say(
                out,
                format!(
                    "no backups yet for {user}: the first is taken at their first sync \
                     (before a full upload replaces a collection, or before the first \
                     sync of a day)"
                ),
            ),
            _ => Err(format!(
                "{user} has not synced yet: there is nothing to restore or export"
            )),
        };
    };
    match command {
        BackupCommand::List { .. } => {
            backup::print_list(&dir, out).map_err(|e| format!("listing the backups of {user}: {e}"))
        }
        BackupCommand::Restore { id, .. } => {
            let chosen = backup::stage_restore(&dir, id.as_deref(), now_millis())
                .map_err(|e| e.to_string())?;
            say(
                out,
                format!(
                    "staged {} to replace {user}'s collection: the server applies it at the \
                     user's next sync (or when it is started), after backing up the current \
                     collection; devices are then asked to full-sync: choose Download",
                    chosen.file
                ),
            )
        }
        BackupCommand::Export {
            id, file, media, ..
        } => export(&dir, user, id.as_deref(), file, *media, out),
    }
}

/// The user's folder, `None` for a user who exists but has not synced yet
/// (no folder), an error for a name that is no user at all.
fn user_dir(config: &Config, user: &str) -> Result<Option<PathBuf>, String> {
    match backup::user_dir(&config.base, user) {
        Ok(dir) => Ok(Some(dir)),
        Err(e) => {
            let in_env = config.users.iter().any(|u| u.name == user);
            let in_file = UsersFile::load(&users_file::path(&config.base))
                .is_ok_and(|file| file.contains(user));
            if (in_env || in_file) && crate::layout::user_name_problem(user).is_none() {
                Ok(None)
            } else {
                Err(e.to_string())
            }
        }
    }
}

fn export(
    dir: &Path,
    user: &str,
    id: Option<&str>,
    file: &Path,
    media: bool,
    out: &mut dyn Write,
) -> Result<(), String> {
    let backups;
    let (source, what) = match id {
        None => (Source::Live, format!("{user}'s collection")),
        Some(id) => {
            backups = backup::list(dir).map_err(|e| format!("reading the backups: {e}"))?;
            let chosen = backup::resolve(&backups, Some(id)).map_err(|e| e.to_string())?;
            (Source::Backup(&chosen.path), chosen.file.clone())
        }
    };
    let summary = colpkg::export(dir, source, file, media)?;
    for (name, why) in &summary.skipped {
        say(out, format!("left out media file {name:?}: {why}"))?;
    }
    let media = match media {
        true => format!(
            " and {} media files ({})",
            summary.media_files,
            backup::human_size(summary.media_bytes)
        ),
        false => String::new(),
    };
    say(
        out,
        format!(
            "wrote {} ({}): {what}, {} notes and {} cards{media}. Open it in Anki with \
             File > Import (AnkiDroid: Import > Collection package); it replaces the \
             collection on that device.",
            file.display(),
            backup::human_size(summary.bytes),
            summary.notes,
            summary.cards,
        ),
    )
}

fn say(out: &mut dyn Write, message: String) -> Result<(), String> {
    writeln!(out, "{message}").map_err(|e| e.to_string())
}
