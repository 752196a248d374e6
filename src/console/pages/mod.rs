//! The console's pages: server-rendered HTML over the status snapshot and the event
//! log. The console's auth layer puts the request's [`Principal`] in its extensions.
//!
//! Each page is a pure render function of the snapshot (and events or timelines) that
//! returns its `<main>` content; the handlers here only read the state and wrap it in
//! the layout, or return the content alone for `?fragment=1`, which the script asks
//! for on every event of `/ui/stream` (Server-Sent Events) to keep the page live.
//! Actions are the script's `fetch()` calls to the control API (`actions`).

mod actions;
mod events;
mod group;
mod history;
mod html;
mod mirror;
mod overview;

use std::convert::Infallible;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use crate::event::{Event, EventLog};
use crate::status::Status;

use super::principal::Principal;

/// What the pages read.
#[derive(Clone)]
pub struct PageState {
    pub status: watch::Receiver<Status>,
    pub events: EventLog,
}

/// Recent events the events and group pages read.
const RECENT_EVENTS: usize = 500;
/// Events the history page matches to its timelines (the log keeps this many).
const HISTORY_EVENTS: usize = 10_000;
/// The most events a reconnecting stream replays.
const STREAM_BACKLOG: usize = 1_000;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The page routes (GET only; actions go through the control API).
pub fn routes() -> Router<PageState> {
    Router::new()
        .route("/", get(overview_page))
        .route("/groups/{group}", get(group_page))
        .route("/mirrors/{mirror}", get(mirror_page))
        .route("/history", get(history_page))
        .route("/events", get(events_page))
        .route("/ui/stream", get(stream))
        .route("/assets/{file}", get(asset))
}

/// `?fragment=1`: only the `<main>` content.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    #[serde(default)]
    fragment: Option<u8>,
}

/// A page, its fragment, or (no content) a 404 page.
fn page(
    q: &PageQuery,
    st: &Status,
    who: &Principal,
    title: &str,
    path: &str,
    main: Option<String>,
) -> Response {
    let no_store = [(header::CACHE_CONTROL, "no-store")];
    match main {
        None => {
            let main = format!(
                "<h1>Not found</h1><p>{} is not known on this node.</p>",
                html::escape(title)
            );
            let body = html::layout(st, who, "Not found", path, &main);
            (StatusCode::NOT_FOUND, no_store, Html(body)).into_response()
        }
        Some(main) if q.fragment.is_some() => (no_store, Html(main)).into_response(),
        Some(main) => (no_store, Html(html::layout(st, who, title, path, &main))).into_response(),
    }
}

/// The newest `n` events of the log, oldest first.
fn recent(log: &EventLog, n: usize) -> Vec<Event> {
    log.since(log.last_seq().saturating_sub(n as u64), n)
}

async fn overview_page(
    State(s): State<PageState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<PageQuery>,
) -> Response {
    let st = s.status.borrow().clone();
    let main = overview::render_overview(&st, &who);
    page(&q, &st, &who, "Overview", "/", Some(main))
}

async fn group_page(
    State(s): State<PageState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let st = s.status.borrow().clone();
    let events = recent(&s.events, RECENT_EVENTS);
    let main = group::render_group(&st, &events, &name, &who);
    page(&q, &st, &who, &format!("Group {name}"), "", main)
}

async fn mirror_page(
    State(s): State<PageState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let st = s.status.borrow().clone();
    let main = mirror::render_mirror(&st, &name, &who);
    page(&q, &st, &who, &format!("Mirror {name}"), "", main)
}

async fn history_page(
    State(s): State<PageState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<PageQuery>,
) -> Response {
    let st = s.status.borrow().clone();
    let main = history::render_history(&s.events.timelines(), &recent(&s.events, HISTORY_EVENTS));
    page(&q, &st, &who, "History", "/history", Some(main))
}

