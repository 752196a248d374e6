//! The quorum core, pure: raft-rs's `RawNode` over the in-memory [`Store`], the
//! applied [`Register`] and the [`LeaseBook`], driven with the time as an input.
//!
//! The node core (and the witness) feed it ticks, datagrams and proposals; it returns
//! [`QuorumAction`]s in the order raft requires them carried out: the leader's
//! messages, the decisions that committed, and the write to the durable log
//! ([`QuorumAction::Persist`]). The write is asynchronous (raft-rs's
//! `advance_append_async`): the caller reports it durable with [`QuorumCore::persisted`],
//! and only then does this core release the messages that depend on it (votes, append
//! acknowledgements) and let raft count the entries as this voter's. So a slow fsync
//! delays the log, never the heartbeats, lease renewals or the watchdog around it.
//! Consensus is raft-rs with `check_quorum` and `pre_vote`; nothing here re-implements it.
//!
//! raft-rs draws its election timeouts from the thread's random generator; this core
//! replaces each draw with one from its own seeded generator, so a seeded simulation
//! replays exactly.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::decision::{Applied, Decision, Register};
use super::lease::{LeaseBook, LeaseConfig};
use super::records::{PersistBatch, Restored};
use super::store::{rec_of_entry, rec_of_hard, rec_of_snapshot, Store};
use super::wire::QuorumMsg;

/// Compact the log once this many entries follow the snapshot.
pub const COMPACT_EVERY: usize = 256;

/// What a quorum core is built from.
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    pub local: String,
    /// Every voter: the nodes and the witness, if any.
    pub voters: Vec<String>,
    /// The witness's name: a voter that never leads.
    pub witness: Option<String>,
    /// One raft tick.
    pub tick_ms: u64,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    pub lease: LeaseConfig,
}

/// The cluster-wide timing every voter derives its quorum core from: the heartbeat
/// interval and dead time, and `[quorum]`'s lease and drift bound. Nodes and the
/// witness must agree on all four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumTiming {
    pub interval: Duration,
    pub dead_time: Duration,
    pub lease: Duration,
    pub drift_ppm: u64,
}

impl QuorumConfig {
    /// The core's settings for voter `local` among `voters`: one raft tick per half
    /// heartbeat interval (at least 10 ms), an election timeout drawn from 0.6 to 1.2 ×
    /// the dead time, a leader heartbeat every two ticks, and the lease rules. The
    /// election is over before the dead owner's lease is (L ≥ the dead time), so a
    /// dead owner that also led costs no more than its lease: measured with
    /// `tandem lab bench failover --witness`, an election drawn from 1 to 2 × the dead
    /// time put the p99 at 2.35 s against a median of 1.53 s. The node daemon
    /// (`node::QuorumSettings::from_config`) and `tandem witness` both build theirs here,
    /// so that every voter of a cluster runs the same rules.
    pub fn derive(
        t: QuorumTiming,
        voters: Vec<String>,
        witness: Option<String>,
        local: &str,
    ) -> QuorumConfig {
        let interval = t.interval.as_millis() as u64;
        let dead = t.dead_time.as_millis() as u64;
        let tick_ms = (interval / 2).max(10);
        QuorumConfig {
            local: local.to_string(),
            voters,
            witness,
            tick_ms,
            election_ticks: ((dead * 3 / 5 / tick_ms) as usize).max(4),
            heartbeat_ticks: 2,
            lease: LeaseConfig {
                lease_ms: t.lease.as_millis() as u64,
                drift_ppm: t.drift_ppm,
                dead_time_ms: dead,
                report_fresh_ms: 2 * interval + 100,
            },
        }
    }

    /// Raft id of a voter: its position in the sorted voter list, from 1.
    pub fn id_of(&self, name: &str) -> Option<u64> {
        let mut v = self.voters.clone();
        v.sort();
        v.iter().position(|n| n == name).map(|i| i as u64 + 1)
    }

    pub fn name_of(&self, id: u64) -> Option<&str> {
        let mut v: Vec<&String> = self.voters.iter().collect();
        v.sort();
        v.get((id as usize).checked_sub(1)?).map(|s| s.as_str())
    }

