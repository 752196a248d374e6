//! Mirror metadata on both backends: external (files in the state directory) and
//! internal (an area at the end of the backing). Round trips, a torn state-slot write,
//! damaged or foreign superblocks, a two-node mirror on internal metadata (replication,
//! restart, partial resync), `convert-metadata` in both directions, and a mirror whose
//! configured kind (its own `metadata` or `[cluster] mirror_metadata`) no longer matches
//! its metadata refused untouched.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tandem::config::{Config, ReplicationMode};
use tandem::event::EventLog;
use tandem::mirror::bitmap::DirtyBitmap;
use tandem::mirror::generation::{DiskState, OwnershipEpoch, Resolution, SplitBrainPolicy};
use tandem::mirror::replica::meta::convert::{self, ConvertSpec};
use tandem::mirror::replica::meta::layout::{self, Superblock, PAGE, STATE_SLOT_BYTES};
use tandem::mirror::replica::meta::{MetaError, MetaPlacement, MetaStore};
use tandem::mirror::replica::{Mirror, MirrorError, MirrorSpec, PeerSpec};
use tandem::mirror::Export;
use tandem::status::LinkState;

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{free_tcp_addr, wait_until};

const MIB: u64 = 1 << 20;
const KEY: &[u8] = b"cluster key for the mirror tests";

/// Opens the store of `placement` for a `size`-byte volume in `dir` (the backing for
/// internal metadata: `dir/backing.raw`, created `size` + area long).
fn open(dir: &Path, placement: MetaPlacement, size: u64) -> MetaStore {
    let state = dir.join("state");
    match placement {
        MetaPlacement::External => MetaStore::open(&state, size).unwrap().0,
        MetaPlacement::Internal { peer_slots } => {
            let backing = dir.join("backing.raw");
            if !backing.exists() {
                let f = std::fs::File::create(&backing).unwrap();
                f.set_len(size + layout::area_bytes(size, peer_slots))
                    .unwrap();
            }
            MetaStore::open_internal(&state, &backing, "vol0", peer_slots, Some(size))
                .unwrap()
                .0
        }
    }
}

fn backing_superblock(path: &Path) -> Superblock {
    let len = std::fs::metadata(path).unwrap().len();
    Superblock::decode(&read_at(path, Superblock::offset(len), PAGE as usize)).unwrap()
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(data, offset)
        .unwrap();
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn marked(size: u64, ranges: &[(u64, u64)]) -> DirtyBitmap {
    let mut bm = DirtyBitmap::new(size);
    for &(o, l) in ranges {
        bm.mark(o, l);
    }
    bm
}

#[test]
fn both_backends_round_trip_state_bitmaps_resolutions_and_the_clean_flag() {
    let size = 300 * MIB;
    for placement in [
        MetaPlacement::External,
        MetaPlacement::Internal { peer_slots: 2 },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), placement, size);
        let mut copy = tandem::mirror::replica::meta::CopyMeta::fresh(size);
        copy.disk = DiskState::Outdated;
        copy.generations.current = 42;
        copy.epoch = OwnershipEpoch(3);
        store.save_copy(&copy).unwrap();
        store.save_al(&[7, 3, 9]).unwrap();
        // Marks on both sides of the first bitmap page boundary (127.75 MiB).
        let b = marked(
            size,
            &[(0, 4096), (130 * MIB, 3 * MIB), (size - 4096, 4096)],
        );
        store.save_bitmap("b", &b).unwrap();
        store
            .save_bitmap("c", &marked(size, &[(5 * MIB, 1)]))
            .unwrap();
        let r = Resolution::Theirs { generation: 9 };
        store.set_resolution("b", Some(r)).unwrap();
        store.set_clean(false).unwrap();
        // Fewer marks later: the store writes what changed and nothing stale remains.
        let b2 = marked(size, &[(130 * MIB, 4096)]);
        store.save_bitmap("b", &b2).unwrap();
        drop(store);

        let state = dir.path().join("state");
        let (again, loaded) = match placement {
            MetaPlacement::External => MetaStore::open(&state, size).unwrap(),
            MetaPlacement::Internal { peer_slots } => MetaStore::open_internal(
                &state,
                &dir.path().join("backing.raw"),
                "vol0",
                peer_slots,
                None,
            )
            .unwrap(),
        };
        assert!(!loaded.clean && !loaded.created, "{placement:?}");
        assert_eq!(loaded.copy, copy, "{placement:?}");
        assert_eq!(loaded.al_extents, vec![7, 3, 9]);
        assert_eq!(again.load_bitmap("b", size).unwrap(), b2, "{placement:?}");
        assert_eq!(again.load_bitmap("c", size).unwrap().dirty_blocks(), 1);
        assert_eq!(again.resolution("b"), Some(r));
        assert_eq!(again.resolution("c"), None);
    }
}

