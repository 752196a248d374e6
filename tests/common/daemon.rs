//! Shared by the test files that run Tandem on loopback or in the lab (`tests/api.rs`, `tests/deb.rs`,
//! `tests/image_api.rs`, `tests/snmp.rs`, `tests/snmp_v3.rs`, `tests/nbd.rs`, `tests/mirror.rs`, `tests/lab.rs`,
//! `tests/image.rs`): the `tandem` binary, free loopback ports, polling waits, and a
//! [`Daemon`] (`tandem run` in a temporary directory, killed on drop).
//!
//! Each test file uses a part of this module, so the unused rest is allowed there.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The `tandem` binary cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_tandem");

/// How often the waits below try again.
const POLL: Duration = Duration::from_millis(50);

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP address on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_tcp_port()))
}

/// Polls `f` until it returns `Some`, for at most `timeout`. Returns the value and how
/// long it took; panics naming `what` on timeout.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> (T, Duration) {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return (v, t0.elapsed());
        }
        if t0.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Polls `cond` until it holds, for at most `timeout`; panics naming `what` on timeout.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    wait_for(what, timeout, || cond().then_some(()));
}

/// [`wait_until`] inside a tokio runtime: sleeps without blocking the runtime's thread.
pub async fn wait_until_async(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `tandem run --config <dir>/tandem.toml --node <node>` in a fresh temporary directory.
/// The configuration is expected to put the API socket at `<dir>/api.sock` (see
/// [`Daemon::sock`]). The process is killed and reaped on drop, even when a test panics.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    node: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Daemon {
    /// Writes the configuration `config(dir)` returns, starts the daemon as `node`, and
    /// waits until its API answers `tandem status`.
    pub fn start(node: &str, config: impl FnOnce(&Path) -> String) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tandem.toml"), config(dir.path())).unwrap();
        let mut d = Daemon {
            child: None,
            dir,
            node: node.to_string(),
        };
        d.spawn();
        d
    }

    /// Starts the process (again, after [`Daemon::terminate`]) and waits until its API
    /// answers.
    pub fn spawn(&mut self) {
        let child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(self.dir.path().join("tandem.toml"))
            .args(["--node", &self.node])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_until("the API socket", Duration::from_secs(15), || {
            self.sock().exists() && self.try_status().is_some()
        });
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon is running").id()
    }

    /// SIGTERM (a graceful stop) and the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the daemon is running");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        child.wait().unwrap()
    }

    /// SIGKILL and reap, if it is running.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn sock(&self) -> PathBuf {
        self.dir.path().join("api.sock")
    }

    /// Runs the CLI against this daemon: (exit code, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--socket")
            .arg(self.sock())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `tandem status --json`, or `None` while the daemon does not answer.
    pub fn try_status(&self) -> Option<Value> {
        let (code, out, _) = self.cli(&["status", "--json"]);
        if code != 0 {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    pub fn status(&self) -> Value {
        let (code, out, err) = self.cli(&["status", "--json"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str(&out).unwrap()
    }
}

/// `tandem user add NAME --role ROLE --password-stdin -c CONFIG`, which must succeed.
pub fn user_add(config: &Path, name: &str, role: &str, password: &str) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args([
            "user",
            "add",
            name,
            "--role",
            role,
            "--password-stdin",
            "-c",
        ])
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tandem user add");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("password");
    let out = child.wait_with_output().expect("tandem user add");
    assert!(
        out.status.success(),
        "user add {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `[[node]]` sections for `names`, in order: the `i`-th (from 0) has priority `i + 1`
/// and heartbeat address `127.0.0.<i + 1>` on path `lo`.
pub fn loopback_nodes(names: &[&str]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            format!(
                "\n[[node]]\nname = \"{name}\"\npriority = {p}\naddresses = {{ lo = \"127.0.0.{p}\" }}\n",
                p = i + 1
            )
        })
        .collect()
}

/// The sections every loopback daemon test shares: cluster `cluster` with a test key,
/// state and the API socket in `dir`, one heartbeat path `lo` on UDP `port`. The test
/// adds its nodes, mirrors and groups.
pub fn loopback_base(dir: &Path, cluster: &str, port: u16) -> String {
    format!(
        r#"
[cluster]
name = "{cluster}"
key = "0123456789abcdef0123"
state_dir = "{state}"

[heartbeat]
interval = "100ms"
dead_time = "500ms"
port = {port}
paths = ["lo"]

[api]
socket = "{sock}"
"#,
        state = dir.join("state").display(),
        sock = dir.join("api.sock").display(),
    )
}

/// The whole configuration of two loopback nodes `a` and `b` holding mirror `vol` (16
/// MiB, backing `<dir>/vol.img`, replication on TCP ports `ports`) in one link of
/// `mode`, and group `store` holding it: `mirror_extra` goes into the `[[mirror]]`
/// section and `link_extra` into its link.
pub fn loopback_mirror_pair(
    dir: &Path,
    cluster: &str,
    port: u16,
    ports: (u16, u16),
    mode: &str,
    mirror_extra: &str,
    link_extra: &str,
) -> String {
    format!(
        r#"
{base}
{nodes}
[[mirror]]
name = "vol"
backing = "{backing}"
size = "16MiB"
{mirror_extra}
addresses = {{ a = "127.0.0.1:{ma}", b = "127.0.0.2:{mb}" }}
[[mirror.link]]
between = ["a", "b"]
mode = "{mode}"
{link_extra}

[[group]]
name = "store"

[[group.resource]]
name = "vol"
kind = "mirror"
mirror = "vol"
"#,
        base = loopback_base(dir, cluster, port),
        nodes = loopback_nodes(&["a", "b"]),
        backing = dir.join("vol.img").display(),
        ma = ports.0,
        mb = ports.1,
    )
}
