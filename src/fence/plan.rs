//! The pure, sans-IO part of fencing, where the decisions live: which methods to try
//! and in what order, how long to wait before fencing a group owner (so that in a fence
//! race the owner's side shoots first), when a power-state poll is done, and what came
//! of a fence. `redfish.rs` and `ipmi.rs` do the I/O; `super::execute` drives them.

use std::time::Duration;

use serde::Serialize;

use super::FenceError;
use crate::config::FenceConfig;

/// A way to reach a node's power: its BMC over Redfish, or IPMI over LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Redfish,
    Ipmi,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Redfish => "redfish",
            Method::Ipmi => "ipmi",
        })
    }
}

/// What to do to a node's power (`tandem fence --off|--on|--status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceAction {
    /// Force the power off, and wait until the BMC reports it off: the fence.
    Off,
    /// Power on again (unfence), and wait until the BMC reports it on.
    On,
    /// Read the power state only.
    Status,
}

/// A node's power as its BMC reports it (Redfish `PowerState`; ipmitool's
/// `Chassis Power is on|off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    Paused,
    /// Absent, or a value the Redfish schema does not define.
    Unknown,
}

impl PowerState {
    /// Redfish `ComputerSystem.PowerState` (DSP8010 `Resource.PowerState`).
    pub fn from_redfish(s: &str) -> PowerState {
        match s {
            "On" => PowerState::On,
            "Off" => PowerState::Off,
            "PoweringOn" => PowerState::PoweringOn,
            "PoweringOff" => PowerState::PoweringOff,
            "Paused" => PowerState::Paused,
            _ => PowerState::Unknown,
        }
    }
}

impl std::fmt::Display for PowerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::PoweringOn => "powering on",
            PowerState::PoweringOff => "powering off",
            PowerState::Paused => "paused",
            PowerState::Unknown => "unknown",
        })
    }
}

/// What came of a fence action.
#[derive(Debug)]
pub enum FenceOutcome {
    /// The BMC reports the power off: the node is fenced.
    Off { method: Method, elapsed: Duration },
    /// The BMC reports the power on (after `--on`).
    On { method: Method, elapsed: Duration },
    /// The power state read (`--status`).
    State { method: Method, state: PowerState },
    /// Every configured method failed; the node is NOT fenced. One error per method
    /// tried, in order.
    Failed { attempts: Vec<(Method, FenceError)> },
}

impl FenceOutcome {
    /// True when the action did what it was asked.
    pub fn succeeded(&self) -> bool {
        !matches!(self, FenceOutcome::Failed { .. })
    }

    /// Why it failed, one clause per method tried (None when it succeeded).
    pub fn failure(&self) -> Option<String> {
        let FenceOutcome::Failed { attempts } = self else {
            return None;
        };
        Some(
            attempts
                .iter()
                .map(|(m, e)| format!("{m}: {e}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

/// The methods to try, in order: Redfish first, then IPMI; only the configured ones.
pub fn methods(cfg: &FenceConfig) -> Vec<Method> {
    let mut m = Vec::with_capacity(2);
    if cfg.redfish.is_some() {
        m.push(Method::Redfish);
    }
    if cfg.ipmi.is_some() {
        m.push(Method::Ipmi);
    }
    m
}

/// How long a node waits before fencing a peer. Fencing the current owner of a group
/// waits `delay` (the owner's `[node.fence] delay`); fencing a node that owns nothing
/// does not wait. In a race where each side fences the other, the side fencing the
/// non-owner shoots first, so the owner survives and its services stay up.
pub fn fence_delay(target_is_owner: bool, delay: Duration) -> Duration {
    if target_is_owner {
        delay
    } else {
        Duration::ZERO
    }
}

/// The power state an action waits for, if it waits for one.
pub fn wanted(action: FenceAction) -> Option<PowerState> {
    match action {
        FenceAction::Off => Some(PowerState::Off),
        FenceAction::On => Some(PowerState::On),
        FenceAction::Status => None,
    }
}

/// The next step of a power-state poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStep {
    /// The state reads as wanted.
    Done,
    /// Read again after this long.
    Again(Duration),
    /// The timeout is over without the wanted state.
    TimedOut,
}

/// Whether a poll that read `read` after `elapsed` (since the request) is done, goes
/// on (never sleeping past the timeout), or has run out of time.
pub fn poll_step(
    want: PowerState,
    read: PowerState,
    elapsed: Duration,
    timeout: Duration,
    interval: Duration,
) -> PollStep {
    if read == want {
        PollStep::Done
    } else if elapsed >= timeout {
        PollStep::TimedOut
    } else {
        PollStep::Again(interval.min(timeout - elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IpmiConfig, RedfishConfig};

    fn cfg(redfish: bool, ipmi: bool) -> FenceConfig {
        FenceConfig {
            redfish: redfish.then(|| RedfishConfig {
                url: "https://10.0.0.21".into(),
                system: None,
                user: "admin".into(),
                password: Some("pw".into()),
                password_file: None,
                insecure: true,
            }),
            ipmi: ipmi.then(|| IpmiConfig {
                host: "10.0.0.22".into(),
                port: 623,
                user: "admin".into(),
                password_file: "/etc/tandem/ipmi.pw".into(),
                cipher_suite: None,
            }),
            delay: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn redfish_is_tried_before_ipmi() {
        assert_eq!(methods(&cfg(true, true)), [Method::Redfish, Method::Ipmi]);
        assert_eq!(methods(&cfg(false, true)), [Method::Ipmi]);
        assert_eq!(methods(&cfg(true, false)), [Method::Redfish]);
        assert!(methods(&cfg(false, false)).is_empty());
    }

    #[test]
    fn only_the_side_fencing_the_owner_waits() {
        let d = Duration::from_secs(5);
        assert_eq!(fence_delay(true, d), d);
        assert_eq!(fence_delay(false, d), Duration::ZERO);
        // In a race, the side fencing the non-owner shoots first.
        assert!(fence_delay(false, d) < fence_delay(true, d));
    }

    #[test]
    fn poll_ends_on_the_wanted_state_or_the_timeout() {
        let s = Duration::from_secs;
        let (off, on) = (PowerState::Off, PowerState::On);
        assert_eq!(poll_step(off, off, s(100), s(30), s(1)), PollStep::Done);
        assert_eq!(poll_step(off, on, s(3), s(30), s(1)), PollStep::Again(s(1)));
        assert_eq!(
            poll_step(
                off,
                PowerState::PoweringOff,
                Duration::from_millis(29_500),
                s(30),
                s(1)
            ),
            PollStep::Again(Duration::from_millis(500))
        );
        assert_eq!(poll_step(off, on, s(30), s(30), s(1)), PollStep::TimedOut);
    }

    #[test]
    fn redfish_power_states() {
        assert_eq!(PowerState::from_redfish("Off"), PowerState::Off);
        assert_eq!(
            PowerState::from_redfish("PoweringOff"),
            PowerState::PoweringOff
        );
        assert_eq!(PowerState::from_redfish("off"), PowerState::Unknown);
        assert_eq!(wanted(FenceAction::Off), Some(PowerState::Off));
        assert_eq!(wanted(FenceAction::Status), None);
    }
}
