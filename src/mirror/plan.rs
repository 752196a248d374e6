//! Link sizing for a mirror (`tandem mirror plan NAME`), pure: no clock, no files.
//!
//! - [`WriteHistory`]: the bytes the application wrote through this copy's export, per
//!   minute, for the last 7 days ([`WINDOW_MINUTES`]). It is fed `(now, cumulative
//!   bytes written, primary?)` [`Sample`]s taken just after each minute boundary; each
//!   pair of samples in consecutive minutes records the earlier minute.
//! - **Gaps.** A minute is recorded only when it was observed: both samples exist, the
//!   counter did not go back (a daemon restart), no minute was skipped (downtime, a
//!   stalled sampler) and this copy was primary at one end of it (a secondary sees no
//!   application writes). Unobserved minutes are absent, never zero-write minutes: the
//!   percentiles and the daily volume are over observed minutes only, and the replay
//!   jumps over a gap with the backlog it had (the gap neither adds writes nor drains).
//! - [`plan`]: peak one-minute rate, p50/p95/p99 of the per-minute rate, the average
//!   daily volume, the hour-of-day profile (UTC), and the smallest link that keeps the
//!   lag under a [`Target`] at a percentile of minutes, found by replaying the history
//!   through a fluid queue (below). Under [`MIN_OBSERVED_MINUTES`] of history the answer
//!   is [`Outcome::NotEnoughHistory`].
//! - The codec of the persisted ring ([`encode`], [`decode`]): `TDWR`, a version byte,
//!   a count, `(minute u32, bytes u64)` little-endian per minute, and the first 8
//!   bytes of the SHA-256 of all that (about 118 KiB for a full week).
//!
//! The fluid queue: at link bandwidth `B` (bits/s) and efficiency `e` (the share of the
//! link that carries payload), each minute's writes join a backlog that drains at
//! `B / 8 * e` bytes/s: `backlog = max(0, backlog + writes - B / 8 * e * 60)`, and the
//! minute's lag is the time the backlog takes to drain, `backlog / (B / 8 * e)`.
//! The lag is non-increasing in `B` minute by minute, so the smallest `B` meeting the
//! target is found by bisection.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One minute in milliseconds.
pub const MINUTE_MS: u64 = 60_000;
/// How far back the history goes: 7 days of minutes.
pub const WINDOW_MINUTES: u32 = 7 * 24 * 60;
/// Less observed history than this (an hour) gives no recommendation.
pub const MIN_OBSERVED_MINUTES: u64 = 60;
/// The link sizes every plan reports the lag for: 10 Mbit/s, 100 Mbit/s, 1 Gbit/s.
pub const STANDARD_LINKS_BITS_PER_SECOND: [f64; 3] = [10e6, 100e6, 1e9];
/// The default target: a lag under 30 s ...
pub const DEFAULT_LAG: Duration = Duration::from_secs(30);
/// ... in 95 % of minutes ...
pub const DEFAULT_PERCENTILE: f64 = 95.0;
/// ... on a link whose payload share is 90 % (TCP/IP and framing overhead).
pub const DEFAULT_EFFICIENCY: f64 = 0.9;
/// The longest lag a target may name.
pub const MAX_LAG: Duration = Duration::from_secs(24 * 3600);

const MAGIC: &[u8; 4] = b"TDWR";
const VERSION: u8 = 1;
const HEADER: usize = 4 + 1 + 4;
const ENTRY: usize = 4 + 8;
const CHECKSUM: usize = 8;

/// Why a target is refused or a persisted history cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("lag must be over 0 s and at most {max} s, not {0:?}", max = MAX_LAG.as_secs())]
    Lag(Duration),
    #[error("percentile must be over 0 and at most 100, not {0}")]
    Percentile(f64),
    #[error("efficiency must be over 0 and at most 1, not {0}")]
    Efficiency(f64),
    #[error("compression ratio must be at least 1, not {0}")]
    Compression(f64),
    #[error("not a write-rate history (bad magic)")]
    Magic,
    #[error("write-rate history version {0} is not supported (this build reads {VERSION})")]
    Version(u8),
    #[error("write-rate history is {actual} bytes, {expected} expected")]
    Length { expected: usize, actual: usize },
    #[error("write-rate history checksum mismatch")]
    Checksum,
    #[error("write-rate history minutes are not in increasing order")]
    Order,
}

