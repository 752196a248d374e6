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
//!
//! The same store also holds a checksummed write log ([`log`]): `POST /log?client=ID`
//! appends a fixed-size record with the request body as its payload, written with FUA
//! (or fsynced) before the answer, a JSON object with the record's `seq`, the serving
//! `node` and this process's `incarnation` (random at start, so a client can tell one
//! run of the service from the next). `GET /log` returns every valid record and,
//! separately, every slot that holds a torn or corrupted one.
//!
//! With `--shared-disk` (or the daemon's `TANDEM_SHARED_DISK` for a group with a
//! `shared_disk`), the counter and the log live on a disk every node sees, from
//! `TANDEM_SHARED_DISK_OFFSET` on (past the disk lease's sector), written with
//! `O_DSYNC`. `--self-write-ms N` then also appends a record of its own every N ms
//! (client `self`, the wall-clock time in ms as its payload), whether or not a client
//! calls: a node that kept writing after another had taken the disk over would leave a
//! record stamped later than the new owner's first one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::mirror::nbd::client::NbdClient;

pub mod log;

/// The counter record in the volume's first 4 KiB block.
const COUNTER_MAGIC: &[u8; 8] = b"TANDEMO1";

/// Where the demo service keeps its counter.
#[derive(Debug, Clone)]
pub enum CounterStore {
    /// The first block of the volume behind this NBD socket.
    Volume(PathBuf),
    /// The file `counter` in this directory.
    Directory(PathBuf),
    /// A disk (or file) every node sees, from `offset` on.
    Disk { path: PathBuf, offset: u64 },
}

/// Reads `len` bytes at `at` of a shared disk (short past its end: zeros).
fn disk_read(path: &std::path::Path, at: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        match f.read_at(&mut buf[done..], at + done as u64)? {
            0 => break,
            n => done += n,
        }
    }
    Ok(buf)
}

/// Writes `data` at `at` of a shared disk, durably (`O_DSYNC`) before returning.
fn disk_write(path: &std::path::Path, at: u64, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_DSYNC)
        .open(path)?;
    f.write_all_at(data, at)
}

/// [`disk_read`] on a blocking thread.
async fn disk_read_async(
    path: &std::path::Path,
    at: u64,
    len: usize,
) -> Result<Vec<u8>, (StatusCode, String)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || disk_read(&path, at, len))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
}

/// [`disk_write`] on a blocking thread.
async fn disk_write_async(
    path: &std::path::Path,
    at: u64,
    data: Vec<u8>,
) -> Result<(), (StatusCode, String)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || disk_write(&path, at, &data))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)
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
    self_write: Option<std::time::Duration>,
) -> std::io::Result<()> {
    let body = format!("{name}\n");
    let mut app = Router::new()
        .route("/", get(move || async move { body }))
        .route("/health", get(|| async { "ok\n" }));
    if let Some(store) = store {
        let counter = Arc::new(Counter {
            store: store.clone(),
            node: name.clone(),
            lock: Mutex::new(()),
        });
        app = app.route(
            "/counter",
            get(read_counter).post(bump_counter).with_state(counter),
        );
        let log = Arc::new(WriteLog::new(store, name.clone()));
        if let Some(every) = self_write {
            tokio::spawn(write_by_itself(log.clone(), every));
        }
        app = app.route("/log", get(read_log).post(append_log).with_state(log));
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
        CounterStore::Disk { path, offset } => disk_read_async(path, *offset, 4096).await,
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
            tokio::task::spawn_blocking(move || {
                crate::mirror::replica::meta::replace_file(&dir, "counter", &record)
            })
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
        }
        CounterStore::Disk { path, offset } => disk_write_async(path, *offset, record).await,
    }
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

/// The write log's state: where it lives, and the next sequence number once known.
struct WriteLog {
    store: CounterStore,
    node: String,
    incarnation: String,
    /// `None` until the region is scanned (and again after a failed append, whose slot
    /// may now hold a torn record: the next append goes after it).
    next: Mutex<Option<u64>>,
}

impl WriteLog {
    fn new(store: CounterStore, node: String) -> WriteLog {
        WriteLog {
            store,
            node,
            incarnation: format!("{:016x}", rand::random::<u64>()),
            next: Mutex::new(None),
        }
    }
}

/// `POST /log`'s query.
#[derive(Debug, Deserialize)]
struct AppendQuery {
    #[serde(default)]
    client: String,
}

/// `POST /log`'s answer.
#[derive(Debug, Serialize)]
struct Appended {
    seq: u64,
    node: String,
    incarnation: String,
}

