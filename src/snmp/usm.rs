//! SNMPv3 message processing (RFC 3412) and the User-based Security Model (RFC 3414).
//!
//! [`Usm`] is the agent side, where Tandem is the authoritative engine: it takes a whole
//! v3 datagram and the current time and says what to do (serve a request, answer with
//! a Report, or drop), and it encodes the agent's responses. It is sans-IO: time is an
//! input and engine time counts from the first datagram it sees (or from the instant
//! given to [`Usm::with_engine_start`]).
//!
//! The notifier uses the lower-level pieces: [`UsmUser`] (password-derived keys),
//! [`LocalizedUser`] (keys localized to one engine ID), [`encode_message`] (any v3
//! message, e.g. a trap with our engine as the authoritative one, or an inform with the
//! receiver's), [`discovery_probe`] and [`decode_reply`] (learn a receiver's engine and
//! verify its Responses).
//!
//! Authentication: HMAC-SHA-1-96 (RFC 3414) and the HMAC-SHA-2 family (RFC 7860).
//! Privacy: AES-128-CFB (RFC 3826). Digests are compared in constant time.

use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aes::Aes128;
use cfb_mode::cipher::{AsyncStreamCipher, KeyIvInit};
use hmac::{Hmac, Mac};
use rasn::types::{Integer, ObjectIdentifier};
use rasn_smi::v1::Counter;
use rasn_smi::v2::{ApplicationSyntax, ObjectSyntax};
use rasn_snmp::v2::{GetRequest, Pdu, Pdus, Report, VarBind, VarBindValue};
use rasn_snmp::v3::{HeaderData, Message, ScopedPdu, ScopedPduData, USMSecurityParameters};
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::SnmpError;
use crate::config::{AuthProtocol, PrivProtocol, SnmpConfig, UsmUserConfig};

/// RFC 3414 §3.2 step 7: the time window, in seconds.
pub const TIME_WINDOW_SECS: u32 = 150;
/// The largest snmpEngineBoots; at this value the engine can no longer authenticate.
pub const MAX_ENGINE_BOOTS: u32 = 2_147_483_647;
/// msgMaxSize we announce: the largest UDP payload over IPv4.
pub const OUR_MAX_MESSAGE_SIZE: usize = 65_507;
/// The IANA enterprise number the default engine ID is formed under (RFC 5612).
const ENGINE_ID_ENTERPRISE: u32 = 32473;
/// snmpSecurityModel of the USM.
const USM_SECURITY_MODEL: i64 = 3;
/// Length of a password-to-key expansion (RFC 3414 A.2).
const PASSWORD_EXPANSION: usize = 1_048_576;
/// File in the state directory holding snmpEngineBoots.
const ENGINE_BOOTS_FILE: &str = "snmp-engine-boots";

const FLAG_AUTH: u8 = 0x01;
const FLAG_PRIV: u8 = 0x02;
const FLAG_REPORTABLE: u8 = 0x04;

/// usmStats* of SNMP-USER-BASED-SM-MIB (1.3.6.1.6.3.15.1.1.x.0).
pub const USM_STATS_UNSUPPORTED_SEC_LEVELS: &[u32] = &[1, 3, 6, 1, 6, 3, 15, 1, 1, 1, 0];
pub const USM_STATS_NOT_IN_TIME_WINDOWS: &[u32] = &[1, 3, 6, 1, 6, 3, 15, 1, 1, 2, 0];
pub const USM_STATS_UNKNOWN_USER_NAMES: &[u32] = &[1, 3, 6, 1, 6, 3, 15, 1, 1, 3, 0];
pub const USM_STATS_UNKNOWN_ENGINE_IDS: &[u32] = &[1, 3, 6, 1, 6, 3, 15, 1, 1, 4, 0];
pub const USM_STATS_WRONG_DIGESTS: &[u32] = &[1, 3, 6, 1, 6, 3, 15, 1, 1, 5, 0];
pub const USM_STATS_DECRYPTION_ERRORS: &[u32] = &[1, 3, 6, 1, 6, 3, 15, 1, 1, 6, 0];
/// snmpUnknownContexts.0 of SNMP-MPD-MIB.
pub const SNMP_UNKNOWN_CONTEXTS: &[u32] = &[1, 3, 6, 1, 6, 3, 12, 1, 1, 5, 0];

/// A message's security level (the auth and priv bits of msgFlags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SecurityLevel {
    NoAuthNoPriv,
    AuthNoPriv,
    AuthPriv,
}

impl SecurityLevel {
    fn flags(self) -> u8 {
        match self {
            SecurityLevel::NoAuthNoPriv => 0,
            SecurityLevel::AuthNoPriv => FLAG_AUTH,
            SecurityLevel::AuthPriv => FLAG_AUTH | FLAG_PRIV,
        }
    }

    fn from_flags(flags: u8) -> Option<SecurityLevel> {
        match flags & (FLAG_AUTH | FLAG_PRIV) {
            0 => Some(SecurityLevel::NoAuthNoPriv),
            FLAG_AUTH => Some(SecurityLevel::AuthNoPriv),
            3 => Some(SecurityLevel::AuthPriv),
            _ => None,
        }
    }
}

/// The USM counters (usmStats*, plus the message-processing drops). Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UsmStats {
    pub unsupported_sec_levels: u64,
    pub not_in_time_windows: u64,
    pub unknown_user_names: u64,
    pub unknown_engine_ids: u64,
    pub wrong_digests: u64,
    pub decryption_errors: u64,
    /// snmpUnknownContexts: a context engine ID or name we do not serve.
    pub unknown_contexts: u64,
    /// Datagrams that are not well-formed v3 USM messages (snmpInASNParseErrs and
    /// snmpInvalidMsgs together), and well-formed PDUs an agent does not take.
    pub invalid_messages: u64,
}

// ---------------------------------------------------------------------------------
// Keys

/// Hash output of a password-to-key or localization with `proto`.
fn digest(proto: AuthProtocol, parts: &[&[u8]]) -> Vec<u8> {
    fn run<D: Digest>(parts: &[&[u8]]) -> Vec<u8> {
        let mut d = D::new();
        for p in parts {
            d.update(p);
        }
        d.finalize().to_vec()
    }
    match proto {
        AuthProtocol::Sha1 => run::<sha1::Sha1>(parts),
        AuthProtocol::Sha224 => run::<sha2::Sha224>(parts),
        AuthProtocol::Sha256 => run::<sha2::Sha256>(parts),
        AuthProtocol::Sha384 => run::<sha2::Sha384>(parts),
        AuthProtocol::Sha512 => run::<sha2::Sha512>(parts),
    }
}

