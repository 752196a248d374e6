//! `tandem events [--since SEQ] [--follow]`: the event stream as lines, one event per
//! line (`--json`: one JSON object per line), read from `/v1/events` or, to follow it,
//! `/v1/events/stream` (the backlog after SEQ, then each event as it happens).

use std::time::{Duration, UNIX_EPOCH};

use crate::api::client::{call, stream_lines, Endpoint};
use crate::api::ApiError;
use crate::event::Event;
use crate::status::Status;

/// Events shown before now when no `--since` is given.
const RECENT: u64 = 100;

/// One event as a line: `SEQ TIME KIND key=value ...`, or its JSON.
pub fn event_line(e: &Event, json: bool) -> String {
    if json {
        return serde_json::to_string(e).unwrap_or_default();
    }
    let time = humantime_serde::re::humantime::format_rfc3339_millis(
        UNIX_EPOCH + Duration::from_millis(e.time_ms),
    );
    let mut line = format!("{:>6} {time} {:<24}", e.seq, e.kind.name());
    for (k, v) in &e.fields {
        line.push_str(&format!(" {k}={v}"));
    }
    line.trim_end().to_string()
}

/// Prints the events after `since` (default: the last [`RECENT`]), then, with
/// `follow`, every new one until the daemon ends the stream.
pub async fn run(
    ep: &Endpoint,
    since: Option<u64>,
    follow: bool,
    json: bool,
) -> Result<(), ApiError> {
    let since = match since {
        Some(s) => s,
        None => {
            let st: Status = call(ep, "GET", "/v1/status", None).await?;
            st.last_seq.saturating_sub(RECENT)
        }
    };
    if !follow {
        let events: Vec<Event> = call(
            ep,
            "GET",
            &format!("/v1/events?since={since}&limit=10000"),
            None,
        )
        .await?;
        for e in &events {
            println!("{}", event_line(e, json));
        }
        return Ok(());
    }
    let mut bad = None;
    stream_lines(ep, &format!("/v1/events/stream?since={since}"), |line| {
        match serde_json::from_slice::<Event>(line) {
            Ok(e) => {
                println!("{}", event_line(&e, json));
                true
            }
            Err(e) => {
                bad = Some(ApiError::Decode(e.to_string()));
                false
            }
        }
    })
    .await?;
    bad.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{fields, EventKind};

    #[test]
    fn an_event_is_one_dated_line_or_one_json_object() {
        let e = Event {
            seq: 42,
            node: "a".into(),
            time_ms: 1_765_000_000_123,
            kind: EventKind::GroupCleared,
            fields: fields([("group", "web".into()), ("node", "a".into())]),
        };
        assert_eq!(
            event_line(&e, false),
            "    42 2025-12-06T05:46:40.123Z group_cleared            group=web node=a"
        );
        let line = event_line(&e, true);
        assert!(!line.contains('\n'));
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }
}
