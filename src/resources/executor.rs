//! The group executor: one tokio task per group on this node. It carries out the
//! placement core's actions for its group (start in dependency order, stop in reverse,
//! restart one resource with its dependents, probe the floating IPs) and monitors the
//! running group with each resource's built-in monitor, quickCheck and deepCheck.
//! Results go back to the core as [`placement::policy::Input`]s; resource-level facts
//! go straight into the event stream. A reloaded configuration's checks (probe,
//! interval, timeout) are taken at once, between two monitor passes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::agent::{Agent, Monitor};
use super::probe;
use crate::config::{
    CheckConfig, Config, GroupConfig, ResourceConfig, ResourceKind, DEFAULT_DEEPCHECK,
    DEFAULT_QUICKCHECK,
};
use crate::event::{fields, unix_ms, EventKind, EventLog, TimelineStep};
use crate::mirror::node::LocalMirrors;
use crate::node::{GroupCommand as Command, StopMode};
use crate::placement::hierarchy::{dependents_closure, start_order};
use crate::placement::policy::{FastStopStep, Input};
use crate::status::CheckKind;

/// The order to stop a group's resources in: reverse dependency order (`order` is the
/// start order), or for a lost lease the floating IPs, then the mirrors, then the rest
/// in reverse dependency order (`steps`: each resource's [`FastStopStep`]).
fn stop_order(mode: StopMode, order: &[usize], steps: &[Option<FastStopStep>]) -> Vec<usize> {
    let reverse = order.iter().rev().copied();
    match mode {
        StopMode::TopDown => reverse.collect(),
        StopMode::LeaseLost | StopMode::AfterHold => {
            let step = |i: usize| steps.get(i).copied().flatten();
            let mut v = Vec::new();
            for first in [FastStopStep::FloatingIp, FastStopStep::Mirror] {
                v.extend(reverse.clone().filter(|&i| step(i) == Some(first)));
            }
            v.extend(reverse.filter(|&i| {
                !matches!(
                    step(i),
                    Some(FastStopStep::FloatingIp | FastStopStep::Mirror)
                )
            }));
            v
        }
    }
}

/// How long a freshly started group may take to pass its first quickChecks.
const FIRST_CHECK_GRACE: Duration = Duration::from_secs(15);
/// Built-in monitors (process alive, address present) run this often.
const MONITOR_EVERY: Duration = Duration::from_millis(250);

struct Res {
    name: String,
    agent: Agent,
    quick: Option<(CheckConfig, Duration)>,
    deep: Option<(CheckConfig, Duration)>,
    next_quick: Instant,
    next_deep: Instant,
}

/// One finished health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckDone<'a> {
    pub group: &'a str,
    pub resource: &'a str,
    pub kind: crate::status::CheckKind,
    pub took: Duration,
    /// Why it failed (`None`: it passed).
    pub error: Option<String>,
}

/// What the executor reports beside its results, for the metrics and the status.
#[derive(Debug)]
pub enum Observed<'a> {
    /// A health check finished.
    Check(CheckDone<'a>),
    /// A `shared_disk` took its disk lease: the lease's status from now on.
    DiskLease {
        group: &'a str,
        resource: &'a str,
        status: watch::Receiver<crate::lease::task::LeaseStatus>,
    },
}