fn hmac(proto: AuthProtocol, key: &[u8], data: &[u8]) -> Vec<u8> {
    macro_rules! mac {
        ($d:ty) => {{
            let mut m = <Hmac<$d> as Mac>::new_from_slice(key).expect("HMAC takes any key");
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match proto {
        AuthProtocol::Sha1 => mac!(sha1::Sha1),
        AuthProtocol::Sha224 => mac!(sha2::Sha224),
        AuthProtocol::Sha256 => mac!(sha2::Sha256),
        AuthProtocol::Sha384 => mac!(sha2::Sha384),
        AuthProtocol::Sha512 => mac!(sha2::Sha512),
    }
}

/// Length of msgAuthenticationParameters: the truncated MAC (RFC 3414, RFC 7860).
pub fn mac_len(proto: AuthProtocol) -> usize {
    match proto {
        AuthProtocol::Sha1 => 12,
        AuthProtocol::Sha224 => 16,
        AuthProtocol::Sha256 => 24,
        AuthProtocol::Sha384 => 32,
        AuthProtocol::Sha512 => 48,
    }
}

/// RFC 3414 A.2: hash of the password repeated over 1 MiB (Ku).
pub fn password_to_key(proto: AuthProtocol, password: &[u8]) -> Vec<u8> {
    assert!(
        !password.is_empty(),
        "validated: passwords have 8+ characters"
    );
    let expanded: Vec<u8> = password
        .iter()
        .copied()
        .cycle()
        .take(PASSWORD_EXPANSION)
        .collect();
    digest(proto, &[&expanded])
}

/// RFC 3414 §2.6: Kul = H(Ku || engineID || Ku).
pub fn localize_key(proto: AuthProtocol, master: &[u8], engine_id: &[u8]) -> Vec<u8> {
    digest(proto, &[master, engine_id, master])
}

/// A USM user with its password-derived (not yet localized) keys. Deriving these is
/// the expensive part (1 MiB of hashing per password); localizing is one hash.
#[derive(Clone)]
pub struct UsmUser {
    name: Vec<u8>,
    auth: Option<(AuthProtocol, Vec<u8>)>,
    privacy: Option<(PrivProtocol, Vec<u8>)>,
}

impl std::fmt::Debug for UsmUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UsmUser")
            .field("name", &String::from_utf8_lossy(&self.name))
            .field("level", &self.level())
            .finish_non_exhaustive()
    }
}

impl UsmUser {
    /// Derives the master keys of a configured user.
    pub fn from_config(cfg: &UsmUserConfig) -> Result<UsmUser, SnmpError> {
        let bad = |what: &str| SnmpError::Config(format!("snmp user {}: {what}", cfg.name));
        let auth = match (cfg.auth, &cfg.auth_password) {
            (Some(p), Some(pw)) if !pw.is_empty() => Some((p, password_to_key(p, pw.as_bytes()))),
            (Some(_), _) => return Err(bad("auth needs auth_password")),
            (None, _) => None,
        };
        let privacy = match (cfg.privacy, &cfg.priv_password, &auth) {
            (Some(p), Some(pw), Some((a, _))) if !pw.is_empty() => {
                // The privacy key is derived with the user's authentication hash.
                Some((p, password_to_key(*a, pw.as_bytes())))
            }
            (Some(_), _, _) => return Err(bad("privacy needs auth and priv_password")),
            (None, _, _) => None,
        };
        Ok(UsmUser {
            name: cfg.name.as_bytes().to_vec(),
            auth,
            privacy,
        })
    }

    /// The user's name (msgUserName).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The security level the user is configured for.
    pub fn level(&self) -> SecurityLevel {
        match (&self.auth, &self.privacy) {
            (None, _) => SecurityLevel::NoAuthNoPriv,
            (Some(_), None) => SecurityLevel::AuthNoPriv,
            (Some(_), Some(_)) => SecurityLevel::AuthPriv,
        }
    }

    /// Keys localized to one authoritative engine.
    pub fn localize(&self, engine_id: &[u8]) -> LocalizedUser {
        let auth = self
            .auth
            .as_ref()
            .map(|(p, ku)| (*p, localize_key(*p, ku, engine_id)));
        let privacy = match (&self.privacy, &self.auth) {
            (Some((PrivProtocol::Aes128, ku)), Some((a, _))) => {
                let kul = localize_key(*a, ku, engine_id);
                let mut key = [0u8; 16];
                key.copy_from_slice(&kul[..16]);
                Some(key)
            }
            _ => None,
        };
        LocalizedUser {
            name: self.name.clone(),
            engine_id: engine_id.to_vec(),
            auth,
            privacy,
        }
    }
}

/// A user's keys localized to one engine ID (RFC 3414 §2.6).
#[derive(Clone)]
pub struct LocalizedUser {
    name: Vec<u8>,
    engine_id: Vec<u8>,
    auth: Option<(AuthProtocol, Vec<u8>)>,
    /// AES-128 key: the first 16 bytes of the localized privacy key (RFC 3826 §1.2).
    privacy: Option<[u8; 16]>,
}

impl std::fmt::Debug for LocalizedUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalizedUser")
            .field("name", &String::from_utf8_lossy(&self.name))
            .field("engine_id", &hex(&self.engine_id))
            .finish_non_exhaustive()
    }
}

impl LocalizedUser {
    /// The user's name (msgUserName).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The engine ID the keys are localized to.
    pub fn engine_id(&self) -> &[u8] {
        &self.engine_id
    }

    /// The highest security level these keys allow.
    pub fn level(&self) -> SecurityLevel {
        match (&self.auth, &self.privacy) {
            (None, _) => SecurityLevel::NoAuthNoPriv,
            (Some(_), None) => SecurityLevel::AuthNoPriv,
            (Some(_), Some(_)) => SecurityLevel::AuthPriv,
        }
    }

    fn mac(&self, whole_message: &[u8]) -> Option<Vec<u8>> {
        let (proto, key) = self.auth.as_ref()?;
        let mut mac = hmac(*proto, key, whole_message);
        mac.truncate(mac_len(*proto));
        Some(mac)
    }
}

fn aes_iv(boots: u32, time: u32, salt: &[u8; 8]) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..4].copy_from_slice(&boots.to_be_bytes());
    iv[4..8].copy_from_slice(&time.to_be_bytes());
    iv[8..].copy_from_slice(salt);
    iv
}

fn aes_cfb(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8], encrypt: bool) {
    if encrypt {
        cfb_mode::Encryptor::<Aes128>::new(key.into(), iv.into()).encrypt(data);
    } else {
        cfb_mode::Decryptor::<Aes128>::new(key.into(), iv.into()).decrypt(data);
    }
}

// ---------------------------------------------------------------------------------
// Locating msgAuthenticationParameters in the encoded bytes

/// One BER TLV at `pos`: (tag, value range). Single-byte tags and definite lengths only,
/// which is all SNMP uses.
fn tlv(b: &[u8], pos: usize, limit: usize) -> Option<(u8, Range<usize>)> {
    let tag = *b.get(pos)?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let first = *b.get(pos + 1)? as usize;
    let (len, start) = if first < 0x80 {
        (first, pos + 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(pos + 2 + i)? as usize;
        }
        (len, pos + 2 + n)
    };
    let end = start.checked_add(len)?;
    (end <= limit).then_some((tag, start..end))
}

/// Where msgAuthenticationParameters' octets sit in an encoded v3 message.
fn auth_params_range(b: &[u8]) -> Option<Range<usize>> {
    let (t, msg) = tlv(b, 0, b.len())?;
    if t != 0x30 {
        return None;
    }
    let (_, version) = tlv(b, msg.start, msg.end)?;
    let (_, header) = tlv(b, version.end, msg.end)?;
    let (t, sec) = tlv(b, header.end, msg.end)?;
    if t != 0x04 {
        return None;
    }
    let (t, usm) = tlv(b, sec.start, sec.end)?;
    if t != 0x30 {
        return None;
    }
    let mut pos = usm.start;
    for _ in 0..4 {
        pos = tlv(b, pos, usm.end)?.1.end;
    }
    let (t, auth) = tlv(b, pos, usm.end)?;
    (t == 0x04).then_some(auth)
}

