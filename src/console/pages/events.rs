//! The events page: the recent events, newest first, with filters by kind, group and
//! node that the script applies in the browser (each row carries its kind, group and
//! nodes as data attributes); live like every page.

use crate::event::Event;
use crate::human::utc_millis;

use super::html::escape;

/// The events page's `<main>` content: `events` oldest first, shown newest first.
pub fn render_events(events: &[Event]) -> String {
    let newest_first: Vec<Event> = events.iter().rev().cloned().collect();
    format!(
        "<section><h1>Events</h1><form class=\"filters\" role=\"search\">\
         <label>kind <input id=\"f-kind\" data-filter=\"kind\" placeholder=\"group_\"></label>\
         <label>group <input id=\"f-group\" data-filter=\"group\"></label>\
         <label>node <input id=\"f-node\" data-filter=\"node\"></label></form>\
         <table class=\"events\"><thead><tr><th>seq</th><th>time (UTC)</th><th>node</th>\
         <th>kind</th><th>facts</th></tr></thead><tbody>{}</tbody></table></section>",
        event_rows(&newest_first)
    )
}

/// One table row per event, in the order given.
pub fn event_rows(events: &[Event]) -> String {
    events.iter().map(row).collect()
}

fn row(e: &Event) -> String {
    let facts: Vec<String> = e
        .fields
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect();
    let nodes: Vec<&str> = std::iter::once(e.node.as_str())
        .chain(
            ["node", "peer", "from_node", "to_node"]
                .iter()
                .filter_map(|k| e.fields.get(*k).map(String::as_str)),
        )
        .collect();
    let kind = e.kind.name();
    format!(
        "<tr data-kind=\"{kind}\" data-group=\"{}\" data-node=\"{}\"><td>{}</td><td>{}</td>\
         <td>{}</td><td>{kind}</td><td>{}</td></tr>",
        escape(e.fields.get("group").map_or("", String::as_str)),
        escape(&nodes.join(" ")),
        e.seq,
        utc_millis(e.time_ms),
        escape(&e.node),
        facts.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{fields, EventKind};

    #[test]
    fn events_are_listed_newest_first_with_filterable_data_and_escaped_facts() {
        let ev = |seq, kind, f| Event {
            seq,
            node: "alpha".into(),
            time_ms: 1_700_000_000_000 + seq,
            kind,
            fields: f,
        };
        let events = [
            ev(
                1,
                EventKind::GroupStarted,
                fields([("group", "web".to_string())]),
            ),
            ev(
                2,
                EventKind::PathDown,
                fields([("peer", "beta".into()), ("reason", "<timeout>".into())]),
            ),
        ];
        let html = render_events(&events);
        assert!(html.find("<td>2</td>").unwrap() < html.find("<td>1</td>").unwrap());
        assert!(html.contains(
            "<tr data-kind=\"group_started\" data-group=\"web\" data-node=\"alpha\"><td>1</td>\
             <td>2023-11-14T22:13:20.001Z</td><td>alpha</td><td>group_started</td><td>group=web</td></tr>"
        ), "{html}");
        assert!(html.contains("data-node=\"alpha beta\""));
        assert!(html.contains("peer=beta reason=&lt;timeout&gt;"));
        assert!(html.contains("data-filter=\"kind\"") && html.contains("data-filter=\"node\""));
    }
}
