//! Peer-acks and what a secondary cannot yet prove: the pure rules that let copies
//! which shared a lost primary converge without a full resync or a manual verify.
//!
//! The problem: a primary replicates to a sync copy and to a lagging async copy, then
//! dies. Both secondaries still carry the primary's generation, so comparing
//! generations finds them equal, although the async copy lacks the writes it had not
//! received yet. The only record of that gap died with the primary.
//!
//! The rules (DRBD 9's peer-acks, taken as an idea):
//! - the primary numbers every operation once for all its peers (the `seq` of its data
//!   frames), and knows per peer up to which number the peer durably holds every write
//!   (`PeerCore::holds_through`: its last acknowledged flush, with nothing marked for it);
//! - at each barrier it sends every replicating secondary a peer-ack ([`peer_acks`]):
//!   `(upto, holders)`, the copies that durably hold every write up to `upto`. An async
//!   copy whose queue overflowed, or any copy with marked blocks, is not a holder;
//! - a secondary keeps the ranges it applied ([`Unproven`], covered by its own activity
//!   log) until a peer-ack covers them, then marks them in its bitmap toward every copy
//!   outside the holders ([`copies_to_mark`]);
//! - when it loses the primary (the link drops, another copy becomes primary, or the
//!   primary steps down), it marks every range still unproven toward every other copy;
//! - at the next connect, or when one of them is promoted, the copies exchange those
//!   bitmaps and the source resyncs their union (see `connect`).
//!
//! Pure: no I/O, no clock.

use std::collections::{BTreeMap, VecDeque};

/// One replicating peer of a primary, as the peer-ack rule sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckInput<'a> {
    pub name: &'a str,
    /// The peer takes replicated writes now (it receives peer-acks).
    pub replicating: bool,
    /// Up to where it provably holds every write (`PeerCore::holds_through`).
    pub holds_through: Option<u64>,
    /// Its last acknowledged flush, holder or not.
    pub durable_seq: u64,
}

/// A peer-ack for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAck {
    pub to: String,
    /// Every write numbered up to this is durable on every holder.
    pub upto: u64,
    /// The copies (secondaries; the primary is implied) that durably hold them.
    pub holders: Vec<String>,
}

/// The peer-acks a primary sends now: to each replicating peer, the point up to which
/// both it and every holder durably hold every write (`upto`, never past the
/// recipient's own durable point) and the holders, when `upto` moved past what was
/// last sent to that peer (`last_sent`, updated).
pub fn peer_acks(peers: &[AckInput<'_>], last_sent: &mut BTreeMap<String, u64>) -> Vec<PeerAck> {
    let holders: Vec<(&str, u64)> = peers
        .iter()
        .filter_map(|p| p.holds_through.map(|s| (p.name, s)))
        .collect();
    let common = holders.iter().map(|(_, s)| *s).min();
    let mut out = Vec::new();
    for p in peers.iter().filter(|p| p.replicating) {
        let upto = common.map_or(p.durable_seq, |c| c.min(p.durable_seq));
        let sent = last_sent.entry(p.name.to_string()).or_insert(0);
        if upto <= *sent {
            continue;
        }
        *sent = upto;
        out.push(PeerAck {
            to: p.name.to_string(),
            upto,
            holders: holders.iter().map(|(n, _)| n.to_string()).collect(),
        });
    }
    out
}

/// The copies a secondary marks a peer-acked range toward: every copy of the mirror
/// but itself, the primary (it wrote the range) and the holders.
pub fn copies_to_mark<'a>(
    copies: impl IntoIterator<Item = &'a str>,
    me: &str,
    primary: &str,
    holders: &[String],
) -> Vec<String> {
    copies
        .into_iter()
        .filter(|c| *c != me && *c != primary && !holders.iter().any(|h| h == c))
        .map(str::to_string)
        .collect()
}

/// The ranges a secondary applied and no peer-ack covers yet, in the primary's
/// numbering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unproven {
    entries: VecDeque<(u64, u64, u64)>,
    /// The highest number applied from the primary followed (0: none yet).
    last_seq: u64,
}

impl Unproven {
    pub fn new() -> Unproven {
        Unproven::default()
    }

    /// Operation `seq` touching `[offset, offset + len)` was applied.
    pub fn applied(&mut self, seq: u64, offset: u64, len: u64) {
        if len > 0 {
            self.entries.push_back((seq, offset, len));
        }
        self.last_seq = self.last_seq.max(seq);
    }

