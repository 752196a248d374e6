//! The control API: HTTP/JSON on a Unix socket (and optionally TCP with a bearer
//! token). The CLI uses it; its JSON is documented in `docs/API.md`.
//!
//! - [`server`]: the axum routes over the daemon's status snapshot and event log.
//! - [`client`]: the small HTTP client the CLI uses.

pub mod client;
pub mod server;

pub use server::serve;

/// Errors of the API server and client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("cannot reach the daemon at {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("http: {0}")]
    Http(String),
    /// A non-success answer that is not a control error (e.g. 401, 400).
    #[error("{0}")]
    Status(String),
    /// The daemon refused or could not carry out a control request.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    #[error("bad response: {0}")]
    Decode(String),
}
