//! TANDEM-MIB (`mibs/TANDEM-MIB.txt`) and the parts of SNMPv2-MIB the agent serves,
//! as a pure, ordered object tree built from one status snapshot.
//!
//! [`MibView`] answers GET, GETNEXT and GETBULK exactly as RFC 3416 section 4.2 says:
//! `noSuchObject` for names outside every object type, `noSuchInstance` for a missing
//! instance of a known object type, `endOfMibView` past the last object; `tooBig` for
//! GET/GETNEXT and truncation for GETBULK when the response would not fit.
//! [`notification_for`] turns an event into the notification that reports it.
//!
//! Tables are indexed by names, each encoded as a length-prefixed string (not IMPLIED),
//! so snmpwalk with the MIB loaded prints rows as `tandemGroupOwner."web"`. Mirrors are
//! rows of `tandemMirrorTable` (by mirror) and `tandemMirrorPeerTable` (by mirror and
//! peer node), from the snapshot's `mirrors`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use rasn::types::{Integer, ObjectIdentifier, OctetString};
use rasn_smi::v1::{Counter, Gauge};
use rasn_smi::v2::{ApplicationSyntax, Counter64, ObjectSyntax, SimpleSyntax};
use rasn_snmp::v2::{VarBind, VarBindValue};

use super::{Notification, ENTERPRISE};
use crate::cluster::packet::LocalGroupState;
use crate::config::ReplicationMode;
use crate::event::{Event, EventKind};
use crate::mirror::generation::DiskState;
use crate::placement::policy::FastStopStep;
use crate::status::{GroupSummary, LinkState, MirrorRole, ResourceType, Status, TakeoverMode};

/// `sysUpTime.0` (SNMPv2-MIB), the first varbind of every notification.
pub const SYS_UP_TIME_INSTANCE: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];
/// `snmpTrapOID.0` (SNMPv2-MIB), the second varbind of every notification.
pub const SNMP_TRAP_OID_INSTANCE: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];

/// SNMPv2-MIB `system` group.
const SYSTEM: &[u32] = &[1, 3, 6, 1, 2, 1, 1];
/// SNMPv2-MIB `snmp` group (the agent's own counters).
const SNMP_GROUP: &[u32] = &[1, 3, 6, 1, 2, 1, 11];

/// `tandemNotifications` = tandem.0
const NOTIFICATIONS: u32 = 0;
/// `tandemObjects` = tandem.1 and its subtrees.
const OBJECTS: u32 = 1;
const CLUSTER: u32 = 1;
const NODE_TABLE: u32 = 2;
const PATH_TABLE: u32 = 3;
const GROUP_TABLE: u32 = 4;
const RESOURCE_TABLE: u32 = 5;
const VIP_TABLE: u32 = 6;
const MIRROR_TABLE: u32 = 7;
const NOTIFICATION_OBJECTS: u32 = 8;
const MIRROR_PEER_TABLE: u32 = 9;

/// Accessible columns of each table (the index columns are not-accessible).
const NODE_COLUMNS: std::ops::RangeInclusive<u32> = 2..=7;
const PATH_COLUMNS: std::ops::RangeInclusive<u32> = 3..=5;
const GROUP_COLUMNS: std::ops::RangeInclusive<u32> = 2..=11;
const RESOURCE_COLUMNS: std::ops::RangeInclusive<u32> = 2..=3;
const VIP_COLUMNS: std::ops::RangeInclusive<u32> = 1..=3;
const MIRROR_COLUMNS: std::ops::RangeInclusive<u32> = 2..=10;
const MIRROR_PEER_COLUMNS: std::ops::RangeInclusive<u32> = 2..=11;
/// Cluster scalars: name, local node, mode, last event seq, uptime.
const CLUSTER_SCALARS: std::ops::RangeInclusive<u32> = 1..=5;

/// `TruthValue` (SNMPv2-TC).
fn truth(b: bool) -> ObjectSyntax {
    integer(if b { 1 } else { 2 })
}

fn integer(i: i64) -> ObjectSyntax {
    ObjectSyntax::Simple(SimpleSyntax::Integer(Integer::from(i)))
}

