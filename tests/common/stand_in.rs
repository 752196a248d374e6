//! Shared by the test files that play a stand-in mirror peer over the wire protocol
//! (`tests/mirror.rs`, `tests/mirror_compress.rs`): the handshake parameters such a
//! peer presents for mirror `vol0` of cluster `test`.

#![allow(dead_code)]

use tandem::mirror::wire::compress::Compress;
use tandem::mirror::wire::HandshakeParams;

/// What a stand-in peer named `local_node`, holding the cluster `key`, offers in the
/// handshake: no encryption, the given compression.
pub fn stand_in_params(local_node: &str, key: &[u8], compress: Compress) -> HandshakeParams {
    HandshakeParams {
        cluster: "test".into(),
        mirror: "vol0".into(),
        local_node: local_node.into(),
        key: key.to_vec(),
        encrypt: false,
        compress,
    }
}