#[test]
fn a_torn_state_slot_write_falls_back_to_the_older_slot() {
    let dir = tempfile::tempdir().unwrap();
    let placement = MetaPlacement::Internal { peer_slots: 1 };
    let store = open(dir.path(), placement, 64 * MIB);
    let mut copy = tandem::mirror::replica::meta::CopyMeta::fresh(64 * MIB);
    copy.generations.current = 1;
    store.save_copy(&copy).unwrap();
    copy.generations.current = 2;
    store.save_copy(&copy).unwrap();
    drop(store);
    // Tear the newer slot: its payload ends in garbage.
    let backing = dir.path().join("backing.raw");
    let sb = backing_superblock(&backing);
    let slots: Vec<(u64, u64)> = (0..2)
        .map(|i| {
            let at = sb.state_slot(i);
            let raw = read_at(&backing, at, STATE_SLOT_BYTES as usize);
            let (seq, payload) = layout::decode_slot(&raw).unwrap();
            (seq, at + 24 + payload.len() as u64 - 8)
        })
        .collect();
    let newest = slots.iter().max().unwrap();
    write_at(&backing, newest.1, b"\xff\xff\xff\xff");
    let (store, loaded) = MetaStore::open_internal(
        &dir.path().join("state"),
        &backing,
        "vol0",
        1,
        Some(64 * MIB),
    )
    .unwrap();
    assert_eq!(loaded.copy.generations.current, 1, "the older slot");
    // The next write goes over the torn slot, and wins from then on.
    copy.generations.current = 3;
    store.save_copy(&copy).unwrap();
    drop(store);
    let (_, loaded) =
        MetaStore::open_internal(&dir.path().join("state"), &backing, "vol0", 1, None).unwrap();
    assert_eq!(loaded.copy.generations.current, 3);
}

#[test]
fn a_torn_bitmap_page_reads_as_all_out_of_sync() {
    let dir = tempfile::tempdir().unwrap();
    let size = 300 * MIB;
    let store = open(dir.path(), MetaPlacement::Internal { peer_slots: 1 }, size);
    store
        .save_bitmap("b", &marked(size, &[(200 * MIB, 4096)]))
        .unwrap();
    drop(store);
    let backing = dir.path().join("backing.raw");
    let sb = backing_superblock(&backing);
    // Page 1 covers blocks 32704..65408 (127.75 MiB to 255.5 MiB).
    write_at(&backing, sb.bitmap_page(0, 1) + 100, &[0x55]);
    let (store, _) =
        MetaStore::open_internal(&dir.path().join("state"), &backing, "vol0", 1, None).unwrap();
    let bm = store.load_bitmap("b", size).unwrap();
    assert_eq!(bm.dirty_blocks(), layout::PAGE_BLOCKS);
    assert!(bm.is_dirty(200 * MIB / 4096) && !bm.is_dirty(0));
}

