//! The delta-lease core, pure: time and I/O results in, I/O requests and verdicts out.
//!
//! `handle(now, Input) -> Vec<Action>`; `now` is this process's monotonic clock (any
//! origin). Clocks are never compared across nodes: every rule below measures an
//! interval on one node's own clock.
//!
//! - **Watch.** An acquirer reads the sector. Zeros: free. Anything else is somebody's
//!   (even our own node name with another incarnation: a restarted node is another
//!   owner). It is dead only when a read *issued* at least `lease_timeout` after the
//!   *completion* of the first read that returned it still returns the same bytes.
//!   Any change restarts the watch.
//! - **Claim.** When free or dead, and the read took at most `io_timeout`, write our
//!   record at once (after a slower read, read again). If the time from issuing
//!   that read to the write's completion exceeded `io_timeout`, abort and start over
//!   (another acquirer's read may have come between). Each claim writes a higher counter
//!   than our last, so that watchers see a retried claim as a change. Otherwise wait
//!   `2 × io_timeout`, which outlasts any rival's claim write, and read again: still
//!   ours means acquired, and that read serves as the first renewal's.
//! - **Hold.** Every `renew_interval`: read; ours -> write it back with the counter + 1;
//!   anybody else's -> lost. A renewal counts from the issue of its write (the write
//!   lands after that, and a watcher's clock starts after it lands).
//! - **Stop.** When the last counted renewal is `stop_after` old, the holder stops
//!   using the disk and the lease is lost for good (a new acquire starts from the
//!   watch). [`Timing::validate`] keeps `stop_after + 2 × io_timeout` plus a margin
//!   for clock rates under `lease_timeout`, so the holder has stopped, and its last
//!   renewal write has landed, before any watcher's timeout runs out.
//! - **Release.** Write zeros (after a renewal in flight, if any).
//!
//! Every I/O request carries an id; a result with another id (one that finished after
//! the core moved on) is ignored.

use std::time::Duration;

use thiserror::Error;

use super::record::{decode, Record, Sector};

/// The lease timing, validated by [`Timing::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// The longest a sector read and the write after it may take together.
    pub io_timeout: Duration,
    /// How often the holder renews.
    pub renew_interval: Duration,
    /// How long a record must stay unchanged before an acquirer takes it.
    pub lease_timeout: Duration,
    /// How old the holder's last renewal may get before it stops using the disk.
    pub stop_after: Duration,
}

impl Default for Timing {
    /// io 2 s, renew every 2 s, lease timeout 16 s, stop after 10 s.
    fn default() -> Self {
        let s = Duration::from_secs;
        Self {
            io_timeout: s(2),
            renew_interval: s(2),
            lease_timeout: s(16),
            stop_after: s(10),
        }
    }
}

/// Timing that cannot keep two nodes off the disk at once.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimingError {
    #[error("{0} must be more than zero")]
    Zero(&'static str),
    #[error(
        "stop_after ({stop_after:?}) must be at most lease_timeout - 2 x io_timeout - \
         lease_timeout/25 ({limit:?}), so that the holder stops and its last write lands \
         before another node's lease_timeout runs out"
    )]
    StopTooLate {
        stop_after: Duration,
        limit: Duration,
    },
    #[error(
        "stop_after ({stop_after:?}) must be at least 2 x (renew_interval + io_timeout) \
         ({floor:?}), so that one failed renewal does not stop the holder"
    )]
    StopTooSoon {
        stop_after: Duration,
        floor: Duration,
    },
}

impl Timing {
    /// Checks the relations the safety argument needs (see the module docs).
    pub fn validate(&self) -> Result<(), TimingError> {
        for (name, value) in [
            ("io_timeout", self.io_timeout),
            ("renew_interval", self.renew_interval),
            ("lease_timeout", self.lease_timeout),
            ("stop_after", self.stop_after),
        ] {
            if value.is_zero() {
                return Err(TimingError::Zero(name));
            }
        }
        let limit = self
            .lease_timeout
            .saturating_sub(self.io_timeout * 2 + self.lease_timeout / 25);
        if self.stop_after > limit {
            return Err(TimingError::StopTooLate {
                stop_after: self.stop_after,
                limit,
            });
        }
        let floor = (self.renew_interval + self.io_timeout) * 2;
        if self.stop_after < floor {
            return Err(TimingError::StopTooSoon {
                stop_after: self.stop_after,
                floor,
            });
        }
        Ok(())
    }
}

