//! The derived columns of a note that never travel over the wire: the sort
//! field (`sfld`) and the first-field checksum (`csum`). Clients use them for
//! sorting and duplicate checks after a full download, so they are computed
//! with the same rules as Anki: media tags keep their file name, comments,
//! style and script blocks and all other tags are removed, then entities are
//! decoded.

use std::sync::OnceLock;

use regex_lite::Regex;
use sha1::{Digest, Sha1};

/// Comments, style and script blocks with their content, then any tag.
fn html() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"(?si)(<!--.*?-->)|(<style.*?>.*?</style>)|(<script.*?>.*?</script>)|(<.*?>)")
            .expect("static pattern")
    })
}

/// A media tag up to its first `src`/`data` attribute (quoted text may hold
/// `>`), capturing the file name double-quoted, single-quoted or bare.
fn media_tags() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(concat!(
            r#"(?si)<\b(?:img|audio|video|object|source)\b(?:[^>]|"[^"]+?"|'[^']+?')+?\b(?:src|data)\b="#,
            r#"(?:"([^"]+?)"[^>]*>|'([^']+?)'[^>]*>|([^ >]+?)(?: [^>]*>|>))"#,
        ))
        .expect("static pattern")
    })
}

/// Decodes entities; U+00A0 becomes a plain space. Text with an entity the
/// decoder rejects is left exactly as it was, as Anki does.
fn decode_entities(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    match htmlescape::decode_html(text) {
        Ok(decoded) => decoded.replace('\u{a0}', " "),
        Err(_) => text.to_string(),
    }
}

/// Field text without HTML, media file names kept (padded with spaces).
pub fn strip_html_keeping_media_names(field: &str) -> String {
    // Every pattern starts at a `<`: text without one has nothing for them
    // (and most sort fields are plain words, so this skips the regex engine).
    if !field.contains('<') {
        return decode_entities(field);
    }
    strip_with_patterns(field)
}

fn strip_with_patterns(field: &str) -> String {
    let with_names = media_tags().replace_all(field, |caps: &regex_lite::Captures<'_>| {
        let name = caps
            .get(1)
            .or_else(|| caps.get(2))
            .or_else(|| caps.get(3))
            .map(|m| m.as_str())
            .unwrap_or("");
        format!(" {name} ")
    });
    decode_entities(&html().replace_all(&with_names, ""))
}

/// First 4 bytes of the SHA-1 of the stripped first field, big-endian.
pub fn checksum(first_field: &str) -> u32 {
    checksum_of_stripped(&strip_html_keeping_media_names(first_field))
}

/// [`checksum`] of a first field already stripped (when it is also the
/// sort field, it is stripped once for both).
pub fn checksum_of_stripped(stripped: &str) -> u32 {
    let digest = Sha1::digest(stripped.as_bytes());
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The sort field: the stripped text of field `sort_idx` (empty if out of range).
pub fn sort_field(fields: &[&str], sort_idx: usize) -> String {
    fields
        .get(sort_idx)
        .map(|f| strip_html_keeping_media_names(f))
        .unwrap_or_default()
}

/// Removes ASCII control characters other than newline and tab.
pub fn clean_field(field: &str) -> String {
    field
        .chars()
        .filter(|&c| !c.is_ascii_control() || c == '\n' || c == '\t')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_a_tag_gives_what_the_patterns_give() {
        for text in [
            "",
            "plain",
            "a &amp; b &lt;i&gt; &nbsp;x",
            "broken &amp entity & more",
            "quotes \" ' > >> />",
            "ünïcödé 中文 \u{a0}",
            "line\nbreak\ttab",
        ] {
            assert!(!text.contains('<'));
            assert_eq!(
                strip_html_keeping_media_names(text),
                strip_with_patterns(text),
                "{text:?}"
            );
        }
    }

    #[test]
    fn strips_tags_blocks_and_comments() {
        assert_eq!(strip_html_keeping_media_names("test"), "test");
        assert_eq!(strip_html_keeping_media_names("t<b>e</b>st"), "test");
        assert_eq!(
            strip_html_keeping_media_names("so<SCRIPT>t<b>e</b>st</script>me"),
            "some"
        );
        assert_eq!(
            strip_html_keeping_media_names("a<!-- x <b> -->b<style>p{}</style>c"),
            "abc"
        );
        assert_eq!(strip_html_keeping_media_names("1 < 2"), "1 < 2");
        assert_eq!(
            strip_html_keeping_media_names("a&nbsp;b &amp; c&lt;d"),
            "a b & c<d"
        );
        // A broken entity leaves the whole text as it is, as in Anki.
        assert_eq!(
            strip_html_keeping_media_names("a&nbsp;b &bogus; c"),
            "a&nbsp;b &bogus; c"
        );
    }

    #[test]
    fn media_tags_keep_their_file_names() {
        assert_eq!(
            strip_html_keeping_media_names("<img src=foo.jpg>"),
            " foo.jpg "
        );
        assert_eq!(
            strip_html_keeping_media_names("<img src='foo.jpg'><html>"),
            " foo.jpg "
        );
        assert_eq!(
            strip_html_keeping_media_names(r#"x<IMG alt="a > b" src="pic one.png" width=3>y"#),
            "x pic one.png y"
        );
        assert_eq!(
            strip_html_keeping_media_names(r#"<audio data="s.mp3">"#),
            " s.mp3 "
        );
        assert_eq!(
            strip_html_keeping_media_names(r#"<source src="v.webm" type=x>"#),
            " v.webm "
        );
        assert_eq!(strip_html_keeping_media_names("<imgx src=a.png>"), "");
    }

    #[test]
    fn checksum_matches_anki() {
        // sha1("hello") = aaf4c61d...; Anki stores 0xaaf4c61d.
        assert_eq!(checksum("hello"), 0xaaf4c61d);
        assert_eq!(checksum("<b>hello</b>"), 0xaaf4c61d);
    }

    #[test]
    fn fields_lose_control_characters_only() {
        assert_eq!(clean_field("a\u{1}b\tc\nd\u{7f}"), "ab\tc\nd");
    }

    #[test]
    fn sort_field_out_of_range_is_empty() {
        assert_eq!(sort_field(&["<i>a</i>", "b"], 0), "a");
        assert_eq!(sort_field(&["a"], 3), "");
    }
}
