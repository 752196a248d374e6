//! The durable consensus log: raft's snapshot, entries and hard state in a directory.
//!
//! # Layout
//!
//! - `snapshot.json`: the latest [`SnapshotRec`], replaced atomically: written to
//!   `snapshot.json.tmp`, fsynced, renamed over, then the directory fsynced.
//! - `log.jsonl`: append-only, one JSON record per line. A record is one batch's
//!   entries and hard state, `{"entries":[{...},...],"hard_state":{...}}` (either part
//!   may be absent), written with ONE write call and one fsync (group commit). A batch
//!   is one line so that a crash mid-append tears exactly one line, the last.
//!
//! Loading replays the records in order with the semantics of [`Restored::apply`] (an
//! entry at an index that exists truncates the suffix), then applies the snapshot, which
//! drops the entries at or below its index. A torn or corrupt last line is a write that
//! never completed (no `write` returned for it): it is dropped and cut off the file. A
//! corrupt line before the last is an error naming the line: it held a batch that was
//! durable, perhaps committed entries, and is not silently lost.
//!
//! A compaction (`PersistBatch::compact`) writes `snapshot.json`, then, if the log file
//! holds entries it covers, rewrites `log.jsonl` as one record with the remaining
//! entries and the hard state (`log.jsonl.tmp`, fsync, rename, fsync of the directory).
//!
//! # Durability
//!
//! Raft requires a node to persist its entries and hard state (term, vote, commit)
//! before it sends the messages that depend on them (a vote, an append acknowledgement):
//! a node that forgot its vote after a restart could vote twice in a term, and an
//! acknowledged entry must survive on the majority that acknowledged it. So
//! [`DurableLog::write`] returns only when the batch is durable: each file is fsynced,
//! and its directory after a create or a rename. Inside a write the order is: the
//! snapshot, then the entries and hard state, then the compaction.
//!
//! A crash (or an error such as a full disk, `ENOSPC`) inside a `write` leaves, for the
//! next [`DurableLog::open`], one of: the state before the batch; the batch's received
//! snapshot alone (the append did not complete); the batch without its compaction; the
//! whole batch. Each is contiguous and valid for raft: a received snapshot holds
//! committed state (the commit index is raised to it, see [`Restored::apply`]), and a
//! compaction is local. A failed data write removes its temporary file (freeing the
//! space); a failed append leaves at most a torn last line, which the next open drops.
//! After any failed write the handle refuses further writes ([`DiskError::Poisoned`]):
//! the caller's raft state is ahead of the disk and must be rebuilt by reopening.
//!
//! The I/O is blocking std I/O; the runtime calls it from a blocking context.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::records::{BatchError, EntryRec, HardStateRec, PersistBatch, Restored, SnapshotRec};

const SNAPSHOT: &str = "snapshot.json";
const SNAPSHOT_TMP: &str = "snapshot.json.tmp";
const LOG: &str = "log.jsonl";
const LOG_TMP: &str = "log.jsonl.tmp";

/// What can go wrong with the durable log. Each variant names the file and the
/// operation.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{path}: cannot create the directory: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path}: cannot fsync: {source}")]
    Fsync { path: PathBuf, source: io::Error },
    #[error("{path}: cannot remove: {source}")]
    Remove { path: PathBuf, source: io::Error },
    #[error("{from}: cannot rename to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("{path}: cannot parse: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}:{line}: cannot parse the record: {source}")]
    ParseLine {
        path: PathBuf,
        line: usize,
        source: serde_json::Error,
    },
    #[error("{path}: cannot encode: {source}")]
    Encode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: the entries are not contiguous: {index} follows {after}")]
    Hole {
        path: PathBuf,
        after: u64,
        index: u64,
    },
    #[error("refused a batch (nothing written): {0}")]
    Batch(#[from] BatchError),
    #[error("{dir}: an earlier write failed; reopen the log")]
    Poisoned { dir: PathBuf },
}

/// One line of `log.jsonl`, as read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogRecord {
    #[serde(default)]
    entries: Vec<EntryRec>,
    #[serde(default)]
    hard_state: Option<HardStateRec>,
}

