//! Fencing through a BMC's Redfish service (DMTF DSP0266, schema DSP8010).
//!
//! A fence reads the ComputerSystem (`/redfish/v1/Systems/<id>`, or the first member
//! of `/redfish/v1/Systems` when no id is configured), takes the reset action's target
//! from `Actions["#ComputerSystem.Reset"].target` (never built by hand), POSTs
//! `{"ResetType": "ForceOff"}` to it, then polls `PowerState` until it reads `Off`:
//! only then is the node fenced (as fence_redfish does). Unfencing POSTs `On` and waits
//! for `On`. The JSON is read by pure functions, tested on the emulator's documents.

use std::time::{Duration, Instant};

use serde_json::Value;
use tracing::info;

use super::http::Bmc;
use super::plan::{FenceAction, PowerState};
use super::FenceError;
use crate::config::RedfishConfig;

/// How often `PowerState` is read while waiting for a change.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The systems collection (DSP0266 s6.5: the service root's `Systems`).
const SYSTEMS: &str = "/redfish/v1/Systems";

/// A Redfish `ResetType` Tandem sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetType {
    ForceOff,
    On,
}

impl ResetType {
    fn as_str(self) -> &'static str {
        match self {
            ResetType::ForceOff => "ForceOff",
            ResetType::On => "On",
        }
    }
}

/// What a fence needs from a ComputerSystem document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemView {
    pub power: PowerState,
    /// `Actions["#ComputerSystem.Reset"].target`, as a path.
    pub reset_target: Option<String>,
    /// `ResetType@Redfish.AllowableValues`, when the BMC lists them.
    pub allowed: Option<Vec<String>>,
}

/// Reads a ComputerSystem document.
pub fn parse_system(doc: &Value) -> SystemView {
    let reset = doc
        .get("Actions")
        .and_then(|a| a.get("#ComputerSystem.Reset"));
    SystemView {
        power: doc
            .get("PowerState")
            .and_then(Value::as_str)
            .map_or(PowerState::Unknown, PowerState::from_redfish),
        reset_target: reset
            .and_then(|r| r.get("target"))
            .and_then(Value::as_str)
            .map(as_path),
        allowed: reset
            .and_then(|r| r.get("ResetType@Redfish.AllowableValues"))
            .and_then(Value::as_array)
            .map(|v| {
                v.iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect()
            }),
    }
}

/// The path to POST `reset` to: the action's target, if the BMC allows that type.
pub fn reset_path(view: &SystemView, reset: ResetType) -> Result<String, FenceError> {
    let target = view.reset_target.clone().ok_or(FenceError::NoResetAction)?;
    match &view.allowed {
        Some(list) if !list.iter().any(|t| t == reset.as_str()) => Err(FenceError::Unsupported {
            reset: reset.as_str(),
            allowed: list.join(", "),
        }),
        _ => Ok(target),
    }
}

/// The first member's path in a collection (`Members[0]["@odata.id"]`).
pub fn first_member(collection: &Value) -> Result<String, FenceError> {
    collection
        .get("Members")
        .and_then(Value::as_array)
        .and_then(|m| m.first())
        .and_then(|m| m.get("@odata.id"))
        .and_then(Value::as_str)
        .map(as_path)
        .ok_or(FenceError::NoSystem)
}

/// A link as a path: an absolute URL loses its scheme and authority.
fn as_path(link: &str) -> String {
    for scheme in ["https://", "http://"] {
        if let Some(rest) = link.strip_prefix(scheme) {
            return rest.find('/').map_or("/".into(), |i| rest[i..].to_string());
        }
    }
    link.to_string()
}

/// One BMC's Redfish service.
pub struct Redfish {
    bmc: Bmc,
    system: Option<String>,
}

impl Redfish {
    /// A client for `cfg`, with `password` already read; each request may take up to
    /// `request_timeout`.
    pub fn new(
        cfg: &RedfishConfig,
        password: &str,
        request_timeout: Duration,
    ) -> Result<Redfish, FenceError> {
        Ok(Redfish {
            bmc: Bmc::new(&cfg.url, &cfg.user, password, cfg.insecure, request_timeout)?,
            system: cfg.system.clone(),
        })
    }

