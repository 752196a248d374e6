//! The NBD server against the real clients (qemu-io, qemu-img, nbdinfo, nbdcopy), plus
//! a raw-socket client for what those clients never do: simple replies only, unknown
//! options, out-of-range requests, garbage, a full disk.
//!
//! The server runs in-process on a Unix socket and a loopback port in a temp dir; one
//! test runs it through `tandem nbd serve`, one with the request metrics on.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use tandem::metrics::{Metrics, NbdMetrics};
use tandem::mirror::nbd::{NbdServer, ServerConfig};
use tandem::mirror::volume::Volume;
use tandem::mirror::{Export, ExportError, Extent};

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{wait_until, BIN};

const MIB: u64 = 1 << 20;

/// A served volume; the runtime (and so the server) stops when it is dropped.
struct Served {
    dir: tempfile::TempDir,
    socket: PathBuf,
    tcp: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    _runtime: tokio::runtime::Runtime,
}

impl Served {
    fn uri(&self) -> String {
        format!("nbd+unix:///?socket={}", self.socket.display())
    }
    fn file(&self) -> PathBuf {
        self.dir.path().join("volume.raw")
    }
}

fn serve_export<E: Export>(dir: tempfile::TempDir, export: E) -> Served {
    serve_with_metrics(dir, export, None)
}

fn serve_with_metrics<E: Export>(
    dir: tempfile::TempDir,
    export: E,
    metrics: Option<Arc<NbdMetrics>>,
) -> Served {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let socket = dir.path().join("nbd.sock");
    let config = ServerConfig {
        name: "disk".into(),
        description: "test volume".into(),
        unix: Some(socket.clone()),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        metrics,
    };
    let server = runtime.block_on(NbdServer::bind(config)).unwrap();
    let tcp = server.tcp_addr().unwrap();
    let server = runtime.spawn(server.run(Arc::new(export)));
    Served {
        dir,
        socket,
        tcp,
        server,
        _runtime: runtime,
    }
}

fn serve(size: u64, read_only: bool) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("volume.raw");
    std::fs::File::create(&file).unwrap().set_len(size).unwrap();
    let volume = Volume::open(&file, read_only).unwrap();
    serve_export(dir, volume)
}

fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd} (install qemu-utils libnbd-bin nbdkit): {e}"));
    out
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw", uri];
    for c in commands {
        args.extend(["-c", c]);
    }
    let out = ok("qemu-io", &args);
    // qemu-io exits 0 even when a command fails; failures are printed.
    assert!(
        !out.contains("failed") && !out.contains("Pattern verification"),
        "qemu-io {commands:?}: {out}"
    );
    out
}

fn random_file(path: &Path, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in data.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(path, &data).unwrap();
    data
}

#[test]
fn qemu_io_write_read_flush_discard_zero() {
    let s = serve(16 * MIB, false);
    qemu_io(
        &s.uri(),
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 4M 64k",
            "read -P 0xab 0 1M",
            "read -P 0xcd 4M 64k",
            "flush",
            "discard 0 64k",
            "read -P 0 0 64k",
            "write -z 4M 4k",
            "read -P 0 4M 4k",
            "read -P 0xcd 4100k 60k",
            "write -f -P 0x11 8M 4k",
        ],
    );
    let data = std::fs::read(s.file()).unwrap();
    assert!(data[64 << 10..MIB as usize].iter().all(|&b| b == 0xab));
    assert!(data[..64 << 10].iter().all(|&b| b == 0));
    assert!(data[(4 * MIB) as usize..(4 * MIB) as usize + 4096]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(data[(8 * MIB) as usize], 0x11);
    // The same export over loopback TCP.
    let tcp = format!("nbd://{}", s.tcp);
    qemu_io(
        &tcp,
        &[
            "read -P 0x11 8M 4k",
            "write -P 0x22 9M 4k",
            "read -P 0x22 9M 4k",
        ],
    );
}