/// One line of `log.jsonl`, as written (borrowing the batch's entries).
#[derive(Debug, Serialize)]
struct LogRecordOut<'a> {
    #[serde(skip_serializing_if = "<[EntryRec]>::is_empty")]
    entries: &'a [EntryRec],
    #[serde(skip_serializing_if = "Option::is_none")]
    hard_state: Option<HardStateRec>,
}

/// The durable consensus log in one directory. See the module documentation.
#[derive(Debug)]
pub struct DurableLog {
    dir: PathBuf,
    /// `log.jsonl`, opened for appending.
    log: File,
    /// What is durable, as [`Restored::apply`] of the batches written.
    state: Restored,
    /// The lowest entry index with a record in `log.jsonl`: a compaction up to at
    /// least this index has entries to drop from the file.
    log_min_index: Option<u64>,
    /// Set by a failed write: the disk may be behind the caller.
    poisoned: bool,
    faults: Faults,
}

impl DurableLog {
    /// Opens the log in `dir`, creating the directory (mode 0700) if missing, and
    /// returns what it holds.
    pub fn open(dir: &Path) -> Result<(DurableLog, Restored), DiskError> {
        ensure_dir(dir)?;
        for tmp in [SNAPSHOT_TMP, LOG_TMP] {
            remove_leftover(&dir.join(tmp))?;
        }
        let snapshot = read_snapshot(&dir.join(SNAPSHOT))?;
        let (log, records) = open_log(dir)?;
        let mut state = Restored::default();
        let mut log_min_index = None;
        for r in records {
            log_min_index = min_index(log_min_index, &r.entries);
            state.apply(&PersistBatch {
                entries: r.entries,
                hard_state: r.hard_state,
                ..PersistBatch::default()
            });
        }
        if let Some(s) = snapshot {
            state.apply(&PersistBatch {
                snapshot: Some(s),
                ..PersistBatch::default()
            });
        }
        check_contiguous(&dir.join(LOG), &state)?;
        let restored = state.clone();
        let me = DurableLog {
            dir: dir.to_path_buf(),
            log,
            state,
            log_min_index,
            poisoned: false,
            faults: Faults::default(),
        };
        Ok((me, restored))
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `batch`; it is durable when this returns `Ok`. A batch that would break
    /// the log's contiguity ([`Restored::check`]) is refused before anything is written.
    /// After any other error the handle is poisoned: reopen the log (and rebuild the raft
    /// node from what it restores).
    pub fn write(&mut self, batch: &PersistBatch) -> Result<(), DiskError> {
        if self.poisoned {
            return Err(DiskError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        self.state.check(batch)?;
        let written = self.write_checked(batch);
        if written.is_err() {
            self.poisoned = true;
        }
        written
    }

    fn write_checked(&mut self, b: &PersistBatch) -> Result<(), DiskError> {
        if let Some(s) = b.snapshot.as_ref().filter(|s| self.state.takes_snapshot(s)) {
            self.put_snapshot(s)?;
        }
        self.append(&b.entries, b.hard_state)?;
        self.state.apply(b);
        // The compaction was taken (not stale) iff it is now the snapshot held.
        if let Some(c) = b.compact.as_ref() {
            if self.state.snapshot.as_ref() == Some(c) {
                self.put_snapshot(c)?;
                if self.log_min_index.is_some_and(|m| m <= c.index) {
                    self.rewrite_log()?;
                }
            }
        }
        Ok(())
    }

    fn put_snapshot(&mut self, s: &SnapshotRec) -> Result<(), DiskError> {
        let path = self.dir.join(SNAPSHOT);
        let bytes = serde_json::to_vec(s).map_err(|source| DiskError::Encode {
            path: path.clone(),
            source,
        })?;
        write_atomic(&mut self.faults, &self.dir, SNAPSHOT_TMP, SNAPSHOT, &bytes)
    }

    /// Appends one record (group commit: one write, one fsync).
    fn append(&mut self, entries: &[EntryRec], hs: Option<HardStateRec>) -> Result<(), DiskError> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let path = self.dir.join(LOG);
        let line = encode_line(&path, entries, hs)?;
        if let Err(source) = self.faults.write_all(&mut self.log, &line) {
            return Err(DiskError::Write { path, source });
        }
        // fdatasync: flushes the data and the file size, all a reader needs.
        self.log
            .sync_data()
            .map_err(|source| DiskError::Fsync { path, source })?;
        self.log_min_index = min_index(self.log_min_index, entries);
        Ok(())
    }

    /// Replaces `log.jsonl` with one record: the entries after the snapshot and the
    /// hard state. Then reopens the append handle on the new file.
    fn rewrite_log(&mut self) -> Result<(), DiskError> {
        let path = self.dir.join(LOG);
        let line = encode_line(&path, &self.state.entries, Some(self.state.hard_state))?;
        write_atomic(&mut self.faults, &self.dir, LOG_TMP, LOG, &line)?;
        self.log = open_append(&path)?;
        self.log_min_index = self.state.entries.first().map(|e| e.index);
        Ok(())
    }
}

fn encode_line(
    path: &Path,
    entries: &[EntryRec],
    hard_state: Option<HardStateRec>,
) -> Result<Vec<u8>, DiskError> {
    let rec = LogRecordOut {
        entries,
        hard_state,
    };
    let mut line = serde_json::to_vec(&rec).map_err(|source| DiskError::Encode {
        path: path.to_path_buf(),
        source,
    })?;
    line.push(b'\n');
    Ok(line)
}

fn min_index(current: Option<u64>, entries: &[EntryRec]) -> Option<u64> {
    entries.iter().map(|e| e.index).chain(current).min()
}

/// Creates `dir` (mode 0700) if missing, and makes its entry durable in the parent.
fn ensure_dir(dir: &Path) -> Result<(), DiskError> {
    if dir.is_dir() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DiskError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    match dir.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => Ok(()),
    }
}

/// Removes a temporary file a crash left behind (its rename never happened).
fn remove_leftover(path: &Path) -> Result<(), DiskError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DiskError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn read_snapshot(path: &Path) -> Result<Option<SnapshotRec>, DiskError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DiskError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| DiskError::Parse {
            path: path.to_path_buf(),
            source,
        })
}

