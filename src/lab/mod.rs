//! `tandem lab`: a whole failover cluster on one machine, built from network
//! namespaces, veth pairs and bridges, with one Tandem daemon per node, plus
//! fault injection (power loss, pause, heartbeat cuts, isolation, carrier loss,
//! packet loss) and a failover benchmark against keepalived.
//!
//! Layout (prefix `tdm-` by default):
//! * `<prefix>sw`: the "switch", bridges `brpub` (10.77.0.0/24), `brhb1`
//!   (10.78.1.0/24) and `brhb2` (10.78.2.0/24);
//! * `<prefix>n<i>`: node `n<i>` with `pub0` (10.77.0.1<i>), `pub1` (same
//!   LAN, no address), `hb1` (10.78.1.1<i>), `hb2` (10.78.2.1<i>);
//! * `<prefix>cl`: client with `eth0` 10.77.0.2; the VIP is 10.77.0.100;
//! * `<prefix>w` (`lab up --witness`): `tandem witness` with `hb1` (10.78.1.200) on
//!   `brhb1`, the third voter; every node names it in `[witness]`.
//!
//! The lab is a test harness: it shells out to `ip` and `nft`.

#[cfg(feature = "bench")]
pub mod bench;
pub mod bmc;
pub mod keepalived;
pub mod net;
mod probe;
pub mod topology;
pub mod watchdog;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::mirror::generation::SplitBrainPolicy;
use topology::{Plan, Topology, HB_PATHS};

/// Default lab directory.
pub const DEFAULT_DIR: &str = "/run/tandem-lab";
/// Default namespace prefix.
pub const DEFAULT_PREFIX: &str = "tdm-";

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A helper command exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// Command line.
        cmd: String,
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// A helper command could not be started.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// Command line.
        cmd: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Filesystem or socket error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {ns}: {source}")]
    Netns {
        /// Namespace.
        ns: String,
        /// Cause.
        source: nix::Error,
    },
    /// Signalling a process failed.
    #[error("cannot signal pid {pid}: {source}")]
    Signal {
        /// Target.
        pid: i32,
        /// Cause.
        source: nix::Error,
    },
    /// `lab.json` or `ip -j` output could not be (de)serialized.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Bad plan (prefix, node count).
    #[error(transparent)]
    Plan(#[from] topology::PlanError),
    /// Bad keepalived parameters.
    #[error(transparent)]
    Keepalived(#[from] keepalived::KeepalivedError),
    /// No lab description where one was expected.
    #[error("no lab at {0} (start one with `tandem lab up`)")]
    NoLab(PathBuf),
    /// A lab (or leftovers of one) already exists.
    #[error("{0}; tear it down first with `tandem lab down`")]
    AlreadyUp(String),
    /// Unknown node or interface name.
    #[error("{0}")]
    Invalid(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Ctrl-C / SIGTERM.
    #[error("interrupted")]
    Interrupted,
}

impl LabError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            context: context.into(),
            source,
        }
    }
}

/// What runs on each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// `tandem run` (the product).
    Tandem,
    /// keepalived (VRRPv3) plus a built-in HTTP responder, for comparison.
    Keepalived,
    /// Only the built-in HTTP responder; no VIP management (topology tests).
    None,
}

/// Switchback policy written into the generated Tandem configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switchback {
    /// Stay on the standby after a failover.
    Manual,
    /// Move back to the preferred node when it returns.
    Automatic,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Engine::Tandem => "tandem",
            Engine::Keepalived => "keepalived",
            Engine::None => "none",
        })
    }
}

impl Switchback {
    fn as_str(self) -> &'static str {
        match self {
            Switchback::Manual => "manual",
            Switchback::Automatic => "automatic",
        }
    }
}

/// `--dir` shared by the subcommands that act on an existing lab.
#[derive(Debug, Clone, Args)]
pub struct DirArg {
    /// Lab directory (holds lab.json, configs, logs, sockets).
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// Options of `lab up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 2)]
    pub nodes: usize,
    /// The cluster's shape: one group over every node (`active-standby`), one group per
    /// node but the last, the standby of them all (`n+1`), two groups on two nodes,
    /// each preferring its own (`active-active`), or one group over one disk every node
    /// sees (`shared-disk`).
    #[arg(long, value_enum, default_value_t = Topology::ActiveStandby)]
    pub topology: Topology,
    /// With `--topology n+1`: every group is `exclusive`, so the standby takes only one
    /// failed server's group and reports the others as unable to run.
    #[arg(long)]
    pub exclusive: bool,
    /// Heartbeat interval in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub interval: u64,
    /// Dead time in milliseconds (default: 5 intervals; at least 3).
    #[arg(long)]
    pub dead_time: Option<u64>,
    /// Prefix of the network namespace names.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: String,
    /// Lab directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
    /// Switchback policy of the demo group.
    #[arg(long, value_enum, default_value_t = Switchback::Manual)]
    pub switchback: Switchback,
    /// Tandem binary to run on the nodes (default: this executable).
    #[arg(long)]
    pub tandem_bin: Option<PathBuf>,
    /// What runs on each node.
    #[arg(long, value_enum, default_value_t = Engine::Tandem)]
    pub engine: Engine,
    /// Seconds to wait for the VIP to answer.
    #[arg(long, default_value_t = 20)]
    pub wait: u64,
    /// Add a witness (`tandem witness` in its own namespace on the first heartbeat
    /// LAN): two nodes and the witness decide by majority.
    #[arg(long)]
    pub witness: bool,
    /// No watchdog stand-in (with a quorum, each node's `[quorum] watchdog` is
    /// otherwise a FIFO whose stand-in power-kills the node when it is not petted).
    #[arg(long)]
    pub no_watchdog: bool,
    /// The watchdog stand-ins' timeout in whole seconds (default 1, with the default
    /// lease). Given, every voter gets the shortest lease the configuration check
    /// accepts for it: timeout + interval + 300 ms, rounded up to 100 ms.
    #[arg(long, value_name = "SECS", conflicts_with = "no_watchdog",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub watchdog_timeout: Option<u64>,
    /// Give each node a BMC stand-in (a minimal Redfish service on the public LAN
    /// whose `ForceOff` power-kills the node) and a `[node.fence]` section naming it:
    /// a node that takes a group over powers the previous owner off.
    #[arg(long)]
    pub fence: bool,
    /// The demo mirror gets `on_no_quorum = "suspend"`: an owner that loses its lease
    /// holds the group (floating IP dropped, writes suspended, service frozen) and
    /// resumes it if the lease comes back at the same epoch.
    #[arg(long)]
    pub suspend_on_no_quorum: bool,
    /// The demo mirror's `split_brain` policy (default: the daemon's, `disconnect`).
    #[arg(long, value_name = "POLICY", value_parser = parse_split_brain)]
    pub split_brain: Option<SplitBrainPolicy>,
    /// Run this node's daemon from another build (`n2=PATH`, repeatable): the rolling
    /// upgrade test runs two builds side by side. Its helpers (the demo service) stay
    /// `--tandem-bin`'s, so the nodes' configurations agree.
    #[arg(long = "node-binary", value_name = "NODE=PATH", hide = true, value_parser = parse_node_binary)]
    pub node_binary: Vec<(String, PathBuf)>,
}

fn parse_node_binary(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once('=') {
        Some((node, path)) if !node.is_empty() && !path.is_empty() => {
            Ok((node.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("expected NODE=PATH, got {arg:?}")),
    }
}

fn parse_split_brain(name: &str) -> Result<SplitBrainPolicy, String> {
    SplitBrainPolicy::from_name(name).ok_or_else(|| {
        let all: Vec<&str> = SplitBrainPolicy::ALL.iter().map(|p| p.name()).collect();
        format!(
            "unknown split-brain policy {name:?}; one of {}",
            all.join(", ")
        )
    })
}

/// Options of `lab down`.
#[derive(Debug, Clone, Args)]
pub struct DownArgs {
    /// Namespace prefix (default: from lab.json, else `tdm-`).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Lab directory.
    #[arg(long, default_value = DEFAULT_DIR)]
    pub dir: PathBuf,
}

/// Failure to inject with `lab fail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FailAction {
    /// Power loss: all links down first, then SIGKILL everything in the node.
    Kill,
    /// Pause the daemon (SIGSTOP).
    Stop,
    /// Resume a paused daemon (SIGCONT).
    Cont,
    /// Power back on: links up, boot addresses, start the daemon again.
    Restart,
}

/// Where `lab move` puts a node's replication link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Site {
    /// The local network: the plain second heartbeat bridge, uncapped.
    Lan,
    /// The capped WAN bridge.
    Wan,
}

/// Link state for `lab link`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UpDown {
    /// Carrier on.
    Up,
    /// Carrier off.
    Down,
}