// ---------------------------------------------------------------------------------
// Encoding

fn oid(arcs: &[u32]) -> ObjectIdentifier {
    ObjectIdentifier::new_unchecked(arcs.to_vec().into())
}

fn encode_err(e: impl std::fmt::Display) -> SnmpError {
    SnmpError::Encode(e.to_string())
}

/// The authoritative engine of a message: whose engine ID, boots and time it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineParams {
    pub engine_id: Vec<u8>,
    pub boots: u32,
    pub time: u32,
}

/// Everything needed to encode one v3 message.
pub struct OutgoingMessage<'a> {
    pub msg_id: i32,
    pub level: SecurityLevel,
    pub reportable: bool,
    /// The authoritative engine (ours for responses, reports and traps; the receiver's
    /// for informs).
    pub engine: &'a EngineParams,
    /// msgUserName; its keys when the level needs them (localized to `engine`).
    pub user_name: &'a [u8],
    pub keys: Option<&'a LocalizedUser>,
    pub context_engine_id: &'a [u8],
    pub context_name: &'a [u8],
    pub pdu: Pdus,
    /// msgPrivacyParameters for authPriv: unique per message under one key.
    pub salt: u64,
}

/// Encodes (and, per the level, encrypts and authenticates) one v3 message.
pub fn encode_message(m: OutgoingMessage<'_>) -> Result<Vec<u8>, SnmpError> {
    let scoped = ScopedPdu {
        engine_id: m.context_engine_id.to_vec().into(),
        name: m.context_name.to_vec().into(),
        data: m.pdu,
    };
    let keys = match (m.level, m.keys) {
        (SecurityLevel::NoAuthNoPriv, _) => None,
        (level, Some(k)) if k.level() >= level => Some(k),
        _ => return Err(encode_err("security level needs keys the user lacks")),
    };
    let (scoped_data, privacy_parameters) = match (m.level, keys.and_then(|k| k.privacy)) {
        (SecurityLevel::AuthPriv, Some(key)) => {
            let salt = m.salt.to_be_bytes();
            let mut data = rasn::ber::encode(&scoped).map_err(encode_err)?;
            aes_cfb(
                &key,
                &aes_iv(m.engine.boots, m.engine.time, &salt),
                &mut data,
                true,
            );
            (ScopedPduData::EncryptedPdu(data.into()), salt.to_vec())
        }
        _ => (ScopedPduData::CleartextPdu(scoped), Vec::new()),
    };
    let auth = keys.and_then(|k| k.auth.as_ref().map(|(p, _)| *p));
    let usm = USMSecurityParameters {
        authoritative_engine_id: m.engine.engine_id.clone().into(),
        authoritative_engine_boots: Integer::from(m.engine.boots),
        authoritative_engine_time: Integer::from(m.engine.time),
        user_name: m.user_name.to_vec().into(),
        authentication_parameters: vec![0u8; auth.map(mac_len).unwrap_or(0)].into(),
        privacy_parameters: privacy_parameters.into(),
    };
    let flags = m.level.flags() | if m.reportable { FLAG_REPORTABLE } else { 0 };
    let message = Message {
        version: Integer::from(3),
        global_data: HeaderData {
            message_id: Integer::from(m.msg_id),
            max_size: Integer::from(OUR_MAX_MESSAGE_SIZE as i64),
            flags: vec![flags].into(),
            security_model: Integer::from(USM_SECURITY_MODEL),
        },
        security_parameters: rasn::ber::encode(&usm).map_err(encode_err)?.into(),
        scoped_data,
    };
    let mut bytes = rasn::ber::encode(&message).map_err(encode_err)?;
    if let Some(k) = keys {
        let range = auth_params_range(&bytes)
            .ok_or_else(|| encode_err("auth parameters not found in own encoding"))?;
        let mac = k
            .mac(&bytes)
            .expect("keys with a level above noAuth have auth");
        bytes[range].copy_from_slice(&mac);
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------------
// Decoding

/// A v3 message decoded far enough to know its security parameters.
struct Parsed {
    msg_id: i32,
    max_size: usize,
    flags: u8,
    level: SecurityLevel,
    usm: USMSecurityParameters,
    boots: u32,
    time: u32,
    scoped: ScopedPduData,
}

fn int_in(i: &Integer, lo: i64, hi: i64) -> Option<i64> {
    i64::try_from(i).ok().filter(|v| (lo..=hi).contains(v))
}

fn parse(datagram: &[u8]) -> Result<Parsed, &'static str> {
    let msg: Message = rasn::ber::decode(datagram).map_err(|_| "malformed v3 message")?;
    if int_in(&msg.version, 3, 3).is_none() {
        return Err("not an SNMPv3 message");
    }
    if int_in(&msg.global_data.security_model, 3, 3).is_none() {
        return Err("security model is not the USM");
    }
    let msg_id = int_in(&msg.global_data.message_id, 0, i32::MAX as i64).ok_or("bad msgID")?;
    let max_size =
        int_in(&msg.global_data.max_size, 484, i32::MAX as i64).ok_or("bad msgMaxSize")?;
    let flags = match msg.global_data.flags.as_ref() {
        [f] => *f,
        _ => return Err("bad msgFlags"),
    };
    let level = SecurityLevel::from_flags(flags).ok_or("privacy without authentication")?;
    let usm: USMSecurityParameters =
        rasn::ber::decode(&msg.security_parameters).map_err(|_| "malformed USM parameters")?;
    let boots = int_in(&usm.authoritative_engine_boots, 0, MAX_ENGINE_BOOTS as i64)
        .ok_or("bad msgAuthoritativeEngineBoots")?;
    let time = int_in(&usm.authoritative_engine_time, 0, i32::MAX as i64)
        .ok_or("bad msgAuthoritativeEngineTime")?;
    if usm.authoritative_engine_id.len() > 32 || usm.user_name.len() > 32 {
        return Err("USM field too long");
    }
    Ok(Parsed {
        msg_id: msg_id as i32,
        max_size: max_size as usize,
        flags,
        level,
        usm,
        boots: boots as u32,
        time: time as u32,
        scoped: msg.scoped_data,
    })
}

/// Checks the MAC of a received message with `keys`.
fn verify_mac(datagram: &[u8], parsed: &Parsed, keys: &LocalizedUser) -> bool {
    let Some((proto, _)) = &keys.auth else {
        return false;
    };
    if parsed.usm.authentication_parameters.len() != mac_len(*proto) {
        return false;
    }
    let Some(range) = auth_params_range(datagram) else {
        return false;
    };
    let mut zeroed = datagram.to_vec();
    zeroed[range].fill(0);
    let mac = keys.mac(&zeroed).expect("checked: keys have auth");
    bool::from(mac.ct_eq(&parsed.usm.authentication_parameters))
}

/// Decrypts the scoped PDU of an authPriv message (or takes the cleartext one).
fn open_scoped(parsed: &Parsed, keys: Option<&LocalizedUser>) -> Result<ScopedPdu, &'static str> {
    match (&parsed.scoped, parsed.level) {
        (
            ScopedPduData::CleartextPdu(s),
            SecurityLevel::NoAuthNoPriv | SecurityLevel::AuthNoPriv,
        ) => Ok(s.clone()),
        (ScopedPduData::EncryptedPdu(data), SecurityLevel::AuthPriv) => {
            let key = keys.and_then(|k| k.privacy).ok_or("no privacy key")?;
            let salt: [u8; 8] = parsed
                .usm
                .privacy_parameters
                .as_ref()
                .try_into()
                .map_err(|_| "bad msgPrivacyParameters")?;
            let mut plain = data.to_vec();
            aes_cfb(
                &key,
                &aes_iv(parsed.boots, parsed.time, &salt),
                &mut plain,
                false,
            );
            rasn::ber::decode(&plain).map_err(|_| "undecodable decrypted scoped PDU")
        }
        _ => Err("scoped PDU encryption does not match msgFlags"),
    }
}