fn octets(b: &[u8]) -> ObjectSyntax {
    ObjectSyntax::Simple(SimpleSyntax::String(OctetString::from_slice(b)))
}

fn text(s: &str) -> ObjectSyntax {
    octets(s.as_bytes())
}

fn object_id(arcs: &[u32]) -> ObjectSyntax {
    ObjectSyntax::Simple(SimpleSyntax::ObjectId(oid(arcs)))
}

fn gauge(v: u64) -> ObjectSyntax {
    ObjectSyntax::ApplicationWide(ApplicationSyntax::Unsigned(Gauge(
        v.min(u32::MAX as u64) as u32
    )))
}

fn counter32(v: u64) -> ObjectSyntax {
    ObjectSyntax::ApplicationWide(ApplicationSyntax::Counter(Counter(v as u32)))
}

fn counter64(v: u64) -> ObjectSyntax {
    ObjectSyntax::ApplicationWide(ApplicationSyntax::BigCounter(Counter64(v)))
}

/// Hundredths of a second, wrapping as TimeTicks do.
fn ticks(ms: u64) -> ObjectSyntax {
    ObjectSyntax::ApplicationWide(ApplicationSyntax::Ticks(rasn_smi::v1::TimeTicks(
        (ms / 10) as u32,
    )))
}

/// An owned OBJECT IDENTIFIER from arcs.
pub fn oid(arcs: &[u32]) -> ObjectIdentifier {
    ObjectIdentifier::new_unchecked(Cow::Owned(arcs.to_vec()))
}

/// An OID under the enterprise arc.
pub fn tandem_oid(suffix: &[u32]) -> Vec<u32> {
    let mut v = ENTERPRISE.to_vec();
    v.extend_from_slice(suffix);
    v
}

/// A name as a length-prefixed string index.
fn name_index(name: &str) -> impl Iterator<Item = u32> + '_ {
    std::iter::once(name.len() as u32).chain(name.bytes().map(u32::from))
}

/// `TandemGroupSummary`: running(1) starting(2) stopping(3) stopped(4) failed(5) split(6).
fn group_summary(s: GroupSummary) -> i64 {
    match s {
        GroupSummary::Running => 1,
        GroupSummary::Starting => 2,
        GroupSummary::Stopping => 3,
        GroupSummary::Stopped => 4,
        GroupSummary::Failed => 5,
        GroupSummary::Split => 6,
    }
}

/// `TandemLocalGroupState` and `TandemResourceStatus`: stopped(1) starting(2)
/// running(3) stopping(4) failed(5).
fn local_state(s: LocalGroupState) -> i64 {
    match s {
        LocalGroupState::Stopped => 1,
        LocalGroupState::Starting => 2,
        LocalGroupState::Running => 3,
        LocalGroupState::Stopping => 4,
        LocalGroupState::Failed => 5,
    }
}

/// `TandemResourceType`: ip(1) exec(2) process(3) mirror(4) filesystem(5).
fn resource_kind(t: ResourceType) -> i64 {
    match t {
        ResourceType::Ip => 1,
        ResourceType::Exec => 2,
        ResourceType::Process => 3,
        ResourceType::Mirror => 4,
        ResourceType::Filesystem => 5,
        ResourceType::SharedDisk => 6,
    }
}

/// `TandemReplicaRole`: primary(1) secondary(2).
fn replica_role(r: MirrorRole) -> i64 {
    match r {
        MirrorRole::Primary => 1,
        MirrorRole::Secondary => 2,
    }
}

/// `TandemDiskState`: upToDate(1) outdated(2) inconsistent(3) syncSource(4)
/// syncTarget(5).
fn disk_state(d: DiskState) -> i64 {
    match d {
        DiskState::UpToDate => 1,
        DiskState::Outdated => 2,
        DiskState::Inconsistent => 3,
        DiskState::SyncSource => 4,
        DiskState::SyncTarget => 5,
    }
}

/// `TandemMirrorConnection`: connected(1) connecting(2) disconnected(3) paused(4)
/// splitBrain(5) refused(6).
fn mirror_connection(c: LinkState) -> i64 {
    match c {
        LinkState::Connected => 1,
        LinkState::Connecting => 2,
        LinkState::Disconnected => 3,
        LinkState::Paused => 4,
        LinkState::SplitBrain => 5,
        LinkState::Refused => 6,
    }
}

