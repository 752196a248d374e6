//! The CLI's text output: `tandem status`, `tandem history` and `tandem mirror status`
//! printed from the API's read model (`--json` prints the model itself).

use crate::event::{Event, Timeline};
use crate::mirror::replica::dump::DumpInfo;
use crate::status::{FenceState, MirrorStatus, Status};

/// `tandem mirror split-brain-dump NAME`: one line per dump, oldest first.
pub fn print_split_brain_dumps(dumps: &[DumpInfo]) {
    if dumps.is_empty() {
        println!("no split-brain dumps");
        return;
    }
    for d in dumps {
        let h = &d.header;
        println!(
            "{}  kept {}  by {}  generation {}  {} runs, {}",
            d.name,
            h.survivor,
            h.resolved_by,
            h.generation,
            h.runs,
            human_bytes(h.bytes)
        );
    }
}

pub fn print_mirrors(all: &[MirrorStatus]) {
    for m in all {
        println!(
            "{:<12} {:<9} disk {:<13} {}  generation {}{}{}",
            m.name,
            m.role,
            m.disk.name(),
            human_bytes(m.size_bytes),
            m.generation,
            m.group
                .as_deref()
                .map(|g| format!("  group {g}"))
                .unwrap_or_default(),
            if m.io_frozen {
                "  IO FROZEN (waiting to outdate a lost peer)"
            } else {
                ""
            }
        );
        for p in &m.peers {
            let mut line = format!(
                "  -> {:<10} {:<5} {:<12} peer disk {:<13} out of sync {}",
                p.node,
                p.mode.name(),
                p.connection,
                p.peer_disk.map_or("unknown", |d| d.name()),
                human_bytes(p.out_of_sync_bytes)
            );
            if p.lag_bytes > 0 || p.lag_seconds > 0.0 {
                line += &format!(
                    "  lag {} / {:.1} s",
                    human_bytes(p.lag_bytes),
                    p.lag_seconds
                );
            }
            if let Some(c) = &p.compression {
                line += &format!(
                    "  zstd {:.2}:1 ({} sent for {})",
                    c.ratio,
                    human_bytes(c.wire_bytes),
                    human_bytes(c.raw_bytes)
                );
            }
            if let Some(r) = &p.resync {
                let pct = if r.total_bytes == 0 {
                    100.0
                } else {
                    r.done_bytes as f64 * 100.0 / r.total_bytes as f64
                };
                line += &format!(
                    "\n     resync {} {}{:.1}% of {} at {}/s, eta {}",
                    r.direction,
                    if r.full { "(full) " } else { "" },
                    pct,
                    human_bytes(r.total_bytes),
                    human_bytes(r.bytes_per_second as u64),
                    r.eta_seconds.map_or("-".into(), |e| format!("{e:.0} s"))
                );
            }
            if let Some(v) = &p.verify {
                line += &format!(
                    "\n     verify {} {} of {} checked, {} out of sync",
                    if v.running { "running" } else { "done" },
                    human_bytes(v.checked_bytes),
                    human_bytes(v.total_bytes),
                    human_bytes(v.out_of_sync_bytes)
                );
            }
            println!("{line}");
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_quorum(q: &crate::status::QuorumView) {
    println!(
        "\nQUORUM  {}  votes {}/{}  leader {}  term {}  role {:?}",
        if q.quorate { "quorate" } else { "NO QUORUM" },
        q.votes,
        q.voters.len(),
        q.leader.as_deref().unwrap_or("-"),
        q.term,
        q.role
    );
    for v in &q.voters {
        println!(
            "  {:<12} {:<8} {}",
            v.name,
            if v.witness { "witness" } else { "node" },
            if v.reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            }
        );
    }
    for l in &q.leases {
        println!(
            "  lease {:<12} epoch {:<4} {} ms left",
            l.group, l.epoch, l.remaining_ms
        );
    }
    for f in &q.fencing {
        let ago = f.age_ms / 1000;
        match f.state {
            FenceState::Running => println!("  fence {:<12} powering off ({ago} s)", f.node),
            FenceState::Off => println!(
                "  fence {:<12} OFF via {} in {} ms ({ago} s ago)",
                f.node,
                f.method.as_deref().unwrap_or("-"),
                f.elapsed_ms.unwrap_or(0)
            ),
            FenceState::Failed => println!(
                "  fence {:<12} FAILED ({ago} s ago): {}",
                f.node,
                f.reason.as_deref().unwrap_or("-")
            ),
        }
    }
}

pub fn print_status(st: &Status) {
    println!(
        "cluster {}  node {}  mode {}  event seq {}",
        st.cluster, st.node, st.mode, st.last_seq
    );
    if let Some(w) = &st.warning {
        println!("WARNING: {w}");
    }
    if let Some(q) = &st.quorum {
        print_quorum(q);
    }
    println!("\nNODES");
    for n in &st.nodes {
        println!(
            "  {:<12} prio {:<3} {:<5} {}{}{}",
            n.name,
            n.priority,
            if n.alive { "up" } else { "DOWN" },
            if n.local { "(local) " } else { "" },
            if n.standby { "STANDBY " } else { "" },
            format_args!("paths up {}", n.paths_up)
        );
    }
    println!("\nHEARTBEAT PATHS");
    for p in &st.paths {
        println!(
            "  {:<12} {:<8} {:<5} rtt {}",
            p.peer,
            p.path,
            if p.up { "up" } else { "DOWN" },
            p.rtt_ms.map_or("-".into(), |r| format!("{r:.2} ms"))
        );
    }
    println!("\nGROUPS");
    for g in &st.groups {
        let states: Vec<String> = g.states.iter().map(|(n, s)| format!("{n}={s:?}")).collect();
        println!(
            "  {:<12} {:<9} owner {:<10} {}{}[{}]",
            g.name,
            g.summary,
            g.owner.as_deref().unwrap_or("-"),
            if g.maintenance { "MAINTENANCE " } else { "" },
            if g.blocked { "BLOCKED-HERE " } else { "" },
            states.join(" ")
        );
    }
    let rej: Vec<String> = st
        .heartbeats
        .rejected
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if !st.mirrors.is_empty() {
        println!("\nMIRRORS");
        print_mirrors(&st.mirrors);
    }
    println!(
        "\nheartbeats: sent {} accepted {} rejected [{}]",
        st.heartbeats.sent,
        st.heartbeats.accepted,
        rej.join(" ")
    );
}

pub fn print_history(tls: &[Timeline], events: &[Event]) {
    if tls.is_empty() {
        println!("no failovers or switchovers recorded");
    }
    for t in tls {
        let total = t.completed_ms.map_or("-".into(), |c| {
            format!("{} ms", c.saturating_sub(t.detected_ms))
        });
        println!(
            "{} {} of `{}`: {} -> {}  reason {}  total {}  outcome {}",
            fmt_time(t.detected_ms),
            t.kind,
            t.group,
            t.from_node.as_deref().unwrap_or("-"),
            t.to_node,
            t.reason.name(),
            total,
            t.outcome
        );
        println!(
            "    detected  +0 ms\n    decided   +{} ms",
            t.decided_ms.saturating_sub(t.detected_ms)
        );
        for s in &t.steps {
            println!(
                "    {:<5} {:<12} +{} ms  took {} ms{}",
                s.action,
                s.resource,
                s.at_ms.saturating_sub(t.detected_ms),
                s.duration_ms,
                s.error
                    .as_ref()
                    .map_or(String::new(), |e| format!("  error: {e}"))
            );
        }
        if let Some(c) = t.first_check_ms {
            println!(
                "    first passing check +{} ms",
                c.saturating_sub(t.detected_ms)
            );
        }
    }
    for e in events {
        let f: Vec<String> = e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:>6} {} {:<24} {}",
            e.seq,
            fmt_time(e.time_ms),
            e.kind.name(),
            f.join(" ")
        );
    }
}

fn fmt_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03}Z", ms % 1000)
}
