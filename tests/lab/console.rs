//! The web console in a real browser: Debian's Chromium, driven over WebDriver from the
//! lab's client namespace, against the consoles of a two-node lab (issue 15's "done
//! when"): a login per role, a viewer refused, a switchover from the page and its
//! timeline, the failover shown live on the survivor's page, a resync's progress bar,
//! and a wrong password rate-limited. Screenshots go to `target/console-screenshots/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::json;

use super::browser::{self, Browser};
use super::{describe, is_root, run, Lab, GROUP};

/// The lab's admin login (`tandem lab up` creates it on every node).
const ADMIN: (&str, &str) = ("admin", "tandem-lab");
const OPERATOR: (&str, &str) = ("oper", "operator-password-1");
const VIEWER: (&str, &str) = ("view", "viewer-password-1");

fn console(node: &str) -> String {
    let i: usize = node.trim_start_matches('n').parse().unwrap();
    format!("https://10.77.0.1{i}:9443")
}

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots")
}

impl Lab {
    /// `tandem user add NAME --role ROLE` on each of `nodes`.
    fn add_console_user(&self, nodes: &[&str], (name, password): (&str, &str), role: &str) {
        for node in nodes {
            let conf = self.dir.join(node).join("tandem.toml");
            super::daemon::user_add(&conf, name, role, password);
        }
    }
}

/// Signs in on `node`'s console (a fresh session) and lands on the overview.
fn login(b: &Browser, node: &str, (user, password): (&str, &str)) {
    b.goto(&format!("{}/login", console(node)));
    b.fill("input[name=user]", user);
    b.fill("input[name=password]", password);
    b.click("form[action='/login'] button, form[action='/login'] input[type=submit]");
    b.wait_text(&format!("{user} signed in"), Duration::from_secs(10), |t| {
        t.contains("Groups") && t.contains(user)
    });
}

fn logout(b: &Browser) {
    b.click("form[action='/logout'] button");
    b.wait_text("the login form", Duration::from_secs(10), |t| {
        t.contains("Password")
    });
}