/// `TandemReplicationMode`: sync(1) async(2).
fn replication_mode(m: ReplicationMode) -> i64 {
    match m {
        ReplicationMode::Sync => 1,
        ReplicationMode::Async => 2,
    }
}

/// `TandemFastStopStep`: floatingIp(1) mirror(2) freeze(3).
fn fast_stop_step(s: FastStopStep) -> i64 {
    match s {
        FastStopStep::FloatingIp => 1,
        FastStopStep::Mirror => 2,
        FastStopStep::Freeze => 3,
    }
}

/// A string cut to at most `max` bytes (a DisplayString's SIZE).
fn text_max(s: &str, max: usize) -> ObjectSyntax {
    octets(&s.as_bytes()[..s.len().min(max)])
}

/// What the `system` group says about this agent (from `[snmp]`).
#[derive(Debug, Clone, Default)]
pub struct SystemInfo {
    pub contact: String,
    pub location: String,
}

/// The SNMPv2-MIB `snmp` group counters the agent keeps.
#[derive(Debug, Clone, Copy, Default)]
pub struct SnmpGroupCounters {
    pub in_pkts: u64,
    pub in_bad_versions: u64,
    pub in_bad_community_names: u64,
    pub in_bad_community_uses: u64,
    pub in_asn_parse_errs: u64,
}

/// The response would exceed the size the requester can receive (RFC 3416 `tooBig`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the response would exceed the maximum message size")]
pub struct ResponseTooBig;

/// The ordered object tree of one status snapshot.
#[derive(Debug, Clone, Default)]
pub struct MibView {
    values: BTreeMap<Vec<u32>, ObjectSyntax>,
    /// Every object type the agent implements (scalars and accessible columns), with
    /// or without instances: a name under one of them is a missing instance, any
    /// other name a missing object.
    object_types: BTreeSet<Vec<u32>>,
}

impl MibView {
    /// Builds the tree from one consistent snapshot.
    pub fn build(status: &Status, system: &SystemInfo) -> MibView {
        let mut v = MibView::default();
        v.add_object_types();
        v.add_system(status, system);
        v.set_snmp_counters(&SnmpGroupCounters::default());
        v.add_cluster(status);
        v.add_nodes(status);
        v.add_paths(status);
        v.add_groups(status);
        v.add_resources(status);
        v.add_mirrors(status);
        v
    }

