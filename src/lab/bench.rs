//! `tandem lab bench failover`: repeatedly power-kill whichever node serves
//! the VIP and measure, from a client on the public LAN, how long the
//! service is unreachable. Runs the same experiment on an identical lab
//! running keepalived and prints both side by side.
//!
//! Per trial, with t0 = the instant the owner's links start going down:
//! * detection: t0 -> the survivor's `node_down` event (Tandem only);
//! * VIP up: t0 -> the VIP becomes a local address on the survivor;
//! * total: t0 -> the first HTTP answer from a different node, probing the
//!   VIP every 10 ms from the client namespace.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod probes;

use clap::{Args, Subcommand, ValueEnum};
use tracing::{debug, warn};

use super::{
    keepalived, net, probe, topology, Engine, LabError, LabState, Switchback, Teardown, UpArgs,
};

/// `tandem lab bench ...`
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Power-kill the VIP owner K times; Tandem vs keepalived failover time.
    Failover(FailoverArgs),
}

/// Which labs the failover bench runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arms {
    /// Tandem, then keepalived (if installed).
    Both,
    /// Tandem only.
    Tandem,
    /// keepalived only.
    Keepalived,
}

/// Options of `lab bench failover`.
#[derive(Debug, Clone, Args)]
pub struct FailoverArgs {
    /// Failovers per arm.
    #[arg(long, default_value_t = 5)]
    pub trials: usize,
    /// Tandem heartbeat interval in ms (also keepalived's advert_int unless
    /// --keepalived-interval is given).
    #[arg(long, default_value_t = 200)]
    pub interval: u64,
    /// Tandem dead time in ms (default: 5 intervals; at least 3). keepalived's
    /// equivalent is 3 x advert_int + skew.
    #[arg(long)]
    pub dead_time: Option<u64>,
    /// keepalived advert_int in ms (default: --interval).
    #[arg(long)]
    pub keepalived_interval: Option<u64>,
    /// Which arms to run.
    #[arg(long, value_enum, default_value_t = Arms::Both)]
    pub arms: Arms,
    /// Tandem binary (default: this executable).
    #[arg(long)]
    pub tandem_bin: Option<PathBuf>,
    /// Base of the lab directories (`<dir>-tandem`, `<dir>-keepalived`).
    #[arg(long, default_value = "/run/tandem-lab-bench")]
    pub dir: PathBuf,
    /// Seconds to wait for the VIP after bringing a lab up.
    #[arg(long, default_value_t = 30)]
    pub wait: u64,
    /// Run the Tandem arm with a witness (quorum mode: the survivor starts only once
    /// the dead owner's lease is over).
    #[arg(long)]
    pub witness: bool,
    /// With `--witness`: give the nodes BMC stand-ins, so that the survivor powers the
    /// dead owner off and starts without waiting out its lease.
    #[arg(long, requires = "witness")]
    pub fence: bool,
    /// With `--witness`: give each Tandem node a watchdog stand-in with this timeout
    /// (whole seconds) and the shortest lease the configuration check accepts for it
    /// (timeout + interval + 300 ms, rounded up to 100 ms). Without it the nodes run
    /// without a watchdog, with the default lease.
    #[arg(long, value_name = "SECS", requires = "witness",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub watchdog: Option<u64>,
}

/// Measurements of one failover.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Node that was killed.
    pub from: String,
    /// Node that answered afterwards.
    pub to: String,
    /// t0 -> survivor's node_down event (ms).
    pub detection_ms: Option<f64>,
    /// t0 -> VIP configured on the survivor (ms).
    pub vip_ms: Option<f64>,
    /// t0 -> first answer by the survivor (ms).
    pub total_ms: f64,
    /// With a quorum: whether the killed owner was also the consensus leader (the
    /// survivors then elect one before anything commits).
    pub leader_killed: Option<bool>,
}

/// Results of one arm.
#[derive(Debug, Clone)]
pub struct ArmResult {
    /// Engine.
    pub engine: Engine,
    /// Heartbeat / advert interval (ms).
    pub interval_ms: u64,
    /// Tandem's dead time (ms); unused for keepalived.
    pub dead_time_ms: u64,
    /// Tandem with a watchdog: its timeout (s) and the lease (ms).
    pub watchdog: Option<(u64, u64)>,
    /// Completed trials.
    pub trials: Vec<Trial>,
}

