//! Fuzz target: the replication frame decoder of a compressed link (zstd frames 21 and
//! 22) must never panic nor allocate past `MAX_DATA` on peer bytes, and whatever it
//! accepts must survive a round trip: re-encoded as a compressed link sends it, it
//! decodes to the same frame.
//!
//! The input is decoded as a stream of frames, the way a compressed link reads them.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::mirror::wire::compress::{Packer, Unpacker};
use tandem::mirror::wire::{decode_compressed, encode_compressed};

fuzz_target!(|data: &[u8]| {
    let mut unpack = Unpacker::new().expect("zstd context");
    let mut pack = Packer::new().expect("zstd context");
    let mut rest = data;
    let mut out = Vec::new();
    while let Ok(Some((frame, used))) = decode_compressed(rest, &mut unpack) {
        assert!(used > 4 && used <= rest.len());
        out.clear();
        encode_compressed(&frame, &mut pack, &mut out);
        match decode_compressed(&out, &mut unpack) {
            Ok(Some((again, n))) => {
                assert_eq!(n, out.len());
                assert_eq!(again, frame);
            }
            other => panic!("re-encoded frame does not decode: {other:?}"),
        }
        rest = &rest[used..];
    }
});
