//! System side of the lab: running `ip` and `nft`, entering network
//! namespaces from a thread (`setns`), spawning detached processes inside a
//! namespace, signalling, and Ctrl-C handling.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::unistd::Pid;
use tracing::{debug, warn};

use super::LabError;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Route SIGINT/SIGTERM to a flag so long operations can stop and tear the
/// lab down instead of dying half-way.
pub fn install_interrupt_handler() {
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        if let Err(e) = unsafe { signal::signal(sig, SigHandler::Handler(on_signal)) } {
            warn!(?sig, error = %e, "cannot install signal handler");
        }
    }
}

/// Fail with [`LabError::Interrupted`] once Ctrl-C was pressed.
pub fn check_interrupt() -> Result<(), LabError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleep in small steps, failing early on Ctrl-C.
pub fn sleep(d: Duration) -> Result<(), LabError> {
    let end = std::time::Instant::now() + d;
    loop {
        check_interrupt()?;
        let now = std::time::Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

/// Wall clock in milliseconds since the epoch (fractional), comparable with
/// the daemon's `time_ms`.
pub fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn render(program: &str, args: &[&str]) -> String {
    let mut s = program.to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// Run a command to completion; stdout on success, stderr in the error.
pub fn cmd(program: &str, args: &[&str]) -> Result<String, LabError> {
    cmd_stdin(program, args, None)
}

/// Like [`cmd`] but feeds `stdin`.
pub fn cmd_stdin(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, LabError> {
    let line = render(program, args);
    debug!(cmd = %line, "exec");
    let mut c = Command::new(program);
    c.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| LabError::Spawn {
        cmd: line.clone(),
        source: e,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| LabError::io(format!("writing stdin of `{line}`"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::io(format!("waiting for `{line}`"), e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            cmd: line,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    cmd("ip", args)
}

/// `ip -n NS ARGS...`
pub fn ipn(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut v = vec!["-n", ns];
    v.extend_from_slice(args);
    cmd("ip", &v)
}

/// `ip -n NS -batch -` with one command per line.
pub fn ip_batch(ns: &str, lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut script = lines.join("\n");
    script.push('\n');
    cmd_stdin("ip", &["-n", ns, "-batch", "-"], Some(&script)).map(|_| ())
}

/// Apply an nft script inside namespace `ns`.
pub fn nft_script(ns: &str, script: &str) -> Result<(), LabError> {
    cmd_stdin("ip", &["netns", "exec", ns, "nft", "-f", "-"], Some(script)).map(|_| ())
}

/// `nft list tables` inside `ns`.
pub fn nft_list_tables(ns: &str) -> Result<String, LabError> {
    cmd("ip", &["netns", "exec", ns, "nft", "list", "tables"])
}

/// Names of all named network namespaces.
pub fn list_netns() -> Result<Vec<String>, LabError> {
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Whether a named namespace exists.
pub fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

/// Pids of every process in namespace `ns`.
pub fn netns_pids(ns: &str) -> Result<Vec<i32>, LabError> {
    Ok(ip(&["netns", "pids", ns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Interface names in `ns`, from `ip -j link`.
pub fn links(ns: &str) -> Result<Vec<String>, LabError> {
    let out = ipn(ns, &["-j", "link", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default())
}

/// `ip -j addr show` inside `ns`, parsed.
pub fn addr_json(ns: &str) -> Result<serde_json::Value, LabError> {
    Ok(serde_json::from_str(&ipn(ns, &["-j", "addr", "show"])?)?)
}

/// Run `f` on a new thread that has joined network namespace `ns`.
pub fn spawn_in_netns<T, F>(ns: &str, f: F) -> JoinHandle<Result<T, LabError>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, LabError> + Send + 'static,
{
    let ns = ns.to_string();
    std::thread::spawn(move || {
        let path = Path::new("/run/netns").join(&ns);
        let file = File::open(&path)
            .map_err(|e| LabError::io(format!("opening {}", path.display()), e))?;
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| LabError::Netns {
            ns: ns.clone(),
            source: e,
        })?;
        f()
    })
}

/// Run `f` inside namespace `ns` and wait for it.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T, LabError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, LabError> + Send + 'static,
{
    spawn_in_netns(ns, f)
        .join()
        .map_err(|_| LabError::Invalid("namespace worker thread panicked".into()))?
}

/// Write `value` to `/proc/sys/<key>` as seen from namespace `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<(), LabError> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let value = value.to_string();
    in_netns(ns, move || {
        std::fs::write(&path, value.as_bytes())
            .map_err(|e| LabError::io(format!("writing {path}"), e))
    })
}

/// Start `argv` inside `ns` via `ip netns exec`, in its own session, stdio
/// appended to `log`. The child is reaped by a background thread so it never
/// lingers as a zombie while we run; if we exit first it is re-parented.
pub fn spawn_detached(
    ns: &str,
    argv: &[String],
    env: &[(String, String)],
    log: &Path,
) -> Result<u32, LabError> {
    let (prog, rest) = argv
        .split_first()
        .ok_or_else(|| LabError::Invalid("empty command".into()))?;
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io(format!("opening {}", log.display()), e))?;
    let err = out
        .try_clone()
        .map_err(|e| LabError::io("duplicating log handle", e))?;
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog])
        .args(rest)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid() is async-signal-safe and touches no Rust state.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let line = format!("ip netns exec {ns} {}", argv.join(" "));
    let mut child = c.spawn().map_err(|e| LabError::Spawn {
        cmd: line.clone(),
        source: e,
    })?;
    let pid = child.id();
    debug!(pid, cmd = %line, "spawned");
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    Ok(pid)
}

/// True if `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .map(|state| state != "Z" && state != "X")
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Process name (`/proc/PID/comm`).
pub fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Send `sig` to `pid`, ignoring processes that are already gone.
pub fn kill(pid: i32, sig: Signal) -> Result<(), LabError> {
    match signal::kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(LabError::Signal { pid, source: e }),
    }
}

/// SIGKILL every process of `ns` and wait (bounded) until they are gone.
pub fn kill_all_in(ns: &str) -> Result<(), LabError> {
    for _ in 0..50 {
        let pids = netns_pids(ns)?;
        if pids.is_empty() {
            return Ok(());
        }
        for p in pids {
            kill(p, Signal::SIGKILL)?;
        }
        std::thread::sleep(Duration::from_millis(40));
    }
    warn!(ns, "processes survive SIGKILL");
    Ok(())
}

/// 16 random bytes from the kernel.
pub fn random_bytes() -> Result<[u8; 16], LabError> {
    let mut b = [0u8; 16];
    let mut f = File::open("/dev/urandom").map_err(|e| LabError::io("opening /dev/urandom", e))?;
    std::io::Read::read_exact(&mut f, &mut b)
        .map_err(|e| LabError::io("reading /dev/urandom", e))?;
    Ok(b)
}

/// Last `n` lines of a file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
