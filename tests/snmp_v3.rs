//! SNMPv3 USM against the real net-snmp tools: a tiny responder on loopback that uses
//! [`Usm`] answers sysDescr.0, and `snmpget` (Debian package `snmp`) queries it with
//! each authentication protocol, with and without privacy, and with bad credentials.
//! Refusals are checked on the USM counters too; captured datagrams are replayed to
//! check the time window, and decoded with `snmp-parser` as an independent reader.

use std::net::UdpSocket;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rasn_smi::v2::{ObjectSyntax, SimpleSyntax};
use rasn_snmp::v2::{Pdu, Pdus, Response, VarBind, VarBindValue};
use tandem::config::{AuthProtocol, PrivProtocol, UsmUserConfig};
use tandem::snmp::usm::{Usm, UsmIncoming, UsmStats};

#[path = "common/daemon.rs"]
mod daemon;

const SYS_DESCR: &[u32] = &[1, 3, 6, 1, 2, 1, 1, 1, 0];
const ENGINE_ID: &[u8] = b"\x80\x00\x7e\xd9\x04tandem-test";
const AUTH_PASSWORD: &str = "auth-secret-1";
const PRIV_PASSWORD: &str = "priv-secret-1";

fn user(name: &str, auth: Option<AuthProtocol>, privacy: bool) -> UsmUserConfig {
    UsmUserConfig {
        name: name.into(),
        auth,
        auth_password: auth.map(|_| AUTH_PASSWORD.into()),
        privacy: privacy.then_some(PrivProtocol::Aes128),
        priv_password: privacy.then(|| PRIV_PASSWORD.into()),
    }
}

/// A UDP responder on loopback: every request gets sysDescr.0 = "tandem-test" (other
/// OIDs noSuchObject). Keeps the USM (for its counters) and the datagrams it served.
struct Responder {
    port: u16,
    usm: Arc<Mutex<Usm>>,
    served: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Responder {
    fn start(users: &[UsmUserConfig], allow_no_auth_no_priv: bool) -> Responder {
        let usm = Usm::new(ENGINE_ID.to_vec(), 7, users, allow_no_auth_no_priv).unwrap();
        let usm = Arc::new(Mutex::new(usm));
        let served = Arc::new(Mutex::new(Vec::new()));
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = socket.local_addr().unwrap().port();
        let (u, s) = (usm.clone(), served.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_535];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    return;
                };
                let now = Instant::now();
                let mut usm = u.lock().unwrap();
                let reply = match usm.receive(&buf[..n], now) {
                    UsmIncoming::Request { pdu, ctx } => {
                        s.lock().unwrap().push(buf[..n].to_vec());
                        usm.respond(&ctx, answer(&pdu), now).unwrap()
                    }
                    UsmIncoming::Report(bytes) => bytes,
                    UsmIncoming::Drop(_) => continue,
                };
                socket.send_to(&reply, from).unwrap();
            }
        });
        Responder { port, usm, served }
    }

    fn stats(&self) -> UsmStats {
        self.usm.lock().unwrap().stats()
    }

    fn snmpget(&self, args: &[&str]) -> Result<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("snmpget")
            .env("SNMP_PERSISTENT_DIR", dir.path())
            .env("SNMPCONFPATH", dir.path())
            .env("MIBS", "")
            .args(["-v3", "-r", "0", "-t", "3", "-Oqv"])
            .args(args)
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("1.3.6.1.2.1.1.1.0")
            .output()
            .expect("snmpget (Debian package snmp) is installed");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{stdout} {stderr}"))
        }
    }
}

fn answer(pdu: &Pdus) -> Pdus {
    let Pdus::GetRequest(get) = pdu else {
        panic!("the test only sends GET, got {pdu:?}");
    };
    let variable_bindings = get
        .0
        .variable_bindings
        .iter()
        .map(|vb| VarBind {
            name: vb.name.clone(),
            value: if vb.name.to_vec() == SYS_DESCR {
                VarBindValue::Value(ObjectSyntax::Simple(SimpleSyntax::String(
                    b"tandem-test".to_vec().into(),
                )))
            } else {
                VarBindValue::NoSuchObject
            },
        })
        .collect();
    Pdus::Response(Response(Pdu {
        request_id: get.0.request_id,
        error_status: 0,
        error_index: 0,
        variable_bindings,
    }))
}

