//! Which media file names an upload may carry. A name becomes a single
//! path component inside `media/`, so it is checked completely before
//! anything is written; names are never normalised (clients and server must
//! agree on the exact bytes).

use unicode_normalization::is_nfc;

/// Longest name, in UTF-8 bytes (the official server's limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Why a name is refused; every case is a 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadName {
    Empty,
    /// `.` or `..`: not a file.
    DotName,
    TooLong,
    NotNfc,
    /// `/`, `\` or NUL: would not be one path component on some system.
    Separator,
}

impl std::fmt::Display for BadName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BadName::Empty => "empty name",
            BadName::DotName => "`.` or `..`",
            BadName::TooLong => "longer than 255 bytes",
            BadName::NotNfc => "not in Unicode NFC",
            BadName::Separator => "contains `/`, `\\` or NUL",
        })
    }
}

/// Checks a name from an upload's `_meta` (additions and deletions alike).
/// Stricter than the official server, which turns `""`, `.`, `..` and NUL
/// into a 500 after partly applying the upload, and accepts `\` on Unix
/// (current clients strip `\` from names, so only very old ones send it).
pub fn check(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        return Err(BadName::Empty);
    }
    if name == "." || name == ".." {
        return Err(BadName::DotName);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(BadName::TooLong);
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(BadName::Separator);
    }
    if !is_nfc(name) {
        return Err(BadName::NotNfc);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_cannot_be_one_safe_component() {
        let long = "a".repeat(256);
        let cases = [
            ("", BadName::Empty),
            (".", BadName::DotName),
            ("..", BadName::DotName),
            ("../x", BadName::Separator),
            ("a/b", BadName::Separator),
            ("a\\b.jpg", BadName::Separator),
            ("nul\0.jpg", BadName::Separator),
            (long.as_str(), BadName::TooLong),
            ("cafe\u{301}.jpg", BadName::NotNfc),
        ];
        for (name, why) in cases {
            assert_eq!(check(name), Err(why), "{name:?}");
        }
    }

    #[test]
    fn accepts_what_the_official_server_accepts() {
        // 255 bytes made of 2-byte characters plus one ASCII byte.
        let long = format!("{}a", "é".repeat(127));
        assert_eq!(long.len(), 255);
        for name in [
            "apple.jpg",
            "a:b[1].jpg",
            "con.jpg",
            "trail.",
            "café.jpg",
            "日本語 ファイル.png",
            "...",
            ".hidden",
            long.as_str(),
        ] {
            assert_eq!(check(name), Ok(()), "{name:?}");
        }
    }
}
