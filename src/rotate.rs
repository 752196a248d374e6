//! Append-only files rotated by size, as logrotate's `size` + `rotate N` would do it
//! in-process: once a write would take `events.jsonl` past its limit, it becomes
//! `events.jsonl.1` (`.1` becomes `.2`, and so on; the one past `keep` is deleted) and
//! a fresh file is started. Used by the event log (`events.jsonl`, `timelines.jsonl`)
//! and by the daemon's own log (`tandem --log-file`). Readers that want the whole
//! history read [`oldest_first`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How large a file may grow and how many rotated files are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// A write that would take the file past this many bytes rotates it first (a
    /// single larger write still goes whole into a fresh file).
    pub max_bytes: u64,
    /// Rotated files kept (`NAME.1` .. `NAME.keep`); 0 keeps none.
    pub keep: usize,
}

impl Policy {
    /// 16 MiB, four old files.
    pub const DEFAULT: Policy = Policy {
        max_bytes: 16 * 1024 * 1024,
        keep: 4,
    };

    /// Whether `incoming` more bytes on a file of `size` bytes rotate it first.
    pub fn rotate_before(&self, size: u64, incoming: u64) -> bool {
        size > 0 && size.saturating_add(incoming) > self.max_bytes
    }
}

/// `path.N`: the N-th newest rotated file (`path` itself for 0).
pub fn rotated(path: &Path, n: usize) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut s = path.as_os_str().to_os_string();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// The files that exist of `path`'s history, oldest first, `path` itself last.
/// Rotated files up to the first missing number are listed; `keep` is no bound here,
/// so a history kept under a larger `keep` before is read whole.
pub fn oldest_first(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = (1..)
        .map(|n| rotated(path, n))
        .take_while(|p| p.exists())
        .collect();
    out.reverse();
    out.push(path.to_path_buf());
    out
}

/// Shifts `path` to `path.1`, `path.1` to `path.2`, ..., dropping `path.keep`
/// (everything with `keep` 0).
fn shift(path: &Path, keep: usize) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    match std::fs::remove_file(rotated(path, keep)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    for n in (0..keep).rev() {
        match std::fs::rename(rotated(path, n), rotated(path, n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// An append-only file that rotates itself by [`Policy`].
pub struct RotatingFile {
    path: PathBuf,
    file: File,
    size: u64,
    policy: Policy,
}

impl RotatingFile {
    /// Opens (or creates) `path` for appending.
    pub fn open(path: &Path, policy: Policy) -> std::io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            path: path.to_path_buf(),
            file,
            size,
            policy,
        })
    }

    /// Rotates now: the current file becomes `path.1` and a fresh one is started.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        shift(&self.path, self.policy.keep)?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

impl Write for RotatingFile {
    /// Writes all of `buf` (a whole line, for the callers), rotating first if it would
    /// take the file past the limit, so a line is never split across two files.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.policy.rotate_before(self.size, buf.len() as u64) {
            self.rotate()?;
        }
        self.file.write_all(buf)?;
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<String> {
        oldest_first(path)
            .iter()
            .flat_map(|p| {
                std::fs::read_to_string(p)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_string)
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn rotation_decision() {
        let p = Policy {
            max_bytes: 10,
            keep: 2,
        };
        assert!(!p.rotate_before(0, 100), "an empty file takes any write");
        assert!(!p.rotate_before(4, 6));
        assert!(p.rotate_before(4, 7));
    }

    #[test]
    fn rotated_names() {
        let p = Path::new("state/events.jsonl");
        assert_eq!(rotated(p, 0), PathBuf::from("state/events.jsonl"));
        assert_eq!(rotated(p, 3), PathBuf::from("state/events.jsonl.3"));
    }

    #[test]
    fn rotates_by_size_and_loses_nothing_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let policy = Policy {
            max_bytes: 100,
            keep: 3,
        };
        let mut f = RotatingFile::open(&path, policy).unwrap();
        for i in 0..20 {
            // 10 bytes a line: 10 lines a file.
            f.write_all(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        let files = oldest_first(&path);
        assert_eq!(files.len(), 2, "{files:?}");
        for p in &files {
            assert!(std::fs::metadata(p).unwrap().len() <= 100);
        }
        let want: Vec<String> = (0..20).map(|i| format!("line {i:04}")).collect();
        assert_eq!(lines(&path), want, "every line, in order, across the files");
        // Reopened, it goes on where it was and keeps at most `keep` old files.
        drop(f);
        let mut f = RotatingFile::open(&path, policy).unwrap();
        for i in 20..60 {
            f.write_all(format!("line {i:04}\n").as_bytes()).unwrap();
        }
        assert_eq!(oldest_first(&path).len(), 4);
        assert!(!rotated(&path, 4).exists());
        let want: Vec<String> = (20..60).map(|i| format!("line {i:04}")).collect();
        assert_eq!(lines(&path), want, "the newest 4 files' lines, in order");
    }

    #[test]
    fn keep_zero_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut f = RotatingFile::open(
            &path,
            Policy {
                max_bytes: 8,
                keep: 0,
            },
        )
        .unwrap();
        f.write_all(b"aaaaaaa\n").unwrap();
        f.write_all(b"bbbbbbb\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "bbbbbbb\n");
        assert!(!rotated(&path, 1).exists());
    }
}