fn auth_priv(name: &str, hash: &str) -> Vec<String> {
    [
        "-l",
        "authPriv",
        "-u",
        name,
        "-a",
        hash,
        "-A",
        AUTH_PASSWORD,
    ]
    .into_iter()
    .chain(["-x", "AES", "-X", PRIV_PASSWORD])
    .map(String::from)
    .collect()
}

fn run(r: &Responder, args: &[String]) -> Result<String, String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    r.snmpget(&args)
}

#[test]
fn snmpget_auth_priv_with_every_hash() {
    let r = Responder::start(
        &[
            user("sha1", Some(AuthProtocol::Sha1), true),
            user("sha224", Some(AuthProtocol::Sha224), true),
            user("sha256", Some(AuthProtocol::Sha256), true),
            user("sha384", Some(AuthProtocol::Sha384), true),
            user("sha512", Some(AuthProtocol::Sha512), true),
        ],
        false,
    );
    for (name, hash) in [
        ("sha1", "SHA"),
        ("sha224", "SHA-224"),
        ("sha256", "SHA-256"),
        ("sha384", "SHA-384"),
        ("sha512", "SHA-512"),
    ] {
        assert_eq!(
            run(&r, &auth_priv(name, hash)).as_deref(),
            Ok("\"tandem-test\""),
            "{name}"
        );
    }
    let s = r.stats();
    assert_eq!(
        s.wrong_digests + s.decryption_errors + s.unknown_user_names,
        0
    );
    // Each snmpget discovers our engine first.
    assert!(s.unknown_engine_ids >= 5, "{s:?}");

    // An independent decoder agrees on what snmpget sent: authPriv, reportable, USM.
    let served = r.served.lock().unwrap().clone();
    assert_eq!(served.len(), 5);
    let (rest, msg) = snmp_parser::parse_snmp_v3(&served[2]).unwrap();
    assert!(rest.is_empty());
    assert_eq!(msg.header_data.msg_flags, 0x07);
    let snmp_parser::SecurityParameters::USM(p) = msg.security_params else {
        panic!("not USM");
    };
    assert_eq!(p.msg_user_name, "sha256");
    assert_eq!(p.msg_authoritative_engine_id, ENGINE_ID);
    assert_eq!(p.msg_authoritative_engine_boots, 7);
    assert_eq!(p.msg_authentication_parameters.len(), 24);
    assert_eq!(p.msg_privacy_parameters.len(), 8);
}

#[test]
fn snmpget_auth_no_priv() {
    let r = Responder::start(&[user("ops", Some(AuthProtocol::Sha256), false)], false);
    let got = r.snmpget(&[
        "-l",
        "authNoPriv",
        "-u",
        "ops",
        "-a",
        "SHA-256",
        "-A",
        AUTH_PASSWORD,
    ]);
    assert_eq!(got.as_deref(), Ok("\"tandem-test\""));
}

#[test]
fn bad_credentials_and_levels_are_refused_and_counted() {
    let r = Responder::start(&[user("ops", Some(AuthProtocol::Sha256), true)], false);

    let mut wrong = auth_priv("ops", "SHA-256");
    wrong[7] = "not-the-password".into();
    assert!(run(&r, &wrong).is_err());
    assert_eq!(r.stats().wrong_digests, 1);

    assert!(run(&r, &auth_priv("intruder", "SHA-256")).is_err());
    assert_eq!(r.stats().unknown_user_names, 1);

    // A lower level than the user's (authNoPriv for an authPriv user).
    let lower = r.snmpget(&[
        "-l",
        "authNoPriv",
        "-u",
        "ops",
        "-a",
        "SHA-256",
        "-A",
        AUTH_PASSWORD,
    ]);
    assert!(lower.is_err());
    assert_eq!(r.stats().unsupported_sec_levels, 1);

    // noAuthNoPriv is refused while not allowed.
    assert!(r.snmpget(&["-l", "noAuthNoPriv", "-u", "ops"]).is_err());
    assert_eq!(r.stats().unsupported_sec_levels, 2);
    assert!(r.served.lock().unwrap().is_empty());
}

#[test]
fn no_auth_no_priv_when_allowed() {
    let r = Responder::start(&[user("guest", None, false)], true);
    let got = r.snmpget(&["-l", "noAuthNoPriv", "-u", "guest"]);
    assert_eq!(got.as_deref(), Ok("\"tandem-test\""));
}

