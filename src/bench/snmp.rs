//! `tandem bench snmp`: how fast a manager walks the whole tree of Tandem's agent,
//! compared with net-snmp's `snmpd` on the same host.
//!
//! Sizing: `snmpd` (started here on a loopback port with a generated minimal config)
//! is walked first; its whole-tree varbind count (host resources, interfaces, IP,
//! net-snmp's own MIBs: about 5,000 to 10,000 on a Debian host) sets the size of a
//! synthetic status snapshot (many groups with resources and VIPs, at least 5,000
//! varbinds) that a standalone Tandem agent serves on loopback. Both are walked with
//! `snmpbulkwalk -v2c -Cr50` of `.1`, several times; the medians are compared.
//!
//! Latency: a real `snmptrapd` on two loopback ports receives the notifications of an
//! in-memory event log through [`spawn_notifier`] (a v2c trap receiver on one port, a
//! v2c inform receiver on the other, mapped with [`notification_for`]). Each event's
//! latency runs from `emit` to the moment the benchmark reads snmptrapd's line for it
//! from the pipe (snmptrapd's own timestamps have whole seconds only).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::watch;

use crate::config::{CommunityConfig, ReceiverConfig, ReceiverForm, SnmpConfig};
use crate::event::{fields, Event, EventKind, EventLog, Fields};
use crate::snmp::mib::{notification_for, MibView, SystemInfo};
use crate::snmp::notify::spawn_notifier;
use crate::snmp::synthetic::{synthetic_status, NODES};
use crate::snmp::SnmpError;
use crate::status::Status;

/// The community both agents answer.
const COMMUNITY: &str = "bench";
/// The smallest tree the benchmark walks.
const MIN_VARBINDS: usize = 5_000;
/// Events emitted for the latency measurement, and the pause between two.
const LATENCY_EVENTS: u64 = 200;
const LATENCY_SPACING: Duration = Duration::from_millis(5);
/// How long the notifications of the last event may take to arrive.
const LATENCY_WAIT: Duration = Duration::from_secs(15);
/// The goal for event-to-receiver latency.
const LATENCY_GOAL: Duration = Duration::from_millis(50);

