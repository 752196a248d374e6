//! Mirror fencing over the heartbeat registers: outdate requests and their
//! acknowledgements.
//!
//! Fencing (DRBD's "resource-only" fencing, without a separate channel): a sync primary
//! that loses the replication link to a peer holds writes and lists the peer in
//! `Mirror::pending_outdates`. This node then advertises an outdate request for that
//! peer in every heartbeat; heartbeats travel on their own paths, so they often still
//! get through. The peer marks its copy Outdated (persisted) and advertises the
//! generation it outdated itself for. Once that acknowledgement arrives, or the peer is
//! declared dead (silent on every heartbeat path, so it cannot promote a stale copy
//! behind our back without a split brain the placement core already handles), the
//! primary resumes writing and tracks the changes in the peer's bitmap.
//!
//! Pure: the daemon's main loop feeds [`decide`] the mirrors' and the live peers'
//! registers and carries out the [`FenceAction`]s.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::packet::MirrorRegister;
use crate::placement::policy::PeerView;

/// One local mirror, as fencing sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalFencing {
    pub name: String,
    pub primary: bool,
    /// (peer, my current generation) for each lost sync peer writes wait for.
    pub pending: Vec<(String, u64)>,
    /// The primary generation this copy already outdated itself for (0: none).
    pub outdated: u64,
}

/// What the daemon should do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FenceAction {
    /// The lost peer is Outdated or dead: let writes go on.
    PeerOutdated { mirror: String, peer: String },
    /// A primary asks this secondary copy to outdate itself.
    OutdateSelf { mirror: String, generation: u64 },
}

/// The mirror registers this node advertises.
pub fn registers(local: &[LocalFencing]) -> Vec<MirrorRegister> {
    local
        .iter()
        .map(|m| MirrorRegister {
            name: m.name.clone(),
            outdated: m.outdated,
            outdate_requests: if m.primary {
                m.pending.clone()
            } else {
                Vec::new()
            },
        })
        .collect()
}

/// Decides from the live peers' adverts. `live` holds only peers the membership
/// considers alive; `in_flight` are outdates already being carried out.
///
/// `dead_is_outdated`: without a quorum, a peer the membership declared dead counts as
/// outdated. With one, only the peer's own acknowledgement does here; the node core adds
/// outdatings the log committed.
pub fn decide(
    me: &str,
    local: &[LocalFencing],
    live: &[PeerView],
    in_flight: &BTreeSet<(String, u64)>,
    dead_is_outdated: bool,
) -> Vec<FenceAction> {
    let mut out = BTreeSet::new();
    for m in local {
        if m.primary {
            for (peer, generation) in &m.pending {
                let acked = live
                    .iter()
                    .find(|p| &p.name == peer)
                    .map(|p| register(p, &m.name).is_some_and(|r| r.outdated == *generation));
                // None: not alive (dead or never seen) -> it cannot be serving.
                if acked == Some(true) || (acked.is_none() && dead_is_outdated) {
                    out.insert(FenceAction::PeerOutdated {
                        mirror: m.name.clone(),
                        peer: peer.clone(),
                    });
                }
            }
        } else {
            for p in live {
                let Some(r) = register(p, &m.name) else {
                    continue;
                };
                for (target, generation) in &r.outdate_requests {
                    if target == me
                        && *generation != 0
                        && *generation != m.outdated
                        && !in_flight.contains(&(m.name.clone(), *generation))
                    {
                        out.insert(FenceAction::OutdateSelf {
                            mirror: m.name.clone(),
                            generation: *generation,
                        });
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

fn register<'a>(p: &'a PeerView, mirror: &str) -> Option<&'a MirrorRegister> {
    p.advert.mirrors.iter().find(|r| r.name == mirror)
}

/// Per mirror: the generation this copy outdated itself for.
pub type OutdatedFor = BTreeMap<String, u64>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::packet::NodeAdvert;

    fn peer(name: &str, mirrors: Vec<MirrorRegister>) -> PeerView {
        PeerView {
            name: name.into(),
            advert: NodeAdvert {
                mirrors,
                ..NodeAdvert::default()
            },
        }
    }

    fn primary(pending: Vec<(&str, u64)>) -> LocalFencing {
        LocalFencing {
            name: "data".into(),
            primary: true,
            pending: pending.into_iter().map(|(p, g)| (p.into(), g)).collect(),
            outdated: 0,
        }
    }

    #[test]
    fn with_a_quorum_a_dead_peer_is_not_outdated_by_silence() {
        let me = [primary(vec![("b", 7)])];
        assert!(decide("a", &me, &[], &BTreeSet::new(), false).is_empty());
    }

    #[test]
    fn a_primary_waits_for_a_live_peer_to_acknowledge() {
        let me = [primary(vec![("b", 7)])];
        let b_silent = peer("b", vec![]);
        assert!(decide("a", &me, &[b_silent], &BTreeSet::new(), true).is_empty());
        let b_old_ack = peer(
            "b",
            vec![MirrorRegister {
                name: "data".into(),
                outdated: 6,
                outdate_requests: vec![],
            }],
        );
        assert!(decide("a", &me, &[b_old_ack], &BTreeSet::new(), true).is_empty());
        let b_acked = peer(
            "b",
            vec![MirrorRegister {
                name: "data".into(),
                outdated: 7,
                outdate_requests: vec![],
            }],
        );
        assert_eq!(
            decide("a", &me, &[b_acked], &BTreeSet::new(), true),
            vec![FenceAction::PeerOutdated {
                mirror: "data".into(),
                peer: "b".into()
            }]
        );
    }

    #[test]
    fn a_dead_peer_counts_as_fenced() {
        let me = [primary(vec![("b", 7)])];
        assert_eq!(
            decide("a", &me, &[], &BTreeSet::new(), true),
            vec![FenceAction::PeerOutdated {
                mirror: "data".into(),
                peer: "b".into()
            }]
        );
    }

    #[test]
    fn a_secondary_outdates_itself_once_per_request() {
        let me = [LocalFencing {
            name: "data".into(),
            primary: false,
            pending: vec![],
            outdated: 0,
        }];
        let a = peer(
            "a",
            vec![MirrorRegister {
                name: "data".into(),
                outdated: 0,
                outdate_requests: vec![("b".into(), 9), ("c".into(), 9)],
            }],
        );
        let want = vec![FenceAction::OutdateSelf {
            mirror: "data".into(),
            generation: 9,
        }];
        assert_eq!(
            decide("b", &me, std::slice::from_ref(&a), &BTreeSet::new(), true),
            want
        );
        let busy = BTreeSet::from([("data".to_string(), 9)]);
        assert!(decide("b", &me, std::slice::from_ref(&a), &busy, true).is_empty());
        let done = [LocalFencing {
            outdated: 9,
            ..me[0].clone()
        }];
        assert!(decide("b", &done, std::slice::from_ref(&a), &BTreeSet::new(), true).is_empty());
        // A request for someone else is not ours.
        assert!(decide("d", &me, &[a], &BTreeSet::new(), true).is_empty());
    }

    #[test]
    fn only_a_primary_advertises_requests() {
        let mut m = primary(vec![("b", 3)]);
        assert_eq!(registers(&[m.clone()])[0].outdate_requests.len(), 1);
        m.primary = false;
        assert!(registers(&[m])[0].outdate_requests.is_empty());
    }
}