    /// A numbered operation without a range (a flush) was applied.
    pub fn seen(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// The highest number applied (a new primary numbers above it).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// A peer-ack up to `upto`: the ranges it covers (to be marked toward the copies
    /// outside its holders) leave the set.
    pub fn covered(&mut self, upto: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        while let Some(&(seq, offset, len)) = self.entries.front() {
            if seq > upto {
                break;
            }
            self.entries.pop_front();
            out.push((offset, len));
        }
        out
    }

    /// The primary was lost: every range still unproven (to be marked toward every
    /// other copy).
    pub fn take_all(&mut self) -> Vec<(u64, u64)> {
        self.entries.drain(..).map(|(_, o, l)| (o, l)).collect()
    }

    /// The unproven ranges that touch `[offset, offset + len)` (an activity-log extent
    /// about to leave the log: they must be marked before it goes).
    pub fn touching(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        self.entries
            .iter()
            .filter(|(_, o, l)| *o < offset + len && offset < o + l)
            .map(|(_, o, l)| (*o, *l))
            .collect()
    }

    /// The `extent`-sized extents the unproven ranges touch.
    pub fn extents(&self, extent: u64) -> std::collections::BTreeSet<u64> {
        let mut out = std::collections::BTreeSet::new();
        for &(_, offset, len) in &self.entries {
            out.extend(offset / extent..=(offset + len.max(1) - 1) / extent);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, holds: Option<u64>, durable: u64) -> AckInput<'_> {
        AckInput {
            name,
            replicating: true,
            holds_through: holds,
            durable_seq: durable,
        }
    }

    #[test]
    fn a_lagging_async_copy_holds_the_peer_ack_back_and_an_overflowed_one_does_not() {
        let mut sent = BTreeMap::new();
        // n2 (sync) flushed up to 40; n3 (async) lags at 10.
        let acks = peer_acks(
            &[input("n2", Some(40), 40), input("n3", Some(10), 10)],
            &mut sent,
        );
        assert_eq!(acks.len(), 2);
        assert!(acks
            .iter()
            .all(|a| a.upto == 10 && a.holders == ["n2", "n3"]));
        assert!(
            peer_acks(
                &[input("n2", Some(40), 40), input("n3", Some(10), 10)],
                &mut sent
            )
            .is_empty(),
            "nothing new"
        );
        // n3's queue overflowed: it is no holder; n2 hears up to 40 without it.
        let acks = peer_acks(
            &[input("n2", Some(40), 40), input("n3", None, 12)],
            &mut sent,
        );
        let to_n2 = acks.iter().find(|a| a.to == "n2").unwrap();
        assert_eq!((to_n2.upto, to_n2.holders.clone()), (40, vec!["n2".into()]));
        let to_n3 = acks.iter().find(|a| a.to == "n3").unwrap();
        assert_eq!(
            to_n3.upto, 12,
            "never past the recipient's own durable point"
        );
    }

    #[test]
    fn without_holders_a_recipient_hears_its_own_point_with_nobody_holding() {
        let mut sent = BTreeMap::new();
        let acks = peer_acks(&[input("n3", None, 7)], &mut sent);
        assert_eq!(acks[0].upto, 7);
        assert!(acks[0].holders.is_empty());
    }

    #[test]
    fn a_secondary_marks_covered_ranges_toward_the_copies_that_lack_them() {
        let mut u = Unproven::new();
        u.applied(5, 0, 4096);
        u.applied(6, 8192, 4096);
        u.seen(7);
        u.applied(9, 65536, 512);
        assert_eq!(u.last_seq(), 9);
        assert_eq!(u.covered(6), vec![(0, 4096), (8192, 4096)]);
        assert_eq!(u.len(), 1);
        let to = copies_to_mark(["n1", "n2", "n3", "n4"], "n2", "n1", &["n2".to_string()]);
        assert_eq!(to, ["n3", "n4"]);
        assert_eq!(u.touching(65000, 1000), vec![(65536, 512)]);
        assert_eq!(u.extents(65536).into_iter().collect::<Vec<_>>(), [1]);
        assert_eq!(u.take_all(), vec![(65536, 512)]);
        assert!(u.is_empty());
    }
}
