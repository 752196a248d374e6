//! The web console: HTTPS pages served by the daemon on every node, with users, roles
//! and sessions; everything a page does goes through the control API.

pub mod authz;
pub mod gate;
pub mod limit;
pub mod pages;
pub mod principal;
pub mod server;
pub mod session;
pub mod tls;
pub mod users;

/// Errors of the console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("console certificate: {0}")]
    Certificate(String),
    #[error(transparent)]
    Users(#[from] users::UsersError),
}

/// A running console; dropping it stops the listener (open connections end with it).
pub struct Console {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Console {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// This node's console certificate (made at the first start) and what `tandem status`
/// shows of it; the fingerprint is logged.
pub fn identity(
    cfg: &crate::config::Config,
    local: &str,
) -> Result<Option<(tls::Identity, crate::status::ConsoleView)>, ConsoleError> {
    let Some(console) = &cfg.console else {
        return Ok(None);
    };
    let addresses = cfg
        .node(local)
        .map(|n| n.addresses.values().copied().collect::<Vec<_>>());
    let ips = addresses
        .unwrap_or_default()
        .into_iter()
        .chain([console.listen.ip()]);
    let names = tls::names_for(local, ips);
    let identity = tls::load_or_create(console, &cfg.cluster.state_dir, names)?;
    tracing::info!(
        address = %console.listen,
        fingerprint = %identity.fingerprint,
        "console: HTTPS certificate SHA-256 {}",
        identity.fingerprint
    );
    let view = crate::status::ConsoleView {
        address: console.listen,
        fingerprint: identity.fingerprint.clone(),
    };
    Ok(Some((identity, view)))
}

/// Binds the console's listener and serves the pages and the control API `api`.
pub async fn start(
    listen: std::net::SocketAddr,
    identity: tls::Identity,
    state_dir: &std::path::Path,
    pages: pages::PageState,
    api: axum::Router,
) -> Result<Console, ConsoleError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ConsoleError::Io(format!("bind {listen}"), e))?;
    let state = server::ConsoleState::new(users::store_path(state_dir), pages.events.clone());
    let app = server::app(state, pages::routes().with_state(pages), api);
    Ok(Console {
        task: tokio::spawn(tls::serve(listener, identity, app)),
    })
}