/// `tandem lab ...`
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab (namespaces, bridges, veths) and start one daemon per node.
    Up(UpArgs),
    /// Show namespaces, daemons, interfaces, fault rules and who serves the VIP.
    Status(DirArg),
    /// Fail a node: `kill` (power loss), `stop`/`cont` (pause), `restart`.
    Fail {
        /// Node (`n1` or `1`).
        node: String,
        /// What to do.
        #[arg(value_enum)]
        action: FailAction,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Drop all traffic on a node's heartbeat path (`hb1`, `hb2` or `all`); links stay up.
    Cut {
        /// Node (`n1` or `1`).
        node: String,
        /// Interface of the node, or `all` for every heartbeat path.
        path: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Drop all IPv4 and ARP traffic of a node (or the witness, `w`) on every link
    /// but loopback; the links stay up.
    Isolate {
        /// Node (`n1` or `1`), or `w` for the witness.
        node: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Split the lab in two: the listed nodes (and `w` if listed) keep talking to
    /// each other and to the clients, but not to the rest; the links stay up.
    Partition {
        /// One side, comma-separated (`n1,n5` or `n1,w`); the other side is the rest.
        side: String,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Remove the cut, isolation, partition and loss rules of one node (or `w`), or of
    /// the whole lab.
    Heal {
        /// Node (`n1` or `1`) or `w`; default: every namespace of the lab.
        node: Option<String>,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Carrier change: set the switch-side end of a node's interface up or down.
    Link {
        /// Node (`n1` or `1`).
        node: String,
        /// Interface of the node (`pub0`, `pub1`, `hb1`, `hb2`).
        iface: String,
        /// New carrier state.
        #[arg(value_enum)]
        state: UpDown,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Move a node's second heartbeat LAN (its replication link to the DR site) to the
    /// fast local network (`lan`: the plain bridge, no cap) or to the capped "WAN"
    /// (`wan`: a bridge joined to the LAN through a link capped with tbf both ways),
    /// as an operator moves a DR server after seeding it. Works while the node is down.
    Move {
        /// Node (`n3` or `3`).
        node: String,
        /// Where to.
        #[arg(value_enum)]
        to: Site,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Random packet loss on a path, on every node (0 removes it).
    ///
    /// Packets are dropped on reception, so each direction of the path loses
    /// PERCENT% (a ping round trip loses about twice that).
    Loss {
        /// Interface (`hb1`, `hb2`, `pub0`, ...).
        path: String,
        /// Percentage of received packets to drop.
        #[arg(value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: u8,
        #[command(flatten)]
        dir: DirArg,
    },
    /// Remove everything (processes, namespaces, lab files); idempotent.
    Down(DownArgs),
    /// Benchmarks.
    #[cfg(feature = "bench")]
    Bench {
        #[command(subcommand)]
        bench: bench::BenchCommand,
    },
    /// A node's watchdog stand-in (started by `lab up`).
    #[command(hide = true)]
    WatchdogStandin(watchdog::StandinArgs),
    /// A node's BMC stand-in (started by `lab up --fence`).
    #[command(hide = true)]
    BmcStandin(bmc::BmcArgs),
    /// Built-in HTTP responder (service of the keepalived arm).
    #[command(hide = true)]
    Responder {
        /// Name to answer with (default: $TANDEM_NODE).
        #[arg(long)]
        name: Option<String>,
        /// Listen address.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: String,
    },
}

/// A process the lab starts on a node (restartable).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcSpec {
    /// Command line.
    pub argv: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Log file (stdout + stderr, appended).
    pub log: PathBuf,
    /// Pid of the last start.
    pub pid: Option<u32>,
}

/// One node in `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// `n1`.
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// Public address.
    pub pub_addr: String,
    /// Heartbeat path -> address.
    pub hb_addrs: BTreeMap<String, String>,
    /// Node directory.
    pub dir: PathBuf,
    /// Tandem config (engine tandem) or keepalived.conf.
    pub config: Option<PathBuf>,
    /// Tandem state dir (events.jsonl lives here).
    pub state_dir: Option<PathBuf>,
    /// Tandem API socket.
    pub socket: Option<PathBuf>,
    /// Processes, the engine daemon first.
    pub procs: Vec<ProcSpec>,
    /// The watchdog stand-in (in the switch namespace), reading `<dir>/watchdog.fifo`.
    #[serde(default)]
    pub watchdog: Option<ProcSpec>,
    /// The BMC stand-in (in the switch namespace; `lab up --fence`).
    #[serde(default)]
    pub bmc: Option<ProcSpec>,
}

/// The witness in `lab.json` (`lab up --witness`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WitnessState {
    /// Its voter name (`w`).
    pub name: String,
    /// Network namespace.
    pub netns: String,
    /// Its address on the first heartbeat LAN.
    pub addr: String,
    /// Its directory (config, log, state).
    pub dir: PathBuf,
    /// `tandem witness` configuration.
    pub config: PathBuf,
    /// The daemon.
    pub proc: ProcSpec,
}

/// `lab.json`: everything later subcommands need.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Namespace prefix.
    pub prefix: String,
    /// Lab directory.
    pub dir: PathBuf,
    /// What runs on the nodes.
    pub engine: Engine,
    /// Heartbeat / advert interval (ms).
    pub interval_ms: u64,
    /// Switchback policy.
    pub switchback: Switchback,
    /// Tandem binary used on the nodes.
    pub tandem_bin: String,
    /// Floating IP.
    pub vip: String,
    /// Switch namespace.
    pub switch_ns: String,
    /// Client namespace.
    pub client_ns: String,
    /// Nodes.
    pub nodes: Vec<NodeState>,
    /// The witness, if the lab has one.
    #[serde(default)]
    pub witness: Option<WitnessState>,
    /// The cluster's shape (its groups and their floating IPs).
    #[serde(default)]
    pub topology: Topology,
}

impl LabState {
    fn plan(&self) -> Result<Plan, LabError> {
        Ok(Plan::with_topology(
            &self.prefix,
            self.nodes.len(),
            self.topology,
        )?)
    }

    fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The namespace of a node (`n1`, `1`) or of the witness (`w`).
    fn target_ns(&self, spec: &str) -> Result<(String, String), LabError> {
        if let Some(w) = self.witness.as_ref().filter(|w| w.name == spec.trim()) {
            return Ok((w.name.clone(), w.netns.clone()));
        }
        let i = self.node_index(spec)?;
        Ok((self.nodes[i].name.clone(), self.nodes[i].netns.clone()))
    }

    fn node_index(&self, spec: &str) -> Result<usize, LabError> {
        let plan = self.plan()?;
        plan.node(spec).map(|n| n.index - 1).ok_or_else(|| {
            LabError::Invalid(format!(
                "unknown node {spec:?} (nodes: {})",
                self.node_names().join(", ")
            ))
        })
    }

    /// Saves node `i`'s entry only. Other `lab` commands may run at the same moment
    /// (`lab fail` of two nodes at once), each with the state it loaded: under an
    /// exclusive lock, the file is read again and only this node's entry replaced, so
    /// no command's change is lost.
    fn save_node(&self, i: usize) -> Result<(), LabError> {
        let lock_path = self.dir.join("lab.lock");
        let lock = std::fs::File::create(&lock_path)
            .map_err(|e| LabError::io(format!("creating {}", lock_path.display()), e))?;
        lock.lock()
            .map_err(|e| LabError::io(format!("locking {}", lock_path.display()), e))?;
        let mut current = LabState::load(&self.dir)?;
        current.nodes[i] = self.nodes[i].clone();
        current.save()
    }

    fn save(&self) -> Result<(), LabError> {
        let path = self.dir.join("lab.json");
        // Unique per process: two commands saving at once never rename each other's.
        let tmp = self
            .dir
            .join(format!("lab.json.tmp.{}", std::process::id()));
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .map_err(|e| LabError::io(format!("writing {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &path)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
    }

    /// Load `<dir>/lab.json`.
    pub fn load(dir: &Path) -> Result<LabState, LabError> {
        let path = dir.join("lab.json");
        match std::fs::read(&path) {
            Ok(b) => Ok(serde_json::from_slice(&b)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(LabError::NoLab(dir.to_path_buf()))
            }
            Err(e) => Err(LabError::io(format!("reading {}", path.display()), e)),
        }
    }
}

/// Run a lab subcommand.
pub fn run(cmd: LabCommand) -> Result<(), LabError> {
    match cmd {
        LabCommand::Up(args) => {
            net::install_interrupt_handler();
            let state = up(&args, true)?;
            print_summary(&state);
            Ok(())
        }
        LabCommand::Status(d) => status(&d.dir),
        LabCommand::Fail { node, action, dir } => {
            let mut state = LabState::load(&dir.dir)?;
            let i = state.node_index(&node)?;
            fail(&mut state, i, action)
        }
        LabCommand::Cut { node, path, dir } => {
            let state = LabState::load(&dir.dir)?;
            let i = state.node_index(&node)?;
            cut(&state, i, &path)
        }
        LabCommand::Isolate { node, dir } => isolate(&LabState::load(&dir.dir)?, &node),
        LabCommand::Partition { side, dir } => partition(&LabState::load(&dir.dir)?, &side),
        LabCommand::Heal { node, dir } => {
            let state = LabState::load(&dir.dir)?;
            match node {
                Some(n) => heal_one(&state, &n),
                None => heal(&state),
            }
        }
        LabCommand::Link {
            node,
            iface,
            state: updown,
            dir,
        } => {
            let state = LabState::load(&dir.dir)?;
            let i = state.node_index(&node)?;
            link(&state, i, &iface, updown)
        }
        LabCommand::Loss { path, percent, dir } => loss(&LabState::load(&dir.dir)?, &path, percent),
        LabCommand::Move { node, to, dir } => {
            let state = LabState::load(&dir.dir)?;
            let i = state.node_index(&node)?;
            move_node(&state, i, to)
        }
        LabCommand::Down(a) => {
            let prefix = match a.prefix {
                Some(p) => p,
                None => LabState::load(&a.dir)
                    .map(|s| s.prefix)
                    .unwrap_or_else(|_| DEFAULT_PREFIX.to_string()),
            };
            down(&prefix, &a.dir)?;
            println!("lab {prefix:?} removed");
            Ok(())
        }
        #[cfg(feature = "bench")]
        LabCommand::Bench { bench } => {
            net::install_interrupt_handler();
            bench::run(bench)
        }
        LabCommand::WatchdogStandin(a) => watchdog::run(a),
        LabCommand::BmcStandin(a) => bmc::run(a),
        LabCommand::Responder { name, listen } => {
            let name = name
                .or_else(|| std::env::var("TANDEM_NODE").ok())
                .unwrap_or_else(|| "unknown".into());
            probe::serve(&listen, &name)
        }
    }
}

/// Tears the lab down when dropped unless disarmed.
pub(crate) struct Teardown {
    prefix: String,
    dir: PathBuf,
    armed: bool,
}

impl Teardown {
    pub(crate) fn new(prefix: &str, dir: &Path) -> Self {
        Teardown {
            prefix: prefix.to_string(),
            dir: dir.to_path_buf(),
            armed: true,
        }
    }

    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Teardown {
    fn drop(&mut self) {
        if self.armed {
            info!(prefix = %self.prefix, "tearing lab down");
            if let Err(e) = down(&self.prefix, &self.dir) {
                warn!(error = %e, "teardown failed; run `tandem lab down --prefix {}`", self.prefix);
            }
        }
    }
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Path of keepalived if installed.
pub fn keepalived_bin() -> Option<PathBuf> {
    find_in_path("keepalived")
}

fn self_exe() -> Result<String, LabError> {
    std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .map_err(|e| LabError::io("locating current executable", e))
}

/// Build the lab and start the engines. On any error (or Ctrl-C) everything
/// built so far is removed. `wait_vip`: wait until the VIP answers.
pub(crate) fn up(args: &UpArgs, wait_vip: bool) -> Result<LabState, LabError> {
    let mut plan = Plan::with_topology(&args.prefix, args.nodes, args.topology)?;
    check_up_args(args)?;
    if args.exclusive {
        plan.make_exclusive();
    }
    check_not_up(args, &plan)?;
    let engines = Engines::locate(args)?;

    let guard = Teardown::new(&args.prefix, &args.dir);
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| LabError::io(format!("creating {}", args.dir.display()), e))?;
    build_topology(&plan)?;
    if args.witness {
        wire_witness(&plan)?;
    }
    if args.topology == Topology::SharedDisk {
        create_shared_disk(&args.dir)?;
    }
    if args.fence {
        // The BMCs' address, on the public LAN in the switch namespace.
        net::ip_batch(
            &plan.switch_ns,
            &[format!(
                "addr add {} dev {}",
                topology::BMC_CIDR,
                topology::BR_PUB
            )],
        )?;
    }
    net::check_interrupt()?;

    let nodes = plan
        .nodes
        .iter()
        .map(|n| engines.node_state(args, &plan, n))
        .collect::<Result<Vec<_>, _>>()?;
    let witness = if args.witness {
        Some(engines.witness_state(args, &plan)?)
    } else {
        None
    };
    let mut state = LabState {
        prefix: args.prefix.clone(),
        dir: args.dir.clone(),
        engine: args.engine,
        interval_ms: args.interval,
        switchback: args.switchback,
        tandem_bin: engines.tandem_bin,
        vip: plan.groups[0].vip.clone(),
        switch_ns: plan.switch_ns.clone(),
        client_ns: plan.client_ns.clone(),
        nodes,
        witness,
        topology: args.topology,
    };
    state.save()?;
    start_witness(&mut state)?;
    start_standins(&mut state)?;
    for i in 0..state.nodes.len() {
        start_node(&mut state, i)?;
    }
    state.save()?;
    info!(prefix = %state.prefix, nodes = state.nodes.len(), "lab built, daemons started");

    if wait_vip && state.engine != Engine::None {
        for vip in plan.vips() {
            wait_for_vip(&state, &vip, args.wait)?;
        }
    }
    guard.disarm();
    Ok(state)
}

/// The shared disk of `--topology shared-disk`, in the lab's directory.
pub fn shared_disk_path(dir: &Path) -> PathBuf {
    dir.join(topology::SHARED_DISK_FILE)
}

/// A fresh (zeroed, sparse) shared disk: no lease held, an empty write log.
fn create_shared_disk(dir: &Path) -> Result<(), LabError> {
    let path = shared_disk_path(dir);
    let f = std::fs::File::create(&path)
        .map_err(|e| LabError::io(format!("creating {}", path.display()), e))?;
    f.set_len(topology::SHARED_DISK_BYTES)
        .map_err(|e| LabError::io(format!("sizing {}", path.display()), e))
}

/// The options of `lab up` that must agree with each other.
fn check_up_args(args: &UpArgs) -> Result<(), LabError> {
    if args.engine != Engine::None && args.interval == 0 {
        return Err(LabError::Invalid("--interval must be > 0".into()));
    }
    if args.dead_time.is_some_and(|d| d < args.interval * 3) {
        return Err(LabError::Invalid(
            "--dead-time must be at least 3 x --interval".into(),
        ));
    }
    if args.engine == Engine::Keepalived {
        keepalived::advert_int(args.interval)?;
    }
    if args.topology != Topology::ActiveStandby && args.engine != Engine::Tandem {
        return Err(LabError::Invalid(
            "--topology n+1, active-active and shared-disk need engine tandem".into(),
        ));
    }
    if args.exclusive && args.topology != Topology::NPlusOne {
        return Err(LabError::Invalid("--exclusive needs --topology n+1".into()));
    }
    if args.witness && (args.engine != Engine::Tandem || args.nodes < 2) {
        return Err(LabError::Invalid(
            "--witness needs engine tandem and two or more nodes".into(),
        ));
    }
    Ok(())
}

/// Refuse to build over a lab that is (partly) up: its `lab.json` or namespaces.
fn check_not_up(args: &UpArgs, plan: &Plan) -> Result<(), LabError> {
    if args.dir.join("lab.json").exists() {
        return Err(LabError::AlreadyUp(format!(
            "a lab is described in {}",
            args.dir.join("lab.json").display()
        )));
    }
    let mut ours = plan.all_netns();
    ours.push(plan.witness().netns);
    let existing: Vec<String> = net::list_netns()?
        .into_iter()
        .filter(|n| ours.contains(n))
        .collect();
    if !existing.is_empty() {
        return Err(LabError::AlreadyUp(format!(
            "namespaces {} exist",
            existing.join(", ")
        )));
    }
    Ok(())
}

/// What every node of one `lab up` shares: the programs it runs and the cluster key.
struct Engines {
    /// This executable (the responder).
    me: String,
    /// The Tandem daemon's binary.
    tandem_bin: String,
    /// Nodes that run another build of the daemon (`--node-binary`).
    node_bins: BTreeMap<String, String>,
    /// keepalived, with engine keepalived.
    ka_bin: Option<String>,
    /// The cluster key, in hex.
    key: String,
}

impl Engines {
    /// Finds the binaries and draws the cluster key.
    fn locate(args: &UpArgs) -> Result<Engines, LabError> {
        let tandem_bin = match &args.tandem_bin {
            Some(p) => std::fs::canonicalize(p)
                .map_err(|e| LabError::io(format!("tandem binary {}", p.display()), e))?
                .to_string_lossy()
                .into_owned(),
            None => self_exe()?,
        };
        let ka_bin = if args.engine == Engine::Keepalived {
            Some(
                keepalived_bin()
                    .ok_or_else(|| LabError::Invalid("keepalived is not installed".into()))?
                    .to_string_lossy()
                    .into_owned(),
            )
        } else {
            None
        };
        let node_bins = args
            .node_binary
            .iter()
            .map(|(node, p)| {
                let path = std::fs::canonicalize(p)
                    .map_err(|e| LabError::io(format!("tandem binary {}", p.display()), e))?;
                Ok((node.clone(), path.to_string_lossy().into_owned()))
            })
            .collect::<Result<_, LabError>>()?;
        Ok(Engines {
            me: self_exe()?,
            tandem_bin,
            node_bins,
            ka_bin,
            key: topology::hex_key(&net::random_bytes()?),
        })
    }

    /// Node `n`'s directory, configuration and processes (not started yet).
    fn node_state(
        &self,
        args: &UpArgs,
        plan: &Plan,
        n: &topology::NodePlan,
    ) -> Result<NodeState, LabError> {
        let dir = args.dir.join(&n.name);
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| LabError::io(format!("creating {}", state_dir.display()), e))?;
        let fifo = watchdog_wanted(args)
            .then(|| watchdog::create_fifo(&dir))
            .transpose()?;
        let (config, socket, procs) = match args.engine {
            Engine::Tandem => {
                let (conf, socket, proc) =
                    self.tandem(args, plan, n, &dir, &state_dir, fifo.as_deref())?;
                (Some(conf), Some(socket), vec![proc])
            }
            Engine::Keepalived => {
                let conf = dir.join("keepalived.conf");
                write_file(&conf, &keepalived::render_conf(plan, n, args.interval)?)?;
                let ka = ProcSpec {
                    argv: keepalived::argv(
                        self.ka_bin.as_deref().unwrap_or("keepalived"),
                        &conf.to_string_lossy(),
                        &dir.to_string_lossy(),
                    ),
                    env: vec![],
                    log: dir.join("keepalived.log"),
                    pid: None,
                };
                let responder = self.responder(n, dir.join("responder.log"));
                (Some(conf), None, vec![ka, responder])
            }
            Engine::None => (
                None,
                None,
                vec![self.responder(n, dir.join("responder.log"))],
            ),
        };
        let timeout_s = args.watchdog_timeout.unwrap_or(watchdog::TIMEOUT_S);
        let watchdog = fifo.map(|f| self.standin(n, &dir, &f, timeout_s));
        let bmc = args.fence.then(|| self.bmc_standin(n, &dir));
        Ok(NodeState {
            name: n.name.clone(),
            netns: n.netns.clone(),
            pub_addr: n.pub_addr(),
            hb_addrs: HB_PATHS
                .iter()
                .filter_map(|p| n.hb_addr(p).map(|a| (p.to_string(), a)))
                .collect(),
            dir,
            config,
            state_dir: (args.engine == Engine::Tandem).then_some(state_dir),
            socket,
            procs,
            watchdog,
            bmc,
        })
    }

    /// Node `n`'s BMC stand-in (not started yet).
    fn bmc_standin(&self, n: &topology::NodePlan, dir: &Path) -> ProcSpec {
        ProcSpec {
            argv: vec![
                self.me.clone(),
                "lab".into(),
                "bmc-standin".into(),
                "--node".into(),
                n.name.clone(),
                "--netns".into(),
                n.netns.clone(),
                "--listen".into(),
                format!("{}:{}", topology::BMC_ADDR, topology::bmc_port(n.index)),
                "--events".into(),
                dir.join(bmc::EVENTS).to_string_lossy().into_owned(),
            ],
            env: vec![("TANDEM_LOG".into(), log_filter())],
            log: dir.join("bmc.log"),
            pid: None,
        }
    }

    /// Node `n`'s watchdog stand-in, reading `fifo` (not started yet).
    fn standin(&self, n: &topology::NodePlan, dir: &Path, fifo: &Path, timeout_s: u64) -> ProcSpec {
        ProcSpec {
            argv: vec![
                self.me.clone(),
                "lab".into(),
                "watchdog-standin".into(),
                "--node".into(),
                n.name.clone(),
                "--netns".into(),
                n.netns.clone(),
                "--fifo".into(),
                fifo.to_string_lossy().into_owned(),
                "--timeout".into(),
                timeout_s.to_string(),
                "--events".into(),
                dir.join(watchdog::EVENTS).to_string_lossy().into_owned(),
            ],
            env: vec![("TANDEM_LOG".into(), log_filter())],
            log: dir.join("watchdog.log"),
            pid: None,
        }
    }

    /// Node `n`'s Tandem config (written), API socket and daemon.
    fn tandem(
        &self,
        args: &UpArgs,
        plan: &Plan,
        n: &topology::NodePlan,
        dir: &Path,
        state_dir: &Path,
        watchdog_fifo: Option<&Path>,
    ) -> Result<(PathBuf, PathBuf, ProcSpec), LabError> {
        let conf = dir.join("tandem.toml");
        let socket = dir.join("tandem.sock");
        let text = topology::render_tandem_config(
            plan,
            &topology::ConfigParams {
                key: &self.key,
                interval_ms: args.interval,
                dead_time_ms: args
                    .dead_time
                    .unwrap_or_else(|| topology::dead_time_ms(args.interval)),
                switchback: args.switchback.as_str(),
                tandem_bin: &self.tandem_bin,
                state_dir: &state_dir.to_string_lossy(),
                socket: &socket.to_string_lossy(),
                witness: args.witness,
                watchdog: watchdog_fifo.map(|f| f.to_string_lossy().into_owned()),
                watchdog_timeout_s: args.watchdog_timeout,
                lease_ms: lease_ms(args),
                fence: args.fence,
                suspend_on_no_quorum: args.suspend_on_no_quorum,
                split_brain: args.split_brain,
                console: Some(format!("{}:{}", n.pub_addr(), topology::CONSOLE_PORT)),
                shared_disk: (plan.topology == Topology::SharedDisk)
                    .then(|| shared_disk_path(&args.dir).to_string_lossy().into_owned()),
            },
        );
        write_file(&conf, &text)?;
        lab_login(state_dir)?;
        let bin = self.node_bins.get(&n.name).unwrap_or(&self.tandem_bin);
        let argv = vec![
            bin.clone(),
            "run".into(),
            "--config".into(),
            conf.to_string_lossy().into_owned(),
            "--node".into(),
            n.name.clone(),
        ];
        let proc = ProcSpec {
            argv,
            env: vec![("TANDEM_LOG".into(), log_filter())],
            log: dir.join("tandem.log"),
            pid: None,
        };
        Ok((conf, socket, proc))
    }

    /// The witness's directory, configuration (written) and daemon (not started yet).
    fn witness_state(&self, args: &UpArgs, plan: &Plan) -> Result<WitnessState, LabError> {
        let w = plan.witness();
        let dir = args.dir.join(topology::WITNESS);
        let state_dir = dir.join("state");
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| LabError::io(format!("creating {}", state_dir.display()), e))?;
        let conf = dir.join("witness.toml");
        let text = topology::render_witness_config(
            plan,
            &topology::ConfigParams {
                key: &self.key,
                interval_ms: args.interval,
                dead_time_ms: args
                    .dead_time
                    .unwrap_or_else(|| topology::dead_time_ms(args.interval)),
                switchback: args.switchback.as_str(),
                tandem_bin: &self.tandem_bin,
                state_dir: &state_dir.to_string_lossy(),
                socket: "",
                witness: true,
                watchdog: None,
                watchdog_timeout_s: None,
                lease_ms: lease_ms(args),
                fence: false,
                suspend_on_no_quorum: false,
                split_brain: None,
                console: None,
                shared_disk: None,
            },
        );
        write_file(&conf, &text)?;
        let proc = ProcSpec {
            argv: vec![
                self.tandem_bin.clone(),
                "witness".into(),
                "--config".into(),
                conf.to_string_lossy().into_owned(),
            ],
            env: vec![("TANDEM_LOG".into(), log_filter())],
            log: dir.join("witness.log"),
            pid: None,
        };
        Ok(WitnessState {
            name: topology::WITNESS.into(),
            netns: w.netns.clone(),
            addr: w.addr(),
            dir,
            config: conf,
            proc,
        })
    }

    /// The built-in HTTP responder answering with `n`'s name.
    fn responder(&self, n: &topology::NodePlan, log: PathBuf) -> ProcSpec {
        ProcSpec {
            argv: vec![
                self.me.clone(),
                "lab".into(),
                "responder".into(),
                "--name".into(),
                n.name.clone(),
                "--listen".into(),
                format!("0.0.0.0:{}", topology::SERVICE_PORT),
            ],
            env: vec![("TANDEM_NODE".into(), n.name.clone())],
            log,
            pid: None,
        }
    }
}

/// The daemons' log filter; silences a noisy netlink parser warning unless the caller
/// chose a filter.
fn log_filter() -> String {
    std::env::var("TANDEM_LOG").unwrap_or_else(|_| "info,netlink_packet_route=error".into())
}

/// Wait up to `wait_s` seconds for floating IP `vip` to answer; the timeout's message
/// says whether the engines died and shows the tail of each node's log.
fn wait_for_vip(state: &LabState, vip: &str, wait_s: u64) -> Result<(), LabError> {
    if wait_vip_or_death(state, vip, Duration::from_secs(wait_s))?.is_some() {
        return Ok(());
    }
    let mut msg = format!("VIP {vip} did not answer within {wait_s} s");
    if !engines_alive(state) {
        msg = format!(
            "every node's {} exited before the VIP answered",
            state.engine
        );
    }
    for n in &state.nodes {
        if let Some(p) = n.procs.first() {
            msg.push_str(&format!(
                "\n--- {} ({}), last lines:\n{}",
                n.name,
                p.log.display(),
                net::tail(&p.log, 15)
            ));
        }
    }
    Err(LabError::Timeout(msg))
}

/// Whether any node's engine process (the first one started) still runs.
fn engines_alive(state: &LabState) -> bool {
    state.nodes.iter().any(|n| {
        n.procs
            .first()
            .and_then(|p| p.pid)
            .is_some_and(net::pid_alive)
    })
}

/// Wait until the VIP answers from the client; give up early when every
/// engine process has exited (bad binary, bad config).
fn wait_vip_or_death(
    state: &LabState,
    vip: &str,
    limit: Duration,
) -> Result<Option<String>, LabError> {
    let end = std::time::Instant::now() + limit;
    let names = state.node_names();
    loop {
        if let Some(o) = probe::wait_vip(&state.client_ns, vip, &names, Duration::from_millis(500))?
        {
            return Ok(Some(o));
        }
        if std::time::Instant::now() >= end || !engines_alive(state) {
            return Ok(None);
        }
    }
}

fn write_file(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

/// Create namespaces, bridges and veths per the plan.
fn build_topology(plan: &Plan) -> Result<(), LabError> {
    build_switch(plan)?;
    for n in &plan.nodes {
        net::check_interrupt()?;
        wire_node(&plan.switch_ns, n)?;
    }
    wire_client(plan)
}

/// Every namespace (lo up, no IPv6) and the switch's bridges.
fn build_switch(plan: &Plan) -> Result<(), LabError> {
    for ns in plan.all_netns() {
        net::ip(&["netns", "add", &ns])?;
        // No IPv6 chatter (DAD, RS, MLD) on lab links.
        net::sysctl(&ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
        net::sysctl(&ns, "net.ipv6.conf.default.disable_ipv6", "1")?;
        net::ipn(&ns, &["link", "set", "lo", "up"])?;
    }
    let sw = plan.switch_ns.as_str();
    let mut bridges = vec![topology::BR_PUB];
    bridges.extend(topology::BR_HB);
    let mut batch = Vec::new();
    for br in &bridges {
        batch.push(format!(
            "link add {br} type bridge stp_state 0 mcast_snooping 0"
        ));
        batch.push(format!("link set {br} up"));
    }
    net::ip_batch(sw, &batch)
}

/// Node `n`'s veths to the switch `sw`, its addresses and ARP settings, and the DR
/// site's WAN cap.
fn wire_node(sw: &str, n: &topology::NodePlan) -> Result<(), LabError> {
    let mut node_batch = Vec::new();
    let mut sw_batch = Vec::new();
    for i in &n.ifaces {
        net::ipn(
            sw,
            &[
                "link",
                "add",
                &i.switch_end,
                "type",
                "veth",
                "peer",
                "name",
                &i.name,
                "netns",
                &n.netns,
            ],
        )?;
        sw_batch.push(format!("link set {} master {} up", i.switch_end, i.bridge));
        if let Some(c) = &i.cidr {
            node_batch.push(format!("addr add {c} dev {}", i.name));
        }
        node_batch.push(format!("link set {} up", i.name));
    }
    net::ip_batch(sw, &sw_batch)?;
    // Only the interface holding an address answers ARP for it (pub0 and
    // pub1 share a LAN).
    net::sysctl(&n.netns, "net.ipv4.conf.all.arp_ignore", "1")?;
    net::sysctl(&n.netns, "net.ipv4.conf.all.arp_announce", "2")?;
    // When pub0 loses carrier its connected route must not be used any
    // more, or replies for a VIP moved to pub1 leave through dead pub0.
    net::sysctl(
        &n.netns,
        "net.ipv4.conf.all.ignore_routes_with_linkdown",
        "1",
    )?;
    net::ip_batch(&n.netns, &node_batch)?;
    if n.index >= 3 {
        // Node 3 and later are the DR site: their replication runs over hb2,
        // capped to a WAN-like rate (tbf; netem is not available here).
        cap_to_wan_rate(&n.netns, "hb2")?;
    }
    Ok(())
}

/// The client namespace's veth to the public bridge and its address.
fn wire_client(plan: &Plan) -> Result<(), LabError> {
    let sw = plan.switch_ns.as_str();
    let cl = plan.client_ns.as_str();
    net::ipn(
        sw,
        &[
            "link",
            "add",
            &plan.client_switch_end,
            "type",
            "veth",
            "peer",
            "name",
            topology::CLIENT_IF,
            "netns",
            cl,
        ],
    )?;
    net::ipn(
        sw,
        &[
            "link",
            "set",
            &plan.client_switch_end,
            "master",
            topology::BR_PUB,
            "up",
        ],
    )?;
    net::ip_batch(
        cl,
        &[
            format!(
                "addr add {} dev {}",
                topology::CLIENT_CIDR,
                topology::CLIENT_IF
            ),
            format!("link set {} up", topology::CLIENT_IF),
        ],
    )?;
    Ok(())
}

/// The witness's namespace (lo up, no IPv6) and its one link to the first heartbeat
/// bridge.
fn wire_witness(plan: &Plan) -> Result<(), LabError> {
    let w = plan.witness();
    net::ip(&["netns", "add", &w.netns])?;
    net::sysctl(&w.netns, "net.ipv6.conf.all.disable_ipv6", "1")?;
    net::sysctl(&w.netns, "net.ipv6.conf.default.disable_ipv6", "1")?;
    net::ipn(&w.netns, &["link", "set", "lo", "up"])?;
    net::ipn(
        &plan.switch_ns,
        &[
            "link",
            "add",
            &w.iface.switch_end,
            "type",
            "veth",
            "peer",
            "name",
            &w.iface.name,
            "netns",
            &w.netns,
        ],
    )?;
    net::ipn(
        &plan.switch_ns,
        &[
            "link",
            "set",
            &w.iface.switch_end,
            "master",
            w.iface.bridge,
            "up",
        ],
    )?;
    net::ip_batch(
        &w.netns,
        &[
            format!("addr add {} dev {}", topology::WITNESS_CIDR, w.iface.name),
            format!("link set {} up", w.iface.name),
        ],
    )
}

/// Start the witness daemon, if the lab has one, and record its pid.
fn start_witness(state: &mut LabState) -> Result<(), LabError> {
    let Some(w) = state.witness.as_mut() else {
        return Ok(());
    };
    let pid = net::spawn_detached(&w.netns, &w.proc.argv, &w.proc.env, &w.proc.log)?;
    w.proc.pid = Some(pid);
    debug!(pid, "witness started");
    Ok(())
}

/// Start the nodes' watchdog and BMC stand-ins in the switch namespace (never
/// power-killed; `lab down` ends them) and record their pids.
fn start_standins(state: &mut LabState) -> Result<(), LabError> {
    for node in &mut state.nodes {
        for p in [node.watchdog.as_mut(), node.bmc.as_mut()]
            .into_iter()
            .flatten()
        {
            let pid = net::spawn_detached(&state.switch_ns, &p.argv, &p.env, &p.log)?;
            p.pid = Some(pid);
            debug!(node = %node.name, pid, what = %p.argv[2], "stand-in started");
        }
    }
    // A daemon checks its watchdog at start, and one it cannot open keeps it from
    // running any group until its next retry (5 s): start the nodes only once each
    // stand-in reads its FIFO.
    for node in &state.nodes {
        let fifo = node.dir.join(watchdog::FIFO);
        if node.watchdog.is_some() && !watchdog::wait_for_reader(&fifo, STANDIN_READY) {
            warn!(node = %node.name, "the watchdog stand-in does not read its FIFO yet");
        }
    }
    Ok(())
}

/// How long `lab up` waits for each watchdog stand-in to open its FIFO.
const STANDIN_READY: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether `lab up` gives each node a watchdog stand-in: with a quorum (which the
/// watchdog backs), unless `--no-watchdog`, and when the lease allows it (always with
/// `--watchdog-timeout`, which sets the lease to fit).
fn watchdog_wanted(args: &UpArgs) -> bool {
    let quorum = args.witness || args.nodes >= 3;
    // [quorum] lease (the default 1500 ms, as the witness has it) must be at least
    // `config::min_lease_with_watchdog`.
    let fits = args.watchdog_timeout.is_some()
        || topology::lease_for_watchdog_ms(watchdog::TIMEOUT_S, args.interval) <= 1500;
    if quorum && !args.no_watchdog && !fits {
        warn!(
            interval_ms = args.interval,
            "no watchdog stand-in: the lease is too short for it at this interval"
        );
    }
    args.engine == Engine::Tandem && quorum && !args.no_watchdog && fits
}

/// The `[quorum] lease` every voter gets: with `--watchdog-timeout`, the shortest the
/// configuration check accepts; otherwise the daemon's default.
fn lease_ms(args: &UpArgs) -> Option<u64> {
    args.watchdog_timeout
        .filter(|_| watchdog_wanted(args))
        .map(|w| topology::lease_for_watchdog_ms(w, args.interval))
}

/// Start every process of node `i` (engine first) and record the pids.
fn start_node(state: &mut LabState, i: usize) -> Result<(), LabError> {
    let node = &mut state.nodes[i];
    for p in &mut node.procs {
        let pid = net::spawn_detached(&node.netns, &p.argv, &p.env, &p.log)?;
        p.pid = Some(pid);
        debug!(node = %node.name, pid, cmd = %p.argv.join(" "), "started");
    }
    Ok(())
}

/// Power loss: every link of the namespace down first (no goodbye packet can
/// escape), then SIGKILL every process in it. Returns the unix ms at which
/// the links started going down.
pub(crate) fn power_kill(ns: &str) -> Result<f64, LabError> {
    let links = net::links(ns)?;
    let batch: Vec<String> = links
        .iter()
        .map(|l| format!("link set dev {l} down"))
        .collect();
    let t0 = net::unix_ms();
    net::ip_batch(ns, &batch)?;
    net::kill_all_in(ns)?;
    Ok(t0)
}

/// A machine reset or powered off in the lab (watchdog stand-in, BMC stand-in): a
/// power kill of the node's namespace, its addresses flushed (a machine that is off
/// holds none), logged, and `event` (a JSON object) written as a line to `events` with
/// `time_ms`, `node` and `links_down_ms` added. The node stays off until `lab fail NODE
/// restart`.
pub(crate) fn reset_node(
    node: &str,
    netns: &str,
    events: &Path,
    mut event: serde_json::Value,
) -> Result<(), LabError> {
    let links_down = power_kill(netns)?;
    let flush: Vec<String> = net::links(netns)
        .unwrap_or_default()
        .into_iter()
        .filter(|l| l != "lo")
        .map(|l| format!("addr flush dev {l}"))
        .collect();
    if let Err(e) = net::ip_batch(netns, &flush) {
        warn!(node, error = %e, "flushing the addresses failed");
    }
    event["time_ms"] = (net::unix_ms() as u64).into();
    event["node"] = node.into();
    event["links_down_ms"] = (links_down as u64).into();
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(events)
        .and_then(|mut f| std::io::Write::write_all(&mut f, format!("{event}\n").as_bytes()));
    if let Err(e) = written {
        warn!(node, error = %e, "cannot record the power-off");
    }
    info!(node, "the node is off until `lab fail {node} restart`");
    Ok(())
}

/// Power back on: stop whatever still runs, links up, boot-time addresses
/// only (a VIP held before the crash is gone), start the processes again.
pub(crate) fn restart_node(state: &mut LabState, i: usize) -> Result<(), LabError> {
    let ns = state.nodes[i].netns.clone();
    let pids = net::netns_pids(&ns)?;
    if !pids.is_empty() {
        for p in &pids {
            net::kill(*p, Signal::SIGCONT)?;
            net::kill(*p, Signal::SIGTERM)?;
        }
        for _ in 0..30 {
            if net::netns_pids(&ns)?.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        net::kill_all_in(&ns)?;
    }
    let plan = state.plan()?;
    let node = &plan.nodes[i];
    let mut batch = Vec::new();
    for l in net::links(&ns)? {
        batch.push(format!("link set dev {l} up"));
    }
    for iface in &node.ifaces {
        batch.push(format!("addr flush dev {}", iface.name));
        if let Some(c) = &iface.cidr {
            batch.push(format!("addr add {c} dev {}", iface.name));
        }
    }
    net::ip_batch(&ns, &batch)?;
    // Pid files do not survive a reboot (/run is tmpfs); keepalived refuses
    // to start while its old pid file names a not-yet-reaped process.
    if let Ok(rd) = std::fs::read_dir(&state.nodes[i].dir) {
        for e in rd.flatten() {
            if e.path().extension().is_some_and(|x| x == "pid") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    if state.nodes[i].watchdog.is_some() {
        watchdog::power_cycled(&state.nodes[i].dir.join(watchdog::FIFO));
    }
    start_node(state, i)?;
    state.save_node(i)
}

/// Pids of the engine daemon of node `i` (keepalived: every keepalived
/// process of the node, parent and VRRP child).
fn daemon_pids(state: &LabState, i: usize) -> Result<Vec<i32>, LabError> {
    let n = &state.nodes[i];
    match state.engine {
        Engine::Keepalived => Ok(net::netns_pids(&n.netns)?
            .into_iter()
            .filter(|p| net::comm(*p) == "keepalived")
            .collect()),
        _ => Ok(n
            .procs
            .first()
            .and_then(|p| p.pid)
            .filter(|p| net::pid_alive(*p))
            .map(|p| vec![p as i32])
            .unwrap_or_default()),
    }
}

fn fail(state: &mut LabState, i: usize, action: FailAction) -> Result<(), LabError> {
    let name = state.nodes[i].name.clone();
    let ns = state.nodes[i].netns.clone();
    match action {
        FailAction::Kill => {
            power_kill(&ns)?;
            if state.nodes[i].watchdog.is_some() {
                watchdog::power_cycled(&state.nodes[i].dir.join(watchdog::FIFO));
            }
            println!("{name}: power lost (links down, all processes killed)");
        }
        FailAction::Stop | FailAction::Cont => {
            let pids = daemon_pids(state, i)?;
            if pids.is_empty() {
                return Err(LabError::Invalid(format!("{name}: daemon is not running")));
            }
            let sig = if action == FailAction::Stop {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            for p in &pids {
                net::kill(*p, sig)?;
            }
            println!("{name}: sent {sig} to {pids:?}");
        }
        FailAction::Restart => {
            restart_node(state, i)?;
            let pids: Vec<String> = state.nodes[i]
                .procs
                .iter()
                .filter_map(|p| p.pid.map(|x| x.to_string()))
                .collect();
            println!("{name}: powered on, started pid {}", pids.join(", "));
        }
    }
    Ok(())
}

fn check_iface(state: &LabState, i: usize, iface: &str) -> Result<(), LabError> {
    let plan = state.plan()?;
    if plan.nodes[i].ifaces.iter().any(|x| x.name == iface) {
        Ok(())
    } else {
        let names: Vec<_> = plan.nodes[i]
            .ifaces
            .iter()
            .map(|x| x.name.clone())
            .collect();
        Err(LabError::Invalid(format!(
            "unknown interface {iface:?} (have: {})",
            names.join(", ")
        )))
    }
}

fn cut(state: &LabState, i: usize, path: &str) -> Result<(), LabError> {
    let paths: Vec<&str> = if path == "all" {
        HB_PATHS.to_vec()
    } else {
        check_iface(state, i, path)?;
        vec![path]
    };
    let n = &state.nodes[i];
    for p in &paths {
        net::nft_script(&n.netns, &topology::nft_cut_script(p))?;
    }
    println!(
        "{}: cut {} (all IP traffic dropped both ways)",
        n.name,
        paths.join(", ")
    );
    Ok(())
}

fn heal_ns(ns: &str) -> Result<usize, LabError> {
    let tables = topology::parse_lab_tables(&net::nft_list_tables(ns)?);
    let script: String = tables
        .iter()
        .map(|(fam, name)| format!("delete table {fam} {name}\n"))
        .collect();
    if !script.is_empty() {
        net::nft_script(ns, &script)?;
    }
    Ok(tables.len())
}

/// `lab isolate`: every IPv4 and ARP packet of the node (or witness) dropped.
fn isolate(state: &LabState, spec: &str) -> Result<(), LabError> {
    let (name, ns) = state.target_ns(spec)?;
    net::nft_script(&ns, &topology::nft_isolate_script())?;
    println!("{name}: isolated (all IPv4 and ARP dropped both ways, loopback spared; links up)");
    Ok(())
}

/// `lab partition SIDE`: the namespaces of `side` lose every packet to and from the
/// addresses of the others (the floating IP aside: it moves), in both directions.
fn partition(state: &LabState, side: &str) -> Result<(), LabError> {
    let mut all: Vec<(String, String)> = state
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.netns.clone()))
        .collect();
    all.extend(
        state
            .witness
            .iter()
            .map(|w| (w.name.clone(), w.netns.clone())),
    );
    let mut ours = Vec::new();
    for spec in side.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        ours.push(state.target_ns(spec)?);
    }
    let theirs: Vec<&(String, String)> = all.iter().filter(|x| !ours.contains(x)).collect();
    if ours.is_empty() || theirs.is_empty() {
        return Err(LabError::Invalid(format!(
            "a partition needs nodes on both sides (got {side:?})"
        )));
    }
    let vips = state.plan()?.vips();
    let mut addrs = Vec::new();
    for (_, ns) in &theirs {
        addrs.extend(ipv4_addresses(ns, &vips)?);
    }
    for (name, ns) in &ours {
        net::nft_script(ns, &topology::nft_partition_script(&addrs))?;
        println!(
            "{name}: cut off from {} address(es) of the other side",
            addrs.len()
        );
    }
    let names = |v: &[&(String, String)]| v.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    println!(
        "partition: {} | {}",
        names(&ours.iter().collect::<Vec<_>>()).join(","),
        names(&theirs).join(",")
    );
    Ok(())
}

/// The IPv4 addresses of a namespace, but loopback's and the floating IPs `vips`.
fn ipv4_addresses(ns: &str, vips: &[String]) -> Result<Vec<String>, LabError> {
    let out = net::ipn(ns, &["-j", "-4", "addr", "show"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["ifname"] != "lo")
        .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a["local"].as_str().map(str::to_string))
        .filter(|a| !vips.contains(a))
        .collect())
}

/// `lab heal NODE`: the cut, isolation and loss rules of one namespace.
fn heal_one(state: &LabState, spec: &str) -> Result<(), LabError> {
    let (name, ns) = state.target_ns(spec)?;
    let removed = heal_ns(&ns)?;
    println!("{name}: healed, removed {removed} rule table(s)");
    Ok(())
}

fn heal(state: &LabState) -> Result<(), LabError> {
    let mut removed = 0;
    let mut all: Vec<String> = vec![state.switch_ns.clone(), state.client_ns.clone()];
    all.extend(state.nodes.iter().map(|n| n.netns.clone()));
    all.extend(state.witness.iter().map(|w| w.netns.clone()));
    for ns in all.iter().filter(|ns| net::netns_exists(ns)) {
        removed += heal_ns(ns)?;
    }
    println!("healed: removed {removed} cut/loss rule table(s)");
    Ok(())
}

fn link(state: &LabState, i: usize, iface: &str, s: UpDown) -> Result<(), LabError> {
    check_iface(state, i, iface)?;
    let plan = state.plan()?;
    let end = plan.nodes[i]
        .ifaces
        .iter()
        .find(|x| x.name == iface)
        .map(|x| x.switch_end.clone())
        .unwrap_or_default();
    let word = if s == UpDown::Up { "up" } else { "down" };
    net::ipn(&state.switch_ns, &["link", "set", "dev", &end, word])?;
    println!(
        "{}: carrier {word} on {iface} (switch port {end})",
        state.nodes[i].name
    );
    Ok(())
}

/// `lab move NODE lan|wan`: re-attaches the switch end of the node's `hb2` to the
/// plain bridge or to the WAN bridge (made on first use), and removes the cap inside
/// the node (the WAN bridge's link caps both directions itself).
fn move_node(state: &LabState, i: usize, to: Site) -> Result<(), LabError> {
    let plan = state.plan()?;
    let hb2 = topology::HB_PATHS[1];
    let end = plan.nodes[i]
        .ifaces
        .iter()
        .find(|x| x.name == hb2)
        .map(|x| x.switch_end.clone())
        .ok_or_else(|| LabError::Invalid(format!("{} has no {hb2}", state.nodes[i].name)))?;
    let sw = state.switch_ns.as_str();
    let bridge = match to {
        Site::Lan => topology::BR_HB[1],
        Site::Wan => {
            wan_bridge(sw)?;
            topology::BR_WAN
        }
    };
    net::ipn(sw, &["link", "set", "dev", &end, "master", bridge])?;
    // The cap `lab up` puts inside a DR node, if still there.
    let _ = net::cmd(
        "ip",
        &[
            "netns",
            "exec",
            &state.nodes[i].netns,
            "tc",
            "qdisc",
            "del",
            "dev",
            hb2,
            "root",
        ],
    );
    println!(
        "{}: {hb2} now on {bridge} ({})",
        state.nodes[i].name,
        match to {
            Site::Lan => "the local network, uncapped".to_string(),
            Site::Wan => format!("the WAN, {} each way", topology::WAN_RATE),
        }
    );
    Ok(())
}

/// The WAN bridge in the switch namespace, joined to the second heartbeat bridge by a
/// veth pair capped with tbf on both ends; made once.
fn wan_bridge(sw: &str) -> Result<(), LabError> {
    let (lan_end, wan_end) = topology::WAN_LINK;
    if net::ipn(sw, &["link", "show", "dev", topology::BR_WAN]).is_ok() {
        return Ok(());
    }
    net::ip_batch(
        sw,
        &[
            format!(
                "link add {} type bridge stp_state 0 mcast_snooping 0",
                topology::BR_WAN
            ),
            format!("link add {lan_end} type veth peer name {wan_end}"),
            format!("link set {lan_end} master {}", topology::BR_HB[1]),
            format!("link set {wan_end} master {}", topology::BR_WAN),
            format!("link set {} up", topology::BR_WAN),
            format!("link set {lan_end} up"),
            format!("link set {wan_end} up"),
        ],
    )?;
    for dev in [lan_end, wan_end] {
        cap_to_wan_rate(sw, dev)?;
    }
    Ok(())
}

/// Caps what `dev` in `ns` sends to [`topology::WAN_RATE`] (tbf; netem is not
/// available here).
fn cap_to_wan_rate(ns: &str, dev: &str) -> Result<(), LabError> {
    let tbf = [
        "tbf",
        "rate",
        topology::WAN_RATE,
        "burst",
        "256kb",
        "latency",
        "100ms",
    ];
    let mut args = vec![
        "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root",
    ];
    args.extend(tbf);
    net::cmd("ip", &args).map(|_| ())
}

fn loss(state: &LabState, path: &str, percent: u8) -> Result<(), LabError> {
    check_iface(state, 0, path)?;
    for n in &state.nodes {
        net::nft_script(&n.netns, &topology::nft_loss_script(path, percent))?;
    }
    if percent == 0 {
        println!("loss on {path} removed");
    } else {
        println!("{percent}% random loss on {path} (ingress, every node)");
    }
    Ok(())
}

/// Whether `ns` is a namespace of a lab with `prefix`.
fn is_lab_ns(prefix: &str, ns: &str) -> bool {
    match ns.strip_prefix(prefix) {
        Some("sw") | Some("cl") | Some(topology::WITNESS) => true,
        Some(rest) => rest
            .strip_prefix('n')
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit())),
        None => false,
    }
}

/// Remove the lab with `prefix`: kill processes in its namespaces, delete
/// the namespaces, remove the lab files in `dir`. Idempotent, needs no
/// lab.json.
pub fn down(prefix: &str, dir: &Path) -> Result<(), LabError> {
    let spaces: Vec<String> = net::list_netns()?
        .into_iter()
        .filter(|n| is_lab_ns(prefix, n))
        .collect();
    for ns in &spaces {
        if let Err(e) = net::kill_all_in(ns) {
            warn!(ns, error = %e, "killing processes");
        }
    }
    for ns in &spaces {
        if let Err(e) = net::ip(&["netns", "del", ns]) {
            warn!(ns, error = %e, "deleting namespace");
        }
    }
    remove_lab_files(dir)?;
    debug!(prefix, removed = spaces.len(), "lab down");
    Ok(())
}

/// Remove only what the lab writes into `dir` (never an arbitrary tree).
fn remove_lab_files(dir: &Path) -> Result<(), LabError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LabError::io(format!("reading {}", dir.display()), e)),
    };
    for entry in rd.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let node_dir = name
            .strip_prefix('n')
            .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()));
        let res = if (node_dir || name == topology::WITNESS) && path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else if name == "lab.json"
            || name == "lab.lock"
            || name.starts_with("lab.json.tmp")
            || name == topology::SHARED_DISK_FILE
        {
            std::fs::remove_file(&path)
        } else {
            continue;
        };
        res.map_err(|e| LabError::io(format!("removing {}", path.display()), e))?;
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        warn!(dir = %dir.display(), error = %e, "lab directory not removed (not empty?)");
    }
    Ok(())
}

