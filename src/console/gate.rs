//! The door of every authenticated control request, from a console session or an API
//! token: the role check ([`super::authz`]) and the audit event. Every action (any
//! method but GET and HEAD), allowed or refused, and every console login is an
//! [`EventKind::Audit`] in the one event stream, so SNMP, metrics and `tandem events`
//! see it.

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::authz;
use super::principal::{Principal, Role};
use crate::event::{fields, EventKind, EventLog};

/// How an audited attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Refused,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refused => "refused",
        }
    }
}

/// Records one audited attempt (`reason` when refused).
pub fn audit(
    events: &EventLog,
    who: (&str, &str),
    action: &str,
    target: &str,
    outcome: Outcome,
    reason: Option<&str>,
) {
    let mut f = fields([
        ("user", who.0.to_string()),
        ("role", who.1.to_string()),
        ("action", action.to_string()),
        ("target", target.to_string()),
        ("outcome", outcome.name().to_string()),
    ]);
    if let Some(r) = reason {
        f.insert("reason".into(), r.to_string());
    }
    events.emit(EventKind::Audit, f);
}

/// A role's name as the configuration and the audit log spell it (`viewer`, ...).
pub fn role_name(role: Role) -> String {
    serde_json::to_value(role)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A refusal, answered 403 in the API's error form.
#[derive(Debug)]
pub struct Forbidden(pub String);

impl IntoResponse for Forbidden {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.0 }));
        (StatusCode::FORBIDDEN, body).into_response()
    }
}

/// Whether a request is an action (audited): any method but GET and HEAD.
fn is_action(method: &Method) -> bool {
    method != Method::GET && method != Method::HEAD
}

/// Lets `p` call `method` on `path` or refuses; audits every action.
pub fn admit(
    events: &EventLog,
    p: &Principal,
    method: &Method,
    path: &str,
) -> Result<(), Forbidden> {
    if !authz::allowed(p.role, method, path) {
        let msg = format!(
            "`{}` ({}) may not do this: it needs the {} role",
            p.name,
            role_name(p.role),
            role_name(authz::required(method, path))
        );
        return Err(refuse(events, p, method, path, "role", msg));
    }
    if is_action(method) {
        let (action, target) = authz::describe(method, path);
        let who = (p.name.as_str(), role_name(p.role));
        audit(
            events,
            (who.0, &who.1),
            &action,
            &target,
            Outcome::Allowed,
            None,
        );
    }
    Ok(())
}

/// Refuses `p`'s request for `reason` (audited if it is an action) with `msg`.
pub fn refuse(
    events: &EventLog,
    p: &Principal,
    method: &Method,
    path: &str,
    reason: &str,
    msg: String,
) -> Forbidden {
    if is_action(method) {
        let (action, target) = authz::describe(method, path);
        let role = role_name(p.role);
        audit(
            events,
            (&p.name, &role),
            &action,
            &target,
            Outcome::Refused,
            Some(reason),
        );
    }
    Forbidden(msg)
}
