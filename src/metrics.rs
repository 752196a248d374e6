//! Prometheus metrics: `GET /metrics` in the text exposition format.
//!
//! Three sources feed one registry, each where its decision is made:
//! - the **status snapshot** (the same one the API serves) sets the state gauges at
//!   scrape time: nodes, paths and their round-trip time, groups and owners, and the
//!   heartbeat counters kept by the membership core;
//! - the **event stream** and the **timelines** count failovers, switchovers, local
//!   restarts and split-brain suspicions, and time each failover phase;
//! - the **executor** times every health check and counts its failures;
//! - the **SNMP agent and notifier** keep their own counters (requests, refusals,
//!   notifications sent, acked, retried, dropped), exported at scrape time;
//! - the **mirrors** in the snapshot set their state-set gauges (role, disk states,
//!   connections), sizes, lag and resync progress at scrape time, and their monotonic
//!   byte counters become real counters by adding the delta since the last scrape;
//! - the **NBD server** times each request and counts bytes and errors per export
//!   through an [`NbdMetrics`] handle whose label children are resolved up front.
//!
//! Every series carries a constant `cluster` label (the cluster name); Prometheus adds
//! `instance`. Names follow the conventions: the `tandem_` prefix, base units (seconds,
//! bytes) and `_total` on counters. Label sets whose values are known up front (groups,
//! nodes, reasons) are created at zero, so `increase()` sees the first failover.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::sync::{broadcast, watch};

use crate::cluster::membership;
use crate::config::Config;
use crate::event::{Event, EventKind, EventLog, MoveKind, MoveReason, Timeline};
use crate::mirror::generation::DiskState;
pub use crate::mirror::nbd::metrics::NbdMetrics;
use crate::snmp::agent::AgentCounters;
use crate::snmp::notify::ReceiverStatuses;
use crate::status::{GroupSummary, LinkState, MirrorPeerStatus, MirrorRole, Status};

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register metric: {0}")]
    Register(#[from] prometheus::Error),
    #[error("cannot listen on {0} for /metrics: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// Reasons a failover is counted under.
const FAILOVER_REASONS: [MoveReason; 3] = [
    MoveReason::NodeLost,
    MoveReason::ResourceFailed,
    MoveReason::SplitBrain,
];
/// Reasons a switchover is counted under.
const SWITCHOVER_REASONS: [MoveReason; 2] = [MoveReason::Manual, MoveReason::Switchback];
/// Phases of a move, in order.
pub const PHASES: [&str; 5] = ["detect", "decide", "stop", "start", "first_healthy"];
/// Buckets for the failover phases, in seconds: from a fast detection to a slow start.
const PHASE_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 15.0, 60.0,
];
/// Buckets for health checks, in seconds.
const CHECK_BUCKETS: [f64; 11] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];

/// Every disk state, one-hot in `tandem_mirror_disk_state` and `..._peer_disk_state`.
pub const DISK_STATES: [DiskState; 5] = [
    DiskState::UpToDate,
    DiskState::Outdated,
    DiskState::Inconsistent,
    DiskState::SyncSource,
    DiskState::SyncTarget,
];
/// Buckets for NBD requests, in seconds: from a page-cache read to a stalled sync write.
const NBD_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// The daemon's metrics. Cheap to clone (shared handles).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    // From the status snapshot, at scrape time.
    node_up: IntGaugeVec,
    node_standby: IntGaugeVec,
    node_last_heard: GaugeVec,
    path_up: IntGaugeVec,
    path_rtt: GaugeVec,
    quorate: IntGauge,
    voter_reachable: IntGaugeVec,
    lease_remaining: GaugeVec,
    group_state: IntGaugeVec,
    group_owner: IntGaugeVec,
    group_maintenance: IntGaugeVec,
    group_local_running: IntGaugeVec,
    last_seq: IntGauge,
    uptime: prometheus::Gauge,
    hb_sent: IntCounterVec,
    hb_received: prometheus::IntCounter,
    hb_rejected: IntCounterVec,
    /// The membership core's cumulative counters already exported, to add only deltas.
    hb_exported: Mutex<(u64, BTreeMap<String, u64>)>,
    // From events and timelines.
    events: IntCounterVec,
    failovers: IntCounterVec,
    switchovers: IntCounterVec,
    phases: HistogramVec,
    restarts: IntCounterVec,
    split_brain: IntCounterVec,
    fences: IntCounterVec,
    // From the executors.
    check_duration: HistogramVec,
    check_failures: IntCounterVec,
    // From the SNMP agent and notifier, at scrape time.
    snmp: Mutex<SnmpSources>,
    snmp_requests: IntCounterVec,
    snmp_responses: prometheus::IntCounter,
    snmp_dropped: IntCounterVec,
    snmp_notifications: IntCounterVec,
    snmp_queue: IntGaugeVec,
    // From the mirrors in the snapshot, at scrape time.
    mirror_primary: IntGaugeVec,
    mirror_disk_state: IntGaugeVec,
    mirror_io_frozen: IntGaugeVec,
    mirror_read: IntCounterVec,
    mirror_written: IntCounterVec,
    mirror_peer_disk_state: IntGaugeVec,
    mirror_connection: IntGaugeVec,
    mirror_out_of_sync: IntGaugeVec,
    mirror_lag_bytes: IntGaugeVec,
    mirror_lag_seconds: GaugeVec,
    mirror_lag_budget: GaugeVec,
    recovery_point_bytes: IntGaugeVec,
    recovery_point_seconds: GaugeVec,
    resync_active: IntGaugeVec,
    resync_size: IntGaugeVec,
    resync_done: IntGaugeVec,
    resync_rate: GaugeVec,
    resync_eta: GaugeVec,
    mirror_replicated: IntCounterVec,
    mirror_resynced: IntCounterVec,
    mirror_resyncs: IntCounterVec,
    compress_in: IntCounterVec,
    compress_out: IntCounterVec,
    compress_ratio: GaugeVec,
    // From the NBD servers, per request.
    nbd_duration: HistogramVec,
    nbd_bytes: IntCounterVec,
    nbd_errors: IntCounterVec,
    audit: IntCounterVec,
}

