//! Power fencing: switching a node off through its BMC so that it cannot touch shared
//! state, and only counting it fenced once the BMC reports the power off.
//!
//! - `plan.rs` (pure): the methods in order (Redfish, then IPMI), the delay that
//!   favours a group owner in a fence race, the poll decision, [`FenceOutcome`].
//! - `redfish.rs`: the Redfish client (ComputerSystem.Reset `ForceOff`/`On`,
//!   `PowerState` polling) over `http.rs` (hyper, rustls, Basic auth).
//! - `ipmi.rs`: the `ipmitool` fallback.
//!
//! [`execute`] runs one action on one node: `tandem fence`, and the daemon, when its
//! node core (`node::power_fencing`) asks it to power a previous owner off after a
//! takeover (after that node's fence delay); the `fence_*` events report it.

pub mod http;
pub mod ipmi;
pub mod plan;
pub mod redfish;

use std::path::PathBuf;
use std::time::Duration;

use tracing::{info, warn, Instrument};

use crate::config::{FenceConfig, RedfishConfig};
pub use plan::{FenceAction, FenceOutcome, Method, PowerState};

/// Why one fencing method failed.
#[derive(Debug, thiserror::Error)]
pub enum FenceError {
    #[error("invalid BMC URL: {0}")]
    Url(String),
    #[error("cannot read the password file {path}: {source}")]
    PasswordFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the password file {0} is empty")]
    EmptyPassword(PathBuf),
    #[error("no password configured")]
    NoPassword,
    #[error("cannot reach the BMC at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the BMC at {url} refused the credentials (HTTP {status}): check user and password")]
    Unauthorized { url: String, status: u16 },
    #[error("the BMC has no {path} (HTTP 404): check the system id")]
    NotFound { path: String },
    #[error("the BMC answered HTTP {status} to {path}: {message}")]
    Status {
        path: String,
        status: u16,
        message: String,
    },
    #[error("unexpected answer from {path}: {reason}")]
    Protocol { path: String, reason: String },
    #[error("the BMC lists no system in /redfish/v1/Systems")]
    NoSystem,
    #[error("the system has no #ComputerSystem.Reset action")]
    NoResetAction,
    #[error("the BMC does not allow ResetType {reset} (it allows {allowed})")]
    Unsupported {
        reset: &'static str,
        allowed: String,
    },
    #[error("the power did not read {want} within {after:?} (last read: {last})")]
    Timeout {
        want: PowerState,
        last: PowerState,
        after: Duration,
    },
    #[error("ipmitool is not installed (Debian: apt-get install ipmitool)")]
    IpmitoolMissing,
    #[error("{0}")]
    Ipmi(String),
    #[error("no fencing method is configured for this node ([node.fence])")]
    NotConfigured,
}

/// The longest one HTTP request to a BMC may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `action` on node `node` with its `[node.fence]` section: each method in order
/// until one succeeds. Never waits the fence delay: the caller decides that with
/// [`plan::fence_delay`].
pub async fn execute(node: &str, cfg: &FenceConfig, action: FenceAction) -> FenceOutcome {
    let mut attempts = Vec::new();
    for method in plan::methods(cfg) {
        let span = tracing::info_span!("fence", node, %method, ?action);
        match run_method(cfg, method, action).instrument(span).await {
            Ok((state, elapsed)) => {
                info!(node, %method, ?action, power = %state, ?elapsed, "fence action done");
                return match action {
                    FenceAction::Off => FenceOutcome::Off { method, elapsed },
                    FenceAction::On => FenceOutcome::On { method, elapsed },
                    FenceAction::Status => FenceOutcome::State { method, state },
                };
            }
            Err(e) => {
                warn!(node, %method, ?action, error = %e, "fence method failed");
                attempts.push((method, e));
            }
        }
    }
    if attempts.is_empty() {
        attempts.push((Method::Redfish, FenceError::NotConfigured));
    }
    FenceOutcome::Failed { attempts }
}

async fn run_method(
    cfg: &FenceConfig,
    method: Method,
    action: FenceAction,
) -> Result<(PowerState, Duration), FenceError> {
    match method {
        Method::Redfish => {
            let r = cfg.redfish.as_ref().ok_or(FenceError::NotConfigured)?;
            let client = redfish::Redfish::new(r, &redfish_password(r)?, REQUEST_TIMEOUT)?;
            client.run(action, cfg.timeout).await
        }
        Method::Ipmi => {
            let i = cfg.ipmi.as_ref().ok_or(FenceError::NotConfigured)?;
            ipmi::run(ipmi::PROGRAM, i, action, cfg.timeout).await
        }
    }
}

/// The Redfish password: `password`, or the trimmed contents of `password_file` (refused
/// unless only its owner can read it).
pub fn redfish_password(cfg: &RedfishConfig) -> Result<String, FenceError> {
    match (&cfg.password, &cfg.password_file) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(path)) => {
            let text =
                crate::config::secret::read(path).map_err(|source| FenceError::PasswordFile {
                    path: path.clone(),
                    source,
                })?;
            let p = text.as_str();
            if p.is_empty() {
                return Err(FenceError::EmptyPassword(path.clone()));
            }
            Ok(p.to_string())
        }
        (None, None) => Err(FenceError::NoPassword),
    }
}

/// Reads the power state every `interval` until it is `want` or `timeout` has passed
/// since `t0` (when the request went out); [`plan::poll_step`] decides. Shared by the
/// Redfish and IPMI methods, which differ only in how they read.
async fn wait_for_power<F, Fut>(
    want: plan::PowerState,
    t0: std::time::Instant,
    timeout: Duration,
    interval: Duration,
    mut read: F,
) -> Result<(plan::PowerState, Duration), FenceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<plan::PowerState, FenceError>>,
{
    loop {
        let power = read().await?;
        let elapsed = t0.elapsed();
        tracing::debug!(%power, ?elapsed, "power state");
        match plan::poll_step(want, power, elapsed, timeout, interval) {
            plan::PollStep::Done => return Ok((power, elapsed)),
            plan::PollStep::Again(d) => tokio::time::sleep(d).await,
            plan::PollStep::TimedOut => {
                return Err(FenceError::Timeout {
                    want,
                    last: power,
                    after: elapsed,
                })
            }
        }
    }
}
