//! `tandem fence` end to end against sushy-tools' Redfish emulator (fake driver), the
//! program that is the contract here: HTTP with discovery of the system, HTTPS with a
//! self-signed certificate made by `openssl`, wrong password (401), unknown system id
//! (404); and against an in-test BMC that never reports the power off (timeout).
//! IPMI runs the real `ipmitool` against OpenIPMI's `ipmi_sim` (RMCP+), whose chassis
//! power is a file behind its `chassis_control` script: alone, and as the fallback
//! when Redfish fails.
//!
//! The emulator lives in `.venv/`; ipmi_sim and ipmitool are Debian packages (all from
//! scripts/deps.sh). Without them the tests fail as root or in CI, and are skipped with
//! a notice otherwise.

#[path = "common/daemon.rs"]
mod daemon;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use daemon::{free_tcp_port, free_udp_port, wait_until, BIN};

const USER: &str = "admin";
const PASSWORD: &str = "fence-me-please";

fn emulator_bin() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/sushy-emulator")
}

/// The emulator is installed, or the test fails (root, CI) or is skipped.
macro_rules! require_emulator {
    () => {
        if !emulator_bin().exists() {
            let root = nix::unistd::geteuid().is_root();
            if root || std::env::var_os("CI").is_some() {
                panic!(
                    "sushy-emulator is not installed at .venv/bin: run scripts/deps.sh \
                     (it installs sushy-tools into .venv/)"
                );
            }
            eprintln!("SKIPPED: sushy-emulator not installed (run scripts/deps.sh)");
            return;
        }
    };
}

/// A sushy-emulator with the fake driver and one system, on 127.0.0.1; killed on drop.
struct Emulator {
    child: Child,
    port: u16,
    tls: bool,
    uuid: String,
    dir: tempfile::TempDir,
}

