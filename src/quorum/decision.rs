//! The cluster's decisions, as entries of the replicated log, and the register they
//! build when applied in log order.
//!
//! Every voter applies the same committed entries in the same order, so every voter's
//! [`Register`] is the same function of the log. An entry that no longer fits the
//! register when it is applied (an ownership claim for an epoch that another claim took
//! first) is applied as a no-op and reported as [`Applied::Stale`]: proposals race, the
//! log orders them, and the first one wins.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// One cluster decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Decision {
    /// `owner` owns `group` at `epoch`. Applies only if `epoch` is the group's current
    /// epoch + 1. `handoff` is true when the previous owner wrote it (a switchover or a
    /// switchback it carries out itself) rather than a node taking the group over.
    Own {
        group: String,
        owner: String,
        epoch: u64,
        #[serde(default)]
        handoff: bool,
        /// The register's [`Register::copies_version`] the proposer decided on: if an
        /// outdating or clearing of a copy committed since, the claim is stale (its
        /// proposer may not have known its own copy was outdated). `None` in entries
        /// written before this check, which apply as they did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        copies_seen: Option<u64>,
    },
    /// A mirror copy is outdated: the primary at `generation` may complete writes
    /// without it. Cleared by [`Decision::UpToDate`]. Generations are random
    /// identifiers, not ordered: an outdating of another generation replaces this one.
    Outdated {
        mirror: String,
        node: String,
        generation: u64,
    },
    /// A copy caught up again: a primary has it in sync. Clears only the outdating of
    /// `generation` (0, as written before it was recorded: any), so an UpToDate that
    /// the log orders after a newer outdating of the same copy changes nothing.
    UpToDate {
        mirror: String,
        node: String,
        #[serde(default)]
        generation: u64,
    },
    /// A group's maintenance flag (monitoring and recovery suspended).
    Maintenance { group: String, on: bool },
    /// A node's standby flag (`tandem node standby` / `online`): a node in standby
    /// runs no group; those it owns move away.
    Standby { node: String, on: bool },
    /// A node's configuration digest, as builds before heartbeat version 2 published
    /// it. Still decoded, so that their log entries replay, but applied as a no-op:
    /// digests now travel in heartbeats (`cluster::packet`), in both modes.
    ConfigDigest { node: String, digest: String },
}

impl Decision {
    /// The log entry's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // A Decision holds only strings, integers and booleans: serialisation cannot
        // fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses a log entry. An entry that does not parse (written by a newer version)
    /// is skipped by the caller and counted.
    pub fn decode(data: &[u8]) -> Result<Decision, serde_json::Error> {
        serde_json::from_slice(data)
    }
}

/// A group's committed owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ownership {
    pub owner: String,
    pub epoch: u64,
    /// The previous owner wrote this epoch itself, after stopping the group.
    pub handoff: bool,
    /// The owner before this epoch.
    pub previous: Option<String>,
}

/// The applied state of the log: what every voter agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Register {
    /// The log index this register reflects.
    pub applied: u64,
    pub owners: BTreeMap<String, Ownership>,
    /// (mirror, node) -> the primary generation the copy was outdated for.
    pub outdated: BTreeMap<(String, String), u64>,
    /// Groups in maintenance.
    pub maintenance: BTreeSet<String>,
    /// Nodes in standby.
    pub standby: BTreeSet<String>,
    /// How many times `outdated` changed: an ownership claim names the version it
    /// was decided on.
    pub copies_version: u64,
}

/// How an entry applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    Changed(Decision),
    /// The entry no longer fits (e.g. a claim for an epoch taken first by another).
    Stale(Decision),
}

impl Register {
    /// Applies one committed entry at `index`.
    pub fn apply(&mut self, index: u64, d: Decision) -> Applied {
        self.applied = self.applied.max(index);
        match &d {
            Decision::Own {
                group,
                owner,
                epoch,
                handoff,
                copies_seen,
            } => {
                let current = self.owners.get(group);
                if *epoch != current.map_or(0, |o| o.epoch) + 1
                    || copies_seen.is_some_and(|v| v != self.copies_version)
                {
                    return Applied::Stale(d);
                }
                let previous = current.map(|o| o.owner.clone());
                self.owners.insert(
                    group.clone(),
                    Ownership {
                        owner: owner.clone(),
                        epoch: *epoch,
                        handoff: *handoff,
                        previous,
                    },
                );
            }
            Decision::Outdated {
                mirror,
                node,
                generation,
            } => {
                let key = (mirror.clone(), node.clone());
                if self.outdated.get(&key) == Some(generation) {
                    return Applied::Stale(d);
                }
                self.outdated.insert(key, *generation);
                self.copies_version += 1;
            }
            Decision::UpToDate {
                mirror,
                node,
                generation,
            } => {
                let key = (mirror.clone(), node.clone());
                match self.outdated.get(&key) {
                    Some(g) if *generation == 0 || g == generation => {
                        self.outdated.remove(&key);
                        self.copies_version += 1;
                    }
                    _ => return Applied::Stale(d),
                }
            }
            Decision::Maintenance { group, on } => {
                let changed = if *on {
                    self.maintenance.insert(group.clone())
                } else {
                    self.maintenance.remove(group)
                };
                if !changed {
                    return Applied::Stale(d);
                }
            }
            Decision::Standby { node, on } => {
                let changed = if *on {
                    self.standby.insert(node.clone())
                } else {
                    self.standby.remove(node)
                };
                if !changed {
                    return Applied::Stale(d);
                }
            }
            // An older build's entry: ignored (see the variant).
            Decision::ConfigDigest { .. } => return Applied::Stale(d),
        }
        Applied::Changed(d)
    }

