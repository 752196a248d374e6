//! Fuzz target: the replication frame decoder must never panic on peer bytes, and
//! whatever it accepts must be canonical: re-encoding the frame gives back exactly the
//! bytes it was decoded from, and those decode to the same frame again.
//!
//! The input is decoded as a stream of frames, the way a link reads them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::mirror::wire::{decode, encode};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let mut out = Vec::new();
    while let Ok(Some((frame, used))) = decode(rest) {
        assert!(used > 4 && used <= rest.len());
        out.clear();
        encode(&frame, &mut out);
        assert_eq!(out, &rest[..used], "a frame has one encoding");
        match decode(&out) {
            Ok(Some((again, n))) => {
                assert_eq!(n, out.len());
                assert_eq!(again, frame);
            }
            other => panic!("re-encoded frame does not decode: {other:?}"),
        }
        rest = &rest[used..];
    }
});
