//! The SNMP agent: one UDP task serving TANDEM-MIB read-only over v2c (community and
//! source network must both match) and v3 (through [`Usm`]).
//!
//! [`RequestHandler::handle`] is the whole request path as a pure function (datagram
//! in, optional datagram out; fuzzed in `fuzz/`). The task around it only receives,
//! rebuilds the [`MibView`] when the status snapshot changed, and sends.
//! Dropped datagrams are counted in [`AgentCounters`], never answered.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rasn::types::Integer;
use rasn_snmp::v2::{Pdu, Pdus, Response, VarBind};
use rasn_snmp::v2c;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::Instrument;

use super::mib::{encoded_len, MibView, ResponseTooBig, SnmpGroupCounters, SystemInfo};
use super::usm::{Usm, UsmIncoming};
use super::{Engine, SnmpError};
use crate::config::{parse_cidr, CommunityConfig, Config, SnmpConfig};
use crate::status::Status;

/// The largest response the agent sends: an Ethernet frame's UDP payload, so replies
/// never need IP fragmentation. GETBULK responses are truncated to it.
pub const MAX_RESPONSE_SIZE: usize = 1472;
/// Room left for the v3 header (engine ID, user, digests, privacy padding).
const V3_HEADER_ALLOWANCE: usize = 256;
/// Repetitions served per GETBULK at most (RFC 3416 4.2.3 lets an agent stop early).
const MAX_REPETITIONS: u32 = 1000;

/// Datagram counters. All only increase.
#[derive(Debug, Default)]
pub struct AgentCounters {
    pub datagrams: AtomicU64,
    pub get_requests: AtomicU64,
    pub get_next_requests: AtomicU64,
    pub get_bulk_requests: AtomicU64,
    pub set_requests: AtomicU64,
    /// Other PDU types (responses, traps, reports) sent to the agent; dropped.
    pub unexpected_pdus: AtomicU64,
    pub responses: AtomicU64,
    /// GET/GETNEXT answered with `tooBig`.
    pub too_big: AtomicU64,
    /// SNMPv1 and unknown versions; dropped.
    pub bad_versions: AtomicU64,
    /// v2c community that no `[[snmp.community]]` has; dropped.
    pub bad_community_names: AtomicU64,
    /// v2c community known but the source is outside its network; dropped.
    pub bad_community_sources: AtomicU64,
    /// Not decodable as an SNMP message; dropped.
    pub malformed: AtomicU64,
    /// v3 datagrams the USM dropped.
    pub v3_dropped: AtomicU64,
    /// v3 Reports sent (discovery, USM errors).
    pub v3_reports: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl AgentCounters {
    /// The SNMPv2-MIB `snmp` group view of the counters.
    pub fn snmp_group(&self) -> SnmpGroupCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SnmpGroupCounters {
            in_pkts: get(&self.datagrams),
            in_bad_versions: get(&self.bad_versions),
            // A source outside the community's network is a bad community name
            // (RFC 3584 community table semantics).
            in_bad_community_names: get(&self.bad_community_names)
                + get(&self.bad_community_sources),
            in_bad_community_uses: get(&self.set_requests),
            in_asn_parse_errs: get(&self.malformed),
        }
    }
}

/// One `[[snmp.community]]`, parsed.
#[derive(Debug, Clone)]
struct Community {
    name: Vec<u8>,
    network: IpAddr,
    prefix: u8,
}

impl Community {
    fn admits(&self, source: IpAddr) -> bool {
        in_network(source.to_canonical(), self.network, self.prefix)
    }
}