/// The lab's console login on a node (an admin: [`topology::CONSOLE_USER`]).
fn lab_login(state_dir: &Path) -> Result<(), LabError> {
    use crate::console::users::{store_path, UserStore};
    let path = store_path(state_dir);
    let mut users = UserStore::load(&path).unwrap_or_default();
    let _ = users.remove_user(topology::CONSOLE_USER);
    users
        .add_user(
            topology::CONSOLE_USER,
            crate::console::principal::Role::Admin,
            topology::CONSOLE_PASSWORD,
        )
        .and_then(|()| users.save(&path))
        .map_err(|e| LabError::Invalid(format!("the lab's console login: {e}")))
}

/// The summary's lines for what only Tandem serves: SNMP, traps, the web consoles and
/// their login.
fn print_tandem_observers(state: &LabState) {
    println!(
        "  snmp:   ip netns exec {} snmpwalk -v2c -c {} {} TANDEM-MIB::tandem",
        state.client_ns,
        topology::SNMP_COMMUNITY,
        topology::pub_addr(1)
    );
    println!(
        "  traps:  every node sends v2c informs to {} (run snmptrapd in ns {})",
        topology::TRAP_RECEIVER,
        state.client_ns
    );
    let consoles: Vec<String> = (1..=state.nodes.len())
        .map(|i| {
            format!(
                "https://{}:{}/",
                topology::pub_addr(i),
                topology::CONSOLE_PORT
            )
        })
        .collect();
    println!(
        "  console (from ns {}): {}   login {} / {} (self-signed: compare the fingerprint in tandem status)",
        state.client_ns,
        consoles.join(" "),
        topology::CONSOLE_USER,
        topology::CONSOLE_PASSWORD
    );
}

