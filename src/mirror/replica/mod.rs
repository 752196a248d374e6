//! STUB of the replicated volume's public API, so that the daemon's integration compiles
//! while the engine is written; replaced by the engine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{MirrorConfig, ReplicationMode};
use crate::event::EventLog;
use crate::mirror::generation::SplitBrainPolicy;
use crate::mirror::status::MirrorStatus;
use crate::mirror::{Export, ExportError, Extent};

pub struct MirrorSpec {
    pub name: String,
    pub cluster: String,
    pub local_node: String,
    pub key: Vec<u8>,
    pub backing: PathBuf,
    pub size: Option<u64>,
    pub meta_dir: PathBuf,
    pub listen: SocketAddr,
    pub peers: Vec<PeerSpec>,
    pub split_brain: SplitBrainPolicy,
    pub fencing: bool,
}
pub struct PeerSpec {
    pub node: String,
    pub address: SocketAddr,
    pub mode: ReplicationMode,
    pub rate_limit: Option<u64>,
    pub queue_bytes: u64,
    pub lag_budget: Option<Duration>,
    pub encrypt: bool,
}
impl MirrorSpec {
    pub fn from_config(
        m: &MirrorConfig,
        cluster: &str,
        local_node: &str,
        key: &[u8],
        state_dir: &Path,
    ) -> Result<MirrorSpec, MirrorError> {
        let _ = (m, cluster, local_node, key, state_dir);
        todo!()
    }
}
#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("refused: {0}")]
    Refused(String),
    #[error("unknown peer {0}")]
    UnknownPeer(String),
}
pub struct Mirror;
impl Mirror {
    pub async fn open(spec: MirrorSpec, events: EventLog) -> Result<Arc<Mirror>, MirrorError> {
        let _ = (spec, events);
        todo!()
    }
    pub async fn promote(&self) -> Result<(), MirrorError> {
        todo!()
    }
    pub async fn demote(&self) -> Result<(), MirrorError> {
        todo!()
    }
    pub fn is_primary(&self) -> bool {
        todo!()
    }
    pub fn status(&self) -> MirrorStatus {
        todo!()
    }
    pub async fn pause(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        let _ = peer;
        todo!()
    }
    pub async fn resume(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        let _ = peer;
        todo!()
    }
    pub async fn disconnect(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        let _ = peer;
        todo!()
    }
    pub async fn connect(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        let _ = peer;
        todo!()
    }
    pub async fn verify(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        let _ = peer;
        todo!()
    }
    pub async fn resync_full(&self, peer: Option<&str>) -> Result<(), MirrorError> {
        let _ = peer;
        todo!()
    }
    pub fn pending_outdates(&self) -> Vec<(String, u64)> {
        todo!()
    }
    pub fn peer_outdated(&self, peer: &str) {
        let _ = peer;
        todo!()
    }
    pub async fn outdate(&self, generation: u64) -> Result<(), MirrorError> {
        let _ = generation;
        todo!()
    }
    pub fn peer_dead(&self, peer: &str) {
        let _ = peer;
        todo!()
    }
    pub async fn shutdown(&self) {
        todo!()
    }
}
impl Export for Mirror {
    fn size(&self) -> u64 {
        todo!()
    }
    fn read_only(&self) -> bool {
        todo!()
    }
    async fn read(&self, _offset: u64, _len: u32) -> Result<Vec<u8>, ExportError> {
        todo!()
    }
    async fn write(
        &self,
        _offset: u64,
        _data: impl AsRef<[u8]> + Send + 'static,
        _fua: bool,
    ) -> Result<(), ExportError> {
        todo!()
    }
    async fn flush(&self) -> Result<(), ExportError> {
        todo!()
    }
    async fn trim(&self, _offset: u64, _len: u32) -> Result<(), ExportError> {
        todo!()
    }
    async fn write_zeroes(
        &self,
        _offset: u64,
        _len: u32,
        _may_trim: bool,
        _fua: bool,
    ) -> Result<(), ExportError> {
        todo!()
    }
    async fn block_status(&self, _offset: u64, _len: u32) -> Result<Vec<Extent>, ExportError> {
        todo!()
    }
}
