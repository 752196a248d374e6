//! Resource agents: start, stop and the built-in monitor of each resource kind.
//!
//! - `ip`: adds/removes the floating address through netlink, announces it with a burst
//!   of gratuitous ARP / unsolicited NA and re-announces periodically. Its monitor
//!   reconciles the address against the links (IP local recovery onto a backup NIC).
//! - `exec`: user scripts for start and stop, each under a timeout.
//! - `process`: a supervised long-running command in its own process group and, where
//!   the host has one, its own cgroup ([`super::cgroup`]), which a lost lease's fast
//!   stop freezes; its monitor notices at once when it exits.
//! - `mirror`: promotes this node's copy of a replicated volume (refused unless it is
//!   UpToDate) and serves it over NBD; stop closes the NBD listeners and connections, flushes and
//!   demotes. Its monitor fails when the copy is no longer primary.
//! - `filesystem`: mounts a mirror's volume through the kernel's NBD client
//!   ([`super::filesystem`]).
//! - `shared_disk`: takes, renews and releases a disk lease ([`super::shared_disk`]).

use crate::mirror::generation::OwnershipEpoch;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use super::cgroup::{self, Cgroup};
use super::filesystem::FilesystemAgent;
use super::shared_disk::SharedDiskAgent;
use super::ResourceError;
use crate::config::{parse_cidr, OnNoQuorum, ResourceConfig, ResourceKind};
use crate::mirror::nbd::NbdServer;
use crate::mirror::node::{LocalMirror, LocalMirrors};
use crate::net;
use crate::net::vip::{VipAction, VipOutcome, VipSpec};
use crate::placement::policy::FastStopStep;

/// What the built-in monitor of a resource found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Monitor {
    Healthy,
    /// IP local recovery moved the address to another interface on this node.
    Moved {
        from: String,
        to: String,
    },
    /// The resource failed; a local restart may help.
    Failed(String),
    /// Nothing on this node can carry the resource: fail over.
    Unrecoverable(String),
}

/// One resource's agent.
pub enum Agent {
    Ip(IpAgent),
    Exec {
        start: Vec<String>,
        stop: Vec<String>,
        timeout: Duration,
    },
    Process(ProcessAgent),
    Mirror(MirrorAgent),
    Filesystem(FilesystemAgent),
    SharedDisk(SharedDiskAgent),
}

/// The `process` agent.
pub struct ProcessAgent {
    command: Vec<String>,
    stop_timeout: Duration,
    child: Option<Child>,
    /// `[node, group, resource]`: names its cgroup `tandem/<node>.<daemon pid>/<group>/<resource>`.
    scope: [String; 3],
    /// Its cgroup while it runs (None where the host has no freezer).
    cgroup: Option<Cgroup>,
}

/// The `mirror` agent.
pub struct MirrorAgent {
    name: String,
    /// What the fast stop of a lost lease does with its writes.
    on_no_quorum: OnNoQuorum,
    /// None if this node holds no copy (a config error caught at start).
    local: Option<LocalMirror>,
    server: Option<tokio::task::JoinHandle<()>>,
    /// The group's ownership epoch this node runs it under (the promotion's epoch).
    epoch: OwnershipEpoch,
}

/// The floating IP agent.
pub struct IpAgent {
    spec: VipSpec,
    announce_count: u32,
    reannounce_every: Duration,
    last_announce: Option<Instant>,
    holder: Option<String>,
    /// The running announcement burst; aborted when the address goes away, so no
    /// gratuitous ARP for an address we gave up can follow the release.
    announcing: Option<tokio::task::JoinHandle<()>>,
}

