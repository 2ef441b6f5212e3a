//! The default objects of a brand-new collection: the "Default" deck and
//! options preset, and Anki's stock notetypes.
//!
//! A client that chooses "download" for a fresh account receives these, so
//! they mirror what Anki itself puts into a new collection (English names,
//! as a server has no UI language). Builders here are pure; ids are assigned
//! by the caller (`create.rs`), which keeps them testable.

use super::proto::deck_config::deck_config;
use super::proto::decks::deck;
use super::proto::notetypes::notetype;
use super::proto::notetypes::stock_notetype::OriginalStockKind;
use notetype::config::card_requirement::Kind as ReqKind;
use notetype::config::{CardRequirement, Kind};

/// The options preset every deck falls back to; id 1, never deleted.
pub(crate) fn default_deck_config() -> deck_config::Config {
    use deck_config::config::LeechAction;
    deck_config::Config {
        learn_steps: vec![1.0, 10.0],
        relearn_steps: vec![10.0],
        easy_days_percentages: vec![1.0; 7],
        new_per_day: 20,
        reviews_per_day: 200,
        initial_ease: 2.5,
        easy_multiplier: 1.3,
        hard_multiplier: 1.2,
        lapse_multiplier: 0.0,
        interval_multiplier: 1.0,
        maximum_review_interval: 36_500,
        minimum_lapse_interval: 1,
        graduating_interval_good: 1,
        graduating_interval_easy: 4,
        leech_action: LeechAction::TagOnly as i32,
        leech_threshold: 8,
        cap_answer_time_to_secs: 60,
        desired_retention: 0.9,
        historical_retention: 0.9,
        wait_for_audio: true,
        ..Default::default()
    }
}

/// `decks.common` of the "Default" deck: collapsed in both deck lists, as
/// Anki creates it.
pub(crate) fn default_deck_common() -> deck::Common {
    deck::Common {
        study_collapsed: true,
        browser_collapsed: true,
        ..Default::default()
    }
}

/// `decks.kind` of the "Default" deck: a normal deck using preset 1.
pub(crate) fn default_deck_kind() -> deck::KindContainer {
    deck::KindContainer {
        kind: Some(deck::kind_container::Kind::Normal(deck::Normal {
            config_id: 1,
            ..Default::default()
        })),
    }
}

/// A notetype before it gets ids: rows for `notetypes`, `fields` and
/// `templates`, in `ord` order.
#[derive(Debug, Clone)]
pub(crate) struct NewNotetype {
    pub name: &'static str,
    pub config: notetype::Config,
    pub fields: Vec<(&'static str, notetype::field::Config)>,
    pub templates: Vec<(&'static str, notetype::template::Config)>,
}

/// All stock notetypes, in the order Anki adds them (the first is the
/// collection's current notetype).
pub(crate) fn stock_notetypes() -> Vec<NewNotetype> {
    vec![
        basic(),
        basic_and_reversed(),
        basic_optional_reversed(),
        basic_typing(),
        cloze(),
        image_occlusion(),
    ]
}

const CARD_CSS: &str = "\
.card {
    font-family: arial;
    font-size: 20px;
    line-height: 1.5;
    text-align: center;
    color: black;
    background-color: white;
}
";

const CLOZE_CSS: &str = "\
.cloze {
    font-weight: bold;
    color: blue;
}
.nightMode .cloze {
    color: lightblue;
}
";

const IMAGE_OCCLUSION_CSS: &str = "\
#image-occlusion-canvas {
    --inactive-shape-color: #ffeba2;
    --active-shape-color: #ff8e8e;
    --inactive-shape-border: 1px #212121;
    --active-shape-border: 1px #212121;
    --highlight-shape-color: #ff8e8e00;
    --highlight-shape-border: 1px #ff8e8e;
}

.card {
    font-family: arial;
    font-size: 20px;
    text-align: center;
    color: black;
    background-color: white;
}
";

const LATEX_PRE: &str = "\
\\documentclass[12pt]{article}
\\special{papersize=3in,5in}
\\usepackage[utf8]{inputenc}
\\usepackage{amssymb,amsmath}
\\pagestyle{empty}
\\setlength{\\parindent}{0in}
\\begin{document}
";

const LATEX_POST: &str = "\\end{document}";

