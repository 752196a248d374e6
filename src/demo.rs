//! The built-in demo service the lab protects: a tiny HTTP server that answers with
//! the name of the node serving it (`TANDEM_NODE`, set by the daemon for its
//! children), so a client can see a failover happen. `/health` answers `ok`.
//!
//! With `--nbd-socket`, the service also keeps a visit counter on a (mirrored) volume,
//! reached through NBD: `POST /counter` adds one and writes it with FUA before
//! answering, `GET /counter` reads it. After a failover the counter goes on from where
//! it was: the data moved with the service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::Mutex;

use crate::mirror::nbd::client::{ClientError, NbdClient};

/// The counter record in the volume's first 4 KiB block.
const COUNTER_MAGIC: &[u8; 8] = b"TANDEMO1";

struct Counter {
    socket: PathBuf,
    node: String,
    /// One update at a time, so increments are never lost.
    lock: Mutex<()>,
}

/// Serves until killed.
pub async fn serve(
    listen: SocketAddr,
    name: String,
    nbd_socket: Option<PathBuf>,
) -> std::io::Result<()> {
    let body = format!("{name}\n");
    let mut app = Router::new()
        .route("/", get(move || async move { body }))
        .route("/health", get(|| async { "ok\n" }));
    if let Some(socket) = nbd_socket {
        let counter = Arc::new(Counter {
            socket,
            node: name.clone(),
            lock: Mutex::new(()),
        });
        app = app.route(
            "/counter",
            get(read_counter).post(bump_counter).with_state(counter),
        );
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, node = %name, "demo service listening");
    axum::serve(listener, app).await
}

/// (count, node that wrote it last) from the first block; a fresh volume reads 0.
fn decode_counter(block: &[u8]) -> (u64, String) {
    if block.len() < 17 || &block[..8] != COUNTER_MAGIC {
        return (0, String::new());
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&block[8..16]);
    let len = usize::from(block[16]).min(block.len() - 17);
    (
        u64::from_be_bytes(n),
        String::from_utf8_lossy(&block[17..17 + len]).into_owned(),
    )
}

fn encode_counter(count: u64, node: &str) -> Vec<u8> {
    let mut b = vec![0u8; 4096];
    b[..8].copy_from_slice(COUNTER_MAGIC);
    b[8..16].copy_from_slice(&count.to_be_bytes());
    let name = &node.as_bytes()[..node.len().min(255)];
    b[16] = name.len() as u8;
    b[17..17 + name.len()].copy_from_slice(name);
    b
}

fn unavailable(e: ClientError) -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("volume unavailable: {e}\n"),
    )
}

async fn read_counter(State(c): State<Arc<Counter>>) -> Result<String, (StatusCode, String)> {
    let mut nbd = NbdClient::connect(&c.socket).await.map_err(unavailable)?;
    let (count, by) = decode_counter(&nbd.read(0, 4096).await.map_err(unavailable)?);
    let _ = nbd.disconnect().await;
    Ok(format!("{count} {by}\n"))
}

async fn bump_counter(State(c): State<Arc<Counter>>) -> Result<String, (StatusCode, String)> {
    let _one = c.lock.lock().await;
    let mut nbd = NbdClient::connect(&c.socket).await.map_err(unavailable)?;
    let (count, _) = decode_counter(&nbd.read(0, 4096).await.map_err(unavailable)?);
    let next = count + 1;
    nbd.write(0, &encode_counter(next, &c.node), true)
        .await
        .map_err(unavailable)?;
    let _ = nbd.disconnect().await;
    Ok(format!("{next} {}\n", c.node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_record_round_trips_and_a_fresh_volume_reads_zero() {
        assert_eq!(decode_counter(&[0u8; 4096]), (0, String::new()));
        assert_eq!(decode_counter(&encode_counter(41, "n2")), (41, "n2".into()));
    }
}
