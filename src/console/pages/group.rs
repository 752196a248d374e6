//! A group's page: its state on every node, the resource hierarchy as a tree (each
//! resource under the ones that depend on it, with its state per node and its last
//! failed check from the events), restarts in the window, the blocked reason with the
//! Clear action, maintenance, and a switchover per target that first warns of a move
//! that leaves the group less protected ([`switchover_warnings`]).

use std::collections::BTreeMap;

use crate::cluster::packet::LocalGroupState;
use crate::console::principal::Principal;
use crate::event::{Event, EventKind};
use crate::human::{human_bytes, utc_seconds};
use crate::status::{
    CheckView, GroupStatus, LinkState, MirrorRole, MirrorStatus, NodeState, ResourceView, Status,
};

use super::actions::{button, Action};
use super::html::{badge, escape, may_act, Tone};
use super::overview::{group_tone, local_tone};

/// What a switchover of `group` to `target` would cost in protection, in words: the
/// target is offline or in standby, or its copy of one of the group's mirrors is not
/// up to date (or this node cannot tell). Empty when the move is safe as far as this
/// node can see.
pub fn switchover_warnings(st: &Status, group: &str, target: &str) -> Vec<String> {
    let mut out = Vec::new();
    match st
        .nodes
        .iter()
        .find(|n| n.name == target)
        .map(|n| n.state())
    {
        None => out.push(format!("{target} is not a node of this cluster")),
        Some(NodeState::Offline) => {
            out.push(format!("{target} is offline: the group cannot start there"))
        }
        Some(NodeState::Standby) => out.push(format!(
            "{target} is in standby: it runs no group, so the group would not stay there"
        )),
        Some(NodeState::Online) => {}
    }
    out.extend(
        st.mirrors
            .iter()
            .filter(|m| m.group.as_deref() == Some(group))
            .filter_map(|m| copy_warning(st, m, target)),
    );
    out
}

/// Why `target`'s copy of `m` is not a safe place to serve from, if it is not.
fn copy_warning(st: &Status, m: &MirrorStatus, target: &str) -> Option<String> {
    let name = &m.name;
    if target == st.node {
        return (!m.disk.promotable()).then(|| {
            format!(
                "{target}'s copy of mirror {name} is {}: not up to date",
                m.disk.name()
            )
        });
    }
    let Some(p) = m.peers.iter().find(|p| p.node == target) else {
        return Some(match m.role {
            MirrorRole::Primary => format!("{target} holds no copy of mirror {name}"),
            MirrorRole::Secondary => format!(
                "this node cannot see {target}'s copy of mirror {name}: check it on the \
                 owner's console"
            ),
        });
    };
    if p.connection != LinkState::Connected {
        return Some(format!(
            "the link to {target}'s copy of mirror {name} is {}: it may miss writes",
            p.connection.name()
        ));
    }
    match p.peer_disk {
        Some(d) if d.promotable() && p.out_of_sync_bytes == 0 => None,
        d => Some(format!(
            "{target}'s copy of mirror {name} is {}: not up to date ({} out of sync)",
            d.map_or("unknown", |d| d.name()),
            human_bytes(p.out_of_sync_bytes)
        )),
    }
}

/// The group page's `<main>` content, or None for a group this node does not know.
pub fn render_group(st: &Status, events: &[Event], name: &str, who: &Principal) -> Option<String> {
    let g = st.groups.iter().find(|g| g.name == name)?;
    let resources: Vec<&ResourceView> = st.resources.iter().filter(|r| r.group == name).collect();
    Some(format!(
        "<section><h1>Group {} {}</h1><p>owner <b>{}</b>, epoch {}{}</p>{}</section>\
         <section><h2>Resources</h2>{}</section>{}",
        escape(name),
        badge(group_tone(g), g.summary.name()),
        escape(g.owner.as_deref().unwrap_or("none")),
        g.epoch,
        if g.maintenance {
            format!(" {}", badge(Tone::Warn, "maintenance"))
        } else {
            String::new()
        },
        health(g, who),
        tree(g, &resources, events),
        if may_act(who) {
            actions(st, g)
        } else {
            String::new()
        },
    ))
}

