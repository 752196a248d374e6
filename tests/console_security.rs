//! The web console's security on one loopback daemon: the TLS handshake pinned to the
//! generated certificate (whose fingerprint `tandem status` shows), plain HTTP
//! redirected, logins per role, roles and CSRF on actions, session fixation, cookie
//! flags, the login rate limit, the audit events, and token roles on the TCP API.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{free_tcp_addr, free_udp_port, loopback_base, Daemon, BIN};

const TOKEN: &str = "test-token-0123456789";
const PASSWORD: &str = "correct horse battery";

/// Node `a` alone with the console and the TCP API, a group `svc` of one exec
/// resource, and the users `vera` (viewer), `otto` (operator) and `ada` (admin).
struct Console {
    daemon: Daemon,
    port: u16,
    tcp: String,
}

/// An HTTP answer: status, headers (lowercase names), body.
struct Answer {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Parses `curl -i` output (the last response's head and body).
fn parse(out: &str) -> Answer {
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out, ""));
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        code,
        headers,
        body: body.to_string(),
    }
}

impl Console {
    fn start() -> Console {
        let console = free_tcp_addr();
        let tcp = free_tcp_addr().to_string();
        let daemon = Daemon::start("a", |dir| {
            // The base ends in `[api]`: the TCP listener joins it.
            format!(
                "{base}tcp = \"{tcp}\"\ntoken = \"{TOKEN}\"\n\
                 [console]\nlisten = \"{console}\"\n\
                 [[node]]\nname = \"a\"\npriority = 1\naddresses = {{ lo = \"127.0.0.1\" }}\n\
                 [[group]]\nname = \"svc\"\n[[group.resource]]\nname = \"setup\"\n\
                 kind = \"exec\"\nstart = [\"true\"]\nstop = [\"true\"]\n",
                base = loopback_base(dir, "consoletest", free_udp_port()),
            )
        });
        let c = Console {
            daemon,
            port: console.port(),
            tcp,
        };
        for (user, role) in [("vera", "viewer"), ("otto", "operator"), ("ada", "admin")] {
            c.user_add(user, role);
        }
        c
    }

    fn config(&self) -> PathBuf {
        self.daemon.dir.path().join("tandem.toml")
    }

    fn user_add(&self, name: &str, role: &str) {
        daemon::user_add(&self.config(), name, role, PASSWORD);
    }

    fn cert(&self) -> PathBuf {
        self.daemon.dir.path().join("state/console-cert.pem")
    }

    /// `curl -i` to the console as `https://a:PORT` pinned to its certificate.
    fn https(&self, path: &str, args: &[&str]) -> Answer {
        let resolve = format!("a:{}:127.0.0.1", self.port);
        let out = Command::new("curl")
            .args(["-s", "-i", "-m", "10", "--cacert"])
            .arg(self.cert())
            .args(["--resolve", &resolve])
            .args(args)
            .arg(format!("https://a:{}{path}", self.port))
            .output()
            .unwrap();
        assert!(out.status.success(), "curl {path}: exit {:?}", out.status);
        parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// Logs in and returns the session cookie (`tandem_session=...`).
    fn login(&self, user: &str, password: &str) -> Answer {
        let form = format!("user={user}&password={password}");
        self.https("/login", &["-d", &form])
    }

    fn session(&self, user: &str) -> (String, String) {
        let a = self.login(user, PASSWORD);
        assert_eq!(a.code, 303, "login {user}: {}", a.body);
        let cookie = a.header("set-cookie").unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        let who = self.https("/session", &["-H", &format!("Cookie: {cookie}")]);
        assert_eq!(who.code, 200);
        (cookie, who.json()["csrf"].as_str().unwrap().to_string())
    }

    /// A POST to the console with the session cookie and, if given, the CSRF header.
    fn post(&self, path: &str, cookie: &str, csrf: Option<&str>, body: &str) -> Answer {
        let cookie = format!("Cookie: {cookie}");
        let token = csrf.map(|c| format!("X-CSRF-Token: {c}"));
        let mut args = vec!["-H", &cookie, "-H", "Content-Type: application/json"];
        if let Some(t) = &token {
            args.extend(["-H", t.as_str()]);
        }
        args.extend(["-d", body]);
        self.https(path, &args)
    }

    /// `curl -i` to the TCP API with a bearer token.
    fn tcp(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
        let mut cmd = Command::new("curl");
        cmd.args(["-s", "-i", "-m", "10", "-X", method]);
        if let Some(t) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "-d", b]);
        }
        let out = cmd
            .arg(format!("http://{}{path}", self.tcp))
            .output()
            .unwrap();
        parse(&String::from_utf8_lossy(&out.stdout))
    }

    /// The audit events so far.
    fn audits(&self) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-s", "--unix-socket"])
            .arg(self.daemon.sock())
            .arg("http://a/v1/events?since=0&limit=10000")
            .output()
            .unwrap();
        let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        all.into_iter().filter(|e| e["kind"] == "audit").collect()
    }

    fn audited(&self, user: &str, action: &str, outcome: &str) -> bool {
        self.audits().iter().any(|e| {
            let f = &e["fields"];
            f["user"] == user && f["action"] == action && f["outcome"] == outcome
        })
    }
}