    /// The ComputerSystem's path: configured, or discovered.
    async fn system_path(&self) -> Result<String, FenceError> {
        match &self.system {
            Some(id) => Ok(format!("{SYSTEMS}/{id}")),
            None => first_member(&self.bmc.get(SYSTEMS).await?),
        }
    }

    /// The system's `PowerState`.
    pub async fn power_state(&self) -> Result<PowerState, FenceError> {
        let path = self.system_path().await?;
        Ok(parse_system(&self.bmc.get(&path).await?).power)
    }

    /// Carries out `action`: reads the state, or sends the reset and polls until the
    /// state reads as wanted. Returns the state and the time from the POST (zero when
    /// nothing was sent).
    pub async fn run(
        &self,
        action: FenceAction,
        timeout: Duration,
    ) -> Result<(PowerState, Duration), FenceError> {
        let path = self.system_path().await?;
        let view = parse_system(&self.bmc.get(&path).await?);
        let (reset, want) = match action {
            FenceAction::Status => return Ok((view.power, Duration::ZERO)),
            FenceAction::Off => (ResetType::ForceOff, PowerState::Off),
            FenceAction::On => (ResetType::On, PowerState::On),
        };
        let target = reset_path(&view, reset)?;
        info!(system = %path, %target, reset = reset.as_str(), before = %view.power, "redfish reset");
        let t0 = Instant::now();
        self.bmc
            .post(&target, serde_json::json!({ "ResetType": reset.as_str() }))
            .await?;
        let bmc = &self.bmc;
        let path = &path;
        super::wait_for_power(want, t0, timeout, POLL_INTERVAL, || async move {
            Ok(parse_system(&bmc.get(path).await?).power)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trimmed from sushy-tools' emulator (fake driver).
    fn system() -> Value {
        serde_json::json!({
            "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
            "Id": "27946b59-9e44-4fa7-8e91-f3527a1ef094",
            "PowerState": "On",
            "Actions": {
                "#ComputerSystem.Reset": {
                    "target": "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094/Actions/ComputerSystem.Reset",
                    "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdown"]
                }
            }
        })
    }

    #[test]
    fn reads_power_and_the_reset_target() {
        let v = parse_system(&system());
        assert_eq!(v.power, PowerState::On);
        assert_eq!(
            reset_path(&v, ResetType::ForceOff).unwrap(),
            "/redfish/v1/Systems/27946b59-9e44-4fa7-8e91-f3527a1ef094/Actions/ComputerSystem.Reset"
        );
    }

    #[test]
    fn refuses_a_reset_type_the_bmc_does_not_list() {
        let mut doc = system();
        doc["Actions"]["#ComputerSystem.Reset"]["ResetType@Redfish.AllowableValues"] =
            serde_json::json!(["On", "GracefulShutdown"]);
        let err = reset_path(&parse_system(&doc), ResetType::ForceOff).unwrap_err();
        assert!(matches!(err, FenceError::Unsupported { .. }), "{err}");
        // Without a list, the target is used as it is.
        doc["Actions"]["#ComputerSystem.Reset"]
            .as_object_mut()
            .unwrap()
            .remove("ResetType@Redfish.AllowableValues");
        assert!(reset_path(&parse_system(&doc), ResetType::ForceOff).is_ok());
    }

    #[test]
    fn a_system_without_the_action_or_power_state() {
        let v = parse_system(&serde_json::json!({ "Id": "1" }));
        assert_eq!(v.power, PowerState::Unknown);
        assert!(matches!(
            reset_path(&v, ResetType::On),
            Err(FenceError::NoResetAction)
        ));
    }

    #[test]
    fn discovers_the_first_system_and_strips_absolute_links() {
        let c = serde_json::json!({ "Members": [
            { "@odata.id": "https://10.0.0.21/redfish/v1/Systems/1" },
            { "@odata.id": "/redfish/v1/Systems/2" }
        ]});
        assert_eq!(first_member(&c).unwrap(), "/redfish/v1/Systems/1");
        let empty = serde_json::json!({ "Members": [] });
        assert!(matches!(first_member(&empty), Err(FenceError::NoSystem)));
        assert_eq!(as_path("/a/b"), "/a/b");
    }
}
