//! The demo service's checksummed write log: fixed-size records appended one per
//! `POST /log`, so a client can check after a failover that every write it was
//! answered for is still there, intact.
//!
//! A record is [`RECORD_LEN`] bytes in slot `seq - 1` of a region: [`LOG_BASE`] ..
//! [`LOG_BASE`] + [`LOG_LEN`] of the volume (after the counter's first block), or the
//! file `log` in the data directory. Layout (integers big-endian):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic [`LOG_MAGIC`] |
//! | 8..16 | sequence number (1 for slot 0) |
//! | 16, 17..49 | client id: length, bytes (at most 32) |
//! | 49, 50..82 | node that wrote it: length, bytes (at most 32) |
//! | 82..84, 84..480 | payload: length, bytes (at most [`MAX_PAYLOAD`]) |
//! | 480..512 | SHA-256 of bytes 0..480 |
//!
//! An all-zero slot was never written. Any other slot that does not decode (torn by a
//! crash in the middle of its write, corrupted, or in the wrong slot) is reported as
//! bad, never skipped silently, and the log is appended after it, so it stays visible.
//! Pure: encoding, decoding and scanning; the I/O is in `super`.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Magic of a log record.
pub const LOG_MAGIC: &[u8; 8] = b"TDLOG001";
/// Size of one record (a sector, so a record is never split across two blocks).
pub const RECORD_LEN: usize = 512;
/// Where the log starts on the volume: after the counter's block, with room to spare.
pub const LOG_BASE: u64 = 1 << 20;
/// The log region's size on the volume (it ends before 8 MiB, clear of the lab's
/// qemu-io pattern writes at 16 MiB).
pub const LOG_LEN: u64 = 7 << 20;
/// Largest client id or node name, in bytes.
pub const MAX_NAME: usize = 32;
/// Largest payload, in bytes.
pub const MAX_PAYLOAD: usize = 396;
const CLIENT_AT: usize = 16;
const NODE_AT: usize = CLIENT_AT + 1 + MAX_NAME;
const PAYLOAD_AT: usize = NODE_AT + 1 + MAX_NAME;
const SUM_AT: usize = RECORD_LEN - 32;

/// How many records the volume's log region holds.
pub fn capacity() -> u64 {
    LOG_LEN / RECORD_LEN as u64
}

/// Why a record cannot be written or read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("client id longer than {MAX_NAME} bytes")]
    ClientTooLong,
    #[error("payload of {0} bytes, at most {MAX_PAYLOAD}")]
    PayloadTooLong(usize),
    #[error("the log is full ({0} records)")]
    Full(u64),
    #[error("not a record (bad magic): torn or overwritten")]
    Magic,
    #[error("checksum mismatch: torn or corrupted")]
    Checksum,
    #[error("a length field out of range")]
    Length,
    #[error("sequence number {found} in the slot of {expected}")]
    Misplaced { expected: u64, found: u64 },
}

/// One record as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogRecord {
    pub seq: u64,
    pub client: String,
    pub node: String,
    /// The payload bytes, as UTF-8 (lossily, for a payload that is not).
    pub payload: String,
}

/// A slot that holds something other than a valid record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadSlot {
    /// The sequence number the slot belongs to (slot index + 1).
    pub seq: u64,
    pub reason: String,
}

/// Everything a scan of the log region found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogScan {
    pub records: Vec<LogRecord>,
    pub bad: Vec<BadSlot>,
    /// The sequence number the next append gets: after the last slot that is not blank.
    pub next: u64,
}

/// The record `seq` written by `node` (its first [`MAX_NAME`] bytes) for `client`.
pub fn encode(seq: u64, client: &str, node: &str, payload: &[u8]) -> Result<Vec<u8>, LogError> {
    if client.len() > MAX_NAME {
        return Err(LogError::ClientTooLong);
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(LogError::PayloadTooLong(payload.len()));
    }
    let mut b = vec![0u8; RECORD_LEN];
    b[..8].copy_from_slice(LOG_MAGIC);
    b[8..16].copy_from_slice(&seq.to_be_bytes());
    put_name(&mut b[CLIENT_AT..NODE_AT], client.as_bytes());
    put_name(
        &mut b[NODE_AT..PAYLOAD_AT],
        &node.as_bytes()[..node.len().min(MAX_NAME)],
    );
    // At most MAX_PAYLOAD (checked above): fits in a u16.
    b[PAYLOAD_AT..PAYLOAD_AT + 2].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    b[PAYLOAD_AT + 2..PAYLOAD_AT + 2 + payload.len()].copy_from_slice(payload);
    let sum = Sha256::digest(&b[..SUM_AT]);
    b[SUM_AT..].copy_from_slice(&sum);
    Ok(b)
}

fn put_name(field: &mut [u8], name: &[u8]) {
    // At most MAX_NAME bytes (checked or cut by the caller).
    field[0] = name.len() as u8;
    field[1..1 + name.len()].copy_from_slice(name);
}