#[test]
fn the_tls_handshake_works_with_the_generated_certificate_whose_fingerprint_status_shows() {
    let c = Console::start();
    let page = c.https("/login", &[]);
    assert_eq!(page.code, 200);
    assert_eq!(page.header("x-frame-options"), Some("DENY"), "no framing");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        page.header("strict-transport-security"),
        Some("max-age=31536000"),
        "HTTPS only (HSTS)"
    );
    assert!(page
        .body
        .contains("<form method=\"post\" action=\"/login\">"));
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(c.cert())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let fingerprint = text.trim().split_once('=').unwrap().1.to_string();
    let st = c.daemon.status();
    assert_eq!(st["console"]["fingerprint"], fingerprint, "{st}");
    let (_, human, _) = c.daemon.cli(&["status"]);
    assert!(human.contains(&fingerprint), "{human}");
    // Without the certificate as trust anchor, the handshake fails verification.
    let untrusted = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--resolve"])
        .arg(format!("a:{}:127.0.0.1", c.port))
        .arg(format!("https://a:{}/login", c.port))
        .status()
        .unwrap();
    assert_eq!(untrusted.code(), Some(60), "peer certificate not trusted");
    // What the appliance puts in its login banner: the same certificate.
    let out = Command::new(BIN)
        .args(["console-cert", "--node", "a", "-c"])
        .arg(c.config())
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{line}");
    assert_eq!(
        line.trim(),
        format!(
            "https://127.0.0.1:{}/ certificate SHA-256 {fingerprint}",
            c.port
        )
    );
}

/// A flood of idle connections fills the console's connection slots: one more is
/// closed at once (not left to time out), and once the flood goes the console serves
/// again.
#[test]
fn connections_beyond_the_limit_are_closed_at_once_and_the_console_recovers() {
    use std::io::Read;
    use std::net::TcpStream;
    use std::time::{Duration, Instant};
    use tandem::console::tls::MAX_CONNECTIONS;
    let c = Console::start();
    let flood: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", c.port)).expect("connect"))
        .collect();
    let mut extra = TcpStream::connect(("127.0.0.1", c.port)).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(8)))
        .unwrap();
    let t = Instant::now();
    let mut b = [0u8; 1];
    let closed = matches!(extra.read(&mut b), Ok(0) | Err(_));
    assert!(
        closed && t.elapsed() < Duration::from_secs(5),
        "the connection over the limit was not closed at once ({:?})",
        t.elapsed()
    );
    drop(flood);
    daemon::wait_until("the console serves again", Duration::from_secs(10), || {
        c.https("/login", &[]).code == 200
    });
}

