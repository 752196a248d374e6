//! Tests of the wire format: codec round trips and strictness (property-based), and the
//! handshake and links over in-memory duplex pipes.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use tokio::io::{split, AsyncWrite, DuplexStream, ReadHalf, WriteHalf};

use super::*;

// ---------------------------------------------------------------------------------
// Codec

fn arb_disk() -> impl Strategy<Value = DiskState> {
    prop_oneof![
        Just(DiskState::UpToDate),
        Just(DiskState::Outdated),
        Just(DiskState::Inconsistent),
        Just(DiskState::SyncSource),
        Just(DiskState::SyncTarget),
    ]
}

/// Names of at most 60 chars (240 bytes): they fit the wire's 255.
fn arb_name() -> impl Strategy<Value = String> {
    "\\PC{0,60}"
}

fn arb_state() -> impl Strategy<Value = CopyState> {
    (
        arb_name(),
        arb_name(),
        any::<u64>(),
        any::<u64>(),
        btree_map(arb_name(), any::<u64>(), 0..=MAX_BITMAP_PEERS),
        vec(any::<u64>(), 0..=HISTORY_LEN),
        arb_disk(),
        any::<bool>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                node,
                mirror,
                size_bytes,
                current,
                bitmap,
                history,
                disk,
                primary,
                changed,
                epoch,
            )| {
                CopyState {
                    node,
                    mirror,
                    size_bytes,
                    generations: Generations {
                        current,
                        bitmap,
                        history,
                    },
                    disk,
                    primary,
                    changed_blocks: changed,
                    epoch: OwnershipEpoch(epoch),
                    resolving: false,
                }
            },
        )
}

fn arb_epoch() -> impl Strategy<Value = OwnershipEpoch> {
    any::<u64>().prop_map(OwnershipEpoch)
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        arb_state().prop_map(Frame::State),
        (
            any::<u64>(),
            arb_epoch(),
            any::<u64>(),
            any::<bool>(),
            vec(any::<u8>(), 0..3000)
        )
            .prop_map(|(seq, epoch, offset, fua, data)| Frame::Write {
                seq,
                epoch,
                offset,
                fua,
                data
            }),
        (any::<u64>(), arb_epoch(), any::<u64>(), any::<u32>()).prop_map(
            |(seq, epoch, offset, len)| Frame::Trim {
                seq,
                epoch,
                offset,
                len
            }
        ),
        (any::<u64>(), arb_epoch(), any::<u64>(), any::<u32>()).prop_map(
            |(seq, epoch, offset, len)| Frame::Zeroes {
                seq,
                epoch,
                offset,
                len
            }
        ),
        (any::<u64>(), arb_epoch()).prop_map(|(seq, epoch)| Frame::Flush { seq, epoch }),
        any::<u64>().prop_map(|seq| Frame::Ack { seq }),
        (
            any::<u64>(),
            btree_set("[a-z]{1,8}", 0..4).prop_map(|s| s.into_iter().collect::<Vec<String>>())
        )
            .prop_map(|(upto, holders)| Frame::PeerAck { upto, holders }),
        vec((0u64..1 << 20, 1u32..100), 0..50).prop_map(|pairs| {
            let mut next = 0u64;
            let runs = pairs
                .into_iter()
                .map(|(gap, n)| {
                    let first = next + gap;
                    next = first + u64::from(n) + 1;
                    (first, n)
                })
                .collect();
            Frame::BitmapRuns { runs }
        }),
        any::<u64>().prop_map(|dirty_blocks| Frame::BitmapEnd { dirty_blocks }),
        (any::<u64>(), any::<u32>()).prop_map(|(seq, errno)| Frame::Nack { seq, errno }),
        (arb_epoch(), any::<bool>(), any::<u64>()).prop_map(|(epoch, full, total_bytes)| {
            Frame::ResyncBegin {
                epoch,
                full,
                total_bytes,
            }
        }),
        (arb_epoch(), any::<u64>(), vec(any::<u8>(), 0..3000)).prop_map(|(epoch, offset, data)| {
            Frame::ResyncData {
                epoch,
                offset,
                data,
            }
        }),
        (arb_epoch(), any::<u64>(), any::<u32>())
            .prop_map(|(epoch, offset, len)| { Frame::ResyncZero { epoch, offset, len } }),
        (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| Frame::ResyncAck { offset, len }),
        (arb_epoch(), any::<u64>())
            .prop_map(|(epoch, generation)| Frame::ResyncEnd { epoch, generation }),
        (any::<u64>(), any::<u32>()).prop_map(|(offset, len)| Frame::VerifyRequest { offset, len }),
        (any::<u64>(), vec(any::<[u8; 32]>(), 0..40))
            .prop_map(|(offset, digests)| Frame::VerifyDigests { offset, digests }),
        any::<u64>().prop_map(|nonce| Frame::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Frame::Pong { nonce }),
        arb_name().prop_map(|reason| Frame::Bye { reason }),
    ]
}

fn encoded(frame: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out);
    out
}

