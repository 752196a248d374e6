//! End-to-end tests of one daemon on loopback (no namespaces, no root needed): the
//! control API over the Unix socket and over TCP with a token, long-polled and streamed
//! events, maintenance, refusals with reasons and exit codes, graceful shutdown, and the
//! event sequence across a restart.

use std::io::{BufRead, BufReader};
use std::ops::Deref;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{free_tcp_addr, free_udp_port, wait_until, Daemon, BIN};

const TOKEN: &str = "test-token-0123456789";

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Node `a` alone, with the API on TCP too, and a group of an exec resource and a
/// supervised process.
struct ApiDaemon {
    daemon: Daemon,
    /// Names the supervised process so the test can find it (unique per daemon).
    marker: String,
    tcp: String,
    metrics: String,
}

impl Deref for ApiDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl Drop for ApiDaemon {
    fn drop(&mut self) {
        self.daemon.kill();
        // The supervised process is in its own process group: make sure it is gone.
        let _ = Command::new("pkill").args(["-f", &self.marker]).status();
    }
}

impl ApiDaemon {
    fn start() -> ApiDaemon {
        let name = format!(
            "tandem-api-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        let tcp = free_tcp_addr().to_string();
        let metrics = free_tcp_addr().to_string();
        let daemon = Daemon::start("a", |dir| {
            let marker = dir.join("exec-started");
            format!(
                r#"
[cluster]
name = "apitest"
key = "0123456789abcdef0123"
state_dir = "{state}"

[heartbeat]
interval = "100ms"
dead_time = "500ms"
port = {port}
paths = ["lo"]

[api]
socket = "{sock}"
tcp = "{tcp}"
token = "{TOKEN}"

[metrics]
listen = "{metrics}"

[[node]]
name = "a"
priority = 1
addresses = {{ lo = "127.0.0.1" }}

[[group]]
name = "svc"

[[group.resource]]
name = "setup"
kind = "exec"
start = ["sh", "-c", "echo $TANDEM_GROUP > {marker}"]
stop = ["rm", "-f", "{marker}"]
timeout = "5s"

[[group.resource]]
name = "worker"
kind = "process"
command = ["bash", "-c", "exec -a {name} sleep 600"]
depends_on = ["setup"]
quickcheck = {{ probe = "exec", command = ["test", "-f", "{marker}"], interval = "500ms", timeout = "2s" }}
"#,
                state = dir.join("state").display(),
                port = free_udp_port(),
                sock = dir.join("api.sock").display(),
                marker = marker.display(),
            )
        });
        let d = ApiDaemon {
            daemon,
            marker: name,
            tcp,
            metrics,
        };
        d.assert_first_answer_is_real();
        d
    }

    /// The first answer is already a real snapshot (the API never serves the empty
    /// default before the daemon's first publish).
    fn assert_first_answer_is_real(&self) {
        let st = self.status();
        assert_eq!(st["node"], "a", "{st}");
        assert!(st["last_seq"].as_u64().unwrap_or(0) > 0, "{st}");
    }

    fn curl(&self, args: &[&str]) -> (String, u16) {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(self.sock())
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (body.to_string(), code.trim().parse().unwrap_or(0))
    }

    fn group_state(&self) -> String {
        self.status()["groups"][0]["local_state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn curl_available() -> bool {
    Command::new("curl").arg("--version").output().is_ok()
}

#[test]
fn single_node_daemon_serves_the_api_end_to_end() {
    if !curl_available() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let d = ApiDaemon::start();
    wait_until("group running", Duration::from_secs(20), || {
        d.group_state() == "running"
    });
    let st = d.status();
    assert_eq!(st["groups"][0]["owner"], "a");
    assert_eq!(st["nodes"][0]["name"], "a");
    assert!(d.dir.path().join("exec-started").exists(), "exec start ran");

    // The start order and the hierarchy: setup before worker, in the timeline.
    let (code, out, _) = d.cli(&["history", "--json"]);
    assert_eq!(code, 0);
    let h: Value = serde_json::from_str(&out).unwrap();
    let steps: Vec<&str> = h["timelines"][0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["resource"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["setup", "worker"]);

    // Long-poll: a request waiting for the next event returns when maintenance is set.
    let last = d.status()["last_seq"].as_u64().unwrap();
    let sock = d.sock();
    let poll = std::thread::spawn(move || {
        let out = Command::new("curl")
            .args(["-s", "-m", "20", "--unix-socket"])
            .arg(&sock)
            .arg(format!("http://x/v1/events?since={last}&wait_ms=15000"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    });
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, err) = d.cli(&["group", "maintenance", "svc", "on"]);
    assert_eq!(code, 0, "{err}");
    let body = poll.join().unwrap();
    let events: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(events[0]["kind"], "group_maintenance_on", "{body}");
    assert!(events[0]["seq"].as_u64().unwrap() > last);
    assert_eq!(d.status()["groups"][0]["maintenance"], true);
    let (code, _, _) = d.cli(&["group", "maintenance", "svc", "off"]);
    assert_eq!(code, 0);

    // The stream: backlog first, as NDJSON.
    let mut stream = Command::new("curl")
        .args(["-s", "-N", "-m", "10", "--unix-socket"])
        .arg(d.sock())
        .arg("http://x/v1/events/stream?since=0")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(stream.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(first["kind"], "daemon_started");
    let _ = stream.kill();
    let _ = stream.wait();

    // Each control error has its own HTTP status and exit code, with the reason:
    // refused 409 / exit 4, not found 404 / exit 5; bad input is a clear 4xx.
    let (code, _, err) = d.cli(&["switchover", "svc"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("no other node"), "{err}");
    let (code, _, err) = d.cli(&["switchover", "nosuch"]);
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("no group named `nosuch`"), "{err}");
    let (body, code) = d.curl(&["-X", "POST", "http://x/v1/groups/nosuch/switchover"]);
    assert_eq!(code, 404, "{body}");
    assert!(body.contains(r#""code":"not_found""#), "{body}");
    let (body, code) = d.curl(&["-X", "POST", "http://x/v1/groups/svc/switchover"]);
    assert_eq!(code, 409, "{body}");
    let (code, _, err) = d.cli(&["mirror", "pause", "nosuch"]);
    assert_eq!(code, 5, "{err}");
    let (code, _, err) = d.cli(&["mirror", "resolve", "nosuch", "--keep", "n1"]);
    assert_eq!(code, 5, "{err}");
    let (code, _, err) = d.cli(&["mirror", "split-brain-dump", "nosuch"]);
    assert_eq!(code, 5, "{err}");
    let (code, _, err) = d.cli(&["mirror", "split-brain-dump", "nosuch", "-o", "/dev/null"]);
    assert_eq!(code, 5, "{err}");
    let (body, code) = d.curl(&["http://x/v1/events?since=abc"]);
    assert_eq!(code, 400, "{body}");
    let (_, code) = d.curl(&[
        "-X",
        "POST",
        "-H",
        "content-type: application/json",
        "-d",
        "{\"on\": 1}",
        "http://x/v1/groups/svc/maintenance",
    ]);
    assert!((400..500).contains(&code), "{code}");

    // TCP needs the token.
    let url = format!("http://{}/v1/status", d.tcp);
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "401");
    let out = Command::new(BIN)
        .args(["status", "--json", "--api", &d.tcp, "--token", TOKEN])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// (name, scheduling policy) of each thread of process `pid` (`/proc/PID/task/*/stat`
/// field 41: 0 normal, 1 SCHED_FIFO).
fn thread_policies(pid: u32) -> Vec<(String, u32)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
        let (open, close) = (stat.find('(').unwrap(), stat.rfind(')').unwrap());
        let name = stat[open + 1..close].to_string();
        // Field 3 is the first after the name; the policy is field 41.
        let policy = stat[close + 2..]
            .split(' ')
            .nth(38)
            .unwrap()
            .parse()
            .unwrap();
        v.push((name, policy));
    }
    v
}

#[test]
fn the_event_loop_thread_runs_sched_fifo_with_the_memory_locked() {
    let d = ApiDaemon::start();
    let threads = thread_policies(d.pid());
    let core: Vec<_> = threads.iter().filter(|t| t.0 == "tandem-core").collect();
    assert_eq!(core.len(), 1, "one event loop thread: {threads:?}");
    assert_eq!(core[0].1, 1, "SCHED_FIFO: {threads:?}");
    // Only that thread: the API, the executors and the log writer run normally.
    assert!(
        threads.iter().any(|t| t.0 != "tandem-core" && t.1 == 0),
        "{threads:?}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let locked: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(locked > 0, "memory is locked: {status}");
}

#[test]
fn crash_of_the_process_is_restarted_and_graceful_stop_cleans_up() {
    let mut d = ApiDaemon::start();
    wait_until("group running", Duration::from_secs(20), || {
        d.group_state() == "running"
    });
    let marker = d.marker.clone();
    // The supervised process crashes: a local restart, not a failure.
    assert!(Command::new("pkill")
        .args(["-f", &marker])
        .status()
        .unwrap()
        .success());
    wait_until("resource_restarted", Duration::from_secs(15), || {
        let (_, out, _) = d.cli(&["history", "--events-since", "0"]);
        out.contains("resource_restarted")
    });
    assert_eq!(d.group_state(), "running");
    let seq_before = d.status()["last_seq"].as_u64().unwrap();

    // SIGTERM: stops the group (no peer to hand it to) and exits 0.
    let status = d.daemon.terminate();
    assert!(status.success(), "exit {status:?}");
    assert!(!d.dir.path().join("exec-started").exists(), "exec stop ran");
    let gone = !Command::new("pgrep")
        .args(["-f", &marker])
        .status()
        .unwrap()
        .success();
    assert!(gone, "supervised process left behind");

    // Restart: the event sequence continues above where it was.
    d.daemon.spawn();
    d.assert_first_answer_is_real();
    let seq_after = d.status()["last_seq"].as_u64().unwrap();
    assert!(seq_after > seq_before, "{seq_after} > {seq_before}");
    let log = std::fs::read_to_string(d.dir.path().join("state/events.jsonl")).unwrap();
    assert!(log.contains("daemon_stopping"));
}

#[test]
fn metrics_endpoint_passes_promtool_and_counts_the_checks() {
    if !curl_available() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let d = ApiDaemon::start();
    wait_until("group running", Duration::from_secs(20), || {
        d.group_state() == "running"
    });
    // The status carries the worker's last quickcheck: passed, when, how long.
    let (check, _) = daemon::wait_for(
        "the last quickcheck in the status",
        Duration::from_secs(20),
        || {
            let st = d.status();
            let r = st["resources"]
                .as_array()?
                .iter()
                .find(|r| r["name"] == "worker")?
                .clone();
            r["checks"].as_array()?.first().cloned()
        },
    );
    assert_eq!(check["kind"], "quickcheck", "{check}");
    assert!(check.get("error").is_none(), "{check}");
    assert!(check["at_ms"].as_u64().unwrap_or(0) > 0, "{check}");
    let url = format!("http://{}/metrics", d.metrics);
    // The quickcheck runs every 500 ms: wait until the histogram has seen one.
    let mut body = String::new();
    wait_until("a timed quickcheck", Duration::from_secs(20), || {
        let out = Command::new("curl")
            .args(["-sf", "-m", "5", &url])
            .output()
            .unwrap();
        body = String::from_utf8_lossy(&out.stdout).into_owned();
        body.lines().any(|l| {
            l.starts_with("tandem_check_duration_seconds_count{")
                && l.contains(r#"resource="worker""#)
                && !l.ends_with(" 0")
        })
    });
    let t0 = Instant::now();
    let out = Command::new("curl")
        .args(["-sf", "-m", "5", &url])
        .output()
        .unwrap();
    let took = t0.elapsed();
    assert!(out.status.success());
    eprintln!(
        "scrape: {} bytes in {:.1} ms (one node, one group)",
        out.stdout.len(),
        took.as_secs_f64() * 1000.0
    );
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/deps.sh)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &out.stdout).unwrap();
    let res = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&res.stdout),
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(
        res.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
    // The state the API reports is the state the endpoint exports.
    for want in [
        r#"tandem_group_owner{cluster="apitest",group="svc",node="a"} 1"#,
        r#"tandem_group_state{cluster="apitest",group="svc",state="running"} 1"#,
        r#"tandem_node_up{cluster="apitest",node="a"} 1"#,
        r#"tandem_cluster_quorate{cluster="apitest"} 1"#,
    ] {
        let (name, rest) = want.split_once('{').unwrap();
        let (labels, value) = rest.split_once("} ").unwrap();
        let mut labels: Vec<&str> = labels.split(',').collect();
        labels.sort();
        let found = body.lines().any(|l| {
            let Some((n, r)) = l.split_once('{') else {
                return false;
            };
            let Some((ls, v)) = r.split_once("} ") else {
                return false;
            };
            let mut ls: Vec<&str> = ls.split(',').collect();
            ls.sort();
            n == name && ls == labels && v == value
        });
        assert!(found, "missing `{want}` in\n{body}");
    }
}

/// A log that goes to a file (the lab's `tandem.log`, the appliance's log) carries no
/// ANSI colour codes: colour is for a terminal only.
#[test]
fn logs_written_to_a_file_carry_no_colour_codes() {
    let mut child = Command::new(BIN)
        .args(["demo-service", "--listen", "127.0.0.1:0"])
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(first.contains("listening"), "{first}");
    assert!(
        !first.contains('\x1b'),
        "colour codes in a piped log: {first:?}"
    );
}

/// `GET /openapi.json` documents every route, and the daemon serves each documented
/// one: a request with made-up names reaches its handler (a JSON answer, or a refusal
/// of the body), never the router's bare 404 or a 405.
#[test]
fn openapi_documents_every_route_and_the_daemon_serves_each_one() {
    if !curl_available() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let d = ApiDaemon::start();
    let (body, code) = d.curl(&["http://x/openapi.json"]);
    assert_eq!(code, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            if path != "/openapi.json" {
                assert!(
                    op["responses"]["4XX"]["description"]
                        .as_str()
                        .is_some_and(|d| d.starts_with("refused")),
                    "{method} {path}: no 4XX answer documented"
                );
            }
            let url = format!("http://x{}", path.replace('{', "nosuch-").replace('}', ""));
            // `PUT /v1/config` with "{}": not TOML, so refused and nothing written.
            let (answer, code) = d.curl(&["-X", &method.to_uppercase(), "-d", "{}", &url]);
            assert_ne!(code, 405, "{method} {path}");
            assert!(
                code != 404 || answer.contains("not_found"),
                "{method} {path}: the router does not serve it ({code} {answer:?})"
            );
        }
    }
    // Everything the routes! list registers: 21 handlers and this document.
    assert_eq!(operations, 22, "{:?}", paths.keys().collect::<Vec<_>>());
    assert!(
        d.status()["groups"][0]["owner"] == "a",
        "the probes changed nothing"
    );
}