#[test]
fn qemu_img_convert_compare_and_map() {
    let s = serve(8 * MIB, false);
    let src = s.dir.path().join("src.raw");
    // 1 MiB of data at 2 MiB, the rest sparse.
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(8 * MIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0x5a; MIB as usize], 2 * MIB).unwrap();
    let src = src.to_str().unwrap();
    ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src, &s.uri()],
    );
    ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src, &s.uri()],
    );
    let map: serde_json::Value = serde_json::from_str(&ok(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &s.uri()],
    ))
    .unwrap();
    let mut data_bytes = Vec::new();
    for e in map.as_array().unwrap() {
        let (start, len) = (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
        if e["data"].as_bool().unwrap() {
            data_bytes.push((start, start + len));
        } else {
            assert!(e["zero"].as_bool().unwrap(), "{e}");
        }
    }
    assert!(
        data_bytes
            .iter()
            .any(|&(a, b)| a <= 2 * MIB && b >= 3 * MIB),
        "no data extent over the written MiB: {map}"
    );
    assert!(
        data_bytes.iter().all(|&(a, b)| b > 2 * MIB && a < 3 * MIB),
        "{map}"
    );
}

#[test]
fn nbdinfo_list_json_and_map() {
    let s = serve(4 * MIB, false);
    qemu_io(&s.uri(), &["write -P 1 1M 64k"]);
    let list = ok("nbdinfo", &["--list", &s.uri()]);
    assert!(list.contains("export=\"disk\""), "{list}");
    assert!(list.contains("test volume"), "{list}");

    let info: serde_json::Value =
        serde_json::from_str(&ok("nbdinfo", &["--json", &s.uri()])).unwrap();
    assert_eq!(info["protocol"], "newstyle-fixed");
    assert_eq!(info["structured"], true);
    let e = &info["exports"][0];
    assert_eq!(e["export-size"], 4 * MIB);
    for (k, v) in [
        ("can_flush", true),
        ("can_fua", true),
        ("can_trim", true),
        ("can_zero", true),
        ("can_multi_conn", true),
        ("is_read_only", false),
    ] {
        assert_eq!(e[k], v, "{k}");
    }
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 * MIB);
    assert_eq!(e["contexts"][0], "base:allocation");

    let map: serde_json::Value =
        serde_json::from_str(&ok("nbdinfo", &["--map", "--json", &s.uri()])).unwrap();
    let map = map.as_array().unwrap();
    let total: u64 = map.iter().map(|e| e["length"].as_u64().unwrap()).sum();
    assert_eq!(total, 4 * MIB);
    assert_eq!(
        (map[0]["offset"].as_u64(), map[0]["type"].as_u64()),
        (Some(0), Some(3))
    );
    let data: Vec<_> = map.iter().filter(|e| e["type"] == 0).collect();
    assert_eq!(data.len(), 1, "{map:?}");
    let start = data[0]["offset"].as_u64().unwrap();
    let end = start + data[0]["length"].as_u64().unwrap();
    assert!(
        start <= MIB && end >= MIB + 65536 && end - start <= MIB,
        "{map:?}"
    );
}

#[test]
fn nbdcopy_in_and_out_with_multi_conn() {
    let s = serve(32 * MIB, false);
    let src = s.dir.path().join("src.raw");
    let data = random_file(&src, (32 * MIB) as usize);
    let src = src.to_str().unwrap();
    for connections in ["--connections=1", "--connections=4"] {
        ok(
            "qemu-img",
            &["create", "-f", "raw", s.file().to_str().unwrap(), "32M"],
        );
        ok("nbdcopy", &[connections, "--flush", src, &s.uri()]);
        assert!(
            std::fs::read(s.file()).unwrap() == data,
            "{connections}: copy in differs"
        );
        let back = s.dir.path().join("back.raw");
        ok("nbdcopy", &[connections, &s.uri(), back.to_str().unwrap()]);
        assert!(
            std::fs::read(&back).unwrap() == data,
            "{connections}: copy out differs"
        );
        std::fs::remove_file(back).unwrap();
    }
}

#[test]
fn read_only_export_refuses_writes() {
    let s = serve(MIB, true);
    let info: serde_json::Value =
        serde_json::from_str(&ok("nbdinfo", &["--json", &s.uri()])).unwrap();
    assert_eq!(info["exports"][0]["is_read_only"], true);
    let mut c = RawClient::go_structured(&s.socket);
    let (_, errno, _) = c.request(1, 0, 0, &[1, 2, 3], 0);
    assert_eq!(errno, 1, "EPERM");
    let (_, errno, data) = c.request(0, 0, 0, &[], 4);
    assert_eq!((errno, data), (0, vec![0; 4]));
}