fn print_summary(state: &LabState) {
    println!(
        "lab up: {} nodes, engine {}, heartbeat {} ms, prefix {}",
        state.nodes.len(),
        state.engine,
        state.interval_ms,
        state.prefix
    );
    for (group, vip, owner) in vip_owners(state) {
        println!(
            "  group {group}: VIP {vip}/24 served by: {}",
            owner.as_deref().unwrap_or("nobody (yet)")
        );
    }
    println!(
        "  try:    ip netns exec {} curl http://{}:{}/",
        state.client_ns,
        state.vip,
        topology::SERVICE_PORT
    );
    let metrics: Vec<String> = (1..=state.nodes.len())
        .map(|i| {
            format!(
                "http://{}:{}/metrics",
                topology::pub_addr(i),
                topology::METRICS_PORT
            )
        })
        .collect();
    println!(
        "  metrics (from ns {}): {}",
        state.client_ns,
        metrics.join(" ")
    );
    if state.engine == Engine::Tandem {
        print_tandem_observers(state);
    }
    let first = state.plan().ok().and_then(|p| p.groups.into_iter().next());
    if let Some((sock, g)) = state
        .nodes
        .first()
        .and_then(|n| n.socket.as_ref())
        .zip(first)
    {
        println!("  status: tandem status --socket {}", sock.display());
        if state.nodes.len() >= 2 {
            println!(
                "  mirror: tandem mirror status --socket {}   (volume `{}`, NBD on the owner at {} in its namespace)",
                sock.display(),
                g.mirror,
                g.nbd_tcp
            );
            println!(
                "  data:   ip netns exec {} curl -X POST http://{}:{}/counter   (a counter kept on the mirrored volume)",
                state.client_ns,
                state.vip,
                topology::SERVICE_PORT
            );
        }
    }
    if let Some(w) = &state.witness {
        println!(
            "  witness {} (ns {}, {}): log {}",
            w.name,
            w.netns,
            w.addr,
            w.proc.log.display()
        );
    }
    for n in &state.nodes {
        let logs: Vec<String> = n
            .procs
            .iter()
            .map(|p| p.log.display().to_string())
            .collect();
        println!("  {} (ns {}): log {}", n.name, n.netns, logs.join(", "));
    }
    let dir_flag = if state.dir == Path::new(DEFAULT_DIR) {
        String::new()
    } else {
        format!(" --dir {}", state.dir.display())
    };
    println!("  faults: tandem lab fail n1 kill | cut n1 all | isolate n1 | link n1 pub0 down | loss hb1 30 | heal [n1]{dir_flag}");
    println!("  teardown: tandem lab down{dir_flag}");
}

