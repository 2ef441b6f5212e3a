//! What `--version` prints: the version, the target the binary was built
//! for and its optional features, so a user holding several downloaded
//! files (x86_64, aarch64, armv7, armv6; with or without built-in HTTPS)
//! can tell which one they have.

/// The target triple, from build.rs.
pub const TARGET: &str = env!("ANKI_SYNC_LITE_TARGET");

/// The optional cargo features this binary was built with.
pub fn features() -> Vec<&'static str> {
    let mut features = Vec::new();
    if cfg!(feature = "tls") {
        features.push("tls");
    }
    features
}

/// The `--version` text: `anki-sync-lite VERSION` on the first line (what
/// scripts read), then the target and the features.
pub fn text() -> String {
    let linking = if cfg!(target_feature = "crt-static") {
        "statically linked"
    } else {
        "dynamically linked"
    };
    let features = features();
    let features = if features.is_empty() {
        "none (no built-in HTTPS)".to_string()
    } else {
        features.join(", ")
    };
    format!(
        "anki-sync-lite {}\ntarget: {TARGET} ({linking})\nfeatures: {features}\n",
        env!("CARGO_PKG_VERSION")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_version_target_and_features() {
        let text = text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            concat!("anki-sync-lite ", env!("CARGO_PKG_VERSION"))
        );
        // Tests run on the host, so the target is the host's own triple.
        assert!(
            lines[1].starts_with("target: ") && lines[1].contains("-linux-"),
            "{text}"
        );
        assert_eq!(
            lines[2].contains("tls"),
            cfg!(feature = "tls"),
            "the features line must follow the build: {text}"
        );
        assert_eq!(lines.len(), 3);
    }
}
