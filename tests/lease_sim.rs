//! Seeded, deterministic simulation of the disk lease.
//!
//! Two or three contenders run the product's own [`LeaseCore`] against one simulated
//! 4 KiB sector. Each contender's clock runs at its own rate (within 1 %) from its own
//! origin. Every read samples the sector, and every write lands, at a random moment
//! between its issue and its completion; a read and the write after it take up to
//! `io_timeout` together, and a few I/Os take longer (up to 3 × `io_timeout`). Contenders pause (up to twice the lease
//! timeout: no ticks, no results until they wake), crash (in-flight writes still land;
//! the restarted process is a new core with a new incarnation), and release and take
//! the lease again. A heal phase without faults follows.
//!
//! Invariants:
//! 1. (every step of real time) at most one contender may use the disk: held, and its
//!    last renewal younger than `stop_after` on its own clock (a paused one included:
//!    that is what it would act on when it wakes).
//! 2. A live holder is never displaced: a holder that loses the lease was paused, or saw
//!    one of its own I/Os exceed `io_timeout` since it began to acquire, or somebody's
//!    slow write landed after `io_timeout` while it held.
//! 3. (end of the heal phase) exactly one contender holds the lease.
//!
//! - `TANDEM_LSIM_SEED=<n>`: rerun one seed with a verbose trace;
//! - `TANDEM_LSIM_SCENARIOS=<n>`: how many seeds the default run covers.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem::lease::core::{Action, Input, LeaseCore, Timing};
use tandem::lease::record::SECTOR;

#[path = "common/seeds.rs"]
mod seeds;

const DEFAULT_SCENARIOS: u64 = 1_000;
const STEP: u64 = 10;
const IO: u64 = 200;
const FAULT_PHASE: u64 = 15_000;
const HEAL_PHASE: u64 = 10_000;

