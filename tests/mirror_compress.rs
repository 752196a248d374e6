//! zstd compression on a replication link end to end: two `Mirror`s on loopback TCP
//! with temporary backing files replicate text and random data byte for byte over a
//! compressed link (plain and encrypted, and with only one side asking), and the
//! primary's status counts the compression.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tandem::bench::mirror::mixed::mail_text;
use tandem::config::ReplicationMode;
use tandem::event::EventLog;
use tandem::mirror::generation::{OwnershipEpoch, SplitBrainPolicy};
use tandem::mirror::replica::{Mirror, MirrorSpec, PeerSpec};
use tandem::mirror::wire::compress::Compress;
use tandem::mirror::Export;
use tandem::status::LinkState;

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{free_tcp_addr, wait_until};

const KEY: &[u8] = b"cluster key for the mirror tests";
const SIZE: u64 = 8 << 20;

fn spec(
    dir: &std::path::Path,
    me: &str,
    peer: (&str, SocketAddr),
    listen: SocketAddr,
    compress: Compress,
    encrypt: bool,
) -> MirrorSpec {
    MirrorSpec {
        name: "vol0".into(),
        cluster: "test".into(),
        local_node: me.into(),
        key: KEY.to_vec(),
        backing: dir.join(format!("{me}.raw")),
        size: Some(SIZE),
        meta_dir: dir.join(format!("meta-{me}")),
        metadata: tandem::mirror::replica::meta::MetaPlacement::External,
        listen,
        peers: vec![PeerSpec {
            node: peer.0.into(),
            address: peer.1,
            mode: ReplicationMode::Sync,
            rate_limit: None,
            queue_bytes: 64 << 20,
            lag_budget: None,
            encrypt,
            compress,
            timeout: Duration::from_secs(6),
        }],
        split_brain: SplitBrainPolicy::Disconnect,
        fencing: false,
    }
}

fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut v);
    v
}

/// Runs a two-node mirror with the given settings and checks replication and counters.
fn replicate(a_compress: Compress, b_compress: Compress, encrypt: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (la, lb) = (free_tcp_addr(), free_tcp_addr());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let a: Arc<Mirror> = rt
        .block_on(Mirror::open(
            spec(dir.path(), "a", ("b", lb), la, a_compress, encrypt),
            EventLog::in_memory("a"),
        ))
        .unwrap();
    let b: Arc<Mirror> = rt
        .block_on(Mirror::open(
            spec(dir.path(), "b", ("a", la), lb, b_compress, encrypt),
            EventLog::in_memory("b"),
        ))
        .unwrap();
    rt.block_on(a.promote(OwnershipEpoch(0))).unwrap();
    wait_until("a and b connected", Duration::from_secs(20), || {
        let p = a.status().peers[0].clone();
        p.connection == LinkState::Connected && p.resync.is_none() && p.out_of_sync_bytes == 0
    });
    let t = mail_text(2 << 20, 7);
    let r = random(1 << 20);
    rt.block_on(a.write(0, t.clone(), false)).unwrap();
    rt.block_on(a.write(4 << 20, r.clone(), false)).unwrap();
    let bb = dir.path().join("b.raw");
    wait_until("b holds the writes", Duration::from_secs(20), || {
        let got = std::fs::read(&bb).unwrap_or_default();
        got.len() >= (5 << 20) && got[..t.len()] == t[..] && got[4 << 20..5 << 20] == r[..]
    });
    let c = a.status().peers[0]
        .compression
        .clone()
        .expect("compression counted");
    assert!(c.ratio > 1.0, "{c:?}");
    assert!(c.raw_bytes >= (3 << 20) as u64, "{c:?}");
    // The text shrinks: well under what was written.
    assert!(c.wire_bytes < c.raw_bytes * 3 / 4, "{c:?}");
    drop((a, b));
    rt.shutdown_timeout(Duration::from_secs(2));
}

#[test]
fn compressed_link_replicates_text_and_random_data() {
    replicate(Compress::Zstd, Compress::Zstd, false);
}

#[test]
fn one_side_asking_is_enough_either_way() {
    replicate(Compress::Zstd, Compress::None, false);
    replicate(Compress::None, Compress::Zstd, false);
}

#[test]
fn compressed_and_encrypted_link_replicates() {
    replicate(Compress::Zstd, Compress::Zstd, true);
}
