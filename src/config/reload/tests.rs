//! Tests of [`classify`] and [`admit`].

use super::*;

use crate::config::TWO_NODES as BASE;

fn cfg(text: &str) -> Config {
    Config::parse(text).unwrap()
}

/// BASE with `from` replaced by `to` (which must occur).
fn changed(from: &str, to: &str) -> Config {
    assert!(BASE.contains(from), "{from}");
    cfg(&BASE.replace(from, to))
}

#[test]
fn the_same_file_changes_nothing() {
    let p = classify(&cfg(BASE), &cfg(BASE));
    assert!(p.applied.is_empty() && p.needs_restart.is_empty(), "{p:?}");
}

#[test]
fn a_check_interval_is_applied_and_named_and_runs_from_now_on() {
    let old = cfg(BASE);
    let new = changed("interval = \"2s\"", "interval = \"500ms\"");
    let p = classify(&old, &new);
    assert_eq!(p.applied, ["group web resource http quickcheck interval"]);
    assert!(p.needs_restart.is_empty(), "{p:?}");
    assert_eq!(p.running, new);
    assert_eq!(p.running.digest, new.digest);
}

#[test]
fn a_check_probe_timeout_and_new_deepcheck_are_applied() {
    let new = changed(
        "interval = \"2s\" }",
        "interval = \"2s\", timeout = \"1s\" }\ndeepcheck = { probe = \"tcp\", address = \"127.0.0.1:8080\" }",
    );
    let p = classify(&cfg(BASE), &new);
    assert_eq!(
        p.applied,
        [
            "group web resource http quickcheck timeout",
            "group web resource http deepcheck added",
        ]
    );
    let other_probe = changed(
        "url = \"http://127.0.0.1:8080/\"",
        "url = \"http://127.0.0.1:9090/\"",
    );
    let p = classify(&cfg(BASE), &other_probe);
    assert_eq!(p.applied, ["group web resource http quickcheck probe"]);
}

#[test]
fn a_heartbeat_address_needs_a_restart_and_is_not_taken() {
    let old = cfg(BASE);
    let new = changed("hb2 = \"10.0.1.2\"", "hb2 = \"10.0.1.22\"");
    let p = classify(&old, &new);
    assert!(p.applied.is_empty());
    assert_eq!(p.needs_restart, ["node b address on path hb2"]);
    assert_eq!(p.running, old, "nothing of it runs");
}

#[test]
fn a_mixed_change_applies_the_live_part_only() {
    let old = cfg(BASE);
    let new = cfg(&BASE
        .replace("interval = \"2s\"", "interval = \"1s\"")
        .replace(
            "paths = [\"hb1\", \"hb2\"]",
            "paths = [\"hb1\", \"hb2\"]\ninterval = \"100ms\"",
        ));
    let p = classify(&old, &new);
    assert_eq!(p.applied, ["group web resource http quickcheck interval"]);
    assert_eq!(p.needs_restart, ["heartbeat interval"]);
    let running = &p.running.groups[0].resources[0];
    assert_eq!(
        running.quickcheck.as_ref().unwrap().interval,
        Some(std::time::Duration::from_secs(1))
    );
    assert_eq!(p.running.heartbeat.interval, old.heartbeat.interval);
    assert_eq!(
        p.running.digest, old.digest,
        "the file does not run as a whole"
    );
    // Reloading the same file again names only what still waits.
    let again = classify(&p.running, &new);
    assert!(again.applied.is_empty());
    assert_eq!(again.needs_restart, ["heartbeat interval"]);
}

#[test]
fn shape_changes_need_a_restart_each_by_name() {
    let more = format!(
        "{BASE}\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"10.0.0.10/24\"\ninterface = \"eth0\"\n\
         [[group]]\nname = \"db\"\nmax_restarts = 1\n"
    )
    .replace("priority = 2", "priority = 3")
    .replace("command = [\"httpd\"]", "command = [\"httpd\", \"-X\"]");
    let p = classify(&cfg(BASE), &cfg(&more));
    assert!(p.applied.is_empty());
    assert_eq!(
        p.needs_restart,
        [
            "node b priority",
            "group db added",
            "group web resource vip added",
            "group web resource http process settings",
        ]
    );
}

