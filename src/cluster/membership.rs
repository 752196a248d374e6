//! Sans-IO membership core: decides which peers and heartbeat paths are
//! alive from authenticated heartbeats, with replay protection and RTT
//! estimation.
//!
//! The core owns no sockets, clocks or tasks (the "sans-IO" pattern, as in
//! e.g. quinn-proto / h11): the runtime feeds it decoded [`Heartbeat`]s and
//! periodic [`Input::Tick`]s, always passing the current monotonic time in
//! milliseconds, and acts on the returned [`MembershipEvent`]s. This keeps it
//! deterministic, so seeded simulations replay exactly (all maps are
//! `BTreeMap`s and all listings are sorted).
//!
//! Rules (mirroring keepalived's / Corosync's "dead after N missed
//! intervals" model, but per path):
//! - a path to a peer is up while an accepted packet arrived on it less than
//!   `dead_time_ms` ago; going down is detected on `Tick`;
//! - a peer is alive while at least one of its paths is up, so losing one
//!   redundant path never declares the peer dead;
//! - replays are rejected per peer boot and per path: a boot is identified by
//!   `(boot_time_ms, boot_id)`, compared lexicographically; within the
//!   current boot each path's highest sequence number must strictly increase
//!   (the sender's `seq` increases across all paths, so per-path tracking
//!   tolerates reordering *between* paths without accepting duplicates);
//! - a packet must arrive on the path it says it was sent on, otherwise a
//!   packet captured on one network could be replayed on another to fake
//!   that path's liveness;
//! - each peer's protocol ([`PeerProtocol`]: newest wire version, config digest) is
//!   the one of its newest accepted packet, forgotten when it boots again; the node
//!   core encodes for it at [`super::packet::version_for`] and compares digests.

use std::collections::BTreeMap;

use super::packet::{Echo, Heartbeat, NodeAdvert};

/// Default dead time: five missed heartbeats at the default 200 ms interval.
pub const DEFAULT_DEAD_TIME_MS: u64 = 1000;

/// Rejection reason: sequence number not above the path's highest for the
/// current boot.
pub const REJECT_REPLAYED: &str = "replayed";
/// Rejection reason: packet from a boot older than the peer's current one.
pub const REJECT_STALE_BOOT: &str = "stale_boot";
/// Rejection reason: sender is not a configured peer.
pub const REJECT_UNKNOWN_NODE: &str = "unknown_node";
/// Rejection reason: the receiving path is not configured for the peer.
pub const REJECT_UNKNOWN_PATH: &str = "unknown_path";
/// Rejection reason: the packet's `path` field differs from the path it
/// arrived on (cross-path replay or miswiring).
pub const REJECT_PATH_MISMATCH: &str = "path_mismatch";
/// Rejection reason: the packet claims to come from the local node.
pub const REJECT_SELF: &str = "self";

/// A configured peer and the heartbeat path indices it is reachable on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub name: String,
    pub paths: Vec<u8>,
}

/// Static configuration of the membership core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipConfig {
    /// Local node name; packets claiming it are rejected.
    pub local: String,
    /// Silence after which a path (and, if all paths, the node) is down.
    pub dead_time_ms: u64,
    pub peers: Vec<PeerSpec>,
}

/// Configuration problems reported by [`MembershipConfig::validate`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("dead_time_ms must be positive")]
    ZeroDeadTime,
    #[error("peer {0:?} has the local node's name")]
    PeerIsLocal(String),
    #[error("peer {0:?} is listed twice")]
    DuplicatePeer(String),
    #[error("peer {0:?} has no heartbeat paths")]
    NoPaths(String),
}

impl MembershipConfig {
    /// Checks the configuration. [`Membership::new`] tolerates invalid
    /// configs (duplicate peers are merged, a peer named like the local node
    /// is ignored), but the runtime should refuse to start on one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.dead_time_ms == 0 {
            return Err(ConfigError::ZeroDeadTime);
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.name == self.local {
                return Err(ConfigError::PeerIsLocal(p.name.clone()));
            }
            if self.peers[..i].iter().any(|o| o.name == p.name) {
                return Err(ConfigError::DuplicatePeer(p.name.clone()));
            }
            if p.paths.is_empty() {
                return Err(ConfigError::NoPaths(p.name.clone()));
            }
        }
        Ok(())
    }
}

/// Input to [`Membership::handle`].
#[derive(Debug, Clone)]
pub enum Input {
    /// A heartbeat that passed [`super::packet::decode`], received on `path`.
    Packet { path: u8, hb: Box<Heartbeat> },
    /// Periodic timer; detects silent paths and nodes.
    Tick,
}

/// Output of [`Membership::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipEvent {
    PathUp {
        peer: String,
        path: u8,
    },
    PathDown {
        peer: String,
        path: u8,
        silent_ms: u64,
    },
    NodeUp {
        peer: String,
        boot_id: u64,
    },
    /// All paths silent for at least the dead time.
    NodeDown {
        peer: String,
        silent_ms: u64,
    },
    /// A new boot was seen while the node was considered up.
    NodeRestarted {
        peer: String,
        old_boot_id: u64,
        new_boot_id: u64,
    },
    /// `peer` is `Some` only for configured peers (not for `unknown_node`,
    /// `self`, or decoder errors).
    Rejected {
        peer: Option<String>,
        path: u8,
        reason: &'static str,
    },
}

/// Status of one (peer, path) pair.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PathStatus {
    pub peer: String,
    pub path: u8,
    pub up: bool,
    pub last_heard_ms: Option<u64>,
    /// Smoothed round-trip time, once an echo was received.
    pub rtt_ms: Option<f64>,
}

/// Status of one peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub alive: bool,
    pub boot_id: Option<u64>,
    pub last_heard_ms: Option<u64>,
    /// Indices of the paths currently up, ascending.
    pub paths_up: Vec<u8>,
    /// What its newest heartbeat of this boot advertised; `None` before one.
    pub protocol: Option<PeerProtocol>,
}

/// What a peer's heartbeats say about its build and configuration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerProtocol {
    /// The version of its newest heartbeat.
    pub version: u8,
    /// The newest heartbeat version its build speaks.
    pub max_version: u8,
    /// Its [`crate::config::cluster_digest`]; empty when not sent (version 1).
    pub config_digest: String,
}

/// Packet accounting.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    /// Packets accepted by the core.
    pub accepted: u64,
    /// Rejections by reason (core and decoder reasons alike).
    pub rejected: BTreeMap<&'static str, u64>,
    /// Rejections by receiving path, to spot one bad link.
    pub rejected_by_path: BTreeMap<u8, u64>,
}

