//! End-to-end tests of the SNMP agent with net-snmp's own tools against one daemon on
//! loopback: TANDEM-MIB lints clean, walks agree with `tandem status`, refusals are
//! silent and counted, RFC 3416 exceptions show, and garbage does not stop the agent.
//! One raw exchange is decoded with `snmp-parser`, an independent BER decoder.
//!
//! The SMIv2 base modules come from `common/mibs.rs`.

use std::net::UdpSocket;
use std::ops::Deref;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tandem::snmp::ENTERPRISE;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
#[path = "common/mibs.rs"]
mod mibs;
use mibs::{base_mibs, mib_args};
#[path = "common/daemon.rs"]
mod daemon;
use daemon::{free_tcp_addr, free_udp_port, wait_until, Daemon};

/// The enterprise arc with `suffix`, dotted with a leading dot as net-snmp prints it.
fn enterprise_dotted(suffix: &[u32]) -> String {
    ENTERPRISE
        .iter()
        .chain(suffix)
        .map(|a| format!(".{a}"))
        .collect()
}

/// The SNMPv3 user of the test daemon (SHA-256 + AES-128) and its passphrases.
const V3_USER: &str = "ops";
const V3_AUTH: &str = "auth-pass-0123";
const V3_PRIV: &str = "priv-pass-4567";

/// Node `alpha` with a peer `beta` that never answers, one group running on alpha.
struct SnmpDaemon {
    daemon: Daemon,
    snmp: String,
    metrics: String,
}

impl Deref for SnmpDaemon {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl SnmpDaemon {
    fn start() -> SnmpDaemon {
        let snmp = format!("127.0.0.1:{}", free_udp_port());
        let metrics = free_tcp_addr().to_string();
        let daemon = Daemon::start("alpha", |dir| {
            format!(
                r#"
[cluster]
name = "snmptest"
key = "0123456789abcdef0123"
state_dir = "{state}"

[heartbeat]
interval = "100ms"
dead_time = "500ms"
port = {hb_port}
paths = ["lo"]

[api]
socket = "{sock}"

[metrics]
listen = "{metrics}"

[snmp]
listen = "{snmp}"
contact = "ops@example.com"
location = "rack 7"

[[snmp.user]]
name = "{V3_USER}"
auth = "sha256"
auth_password = "{V3_AUTH}"
privacy = "aes128"
priv_password = "{V3_PRIV}"

[[snmp.community]]
name = "public"
source = "127.0.0.0/8"

[[snmp.community]]
name = "faraway"
source = "192.0.2.0/24"

[[node]]
name = "alpha"
priority = 1
addresses = {{ lo = "127.0.0.1" }}

[[node]]
name = "beta"
priority = 2
addresses = {{ lo = "127.0.0.2" }}

[[group]]
name = "web"

[[group.resource]]
name = "app"
kind = "exec"
start = ["true"]
stop = ["true"]
"#,
                state = dir.join("state").display(),
                hb_port = free_udp_port(),
                sock = dir.join("api.sock").display(),
            )
        });
        let d = SnmpDaemon {
            daemon,
            snmp,
            metrics,
        };
        wait_until("group web running", Duration::from_secs(20), || {
            d.try_status().is_some_and(|s| {
                s["groups"][0]["local_state"] == "running" && s["groups"][0]["owner"] == "alpha"
            })
        });
        d
    }

