//! A mirror's page: this copy (role, disk, size, generation, held writes, the recovery
//! point its primary last reported) and each peer
//! link (mode, connection, the peer's disk, out-of-sync bytes, lag against its budget,
//! a resync progress bar with rate and ETA, the last verify), with pause, resume,
//! verify and full resync per peer.

use crate::console::principal::Principal;
use crate::control::MirrorAction;
use crate::human::{human_bytes, human_ms};
use crate::mirror::generation::DiskState;
use crate::status::{MirrorPeerStatus, MirrorStatus, ResyncStatus, Status};

use super::actions::{button, Action};
use super::html::{badge, escape, may_act, Tone};
use super::overview::{disk_tone, link_tone};

/// The mirror page's `<main>` content, or None for a mirror this node holds no copy of.
pub fn render_mirror(st: &Status, name: &str, who: &Principal) -> Option<String> {
    let m = st.mirrors.iter().find(|m| m.name == name)?;
    let group = m.group.as_deref().map_or(String::new(), |g| {
        format!(
            ", used by group <a href=\"/groups/{g}\">{g}</a>",
            g = escape(g)
        )
    });
    let frozen = if m.io_frozen {
        format!(" {}", badge(Tone::Warn, "writes held"))
    } else {
        String::new()
    };
    let recovery = m.recovery_point.as_ref().map_or(String::new(), |r| {
        format!(
            "; recovery point: up to {} behind {} ({} of writes), as {} last reported",
            human_bytes(r.lag_bytes),
            escape(&r.primary),
            human_ms(u64::from(r.lag_ms)),
            escape(&r.primary)
        )
    });
    let peers: String = m.peers.iter().map(|p| peer(m, p, who)).collect();
    Some(format!(
        "<section><h1>Mirror {}</h1><p>this copy: {} {}{frozen}, {}, generation <code>{}</code>{group}{recovery}</p></section>{peers}\
         <section><h2>Link sizing</h2><div id=\"plan\" data-mirror=\"{}\">Sizing the link from the write history…</div></section>",
        escape(&m.name),
        escape(&m.role.to_string()),
        badge(disk_tone(Some(m.disk)), m.disk.name()),
        human_bytes(m.size_bytes),
        escape(&m.generation),
        escape(&m.name),
    ))
}

/// One peer link: its states, numbers and actions.
fn peer(m: &MirrorStatus, p: &MirrorPeerStatus, who: &Principal) -> String {
    let rows = [
        ("mode", escape(p.mode.name())),
        (
            "connection",
            badge(link_tone(p.connection), p.connection.name()),
        ),
        (
            "peer disk",
            badge(
                disk_tone(p.peer_disk),
                p.peer_disk.map_or("unknown", DiskState::name),
            ),
        ),
        ("out of sync", human_bytes(p.out_of_sync_bytes)),
        ("lag", lag(p)),
        ("resync", p.resync.as_ref().map_or("-".into(), resync)),
        ("last verify", verify(p)),
    ];
    let table: String = rows
        .iter()
        .map(|(k, v)| format!("<tr><th>{k}</th><td>{v}</td></tr>"))
        .collect();
    let actions = if may_act(who) {
        let act = |action: MirrorAction| {
            button(
                &Action::Mirror {
                    mirror: &m.name,
                    action,
                    peer: Some(&p.node),
                },
                &[],
            )
        };
        format!(
            "<p>{}{}{}{}</p>",
            act(MirrorAction::Pause),
            act(MirrorAction::Resume),
            act(MirrorAction::Verify),
            act(MirrorAction::ResyncFull)
        )
    } else {
        String::new()
    };
    format!(
        "<section><h2>Peer {}</h2><table class=\"kv\">{table}</table>{actions}</section>",
        escape(&p.node)
    )
}

/// Lag in bytes and seconds, against the budget when there is one.
fn lag(p: &MirrorPeerStatus) -> String {
    let text = format!("{}, {:.1} s", human_bytes(p.lag_bytes), p.lag_seconds);
    match p.lag_budget_seconds {
        Some(b) if b > 0.0 => {
            let tone = if p.lag_seconds > b {
                Tone::Bad
            } else {
                Tone::Ok
            };
            format!(
                "<meter min=\"0\" max=\"{b}\" high=\"{high}\" value=\"{v}\"></meter> {text} of a \
                 {b:.1} s budget {}",
                badge(tone, if tone == Tone::Ok { "within" } else { "over" }),
                high = b * 0.8,
                v = p.lag_seconds.min(b),
            )
        }
        _ => text,
    }
}