    pub fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// Why a quorum core could not be built.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("`{0}` is not one of the voters")]
    NotAVoter(String),
    #[error("raft refused its configuration: {0}")]
    Raft(#[from] raft::Error),
    #[error("the snapshot's register does not parse: {0}")]
    Snapshot(#[from] serde_json::Error),
}

/// What the caller must do, in order.
#[derive(Debug, Clone)]
pub enum QuorumAction {
    /// Send these messages to a voter (on every path at once).
    Send { to: String, msgs: Vec<QuorumMsg> },
    /// Write this to the durable log, with fsync, in order after the writes before
    /// it; then report it with [`QuorumCore::persisted`]`(write)`.
    Persist { batch: PersistBatch, write: u64 },
    /// A committed decision was applied (or found stale).
    Applied(Applied),
}

/// The consensus role of this voter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Follower,
    Candidate,
    PreCandidate,
    Leader,
}

impl Role {
    /// The snake_case name (as in the JSON).
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::PreCandidate => "pre_candidate",
            Role::Leader => "leader",
        }
    }
}

/// One voter's consensus and leases.
pub struct QuorumCore {
    cfg: QuorumConfig,
    raw: RawNode<Store>,
    register: Register,
    leases: LeaseBook,
    rng: StdRng,
    next_tick_ms: u64,
    last_elapsed: usize,
    /// Last datagram from each voter (this node's clock).
    heard: BTreeMap<String, u64>,
    /// Decisions proposed and not yet seen committed (each proposed once per term).
    in_flight: BTreeSet<(u64, Vec<u8>)>,
    /// Log entries that did not parse (written by a newer version).
    pub skipped_entries: u64,
    /// Log writes handed out and not yet reported durable.
    writes: WriteQueue,
}

/// The durable log's writes in flight (raft-rs's async ready).
#[derive(Debug, Default)]
struct WriteQueue {
    /// The last write handed out ([`QuorumAction::Persist`]'s `write`).
    issued: u64,
    /// The last write reported durable.
    done: u64,
    /// Readies that wait for a write: their messages and what they applied.
    held: VecDeque<HeldReady>,
    /// The applied index raft has been told (only ever up to what is durable).
    raft_applied: u64,
}

/// A ready whose messages may go out, and whose applied index raft may learn, only
/// once write `write` is durable.
#[derive(Debug)]
struct HeldReady {
    write: u64,
    number: u64,
    msgs: Vec<Message>,
    applied: Option<u64>,
}

/// How many readies one call handles at most (each `on_persist_ready` may make another).
const READIES_PER_CALL: usize = 16;

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

impl QuorumCore {
    /// A core holding what the durable log restored; `seed` drives its election
    /// timeouts.
    pub fn new(
        cfg: QuorumConfig,
        restored: &Restored,
        now_ms: u64,
        seed: u64,
    ) -> Result<QuorumCore, QuorumError> {
        let id = cfg
            .id_of(&cfg.local)
            .ok_or_else(|| QuorumError::NotAVoter(cfg.local.clone()))?;
        let ids: Vec<u64> = (1..=cfg.voters.len() as u64).collect();
        let store = Store::new(&ids, restored);
        let register = rebuild_register(&store, restored)?;
        let can_lead = cfg.witness.as_deref() != Some(cfg.local.as_str());
        let raft_cfg = raft::Config {
            id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            check_quorum: true,
            pre_vote: true,
            applied: register.applied,
            max_size_per_msg: 16 * 1024,
            max_inflight_msgs: 64,
            // The witness never campaigns: its timeout is out of reach. It still
            // counts ticks for the leader lease (check_quorum), which uses
            // election_tick.
            min_election_tick: if can_lead { 0 } else { usize::MAX / 4 },
            max_election_tick: if can_lead { 0 } else { usize::MAX / 2 },
            ..Default::default()
        };
        raft_cfg.validate()?;
        let raw = RawNode::new(&raft_cfg, store, &logger())?;
        let leases = LeaseBook::new(cfg.lease, &cfg.local, &cfg.voters, now_ms);
        let mut core = QuorumCore {
            cfg,
            raw,
            register,
            leases,
            rng: StdRng::seed_from_u64(seed),
            next_tick_ms: now_ms,
            last_elapsed: 0,
            heard: BTreeMap::new(),
            in_flight: BTreeSet::new(),
            skipped_entries: 0,
            writes: WriteQueue::default(),
        };
        core.writes.raft_applied = core.register.applied;
        core.redraw_timeout();
        Ok(core)
    }