/// The bytes written in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteWrites {
    /// Minutes since the Unix epoch (UTC).
    pub minute: u32,
    pub bytes: u64,
}

/// One reading of the mirror's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Unix time, ms.
    pub at_ms: u64,
    /// Application bytes written through this copy's export since the daemon started.
    pub written: u64,
    /// This copy is primary (a secondary sees no application writes).
    pub primary: bool,
}

/// Why a sample recorded no minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The first sample: a baseline only.
    First,
    /// Another sample in the same minute as the baseline (ignored; the baseline stays).
    SameMinute,
    /// The counter went back (the daemon restarted): a new baseline.
    CounterReset,
    /// Minutes went by unobserved (downtime, a stalled sampler): a new baseline.
    Gap { minutes: u64 },
    /// This copy was secondary at both ends of the minute.
    NotPrimary,
}

/// What one sample did to the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Minute(MinuteWrites),
    Skipped(Skip),
}

/// The per-minute write history (see the module header for how gaps are treated).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteHistory {
    minutes: VecDeque<MinuteWrites>,
    last: Option<Sample>,
}

impl WriteHistory {
    /// A history of these minutes (sorted; duplicates and minutes outside the window
    /// of the newest are dropped).
    pub fn from_minutes(mut minutes: Vec<MinuteWrites>) -> WriteHistory {
        minutes.sort_by_key(|m| m.minute);
        let mut h = WriteHistory::default();
        for m in minutes {
            h.push(m);
        }
        h
    }

    /// The recorded minutes, oldest first.
    pub fn minutes(&self) -> impl ExactSizeIterator<Item = &MinuteWrites> + '_ {
        self.minutes.iter()
    }

    pub fn len(&self) -> usize {
        self.minutes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.minutes.is_empty()
    }

    /// Takes one sample; a pair in consecutive minutes records the earlier minute.
    pub fn record(&mut self, s: Sample) -> Recorded {
        let Some(prev) = self.last else {
            self.last = Some(s);
            return Recorded::Skipped(Skip::First);
        };
        let (m0, m1) = (prev.at_ms / MINUTE_MS, s.at_ms / MINUTE_MS);
        if m1 <= m0 {
            return Recorded::Skipped(Skip::SameMinute);
        }
        self.last = Some(s);
        if s.written < prev.written {
            return Recorded::Skipped(Skip::CounterReset);
        }
        if m1 > m0 + 1 {
            return Recorded::Skipped(Skip::Gap {
                minutes: m1 - m0 - 1,
            });
        }
        if !prev.primary && !s.primary {
            return Recorded::Skipped(Skip::NotPrimary);
        }
        let m = MinuteWrites {
            minute: u32::try_from(m0).unwrap_or(u32::MAX),
            bytes: s.written - prev.written,
        };
        self.push(m);
        Recorded::Minute(m)
    }

    /// Appends a minute newer than the last (older ones are dropped) and forgets what
    /// fell out of the window.
    fn push(&mut self, m: MinuteWrites) {
        if self.minutes.back().is_some_and(|b| b.minute >= m.minute) {
            return;
        }
        self.minutes.push_back(m);
        while self
            .minutes
            .front()
            .is_some_and(|f| f.minute + WINDOW_MINUTES <= m.minute)
        {
            self.minutes.pop_front();
        }
    }
}

/// The persisted form of the history's minutes (see the module header).
pub fn encode(h: &WriteHistory) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + h.len() * ENTRY + CHECKSUM);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    for m in h.minutes() {
        out.extend_from_slice(&m.minute.to_le_bytes());
        out.extend_from_slice(&m.bytes.to_le_bytes());
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum[..CHECKSUM]);
    out
}

