//! Seeded fault simulation of three and four copies of a mirror, driving the product's
//! pure cores: one `PeerCore` per copy and peer (the primary numbers every operation
//! once for all peers with `submit_as`), the peer-ack rules (`mirror::reconcile`:
//! `peer_acks`, `copies_to_mark`, `Unproven`), the activity log, generations and the
//! connect plan (`mirror::connect::plan`, run by both sides of every link, with the
//! union resync and the bitmap exchange). The glue between them follows
//! `replica::Mirror` (promote, demote, link down, state updates, bitmap end, resync
//! end), frame by frame over one in-order queue per direction of each link.
//!
//! Model: one primary at a time; sync or async per copy and seed (async queues are
//! small, so some writes overflow into the primary's bitmap); random writes of a few
//! blocks, flushes, barriers with peer-acks, link drops and reconnects between any
//! pair, power loss of any copy (only what was made durable survives; the activity
//! log, generations, disk state and persisted bitmaps are metadata), failovers (the
//! primary loses power, a complete copy is promoted) and switchovers (demote, then
//! promote). A copy is complete, as `QuorumGate::complete_copies` has it, if it is the
//! last primary or a sync copy the last primary did not lose (a lost sync copy is
//! recorded outdated until the primary sees it in sync again) whose disk may be
//! promoted (`promotion_refusal`: not in the middle of a resync).
//!
//! Checked: (1) at quiescence (every link up, resyncs and reconciles done) every copy
//! matches the primary block for block; (2) at every step, a copy the primary treats
//! as in sync (replicating, nothing marked or unacknowledged for it, no resync or
//! reconcile pending, nothing in flight on the link) that shows `UpToDate` at the
//! primary's generation matches the primary block for block; (3) a promoted copy
//! holds every write acknowledged while a copy that still lives held it: the primary
//! and the sync copies whose ack completed the write, unless they lost power since;
//! (4) a full resync (`Blocks::All`) only with a reason: the target never held data,
//! or was cut off mid-resync, or the source has no bitmap that starts at the target's
//! generation. Both sides' plans must agree. `SIM_SEED=n` runs one seed,
//! `SIM_TRACE=1` prints its steps.
//!
//! Where the model had to choose: an evicted activity-log extent has no write in
//! flight to any peer (`ActivityLog::begin_write` asks this of its caller; the product
//! waits only for sync peers); a last primary that lost power is complete only while
//! no complete sync copy is left; a write is protected by the sync copies that could
//! take over when their ack completed it (not outdated, not a resync target).
//!
//! What the runs found in the product, each fixed there and now pinned by them (1000
//! seeds of three and of four copies run in CI; every seed must pass):
//! - a copy took a resync from a secondary and adopted older blocks: nothing moves
//!   between two secondaries any more (`connect`'s `no_resync_between_secondaries`),
//!   and `State::may_resync_to` is checked again when the resync really begins, since
//!   a copy may have met a primary between the plan and the first chunk;
//! - a primary that minted more generations than the history kept met its copies as
//!   unrelated: `generation::HISTORY_LEN` is 32;
//! - a primary began a resync with acknowledged writes only in its page cache, the
//!   target turned `SyncTarget` (no longer protecting them) and the primary lost power
//!   (three copies, seed 31: an acknowledged write lost; four copies, seed 626: never
//!   settled): `Mirror::begin_resync` flushes the primary's volume before it sends
//!   `ResyncBegin` (`ResyncStep::Begin` comes first from every `ResyncSource`);
//! - a sync copy in the middle of a resync was taken as complete for a failover:
//!   promotion refuses a disk that is not promotable, and the model's `complete`
//!   follows it.
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use tandem::config::ReplicationMode;
use tandem::mirror::bitmap::{ActivityChange, ActivityLog, DirtyBitmap, BLOCK_BYTES, EXTENT_BYTES};
use tandem::mirror::connect::{plan, Blocks, ConnectPlan, Refusal, Resync};
use tandem::mirror::generation::{
    promotion_refusal, DiskState, Generations, OwnershipEpoch, SplitBrainPolicy,
};
use tandem::mirror::reconcile::{copies_to_mark, peer_acks, AckInput, Unproven};
use tandem::mirror::replica::core::{Op, PeerCore, ResyncSource, ResyncStep, Route};
use tandem::mirror::wire::CopyState;

const BLOCKS: u64 = 4 * EXTENT_BYTES / BLOCK_BYTES; // 16 MiB
const VOLUME: u64 = BLOCKS * BLOCK_BYTES;
const AL_CAPACITY: usize = 2;
/// An async queue holds a few writes of up to 8 blocks.
const ASYNC_QUEUE: u64 = 20 * BLOCK_BYTES;
const NAMES: [&str; 4] = ["n1", "n2", "n3", "n4"];
const STEPS: usize = 300;

#[derive(Debug, Clone)]
enum Msg {
    State {
        primary: bool,
        generation: u64,
        disk: DiskState,
    },
    Write {
        seq: u64,
        blk: u64,
        n: u64,
        val: u64,
        fua: bool,
    },
    Flush {
        seq: u64,
    },
    Ack {
        seq: u64,
    },
    PeerAck {
        upto: u64,
        holders: Vec<String>,
    },
    /// `BitmapRuns` then `BitmapEnd`: the sender's bitmap toward the receiver.
    Bitmap {
        bitmap: DirtyBitmap,
    },
    ResyncBegin,
    ResyncChunk {
        blk: u64,
        vals: Vec<u64>,
    },
    ResyncAck {
        offset: u64,
        len: u64,
    },
    ResyncEnd {
        generation: u64,
    },
}

/// One copy's side of its link to one peer (`replica::PeerState`).
struct Peer {
    core: PeerCore,
    persisted: DirtyBitmap,
    resync: Option<ResyncSource>,
    end_sent: bool,
    awaiting_bitmap: bool,
    peer_primary: bool,
    peer_disk: Option<DiskState>,
    peer_generation: u64,
    target: bool,
}

impl Peer {
    fn new(mode: ReplicationMode, bitmap: DirtyBitmap) -> Peer {
        let limit = match mode {
            ReplicationMode::Sync => 1 << 30,
            _ => ASYNC_QUEUE,
        };
        Peer {
            persisted: bitmap.clone(),
            core: PeerCore::new(mode, limit, bitmap, VOLUME),
            resync: None,
            end_sent: false,
            awaiting_bitmap: false,
            peer_primary: false,
            peer_disk: None,
            peer_generation: 0,
            target: false,
        }
    }
}