#[test]
fn metrics_count_bytes_errors_and_time_each_command() {
    let cfg: tandem::config::Config = toml::from_str(
        r#"
        [cluster]
        name = "nbdtest"
        key = "0123456789abcdef0123"
        [heartbeat]
        paths = ["hb1"]
        [[node]]
        name = "a"
        priority = 1
        addresses = { hb1 = "127.0.0.1" }
        "#,
    )
    .unwrap();
    let metrics = Metrics::new(&cfg, "a").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("volume.raw");
    std::fs::File::create(&file).unwrap().set_len(MIB).unwrap();
    let volume = Volume::open(&file, false).unwrap();
    let s = serve_with_metrics(dir, volume, Some(metrics.nbd("disk")));
    let mut c = RawClient::go_structured(&s.socket);
    assert_eq!(c.request(1, 1, 0, &[7; 4096], 0).1, 0, "write");
    assert_eq!(c.request(0, 2, 0, &[], 512).2, vec![7; 512], "read");
    assert_eq!(c.request(0, 3, MIB, &[], 4096).1, 22, "EINVAL past the end");
    assert_eq!(c.request(3, 4, 0, &[], 0).1, 0, "flush");
    let text = metrics.render(&tandem::status::Status::default());
    for want in [
        r#"tandem_nbd_bytes_total{cluster="nbdtest",direction="write",export="disk"} 4096"#,
        r#"tandem_nbd_bytes_total{cluster="nbdtest",direction="read",export="disk"} 512"#,
        r#"tandem_nbd_request_errors_total{cluster="nbdtest",command="read",export="disk"} 1"#,
        r#"tandem_nbd_request_errors_total{cluster="nbdtest",command="write",export="disk"} 0"#,
        r#"tandem_nbd_request_duration_seconds_count{cluster="nbdtest",command="read",export="disk"} 1"#,
        r#"tandem_nbd_request_duration_seconds_count{cluster="nbdtest",command="write",export="disk"} 1"#,
        r#"tandem_nbd_request_duration_seconds_count{cluster="nbdtest",command="flush",export="disk"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| same_sample(l, want)),
            "missing `{want}` in\n{text}"
        );
    }
}

/// Whether two exposition lines are the same sample, labels in any order.
fn same_sample(a: &str, b: &str) -> bool {
    let norm = |l: &str| -> Option<(String, Vec<String>, String)> {
        let (series, value) = l.rsplit_once(' ')?;
        let (name, labels) = series.split_once('{')?;
        let mut labels: Vec<String> = labels
            .trim_end_matches('}')
            .split(',')
            .map(str::to_string)
            .collect();
        labels.sort();
        Some((name.to_string(), labels, value.to_string()))
    };
    norm(a).is_some_and(|x| Some(x) == norm(b))
}

/// A hand-written client: fixed newstyle, no TLS.
struct RawClient {
    s: UnixStream,
    structured: bool,
}

const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const REQUEST_MAGIC: u32 = 0x2560_9513;

impl RawClient {
    fn connect(socket: &Path) -> RawClient {
        let mut s = UnixStream::connect(socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).unwrap();
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(u16::from_be_bytes([greeting[16], greeting[17]]), 3);
        s.write_all(&3u32.to_be_bytes()).unwrap(); // fixed newstyle, no zeroes
        RawClient {
            s,
            structured: false,
        }
    }

    fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// Reads one option reply: (option, reply type, payload).
    fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(&h[..8], &0x0003_e889_0455_65a9u64.to_be_bytes());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
        let mut data = vec![0u8; len];
        self.s.read_exact(&mut data).unwrap();
        (
            u32::from_be_bytes(h[8..12].try_into().unwrap()),
            u32::from_be_bytes(h[12..16].try_into().unwrap()),
            data,
        )
    }

    /// NBD_OPT_GO on the default export; replies until the ACK.
    fn go(&mut self) -> Vec<(u32, u32, Vec<u8>)> {
        self.send_option(7, &[0, 0, 0, 0, 0, 0]);
        let mut replies = Vec::new();
        loop {
            let r = self.option_reply();
            let done = r.1 == 1 || r.1 & 0x8000_0000 != 0;
            replies.push(r);
            if done {
                return replies;
            }
        }
    }

    fn go_structured(socket: &Path) -> RawClient {
        let mut c = RawClient::connect(socket);
        c.send_option(8, &[]);
        assert_eq!(c.option_reply().1, 1);
        assert_eq!(c.go().last().unwrap().1, 1);
        c.structured = true;
        c
    }

    fn send_request(&mut self, cmd: u16, cookie: u64, offset: u64, payload: &[u8], len: u32) {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&cmd.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        let len = if cmd == 1 { payload.len() as u32 } else { len };
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// Sends a request and reads its reply: (cookie, errno, read data). Reads data
    /// only for successful reads of `len` bytes.
    fn request(
        &mut self,
        cmd: u16,
        cookie: u64,
        offset: u64,
        payload: &[u8],
        len: u32,
    ) -> (u64, u32, Vec<u8>) {
        self.send_request(cmd, cookie, offset, payload, len);
        self.reply(cmd == 0, len)
    }

    fn reply(&mut self, is_read: bool, len: u32) -> (u64, u32, Vec<u8>) {
        if !self.structured {
            let mut h = [0u8; 16];
            self.s.read_exact(&mut h).unwrap();
            assert_eq!(&h[..4], &0x6744_6698u32.to_be_bytes(), "simple reply magic");
            let errno = u32::from_be_bytes(h[4..8].try_into().unwrap());
            let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
            let mut data = Vec::new();
            if is_read && errno == 0 {
                data = vec![0u8; len as usize];
                self.s.read_exact(&mut data).unwrap();
            }
            return (cookie, errno, data);
        }
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            &h[..4],
            &0x668e_33efu32.to_be_bytes(),
            "structured reply magic"
        );
        assert_eq!(
            u16::from_be_bytes([h[4], h[5]]) & 1,
            1,
            "single chunk with DONE"
        );
        let kind = u16::from_be_bytes([h[6], h[7]]);
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let mut payload = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
        self.s.read_exact(&mut payload).unwrap();
        match kind {
            0 => (cookie, 0, Vec::new()),
            1 => (cookie, 0, payload[8..].to_vec()),
            5 => (cookie, 0, payload),
            0x8001 => (
                cookie,
                u32::from_be_bytes(payload[..4].try_into().unwrap()),
                payload[6..].to_vec(),
            ),
            other => panic!("unexpected chunk type {other}"),
        }
    }

    /// True once the server has closed the connection (a read timeout means it has not).
    fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
            }
        }
    }
}

#[test]
fn export_name_client_gets_simple_replies() {
    let s = serve(MIB, false);
    let mut c = RawClient::connect(&s.socket);
    c.send_option(1, b"disk");
    let mut h = [0u8; 10];
    c.s.read_exact(&mut h).unwrap();
    assert_eq!(u64::from_be_bytes(h[..8].try_into().unwrap()), MIB);
    let flags = u16::from_be_bytes([h[8], h[9]]);
    assert_eq!(
        flags & 0x16d,
        0x16d,
        "has flags, flush, fua, trim, zeroes, multi-conn: {flags:#x}"
    );
    assert_eq!(c.request(1, 7, 512, &[9; 512], 0), (7, 0, vec![]));
    assert_eq!(c.request(0, 8, 512, &[], 512), (8, 0, vec![9; 512]));
    assert_eq!(c.request(3, 9, 0, &[], 0), (9, 0, vec![]));
    // Out of range: EINVAL, and the connection stays usable.
    assert_eq!(c.request(0, 10, MIB - 1, &[], 2), (10, 22, vec![]));
    assert_eq!(c.request(1, 11, MIB, &[1; 16], 0).1, 22);
    assert_eq!(c.request(0, 12, 512, &[], 1), (12, 0, vec![9]));
    // Block status without structured replies: EINVAL.
    assert_eq!(c.request(7, 13, 0, &[], 512).1, 22);
    // Disconnect: the server closes the connection.
    c.send_request(2, 14, 0, &[], 0);
    assert!(c.is_closed());
}

/// Stopping the server (as the `mirror` agent does before it demotes) closes the
/// connections that are open, not only the listeners.
#[test]
fn stopping_the_server_closes_open_connections() {
    let s = serve(MIB, false);
    let mut c = RawClient::connect(&s.socket);
    c.send_option(1, b"disk");
    let mut h = [0u8; 10];
    c.s.read_exact(&mut h).unwrap();
    assert_eq!(c.request(1, 1, 0, &[7; 512], 0), (1, 0, vec![]));
    s.server.abort();
    c.s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    assert!(c.is_closed(), "the connection outlived its server");
    assert!(std::os::unix::net::UnixStream::connect(&s.socket).is_err());
}

