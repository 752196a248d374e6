//! `--wait` on long operations (`tandem mirror resync|verify|connect`, the progress of
//! `tandem switchover`): the pure part decides from two status snapshots of a peer link
//! whether the operation is pending, done or failed ([`wait_outcome`], [`combine`]) and
//! computes percent, rate and ETA between two samples ([`progress`]); the thin loop
//! polls `/v1/mirrors` and shows it, as a bar (indicatif) on a terminal and as a plain
//! line every few seconds otherwise. `tandem image update URL` shows the daemon's
//! update the same way ([`image_step`], [`until_image_updated`]).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::api::client::{call, Endpoint};
use crate::api::ApiError;
use crate::cluster::packet::LocalGroupState;
use crate::image::job::{UpdateProgress, UpdateState};
use crate::mirror::status::{LinkState, MirrorPeerStatus};
use crate::status::{MirrorStatus, Status};

/// How often the loop polls the status.
const POLL: Duration = Duration::from_millis(500);
/// How often a plain progress line is printed when standard error is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(3);

/// Errors of a wait.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(transparent)]
    Api(#[from] ApiError),
    /// The operation cannot finish (a link dropped, a split brain, ...).
    #[error("{0}")]
    Failed(String),
    /// `--timeout` passed first.
    #[error("{0}")]
    TimedOut(String),
}

/// The operation being waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorOp {
    Resync,
    Verify,
    Connect,
}

impl MirrorOp {
    fn name(self) -> &'static str {
        match self {
            MirrorOp::Resync => "resync",
            MirrorOp::Verify => "verify",
            MirrorOp::Connect => "connect",
        }
    }
}

/// Where an operation on one link (or on every link, [`combine`]d) is.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Not finished; (done, total) bytes when it measures its work.
    Pending(Option<(u64, u64)>),
    Done(String),
    Failed(String),
}

/// One measurement of the work done, at a time in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub at_ms: u64,
    pub done: u64,
    pub total: u64,
}

/// Percent, rate and ETA of the work between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub percent: f64,
    /// None without an earlier sample of the same run.
    pub bytes_per_second: Option<f64>,
    pub eta_seconds: Option<f64>,
}

/// Progress at `now`, the rate measured since `prev` (if it is of the same run: earlier,
/// with no more work done than now).
pub fn progress(prev: Option<Sample>, now: Sample) -> Progress {
    let percent = if now.total == 0 {
        100.0
    } else {
        (now.done.min(now.total) as f64) * 100.0 / now.total as f64
    };
    let bytes_per_second = prev
        .filter(|p| p.at_ms < now.at_ms && p.done <= now.done && p.total == now.total)
        .map(|p| (now.done - p.done) as f64 * 1000.0 / (now.at_ms - p.at_ms) as f64);
    let eta_seconds = bytes_per_second
        .filter(|r| *r > 0.0)
        .map(|r| now.total.saturating_sub(now.done) as f64 / r);
    Progress {
        percent,
        bytes_per_second,
        eta_seconds,
    }
}

/// The progress as text: `42.0% 12.3 MB/s ETA 5 s`.
pub fn progress_text(p: &Progress) -> String {
    let mut s = format!("{:.1}%", p.percent);
    if let Some(r) = p.bytes_per_second {
        s.push_str(&format!(" {:.1} MB/s", r / 1e6));
    }
    if let Some(e) = p.eta_seconds {
        s.push_str(&format!(" ETA {} s", e.ceil() as u64));
    }
    s
}

/// A group's state on each live node, for a switchover's progress: `a stopping, b stopped`.
pub fn group_states(states: &BTreeMap<String, LocalGroupState>) -> String {
    let each: Vec<String> = states
        .iter()
        .map(|(node, s)| {
            let name = serde_json::to_value(s)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            format!("{node} {name}")
        })
        .collect();
    each.join(", ")
}

/// Where `op` is on the link to one peer, from that link's status before the request
/// (`before`) and now.
pub fn wait_outcome(op: MirrorOp, before: &MirrorPeerStatus, now: &MirrorPeerStatus) -> Outcome {
    let peer = &now.node;
    let link = now.connection;
    match op {
        MirrorOp::Connect => match link {
            LinkState::Connected | LinkState::Paused => {
                Outcome::Done(format!("`{peer}` connected"))
            }
            LinkState::SplitBrain | LinkState::Refused => {
                Outcome::Failed(format!("the link to `{peer}` is {}", link.name()))
            }
            LinkState::Connecting | LinkState::Disconnected => Outcome::Pending(None),
        },
        _ if link != LinkState::Connected => Outcome::Failed(format!(
            "the link to `{peer}` is {} before the {} finished",
            link.name(),
            op.name()
        )),
        MirrorOp::Resync => match &now.resync {
            Some(r) => Outcome::Pending(Some((r.done_bytes, r.total_bytes))),
            None if now.resyncs_completed > before.resyncs_completed
                && now.out_of_sync_bytes == 0 =>
            {
                Outcome::Done(format!("`{peer}` in sync"))
            }
            None => Outcome::Pending(None),
        },
        MirrorOp::Verify => {
            let started_before = before.verify.as_ref().map(|v| v.started_ms);
            match &now.verify {
                Some(v) if v.running => Outcome::Pending(Some((v.checked_bytes, v.total_bytes))),
                Some(v) if v.finished_ms.is_some() && Some(v.started_ms) != started_before => {
                    Outcome::Done(format!(
                        "`{peer}` verified, {} bytes out of sync",
                        v.out_of_sync_bytes
                    ))
                }
                _ => Outcome::Pending(None),
            }
        }
    }
}