/// Reads what [`encode`] wrote; anything else is an error, never a partial history.
pub fn decode(b: &[u8]) -> Result<WriteHistory, PlanError> {
    if b.len() < HEADER + CHECKSUM {
        return Err(PlanError::Length {
            expected: HEADER + CHECKSUM,
            actual: b.len(),
        });
    }
    if &b[..4] != MAGIC {
        return Err(PlanError::Magic);
    }
    if b[4] != VERSION {
        return Err(PlanError::Version(b[4]));
    }
    let count = u32::from_le_bytes([b[5], b[6], b[7], b[8]]) as usize;
    let expected = HEADER + count * ENTRY + CHECKSUM;
    if b.len() != expected {
        return Err(PlanError::Length {
            expected,
            actual: b.len(),
        });
    }
    let (body, sum) = b.split_at(b.len() - CHECKSUM);
    if Sha256::digest(body)[..CHECKSUM] != *sum {
        return Err(PlanError::Checksum);
    }
    let mut minutes = Vec::with_capacity(count);
    for e in body[HEADER..].chunks_exact(ENTRY) {
        let minute = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&e[4..]);
        if minutes
            .last()
            .is_some_and(|p: &MinuteWrites| p.minute >= minute)
        {
            return Err(PlanError::Order);
        }
        minutes.push(MinuteWrites {
            minute,
            bytes: u64::from_le_bytes(bytes),
        });
    }
    Ok(WriteHistory::from_minutes(minutes))
}

/// What the link must achieve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Target {
    /// The lag to stay under, seconds.
    pub lag_seconds: f64,
    /// In this percentage of the observed minutes.
    pub percentile: f64,
    /// The share of the link's bandwidth that carries written bytes.
    pub efficiency: f64,
    /// A compression ratio to apply to the writes (only when asked; `None`: the link
    /// carries the application's bytes as they are).
    #[serde(default)]
    pub compression_ratio: Option<f64>,
}

impl Target {
    /// A checked target.
    pub fn new(
        lag: Duration,
        percentile: f64,
        efficiency: f64,
        compression_ratio: Option<f64>,
    ) -> Result<Target, PlanError> {
        if lag.is_zero() || lag > MAX_LAG {
            return Err(PlanError::Lag(lag));
        }
        if !(percentile > 0.0 && percentile <= 100.0) {
            return Err(PlanError::Percentile(percentile));
        }
        if !(efficiency > 0.0 && efficiency <= 1.0) {
            return Err(PlanError::Efficiency(efficiency));
        }
        if let Some(c) = compression_ratio.filter(|c| !(*c >= 1.0 && c.is_finite())) {
            return Err(PlanError::Compression(c));
        }
        Ok(Target {
            lag_seconds: lag.as_secs_f64(),
            percentile,
            efficiency,
            compression_ratio,
        })
    }
}

impl Default for Target {
    fn default() -> Target {
        Target {
            lag_seconds: DEFAULT_LAG.as_secs_f64(),
            percentile: DEFAULT_PERCENTILE,
            efficiency: DEFAULT_EFFICIENCY,
            compression_ratio: None,
        }
    }
}

/// How much history there is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Minutes recorded.
    pub observed_minutes: u64,
    /// From the first recorded minute to the last, inclusive.
    pub span_minutes: u64,
    /// Minutes of the span that were not observed (left out, not counted as zero).
    pub gap_minutes: u64,
    /// Unix ms of the first and last recorded minute's start.
    #[serde(default)]
    pub first_minute_ms: Option<u64>,
    #[serde(default)]
    pub last_minute_ms: Option<u64>,
}

/// The per-minute write rate, bytes/s (a minute's bytes ÷ 60).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub peak_bytes_per_second: f64,
    /// Unix ms of the start of the peak minute.
    pub peak_minute_ms: u64,
    pub p50_bytes_per_second: f64,
    pub p95_bytes_per_second: f64,
    pub p99_bytes_per_second: f64,
    pub mean_bytes_per_second: f64,
    /// The mean over observed minutes × 1440.
    pub daily_volume_bytes: f64,
}

