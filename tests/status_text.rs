//! The text of `tandem status` and `tandem history` from the real binaries, against a
//! daemon on loopback: a node with a 48-character name running a group of two `exec`
//! resources shows the group, its owner and its resources in the status, and the
//! group's first start, step by step, in the history.

use std::time::Duration;

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{free_udp_port, loopback_base, wait_until, Daemon};

/// 48 characters: the longest name the configuration allows.
const NODE: &str = "node-with-the-longest-name-allowed-0123456789abc";
const GROUP: &str = "group-with-the-longest-name-allowed-0123456789ab";

fn start() -> Daemon {
    assert_eq!((NODE.len(), GROUP.len()), (48, 48));
    Daemon::start(NODE, |dir| {
        let marker = dir.join("started");
        format!(
            r#"
{base}
[[node]]
name = "{NODE}"
priority = 1
addresses = {{ lo = "127.0.0.1" }}

[[group]]
name = "{GROUP}"

[[group.resource]]
name = "setup"
kind = "exec"
start = ["touch", "{marker}"]
stop = ["rm", "-f", "{marker}"]
timeout = "5s"

[[group.resource]]
name = "app"
kind = "exec"
start = ["true"]
stop = ["true"]
depends_on = ["setup"]
quickcheck = {{ probe = "exec", command = ["test", "-f", "{marker}"], interval = "200ms", timeout = "2s" }}
"#,
            base = loopback_base(dir, "textcluster", free_udp_port()),
            marker = marker.display(),
        )
    })
}

/// The line of `text` that starts (after the indent) with `first`.
fn row<'a>(text: &'a str, first: &str) -> &'a str {
    text.lines()
        .find(|l| l.trim_start().starts_with(first))
        .unwrap_or_else(|| panic!("no line starting with {first:?} in:\n{text}"))
}

#[test]
fn status_and_history_text_show_the_group_its_owner_and_resources() {
    let d = start();
    wait_until("the group runs", Duration::from_secs(20), || {
        d.status()["groups"][0]["local_state"] == "running"
    });

    let (code, out, err) = d.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    println!("{out}");
    assert_eq!(out.lines().next(), Some("Cluster name: textcluster"));
    let version = format!(
        "  * This node: {NODE} (tandem {})",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(row(&out, "* This node:"), version, "{out}");
    let node: Vec<&str> = row(&out, NODE).split_whitespace().collect();
    assert_eq!(node[..2], [NODE, "online"], "{out}");
    let group: Vec<&str> = row(&out, GROUP).split_whitespace().collect();
    assert_eq!(group[..3], [GROUP, "running", NODE], "{out}");
    let head = row(&out, "GROUP  ");
    assert_eq!(
        head.find("STATE"),
        row(&out, GROUP).find("running"),
        "{out}"
    );
    for resource in ["setup", "app"] {
        let r = format!("{GROUP}  {resource}");
        let cells: Vec<&str> = row(&out, &r).split_whitespace().collect();
        assert_eq!(cells, [GROUP, resource, "exec", "running"], "{out}");
    }
    assert!(
        row(&out, "Last failover:").ends_with(&format!("none recorded on {NODE}")),
        "a first start is no failover:\n{out}"
    );

    let (code, out, err) = d.cli(&["history"]);
    assert_eq!(code, 0, "{err}");
    println!("{out}");
    assert!(
        out.lines().next().unwrap().ends_with(&format!(
            "first start of {GROUP}: - -> {NODE}, reason initial, completed"
        )),
        "{out}"
    );
    let phase = |l: &str| l.split_whitespace().nth(1).map(str::to_string);
    assert!(
        out.lines().any(|l| phase(l).as_deref() == Some("placed")),
        "{out}"
    );
    for resource in ["setup", "app"] {
        assert!(
            out.contains(&format!("start {resource} on {NODE}")),
            "{out}"
        );
    }
    assert!(out.contains("first passing check"), "{out}");
    assert!(
        row(&out, "total ").ends_with("(placement to service)"),
        "{out}"
    );
}
