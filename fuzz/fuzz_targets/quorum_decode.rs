//! Fuzz target: `tandem::quorum::wire::decode` must never panic on
//! arbitrary datagrams (quorum datagrams arrive from the network,
//! unauthenticated until the MAC is checked).
//!
//! Run with `cargo +nightly fuzz run quorum_decode` from the repository
//! root. Besides raw bytes, the target re-signs the input under the fixed
//! key so the fuzzer also reaches the body parser behind the MAC check, and
//! checks that whatever decodes re-encodes to the same bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem::quorum::wire::{decode, encode, MAC_LEN, MAX_DATAGRAM};

const KEY: &[u8] = b"fuzz-cluster-key";
const CLUSTER: &str = "fuzz";

fuzz_target!(|data: &[u8]| {
    // 1. Raw datagram: almost always rejected before or at the MAC check.
    let _ = decode(data, KEY, CLUSTER);

    // 2. Treat the input as a body and append a valid MAC, so the fuzzer
    //    explores the authenticated parser.
    if data.len() + MAC_LEN <= MAX_DATAGRAM {
        let signed = sign(data);
        if let Ok(p) = decode(&signed, KEY, CLUSTER) {
            // The encoding is canonical: what decodes re-encodes identically.
            let again = encode(&p, KEY).expect("decoded quorum packet must re-encode");
            assert_eq!(again, signed, "non-canonical encoding accepted");
        }
    }
});

fn sign(body: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(KEY).expect("any key length");
    mac.update(body);
    let mut out = body.to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}
