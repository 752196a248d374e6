//! The console's HTTPS server: one router with the pages, the control API (`/v1`)
//! behind the console's own authentication, and `GET`/`POST /login`, `POST /logout`.
//!
//! `GET /session` answers who is logged in: `{"user", "role", "csrf"}` (the CSRF token
//! for scripts; pages also carry it in `<meta name="csrf-token">`).
//!
//! A request is public (`/login`, `/assets/*`), or carries a session cookie
//! (`tandem_session`) or an API token (`Authorization: Bearer`); the others go to
//! `/login` (pages) or get 401 (`/v1`). A session's request with any method but GET
//! and HEAD must carry its CSRF token (`X-CSRF-Token`, or a form field `csrf`) or gets
//! 403. Control requests then pass [`super::gate::admit`] (role, audit). The request's
//! [`super::principal::Principal`] is in its extensions for the pages.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequest, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use super::gate::{self, Outcome};
use super::limit::LoginLimiter;
use super::principal::Principal;
use super::session::{new_secret, Sessions};
use super::users::UserStore;
use crate::event::EventLog;

/// The session cookie's name.
pub const COOKIE: &str = "tandem_session";

/// The largest form body the CSRF check reads.
const FORM_LIMIT: usize = 64 * 1024;

/// What the console's own routes and its auth layer share.
#[derive(Clone)]
pub struct ConsoleState {
    sessions: Arc<Mutex<Sessions>>,
    limiter: Arc<Mutex<LoginLimiter>>,
    users: std::path::PathBuf,
    events: EventLog,
    started: Instant,
}