/// The write rate in one hour of the day (UTC), over every observed day.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HourRate {
    pub hour: u8,
    pub observed_minutes: u64,
    pub mean_bytes_per_second: f64,
    pub peak_bytes_per_second: f64,
}

/// The replay of the history at one link bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LinkLag {
    pub bandwidth_bits_per_second: f64,
    /// The lag at the target's percentile of minutes.
    pub lag_at_percentile_seconds: f64,
    pub worst_lag_seconds: f64,
    /// Minutes whose lag exceeds the target.
    pub minutes_over_target: u64,
    pub meets_target: bool,
}

/// The figures and the recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sizing {
    pub rates: Rates,
    /// 24 entries, hour 0 to 23 (UTC).
    pub hourly: Vec<HourRate>,
    /// The smallest link that meets the target (rounded up to 3 significant digits);
    /// 0 when nothing was written.
    pub recommended: LinkLag,
    pub standard_links: Vec<LinkLag>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// Too little observed history for a meaningful answer.
    NotEnoughHistory {
        needed_minutes: u64,
    },
    Sized(Sizing),
}

/// `tandem mirror plan NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub mirror: String,
    pub target: Target,
    pub coverage: Coverage,
    pub outcome: Outcome,
}

/// Sizes the link for `target` from the history of `mirror`.
pub fn plan(mirror: &str, h: &WriteHistory, target: &Target) -> Plan {
    let coverage = coverage(h);
    let outcome = if coverage.observed_minutes < MIN_OBSERVED_MINUTES {
        Outcome::NotEnoughHistory {
            needed_minutes: MIN_OBSERVED_MINUTES,
        }
    } else {
        Outcome::Sized(size(h, target))
    };
    Plan {
        mirror: mirror.to_string(),
        target: *target,
        coverage,
        outcome,
    }
}

fn coverage(h: &WriteHistory) -> Coverage {
    let observed = h.len() as u64;
    let (first, last) = (h.minutes.front(), h.minutes.back());
    let span = match (first, last) {
        (Some(f), Some(l)) => u64::from(l.minute - f.minute) + 1,
        _ => 0,
    };
    Coverage {
        observed_minutes: observed,
        span_minutes: span,
        gap_minutes: span - observed,
        first_minute_ms: first.map(|m| u64::from(m.minute) * MINUTE_MS),
        last_minute_ms: last.map(|m| u64::from(m.minute) * MINUTE_MS),
    }
}

fn size(h: &WriteHistory, target: &Target) -> Sizing {
    let ratio = target.compression_ratio.unwrap_or(1.0);
    let sent: Vec<f64> = h.minutes().map(|m| m.bytes as f64 / ratio).collect();
    let best = smallest_bandwidth(&sent, target);
    Sizing {
        rates: rates(h),
        hourly: hourly(h),
        recommended: link_lag(&sent, best, target),
        standard_links: STANDARD_LINKS_BITS_PER_SECOND
            .iter()
            .map(|&b| link_lag(&sent, b, target))
            .collect(),
    }
}

fn rates(h: &WriteHistory) -> Rates {
    let mut per_s: Vec<f64> = h.minutes().map(|m| m.bytes as f64 / 60.0).collect();
    // The first of equal peaks.
    let peak = h
        .minutes()
        .max_by_key(|m| (m.bytes, std::cmp::Reverse(m.minute)))
        .copied();
    let mean = per_s.iter().sum::<f64>() / per_s.len().max(1) as f64;
    per_s.sort_by(f64::total_cmp);
    Rates {
        peak_bytes_per_second: peak.map_or(0.0, |m| m.bytes as f64 / 60.0),
        peak_minute_ms: peak.map_or(0, |m| u64::from(m.minute) * MINUTE_MS),
        p50_bytes_per_second: percentile(&per_s, 50.0),
        p95_bytes_per_second: percentile(&per_s, 95.0),
        p99_bytes_per_second: percentile(&per_s, 99.0),
        mean_bytes_per_second: mean,
        daily_volume_bytes: mean * 86_400.0,
    }
}

