//! Boot tests of the appliance image (`image/`) under QEMU TCG: UEFI (OVMF) and legacy
//! BIOS (SeaBIOS) boots reach the metrics endpoint and the SNMP agent through user-mode
//! networking; a slot that never becomes healthy is abandoned for the previous one; two
//! VMs on a multicast socket network fail the demo group over when the owner's QEMU is
//! killed (a helper on that LAN sees the floating IP move by ARP), data the owner
//! wrote to an ext4 filesystem on the mirror, through the kernel's NBD client, is read
//! back on the survivor, and a trap receiver on the host gets `tandemFailoverCompleted`;
//! the same pair with one raw disk image attached to both (`share-rw`) instead of the
//! mirror fails over under the disk lease: the survivor takes it only once the killed
//! owner's has expired, and reads the counter the owner wrote on the disk;
//! two VMs and the host's `tandem witness` (a network namespace with a bridge and one
//! tap per VM) run in quorum mode with an i6300ESB watchdog each, and the owner whose
//! daemon hangs (SIGSTOP, typed on its serial console) is reset by the watchdog while
//! the other VM takes the group over (checked, not timed: TCG). The serial console asks
//! for root's password: the UEFI boot logs in with the one its first boot showed, the
//! BIOS boot and the two-VM clusters with the one their data partition seeds, before
//! anything is typed into the shell.
//!
//! The image is built once per test run (`image/build.sh`, guarded by a `OnceLock`).
//! Skipped, with a message, only when QEMU, OVMF, SeaBIOS or the image tooling is not
//! installed (`scripts/deps.sh` installs them all).

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[path = "common/daemon.rs"]
mod daemon;
use daemon::{free_tcp_port, free_udp_port};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";
/// tandemFailoverCompleted (TANDEM-MIB, tandemNotifications 2).
const FAILOVER_COMPLETED: &str = ".1.3.6.1.4.1.32473.0.2";
/// tandemSwitchoverCompleted (TANDEM-MIB, tandemNotifications 4).
const SWITCHOVER_COMPLETED: &str = ".1.3.6.1.4.1.32473.0.4";
const READY_BOUND: Duration = Duration::from_secs(180);
/// The console password the tests seed (`console-password` on the data partition).
const CONSOLE_PASSWORD: &str = "tandem-test-console";
/// What the root shell prints when it starts (`/etc/profile`).
const SHELL_BANNER: &str = "Tandem appliance (maintenance shell)";

