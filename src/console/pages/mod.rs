//! The console's pages: server-rendered HTML over the status snapshot and the event
//! log. The console's auth layer puts the request's [`Principal`] in its extensions.

use axum::Router;
use tokio::sync::watch;

use crate::event::EventLog;
use crate::status::Status;

#[allow(unused_imports)]
use super::principal::Principal;

/// What the pages read.
#[derive(Clone)]
pub struct PageState {
    pub status: watch::Receiver<Status>,
    pub events: EventLog,
}

/// The page routes (GET only; actions go through the control API).
pub fn routes() -> Router<PageState> {
    Router::new()
}
