//! The daemon's image update, asked for through the API (`POST /v1/image/update
//! {"url": ...}`, `tandem image update URL`): one at a time, in the background. The
//! daemon fetches `URL.sig` first (a missing one refuses the update before anything
//! large is downloaded), then the image into `<state_dir>/image-update/`, then hands
//! both to [`super::install_signed`], the same check and slot write as the command
//! line's. Progress ([`UpdateProgress`]: downloading, verifying, writing, done or
//! failed, bytes and total) is what `GET /v1/image/update` answers; the start and the
//! outcome are events (`image_update_started`, `_finished`, `_failed`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::sign::SignError;
use super::{install_signed, Esp, ImageError, Slot};
use crate::config::ImageConfig;
use crate::event::{fields, EventKind, EventLog};
use crate::net::http::{self, Trust, Url};

/// Where an update is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// No update since the daemon started.
    #[default]
    Idle,
    Downloading,
    /// Checking the signature against the trusted keys.
    Verifying,
    /// Writing the inactive slot.
    Writing,
    /// The inactive slot is written and boots next, on trial.
    Done,
    Failed,
}

impl UpdateState {
    /// An update in this state is still under way (another one is refused).
    pub fn running(self) -> bool {
        matches!(
            self,
            UpdateState::Downloading | UpdateState::Verifying | UpdateState::Writing
        )
    }
}

/// Why an update failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The image or its signature could not be fetched.
    Download,
    /// The image is not signed by a trusted key (the command line's exit 4).
    Signature,
    /// The image could not be read or the slot written.
    Image,
}

/// The progress of the last update (`GET /v1/image/update`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateProgress {
    pub state: UpdateState,
    #[serde(default)]
    pub url: Option<String>,
    /// Bytes of the image downloaded so far.
    #[serde(default)]
    pub bytes: u64,
    /// The image's size, when the server says.
    #[serde(default)]
    pub total: Option<u64>,
    /// The slot being written (the one not running).
    #[serde(default)]
    pub slot: Option<Slot>,
    /// The public key (hex) that signed the image, once verified.
    #[serde(default)]
    pub key: Option<String>,
    /// The new loader entry, once done.
    #[serde(default)]
    pub entry: Option<String>,
    #[serde(default)]
    pub failure: Option<Failure>,
    #[serde(default)]
    pub error: Option<String>,
}

/// Why an update was not started.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("an image update from {0} is already running")]
    Busy(String),
    #[error("{0}")]
    Url(String),
    #[error(transparent)]
    Slot(ImageError),
}

/// How an update ended badly: what failed, and why.
type Failed = (Failure, String);

/// An image error as a failure: a signature refusal apart from the rest.
fn failed(e: ImageError) -> Failed {
    let failure = match &e {
        ImageError::Sign(s) if s.is_refusal() => Failure::Signature,
        _ => Failure::Image,
    };
    (failure, e.to_string())
}

/// The daemon's update job: its progress, shared with the API.
#[derive(Clone)]
pub struct ImageJob {
    progress: Arc<Mutex<UpdateProgress>>,
    cfg: ImageConfig,
    staging: PathBuf,
    events: EventLog,
}

impl ImageJob {
    /// A job for the slots `cfg` names, downloading into `staging`.
    pub fn new(cfg: ImageConfig, staging: PathBuf, events: EventLog) -> ImageJob {
        ImageJob {
            progress: Arc::default(),
            cfg,
            staging,
            events,
        }
    }

    /// The progress of the last (or the running) update.
    pub fn progress(&self) -> UpdateProgress {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UpdateProgress> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, change: impl FnOnce(&mut UpdateProgress)) {
        change(&mut self.lock());
    }

    /// Starts an update from `url` in the background (on the current tokio runtime);
    /// its progress as it begins. Refused while another one runs.
    pub fn start(&self, url: &str) -> Result<UpdateProgress, JobError> {
        let parsed = Url::parse(url).map_err(JobError::Url)?;
        let running = match self.cfg.slot {
            Some(s) => s,
            None => super::running_slot().map_err(JobError::Slot)?,
        };
        let begun = {
            let mut p = self.lock();
            if p.state.running() {
                return Err(JobError::Busy(p.url.clone().unwrap_or_default()));
            }
            *p = UpdateProgress {
                state: UpdateState::Downloading,
                url: Some(url.to_string()),
                slot: Some(running.other()),
                ..UpdateProgress::default()
            };
            p.clone()
        };
        self.events.emit(
            EventKind::ImageUpdateStarted,
            fields([("url", url.into()), ("slot", running.other().to_string())]),
        );
        let job = self.clone();
        let url = url.to_string();
        tokio::spawn(async move { job.run(parsed, url, running).await });
        Ok(begun)
    }

    async fn run(self, parsed: Url, url: String, running: Slot) {
        let outcome = self.attempt(&parsed, &url, running).await;
        let _ = std::fs::remove_dir_all(&self.staging);
        match outcome {
            Ok(u) => {
                self.set(|p| {
                    p.state = UpdateState::Done;
                    p.entry = Some(u.entry.file_name());
                });
                let key = self.progress().key.unwrap_or_default();
                self.events.emit(
                    EventKind::ImageUpdateFinished,
                    fields([
                        ("url", url),
                        ("slot", u.slot.to_string()),
                        ("entry", u.entry.file_name()),
                        ("bytes", u.bytes.to_string()),
                        ("key", key),
                    ]),
                );
            }
            Err((failure, reason)) => {
                self.set(|p| {
                    p.state = UpdateState::Failed;
                    p.failure = Some(failure);
                    p.error = Some(reason.clone());
                });
                self.events.emit(
                    EventKind::ImageUpdateFailed,
                    fields([("url", url), ("reason", reason)]),
                );
            }
        }
    }

