//! `tandem witness`: a voter with no resources, for any Linux host (a third site, a
//! small VM). Two nodes and a witness make three voters: a majority survives the loss of
//! any one of them, and a partitioned node's leases run out instead of both sides
//! serving.
//!
//! One witness serves several clusters. Per cluster it runs its own [`QuorumCore`] (the
//! same consensus and lease rules as the nodes, built by the same
//! [`QuorumConfig::derive`]; the witness votes and acknowledges, it never leads), its own
//! UDP socket on the cluster's heartbeat port, its own cluster key, and its own durable
//! log in `state_dir/<cluster>/`.
//!
//! # Configuration
//!
//! TOML; every table rejects unknown keys, and [`WitnessConfig::validate`] names the
//! offending key in its errors. `docs/witness.example.toml` is a commented example.
//!
//! ```toml
//! [witness]
//! name = "w"                       # its voter name in every cluster (the nodes' [witness] name)
//! state_dir = "/var/lib/tandem-witness"   # default
//! listen = "0.0.0.0"               # default; the address to bind (the port is per cluster)
//!
//! [[cluster]]
//! name = "lab"                     # the nodes' [cluster] name
//! key_file = "/etc/tandem/lab.key" # or key = "..." (>= 16 characters), as in tandem.toml
//! port = 5405                      # the cluster's heartbeat port: bound here, sent to
//! interval = "200ms"               # the cluster's [heartbeat] interval and dead_time
//! dead_time = "1s"
//! lease = "1500ms"                 # the nodes' [quorum] lease and drift_ppm
//! drift_ppm = 10000
//! [cluster.nodes]                  # node name -> its addresses the witness can reach
//! n1 = ["10.0.0.1"]
//! n2 = ["10.0.0.2"]
//! ```
//!
//! `interval`, `dead_time`, `port`, `lease` and `drift_ppm` default as in `tandem.toml`;
//! they must be the nodes' values, since every voter derives its raft timing and lease
//! rules from them. Two clusters may not share a port. The node names plus the witness
//! name must be the nodes' voter list (their `[[node]]` names and `[witness] name`):
//! datagrams from a voter with another list are dropped.
//!
//! # Runtime
//!
//! Per cluster one task, in its own `tracing` span: a raft tick every 10 ms, a lease
//! round every heartbeat interval, and the datagrams on its socket (authenticated with
//! the cluster key; copies from the other paths dropped). The core's actions are carried
//! out in order: log writes (fsync) before the messages that depend on them; the
//! messages, coalesced per voter by [`Outbox`], go to every address of the node at the
//! cluster port. When a write fails the witness stops sending for that cluster (it then
//! counts as down; the nodes carry on if they are a majority). SIGTERM or SIGINT ends
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::{self, ConfigError, QuorumSection, MIN_INTERVAL};
use crate::quorum::core::{QuorumAction, QuorumConfig, QuorumCore, QuorumError, QuorumTiming};
use crate::quorum::decision::{Applied, Decision};
use crate::quorum::disk::{DiskError, DurableLog};
use crate::quorum::outbox::{Outbox, Outgoing, Refused};
use crate::quorum::wire::{self, Dedup, QuorumPacket, MAX_DATAGRAM};

/// The raft tick of every cluster.
const TICK: Duration = Duration::from_millis(10);
/// The longest name on the wire (cluster and voter names).
const MAX_NAME: usize = wire::MAX_NAME_LEN;

/// Why the witness cannot start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cluster `{cluster}`: cannot create the state directory {path}: {source}")]
    StateDir {
        cluster: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster `{cluster}`: consensus log: {source}")]
    Log { cluster: String, source: DiskError },
    #[error("cluster `{cluster}`: {source}")]
    Quorum {
        cluster: String,
        source: QuorumError,
    },
    #[error("cluster `{cluster}`: cannot bind {addr}: {source}")]
    Bind {
        cluster: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the signal handler: {0}")]
    Signal(std::io::Error),
}

/// The witness's configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    pub witness: WitnessSection,
    #[serde(rename = "cluster", default)]
    pub clusters: Vec<ClusterEntry>,
}

/// `[witness]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    /// The witness's voter name in every cluster.
    pub name: String,
    /// Each cluster's durable log lives in `state_dir/<cluster>/`.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The address every cluster's socket binds (the port is the cluster's).
    #[serde(default = "default_listen")]
    pub listen: IpAddr,
}