impl Agent {
    /// Builds the agent for a validated resource of `group` on `node`.
    pub fn new(cfg: &ResourceConfig, mirrors: &LocalMirrors, node: &str, group: &str) -> Agent {
        match &cfg.kind {
            ResourceKind::Ip {
                address,
                interface,
                backup_interfaces,
                announce_count,
                reannounce_every,
            } => {
                // Validated by Config::validate.
                let (addr, prefix) =
                    parse_cidr(address).unwrap_or((IpAddr::from([0, 0, 0, 0]), 32));
                let mut interfaces = vec![interface.clone()];
                interfaces.extend(backup_interfaces.iter().cloned());
                Agent::Ip(IpAgent {
                    spec: VipSpec {
                        addr,
                        prefix,
                        interfaces,
                    },
                    announce_count: *announce_count,
                    reannounce_every: *reannounce_every,
                    last_announce: None,
                    holder: None,
                    announcing: None,
                })
            }
            ResourceKind::Exec {
                start,
                stop,
                timeout,
            } => Agent::Exec {
                start: start.clone(),
                stop: stop.clone(),
                timeout: *timeout,
            },
            ResourceKind::Process {
                command,
                stop_timeout,
            } => Agent::Process(ProcessAgent {
                command: command.clone(),
                stop_timeout: *stop_timeout,
                child: None,
                scope: [node.to_string(), group.to_string(), cfg.name.clone()],
                cgroup: None,
            }),
            ResourceKind::Mirror { mirror } => Agent::Mirror(MirrorAgent {
                name: mirror.clone(),
                on_no_quorum: mirrors
                    .get(mirror)
                    .map(|m| m.on_no_quorum)
                    .unwrap_or_default(),
                local: mirrors.get(mirror).cloned(),
                server: None,
                epoch: OwnershipEpoch::default(),
            }),
            ResourceKind::Filesystem {
                mirror,
                mountpoint,
                fstype,
                options,
                mkfs,
                fsck,
            } => Agent::Filesystem(FilesystemAgent::new(
                mirror,
                mirrors.get(mirror).and_then(|m| m.nbd.unix.clone()),
                mountpoint,
                fstype,
                options,
                *mkfs,
                *fsck,
            )),
            ResourceKind::SharedDisk {
                path, lease_offset, ..
            } => Agent::SharedDisk(SharedDiskAgent::new(
                path.clone(),
                *lease_offset,
                cfg.kind.lease_timing().unwrap_or_default(),
                node,
            )),
        }
    }

    /// The `shared_disk` agent, for `shared_disk` resources.
    pub fn shared_disk(&self) -> Option<&SharedDiskAgent> {
        match self {
            Agent::SharedDisk(d) => Some(d),
            _ => None,
        }
    }

    /// The floating address, for `ip` resources.
    pub fn vip(&self) -> Option<&VipSpec> {
        match self {
            Agent::Ip(a) => Some(&a.spec),
            _ => None,
        }
    }

    /// The step of a lost lease's fast stop this resource takes part in, if any.
    pub fn fast_stop_step(&self) -> Option<FastStopStep> {
        match self {
            Agent::Ip(_) => Some(FastStopStep::FloatingIp),
            Agent::Mirror(_) => Some(FastStopStep::Mirror),
            Agent::Process(_) => Some(FastStopStep::Freeze),
            Agent::Exec { .. } | Agent::Filesystem(_) | Agent::SharedDisk(_) => None,
        }
    }

    /// Its part in a lost lease's fast stop: a floating IP is dropped, a mirror's I/O
    /// fails (demoted) or is suspended, a process is frozen. Returns whether the
    /// resource is stopped (else the clean stop still stops it).
    pub async fn fast_stop(&mut self, env: &[(String, String)]) -> Result<bool, ResourceError> {
        match self {
            Agent::Mirror(m) if m.on_no_quorum == OnNoQuorum::Suspend => {
                if let Ok(local) = m.local() {
                    local.mirror.suspend_io();
                }
                Ok(false)
            }
            Agent::Process(p) => p.freeze().await.map(|()| false),
            Agent::Ip(_) | Agent::Mirror(_) => self.stop(env).await.map(|()| true),
            Agent::Exec { .. } | Agent::Filesystem(_) | Agent::SharedDisk(_) => Ok(false),
        }
    }

