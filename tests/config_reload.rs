//! Changing the configuration of running daemons on loopback: `SIGHUP` and `tandem
//! config reload` apply a check's new interval at once and name a heartbeat address
//! change as needing a restart (not taken); a broken file is refused and the daemon
//! runs on; `tandem config push` writes the file on two daemons (mode 0600) with one
//! digest, and a node of another cluster refuses it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{
    free_tcp_port, free_udp_port, loopback_base, loopback_nodes, wait_until, Daemon, BIN,
};

const TOKEN: &str = "push-token-0123456789";

/// Node `a` alone; group `svc`'s check appends a line to `<dir>/checks` at each run,
/// every `interval`.
fn config_a(dir: &Path, port: u16, interval: &str, address: &str) -> String {
    format!(
        r#"{base}
[[node]]
name = "a"
priority = 1
addresses = {{ lo = "{address}" }}

[[group]]
name = "svc"

[[group.resource]]
name = "work"
kind = "exec"
start = ["true"]
stop = ["true"]
quickcheck = {{ probe = "exec", command = ["sh", "-c", "echo x >> {checks}"], interval = "{interval}", timeout = "2s" }}
"#,
        base = loopback_base(dir, "reloadtest", port),
        checks = dir.join("checks").display(),
    )
}

fn checks_run(d: &Daemon) -> usize {
    std::fs::read_to_string(d.dir.path().join("checks"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

fn hangup(d: &Daemon) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
}

fn write_config(d: &Daemon, text: &str) {
    std::fs::write(d.dir.path().join("tandem.toml"), text).unwrap();
}

/// The `config_reloaded` events so far.
fn reloads(d: &Daemon) -> Vec<Value> {
    let (code, out, err) = d.cli(&["events", "--since", "0", "--json"]);
    assert_eq!(code, 0, "{err}");
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["kind"] == "config_reloaded")
        .collect()
}

#[test]
fn sighup_applies_a_check_interval_and_names_an_address_change_without_taking_it() {
    let port = free_udp_port();
    let d = Daemon::start("a", |dir| config_a(dir, port, "30s", "127.0.0.1"));
    wait_until("svc running", Duration::from_secs(20), || {
        d.status()["groups"][0]["local_state"] == "running"
    });
    std::thread::sleep(Duration::from_millis(600));
    let before = checks_run(&d);
    assert!(before <= 2, "every 30 s: {before} runs already");

    let dir = d.dir.path().to_path_buf();
    write_config(&d, &config_a(&dir, port, "100ms", "127.0.0.3"));
    hangup(&d);
    wait_until("checks every 100 ms", Duration::from_secs(5), || {
        checks_run(&d) >= before + 10
    });
    wait_until("the config_reloaded event", Duration::from_secs(5), || {
        !reloads(&d).is_empty()
    });
    let e = &reloads(&d)[0];
    assert_eq!(
        e["fields"]["applied"], "group svc resource work quickcheck interval",
        "{e}"
    );
    assert_eq!(
        e["fields"]["needs_restart"], "node a address on path lo",
        "{e}"
    );

    // The address was not taken: the same file reloaded again still names it only.
    let (code, out, err) = d.cli(&["config", "reload", "--json"]);
    assert_eq!(code, 0, "{err}");
    let o: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(o["applied"], serde_json::json!([]), "{o}");
    assert_eq!(
        o["needs_restart"],
        serde_json::json!(["node a address on path lo"])
    );
    assert_eq!(o["digest"].as_str().unwrap().len(), 16, "{o}");
    let (_, text, _) = d.cli(&["config", "reload"]);
    assert!(
        text.contains("needs restart: node a address on path lo"),
        "{text}"
    );
}

#[test]
fn a_broken_file_is_refused_and_the_daemon_runs_on_with_the_old_one() {
    let port = free_udp_port();
    let d = Daemon::start("a", |dir| config_a(dir, port, "100ms", "127.0.0.1"));
    let dir = d.dir.path().to_path_buf();
    // dead_time under 3 x interval fails `config check`.
    let broken = config_a(&dir, port, "30s", "127.0.0.1")
        .replace("dead_time = \"500ms\"", "dead_time = \"150ms\"");
    write_config(&d, &broken);
    let (code, _, err) = d.cli(&["config", "reload"]);
    assert_eq!(code, 6, "refused as a conflict with the file: {err}");
    assert!(
        err.contains("configuration refused, nothing changed"),
        "{err}"
    );
    assert!(err.contains("heartbeat.dead_time"), "{err}");
    write_config(&d, "this is [not toml");
    hangup(&d);
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.try_status().is_some(), "the daemon runs on");
    assert!(reloads(&d).is_empty(), "nothing was reloaded");
    // The old checks (every 100 ms) still run.
    wait_until("svc running", Duration::from_secs(20), || {
        d.status()["groups"][0]["local_state"] == "running"
    });
    let before = checks_run(&d);
    wait_until("checks every 100 ms", Duration::from_secs(5), || {
        checks_run(&d) >= before + 5
    });
}