fn request_id(pdu: &Pdus) -> i32 {
    match pdu {
        Pdus::GetRequest(p) => p.0.request_id,
        Pdus::GetNextRequest(p) => p.0.request_id,
        Pdus::Response(p) => p.0.request_id,
        Pdus::SetRequest(p) => p.0.request_id,
        Pdus::GetBulkRequest(p) => p.0.request_id,
        Pdus::InformRequest(p) => p.0.request_id,
        Pdus::Trap(p) => p.0.request_id,
        Pdus::Report(p) => p.0.request_id,
    }
}

// ---------------------------------------------------------------------------------
// The agent side

/// What [`Usm::respond`] needs to answer a request: kept opaque for the agent.
#[derive(Debug, Clone)]
pub struct UsmContext {
    msg_id: i32,
    max_size: usize,
    level: SecurityLevel,
    /// Index into the configured users.
    user: usize,
    context_engine_id: Vec<u8>,
    context_name: Vec<u8>,
}

impl UsmContext {
    /// Which configured user (in `[[snmp.user]]` order) sent the request; its name is
    /// [`Usm::user_name`].
    pub fn user_index(&self) -> usize {
        self.user
    }

    /// The request's security level.
    pub fn level(&self) -> SecurityLevel {
        self.level
    }
}

/// What to do with a received datagram.
#[derive(Debug)]
pub enum UsmIncoming {
    /// An authentic request (Get, GetNext, GetBulk, Set) to serve, then answer with
    /// [`Usm::respond`].
    Request { pdu: Pdus, ctx: UsmContext },
    /// Send these bytes back (a Report: discovery, or an error the sender should see).
    Report(Vec<u8>),
    /// Say nothing; the reason is for logs.
    Drop(&'static str),
}

/// The agent's USM: our engine (authoritative), its users and counters.
pub struct Usm {
    engine_id: Vec<u8>,
    engine_boots: u32,
    /// Engine time counts from the first datagram (sans-IO: no clock read here).
    engine_start: Option<Instant>,
    users: Vec<(UsmUser, LocalizedUser)>,
    allow_no_auth_no_priv: bool,
    stats: UsmStats,
    salt: AtomicU64,
}

impl std::fmt::Debug for Usm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Usm")
            .field("engine_id", &hex(&self.engine_id))
            .field("engine_boots", &self.engine_boots)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl Usm {
    /// Derives every user's keys (about 1 MiB of hashing per password) and localizes
    /// them to `engine_id`.
    pub fn new(
        engine_id: Vec<u8>,
        engine_boots: u32,
        users: &[UsmUserConfig],
        allow_no_auth_no_priv: bool,
    ) -> Result<Usm, SnmpError> {
        if !(5..=32).contains(&engine_id.len()) {
            return Err(SnmpError::Config("engine ID must be 5 to 32 bytes".into()));
        }
        let users = users
            .iter()
            .map(|u| {
                let user = UsmUser::from_config(u)?;
                let local = user.localize(&engine_id);
                Ok((user, local))
            })
            .collect::<Result<Vec<_>, SnmpError>>()?;
        Ok(Usm {
            engine_id,
            engine_boots,
            engine_start: None,
            users,
            allow_no_auth_no_priv,
            stats: UsmStats::default(),
            salt: AtomicU64::new(rand::random()),
        })
    }

    /// Counts snmpEngineTime from `start` (the daemon's start, as the notifier does for
    /// v3 traps) instead of from the first datagram.
    pub fn with_engine_start(mut self, start: Instant) -> Usm {
        self.engine_start = Some(start);
        self
    }

    /// The counters.
    pub fn stats(&self) -> UsmStats {
        self.stats
    }

    /// snmpEngineID.
    pub fn engine_id(&self) -> &[u8] {
        &self.engine_id
    }

    /// snmpEngineBoots.
    pub fn engine_boots(&self) -> u32 {
        self.engine_boots
    }

    /// snmpEngineTime at `now`: seconds since the first datagram.
    pub fn engine_time(&self, now: Instant) -> u32 {
        let secs = self
            .engine_start
            .map(|s| now.saturating_duration_since(s).as_secs())
            .unwrap_or(0);
        secs.min(i32::MAX as u64) as u32
    }

    /// The configured name of user `index` (see [`UsmContext::user_index`]).
    pub fn user_name(&self, index: usize) -> Option<&[u8]> {
        self.users.get(index).map(|(u, _)| u.name())
    }

    fn engine_params(&self, now: Instant) -> EngineParams {
        EngineParams {
            engine_id: self.engine_id.clone(),
            boots: self.engine_boots,
            time: self.engine_time(now),
        }
    }

    fn next_salt(&self) -> u64 {
        self.salt.fetch_add(1, Ordering::Relaxed)
    }

    /// RFC 3412 §7.1 step 3 / RFC 3414 §3.2: processes one received v3 datagram.
    pub fn receive(&mut self, datagram: &[u8], now: Instant) -> UsmIncoming {
        self.engine_start.get_or_insert(now);
        let parsed = match parse(datagram) {
            Ok(p) => p,
            Err(why) => {
                self.stats.invalid_messages += 1;
                return UsmIncoming::Drop(why);
            }
        };
        match self.accept(datagram, &parsed, now) {
            Ok((user, scoped)) => self.take_request(&parsed, user, scoped),
            Err(answer) => answer,
        }
    }

    /// RFC 3414 §3.2 steps 3 to 8 and the RFC 3412 §4.2.2.1 context check, in that
    /// order: the sending user (an index into the configured users) and the opened
    /// scoped PDU, or what to answer instead (a Report or a drop, already counted).
    fn accept(
        &mut self,
        datagram: &[u8],
        parsed: &Parsed,
        now: Instant,
    ) -> Result<(usize, ScopedPdu), UsmIncoming> {
        self.check_engine_id(parsed, now)?;
        let user = self.find_user(parsed, now)?;
        self.check_level(parsed, user, now)?;
        if parsed.level >= SecurityLevel::AuthNoPriv {
            self.check_digest(datagram, parsed, user, now)?;
            self.check_time_window(parsed, user, now)?;
        }
        let scoped = self.decrypt(parsed, user, now)?;
        self.check_context(parsed, user, &scoped, now)?;
        Ok((user, scoped))
    }

    /// §3.2 step 3: we are authoritative for every request we take.
    fn check_engine_id(&mut self, parsed: &Parsed, now: Instant) -> Result<(), UsmIncoming> {
        if parsed.usm.authoritative_engine_id.as_ref() != self.engine_id.as_slice() {
            self.stats.unknown_engine_ids += 1;
            let v = self.stats.unknown_engine_ids;
            return Err(self.refuse(parsed, USM_STATS_UNKNOWN_ENGINE_IDS, v, None, now));
        }
        Ok(())
    }

    /// Step 4: the user, as an index into the configured users.
    fn find_user(&mut self, parsed: &Parsed, now: Instant) -> Result<usize, UsmIncoming> {
        let Some(user) = self
            .users
            .iter()
            .position(|(u, _)| u.name() == parsed.usm.user_name.as_ref())
        else {
            self.stats.unknown_user_names += 1;
            let v = self.stats.unknown_user_names;
            return Err(self.refuse(parsed, USM_STATS_UNKNOWN_USER_NAMES, v, None, now));
        };
        Ok(user)
    }

    /// Step 5: exactly the user's level; noAuthNoPriv only when allowed.
    fn check_level(
        &mut self,
        parsed: &Parsed,
        user: usize,
        now: Instant,
    ) -> Result<(), UsmIncoming> {
        let user_level = self.users[user].0.level();
        if parsed.level != user_level
            || (parsed.level == SecurityLevel::NoAuthNoPriv && !self.allow_no_auth_no_priv)
        {
            self.stats.unsupported_sec_levels += 1;
            let v = self.stats.unsupported_sec_levels;
            return Err(self.refuse(parsed, USM_STATS_UNSUPPORTED_SEC_LEVELS, v, None, now));
        }
        Ok(())
    }

    /// Step 6: the digest of an authenticated message, with the user's keys.
    fn check_digest(
        &mut self,
        datagram: &[u8],
        parsed: &Parsed,
        user: usize,
        now: Instant,
    ) -> Result<(), UsmIncoming> {
        if !verify_mac(datagram, parsed, &self.users[user].1) {
            self.stats.wrong_digests += 1;
            let v = self.stats.wrong_digests;
            return Err(self.refuse(parsed, USM_STATS_WRONG_DIGESTS, v, None, now));
        }
        Ok(())
    }

    /// Step 7a: the time window of an authentic message (answered with an
    /// authenticated report, so the sender resyncs).
    fn check_time_window(
        &mut self,
        parsed: &Parsed,
        user: usize,
        now: Instant,
    ) -> Result<(), UsmIncoming> {
        let our_time = self.engine_time(now);
        if self.engine_boots == MAX_ENGINE_BOOTS
            || parsed.boots != self.engine_boots
            || parsed.time.abs_diff(our_time) > TIME_WINDOW_SECS
        {
            self.stats.not_in_time_windows += 1;
            let v = self.stats.not_in_time_windows;
            return Err(self.refuse(parsed, USM_STATS_NOT_IN_TIME_WINDOWS, v, Some(user), now));
        }
        Ok(())
    }

    /// Step 8: privacy. A failure to decrypt an authPriv message is a decryption
    /// error; any other mismatch between msgFlags and the scoped PDU is dropped.
    fn decrypt(
        &mut self,
        parsed: &Parsed,
        user: usize,
        now: Instant,
    ) -> Result<ScopedPdu, UsmIncoming> {
        match open_scoped(parsed, Some(&self.users[user].1)) {
            Ok(s) => Ok(s),
            Err(why) if parsed.level == SecurityLevel::AuthPriv => {
                tracing::debug!(why, "snmp v3: decryption error");
                self.stats.decryption_errors += 1;
                let v = self.stats.decryption_errors;
                Err(self.refuse(parsed, USM_STATS_DECRYPTION_ERRORS, v, None, now))
            }
            Err(why) => {
                self.stats.invalid_messages += 1;
                Err(UsmIncoming::Drop(why))
            }
        }
    }

    /// RFC 3412 §4.2.2.1: the context must be ours (the default context only). An
    /// unknown context is reported at the request's level, with its request-id.
    fn check_context(
        &mut self,
        parsed: &Parsed,
        user: usize,
        scoped: &ScopedPdu,
        now: Instant,
    ) -> Result<(), UsmIncoming> {
        if (!scoped.engine_id.is_empty() && scoped.engine_id.as_ref() != self.engine_id.as_slice())
            || !scoped.name.is_empty()
        {
            self.stats.unknown_contexts += 1;
            let v = self.stats.unknown_contexts;
            let reply_request_id = request_id(&scoped.data);
            if parsed.flags & FLAG_REPORTABLE == 0 {
                return Err(UsmIncoming::Drop("unknown context"));
            }
            let keys = (parsed.level >= SecurityLevel::AuthNoPriv).then_some(user);
            let answer = match self.report_at(
                parsed,
                reply_request_id,
                SNMP_UNKNOWN_CONTEXTS,
                v,
                keys.map(|u| (u, parsed.level)),
                now,
            ) {
                Ok(bytes) => UsmIncoming::Report(bytes),
                Err(_) => UsmIncoming::Drop("report could not be encoded"),
            };
            return Err(answer);
        }
        Ok(())
    }

    /// Hands an accepted request PDU (Get, GetNext, GetBulk, Set) to the agent;
    /// anything else is dropped as invalid.
    fn take_request(&mut self, parsed: &Parsed, user: usize, scoped: ScopedPdu) -> UsmIncoming {
        match scoped.data {
            Pdus::GetRequest(_)
            | Pdus::GetNextRequest(_)
            | Pdus::GetBulkRequest(_)
            | Pdus::SetRequest(_) => UsmIncoming::Request {
                ctx: UsmContext {
                    msg_id: parsed.msg_id,
                    max_size: parsed.max_size,
                    level: parsed.level,
                    user,
                    context_engine_id: self.engine_id.clone(),
                    context_name: Vec::new(),
                },
                pdu: scoped.data,
            },
            _ => {
                self.stats.invalid_messages += 1;
                UsmIncoming::Drop("not a request PDU")
            }
        }
    }

    /// What to answer when a check failed and bumped `counter` to `value`: a Report
    /// (see [`Usm::report`]) carrying the request-id when the PDU is readable without
    /// keys (RFC 3412 §7.1 3a), or a drop if the message is not reportable.
    fn refuse(
        &self,
        parsed: &Parsed,
        counter: &'static [u32],
        value: u64,
        keys: Option<usize>,
        now: Instant,
    ) -> UsmIncoming {
        if parsed.flags & FLAG_REPORTABLE == 0 {
            return UsmIncoming::Drop("error on a non-reportable message");
        }
        let clear_request_id = match &parsed.scoped {
            ScopedPduData::CleartextPdu(s) => request_id(&s.data),
            ScopedPduData::EncryptedPdu(_) => 0,
        };
        match self.report(parsed, clear_request_id, counter, value, keys, now) {
            Ok(bytes) => UsmIncoming::Report(bytes),
            Err(_) => UsmIncoming::Drop("report could not be encoded"),
        }
    }

    /// A Report for an error: noAuthNoPriv, except notInTimeWindow which is
    /// authenticated with the user's keys (`keys`) so the sender can trust our time.
    fn report(
        &self,
        parsed: &Parsed,
        request_id: i32,
        counter: &'static [u32],
        value: u64,
        keys: Option<usize>,
        now: Instant,
    ) -> Result<Vec<u8>, SnmpError> {
        let keys = keys.map(|u| (u, SecurityLevel::AuthNoPriv));
        self.report_at(parsed, request_id, counter, value, keys, now)
    }

    fn report_at(
        &self,
        parsed: &Parsed,
        request_id: i32,
        counter: &'static [u32],
        value: u64,
        keys: Option<(usize, SecurityLevel)>,
        now: Instant,
    ) -> Result<Vec<u8>, SnmpError> {
        let pdu = Pdus::Report(Report(Pdu {
            request_id,
            error_status: Pdu::ERROR_STATUS_NO_ERROR,
            error_index: 0,
            variable_bindings: vec![VarBind {
                name: oid(counter),
                value: VarBindValue::Value(ObjectSyntax::ApplicationWide(
                    ApplicationSyntax::Counter(Counter(value as u32)),
                )),
            }],
        }));
        let engine = self.engine_params(now);
        let (level, localized) = match keys {
            Some((u, level)) => (level, Some(&self.users[u].1)),
            None => (SecurityLevel::NoAuthNoPriv, None),
        };
        encode_message(OutgoingMessage {
            msg_id: parsed.msg_id,
            level,
            reportable: false,
            engine: &engine,
            user_name: &parsed.usm.user_name,
            keys: localized,
            context_engine_id: &self.engine_id,
            context_name: b"",
            pdu,
            salt: self.next_salt(),
        })
    }

    /// Encodes the answer to a request taken by [`Usm::receive`], at the request's
    /// security level. Fails with [`SnmpError::TooBig`] beyond the sender's msgMaxSize
    /// (the agent then answers with a tooBig error instead).
    pub fn respond(&self, ctx: &UsmContext, pdu: Pdus, now: Instant) -> Result<Vec<u8>, SnmpError> {
        let (user, keys) = &self.users[ctx.user];
        let bytes = encode_message(OutgoingMessage {
            msg_id: ctx.msg_id,
            level: ctx.level,
            reportable: false,
            engine: &self.engine_params(now),
            user_name: user.name(),
            keys: Some(keys),
            context_engine_id: &ctx.context_engine_id,
            context_name: &ctx.context_name,
            pdu,
            salt: self.next_salt(),
        })?;
        let max = ctx.max_size.min(OUR_MAX_MESSAGE_SIZE);
        if bytes.len() > max {
            return Err(SnmpError::TooBig {
                size: bytes.len(),
                max,
            });
        }
        Ok(bytes)
    }
}

// ---------------------------------------------------------------------------------
// The sending side (notifications)

/// RFC 3414 §4: a reportable noAuthNoPriv Get with an empty engine ID and user, to
/// which an authoritative engine answers with a usmStatsUnknownEngineIDs Report.
pub fn discovery_probe(msg_id: i32, request_id: i32) -> Result<Vec<u8>, SnmpError> {
    encode_message(OutgoingMessage {
        msg_id,
        level: SecurityLevel::NoAuthNoPriv,
        reportable: true,
        engine: &EngineParams {
            engine_id: Vec::new(),
            boots: 0,
            time: 0,
        },
        user_name: b"",
        keys: None,
        context_engine_id: b"",
        context_name: b"",
        pdu: Pdus::GetRequest(GetRequest(Pdu {
            request_id,
            error_status: 0,
            error_index: 0,
            variable_bindings: Vec::new(),
        })),
        salt: 0,
    })
}

/// A v3 message received by the non-authoritative side (the notifier).
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub msg_id: i32,
    /// The sender's engine as the message states it; trust it only if `authenticated`.
    pub engine: EngineParams,
    /// The MAC verified with the keys passed to [`decode_reply`].
    pub authenticated: bool,
    /// The PDU, when it is readable (cleartext, or decrypted with the keys).
    pub pdu: Option<Pdus>,
}

