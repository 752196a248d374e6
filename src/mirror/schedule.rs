//! Scheduled pauses of a replication link (`pause_during = ["08:00-18:00"]` on a
//! `[[mirror.link]]`): a WAN link to a DR copy is stopped during peak traffic and
//! restarted after it, as the product has always been sold to do. While paused, the
//! primary tracks the peer's changes in its bitmap (the peer shows `outdated`) and
//! catches it up from the bitmap when the window ends.
//!
//! Pure: windows are parsed here and [`ScheduleState::step`] turns "is the time inside
//! a window" into pause and resume actions on the window's edges only, so an
//! administrator's `mirror resume` inside a window (or `pause` outside one) holds until
//! the next edge. Times are minutes of the day in UTC (the appliance's clock).

use serde::{Deserialize, Serialize};

/// One daily window `HH:MM-HH:MM` (UTC); it may wrap midnight (`22:00-06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PauseWindow {
    /// Minutes after midnight where it starts (inclusive) and ends (exclusive).
    pub start: u16,
    pub end: u16,
}

/// Why a window does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("{0:?}: write a daily window as HH:MM-HH:MM, e.g. \"08:00-18:00\"")]
    Format(String),
    #[error("{0:?}: hours go from 00 to 23 and minutes from 00 to 59")]
    Range(String),
    #[error("{0:?}: the window is empty (start equals end)")]
    Empty(String),
}

fn minute_of(hhmm: &str, whole: &str) -> Result<u16, WindowError> {
    let (h, m) = hhmm
        .split_once(':')
        .ok_or_else(|| WindowError::Format(whole.into()))?;
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return Err(WindowError::Format(whole.into()));
    }
    let (h, m): (u16, u16) = (h.parse().unwrap_or(99), m.parse().unwrap_or(99));
    if h > 23 || m > 59 {
        return Err(WindowError::Range(whole.into()));
    }
    Ok(h * 60 + m)
}

impl TryFrom<String> for PauseWindow {
    type Error = WindowError;

    fn try_from(s: String) -> Result<PauseWindow, WindowError> {
        let (a, b) = s
            .trim()
            .split_once('-')
            .ok_or_else(|| WindowError::Format(s.clone()))?;
        let (start, end) = (minute_of(a.trim(), &s)?, minute_of(b.trim(), &s)?);
        if start == end {
            return Err(WindowError::Empty(s));
        }
        Ok(PauseWindow { start, end })
    }
}

impl From<PauseWindow> for String {
    fn from(w: PauseWindow) -> String {
        format!(
            "{:02}:{:02}-{:02}:{:02}",
            w.start / 60,
            w.start % 60,
            w.end / 60,
            w.end % 60
        )
    }
}

impl PauseWindow {
    /// Whether minute `m` of the day (0..1440) is inside the window.
    pub fn contains(&self, m: u16) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }
}

/// Whether minute `m` of the day is inside any of `windows`.
pub fn in_any(windows: &[PauseWindow], m: u16) -> bool {
    windows.iter().any(|w| w.contains(m))
}

/// The minute of the day, UTC, of a Unix time in milliseconds.
pub fn utc_minute(unix_ms: u64) -> u16 {
    ((unix_ms / 60_000) % 1440) as u16
}

/// What the schedule asks of the link now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleAction {
    Pause,
    Resume,
}

/// One link's schedule: the last "inside a window" seen, and whether the schedule (not
/// an administrator) paused it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScheduleState {
    inside: bool,
    paused_by_schedule: bool,
}

impl ScheduleState {
    /// The time is `inside` a window or not; `paused` says whether the link is paused
    /// now. Acts on edges only: entering pauses a running link, leaving resumes a link
    /// the schedule paused.
    pub fn step(&mut self, inside: bool, paused: bool) -> Option<ScheduleAction> {
        let entered = inside && !self.inside;
        let left = !inside && self.inside;
        self.inside = inside;
        if entered && !paused {
            self.paused_by_schedule = true;
            return Some(ScheduleAction::Pause);
        }
        if left && std::mem::take(&mut self.paused_by_schedule) && paused {
            return Some(ScheduleAction::Resume);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(s: &str) -> Result<PauseWindow, WindowError> {
        PauseWindow::try_from(s.to_string())
    }

    #[test]
    fn windows_parse_round_trip_and_wrap_midnight() {
        let day = w("08:00-18:00").unwrap();
        assert!(day.contains(8 * 60) && day.contains(17 * 60 + 59) && !day.contains(18 * 60));
        let night = w("22:00-06:30").unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(6 * 60 + 29));
        assert!(!night.contains(12 * 60));
        assert_eq!(String::from(night), "22:00-06:30");
        assert!(matches!(w("8:00-18:00"), Err(WindowError::Format(_))));
        assert!(matches!(w("08:00-24:00"), Err(WindowError::Range(_))));
        assert!(matches!(w("08:00-08:00"), Err(WindowError::Empty(_))));
        assert!(matches!(w("08:00"), Err(WindowError::Format(_))));
        assert_eq!(utc_minute(61 * 60_000 + 86_400_000), 61);
    }

    #[test]
    fn the_schedule_acts_on_edges_and_leaves_the_administrator_alone() {
        let mut s = ScheduleState::default();
        assert_eq!(s.step(false, false), None);
        assert_eq!(s.step(true, false), Some(ScheduleAction::Pause));
        assert_eq!(s.step(true, true), None);
        // The administrator resumed inside the window: it stays resumed.
        assert_eq!(s.step(true, false), None);
        assert_eq!(s.step(false, false), None);
        // Already paused by hand when the window opens: the schedule does not own it.
        assert_eq!(s.step(true, true), None);
        assert_eq!(s.step(false, true), None, "the administrator's pause holds");
        assert_eq!(s.step(true, false), Some(ScheduleAction::Pause));
        assert_eq!(s.step(false, true), Some(ScheduleAction::Resume));
    }
}