    /// Replaces raft-rs's election timeout draw with one from the seeded generator.
    fn redraw_timeout(&mut self) {
        let r = &mut self.raw.raft;
        if self.cfg.witness.as_deref() == Some(self.cfg.local.as_str()) {
            self.last_elapsed = r.election_elapsed;
            return;
        }
        let base = r.election_timeout();
        let t = self.rng.gen_range(base..2 * base);
        r.set_randomized_election_timeout(t);
        self.last_elapsed = r.election_elapsed;
    }

    /// After any call into raft: a reset election clock means a fresh draw.
    fn after_raft(&mut self) {
        if self.raw.raft.election_elapsed < self.last_elapsed {
            self.redraw_timeout();
        }
        self.last_elapsed = self.raw.raft.election_elapsed;
    }

    /// Advances raft's ticks to `now_ms`.
    pub fn tick(&mut self, now_ms: u64, out: &mut Vec<QuorumAction>) {
        let mut n = 0;
        while self.next_tick_ms <= now_ms && n < 100 {
            self.raw.tick();
            self.after_raft();
            self.next_tick_ms += self.cfg.tick_ms;
            n += 1;
        }
        if self.next_tick_ms <= now_ms {
            // A long pause: don't replay it tick by tick.
            self.next_tick_ms = now_ms + self.cfg.tick_ms;
        }
        self.process_ready(now_ms, out);
    }

    /// Messages from another voter.
    pub fn step(
        &mut self,
        now_ms: u64,
        from: &str,
        sent_ms: u64,
        msgs: Vec<QuorumMsg>,
        out: &mut Vec<QuorumAction>,
    ) {
        if self.cfg.id_of(from).is_none() || from == self.cfg.local {
            return;
        }
        self.heard.insert(from.to_string(), now_ms);
        for m in msgs {
            match m {
                QuorumMsg::Raft(bytes) => {
                    let Ok(msg) = Message::parse_from_bytes(&bytes) else {
                        tracing::debug!(%from, "undecodable raft message dropped");
                        continue;
                    };
                    if self.cfg.name_of(msg.from) != Some(from) {
                        tracing::debug!(%from, id = msg.from, "raft message with a forged sender dropped");
                        continue;
                    }
                    let _ = self.raw.step(msg);
                    self.after_raft();
                }
                QuorumMsg::Renew(r) => {
                    let acks = self
                        .leases
                        .on_renew(now_ms, from, sent_ms, &r, &self.register);
                    if !acks.is_empty() {
                        out.push(QuorumAction::Send {
                            to: from.to_string(),
                            msgs: vec![QuorumMsg::Ack(acks)],
                        });
                    }
                }
                QuorumMsg::Ack(a) => self.leases.on_ack(from, &a),
                QuorumMsg::Report(r) => self.leases.on_report(now_ms, from, &r),
            }
        }
        self.process_ready(now_ms, out);
    }

