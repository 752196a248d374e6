//! Tests for configuration parsing and cross-field validation.

use super::*;

const MINIMAL: &str = r#"
[cluster]
name = "t"
key = "0123456789abcdef"
[heartbeat]
paths = ["hb1"]
[[node]]
name = "a"
priority = 1
addresses = { hb1 = "10.0.0.1" }
"#;

fn err_of(text: &str) -> String {
    Config::parse(text).unwrap_err().to_string()
}

/// Every configuration in `examples/` (one per topology) passes the check.
#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).expect("readable");
            Config::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            checked.push(path.file_name().unwrap_or_default().to_owned());
        }
    }
    assert!(checked.len() >= 3, "examples checked: {checked:?}");
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../examples/tandem.toml");
    let cfg = Config::parse(text).expect("example parses");
    assert_eq!(cfg.nodes.len(), 2);
    assert_eq!(cfg.groups[0].resources.len(), 3);
    assert_eq!(cfg.heartbeat.interval, Duration::from_millis(200));
}

#[test]
fn the_cluster_digest_covers_what_nodes_share_and_nothing_local_or_secret() {
    let base = Config::parse(MINIMAL).unwrap().digest;
    assert_eq!(base.len(), 16);
    let same = format!(
        "# a comment\n{}\n[api]\nsocket = \"/run/other.sock\"\n",
        MINIMAL.replace(
            "key = \"0123456789abcdef\"",
            "key = \"another-key-0123456\""
        )
    );
    assert_eq!(
        Config::parse(&same).unwrap().digest,
        base,
        "local or secret keys"
    );
    // Per machine: the watchdog device, the event loop's scheduling, a mirror's
    // backing device and NBD socket.
    let mirrored = |backing: &str, device: &str, rt: u8| {
        let text = format!(
            "{MINIMAL}\n[[mirror]]\nname = \"m\"\nbacking = \"{backing}\"\n\
             nbd_socket = \"{backing}.sock\"\naddresses = {{ a = \"10.0.0.1:7790\" }}\n"
        )
        .replace(
            "[heartbeat]",
            &format!("[quorum]\nwatchdog = {{ device = \"{device}\" }}\n[heartbeat]\nrealtime_priority = {rt}"),
        );
        cluster_digest(&text).unwrap()
    };
    assert_eq!(
        mirrored("/dev/sdb", "/dev/watchdog", 10),
        mirrored("/dev/nvme0n1", "/dev/watchdog1", 0),
        "per-machine paths and scheduling"
    );
    let other = MINIMAL.replace("priority = 1", "priority = 2");
    assert_ne!(
        Config::parse(&other).unwrap().digest,
        base,
        "a node's priority"
    );
}

#[test]
fn defaults_apply() {
    let cfg = Config::parse(MINIMAL).unwrap();
    assert_eq!(cfg.heartbeat.interval, Duration::from_millis(200));
    assert_eq!(cfg.heartbeat.dead_time, Duration::from_secs(1));
    assert_eq!(cfg.heartbeat.port, 5405);
}

#[test]
fn event_rotation_defaults_to_16_mib_keeping_four_and_has_a_floor() {
    let cfg = Config::parse(MINIMAL).unwrap();
    assert_eq!(cfg.cluster.event_rotation(), crate::rotate::Policy::DEFAULT);
    assert_eq!(cfg.cluster.events_max_bytes, 16 * 1024 * 1024);
    let set = MINIMAL.replace(
        "[heartbeat]",
        "events_max_bytes = 1048576\nevents_keep = 2\n[heartbeat]",
    );
    let cfg = Config::parse(&set).unwrap();
    assert_eq!(
        cfg.cluster.event_rotation(),
        crate::rotate::Policy {
            max_bytes: 1 << 20,
            keep: 2
        }
    );
    assert_eq!(
        cfg.digest,
        Config::parse(MINIMAL).unwrap().digest,
        "node-local"
    );
    let e = err_of(&MINIMAL.replace("[heartbeat]", "events_max_bytes = 100\n[heartbeat]"));
    assert!(e.contains("cluster.events_max_bytes"), "{e}");
}

#[test]
fn unknown_key_is_an_error_naming_it() {
    let e = err_of(&MINIMAL.replace("[heartbeat]", "[heartbeat]\nintervall = \"1s\""));
    assert!(e.contains("intervall"), "{e}");
}