/// Records what the executor reports ([`Observed`]). The runtime hands in one that
/// feeds the metrics and the status's last check results and disk leases.
pub type Observer = Arc<dyn Fn(Observed<'_>) + Send + Sync>;

/// A resource's checks with their periods (the defaults filled in).
fn checks_of(r: &ResourceConfig) -> [Option<(CheckConfig, Duration)>; 2] {
    [
        (&r.quickcheck, DEFAULT_QUICKCHECK),
        (&r.deepcheck, DEFAULT_DEEPCHECK),
    ]
    .map(|(c, default)| {
        c.clone().map(|c| {
            let i = c.interval.unwrap_or(default);
            (c, i)
        })
    })
}

/// Resolves when one of `signals` is notified; never when there is none.
async fn any_notified(signals: &[Arc<tokio::sync::Notify>]) {
    if signals.is_empty() {
        return std::future::pending().await;
    }
    futures::future::select_all(signals.iter().map(|n| Box::pin(n.notified()))).await;
}

/// Starts the executor task of `group`; returns its command channel. `config` is the
/// configuration the daemon runs with: the group's checks follow its changes.
pub fn spawn(
    node: &str,
    group: &GroupConfig,
    config: watch::Receiver<Arc<Config>>,
    events: EventLog,
    observer: Observer,
    mirrors: &LocalMirrors,
    results: mpsc::Sender<Input>,
) -> mpsc::Sender<Command> {
    let (tx, rx) = mpsc::channel(16);
    let order = start_order(group).unwrap_or_else(|_| (0..group.resources.len()).collect());
    let resources: Vec<Res> = group
        .resources
        .iter()
        .map(|r| {
            let [quick, deep] = checks_of(r);
            Res {
                name: r.name.clone(),
                agent: Agent::new(r, mirrors, node, &group.name),
                quick,
                deep,
                next_quick: Instant::now(),
                next_deep: Instant::now(),
            }
        })
        .collect();
    let vip_probe_timeout = config.borrow().cluster.vip_probe_timeout;
    let exec = Executor {
        node: node.to_string(),
        nbd_socket: group_nbd_socket(group, mirrors),
        group: group.clone(),
        order,
        resources,
        events,
        observer,
        results,
        running: false,
        maintenance: false,
        vip_probe_timeout,
        monitor_every: MONITOR_EVERY,
    };
    let span = tracing::info_span!("group", node = %node, group = %group.name);
    tokio::spawn(exec.run(rx, config).instrument(span));
    tx
}

/// The NBD socket of the group's mirror, when the group holds exactly one: handed to
/// its commands as `TANDEM_NBD_SOCKET`, so one command line serves every node (each
/// node's socket lives in its own state directory).
fn group_nbd_socket(group: &GroupConfig, mirrors: &LocalMirrors) -> Option<PathBuf> {
    let mut names = group.resources.iter().filter_map(|r| match &r.kind {
        ResourceKind::Mirror { mirror } => Some(mirror),
        _ => None,
    });
    let (Some(only), None) = (names.next(), names.next()) else {
        return None;
    };
    mirrors.get(only)?.nbd.unix.clone()
}

/// The group's `shared_disk` (the first, if several), for its commands:
/// `TANDEM_SHARED_DISK` (the path) and `TANDEM_SHARED_DISK_OFFSET` (where data begins).
fn shared_disk_env(group: &GroupConfig) -> Vec<(String, String)> {
    let disk = group.resources.iter().find_map(|r| match &r.kind {
        ResourceKind::SharedDisk {
            path, data_offset, ..
        } => Some((path, data_offset)),
        _ => None,
    });
    disk.map(|(path, offset)| {
        vec![
            ("TANDEM_SHARED_DISK".into(), path.display().to_string()),
            ("TANDEM_SHARED_DISK_OFFSET".into(), offset.to_string()),
        ]
    })
    .unwrap_or_default()
}

struct Executor {
    node: String,
    /// See [`group_nbd_socket`].
    nbd_socket: Option<PathBuf>,
    group: GroupConfig,
    order: Vec<usize>,
    resources: Vec<Res>,
    events: EventLog,
    observer: Observer,
    results: mpsc::Sender<Input>,
    running: bool,
    maintenance: bool,
    vip_probe_timeout: Duration,
    /// The built-in monitors' period ([`MONITOR_EVERY`]); a lost disk lease does not
    /// wait for it.
    monitor_every: Duration,
}

impl Executor {
    /// The loss signals of the disk leases held now.
    fn lease_loss_signals(&self) -> Vec<Arc<tokio::sync::Notify>> {
        self.resources
            .iter()
            .filter_map(|r| r.agent.shared_disk()?.lost_signal())
            .collect()
    }

    fn env(&self, resource: &str) -> Vec<(String, String)> {
        let mut env = vec![
            ("TANDEM_NODE".into(), self.node.clone()),
            ("TANDEM_GROUP".into(), self.group.name.clone()),
            ("TANDEM_RESOURCE".into(), resource.to_string()),
        ];
        if let Some(socket) = &self.nbd_socket {
            env.push(("TANDEM_NBD_SOCKET".into(), socket.display().to_string()));
        }
        env.extend(shared_disk_env(&self.group));
        env
    }

    /// Takes the checks of this group's resources from a reloaded configuration. A
    /// check due later than its new period allows runs at the new period from now.
    fn take_checks(&mut self, cfg: &Config) {
        let Some(g) = cfg.groups.iter().find(|g| g.name == self.group.name) else {
            return;
        };
        let now = Instant::now();
        for r in &mut self.resources {
            let Some(rc) = g.resources.iter().find(|c| c.name == r.name) else {
                continue;
            };
            let [quick, deep] = checks_of(rc);
            for (check, new, next) in [
                (&mut r.quick, quick, &mut r.next_quick),
                (&mut r.deep, deep, &mut r.next_deep),
            ] {
                if let Some((_, interval)) = &new {
                    *next = (*next).min(now + *interval);
                }
                *check = new;
            }
        }
        tracing::info!("checks reloaded");
    }

    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut config: watch::Receiver<Arc<Config>>,
    ) {
        let mut tick = tokio::time::interval(self.monitor_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let leases = self.lease_loss_signals();
            tokio::select! {
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { break };
                    let input = match cmd {
                        Command::Start { epoch } => {
                            for r in &mut self.resources {
                                r.agent.set_ownership_epoch(epoch);
                            }
                            Some(self.start().await)
                        }
                        Command::Stop(mode) => Some(self.stop(mode).await),
                        Command::FastStop => Some(self.fast_stop_only().await),
                        Command::Resume { epoch } => {
                            for r in &mut self.resources {
                                r.agent.set_ownership_epoch(epoch);
                            }
                            Some(self.resume().await)
                        }
                        Command::Restart { resource } => Some(self.restart(&resource).await),
                        Command::ProbeVip => Some(self.probe_vip().await),
                        Command::Maintenance(on) => { self.maintenance = on; None }
                    };
                    if let Some(i) = input {
                        if self.results.send(i).await.is_err() { break; }
                    }
                }
                Ok(()) = config.changed() => {
                    let cfg = config.borrow_and_update().clone();
                    self.take_checks(&cfg);
                }
                _ = any_notified(&leases), if self.running && !self.maintenance => {
                    if let Some(i) = self.monitor().await {
                        if self.results.send(i).await.is_err() { break; }
                    }
                }
                _ = tick.tick(), if self.running && !self.maintenance => {
                    if let Some(i) = self.monitor().await {
                        if self.results.send(i).await.is_err() { break; }
                    }
                }
            }
        }
        // The daemon is shutting down: stop what runs here, top-down.
        if self.running {
            let _ = self.stop(StopMode::TopDown).await;
        }
    }

    async fn start_one(&mut self, i: usize, steps: &mut Vec<TimelineStep>) -> Result<(), String> {
        self.step(i, "start", steps).await
    }

    async fn stop_one(&mut self, i: usize, steps: &mut Vec<TimelineStep>) -> Result<(), String> {
        self.step(i, "stop", steps).await
    }

    /// Starts or stops one resource, timing it for the timeline and recording the event.
    async fn step(
        &mut self,
        i: usize,
        action: &'static str,
        steps: &mut Vec<TimelineStep>,
    ) -> Result<(), String> {
        let name = self.resources[i].name.clone();
        let env = self.env(&name);
        let at = unix_ms();
        let t = Instant::now();
        let span = tracing::info_span!("resource", resource = %name);
        let agent = &mut self.resources[i].agent;
        let r = if action == "start" {
            agent.start(&env).instrument(span).await
        } else {
            agent.stop(&env).instrument(span).await
        };
        let ms = t.elapsed().as_millis() as u64;
        steps.push(TimelineStep {
            resource: name.clone(),
            action: action.into(),
            at_ms: at,
            duration_ms: ms,
            ok: r.is_ok(),
            error: r.as_ref().err().map(|e| e.to_string()),
        });
        let group = self.group.name.clone();
        let (kind, f) = match (&r, action) {
            (Ok(()), "start") => (
                EventKind::ResourceStarted,
                fields([
                    ("group", group),
                    ("resource", name.clone()),
                    ("duration_ms", ms.to_string()),
                ]),
            ),
            (Err(e), "start") => (
                EventKind::ResourceStartFailed,
                fields([
                    ("group", group),
                    ("resource", name.clone()),
                    ("reason", e.to_string()),
                ]),
            ),
            _ => (
                EventKind::ResourceStopped,
                fields([
                    ("group", group),
                    ("resource", name.clone()),
                    ("duration_ms", ms.to_string()),
                    ("ok", r.is_ok().to_string()),
                ]),
            ),
        };
        self.events.emit(kind, f);
        if let (Ok(()), "start", Some(d)) = (&r, action, self.resources[i].agent.shared_disk()) {
            self.disk_lease_event(
                EventKind::DiskLeaseAcquired,
                &name,
                d.path(),
                ("waited_ms", d.waited().as_millis().to_string()),
            );
            if let Some(status) = d.lease_status() {
                (self.observer)(Observed::DiskLease {
                    group: &self.group.name,
                    resource: &name,
                    status,
                });
            }
        }
        r.map_err(|e| format!("`{name}`: {e}"))
    }

    /// `disk_lease_acquired` / `disk_lease_lost` for a `shared_disk` resource.
    fn disk_lease_event(
        &self,
        kind: EventKind,
        resource: &str,
        path: &std::path::Path,
        extra: (&str, String),
    ) {
        self.events.emit(
            kind,
            fields([
                ("group", self.group.name.clone()),
                ("resource", resource.to_string()),
                ("path", path.display().to_string()),
                (extra.0, extra.1),
            ]),
        );
    }

    /// Runs each given resource's quickCheck until all pass (or the grace runs out).
    async fn first_checks(&mut self, which: &[usize]) -> Result<u64, String> {
        let deadline = Instant::now() + FIRST_CHECK_GRACE;
        for &i in which {
            let Some((check, _)) = self.resources[i].quick.clone() else {
                continue;
            };
            let env = self.env(&self.resources[i].name);
            loop {
                match probe::run(&check.probe, check.timeout, &env).await {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!(
                            "`{}` never passed its quickcheck: {e}",
                            self.resources[i].name
                        ))
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
                }
            }
        }
        let now = Instant::now();
        for r in &mut self.resources {
            if let Some((_, i)) = &r.quick {
                r.next_quick = now + *i;
            }
            if let Some((_, i)) = &r.deep {
                r.next_deep = now + *i;
            }
        }
        Ok(unix_ms())
    }

    async fn start(&mut self) -> Input {
        let mut steps = Vec::new();
        let mut started = Vec::new();
        let order = self.order.clone();
        let mut error = None;
        for &i in &order {
            match self.start_one(i, &mut steps).await {
                Ok(()) => started.push(i),
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        let mut first_check = None;
        if error.is_none() {
            match self.first_checks(&order).await {
                Ok(t) => first_check = Some(t),
                Err(e) => error = Some(e),
            }
        }
        let mut cleanup_ok = true;
        if error.is_some() {
            for &i in started.iter().rev() {
                if self.stop_one(i, &mut steps).await.is_err() {
                    cleanup_ok = false;
                }
            }
        } else {
            self.running = true;
        }
        Input::Started {
            group: self.group.name.clone(),
            ok: error.is_none(),
            error,
            cleanup_ok,
            steps,
            first_check_wall_ms: first_check,
        }
    }

    /// Stops the group; a lost lease's stop runs the fast stop first.
    async fn stop(&mut self, mode: StopMode) -> Input {
        self.running = false;
        let mut steps = Vec::new();
        let mut error = None;
        let mut stopped = vec![false; self.resources.len()];
        if mode == StopMode::LeaseLost {
            self.fast_stop(&mut stopped, &mut steps, &mut error).await;
            let done = Input::FastStopped {
                group: self.group.name.clone(),
                ok: error.is_none(),
            };
            let _ = self.results.send(done).await;
        }
        let kinds: Vec<Option<FastStopStep>> = self
            .resources
            .iter()
            .map(|r| r.agent.fast_stop_step())
            .collect();
        for i in stop_order(mode, &self.order, &kinds) {
            if stopped[i] {
                continue;
            }
            if let Err(e) = self.stop_one(i, &mut steps).await {
                error.get_or_insert(e);
            }
        }
        Input::Stopped {
            group: self.group.name.clone(),
            ok: error.is_none(),
            error,
            steps,
        }
    }

    /// Only the fast part of a lost lease's stop: the group is held (see
    /// `placement::policy` on holding), its timeline steps logged.
    async fn fast_stop_only(&mut self) -> Input {
        self.running = false;
        let mut stopped = vec![false; self.resources.len()];
        let (mut steps, mut error) = (Vec::new(), None);
        self.fast_stop(&mut stopped, &mut steps, &mut error).await;
        Input::FastStopped {
            group: self.group.name.clone(),
            ok: error.is_none(),
        }
    }

    /// Undoes the fast stop of a held group, in the reverse order of its steps:
    /// processes thawed, mirror I/O resumed, floating IPs added and announced.
    async fn resume(&mut self) -> Input {
        let mut error = None;
        for step in FastStopStep::ALL.into_iter().rev() {
            for i in self.order.clone() {
                if self.resources[i].agent.fast_stop_step() != Some(step) {
                    continue;
                }
                let name = self.resources[i].name.clone();
                let env = self.env(&name);
                let span = tracing::info_span!("resume", resource = %name, step = step.name());
                let r = self.resources[i].agent.resume(&env).instrument(span).await;
                if let Err(e) = r {
                    tracing::error!(resource = %name, error = %e, "resume failed");
                    error = Some(format!("`{name}`: {e}"));
                    break;
                }
            }
            if error.is_some() {
                break;
            }
        }
        self.running = error.is_none();
        Input::Resumed {
            group: self.group.name.clone(),
            ok: error.is_none(),
            error,
        }
    }

    /// The fast part of a lost lease's stop: each [`FastStopStep`] in order over the
    /// resources it concerns (reverse dependency order). A failure is reported to the
    /// core at once (it stops petting the watchdog); the next steps still run.
    async fn fast_stop(
        &mut self,
        stopped: &mut [bool],
        steps: &mut Vec<TimelineStep>,
        error: &mut Option<String>,
    ) {
        for step in FastStopStep::ALL {
            for i in self.order.clone().into_iter().rev() {
                if self.resources[i].agent.fast_stop_step() != Some(step) {
                    continue;
                }
                let name = self.resources[i].name.clone();
                let env = self.env(&name);
                let (at, t) = (unix_ms(), Instant::now());
                let span = tracing::info_span!("fast_stop", resource = %name, step = step.name());
                let r = self.resources[i]
                    .agent
                    .fast_stop(&env)
                    .instrument(span)
                    .await;
                steps.push(TimelineStep {
                    resource: name.clone(),
                    action: format!("fast_stop_{}", step.name()),
                    at_ms: at,
                    duration_ms: t.elapsed().as_millis() as u64,
                    ok: r.is_ok(),
                    error: r.as_ref().err().map(|e| e.to_string()),
                });
                match r {
                    Ok(done) => stopped[i] = done,
                    Err(e) => {
                        tracing::error!(resource = %name, step = step.name(), error = %e, "fast stop step failed");
                        error.get_or_insert(format!("`{name}`: {e}"));
                        let failed = Input::FastStopFailed {
                            group: self.group.name.clone(),
                            step,
                            resource: name,
                            reason: e.to_string(),
                        };
                        let _ = self.results.send(failed).await;
                    }
                }
            }
        }
    }

    /// Restarts a resource and everything above it: stop top-down, start bottom-up.
    async fn restart(&mut self, resource: &str) -> Input {
        let group = self.group.name.clone();
        let Some(idx) = self.resources.iter().position(|r| r.name == resource) else {
            return Input::Restarted {
                group,
                resource: resource.into(),
                ok: false,
                error: Some("unknown resource".into()),
            };
        };
        let affected = dependents_closure(&self.group, &self.order, idx);
        let mut steps = Vec::new();
        let mut error = None;
        for &i in affected.iter().rev() {
            if let Err(e) = self.stop_one(i, &mut steps).await {
                error.get_or_insert(e);
            }
        }
        if error.is_none() {
            for &i in &affected {
                if let Err(e) = self.start_one(i, &mut steps).await {
                    error = Some(e);
                    break;
                }
            }
        }
        if error.is_none() {
            if let Err(e) = self.first_checks(&affected).await {
                error = Some(e);
            }
        }
        Input::Restarted {
            group,
            resource: resource.into(),
            ok: error.is_none(),
            error,
        }
    }

    async fn probe_vip(&mut self) -> Input {
        let mut in_use = false;
        for r in &self.resources {
            let Some(spec) = r.agent.vip() else { continue };
            for ifname in &spec.interfaces {
                match crate::net::probe::address_in_use(ifname, spec.addr, self.vip_probe_timeout)
                    .await
                {
                    Ok(true) => {
                        in_use = true;
                        break;
                    }
                    Ok(false) => break,
                    Err(e) => {
                        tracing::debug!(%ifname, error = %e, "cannot probe here; trying the next interface");
                    }
                }
            }
        }
        Input::VipProbe {
            group: self.group.name.clone(),
            in_use,
        }
    }

    /// Built-in monitors every tick; quick and deep checks when due. Returns the first
    /// failure for the placement core.
    async fn monitor(&mut self) -> Option<Input> {
        let group = self.group.name.clone();
        for i in self.order.clone() {
            let name = self.resources[i].name.clone();
            match self.resources[i].agent.monitor().await {
                Monitor::Healthy => {}
                Monitor::Moved { from, to } => {
                    self.events.emit(
                        EventKind::IpMoved,
                        fields([
                            ("group", group.clone()),
                            ("resource", name.clone()),
                            ("from_interface", from),
                            ("to_interface", to),
                        ]),
                    );
                }
                Monitor::Failed(reason) => {
                    return Some(Input::CheckFailed {
                        group,
                        resource: name,
                        reason,
                    })
                }
                Monitor::Unrecoverable(reason) => {
                    if let Some(d) = self.resources[i].agent.shared_disk() {
                        let path = d.path().to_path_buf();
                        self.disk_lease_event(
                            EventKind::DiskLeaseLost,
                            &name,
                            &path,
                            ("reason", reason.clone()),
                        );
                        // Nobody may use the disk now: the fast stop's steps at once
                        // (processes frozen, floating IPs dropped); the clean stop follows.
                        let mut stopped = vec![false; self.resources.len()];
                        self.fast_stop(&mut stopped, &mut Vec::new(), &mut None)
                            .await;
                    }
                    return Some(Input::Unrecoverable {
                        group,
                        resource: name,
                        reason,
                    });
                }
            }
            let now = Instant::now();
            let env = self.env(&name);
            let r = &mut self.resources[i];
            for (kind, check, next) in [
                (CheckKind::Quickcheck, &r.quick, &mut r.next_quick),
                (CheckKind::Deepcheck, &r.deep, &mut r.next_deep),
            ] {
                let Some((c, interval)) = check else { continue };
                if now < *next {
                    continue;
                }
                *next = now + *interval;
                let started = Instant::now();
                let result = probe::run(&c.probe, c.timeout, &env).await;
                (self.observer)(Observed::Check(CheckDone {
                    group: &group,
                    resource: &name,
                    kind,
                    took: started.elapsed(),
                    error: result.as_ref().err().map(|e| e.to_string()),
                }));
                if let Err(e) = result {
                    return Some(Input::CheckFailed {
                        group,
                        resource: name,
                        reason: format!("{}: {e}", kind.name()),
                    });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An executor for the group in `toml`, with its results channel.
    fn executor(toml: &str) -> (Executor, mpsc::Receiver<Input>) {
        let group: GroupConfig = toml::from_str(toml).unwrap();
        let (results, rx) = mpsc::channel(16);
        let observer: Observer = Arc::new(|_: Observed<'_>| {});
        let mirrors = crate::mirror::node::LocalMirrors::new();
        let order = start_order(&group).unwrap();
        let exec = Executor {
            node: format!("exec-test-{}", std::process::id()),
            nbd_socket: None,
            order,
            resources: group
                .resources
                .iter()
                .map(|r| Res {
                    name: r.name.clone(),
                    agent: Agent::new(r, &mirrors, "exec-test", &group.name),
                    quick: None,
                    deep: None,
                    next_quick: Instant::now(),
                    next_deep: Instant::now(),
                })
                .collect(),
            group,
            events: EventLog::in_memory("exec-test"),
            observer,
            results,
            running: true,
            maintenance: false,
            vip_probe_timeout: Duration::from_millis(100),
            monitor_every: MONITOR_EVERY,
        };
        (exec, rx)
    }

    #[tokio::test]
    async fn reloaded_checks_are_taken_and_a_shorter_period_counts_from_now() {
        let group = "name = \"web\"\n[[resource]]\nname = \"app\"\nkind = \"process\"\ncommand = [\"sleep\", \"30\"]\n";
        let (mut exec, _rx) = executor(group);
        let config = |interval: &str| {
            Config::parse(&format!(
                "[cluster]\nname = \"t\"\nkey = \"0123456789abcdef\"\n\
                 [heartbeat]\npaths = [\"hb1\"]\n\
                 [[node]]\nname = \"a\"\npriority = 1\naddresses = {{ hb1 = \"10.0.0.1\" }}\n\
                 [[group]]\nname = \"web\"\n[[group.resource]]\nname = \"app\"\nkind = \"process\"\n\
                 command = [\"sleep\", \"30\"]\n\
                 quickcheck = {{ probe = \"tcp\", address = \"127.0.0.1:1\", interval = \"{interval}\" }}\n"
            ))
            .unwrap()
        };
        exec.take_checks(&config("30s"));
        let r = &mut exec.resources[0];
        assert_eq!(r.quick.as_ref().map(|q| q.1), Some(Duration::from_secs(30)));
        r.next_quick = Instant::now() + Duration::from_secs(30);
        exec.take_checks(&config("200ms"));
        let r = &exec.resources[0];
        assert_eq!(
            r.quick.as_ref().map(|q| q.1),
            Some(Duration::from_millis(200))
        );
        assert!(r.next_quick <= Instant::now() + Duration::from_millis(200));
        assert!(r.deep.is_none());
    }

    #[test]
    fn commands_are_told_where_the_shared_disk_and_its_data_are() {
        let (exec, _rx) = executor(
            r#"
name = "db"
[[resource]]
name = "disk"
kind = "shared_disk"
path = "/dev/sdb"
data_offset = 8192
"#,
        );
        let env = exec.env("disk");
        assert!(env.contains(&("TANDEM_SHARED_DISK".into(), "/dev/sdb".into())));
        assert!(env.contains(&("TANDEM_SHARED_DISK_OFFSET".into(), "8192".into())));
    }

    /// Group `db` with one `shared_disk` resource `disk` on `path`, with a short lease
    /// (renewed every 50 ms, timeout 800 ms, stop after 500 ms).
    fn shared_disk_group(path: &std::path::Path) -> String {
        format!(
            r#"
name = "db"
[[resource]]
name = "disk"
kind = "shared_disk"
path = "{}"
data_offset = 4096
io_timeout = "50ms"
renew_interval = "50ms"
lease_timeout = "800ms"
stop_after = "500ms"
"#,
            path.display()
        )
    }

    #[tokio::test]
    async fn a_shared_disk_reports_its_lease_taken_and_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let beat = dir.path().join("beat");
        let (mut exec, _rx) = executor(&format!(
            r#"{}
[[resource]]
name = "app"
kind = "process"
command = ["sh", "-c", "while :; do touch {}; sleep 0.02; done"]
depends_on = ["disk"]
"#,
            shared_disk_group(&path),
            beat.display()
        ));
        exec.start_one(0, &mut Vec::new()).await.unwrap();
        exec.start_one(1, &mut Vec::new()).await.unwrap();
        crate::lease::record::write_foreign(&path, "n3", 7, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some(Input::Unrecoverable { reason, .. }) = exec.monitor().await else {
            panic!("the lost lease is not reported");
        };
        assert!(reason.contains("another node's record"), "{reason}");
        let kinds: Vec<EventKind> = exec.events.since(0, 100).iter().map(|e| e.kind).collect();
        assert!(kinds.contains(&EventKind::DiskLeaseAcquired), "{kinds:?}");
        assert!(kinds.contains(&EventKind::DiskLeaseLost), "{kinds:?}");
        if super::super::cgroup::hierarchy().is_some() {
            let frozen_at = mtime_ns(&beat);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(mtime_ns(&beat), frozen_at, "the process stopped at once");
        }
        exec.stop(StopMode::TopDown).await;
    }

    /// A lost disk lease wakes the executor at once: with the built-in monitors' period
    /// set to a minute, the loss still reaches the placement core within a second or
    /// two of the foreign record (before, it waited for the next monitor pass).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_disk_lease_is_reported_without_waiting_for_the_monitor_period() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        let (mut exec, mut results) = executor(&shared_disk_group(&path));
        exec.monitor_every = Duration::from_secs(60);
        exec.running = false;
        let config = Config::parse(crate::config::TWO_NODES).unwrap();
        let (_config_tx, config_rx) = watch::channel(Arc::new(config));
        let (commands, rx) = mpsc::channel(4);
        let task = tokio::spawn(exec.run(rx, config_rx));
        commands
            .send(Command::Start {
                epoch: crate::mirror::generation::OwnershipEpoch(1),
            })
            .await
            .unwrap();
        let started = tokio::time::timeout(Duration::from_secs(5), results.recv()).await;
        assert!(
            matches!(started, Ok(Some(Input::Started { .. }))),
            "{started:?}"
        );
        let foreign = crate::lease::record::Record {
            node: "n3".into(),
            incarnation: 7,
            counter: 1,
        };
        let disk = crate::lease::disk::LeaseDisk::open(&path, 0).unwrap();
        let written = Instant::now();
        // Written again every 20 ms: a renewal that read the sector just before the
        // foreign write lands would overwrite it once.
        let lost = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                disk.write(&foreign.encode()).unwrap();
                if let Ok(input) =
                    tokio::time::timeout(Duration::from_millis(20), results.recv()).await
                {
                    return input;
                }
            }
        })
        .await;
        let Ok(Some(Input::Unrecoverable { reason, .. })) = lost else {
            panic!("the lost lease was not reported within 3 s: {lost:?}");
        };
        assert!(reason.contains("another node's record"), "{reason}");
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "{:?}",
            written.elapsed()
        );
        drop(commands);
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }

    #[tokio::test]
    async fn a_lost_lease_runs_the_fast_stop_steps_before_the_clean_stop() {
        let (mut exec, mut rx) = executor(
            r#"
name = "web"
[[resource]]
name = "vip"
kind = "ip"
address = "192.0.2.10/24"
interface = "tdm-absent0"
[[resource]]
name = "app"
kind = "process"
command = ["sleep", "30"]
depends_on = ["vip"]
"#,
        );
        exec.start_one(1, &mut Vec::new()).await.unwrap();
        let Input::Stopped {
            ok, error, steps, ..
        } = exec.stop(StopMode::LeaseLost).await
        else {
            panic!("not a stop report");
        };
        assert!(ok, "{error:?}");
        assert!(
            matches!(rx.try_recv(), Ok(Input::FastStopped { ok: true, .. })),
            "the end of the fast stop is reported before the clean stop's"
        );
        assert!(rx.try_recv().is_err(), "no fast stop step failed");
        let actions: Vec<(&str, &str)> = steps
            .iter()
            .map(|s| (s.resource.as_str(), s.action.as_str()))
            .collect();
        assert_eq!(
            actions,
            [
                ("vip", "fast_stop_floating_ip"),
                ("app", "fast_stop_freeze"),
                ("app", "stop"),
            ]
        );
    }

    /// The mtime of `path` in nanoseconds (0 if absent).
    fn mtime_ns(path: &std::path::Path) -> u128 {
        std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(|t| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn a_held_group_is_frozen_by_its_fast_stop_and_runs_on_once_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let beat = dir.path().join("beat");
        let script = format!("while :; do touch {}; sleep 0.02; done", beat.display());
        let toml = format!(
            r#"
name = "held"
[[resource]]
name = "app"
kind = "process"
command = ["sh", "-c", "{script}"]
"#
        );
        let (mut exec, mut rx) = executor(&toml);
        exec.start_one(0, &mut Vec::new()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(mtime_ns(&beat) > 0, "the process runs");
        let Input::FastStopped { ok, .. } = exec.fast_stop_only().await else {
            panic!("not a fast stop report");
        };
        assert!(ok, "{:?}", rx.try_recv());
        if super::super::cgroup::hierarchy().is_some() {
            let frozen_at = mtime_ns(&beat);
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(
                mtime_ns(&beat),
                frozen_at,
                "a held group's process is frozen"
            );
        }
        let Input::Resumed { ok, error, .. } = exec.resume().await else {
            panic!("not a resume report");
        };
        assert!(ok, "{error:?}");
        assert!(exec.running, "monitoring goes on");
        let resumed_at = mtime_ns(&beat);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(mtime_ns(&beat) > resumed_at, "the same process runs on");
        exec.stop(StopMode::TopDown).await;
    }

    #[test]
    fn a_lost_lease_drops_the_floating_ip_then_the_volume_then_the_rest_top_down() {
        // Started in the order vip (0), data (1), app (2), web (3): web depends on app.
        let order = [0, 1, 2, 3];
        let kinds = [
            Some(FastStopStep::FloatingIp),
            Some(FastStopStep::Mirror),
            Some(FastStopStep::Freeze),
            None,
        ];
        assert_eq!(
            stop_order(StopMode::TopDown, &order, &kinds),
            vec![3, 2, 1, 0]
        );
        assert_eq!(
            stop_order(StopMode::LeaseLost, &order, &kinds),
            vec![0, 1, 3, 2]
        );
    }
}