    /// Number of object instances.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// The tree has no instances.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn add_object_types(&mut self) {
        let types = &mut self.object_types;
        for arc in 1..=7 {
            types.insert([SYSTEM, &[arc]].concat());
        }
        for arc in [1, 3, 4, 5, 6, 30, 31, 32] {
            types.insert([SNMP_GROUP, &[arc]].concat());
        }
        for arc in CLUSTER_SCALARS {
            types.insert(tandem_oid(&[OBJECTS, CLUSTER, arc]));
        }
        let tables = [
            (NODE_TABLE, NODE_COLUMNS),
            (PATH_TABLE, PATH_COLUMNS),
            (GROUP_TABLE, GROUP_COLUMNS),
            (RESOURCE_TABLE, RESOURCE_COLUMNS),
            (VIP_TABLE, VIP_COLUMNS),
            (MIRROR_TABLE, MIRROR_COLUMNS),
            (MIRROR_PEER_TABLE, MIRROR_PEER_COLUMNS),
        ];
        for (table, columns) in tables {
            for column in columns {
                types.insert(tandem_oid(&[OBJECTS, table, 1, column]));
            }
        }
    }

    fn add_system(&mut self, status: &Status, system: &SystemInfo) {
        let sys = |arc: u32| [SYSTEM, &[arc, 0]].concat();
        let descr = format!(
            "Tandem {}: high-availability failover daemon",
            env!("CARGO_PKG_VERSION")
        );
        self.values.insert(sys(1), text(&descr));
        self.values.insert(sys(2), object_id(ENTERPRISE));
        self.values.insert(sys(3), ticks(status.uptime_ms));
        self.values.insert(sys(4), text(&system.contact));
        self.values.insert(sys(5), text(&status.node));
        self.values.insert(sys(6), text(&system.location));
        // applications (64) + end-to-end (8)
        self.values.insert(sys(7), integer(72));
    }

    /// Sets the `snmp` group counters (they change per datagram, the rest per snapshot).
    pub fn set_snmp_counters(&mut self, c: &SnmpGroupCounters) {
        let arcs = [
            (1, counter32(c.in_pkts)),
            (3, counter32(c.in_bad_versions)),
            (4, counter32(c.in_bad_community_names)),
            (5, counter32(c.in_bad_community_uses)),
            (6, counter32(c.in_asn_parse_errs)),
            // snmpEnableAuthenTraps: disabled(2)
            (30, integer(2)),
            // snmpSilentDrops: an empty tooBig response always fits; snmpProxyDrops:
            // no proxy.
            (31, counter32(0)),
            (32, counter32(0)),
        ];
        for (arc, value) in arcs {
            self.values.insert([SNMP_GROUP, &[arc, 0]].concat(), value);
        }
    }

    fn add_cluster(&mut self, s: &Status) {
        let scalar = |arc: u32| tandem_oid(&[OBJECTS, CLUSTER, arc, 0]);
        self.values.insert(scalar(1), text(&s.cluster));
        self.values.insert(scalar(2), text(&s.node));
        // TandemTakeoverMode: twoNode(1) priority(2)
        let mode = match s.mode {
            TakeoverMode::TwoNode => 1,
            TakeoverMode::Priority => 2,
            TakeoverMode::Quorum => 3,
        };
        self.values.insert(scalar(3), integer(mode));
        self.values.insert(scalar(4), counter64(s.last_seq));
        self.values.insert(scalar(5), ticks(s.uptime_ms));
    }

    /// Inserts `table.1.column.index`.
    fn cell(&mut self, table: u32, column: u32, index: &[u32], value: ObjectSyntax) {
        let mut name = tandem_oid(&[OBJECTS, table, 1, column]);
        name.extend_from_slice(index);
        self.values.insert(name, value);
    }

    fn add_nodes(&mut self, s: &Status) {
        for n in &s.nodes {
            let idx: Vec<u32> = name_index(&n.name).collect();
            // TandemNodeStatus: up(1) down(2) standby(3)
            let state = match (n.alive, n.standby) {
                (true, false) => 1,
                (false, _) => 2,
                (true, true) => 3,
            };
            self.cell(NODE_TABLE, 2, &idx, gauge(n.priority.into()));
            self.cell(NODE_TABLE, 3, &idx, truth(n.local));
            self.cell(NODE_TABLE, 4, &idx, integer(state));
            if let Some(ms) = n.last_heard_ms_ago {
                self.cell(NODE_TABLE, 5, &idx, gauge(ms));
            }
            self.cell(NODE_TABLE, 6, &idx, gauge(n.paths_up as u64));
            self.cell(NODE_TABLE, 7, &idx, text(&n.boot_id));
        }
    }

    fn add_paths(&mut self, s: &Status) {
        for p in &s.paths {
            let idx: Vec<u32> = name_index(&p.peer).chain(name_index(&p.path)).collect();
            // TandemPathStatus: up(1) down(2)
            self.cell(PATH_TABLE, 3, &idx, integer(if p.up { 1 } else { 2 }));
            if let Some(rtt) = p.rtt_ms {
                let micros = (rtt * 1000.0).round().max(0.0) as u64;
                self.cell(PATH_TABLE, 4, &idx, gauge(micros));
            }
            if let Some(ms) = p.last_heard_ms_ago {
                self.cell(PATH_TABLE, 5, &idx, gauge(ms));
            }
        }
    }

    fn add_groups(&mut self, s: &Status) {
        for g in &s.groups {
            let idx: Vec<u32> = name_index(&g.name).collect();
            let failovers = s.failovers.iter().find(|f| f.group == g.name);
            self.cell(GROUP_TABLE, 2, &idx, integer(group_summary(g.summary)));
            self.cell(GROUP_TABLE, 3, &idx, integer(local_state(g.local_state)));
            let owner = g.owner.as_deref().unwrap_or("");
            self.cell(GROUP_TABLE, 4, &idx, text(owner));
            self.cell(GROUP_TABLE, 5, &idx, counter64(g.epoch));
            self.cell(GROUP_TABLE, 6, &idx, truth(g.maintenance));
            let count = failovers.map_or(0, |f| f.count);
            self.cell(GROUP_TABLE, 7, &idx, counter32(count));
            let reason = failovers.map_or(String::new(), |f| f.last_reason.name());
            self.cell(GROUP_TABLE, 8, &idx, text(&reason));
            let duration = failovers.and_then(|f| f.last_duration_ms).unwrap_or(0);
            self.cell(GROUP_TABLE, 9, &idx, gauge(duration));
            self.cell(GROUP_TABLE, 10, &idx, truth(g.blocked));
            self.cell(GROUP_TABLE, 11, &idx, gauge(g.recent_failures as u64));
        }
    }

    fn add_resources(&mut self, s: &Status) {
        for r in &s.resources {
            let idx: Vec<u32> = name_index(&r.group).chain(name_index(&r.name)).collect();
            self.cell(RESOURCE_TABLE, 2, &idx, integer(resource_kind(r.kind)));
            self.cell(RESOURCE_TABLE, 3, &idx, integer(local_state(r.state)));
        }
        for v in &s.vips {
            let idx: Vec<u32> = name_index(&v.group)
                .chain(name_index(&v.resource))
                .collect();
            self.cell(VIP_TABLE, 1, &idx, text(&v.address));
            self.cell(VIP_TABLE, 2, &idx, text(&v.interface));
            self.cell(VIP_TABLE, 3, &idx, truth(v.present));
        }
    }

    fn add_mirrors(&mut self, s: &Status) {
        for m in &s.mirrors {
            let idx: Vec<u32> = name_index(&m.name).collect();
            self.cell(MIRROR_TABLE, 2, &idx, integer(replica_role(m.role)));
            self.cell(MIRROR_TABLE, 3, &idx, integer(disk_state(m.disk)));
            self.cell(MIRROR_TABLE, 4, &idx, counter64(m.size_bytes));
            self.cell(MIRROR_TABLE, 5, &idx, text_max(&m.generation, 16));
            self.cell(MIRROR_TABLE, 6, &idx, truth(m.io_frozen));
            self.cell(MIRROR_TABLE, 7, &idx, counter64(m.read_bytes));
            self.cell(MIRROR_TABLE, 8, &idx, counter64(m.written_bytes));
            if let Some(r) = &m.recovery_point {
                self.cell(MIRROR_TABLE, 9, &idx, counter64(r.lag_bytes));
                self.cell(MIRROR_TABLE, 10, &idx, gauge(u64::from(r.lag_ms)));
            }
            for p in &m.peers {
                let idx: Vec<u32> = name_index(&m.name).chain(name_index(&p.node)).collect();
                let t = MIRROR_PEER_TABLE;
                self.cell(t, 2, &idx, integer(replication_mode(p.mode)));
                self.cell(t, 3, &idx, integer(mirror_connection(p.connection)));
                if let Some(d) = p.peer_disk {
                    self.cell(t, 4, &idx, integer(disk_state(d)));
                }
                self.cell(t, 5, &idx, counter64(p.out_of_sync_bytes));
                self.cell(t, 6, &idx, counter64(p.lag_bytes));
                let lag_ms = (p.lag_seconds * 1000.0).round().max(0.0) as u64;
                self.cell(t, 7, &idx, gauge(lag_ms));
                let percent = match &p.resync {
                    Some(r) if r.total_bytes > 0 => {
                        (u128::from(r.done_bytes) * 100 / u128::from(r.total_bytes)).min(100) as u64
                    }
                    _ => 100,
                };
                self.cell(t, 8, &idx, gauge(percent));
                if let Some(eta) = p.resync.as_ref().and_then(|r| r.eta_seconds) {
                    self.cell(t, 9, &idx, gauge(eta.ceil().max(0.0) as u64));
                }
                self.cell(t, 10, &idx, counter64(p.resynced_bytes));
                self.cell(t, 11, &idx, counter64(p.replicated_bytes));
            }
        }
    }

    /// GET of one name (RFC 3416 4.2.1).
    pub fn get(&self, name: &[u32]) -> VarBindValue {
        if let Some(v) = self.values.get(name) {
            return VarBindValue::Value(v.clone());
        }
        // The object type is a prefix of (or equal to) the name: a missing instance.
        let known = self
            .object_types
            .range::<[u32], _>((Bound::Unbounded, Bound::Included(name)))
            .next_back()
            .is_some_and(|t| name.starts_with(t));
        if known {
            VarBindValue::NoSuchInstance
        } else {
            VarBindValue::NoSuchObject
        }
    }

    /// The first instance after `name` (RFC 3416 4.2.2), or None at the end of the view.
    pub fn next_after(&self, name: &[u32]) -> Option<(&[u32], &ObjectSyntax)> {
        self.values
            .range::<[u32], _>((Bound::Excluded(name), Bound::Unbounded))
            .next()
            .map(|(k, v)| (k.as_slice(), v))
    }

    fn next_binding(&self, name: &[u32]) -> VarBind {
        match self.next_after(name) {
            Some((k, v)) => VarBind {
                name: oid(k),
                value: VarBindValue::Value(v.clone()),
            },
            None => VarBind {
                name: oid(name),
                value: VarBindValue::EndOfMibView,
            },
        }
    }

    /// GET of every name; `budget` is the most bytes the encoded bindings may take.
    pub fn get_all(
        &self,
        names: &[Vec<u32>],
        budget: usize,
    ) -> Result<Vec<VarBind>, ResponseTooBig> {
        let bindings = names
            .iter()
            .map(|n| VarBind {
                name: oid(n),
                value: self.get(n),
            })
            .collect();
        fit_all(bindings, budget)
    }

    /// GETNEXT of every name (RFC 3416 4.2.2).
    pub fn get_next(
        &self,
        names: &[Vec<u32>],
        budget: usize,
    ) -> Result<Vec<VarBind>, ResponseTooBig> {
        let bindings = names.iter().map(|n| self.next_binding(n)).collect();
        fit_all(bindings, budget)
    }

    /// GETBULK (RFC 3416 4.2.3): the first `non_repeaters` names once, the rest
    /// `max_repetitions` times, stopping after a row that is all `endOfMibView` and
    /// truncating at the end to fit `budget`.
    pub fn get_bulk(
        &self,
        names: &[Vec<u32>],
        non_repeaters: u32,
        max_repetitions: u32,
        budget: usize,
    ) -> Vec<VarBind> {
        let n = (non_repeaters as usize).min(names.len());
        let mut out = Vec::new();
        let mut used = 0;
        let mut push = |vb: VarBind, out: &mut Vec<VarBind>| -> bool {
            let size = encoded_len(&vb);
            if used + size > budget {
                return false;
            }
            used += size;
            out.push(vb);
            true
        };
        for name in &names[..n] {
            if !push(self.next_binding(name), &mut out) {
                return out;
            }
        }
        let mut cursors: Vec<Vec<u32>> = names[n..].to_vec();
        if cursors.is_empty() {
            return out;
        }
        for _ in 0..max_repetitions {
            let mut all_end = true;
            for cursor in cursors.iter_mut() {
                let vb = match self.next_after(cursor) {
                    Some((k, v)) => {
                        all_end = false;
                        *cursor = k.to_vec();
                        VarBind {
                            name: oid(k),
                            value: VarBindValue::Value(v.clone()),
                        }
                    }
                    None => VarBind {
                        name: oid(cursor),
                        value: VarBindValue::EndOfMibView,
                    },
                };
                if !push(vb, &mut out) {
                    return out;
                }
            }
            if all_end {
                break;
            }
        }
        out
    }
}