    /// Undoes its part in a fast stop (a held group whose lease came back at the same
    /// epoch): a process is thawed, a mirror's suspended I/O resumes, a floating IP is
    /// added and announced again.
    pub async fn resume(&mut self, env: &[(String, String)]) -> Result<(), ResourceError> {
        match self {
            Agent::Process(p) => p.thaw(),
            Agent::Ip(_) | Agent::Mirror(_) => self.start(env).await,
            Agent::Exec { .. } | Agent::Filesystem(_) | Agent::SharedDisk(_) => Ok(()),
        }
    }

    /// The ownership epoch the group starts under (before `start`): a `mirror`
    /// promotes its copy under it; other agents ignore it.
    pub fn set_ownership_epoch(&mut self, epoch: OwnershipEpoch) {
        if let Agent::Mirror(m) = self {
            m.epoch = epoch;
        }
    }

    /// Starts the resource.
    pub async fn start(&mut self, env: &[(String, String)]) -> Result<(), ResourceError> {
        match self {
            Agent::Ip(a) => {
                for ifname in &a.spec.interfaces {
                    ignore_routes_with_linkdown(ifname, a.spec.addr);
                }
                a.reconcile(true).await.and_then(|o| match o {
                    VipOutcome::NoUsableInterface => Err(ResourceError::Check(format!(
                        "no usable interface among {:?} for {}",
                        a.spec.interfaces, a.spec.addr
                    ))),
                    _ => Ok(()),
                })
            }
            Agent::Exec { start, timeout, .. } => run_command(start, *timeout, env).await,
            Agent::Process(p) => p.start(env),
            Agent::Mirror(m) => m.start().await,
            Agent::Filesystem(f) => f.start().await,
            Agent::SharedDisk(d) => d.start().await.map(|_| ()),
        }
    }

    /// Stops the resource. Stopping a stopped resource succeeds.
    pub async fn stop(&mut self, env: &[(String, String)]) -> Result<(), ResourceError> {
        match self {
            Agent::Ip(a) => a.reconcile(false).await.map(|_| ()),
            Agent::Exec { stop, timeout, .. } => run_command(stop, *timeout, env).await,
            Agent::Process(p) => p.stop().await,
            Agent::Mirror(m) => m.stop().await,
            Agent::Filesystem(f) => f.stop().await,
            Agent::SharedDisk(d) => d.stop().await,
        }
    }

    /// The built-in monitor: for `ip`, the address is present on a usable link (moving
    /// it to a backup if needed) and re-announced when due; for `process`, the child
    /// still runs.
    pub async fn monitor(&mut self) -> Monitor {
        match self {
            Agent::Ip(a) => {
                let before = a.holder.clone();
                match a.reconcile(true).await {
                    Ok(VipOutcome::Ok) => {
                        if before.is_some() && a.holder != before {
                            // The address vanished and was put back where it was.
                            return Monitor::Failed(format!(
                                "address {} was missing from {}",
                                a.spec.addr,
                                before.unwrap_or_default()
                            ));
                        }
                        if !a.reannounce_every.is_zero()
                            && a.last_announce
                                .is_none_or(|t| t.elapsed() >= a.reannounce_every)
                        {
                            if let Some(h) = a.holder.clone() {
                                a.announce(&h, 1);
                            }
                        }
                        Monitor::Healthy
                    }
                    Ok(VipOutcome::Moved { from, to }) => Monitor::Moved { from, to },
                    Ok(VipOutcome::NoUsableInterface) => Monitor::Unrecoverable(format!(
                        "no interface among {:?} can carry {}",
                        a.spec.interfaces, a.spec.addr
                    )),
                    Err(e) => Monitor::Failed(e.to_string()),
                }
            }
            Agent::Exec { .. } => Monitor::Healthy,
            Agent::Process(ProcessAgent { child, command, .. }) => match child.as_mut() {
                None => Monitor::Failed("not running".into()),
                Some(c) => match c.try_wait() {
                    Ok(None) => Monitor::Healthy,
                    Ok(Some(status)) => {
                        *child = None;
                        Monitor::Failed(format!(
                            "`{}` exited ({})",
                            command.join(" "),
                            describe_status(status)
                        ))
                    }
                    Err(e) => Monitor::Failed(format!("wait: {e}")),
                },
            },
            Agent::Mirror(m) => m.monitor(),
            Agent::Filesystem(f) => f.monitor(),
            Agent::SharedDisk(d) => d.lost().map_or(Monitor::Healthy, Monitor::Unrecoverable),
        }
    }
}

