//! Split-brain dumps: before a copy that loses a split brain is overwritten, the blocks
//! it wrote apart (its dirty bitmap toward the survivor) are saved to a file the
//! operator can read back (`tandem mirror split-brain-dump`).
//!
//! A dump lives in the mirror's metadata directory as
//! `split-brain/<created_ms>-<survivor>.dump`. Its format:
//! - one line of JSON ([`DumpHeader`]) ended by `\n`;
//! - then, for each run of changed blocks in offset order: offset u64, length u32 (both
//!   big-endian, in bytes, multiples of 4096) and `length` bytes of data, until the end
//!   of the file. `runs` and `bytes` in the header count them.
//!
//! It is written to a temporary name, fsynced, renamed and the directory fsynced before
//! the resync may overwrite anything; if that fails the copies stay apart.
//! The encoding and decoding here are pure; [`DumpFile`] does the file I/O.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The `format` value of every dump header.
pub const FORMAT: &str = "tandem-split-brain-dump";
/// The subdirectory of the metadata directory that holds the dumps.
pub const DIR: &str = "split-brain";
/// Bytes of one record's offset and length fields.
pub const RECORD_HEADER_BYTES: usize = 12;

/// Why a dump cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("split-brain dump {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("split-brain dump {name} is malformed: {reason}")]
    Malformed { name: String, reason: String },
    #[error("no split-brain dump {0:?} (see `tandem mirror split-brain-dump NAME`)")]
    NotFound(String),
}

/// The first line of a dump.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpHeader {
    /// Always [`FORMAT`].
    pub format: String,
    pub version: u32,
    pub mirror: String,
    /// The node whose copy was discarded (where the dump is).
    pub node: String,
    /// The node whose copy survived.
    pub survivor: String,
    /// The split-brain policy that decided, or `administrator` (`tandem mirror resolve`).
    pub resolved_by: String,
    /// The discarded copy's generation (hex).
    pub generation: String,
    /// The generation both copies last shared (hex).
    pub shared_generation: String,
    pub block_bytes: u64,
    /// Runs of changed blocks that follow the header, and their bytes.
    pub runs: u64,
    pub bytes: u64,
    pub created_ms: u64,
}

/// One dump as listed: its file name and header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpInfo {
    pub name: String,
    pub file_bytes: u64,
    pub header: DumpHeader,
}

/// One record: `offset u64, length u32` (big-endian) and the data.
pub fn encode_record(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_BYTES + data.len());
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
    out
}

/// The header line (JSON and `\n`).
pub fn encode_header(h: &DumpHeader) -> Vec<u8> {
    let mut line = serde_json::to_vec(h).unwrap_or_default();
    line.push(b'\n');
    line
}

/// One run of blocks of a dump: its offset in the volume and its data.
pub type Run = (u64, Vec<u8>);

/// Decodes a whole dump: its header and its runs; checks the counts.
pub fn decode(name: &str, bytes: &[u8]) -> Result<(DumpHeader, Vec<Run>), DumpError> {
    let bad = |reason: &str| DumpError::Malformed {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let (header, mut rest) = decode_header(name, bytes)?;
    let mut runs = Vec::new();
    while !rest.is_empty() {
        if rest.len() < RECORD_HEADER_BYTES {
            return Err(bad("a record is cut short"));
        }
        let offset = u64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(rest[8..12].try_into().unwrap_or_default()) as usize;
        let data = rest
            .get(RECORD_HEADER_BYTES..RECORD_HEADER_BYTES + len)
            .ok_or_else(|| bad("a record's data is cut short"))?;
        runs.push((offset, data.to_vec()));
        rest = &rest[RECORD_HEADER_BYTES + len..];
    }
    let bytes_total: u64 = runs.iter().map(|(_, d)| d.len() as u64).sum();
    if runs.len() as u64 != header.runs || bytes_total != header.bytes {
        return Err(bad("the runs do not match the header's counts"));
    }
    Ok((header, runs))
}

/// Decodes the header line; returns it and the bytes after it.
pub fn decode_header<'a>(name: &str, bytes: &'a [u8]) -> Result<(DumpHeader, &'a [u8]), DumpError> {
    let bad = |reason: String| DumpError::Malformed {
        name: name.to_string(),
        reason,
    };
    let end = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad("no header line".into()))?;
    let header: DumpHeader =
        serde_json::from_slice(&bytes[..end]).map_err(|e| bad(e.to_string()))?;
    if header.format != FORMAT || header.version != 1 {
        return Err(bad(format!(
            "format {:?} version {} (expected {FORMAT:?} 1)",
            header.format, header.version
        )));
    }
    Ok((header, &bytes[end + 1..]))
}

/// A dump being written: a temporary file renamed into place by [`DumpFile::finish`].
#[derive(Debug)]
pub struct DumpFile {
    dir: PathBuf,
    tmp: PathBuf,
    path: PathBuf,
    file: File,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DumpError + '_ {
    move |source| DumpError::Io {
        path: path.to_owned(),
        source,
    }
}

