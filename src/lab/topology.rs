//! Pure description of the lab: namespace and interface names, the address
//! plan, the per-node Tandem configuration and the nftables rule text used to
//! cut or degrade links. Nothing in here touches the system, so all of it is
//! unit tested.

use crate::mirror::generation::SplitBrainPolicy;
use std::fmt::Write as _;

/// The lab BMCs' address (`lab up --fence`), on the public LAN bridge in the switch
/// namespace; node i's BMC stand-in listens on port [`bmc_port`]`(i)`.
pub const BMC_CIDR: &str = "10.77.0.250/24";
pub const BMC_ADDR: &str = "10.77.0.250";

/// The port of node `index`'s BMC stand-in.
pub fn bmc_port(index: usize) -> u16 {
    8100 + index as u16
}

/// Public LAN bridge inside the switch namespace.
pub const BR_PUB: &str = "brpub";
/// Heartbeat bridges inside the switch namespace, one per heartbeat path.
pub const BR_HB: [&str; 2] = ["brhb1", "brhb2"];
/// Heartbeat interface names inside each node namespace.
pub const HB_PATHS: [&str; 2] = ["hb1", "hb2"];
/// Primary public interface of a node.
pub const PUB0: &str = "pub0";
/// Second public NIC (same LAN, no address) used for IP local recovery.
pub const PUB1: &str = "pub1";
/// Floating IP with prefix length.
pub const VIP_CIDR: &str = "10.77.0.100/24";
/// Floating IP without prefix length.
pub const VIP: &str = "10.77.0.100";
/// Client address on the public LAN.
pub const CLIENT_CIDR: &str = "10.77.0.2/24";
/// Interface name of the client inside its namespace.
pub const CLIENT_IF: &str = "eth0";
/// TCP port of the demo service.
pub const SERVICE_PORT: u16 = 8080;
/// Port of each node's Prometheus endpoint (`GET /metrics`), on every address.
pub const METRICS_PORT: u16 = 9776;
/// Each node's web console (HTTPS) on its public address.
pub const CONSOLE_PORT: u16 = 9443;
/// The lab's console login (an admin on every node).
pub const CONSOLE_USER: &str = "admin";
/// Its password.
pub const CONSOLE_PASSWORD: &str = "tandem-lab";
/// UDP address of each node's SNMP agent (v2c, community [`SNMP_COMMUNITY`]).
pub const SNMP_LISTEN: &str = "0.0.0.0:161";
/// The lab's read community, admitted from [`SNMP_SOURCE`].
pub const SNMP_COMMUNITY: &str = "public";
/// Network the lab's SNMP community is admitted from.
pub const SNMP_SOURCE: &str = "10.77.0.0/16";
/// Where every node sends v2c informs: an NMS (snmptrapd) in the client namespace.
pub const TRAP_RECEIVER: &str = "10.77.0.2:162";
/// The demo group's replicated volume.
pub const MIRROR: &str = "data";
/// Its size (a sparse file in each node's state directory).
pub const MIRROR_SIZE: &str = "256MiB";
/// TCP port of each node's replication listener.
pub const MIRROR_PORT: u16 = 7790;
/// Where the primary also serves the volume over NBD (inside its namespace).
pub const MIRROR_NBD_TCP: &str = "127.0.0.1:10809";
/// The port of [`MIRROR_NBD_TCP`]; group `g<k>`'s mirror serves on this + k.
pub const MIRROR_NBD_PORT: u16 = 10809;
/// The active/standby topology's one group.
pub const DEMO_GROUP: &str = "demo";
/// The rate `tandem lab` caps the DR site's link (hb2 of node 3 and later) to.
pub const WAN_RATE: &str = "200mbit";
/// The WAN bridge of `lab move NODE wan`, in the switch namespace.
pub const BR_WAN: &str = "brwan";
/// The capped veth pair between the second heartbeat bridge and the WAN bridge: (the
/// LAN end, the WAN end).
pub const WAN_LINK: (&str, &str) = ("wanlan", "wanwan");
/// UDP port of the Tandem heartbeat.
pub const HEARTBEAT_PORT: u16 = 5405;
/// Prefix of every nftables table the lab creates (used by `heal`).
pub const NFT_TABLE_PREFIX: &str = "tdmlab_";
/// Largest cluster the address plan supports.
pub const MAX_NODES: usize = 16;
/// The witness's voter name (`lab up --witness`).
pub const WITNESS: &str = "w";
/// The witness's address on the first heartbeat LAN (its only link).
pub const WITNESS_CIDR: &str = "10.78.1.200/24";

/// One interface of a node: the name inside the node namespace, the name of
/// the switch-side veth end, the bridge it is plugged into and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIface {
    /// Name inside the node namespace (`pub0`, `hb1`, ...).
    pub name: String,
    /// Name of the peer end inside the switch namespace (`n1pub0`, ...).
    pub switch_end: String,
    /// Bridge in the switch namespace.
    pub bridge: &'static str,
    /// Address with prefix length, if the interface has one.
    pub cidr: Option<String>,
}

/// Names and addresses of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    /// 1-based index.
    pub index: usize,
    /// Node name as used by Tandem (`n1`).
    pub name: String,
    /// Network namespace (`tdm-n1`).
    pub netns: String,
    /// Interfaces, in creation order.
    pub ifaces: Vec<NodeIface>,
}

impl NodePlan {
    /// Address (without prefix length) of the node on a heartbeat path.
    pub fn hb_addr(&self, path: &str) -> Option<String> {
        self.ifaces
            .iter()
            .find(|i| i.name == path)
            .and_then(|i| i.cidr.as_deref())
            .map(strip_prefix_len)
    }

    /// Public address (without prefix length).
    pub fn pub_addr(&self) -> String {
        pub_addr(self.index)
    }
}

/// The whole lab plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Namespace name prefix (`tdm-`).
    pub prefix: String,
    /// Switch namespace.
    pub switch_ns: String,
    /// Client namespace.
    pub client_ns: String,
    /// Switch-side end of the client veth.
    pub client_switch_end: String,
    /// Nodes, index 1..=N.
    pub nodes: Vec<NodePlan>,
    /// The cluster's shape.
    pub topology: Topology,
    /// The protected groups, each with its floating IP and mirror.
    pub groups: Vec<GroupPlan>,
}

/// The witness (`lab up --witness`): its own namespace with one link, `hb1`, on the
/// first heartbeat bridge, so every node reaches it on its first heartbeat path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessPlan {
    /// Network namespace (`tdm-w`).
    pub netns: String,
    /// Its one interface: `hb1` on `brhb1`.
    pub iface: NodeIface,
}

impl WitnessPlan {
    /// Its address (without prefix length).
    pub fn addr(&self) -> String {
        strip_prefix_len(WITNESS_CIDR)
    }
}

/// The shape of the lab's cluster (`lab up --topology`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum Topology {
    /// One group `demo` on every node: n1 active, n2 its sync standby, n3 and later
    /// async DR copies.
    #[default]
    #[value(name = "active-standby")]
    #[serde(rename = "active-standby")]
    ActiveStandby,
    /// N+1: n1..n(N-1) each run their own group `g<k>`, mirrored to the last node, the
    /// one standby of them all (`nodes = ["n<k>", "n<N>"]`).
    #[value(name = "n+1")]
    #[serde(rename = "n+1")]
    NPlusOne,
    /// Two nodes, two groups: `g1` prefers n1, `g2` prefers n2; each is the other's
    /// standby.
    #[value(name = "active-active")]
    #[serde(rename = "active-active")]
    ActiveActive,
    /// Shared storage: one group `demo` over one disk (a file in the lab's directory)
    /// that every node sees, under a disk lease; no mirror. The demo service keeps its
    /// counter and write log on that disk, and writes a record of its own every 50 ms.
    #[value(name = "shared-disk")]
    #[serde(rename = "shared-disk")]
    SharedDisk,
}

