//! The lease record: one 4 KiB sector, checksummed, all zeros when free.
//!
//! Layout: magic `TDLS`, format version, owner node name (length-prefixed, at most
//! [`MAX_NODE`] bytes), the owner's incarnation (random per acquire), the renewal
//! counter, then SHA-256 of everything before it. The rest of the sector is zero.

use sha2::{Digest, Sha256};

/// The size of the lease sector, and the alignment of its I/O.
pub const SECTOR: usize = 4096;
/// The longest node name a record holds.
pub const MAX_NODE: usize = 64;
const MAGIC: &[u8; 4] = b"TDLS";
const VERSION: u8 = 1;
/// Compared with a slice (a `memcmp`) rather than byte by byte.
static ZEROS: [u8; SECTOR] = [0; SECTOR];

/// Who holds the lease, as written on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The owner's node name.
    pub node: String,
    /// Chosen at random on each acquire: a restarted node is another owner.
    pub incarnation: u64,
    /// Incremented by each renewal, so that a live holder always changes the sector.
    pub counter: u64,
}

/// What a read of the lease sector found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sector {
    /// All zeros: nobody holds the lease.
    Free,
    /// A valid record.
    Held(Record),
    /// Neither zeros nor a valid record (a torn or foreign write): treated as held by
    /// somebody unknown, so it must stay unchanged for the lease timeout.
    Garbled,
}

impl Record {
    /// The sector bytes of this record. A node name longer than [`MAX_NODE`] is cut.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; SECTOR];
        let name = &self.node.as_bytes()[..self.node.len().min(MAX_NODE)];
        let mut body = Vec::with_capacity(64 + MAX_NODE);
        body.extend_from_slice(MAGIC);
        body.push(VERSION);
        body.push(name.len() as u8);
        body.extend_from_slice(name);
        body.extend_from_slice(&self.incarnation.to_be_bytes());
        body.extend_from_slice(&self.counter.to_be_bytes());
        let sum = Sha256::digest(&body);
        out[..body.len()].copy_from_slice(&body);
        out[body.len()..body.len() + sum.len()].copy_from_slice(&sum);
        out
    }

    /// Whether `other` is the same owner (node and incarnation), whatever its counter.
    pub fn same_owner(&self, other: &Record) -> bool {
        self.node == other.node && self.incarnation == other.incarnation
    }
}

/// Reads a sector's bytes.
pub fn decode(bytes: &[u8]) -> Sector {
    if bytes == &ZEROS[..] {
        return Sector::Free;
    }
    parse(bytes).map_or(Sector::Garbled, Sector::Held)
}

fn parse(bytes: &[u8]) -> Option<Record> {
    if bytes.len() != SECTOR || &bytes[..4] != MAGIC || bytes[4] != VERSION {
        return None;
    }
    let len = usize::from(bytes[5]);
    if len > MAX_NODE {
        return None;
    }
    let end = 6 + len + 16;
    let sum = Sha256::digest(&bytes[..end]);
    let rest = &bytes[end + sum.len()..];
    if bytes[end..end + sum.len()] != sum[..] || rest != &ZEROS[..rest.len()] {
        return None;
    }
    let node = String::from_utf8(bytes[6..6 + len].to_vec()).ok()?;
    let word = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
    Some(Record {
        node,
        incarnation: word(6 + len),
        counter: word(6 + len + 8),
    })
}

/// Test help: once the renewal that follows an acquire has landed (30 ms on), writes
/// another node's record over the lease sector at the start of `path`.
#[cfg(test)]
pub(crate) async fn write_foreign(
    path: &std::path::Path,
    node: &str,
    incarnation: u64,
    counter: u64,
) {
    let foreign = Record {
        node: node.into(),
        incarnation,
        counter,
    };
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    crate::lease::disk::LeaseDisk::open(path, 0)
        .unwrap()
        .write(&foreign.encode())
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            node: "n1".into(),
            incarnation: 0xdead_beef,
            counter: 7,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let bytes = record().encode();
        assert_eq!(bytes.len(), SECTOR);
        assert_eq!(decode(&bytes), Sector::Held(record()));
    }

    #[test]
    fn zeros_are_free() {
        assert_eq!(decode(&[0u8; SECTOR]), Sector::Free);
    }

    #[test]
    fn any_flipped_byte_is_garbled() {
        let good = record().encode();
        for at in [0, 5, 7, 12, 30, 40, 100, SECTOR - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            assert_eq!(decode(&bad), Sector::Garbled, "byte {at}");
        }
    }

    #[test]
    fn the_counter_does_not_change_the_owner() {
        let next = Record {
            counter: 8,
            ..record()
        };
        assert!(record().same_owner(&next));
        let restarted = Record {
            incarnation: 1,
            ..record()
        };
        assert!(!record().same_owner(&restarted));
        assert_ne!(record().encode(), next.encode());
    }
}