/// The owner cell of the demo group's row on the overview.
fn owner_on_page(b: &Browser) -> String {
    b.eval(&format!(
        "const a = document.querySelector('a[href=\"/groups/{GROUP}\"]');\
         return a ? a.closest('tr').children[1].innerText.trim() : '';"
    ))
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// A POST to the control API from the page, with the page's CSRF token.
fn post_from_page(b: &Browser, path: &str) -> u16 {
    let csrf = b
        .eval("return document.querySelector('meta[name=\"csrf-token\"]').content")
        .as_str()
        .unwrap_or_default()
        .to_string();
    b.fetch_status(
        "POST",
        path,
        json!({"X-CSRF-Token": csrf, "Content-Type": "application/json"}),
    )
}

/// A load of the overview: the bytes it transfers (the page and every asset, counted
/// even when the browser has an asset cached) and the time to its first contentful
/// paint, from the browser's Performance API.
fn page_weight_and_first_paint(b: &Browser, base: &str) -> (u64, f64) {
    b.goto(&format!("{base}/"));
    let v = b.eval(
        "const nav = performance.getEntriesByType('navigation')[0];\
         const res = performance.getEntriesByType('resource');\
         const paint = performance.getEntriesByName('first-contentful-paint')[0];\
         const size = (e) => Math.max(e.transferSize, e.encodedBodySize);\
         return [size(nav) + res.reduce((n, r) => n + size(r), 0),\
                 paint ? paint.startTime : nav.domContentLoadedEventEnd];",
    );
    (
        v[0].as_f64().unwrap_or(0.0) as u64,
        v[1].as_f64().unwrap_or(f64::NAN),
    )
}

fn tc_cap(lab: &Lab, node: &str, dev: &str, rate: Option<&str>) {
    let ns = lab.ns(node);
    let mut args = vec!["netns", "exec", &ns, "tc", "qdisc"];
    match rate {
        Some(r) => args.extend([
            "replace", "dev", dev, "root", "tbf", "rate", r, "burst", "64kb", "latency", "400ms",
        ]),
        None => args.extend(["del", "dev", dev, "root"]),
    }
    let out = run(std::process::Command::new("ip").args(&args));
    assert!(out.status.success(), "tc {args:?}: {}", describe(&out));
}

#[test]
fn console_in_a_browser_roles_switchover_live_failover_and_resync() {
    require_root!();
    if !browser::available() {
        panic!("chromium and chromedriver are missing: run scripts/deps.sh");
    }
    let lab = Lab::up("tcw-", &[]);
    lab.wait_vip("n1", Duration::from_secs(30));
    lab.wait_mirror_in_sync("n1", "n2", Duration::from_secs(60));
    lab.add_console_user(&["n1", "n2"], OPERATOR, "operator");
    lab.add_console_user(&["n1", "n2"], VIEWER, "viewer");
    let b = Browser::start_in(&lab.ns("cl"), &screenshots());

    // A viewer reads everything and may do nothing: no buttons, and the API says no.
    login(&b, "n2", VIEWER);
    b.goto(&format!("{}/groups/{GROUP}", console("n2")));
    assert!(!b.has("button.act"), "a viewer is offered actions");
    let refused = post_from_page(&b, &format!("/v1/groups/{GROUP}/switchover"));
    assert_eq!(refused, 403, "a viewer's switchover");
    lab.note("console: the viewer got no buttons and a 403 for a switchover");
    logout(&b);

    // An operator switches the group over from the group page.
    login(&b, "n1", OPERATOR);
    b.goto(&format!("{}/groups/{GROUP}", console("n1")));
    b.wait_text("the last check results", Duration::from_secs(15), |t| {
        t.contains("quickcheck passed")
    });
    b.screenshot("group");
    b.click("button.act[data-command='tandem switchover demo --to n2']");
    assert!(
        b.text().contains("tandem switchover demo --to n2"),
        "the dialog shows the command"
    );
    b.click("#confirm .go");
    let took = b.wait_text("the switchover's answer", Duration::from_secs(60), |t| {
        t.contains("Done:")
    });
    lab.note(&format!(
        "console: switchover from the page answered in {} ms",
        took.as_millis()
    ));
    assert_eq!(lab.owner("n1").as_deref(), Some("n2"));
    b.goto(&format!("{}/history", console("n1")));
    // This node's part of the move: it released the group to n2.
    b.wait_text("the switchover's timeline", Duration::from_secs(10), |t| {
        t.contains("Release of demo: n1 → n2")
    });
    assert!(b.has("svg.timeline rect"), "the timeline is drawn");
    logout(&b);

    // The admin watches the overview on n1 while n2, the owner, loses its power.
    login(&b, "n1", ADMIN);
    let (weight, first_paint) = page_weight_and_first_paint(&b, &console("n1"));
    lab.note(&format!(
        "console: overview {weight} bytes transferred (goal < 200 KiB), first paint {first_paint:.0} ms (goal < 300 ms)"
    ));
    assert!(weight < 200 << 10, "the overview weighs {weight} bytes");
    assert_eq!(owner_on_page(&b), "n2");
    let t0 = Instant::now();
    lab.lab(&["fail", "n2", "kill"]);
    let mut status_at = None;
    let page_at = loop {
        if status_at.is_none() && lab.local_state("n1").as_deref() == Some("running") {
            status_at = Some(t0.elapsed());
        }
        if owner_on_page(&b) == "n1" && b.text().contains("running") {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the page never showed the failover"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let status_at = status_at.unwrap_or(page_at);
    lab.note(&format!(
        "console: failover shown on the survivor's page {} ms after the kill (its status: {} ms)",
        page_at.as_millis(),
        status_at.as_millis()
    ));
    assert!(
        page_at <= status_at + Duration::from_secs(3),
        "the page lagged the daemon by more than 3 s"
    );
    b.screenshot("overview");
    b.goto(&format!("{}/history", console("n1")));
    b.wait_text("the failover's timeline", Duration::from_secs(10), |t| {
        t.contains("Failover of demo: n2 → n1")
    });
    b.screenshot("timeline");

    // n2 returns behind a 40 Mbit/s link after 48 MiB changed: the mirror page's
    // progress bar moves and the resync completes.
    let out = lab.qemu_io(
        "n1",
        &["write -P 7 16M 48M".to_string(), "flush".to_string()],
    );
    assert!(out.status.success(), "{}", describe(&out));
    tc_cap(&lab, "n1", "hb1", Some("40mbit"));
    lab.lab(&["fail", "n2", "restart"]);
    b.goto(&format!("{}/mirrors/data", console("n1")));
    let progress = || -> Option<u64> {
        b.eval("const p = document.querySelector('progress'); return p ? p.value : null;")
            .as_f64()
            .map(|v| v as u64)
    };
    let (first, _) = super::wait_for("a resync progress bar", Duration::from_secs(60), || {
        progress().filter(|v| *v > 0)
    });
    // The link sizing comes from the API's plan (a fresh lab has too little history).
    b.wait_text("the link sizing", Duration::from_secs(10), |t| {
        t.contains("Not enough history yet") || t.contains("recommended link")
    });
    b.screenshot("mirror");
    let (later, _) = super::wait_for("the bar to move", Duration::from_secs(60), || {
        progress().filter(|v| *v > first)
    });
    lab.note(&format!(
        "console: resync progress {first} -> {later} bytes"
    ));
    lab.wait_mirror_in_sync("n1", "n2", Duration::from_secs(120));
    b.wait_text("the resync's end", Duration::from_secs(10), |t| {
        t.contains("up_to_date")
    });
    assert_eq!(progress(), None, "a finished resync keeps its bar");
    tc_cap(&lab, "n1", "hb1", None);
    logout(&b);

    // Wrong passwords: after five, even the right one waits.
    b.goto(&format!("{}/login", console("n1")));
    let mut limited = false;
    for _ in 0..6 {
        b.fill("input[name=user]", ADMIN.0);
        b.fill("input[name=password]", "wrong-password");
        // Read the answer's page, not the form it replaces.
        b.eval("document.body.dataset.answered = 'no'; return null;");
        b.click("form[action='/login'] button, form[action='/login'] input[type=submit]");
        b.wait_js("return document.body.dataset.answered !== 'no'", 10)
            .expect("the login answered");
        let text = b.text();
        if text.contains("Too many") || text.contains("too many") {
            limited = true;
            break;
        }
    }
    assert!(
        limited,
        "six wrong passwords were not rate-limited: {}",
        b.text()
    );
    lab.note("console: wrong passwords rate-limited");
}
