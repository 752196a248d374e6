//! The pieces every page shares: HTML escaping, the layout around a page's `<main>`
//! (navigation, the cluster and node, the user and role, the logout form, the CSRF
//! meta tag, the confirmation dialog the actions use), and state badges.

use crate::console::principal::{Principal, Role};
use crate::status::Status;

/// Text made safe for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The role's lowercase word.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Viewer => "viewer",
        Role::Operator => "operator",
        Role::Admin => "admin",
    }
}

/// Whether the page shows `who` the day-to-day actions (operator and up). The control
/// API checks the role again; hiding a button is a courtesy, not a safeguard.
pub fn may_act(who: &Principal) -> bool {
    who.role >= Role::Operator
}

/// A state word in a badge whose class colours it: `ok`, `warn`, `bad` or `idle`.
pub fn badge(tone: Tone, word: &str) -> String {
    format!(
        "<span class=\"badge {}\">{}</span>",
        tone.class(),
        escape(word)
    )
}

/// How a state reads at a glance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Ok,
    Warn,
    Bad,
    Idle,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Ok => "ok",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
            Tone::Idle => "idle",
        }
    }
}

/// The navigation's entries: path and label.
const NAV: [(&str, &str); 3] = [
    ("/", "Overview"),
    ("/history", "History"),
    ("/events", "Events"),
];

/// A whole page: head, header with navigation and user, `main`, the shared dialog.
/// `path` marks the current navigation entry.
pub fn layout(st: &Status, who: &Principal, title: &str, path: &str, main: &str) -> String {
    let nav: String = NAV
        .iter()
        .map(|(href, label)| {
            let current = if *href == path {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<a href=\"{href}\"{current}>{label}</a>")
        })
        .collect();
    let csrf = escape(&who.csrf);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"csrf-token\" content=\"{csrf}\"><link rel=\"icon\" href=\"data:,\">\
         <title>{title} · {cluster} · Tandem</title>\
         <link rel=\"stylesheet\" href=\"/assets/console.css\">\
         <script type=\"module\" src=\"/assets/console.js\"></script></head><body>\
         <header><span class=\"brand\">Tandem</span>\
         <span class=\"where\">cluster <b>{cluster}</b> · node <b>{node}</b></span>\
         <nav>{nav}</nav>\
         <form class=\"who\" method=\"post\" action=\"/logout\">\
         <span>{user} <span class=\"role\">{role}</span></span>\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <button type=\"submit\">Log out</button></form></header>\
         <main id=\"main\">{main}</main>{dialog}</body></html>\n",
        title = escape(title),
        cluster = escape(&st.cluster),
        node = escape(&st.node),
        user = escape(&who.name),
        role = role_name(who.role),
        dialog = DIALOG,
    )
}

/// The one confirmation dialog: the script fills in the action, its warnings and the
/// equivalent command line, and shows the API's answer.
const DIALOG: &str = "<dialog id=\"confirm\"><form method=\"dialog\">\
    <h2 class=\"what\"></h2><ul class=\"warnings\"></ul>\
    <p>Same as: <code class=\"cmd\"></code></p><p class=\"result\"></p>\
    <menu><button value=\"cancel\">Close</button>\
    <button value=\"ok\" class=\"go\">Confirm</button></menu></form></dialog>";

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role) -> Principal {
        Principal {
            name: "ann<".into(),
            role,
            csrf: "t\"ok".into(),
        }
    }

    #[test]
    fn escape_covers_the_five_html_specials() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain ü"), "plain ü");
    }

    #[test]
    fn the_layout_carries_csrf_user_role_nav_assets_and_logout() {
        let page = layout(
            &Status::sample(),
            &who(Role::Operator),
            "Overview",
            "/",
            "<p>x</p>",
        );
        assert!(page.contains("<meta name=\"csrf-token\" content=\"t&quot;ok\">"));
        assert!(page.contains("<input type=\"hidden\" name=\"csrf\" value=\"t&quot;ok\">"));
        assert!(page.contains("ann&lt; <span class=\"role\">operator</span>"));
        assert!(page.contains("cluster <b>c1</b> · node <b>alpha</b>"));
        assert!(page.contains("<a href=\"/\" aria-current=\"page\">Overview</a>"));
        assert!(page.contains("<a href=\"/history\">History</a>"));
        assert!(page.contains("action=\"/logout\""));
        assert!(page.contains("/assets/console.css") && page.contains("/assets/console.js"));
        assert!(page.contains("<main id=\"main\"><p>x</p></main>"));
        assert!(page.contains("<dialog id=\"confirm\">"));
    }

    #[test]
    fn only_operators_and_admins_act() {
        assert!(!may_act(&who(Role::Viewer)));
        assert!(may_act(&who(Role::Operator)));
        assert!(may_act(&who(Role::Admin)));
    }
}
