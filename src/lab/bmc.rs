//! The lab's BMC stand-in (`lab up --fence`): a minimal Redfish service for one lab
//! node, so that the daemon's power fencing runs end to end in the lab. It serves what
//! a fence reads (the systems collection, the ComputerSystem with its `PowerState` and
//! `#ComputerSystem.Reset` target) behind Basic authentication. `ForceOff` power-kills
//! the node's namespace and flushes its addresses, as the watchdog stand-in's reset
//! does, *before* it answers: once the fencer reads `Off`, the node is off. Power on
//! is `lab fail NODE restart`, as after any power cut.
//!
//! It runs detached in the switch namespace (never power-killed itself), listening on
//! the public LAN at [`super::topology::BMC_ADDR`], one port per node. Conformance to
//! real Redfish services is tested against `sushy-tools` in `tests/fence.rs`; this is
//! only the lab's power switch.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Args;
use serde_json::{json, Value};
use tracing::{info, warn};

use super::LabError;

/// The lab BMCs' user and password (the lab's configs name them).
pub const USER: &str = "lab";
pub const PASSWORD: &str = "lab-bmc";
/// Each power-off, one JSON line, in the node's directory.
pub const EVENTS: &str = "bmc-events.jsonl";

/// `tandem lab bmc-standin`.
#[derive(Debug, Clone, Args)]
pub struct BmcArgs {
    /// The node's name (the ComputerSystem's id).
    #[arg(long)]
    pub node: String,
    /// The node's network namespace (what `ForceOff` power-kills).
    #[arg(long)]
    pub netns: String,
    /// Where to listen.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where each power-off is written as a JSON line.
    #[arg(long)]
    pub events: PathBuf,
}

/// The system's power, as the stand-in reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    On,
    Off,
}

struct Bmc {
    args: BmcArgs,
    power: Mutex<Power>,
}

/// Serves until killed.
pub fn run(args: BmcArgs) -> Result<(), LabError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LabError::io("starting the BMC stand-in's runtime", e))?;
    rt.block_on(serve(args))
}

async fn serve(args: BmcArgs) -> Result<(), LabError> {
    let listen = args.listen;
    let bmc = Arc::new(Bmc {
        args,
        power: Mutex::new(Power::On),
    });
    let app = Router::new()
        .route("/redfish/v1/Systems", get(systems))
        .route("/redfish/v1/Systems/{id}", get(system))
        .route(
            "/redfish/v1/Systems/{id}/Actions/ComputerSystem.Reset",
            post(reset),
        )
        .with_state(bmc);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| LabError::io(format!("BMC stand-in: binding {listen}"), e))?;
    info!(%listen, "lab BMC stand-in listening");
    axum::serve(listener, app)
        .await
        .map_err(|e| LabError::io("BMC stand-in", e))
}

/// Basic authentication with the lab's user and password.
fn authorized(headers: &HeaderMap) -> bool {
    let want = crate::fence::http::base64(format!("{USER}:{PASSWORD}").as_bytes());
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .is_some_and(|v| v == want)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": { "message": message } }))).into_response()
}

async fn systems(State(bmc): State<Arc<Bmc>>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "bad credentials");
    }
    Json(json!({
        "Members": [{ "@odata.id": format!("/redfish/v1/Systems/{}", bmc.args.node) }],
        "Members@odata.count": 1,
    }))
    .into_response()
}

/// The ComputerSystem document: what `fence::redfish::parse_system` reads.
fn system_doc(node: &str, power: Power) -> Value {
    json!({
        "@odata.id": format!("/redfish/v1/Systems/{node}"),
        "Id": node,
        "PowerState": if power == Power::On { "On" } else { "Off" },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": format!("/redfish/v1/Systems/{node}/Actions/ComputerSystem.Reset"),
                "ResetType@Redfish.AllowableValues": ["ForceOff"],
            }
        }
    })
}

async fn system(
    State(bmc): State<Arc<Bmc>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "bad credentials");
    }
    if id != bmc.args.node {
        return error(StatusCode::NOT_FOUND, "no such system");
    }
    let power = *bmc.power.lock().unwrap_or_else(|p| p.into_inner());
    Json(system_doc(&bmc.args.node, power)).into_response()
}

async fn reset(
    State(bmc): State<Arc<Bmc>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, "bad credentials");
    }
    if id != bmc.args.node {
        return error(StatusCode::NOT_FOUND, "no such system");
    }
    match body.get("ResetType").and_then(Value::as_str) {
        Some("ForceOff") => {}
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the lab BMC does only ForceOff, not {other}: power on with `tandem lab fail NODE restart`"),
            )
        }
        None => return error(StatusCode::BAD_REQUEST, "no ResetType"),
    }
    let b = bmc.clone();
    // The power kill runs `ip` and signals: off the async threads.
    let done = tokio::task::spawn_blocking(move || {
        let event = json!({ "event": "bmc_force_off" });
        super::reset_node(&b.args.node, &b.args.netns, &b.args.events, event)
    })
    .await;
    match done {
        Ok(Ok(())) => {
            *bmc.power.lock().unwrap_or_else(|p| p.into_inner()) = Power::Off;
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Err(e)) => {
            warn!(node = %bmc.args.node, error = %e, "ForceOff failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fence::plan::PowerState;
    use crate::fence::redfish::{parse_system, reset_path, ResetType};

    #[test]
    fn the_fence_client_reads_the_stand_in_document() {
        let v = parse_system(&system_doc("n1", Power::On));
        assert_eq!(v.power, PowerState::On);
        assert_eq!(
            reset_path(&v, ResetType::ForceOff).unwrap(),
            "/redfish/v1/Systems/n1/Actions/ComputerSystem.Reset"
        );
        assert!(reset_path(&v, ResetType::On).is_err(), "only ForceOff");
        assert_eq!(
            parse_system(&system_doc("n1", Power::Off)).power,
            PowerState::Off
        );
    }

    #[test]
    fn basic_auth_is_checked() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h));
        let good = crate::fence::http::base64(b"lab:lab-bmc");
        h.insert(
            axum::http::header::AUTHORIZATION,
            format!("Basic {good}").parse().unwrap(),
        );
        assert!(authorized(&h));
    }
}
