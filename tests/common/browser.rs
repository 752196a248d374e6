//! A real browser for the console tests: Debian's Chromium, driven over WebDriver by
//! `chromedriver` running inside a lab namespace (so the page sees the cluster as a
//! client there does). The test reaches chromedriver through a relay: a loopback
//! listener in the test's own namespace whose connections are made from inside the
//! lab namespace. Blocking: call it from a plain thread, never from inside a tokio
//! runtime.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

/// Whether Chromium and chromedriver are installed (`scripts/deps.sh` installs them).
pub fn available() -> bool {
    Path::new("/usr/bin/chromium").exists() && Path::new("/usr/bin/chromedriver").exists()
}

/// One headless Chromium session; the driver (and the browser) stop on drop.
pub struct Browser {
    driver: Child,
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    shots: PathBuf,
}

/// A relay from a loopback port here to `port` on the loopback of namespace `ns`.
fn relay_into(ns: &str, port: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("relay listener");
    let here = listener.local_addr().expect("relay address").port();
    let ns_file = std::fs::File::open(format!("/run/netns/{ns}")).expect("open netns");
    std::thread::spawn(move || {
        // Only this thread (and the threads it starts) moves into the lab namespace;
        // the listener, made before, stays in the test's namespace.
        nix::sched::setns(&ns_file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        for conn in listener.incoming().flatten() {
            let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)) else {
                continue;
            };
            pipe(conn, upstream);
        }
    });
    here
}

/// Copies both ways between `a` and `b` until either side closes.
fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().expect("clone"), b.try_clone().expect("clone"));
    for (mut from, mut to) in [(a, b2), (b, a2)] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// Starts `cmd` (chromedriver, perhaps inside a namespace) on `port`, in its own
/// process group.
fn spawn_driver(mut cmd: Command, port: u16) -> Child {
    cmd.arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    cmd.spawn().expect("start chromedriver")
}

/// A free port number to give chromedriver (inside the namespace, where nothing of
/// the test listens).
fn driver_port() -> u16 {
    9515 + (std::process::id() % 400) as u16
}

impl Browser {
    /// Starts chromedriver in `ns` and a headless Chromium session that accepts the
    /// console's self-signed certificate. Screenshots go to `shots`.
    pub fn start_in(ns: &str, shots: &Path) -> Browser {
        let port = driver_port();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, "chromedriver"]);
        let driver = spawn_driver(cmd, port);
        Browser::session(driver, relay_into(ns, port), shots)
    }

    /// The same in the test's own namespace (pages served on loopback).
    pub fn start_local(shots: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = spawn_driver(Command::new("chromedriver"), port);
        Browser::session(driver, port, shots)
    }

    fn session(driver: Child, port: u16, shots: &Path) -> Browser {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut browser = Browser {
            driver,
            rt,
            client: None,
            shots: shots.to_path_buf(),
        };
        std::fs::create_dir_all(shots).expect("screenshot dir");
        let client = browser.rt.block_on(connect(port));
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("browser session")
    }

    /// Opens `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        let c = self.client();
        self.rt
            .block_on(c.goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    /// The page's current URL.
    pub fn url(&self) -> String {
        let c = self.client();
        self.rt
            .block_on(c.current_url())
            .expect("current url")
            .to_string()
    }

    /// Types `text` into the element `css` (after clearing it).
    pub fn fill(&self, css: &str, text: &str) {
        let c = self.client();
        self.rt.block_on(async {
            let e = c
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            e.clear().await.expect("clear");
            e.send_keys(text).await.expect("type");
        });
    }

    /// Clicks the element `css`.
    pub fn click(&self, css: &str) {
        let c = self.client();
        self.rt.block_on(async {
            let e = c
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|e| panic!("{css}: {e}"));
            e.click()
                .await
                .unwrap_or_else(|e| panic!("click {css}: {e}"));
        });
    }

    /// Whether an element `css` is on the page now.
    pub fn has(&self, css: &str) -> bool {
        let c = self.client();
        self.rt
            .block_on(c.find_all(Locator::Css(css)))
            .map(|v| !v.is_empty())
            .unwrap_or(false)
    }

    /// The text of the body (what a reader sees).
    pub fn text(&self) -> String {
        self.eval("return document.body ? document.body.innerText : ''")
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn eval(&self, script: &str) -> Value {
        let c = self.client();
        self.rt
            .block_on(c.execute(script, vec![]))
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    /// Polls `script` (a function body) until it returns true: the time it took, or
    /// `None` after `secs` seconds.
    pub fn wait_js(&self, script: &str, secs: u64) -> Option<Duration> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if self.eval(script) == Value::Bool(true) {
                return Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    /// Waits until the page's text satisfies `ok`; returns how long that took, or
    /// panics after `timeout` with the text seen last.
    pub fn wait_text(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> Duration {
        let t0 = Instant::now();
        loop {
            let text = self.text();
            if ok(&text) {
                return t0.elapsed();
            }
            if t0.elapsed() > timeout {
                self.screenshot(&format!("timeout-{}", what.replace(' ', "-")));
                panic!("page never showed {what} within {timeout:?}; it reads:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Saves a PNG of the viewport as `<shots>/<name>.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let c = self.client();
        let png = self.rt.block_on(c.screenshot()).expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        path
    }

    /// `fetch()` from the page (same origin, its cookies): the status code.
    pub fn fetch_status(&self, method: &str, path: &str, headers: Value) -> u16 {
        let script = format!(
            "const done = arguments[arguments.length - 1];\
             fetch({path:?}, {{method: {method:?}, headers: {headers}, credentials: 'same-origin'}})\
             .then(r => done(r.status)).catch(e => done(0));"
        );
        let c = self.client();
        self.rt
            .block_on(c.execute_async(&script, vec![]))
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u16
    }
}

async fn connect(port: u16) -> Client {
    let caps = json!({
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--window-size=1280,900"]
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let url = format!("http://127.0.0.1:{port}");
    let t0 = Instant::now();
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => return c,
            Err(e) if t0.elapsed() < Duration::from_secs(20) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver never answered: {e}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), c.close()).await });
        }
        // The driver's process group: chromedriver and any browser it left.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(self.driver.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.driver.wait();
    }
}