/// Every link's outcome as one: failed if any failed, done when all are, else pending
/// with the work summed over the links that measure it.
pub fn combine(outcomes: Vec<Outcome>) -> Outcome {
    if let Some(f) = outcomes.iter().find(|o| matches!(o, Outcome::Failed(_))) {
        return f.clone();
    }
    if outcomes.iter().all(|o| matches!(o, Outcome::Done(_))) {
        let done: Vec<String> = outcomes
            .into_iter()
            .filter_map(|o| match o {
                Outcome::Done(s) => Some(s),
                _ => None,
            })
            .collect();
        return Outcome::Done(done.join(", "));
    }
    let work = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Pending(w) => *w,
            _ => None,
        })
        .reduce(|(d, t), (d2, t2)| (d + d2, t + t2));
    Outcome::Pending(work)
}

/// The links of `mirror` (only to `peer`, if given) in the API's mirror list.
fn links(
    all: Vec<MirrorStatus>,
    mirror: &str,
    peer: Option<&str>,
) -> Result<Vec<MirrorPeerStatus>, WaitError> {
    let m = all
        .into_iter()
        .find(|m| m.name == mirror)
        .ok_or_else(|| WaitError::Failed(format!("no mirror named `{mirror}` here")))?;
    let links: Vec<MirrorPeerStatus> = m
        .peers
        .into_iter()
        .filter(|p| peer.is_none_or(|n| p.node == n))
        .collect();
    if links.is_empty() {
        return Err(WaitError::Failed(format!(
            "mirror `{mirror}` has no such peer here"
        )));
    }
    Ok(links)
}

/// A mirror operation to wait for: which mirror, which peer (None: every peer).
pub struct MirrorWait<'a> {
    pub ep: &'a Endpoint,
    pub mirror: &'a str,
    pub peer: Option<&'a str>,
    pub op: MirrorOp,
    pub timeout: Duration,
}