/// `[[cluster]]`: one cluster the witness votes in.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterEntry {
    pub name: String,
    /// The cluster key (at least 16 characters). Either this or `key_file`.
    #[serde(default)]
    pub key: Option<String>,
    /// A file whose contents (trimmed) are the cluster key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The cluster's heartbeat port: bound on `witness.listen`, and sent to.
    #[serde(default = "config::default_port")]
    pub port: u16,
    #[serde(with = "humantime_serde", default = "config::default_interval")]
    pub interval: Duration,
    #[serde(with = "humantime_serde", default = "config::default_dead_time")]
    pub dead_time: Duration,
    /// The nodes' `[quorum] lease`.
    #[serde(with = "humantime_serde", default = "default_lease")]
    pub lease: Duration,
    /// The nodes' `[quorum] drift_ppm`.
    #[serde(default = "default_drift_ppm")]
    pub drift_ppm: u64,
    /// Node name -> its addresses (every heartbeat path the witness reaches it on).
    #[serde(default)]
    pub nodes: BTreeMap<String, Vec<IpAddr>>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/tandem-witness")
}

fn default_listen() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

fn default_lease() -> Duration {
    QuorumSection::default().lease
}

fn default_drift_ppm() -> u64 {
    QuorumSection::default().drift_ppm
}