impl Emulator {
    fn start(tls: bool) -> Emulator {
        let dir = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        let uuid = format!("1e5c0000-0000-4000-8000-{:012x}", port);
        let hash = Command::new(dir_venv("python"))
            .args(["-c", "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())", PASSWORD])
            .output()
            .unwrap();
        assert!(hash.status.success(), "bcrypt: {hash:?}");
        let htpasswd = dir.path().join("htpasswd");
        let line = format!("{USER}:{}", String::from_utf8_lossy(&hash.stdout).trim());
        std::fs::write(&htpasswd, line + "\n").unwrap();
        let conf = dir.path().join("emulator.conf");
        std::fs::write(
            &conf,
            format!(
                "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_STATE_DIR = {state:?}\n\
                 SUSHY_EMULATOR_AUTH_FILE = {htpasswd:?}\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{uuid}', 'name': 'node-b', \
                 'power_state': 'On', 'external_notifier': False, \
                 'nics': [{{'mac': '00:5c:52:31:3a:9c', 'ip': '127.0.0.2'}}]}}]\n",
                state = dir.path().join("state").display().to_string(),
                htpasswd = htpasswd.display().to_string(),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(emulator_bin());
        cmd.arg("--config").arg(&conf);
        cmd.args(["-i", "127.0.0.1", "-p", &port.to_string()]);
        if tls {
            let (cert, key) = self_signed(dir.path());
            cmd.arg("--ssl-certificate")
                .arg(cert)
                .arg("--ssl-key")
                .arg(key);
        }
        let log = std::fs::File::create(dir.path().join("emulator.log")).unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let em = Emulator {
            child,
            port,
            tls,
            uuid,
            dir,
        };
        wait_until("sushy-emulator listening", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        em
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The system's PowerState, read with curl (independent of Tandem's client).
    fn power_state(&self) -> String {
        let out = Command::new("curl")
            .args(["-sSfk", "-u", &format!("{USER}:{PASSWORD}")])
            .arg(format!("{}/redfish/v1/Systems/{}", self.url(), self.uuid))
            .output()
            .expect("curl (scripts/deps.sh installs it)");
        assert!(out.status.success(), "curl: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["PowerState"].as_str().unwrap_or("?").to_string()
    }

    /// A cluster config whose node `b` is fenced through this emulator; `redfish`
    /// holds the extra keys of `[node.fence.redfish]`.
    fn config(&self, redfish: &str, extra: &str) -> PathBuf {
        let pw = self.dir.path().join("bmc.pw");
        write_secret(&pw, &format!("{PASSWORD}\n"));
        let text = format!(
            "{BASE}[node.fence]\ntimeout = \"40s\"\n{extra}\n[node.fence.redfish]\n\
             url = \"{}\"\nuser = \"{USER}\"\npassword_file = \"{}\"\n{redfish}\n",
            self.url(),
            pw.display()
        );
        let path = self
            .dir
            .path()
            .join(format!("tandem-{}.toml", rand_suffix()));
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("emulator.log"));
            eprintln!("--- emulator log\n{}", log.unwrap_or_default());
        }
    }
}

fn dir_venv(prog: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(".venv/bin")
        .join(prog)
}

fn rand_suffix() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A self-signed certificate and key for 127.0.0.1 in `dir`, made by openssl.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("bmc.crt"), dir.join("bmc.key"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=bmc.invalid", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (scripts/deps.sh installs it)");
    assert!(out.status.success(), "openssl: {out:?}");
    (cert, key)
}

const BASE: &str = r#"
[cluster]
name = "fence-test"
key = "0123456789abcdef"
[heartbeat]
paths = ["hb1"]
[[node]]
name = "a"
priority = 1
addresses = { hb1 = "127.0.0.1" }
[[node]]
name = "b"
priority = 2
addresses = { hb1 = "127.0.0.2" }
"#;

/// `tandem fence b --config FILE ARGS`, with `path` prepended to PATH if given.
fn fence(config: &Path, args: &[&str], path: Option<&Path>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(["fence", "b", "--config"]).arg(config).args(args);
    if let Some(p) = path {
        let old = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{old}", p.display()));
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    eprintln!(
        "tandem fence {args:?}: {}\nstdout: {}stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fence (off), read the state, unfence (on), each confirmed through the emulator.
fn off_status_on(em: &Emulator, cfg: &Path) {
    assert_eq!(em.power_state(), "On");
    let t0 = Instant::now();
    let off = fence(cfg, &["--off"], None);
    assert!(off.status.success(), "fence failed: {}", stderr(&off));
    assert!(
        stdout(&off).contains("fenced, power off (redfish"),
        "{}",
        stdout(&off)
    );
    eprintln!("fenced in {:?} (command total)", t0.elapsed());
    assert_eq!(em.power_state(), "Off");
    let st = fence(cfg, &["--status"], None);
    assert!(
        stdout(&st).contains("power off (redfish)"),
        "{}",
        stdout(&st)
    );
    let on = fence(cfg, &["--on"], None);
    assert!(on.status.success(), "unfence failed: {}", stderr(&on));
    assert_eq!(em.power_state(), "On");
}

#[test]
fn fences_and_unfences_over_http_discovering_the_system() {
    require_emulator!();
    let em = Emulator::start(false);
    off_status_on(&em, &em.config("", ""));
}

#[test]
fn fences_over_https_with_a_self_signed_cert_only_when_insecure() {
    require_emulator!();
    let em = Emulator::start(true);
    let strict = em.config(&format!("system = \"{}\"", em.uuid), "");
    let out = fence(&strict, &["--off"], None);
    assert_eq!(out.status.code(), Some(10));
    assert!(stderr(&out).contains("insecure = true"), "{}", stderr(&out));
    assert_eq!(em.power_state(), "On", "nothing was sent");
    let insecure = em.config(&format!("system = \"{}\"\ninsecure = true", em.uuid), "");
    off_status_on(&em, &insecure);
}

#[test]
fn a_wrong_password_is_a_clear_error() {
    require_emulator!();
    let em = Emulator::start(false);
    let cfg = em.config("", "");
    std::fs::write(em.dir.path().join("bmc.pw"), "wrong\n").unwrap();
    let out = fence(&cfg, &["--off"], None);
    assert_eq!(out.status.code(), Some(10));
    let err = stderr(&out);
    assert!(err.contains("refused the credentials (HTTP 401)"), "{err}");
    assert!(err.contains("NOT fenced"), "{err}");
    assert_eq!(em.power_state(), "On");
}

#[test]
fn an_unknown_system_id_is_a_404() {
    require_emulator!();
    let em = Emulator::start(false);
    let out = fence(
        &em.config("system = \"no-such-system\"", ""),
        &["--off"],
        None,
    );
    assert_eq!(out.status.code(), Some(10));
    let err = stderr(&out);
    assert!(
        err.contains("HTTP 404") && err.contains("system id"),
        "{err}"
    );
}

/// OpenIPMI's `ipmi_sim` on 127.0.0.1 (RMCP+, user `admin`), whose chassis power is a
/// file that its `chassis_control` script reads and writes; killed on drop.
struct IpmiSim {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl IpmiSim {
    fn start() -> IpmiSim {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let d = dir.path();
        let power = d.join("power");
        std::fs::write(&power, "1\n").unwrap();
        let script = d.join("chassis.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n# ipmi_sim chassis_control: MC get PARM... | MC set PARM VAL...\n\
                 shift; op=$1; shift\n\
                 case $op in\n\
                 get) for p; do [ \"$p\" = power ] && echo \"power:$(cat {p})\"; done ;;\n\
                 set) while [ $# -ge 2 ]; do [ \"$1\" = power ] && echo \"$2\" > {p}; shift 2; done ;;\n\
                 esac\n",
                p = power.display()
            ),
        )
        .unwrap();
        let mut perm = std::fs::metadata(&script).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&script, perm).unwrap();
        let auths = "none md2 md5 straight";
        std::fs::write(
            d.join("lan.conf"),
            format!(
                "name \"tandemtest\"\nset_working_mc 0x20\nstartlan 1\n\
                 addr 127.0.0.1 {port}\npriv_limit admin\n\
                 allowed_auths_callback {auths}\nallowed_auths_user {auths}\n\
                 allowed_auths_operator {auths}\nallowed_auths_admin {auths}\n\
                 guid a123456789abcdefa123456789abcdef\nendlan\n\
                 chassis_control \"{} 0x20\"\n\
                 user 2 true \"admin\" \"{IPMI_PASSWORD}\" admin 10 {auths}\n",
                script.display()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("sim.emu"),
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             mc_enable 0x20\n",
        )
        .unwrap();
        std::fs::create_dir(d.join("state")).unwrap();
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(d.join("lan.conf"))
            .arg("-f")
            .arg(d.join("sim.emu"))
            .arg("-s")
            .arg(d.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ipmi_sim (scripts/deps.sh installs openipmi)");
        let sim = IpmiSim { child, port, dir };
        wait_until("ipmi_sim answers", Duration::from_secs(20), || {
            sim.power().is_some()
        });
        sim
    }

    /// The chassis power as the simulator holds it: `Some(true)` for on.
    fn power(&self) -> Option<bool> {
        let out = Command::new("ipmitool")
            .args([
                "-I",
                "lanplus",
                "-C",
                "3",
                "-H",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args(["-U", "admin", "-f"])
            .arg(self.password_file(IPMI_PASSWORD))
            .args(["chassis", "power", "status"])
            .output()
            .expect("ipmitool (scripts/deps.sh installs it)");
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("Chassis Power is on") {
            Some(true)
        } else if text.contains("Chassis Power is off") {
            Some(false)
        } else {
            None
        }
    }

    fn password_file(&self, password: &str) -> PathBuf {
        let path = self.dir.path().join(format!("pw-{}", rand_suffix()));
        write_secret(&path, &format!("{password}\n"));
        path
    }

    /// A config whose node `b` has `redfish` (a section body, may be empty) and this
    /// simulator as its IPMI BMC.
    fn config(&self, redfish: &str, password: &str) -> PathBuf {
        let text = format!(
            "{BASE}[node.fence]\ntimeout = \"10s\"\n{redfish}\n[node.fence.ipmi]\n\
             host = \"127.0.0.1\"\nport = {}\ncipher_suite = 3\nuser = \"admin\"\npassword_file = \"{}\"\n",
            self.port,
            self.password_file(password).display()
        );
        let path = self
            .dir
            .path()
            .join(format!("tandem-{}.toml", rand_suffix()));
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const IPMI_PASSWORD: &str = "ipmi-s3cret";

/// ipmi_sim and ipmitool are installed, or the test fails (root, CI) or is skipped.
macro_rules! require_ipmi_sim {
    () => {
        let found = ["ipmi_sim", "ipmitool"].iter().all(|p| {
            Command::new("sh")
                .args(["-c", &format!("command -v {p}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !found {
            if nix::unistd::geteuid().is_root() || std::env::var_os("CI").is_some() {
                panic!("ipmi_sim or ipmitool is missing: run scripts/deps.sh (openipmi, ipmitool)");
            }
            eprintln!("SKIPPED: ipmi_sim or ipmitool not installed (run scripts/deps.sh)");
            return;
        }
    };
}

#[test]
fn fences_and_unfences_through_ipmi_sim() {
    require_ipmi_sim!();
    let sim = IpmiSim::start();
    let cfg = sim.config("", IPMI_PASSWORD);
    assert_eq!(sim.power(), Some(true));
    let off = fence(&cfg, &["--off"], None);
    assert!(off.status.success(), "{}", stderr(&off));
    assert!(
        stdout(&off).contains("fenced, power off (ipmi"),
        "{}",
        stdout(&off)
    );
    assert_eq!(sim.power(), Some(false));
    let st = fence(&cfg, &["--status"], None);
    assert!(stdout(&st).contains("power off (ipmi)"), "{}", stdout(&st));
    let on = fence(&cfg, &["--on"], None);
    assert!(on.status.success(), "{}", stderr(&on));
    assert_eq!(sim.power(), Some(true));
    // A wrong password: ipmitool's own message, and not fenced.
    let bad = fence(&sim.config("", "wrong"), &["--off"], None);
    assert_eq!(bad.status.code(), Some(10));
    assert!(stderr(&bad).contains("RMCP+ session"), "{}", stderr(&bad));
    assert_eq!(sim.power(), Some(true));
}

#[test]
fn ipmi_is_tried_when_redfish_fails() {
    require_ipmi_sim!();
    let sim = IpmiSim::start();
    // Redfish at a closed port fails at once; IPMI is next.
    let redfish = format!(
        "[node.fence.redfish]\nurl = \"http://127.0.0.1:{}\"\nuser = \"admin\"\npassword = \"x\"",
        free_tcp_port()
    );
    let out = fence(&sim.config(&redfish, IPMI_PASSWORD), &["--off"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("fenced, power off (ipmi"),
        "{}",
        stdout(&out)
    );
    // The Redfish failure is still told (a warning in the log).
    let err = stderr(&out);
    assert!(
        err.contains("method=redfish") && err.contains("cannot reach the BMC"),
        "{err}"
    );
    assert_eq!(sim.power(), Some(false));
}

/// A BMC that accepts the reset but whose PowerState stays `On`: one thread, one
/// request per connection (HTTP/1.1 with `Connection: close`).
fn stubborn_bmc() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { continue };
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            let _ = r.read_line(&mut line);
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let _ = r.by_ref().take(len as u64).read_to_end(&mut Vec::new());
            let (status, body) = if line.starts_with("POST ") {
                ("204 No Content", String::new())
            } else {
                let doc = serde_json::json!({
                    "Id": "1", "PowerState": "On",
                    "Actions": {"#ComputerSystem.Reset": {
                        "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"}}
                });
                ("200 OK", doc.to_string())
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

#[test]
fn a_bmc_that_never_reports_off_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let port = stubborn_bmc();
    let text = format!(
        "{BASE}[node.fence]\ntimeout = \"2s\"\n[node.fence.redfish]\n\
         url = \"http://127.0.0.1:{port}\"\nsystem = \"1\"\nuser = \"admin\"\npassword = \"x\"\n"
    );
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(&cfg, text).unwrap();
    let t0 = Instant::now();
    let out = fence(&cfg, &["--off"], None);
    let took = t0.elapsed();
    assert_eq!(out.status.code(), Some(10));
    let err = stderr(&out);
    assert!(
        err.contains("did not read off within") && err.contains("last read: on"),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

#[test]
fn a_node_without_a_fence_section_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("tandem.toml");
    std::fs::write(&cfg, BASE).unwrap();
    let out = fence(&cfg, &["--status"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no [node.fence] section"),
        "{}",
        stderr(&out)
    );
}

/// A secret file as the daemon requires it: readable by its owner only.
fn write_secret(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