/// The progress bar, with done of total, rate and ETA.
fn resync(r: &ResyncStatus) -> String {
    let pct = r.done_bytes as f64 * 100.0 / r.total_bytes.max(1) as f64;
    format!(
        "<progress max=\"{}\" value=\"{}\"></progress> {pct:.0}% ({} of {}), {}{} at {}/s, ETA {}",
        r.total_bytes,
        r.done_bytes,
        human_bytes(r.done_bytes),
        human_bytes(r.total_bytes),
        r.direction,
        if r.full { " full" } else { "" },
        human_bytes(r.bytes_per_second as u64),
        r.eta_seconds
            .map_or("-".into(), |s| human_ms((s * 1000.0) as u64)),
    )
}

fn verify(p: &MirrorPeerStatus) -> String {
    let Some(v) = &p.verify else {
        return "none since the daemon started".into();
    };
    if v.running {
        return format!(
            "<progress max=\"{}\" value=\"{}\"></progress> running",
            v.total_bytes, v.checked_bytes
        );
    }
    let (tone, word) = if v.out_of_sync_bytes == 0 {
        (Tone::Ok, "identical")
    } else {
        (Tone::Bad, "differed")
    };
    format!(
        "{} {} checked, {} out of sync",
        badge(tone, word),
        human_bytes(v.checked_bytes),
        human_bytes(v.out_of_sync_bytes)
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
    fn the_mirror_page_shows_peers_states_and_the_resync_bar() {
        let html = render_mirror(&Status::sample(), "vol", &who(Role::Viewer)).unwrap();
        assert!(html.contains("this copy: primary <span class=\"badge ok\">sync_source</span> <span class=\"badge warn\">writes held</span>, 1.0 GiB"), "{html}");
        assert!(html.contains("<a href=\"/groups/web\">web</a>"));
        assert!(html.contains("<progress max=\"4194304\" value=\"1048576\"></progress> 25% (1.0 MiB of 4.0 MiB), source at 976.6 KiB/s, ETA 2.200 s"), "{html}");
        assert!(html.contains("<th>out of sync</th><td>3.0 MiB</td>"));
        assert!(html.contains("<span class=\"badge bad\">split_brain</span>"));
        assert!(
            html.contains(
                "4.0 KiB, 1.2 s of a 5.0 s budget <span class=\"badge ok\">within</span>"
            ),
            "{html}"
        );
        assert!(html.contains("<span class=\"badge ok\">identical</span> 1.0 GiB checked"));
        assert!(!html.contains("class=\"act"));
        assert!(render_mirror(&Status::sample(), "nope", &who(Role::Viewer)).is_none());
    }

    #[test]
    fn a_secondary_shows_the_recovery_point_its_primary_reported() {
        let mut st = Status::sample();
        st.mirrors[0].recovery_point = Some(crate::mirror::recovery::RecoveryPoint {
            mirror: "vol".into(),
            primary: "<n1>".into(),
            lag_bytes: 3 << 20,
            lag_ms: 1500,
            reported_ms: 0,
        });
        let html = render_mirror(&st, "vol", &who(Role::Viewer)).unwrap();
        assert!(
            html.contains("recovery point: up to 3.0 MiB behind &lt;n1&gt;"),
            "{html}"
        );
    }

    #[test]
    fn lag_over_budget_is_bad_and_operators_get_the_peer_actions() {
        let mut st = Status::sample();
        st.mirrors[0].peers[1].lag_seconds = 9.0;
        let html = render_mirror(&st, "vol", &who(Role::Admin)).unwrap();
        assert!(html.contains("of a 5.0 s budget <span class=\"badge bad\">over</span>"));
        for cmd in [
            "tandem mirror pause vol --peer beta",
            "tandem mirror resume vol --peer gamma",
            "tandem mirror verify vol --peer beta",
            "tandem mirror resync vol --full --peer gamma",
        ] {
            assert!(html.contains(&format!("data-command=\"{cmd}\"")), "{cmd}");
        }
    }
}
