//! The API server: axum routes over the daemon's status snapshot and event log.
//!
//! Routes (JSON; errors are `{"error": "..."}` with a 4xx/5xx status):
//! On TCP every request needs a bearer token, and the token's role must allow the route
//! (`console::authz`: reading for viewers, the day-to-day actions for operators, the
//! rest for admins); every action through TCP is audited.
//!
//! - `GET  /v1/status` — the whole snapshot: nodes, paths, groups, counters.
//! - `GET  /v1/nodes`, `/v1/paths`, `/v1/groups` — parts of it.
//! - `GET  /v1/events?since=SEQ&limit=N&wait_ms=MS` — events after SEQ; long-polls up
//!   to MS when there are none yet.
//! - `GET  /v1/events/stream?since=SEQ` — newline-delimited JSON, backlog then live.
//! - `GET  /v1/history` — failover/switchover timelines.
//! - `POST /v1/groups/{group}/switchover` `{"to": NODE?, "timeout_ms": N?}` — returns
//!   once the group passes its checks on the target, or with the reason it did not.
//! - `POST /v1/groups/{group}/maintenance` `{"on": bool}`.
//! - `POST /v1/groups/{group}/clear` `{"node": NODE?}` — this node forgets the group's
//!   failures and lifts its block.
//! - `POST /v1/nodes/{node}/standby` and `/v1/nodes/{node}/online`.
//! - `GET  /v1/mirrors/{mirror}/plan?lag=30s&percentile=95` — link sizing from the
//!   mirror's write-rate history (`tandem mirror plan`).
//! - `POST /v1/config/reload` and `PUT /v1/config` (the whole TOML) — see [`config`].
//! - `POST /v1/image/update` `{"url": URL}` — starts an update of the inactive boot
//!   slot from a signed image the daemon downloads (`image::job`); 202 with its
//!   progress, 409 while another one runs. `GET /v1/image/update` — its progress.
//! - `GET  /openapi.json` — the OpenAPI 3.1 document of all of the above ([`openapi`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::ApiError;
use crate::config::Config;
use crate::console::gate;
use crate::console::principal::{Principal, Role};
use crate::console::users::{self, UserStore};
use crate::control::{switchover_settled, ControlError, MirrorAction, Reply, Request};
use crate::event::EventLog;
use crate::image::job::{ImageJob, JobError};
use crate::mirror::plan::{self, PlanError, Target};
use crate::status::Status;

/// What the control routes serve from.
#[derive(Clone)]
pub struct AppState {
    pub status: watch::Receiver<Status>,
    pub events: EventLog,
    pub requests: mpsc::Sender<Request>,
    /// The configuration the daemon runs with, and its file.
    pub config: ConfigFile,
    pub image: ImageJob,
}

/// The daemon's configuration file, this node's name in it, and what runs.
#[derive(Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub local: String,
    pub running: watch::Receiver<Arc<Config>>,
}

/// Running listeners; dropping this stops them.
pub struct Servers {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The control API's routes, without authentication: the Unix socket serves them as
/// they are, the TCP listener behind [`token_gate`], the console behind its sessions.
pub fn router(state: AppState) -> Router {
    let (routes, _) = documented().split_for_parts();
    routes
        .route("/openapi.json", get(openapi_json))
        .with_state(state)
}

/// The OpenAPI document's head; the paths come from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(info(
    title = "Tandem control API",
    description = "The daemon's control API: read the status and events, act on groups, nodes and mirrors. Roles: docs/API.md."
))]
struct ApiDoc;

