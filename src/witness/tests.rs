//! The witness's configuration: what it accepts, what it refuses (naming the key), and
//! that it derives the same consensus settings as a node of the cluster.

use super::*;

const GOOD: &str = r#"
[witness]
name = "w"
state_dir = "/tmp/tandem-witness"

[[cluster]]
name = "lab"
key = "0123456789abcdef"
port = 5405
interval = "200ms"
dead_time = "1s"
lease = "1500ms"
drift_ppm = 10000
[cluster.nodes]
n1 = ["10.78.1.11", "10.78.2.11"]
n2 = ["10.78.1.12"]

[[cluster]]
name = "other"
key_file = "/etc/tandem/other.key"
port = 5406
[cluster.nodes]
a = ["10.0.0.1"]
b = ["10.0.0.2"]
"#;

/// The key and reason of a refused configuration.
fn refused(text: &str) -> (String, String) {
    match WitnessConfig::parse(text) {
        Err(ConfigError::Invalid { key, reason }) => (key, reason),
        Err(ConfigError::Parse { message, .. }) => ("<parse>".into(), message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_good_config_parses_with_defaults() {
    let cfg = WitnessConfig::parse(GOOD).expect("valid");
    assert_eq!(cfg.witness.name, "w");
    assert_eq!(cfg.witness.listen, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_eq!(cfg.clusters.len(), 2);
    let lab = &cfg.clusters[0];
    assert_eq!(lab.nodes["n1"].len(), 2);
    assert_eq!(lab.voters("w"), ["n1", "n2", "w"]);
    let other = &cfg.clusters[1];
    assert_eq!(other.interval, Duration::from_millis(200));
    assert_eq!(other.dead_time, Duration::from_secs(1));
    assert_eq!(other.lease, QuorumSection::default().lease);
    assert_eq!(other.drift_ppm, QuorumSection::default().drift_ppm);
}

#[test]
fn the_example_file_is_valid() {
    let text = include_str!("../../docs/witness.example.toml");
    let cfg = WitnessConfig::parse(text).expect("docs/witness.example.toml is valid");
    assert!(!cfg.clusters.is_empty());
}

#[test]
fn two_clusters_on_one_port_are_refused() {
    let text = GOOD.replace("port = 5406", "port = 5405");
    let (key, reason) = refused(&text);
    assert_eq!(key, "cluster[1].port");
    assert!(reason.contains("lab"), "{reason}");
}

#[test]
fn unknown_keys_are_refused() {
    let (key, reason) = refused(&GOOD.replace("drift_ppm = 10000", "drift = 10000"));
    assert_eq!(key, "<parse>");
    assert!(reason.contains("unknown field `drift`"), "{reason}");
    let (key, reason) = refused(&GOOD.replace("name = \"w\"", "name = \"w\"\nport = 1"));
    assert_eq!(key, "<parse>");
    assert!(reason.contains("unknown field `port`"), "{reason}");
}

#[test]
fn keys_must_be_long_and_given_once() {
    let (key, reason) = refused(&GOOD.replace("0123456789abcdef", "short"));
    assert_eq!(key, "cluster[0].key");
    assert!(reason.contains("16"), "{reason}");
    let (key, _) = refused(&GOOD.replace(
        "key_file = \"/etc/tandem/other.key\"",
        "key_file = \"/k\"\nkey = \"0123456789abcdef\"",
    ));
    assert_eq!(key, "cluster[1].key");
    let (key, _) = refused(&GOOD.replace("key_file = \"/etc/tandem/other.key\"\n", ""));
    assert_eq!(key, "cluster[1].key");
}

#[test]
fn a_cluster_needs_its_nodes() {
    let no_nodes = GOOD.replace(
        "[cluster.nodes]\na = [\"10.0.0.1\"]\nb = [\"10.0.0.2\"]\n",
        "",
    );
    assert_eq!(refused(&no_nodes).0, "cluster[1].nodes");
    let one = GOOD.replace("b = [\"10.0.0.2\"]\n", "");
    assert_eq!(refused(&one).0, "cluster[1].nodes");
    let no_addr = GOOD.replace("b = [\"10.0.0.2\"]", "b = []");
    assert_eq!(refused(&no_addr).0, "cluster[1].nodes.b");
    let v6 = GOOD.replace("b = [\"10.0.0.2\"]", "b = [\"fd00::2\"]");
    assert_eq!(refused(&v6).0, "cluster[1].nodes.b");
    let named_w = GOOD.replace("b = [\"10.0.0.2\"]", "w = [\"10.0.0.2\"]");
    assert_eq!(refused(&named_w).0, "cluster[1].nodes.w");
    let no_cluster = "[witness]\nname = \"w\"\n";
    assert_eq!(refused(no_cluster).0, "cluster");
}

#[test]
fn names_and_timing_are_checked() {
    assert_eq!(
        refused(&GOOD.replace("name = \"w\"", "name = \"\"")).0,
        "witness.name"
    );
    assert_eq!(
        refused(&GOOD.replace("name = \"other\"", "name = \"../x\"")).0,
        "cluster[1].name"
    );
    assert_eq!(
        refused(&GOOD.replace("name = \"other\"", "name = \"lab\"")).0,
        "cluster.name"
    );
    assert_eq!(
        refused(&GOOD.replace("dead_time = \"1s\"", "dead_time = \"400ms\"")).0,
        "cluster[0].dead_time"
    );
    assert_eq!(
        refused(&GOOD.replace("lease = \"1500ms\"", "lease = \"300ms\"")).0,
        "cluster[0].lease"
    );
    assert_eq!(
        refused(&GOOD.replace("drift_ppm = 10000", "drift_ppm = 200000")).0,
        "cluster[0].drift_ppm"
    );
    assert_eq!(
        refused(&GOOD.replace("port = 5405", "port = 0")).0,
        "cluster[0].port"
    );
}

/// The witness's consensus settings are the ones a node of the same cluster derives for
/// the witness: same ticks, timeouts, lease rules and voter list.
#[test]
fn the_witness_derives_what_a_node_derives() {
    let cfg = WitnessConfig::parse(GOOD).expect("valid");
    let lab = &cfg.clusters[0];
    let node_toml = r#"
[cluster]
name = "lab"
key = "0123456789abcdef"
[heartbeat]
interval = "200ms"
dead_time = "1s"
paths = ["hb1", "hb2"]
[[node]]
name = "n1"
priority = 1
addresses = { hb1 = "10.78.1.11", hb2 = "10.78.2.11" }
[[node]]
name = "n2"
priority = 2
addresses = { hb1 = "10.78.1.12", hb2 = "10.78.2.12" }
[witness]
name = "w"
addresses = { hb1 = "10.78.1.200" }
"#;
    let node_cfg = crate::config::Config::parse(node_toml).expect("node config");
    let from_node = crate::node::QuorumSettings::from_config(&node_cfg, "w").core;
    let mine = lab.quorum_config("w");
    assert_eq!(
        wire::voters_digest(&mine.voters),
        wire::voters_digest(&from_node.voters)
    );
    assert_eq!(mine.local, from_node.local);
    assert_eq!(mine.witness, from_node.witness);
    assert_eq!(mine.tick_ms, from_node.tick_ms);
    assert_eq!(mine.election_ticks, from_node.election_ticks);
    assert_eq!(mine.heartbeat_ticks, from_node.heartbeat_ticks);
    assert_eq!(mine.lease, from_node.lease);
}