#[test]
fn bad_backings_and_superblocks_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let backing = dir.path().join("backing.raw");
    drop(open(
        dir.path(),
        MetaPlacement::Internal { peer_slots: 1 },
        64 * MIB,
    ));
    let len = std::fs::metadata(&backing).unwrap().len();

    // Another mirror's backing.
    let e = MetaStore::open_internal(&state, &backing, "vol1", 1, None).unwrap_err();
    assert!(matches!(e, MetaError::ForeignMirror { .. }), "{e}");
    assert!(e.to_string().contains("\"vol0\""), "{e}");
    // Another size.
    let e = MetaStore::open_internal(&state, &backing, "vol0", 1, Some(32 * MIB)).unwrap_err();
    assert!(matches!(e, MetaError::SizeChanged { .. }), "{e}");
    // More peers than slots.
    let (store, _) = MetaStore::open_internal(&state, &backing, "vol0", 1, None).unwrap();
    store.load_bitmap("b", 64 * MIB).unwrap();
    let e = store.load_bitmap("c", 64 * MIB).unwrap_err();
    assert!(matches!(e, MetaError::TooManyPeers { slots: 1, .. }), "{e}");
    assert!(e.to_string().contains("convert-metadata"), "{e}");
    drop(store);
    // A damaged superblock: refused, and nothing is written.
    write_at(&backing, len - 4096 + 20, &[0xee]);
    let before = std::fs::read(&backing).unwrap();
    let e = MetaStore::open_internal(&state, &backing, "vol0", 1, None).unwrap_err();
    assert!(matches!(e, MetaError::BadSuperblock { .. }), "{e}");
    assert!(e.to_string().contains("checksum"), "{e}");
    assert_eq!(std::fs::read(&backing).unwrap(), before);

    // A backing too small for data + metadata.
    let small = dir.path().join("small.raw");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(64 * MIB)
        .unwrap();
    let e = MetaStore::open_internal(&dir.path().join("s2"), &small, "vol0", 1, Some(64 * MIB))
        .unwrap_err();
    assert!(matches!(e, MetaError::TooSmall { .. }), "{e}");
    // Data where the area would go, and no superblock: refused, nothing written.
    write_at(&small, 64 * MIB - 10, b"data");
    let e = MetaStore::open_internal(&dir.path().join("s3"), &small, "vol0", 1, None).unwrap_err();
    assert!(matches!(e, MetaError::TailInUse { .. }), "{e}");
    assert_eq!(read_at(&small, 64 * MIB - 10, 4), b"data");
    // External metadata present: convert, do not start over.
    let ext = dir.path().join("s4");
    drop(MetaStore::open(&ext, 32 * MIB).unwrap());
    let e = MetaStore::open_internal(&ext, &small, "vol0", 1, Some(32 * MIB)).unwrap_err();
    assert!(matches!(e, MetaError::ExternalPresent { .. }), "{e}");
}

/// A two-node cluster on loopback; each node in its own runtime.
struct Cluster {
    dir: tempfile::TempDir,
    size: u64,
    nodes: Vec<(String, SocketAddr)>,
}

struct Node {
    name: String,
    m: Arc<Mirror>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Cluster {
    fn new(size: u64) -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            size,
            nodes: ["a", "b"]
                .iter()
                .map(|n| (n.to_string(), free_tcp_addr()))
                .collect(),
        }
    }

    fn backing(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.raw"))
    }

    fn spec(&self, node: &str, metadata: MetaPlacement) -> MirrorSpec {
        let listen = self.nodes.iter().find(|(n, _)| n == node).unwrap().1;
        MirrorSpec {
            name: "vol0".into(),
            cluster: "test".into(),
            local_node: node.into(),
            key: KEY.to_vec(),
            backing: self.backing(node),
            size: Some(self.size),
            meta_dir: self.dir.path().join(format!("meta-{node}")),
            metadata,
            listen,
            peers: self
                .nodes
                .iter()
                .filter(|(n, _)| n != node)
                .map(|(n, address)| PeerSpec {
                    node: n.clone(),
                    address: *address,
                    mode: ReplicationMode::Sync,
                    rate_limit: None,
                    queue_bytes: 64 * MIB,
                    lag_budget: None,
                    encrypt: false,
                    compress: Default::default(),
                    timeout: Duration::from_secs(6),
                })
                .collect(),
            split_brain: SplitBrainPolicy::Disconnect,
            fencing: false,
        }
    }

    fn try_start(&self, node: &str, metadata: MetaPlacement) -> Result<Node, MirrorError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let m = rt.block_on(Mirror::open(
            self.spec(node, metadata),
            EventLog::in_memory(node),
        ))?;
        Ok(Node {
            name: node.into(),
            m,
            rt: Some(rt),
        })
    }

    fn start(&self, node: &str) -> Node {
        self.try_start(node, MetaPlacement::Internal { peer_slots: 1 })
            .unwrap()
    }
}

