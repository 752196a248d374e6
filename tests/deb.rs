//! The Debian package and the daemon's side of systemd (issue 17, items 1 and 2).
//!
//! - The `.deb` (`scripts/deb.sh`, cargo-deb), built once per run from this test
//!   build's binary and unpacked with `dpkg-deb -x` into a temporary root: its files
//!   and modes, the conffile, the unit checked by `systemd-analyze verify`,
//!   `/var/lib/tandem` made by `systemd-tmpfiles --root`, the packaged binary's
//!   `--version` and `config check` of the packaged `/etc/tandem/tandem.toml`. These
//!   need cargo-deb in `.tools/` (`scripts/deb.sh` installs it; `scripts/test.sh` runs
//!   it first): without it they fail under CI and are skipped elsewhere.
//! - `Type=notify`: a daemon given a `NOTIFY_SOCKET` (a datagram socket bound here)
//!   and `WATCHDOG_USEC` sends `READY=1`, then `WATCHDOG=1` pings, then `STOPPING=1`.
//! - Log lines: no colour codes when stderr is a file; `--log-file` rotates by size.

#[path = "common/daemon.rs"]
mod daemon;

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use daemon::{free_udp_port, loopback_base, loopback_nodes, wait_until, BIN};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn cargo_deb() -> PathBuf {
    Path::new(REPO).join(".tools/bin/cargo-deb")
}

/// cargo-deb is installed, or the test fails (CI) or is skipped.
macro_rules! require_cargo_deb {
    () => {
        if !cargo_deb().exists() {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "cargo-deb is not installed in .tools/: run scripts/deb.sh (it installs it)"
                );
            }
            eprintln!("SKIPPED: cargo-deb is not installed in .tools/ (run scripts/deb.sh)");
            return;
        }
    };
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The package, built once per run and unpacked: (the .deb, its root, its control
/// files).
struct Unpacked {
    deb: PathBuf,
    root: PathBuf,
    control: PathBuf,
    _dir: tempfile::TempDir,
}

fn unpacked() -> &'static Unpacked {
    static DEB: OnceLock<Unpacked> = OnceLock::new();
    DEB.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // This test build's binary: target/debug/tandem, so its target directory.
        let target = Path::new(BIN).parent().unwrap().parent().unwrap();
        let t = Instant::now();
        let out = run(Command::new("scripts/deb.sh")
            .args(["--profile", "dev", "--no-build", "--fast", "--output"])
            .arg(dir.path())
            .env("CARGO_TARGET_DIR", target)
            .current_dir(REPO));
        eprintln!("package built in {:.1} s", t.elapsed().as_secs_f64());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let deb = PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("deb.sh prints the .deb")
                .trim(),
        );
        assert!(deb.exists(), "{}", deb.display());
        let root = dir.path().join("root");
        let control = dir.path().join("control");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
        run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
        Unpacked {
            deb,
            root,
            control,
            _dir: dir,
        }
    })
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_package_carries_the_binary_unit_config_completions_and_man_pages() {
    require_cargo_deb!();
    let u = unpacked();
    let r = &u.root;
    assert_eq!(mode(&r.join("usr/bin/tandem")), 0o755);
    assert_eq!(
        mode(&r.join("etc/tandem/tandem.toml")),
        0o600,
        "it holds the key"
    );
    assert_eq!(
        std::fs::read_to_string(r.join("etc/tandem/tandem.toml")).unwrap(),
        std::fs::read_to_string(Path::new(REPO).join("examples/tandem.toml")).unwrap()
    );
    let conffiles = std::fs::read_to_string(u.control.join("conffiles")).unwrap();
    assert!(
        conffiles.lines().any(|l| l == "/etc/tandem/tandem.toml"),
        "{conffiles}"
    );
    for f in [
        "usr/lib/systemd/system/tandem.service",
        "usr/lib/tmpfiles.d/tandem.conf",
        "usr/share/bash-completion/completions/tandem",
        "usr/share/zsh/vendor-completions/_tandem",
        "usr/share/fish/vendor_completions.d/tandem.fish",
        "usr/share/man/man1/tandem.1",
        "usr/share/man/man1/tandem-run.1",
        "usr/share/man/man1/tandem-status.1",
    ] {
        assert_eq!(mode(&r.join(f)), 0o644, "{f}");
    }
    let postinst = std::fs::read_to_string(u.control.join("postinst")).unwrap();
    assert!(
        postinst.contains("systemd-tmpfiles --create tandem.conf"),
        "{postinst}"
    );
    assert!(!postinst.contains("#DEBHELPER#"), "{postinst}");
    let info = run(Command::new("dpkg-deb")
        .arg("-f")
        .arg(&u.deb)
        .arg("Package"));
    assert_eq!(String::from_utf8_lossy(&info.stdout).trim(), "tandem");
}

#[test]
fn systemd_analyze_verifies_the_notify_unit() {
    require_cargo_deb!();
    let u = unpacked();
    let unit =
        std::fs::read_to_string(u.root.join("usr/lib/systemd/system/tandem.service")).unwrap();
    for line in ["Type=notify", "WatchdogSec=10s", "StateDirectory=tandem"] {
        assert!(unit.lines().any(|l| l == line), "{line} in\n{unit}");
    }
    // The unit names /usr/bin/tandem, which verify wants executable: point it at the
    // unpacked one. The man pages its Documentation= names are looked up in the root.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tandem.service");
    let bin = u.root.join("usr/bin/tandem");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/tandem", bin.to_str().unwrap()),
    )
    .unwrap();
    let out = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .env("MANPATH", u.root.join("usr/share/man")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("tandem.service"), "{stderr}");
}

