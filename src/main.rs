//! The `tandem` binary: parses the command line, runs it, and maps errors to exit
//! codes (one place: [`MainError::exit_code`]): 0 success, 1 runtime failure, 2 bad
//! configuration or usage, 3 daemon unreachable, 4 request refused by the daemon,
//! 5 not found, 6 conflict with the current state, 7 timed out, 8 daemon unavailable,
//! 9 busy, 10 fencing failed (the node is not known to be off).

use std::process::ExitCode;

use clap::Parser;
use tandem::api::client::{call, call_bytes, Endpoint};
use tandem::api::ApiError;
use tandem::cli::plan::render_plan;
use tandem::cli::render;
use tandem::cli::{
    ApiArgs, Cli, Cmd, ConfigCmd, GroupCmd, ImageCmd, MetadataTarget, MirrorCmd, NbdCmd, NodeCmd,
    OnOff, PlanArgs,
};
use tandem::config::{Config, ConfigError};
use tandem::control::{ControlError, MirrorAction};
use tandem::event::{Event, Timeline};
use tandem::logging;
use tandem::mirror::plan::Plan;
use tandem::mirror::replica::dump::DumpInfo;
use tandem::status::MirrorStatus;
use tandem::status::Status;

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Runtime(#[from] tandem::runtime::RuntimeError),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Lab(#[from] tandem::lab::LabError),
    #[error(transparent)]
    Witness(#[from] tandem::witness::WitnessError),
    #[cfg(feature = "bench")]
    #[error(transparent)]
    SnmpBench(#[from] tandem::bench::snmp::SnmpBenchError),
    #[error(transparent)]
    Nbd(#[from] tandem::mirror::nbd::NbdError),
    #[error(transparent)]
    Volume(#[from] tandem::mirror::volume::VolumeError),
    #[cfg(feature = "bench")]
    #[error(transparent)]
    MirrorBench(#[from] tandem::bench::mirror::BenchError),
    #[error(transparent)]
    Image(#[from] tandem::image::ImageError),
    #[error(transparent)]
    Meta(#[from] tandem::mirror::replica::meta::MetaError),
    /// `tandem fence`: no method confirmed the wanted power state.
    #[error("{0}")]
    FenceFailed(String),
    #[error("{0}")]
    Other(String),
}

impl MainError {
    fn exit_code(&self) -> u8 {
        match self {
            MainError::Config(_) => 2,
            MainError::Runtime(tandem::runtime::RuntimeError::Config(_))
            | MainError::Runtime(tandem::runtime::RuntimeError::UnknownNode(_))
            | MainError::Witness(tandem::witness::WitnessError::Config(_)) => 2,
            MainError::Api(ApiError::Connect(..)) => 3,
            MainError::Api(ApiError::Status(_)) => 4,
            MainError::Api(ApiError::Control(e)) => match e {
                ControlError::Refused(_) => 4,
                ControlError::NotFound(_) => 5,
                ControlError::Conflict(_) => 6,
                ControlError::Timeout(_) => 7,
                ControlError::Unavailable(_) => 8,
                ControlError::Busy(_) => 9,
            },
            MainError::Image(tandem::image::ImageError::Unhealthy(..)) => 3,
            MainError::FenceFailed(_) => 10,
            MainError::Meta(
                tandem::mirror::replica::meta::MetaError::InUse { .. }
                | tandem::mirror::replica::meta::MetaError::AlreadyConverted(_),
            ) => 6,
            MainError::Nbd(tandem::mirror::nbd::NbdError::NoListener)
            | MainError::Volume(tandem::mirror::volume::VolumeError::NotFileOrBlockDevice {
                ..
            }) => 2,
            _ => 1,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The journal under systemd, a rotated file with --log-file, else stderr (colour
    // only on a terminal). The guard flushes the queued lines at exit.
    let sink = logging::choose(&logging::Surroundings::here(cli.log_file.as_deref()));
    let file_policy = tandem::rotate::Policy {
        max_bytes: cli.log_max_bytes,
        ..tandem::rotate::Policy::DEFAULT
    };
    let _flush_at_exit = logging::init(&sink, file_policy);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// This node's name: as given, or the host name.
fn node_name(node: Option<String>) -> Result<String, MainError> {
    match node {
        Some(n) => Ok(n),
        None => Ok(nix::unistd::gethostname()
            .map_err(|e| MainError::Other(format!("host name: {e}")))?
            .to_string_lossy()
            .into_owned()),
    }
}

/// `tandem mirror convert-metadata`: offline, on this node's copy.
fn convert_metadata(
    mirror: &str,
    to: MetadataTarget,
    config: &std::path::Path,
    node: Option<String>,
) -> Result<(), MainError> {
    use tandem::mirror::replica::meta::convert;
    let cfg = Config::load(config)?;
    let node = node_name(node)?;
    let m = cfg
        .mirrors
        .iter()
        .find(|m| m.name == mirror)
        .ok_or_else(|| MainError::Other(format!("no mirror named `{mirror}` in the config")))?;
    if !m.addresses.contains_key(&node) {
        return Err(MainError::Other(format!(
            "node `{node}` holds no copy of mirror `{mirror}`"
        )));
    }
    let spec = convert::ConvertSpec::from_config(m, &node, &cfg.cluster.state_dir);
    let (done, kind) = match to {
        MetadataTarget::Internal => (convert::to_internal(&spec)?, "internal"),
        MetadataTarget::External => (convert::to_external(&spec)?, "external"),
    };
    println!(
        "mirror `{mirror}` on `{node}`: metadata is now {kind}; data {} bytes, backing {} bytes, metadata area {} bytes",
        done.data_size, done.backing_size, done.area_bytes
    );
    if let Some(note) = done.note {
        println!("note: {note}");
    }
    println!("set `metadata = \"{kind}\"` for mirror `{mirror}` in the config before starting the daemon");
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, MainError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| MainError::Other(format!("cannot start the async runtime: {e}")))
}

fn endpoint(a: &ApiArgs) -> Endpoint {
    match &a.api {
        Some(addr) => Endpoint::Tcp {
            addr: addr.clone(),
            token: a.token.clone(),
        },
        None => Endpoint::Unix(a.socket.clone()),
    }
}

fn dispatch(cmd: Cmd) -> Result<(), MainError> {
    match cmd {
        Cmd::Lab { cmd } => Ok(tandem::lab::run(cmd)?),
        #[cfg(feature = "bench")]
        Cmd::Bench {
            cmd: tandem::cli::BenchCmd::Snmp(args),
        } => Ok(tandem::bench::snmp::run(&args)?),
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => {
            let cfg = Config::load(&file)?;
            println!(
                "{}: ok (cluster `{}`, {} nodes, {} groups)",
                file.display(),
                cfg.cluster.name,
                cfg.nodes.len(),
                cfg.groups.len()
            );
            println!("mode {}", tandem::status::TakeoverMode::for_config(&cfg));
            println!(
                "cluster digest {} (every node's file must give the same)",
                cfg.digest
            );
            for n in &cfg.nodes {
                if let Some(f) = &n.fence {
                    let methods: Vec<String> = tandem::fence::plan::methods(f)
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    println!(
                        "node `{}`: fencing through {} (delay {}s, timeout {}s)",
                        n.name,
                        methods.join(" then "),
                        f.delay.as_secs_f64(),
                        f.timeout.as_secs_f64()
                    );
                }
            }
            if let Some(w) = cfg.quorum_warning() {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        Cmd::Witness { config, check } => witness(&config, check),
        Cmd::Fence {
            node,
            config,
            off: _,
            on,
            status,
        } => {
            use tandem::fence::FenceAction;
            let action = match (on, status) {
                (true, _) => FenceAction::On,
                (_, true) => FenceAction::Status,
                _ => FenceAction::Off,
            };
            fence(&node, &config, action)
        }
        Cmd::Run { config, node } => {
            let cfg = Config::load(&config)?;
            let node = node_name(node)?;
            runtime()?.block_on(tandem::runtime::run(cfg, node))?;
            Ok(())
        }
        Cmd::Nbd { cmd } => runtime()?.block_on(nbd(cmd)),
        Cmd::Image { cmd } => image(cmd),
        #[cfg(feature = "bench")]
        Cmd::Bench {
            cmd: tandem::cli::BenchCmd::Mirror(args),
        } => Ok(tandem::bench::mirror::run(&args)?),
        Cmd::DemoService {
            listen,
            name,
            nbd_socket,
            data_dir,
        } => {
            let store = match (nbd_socket, data_dir) {
                (Some(s), _) => Some(tandem::demo::CounterStore::Volume(s)),
                (None, Some(d)) => Some(tandem::demo::CounterStore::Directory(d)),
                (None, None) => None,
            };
            runtime()?.block_on(tandem::demo::serve(listen, name, store))
        }
        .map_err(|e| MainError::Other(format!("demo service: {e}"))),
        Cmd::Generate { what, dir } => {
            for f in tandem::cli::generate::generate(what, &dir)
                .map_err(|e| MainError::Other(format!("{}: {e}", dir.display())))?
            {
                println!("{}", f.display());
            }
            Ok(())
        }
        other => runtime()?.block_on(admin(other)),
    }
}

/// `tandem witness`: validate (`--check`: also read the keys, then exit) or run.
fn witness(config: &std::path::Path, check: bool) -> Result<(), MainError> {
    use tandem::witness::{WitnessConfig, WitnessError};
    let cfg = WitnessConfig::load(config)?;
    if check {
        for (i, c) in cfg.clusters.iter().enumerate() {
            c.key_bytes(i).map_err(WitnessError::Config)?;
        }
        let clusters: Vec<String> = cfg
            .clusters
            .iter()
            .map(|c| {
                let nodes: Vec<&str> = c.nodes.keys().map(String::as_str).collect();
                format!("`{}` on port {} with {}", c.name, c.port, nodes.join(", "))
            })
            .collect();
        println!(
            "{}: ok (witness `{}`: {})",
            config.display(),
            cfg.witness.name,
            clusters.join("; ")
        );
        return Ok(());
    }
    runtime()?.block_on(tandem::witness::run(cfg))?;
    Ok(())
}

/// `tandem fence NODE`: one fence action through the node's `[node.fence]`; the
/// outcome on standard output, every failed method on standard error.
fn fence(
    node: &str,
    config: &std::path::Path,
    action: tandem::fence::FenceAction,
) -> Result<(), MainError> {
    use tandem::fence::FenceOutcome;
    let cfg = Config::load(config)?;
    let n = cfg.node(node).ok_or_else(|| ConfigError::Invalid {
        key: "node".into(),
        reason: format!("no [[node]] is named `{node}`"),
    })?;
    let f = n.fence.as_ref().ok_or_else(|| ConfigError::Invalid {
        key: format!("node `{node}`.fence"),
        reason: "missing: this node has no [node.fence] section".into(),
    })?;
    let outcome = runtime()?.block_on(tandem::fence::execute(node, f, action));
    match &outcome {
        FenceOutcome::Off { method, elapsed } => println!(
            "node `{node}`: fenced, power off ({method}, {:.1} s from the request)",
            elapsed.as_secs_f64()
        ),
        FenceOutcome::On { method, elapsed } => println!(
            "node `{node}`: power on ({method}, {:.1} s from the request)",
            elapsed.as_secs_f64()
        ),
        FenceOutcome::State { method, state } => {
            println!("node `{node}`: power {state} ({method})")
        }
        FenceOutcome::Failed { attempts } => {
            for (method, e) in attempts {
                eprintln!("tandem: fence `{node}` through {method}: {e}");
            }
            let what = match action {
                tandem::fence::FenceAction::Off => "NOT fenced: the power is not known to be off",
                tandem::fence::FenceAction::On => "the power is not known to be on",
                tandem::fence::FenceAction::Status => "the power state could not be read",
            };
            return Err(MainError::FenceFailed(format!("node `{node}`: {what}")));
        }
    }
    Ok(())
}

fn image_slot(slot: Option<String>) -> Result<tandem::image::Slot, MainError> {
    match slot {
        Some(s) => tandem::image::Slot::parse(&s)
            .ok_or_else(|| MainError::Other(format!("unknown slot `{s}` (a or b)"))),
        None => Ok(tandem::image::running_slot()?),
    }
}

fn image(cmd: ImageCmd) -> Result<(), MainError> {
    use tandem::image::{self as img, Esp};
    match cmd {
        ImageCmd::Status { esp } => print!("{}", img::describe(&Esp::new(esp))?),
        ImageCmd::Update { file, esp, slot } => {
            let u = img::update(&Esp::new(esp), &file, image_slot(slot)?)?;
            println!(
                "slot {} written ({} bytes), entry {}: it boots next, {} tries",
                u.slot,
                u.bytes,
                u.entry.file_name(),
                img::TRIES
            );
        }
        ImageCmd::Bless {
            esp,
            slot,
            wait,
            api,
        } => {
            let slot = image_slot(slot)?;
            if let Some(secs) = wait {
                runtime()?.block_on(img::wait_healthy(
                    &endpoint(&api),
                    std::time::Duration::from_secs(secs),
                ))?;
                println!("tandem: the daemon is healthy");
            }
            let e = img::bless(&Esp::new(esp), slot)?;
            println!("slot {slot} blessed ({})", e.file_name());
        }
        ImageCmd::BootCheck {
            esp,
            slot,
            firmware,
        } => {
            let fw = firmware.unwrap_or_else(img::Firmware::detect);
            let c = img::boot_check(&Esp::new(esp), image_slot(slot)?, fw)?;
            println!(
                "tandem: booted {} ({fw:?}); next boot unless blessed: slot {}",
                c.entry.file_name(),
                c.next.map_or("-", |s| s.name())
            );
        }
        ImageCmd::DefaultConfig { node, address } => {
            print!(
                "{}",
                img::default_config(&node, address, &img::random_key())
            )
        }
        ImageCmd::SyncLoader { esp } => {
            let next = img::Esp::new(esp).sync_loader()?;
            println!("syslinux.cfg: DEFAULT {}", next.map_or("-", |s| s.name()));
        }
    }
    Ok(())
}

async fn nbd(cmd: NbdCmd) -> Result<(), MainError> {
    let NbdCmd::Serve {
        file,
        socket,
        tcp,
        name,
        read_only,
    } = cmd;
    let volume = tandem::mirror::volume::Volume::open(&file, read_only)?;
    let tcp = match (&socket, tcp) {
        (None, None) => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 10809))),
        (_, tcp) => tcp,
    };
    let config = tandem::mirror::nbd::ServerConfig {
        name,
        description: file.display().to_string(),
        unix: socket.clone(),
        tcp,
        metrics: None,
    };
    let server = tandem::mirror::nbd::NbdServer::bind(config).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| MainError::Other(format!("signal: {e}")))?;
    let served = tokio::select! {
        () = server.run(std::sync::Arc::new(volume)) => Ok(()),
        r = tokio::signal::ctrl_c() => r.map_err(|e| MainError::Other(format!("signal: {e}"))),
        _ = terminate.recv() => Ok(()),
    };
    if let Some(path) = socket {
        let _ = std::fs::remove_file(path);
    }
    served
}

async fn admin(cmd: Cmd) -> Result<(), MainError> {
    match cmd {
        Cmd::Status { api } => {
            let st: Status = call(&endpoint(&api), "GET", "/v1/status", None).await?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
            } else {
                render::print_status(&st);
            }
        }
        Cmd::History { api, events_since } => {
            let ep = endpoint(&api);
            let tls: Vec<Timeline> = call(&ep, "GET", "/v1/history", None).await?;
            let events: Vec<Event> = match events_since {
                Some(s) => {
                    call(
                        &ep,
                        "GET",
                        &format!("/v1/events?since={s}&limit=10000"),
                        None,
                    )
                    .await?
                }
                None => Vec::new(),
            };
            if api.json {
                let v = serde_json::json!({ "timelines": tls, "events": events });
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                render::print_history(&tls, &events);
            }
        }
        Cmd::Switchover {
            group,
            to,
            timeout,
            api,
        } => {
            let body = serde_json::json!({ "to": to, "timeout_ms": timeout * 1000 });
            let r: serde_json::Value = call(
                &endpoint(&api),
                "POST",
                &format!("/v1/groups/{group}/switchover"),
                Some(body),
            )
            .await?;
            println!(
                "group `{group}` now runs on `{}` ({} ms)",
                r["node"].as_str().unwrap_or("?"),
                r["duration_ms"]
            );
        }
        Cmd::Node { cmd } => {
            let (node, api, action) = match cmd {
                NodeCmd::Standby { node, api } => (node, api, "standby"),
                NodeCmd::Online { node, api } => (node, api, "online"),
            };
            let _: serde_json::Value = call(
                &endpoint(&api),
                "POST",
                &format!("/v1/nodes/{node}/{action}"),
                None,
            )
            .await?;
            println!("node `{node}`: {action}");
        }
        Cmd::Group {
            cmd: GroupCmd::Maintenance { group, state, api },
        } => {
            let on = matches!(state, OnOff::On);
            let _: serde_json::Value = call(
                &endpoint(&api),
                "POST",
                &format!("/v1/groups/{group}/maintenance"),
                Some(serde_json::json!({ "on": on })),
            )
            .await?;
            println!(
                "group `{group}`: maintenance {}",
                if on { "on" } else { "off" }
            );
        }
        Cmd::Mirror { cmd } => mirror(cmd).await?,
        _ => unreachable!("handled in dispatch"),
    }
    Ok(())
}

/// `tandem mirror split-brain-dump`: lists the dumps, or saves one with --output.
async fn split_brain_dump(
    mirror: &str,
    output: Option<std::path::PathBuf>,
    name: Option<String>,
    api: &tandem::cli::ApiArgs,
) -> Result<(), MainError> {
    let ep = endpoint(api);
    let Some(output) = output else {
        let dumps: Vec<DumpInfo> = call(
            &ep,
            "GET",
            &format!("/v1/mirrors/{mirror}/split-brain-dumps"),
            None,
        )
        .await?;
        if api.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&dumps).unwrap_or_default()
            );
        } else {
            render::print_split_brain_dumps(&dumps);
        }
        return Ok(());
    };
    let which = name.unwrap_or_else(|| "latest".into());
    let bytes = call_bytes(
        &ep,
        "GET",
        &format!("/v1/mirrors/{mirror}/split-brain-dumps/{which}"),
        None,
    )
    .await?;
    std::fs::write(&output, &bytes)
        .map_err(|e| MainError::Other(format!("{}: {e}", output.display())))?;
    println!("wrote {} bytes to {}", bytes.len(), output.display());
    Ok(())
}

/// `tandem mirror plan NAME`: the API sizes, the CLI prints.
async fn mirror_plan(a: &PlanArgs) -> Result<(), MainError> {
    let mut query = format!(
        "lag={}ms&percentile={}&efficiency={}",
        a.lag.as_millis(),
        a.percentile,
        a.efficiency
    );
    if let Some(c) = a.compression {
        query.push_str(&format!("&compression={c}"));
    }
    let path = format!("/v1/mirrors/{}/plan?{query}", a.mirror);
    let plan: Plan = call(&endpoint(&a.api), "GET", &path, None).await?;
    if a.api.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan).unwrap_or_default()
        );
    } else {
        print!("{}", render_plan(&plan));
    }
    Ok(())
}

async fn mirror(cmd: MirrorCmd) -> Result<(), MainError> {
    let (target, action) = match cmd {
        MirrorCmd::Status { mirror, api } => {
            let mut all: Vec<MirrorStatus> =
                call(&endpoint(&api), "GET", "/v1/mirrors", None).await?;
            if let Some(name) = &mirror {
                all.retain(|m| &m.name == name);
                if all.is_empty() {
                    return Err(MainError::Other(format!("no mirror named `{name}` here")));
                }
            }
            if api.json {
                println!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
            } else {
                render::print_mirrors(&all);
            }
            return Ok(());
        }
        MirrorCmd::Pause(t) => (t, MirrorAction::Pause),
        MirrorCmd::Resume(t) => (t, MirrorAction::Resume),
        MirrorCmd::Verify(t) => (t, MirrorAction::Verify),
        MirrorCmd::Resync { target, full } => {
            if !full {
                return Err(MainError::Other(
                    "a partial resync runs by itself whenever a peer is behind; use --full to resync every used block".into(),
                ));
            }
            (target, MirrorAction::ResyncFull)
        }
        MirrorCmd::Disconnect(t) => (t, MirrorAction::Disconnect),
        MirrorCmd::Connect(t) => (t, MirrorAction::Connect),
        MirrorCmd::Resolve { mirror, keep, api } => {
            let _: serde_json::Value = call(
                &endpoint(&api),
                "POST",
                &format!("/v1/mirrors/{mirror}/resolve"),
                Some(serde_json::json!({ "keep": keep })),
            )
            .await?;
            println!("mirror `{mirror}`: keeping the copy on `{keep}`; the copies in split brain with it are saved to a dump and resynced from it");
            return Ok(());
        }
        MirrorCmd::SplitBrainDump {
            mirror,
            output,
            name,
            api,
        } => return split_brain_dump(&mirror, output, name, &api).await,
        MirrorCmd::Plan(args) => return mirror_plan(&args).await,
        // Offline: the mirror must not be open, so the daemon is not asked.
        MirrorCmd::ConvertMetadata {
            mirror,
            to,
            config,
            node,
        } => return convert_metadata(&mirror, to, &config, node),
    };
    let name = serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let _: serde_json::Value = call(
        &endpoint(&target.api),
        "POST",
        &format!("/v1/mirrors/{}/{name}", target.mirror),
        Some(serde_json::json!({ "peer": target.peer })),
    )
    .await?;
    println!(
        "mirror `{}`{}: {}",
        target.mirror,
        target
            .peer
            .as_deref()
            .map(|p| format!(" peer `{p}`"))
            .unwrap_or_default(),
        name.replace('_', " ")
    );
    Ok(())
}
