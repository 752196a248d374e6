//! The console's pages served for real on loopback: `console::pages::routes()` behind a
//! fake auth layer (a fixed `Principal`), over the sample status and an in-memory event
//! log; pages, fragments, 404s, assets and the SSE stream fetched over TCP. The ignored
//! test renders pages to PNG with headless Chromium for a look.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use axum::Extension;
use tandem::cluster::packet::LocalGroupState;
use tandem::console::pages::{routes, PageState};
use tandem::console::principal::{Principal, Role};
use tandem::event::{fields, EventKind, EventLog, MoveKind, MoveReason, Timeline, TimelineStep};
use tandem::status::{ResourceType, ResourceView, Status};
use tokio::sync::watch;

/// The sample status with a resource hierarchy in `web`.
fn status() -> Status {
    let mut st = Status::sample();
    let res = |name: &str, kind, deps: &[&str]| ResourceView {
        group: "web".into(),
        name: name.into(),
        kind,
        state: LocalGroupState::Running,
        depends_on: deps.iter().map(|d| d.to_string()).collect(),
    };
    st.resources = vec![
        res("disk", ResourceType::Mirror, &[]),
        res("fs", ResourceType::Filesystem, &["disk"]),
        res("vip", ResourceType::Ip, &[]),
        res("app", ResourceType::Process, &["fs", "vip"]),
    ];
    st
}

/// A failover of `web` from alpha to beta, as `tandem history`'s tests tell it.
fn failover(base: u64) -> Timeline {
    let step = |resource: &str, at: u64, took: u64| TimelineStep {
        resource: resource.into(),
        action: "start".into(),
        at_ms: base + at,
        duration_ms: took,
        ok: true,
        error: None,
    };
    Timeline {
        group: "web".into(),
        kind: MoveKind::Failover,
        reason: MoveReason::NodeLost,
        from_node: Some("alpha".into()),
        to_node: "beta".into(),
        failure_ms: Some(base),
        detected_ms: base + 950,
        decided_ms: base + 960,
        steps: vec![
            step("disk", 962, 40),
            step("fs", 1002, 120),
            step("vip", 1002, 20),
            step("app", 1122, 300),
        ],
        first_check_ms: Some(base + 1_530),
        completed_ms: Some(base + 1_530),
        outcome: "completed".into(),
    }
}

/// Serves the pages on a free loopback port for `role`; returns the address and the log.
async fn serve(role: Role) -> (SocketAddr, EventLog) {
    let events = EventLog::in_memory("alpha");
    events.emit(
        EventKind::GroupStarted,
        fields([("group", "web".to_string())]),
    );
    events.record_timeline(failover(tandem::event::unix_ms() - 2_000));
    let (_tx, rx) = watch::channel(status());
    let state = PageState {
        status: rx,
        events: events.clone(),
    };
    let who = Principal {
        name: "ann".into(),
        role,
        csrf: "csrf-123".into(),
    };
    let app = routes().layer(Extension(who)).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, events)
}

/// GET `path` over HTTP/1.1 (blocking, on a thread); the status code, headers and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        let code = head[9..12].parse().unwrap();
        (code, head.to_lowercase(), body.to_string())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn pages_fragments_and_404s_over_http() {
    let (addr, _events) = serve(Role::Operator).await;
    let (code, head, body) = get(addr, "/").await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(body.contains("<meta name=\"csrf-token\" content=\"csrf-123\">"));
    assert!(body.contains("<a href=\"/groups/web\">web</a>"));
    assert!(body.contains("data-command=\"tandem node standby beta\""));

    let (code, _, frag) = get(addr, "/?fragment=1").await;
    assert_eq!(code, 200);
    assert!(
        !frag.contains("<html") && frag.contains("<h2>Nodes</h2>"),
        "{frag}"
    );

    let (code, _, group) = get(addr, "/groups/web").await;
    assert_eq!(code, 200);
    assert!(group.contains("<b>app</b>") && group.contains("Switch over to beta"));
    let (code, _, mirror) = get(addr, "/mirrors/vol").await;
    assert_eq!(code, 200);
    assert!(mirror.contains("<progress max=\"4194304\" value=\"1048576\">"));
    let (code, _, history) = get(addr, "/history").await;
    assert_eq!(code, 200);
    assert!(history.contains("<svg class=\"timeline\"") && history.contains("start app on beta"));
    let (code, _, events) = get(addr, "/events").await;
    assert_eq!(code, 200);
    assert!(events.contains("data-kind=\"group_started\""));

    assert_eq!(get(addr, "/groups/nope").await.0, 404);
    assert_eq!(get(addr, "/mirrors/nope").await.0, 404);
    assert_eq!(get(addr, "/assets/nope.js").await.0, 404);
    let (code, head, js) = get(addr, "/assets/console.js").await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(js.contains("new EventSource('/ui/stream')"));
}

#[tokio::test]
async fn a_viewer_sees_no_action_buttons() {
    let (addr, _events) = serve(Role::Viewer).await;
    for path in ["/", "/groups/web", "/mirrors/vol"] {
        let (code, _, body) = get(addr, path).await;
        assert_eq!(code, 200);
        assert!(!body.contains("class=\"act"), "{path}");
    }
}

#[tokio::test]
async fn the_stream_sends_the_backlog_then_each_new_event() {
    let (addr, events) = serve(Role::Viewer).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /ui/stream?since=0 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    let mut emitted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !seen.contains("id: 2") {
        if !emitted && seen.contains("id: 1") {
            events.emit(EventKind::PathDown, fields([("peer", "beta".to_string())]));
            emitted = true;
        }
        let n = tokio::time::timeout_at(deadline, s.read(&mut buf))
            .await
            .expect("stream answered in time")
            .unwrap();
        assert!(n > 0, "stream closed: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.contains("text/event-stream"), "{seen}");
    assert!(seen.contains("event: tandem"));
    assert!(seen.contains("\"kind\":\"group_started\""));
    assert!(seen.contains("\"kind\":\"path_down\""));
}

/// Renders the overview, a group, a mirror and the history to PNG with headless
/// Chromium (the script must load without an uncaught error), into the test's
/// temporary directory: `cargo test --test console_pages --
/// --ignored` (needs `chromium`).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs chromium"]
async fn screenshots_with_headless_chromium() {
    let (addr, _events) = serve(Role::Operator).await;
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (name, path) in [
        ("overview", "/"),
        ("group", "/groups/web"),
        ("mirror", "/mirrors/vol"),
        ("history", "/history"),
    ] {
        let png = dir.join(format!("console-{name}.png"));
        let out = tokio::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--enable-logging=stderr",
                "--window-size=1200,900",
                &format!("--screenshot={}", png.display()),
                &format!("http://{addr}{path}"),
            ])
            .output()
            .await
            .expect("chromium");
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(png.exists(), "{log}");
        assert!(
            !log.contains("Uncaught"),
            "the script failed on {path}: {log}"
        );
        println!("{}", png.display());
    }
}
