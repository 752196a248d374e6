//! The watchdog that backs the owner lease, pure: when to arm, pet and disarm.
//!
//! A lease only keeps two owners apart if the old owner stops by itself before its
//! lease ends. A paused or livelocked daemon stops nothing, and its kernel keeps the
//! floating IPs. With `[quorum] watchdog`, the device resets such a node in time:
//!
//! - **Armed** while this node runs or starts any group.
//! - **Pet** (only here, from the node core's tick) while every such group's lease,
//!   remembered past the moment the register moves on, has at least W + 100 ms left.
//!   The last pet is then at least W + 100 ms before the lease ends, so a node that
//!   stops ticking is reset at least 100 ms before the lease ends: before any new
//!   owner may start (the voters wait L × (1 + 2ρ) on their own clocks).
//! - **Disarmed** (magic close) once it runs and starts nothing: a node that stops its
//!   groups in time for its lease is not reset.
//! - A group **starts** only with W + 100 ms of lease left (the gate, in
//!   `node::quorum`): the device counts from its arm or last pet, so a node that
//!   started with less and then hung would be reset after its lease ended.
//!
//! - **Unavailable**: the runtime reports a device it cannot open (at start, on arm,
//!   on its retries every 5 s) or write (a pet) as a [`WatchdogReport`]. Until it
//!   reports the device usable again, nothing is armed or petted here, and the node
//!   core lets this node neither take over nor start any group, and stops those it
//!   runs as if their lease were lost: a node the device cannot reset must not serve.
//!
//! - **A failed fast stop**: once a step of a lost lease's fast stop failed (a
//!   floating IP not dropped, a mirror's I/O neither suspended nor failed, a process
//!   not frozen), nothing is petted or disarmed any more: the node may still serve
//!   what it must not, and the device resets it.
//!
//! The runtime carries out [`WatchdogCommand`]s on the device (`runtime::watchdog`).

use std::collections::BTreeMap;

/// What the runtime does with the watchdog device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogCommand {
    /// Open the device (which starts it) and set its timeout.
    Arm { timeout_s: u64 },
    /// Write one byte: the device's countdown starts over.
    Pet,
    /// Write the magic 'V' and close: the device stops without a reset.
    Disarm,
}

/// What the runtime was doing when the device failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogOp {
    /// Opening it (at start, on arm, or a retry).
    Open,
    /// Setting its timeout.
    SetTimeout,
    /// Writing a pet or the magic close.
    Write,
}

impl WatchdogOp {
    pub fn name(self) -> &'static str {
        match self {
            WatchdogOp::Open => "open",
            WatchdogOp::SetTimeout => "set_timeout",
            WatchdogOp::Write => "write",
        }
    }
}

/// Why the configured device cannot back the leases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogFault {
    /// The configured device path.
    pub device: String,
    pub op: WatchdogOp,
    /// The OS error, as text.
    pub error: String,
}

/// The runtime's word on the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchdogReport {
    /// The device failed: nothing is protected by it now.
    Failed(WatchdogFault),
    /// The device opened again (a retry or an arm succeeded).
    Available,
}

/// A change of the device's availability, for the node core to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    Lost(WatchdogFault),
    Regained { device: String },
}

/// How much lease must be left beyond the watchdog's timeout for a pet.
pub const PET_SPARE_MS: u64 = 100;

/// The watchdog's state: armed or not, and the lease end of each group it backs.
#[derive(Debug, Clone)]
pub struct Watchdog {
    timeout_ms: u64,
    armed: bool,
    /// Per group this node runs or starts: the latest end of its lease seen. A lease
    /// never ends earlier than once seen, and it goes on binding after the register
    /// moves on (the lease book forgets it then).
    lease_ends: BTreeMap<String, u64>,
    /// Set while the runtime reports the device unusable.
    fault: Option<WatchdogFault>,
    /// A lost lease's fast stop failed here: no pet or disarm from now on.
    fast_stop_failed: bool,
}