/// Every route of the API with its OpenAPI annotation: one list, so no route can be
/// served without being documented (`GET /openapi.json`, [`openapi`]).
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(status))
        .routes(routes!(nodes))
        .routes(routes!(paths))
        .routes(routes!(groups))
        .routes(routes!(events))
        .routes(routes!(event_stream))
        .routes(routes!(history))
        .routes(routes!(switchover))
        .routes(routes!(maintenance))
        .routes(routes!(clear))
        .routes(routes!(mirrors))
        .routes(routes!(split_brain_dumps))
        .routes(routes!(split_brain_dump))
        .routes(routes!(mirror_plan))
        .routes(routes!(mirror_action))
        .routes(routes!(standby))
        .routes(routes!(online))
        .routes(routes!(config::reload))
        .routes(routes!(config::replace))
        .routes(routes!(image_progress, image_update))
}

/// The API's OpenAPI 3.1 document (this build's version), with `/openapi.json` itself.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut doc) = documented().split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let (_, this) = OpenApiRouter::<()>::new()
        .routes(routes!(openapi_json))
        .split_for_parts();
    doc.merge(this);
    doc
}

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "status",
    summary = "This document.",
    responses((status = 200, description = "the OpenAPI 3.1 document of this API", body = Object))
)]
async fn openapi_json() -> Response {
    static DOC: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| openapi().to_json().unwrap_or_default());
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        DOC.as_str(),
    )
        .into_response()
}

/// Starts the Unix-socket listener and, if configured, the TCP one (a bearer token
/// required: see [`token_gate`]).
pub async fn serve(state: AppState) -> Result<Servers, ApiError> {
    let cfg = state.config.running.borrow().api.clone();
    let mut tasks = Vec::new();
    let sock: &Path = &cfg.socket;
    if let Some(parent) = sock.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| ApiError::Io(format!("create {}", parent.display()), e))?;
    }
    // A socket file left by a crashed daemon would make bind fail.
    if std::os::unix::net::UnixStream::connect(sock).is_err() {
        let _ = std::fs::remove_file(sock);
    }
    let unix = tokio::net::UnixListener::bind(sock)
        .map_err(|e| ApiError::Io(format!("bind {}", sock.display()), e))?;
    let app = router(state.clone());
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(unix, app).await;
    }));
    if let Some(addr) = cfg.tcp {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ApiError::Io(format!("bind {addr}"), e))?;
        let gate = axum::middleware::from_fn_with_state(state.clone(), token_gate);
        let app = router(state).layer(gate);
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(tcp, app).await;
        }));
    }
    Ok(Servers { tasks })
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// The TCP listener's door: the running configuration's `[api] token` acts as admin,
/// a stored token (`tandem token add`) with its role; then the role check and the
/// audit of [`crate::console::gate::admit`]. 401 without a known token.
async fn token_gate(
    State(s): State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_string();
    let (token, state_dir) = {
        let running = s.config.running.borrow();
        (
            running.api.token.clone().unwrap_or_default(),
            running.cluster.state_dir.clone(),
        )
    };
    use subtle::ConstantTimeEq;
    // Validation requires a token with a TCP listener; an empty one would admit anyone.
    let principal = if !token.is_empty()
        && given.len() == token.len()
        && bool::from(given.as_bytes().ct_eq(token.as_bytes()))
    {
        Some(Principal {
            name: "api token".into(),
            role: Role::Admin,
            csrf: String::new(),
        })
    } else {
        UserStore::load(&users::store_path(&state_dir))
            .ok()
            .and_then(|u| u.token_principal(&given))
    };
    let Some(p) = principal else {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
    };
    let path = req.uri().path().to_string();
    if let Err(r) = gate::admit(&s.events, &p, &req.method().clone(), &path) {
        return r.into_response();
    }
    req.extensions_mut().insert(p);
    next.run(req).await
}

mod config;

/// What every API route may answer besides its own: a refusal (4XX), or no answer in
/// time (5XX). For the OpenAPI document only.
struct Failure;

/// The refusals of a route that does not wait on the daemon's loop. For the OpenAPI
/// document only.
struct Refused;