impl ProcessAgent {
    /// Its cgroup, created now; None (and a warning) where the host cannot have one.
    fn make_cgroup(&self) -> Option<Cgroup> {
        let h = cgroup::hierarchy()?;
        let [node, group, resource] = &self.scope;
        Cgroup::create(h, node, group, resource)
            .map_err(|e| tracing::warn!(error = %e, "the process runs without its own cgroup"))
            .ok()
    }

    fn start(&mut self, env: &[(String, String)]) -> Result<(), ResourceError> {
        if let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                return Ok(());
            }
        }
        let command = &self.command;
        let mut cmd = Command::new(&command[0]);
        cmd.args(&command[1..])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let cgroup = self.cgroup.take().or_else(|| self.make_cgroup());
        if let Some(procs) = cgroup
            .as_ref()
            .and_then(|c| cgroup::c_path(&c.procs_file()))
        {
            // SAFETY: the hook only calls `join_self`, which is async-signal-safe and
            // does not allocate (the path was made before the fork).
            unsafe {
                cmd.pre_exec(move || cgroup::join_self(&procs));
            }
        }
        self.cgroup = cgroup;
        let c = cmd.spawn().map_err(|source| ResourceError::Spawn {
            command: command.join(" "),
            source,
        })?;
        self.child = Some(c);
        Ok(())
    }

    /// SIGTERM to its process group, SIGKILL after `stop_timeout`; then whatever is
    /// left in its cgroup is killed and the cgroup removed.
    async fn stop(&mut self) -> Result<(), ResourceError> {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let pgid = Pid::from_raw(pid as i32);
                let _ = killpg(pgid, Signal::SIGTERM);
                // Frozen by a lost lease's fast stop: the SIGTERM waits until the thaw,
                // so the process handles it before it runs anything else, and stops
                // cleanly (its handler runs). `cgroup.kill` would be a SIGKILL: no
                // clean stop, so it is only the last resort below.
                if let Some(cg) = &self.cgroup {
                    cg.thaw()?;
                }
                if tokio::time::timeout(self.stop_timeout, c.wait())
                    .await
                    .is_err()
                {
                    tracing::warn!(command = %self.command.join(" "), "did not stop on SIGTERM; SIGKILL");
                    let _ = killpg(pgid, Signal::SIGKILL);
                    let _ = c.wait().await;
                }
                // Anything left in its process group goes too.
                let _ = killpg(pgid, Signal::SIGKILL);
            }
        }
        if let Some(cg) = self.cgroup.take() {
            cg.remove().await?;
        }
        Ok(())
    }

    /// Freezes it (a lost lease's fast stop); nothing to do without a cgroup.
    async fn freeze(&self) -> Result<(), ResourceError> {
        match &self.cgroup {
            Some(cg) if self.child.is_some() => Ok(cg.freeze().await?),
            _ => Ok(()),
        }
    }

    /// Lets it run again after [`Self::freeze`].
    fn thaw(&self) -> Result<(), ResourceError> {
        match &self.cgroup {
            Some(cg) => Ok(cg.thaw()?),
            None => Ok(()),
        }
    }
}

impl MirrorAgent {
    fn local(&self) -> Result<&LocalMirror, ResourceError> {
        self.local.as_ref().ok_or_else(|| {
            ResourceError::Check(format!("this node holds no copy of mirror `{}`", self.name))
        })
    }