impl Watchdog {
    pub fn new(timeout_s: u64) -> Watchdog {
        Watchdog {
            timeout_ms: timeout_s * 1000,
            armed: false,
            lease_ends: BTreeMap::new(),
            fault: None,
            fast_stop_failed: false,
        }
    }

    /// A step of a lost lease's fast stop failed: the device is left to reset the
    /// node (no pet, no disarm) until the daemon starts afresh.
    pub fn fast_stop_failed(&mut self) {
        self.fast_stop_failed = true;
    }

    pub fn armed(&self) -> bool {
        self.armed
    }

    /// Why the device cannot back the leases now; None while it can.
    pub fn fault(&self) -> Option<&WatchdogFault> {
        self.fault.as_ref()
    }

    /// Takes the runtime's report; returns the change to announce, once per change.
    /// A failed device is closed: the next arm opens it afresh.
    pub fn report(&mut self, report: WatchdogReport) -> Option<HealthChange> {
        match report {
            WatchdogReport::Failed(f) => {
                self.armed = false;
                let first = self.fault.is_none();
                self.fault = Some(f.clone());
                first.then_some(HealthChange::Lost(f))
            }
            WatchdogReport::Available => self
                .fault
                .take()
                .map(|f| HealthChange::Regained { device: f.device }),
        }
    }

