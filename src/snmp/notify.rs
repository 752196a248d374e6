//! Traps and informs to the configured receivers.
//!
//! [`ReceiverQueue`] is the pure core, one per receiver: bounded (the oldest entry is
//! dropped and counted when full), strictly ordered (one inform in flight; the next
//! goes only after the acknowledgement), retransmitting with exponential backoff from
//! `timeout` to `max_timeout`, forever. Traps go through the same queue, in order,
//! without waiting for anything.
//!
//! [`spawn_notifier`] is the I/O: one task reads the event stream and maps events to
//! [`Notification`]s; one task per receiver owns a UDP socket and its queue. A v3
//! inform first discovers the receiver's engine (RFC 3414 §4) and localizes the keys
//! to it; a Report from the receiver (unknown engine ID after a reinstall, not in time
//! window after a reboot) updates what we know and the inform goes again at once.
//!
//! Events are never lost between the log and the queues: a notifier that falls behind
//! the broadcast channel re-reads what it missed from the [`EventLog`]
//! ([`NotifierHandle::lost_events`] counts only events that had already left the log's
//! in-memory window, which takes a stall of the daemon itself).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rasn::types::ObjectIdentifier;
use rasn_smi::v1::TimeTicks;
use rasn_smi::v2::{ApplicationSyntax, ObjectSyntax, SimpleSyntax};
use rasn_snmp::v2::{InformRequest, Pdu, Pdus, Trap, VarBind, VarBindValue};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use super::usm::{
    decode_reply, discovery_probe, encode_message, report_counter, EngineParams, LocalizedUser,
    OutgoingMessage, SecurityLevel, UsmUser, USM_STATS_UNKNOWN_ENGINE_IDS,
};
use super::{Notification, SnmpError};
use crate::config::{ReceiverConfig, ReceiverForm, SnmpConfig, UsmUserConfig};
use crate::event::{Event, EventLog};

/// sysUpTime.0
pub const SYS_UP_TIME: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 3, 0];
/// snmpTrapOID.0
pub const SNMP_TRAP_OID: &[u32] = &[1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0];

/// Per-receiver counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverCounters {
    /// Notifications transmitted for the first time.
    pub sent: u64,
    /// Informs the receiver acknowledged.
    pub acked: u64,
    /// Inform retransmissions.
    pub retried: u64,
    /// Notifications dropped unsent or unacknowledged because the queue was full.
    pub dropped: u64,
}

/// What a [`ReceiverQueue`] wants done next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueAction<T> {
    /// Transmit this entry (again, if `retransmission`).
    Send { item: T, retransmission: bool },
    /// Nothing until this instant (an inform is in flight), or until an ack or a push.
    WaitUntil(Instant),
    /// The queue is empty.
    Idle,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    deadline: Instant,
    backoff: Duration,
}

/// The pure per-receiver queue (see the module docs).
#[derive(Debug)]
pub struct ReceiverQueue<T> {
    capacity: usize,
    /// Informs wait for an acknowledgement; traps do not.
    confirmed: bool,
    timeout: Duration,
    max_timeout: Duration,
    /// Oldest first; while `in_flight` is set the front is the inform in flight.
    pending: VecDeque<T>,
    in_flight: Option<InFlight>,
    counters: ReceiverCounters,
}

impl<T: Clone> ReceiverQueue<T> {
    pub fn new(
        capacity: usize,
        confirmed: bool,
        timeout: Duration,
        max_timeout: Duration,
    ) -> ReceiverQueue<T> {
        ReceiverQueue {
            capacity: capacity.max(1),
            confirmed,
            timeout,
            max_timeout: max_timeout.max(timeout),
            pending: VecDeque::new(),
            in_flight: None,
            counters: ReceiverCounters::default(),
        }
    }

    /// Queues an entry; when full, the oldest one (even the one in flight) is dropped.
    pub fn push(&mut self, item: T) {
        if self.pending.len() >= self.capacity {
            self.pending.pop_front();
            self.in_flight = None;
            self.counters.dropped += 1;
        }
        self.pending.push_back(item);
    }

    /// The next thing to do at `now`. Call until it is not `Send`.
    pub fn poll(&mut self, now: Instant) -> QueueAction<T> {
        if !self.confirmed {
            return match self.pending.pop_front() {
                Some(item) => {
                    self.counters.sent += 1;
                    QueueAction::Send {
                        item,
                        retransmission: false,
                    }
                }
                None => QueueAction::Idle,
            };
        }
        let Some(front) = self.pending.front() else {
            return QueueAction::Idle;
        };
        match &mut self.in_flight {
            None => {
                self.in_flight = Some(InFlight {
                    deadline: now + self.timeout,
                    backoff: self.timeout,
                });
                self.counters.sent += 1;
                QueueAction::Send {
                    item: front.clone(),
                    retransmission: false,
                }
            }
            Some(f) if now >= f.deadline => {
                f.backoff = (f.backoff * 2).min(self.max_timeout);
                f.deadline = now + f.backoff;
                self.counters.retried += 1;
                QueueAction::Send {
                    item: front.clone(),
                    retransmission: true,
                }
            }
            Some(f) => QueueAction::WaitUntil(f.deadline),
        }
    }