/// The shared disk's file in the lab's directory (`--topology shared-disk`).
pub const SHARED_DISK_FILE: &str = "shared-disk.img";
/// Its size: the lease sector, then the demo's counter and write log.
pub const SHARED_DISK_BYTES: u64 = 16 << 20;
/// Where the demo's data begins on it, past the lease's sector.
pub const SHARED_DISK_DATA_OFFSET: u64 = 1 << 20;
/// How often the demo service writes a record of its own to the shared disk.
pub const SHARED_DISK_SELF_WRITE_MS: u64 = 50;
/// The lab's disk lease timing (short, for tests): a dead holder's lease is taken
/// after 3 s; the holder stops at 1.5 s without a renewal.
pub const SHARED_DISK_LEASE: [(&str, &str); 4] = [
    ("io_timeout", "200ms"),
    ("renew_interval", "300ms"),
    ("lease_timeout", "3s"),
    ("stop_after", "1500ms"),
];

/// One protected group of the lab: its floating IP, its mirror and the nodes that hold
/// a copy of it, in the group's order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPlan {
    /// Group name (`demo`, `g1`).
    pub name: String,
    /// Its floating IP, without prefix length.
    pub vip: String,
    /// The group's `nodes` (order of preference); empty: every node, by priority.
    pub nodes: Vec<String>,
    /// Its mirror's name.
    pub mirror: String,
    /// The mirror's replication port on every node that holds a copy.
    pub mirror_port: u16,
    /// Where the primary also serves the mirror over NBD (loopback, in its namespace).
    pub nbd_tcp: String,
    /// Indexes (1-based) of the nodes that hold a copy of the mirror.
    pub copies: Vec<usize>,
    /// The group's `exclusive`: it shares no node with another exclusive group.
    pub exclusive: bool,
}

impl GroupPlan {
    /// The address the demo service listens on: every address with one group per
    /// node, else only the group's floating IP (two groups may share a node).
    pub fn listen(&self, topology: Topology) -> String {
        match topology {
            Topology::ActiveStandby | Topology::SharedDisk => format!("0.0.0.0:{SERVICE_PORT}"),
            _ => format!("{}:{SERVICE_PORT}", self.vip),
        }
    }

    /// The URL of the demo service's health check, from the node that runs it.
    pub fn health_url(&self, topology: Topology) -> String {
        let host = match topology {
            Topology::ActiveStandby | Topology::SharedDisk => "127.0.0.1",
            _ => self.vip.as_str(),
        };
        format!("http://{host}:{SERVICE_PORT}/health")
    }
}

/// The floating IP of group `g<k>` of the N+1 and active-active topologies:
/// `10.77.0.20<k>` (clear of the nodes' and the BMCs' addresses).
pub fn group_vip(k: usize) -> String {
    format!("10.77.0.{}", 200 + k)
}

/// The groups of a topology on `nodes` nodes.
pub fn plan_groups(topology: Topology, nodes: usize) -> Result<Vec<GroupPlan>, PlanError> {
    let pair = |k: usize, active: usize, standby: usize| GroupPlan {
        name: format!("g{k}"),
        vip: group_vip(k),
        nodes: vec![format!("n{active}"), format!("n{standby}")],
        mirror: format!("g{k}-{MIRROR}"),
        mirror_port: MIRROR_PORT + k as u16,
        nbd_tcp: format!("127.0.0.1:{}", MIRROR_NBD_PORT + k as u16),
        copies: vec![active.min(standby), active.max(standby)],
        exclusive: false,
    };
    // The one group `demo` over every node, by priority, with these copies.
    let demo = |copies: Vec<usize>| GroupPlan {
        name: DEMO_GROUP.into(),
        vip: VIP.into(),
        nodes: Vec::new(),
        mirror: MIRROR.into(),
        mirror_port: MIRROR_PORT,
        nbd_tcp: MIRROR_NBD_TCP.into(),
        copies,
        exclusive: false,
    };
    match topology {
        Topology::ActiveStandby => Ok(vec![demo((1..=nodes).collect())]),
        // No copies: the disk is shared, not mirrored.
        Topology::SharedDisk if nodes >= 2 => Ok(vec![demo(Vec::new())]),
        Topology::NPlusOne if nodes >= 2 => Ok((1..nodes).map(|k| pair(k, k, nodes)).collect()),
        Topology::ActiveActive if nodes == 2 => Ok(vec![pair(1, 1, 2), pair(2, 2, 1)]),
        _ => Err(PlanError::Topology(topology, nodes)),
    }
}

/// Errors of the pure planning layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Node count outside 1..=MAX_NODES.
    #[error("node count must be between 1 and {MAX_NODES}, got {0}")]
    NodeCount(usize),
    /// Prefix unusable as a namespace/interface prefix.
    #[error("prefix {0:?} must be 1-8 characters of [a-z0-9-]")]
    Prefix(String),
    /// A topology the node count cannot build (N+1: two or more; active-active: two).
    #[error("topology {0:?} cannot be built on {1} node(s) (n+1: 2 or more, active-active: 2)")]
    Topology(Topology, usize),
}

/// Public address of node `i` (1-based): `10.77.0.1<i>`.
pub fn pub_addr(i: usize) -> String {
    format!("10.77.0.1{i}")
}

/// Heartbeat address of node `i` on path `p` (1-based): `10.78.<p>.1<i>`.
pub fn hb_addr(path: usize, i: usize) -> String {
    format!("10.78.{path}.1{i}")
}

/// `10.0.0.1/24` -> `10.0.0.1`.
pub fn strip_prefix_len(cidr: &str) -> String {
    cidr.split('/').next().unwrap_or(cidr).to_string()
}

impl Plan {
    /// Build the active/standby plan for `nodes` nodes with namespace prefix `prefix`.
    pub fn new(prefix: &str, nodes: usize) -> Result<Plan, PlanError> {
        Plan::with_topology(prefix, nodes, Topology::ActiveStandby)
    }