struct Copy {
    data: Vec<u64>,
    durable: Vec<u64>,
    disk: DiskState,
    gens: Generations,
    al: ActivityLog,
    peers: Vec<Option<Peer>>,
    primary: bool,
    unproven: Unproven,
    followed: Option<usize>,
    acks_sent: BTreeMap<String, u64>,
    next_seq: u64,
    /// Inv. 3: per block, the newest acknowledged write this copy holds in memory
    /// (values grow with submission order; 0: none).
    must: Vec<u64>,
}

struct Pending {
    blk: u64,
    n: u64,
    val: u64,
    waiting: BTreeSet<(usize, u64)>,
    acked_by: Vec<usize>,
}

struct Sim {
    rng: StdRng,
    n: usize,
    modes: Vec<ReplicationMode>,
    c: Vec<Copy>,
    link: Vec<Vec<bool>>,
    /// `q[from][to]`: frames in flight.
    q: Vec<Vec<VecDeque<Msg>>>,
    pending: Vec<Pending>,
    next_val: u64,
    next_gen: u64,
    /// Operation numbers grow across primaries (the product starts them at the clock).
    clock: u64,
    now: Duration,
    /// The quorum log's view: sync copies the primary lost, until seen in sync again.
    outdated: Vec<bool>,
    last_primary: usize,
    /// The last primary lost power since it was primary.
    crashed_primary: bool,
    trace: bool,
    stats: Stats,
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    promotions: u64,
    failovers: u64,
    resyncs: u64,
    full_resyncs: u64,
    overflows: u64,
    peer_acks: u64,
    reconciled: u64,
    union_resyncs: u64,
    refused_targets: u64,
    false_split_brains: u64,
}

fn name(i: usize) -> String {
    NAMES[i].to_string()
}

fn blocks_of(bm: &DirtyBitmap) -> Vec<u64> {
    let mut out = Vec::new();
    let mut b = 0;
    while let Some((first, n)) = bm.next_dirty_run(b, u64::MAX) {
        out.extend(first..first + n);
        b = first + n;
    }
    out
}