#[test]
fn replayed_requests_outside_the_time_window_are_refused() {
    let users = [user("ops", Some(AuthProtocol::Sha1), true)];
    let r = Responder::start(&users, false);
    assert_eq!(
        run(&r, &auth_priv("ops", "SHA")).as_deref(),
        Ok("\"tandem-test\"")
    );
    let captured = r.served.lock().unwrap()[0].clone();

    // The same engine, 151 s later: out of the window.
    let before = r.stats().not_in_time_windows;
    let t0 = Instant::now();
    let late = r
        .usm
        .lock()
        .unwrap()
        .receive(&captured, t0 + Duration::from_secs(151));
    assert!(matches!(late, UsmIncoming::Report(_)), "{late:?}");
    assert_eq!(r.stats().not_in_time_windows, before + 1);

    // The engine rebooted (boots 8): the old datagram is refused at once.
    let mut rebooted = Usm::new(ENGINE_ID.to_vec(), 8, &users, false).unwrap();
    assert!(matches!(
        rebooted.receive(&captured, t0),
        UsmIncoming::Report(_)
    ));
    assert_eq!(rebooted.stats().not_in_time_windows, 1);

    // Inside the window and the same boots, the captured request is authentic
    // (replay within the window is what RFC 3414 tolerates).
    let mut same = Usm::new(ENGINE_ID.to_vec(), 7, &users, false).unwrap();
    assert!(matches!(
        same.receive(&captured, t0),
        UsmIncoming::Request { .. }
    ));
}

#[test]
fn discovery_report_is_readable_by_snmp_parser() {
    let mut usm = Usm::new(
        ENGINE_ID.to_vec(),
        3,
        &[user("ops", Some(AuthProtocol::Sha1), true)],
        false,
    )
    .unwrap();
    let probe = tandem::snmp::usm::discovery_probe(42, 1).unwrap();
    let UsmIncoming::Report(bytes) = usm.receive(&probe, Instant::now()) else {
        panic!("no report to a discovery probe");
    };
    let (_, msg) = snmp_parser::parse_snmp_v3(&bytes).unwrap();
    assert_eq!(msg.header_data.msg_id, 42);
    let snmp_parser::SecurityParameters::USM(p) = msg.security_params else {
        panic!("not USM");
    };
    assert_eq!(p.msg_authoritative_engine_id, ENGINE_ID);
    assert_eq!(p.msg_authoritative_engine_boots, 3);
    let snmp_parser::ScopedPduData::Plaintext(scoped) = msg.data else {
        panic!("report must be cleartext");
    };
    let vb: Vec<_> = scoped.data.vars_iter().collect();
    // usmStatsUnknownEngineIDs.0
    assert_eq!(vb[0].oid.to_id_string(), "1.3.6.1.6.3.15.1.1.4.0");
}

// ---------------------------------------------------------------------------------
// Notifications to a real snmptrapd (Debian package snmptrapd)

mod notifier {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use rasn::types::ObjectIdentifier;
    use rasn_smi::v1::Gauge;
    use rasn_smi::v2::{ApplicationSyntax, ObjectSyntax};
    use rasn_snmp::v2::{VarBind, VarBindValue};
    use tandem::config::SnmpConfig;
    use tandem::event::{fields, Event, EventKind, EventLog};
    use tandem::snmp::notify::{spawn_notifier, EventMapper, NotifierHandle, ReceiverCounters};
    use tandem::snmp::{Notification, ENTERPRISE};

    use super::{AUTH_PASSWORD, ENGINE_ID, PRIV_PASSWORD};
    use crate::daemon::{free_udp_port, wait_until, wait_until_async};

    const SEQ_ARC: u32 = 99;
    /// Not `snmptrapd.conf`: snmptrapd rewrites that name in its persistent directory.
    const CONF: &str = "trapd.conf";
    /// How long a notification may take to show.
    const WAIT: Duration = Duration::from_secs(30);