/// `GET /log`'s answer.
#[derive(Debug, Serialize)]
struct LogView {
    node: String,
    incarnation: String,
    #[serde(flatten)]
    scan: log::LogScan,
}

fn refused(e: log::LogError) -> (StatusCode, String) {
    let status = match e {
        log::LogError::Full(_) => StatusCode::INSUFFICIENT_STORAGE,
        _ => StatusCode::BAD_REQUEST,
    };
    (status, format!("{e}\n"))
}

/// The whole log region (a missing log file reads as an empty log).
async fn load_log(store: &CounterStore) -> Result<Vec<u8>, (StatusCode, String)> {
    match store {
        CounterStore::Volume(socket) => {
            let mut nbd = NbdClient::connect(socket).await.map_err(unavailable)?;
            let mut region = Vec::with_capacity(log::LOG_LEN as usize);
            const CHUNK: u64 = 1 << 20;
            for at in (0..log::LOG_LEN).step_by(CHUNK as usize) {
                let len = CHUNK.min(log::LOG_LEN - at) as u32;
                let part = nbd.read(log::LOG_BASE + at, len).await;
                region.extend_from_slice(&part.map_err(unavailable)?);
            }
            let _ = nbd.disconnect().await;
            Ok(region)
        }
        CounterStore::Directory(dir) => match tokio::fs::read(dir.join("log")).await {
            Ok(mut b) => {
                // A torn last record may be short: padded, it reads as a bad slot.
                b.resize(b.len().div_ceil(log::RECORD_LEN) * log::RECORD_LEN, 0);
                Ok(b)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(unavailable(e)),
        },
        CounterStore::Disk { path, offset } => {
            disk_read_async(path, offset + log::LOG_BASE, log::LOG_LEN as usize).await
        }
    }
}

/// Writes one record durably into the slot of `seq`: FUA, or pwrite + fsync (and the
/// directory's fsync when the file is new).
async fn store_record(
    store: &CounterStore,
    seq: u64,
    record: Vec<u8>,
) -> Result<(), (StatusCode, String)> {
    let offset_in_log = (seq - 1) * log::RECORD_LEN as u64;
    match store {
        CounterStore::Volume(socket) => {
            let mut nbd = NbdClient::connect(socket).await.map_err(unavailable)?;
            nbd.write(log::LOG_BASE + offset_in_log, &record, true)
                .await
                .map_err(unavailable)?;
            let _ = nbd.disconnect().await;
            Ok(())
        }
        CounterStore::Directory(dir) => {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || {
                use std::os::unix::fs::FileExt;
                let path = dir.join("log");
                let fresh = !path.exists();
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)?;
                f.write_all_at(&record, offset_in_log)?;
                f.sync_all()?;
                if fresh {
                    std::fs::File::open(&dir)?.sync_all()?;
                }
                Ok::<_, std::io::Error>(())
            })
            .await
            .map_err(unavailable)?
            .map_err(unavailable)
        }
        CounterStore::Disk { path, offset } => {
            disk_write_async(path, offset + log::LOG_BASE + offset_in_log, record).await
        }
    }
}

/// The client id of the records `--self-write-ms` appends.
pub const SELF_CLIENT: &str = "self";

/// Appends a record of its own every `every` (payload: the wall-clock time in ms),
/// until the process ends; a failed append is logged and the next one tried.
async fn write_by_itself(log: Arc<WriteLog>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let body = Bytes::from(now_ms.to_string());
        if let Err((status, e)) = append(&log, SELF_CLIENT, body).await {
            tracing::warn!(%status, error = %e.trim_end(), "the demo service's own write failed");
        }
    }
}

async fn append_log(
    State(l): State<Arc<WriteLog>>,
    Query(q): Query<AppendQuery>,
    body: Bytes,
) -> Result<Json<Appended>, (StatusCode, String)> {
    append(&l, &q.client, body).await.map(Json)
}

/// Appends one record for `client` and answers where it went.
async fn append(l: &WriteLog, client: &str, body: Bytes) -> Result<Appended, (StatusCode, String)> {
    let mut next = l.next.lock().await;
    let seq = match *next {
        Some(n) => n,
        None => log::scan(&load_log(&l.store).await?).next,
    };
    if seq > log::capacity() {
        return Err(refused(log::LogError::Full(log::capacity())));
    }
    let record = log::encode(seq, client, &l.node, &body).map_err(refused)?;
    *next = None;
    store_record(&l.store, seq, record).await?;
    *next = Some(seq + 1);
    Ok(Appended {
        seq,
        node: l.node.clone(),
        incarnation: l.incarnation.clone(),
    })
}

