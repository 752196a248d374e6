//! The CLI's text output: `tandem status`, `tandem history` and `tandem mirror status`
//! printed from the API's read model (`--json` prints the model itself). Each view is
//! a pure function of the model that returns the text ([`status::render_status`],
//! [`history::render_history`], [`status::render_mirrors`]); the `print_` wrappers
//! only write it out. Columns are as wide as their widest cell ([`table`]), and times
//! are UTC with a date (RFC 3339).

pub mod history;
pub mod status;

pub(crate) use crate::human::{human_bytes, human_ms, utc_millis, utc_seconds};

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