impl Node {
    fn on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.as_ref().unwrap().block_on(f)
    }

    fn write(&self, offset: u64, data: Vec<u8>) {
        self.on(self.m.write(offset, data, false)).unwrap();
    }

    fn peer(&self, peer: &str) -> tandem::mirror::status::MirrorPeerStatus {
        self.m
            .status()
            .peers
            .into_iter()
            .find(|p| p.node == peer)
            .unwrap()
    }

    fn stop(mut self) {
        self.on(self.m.shutdown());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

fn in_sync(a: &Node, b: &Node) {
    wait_until(
        &format!("{} and {} in sync", a.name, b.name),
        Duration::from_secs(30),
        || {
            let pa = a.peer(&b.name);
            let pb = b.peer(&a.name);
            pa.connection == LinkState::Connected
                && pb.connection == LinkState::Connected
                && pa.resync.is_none()
                && pb.resync.is_none()
                && pa.out_of_sync_bytes == 0
                && pb.peer_disk == Some(DiskState::UpToDate)
                && b.m.status().disk == DiskState::UpToDate
        },
    );
}

#[test]
fn a_two_node_mirror_on_internal_metadata_replicates_restarts_and_resyncs_partially() {
    let size = 256 * MIB;
    let c = Cluster::new(size);
    let a = c.start("a");
    let b = c.start("b");
    // Only the data is exposed; the file is data + area.
    assert_eq!(a.m.size(), size);
    let area = layout::area_bytes(size, 1);
    assert_eq!(
        std::fs::metadata(c.backing("a")).unwrap().len(),
        size + area
    );
    wait_until("a and b connected", Duration::from_secs(10), || {
        a.peer("b").connection == LinkState::Connected
            && b.peer("a").connection == LinkState::Connected
    });
    a.on(a.m.promote(OwnershipEpoch(0))).unwrap();
    for i in 0..16u64 {
        a.write(i * 16 * MIB, pattern(i, 256 * 1024));
    }
    a.on(a.m.flush()).unwrap();
    in_sync(&a, &b);
    // The secondary goes away (cleanly) and comes back; meanwhile 200 scattered 4 KiB
    // writes land on the primary.
    b.stop();
    let mut changed = std::collections::BTreeSet::new();
    for i in 0..200u64 {
        let off = (i * 7919 * 4096) % (size - 4096);
        a.write(off, pattern(1000 + i, 4096));
        changed.insert(off / 4096);
    }
    let changed_bytes = changed.len() as u64 * 4096;
    wait_until("b's bitmap persisted", Duration::from_secs(5), || {
        a.peer("b").out_of_sync_bytes == changed_bytes
    });
    let before = a.peer("b").resynced_bytes;
    let b = c.start("b");
    in_sync(&a, &b);
    let resynced = a.peer("b").resynced_bytes - before;
    assert!(
        resynced >= changed_bytes && resynced as f64 <= 1.05 * changed_bytes as f64,
        "resynced {resynced} for {changed_bytes} changed"
    );
    // The primary restarts too: its metadata (generation, clean flag) comes back.
    let generation = a.m.status().generation;
    a.on(a.m.demote()).unwrap();
    a.stop();
    let a = c.start("a");
    assert_eq!(a.m.status().generation, generation);
    assert_eq!(
        a.peer("b").out_of_sync_bytes,
        0,
        "a clean restart: nothing to resync"
    );
    a.stop();
    b.stop();
    assert_eq!(
        read_at(&c.backing("a"), 0, size as usize),
        read_at(&c.backing("b"), 0, size as usize)
    );
    // Opened with external metadata by mistake: refused, not started over.
    match c.try_start("a", MetaPlacement::External) {
        Err(MirrorError::Meta(e @ MetaError::InternalPresent { .. })) => {
            assert!(e.to_string().contains("convert-metadata"), "{e}")
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("opened internal metadata as external"),
    }
}

/// An external-metadata copy of `size` bytes with data, generations and a bitmap.
fn external_copy(dir: &Path, size: u64) -> (ConvertSpec, DirtyBitmap) {
    let backing = dir.join("backing.raw");
    let f = std::fs::File::create(&backing).unwrap();
    f.set_len(size).unwrap();
    f.write_all_at(&pattern(1, 3 * MIB as usize), 0).unwrap();
    f.write_all_at(&pattern(2, 4096), size - 4096).unwrap();
    let state = dir.join("state");
    let (store, _) = MetaStore::open(&state, size).unwrap();
    let mut copy = tandem::mirror::replica::meta::CopyMeta::fresh(size);
    copy.generations.current = 77;
    store.save_copy(&copy).unwrap();
    let bm = marked(size, &[(MIB, 8192), (size - 4096, 4096)]);
    store.save_bitmap("b", &bm).unwrap();
    store.save_al(&[0, 5]).unwrap();
    store.set_clean(true).unwrap();
    let spec = ConvertSpec {
        mirror: "vol0".into(),
        backing,
        dir: state,
        peer_slots: 2,
        peers: vec!["b".into(), "c".into()],
        as_device: false,
    };
    (spec, bm)
}

#[test]
fn conversion_external_internal_external_keeps_data_and_bitmaps() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    let (spec, bm) = external_copy(dir.path(), size);
    let data = std::fs::read(&spec.backing).unwrap();

    let done = convert::to_internal(&spec).unwrap();
    assert_eq!(done.data_size, size);
    assert_eq!(done.area_bytes, layout::area_bytes(size, 2));
    let grown = std::fs::read(&spec.backing).unwrap();
    assert_eq!(grown.len() as u64, size + done.area_bytes);
    assert_eq!(&grown[..size as usize], &data[..], "the data is untouched");
    assert!(
        !spec.dir.join("state.json").exists(),
        "old metadata removed"
    );
    assert!(matches!(
        convert::to_internal(&spec),
        Err(MetaError::AlreadyConverted("internal"))
    ));
    {
        let (store, loaded) =
            MetaStore::open_internal(&spec.dir, &spec.backing, "vol0", 2, Some(size)).unwrap();
        assert_eq!(loaded.copy.generations.current, 77);
        assert_eq!(
            (loaded.clean, loaded.al_extents.clone()),
            (true, vec![0, 5])
        );
        assert_eq!(store.load_bitmap("b", size).unwrap(), bm);
        assert!(store.load_bitmap("c", size).unwrap().is_clean());
    }

    let done = convert::to_external(&spec).unwrap();
    assert_eq!(done.note, None);
    assert_eq!(std::fs::read(&spec.backing).unwrap(), data, "byte for byte");
    let (store, loaded) = MetaStore::open(&spec.dir, size).unwrap();
    assert_eq!(loaded.copy.generations.current, 77);
    assert_eq!((loaded.clean, loaded.al_extents), (true, vec![0, 5]));
    assert_eq!(store.load_bitmap("b", size).unwrap(), bm);
}

#[test]
fn conversion_is_refused_while_the_mirror_is_open() {
    let dir = tempfile::tempdir().unwrap();
    let (spec, _) = external_copy(dir.path(), 16 * MIB);
    let data = std::fs::read(&spec.backing).unwrap();
    let (_open, _) = MetaStore::open(&spec.dir, 16 * MIB).unwrap();
    let e = convert::to_internal(&spec).unwrap_err();
    assert!(matches!(e, MetaError::InUse { .. }), "{e}");
    assert!(e.to_string().contains("stop the daemon"), "{e}");
    assert_eq!(std::fs::read(&spec.backing).unwrap(), data);
}

#[test]
fn conversion_of_a_device_is_refused_while_the_tail_holds_data() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    // As on a block device: the backing cannot grow, and its last bytes hold data.
    let (mut spec, bm) = external_copy(dir.path(), size);
    spec.as_device = true;
    let data = std::fs::read(&spec.backing).unwrap();
    let e = convert::to_internal(&spec).unwrap_err();
    let MetaError::TailInUse {
        offset,
        first_nonzero,
        ..
    } = e
    else {
        panic!("unexpected {e}");
    };
    assert_eq!(offset, layout::max_data_size(size, 2).unwrap());
    assert_eq!(first_nonzero, size - 4096);
    assert!(e.to_string().contains("Shrink"), "{e}");
    assert_eq!(
        std::fs::read(&spec.backing).unwrap(),
        data,
        "nothing written"
    );
    assert!(spec.dir.join("state.json").exists(), "old metadata kept");

    // Once the operator has moved that data away (zeros), the volume shrinks to fit.
    write_at(&spec.backing, size - 4096, &[0; 4096]);
    let done = convert::to_internal(&spec).unwrap();
    let fits = layout::max_data_size(size, 2).unwrap();
    assert_eq!((done.data_size, done.backing_size), (fits, size));
    assert!(done.note.unwrap().contains(&format!("size = {fits}")));
    assert_eq!(std::fs::metadata(&spec.backing).unwrap().len(), size);
    let (store, _) =
        MetaStore::open_internal(&spec.dir, &spec.backing, "vol0", 2, Some(fits)).unwrap();
    let kept = store.load_bitmap("b", fits).unwrap();
    assert!(
        kept.is_dirty(MIB / 4096) && kept.dirty_blocks() == 2,
        "{bm:?}"
    );
    drop(store);
    // Back to external: the device keeps its size, the area is zeroed.
    let done = convert::to_external(&spec).unwrap();
    assert!(done.note.unwrap().contains(&format!("size = {fits}")));
    let after = std::fs::read(&spec.backing).unwrap();
    assert_eq!(&after[..fits as usize], &data[..fits as usize]);
    assert!(after[fits as usize..].iter().all(|&b| b == 0));
}

