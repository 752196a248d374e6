//! The built-in demo service the lab protects: a tiny HTTP server that answers with
//! the name of the node serving it (`TANDEM_NODE`, set by the daemon for its
//! children), so a client can see a failover happen. `/health` answers `ok`.
//!
//! With `--nbd-socket`, the service also keeps a visit counter on a (mirrored) volume,
//! reached through NBD: `POST /counter` adds one and writes it with FUA before
//! answering, `GET /counter` reads it. With `--data-dir` the counter is a file in a
//! directory instead (a filesystem mounted from the volume), replaced atomically and
//! fsynced before the answer. After a failover the counter goes on from where it was:
//! the data moved with the service.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::sync::Mutex;

use crate::mirror::nbd::client::NbdClient;

/// The counter record in the volume's first 4 KiB block.
const COUNTER_MAGIC: &[u8; 8] = b"TANDEMO1";

/// Where the demo service keeps its counter.
#[derive(Debug, Clone)]
pub enum CounterStore {
    /// The first block of the volume behind this NBD socket.
    Volume(PathBuf),
    /// The file `counter` in this directory.
    Directory(PathBuf),
}

struct Counter {
    store: CounterStore,
    node: String,
    /// One update at a time, so increments are never lost.
    lock: Mutex<()>,
}

/// Serves until killed.
pub async fn serve(
    listen: SocketAddr,
    name: String,
    store: Option<CounterStore>,
) -> std::io::Result<()> {
    let body = format!("{name}\n");
    let mut app = Router::new()
        .route("/", get(move || async move { body }))
        .route("/health", get(|| async { "ok\n" }));
    if let Some(store) = store {
        let counter = Arc::new(Counter {
            store,
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

fn unavailable(e: impl std::fmt::Display) -> (StatusCode, String) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("volume unavailable: {e}\n"),
    )
}

/// The counter record as stored: the volume's first block, or the counter file
/// (a missing file reads as a fresh counter).
async fn load(store: &CounterStore) -> Result<Vec<u8>, (StatusCode, String)> {
    match store {
        CounterStore::Volume(socket) => {
            let mut nbd = NbdClient::connect(socket).await.map_err(unavailable)?;
            let block = nbd.read(0, 4096).await.map_err(unavailable)?;
            let _ = nbd.disconnect().await;
            Ok(block)
        }
        CounterStore::Directory(dir) => match tokio::fs::read(dir.join("counter")).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(unavailable(e)),
        },
    }
}

/// Stores the record durably before returning: a FUA write, or a new file that is
/// fsynced, renamed over the old one, and the directory fsynced.
async fn store(store: &CounterStore, record: Vec<u8>) -> Result<(), (StatusCode, String)> {
    match store {
        CounterStore::Volume(socket) => {
            let mut nbd = NbdClient::connect(socket).await.map_err(unavailable)?;
            nbd.write(0, &record, true).await.map_err(unavailable)?;
            let _ = nbd.disconnect().await;
            Ok(())
        }
        CounterStore::Directory(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || replace_file(&dir, "counter", &record))
                .await
                .map_err(unavailable)?
                .map_err(unavailable)
        }
    }
}

fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

async fn read_counter(State(c): State<Arc<Counter>>) -> Result<String, (StatusCode, String)> {
    let (count, by) = decode_counter(&load(&c.store).await?);
    Ok(format!("{count} {by}\n"))
}

async fn bump_counter(State(c): State<Arc<Counter>>) -> Result<String, (StatusCode, String)> {
    let _one = c.lock.lock().await;
    let (count, _) = decode_counter(&load(&c.store).await?);
    let next = count + 1;
    store(&c.store, encode_counter(next, &c.node)).await?;
    Ok(format!("{next} {}\n", c.node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_directory_counter_survives_a_restart_of_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let c = Arc::new(Counter {
            store: CounterStore::Directory(dir.path().to_path_buf()),
            node: "n1".into(),
            lock: Mutex::new(()),
        });
        assert_eq!(read_counter(State(c.clone())).await.unwrap(), "0 \n");
        assert_eq!(bump_counter(State(c.clone())).await.unwrap(), "1 n1\n");
        let again = Arc::new(Counter {
            store: CounterStore::Directory(dir.path().to_path_buf()),
            node: "n2".into(),
            lock: Mutex::new(()),
        });
        assert_eq!(bump_counter(State(again.clone())).await.unwrap(), "2 n2\n");
        assert_eq!(read_counter(State(again)).await.unwrap(), "2 n2\n");
        assert!(!dir.path().join(".counter.tmp").exists());
    }

    #[test]
    fn counter_record_round_trips_and_a_fresh_volume_reads_zero() {
        assert_eq!(decode_counter(&[0u8; 4096]), (0, String::new()));
        assert_eq!(decode_counter(&encode_counter(41, "n2")), (41, "n2".into()));
    }
}
