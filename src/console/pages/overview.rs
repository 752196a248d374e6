//! The overview page: the quorum (or two-node mode), the nodes with standby and online,
//! the heartbeat paths, the groups with their owner, state and why one is blocked, and
//! the mirrors with their role and each peer's sync state.

use crate::cluster::packet::LocalGroupState;
use crate::console::principal::Principal;
use crate::human::human_ms;
use crate::mirror::generation::DiskState;
use crate::status::{
    GroupStatus, GroupSummary, LinkState, MirrorStatus, NodeState, NodeStatus, Status,
};

use super::actions::{button, Action};
use super::html::{badge, escape, may_act, Tone};

/// The overview's `<main>` content.
pub fn render_overview(st: &Status, who: &Principal) -> String {
    let warning = st.warning.as_deref().map_or(String::new(), |w| {
        format!("<p class=\"warning\">{}</p>", escape(w))
    });
    format!(
        "{warning}<section><h1>Cluster {}</h1><p>{}</p></section>{}{}{}{}",
        escape(&st.cluster),
        quorum(st),
        nodes(st, who),
        paths(st),
        groups(st),
        mirrors(st)
    )
}

/// The quorum in one line.
fn quorum(st: &Status) -> String {
    let Some(q) = &st.quorum else {
        return format!(
            "{} two nodes without a witness: not partition-safe",
            badge(Tone::Warn, "two-node mode")
        );
    };
    let (tone, word) = if q.quorate {
        (Tone::Ok, "quorate")
    } else {
        (Tone::Bad, "no quorum")
    };
    format!(
        "{} {} of {} voters heard, term {}, leader {}",
        badge(tone, word),
        q.votes,
        q.voters.len(),
        q.term,
        escape(q.leader.as_deref().unwrap_or("none"))
    )
}

/// The tone of a node's state.
fn node_tone(s: NodeState) -> Tone {
    match s {
        NodeState::Online => Tone::Ok,
        NodeState::Standby => Tone::Warn,
        NodeState::Offline => Tone::Bad,
    }
}

fn nodes(st: &Status, who: &Principal) -> String {
    let rows: String = st.nodes.iter().map(|n| node_row(n, who)).collect();
    format!(
        "<section><h2>Nodes</h2><table><thead><tr><th>node</th><th>state</th>\
         <th>priority</th><th>paths up</th><th>last heard</th><th></th></tr></thead>\
         <tbody>{rows}</tbody></table></section>"
    )
}

fn node_row(n: &NodeStatus, who: &Principal) -> String {
    let action = match n.state() {
        _ if !may_act(who) => String::new(),
        NodeState::Standby => button(&Action::Online { node: &n.name }, &[]),
        _ => button(&Action::Standby { node: &n.name }, &[]),
    };
    format!(
        "<tr><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
        escape(&n.name),
        if n.local { " (this node)" } else { "" },
        badge(node_tone(n.state()), n.state().name()),
        n.priority,
        n.paths_up,
        n.last_heard_ms_ago
            .map_or("-".into(), |ms| format!("{} ago", human_ms(ms)))
    )
}

fn paths(st: &Status) -> String {
    let rows: String = st
        .paths
        .iter()
        .map(|p| {
            let (tone, word) = if p.up {
                (Tone::Ok, "up")
            } else {
                (Tone::Bad, "down")
            };
            format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&p.peer),
                escape(&p.path),
                badge(tone, word),
                p.rtt_ms.map_or("-".into(), |r| format!("{r:.2} ms"))
            )
        })
        .collect();
    format!(
        "<section><h2>Heartbeat paths</h2><table><thead><tr><th>peer</th><th>path</th>\
         <th>state</th><th>RTT</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )
}

/// The tone of a group's cluster-wide state.
pub fn group_tone(g: &GroupStatus) -> Tone {
    match g.summary {
        _ if g.blocked => Tone::Bad,
        GroupSummary::Running => Tone::Ok,
        GroupSummary::Starting | GroupSummary::Stopping => Tone::Warn,
        GroupSummary::Stopped => Tone::Idle,
        GroupSummary::Failed | GroupSummary::Split => Tone::Bad,
    }
}

/// The tone of a group's state on one node.
pub fn local_tone(s: LocalGroupState) -> Tone {
    match s {
        LocalGroupState::Running => Tone::Ok,
        LocalGroupState::Starting | LocalGroupState::Stopping => Tone::Warn,
        LocalGroupState::Stopped => Tone::Idle,
        LocalGroupState::Failed => Tone::Bad,
    }
}