impl Sim {
    fn new(seed: u64, n: usize) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed ^ ((n as u64) << 32));
        // At least one sync and one async copy in most seeds.
        let mut modes: Vec<ReplicationMode> = (0..n)
            .map(|_| {
                if rng.gen_bool(0.5) {
                    ReplicationMode::Sync
                } else {
                    ReplicationMode::Async
                }
            })
            .collect();
        if rng.gen_bool(0.9) {
            modes[0] = ReplicationMode::Sync;
            modes[1] = ReplicationMode::Sync;
            modes[2] = ReplicationMode::Async;
        }
        let c = (0..n)
            .map(|i| {
                let mut gens = Generations::new();
                gens.current = 1;
                Copy {
                    data: vec![0; BLOCKS as usize],
                    durable: vec![0; BLOCKS as usize],
                    disk: DiskState::UpToDate,
                    gens,
                    al: ActivityLog::new(AL_CAPACITY),
                    peers: (0..n)
                        .map(|j| (j != i).then(|| Peer::new(modes[j], DirtyBitmap::new(VOLUME))))
                        .collect(),
                    primary: false,
                    unproven: Unproven::new(),
                    followed: None,
                    acks_sent: BTreeMap::new(),
                    next_seq: 1,
                    must: vec![0; BLOCKS as usize],
                }
            })
            .collect();
        let mut s = Sim {
            rng,
            n,
            modes,
            c,
            link: vec![vec![false; n]; n],
            q: (0..n)
                .map(|_| (0..n).map(|_| VecDeque::new()).collect())
                .collect(),
            pending: Vec::new(),
            next_val: 1,
            next_gen: 1000,
            clock: 1,
            now: Duration::ZERO,
            outdated: vec![false; n],
            last_primary: 0,
            crashed_primary: false,
            trace: std::env::var("SIM_TRACE").is_ok(),
            stats: Stats::default(),
        };
        for i in 0..n {
            for j in i + 1..n {
                s.connect(i, j);
            }
        }
        assert!(s.promote(0), "the first promotion");
        s
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("{what}", what = what());
        }
    }

    fn peer(&mut self, i: usize, j: usize) -> &mut Peer {
        self.c[i].peers[j].as_mut().expect("a peer")
    }

    fn peer_ref(&self, i: usize, j: usize) -> &Peer {
        self.c[i].peers[j].as_ref().expect("a peer")
    }

    fn primary(&self) -> Option<usize> {
        (0..self.n).find(|&i| self.c[i].primary)
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.link[from][to] {
            self.q[from][to].push_back(msg);
        }
    }

    /// A new generation minted by copy `i`.
    fn fresh_gen(&mut self, i: usize) -> u64 {
        self.next_gen += 1;
        self.log(|| {
            format!(
                "{} mints {:x} over {:x}",
                NAMES[i], self.next_gen, self.c[i].gens.current
            )
        });
        self.next_gen
    }

    fn persist_bitmaps(&mut self, i: usize) {
        for j in 0..self.n {
            if let Some(p) = self.c[i].peers[j].as_mut() {
                let mut bm = p.core.bitmap().clone();
                if let Some(r) = &p.resync {
                    for &(o, l) in r.in_flight() {
                        bm.mark(o, l);
                    }
                }
                p.persisted = bm;
            }
        }
    }

    /// `Mirror::copy_state` of copy `i` for peer `j`.
    fn state(&self, i: usize, j: usize) -> CopyState {
        let c = &self.c[i];
        CopyState {
            node: name(i),
            mirror: "sim".into(),
            size_bytes: VOLUME,
            generations: c.gens.clone(),
            disk: match c.disk {
                DiskState::SyncSource => DiskState::UpToDate,
                d => d,
            },
            primary: c.primary,
            changed_blocks: self.peer_ref(i, j).core.bitmap().dirty_blocks(),
            epoch: OwnershipEpoch::default(),
            resolving: false,
        }
    }

    fn broadcast_state(&mut self, i: usize) {
        let msg = Msg::State {
            primary: self.c[i].primary,
            generation: self.c[i].gens.current,
            disk: match self.c[i].disk {
                DiskState::SyncSource => DiskState::UpToDate,
                d => d,
            },
        };
        for j in 0..self.n {
            if j != i {
                self.send(i, j, msg.clone());
            }
        }
    }

    /// The link between `a` and `b` comes up: both run the product's plan on both
    /// States and apply their own (`Mirror::on_first_state`).
    fn connect(&mut self, a: usize, b: usize) {
        if a == b || self.link[a][b] {
            return;
        }
        let (sa, sb) = (self.state(a, b), self.state(b, a));
        let policy = SplitBrainPolicy::Disconnect;
        let plans = match (plan(&sa, &sb, policy), plan(&sb, &sa, policy)) {
            (Ok(pa), Ok(pb)) => [pa, pb],
            (Err(ea), Err(eb)) => {
                assert_eq!(ea, eb, "the two sides stay apart for different reasons");
                let unusable = |s: &CopyState| {
                    matches!(s.disk, DiskState::Inconsistent | DiskState::SyncTarget)
                };
                if ea == Refusal::Unrelated && unusable(&sa) && unusable(&sb) {
                    // Two copies that both wait for a resync (from a third) have nothing
                    // to give each other: the plan refuses them as unrelated (the product
                    // shows a split brain). They stay apart; the link is retried later.
                    self.stats.refused_targets += 1;
                    return;
                }
                assert_eq!(
                    ea,
                    Refusal::SplitBrain,
                    "{} and {}: {sa:?} / {sb:?}",
                    NAMES[a],
                    NAMES[b]
                );
                // With one primary at a time, the generations can still disagree: a copy
                // that adopted a primary's generation does not learn the ones minted
                // before it, and a copy promoted before its reconcile with a lost primary
                // finished never adopted that primary's. The product shows a split brain;
                // the operator resolves it by discarding the secondary's data, which the
                // plan does as that policy (a secondary pair waits for the next try).
                self.stats.false_split_brains += 1;
                if sa.primary == sb.primary {
                    return;
                }
                let policy = SplitBrainPolicy::DiscardSecondary;
                match (plan(&sa, &sb, policy), plan(&sb, &sa, policy)) {
                    (Ok(pa), Ok(pb)) => [pa, pb],
                    other => panic!("the operator could not resolve it: {other:?}"),
                }
            }
            other => panic!("one side connects, the other stays apart: {other:?}"),
        };
        assert_eq!(
            plans[0].peer_disk, plans[1].local_disk,
            "disagree on b's disk"
        );
        assert_eq!(
            plans[1].peer_disk, plans[0].local_disk,
            "disagree on a's disk"
        );
        let senders = plans
            .iter()
            .filter(|p| matches!(p.resync, Resync::Send(_)))
            .count();
        assert!(senders <= 1, "both copies would send: {plans:?}");
        self.log(|| {
            format!(
                "connect {} {} {:?} ({:?} {:?} {:?} / {:?} {:?} {:?})",
                NAMES[a],
                NAMES[b],
                plans.map(|p| p.resync),
                sa.disk,
                sa.generations,
                sa.changed_blocks,
                sb.disk,
                sb.generations,
                sb.changed_blocks
            )
        });
        self.link[a][b] = true;
        self.link[b][a] = true;
        for (s, o, p) in [(a, b, plans[0]), (b, a, plans[1])] {
            if p.resync == Resync::Send(Blocks::All) {
                self.check_full_resync(s, o);
            }
            self.apply_plan(s, o, &p);
        }
        for (s, o, p) in [(a, b, plans[0]), (b, a, plans[1])] {
            if let Resync::Send(blocks) = p.resync {
                self.start_resync(s, o, blocks == Blocks::All, false);
            }
        }
    }

    /// Inv. 4: a full resync needs a reason.
    fn check_full_resync(&mut self, src: usize, dst: usize) {
        self.stats.full_resyncs += 1;
        let t = &self.c[dst];
        let fresh = t.gens.current == 0 && t.gens.history.is_empty();
        let cut_off = matches!(t.disk, DiskState::Inconsistent | DiskState::SyncTarget);
        let base = self.c[src]
            .gens
            .bitmap
            .get(NAMES[dst])
            .copied()
            .unwrap_or(0);
        let no_bitmap = base != t.gens.current;
        assert!(
            fresh || cut_off || no_bitmap,
            "a full resync {} -> {} without a reason (target generation {:x}, source bitmap from {base:x})",
            NAMES[src],
            NAMES[dst],
            t.gens.current
        );
    }

    fn apply_plan(&mut self, s: usize, o: usize, p: &ConnectPlan) {
        self.c[s].disk = p.local_disk;
        let (o_primary, o_gen) = (self.c[o].primary, self.c[o].gens.current);
        if o_primary {
            self.c[s].followed = Some(o);
        }
        let send = match p.resync {
            Resync::Send(b) => Some(b),
            _ => None,
        };
        let peer = self.peer(s, o);
        peer.peer_disk = Some(p.peer_disk);
        peer.peer_primary = o_primary;
        peer.peer_generation = o_gen;
        peer.core.link_up();
        if send == Some(Blocks::All) {
            peer.core.bitmap_mut().mark_all();
        }
        peer.awaiting_bitmap = send == Some(Blocks::Union);
        if send.is_some() {
            self.c[s].gens.track(NAMES[o]);
        }
        if p.send_bitmap {
            let bitmap = self.peer_ref(s, o).core.bitmap().clone();
            self.send(s, o, Msg::Bitmap { bitmap });
        }
    }

    /// `Mirror::start_resync`.
    /// `State::may_resync_to`.
    fn may_resync_to(&self, s: usize, o: usize) -> bool {
        let other_primary = (0..self.n)
            .any(|n| n != s && n != o && self.link[s][n] && self.peer_ref(s, n).peer_primary);
        !self.peer_ref(s, o).peer_primary && (self.c[s].primary || !other_primary)
    }

    fn start_resync(&mut self, s: usize, o: usize, full: bool, force: bool) {
        let allowed = self.may_resync_to(s, o);
        let linked = self.link[s][o];
        let now = self.now;
        let p = self.peer(s, o);
        if p.resync.is_some()
            || p.awaiting_bitmap
            || !linked
            || !p.core.replicating()
            || (!force && p.core.bitmap().is_clean() && p.peer_disk.is_none_or(|d| d.promotable()))
            || !allowed
        {
            return;
        }
        p.resync = Some(ResyncSource::new(full, p.core.bitmap(), VOLUME, None, now));
        p.end_sent = false;
        self.stats.resyncs += 1;
        self.log(|| format!("resync {} -> {} full {full}", NAMES[s], NAMES[o]));
    }

    /// `State::primary_lost`: unproven ranges are marked toward every other copy but
    /// the primary followed.
    fn primary_lost(&mut self, i: usize) {
        let ranges = self.c[i].unproven.take_all();
        let followed = self.c[i].followed.take();
        let others: Vec<usize> = (0..self.n)
            .filter(|&j| j != i && Some(j) != followed)
            .collect();
        self.mark_toward(i, &others, &ranges);
    }

    fn mark_toward(&mut self, i: usize, copies: &[usize], ranges: &[(u64, u64)]) {
        if ranges.is_empty() {
            return;
        }
        for &j in copies {
            let p = self.peer(i, j);
            for &(o, l) in ranges {
                p.core.mark_range(o, l);
            }
            if !p.core.bitmap().is_clean() {
                self.c[i].gens.track(NAMES[j]);
            }
        }
    }

    /// `Mirror::on_link_down` on copy `s` for its link to `o`.
    fn on_link_down(&mut self, s: usize, o: usize) {
        let primary = self.c[s].primary;
        let p = self.peer(s, o);
        let was_up = p.core.is_up();
        let waiting = p.core.link_down();
        if let Some(mut r) = p.resync.take() {
            r.abort(p.core.bitmap_mut());
        }
        p.end_sent = false;
        p.target = false;
        let followed = std::mem::take(&mut p.peer_primary);
        p.awaiting_bitmap = false;
        for seq in waiting {
            self.resolve(o, seq, false);
        }
        if primary && was_up {
            let g = self.fresh_gen(s);
            self.c[s].gens.diverge(&[NAMES[o]], g);
            self.outdate(o);
        }
        if followed && !primary {
            self.primary_lost(s);
        }
        self.persist_bitmaps(s);
        self.broadcast_state(s);
    }

    fn drop_link(&mut self, a: usize, b: usize) {
        if a == b || !self.link[a][b] {
            return;
        }
        self.log(|| format!("drop {} {}", NAMES[a], NAMES[b]));
        self.link[a][b] = false;
        self.link[b][a] = false;
        self.q[a][b].clear();
        self.q[b][a].clear();
        self.on_link_down(a, b);
        self.on_link_down(b, a);
    }
}