/// Restarts in the window, the block and its reason, and Clear.
fn health(g: &GroupStatus, who: &Principal) -> String {
    let mut out = format!(
        "<p>{} restart(s) in the window on this node</p>",
        g.recent_failures
    );
    if let Some(r) = &g.reason {
        let word = if g.blocked { "blocked" } else { "not running" };
        out.push_str(&format!(
            "<p class=\"blocked\">{} {}</p>",
            badge(Tone::Bad, word),
            escape(r)
        ));
    }
    if may_act(who) && (g.blocked || g.recent_failures > 0) {
        out.push_str(&button(&Action::Clear { group: &g.name }, &[]));
    }
    out
}

/// The hierarchy: the group at the root, then each resource nothing depends on, each
/// with the resources it depends on under it.
fn tree(g: &GroupStatus, resources: &[&ResourceView], events: &[Event]) -> String {
    let by_name: BTreeMap<&str, &ResourceView> = resources
        .iter()
        .copied()
        .map(|r| (r.name.as_str(), r))
        .collect();
    let tops = resources
        .iter()
        .copied()
        .filter(|r| !resources.iter().any(|o| o.depends_on.contains(&r.name)));
    let items: String = tops
        .map(|r| branch(g, r, &by_name, events, &mut Vec::new()))
        .collect();
    format!(
        "<ul class=\"tree\"><li><span class=\"node group\">{} {}</span><ul>{items}</ul></li></ul>",
        escape(&g.name),
        states(&g.states)
    )
}

/// One resource and, under it, what it depends on; `path` guards against a cycle.
fn branch<'a>(
    g: &GroupStatus,
    r: &'a ResourceView,
    by_name: &BTreeMap<&str, &'a ResourceView>,
    events: &[Event],
    path: &mut Vec<&'a str>,
) -> String {
    if path.contains(&r.name.as_str()) {
        return String::new();
    }
    path.push(&r.name);
    let under: String = r
        .depends_on
        .iter()
        .filter_map(|d| by_name.get(d.as_str()).copied())
        .map(|d| branch(g, d, by_name, events, path))
        .collect();
    path.pop();
    let under = if under.is_empty() {
        String::new()
    } else {
        format!("<ul>{under}</ul>")
    };
    format!(
        "<li><span class=\"node\"><b>{}</b> <span class=\"kind\">{}</span> {} {}</span>{under}</li>",
        escape(&r.name),
        r.kind.name(),
        states(&g.states),
        last_check(r, events)
    )
}