/// The SNMP components' own cumulative counters, and what was exported of them.
#[derive(Default)]
struct SnmpSources {
    agent: Option<Arc<AgentCounters>>,
    receivers: Option<ReceiverStatuses>,
    exported: HashMap<(String, String, String), u64>,
}

/// Adds to `counter` what `total` grew since the last scrape.
fn sync_counter(
    exported: &mut HashMap<(String, String, String), u64>,
    counter: &prometheus::IntCounter,
    key: (&str, &str, &str),
    total: u64,
) {
    let before = exported
        .entry((key.0.to_string(), key.1.to_string(), key.2.to_string()))
        .or_insert(0);
    counter.inc_by(total.saturating_sub(*before));
    *before = (*before).max(total);
}

fn gauge_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let v = IntGaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn float_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<GaugeVec> {
    let v = GaugeVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

/// The metrics without labels: quorate, the event sequence, uptime, heartbeats
/// received.
fn scalars(
    r: &Registry,
) -> prometheus::Result<(IntGauge, IntGauge, prometheus::Gauge, IntCounter)> {
    let quorate = registered(r, IntGauge::new(
        "cluster_quorate",
        "1 when this node's partition may run groups: with a quorum, when it is with a majority of the voters; two-node and priority modes need no majority, so it is 1 while the daemon runs.",
    )?)?;
    let last_seq = registered(
        r,
        IntGauge::new(
            "event_sequence",
            "Sequence number of the newest event on this node.",
        )?,
    )?;
    let uptime = registered(
        r,
        prometheus::Gauge::new("uptime_seconds", "Seconds since the daemon started.")?,
    )?;
    let hb_received = registered(
        r,
        prometheus::IntCounter::new(
            "heartbeat_packets_received_total",
            "Heartbeat packets accepted (authentic, fresh, in order).",
        )?,
    )?;
    Ok((quorate, last_seq, uptime, hb_received))
}

/// `c`, registered with `r`.
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    r: &Registry,
    c: C,
) -> prometheus::Result<C> {
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let v = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> prometheus::Result<HistogramVec> {
    let v = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    r.register(Box::new(v.clone()))?;
    Ok(v)
}

impl Inner {
    /// Creates the label sets known from the configuration at zero, so that
    /// `increase()` and `rate()` see the first failover, restart or rejected packet.
    fn create_known_label_sets(&self, cfg: &Config) {
        for path in &cfg.heartbeat.paths {
            self.hb_sent.with_label_values(&[path]).reset();
        }
        for g in &cfg.groups {
            for reason in FAILOVER_REASONS {
                for outcome in ["completed", "failed"] {
                    self.failovers
                        .with_label_values(&[&g.name, &reason.name(), outcome])
                        .reset();
                }
            }
            for reason in SWITCHOVER_REASONS {
                for outcome in ["completed", "failed"] {
                    self.switchovers
                        .with_label_values(&[&g.name, &reason.name(), outcome])
                        .reset();
                }
            }
            self.split_brain.with_label_values(&[&g.name]).reset();
            for r in &g.resources {
                self.restarts.with_label_values(&[&g.name, &r.name]).reset();
                for (check, set) in [("quickcheck", &r.quickcheck), ("deepcheck", &r.deepcheck)] {
                    if set.is_some() {
                        self.check_failures
                            .with_label_values(&[&g.name, &r.name, check])
                            .reset();
                    }
                }
            }
        }
        for reason in [
            "bad_mac",
            "malformed",
            "wrong_cluster",
            membership::REJECT_REPLAYED,
            membership::REJECT_STALE_BOOT,
            membership::REJECT_UNKNOWN_NODE,
        ] {
            self.hb_rejected.with_label_values(&[reason]).reset();
        }
        for n in cfg.nodes.iter().filter(|n| n.fence.is_some()) {
            for outcome in ["succeeded", "failed"] {
                self.fences.with_label_values(&[&n.name, outcome]).reset();
            }
        }
        for kind in [
            EventKind::FailoverCompleted,
            EventKind::NodeDown,
            EventKind::PathDown,
        ] {
            self.events.with_label_values(&[&kind.name()]).reset();
        }
    }
}

impl Metrics {
    /// Registers every metric, with the label sets known from `cfg` at zero.
    pub fn new(cfg: &Config, local: &str) -> Result<Metrics, MetricsError> {
        let labels = HashMap::from([("cluster".to_string(), cfg.cluster.name.clone())]);
        let r = Registry::new_custom(Some("tandem".into()), Some(labels))?;
        let build = gauge_vec(
            &r,
            "build_info",
            "Always 1; the labels say which build and node this is.",
            &["version", "node", "mode"],
        )?;
        let mode = crate::status::TakeoverMode::for_config(cfg).to_string();
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), local, &mode])
            .set(1);
        let (quorate, last_seq, uptime, hb_received) = scalars(&r)?;
        let inner = Inner {
            node_up: gauge_vec(&r, "node_up", "1 if the node is alive as seen from this node (this node counts itself).", &["node"])?,
            node_standby: gauge_vec(&r, "node_standby", "1 if the node is in standby (runs no groups).", &["node"])?,
            node_last_heard: float_vec(&r, "node_last_heard_seconds", "Seconds since any heartbeat from the peer arrived.", &["node"])?,
            path_up: gauge_vec(&r, "path_up", "1 if heartbeats from the peer arrive on this path.", &["peer", "path"])?,
            path_rtt: float_vec(&r, "path_rtt_seconds", "Heartbeat round-trip time to the peer on this path.", &["peer", "path"])?,
            quorate,
            voter_reachable: gauge_vec(&r, "quorum_voter_reachable", "1 if the voter (a node or the witness) was heard from within the dead time.", &["voter", "kind"])?,
            lease_remaining: float_vec(&r, "group_lease_remaining_seconds", "Seconds left on this node's owner lease of the group (quorum mode; 0 when none is held).", &["group"])?,
            group_state: gauge_vec(&r, "group_state", "1 for the group's current cluster-wide state, 0 for the others.", &["group", "state"])?,
            group_owner: gauge_vec(&r, "group_owner", "1 for the node that owns the group, 0 for the other nodes.", &["group", "node"])?,
            group_maintenance: gauge_vec(&r, "group_maintenance", "1 while the group is in maintenance (not monitored, never moved).", &["group"])?,
            group_local_running: gauge_vec(&r, "group_running_here", "1 if the group runs on this node.", &["group"])?,
            last_seq,
            uptime,
            hb_sent: counter_vec(&r, "heartbeat_packets_sent_total", "Heartbeat packets sent, per path.", &["path"])?,
            hb_received,
            hb_rejected: counter_vec(&r, "heartbeat_packets_rejected_total", "Heartbeat packets dropped, by reason (bad_mac, replayed, malformed, ...).", &["reason"])?,
            hb_exported: Mutex::new((0, BTreeMap::new())),
            events: counter_vec(&r, "events_total", "Events recorded on this node, by kind.", &["kind"])?,
            failovers: counter_vec(&r, "failovers_total", "Failovers this node carried out (it took the group over), by reason and outcome.", &["group", "reason", "outcome"])?,
            switchovers: counter_vec(&r, "switchovers_total", "Switchovers (manual or switchback) to this node, by reason and outcome.", &["group", "reason", "outcome"])?,
            phases: histogram_vec(&r, "failover_phase_seconds", "Duration of each phase of a move: detect (last heartbeat to declared dead), decide, stop (on the old owner), start, first_healthy (first passing check).", &PHASE_BUCKETS, &["group", "phase"])?,
            restarts: counter_vec(&r, "local_restarts_total", "Resources restarted in place after a failed check.", &["group", "resource"])?,
            split_brain: counter_vec(&r, "split_brain_suspected_total", "Takeovers withheld because the floating IP still answered.", &["group"])?,
            fences: counter_vec(&r, "fence_actions_total", "Power-offs this node asked of a previous owner's BMC, by outcome: succeeded (the BMC reports the power off) or failed (every method failed).", &["node", "outcome"])?,
            check_duration: histogram_vec(&r, "check_duration_seconds", "Duration of health checks, passing or not.", &CHECK_BUCKETS, &["group", "resource", "check"])?,
            check_failures: counter_vec(&r, "check_failures_total", "Failed health checks.", &["group", "resource", "check"])?,
            snmp: Mutex::new(SnmpSources::default()),
            snmp_requests: counter_vec(&r, "snmp_requests_total", "SNMP requests answered or refused, by PDU type.", &["pdu"])?,
            snmp_responses: {
                let c = prometheus::IntCounter::new("snmp_responses_total", "SNMP responses sent (including v3 reports).")?;
                r.register(Box::new(c.clone()))?;
                c
            },
            snmp_dropped: counter_vec(&r, "snmp_dropped_requests_total", "SNMP datagrams dropped, by reason (bad_community, bad_source, bad_version, malformed, usm: wrong user, key, digest or time window).", &["reason"])?,
            snmp_notifications: counter_vec(&r, "snmp_notifications_total", "Traps and informs per receiver: sent, acked (informs), retried and dropped (queue full).", &["receiver", "result"])?,
            snmp_queue: gauge_vec(&r, "snmp_notification_queue", "Notifications waiting or in flight per receiver.", &["receiver"])?,
            mirror_primary: gauge_vec(&r, "mirror_primary", "1 if this node's copy of the mirror is primary (served read-write over NBD), 0 if secondary.", &["mirror"])?,
            mirror_disk_state: gauge_vec(&r, "mirror_disk_state", "1 for the current state of this node's copy of the mirror, 0 for the others.", &["mirror", "state"])?,
            mirror_io_frozen: gauge_vec(&r, "mirror_io_frozen", "1 while a sync primary holds writes because it lost a peer that is not yet outdated or declared dead.", &["mirror"])?,
            mirror_read: counter_vec(&r, "mirror_client_read_bytes_total", "Bytes clients read through the mirror's export.", &["mirror"])?,
            mirror_written: counter_vec(&r, "mirror_client_written_bytes_total", "Bytes clients wrote through the mirror's export.", &["mirror"])?,
            mirror_peer_disk_state: gauge_vec(&r, "mirror_peer_disk_state", "1 for the peer copy's disk state as it last reported it, 0 for the others (all 0 while unknown).", &["mirror", "peer", "state"])?,
            mirror_connection: gauge_vec(&r, "mirror_connection_state", "1 for the current state of the replication link to the peer, 0 for the others.", &["mirror", "peer", "state"])?,
            mirror_out_of_sync: gauge_vec(&r, "mirror_out_of_sync_bytes", "Bytes this copy knows differ on the peer (its bitmap for the peer).", &["mirror", "peer"])?,
            mirror_lag_bytes: gauge_vec(&r, "mirror_lag_bytes", "Async replication: bytes written locally and not yet acknowledged by the peer.", &["mirror", "peer"])?,
            mirror_lag_seconds: float_vec(&r, "mirror_lag_seconds", "Async replication: age of the oldest write not yet acknowledged by the peer.", &["mirror", "peer"])?,
            mirror_lag_budget: float_vec(&r, "mirror_lag_budget_seconds", "The configured lag budget of an async peer (absent when none is configured).", &["mirror", "peer"])?,
            recovery_point_bytes: gauge_vec(&r, "mirror_recovery_point_bytes", "On a secondary: bytes this copy may lack, as its primary (label) last reported in a heartbeat; after a site disaster, the DR copy's recovery point.", &["mirror", "primary"])?,
            recovery_point_seconds: float_vec(&r, "mirror_recovery_point_seconds", "On a secondary: age of the oldest write this copy had not acknowledged, as its primary last reported.", &["mirror", "primary"])?,
            resync_active: gauge_vec(&r, "mirror_resync_active", "1 while a resync with the peer runs (in either direction).", &["mirror", "peer"])?,
            resync_size: gauge_vec(&r, "mirror_resync_size_bytes", "Bytes the running resync copies in all (0 when none runs).", &["mirror", "peer"])?,
            resync_done: gauge_vec(&r, "mirror_resync_done_bytes", "Bytes the running resync has copied so far (0 when none runs).", &["mirror", "peer"])?,
            resync_rate: float_vec(&r, "mirror_resync_rate_bytes_per_second", "Current copy rate of the running resync (0 when none runs).", &["mirror", "peer"])?,
            resync_eta: float_vec(&r, "mirror_resync_eta_seconds", "Estimated time until the running resync completes (absent when none runs or no estimate yet).", &["mirror", "peer"])?,
            mirror_replicated: counter_vec(&r, "mirror_replicated_bytes_total", "Bytes of client writes sent to the peer.", &["mirror", "peer"])?,
            mirror_resynced: counter_vec(&r, "mirror_resynced_bytes_total", "Bytes copied to or from the peer by resyncs.", &["mirror", "peer"])?,
            mirror_resyncs: counter_vec(&r, "mirror_resyncs_completed_total", "Resyncs with the peer that ran to the end.", &["mirror", "peer"])?,
            compress_in: counter_vec(&r, "mirror_compression_input_bytes_total", "Write and resync payload bytes sent to the peer on compressed links (compress = \"zstd\"), before compression.", &["mirror", "peer"])?,
            compress_out: counter_vec(&r, "mirror_compression_output_bytes_total", "Bytes sent for those payloads after compression (a payload that did not shrink counts raw).", &["mirror", "peer"])?,
            compress_ratio: float_vec(&r, "mirror_compression_ratio", "Payload bytes before compression divided by bytes sent, since the daemon started (absent until a compressed link carried a payload).", &["mirror", "peer"])?,
            nbd_duration: histogram_vec(&r, "nbd_request_duration_seconds", "Duration of NBD requests, from the decoded header (a write's payload included) to the queued reply.", &NBD_BUCKETS, &["export", "command"])?,
            nbd_bytes: counter_vec(&r, "nbd_bytes_total", "Payload bytes of successful NBD reads and writes.", &["export", "direction"])?,
            nbd_errors: counter_vec(&r, "nbd_request_errors_total", "NBD requests answered with an error, refused ones included.", &["export", "command"])?,
            audit: counter_vec(&r, "audit_actions_total", "Audited console logins and actions through the console or an API token, by role (empty for a failed login) and outcome (allowed, refused).", &["role", "outcome"])?,
            registry: r,
        };
        inner.create_known_label_sets(cfg);
        Ok(Metrics {
            inner: Arc::new(inner),
        })
    }

    /// The request metrics of the NBD export `export`, created at zero.
    pub fn nbd(&self, export: &str) -> Arc<NbdMetrics> {
        let i = &self.inner;
        Arc::new(NbdMetrics::new(
            &i.nbd_duration,
            &i.nbd_errors,
            &i.nbd_bytes,
            export,
        ))
    }

    /// Sets the mirror series from the snapshot's mirrors.
    fn render_mirrors(&self, s: &Status) {
        let i = &self.inner;
        self.reset_mirror_series();
        for m in &s.mirrors {
            let name = m.name.as_str();
            i.mirror_primary
                .with_label_values(&[name])
                .set((m.role == MirrorRole::Primary) as i64);
            for state in DISK_STATES {
                i.mirror_disk_state
                    .with_label_values(&[name, state.name()])
                    .set((m.disk == state) as i64);
            }
            i.mirror_io_frozen
                .with_label_values(&[name])
                .set(m.io_frozen as i64);
            add_new(i.mirror_read.with_label_values(&[name]), m.read_bytes);
            add_new(i.mirror_written.with_label_values(&[name]), m.written_bytes);
            for p in &m.peers {
                self.render_mirror_peer(name, p);
            }
            if let Some(r) = &m.recovery_point {
                let labels = [name, r.primary.as_str()];
                i.recovery_point_bytes
                    .with_label_values(&labels)
                    .set(i64::try_from(r.lag_bytes).unwrap_or(i64::MAX));
                i.recovery_point_seconds
                    .with_label_values(&labels)
                    .set(f64::from(r.lag_ms) / 1000.0);
            }
        }
    }

    /// Forgets every mirror gauge, so a removed mirror or peer leaves no stale series.
    fn reset_mirror_series(&self) {
        let i = &self.inner;
        for g in [
            &i.mirror_primary,
            &i.mirror_disk_state,
            &i.mirror_io_frozen,
            &i.mirror_peer_disk_state,
            &i.mirror_connection,
            &i.mirror_out_of_sync,
            &i.mirror_lag_bytes,
            &i.recovery_point_bytes,
            &i.resync_active,
            &i.resync_size,
            &i.resync_done,
        ] {
            g.reset();
        }
        for g in [
            &i.mirror_lag_seconds,
            &i.mirror_lag_budget,
            &i.recovery_point_seconds,
            &i.resync_rate,
            &i.resync_eta,
            &i.compress_ratio,
        ] {
            g.reset();
        }
    }

    /// Sets the series of one peer of mirror `name`.
    fn render_mirror_peer(&self, name: &str, p: &MirrorPeerStatus) {
        let i = &self.inner;
        let peer = [name, p.node.as_str()];
        for state in DISK_STATES {
            i.mirror_peer_disk_state
                .with_label_values(&[name, &p.node, state.name()])
                .set((p.peer_disk == Some(state)) as i64);
        }
        for state in LinkState::ALL {
            i.mirror_connection
                .with_label_values(&[name, &p.node, state.name()])
                .set((p.connection == state) as i64);
        }
        i.mirror_out_of_sync
            .with_label_values(&peer)
            .set(gauge(p.out_of_sync_bytes));
        i.mirror_lag_bytes
            .with_label_values(&peer)
            .set(gauge(p.lag_bytes));
        i.mirror_lag_seconds
            .with_label_values(&peer)
            .set(p.lag_seconds);
        if let Some(budget) = p.lag_budget_seconds {
            i.mirror_lag_budget.with_label_values(&peer).set(budget);
        }
        let r = p.resync.as_ref();
        i.resync_active
            .with_label_values(&peer)
            .set(r.is_some() as i64);
        i.resync_size
            .with_label_values(&peer)
            .set(gauge(r.map_or(0, |r| r.total_bytes)));
        i.resync_done
            .with_label_values(&peer)
            .set(gauge(r.map_or(0, |r| r.done_bytes)));
        i.resync_rate
            .with_label_values(&peer)
            .set(r.map_or(0.0, |r| r.bytes_per_second));
        if let Some(eta) = r.and_then(|r| r.eta_seconds) {
            i.resync_eta.with_label_values(&peer).set(eta);
        }
        add_new(
            i.mirror_replicated.with_label_values(&peer),
            p.replicated_bytes,
        );
        add_new(i.mirror_resynced.with_label_values(&peer), p.resynced_bytes);
        add_new(
            i.mirror_resyncs.with_label_values(&peer),
            p.resyncs_completed,
        );
        if let Some(c) = &p.compression {
            add_new(i.compress_in.with_label_values(&peer), c.raw_bytes);
            add_new(i.compress_out.with_label_values(&peer), c.wire_bytes);
            i.compress_ratio.with_label_values(&peer).set(c.ratio);
        }
    }

    /// Exports the SNMP agent's counters from now on.
    pub fn attach_snmp_agent(&self, counters: Arc<AgentCounters>) {
        let i = &self.inner;
        for pdu in ["get", "getnext", "getbulk", "set"] {
            i.snmp_requests.with_label_values(&[pdu]).reset();
        }
        for reason in [
            "bad_community",
            "bad_source",
            "bad_version",
            "malformed",
            "usm",
        ] {
            i.snmp_dropped.with_label_values(&[reason]).reset();
        }
        i.snmp.lock().unwrap_or_else(|p| p.into_inner()).agent = Some(counters);
    }

    /// Exports the notification receivers' counters from now on.
    pub fn attach_snmp_notifier(&self, receivers: ReceiverStatuses) {
        let i = &self.inner;
        for r in receivers.snapshot() {
            let name = r.address.to_string();
            for result in ["sent", "acked", "retried", "dropped"] {
                i.snmp_notifications
                    .with_label_values(&[&name, result])
                    .reset();
            }
        }
        i.snmp.lock().unwrap_or_else(|p| p.into_inner()).receivers = Some(receivers);
    }

    fn sync_snmp(&self) {
        let i = &self.inner;
        let mut snmp = i.snmp.lock().unwrap_or_else(|p| p.into_inner());
        let SnmpSources {
            agent,
            receivers,
            exported,
        } = &mut *snmp;
        if let Some(a) = agent {
            let get =
                |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            for (pdu, total) in [
                ("get", get(&a.get_requests)),
                ("getnext", get(&a.get_next_requests)),
                ("getbulk", get(&a.get_bulk_requests)),
                ("set", get(&a.set_requests)),
            ] {
                let c = i.snmp_requests.with_label_values(&[pdu]);
                sync_counter(exported, &c, ("req", pdu, ""), total);
            }
            sync_counter(
                exported,
                &i.snmp_responses,
                ("resp", "", ""),
                get(&a.responses),
            );
            for (reason, total) in [
                ("bad_community", get(&a.bad_community_names)),
                ("bad_source", get(&a.bad_community_sources)),
                ("bad_version", get(&a.bad_versions)),
                ("malformed", get(&a.malformed)),
                ("usm", get(&a.v3_dropped) + get(&a.v3_reports)),
            ] {
                let c = i.snmp_dropped.with_label_values(&[reason]);
                sync_counter(exported, &c, ("drop", reason, ""), total);
            }
        }
        if let Some(rs) = receivers {
            for r in rs.snapshot() {
                let name = r.address.to_string();
                let c = &r.counters;
                for (result, total) in [
                    ("sent", c.sent),
                    ("acked", c.acked),
                    ("retried", c.retried),
                    ("dropped", c.dropped),
                ] {
                    let counter = i.snmp_notifications.with_label_values(&[&name, result]);
                    sync_counter(exported, &counter, ("notify", &name, result), total);
                }
                i.snmp_queue
                    .with_label_values(&[&name])
                    .set(r.queued as i64);
            }
        }
    }

    /// One heartbeat packet went out on `path`.
    pub fn heartbeat_sent(&self, path: &str) {
        self.inner.hb_sent.with_label_values(&[path]).inc();
    }

    /// One health check ran.
    pub fn check(&self, group: &str, resource: &str, check: &str, took: Duration, ok: bool) {
        let i = &self.inner;
        i.check_duration
            .with_label_values(&[group, resource, check])
            .observe(took.as_secs_f64());
        if !ok {
            i.check_failures
                .with_label_values(&[group, resource, check])
                .inc();
        }
    }

    /// One event of the stream.
    pub fn observe_event(&self, e: &Event) {
        let i = &self.inner;
        i.events.with_label_values(&[&e.kind.name()]).inc();
        let field = |k: &str| e.fields.get(k).map(String::as_str).unwrap_or("");
        match e.kind {
            EventKind::ResourceRestarted => {
                i.restarts
                    .with_label_values(&[field("group"), field("resource")])
                    .inc();
            }
            EventKind::SplitBrainSuspected => {
                i.split_brain.with_label_values(&[field("group")]).inc();
            }
            EventKind::Audit => {
                i.audit
                    .with_label_values(&[field("role"), field("outcome")])
                    .inc();
            }
            EventKind::FenceSucceeded | EventKind::FenceFailed => {
                let outcome = if e.kind == EventKind::FenceSucceeded {
                    "succeeded"
                } else {
                    "failed"
                };
                i.fences.with_label_values(&[field("peer"), outcome]).inc();
            }
            _ => {}
        }
    }

    /// A finished move (or the release side of one): counts it and times its phases.
    pub fn observe_timeline(&self, t: &Timeline) {
        let i = &self.inner;
        let outcome = if t.outcome == "completed" || t.outcome == "stopped" {
            "completed"
        } else {
            "failed"
        };
        let phase = |name: &str, from: Option<u64>, to: Option<u64>| {
            if let (Some(a), Some(b)) = (from, to) {
                i.phases
                    .with_label_values(&[&t.group, name])
                    .observe(b.saturating_sub(a) as f64 / 1000.0);
            }
        };
        let span = |action: &str| -> Option<(u64, u64)> {
            let steps: Vec<_> = t.steps.iter().filter(|s| s.action == action).collect();
            let first = steps.iter().map(|s| s.at_ms).min()?;
            let last = steps.iter().map(|s| s.at_ms + s.duration_ms).max()?;
            Some((first, last))
        };
        match t.kind {
            MoveKind::Release => {
                if let Some((a, b)) = span("stop") {
                    phase("stop", Some(a), Some(b));
                }
                return;
            }
            MoveKind::Failover => {
                i.failovers
                    .with_label_values(&[&t.group, &t.reason.name(), outcome])
                    .inc();
            }
            MoveKind::Switchover => {
                i.switchovers
                    .with_label_values(&[&t.group, &t.reason.name(), outcome])
                    .inc();
            }
        }
        phase("detect", t.failure_ms, Some(t.detected_ms));
        phase("decide", Some(t.detected_ms), Some(t.decided_ms));
        if let Some((a, b)) = span("start") {
            phase("start", Some(a), Some(b));
            phase("first_healthy", Some(b), t.first_check_ms);
        }
    }

    /// Sets the snapshot-derived series from `s` and renders the text exposition.
    pub fn render(&self, s: &Status) -> String {
        let i = &self.inner;
        i.node_up.reset();
        i.node_standby.reset();
        i.node_last_heard.reset();
        for n in &s.nodes {
            i.node_up.with_label_values(&[&n.name]).set(n.alive as i64);
            i.node_standby
                .with_label_values(&[&n.name])
                .set(n.standby as i64);
            if let Some(ms) = n.last_heard_ms_ago {
                i.node_last_heard
                    .with_label_values(&[&n.name])
                    .set(ms as f64 / 1000.0);
            }
        }
        i.path_up.reset();
        i.path_rtt.reset();
        for p in &s.paths {
            i.path_up
                .with_label_values(&[&p.peer, &p.path])
                .set(p.up as i64);
            if let Some(rtt) = p.rtt_ms {
                i.path_rtt
                    .with_label_values(&[&p.peer, &p.path])
                    .set(rtt / 1000.0);
            }
        }
        i.quorate
            .set(s.quorum.as_ref().is_none_or(|q| q.quorate) as i64);
        i.voter_reachable.reset();
        i.lease_remaining.reset();
        if let Some(q) = &s.quorum {
            for v in &q.voters {
                i.voter_reachable
                    .with_label_values(&[
                        v.name.as_str(),
                        if v.witness { "witness" } else { "node" },
                    ])
                    .set(v.reachable as i64);
            }
            for l in &q.leases {
                i.lease_remaining
                    .with_label_values(&[&l.group])
                    .set(l.remaining_ms as f64 / 1000.0);
            }
        }
        i.group_state.reset();
        i.group_owner.reset();
        i.group_maintenance.reset();
        i.group_local_running.reset();
        for g in &s.groups {
            for state in GroupSummary::ALL {
                i.group_state
                    .with_label_values(&[&g.name, state.name()])
                    .set((g.summary == state) as i64);
            }
            for n in &s.nodes {
                i.group_owner
                    .with_label_values(&[&g.name, &n.name])
                    .set((g.owner.as_deref() == Some(n.name.as_str())) as i64);
            }
            i.group_maintenance
                .with_label_values(&[&g.name])
                .set(g.maintenance as i64);
            i.group_local_running
                .with_label_values(&[&g.name])
                .set((g.local_state == crate::cluster::packet::LocalGroupState::Running) as i64);
        }
        i.last_seq.set(s.last_seq as i64);
        i.uptime.set(s.uptime_ms as f64 / 1000.0);
        {
            // The membership core keeps cumulative counts; add what is new since the
            // last scrape.
            let mut exported = i.hb_exported.lock().unwrap_or_else(|p| p.into_inner());
            let accepted = s.heartbeats.accepted;
            i.hb_received.inc_by(accepted.saturating_sub(exported.0));
            exported.0 = exported.0.max(accepted);
            for (reason, &n) in &s.heartbeats.rejected {
                let before = exported.1.entry(reason.clone()).or_insert(0);
                i.hb_rejected
                    .with_label_values(&[reason])
                    .inc_by(n.saturating_sub(*before));
                *before = (*before).max(n);
            }
        }
        self.render_mirrors(s);
        self.sync_snmp();
        let mut buf = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which the
        // registry rejected at registration.
        let _ = TextEncoder::new().encode(&i.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Feeds every event of `events` (from `after` on) into `metrics`, until the log closes.
/// A subscriber that falls behind re-reads what it missed from the log.
pub fn spawn_event_observer(metrics: Metrics, events: EventLog) -> tokio::task::JoinHandle<()> {
    let mut last = events.last_seq();
    let mut rx = events.subscribe();
    tokio::spawn(async move {
        let catch_up = |last: &mut u64| {
            for e in events.since(*last, usize::MAX) {
                *last = e.seq;
                metrics.observe_event(&e);
            }
        };
        loop {
            match rx.recv().await {
                Ok(e) if e.seq == last + 1 => {
                    last = e.seq;
                    metrics.observe_event(&e);
                }
                // Sequence numbers are contiguous within one run: a gap means events
                // were emitted between reading `last` and subscribing.
                Ok(e) if e.seq > last + 1 => catch_up(&mut last),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => catch_up(&mut last),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// Serves `GET /metrics` on `listen`.
pub async fn serve(
    listen: SocketAddr,
    metrics: Metrics,
    status: watch::Receiver<Status>,
) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| MetricsError::Bind(listen, e))?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            let status = status.clone();
            async move {
                let body = metrics.render(&status.borrow().clone());
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    body,
                )
            }
        }),
    );
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    }))
}

/// The engine's counters only grow while the daemon runs: adds what is new to `c`.
fn add_new(c: IntCounter, total: u64) {
    let before = c.get();
    if total > before {
        c.inc_by(total - before);
    }
}

/// A byte count as a gauge value (saturating).
fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