impl Counters {
    /// Counts one rejection under `reason`.
    pub fn count_rejected(&mut self, reason: &'static str) {
        *self.rejected.entry(reason).or_insert(0) += 1;
    }

    /// Number of rejections counted under `reason`.
    pub fn rejected(&self, reason: &str) -> u64 {
        self.rejected.get(reason).copied().unwrap_or(0)
    }

    fn count_rejected_on(&mut self, path: u8, reason: &'static str) {
        self.count_rejected(reason);
        *self.rejected_by_path.entry(path).or_insert(0) += 1;
    }
}

#[derive(Debug, Default)]
struct PathState {
    up: bool,
    last_heard_ms: Option<u64>,
    /// Highest seq accepted on this path in the current boot.
    highest_seq: Option<u64>,
    rtt_ms: Option<f64>,
    /// (`sent_ms` of the latest accepted packet, local receive time), to echo.
    last_rx: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Boot {
    // Field order matters: derived Ord compares time first, then id.
    time_ms: u64,
    id: u64,
}

#[derive(Debug, Default)]
struct PeerState {
    paths: BTreeMap<u8, PathState>,
    boot: Option<Boot>,
    alive: bool,
    last_heard_ms: Option<u64>,
    /// (seq, advert) of the newest accepted packet of the current boot.
    advert: Option<(u64, NodeAdvert)>,
    /// The protocol of that same packet.
    protocol: Option<PeerProtocol>,
}

/// The membership state machine. See the module docs.
#[derive(Debug)]
pub struct Membership {
    local: String,
    dead_time_ms: u64,
    peers: BTreeMap<String, PeerState>,
    counters: Counters,
}

/// RFC 6298 §2.3 smoothing gain (alpha = 1/8) for the RTT estimate.
const RTT_ALPHA: f64 = 0.125;

impl Membership {
    pub fn new(cfg: MembershipConfig) -> Self {
        let mut peers: BTreeMap<String, PeerState> = BTreeMap::new();
        for spec in cfg.peers {
            if spec.name == cfg.local {
                continue;
            }
            let peer = peers.entry(spec.name).or_default();
            for p in spec.paths {
                peer.paths.entry(p).or_default();
            }
        }
        Membership {
            local: cfg.local,
            dead_time_ms: cfg.dead_time_ms,
            peers,
            counters: Counters::default(),
        }
    }

    /// Feeds one input at monotonic time `now_ms`; returns the resulting
    /// events in a deterministic order.
    pub fn handle(&mut self, now_ms: u64, input: Input) -> Vec<MembershipEvent> {
        let mut events = Vec::new();
        match input {
            Input::Tick => self.tick(now_ms, &mut events),
            Input::Packet { path, hb } => match self.accept(now_ms, path, *hb, &mut events) {
                Ok(()) => self.counters.accepted += 1,
                Err((peer, reason)) => {
                    self.counters.count_rejected_on(path, reason);
                    events.push(MembershipEvent::Rejected { peer, path, reason });
                }
            },
        }
        events
    }

    /// Records a datagram the decoder rejected (e.g. `DecodeError::reason()`)
    /// so all rejections are counted in one place.
    pub fn record_decode_error(&mut self, path: u8, reason: &'static str) {
        self.counters.count_rejected_on(path, reason);
    }

    fn tick(&mut self, now_ms: u64, events: &mut Vec<MembershipEvent>) {
        let dead = self.dead_time_ms;
        for (name, peer) in &mut self.peers {
            for (&idx, p) in &mut peer.paths {
                if !p.up {
                    continue;
                }
                let silent_ms = p
                    .last_heard_ms
                    .map_or(u64::MAX, |t| now_ms.saturating_sub(t));
                if silent_ms >= dead {
                    p.up = false;
                    events.push(MembershipEvent::PathDown {
                        peer: name.clone(),
                        path: idx,
                        silent_ms,
                    });
                }
            }
            // A node is down only when every path is down, i.e. every path
            // has been silent for at least the dead time.
            if peer.alive && peer.paths.values().all(|p| !p.up) {
                peer.alive = false;
                events.push(MembershipEvent::NodeDown {
                    peer: name.clone(),
                    silent_ms: peer
                        .last_heard_ms
                        .map_or(u64::MAX, |t| now_ms.saturating_sub(t)),
                });
            }
        }
    }

    /// Validates and applies one packet. On rejection nothing is changed.
    fn accept(
        &mut self,
        now_ms: u64,
        path: u8,
        hb: Heartbeat,
        events: &mut Vec<MembershipEvent>,
    ) -> Result<(), (Option<String>, &'static str)> {
        if hb.node == self.local {
            return Err((None, REJECT_SELF));
        }
        let Some(peer) = self.peers.get_mut(&hb.node) else {
            return Err((None, REJECT_UNKNOWN_NODE));
        };
        let reject = |reason| Err((Some(hb.node.clone()), reason));
        let Some(ps) = peer.paths.get(&path) else {
            return reject(REJECT_UNKNOWN_PATH);
        };
        if hb.path != path {
            return reject(REJECT_PATH_MISMATCH);
        }
        let boot = Boot {
            time_ms: hb.boot_time_ms,
            id: hb.boot_id,
        };
        let new_boot = match peer.boot {
            None => true,
            Some(cur) if boot < cur => return reject(REJECT_STALE_BOOT),
            Some(cur) if boot == cur => {
                if ps.highest_seq.is_some_and(|h| hb.seq <= h) {
                    return reject(REJECT_REPLAYED);
                }
                false
            }
            Some(_) => true,
        };

        // Accepted: apply.
        if new_boot {
            if let (Some(old), true) = (peer.boot, peer.alive) {
                events.push(MembershipEvent::NodeRestarted {
                    peer: hb.node.clone(),
                    old_boot_id: old.id,
                    new_boot_id: boot.id,
                });
            }
            peer.boot = Some(boot);
            peer.advert = None;
            peer.protocol = None;
            for p in peer.paths.values_mut() {
                p.highest_seq = None;
                // The old boot's sent_ms values mean nothing to the new
                // daemon; do not echo them.
                p.last_rx = None;
            }
        }
        let ps = peer.paths.entry(path).or_default();
        ps.highest_seq = Some(hb.seq);
        ps.last_heard_ms = Some(now_ms);
        ps.last_rx = Some((hb.sent_ms, now_ms));
        if let Some(echo) = &hb.echo {
            // The echo carries our own sent_ms; one from the future cannot be
            // ours (e.g. from before a host reboot), so it is ignored.
            if echo.peer_sent_ms <= now_ms {
                let sample = now_ms
                    .saturating_sub(echo.peer_sent_ms)
                    .saturating_sub(u64::from(echo.held_ms)) as f64;
                ps.rtt_ms = Some(match ps.rtt_ms {
                    None => sample,
                    Some(srtt) => (1.0 - RTT_ALPHA) * srtt + RTT_ALPHA * sample,
                });
            }
        }
        if !ps.up {
            ps.up = true;
            events.push(MembershipEvent::PathUp {
                peer: hb.node.clone(),
                path,
            });
        }
        peer.last_heard_ms = Some(peer.last_heard_ms.map_or(now_ms, |t| t.max(now_ms)));
        // Packets can arrive out of order across paths: keep the advert of
        // the highest seq seen in this boot.
        if peer.advert.as_ref().is_none_or(|(s, _)| hb.seq > *s) {
            peer.advert = Some((hb.seq, hb.advert));
            peer.protocol = Some(PeerProtocol {
                version: hb.version,
                max_version: hb.max_version,
                config_digest: hb.config_digest,
            });
        }
        if !peer.alive {
            peer.alive = true;
            events.push(MembershipEvent::NodeUp {
                peer: hb.node,
                boot_id: boot.id,
            });
        }
        Ok(())
    }

