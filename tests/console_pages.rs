//! The console's pages served for real on loopback: `console::pages::routes()` behind a
//! fake auth layer (a fixed `Principal`), over the sample status and an in-memory event
//! log; pages, fragments, 404s, assets and the SSE stream fetched over TCP. The ignored
//! test renders pages to PNG with headless Chromium for a look.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Extension;
use tandem::cluster::packet::LocalGroupState;
use tandem::console::pages::{routes, PageState};
use tandem::console::principal::{Principal, Role};
use tandem::event::{fields, EventKind, EventLog, MoveKind, MoveReason, Timeline, TimelineStep};
use tandem::status::{ResourceType, ResourceView, Status};
use tokio::sync::watch;

#[path = "common/browser.rs"]
mod browser;
use browser::Browser;

/// The sample status with a resource hierarchy in `web`.
fn status() -> Status {
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

/// The pages on a loopback port, and what a test needs to drive them.
struct Served {
    addr: SocketAddr,
    events: EventLog,
    status: watch::Sender<Status>,
    /// What reached the stand-in switchover endpoint: the CSRF header and the body.
    posted: Arc<Mutex<Vec<(String, String)>>>,
}

/// Serves the pages on a free loopback port for `role`, with a stand-in for the control
/// API's switchover endpoint that records what the page posts.
async fn serve(role: Role) -> Served {
    let events = EventLog::in_memory("alpha");
    events.emit(
        EventKind::GroupStarted,
        fields([("group", "web".to_string())]),
    );
    events.record_timeline(failover(tandem::event::unix_ms() - 2_000));
    let (status, rx) = watch::channel(status());
    let state = PageState {
        status: rx,
        events: events.clone(),
    };
    let who = Principal {
        name: "ann".into(),
        role,
        csrf: "csrf-123".into(),
    };
    let posted = Arc::new(Mutex::new(Vec::new()));
    let record = posted.clone();
    let switchover = move |h: HeaderMap, body: String| async move {
        let csrf = h
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        record.lock().unwrap().push((csrf, body));
        axum::Json(serde_json::json!({"group": "web", "node": "beta", "duration_ms": 5}))
    };
    let app = routes()
        .route("/v1/groups/{group}/switchover", post(switchover))
        .layer(Extension(who))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Served {
        addr,
        events,
        status,
        posted,
    }
}

/// One HTTP/1.1 request (blocking): the status code, the headers (lowercase) and the
/// body (its Content-Length, or up to the end: a server may keep the connection open).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String, String) {
    let s = TcpStream::connect(addr).unwrap();
    write!(
        &s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(r.read_line(&mut head).unwrap() > 0, "no answer: {head}");
    }
    let head = head.to_lowercase();
    let code = head[9..12].parse().unwrap();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|n| n.trim().parse::<usize>().unwrap());
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).unwrap();
        }
        None => {
            r.read_to_end(&mut body).unwrap();
        }
    }
    (code, head, String::from_utf8(body).unwrap())
}

/// GET `path` on a blocking thread.
async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || http(addr, "GET", &path, ""))
        .await
        .unwrap()
}

#[tokio::test]
async fn pages_fragments_and_404s_over_http() {
    let Served { addr, .. } = serve(Role::Operator).await;
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
    let Served { addr, .. } = serve(Role::Viewer).await;
    for path in ["/", "/groups/web", "/mirrors/vol"] {
        let (code, _, body) = get(addr, path).await;
        assert_eq!(code, 200);
        assert!(!body.contains("class=\"act"), "{path}");
    }
}

#[tokio::test]
async fn the_stream_sends_the_backlog_then_each_new_event() {
    let Served { addr, events, .. } = serve(Role::Viewer).await;
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

/// Where the Chromium tests leave their screenshots.
fn shots() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-pages")
}

/// Runs `f` with a headless Chromium on its own thread (the browser harness blocks);
/// skipped, with a message, where Chromium is not installed (`scripts/deps.sh`
/// installs it).
async fn in_chromium(f: impl FnOnce(Browser) + Send + 'static) {
    if !browser::available() {
        eprintln!("SKIPPED: needs chromium and chromium-driver");
        return;
    }
    let t = std::thread::spawn(move || f(Browser::start_local(&shots())));
    tokio::task::spawn_blocking(move || t.join())
        .await
        .unwrap()
        .unwrap();
}

