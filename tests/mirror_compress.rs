//! zstd compression on a replication link end to end: two `Mirror`s on loopback TCP
//! with temporary backing files replicate text and random data byte for byte over a
//! compressed link (plain and encrypted, and with only one side asking), and the
//! primary's status counts the compression. A peer that lies (it holds the key) with
//! hostile compressed frames loses its link and writes nothing.

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

#[path = "common/stand_in.rs"]
mod stand_in;
use stand_in::stand_in_params;

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

/// A `WriteZstd` frame (type 21) claiming `claimed` decompressed bytes at offset 0,
/// followed by `body` as its zstd frame, whatever that really holds.
fn write_zstd(claimed: usize, body: &[u8]) -> Vec<u8> {
    let mut plain = Vec::new();
    tandem::mirror::wire::encode(
        &tandem::mirror::wire::Frame::Write {
            seq: 1,
            epoch: OwnershipEpoch(1),
            offset: 0,
            fua: false,
            data: vec![0x5a; claimed],
        },
        &mut plain,
    );
    let mut frame = plain[..plain.len() - claimed].to_vec();
    frame[4] = 21;
    frame.extend_from_slice(body);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    frame
}

/// A peer that holds the cluster key but lies: after an honest handshake on a
/// compressed link it sends a compressed write that is not what it claims. Each time
/// the mirror drops the link, writes nothing and goes on accepting links.
#[test]
fn a_lying_peer_s_hostile_compressed_frames_drop_the_link_and_write_nothing() {
    use tandem::mirror::wire::{handshake, Frame, MAX_DATA};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (la, lb) = (free_tcp_addr(), free_tcp_addr());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let events = EventLog::in_memory("b");
    let b: Arc<Mirror> = rt
        .block_on(Mirror::open(
            spec(dir.path(), "b", ("a", la), lb, Compress::Zstd, false),
            events.clone(),
        ))
        .unwrap();
    let backing = dir.path().join("b.raw");
    let before = std::fs::read(&backing).unwrap();
    let zstd = |data: &[u8]| zstd::bulk::compress(data, 3).unwrap();
    let hostile = [
        ("not zstd at all", write_zstd(4096, &[0xab; 200])),
        (
            "more than it claims",
            write_zstd(4096, &zstd(&[0; 64 << 10])),
        ),
        ("less than it claims", write_zstd(4096, &zstd(&[1; 100]))),
        (
            "a claim over the frame limit",
            write_zstd(MAX_DATA + 1, &zstd(&[2; 10])),
        ),
    ];
    for (what, frame) in hostile {
        let dropped = rt.block_on(async {
            let stream = tokio::net::TcpStream::connect(lb).await.unwrap();
            let (r, mut w) = stream.into_split();
            let params = stand_in_params("a", KEY, Compress::Zstd);
            let (mut reader, mut writer, hello) = handshake(r, &mut w, &params, Some("b"))
                .await
                .unwrap_or_else(|e| panic!("{what}: handshake: {e}"));
            assert_eq!(hello.compress, Compress::Zstd, "{what}");
            // An honest-looking session first: b's own state, as ours, so b connects.
            let Ok(Frame::State(mut state)) = reader.recv().await else {
                panic!("{what}: b did not send its state first");
            };
            state.node = "a".into();
            writer.send(&Frame::State(state)).await.unwrap();
            drop(writer);
            let t0 = std::time::Instant::now();
            while b.status().peers[0].connection != LinkState::Connected {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "{what}: never connected"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            w.write_all(&frame).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), async {
                while reader.recv().await.is_ok() {}
            })
            .await
            .is_ok()
        });
        assert!(dropped, "{what}: the link was not dropped");
    }
    assert!(
        std::fs::read(&backing).unwrap() == before,
        "a hostile frame changed the backing file"
    );
    // One disconnect per frame, each a link error that says what was wrong.
    let down: Vec<(String, String)> = events
        .since(0, 1000)
        .iter()
        .filter(|e| e.kind == tandem::event::EventKind::MirrorDisconnected)
        .map(|e| {
            let f = |k: &str| e.fields.get(k).cloned().unwrap_or_default();
            (f("reason"), f("detail"))
        })
        .collect();
    assert_eq!(down.len(), 4, "{down:?}");
    for (reason, detail) in &down[..3] {
        assert_eq!(reason, "error");
        assert!(
            detail.starts_with("malformed frame: compressed payload"),
            "{detail}"
        );
    }
    assert!(down[3].1.contains("over the limit"), "{:?}", down[3]);
    assert_ne!(b.status().peers[0].connection, LinkState::Connected);
    drop(b);
    rt.shutdown_timeout(Duration::from_secs(2));
}