    /// Runs a net-snmp tool against the agent: (success, stdout).
    fn query(
        &self,
        tool: &str,
        community: &str,
        options: &[&str],
        oids: &[&str],
    ) -> (bool, String) {
        let out = Command::new(tool)
            .args(["-v2c", "-c", community, "-t", "1", "-r", "0"])
            .args(mib_args())
            .args(options)
            .arg(&self.snmp)
            .args(oids)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e} (scripts/deps.sh installs snmp)"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Runs a net-snmp tool with SNMPv3 `security` options (user, level, keys):
    /// (success, stdout).
    fn query_v3(&self, tool: &str, security: &[&str], oids: &[&str]) -> (bool, String) {
        let out = Command::new(tool)
            .args(["-v3", "-t", "1", "-r", "0"])
            .args(security)
            .args(mib_args())
            .arg(&self.snmp)
            .args(oids)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e} (scripts/deps.sh installs snmp)"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// `tandem_snmp_dropped_requests_total{reason}` from the metrics endpoint.
    fn dropped(&self, reason: &str) -> u64 {
        let out = Command::new("curl")
            .args(["-sf", "--max-time", "5"])
            .arg(format!("http://{}/metrics", self.metrics))
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl /metrics: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let label = format!("reason=\"{reason}\"");
        text.lines()
            .find(|l| l.starts_with("tandem_snmp_dropped_requests_total{") && l.contains(&label))
            .and_then(|l| l.rsplit(' ').next())
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    fn get(&self, oids: &[&str]) -> String {
        let (ok, out) = self.query("snmpget", "public", &[], oids);
        assert!(ok, "snmpget {oids:?}: {out}");
        out
    }

    fn counter(&self, name: &str) -> u64 {
        let out = self.get(&[&format!("SNMPv2-MIB::{name}.0")]);
        out.rsplit(' ')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no counter in {out}"))
    }
}

/// `smilint -l 6` prints nothing for TANDEM-MIB, and net-snmp resolves every name it
/// defines to an OID under the enterprise arc.
#[test]
fn mib_lints_clean_and_every_name_resolves() {
    // libsmi looks modules up by bare name: give it extension-less copies.
    let smi = base_mibs().parent().unwrap().join("smi-path");
    std::fs::create_dir_all(&smi).unwrap();
    for m in ["SNMPv2-SMI", "SNMPv2-TC", "SNMPv2-CONF"] {
        std::fs::copy(base_mibs().join(format!("{m}.mib")), smi.join(m)).unwrap();
    }
    let mib = Path::new(REPO).join("mibs/TANDEM-MIB.txt");
    let out = Command::new("smilint")
        .args(["-l", "6"])
        .arg(&mib)
        .env("SMIPATH", &smi)
        .output()
        .expect("smilint (scripts/deps.sh installs smitools)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.is_empty(), "smilint -l 6 complains:\n{said}");

    let text = std::fs::read_to_string(&mib).unwrap();
    let kinds = [
        "MODULE-IDENTITY",
        "OBJECT IDENTIFIER",
        "OBJECT-TYPE",
        "NOTIFICATION-TYPE",
        "OBJECT-GROUP",
        "NOTIFICATION-GROUP",
        "MODULE-COMPLIANCE",
    ];
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(' ')?;
            let defines = name.starts_with(|c: char| c.is_ascii_lowercase())
                && kinds.iter().any(|k| rest.trim_start().starts_with(k));
            defines.then_some(name)
        })
        .collect();
    assert!(names.len() > 90, "found only {} names", names.len());
    for name in names {
        let out = Command::new("snmptranslate")
            .args(mib_args())
            .args(["-IR", "-On", name])
            .output()
            .unwrap();
        let oid = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && oid.starts_with(&enterprise_dotted(&[])),
            "snmptranslate {name}: {oid}"
        );
    }
}

/// Value of `TANDEM-MIB::<object>.<index>` in snmpwalk output, without the type.
fn walked<'a>(walk: &'a str, object: &str, index: &str) -> Option<&'a str> {
    let prefix = format!("TANDEM-MIB::{object}.{index} = ");
    walk.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.split_once(": ").map_or(v, |(_, v)| v))
}

