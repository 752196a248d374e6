//! The `tandem` binary: parses the command line, runs it, and maps errors to exit
//! codes (one place: [`MainError::exit_code`]): 0 success, 1 runtime failure, 2 bad
//! configuration or usage, 3 daemon unreachable, 4 request refused (by the daemon, or
//! an image whose signature does not hold), 5 not found, 6 conflict with the current
//! state, 7 timed out, 8 daemon unavailable, 9 busy, 10 fencing failed (the node is
//! not known to be off).

use std::process::ExitCode;

use clap::Parser;
use tandem::api::client::{call, call_bytes, Endpoint};
use tandem::api::ApiError;
use tandem::cli::plan::render_plan;
use tandem::cli::render;
use tandem::cli::wait::{MirrorOp, MirrorWait, WaitError};
use tandem::cli::{
    ApiArgs, Cli, Cmd, ConfigCmd, ConsolePasswordCmd, GroupCmd, ImageCmd, MetadataTarget,
    MirrorCmd, NbdCmd, NodeCmd, OnOff, PlanArgs, WaitArgs,
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
    Console(#[from] tandem::image::console::ConsoleError),
    #[error(transparent)]
    Meta(#[from] tandem::mirror::replica::meta::MetaError),
    #[error(transparent)]
    Users(#[from] tandem::cli::user::UserCmdError),
    #[error(transparent)]
    WebConsole(#[from] tandem::console::ConsoleError),
    /// `tandem fence`: no method confirmed the wanted power state.
    #[error("{0}")]
    FenceFailed(String),
    /// `tandem config push`: a node did not take the file, or its digest differs.
    #[error("config push: {0}")]
    Push(String),
    #[error("{0}")]
    Other(String),
}

impl From<WaitError> for MainError {
    fn from(e: WaitError) -> MainError {
        match e {
            WaitError::Api(e) => MainError::Api(e),
            WaitError::TimedOut(m) => MainError::Api(ApiError::Control(ControlError::Timeout(m))),
            WaitError::Failed(m) => MainError::Other(m),
        }
    }
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
            // An image whose signature does not hold is refused.
            MainError::Image(tandem::image::ImageError::Sign(e)) if e.is_refusal() => 4,
            MainError::FenceFailed(_) => 10,
            MainError::Users(tandem::cli::user::UserCmdError::Config(_)) => 2,
            MainError::Users(tandem::cli::user::UserCmdError::Users(
                tandem::console::users::UsersError::NotFound(_),
            )) => 5,
            MainError::Users(tandem::cli::user::UserCmdError::Users(
                tandem::console::users::UsersError::Exists(_),
            )) => 6,
            MainError::Users(tandem::cli::user::UserCmdError::Users(
                tandem::console::users::UsersError::BadName(_)
                | tandem::console::users::UsersError::ShortPassword,
            )) => 2,
            MainError::Push(_) => 1,
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

/// `tandem config init`: the template, checked by the same parser the daemon uses,
/// to stdout or to a new file of mode 0600 (it holds the key).
fn config_init(
    cluster: &str,
    nodes: usize,
    output: Option<&std::path::Path>,
) -> Result<(), MainError> {
    let text = tandem::config::init::template(cluster, nodes, &tandem::config::init::random_key())?;
    Config::parse(&text)?;
    let Some(path) = output else {
        print!("{text}");
        return Ok(());
    };
    write_private_file(path, text.as_bytes())?;
    eprintln!(
        "{}: {nodes} node(s), a fresh key, mode 0600; replace the addresses marked REPLACE",
        path.display()
    );
    Ok(())
}

/// Writes a new file (never over an existing one) that only its owner can read, and
/// syncs it: for files that hold a key.
fn write_private_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), MainError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| MainError::Other(format!("{}: {e}", path.display()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(fail)
}

/// `tandem image update FILE|URL`: a URL goes to the daemon, a file is written here;
/// either way only an image signed by a trusted key is written.
fn image_update(args: tandem::cli::ImageUpdateArgs) -> Result<(), MainError> {
    use tandem::image as img;
    let tandem::cli::ImageUpdateArgs {
        source,
        esp,
        slot,
        trusted_keys,
        timeout,
        api,
    } = args;
    if source.starts_with("http://") || source.starts_with("https://") {
        return remote_image_update(&api, &source, std::time::Duration::from_secs(timeout));
    }
    let file = std::path::Path::new(&source);
    let (esp, running) = (img::Esp::new(esp), image_slot(slot)?);
    let u = img::install_signed(&esp, file, running, &trusted_keys, |by| {
        println!(
            "{}: signature good (key {})",
            file.display(),
            hex::encode(by.to_bytes())
        )
    })?;
    println!(
        "slot {} written ({} bytes), entry {}: it boots next, {} tries",
        u.slot,
        u.bytes,
        u.entry.file_name(),
        img::TRIES
    );
    Ok(())
}

/// `tandem image update URL`: the daemon downloads, checks and writes; its progress is
/// shown until it is done. A signature refusal exits as the local one does (4).
fn remote_image_update(
    api: &ApiArgs,
    url: &str,
    timeout: std::time::Duration,
) -> Result<(), MainError> {
    use tandem::image::job::{Failure, UpdateProgress, UpdateState};
    let ep = endpoint(api);
    let p = runtime()?.block_on(async {
        let body = serde_json::json!({ "url": url });
        let _: UpdateProgress = call(&ep, "POST", "/v1/image/update", Some(body)).await?;
        tandem::cli::wait::until_image_updated(&ep, timeout).await
    })?;
    let error = p
        .error
        .clone()
        .unwrap_or_else(|| "the daemon has no record of it (did it restart?)".into());
    match p.failure {
        _ if p.state == UpdateState::Done => {
            let text = format!(
                "slot {} written from {url}, entry {}: it boots next, {} tries",
                p.slot.map_or("-", |s| s.name()),
                p.entry.as_deref().unwrap_or("-"),
                tandem::image::TRIES
            );
            print_done(api, &serde_json::to_value(&p).unwrap_or_default(), &text);
            Ok(())
        }
        Some(Failure::Signature) => Err(MainError::Api(ApiError::Control(ControlError::Refused(
            error,
        )))),
        Some(Failure::Download | Failure::Image) | None => Err(MainError::Other(format!(
            "image update from {url} failed: {error}"
        ))),
    }
}

/// `tandem console-cert`: the line the appliance adds to its login banner.
fn console_cert(config: &std::path::Path, node: &str) -> Result<(), MainError> {
    let cfg = tandem::config::Config::load(config)?;
    if let Some((_, view)) = tandem::console::identity(&cfg, node)? {
        println!(
            "https://{}/ certificate SHA-256 {}",
            view.address, view.fingerprint
        );
    }
    Ok(())
}

/// `tandem console-password ...`.
fn console_password(cmd: ConsolePasswordCmd) -> Result<(), MainError> {
    use tandem::image::console;
    match cmd {
        ConsolePasswordCmd::Set { file, passwd } => {
            console::set(&read_password()?, &file, &passwd)?;
            println!("console password set ({})", file.display());
        }
        ConsolePasswordCmd::Hash => println!("{}", console::hash(&read_password()?)?),
        ConsolePasswordCmd::Boot { file, passwd } => {
            if let console::Boot::Generated(pw) = console::boot(&file, &passwd)? {
                print!("{}", console::first_boot_note(&pw));
            }
        }
    }
    Ok(())
}

/// A new console user's password: one line of standard input with `--password-stdin`,
/// else asked for twice on the terminal.
fn user_password(from_stdin: bool) -> Result<String, String> {
    use std::io::IsTerminal;
    if !from_stdin && !std::io::stdin().is_terminal() {
        return Err("no terminal to ask for the password: use --password-stdin".into());
    }
    read_password().map_err(|e| e.to_string())
}

/// One line of standard input, without its line end; not echoed when it is a
/// terminal (asked for twice there, and both must match).
fn read_password() -> Result<String, MainError> {
    use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    let read_line = || -> Result<String, MainError> {
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .map_err(|e| MainError::Other(format!("standard input: {e}")))?;
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    };
    if !stdin.is_terminal() {
        return read_line();
    }
    let saved = tcgetattr(&stdin).map_err(|e| MainError::Other(format!("terminal: {e}")))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &quiet);
    eprint!("password: ");
    let first = read_line();
    eprint!("\nagain: ");
    let second = read_line();
    eprintln!();
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    let (first, second) = (first?, second?);
    if first != second {
        return Err(MainError::Other("the two passwords differ".into()));
    }
    Ok(first)
}

/// `tandem image keygen`: the secret key to `output` (mode 0600, a new file), the
/// public key to `output.pub` and stdout.
fn image_keygen(output: &std::path::Path) -> Result<(), MainError> {
    let (secret, public) = tandem::image::sign::generate_key();
    let public_path = output.with_extension("pub");
    write_private_file(output, format!("{secret}\n").as_bytes())?;
    std::fs::write(&public_path, format!("{public}\n"))
        .map_err(|e| MainError::Other(format!("{}: {e}", public_path.display())))?;
    println!("{public}");
    eprintln!(
        "secret key {} (keep it off the appliances), public key {}",
        output.display(),
        public_path.display()
    );
    Ok(())
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
    let (now, from) = cfg.mirror_metadata(m);
    if now.name() == kind {
        println!("the config already gives mirror `{mirror}` {kind} metadata ({from})");
    } else {
        println!("set `metadata = \"{kind}\"` for mirror `{mirror}` in the config before starting the daemon");
    }
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
        Cmd::Config { cmd } => config(cmd),
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
            runtime()?.block_on(tandem::runtime::run(cfg, config, node))?;
            Ok(())
        }
        Cmd::Nbd { cmd } => runtime()?.block_on(nbd(cmd)),
        Cmd::Image { cmd } => image(cmd),
        Cmd::ConsoleCert { config, node } => console_cert(&config, &node),
        Cmd::ConsolePassword { cmd } => console_password(cmd),
        Cmd::User { cmd } => {
            print!("{}", tandem::cli::user::user(cmd, user_password)?);
            Ok(())
        }
        Cmd::Token { cmd } => {
            print!("{}", tandem::cli::user::token(cmd)?);
            Ok(())
        }
        #[cfg(feature = "bench")]
        Cmd::Bench {
            cmd: tandem::cli::BenchCmd::Mirror(args),
        } => Ok(tandem::bench::mirror::run(&args)?),
        Cmd::DemoService {
            listen,
            name,
            nbd_socket,
            data_dir,
            shared_disk,
            shared_disk_offset,
            self_write_ms,
        } => {
            use tandem::demo::CounterStore;
            // The daemon's TANDEM_NBD_SOCKET and TANDEM_SHARED_DISK only stand in for a
            // missing choice: a command with --data-dir (a filesystem on the mirror)
            // keeps its directory.
            let env = |name: &str| std::env::var_os(name).map(std::path::PathBuf::from);
            let disk = |path| CounterStore::Disk {
                path,
                offset: shared_disk_offset,
            };
            let store = match (nbd_socket, data_dir, shared_disk) {
                (Some(s), _, _) => Some(CounterStore::Volume(s)),
                (None, Some(d), _) => Some(CounterStore::Directory(d)),
                (None, None, Some(p)) => Some(disk(p)),
                (None, None, None) => env("TANDEM_NBD_SOCKET")
                    .map(CounterStore::Volume)
                    .or_else(|| env("TANDEM_SHARED_DISK").map(disk)),
            };
            let self_write = self_write_ms.map(std::time::Duration::from_millis);
            runtime()?.block_on(tandem::demo::serve(listen, name, store, self_write))
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

/// `tandem config check` and `init`.
fn config(cmd: ConfigCmd) -> Result<(), MainError> {
    match cmd {
        ConfigCmd::Check { file } => {
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
            for m in &cfg.mirrors {
                let (kind, from) = cfg.mirror_metadata(m);
                println!("mirror `{}`: metadata {} ({from})", m.name, kind.name());
            }
            if let Some(w) = cfg.quorum_warning() {
                eprintln!("warning: {w}");
            }
            Ok(())
        }
        ConfigCmd::Init {
            nodes,
            cluster,
            output,
        } => config_init(&cluster, nodes.into(), output.as_deref()),
        ConfigCmd::Push { file, token, json } => {
            runtime()?.block_on(config_push(&file, token, json))
        }
        ConfigCmd::Reload { api } => runtime()?.block_on(config_reload(&api)),
    }
}

/// `tandem config push`: validated here first, then sent to every node at once.
async fn config_push(
    file: &std::path::Path,
    token: Option<String>,
    json: bool,
) -> Result<(), MainError> {
    use tandem::cli::push;
    let text = std::fs::read_to_string(file)
        .map_err(|e| MainError::Other(format!("{}: {e}", file.display())))?;
    let cfg = Config::parse(&text)?;
    let targets = push::targets(&cfg).map_err(MainError::Push)?;
    let token = token.or_else(|| cfg.api.token.clone());
    let results = push::push(&text, &targets, token).await;
    if json {
        let v = serde_json::json!({ "digest": cfg.digest, "nodes": results });
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", push::render(&results));
    }
    push::verdict(&cfg.digest, &results).map_err(MainError::Push)
}

/// `tandem config reload` on the node the API reaches.
async fn config_reload(api: &ApiArgs) -> Result<(), MainError> {
    let o: tandem::config::reload::ReloadOutcome =
        call(&endpoint(api), "POST", "/v1/config/reload", None).await?;
    let list = tandem::cli::push::list;
    let text = format!(
        "configuration reloaded (digest {})\napplied: {}\nneeds restart: {}",
        o.digest,
        list(&o.applied),
        list(&o.needs_restart)
    );
    print_done(api, &serde_json::to_value(&o).unwrap_or_default(), &text);
    Ok(())
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
        ImageCmd::Status { esp } => print!(
            "{}",
            img::describe(&Esp::new(esp), img::running_slot().ok())?
        ),
        ImageCmd::Rollback { esp, slot } => {
            let e = img::rollback(&Esp::new(esp), image_slot(slot)?)?;
            println!(
                "slot {} boots next ({}); reboot to run it",
                e.slot,
                e.file_name()
            );
        }
        ImageCmd::PublicKey { key } => {
            println!(
                "{}",
                img::sign::public_key(&key).map_err(img::ImageError::from)?
            )
        }
        ImageCmd::Update(args) => image_update(args)?,
        ImageCmd::Keygen { output } => image_keygen(&output)?,
        ImageCmd::Sign { key, file } => {
            let sig = img::sign::sign(&file, &key).map_err(img::ImageError::from)?;
            println!("{}", sig.display());
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
                if !api.json {
                    println!("tandem: the daemon is healthy");
                }
            }
            let e = img::bless(&Esp::new(esp), slot)?;
            let answer = serde_json::json!({
                "slot": slot.name(),
                "entry": e.file_name(),
                "daemon_healthy": wait.is_some(),
            });
            print_done(
                &api,
                &answer,
                &format!("slot {slot} blessed ({})", e.file_name()),
            );
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
                img::default_config(&node, address, &tandem::config::init::random_key())
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
            let ep = endpoint(&api);
            let st: Status = call(&ep, "GET", "/v1/status", None).await?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&st).unwrap_or_default());
            } else {
                let tls: Vec<Timeline> = call(&ep, "GET", "/v1/history", None).await?;
                render::print_status(&st, &tls);
            }
        }
        Cmd::Events { since, follow, api } => {
            tandem::cli::follow::run(&endpoint(&api), since, follow, api.json).await?
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
            let r = switchover(&endpoint(&api), &group, to, timeout).await?;
            let text = format!(
                "group `{group}` now runs on `{}` ({} ms)",
                r["node"].as_str().unwrap_or("?"),
                r["duration_ms"]
            );
            print_done(&api, &r, &text);
        }
        Cmd::Node { cmd } => {
            let (node, api, action, wait, mark) = match cmd {
                NodeCmd::Standby {
                    node,
                    wait,
                    api,
                    if_online_mark,
                } => (node, api, "standby", Some(wait), if_online_mark),
                NodeCmd::Online { node, api } => (node, api, "online", None, None),
            };
            let ep = endpoint(&api);
            if let Some(mark) = mark {
                if !mark_if_online(&ep, &node, &mark).await? {
                    let r = serde_json::json!({ "node": node, "standby": true, "changed": false });
                    print_done(&api, &r, &format!("node `{node}` is already in standby"));
                    return Ok(());
                }
            }
            let r: serde_json::Value =
                call(&ep, "POST", &format!("/v1/nodes/{node}/{action}"), None).await?;
            let mut text = format!("node `{node}`: {action}");
            if let Some(w) = wait.filter(|w| w.wait) {
                let timeout = std::time::Duration::from_secs(w.timeout);
                text = tandem::cli::wait::until_handed_off(&ep, &node, timeout).await?;
            }
            print_done(&api, &r, &text);
        }
        Cmd::Group { cmd } => group(cmd).await?,
        Cmd::Mirror { cmd } => mirror(cmd).await?,
        _ => unreachable!("handled in dispatch"),
    }
    Ok(())
}

