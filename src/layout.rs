//! The data folder's layout as far as more than one layer needs it: which
//! names may become a user's folder under `SYNC_BASE`, beside the server's
//! own files there. It sits below every layer (config, auth, backup,
//! migrate all check names), so none of them imports another for it.

/// Folder under `SYNC_BASE` where legacy form data too large to keep in
/// memory waits (`http::spill`); no user can be called this (names cannot
/// start with '.').
pub const SPILL_DIR: &str = ".spill";

/// Why `name` cannot be a user name, or `None` if it can. One rule for
/// `SYNC_USERn`, the users file, `user add`, `backup` and the ankisyncd
/// import: a name becomes a folder under `SYNC_BASE` next to the server's
/// own files, and a line of `users.txt` that can move to `SYNC_USERn` as it is.
pub fn user_name_problem(name: &str) -> Option<&'static str> {
    // Case-insensitive file systems (macOS, exFAT on a NAS) fold `Users.txt`.
    let lower = name.to_ascii_lowercase();
    Some(if name.is_empty() {
        "it is empty"
    } else if name.contains(['/', '\\']) {
        "it contains a path separator ('/' or '\\'), and it becomes a folder name"
    } else if name.contains(':') {
        "it contains ':', which separates the name from the password"
    } else if name.chars().any(char::is_control) {
        "it contains a control character (a newline, a tab...)"
    } else if name.starts_with('.') {
        "it starts with '.' (folders such as `.spill` are the server's own)"
    } else if name.starts_with('#') {
        "it starts with '#', which makes a comment in the users file"
    } else if lower.starts_with("users.txt") {
        // `auth::users_file` keeps `users.txt`, `users.txt.lock`, `users.txt.tmp` there.
        "it clashes with the users file and its lock and temporary files"
    } else if name.trim() != name {
        "it starts or ends with a space"
    } else if name.len() > MAX_USER_NAME_BYTES {
        "it is longer than a folder name may be (255 bytes)"
    } else {
        return None;
    })
}

/// A folder name's limit on Linux file systems (`NAME_MAX`).
const MAX_USER_NAME_BYTES: usize = 255;