/// Decodes a Report or Response from an authoritative engine. With `keys` (localized
/// to that engine), an authenticated message must carry a valid MAC and an encrypted
/// one is decrypted; without, only unauthenticated messages are readable.
pub fn decode_reply(datagram: &[u8], keys: Option<&LocalizedUser>) -> Result<Reply, &'static str> {
    let parsed = parse(datagram)?;
    let engine = EngineParams {
        engine_id: parsed.usm.authoritative_engine_id.to_vec(),
        boots: parsed.boots,
        time: parsed.time,
    };
    let authenticated = match (parsed.level, keys) {
        (SecurityLevel::NoAuthNoPriv, _) => false,
        (_, Some(k)) if k.engine_id() == engine.engine_id.as_slice() => {
            if !verify_mac(datagram, &parsed, k) {
                return Err("wrong digest");
            }
            true
        }
        _ => return Err("authenticated message without matching keys"),
    };
    let pdu = open_scoped(&parsed, keys).ok().map(|s| s.data);
    Ok(Reply {
        msg_id: parsed.msg_id,
        engine,
        authenticated,
        pdu,
    })
}

/// The OID and Counter32 of a Report's first varbind (which usmStats counter it is).
pub fn report_counter(pdu: &Pdus) -> Option<(Vec<u32>, u32)> {
    let Pdus::Report(r) = pdu else { return None };
    let vb = r.0.variable_bindings.first()?;
    let value = match &vb.value {
        VarBindValue::Value(ObjectSyntax::ApplicationWide(ApplicationSyntax::Counter(c))) => c.0,
        _ => 0,
    };
    Some((vb.name.to_vec(), value))
}