/// Opens `log.jsonl` (creating it), reads its records and cuts off a torn last line.
fn open_log(dir: &Path) -> Result<(File, Vec<LogRecord>), DiskError> {
    let path = dir.join(LOG);
    let existed = path.exists();
    let mut log = open_append(&path)?;
    if !existed {
        sync_dir(dir)?;
    }
    let mut bytes = Vec::new();
    log.read_to_end(&mut bytes)
        .map_err(|source| DiskError::Read {
            path: path.clone(),
            source,
        })?;
    let (records, good) = parse_log(&path, &bytes)?;
    if good < bytes.len() {
        tracing::warn!(
            path = %path.display(),
            bytes = bytes.len() - good,
            "dropping the torn last record of the consensus log (a write that never completed)"
        );
        log.set_len(good as u64)
            .map_err(|source| DiskError::Write {
                path: path.clone(),
                source,
            })?;
        log.sync_all()
            .map_err(|source| DiskError::Fsync { path, source })?;
    }
    Ok((log, records))
}

fn open_append(path: &Path) -> Result<File, DiskError> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        })
}

/// Parses the records of `log.jsonl`; returns them and the length of the good prefix.
/// The last line is dropped if it has no newline or does not parse; an earlier line
/// that does not parse is an error naming it (1-based).
fn parse_log(path: &Path, bytes: &[u8]) -> Result<(Vec<LogRecord>, usize), DiskError> {
    let mut records = Vec::new();
    let mut good = 0;
    let mut line_no = 0;
    while let Some(nl) = bytes[good..].iter().position(|&b| b == b'\n') {
        line_no += 1;
        let end = good + nl + 1;
        match serde_json::from_slice::<LogRecord>(&bytes[good..end - 1]) {
            Ok(r) => records.push(r),
            Err(_) if end == bytes.len() => break,
            Err(source) => {
                return Err(DiskError::ParseLine {
                    path: path.to_path_buf(),
                    line: line_no,
                    source,
                })
            }
        }
        good = end;
    }
    Ok((records, good))
}

/// The loaded entries must follow one another (they do unless the file was altered).
fn check_contiguous(path: &Path, state: &Restored) -> Result<(), DiskError> {
    for w in state.entries.windows(2) {
        if w[1].index != w[0].index + 1 {
            return Err(DiskError::Hole {
                path: path.to_path_buf(),
                after: w[0].index,
                index: w[1].index,
            });
        }
    }
    Ok(())
}