// The write path, the peer-acks and the frames.
impl Sim {
    /// A peer's answer to operation `seq` (`acked`) or its loss.
    fn resolve(&mut self, peer: usize, seq: u64, acked: bool) {
        let Some(k) = self
            .pending
            .iter()
            .position(|p| p.waiting.contains(&(peer, seq)))
        else {
            return;
        };
        let p = &mut self.pending[k];
        p.waiting.remove(&(peer, seq));
        if acked {
            p.acked_by.push(peer);
        }
        if p.waiting.is_empty() {
            let p = self.pending.remove(k);
            self.acknowledge(p);
        }
    }

    /// The client's write completes: the primary and the sync copies that acked it
    /// hold it.
    fn acknowledge(&mut self, p: Pending) {
        let Some(prim) = self.primary() else { return };
        // A copy that could not take over (outdated, or inconsistent while it receives
        // a resync) holds the write but does not protect it.
        let able = |j: usize| self.complete(j) && self.c[j].disk.promotable();
        let holders: Vec<usize> = p.acked_by.iter().copied().filter(|&j| able(j)).collect();
        for holder in std::iter::once(prim).chain(holders) {
            for b in p.blk..p.blk + p.n {
                let m = &mut self.c[holder].must[b as usize];
                *m = (*m).max(p.val);
            }
        }
    }

    fn client_write(&mut self) {
        let Some(p) = self.primary() else { return };
        let blk = self.rng.gen_range(0..BLOCKS - 8);
        let n = self.rng.gen_range(1..=8);
        let val = self.next_val;
        self.next_val += 1;
        let fua = self.rng.gen_bool(0.1);
        self.primary_activity(p, blk, n);
        let seq = self.c[p].next_seq;
        self.c[p].next_seq += 1;
        for b in blk..blk + n {
            self.c[p].data[b as usize] = val;
            if fua {
                self.c[p].durable[b as usize] = val;
            }
        }
        let op = Op::Write {
            offset: blk * BLOCK_BYTES,
            len: n * BLOCK_BYTES,
            fua,
        };
        let mut waiting = BTreeSet::new();
        for j in (0..self.n).filter(|&j| j != p) {
            let now = self.now;
            let route = self.peer(p, j).core.submit_as(op, now, seq);
            self.log(|| {
                format!(
                    "write {val} {blk}+{n} {} -> {}: {route:?}",
                    NAMES[p], NAMES[j]
                )
            });
            match route {
                Route::Send { seq, wait } => {
                    self.send(
                        p,
                        j,
                        Msg::Write {
                            seq,
                            blk,
                            n,
                            val,
                            fua,
                        },
                    );
                    if wait {
                        waiting.insert((j, seq));
                    }
                }
                Route::Tracked => {
                    if self.link[p][j] {
                        self.stats.overflows += 1;
                    }
                }
            }
        }
        let pending = Pending {
            blk,
            n,
            val,
            waiting,
            acked_by: Vec::new(),
        };
        if pending.waiting.is_empty() {
            self.acknowledge(pending);
        } else {
            self.pending.push(pending);
        }
    }

    /// `Mirror::activity`: an extent leaving the log is flushed here and on the peers
    /// first; a sync peer that does not confirm gets it marked.
    fn primary_activity(&mut self, p: usize, blk: u64, n: u64) {
        let before = self.c[p].al.extents().to_vec();
        if self.c[p].al.begin_write(blk * BLOCK_BYTES, n * BLOCK_BYTES) != ActivityChange::Persist {
            return;
        }
        let after = self.c[p].al.extents().to_vec();
        let evicted: Vec<u64> = before.into_iter().filter(|e| !after.contains(e)).collect();
        if !evicted.is_empty() {
            // `ActivityLog::begin_write` asks its caller to keep every write of an
            // evicted extent out of flight. The product waits only for the sync peers
            // here; the simulation lets every link drain (an async peer's writes in
            // flight would otherwise be recorded nowhere once the extent left the log
            // and the primary lost power).
            for j in (0..self.n).filter(|&j| j != p) {
                while self.link[p][j] && !(self.q[p][j].is_empty() && self.q[j][p].is_empty()) {
                    self.deliver(p, j);
                    self.deliver(j, p);
                }
            }
            self.c[p].durable = self.c[p].data.clone();
            for j in self.flush_peers(p, false) {
                for &e in &evicted {
                    self.peer(p, j)
                        .core
                        .mark_range(e * EXTENT_BYTES, EXTENT_BYTES);
                }
            }
        }
        self.persist_bitmaps(p);
    }

