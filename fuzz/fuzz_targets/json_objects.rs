//! Fuzzes the schema-11 JSON decoders that turn what clients send in
//! `applyChanges` into stored rows (notetypes, decks, deck configs), and the
//! streaming decoders of the sync request bodies: any JSON must convert or be
//! refused, never panic, and whatever converts must convert back to JSON.
#![no_main]

use std::time::Duration;

use anki_sync_lite::budget::{Account, LIMITS, MemoryBudget, POOL_BYTES};
use anki_sync_lite::collection::{changes, chunks, graves};
use anki_sync_lite::storage::schema11;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The request bodies, decoded as the server does, with batches dropped
    // instead of applied (storage is not what is fuzzed here).
    let budget = MemoryBudget::new(POOL_BYTES, Duration::ZERO);
    let account = Account::new(&budget, LIMITS);
    let _ = graves::receive_start(data, &account, &mut |_| Ok(()), &mut |_| Ok(()));
    let account = Account::new(&budget, LIMITS);
    let _ = graves::receive(data, &account, &mut |_| Ok(()));
    let account = Account::new(&budget, LIMITS);
    let _ = chunks::receive(data, &account, &mut |_| Ok(()));
    let account = Account::new(&budget, LIMITS);
    let _ = changes::receive(data, &account, &mut |_| Ok(()));

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