/// Bytes of one encoded binding.
pub fn encoded_len(vb: &VarBind) -> usize {
    rasn::ber::encode(vb).map_or(usize::MAX / 2, |b| b.len())
}

fn fit_all(bindings: Vec<VarBind>, budget: usize) -> Result<Vec<VarBind>, ResponseTooBig> {
    let total: usize = bindings.iter().map(encoded_len).sum();
    if total > budget {
        Err(ResponseTooBig)
    } else {
        Ok(bindings)
    }
}

/// The objects a notification carries after the event seq and time, in the order of
/// its OBJECTS clause in the MIB.
#[derive(Debug, Clone, Copy)]
enum NotificationObject {
    Reason,
    Duration,
    Peer,
    Group,
    Resource,
    Path,
    Mirror,
    Bytes,
    Direction,
    Full,
    Generation,
    Device,
    Step,
    User,
    Role,
    Action,
    Target,
    Outcome,
}

impl NotificationObject {
    /// Arc under `tandemNotificationObjects` (1 and 2 are the event seq and time).
    fn arc(self) -> u32 {
        match self {
            NotificationObject::Reason => 3,
            NotificationObject::Duration => 4,
            NotificationObject::Peer => 5,
            NotificationObject::Group => 6,
            NotificationObject::Resource => 7,
            NotificationObject::Path => 8,
            NotificationObject::Mirror => 9,
            NotificationObject::Bytes => 10,
            NotificationObject::Direction => 11,
            NotificationObject::Full => 12,
            NotificationObject::Generation => 13,
            NotificationObject::Device => 14,
            NotificationObject::Step => 15,
            NotificationObject::User => 16,
            NotificationObject::Role => 17,
            NotificationObject::Action => 18,
            NotificationObject::Target => 19,
            NotificationObject::Outcome => 20,
        }
    }