fn hourly(h: &WriteHistory) -> Vec<HourRate> {
    let mut hours: Vec<HourRate> = (0..24)
        .map(|hour| HourRate {
            hour,
            observed_minutes: 0,
            mean_bytes_per_second: 0.0,
            peak_bytes_per_second: 0.0,
        })
        .collect();
    for m in h.minutes() {
        let r = &mut hours[(m.minute % 1440 / 60) as usize];
        let rate = m.bytes as f64 / 60.0;
        r.observed_minutes += 1;
        r.mean_bytes_per_second += rate;
        r.peak_bytes_per_second = r.peak_bytes_per_second.max(rate);
    }
    for r in &mut hours {
        r.mean_bytes_per_second /= r.observed_minutes.max(1) as f64;
    }
    hours
}

/// How many of `n` minutes the `p`th percentile covers (nearest rank: ⌈p·n/100⌉,
/// with a tolerance so that 95 % of 100 is 95, not 96).
fn rank(p: f64, n: usize) -> usize {
    ((p * n as f64 / 100.0) - 1e-9).ceil().max(0.0) as usize
}

/// Nearest-rank percentile of sorted values (0 when empty).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[rank(p, sorted.len()).clamp(1, sorted.len()) - 1]
}

/// Each minute's lag (s) replaying `sent` (bytes per observed minute) through the fluid
/// queue at `bits_per_second`.
fn replay(sent: &[f64], bits_per_second: f64, efficiency: f64) -> Vec<f64> {
    let drain = bits_per_second / 8.0 * efficiency;
    let mut backlog = 0.0_f64;
    sent.iter()
        .map(|&w| {
            backlog = (backlog + w - drain * 60.0).max(0.0);
            if backlog <= 0.0 {
                0.0
            } else if drain > 0.0 {
                backlog / drain
            } else {
                f64::INFINITY
            }
        })
        .collect()
}

/// How many minutes may exceed the lag target at the percentile.
fn allowed_over(minutes: usize, pct: f64) -> usize {
    minutes - rank(pct, minutes).min(minutes)
}

fn meets(sent: &[f64], bits_per_second: f64, target: &Target) -> bool {
    let over = replay(sent, bits_per_second, target.efficiency)
        .iter()
        .filter(|&&l| l > target.lag_seconds)
        .count();
    over <= allowed_over(sent.len(), target.percentile)
}

/// The smallest bandwidth (bits/s) meeting the target, by bisection (the lag never
/// rises with the bandwidth), rounded up to 3 significant digits.
fn smallest_bandwidth(sent: &[f64], target: &Target) -> f64 {
    let peak = sent.iter().copied().fold(0.0, f64::max);
    if peak <= 0.0 {
        return 0.0;
    }
    // At this rate every minute's writes drain within the minute: no lag at all.
    let mut hi = peak / 60.0 / target.efficiency * 8.0;
    let mut lo = 0.0;
    while hi - lo > hi * 1e-5 {
        let mid = (lo + hi) / 2.0;
        if meets(sent, mid, target) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    let rounded = round_up_3_digits(hi);
    debug_assert!(meets(sent, rounded, target));
    rounded
}

fn round_up_3_digits(x: f64) -> f64 {
    let step = 10f64.powi(x.log10().floor() as i32 - 2);
    (x / step).ceil() * step
}

fn link_lag(sent: &[f64], bits_per_second: f64, target: &Target) -> LinkLag {
    let mut lags = replay(sent, bits_per_second, target.efficiency);
    let over = lags.iter().filter(|&&l| l > target.lag_seconds).count();
    lags.sort_by(f64::total_cmp);
    LinkLag {
        bandwidth_bits_per_second: bits_per_second,
        lag_at_percentile_seconds: percentile(&lags, target.percentile),
        worst_lag_seconds: lags.last().copied().unwrap_or(0.0),
        minutes_over_target: over as u64,
        meets_target: over <= allowed_over(sent.len(), target.percentile),
    }
}

#[cfg(test)]
mod tests;