    /// The receiver acknowledged the inform in flight; returns it.
    pub fn ack(&mut self) -> Option<T> {
        self.in_flight.take()?;
        self.counters.acked += 1;
        self.pending.pop_front()
    }

    /// The inform in flight, if any.
    pub fn in_flight(&self) -> Option<&T> {
        self.in_flight.and(self.pending.front())
    }

    /// Entries waiting or in flight.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn counters(&self) -> ReceiverCounters {
        self.counters
    }
}

// ---------------------------------------------------------------------------------
// PDUs

fn oid(arcs: &[u32]) -> ObjectIdentifier {
    ObjectIdentifier::new_unchecked(arcs.to_vec().into())
}

/// A notification with the sysUpTime.0 it was raised at.
#[derive(Debug, Clone)]
struct Raised {
    uptime: TimeTicks,
    notification: Notification,
}

/// sysUpTime.0, snmpTrapOID.0, then the notification's own varbinds (RFC 3416 §4.2.6).
fn notification_varbinds(r: &Raised) -> Vec<VarBind> {
    let mut v = vec![
        VarBind {
            name: oid(SYS_UP_TIME),
            value: VarBindValue::Value(ObjectSyntax::ApplicationWide(ApplicationSyntax::Ticks(
                r.uptime,
            ))),
        },
        VarBind {
            name: oid(SNMP_TRAP_OID),
            value: VarBindValue::Value(ObjectSyntax::Simple(SimpleSyntax::ObjectId(oid(&r
                .notification
                .trap_oid)))),
        },
    ];
    v.extend(r.notification.varbinds.iter().cloned());
    v
}

fn notification_pdu(r: &Raised, request_id: i32, confirmed: bool) -> Pdus {
    let pdu = Pdu {
        request_id,
        error_status: 0,
        error_index: 0,
        variable_bindings: notification_varbinds(r),
    };
    if confirmed {
        Pdus::InformRequest(InformRequest(pdu))
    } else {
        Pdus::Trap(Trap(pdu))
    }
}

fn uptime_ticks(since: Instant, now: Instant) -> TimeTicks {
    let centis = now.saturating_duration_since(since).as_millis() / 10;
    TimeTicks((centis % (1u128 << 32)) as u32)
}

// ---------------------------------------------------------------------------------
// Per-form encoding and replies

/// What we know of a v3 inform receiver's engine.
struct RemoteEngine {
    params: EngineParams,
    learned_at: Instant,
    keys: LocalizedUser,
}

impl RemoteEngine {
    fn at(&self, now: Instant) -> EngineParams {
        let elapsed = now.saturating_duration_since(self.learned_at).as_secs() as u32;
        EngineParams {
            engine_id: self.params.engine_id.clone(),
            boots: self.params.boots,
            time: self.params.time.saturating_add(elapsed),
        }
    }
}

enum Form {
    V2c {
        community: Vec<u8>,
    },
    V3Trap {
        keys: LocalizedUser,
    },
    V3Inform {
        user: UsmUser,
        engine: Option<RemoteEngine>,
    },
}

/// One receiver's protocol state: ids, keys, the receiver's engine.
struct Link {
    form: Form,
    confirmed: bool,
    our_engine_id: Vec<u8>,
    our_boots: u32,
    uptime_start: Instant,
    /// request-id of the notification in flight; msgIDs of v3 messages.
    request_id: i32,
    msg_id: i32,
    salt: u64,
}

fn next_id(id: &mut i32) -> i32 {
    *id = if *id >= i32::MAX - 1 { 1 } else { *id + 1 };
    *id
}

