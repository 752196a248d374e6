//! `tandem mirror plan` end to end on loopback: one daemon holding a copy of a mirror
//! whose write-rate history file is written by the test before the daemon starts. The
//! plan comes back through the real API (JSON, bad queries, an unknown mirror) and the
//! CLI (text and `--json`); the history survives a graceful restart, and a corrupt
//! history file is reported and replaced without stopping the daemon. And the sampler
//! of a running daemon: bytes written through the mirror's NBD export appear as a
//! minute of the plan within two minute boundaries.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem::mirror::nbd::client::NbdClient;
use tandem::mirror::plan::{self, MinuteWrites, Plan, Target, WriteHistory};
use tandem::mirror::rate_log::FILE;

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{
    free_tcp_port, free_udp_port, loopback_base, loopback_mirror_pair, loopback_nodes, wait_for,
    Daemon,
};

/// Minute 0 of 2025-12-31 UTC.
const DAY0: u32 = 29_452_320;

/// Three days: 1 MB a minute, and 300 MB a minute from 09:00 to 10:00 UTC.
fn synthetic_history() -> WriteHistory {
    WriteHistory::from_minutes(
        (0..3 * 1440)
            .map(|i| MinuteWrites {
                minute: DAY0 + i,
                bytes: if (540..600).contains(&(i % 1440)) {
                    300_000_000
                } else {
                    1_000_000
                },
            })
            .collect(),
    )
}

fn history_path(dir: &Path) -> PathBuf {
    dir.join("state").join("mirror").join("vol").join(FILE)
}