/// Each group with its floating IP and the node that answers on it from the client
/// namespace (none if the namespace is gone or nobody answers).
fn vip_owners(state: &LabState) -> Vec<(String, String, Option<String>)> {
    let names = state.node_names();
    let up = net::netns_exists(&state.client_ns);
    let groups = state.plan().map(|p| p.groups).unwrap_or_default();
    groups
        .into_iter()
        .map(|g| {
            let owner = up
                .then(|| probe::vip_owner(&state.client_ns, &g.vip, &names).ok())
                .flatten()
                .flatten();
            (g.name, g.vip, owner)
        })
        .collect()
}

fn status(dir: &Path) -> Result<(), LabError> {
    let state = LabState::load(dir)?;
    println!(
        "lab {} in {}: engine {}, {} nodes, interval {} ms, switchback {}",
        state.prefix,
        state.dir.display(),
        state.engine,
        state.nodes.len(),
        state.interval_ms,
        state.switchback.as_str()
    );
    for ns in [&state.switch_ns, &state.client_ns] {
        println!(
            "  ns {ns}: {}",
            if net::netns_exists(ns) {
                "present"
            } else {
                "MISSING"
            }
        );
    }
    for (group, vip, owner) in vip_owners(&state) {
        println!(
            "  group {group}: VIP {vip} from {}: {}",
            state.client_ns,
            owner
                .as_deref()
                .map(|o| format!("answered by {o}"))
                .unwrap_or_else(|| "no answer".into())
        );
    }
    for n in &state.nodes {
        print_node_status(n);
    }
    if let Some(w) = &state.witness {
        print_witness_status(w);
    }
    if let Ok(v) = net::ipn(&state.switch_ns, &["-br", "link", "show"]) {
        let down: Vec<&str> = v
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("DOWN"))
            .filter_map(|l| l.split('@').next())
            .collect();
        if !down.is_empty() {
            println!("  switch ports down: {}", down.join(", "));
        }
    }
    Ok(())
}