#[test]
fn walks_agree_with_tandem_status() {
    let d = SnmpDaemon::start();
    let (ok, walk) = d.query("snmpwalk", "public", &[], &["TANDEM-MIB::tandem"]);
    assert!(ok, "{walk}");
    let st = d.status();

    assert_eq!(
        walked(&walk, "tandemClusterName", "0"),
        st["cluster"].as_str()
    );
    assert_eq!(walked(&walk, "tandemLocalNode", "0"), st["node"].as_str());
    for n in st["nodes"].as_array().unwrap() {
        let idx = format!("\"{}\"", n["name"].as_str().unwrap());
        let prio = n["priority"].to_string();
        assert_eq!(
            walked(&walk, "tandemNodePriority", &idx),
            Some(prio.as_str())
        );
        let state = if n["alive"] == true {
            "up(1)"
        } else {
            "down(2)"
        };
        assert_eq!(
            walked(&walk, "tandemNodeState", &idx),
            Some(state),
            "{walk}"
        );
        let local = if n["local"] == true {
            "true(1)"
        } else {
            "false(2)"
        };
        assert_eq!(walked(&walk, "tandemNodeLocal", &idx), Some(local));
    }
    let nodes_walked = walk.matches("tandemNodePriority.").count();
    assert_eq!(nodes_walked, st["nodes"].as_array().unwrap().len());
    let paths = st["paths"].as_array().unwrap();
    assert!(!paths.is_empty());
    for p in paths {
        let idx = format!(
            "\"{}\".\"{}\"",
            p["peer"].as_str().unwrap(),
            p["path"].as_str().unwrap()
        );
        let state = if p["up"] == true { "up(1)" } else { "down(2)" };
        assert_eq!(
            walked(&walk, "tandemPathState", &idx),
            Some(state),
            "{walk}"
        );
    }
    for g in st["groups"].as_array().unwrap() {
        let idx = format!("\"{}\"", g["name"].as_str().unwrap());
        assert_eq!(walked(&walk, "tandemGroupOwner", &idx), g["owner"].as_str());
        let summary = format!("{}(", g["summary"].as_str().unwrap());
        assert!(walked(&walk, "tandemGroupState", &idx)
            .unwrap()
            .starts_with(&summary));
        let local = format!("{}(", g["local_state"].as_str().unwrap());
        assert!(walked(&walk, "tandemGroupLocalState", &idx)
            .unwrap()
            .starts_with(&local));
        assert_eq!(
            walked(&walk, "tandemGroupEpoch", &idx),
            Some(g["epoch"].to_string().as_str())
        );
    }
    assert_eq!(
        walked(&walk, "tandemResourceKind", "\"web\".\"app\""),
        Some("exec(2)")
    );
    assert_eq!(
        walked(&walk, "tandemResourceState", "\"web\".\"app\""),
        Some("running(3)")
    );

    // GETBULK walks the same instances as GETNEXT (values like uptime move on).
    let names = |w: &str| -> Vec<String> {
        w.lines()
            .filter_map(|l| l.split_once(" = ").map(|(n, _)| n.to_string()))
            .collect()
    };
    let (ok, bulk) = d.query("snmpbulkwalk", "public", &["-Cr7"], &["TANDEM-MIB::tandem"]);
    assert!(ok, "{bulk}");
    assert_eq!(names(&bulk), names(&walk));
    let (ok, whole) = d.query("snmpbulkwalk", "public", &["-Cr50", "-On"], &[".1"]);
    assert!(ok);
    assert!(
        whole.contains(".1.3.6.1.2.1.1.5.0 = STRING: alpha"),
        "{whole}"
    );

    let sys = d.get(&["SNMPv2-MIB::sysObjectID.0", "SNMPv2-MIB::sysContact.0"]);
    assert!(sys.contains("OID: TANDEM-MIB::tandem\n"), "{sys}");
    assert!(sys.contains("STRING: ops@example.com"), "{sys}");
}