fn timing() -> Timing {
    let ms = Duration::from_millis;
    Timing {
        io_timeout: ms(IO),
        renew_interval: ms(200),
        lease_timeout: ms(1600),
        stop_after: ms(1000),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Up,
    Paused { until: u64 },
    Crashed { until: u64 },
}

struct Contender {
    core: LeaseCore,
    /// Bumped at each crash: results for an older process are dropped.
    generation: u64,
    rate: f64,
    origin: f64,
    life: Life,
    /// Results waiting for a paused process.
    queued: Vec<Input>,
    /// When to send the next `Acquire` (real ms), if not trying.
    acquire_at: Option<u64>,
    /// Since when it holds, and whether it was excused (pause, own slow I/O).
    held_since: Option<u64>,
    excused: bool,
}

struct Op {
    who: usize,
    generation: u64,
    id: u64,
    /// `Some` for a write.
    bytes: Option<Vec<u8>>,
    issued: u64,
    effect_at: u64,
    done_at: u64,
    applied: bool,
    seen: Option<Vec<u8>>,
}

struct Sim {
    rng: StdRng,
    disk: Vec<u8>,
    who: Vec<Contender>,
    ops: Vec<Op>,
    now: u64,
    faults: bool,
    late_write_at: Option<u64>,
    verbose: bool,
    acquisitions: u64,
}

impl Sim {
    fn new(seed: u64, verbose: bool) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(2..=3);
        let who = (0..n)
            .map(|i| Contender {
                core: LeaseCore::new(&format!("n{}", i + 1), timing()),
                generation: 0,
                rate: rng.gen_range(0.99..=1.01),
                origin: rng.gen_range(0.0..1.0e9),
                life: Life::Up,
                queued: Vec::new(),
                acquire_at: Some(rng.gen_range(0..500)),
                held_since: None,
                excused: false,
            })
            .collect();
        Self {
            rng,
            disk: vec![0; SECTOR],
            who,
            ops: Vec::new(),
            now: 0,
            faults: true,
            late_write_at: None,
            verbose,
            acquisitions: 0,
        }
    }

    fn local(&self, i: usize) -> Duration {
        let c = &self.who[i];
        Duration::from_micros((c.origin + self.now as f64 * 1000.0 * c.rate) as u64)
    }

    fn feed(&mut self, i: usize, input: Input) -> Result<(), String> {
        let now = self.local(i);
        let actions = self.who[i].core.handle(now, input);
        for action in actions {
            if self.verbose {
                eprintln!("{:>6} n{} {action:?}", self.now, i + 1);
            }
            self.act(i, action)?;
        }
        Ok(())
    }

    fn act(&mut self, i: usize, action: Action) -> Result<(), String> {
        match action {
            Action::Read { id } => self.issue(i, id, None),
            Action::Write { id, bytes } => self.issue(i, id, Some(bytes)),
            Action::Acquired { .. } => {
                self.acquisitions += 1;
                self.who[i].held_since = Some(self.now);
            }
            Action::StopUsing(reason) => {
                let c = &self.who[i];
                let late =
                    matches!((self.late_write_at, c.held_since), (Some(l), Some(h)) if l >= h);
                if !c.excused && !late {
                    return Err(format!(
                        "n{} lost a live lease at {}: {reason}",
                        i + 1,
                        self.now
                    ));
                }
                self.lost(i);
            }
            Action::Released => self.lost(i),
        }
        Ok(())
    }

    fn lost(&mut self, i: usize) {
        let again = self.now + self.rng.gen_range(0..1000);
        let c = &mut self.who[i];
        c.held_since = None;
        c.acquire_at = Some(again);
    }

    fn issue(&mut self, who: usize, id: u64, bytes: Option<Vec<u8>>) {
        let slow = self.faults && self.rng.gen_bool(0.02);
        // A read and the write after it must fit in io_timeout together: most I/Os
        // take up to half of it, some up to all of it, and a few more than that.
        let latency = if slow {
            self.rng.gen_range(IO..=3 * IO)
        } else if self.rng.gen_bool(0.1) {
            self.rng.gen_range(IO / 2..IO)
        } else {
            self.rng.gen_range(0..IO / 2)
        };
        if slow {
            self.who[who].excused = true;
        }
        let effect_at = self.now + self.rng.gen_range(0..=latency);
        self.ops.push(Op {
            who,
            generation: self.who[who].generation,
            id,
            bytes,
            issued: self.now,
            effect_at,
            done_at: self.now + latency,
            applied: false,
            seen: None,
        });
    }

    fn apply_effects(&mut self) {
        if !self
            .ops
            .iter()
            .any(|op| !op.applied && op.effect_at <= self.now)
        {
            return;
        }
        let mut due: Vec<usize> = (0..self.ops.len())
            .filter(|&k| !self.ops[k].applied && self.ops[k].effect_at <= self.now)
            .collect();
        due.sort_by_key(|&k| self.ops[k].effect_at);
        for k in due {
            let op = &mut self.ops[k];
            op.applied = true;
            match &op.bytes {
                Some(bytes) => {
                    self.disk = bytes.clone();
                    if op.effect_at > op.issued + IO {
                        self.late_write_at = Some(self.now);
                    }
                }
                None => op.seen = Some(self.disk.clone()),
            }
        }
    }

    fn complete(&mut self) -> Result<(), String> {
        if !self
            .ops
            .iter()
            .any(|op| op.applied && op.done_at <= self.now)
        {
            return Ok(());
        }
        let (done, rest): (Vec<Op>, Vec<Op>) = std::mem::take(&mut self.ops)
            .into_iter()
            .partition(|op| op.applied && op.done_at <= self.now);
        self.ops = rest;
        for op in done {
            let c = &mut self.who[op.who];
            if c.generation != op.generation || matches!(c.life, Life::Crashed { .. }) {
                continue;
            }
            let input = match op.bytes {
                Some(_) => Input::WriteDone {
                    id: op.id,
                    ok: true,
                },
                None => Input::ReadDone {
                    id: op.id,
                    bytes: op.seen,
                },
            };
            if matches!(c.life, Life::Paused { .. }) {
                c.queued.push(input);
            } else {
                self.feed(op.who, input)?;
            }
        }
        Ok(())
    }

    fn inject(&mut self, i: usize) -> Result<(), String> {
        if !self.faults || self.who[i].life != Life::Up {
            return Ok(());
        }
        let roll: f64 = self.rng.gen();
        if roll < 0.0008 {
            let until = self.now + self.rng.gen_range(0..3200);
            self.who[i].life = Life::Paused { until };
            self.who[i].excused = true;
        } else if roll < 0.0012 {
            let until = self.now + self.rng.gen_range(0..2000);
            let c = &mut self.who[i];
            c.life = Life::Crashed { until };
            c.generation += 1;
            c.held_since = None;
            c.acquire_at = None;
            c.queued.clear();
        } else if roll < 0.0016 {
            self.feed(i, Input::Release)?;
        }
        Ok(())
    }

    fn wake(&mut self, i: usize) -> Result<(), String> {
        match self.who[i].life {
            Life::Paused { until } if until <= self.now => {
                self.who[i].life = Life::Up;
                for input in std::mem::take(&mut self.who[i].queued) {
                    self.feed(i, input)?;
                }
            }
            Life::Crashed { until } if until <= self.now => {
                let c = &mut self.who[i];
                c.life = Life::Up;
                c.core = LeaseCore::new(&format!("n{}", i + 1), timing());
                c.rate = self.rng.gen_range(0.99..=1.01);
                c.acquire_at = Some(self.now);
            }
            _ => {}
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.apply_effects();
        self.complete()?;
        for i in 0..self.who.len() {
            self.wake(i)?;
            if self.who[i].life != Life::Up {
                continue;
            }
            if self.who[i].acquire_at.is_some_and(|t| t <= self.now) {
                self.who[i].acquire_at = None;
                let incarnation = self.rng.gen();
                self.who[i].excused = false;
                self.feed(i, Input::Acquire { incarnation })?;
            }
            self.feed(i, Input::Tick)?;
            self.inject(i)?;
        }
        self.check_exclusive()
    }

    fn check_exclusive(&self) -> Result<(), String> {
        let users: Vec<usize> = (0..self.who.len())
            .filter(|&i| !matches!(self.who[i].life, Life::Crashed { .. }))
            .filter(|&i| self.who[i].core.may_use(self.local(i)))
            .collect();
        if users.len() > 1 {
            return Err(format!("at {} ms {users:?} may all use the disk", self.now));
        }
        Ok(())
    }
}

fn run(seed: u64, verbose: bool) -> Result<u64, String> {
    let mut sim = Sim::new(seed, verbose);
    while sim.now < FAULT_PHASE {
        sim.step()?;
        sim.now += STEP;
    }
    sim.faults = false;
    for c in &mut sim.who {
        if let Life::Paused { until } | Life::Crashed { until } = &mut c.life {
            *until = (*until).min(FAULT_PHASE);
        }
    }
    while sim.now < FAULT_PHASE + HEAL_PHASE {
        sim.step()?;
        sim.now += STEP;
    }
    let holders = (0..sim.who.len())
        .filter(|&i| sim.who[i].core.may_use(sim.local(i)))
        .count();
    if holders != 1 {
        return Err(format!("{holders} holders after the heal phase"));
    }
    Ok(sim.acquisitions)
}

#[test]
fn lease_never_two_users_and_a_live_holder_keeps_it() {
    let count = std::env::var("TANDEM_LSIM_SCENARIOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SCENARIOS);
    let total = seeds::run_seeds("TANDEM_LSIM", DEFAULT_SCENARIOS, run);
    if std::env::var_os("TANDEM_LSIM_SEED").is_some() {
        return;
    }
    eprintln!("{count} seeds, {total} acquisitions");
    assert!(
        total >= count,
        "the lease changed hands too rarely: {total}"
    );
}
