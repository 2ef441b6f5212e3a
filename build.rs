//! Generates the Rust types for the protobuf blobs stored in a collection,
//! and for the two messages of a collection package (`backup export`), and
//! tells the crate which target it is built for (`--version`).
//!
//! The `.proto` files under `proto/` are compiled with `protox`, a pure-Rust
//! protobuf compiler, instead of the usual system `protoc`: the server is
//! cross-compiled for ARM/MIPS routers and NAS boxes, and requiring a
//! matching `protoc` binary on every build host is a needless hurdle.
//! `protox` yields a `FileDescriptorSet`, which `prost-build` turns into one
//! Rust module per protobuf package in `OUT_DIR` (included by
//! `src/storage/proto.rs`).

use std::error::Error;

const PROTO_FILES: [&str; 4] = [
    "proto/anki/notetypes.proto",
    "proto/anki/decks.proto",
    "proto/anki/deck_config.proto",
    "proto/anki/import_export.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");
    // `--version` names the target, so a user holding several downloaded
    // binaries can tell which one they have (src/version.rs).
    println!(
        "cargo:rustc-env=ANKI_SYNC_LITE_TARGET={}",
        std::env::var("TARGET")?
    );
    let descriptors = protox::compile(PROTO_FILES, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