    /// Build the plan of `topology` for `nodes` nodes with namespace prefix `prefix`.
    pub fn with_topology(
        prefix: &str,
        nodes: usize,
        topology: Topology,
    ) -> Result<Plan, PlanError> {
        if nodes == 0 || nodes > MAX_NODES {
            return Err(PlanError::NodeCount(nodes));
        }
        let ok = !prefix.is_empty()
            && prefix.len() <= 8
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(PlanError::Prefix(prefix.to_string()));
        }
        let groups = plan_groups(topology, nodes)?;
        let nodes = (1..=nodes)
            .map(|i| {
                let name = format!("n{i}");
                let mut ifaces = vec![
                    NodeIface {
                        name: PUB0.into(),
                        switch_end: format!("{name}{PUB0}"),
                        bridge: BR_PUB,
                        cidr: Some(format!("{}/24", pub_addr(i))),
                    },
                    NodeIface {
                        name: PUB1.into(),
                        switch_end: format!("{name}{PUB1}"),
                        bridge: BR_PUB,
                        cidr: None,
                    },
                ];
                for (p, (path, bridge)) in HB_PATHS.iter().zip(BR_HB).enumerate() {
                    ifaces.push(NodeIface {
                        name: (*path).into(),
                        switch_end: format!("{name}{path}"),
                        bridge,
                        cidr: Some(format!("{}/24", hb_addr(p + 1, i))),
                    });
                }
                NodePlan {
                    index: i,
                    netns: format!("{prefix}{name}"),
                    name,
                    ifaces,
                }
            })
            .collect();
        Ok(Plan {
            prefix: prefix.to_string(),
            switch_ns: format!("{prefix}sw"),
            client_ns: format!("{prefix}cl"),
            client_switch_end: format!("cl{CLIENT_IF}"),
            nodes,
            topology,
            groups,
        })
    }

    /// The witness's namespace and link (created only with `--witness`).
    pub fn witness(&self) -> WitnessPlan {
        WitnessPlan {
            netns: format!("{}{WITNESS}", self.prefix),
            iface: NodeIface {
                name: HB_PATHS[0].into(),
                switch_end: format!("{WITNESS}{}", HB_PATHS[0]),
                bridge: BR_HB[0],
                cidr: Some(WITNESS_CIDR.into()),
            },
        }
    }

    /// Every namespace of the lab, switch first.
    pub fn all_netns(&self) -> Vec<String> {
        let mut v = vec![self.switch_ns.clone(), self.client_ns.clone()];
        v.extend(self.nodes.iter().map(|n| n.netns.clone()));
        v
    }

    /// Makes every group `exclusive` (`lab up --exclusive`): no two share a node, so a
    /// standby takes one failed server's group, and the others cannot run.
    pub fn make_exclusive(&mut self) {
        for g in &mut self.groups {
            g.exclusive = true;
        }
    }

    /// Every group's floating IP.
    pub fn vips(&self) -> Vec<String> {
        self.groups.iter().map(|g| g.vip.clone()).collect()
    }

    /// Look a node up by `n2`, `2` or its namespace name.
    pub fn node(&self, spec: &str) -> Option<&NodePlan> {
        let spec = spec.trim();
        self.nodes.iter().find(|n| {
            n.name == spec || n.netns == spec || spec.parse::<usize>().ok() == Some(n.index)
        })
    }
}