fn get_name(field: &[u8]) -> Result<String, LogError> {
    let len = usize::from(field[0]);
    let bytes = field.get(1..1 + len).ok_or(LogError::Length)?;
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

/// Whether a slot was never written.
pub fn is_blank(slot: &[u8]) -> bool {
    slot.iter().all(|b| *b == 0)
}

/// Decodes the record in the slot of `seq` (`slot` is [`RECORD_LEN`] bytes).
pub fn decode(seq: u64, slot: &[u8]) -> Result<LogRecord, LogError> {
    if slot.len() != RECORD_LEN || &slot[..8] != LOG_MAGIC {
        return Err(LogError::Magic);
    }
    if Sha256::digest(&slot[..SUM_AT]).as_slice() != &slot[SUM_AT..] {
        return Err(LogError::Checksum);
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&slot[8..16]);
    let found = u64::from_be_bytes(n);
    if found != seq {
        return Err(LogError::Misplaced {
            expected: seq,
            found,
        });
    }
    let len = usize::from(u16::from_be_bytes([slot[PAYLOAD_AT], slot[PAYLOAD_AT + 1]]));
    if len > MAX_PAYLOAD {
        return Err(LogError::Length);
    }
    Ok(LogRecord {
        seq,
        client: get_name(&slot[CLIENT_AT..NODE_AT])?,
        node: get_name(&slot[NODE_AT..PAYLOAD_AT])?,
        payload: String::from_utf8_lossy(&slot[PAYLOAD_AT + 2..PAYLOAD_AT + 2 + len]).into_owned(),
    })
}

/// Scans a log region (slot 0 first; a short tail is ignored).
pub fn scan(region: &[u8]) -> LogScan {
    let mut out = LogScan {
        next: 1,
        ..LogScan::default()
    };
    for (i, slot) in region.chunks_exact(RECORD_LEN).enumerate() {
        if is_blank(slot) {
            continue;
        }
        let seq = i as u64 + 1;
        out.next = seq + 1;
        match decode(seq, slot) {
            Ok(r) => out.records.push(r),
            Err(e) => out.bad.push(BadSlot {
                seq,
                reason: e.to_string(),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let b = encode(7, "w1", "n2", b"w1-42").unwrap();
        assert_eq!(b.len(), RECORD_LEN);
        assert_eq!(
            decode(7, &b).unwrap(),
            LogRecord {
                seq: 7,
                client: "w1".into(),
                node: "n2".into(),
                payload: "w1-42".into(),
            }
        );
        let full = vec![b'x'; MAX_PAYLOAD];
        assert_eq!(
            decode(1, &encode(1, "", "", &full).unwrap())
                .unwrap()
                .payload
                .len(),
            MAX_PAYLOAD
        );
    }

    #[test]
    fn oversized_fields_are_refused() {
        let long = "x".repeat(MAX_NAME + 1);
        assert_eq!(encode(1, &long, "n1", b""), Err(LogError::ClientTooLong));
        let cut = decode(1, &encode(1, "c", &long, b"").unwrap()).unwrap();
        assert_eq!(cut.node.len(), MAX_NAME, "a long node name is cut");
        assert_eq!(
            encode(1, "c", "n1", &[0; MAX_PAYLOAD + 1]),
            Err(LogError::PayloadTooLong(MAX_PAYLOAD + 1))
        );
    }

    #[test]
    fn torn_corrupted_and_misplaced_records_are_detected() {
        let good = encode(3, "c", "n1", b"payload").unwrap();
        // Torn: only the first 256 bytes reached the disk.
        let mut torn = vec![0u8; RECORD_LEN];
        torn[..256].copy_from_slice(&good[..256]);
        assert_eq!(decode(3, &torn), Err(LogError::Checksum));
        // Torn the other way: the tail landed, the head did not.
        let mut head_lost = good.clone();
        head_lost[..256].fill(0);
        assert_eq!(decode(3, &head_lost), Err(LogError::Magic));
        // One bit flipped in the payload.
        let mut flipped = good.clone();
        flipped[PAYLOAD_AT + 3] ^= 1;
        assert_eq!(decode(3, &flipped), Err(LogError::Checksum));
        // A valid record in another record's slot.
        assert_eq!(
            decode(4, &good),
            Err(LogError::Misplaced {
                expected: 4,
                found: 3
            })
        );
    }

    #[test]
    fn a_scan_reports_bad_slots_and_appends_after_them() {
        let mut region = vec![0u8; 6 * RECORD_LEN];
        for seq in [1u64, 2, 4] {
            let at = (seq as usize - 1) * RECORD_LEN;
            region[at..at + RECORD_LEN].copy_from_slice(&encode(seq, "c", "n1", b"p").unwrap());
        }
        // Slot 5 torn; slot 3 never written.
        region[4 * RECORD_LEN..4 * RECORD_LEN + 100].fill(0xAB);
        let s = scan(&region);
        let seqs: Vec<u64> = s.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, [1, 2, 4]);
        assert_eq!(s.bad.len(), 1);
        assert_eq!(s.bad[0].seq, 5);
        assert!(s.bad[0].reason.contains("magic"), "{}", s.bad[0].reason);
        assert_eq!(s.next, 6, "appends go after the torn record");
        assert_eq!(scan(&[0u8; 4 * RECORD_LEN]).next, 1);
        assert_eq!(scan(&[]).next, 1);
    }
}