/// `node standby --if-online-mark FILE`: whether `node` is online; if so, FILE is
/// created (and synced) before the node is put in standby.
async fn mark_if_online(
    ep: &Endpoint,
    node: &str,
    mark: &std::path::Path,
) -> Result<bool, MainError> {
    let nodes: Vec<tandem::status::NodeStatus> = call(ep, "GET", "/v1/nodes", None).await?;
    let Some(n) = nodes.iter().find(|n| n.name == node) else {
        let e = ControlError::NotFound(format!("no node `{node}` in the cluster"));
        return Err(MainError::Api(ApiError::Control(e)));
    };
    if n.standby {
        return Ok(false);
    }
    let io = |e: std::io::Error| MainError::Other(format!("{}: {e}", mark.display()));
    std::fs::File::create(mark)
        .and_then(|f| f.sync_all())
        .map_err(io)?;
    Ok(true)
}

/// `tandem group maintenance|clear`.
async fn group(cmd: GroupCmd) -> Result<(), MainError> {
    match cmd {
        GroupCmd::Maintenance { group, state, api } => {
            let on = matches!(state, OnOff::On);
            let r: serde_json::Value = call(
                &endpoint(&api),
                "POST",
                &format!("/v1/groups/{group}/maintenance"),
                Some(serde_json::json!({ "on": on })),
            )
            .await?;
            let text = format!(
                "group `{group}`: maintenance {}",
                if on { "on" } else { "off" }
            );
            print_done(&api, &r, &text);
        }
        GroupCmd::Clear { group, node, api } => {
            let r: serde_json::Value = call(
                &endpoint(&api),
                "POST",
                &format!("/v1/groups/{group}/clear"),
                Some(serde_json::json!({ "node": node })),
            )
            .await?;
            print_done(
                &api,
                &r,
                &format!("group `{group}`: failures and block cleared"),
            );
        }
    }
    Ok(())
}