/// `lab status` of one node: its processes, and when its namespace exists, its
/// links and the faults injected into it.
fn print_node_status(n: &NodeState) {
    let present = net::netns_exists(&n.netns);
    println!(
        "  {} (ns {}{})",
        n.name,
        n.netns,
        if present { "" } else { ", MISSING" }
    );
    for p in &n.procs {
        print_proc_status(p);
    }
    if let Some(s) = &n.socket {
        println!("    socket {}", s.display());
    }
    if !present {
        return;
    }
    if let Ok(v) = net::addr_json(&n.netns) {
        println!("    links: {}", links_summary(&v));
    }
    if let Ok(t) = net::nft_list_tables(&n.netns) {
        let tables = topology::parse_lab_tables(&t);
        if !tables.is_empty() {
            let names: Vec<_> = tables.into_iter().map(|(_, n)| n).collect();
            println!("    faults: {}", names.join(", "));
        }
    }
}

/// `lab status` of the witness: its daemon and the faults injected into it.
fn print_witness_status(w: &WitnessState) {
    let present = net::netns_exists(&w.netns);
    println!(
        "  witness {} (ns {}{}, {})",
        w.name,
        w.netns,
        if present { "" } else { ", MISSING" },
        w.addr
    );
    print_proc_status(&w.proc);
    if !present {
        return;
    }
    if let Ok(t) = net::nft_list_tables(&w.netns) {
        let tables = topology::parse_lab_tables(&t);
        if !tables.is_empty() {
            let names: Vec<_> = tables
                .into_iter()
                .map(|(f, n)| format!("{f} {n}"))
                .collect();
            println!("    faults: {}", names.join(", "));
        }
    }
}

