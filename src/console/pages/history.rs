//! The history page: every failover and switchover, newest first, as a picture
//! ([`timeline_svg`]: one bar per phase on a time axis in milliseconds, the phases being
//! `tandem history`'s own, `event::story::phases`), the reason in words, the
//! total, and the group's events of that time listed under it.

use crate::event::story::{phases, started_ms, total, Phase, PhaseKind};
use crate::event::{Event, MoveReason, Timeline};
use crate::human::{human_ms, utc_millis};

use super::events::event_rows;
use super::html::{badge, escape, Tone};

/// Width of the picture, of its label column, and the height of one bar's row.
const WIDTH: f64 = 900.0;
const LABEL: f64 = 300.0;
const RIGHT: f64 = 70.0;
const ROW: f64 = 24.0;
const AXIS: f64 = 28.0;

/// The history page's `<main>` content.
pub fn render_history(tls: &[Timeline], events: &[Event]) -> String {
    if tls.is_empty() {
        return "<section><h1>History</h1><p>No failovers or switchovers recorded.</p>\
                </section>"
            .into();
    }
    let moves: String = tls.iter().rev().map(|t| one(t, events)).collect();
    format!("<h1>History</h1>{moves}")
}

/// One move: heading, reason, total, picture, events.
fn one(t: &Timeline, events: &[Event]) -> String {
    let what = if t.reason == MoveReason::Initial {
        "First start".to_string()
    } else {
        let k = t.kind.to_string();
        k[..1].to_uppercase() + &k[1..]
    };
    let tone = if t.outcome == "completed" {
        Tone::Ok
    } else {
        Tone::Bad
    };
    let end = phases(t)
        .iter()
        .map(|p| p.span().1)
        .chain(t.completed_ms)
        .max()
        .unwrap_or(t.detected_ms);
    let mine: Vec<Event> = events
        .iter()
        .filter(|e| {
            e.fields.get("group") == Some(&t.group) && (started_ms(t)..=end).contains(&e.time_ms)
        })
        .cloned()
        .collect();
    format!(
        "<section class=\"move\"><h2>{what} of {group}: {from} → {to} {}</h2>\
         <p>{} · {}: {} · total {}</p>{}<details><summary>{} event(s)</summary>\
         <table class=\"events\"><tbody>{}</tbody></table></details></section>",
        badge(tone, &t.outcome),
        utc_millis(started_ms(t)),
        escape(&t.reason.name()),
        reason_words(t.reason),
        escape(&total(t)),
        timeline_svg(t),
        mine.len(),
        event_rows(&mine),
        group = escape(&t.group),
        from = escape(t.from_node.as_deref().unwrap_or("-")),
        to = escape(if t.to_node.is_empty() {
            "-"
        } else {
            &t.to_node
        }),
    )
}

/// Why a group moved, in words.
fn reason_words(r: MoveReason) -> &'static str {
    match r {
        MoveReason::NodeLost => "the owner went silent on every heartbeat path",
        MoveReason::ResourceFailed => "a resource kept failing after its local restarts",
        MoveReason::Manual => "an administrator asked for it (switchover or standby)",
        MoveReason::Switchback => "automatic switchback to the preferred node",
        MoveReason::SplitBrain => {
            "two owners met after a partition healed; the preferred one kept the group"
        }
        MoveReason::Initial => "the first placement of the group",
    }
}

/// The move as an SVG picture: one row per phase in order, its bar from the phase's
/// start to its end on a common time axis (milliseconds from the start of the story),
/// the phase named on the left and its duration after the bar.
pub fn timeline_svg(t: &Timeline) -> String {
    let ps = phases(t);
    let t0 = started_ms(t);
    let span = ps
        .iter()
        .map(|p| p.span().1.saturating_sub(t0))
        .max()
        .unwrap_or(0)
        .max(1);
    let scale = (WIDTH - LABEL - RIGHT) / span as f64;
    let height = AXIS + ROW * ps.len() as f64 + 4.0;
    let bars: String = ps
        .iter()
        .enumerate()
        .map(|(i, p)| bar(p, AXIS + ROW * i as f64, t0, scale))
        .collect();
    format!(
        "<svg class=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} \
         {height}\" width=\"{WIDTH}\" height=\"{height}\" role=\"img\" aria-label=\"{} of {}\">\
         {}{bars}</svg>",
        t.kind,
        escape(&t.group),
        axis(span, scale, height),
    )
}

/// The time axis: ticks at a round step (1, 2 or 5 × 10^n ms), about six of them.
fn axis(span: u64, scale: f64, height: f64) -> String {
    let rough = span as f64 / 6.0;
    let mag = 10f64.powf(rough.log10().floor()).max(1.0);
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= rough)
        .unwrap_or(10.0 * mag) as u64;
    let ticks: String = (0..=span / step.max(1))
        .map(|k| {
            let ms = k * step;
            let x = LABEL + ms as f64 * scale;
            format!(
                "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{AXIS}\" x2=\"{x:.1}\" y2=\"{height}\"/>\
                 <text class=\"tick\" x=\"{x:.1}\" y=\"{y}\">+{}</text>",
                human_ms(ms),
                y = AXIS - 10.0,
            )
        })
        .collect();
    ticks
}