    pub fn is_alive(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.alive)
    }

    /// Names of live peers, sorted.
    pub fn live_peers(&self) -> Vec<String> {
        self.peers
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Newest advert of a live peer; `None` if the peer is dead or unknown.
    pub fn advert(&self, peer: &str) -> Option<&NodeAdvert> {
        let p = self.peers.get(peer)?;
        if !p.alive {
            return None;
        }
        p.advert.as_ref().map(|(_, a)| a)
    }

    /// What `peer`'s newest heartbeat of its current boot advertised (kept while it
    /// is dead, so a restart with another build is learned from its first packet).
    pub fn protocol(&self, peer: &str) -> Option<&PeerProtocol> {
        self.peers.get(peer)?.protocol.as_ref()
    }

    /// Every configured (peer, path), sorted by peer then path.
    pub fn paths(&self) -> Vec<PathStatus> {
        self.peers
            .iter()
            .flat_map(|(name, peer)| {
                peer.paths.iter().map(move |(&path, p)| PathStatus {
                    peer: name.clone(),
                    path,
                    up: p.up,
                    last_heard_ms: p.last_heard_ms,
                    rtt_ms: p.rtt_ms,
                })
            })
            .collect()
    }

    /// Live peers that have been silent on every path for at least
    /// `dead_time - lead_ms`: about to be declared dead unless a packet arrives. The
    /// placement core probes their floating IPs ahead of the takeover. Sorted by name.
    pub fn nearly_dead_peers(&self, now_ms: u64, lead_ms: u64) -> Vec<String> {
        let threshold = self.dead_time_ms().saturating_sub(lead_ms);
        self.peers
            .iter()
            .filter(|(_, p)| {
                p.alive
                    && p.last_heard_ms
                        .is_some_and(|t| now_ms.saturating_sub(t) >= threshold)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every configured peer, sorted by name.
    pub fn peer_status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(name, p)| PeerStatus {
                name: name.clone(),
                alive: p.alive,
                boot_id: p.boot.map(|b| b.id),
                last_heard_ms: p.last_heard_ms,
                paths_up: p
                    .paths
                    .iter()
                    .filter(|(_, s)| s.up)
                    .map(|(&i, _)| i)
                    .collect(),
                protocol: p.protocol.clone(),
            })
            .collect()
    }

    /// The echo to put in our next packet to `peer` on `path`: the latest
    /// accepted packet from it on that path and how long we have held it.
    /// `None` if nothing was received in the peer's current boot, or if it
    /// was held for the dead time or longer (too stale to measure anything).
    pub fn echo_for(&self, peer: &str, path: u8, now_ms: u64) -> Option<Echo> {
        let (peer_sent_ms, rx_ms) = self.peers.get(peer)?.paths.get(&path)?.last_rx?;
        let held = now_ms.checked_sub(rx_ms)?;
        if held >= self.dead_time_ms {
            return None;
        }
        Some(Echo {
            peer_sent_ms,
            held_ms: u32::try_from(held).ok()?,
        })
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The configured dead time in milliseconds.
    pub fn dead_time_ms(&self) -> u64 {
        self.dead_time_ms
    }
}

#[cfg(test)]
mod tests {
    use super::MembershipEvent as Ev;
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn cfg() -> MembershipConfig {
        MembershipConfig {
            local: "a".into(),
            dead_time_ms: DEFAULT_DEAD_TIME_MS,
            peers: vec![
                PeerSpec {
                    name: "b".into(),
                    paths: vec![0, 1],
                },
                PeerSpec {
                    name: "c".into(),
                    paths: vec![0],
                },
            ],
        }
    }

    fn hb(node: &str, boot: (u64, u64), seq: u64, path: u8) -> Heartbeat {
        Heartbeat {
            version: 1,
            max_version: 1,
            config_digest: String::new(),
            cluster: "prod".into(),
            node: node.into(),
            boot_id: boot.0,
            boot_time_ms: boot.1,
            seq,
            path,
            sent_ms: 10_000 + seq,
            echo: None,
            advert: NodeAdvert {
                priority: seq as u32,
                ..NodeAdvert::default()
            },
        }
    }

    const B1: (u64, u64) = (111, 1_000);
    const B2: (u64, u64) = (222, 2_000);

    fn pkt(node: &str, boot: (u64, u64), seq: u64, path: u8) -> Input {
        Input::Packet {
            path,
            hb: Box::new(hb(node, boot, seq, path)),
        }
    }

    fn rejected(peer: Option<&str>, path: u8, reason: &'static str) -> Vec<Ev> {
        vec![Ev::Rejected {
            peer: peer.map(str::to_owned),
            path,
            reason,
        }]
    }

    #[test]
    fn nearly_dead_peers_are_live_peers_silent_for_most_of_the_dead_time() {
        let mut m = Membership::new(cfg());
        m.handle(0, pkt("b", B1, 1, 0));
        m.handle(0, pkt("c", B1, 1, 0));
        m.handle(700, pkt("c", B1, 2, 0));
        // dead time 1000, lead 200: b (silent 800) qualifies, c (silent 100) not.
        assert_eq!(m.nearly_dead_peers(800, 200), vec!["b".to_string()]);
        assert!(m.nearly_dead_peers(799, 200).is_empty());
        // Once declared dead it is no longer "nearly" dead.
        m.handle(1000, Input::Tick);
        assert!(!m.is_alive("b"));
        assert!(m.nearly_dead_peers(1000, 200).is_empty());
    }

    #[test]
    fn first_packet_brings_path_and_node_up() {
        let mut m = Membership::new(cfg());
        assert!(!m.is_alive("b"));
        assert_eq!(m.advert("b"), None);
        let ev = m.handle(100, pkt("b", B1, 1, 0));
        assert_eq!(
            ev,
            vec![
                Ev::PathUp {
                    peer: "b".into(),
                    path: 0
                },
                Ev::NodeUp {
                    peer: "b".into(),
                    boot_id: 111
                },
            ]
        );
        assert!(m.is_alive("b"));
        assert_eq!(m.live_peers(), vec!["b".to_string()]);
        assert_eq!(m.advert("b").map(|a| a.priority), Some(1));
        // Second path: only PathUp.
        let ev = m.handle(150, pkt("b", B1, 2, 1));
        assert_eq!(
            ev,
            vec![Ev::PathUp {
                peer: "b".into(),
                path: 1
            }]
        );
        // Further packets on up paths are silent.
        assert_eq!(m.handle(300, pkt("b", B1, 3, 0)), vec![]);
        assert_eq!(m.counters().accepted, 3);
        assert_eq!(
            m.peer_status()[0],
            PeerStatus {
                name: "b".into(),
                alive: true,
                boot_id: Some(111),
                last_heard_ms: Some(300),
                paths_up: vec![0, 1],
                protocol: Some(PeerProtocol {
                    version: 1,
                    max_version: 1,
                    config_digest: String::new(),
                }),
            }
        );
        assert_eq!(m.live_peers(), vec!["b".to_string()]);
    }

    #[test]
    fn path_down_exactly_at_dead_time_but_node_stays_up() {
        let mut m = Membership::new(cfg());
        m.handle(0, pkt("b", B1, 1, 0));
        m.handle(0, pkt("b", B1, 2, 1));
        m.handle(500, pkt("b", B1, 3, 1));
        assert_eq!(m.handle(999, Input::Tick), vec![]);
        assert_eq!(
            m.handle(1000, Input::Tick),
            vec![Ev::PathDown {
                peer: "b".into(),
                path: 0,
                silent_ms: 1000
            }]
        );
        assert!(m.is_alive("b"), "one path left: node must stay up");
        assert_eq!(m.handle(1200, Input::Tick), vec![]);
        let st = m.paths();
        assert_eq!(st.len(), 3);
        assert_eq!((st[0].peer.as_str(), st[0].path, st[0].up), ("b", 0, false));
        assert_eq!((st[1].peer.as_str(), st[1].path, st[1].up), ("b", 1, true));
        assert_eq!(st[1].last_heard_ms, Some(500));
        assert_eq!((st[2].peer.as_str(), st[2].up), ("c", false));
    }

    #[test]
    fn node_down_when_all_paths_silent_and_back_up() {
        let mut m = Membership::new(cfg());
        m.handle(0, pkt("b", B1, 1, 0));
        m.handle(200, pkt("b", B1, 2, 1));
        m.handle(1000, Input::Tick);
        assert!(m.is_alive("b"));
        assert_eq!(
            m.handle(1250, Input::Tick),
            vec![
                Ev::PathDown {
                    peer: "b".into(),
                    path: 1,
                    silent_ms: 1050
                },
                Ev::NodeDown {
                    peer: "b".into(),
                    silent_ms: 1050
                },
            ]
        );
        assert!(!m.is_alive("b"));
        assert!(m.live_peers().is_empty());
        assert_eq!(m.advert("b"), None, "dead peers have no advert");
        assert_eq!(m.handle(1300, Input::Tick), vec![], "reported once");
        // Same boot comes back (e.g. healed partition).
        assert_eq!(
            m.handle(1400, pkt("b", B1, 9, 1)),
            vec![
                Ev::PathUp {
                    peer: "b".into(),
                    path: 1
                },
                Ev::NodeUp {
                    peer: "b".into(),
                    boot_id: 111
                },
            ]
        );
        assert_eq!(m.advert("b").map(|a| a.priority), Some(9));
    }

    #[test]
    fn replays_are_rejected_and_do_not_keep_node_alive() {
        let mut m = Membership::new(cfg());
        m.handle(0, pkt("b", B1, 5, 0));
        assert_eq!(
            m.handle(10, pkt("b", B1, 5, 0)),
            rejected(Some("b"), 0, REJECT_REPLAYED)
        );
        assert_eq!(
            m.handle(20, pkt("b", B1, 4, 0)),
            rejected(Some("b"), 0, REJECT_REPLAYED)
        );
        // Replays keep arriving, but the node still dies on time.
        for t in (100..1000).step_by(100) {
            assert_eq!(
                m.handle(t, pkt("b", B1, 5, 0)),
                rejected(Some("b"), 0, REJECT_REPLAYED)
            );
        }
        m.handle(1000, Input::Tick);
        assert!(!m.is_alive("b"));
        // ...and a replay cannot resurrect it.
        assert_eq!(
            m.handle(1100, pkt("b", B1, 5, 0)),
            rejected(Some("b"), 0, REJECT_REPLAYED)
        );
        assert!(!m.is_alive("b"));
        assert_eq!(m.counters().rejected(REJECT_REPLAYED), 12);
        assert_eq!(m.counters().rejected_by_path.get(&0), Some(&12));
        assert_eq!(m.counters().accepted, 1);
    }

    #[test]
    fn sequence_is_tracked_per_path_and_advert_is_newest() {
        let mut m = Membership::new(cfg());
        m.handle(0, pkt("b", B1, 10, 1));
        // Older seq on another path (reordering between networks) is fine...
        assert_eq!(
            m.handle(1, pkt("b", B1, 9, 0)),
            vec![Ev::PathUp {
                peer: "b".into(),
                path: 0
            }]
        );
        // ...but the advert stays the one from seq 10.
        assert_eq!(m.advert("b").map(|a| a.priority), Some(10));
        m.handle(2, pkt("b", B1, 11, 0));
        assert_eq!(m.advert("b").map(|a| a.priority), Some(11));
    }

    #[test]
    fn protocol_is_the_newest_packets_and_forgotten_on_a_new_boot() {
        let mut m = Membership::new(cfg());
        assert_eq!(m.protocol("b"), None);
        let v2 = |seq: u64, digest: &str| {
            let mut hb = hb("b", B1, seq, 0);
            hb.version = 2;
            hb.max_version = 3;
            hb.config_digest = digest.into();
            Input::Packet {
                path: 0,
                hb: Box::new(hb),
            }
        };
        m.handle(0, v2(10, "aaaa"));
        m.handle(
            1,
            Input::Packet {
                path: 1,
                hb: Box::new(hb("b", B1, 9, 1)),
            },
        );
        let want = PeerProtocol {
            version: 2,
            max_version: 3,
            config_digest: "aaaa".into(),
        };
        assert_eq!(m.protocol("b"), Some(&want), "seq 9 is older than seq 10");
        m.handle(2, v2(11, "bbbb"));
        assert_eq!(
            m.protocol("b").map(|p| p.config_digest.as_str()),
            Some("bbbb")
        );
        let status = m.peer_status();
        assert_eq!(status[0].protocol.as_ref().map(|p| p.max_version), Some(3));
        // A restart (another build, perhaps) is learned afresh from its packets.
        m.handle(3, pkt("b", B2, 1, 0));
        assert_eq!(m.protocol("b").map(|p| p.max_version), Some(1));
    }

    #[test]
    fn cross_path_replay_is_rejected() {
        let mut m = Membership::new(cfg());
        m.handle(0, pkt("b", B1, 1, 0));
        // Packet sent on path 0 injected on path 1.
        let ev = m.handle(
            1,
            Input::Packet {
                path: 1,
                hb: Box::new(hb("b", B1, 1, 0)),
            },
        );
        assert_eq!(ev, rejected(Some("b"), 1, REJECT_PATH_MISMATCH));
        assert!(!m.paths()[1].up);
    }

    #[test]
    fn stale_boots_are_rejected() {
        let mut m = Membership::new(cfg());
        m.handle(0, pkt("b", B2, 1, 0));
        assert_eq!(
            m.handle(1, pkt("b", B1, 100, 0)),
            rejected(Some("b"), 0, REJECT_STALE_BOOT)
        );
        // Same boot time, lower boot id: also older.
        assert_eq!(
            m.handle(2, pkt("b", (1, B2.1), 100, 0)),
            rejected(Some("b"), 0, REJECT_STALE_BOOT)
        );
        assert_eq!(m.peer_status()[0].boot_id, Some(222));
    }

    #[test]
    fn new_boot_while_up_is_a_restart_and_resets_seq() {
        let mut m = Membership::new(cfg());
        m.handle(0, pkt("b", B1, 100, 0));
        m.handle(0, pkt("b", B1, 101, 1));
        assert_eq!(
            m.handle(10, pkt("b", B2, 1, 0)),
            vec![Ev::NodeRestarted {
                peer: "b".into(),
                old_boot_id: 111,
                new_boot_id: 222
            }]
        );
        assert_eq!(m.advert("b").map(|a| a.priority), Some(1));
        // Seq state reset on every path: seq 2 on path 1 is fresh now.
        assert_eq!(m.handle(11, pkt("b", B2, 2, 1)), vec![]);
        // Old boot's packets are now stale.
        assert_eq!(
            m.handle(12, pkt("b", B1, 102, 1)),
            rejected(Some("b"), 1, REJECT_STALE_BOOT)
        );
        // Same boot time with a higher boot id also counts as newer.
        let ev = m.handle(13, pkt("b", (999, B2.1), 1, 0));
        assert_eq!(
            ev,
            vec![Ev::NodeRestarted {
                peer: "b".into(),
                old_boot_id: 222,
                new_boot_id: 999
            }]
        );
    }

    #[test]
    fn new_boot_while_down_is_node_up() {
        let mut m = Membership::new(cfg());
        m.handle(0, pkt("b", B1, 100, 0));
        m.handle(1000, Input::Tick);
        assert!(!m.is_alive("b"));
        assert_eq!(
            m.handle(5000, pkt("b", B2, 1, 0)),
            vec![
                Ev::PathUp {
                    peer: "b".into(),
                    path: 0
                },
                Ev::NodeUp {
                    peer: "b".into(),
                    boot_id: 222
                },
            ]
        );
    }

    #[test]
    fn self_unknown_node_and_unknown_path_rejected() {
        let mut m = Membership::new(cfg());
        assert_eq!(
            m.handle(0, pkt("a", B1, 1, 0)),
            rejected(None, 0, REJECT_SELF)
        );
        assert_eq!(
            m.handle(0, pkt("zed", B1, 1, 0)),
            rejected(None, 0, REJECT_UNKNOWN_NODE)
        );
        assert_eq!(
            m.handle(0, pkt("c", B1, 1, 1)),
            rejected(Some("c"), 1, REJECT_UNKNOWN_PATH)
        );
        assert!(m.live_peers().is_empty());
        assert!(m.paths().iter().all(|p| !p.up));
        let c = m.counters();
        assert_eq!(c.accepted, 0);
        assert_eq!(c.rejected(REJECT_SELF), 1);
        assert_eq!(c.rejected(REJECT_UNKNOWN_NODE), 1);
        assert_eq!(c.rejected(REJECT_UNKNOWN_PATH), 1);
    }

    #[test]
    fn decode_errors_are_counted() {
        let mut m = Membership::new(cfg());
        m.record_decode_error(1, "bad_mac");
        m.record_decode_error(1, "bad_mac");
        m.record_decode_error(0, "truncated");
        let c = m.counters();
        assert_eq!(c.rejected("bad_mac"), 2);
        assert_eq!(c.rejected("truncated"), 1);
        assert_eq!(c.rejected_by_path.get(&1), Some(&2));
        assert_eq!(c.rejected_by_path.get(&0), Some(&1));
    }

    #[test]
    fn rtt_from_echo_is_smoothed() {
        let mut m = Membership::new(cfg());
        let mut h = hb("b", B1, 1, 0);
        // We sent at 1000, peer held our packet 30 ms, reply arrives at 1100.
        h.echo = Some(Echo {
            peer_sent_ms: 1000,
            held_ms: 30,
        });
        m.handle(
            1100,
            Input::Packet {
                path: 0,
                hb: Box::new(h.clone()),
            },
        );
        assert_eq!(m.paths()[0].rtt_ms, Some(70.0));
        let mut h = hb("b", B1, 2, 0);
        h.echo = Some(Echo {
            peer_sent_ms: 1200,
            held_ms: 0,
        });
        m.handle(
            1300,
            Input::Packet {
                path: 0,
                hb: Box::new(h.clone()),
            },
        );
        // 7/8 * 70 + 1/8 * 100
        assert_eq!(m.paths()[0].rtt_ms, Some(73.75));
        // Held longer than elapsed: saturates to 0.
        let mut h = hb("b", B1, 3, 0);
        h.echo = Some(Echo {
            peer_sent_ms: 1300,
            held_ms: 500,
        });
        m.handle(
            1400,
            Input::Packet {
                path: 0,
                hb: Box::new(h.clone()),
            },
        );
        assert_eq!(m.paths()[0].rtt_ms, Some(73.75 * 0.875));
        // An echo from the future is not ours: ignored.
        let mut h = hb("b", B1, 4, 0);
        h.echo = Some(Echo {
            peer_sent_ms: 9999,
            held_ms: 0,
        });
        m.handle(
            1500,
            Input::Packet {
                path: 0,
                hb: Box::new(h.clone()),
            },
        );
        assert_eq!(m.paths()[0].rtt_ms, Some(73.75 * 0.875));
        assert_eq!(m.paths()[1].rtt_ms, None);
    }

    #[test]
    fn echo_for_reports_latest_packet_and_hold_time() {
        let mut m = Membership::new(cfg());
        assert_eq!(m.echo_for("b", 0, 0), None);
        m.handle(100, pkt("b", B1, 1, 0)); // sent_ms 10_001
        m.handle(150, pkt("b", B1, 2, 0)); // sent_ms 10_002
        assert_eq!(
            m.echo_for("b", 0, 170),
            Some(Echo {
                peer_sent_ms: 10_002,
                held_ms: 20
            })
        );
        assert_eq!(m.echo_for("b", 1, 170), None, "nothing on path 1");
        assert_eq!(m.echo_for("zed", 0, 170), None);
        assert_eq!(m.echo_for("b", 0, 150 + 1000), None, "too stale");
        // After a restart the old boot's timestamps are not echoed.
        m.handle(200, pkt("b", B1, 3, 1));
        m.handle(210, pkt("b", B2, 1, 0));
        assert_eq!(m.echo_for("b", 1, 220), None);
        assert_eq!(
            m.echo_for("b", 0, 220),
            Some(Echo {
                peer_sent_ms: 10_001,
                held_ms: 10
            })
        );
    }

    #[test]
    fn config_validation_and_tolerance() {
        let mut c = cfg();
        assert_eq!(c.validate(), Ok(()));
        c.peers.push(PeerSpec {
            name: "b".into(),
            paths: vec![2],
        });
        assert_eq!(c.validate(), Err(ConfigError::DuplicatePeer("b".into())));
        c.peers.push(PeerSpec {
            name: "a".into(),
            paths: vec![0],
        });
        // new() merges duplicates and drops the local node.
        let m = Membership::new(c);
        let paths: Vec<_> = m.paths().iter().map(|p| (p.peer.clone(), p.path)).collect();
        assert_eq!(
            paths,
            vec![
                ("b".to_string(), 0),
                ("b".to_string(), 1),
                ("b".to_string(), 2),
                ("c".to_string(), 0)
            ]
        );
        let mut c = cfg();
        c.dead_time_ms = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroDeadTime));
        let mut c = cfg();
        c.peers[1].paths.clear();
        assert_eq!(c.validate(), Err(ConfigError::NoPaths("c".into())));
        let mut c = cfg();
        c.peers[0].name = "a".into();
        assert_eq!(c.validate(), Err(ConfigError::PeerIsLocal("a".into())));
    }

    // ---------------------------------------------------------------------
    // Seeded randomized simulation.
    // ---------------------------------------------------------------------

    const STEP_MS: u64 = 10;

    struct SimNode {
        name: String,
        boot: (u64, u64),
        seq: u64,
        /// Offset of this node's monotonic clock from simulation time.
        clock_off: u64,
        send_phase: u64,
        tick_phase: u64,
        mem: Membership,
    }

    /// What receiver r expects about sender s: accepted-delivery times in
    /// r's clock, and the boot r has seen.
    #[derive(Default, Clone)]
    struct Expect {
        last_any: Option<u64>,
        last_path: BTreeMap<u8, u64>,
        boot: Option<(u64, u64)>, // (time, id)
        /// Packets accepted by r from s, kept for replay injection.
        delivered: std::collections::VecDeque<(u8, Heartbeat)>,
        /// Bitmask of paths up according to PathUp/PathDown events.
        ev_up: u8,
    }

    #[derive(Clone, Copy)]
    enum Fault {
        Cut(usize, usize, u8),
        Isolate(usize),
        Restart(usize),
    }

    struct InFlight {
        from: usize,
        to: usize,
        path: u8,
        hb: Heartbeat,
    }

    /// First instant after `after` at which `(t + phase) % period == 0`.
    fn next_at(after: u64, period: u64, phase: u64) -> u64 {
        (after + 1 + phase).div_ceil(period) * period - phase
    }

    // Node indices address several parallel tables (nodes, expect,
    // pair_paths, latency), so index loops are clearer than iterators here.
    #[allow(clippy::needless_range_loop)]
    fn run_scenario(seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(2..=4usize);
        let n_paths = rng.gen_range(1..=3u8);
        let dead = [250u64, 500, 1000][rng.gen_range(0..3)];
        let interval = [50u64, 100, 200][rng.gen_range(0..3)];
        let tick_every = [20u64, 50, 100][rng.gen_range(0..3)];
        // Long enough for several cuts, isolations and restarts per run.
        let duration = 6 * dead + 1000;
        let names: Vec<String> = (0..n).map(|i| format!("n{i}")).collect();

        // Symmetric per-pair path sets (non-empty), per-direction latency and
        // loss, and per-pair-per-path cut windows.
        let mut pair_paths = vec![vec![Vec::<u8>::new(); n]; n];
        let mut latency = BTreeMap::new();
        let mut loss = BTreeMap::new();
        for i in 0..n {
            for j in i + 1..n {
                let mut ps: Vec<u8> = (0..n_paths).filter(|_| rng.gen_bool(0.7)).collect();
                if ps.is_empty() {
                    ps.push(rng.gen_range(0..n_paths));
                }
                for &p in &ps {
                    for (a, b) in [(i, j), (j, i)] {
                        latency.insert((a, b, p), STEP_MS * rng.gen_range(0..=3));
                        loss.insert((a, b, p), rng.gen_range(0.0..0.6));
                    }
                }
                pair_paths[i][j] = ps.clone();
                pair_paths[j][i] = ps;
            }
        }
        let mk_mem = |i: usize| {
            Membership::new(MembershipConfig {
                local: names[i].clone(),
                dead_time_ms: dead,
                peers: (0..n)
                    .filter(|&j| j != i)
                    .map(|j| PeerSpec {
                        name: names[j].clone(),
                        paths: pair_paths[i][j].clone(),
                    })
                    .collect(),
            })
        };
        let mut nodes: Vec<SimNode> = (0..n)
            .map(|i| SimNode {
                name: names[i].clone(),
                boot: (rng.gen(), 1_000_000),
                seq: 0,
                clock_off: rng.gen_range(0..1_000_000),
                send_phase: STEP_MS * rng.gen_range(0..interval / STEP_MS),
                tick_phase: STEP_MS * rng.gen_range(0..tick_every / STEP_MS),
                mem: mk_mem(i),
            })
            .collect();
        let mut expect = vec![vec![Expect::default(); n]; n];
        let mut cut_until: BTreeMap<(usize, usize, u8), u64> = BTreeMap::new();
        let mut isolated_until = vec![0u64; n];
        // Keyed by (delivery time, send order): constant per-channel latency
        // then gives FIFO delivery on every channel.
        let mut in_flight: BTreeMap<(u64, u64), InFlight> = BTreeMap::new();
        let mut sent_count = 0u64;
        let mut faults = Vec::new();
        for i in 0..n {
            for j in i + 1..n {
                for &p in &pair_paths[i][j] {
                    faults.push((Fault::Cut(i, j, p), 0.003));
                }
            }
            faults.push((Fault::Isolate(i), 0.0008));
            faults.push((Fault::Restart(i), 0.0003));
        }
        let faults_total: f64 = faults.iter().map(|f| f.1).sum();
        let fail = |msg: String| -> ! { panic!("seed {seed}: {msg}") };

        // Only instants where something happens (a send, a delivery or a
        // tick) are simulated; idle STEP_MS steps in between are skipped.
        let mut t = 0;
        let mut prev_t = 0;
        while t < duration {
            // Random faults: at most one per visited instant, chosen with a
            // single draw (one draw per fault slot made the RNG dominate the
            // run time), with probabilities scaled by the skipped steps.
            let steps = ((t - prev_t) / STEP_MS).max(1) as f64;
            prev_t = t;
            let x: f64 = rng.gen();
            if x < faults_total * steps {
                let mut x = x;
                let mut chosen = None;
                for (k, f) in faults.iter().enumerate() {
                    if x < f.1 * steps {
                        chosen = Some(k);
                        break;
                    }
                    x -= f.1 * steps;
                }
                match chosen.map(|k| faults[k].0) {
                    Some(Fault::Cut(i, j, p)) => {
                        cut_until.insert((i, j, p), t + rng.gen_range(50..3 * dead));
                    }
                    Some(Fault::Isolate(i)) => {
                        isolated_until[i] = t + rng.gen_range(100..4 * dead);
                    }
                    Some(Fault::Restart(i)) => {
                        // Daemon restart: new boot, seq restarts, state forgotten.
                        let nd = &mut nodes[i];
                        nd.boot = (rng.gen(), 1_000_001 + t);
                        nd.seq = 0;
                        nd.mem = mk_mem(i);
                        for e in expect[i].iter_mut() {
                            *e = Expect::default();
                        }
                    }
                    None => {}
                }
            }
            let link_ok = |i: usize, j: usize, p: u8| {
                let key = (i.min(j), i.max(j), p);
                isolated_until[i] <= t
                    && isolated_until[j] <= t
                    && cut_until.get(&key).is_none_or(|&u| u <= t)
            };

            // Senders.
            for i in 0..n {
                if !(t + nodes[i].send_phase).is_multiple_of(interval) {
                    continue;
                }
                let local_now = t + nodes[i].clock_off;
                for j in 0..n {
                    for &p in pair_paths[i][j].clone().iter() {
                        let nd = &mut nodes[i];
                        nd.seq += 1;
                        let hb = Heartbeat {
                            version: 1,
                            max_version: 1,
                            config_digest: String::new(),
                            cluster: "sim".into(),
                            node: nd.name.clone(),
                            boot_id: nd.boot.0,
                            boot_time_ms: nd.boot.1,
                            seq: nd.seq,
                            path: p,
                            sent_ms: local_now,
                            echo: nd.mem.echo_for(&names[j], p, local_now),
                            advert: NodeAdvert::default(),
                        };
                        if link_ok(i, j, p) && !rng.gen_bool(loss[&(i, j, p)]) {
                            sent_count += 1;
                            in_flight.insert(
                                (t + latency[&(i, j, p)], sent_count),
                                InFlight {
                                    from: i,
                                    to: j,
                                    path: p,
                                    hb,
                                },
                            );
                        }
                    }
                }
            }

            // Deliveries (FIFO per channel: constant latency, stable order).
            while let Some(entry) = in_flight.first_entry() {
                if entry.key().0 > t {
                    break;
                }
                let f = entry.remove();
                let (r, s) = (f.to, f.from);
                let now = t + nodes[r].clock_off;
                let was_alive = nodes[r].mem.is_alive(&names[s]);
                let ex = &mut expect[r][s];
                let pkt_boot = (f.hb.boot_time_ms, f.hb.boot_id);
                let seq = f.hb.seq;
                // Keep a sample of packets for replay injection (those that
                // turn out not to be accepted are dropped below).
                let sample = (seq % 4 == 0).then(|| f.hb.clone());
                let ev = nodes[r].mem.handle(
                    now,
                    Input::Packet {
                        path: f.path,
                        hb: Box::new(f.hb),
                    },
                );
                if ex.boot.is_some_and(|b| pkt_boot < b) {
                    // Old-boot packet still in flight after a restart.
                    if ev != rejected(Some(&names[s]), f.path, REJECT_STALE_BOOT) {
                        fail(format!("expected stale_boot, got {ev:?}"));
                    }
                    continue;
                }
                if ev.iter().any(|e| matches!(e, Ev::Rejected { .. })) {
                    fail(format!("fresh packet seq {seq} rejected: {ev:?}"));
                }
                let restarted = ev.iter().any(|e| matches!(e, Ev::NodeRestarted { .. }));
                let expect_restart = was_alive && ex.boot.is_some_and(|b| b != pkt_boot);
                if restarted != expect_restart {
                    fail(format!("NodeRestarted mismatch at {t}: {ev:?}"));
                }
                let node_up = ev.iter().any(|e| matches!(e, Ev::NodeUp { .. }));
                if node_up == was_alive {
                    fail(format!("NodeUp mismatch at {t}: {ev:?}"));
                }
                if !nodes[r].mem.is_alive(&names[s]) {
                    fail("accepted packet must leave peer alive".into());
                }
                let path_up = ev.iter().any(|e| matches!(e, Ev::PathUp { .. }));
                if path_up != (ex.ev_up & (1 << f.path) == 0) {
                    fail(format!("PathUp mismatch at {t}: {ev:?}"));
                }
                ex.ev_up |= 1 << f.path;
                ex.boot = Some(pkt_boot);
                ex.last_any = Some(now);
                ex.last_path.insert(f.path, now);
                if let Some(hb) = sample {
                    if ex.delivered.len() >= 8 {
                        ex.delivered.pop_front();
                    }
                    ex.delivered.push_back((f.path, hb));
                }
            }

            // Adversary replays a previously accepted packet.
            if rng.gen_bool(0.05) {
                let r = rng.gen_range(0..n);
                let s = rng.gen_range(0..n);
                if !expect[r][s].delivered.is_empty() {
                    let k = rng.gen_range(0..expect[r][s].delivered.len());
                    let (path, hb) = expect[r][s].delivered[k].clone();
                    let now = t + nodes[r].clock_off;
                    let was_alive = nodes[r].mem.is_alive(&names[s]);
                    let ev = nodes[r].mem.handle(
                        now,
                        Input::Packet {
                            path,
                            hb: Box::new(hb),
                        },
                    );
                    let ok = matches!(
                        ev.as_slice(),
                        [Ev::Rejected { reason, .. }]
                            if *reason == REJECT_REPLAYED || *reason == REJECT_STALE_BOOT
                    );
                    if !ok || nodes[r].mem.is_alive(&names[s]) != was_alive {
                        fail(format!("replay not rejected cleanly: {ev:?}"));
                    }
                }
            }

            // Ticks and the liveness properties.
            for r in 0..n {
                if !(t + nodes[r].tick_phase).is_multiple_of(tick_every) {
                    continue;
                }
                let now = t + nodes[r].clock_off;
                let ev = nodes[r].mem.handle(now, Input::Tick);
                for e in &ev {
                    let s = match e {
                        Ev::PathDown { peer, .. } | Ev::NodeDown { peer, .. } => {
                            names.iter().position(|x| x == peer)
                        }
                        _ => None,
                    };
                    let Some(s) = s else {
                        fail(format!("unexpected tick event {e:?}"));
                    };
                    let ex = &mut expect[r][s];
                    match e {
                        Ev::PathDown {
                            path, silent_ms, ..
                        } => {
                            let last = ex.last_path.get(path).copied();
                            if ex.ev_up & (1 << path) == 0
                                || last.map(|l| now - l) != Some(*silent_ms)
                            {
                                fail(format!("t={t} bad {e:?}, last {last:?}"));
                            }
                            ex.ev_up &= !(1 << path);
                        }
                        Ev::NodeDown { peer, silent_ms } => {
                            // Losing some paths never yields NodeDown: every
                            // path must have been silent for the dead time.
                            if ex.last_path.values().any(|&l| now - l < dead) {
                                fail(format!("NodeDown {peer} with a live path"));
                            }
                            if ex.last_any.map(|l| now - l) != Some(*silent_ms) {
                                fail(format!("NodeDown silent_ms {silent_ms} wrong"));
                            }
                        }
                        _ => {}
                    }
                }
                for s in (0..n).filter(|&s| s != r) {
                    let ex = &expect[r][s];
                    let recent = |last: Option<u64>| last.is_some_and(|l| now - l < dead);
                    let alive = nodes[r].mem.is_alive(&names[s]);
                    // Never down while some path delivered within dead time;
                    // always down once every path has been silent that long.
                    if alive != recent(ex.last_any) {
                        fail(format!(
                            "t={t} {}->{}: alive={alive}, last delivery {:?}, now {now}",
                            names[s], names[r], ex.last_any
                        ));
                    }
                    // Path state as told by PathUp/PathDown events matches
                    // the per-path silence.
                    for &p in &pair_paths[r][s] {
                        let want = recent(ex.last_path.get(&p).copied());
                        if (ex.ev_up & (1 << p) != 0) != want {
                            fail(format!(
                                "t={t} {}->{} path {p} up should be {want}",
                                names[s], names[r]
                            ));
                        }
                    }
                }
            }
            let mut next = duration;
            for nd in &nodes {
                next = next.min(next_at(t, interval, nd.send_phase));
                next = next.min(next_at(t, tick_every, nd.tick_phase));
            }
            if let Some((&(at, _), _)) = in_flight.first_key_value() {
                next = next.min(at);
            }
            t = next;
        }

        // Final status listing agrees with the event stream, and RTT over
        // constant latencies converges to the exact round trip.
        for (r, nd) in nodes.iter().enumerate() {
            for st in nd.mem.paths() {
                let s = names
                    .iter()
                    .position(|x| *x == st.peer)
                    .unwrap_or(usize::MAX);
                let ex = &expect[r][s];
                if st.up != (ex.ev_up & (1 << st.path) != 0)
                    || st.last_heard_ms != ex.last_path.get(&st.path).copied()
                {
                    fail(format!("final path status {st:?} disagrees with events"));
                }
                if let Some(rtt) = st.rtt_ms {
                    let want = (latency[&(r, s, st.path)] + latency[&(s, r, st.path)]) as f64;
                    if (rtt - want).abs() > 1e-6 {
                        fail(format!("rtt {rtt} on {st:?}, want {want}"));
                    }
                }
            }
        }
    }

    /// Runs `count` seeded scenarios starting at `first`, or only the seed
    /// in `TANDEM_SIM_SEED` if set (to rerun a failure: every failure message
    /// starts with its seed). `TANDEM_SIM_SCENARIOS` overrides `count`.
    fn run_seeds(first: u64, count: u64) {
        if let Some(seed) = std::env::var("TANDEM_SIM_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            if seed >= first && seed < first + count {
                run_scenario(seed);
            }
            return;
        }
        let count = std::env::var("TANDEM_SIM_SCENARIOS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(count);
        for seed in first..first + count {
            run_scenario(seed);
        }
    }

    // Split in two so the test harness runs the halves in parallel.
    #[test]
    fn seeded_simulation_a() {
        run_seeds(0, 750);
    }

    #[test]
    fn seeded_simulation_b() {
        run_seeds(1_000_000, 750);
    }
}