    /// `Mirror::flush_peers`: a numbered Flush to every peer, waited for on the sync
    /// ones (and on all with `all`); returns the peers that did not confirm it.
    fn flush_peers(&mut self, p: usize, all: bool) -> Vec<usize> {
        let numbered = self.c[p].next_seq;
        self.c[p].next_seq += 1;
        let mut waits = Vec::new();
        for j in (0..self.n).filter(|&j| j != p) {
            let now = self.now;
            if let Route::Send { seq, wait } =
                self.peer(p, j).core.submit_as(Op::Flush, now, numbered)
            {
                self.send(p, j, Msg::Flush { seq });
                if wait || all {
                    if !wait {
                        self.peer(p, j).core.require_wait(seq);
                    }
                    waits.push((j, seq));
                }
            }
        }
        let mut unconfirmed = Vec::new();
        for (j, seq) in waits {
            for _ in 0..10_000 {
                if !self.link[p][j] || self.peer_ref(p, j).core.durable_seq() >= seq {
                    break;
                }
                while self.link[p][j] && !self.q[p][j].is_empty() {
                    self.deliver(p, j);
                }
                while self.link[p][j] && !self.q[j][p].is_empty() {
                    self.deliver(j, p);
                }
            }
            if !self.link[p][j] || self.peer_ref(p, j).core.durable_seq() < seq {
                unconfirmed.push(j);
            }
        }
        unconfirmed
    }

    fn client_flush(&mut self) {
        let Some(p) = self.primary() else { return };
        self.c[p].durable = self.c[p].data.clone();
        let numbered = self.c[p].next_seq;
        self.c[p].next_seq += 1;
        for j in (0..self.n).filter(|&j| j != p) {
            let now = self.now;
            if let Route::Send { seq, .. } =
                self.peer(p, j).core.submit_as(Op::Flush, now, numbered)
            {
                self.send(p, j, Msg::Flush { seq });
            }
        }
    }

    /// `Mirror::barrier_peers`: a Flush to every peer with applied, unflushed writes.
    fn barrier(&mut self) {
        let Some(p) = self.primary() else { return };
        let numbered = self.c[p].next_seq;
        self.c[p].next_seq += 1;
        for j in (0..self.n).filter(|&j| j != p) {
            let now = self.now;
            let peer = self.peer(p, j);
            if peer.core.undurable_ops() == 0 || !peer.core.replicating() {
                continue;
            }
            if let Route::Send { seq, .. } = peer.core.submit_as(Op::Flush, now, numbered) {
                self.send(p, j, Msg::Flush { seq });
            }
        }
    }

    /// `Mirror::send_peer_acks`.
    fn send_peer_acks(&mut self, p: usize) {
        if !self.c[p].primary {
            return;
        }
        let names: Vec<String> = (0..self.n).map(name).collect();
        let inputs: Vec<AckInput<'_>> = (0..self.n)
            .filter(|&j| j != p)
            .map(|j| {
                let core = &self.peer_ref(p, j).core;
                AckInput {
                    name: &names[j],
                    replicating: core.replicating() && self.link[p][j],
                    holds_through: core.holds_through(),
                    durable_seq: core.durable_seq(),
                }
            })
            .collect();
        let mut sent = std::mem::take(&mut self.c[p].acks_sent);
        let acks = peer_acks(&inputs, &mut sent);
        self.c[p].acks_sent = sent;
        for a in acks {
            let to = NAMES.iter().position(|n| *n == a.to).expect("a copy");
            self.stats.peer_acks += 1;
            self.send(
                p,
                to,
                Msg::PeerAck {
                    upto: a.upto,
                    holders: a.holders,
                },
            );
        }
    }

    /// `Mirror::secondary_activity`: an extent leaving a secondary's log takes its
    /// unproven ranges along (marked toward every other copy, bitmaps persisted).
    fn secondary_activity(&mut self, i: usize, offset: u64, len: u64) {
        let before = self.c[i].al.extents().to_vec();
        if self.c[i].al.begin_write(offset, len) == ActivityChange::None {
            return;
        }
        let after = self.c[i].al.extents().to_vec();
        let all: Vec<usize> = (0..self.n).filter(|&j| j != i).collect();
        for e in before.into_iter().filter(|e| !after.contains(e)) {
            let ranges = self.c[i].unproven.touching(e * EXTENT_BYTES, EXTENT_BYTES);
            self.mark_toward(i, &all, &ranges);
        }
        self.persist_bitmaps(i);
    }

    /// `Mirror::shrink_secondary_al`.
    fn shrink_secondary_al(&mut self, i: usize) {
        if self.c[i].primary {
            return;
        }
        self.persist_bitmaps(i);
        let keep: Vec<u64> = self.c[i]
            .al
            .extents()
            .iter()
            .copied()
            .filter(|&e| {
                !self.c[i]
                    .unproven
                    .touching(e * EXTENT_BYTES, EXTENT_BYTES)
                    .is_empty()
            })
            .collect();
        self.c[i].al = ActivityLog::from_extents(AL_CAPACITY, keep);
    }
}

// Frames as the receiving copy handles them.
impl Sim {
    fn deliver(&mut self, from: usize, to: usize) {
        if !self.link[from][to] {
            return;
        }
        let Some(msg) = self.q[from][to].pop_front() else {
            return;
        };
        match msg {
            Msg::State {
                primary,
                generation,
                disk,
            } => self.on_state(to, from, primary, generation, disk),
            Msg::Write {
                seq,
                blk,
                n,
                val,
                fua,
            } => {
                assert!(!self.c[to].primary, "a primary got a replicated write");
                self.secondary_activity(to, blk * BLOCK_BYTES, n * BLOCK_BYTES);
                for b in blk..blk + n {
                    self.c[to].data[b as usize] = val;
                }
                if fua {
                    self.c[to].durable = self.c[to].data.clone();
                }
                self.c[to]
                    .unproven
                    .applied(seq, blk * BLOCK_BYTES, n * BLOCK_BYTES);
                self.send(to, from, Msg::Ack { seq });
            }
            Msg::Flush { seq } => {
                self.c[to].durable = self.c[to].data.clone();
                self.c[to].unproven.seen(seq);
                self.send(to, from, Msg::Ack { seq });
            }
            Msg::Ack { seq } => self.on_ack(to, from, seq),
            Msg::PeerAck { upto, holders } => {
                if !self.c[to].primary && self.peer_ref(to, from).peer_primary {
                    let ranges = self.c[to].unproven.covered(upto);
                    let me = NAMES[to];
                    let marks: Vec<usize> =
                        copies_to_mark(NAMES[..self.n].iter().copied(), me, NAMES[from], &holders)
                            .iter()
                            .map(|c| NAMES.iter().position(|n| n == c).expect("a copy"))
                            .collect();
                    self.mark_toward(to, &marks, &ranges);
                }
            }
            Msg::Bitmap { bitmap } => self.on_bitmap(to, from, &bitmap),
            Msg::ResyncBegin => {
                if self.c[to].primary {
                    // "a primary cannot be a resync target": the session ends.
                    self.drop_link(to, from);
                    return;
                }
                self.c[to].disk = DiskState::SyncTarget;
                self.peer(to, from).target = true;
            }
            Msg::ResyncChunk { blk, vals } => {
                for (k, v) in vals.iter().enumerate() {
                    self.c[to].data[blk as usize + k] = *v;
                }
                self.c[to].durable = self.c[to].data.clone();
                let len = vals.len() as u64 * BLOCK_BYTES;
                self.send(
                    to,
                    from,
                    Msg::ResyncAck {
                        offset: blk * BLOCK_BYTES,
                        len,
                    },
                );
            }
            Msg::ResyncAck { offset, len } => {
                let now = self.now;
                if let Some(r) = &mut self.peer(to, from).resync {
                    r.acked(offset, len, now).expect("ack of a sent chunk");
                }
            }
            Msg::ResyncEnd { generation } => self.on_resync_end(to, from, generation),
        }
    }

