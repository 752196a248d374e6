//! The CLI's text output: `tandem status`, `tandem history` and `tandem mirror status`
//! printed from the API's read model (`--json` prints the model itself). Each view is
//! a pure function of the model that returns the text ([`status::render_status`],
//! [`history::render_history`], [`status::render_mirrors`]); the `print_` wrappers
//! only write it out. Columns are as wide as their widest cell ([`table`]), and times
//! are UTC with a date (RFC 3339).

pub mod history;
pub mod status;

use crate::utc::UtcTime;

use crate::event::{Event, Timeline};
use crate::mirror::replica::dump::DumpInfo;
use crate::status::{MirrorStatus, Status};

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

/// `tandem mirror status`.
pub fn print_mirrors(all: &[MirrorStatus]) {
    print!("{}", status::render_mirrors(all));
}

/// `tandem status`: the snapshot and this node's timelines (for the last failover).
pub fn print_status(st: &Status, timelines: &[Timeline]) {
    print!("{}", status::render_status(st, timelines));
}

/// `tandem history`.
pub fn print_history(tls: &[Timeline], events: &[Event]) {
    print!("{}", history::render_history(tls, events));
}

/// Bytes in binary units: `512 B`, `1.5 MiB`.
pub(crate) fn human_bytes(n: u64) -> String {
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
pub(crate) fn human_ms(ms: u64) -> String {
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
pub(crate) fn utc_seconds(ms: u64) -> String {
    UtcTime::from_unix_ms(ms).to_string()
}

/// Wall-clock milliseconds since the Unix epoch as RFC 3339 UTC, to the millisecond.
pub(crate) fn utc_millis(ms: u64) -> String {
    UtcTime::from_unix_ms(ms).to_rfc3339_millis()
}

/// Left-aligned columns, each as wide as its widest cell (the header's included), two
/// spaces apart, every line after `indent`; the last column is not padded. One line
/// for the header, then one per row, so a caller may put notes under a row.
fn table(indent: &str, header: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut s = indent.to_string();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            s.push_str(cell);
            if i < last {
                s.extend(std::iter::repeat_n(' ', w - cell.chars().count() + 2));
            }
        }
        s
    };
    let mut lines = vec![line(header.to_vec())];
    lines.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    lines
}

#[cfg(test)]
mod tests;
