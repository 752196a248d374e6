//! `tandem image update URL` through the API, on a daemon on loopback whose `[image]`
//! points at a staged ESP: a small HTTP server in the test serves a signed and an
//! unsigned fake image (slowly, so the download can be watched). The signed one is
//! downloaded with progress, checked and written to the inactive slot, with its
//! events; a second update while one runs gets 409; the unsigned one is refused with
//! the command line's error and exit code.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/fake_image.rs"]
mod fake_image;
use daemon::{free_udp_port, loopback_base, loopback_nodes, Daemon, BIN};

/// Serves `files` (path → bytes) on 127.0.0.1, 64 KiB every 10 ms, one request per
/// connection; 404 for anything else. Its base URL.
fn serve(files: BTreeMap<String, Vec<u8>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let files = Arc::new(files);
    std::thread::spawn(move || {
        for conn in listener.incoming().map_while(Result::ok) {
            let files = files.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 2 {
                    line.clear();
                }
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut conn = conn;
                match files.get(&path) {
                    Some(body) => {
                        let head = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = conn.write_all(head.as_bytes());
                        for chunk in body.chunks(64 << 10) {
                            if conn.write_all(chunk).is_err() {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                    None => {
                        let _ = conn.write_all(
                            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                    }
                }
            });
        }
    });
    base
}

/// One request to the daemon's API socket: (HTTP status, JSON body).
fn api(sock: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut s = UnixStream::connect(sock).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let status = answer[9..12].parse().unwrap();
    let json = answer
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

fn tandem(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
}

/// The daemon's events of kinds starting with `image_update`.
fn image_events(d: &Daemon) -> Vec<Value> {
    let (code, out, err) = d.cli(&["events", "--json"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"].as_str().unwrap_or("").starts_with("image_update"))
        .collect()
}

#[test]
fn an_update_through_the_api_is_watched_checked_and_written_once_at_a_time() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("release.key");
    tandem(&["image", "keygen", "-o", key.to_str().unwrap()]);
    let img = keys.path().join("tandem.img");
    let kernel: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    fake_image::fake_image(&img, &kernel, b"the new initrd");
    tandem(&[
        "image",
        "sign",
        "--key",
        key.to_str().unwrap(),
        img.to_str().unwrap(),
    ]);
    let image = std::fs::read(&img).unwrap();
    let sig = std::fs::read(keys.path().join("tandem.img.sig")).unwrap();
    let base = serve(BTreeMap::from([
        ("/rel/tandem.img".to_string(), image.clone()),
        ("/rel/tandem.img.sig".to_string(), sig),
        ("/rel/unsigned.img".to_string(), image.clone()),
    ]));

    let d = Daemon::start("a", |dir| {
        let esp = dir.join("esp");
        std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
        std::fs::create_dir_all(esp.join("tandem/a")).unwrap();
        std::fs::write(
            esp.join("loader/entries/tandem-1-a.conf"),
            "title t\noptions console=ttyS0 tandem.slot=a\n",
        )
        .unwrap();
        format!(
            r#"
{base}
{nodes}
[image]
esp = "{esp}"
trusted_keys = "{trusted}"
slot = "a"
"#,
            base = loopback_base(dir, "imagetest", free_udp_port()),
            nodes = loopback_nodes(&["a"]),
            esp = esp.display(),
            trusted = keys.path().join("release.pub").display(),
        )
    });
    let esp = d.dir.path().join("esp");
    assert_eq!(
        api(&d.sock(), "GET", "/v1/image/update", None).1["state"],
        "idle"
    );

    // The command line asks the daemon and waits; meanwhile its progress is watched.
    let url = format!("{base}/rel/tandem.img");
    let cli = Command::new(BIN)
        .args(["image", "update", &url, "--json", "--socket"])
        .arg(d.sock())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    let mut refused = None;
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, p) = api(&d.sock(), "GET", "/v1/image/update", None);
        let state = p["state"].as_str().unwrap_or("").to_string();
        if state == "downloading" && refused.is_none() {
            refused = Some(api(
                &d.sock(),
                "POST",
                "/v1/image/update",
                Some(serde_json::json!({ "url": format!("{base}/rel/unsigned.img") })),
            ));
        }
        if seen.last() != Some(&(state.clone(), p["bytes"].clone())) {
            seen.push((state.clone(), p["bytes"].clone()));
        }
        if state == "done" || state == "failed" || Instant::now() > end {
            assert_eq!(p["total"], image.len(), "{p}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = cli.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout} {stderr}");
    let done: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["slot"], "b");
    assert_eq!(done["entry"], "tandem-2-b+3.conf");
    assert!(
        stderr.contains("image update: "),
        "progress shown: {stderr}"
    );

    // The download was seen partway, and a second update was refused meanwhile.
    let partway = seen.iter().any(|(s, b)| {
        s == "downloading" && b.as_u64().is_some_and(|b| b > 0 && b < image.len() as u64)
    });
    assert!(partway, "{seen:?}");
    let (status, body) = refused.expect("the download was seen");
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("already running"),
        "{body}"
    );

    // The inactive slot holds the image's kernel and boots next, on trial.
    assert_eq!(std::fs::read(esp.join("tandem/b/vmlinuz")).unwrap(), kernel);
    assert!(esp.join("loader/entries/tandem-2-b+3.conf").exists());
    let events = image_events(&d);
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["image_update_started", "image_update_finished"]);
    assert_eq!(events[1]["fields"]["slot"], "b");
    assert_eq!(events[1]["fields"]["url"], url.as_str());

    // An unsigned image is refused as on the command line (exit 4, "not signed").
    let unsigned = format!("{base}/rel/unsigned.img");
    let (code, _, err) = d.cli(&["image", "update", &unsigned]);
    assert_eq!(code, 4, "{err}");
    assert!(
        err.contains(&format!("{unsigned}: not signed")),
        "the command line's message: {err}"
    );
    let (_, p) = api(&d.sock(), "GET", "/v1/image/update", None);
    assert_eq!(p["state"], "failed");
    assert_eq!(p["failure"], "signature");
    let events = image_events(&d);
    assert_eq!(events.last().unwrap()["kind"], "image_update_failed");
    // Nothing was written over the slot on trial.
    assert!(esp.join("loader/entries/tandem-2-b+3.conf").exists());
}