impl Link {
    /// Bytes for one transmission of `r`: the notification, or a discovery probe while
    /// a v3 inform receiver's engine is unknown.
    fn encode(&mut self, r: &Raised, now: Instant) -> Result<Vec<u8>, SnmpError> {
        let pdu = notification_pdu(r, self.request_id, self.confirmed);
        let msg_id = next_id(&mut self.msg_id);
        self.salt = self.salt.wrapping_add(1);
        match &self.form {
            Form::V2c { community } => {
                let msg = rasn_snmp::v2c::Message {
                    version: 1.into(),
                    community: community.clone().into(),
                    data: pdu,
                };
                rasn::ber::encode(&msg).map_err(|e| SnmpError::Encode(e.to_string()))
            }
            Form::V3Trap { keys } => {
                let secs = now.saturating_duration_since(self.uptime_start).as_secs();
                encode_message(OutgoingMessage {
                    msg_id,
                    level: SecurityLevel::AuthPriv,
                    reportable: false,
                    engine: &EngineParams {
                        engine_id: self.our_engine_id.clone(),
                        boots: self.our_boots,
                        time: secs.min(i32::MAX as u64) as u32,
                    },
                    user_name: keys.name(),
                    keys: Some(keys),
                    context_engine_id: &self.our_engine_id,
                    context_name: b"",
                    pdu,
                    salt: self.salt,
                })
            }
            Form::V3Inform { engine: None, .. } => discovery_probe(msg_id, self.request_id),
            Form::V3Inform {
                engine: Some(e),
                user,
            } => encode_message(OutgoingMessage {
                msg_id,
                level: SecurityLevel::AuthPriv,
                reportable: true,
                engine: &e.at(now),
                user_name: user.name(),
                keys: Some(&e.keys),
                context_engine_id: &self.our_engine_id,
                context_name: b"",
                pdu,
                salt: self.salt,
            }),
        }
    }

    /// Handles a datagram from the receiver.
    fn on_reply(&mut self, datagram: &[u8], now: Instant) -> Reaction {
        match &mut self.form {
            Form::V2c { .. } => {
                match rasn::ber::decode::<rasn_snmp::v2c::Message<Pdus>>(datagram) {
                    Ok(m) if is_response_to(&m.data, self.request_id) => Reaction::Acked,
                    _ => Reaction::Ignore,
                }
            }
            Form::V3Trap { .. } => Reaction::Ignore,
            Form::V3Inform { user, engine } => {
                let keys = engine.as_ref().map(|e| &e.keys);
                let reply = match decode_reply(datagram, keys) {
                    Ok(r) => r,
                    Err(why) => {
                        tracing::debug!(why, "snmp inform: unreadable reply");
                        return Reaction::Ignore;
                    }
                };
                match &reply.pdu {
                    Some(pdu) if reply.authenticated && is_response_to(pdu, self.request_id) => {
                        Reaction::Acked
                    }
                    Some(pdu @ Pdus::Report(_)) => {
                        let counter = report_counter(pdu).map(|(o, _)| o).unwrap_or_default();
                        let known = engine.as_ref().map(|e| &e.params);
                        // Trust boots and time from an authenticated report (notInTimeWindow);
                        // an unauthenticated one may only teach an engine ID we lack or
                        // that changed (discovery, reinstalled receiver).
                        let adopt = reply.authenticated
                            || (counter == USM_STATS_UNKNOWN_ENGINE_IDS
                                && !reply.engine.engine_id.is_empty()
                                && known.map(|k| k.engine_id != reply.engine.engine_id)
                                    != Some(false));
                        if !adopt || known == Some(&reply.engine) {
                            tracing::warn!(report = ?counter, "snmp inform: receiver reported an error");
                            return Reaction::Ignore;
                        }
                        let keys = match engine {
                            Some(e) if e.params.engine_id == reply.engine.engine_id => {
                                e.keys.clone()
                            }
                            _ => user.localize(&reply.engine.engine_id),
                        };
                        tracing::info!(
                            boots = reply.engine.boots,
                            time = reply.engine.time,
                            "snmp inform: learned the receiver's engine"
                        );
                        *engine = Some(RemoteEngine {
                            params: reply.engine,
                            learned_at: now,
                            keys,
                        });
                        Reaction::SendAgain
                    }
                    _ => Reaction::Ignore,
                }
            }
        }
    }
}

fn is_response_to(pdu: &Pdus, request_id: i32) -> bool {
    matches!(pdu, Pdus::Response(r) if r.0.request_id == request_id)
}

enum Reaction {
    Acked,
    /// Our knowledge of the receiver's engine changed: transmit the inform now.
    SendAgain,
    Ignore,
}

// ---------------------------------------------------------------------------------
// Tasks

/// A receiver's counters and queue length, as the handle reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverStatus {
    pub address: SocketAddr,
    pub form: ReceiverForm,
    pub counters: ReceiverCounters,
    /// Notifications waiting or in flight.
    pub queued: usize,
}

/// One running receiver: what it was configured with (its entry and its v3 user), its
/// queue's inbox, its status and its task.
struct Slot {
    cfg: ReceiverConfig,
    user: Option<UsmUserConfig>,
    inbox: mpsc::UnboundedSender<Raised>,
    status: Arc<Mutex<ReceiverStatus>>,
    task: JoinHandle<()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The running receivers, in configuration order; a reload changes them in place.
type Slots = Arc<Mutex<Vec<Slot>>>;

fn lock_slots(slots: &Slots) -> std::sync::MutexGuard<'_, Vec<Slot>> {
    slots.lock().unwrap_or_else(|p| p.into_inner())
}

/// A live view of every receiver's status (for the metrics endpoint).
#[derive(Clone)]
pub struct ReceiverStatuses(Slots);