/// Median/p99 of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Sample size.
    pub n: usize,
    /// Median (mean of the two middle values for even n).
    pub median: f64,
    /// 99th percentile, nearest rank.
    pub p99: f64,
}

/// Median of `v` (None if empty).
pub fn median(v: &[f64]) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Percentile `p` (0 < p <= 100) by the nearest-rank method.
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return None;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    Some(s[rank.min(s.len()) - 1])
}

/// Median and p99 of `v`.
pub fn summarize(v: &[f64]) -> Option<Summary> {
    Some(Summary {
        n: v.len(),
        median: median(v)?,
        p99: percentile(v, 99.0)?,
    })
}

/// Find the first event of `kind` about `peer` at or after `since_ms` in an
/// `events.jsonl` text; returns its `time_ms`.
pub fn find_event(jsonl: &str, kind: &str, peer: &str, since_ms: f64) -> Option<f64> {
    jsonl
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["kind"].as_str() == Some(kind))
        .filter(|e| e["fields"]["peer"].as_str() == Some(peer))
        .filter_map(|e| e["time_ms"].as_f64())
        .find(|t| *t >= since_ms)
}

fn secs(ms: f64) -> String {
    format!("{:.3} s", ms / 1000.0)
}

fn arm_title(a: &ArmResult) -> String {
    match a.engine {
        Engine::Keepalived => format!(
            "keepalived (VRRPv3, advert_int {} s)",
            keepalived::advert_int(a.interval_ms)
                .unwrap_or_else(|_| format!("{}ms", a.interval_ms))
        ),
        _ => format!(
            "Tandem (heartbeat {} ms, dead time {} ms{}{})",
            a.interval_ms,
            a.dead_time_ms,
            if a.trials.iter().any(|t| t.leader_killed.is_some()) {
                ", quorum with a witness"
            } else {
                ""
            },
            match a.watchdog {
                Some((w, lease)) => format!(", watchdog {w} s, lease {lease} ms"),
                None => String::new(),
            }
        ),
    }
}

fn row(out: &mut String, label: &str, v: &[f64]) {
    match summarize(v) {
        Some(s) => {
            let _ = writeln!(
                out,
                "  {label:<34} {:>10} {:>10} {:>4}",
                secs(s.median),
                secs(s.p99),
                s.n
            );
        }
        None => {
            let _ = writeln!(out, "  {label:<34} {:>10} {:>10} {:>4}", "-", "-", 0);
        }
    }
}

/// Render the side-by-side result table.
pub fn render_table(arms: &[ArmResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Failover after power loss of the VIP owner (client probes every 10 ms)"
    );
    let _ = writeln!(
        out,
        "  {:<34} {:>10} {:>10} {:>4}",
        "", "median", "p99", "n"
    );
    for a in arms {
        let _ = writeln!(out, "{}", arm_title(a));
        let det: Vec<f64> = a.trials.iter().filter_map(|t| t.detection_ms).collect();
        let vip: Vec<f64> = a.trials.iter().filter_map(|t| t.vip_ms).collect();
        let tot: Vec<f64> = a.trials.iter().map(|t| t.total_ms).collect();
        if a.engine == Engine::Tandem {
            row(&mut out, "detection (survivor's node_down)", &det);
        }
        row(&mut out, "VIP up on survivor", &vip);
        row(&mut out, "total (client served by survivor)", &tot);
        let by_leader = |killed: bool| -> Vec<f64> {
            a.trials
                .iter()
                .filter(|t| t.leader_killed == Some(killed))
                .map(|t| t.total_ms)
                .collect()
        };
        if a.trials.iter().any(|t| t.leader_killed.is_some()) {
            row(&mut out, "  total, owner was a follower", &by_leader(false));
            row(
                &mut out,
                "  total, owner was the leader too",
                &by_leader(true),
            );
        }
    }
    let total = |e: Engine| {
        arms.iter()
            .find(|a| a.engine == e)
            .and_then(|a| summarize(&a.trials.iter().map(|t| t.total_ms).collect::<Vec<_>>()))
    };
    if let (Some(t), Some(k)) = (total(Engine::Tandem), total(Engine::Keepalived)) {
        let _ = writeln!(
            out,
            "total, keepalived / Tandem: {:.2}x median, {:.2}x p99",
            k.median / t.median,
            k.p99 / t.p99
        );
    }
    let _ = writeln!(out, "reference: {}", keepalived::REFERENCE);
    out
}

