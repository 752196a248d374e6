//! `tandem config push [FILE]`: the file goes to every node it names, over each node's
//! TCP API (`PUT /v1/config`); each node validates it, writes it and reloads it, and
//! answers with what it applied, what needs a restart and the file's cluster digest.
//!
//! A node is reached at its address on a heartbeat path (the first that connects, in
//! the order of `heartbeat.paths`) and the port of `[api] tcp`, with the bearer token
//! of `[api] token` (or `--token`: the token the nodes run with, when the file
//! changes it). The push succeeds when every node took the file and every digest is
//! the file's.

use std::net::SocketAddr;

use serde::Serialize;

use crate::api::client::{call_text, Endpoint};
use crate::api::ApiError;
use crate::config::reload::ReloadOutcome;
use crate::config::Config;

/// Where one node's API is: its address on each heartbeat path, in path order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushTarget {
    pub node: String,
    pub addresses: Vec<SocketAddr>,
}

/// One node's answer, or why it has none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeResult {
    pub node: String,
    #[serde(flatten)]
    pub outcome: PushOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushOutcome {
    Taken(ReloadOutcome),
    Error(String),
}

/// Every node of `cfg` and where its TCP API is; an error when `cfg` has no `[api] tcp`.
pub fn targets(cfg: &Config) -> Result<Vec<PushTarget>, String> {
    let Some(tcp) = cfg.api.tcp else {
        return Err("push reaches each node's TCP API: set [api] tcp and token".into());
    };
    Ok(cfg
        .nodes
        .iter()
        .map(|n| PushTarget {
            node: n.name.clone(),
            addresses: cfg
                .heartbeat
                .paths
                .iter()
                .filter_map(|p| n.addresses.get(p))
                .map(|ip| SocketAddr::new(*ip, tcp.port()))
                .collect(),
        })
        .collect())
}

/// Whether the push worked: every node took the file, and each answered with the
/// file's digest `expected`. The error names the nodes.
pub fn verdict(expected: &str, results: &[NodeResult]) -> Result<(), String> {
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| matches!(r.outcome, PushOutcome::Error(_)))
        .map(|r| r.node.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(format!("not taken by {}", failed.join(", ")));
    }
    let differ: Vec<String> = results
        .iter()
        .filter_map(|r| match &r.outcome {
            PushOutcome::Taken(o) if o.digest != expected => {
                Some(format!("{} ({})", r.node, o.digest))
            }
            _ => None,
        })
        .collect();
    if !differ.is_empty() {
        return Err(format!(
            "digest {expected} expected, but {}",
            differ.join(", ")
        ));
    }
    Ok(())
}

/// One line per node: its digest, what it applied and what needs a restart, or the
/// error.
pub fn render(results: &[NodeResult]) -> String {
    let width = results.iter().map(|r| r.node.len()).max().unwrap_or(0);
    results
        .iter()
        .map(|r| match &r.outcome {
            PushOutcome::Taken(o) => format!(
                "{:width$}  digest {}  applied: {}  needs restart: {}\n",
                r.node,
                o.digest,
                list(&o.applied),
                list(&o.needs_restart)
            ),
            PushOutcome::Error(e) => format!("{:width$}  error: {e}\n", r.node),
        })
        .collect()
}

/// The names of a reload's changes, comma-separated, or `-` for none.
pub fn list(changes: &[String]) -> String {
    if changes.is_empty() {
        "-".to_string()
    } else {
        changes.join(", ")
    }
}

/// Sends `text` to every target at once; each node's result, in target order.
pub async fn push(text: &str, targets: &[PushTarget], token: Option<String>) -> Vec<NodeResult> {
    let all = targets.iter().map(|t| async {
        let outcome = match push_one(text, t, token.clone()).await {
            Ok(o) => PushOutcome::Taken(o),
            Err(e) => PushOutcome::Error(e.to_string()),
        };
        NodeResult {
            node: t.node.clone(),
            outcome,
        }
    });
    futures::future::join_all(all).await
}

/// `PUT /v1/config` at the first of the node's addresses that connects.
async fn push_one(
    text: &str,
    t: &PushTarget,
    token: Option<String>,
) -> Result<ReloadOutcome, ApiError> {
    let mut last = ApiError::Status(format!("node `{}` has no address", t.node));
    for addr in &t.addresses {
        let ep = Endpoint::Tcp {
            addr: addr.to_string(),
            token: token.clone(),
        };
        match call_text(&ep, "PUT", "/v1/config", text.to_string()).await {
            Err(e @ ApiError::Connect(..)) => last = e,
            other => return other,
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(node: &str, digest: &str) -> NodeResult {
        NodeResult {
            node: node.into(),
            outcome: PushOutcome::Taken(ReloadOutcome {
                applied: vec!["group web resource http quickcheck interval".into()],
                needs_restart: Vec::new(),
                digest: digest.into(),
            }),
        }
    }

    #[test]
    fn every_node_is_reached_on_its_paths_at_the_api_port() {
        let cfg =
            Config::parse(&crate::config::TWO_NODES.replace("127.0.0.1:7000", "0.0.0.0:7000"))
                .unwrap();
        let t = targets(&cfg).unwrap();
        assert_eq!(
            t,
            [
                PushTarget {
                    node: "a".into(),
                    addresses: vec![
                        "10.0.0.1:7000".parse().unwrap(),
                        "10.0.1.1:7000".parse().unwrap()
                    ],
                },
                PushTarget {
                    node: "b".into(),
                    addresses: vec![
                        "10.0.0.2:7000".parse().unwrap(),
                        "10.0.1.2:7000".parse().unwrap()
                    ],
                }
            ]
        );
        let mut no_tcp = cfg.clone();
        no_tcp.api.tcp = None;
        assert!(targets(&no_tcp).unwrap_err().contains("[api] tcp"));
    }

    #[test]
    fn a_push_holds_only_when_every_node_took_the_same_digest() {
        assert_eq!(verdict("d1", &[taken("a", "d1"), taken("b", "d1")]), Ok(()));
        let e = verdict("d1", &[taken("a", "d1"), taken("b", "d2")]).unwrap_err();
        assert_eq!(e, "digest d1 expected, but b (d2)");
        let refused = NodeResult {
            node: "c".into(),
            outcome: PushOutcome::Error("refused".into()),
        };
        let e = verdict("d1", &[taken("a", "d1"), refused.clone()]).unwrap_err();
        assert_eq!(e, "not taken by c");
        let text = render(&[taken("a", "d1"), refused]);
        assert_eq!(
            text,
            "a  digest d1  applied: group web resource http quickcheck interval  needs restart: -\n\
             c  error: refused\n"
        );
    }
}
