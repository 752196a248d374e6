//! Recovery points: how much a copy may lack, as its primary last reported it.
//!
//! A primary advertises in every heartbeat how far behind each peer's copy is
//! (`cluster::packet::MirrorLag`: bytes unacknowledged plus out of sync, and the age of
//! the oldest unacknowledged write). Heartbeats travel on their own paths and never
//! queue behind the replication stream, so an async DR copy whose link lags still hears
//! what it lacks every heartbeat interval. Each node keeps the last report about each of
//! its copies. Once the primary is lost with its whole site, that report is the copy's
//! recovery point, to within one heartbeat interval: the writes it may lack, in bytes
//! and in seconds. Pure: the node core feeds it accepted heartbeats.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::packet::MirrorLag;

/// The last report of how far behind this node's copy of one mirror is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryPoint {
    pub mirror: String,
    /// The primary that reported it.
    pub primary: String,
    /// Bytes this copy may lack (an upper bound, to the bitmap's granularity).
    pub lag_bytes: u64,
    /// Age of the oldest write this copy had not acknowledged, in ms.
    pub lag_ms: u32,
    /// When the report arrived (wall clock, ms since the Unix epoch).
    pub reported_ms: u64,
}

/// The recovery point of each of this node's copies (by mirror name).
#[derive(Debug, Clone, Default)]
pub struct RecoveryPoints {
    points: BTreeMap<String, RecoveryPoint>,
}

impl RecoveryPoints {
    /// A heartbeat accepted from `from` carried `lags`: keeps those about `me`.
    pub fn heard(&mut self, me: &str, from: &str, lags: &[MirrorLag], wall_ms: u64) {
        for l in lags.iter().filter(|l| l.peer == me) {
            self.points.insert(
                l.mirror.clone(),
                RecoveryPoint {
                    mirror: l.mirror.clone(),
                    primary: from.to_string(),
                    lag_bytes: l.bytes,
                    lag_ms: l.age_ms,
                    reported_ms: wall_ms,
                },
            );
        }
    }

    /// The points `primary` reported last: what this node's copies may lack now that
    /// it is gone.
    pub fn reported_by<'a>(&'a self, primary: &'a str) -> impl Iterator<Item = &'a RecoveryPoint> {
        self.points.values().filter(move |p| p.primary == primary)
    }

    /// Every point, by mirror name.
    pub fn all(&self) -> impl Iterator<Item = &RecoveryPoint> {
        self.points.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lag(mirror: &str, peer: &str, bytes: u64, age_ms: u32) -> MirrorLag {
        MirrorLag::new(mirror, peer, bytes, age_ms)
    }

    #[test]
    fn a_copy_keeps_the_last_report_about_itself_from_its_latest_primary() {
        let mut r = RecoveryPoints::default();
        r.heard(
            "n3",
            "n1",
            &[lag("data", "n2", 0, 0), lag("data", "n3", 4096, 120)],
            10,
        );
        r.heard("n3", "n1", &[lag("data", "n3", 8192, 300)], 20);
        let p: Vec<_> = r.reported_by("n1").collect();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].lag_bytes, p[0].lag_ms, p[0].reported_ms),
            (8192, 300, 20)
        );
        // After a failover the new primary's reports replace the old one's.
        r.heard("n3", "n2", &[lag("data", "n3", 0, 0)], 30);
        assert_eq!(r.reported_by("n1").count(), 0);
        let all: Vec<_> = r.all().collect();
        assert_eq!((all[0].primary.as_str(), all[0].lag_bytes), ("n2", 0));
    }
}