#[test]
fn unknown_option_then_go_and_pipelined_requests() {
    let s = serve(4 * MIB, false);
    let mut c = RawClient::connect(&s.socket);
    c.send_option(0x1234, b"payload");
    assert_eq!(
        c.option_reply(),
        (0x1234, (1 << 31) + 1, b"option not supported".to_vec())
    );
    // Unknown export name: ERR_UNKNOWN, still negotiating.
    let mut name = 4u32.to_be_bytes().to_vec();
    name.extend_from_slice(b"nope\0\0");
    c.send_option(7, &name);
    assert_eq!(c.option_reply().1, (1 << 31) + 6);
    c.send_option(8, &[]);
    assert_eq!(c.option_reply().1, 1);
    let info = c.go();
    assert_eq!(info.last().unwrap().1, 1);
    c.structured = true;
    // 32 writes in flight, then the replies, in any order.
    for i in 0..32u64 {
        c.send_request(1, 100 + i, i * 65536, &[i as u8; 65536], 0);
    }
    let mut cookies: Vec<u64> = (0..32)
        .map(|_| c.reply(false, 0))
        .map(|(k, e, _)| {
            assert_eq!(e, 0);
            k
        })
        .collect();
    cookies.sort();
    assert_eq!(cookies, (100..132).collect::<Vec<_>>());
    assert_eq!(c.request(0, 1, 31 * 65536, &[], 4), (1, 0, vec![31; 4]));
    // Out-of-range read: an error chunk with EINVAL and a message.
    let (_, errno, msg) = c.request(0, 2, 4 * MIB, &[], 1);
    assert_eq!(errno, 22);
    assert!(!msg.is_empty());
    assert_eq!(c.request(0, 3, 0, &[], 1), (3, 0, vec![0]));
}

