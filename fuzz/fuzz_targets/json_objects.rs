//! Fuzzes the schema-11 JSON decoders that turn what clients send in
//! `applyChanges` into stored rows (notetypes, decks, deck configs), and the
//! sync request bodies: any JSON must convert or be refused, never panic, and
//! whatever converts must convert back to JSON.
#![no_main]

use anki_sync_lite::collection::changes::ApplyChangesRequest;
use anki_sync_lite::collection::chunks::ApplyChunkRequest;
use anki_sync_lite::collection::graves::StartRequest;
use anki_sync_lite::storage::schema11;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<StartRequest>(data);
    let _ = serde_json::from_slice::<ApplyChunkRequest>(data);
    let _ = serde_json::from_slice::<ApplyChangesRequest>(data);
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(nt) = schema11::notetype_from_json(&value) {
        let _ = schema11::notetype_to_json(&nt);
    }
    if let Ok(deck) = schema11::deck_from_json(&value) {
        let _ = schema11::deck_to_json(&deck);
    }
    if let Ok(conf) = schema11::deckconfig_from_json(&value) {
        let _ = schema11::deckconfig_to_json(&conf);
    }
});