/// The group's (so each of its resources') state on every node.
fn states(states: &BTreeMap<String, LocalGroupState>) -> String {
    states
        .iter()
        .map(|(node, s)| {
            format!(
                "<span class=\"on\">{}: {}</span>",
                escape(node),
                badge(local_tone(*s), s.name())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The resource's last check results on this node (from the status) and its latest
/// restart among the recent events.
fn last_check(r: &ResourceView, events: &[Event]) -> String {
    let checks = if r.configured_checks.is_empty() {
        "<span class=\"check\">no check configured (its built-in monitor only)</span>".to_string()
    } else if r.checks.is_empty() {
        "<span class=\"check\">no check has run on this node</span>".to_string()
    } else {
        r.checks
            .iter()
            .map(check_result)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let restarted = events
        .iter()
        .rev()
        .find(|e| {
            e.kind == EventKind::ResourceRestarted
                && e.fields.get("group") == Some(&r.group)
                && e.fields.get("resource") == Some(&r.name)
        })
        .map_or(String::new(), |e| {
            format!(
                " <span class=\"check\">restarted {}</span>",
                utc_seconds(e.time_ms)
            )
        });
    let lease = r.disk_lease.as_ref().map_or(String::new(), |l| {
        format!(
            " <span class=\"check\">disk lease {}</span>",
            escape(&l.describe())
        )
    });
    checks + &restarted + &lease
}

/// One check's last run: passed (when, how long) or failed (when, why).
fn check_result(c: &CheckView) -> String {
    match &c.error {
        None => format!(
            "<span class=\"check\">{} passed {} ({} ms)</span>",
            c.kind.name(),
            utc_seconds(c.at_ms),
            c.took_ms
        ),
        Some(e) => format!(
            "<span class=\"check bad\">{} failed {}: {}</span>",
            c.kind.name(),
            utc_seconds(c.at_ms),
            escape(e)
        ),
    }
}

/// Switchover to each other node (warnings first), and maintenance on or off.
fn actions(st: &Status, g: &GroupStatus) -> String {
    let moves: String = st
        .nodes
        .iter()
        .filter(|n| g.owner.as_deref() != Some(n.name.as_str()))
        .map(|n| {
            let warnings = switchover_warnings(st, &g.name, &n.name);
            button(
                &Action::Switchover {
                    group: &g.name,
                    to: &n.name,
                },
                &warnings,
            )
        })
        .collect();
    let maintenance = button(
        &Action::Maintenance {
            group: &g.name,
            on: !g.maintenance,
        },
        &[],
    );
    format!("<section><h2>Actions</h2><p>{moves} {maintenance}</p></section>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::principal::Role;
    use crate::event::fields;
    use crate::mirror::generation::DiskState;
    use crate::status::ResourceType;

    fn who(role: Role) -> Principal {
        Principal {
            name: "ann".into(),
            role,
            csrf: "t".into(),
        }
    }

    /// The sample with `beta`'s copy of `vol` caught up.
    fn in_sync() -> Status {
        let mut st = Status::sample();
        let beta = &mut st.mirrors[0].peers[0];
        beta.peer_disk = Some(DiskState::UpToDate);
        beta.out_of_sync_bytes = 0;
        beta.resync = None;
        st
    }

    #[test]
    fn a_target_whose_copy_is_behind_is_warned_of() {
        let w = switchover_warnings(&Status::sample(), "web", "beta");
        assert_eq!(
            w,
            ["beta's copy of mirror vol is sync_target: not up to date (3.0 MiB out of sync)"]
        );
        assert!(switchover_warnings(&in_sync(), "web", "beta").is_empty());
        assert!(switchover_warnings(&Status::sample(), "db", "beta").is_empty());
    }

    #[test]
    fn a_standby_or_offline_target_is_warned_of() {
        let mut st = in_sync();
        st.nodes[1].standby = true;
        assert_eq!(
            switchover_warnings(&st, "db", "beta"),
            ["beta is in standby: it runs no group, so the group would not stay there"]
        );
        st.nodes[1].alive = false;
        assert_eq!(
            switchover_warnings(&st, "db", "beta"),
            ["beta is offline: the group cannot start there"]
        );
        assert_eq!(
            switchover_warnings(&st, "db", "zeta"),
            ["zeta is not a node of this cluster"]
        );
    }

    #[test]
    fn a_disconnected_or_missing_copy_and_a_stale_local_copy_are_warned_of() {
        let mut st = in_sync();
        st.mirrors[0].peers[0].connection = LinkState::Paused;
        assert_eq!(
            switchover_warnings(&st, "web", "beta"),
            ["the link to beta's copy of mirror vol is paused: it may miss writes"]
        );
        st.mirrors[0].peers.remove(0);
        assert_eq!(
            switchover_warnings(&st, "web", "beta"),
            ["beta holds no copy of mirror vol"]
        );
        st.mirrors[0].disk = DiskState::Outdated;
        assert_eq!(
            switchover_warnings(&st, "web", "alpha"),
            ["alpha's copy of mirror vol is outdated: not up to date"]
        );
    }

    fn with_hierarchy() -> Status {
        let mut st = Status::sample();
        let res = |name: &str, kind, deps: &[&str]| ResourceView {
            group: "web".into(),
            name: name.into(),
            kind,
            state: LocalGroupState::Running,
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            configured_checks: Vec::new(),
            checks: Vec::new(),
            disk_lease: None,
        };
        st.resources = vec![
            res("disk", ResourceType::Mirror, &[]),
            res("fs", ResourceType::Filesystem, &["disk"]),
            res("vip", ResourceType::Ip, &[]),
            res("app", ResourceType::Process, &["fs", "vip"]),
        ];
        st
    }

    #[test]
    fn the_tree_nests_each_resource_under_what_depends_on_it() {
        let html = render_group(&with_hierarchy(), &[], "web", &who(Role::Viewer)).unwrap();
        let at = |s: &str| html.find(s).unwrap_or_else(|| panic!("{s} in {html}"));
        // app is the only top; fs and vip under it; disk under fs.
        assert_eq!(html.matches("<b>app</b>").count(), 1);
        assert!(at("<b>app</b>") < at("<b>fs</b>"));
        assert!(at("<b>fs</b>") < at("<b>disk</b>"));
        assert!(at("<b>disk</b>") < at("<b>vip</b>"));
        assert!(html.contains("<b>fs</b> <span class=\"kind\">filesystem</span> <span class=\"on\">alpha: <span class=\"badge ok\">running</span></span> <span class=\"on\">beta: <span class=\"badge idle\">stopped</span></span>"));
        assert_eq!(html.matches("no check configured").count(), 4);
        let mut app = with_hierarchy();
        app.resources[3].configured_checks = vec![crate::status::CheckKind::Quickcheck];
        let html = render_group(&app, &[], "web", &who(Role::Viewer)).unwrap();
        assert_eq!(html.matches("no check configured").count(), 3);
        assert_eq!(html.matches("no check has run on this node").count(), 1);
        assert!(!html.contains("class=\"act"), "a viewer gets no buttons");
    }

    #[test]
    fn the_last_check_results_and_the_block_are_shown_with_clear() {
        use crate::status::CheckKind;
        let mut st = with_hierarchy();
        let check = |kind, error: Option<&str>| CheckView {
            kind,
            at_ms: 1_700_000_000_000,
            took_ms: 4,
            error: error.map(str::to_string),
        };
        st.resources[3].configured_checks = vec![CheckKind::Quickcheck, CheckKind::Deepcheck];
        st.resources[3].checks = vec![
            check(CheckKind::Quickcheck, Some("http 500 <oops>")),
            check(CheckKind::Deepcheck, None),
        ];
        st.groups[1].blocked = true;
        st.groups[1].recent_failures = 3;
        st.groups[1].reason = Some("`app` failed 3 times within 60 s: <exit 1>".into());
        let e = Event {
            seq: 7,
            node: "alpha".into(),
            time_ms: 1_700_000_000_000,
            kind: EventKind::ResourceRestarted,
            fields: fields([("group", "web".into()), ("resource", "app".into())]),
        };
        let html = render_group(&st, &[e], "web", &who(Role::Operator)).unwrap();
        assert!(
            html.contains(
                "quickcheck failed 2023-11-14T22:13:20Z: http 500 &lt;oops&gt;</span> \
                 <span class=\"check\">deepcheck passed 2023-11-14T22:13:20Z (4 ms)</span> \
                 <span class=\"check\">restarted 2023-11-14T22:13:20Z</span>"
            ),
            "{html}"
        );
        assert!(html.contains("3 restart(s) in the window"));
        assert!(html.contains("<span class=\"badge bad\">blocked</span> `app` failed 3 times within 60 s: &lt;exit 1&gt;"));
        assert!(html.contains("data-command=\"tandem group clear web\""));
        assert!(html.contains("data-command=\"tandem switchover web --to beta\""));
        assert!(
            html.contains("class=\"act risky\""),
            "beta's copy is behind"
        );
        assert!(html.contains("data-command=\"tandem group maintenance web on\""));
        assert!(render_group(&st, &[], "nope", &who(Role::Operator)).is_none());
    }
}