const FRONT_THEN_BACK: &str = "{{FrontSide}}\n\n<hr id=answer>\n\n{{Back}}";
const FRONT_THEN_FRONT: &str = "{{FrontSide}}\n\n<hr id=answer>\n\n{{Front}}";

fn notetype_config(kind: Kind, stock: OriginalStockKind, css: &str) -> notetype::Config {
    notetype::Config {
        kind: kind as i32,
        css: css.to_owned(),
        latex_pre: LATEX_PRE.to_owned(),
        latex_post: LATEX_POST.to_owned(),
        original_stock_kind: stock as i32,
        ..Default::default()
    }
}

/// `reqs` entry: card `card_ord` needs `kind` of the listed fields. Clients
/// no longer read this, but it is written as Anki writes it.
fn req(card_ord: u32, kind: ReqKind, field_ords: &[u32]) -> CardRequirement {
    CardRequirement {
        card_ord,
        kind: kind as i32,
        field_ords: field_ords.to_vec(),
    }
}

/// A plain field as the stock notetypes use it.
fn field(name: &'static str) -> (&'static str, notetype::field::Config) {
    let config = notetype::field::Config {
        font_name: "Arial".to_owned(),
        font_size: 20,
        ..Default::default()
    };
    (name, config)
}

/// A field with a special role that clients look up by `tag`.
fn tagged_field(
    name: &'static str,
    tag: u32,
    prevent_deletion: bool,
) -> (&'static str, notetype::field::Config) {
    let (name, mut config) = field(name);
    config.tag = Some(tag);
    config.prevent_deletion = prevent_deletion;
    (name, config)
}

fn template(
    name: &'static str,
    q_format: &str,
    a_format: &str,
) -> (&'static str, notetype::template::Config) {
    let config = notetype::template::Config {
        q_format: q_format.to_owned(),
        a_format: a_format.to_owned(),
        ..Default::default()
    };
    (name, config)
}

fn basic() -> NewNotetype {
    let mut config = notetype_config(Kind::Normal, OriginalStockKind::Basic, CARD_CSS);
    config.reqs = vec![req(0, ReqKind::Any, &[0])];
    NewNotetype {
        name: "Basic",
        config,
        fields: vec![field("Front"), field("Back")],
        templates: vec![template("Card 1", "{{Front}}", FRONT_THEN_BACK)],
    }
}

fn basic_and_reversed() -> NewNotetype {
    let mut config = notetype_config(Kind::Normal, OriginalStockKind::BasicAndReversed, CARD_CSS);
    config.reqs = vec![req(0, ReqKind::Any, &[0]), req(1, ReqKind::Any, &[1])];
    NewNotetype {
        name: "Basic (and reversed card)",
        config,
        fields: vec![field("Front"), field("Back")],
        templates: vec![
            template("Card 1", "{{Front}}", FRONT_THEN_BACK),
            template("Card 2", "{{Back}}", FRONT_THEN_FRONT),
        ],
    }
}

fn basic_optional_reversed() -> NewNotetype {
    let mut config = notetype_config(
        Kind::Normal,
        OriginalStockKind::BasicOptionalReversed,
        CARD_CSS,
    );
    // The reverse card needs both "Back" and a non-empty "Add Reverse".
    config.reqs = vec![req(0, ReqKind::Any, &[0]), req(1, ReqKind::All, &[1, 2])];
    NewNotetype {
        name: "Basic (optional reversed card)",
        config,
        fields: vec![field("Front"), field("Back"), field("Add Reverse")],
        templates: vec![
            template("Card 1", "{{Front}}", FRONT_THEN_BACK),
            template(
                "Card 2",
                "{{#Add Reverse}}{{Back}}{{/Add Reverse}}",
                FRONT_THEN_FRONT,
            ),
        ],
    }
}

fn basic_typing() -> NewNotetype {
    let mut config = notetype_config(Kind::Normal, OriginalStockKind::BasicTyping, CARD_CSS);
    config.reqs = vec![req(0, ReqKind::Any, &[0, 1])];
    NewNotetype {
        name: "Basic (type in the answer)",
        config,
        fields: vec![field("Front"), field("Back")],
        templates: vec![template(
            "Card 1",
            "{{Front}}\n\n{{type:Back}}",
            "{{Front}}\n\n<hr id=answer>\n\n{{type:Back}}",
        )],
    }
}