/// Replaces `dir/name` with `bytes`: write `dir/tmp`, fsync, rename, fsync `dir`. A
/// failed write removes the temporary file (on a full disk, that frees the space).
fn write_atomic(
    faults: &mut Faults,
    dir: &Path,
    tmp: &str,
    name: &str,
    bytes: &[u8],
) -> Result<(), DiskError> {
    let tmp = dir.join(tmp);
    let path = dir.join(name);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|source| DiskError::Open {
            path: tmp.clone(),
            source,
        })?;
    let synced = match faults.write_all(&mut f, bytes) {
        Ok(()) => f.sync_all().map_err(|source| DiskError::Fsync {
            path: tmp.clone(),
            source,
        }),
        Err(source) => Err(DiskError::Write {
            path: tmp.clone(),
            source,
        }),
    };
    drop(f);
    if let Err(e) = synced {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, &path).map_err(|source| DiskError::Rename {
        from: tmp,
        to: path,
        source,
    })?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    let d = File::open(dir).map_err(|source| DiskError::Open {
        path: dir.to_path_buf(),
        source,
    })?;
    d.sync_all().map_err(|source| DiskError::Fsync {
        path: dir.to_path_buf(),
        source,
    })
}

/// The one place data reaches a file, so that tests can make a write fail part way
/// (as `ENOSPC` does). Without `cfg(test)` it is plain `write_all`.
#[derive(Debug, Default)]
struct Faults {
    /// Fail the data write after this many succeed: write half the buffer, then
    /// return `ENOSPC`.
    #[cfg(test)]
    fail_after: Option<usize>,
}

