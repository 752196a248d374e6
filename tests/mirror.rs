//! The replicated volume end to end: two and three `Mirror`s on loopback TCP with
//! temporary backing files, each node in its own tokio runtime so that dropping the
//! runtime is a crash (files keep what reached the page cache, nothing is persisted on
//! the way out). A counting TCP proxy between nodes measures the replication traffic.

use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tandem::config::ReplicationMode;
use tandem::event::{EventKind, EventLog};
use tandem::mirror::generation::{DiskState, OwnershipEpoch, SplitBrainPolicy};
use tandem::mirror::replica::{Mirror, MirrorError, MirrorSpec, PeerSpec};
use tandem::mirror::Export;
use tandem::status::{LinkState, MirrorRole};

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{free_tcp_addr, wait_until};

#[path = "common/stand_in.rs"]
mod stand_in;
use stand_in::stand_in_params;

const MIB: u64 = 1 << 20;
/// The ownership epoch of tests that do not exercise epochs.
const E0: OwnershipEpoch = OwnershipEpoch(0);
const KEY: &[u8] = b"cluster key for the mirror tests";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A TCP forwarder that counts the bytes it carries (both directions).
struct Proxy {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    /// While set, nothing is forwarded (a congested or stalled link).
    stalled: Arc<std::sync::atomic::AtomicBool>,
    _rt: tokio::runtime::Runtime,
}

impl Proxy {
    fn new(to: SocketAddr) -> Proxy {
        let rt = runtime();
        let bytes = Arc::new(AtomicU64::new(0));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let counter = Arc::clone(&bytes);
        let stalled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stall = Arc::clone(&stalled);
        rt.spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let counter = Arc::clone(&counter);
                let stall = Arc::clone(&stall);
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(to).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let c1 = Arc::clone(&counter);
                    let s1 = Arc::clone(&stall);
                    let a = tokio::spawn(async move { pump(&mut ri, &mut wo, &c1, &s1).await });
                    let b =
                        tokio::spawn(async move { pump(&mut ro, &mut wi, &counter, &stall).await });
                    let _ = tokio::join!(a, b);
                });
            }
        });
        Proxy {
            addr,
            bytes,
            stalled,
            _rt: rt,
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
}

async fn pump(
    r: &mut tokio::net::tcp::OwnedReadHalf,
    w: &mut tokio::net::tcp::OwnedWriteHalf,
    counter: &AtomicU64,
    stalled: &std::sync::atomic::AtomicBool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = w.shutdown().await;
                return;
            }
            Ok(n) => {
                // Bytes read just before a stall are held until it ends, too.
                while stalled.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                counter.fetch_add(n as u64, Ordering::SeqCst);
                if w.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The static description of a test cluster.
struct Cluster {
    dir: tempfile::TempDir,
    size: u64,
    nodes: Vec<(String, SocketAddr)>,
    /// Overrides of the address a node dials for a peer (a proxy): (from, to, addr).
    routes: Vec<(String, String, SocketAddr)>,
    mode: ReplicationMode,
    keys: Vec<(String, Vec<u8>)>,
    rate_limit: Option<u64>,
    queue_bytes: u64,
    fencing: bool,
    link_timeout: Duration,
    /// Copies every other copy replicates to asynchronously (the rest: `mode`).
    async_copies: Vec<String>,
    split_brain: SplitBrainPolicy,
}

impl Cluster {
    fn new(names: &[&str], size: u64) -> Cluster {
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            size,
            nodes: names
                .iter()
                .map(|n| (n.to_string(), free_tcp_addr()))
                .collect(),
            routes: Vec::new(),
            mode: ReplicationMode::Sync,
            keys: Vec::new(),
            rate_limit: None,
            queue_bytes: 64 * MIB,
            fencing: false,
            link_timeout: Duration::from_secs(6),
            async_copies: Vec::new(),
            split_brain: SplitBrainPolicy::Disconnect,
        }
    }

    fn listen(&self, node: &str) -> SocketAddr {
        self.nodes.iter().find(|(n, _)| n == node).unwrap().1
    }

    /// Routes `from`'s connections to `to` through a counting proxy.
    fn proxy(&mut self, from: &str, to: &str) -> Proxy {
        let p = Proxy::new(self.listen(to));
        self.routes.push((from.into(), to.into(), p.addr));
        p
    }

    fn backing(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.raw"))
    }

    fn spec(&self, node: &str) -> MirrorSpec {
        let peers = self
            .nodes
            .iter()
            .filter(|(n, _)| n != node)
            .map(|(n, addr)| PeerSpec {
                node: n.clone(),
                address: self
                    .routes
                    .iter()
                    .find(|(f, t, _)| f == node && t == n)
                    .map(|r| r.2)
                    .unwrap_or(*addr),
                mode: if self.async_copies.contains(n) {
                    ReplicationMode::Async
                } else {
                    self.mode
                },
                rate_limit: self.rate_limit,
                queue_bytes: self.queue_bytes,
                lag_budget: Some(Duration::from_secs(5)),
                encrypt: false,
                compress: Default::default(),
                timeout: self.link_timeout,
            })
            .collect();
        let key = self
            .keys
            .iter()
            .find(|(n, _)| n == node)
            .map(|k| k.1.clone())
            .unwrap_or_else(|| KEY.to_vec());
        MirrorSpec {
            name: "vol0".into(),
            cluster: "test".into(),
            local_node: node.into(),
            key,
            backing: self.backing(node),
            size: Some(self.size),
            meta_dir: self.dir.path().join(format!("meta-{node}")),
            metadata: tandem::mirror::replica::meta::MetaPlacement::External,
            listen: self.listen(node),
            peers,
            split_brain: self.split_brain,
            fencing: self.fencing,
        }
    }

    fn start(&self, node: &str) -> Node {
        let rt = runtime();
        let events = EventLog::in_memory(node);
        let m = rt
            .block_on(Mirror::open(self.spec(node), events.clone()))
            .unwrap();
        Node {
            name: node.into(),
            m,
            events,
            rt: Some(rt),
        }
    }
}

/// One running node.
struct Node {
    name: String,
    m: Arc<Mirror>,
    events: EventLog,
    rt: Option<tokio::runtime::Runtime>,
}