#[test]
fn block_status_needs_the_context_and_honours_req_one() {
    let s = serve(4 * MIB, false);
    qemu_io(&s.uri(), &["write -P 1 1M 64k"]);
    let mut c = RawClient::connect(&s.socket);
    c.send_option(8, &[]);
    c.option_reply();
    let mut q = 0u32.to_be_bytes().to_vec();
    q.extend_from_slice(&1u32.to_be_bytes());
    q.extend_from_slice(&15u32.to_be_bytes());
    q.extend_from_slice(b"base:allocation");
    c.send_option(10, &q);
    let (_, typ, ctx) = c.option_reply();
    assert_eq!(typ, 4);
    let id = u32::from_be_bytes(ctx[..4].try_into().unwrap());
    assert_eq!(&ctx[4..], b"base:allocation");
    assert_eq!(c.option_reply().1, 1);
    c.go();
    c.structured = true;
    let (_, errno, payload) = c.request(7, 1, 0, &[], (2 * MIB) as u32);
    assert_eq!(errno, 0);
    assert_eq!(u32::from_be_bytes(payload[..4].try_into().unwrap()), id);
    let extents: Vec<(u32, u32)> = payload[4..]
        .chunks(8)
        .map(|d| {
            (
                u32::from_be_bytes(d[..4].try_into().unwrap()),
                u32::from_be_bytes(d[4..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(extents.iter().map(|e| u64::from(e.0)).sum::<u64>(), 2 * MIB);
    assert_eq!(extents[0], (MIB as u32, 3));
    assert_eq!(extents[1].1, 0);
    // REQ_ONE: exactly one descriptor.
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&8u16.to_be_bytes());
    b.extend_from_slice(&7u16.to_be_bytes());
    b.extend_from_slice(&2u64.to_be_bytes());
    b.extend_from_slice(&0u64.to_be_bytes());
    b.extend_from_slice(&(2 * MIB as u32).to_be_bytes());
    c.s.write_all(&b).unwrap();
    let (_, _, payload) = c.reply(false, 0);
    assert_eq!(payload.len(), 4 + 8);
}

#[test]
fn garbage_closes_only_that_connection() {
    let s = serve(MIB, false);
    let mut bad = RawClient::go_structured(&s.socket);
    let mut good = RawClient::go_structured(&s.socket);
    bad.s.write_all(&[0xde; 28]).unwrap();
    assert!(bad.is_closed());
    assert_eq!(good.request(1, 1, 0, &[7; 8], 0).1, 0);
    assert_eq!(good.request(0, 2, 0, &[], 8), (2, 0, vec![7; 8]));
    // Garbage during negotiation, and a client that is not fixed newstyle.
    let mut bad = RawClient::connect(&s.socket);
    bad.s.write_all(&[0u8; 16]).unwrap();
    assert!(bad.is_closed());
    let mut old = UnixStream::connect(&s.socket).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    old.read_exact(&mut greeting).unwrap();
    old.write_all(&0u32.to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(old.read(&mut b).unwrap(), 0);
    // The TCP listener is unaffected.
    let t = TcpStream::connect(s.tcp).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    (&t).read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting[..8], b"NBDMAGIC");
}

#[test]
fn oversized_requests_do_not_allocate_or_disconnect() {
    let s = serve(64 * MIB, false);
    let mut c = RawClient::go_structured(&s.socket);
    // A 48 MiB read: EOVERFLOW, connection still fine.
    assert_eq!(c.request(0, 1, 0, &[], 48 << 20).1, 75);
    // An oversized write's payload is skipped, not buffered.
    let big = vec![0u8; 40 << 20];
    assert_eq!(c.request(1, 2, 0, &big, 0).1, 75);
    assert_eq!(c.request(0, 3, 0, &[], 4), (3, 0, vec![0; 4]));
    // An oversized option payload: ERR_TOO_BIG, negotiation goes on.
    let mut n = RawClient::connect(&s.socket);
    n.send_option(7, &vec![0u8; 100_000]);
    assert_eq!(n.option_reply().1, (1 << 31) + 9);
    assert_eq!(n.go().last().unwrap().1, 1);
}

/// An export whose disk is full: every write fails with ENOSPC.
struct FullDisk;

impl Export for FullDisk {
    fn size(&self) -> u64 {
        MIB
    }
    fn read_only(&self) -> bool {
        false
    }
    async fn read(&self, _offset: u64, len: u32) -> Result<Vec<u8>, ExportError> {
        Ok(vec![0; len as usize])
    }
    async fn write(
        &self,
        _offset: u64,
        _data: impl AsRef<[u8]> + Send + 'static,
        _fua: bool,
    ) -> Result<(), ExportError> {
        Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into())
    }
    async fn flush(&self) -> Result<(), ExportError> {
        Ok(())
    }
    async fn trim(&self, _offset: u64, _len: u32) -> Result<(), ExportError> {
        Ok(())
    }
    async fn write_zeroes(&self, _o: u64, _l: u32, _t: bool, _f: bool) -> Result<(), ExportError> {
        Err(ExportError::NoSpace)
    }
    async fn block_status(&self, _offset: u64, len: u32) -> Result<Vec<Extent>, ExportError> {
        Ok(vec![Extent {
            length: len,
            hole: false,
            zero: false,
        }])
    }
}

#[test]
fn full_disk_surfaces_as_enospc() {
    let s = serve_export(tempfile::tempdir().unwrap(), FullDisk);
    let mut c = RawClient::go_structured(&s.socket);
    assert_eq!(c.request(1, 1, 0, &[1; 512], 0).1, 28);
    let out = run("qemu-io", &["-f", "raw", &s.uri(), "-c", "write -P 1 0 4k"]);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("No space left on device"), "{text}");
}

#[test]
fn cli_serves_until_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("v.raw");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(2 * MIB)
        .unwrap();
    let socket = dir.path().join("cli.sock");
    let mut child = Command::new(BIN)
        .args(["nbd", "serve", "--name", "vol", "--file"])
        .arg(&file)
        .arg("--socket")
        .arg(&socket)
        .spawn()
        .unwrap();
    wait_until("the NBD socket", Duration::from_secs(5), || {
        UnixStream::connect(&socket).is_ok()
    });
    let uri = format!("nbd+unix:///vol?socket={}", socket.display());
    qemu_io(&uri, &["write -P 0x42 0 64k", "read -P 0x42 0 64k"]);
    let list = ok("nbdinfo", &["--list", &uri]);
    assert!(list.contains("export=\"vol\""), "{list}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(!socket.exists(), "socket removed on exit");
    assert_eq!(std::fs::read(&file).unwrap()[..65536], [0x42; 65536]);

    // A missing file is a clear error, not a panic.
    let out = Command::new(BIN)
        .args(["nbd", "serve", "--file", "/nonexistent/volume", "--socket"])
        .arg(dir.path().join("x.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open /nonexistent/volume"));
}

#[test]
fn connections_beyond_the_limit_are_closed_and_slots_come_back() {
    let s = serve(MIB, false);
    let open: Vec<RawClient> = (0..64).map(|_| RawClient::connect(&s.socket)).collect();
    let mut refused = UnixStream::connect(&s.socket).unwrap();
    refused
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut b = [0u8; 18];
    assert_eq!(
        refused.read(&mut b).unwrap(),
        0,
        "no greeting past the limit"
    );
    drop(open);
    // The slots free up as the closed connections end.
    for _ in 0..100 {
        let mut c = UnixStream::connect(&s.socket).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if c.read(&mut b).unwrap() > 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no connection accepted after the others closed");
}
