//! Reloading the configuration (`SIGHUP`, `tandem config reload`, `PUT /v1/config`):
//! which changes a running daemon takes at once and which wait for a restart.
//!
//! [`classify`] compares the running configuration with a new, fully validated one and
//! returns a [`ReloadPlan`]: the changes applied live, the ones that need a restart
//! (each named as an operator reads it: `group web resource http quickcheck
//! interval`, `node n1 address on path hb2`), and the configuration to run with from
//! now on (the running one with the live changes taken over). Applied live:
//!
//! - each resource's `quickcheck` and `deepcheck` (probe, interval, timeout): the
//!   group's executor takes them at its next monitor tick, nothing it runs is stopped;
//! - `api.token` while the TCP listener stays (a removed token would open the
//!   listener, so that waits for a restart with the listener's removal);
//! - `[[snmp.community]]` while the agent runs (it checks each request against the
//!   running list);
//! - `[[snmp.receiver]]` while the agent runs: the notifier follows the running
//!   configuration (`snmp::notify::NotifierHandle::follow`); an unchanged receiver
//!   keeps its queue.
//!
//! - each group's restart policy (`max_restarts`, `restart_window`): the node core
//!   takes it (`NodeInput::Reloaded`) and counts the next failure against it.
//!
//! Everything else needs a restart: nodes, heartbeat paths and addresses, keys,
//! mirrors, quorum, groups or resources added or removed or reshaped, SNMP
//! users (USM is built at start), the rest of
//! `[snmp]`, metrics, `[console]`. The console's users and tokens are not in this file
//! (`users.json` in the state directory) and are read at each login or request.
//!
//! [`admit`] is what a node checks before it takes a new file at all: the same
//! cluster, and a `[[node]]` for itself.

use serde::{Deserialize, Serialize};

use super::{CheckConfig, Config, GroupConfig};

/// Why a node refuses a new configuration.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the new configuration is for cluster `{new}`, this node is in cluster `{running}`")]
    OtherCluster { running: String, new: String },
    #[error("the new configuration has no [[node]] named `{0}` (this node)")]
    NotThisNode(String),
    #[error("the new configuration is invalid: {0}")]
    Invalid(#[from] super::ConfigError),
}

/// What a reload did: the changes applied, those that need a restart, and the
/// cluster digest of the file (see [`super::cluster_digest`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
    pub digest: String,
}

/// The result of [`classify`].
#[derive(Debug, Clone)]
pub struct ReloadPlan {
    /// Changes taken live, by name.
    pub applied: Vec<String>,
    /// Changes that take effect only after a restart, by name.
    pub needs_restart: Vec<String>,
    /// What runs from now on: the old configuration with the live changes.
    pub running: Config,
}

impl ReloadPlan {
    /// The answer to the operator.
    pub fn outcome(&self, digest: &str) -> ReloadOutcome {
        ReloadOutcome {
            applied: self.applied.clone(),
            needs_restart: self.needs_restart.clone(),
            digest: digest.to_string(),
        }
    }
}

/// Accepts `new` on node `local` running `running`: the same cluster name, and a
/// `[[node]]` for `local`. (`new` has passed [`Config::parse`] already.)
pub fn admit(running: &Config, new: &Config, local: &str) -> Result<(), ReloadError> {
    if new.cluster.name != running.cluster.name {
        return Err(ReloadError::OtherCluster {
            running: running.cluster.name.clone(),
            new: new.cluster.name.clone(),
        });
    }
    if new.node(local).is_none() {
        return Err(ReloadError::NotThisNode(local.to_string()));
    }
    Ok(())
}