proptest! {
    #[test]
    fn every_variant_round_trips(frame in arb_frame()) {
        let bytes = encoded(&frame);
        let (back, used) = decode(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(&back, &frame);
        // Two frames back to back: the first is decoded alone.
        let mut two = bytes.clone();
        encode(&Frame::Ping { nonce: 7 }, &mut two);
        let (first, used) = decode(&two).unwrap().unwrap();
        prop_assert_eq!(&first, &frame);
        prop_assert_eq!(decode(&two[used..]).unwrap().unwrap().0, Frame::Ping { nonce: 7 });
    }

    #[test]
    fn every_strict_prefix_needs_more(frame in arb_frame()) {
        let bytes = encoded(&frame);
        for n in 0..bytes.len() {
            prop_assert!(matches!(decode(&bytes[..n]), Ok(None)), "prefix of {} bytes", n);
        }
    }

    #[test]
    fn corruption_never_panics(
        frame in arb_frame(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = encoded(&frame);
        for (at, x) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= x;
        }
        let end = cut.index(bytes.len() + 1);
        if let Ok(Some((f, n))) = decode(&bytes[..end]) {
            // Whatever decodes is canonical: it re-encodes to the same bytes.
            prop_assert_eq!(encoded(&f), bytes[..n].to_vec());
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in vec(any::<u8>(), 0..600)) {
        if let Ok(Some((f, n))) = decode(&bytes) {
            prop_assert_eq!(encoded(&f), bytes[..n].to_vec());
        }
    }
}

#[test]
fn epochs_are_on_the_wire_where_the_table_says() {
    // Write: len, type, seq, epoch, offset, fua, payload length, payload.
    let bytes = encoded(&Frame::Write {
        seq: 1,
        epoch: OwnershipEpoch(0x0102_0304_0506_0708),
        offset: 9,
        fua: true,
        data: vec![0xee; 2],
    });
    let mut want = vec![0, 0, 0, 32, ty::WRITE];
    want.extend_from_slice(&1u64.to_be_bytes());
    want.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    want.extend_from_slice(&9u64.to_be_bytes());
    want.extend_from_slice(&[1, 0, 0, 0, 2, 0xee, 0xee]);
    assert_eq!(bytes, want);
    // Flush: seq then epoch. ResyncEnd: epoch then generation.
    let flush = encoded(&Frame::Flush {
        seq: 5,
        epoch: OwnershipEpoch(4),
    });
    assert_eq!(flush[..5], [0, 0, 0, 17, ty::FLUSH]);
    assert_eq!(flush[13..], 4u64.to_be_bytes());
    let end = encoded(&Frame::ResyncEnd {
        epoch: OwnershipEpoch(4),
        generation: 6,
    });
    assert_eq!(end[5..13], 4u64.to_be_bytes());
    // State: the epoch comes before resolving, and it survives the round trip.
    let state = CopyState {
        node: "a".into(),
        mirror: "m".into(),
        size_bytes: 1,
        generations: Generations::new(),
        disk: DiskState::UpToDate,
        primary: true,
        changed_blocks: 0,
        epoch: OwnershipEpoch(4),
        resolving: false,
    };
    let bytes = encoded(&Frame::State(state.clone()));
    assert_eq!(bytes[bytes.len() - 9..bytes.len() - 1], 4u64.to_be_bytes());
    assert_eq!(decode(&bytes).unwrap().unwrap().0, Frame::State(state));
    for frame in [
        Frame::Trim {
            seq: 1,
            epoch: OwnershipEpoch(3),
            offset: 0,
            len: 1,
        },
        Frame::ResyncZero {
            epoch: OwnershipEpoch(3),
            offset: 0,
            len: 1,
        },
    ] {
        assert_eq!(frame.epoch(), Some(OwnershipEpoch(3)));
        assert_eq!(decode(&encoded(&frame)).unwrap().unwrap().0, frame);
    }
    assert_eq!(Frame::Ack { seq: 1 }.epoch(), None);
}

#[test]
fn bye_reason_is_cut_at_a_char_boundary() {
    let reason = "é".repeat(200); // 400 bytes
    let bytes = encoded(&Frame::Bye { reason });
    let Frame::Bye { reason: back } = decode(&bytes).unwrap().unwrap().0 else {
        panic!("not a bye");
    };
    assert_eq!(back, "é".repeat(127)); // 254 bytes: 255 would split a char
}

#[test]
fn oversize_length_is_refused_before_the_body_arrives() {
    let len = (MAX_FRAME as u32 + 1).to_be_bytes();
    assert!(matches!(decode(&len), Err(WireError::TooLarge(n)) if n == MAX_FRAME + 1));
    assert!(matches!(
        decode(&u32::MAX.to_be_bytes()),
        Err(WireError::TooLarge(_))
    ));
    // A small type with a big length: refused by the type's own limit.
    let mut ping = 100u32.to_be_bytes().to_vec();
    ping.push(ty::PING);
    assert!(matches!(decode(&ping), Err(WireError::TooLarge(100))));
    // A payload length over MAX_DATA inside a frame.
    let mut write = encoded(&Frame::Write {
        seq: 1,
        epoch: OwnershipEpoch(2),
        offset: 0,
        fua: false,
        data: vec![],
    });
    write[4 + 1 + 25..4 + 1 + 29].copy_from_slice(&(MAX_DATA as u32 + 1).to_be_bytes());
    assert!(matches!(decode(&write), Err(WireError::TooLarge(_))));
}

#[test]
fn strictness() {
    let malformed = |bytes: &[u8]| matches!(decode(bytes), Err(WireError::Malformed(_)));
    // Unknown type, even before the body.
    assert!(malformed(&[0, 0, 0, 9, 99]));
    assert!(malformed(&[0, 0, 0, 1, ty::HELLO]));
    // Empty frame.
    assert!(malformed(&[0, 0, 0, 0]));
    // Bad bool.
    let mut b = encoded(&Frame::ResyncBegin {
        epoch: OwnershipEpoch(1),
        full: true,
        total_bytes: 5,
    });
    b[5 + 8] = 2;
    assert!(malformed(&b));
    // Trailing byte inside the frame: over a fixed-size type's limit, or left over.
    let mut b = encoded(&Frame::Ack { seq: 3 });
    b.push(0);
    b[3] += 1;
    assert!(matches!(decode(&b), Err(WireError::TooLarge(10))));
    let mut b = encoded(&Frame::Bye {
        reason: "ab".into(),
    });
    b.push(0);
    b[3] += 1;
    assert!(malformed(&b));
    // A bitmap out of order (or with a duplicate peer) has a second encoding: refused.
    let mut state = CopyState {
        node: "a".into(),
        mirror: "m".into(),
        size_bytes: 1,
        generations: Generations::new(),
        disk: DiskState::UpToDate,
        primary: false,
        changed_blocks: 0,
        epoch: OwnershipEpoch(0),
        resolving: false,
    };
    state.generations.bitmap.insert("p".into(), 1);
    state.generations.bitmap.insert("q".into(), 2);
    let mut b = encoded(&Frame::State(state));
    let at = b.windows(2).position(|w| w == [1, b'q']).unwrap();
    b[at + 1] = b'p';
    assert!(malformed(&b));
    // Invalid UTF-8.
    let mut b = encoded(&Frame::Bye {
        reason: "ab".into(),
    });
    b[6] = 0xff;
    assert!(malformed(&b));
    // Bad disk state and bad primary flag.
    let state = CopyState {
        node: "a".into(),
        mirror: "m".into(),
        size_bytes: 1,
        generations: Generations::new(),
        disk: DiskState::UpToDate,
        primary: false,
        changed_blocks: 0,
        epoch: OwnershipEpoch(0),
        resolving: false,
    };
    let good = encoded(&Frame::State(state));
    let n = good.len();
    let mut b = good.clone();
    b[n - 19] = 5;
    assert!(malformed(&b));
    let mut b = good.clone();
    b[n - 18] = 2;
    assert!(malformed(&b));
}

#[test]
fn bitmap_runs_must_ascend_apart_and_peer_ack_holders_ascend() {
    let malformed = |bytes: &[u8]| matches!(decode(bytes), Err(WireError::Malformed(_)));
    for runs in [vec![(5, 0)], vec![(5, 2), (6, 1)], vec![(5, 2), (7, 1)]] {
        let b = encoded(&Frame::BitmapRuns { runs: runs.clone() });
        assert!(malformed(&b), "{runs:?}");
    }
    let ok = encoded(&Frame::BitmapRuns {
        runs: vec![(5, 2), (8, 1)],
    });
    assert!(!malformed(&ok));
    let b = encoded(&Frame::PeerAck {
        upto: 1,
        holders: vec!["b".into(), "a".into()],
    });
    assert!(malformed(&b));
}

#[test]
fn unsendable_frames_are_refused() {
    let big = Frame::Write {
        seq: 0,
        epoch: OwnershipEpoch(0),
        offset: 0,
        fua: false,
        data: vec![0; MAX_DATA + 1],
    };
    assert!(matches!(check_sendable(&big), Err(WireError::TooLarge(_))));
    // And a decoder refuses what encode makes of it anyway.
    assert!(matches!(
        decode(&encoded(&big)),
        Err(WireError::TooLarge(_))
    ));
    let digests = Frame::VerifyDigests {
        offset: 0,
        digests: vec![[0; 32]; MAX_DIGESTS + 1],
    };
    assert!(matches!(
        check_sendable(&digests),
        Err(WireError::TooLarge(_))
    ));
}

#[test]
fn largest_frames_fit_their_limits() {
    let write = Frame::Write {
        seq: 0,
        epoch: OwnershipEpoch(u64::MAX),
        offset: 0,
        fua: true,
        data: vec![1; MAX_DATA],
    };
    let bytes = encoded(&write);
    assert_eq!(bytes.len(), 4 + MAX_FRAME);
    assert_eq!(decode(&bytes).unwrap().unwrap().0, write);
    let digests = Frame::VerifyDigests {
        offset: 0,
        digests: vec![[2; 32]; MAX_DIGESTS],
    };
    assert_eq!(decode(&encoded(&digests)).unwrap().unwrap().0, digests);
    let name = "n".repeat(MAX_STR);
    let state = CopyState {
        node: name.clone(),
        mirror: name.clone(),
        size_bytes: 0,
        generations: Generations {
            current: 1,
            bitmap: (0..MAX_BITMAP_PEERS)
                .map(|i| (format!("{i:0>255}"), i as u64))
                .collect(),
            history: vec![1; HISTORY_LEN],
        },
        disk: DiskState::SyncTarget,
        primary: true,
        changed_blocks: 9,
        epoch: OwnershipEpoch(u64::MAX),
        resolving: false,
    };
    let bytes = encoded(&Frame::State(state.clone()));
    assert_eq!(bytes.len(), 4 + 1 + STATE_MAX);
    assert_eq!(decode(&bytes).unwrap().unwrap().0, Frame::State(state));
}

// ---------------------------------------------------------------------------------
// Handshake and links

type Rd = ReadHalf<DuplexStream>;
type Wr = WriteHalf<DuplexStream>;

fn params(node: &str, key: &[u8], encrypt: bool) -> HandshakeParams {
    HandshakeParams {
        cluster: "c1".into(),
        mirror: "vol".into(),
        local_node: node.into(),
        key: key.to_vec(),
        encrypt,
        compress: Compress::None,
    }
}

type Side<W> = Result<(LinkReader<Rd>, LinkWriter<W>, PeerHello), WireError>;

/// Runs both sides of a handshake over a duplex pipe of 256 KiB each way.
async fn pair(
    a: HandshakeParams,
    a_expects: Option<&str>,
    b: HandshakeParams,
    b_expects: Option<&str>,
) -> (Side<Wr>, Side<Wr>) {
    pair_over(256 * 1024, a, a_expects, b, b_expects).await
}

/// Runs both sides of a handshake over a duplex pipe holding `cap` bytes each way.
async fn pair_over(
    cap: usize,
    a: HandshakeParams,
    a_expects: Option<&str>,
    b: HandshakeParams,
    b_expects: Option<&str>,
) -> (Side<Wr>, Side<Wr>) {
    let (x, y) = tokio::io::duplex(cap);
    let (xr, xw) = split(x);
    let (yr, yw) = split(y);
    tokio::join!(
        handshake(xr, xw, &a, a_expects),
        handshake(yr, yw, &b, b_expects)
    )
}

#[tokio::test]
async fn handshake_succeeds_both_ways() {
    // A pipe smaller than a hello: neither side may wait for the other to read first.
    let (a, b) = pair_over(
        16,
        params("alpha", b"k", false),
        Some("beta"),
        params("beta", b"k", false),
        None,
    )
    .await;
    let (mut ar, mut aw, a_peer) = a.unwrap();
    let (mut br, mut bw, b_peer) = b.unwrap();
    assert_eq!(
        a_peer,
        PeerHello {
            node: "beta".into(),
            version: MAX_VERSION,
            encrypted: false,
            compress: Compress::None,
        }
    );
    assert_eq!(b_peer.node, "alpha");
    assert!(!aw.encrypted() && !br.encrypted());
    aw.send(&Frame::Ping { nonce: 1 }).await.unwrap();
    assert_eq!(br.recv().await.unwrap(), Frame::Ping { nonce: 1 });
    bw.send(&Frame::Pong { nonce: 1 }).await.unwrap();
    assert_eq!(ar.recv().await.unwrap(), Frame::Pong { nonce: 1 });
    // A clean close.
    drop(aw);
    drop(ar);
    assert!(matches!(br.recv().await, Err(WireError::Closed)));
}

#[tokio::test]
async fn wrong_key_fails_on_both_sides() {
    let (a, b) = pair(
        params("alpha", b"k1", false),
        None,
        params("beta", b"k2", false),
        None,
    )
    .await;
    assert!(matches!(a, Err(WireError::AuthFailed)));
    assert!(matches!(b, Err(WireError::AuthFailed)));
}

#[tokio::test]
async fn wrong_expected_peer_is_refused() {
    let (a, b) = pair(
        params("alpha", b"k", false),
        Some("gamma"),
        params("beta", b"k", false),
        None,
    )
    .await;
    assert!(
        matches!(a, Err(WireError::WrongPeer { expected, got }) if expected == "gamma" && got == "beta")
    );
    assert!(b.is_err());
}

#[tokio::test]
async fn own_name_is_refused() {
    let (a, b) = pair(
        params("alpha", b"k", false),
        None,
        params("alpha", b"k", false),
        None,
    )
    .await;
    assert!(matches!(a, Err(WireError::WrongPeer { .. })));
    assert!(matches!(b, Err(WireError::WrongPeer { .. })));
}

#[tokio::test]
async fn wrong_cluster_or_mirror_is_refused() {
    let mut other = params("beta", b"k", false);
    other.cluster = "c2".into();
    let (a, _) = pair(params("alpha", b"k", false), None, other, None).await;
    assert!(matches!(a, Err(WireError::WrongCluster(c, m)) if c == "c2" && m == "vol"));
    let mut other = params("beta", b"k", false);
    other.mirror = "other".into();
    let (a, _) = pair(params("alpha", b"k", false), None, other, None).await;
    assert!(matches!(a, Err(WireError::WrongCluster(c, m)) if c == "c1" && m == "other"));
}

#[tokio::test]
async fn wrong_version_and_magic_are_refused() {
    // A version below ours (2, before ownership epochs) and a bad magic.
    for (at, value, want_version) in [(5 + 8 + 1, 2u8, true), (5, b'X', false)] {
        let (x, y) = tokio::io::duplex(4096);
        let (xr, xw) = split(x);
        let (mut yr, mut yw) = split(y);
        let peer = async {
            let mut hello = Hello {
                version: 3,
                flags: 0,
                cluster: "c1".into(),
                mirror: "vol".into(),
                node: "beta".into(),
                nonce: [3; 32],
            }
            .encode();
            hello[at] = value;
            yw.write_all(&hello).await.unwrap();
            let mut sink = [0u8; 512];
            let _ = yr.read(&mut sink).await;
        };
        let ours = params("alpha", b"k", false);
        let (res, ()) = tokio::join!(handshake(xr, xw, &ours, None), peer);
        if want_version {
            assert!(
                matches!(res, Err(WireError::Version { theirs: 2 })),
                "{res:?}",
                res = res.err()
            );
        } else {
            assert!(matches!(res, Err(WireError::Malformed(_))));
        }
    }
}

/// A peer that sends `hello` and then, if it gets one, the Auth a peer with the key
/// computes at `mac_version`; returns what our side of the handshake made of it.
async fn with_peer(hello: Hello, mac_version: u16) -> Side<Wr> {
    let (x, y) = tokio::io::duplex(4096);
    let (xr, xw) = split(x);
    let (yr, mut yw) = split(y);
    let mut yr = BufReader::new(yr);
    let peer = async {
        let ours = Hello::decode(&read_msg(&mut yr, ty::HELLO).await.unwrap()).unwrap();
        yw.write_all(&hello.encode()).await.unwrap();
        let mac = auth_mac(b"k", "c1", "vol", mac_version, &hello, &ours)
            .unwrap()
            .finalize()
            .into_bytes();
        let mut auth = Vec::new();
        put_u32(&mut auth, len32(1 + mac.len()));
        auth.push(ty::AUTH);
        auth.extend_from_slice(&mac);
        let _ = yw.write_all(&auth).await;
        let _ = read_msg(&mut yr, ty::AUTH).await;
        (yr, yw)
    };
    let ours = params("alpha", b"k", false);
    let (res, _peer) = tokio::join!(handshake(xr, xw, &ours, None), peer);
    res
}

/// The hello of a build that negotiates, whose newest version is `max`.
fn hello_of(max: u16) -> Hello {
    let mut nonce = [7u8; 32];
    nonce[..6].copy_from_slice(RANGE_MARK);
    nonce[6..8].copy_from_slice(&max.to_be_bytes());
    Hello {
        version: max,
        flags: 0,
        cluster: "c1".into(),
        mirror: "vol".into(),
        node: "beta".into(),
        nonce,
    }
}

#[tokio::test]
async fn n_and_n_plus_one_negotiate_the_lower_version() {
    // A newer build (N + 1) and this one speak this build's newest.
    let (_r, _w, peer) = with_peer(hello_of(MAX_VERSION + 1), MAX_VERSION)
        .await
        .unwrap();
    assert_eq!(peer.version, MAX_VERSION);
    // A build before version ranges (exactly 3, random nonce) still connects.
    let mut older = hello_of(3);
    older.nonce = [9; 32];
    let (_r, _w, peer) = with_peer(older, 3).await.unwrap();
    assert_eq!(peer.version, 3);
    // Our hello carries our newest, in the hello and in the nonce.
    let nonce = fresh_nonce();
    assert_eq!(&nonce[..6], RANGE_MARK);
    assert_eq!(nonce[6..8], MAX_VERSION.to_be_bytes());
    assert_ne!(fresh_nonce()[8..], nonce[8..], "the rest is random");
}

#[tokio::test]
async fn a_version_below_ours_is_refused_naming_both_ranges() {
    let res = with_peer(hello_of(MIN_VERSION - 1), MIN_VERSION - 1).await;
    let e = res.err().expect("refused");
    assert!(matches!(e, WireError::Version { theirs } if theirs == MIN_VERSION - 1));
    let text = e.to_string();
    assert!(
        text.contains(&format!("up to {}", MIN_VERSION - 1))
            && text.contains(&format!("{MIN_VERSION}..={MAX_VERSION}")),
        "{text}"
    );
}

#[tokio::test]
async fn a_version_rewritten_in_transit_is_refused() {
    // A man in the middle lowers a newer peer's hello to 3: its nonce still says
    // otherwise, and the nonce is bound by the MAC.
    let mut lowered = hello_of(MAX_VERSION + 1);
    lowered.version = 3;
    let res = with_peer(lowered, 3).await;
    assert!(matches!(
        res.err(),
        Some(WireError::Downgrade { hello: 3, nonce }) if nonce == MAX_VERSION + 1
    ));
    // An Auth computed at another version than the negotiated one fails.
    let res = with_peer(hello_of(MAX_VERSION), MAX_VERSION + 1).await;
    assert!(matches!(res.err(), Some(WireError::AuthFailed)));
}

#[tokio::test]
async fn reflected_auth_is_refused() {
    // A fake peer without the key: answers the hello, then sends our own Auth back.
    let (x, y) = tokio::io::duplex(4096);
    let (xr, xw) = split(x);
    let (yr, mut yw) = split(y);
    let mut yr = BufReader::new(yr);
    let fake = async {
        let _ours = read_msg(&mut yr, ty::HELLO).await.unwrap();
        let hello = Hello {
            version: 3,
            flags: 0,
            cluster: "c1".into(),
            mirror: "vol".into(),
            node: "mallory".into(),
            nonce: [9; 32],
        };
        yw.write_all(&hello.encode()).await.unwrap();
        let mac = read_msg(&mut yr, ty::AUTH).await.unwrap();
        let mut auth = Vec::new();
        put_u32(&mut auth, len32(1 + mac.len()));
        auth.push(ty::AUTH);
        auth.extend_from_slice(&mac);
        yw.write_all(&auth).await.unwrap();
    };
    let ours = params("alpha", b"k", false);
    let (res, ()) = tokio::join!(handshake(xr, xw, &ours, None), fake);
    assert!(matches!(res, Err(WireError::AuthFailed)));
}

#[tokio::test]
async fn silent_peer_times_out() {
    let (x, _y) = tokio::io::duplex(4096);
    let (xr, xw) = split(x);
    let limit = Duration::from_millis(50);
    let res = handshake_within(limit, xr, xw, &params("alpha", b"k", false), None).await;
    assert!(matches!(res, Err(WireError::Io(e)) if e.kind() == io::ErrorKind::TimedOut));
}

#[tokio::test]
async fn encrypted_link_carries_a_full_write() {
    let (a, b) = pair(
        params("alpha", b"k", true),
        None,
        params("beta", b"k", true),
        None,
    )
    .await;
    let (mut ar, mut aw, a_peer) = a.unwrap();
    let (mut br, mut bw, b_peer) = b.unwrap();
    assert!(a_peer.encrypted && b_peer.encrypted);
    let data: Vec<u8> = (0..MAX_DATA).map(|i| (i * 7 % 251) as u8).collect();
    let write = Frame::Write {
        seq: 1,
        epoch: OwnershipEpoch(3),
        offset: 4096,
        fua: true,
        data,
    };
    let (sent, got) = tokio::join!(aw.send(&write), br.recv());
    sent.unwrap();
    assert_eq!(got.unwrap(), write);
    bw.send(&Frame::Ack { seq: 1 }).await.unwrap();
    assert_eq!(ar.recv().await.unwrap(), Frame::Ack { seq: 1 });
}

#[tokio::test]
async fn plaintext_link_batches_and_carries_big_payloads() {
    let (a, b) = pair(
        params("alpha", b"k", false),
        None,
        params("beta", b"k", false),
        None,
    )
    .await;
    let (_ar, mut aw, _) = a.unwrap();
    let (mut br, _bw, _) = b.unwrap();
    let frames: Vec<Frame> = (0..200u64)
        .map(|i| match i % 3 {
            0 => Frame::Ack { seq: i },
            1 => Frame::ResyncData {
                epoch: OwnershipEpoch(i),
                offset: i,
                data: vec![i as u8; (i as usize * 5000) % (MAX_DATA + 1)],
            },
            _ => Frame::Write {
                seq: i,
                epoch: OwnershipEpoch(i),
                offset: i,
                fua: false,
                data: vec![i as u8; 100],
            },
        })
        .collect();
    let send = async {
        for f in &frames {
            aw.feed(f).await.unwrap();
        }
        aw.flush().await.unwrap();
    };
    let recv = async {
        for f in &frames {
            assert_eq!(&br.recv().await.unwrap(), f);
        }
    };
    tokio::join!(send, recv);
}

#[tokio::test]
async fn one_side_asking_is_enough_for_encryption() {
    let (a, b) = pair(
        params("alpha", b"k", false),
        None,
        params("beta", b"k", true),
        None,
    )
    .await;
    let (mut ar, mut aw, a_peer) = a.unwrap();
    let (mut br, mut bw, b_peer) = b.unwrap();
    assert!(a_peer.encrypted && b_peer.encrypted);
    assert!(aw.encrypted() && ar.encrypted() && bw.encrypted() && br.encrypted());
    for i in 0..3 {
        aw.send(&Frame::Ping { nonce: i }).await.unwrap();
        assert_eq!(br.recv().await.unwrap(), Frame::Ping { nonce: i });
        bw.send(&Frame::Pong { nonce: i }).await.unwrap();
        assert_eq!(ar.recv().await.unwrap(), Frame::Pong { nonce: i });
    }
}

/// A writer that, once armed, flips one bit of the next write.
struct Flipper<W> {
    inner: W,
    armed: Arc<AtomicBool>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Flipper<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.armed.load(Ordering::SeqCst) && buf.len() > 6 {
            let mut copy = buf.to_vec();
            copy[6] ^= 0x10;
            let res = Pin::new(&mut self.inner).poll_write(cx, &copy);
            if matches!(res, Poll::Ready(Ok(_))) {
                self.armed.store(false, Ordering::SeqCst);
            }
            return res;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn flipped_ciphertext_bit_fails_decryption() {
    let (x, y) = tokio::io::duplex(4096);
    let (xr, xw) = split(x);
    let (yr, yw) = split(y);
    let armed = Arc::new(AtomicBool::new(false));
    let xw = Flipper {
        inner: xw,
        armed: armed.clone(),
    };
    let (pa, pb) = (params("alpha", b"k", true), params("beta", b"k", false));
    let (a, b) = tokio::join!(handshake(xr, xw, &pa, None), handshake(yr, yw, &pb, None));
    let (_ar, mut aw, _) = a.unwrap();
    let (mut br, _bw, _) = b.unwrap();
    aw.send(&Frame::Ping { nonce: 1 }).await.unwrap();
    assert_eq!(br.recv().await.unwrap(), Frame::Ping { nonce: 1 });
    armed.store(true, Ordering::SeqCst);
    aw.send(&Frame::Ping { nonce: 2 }).await.unwrap();
    assert!(matches!(br.recv().await, Err(WireError::Decrypt)));
}

#[tokio::test]
async fn tcp_halves_in_spawned_tasks() {
    // The daemon's shape: the halves of a TcpStream, each side in its own task (so
    // every future here must be Send).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, w) = stream.into_split();
        let (mut r, mut w, peer) = handshake(r, w, &params("beta", b"k", false), Some("alpha"))
            .await
            .unwrap();
        assert_eq!(peer.node, "alpha");
        let frame = r.recv().await.unwrap();
        let Frame::Write { seq, .. } = frame else {
            panic!("not a write: {frame:?}");
        };
        w.send(&Frame::Ack { seq }).await.unwrap();
        frame
    });
    let client = tokio::spawn(async move {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let (mut r, mut w, peer) = handshake(r, w, &params("alpha", b"k", false), Some("beta"))
            .await
            .unwrap();
        assert_eq!(peer.node, "beta");
        let write = Frame::Write {
            seq: 42,
            epoch: OwnershipEpoch(7),
            offset: 1 << 30,
            fua: false,
            data: vec![0xa5; MAX_DATA],
        };
        w.send(&write).await.unwrap();
        assert_eq!(r.recv().await.unwrap(), Frame::Ack { seq: 42 });
        write
    });
    let (got, sent) = (server.await.unwrap(), client.await.unwrap());
    assert_eq!(got, sent);
}

// ---------------------------------------------------------------------------------
// Compression

/// Text-like data that zstd shrinks several times.
fn compressible(n: usize) -> Vec<u8> {
    let words = [
        "mirror ", "replica ", "the ", "quick ", "mail ", "server ", "at ", "dawn\n",
    ];
    words
        .iter()
        .cycle()
        .flat_map(|w| w.bytes())
        .take(n)
        .collect()
}

/// A `WriteZstd` frame built by hand: `raw_len` claimed, `packed` as the body's rest.
fn hand_zstd_write(raw_len: u32, packed: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_u32(&mut out, len32(1 + WRITE_HEAD + packed.len()));
    out.push(ty::WRITE_ZSTD);
    put_u64(&mut out, 1);
    put_u64(&mut out, 2);
    put_u64(&mut out, 4096);
    out.push(0);
    put_u32(&mut out, raw_len);
    out.extend_from_slice(packed);
    out
}

#[test]
fn compressed_frames_round_trip_and_only_when_smaller() {
    let mut packer = Packer::new().unwrap();
    let mut unpack = Unpacker::new().unwrap();
    let mut random = vec![0u8; 64 * 1024];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
    let frames = [
        Frame::Write {
            seq: 7,
            epoch: OwnershipEpoch(2),
            offset: 1 << 20,
            fua: true,
            data: compressible(MAX_DATA),
        },
        Frame::ResyncData {
            epoch: OwnershipEpoch(2),
            offset: 8192,
            data: compressible(4096),
        },
        Frame::Write {
            seq: 8,
            epoch: OwnershipEpoch(2),
            offset: 0,
            fua: false,
            data: random.clone(),
        },
        Frame::Ack { seq: 8 },
    ];
    for (i, frame) in frames.iter().enumerate() {
        let mut out = Vec::new();
        encode_compressed(frame, &mut packer, &mut out);
        let mut plain = Vec::new();
        encode(frame, &mut plain);
        let compressed = i < 2;
        assert_eq!(out.len() < plain.len(), compressed, "frame {i}");
        if compressed {
            assert!(matches!(out[4], ty::WRITE_ZSTD | ty::RESYNC_DATA_ZSTD));
            // Without compression negotiated, the frame is refused.
            assert!(matches!(decode(&out), Err(WireError::Malformed(_))));
        } else {
            assert_eq!(out, plain, "sent raw when not smaller");
        }
        let (back, used) = decode_compressed(&out, &mut unpack).unwrap().unwrap();
        assert_eq!((&back, used), (frame, out.len()));
    }
}

#[test]
fn compressed_frames_are_bounded_by_their_stated_length() {
    let mut unpack = Unpacker::new().unwrap();
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
    assert!(
        bomb.len() < 8192,
        "64 MiB of zeroes compress to {}",
        bomb.len()
    );
    let text = compressible(64 * 1024);
    let packed = zstd::bulk::compress(&text, 3).unwrap();
    let cases: [(u32, &[u8]); 5] = [
        // Claims more than a payload may carry: refused before decompressing.
        ((MAX_DATA + 1) as u32, &packed),
        (u32::MAX, &bomb),
        // A bomb behind a small claim: decompression stops at the claim.
        (8192 + 1, &bomb),
        // Produces less than it claims, or is not zstd at all.
        (text.len() as u32 + 1, &packed),
        (4096, &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]),
    ];
    for (raw_len, body) in cases {
        let frame = hand_zstd_write(raw_len, body);
        let err = decode_compressed(&frame, &mut unpack).unwrap_err();
        assert!(
            matches!(err, WireError::Malformed(_) | WireError::TooLarge(_)),
            "claim {raw_len}: {err}"
        );
    }
    // Not smaller than what it claims: refused (it should have been sent raw).
    let err = unpack.unpack(&packed, packed.len()).unwrap_err();
    assert!(matches!(err, WireError::Malformed(_)));
    // The honest frame decodes.
    let frame = hand_zstd_write(text.len() as u32, &packed);
    let (got, _) = decode_compressed(&frame, &mut unpack).unwrap().unwrap();
    assert!(matches!(got, Frame::Write { data, .. } if data == text));
}

#[test]
fn compression_needs_both_able_and_one_wanting() {
    let can = FLAG_ZSTD_CAN;
    let want = FLAG_ZSTD_CAN | FLAG_ZSTD_WANT;
    let older = FLAG_ENCRYPT; // a build without compression sets neither bit
    for (ours, theirs, expect) in [
        (want, want, Compress::Zstd),
        (want, can, Compress::Zstd),
        (can, want, Compress::Zstd),
        (can, can, Compress::None),
        (want, older, Compress::None),
        (older, want, Compress::None),
        (want, FLAG_ZSTD_WANT, Compress::None),
    ] {
        assert_eq!(
            negotiate_compress(ours, theirs),
            expect,
            "{ours:#x} {theirs:#x}"
        );
    }
    let p = |compress| HandshakeParams {
        compress,
        ..params("alpha", b"k", false)
    };
    assert_eq!(hello_flags(&p(Compress::None)), can);
    assert_eq!(hello_flags(&p(Compress::Zstd)), want);
}

#[tokio::test]
async fn a_peer_of_an_older_build_gets_an_uncompressed_link() {
    // The older build: a hello without the zstd bits, and the key.
    let (x, y) = tokio::io::duplex(4096);
    let (xr, xw) = split(x);
    let (yr, mut yw) = split(y);
    let mut yr = BufReader::new(yr);
    let older = async {
        let ours = Hello::decode(&read_msg(&mut yr, ty::HELLO).await.unwrap()).unwrap();
        assert_eq!(ours.flags & FLAG_ZSTD_WANT, FLAG_ZSTD_WANT);
        let hello = Hello {
            version: 3,
            flags: 0,
            cluster: "c1".into(),
            mirror: "vol".into(),
            node: "beta".into(),
            nonce: [9; 32],
        };
        yw.write_all(&hello.encode()).await.unwrap();
        let mac = auth_mac(b"k", "c1", "vol", 3, &hello, &ours)
            .unwrap()
            .finalize()
            .into_bytes();
        let mut auth = Vec::new();
        put_u32(&mut auth, len32(1 + mac.len()));
        auth.push(ty::AUTH);
        auth.extend_from_slice(&mac);
        yw.write_all(&auth).await.unwrap();
        read_msg(&mut yr, ty::AUTH).await.unwrap();
        (yr, yw)
    };
    let ours = HandshakeParams {
        compress: Compress::Zstd,
        ..params("alpha", b"k", false)
    };
    let (res, (mut yr, _yw)) = tokio::join!(handshake(xr, xw, &ours, None), older);
    let (_r, mut w, peer) = res.unwrap();
    assert_eq!(peer.compress, Compress::None);
    assert_eq!(w.compress(), Compress::None);
    // Writes go out as plain frames the older build reads.
    let write = Frame::Write {
        seq: 1,
        epoch: OwnershipEpoch(1),
        offset: 0,
        fua: false,
        data: compressible(64 * 1024),
    };
    let mut buf = vec![0u8; 4 + 1 + WRITE_HEAD + 64 * 1024];
    let (sent, got) = tokio::join!(w.send(&write), yr.read_exact(&mut buf));
    sent.unwrap();
    got.unwrap();
    assert_eq!(decode(&buf).unwrap().unwrap().0, write);
}

#[tokio::test]
async fn compressed_encrypted_link_carries_writes_and_counts_them() {
    let want = |node| HandshakeParams {
        compress: Compress::Zstd,
        ..params(node, b"k", true)
    };
    // Only alpha asks: enough.
    let (a, b) = pair(want("alpha"), None, params("beta", b"k", true), None).await;
    let (_ar, mut aw, a_peer) = a.unwrap();
    let (mut br, _bw, b_peer) = b.unwrap();
    assert_eq!(
        (a_peer.compress, b_peer.compress),
        (Compress::Zstd, Compress::Zstd)
    );
    assert!(a_peer.encrypted && aw.encrypted() && br.encrypted());
    let counters = Arc::new(compress::CompressCounters::default());
    aw.count_compression(Arc::clone(&counters));
    let mut random = vec![0u8; 256 * 1024];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut random);
    let frames = [
        Frame::Write {
            seq: 1,
            epoch: OwnershipEpoch(3),
            offset: 0,
            fua: true,
            data: compressible(MAX_DATA),
        },
        Frame::ResyncData {
            epoch: OwnershipEpoch(3),
            offset: 0,
            data: random,
        },
        Frame::Flush {
            seq: 2,
            epoch: OwnershipEpoch(3),
        },
    ];
    for f in &frames {
        let (sent, got) = tokio::join!(aw.send(f), br.recv());
        sent.unwrap();
        assert_eq!(&got.unwrap(), f);
    }
    let (raw, wire) = counters.get();
    assert_eq!(raw, (MAX_DATA + 256 * 1024) as u64);
    assert!(wire < raw / 2 && wire > 256 * 1024, "{raw} -> {wire}");
}