impl DumpFile {
    /// Creates `<meta_dir>/split-brain/<name>` (as a temporary file for now) and writes
    /// the header line.
    pub fn create(meta_dir: &Path, name: &str, header: &DumpHeader) -> Result<DumpFile, DumpError> {
        let dir = meta_dir.join(DIR);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = dir.join(format!(".{name}.tmp"));
        let path = dir.join(name);
        let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
        file.write_all(&encode_header(header))
            .map_err(io_err(&tmp))?;
        Ok(DumpFile {
            dir,
            tmp,
            path,
            file,
        })
    }

    /// Appends one run of blocks.
    pub fn append(&mut self, offset: u64, data: &[u8]) -> Result<(), DumpError> {
        self.file
            .write_all(&encode_record(offset, data))
            .map_err(io_err(&self.tmp))
    }

    /// Makes the dump durable under its name (fsync, rename, directory fsync).
    pub fn finish(self) -> Result<PathBuf, DumpError> {
        self.file.sync_all().map_err(io_err(&self.tmp))?;
        fs::rename(&self.tmp, &self.path).map_err(io_err(&self.path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(self.path)
    }

    /// Removes the unfinished file (after a failure).
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// The dumps in `meta_dir`, oldest first (a missing directory: none).
pub fn list(meta_dir: &Path) -> Result<Vec<DumpInfo>, DumpError> {
    let dir = meta_dir.join(DIR);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".dump") || name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_bytes = entry.metadata().map_err(io_err(&path))?.len();
        let first = read_header_line(&path)?;
        let (header, _) = decode_header(&name, &first)?;
        out.push(DumpInfo {
            name,
            file_bytes,
            header,
        });
    }
    out.sort_by(|a, b| (a.header.created_ms, &a.name).cmp(&(b.header.created_ms, &b.name)));
    Ok(out)
}

fn read_header_line(path: &Path) -> Result<Vec<u8>, DumpError> {
    use std::io::BufRead;
    let f = File::open(path).map_err(io_err(path))?;
    let mut line = Vec::new();
    std::io::BufReader::new(f)
        .read_until(b'\n', &mut line)
        .map_err(io_err(path))?;
    Ok(line)
}

/// The bytes of dump `name` (None: the newest one).
pub fn read(meta_dir: &Path, name: Option<&str>) -> Result<(String, Vec<u8>), DumpError> {
    let dumps = list(meta_dir)?;
    let found = match name {
        Some(n) => dumps.iter().find(|d| d.name == n),
        None => dumps.last(),
    };
    let Some(d) = found else {
        return Err(DumpError::NotFound(name.unwrap_or("(any)").to_string()));
    };
    let path = meta_dir.join(DIR).join(&d.name);
    let bytes = fs::read(&path).map_err(io_err(&path))?;
    Ok((d.name.clone(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(runs: u64, bytes: u64) -> DumpHeader {
        DumpHeader {
            format: FORMAT.into(),
            version: 1,
            mirror: "data".into(),
            node: "b".into(),
            survivor: "a".into(),
            resolved_by: "administrator".into(),
            generation: format!("{:016x}", 300),
            shared_generation: format!("{:016x}", 100),
            block_bytes: 4096,
            runs,
            bytes,
            created_ms: 1,
        }
    }

    #[test]
    fn records_are_offset_length_data_big_endian() {
        let r = encode_record(0x1000, &[7; 3]);
        assert_eq!(r, [0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 3, 7, 7, 7].to_vec());
    }

    #[test]
    fn a_dump_round_trips_and_is_listed() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = DumpFile::create(dir.path(), "1-a.dump", &header(2, 8192)).unwrap();
        f.append(0, &[1; 4096]).unwrap();
        f.append(1 << 20, &[2; 4096]).unwrap();
        f.finish().unwrap();
        let listed = list(dir.path()).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].header, header(2, 8192));
        let (name, bytes) = read(dir.path(), None).unwrap();
        assert_eq!(name, "1-a.dump");
        let (h, runs) = decode(&name, &bytes).unwrap();
        assert_eq!(h.survivor, "a");
        assert_eq!(runs, vec![(0, vec![1; 4096]), (1 << 20, vec![2; 4096])]);
        assert!(matches!(
            read(dir.path(), Some("nope")),
            Err(DumpError::NotFound(_))
        ));
    }

    #[test]
    fn truncated_or_miscounted_dumps_are_malformed() {
        let mut bytes = encode_header(&header(1, 4096));
        bytes.extend(encode_record(0, &[1; 4096]));
        assert!(decode("x", &bytes).is_ok());
        assert!(decode("x", &bytes[..bytes.len() - 1]).is_err());
        let mut two = bytes.clone();
        two.extend(encode_record(8192, &[1; 4096]));
        assert!(decode("x", &two).is_err(), "more runs than the header says");
        assert!(decode("x", b"{}\n").is_err());
    }

    #[test]
    fn a_dump_that_cannot_be_created_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the dump directory should be (as a full or broken disk would).
        std::fs::write(dir.path().join(DIR), b"").unwrap();
        let err = DumpFile::create(dir.path(), "1-a.dump", &header(0, 0)).unwrap_err();
        assert!(matches!(err, DumpError::Io { .. }), "{err}");
    }
}