/// Prints a command's answer: its JSON with `--json`, else `text`.
fn print_done(api: &ApiArgs, answer: &serde_json::Value, text: &str) {
    if api.json {
        println!(
            "{}",
            serde_json::to_string_pretty(answer).unwrap_or_default()
        );
    } else {
        println!("{text}");
    }
}

/// `tandem switchover`: the request waits for the move; meanwhile the group's state on
/// each live node is shown as progress (on a bar on a terminal, else a line every few
/// seconds).
async fn switchover(
    ep: &tandem::api::client::Endpoint,
    group: &str,
    to: Option<String>,
    timeout: u64,
) -> Result<serde_json::Value, MainError> {
    let body = serde_json::json!({ "to": to, "timeout_ms": timeout * 1000 });
    let path = format!("/v1/groups/{group}/switchover");
    let request = call::<serde_json::Value>(ep, "POST", &path, Some(body));
    let mut shown = tandem::cli::wait::Shown::new(&format!("switchover of `{group}`"));
    let watch = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            let st: Result<Status, _> = call(ep, "GET", "/v1/status", None).await;
            let states = st.ok().and_then(|st| {
                let g = st.groups.into_iter().find(|g| g.name == group)?;
                Some(tandem::cli::wait::group_states(&g.states))
            });
            shown.note(states.unwrap_or_default());
        }
    };
    let r = tokio::select! {
        r = request => r,
        () = watch => unreachable!("the watch never ends"),
    };
    shown.finish(String::new());
    Ok(r?)
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
    let answer = serde_json::json!({ "bytes": bytes.len(), "output": output });
    let text = format!("wrote {} bytes to {}", bytes.len(), output.display());
    print_done(api, &answer, &text);
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
    let (target, action, wait) = match cmd {
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
        MirrorCmd::Pause(t) => (t, MirrorAction::Pause, None),
        MirrorCmd::Resume(t) => (t, MirrorAction::Resume, None),
        MirrorCmd::Verify { target, wait } => (
            target,
            MirrorAction::Verify,
            waiting(wait, MirrorOp::Verify),
        ),
        MirrorCmd::Resync { target, full, wait } => {
            if !full {
                return Err(MainError::Other(
                    "a partial resync runs by itself whenever a peer is behind; use --full to resync every used block".into(),
                ));
            }
            (
                target,
                MirrorAction::ResyncFull,
                waiting(wait, MirrorOp::Resync),
            )
        }
        MirrorCmd::Disconnect(t) => (t, MirrorAction::Disconnect, None),
        MirrorCmd::Connect { target, wait } => (
            target,
            MirrorAction::Connect,
            waiting(wait, MirrorOp::Connect),
        ),
        MirrorCmd::Resolve { mirror, keep, api } => {
            let r: serde_json::Value = call(
                &endpoint(&api),
                "POST",
                &format!("/v1/mirrors/{mirror}/resolve"),
                Some(serde_json::json!({ "keep": keep })),
            )
            .await?;
            print_done(&api, &r, &format!("mirror `{mirror}`: keeping the copy on `{keep}`; the copies in split brain with it are saved to a dump and resynced from it"));
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
    mirror_action(&target, action, wait).await
}

/// The operation to wait for, if `--wait` was given.
fn waiting(w: WaitArgs, op: MirrorOp) -> Option<(MirrorOp, std::time::Duration)> {
    w.wait
        .then(|| (op, std::time::Duration::from_secs(w.timeout)))
}

/// `tandem mirror pause|resume|verify|resync|disconnect|connect`: the request, then
/// with `--wait` the wait until it is done.
async fn mirror_action(
    target: &tandem::cli::MirrorTarget,
    action: MirrorAction,
    wait: Option<(MirrorOp, std::time::Duration)>,
) -> Result<(), MainError> {
    let name = serde_json::to_value(action)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let ep = endpoint(&target.api);
    let waiter = wait.map(|(op, timeout)| MirrorWait {
        ep: &ep,
        mirror: &target.mirror,
        peer: target.peer.as_deref(),
        op,
        timeout,
    });
    let before = match &waiter {
        Some(w) => Some(w.baseline().await?),
        None => None,
    };
    let r: serde_json::Value = call(
        &ep,
        "POST",
        &format!("/v1/mirrors/{}/{name}", target.mirror),
        Some(serde_json::json!({ "peer": target.peer })),
    )
    .await?;
    let peer = target
        .peer
        .as_deref()
        .map(|p| format!(" peer `{p}`"))
        .unwrap_or_default();
    let mut text = format!(
        "mirror `{}`{peer}: {}",
        target.mirror,
        name.replace('_', " ")
    );
    let mut answer = r;
    if let (Some(w), Some(before)) = (waiter, before) {
        let done = w.until_done(&before).await?;
        text.push_str(&format!(": done, {done}"));
        answer["done"] = serde_json::Value::String(done);
    }
    print_done(&target.api, &answer, &text);
    Ok(())
}