async fn events_page(
    State(s): State<PageState>,
    Extension(who): Extension<Principal>,
    Query(q): Query<PageQuery>,
) -> Response {
    let st = s.status.borrow().clone();
    let main = events::render_events(&recent(&s.events, RECENT_EVENTS));
    page(&q, &st, &who, "Events", "/events", Some(main))
}

/// `?since=SEQ` for `/ui/stream`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    #[serde(default)]
    since: Option<u64>,
}

/// Where a stream starts: after `since`, else after the `Last-Event-ID` a reconnecting
/// `EventSource` sends, else at the newest event (no backlog).
fn stream_start(since: Option<u64>, last_event_id: Option<&str>, last_seq: u64) -> u64 {
    since
        .or_else(|| last_event_id.and_then(|id| id.trim().parse().ok()))
        .unwrap_or(last_seq)
}

/// `/ui/stream`: Server-Sent Events, one `tandem` event per log event (id: its seq,
/// data: its JSON), the backlog after the start first.
async fn stream(
    State(s): State<PageState>,
    headers: HeaderMap,
    Query(q): Query<StreamQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let rx = s.events.subscribe();
    let last_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let since = stream_start(q.since, last_id, s.events.last_seq());
    let backlog = s.events.since(since, STREAM_BACKLOG);
    let after = backlog.last().map_or(since, |e| e.seq);
    let events = futures::stream::iter(backlog).chain(live(rx, after));
    Sse::new(events.map(|e| Ok(sse_event(&e)))).keep_alive(KeepAlive::default())
}

/// The events after `after` as they are emitted; a lagging reader skips ahead (each
/// event only makes the page fetch itself again).
fn live(rx: broadcast::Receiver<Event>, after: u64) -> impl Stream<Item = Event> {
    futures::stream::unfold((rx, after), |(mut rx, after)| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.seq > after => {
                    let seq = e.seq;
                    return Some((e, (rx, seq)));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    })
}

fn sse_event(e: &Event) -> SseEvent {
    SseEvent::default()
        .id(e.seq.to_string())
        .event("tandem")
        .data(serde_json::to_string(e).unwrap_or_default())
}

/// An embedded asset's content type and bytes.
fn asset_for(file: &str) -> Option<(&'static str, &'static str)> {
    match file {
        "console.css" => Some(("text/css; charset=utf-8", CSS)),
        "console.js" => Some(("text/javascript; charset=utf-8", JS)),
        _ => None,
    }
}

/// `/assets/{file}`: public, no cookies needed; revalidated so an image update shows.
async fn asset(Path(file): Path<String>) -> Response {
    match asset_for(&file) {
        Some((kind, body)) => (
            [
                (header::CONTENT_TYPE, kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::principal::Role;

    #[test]
    fn a_stream_starts_after_since_or_the_last_event_id_or_now() {
        assert_eq!(stream_start(Some(3), Some("9"), 42), 3);
        assert_eq!(stream_start(None, Some(" 9 "), 42), 9);
        assert_eq!(stream_start(None, Some("junk"), 42), 42);
        assert_eq!(stream_start(None, None, 42), 42);
    }

    #[test]
    fn only_the_two_assets_are_served() {
        assert!(asset_for("console.css").unwrap().0.starts_with("text/css"));
        assert!(asset_for("console.js")
            .unwrap()
            .0
            .starts_with("text/javascript"));
        assert!(asset_for("../mod.rs").is_none());
    }

    /// The page-weight budget: the overview and everything it loads.
    #[test]
    fn the_overview_with_its_assets_weighs_under_200_kib() {
        let st = Status::sample();
        let who = Principal {
            name: "ann".into(),
            role: Role::Admin,
            csrf: "0123456789abcdef0123456789abcdef".into(),
        };
        let main = overview::render_overview(&st, &who);
        let total = html::layout(&st, &who, "Overview", "/", &main).len() + CSS.len() + JS.len();
        assert!(total < 200 * 1024, "{total} bytes");
    }
}