impl ConsoleState {
    /// A console with no sessions yet, reading its users from `users`.
    pub fn new(users: std::path::PathBuf, events: EventLog) -> ConsoleState {
        ConsoleState {
            sessions: Arc::default(),
            limiter: Arc::default(),
            users,
            events,
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The principal of a live session whose user still exists with that role; the
    /// session of a removed (or changed) user ends here.
    fn session(&self, id: &str) -> Option<Principal> {
        let mut sessions = self.sessions.lock().ok()?;
        let p = sessions.touch(self.now_ms(), id)?;
        if self.store().role(&p.name) == Some(p.role) {
            Some(p)
        } else {
            sessions.remove(id);
            None
        }
    }

    fn store(&self) -> UserStore {
        UserStore::load(&self.users).unwrap_or_else(|e| {
            tracing::error!(error = %e, "console: cannot read the users");
            UserStore::default()
        })
    }
}

/// The whole console: `pages` and `api` (both without auth) behind the auth layer.
pub fn app(state: ConsoleState, pages: Router, api: Router) -> Router {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/session", get(session))
        .with_state(state.clone())
        .merge(pages)
        .merge(api)
        .layer(axum::middleware::from_fn_with_state(state, authenticate))
        .layer(axum::middleware::map_response(security_headers))
}

/// On every answer, unless a page set its own: no framing (clickjacking), no content
/// sniffing, no referrer to other sites, and HTTPS only from now on (HSTS, one year;
/// the console answers plain HTTP with nothing but a redirect).
async fn security_headers(mut res: Response) -> Response {
    let h = res.headers_mut();
    for (name, value) in [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    ] {
        h.entry(name)
            .or_insert(header::HeaderValue::from_static(value));
    }
    res
}

fn is_public(path: &str) -> bool {
    path == "/login" || path.starts_with("/assets/")
}

fn is_api(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// The session id in the request's cookies.
fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

fn unauthorized() -> Response {
    let body = serde_json::json!({ "error": "log in first (session cookie or bearer token)" });
    (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
}

/// The auth layer (see the module documentation).
async fn authenticate(State(s): State<ConsoleState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if is_public(&path) {
        return next.run(req).await;
    }
    let (principal, session) = if let Some(token) = bearer(req.headers()) {
        (s.store().token_principal(token), false)
    } else {
        (
            session_cookie(req.headers()).and_then(|id| s.session(&id)),
            true,
        )
    };
    let Some(principal) = principal else {
        return if is_api(&path) {
            unauthorized()
        } else {
            Redirect::to("/login").into_response()
        };
    };
    let method = req.method().clone();
    let mut req = req;
    if session && method != Method::GET && method != Method::HEAD {
        req = match csrf_checked(req, &principal.csrf).await {
            Some(r) => r,
            None => {
                let msg = "missing or wrong CSRF token".to_string();
                let refused = gate::refuse(&s.events, &principal, &method, &path, "csrf", msg);
                return refused.into_response();
            }
        };
    }
    if is_api(&path) {
        if let Err(r) = gate::admit(&s.events, &principal, &method, &path) {
            return r.into_response();
        }
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// The request back if it carries `expected` as `X-CSRF-Token` or as the form field
/// `csrf`.
async fn csrf_checked(req: Request, expected: &str) -> Option<Request> {
    use subtle::ConstantTimeEq;
    let matches = |given: &str| {
        !expected.is_empty() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
    };
    if let Some(h) = req.headers().get("x-csrf-token") {
        return h.to_str().is_ok_and(matches).then_some(req);
    }
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return None;
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT).await.ok()?;
    let copy = Request::from_parts(parts.clone(), axum::body::Body::from(bytes.clone()));
    let form = Form::<std::collections::HashMap<String, String>>::from_request(copy, &()).await;
    let ok = form.is_ok_and(|Form(f)| f.get("csrf").is_some_and(|c| matches(c)));
    ok.then(|| Request::from_parts(parts, axum::body::Body::from(bytes)))
}

/// The login page: plain HTML, the console's stylesheet.
async fn login_form() -> Html<String> {
    Html(login_page(None))
}

fn login_page(message: Option<&str>) -> String {
    let message = message
        .map(|m| format!("<p class=\"error\">{m}</p>\n"))
        .unwrap_or_default();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Tandem: log in</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\"></head>\n<body>\
         <main class=\"login\"><h1>Tandem</h1>\n{message}\
         <form method=\"post\" action=\"/login\">\
         <label>User <input name=\"user\" autocomplete=\"username\" required></label>\
         <label>Password <input name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Log in</button></form></main></body></html>\n"
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginForm {
    user: String,
    password: String,
}

/// Whether a request's `Origin`, if it names one, is the console itself
/// (`https://` and the request's `Host`). Clients other than browsers send none.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(o), Some(h)) => o.strip_prefix("https://") == Some(h),
        _ => false,
    }
}

/// `POST /login`: a new session (never the id the request carried) and its cookie, or
/// 401 with the form again, or 429 while rate-limited. Audited either way.
async fn login(
    State(s): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let addr: IpAddr = peer.ip();
    // The name as typed, cut to what a user name can be (the event stream is not a
    // place for whatever a stranger sends).
    let typed: String = form.user.chars().take(64).collect();
    let audit = |outcome, reason| {
        gate::audit(&s.events, (&typed, ""), "login", "console", outcome, reason);
    };
    // Login CSRF: another site's page posting its own account's password, so that
    // the victim works in the attacker's session. Browsers name the page's origin.
    if !same_origin(&headers) {
        audit(Outcome::Refused, Some("cross_origin"));
        return (
            StatusCode::FORBIDDEN,
            Html(login_page(Some("Log in from the console's own page."))),
        )
            .into_response();
    }
    let limited = s
        .limiter
        .lock()
        .map_or(Ok(()), |mut l| l.check(s.now_ms(), addr, &form.user));
    if let Err(secs) = limited {
        audit(Outcome::Refused, Some("rate_limited"));
        let page = login_page(Some("Too many failed logins: wait, then try again."));
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            Html(page),
        )
            .into_response();
    }
    let store = s.store();
    let (user, password) = (form.user.clone(), form.password.clone());
    let role = tokio::task::spawn_blocking(move || store.check_password(&user, &password))
        .await
        .ok()
        .flatten();
    let Some(role) = role else {
        if let Ok(mut l) = s.limiter.lock() {
            l.failed(s.now_ms(), addr, &form.user);
        }
        audit(Outcome::Refused, Some("wrong user or password"));
        let page = login_page(Some("Wrong user or password."));
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    };
    let id = new_secret();
    if let Ok(mut t) = s.sessions.lock() {
        if let Some(old) = session_cookie(&headers) {
            t.remove(&old);
        }
        t.create(s.now_ms(), id.clone(), new_secret(), &form.user, role);
    }
    let role_name = gate::role_name(role);
    gate::audit(
        &s.events,
        (&form.user, &role_name),
        "login",
        "console",
        Outcome::Allowed,
        None,
    );
    let cookie = format!("{COOKIE}={id}; Secure; HttpOnly; SameSite=Strict; Path=/");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// `GET /session`: the request's user, role and CSRF token.
async fn session(axum::Extension(p): axum::Extension<Principal>) -> Response {
    axum::Json(serde_json::json!({
        "user": p.name,
        "role": p.role,
        "csrf": p.csrf,
    }))
    .into_response()
}

/// `POST /logout`: ends the session and clears the cookie.
async fn logout(State(s): State<ConsoleState>, headers: HeaderMap) -> Response {
    if let (Some(id), Ok(mut t)) = (session_cookie(&headers), s.sessions.lock()) {
        t.remove(&id);
    }
    let cookie = format!("{COOKIE}=; Secure; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/login")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_is_same_origin_unless_the_browser_names_another() {
        let headers = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "10.0.0.1:9443".parse().unwrap());
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().unwrap());
            }
            h
        };
        assert!(same_origin(&headers(None)), "curl sends no Origin");
        assert!(same_origin(&headers(Some("https://10.0.0.1:9443"))));
        for other in ["https://evil.example", "http://10.0.0.1:9443", "null"] {
            assert!(!same_origin(&headers(Some(other))), "{other}");
        }
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; tandem_session=abc; b=2".parse().unwrap(),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn only_the_login_and_the_assets_are_public() {
        assert!(is_public("/login") && is_public("/assets/console.css"));
        assert!(!is_public("/") && !is_public("/v1/status") && !is_public("/logout"));
    }
}
