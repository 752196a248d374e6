//! Where the log lines go. Under systemd, when stderr is the journal, they go to the
//! journal natively (`tracing-journald`: levels and fields kept); otherwise to stderr,
//! in colour only for a person at a terminal; or, with `--log-file`, to a file rotated
//! by size ([`crate::rotate`]). Lines are written by a thread of their own, so the
//! daemon's event loop never waits for a slow stderr or disk.
//!
//! systemd tells a service that its stderr is the journal through `JOURNAL_STREAM`
//! (`DEVICE:INODE` of that stream). `INVOCATION_ID` alone only says systemd started
//! us: a unit with `StandardError=file:...` has it too, so it does not choose the
//! journal here.

use std::path::{Path, PathBuf};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::rotate;

/// Where the log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// The systemd journal, natively.
    Journal,
    /// Standard error; colour for a terminal.
    Stderr { colour: bool },
    /// A file rotated by size.
    File(PathBuf),
}

/// What [`choose`] decides from.
#[derive(Debug, Clone, Default)]
pub struct Surroundings {
    /// `--log-file`.
    pub log_file: Option<PathBuf>,
    /// The `JOURNAL_STREAM` variable.
    pub journal_stream: Option<String>,
    /// Device and inode of stderr.
    pub stderr_id: Option<(u64, u64)>,
    /// Whether stderr is a terminal.
    pub stderr_tty: bool,
    /// Whether `NO_COLOR` is set.
    pub no_color: bool,
}

impl Surroundings {
    /// This process's surroundings.
    pub fn here(log_file: Option<&Path>) -> Surroundings {
        let stderr_id = nix::sys::stat::fstat(libc::STDERR_FILENO)
            .ok()
            .map(|st| (st.st_dev, st.st_ino));
        Surroundings {
            log_file: log_file.map(Path::to_path_buf),
            journal_stream: std::env::var("JOURNAL_STREAM").ok(),
            stderr_id,
            stderr_tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            no_color: std::env::var_os("NO_COLOR").is_some(),
        }
    }
}

/// A file if one is asked for; the journal when stderr is the stream systemd connected
/// to it; stderr otherwise, in colour only on a terminal without `NO_COLOR`.
pub fn choose(s: &Surroundings) -> Sink {
    if let Some(f) = &s.log_file {
        return Sink::File(f.clone());
    }
    let journal = match (&s.journal_stream, s.stderr_id) {
        (Some(js), Some(id)) => parse_journal_stream(js) == Some(id),
        _ => false,
    };
    if journal {
        return Sink::Journal;
    }
    Sink::Stderr {
        colour: s.stderr_tty && !s.no_color,
    }
}

/// `JOURNAL_STREAM`'s `DEVICE:INODE`, both decimal.
fn parse_journal_stream(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.trim().split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// Flushes the queued lines when dropped (at exit).
pub struct Guard {
    _flush: Option<tracing_appender::non_blocking::WorkerGuard>,
}

/// Installs the global subscriber: `TANDEM_LOG` (default `info`) filters, `sink` takes
/// the lines. A journal that cannot be reached, or a log file that cannot be opened,
/// falls back to stderr with a warning.
pub fn init(sink: &Sink, file_policy: rotate::Policy) -> Guard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (journal, writer, fallback) = open(sink, file_policy);
    let (fmt, guard) = match writer {
        Some((w, colour)) => {
            let (w, guard) = tracing_appender::non_blocking(w);
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(w)
                .with_ansi(colour);
            (Some(layer), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(journal)
        .with(fmt)
        .init();
    if let Some(why) = fallback {
        tracing::warn!("logging to stderr: cannot log to {why}");
    }
    Guard { _flush: guard }
}

/// A writer and whether it takes colour.
type Writer = (Box<dyn std::io::Write + Send>, bool);

/// The sink opened: the journal's layer or a writer, and why it fell back to stderr.
fn open(
    sink: &Sink,
    file_policy: rotate::Policy,
) -> (
    Option<tracing_journald::Layer>,
    Option<Writer>,
    Option<String>,
) {
    let stderr = |colour| -> Writer { (Box::new(std::io::stderr()), colour) };
    match sink {
        Sink::Journal => match tracing_journald::layer() {
            Ok(layer) => (Some(layer), None, None),
            Err(e) => (None, Some(stderr(false)), Some(format!("the journal: {e}"))),
        },
        Sink::File(path) => match rotate::RotatingFile::open(path, file_policy) {
            Ok(f) => (None, Some((Box::new(f), false)), None),
            Err(e) => (
                None,
                Some(stderr(false)),
                Some(format!("{}: {e}", path.display())),
            ),
        },
        Sink::Stderr { colour } => (None, Some(stderr(*colour)), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(journal_stream: Option<&str>, stderr_id: (u64, u64), tty: bool) -> Surroundings {
        Surroundings {
            log_file: None,
            journal_stream: journal_stream.map(str::to_string),
            stderr_id: Some(stderr_id),
            stderr_tty: tty,
            no_color: false,
        }
    }

    #[test]
    fn the_journal_only_when_stderr_is_the_stream_systemd_named() {
        assert_eq!(choose(&at(Some("8:1234"), (8, 1234), false)), Sink::Journal);
        // Stderr redirected elsewhere (a shell under the unit, StandardError=file:).
        assert_eq!(
            choose(&at(Some("8:1234"), (8, 999), false)),
            Sink::Stderr { colour: false }
        );
        assert_eq!(
            choose(&at(Some("garbage"), (8, 1234), false)),
            Sink::Stderr { colour: false }
        );
        assert_eq!(
            choose(&at(None, (8, 1234), false)),
            Sink::Stderr { colour: false }
        );
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert_eq!(
            choose(&at(None, (1, 2), true)),
            Sink::Stderr { colour: true }
        );
        assert_eq!(
            choose(&at(None, (1, 2), false)),
            Sink::Stderr { colour: false }
        );
        let mut s = at(None, (1, 2), true);
        s.no_color = true;
        assert_eq!(choose(&s), Sink::Stderr { colour: false });
    }

    #[test]
    fn a_log_file_wins() {
        let mut s = at(Some("8:1234"), (8, 1234), true);
        s.log_file = Some(PathBuf::from("tandem.log"));
        assert_eq!(choose(&s), Sink::File(PathBuf::from("tandem.log")));
    }
}