/// Renders the overview, a group, a mirror and the history in headless Chromium: the
/// script loads without an error on each (it marks the page live), and each page is
/// saved as a PNG.
#[tokio::test(flavor = "multi_thread")]
async fn screenshots_with_headless_chromium() {
    let Served { addr, .. } = serve(Role::Operator).await;
    in_chromium(move |b| {
        for (name, path) in [
            ("overview", "/"),
            ("group", "/groups/web"),
            ("mirror", "/mirrors/vol"),
            ("history", "/history"),
        ] {
            b.goto(&format!("http://{addr}{path}"));
            let live = "return document.body.dataset.live === 'open'";
            let t0 = std::time::Instant::now();
            while b.eval(live) != serde_json::Value::Bool(true) {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "the script did not start on {path}"
                );
                std::thread::sleep(Duration::from_millis(25));
            }
            println!("{}", b.screenshot(&format!("console-{name}")).display());
        }
    })
    .await;
}

/// In Chromium: a risky switchover opens the dialog with its warning and command line,
/// and confirming it posts the body with the page's CSRF token; the overview follows a
/// change of owner within 3 s of its event; the events filter survives live refreshes.
#[tokio::test(flavor = "multi_thread")]
async fn in_chromium_actions_confirm_and_post_and_pages_follow_events() {
    let Served {
        addr,
        events,
        status,
        posted,
    } = serve(Role::Operator).await;
    in_chromium(move |b| {
        b.goto(&format!("http://{addr}/groups/web"));
        b.eval("document.querySelector('button.act.risky').click()");
        assert!(b
            .wait_js("return document.getElementById('confirm').open", 3)
            .is_some());
        assert_eq!(
            b.eval("return document.querySelector('#confirm .cmd').textContent"),
            "tandem switchover web --to beta"
        );
        let warnings = b.eval("return document.querySelector('#confirm .warnings').textContent");
        assert!(
            warnings
                .as_str()
                .unwrap()
                .contains("beta's copy of mirror vol is sync_target"),
            "{warnings}"
        );
        b.eval("document.querySelector('#confirm .go').click()");
        let done =
            "return document.querySelector('#confirm .result').textContent.startsWith('Done')";
        assert!(b.wait_js(done, 5).is_some());
        assert_eq!(
            posted.lock().unwrap().as_slice(),
            [("csrf-123".to_string(), r#"{"to":"beta"}"#.to_string())]
        );

        b.goto(&format!("http://{addr}/"));
        assert!(b
            .wait_js("return document.body.dataset.live === 'open'", 5)
            .is_some());
        status.send_modify(|st| st.groups[1].owner = Some("beta".into()));
        events.emit(
            EventKind::OwnershipCommitted,
            fields([("group", "web".to_string()), ("owner", "beta".into())]),
        );
        let owner = "return document.querySelector('a[href=\"/groups/web\"]')\
                     .closest('tr').children[1].textContent === 'beta'";
        let took = b
            .wait_js(owner, 3)
            .expect("the overview shows the new owner");
        println!("overview followed the event in {} ms", took.as_millis());

        events.emit(EventKind::PathDown, fields([("peer", "beta".to_string())]));
        b.goto(&format!("http://{addr}/events"));
        assert!(b
            .wait_js("return document.body.dataset.live === 'open'", 5)
            .is_some());
        let visible = "return [...document.querySelectorAll('tr[data-kind]')]\
                       .filter((r) => !r.hidden).map((r) => r.dataset.kind).join(' ')";
        b.eval(
            "const i = document.getElementById('f-kind'); i.value = 'path'; \
              i.dispatchEvent(new Event('input', {bubbles: true}))",
        );
        assert_eq!(b.eval(visible), "path_down");
        events.emit(EventKind::PathUp, fields([("peer", "beta".to_string())]));
        events.emit(
            EventKind::GroupStopped,
            fields([("group", "db".to_string())]),
        );
        let both = format!("{} === 'path_up path_down'", &visible["return ".len()..]);
        assert!(
            b.wait_js(&format!("return {both}"), 3).is_some(),
            "{}",
            b.eval(visible)
        );
        assert_eq!(
            b.eval("return document.getElementById('f-kind').value"),
            "path"
        );
    })
    .await;
}
