//! The replicated rows of `tandem bench mirror`: the same `nbdcopy` into a mirror whose
//! peer sits across a veth link (sync and async), then the resync rate against a link
//! capped with `tc qdisc tbf`, and bytes resynced per byte changed. Needs root: the
//! primary and the peer each live in a network namespace this benchmark creates (and
//! removes), joined by one veth pair.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::cpu::ThreadCpu;
use super::latency::{self, Latency};
use super::{first_difference, io, nbdcopy, write_random, BenchError};
use crate::config::ReplicationMode;
use crate::event::EventLog;
use crate::mirror::generation::SplitBrainPolicy;
use crate::mirror::nbd::{NbdServer, ServerConfig};
use crate::mirror::replica::{Mirror, MirrorSpec, PeerSpec};
use crate::mirror::status::LinkState;
use crate::mirror::status::MirrorStatus;
use crate::mirror::wire::compress::Compress;

const NS_PRIMARY: &str = "tbm-a";
const NS_PEER: &str = "tbm-b";
const ADDR_PRIMARY: &str = "10.79.0.1";
const ADDR_PEER: &str = "10.79.0.2";
const PORT: u16 = 7790;

/// What the primary's thread can be asked.
enum Ask {
    Status(std::sync::mpsc::Sender<MirrorStatus>),
    Disconnect(std::sync::mpsc::Sender<Result<(), String>>),
    Connect(std::sync::mpsc::Sender<Result<(), String>>),
}

/// A primary and its peer in two namespaces; dropping it stops both and removes the
/// namespaces.
struct Pair {
    asks: mpsc::Sender<Ask>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<Result<(), crate::lab::LabError>>>,
    socket: PathBuf,
    primary_backing: PathBuf,
    peer_backing: PathBuf,
    /// CPU time of each side's threads: primary, peer.
    cpu: [Arc<ThreadCpu>; 2],
}

/// Runs `f` on the calling thread, counted in `cpu`.
fn counted<T>(cpu: &ThreadCpu, f: impl FnOnce() -> T) -> T {
    cpu.enter();
    let out = f();
    cpu.leave();
    out
}