    /// One tick: `owned` are the groups this node runs or starts, each with its lease
    /// end now (`None` when the lease book holds none). Returns the commands, in order.
    pub fn tick(&mut self, now_ms: u64, owned: &[(String, Option<u64>)]) -> Vec<WatchdogCommand> {
        self.lease_ends
            .retain(|g, _| owned.iter().any(|(o, _)| o == g));
        for (g, end) in owned {
            if let Some(end) = end {
                let e = self.lease_ends.entry(g.clone()).or_insert(*end);
                *e = (*e).max(*end);
            }
        }
        let mut out = Vec::new();
        if self.fast_stop_failed {
            return out;
        }
        if owned.is_empty() {
            if self.armed {
                self.armed = false;
                out.push(WatchdogCommand::Disarm);
            }
            return out;
        }
        if self.fault.is_some() {
            // Nothing to arm or pet: the runtime retries the device on its own, and
            // the node core stops what runs here.
            return out;
        }
        if !self.armed {
            self.armed = true;
            out.push(WatchdogCommand::Arm {
                timeout_s: self.timeout_ms / 1000,
            });
        }
        let need = now_ms + self.timeout_ms + PET_SPARE_MS;
        let all_long = owned
            .iter()
            .all(|(g, _)| self.lease_ends.get(g).is_some_and(|end| *end >= need));
        if all_long {
            out.push(WatchdogCommand::Pet);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::WatchdogCommand::{Arm, Disarm, Pet};
    use super::*;

    fn owned(gs: &[(&str, Option<u64>)]) -> Vec<(String, Option<u64>)> {
        gs.iter().map(|(g, e)| (g.to_string(), *e)).collect()
    }

    #[test]
    fn arms_when_a_group_runs_and_disarms_when_none_does() {
        let mut w = Watchdog::new(1);
        assert!(w.tick(0, &[]).is_empty(), "nothing to back yet");
        assert_eq!(
            w.tick(10, &owned(&[("web", Some(1_510))])),
            [Arm { timeout_s: 1 }, Pet]
        );
        assert!(w.armed());
        assert_eq!(w.tick(20, &owned(&[("web", Some(1_520))])), [Pet]);
        assert_eq!(w.tick(30, &[]), [Disarm]);
        assert!(!w.armed());
        assert!(w.tick(40, &[]).is_empty(), "disarms once");
    }

    #[test]
    fn pets_only_while_every_lease_has_the_timeout_and_the_spare_left() {
        let mut w = Watchdog::new(1);
        // web's lease ends at 2000: pets up to 2000 - 1000 - 100 = 900.
        let gs = owned(&[("web", Some(2_000)), ("db", Some(5_000))]);
        assert_eq!(w.tick(900, &gs), [Arm { timeout_s: 1 }, Pet]);
        assert!(w.tick(901, &gs).is_empty(), "web's lease is too short");
        // A renewal extends it: pets again.
        assert_eq!(
            w.tick(950, &owned(&[("web", Some(2_200)), ("db", None)])),
            [Pet]
        );
    }

    #[test]
    fn a_lease_the_book_forgot_still_binds_and_a_group_without_one_gets_no_pet() {
        let mut w = Watchdog::new(2);
        assert_eq!(
            w.tick(0, &owned(&[("web", Some(3_000))])),
            [Arm { timeout_s: 2 }, Pet]
        );
        // The register moved on (a switchover): the lease ends at 3000 still.
        assert_eq!(w.tick(800, &owned(&[("web", None)])), [Pet]);
        assert!(w.tick(901, &owned(&[("web", None)])).is_empty());
        // A group starting without any lease seen: no pet.
        let mut w = Watchdog::new(1);
        assert_eq!(w.tick(0, &owned(&[("web", None)])), [Arm { timeout_s: 1 }]);
    }

    fn fault(op: WatchdogOp) -> WatchdogFault {
        WatchdogFault {
            device: "/dev/watchdog0".into(),
            op,
            error: "No such file or directory (os error 2)".into(),
        }
    }

    #[test]
    fn an_unavailable_device_is_reported_once_and_neither_armed_nor_petted() {
        let mut w = Watchdog::new(1);
        let lost = w.report(WatchdogReport::Failed(fault(WatchdogOp::Open)));
        assert_eq!(lost, Some(HealthChange::Lost(fault(WatchdogOp::Open))));
        assert_eq!(
            w.report(WatchdogReport::Failed(fault(WatchdogOp::Open))),
            None
        );
        assert!(w.fault().is_some());
        assert!(w.tick(0, &owned(&[("web", Some(5_000))])).is_empty());
        assert_eq!(
            w.report(WatchdogReport::Available),
            Some(HealthChange::Regained {
                device: "/dev/watchdog0".into()
            })
        );
        assert_eq!(w.report(WatchdogReport::Available), None);
        assert_eq!(
            w.tick(10, &owned(&[("web", Some(5_000))])),
            [Arm { timeout_s: 1 }, Pet]
        );
    }

    #[test]
    fn a_failed_pet_closes_the_device_and_it_is_armed_afresh_once_back() {
        let mut w = Watchdog::new(1);
        let gs = owned(&[("web", Some(5_000))]);
        assert_eq!(w.tick(0, &gs), [Arm { timeout_s: 1 }, Pet]);
        w.report(WatchdogReport::Failed(fault(WatchdogOp::Write)));
        assert!(!w.armed());
        assert!(w.tick(10, &gs).is_empty(), "no pet into a failed device");
        assert!(w.tick(20, &[]).is_empty(), "nothing open to disarm");
        w.report(WatchdogReport::Available);
        assert_eq!(w.tick(30, &gs), [Arm { timeout_s: 1 }, Pet]);
    }

    #[test]
    fn after_a_failed_fast_stop_the_device_is_neither_petted_nor_disarmed() {
        let mut w = Watchdog::new(1);
        let gs = owned(&[("web", Some(5_000))]);
        assert_eq!(w.tick(0, &gs), [Arm { timeout_s: 1 }, Pet]);
        w.fast_stop_failed();
        assert!(w.tick(10, &gs).is_empty(), "a pet after a failed fast stop");
        assert!(
            w.tick(20, &[]).is_empty(),
            "a disarm after a failed fast stop"
        );
        assert!(w.armed(), "left to reset the node");
    }

    #[test]
    fn a_stopped_group_is_forgotten() {
        let mut w = Watchdog::new(1);
        w.tick(0, &owned(&[("web", Some(5_000)), ("db", Some(5_000))]));
        w.tick(10, &owned(&[("db", Some(5_000))]));
        // web starts again under a new epoch: its old lease end does not count.
        assert_eq!(
            w.tick(20, &owned(&[("web", None), ("db", Some(5_000))])),
            []
        );
    }
}