/// Run a bench subcommand.
pub fn run(cmd: BenchCommand) -> Result<(), LabError> {
    match cmd {
        BenchCommand::Failover(a) => failover(&a),
    }
}

fn failover(a: &FailoverArgs) -> Result<(), LabError> {
    if a.trials == 0 {
        return Err(LabError::Invalid("--trials must be at least 1".into()));
    }
    let ka_interval = a.keepalived_interval.unwrap_or(a.interval);
    let mut arms = Vec::new();
    if a.arms != Arms::Keepalived {
        arms.push((Engine::Tandem, "tdb-", a.interval));
    }
    if a.arms != Arms::Tandem {
        if super::keepalived_bin().is_some() {
            keepalived::advert_int(ka_interval)?;
            arms.push((Engine::Keepalived, "tdk-", ka_interval));
        } else {
            println!("keepalived not installed: skipping the keepalived arm");
        }
    }
    let mut results = Vec::new();
    let mut first_err = None;
    for (engine, prefix, interval) in arms {
        let dir = suffixed(&a.dir, engine);
        match run_arm(a, engine, prefix, interval, &dir) {
            Ok(r) => results.push(r),
            Err(LabError::Interrupted) => return Err(LabError::Interrupted),
            Err(e) => {
                println!("{engine} arm failed: {e}");
                first_err.get_or_insert(e);
            }
        }
    }
    println!();
    print!("{}", render_table(&results));
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn suffixed(base: &Path, engine: Engine) -> PathBuf {
    let mut s = base.as_os_str().to_os_string();
    s.push(match engine {
        Engine::Keepalived => "-keepalived",
        _ => "-tandem",
    });
    PathBuf::from(s)
}

fn run_arm(
    a: &FailoverArgs,
    engine: Engine,
    prefix: &str,
    interval: u64,
    dir: &Path,
) -> Result<ArmResult, LabError> {
    // Leftovers of an interrupted earlier run.
    super::down(prefix, dir)?;
    let watchdog = a.watchdog.filter(|_| a.witness && engine == Engine::Tandem);
    let up = UpArgs {
        topology: super::topology::Topology::ActiveStandby,
        exclusive: false,
        nodes: 2,
        interval,
        dead_time: if engine == Engine::Tandem {
            a.dead_time
        } else {
            None
        },
        prefix: prefix.to_string(),
        dir: dir.to_path_buf(),
        switchback: Switchback::Manual,
        tandem_bin: a.tandem_bin.clone(),
        engine,
        wait: a.wait,
        witness: a.witness && engine == Engine::Tandem,
        // The benchmark kills nodes itself; without --watchdog it measures failover
        // without one.
        no_watchdog: watchdog.is_none(),
        watchdog_timeout: watchdog,
        fence: a.fence && engine == Engine::Tandem,
        suspend_on_no_quorum: false,
        split_brain: None,
        node_binary: Vec::new(),
    };
    let lease = watchdog.map(|w| topology::lease_for_watchdog_ms(w, interval));
    println!(
        "{engine} arm: building lab {prefix} (interval {interval} ms{}{}) ...",
        if up.witness { ", with a witness" } else { "" },
        match (watchdog, lease) {
            (Some(w), Some(l)) => format!(", watchdog {w} s, lease {l} ms"),
            _ => String::new(),
        }
    );
    let mut state = super::up(&up, true)?;
    let _guard = Teardown::new(prefix, dir);
    let mut result = ArmResult {
        engine,
        interval_ms: interval,
        dead_time_ms: a
            .dead_time
            .unwrap_or_else(|| topology::dead_time_ms(interval)),
        watchdog: watchdog.zip(lease),
        trials: Vec::new(),
    };
    for k in 1..=a.trials {
        net::check_interrupt()?;
        let t = trial(&mut state)?;
        println!(
            "  trial {k}/{}: {} -> {}  detection {}  VIP up {}  total {}{}",
            a.trials,
            t.from,
            t.to,
            t.detection_ms.map(secs).unwrap_or_else(|| "-".into()),
            t.vip_ms.map(secs).unwrap_or_else(|| "-".into()),
            secs(t.total_ms),
            match t.leader_killed {
                Some(true) => "  (the consensus leader)",
                Some(false) => "  (a follower)",
                None => "",
            }
        );
        result.trials.push(t);
    }
    Ok(result)
}

fn events_text(state: &LabState, i: usize) -> String {
    state.nodes[i]
        .state_dir
        .as_ref()
        .and_then(|d| std::fs::read_to_string(d.join("events.jsonl")).ok())
        .unwrap_or_default()
}

/// Poll node `i`'s events for `kind` about `peer` since `since_ms`.
fn wait_event(
    state: &LabState,
    i: usize,
    kind: &str,
    peer: &str,
    since_ms: f64,
    limit: Duration,
) -> Result<Option<f64>, LabError> {
    let end = Instant::now() + limit;
    loop {
        if let Some(t) = find_event(&events_text(state, i), kind, peer, since_ms) {
            return Ok(Some(t));
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        net::sleep(Duration::from_millis(50))?;
    }
}

fn joined<T>(r: std::thread::Result<Result<T, LabError>>) -> Result<T, LabError> {
    r.map_err(|_| LabError::Invalid("probe thread panicked".into()))?
}

fn trial(state: &mut LabState) -> Result<Trial, LabError> {
    let names = state.node_names();
    let owner = probe::wait_vip(
        &state.client_ns,
        &state.vip,
        &names,
        Duration::from_secs(10),
    )?
    .ok_or_else(|| LabError::Timeout("the VIP does not answer before the trial".into()))?;
    let oi = state.node_index(&owner)?;
    let si = (0..state.nodes.len())
        .find(|i| *i != oi)
        .ok_or_else(|| LabError::Invalid("need two nodes".into()))?;
    let survivor = state.nodes[si].name.clone();
    let limit = Duration::from_secs(30);
    let (go_probe, rx_probe) = mpsc::channel();
    let (go_watch, rx_watch) = mpsc::channel();
    let prober = probes::spawn_takeover_prober(
        &state.client_ns,
        names.clone(),
        owner.clone(),
        Duration::from_millis(10),
        limit,
        rx_probe,
    );
    let vip: std::net::Ipv4Addr = topology::VIP
        .parse()
        .map_err(|_| LabError::Invalid("bad VIP constant".into()))?;
    let watcher = probes::spawn_local_addr_watcher(&state.nodes[si].netns, vip, limit, rx_watch);
    // Let both threads enter their namespaces before the clock starts.
    std::thread::sleep(Duration::from_millis(50));
    let _ = go_probe.send(());
    let _ = go_watch.send(());
    let leader_killed = quorum_leader(state, oi).map(|l| l == owner);
    let t0 = super::power_kill(&state.nodes[oi].netns)?;
    // A power cut stops the killed node's watchdog too (as `lab fail NODE kill`).
    if state.nodes[oi].watchdog.is_some() {
        super::watchdog::power_cycled(&state.nodes[oi].dir.join(super::watchdog::FIFO));
    }
    let take = joined(prober.join())?;
    let vip_at = joined(watcher.join())?;
    let take = take.ok_or_else(|| {
        LabError::Timeout(format!(
            "no other node answered within {} s of killing {owner}",
            limit.as_secs()
        ))
    })?;
    let detection = if state.engine == Engine::Tandem {
        wait_event(
            state,
            si,
            "node_down",
            &owner,
            t0 - 1.0,
            Duration::from_secs(3),
        )?
        .map(|t| (t - t0).max(0.0))
    } else {
        None
    };
    let t = Trial {
        from: owner.clone(),
        to: take.node.clone(),
        detection_ms: detection,
        vip_ms: vip_at.map(|v| v - t0),
        total_ms: take.at_ms - t0,
        leader_killed,
    };
    debug!(probes = take.probes, "takeover observed");

    // Power the killed node back on and let it rejoin as standby.
    let restart_ms = net::unix_ms();
    super::restart_node(state, oi)?;
    match state.engine {
        Engine::Tandem => {
            if wait_event(
                state,
                si,
                "node_up",
                &owner,
                restart_ms - 1.0,
                Duration::from_secs(20),
            )?
            .is_none()
            {
                warn!(node = %owner, survivor = %survivor, "no node_up event within 20 s; continuing");
            }
            net::sleep(Duration::from_secs(1))?;
        }
        _ => {
            net::sleep(Duration::from_millis((state.interval_ms * 5).max(3000)))?;
        }
    }
    Ok(t)
}

/// The consensus leader as node `i` sees it, if the lab runs with a quorum and the
/// node answers.
fn quorum_leader(state: &LabState, i: usize) -> Option<String> {
    let socket = state.nodes.get(i)?.socket.clone()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    let ep = crate::api::client::Endpoint::Unix(socket);
    let status: crate::status::Status = rt
        .block_on(crate::api::client::call(&ep, "GET", "/v1/status", None))
        .ok()?;
    status.quorum?.leader
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(percentile(&[5.0, 1.0, 3.0, 2.0, 4.0], 99.0), Some(5.0));
        let v: Vec<f64> = (1..=200).map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), Some(198.0));
        assert_eq!(percentile(&v, 50.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        let s = summarize(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.n, s.median, s.p99), (3, 2.0, 3.0));
    }

    #[test]
    fn events() {
        let log = concat!(
            r#"{"seq":1,"node":"n2","time_ms":1000,"kind":"node_up","fields":{"peer":"n1"}}"#,
            "\n",
            r#"{"seq":2,"node":"n2","time_ms":1500,"kind":"node_down","fields":{"peer":"n3"}}"#,
            "\n",
            "not json\n",
            r#"{"seq":3,"node":"n2","time_ms":2000,"kind":"node_down","fields":{"peer":"n1"}}"#,
            "\n",
            r#"{"seq":4,"node":"n2","time_ms":3000,"kind":"node_down","fields":{"peer":"n1"}}"#,
            "\n",
        );
        assert_eq!(find_event(log, "node_down", "n1", 0.0), Some(2000.0));
        assert_eq!(find_event(log, "node_down", "n1", 2500.0), Some(3000.0));
        assert_eq!(find_event(log, "node_up", "n1", 1001.0), None);
        assert_eq!(find_event(log, "node_down", "n3", 0.0), Some(1500.0));
    }

    fn trial(total: f64, det: Option<f64>) -> Trial {
        Trial {
            from: "n1".into(),
            to: "n2".into(),
            detection_ms: det,
            vip_ms: Some(total - 5.0),
            total_ms: total,
            leader_killed: None,
        }
    }

    #[test]
    fn table() {
        let t = ArmResult {
            engine: Engine::Tandem,
            interval_ms: 200,
            dead_time_ms: 1000,
            watchdog: None,
            trials: vec![trial(1100.0, Some(1000.0)), trial(1200.0, Some(1050.0))],
        };
        let k = ArmResult {
            engine: Engine::Keepalived,
            interval_ms: 1000,
            dead_time_ms: 0,
            watchdog: None,
            trials: vec![trial(3300.0, None), trial(3600.0, None)],
        };
        let out = render_table(&[t, k]);
        assert!(
            out.contains("Tandem (heartbeat 200 ms, dead time 1000 ms)"),
            "{out}"
        );
        assert!(out.contains("keepalived (VRRPv3, advert_int 1 s)"), "{out}");
        assert!(out.contains("1.150 s"), "{out}");
        assert!(out.contains("3.450 s"), "{out}");
        assert!(out.contains("3.00x median, 3.00x p99"), "{out}");
        assert!(out.contains("3.67 s at advert_int 1, 0.39 s at advert_int 0.1"));
        // Only Tandem has a detection row.
        assert_eq!(out.matches("detection").count(), 1, "{out}");
    }

    #[test]
    fn table_with_a_watchdog_splits_by_the_killed_leader() {
        let mut trials = vec![trial(1300.0, Some(900.0)), trial(1500.0, Some(950.0))];
        trials[0].leader_killed = Some(true);
        trials[1].leader_killed = Some(false);
        let t = ArmResult {
            engine: Engine::Tandem,
            interval_ms: 200,
            dead_time_ms: 1000,
            watchdog: Some((1, 1400)),
            trials,
        };
        let out = render_table(&[t]);
        assert!(
            out.contains("quorum with a witness, watchdog 1 s, lease 1400 ms"),
            "{out}"
        );
        let line = |label: &str| {
            out.lines()
                .find(|l| l.contains(label))
                .unwrap_or_default()
                .to_string()
        };
        assert!(line("owner was a follower").contains("1.500 s"), "{out}");
        assert!(
            line("owner was the leader too").contains("1.300 s"),
            "{out}"
        );
    }

    #[test]
    fn dirs() {
        assert_eq!(
            suffixed(Path::new("/run/x"), Engine::Keepalived),
            PathBuf::from("/run/x-keepalived")
        );
        assert_eq!(
            suffixed(Path::new("/run/x"), Engine::Tandem),
            PathBuf::from("/run/x-tandem")
        );
    }
}