    fn value(self, event: &Event) -> ObjectSyntax {
        let field = |k: &str| event.fields.get(k).map(String::as_str).unwrap_or("");
        match self {
            NotificationObject::Reason => text(field("reason")),
            NotificationObject::Duration => gauge(field("duration_ms").parse().unwrap_or(0)),
            NotificationObject::Peer => {
                let peer = event
                    .fields
                    .get("peer")
                    .or_else(|| event.fields.get("from_node"));
                text(peer.map(String::as_str).unwrap_or(""))
            }
            NotificationObject::Group => text(field("group")),
            NotificationObject::Resource => text(field("resource")),
            NotificationObject::Path => text(field("path")),
            NotificationObject::Mirror => text(field("mirror")),
            NotificationObject::Bytes => counter64(field("bytes").parse().unwrap_or(0)),
            NotificationObject::Direction => text_max(field("direction"), 16),
            NotificationObject::Full => truth(field("full") == "true"),
            NotificationObject::Generation => text_max(field("generation"), 16),
            NotificationObject::Device => text_max(field("device"), 255),
            NotificationObject::User => text_max(field("user"), 255),
            NotificationObject::Role => text_max(field("role"), 16),
            NotificationObject::Action => text_max(field("action"), 255),
            NotificationObject::Target => text_max(field("target"), 255),
            NotificationObject::Outcome => text_max(field("outcome"), 16),
            // The event names its step by `FastStopStep::name`; 0 (no value of the TC)
            // only for an event that lacks it, which the policy never emits.
            NotificationObject::Step => integer(
                FastStopStep::ALL
                    .into_iter()
                    .find(|s| s.name() == field("step"))
                    .map_or(0, fast_stop_step),
            ),
        }
    }
}