/// Splits the changes from `old` (running) to `new` into live ones and ones that need
/// a restart.
pub fn classify(old: &Config, new: &Config) -> ReloadPlan {
    let mut running = old.clone();
    let mut applied = Vec::new();
    take_checks(&mut running, new, &mut applied);
    take_restart_policies(&mut running, new, &mut applied);
    if let (Some(run), Some(next)) = (running.snmp.as_mut(), new.snmp.as_ref()) {
        if run.communities != next.communities {
            run.communities.clone_from(&next.communities);
            applied.push("snmp communities".to_string());
        }
        // The notifier follows the running configuration: receivers (and the users
        // their v3 links sign with) change at the next notification.
        if run.receivers != next.receivers {
            run.receivers.clone_from(&next.receivers);
            applied.push("snmp receivers".to_string());
        }
    }
    let tcp_stays = old.api.tcp.is_some() && new.api.tcp.is_some();
    if tcp_stays && running.api.token != new.api.token {
        running.api.token = new.api.token.clone();
        applied.push("api token".to_string());
    }
    let needs_restart = restart_changes(&running, new);
    if needs_restart.is_empty() {
        running.digest = new.digest.clone();
    }
    ReloadPlan {
        applied,
        needs_restart,
        running,
    }
}

/// Takes over the restart policy (`max_restarts`, `restart_window`) of every group
/// that `running` and `new` both have: the node core counts failures against it from
/// the next one on.
fn take_restart_policies(running: &mut Config, new: &Config, applied: &mut Vec<String>) {
    for g in &mut running.groups {
        let Some(ng) = new.groups.iter().find(|n| n.name == g.name) else {
            continue;
        };
        if g.max_restarts != ng.max_restarts {
            g.max_restarts = ng.max_restarts;
            applied.push(format!("group {} max_restarts", g.name));
        }
        if g.restart_window != ng.restart_window {
            g.restart_window = ng.restart_window;
            applied.push(format!("group {} restart_window", g.name));
        }
    }
}

/// Takes over the checks of every resource that `running` and `new` both have (by
/// group and resource name), naming each change.
fn take_checks(running: &mut Config, new: &Config, applied: &mut Vec<String>) {
    for g in &mut running.groups {
        let Some(ng) = new.groups.iter().find(|n| n.name == g.name) else {
            continue;
        };
        for r in &mut g.resources {
            let Some(nr) = ng.resources.iter().find(|n| n.name == r.name) else {
                continue;
            };
            let at = format!("group {} resource {}", g.name, r.name);
            for (which, old, new) in [
                ("quickcheck", &mut r.quickcheck, &nr.quickcheck),
                ("deepcheck", &mut r.deepcheck, &nr.deepcheck),
            ] {
                check_changes(
                    &format!("{at} {which}"),
                    old.as_ref(),
                    new.as_ref(),
                    applied,
                );
                *old = new.clone();
            }
        }
    }
}

/// The names of what differs between two versions of one check.
fn check_changes(
    at: &str,
    old: Option<&CheckConfig>,
    new: Option<&CheckConfig>,
    out: &mut Vec<String>,
) {
    match (old, new) {
        (None, None) => {}
        (None, Some(_)) => out.push(format!("{at} added")),
        (Some(_), None) => out.push(format!("{at} removed")),
        (Some(a), Some(b)) => {
            if a.probe != b.probe {
                out.push(format!("{at} probe"));
            }
            if a.interval != b.interval {
                out.push(format!("{at} interval"));
            }
            if a.timeout != b.timeout {
                out.push(format!("{at} timeout"));
            }
        }
    }
}

/// Pushes `"{at} {field}"` for each listed field that differs between `$a` and `$b`.
macro_rules! fields {
    ($out:expr, $at:expr, $a:expr, $b:expr, [$($f:ident),* $(,)?]) => {
        $(
            if $a.$f != $b.$f {
                $out.push(format!("{} {}", $at, stringify!($f)));
            }
        )*
    };
}

/// Everything that still differs between what runs and the new file: each needs a
/// restart.
fn restart_changes(running: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b) = (running, new);
    fields!(
        out,
        "cluster",
        a.cluster,
        b.cluster,
        [
            name,
            key,
            key_file,
            state_dir,
            probe_vip_before_takeover,
            vip_probe_timeout,
            events_max_bytes,
            events_keep
        ]
    );
    fields!(
        out,
        "heartbeat",
        a.heartbeat,
        b.heartbeat,
        [interval, dead_time, port, paths, realtime_priority]
    );
    fields!(out, "api", a.api, b.api, [socket, tcp, token]);
    fields!(
        out,
        "quorum",
        a.quorum,
        b.quorum,
        [mode, lease, drift_ppm, stop_margin, watchdog]
    );
    if a.metrics != b.metrics {
        out.push("metrics".into());
    }
    if a.console != b.console {
        out.push("console".into());
    }
    snmp_changes(a, b, &mut out);
    if a.witness != b.witness {
        out.push("witness".into());
    }
    if a.image != b.image {
        out.push("image".into());
    }
    node_changes(a, b, &mut out);
    group_changes(a, b, &mut out);
    named_changes("mirror", &a.mirrors, &b.mirrors, |m| &m.name, &mut out);
    // A difference the names above miss (the order of entries) still needs a restart.
    let mut same = a.clone();
    same.digest.clone_from(&b.digest);
    if out.is_empty() && same != *b {
        out.push("the order of entries".into());
    }
    out
}