    async fn start(&mut self) -> Result<(), ResourceError> {
        let local = self.local()?.clone();
        // Still primary (its I/O suspended by a lost lease): the held writes go on at
        // the same epoch; at another one the copy steps down (they fail) and promotes.
        let primary = local
            .mirror
            .resume_io(self.epoch)
            .await
            .map_err(|e| ResourceError::Check(format!("mirror `{}`: {e}", self.name)))?;
        if !primary {
            local
                .mirror
                .promote(self.epoch)
                .await
                .map_err(|e| ResourceError::Check(format!("mirror `{}`: {e}", self.name)))?;
        }
        if self.server.as_ref().is_some_and(|s| !s.is_finished()) {
            return Ok(());
        }
        let server = NbdServer::bind(local.nbd.clone())
            .await
            .map_err(|e| ResourceError::Check(format!("mirror `{}` NBD: {e}", self.name)))?;
        self.server = Some(tokio::spawn(server.run(local.mirror.clone())));
        Ok(())
    }

    async fn stop(&mut self) -> Result<(), ResourceError> {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
        let Ok(local) = self.local() else {
            return Ok(());
        };
        if let Some(path) = &local.nbd.unix {
            let _ = std::fs::remove_file(path);
        }
        if local.mirror.is_primary() {
            local
                .mirror
                .demote()
                .await
                .map_err(|e| ResourceError::Check(format!("mirror `{}`: {e}", self.name)))?;
        }
        Ok(())
    }

    fn monitor(&mut self) -> Monitor {
        let Ok(local) = self.local() else {
            return Monitor::Unrecoverable(format!("no copy of mirror `{}` here", self.name));
        };
        if !local.mirror.is_primary() {
            return Monitor::Failed(format!("mirror `{}` is not primary here", self.name));
        }
        if let Some(stale) = local.mirror.deposed() {
            return Monitor::Failed(format!("mirror `{}`: deposed, {stale}", self.name));
        }
        if self.server.as_ref().is_none_or(|s| s.is_finished()) {
            return Monitor::Failed(format!("mirror `{}`: the NBD server stopped", self.name));
        }
        Monitor::Healthy
    }
}

impl IpAgent {
    async fn observe(&self) -> Result<net::vip::Observed, ResourceError> {
        let mut links = std::collections::BTreeMap::new();
        for i in &self.spec.interfaces {
            let s = net::netlink::link_state(i).await?;
            links.insert(i.clone(), net::vip::LinkHealth::from(&s));
        }
        let holders = net::netlink::find_address(self.spec.addr).await?;
        Ok(net::vip::Observed { links, holders })
    }

    /// Brings the world in line with `want_up` and reports what happened.
    async fn reconcile(&mut self, want_up: bool) -> Result<VipOutcome, ResourceError> {
        if !want_up {
            if let Some(h) = self.announcing.take() {
                h.abort();
            }
        }
        let observed = self.observe().await?;
        let (actions, outcome) = net::vip::reconcile(&self.spec, want_up, &observed);
        for action in actions {
            match action {
                VipAction::Remove { ifname } => {
                    net::netlink::del_address(&ifname, self.spec.addr, self.spec.prefix).await?;
                }
                VipAction::Add { ifname } => {
                    net::netlink::add_address(&ifname, self.spec.addr, self.spec.prefix).await?;
                    self.holder = Some(ifname);
                }
                VipAction::Announce { ifname } => self.announce(&ifname, self.announce_count),
            }
        }
        if !want_up {
            self.holder = None;
        } else if self.holder.is_none() {
            self.holder = observed.holders.first().cloned();
        }
        Ok(outcome)
    }