fn in_network(addr: IpAddr, network: IpAddr, prefix: u8) -> bool {
    match (addr, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The `[[snmp.community]]` entries, parsed.
fn communities(list: &[CommunityConfig]) -> Result<Vec<Community>, SnmpError> {
    list.iter()
        .map(|c| {
            let (network, prefix) = parse_cidr(&c.source)
                .map_err(|e| SnmpError::Config(format!("community source: {e}")))?;
            Ok(Community {
                name: c.name.as_bytes().to_vec(),
                network,
                prefix,
            })
        })
        .collect()
}

/// The request path of the agent: decode, authorize, answer, encode.
pub struct RequestHandler {
    communities: Vec<Community>,
    usm: Usm,
    view: MibView,
    counters: Arc<AgentCounters>,
}

impl RequestHandler {
    /// A handler for the communities of `cfg`, serving `view`.
    pub fn new(cfg: &SnmpConfig, usm: Usm, view: MibView) -> Result<RequestHandler, SnmpError> {
        Ok(RequestHandler {
            communities: communities(&cfg.communities)?,
            usm,
            view,
            counters: Arc::default(),
        })
    }

    /// The agent's counters (shared; they keep counting).
    pub fn counters(&self) -> Arc<AgentCounters> {
        self.counters.clone()
    }

    /// Serves `view` from now on.
    pub fn set_view(&mut self, view: MibView) {
        self.view = view;
    }

    /// Admits these communities from now on (a reloaded configuration's).
    pub fn set_communities(&mut self, list: &[CommunityConfig]) -> Result<(), SnmpError> {
        self.communities = communities(list)?;
        Ok(())
    }

    /// Handles one datagram from `source`; returns the datagram to send back, if any.
    pub fn handle(&mut self, datagram: &[u8], source: IpAddr, now: Instant) -> Option<Vec<u8>> {
        bump(&self.counters.datagrams);
        let Some(version) = message_version(datagram) else {
            bump(&self.counters.malformed);
            return None;
        };
        match version {
            1 => self.handle_v2c(datagram, source),
            3 => self.handle_v3(datagram, now),
            _ => {
                bump(&self.counters.bad_versions);
                None
            }
        }
    }

    fn handle_v2c(&mut self, datagram: &[u8], source: IpAddr) -> Option<Vec<u8>> {
        let Ok(msg) = rasn::ber::decode::<v2c::Message<Pdus>>(datagram) else {
            bump(&self.counters.malformed);
            return None;
        };
        let mut known = self
            .communities
            .iter()
            .filter(|c| c.name == msg.community.as_ref())
            .peekable();
        if known.peek().is_none() {
            bump(&self.counters.bad_community_names);
            tracing::debug!(%source, "v2c request with an unknown community dropped");
            return None;
        }
        if !known.any(|c| c.admits(source)) {
            bump(&self.counters.bad_community_sources);
            tracing::debug!(%source, "v2c request from outside the community's network dropped");
            return None;
        }
        let overhead = v2c_overhead(&msg.community);
        let budget = MAX_RESPONSE_SIZE.saturating_sub(overhead);
        let response = self.answer(msg.data, budget)?;
        let reply = v2c::Message {
            version: Integer::from(1),
            community: msg.community,
            data: response,
        };
        match rasn::ber::encode(&reply) {
            Ok(bytes) => {
                bump(&self.counters.responses);
                Some(bytes)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a v2c response");
                None
            }
        }
    }

    fn handle_v3(&mut self, datagram: &[u8], now: Instant) -> Option<Vec<u8>> {
        match self.usm.receive(datagram, now) {
            UsmIncoming::Report(bytes) => {
                bump(&self.counters.v3_reports);
                Some(bytes)
            }
            UsmIncoming::Drop(reason) => {
                bump(&self.counters.v3_dropped);
                tracing::debug!(reason, "v3 datagram dropped");
                None
            }
            UsmIncoming::Request { pdu, ctx } => {
                let budget = MAX_RESPONSE_SIZE.saturating_sub(V3_HEADER_ALLOWANCE);
                let response = self.answer(pdu, budget)?;
                match self.usm.respond(&ctx, response, now) {
                    Ok(bytes) => {
                        bump(&self.counters.responses);
                        Some(bytes)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot build a v3 response");
                        None
                    }
                }
            }
        }
    }

    /// The Response PDU to a request PDU (None for PDUs an agent does not answer).
    /// `budget` is the room for the encoded variable bindings.
    fn answer(&mut self, request: Pdus, budget: usize) -> Option<Pdus> {
        self.view.set_snmp_counters(&self.counters.snmp_group());
        let names =
            |vbs: &[VarBind]| -> Vec<Vec<u32>> { vbs.iter().map(|vb| vb.name.to_vec()).collect() };
        let (request_id, result) = match request {
            Pdus::GetRequest(r) => {
                bump(&self.counters.get_requests);
                let r = r.0;
                let names = names(&r.variable_bindings);
                (r.request_id, self.view.get_all(&names, budget))
            }
            Pdus::GetNextRequest(r) => {
                bump(&self.counters.get_next_requests);
                let r = r.0;
                let names = names(&r.variable_bindings);
                (r.request_id, self.view.get_next(&names, budget))
            }
            Pdus::GetBulkRequest(r) => {
                bump(&self.counters.get_bulk_requests);
                let r = r.0;
                let names = names(&r.variable_bindings);
                let reps = r.max_repetitions.min(MAX_REPETITIONS);
                let vbs = self.view.get_bulk(&names, r.non_repeaters, reps, budget);
                (r.request_id, Ok(vbs))
            }
            Pdus::SetRequest(r) => {
                // Read-only: the write is outside every view (RFC 3416 4.2.5 noAccess).
                bump(&self.counters.set_requests);
                let r = r.0;
                let size: usize = r.variable_bindings.iter().map(encoded_len).sum();
                if size <= budget {
                    let index = u32::from(!r.variable_bindings.is_empty());
                    return Some(response(
                        r.request_id,
                        Pdu::ERROR_STATUS_NO_ACCESS,
                        index,
                        r.variable_bindings,
                    ));
                }
                (r.request_id, Err(ResponseTooBig))
            }
            _ => {
                bump(&self.counters.unexpected_pdus);
                return None;
            }
        };
        Some(match result {
            Ok(vbs) => response(request_id, Pdu::ERROR_STATUS_NO_ERROR, 0, vbs),
            Err(_) => {
                bump(&self.counters.too_big);
                response(request_id, Pdu::ERROR_STATUS_TOO_BIG, 0, Vec::new())
            }
        })
    }
}

fn response(request_id: i32, error_status: u32, error_index: u32, vbs: Vec<VarBind>) -> Pdus {
    Pdus::Response(Response(Pdu {
        request_id,
        error_status,
        error_index,
        variable_bindings: vbs,
    }))
}

/// Bytes of a v2c response around its variable bindings: the message with an empty
/// list, plus room for every length field growing to its long form.
fn v2c_overhead(community: &[u8]) -> usize {
    let empty = v2c::Message {
        version: Integer::from(1),
        community: rasn::types::OctetString::from_slice(community),
        data: response(i32::MAX, 0, 0, Vec::new()),
    };
    rasn::ber::encode(&empty).map_or(MAX_RESPONSE_SIZE, |b| b.len() + 9)
}

/// The `version` of an SNMP message (the first INTEGER of the outer SEQUENCE), without
/// decoding the rest.
pub fn message_version(datagram: &[u8]) -> Option<i64> {
    let rest = datagram.strip_prefix(&[0x30])?;
    let rest = skip_length(rest)?;
    let rest = rest.strip_prefix(&[0x02])?;
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if !(1..=4).contains(&len) || rest.len() < len {
        return None;
    }
    let mut v = i64::from(rest[0] as i8);
    for &b in &rest[1..len] {
        v = (v << 8) | i64::from(b);
    }
    Some(v)
}

/// Skips a BER length (short or long form up to 4 octets).
fn skip_length(b: &[u8]) -> Option<&[u8]> {
    let (&first, rest) = b.split_first()?;
    if first < 0x80 {
        return Some(rest);
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 || rest.len() < n {
        return None;
    }
    Some(&rest[n..])
}

/// The running agent; dropping it stops the task.
pub struct SnmpAgent {
    local_addr: SocketAddr,
    counters: Arc<AgentCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl SnmpAgent {
    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The agent's counters.
    pub fn counters(&self) -> Arc<AgentCounters> {
        self.counters.clone()
    }
}

impl Drop for SnmpAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `cfg.listen` and serves the latest status snapshot until dropped. With
/// `running` (the configuration the daemon runs with), the communities follow its
/// `[[snmp.community]]` entries.
pub async fn spawn(
    cfg: &SnmpConfig,
    engine: &Engine,
    mut status: watch::Receiver<Status>,
    mut running: Option<watch::Receiver<Arc<Config>>>,
) -> Result<SnmpAgent, SnmpError> {
    let usm = Usm::new(
        engine.id.clone(),
        engine.boots,
        &cfg.users,
        cfg.allow_no_auth_no_priv,
    )?
    .with_engine_start(engine.start);
    let system = SystemInfo {
        contact: cfg.contact.clone(),
        location: cfg.location.clone(),
    };
    let view = MibView::build(&status.borrow_and_update(), &system);
    let mut handler = RequestHandler::new(cfg, usm, view)?;
    let socket = UdpSocket::bind(cfg.listen).await.map_err(|e| {
        SnmpError::Io(
            format!("cannot bind the SNMP agent to udp {}", cfg.listen),
            e,
        )
    })?;
    let local_addr = socket
        .local_addr()
        .map_err(|e| SnmpError::Io("snmp socket address".into(), e))?;
    let counters = handler.counters();
    let span = tracing::info_span!("snmp_agent", listen = %local_addr);
    let task = tokio::spawn(
        async move {
            tracing::info!("SNMP agent listening");
            let mut buf = vec![0u8; 65_536];
            loop {
                let (len, from) = match socket.recv_from(&mut buf).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "snmp receive failed");
                        continue;
                    }
                };
                // Rebuilt at most once per changed snapshot, never per request.
                if status.has_changed().unwrap_or(false) {
                    handler.set_view(MibView::build(&status.borrow_and_update(), &system));
                }
                if let Some(cfg) = running
                    .as_mut()
                    .filter(|c| c.has_changed().unwrap_or(false))
                {
                    let snmp = cfg.borrow_and_update().snmp.clone();
                    let taken = snmp.map(|s| handler.set_communities(&s.communities));
                    if let Some(Err(e)) = taken {
                        tracing::error!(error = %e, "reloaded communities not taken");
                    }
                }
                if let Some(reply) = handler.handle(&buf[..len], from.ip(), Instant::now()) {
                    if let Err(e) = socket.send_to(&reply, from).await {
                        tracing::debug!(%from, error = %e, "snmp send failed");
                    }
                }
            }
        }
        .instrument(span),
    );
    Ok(SnmpAgent {
        local_addr,
        counters,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_taken_port_is_a_clear_error() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cfg = SnmpConfig {
            listen: taken.local_addr().unwrap(),
            ..SnmpConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let (_tx, rx) = watch::channel(Status::default());
        let engine = Engine::load(&cfg, "c", "n", dir.path(), Instant::now()).unwrap();
        let Err(e) = spawn(&cfg, &engine, rx, None).await else {
            panic!("bound a taken port");
        };
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("cannot bind the SNMP agent to udp {}", cfg.listen)),
            "{text}"
        );
    }

    #[tokio::test]
    async fn the_communities_of_a_reloaded_configuration_are_admitted_at_once() {
        let config = Config::parse(
            "[cluster]\nname = \"t\"\nkey = \"0123456789abcdef\"\n\
             [heartbeat]\npaths = [\"hb1\"]\n\
             [snmp]\nlisten = \"127.0.0.1:0\"\n\
             [[snmp.community]]\nname = \"public\"\n\
             [[node]]\nname = \"a\"\npriority = 1\naddresses = { hb1 = \"10.0.0.1\" }\n",
        )
        .unwrap();
        let snmp = config.snmp.clone().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::load(&snmp, "t", "a", dir.path(), Instant::now()).unwrap();
        let (_status, status_rx) = watch::channel(Status::default());
        let (running, running_rx) = watch::channel(Arc::new(config.clone()));
        let agent = spawn(&snmp, &engine, status_rx, Some(running_rx))
            .await
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let to = agent.local_addr();
        let answered = |community: &'static str| {
            let client = &client;
            async move {
                client.send_to(&bulk(community, 1), to).await.unwrap();
                let mut buf = vec![0u8; 65_536];
                let wait = std::time::Duration::from_millis(300);
                tokio::time::timeout(wait, client.recv_from(&mut buf))
                    .await
                    .is_ok()
            }
        };
        assert!(answered("public").await);
        assert!(!answered("fresh").await);
        let mut next = config.clone();
        next.snmp.as_mut().unwrap().communities = vec![CommunityConfig {
            name: "fresh".into(),
            source: "127.0.0.0/8".into(),
        }];
        running.send_replace(Arc::new(next));
        assert!(answered("fresh").await);
        assert!(!answered("public").await);
    }

    fn handler() -> RequestHandler {
        let cfg = SnmpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            communities: vec![crate::config::CommunityConfig {
                name: "public".into(),
                source: "127.0.0.0/8".into(),
            }],
            ..SnmpConfig::default()
        };
        let status = crate::snmp::synthetic::synthetic_status(50);
        let view = MibView::build(&status, &SystemInfo::default());
        let usm = Usm::new(vec![0x80, 0, 0, 0, 4], 1, &[], false).unwrap();
        RequestHandler::new(&cfg, usm, view).unwrap()
    }

    fn bulk(community: &str, max_repetitions: u32) -> Vec<u8> {
        let msg = v2c::Message {
            version: Integer::from(1),
            community: rasn::types::OctetString::from_slice(community.as_bytes()),
            data: Pdus::GetBulkRequest(rasn_snmp::v2::GetBulkRequest(rasn_snmp::v2::BulkPdu {
                request_id: 9,
                non_repeaters: 0,
                max_repetitions,
                variable_bindings: vec![VarBind {
                    name: super::super::mib::oid(&[1, 3]),
                    value: rasn_snmp::v2::VarBindValue::Unspecified,
                }],
            })),
        };
        rasn::ber::encode(&msg).unwrap()
    }

    #[test]
    fn bulk_answers_are_truncated_to_the_response_limit() {
        let mut h = handler();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let reply = h
            .handle(&bulk("public", 1000), local, Instant::now())
            .unwrap();
        assert!(reply.len() <= MAX_RESPONSE_SIZE, "{} bytes", reply.len());
        assert!(
            reply.len() > MAX_RESPONSE_SIZE - 100,
            "{} bytes",
            reply.len()
        );
        let msg: v2c::Message<Pdus> = rasn::ber::decode(&reply).unwrap();
        let Pdus::Response(r) = msg.data else {
            panic!("not a response");
        };
        assert_eq!(r.0.request_id, 9);
        assert_eq!(r.0.error_status, Pdu::ERROR_STATUS_NO_ERROR);
        assert!(r.0.variable_bindings.len() > 10);
        let counters = h.counters();
        assert_eq!(counters.get_bulk_requests.load(Ordering::Relaxed), 1);
        assert_eq!(counters.responses.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn wrong_community_or_source_is_dropped_and_counted() {
        let mut h = handler();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let remote: IpAddr = "192.0.2.7".parse().unwrap();
        assert!(h
            .handle(&bulk("private", 5), local, Instant::now())
            .is_none());
        assert!(h
            .handle(&bulk("public", 5), remote, Instant::now())
            .is_none());
        assert!(h.handle(&[0x30, 0x00], local, Instant::now()).is_none());
        let c = h.counters();
        assert_eq!(c.bad_community_names.load(Ordering::Relaxed), 1);
        assert_eq!(c.bad_community_sources.load(Ordering::Relaxed), 1);
        assert_eq!(c.malformed.load(Ordering::Relaxed), 1);
        assert_eq!(c.responses.load(Ordering::Relaxed), 0);
        assert_eq!(c.snmp_group().in_bad_community_names, 2);
    }

    #[test]
    fn versions_are_peeked_from_the_header() {
        // SEQUENCE { INTEGER 1, ... }
        assert_eq!(message_version(&[0x30, 0x03, 0x02, 0x01, 0x01]), Some(1));
        assert_eq!(
            message_version(&[0x30, 0x81, 0x03, 0x02, 0x01, 0x03]),
            Some(3)
        );
        assert_eq!(message_version(&[0x30, 0x03, 0x04, 0x01, 0x01]), None);
        assert_eq!(message_version(&[0x30]), None);
        assert_eq!(message_version(&[]), None);
    }

    #[test]
    fn networks_match_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("127.0.0.5"), ip("127.0.0.0"), 8));
        assert!(!in_network(ip("10.0.0.5"), ip("127.0.0.0"), 8));
        assert!(in_network(ip("10.1.2.3"), ip("10.1.2.3"), 32));
        assert!(!in_network(ip("10.1.2.4"), ip("10.1.2.3"), 32));
        assert!(in_network(ip("fd00::1"), ip("fd00::"), 64));
        assert!(!in_network(ip("127.0.0.1"), ip("fd00::"), 64));
        let c = Community {
            name: b"x".to_vec(),
            network: ip("127.0.0.0"),
            prefix: 8,
        };
        assert!(c.admits(ip("::ffff:127.0.0.1")));
    }
}