async fn read_log(State(l): State<Arc<WriteLog>>) -> Result<Json<LogView>, (StatusCode, String)> {
    // Not while an append is in flight: its slot could read half-written.
    let _one = l.next.lock().await;
    let scan = log::scan(&load_log(&l.store).await?);
    Ok(Json(LogView {
        node: l.node.clone(),
        incarnation: l.incarnation.clone(),
        scan,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    #[tokio::test]
    async fn the_directory_log_appends_durably_and_goes_on_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = CounterStore::Directory(dir.path().to_path_buf());
        let l = Arc::new(WriteLog::new(store.clone(), "n1".into()));
        let q = |c: &str| {
            Query(AppendQuery {
                client: c.to_string(),
            })
        };
        for i in 1..=3u64 {
            let a = append_log(State(l.clone()), q("w1"), Bytes::from(format!("p{i}")))
                .await
                .unwrap();
            assert_eq!((a.seq, a.node.as_str()), (i, "n1"));
        }
        let too_big = Bytes::from(vec![b'x'; log::MAX_PAYLOAD + 1]);
        let e = append_log(State(l.clone()), q("w1"), too_big)
            .await
            .unwrap_err();
        assert_eq!(e.0, StatusCode::BAD_REQUEST);
        // Tear record 4's slot behind the service's back, as a crash mid-write would.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join("log"))
                .unwrap();
            f.write_all_at(&[0x5A; 100], 3 * log::RECORD_LEN as u64)
                .unwrap();
        }
        // Another run of the service (on another node) scans and appends after it.
        let again = Arc::new(WriteLog::new(store, "n2".into()));
        assert_ne!(again.incarnation, l.incarnation);
        let a = append_log(State(again.clone()), q("w2"), Bytes::from("p5"))
            .await
            .unwrap();
        assert_eq!((a.seq, a.node.as_str()), (5, "n2"));
        let Json(view) = read_log(State(again)).await.unwrap();
        let got: Vec<(u64, &str, &str)> = view
            .scan
            .records
            .iter()
            .map(|r| (r.seq, r.client.as_str(), r.payload.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                (1, "w1", "p1"),
                (2, "w1", "p2"),
                (3, "w1", "p3"),
                (5, "w2", "p5")
            ]
        );
        assert_eq!(view.scan.bad.len(), 1, "{:?}", view.scan.bad);
        assert_eq!(view.scan.bad[0].seq, 4);
        assert_eq!(view.scan.next, 6);
    }

    #[tokio::test]
    async fn the_shared_disk_store_keeps_the_counter_and_log_past_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let offset = 4096;
        std::fs::write(&path, vec![0xEEu8; offset as usize]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(offset + log::LOG_BASE + log::LOG_LEN)
            .unwrap();
        let store = CounterStore::Disk {
            path: path.clone(),
            offset,
        };
        let c = Arc::new(Counter {
            store: store.clone(),
            node: "n1".into(),
            lock: Mutex::new(()),
        });
        assert_eq!(bump_counter(State(c.clone())).await.unwrap(), "1 n1\n");
        // The service's own writes, then another node's run of it on the same disk.
        let l = Arc::new(WriteLog::new(store.clone(), "n1".into()));
        let writer = tokio::spawn(write_by_itself(l.clone(), Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        writer.abort();
        let _ = writer.await;
        let again = Arc::new(WriteLog::new(store, "n2".into()));
        let a = append(&again, "w1", Bytes::from("p")).await.unwrap();
        let Json(view) = read_log(State(again)).await.unwrap();
        let n = view.scan.records.len() as u64;
        assert!(n >= 3, "{n} records");
        assert_eq!(a.seq, n, "appended after the other node's records");
        let own = &view.scan.records[..n as usize - 1];
        assert!(own.iter().all(|r| r.client == SELF_CLIENT
            && r.node == "n1"
            && r.payload.parse::<u64>().is_ok()));
        assert!(view.scan.bad.is_empty());
        // Nothing before the offset was touched.
        assert_eq!(disk_read(&path, 0, 4096).unwrap(), vec![0xEEu8; 4096]);
    }

    #[test]
    fn counter_record_round_trips_and_a_fresh_volume_reads_zero() {
        assert_eq!(decode_counter(&[0u8; 4096]), (0, String::new()));
        assert_eq!(decode_counter(&encode_counter(41, "n2")), (41, "n2".into()));
    }
}