/// Render a duration in milliseconds the way humantime parses it
/// (`1s`, `200ms`, `1500ms`).
pub fn fmt_ms(ms: u64) -> String {
    if ms > 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Dead time derived from the heartbeat interval: 5 intervals.
pub fn dead_time_ms(interval_ms: u64) -> u64 {
    (interval_ms * 5).max(interval_ms * 3)
}

/// The shortest `[quorum] lease` a watchdog of `timeout_s` seconds allows at this
/// heartbeat interval (`config::min_lease_with_watchdog`), rounded up to 100 ms.
pub fn lease_for_watchdog_ms(timeout_s: u64, interval_ms: u64) -> u64 {
    let min = crate::config::min_lease_with_watchdog(
        std::time::Duration::from_secs(timeout_s),
        std::time::Duration::from_millis(interval_ms),
    );
    (min.as_millis() as u64).div_ceil(100) * 100
}

/// TOML-quote a string.
fn q(s: &str) -> String {
    // serde-free minimal escaping; toml basic strings escape `\` and `"`.
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Inputs of the Tandem configuration that are not part of the plan.
#[derive(Debug, Clone)]
pub struct ConfigParams<'a> {
    /// Shared cluster key (32 hex chars).
    pub key: &'a str,
    /// Heartbeat interval in ms.
    pub interval_ms: u64,
    /// Dead time in ms.
    pub dead_time_ms: u64,
    /// `manual` or `automatic`.
    pub switchback: &'a str,
    /// Absolute path of the tandem binary (runs the demo service).
    pub tandem_bin: &'a str,
    /// State directory of this node.
    pub state_dir: &'a str,
    /// API socket of this node.
    pub socket: &'a str,
    /// Name the lab's witness as a voter (`lab up --witness`).
    pub witness: bool,
    /// `[quorum] watchdog`'s device: the FIFO of the node's watchdog stand-in.
    pub watchdog: Option<String>,
    /// `[quorum] watchdog`'s timeout in whole seconds (default
    /// [`super::watchdog::TIMEOUT_S`]).
    pub watchdog_timeout_s: Option<u64>,
    /// `[quorum] lease` in ms, the same on every voter (default: the daemon's).
    pub lease_ms: Option<u64>,
    /// Each node gets `[node.fence]` naming its BMC stand-in (`lab up --fence`).
    pub fence: bool,
    /// The mirror's `on_no_quorum = "suspend"` (`lab up --suspend-on-no-quorum`): a
    /// node that loses its lease holds the group and resumes it if the lease returns.
    pub suspend_on_no_quorum: bool,
    /// The mirror's `split_brain` policy (`lab up --split-brain`; `None`: the default).
    pub split_brain: Option<SplitBrainPolicy>,
    /// `[console] listen`: this node's web console (`None`: no console).
    pub console: Option<String>,
    /// The shared disk's path (`--topology shared-disk`).
    pub shared_disk: Option<String>,
}

/// Render the Tandem configuration file for one node.
pub fn render_tandem_config(plan: &Plan, p: &ConfigParams<'_>) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "[cluster]");
    let _ = writeln!(s, "name = \"lab\"");
    let _ = writeln!(s, "key = {}", q(p.key));
    let _ = writeln!(s, "state_dir = {}", q(p.state_dir));
    let _ = writeln!(s);
    let _ = writeln!(s, "[heartbeat]");
    let _ = writeln!(s, "interval = {}", q(&fmt_ms(p.interval_ms)));
    let _ = writeln!(s, "dead_time = {}", q(&fmt_ms(p.dead_time_ms)));
    let _ = writeln!(s, "port = {HEARTBEAT_PORT}");
    let paths: Vec<String> = HB_PATHS.iter().map(|x| q(x)).collect();
    let _ = writeln!(s, "paths = [{}]", paths.join(", "));
    render_quorum(&mut s, p);
    render_observers(&mut s, p);
    for n in &plan.nodes {
        render_node(&mut s, n, p);
    }
    if p.witness {
        render_witness_voter(&mut s, plan);
    }
    for g in &plan.groups {
        render_mirror(&mut s, plan, g, p);
    }
    for g in &plan.groups {
        render_demo_group(&mut s, plan.topology, g, p);
    }
    s
}

/// `[quorum]`, when the lease or the watchdog is set.
fn render_quorum(s: &mut String, p: &ConfigParams<'_>) {
    if p.watchdog.is_some() || p.lease_ms.is_some() {
        let _ = writeln!(s);
        let _ = writeln!(s, "[quorum]");
    }
    if let Some(lease) = p.lease_ms {
        let _ = writeln!(s, "lease = {}", q(&fmt_ms(lease)));
    }
    if let Some(fifo) = &p.watchdog {
        let _ = writeln!(
            s,
            "watchdog = {{ device = {}, timeout = \"{}s\" }}",
            q(fifo),
            p.watchdog_timeout_s.unwrap_or(super::watchdog::TIMEOUT_S)
        );
    }
}

/// `[api]`, `[console]`, `[metrics]` and `[snmp]` with its community and trap
/// receiver.
fn render_observers(s: &mut String, p: &ConfigParams<'_>) {
    let _ = writeln!(s);
    let _ = writeln!(s, "[api]");
    let _ = writeln!(s, "socket = {}", q(p.socket));
    if let Some(listen) = &p.console {
        let _ = writeln!(s);
        let _ = writeln!(s, "[console]");
        let _ = writeln!(s, "listen = {}", q(listen));
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "[metrics]");
    let _ = writeln!(s, "listen = \"0.0.0.0:{METRICS_PORT}\"");
    let _ = writeln!(s);
    let _ = writeln!(s, "[snmp]");
    let _ = writeln!(s, "listen = {}", q(SNMP_LISTEN));
    let _ = writeln!(s);
    let _ = writeln!(s, "[[snmp.community]]");
    let _ = writeln!(s, "name = {}", q(SNMP_COMMUNITY));
    let _ = writeln!(s, "source = {}", q(SNMP_SOURCE));
    let _ = writeln!(s);
    let _ = writeln!(s, "[[snmp.receiver]]");
    let _ = writeln!(s, "address = {}", q(TRAP_RECEIVER));
    let _ = writeln!(s, "form = \"v2c_inform\"");
    let _ = writeln!(s, "community = {}", q(SNMP_COMMUNITY));
}

/// One `[[node]]` with its heartbeat addresses, and its `[node.fence]` when the lab
/// fences.
fn render_node(s: &mut String, n: &NodePlan, p: &ConfigParams<'_>) {
    let _ = writeln!(s);
    let _ = writeln!(s, "[[node]]");
    let _ = writeln!(s, "name = {}", q(&n.name));
    let _ = writeln!(s, "priority = {}", n.index);
    let addrs: Vec<String> = HB_PATHS
        .iter()
        .filter_map(|p| n.hb_addr(p).map(|a| format!("{p} = {}", q(&a))))
        .collect();
    let _ = writeln!(s, "addresses = {{ {} }}", addrs.join(", "));
    if p.fence {
        render_node_fence(s, n);
    }
}

/// `[node.fence.redfish]`: the node's BMC stand-in.
fn render_node_fence(s: &mut String, n: &NodePlan) {
    let _ = writeln!(s, "[node.fence.redfish]");
    let url = format!("http://{BMC_ADDR}:{}", bmc_port(n.index));
    let _ = writeln!(s, "url = {}", q(&url));
    let _ = writeln!(s, "system = {}", q(&n.name));
    let _ = writeln!(s, "user = {}", q(super::bmc::USER));
    let _ = writeln!(s, "password = {}", q(super::bmc::PASSWORD));
}

/// `[witness]`: the lab's witness as a voter, at its address on the heartbeat LAN.
fn render_witness_voter(s: &mut String, plan: &Plan) {
    let w = plan.witness();
    let _ = writeln!(s);
    let _ = writeln!(s, "[witness]");
    let _ = writeln!(s, "name = {}", q(WITNESS));
    let _ = writeln!(s, "addresses = {{ {} = {} }}", w.iface.name, q(&w.addr()));
}

/// A demo group: the floating IP, the mirror and the demo service over it.
fn render_demo_group(s: &mut String, topology: Topology, g: &GroupPlan, p: &ConfigParams<'_>) {
    let _ = writeln!(s);
    let _ = writeln!(s, "[[group]]");
    let _ = writeln!(s, "name = {}", q(&g.name));
    if !g.nodes.is_empty() {
        let nodes: Vec<String> = g.nodes.iter().map(|n| q(n)).collect();
        let _ = writeln!(s, "nodes = [{}]", nodes.join(", "));
    }
    if g.exclusive {
        let _ = writeln!(s, "exclusive = true");
    }
    let _ = writeln!(s, "switchback = {}", q(p.switchback));
    let _ = writeln!(s);
    let _ = writeln!(s, "[[group.resource]]");
    let _ = writeln!(s, "name = \"vip\"");
    let _ = writeln!(s, "kind = \"ip\"");
    let _ = writeln!(s, "address = {}", q(&format!("{}/24", g.vip)));
    let _ = writeln!(s, "interface = {}", q(PUB0));
    let _ = writeln!(s, "backup_interfaces = [{}]", q(PUB1));
    let _ = writeln!(s);
    let _ = writeln!(s, "[[group.resource]]");
    let (storage, extra) = match (topology, &p.shared_disk) {
        (Topology::SharedDisk, Some(path)) => {
            render_shared_disk(s, path);
            (
                SHARED_DISK,
                format!(", \"--self-write-ms\", \"{SHARED_DISK_SELF_WRITE_MS}\""),
            )
        }
        _ => {
            let _ = writeln!(s, "name = {}", q(MIRROR));
            let _ = writeln!(s, "kind = \"mirror\"");
            let _ = writeln!(s, "mirror = {}", q(&g.mirror));
            (MIRROR, String::new())
        }
    };
    let _ = writeln!(s);
    let _ = writeln!(s, "[[group.resource]]");
    let _ = writeln!(s, "name = \"web\"");
    let _ = writeln!(s, "kind = \"process\"");
    let listen = g.listen(topology);
    // The daemon hands the mirror's socket (in this node's state directory), or the
    // shared disk, to the command as TANDEM_NBD_SOCKET or TANDEM_SHARED_DISK, so the
    // command is the same on every node.
    let _ = writeln!(
        s,
        "command = [{}, \"demo-service\", \"--listen\", {}{extra}]",
        q(p.tandem_bin),
        q(&listen),
    );
    let _ = writeln!(s, "depends_on = [\"vip\", {}]", q(storage));
    let _ = writeln!(
        s,
        "quickcheck = {{ probe = \"http\", url = {}, \
         expect_status = 200, interval = \"1s\", timeout = \"500ms\" }}",
        q(&g.health_url(topology))
    );
}

/// The name of the lab's `shared_disk` resource.
pub const SHARED_DISK: &str = "disk";

/// The `shared_disk` resource (its `[[group.resource]]` line already written).
fn render_shared_disk(s: &mut String, path: &str) {
    let _ = writeln!(s, "name = {}", q(SHARED_DISK));
    let _ = writeln!(s, "kind = \"shared_disk\"");
    let _ = writeln!(s, "path = {}", q(path));
    let _ = writeln!(s, "lease_offset = 0");
    let _ = writeln!(s, "data_offset = {SHARED_DISK_DATA_OFFSET}");
    for (key, value) in SHARED_DISK_LEASE {
        let _ = writeln!(s, "{key} = {}", q(value));
    }
}

/// Render `tandem witness`'s configuration: the lab cluster, every node at its
/// address on the witness's heartbeat LAN.
pub fn render_witness_config(plan: &Plan, p: &ConfigParams<'_>) -> String {
    let w = plan.witness();
    let mut s = String::new();
    let _ = writeln!(s, "[witness]");
    let _ = writeln!(s, "name = {}", q(WITNESS));
    let _ = writeln!(s, "state_dir = {}", q(p.state_dir));
    let _ = writeln!(s, "listen = \"0.0.0.0\"");
    let _ = writeln!(s);
    let _ = writeln!(s, "[[cluster]]");
    let _ = writeln!(s, "name = \"lab\"");
    let _ = writeln!(s, "key = {}", q(p.key));
    let _ = writeln!(s, "port = {HEARTBEAT_PORT}");
    let _ = writeln!(s, "interval = {}", q(&fmt_ms(p.interval_ms)));
    let _ = writeln!(s, "dead_time = {}", q(&fmt_ms(p.dead_time_ms)));
    if let Some(lease) = p.lease_ms {
        let _ = writeln!(s, "lease = {}", q(&fmt_ms(lease)));
    }
    let _ = writeln!(s, "[cluster.nodes]");
    for n in &plan.nodes {
        if let Some(a) = n.hb_addr(&w.iface.name) {
            let _ = writeln!(s, "{} = [{}]", n.name, q(&a));
        }
    }
    s
}

/// The replication address of node `i` in the active/standby topology: nodes 1 and 2
/// replicate synchronously over the first heartbeat LAN; node 3 and later are the "DR
/// site", reached over the second heartbeat LAN (the one `tandem lab` caps with tbf to
/// play a WAN link).
pub fn mirror_addr(i: usize) -> String {
    let path = if i <= 2 { 1 } else { 2 };
    format!("{}:{MIRROR_PORT}", hb_addr(path, i))
}

/// Node `i`'s replication address for group `g`'s mirror: the DR plan of
/// [`mirror_addr`] for active/standby, else the first heartbeat LAN at the group's port.
fn group_mirror_addr(topology: Topology, g: &GroupPlan, i: usize) -> String {
    match topology {
        Topology::ActiveStandby => mirror_addr(i),
        _ => format!("{}:{}", hb_addr(1, i), g.mirror_port),
    }
}

/// One `[[mirror]]`: a copy on each node of the group's; n1-n2 (and every pair of the
/// N+1 and active-active topologies) sync, every link to a DR node (n3+ of
/// active/standby) async and encrypted.
fn render_mirror(s: &mut String, plan: &Plan, g: &GroupPlan, p: &ConfigParams<'_>) {
    if g.copies.len() < 2 {
        return;
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "[[mirror]]");
    let _ = writeln!(s, "name = {}", q(&g.mirror));
    let _ = writeln!(
        s,
        "backing = {}",
        q(&format!("{}/{}.img", p.state_dir, g.mirror))
    );
    let _ = writeln!(s, "size = {}", q(MIRROR_SIZE));
    let _ = writeln!(s, "nbd_tcp = {}", q(&g.nbd_tcp));
    if p.suspend_on_no_quorum {
        let _ = writeln!(s, "on_no_quorum = \"suspend\"");
    }
    if let Some(policy) = p.split_brain {
        let _ = writeln!(s, "split_brain = {}", q(policy.name()));
    }
    let addrs: Vec<String> = g
        .copies
        .iter()
        .map(|i| {
            let addr = group_mirror_addr(plan.topology, g, *i);
            format!("{} = {}", plan.nodes[i - 1].name, q(&addr))
        })
        .collect();
    let _ = writeln!(s, "addresses = {{ {} }}", addrs.join(", "));
    for (x, a) in g.copies.iter().enumerate() {
        for b in &g.copies[x + 1..] {
            let _ = writeln!(s);
            let _ = writeln!(s, "[[mirror.link]]");
            let _ = writeln!(s, "between = [\"n{a}\", \"n{b}\"]");
            if plan.topology != Topology::ActiveStandby || *b <= 2 {
                let _ = writeln!(s, "mode = \"sync\"");
            } else {
                let _ = writeln!(s, "mode = \"async\"");
                let _ = writeln!(s, "lag_budget = \"30s\"");
                let _ = writeln!(s, "encrypt = true");
            }
        }
    }
}

/// Name of the nftables table that cuts interface `iface`.
pub fn cut_table(iface: &str) -> String {
    format!("{NFT_TABLE_PREFIX}cut_{iface}")
}

/// Name of the nftables tables (`inet` and `arp`) that isolate a namespace.
pub fn isolate_table() -> String {
    format!("{NFT_TABLE_PREFIX}isolate")
}

/// nft script that (re)creates the tables isolating a namespace: every IPv4 packet
/// and every ARP packet in and out is dropped, on every link but loopback (the node's
/// own health checks and NBD export keep working); the links stay up.
pub fn nft_isolate_script() -> String {
    let t = isolate_table();
    format!(
        "table inet {t}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tchain input {{ type filter hook input priority -300; policy accept; iifname \"lo\" accept; meta nfproto ipv4 drop; }}\n\
         \tchain output {{ type filter hook output priority -300; policy accept; oifname \"lo\" accept; meta nfproto ipv4 drop; }}\n\
         }}\n\
         table arp {t}\n\
         delete table arp {t}\n\
         table arp {t} {{\n\
         \tchain input {{ type filter hook input priority 0; policy drop; }}\n\
         \tchain output {{ type filter hook output priority 0; policy drop; }}\n\
         }}\n"
    )
}

/// Name of the nftables tables (`inet` and `arp`) that cut one side of a partition off
/// from the other.
pub fn partition_table() -> String {
    format!("{NFT_TABLE_PREFIX}partition")
}

/// nft script that (re)creates the tables cutting a namespace off from `others` (the
/// addresses of every namespace on the other side of a partition): IPv4 and ARP to
/// and from them dropped, everything else (the client LAN, its own side) kept.
pub fn nft_partition_script(others: &[String]) -> String {
    let t = partition_table();
    let set = others.join(", ");
    format!(
        "table inet {t}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tchain input {{ type filter hook input priority -300; policy accept; ip saddr {{ {set} }} drop; }}\n\
         \tchain output {{ type filter hook output priority -300; policy accept; ip daddr {{ {set} }} drop; }}\n\
         }}\n\
         table arp {t}\n\
         delete table arp {t}\n\
         table arp {t} {{\n\
         \tchain input {{ type filter hook input priority 0; policy accept; arp saddr ip {{ {set} }} drop; }}\n\
         \tchain output {{ type filter hook output priority 0; policy accept; arp daddr ip {{ {set} }} drop; }}\n\
         }}\n"
    )
}

/// Name of the nftables table that applies random loss on `iface`.
pub fn loss_table(iface: &str) -> String {
    format!("{NFT_TABLE_PREFIX}loss_{iface}")
}

/// nft script that (re)creates a table dropping all IP traffic in and out
/// of `iface`. Idempotent: the table is replaced if it exists.
pub fn nft_cut_script(iface: &str) -> String {
    let t = cut_table(iface);
    format!(
        "table inet {t}\n\
         delete table inet {t}\n\
         table inet {t} {{\n\
         \tchain input {{ type filter hook input priority -300; policy accept; iifname \"{iface}\" drop; }}\n\
         \tchain output {{ type filter hook output priority -300; policy accept; oifname \"{iface}\" drop; }}\n\
         }}\n"
    )
}

/// nft script that drops `percent`% of the packets received on `iface`.
/// Only ingress is filtered so each packet crossing the path (which is
/// received by exactly one lab node per receiver) is dropped with
/// probability `percent`/100, not twice. `percent == 0` only removes it.
pub fn nft_loss_script(iface: &str, percent: u8) -> String {
    let t = loss_table(iface);
    let mut s = format!("table inet {t}\ndelete table inet {t}\n");
    if percent > 0 {
        let _ = write!(
            s,
            "table inet {t} {{\n\
             \tchain input {{ type filter hook input priority -300; policy accept; \
             iifname \"{iface}\" numgen random mod 100 < {percent} drop; }}\n\
             }}\n"
        );
    }
    s
}

/// Parse `nft list tables` output and return the lab tables as
/// `(family, name)` pairs.
pub fn parse_lab_tables(nft_list: &str) -> Vec<(String, String)> {
    nft_list
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next(), it.next()) {
                (Some("table"), Some(fam), Some(name)) if name.starts_with(NFT_TABLE_PREFIX) => {
                    Some((fam.to_string(), name.to_string()))
                }
                _ => None,
            }
        })
        .collect()
}