#[test]
fn plain_http_on_the_console_port_is_redirected_to_https() {
    let c = Console::start();
    let out = Command::new("curl")
        .args(["-s", "-i", "-m", "10"])
        .arg(format!("http://127.0.0.1:{}/groups/svc", c.port))
        .output()
        .unwrap();
    let a = parse(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(a.code, 301);
    let want = format!("https://127.0.0.1:{}/groups/svc", c.port);
    assert_eq!(a.header("location"), Some(want.as_str()));
}

#[test]
fn each_role_logs_in_with_a_fresh_secure_cookie_and_strangers_are_sent_to_the_login() {
    let c = Console::start();
    assert_eq!(c.https("/", &[]).header("location"), Some("/login"));
    assert_eq!(c.https("/v1/status", &[]).code, 401);
    for (user, role) in [("vera", "viewer"), ("otto", "operator"), ("ada", "admin")] {
        let a = c.login(user, PASSWORD);
        assert_eq!(a.code, 303, "{user}");
        let cookie = a.header("set-cookie").unwrap();
        for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.split("; ").any(|f| f == flag), "{flag} in {cookie}");
        }
        let (cookie, _) = c.session(user);
        let who = c.https("/session", &["-H", &format!("Cookie: {cookie}")]);
        assert_eq!(who.json()["role"], role);
        let st = c.https("/v1/status", &["-H", &format!("Cookie: {cookie}")]);
        assert_eq!(st.code, 200, "{user}");
        assert_eq!(st.json()["node"], "a");
        assert!(c.audited(user, "login", "allowed"));
    }
    assert_eq!(c.login("ada", "wrong password").code, 401);
    assert!(c.audited("ada", "login", "refused"));
    // Login CSRF: another site's form posting a password is refused, no cookie set.
    let form = format!("user=otto&password={PASSWORD}");
    let forged = c.https(
        "/login",
        &["-d", &form, "-H", "Origin: https://evil.example"],
    );
    assert_eq!(forged.code, 403);
    assert!(forged.header("set-cookie").is_none());
    let own = format!("Origin: https://a:{}", c.port);
    assert_eq!(c.https("/login", &["-d", &form, "-H", &own]).code, 303);
}

#[test]
fn a_viewer_is_refused_an_action_and_an_operator_may_act_both_audited() {
    let c = Console::start();
    let (cookie, csrf) = c.session("vera");
    let a = c.post("/v1/groups/svc/switchover", &cookie, Some(&csrf), "{}");
    assert_eq!(a.code, 403, "{}", a.body);
    assert!(c.audited("vera", "switchover", "refused"));
    let (cookie, csrf) = c.session("otto");
    let on = c.post(
        "/v1/groups/svc/maintenance",
        &cookie,
        Some(&csrf),
        r#"{"on":true}"#,
    );
    assert_eq!(on.code, 200, "{}", on.body);
    assert!(c.audited("otto", "maintenance", "allowed"));
    // A configuration change is for admins.
    let reload = c.post("/v1/config/reload", &cookie, Some(&csrf), "");
    assert_eq!(reload.code, 403);
    let (cookie, csrf) = c.session("ada");
    assert_eq!(
        c.post("/v1/config/reload", &cookie, Some(&csrf), "").code,
        200
    );
}

#[test]
fn an_action_without_the_csrf_token_is_refused() {
    let c = Console::start();
    let (cookie, csrf) = c.session("ada");
    let body = r#"{"on":true}"#;
    assert_eq!(
        c.post("/v1/groups/svc/maintenance", &cookie, None, body)
            .code,
        403
    );
    let wrong = c.post("/v1/groups/svc/maintenance", &cookie, Some("0000"), body);
    assert_eq!(wrong.code, 403);
    assert!(
        !c.audited("ada", "maintenance", "allowed"),
        "never reached the API"
    );
    let csrf_refusals = c.audits().into_iter().filter(|e| {
        e["fields"]["user"] == "ada"
            && e["fields"]["outcome"] == "refused"
            && e["fields"]["reason"] == "csrf"
    });
    assert_eq!(csrf_refusals.count(), 2, "both refusals audited");
    // A form may carry it as the field `csrf` (the logout button does).
    let h = format!("Cookie: {cookie}");
    assert_eq!(c.https("/logout", &["-H", &h, "-d", "csrf=nope"]).code, 403);
    let out = c.https("/logout", &["-H", &h, "-d", &format!("csrf={csrf}")]);
    assert_eq!(out.code, 303);
    assert_eq!(c.https("/v1/status", &["-H", &h]).code, 401, "logged out");
}

