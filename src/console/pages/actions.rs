//! The pages' actions: each is a button that opens the confirmation dialog with the
//! control API call it makes (path and JSON body), the warnings to read first and the
//! equivalent `tandem` command line; the script posts it with the CSRF token.

use crate::control::MirrorAction;

use super::html::escape;

/// One action a page offers.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<'a> {
    Switchover {
        group: &'a str,
        to: &'a str,
    },
    Maintenance {
        group: &'a str,
        on: bool,
    },
    Clear {
        group: &'a str,
    },
    Standby {
        node: &'a str,
    },
    Online {
        node: &'a str,
    },
    Mirror {
        mirror: &'a str,
        action: MirrorAction,
        peer: Option<&'a str>,
    },
}

impl Action<'_> {
    /// The control API path it posts to.
    pub fn path(&self) -> String {
        match self {
            Action::Switchover { group, .. } => format!("/v1/groups/{group}/switchover"),
            Action::Maintenance { group, .. } => format!("/v1/groups/{group}/maintenance"),
            Action::Clear { group } => format!("/v1/groups/{group}/clear"),
            Action::Standby { node } => format!("/v1/nodes/{node}/standby"),
            Action::Online { node } => format!("/v1/nodes/{node}/online"),
            Action::Mirror { mirror, action, .. } => {
                format!("/v1/mirrors/{mirror}/{}", mirror_action_name(*action))
            }
        }
    }

    /// The JSON body it posts.
    pub fn body(&self) -> String {
        let v = match self {
            Action::Switchover { to, .. } => serde_json::json!({ "to": to }),
            Action::Maintenance { on, .. } => serde_json::json!({ "on": on }),
            Action::Mirror {
                peer: Some(peer), ..
            } => serde_json::json!({ "peer": peer }),
            _ => serde_json::json!({}),
        };
        v.to_string()
    }

    /// The `tandem` command line that does the same.
    pub fn command(&self) -> String {
        match self {
            Action::Switchover { group, to } => format!("tandem switchover {group} --to {to}"),
            Action::Maintenance { group, on } => format!(
                "tandem group maintenance {group} {}",
                if *on { "on" } else { "off" }
            ),
            Action::Clear { group } => format!("tandem group clear {group}"),
            Action::Standby { node } => format!("tandem node standby {node}"),
            Action::Online { node } => format!("tandem node online {node}"),
            Action::Mirror {
                mirror,
                action,
                peer,
            } => {
                let verb = match action {
                    MirrorAction::ResyncFull => "resync",
                    a => mirror_action_name(*a),
                };
                let full = if *action == MirrorAction::ResyncFull {
                    " --full"
                } else {
                    ""
                };
                let peer = peer.map_or(String::new(), |p| format!(" --peer {p}"));
                format!("tandem mirror {verb} {mirror}{full}{peer}")
            }
        }
    }

    /// The button's words.
    pub fn label(&self) -> String {
        match self {
            Action::Switchover { to, .. } => format!("Switch over to {to}"),
            Action::Maintenance { on: true, .. } => "Maintenance on".into(),
            Action::Maintenance { on: false, .. } => "Maintenance off".into(),
            Action::Clear { .. } => "Clear".into(),
            Action::Standby { .. } => "Standby".into(),
            Action::Online { .. } => "Online".into(),
            Action::Mirror { action, .. } => match action {
                MirrorAction::Pause => "Pause",
                MirrorAction::Resume => "Resume",
                MirrorAction::Verify => "Verify",
                MirrorAction::ResyncFull => "Full resync",
                MirrorAction::Disconnect => "Disconnect",
                MirrorAction::Connect => "Connect",
                MirrorAction::Resolve => "Resolve",
            }
            .into(),
        }
    }
}

/// The action's name in the API path (its JSON name).
fn mirror_action_name(a: MirrorAction) -> &'static str {
    match a {
        MirrorAction::Pause => "pause",
        MirrorAction::Resume => "resume",
        MirrorAction::Verify => "verify",
        MirrorAction::ResyncFull => "resync_full",
        MirrorAction::Disconnect => "disconnect",
        MirrorAction::Connect => "connect",
        MirrorAction::Resolve => "resolve",
    }
}

/// The button that opens the confirmation dialog for `a`, with the warnings to show
/// before it is confirmed.
pub fn button(a: &Action, warnings: &[String]) -> String {
    let warn_class = if warnings.is_empty() { "" } else { " risky" };
    format!(
        "<button type=\"button\" class=\"act{warn_class}\" data-path=\"{}\" data-body=\"{}\" \
         data-command=\"{}\" data-warnings=\"{}\">{}</button>",
        escape(&a.path()),
        escape(&a.body()),
        escape(&a.command()),
        escape(&warnings.join("\n")),
        escape(&a.label())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_names_its_api_call_and_its_command_line() {
        let cases = [
            (
                Action::Switchover {
                    group: "web",
                    to: "n2",
                },
                "/v1/groups/web/switchover",
                r#"{"to":"n2"}"#,
                "tandem switchover web --to n2",
            ),
            (
                Action::Maintenance {
                    group: "web",
                    on: true,
                },
                "/v1/groups/web/maintenance",
                r#"{"on":true}"#,
                "tandem group maintenance web on",
            ),
            (
                Action::Clear { group: "db" },
                "/v1/groups/db/clear",
                "{}",
                "tandem group clear db",
            ),
            (
                Action::Standby { node: "beta" },
                "/v1/nodes/beta/standby",
                "{}",
                "tandem node standby beta",
            ),
            (
                Action::Online { node: "beta" },
                "/v1/nodes/beta/online",
                "{}",
                "tandem node online beta",
            ),
            (
                Action::Mirror {
                    mirror: "vol",
                    action: MirrorAction::ResyncFull,
                    peer: Some("beta"),
                },
                "/v1/mirrors/vol/resync_full",
                r#"{"peer":"beta"}"#,
                "tandem mirror resync vol --full --peer beta",
            ),
            (
                Action::Mirror {
                    mirror: "vol",
                    action: MirrorAction::Pause,
                    peer: None,
                },
                "/v1/mirrors/vol/pause",
                "{}",
                "tandem mirror pause vol",
            ),
        ];
        for (a, path, body, cmd) in cases {
            assert_eq!(a.path(), path);
            assert_eq!(a.body(), body);
            assert_eq!(a.command(), cmd);
        }
    }

    #[test]
    fn the_path_names_match_the_api_enum() {
        for a in [
            MirrorAction::Pause,
            MirrorAction::Resume,
            MirrorAction::Verify,
            MirrorAction::ResyncFull,
            MirrorAction::Disconnect,
            MirrorAction::Connect,
            MirrorAction::Resolve,
        ] {
            assert_eq!(
                serde_json::to_value(a).unwrap(),
                serde_json::Value::String(mirror_action_name(a).into())
            );
        }
    }

    #[test]
    fn a_button_escapes_its_data_and_marks_warnings() {
        let a = Action::Switchover {
            group: "web",
            to: "n2",
        };
        let b = button(&a, &["n2 is <behind>".into()]);
        assert!(b.contains("class=\"act risky\""), "{b}");
        assert!(
            b.contains("data-body=\"{&quot;to&quot;:&quot;n2&quot;}\""),
            "{b}"
        );
        assert!(b.contains("data-warnings=\"n2 is &lt;behind&gt;\""), "{b}");
        assert!(b.contains(">Switch over to n2</button>"), "{b}");
        assert!(!button(&a, &[]).contains("risky"));
    }
}