fn groups(st: &Status) -> String {
    let rows: String = st
        .groups
        .iter()
        .map(|g| {
            let mut notes = Vec::new();
            if g.maintenance {
                notes.push(badge(Tone::Warn, "maintenance"));
            }
            if g.blocked {
                notes.push(badge(Tone::Bad, "blocked"));
            }
            if let Some(r) = &g.reason {
                notes.push(escape(r));
            }
            format!(
                "<tr><td><a href=\"/groups/{name}\">{name}</a></td><td>{}</td><td>{}</td>\
                 <td>{}</td></tr>",
                escape(g.owner.as_deref().unwrap_or("-")),
                badge(group_tone(g), g.summary.name()),
                notes.join(" "),
                name = escape(&g.name),
            )
        })
        .collect();
    format!(
        "<section><h2>Groups</h2><table><thead><tr><th>group</th><th>owner</th>\
         <th>state</th><th>notes</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )
}

/// The tone of a copy's disk state.
pub fn disk_tone(d: Option<DiskState>) -> Tone {
    match d {
        Some(DiskState::UpToDate | DiskState::SyncSource) => Tone::Ok,
        Some(DiskState::SyncTarget) => Tone::Warn,
        Some(DiskState::Outdated | DiskState::Inconsistent) => Tone::Bad,
        None => Tone::Idle,
    }
}

/// The tone of a replication link.
pub fn link_tone(l: LinkState) -> Tone {
    match l {
        LinkState::Connected => Tone::Ok,
        LinkState::Connecting | LinkState::Paused => Tone::Warn,
        LinkState::Disconnected => Tone::Idle,
        LinkState::SplitBrain | LinkState::Refused => Tone::Bad,
    }
}

fn mirrors(st: &Status) -> String {
    if st.mirrors.is_empty() {
        return String::new();
    }
    let rows: String = st.mirrors.iter().map(mirror_row).collect();
    format!(
        "<section><h2>Mirrors</h2><table><thead><tr><th>mirror</th><th>role</th>\
         <th>disk</th><th>peers</th></tr></thead><tbody>{rows}</tbody></table></section>"
    )
}

fn mirror_row(m: &MirrorStatus) -> String {
    let peers: Vec<String> = m
        .peers
        .iter()
        .map(|p| {
            format!(
                "{} {} {}",
                escape(&p.node),
                badge(link_tone(p.connection), p.connection.name()),
                badge(
                    disk_tone(p.peer_disk),
                    p.peer_disk.map_or("unknown", DiskState::name)
                )
            )
        })
        .collect();
    format!(
        "<tr><td><a href=\"/mirrors/{name}\">{name}</a></td><td>{}</td><td>{}</td>\
         <td>{}</td></tr>",
        escape(&m.role.to_string()),
        badge(disk_tone(Some(m.disk)), m.disk.name()),
        peers.join("<br>"),
        name = escape(&m.name),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::principal::Role;

    fn who(role: Role) -> Principal {
        Principal {
            name: "ann".into(),
            role,
            csrf: "t".into(),
        }
    }

    #[test]
    fn the_overview_shows_quorum_nodes_paths_groups_and_mirrors() {
        let html = render_overview(&Status::sample(), &who(Role::Viewer));
        assert!(html.contains("two-node mode"), "{html}");
        assert!(html.contains("alpha (this node)"));
        assert!(html.contains("<span class=\"badge ok\">online</span>"));
        assert!(html.contains(
            "<td>beta</td><td>lan</td><td><span class=\"badge ok\">up</span></td><td>0.25 ms</td>"
        ));
        assert!(html.contains("<a href=\"/groups/web\">web</a></td><td>alpha</td><td><span class=\"badge ok\">running</span>"));
        assert!(html.contains("<a href=\"/mirrors/vol\">vol</a></td><td>primary</td>"));
        assert!(html.contains("beta <span class=\"badge ok\">connected</span> <span class=\"badge warn\">sync_target</span>"));
        assert!(html.contains("gamma <span class=\"badge bad\">split_brain</span> <span class=\"badge idle\">unknown</span>"));
    }

    #[test]
    fn a_blocked_group_shows_why_and_a_quorum_shows_its_votes() {
        let mut st = Status::sample();
        st.groups[0].blocked = true;
        st.groups[0].reason = Some("`db` failed <3> times".into());
        st.quorum = Some(crate::status::QuorumView {
            quorate: false,
            role: crate::quorum::core::Role::Follower,
            term: 7,
            leader: None,
            commit_index: 3,
            votes: 1,
            voters: vec![],
            leases: vec![],
            fencing: vec![],
        });
        let html = render_overview(&st, &who(Role::Viewer));
        assert!(
            html.contains("<span class=\"badge bad\">blocked</span> `db` failed &lt;3&gt; times")
        );
        assert!(
            html.contains("<span class=\"badge bad\">no quorum</span> 1 of 0 voters heard, term 7")
        );
    }

    #[test]
    fn node_actions_only_for_operators_and_online_for_a_standby_node() {
        let mut st = Status::sample();
        assert!(!render_overview(&st, &who(Role::Viewer)).contains("class=\"act"));
        st.nodes[1].standby = true;
        let html = render_overview(&st, &who(Role::Operator));
        assert!(html.contains("data-command=\"tandem node standby alpha\""));
        assert!(html.contains("data-command=\"tandem node online beta\""));
    }
}
