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
//!   notifications sent, acked, retried, dropped), exported at scrape time.
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
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::sync::{broadcast, watch};

use crate::api::Status;
use crate::cluster::membership;
use crate::config::Config;
use crate::event::{Event, EventKind, EventLog, MoveReason, Timeline};
use crate::snmp::agent::AgentCounters;
use crate::snmp::notify::ReceiverStatuses;

/// Errors of the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register metric: {0}")]
    Register(#[from] prometheus::Error),
    #[error("cannot listen on {0} for /metrics: {1}")]
    Bind(SocketAddr, std::io::Error),
}

/// The group states a group's summary can take (one-hot in `tandem_group_state`).
pub const GROUP_STATES: [&str; 6] = [
    "running", "starting", "stopping", "stopped", "failed", "split",
];
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
        let mode = if cfg.nodes.len() == 2 && cfg.cluster.probe_vip_before_takeover {
            "two_node"
        } else {
            "priority"
        };
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), local, mode])
            .set(1);
        let quorate = IntGauge::new(
            "cluster_quorate",
            "1 when this node's partition may run groups. Two-node and priority modes need no majority, so it is 1 while the daemon runs.",
        )?;
        r.register(Box::new(quorate.clone()))?;
        let last_seq = IntGauge::new(
            "event_sequence",
            "Sequence number of the newest event on this node.",
        )?;
        r.register(Box::new(last_seq.clone()))?;
        let uptime = prometheus::Gauge::new("uptime_seconds", "Seconds since the daemon started.")?;
        r.register(Box::new(uptime.clone()))?;
        let hb_received = prometheus::IntCounter::new(
            "heartbeat_packets_received_total",
            "Heartbeat packets accepted (authentic, fresh, in order).",
        )?;
        r.register(Box::new(hb_received.clone()))?;
        let inner = Inner {
            node_up: gauge_vec(&r, "node_up", "1 if the node is alive as seen from this node (this node counts itself).", &["node"])?,
            node_standby: gauge_vec(&r, "node_standby", "1 if the node is in standby (runs no groups).", &["node"])?,
            node_last_heard: float_vec(&r, "node_last_heard_seconds", "Seconds since any heartbeat from the peer arrived.", &["node"])?,
            path_up: gauge_vec(&r, "path_up", "1 if heartbeats from the peer arrive on this path.", &["peer", "path"])?,
            path_rtt: float_vec(&r, "path_rtt_seconds", "Heartbeat round-trip time to the peer on this path.", &["peer", "path"])?,
            quorate,
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
            registry: r,
        };
        for path in &cfg.heartbeat.paths {
            inner.hb_sent.with_label_values(&[path]).reset();
        }
        for g in &cfg.groups {
            for reason in FAILOVER_REASONS {
                for outcome in ["completed", "failed"] {
                    inner
                        .failovers
                        .with_label_values(&[&g.name, &reason.name(), outcome])
                        .reset();
                }
            }
            for reason in SWITCHOVER_REASONS {
                for outcome in ["completed", "failed"] {
                    inner
                        .switchovers
                        .with_label_values(&[&g.name, &reason.name(), outcome])
                        .reset();
                }
            }
            inner.split_brain.with_label_values(&[&g.name]).reset();
            for r in &g.resources {
                inner
                    .restarts
                    .with_label_values(&[&g.name, &r.name])
                    .reset();
                for (check, set) in [("quickcheck", &r.quickcheck), ("deepcheck", &r.deepcheck)] {
                    if set.is_some() {
                        inner
                            .check_failures
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
            inner.hb_rejected.with_label_values(&[reason]).reset();
        }
        for kind in [
            EventKind::FailoverCompleted,
            EventKind::NodeDown,
            EventKind::PathDown,
        ] {
            inner.events.with_label_values(&[&kind.name()]).reset();
        }
        Ok(Metrics {
            inner: Arc::new(inner),
        })
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
        match t.kind.as_str() {
            "release" => {
                if let Some((a, b)) = span("stop") {
                    phase("stop", Some(a), Some(b));
                }
                return;
            }
            "failover" => {
                i.failovers
                    .with_label_values(&[&t.group, &t.reason.name(), outcome])
                    .inc();
            }
            "switchover" => {
                i.switchovers
                    .with_label_values(&[&t.group, &t.reason.name(), outcome])
                    .inc();
            }
            _ => return,
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
        i.quorate.set(1);
        i.group_state.reset();
        i.group_owner.reset();
        i.group_maintenance.reset();
        i.group_local_running.reset();
        for g in &s.groups {
            for state in GROUP_STATES {
                i.group_state
                    .with_label_values(&[&g.name, state])
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

#[cfg(test)]
mod tests;