    /// The committed owner of `group`.
    pub fn owner(&self, group: &str) -> Option<&Ownership> {
        self.owners.get(group)
    }

    /// Whether the log records `node`'s copy of `mirror` as outdated for `generation`
    /// (a primary's held writes go on only once the log has that very outdating).
    pub fn is_outdated(&self, mirror: &str, node: &str, generation: u64) -> bool {
        self.outdated.get(&(mirror.to_string(), node.to_string())) == Some(&generation)
    }

    /// Snapshot bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Maps with tuple keys are not JSON objects; serialise through a list.
        let wire = RegisterWire {
            applied: self.applied,
            owners: self.owners.clone(),
            outdated: self
                .outdated
                .iter()
                .map(|((m, n), g)| (m.clone(), n.clone(), *g))
                .collect(),
            config_digests: BTreeMap::new(),
            maintenance: self.maintenance.clone(),
            standby: self.standby.clone(),
            copies_version: self.copies_version,
        };
        serde_json::to_vec(&wire).unwrap_or_default()
    }

    /// Parses snapshot bytes (empty bytes: the empty register).
    pub fn decode(data: &[u8]) -> Result<Register, serde_json::Error> {
        if data.is_empty() {
            return Ok(Register::default());
        }
        let w: RegisterWire = serde_json::from_slice(data)?;
        Ok(Register {
            applied: w.applied,
            owners: w.owners,
            outdated: w
                .outdated
                .into_iter()
                .map(|(m, n, g)| ((m, n), g))
                .collect(),
            maintenance: w.maintenance,
            standby: w.standby,
            copies_version: w.copies_version,
        })
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterWire {
    applied: u64,
    owners: BTreeMap<String, Ownership>,
    outdated: Vec<(String, String, u64)>,
    /// Written empty and ignored on read: builds before heartbeat version 2 kept
    /// configuration digests here, and still require the field in a snapshot.
    #[serde(default)]
    config_digests: BTreeMap<String, String>,
    #[serde(default)]
    maintenance: BTreeSet<String>,
    /// Absent from snapshots written before standby went through the log.
    #[serde(default)]
    standby: BTreeSet<String>,
    /// Absent from snapshots written before ownership claims named it.
    #[serde(default)]
    copies_version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(group: &str, owner: &str, epoch: u64) -> Decision {
        Decision::Own {
            group: group.into(),
            owner: owner.into(),
            epoch,
            handoff: false,
            copies_seen: None,
        }
    }

    #[test]
    fn a_claim_decided_before_a_copy_was_outdated_is_stale() {
        let mut r = Register::default();
        let claim = |seen| Decision::Own {
            group: "g".into(),
            owner: "n2".into(),
            epoch: 1,
            handoff: false,
            copies_seen: Some(seen),
        };
        let outdate = Decision::Outdated {
            mirror: "m".into(),
            node: "n2".into(),
            generation: 7,
        };
        assert!(matches!(r.apply(1, outdate), Applied::Changed(_)));
        // n2 decided on the register before it learnt of its outdating.
        assert!(matches!(r.apply(2, claim(0)), Applied::Stale(_)));
        assert!(r.owner("g").is_none());
        // A claim decided on the current register applies; the version survives a
        // snapshot.
        let r2 = Register::decode(&r.encode()).unwrap();
        assert_eq!(r2.copies_version, 1);
        assert!(matches!(r.apply(3, claim(1)), Applied::Changed(_)));
    }

    #[test]
    fn the_first_claim_for_an_epoch_wins_and_later_ones_are_stale() {
        let mut r = Register::default();
        assert!(matches!(r.apply(1, own("g", "n1", 1)), Applied::Changed(_)));
        assert!(matches!(r.apply(2, own("g", "n2", 1)), Applied::Stale(_)));
        assert_eq!(r.owner("g").map(|o| o.owner.as_str()), Some("n1"));
        assert!(matches!(r.apply(3, own("g", "n2", 2)), Applied::Changed(_)));
        let o = r.owner("g").unwrap();
        assert_eq!((o.owner.as_str(), o.epoch), ("n2", 2));
        assert_eq!(o.previous.as_deref(), Some("n1"));
        assert!(matches!(r.apply(4, own("g", "n3", 5)), Applied::Stale(_)));
        assert_eq!(r.applied, 4);
    }

    /// Generations are random: a newer outdating may compare lower. Each outdating
    /// replaces the last, and an UpToDate clears only the outdating it answers, so one
    /// ordered after a newer outdating (the copy was lost again meanwhile) is stale.
    #[test]
    fn outdating_replaces_and_up_to_date_clears_only_its_own_outdating() {
        let mut r = Register::default();
        let out = |g| Decision::Outdated {
            mirror: "m".into(),
            node: "n2".into(),
            generation: g,
        };
        let up = |g| Decision::UpToDate {
            mirror: "m".into(),
            node: "n2".into(),
            generation: g,
        };
        assert!(matches!(r.apply(1, out(5)), Applied::Changed(_)));
        assert!(r.is_outdated("m", "n2", 5));
        assert!(!r.is_outdated("m", "n2", 6));
        assert!(matches!(r.apply(2, out(5)), Applied::Stale(_)));
        assert!(matches!(r.apply(3, out(4)), Applied::Changed(_)));
        assert!(r.is_outdated("m", "n2", 4));
        assert!(!r.is_outdated("m", "n2", 5));
        // In sync at 5, then lost again at 4: the late UpToDate(5) changes nothing.
        assert!(matches!(r.apply(4, up(5)), Applied::Stale(_)));
        assert!(r.is_outdated("m", "n2", 4));
        assert!(matches!(r.apply(5, up(4)), Applied::Changed(_)));
        assert!(!r.is_outdated("m", "n2", 4));
        assert!(matches!(r.apply(6, up(4)), Applied::Stale(_)));
        // An UpToDate written before it carried the generation clears any.
        r.apply(7, out(9));
        let old: Decision =
            serde_json::from_str(r#"{"up_to_date":{"mirror":"m","node":"n2"}}"#).unwrap();
        assert_eq!(old, up(0));
        assert!(matches!(r.apply(8, old), Applied::Changed(_)));
        assert!(r.outdated.is_empty());
    }

    #[test]
    fn decisions_and_registers_round_trip() {
        let mut r = Register::default();
        r.apply(1, own("g", "n1", 1));
        r.apply(
            2,
            Decision::Outdated {
                mirror: "m".into(),
                node: "n2".into(),
                generation: 3,
            },
        );
        let old = Decision::ConfigDigest {
            node: "n1".into(),
            digest: "abc".into(),
        };
        // An older build's digest entry still decodes, and changes nothing.
        assert_eq!(Decision::decode(&old.encode()).unwrap(), old);
        assert!(matches!(r.apply(3, old), Applied::Stale(_)));
        assert_eq!(Register::decode(&r.encode()).unwrap(), r);
        // Older builds require the field in a snapshot: it is written, empty.
        let snapshot: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        assert_eq!(snapshot["config_digests"], serde_json::json!({}));
        assert_eq!(Register::decode(&[]).unwrap(), Register::default());
        let d = own("g", "n1", 7);
        assert_eq!(Decision::decode(&d.encode()).unwrap(), d);
        assert!(Decision::decode(b"{\"own\":{}}").is_err());
    }

    #[test]
    fn standby_applies_in_log_order_and_survives_a_snapshot() {
        let mut r = Register::default();
        let standby = |node: &str, on| Decision::Standby {
            node: node.into(),
            on,
        };
        assert!(matches!(
            r.apply(1, standby("n2", true)),
            Applied::Changed(_)
        ));
        assert!(matches!(r.apply(2, standby("n2", true)), Applied::Stale(_)));
        assert!(matches!(
            r.apply(3, standby("n3", true)),
            Applied::Changed(_)
        ));
        assert!(matches!(
            r.apply(4, standby("n3", false)),
            Applied::Changed(_)
        ));
        assert!(matches!(
            r.apply(5, standby("n1", false)),
            Applied::Stale(_)
        ));
        assert_eq!(r.standby, BTreeSet::from(["n2".to_string()]));
        let back = Register::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert!(back.standby.contains("n2"));
        let d = standby("n2", false);
        assert_eq!(Decision::decode(&d.encode()).unwrap(), d);
        assert!(Decision::decode(b"{\"standby\":{\"node\":\"n1\",\"on\":true,\"x\":1}}").is_err());
    }

    #[test]
    fn a_snapshot_written_before_standby_was_logged_decodes_with_nobody_in_standby() {
        // The snapshot format before `standby` (and `maintenance`) were fields.
        let old = br#"{"applied":7,"owners":{"g":{"owner":"n1","epoch":2,"handoff":false,"previous":null}},"outdated":[["m","n2",3]],"config_digests":{"n1":"abc"}}"#;
        let r = Register::decode(old).unwrap();
        assert_eq!(r.applied, 7);
        assert_eq!(r.owner("g").map(|o| o.epoch), Some(2));
        assert!(r.standby.is_empty() && r.maintenance.is_empty());
    }
}