impl Node {
    fn on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.rt.as_ref().unwrap().block_on(f)
    }

    fn write(&self, offset: u64, data: Vec<u8>) {
        self.on(self.m.write(offset, data, false)).unwrap();
    }

    fn peer_connection(&self, peer: &str) -> &'static str {
        self.peer(peer).connection.name()
    }

    fn peer(&self, peer: &str) -> tandem::mirror::status::MirrorPeerStatus {
        self.m
            .status()
            .peers
            .into_iter()
            .find(|p| p.node == peer)
            .unwrap()
    }

    fn events(&self, kind: EventKind) -> Vec<tandem::event::Event> {
        self.events
            .since(0, 10_000)
            .into_iter()
            .filter(|e| e.kind == kind)
            .collect()
    }

    /// A crash: the runtime (and every task and socket) goes away, nothing is saved.
    fn crash(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }

    fn stop(mut self) {
        self.on(self.m.shutdown());
        if let Some(rt) = self.rt.take() {
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

fn connected(a: &Node, b: &Node) {
    wait_until(
        &format!("{} and {} connected", a.name, b.name),
        Duration::from_secs(10),
        || a.peer_connection(&b.name) == "connected" && b.peer_connection(&a.name) == "connected",
    );
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

fn read_file(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

fn files_equal(a: &Path, b: &Path) -> bool {
    std::fs::read(a).unwrap() == std::fs::read(b).unwrap()
}

#[test]
fn a_sync_write_is_on_the_peer_when_it_completes() {
    let c = Cluster::new(&["a", "b"], 64 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    assert!(a.m.is_primary());
    for i in 0..32u64 {
        let data = pattern(i, 64 * 1024);
        a.write(i * MIB + 4096, data.clone());
        // Completed: the peer applied it already.
        assert_eq!(read_file(&c.backing("b"), i * MIB + 4096, data.len()), data);
    }
    a.on(a.m.flush()).unwrap();
    a.on(a.m.write_zeroes(0, 8192, true, false)).unwrap();
    a.on(a.m.trim(10 * MIB, 65536)).unwrap();
    assert_eq!(read_file(&c.backing("b"), 0, 8192), vec![0; 8192]);
    let s = a.m.status();
    assert_eq!(s.role, MirrorRole::Primary);
    assert_eq!(s.written_bytes, 32 * 64 * 1024);
    assert_eq!(s.peers[0].replicated_bytes, 32 * 64 * 1024);
    assert_eq!(s.peers[0].lag_bytes, 0);
    assert_eq!(b.m.status().generation, s.generation);
    // The secondary serves nothing.
    assert!(matches!(
        b.on(b.m.write(0, vec![1u8; 512], false)),
        Err(tandem::mirror::ExportError::ReadOnly)
    ));
    assert!(matches!(
        b.on(b.m.read(0, 512)),
        Err(tandem::mirror::ExportError::Shutdown)
    ));
    assert_eq!(a.events(EventKind::MirrorPromoted).len(), 1);
    a.on(a.m.demote()).unwrap();
    assert_eq!(a.events(EventKind::MirrorDemoted).len(), 1);
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

#[test]
fn a_disconnected_peer_gets_only_the_changed_blocks() {
    let mut c = Cluster::new(&["a", "b"], 256 * MIB);
    let proxy = c.proxy("a", "b");
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.write(0, pattern(1, 4 * MIB as usize));
    // Flushed on the peer: nothing applied-but-volatile is left to mark on the drop.
    a.on(a.m.flush()).unwrap();
    a.on(a.m.disconnect(Some("b"))).unwrap();
    assert_eq!(a.peer_connection("b"), "disconnected");
    // 300 scattered 4 KiB writes and one 1 MiB write while apart.
    let mut changed = std::collections::BTreeSet::new();
    for i in 0..300u64 {
        let off = (i * 7919 * 4096) % (200 * MIB);
        a.write(off, pattern(100 + i, 4096));
        changed.insert(off / 4096);
    }
    a.write(210 * MIB, pattern(7, MIB as usize));
    for blk in 0..256 {
        changed.insert(210 * MIB / 4096 + blk);
    }
    let changed_bytes = changed.len() as u64 * 4096;
    assert_eq!(a.peer("b").out_of_sync_bytes, changed_bytes);
    let before = proxy.bytes();
    let resynced_before = a.peer("b").resynced_bytes;
    a.on(a.m.connect(Some("b"))).unwrap();
    in_sync(&a, &b);
    let resynced = a.peer("b").resynced_bytes - resynced_before;
    assert!(
        resynced as f64 <= 1.05 * changed_bytes as f64 && resynced >= changed_bytes,
        "resynced {resynced} for {changed_bytes} changed"
    );
    let wire = proxy.bytes() - before;
    assert!(wire < changed_bytes + 4 * MIB, "wire {wire}");
    let started = a.events(EventKind::ResyncStarted);
    assert_eq!(started.last().unwrap().fields["direction"], "source");
    assert_eq!(started.last().unwrap().fields["full"], "false");
    assert_eq!(a.events(EventKind::ResyncCompleted).len(), 1);
    assert_eq!(b.events(EventKind::ResyncCompleted).len(), 1);
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

#[test]
fn a_full_resync_of_a_sparse_volume_sends_zero_ranges_not_payload() {
    let mut c = Cluster::new(&["a", "b"], 512 * MIB);
    let proxy = c.proxy("a", "b");
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.write(100 * MIB, pattern(3, 2 * MIB as usize));
    a.on(a.m.flush()).unwrap();
    let before = proxy.bytes();
    a.on(a.m.resync_full(Some("b"))).unwrap();
    wait_until("full resync done", Duration::from_secs(60), || {
        a.events(EventKind::ResyncCompleted).len() == 1
    });
    in_sync(&a, &b);
    let wire = proxy.bytes() - before;
    assert!(
        wire < 4 * MIB,
        "a full resync of a sparse 512 MiB volume moved {wire} bytes"
    );
    let p = a.peer("b");
    assert_eq!(p.resynced_bytes, 512 * MIB);
    let started = a.events(EventKind::ResyncStarted);
    assert_eq!(started[0].fields["full"], "true");
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

#[test]
fn failover_reverses_the_resync_direction() {
    let c = Cluster::new(&["a", "b"], 64 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.write(0, pattern(1, MIB as usize));
    a.stop();
    // b takes over without a and writes.
    wait_until("b sees a gone", Duration::from_secs(5), || {
        b.peer_connection("a") != "connected"
    });
    b.on(b.m.promote(E0)).unwrap();
    b.write(8 * MIB, pattern(2, 256 * 1024));
    b.write(20 * MIB, pattern(3, 4096));
    assert_eq!(b.peer("a").out_of_sync_bytes, 256 * 1024 + 4096);
    let a = c.start("a");
    in_sync(&b, &a);
    let started = a.events(EventKind::ResyncStarted);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].fields["direction"], "target");
    assert_eq!(started[0].fields["full"], "false");
    assert_eq!(b.peer("a").resynced_bytes, 256 * 1024 + 4096);
    assert_eq!(a.m.status().generation, b.m.status().generation);
    b.on(b.m.demote()).unwrap();
    b.stop();
    a.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

/// The returning copy is older even when the new primary wrote nothing: an empty
/// resync must still run, or it stays SyncTarget (never promotable) for good.
#[test]
fn a_returning_copy_leaves_sync_target_when_nothing_changed() {
    let c = Cluster::new(&["a", "b"], 64 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.write(0, pattern(1, MIB as usize));
    a.stop();
    wait_until("b sees a gone", Duration::from_secs(5), || {
        b.peer_connection("a") != "connected"
    });
    b.on(b.m.promote(E0)).unwrap();
    let a = c.start("a");
    in_sync(&b, &a);
    wait_until("a up to date", Duration::from_secs(10), || {
        a.m.status().disk == DiskState::UpToDate
    });
    assert_eq!(a.m.status().generation, b.m.status().generation);
    // And it may take the volume back once b has stepped down.
    b.on(b.m.demote()).unwrap();
    wait_until("a promotes", Duration::from_secs(10), || {
        a.on(a.m.promote(E0)).is_ok()
    });
    a.on(a.m.demote()).unwrap();
    b.stop();
    a.stop();
}

#[test]
fn a_crashed_primary_resyncs_only_its_activity_log() {
    let c = Cluster::new(&["a", "b"], 1024 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    // Writes spread over 3 extents, then a crash.
    for i in 0..48u64 {
        a.write((i % 3) * 300 * MIB + i * 65536, pattern(i, 65536));
    }
    a.crash();
    wait_until("b sees a gone", Duration::from_secs(5), || {
        b.peer_connection("a") != "connected"
    });
    let a = c.start("a");
    // The crash-dirty extents are out of sync for b, bounded by the activity log.
    let oos = a.peer("b").out_of_sync_bytes;
    assert!(oos > 0 && oos <= 3 * 4 * MIB, "crash-dirty {oos}");
    connected(&a, &b);
    // Two secondaries: nothing moves until one is promoted and reconciles.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(a.peer("b").resynced_bytes, 0);
    a.on(a.m.promote(E0)).unwrap();
    in_sync(&a, &b);
    let resynced = a.peer("b").resynced_bytes;
    assert!(resynced <= 3 * 4 * MIB, "resynced {resynced}");
    a.write(5 * MIB, pattern(99, 4096));
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

#[test]
fn a_peer_with_the_wrong_key_is_refused_and_never_writes() {
    let mut c = Cluster::new(&["a", "b"], 16 * MIB);
    c.keys.push(("b".into(), b"not the cluster key".to_vec()));
    let a = c.start("a");
    let b = c.start("b");
    wait_until("refused on both sides", Duration::from_secs(10), || {
        a.peer_connection("b") == "refused" && b.peer_connection("a") == "refused"
    });
    a.on(a.m.promote(E0)).unwrap();
    a.write(0, pattern(5, 65536));
    b.on(b.m.promote(E0)).unwrap();
    b.write(MIB, pattern(6, 4096));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(read_file(&c.backing("b"), 0, 65536), vec![0; 65536]);
    assert_eq!(read_file(&c.backing("a"), MIB, 4096), vec![0; 4096]);
    assert_eq!(a.peer_connection("b"), "refused");
    a.stop();
    b.stop();
}

/// A peer that passes the handshake (it holds the key) and then hangs up before the
/// state exchange is redialled with a growing backoff, not in a tight loop.
#[test]
fn a_peer_that_fails_the_state_exchange_is_redialled_with_backoff() {
    use tandem::mirror::wire::handshake;
    let c = Cluster::new(&["a", "b"], 16 * MIB);
    // "a" dials "b" (the lower name dials); "b" is this stand-in.
    let rt = runtime();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(c.listen("b")))
        .unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    rt.spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let (r, mut w) = stream.into_split();
            let params = stand_in_params("b", KEY, Default::default());
            // Authenticated, then gone: no State.
            let _ = handshake(r, &mut w, &params, Some("a")).await;
        }
    });
    let a = c.start("a");
    std::thread::sleep(Duration::from_secs(3));
    let dials = accepted.load(Ordering::SeqCst);
    // Backoff 200, 400, 800, 1600 ms: about 4 dials in 3 s (a tight loop made hundreds).
    assert!((2..=8).contains(&dials), "{dials} dials in 3 s");
    a.stop();
    drop(rt);
}

/// A copy that refuses a peer's stale epoch takes the next session after the link's
/// own backoff (200 ms doubling), not after a fixed 2 s sleep on top of it: a deposed
/// primary that steps down is followed again within a fraction of a second.
#[test]
fn a_refused_stale_epoch_is_retried_with_the_links_backoff_alone() {
    use tandem::mirror::wire::{handshake, Frame};
    let c = Cluster::new(&["a", "b", "c"], 16 * MIB);
    // "a" is a stand-in that dials "b" (the lower name dials) once b is primary at
    // epoch 3, and claims to be primary at epoch 2, again as soon as b hangs up.
    let b = c.start("b");
    let n3 = c.start("c");
    connected(&b, &n3);
    b.on(b.m.promote(OwnershipEpoch(3))).unwrap();
    let rt = runtime();
    let sessions = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&sessions);
    let to = c.listen("b");
    rt.spawn(async move {
        loop {
            let Ok(stream) = tokio::net::TcpStream::connect(to).await else {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let (r, mut w) = stream.into_split();
            let params = stand_in_params("a", KEY, Default::default());
            let Ok((mut reader, mut writer, _)) = handshake(r, &mut w, &params, Some("b")).await
            else {
                continue;
            };
            let Ok(Frame::State(mut state)) = reader.recv().await else {
                continue;
            };
            if state.primary {
                count.fetch_add(1, Ordering::SeqCst);
            }
            state.node = "a".into();
            state.primary = true;
            state.epoch = OwnershipEpoch(2);
            let _ = writer.send(&Frame::State(state)).await;
            // b's goodbye, or the connection's end.
            while reader.recv().await.is_ok() {}
        }
    });
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let refused = sessions.load(Ordering::SeqCst);
    // Backoff 200, 400, 800, 1600 ms: 4 or 5 sessions in 3 s; with a fixed 2 s sleep
    // before the backoff, 2.
    assert!(
        (3..=8).contains(&refused),
        "{refused} sessions refused by the primary in {:?}",
        start.elapsed()
    );
    let stale = b.events(EventKind::MirrorDisconnected);
    assert!(
        stale
            .iter()
            .any(|e| e.fields.get("reason").map(String::as_str) == Some("stale_epoch")),
        "{stale:?}"
    );
    drop(rt);
    b.on(b.m.demote()).unwrap();
    b.stop();
    n3.stop();
}

#[test]
fn an_outdated_copy_is_not_promoted() {
    let c = Cluster::new(&["a", "b"], 64 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    wait_until("b learns the generation", Duration::from_secs(5), || {
        b.m.status().generation == a.m.status().generation
    });
    // b leaves a running primary: it knows it falls behind.
    b.stop();
    a.write(0, pattern(1, MIB as usize));
    a.on(a.m.disconnect(Some("b"))).unwrap();
    let b = c.start("b");
    assert_eq!(b.m.status().disk, DiskState::Outdated);
    let err = b.on(b.m.promote(E0)).unwrap_err();
    assert!(matches!(err, MirrorError::Refused(_)), "{err}");
    let refused = b.events(EventKind::MirrorPromotionRefused);
    assert_eq!(refused.len(), 1);
    assert!(refused[0].fields["reason"].contains("Outdated"));
    // Back in touch, it resyncs and is UpToDate again.
    a.on(a.m.connect(Some("b"))).unwrap();
    in_sync(&a, &b);
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

#[test]
fn a_target_that_crashed_mid_resync_is_inconsistent_until_it_finishes() {
    let mut c = Cluster::new(&["a", "b"], 128 * MIB);
    c.rate_limit = Some(8 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.on(a.m.disconnect(Some("b"))).unwrap();
    a.write(16 * MIB, pattern(2, 32 * MIB as usize));
    a.on(a.m.connect(Some("b"))).unwrap();
    wait_until("resync running", Duration::from_secs(10), || {
        a.peer("b").resync.is_some_and(|r| r.done_bytes >= 8 * MIB)
    });
    b.crash();
    a.on(a.m.disconnect(Some("b"))).unwrap();
    let b = c.start("b");
    assert_eq!(b.m.status().disk, DiskState::SyncTarget);
    let err = b.on(b.m.promote(E0)).unwrap_err();
    assert!(matches!(err, MirrorError::Refused(_)), "{err}");
    // Reconnected, it finishes from the source's remaining bits.
    let left = a.peer("b").out_of_sync_bytes;
    assert!(left > 0 && left < 32 * MIB, "left {left}");
    a.on(a.m.connect(Some("b"))).unwrap();
    in_sync(&a, &b);
    let started = b.events(EventKind::ResyncStarted);
    assert_eq!(started.last().unwrap().fields["full"], "false");
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

#[test]
fn a_paused_peer_catches_up_on_resume() {
    let c = Cluster::new(&["a", "b"], 64 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.on(a.m.pause(Some("b"))).unwrap();
    assert_eq!(a.peer_connection("b"), "paused");
    a.write(MIB, pattern(4, 128 * 1024));
    assert_eq!(read_file(&c.backing("b"), MIB, 4096), vec![0; 4096]);
    assert_eq!(a.peer("b").out_of_sync_bytes, 128 * 1024);
    a.on(a.m.resume(Some("b"))).unwrap();
    in_sync(&a, &b);
    assert_eq!(a.peer("b").resynced_bytes, 128 * 1024);
    assert_eq!(a.events(EventKind::MirrorPaused).len(), 1);
    assert_eq!(a.events(EventKind::MirrorResumed).len(), 1);
    assert_eq!(
        read_file(&c.backing("b"), MIB, 128 * 1024),
        pattern(4, 128 * 1024)
    );
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
}

#[test]
fn verify_finds_a_corrupted_block_on_the_peer_and_repairs_it() {
    let c = Cluster::new(&["a", "b"], 32 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.write(0, pattern(8, 8 * MIB as usize));
    a.on(a.m.flush()).unwrap();
    // Bit rot on the peer's disk, behind the mirror's back.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.backing("b"))
        .unwrap();
    f.write_all_at(&[0xff; 100], 5 * MIB + 10).unwrap();
    f.write_all_at(&[0x01], 20 * MIB).unwrap();
    f.sync_all().unwrap();
    a.on(a.m.verify(Some("b"))).unwrap();
    wait_until("verify done", Duration::from_secs(30), || {
        a.events(EventKind::VerifyCompleted).len() == 1
    });
    let v = a.peer("b").verify.unwrap();
    assert!(!v.running);
    assert_eq!(v.checked_bytes, 32 * MIB);
    assert_eq!(v.out_of_sync_bytes, 2 * 4096);
    assert_eq!(
        a.events(EventKind::VerifyCompleted)[0].fields["bytes"],
        "8192"
    );
    in_sync(&a, &b);
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

#[test]
fn async_peers_lag_and_overflow_into_the_bitmap() {
    let mut c = Cluster::new(&["a", "b"], 64 * MIB);
    c.mode = ReplicationMode::Async;
    c.queue_bytes = 4 * MIB;
    let proxy = c.proxy("a", "b");
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    let status = a.peer("b");
    assert_eq!(status.mode, ReplicationMode::Async);
    assert_eq!(status.lag_budget_seconds, Some(5.0));
    // A stalled link: writes complete locally and queue up as lag.
    proxy.stall(true);
    let start = Instant::now();
    for i in 0..8u64 {
        a.write(i * 256 * 1024, pattern(i, 256 * 1024));
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "async writes waited for the peer"
    );
    std::thread::sleep(Duration::from_millis(300));
    let p = a.peer("b");
    assert_eq!(p.lag_bytes, 2 * MIB);
    assert!(p.lag_seconds >= 0.3, "lag {}", p.lag_seconds);
    assert_eq!(p.out_of_sync_bytes, 0);
    // Past the 4 MiB queue, writes go to the bitmap instead.
    for i in 0..4u64 {
        a.write(8 * MIB + i * MIB, pattern(100 + i, MIB as usize));
    }
    let p = a.peer("b");
    assert!(p.lag_bytes <= 4 * MIB, "lag {}", p.lag_bytes);
    assert!(
        p.out_of_sync_bytes >= 2 * MIB,
        "oos {}",
        p.out_of_sync_bytes
    );
    // The link recovers: the queue drains and the bitmap is resynced.
    proxy.stall(false);
    wait_until("lag drained", Duration::from_secs(20), || {
        let p = a.peer("b");
        p.lag_bytes == 0 && p.lag_seconds == 0.0
    });
    in_sync(&a, &b);
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

#[test]
fn two_primaries_apart_are_a_split_brain_and_stay_apart() {
    let c = Cluster::new(&["a", "b"], 16 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.on(a.m.disconnect(Some("b"))).unwrap();
    wait_until("b sees the link down", Duration::from_secs(5), || {
        b.peer_connection("a") != "connected"
    });
    b.on(b.m.promote(E0)).unwrap();
    a.write(0, pattern(1, 4096));
    b.write(MIB, pattern(2, 4096));
    a.on(a.m.connect(Some("b"))).unwrap();
    wait_until("split brain on both sides", Duration::from_secs(10), || {
        a.peer_connection("b") == "split_brain" && b.peer_connection("a") == "split_brain"
    });
    assert_eq!(a.events(EventKind::MirrorSplitBrain).len(), 1);
    assert!(a.events(EventKind::ResyncStarted).is_empty());
    assert!(b.events(EventKind::ResyncStarted).is_empty());
    // No data moved.
    assert_eq!(read_file(&c.backing("b"), 0, 4096), vec![0; 4096]);
    assert_eq!(read_file(&c.backing("a"), MIB, 4096), vec![0; 4096]);
    a.stop();
    b.stop();
}

/// `a` and `b` connected, then apart with both primary (at `epochs`), each writing a
/// 4 KiB block at each of its offsets; `a`'s link stays administratively down.
fn split_apart(
    c: &Cluster,
    epochs: (u64, u64),
    writes_a: &[u64],
    writes_b: &[u64],
) -> (Node, Node) {
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(OwnershipEpoch(epochs.0))).unwrap();
    a.write(8 * MIB, pattern(99, 8192));
    a.on(a.m.disconnect(Some("b"))).unwrap();
    wait_until("b sees the link down", Duration::from_secs(5), || {
        b.peer_connection("a") != "connected"
    });
    b.on(b.m.promote(OwnershipEpoch(epochs.1))).unwrap();
    for &o in writes_a {
        a.write(o, pattern(o + 1, 4096));
    }
    for &o in writes_b {
        b.write(o, pattern(o + 1000, 4096));
    }
    (a, b)
}

fn split_brain_on_both(a: &Node, b: &Node) {
    wait_until("split brain on both sides", Duration::from_secs(10), || {
        a.peer_connection("b") == "split_brain" && b.peer_connection("a") == "split_brain"
    });
}

/// The one dump on `node`: exactly the blocks it wrote apart, `(offset, data)`.
fn only_dump(node: &Node) -> (String, Vec<(u64, Vec<u8>)>) {
    let dumps = node.on(node.m.split_brain_dumps()).unwrap();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let (name, bytes) = node.on(node.m.split_brain_dump(None)).unwrap();
    let (header, runs) = tandem::mirror::replica::dump::decode(&name, &bytes).unwrap();
    assert_eq!(header.node, node.name);
    assert_eq!(header.runs as usize, runs.len());
    (header.resolved_by, runs)
}

fn written_by_b(offsets: &[u64]) -> Vec<(u64, Vec<u8>)> {
    offsets
        .iter()
        .map(|&o| (o, pattern(o + 1000, 4096)))
        .collect()
}

/// b lost: both copies equal byte for byte, b's dump holds exactly what b wrote apart,
/// and both raised the resolution naming `by`.
fn b_was_discarded(c: &Cluster, a: &Node, b: &Node, writes_b: &[u64], by: &str) {
    in_sync(a, b);
    wait_until("equal copies", Duration::from_secs(10), || {
        files_equal(&c.backing("a"), &c.backing("b"))
    });
    for &o in writes_b {
        assert_ne!(read_file(&c.backing("b"), o, 4096), pattern(o + 1000, 4096));
    }
    let (resolved_by, runs) = only_dump(b);
    assert_eq!(resolved_by, by);
    assert_eq!(runs, written_by_b(writes_b));
    for (node, blocks) in [(a, writes_b.len()), (b, writes_b.len())] {
        let ev = node.events(EventKind::MirrorSplitBrainResolved);
        assert_eq!(ev.len(), 1, "{}: {ev:?}", node.name);
        let f = &ev[0].fields;
        assert_eq!(f["policy"], by);
        assert_eq!((f["kept"].as_str(), f["discarded"].as_str()), ("a", "b"));
        assert_eq!(f["blocks"], blocks.to_string());
    }
}

#[test]
fn resolve_keep_on_the_survivor_discards_the_other_copy_after_saving_its_blocks() {
    let c = Cluster::new(&["a", "b"], 16 * MIB);
    let writes_b = [MIB, 3 * MIB + 4096];
    let (a, b) = split_apart(&c, (0, 0), &[0, 2 * MIB], &writes_b);
    a.on(a.m.connect(Some("b"))).unwrap();
    split_brain_on_both(&a, &b);
    // b is primary: its data is never discarded, from either side.
    for node in [&a, &b] {
        let err = node.on(node.m.resolve("a")).unwrap_err();
        assert!(
            matches!(&err, MirrorError::Refused(m) if m.contains("primary")),
            "{err}"
        );
    }
    b.on(b.m.demote()).unwrap();
    // a learns that b stepped down on the link's next try.
    wait_until("a resolves", Duration::from_secs(10), || {
        a.on(a.m.resolve("a")).is_ok()
    });
    b_was_discarded(&c, &a, &b, &writes_b, "administrator");
    assert_eq!(read_file(&c.backing("b"), 0, 4096), pattern(1, 4096));
    a.stop();
    b.stop();
}

#[test]
fn resolve_keep_on_the_discarded_side_saves_its_blocks_first() {
    let c = Cluster::new(&["a", "b"], 16 * MIB);
    let writes_b = [4 * MIB];
    let (a, b) = split_apart(&c, (0, 0), &[0], &writes_b);
    // Not (yet) in split brain: refused; an unknown node is not found.
    let err = b.on(b.m.resolve("a")).unwrap_err();
    assert!(
        matches!(&err, MirrorError::Refused(m) if m.contains("not in split brain")),
        "{err}"
    );
    assert!(matches!(
        a.on(a.m.resolve("zz")).unwrap_err(),
        MirrorError::UnknownPeer(_)
    ));
    a.on(a.m.connect(Some("b"))).unwrap();
    split_brain_on_both(&a, &b);
    b.on(b.m.demote()).unwrap();
    b.on(b.m.resolve("a")).unwrap();
    // The dump is there before anything is overwritten.
    let (_, runs) = only_dump(&b);
    assert_eq!(runs, written_by_b(&writes_b));
    b_was_discarded(&c, &a, &b, &writes_b, "administrator");
    // A resolution is refused once the copies are in sync again.
    let err = b.on(b.m.resolve("a")).unwrap_err();
    assert!(matches!(err, MirrorError::Refused(_)), "{err}");
    a.stop();
    b.stop();
}

#[test]
fn a_dump_that_cannot_be_written_refuses_the_resolution_and_overwrites_nothing() {
    let c = Cluster::new(&["a", "b"], 16 * MIB);
    let writes_b = [MIB];
    let (a, b) = split_apart(&c, (0, 0), &[0], &writes_b);
    // Where b's dumps go is not a directory (as with a full or broken disk).
    let blocker = c.dir.path().join("meta-b").join("split-brain");
    std::fs::write(&blocker, b"in the way").unwrap();
    a.on(a.m.connect(Some("b"))).unwrap();
    split_brain_on_both(&a, &b);
    b.on(b.m.demote()).unwrap();
    let err = b.on(b.m.resolve("a")).unwrap_err();
    assert!(
        matches!(&err, MirrorError::Dump(_)) && err.to_string().contains("split-brain dump"),
        "{err}"
    );
    // Kept from a's side instead: b cannot save its blocks and stays apart.
    wait_until("a resolves", Duration::from_secs(10), || {
        a.on(a.m.resolve("a")).is_ok()
    });
    wait_until("b refuses for its dump", Duration::from_secs(10), || {
        b.events(EventKind::MirrorSplitBrain)
            .iter()
            .any(|e| e.fields["reason"].contains("split-brain dump"))
    });
    assert!(b.events(EventKind::ResyncStarted).is_empty());
    assert_eq!(
        read_file(&c.backing("b"), MIB, 4096),
        pattern(MIB + 1000, 4096)
    );
    // Room again: the next try saves the blocks and resyncs.
    std::fs::remove_file(&blocker).unwrap();
    b_was_discarded(&c, &a, &b, &writes_b, "administrator");
    a.stop();
    b.stop();
}

/// A split brain (b loses) resolved by `policy` at connect, end to end.
fn a_policy_discards_b(
    policy: SplitBrainPolicy,
    epochs: (u64, u64),
    writes_a: &[u64],
    writes_b: &[u64],
    demote_a: bool,
) {
    let mut c = Cluster::new(&["a", "b"], 16 * MIB);
    c.split_brain = policy;
    let (a, b) = split_apart(&c, epochs, writes_a, writes_b);
    // Never a current primary's data: b steps down first.
    b.on(b.m.demote()).unwrap();
    if demote_a {
        a.on(a.m.demote()).unwrap();
    }
    a.on(a.m.connect(Some("b"))).unwrap();
    b_was_discarded(&c, &a, &b, writes_b, policy.name());
    a.stop();
    b.stop();
}

#[test]
fn discard_younger_primary_keeps_the_copy_promoted_first() {
    // b was promoted later (epoch 2 > 1); both stepped down (a, of the older epoch,
    // would be deposed by b's newer one).
    a_policy_discards_b(
        SplitBrainPolicy::DiscardYoungerPrimary,
        (1, 2),
        &[0],
        &[MIB, 2 * MIB],
        true,
    );
}

#[test]
fn discard_least_changes_keeps_the_copy_that_changed_more() {
    a_policy_discards_b(
        SplitBrainPolicy::DiscardLeastChanges,
        (0, 0),
        &[0, 2 * MIB, 5 * MIB],
        &[MIB],
        false,
    );
}

#[test]
fn discard_secondary_and_zero_changes_discard_the_secondary_or_the_unchanged_copy() {
    a_policy_discards_b(
        SplitBrainPolicy::DiscardSecondary,
        (0, 0),
        &[0],
        &[MIB, 3 * MIB],
        false,
    );
    a_policy_discards_b(
        SplitBrainPolicy::DiscardZeroChanges,
        (0, 0),
        &[0],
        &[],
        false,
    );
}

#[test]
fn a_sync_primary_that_loses_its_peer_holds_writes_until_it_is_outdated() {
    let mut c = Cluster::new(&["a", "b"], 64 * MIB);
    c.fencing = true;
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.write(0, pattern(1, 4096));
    b.crash();
    let m = Arc::clone(&a.m);
    let held =
        a.rt.as_ref()
            .unwrap()
            .spawn(async move { m.write(MIB, pattern(2, 4096), false).await });
    wait_until("b listed for outdating", Duration::from_secs(5), || {
        !a.m.pending_outdates().is_empty()
    });
    let pending = a.m.pending_outdates();
    assert_eq!(pending[0].0, "b");
    assert_eq!(format!("{:016x}", pending[0].1), a.m.status().generation);
    assert!(a.m.status().io_frozen);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !held.is_finished(),
        "a write completed while the peer was not outdated"
    );
    a.m.peer_outdated("b");
    a.on(held).unwrap().unwrap();
    assert!(!a.m.status().io_frozen);
    assert_eq!(a.events(EventKind::MirrorPeerOutdated).len(), 1);
    // The held write, and the first one unless a barrier flushed it on the peer.
    let oos = a.peer("b").out_of_sync_bytes;
    assert!((4096..=2 * 4096).contains(&oos), "{oos}");
    a.stop();
}

/// The daemon declares a silent sync peer dead (`peer_dead`) while its replication link
/// still looks up. The dying session used to end itself as a clean, administrative
/// disconnect, racing `peer_dead`'s own unclean link loss: when it won, the primary
/// neither held writes nor listed the peer for outdating, and went on acknowledging
/// writes the peer's copy lacked while that copy was still promotable (found by the
/// lab's 3-node partition scenario). The peer must be listed every time.
#[test]
fn a_sync_peer_declared_dead_is_always_listed_for_outdating() {
    let mut c = Cluster::new(&["a", "b"], 16 * MIB);
    c.fencing = true;
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    for round in 0..10 {
        in_sync(&a, &b);
        a.write(0, pattern(round, 4096));
        a.m.peer_dead("b");
        assert_eq!(
            a.m.pending_outdates().first().map(|p| p.0.as_str()),
            Some("b"),
            "round {round}: b was not listed for outdating"
        );
        a.m.peer_outdated("b");
        connected(&a, &b);
    }
    a.stop();
    b.stop();
}

/// Promoted while its sync peer is away (the old primary died, this copy takes over),
/// a primary holds writes until that peer is outdated: the peer's copy is otherwise
/// still promotable while it lacks what this primary acknowledges.
#[test]
fn a_primary_promoted_without_its_sync_peer_holds_writes_until_it_is_outdated() {
    let mut c = Cluster::new(&["a", "b"], 16 * MIB);
    c.fencing = true;
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    b.crash();
    wait_until("a sees b gone", Duration::from_secs(10), || {
        a.peer_connection("b") != "connected"
    });
    a.on(a.m.promote(E0)).unwrap();
    assert_eq!(
        a.m.pending_outdates().first().map(|p| p.0.as_str()),
        Some("b")
    );
    let m = Arc::clone(&a.m);
    let held =
        a.rt.as_ref()
            .unwrap()
            .spawn(async move { m.write(MIB, pattern(3, 4096), false).await });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !held.is_finished(),
        "a write completed while the absent peer was not outdated"
    );
    a.m.peer_outdated("b");
    a.on(held).unwrap().unwrap();
    a.stop();
}

#[test]
fn a_write_held_for_a_lost_peer_fails_with_eio_when_the_primary_steps_down() {
    // Quorum mode: the owner lost its lease before the log outdated the peer. Its
    // held write must fail (never be acknowledged), and the demote must not hang.
    let mut c = Cluster::new(&["a", "b"], 64 * MIB);
    c.fencing = true;
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    b.crash();
    let m = Arc::clone(&a.m);
    let held =
        a.rt.as_ref()
            .unwrap()
            .spawn(async move { m.write(MIB, pattern(2, 4096), false).await });
    // The write must be held in admission before the step-down: a write arriving
    // after it is refused as read-only instead (also never acknowledged).
    wait_until(
        "the write held for b's outdating",
        Duration::from_secs(5),
        || !a.m.pending_outdates().is_empty() && a.m.held_writes() == 1,
    );
    let m = Arc::clone(&a.m);
    let demote =
        a.rt.as_ref()
            .unwrap()
            .spawn(async move { m.demote().await });
    let err = a
        .on(held)
        .unwrap()
        .expect_err("a held write completed after the step-down");
    assert_eq!(err.errno(), tandem::mirror::nbd::proto::EIO, "{err}");
    a.on(demote).unwrap().unwrap();
    a.stop();
}

/// `on_no_quorum = "suspend"`: the primary of a node that lost its lease holds a write
/// rather than failing it; it completes once the lease is back at the same epoch.
#[test]
fn a_suspended_write_completes_when_io_resumes_at_the_same_epoch() {
    let c = Cluster::new(&["a", "b"], 16 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    let e3 = OwnershipEpoch(3);
    a.on(a.m.promote(e3)).unwrap();
    a.m.suspend_io();
    let m = Arc::clone(&a.m);
    let held =
        a.rt.as_ref()
            .unwrap()
            .spawn(async move { m.write(MIB, pattern(5, 4096), false).await });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !held.is_finished(),
        "a write went on while I/O was suspended"
    );
    assert!(a.on(a.m.resume_io(e3)).unwrap(), "still primary at epoch 3");
    a.on(held).unwrap().unwrap();
    assert_eq!(read_file(&c.backing("b"), MIB, 4096), pattern(5, 4096));
    a.stop();
    b.stop();
}

/// A suspended write fails with EIO when the group stops for good (the demote), and
/// when the lease comes back at another epoch.
#[test]
fn a_suspended_write_fails_with_eio_on_demote_or_at_another_epoch() {
    let c = Cluster::new(&["a"], 16 * MIB);
    let a = c.start("a");
    for resume_at in [None, Some(OwnershipEpoch(4))] {
        a.on(a.m.promote(OwnershipEpoch(3))).unwrap();
        a.m.suspend_io();
        let m = Arc::clone(&a.m);
        let held =
            a.rt.as_ref()
                .unwrap()
                .spawn(async move { m.write(0, pattern(6, 4096), false).await });
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !held.is_finished(),
            "a write went on while I/O was suspended"
        );
        match resume_at {
            None => a.on(a.m.demote()).unwrap(),
            Some(e) => assert!(!a.on(a.m.resume_io(e)).unwrap(), "stepped down"),
        }
        let err = a
            .on(held)
            .unwrap()
            .expect_err("a suspended write completed after the step-down");
        assert_eq!(err.errno(), tandem::mirror::nbd::proto::EIO, "{err}");
        assert!(!a.m.is_primary());
    }
    a.stop();
}

#[test]
fn three_copies_all_get_sync_writes() {
    let c = Cluster::new(&["a", "b", "c"], 32 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    let n3 = c.start("c");
    connected(&a, &b);
    connected(&a, &n3);
    connected(&b, &n3);
    a.on(a.m.promote(E0)).unwrap();
    for i in 0..8u64 {
        let data = pattern(i, 100 * 1024);
        a.write(i * 3 * MIB, data.clone());
        assert_eq!(read_file(&c.backing("b"), i * 3 * MIB, data.len()), data);
        assert_eq!(read_file(&c.backing("c"), i * 3 * MIB, data.len()), data);
    }
    // c goes away; a writes on; c comes back and catches up from a's bitmap.
    a.on(a.m.flush()).unwrap();
    n3.stop();
    a.write(30 * MIB, pattern(77, 8192));
    let n3 = c.start("c");
    in_sync(&a, &n3);
    in_sync(&a, &b);
    assert_eq!(a.peer("c").resynced_bytes, 8192);
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    n3.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
    assert!(files_equal(&c.backing("a"), &c.backing("c")));
}

/// Serves `export` over NBD on a Unix socket in `dir` (on `node`'s runtime).
fn serve_nbd<E: Export>(node: &Node, export: Arc<E>, dir: &Path) -> PathBuf {
    use tandem::mirror::nbd::{NbdServer, ServerConfig};
    let socket = dir.join(format!("nbd-{}.sock", node.name));
    let config = ServerConfig {
        name: "disk".into(),
        description: "mirror".into(),
        unix: Some(socket.clone()),
        tcp: None,
        metrics: None,
    };
    let server = node.on(NbdServer::bind(config)).unwrap();
    node.rt.as_ref().unwrap().spawn(server.run(export));
    socket
}

fn run_tool(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (install qemu-utils libnbd-bin): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !stdout.contains("failed"),
        "{cmd} {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn qemu_io_writes_through_nbd_reach_the_peer_byte_for_byte() {
    let c = Cluster::new(&["a", "b"], 64 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    let socket = serve_nbd(&a, Arc::clone(&a.m), c.dir.path());
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    run_tool(
        "qemu-io",
        &[
            "-f",
            "raw",
            &uri,
            "-c",
            "write -P 0xab 0 4M",
            "-c",
            "write -P 0xcd 10M 64k",
            "-c",
            "write -f -P 0x11 20M 3M",
            "-c",
            "flush",
            "-c",
            "write -z 1M 1M",
            "-c",
            "discard 10M 64k",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0x11 20M 3M",
        ],
    );
    // Every completed request is on the peer already.
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
    let src = c.dir.path().join("src.raw");
    std::fs::write(&src, pattern(42, 16 * MIB as usize)).unwrap();
    run_tool(
        "nbdcopy",
        &["--connections=4", "--flush", src.to_str().unwrap(), &uri],
    );
    assert_eq!(
        read_file(&c.backing("b"), 0, 16 * MIB as usize),
        pattern(42, 16 * MIB as usize)
    );
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
}

/// `cargo test --release --test mirror throughput -- --ignored --nocapture`: 1 GiB with
/// nbdcopy into a plain Volume and into a sync Mirror with a loopback peer.
#[test]
#[ignore]
fn throughput_of_a_sync_mirror_against_a_plain_volume() {
    const SIZE: u64 = 1024 * MIB;
    let c = Cluster::new(&["a", "b"], SIZE);
    let src = c.dir.path().join("src.raw");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&src).unwrap());
        for i in 0..(SIZE / (16 * MIB)) {
            std::io::Write::write_all(&mut f, &pattern(i, 16 * MIB as usize)).unwrap();
        }
    }
    let copy = |uri: &str| {
        let start = Instant::now();
        run_tool("nbdcopy", &["--flush", src.to_str().unwrap(), uri]);
        SIZE as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
    };
    // Unreplicated.
    let plain_path = c.dir.path().join("plain.raw");
    std::fs::File::create(&plain_path)
        .unwrap()
        .set_len(SIZE)
        .unwrap();
    let plain = tandem::mirror::volume::Volume::open(&plain_path, false).unwrap();
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    let plain_socket = {
        let dir = c.dir.path().join("plain");
        std::fs::create_dir_all(&dir).unwrap();
        serve_nbd(&a, Arc::new(plain), &dir)
    };
    let plain_mibs = copy(&format!("nbd+unix:///?socket={}", plain_socket.display()));
    a.on(a.m.promote(E0)).unwrap();
    let socket = serve_nbd(&a, Arc::clone(&a.m), c.dir.path());
    let mirror_mibs = copy(&format!("nbd+unix:///?socket={}", socket.display()));
    println!(
        "plain volume: {plain_mibs:.0} MiB/s; sync mirror: {mirror_mibs:.0} MiB/s ({:.2}x)",
        mirror_mibs / plain_mibs
    );
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

/// A replication link that goes silent (the proxy forwards nothing, the connection
/// stays open) is dropped after the link timeout: a sync primary's write completes
/// and the peer is tracked as out of date instead of holding writes until TCP gives
/// up. When the link carries traffic again, the peer reconnects and catches up.
#[test]
fn a_silently_dead_link_is_dropped_after_the_link_timeout() {
    let mut c = Cluster::new(&["a", "b"], 16 * MIB);
    c.link_timeout = Duration::from_secs(1);
    let proxy = c.proxy("a", "b");
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    a.write(0, pattern(1, 4096));
    // Idle longer than the timeout: the pings keep a quiet link up.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(a.peer_connection("b"), "connected");
    proxy.stall(true);
    let start = Instant::now();
    let write = a.m.write(MIB, pattern(2, 4096), false);
    a.on(async { tokio::time::timeout(Duration::from_secs(10), write).await })
        .expect("a sync write waited 10 s on a dead link")
        .unwrap();
    println!(
        "the write completed {:?} after the link died",
        start.elapsed()
    );
    assert_ne!(a.peer_connection("b"), "connected");
    assert!(a.peer("b").out_of_sync_bytes >= 4096);
    wait_until("a link-timeout event", Duration::from_secs(5), || {
        a.events(EventKind::MirrorDisconnected)
            .iter()
            .any(|e| e.fields.get("reason").is_some_and(|r| r == "link_timeout"))
    });
    proxy.stall(false);
    in_sync(&a, &b);
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

#[test]
fn an_old_primary_of_a_lower_epoch_cannot_replicate_to_a_copy_that_followed_a_newer_one() {
    let c = Cluster::new(&["a", "b", "c"], 16 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    let n3 = c.start("c");
    connected(&a, &b);
    connected(&a, &n3);
    connected(&b, &n3);
    a.on(a.m.promote(OwnershipEpoch(3))).unwrap();
    a.write(0, pattern(1, 4096));
    // a is cut off; the cluster moves the group to c under epoch 4, and b follows c.
    a.on(a.m.disconnect(None)).unwrap();
    wait_until("b and c see a gone", Duration::from_secs(5), || {
        b.peer_connection("a") != "connected" && n3.peer_connection("a") != "connected"
    });
    n3.on(n3.m.promote(OwnershipEpoch(4))).unwrap();
    n3.write(0, pattern(2, 4096));
    wait_until("b followed epoch 4", Duration::from_secs(5), || {
        b.m.highest_epoch() == OwnershipEpoch(4)
    });
    // The old primary's links come back: both copies refuse it, and it learns it was
    // deposed.
    a.on(a.m.connect(None)).unwrap();
    wait_until("a deposed", Duration::from_secs(10), || {
        a.m.deposed().is_some()
    });
    let err = a
        .on(a.m.write(0, pattern(3, 4096), false))
        .expect_err("a deposed primary acknowledged a write");
    assert_eq!(err.errno(), tandem::mirror::nbd::proto::EIO, "{err}");
    let refused = |n: &Node| {
        n.events(EventKind::MirrorDisconnected).iter().any(|e| {
            e.fields.get("reason").map(String::as_str) == Some("stale_epoch")
                && e.fields["detail"] == "stale ownership epoch 3 < 4"
        })
    };
    assert!(refused(&b), "b did not report refusing a");
    assert!(refused(&n3), "c did not report refusing a");
    assert_eq!(read_file(&c.backing("b"), 0, 4096), pattern(2, 4096));
    assert_eq!(read_file(&c.backing("c"), 0, 4096), pattern(2, 4096));
    assert_ne!(b.peer_connection("a"), "connected");
    // b still follows epoch 4 after a restart (the metadata keeps it).
    b.stop();
    let b = c.start("b");
    assert_eq!(b.m.highest_epoch(), OwnershipEpoch(4));
    a.stop();
    b.stop();
    n3.stop();
}

/// The scenario on loopback: a primary, a sync copy and an async copy whose link
/// is stalled, so it lags. The primary crashes after acknowledging writes the async
/// copy never received; the sync copy takes over. Both secondaries still carried the
/// dead primary's generation: only the peer-acks (the async copy was never listed as
/// holding those writes) tell the new primary what the async copy lacks. It resyncs
/// exactly that, and all copies match byte for byte without a verify.
#[test]
fn a_lagging_async_copy_converges_with_the_new_primary_after_a_failover() {
    let mut c = Cluster::new(&["a", "b", "c"], 64 * MIB);
    c.async_copies = vec!["c".into()];
    let proxy = c.proxy("a", "c");
    let a = c.start("a");
    let b = c.start("b");
    let n3 = c.start("c");
    connected(&a, &b);
    connected(&a, &n3);
    connected(&b, &n3);
    a.on(a.m.promote(E0)).unwrap();
    a.write(0, pattern(1, MIB as usize));
    a.on(a.m.flush()).unwrap();
    wait_until("c caught up", Duration::from_secs(10), || {
        a.peer("c").lag_bytes == 0
    });
    proxy.stall(true);
    for i in 0..8u64 {
        a.write(4 * MIB + i * MIB, pattern(10 + i, MIB as usize));
    }
    a.on(a.m.flush()).unwrap();
    assert!(a.peer("c").lag_bytes >= 8 * MIB, "c lags");
    a.crash();
    // The cluster declares a dead on both survivors; b takes over.
    b.m.peer_dead("a");
    n3.m.peer_dead("a");
    assert!(
        b.peer("c").out_of_sync_bytes >= 8 * MIB,
        "b marked what c may lack: {}",
        b.peer("c").out_of_sync_bytes
    );
    b.on(b.m.promote(OwnershipEpoch(1))).unwrap();
    in_sync(&b, &n3);
    let started = n3.events(EventKind::ResyncStarted);
    let last = started.last().expect("c was resynced");
    assert_eq!(last.fields["direction"], "target");
    assert_eq!(last.fields["full"], "false");
    let resynced = b.peer("c").resynced_bytes;
    assert!(
        (8 * MIB..=9 * MIB).contains(&resynced),
        "resynced {resynced}: the 8 MiB c lacked, not the volume"
    );
    proxy.stall(false);
    b.write(40 * MIB, pattern(99, 4096));
    b.on(b.m.flush()).unwrap();
    b.on(b.m.demote()).unwrap();
    b.stop();
    n3.stop();
    assert!(files_equal(&c.backing("b"), &c.backing("c")));
    assert_eq!(
        read_file(&c.backing("c"), 11 * MIB, MIB as usize),
        pattern(17, MIB as usize),
        "an acknowledged write c never received is there"
    );
}

/// A crashed primary returns after its peer took over and wrote: it sends its
/// crash-dirty activity-log extents to the new primary, which resyncs the union of
/// those and its own changes, not the whole volume (which it did before: the returning
/// copy had blocks of its own, so everything went).
#[test]
fn a_crashed_primary_returns_with_a_partial_resync_of_the_union() {
    let c = Cluster::new(&["a", "b"], 1024 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    // 64 MiB of data, then writes spread over 3 extents, then a crash.
    for i in 0..64u64 {
        a.write(i * MIB, pattern(i, MIB as usize));
    }
    for i in 0..48u64 {
        a.write(
            300 * MIB + (i % 3) * 100 * MIB + i * 65536,
            pattern(i, 65536),
        );
    }
    a.crash();
    b.m.peer_dead("a");
    // Truthful peer states: unknown while gone, outdated once it missed writes; the
    // event names the cause.
    assert_eq!(b.peer("a").peer_disk, None);
    wait_until(
        "a disconnect event naming the cause",
        Duration::from_secs(5),
        || {
            let down = b.events(EventKind::MirrorDisconnected);
            let causes: Vec<_> = down.iter().map(|e| e.fields["reason"].clone()).collect();
            causes == ["node_lost"] || causes == ["peer_closed"]
        },
    );
    b.on(b.m.promote(OwnershipEpoch(1))).unwrap();
    let changed = 2 * MIB;
    b.write(700 * MIB, pattern(5, changed as usize));
    assert_eq!(b.peer("a").peer_disk, Some(DiskState::Outdated));
    let a = c.start("a");
    let crash_dirty = a.peer("b").out_of_sync_bytes;
    assert!(crash_dirty > 0, "the activity log marks a's last extents");
    in_sync(&b, &a);
    let started = a.events(EventKind::ResyncStarted);
    assert_eq!(started.last().unwrap().fields["full"], "false");
    let resynced = b.peer("a").resynced_bytes;
    let ratio = resynced as f64 / (changed + crash_dirty) as f64;
    assert!(
        ratio <= 1.05,
        "resynced {resynced} for {changed} changed + {crash_dirty} crash-dirty ({ratio:.3})"
    );
    b.on(b.m.demote()).unwrap();
    b.stop();
    a.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}

/// `pause_during`: inside its window the link is paused by the schedule (changes go to
/// the bitmap, the peer shows outdated); an administrator's resume holds until the
/// next window.
#[test]
fn a_link_pauses_during_its_scheduled_window() {
    use tandem::mirror::schedule::{utc_minute, PauseWindow};
    let c = Cluster::new(&["a", "b"], 16 * MIB);
    let a = c.start("a");
    let b = c.start("b");
    connected(&a, &b);
    a.on(a.m.promote(E0)).unwrap();
    let now = utc_minute(tandem::event::unix_ms());
    let window = PauseWindow {
        start: now,
        end: (now + 3) % 1440,
    };
    a.m.set_pause_schedule("b", vec![window]);
    wait_until("paused by the schedule", Duration::from_secs(5), || {
        a.peer_connection("b") == "paused"
    });
    a.write(MIB, pattern(4, 8192));
    assert_eq!(a.peer("b").out_of_sync_bytes, 8192);
    assert_eq!(a.peer("b").peer_disk, Some(DiskState::Outdated));
    wait_until("a paused event", Duration::from_secs(5), || {
        a.events(EventKind::MirrorPaused)
            .iter()
            .any(|e| e.fields["reason"] == "schedule")
    });
    a.on(a.m.resume(Some("b"))).unwrap();
    in_sync(&a, &b);
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(a.peer_connection("b"), "connected", "the resume holds");
    a.on(a.m.demote()).unwrap();
    a.stop();
    b.stop();
    assert!(files_equal(&c.backing("a"), &c.backing("b")));
}