    /// `on_resync_end` on the target: adopt the source's generation, tell it.
    fn on_resync_end(&mut self, to: usize, from: usize, generation: u64) {
        self.log(|| format!("resync end {} -> {}", NAMES[from], NAMES[to]));
        // `on_resync_end`: adopt the source's generation, tell it.
        self.c[to].durable = self.c[to].data.clone();
        self.c[to].gens.synced_with(NAMES[from], generation);
        self.c[to].disk = DiskState::UpToDate;
        let p = self.peer(to, from);
        let blocks = p.core.bitmap().blocks();
        p.core.bitmap_mut().clear_blocks(0, blocks);
        p.target = false;
        self.persist_bitmaps(to);
        let state = Msg::State {
            primary: self.c[to].primary,
            generation: self.c[to].gens.current,
            disk: self.c[to].disk,
        };
        self.send(to, from, state);
    }

    /// `Mirror::on_ack` on the primary side.
    fn on_ack(&mut self, me: usize, peer: usize, seq: u64) {
        let done = self
            .peer(me, peer)
            .core
            .ack(seq)
            .expect("ack of a sent seq");
        for s in done {
            self.resolve(peer, s, true);
        }
        self.send_peer_acks(me);
        let primary = self.c[me].primary;
        let p = self.peer(me, peer);
        if p.core.unacked_ops() == 0 && p.resync.is_none() && !p.core.bitmap().is_clean() && primary
        {
            self.c[me].gens.track(NAMES[peer]);
            self.start_resync(me, peer, false, false);
        }
    }

    /// `Mirror::on_state_update` on copy `me`.
    fn on_state(
        &mut self,
        me: usize,
        peer: usize,
        primary: bool,
        generation: u64,
        disk: DiskState,
    ) {
        let my_primary = self.c[me].primary;
        let my_current = self.c[me].gens.current;
        let my_disk = self.c[me].disk;
        let p = self.peer(me, peer);
        p.peer_disk = Some(disk);
        p.peer_generation = generation;
        let was_primary = std::mem::replace(&mut p.peer_primary, primary);
        assert!(!(my_primary && primary), "two primaries");
        if was_primary != primary && !my_primary {
            self.primary_lost(me);
            if primary {
                self.c[me].followed = Some(peer);
                let bitmap = self.peer_ref(me, peer).core.bitmap().clone();
                self.send(me, peer, Msg::Bitmap { bitmap });
                return;
            }
        }
        let p = self.peer(me, peer);
        if p.end_sent && disk == DiskState::UpToDate && generation == my_current {
            p.resync = None;
            p.end_sent = false;
            self.c[me].gens.synced_with(NAMES[peer], my_current);
            if !self.peer_ref(me, peer).core.bitmap().is_clean() {
                self.c[me].gens.track(NAMES[peer]);
                self.start_resync(me, peer, false, false);
            }
        } else if primary
            && !my_primary
            && my_disk == DiskState::UpToDate
            && !p.target
            && generation != my_current
            && p.core.is_up()
        {
            self.c[me].gens.synced_with(NAMES[peer], generation);
        }
    }

    /// `Mirror::on_bitmap_runs` then `on_bitmap_end` on copy `me`.
    fn on_bitmap(&mut self, me: usize, peer: usize, bitmap: &DirtyBitmap) {
        let (primary, current, disk) =
            (self.c[me].primary, self.c[me].gens.current, self.c[me].disk);
        let p = self.peer(me, peer);
        for blk in blocks_of(bitmap) {
            p.core.mark_range(blk * BLOCK_BYTES, BLOCK_BYTES);
        }
        if std::mem::take(&mut p.awaiting_bitmap) {
            if p.core.bitmap().is_clean() {
                self.stats.reconciled += 1;
                self.send(
                    me,
                    peer,
                    Msg::Bitmap {
                        bitmap: DirtyBitmap::new(VOLUME),
                    },
                );
                return;
            }
            self.stats.union_resyncs += 1;
            self.c[me].gens.track(NAMES[peer]);
            self.start_resync(me, peer, false, true);
            return;
        }
        let adopt = !primary
            && p.peer_primary
            && !p.target
            && disk.promotable()
            && p.peer_generation != current;
        if adopt {
            let g = p.peer_generation;
            self.c[me].gens.synced_with(NAMES[peer], g);
        }
    }

    fn resync_step(&mut self, s: usize, o: usize) {
        if s == o || !self.link[s][o] {
            return;
        }
        let now = self.now;
        let generation = self.c[s].gens.current;
        let allowed = self.may_resync_to(s, o);
        let Copy { data, peers, .. } = &mut self.c[s];
        let p = peers[o].as_mut().expect("a peer");
        if p.end_sent {
            return;
        }
        let Some(r) = &mut p.resync else { return };
        match r.next(p.core.bitmap(), now) {
            ResyncStep::Begin if !allowed => p.resync = None,
            ResyncStep::Begin => {
                r.begin();
                if self.c[s].primary {
                    // `Mirror::begin_resync`: with no write in flight, the primary
                    // flushes its own disk before the target turns SyncTarget and
                    // stops protecting the writes it acknowledged.
                    self.c[s].durable = self.c[s].data.clone();
                }
                self.send(s, o, Msg::ResyncBegin);
            }
            ResyncStep::Chunk { offset, len } => {
                let blk = offset / BLOCK_BYTES;
                let n = len / BLOCK_BYTES;
                let vals = data[blk as usize..(blk + n) as usize].to_vec();
                r.sent(offset, len, p.core.bitmap_mut());
                self.send(s, o, Msg::ResyncChunk { blk, vals });
            }
            ResyncStep::End => {
                p.end_sent = true;
                self.send(s, o, Msg::ResyncEnd { generation });
            }
            _ => {}
        }
    }
}

