//! Pure authorisation: the role each control route needs, and how an action is named
//! in the audit log. Reading is for every role; the day-to-day actions (switchover,
//! standby and online, maintenance, clear, mirror pause/resume/verify/resync) are for
//! operators; everything else (configuration, image update, other mirror actions, and
//! any route not listed) is for admins.

use axum::http::Method;

use super::principal::Role;

/// The mirror actions an operator may run (`POST /v1/mirrors/{m}/{action}`).
const OPERATOR_MIRROR_ACTIONS: &[&str] = &["pause", "resume", "verify", "resync_full"];

/// The group actions an operator may run (`POST /v1/groups/{g}/{action}`).
const OPERATOR_GROUP_ACTIONS: &[&str] = &["switchover", "maintenance", "clear"];

/// The node actions an operator may run (`POST /v1/nodes/{n}/{action}`).
const OPERATOR_NODE_ACTIONS: &[&str] = &["standby", "online"];

/// The weakest role that may call `method` on `path`.
pub fn required(method: &Method, path: &str) -> Role {
    if method == Method::GET || method == Method::HEAD {
        return Role::Viewer;
    }
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let operator = match segs.as_slice() {
        ["v1", "groups", _, action] => OPERATOR_GROUP_ACTIONS.contains(action),
        ["v1", "nodes", _, action] => OPERATOR_NODE_ACTIONS.contains(action),
        ["v1", "mirrors", _, action] => OPERATOR_MIRROR_ACTIONS.contains(action),
        _ => false,
    };
    if operator {
        Role::Operator
    } else {
        Role::Admin
    }
}

/// Whether `role` may call `method` on `path`.
pub fn allowed(role: Role, method: &Method, path: &str) -> bool {
    role >= required(method, path)
}

/// How the audit log names a control request: its action and its target, e.g.
/// `switchover` of `group web`, `put config` of `cluster`.
pub fn describe(method: &Method, path: &str) -> (String, String) {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .skip_while(|s| *s == "v1")
        .collect();
    match segs.as_slice() {
        [kind, name, action @ ..] if !action.is_empty() => {
            let kind = kind.strip_suffix('s').unwrap_or(kind);
            (action.join(" "), format!("{kind} {name}"))
        }
        _ => (
            format!("{} {}", method.as_str().to_lowercase(), segs.join(" ")),
            "cluster".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Role::{Admin, Operator, Viewer};

    #[test]
    fn the_role_table() {
        let post = Method::POST;
        let rows: &[(&Method, &str, Role)] = &[
            (&Method::GET, "/v1/status", Viewer),
            (&Method::GET, "/v1/mirrors/vol/split-brain-dumps", Viewer),
            (&Method::GET, "/v1/image/update", Viewer),
            (&Method::GET, "/", Viewer),
            (&post, "/v1/groups/web/switchover", Operator),
            (&post, "/v1/groups/web/maintenance", Operator),
            (&post, "/v1/groups/web/clear", Operator),
            (&post, "/v1/nodes/n1/standby", Operator),
            (&post, "/v1/nodes/n1/online", Operator),
            (&post, "/v1/mirrors/vol/pause", Operator),
            (&post, "/v1/mirrors/vol/resume", Operator),
            (&post, "/v1/mirrors/vol/verify", Operator),
            (&post, "/v1/mirrors/vol/resync_full", Operator),
            (&post, "/v1/mirrors/vol/resolve", Admin),
            (&post, "/v1/mirrors/vol/disconnect", Admin),
            (&post, "/v1/config/reload", Admin),
            (&Method::PUT, "/v1/config", Admin),
            (&post, "/v1/image/update", Admin),
            (&post, "/v1/users", Admin),
            (&post, "/v1/groups/web/unknown", Admin),
            (&Method::DELETE, "/v1/groups/web/switchover", Operator),
        ];
        for (method, path, role) in rows {
            assert_eq!(required(method, path), *role, "{method} {path}");
        }
    }

    #[test]
    fn stronger_roles_may_do_what_weaker_ones_may() {
        let sw = "/v1/groups/web/switchover";
        assert!(!allowed(Viewer, &Method::POST, sw));
        assert!(allowed(Operator, &Method::POST, sw));
        assert!(allowed(Admin, &Method::POST, sw));
        assert!(allowed(Viewer, &Method::GET, "/v1/status"));
        assert!(!allowed(Operator, &Method::PUT, "/v1/config"));
        assert!(allowed(Admin, &Method::PUT, "/v1/config"));
    }

    #[test]
    fn actions_are_named_with_their_target() {
        let d = |m: Method, p: &str| describe(&m, p);
        assert_eq!(
            d(Method::POST, "/v1/groups/web/switchover"),
            ("switchover".into(), "group web".into())
        );
        assert_eq!(
            d(Method::POST, "/v1/mirrors/vol/pause"),
            ("pause".into(), "mirror vol".into())
        );
        assert_eq!(
            d(Method::PUT, "/v1/config"),
            ("put config".into(), "cluster".into())
        );
        assert_eq!(
            d(Method::POST, "/v1/config/reload"),
            ("post config reload".into(), "cluster".into())
        );
    }
}
