//! The quorum core over an in-memory network of three voters.

use super::*;
use crate::quorum::lease::LeaseConfig;

fn cfg(local: &str, witness: bool) -> QuorumConfig {
    QuorumConfig {
        local: local.into(),
        voters: vec!["n1".into(), "n2".into(), "w".into()],
        witness: witness.then(|| "w".to_string()),
        tick_ms: 100,
        election_ticks: 10,
        heartbeat_ticks: 2,
        lease: LeaseConfig {
            lease_ms: 1500,
            drift_ppm: 10_000,
            dead_time_ms: 1000,
            report_fresh_ms: 400,
        },
    }
}

struct Net {
    cores: Vec<QuorumCore>,
    names: Vec<String>,
    queue: Vec<(String, String, Vec<QuorumMsg>)>,
    down: Vec<bool>,
    now: u64,
    persisted: Vec<Restored>,
}

impl Net {
    fn new() -> Net {
        let names: Vec<String> = vec!["n1".into(), "n2".into(), "w".into()];
        let cores = names
            .iter()
            .enumerate()
            .map(|(i, n)| QuorumCore::new(cfg(n, true), &Restored::default(), 0, i as u64).unwrap())
            .collect();
        Net {
            cores,
            names,
            queue: Vec::new(),
            down: vec![false; 3],
            now: 0,
            persisted: vec![Restored::default(); 3],
        }
    }

    fn idx(&self, n: &str) -> usize {
        self.names.iter().position(|x| x == n).unwrap()
    }

    /// Carries out a core's actions; each write is durable at once and reported.
    fn take(&mut self, from: usize, out: Vec<QuorumAction>) {
        let mut written = Vec::new();
        for a in out {
            match a {
                QuorumAction::Send { to, msgs } => {
                    self.queue.push((self.names[from].clone(), to, msgs))
                }
                QuorumAction::Persist { batch, write } => {
                    self.persisted[from].apply(&batch);
                    written.push(write);
                }
                QuorumAction::Applied(_) => {}
            }
        }
        for w in written {
            let mut more = Vec::new();
            self.cores[from].persisted(self.now, w, &mut more);
            self.take(from, more);
        }
    }

    fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.now += 50;
            for i in 0..3 {
                if self.down[i] {
                    continue;
                }
                let mut out = Vec::new();
                self.cores[i].tick(self.now, &mut out);
                if self.now.is_multiple_of(200) {
                    self.cores[i].lease_round(self.now, &mut out);
                }
                self.take(i, out);
            }
            let q = std::mem::take(&mut self.queue);
            for (from, to, msgs) in q {
                let (f, t) = (self.idx(&from), self.idx(&to));
                if self.down[f] || self.down[t] {
                    continue;
                }
                let mut out = Vec::new();
                let now = self.now;
                self.cores[t].step(now, &from, now, msgs, &mut out);
                self.take(t, out);
            }
        }
    }

    fn leader(&self) -> Option<String> {
        (0..3)
            .filter(|&i| !self.down[i] && self.cores[i].role() == Role::Leader)
            .map(|i| self.names[i].clone())
            .next()
    }
}

#[test]
fn three_voters_elect_a_node_never_the_witness_and_commit_a_claim() {
    let mut net = Net::new();
    net.run(3000);
    let leader = net.leader().expect("a leader");
    assert_ne!(leader, "w", "the witness never leads");
    // A claim proposed on the follower node is relayed to the leader.
    let follower = if leader == "n1" { 1 } else { 0 };
    let claim = Decision::Own {
        group: "g".into(),
        owner: net.names[follower].clone(),
        epoch: 1,
        handoff: false,
        copies_seen: None,
    };
    let mut out = Vec::new();
    let now = net.now;
    assert!(net.cores[follower].propose(now, &claim, &mut out));
    net.take(follower, out);
    net.run(1000);
    for c in &net.cores {
        assert_eq!(c.register().owner("g").map(|o| o.epoch), Some(1));
    }
    // The owner's lease is held by a majority.
    let owner = &net.cores[follower];
    let end = owner.leases().lease_end("g").expect("lease");
    assert!(end > net.now, "lease end {end} now {}", net.now);
    // The persisted log replays to the same register.
    let again = QuorumCore::new(cfg("w", true), &net.persisted[2], net.now, 9).unwrap();
    assert_eq!(again.register().owners, net.cores[2].register().owners);
}

#[test]
fn an_isolated_owner_loses_its_lease_and_the_majority_may_take_over() {
    let mut net = Net::new();
    net.run(3000);
    let mut out = Vec::new();
    let now = net.now;
    let claim = Decision::Own {
        group: "g".into(),
        owner: "n1".into(),
        epoch: 1,
        handoff: false,
        copies_seen: None,
    };
    assert!(net.cores[0].propose(now, &claim, &mut out));
    net.take(0, out);
    net.run(1000);
    assert!(net.cores[0].leases().lease_end("g").unwrap() > net.now);
    net.down[0] = true;
    let cut = net.now;
    net.run(2500);
    assert!(net.leader().is_some(), "n2 and the witness keep a leader");
    let reg = net.cores[1].register().clone();
    assert!(net.cores[1].leases().may_take_over(net.now, "g", &reg));
    // n1's lease ran out on its own clock: the last acknowledged renewal was before
    // the cut.
    assert!(net.cores[0].leases().lease_end("g").unwrap() <= cut + 1500);
    // Compaction after many decisions keeps the register.
    for e in 2..(COMPACT_EVERY as u64 + 10) {
        let mut out = Vec::new();
        let now = net.now;
        let d = Decision::Maintenance {
            group: format!("g{e}"),
            on: true,
        };
        net.cores[1].propose(now, &d, &mut out);
        net.take(1, out);
        net.run(100);
    }
    assert!(net.cores[1].raw.store().len() < COMPACT_EVERY);
    let again = QuorumCore::new(cfg("n2", true), &net.persisted[1], net.now, 9).unwrap();
    assert_eq!(
        again.register().maintenance,
        net.cores[1].register().maintenance
    );
    assert_eq!(again.register().maintenance.len(), COMPACT_EVERY + 8);
    // n1 comes back and catches up (by snapshot, since the log was compacted).
    net.down[0] = false;
    net.run(3000);
    assert_eq!(
        net.cores[0].register().maintenance,
        net.cores[1].register().maintenance
    );
}