/// Pick the node name out of a demo-service response body: the first word
/// equal to a known node name, else the trimmed body.
pub fn identify_node(body: &str, names: &[String]) -> String {
    body.split(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_')
        .find(|w| names.iter().any(|n| n == w))
        .map(str::to_string)
        .unwrap_or_else(|| body.trim().to_string())
}

/// Parse an HTTP/1.x response: (status, body).
pub fn parse_http_response(raw: &str) -> Option<(u16, String)> {
    let status_line = raw.lines().next()?;
    let mut it = status_line.split_whitespace();
    let proto = it.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    let status = it.next()?.parse().ok()?;
    let body = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Generate the cluster key: 32 hex chars from 16 random bytes.
pub fn hex_key(bytes: &[u8; 16]) -> String {
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_names_and_addresses() {
        let p = Plan::new("tdm-", 2).unwrap();
        assert_eq!(p.switch_ns, "tdm-sw");
        assert_eq!(p.client_ns, "tdm-cl");
        assert_eq!(p.all_netns(), vec!["tdm-sw", "tdm-cl", "tdm-n1", "tdm-n2"]);
        let n2 = &p.nodes[1];
        assert_eq!(n2.name, "n2");
        assert_eq!(n2.netns, "tdm-n2");
        assert_eq!(n2.pub_addr(), "10.77.0.12");
        assert_eq!(n2.hb_addr("hb1").as_deref(), Some("10.78.1.12"));
        assert_eq!(n2.hb_addr("hb2").as_deref(), Some("10.78.2.12"));
        let names: Vec<_> = n2.ifaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["pub0", "pub1", "hb1", "hb2"]);
        let ends: Vec<_> = n2.ifaces.iter().map(|i| i.switch_end.as_str()).collect();
        assert_eq!(ends, ["n2pub0", "n2pub1", "n2hb1", "n2hb2"]);
        assert_eq!(n2.ifaces[1].cidr, None);
        assert_eq!(n2.ifaces[1].bridge, BR_PUB);
        assert_eq!(n2.ifaces[3].bridge, "brhb2");
        assert!(p.nodes.iter().all(|n| n
            .ifaces
            .iter()
            .all(|i| i.switch_end.len() <= 15 && i.name.len() <= 15)));
    }

    #[test]
    fn plan_lookup_and_limits() {
        let p = Plan::new("tdb-", 3).unwrap();
        assert_eq!(p.node("n3").unwrap().index, 3);
        assert_eq!(p.node("2").unwrap().name, "n2");
        assert_eq!(p.node("tdb-n1").unwrap().name, "n1");
        assert!(p.node("n4").is_none());
        assert_eq!(Plan::new("x-", 0), Err(PlanError::NodeCount(0)));
        assert!(Plan::new("x-", MAX_NODES + 1).is_err());
        assert!(Plan::new("", 2).is_err());
        assert!(Plan::new("Bad/", 2).is_err());
        // Largest plan keeps interface names within IFNAMSIZ.
        let big = Plan::new("abcdefg-", MAX_NODES).unwrap();
        assert!(big
            .nodes
            .iter()
            .flat_map(|n| n.ifaces.iter())
            .all(|i| i.switch_end.len() <= 15));
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_ms(200), "200ms");
        assert_eq!(fmt_ms(1000), "1s");
        assert_eq!(fmt_ms(1500), "1500ms");
        assert_eq!(fmt_ms(0), "0ms");
        assert_eq!(dead_time_ms(200), 1000);
    }

    /// n1's parameters: no witness, watchdog, lease or fence.
    fn params() -> ConfigParams<'static> {
        ConfigParams {
            key: "00112233445566778899aabbccddeeff",
            interval_ms: 200,
            dead_time_ms: 1000,
            switchback: "manual",
            tandem_bin: "/opt/t \"x\"/tandem",
            state_dir: "/run/tandem-lab/n1/state",
            socket: "/run/tandem-lab/n1/tandem.sock",
            witness: false,
            watchdog: None,
            watchdog_timeout_s: None,
            lease_ms: None,
            fence: false,
            suspend_on_no_quorum: false,
            split_brain: None,
            console: None,
            shared_disk: None,
        }
    }

    /// Every node's file has the same cluster digest, so a lab warns of no mismatch:
    /// what differs (state directory, socket, watchdog FIFO) is node-local.
    #[test]
    fn every_node_renders_the_same_cluster_digest() {
        let p = Plan::new("tdm-", 3).unwrap();
        let n1 = ConfigParams {
            witness: true,
            watchdog: Some("/run/tandem-lab/n1/watchdog".into()),
            ..params()
        };
        let n2 = ConfigParams {
            state_dir: "/run/tandem-lab/n2/state",
            socket: "/run/tandem-lab/n2/tandem.sock",
            watchdog: Some("/run/tandem-lab/n2/watchdog".into()),
            ..n1.clone()
        };
        let digest = |c: &ConfigParams<'_>| {
            crate::config::cluster_digest(&render_tandem_config(&p, c)).unwrap()
        };
        assert_eq!(digest(&n1), digest(&n2));
    }

    #[test]
    fn every_nodes_configuration_has_the_same_digest() {
        let p = Plan::new("tdm-", 3).unwrap();
        let n1 = render_tandem_config(&p, &params());
        let n2 = render_tandem_config(
            &p,
            &ConfigParams {
                state_dir: "/run/tandem-lab/n2/state",
                socket: "/run/tandem-lab/n2/tandem.sock",
                ..params()
            },
        );
        assert_ne!(n1, n2);
        let digest = crate::config::cluster_digest;
        assert_eq!(digest(&n1), digest(&n2));
        assert!(digest(&n1).is_some());
    }

    #[test]
    fn config_matches_expected_shape() {
        let p = Plan::new("tdm-", 2).unwrap();
        let text = render_tandem_config(&p, &params());
        let v: toml::Value = toml::from_str(&text).expect("valid toml");
        assert_eq!(v["cluster"]["name"].as_str(), Some("lab"));
        assert_eq!(
            v["cluster"]["key"].as_str(),
            Some("00112233445566778899aabbccddeeff")
        );
        assert_eq!(
            v["cluster"]["state_dir"].as_str(),
            Some("/run/tandem-lab/n1/state")
        );
        assert_eq!(v["heartbeat"]["interval"].as_str(), Some("200ms"));
        assert_eq!(v["heartbeat"]["dead_time"].as_str(), Some("1s"));
        assert_eq!(v["heartbeat"]["port"].as_integer(), Some(5405));
        assert_eq!(v["heartbeat"]["paths"].as_array().unwrap().len(), 2);
        assert_eq!(
            v["api"]["socket"].as_str(),
            Some("/run/tandem-lab/n1/tandem.sock")
        );
        assert_eq!(v["snmp"]["listen"].as_str(), Some("0.0.0.0:161"));
        let community = &v["snmp"]["community"].as_array().unwrap()[0];
        assert_eq!(community["name"].as_str(), Some("public"));
        assert_eq!(community["source"].as_str(), Some("10.77.0.0/16"));
        let receiver = &v["snmp"]["receiver"].as_array().unwrap()[0];
        assert_eq!(receiver["address"].as_str(), Some("10.77.0.2:162"));
        assert_eq!(receiver["form"].as_str(), Some("v2c_inform"));
        assert_eq!(receiver["community"].as_str(), Some("public"));
        let cfg = crate::config::Config::parse(&text).expect("the daemon accepts it");
        assert_eq!(cfg.snmp.unwrap().receivers.len(), 1);
        let nodes = v["node"].as_array().unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1]["name"].as_str(), Some("n2"));
        assert_eq!(nodes[1]["priority"].as_integer(), Some(2));
        assert_eq!(nodes[1]["addresses"]["hb2"].as_str(), Some("10.78.2.12"));
        let g = &v["group"].as_array().unwrap()[0];
        assert_eq!(g["switchback"].as_str(), Some("manual"));
        let r = g["resource"].as_array().unwrap();
        assert_eq!(r[0]["address"].as_str(), Some("10.77.0.100/24"));
        assert_eq!(r[0]["interface"].as_str(), Some("pub0"));
        assert_eq!(r[0]["backup_interfaces"][0].as_str(), Some("pub1"));
        assert_eq!(r[1]["kind"].as_str(), Some("mirror"));
        assert_eq!(r[1]["mirror"].as_str(), Some("data"));
        let m = &v["mirror"].as_array().unwrap()[0];
        assert_eq!(
            m["backing"].as_str(),
            Some("/run/tandem-lab/n1/state/data.img")
        );
        assert_eq!(m["addresses"]["n2"].as_str(), Some("10.78.1.12:7790"));
        assert_eq!(m["link"][0]["mode"].as_str(), Some("sync"));
        let cmd: Vec<_> = r[2]["command"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(
            cmd,
            [
                "/opt/t \"x\"/tandem",
                "demo-service",
                "--listen",
                "0.0.0.0:8080"
            ]
        );
        assert_eq!(r[2]["depends_on"][0].as_str(), Some("vip"));
        assert_eq!(r[2]["depends_on"][1].as_str(), Some("data"));
        let qc = &r[2]["quickcheck"];
        assert_eq!(qc["probe"].as_str(), Some("http"));
        assert_eq!(qc["expect_status"].as_integer(), Some(200));
        assert_eq!(qc["timeout"].as_str(), Some("500ms"));
    }

    /// N+1 on five nodes: four actives, each with its own group, floating IP and mirror
    /// shared only with n5, the standby; active-active: two crossed pairs; a node count
    /// a topology cannot take is refused.
    #[test]
    fn topologies_plan_their_groups() {
        let g = plan_groups(Topology::NPlusOne, 5).unwrap();
        let names: Vec<_> = g.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["g1", "g2", "g3", "g4"]);
        assert_eq!(g[1].nodes, ["n2", "n5"]);
        assert_eq!(g[1].copies, [2, 5]);
        assert_eq!(g[1].vip, "10.77.0.202");
        assert_eq!(g[1].mirror, "g2-data");
        assert_eq!(g[1].mirror_port, MIRROR_PORT + 2);
        assert_eq!(g[1].nbd_tcp, "127.0.0.1:10811");
        let aa = plan_groups(Topology::ActiveActive, 2).unwrap();
        assert_eq!(aa[0].nodes, ["n1", "n2"]);
        assert_eq!(aa[1].nodes, ["n2", "n1"]);
        assert_eq!(aa[1].copies, [1, 2]);
        let one = plan_groups(Topology::ActiveStandby, 3).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].name.as_str(), one[0].vip.as_str()), ("demo", VIP));
        assert!(one[0].nodes.is_empty());
        assert_eq!(one[0].copies, [1, 2, 3]);
        assert_eq!(
            plan_groups(Topology::ActiveActive, 3),
            Err(PlanError::Topology(Topology::ActiveActive, 3))
        );
        assert!(plan_groups(Topology::NPlusOne, 1).is_err());
        // Every floating IP is clear of the nodes', the client's and the BMCs'.
        let p = Plan::with_topology("tdm-", MAX_NODES, Topology::NPlusOne).unwrap();
        let taken: Vec<String> = p.nodes.iter().map(|n| n.pub_addr()).collect();
        for v in p.vips() {
            assert!(!taken.contains(&v) && v != BMC_ADDR && v != strip_prefix_len(CLIENT_CIDR));
        }
    }

    /// The daemon accepts n5's file of an N+1 lab: four groups, each preferring its own
    /// node then n5, each mirror a sync pair on the first heartbeat LAN at its own port,
    /// each demo service on its own floating IP.
    #[test]
    fn n_plus_one_config_is_accepted_by_the_daemon() {
        let p = Plan::with_topology("tdm-", 5, Topology::NPlusOne).unwrap();
        let text = render_tandem_config(&p, &params());
        let cfg = crate::config::Config::parse(&text).expect("the daemon accepts it");
        assert!(cfg.quorum_enabled());
        assert_eq!(cfg.groups.len(), 4);
        assert!(cfg.groups.iter().all(|g| !g.exclusive));
        let mut exclusive = p.clone();
        exclusive.make_exclusive();
        let cfg = crate::config::Config::parse(&render_tandem_config(&exclusive, &params()))
            .expect("the daemon accepts it");
        assert!(cfg.groups.iter().all(|g| g.exclusive));
        assert_eq!(cfg.groups[2].nodes, ["n3", "n5"]);
        let m = &cfg.mirrors[2];
        assert_eq!(m.name, "g3-data");
        assert_eq!(m.addresses["n5"].to_string(), "10.78.1.15:7793");
        assert_eq!(m.addresses.len(), 2);
        assert_eq!(m.links.len(), 1);
        let v: toml::Value = toml::from_str(&text).unwrap();
        let r = v["group"][2]["resource"].as_array().unwrap();
        assert_eq!(r[0]["address"].as_str(), Some("10.77.0.203/24"));
        assert_eq!(r[1]["mirror"].as_str(), Some("g3-data"));
        assert_eq!(r[2]["command"][3].as_str(), Some("10.77.0.203:8080"));
        assert_eq!(
            r[2]["quickcheck"]["url"].as_str(),
            Some("http://10.77.0.203:8080/health")
        );
        assert_eq!(
            v["mirror"][0]["link"][0]["mode"].as_str(),
            Some("sync"),
            "an N+1 pair is on the LAN"
        );
    }

    #[test]
    fn active_active_config_is_accepted_by_the_daemon() {
        let p = Plan::with_topology("tdm-", 2, Topology::ActiveActive).unwrap();
        let cfg = crate::config::Config::parse(&render_tandem_config(&p, &params()))
            .expect("the daemon accepts it");
        assert_eq!(cfg.groups[0].nodes, ["n1", "n2"]);
        assert_eq!(cfg.groups[1].nodes, ["n2", "n1"]);
        assert_eq!(cfg.mirrors.len(), 2);
    }

    #[test]
    fn shared_disk_config_is_accepted_by_the_daemon() {
        let p = Plan::with_topology("tdm-", 2, Topology::SharedDisk).unwrap();
        let text = render_tandem_config(
            &p,
            &ConfigParams {
                shared_disk: Some("/run/tandem-lab/shared-disk.img".into()),
                ..params()
            },
        );
        let cfg = crate::config::Config::parse(&text).expect("the daemon accepts it");
        assert!(cfg.mirrors.is_empty(), "no mirror:\n{text}");
        let g = &cfg.groups[0];
        let names: Vec<&str> = g.resources.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["vip", SHARED_DISK, "web"]);
        assert!(text.contains("\"--self-write-ms\", \"50\""), "{text}");
        assert!(matches!(
            plan_groups(Topology::SharedDisk, 1),
            Err(PlanError::Topology(Topology::SharedDisk, 1))
        ));
    }

    #[test]
    fn witness_configs() {
        let p = Plan::new("tdm-", 2).unwrap();
        let w = p.witness();
        assert_eq!(w.netns, "tdm-w");
        assert_eq!(w.iface.switch_end, "whb1");
        assert_eq!(w.iface.bridge, "brhb1");
        assert_eq!(w.addr(), "10.78.1.200");
        let params = ConfigParams {
            key: "00112233445566778899aabbccddeeff",
            interval_ms: 200,
            dead_time_ms: 1000,
            switchback: "manual",
            tandem_bin: "/usr/bin/tandem",
            state_dir: "/run/tandem-lab/w/state",
            socket: "/run/tandem-lab/n1/tandem.sock",
            witness: true,
            watchdog: Some("/run/tandem-lab/n1/watchdog.fifo".into()),
            watchdog_timeout_s: Some(3),
            lease_ms: Some(lease_for_watchdog_ms(3, 200)),
            fence: true,
            suspend_on_no_quorum: false,
            split_brain: None,
            console: Some(format!("{}:{CONSOLE_PORT}", pub_addr(1))),
            shared_disk: None,
        };
        let node = crate::config::Config::parse(&render_tandem_config(&p, &params))
            .expect("the daemon accepts it");
        assert!(node.quorum_enabled(), "two nodes and a witness vote");
        let console = node.console.as_ref().expect("[console]");
        assert_eq!(console.listen.to_string(), "10.77.0.11:9443");
        let f = node.nodes[1].fence.as_ref().expect("[node.fence]");
        let r = f.redfish.as_ref().expect("[node.fence.redfish]");
        assert_eq!(r.url, "http://10.77.0.250:8102");
        assert_eq!(r.system.as_deref(), Some("n2"));
        let wd = node.quorum.watchdog.as_ref().expect("[quorum] watchdog");
        assert_eq!(wd.timeout.as_secs(), 3);
        assert_eq!(node.quorum.lease, std::time::Duration::from_millis(3500));
        let wref = node.witness.as_ref().expect("[witness]");
        assert_eq!(wref.name, WITNESS);
        assert_eq!(wref.addresses["hb1"].to_string(), "10.78.1.200");
        let text = render_witness_config(&p, &params);
        let wc = crate::witness::WitnessConfig::parse(&text).expect("the witness accepts it");
        let c = &wc.clusters[0];
        assert_eq!(c.name, node.cluster.name);
        assert_eq!(c.port, node.heartbeat.port);
        assert_eq!(c.interval, node.heartbeat.interval);
        assert_eq!(c.dead_time, node.heartbeat.dead_time);
        assert_eq!(c.lease, node.quorum.lease);
        assert_eq!(c.nodes["n2"][0].to_string(), "10.78.1.12");
        assert_eq!(
            crate::quorum::wire::voters_digest(&c.voters(WITNESS)),
            crate::quorum::wire::voters_digest(&node.voters())
        );
    }

    #[test]
    fn config_with_fence_witness_and_watchdog_has_their_lines() {
        let p = Plan::new("tdm-", 2).unwrap();
        let text = render_tandem_config(
            &p,
            &ConfigParams {
                witness: true,
                watchdog: Some("/run/tandem-lab/n1/watchdog.fifo".into()),
                watchdog_timeout_s: Some(3),
                lease_ms: Some(3400),
                fence: true,
                ..params()
            },
        );
        let quorum = "paths = [\"hb1\", \"hb2\"]\n\n[quorum]\nlease = \"3400ms\"\n\
             watchdog = { device = \"/run/tandem-lab/n1/watchdog.fifo\", timeout = \"3s\" }\n\
             \n[api]\n";
        assert!(text.contains(quorum), "[quorum] block:\n{text}");
        let node = "\n[[node]]\nname = \"n2\"\npriority = 2\n\
             addresses = { hb1 = \"10.78.1.12\", hb2 = \"10.78.2.12\" }\n\
             [node.fence.redfish]\nurl = \"http://10.77.0.250:8102\"\nsystem = \"n2\"\n\
             user = \"lab\"\npassword = \"lab-bmc\"\n\n[witness]\nname = \"w\"\n\
             addresses = { hb1 = \"10.78.1.200\" }\n\n[[mirror]]\n";
        assert!(
            text.contains(node),
            "last [[node]], its fence and [witness]:\n{text}"
        );
        assert_eq!(text.matches("[node.fence.redfish]").count(), 2);
        assert!(text.ends_with("expect_status = 200, interval = \"1s\", timeout = \"500ms\" }\n"));
    }

    #[test]
    fn the_lease_for_a_watchdog_is_the_shortest_the_config_check_accepts() {
        assert_eq!(lease_for_watchdog_ms(1, 200), 1500);
        assert_eq!(lease_for_watchdog_ms(1, 100), 1400);
        assert_eq!(lease_for_watchdog_ms(3, 200), 3500);
        assert_eq!(lease_for_watchdog_ms(1, 150), 1500);
    }

    #[test]
    fn nft_scripts() {
        let i = nft_isolate_script();
        assert!(i.contains("table inet tdmlab_isolate {"));
        assert!(i.contains("table arp tdmlab_isolate {"));
        assert!(i.contains("iifname \"lo\" accept; meta nfproto ipv4 drop;"));
        assert!(i.contains("oifname \"lo\" accept; meta nfproto ipv4 drop;"));
        assert_eq!(
            parse_lab_tables("table inet tdmlab_isolate\ntable arp tdmlab_isolate\n").len(),
            2
        );
        let p = nft_partition_script(&["10.78.1.12".into(), "10.78.2.12".into()]);
        assert!(p.contains("ip saddr { 10.78.1.12, 10.78.2.12 } drop;"));
        assert!(p.contains("ip daddr { 10.78.1.12, 10.78.2.12 } drop;"));
        assert!(p.contains("arp saddr ip { 10.78.1.12, 10.78.2.12 } drop;"));
        assert!(p.contains("arp daddr ip { 10.78.1.12, 10.78.2.12 } drop;"));
        let c = nft_cut_script("hb1");
        assert!(c.starts_with("table inet tdmlab_cut_hb1\ndelete table inet tdmlab_cut_hb1\n"));
        assert!(c.contains("iifname \"hb1\" drop"));
        assert!(c.contains("oifname \"hb1\" drop"));
        let l = nft_loss_script("hb2", 30);
        assert!(l.contains("iifname \"hb2\" numgen random mod 100 < 30 drop"));
        assert!(!l.contains("output"));
        let z = nft_loss_script("hb2", 0);
        assert_eq!(
            z,
            "table inet tdmlab_loss_hb2\ndelete table inet tdmlab_loss_hb2\n"
        );
    }

    #[test]
    fn lab_tables_parsed() {
        let out = "table inet filter\ntable inet tdmlab_cut_hb1\ntable ip tdmlab_loss_hb2\n";
        assert_eq!(
            parse_lab_tables(out),
            vec![
                ("inet".to_string(), "tdmlab_cut_hb1".to_string()),
                ("ip".to_string(), "tdmlab_loss_hb2".to_string())
            ]
        );
    }

    #[test]
    fn http_and_identity() {
        let names = vec!["n1".to_string(), "n2".to_string()];
        let (st, body) =
            parse_http_response("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nn2\n").unwrap();
        assert_eq!(st, 200);
        assert_eq!(identify_node(&body, &names), "n2");
        assert_eq!(identify_node("served by n1 (pid 4)", &names), "n1");
        assert_eq!(identify_node("  other \n", &names), "other");
        assert!(parse_http_response("garbage").is_none());
    }

    #[test]
    fn key_is_32_hex() {
        let k = hex_key(&[0xab; 16]);
        assert_eq!(k.len(), 32);
        assert!(k.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
