//! Fuzz target: what `tandem image update` reads from a downloaded file before it
//! trusts it, the detached signature (`.sig` text) and the GPT (header, entry array
//! and their CRCs), must never panic, whatever the download holds.
//!
//! Run with `cargo +nightly fuzz run image_headers` (or `scripts/fuzz-smoke.sh`).

#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tandem::image::parse_gpt;
use tandem::image::sign::SignatureFile;

fuzz_target!(|data: &[u8]| {
    let _ = SignatureFile::parse(&String::from_utf8_lossy(data));
    let _ = parse_gpt(&mut Cursor::new(data), Path::new("fuzz.img"));
});
