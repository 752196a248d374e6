//! The built-in demo service the lab protects: a tiny HTTP server that answers with
//! the name of the node serving it (`TANDEM_NODE`, set by the daemon for its
//! children), so a client can see a failover happen. `/health` answers `ok`.

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;

/// Serves until killed.
pub async fn serve(listen: SocketAddr, name: String) -> std::io::Result<()> {
    let body = format!("{name}\n");
    let app = Router::new()
        .route("/", get(move || async move { body }))
        .route("/health", get(|| async { "ok\n" }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, node = %name, "demo service listening");
    axum::serve(listener, app).await
}