/// The notification (arc under `tandemNotifications`) reporting an event kind and the
/// objects it carries; None for kinds that have no notification.
fn notification_spec(kind: EventKind) -> Option<(u32, &'static [NotificationObject])> {
    use NotificationObject::*;
    Some(match kind {
        EventKind::FailoverStarted => (1, &[Group, Peer, Resource, Reason]),
        EventKind::FailoverCompleted => (2, &[Group, Peer, Reason, Duration]),
        EventKind::FailoverFailed => (3, &[Group, Peer, Reason]),
        EventKind::SwitchoverCompleted => (4, &[Group, Peer, Duration]),
        EventKind::NodeDown => (5, &[Peer]),
        EventKind::NodeUp => (6, &[Peer]),
        EventKind::PathDown => (7, &[Peer, Path]),
        EventKind::PathUp => (8, &[Peer, Path]),
        EventKind::ResourceRestarted => (9, &[Group, Resource]),
        EventKind::GroupFailed => (10, &[Group, Reason]),
        EventKind::SplitBrainSuspected => (15, &[Group, Reason]),
        EventKind::DaemonStarted => (16, &[]),
        EventKind::DaemonStopping => (17, &[]),
        EventKind::ResyncStarted => (11, &[Mirror, Peer, Direction, Full, Bytes]),
        EventKind::ResyncCompleted => (12, &[Mirror, Peer, Direction, Bytes, Duration]),
        EventKind::MirrorDisconnected => (13, &[Mirror, Peer, Reason]),
        EventKind::MirrorConnected => (14, &[Mirror, Peer]),
        EventKind::ResyncFailed => (18, &[Mirror, Peer, Reason]),
        EventKind::MirrorSplitBrain => (19, &[Mirror, Peer, Reason]),
        EventKind::MirrorPromotionRefused => (20, &[Mirror, Reason]),
        EventKind::MirrorPeerOutdated => (21, &[Mirror, Peer]),
        EventKind::VerifyCompleted => (22, &[Mirror, Peer, Bytes]),
        EventKind::MirrorPromoted => (23, &[Mirror, Generation]),
        EventKind::MirrorDemoted => (24, &[Mirror]),
        EventKind::QuorumLost => (25, &[Reason]),
        EventKind::QuorumGained => (26, &[Reason]),
        EventKind::OwnershipCommitted => (27, &[Group, Peer]),
        EventKind::FenceSucceeded => (28, &[Peer, Duration]),
        EventKind::FenceFailed => (29, &[Peer, Reason]),
        EventKind::WatchdogUnavailable => (30, &[Device, Reason]),
        EventKind::WatchdogAvailable => (31, &[Device]),
        EventKind::FastStopFailed => (32, &[Group, Resource, Step, Reason]),
        EventKind::MirrorIoSuspended => (33, &[Mirror]),
        EventKind::MirrorIoResumed => (34, &[Mirror]),
        EventKind::GroupSuspended => (35, &[Group, Reason]),
        EventKind::GroupResumed => (36, &[Group]),
        EventKind::ImageUpdateFinished => (37, &[Bytes]),
        EventKind::ImageUpdateFailed => (38, &[Reason]),
        EventKind::ConfigMismatch => (39, &[Peer]),
        EventKind::ConfigAgreed => (40, &[Peer]),
        EventKind::Audit => (41, &[User, Role, Action, Target, Outcome, Reason]),
        EventKind::RecoveryPoint => (42, &[Mirror, Peer, Bytes, Duration]),
        _ => return None,
    })
}