#[test]
fn a_session_id_planted_before_the_login_is_never_adopted() {
    let c = Console::start();
    let planted = "tandem_session=attacker-chosen-id";
    let a = c.https(
        "/login",
        &[
            "-H",
            &format!("Cookie: {planted}"),
            "-d",
            &format!("user=ada&password={PASSWORD}"),
        ],
    );
    assert_eq!(a.code, 303);
    let fresh = a.header("set-cookie").unwrap().split(';').next().unwrap();
    assert_ne!(fresh, planted);
    assert_eq!(fresh.len(), "tandem_session=".len() + 64);
    assert_eq!(
        c.https("/v1/status", &["-H", &format!("Cookie: {planted}")])
            .code,
        401
    );
    assert_eq!(
        c.https("/v1/status", &["-H", &format!("Cookie: {fresh}")])
            .code,
        200
    );
}

#[test]
fn the_sixth_wrong_password_in_a_minute_is_answered_429_and_audited() {
    let c = Console::start();
    for i in 0..5 {
        assert_eq!(c.login("otto", "wrong password").code, 401, "attempt {i}");
    }
    let a = c.login("otto", PASSWORD);
    assert_eq!(a.code, 429, "even the right password waits");
    let secs: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&secs), "{secs}");
    let limited = c
        .audits()
        .into_iter()
        .any(|e| e["fields"]["user"] == "otto" && e["fields"]["reason"] == "rate_limited");
    assert!(limited);
}

#[test]
fn tokens_act_with_their_role_on_the_tcp_api_and_the_console() {
    let c = Console::start();
    let add = |name: &str, role: &str| {
        let out = Command::new(BIN)
            .args(["token", "add", name, "--role", role, "-c"])
            .arg(c.config())
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().next().unwrap().to_string()
    };
    let (viewer, operator) = (add("nagios", "viewer"), add("ops", "operator"));
    let body = r#"{"on":true}"#;
    let on = Some(body);
    let path = "/v1/groups/svc/maintenance";
    assert_eq!(c.tcp("GET", "/v1/status", None, None).code, 401);
    assert_eq!(
        c.tcp("GET", "/v1/status", Some("tdm_wrong"), None).code,
        401
    );
    assert_eq!(c.tcp("GET", "/v1/status", Some(&viewer), None).code, 200);
    assert_eq!(c.tcp("POST", path, Some(&viewer), on).code, 403);
    assert!(c.audited("token nagios", "maintenance", "refused"));
    assert_eq!(c.tcp("POST", path, Some(&operator), on).code, 200);
    assert!(c.audited("token ops", "maintenance", "allowed"));
    assert_eq!(
        c.tcp("POST", "/v1/config/reload", Some(&operator), None)
            .code,
        403
    );
    assert_eq!(
        c.tcp("POST", "/v1/config/reload", Some(TOKEN), None).code,
        200
    );
    assert!(c.audited("api token", "post config reload", "allowed"));
    // The console takes tokens too, without a CSRF token (no cookie to ride on).
    let h = format!("Authorization: Bearer {viewer}");
    assert_eq!(c.https("/v1/status", &["-H", &h]).code, 200);
    let refused = c.https(
        path,
        &["-H", &h, "-H", "Content-Type: application/json", "-d", body],
    );
    assert_eq!(refused.code, 403);
    // A removed token is refused at once.
    let rm = Command::new(BIN)
        .args(["token", "remove", "nagios", "-c"])
        .arg(c.config())
        .status()
        .unwrap();
    assert!(rm.success());
    assert_eq!(c.tcp("GET", "/v1/status", Some(&viewer), None).code, 401);
}