/// One process line of `lab status`: running, stopped (SIGSTOP) or dead.
fn print_proc_status(p: &ProcSpec) {
    let alive = p.pid.is_some_and(net::pid_alive);
    let stopped = p.pid.is_some_and(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, r)| r.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    });
    let what = Path::new(p.argv.first().map(String::as_str).unwrap_or("?"))
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    println!(
        "    {what:<12} pid {:<8} {}  log {}",
        p.pid.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
        if stopped {
            "STOPPED"
        } else if alive {
            "running"
        } else {
            "DEAD"
        },
        p.log.display()
    );
}

/// `ip -j addr` of a namespace as `name state addr/len ... | ...`, without `lo`.
fn links_summary(v: &serde_json::Value) -> String {
    let mut parts = Vec::new();
    for l in v.as_array().into_iter().flatten() {
        let name = l["ifname"].as_str().unwrap_or("?");
        if name == "lo" {
            continue;
        }
        let oper = l["operstate"].as_str().unwrap_or("?");
        let addrs: Vec<String> = l["addr_info"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                Some(format!(
                    "{}/{}",
                    a["local"].as_str()?,
                    a["prefixlen"].as_u64()?
                ))
            })
            .collect();
        parts.push(
            format!("{name} {oper} {}", addrs.join(" "))
                .trim_end()
                .to_string(),
        );
    }
    parts.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use topology::VIP;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: LabCommand,
    }

    #[test]
    fn lab_namespace_match() {
        assert!(is_lab_ns("tdm-", "tdm-sw"));
        assert!(is_lab_ns("tdm-", "tdm-cl"));
        assert!(is_lab_ns("tdm-", "tdm-n12"));
        assert!(is_lab_ns("tdm-", "tdm-w"));
        assert!(!is_lab_ns("tdm-", "tdm-n"));
        assert!(!is_lab_ns("tdm-", "tdm-other"));
        assert!(!is_lab_ns("tdm-", "tdb-n1"));
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from(["lab", "up", "--nodes", "3", "--switchback", "automatic"])
            .unwrap();
        match c.cmd {
            LabCommand::Up(a) => {
                assert_eq!(a.nodes, 3);
                assert_eq!(a.switchback, Switchback::Automatic);
                assert_eq!(a.dir, PathBuf::from(DEFAULT_DIR));
                assert_eq!(a.engine, Engine::Tandem);
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["lab", "fail", "n2", "kill"]).unwrap();
        assert!(matches!(
            c.cmd,
            LabCommand::Fail {
                action: FailAction::Kill,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["lab", "loss", "hb1", "101"]).is_err());
        let c = Cli::try_parse_from(["lab", "up", "--node-binary", "n2=/opt/next/tandem"]).unwrap();
        match c.cmd {
            LabCommand::Up(a) => assert_eq!(
                a.node_binary,
                vec![("n2".to_string(), PathBuf::from("/opt/next/tandem"))]
            ),
            other => panic!("{other:?}"),
        }
        for bad in ["n2", "=/x", "n2="] {
            assert!(
                Cli::try_parse_from(["lab", "up", "--node-binary", bad]).is_err(),
                "{bad}"
            );
        }
        let c = Cli::try_parse_from(["lab", "up", "--witness"]).unwrap();
        assert!(matches!(
            c.cmd,
            LabCommand::Up(UpArgs { witness: true, .. })
        ));
        let c = Cli::try_parse_from(["lab", "up", "--witness", "--watchdog-timeout", "3"]).unwrap();
        match c.cmd {
            LabCommand::Up(a) => {
                assert_eq!(a.watchdog_timeout, Some(3));
                assert!(watchdog_wanted(&a));
                assert_eq!(lease_ms(&a), Some(3500));
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["lab", "up", "--watchdog-timeout", "0"]).is_err());
        let c = Cli::try_parse_from(["lab", "up", "--witness"]).unwrap();
        match c.cmd {
            LabCommand::Up(a) => assert_eq!(lease_ms(&a), None, "the default lease"),
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["lab", "isolate", "w"]).unwrap();
        assert!(matches!(c.cmd, LabCommand::Isolate { ref node, .. } if node == "w"));
        let c = Cli::try_parse_from(["lab", "heal", "n1"]).unwrap();
        assert!(matches!(c.cmd, LabCommand::Heal { node: Some(ref n), .. } if n == "n1"));
        let c = Cli::try_parse_from(["lab", "heal"]).unwrap();
        assert!(matches!(c.cmd, LabCommand::Heal { node: None, .. }));
    }

    #[cfg(feature = "bench")]
    #[test]
    fn parses_the_failover_benchmark() {
        let c = Cli::try_parse_from(["lab", "bench", "failover", "--trials", "3"]).unwrap();
        assert!(matches!(c.cmd, LabCommand::Bench { .. }));
    }

    /// A lab's state in `dir` with these nodes.
    fn state_in(dir: &Path, nodes: Vec<NodeState>, topology: Topology) -> LabState {
        LabState {
            prefix: "tdm-".into(),
            dir: dir.to_path_buf(),
            engine: Engine::Tandem,
            interval_ms: 200,
            switchback: Switchback::Manual,
            tandem_bin: "tandem".into(),
            vip: VIP.into(),
            switch_ns: "tdm-sw".into(),
            client_ns: "tdm-cl".into(),
            nodes,
            witness: None,
            topology,
        }
    }

    /// Two `lab fail N restart` at once (`fail_at_once`), each saving the state it
    /// loaded: neither fails and neither's node entry is lost.
    #[test]
    fn two_commands_saving_at_once_keep_both_nodes() {
        let dir = std::env::temp_dir().join(format!("tandem-lab-save-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let node = |name: &str| NodeState {
            name: name.into(),
            netns: format!("tdm-{name}"),
            pub_addr: String::new(),
            hb_addrs: BTreeMap::new(),
            dir: dir.join(name),
            config: None,
            state_dir: None,
            socket: None,
            procs: vec![ProcSpec {
                argv: vec!["tandem".into()],
                env: Vec::new(),
                log: dir.join(format!("{name}.log")),
                pid: None,
            }],
            watchdog: None,
            bmc: None,
        };
        let s = state_in(&dir, vec![node("n1"), node("n2")], Topology::ActiveStandby);
        s.save().unwrap();
        for round in 1..=50u32 {
            std::thread::scope(|t| {
                for i in 0..2 {
                    let mut mine = LabState::load(&dir).unwrap();
                    t.spawn(move || {
                        mine.nodes[i].procs[0].pid = Some(round * 10 + i as u32);
                        mine.save_node(i).unwrap();
                    });
                }
            });
            let back = LabState::load(&dir).unwrap();
            let pids: Vec<_> = back.nodes.iter().map(|n| n.procs[0].pid).collect();
            assert_eq!(
                pids,
                [Some(round * 10), Some(round * 10 + 1)],
                "round {round}"
            );
        }
        remove_lab_files(&dir).unwrap();
        assert!(!dir.exists(), "lab.lock and the state removed with the lab");
    }

    #[test]
    fn state_roundtrip() {
        let dir = std::env::temp_dir().join(format!("tandem-lab-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("n1/state")).unwrap();
        let s = state_in(&dir, vec![], Topology::NPlusOne);
        s.save().unwrap();
        std::fs::write(dir.join(topology::SHARED_DISK_FILE), "disk").unwrap();
        let back = LabState::load(&dir).unwrap();
        assert_eq!(back.prefix, "tdm-");
        assert_eq!(back.engine, Engine::Tandem);
        assert_eq!(back.topology, Topology::NPlusOne);
        std::fs::write(dir.join("keep.txt"), "x").unwrap();
        remove_lab_files(&dir).unwrap();
        assert!(!dir.join("lab.json").exists());
        assert!(!dir.join(topology::SHARED_DISK_FILE).exists());
        assert!(!dir.join("n1").exists());
        assert!(
            dir.join("keep.txt").exists(),
            "foreign files are left alone"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(LabState::load(&dir), Err(LabError::NoLab(_))));
    }
}
