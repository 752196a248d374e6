//! The durable consensus log in the state directory. (Placeholder API; the real one
//! lands with its own module.)

use std::path::{Path, PathBuf};

use super::records::{PersistBatch, Restored};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0}")]
    Io(String),
}

pub struct DurableLog {
    dir: PathBuf,
}

impl DurableLog {
    pub fn open(dir: &Path) -> Result<(DurableLog, Restored), DiskError> {
        Ok((
            DurableLog {
                dir: dir.to_path_buf(),
            },
            Restored::default(),
        ))
    }

    pub fn write(&mut self, _batch: &PersistBatch) -> Result<(), DiskError> {
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
