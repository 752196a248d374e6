//! SNMPv3 User-based Security Model (RFC 3414): MINIMAL STUB.
//!
//! This file only fixes the interface the agent uses; the real implementation
//! (authentication, privacy, discovery, engine boots) replaces it wholesale. Until
//! then every v3 datagram is dropped.

use std::path::Path;
use std::time::Instant;

use rasn_snmp::v2::Pdus;

use super::SnmpError;
use crate::config::{SnmpConfig, UsmUserConfig};

/// The USM state of the local engine (stub: nothing).
pub struct Usm {}

/// What [`Usm::respond`] needs to answer one request (stub: nothing).
pub struct UsmContext {}

/// The outcome of one received v3 datagram.
pub enum UsmIncoming {
    /// An authenticated (and decrypted) request to serve.
    Request { pdu: Pdus, ctx: UsmContext },
    /// A Report to send back as is (discovery, unknown user, wrong digest, ...).
    Report(Vec<u8>),
    /// Nothing to send; the reason is for counting and logs.
    Drop(&'static str),
}

impl Usm {
    /// Stub: accepts any configuration.
    pub fn new(
        _engine_id: Vec<u8>,
        _engine_boots: u32,
        _users: &[UsmUserConfig],
        _allow_no_auth_no_priv: bool,
    ) -> Result<Usm, SnmpError> {
        Ok(Usm {})
    }

    /// Stub: drops every datagram.
    pub fn receive(&mut self, _datagram: &[u8], _now: Instant) -> UsmIncoming {
        UsmIncoming::Drop("v3 not built")
    }

    /// Stub: cannot answer (never reached, `receive` yields no requests).
    pub fn respond(
        &self,
        _ctx: &UsmContext,
        _pdu: Pdus,
        _now: Instant,
    ) -> Result<Vec<u8>, SnmpError> {
        Err(SnmpError::Config("v3 not built".into()))
    }
}

/// Stub: the configured engine ID, or a fixed one.
pub fn engine_id_from_config(
    _cfg: &SnmpConfig,
    _cluster: &str,
    _node: &str,
) -> Result<Vec<u8>, SnmpError> {
    Ok(vec![0x80, 0, 0, 0, 4])
}

/// Stub: always boot 1, nothing stored.
pub fn load_and_bump_engine_boots(_state_dir: &Path) -> Result<u32, SnmpError> {
    Ok(1)
}