/// The notification that reports `event`, if its kind has one: `snmpTrapOID.0` and the
/// varbinds (event seq, event time, then the identifying objects).
pub fn notification_for(event: &Event) -> Option<Notification> {
    let (arc, objects) = notification_spec(event.kind)?;
    let object = |arc: u32| oid(&tandem_oid(&[OBJECTS, NOTIFICATION_OBJECTS, arc, 0]));
    let mut varbinds = vec![
        VarBind {
            name: object(1),
            value: VarBindValue::Value(counter64(event.seq)),
        },
        VarBind {
            name: object(2),
            value: VarBindValue::Value(octets(&date_and_time(event.time_ms))),
        },
    ];
    for o in objects {
        varbinds.push(VarBind {
            name: object(o.arc()),
            value: VarBindValue::Value(o.value(event)),
        });
    }
    Some(Notification {
        trap_oid: tandem_oid(&[NOTIFICATIONS, arc]),
        varbinds,
        seq: event.seq,
    })
}

/// SNMPv2-TC `DateAndTime` in UTC (11 octets) of milliseconds since the Unix epoch.
pub fn date_and_time(unix_ms: u64) -> [u8; 11] {
    let t = crate::utc::UtcTime::from_unix_ms(unix_ms);
    let year = t.year as u16;
    let [y_hi, y_lo] = year.to_be_bytes();
    [
        y_hi,
        y_lo,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        (t.millis / 100) as u8,
        b'+',
        0,
        0,
    ]
}

#[cfg(test)]
mod tests;