/// Nodes `a` (127.0.0.1) and `b` (127.0.0.2) with the TCP API on port `api` of their
/// own address; `b` is in cluster `b_cluster`.
fn pair(b_cluster: &str) -> (Daemon, Daemon, u16) {
    let (port, api) = (free_udp_port(), free_tcp_port());
    let cfg = |cluster: &str, me: &str| {
        let cluster = cluster.to_string();
        let me = me.to_string();
        move |dir: &Path| {
            format!(
                r#"{base}tcp = "{me}:{api}"
token = "{TOKEN}"

{nodes}"#,
                base = loopback_base(dir, &cluster, port),
                nodes = loopback_nodes(&["a", "b"]),
            )
        }
    };
    let a = Daemon::start("a", cfg("pushtest", "127.0.0.1"));
    let b = Daemon::start("b", cfg(b_cluster, "127.0.0.2"));
    (a, b, api)
}

/// `tandem config push FILE --json`: (exit code, answer, stderr).
fn push(file: &Path) -> (i32, Value, String) {
    let out = Command::new(BIN)
        .args(["config", "push", "--json"])
        .arg(file)
        .env_remove("TANDEM_TOKEN")
        .output()
        .unwrap();
    let answer = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        answer,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn push_writes_the_file_on_both_nodes_and_their_digests_agree() {
    let (a, b, _) = pair("pushtest");
    let text = format!(
        "# pushed by the test\n{}",
        std::fs::read_to_string(a.dir.path().join("tandem.toml")).unwrap()
    );
    let file = a.dir.path().join("push.toml");
    std::fs::write(&file, &text).unwrap();
    let (code, answer, err) = push(&file);
    assert_eq!(code, 0, "{answer} {err}");
    let digest = answer["digest"].as_str().unwrap();
    for (d, node) in [(&a, "a"), (&b, "b")] {
        let path = d.dir.path().join("tandem.toml");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text, "{node}");
        assert_eq!(mode(&path), 0o600, "{node}");
        let r = answer["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == node)
            .unwrap_or_else(|| panic!("{node} in {answer}"));
        assert_eq!(r["taken"]["digest"], digest, "{r}");
    }
    // b runs with a's file now, but its own sockets and state until a restart.
    let b_answer = &answer["nodes"][1]["taken"];
    assert!(
        b_answer["needs_restart"]
            .as_array()
            .unwrap()
            .contains(&Value::from("api tcp")),
        "{b_answer}"
    );
    // The text form: one line per node with the one digest.
    let out = Command::new(BIN)
        .args(["config", "push"])
        .arg(&file)
        .env_remove("TANDEM_TOKEN")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(
        stdout
            .lines()
            .all(|l| l.contains(&format!("digest {digest}"))),
        "{stdout}"
    );
}

#[test]
fn a_node_of_another_cluster_refuses_the_push() {
    let (a, b, _) = pair("elsewhere");
    let b_before = std::fs::read_to_string(b.dir.path().join("tandem.toml")).unwrap();
    let file = a.dir.path().join("tandem.toml");
    let (code, answer, err) = push(&file);
    assert_eq!(code, 1, "{answer} {err}");
    assert!(err.contains("not taken by b"), "{err}");
    let b_result = &answer["nodes"][1];
    let why = b_result["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("cluster `pushtest`") && why.contains("cluster `elsewhere`"),
        "{b_result}"
    );
    assert!(answer["nodes"][0]["taken"].is_object(), "{answer}");
    assert_eq!(
        std::fs::read_to_string(b.dir.path().join("tandem.toml")).unwrap(),
        b_before,
        "b's file is untouched"
    );
}