impl MirrorWait<'_> {
    /// The links as they are before the request (what [`MirrorWait::until_done`]
    /// compares with).
    pub async fn baseline(&self) -> Result<Vec<MirrorPeerStatus>, WaitError> {
        links(
            call(self.ep, "GET", "/v1/mirrors", None).await?,
            self.mirror,
            self.peer,
        )
    }

    /// Polls until the operation is done (its summary), failed or timed out.
    pub async fn until_done(&self, before: &[MirrorPeerStatus]) -> Result<String, WaitError> {
        let what = format!("mirror `{}`: {}", self.mirror, self.op.name());
        let mut shown = Shown::new(&what);
        let deadline = Instant::now() + self.timeout;
        loop {
            let now = links(
                call(self.ep, "GET", "/v1/mirrors", None).await?,
                self.mirror,
                self.peer,
            )?;
            let outcomes = now
                .iter()
                .map(|n| {
                    let b = before.iter().find(|b| b.node == n.node).unwrap_or(n);
                    wait_outcome(self.op, b, n)
                })
                .collect();
            match combine(outcomes) {
                Outcome::Done(s) => return Ok(shown.finish(s)),
                Outcome::Failed(s) => {
                    shown.finish(String::new());
                    return Err(WaitError::Failed(format!("{what} failed: {s}")));
                }
                Outcome::Pending(work) => shown.update(work),
            }
            if Instant::now() >= deadline {
                shown.finish(String::new());
                return Err(WaitError::TimedOut(format!(
                    "{what}: not done after {} s",
                    self.timeout.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The groups `node` has not handed over yet (`tandem node standby --wait`): it
/// still runs, starts or stops them, or the node they moved to is still starting them.
pub fn groups_to_hand_off(node: &str, status: &Status) -> Vec<String> {
    use LocalGroupState::{Running, Starting, Stopping};
    status
        .groups
        .iter()
        .filter(|g| {
            let here = g.states.get(node);
            let moving_to = g
                .owner
                .as_deref()
                .filter(|o| *o != node)
                .and_then(|o| g.states.get(o));
            matches!(here, Some(Running | Starting | Stopping)) || moving_to == Some(&Starting)
        })
        .map(|g| g.name.clone())
        .collect()
}

/// Polls until `node` has handed its groups over (see [`groups_to_hand_off`]) or
/// `timeout` passes.
pub async fn until_handed_off(
    ep: &Endpoint,
    node: &str,
    timeout: Duration,
) -> Result<String, WaitError> {
    let what = format!("node `{node}`: standby");
    let mut shown = Shown::new(&what);
    let deadline = Instant::now() + timeout;
    loop {
        let status: Status = call(ep, "GET", "/v1/status", None).await?;
        let left = groups_to_hand_off(node, &status);
        if left.is_empty() {
            return Ok(shown.finish(format!("{what}: every group handed over")));
        }
        shown.note(format!("handing over {}", left.join(", ")));
        if Instant::now() >= deadline {
            shown.finish(String::new());
            return Err(WaitError::TimedOut(format!(
                "{what}: still handing over {} after {} s",
                left.join(", "),
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What an image update's progress shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageStep {
    /// Downloading: (done, total) bytes, the server having given the size.
    Work(u64, u64),
    /// A step without a measure.
    Note(String),
    /// Done or failed (or none since the daemon started).
    Ended,
}

/// What `p` shows while the update runs.
pub fn image_step(p: &UpdateProgress) -> ImageStep {
    let slot = p.slot.map_or("-", |s| s.name());
    match (p.state, p.total) {
        (UpdateState::Downloading, Some(total)) => ImageStep::Work(p.bytes, total),
        (UpdateState::Downloading, None) => {
            ImageStep::Note(format!("downloading, {} bytes", p.bytes))
        }
        (UpdateState::Verifying, _) => ImageStep::Note("checking the signature".into()),
        (UpdateState::Writing, _) => ImageStep::Note(format!("writing slot {slot}")),
        (UpdateState::Idle | UpdateState::Done | UpdateState::Failed, _) => ImageStep::Ended,
    }
}

/// Polls the daemon's image update (`GET /v1/image/update`) until it has ended (its
/// last progress, done or failed) or `timeout` passes.
pub async fn until_image_updated(
    ep: &Endpoint,
    timeout: Duration,
) -> Result<UpdateProgress, WaitError> {
    let mut shown = Shown::new("image update");
    let deadline = Instant::now() + timeout;
    loop {
        let p: UpdateProgress = call(ep, "GET", "/v1/image/update", None).await?;
        match image_step(&p) {
            ImageStep::Ended => {
                shown.finish(String::new());
                return Ok(p);
            }
            ImageStep::Work(done, total) => shown.update(Some((done, total))),
            ImageStep::Note(note) => shown.note(note),
        }
        if Instant::now() >= deadline {
            shown.finish(String::new());
            return Err(WaitError::TimedOut(format!(
                "image update: not done after {} s; the daemon goes on with it",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// How progress is shown: a bar on a terminal, plain lines otherwise.
pub struct Shown {
    what: String,
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    last_line: Option<Instant>,
    prev: Option<Sample>,
}

impl Shown {
    pub fn new(what: &str) -> Shown {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(100);
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            b.set_prefix(what.to_string());
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        Shown {
            what: what.to_string(),
            started: Instant::now(),
            bar,
            last_line: None,
            prev: None,
        }
    }

    /// What is happening (the state of each node, ...), with the time waited so far.
    pub fn note(&mut self, what: String) {
        let secs = self.started.elapsed().as_secs();
        self.show(format!("{what} ({secs} s)"));
    }

    /// A new measurement (done, total bytes), or only time passing.
    pub fn update(&mut self, work: Option<(u64, u64)>) {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let text = match work {
            Some((done, total)) => {
                let now = Sample { at_ms, done, total };
                let p = progress(self.prev, now);
                self.prev = Some(now);
                if let Some(b) = &self.bar {
                    b.set_position(p.percent as u64);
                }
                progress_text(&p)
            }
            None => format!("waiting, {} s", at_ms / 1000),
        };
        self.show(text);
    }

    /// Shows `text`: on the bar, or as a line if the last one is old enough.
    fn show(&mut self, text: String) {
        match &self.bar {
            Some(b) => b.set_message(text),
            None if self.last_line.is_none_or(|t| t.elapsed() >= LINE_EVERY) => {
                self.last_line = Some(Instant::now());
                eprintln!("{}: {text}", self.what);
            }
            None => {}
        }
    }

    /// Done: clears the bar; gives `summary` back.
    pub fn finish(&mut self, summary: String) -> String {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        summary
    }
}

#[cfg(test)]
#[path = "wait/tests.rs"]
mod tests;