fn cloze() -> NewNotetype {
    let css = format!("{CARD_CSS}{CLOZE_CSS}");
    let mut config = notetype_config(Kind::Cloze, OriginalStockKind::Cloze, &css);
    config.reqs = vec![req(0, ReqKind::Any, &[0])];
    NewNotetype {
        name: "Cloze",
        config,
        // Tags 0 and 1 are how clients recognise the cloze text and extra.
        fields: vec![
            tagged_field("Text", 0, true),
            tagged_field("Back Extra", 1, false),
        ],
        templates: vec![template(
            "Cloze",
            "{{cloze:Text}}",
            "{{cloze:Text}}<br>\n{{Back Extra}}",
        )],
    }
}

const IMAGE_OCCLUSION_FRONT: &str = r#"{{#Header}}<div>{{Header}}</div>{{/Header}}
<div style="display: none">{{cloze:Occlusion}}</div>
<div id="err"></div>
<div id="image-occlusion-container">
    {{Image}}
    <canvas id="image-occlusion-canvas"></canvas>
</div>
<script>
try {
    anki.imageOcclusion.setup();
} catch (exc) {
    document.getElementById("err").innerHTML = `Error loading image occlusion. Is your Anki version up to date?<br><br>${exc}`;
}
</script>
"#;

const IMAGE_OCCLUSION_BACK_EXTRA: &str = r#"
<div><button id="toggle">Toggle Masks</button></div>
{{#Back Extra}}<div>{{Back Extra}}</div>{{/Back Extra}}
"#;

fn image_occlusion() -> NewNotetype {
    let mut config = notetype_config(
        Kind::Cloze,
        OriginalStockKind::ImageOcclusion,
        IMAGE_OCCLUSION_CSS,
    );
    config.reqs = vec![req(0, ReqKind::Any, &[0, 1, 2])];
    let back = format!("{IMAGE_OCCLUSION_FRONT}{IMAGE_OCCLUSION_BACK_EXTRA}");
    NewNotetype {
        name: "Image Occlusion",
        config,
        // Clients find the occlusion, image, header, ... fields by tag.
        fields: vec![
            tagged_field("Occlusion", 0, true),
            tagged_field("Image", 1, true),
            tagged_field("Header", 2, true),
            tagged_field("Back Extra", 3, true),
            tagged_field("Comments", 4, false),
        ],
        templates: vec![template("Image Occlusion", IMAGE_OCCLUSION_FRONT, &back)],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn default_deck_config_matches_anki_bytes() {
        assert_eq!(
            hex(&default_deck_config().encode_to_vec()),
            "0a080000803f00002041120400002041221c0000803f0000803f0000803f0000803f0000803f0000803f0000803f481450c8015d00002040656666a63f6d9a99993f7d0000803f8001949d02880101900101980104a80101b00108c0013cad026666663fc5026666663fe00201"
        );
    }

    #[test]
    fn default_deck_matches_anki_bytes() {
        assert_eq!(hex(&default_deck_common().encode_to_vec()), "08011001");
        assert_eq!(hex(&default_deck_kind().encode_to_vec()), "0a020801");
    }

    /// `notetypes.config` of Anki 26.9's "Basic", minus the CSS and LaTeX
    /// strings (checked separately): kind/reqs/original stock kind bytes.
    #[test]
    fn basic_config_tail_matches_anki_bytes() {
        let mut config = basic().config;
        config.css.clear();
        config.latex_pre.clear();
        config.latex_post.clear();
        assert_eq!(hex(&config.encode_to_vec()), "420510011a01004801");
    }

    #[test]
    fn cloze_text_field_bytes_match_anki() {
        let (_, mut text) = cloze().fields.remove(0);
        text.id = None;
        assert_eq!(hex(&text.encode_to_vec()), "1a05417269616c201450005801");
    }

    #[test]
    fn stock_shapes() {
        let shapes: Vec<_> = stock_notetypes()
            .iter()
            .map(|nt| (nt.name, nt.fields.len(), nt.templates.len()))
            .collect();
        assert_eq!(
            shapes,
            [
                ("Basic", 2, 1),
                ("Basic (and reversed card)", 2, 2),
                ("Basic (optional reversed card)", 3, 2),
                ("Basic (type in the answer)", 2, 1),
                ("Cloze", 2, 1),
                ("Image Occlusion", 5, 1),
            ]
        );
    }
}