#[test]
fn dead_time_must_cover_three_intervals() {
    let e = err_of(&MINIMAL.replace(
        "[heartbeat]",
        "[heartbeat]\ninterval = \"500ms\"\ndead_time = \"1s\"",
    ));
    assert!(e.contains("heartbeat.dead_time"), "{e}");
}

#[test]
fn interval_floor_is_50ms() {
    let e = err_of(&MINIMAL.replace("[heartbeat]", "[heartbeat]\ninterval = \"20ms\""));
    assert!(e.contains("heartbeat.interval"), "{e}");
}

#[test]
fn node_needs_an_address_per_path() {
    let e = err_of(&MINIMAL.replace("paths = [\"hb1\"]", "paths = [\"hb1\", \"hb2\"]"));
    assert!(e.contains("node[0].addresses") && e.contains("hb2"), "{e}");
}

#[test]
fn short_key_rejected() {
    let e = err_of(&MINIMAL.replace("0123456789abcdef", "short"));
    assert!(e.contains("cluster.key"), "{e}");
}

#[test]
fn duplicate_priority_rejected() {
    let text = format!(
        "{MINIMAL}\n[[node]]\nname = \"b\"\npriority = 1\naddresses = {{ hb1 = \"10.0.0.2\" }}\n"
    );
    assert!(err_of(&text).contains("node[1].priority"));
}