impl ReceiverStatuses {
    /// Each receiver's status, in configuration order.
    pub fn snapshot(&self) -> Vec<ReceiverStatus> {
        lock_slots(&self.0)
            .iter()
            .map(|s| s.status.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect()
    }
}

/// What every receiver's link is built from: our engine and the uptime origin.
#[derive(Clone)]
struct LinkSetup {
    engine_id: Vec<u8>,
    engine_boots: u32,
    uptime_start: Instant,
}

/// What becomes of one configured receiver when the configuration is (re)applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReceiverStep {
    /// The running slot at this index has the same entry and user: it keeps its task
    /// and its queue.
    Keep(usize),
    /// New or changed: starts afresh.
    Start,
}

/// Pure: one step per wanted receiver, in order. A running slot is kept at most once;
/// every running slot that no step keeps stops.
fn receiver_steps<K: PartialEq>(running: &[K], wanted: &[K]) -> Vec<ReceiverStep> {
    let mut taken = vec![false; running.len()];
    wanted
        .iter()
        .map(
            |w| match (0..running.len()).find(|&i| !taken[i] && running[i] == *w) {
                Some(i) => {
                    taken[i] = true;
                    ReceiverStep::Keep(i)
                }
                None => ReceiverStep::Start,
            },
        )
        .collect()
}

/// The receivers `cfg` asks for, carried out from [`receiver_steps`]: a receiver whose
/// entry and user are unchanged keeps its task and its queue (nothing queued for it is
/// lost); a new or changed one starts afresh; one no longer configured stops. A
/// receiver whose user cannot be set up is logged and skipped.
fn reconcile_receivers(slots: &Slots, cfg: &SnmpConfig, setup: &LinkSetup) {
    let old: Vec<Slot> = std::mem::take(&mut *lock_slots(slots));
    let wanted: Vec<(&ReceiverConfig, Option<&UsmUserConfig>)> = cfg
        .receivers
        .iter()
        .map(|r| {
            let user = r
                .user
                .as_ref()
                .and_then(|n| cfg.users.iter().find(|u| &u.name == n));
            (r, user)
        })
        .collect();
    let running: Vec<_> = old.iter().map(|s| (&s.cfg, s.user.as_ref())).collect();
    let steps = receiver_steps(&running, &wanted);
    let mut old: Vec<Option<Slot>> = old.into_iter().map(Some).collect();
    let mut next = Vec::new();
    for ((rcfg, user), step) in wanted.into_iter().zip(steps) {
        match step {
            ReceiverStep::Keep(i) => next.extend(old[i].take()),
            ReceiverStep::Start => next.extend(start_receiver(cfg, rcfg, user, setup)),
        }
    }
    *lock_slots(slots) = next;
    drop(old); // stops the receivers no longer configured
}

/// A new receiver's task, or `None` (logged) if its user cannot be set up.
fn start_receiver(
    cfg: &SnmpConfig,
    rcfg: &ReceiverConfig,
    user: Option<&UsmUserConfig>,
    setup: &LinkSetup,
) -> Option<Slot> {
    let link = match link_for(
        cfg,
        rcfg,
        &setup.engine_id,
        setup.engine_boots,
        setup.uptime_start,
    ) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(receiver = %rcfg.address, error = %e, "snmp receiver skipped");
            return None;
        }
    };
    let status = Arc::new(Mutex::new(ReceiverStatus {
        address: rcfg.address,
        form: rcfg.form,
        counters: ReceiverCounters::default(),
        queued: 0,
    }));
    let (inbox, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_receiver(rcfg.clone(), link, rx, status.clone()));
    Some(Slot {
        cfg: rcfg.clone(),
        user: user.cloned(),
        inbox,
        status,
        task,
    })
}

/// The running notifier. Dropping it stops the tasks.
pub struct NotifierHandle {
    receivers: ReceiverStatuses,
    setup: LinkSetup,
    lost_events: Arc<AtomicU64>,
    /// The newest event the dispatcher has handed to the receivers.
    dispatched: Arc<AtomicU64>,
    log: EventLog,
    tasks: Vec<JoinHandle<()>>,
}

impl NotifierHandle {
    /// Each receiver's status, in configuration order.
    pub fn receivers(&self) -> Vec<ReceiverStatus> {
        self.receivers.snapshot()
    }

    /// A live view of the receivers' status that outlives no task.
    pub fn statuses(&self) -> ReceiverStatuses {
        self.receivers.clone()
    }