/// The refusal answer: `{"code", "error"}`.
fn refused_response() -> (String, utoipa::openapi::RefOr<utoipa::openapi::Response>) {
    let r = utoipa::openapi::ResponseBuilder::new()
        .description("refused: `{\"code\", \"error\"}` (docs/API.md lists each code)")
        .build();
    ("4XX".into(), r.into())
}

impl utoipa::IntoResponses for Refused {
    fn responses(
    ) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        [refused_response()].into()
    }
}

impl utoipa::IntoResponses for Failure {
    fn responses(
    ) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        let unavailable = utoipa::openapi::ResponseBuilder::new()
            .description("timed out or shutting down")
            .build();
        [refused_response(), ("5XX".into(), unavailable.into())].into()
    }
}

#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    summary = "The whole snapshot: nodes, paths, groups, mirrors, counters.",
    responses((status = 200, description = "one consistent snapshot of this node's view", body = Object), Failure)
)]
async fn status(State(s): State<AppState>) -> Response {
    Json(s.status.borrow().clone()).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/nodes",
    tag = "status",
    summary = "The nodes of the snapshot.",
    responses((status = 200, description = "the nodes", body = Object), Failure)
)]
async fn nodes(State(s): State<AppState>) -> Response {
    Json(s.status.borrow().nodes.clone()).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/paths",
    tag = "status",
    summary = "The heartbeat paths of the snapshot.",
    responses((status = 200, description = "each peer's paths", body = Object), Failure)
)]
async fn paths(State(s): State<AppState>) -> Response {
    Json(s.status.borrow().paths.clone()).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/groups",
    tag = "status",
    summary = "The groups of the snapshot.",
    responses((status = 200, description = "the groups", body = Object), Failure)
)]
async fn groups(State(s): State<AppState>) -> Response {
    Json(s.status.borrow().groups.clone()).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    since: u64,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    wait_ms: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    summary = "Events after `since`; long-polls up to `wait_ms` when there are none yet.",
    params(("since" = Option<u64>, Query, description = "the last seq already seen"), ("limit" = Option<usize>, Query, description = "at most this many (1000; up to 10000)"), ("wait_ms" = Option<u64>, Query, description = "wait this long for a first one (up to 60000)")),
    responses((status = 200, description = "the events, oldest first", body = Object), Failure)
)]
async fn events(State(s): State<AppState>, Query(q): Query<EventsQuery>) -> Response {
    let limit = q.limit.unwrap_or(1000).min(10_000);
    let mut sub = s.events.subscribe();
    let mut found = s.events.since(q.since, limit);
    if found.is_empty() {
        if let Some(wait) = q.wait_ms {
            let wait = Duration::from_millis(wait.min(60_000));
            let _ = tokio::time::timeout(wait, async {
                while let Ok(e) = sub.recv().await {
                    if e.seq > q.since {
                        break;
                    }
                }
            })
            .await;
            found = s.events.since(q.since, limit);
        }
    }
    Json(found).into_response()
}

