//! Pure glue between a [`QuorumCore`](super::core::QuorumCore) and the network, shared
//! by the node core (`node/quorum.rs`) and `tandem witness`:
//!
//! - [`Outbox::coalesce`] turns the core's [`QuorumAction`]s into datagrams: messages to
//!   the same voter share a [`QuorumPacket`] (up to [`DATAGRAM_MSGS`] messages and
//!   [`DATAGRAM_RAFT_BYTES`] of raft bytes), but never across a write to the durable
//!   log, so raft's order (persist, then send what depends on it) holds on the wire.
//! - [`Outbox::admit`] is the receive side's filter: datagrams from a sender with
//!   another voter list are refused, and the copies that arrive on the other heartbeat
//!   paths dropped. It learns each voter's newest wire version, and datagrams to it go
//!   out at the lower of the two maxima (this build's until one arrived).

use std::collections::BTreeMap;

use super::core::QuorumAction;
use super::decision::Applied;
use super::records::PersistBatch;
use super::wire::{self, Dedup, QuorumMsg, QuorumPacket};
use crate::cluster::packet::version_for;

/// Raft bytes per datagram before another one is started.
pub const DATAGRAM_RAFT_BYTES: usize = 48 * 1024;
/// Messages per datagram (the codec's limit is 64).
pub const DATAGRAM_MSGS: usize = 48;
/// What a non-raft message counts for against [`DATAGRAM_RAFT_BYTES`].
const SMALL_MSG_BYTES: usize = 64;

/// What to carry out, in order.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// Send this datagram to voter `to` (on every path it has an address on).
    Send { to: String, packet: QuorumPacket },
    /// Write this to the durable log (fsync), in order after the writes before it;
    /// then report `write` to the quorum core's `persisted`.
    Persist { batch: PersistBatch, write: u64 },
    /// A committed decision was applied.
    Applied(Applied),
}

/// One voter's outgoing datagrams: the header every datagram carries and the sequence
/// number of the last one.
#[derive(Debug, Clone)]
pub struct Outbox {
    cluster: String,
    from: String,
    voters_digest: u64,
    boot_id: u64,
    seq: u64,
    /// Each voter's newest wire version, from its latest admitted datagram.
    peer_max: BTreeMap<String, u8>,
}

impl Outbox {
    pub fn new(cluster: &str, from: &str, voters_digest: u64, boot_id: u64) -> Outbox {
        Outbox {
            cluster: cluster.to_string(),
            from: from.to_string(),
            voters_digest,
            boot_id,
            seq: 0,
            peer_max: BTreeMap::new(),
        }
    }

    /// The digest of the voter list this voter uses.
    pub fn voters_digest(&self) -> u64 {
        self.voters_digest
    }

    /// The quorum core's actions as datagrams, log writes and applied decisions, in
    /// raft's order: the messages gathered so far go out before each write; an applied
    /// decision passes through where it was.
    pub fn coalesce(&mut self, now_ms: u64, actions: Vec<QuorumAction>) -> Vec<Outgoing> {
        let mut out = Vec::new();
        let mut pending: Vec<(String, Vec<QuorumMsg>)> = Vec::new();
        for a in actions {
            match a {
                QuorumAction::Send { to, msgs } => {
                    for m in msgs {
                        push_msg(&mut pending, &to, m);
                    }
                }
                QuorumAction::Persist { batch, write } => {
                    self.flush(now_ms, &mut pending, &mut out);
                    out.push(Outgoing::Persist { batch, write });
                }
                QuorumAction::Applied(applied) => out.push(Outgoing::Applied(applied)),
            }
        }
        self.flush(now_ms, &mut pending, &mut out);
        out
    }

    fn flush(
        &mut self,
        now_ms: u64,
        pending: &mut Vec<(String, Vec<QuorumMsg>)>,
        out: &mut Vec<Outgoing>,
    ) {
        for (to, msgs) in pending.drain(..) {
            self.seq += 1;
            let peer_max = self.peer_max.get(&to).copied();
            out.push(Outgoing::Send {
                packet: QuorumPacket {
                    version: version_for(wire::MAX_VERSION, peer_max),
                    max_version: wire::MAX_VERSION,
                    cluster: self.cluster.clone(),
                    from: self.from.clone(),
                    voters_digest: self.voters_digest,
                    boot_id: self.boot_id,
                    seq: self.seq,
                    sent_ms: now_ms,
                    msgs,
                },
                to,
            });
        }
    }
}

fn msg_bytes(m: &QuorumMsg) -> usize {
    match m {
        QuorumMsg::Raft(b) => b.len(),
        _ => SMALL_MSG_BYTES,
    }
}

/// Adds `m` to the latest datagram gathered for `to` while it has room, else starts a
/// new one.
fn push_msg(pending: &mut Vec<(String, Vec<QuorumMsg>)>, to: &str, m: QuorumMsg) {
    if let Some((_, msgs)) = pending.iter_mut().rev().find(|(t, _)| t == to) {
        let size: usize = msgs.iter().map(msg_bytes).sum();
        if msgs.len() < DATAGRAM_MSGS && size + msg_bytes(&m) <= DATAGRAM_RAFT_BYTES {
            msgs.push(m);
            return;
        }
    }
    pending.push((to.to_string(), vec![m]));
}

/// Why a received datagram is not stepped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The sender's voter list differs from ours (the configurations disagree).
    ForeignVoters,
    /// A copy already seen (another path), or too old.
    Duplicate,
}

