//! `tandem bench snmp`: how fast a manager walks the whole tree of Tandem's agent,
//! compared with net-snmp's `snmpd` on the same host.
//!
//! Sizing: `snmpd` (started here on a loopback port with a generated minimal config)
//! is walked first; its whole-tree varbind count (host resources, interfaces, IP,
//! net-snmp's own MIBs: about 5,000 to 10,000 on a Debian host) sets the size of a
//! synthetic status snapshot (many groups with resources and VIPs, at least 5,000
//! varbinds) that a standalone Tandem agent serves on loopback. Both are walked with
//! `snmpbulkwalk -v2c -Cr50` of `.1`, several times; the medians are compared.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use tokio::sync::watch;

use crate::api::{NodeStatus, PathStatusView, ResourceView, Status, VipView};
use crate::cluster::packet::LocalGroupState;
use crate::config::{CommunityConfig, SnmpConfig};
use crate::placement::policy::GroupStatus;
use crate::snmp::mib::{MibView, SystemInfo};
use crate::snmp::SnmpError;

/// The community both agents answer.
const COMMUNITY: &str = "bench";
/// The smallest tree the benchmark walks.
const MIN_VARBINDS: usize = 5_000;
/// Nodes in the synthetic cluster (each with two heartbeat paths to every peer).
const NODES: usize = 16;

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
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map_err(|e| SnmpBenchError::Io("free udp port".into(), e))?
            .port();
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

/// A cluster snapshot with `groups` groups of three resources (one a VIP) each.
pub fn synthetic_status(groups: usize) -> Status {
    let node_name = |i: usize| format!("node{i:02}");
    let nodes = (0..NODES)
        .map(|i| NodeStatus {
            name: node_name(i),
            priority: i as u32 + 1,
            local: i == 0,
            alive: true,
            standby: false,
            boot_id: format!("{:016x}", 0xb007 + i),
            last_heard_ms_ago: Some(40),
            paths_up: 2,
        })
        .collect();
    let paths = (1..NODES)
        .flat_map(|i| {
            ["hb1", "hb2"].map(|p| PathStatusView {
                peer: node_name(i),
                path: p.into(),
                up: true,
                last_heard_ms_ago: Some(40),
                rtt_ms: Some(0.3),
            })
        })
        .collect();
    let group_name = |g: usize| format!("group{g:04}");
    let group_status = (0..groups)
        .map(|g| GroupStatus {
            name: group_name(g),
            owner: Some(node_name(g % NODES)),
            epoch: 1 + g as u64,
            maintenance: false,
            local_state: if g % NODES == 0 {
                LocalGroupState::Running
            } else {
                LocalGroupState::Stopped
            },
            blocked: false,
            recent_failures: 0,
            states: Default::default(),
            summary: "running".into(),
        })
        .collect();
    let mut resources = Vec::new();
    let mut vips = Vec::new();
    for g in 0..groups {
        for (name, kind) in [("vip", "ip"), ("fs", "exec"), ("app", "process")] {
            resources.push(ResourceView {
                group: group_name(g),
                name: name.into(),
                kind: kind.into(),
                state: "running".into(),
            });
        }
        vips.push(VipView {
            group: group_name(g),
            resource: "vip".into(),
            address: format!("10.{}.{}.10/24", g / 256, g % 256),
            interface: "eth0".into(),
            present: g % NODES == 0,
        });
    }
    Status {
        cluster: "bench".into(),
        node: node_name(0),
        uptime_ms: 3_600_000,
        last_seq: 1000,
        mode: "priority".into(),
        nodes,
        paths,
        groups: group_status,
        resources,
        vips,
        ..Status::default()
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
        engine_id: None,
        contact: String::new(),
        location: String::new(),
        allow_no_auth_no_priv: false,
        communities: vec![CommunityConfig {
            name: COMMUNITY.into(),
            source: "127.0.0.0/8".into(),
        }],
        users: Vec::new(),
        receivers: Vec::new(),
    };
    let (_status_tx, status_rx) = watch::channel(status);
    let engine = crate::snmp::Engine::load(&cfg, "bench", "node00", dir, Instant::now())?;
    let agent = runtime.block_on(crate::snmp::agent::spawn(&cfg, &engine, status_rx))?;
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
    Ok(())
}