/// Something that happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Start acquiring, as a new owner with this (random) incarnation.
    Acquire { incarnation: u64 },
    /// Give the lease up (or stop trying to take it).
    Release,
    /// A read finished: the sector's bytes, or `None` when it failed.
    ReadDone { id: u64, bytes: Option<Vec<u8>> },
    /// A write finished: whether it succeeded.
    WriteDone { id: u64, ok: bool },
    /// Time passed.
    Tick,
}

/// Something to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Read the lease sector; answer with [`Input::ReadDone`] with this id.
    Read { id: u64 },
    /// Write these bytes to the lease sector; answer with [`Input::WriteDone`].
    Write { id: u64, bytes: Vec<u8> },
    /// The lease is ours: the disk may be used. `waited` counts from the acquire.
    Acquired { waited: Duration },
    /// Stop all use of the disk now; the lease is gone.
    StopUsing(LossReason),
    /// The release finished (or the acquire was abandoned).
    Released,
}

/// Why a holder stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossReason {
    /// A renewal read found another owner's record (or none).
    Displaced,
    /// No renewal counted for `stop_after`.
    RenewalsFailed,
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Displaced => "another node's record is on the disk",
            Self::RenewalsFailed => "no renewal succeeded within stop_after",
        })
    }
}

/// Where the core is; [`Phase::Held`] is the only one in which the disk may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    /// Acquiring: a read is in flight; `watch` is what we saw before, if anything.
    Probe {
        issued: Duration,
        watch: Option<Watch>,
    },
    /// Acquiring: somebody holds it; read again at `next`.
    Watching {
        watch: Watch,
        next: Duration,
    },
    /// Acquiring: our record is being written; `read_issued` is the read that allowed it.
    Claim {
        read_issued: Duration,
        write_issued: Duration,
    },
    /// Acquiring: our record is written; read it back at `until`.
    Settle {
        until: Duration,
        write_issued: Duration,
    },
    /// Acquiring: the read-back is in flight.
    Confirm {
        write_issued: Duration,
    },
    Held(Hold),
    /// The zeros are being written.
    Releasing,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Watch {
    bytes: Vec<u8>,
    since: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Hold {
    last_renewal: Duration,
    next_renew: Duration,
    /// A renewal's write in flight and when it was issued.
    writing: Option<Duration>,
    release: bool,
}

/// The lease as a status line sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    Idle,
    Acquiring,
    Held,
    Releasing,
}

/// One node's delta lease on one sector.
#[derive(Debug)]
pub struct LeaseCore {
    timing: Timing,
    node: String,
    me: Option<Record>,
    phase: Phase,
    pending: Option<u64>,
    next_id: u64,
    started: Duration,
    last_seen: Option<Sector>,
}

impl LeaseCore {
    /// A core for `node` (its name goes into the record); `timing` must be valid.
    pub fn new(node: &str, timing: Timing) -> Self {
        Self {
            timing,
            node: node.to_string(),
            me: None,
            phase: Phase::Idle,
            pending: None,
            next_id: 0,
            started: Duration::ZERO,
            last_seen: None,
        }
    }

    /// Whether the disk may be used at `now`: held, and the last renewal younger than
    /// `stop_after` (so a paused process that wakes up knows before it touches the disk).
    pub fn may_use(&self, now: Duration) -> bool {
        matches!(&self.phase, Phase::Held(h) if now.saturating_sub(h.last_renewal) < self.timing.stop_after)
    }

    /// The phase, for status.
    pub fn state(&self) -> LeaseState {
        match self.phase {
            Phase::Idle => LeaseState::Idle,
            Phase::Held(_) => LeaseState::Held,
            Phase::Releasing => LeaseState::Releasing,
            _ => LeaseState::Acquiring,
        }
    }