#[test]
fn the_packaged_binary_runs_and_accepts_the_packaged_config() {
    require_cargo_deb!();
    let u = unpacked();
    let bin = u.root.join("usr/bin/tandem");
    let out = run(Command::new(&bin).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tandem {}", env!("CARGO_PKG_VERSION"))
    );
    let out = run(Command::new(&bin)
        .args(["config", "check"])
        .arg(u.root.join("etc/tandem/tandem.toml")));
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    // What the postinst's systemd-tmpfiles does on a host: /var/lib/tandem, root only.
    run(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", u.root.display()))
        .args(["--create", "tandem.conf"]));
    assert_eq!(mode(&u.root.join("var/lib/tandem")), 0o700);
}

/// A one-node configuration on loopback in `dir`.
fn config(dir: &Path) -> PathBuf {
    let path = dir.join("tandem.toml");
    let text = format!(
        r#"
{base}
{nodes}"#,
        base = loopback_base(dir, "systemd", free_udp_port()),
        nodes = loopback_nodes(&["a"]),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `tandem run` as node `a` with a `NOTIFY_SOCKET` bound here; killed on drop.
struct Run {
    child: Child,
    notify: UnixDatagram,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Run {
    /// Starts the daemon and waits for its `READY=1` (its SIGTERM handler is in place
    /// by then, and its API listens).
    fn start(dir: &Path, extra: &[&str], tweak: impl FnOnce(&mut Command)) -> Run {
        let cfg = config(dir);
        let path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--node", "a", "--config"])
            .arg(&cfg)
            .args(extra)
            .env("NOTIFY_SOCKET", &path)
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        tweak(&mut cmd);
        let run = Run {
            child: cmd.spawn().unwrap(),
            notify,
        };
        assert_eq!(run.recv(), "READY=1");
        assert!(
            dir.join("api.sock").exists(),
            "the API listens once READY is sent"
        );
        run
    }

    /// The next notification (within 20 s).
    fn recv(&self) -> String {
        let mut buf = [0u8; 256];
        let n = self.notify.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).trim().to_string()
    }

    /// SIGTERM and wait for a clean exit; the notifications sent meanwhile.
    fn terminate(mut self) -> Vec<String> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let st = self.child.wait().unwrap();
        assert!(st.success(), "{st}");
        self.notify.set_nonblocking(true).unwrap();
        std::iter::from_fn(|| {
            let mut buf = [0u8; 256];
            let n = self.notify.recv(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
        })
        .collect()
    }
}

#[test]
fn the_daemon_tells_systemd_ready_then_pets_its_watchdog_then_stopping() {
    let dir = tempfile::tempdir().unwrap();
    // 400 ms: a ping every 200 ms. READY=1 is awaited by `start`.
    let daemon = Run::start(dir.path(), &[], |c| {
        c.env("WATCHDOG_USEC", "400000");
    });
    let t = Instant::now();
    let mut pings = Vec::new();
    while pings.len() < 3 {
        let m = daemon.recv();
        assert_eq!(m, "WATCHDOG=1");
        pings.push(t.elapsed());
    }
    let gap = pings[2] - pings[1];
    assert!(
        gap >= Duration::from_millis(150) && gap < Duration::from_millis(1000),
        "pings every ~200 ms: {pings:?}"
    );
    let rest = daemon.terminate();
    assert!(rest.iter().any(|m| m == "STOPPING=1"), "{rest:?}");
}

fn has_escape_codes(text: &[u8]) -> bool {
    text.windows(2).any(|w| w == b"\x1b[")
}

#[test]
fn a_daemon_whose_stderr_is_a_file_writes_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let daemon = Run::start(dir.path(), &[], |c| {
        c.stderr(file).env_remove("NO_COLOR");
    });
    wait_until("the daemon logs its start", Duration::from_secs(15), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.contains("event"))
    });
    daemon.terminate();
    let text = std::fs::read(&log).unwrap();
    assert!(!text.is_empty());
    assert!(
        !has_escape_codes(&text),
        "{}",
        String::from_utf8_lossy(&text)
    );
}

#[test]
fn log_file_rotates_by_size_and_keeps_plain_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("tandem.log");
    let daemon = Run::start(
        dir.path(),
        &[
            "--log-file",
            log.to_str().unwrap(),
            "--log-max-bytes",
            "200",
        ],
        |_| {},
    );
    let rotated = dir.path().join("tandem.log.1");
    wait_until("the log rotates", Duration::from_secs(20), || {
        rotated.exists()
    });
    daemon.terminate();
    // Each line is longer than 100 bytes: a file holds at most 200 bytes or one line.
    let files: Vec<PathBuf> = (0..6)
        .map(|n| match n {
            0 => log.clone(),
            n => dir.path().join(format!("tandem.log.{n}")),
        })
        .filter(|p| p.exists())
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    assert!(!dir.path().join("tandem.log.5").exists(), "four kept");
    for p in &files {
        let text = std::fs::read(p).unwrap();
        let lines = text.iter().filter(|&&b| b == b'\n').count();
        assert!(
            text.len() <= 200 || lines == 1,
            "{}: {lines} lines",
            p.display()
        );
        assert!(!has_escape_codes(&text), "{}", p.display());
        assert!(text.ends_with(b"\n"), "whole lines only: {}", p.display());
    }
    let all: String = files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert!(
        all.contains("shutting down"),
        "the last lines are there: {all}"
    );
}