impl Faults {
    fn write_all(&mut self, f: &mut File, buf: &[u8]) -> io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_after {
            if n == 0 {
                self.fail_after = None;
                f.write_all(&buf[..buf.len() / 2])?;
                return Err(io::Error::from_raw_os_error(libc::ENOSPC));
            }
            self.fail_after = Some(n - 1);
        }
        f.write_all(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(index: u64, term: u64) -> EntryRec {
        EntryRec {
            index,
            term,
            data: vec![index as u8, term as u8, 0xff],
        }
    }

    fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<EntryRec> {
        range.map(|i| entry(i, term)).collect()
    }

    fn hs(term: u64, vote: u64, commit: u64) -> HardStateRec {
        HardStateRec { term, vote, commit }
    }

    fn snap(index: u64, term: u64) -> SnapshotRec {
        SnapshotRec {
            index,
            term,
            voters: vec![1, 2, 3],
            data: format!("register@{index}").into_bytes(),
        }
    }

    fn append(es: Vec<EntryRec>, h: Option<HardStateRec>) -> PersistBatch {
        PersistBatch {
            entries: es,
            hard_state: h,
            ..PersistBatch::default()
        }
    }

    fn reference(batches: &[PersistBatch]) -> Restored {
        let mut r = Restored::default();
        for b in batches {
            r.apply(b);
        }
        r
    }

    fn write_all(dir: &Path, batches: &[PersistBatch]) -> DurableLog {
        let (mut log, _) = DurableLog::open(dir).unwrap();
        for b in batches {
            log.write(b).unwrap();
        }
        log
    }

    fn reopen(dir: &Path) -> Restored {
        DurableLog::open(dir).unwrap().1
    }

    /// Copies the regular files of `from` into a new directory (a "power loss" image:
    /// everything in it was fsynced when the copy was taken).
    fn copy_dir(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }

    fn log_entry_indexes(dir: &Path) -> Vec<u64> {
        let bytes = fs::read(dir.join(LOG)).unwrap();
        let (records, good) = parse_log(&dir.join(LOG), &bytes).unwrap();
        assert_eq!(good, bytes.len());
        records
            .iter()
            .flat_map(|r| r.entries.iter().map(|e| e.index))
            .collect()
    }

    fn no_leftovers(dir: &Path) {
        assert!(!dir.join(SNAPSHOT_TMP).exists());
        assert!(!dir.join(LOG_TMP).exists());
    }

    #[test]
    fn round_trip_and_fresh_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state").join("quorum");
        let (log, restored) = DurableLog::open(&dir).unwrap();
        assert_eq!(restored, Restored::default());
        assert_eq!(log.dir(), dir);
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        drop(log);

        let batches = vec![
            append(entries(1..=3, 1), Some(hs(1, 2, 0))),
            append(entries(4..=6, 1), Some(hs(1, 2, 4))),
            append(vec![], Some(hs(2, 0, 5))),
            append(entries(7..=7, 2), None),
            PersistBatch::default(),
        ];
        drop(write_all(&dir, &batches));
        let restored = reopen(&dir);
        assert_eq!(restored, reference(&batches));
        assert_eq!(restored.entries.len(), 7);
        assert_eq!(restored.hard_state, hs(2, 0, 5));
        // Reopening twice changes nothing.
        assert_eq!(reopen(&dir), restored);
        // The file holds one line per non-empty batch.
        let text = fs::read_to_string(dir.join(LOG)).unwrap();
        assert_eq!(text.lines().count(), 4);
        assert!(text.starts_with(r#"{"entries":[{"index":1,"term":1,"#));
    }

    #[test]
    fn an_entry_at_an_existing_index_truncates_the_suffix() {
        let tmp = tempfile::tempdir().unwrap();
        let batches = vec![
            append(entries(1..=8, 1), Some(hs(1, 1, 3))),
            append(vec![entry(5, 2)], Some(hs(2, 3, 4))),
        ];
        drop(write_all(tmp.path(), &batches));
        let restored = reopen(tmp.path());
        assert_eq!(restored, reference(&batches));
        let got: Vec<_> = restored.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got, vec![(1, 1), (2, 1), (3, 1), (4, 1), (5, 2)]);
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_writes_continue() {
        let full = append(entries(4..=5, 1), Some(hs(1, 1, 4)));
        let line = encode_line(Path::new(LOG), &full.entries, full.hard_state).unwrap();
        let tails: [&[u8]; 4] = [
            b"garbage without a newline",
            &line[..line.len() / 2],
            &line[..line.len() - 1],
            b"{\"entries\":[{\"index\":4,\n",
        ];
        for tail in tails {
            let tmp = tempfile::tempdir().unwrap();
            let mut batches = vec![
                append(entries(1..=3, 1), Some(hs(1, 1, 2))),
                append(vec![], Some(hs(1, 1, 3))),
            ];
            drop(write_all(tmp.path(), &batches));
            let good_len = fs::metadata(tmp.path().join(LOG)).unwrap().len();
            let mut f = OpenOptions::new()
                .append(true)
                .open(tmp.path().join(LOG))
                .unwrap();
            f.write_all(tail).unwrap();
            drop(f);

            let (mut log, restored) = DurableLog::open(tmp.path()).unwrap();
            assert_eq!(restored, reference(&batches));
            assert_eq!(
                fs::metadata(tmp.path().join(LOG)).unwrap().len(),
                good_len,
                "the torn tail is cut off"
            );
            log.write(&full).unwrap();
            drop(log);
            batches.push(full.clone());
            assert_eq!(reopen(tmp.path()), reference(&batches));
        }
    }

    #[test]
    fn a_corrupt_line_before_the_last_is_an_error_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let batches = vec![
            append(entries(1..=2, 1), Some(hs(1, 1, 1))),
            append(entries(3..=4, 1), Some(hs(1, 1, 3))),
            append(entries(5..=5, 1), None),
        ];
        drop(write_all(tmp.path(), &batches));
        let path = tmp.path().join(LOG);
        let text = fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        let broken = lines[1].replacen("\"index\":3", "\"index\":\"three\"", 1);
        lines[1] = &broken;
        fs::write(&path, lines.join("\n") + "\n").unwrap();

        let err = DurableLog::open(tmp.path()).unwrap_err();
        assert!(
            matches!(err, DiskError::ParseLine { line: 2, .. }),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(msg.contains("log.jsonl:2:"), "{msg}");
        // An unknown field is corruption too (deny_unknown_fields).
        let text = text.replacen("\"commit\":1", "\"commit\":1,\"extra\":0", 1);
        fs::write(&path, text).unwrap();
        let err = DurableLog::open(tmp.path()).unwrap_err();
        assert!(err.to_string().contains("log.jsonl:1:"), "{err}");
    }

    #[test]
    fn compaction_drops_covered_entries_from_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut batches = vec![
            append(entries(1..=6, 1), Some(hs(1, 1, 5))),
            append(entries(7..=10, 2), Some(hs(2, 1, 8))),
            PersistBatch {
                compact: Some(snap(6, 1)),
                ..PersistBatch::default()
            },
        ];
        let mut log = write_all(dir, &batches);
        assert_eq!(log_entry_indexes(dir), (7..=10).collect::<Vec<_>>());
        no_leftovers(dir);
        let restored = reopen(dir);
        assert_eq!(restored, reference(&batches));
        assert_eq!(restored.snapshot, Some(snap(6, 1)));
        assert_eq!(restored.entries, entries(7..=10, 2));
        assert_eq!(restored.hard_state, hs(2, 1, 8));

        // Nothing covered is left in the file: the same compaction does not rewrite it.
        let before = fs::read(dir.join(LOG)).unwrap();
        log.write(&batches[2]).unwrap();
        assert_eq!(fs::read(dir.join(LOG)).unwrap(), before);

        // Appends after a compaction go to the new file; a compaction in the same
        // batch as entries and a hard state covers them in order.
        let b = PersistBatch {
            entries: entries(11..=12, 2),
            hard_state: Some(hs(2, 1, 11)),
            compact: Some(snap(11, 2)),
            ..PersistBatch::default()
        };
        log.write(&b).unwrap();
        batches.push(b);
        drop(log);
        assert_eq!(log_entry_indexes(dir), vec![12]);
        assert_eq!(reopen(dir), reference(&batches));
    }

    #[test]
    fn snapshots_received_and_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let batches = vec![
            append(entries(1..=5, 1), Some(hs(1, 1, 2))),
            // A snapshot inside the log keeps the entries that follow it.
            PersistBatch {
                snapshot: Some(snap(3, 1)),
                hard_state: Some(hs(1, 1, 3)),
                ..PersistBatch::default()
            },
            // One beyond it replaces the log; its entries follow it.
            PersistBatch {
                snapshot: Some(snap(10, 3)),
                entries: entries(11..=12, 3),
                hard_state: Some(hs(3, 0, 10)),
                ..PersistBatch::default()
            },
            // A compaction older than the snapshot held is ignored.
            PersistBatch {
                compact: Some(snap(4, 1)),
                ..PersistBatch::default()
            },
        ];
        drop(write_all(tmp.path(), &batches));
        let restored = reopen(tmp.path());
        assert_eq!(restored, reference(&batches));
        assert_eq!(restored.snapshot, Some(snap(10, 3)));
        assert_eq!(restored.entries, entries(11..=12, 3));
    }