// Failures, roles and the invariants.
impl Sim {
    /// Power loss of copy `i` and its restart as a secondary.
    fn crash(&mut self, i: usize) {
        self.log(|| format!("crash {}", NAMES[i]));
        let was_primary = self.c[i].primary;
        for j in (0..self.n).filter(|&j| j != i) {
            if self.link[i][j] {
                self.link[i][j] = false;
                self.link[j][i] = false;
                self.q[i][j].clear();
                self.q[j][i].clear();
                self.on_link_down(j, i);
            }
        }
        if i == self.last_primary {
            self.crashed_primary = true;
        }
        if was_primary {
            // Nothing in flight was acknowledged.
            self.pending.clear();
            self.stats.failovers += 1;
        } else {
            for p in &mut self.pending {
                p.acked_by.retain(|&h| h != i);
            }
        }
        let modes = self.modes.clone();
        let c = &mut self.c[i];
        c.data = c.durable.clone();
        c.primary = false;
        c.unproven = Unproven::new();
        c.followed = None;
        c.acks_sent.clear();
        c.next_seq = 1;
        c.must = vec![0; BLOCKS as usize];
        for (j, slot) in c.peers.iter_mut().enumerate() {
            let Some(p) = slot else { continue };
            let mut bm = p.persisted.clone();
            c.al.mark_crash_dirty(&mut bm);
            if !bm.is_clean() {
                c.gens.track(NAMES[j]);
            }
            *p = Peer::new(modes[j], bm);
        }
    }

    /// The quorum log records copy `j` outdated: it may not take over, so the writes
    /// it holds are no longer protected by it (losing the primary too is a second
    /// failure).
    fn outdate(&mut self, j: usize) {
        self.outdated[j] = true;
        self.c[j].must = vec![0; BLOCKS as usize];
    }

    /// Whether copy `i` may take over: the last primary, or a sync copy it did not
    /// lose (`QuorumGate::complete_copies`).
    fn complete(&self, i: usize) -> bool {
        let sync_copy = |j: usize| {
            j != self.last_primary
                && self.modes[j] == ReplicationMode::Sync
                && !self.outdated[j]
                && promotion_refusal(self.c[j].disk).is_none()
        };
        // A last primary that lost power holds only what it made durable: while a sync
        // copy that did not is there, that copy holds the writes it acknowledged and it
        // takes over.
        sync_copy(i)
            || (i == self.last_primary && !(self.crashed_primary && (0..self.n).any(sync_copy)))
    }

    /// `Mirror::promote` of copy `i` (no copy is primary).
    fn promote(&mut self, i: usize) -> bool {
        if self.primary().is_some()
            || !self.complete(i)
            || promotion_refusal(self.c[i].disk).is_some()
        {
            return false;
        }
        self.log(|| format!("promote {}", NAMES[i]));
        // Inv. 3: every acknowledged write a living copy held is here.
        for b in 0..BLOCKS as usize {
            let need = (0..self.n).map(|d| self.c[d].must[b]).max().unwrap_or(0);
            assert!(
                self.c[i].data[b] >= need,
                "promoted {} lacks an acknowledged write at block {b}: holds {}, must hold {need} or newer",
                NAMES[i],
                self.c[i].data[b]
            );
        }
        self.stats.promotions += 1;
        self.primary_lost(i);
        self.clock += 1_000_000;
        let c = &mut self.c[i];
        c.next_seq = c.next_seq.max(c.unproven.last_seq() + 1).max(self.clock);
        c.acks_sent.clear();
        let mut absent = Vec::new();
        for j in (0..self.n).filter(|&j| j != i) {
            let linked = self.link[i][j];
            let p = self.c[i].peers[j].as_mut().expect("a peer");
            p.awaiting_bitmap = linked;
            if !p.core.is_up() {
                absent.push(j);
            }
        }
        if !absent.is_empty() {
            let g = self.fresh_gen(i);
            let refs: Vec<&str> = absent.iter().map(|&j| NAMES[j]).collect();
            self.c[i].gens.diverge(&refs, g);
            for &j in &absent {
                self.outdate(j);
            }
        }
        self.c[i].primary = true;
        self.last_primary = i;
        self.crashed_primary = false;
        self.broadcast_state(i);
        true
    }

    /// `Mirror::demote`: drain, flush everywhere (async peers waited for too), clear
    /// the activity log, persist.
    fn demote(&mut self, p: usize) {
        self.log(|| format!("demote {}", NAMES[p]));
        self.c[p].primary = false;
        for j in (0..self.n).filter(|&j| j != p) {
            while self.link[p][j] && !self.q[p][j].is_empty() {
                self.deliver(p, j);
            }
        }
        self.c[p].durable = self.c[p].data.clone();
        let _ = self.flush_peers(p, true);
        self.pending.clear();
        self.c[p].al = ActivityLog::new(AL_CAPACITY);
        self.persist_bitmaps(p);
        self.broadcast_state(p);
    }

    /// A copy the primary treats as in sync, at rest on the link.
    fn in_sync(&self, p: usize, j: usize) -> bool {
        let peer = self.peer_ref(p, j);
        self.link[p][j]
            && peer.core.replicating()
            && peer.core.bitmap().is_clean()
            && peer.core.unacked_ops() == 0
            && !peer.awaiting_bitmap
            && peer.resync.is_none()
            && self.q[p][j].is_empty()
            && self.q[j][p].is_empty()
            && self.c[j].disk == DiskState::UpToDate
            && self.c[j].gens.current == self.c[p].gens.current
    }

    /// Inv. 2, and the quorum log's view: a sync copy seen in sync is complete again.
    fn check_truthful(&mut self) {
        let Some(p) = self.primary() else { return };
        for j in (0..self.n).filter(|&j| j != p) {
            if !self.in_sync(p, j) {
                continue;
            }
            let differ: Vec<usize> = (0..BLOCKS as usize)
                .filter(|&b| self.c[p].data[b] != self.c[j].data[b])
                .take(4)
                .collect();
            assert!(
                differ.is_empty(),
                "{} shows UpToDate and in sync with primary {} but differs at blocks {differ:?}: {:?}",
                NAMES[j],
                NAMES[p],
                differ
                    .iter()
                    .map(|&b| (self.c[p].data[b], self.c[j].data[b]))
                    .collect::<Vec<_>>()
            );
            self.outdated[j] = false;
        }
    }

    fn pick_pair(&mut self) -> (usize, usize) {
        let a = self.rng.gen_range(0..self.n);
        let b = (a + self.rng.gen_range(1..self.n)) % self.n;
        (a, b)
    }

