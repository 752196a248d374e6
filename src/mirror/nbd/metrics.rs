//! The NBD server's own metrics handle: one export's request durations, errors and
//! payload bytes, with every label child resolved when it is made, so recording a
//! request is a few atomic adds. The Prometheus registry builds one per
//! export from its vectors; the server only records into it.

use std::time::Duration;

use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use super::proto::Command;

/// NBD commands timed and counted, in the order of [`NbdMetrics`]' arrays.
const NBD_COMMANDS: [&str; 6] = [
    "read",
    "write",
    "flush",
    "trim",
    "write_zeroes",
    "block_status",
];
/// Label of requests the server does not implement (errors only).
const NBD_OTHER: &str = "other";
/// One export's NBD request metrics, with every label child resolved when it is made:
/// recording a request is a few atomic adds, no lookup and no allocation.
#[derive(Debug)]
pub struct NbdMetrics {
    /// `tandem_nbd_request_duration_seconds{command}`, by [`NBD_COMMANDS`] index.
    durations: [Histogram; 6],
    /// `tandem_nbd_request_errors_total{command}`, by index; the last is `other`.
    errors: [IntCounter; 7],
    read_bytes: IntCounter,
    written_bytes: IntCounter,
}

impl NbdMetrics {
    /// The children of `export` in `tandem_nbd_request_duration_seconds{export,command}`,
    /// `tandem_nbd_request_errors_total{export,command}` and
    /// `tandem_nbd_bytes_total{export,direction}`.
    pub fn new(
        duration: &HistogramVec,
        errors: &IntCounterVec,
        bytes: &IntCounterVec,
        export: &str,
    ) -> NbdMetrics {
        let error = |c: &str| errors.with_label_values(&[export, c]);
        NbdMetrics {
            durations: NBD_COMMANDS.map(|c| duration.with_label_values(&[export, c])),
            errors: [
                error(NBD_COMMANDS[0]),
                error(NBD_COMMANDS[1]),
                error(NBD_COMMANDS[2]),
                error(NBD_COMMANDS[3]),
                error(NBD_COMMANDS[4]),
                error(NBD_COMMANDS[5]),
                error(NBD_OTHER),
            ],
            read_bytes: bytes.with_label_values(&[export, "read"]),
            written_bytes: bytes.with_label_values(&[export, "write"]),
        }
    }

    /// The index of a command in the arrays; None for the ones never executed.
    fn index(command: Command) -> Option<usize> {
        match command {
            Command::Read => Some(0),
            Command::Write => Some(1),
            Command::Flush => Some(2),
            Command::Trim => Some(3),
            Command::WriteZeroes => Some(4),
            Command::BlockStatus => Some(5),
            Command::Disconnect | Command::Other(_) => None,
        }
    }

    /// A request was answered after `took`: times it, counts its payload if it
    /// succeeded (`bytes` read or written) and counts it as an error if it failed.
    pub fn request(&self, command: Command, took: Duration, ok: bool, bytes: u32) {
        let Some(i) = Self::index(command) else {
            self.refused(command);
            return;
        };
        self.durations[i].observe(took.as_secs_f64());
        if !ok {
            self.errors[i].inc();
            return;
        }
        match command {
            Command::Read => self.read_bytes.inc_by(u64::from(bytes)),
            Command::Write => self.written_bytes.inc_by(u64::from(bytes)),
            _ => {}
        }
    }

    /// A request was refused before it ran (invalid, read-only, unsupported).
    pub fn refused(&self, command: Command) {
        let i = Self::index(command).unwrap_or(NBD_COMMANDS.len());
        self.errors[i].inc();
    }
}