    #[test]
    fn a_batch_that_breaks_contiguity_is_refused_before_any_write() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = append(entries(1..=3, 1), Some(hs(1, 1, 1)));
        let mut log = write_all(tmp.path(), std::slice::from_ref(&ok));
        let before = fs::read(tmp.path().join(LOG)).unwrap();
        let hole = append(entries(5..=5, 1), Some(hs(1, 1, 2)));
        let err = log.write(&hole).unwrap_err();
        assert!(matches!(
            err,
            DiskError::Batch(BatchError::Hole { index: 5, last: 3 })
        ));
        assert_eq!(fs::read(tmp.path().join(LOG)).unwrap(), before);
        // Not poisoned: the log still takes valid batches.
        let next = append(entries(4..=4, 1), None);
        log.write(&next).unwrap();
        drop(log);
        assert_eq!(reopen(tmp.path()), reference(&[ok, next]));
    }

    /// A full disk at each data write of a batch with every part: the write fails, the
    /// handle refuses more, and the next open restores one of the states the module
    /// documentation lists; writing then continues from it.
    #[test]
    fn enospc_at_each_step_leaves_a_valid_state() {
        let base = vec![append(entries(1..=6, 1), Some(hs(1, 1, 4)))];
        let batch = PersistBatch {
            snapshot: Some(snap(8, 2)),
            entries: entries(9..=10, 2),
            hard_state: Some(hs(2, 0, 9)),
            compact: Some(snap(9, 2)),
        };
        let before = reference(&base);
        let mut snapshot_only = before.clone();
        snapshot_only.apply(&PersistBatch {
            snapshot: batch.snapshot.clone(),
            ..PersistBatch::default()
        });
        let mut uncompacted = before.clone();
        uncompacted.apply(&PersistBatch {
            compact: None,
            ..batch.clone()
        });
        let mut full = before.clone();
        full.apply(&batch);
        assert_eq!(snapshot_only.hard_state.commit, 8, "raised to the snapshot");
        // The data writes: snapshot.json.tmp, the append, snapshot.json.tmp for the
        // compaction, log.jsonl.tmp.
        let expected = [&before, &snapshot_only, &uncompacted, &full];
        let next = append(entries(11..=11, 2), Some(hs(2, 0, 10)));
        for (n, want) in expected.into_iter().enumerate() {
            let tmp = tempfile::tempdir().unwrap();
            let mut log = write_all(tmp.path(), &base);
            log.faults.fail_after = Some(n);
            let err = log.write(&batch).unwrap_err();
            let DiskError::Write { source, .. } = &err else {
                panic!("step {n}: {err:?}");
            };
            assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
            assert!(matches!(log.write(&next), Err(DiskError::Poisoned { .. })));
            drop(log);

            let (mut log, restored) = DurableLog::open(tmp.path()).unwrap();
            assert_eq!(&restored, want, "failure at data write {n}");
            no_leftovers(tmp.path());
            let at = restored.last_index() + 1;
            let next = append(entries(at..=at, 2), Some(hs(2, 0, at - 1)));
            log.write(&next).unwrap();
            drop(log);
            let mut want = want.clone();
            want.apply(&next);
            assert_eq!(reopen(tmp.path()), want, "writing after failure {n}");
        }
    }

    /// Turns random bytes into a batch raft could produce from `r`: appends (possibly
    /// overwriting the uncommitted suffix under a newer term), hard states, received
    /// snapshots, compactions up to the commit index, and stale compactions.
    fn batch_for(r: &Restored, term: &mut u64, (kind, a, b): (u8, u8, u8)) -> PersistBatch {
        let snap_index = r.snapshot.as_ref().map_or(0, |s| s.index);
        let last = r.last_index();
        let commit = r.hard_state.commit;
        let (a, b) = (u64::from(a), u64::from(b));
        let mut batch = PersistBatch::default();
        match kind % 6 {
            0..=2 => {
                let lo = snap_index.max(commit) + 1;
                let start = lo + a % (last + 2 - lo);
                if start <= last {
                    *term += 1;
                }
                let end = start + b % 4;
                batch.entries = entries(start..=end, *term);
                if kind % 6 != 2 {
                    batch.hard_state = Some(hs(*term, b % 3, end.min(commit + a % 3)));
                }
                if kind % 6 == 1 && b % 2 == 0 && commit > snap_index {
                    batch.compact = Some(snap(commit, *term));
                }
            }
            3 => {
                *term += a % 2;
                batch.hard_state = Some(hs(*term, b % 3, last.min(commit + a % 3)));
            }
            4 => {
                *term += 1;
                let index = snap_index.max(commit) + 1 + a % 6;
                batch.snapshot = Some(snap(index, *term));
                batch.entries = entries(index + 1..=index + b % 3, *term);
                batch.hard_state = Some(hs(*term, 0, index));
            }
            _ => {
                let index = if b % 3 == 0 {
                    snap_index.saturating_sub(1 + a % 3)
                } else {
                    snap_index + a % (commit - snap_index + 1)
                };
                batch.compact = Some(snap(index, *term));
            }
        }
        batch
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Power loss after every write: a copy of the directory taken when `write`
        /// returned restores exactly the reference after that many batches.
        #[test]
        fn power_loss_after_any_write_restores_that_prefix(
            ops in prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 1..14)
        ) {
            let tmp = tempfile::tempdir().unwrap();
            let live = tmp.path().join("live");
            let (mut log, _) = DurableLog::open(&live).unwrap();
            let mut r = Restored::default();
            let mut refs = vec![r.clone()];
            let mut term = 1;
            for (k, op) in ops.iter().enumerate() {
                let b = batch_for(&r, &mut term, *op);
                prop_assert_eq!(r.check(&b), Ok(()));
                log.write(&b).unwrap();
                r.apply(&b);
                refs.push(r.clone());
                copy_dir(&live, &tmp.path().join(format!("after-{}", k + 1)));
            }
            drop(log);
            for (k, want) in refs.iter().enumerate().skip(1) {
                let copy = tmp.path().join(format!("after-{k}"));
                prop_assert_eq!(&reopen(&copy), want, "after {} batches", k);
            }
            prop_assert_eq!(&reopen(&live), &r);
        }
    }
}