    /// The age of the last counted renewal while held.
    pub fn renewal_age(&self, now: Duration) -> Option<Duration> {
        match &self.phase {
            Phase::Held(h) => Some(now.saturating_sub(h.last_renewal)),
            _ => None,
        }
    }

    /// The last record read from the disk (who holds it, as far as this node knows).
    pub fn last_seen(&self) -> Option<&Sector> {
        self.last_seen.as_ref()
    }

    /// Feeds one input at `now`.
    pub fn handle(&mut self, now: Duration, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        // First: a process that wakes from a pause must not act on a stale lease.
        self.check_stop(now, &mut out);
        match input {
            Input::Acquire { incarnation } => self.acquire(now, incarnation, &mut out),
            Input::Release => self.release(&mut out),
            Input::ReadDone { id, bytes } if self.take(id) => self.read_done(now, bytes, &mut out),
            Input::WriteDone { id, ok } if self.take(id) => self.write_done(now, ok, &mut out),
            Input::ReadDone { .. } | Input::WriteDone { .. } => {}
            Input::Tick => self.tick(now, &mut out),
        }
        self.check_stop(now, &mut out);
        out
    }

    fn take(&mut self, id: u64) -> bool {
        let ours = self.pending == Some(id);
        if ours {
            self.pending = None;
        }
        ours
    }

    fn issue_read(&mut self, out: &mut Vec<Action>) {
        self.next_id += 1;
        self.pending = Some(self.next_id);
        out.push(Action::Read { id: self.next_id });
    }

    fn issue_write(&mut self, bytes: Vec<u8>, out: &mut Vec<Action>) {
        self.next_id += 1;
        self.pending = Some(self.next_id);
        out.push(Action::Write {
            id: self.next_id,
            bytes,
        });
    }

    fn acquire(&mut self, now: Duration, incarnation: u64, out: &mut Vec<Action>) {
        if !matches!(self.phase, Phase::Idle) {
            return;
        }
        self.me = Some(Record {
            node: self.node.clone(),
            incarnation,
            counter: 0,
        });
        self.started = now;
        self.probe(now, None, out);
    }

    fn probe(&mut self, now: Duration, watch: Option<Watch>, out: &mut Vec<Action>) {
        self.phase = Phase::Probe { issued: now, watch };
        self.issue_read(out);
    }

    fn release(&mut self, out: &mut Vec<Action>) {
        match &mut self.phase {
            Phase::Held(hold) if self.pending.is_some() => hold.release = true,
            Phase::Held(_) => self.write_zeros(out),
            Phase::Idle | Phase::Releasing => {}
            _ => {
                self.phase = Phase::Idle;
                self.pending = None;
                out.push(Action::Released);
            }
        }
    }

    fn write_zeros(&mut self, out: &mut Vec<Action>) {
        self.phase = Phase::Releasing;
        self.issue_write(vec![0u8; super::record::SECTOR], out);
    }

    fn tick(&mut self, now: Duration, out: &mut Vec<Action>) {
        match &self.phase {
            Phase::Watching { watch, next } if now >= *next => {
                let watch = Some(watch.clone());
                self.probe(now, watch, out);
            }
            Phase::Settle {
                until,
                write_issued,
            } if now >= *until => {
                self.phase = Phase::Confirm {
                    write_issued: *write_issued,
                };
                self.issue_read(out);
            }
            Phase::Held(hold) if now >= hold.next_renew && self.pending.is_none() => {
                self.issue_read(out);
            }
            _ => {}
        }
    }