    /// Proposes a decision (forwarded to the leader by raft). Returns false if it can't
    /// be proposed now (no leader known); the caller retries on its next evaluation.
    pub fn propose(&mut self, now_ms: u64, d: &Decision, out: &mut Vec<QuorumAction>) -> bool {
        let data = d.encode();
        let term = self.raw.raft.term;
        if self.in_flight.contains(&(term, data.clone())) {
            return true;
        }
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return false;
        }
        if self.raw.propose(Vec::new(), data.clone()).is_err() {
            return false;
        }
        self.in_flight.insert((term, data));
        self.process_ready(now_ms, out);
        true
    }

    /// The lease round, every heartbeat interval: renewals for the groups this node
    /// owns, and this voter's reports, to every other voter.
    pub fn lease_round(&mut self, now_ms: u64, out: &mut Vec<QuorumAction>) {
        let renew = self.leases.renewals(now_ms, &self.register);
        let reports = self.leases.reports(now_ms, &self.register);
        for v in self.cfg.voters.clone() {
            if v == self.cfg.local {
                continue;
            }
            let mut msgs = Vec::new();
            if !renew.is_empty() {
                msgs.push(QuorumMsg::Renew(renew.clone()));
            }
            if !reports.is_empty() {
                msgs.push(QuorumMsg::Report(reports.clone()));
            }
            if !msgs.is_empty() {
                out.push(QuorumAction::Send { to: v, msgs });
            }
        }
    }

    fn send_all(&self, msgs: Vec<Message>, out: &mut Vec<QuorumAction>) {
        for m in msgs {
            let Some(to) = self.cfg.name_of(m.to) else {
                continue;
            };
            let Ok(bytes) = m.write_to_bytes() else {
                continue;
            };
            out.push(QuorumAction::Send {
                to: to.to_string(),
                msgs: vec![QuorumMsg::Raft(bytes)],
            });
        }
    }

    /// Write `write` (and every write before it) is durable: release the messages
    /// that waited for it, let raft count its entries, and go on.
    pub fn persisted(&mut self, now_ms: u64, write: u64, out: &mut Vec<QuorumAction>) {
        if write <= self.writes.done || write > self.writes.issued {
            return;
        }
        self.writes.done = write;
        let (mut ready, mut applied) = (None, None);
        while self.writes.held.front().is_some_and(|h| h.write <= write) {
            if let Some(h) = self.writes.held.pop_front() {
                self.send_all(h.msgs, out);
                ready = Some(h.number);
                applied = applied.max(h.applied);
            }
        }
        if let Some(number) = ready {
            self.raw.on_persist_ready(number);
            self.advance_applied(applied);
        }
        self.process_ready(now_ms, out);
    }

    /// Writes handed out and not yet reported durable.
    pub fn writes_in_flight(&self) -> u64 {
        self.writes.issued - self.writes.done
    }

    /// raft-rs's Ready, until there is none (at most [`READIES_PER_CALL`]).
    fn process_ready(&mut self, _now_ms: u64, out: &mut Vec<QuorumAction>) {
        for _ in 0..READIES_PER_CALL {
            if !self.raw.has_ready() {
                break;
            }
            self.one_ready(out);
        }
        self.after_raft();
        self.maybe_compact(out);
    }

    /// One Ready, in its order: messages that may go at once; the snapshot and the
    /// committed entries applied; snapshot, entries and hard state to the durable log
    /// as one write; the messages that wait for it held until it is durable (or sent
    /// now if no write is in flight).
    fn one_ready(&mut self, out: &mut Vec<QuorumAction>) {
        let mut rd = self.raw.ready();
        let number = rd.number();
        self.send_all(rd.take_messages(), out);
        let mut batch = PersistBatch::default();
        let mut applied = None;
        if !rd.snapshot().is_empty() {
            applied = Some(rd.snapshot().get_metadata().index);
            let snap = rd.snapshot().clone();
            self.raw.mut_store().apply_snapshot(&snap);
            match Register::decode(&snap.data) {
                Ok(r) => {
                    self.register = Register {
                        applied: snap.get_metadata().index,
                        ..r
                    }
                }
                Err(e) => tracing::error!(error = %e, "a snapshot from the leader does not parse"),
            }
            batch.snapshot = Some(rec_of_snapshot(&snap));
        }
        let committed = rd.take_committed_entries();
        applied = committed.last().map(|e| e.index).or(applied);
        self.apply(committed, out);
        if !rd.entries().is_empty() {
            self.raw.mut_store().append(rd.entries());
            batch.entries = rd.entries().iter().map(rec_of_entry).collect();
        }
        if let Some(hs) = rd.hs() {
            self.raw.mut_store().set_hard_state(hs.clone());
            batch.hard_state = Some(rec_of_hard(hs));
        }
        let waiting = rd.take_persisted_messages();
        self.raw.advance_append_async(rd);
        if !batch.is_empty() {
            self.writes.issued += 1;
            out.push(QuorumAction::Persist {
                batch,
                write: self.writes.issued,
            });
        }
        if self.writes.done == self.writes.issued {
            self.send_all(waiting, out);
            self.raw.on_persist_ready(number);
            self.advance_applied(applied);
        } else {
            self.writes.held.push_back(HeldReady {
                write: self.writes.issued,
                number,
                msgs: waiting,
                applied,
            });
        }
    }

    /// Tells raft what is applied, once it is durable (raft refuses more).
    fn advance_applied(&mut self, applied: Option<u64>) {
        if let Some(i) = applied.filter(|&i| i > self.writes.raft_applied) {
            self.raw.advance_apply_to(i);
            self.writes.raft_applied = i;
        }
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Vec<QuorumAction>) {
        for e in entries {
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                self.register.applied = self.register.applied.max(e.index);
                continue;
            }
            self.in_flight.retain(|(_, d)| d.as_slice() != &e.data[..]);
            match Decision::decode(&e.data) {
                Ok(d) => {
                    let applied = self.register.apply(e.index, d);
                    out.push(QuorumAction::Applied(applied));
                }
                Err(err) => {
                    self.skipped_entries += 1;
                    self.register.applied = self.register.applied.max(e.index);
                    tracing::warn!(index = e.index, error = %err, "a log entry does not parse; skipped");
                }
            }
        }
    }

    fn maybe_compact(&mut self, out: &mut Vec<QuorumAction>) {
        let applied = self.register.applied;
        let store = self.raw.store();
        if store.len() < COMPACT_EVERY || applied <= store.snapshot_ref().get_metadata().index {
            return;
        }
        let data = self.register.encode();
        if let Some(snap) = self.raw.mut_store().compact(applied, data) {
            self.writes.issued += 1;
            out.push(QuorumAction::Persist {
                batch: PersistBatch {
                    compact: Some(snap),
                    ..Default::default()
                },
                write: self.writes.issued,
            });
        }
    }

    // -- read access -----------------------------------------------------------------

    pub fn config(&self) -> &QuorumConfig {
        &self.cfg
    }

    pub fn register(&self) -> &Register {
        &self.register
    }

    pub fn leases(&self) -> &LeaseBook {
        &self.leases
    }

    pub fn role(&self) -> Role {
        match self.raw.raft.state {
            StateRole::Follower => Role::Follower,
            StateRole::Candidate => Role::Candidate,
            StateRole::PreCandidate => Role::PreCandidate,
            StateRole::Leader => Role::Leader,
        }
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The leader this voter follows, if it knows one.
    pub fn leader(&self) -> Option<&str> {
        match self.raw.raft.leader_id {
            raft::INVALID_ID => None,
            id => self.cfg.name_of(id),
        }
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The voters heard from (any quorum datagram) within `within_ms`, this one
    /// included.
    pub fn reachable(&self, now_ms: u64, within_ms: u64) -> Vec<String> {
        let mut v: Vec<String> = self
            .cfg
            .voters
            .iter()
            .filter(|n| {
                **n == self.cfg.local
                    || self
                        .heard
                        .get(*n)
                        .is_some_and(|t| now_ms.saturating_sub(*t) <= within_ms)
            })
            .cloned()
            .collect();
        v.sort();
        v
    }

    /// This voter is in a quorate partition: it follows or is a leader, and a majority
    /// of the voters was heard recently.
    pub fn quorate(&self, now_ms: u64, within_ms: u64) -> bool {
        self.leader().is_some() && self.reachable(now_ms, within_ms).len() >= self.cfg.majority()
    }

    /// Whether any decision was ever committed (the first commit needs every node).
    pub fn log_is_empty(&self) -> bool {
        self.register.owners.is_empty()
    }
}

/// The register as of the restored commit: the snapshot's, then the committed entries
/// after it.
fn rebuild_register(store: &Store, restored: &Restored) -> Result<Register, QuorumError> {
    let mut reg = match &restored.snapshot {
        Some(s) => Register {
            applied: s.index,
            ..Register::decode(&s.data)?
        },
        None => Register::default(),
    };
    let commit = store.hard_state().commit;
    for e in store.slice(reg.applied + 1, commit + 1) {
        if let Ok(d) = Decision::decode(&e.data) {
            reg.apply(e.index, d);
        }
        reg.applied = reg.applied.max(e.index);
    }
    Ok(reg)
}

#[cfg(test)]
mod tests;