    /// Waits (at most `limit`) until every event logged so far has been mapped and
    /// every receiver's queue is empty: for a clean shutdown.
    pub async fn drain(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        let target = self.log.last_seq();
        // Let the receivers take what the dispatcher handed them into their queues.
        tokio::time::sleep(Duration::from_millis(20)).await;
        while Instant::now() < deadline {
            let dispatched = self.dispatched.load(Ordering::Relaxed) >= target;
            if dispatched && self.receivers().iter().all(|r| r.queued == 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Events missed because the notifier lagged behind the event broadcast.
    pub fn lost_events(&self) -> u64 {
        self.lost_events.load(Ordering::Relaxed)
    }

    /// A reloaded configuration: send to the receivers it names from the next
    /// notification on (see [`reconcile_receivers`]).
    pub fn reconfigure(&self, cfg: &SnmpConfig) {
        reconcile_receivers(&self.receivers.0, cfg, &self.setup);
    }

    /// Follows the daemon's running configuration (`SIGHUP`, `tandem config reload`):
    /// each reload's `[snmp]` receivers are taken at once.
    pub fn follow(&mut self, mut running: watch::Receiver<Arc<crate::config::Config>>) {
        let (slots, setup) = (self.receivers.0.clone(), self.setup.clone());
        self.tasks.push(tokio::spawn(async move {
            while running.changed().await.is_ok() {
                let cfg = running.borrow_and_update().clone();
                if let Some(snmp) = &cfg.snmp {
                    reconcile_receivers(&slots, snmp, &setup);
                }
            }
        }));
    }
}

impl Drop for NotifierHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        lock_slots(&self.receivers.0).clear();
    }
}

/// Maps events to notifications (the MIB's mapping is supplied by the caller).
pub type EventMapper = Box<dyn Fn(&Event) -> Option<Notification> + Send + Sync>;

/// Starts the notifier: one task reading `events`, one per configured receiver. v3
/// traps carry our engine (`engine_id`, `engine_boots`, time since `uptime_start`);
/// sysUpTime.0 counts from `uptime_start` too. Must be called within a tokio runtime.
/// A receiver whose user cannot be set up is logged and skipped.
pub fn spawn_notifier(
    cfg: &SnmpConfig,
    engine_id: Vec<u8>,
    engine_boots: u32,
    events: EventLog,
    map: EventMapper,
    uptime_start: Instant,
) -> NotifierHandle {
    let lost_events = Arc::new(AtomicU64::new(0));
    let setup = LinkSetup {
        engine_id,
        engine_boots,
        uptime_start,
    };
    let slots: Slots = Arc::new(Mutex::new(Vec::new()));
    reconcile_receivers(&slots, cfg, &setup);
    // The position in the stream is taken now, not when the task first runs, so no
    // event raised after this call is skipped.
    let last = events.last_seq();
    let subscription = events.subscribe();
    let dispatched = Arc::new(AtomicU64::new(last));
    let tasks = vec![tokio::spawn(dispatch(
        events.clone(),
        StreamPosition { subscription, last },
        dispatched.clone(),
        map,
        slots.clone(),
        uptime_start,
        lost_events.clone(),
    ))];
    NotifierHandle {
        receivers: ReceiverStatuses(slots),
        setup,
        lost_events,
        dispatched,
        log: events,
        tasks,
    }
}

fn link_for(
    cfg: &SnmpConfig,
    rcfg: &ReceiverConfig,
    engine_id: &[u8],
    engine_boots: u32,
    uptime_start: Instant,
) -> Result<Link, SnmpError> {
    let user = || {
        let name = rcfg.user.as_deref().unwrap_or("");
        let u = cfg
            .users
            .iter()
            .find(|u| u.name == name)
            .ok_or_else(|| SnmpError::Config(format!("no snmp user {name:?}")))?;
        let user = UsmUser::from_config(u)?;
        if user.level() != SecurityLevel::AuthPriv {
            return Err(SnmpError::Config(format!(
                "snmp user {name:?} lacks auth or privacy"
            )));
        }
        Ok(user)
    };
    let form = match rcfg.form {
        ReceiverForm::V2cTrap | ReceiverForm::V2cInform => Form::V2c {
            community: rcfg.community.clone().unwrap_or_default().into_bytes(),
        },
        ReceiverForm::V3Trap => Form::V3Trap {
            keys: user()?.localize(engine_id),
        },
        ReceiverForm::V3Inform => Form::V3Inform {
            user: user()?,
            engine: None,
        },
    };
    Ok(Link {
        form,
        confirmed: matches!(rcfg.form, ReceiverForm::V2cInform | ReceiverForm::V3Inform),
        our_engine_id: engine_id.to_vec(),
        our_boots: engine_boots,
        uptime_start,
        request_id: rand::random::<i32>().unsigned_abs() as i32 % 1_000_000_000,
        msg_id: rand::random::<i32>().unsigned_abs() as i32 % 1_000_000_000,
        salt: rand::random(),
    })
}

/// Where the dispatcher starts reading: the live feed and the newest event already
/// handled (taken together, before the task runs).
struct StreamPosition {
    subscription: broadcast::Receiver<Event>,
    last: u64,
}

/// Reads the event stream (from the newest event on), maps each event once, in
/// sequence order, and hands it to every receiver. Falling behind the broadcast re-reads
/// the missed events from the log.
async fn dispatch(
    log: EventLog,
    position: StreamPosition,
    dispatched: Arc<AtomicU64>,
    map: EventMapper,
    slots: Slots,
    uptime_start: Instant,
    lost_events: Arc<AtomicU64>,
) {
    let StreamPosition {
        subscription: mut events,
        mut last,
    } = position;
    let raise = |event: &Event| {
        let Some(notification) = map(event) else {
            return;
        };
        let raised = Raised {
            uptime: uptime_ticks(uptime_start, Instant::now()),
            notification,
        };
        for slot in lock_slots(&slots).iter() {
            let _ = slot.inbox.send(raised.clone());
        }
    };
    // Re-reads everything after `last` from the log (sequence numbers are contiguous
    // within one run of the daemon).
    let catch_up = |last: &mut u64| {
        let missed = log.since(*last, usize::MAX);
        let gap = missed
            .first()
            .map_or(0, |e| e.seq.saturating_sub(*last + 1));
        if gap > 0 {
            lost_events.fetch_add(gap, Ordering::Relaxed);
            tracing::warn!(lost = gap, "snmp notifier fell behind the event log window");
        }
        for e in missed {
            *last = e.seq;
            raise(&e);
        }
        dispatched.store(*last, Ordering::Relaxed);
    };
    loop {
        match events.recv().await {
            Ok(e) if e.seq == last + 1 => {
                last = e.seq;
                raise(&e);
                dispatched.store(last, Ordering::Relaxed);
            }
            Ok(e) if e.seq > last + 1 => catch_up(&mut last),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => catch_up(&mut last),
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn run_receiver(
    rcfg: ReceiverConfig,
    mut link: Link,
    mut inbox: mpsc::UnboundedReceiver<Raised>,
    status: Arc<Mutex<ReceiverStatus>>,
) {
    let bind: SocketAddr = if rcfg.address.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(receiver = %rcfg.address, error = %e, "snmp notifier cannot bind");
            return;
        }
    };
    let mut queue: ReceiverQueue<Raised> =
        ReceiverQueue::new(rcfg.queue, link.confirmed, rcfg.timeout, rcfg.max_timeout);
    let mut buf = vec![0u8; 65_535];
    let mut inbox_open = true;
    loop {
        let deadline = loop {
            let now = Instant::now();
            match queue.poll(now) {
                QueueAction::Send {
                    item,
                    retransmission,
                } => {
                    if !retransmission {
                        next_id(&mut link.request_id);
                    }
                    transmit(&socket, &mut link, &rcfg, &item, now).await;
                }
                QueueAction::WaitUntil(t) => break Some(t),
                QueueAction::Idle => break None,
            }
        };
        {
            let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
            s.counters = queue.counters();
            s.queued = queue.len();
        }
        if !inbox_open && queue.is_empty() {
            return;
        }
        let sleep = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            raised = inbox.recv(), if inbox_open => match raised {
                Some(r) => queue.push(r),
                None => inbox_open = false,
            },
            got = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = got else { continue };
                if from != rcfg.address || !link.confirmed {
                    continue;
                }
                let now = Instant::now();
                match link.on_reply(&buf[..n], now) {
                    Reaction::Acked => {
                        if let Some(r) = queue.ack() {
                            tracing::debug!(receiver = %rcfg.address, seq = r.notification.seq, "snmp inform acknowledged");
                        }
                    }
                    Reaction::SendAgain => {
                        if let Some(r) = queue.in_flight().cloned() {
                            transmit(&socket, &mut link, &rcfg, &r, now).await;
                        }
                    }
                    Reaction::Ignore => {}
                }
            }
            () = sleep => {}
        }
    }
}