    /// Test events become notifications ENTERPRISE.99.1 carrying the event's seq as
    /// ENTERPRISE.99.2 (Gauge32).
    fn seq_mapping() -> EventMapper {
        Box::new(|e: &Event| {
            Some(Notification {
                trap_oid: [ENTERPRISE, &[SEQ_ARC, 1]].concat(),
                varbinds: vec![VarBind {
                    name: ObjectIdentifier::new_unchecked(
                        [ENTERPRISE, &[SEQ_ARC, 2]].concat().into(),
                    ),
                    value: VarBindValue::Value(ObjectSyntax::ApplicationWide(
                        ApplicationSyntax::Unsigned(Gauge(e.seq as u32)),
                    )),
                }],
                seq: e.seq,
            })
        })
    }

    /// snmptrapd in the foreground, logging each notification as one `NOTIFY` line.
    struct Trapd {
        child: Child,
        log: PathBuf,
    }

    impl Trapd {
        fn start(dir: &Path, port: u16, log_name: &str) -> Trapd {
            let log = dir.join(log_name);
            let child = Command::new("snmptrapd")
                .env("SNMP_PERSISTENT_DIR", dir)
                .env("MIBS", "")
                .args(["-f", "-C", "-n", "-On", "-c"])
                .arg(dir.join(CONF))
                .arg("-Lf")
                .arg(&log)
                .args(["-F", "NOTIFY %v\n"])
                .arg(format!("udp:127.0.0.1:{port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("snmptrapd (Debian package snmptrapd) is installed");
            let t = Trapd { child, log };
            wait_until("snmptrapd to start", WAIT, || {
                std::fs::read_to_string(&t.log).is_ok_and(|s| s.contains("NET-SNMP version"))
            });
            t
        }

        /// The seq varbind of every logged notification, in log order.
        fn seqs(&self) -> Vec<u64> {
            seqs_in(&std::fs::read_to_string(&self.log).unwrap_or_default())
        }

        fn stop(mut self) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }

    impl Drop for Trapd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn seqs_in(log: &str) -> Vec<u64> {
        let seq_oid = format!(".1.3.6.1.4.1.32473.{SEQ_ARC}.2 = Gauge32: ");
        log.lines()
            .filter(|l| l.starts_with("NOTIFY "))
            .filter(|l| l.contains(".1.3.6.1.6.3.1.1.4.1.0 = OID: .1.3.6.1.4.1.32473.99.1"))
            .filter_map(|l| {
                let rest = &l[l.find(&seq_oid)? + seq_oid.len()..];
                rest.split_whitespace().next()?.parse().ok()
            })
            .collect()
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// A state dir with a configuration accepting v2c `public`, v3 informs from `ops`
    /// and v3 traps from `ops` at our engine ID.
    fn trapd_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let user = format!("ops SHA-256 {AUTH_PASSWORD} AES {PRIV_PASSWORD}");
        let conf = format!(
            "authCommunity log,execute,net public\n\
             createUser {user}\n\
             createUser -e 0x{engine} {user}\n\
             authUser log ops\n",
            engine = hex(ENGINE_ID)
        );
        std::fs::write(dir.path().join(CONF), conf).unwrap();
        dir
    }

    fn config(port: u16, form: &str) -> SnmpConfig {
        let cfg: SnmpConfig = toml::from_str(&format!(
            r#"
            [[user]]
            name = "ops"
            auth = "sha256"
            auth_password = "{AUTH_PASSWORD}"
            privacy = "aes128"
            priv_password = "{PRIV_PASSWORD}"

            [[receiver]]
            address = "127.0.0.1:{port}"
            form = "{form}"
            community = "public"
            user = "ops"
            timeout = "200ms"
            max_timeout = "1s"
            "#
        ))
        .unwrap();
        cfg.validate().unwrap();
        cfg
    }

    fn start(cfg: &SnmpConfig, log: &EventLog) -> NotifierHandle {
        spawn_notifier(
            cfg,
            ENGINE_ID.to_vec(),
            4,
            log.clone(),
            seq_mapping(),
            Instant::now(),
        )
    }

    fn emit(log: &EventLog, n: usize) {
        for _ in 0..n {
            log.emit(EventKind::NodeUp, fields([("node", "b".to_string())]));
        }
    }

    fn counters(h: &NotifierHandle) -> ReceiverCounters {
        h.receivers()[0].counters
    }

    #[tokio::test]
    async fn v2c_trap_arrives_with_its_varbinds() {
        let dir = trapd_dir();
        let port = free_udp_port();
        let trapd = Trapd::start(dir.path(), port, "trapd.log");
        let log = EventLog::in_memory("a");
        let h = start(&config(port, "v2c_trap"), &log);
        emit(&log, 3);
        wait_until_async("3 traps logged", WAIT, || trapd.seqs().len() == 3).await;
        assert_eq!(trapd.seqs(), vec![1, 2, 3]);
        let text = std::fs::read_to_string(&trapd.log).unwrap();
        assert!(text.contains(".1.3.6.1.2.1.1.3.0 = Timeticks: "), "{text}");
        assert_eq!(counters(&h).sent, 3);
        assert_eq!(counters(&h).acked, 0);
    }

    /// More events than the broadcast channel holds, raised before the notifier's task
    /// first runs: it falls behind and must re-read them from the log, not drop them.
    #[tokio::test]
    async fn a_notifier_behind_the_broadcast_loses_no_event() {
        let port = free_udp_port();
        let sink = std::net::UdpSocket::bind(("127.0.0.1", port)).unwrap();
        let log = EventLog::in_memory("a");
        let h = start(&config(port, "v2c_trap"), &log);
        emit(&log, 6000);
        wait_until_async("6000 traps sent", WAIT, || counters(&h).sent == 6000).await;
        assert_eq!(h.lost_events(), 0);
        assert_eq!(counters(&h).dropped, 0);
        drop(sink);
    }

    #[tokio::test]
    async fn v3_trap_auth_priv_arrives() {
        let dir = trapd_dir();
        let port = free_udp_port();
        let trapd = Trapd::start(dir.path(), port, "trapd.log");
        let log = EventLog::in_memory("a");
        let h = start(&config(port, "v3_trap"), &log);
        emit(&log, 2);
        wait_until_async("2 v3 traps logged", WAIT, || trapd.seqs().len() == 2).await;
        assert_eq!(trapd.seqs(), vec![1, 2]);
        assert_eq!(counters(&h).sent, 2);
    }

    #[tokio::test]
    async fn v2c_inform_is_acked() {
        let dir = trapd_dir();
        let port = free_udp_port();
        let trapd = Trapd::start(dir.path(), port, "trapd.log");
        let log = EventLog::in_memory("a");
        let h = start(&config(port, "v2c_inform"), &log);
        emit(&log, 3);
        wait_until_async("3 informs acked", WAIT, || counters(&h).acked == 3).await;
        assert_eq!(trapd.seqs(), vec![1, 2, 3]);
        assert_eq!(h.receivers()[0].queued, 0);
    }

    #[tokio::test]
    async fn v3_inform_auth_priv_is_acked() {
        let dir = trapd_dir();
        let port = free_udp_port();
        let trapd = Trapd::start(dir.path(), port, "trapd.log");
        let log = EventLog::in_memory("a");
        let h = start(&config(port, "v3_inform"), &log);
        emit(&log, 3);
        wait_until_async("3 v3 informs acked", WAIT, || counters(&h).acked == 3).await;
        assert_eq!(trapd.seqs(), vec![1, 2, 3]);
        assert_eq!(counters(&h).sent, 3);
    }

    /// The receiver goes down, events keep coming, it comes back 10 s later (rebooted:
    /// its engine boots moved on): every inform arrives once, in order.
    #[tokio::test]
    async fn informs_survive_a_receiver_down_for_10_s() {
        let dir = trapd_dir();
        let port = free_udp_port();
        let trapd = Trapd::start(dir.path(), port, "before.log");
        let log = EventLog::in_memory("a");
        let h = start(&config(port, "v3_inform"), &log);
        emit(&log, 2);
        wait_until_async("first informs acked", WAIT, || counters(&h).acked == 2).await;
        let before = trapd.seqs();
        trapd.stop();

        emit(&log, 5);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(counters(&h).acked, 2, "nobody was listening");
        assert!(counters(&h).retried >= 5, "{:?}", counters(&h));

        let trapd = Trapd::start(dir.path(), port, "after.log");
        wait_until_async("all informs acked", WAIT, || counters(&h).acked == 7).await;
        let mut all = before;
        all.extend(trapd.seqs());
        assert_eq!(all, (1..=7).collect::<Vec<u64>>());
        assert_eq!(counters(&h).dropped, 0);
        assert_eq!(h.lost_events(), 0);
    }
}