/// `tandem bench snmp`
#[derive(Debug, Args)]
pub struct SnmpBenchArgs {
    /// Walks per agent; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

/// Errors of the SNMP benchmark.
#[derive(Debug, thiserror::Error)]
pub enum SnmpBenchError {
    #[error("cannot run `{0}`: {1} (scripts/deps.sh installs net-snmp)")]
    Spawn(String, std::io::Error),
    #[error("`{0}` failed: {1}")]
    Tool(String, String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error(transparent)]
    Agent(#[from] SnmpError),
}

/// One walk: how long it took and how many varbinds came back.
#[derive(Debug, Clone, Copy)]
struct Walk {
    elapsed: Duration,
    varbinds: usize,
}

/// Walks `.1` at `target` with GETBULK, 50 repetitions per request.
fn bulk_walk(target: &str) -> Result<Walk, SnmpBenchError> {
    let cmd = format!("snmpbulkwalk -v2c -c {COMMUNITY} -Cr50 -On -Oq {target} .1");
    let t = Instant::now();
    let out = Command::new("snmpbulkwalk")
        .args([
            "-v2c", "-c", COMMUNITY, "-Cr50", "-On", "-Oq", "-t", "5", "-r", "0",
        ])
        .arg(target)
        .arg(".1")
        .env("MIBS", "")
        .output()
        .map_err(|e| SnmpBenchError::Spawn(cmd.clone(), e))?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        return Err(SnmpBenchError::Tool(
            cmd,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let varbinds = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('.'))
        .count();
    Ok(Walk { elapsed, varbinds })
}

/// The median walk of `runs` walks (after one warm-up walk).
fn median_walk(target: &str, runs: usize) -> Result<Walk, SnmpBenchError> {
    bulk_walk(target)?;
    let mut walks = (0..runs.max(1))
        .map(|_| bulk_walk(target))
        .collect::<Result<Vec<_>, _>>()?;
    walks.sort_by_key(|w| w.elapsed);
    Ok(walks[walks.len() / 2])
}

/// net-snmp's agent on a loopback port, stopped on drop.
struct Snmpd {
    child: Child,
    target: String,
}

impl Snmpd {
    fn start(dir: &Path) -> Result<Snmpd, SnmpBenchError> {
        let port = free_udp_port()?;
        let target = format!("127.0.0.1:{port}");
        // snmpd rewrites `snmpd.conf` in its persistent directory: keep ours apart.
        let conf = dir.join("bench-snmpd.conf");
        let persistent = dir.join("snmpd-state");
        std::fs::create_dir_all(&persistent)
            .map_err(|e| SnmpBenchError::Io(format!("create {}", persistent.display()), e))?;
        let text = format!("agentaddress udp:{target}\nrocommunity {COMMUNITY} 127.0.0.1\n");
        std::fs::write(&conf, text)
            .map_err(|e| SnmpBenchError::Io(format!("write {}", conf.display()), e))?;
        let child = Command::new("/usr/sbin/snmpd")
            .args(["-C", "-c"])
            .arg(&conf)
            .args(["-Lf", "/dev/null", "-f", "-r"])
            .env("SNMP_PERSISTENT_DIR", &persistent)
            .env("MIBS", "")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| SnmpBenchError::Spawn("/usr/sbin/snmpd".into(), e))?;
        let snmpd = Snmpd { child, target };
        let t = Instant::now();
        while agent_answers(&snmpd.target).is_err() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(SnmpBenchError::Tool(
                    "snmpd".into(),
                    "did not answer within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(snmpd)
    }
}

impl Drop for Snmpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> Result<u16, SnmpBenchError> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| SnmpBenchError::Io("free udp port".into(), e))?
        .port())
}

/// net-snmp's notification receiver on two loopback ports, stopped on drop. Every
/// line it prints is kept with the instant the benchmark read it.
struct Snmptrapd {
    child: Child,
    ports: [u16; 2],
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Snmptrapd {
    fn start(dir: &Path) -> Result<Snmptrapd, SnmpBenchError> {
        let ports = [free_udp_port()?, free_udp_port()?];
        let conf = dir.join("bench-snmptrapd.conf");
        let persistent = dir.join("snmptrapd-state");
        std::fs::create_dir_all(&persistent)
            .map_err(|e| SnmpBenchError::Io(format!("create {}", persistent.display()), e))?;
        std::fs::write(&conf, format!("authCommunity log {COMMUNITY}\n"))
            .map_err(|e| SnmpBenchError::Io(format!("write {}", conf.display()), e))?;
        let listen = format!("udp:127.0.0.1:{},udp:127.0.0.1:{}", ports[0], ports[1]);
        // One line per notification: the transport (with our port), then the varbinds.
        let mut child = Command::new("/usr/sbin/snmptrapd")
            .args(["-f", "-n", "-Lo", "-On", "-C", "-c"])
            .arg(&conf)
            .args(["-F", "%b\t%v\n", &listen])
            .env("SNMP_PERSISTENT_DIR", &persistent)
            .env("MIBS", "")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| SnmpBenchError::Spawn("/usr/sbin/snmptrapd".into(), e))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let sink = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let at = Instant::now();
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((at, line));
                }
            });
        }
        let trapd = Snmptrapd {
            child,
            ports,
            lines,
        };
        // It prints its version once it listens.
        let t = Instant::now();
        while !trapd
            .lines()
            .iter()
            .any(|(_, l)| l.contains("NET-SNMP version"))
        {
            if t.elapsed() > Duration::from_secs(10) {
                return Err(SnmpBenchError::Tool(
                    "snmptrapd".into(),
                    "did not start within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(trapd)
    }

    fn lines(&self) -> Vec<(Instant, String)> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// When each notification arrived on `port`, by the event's seq (`seq_oid` is
    /// tandemEventSeq.0, dotted as `-On` prints it). The first arrival counts.
    fn arrivals(&self, port: u16, seq_oid: &str) -> BTreeMap<u64, Instant> {
        let to = format!("->[127.0.0.1]:{port}\t");
        let prefix = format!("{seq_oid} = ");
        let mut seen = BTreeMap::new();
        for (at, line) in self.lines() {
            if !line.contains(&to) {
                continue;
            }
            let seq = line
                .split('\t')
                .find_map(|vb| vb.strip_prefix(prefix.as_str()))
                .and_then(|v| v.rsplit(' ').next()?.parse().ok());
            if let Some(seq) = seq {
                seen.entry(seq).or_insert(at);
            }
        }
        seen
    }
}

impl Drop for Snmptrapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET of sysUpTime.0: does the agent answer yet?
fn agent_answers(target: &str) -> Result<(), SnmpBenchError> {
    let out = Command::new("snmpget")
        .args(["-v2c", "-c", COMMUNITY, "-t", "0.3", "-r", "0", target])
        .arg(".1.3.6.1.2.1.1.3.0")
        .env("MIBS", "")
        .output()
        .map_err(|e| SnmpBenchError::Spawn("snmpget".into(), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SnmpBenchError::Tool("snmpget".into(), "no answer".into()))
    }
}

/// The synthetic snapshot with at least `varbinds` instances (and at least 5,000).
fn status_of_size(varbinds: usize) -> Status {
    let target = varbinds.max(MIN_VARBINDS);
    let system = SystemInfo::default();
    let base = MibView::build(&synthetic_status(0), &system).len();
    let per_group = MibView::build(&synthetic_status(1), &system).len() - base;
    synthetic_status(target.saturating_sub(base).div_ceil(per_group))
}

/// Runs the benchmark and prints the comparison.
pub fn run(args: &SnmpBenchArgs) -> Result<(), SnmpBenchError> {
    let dir = std::env::temp_dir().join(format!("tandem-bench-snmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| SnmpBenchError::Io(format!("create {}", dir.display()), e))?;
    let result = compare(args, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn compare(args: &SnmpBenchArgs, dir: &Path) -> Result<(), SnmpBenchError> {
    let snmpd = Snmpd::start(dir)?;
    let net_snmp = median_walk(&snmpd.target, args.runs)?;
    drop(snmpd);

    let status = status_of_size(net_snmp.varbinds);
    let groups = status.groups.len();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| SnmpBenchError::Io("async runtime".into(), e))?;
    let cfg = SnmpConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        communities: vec![CommunityConfig {
            name: COMMUNITY.into(),
            source: "127.0.0.0/8".into(),
        }],
        ..SnmpConfig::default()
    };
    let (_status_tx, status_rx) = watch::channel(status);
    let engine = crate::snmp::Engine::load(&cfg, "bench", "node00", dir, Instant::now())?;
    let agent = runtime.block_on(crate::snmp::agent::spawn(&cfg, &engine, status_rx, None))?;
    let tandem = median_walk(&agent.local_addr().to_string(), args.runs)?;
    drop(agent);

    let rate = |w: &Walk| w.varbinds as f64 / w.elapsed.as_secs_f64();
    println!(
        "snmpbulkwalk -v2c -Cr50 of the whole tree, median of {} walks \
         (tandem: synthetic cluster of {} nodes and {} groups, sized to snmpd's tree):",
        args.runs.max(1),
        NODES,
        groups
    );
    for (name, w) in [("tandem", &tandem), ("net-snmp snmpd", &net_snmp)] {
        println!(
            "  {name:<15} {:>6} varbinds  {:>8.1} ms  {:>8.0} varbinds/s",
            w.varbinds,
            w.elapsed.as_secs_f64() * 1000.0,
            rate(w)
        );
    }
    println!(
        "  time ratio tandem/snmpd: {:.2}   throughput ratio tandem/snmpd: {:.2}",
        tandem.elapsed.as_secs_f64() / net_snmp.elapsed.as_secs_f64(),
        rate(&tandem) / rate(&net_snmp)
    );
    latency(dir, &runtime)
}

/// The latency from `emit` to snmptrapd's line, for a trap and an inform receiver.
fn latency(dir: &Path, runtime: &tokio::runtime::Runtime) -> Result<(), SnmpBenchError> {
    let trapd = Snmptrapd::start(dir)?;
    let receiver = |port: u16, form: ReceiverForm| ReceiverConfig {
        address: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        form,
        community: Some(COMMUNITY.into()),
        user: None,
        queue: 10_000,
        timeout: Duration::from_millis(500),
        max_timeout: Duration::from_secs(8),
    };
    let forms = [
        ("v2c trap", ReceiverForm::V2cTrap),
        ("v2c inform", ReceiverForm::V2cInform),
    ];
    let cfg = SnmpConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        receivers: (0..2)
            .map(|i| receiver(trapd.ports[i], forms[i].1))
            .collect(),
        ..SnmpConfig::default()
    };
    let engine = crate::snmp::Engine::load(&cfg, "bench", "node00", dir, Instant::now())?;
    let log = EventLog::in_memory("node00");
    let notifier = {
        let _in_runtime = runtime.enter();
        spawn_notifier(
            &cfg,
            engine.id.clone(),
            engine.boots,
            log.clone(),
            Box::new(notification_for),
            engine.start,
        )
    };
    let seq_oid = seq_varbind_oid();
    let emitted = emit_quietly(&log);
    let t = Instant::now();
    while t.elapsed() < LATENCY_WAIT
        && trapd
            .ports
            .iter()
            .any(|p| trapd.arrivals(*p, &seq_oid).len() < emitted.len())
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(notifier);

    println!(
        "event -> snmptrapd line, {} events {} ms apart (goal: median and p99 under {} ms):",
        LATENCY_EVENTS,
        LATENCY_SPACING.as_millis(),
        LATENCY_GOAL.as_millis()
    );
    for (i, (name, _)) in forms.iter().enumerate() {
        print_latency(name, &emitted, &trapd.arrivals(trapd.ports[i], &seq_oid));
    }
    Ok(())
}

/// The OID of the first varbind of a notification (the event's seq), dotted.
fn seq_varbind_oid() -> String {
    let sample = Event {
        seq: 0,
        node: String::new(),
        time_ms: 0,
        kind: EventKind::NodeDown,
        fields: Fields::new(),
    };
    notification_for(&sample)
        .and_then(|n| n.varbinds.first().map(|v| v.name.clone()))
        .map(|oid| oid.iter().map(|a| format!(".{a}")).collect())
        .unwrap_or_default()
}

/// Emits the latency events into `log`, spaced out; returns when each went out, by seq.
fn emit_quietly(log: &EventLog) -> BTreeMap<u64, Instant> {
    // Each emit logs the event: not on the benchmark's terminal.
    let quiet = tracing::subscriber::NoSubscriber::default();
    tracing::subscriber::with_default(quiet, || {
        let mut emitted = BTreeMap::new();
        for _ in 0..LATENCY_EVENTS {
            let at = Instant::now();
            let e = log.emit(EventKind::NodeDown, fields([("peer", "node01".into())]));
            emitted.insert(e.seq, at);
            std::thread::sleep(LATENCY_SPACING);
        }
        emitted
    })
}

/// One receiver's line: how many events arrived, the median and p99 latency.
fn print_latency(name: &str, emitted: &BTreeMap<u64, Instant>, arrived: &BTreeMap<u64, Instant>) {
    let mut ms: Vec<f64> = emitted
        .iter()
        .filter_map(|(seq, at)| Some(arrived.get(seq)?.duration_since(*at).as_secs_f64() * 1e3))
        .collect();
    ms.sort_by(f64::total_cmp);
    let pick = |q: usize| ms.get((ms.len() * q / 100).min(ms.len().saturating_sub(1)));
    match (pick(50), pick(99)) {
        (Some(median), Some(p99)) => println!(
            "  {name:<11} {:>4}/{} received  median {median:>7.2} ms  p99 {p99:>7.2} ms  {}",
            ms.len(),
            emitted.len(),
            if *p99 <= LATENCY_GOAL.as_secs_f64() * 1e3 {
                "within goal"
            } else {
                "OVER GOAL"
            }
        ),
        _ => println!("  {name:<11}    0/{} received", emitted.len()),
    }
}
