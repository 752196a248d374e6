//! The story of a move (failover, switchover, release), pure: where it starts (the
//! failure, the request or the placement), its phases in order (detected, decided, each
//! resource's stop or start, the first passing check) and its total, failure to
//! service. `tandem history` prints it and the web console draws it.

use crate::event::{MoveKind, MoveReason, Timeline};
use crate::human::human_ms;

/// When a move's story begins: the failure (the lost owner's last heartbeat) if known,
/// else its detection or request.
pub fn started_ms(t: &Timeline) -> u64 {
    t.failure_ms.unwrap_or(t.detected_ms)
}

/// When the group served again after a completed move: the first passing check, or the
/// completion of a group without checks.
fn service_ms(t: &Timeline) -> Option<u64> {
    (t.kind != MoveKind::Release && t.outcome == "completed")
        .then(|| t.first_check_ms.or(t.completed_ms))
        .flatten()
}

/// Failure (or request) to service, for a completed failover or switchover.
pub fn failure_to_service_ms(t: &Timeline) -> Option<u64> {
    service_ms(t).map(|s| s.saturating_sub(started_ms(t)))
}

/// The move's total: failure (or request) to service, first stop to stopped for a
/// release, or why there was no service.
pub fn total(t: &Timeline) -> String {
    match (t.kind, failure_to_service_ms(t), t.failure_ms) {
        (MoveKind::Release, _, _) => format!(
            "{} (first stop to stopped)",
            human_ms(
                t.completed_ms
                    .unwrap_or(t.detected_ms)
                    .saturating_sub(t.detected_ms)
            )
        ),
        (_, Some(ms), _) => format!("{} ({} to service)", human_ms(ms), Origin::of(t).name()),
        (_, None, _) => format!("- (no service: {})", t.outcome),
    }
}

/// What a move's story starts from.
#[derive(Clone, Copy)]
enum Origin {
    /// A failure, known from the lost owner's last heartbeat.
    Failure,
    /// The first placement of the group.
    Placement,
    /// A switchover, a switchback, or a resource that failed here.
    Request,
}

impl Origin {
    fn of(t: &Timeline) -> Origin {
        match (t.failure_ms, t.reason) {
            (Some(_), _) => Origin::Failure,
            (None, MoveReason::Initial) => Origin::Placement,
            (None, _) => Origin::Request,
        }
    }

    /// The word for the start of the story, as in "failure to service".
    fn name(self) -> &'static str {
        match self {
            Origin::Failure => "failure",
            Origin::Placement => "placement",
            Origin::Request => "request",
        }
    }

    /// The phase at `detected_ms`.
    fn detected(self) -> &'static str {
        match self {
            Origin::Failure => "detected",
            Origin::Placement => "placed",
            Origin::Request => "requested",
        }
    }
}

/// One row of a timeline (also a bar of the console's picture of it).
pub struct Phase {
    pub at_ms: u64,
    pub what: String,
    /// How long the phase took: since the previous phase, or a step's own duration.
    pub took_ms: Option<u64>,
    pub kind: PhaseKind,
}

/// What a phase is, and so which way its duration runs from `at_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// The lost owner's last heartbeat: an instant.
    Failure,
    /// Detection (or request, or placement), decision, the first passing check: each
    /// ends at `at_ms` and took the time since the phase before.
    Milestone,
    /// A resource's stop or start: begins at `at_ms` and takes its own duration.
    Step { ok: bool },
}

impl Phase {
    /// The phase's span in wall-clock milliseconds, start to end.
    pub fn span(&self) -> (u64, u64) {
        let took = self.took_ms.unwrap_or(0);
        match self.kind {
            PhaseKind::Step { .. } => (self.at_ms, self.at_ms + took),
            PhaseKind::Failure | PhaseKind::Milestone => {
                (self.at_ms.saturating_sub(took), self.at_ms)
            }
        }
    }
}

/// The phases of a move in order. Steps ran on the new owner (failover, switchover) or
/// on the old one (release).
pub fn phases(t: &Timeline) -> Vec<Phase> {
    let mut out = Vec::new();
    if let Some(f) = t.failure_ms {
        out.push(Phase {
            at_ms: f,
            what: "failure (last heard from the owner)".into(),
            took_ms: None,
            kind: PhaseKind::Failure,
        });
    }
    if t.kind != MoveKind::Release {
        out.push(Phase {
            at_ms: t.detected_ms,
            what: Origin::of(t).detected().into(),
            took_ms: t.failure_ms.map(|f| t.detected_ms.saturating_sub(f)),
            kind: PhaseKind::Milestone,
        });
        out.push(Phase {
            at_ms: t.decided_ms,
            what: "decided".into(),
            took_ms: Some(t.decided_ms.saturating_sub(t.detected_ms)),
            kind: PhaseKind::Milestone,
        });
    }
    let node = match t.kind {
        MoveKind::Release => t.from_node.as_deref().unwrap_or("-"),
        _ => t.to_node.as_str(),
    };
    let mut last_end = t.decided_ms;
    for s in &t.steps {
        let failed = s.error.as_deref().map_or_else(
            || {
                if s.ok {
                    String::new()
                } else {
                    " FAILED".into()
                }
            },
            |e| format!(" FAILED: {e}"),
        );
        out.push(Phase {
            at_ms: s.at_ms,
            what: format!("{} {} on {node}{failed}", s.action, s.resource),
            took_ms: Some(s.duration_ms),
            kind: PhaseKind::Step { ok: s.ok },
        });
        last_end = last_end.max(s.at_ms + s.duration_ms);
    }
    if let Some(c) = t.first_check_ms {
        out.push(Phase {
            at_ms: c,
            what: "first passing check".into(),
            took_ms: Some(c.saturating_sub(last_end)),
            kind: PhaseKind::Milestone,
        });
    }
    out
}
