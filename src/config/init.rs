//! `tandem config init`: a commented starting configuration for N nodes with a fresh
//! random cluster key, which `Config::parse` accepts as written. The addresses are
//! placeholders from the documentation ranges, marked for replacement.

use std::fmt::Write as _;

use super::{check_name, ConfigError};

/// The most nodes `config init` writes (heartbeats carry every node's registers).
pub const MAX_NODES: usize = 16;

/// The commented configuration of `nodes` nodes (`n1`, `n2`, ...) for cluster
/// `cluster` (named as nodes are: it goes into TOML, heartbeats and metric labels)
/// with key `key`.
pub fn template(cluster: &str, nodes: usize, key: &str) -> Result<String, ConfigError> {
    check_name(cluster, "--cluster")?;
    let mut s = format!(
        "# Tandem configuration for {nodes} node(s), written by `tandem config init`.\n\
         # The same file goes on every node (`tandem config check FILE` validates it).\n\
         # Replace every address marked REPLACE; unknown keys are errors.\n\n\
         [cluster]\nname = \"{cluster}\"\n\
         # The shared secret of every heartbeat and replication link (fresh and random).\n\
         # Keep this file mode 0600, or move the key to key_file (also mode 0600).\n\
         key = \"{key}\"\nstate_dir = \"/var/lib/tandem\"\n\n\
         [heartbeat]\ninterval = \"200ms\"\ndead_time = \"1s\"\n\
         # Two independent paths: a node is dead only when both are silent.\n\
         paths = [\"hb1\", \"hb2\"]\n\n"
    );
    s.push_str(&quorum_section(nodes));
    s.push_str(
        "\n[api]\nsocket = \"/run/tandem/tandem.sock\"\n\n\
         # Prometheus metrics: on a management address only (REPLACE 127.0.0.1).\n\
         [metrics]\nlisten = \"127.0.0.1:9776\"\n\n\
         # No SNMP access until you say who (README \"SNMP\"):\n\
         # [snmp]\n# listen = \"0.0.0.0:161\"\n\
         # [[snmp.community]]\n# name = \"a-long-random-community\"\n\
         # source = \"192.0.2.0/24\"\n\n\
         # priority 1 is the most preferred node.\n",
    );
    for i in 1..=nodes {
        let _ = write!(
            s,
            "[[node]]\nname = \"n{i}\"\npriority = {i}\n\
             addresses = {{ hb1 = \"198.51.100.{h}\", hb2 = \"203.0.113.{h}\" }}   # REPLACE\n\n",
            h = 10 + i
        );
    }
    s.push_str(GROUP_TEMPLATE);
    Ok(s)
}

/// `[quorum]`: a majority of three or more voters; two nodes are told about the
/// witness they need to be partition-safe.
fn quorum_section(nodes: usize) -> String {
    let mut s = String::from(
        "# Ownership through a replicated log among a majority of the voters (three or\n\
         # more: the nodes plus an optional witness).\n\
         [quorum]\nmode = \"auto\"\n",
    );
    if nodes == 2 {
        s.push_str(
            "# Two nodes are not partition-safe alone: run `tandem witness` at a third\n\
             # site and name it here (README \"Quorum\").\n\
             # [witness]\n# name = \"w\"\n# addresses = { hb1 = \"198.51.100.9\" }\n",
        );
    }
    s
}

/// A fresh cluster key: 32 hex digits (128 bits) from the thread's CSPRNG, which the
/// OS seeds.
pub fn random_key() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..32)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect()
}

/// A first group, commented out: a floating IP and a supervised service.
const GROUP_TEMPLATE: &str = "# A group moves as one: resources start in dependency order.\n\
# [[group]]\n\
# name = \"app\"\n\
# switchback = \"manual\"\n\
# [[group.resource]]\n\
# name = \"vip\"\n\
# kind = \"ip\"\n\
# address = \"192.0.2.100/24\"      # REPLACE\n\
# interface = \"eth0\"\n\
# [[group.resource]]\n\
# name = \"service\"\n\
# kind = \"process\"\n\
# command = [\"/usr/local/bin/my-service\", \"--foreground\"]\n\
# depends_on = [\"vip\"]\n\
# quickcheck = { probe = \"tcp\", address = \"127.0.0.1:8080\" }\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_node_count_parses_with_its_key_and_nodes() {
        for n in 1..=MAX_NODES {
            let text = template("prod", n, "0123456789abcdef0123456789abcdef").unwrap();
            let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{n} nodes: {e}\n{text}"));
            assert_eq!(cfg.nodes.len(), n);
            assert_eq!(cfg.nodes[n - 1].name, format!("n{n}"));
            assert_eq!(cfg.cluster.name, "prod");
            assert_eq!(
                cfg.key_bytes().unwrap(),
                b"0123456789abcdef0123456789abcdef"
            );
            assert!(cfg.snmp.is_none(), "no SNMP access by default");
            assert_eq!(text.contains("[witness]"), n == 2, "{n} nodes");
        }
        let e = template("no \"quotes\"", 2, "0123456789abcdef").unwrap_err();
        assert!(e.to_string().contains("--cluster"), "{e}");
    }
}