// ---------------------------------------------------------------------------------
// Engine ID and boots

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// snmpEngineID: `engine_id` (hex) from the config, else the RFC 3411 text format under
/// enterprise 32473 (0x80007ed9, format 4) with "cluster/node", cut to 32 bytes.
pub fn engine_id_from_config(
    cfg: &SnmpConfig,
    cluster: &str,
    node: &str,
) -> Result<Vec<u8>, SnmpError> {
    if let Some(h) = &cfg.engine_id {
        let id = unhex(h).ok_or_else(|| SnmpError::Config("snmp.engine_id: not hex".into()))?;
        if !(5..=32).contains(&id.len()) {
            return Err(SnmpError::Config(
                "snmp.engine_id: must be 5 to 32 bytes".into(),
            ));
        }
        return Ok(id);
    }
    let mut id = (ENGINE_ID_ENTERPRISE | 0x8000_0000).to_be_bytes().to_vec();
    id.push(4);
    let text = format!("{cluster}/{node}");
    let mut cut = text.len().min(32 - id.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    id.extend_from_slice(&text.as_bytes()[..cut]);
    Ok(id)
}

/// Reads snmpEngineBoots from the state directory, adds one and stores it durably
/// (temporary file, fsync, rename, fsync of the directory) before returning it. The
/// first start returns 1; the value stops at 2147483647 (RFC 3414 §2.2.2).
pub fn load_and_bump_engine_boots(state_dir: &Path) -> Result<u32, SnmpError> {
    let path = state_dir.join(ENGINE_BOOTS_FILE);
    let io = |what: &str, e| SnmpError::Io(format!("{what} {}", path.display()), e);
    let previous = match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u32>()
            .map_err(|_| SnmpError::Config(format!("{} is corrupt: {s:?}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io("read", e)),
    };
    let boots = previous.saturating_add(1).min(MAX_ENGINE_BOOTS);
    let tmp = state_dir.join(format!("{ENGINE_BOOTS_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
    writeln!(f, "{boots}").map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("fsync", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
    std::fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("fsync directory of", e))?;
    Ok(boots)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rasn_smi::v2::SimpleSyntax;
    use rasn_snmp::v2::{Response, Trap};

    fn user(name: &str, auth: Option<AuthProtocol>, privacy: bool) -> UsmUserConfig {
        UsmUserConfig {
            name: name.into(),
            auth,
            auth_password: auth.map(|_| "authpassword1".into()),
            privacy: privacy.then_some(PrivProtocol::Aes128),
            priv_password: privacy.then(|| "privpassword1".into()),
        }
    }

    #[test]
    fn rfc3414_a3_2_sha1_maplesyrup() {
        let ku = password_to_key(AuthProtocol::Sha1, b"maplesyrup");
        assert_eq!(hex(&ku), "9fb5cc0381497b3793528939ff788d5d79145211");
        let engine = unhex("000000000000000000000002").unwrap();
        let kul = localize_key(AuthProtocol::Sha1, &ku, &engine);
        assert_eq!(hex(&kul), "6695febc9288e36282235fc7151f128497b38f3f");
    }

    #[test]
    fn sha256_maplesyrup_localized_key() {
        // RFC 7860 keeps the RFC 3414 procedure; this SHA-256 vector for "maplesyrup"
        // and the A.3 engine is the one independent implementations (pysnmp) test.
        let ku = password_to_key(AuthProtocol::Sha256, b"maplesyrup");
        assert_eq!(
            hex(&ku),
            "ab51014d1e077f6017df2b12bee5f5aa72993177e9bb569c4dff5a4ca0b4afac"
        );
        let engine = unhex("000000000000000000000002").unwrap();
        let kul = localize_key(AuthProtocol::Sha256, &ku, &engine);
        assert_eq!(
            hex(&kul),
            "8982e0e549e866db361a6b625d84cccc11162d453ee8ce3a6445c2d6776f0f8b"
        );
    }

    #[test]
    fn engine_id_default_and_hex() {
        let cfg: SnmpConfig = toml::from_str("").unwrap();
        let id = engine_id_from_config(&cfg, "prod", "node-a").unwrap();
        assert_eq!(&id[..5], &[0x80, 0x00, 0x7e, 0xd9, 4]);
        assert_eq!(&id[5..], b"prod/node-a");
        let long = engine_id_from_config(&cfg, &"c".repeat(40), "n").unwrap();
        assert_eq!(long.len(), 32);
        let cfg: SnmpConfig = toml::from_str("engine_id = \"800000020109840301\"").unwrap();
        assert_eq!(
            engine_id_from_config(&cfg, "x", "y").unwrap(),
            vec![0x80, 0, 0, 2, 1, 9, 0x84, 3, 1]
        );
    }

    #[test]
    fn engine_boots_persist_and_increase() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load_and_bump_engine_boots(dir.path()).unwrap(), 1);
        assert_eq!(load_and_bump_engine_boots(dir.path()).unwrap(), 2);
        assert_eq!(load_and_bump_engine_boots(dir.path()).unwrap(), 3);
        std::fs::write(dir.path().join(ENGINE_BOOTS_FILE), "garbage").unwrap();
        assert!(load_and_bump_engine_boots(dir.path()).is_err());
    }

    fn get(request_id: i32) -> Pdus {
        Pdus::GetRequest(GetRequest(Pdu {
            request_id,
            error_status: 0,
            error_index: 0,
            variable_bindings: vec![VarBind {
                name: oid(&[1, 3, 6, 1, 2, 1, 1, 1, 0]),
                value: VarBindValue::Unspecified,
            }],
        }))
    }

    struct Manager {
        keys: LocalizedUser,
        name: Vec<u8>,
    }

    impl Manager {
        fn request(&self, usm: &Usm, level: SecurityLevel, time: u32, msg_id: i32) -> Vec<u8> {
            encode_message(OutgoingMessage {
                msg_id,
                level,
                reportable: true,
                engine: &EngineParams {
                    engine_id: usm.engine_id().to_vec(),
                    boots: usm.engine_boots(),
                    time,
                },
                user_name: &self.name,
                keys: Some(&self.keys),
                context_engine_id: usm.engine_id(),
                context_name: b"",
                pdu: get(77),
                salt: 99,
            })
            .unwrap()
        }
    }

    fn setup(proto: AuthProtocol) -> (Usm, Manager, Instant) {
        let cfg = user("ops", Some(proto), true);
        let usm = Usm::new(
            b"\x80\x00\x7e\xd9\x04test".to_vec(),
            5,
            std::slice::from_ref(&cfg),
            false,
        )
        .unwrap();
        let keys = UsmUser::from_config(&cfg)
            .unwrap()
            .localize(usm.engine_id());
        (
            usm,
            Manager {
                keys,
                name: b"ops".to_vec(),
            },
            Instant::now(),
        )
    }

    fn counter_of(bytes: &[u8]) -> Vec<u32> {
        let reply = decode_reply(bytes, None).unwrap();
        report_counter(&reply.pdu.unwrap()).unwrap().0
    }

    #[test]
    fn discovery_reports_engine_id_boots_and_time() {
        let (mut usm, _, t0) = setup(AuthProtocol::Sha256);
        usm.receive(b"\x30\x00", t0);
        let probe = discovery_probe(1, 2).unwrap();
        let UsmIncoming::Report(bytes) = usm.receive(&probe, t0 + Duration::from_secs(42)) else {
            panic!("no report");
        };
        let reply = decode_reply(&bytes, None).unwrap();
        assert_eq!(reply.msg_id, 1);
        assert_eq!(reply.engine.engine_id, usm.engine_id());
        assert_eq!((reply.engine.boots, reply.engine.time), (5, 42));
        assert_eq!(counter_of(&bytes), USM_STATS_UNKNOWN_ENGINE_IDS);
        assert_eq!(usm.stats().unknown_engine_ids, 1);
        assert_eq!(usm.stats().invalid_messages, 1);
    }

    use std::time::Duration;

    #[test]
    fn auth_priv_round_trip_every_hash() {
        for proto in [
            AuthProtocol::Sha1,
            AuthProtocol::Sha224,
            AuthProtocol::Sha256,
            AuthProtocol::Sha384,
            AuthProtocol::Sha512,
        ] {
            let (mut usm, m, t0) = setup(proto);
            let req = m.request(&usm, SecurityLevel::AuthPriv, 0, 9);
            let UsmIncoming::Request { pdu, ctx } = usm.receive(&req, t0) else {
                panic!("{proto:?}: refused, {:?}", usm.stats());
            };
            assert_eq!(pdu, get(77));
            let answer = Pdus::Response(Response(Pdu {
                request_id: 77,
                error_status: 0,
                error_index: 0,
                variable_bindings: vec![VarBind {
                    name: oid(&[1, 3, 6, 1, 2, 1, 1, 1, 0]),
                    value: VarBindValue::Value(ObjectSyntax::Simple(SimpleSyntax::String(
                        b"tandem".to_vec().into(),
                    ))),
                }],
            }));
            let bytes = usm.respond(&ctx, answer.clone(), t0).unwrap();
            let reply = decode_reply(&bytes, Some(&m.keys)).unwrap();
            assert!(reply.authenticated);
            assert_eq!(reply.msg_id, 9);
            assert_eq!(reply.pdu, Some(answer));
            // Without keys the encrypted reply is unreadable.
            assert!(decode_reply(&bytes, None).is_err());
        }
    }

    #[test]
    fn errors_are_reported_and_counted() {
        let (mut usm, m, t0) = setup(AuthProtocol::Sha256);
        // Wrong digest: flip a byte of the MAC.
        let mut req = m.request(&usm, SecurityLevel::AuthPriv, 0, 1);
        let r = auth_params_range(&req).unwrap();
        req[r.start] ^= 1;
        let UsmIncoming::Report(b) = usm.receive(&req, t0) else {
            panic!()
        };
        assert_eq!(counter_of(&b), USM_STATS_WRONG_DIGESTS);
        assert_eq!(usm.stats().wrong_digests, 1);

        // Lower level than configured.
        let req = m.request(&usm, SecurityLevel::AuthNoPriv, 0, 2);
        let UsmIncoming::Report(b) = usm.receive(&req, t0) else {
            panic!()
        };
        assert_eq!(counter_of(&b), USM_STATS_UNSUPPORTED_SEC_LEVELS);

        // Out of the time window: the report is authenticated and carries our time.
        let req = m.request(&usm, SecurityLevel::AuthPriv, 0, 3);
        let UsmIncoming::Report(b) = usm.receive(&req, t0 + Duration::from_secs(151)) else {
            panic!()
        };
        let reply = decode_reply(&b, Some(&m.keys)).unwrap();
        assert!(reply.authenticated);
        assert_eq!((reply.engine.boots, reply.engine.time), (5, 151));
        assert_eq!(
            report_counter(&reply.pdu.unwrap()).unwrap().0,
            USM_STATS_NOT_IN_TIME_WINDOWS
        );
        // Inside the window it passes.
        let req = m.request(&usm, SecurityLevel::AuthPriv, 100, 4);
        assert!(matches!(
            usm.receive(&req, t0 + Duration::from_secs(151)),
            UsmIncoming::Request { .. }
        ));

        // Unknown user.
        let other = Manager {
            keys: m.keys.clone(),
            name: b"nobody".to_vec(),
        };
        let req = other.request(&usm, SecurityLevel::AuthPriv, 0, 5);
        let UsmIncoming::Report(b) = usm.receive(&req, t0) else {
            panic!()
        };
        assert_eq!(counter_of(&b), USM_STATS_UNKNOWN_USER_NAMES);

        // Decryption error: corrupt the salt (the MAC is recomputed to stay valid).
        // Privacy flag on a cleartext message, correctly signed.
        let bad = encode_message(OutgoingMessage {
            msg_id: 6,
            level: SecurityLevel::AuthNoPriv,
            reportable: true,
            engine: &EngineParams {
                engine_id: usm.engine_id().to_vec(),
                boots: 5,
                time: 0,
            },
            user_name: b"ops",
            keys: Some(&m.keys),
            context_engine_id: usm.engine_id(),
            context_name: b"",
            pdu: get(1),
            salt: 0,
        })
        .unwrap();
        let mut forged = bad.clone();
        let flags_at = find_flags(&forged);
        forged[flags_at] |= FLAG_PRIV;
        let r = auth_params_range(&forged).unwrap();
        forged[r.clone()].fill(0);
        let mac = m.keys.mac(&forged).unwrap();
        forged[r].copy_from_slice(&mac);
        let UsmIncoming::Report(b) = usm.receive(&forged, t0) else {
            panic!()
        };
        assert_eq!(counter_of(&b), USM_STATS_DECRYPTION_ERRORS);

        let s = usm.stats();
        assert_eq!(
            (
                s.wrong_digests,
                s.unsupported_sec_levels,
                s.not_in_time_windows,
                s.unknown_user_names,
                s.decryption_errors
            ),
            (1, 1, 1, 1, 1)
        );
    }

    /// Offset of the msgFlags octet (header's third field).
    fn find_flags(b: &[u8]) -> usize {
        let (_, msg) = tlv(b, 0, b.len()).unwrap();
        let (_, version) = tlv(b, msg.start, msg.end).unwrap();
        let (_, header) = tlv(b, version.end, msg.end).unwrap();
        let (_, id) = tlv(b, header.start, header.end).unwrap();
        let (_, size) = tlv(b, id.end, header.end).unwrap();
        tlv(b, size.end, header.end).unwrap().1.start
    }

    #[test]
    fn no_auth_no_priv_only_when_allowed() {
        let cfg = user("guest", None, false);
        let engine = b"\x80\x00\x7e\xd9\x04test".to_vec();
        for allowed in [false, true] {
            let mut usm = Usm::new(engine.clone(), 1, std::slice::from_ref(&cfg), allowed).unwrap();
            let keys = UsmUser::from_config(&cfg).unwrap().localize(&engine);
            let m = Manager {
                keys,
                name: b"guest".to_vec(),
            };
            let req = m.request(&usm, SecurityLevel::NoAuthNoPriv, 0, 1);
            let out = usm.receive(&req, Instant::now());
            assert_eq!(matches!(out, UsmIncoming::Request { .. }), allowed);
            assert_eq!(usm.stats().unsupported_sec_levels, u64::from(!allowed));
        }
    }

    #[test]
    fn trap_decodes_with_snmp_parser() {
        let (usm, m, t0) = setup(AuthProtocol::Sha1);
        let trap = Pdus::Trap(Trap(Pdu {
            request_id: 3,
            error_status: 0,
            error_index: 0,
            variable_bindings: vec![],
        }));
        let bytes = encode_message(OutgoingMessage {
            msg_id: 17,
            level: SecurityLevel::AuthPriv,
            reportable: false,
            engine: &usm.engine_params(t0),
            user_name: b"ops",
            keys: Some(&m.keys),
            context_engine_id: usm.engine_id(),
            context_name: b"",
            pdu: trap,
            salt: 1,
        })
        .unwrap();
        let (rest, msg) = snmp_parser::parse_snmp_v3(&bytes).unwrap();
        assert!(rest.is_empty());
        assert_eq!(msg.header_data.msg_id, 17);
        let snmp_parser::SecurityParameters::USM(p) = msg.security_params else {
            panic!("not USM")
        };
        assert_eq!(p.msg_user_name, "ops");
        assert_eq!(p.msg_authentication_parameters.len(), 12);
        assert_eq!(p.msg_privacy_parameters, 1u64.to_be_bytes());
    }
}
