//! Numbers and times for people, shared by every observer that prints them (`tandem
//! status` and `history`, the web console): bytes in binary units, durations, and
//! wall-clock milliseconds as RFC 3339 UTC.

use crate::utc::UtcTime;

/// Bytes in binary units: `512 B`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
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

/// A duration for people: `950 ms`, `1.030 s`, `42 s`, `5 min 3 s`, `2 h 5 min`,
/// `3 d 4 h`.
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{}.{:03} s", s, ms % 1000),
        10_000..60_000 => format!("{s} s"),
        60_000..3_600_000 => format!("{} min {} s", s / 60, s % 60),
        3_600_000..86_400_000 => format!("{} h {} min", s / 3600, s / 60 % 60),
        _ => format!("{} d {} h", s / 86_400, s / 3600 % 24),
    }
}

/// Wall-clock milliseconds since the Unix epoch as RFC 3339 UTC, to the second.
pub fn utc_seconds(ms: u64) -> String {
    UtcTime::from_unix_ms(ms).to_string()
}

/// Wall-clock milliseconds since the Unix epoch as RFC 3339 UTC, to the millisecond.
pub fn utc_millis(ms: u64) -> String {
    UtcTime::from_unix_ms(ms).to_rfc3339_millis()
}