fn snmp_changes(a: &Config, b: &Config, out: &mut Vec<String>) {
    match (&a.snmp, &b.snmp) {
        (Some(x), Some(y)) => {
            fields!(
                out,
                "snmp",
                x,
                y,
                [
                    listen,
                    engine_id,
                    contact,
                    location,
                    allow_no_auth_no_priv,
                    communities,
                    users,
                    receivers
                ]
            );
        }
        (x, y) if x != y => out.push("snmp".into()),
        _ => {}
    }
}

fn node_changes(a: &Config, b: &Config, out: &mut Vec<String>) {
    named_added_removed("node", &a.nodes, &b.nodes, |n| &n.name, out);
    for x in &a.nodes {
        let Some(y) = b.node(&x.name) else { continue };
        let at = format!("node {}", x.name);
        fields!(out, at, x, y, [priority, fence]);
        let paths = x.addresses.keys().chain(y.addresses.keys());
        let mut named = std::collections::BTreeSet::new();
        for p in paths {
            if x.addresses.get(p) != y.addresses.get(p) && named.insert(p) {
                out.push(format!("{at} address on path {p}"));
            }
        }
    }
}

fn group_changes(a: &Config, b: &Config, out: &mut Vec<String>) {
    named_added_removed("group", &a.groups, &b.groups, |g| &g.name, out);
    for x in &a.groups {
        let Some(y) = b.groups.iter().find(|g| g.name == x.name) else {
            continue;
        };
        let at = format!("group {}", x.name);
        fields!(
            out,
            at,
            x,
            y,
            [nodes, exclusive, switchback, max_restarts, restart_window]
        );
        resource_changes(&at, x, y, out);
    }
}

fn resource_changes(at: &str, x: &GroupConfig, y: &GroupConfig, out: &mut Vec<String>) {
    named_added_removed(
        &format!("{at} resource"),
        &x.resources,
        &y.resources,
        |r| &r.name,
        out,
    );
    for r in &x.resources {
        let Some(s) = y.resources.iter().find(|s| s.name == r.name) else {
            continue;
        };
        let at = format!("{at} resource {}", r.name);
        if r.kind.name() != s.kind.name() {
            out.push(format!("{at} kind"));
        } else if r.kind != s.kind {
            out.push(format!("{at} {} settings", r.kind.name()));
        }
        fields!(out, at, r, s, [depends_on, quickcheck, deepcheck]);
    }
}

/// `"{what} NAME added"` / `"... removed"` for entries only one side has.
fn named_added_removed<T>(
    what: &str,
    a: &[T],
    b: &[T],
    name: impl Fn(&T) -> &String,
    out: &mut Vec<String>,
) {
    for x in a.iter().filter(|x| !b.iter().any(|y| name(y) == name(x))) {
        out.push(format!("{what} {} removed", name(x)));
    }
    for y in b.iter().filter(|y| !a.iter().any(|x| name(x) == name(y))) {
        out.push(format!("{what} {} added", name(y)));
    }
}

/// Added, removed, and `"{what} NAME"` for each entry that changed.
fn named_changes<T: PartialEq>(
    what: &str,
    a: &[T],
    b: &[T],
    name: impl Fn(&T) -> &String,
    out: &mut Vec<String>,
) {
    named_added_removed(what, a, b, &name, out);
    for x in a {
        if let Some(y) = b.iter().find(|y| name(y) == name(x)) {
            if x != y {
                out.push(format!("{what} {}", name(x)));
            }
        }
    }
}

#[cfg(test)]
mod tests;