/// One phase's row.
fn bar(p: &Phase, y: f64, t0: u64, scale: f64) -> String {
    let (start, end) = p.span();
    let x = LABEL + start.saturating_sub(t0) as f64 * scale;
    let w = ((end - start) as f64 * scale).max(2.0);
    let class = match p.kind {
        PhaseKind::Failure => "failure",
        PhaseKind::Milestone => "milestone",
        PhaseKind::Step { ok: true } => "step",
        PhaseKind::Step { ok: false } => "step failed",
    };
    let took = p.took_ms.map_or(String::new(), human_ms);
    format!(
        "<g class=\"phase\"><text class=\"label\" x=\"{lx}\" y=\"{ty}\">{what}</text>\
         <rect class=\"bar {class}\" x=\"{x:.2}\" y=\"{by}\" width=\"{w:.2}\" height=\"{h}\">\
         <title>{what}: {took}</title></rect>\
         <text class=\"took\" x=\"{tx:.1}\" y=\"{ty}\">{took}</text></g>",
        lx = LABEL - 8.0,
        ty = y + ROW * 0.65,
        by = y + 4.0,
        h = ROW - 8.0,
        tx = x + w + 4.0,
        what = escape(&p.what),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{fields, EventKind, MoveKind, TimelineStep};

    /// A failover of `web` from alpha to beta (as `tandem history`'s tests have it): the
    /// owner last heard at +0, detected at +950, decided at +960, the address up
    /// +965..+985, the first check passed at +1030.
    fn failover() -> Timeline {
        let base = 1_700_000_000_000;
        Timeline {
            group: "web".into(),
            kind: MoveKind::Failover,
            reason: MoveReason::NodeLost,
            from_node: Some("alpha".into()),
            to_node: "beta".into(),
            failure_ms: Some(base + 10_000),
            detected_ms: base + 10_950,
            decided_ms: base + 10_960,
            steps: vec![TimelineStep {
                resource: "<vip>".into(),
                action: "start".into(),
                at_ms: base + 10_965,
                duration_ms: 20,
                ok: true,
                error: None,
            }],
            first_check_ms: Some(base + 11_030),
            completed_ms: Some(base + 11_030),
            outcome: "completed".into(),
        }
    }

    /// Each `<rect class="bar ...">`'s x and width, in order.
    fn rects(svg: &str) -> Vec<(f64, f64)> {
        let num = |s: &str, attr: &str| -> f64 {
            let i = s.find(&format!(" {attr}=\"")).unwrap() + attr.len() + 3;
            s[i..s[i..].find('"').unwrap() + i].parse().unwrap()
        };
        svg.split("<rect class=\"bar")
            .skip(1)
            .map(|r| (num(r, "x"), num(r, "width")))
            .collect()
    }

    #[test]
    fn the_bars_come_in_phase_order_with_widths_proportional_to_durations() {
        let svg = timeline_svg(&failover());
        let labels: Vec<&str> = svg
            .split("<text class=\"label\"")
            .skip(1)
            .map(|s| &s[s.find('>').unwrap() + 1..s.find("</text>").unwrap()])
            .collect();
        assert_eq!(
            labels,
            [
                "failure (last heard from the owner)",
                "detected",
                "decided",
                "start &lt;vip&gt; on beta",
                "first passing check",
            ]
        );
        let r = rects(&svg);
        let scale = (WIDTH - LABEL - RIGHT) / 1030.0;
        // detection 950 ms, decision 10 ms, the start 20 ms, the check 45 ms.
        for (i, ms) in [(1, 950.0), (2, 10.0), (3, 20.0), (4, 45.0)] {
            assert!((r[i].1 - ms * scale).abs() < 0.01, "{i}: {:?}", r[i]);
        }
        // Each starts where the one before it ended (the start 5 ms after the decision).
        assert!((r[1].0 - LABEL).abs() < 0.01);
        assert!((r[2].0 - (LABEL + 950.0 * scale)).abs() < 0.01);
        assert!((r[3].0 - (LABEL + 965.0 * scale)).abs() < 0.01);
        assert!(
            (r[4].0 + r[4].1 - (WIDTH - RIGHT)).abs() < 0.01,
            "ends at the right"
        );
        assert!(svg.contains("<rect class=\"bar failure\""));
        assert!(svg.contains("+200 ms") && svg.contains("+1.000 s"), "{svg}");
    }

    #[test]
    fn a_failed_step_is_marked_and_its_error_escaped() {
        let mut t = failover();
        t.steps[0].ok = false;
        t.steps[0].error = Some("<busy> & gone".into());
        let svg = timeline_svg(&t);
        assert!(svg.contains("class=\"bar step failed\""));
        assert!(svg.contains("FAILED: &lt;busy&gt; &amp; gone"));
        assert!(!svg.contains("<busy>"));
    }

    #[test]
    fn the_history_names_the_reason_the_total_and_lists_the_events_of_the_move() {
        let t = failover();
        let ev = |seq, time_ms, group: &str| Event {
            seq,
            node: "beta".into(),
            time_ms,
            kind: EventKind::GroupStarted,
            fields: fields([("group", group.to_string())]),
        };
        let events = [
            ev(1, t.detected_ms, "web"),
            ev(2, t.detected_ms, "db"),
            ev(3, t.detected_ms + 60_000, "web"),
        ];
        let html = render_history(&[t], &events);
        assert!(html.contains("Failover of web: alpha → beta"), "{html}");
        assert!(html.contains("node_lost: the owner went silent on every heartbeat path"));
        assert!(html.contains("total 1.030 s (failure to service)"));
        assert!(html.contains("<summary>1 event(s)</summary>"), "{html}");
        assert!(html.contains("<svg class=\"timeline\""));
        assert!(render_history(&[], &[]).contains("No failovers or switchovers recorded."));
    }
}