/// A group's node list is an order of preference: each node once; `exclusive` parses.
#[test]
fn group_nodes_are_an_order_without_repeats() {
    let group = |nodes: &str| {
        format!(
            "{MINIMAL}\n[[node]]\nname = \"b\"\npriority = 2\naddresses = {{ hb1 = \"10.0.0.2\" }}\n\
             [[group]]\nname = \"g\"\nnodes = {nodes}\nexclusive = true\n"
        )
    };
    let cfg = Config::parse(&group(r#"["b", "a"]"#)).expect("an order of two nodes");
    assert_eq!(cfg.groups[0].nodes, ["b", "a"]);
    assert!(cfg.groups[0].exclusive);
    let e = err_of(&group(r#"["b", "a", "b"]"#));
    assert!(
        e.contains("group[0].nodes[2]") && e.contains("listed twice"),
        "{e}"
    );
}

#[test]
fn dependency_errors_named() {
    let text = format!(
        "{MINIMAL}\n[[group]]\nname = \"g\"\n[[group.resource]]\nname = \"x\"\nkind = \"process\"\ncommand = [\"true\"]\ndepends_on = [\"nope\"]\n"
    );
    let e = err_of(&text);
    assert!(
        e.contains("group[0].resource[0].depends_on") && e.contains("nope"),
        "{e}"
    );
    let cyc = format!(
        "{MINIMAL}\n[[group]]\nname = \"g\"\n[[group.resource]]\nname = \"x\"\nkind = \"process\"\ncommand = [\"true\"]\ndepends_on = [\"y\"]\n[[group.resource]]\nname = \"y\"\nkind = \"process\"\ncommand = [\"true\"]\ndepends_on = [\"x\"]\n"
    );
    assert!(err_of(&cyc).contains("cycle"));
}

#[test]
fn bad_cidr_named() {
    let text = format!(
        "{MINIMAL}\n[[group]]\nname = \"g\"\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"10.0.0.300/24\"\ninterface = \"eth0\"\n"
    );
    let e = err_of(&text);
    assert!(e.contains("group[0].resource[0].address"), "{e}");
    assert_eq!(parse_cidr("fd00::1/64").unwrap().1, 64);
    assert!(parse_cidr("10.0.0.1/33").is_err());
}

#[test]
fn unknown_resource_kind_rejected() {
    let text = format!(
        "{MINIMAL}\n[[group]]\nname = \"g\"\n[[group.resource]]\nname = \"x\"\nkind = \"teleport\"\n"
    );
    assert!(err_of(&text).contains("teleport"));
}

#[test]
fn unknown_keys_in_resources_and_checks_are_errors() {
    let base = format!(
        "{MINIMAL}\n[[group]]\nname = \"g\"\n[[group.resource]]\nname = \"x\"\nkind = \"process\"\ncommand = [\"true\"]\n"
    );
    assert!(Config::parse(&base).is_ok());
    let e = err_of(&format!("{base}comand = [\"x\"]\n"));
    assert!(e.contains("comand"), "{e}");
    let e = err_of(&format!(
        "{base}quickcheck = {{ probe = \"tcp\", address = \"127.0.0.1:1\", intervall = \"1s\" }}\n"
    ));
    assert!(e.contains("intervall"), "{e}");
}

#[test]
fn http_probes_take_https_with_one_kind_of_trust() {
    let base = format!(
        "{MINIMAL}\n[[group]]\nname = \"g\"\n[[group.resource]]\nname = \"x\"\nkind = \"process\"\ncommand = [\"true\"]\n"
    );
    let with = |check: &str| format!("{base}quickcheck = {{ probe = \"http\", {check} }}\n");
    for ok in [
        r#"url = "http://127.0.0.1/""#,
        r#"url = "https://127.0.0.1/""#,
        r#"url = "https://127.0.0.1/", ca_file = "/etc/ssl/ca.pem""#,
        r#"url = "https://127.0.0.1/", insecure = true"#,
    ] {
        Config::parse(&with(ok)).unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for (bad, why) in [
        (
            r#"url = "ftp://127.0.0.1/""#,
            "must start with http:// or https://",
        ),
        (
            r#"url = "http://127.0.0.1/", insecure = true"#,
            "need an https:// URL",
        ),
        (
            r#"url = "https://127.0.0.1/", insecure = true, ca_file = "/ca.pem""#,
            "not both",
        ),
    ] {
        let e = err_of(&with(bad));
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn heartbeat_must_fit_in_a_datagram() {
    let mut text = MINIMAL.to_string();
    for i in 0..32 {
        text +=
            &format!("\n[[group]]\nname = \"group-with-a-long-name-{i:02}-xxxxxxxxxxxxxxxxxx\"\n");
    }
    let e = err_of(&text);
    assert!(e.contains("`group`") && e.contains("datagram"), "{e}");
}

/// [`MINIMAL`] plus a second node, a mirror between the two and a group owning it.
const MIRROR_PART: &str = r#"
[[node]]
name = "b"
priority = 2
addresses = { hb1 = "10.0.0.2" }
[[mirror]]
name = "data"
backing = "/var/lib/tandem/data.img"
size = "64MiB"
addresses = { a = "10.0.0.1:7790", b = "10.0.0.2:7790" }
[[mirror.link]]
between = ["a", "b"]
mode = "sync"
[[group]]
name = "g"
[[group.resource]]
name = "vol"
kind = "mirror"
mirror = "data"
"#;

#[test]
fn a_filesystem_must_sit_on_its_mirror_resource() {
    let fs = |extra: &str| {
        format!(
            "{MINIMAL}{MIRROR_PART}[[group.resource]]\nname = \"fs\"\nkind = \"filesystem\"\nmirror = \"data\"\n{extra}\n"
        )
    };
    let ok = Config::parse(&fs("mountpoint = \"/srv/data\"\ndepends_on = [\"vol\"]"))
        .expect("valid filesystem resource");
    match &ok.groups[0].resources[1].kind {
        ResourceKind::Filesystem {
            fstype, mkfs, fsck, ..
        } => assert_eq!((fstype.as_str(), *mkfs, *fsck), ("ext4", false, true)),
        other => panic!("{other:?}"),
    }
    let e = err_of(&fs("mountpoint = \"/srv/data\""));
    assert!(
        e.contains("resource[1].depends_on") && e.contains("`vol`"),
        "{e}"
    );
    let e = err_of(&fs("mountpoint = \"srv\"\ndepends_on = [\"vol\"]"));
    assert!(e.contains("resource[1].mountpoint"), "{e}");
    let e = err_of(&fs(
        "mountpoint = \"/srv\"\nfstype = \"ext4;rm\"\ndepends_on = [\"vol\"]",
    ));
    assert!(e.contains("resource[1].fstype"), "{e}");
    let e = err_of(
        &fs("mountpoint = \"/srv\"\ndepends_on = [\"vol\"]").replace(
            "mirror = \"data\"\nmountpoint",
            "mirror = \"other\"\nmountpoint",
        ),
    );
    assert!(e.contains("resource[1].mirror"), "{e}");
    let e = err_of(&fs(
        "mountpoint = \"/srv\"\ndepends_on = [\"vol\"]\nmkfs = \"yes\"",
    ));
    assert!(e.contains("expected a boolean"), "{e}");
}

const TWO_NODES: &str = r#"
[cluster]
name = "t"
key = "0123456789abcdef"
[heartbeat]
paths = ["hb1"]
[[node]]
name = "a"
priority = 1
addresses = { hb1 = "10.0.0.1" }
[[node]]
name = "b"
priority = 2
addresses = { hb1 = "10.0.0.2" }
"#;

#[test]
fn two_nodes_without_a_witness_run_without_a_quorum_and_are_warned_about() {
    let cfg = Config::parse(TWO_NODES).unwrap();
    assert!(!cfg.quorum_enabled());
    assert!(cfg.quorum_warning().unwrap().contains("witness"));
    let e = err_of(&format!("{TWO_NODES}\n[quorum]\nmode = \"majority\"\n"));
    assert!(e.contains("quorum.mode"), "{e}");
}

#[test]
fn a_witness_makes_a_majority_of_three() {
    let text =
        format!("{TWO_NODES}\n[witness]\nname = \"w\"\naddresses = {{ hb1 = \"10.0.0.9\" }}\n");
    let cfg = Config::parse(&text).unwrap();
    assert!(cfg.quorum_enabled());
    assert_eq!(cfg.voters(), ["a", "b", "w"]);
    assert!(cfg.quorum_warning().is_none());
    let e = err_of(&text.replace("hb1 = \"10.0.0.9\"", "hb9 = \"10.0.0.9\""));
    assert!(e.contains("witness.addresses.hb9"), "{e}");
    let e = err_of(&text.replace("name = \"w\"", "name = \"a\""));
    assert!(e.contains("witness.name"), "{e}");
    let e = err_of(&format!("{text}\n[quorum]\nlease = \"500ms\"\n"));
    assert!(e.contains("quorum.lease"), "{e}");
}

#[test]
fn a_watchdog_needs_whole_seconds_and_a_lease_that_outlasts_it() {
    let base =
        format!("{TWO_NODES}\n[witness]\nname = \"w\"\naddresses = {{ hb1 = \"10.0.0.9\" }}\n");
    let wd = |lease: &str, timeout: &str| {
        format!(
            "{base}\n[quorum]\nlease = \"{lease}\"\n\
             watchdog = {{ device = \"/dev/watchdog\", timeout = \"{timeout}\" }}\n"
        )
    };
    let cfg = Config::parse(&wd("2s", "1s")).unwrap();
    let w = cfg.quorum.watchdog.as_ref().expect("watchdog");
    assert_eq!(w.timeout, std::time::Duration::from_secs(1));
    assert_eq!(w.device, std::path::Path::new("/dev/watchdog"));
    let e = err_of(&wd("2s", "1500ms"));
    assert!(e.contains("quorum.watchdog.timeout"), "{e}");
    let e = err_of(&wd("1300ms", "1s"));
    assert!(
        e.contains("quorum.lease") && e.contains("quorum.watchdog.timeout"),
        "{e}"
    );
    let e = err_of(&wd("2s", "1s").replace("timeout =", "bogus = 1, timeout ="));
    assert!(e.contains("bogus"), "{e}");
    let e = err_of(&format!(
        "{TWO_NODES}\n[quorum]\nwatchdog = {{ device = \"/dev/watchdog\", timeout = \"1s\" }}\n"
    ));
    assert!(e.contains("quorum.watchdog"), "{e}");
}

const FENCED: &str = r#"
[node.fence]
delay = "5s"
[node.fence.redfish]
url = "https://10.0.0.21"
system = "1"
user = "admin"
password_file = "/etc/tandem/bmc-a.pw"
insecure = true
[node.fence.ipmi]
host = "10.0.0.22"
user = "admin"
password_file = "/etc/tandem/bmc-a.ipmi.pw"
"#;

#[test]
fn a_node_fence_section_parses_with_defaults() {
    let cfg = Config::parse(&format!("{MINIMAL}{FENCED}")).unwrap();
    let f = cfg.nodes[0].fence.as_ref().expect("fence section");
    assert_eq!(f.delay, Duration::from_secs(5));
    assert_eq!(f.timeout, Duration::from_secs(30));
    assert_eq!(f.ipmi.as_ref().unwrap().port, 623);
    assert!(f.redfish.as_ref().unwrap().insecure);
    assert!(Config::parse(MINIMAL).unwrap().nodes[0].fence.is_none());
}

#[test]
fn a_fence_section_is_checked_key_by_key() {
    let text = format!("{MINIMAL}{FENCED}");
    for (from, to, key) in [
        (
            "https://10.0.0.21",
            "ftp://10.0.0.21",
            "node[0].fence.redfish.url",
        ),
        (
            "https://10.0.0.21",
            "https://10.0.0.21/redfish",
            "node[0].fence.redfish.url",
        ),
        (
            "user = \"admin\"\npassword_file = \"/etc/tandem/bmc-a.pw\"",
            "user = \"\"\npassword_file = \"/etc/tandem/bmc-a.pw\"",
            "node[0].fence.redfish.user",
        ),
        (
            "password_file = \"/etc/tandem/bmc-a.pw\"",
            "password = \"x\"\npassword_file = \"/x\"",
            "node[0].fence.redfish.password",
        ),
        (
            "password_file = \"/etc/tandem/bmc-a.pw\"",
            "",
            "node[0].fence.redfish.password",
        ),
        (
            "delay = \"5s\"",
            "delay = \"5s\"\ntimeout = \"0s\"",
            "node[0].fence.timeout",
        ),
        (
            "host = \"10.0.0.22\"",
            "host = \"-H\"",
            "node[0].fence.ipmi.host",
        ),
        (
            "system = \"1\"",
            "system = \"1/2\"",
            "node[0].fence.redfish.system",
        ),
    ] {
        let e = err_of(&text.replacen(from, to, 1));
        assert!(e.contains(key), "{to}: {e}");
    }
    let e = err_of(&text.replace("insecure = true", "insecur = true"));
    assert!(e.contains("insecur"), "{e}");
    let e = err_of(&format!("{MINIMAL}[node.fence]\ndelay = \"1s\"\n"));
    assert!(e.contains("node[0].fence"), "{e}");
}

#[test]
fn bmc_urls() {
    let u = BmcUrl::parse("https://10.0.0.21").unwrap();
    assert_eq!((u.tls, u.host.as_str(), u.port), (true, "10.0.0.21", 443));
    let u = BmcUrl::parse("http://bmc-b:8000/").unwrap();
    assert_eq!((u.tls, u.authority().as_str()), (false, "bmc-b:8000"));
    let u = BmcUrl::parse("https://[fd00::21]:8443").unwrap();
    assert_eq!(u.authority(), "[fd00::21]:8443");
    for bad in [
        "10.0.0.21",
        "https://",
        "https://a:0",
        "https://u@a",
        "https://fd00::1",
    ] {
        assert!(BmcUrl::parse(bad).is_err(), "{bad}");
    }
}

/// The example's commented `[node.fence]` block is valid once uncommented.
#[test]
fn example_fence_block_is_valid_uncommented() {
    let text = include_str!("../../examples/tandem.toml");
    let start = text.find("# [node.fence]").expect("fence block");
    let end = start + text[start..].find("\n\n").expect("block end");
    let block: String = text[start..end]
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| !l.starts_with(' '))
        .map(|l| format!("{l}\n"))
        .collect();
    let cfg = Config::parse(&format!("{}{block}{}", &text[..start], &text[end..]))
        .unwrap_or_else(|e| panic!("{e}\n{block}"));
    let f = cfg
        .node("beta")
        .and_then(|n| n.fence.as_ref())
        .expect("fence");
    assert!(f.redfish.is_some() && f.ipmi.is_some());
}

#[test]
fn on_no_quorum_defaults_to_io_error_and_takes_suspend() {
    let c = Config::parse(&format!("{MINIMAL}{MIRROR_PART}")).unwrap();
    assert_eq!(c.mirrors[0].on_no_quorum, OnNoQuorum::IoError);
    let suspend = MIRROR_PART.replace(
        "size = \"64MiB\"",
        "size = \"64MiB\"\non_no_quorum = \"suspend\"",
    );
    let c = Config::parse(&format!("{MINIMAL}{suspend}")).unwrap();
    assert_eq!(c.mirrors[0].on_no_quorum, OnNoQuorum::Suspend);
    let bad = MIRROR_PART.replace(
        "size = \"64MiB\"",
        "size = \"64MiB\"\non_no_quorum = \"wait\"",
    );
    assert!(err_of(&format!("{MINIMAL}{bad}")).contains("wait"));
}

/// The config with `[cluster] mirror_metadata` set to `cluster` (None: unset) and the
/// mirror's own `metadata` to `mirror` (None: unset).
fn with_metadata(cluster: Option<&str>, mirror: Option<&str>) -> String {
    let mut text = format!("{MINIMAL}{MIRROR_PART}");
    if let Some(c) = cluster {
        text = text.replace(
            "name = \"t\"\n",
            &format!("name = \"t\"\nmirror_metadata = \"{c}\"\n"),
        );
    }
    if let Some(m) = mirror {
        text = text.replace(
            "size = \"64MiB\"",
            &format!("size = \"64MiB\"\nmetadata = \"{m}\""),
        );
    }
    text
}

fn effective(text: &str) -> (MetadataKind, MetadataFrom) {
    let cfg = Config::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    cfg.mirror_metadata(&cfg.mirrors[0])
}

#[test]
fn mirror_metadata_is_external_by_default_and_the_cluster_default_applies() {
    use MetadataFrom::Cluster;
    use MetadataKind::{External, Internal};
    let cfg = Config::parse(&with_metadata(None, None)).unwrap();
    assert_eq!(cfg.cluster.mirror_metadata, External);
    assert_eq!(cfg.mirrors[0].metadata, None);
    assert_eq!(effective(&with_metadata(None, None)), (External, Cluster));
    assert_eq!(
        effective(&with_metadata(Some("internal"), None)),
        (Internal, Cluster)
    );
    assert_eq!(
        effective(&with_metadata(Some("external"), None)),
        (External, Cluster)
    );
}

#[test]
fn a_mirror_s_own_metadata_overrides_the_cluster_default() {
    use MetadataFrom::Mirror;
    use MetadataKind::{External, Internal};
    assert_eq!(
        effective(&with_metadata(None, Some("internal"))),
        (Internal, Mirror)
    );
    assert_eq!(
        effective(&with_metadata(Some("internal"), Some("external"))),
        (External, Mirror)
    );
    assert_eq!(
        effective(&with_metadata(Some("external"), Some("internal"))),
        (Internal, Mirror)
    );
}

#[test]
fn unknown_metadata_kinds_are_errors_naming_the_value() {
    for text in [
        with_metadata(Some("disk"), None),
        with_metadata(None, Some("disk")),
    ] {
        let e = err_of(&text);
        assert!(e.contains("disk") && e.contains("external"), "{e}");
    }
    // A misspelt key is refused too (`deny_unknown_fields`).
    let e = err_of(&format!("{MINIMAL}{MIRROR_PART}").replace(
        "name = \"t\"\n",
        "name = \"t\"\nmirror_meta = \"internal\"\n",
    ));
    assert!(e.contains("mirror_meta"), "{e}");
}

#[test]
fn a_key_file_others_can_read_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.key");
    std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
    let text = MINIMAL.replace(
        "key = \"0123456789abcdef\"",
        &format!("key_file = \"{}\"", path.display()),
    );
    let cfg = Config::parse(&text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = cfg.key_bytes().unwrap_err().to_string();
    assert!(e.contains("cluster.key_file") && e.contains("0644"), "{e}");
    assert!(e.contains("chmod 600"), "{e}");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(cfg.key_bytes().unwrap(), b"0123456789abcdef0123");
}

#[test]
fn the_shared_disk_example_is_valid() {
    let cfg = Config::parse(include_str!("../../examples/shared-disk.toml")).unwrap();
    assert_eq!(cfg.groups[0].resources[1].kind.name(), "shared_disk");
}

#[test]
fn a_shared_disk_takes_the_lease_defaults_and_refuses_unsafe_settings() {
    let base = format!(
        "{MINIMAL}\n[[group]]\nname = \"g\"\n[[group.resource]]\nname = \"disk\"\nkind = \"shared_disk\"\npath = \"/dev/sdb\"\n"
    );
    let cfg = Config::parse(&base).unwrap();
    let kind = &cfg.groups[0].resources[0].kind;
    assert_eq!(
        kind.lease_timing(),
        Some(crate::lease::core::Timing::default())
    );
    assert!(matches!(
        kind,
        ResourceKind::SharedDisk {
            lease_offset: 0,
            data_offset: 1048576,
            ..
        }
    ));
    for (extra, key, words) in [
        (
            "stop_after = \"14s\"\n",
            "group[0].resource[0]",
            "stop_after",
        ),
        (
            "lease_offset = 512\n",
            "group[0].resource[0].lease_offset",
            "4096",
        ),
        (
            "data_offset = 0\n",
            "group[0].resource[0].data_offset",
            "lease sector",
        ),
        ("lease_tiemout = \"1s\"\n", "lease_tiemout", "unknown"),
    ] {
        let e = err_of(&format!("{base}{extra}"));
        assert!(e.contains(key) && e.contains(words), "{extra}: {e}");
    }
    let e = err_of(&base.replace("/dev/sdb", "disk.img"));
    assert!(e.contains("group[0].resource[0].path"), "{e}");
}
