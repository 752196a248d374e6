//! The configuration routes:
//!
//! - `POST /v1/config/reload` — re-read the file the daemon was started with; what
//!   needs no restart is applied (`SIGHUP` does the same).
//! - `PUT /v1/config` — the body is the whole TOML. Refused (422, nothing written)
//!   unless it passes the full validation, is for this cluster and names this node;
//!   else written over the daemon's file atomically (mode 0600) and reloaded.
//!
//! Both answer `{"applied": [...], "needs_restart": [...], "digest": "..."}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{ask, control_error, error, AppState, Refused};
use crate::config::reload::admit;
use crate::config::Config;
use crate::control::{refused_config, reload_file, ControlError, Request};

#[utoipa::path(
    post,
    path = "/v1/config/reload",
    tag = "config",
    summary = "Rereads the configuration file and applies what can change without a restart.",
    responses((status = 200, description = "what was applied and what needs a restart", body = Object), Refused)
)]
pub(super) async fn reload(State(s): State<AppState>) -> Response {
    match reload_file(&s.config.path, &s.requests).await {
        Ok(outcome) => Json(outcome).into_response(),
        Err(e) => control_error(e),
    }
}

#[utoipa::path(
    put,
    path = "/v1/config",
    tag = "config",
    summary = "Replaces the configuration file (checked, written atomically with mode 0600) and reloads it.",
    request_body(content = String, content_type = "application/toml", description = "the whole TOML file"),
    responses((status = 200, description = "what was applied and what needs a restart", body = Object), Refused)
)]
pub(super) async fn replace(State(s): State<AppState>, body: String) -> Response {
    let new = match Config::parse(&body) {
        Ok(c) => c,
        Err(e) => return control_error(ControlError::Conflict(refused_config(&e))),
    };
    let running = s.config.running.borrow().clone();
    if let Err(e) = admit(&running, &new, &s.config.local) {
        return control_error(ControlError::Conflict(refused_config(&e)));
    }
    let path = s.config.path.clone();
    let written =
        tokio::task::spawn_blocking(move || crate::config::secret::replace(&path, body.as_bytes()))
            .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let msg = format!("cannot write {}: {e}", s.config.path.display());
            return error(StatusCode::INTERNAL_SERVER_ERROR, msg);
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    match ask(&s, |reply| Request::Reload {
        config: Box::new(new),
        reply,
    })
    .await
    {
        Ok(outcome) => Json(outcome).into_response(),
        Err(r) => r,
    }
}