    /// Signature, image, then the shared check and slot write.
    async fn attempt(
        &self,
        parsed: &Url,
        url: &str,
        running: Slot,
    ) -> Result<super::Updated, Failed> {
        let download = |e: String| (Failure::Download, e);
        std::fs::create_dir_all(&self.staging)
            .map_err(|e| download(format!("{}: {e}", self.staging.display())))?;
        let image = self.staging.join(staged_name(&parsed.path));
        let tls = match &self.cfg.ca_file {
            Some(f) => http::client_config(Trust::CaFile(f)),
            None => http::client_config(Trust::PublicRoots),
        }
        .map_err(download)?;
        let sig_url = Url::parse(&format!("{url}.sig")).map_err(download)?;
        let sig = fetch_signature(&sig_url, &tls, url).await?;
        let sig_path = super::sign::signature_path(&image);
        std::fs::write(&sig_path, sig)
            .map_err(|e| download(format!("{}: {e}", sig_path.display())))?;
        let mut out = tokio::fs::File::create(&image)
            .await
            .map_err(|e| download(format!("{}: {e}", image.display())))?;
        let req = parsed.get().map_err(download)?;
        http::download(&parsed.target(Some(&tls)), req, &mut out, |bytes, total| {
            self.set(|p| {
                p.bytes = bytes;
                p.total = total;
            })
        })
        .await
        .map_err(|e| download(format!("GET {url}: {e}")))?;
        drop(out);
        self.set(|p| p.state = UpdateState::Verifying);
        let job = self.clone();
        tokio::task::spawn_blocking(move || {
            let esp = Esp::new(&job.cfg.esp);
            install_signed(&esp, &image, running, &job.cfg.trusted_keys, |key| {
                job.set(|p| {
                    p.state = UpdateState::Writing;
                    p.key = Some(hex::encode(key.to_bytes()));
                })
            })
        })
        .await
        .map_err(|e| (Failure::Image, e.to_string()))?
        .map_err(failed)
    }
}

/// `URL.sig`'s text; a missing one is the command line's "not signed", named by `url`.
async fn fetch_signature(
    sig_url: &Url,
    tls: &Arc<rustls::ClientConfig>,
    url: &str,
) -> Result<Vec<u8>, Failed> {
    let req = sig_url.get().map_err(|e| (Failure::Download, e))?;
    let (status, body) = http::exchange(&sig_url.target(Some(tls)), req)
        .await
        .map_err(|e| (Failure::Download, format!("GET {url}.sig: {e}")))?;
    match status.as_u16() {
        200..=299 => Ok(body.to_vec()),
        404 | 410 => Err(failed(SignError::Unsigned(PathBuf::from(url)).into())),
        _ => Err((Failure::Download, format!("GET {url}.sig: status {status}"))),
    }
}

/// The staged file's name: the URL path's last part when it is a plain file name
/// (messages then name the file as published), else `update.img`.
pub fn staged_name(path: &str) -> String {
    let last = path.split('?').next().unwrap_or("").rsplit('/').next();
    match last {
        Some(n)
            if !n.is_empty()
                && n != "."
                && n != ".."
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c)) =>
        {
            n.to_string()
        }
        _ => "update.img".to_string(),
    }
}

/// The staging directory of a daemon whose state is in `state_dir`.
pub fn staging_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("image-update")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_downloading_verifying_and_writing_hold_off_another_update() {
        use UpdateState::*;
        let running: Vec<UpdateState> = [Idle, Downloading, Verifying, Writing, Done, Failed]
            .into_iter()
            .filter(|s| s.running())
            .collect();
        assert_eq!(running, [Downloading, Verifying, Writing]);
        let json = serde_json::to_value(UpdateProgress::default()).unwrap();
        assert_eq!(json["state"], "idle");
    }

    #[test]
    fn the_staged_file_keeps_a_plain_published_name() {
        assert_eq!(staged_name("/rel/tandem.img.zst"), "tandem.img.zst");
        assert_eq!(staged_name("/rel/tandem.img.zst?x=1"), "tandem.img.zst");
        for odd in ["/", "/rel/..", "/a/b%20c", "/x/"] {
            assert_eq!(staged_name(odd), "update.img", "{odd}");
        }
    }

    #[test]
    fn a_signature_refusal_is_told_apart_from_other_failures() {
        let unsigned = failed(SignError::Unsigned("http://h/i".into()).into());
        assert_eq!(unsigned.0, Failure::Signature);
        assert!(
            unsigned.1.contains("http://h/i: not signed"),
            "{}",
            unsigned.1
        );
        let other = failed(ImageError::NoGpt("/x".into()));
        assert_eq!(other.0, Failure::Image);
    }

    #[tokio::test]
    async fn a_second_update_is_refused_while_one_runs() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ImageConfig {
            slot: Some(Slot::A),
            ..ImageConfig::default()
        };
        let job = ImageJob::new(cfg, dir.path().join("s"), EventLog::in_memory("n1"));
        // Nothing listens on port 9 of loopback: the first fails soon, but not before
        // the second asks.
        let first = job.start("http://127.0.0.1:9/a.img").unwrap();
        assert_eq!(first.state, UpdateState::Downloading);
        assert_eq!(first.slot, Some(Slot::B));
        assert!(matches!(
            job.start("http://127.0.0.1:9/b.img"),
            Err(JobError::Busy(u)) if u.ends_with("a.img")
        ));
        assert!(matches!(job.start("ftp://x/y"), Err(JobError::Url(_))));
    }
}