impl Outbox {
    /// Whether an authenticated datagram should be stepped: same voter list, first
    /// copy. An admitted one tells the sender's newest version.
    pub fn admit(&mut self, dedup: &mut Dedup, p: &QuorumPacket) -> Result<(), Refused> {
        if p.voters_digest != self.voters_digest {
            return Err(Refused::ForeignVoters);
        }
        if !dedup.accept(&p.from, p.boot_id, p.seq) {
            return Err(Refused::Duplicate);
        }
        self.peer_max.insert(p.from.clone(), p.max_version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::records::HardStateRec;

    fn raft(n: usize) -> QuorumMsg {
        QuorumMsg::Raft(vec![0; n])
    }

    fn send(to: &str, msgs: Vec<QuorumMsg>) -> QuorumAction {
        QuorumAction::Send {
            to: to.into(),
            msgs,
        }
    }

    fn persist() -> QuorumAction {
        QuorumAction::Persist {
            batch: PersistBatch {
                hard_state: Some(HardStateRec::default()),
                ..Default::default()
            },
            write: 1,
        }
    }

    /// (to, message count, seq) of each datagram, "P" for a write.
    fn shape(out: &[Outgoing]) -> Vec<(String, usize, u64)> {
        out.iter()
            .map(|o| match o {
                Outgoing::Send { to, packet } => (to.clone(), packet.msgs.len(), packet.seq),
                Outgoing::Persist { .. } => ("P".into(), 0, 0),
                Outgoing::Applied(_) => ("A".into(), 0, 0),
            })
            .collect()
    }

    #[test]
    fn messages_to_one_voter_share_a_datagram_but_not_across_a_write() {
        let mut ob = Outbox::new("lab", "w", 7, 9);
        let out = ob.coalesce(
            5,
            vec![
                send("n1", vec![raft(10)]),
                send("n2", vec![raft(10)]),
                send("n1", vec![raft(10), raft(10)]),
                persist(),
                send("n1", vec![raft(10)]),
            ],
        );
        assert_eq!(
            shape(&out),
            vec![
                ("n1".into(), 3, 1),
                ("n2".into(), 1, 2),
                ("P".into(), 0, 0),
                ("n1".into(), 1, 3)
            ]
        );
        let Outgoing::Send { packet, .. } = &out[0] else {
            panic!("{out:?}")
        };
        assert_eq!(
            (
                packet.cluster.as_str(),
                packet.from.as_str(),
                packet.voters_digest,
                packet.boot_id,
                packet.sent_ms
            ),
            ("lab", "w", 7, 9, 5)
        );
        // The sequence goes on across calls.
        let out = ob.coalesce(6, vec![send("n2", vec![raft(1)])]);
        assert_eq!(shape(&out), vec![("n2".into(), 1, 4)]);
    }

    #[test]
    fn full_datagrams_are_split() {
        let mut ob = Outbox::new("lab", "w", 0, 0);
        let many: Vec<QuorumMsg> = (0..DATAGRAM_MSGS + 1).map(|_| raft(1)).collect();
        let out = ob.coalesce(0, vec![send("n1", many)]);
        assert_eq!(
            shape(&out),
            vec![("n1".into(), DATAGRAM_MSGS, 1), ("n1".into(), 1, 2)]
        );
        let big = vec![raft(DATAGRAM_RAFT_BYTES - 10), raft(20)];
        let out = ob.coalesce(0, vec![send("n1", big)]);
        assert_eq!(shape(&out), vec![("n1".into(), 1, 3), ("n1".into(), 1, 4)]);
    }

    #[test]
    fn admit_refuses_foreign_voters_and_copies() {
        let mut ob = Outbox::new("lab", "n1", 7, 1);
        let out = ob.coalesce(0, vec![send("w", vec![raft(1)])]);
        let Some(Outgoing::Send { packet, .. }) = out.into_iter().next() else {
            panic!("no datagram")
        };
        let mut dedup = Dedup::default();
        let mut foreign = Outbox::new("lab", "w", 8, 2);
        assert_eq!(
            foreign.admit(&mut dedup, &packet),
            Err(Refused::ForeignVoters)
        );
        let mut w = Outbox::new("lab", "w", 7, 2);
        assert_eq!(w.admit(&mut dedup, &packet), Ok(()));
        assert_eq!(w.admit(&mut dedup, &packet), Err(Refused::Duplicate));
    }

    /// The version of the next datagram `ob` sends to `to`.
    fn version_to(ob: &mut Outbox, to: &str) -> u8 {
        match ob.coalesce(0, vec![send(to, vec![raft(1)])]).pop() {
            Some(Outgoing::Send { packet, .. }) => packet.version,
            other => panic!("no datagram: {other:?}"),
        }
    }

    #[test]
    fn datagrams_go_out_at_the_lower_maximum_once_the_voter_was_heard() {
        let mut ob = Outbox::new("lab", "n1", 7, 1);
        let mut dedup = Dedup::default();
        assert_eq!(version_to(&mut ob, "n2"), wire::MAX_VERSION);
        let mut older = Outbox::new("lab", "n2", 7, 2);
        let Some(Outgoing::Send { mut packet, .. }) =
            older.coalesce(0, vec![send("n1", vec![raft(1)])]).pop()
        else {
            panic!("no datagram")
        };
        // n2 runs a build that speaks version 1 only.
        packet.version = 1;
        packet.max_version = 1;
        assert_eq!(ob.admit(&mut dedup, &packet), Ok(()));
        assert_eq!(version_to(&mut ob, "n2"), 1);
        assert_eq!(version_to(&mut ob, "n3"), wire::MAX_VERSION, "per voter");
        // A newer build (N + 1) gets this build's maximum.
        packet.seq += 1;
        packet.max_version = wire::MAX_VERSION + 1;
        assert_eq!(ob.admit(&mut dedup, &packet), Ok(()));
        assert_eq!(version_to(&mut ob, "n2"), wire::MAX_VERSION);
    }
}