#[test]
fn refused_requests_time_out_and_are_counted() {
    let d = SnmpDaemon::start();
    let before = d.counter("snmpInBadCommunityNames");
    let (ok, out) = d.query("snmpget", "wrong", &[], &["SNMPv2-MIB::sysName.0"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert_eq!(d.counter("snmpInBadCommunityNames"), before + 1);
    // A known community used from outside its source network.
    let (ok, out) = d.query("snmpget", "faraway", &[], &["SNMPv2-MIB::sysName.0"]);
    assert!(!ok && out.is_empty(), "{out}");
    assert_eq!(d.counter("snmpInBadCommunityNames"), before + 2);
    // Read-only: a SET is answered with noAccess and changes nothing.
    let out = Command::new("snmpset")
        .args(["-v2c", "-c", "public", "-t", "1", "-r", "0"])
        .args(mib_args())
        .arg(&d.snmp)
        .args(["SNMPv2-MIB::sysName.0", "s", "mallory"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && said.contains("noAccess"), "{said}");
    assert!(d.get(&["SNMPv2-MIB::sysName.0"]).contains("STRING: alpha"));
}

#[test]
fn exceptions_show_in_get_and_getnext() {
    let d = SnmpDaemon::start();
    let unknown = enterprise_dotted(&[9, 9, 0]);
    let out = d.get(&[
        "TANDEM-MIB::tandemGroupOwner.\"nope\"",
        &unknown,
        "TANDEM-MIB::tandemMirrorRole.\"vol\"",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].ends_with("No Such Instance currently exists at this OID"),
        "{out}"
    );
    assert!(
        lines[1].ends_with("No Such Object available on this agent at this OID"),
        "{out}"
    );
    assert!(
        lines[2].ends_with("No Such Instance currently exists at this OID"),
        "{out}"
    );
    // The last instance of the view: nothing after it.
    let (ok, walk) = d.query("snmpwalk", "public", &["-On"], &[".1"]);
    assert!(ok);
    let last = walk
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let (_, next) = d.query("snmpgetnext", "public", &[], &[&last]);
    assert!(
        next.contains("No more variables left in this MIB View"),
        "{next}"
    );
}

/// A GetRequest for `names`, BER-encoded with rasn.
fn get_request(community: &str, request_id: i32, names: &[&[u32]]) -> Vec<u8> {
    use rasn_snmp::v2::{GetRequest, Pdu, VarBind, VarBindValue};
    let msg = rasn_snmp::v2c::Message {
        version: 1.into(),
        community: community.as_bytes().to_vec().into(),
        data: GetRequest(Pdu {
            request_id,
            error_status: 0,
            error_index: 0,
            variable_bindings: names
                .iter()
                .map(|n| VarBind {
                    name: rasn::types::ObjectIdentifier::new(n.to_vec()).unwrap(),
                    value: VarBindValue::Unspecified,
                })
                .collect(),
        }),
    };
    rasn::ber::encode(&msg).unwrap()
}

#[test]
fn garbage_does_not_stop_the_agent_and_answers_decode_independently() {
    let d = SnmpDaemon::start();
    let parse_errors = d.counter("snmpInASNParseErrs");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let valid = get_request("public", 7, &[&[1, 3, 6, 1, 2, 1, 1, 5, 0]]);
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x30],
        vec![0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x02, 0x01, 0x01],
        valid[..valid.len() - 3].to_vec(),
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        (0..=255).collect(),
    ];
    let mut buf = [0u8; 2048];
    for g in &garbage {
        sock.send_to(g, &d.snmp).unwrap();
        assert!(sock.recv_from(&mut buf).is_err(), "answered garbage {g:?}");
    }
    assert!(d.counter("snmpInASNParseErrs") >= parse_errors + 5);

    // Still alive; decode the raw answer with snmp-parser, not with rasn.
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let unknown = [ENTERPRISE, &[9, 0]].concat();
    let request = get_request("public", 4242, &[&[1, 3, 6, 1, 2, 1, 1, 5, 0], &unknown]);
    sock.send_to(&request, &d.snmp).unwrap();
    let (n, _) = sock.recv_from(&mut buf).unwrap();
    let (rest, msg) = snmp_parser::parse_snmp_v2c(&buf[..n]).expect("snmp-parser decodes");
    assert!(rest.is_empty());
    assert_eq!(msg.community, "public");
    assert_eq!(msg.pdu_type(), snmp_parser::PduType::Response);
    let snmp_parser::SnmpPdu::Generic(pdu) = &msg.pdu else {
        panic!("not a response: {:?}", msg.pdu);
    };
    assert_eq!(pdu.req_id, 4242);
    assert_eq!(pdu.err, snmp_parser::ErrorStatus::NoError);
    let vars: Vec<_> = msg.vars_iter().collect();
    assert_eq!(vars.len(), 2);
    assert_eq!(vars[0].oid.to_id_string(), "1.3.6.1.2.1.1.5.0");
    assert_eq!(
        vars[0].val,
        snmp_parser::VarBindValue::Value(snmp_parser::ObjectSyntax::String(b"alpha"))
    );
    assert_eq!(vars[1].val, snmp_parser::VarBindValue::NoSuchObject);
}

#[cfg(feature = "bench")]
#[test]
fn bench_compares_with_snmpd_and_measures_event_to_trap_latency() {
    let out = Command::new(daemon::BIN)
        .args(["bench", "snmp", "--runs", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let count = |agent: &str| -> usize {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(agent))
            .unwrap_or_else(|| panic!("no `{agent}` line in {text}"));
        line[agent.len() + 2..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {line}"))
    };
    let tandem = count("tandem");
    let snmpd = count("net-snmp snmpd");
    assert!(tandem >= 5000, "{text}");
    assert!(tandem >= snmpd, "tandem's tree is sized to snmpd's: {text}");
    assert!(text.contains("time ratio tandem/snmpd: "), "{text}");
    // Event-to-snmptrapd latency: every inform arrives (traps are best effort).
    let latency = |receiver: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(receiver))
            .unwrap_or_else(|| panic!("no `{receiver}` line in {text}"))
            .to_string()
    };
    assert!(latency("v2c trap").contains(" median "), "{text}");
    let inform = latency("v2c inform");
    assert!(inform.contains(" 200/200 received  median "), "{text}");
}

/// authPriv options for `user` with the given passphrases (SHA-256, AES-128).
fn auth_priv<'a>(user: &'a str, auth: &'a str, privacy: &'a str) -> [&'a str; 12] {
    [
        "-l", "authPriv", "-u", user, "-a", "SHA-256", "-A", auth, "-x", "AES", "-X", privacy,
    ]
}