#[utoipa::path(
    get,
    path = "/v1/events/stream",
    tag = "events",
    summary = "The event stream: the backlog after `since`, then each new event, as newline-delimited JSON.",
    params(("since" = Option<u64>, Query, description = "the last seq already seen")),
    responses((status = 200, description = "one JSON event per line", content_type = "application/x-ndjson"), Failure)
)]
async fn event_stream(State(s): State<AppState>, Query(q): Query<EventsQuery>) -> Response {
    let mut sub = s.events.subscribe();
    let backlog = s.events.since(q.since, 10_000);
    let mut last = backlog.last().map_or(q.since, |e| e.seq);
    let stream = async_stream(backlog, move |tx| async move {
        loop {
            match sub.recv().await {
                Ok(e) if e.seq > last => {
                    last = e.seq;
                    if tx.send(e).await.is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// A stream of NDJSON lines: the backlog, then whatever `feed` sends.
fn async_stream<F, Fut>(
    backlog: Vec<crate::event::Event>,
    feed: F,
) -> impl futures::Stream<Item = Result<Vec<u8>, std::convert::Infallible>>
where
    F: FnOnce(mpsc::Sender<crate::event::Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(feed(tx));
    let line = |e: &crate::event::Event| {
        let mut v = serde_json::to_vec(e).unwrap_or_default();
        v.push(b'\n');
        Ok(v)
    };
    let head: Vec<_> = backlog.iter().map(line).collect();
    use futures::StreamExt;
    futures::stream::iter(head).chain(tokio_stream_from(rx).map(move |e| line(&e)))
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[utoipa::path(
    get,
    path = "/v1/history",
    tag = "events",
    summary = "Failover and switchover timelines.",
    responses((status = 200, description = "the timelines", body = Object), Failure)
)]
async fn history(State(s): State<AppState>) -> Response {
    Json(s.events.timelines()).into_response()
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// The answer to a control error: its HTTP status and `{"code": ..., "error": ...}`.
fn control_error(e: ControlError) -> Response {
    let code = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::CONFLICT);
    (code, Json(serde_json::to_value(&e).unwrap_or_default())).into_response()
}

async fn ask<T>(s: &AppState, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, Response> {
    ask_control(s, make).await.map_err(control_error)
}

async fn ask_control<T>(
    s: &AppState,
    make: impl FnOnce(Reply<T>) -> Request,
) -> Result<T, ControlError> {
    crate::control::ask(&s.requests, make).await
}

#[utoipa::path(
    post,
    path = "/v1/groups/{group}/switchover",
    tag = "actions",
    summary = "Moves a group to another node; answers once it passes its checks there.",
    params(("group" = String, Path, description = "the group")), request_body(content = Option<SwitchoverBody>, description = "the target node (default: the next in the group's order) and a timeout"),
    responses((status = 200, description = "where it runs now and how long it took", body = Object), Failure)
)]
async fn switchover(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
    body: Option<Json<SwitchoverBody>>,
) -> Response {
    let body = body.map(|b| b.0).unwrap_or_default();
    let started = std::time::Instant::now();
    let timeout = Duration::from_millis(body.timeout_ms.unwrap_or(60_000).min(600_000));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut rx = s.status.clone();
    // A group that is starting or stopping somewhere is waited out (as long as the
    // timeout allows), not refused: the operator asked for an outcome.
    let (target, epoch_before) = loop {
        // Snapshots published before the daemon handled the request predate it: mark
        // them seen now, and judge only what comes after. Their register epoch is the
        // one the switchover supersedes.
        let epoch_before = rx
            .borrow_and_update()
            .groups
            .iter()
            .find(|g| g.name == group)
            .map_or(0, |g| g.epoch);
        let asked = ask_control(&s, |reply| Request::Switchover {
            group: group.clone(),
            to: body.to.clone(),
            reply,
        })
        .await;
        match asked {
            Ok(t) => break (t, epoch_before),
            Err(ControlError::Busy(_)) if tokio::time::Instant::now() < deadline => {
                let retry = (tokio::time::Instant::now() + BUSY_RETRY).min(deadline);
                let _ = tokio::time::timeout_at(retry, rx.changed()).await;
            }
            Err(e) => return control_error(e),
        }
    };
    let outcome =
        tokio::time::timeout_at(deadline, settled(rx, &group, &target, epoch_before)).await;
    match outcome {
        Ok(Ok(())) => Json(serde_json::json!({
            "group": group,
            "node": target,
            "duration_ms": started.elapsed().as_millis() as u64,
        }))
        .into_response(),
        Ok(Err(e)) => control_error(e),
        Err(_) => control_error(ControlError::Timeout(format!(
            "group `{group}` did not come up on `{target}` within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// How often a switchover asked while the group is busy is asked again (sooner if the
/// status changes).
const BUSY_RETRY: Duration = Duration::from_millis(250);

/// Waits until the group runs on `target` and nowhere else, or fails; only snapshots
/// published after `rx` was last marked seen count.
async fn settled(
    mut rx: watch::Receiver<Status>,
    group: &str,
    target: &str,
    epoch_before: u64,
) -> Result<(), ControlError> {
    loop {
        if rx.changed().await.is_err() {
            return Err(ControlError::shutting_down());
        }
        if let Some(r) = switchover_settled(&rx.borrow_and_update(), group, target, epoch_before) {
            return r;
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct OnBody {
    on: bool,
}

#[utoipa::path(
    post,
    path = "/v1/groups/{group}/maintenance",
    tag = "actions",
    summary = "Maintenance on or off: the group is left alone.",
    params(("group" = String, Path, description = "the group")), request_body(content = OnBody),
    responses((status = 200, description = "done", body = Object), Failure)
)]
async fn maintenance(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
    Json(body): Json<OnBody>,
) -> Response {
    match ask(&s, |reply| Request::Maintenance {
        group: group.clone(),
        on: body.on,
        reply,
    })
    .await
    {
        Ok(()) => {
            Json(serde_json::json!({ "group": group, "maintenance": body.on })).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ClearBody {
    #[serde(default)]
    node: Option<String>,
}

/// `tandem group clear`: this node forgets the group's failures and lifts its block.
#[utoipa::path(
    post,
    path = "/v1/groups/{group}/clear",
    tag = "actions",
    summary = "This node forgets the group's failures and lifts its block.",
    params(("group" = String, Path, description = "the group")), request_body(content = Option<ClearBody>, description = "the node to clear on (default: this one)"),
    responses((status = 200, description = "done", body = Object), Failure)
)]
async fn clear(
    State(s): State<AppState>,
    UrlPath(group): UrlPath<String>,
    body: Option<Json<ClearBody>>,
) -> Response {
    let node = body.and_then(|Json(b)| b.node);
    match ask(&s, |reply| Request::Clear {
        group: group.clone(),
        node,
        reply,
    })
    .await
    {
        Ok(()) => Json(serde_json::json!({ "group": group, "cleared": true })).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(
    get,
    path = "/v1/mirrors",
    tag = "mirrors",
    summary = "The mirrors of the snapshot.",
    responses((status = 200, description = "each mirror with its peers", body = Object), Failure)
)]
async fn mirrors(State(s): State<AppState>) -> Response {
    Json(s.status.borrow().mirrors.clone()).into_response()
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MirrorBody {
    #[serde(default)]
    peer: Option<String>,
    /// `resolve`: the node whose copy survives.
    #[serde(default)]
    keep: Option<String>,
}

#[utoipa::path(
    post,
    path = "/v1/mirrors/{mirror}/{action}",
    tag = "actions",
    summary = "A mirror action: pause, resume, verify, resync_full, disconnect, connect or resolve.",
    params(("mirror" = String, Path, description = "the mirror"), ("action" = String, Path, description = "pause, resume, verify, resync_full, disconnect, connect or resolve")), request_body(content = Option<MirrorBody>, description = "the peer (default: every peer); for resolve, the node whose copy survives"),
    responses((status = 200, description = "done", body = Object), Failure)
)]
async fn mirror_action(
    State(s): State<AppState>,
    UrlPath((mirror, action)): UrlPath<(String, String)>,
    body: Option<Json<MirrorBody>>,
) -> Response {
    let Ok(action) =
        serde_json::from_value::<MirrorAction>(serde_json::Value::String(action.clone()))
    else {
        return control_error(ControlError::NotFound(format!(
            "unknown mirror action `{action}` (pause, resume, verify, resync_full, disconnect, connect, resolve)"
        )));
    };
    let body = body.map(|b| b.0).unwrap_or_default();
    let peer = match action {
        MirrorAction::Resolve => body.keep,
        _ => body.peer,
    };
    match ask(&s, |reply| Request::Mirror {
        mirror: mirror.clone(),
        action,
        peer: peer.clone(),
        reply,
    })
    .await
    {
        Ok(()) => Json(serde_json::json!({ "mirror": mirror, "action": action, "peer": peer }))
            .into_response(),
        Err(r) => r,
    }
}

/// `GET /v1/mirrors/{mirror}/plan`: every parameter is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanQuery {
    #[serde(default, with = "humantime_serde")]
    lag: Option<Duration>,
    #[serde(default)]
    percentile: Option<f64>,
    #[serde(default)]
    efficiency: Option<f64>,
    #[serde(default)]
    compression: Option<f64>,
}

impl PlanQuery {
    fn target(&self) -> Result<Target, PlanError> {
        Target::new(
            self.lag.unwrap_or(plan::DEFAULT_LAG),
            self.percentile.unwrap_or(plan::DEFAULT_PERCENTILE),
            self.efficiency.unwrap_or(plan::DEFAULT_EFFICIENCY),
            self.compression,
        )
    }
}

#[utoipa::path(
    get,
    path = "/v1/mirrors/{mirror}/plan",
    tag = "mirrors",
    summary = "Link sizing from the mirror's write-rate history (`tandem mirror plan`).",
    params(("mirror" = String, Path, description = "the mirror"), ("lag" = Option<String>, Query, description = "the lag target, e.g. `30s`"), ("percentile" = Option<f64>, Query, description = "of the minutes, e.g. 95"), ("efficiency" = Option<f64>, Query, description = "of the link, (0, 1]"), ("compression" = Option<f64>, Query, description = "the expected ratio")),
    responses((status = 200, description = "the history's figures and the recommended link", body = Object), Failure)
)]
async fn mirror_plan(
    State(s): State<AppState>,
    UrlPath(mirror): UrlPath<String>,
    q: Result<Query<PlanQuery>, QueryRejection>,
) -> Response {
    let target = match q {
        Ok(Query(q)) => q.target(),
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match ask(&s, |reply| Request::MirrorPlan {
        mirror,
        target,
        reply,
    })
    .await
    {
        Ok(plan) => Json(plan).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(
    get,
    path = "/v1/mirrors/{mirror}/split-brain-dumps",
    tag = "mirrors",
    summary = "The dumps saved before a losing copy was overwritten.",
    params(("mirror" = String, Path, description = "the mirror")),
    responses((status = 200, description = "the dumps, newest first", body = Object), Failure)
)]
async fn split_brain_dumps(
    State(s): State<AppState>,
    UrlPath(mirror): UrlPath<String>,
) -> Response {
    match ask(&s, |reply| Request::SplitBrainDumps { mirror, reply }).await {
        Ok(dumps) => Json(dumps).into_response(),
        Err(r) => r,
    }
}

/// One dump's bytes as they are on disk (`latest`: the newest).
#[utoipa::path(
    get,
    path = "/v1/mirrors/{mirror}/split-brain-dumps/{name}",
    tag = "mirrors",
    summary = "One dump's bytes as they are on disk.",
    params(("mirror" = String, Path, description = "the mirror"), ("name" = String, Path, description = "a dump's name, or `latest`")),
    responses((status = 200, description = "the dump", content_type = "application/octet-stream"), Failure)
)]
async fn split_brain_dump(
    State(s): State<AppState>,
    UrlPath((mirror, name)): UrlPath<(String, String)>,
) -> Response {
    let name = (name != "latest").then_some(name);
    match ask(&s, |reply| Request::SplitBrainDump {
        mirror,
        name,
        reply,
    })
    .await
    {
        Ok((name, bytes)) => (
            [
                (
                    axum::http::header::CONTENT_TYPE,
                    "application/octet-stream".to_string(),
                ),
                (
                    axum::http::header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{name}\""),
                ),
            ],
            bytes,
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn set_standby(s: AppState, node: String, on: bool) -> Response {
    match ask(&s, |reply| Request::Standby {
        node: node.clone(),
        on,
        reply,
    })
    .await
    {
        Ok(()) => Json(serde_json::json!({ "node": node, "standby": on })).into_response(),
        Err(r) => r,
    }
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{node}/standby",
    tag = "actions",
    summary = "The node runs no group (its groups move away).",
    params(("node" = String, Path, description = "the node")),
    responses((status = 200, description = "done", body = Object), Failure)
)]
async fn standby(State(s): State<AppState>, UrlPath(node): UrlPath<String>) -> Response {
    set_standby(s, node, true).await
}

#[utoipa::path(
    post,
    path = "/v1/nodes/{node}/online",
    tag = "actions",
    summary = "The node may run groups again.",
    params(("node" = String, Path, description = "the node")),
    responses((status = 200, description = "done", body = Object), Failure)
)]
async fn online(State(s): State<AppState>, UrlPath(node): UrlPath<String>) -> Response {
    set_standby(s, node, false).await
}

#[utoipa::path(
    get,
    path = "/v1/image/update",
    tag = "image",
    summary = "The image update's progress.",
    responses((status = 200, description = "state, bytes, total, error", body = Object), Failure)
)]
async fn image_progress(State(s): State<AppState>) -> Response {
    Json(s.image.progress()).into_response()
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ImageUpdateBody {
    url: String,
}

/// Starts an update in the background: 202 and its progress, or why not.
#[utoipa::path(
    post,
    path = "/v1/image/update",
    tag = "image",
    summary = "Updates the inactive boot slot from a signed image the daemon downloads, in the background.",
    request_body(content = ImageUpdateBody),
    responses((status = 202, description = "started: its progress", body = Object), Failure)
)]
async fn image_update(State(s): State<AppState>, Json(body): Json<ImageUpdateBody>) -> Response {
    match s.image.start(&body.url) {
        Ok(p) => (StatusCode::ACCEPTED, Json(p)).into_response(),
        Err(e @ JobError::Busy(_)) => control_error(ControlError::Refused(e.to_string())),
        Err(e @ JobError::Slot(_)) => control_error(ControlError::Conflict(e.to_string())),
        Err(e @ JobError::Url(_)) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::packet::LocalGroupState;

    /// The sample with one group `demo` owned by `owner`, in these states on n1 and n2.
    fn status(owner: &str, n1: LocalGroupState, n2: LocalGroupState) -> Status {
        let mut s = Status::sample();
        let mut g = s.groups.swap_remove(0);
        g.name = "demo".into();
        g.owner = Some(owner.into());
        g.states = [("n1".to_string(), n1), ("n2".to_string(), n2)].into();
        s.groups = vec![g];
        s
    }

    /// A snapshot published before the switchover was handled (owner still n1) must not
    /// be read as "placed elsewhere": the API answered exit 4 for a switchover that
    /// went through (seen in the lab test `manual_switchover`).
    #[tokio::test]
    async fn switchover_wait_ignores_snapshots_older_than_the_request() {
        use LocalGroupState::{Running, Stopped};
        let (tx, rx0) = watch::channel(Status::default());
        tx.send_replace(status("n1", Running, Stopped)); // stale: before the request
        let mut rx = rx0.clone();
        rx.borrow_and_update();
        let wait = tokio::spawn(async move { settled(rx, "demo", "n2", 0).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send_replace(status("n2", Stopped, Running));
        let r = tokio::time::timeout(Duration::from_secs(2), wait).await;
        assert_eq!(r.unwrap().unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn switchover_wait_reports_a_failed_target() {
        use LocalGroupState::{Failed, Stopped};
        let (tx, rx0) = watch::channel(Status::default());
        let mut rx = rx0.clone();
        rx.borrow_and_update();
        tx.send_replace(status("n2", Stopped, Failed));
        let r = settled(rx, "demo", "n2", 0).await;
        assert!(r.unwrap_err().to_string().contains("failed on `n2`"));
    }
}