fn sh(program: &str, args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|source| BenchError::Spawn { tool: "ip", source })?;
    if !out.status.success() {
        return Err(BenchError::Peer(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn remove_namespaces() {
    for ns in [NS_PRIMARY, NS_PEER] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

fn build_namespaces() -> Result<(), BenchError> {
    remove_namespaces();
    sh("ip", &["netns", "add", NS_PRIMARY])?;
    sh("ip", &["netns", "add", NS_PEER])?;
    sh(
        "ip",
        &[
            "link", "add", "a0", "netns", NS_PRIMARY, "type", "veth", "peer", "name", "b0",
            "netns", NS_PEER,
        ],
    )?;
    for (ns, dev, addr) in [(NS_PRIMARY, "a0", ADDR_PRIMARY), (NS_PEER, "b0", ADDR_PEER)] {
        sh(
            "ip",
            &["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev],
        )?;
        sh("ip", &["-n", ns, "link", "set", dev, "up"])?;
        sh("ip", &["-n", ns, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

fn spec(
    me: &str,
    peer: &str,
    dir: &Path,
    size: u64,
    mode: ReplicationMode,
    compress: Compress,
    key: &[u8],
) -> MirrorSpec {
    let addr = |a: &str| -> std::net::SocketAddr {
        format!("{a}:{PORT}").parse().expect("static address")
    };
    let (mine, theirs) = if me == "a" {
        (ADDR_PRIMARY, ADDR_PEER)
    } else {
        (ADDR_PEER, ADDR_PRIMARY)
    };
    MirrorSpec {
        name: "bench".into(),
        cluster: "bench".into(),
        local_node: me.into(),
        key: key.to_vec(),
        backing: dir.join(format!("{me}.img")),
        size: Some(size),
        meta_dir: dir.join(format!("{me}-meta")),
        metadata: crate::mirror::replica::meta::MetaPlacement::External,
        listen: addr(mine),
        peers: vec![PeerSpec {
            node: peer.into(),
            address: addr(theirs),
            mode,
            rate_limit: None,
            queue_bytes: 256 << 20,
            lag_budget: None,
            encrypt: false,
            compress,
            timeout: std::time::Duration::from_secs(6),
        }],
        split_brain: SplitBrainPolicy::Disconnect,
        fencing: false,
    }
}

/// A runtime whose threads count toward `cpu`.
fn runtime(cpu: &Arc<ThreadCpu>) -> Result<tokio::runtime::Runtime, crate::lab::LabError> {
    let (started, stopped) = (cpu.clone(), cpu.clone());
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || started.enter())
        .on_thread_stop(move || stopped.leave())
        .build()
        .map_err(|e| crate::lab::LabError::Invalid(format!("tokio runtime: {e}")))
}

fn lab_err(e: impl std::fmt::Display) -> crate::lab::LabError {
    crate::lab::LabError::Invalid(e.to_string())
}

/// Opens the primary, waits until it has met its peer, promotes it and binds its NBD
/// socket.
async fn open_primary(
    spec: MirrorSpec,
    nbd_socket: PathBuf,
) -> Result<(Arc<Mirror>, NbdServer), String> {
    let m = Mirror::open(spec, EventLog::in_memory("a"))
        .await
        .map_err(|e| e.to_string())?;
    // Both copies are new; wait until they have met.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = m.status();
        if s.peers.iter().all(|p| p.connection == LinkState::Connected) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("the peer did not connect: {s:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.promote(crate::mirror::generation::OwnershipEpoch::default())
        .await
        .map_err(|e| e.to_string())?;
    let server = NbdServer::bind(ServerConfig {
        name: "bench".into(),
        description: String::new(),
        unix: Some(nbd_socket),
        tcp: None,
        metrics: None,
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok((m, server))
}

/// Serves the primary over NBD and answers the benchmark's asks until `stopped`, then
/// demotes and shuts it down.
async fn serve_primary(
    m: Arc<Mirror>,
    server: NbdServer,
    mut stopped: oneshot::Receiver<()>,
    mut asked: mpsc::Receiver<Ask>,
) {
    let serving = tokio::spawn(server.run(m.clone()));
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            Some(ask) = asked.recv() => match ask {
                Ask::Status(tx) => { let _ = tx.send(m.status()); }
                Ask::Disconnect(tx) => {
                    let _ = tx.send(m.disconnect(None).await.map_err(|e| e.to_string()));
                }
                Ask::Connect(tx) => {
                    let _ = tx.send(m.connect(None).await.map_err(|e| e.to_string()));
                }
            },
        }
    }
    serving.abort();
    let _ = m.demote().await;
    m.shutdown().await;
}

impl Pair {
    fn start(
        dir: &Path,
        size: u64,
        mode: ReplicationMode,
        compress: Compress,
    ) -> Result<Pair, BenchError> {
        build_namespaces()?;
        let key: Vec<u8> = (0..32).map(|_| rand::random::<u8>()).collect();
        let socket = dir.join("mirror.sock");
        let _ = std::fs::remove_file(&socket);
        let (stop_b, stopped_b) = oneshot::channel::<()>();
        let peer_spec = spec("b", "a", dir, size, mode, compress, &key);
        let peer_backing = peer_spec.backing.clone();
        let cpu = [ThreadCpu::new(), ThreadCpu::new()];
        let cpu_b = cpu[1].clone();
        let peer = crate::lab::net::spawn_in_netns(NS_PEER, move || {
            counted(&cpu_b, || {
                runtime(&cpu_b)?.block_on(async move {
                    let m = Mirror::open(peer_spec, EventLog::in_memory("b"))
                        .await
                        .map_err(lab_err)?;
                    let _ = stopped_b.await;
                    m.shutdown().await;
                    Ok(())
                })
            })
        });
        let (stop_a, stopped_a) = oneshot::channel::<()>();
        let (asks, asked) = mpsc::channel::<Ask>(8);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let primary_spec = spec("a", "b", dir, size, mode, compress, &key);
        let primary_backing = primary_spec.backing.clone();
        let nbd_socket = socket.clone();
        let cpu_a = cpu[0].clone();
        let primary = crate::lab::net::spawn_in_netns(NS_PRIMARY, move || {
            let rt = runtime(&cpu_a)?;
            counted(&cpu_a, || {
                rt.block_on(async move {
                    let (m, server) = match open_primary(primary_spec, nbd_socket).await {
                        Ok(x) => {
                            let _ = ready_tx.send(Ok(()));
                            x
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.clone()));
                            return Err(lab_err(e));
                        }
                    };
                    serve_primary(m, server, stopped_a, asked).await;
                    Ok(())
                })
            })
        });
        let pair = Pair {
            asks,
            stops: vec![stop_a, stop_b],
            threads: vec![primary, peer],
            socket,
            primary_backing,
            peer_backing,
            cpu,
        };
        match ready_rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(())) => Ok(pair),
            Ok(Err(e)) => Err(BenchError::Peer(e)),
            Err(_) => Err(BenchError::Peer(
                "the primary did not start within 60 s".into(),
            )),
        }
    }

    fn status(&self) -> Result<MirrorStatus, BenchError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.asks
            .blocking_send(Ask::Status(tx))
            .map_err(|_| BenchError::Peer("the primary stopped".into()))?;
        rx.recv_timeout(Duration::from_secs(10))
            .map_err(|_| BenchError::Peer("the primary does not answer".into()))
    }

    fn link(&self, up: bool) -> Result<(), BenchError> {
        let (tx, rx) = std::sync::mpsc::channel();
        let ask = if up {
            Ask::Connect(tx)
        } else {
            Ask::Disconnect(tx)
        };
        self.asks
            .blocking_send(ask)
            .map_err(|_| BenchError::Peer("the primary stopped".into()))?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| BenchError::Peer("the primary does not answer".into()))?
            .map_err(BenchError::Peer)
    }

    /// Waits until the peer is connected, up to date, with nothing out of sync.
    fn wait_in_sync(&self, timeout: Duration) -> Result<MirrorStatus, BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status()?;
            let synced = s.peers.iter().all(|p| {
                p.connection == LinkState::Connected
                    && p.out_of_sync_bytes == 0
                    && p.lag_bytes == 0
                    && p.resync.is_none()
                    && p.peer_disk == Some(crate::mirror::generation::DiskState::UpToDate)
            });
            if synced {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(BenchError::Peer(format!(
                    "not in sync after {timeout:?}: {s:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        remove_namespaces();
    }
}

/// nbdcopy `source` into the pair's primary; MiB/s until the client saw every write
/// acknowledged (and, in sync mode, on the peer).
fn copy_into(
    pair: &Pair,
    source: &Path,
    size: u64,
    label: &'static str,
) -> Result<f64, BenchError> {
    nix::unistd::sync();
    let (status, secs) = nbdcopy(source, &pair.socket)?;
    if !status.success() {
        return Err(BenchError::Copy {
            server: label,
            status,
        });
    }
    Ok(size as f64 / (1 << 20) as f64 / secs)
}

/// Caps both directions of the link with tbf at `mbit` (removed with the namespaces).
fn cap_link(mbit: u64, both: bool) -> Result<(), BenchError> {
    let rate = format!("{mbit}mbit");
    let sides: &[(&str, &str)] = if both {
        &[(NS_PRIMARY, "a0"), (NS_PEER, "b0")]
    } else {
        &[(NS_PRIMARY, "a0")]
    };
    for (ns, dev) in sides {
        sh(
            "ip",
            &[
                "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                &rate, "burst", "1mb", "latency", "100ms",
            ],
        )?;
    }
    Ok(())
}

/// MiB/s of a link of `mbit` Mbit/s.
fn mib_s(mbit: u64) -> f64 {
    mbit as f64 * 1e6 / 8.0 / (1 << 20) as f64
}

/// What the replicated rows take from the command line.
pub struct Options {
    pub resync_mib: u64,
    pub cap_mbit: u64,
    pub link_mbit: u64,
    pub latency_secs: u64,
    /// The WAN compression row: its tbf cap in Mbit/s and MiB of mixed workload.
    pub wan_mbit: u64,
    pub mixed_mib: u64,
}

/// Figures of the replicated rows.
pub struct ReplicatedFigures {
    pub sync_mib_s: f64,
    pub async_mib_s: f64,
    pub cap_mib_s: f64,
    pub resync_mib_s: f64,
    pub changed_bytes: u64,
    pub resynced_bytes: u64,
    pub sync: SyncFigures,
    pub wan: WanFigures,
}

/// The WAN compression row: the mixed workload over a link capped at
/// `Options::wan_mbit`, sync, without and with zstd.
pub struct WanFigures {
    /// nbdcopy MiB/s: without compression, with zstd.
    pub mib_s: [f64; 2],
    /// Payload bytes ÷ bytes on the wire with zstd, from the primary's counters.
    pub wire_ratio: f64,
}

/// The sync pair's further figures.
pub struct SyncFigures {
    /// CPU seconds per GiB copied in the sync row: primary, peer; and the row's seconds
    /// per GiB.
    pub cpu_s_per_gib: [f64; 2],
    pub wall_s_per_gib: f64,
    /// The link's round trip.
    pub rtt: Duration,
    /// QD1 latency of sync writes, or why it was not measured (fio missing).
    pub latency: Result<Latency, BenchError>,
    /// nbdcopy over a link capped at `Options::link_mbit`, MiB/s.
    pub capped_mib_s: f64,
}

/// Runs the sync rows, the async row and the capped resync.
pub fn run(
    dir: &Path,
    source: &Path,
    size: u64,
    opts: &Options,
) -> Result<ReplicatedFigures, BenchError> {
    let volume = size.max(opts.resync_mib << 20);
    let sync = with_pair(dir, volume, ReplicationMode::Sync, Compress::None, |pair| {
        sync_rows(pair, source, size, opts)
    })?;
    let async_mib_s = with_pair(
        dir,
        volume,
        ReplicationMode::Async,
        Compress::None,
        |pair| copy_and_check(pair, source, size, "tandem (async peer)"),
    )?;
    let wan = wan_row(dir, opts)?;
    let (resync_mib_s, resynced) = resync_row(dir, volume, opts)?;
    Ok(ReplicatedFigures {
        sync_mib_s: sync.0,
        async_mib_s,
        cap_mib_s: mib_s(opts.cap_mbit),
        resync_mib_s,
        changed_bytes: opts.resync_mib << 20,
        resynced_bytes: resynced,
        sync: sync.1,
        wan,
    })
}

/// The mixed workload over a link capped at `opts.wan_mbit` in both directions, sync,
/// first without compression, then with zstd; both copies checked after each.
fn wan_row(dir: &Path, opts: &Options) -> Result<WanFigures, BenchError> {
    let size = opts.mixed_mib << 20;
    let source = dir.join("mixed.raw");
    super::mixed::write_mixed(&source, size, 14)?;
    let mut mib_s = [0f64; 2];
    let mut wire_ratio = 1.0;
    for (i, compress) in [Compress::None, Compress::Zstd].into_iter().enumerate() {
        let label = if i == 0 {
            "tandem (sync peer, WAN link)"
        } else {
            "tandem (sync peer, WAN link, zstd)"
        };
        let (rate, ratio) = with_pair(dir, size, ReplicationMode::Sync, compress, |pair| {
            cap_link(opts.wan_mbit, true)?;
            let rate = copy_and_check(pair, &source, size, label)?;
            let ratio = pair.status()?.peers[0]
                .compression
                .as_ref()
                .map_or(1.0, |c| c.ratio);
            Ok((rate, ratio))
        })?;
        mib_s[i] = rate;
        wire_ratio = ratio;
    }
    let _ = std::fs::remove_file(&source);
    Ok(WanFigures { mib_s, wire_ratio })
}

/// Starts a pair in its own directory, runs `f` on it, then stops it and removes the
/// directory (also when `f` fails).
fn with_pair<T>(
    dir: &Path,
    volume: u64,
    mode: ReplicationMode,
    compress: Compress,
    f: impl FnOnce(&Pair) -> Result<T, BenchError>,
) -> Result<T, BenchError> {
    let run_dir = dir.join(format!("pair-{}-{}", mode.name(), compress.name()));
    std::fs::create_dir_all(&run_dir).map_err(io("creating the pair's directory"))?;
    let out = Pair::start(&run_dir, volume, mode, compress).and_then(|pair| f(&pair));
    let _ = std::fs::remove_dir_all(&run_dir);
    out
}

/// nbdcopy into the pair, wait until the peer is in sync, and check both copies.
fn copy_and_check(
    pair: &Pair,
    source: &Path,
    size: u64,
    label: &'static str,
) -> Result<f64, BenchError> {
    let rate = copy_into(pair, source, size, label)?;
    pair.wait_in_sync(Duration::from_secs(300))?;
    check_copies(pair, source, label)?;
    Ok(rate)
}

/// The sync pair: throughput and CPU per side, the link's round trip, QD1 latency, then
/// throughput again over a capped link.
fn sync_rows(
    pair: &Pair,
    source: &Path,
    size: u64,
    opts: &Options,
) -> Result<(f64, SyncFigures), BenchError> {
    let cpu = || [pair.cpu[0].total(), pair.cpu[1].total()];
    let before = cpu();
    let start = Instant::now();
    let rate = copy_into(pair, source, size, "tandem (sync peer)")?;
    let wall = start.elapsed();
    let after = cpu();
    let gib = size as f64 / (1u64 << 30) as f64;
    pair.wait_in_sync(Duration::from_secs(300))?;
    check_copies(pair, source, "tandem (sync peer)")?;
    let rtt = latency::tcp_rtt(NS_PRIMARY, NS_PEER, addr(ADDR_PEER, PORT + 1), 500)?;
    let latency = soft(latency::fio_qd1(&pair.socket, opts.latency_secs))?;
    pair.wait_in_sync(Duration::from_secs(60))?;
    cap_link(opts.link_mbit, true)?;
    let capped_mib_s = copy_into(pair, source, size, "tandem (sync peer, capped link)")?;
    pair.wait_in_sync(Duration::from_secs(300))?;
    let per_gib = |i: usize| (after[i] - before[i]).as_secs_f64() / gib;
    Ok((
        rate,
        SyncFigures {
            cpu_s_per_gib: [per_gib(0), per_gib(1)],
            wall_s_per_gib: wall.as_secs_f64() / gib,
            rtt,
            latency,
            capped_mib_s,
        },
    ))
}

/// Checks both copies of the pair against the source.
fn check_copies(pair: &Pair, source: &Path, label: &str) -> Result<(), BenchError> {
    for (which, path) in [
        ("primary", &pair.primary_backing),
        ("peer", &pair.peer_backing),
    ] {
        if let Some(offset) = first_difference_prefix(source, path)? {
            return Err(BenchError::Peer(format!(
                "{label}: the {which}'s copy differs from the source at byte {offset}"
            )));
        }
    }
    Ok(())
}

/// A latency row that cannot run because fio is missing reports why; any other
/// failure ends the benchmark.
pub fn soft(r: Result<Latency, BenchError>) -> Result<Result<Latency, BenchError>, BenchError> {
    match r {
        Err(BenchError::Spawn { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(Err(BenchError::Spawn {
                tool: "fio",
                source,
            }))
        }
        Err(e) => Err(e),
        Ok(l) => Ok(Ok(l)),
    }
}

fn addr(ip: &str, port: u16) -> std::net::SocketAddr {
    format!("{ip}:{port}").parse().expect("static address")
}

/// Resync: disconnect, change `resync_mib`, cap the link, reconnect, time it. MiB/s
/// and bytes resynced.
fn resync_row(dir: &Path, volume: u64, opts: &Options) -> Result<(f64, u64), BenchError> {
    let run_dir = dir.join("pair-resync");
    std::fs::create_dir_all(&run_dir).map_err(io("creating the pair's directory"))?;
    let out = resync_in(&run_dir, volume, opts);
    let _ = std::fs::remove_dir_all(&run_dir);
    out
}

fn resync_in(run_dir: &Path, volume: u64, opts: &Options) -> Result<(f64, u64), BenchError> {
    let changed = opts.resync_mib << 20;
    let changes = run_dir.join("changes.raw");
    write_random(&changes, changed)?;
    let pair = Pair::start(run_dir, volume, ReplicationMode::Sync, Compress::None)?;
    // Start in sync, so that the resync carries only what changes while apart.
    pair.wait_in_sync(Duration::from_secs(60))?;
    pair.link(false)?;
    copy_into(&pair, &changes, changed, "tandem (disconnected)")?;
    let before = pair.status()?.peers.first().map_or(0, |p| p.resynced_bytes);
    cap_link(opts.cap_mbit, false)?;
    let start = Instant::now();
    pair.link(true)?;
    let after = pair.wait_in_sync(Duration::from_secs(600))?;
    let secs = start.elapsed().as_secs_f64();
    let resynced = after.peers.first().map_or(0, |p| p.resynced_bytes) - before;
    if let Some(offset) = first_difference_prefix(&changes, &pair.peer_backing)? {
        return Err(BenchError::Peer(format!(
            "after the resync the peer differs at byte {offset}"
        )));
    }
    Ok((resynced as f64 / (1 << 20) as f64 / secs, resynced))
}

/// The first offset where `copy` differs from `source`, over `source`'s length (the
/// volume may be larger).
fn first_difference_prefix(source: &Path, copy: &Path) -> Result<Option<u64>, BenchError> {
    first_difference(source, copy, true)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl ReplicatedFigures {
    /// Prints the replicated rows beside their goals; `unreplicated` is the row without
    /// a peer (MiB/s and QD1 latency).
    pub fn print(
        &self,
        opts: &Options,
        unreplicated_mib_s: f64,
        unreplicated: &Result<Latency, BenchError>,
    ) {
        println!(
            "{:<18} {:>9.1} MiB/s",
            "tandem (sync peer)", self.sync_mib_s
        );
        println!(
            "{:<18} {:>9.1} MiB/s",
            "tandem (async peer)", self.async_mib_s
        );
        println!(
            "sync / unreplicated = {:.2}   (goal >= 0.9; the peer is across a veth link)",
            self.sync_mib_s / unreplicated_mib_s
        );
        println!(
            "async / unreplicated = {:.2}",
            self.async_mib_s / unreplicated_mib_s
        );
        let s = &self.sync;
        let cap = mib_s(opts.link_mbit);
        println!(
            "sync over a link capped at {} Mbit/s ({:.1} MiB/s): {:.1} MiB/s = {:.2} of the cap   (goal >= 0.95; issue 14: 109 of 119 MiB/s, 0.91)",
            opts.link_mbit, cap, s.capped_mib_s, s.capped_mib_s / cap
        );
        println!(
            "CPU per replicated GiB (sync row, {:.2} s/GiB of wall time): primary {:.2} s, peer {:.2} s   (no goal set)",
            s.wall_s_per_gib, s.cpu_s_per_gib[0], s.cpu_s_per_gib[1]
        );
        println!(
            "link round trip (TCP ping-pong, median): {:.1} us",
            us(s.rtt)
        );
        match &s.latency {
            Ok(l) => println!(
                "{:<18} QD1 4 KiB write p50 {:>7.1} us  p99 {:>7.1} us  ({} writes)",
                "tandem (sync peer)",
                us(l.p50),
                us(l.p99),
                l.ios
            ),
            Err(e) => println!("tandem (sync peer) QD1 latency not measured: {e}"),
        }
        if let (Ok(sync), Ok(alone)) = (&s.latency, unreplicated) {
            for (what, sync, alone) in [("p50", sync.p50, alone.p50), ("p99", sync.p99, alone.p99)]
            {
                let bound = (us(alone) + us(s.rtt)) * 1.15;
                println!(
                    "sync {what} {:.1} us vs (unreplicated {:.1} + RTT {:.1}) x 1.15 = {:.1} us: {:.2} of the bound   (goal <= 1.0)",
                    us(sync), us(alone), us(s.rtt), bound, us(sync) / bound
                );
            }
        }
        println!(
            "resync over a link capped at {} Mbit/s ({:.1} MiB/s): {:.1} MiB/s = {:.2} of the cap   (goal >= 0.9)",
            opts.cap_mbit,
            self.cap_mib_s,
            self.resync_mib_s,
            self.resync_mib_s / self.cap_mib_s
        );
        println!(
            "bytes resynced / bytes changed = {} / {} = {:.3}   (goal <= 1.05)",
            self.resynced_bytes,
            self.changed_bytes,
            self.resynced_bytes as f64 / self.changed_bytes as f64
        );
        let (w, cap) = (&self.wan, mib_s(opts.wan_mbit));
        println!(
            "sync over a WAN link capped at {} Mbit/s ({:.2} MiB/s), {} MiB half mail text, half random: {:.2} MiB/s plain, {:.2} MiB/s with zstd = {:.2}x the cap (wire ratio {:.2})   (no goal set; the ceiling is the mix's ratio)",
            opts.wan_mbit, cap, opts.mixed_mib, w.mib_s[0], w.mib_s[1], w.mib_s[1] / cap, w.wire_ratio
        );
    }
}
