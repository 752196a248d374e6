//! `tandem history`: the full story of each failover or switchover (failure or request
//! → detected → decided → each resource's stop or start on its node → first passing
//! check), each phase with its time (UTC, with the date), its offset from the start and
//! its duration; the total is failure to service. Then the events, if asked for.

use crate::event::story::{phases, started_ms, total};
use crate::event::{Event, MoveReason, Timeline};

use super::{human_ms, table, utc_millis};

/// The whole of `tandem history`.
pub fn render_history(tls: &[Timeline], events: &[Event]) -> String {
    let mut out = Vec::new();
    if tls.is_empty() {
        out.push("no failovers or switchovers recorded".to_string());
    }
    for t in tls {
        out.extend(timeline(t));
        out.push(String::new());
    }
    for e in events {
        let f: Vec<String> = e.fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push(format!(
            "{:>6} {} {:<24} {}",
            e.seq,
            utc_millis(e.time_ms),
            e.kind.name(),
            f.join(" ")
        ));
    }
    out.join("\n") + "\n"
}

/// One move: a title line, a table of its phases, and the total.
fn timeline(t: &Timeline) -> Vec<String> {
    let mut out = vec![format!(
        "{} {} of {}: {} -> {}, reason {}, {}",
        utc_millis(started_ms(t)),
        if t.reason == MoveReason::Initial {
            "first start".to_string()
        } else {
            t.kind.to_string()
        },
        t.group,
        t.from_node.as_deref().unwrap_or("-"),
        if t.to_node.is_empty() {
            "-"
        } else {
            &t.to_node
        },
        t.reason.name(),
        t.outcome
    )];
    let rows: Vec<Vec<String>> = phases(t)
        .into_iter()
        .map(|p| {
            vec![
                utc_millis(p.at_ms),
                p.what,
                format!("+{}", human_ms(p.at_ms.saturating_sub(started_ms(t)))),
                p.took_ms.map_or("-".into(), human_ms),
            ]
        })
        .collect();
    out.extend(table("  ", &["AT", "PHASE", "ELAPSED", "TOOK"], &rows));
    out.push(format!("  total {}", total(t)));
    out
}