    /// Sends the announcement burst in the background so the start is not delayed.
    fn announce(&mut self, ifname: &str, count: u32) {
        self.last_announce = Some(Instant::now());
        let (ifname, addr) = (ifname.to_string(), self.spec.addr);
        if let Some(h) = self.announcing.take() {
            h.abort();
        }
        self.announcing = Some(tokio::spawn(async move {
            if let Err(e) =
                net::announce::announce(&ifname, addr, count, Duration::from_millis(150)).await
            {
                tracing::warn!(%addr, %ifname, error = %e, "announcement failed");
            }
        }));
    }
}

/// IP local recovery needs replies to leave through the backup NIC once the primary
/// loses carrier; by default Linux keeps using routes over a link that is down. This
/// sets `ignore_routes_with_linkdown` on the interfaces that may carry the address.
/// Best effort: a failure is logged, the address still moves.
fn ignore_routes_with_linkdown(ifname: &str, addr: IpAddr) {
    let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
    let path = format!("/proc/sys/net/{family}/conf/{ifname}/ignore_routes_with_linkdown");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(%path, error = %e, "cannot set ignore_routes_with_linkdown");
    }
}

fn describe_status(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => status.to_string(),
    }
}

/// Runs a command to completion under a timeout; non-zero exit is an error. On timeout
/// its whole process group is killed.
pub async fn run_command(
    command: &[String],
    timeout: Duration,
    env: &[(String, String)],
) -> Result<(), ResourceError> {
    let shown = command.join(" ");
    let Some((prog, args)) = command.split_first() else {
        return Err(ResourceError::Check("empty command".into()));
    };
    let mut child = Command::new(prog)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| ResourceError::Spawn {
            command: shown.clone(),
            source,
        })?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(ResourceError::ExitStatus {
            command: shown,
            status: describe_status(status),
        }),
        Ok(Err(e)) => Err(ResourceError::Spawn {
            command: shown,
            source: e,
        }),
        Err(_) => {
            if let Some(pid) = child.id() {
                let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = child.wait().await;
            Err(ResourceError::Timeout {
                command: shown,
                timeout_ms: timeout.as_millis() as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(cmd: &[&str]) -> Agent {
        Agent::Process(ProcessAgent {
            command: cmd.iter().map(|s| s.to_string()).collect(),
            stop_timeout: Duration::from_millis(500),
            child: None,
            scope: [
                "unit".into(),
                "tests".into(),
                cmd.join("-").replace(['/', ' ', '\'', '&', ';'], "_"),
            ],
            cgroup: None,
        })
    }

    #[tokio::test]
    async fn process_exit_is_noticed_and_stop_kills_the_group() {
        let mut a = process(&["sh", "-c", "sleep 30 & sleep 30"]);
        a.start(&[]).await.unwrap();
        assert_eq!(a.monitor().await, Monitor::Healthy);
        a.stop(&[]).await.unwrap();
        assert!(matches!(a.monitor().await, Monitor::Failed(_)));

        let mut b = process(&["sh", "-c", "exit 3"]);
        b.start(&[]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        match b.monitor().await {
            Monitor::Failed(why) => assert!(why.contains("exit code 3"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The exited process's cgroup goes with the stop.
        b.stop(&[]).await.unwrap();
    }

    #[tokio::test]
    async fn process_ignoring_sigterm_is_killed() {
        let mut a = process(&["sh", "-c", "trap '' TERM; sleep 30"]);
        a.start(&[]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t = Instant::now();
        a.stop(&[]).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn exec_scripts_get_env_and_errors_are_reported() {
        let env = vec![("TANDEM_GROUP".to_string(), "mail".to_string())];
        assert!(run_command(
            &[
                "sh".into(),
                "-c".into(),
                "test \"$TANDEM_GROUP\" = mail".into()
            ],
            Duration::from_secs(2),
            &env
        )
        .await
        .is_ok());
        let e = run_command(&["false".into()], Duration::from_secs(2), &env)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exit code 1"), "{e}");
        let e = run_command(&["/nonexistent/x".into()], Duration::from_secs(2), &env)
            .await
            .unwrap_err();
        assert!(matches!(e, ResourceError::Spawn { .. }));
    }
}
