//! `[quorum]` and `[witness]`: how the cluster decides with a majority of voters.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{invalid, Config, ConfigError};

/// How ownership is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum QuorumMode {
    /// A majority of the voters when there are three or more (nodes plus the witness);
    /// the two-node rules otherwise.
    #[default]
    Auto,
    /// Always a majority of the voters (three or more).
    Majority,
    /// The two-node rules: a floating-IP probe before a takeover. Not partition-safe.
    None,
}

/// `[quorum]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuorumSection {
    pub mode: QuorumMode,
    /// L: how long a renewal acknowledged by a majority keeps an owner's lease. A new
    /// owner starts L × (1 + 2ρ) after a majority last acknowledged the old one.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// ρ, the bound on how much two nodes' clock rates differ, in parts per million.
    /// Commodity crystals drift under 100 ppm; the default 10,000 (1 %) leaves room for
    /// virtual machines.
    pub drift_ppm: u64,
    /// An owner stops its groups this long before its lease ends, so that the stop
    /// (floating IPs first) finishes while the lease still holds.
    #[serde(with = "humantime_serde")]
    pub stop_margin: Duration,
    /// A hardware watchdog that backs the lease: petted only while every lease this
    /// node serves under has more than its timeout left, so a hung owner is reset
    /// before its lease ends.
    pub watchdog: Option<WatchdogSection>,
}

/// `[quorum] watchdog = { device = "/dev/watchdog", timeout = "1s" }`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogSection {
    /// The watchdog device (or, in the lab, a FIFO read by a stand-in).
    pub device: std::path::PathBuf,
    /// W: how long the device waits for a pet before it resets the machine. Whole
    /// seconds (Linux's `WDIOC_SETTIMEOUT` takes seconds).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for QuorumSection {
    fn default() -> Self {
        QuorumSection {
            mode: QuorumMode::Auto,
            lease: Duration::from_millis(1500),
            drift_ppm: 10_000,
            stop_margin: Duration::from_millis(300),
            watchdog: None,
        }
    }
}

/// The shortest `[quorum] lease` a watchdog of `timeout` allows at this heartbeat
/// interval. An owner fast-stops a group when its lease has timeout + 200 ms left
/// (`node::QuorumSettings::fast_stop_margin_ms`); renewals go out every interval, so
/// the lease must exceed that by the interval, plus 100 ms for a late round.
pub fn min_lease_with_watchdog(timeout: Duration, interval: Duration) -> Duration {
    timeout + interval + Duration::from_millis(300)
}

/// `[witness]`: a voter with no resources (`tandem witness`), e.g. at a third site.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessRef {
    pub name: String,
    /// Heartbeat path name -> the witness's address on it (heartbeat port).
    pub addresses: BTreeMap<String, IpAddr>,
}

impl Config {
    /// Every voter: the nodes, then the witness.
    pub fn voters(&self) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.iter().map(|n| n.name.clone()).collect();
        if let Some(w) = &self.witness {
            v.push(w.name.clone());
        }
        v
    }

    /// Whether ownership goes through the replicated log.
    pub fn quorum_enabled(&self) -> bool {
        match self.quorum.mode {
            QuorumMode::Auto => self.voters().len() >= 3,
            QuorumMode::Majority => true,
            QuorumMode::None => false,
        }
    }

    /// `[quorum]` and `[witness]`.
    pub(super) fn check_quorum(&self) -> Result<(), ConfigError> {
        let q = &self.quorum;
        if q.mode == QuorumMode::Majority && self.voters().len() < 3 {
            return Err(invalid(
                "quorum.mode",
                "a majority needs three or more voters: add a node or a [witness]",
            ));
        }
        if q.drift_ppm > 100_000 {
            return Err(invalid("quorum.drift_ppm", "must be at most 100000 (10 %)"));
        }
        let need = q.stop_margin + self.heartbeat.interval + Duration::from_millis(200);
        if self.quorum_enabled() && q.lease < need {
            return Err(invalid(
                "quorum.lease",
                format!(
                    "must be at least stop_margin + heartbeat.interval + 200ms = {} ms",
                    need.as_millis()
                ),
            ));
        }
        self.check_watchdog()?;
        if let Some(w) = &self.witness {
            if w.name.is_empty() || w.name.len() > 64 {
                return Err(invalid("witness.name", "must be 1 to 64 characters"));
            }
            if self.nodes.iter().any(|n| n.name == w.name) {
                return Err(invalid("witness.name", "is also a node's name"));
            }
            if w.addresses.is_empty() {
                return Err(invalid(
                    "witness.addresses",
                    "give an address on at least one heartbeat path",
                ));
            }
            for path in w.addresses.keys() {
                if !self.heartbeat.paths.contains(path) {
                    return Err(invalid(
                        format!("witness.addresses.{path}"),
                        "is not one of heartbeat.paths",
                    ));
                }
            }
        }
        Ok(())
    }

    /// `[quorum] watchdog`: whole seconds, and a lease long enough that the owner can
    /// stop petting before its lease ends with a heartbeat interval to spare.
    fn check_watchdog(&self) -> Result<(), ConfigError> {
        let Some(w) = &self.quorum.watchdog else {
            return Ok(());
        };
        if w.device.as_os_str().is_empty() {
            return Err(invalid("quorum.watchdog.device", "must not be empty"));
        }
        if w.timeout.subsec_nanos() != 0 || w.timeout.as_secs() == 0 {
            return Err(invalid(
                "quorum.watchdog.timeout",
                "must be a whole number of seconds, at least 1s (Linux sets it in seconds)",
            ));
        }
        if !self.quorum_enabled() {
            return Err(invalid(
                "quorum.watchdog",
                "backs the owner lease, which needs a quorum (three or more voters)",
            ));
        }
        let need = min_lease_with_watchdog(w.timeout, self.heartbeat.interval);
        if self.quorum.lease < need {
            return Err(invalid(
                "quorum.lease",
                format!(
                    "must be at least quorum.watchdog.timeout + heartbeat.interval + 300ms = \
                     {} ms with a watchdog (the fast stop begins timeout + 200ms before the \
                     lease ends; 100ms more lets a renewal round be late)",
                    need.as_millis()
                ),
            ));
        }
        Ok(())
    }

    /// A warning for `config check` and the status: two nodes without a witness are not
    /// partition-safe.
    pub fn quorum_warning(&self) -> Option<String> {
        (!self.quorum_enabled() && self.nodes.len() == 2).then(|| {
            "two nodes without a witness: a network partition can leave both sides serving; \
             add a [witness] (`tandem witness`) for a majority"
                .to_string()
        })
    }
}