impl WitnessConfig {
    /// Reads, parses and validates a witness configuration file.
    pub fn load(path: &Path) -> Result<WitnessConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        WitnessConfig::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates configuration text.
    pub fn parse(text: &str) -> Result<WitnessConfig, ConfigError> {
        let cfg: WitnessConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every rule that spans fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = &self.witness;
        if w.name.is_empty() || w.name.len() > MAX_NAME {
            return Err(config::invalid(
                "witness.name",
                format!("must be 1 to {MAX_NAME} characters"),
            ));
        }
        if self.clusters.is_empty() {
            return Err(config::invalid(
                "cluster",
                "at least one [[cluster]] is required",
            ));
        }
        config::unique(self.clusters.iter().map(|c| &c.name), "cluster.name")?;
        let mut ports: BTreeMap<u16, &str> = BTreeMap::new();
        for (i, c) in self.clusters.iter().enumerate() {
            let key = format!("cluster[{i}]");
            self.check_cluster(&key, c)?;
            if let Some(other) = ports.insert(c.port, &c.name) {
                return Err(config::invalid(
                    format!("{key}.port"),
                    format!(
                        "port {} is also cluster `{other}`'s: each cluster needs its own port",
                        c.port
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One `[[cluster]]` (`key` is `cluster[i]`): name, key, timing, nodes.
    fn check_cluster(&self, key: &str, c: &ClusterEntry) -> Result<(), ConfigError> {
        // The name is also a directory under state_dir.
        let dir_safe = c
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_' || ch == '.')
            && !c.name.starts_with('.');
        if c.name.is_empty() || c.name.len() > MAX_NAME || !dir_safe {
            return Err(config::invalid(
                format!("{key}.name"),
                format!(
                    "`{}` must be 1 to {MAX_NAME} characters of [A-Za-z0-9._-], not starting with `.` \
                     (it names a directory in witness.state_dir)",
                    c.name
                ),
            ));
        }
        config::check_key(c.key.as_deref(), c.key_file.as_deref(), key)?;
        if c.port == 0 {
            return Err(config::invalid(format!("{key}.port"), "must not be 0"));
        }
        check_timing(key, c)?;
        if c.nodes.len() < 2 {
            return Err(config::invalid(
                format!("{key}.nodes"),
                "name the cluster's nodes (two or more) and their addresses",
            ));
        }
        for (n, addrs) in &c.nodes {
            let nk = format!("{key}.nodes.{n}");
            config::check_name(n, &nk)?;
            if *n == self.witness.name {
                return Err(config::invalid(nk, "is also the witness's name"));
            }
            if addrs.is_empty() {
                return Err(config::invalid(nk, "give at least one address"));
            }
            if let Some(a) = addrs
                .iter()
                .find(|a| a.is_ipv4() != self.witness.listen.is_ipv4())
            {
                return Err(config::invalid(
                    nk,
                    format!(
                        "{a} is not of witness.listen's address family ({})",
                        self.witness.listen
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A cluster's interval, dead time, lease and drift bound.
fn check_timing(key: &str, c: &ClusterEntry) -> Result<(), ConfigError> {
    if c.interval < MIN_INTERVAL {
        return Err(config::invalid(
            format!("{key}.interval"),
            "must be at least 50ms",
        ));
    }
    if c.dead_time < c.interval * 3 {
        return Err(config::invalid(
            format!("{key}.dead_time"),
            format!("must be at least 3 x interval ({:?})", c.interval * 3),
        ));
    }
    if c.drift_ppm > 100_000 {
        return Err(config::invalid(
            format!("{key}.drift_ppm"),
            "must be at most 100000 (10 %)",
        ));
    }
    let min_lease = c.interval + Duration::from_millis(200);
    if c.lease < min_lease {
        return Err(config::invalid(
            format!("{key}.lease"),
            format!(
                "must be at least interval + 200ms = {} ms (and equal the nodes' [quorum] lease)",
                min_lease.as_millis()
            ),
        ));
    }
    Ok(())
}

impl ClusterEntry {
    /// The cluster key (`key`, or the contents of `key_file`).
    pub fn key_bytes(&self, index: usize) -> Result<Vec<u8>, ConfigError> {
        config::key_bytes(
            self.key.as_deref(),
            self.key_file.as_deref(),
            &format!("cluster[{index}]"),
        )
    }

    /// Every voter of the cluster: its nodes, then the witness.
    pub fn voters(&self, witness: &str) -> Vec<String> {
        let mut v: Vec<String> = self.nodes.keys().cloned().collect();
        v.push(witness.to_string());
        v
    }

    /// The consensus settings of the witness in this cluster, derived exactly as a
    /// node derives its own.
    pub fn quorum_config(&self, witness: &str) -> QuorumConfig {
        QuorumConfig::derive(
            QuorumTiming {
                interval: self.interval,
                dead_time: self.dead_time,
                lease: self.lease,
                drift_ppm: self.drift_ppm,
            },
            self.voters(witness),
            Some(witness.to_string()),
            witness,
        )
    }
}

/// Runs the witness until SIGTERM or SIGINT: every cluster is set up first (an error in
/// any stops the start), then each runs in its own task.
pub async fn run(cfg: WitnessConfig) -> Result<(), WitnessError> {
    let started = Instant::now();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(WitnessError::Signal)?;
    let mut voters = Vec::new();
    for (i, c) in cfg.clusters.iter().enumerate() {
        voters.push(Voter::start(&cfg.witness, i, c, started).await?);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for v in voters {
        let span = tracing::info_span!("witness", cluster = %v.cluster, port = v.port);
        tasks.push(tokio::spawn(v.serve(stop_rx.clone()).instrument(span)));
    }
    tracing::info!(
        witness = %cfg.witness.name,
        clusters = cfg.clusters.len(),
        "witness running"
    );
    tokio::select! {
        _ = sigterm.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("witness stopping");
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// The witness in one cluster.
struct Voter {
    cluster: String,
    key: Vec<u8>,
    port: u16,
    interval: Duration,
    nodes: BTreeMap<String, Vec<IpAddr>>,
    core: QuorumCore,
    /// `None` after a write failed: the witness then stays silent in this cluster.
    log: Option<DurableLog>,
    sock: Arc<UdpSocket>,
    outbox: Outbox,
    dedup: Dedup,
    started: Instant,
    /// Datagrams dropped, by reason.
    dropped: BTreeMap<&'static str, u64>,
    /// Senders already warned about for a foreign voter list.
    foreign: BTreeSet<String>,
    /// The leader last followed and its term (logged when it changes).
    leader: Option<(String, u64)>,
}

impl Voter {
    /// Opens the cluster's durable log, restores its core from it and binds its socket.
    async fn start(
        w: &WitnessSection,
        index: usize,
        c: &ClusterEntry,
        started: Instant,
    ) -> Result<Voter, WitnessError> {
        let key = c.key_bytes(index)?;
        let dir = w.state_dir.join(&c.name);
        std::fs::create_dir_all(&dir).map_err(|source| WitnessError::StateDir {
            cluster: c.name.clone(),
            path: dir.clone(),
            source,
        })?;
        let (log, restored) = DurableLog::open(&dir).map_err(|source| WitnessError::Log {
            cluster: c.name.clone(),
            source,
        })?;
        let qcfg = c.quorum_config(&w.name);
        let digest = wire::voters_digest(&qcfg.voters);
        let now_ms = started.elapsed().as_millis() as u64;
        let core = QuorumCore::new(qcfg, &restored, now_ms, rand::random()).map_err(|source| {
            WitnessError::Quorum {
                cluster: c.name.clone(),
                source,
            }
        })?;
        let addr = SocketAddr::new(w.listen, c.port);
        let sock = UdpSocket::bind(addr)
            .await
            .map_err(|source| WitnessError::Bind {
                cluster: c.name.clone(),
                addr,
                source,
            })?;
        Ok(Voter {
            cluster: c.name.clone(),
            key,
            port: c.port,
            interval: c.interval,
            nodes: c.nodes.clone(),
            core,
            log: Some(log),
            sock: Arc::new(sock),
            outbox: Outbox::new(&c.name, &w.name, digest, rand::random()),
            dedup: Dedup::default(),
            started,
            dropped: BTreeMap::new(),
            foreign: BTreeSet::new(),
            leader: None,
        })
    }

    /// Ticks, lease rounds and datagrams until `stop` turns true.
    async fn serve(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(
            voters = %self.core.config().voters.join(","),
            "voting"
        );
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut round = tokio::time::interval(self.interval);
        round.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let sock = self.sock.clone();
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            tokio::select! {
                _ = tick.tick() => self.call(|q, now, o| q.tick(now, o)),
                _ = round.tick() => self.call(|q, now, o| q.lease_round(now, o)),
                r = sock.recv_from(&mut buf) => match r {
                    Ok((n, from)) => self.datagram(&buf[..n], from),
                    Err(e) => tracing::debug!(error = %e, "receive failed"),
                },
                _ = stop.changed() => break,
            }
            self.watch_leader();
        }
        tracing::info!(dropped = ?self.dropped, "stopped");
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// One received datagram: authenticate, filter, step.
    fn datagram(&mut self, buf: &[u8], from: SocketAddr) {
        let p = if buf.len() > MAX_DATAGRAM {
            Err("too_large")
        } else {
            wire::decode(buf, &self.key, &self.cluster).map_err(|e| e.reason())
        };
        let p = match p {
            Ok(p) => p,
            Err(reason) => return self.drop_counted(reason, from),
        };
        match self.outbox.admit(&mut self.dedup, &p) {
            Ok(()) => {}
            Err(Refused::Duplicate) => return,
            Err(Refused::ForeignVoters) => {
                if self.foreign.insert(p.from.clone()) {
                    tracing::warn!(
                        voter = %p.from,
                        %from,
                        "datagrams from a voter with another voter list are dropped: \
                         compare its [[node]] names and [witness] name with this cluster's nodes"
                    );
                }
                return self.drop_counted("foreign_voters", from);
            }
        }
        let QuorumPacket {
            from: voter,
            sent_ms,
            msgs,
            ..
        } = p;
        self.call(|q, now, o| q.step(now, &voter, sent_ms, msgs, o));
    }

    fn drop_counted(&mut self, reason: &'static str, from: SocketAddr) {
        let n = self.dropped.entry(reason).or_default();
        *n += 1;
        tracing::debug!(%from, reason, count = *n, "datagram dropped");
    }

    /// Calls into the quorum core and carries out what it returns, in order.
    fn call(&mut self, f: impl FnOnce(&mut QuorumCore, u64, &mut Vec<QuorumAction>)) {
        let now = self.now_ms();
        let mut actions = Vec::new();
        f(&mut self.core, now, &mut actions);
        // The witness writes in line: each write is durable when `persist` returns,
        // and reporting it releases what waited for it.
        while !actions.is_empty() {
            let mut written = Vec::new();
            for o in self.outbox.coalesce(now, std::mem::take(&mut actions)) {
                match o {
                    Outgoing::Persist { batch, write } => {
                        if self.persist(&batch) {
                            written.push(write);
                        }
                    }
                    Outgoing::Send { to, packet } => self.send(&to, &packet),
                    Outgoing::Applied(a) => log_applied(&a),
                }
            }
            for w in written {
                self.core.persisted(now, w, &mut actions);
            }
        }
    }

    /// Writes `batch` durably; false if it is not (then this witness stops voting).
    fn persist(&mut self, batch: &crate::quorum::records::PersistBatch) -> bool {
        let Some(log) = &mut self.log else {
            return false;
        };
        if let Err(e) = log.write(batch) {
            tracing::error!(
                error = %e,
                dir = %log.dir().display(),
                "cannot write the consensus log; the witness stops voting in this cluster"
            );
            self.log = None;
            return false;
        }
        true
    }

    /// Sends a datagram to every address of node `to` at the cluster's port.
    fn send(&self, to: &str, p: &QuorumPacket) {
        if self.log.is_none() {
            return;
        }
        let Some(addrs) = self.nodes.get(to) else {
            tracing::debug!(%to, "no address for this voter");
            return;
        };
        let bytes = match wire::encode(p, &self.key) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a quorum datagram");
                return;
            }
        };
        for a in addrs {
            let dest = SocketAddr::new(*a, self.port);
            if let Err(e) = self.sock.try_send_to(&bytes, dest) {
                tracing::trace!(%dest, error = %e, "send failed");
            }
        }
    }

    /// Logs the leader this witness follows when it changes.
    fn watch_leader(&mut self) {
        let now = self
            .core
            .leader()
            .map(|l| (l.to_string(), self.core.term()));
        if now != self.leader {
            match &now {
                Some((l, term)) => tracing::info!(leader = %l, term, "following a leader"),
                None => tracing::info!(term = self.core.term(), "no leader"),
            }
            self.leader = now;
        }
    }
}

fn log_applied(a: &Applied) {
    match a {
        Applied::Changed(Decision::Own {
            group,
            owner,
            epoch,
            ..
        }) => tracing::info!(%group, %owner, epoch, "ownership committed"),
        Applied::Changed(d) => tracing::info!(decision = ?d, "decision committed"),
        Applied::Stale(d) => tracing::debug!(decision = ?d, "stale decision"),
    }
}

#[cfg(test)]
mod tests;
