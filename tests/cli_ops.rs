//! Day-two operations through the CLI on daemons on loopback (no namespaces, no root):
//! `tandem group clear` lifts a block and a failure count at once, with its event in
//! the stream; `tandem events --follow --json` prints events as they happen;
//! `tandem mirror resync --wait` returns only once the resync finished (7 on its
//! timeout, 1 when the peer goes away during it), `verify --wait` once the verify did
//! and `connect --wait` once the link is up, on two daemons holding a mirror;
//! `node standby --if-online-mark` marks only a node that was online.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{
    free_tcp_port, free_udp_port, loopback_base, loopback_mirror_pair, loopback_nodes, wait_until,
    Daemon, BIN,
};

/// `tandem events --follow --json` against `d`: the child and its lines as they come.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(d: &Daemon) -> Follower {
        let mut child = Command::new(BIN)
            .args(["events", "--follow", "--json", "--socket"])
            .arg(d.sock())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Follower { child, lines }
    }

    /// The first event of `kind` printed within `timeout`, each line a JSON object.
    fn wait_for(&self, kind: &str, timeout: Duration) -> Value {
        let end = std::time::Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no `{kind}` event within {timeout:?}"));
            let e: Value = serde_json::from_str(&line)
                .unwrap_or_else(|err| panic!("not one JSON object per line: {line:?}: {err}"));
            if e["kind"] == kind {
                return e;
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node whose group `svc` is healthy while `<dir>/healthy` exists; a single
/// failed check blocks it (no restarts allowed) for ten minutes.
fn fragile_node() -> Daemon {
    Daemon::start("a", |dir| {
        let healthy = dir.join("healthy");
        std::fs::write(&healthy, "").unwrap();
        format!(
            r#"
{base}
{nodes}
[[group]]
name = "svc"
max_restarts = 0
restart_window = "10m"

[[group.resource]]
name = "check"
kind = "exec"
start = ["true"]
stop = ["true"]
timeout = "5s"
quickcheck = {{ probe = "exec", command = ["test", "-f", "{healthy}"], interval = "200ms", timeout = "2s" }}
"#,
            base = loopback_base(dir, "cleartest", free_udp_port()),
            nodes = loopback_nodes(&["a"]),
            healthy = healthy.display(),
        )
    })
}

fn group(d: &Daemon) -> Value {
    d.status()["groups"][0].clone()
}

#[test]
fn group_clear_lifts_the_block_and_the_failure_count_with_an_event() {
    let d = fragile_node();
    wait_until("svc running", Duration::from_secs(20), || {
        group(&d)["local_state"] == "running"
    });
    // The check fails once: no restart allowed, so the node is blocked and stops it.
    std::fs::remove_file(d.dir.path().join("healthy")).unwrap();
    wait_until("svc blocked and stopped", Duration::from_secs(20), || {
        let g = group(&d);
        g["blocked"] == true && g["local_state"] == "stopped"
    });
    assert_eq!(group(&d)["recent_failures"], 1);
    std::fs::write(d.dir.path().join("healthy"), "").unwrap();

    let follower = Follower::start(&d);
    std::thread::sleep(Duration::from_millis(500));
    // A clear for a node that does not exist, or another node, is refused with a reason.
    let (code, _, err) = d.cli(&["group", "clear", "svc", "--node", "nosuch"]);
    assert_eq!(code, 5, "{err}");
    let (code, out, err) = d.cli(&["group", "clear", "svc", "--json"]);
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(answer["group"], "svc");
    let g = group(&d);
    assert_eq!(g["blocked"], false, "{g}");
    assert_eq!(g["recent_failures"], 0, "{g}");
    let e = follower.wait_for("group_cleared", Duration::from_secs(10));
    assert_eq!(e["fields"]["group"], "svc");
    assert_eq!(e["fields"]["failures"], "1");
    assert_eq!(e["fields"]["was_blocked"], "true");
    // Without --follow: the events after --since, one dated line each.
    let (code, out, err) = d.cli(&["events", "--since", "0"]);
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.contains("group_cleared"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.contains("group=svc") && line.contains('T'), "{line}");
    // Well inside the ten-minute window, the node runs the group again.
    wait_until("svc running again", Duration::from_secs(20), || {
        group(&d)["local_state"] == "running"
    });
}

/// Mirror `vol`'s size.
const SIZE: usize = 16 << 20;

/// Nodes `a` (127.0.0.1) and `b` (127.0.0.2) holding mirror `vol` (sync, resyncs capped
/// at 4 MiB/s), and a group `store` serving it from `a`, the preferred node. `a`'s copy
/// starts full of data, so a full resync takes seconds.
fn mirror_pair() -> (Daemon, Daemon) {
    let port = free_udp_port();
    let (ma, mb) = (free_tcp_port(), free_tcp_port());
    let config = move |dir: &std::path::Path| {
        loopback_mirror_pair(
            dir,
            "opstest",
            port,
            (ma, mb),
            "sync",
            "",
            "rate_limit = \"4MiB\"",
        )
    };
    let a = Daemon::start("a", |dir| {
        let data: Vec<u8> = (0..SIZE).map(|i| (i * 7 + i / 4096) as u8 | 1).collect();
        std::fs::write(dir.join("vol.img"), data).unwrap();
        config(dir)
    });
    let b = Daemon::start("b", config);
    (a, b)
}

/// The link from `d`'s copy of `vol` to its peer.
fn link(d: &Daemon) -> Value {
    let (code, out, err) = d.cli(&["mirror", "status", "vol", "--json"]);
    assert_eq!(code, 0, "{err}");
    let all: Value = serde_json::from_str(&out).unwrap();
    all[0]["peers"][0].clone()
}

fn in_sync(l: &Value) -> bool {
    l["connection"] == "connected" && l["out_of_sync_bytes"] == 0 && l["resync"].is_null()
}

#[test]
fn mirror_resync_and_connect_wait_until_done_and_events_follow() {
    let (a, mut b) = mirror_pair();
    wait_until("a primary, in sync with b", Duration::from_secs(60), || {
        let st = a.status();
        st["groups"][0]["local_state"] == "running" && in_sync(&link(&a))
    });
    let follower = Follower::start(&a);
    let completed = link(&a)["resyncs_completed"].as_u64().unwrap();
    let last_seq = a.status()["last_seq"].as_u64().unwrap();

    let started = std::time::Instant::now();
    let (code, out, err) = a.cli(&[
        "mirror",
        "resync",
        "vol",
        "--full",
        "--wait",
        "--timeout",
        "60",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("done"), "{out}");
    // 16 MiB at 4 MiB/s: it waited, and said how far it was (plain lines, no terminal).
    assert!(started.elapsed() >= Duration::from_secs(2), "{err}");
    assert!(
        err.contains("mirror `vol`: resync") && err.contains('%'),
        "{err}"
    );
    // Right after it returns, the resync is over and nothing is out of sync.
    let l = link(&a);
    assert!(in_sync(&l), "{l}");
    assert!(l["resyncs_completed"].as_u64().unwrap() > completed, "{l}");
    // The follower printed the resync, which happened after it started.
    let e = follower.wait_for("resync_completed", Duration::from_secs(10));
    assert!(e["seq"].as_u64().unwrap() > last_seq, "{e}");
    assert_eq!(e["fields"]["mirror"], "vol");

    // Connect --wait after a disconnect: returns once the link is up again (--json).
    let (code, _, err) = a.cli(&["mirror", "disconnect", "vol"]);
    assert_eq!(code, 0, "{err}");
    wait_until("disconnected", Duration::from_secs(10), || {
        link(&a)["connection"] == "disconnected"
    });
    let (code, out, err) = a.cli(&["mirror", "connect", "vol", "--wait", "--json"]);
    assert_eq!(code, 0, "{err}");
    let answer: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert!(
        answer["done"].as_str().unwrap().contains("connected"),
        "{answer}"
    );
    assert_eq!(link(&a)["connection"], "connected");

    let (code, out, err) = a.cli(&["mirror", "verify", "vol", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("verified, 0 bytes out of sync"), "{out}");

    // A resync that takes longer than --timeout: exit 7, and it goes on by itself.
    wait_until("in sync again", Duration::from_secs(30), || {
        in_sync(&link(&a))
    });
    let (code, _, err) = a.cli(&[
        "mirror",
        "resync",
        "vol",
        "--full",
        "--wait",
        "--timeout",
        "1",
    ]);
    assert_eq!(code, 7, "{err}");
    assert!(err.contains("not done after 1 s"), "{err}");
    wait_until("in sync again", Duration::from_secs(30), || {
        in_sync(&link(&a))
    });

    // The peer goes away during the resync: exit 1 with the reason.
    let sock = a.sock();
    let waiting = std::thread::spawn(move || {
        Command::new(BIN)
            .args(["mirror", "resync", "vol", "--full", "--wait", "--socket"])
            .arg(sock)
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(1500));
    b.kill();
    let out = waiting.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("resync failed: the link to `b` is"), "{err}");
}

/// The appliance's shutdown marks a node for return only if the reboot takes it out
/// of service: `node standby --if-online-mark FILE` creates FILE and puts an online
/// node in standby, and leaves a node already in standby (an administrator's) alone.
#[test]
fn standby_if_online_mark_marks_only_a_node_that_was_online() {
    let d = fragile_node();
    let mark = d.dir.path().join("standby-for-reboot");
    let m = mark.to_str().unwrap();
    let standby = |d: &Daemon| d.status()["nodes"][0]["standby"].clone();
    wait_until("a online", Duration::from_secs(20), || standby(&d) == false);
    let (code, out, err) = d.cli(&["node", "standby", "a", "--if-online-mark", m]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(mark.exists(), "an online node was not marked: {out}");
    wait_until("a in standby", Duration::from_secs(20), || {
        standby(&d) == true
    });
    std::fs::remove_file(&mark).unwrap();
    let (code, out, err) = d.cli(&["node", "standby", "a", "--if-online-mark", m]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("already in standby"), "{out}");
    assert!(!mark.exists(), "a node already in standby was marked");
    let (code, _, err) = d.cli(&["node", "standby", "zz", "--if-online-mark", m]);
    assert_eq!(code, 5, "an unknown node: {err}");
}