    fn read_done(&mut self, now: Duration, bytes: Option<Vec<u8>>, out: &mut Vec<Action>) {
        let Some(bytes) = bytes else {
            return self.read_failed(now, out);
        };
        let sector = decode(&bytes);
        self.last_seen = Some(sector.clone());
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Probe { issued, watch } => self.probed(now, issued, watch, bytes, out),
            Phase::Confirm { write_issued } => self.confirmed(now, write_issued, bytes, out),
            Phase::Held(hold) if hold.release => self.write_zeros(out),
            Phase::Held(hold) => self.renew_read(now, hold, &sector, out),
            other => self.phase = other,
        }
    }

    fn read_failed(&mut self, now: Duration, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Probe { watch, .. } => self.watch_again(now, watch, out),
            Phase::Confirm { .. } => self.probe(now, None, out),
            Phase::Held(hold) if hold.release => self.write_zeros(out),
            Phase::Held(hold) => self.renew_later(now, hold),
            other => self.phase = other,
        }
    }

    fn watch_again(&mut self, now: Duration, watch: Option<Watch>, out: &mut Vec<Action>) {
        match watch {
            Some(watch) => {
                let next = now + self.timing.renew_interval;
                self.phase = Phase::Watching { watch, next };
            }
            None => self.probe(now, None, out),
        }
    }

    fn probed(
        &mut self,
        now: Duration,
        issued: Duration,
        watch: Option<Watch>,
        bytes: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let dead = match &watch {
            Some(w) => w.bytes == bytes && issued >= w.since + self.timing.lease_timeout,
            None => false,
        };
        if dead || decode(&bytes) == Sector::Free {
            if now.saturating_sub(issued) > self.timing.io_timeout {
                // Too slow to claim on: the sector may have changed since. Read again.
                return self.probe(now, watch, out);
            }
            return self.claim(now, issued, out);
        }
        let watch = match watch {
            Some(w) if w.bytes == bytes => w,
            _ => Watch { bytes, since: now },
        };
        let next = (now + self.timing.renew_interval).min(watch.since + self.timing.lease_timeout);
        self.phase = Phase::Watching {
            watch,
            next: next.max(now),
        };
    }

    fn claim(&mut self, now: Duration, read_issued: Duration, out: &mut Vec<Action>) {
        // Each claim writes a higher counter: an abandoned claim of ours may have landed,
        // and a watcher must see the next one as a change.
        if let Some(me) = &mut self.me {
            me.counter += 1;
        }
        let bytes = self.me.as_ref().map(Record::encode).unwrap_or_default();
        self.phase = Phase::Claim {
            read_issued,
            write_issued: now,
        };
        self.issue_write(bytes, out);
    }

    fn confirmed(
        &mut self,
        now: Duration,
        write_issued: Duration,
        bytes: Vec<u8>,
        out: &mut Vec<Action>,
    ) {
        let mine = self.me.as_ref().map(Record::encode);
        if mine.as_deref() != Some(&bytes[..])
            || now.saturating_sub(write_issued) >= self.timing.stop_after
        {
            let watch = Watch { bytes, since: now };
            return self.watch_again(now, Some(watch), out);
        }
        let hold = Hold {
            last_renewal: write_issued,
            next_renew: write_issued + self.timing.renew_interval,
            writing: None,
            release: false,
        };
        out.push(Action::Acquired {
            waited: now.saturating_sub(self.started),
        });
        // The read-back showed ours: renew at once, as after a renewal's read (the claim
        // is already 3 × io_timeout old or so).
        self.renew_read(now, hold, &decode(&bytes), out);
    }

    fn renew_read(&mut self, now: Duration, hold: Hold, sector: &Sector, out: &mut Vec<Action>) {
        let me = self.me.clone();
        match (sector, me) {
            (Sector::Held(found), Some(me)) if found.same_owner(&me) => {
                let next = Record {
                    counter: found.counter.wrapping_add(1),
                    ..me
                };
                self.phase = Phase::Held(Hold {
                    writing: Some(now),
                    ..hold
                });
                self.issue_write(next.encode(), out);
            }
            _ => self.lose(LossReason::Displaced, out),
        }
    }

    fn renew_later(&mut self, now: Duration, hold: Hold) {
        self.phase = Phase::Held(Hold {
            writing: None,
            next_renew: now + self.timing.renew_interval,
            ..hold
        });
    }

    fn write_done(&mut self, now: Duration, ok: bool, out: &mut Vec<Action>) {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Claim {
                read_issued,
                write_issued,
            } => {
                if ok && now.saturating_sub(read_issued) <= self.timing.io_timeout {
                    self.phase = Phase::Settle {
                        until: now + self.timing.io_timeout * 2,
                        write_issued,
                    };
                } else {
                    self.probe(now, None, out);
                }
            }
            Phase::Held(hold) => self.renewed(now, ok, hold, out),
            Phase::Releasing => out.push(Action::Released),
            other => self.phase = other,
        }
    }

    fn renewed(&mut self, now: Duration, ok: bool, hold: Hold, out: &mut Vec<Action>) {
        let last_renewal = match (ok, hold.writing) {
            (true, Some(issued)) => issued,
            _ => hold.last_renewal,
        };
        self.phase = Phase::Held(Hold {
            last_renewal,
            next_renew: now + self.timing.renew_interval,
            writing: None,
            release: hold.release,
        });
        if hold.release {
            self.write_zeros(out);
        }
    }

    fn check_stop(&mut self, now: Duration, out: &mut Vec<Action>) {
        if matches!(self.phase, Phase::Held(_)) && !self.may_use(now) {
            self.lose(LossReason::RenewalsFailed, out);
        }
    }

    fn lose(&mut self, reason: LossReason, out: &mut Vec<Action>) {
        self.phase = Phase::Idle;
        self.pending = None;
        out.push(Action::StopUsing(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::record::SECTOR;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// io 100 ms, renew 100 ms, lease 1 s, stop 600 ms.
    fn timing() -> Timing {
        Timing {
            io_timeout: ms(100),
            renew_interval: ms(100),
            lease_timeout: ms(1000),
            stop_after: ms(600),
        }
    }

    fn other() -> Vec<u8> {
        Record {
            node: "n2".into(),
            incarnation: 9,
            counter: 3,
        }
        .encode()
    }

    fn mine(counter: u64) -> Vec<u8> {
        Record {
            node: "n1".into(),
            incarnation: 1,
            counter,
        }
        .encode()
    }

    fn read_id(actions: &[Action]) -> u64 {
        match actions {
            [Action::Read { id }] => *id,
            other => panic!("expected one read, got {other:?}"),
        }
    }

    fn write_of(actions: &[Action]) -> (u64, Vec<u8>) {
        match actions {
            [Action::Write { id, bytes }] => (*id, bytes.clone()),
            other => panic!("expected one write, got {other:?}"),
        }
    }

    fn read(core: &mut LeaseCore, at: u64, id: u64, bytes: Vec<u8>) -> Vec<Action> {
        core.handle(
            ms(at),
            Input::ReadDone {
                id,
                bytes: Some(bytes),
            },
        )
    }

    fn write(core: &mut LeaseCore, at: u64, id: u64) -> Vec<Action> {
        core.handle(ms(at), Input::WriteDone { id, ok: true })
    }

    /// Acquires a free disk at t = 0; the lease is held from t = 230 (write issued at 10).
    fn held() -> LeaseCore {
        let mut core = LeaseCore::new("n1", timing());
        let id = read_id(&core.handle(ms(0), Input::Acquire { incarnation: 1 }));
        let (id, bytes) = write_of(&read(&mut core, 10, id, vec![0; SECTOR]));
        assert_eq!(bytes, mine(1));
        assert!(write(&mut core, 30, id).is_empty());
        assert!(
            core.handle(ms(229), Input::Tick).is_empty(),
            "settles 2 x io_timeout"
        );
        let id = read_id(&core.handle(ms(230), Input::Tick));
        let done = read(&mut core, 240, id, mine(1));
        assert_eq!(done[0], Action::Acquired { waited: ms(240) });
        let (id, bytes) = write_of(&done[1..]);
        assert_eq!(bytes, mine(2), "the first renewal follows the read-back");
        assert!(write(&mut core, 245, id).is_empty());
        assert!(core.may_use(ms(245)));
        core
    }

    #[test]
    fn the_default_timing_is_valid_and_bad_ones_are_named() {
        let s = Duration::from_secs;
        let default = Timing::default();
        assert_eq!(default.validate(), Ok(()));
        assert_eq!(timing().validate(), Ok(()));
        let zero = Timing {
            io_timeout: Duration::ZERO,
            ..default
        };
        assert_eq!(zero.validate(), Err(TimingError::Zero("io_timeout")));
        let late = Timing {
            stop_after: s(12),
            ..default
        };
        assert!(matches!(
            late.validate(),
            Err(TimingError::StopTooLate { .. })
        ));
        let soon = Timing {
            renew_interval: s(4),
            ..default
        };
        assert!(matches!(
            soon.validate(),
            Err(TimingError::StopTooSoon { .. })
        ));
    }

    #[test]
    fn a_free_disk_is_taken_after_the_read_back() {
        let core = held();
        assert_eq!(core.state(), LeaseState::Held);
    }

    #[test]
    fn a_held_record_is_taken_only_when_unchanged_for_the_lease_timeout() {
        let mut core = LeaseCore::new("n1", timing());
        let id = read_id(&core.handle(ms(0), Input::Acquire { incarnation: 1 }));
        assert!(read(&mut core, 10, id, other()).is_empty());
        let mut t = 10;
        let mut taken = None;
        while t < 3000 && taken.is_none() {
            t += 10;
            for action in core.handle(ms(t), Input::Tick) {
                let Action::Read { id } = action else {
                    panic!("{action:?}")
                };
                if let [Action::Write { bytes, .. }] = read(&mut core, t, id, other()).as_slice() {
                    assert_eq!(bytes, &mine(1));
                    taken = Some(t);
                }
            }
        }
        // The first read completed at 10: the taking read is issued at 1010 at the earliest.
        assert_eq!(taken, Some(1010));
    }

    #[test]
    fn a_changing_record_restarts_the_watch() {
        let mut core = LeaseCore::new("n1", timing());
        let id = read_id(&core.handle(ms(0), Input::Acquire { incarnation: 1 }));
        assert!(read(&mut core, 0, id, other()).is_empty());
        let id = read_id(&core.handle(ms(900), Input::Tick));
        let renewed = Record {
            node: "n2".into(),
            incarnation: 9,
            counter: 4,
        }
        .encode();
        assert!(read(&mut core, 900, id, renewed.clone()).is_empty());
        let id = read_id(&core.handle(ms(1000), Input::Tick));
        assert!(
            read(&mut core, 1000, id, renewed.clone()).is_empty(),
            "only 100 ms since the change"
        );
        let id = read_id(&core.handle(ms(1900), Input::Tick));
        assert!(matches!(
            read(&mut core, 1900, id, renewed).as_slice(),
            [Action::Write { .. }]
        ));
    }

    #[test]
    fn our_own_node_with_another_incarnation_is_another_owner() {
        let mut core = LeaseCore::new("n1", timing());
        let id = read_id(&core.handle(ms(0), Input::Acquire { incarnation: 2 }));
        assert!(read(&mut core, 0, id, mine(5)).is_empty());
        assert_eq!(core.state(), LeaseState::Acquiring);
    }

    #[test]
    fn a_slow_claim_is_abandoned_and_the_next_claim_writes_another_record() {
        let mut core = LeaseCore::new("n1", timing());
        let id = read_id(&core.handle(ms(0), Input::Acquire { incarnation: 1 }));
        let (id, _) = write_of(&read(&mut core, 50, id, vec![0; SECTOR]));
        // Read issued at 0, write done at 101: more than io_timeout.
        let id = read_id(&write(&mut core, 101, id));
        // Our own record may have landed; it is watched like anybody's.
        assert!(read(&mut core, 110, id, mine(1)).is_empty());
        assert_eq!(core.state(), LeaseState::Acquiring);
        let id = read_id(&core.handle(ms(1110), Input::Tick));
        let (_, bytes) = write_of(&read(&mut core, 1110, id, mine(1)));
        assert_eq!(bytes, mine(2), "a watcher of the first claim sees a change");
    }

    #[test]
    fn a_slow_read_is_no_ground_for_a_claim() {
        let mut core = LeaseCore::new("n1", timing());
        let id = read_id(&core.handle(ms(0), Input::Acquire { incarnation: 1 }));
        let id = read_id(&read(&mut core, 101, id, vec![0; SECTOR]));
        assert!(matches!(
            read(&mut core, 150, id, vec![0; SECTOR]).as_slice(),
            [Action::Write { .. }]
        ));
    }

    #[test]
    fn a_rival_record_on_the_read_back_means_not_acquired() {
        let mut core = LeaseCore::new("n1", timing());
        let id = read_id(&core.handle(ms(0), Input::Acquire { incarnation: 1 }));
        let (id, _) = write_of(&read(&mut core, 10, id, vec![0; SECTOR]));
        write(&mut core, 30, id);
        let id = read_id(&core.handle(ms(230), Input::Tick));
        assert!(read(&mut core, 240, id, other()).is_empty());
        assert!(!core.may_use(ms(240)));
        assert_eq!(core.state(), LeaseState::Acquiring);
    }

    #[test]
    fn renewals_read_then_write_the_next_counter() {
        let mut core = held();
        assert!(
            core.handle(ms(344), Input::Tick).is_empty(),
            "next at 245 + 100"
        );
        let id = read_id(&core.handle(ms(345), Input::Tick));
        let (id, bytes) = write_of(&read(&mut core, 355, id, mine(2)));
        assert_eq!(bytes, mine(3));
        assert!(write(&mut core, 365, id).is_empty());
        // Counted from the write's issue at 355: usable until 955.
        assert!(core.may_use(ms(954)));
        assert_eq!(core.renewal_age(ms(400)), Some(ms(45)));
    }

    #[test]
    fn another_owner_on_a_renewal_read_means_lost() {
        let mut core = held();
        let id = read_id(&core.handle(ms(345), Input::Tick));
        let out = read(&mut core, 355, id, other());
        assert_eq!(out, vec![Action::StopUsing(LossReason::Displaced)]);
        assert!(!core.may_use(ms(355)));
        assert_eq!(core.state(), LeaseState::Idle);
    }

    #[test]
    fn failing_renewals_stop_the_holder_at_stop_after() {
        let mut core = held();
        let mut t = 245;
        let mut stopped = None;
        while stopped.is_none() {
            t += 10;
            for action in core.handle(ms(t), Input::Tick) {
                match action {
                    Action::Read { id } => {
                        let out = core.handle(ms(t), Input::ReadDone { id, bytes: None });
                        assert!(out.is_empty(), "{out:?}");
                    }
                    Action::StopUsing(reason) => stopped = Some((t, reason)),
                    other => panic!("{other:?}"),
                }
            }
        }
        // The last renewal's write was issued at 240.
        assert_eq!(stopped, Some((845, LossReason::RenewalsFailed)));
    }

    #[test]
    fn a_paused_holder_stops_before_any_io_when_it_wakes() {
        let mut core = held();
        let id = read_id(&core.handle(ms(345), Input::Tick));
        // Paused for 5 s with its renewal read done: no write, just stop.
        let out = read(&mut core, 5345, id, mine(2));
        assert_eq!(out, vec![Action::StopUsing(LossReason::RenewalsFailed)]);
    }

    #[test]
    fn release_writes_zeros_after_the_renewal_in_flight() {
        let mut core = held();
        let id = read_id(&core.handle(ms(345), Input::Tick));
        assert!(core.handle(ms(350), Input::Release).is_empty());
        let (id, bytes) = write_of(&read(&mut core, 355, id, mine(2)));
        assert_eq!(bytes, vec![0; SECTOR]);
        assert_eq!(write(&mut core, 365, id), vec![Action::Released]);
        assert_eq!(core.state(), LeaseState::Idle);
    }

    #[test]
    fn a_result_for_an_abandoned_request_is_ignored() {
        let mut core = LeaseCore::new("n1", timing());
        let old = read_id(&core.handle(ms(0), Input::Acquire { incarnation: 1 }));
        assert_eq!(core.handle(ms(5), Input::Release), vec![Action::Released]);
        let id = read_id(&core.handle(ms(10), Input::Acquire { incarnation: 2 }));
        assert_ne!(id, old);
        assert!(read(&mut core, 20, old, vec![0; SECTOR]).is_empty());
        assert_eq!(core.state(), LeaseState::Acquiring);
    }
}