    fn step(&mut self) {
        self.now += Duration::from_millis(1);
        let roll = self.rng.gen_range(0..100);
        match roll {
            0..=24 => self.client_write(),
            25..=28 => self.client_flush(),
            29..=31 => self.barrier(),
            32..=61 => {
                let (a, b) = self.pick_pair();
                self.deliver(a, b);
            }
            62..=73 => {
                let (a, b) = self.pick_pair();
                self.resync_step(a, b);
            }
            74..=76 => {
                let (a, b) = self.pick_pair();
                self.drop_link(a, b);
            }
            77..=85 => {
                let (a, b) = self.pick_pair();
                self.connect(a, b);
            }
            86 => {
                let i = self.rng.gen_range(0..self.n);
                self.crash(i);
            }
            87 => self.failover(),
            88 => self.switchover(),
            89 => {
                let i = self.rng.gen_range(0..self.n);
                self.shrink_secondary_al(i);
            }
            90..=91 => {
                let i = self.rng.gen_range(0..self.n);
                self.persist_bitmaps(i);
            }
            _ => self.pump(),
        }
        self.check_truthful();
    }

    /// Delivers one frame on every link that has one.
    fn pump(&mut self) {
        for a in 0..self.n {
            for b in 0..self.n {
                self.deliver(a, b);
            }
        }
    }

    /// The primary loses power (if any), then a complete copy is promoted.
    fn failover(&mut self) {
        if let Some(p) = self.primary() {
            self.crash(p);
        }
        self.promote_some();
    }

    /// The primary steps down and a complete copy (possibly itself) takes over.
    fn switchover(&mut self) {
        if let Some(p) = self.primary() {
            self.demote(p);
        }
        self.promote_some();
    }

    fn promote_some(&mut self) -> bool {
        let start = self.rng.gen_range(0..self.n);
        (0..self.n).any(|k| self.promote((start + k) % self.n))
    }

    /// Heals every link and runs until quiet; every copy must then match the primary.
    fn settle(&mut self) {
        for _ in 0..600 {
            if self.primary().is_none() {
                self.promote_some();
            }
            for a in 0..self.n {
                for b in a + 1..self.n {
                    self.connect(a, b);
                }
            }
            self.pump();
            for a in 0..self.n {
                for b in 0..self.n {
                    self.resync_step(a, b);
                }
            }
            self.barrier();
            self.check_truthful();
            if self.quiet() {
                break;
            }
        }
        if !self.quiet() {
            for (i, name) in NAMES.iter().enumerate().take(self.n) {
                self.log(|| {
                    let c = &self.c[i];
                    format!(
                        "end {name}: {:?} {:?} primary {} complete {} outdated {} links {:?}",
                        c.disk,
                        c.gens,
                        c.primary,
                        self.complete(i),
                        self.outdated[i],
                        self.link[i]
                    )
                });
            }
        }
        assert!(self.quiet(), "the copies did not settle");
        let p = self.primary().expect("a primary after settling");
        for b in 0..BLOCKS as usize {
            let need = (0..self.n).map(|d| self.c[d].must[b]).max().unwrap_or(0);
            assert!(
                self.c[p].data[b] >= need,
                "primary {} lost an acknowledged write at block {b}",
                NAMES[p]
            );
        }
        for (j, c) in self.c.iter().enumerate() {
            let differ: Vec<usize> = (0..BLOCKS as usize)
                .filter(|&b| self.c[p].data[b] != c.data[b])
                .take(4)
                .collect();
            assert!(
                differ.is_empty(),
                "{} differs from primary {} after settling at blocks {differ:?}",
                NAMES[j],
                NAMES[p]
            );
        }
    }

    fn quiet(&self) -> bool {
        let Some(p) = self.primary() else {
            return false;
        };
        (0..self.n).all(|a| {
            (0..self.n).all(|b| {
                a == b
                    || (a != p && b != p && !self.link[a][b])
                    || (self.link[a][b]
                        && self.q[a][b].is_empty()
                        && self.peer_ref(a, b).resync.is_none()
                        && !self.peer_ref(a, b).awaiting_bitmap)
            })
        }) && (0..self.n).all(|j| j == p || self.peer_ref(p, j).core.unacked_ops() == 0)
    }
}

/// Runs `seeds` seeds of `n` copies: the totals and each failing seed's message.
fn run(n: usize, seeds: u64) -> (Stats, Vec<String>) {
    let only: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok());
    let mut total = Stats::default();
    let mut failed = Vec::new();
    if only.is_none() {
        std::panic::set_hook(Box::new(|_| {}));
    }
    for seed in 0..seeds {
        if only.is_some_and(|o| o != seed) {
            continue;
        }
        let t0 = std::time::Instant::now();
        let result = std::panic::catch_unwind(|| {
            let mut sim = Sim::new(seed, n);
            for _ in 0..STEPS {
                sim.step();
            }
            sim.settle();
            sim.stats
        });
        if t0.elapsed() > Duration::from_millis(200) {
            eprintln!("{n} copies, seed {seed}: {:?}", t0.elapsed());
        }
        match result {
            Ok(s) => {
                total.promotions += s.promotions;
                total.failovers += s.failovers;
                total.resyncs += s.resyncs;
                total.full_resyncs += s.full_resyncs;
                total.overflows += s.overflows;
                total.peer_acks += s.peer_acks;
                total.reconciled += s.reconciled;
                total.union_resyncs += s.union_resyncs;
                total.refused_targets += s.refused_targets;
                total.false_split_brains += s.false_split_brains;
            }
            Err(e) => {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
                failed.push(format!(
                    "{n} copies, seed {seed} (rerun: SIM_SEED={seed} SIM_TRACE=1): {msg:?}"
                ));
            }
        }
    }
    if only.is_none() {
        let _ = std::panic::take_hook();
    }
    eprintln!("{n} copies: {total:?}");
    (total, failed)
}

/// Failures grouped by the invariant (the message up to its first detail).
fn kinds(failed: &[String]) -> BTreeMap<String, usize> {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in failed {
        let msg = f.split("Some(\"").nth(1).unwrap_or(f);
        let kind: String = msg
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .take(50)
            .collect();
        *kinds.entry(kind).or_default() += 1;
    }
    kinds
}

fn all_seeds_pass(n: usize) {
    let (s, failed) = run(n, 1000);
    assert!(
        failed.is_empty(),
        "{} of 1000 seeds failed: {:#?}\n{}",
        failed.len(),
        kinds(&failed),
        failed[..failed.len().min(5)].join("\n")
    );
    if std::env::var("SIM_SEED").is_err() {
        assert!(
            s.failovers > 100 && s.overflows > 100 && s.union_resyncs > 10,
            "{s:?}"
        );
    }
}

#[test]
fn three_copies_a_thousand_seeds() {
    all_seeds_pass(3);
}

#[test]
fn four_copies_a_thousand_seeds() {
    all_seeds_pass(4);
}