async fn transmit(
    socket: &UdpSocket,
    link: &mut Link,
    rcfg: &ReceiverConfig,
    r: &Raised,
    now: Instant,
) {
    let bytes = match link.encode(r, now) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(receiver = %rcfg.address, seq = r.notification.seq, error = %e, "snmp notification not encodable");
            return;
        }
    };
    if let Err(e) = socket.send_to(&bytes, rcfg.address).await {
        tracing::debug!(receiver = %rcfg.address, error = %e, "snmp notification send failed");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn receiver_steps_keep_the_unchanged_start_the_new_and_drop_the_rest() {
        use super::ReceiverStep::{Keep, Start};
        // Running a, b, b; wanted b, c, b, b: each running b is kept once, the third b
        // and c start, a stops (no step keeps index 0).
        let running = ["a", "b", "b"];
        let wanted = ["b", "c", "b", "b"];
        assert_eq!(
            super::receiver_steps(&running, &wanted),
            vec![Keep(1), Start, Keep(2), Start]
        );
        assert_eq!(super::receiver_steps::<&str>(&[], &["a"]), vec![Start]);
        assert!(super::receiver_steps(&running, &[]).is_empty());
    }

    use super::*;

    /// A reload moves the notifications to the receivers it names: the receiver
    /// taken out gets nothing more, the one added gets the next event, and the one
    /// kept keeps its task.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_changes_the_receivers_at_the_next_notification() {
        let sockets: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for s in &sockets {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
        }
        let receivers = |which: &[usize]| SnmpConfig {
            receivers: which
                .iter()
                .map(|&i| {
                    let text = format!(
                        "address = \"{}\"\nform = \"v2c_trap\"\ncommunity = \"traps\"\n",
                        sockets[i].local_addr().unwrap()
                    );
                    toml::from_str::<ReceiverConfig>(&text).unwrap()
                })
                .collect(),
            ..SnmpConfig::default()
        };
        let events = EventLog::in_memory("n1");
        let map: EventMapper = Box::new(|e: &Event| {
            Some(Notification {
                trap_oid: vec![1, 3, 6, 1, 4, 1, 99999, 0, 1],
                varbinds: Vec::new(),
                seq: e.seq,
            })
        });
        let n = spawn_notifier(
            &receivers(&[0, 1]),
            b"engine".to_vec(),
            1,
            events.clone(),
            map,
            Instant::now(),
        );
        let heard = |i: usize| {
            let mut buf = [0u8; 1500];
            sockets[i].recv(&mut buf).is_ok()
        };
        events.emit(crate::event::EventKind::DaemonStarted, Default::default());
        let (h0, h1) = tokio::task::block_in_place(|| (heard(0), heard(1)));
        assert!(h0 && h1, "both configured receivers get the first event");
        n.reconfigure(&receivers(&[1, 2]));
        assert_eq!(n.receivers().len(), 2);
        events.emit(crate::event::EventKind::DaemonStarted, Default::default());
        let got = tokio::task::block_in_place(|| [heard(0), heard(1), heard(2)]);
        assert_eq!(got, [false, true, true], "0 was taken out, 2 added, 1 kept");
    }

    fn t(ms: u64, base: Instant) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn informs_go_one_at_a_time_with_backoff_until_acked() {
        let base = Instant::now();
        let mut q =
            ReceiverQueue::new(10, true, Duration::from_millis(500), Duration::from_secs(2));
        q.push(1);
        q.push(2);
        assert_eq!(
            q.poll(base),
            QueueAction::Send {
                item: 1,
                retransmission: false
            }
        );
        // 2 waits behind 1.
        assert_eq!(q.poll(base), QueueAction::WaitUntil(t(500, base)));
        let retry = |q: &mut ReceiverQueue<i32>, at| q.poll(at);
        assert_eq!(
            retry(&mut q, t(500, base)),
            QueueAction::Send {
                item: 1,
                retransmission: true
            }
        );
        assert_eq!(q.poll(t(500, base)), QueueAction::WaitUntil(t(1500, base)));
        q.poll(t(1500, base));
        assert_eq!(q.poll(t(1500, base)), QueueAction::WaitUntil(t(3500, base)));
        q.poll(t(3500, base));
        // Capped at max_timeout.
        assert_eq!(q.poll(t(3500, base)), QueueAction::WaitUntil(t(5500, base)));
        assert_eq!(q.ack(), Some(1));
        assert_eq!(q.ack(), None, "nothing in flight after the ack");
        assert_eq!(
            q.poll(t(3600, base)),
            QueueAction::Send {
                item: 2,
                retransmission: false
            }
        );
        assert_eq!(q.poll(t(3600, base)), QueueAction::WaitUntil(t(4100, base)));
        assert_eq!(
            q.counters(),
            ReceiverCounters {
                sent: 2,
                acked: 1,
                retried: 3,
                dropped: 0
            }
        );
    }

    #[test]
    fn full_queue_drops_the_oldest_even_in_flight() {
        let base = Instant::now();
        let mut q = ReceiverQueue::new(2, true, Duration::from_secs(1), Duration::from_secs(1));
        q.push("a");
        assert!(matches!(q.poll(base), QueueAction::Send { item: "a", .. }));
        q.push("b");
        q.push("c");
        assert_eq!(q.counters().dropped, 1);
        assert_eq!(q.in_flight(), None);
        assert_eq!(
            q.ack(),
            None,
            "a late ack for a dropped inform acks nothing"
        );
        assert_eq!(
            q.poll(base),
            QueueAction::Send {
                item: "b",
                retransmission: false
            }
        );
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn traps_flow_in_order_without_waiting() {
        let base = Instant::now();
        let mut q = ReceiverQueue::new(2, false, Duration::from_secs(1), Duration::from_secs(1));
        for i in 0..3 {
            q.push(i);
        }
        let mut out = Vec::new();
        while let QueueAction::Send { item, .. } = q.poll(base) {
            out.push(item);
        }
        assert_eq!(out, vec![1, 2]);
        assert_eq!(q.poll(base), QueueAction::Idle);
        assert_eq!(
            q.counters(),
            ReceiverCounters {
                sent: 2,
                acked: 0,
                retried: 0,
                dropped: 1
            }
        );
    }

    /// A v3 inform link against our own agent USM standing in for the receiver (it
    /// runs the authoritative engine's checks): discovery, then
    /// a receiver reboot answered with an authenticated notInTimeWindow report.
    #[test]
    fn v3_inform_discovers_and_follows_a_receiver_reboot() {
        use crate::config::{AuthProtocol, PrivProtocol, UsmUserConfig};
        use crate::snmp::usm::{Usm, UsmIncoming};

        let cfg = UsmUserConfig {
            name: "ops".into(),
            auth: Some(AuthProtocol::Sha256),
            auth_password: Some("auth-secret-1".into()),
            privacy: Some(PrivProtocol::Aes128),
            priv_password: Some("priv-secret-1".into()),
        };
        let receiver_engine = b"\x80\x00\x1f\x88\x04receiver".to_vec();
        let receiver = |boots| {
            Usm::new(
                receiver_engine.clone(),
                boots,
                std::slice::from_ref(&cfg),
                false,
            )
            .unwrap()
        };
        let t0 = Instant::now();
        let mut link = Link {
            form: Form::V3Inform {
                user: UsmUser::from_config(&cfg).unwrap(),
                engine: None,
            },
            confirmed: true,
            our_engine_id: b"\x80\x00\x7e\xd9\x04us".to_vec(),
            our_boots: 1,
            uptime_start: t0,
            request_id: 10,
            msg_id: 20,
            salt: 0,
        };
        let raised = Raised {
            uptime: TimeTicks(0),
            notification: Notification {
                trap_oid: vec![1, 3, 6, 1, 4, 1, 32473, 0, 1],
                varbinds: vec![],
                seq: 1,
            },
        };
        // An inform that passed the receiver's USM checks (authentication, time window,
        // decryption). The agent's USM then refuses our context (the originator's
        // engine, RFC 3413 §3.3), the last check; snmptrapd takes it.
        let accepted = |usm: &mut Usm, bytes: &[u8]| {
            let before = usm.stats();
            usm.receive(bytes, t0);
            let after = usm.stats();
            after.unknown_contexts == before.unknown_contexts + 1
                && after.not_in_time_windows == before.not_in_time_windows
        };

        let mut usm = receiver(3);
        let probe = link.encode(&raised, t0).unwrap();
        let UsmIncoming::Report(report) = usm.receive(&probe, t0) else {
            panic!("no discovery report")
        };
        assert!(matches!(link.on_reply(&report, t0), Reaction::SendAgain));
        let inform = link.encode(&raised, t0).unwrap();
        assert!(accepted(&mut usm, &inform));

        // The receiver reboots: same engine ID, boots 4. Our inform is out of its
        // window; its authenticated report resyncs us.
        let mut usm = receiver(4);
        usm.receive(b"", t0);
        let UsmIncoming::Report(report) = usm.receive(&inform, t0) else {
            panic!("no notInTimeWindow report")
        };
        assert_eq!(usm.stats().not_in_time_windows, 1);
        assert!(matches!(link.on_reply(&report, t0), Reaction::SendAgain));
        let again = link.encode(&raised, t0).unwrap();
        assert!(accepted(&mut usm, &again));
        // The same report again teaches nothing new: no resend loop.
        assert!(matches!(link.on_reply(&report, t0), Reaction::Ignore));
    }

    #[test]
    fn pdu_starts_with_uptime_and_trap_oid() {
        let r = Raised {
            uptime: TimeTicks(1234),
            notification: Notification {
                trap_oid: vec![1, 3, 6, 1, 4, 1, 32473, 0, 1],
                varbinds: vec![VarBind {
                    name: oid(&[1, 3, 6, 1, 4, 1, 32473, 9]),
                    value: VarBindValue::Unspecified,
                }],
                seq: 9,
            },
        };
        let Pdus::InformRequest(p) = notification_pdu(&r, 5, true) else {
            panic!("not an inform")
        };
        let names: Vec<Vec<u32>> =
            p.0.variable_bindings
                .iter()
                .map(|v| v.name.to_vec())
                .collect();
        assert_eq!(
            names,
            vec![
                SYS_UP_TIME.to_vec(),
                SNMP_TRAP_OID.to_vec(),
                vec![1, 3, 6, 1, 4, 1, 32473, 9]
            ]
        );
        assert_eq!(p.0.request_id, 5);
        let base = Instant::now();
        assert_eq!(
            uptime_ticks(base, base + Duration::from_millis(12_345)).0,
            1234
        );
    }
}
