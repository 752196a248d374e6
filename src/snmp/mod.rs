//! SNMP: TANDEM-MIB served by Tandem's own agent (v2c and v3 USM), and traps and
//! informs for every event of the stream.
//!
//! The object tree is built from a consistent status snapshot; notifications are built
//! from events. Encoding uses `rasn-snmp`; crypto comes from the RustCrypto crates.
//!
//! - [`mib`]: the object tree of a status snapshot, GET/GETNEXT/GETBULK, notifications.
//! - [`agent`]: the UDP agent (v2c communities, v3 through [`usm`]) and its counters.
//! - [`usm`]: the SNMPv3 User-based Security Model.
//! - [`notify`]: traps and informs to the configured receivers.
//! - `synthetic`: a status snapshot of any size, for the agent's tests and the benchmark.

pub mod agent;
pub mod mib;
pub mod notify;
#[cfg(any(test, feature = "bench"))]
pub mod synthetic;
pub mod usm;

use rasn_snmp::v2::VarBind;

/// The enterprise arc everything lives under: the RFC 5612 documentation arc until a
/// registered enterprise number replaces it. The MIB's MODULE-IDENTITY sits here too.
pub const ENTERPRISE: &[u32] = &[1, 3, 6, 1, 4, 1, 32473];

/// This node's SNMP engine (RFC 3411): shared by the agent and the notifier, so
/// requests and v3 traps carry the same engine ID, boots and time.
#[derive(Debug, Clone)]
pub struct Engine {
    pub id: Vec<u8>,
    /// snmpEngineBoots, bumped and persisted once per daemon start.
    pub boots: u32,
    /// snmpEngineTime and sysUpTime count from here.
    pub start: std::time::Instant,
}

impl Engine {
    /// The engine ID from the configuration (or derived from the names), and the next
    /// engineBoots persisted in `state_dir`.
    pub fn load(
        cfg: &crate::config::SnmpConfig,
        cluster: &str,
        node: &str,
        state_dir: &std::path::Path,
        start: std::time::Instant,
    ) -> Result<Engine, SnmpError> {
        Ok(Engine {
            id: usm::engine_id_from_config(cfg, cluster, node)?,
            boots: usm::load_and_bump_engine_boots(state_dir)?,
            start,
        })
    }
}

/// Errors of the SNMP agent and notifier.
#[derive(Debug, thiserror::Error)]
pub enum SnmpError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("snmp config: {0}")]
    Config(String),
    #[error("snmp encoding: {0}")]
    Encode(String),
    #[error("message of {size} bytes exceeds the peer's maximum of {max}")]
    TooBig { size: usize, max: usize },
}

/// One notification ready to send: `snmpTrapOID.0` and the varbinds that follow
/// `sysUpTime.0` and `snmpTrapOID.0`.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub trap_oid: Vec<u32>,
    pub varbinds: Vec<VarBind>,
    /// The event's sequence number (for ordering and logging).
    pub seq: u64,
}