/// The data partition's `console-password` for `password` (mode 0600, as an operator
/// seeds it), made by `tandem console-password hash`.
fn seed_console_password(data: &Path, password: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mut child = Command::new(daemon::BIN)
        .args(["console-password", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{password}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let file = data.join("console-password");
    std::fs::write(&file, &out.stdout).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn missing_tools() -> Option<String> {
    let bins = [
        "qemu-system-x86_64",
        "snmpget",
        "snmptrapd",
        "mkfs.vfat",
        "mcopy",
        "syslinux",
        "sgdisk",
        "mke2fs",
        "cpio",
        "zstd",
        "depmod",
    ];
    for b in bins {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {b}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{b}` is not installed"));
        }
    }
    for f in [OVMF_CODE, OVMF_VARS, SEABIOS, "/bin/busybox"] {
        if !Path::new(f).exists() {
            return Some(format!("{f} is missing"));
        }
    }
    None
}

macro_rules! require_image_tools {
    () => {
        if let Some(why) = missing_tools() {
            eprintln!("SKIPPED: {why}; run scripts/deps.sh to install the image tooling");
            return;
        }
    };
}

/// Builds the image once per test run; every test then assembles its own disk.
fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let t = Instant::now();
        let st = Command::new("image/build.sh")
            .arg("--no-compress")
            .current_dir(REPO)
            .status()
            .expect("run image/build.sh");
        assert!(st.success(), "image/build.sh failed");
        eprintln!("image built in {:.1} s", t.elapsed().as_secs_f64());
        Path::new(REPO).join("target/image/tandem.img")
    })
}

/// QEMU runs are heavy under TCG on small machines: one test's VMs at a time.
fn qemu_slots() -> &'static Mutex<()> {
    static M: OnceLock<Mutex<()>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(()))
}

fn mkdisk(out: &Path, args: &[&str]) {
    built();
    let st = Command::new("image/mkdisk.sh")
        .arg(out)
        .args(args)
        .current_dir(REPO)
        .stdout(Stdio::null())
        .status()
        .expect("run image/mkdisk.sh");
    assert!(st.success(), "image/mkdisk.sh failed");
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Firmware {
    Uefi,
    Bios,
}

/// One QEMU; killed (and reaped) on drop, even when the test panics.
struct Vm {
    name: String,
    child: Child,
    serial: PathBuf,
    disk: PathBuf,
    started: Instant,
    metrics: u16,
    snmp: u16,
    demo: u16,
    /// What is typed into the serial console (`VmSpec::console_input`).
    console_in: Option<UnixStream>,
    /// When QEMU reported its watchdog firing (QMP `WATCHDOG` events).
    watchdog_fired: Arc<Mutex<Vec<Instant>>>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct VmSpec<'a> {
    name: &'a str,
    firmware: Firmware,
    disk: &'a Path,
    /// Extra NIC for the cluster LAN: the `-netdev` backend (`socket,mcast=...` or
    /// `tap,ifname=...`), and the MAC.
    lan: Option<(String, String)>,
    /// An i6300ESB watchdog, whose expiry resets the VM.
    watchdog: bool,
    /// The serial console on a socket, so that a test can type into its root shell
    /// ([`Vm::type_line`]); what the guest writes still goes to the console file.
    console_input: bool,
    /// A raw disk image every VM of the test attaches read-write at once (`share-rw`,
    /// no host page cache, no image lock): the guest's [`SHARED_DISK_DEV`].
    shared_disk: Option<&'a Path>,
}

impl Vm {
    fn start(dir: &Path, spec: VmSpec<'_>) -> Vm {
        let (metrics, snmp, demo) = (free_tcp_port(), free_udp_port(), free_tcp_port());
        let serial = dir.join(format!("{}-serial.log", spec.name));
        let mut cmd = Command::new("qemu-system-x86_64");
        // RDRAND, as every x86-64 server CPU has: without it the kernel's random pool
        // takes a second or more of boot to initialise under TCG.
        cmd.args(["-machine", "q35", "-accel", "tcg", "-cpu", "qemu64,+rdrand"])
            .args(["-m", "512", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"]);
        let sock = dir.join(format!("{}-serial.sock", spec.name));
        if spec.console_input {
            // QEMU waits for the connection (below) before it starts the guest, so
            // nothing the firmware writes is lost.
            cmd.arg("-chardev")
                .arg(format!(
                    "socket,id=ser0,path={},server=on,wait=on",
                    sock.display()
                ))
                .args(["-serial", "chardev:ser0"]);
        } else {
            cmd.args(["-serial", &format!("file:{}", serial.display())]);
        }
        let qmp = dir.join(format!("{}-qmp.sock", spec.name));
        if spec.watchdog {
            cmd.args(["-device", "i6300esb", "-action", "watchdog=reset"]);
            cmd.arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", qmp.display()));
        }
        match spec.firmware {
            Firmware::Uefi => {
                let vars = dir.join(format!("{}-OVMF_VARS.fd", spec.name));
                std::fs::copy(OVMF_VARS, &vars).unwrap();
                cmd.arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ));
            }
            Firmware::Bios => {
                cmd.args(["-bios", SEABIOS]);
            }
        }
        cmd.arg("-drive").arg(format!(
            "file={},format=raw,if=none,id=disk0",
            spec.disk.display()
        ));
        cmd.args(["-device", "virtio-blk-pci,drive=disk0,addr=0x5"]);
        if let Some(shared) = spec.shared_disk {
            // After the boot disk on the PCI bus, so the guest names it the second.
            cmd.arg("-drive").arg(format!(
                "file={},format=raw,if=none,id=shared,cache=none,file.locking=off",
                shared.display()
            ));
            cmd.arg("-device").arg(format!(
                "virtio-blk-pci,drive=shared,share-rw=on,serial={SHARED_DISK_SERIAL},addr=0x6"
            ));
        }
        cmd.arg("-netdev").arg(format!(
            "user,id=n0,hostfwd=tcp:127.0.0.1:{metrics}-:9776,hostfwd=udp:127.0.0.1:{snmp}-:161,hostfwd=tcp:127.0.0.1:{demo}-:8080"
        ));
        cmd.args(["-device", "virtio-net-pci,netdev=n0,addr=0x3"]);
        if let Some((netdev, mac)) = &spec.lan {
            cmd.arg("-netdev").arg(format!("{netdev},id=n1"));
            cmd.arg("-device")
                .arg(format!("virtio-net-pci,netdev=n1,mac={mac},addr=0x4"));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{}-qemu.err", spec.name))).unwrap())
            .spawn()
            .expect("qemu-system-x86_64");
        let console_in = spec.console_input.then(|| {
            let s = connect_unix(&sock, spec.name);
            let mut from_guest = s.try_clone().unwrap();
            let mut log = std::fs::File::create(&serial).unwrap();
            // Ends when QEMU closes the socket (it exits).
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = from_guest.read(&mut buf) {
                    if n == 0 || log.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
            s
        });
        let watchdog_fired = Arc::new(Mutex::new(Vec::new()));
        if spec.watchdog {
            let s = connect_unix(&qmp, spec.name);
            let mut to_qemu = s.try_clone().unwrap();
            to_qemu
                .write_all(b"{\"execute\": \"qmp_capabilities\"}\n")
                .unwrap();
            let fired = watchdog_fired.clone();
            // Ends when QEMU closes the socket (it exits).
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("\"WATCHDOG\"") {
                        fired.lock().unwrap().push(Instant::now());
                    }
                }
                drop(to_qemu);
            });
        }
        Vm {
            name: spec.name.to_string(),
            child,
            serial,
            disk: spec.disk.to_path_buf(),
            started: Instant::now(),
            metrics,
            snmp,
            demo,
            console_in,
            watchdog_fired,
        }
    }

    /// Types one line into the root shell on the serial console.
    fn type_line(&mut self, line: &str) {
        let s = self
            .console_in
            .as_mut()
            .expect("the VM was started with console_input");
        s.write_all(format!("{line}\n").as_bytes()).unwrap();
    }

    fn console(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Waits until the console shows `marker` more than `seen` times.
    fn wait_console(&self, marker: &str, seen: usize, bound: Duration) {
        let t = Instant::now();
        while self.console().matches(marker).count() <= seen {
            assert!(
                t.elapsed() < bound,
                "{}: no new `{marker}` on the console:\n{}",
                self.name,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Answers the serial console's login prompt (root, `password`); whether the
    /// shell came (else `login` said the password was wrong).
    fn try_login(&mut self, password: &str) -> bool {
        let count = |vm: &Vm, m: &str| vm.console().matches(m).count();
        // A prompt after the last refusal (`login` asks again a few seconds after one).
        let t = Instant::now();
        loop {
            let console = self.console();
            let prompt = console.rfind("login: ");
            if prompt.is_some() && prompt > console.rfind("Login incorrect") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "{}: no login prompt:\n{console}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let (asked, shells, refused) = (
            count(self, "Password: "),
            count(self, SHELL_BANNER),
            count(self, "Login incorrect"),
        );
        self.type_line("root");
        self.wait_console("Password: ", asked, Duration::from_secs(30));
        self.type_line(password);
        let t = Instant::now();
        loop {
            if count(self, SHELL_BANNER) > shells {
                return true;
            }
            if count(self, "Login incorrect") > refused {
                return false;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "{}: no answer to the password:\n{}",
                self.name,
                self.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Logs in as root on the serial console; the root shell then answers.
    fn login(&mut self, password: &str) {
        assert!(
            self.try_login(password),
            "{}: the console password was refused:\n{}",
            self.name,
            self.console()
        );
        self.type_line("echo logged-in-$((6 * 7))");
        assert_eq!(
            console_answer(self, "logged-in-", Duration::from_secs(30)),
            "42"
        );
    }

    fn metrics(&self) -> Option<String> {
        http_get(self.metrics, "/metrics").filter(|b| b.contains("tandem_"))
    }

    fn sys_descr(&self) -> Option<String> {
        let out = Command::new("snmpget")
            .args(["-v2c", "-c", "public", "-t", "1", "-r", "0", "-Ov"])
            .arg(format!("udp:127.0.0.1:{}", self.snmp))
            .arg("1.3.6.1.2.1.1.1.0")
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    /// Waits until the metrics endpoint answers (the daemon runs); returns the time
    /// from VM start.
    fn wait_ready(&mut self, bound: Duration) -> Duration {
        loop {
            if self.metrics().is_some() {
                return self.started.elapsed();
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "{}: QEMU exited ({st}); console:\n{}",
                    self.name,
                    self.console()
                );
            }
            if self.started.elapsed() > bound {
                panic!(
                    "{}: not ready within {bound:?}; console:\n{}\ndaemon log:\n{}",
                    self.name,
                    self.console(),
                    guest_log(&self.disk)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Connects to a socket QEMU serves, once it is there.
fn connect_unix(path: &Path, vm: &str) -> UnixStream {
    let t = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(30),
                "{vm}: {}: {e}",
                path.display()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon's log from a VM disk's data partition (it starts at 97 MiB), read
/// with `debugfs` while the VM runs: for failure messages.
fn guest_log(disk: &Path) -> String {
    let out = Command::new("debugfs")
        .args(["-R", "cat /log/tandem.log"])
        .arg(format!("{}?offset={}", disk.display(), 97u64 << 20))
        .output();
    match out {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        }
        Err(e) => format!("(debugfs: {e})"),
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    http(port, "GET", path)
}

/// One HTTP/1.0 request; the body of a 200 answer.
fn http(port: u16, method: &str, path: &str) -> Option<String> {
    let mut s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let (head, rest) = body.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| rest.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| rest.to_string()))
}

/// One VM from the image as built (its data partition: `image/data`), or with a data
/// partition that only seeds the console password (`seeded`).
fn boot_and_reach(firmware: Firmware, seeded: bool) {
    let _slot = qemu_slots().lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    if seeded {
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        seed_console_password(&data, CONSOLE_PASSWORD);
        mkdisk(&disk, &["--data", data.to_str().unwrap()]);
    } else {
        std::fs::copy(built(), &disk).unwrap();
    }
    let mut vm = Vm::start(
        dir.path(),
        VmSpec {
            name: &format!("{firmware:?}").to_lowercase(),
            firmware,
            disk: &disk,
            lan: None,
            watchdog: false,
            console_input: true,
            shared_disk: None,
        },
    );
    let ready = vm.wait_ready(READY_BOUND);
    println!(
        "IMAGE {firmware:?}: ready (metrics) {:.1} s after VM start",
        ready.as_secs_f64()
    );
    let console = vm.console();
    assert!(
        console.contains("NO CONFIGURATION"),
        "first boot says it runs the default config:\n{console}"
    );
    // The web console: its address and certificate fingerprint on the console.
    let shown = console
        .split_once("web console: https://")
        .and_then(|(_, rest)| rest.split_once("certificate SHA-256 "))
        .and_then(|(_, fp)| fp.split_whitespace().next())
        .unwrap_or_else(|| panic!("no web console line:\n{console}"));
    assert_eq!(shown.len(), 95, "a SHA-256 fingerprint: {shown}");
    // Safe defaults: an unconfigured node answers no SNMP community (it answered
    // `public` from every private network).
    assert_eq!(vm.sys_descr(), None, "the default config answers SNMP");
    // The console asks for a password: the seeded one, or the one the first boot
    // made and showed once.
    let password = if seeded {
        assert!(!console.contains("Log in as root with:"), "{console}");
        CONSOLE_PASSWORD.to_string()
    } else {
        let shown = console
            .split_once("Log in as root with:")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no console password shown:\n{console}"));
        assert!(console.contains("requires a password"), "{console}");
        shown.to_string()
    };
    assert!(
        !vm.try_login("not-the-password"),
        "a wrong password opened the shell"
    );
    vm.login(&password);
    // The health check blesses the boot.
    let t = Instant::now();
    while !vm.console().contains("slot a blessed") {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no blessing:\n{}",
            vm.console()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn uefi_boot_reaches_metrics_answers_no_snmp_and_shows_a_console_password_once() {
    require_image_tools!();
    boot_and_reach(Firmware::Uefi, false);
}

#[test]
fn bios_boot_reaches_metrics_answers_no_snmp_and_asks_the_seeded_console_password() {
    require_image_tools!();
    boot_and_reach(Firmware::Bios, true);
}

/// Slot B is on trial with one try and its init never becomes healthy: after that
/// boot the loader goes back to slot A, which boots and is healthy.
fn falls_back(firmware: Firmware) {
    let _slot = qemu_slots().lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    mkdisk(&disk, &["--fallback-test"]);
    let mut vm = Vm::start(
        dir.path(),
        VmSpec {
            name: &format!("fallback-{firmware:?}").to_lowercase(),
            firmware,
            disk: &disk,
            lan: None,
            watchdog: false,
            console_input: false,
            shared_disk: None,
        },
    );
    let ready = vm.wait_ready(READY_BOUND * 2);
    let console = vm.console();
    let b = console
        .find("] slot b, firmware")
        .unwrap_or_else(|| panic!("slot B was not tried first:\n{console}"));
    let a = console[b..]
        .find("] slot a, firmware")
        .unwrap_or_else(|| panic!("no fallback to slot A:\n{console}"));
    assert!(console[b..b + a].contains("not healthy"), "{console}");
    println!(
        "IMAGE fallback {firmware:?}: slot B abandoned, slot A ready {:.1} s after VM start",
        ready.as_secs_f64()
    );
}

#[test]
fn bios_unhealthy_slot_falls_back_to_the_previous_one() {
    require_image_tools!();
    falls_back(Firmware::Bios);
}

#[test]
fn uefi_unhealthy_slot_falls_back_to_the_previous_one() {
    require_image_tools!();
    falls_back(Firmware::Uefi);
}

/// snmptrapd on the host (the VMs reach it as 10.0.2.2 through user networking);
/// numeric OIDs, so no MIB is needed. Killed on drop.
struct TrapReceiver {
    child: Child,
    log: PathBuf,
}

impl Drop for TrapReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TrapReceiver {
    fn start(dir: &Path, port: u16) -> TrapReceiver {
        let conf = dir.join("snmptrapd.conf");
        std::fs::write(&conf, "authCommunity log,execute,net public\n").unwrap();
        let log = dir.join("traps.log");
        let child = Command::new("snmptrapd")
            .args(["-f", "-On", "-C", "-c"])
            .arg(&conf)
            .arg("-Lf")
            .arg(&log)
            .args(["-m", "", "-M", "/nonexistent"])
            .arg(format!("udp:127.0.0.1:{port}"))
            .env("SNMP_PERSISTENT_DIR", dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("snmptrapd");
        TrapReceiver { child, log }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Where the demo group keeps the service's counter.
#[derive(Clone, Copy)]
enum Storage {
    /// A mirror between the VMs with ext4 on it (the service's `--data-dir`).
    Mirror,
    /// One disk image attached to both VMs ([`SHARED_DISK_DEV`]), under the disk lease
    /// (the service finds it in `TANDEM_SHARED_DISK`).
    SharedDisk,
}

/// Where the guests see the shared disk: the second virtio disk (no udev in the image,
/// so no `/dev/disk/by-id` names); its serial tells it from the boot disk.
const SHARED_DISK_DEV: &str = "/dev/vdb";
const SHARED_DISK_SERIAL: &str = "tandem-shared";
/// The disk lease's timeout: a survivor waits this long after the owner's last renewal
/// before it takes the disk. Short for the test; `stop_after` (3 s) and the renewals
/// (every 500 ms, each I/O bounded by 500 ms) keep the order `config check` demands.
const DISK_LEASE_TIMEOUT_MS: u64 = 6000;

/// The storage's parts of the cluster config: the `[[mirror]]` sections, the group's
/// resources that keep the service's data, the service's extra arguments, and the
/// resource it depends on.
fn storage_config(storage: Storage) -> (String, String, &'static str, &'static str) {
    match storage {
        Storage::Mirror => (
            r#"
[[mirror]]
name = "data"
backing = "/data/state/data.img"
size = "40MiB"
addresses = { alpha = "10.99.0.11:7790", beta = "10.99.0.12:7790" }

[[mirror.link]]
between = ["alpha", "beta"]
mode = "sync"
"#
            .into(),
            r#"
[[group.resource]]
name = "data"
kind = "mirror"
mirror = "data"

[[group.resource]]
name = "fs"
kind = "filesystem"
mirror = "data"
mountpoint = "/srv/data"
options = "noatime"
mkfs = true
depends_on = ["data"]
"#
            .into(),
            r#", "--data-dir", "/srv/data""#,
            "fs",
        ),
        Storage::SharedDisk => (
            String::new(),
            format!(
                r#"
[[group.resource]]
name = "disk"
kind = "shared_disk"
path = "{SHARED_DISK_DEV}"
lease_offset = 0
data_offset = 1048576
io_timeout = "500ms"
renew_interval = "500ms"
lease_timeout = "{DISK_LEASE_TIMEOUT_MS}ms"
stop_after = "3s"
"#
            ),
            "",
            "disk",
        ),
    }
}

fn cluster_config(trap_port: u16, storage: Storage) -> String {
    let (mirror, resources, web_args, web_needs) = storage_config(storage);
    format!(
        r#"[cluster]
name = "vmlab"
key = "0123456789abcdef0123456789abcdef"
state_dir = "/data/state"
mirror_metadata = "internal"

[heartbeat]
interval = "250ms"
dead_time = "2s"
paths = ["hb1"]

[metrics]
listen = "0.0.0.0:9776"

[snmp]
listen = "0.0.0.0:161"

[[snmp.community]]
name = "public"
source = "10.0.0.0/8"

[[snmp.receiver]]
address = "10.0.2.2:{trap_port}"
form = "v2c_trap"
community = "public"

[[node]]
name = "alpha"
priority = 1
addresses = {{ hb1 = "10.99.0.11" }}

[[node]]
name = "beta"
priority = 2
addresses = {{ hb1 = "10.99.0.12" }}
{mirror}
[[group]]
name = "demo"

[[group.resource]]
name = "vip"
kind = "ip"
address = "10.99.0.100/24"
interface = "eth1"
{resources}
[[group.resource]]
name = "web"
kind = "process"
command = ["/bin/tandem", "demo-service", "--listen", "0.0.0.0:8080"{web_args}]
depends_on = ["vip", "{web_needs}"]
quickcheck = {{ probe = "http", url = "http://127.0.0.1:8080/health", expect_status = 200, interval = "1s", timeout = "500ms" }}
"#
    )
}

#[test]
fn the_cluster_configs_pass_config_check() {
    let dir = tempfile::tempdir().unwrap();
    for (name, storage) in [("mirror", Storage::Mirror), ("shared", Storage::SharedDisk)] {
        let file = dir.path().join(format!("{name}.toml"));
        std::fs::write(&file, cluster_config(free_udp_port(), storage)).unwrap();
        let out = Command::new(daemon::BIN)
            .args(["config", "check"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        if matches!(storage, Storage::Mirror) {
            // As on the appliance's default config: metadata at the end of the backing.
            assert!(
                said.contains(
                    "mirror `data`: metadata internal (the `[cluster] mirror_metadata` default)"
                ),
                "{said}"
            );
        }
    }
}

/// The cluster LAN: a QEMU multicast socket network (raw Ethernet frames in UDP).
const LAN_GROUP: &str = "230.0.0.1";
const VIP: [u8; 4] = [10, 99, 0, 100];

fn mac_of(vm: usize) -> String {
    format!("52:54:00:99:00:1{}", vm + 1)
}

/// A helper on the cluster LAN that asks who has an address (ARP), as a client on
/// the LAN does before it talks to the floating IP.
struct Lan {
    sock: UdpSocket,
    group: std::net::SocketAddr,
}

impl Lan {
    fn join(port: u16) -> Lan {
        use socket2::{Domain, Protocol, Socket, Type};
        let group: std::net::Ipv4Addr = LAN_GROUP.parse().unwrap();
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.bind(&std::net::SocketAddr::from((group, port)).into())
            .unwrap();
        let lo = std::net::Ipv4Addr::LOCALHOST;
        s.join_multicast_v4(&group, &lo).unwrap();
        s.set_multicast_if_v4(&lo).unwrap();
        s.set_multicast_loop_v4(true).unwrap();
        let sock: UdpSocket = s.into();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Lan {
            sock,
            group: (group, port).into(),
        }
    }

    /// Sends one ARP request for `ip`; the sender MAC of the first reply within 200 ms.
    fn who_has(&self, ip: [u8; 4]) -> Option<String> {
        let me = [0x52, 0x54, 0x00, 0x99, 0x00, 0x99];
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&me);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&me);
        f.extend_from_slice(&[10, 99, 0, 50]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&ip);
        f.resize(60, 0);
        self.sock.send_to(&f, self.group).ok()?;
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                break;
            };
            let b = &buf[..n];
            let is_reply = n >= 42 && b[12..14] == [0x08, 0x06] && b[20..22] == [0, 2];
            if is_reply && b[28..32] == ip {
                let mac: Vec<String> = b[22..28].iter().map(|x| format!("{x:02x}")).collect();
                return Some(mac.join(":"));
            }
        }
        None
    }
}

fn owner(vm: &Vm) -> Option<String> {
    let m = vm.metrics()?;
    m.lines()
        .filter(|l| l.starts_with("tandem_group_owner{") && l.contains("group=\"demo\""))
        .filter(|l| l.ends_with(" 1"))
        .find_map(|l| {
            let i = l.find("node=\"")? + 6;
            Some(l[i..i + l[i..].find('"')?].to_string())
        })
}

/// What differs between the clusters of the two-VM tests.
struct PairSpec<'a> {
    /// Names the VMs' timing lines (`IMAGE {label} alpha: ready ...`).
    label: &'a str,
    /// A VM's `tandem.toml`, made once per VM.
    config: &'a dyn Fn() -> String,
    /// VM `i`'s cluster LAN backend (the `-netdev` of [`VmSpec::lan`]).
    lan: &'a dyn Fn(usize) -> String,
    /// Runs right after VM `i` has started (the quorum LAN moves its tap onto the bridge).
    started: &'a dyn Fn(usize),
    watchdog: bool,
    console_input: bool,
    /// One disk image both VMs attach ([`VmSpec::shared_disk`]).
    shared_disk: Option<&'a Path>,
}

/// Starts the cluster's two VMs, alpha (UEFI, 10.99.0.11 on eth1) and beta (SeaBIOS,
/// 10.99.0.12), each with its data partition, and waits until both are ready. Returns
/// the VMs and their disks.
fn start_pair(dir: &Path, spec: PairSpec<'_>) -> (Vec<Vm>, Vec<PathBuf>) {
    let mut vms = Vec::new();
    let mut disks = Vec::new();
    for (i, (name, addr)) in [("alpha", "10.99.0.11"), ("beta", "10.99.0.12")]
        .into_iter()
        .enumerate()
    {
        let data = dir.join(format!("{name}-data"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("tandem.toml"), (spec.config)()).unwrap();
        seed_console_password(&data, CONSOLE_PASSWORD);
        std::fs::write(
            data.join("network.conf"),
            format!("hostname {name}\niface eth0 dhcp\niface eth1 static {addr}/24\n"),
        )
        .unwrap();
        let disk = dir.join(format!("{name}.img"));
        mkdisk(&disk, &["--data", data.to_str().unwrap()]);
        disks.push(disk.clone());
        let firmware = if i == 0 {
            Firmware::Uefi
        } else {
            Firmware::Bios
        };
        vms.push(Vm::start(
            dir,
            VmSpec {
                name,
                firmware,
                disk: &disk,
                lan: Some(((spec.lan)(i), mac_of(i))),
                watchdog: spec.watchdog,
                console_input: spec.console_input,
                shared_disk: spec.shared_disk,
            },
        ));
        (spec.started)(i);
    }
    for vm in &mut vms {
        let ready = vm.wait_ready(READY_BOUND);
        println!(
            "IMAGE {} {}: ready {:.1} s",
            spec.label,
            vm.name,
            ready.as_secs_f64()
        );
        if spec.console_input {
            vm.login(CONSOLE_PASSWORD);
        }
    }
    (vms, disks)
}

/// Waits (up to 120 s) until both VMs name the same owner of `demo`, and returns it;
/// `context` is what the failure shows after the owners each names.
fn agreed_owner(vms: &[Vm], context: impl Fn() -> String) -> String {
    let t = Instant::now();
    loop {
        let owners: Vec<Option<String>> = vms.iter().map(owner).collect();
        if let [Some(a), Some(b)] = &owners[..] {
            if a == b {
                return a.clone();
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "no agreed owner: {owners:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits (up to 60 s) until `vm` answers its demo service as the owner `name`;
/// `context` is what the failure shows.
fn wait_serving(vm: &Vm, name: &str, context: impl Fn() -> String) {
    let t = Instant::now();
    while http_get(vm.demo, "/").is_none_or(|b| b.trim() != name) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the owner {name} does not serve the demo service:\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn two_vms_hand_the_group_over_on_reboot_and_fail_it_over_when_the_owner_dies() {
    require_image_tools!();
    let _slot = qemu_slots().lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let trap_port = free_udp_port();
    let traps = TrapReceiver::start(dir.path(), trap_port);
    let lan_port = free_udp_port();
    let (mut vms, disks) = start_pair(
        dir.path(),
        PairSpec {
            label: "cluster",
            config: &|| cluster_config(trap_port, Storage::Mirror),
            lan: &|_| format!("socket,mcast={LAN_GROUP}:{lan_port},localaddr=127.0.0.1"),
            started: &|_| {},
            watchdog: false,
            console_input: true,
            shared_disk: None,
        },
    );
    let context = |vms: &[Vm]| pair_context(vms, &disks);
    // Both see each other, and one of them runs the group.
    let first = agreed_owner(&vms, || context(&vms));
    let (a, b) = if first == "alpha" { (0, 1) } else { (1, 0) };
    let second = vms[b].name.clone();
    wait_serving(&vms[a], &first, || context(&vms));
    // Data written through the kernel's NBD client and ext4 on the owner: the demo
    // service keeps its counter in a file on the mirrored filesystem and fsyncs it.
    for i in 1..=3 {
        bump_counter(&vms[a], i, || context(&vms));
    }
    let lan = Lan::join(lan_port);
    wait_for_vip(&lan, a, &first);

    // 1. A planned reboot of the owner is a hand-off: the shutdown puts it in standby
    //    and waits until the other node serves, so the story is a switchover.
    let rebooted_at = Instant::now();
    vms[a].type_line("reboot");
    let took = wait_takeover(&vms[b], b, &lan, rebooted_at, || context(&vms));
    println!(
        "IMAGE cluster: `reboot` on {first}: {second} owns `demo`, serves it and answers ARP for the floating IP {:.1} s later",
        took.as_secs_f64()
    );
    wait_trap(&traps, SWITCHOVER_COMPLETED);
    assert!(
        !has_trap(&traps, FAILOVER_COMPLETED),
        "a planned reboot was a failover:\n{}",
        traps.text()
    );
    assert_counter(&vms[b], &format!("3 {first}"), || context(&vms));
    bump_counter(&vms[b], 4, || context(&vms));
    // The rebooted node comes back online (it was online before) and in sync.
    let t = Instant::now();
    while !(back_online(&vms[b], &first) && vms[a].metrics().is_some()) {
        assert!(
            t.elapsed() < READY_BOUND,
            "{first} did not come back online and up to date:\n{}",
            context(&vms)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!(
        "IMAGE cluster: {first} back online with its copy up to date {:.1} s after `reboot`",
        rebooted_at.elapsed().as_secs_f64()
    );

    // 2. The new owner dies (QEMU killed): the rebooted node fails the group over and
    //    reads what was written before and after the reboot.
    let killed_at = Instant::now();
    let _ = vms[b].child.kill();
    let took = wait_takeover(&vms[a], a, &lan, killed_at, || context(&vms));
    println!(
        "IMAGE cluster: {first} owns `demo`, serves it and answers ARP for the floating IP {:.1} s after {second}'s QEMU was killed",
        took.as_secs_f64()
    );
    // The filesystem came over with the mirror: the survivor reads what the dead
    // owner wrote, and goes on from there.
    assert_counter(&vms[a], &format!("4 {second}"), || context(&vms));
    bump_counter(&vms[a], 5, || context(&vms));
    println!("IMAGE cluster: {first} read the counter {second} wrote through /dev/nbd0 and ext4, and wrote on");
    wait_trap(&traps, FAILOVER_COMPLETED);
}

/// Both VMs' consoles and daemon logs, for failure messages.
fn pair_context(vms: &[Vm], disks: &[PathBuf]) -> String {
    format!(
        "{}\n{}\n{}\n{}",
        vms[0].console(),
        guest_log(&disks[0]),
        vms[1].console(),
        guest_log(&disks[1])
    )
}

/// `POST /counter` on `vm`'s demo service answers that it wrote `count`, as `vm`.
fn bump_counter(vm: &Vm, count: u64, context: impl Fn() -> String) {
    let body = http(vm.demo, "POST", "/counter");
    assert_eq!(
        body.as_deref().map(str::trim),
        Some(format!("{count} {}", vm.name).as_str()),
        "counter write on {}:\n{}",
        vm.name,
        context()
    );
}

/// Typed on `vm`'s root shell: the second virtio disk is the shared one (its serial).
fn assert_shared_disk_seen(vm: &mut Vm) {
    let dev = SHARED_DISK_DEV.trim_start_matches("/dev/");
    vm.type_line(&format!(
        "echo shared-serial-$(cat /sys/block/{dev}/serial)"
    ));
    assert_eq!(
        console_answer(vm, "shared-serial-", Duration::from_secs(30)),
        SHARED_DISK_SERIAL,
        "{}: {SHARED_DISK_DEV} is not the shared disk",
        vm.name
    );
}

/// `waited_ms` of the last `disk_lease_acquired` event on `vm` (`tandem events`, typed
/// on its root shell).
fn disk_lease_waited_ms(vm: &mut Vm) -> u64 {
    vm.type_line(
        "echo lease-waited-ms=$(tandem events --json | grep -o '\"waited_ms\":\"[0-9]*\"' \
         | tail -n 1 | tr -dc 0-9)",
    );
    let answer = console_answer(vm, "lease-waited-ms=", Duration::from_secs(30));
    answer
        .parse()
        .unwrap_or_else(|_| panic!("{}: waited_ms `{answer}`", vm.name))
}

/// Shared storage (issue 16): one raw disk image attached to both VMs (`share-rw`)
/// instead of the mirror; the group (floating IP, disk lease, demo service with its
/// counter on the disk) runs on one VM at a time. The owner's QEMU is killed: the
/// other VM takes the disk lease only once the owner's has expired, serves, and the
/// counter goes on from the last acknowledged write.
#[test]
fn two_vms_on_one_shared_disk_fail_the_group_over_under_the_disk_lease() {
    require_image_tools!();
    let _slot = qemu_slots().lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared.img");
    std::fs::File::create(&shared)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let lan_port = free_udp_port();
    let (mut vms, disks) = start_pair(
        dir.path(),
        PairSpec {
            label: "shared-disk",
            config: &|| cluster_config(free_udp_port(), Storage::SharedDisk),
            lan: &|_| format!("socket,mcast={LAN_GROUP}:{lan_port},localaddr=127.0.0.1"),
            started: &|_| {},
            watchdog: false,
            console_input: true,
            shared_disk: Some(&shared),
        },
    );
    vms.iter_mut().for_each(assert_shared_disk_seen);
    let context = |vms: &[Vm]| pair_context(vms, &disks);
    let first = agreed_owner(&vms, || context(&vms));
    let (a, b) = if first == "alpha" { (0, 1) } else { (1, 0) };
    let second = vms[b].name.clone();
    wait_serving(&vms[a], &first, || context(&vms));
    // Each write is on the shared disk (O_DSYNC) before the service answers it.
    const WRITES: u64 = 5;
    for i in 1..=WRITES {
        bump_counter(&vms[a], i, || context(&vms));
    }
    let lan = Lan::join(lan_port);
    wait_for_vip(&lan, a, &first);

    let killed_at = Instant::now();
    let _ = vms[a].child.kill();
    let took = wait_takeover(&vms[b], b, &lan, killed_at, || context(&vms));
    let waited = disk_lease_waited_ms(&mut vms[b]);
    println!(
        "IMAGE shared-disk: {second} owns `demo`, serves it and answers ARP for the floating IP \
         {:.1} s after {first}'s QEMU was killed; its disk lease waited {waited} ms \
         (lease timeout {DISK_LEASE_TIMEOUT_MS} ms)",
        took.as_secs_f64()
    );
    assert!(
        waited >= DISK_LEASE_TIMEOUT_MS && took >= Duration::from_millis(DISK_LEASE_TIMEOUT_MS),
        "{second} took the disk after {waited} ms ({took:?} after the kill), before \
         {first}'s lease could expire:\n{}",
        context(&vms)
    );
    // Every acknowledged write is on the disk the survivor reads, and it writes on.
    assert_counter(&vms[b], &format!("{WRITES} {first}"), || context(&vms));
    bump_counter(&vms[b], WRITES + 1, || context(&vms));
}

/// Waits until the floating IP answers with VM `i`'s MAC.
fn wait_for_vip(lan: &Lan, i: usize, name: &str) {
    let t = Instant::now();
    while lan.who_has(VIP) != Some(mac_of(i)) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the floating IP does not answer with {name}'s MAC"
        );
    }
}

/// Waits until VM `i` owns `demo`, serves it and answers ARP for the floating IP;
/// the time since `since`.
fn wait_takeover(
    vm: &Vm,
    i: usize,
    lan: &Lan,
    since: Instant,
    context: impl Fn() -> String,
) -> Duration {
    loop {
        if owner(vm).as_deref() == Some(vm.name.as_str())
            && http_get(vm.demo, "/").is_some_and(|b| b.trim() == vm.name)
            && lan.who_has(VIP) == Some(mac_of(i))
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(90),
            "{} did not take the group over:\n{}",
            vm.name,
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn assert_counter(vm: &Vm, want: &str, context: impl Fn() -> String) {
    assert_eq!(
        http_get(vm.demo, "/counter").as_deref().map(str::trim),
        Some(want),
        "the counter on {}:\n{}",
        vm.name,
        context()
    );
}

/// `node` is online again and its copy of `data` up to date, as `vm` sees it.
fn back_online(vm: &Vm, node: &str) -> bool {
    let Some(m) = vm.metrics() else { return false };
    let set = |series: &str, labels: [String; 2], value: &str| {
        m.lines().any(|l| {
            l.starts_with(series)
                && labels.iter().all(|want| l.contains(want.as_str()))
                && l.ends_with(value)
        })
    };
    set(
        "tandem_node_standby{",
        [format!("node=\"{node}\""), String::new()],
        " 0",
    ) && set(
        "tandem_mirror_peer_disk_state{",
        [format!("peer=\"{node}\""), "state=\"up_to_date\"".into()],
        " 1",
    )
}

fn has_trap(traps: &TrapReceiver, oid: &str) -> bool {
    let text = traps.text();
    [format!("{oid}\n"), format!("{oid} "), format!("{oid}\t")]
        .iter()
        .any(|t| text.contains(t.as_str()))
}

fn wait_trap(traps: &TrapReceiver, oid: &str) {
    let t = Instant::now();
    while !has_trap(traps, oid) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no {oid} at the trap receiver:\n{}",
            traps.text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs `ip` with these arguments (optionally inside namespace `ns`); panics on failure.
fn ip(ns: Option<&str>, args: &[&str]) {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["netns", "exec", ns, "ip"]);
    }
    let out = cmd.args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?} (netns {ns:?}): {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The quorum test's cluster LAN: a network namespace with a bridge (`br0`, the
/// witness's 10.99.0.1/24) and one tap per VM. The taps are made in the root namespace,
/// where QEMU runs (so that its user-mode port forwards stay reachable from the test),
/// and moved into the namespace once QEMU has opened them. Dropping it deletes the
/// taps and the namespace, also when the test panics.
struct QuorumLan {
    ns: String,
    taps: Vec<String>,
}

const WITNESS_ADDR: &str = "10.99.0.1";

impl QuorumLan {
    fn create(vms: usize) -> QuorumLan {
        let id = format!("{:04x}", std::process::id() & 0xffff);
        let lan = QuorumLan {
            ns: format!("tiw-{id}"),
            taps: (0..vms).map(|i| format!("tiw{id}t{i}")).collect(),
        };
        ip(None, &["netns", "add", &lan.ns]);
        let ns = Some(lan.ns.as_str());
        ip(ns, &["link", "set", "lo", "up"]);
        ip(ns, &["link", "add", "br0", "type", "bridge"]);
        ip(
            ns,
            &["addr", "add", &format!("{WITNESS_ADDR}/24"), "dev", "br0"],
        );
        ip(ns, &["link", "set", "br0", "up"]);
        for tap in &lan.taps {
            ip(None, &["tuntap", "add", "dev", tap, "mode", "tap"]);
            ip(None, &["link", "set", tap, "up"]);
        }
        lan
    }

    /// The `-netdev` backend of VM `i`'s cluster NIC.
    fn netdev(&self, i: usize) -> String {
        format!("tap,ifname={},script=no,downscript=no", self.taps[i])
    }

    /// Once QEMU holds VM `i`'s tap (its carrier is up), moves it onto the bridge.
    fn attach(&self, i: usize) {
        let tap = &self.taps[i];
        let carrier = format!("/sys/class/net/{tap}/carrier");
        let t = Instant::now();
        while !std::fs::read_to_string(&carrier).is_ok_and(|c| c.trim() == "1") {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "QEMU did not open the tap {tap}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        ip(None, &["link", "set", tap, "netns", &self.ns]);
        let ns = Some(self.ns.as_str());
        ip(ns, &["link", "set", tap, "master", "br0"]);
        ip(ns, &["link", "set", tap, "up"]);
    }
}

impl Drop for QuorumLan {
    fn drop(&mut self) {
        for tap in &self.taps {
            for pre in [vec![], vec!["netns", "exec", &self.ns, "ip"]] {
                let _ = Command::new("ip")
                    .args(&pre)
                    .args(["link", "del", tap])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// `tandem witness` (this build's binary) in the LAN's namespace; killed on drop.
struct Witness {
    child: Child,
    log: PathBuf,
}

impl Drop for Witness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Witness {
    fn start(dir: &Path, lan: &QuorumLan, config: &str) -> Witness {
        let conf = dir.join("witness.toml");
        std::fs::write(&conf, config).unwrap();
        let log = dir.join("witness.log");
        // `ip netns exec` execs the witness: the child is the witness itself.
        let child = Command::new("ip")
            .args(["netns", "exec", &lan.ns, daemon::BIN, "witness", "--config"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.join("witness.err")).unwrap())
            .spawn()
            .expect("tandem witness");
        Witness { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Quorum timing for TCG: W = 3 s, and a lease with room for renewals that are late
/// by a few hundred milliseconds (L ≥ W + heartbeat interval + 200 ms).
const QW_LEASE: &str = "6s";
const QW_WATCHDOG_S: u64 = 3;

fn quorum_cluster_config() -> String {
    format!(
        "{}
[quorum]
lease = \"{QW_LEASE}\"
watchdog = {{ device = \"/dev/watchdog\", timeout = \"{QW_WATCHDOG_S}s\" }}

[witness]
name = \"w\"
addresses = {{ hb1 = \"{WITNESS_ADDR}\" }}
",
        cluster_config(free_udp_port(), Storage::Mirror)
    )
}

fn quorum_witness_config(state_dir: &Path) -> String {
    format!(
        r#"[witness]
name = "w"
state_dir = "{}"
listen = "{WITNESS_ADDR}"

[[cluster]]
name = "vmlab"
key = "0123456789abcdef0123456789abcdef"
interval = "250ms"
dead_time = "2s"
lease = "{QW_LEASE}"
[cluster.nodes]
alpha = ["10.99.0.11"]
beta = ["10.99.0.12"]
"#,
        state_dir.display()
    )
}

/// Boots so far: the init's first line appears once per boot.
fn boots(console: &str) -> usize {
    console.matches(", firmware ").count()
}

/// Waits until the console shows `marker` followed by a digit or a letter (the
/// output of a typed command, not its echo); returns the rest of that line.
fn console_answer(vm: &Vm, marker: &str, bound: Duration) -> String {
    let t = Instant::now();
    loop {
        let console = vm.console();
        let found = console.match_indices(marker).find_map(|(i, _)| {
            let rest = &console[i + marker.len()..];
            rest.starts_with(|c: char| c.is_ascii_alphanumeric())
                .then(|| rest.lines().next().unwrap_or("").trim().to_string())
        });
        if let Some(rest) = found {
            return rest;
        }
        assert!(
            t.elapsed() < bound,
            "{}: no `{marker}` answer on the console:\n{console}",
            vm.name
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn two_vms_and_a_witness_reset_a_hung_owner_by_its_hardware_watchdog() {
    require_image_tools!();
    if !Path::new("/dev/net/tun").exists() {
        eprintln!("SKIPPED: /dev/net/tun is missing (the cluster LAN needs tap devices)");
        return;
    }
    let _slot = qemu_slots().lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Dropped after the VMs (declared first): the taps are free by then.
    let lan = QuorumLan::create(2);
    let wdir = dir.path().join("witness-state");
    std::fs::create_dir_all(&wdir).unwrap();
    let witness = Witness::start(dir.path(), &lan, &quorum_witness_config(&wdir));
    let (mut vms, disks) = start_pair(
        dir.path(),
        PairSpec {
            label: "watchdog",
            config: &quorum_cluster_config,
            lan: &|i| lan.netdev(i),
            started: &|i| lan.attach(i),
            watchdog: true,
            console_input: true,
            shared_disk: None,
        },
    );
    let first = agreed_owner(&vms, || {
        format!(
            "{}\n{}\nwitness:\n{}",
            guest_log(&disks[0]),
            guest_log(&disks[1]),
            witness.log()
        )
    });
    let (hung, survivor) = if first == "alpha" { (0, 1) } else { (1, 0) };
    wait_serving(&vms[hung], &first, || guest_log(&disks[hung]));
    // The owner's daemon holds the i6300ESB open: the driver came by modalias and the
    // lease loop armed it.
    vms[hung].type_line("");
    vms[hung].type_line("echo wdstate-$(cat /sys/class/watchdog/watchdog0/state)");
    let state = console_answer(&vms[hung], "wdstate-", Duration::from_secs(30));
    assert_eq!(
        state,
        "active",
        "{first}'s watchdog is not armed:\n{}",
        guest_log(&disks[hung])
    );
    let boots_before = boots(&vms[hung].console());
    // Hang the daemon (SIGSTOP), not the machine: only its lease loop pets the watchdog.
    // The timings count from the moment the command is typed.
    let hung_at = Instant::now();
    vms[hung].type_line(
        "for p in $(pidof tandem); do tr '\\0' ' ' < /proc/$p/cmdline | grep -q '^/bin/tandem run ' \
         && kill -STOP $p && echo stopped-pid-$p; done",
    );
    let pid = console_answer(&vms[hung], "stopped-pid-", Duration::from_secs(30));
    println!("IMAGE watchdog: {first}'s daemon (pid {pid}) stopped with SIGSTOP");
    let name = vms[survivor].name.clone();
    let (mut reset, mut took) = (None, None);
    while reset.is_none() || took.is_none() {
        if reset.is_none() && boots(&vms[hung].console()) > boots_before {
            reset = Some(hung_at.elapsed());
        }
        if took.is_none()
            && owner(&vms[survivor]).as_deref() == Some(name.as_str())
            && http_get(vms[survivor].demo, "/").is_some_and(|b| b.trim() == name)
        {
            took = Some(hung_at.elapsed());
        }
        assert!(
            hung_at.elapsed() < Duration::from_secs(120),
            "after {first}'s daemon hung: reset seen {reset:?}, {name} took over {took:?}\n\
             {first} console:\n{}\n{name} log:\n{}\nwitness:\n{}",
            vms[hung].console(),
            guest_log(&disks[survivor]),
            witness.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (rebooted, took) = (reset.unwrap(), took.unwrap());
    // The reset was the watchdog's: QEMU reported it, after the hang.
    let fired: Vec<Instant> = vms[hung].watchdog_fired.lock().unwrap().clone();
    assert!(
        fired.len() == 1 && fired[0] > hung_at,
        "QEMU's WATCHDOG events for {first}: {} ({} after the hang)",
        fired.len(),
        fired.iter().filter(|f| **f > hung_at).count()
    );
    assert!(vms[survivor].watchdog_fired.lock().unwrap().is_empty());
    println!(
        "IMAGE watchdog: {first} hung -> i6300ESB fired (QEMU's WATCHDOG event) {:.1} s, \
         {first} booting again on its console {:.1} s; {name} owns and serves `demo` {:.1} s \
         after the hang (W = {QW_WATCHDOG_S} s, lease {QW_LEASE}, TCG)",
        (fired[0] - hung_at).as_secs_f64(),
        rebooted.as_secs_f64(),
        took.as_secs_f64()
    );
}