/// A group's restart policy is taken live: the node core counts the next failure
/// against it.
#[test]
fn a_restart_policy_is_live() {
    let policy = changed(
        "name = \"web\"",
        "name = \"web\"\nrestart_window = \"1m\"\nmax_restarts = 0",
    );
    let p = classify(&cfg(BASE), &policy);
    assert!(p.needs_restart.is_empty(), "{:?}", p.needs_restart);
    assert_eq!(
        p.applied,
        ["group web max_restarts", "group web restart_window"]
    );
    let web = p.running.groups.iter().find(|g| g.name == "web").unwrap();
    assert_eq!((web.max_restarts, web.restart_window.as_secs()), (0, 60));
}

#[test]
fn the_api_token_is_live_while_the_listener_stays() {
    let new = changed("token-0123456789abcdef", "token-fedcba9876543210");
    let p = classify(&cfg(BASE), &new);
    assert_eq!(p.applied, ["api token"]);
    assert!(p.needs_restart.is_empty());
    // Without the listener in the new file, the token stays until a restart.
    let gone = changed(
        "tcp = \"127.0.0.1:7000\"\ntoken = \"token-0123456789abcdef\"",
        "",
    );
    let p = classify(&cfg(BASE), &gone);
    assert!(p.applied.is_empty());
    assert_eq!(p.needs_restart, ["api tcp", "api token"]);
    assert_eq!(p.running.api.token, cfg(BASE).api.token);
}

#[test]
fn another_cluster_or_a_file_without_this_node_is_refused() {
    let running = cfg(BASE);
    assert!(admit(&running, &cfg(BASE), "a").is_ok());
    let other = changed("name = \"t\"", "name = \"u\"");
    let e = admit(&running, &other, "a").unwrap_err();
    assert!(matches!(e, ReloadError::OtherCluster { .. }), "{e}");
    assert!(e.to_string().contains("cluster `u`"), "{e}");
    let e = admit(&running, &cfg(BASE), "c").unwrap_err();
    assert!(
        matches!(e, ReloadError::NotThisNode(ref n) if n == "c"),
        "{e}"
    );
}

#[test]
fn snmp_communities_and_receivers_are_live() {
    let with = |community: &str, receiver: bool| {
        let mut text = format!("{BASE}\n[snmp]\n[[snmp.community]]\nname = \"{community}\"\n");
        if receiver {
            text.push_str(
                "[[snmp.receiver]]\naddress = \"192.0.2.1:162\"\nform = \"v2c_trap\"\ncommunity = \"traps\"\n",
            );
        }
        cfg(&text)
    };
    let p = classify(&with("public", false), &with("another", true));
    assert_eq!(p.applied, ["snmp communities", "snmp receivers"]);
    assert!(p.needs_restart.is_empty(), "{:?}", p.needs_restart);
    let running = p.running.snmp.unwrap();
    assert_eq!(running.communities[0].name, "another");
    assert_eq!(running.receivers.len(), 1);
    // An agent that does not run takes nothing.
    let p = classify(&cfg(BASE), &with("public", false));
    assert!(p.applied.is_empty());
    assert_eq!(p.needs_restart, ["snmp"]);
}

#[test]
fn the_console_section_needs_a_restart_and_is_left_out_of_the_digest() {
    let on = cfg(&format!("{BASE}\n[console]\nlisten = \"127.0.0.1:9443\"\n"));
    let moved = cfg(&format!(
        "{BASE}\n[console]\nlisten = \"127.0.0.1:9444\"\ncert = \"/etc/c.pem\"\nkey = \"/etc/k.pem\"\n"
    ));
    assert_eq!(on.console.as_ref().unwrap().listen.port(), 9443);
    assert_eq!(classify(&cfg(BASE), &on).needs_restart, ["console"]);
    assert_eq!(classify(&on, &moved).needs_restart, ["console"]);
    assert_eq!(on.digest, cfg(BASE).digest);
    assert_eq!(moved.digest, cfg(BASE).digest);
    let unknown = format!("{BASE}\n[console]\nlisten = \"127.0.0.1:9443\"\nport = 1\n");
    assert!(Config::parse(&unknown).is_err());
    let half = format!("{BASE}\n[console]\nlisten = \"127.0.0.1:9443\"\ncert = \"/c.pem\"\n");
    let e = Config::parse(&half).unwrap_err().to_string();
    assert!(e.contains("console.cert"), "{e}");
}