/// Node `a` holding a copy of mirror `vol` (its peer `b` never comes up); `history`
/// bytes, if any, are put where the mirror keeps its write-rate history.
fn start(history: Option<Vec<u8>>) -> Daemon {
    Daemon::start("a", |dir| {
        if let Some(bytes) = history {
            let path = history_path(dir);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        format!(
            r#"
{base}
{nodes}
[[mirror]]
name = "vol"
backing = "{backing}"
size = "4MiB"
nbd_socket = "{nbd}"
addresses = {{ a = "127.0.0.1:{ma}", b = "127.0.0.2:{mb}" }}
[[mirror.link]]
between = ["a", "b"]
mode = "async"
"#,
            base = loopback_base(dir, "plantest", free_udp_port()),
            nodes = loopback_nodes(&["a", "b"]),
            backing = dir.join("vol.img").display(),
            nbd = dir.join("vol.nbd").display(),
            ma = free_tcp_port(),
            mb = free_tcp_port(),
        )
    })
}

/// `GET path` over the daemon's socket: (status code, JSON body).
fn get(d: &Daemon, path: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}", "--unix-socket"])
        .arg(d.sock())
        .arg(format!("http://localhost{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (code.trim().parse().unwrap_or(0), json)
}

/// The plan of the synthetic history as JSON, through text as the API sends it (so a
/// float parses back to the same last digit as the answer's).
fn expected(target: &Target) -> Value {
    let text = serde_json::to_string(&plan::plan("vol", &synthetic_history(), target)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_plan_comes_through_the_api_and_the_cli() {
    let d = start(Some(plan::encode(&synthetic_history())));
    let (code, body) = get(&d, "/v1/mirrors/vol/plan?lag=30s&percentile=95");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body, expected(&Target::default()));
    assert_eq!(body["outcome"]["status"], "sized");
    assert_eq!(body["coverage"]["observed_minutes"], 3 * 1440);
    assert_eq!(body["coverage"]["gap_minutes"], 0);
    let sized = &body["outcome"];
    assert_eq!(sized["rates"]["peak_bytes_per_second"], 5_000_000.0);
    assert_eq!(sized["hourly"][9]["mean_bytes_per_second"], 5_000_000.0);
    assert_eq!(sized["recommended"]["meets_target"], true);
    assert_eq!(sized["standard_links"].as_array().unwrap().len(), 3);

    let strict = Target::new(Duration::from_secs(120), 99.0, 0.8, Some(1.5)).unwrap();
    let (code, body) = get(
        &d,
        "/v1/mirrors/vol/plan?lag=2m&percentile=99&efficiency=0.8&compression=1.5",
    );
    assert_eq!((code, body), (200, expected(&strict)));

    // The CLI prints the same plan as text, and as JSON with --json.
    let (code, out, err) = d.cli(&["mirror", "plan", "vol", "--lag", "30s"]);
    assert_eq!(code, 0, "{err}");
    let sized: Plan = serde_json::from_value(expected(&Target::default())).unwrap();
    let plan::Outcome::Sized(s) = &sized.outcome else {
        panic!("{sized:?}")
    };
    let mbits = s.recommended.bandwidth_bits_per_second / 1e6;
    let sentence = format!("A link of {mbits:.1} Mbit/s keeps the lag under 30 s in 95% of minutes; the worst lag at that rate is ");
    assert!(out.contains(&sentence), "{out}");
    for part in [
        "4320 minutes of write history observed",
        "peak      5.0 MB/s    40.0 Mbit/s  at 2025-12-31 09:00 UTC",
        "daily volume",
        "Mean write rate by hour of day (UTC):",
        "busiest hour 09:00-10:00 at 5.0 MB/s on average",
        "no compression applied",
        "lag at p95     worst lag  under 30 s",
        "10.0 Mbit/s",
        "100.0 Mbit/s           0 s           0 s  yes",
        "1.0 Gbit/s",
    ] {
        assert!(out.contains(part), "missing {part:?} in:\n{out}");
    }
    let (code, out, err) = d.cli(&["mirror", "plan", "vol", "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        expected(&Target::default())
    );
}

#[test]
fn bad_queries_and_unknown_mirrors_are_refused() {
    let d = start(None);
    for (query, says) in [
        ("lag=soon", "lag"),
        ("lag=0s", "lag must be over 0 s"),
        (
            "percentile=150",
            "percentile must be over 0 and at most 100",
        ),
        ("efficiency=2", "efficiency must be over 0 and at most 1"),
        ("compression=0.5", "compression ratio must be at least 1"),
        ("percentile=high", "percentile"),
        ("speed=1", "speed"),
    ] {
        let (code, body) = get(&d, &format!("/v1/mirrors/vol/plan?{query}"));
        assert_eq!(code, 400, "{query}: {body}");
        let msg = body["error"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{query}: {msg}");
    }
    let (code, body) = get(&d, "/v1/mirrors/nope/plan");
    assert_eq!(code, 404, "{body}");
    let (code, _, err) = d.cli(&["mirror", "plan", "nope"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("no mirror `nope`"), "{err}");
    let (code, _, err) = d.cli(&["mirror", "plan", "vol", "--percentile", "0"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("percentile"), "{err}");
}

#[test]
fn too_little_history_is_said_so() {
    let d = start(None);
    let (code, body) = get(&d, "/v1/mirrors/vol/plan");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["outcome"]["status"], "not_enough_history");
    assert_eq!(
        body["outcome"]["needed_minutes"],
        plan::MIN_OBSERVED_MINUTES
    );
    let (code, out, err) = d.cli(&["mirror", "plan", "vol"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("Not enough history to size a link"), "{out}");
}

#[test]
fn the_history_survives_a_restart() {
    let mut d = start(Some(plan::encode(&synthetic_history())));
    let before = get(&d, "/v1/mirrors/vol/plan").1;
    let path = history_path(d.dir.path());
    let inode = std::fs::metadata(&path).unwrap().ino();
    assert!(d.terminate().success());
    // The daemon wrote the history back at its stop (a new file renamed over the old).
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), inode);
    let saved = plan::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(saved, synthetic_history());
    d.spawn();
    assert_eq!(get(&d, "/v1/mirrors/vol/plan").1, before);
}

#[test]
fn a_corrupt_history_is_replaced_not_fatal() {
    let mut d = start(Some(b"TDWR garbage".to_vec()));
    let (code, body) = get(&d, "/v1/mirrors/vol/plan");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["coverage"]["observed_minutes"], 0);
    let path = history_path(d.dir.path());
    assert!(path.with_file_name("write-rate.bin.corrupt").exists());
    assert!(d.terminate().success());
    let saved = plan::decode(&std::fs::read(&path).unwrap()).unwrap();
    assert!(saved.is_empty());
}

/// Unix time, ms.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Nodes `a` and `b` holding mirror `vol` (async), and group `store` serving it from
/// `a` (the preferred node) on `<a's dir>/vol.nbd`; `a`'s write-rate history starts as
/// `history`.
fn serving_pair(history: Vec<u8>) -> (Daemon, Daemon) {
    let port = free_udp_port();
    let (ma, mb) = (free_tcp_port(), free_tcp_port());
    let config = move |dir: &Path| {
        let nbd = format!("nbd_socket = \"{}\"", dir.join("vol.nbd").display());
        loopback_mirror_pair(dir, "plantest", port, (ma, mb), "async", &nbd, "")
    };
    let a = Daemon::start("a", |dir| {
        let path = history_path(dir);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, history).unwrap();
        config(dir)
    });
    let b = Daemon::start("b", config);
    (a, b)
}

/// Writes `bytes` (a multiple of 1 MiB) from offset 0 and flushes.
fn write_mib(rt: &tokio::runtime::Runtime, client: &mut NbdClient, bytes: u64, seed: u8) {
    let chunk: Vec<u8> = (0..1 << 20).map(|i| (i as u8) ^ seed).collect();
    rt.block_on(async {
        for i in 0..bytes >> 20 {
            client.write(i << 20, &chunk, false).await.unwrap();
        }
        client.flush().await.unwrap();
    });
}

/// The sampler of a running daemon: bytes written to the mirror through its NBD export
/// show up as a minute of the plan once the minute's closing sample ran (at most two
/// minute boundaries later). The history is seeded with an hour of small minutes well
/// in the past, so the plan is sized and its peak is the minute written here.
#[test]
fn a_running_daemon_records_the_minute_written_through_nbd() {
    const WRITTEN: u64 = 4 << 20;
    let minute_now = (now_ms() / plan::MINUTE_MS) as u32;
    let seeded = WriteHistory::from_minutes(
        (minute_now - 180..minute_now - 120)
            .map(|minute| MinuteWrites {
                minute,
                bytes: 1000,
            })
            .collect(),
    );
    let (a, _b) = serving_pair(plan::encode(&seeded));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = a.dir.path().join("vol.nbd");
    let (mut client, _) = wait_for("a serving vol over NBD", Duration::from_secs(30), || {
        rt.block_on(NbdClient::connect(&socket)).ok()
    });
    let started = now_ms();
    // This minute's writes count if the sampler's first sample (its baseline) came
    // before them; those written after the next boundary's sample count for sure.
    write_mib(&rt, &mut client, WRITTEN, 1);
    let second = (started / plan::MINUTE_MS + 1) * plan::MINUTE_MS + 2_500;
    std::thread::sleep(Duration::from_millis(second.saturating_sub(now_ms())));
    write_mib(&rt, &mut client, WRITTEN, 2);
    let written_minute = second / plan::MINUTE_MS;
    // The minute closes at the next boundary's sample (1 s after it).
    let deadline = (written_minute + 1) * plan::MINUTE_MS + 15_000;
    let peak = loop {
        let (code, body) = get(&a, "/v1/mirrors/vol/plan");
        assert_eq!(code, 200, "{body}");
        let rates = &body["outcome"]["rates"];
        if body["coverage"]["observed_minutes"].as_u64() > Some(60) {
            break rates.clone();
        }
        assert!(now_ms() < deadline, "no minute recorded in time: {body}");
        std::thread::sleep(Duration::from_secs(1));
    };
    let bytes = peak["peak_bytes_per_second"].as_f64().unwrap() * 60.0;
    assert!(bytes >= WRITTEN as f64 - 1.0, "{peak}");
    assert!(bytes <= 2.0 * WRITTEN as f64 + 1.0, "{peak}");
    // A minute is recorded under its start: the first writes fall in the minute before
    // `started`'s if they came before that minute's sample.
    let at = peak["peak_minute_ms"].as_u64().unwrap();
    let first = (started / plan::MINUTE_MS).saturating_sub(1) * plan::MINUTE_MS;
    assert!(
        (first..=second).contains(&at),
        "peak minute {at}, written from {started} to {second}"
    );
    rt.block_on(client.disconnect()).unwrap();
}