/// A two-node config of mirror `vol0` (node `a`'s copy under `dir`, 64 MiB), with
/// `[cluster] mirror_metadata` and the mirror's own `metadata` set when given.
fn config_of(dir: &Path, cluster_default: Option<&str>, own: Option<&str>) -> Config {
    let line = |key: &str, v: Option<&str>| v.map(|v| format!("{key} = \"{v}\"\n"));
    let text = format!(
        r#"
[cluster]
name = "metatest"
key = "0123456789abcdef0123"
state_dir = "{state}"
{cluster_line}
[heartbeat]
paths = ["lo"]

[[node]]
name = "a"
priority = 1
addresses = {{ lo = "127.0.0.1" }}

[[node]]
name = "b"
priority = 2
addresses = {{ lo = "127.0.0.2" }}

[[mirror]]
name = "vol0"
backing = "{backing}"
size = "64MiB"
{own_line}addresses = {{ a = "{la}", b = "{lb}" }}
[[mirror.link]]
between = ["a", "b"]
"#,
        state = dir.join("state").display(),
        backing = dir.join("a.raw").display(),
        cluster_line = line("mirror_metadata", cluster_default).unwrap_or_default(),
        own_line = line("metadata", own).unwrap_or_default(),
        la = free_tcp_addr(),
        lb = free_tcp_addr(),
    );
    Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Node `a`'s copy of the config's mirror, opened as the daemon opens it (the spec from
/// the config; no fencing, as its peer never comes up).
fn open_from_config(cfg: &Config) -> Result<Node, MirrorError> {
    let mut spec = MirrorSpec::from_config(&cfg.mirrors[0], cfg, "a", KEY)?;
    spec.fencing = false;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let m = rt.block_on(Mirror::open(spec, EventLog::in_memory("a")))?;
    Ok(Node {
        name: "a".into(),
        m,
        rt: Some(rt),
    })
}

/// Every file under `dir` (path, contents), but the lock.
fn files_under(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n != "lock") {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// The mirror of `cfg` refuses to open: the error names the conversion (`--to
/// convert_to`) and the cluster-wide key, and nothing on disk changed.
fn refused(cfg: &Config, dir: &Path, convert_to: &str) -> MetaError {
    let (backing, meta) = (std::fs::read(dir.join("a.raw")).unwrap(), files_under(dir));
    let e = match open_from_config(cfg) {
        Err(MirrorError::Meta(e)) => e,
        Err(e) => panic!("unexpected error {e}"),
        Ok(n) => {
            n.stop();
            panic!("opened with the other kind of metadata")
        }
    };
    let said = e.to_string();
    let command = format!("tandem mirror convert-metadata vol0 --to {convert_to}");
    assert!(said.contains(&command), "{said}");
    assert!(said.contains("mirror_metadata"), "{said}");
    assert_eq!(std::fs::read(dir.join("a.raw")).unwrap(), backing);
    assert_eq!(files_under(dir), meta, "nothing written");
    e
}

#[test]
fn a_changed_metadata_default_refuses_the_mirror_until_it_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let size = 64 * MIB;
    // Made on the generic default (external), written while its peer is away.
    let external = config_of(dir.path(), None, None);
    let a = open_from_config(&external).unwrap();
    a.on(a.m.promote(OwnershipEpoch(0))).unwrap();
    a.write(0, pattern(1, MIB as usize));
    a.write(40 * MIB, pattern(2, 8192));
    a.on(a.m.flush()).unwrap();
    let out_of_sync = a.peer("b").out_of_sync_bytes;
    assert_eq!(out_of_sync, MIB + 8192);
    let generation = a.m.status().generation;
    a.on(a.m.demote()).unwrap();
    a.stop();
    let data = read_at(&dir.path().join("a.raw"), 0, size as usize);

    // The cluster-wide default becomes internal: refused, nothing touched.
    let internal = config_of(dir.path(), Some("internal"), None);
    let e = refused(&internal, dir.path(), "internal");
    assert!(matches!(e, MetaError::ExternalPresent { .. }), "{e}");
    // The mirror's own `metadata` overrides the default: it opens as it was.
    let a = open_from_config(&config_of(dir.path(), Some("internal"), Some("external"))).unwrap();
    assert_eq!(a.peer("b").out_of_sync_bytes, out_of_sync);
    assert_eq!(a.m.status().generation, generation);
    a.stop();

    // Converted, it opens on the internal default with its bitmap and data...
    let m = &internal.mirrors[0];
    let spec = ConvertSpec::from_config(m, "a", &internal.cluster.state_dir);
    convert::to_internal(&spec).unwrap();
    let a = open_from_config(&internal).unwrap();
    assert_eq!(a.m.size(), size);
    assert_eq!(a.peer("b").out_of_sync_bytes, out_of_sync);
    assert_eq!(a.m.status().generation, generation);
    a.stop();
    assert_eq!(read_at(&dir.path().join("a.raw"), 0, size as usize), data);
    // ...and the external default now refuses it the other way round.
    let e = refused(&external, dir.path(), "external");
    assert!(matches!(e, MetaError::InternalPresent { .. }), "{e}");
}