#[test]
fn v3_auth_priv_reads_what_v2c_and_status_read_and_refusals_are_counted() {
    let d = SnmpDaemon::start();
    let good = auth_priv(V3_USER, V3_AUTH, V3_PRIV);
    let root = ["TANDEM-MIB::tandem"];
    let (ok, v2c) = d.query("snmpwalk", "public", &[], &root);
    assert!(ok, "{v2c}");
    let timed = |tool: &str, options: &[&str]| {
        let t = Instant::now();
        let (ok, out) = d.query_v3(tool, options, &root);
        println!(
            "{tool} -v3 authPriv: {} lines in {:?}",
            out.lines().count(),
            t.elapsed()
        );
        assert!(ok, "{tool}: {out}");
        out
    };
    let walk = timed("snmpwalk", &good);
    let bulk = timed("snmpbulkwalk", &[&good[..], &["-Cr7"]].concat());
    let names = |w: &str| -> Vec<String> {
        w.lines()
            .filter_map(|l| l.split_once(" = ").map(|(n, _)| n.to_string()))
            .collect()
    };
    assert!(names(&v2c).len() > 10, "{v2c}");
    assert_eq!(names(&walk), names(&v2c));
    assert_eq!(names(&bulk), names(&v2c));

    let st = d.status();
    for w in [&walk, &bulk] {
        assert_eq!(walked(w, "tandemLocalNode", "0"), st["node"].as_str());
        for n in st["nodes"].as_array().unwrap() {
            let idx = format!("\"{}\"", n["name"].as_str().unwrap());
            let state = if n["alive"] == true {
                "up(1)"
            } else {
                "down(2)"
            };
            assert_eq!(walked(w, "tandemNodeState", &idx), Some(state), "{w}");
            assert_eq!(
                walked(w, "tandemNodeState", &idx),
                walked(&v2c, "tandemNodeState", &idx)
            );
        }
        let g = &st["groups"][0];
        let idx = format!("\"{}\"", g["name"].as_str().unwrap());
        assert_eq!(walked(w, "tandemGroupOwner", &idx), g["owner"].as_str());
        let summary = format!("{}(", g["summary"].as_str().unwrap());
        assert!(walked(w, "tandemGroupState", &idx)
            .unwrap()
            .starts_with(&summary));
        assert_eq!(
            walked(w, "tandemGroupState", &idx),
            walked(&v2c, "tandemGroupState", &idx)
        );
    }
    let (ok, got) = d.query_v3(
        "snmpget",
        &good,
        &[
            "TANDEM-MIB::tandemGroupOwner.\"web\"",
            "SNMPv2-MIB::sysName.0",
        ],
    );
    assert!(ok, "{got}");
    assert!(
        got.contains("tandemGroupOwner.\"web\" = STRING: alpha"),
        "{got}"
    );
    assert!(got.contains("sysName.0 = STRING: alpha"), "{got}");

    // A successful exchange costs the discovery Report; each refusal costs more.
    let get = ["SNMPv2-MIB::sysName.0"];
    let before = d.dropped("usm");
    assert!(d.query_v3("snmpget", &good, &get).0);
    let per_success = d.dropped("usm") - before;
    let refused: [(&str, Vec<&str>); 4] = [
        (
            "wrong user",
            auth_priv("mallory", V3_AUTH, V3_PRIV).to_vec(),
        ),
        (
            "wrong auth key",
            auth_priv(V3_USER, "not-the-auth-pass", V3_PRIV).to_vec(),
        ),
        (
            "wrong priv key",
            auth_priv(V3_USER, V3_AUTH, "not-the-priv-pass").to_vec(),
        ),
        ("noAuthNoPriv", vec!["-l", "noAuthNoPriv", "-u", V3_USER]),
    ];
    for (what, options) in refused {
        let before = d.dropped("usm");
        let (ok, out) = d.query_v3("snmpget", &options, &get);
        let counted = d.dropped("usm") - before;
        println!("{what}: refused, usm drops +{counted} (a success costs +{per_success})");
        assert!(!ok, "{what} answered: {out}");
        assert!(!out.contains("alpha"), "{what} leaked: {out}");
        assert!(
            counted > per_success,
            "{what}: +{counted}, success +{per_success}"
        );
    }
    // Still serving the right user.
    assert!(d
        .query_v3("snmpget", &good, &get)
        .1
        .contains("STRING: alpha"));
}
