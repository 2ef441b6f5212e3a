//! Rust types for the protobuf blobs inside a schema-18 collection.
//!
//! The types are generated at build time (see `build.rs`) from our trimmed
//! copies of Anki's `.proto` definitions under `proto/anki/`. Field numbers
//! are an interface with real clients: a blob written here must decode in
//! Anki and vice versa, which the tests below pin down with bytes taken from
//! a collection the reference library created.
//!
//! | column | type |
//! |---|---|
//! | `notetypes.config` | [`notetypes::notetype::Config`] |
//! | `fields.config` | [`notetypes::notetype::field::Config`] |
//! | `templates.config` | [`notetypes::notetype::template::Config`] |
//! | `decks.common` | [`decks::deck::Common`] |
//! | `decks.kind` | [`decks::deck::KindContainer`] |
//! | `deck_config.config` | [`deck_config::deck_config::Config`] |

/// Package `anki.notetypes`: notetype, field and template configs.
pub mod notetypes {
    include!(concat!(env!("OUT_DIR"), "/anki.notetypes.rs"));
}

/// Package `anki.decks`: the shared and kind-specific parts of a deck.
pub mod decks {
    include!(concat!(env!("OUT_DIR"), "/anki.decks.rs"));
}

/// Package `anki.deck_config`: a deck options preset.
///
/// The message `DeckConfig` generates an inner module `deck_config` for its
/// nested types, hence the repeated name (`deck_config::deck_config::Config`).
#[allow(clippy::module_inception)]
pub mod deck_config {
    include!(concat!(env!("OUT_DIR"), "/anki.deck_config.rs"));
}

#[cfg(test)]
mod tests {
    use super::deck_config::deck_config;
    use super::decks::deck;
    use super::notetypes::notetype;
    use prost::Message;

    /// The "Default" preset blob of a collection created by Anki 26.9.
    const DEFAULT_DECK_CONFIG_HEX: &str = "0a080000803f00002041120400002041221c0000803f0000803f0000803f0000803f0000803f0000803f0000803f481450c8015d00002040656666a63f6d9a99993f7d0000803f8001949d02880101900101980104a80101b00108c0013cad026666663fc5026666663fe00201";

    fn unhex(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("test vector is hex"))
            .collect()
    }

    /// Decode `bytes` as `M`, re-encode, and require identical bytes.
    fn round_trip<M: Message + Default>(bytes: &[u8]) -> M {
        let msg = M::decode(bytes).expect("decodes");
        assert_eq!(msg.encode_to_vec(), bytes);
        msg
    }

    #[test]
    fn default_deck_config_round_trips() {
        let config: deck_config::Config = round_trip(&unhex(DEFAULT_DECK_CONFIG_HEX));
        assert_eq!(config.learn_steps, [1.0, 10.0]);
        assert_eq!(config.relearn_steps, [10.0]);
        assert_eq!(config.easy_days_percentages, [1.0; 7]);
        assert_eq!(config.new_per_day, 20);
        assert_eq!(config.reviews_per_day, 200);
        assert_eq!(config.initial_ease, 2.5);
        assert_eq!(config.maximum_review_interval, 36500);
        assert_eq!(
            config.leech_action(),
            deck_config::config::LeechAction::TagOnly
        );
        assert_eq!(config.desired_retention, 0.9);
        assert!(config.wait_for_audio);
        assert!(config.other.is_empty());
    }

    #[test]
    fn default_deck_blobs_round_trip() {
        let common: deck::Common = round_trip(&unhex("08011001"));
        assert!(common.study_collapsed && common.browser_collapsed);

        let kind: deck::KindContainer = round_trip(&unhex("0a020801"));
        match kind.kind {
            Some(deck::kind_container::Kind::Normal(normal)) => assert_eq!(normal.config_id, 1),
            other => panic!("expected a normal deck, got {other:?}"),
        }
    }

    #[test]
    fn all_default_messages_encode_to_nothing() {
        assert!(notetype::Config::default().encode_to_vec().is_empty());
        assert!(
            notetype::field::Config::default()
                .encode_to_vec()
                .is_empty()
        );
        assert!(
            notetype::template::Config::default()
                .encode_to_vec()
                .is_empty()
        );
        assert!(deck::Common::default().encode_to_vec().is_empty());
        assert!(deck::KindContainer::default().encode_to_vec().is_empty());
        assert!(deck_config::Config::default().encode_to_vec().is_empty());
    }

    #[test]
    fn optional_fields_keep_presence_of_zero() {
        // Cloze's "Text" field: tag 0 must still be written (bytes `50 00`).
        let field = notetype::field::Config {
            tag: Some(0),
            ..Default::default()
        };
        assert_eq!(field.encode_to_vec(), [0x50, 0x00]);
    }

    #[test]
    fn other_uses_field_255() {
        let common = deck::Common {
            other: b"{}".to_vec(),
            ..Default::default()
        };
        assert_eq!(common.encode_to_vec(), [0xfa, 0x0f, 0x02, b'{', b'}']);
    }
}
