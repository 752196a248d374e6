//! `tandem bench mirror`: write throughput of an NBD export, measured with `nbdcopy`
//! from a file of random data into a fresh sparse file served by Tandem (no peer),
//! `nbdkit file` and `qemu-nbd`, each with its default cache mode, on a Unix socket.
//! Source and targets live in one directory, so on one file system. Then QD1 4 KiB
//! write latency with fio (`latency`), and the rows with a peer (`replicated`), whose
//! CPU time per side is counted by `cpu`.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use tracing::info;

mod cpu;
mod latency;
pub mod mixed;
mod replicated;

/// Options of `tandem bench mirror`.
#[derive(Debug, Clone, Args)]
pub struct MirrorBenchArgs {
    /// Bytes copied per run, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Runs per server; the best run is reported.
    #[arg(long, default_value_t = 1)]
    pub runs: u32,
    /// Directory for the source and target files (a scratch subdirectory is made).
    #[arg(long, default_value_os_t = std::env::temp_dir())]
    pub dir: PathBuf,
    /// Skip the rows with a peer (they need root: two network namespaces and a veth).
    #[arg(long)]
    pub no_peer: bool,
    /// MiB changed while the peer is disconnected, for the resync figures.
    #[arg(long, default_value_t = 256)]
    pub resync_mib: u64,
    /// The tbf cap on the replication link during the resync, in Mbit/s.
    #[arg(long, default_value_t = 800)]
    pub cap_mbit: u64,
    /// The tbf cap on both directions of the link for the capped sync row, in Mbit/s.
    #[arg(long, default_value_t = 1000)]
    pub link_mbit: u64,
    /// Seconds of each fio QD1 latency run (unreplicated, then sync).
    #[arg(long, default_value_t = 3)]
    pub latency_secs: u64,
    /// The tbf cap on both directions of the link for the WAN compression row, in Mbit/s.
    #[arg(long, default_value_t = 10)]
    pub wan_mbit: u64,
    /// MiB of the mixed workload (half mail text, half random) in the WAN row.
    #[arg(long, default_value_t = 8)]
    pub mixed_mib: u64,
}

/// Why the benchmark could not produce figures.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("cannot run {tool} (is it installed? see scripts/deps.sh): {source}")]
    Spawn {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("{server} did not create its socket within 10 s")]
    NotReady { server: &'static str },
    #[error("nbdcopy into {server} failed: {status}")]
    Copy {
        server: &'static str,
        status: std::process::ExitStatus,
    },
    #[error("{server}: the target differs from the source at byte {offset}")]
    Mismatch { server: &'static str, offset: u64 },
    #[error("--size-mib, --runs, --cap-mbit, --link-mbit and --latency-secs must be at least 1")]
    Arguments,
    #[error("replicated run: {0}")]
    Peer(String),
    #[error("fio failed ({status}): {stderr}")]
    Fio {
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("fio's JSON report has no {0}")]
    FioReport(&'static str),
    #[error("fio's JSON report does not parse: {0}")]
    FioJson(serde_json::Error),
    #[error("the link's round trip: {0}")]
    Rtt(crate::lab::LabError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// A server under test.
#[derive(Debug, Clone, Copy)]
enum Server {
    Tandem,
    Nbdkit,
    QemuNbd,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Tandem => "tandem (no peer)",
            Server::Nbdkit => "nbdkit file",
            Server::QemuNbd => "qemu-nbd",
        }
    }

    fn command(self, target: &Path, socket: &Path) -> Result<Command, BenchError> {
        let mut c = match self {
            Server::Tandem => {
                let exe = std::env::current_exe().map_err(io("locating the tandem binary"))?;
                let mut c = Command::new(exe);
                c.args(["nbd", "serve", "--file"])
                    .arg(target)
                    .arg("--socket")
                    .arg(socket);
                c
            }
            Server::Nbdkit => {
                let mut c = Command::new("nbdkit");
                c.args(["--foreground", "--unix"])
                    .arg(socket)
                    .arg("file")
                    .arg(format!("file={}", target.display()));
                c
            }
            Server::QemuNbd => {
                let mut c = Command::new("qemu-nbd");
                // --shared lets nbdcopy open more than one connection if it wants to.
                c.args(["-f", "raw", "--shared=8", "--socket"])
                    .arg(socket)
                    .arg(target);
                c
            }
        };
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        Ok(c)
    }

    fn tool(self) -> &'static str {
        match self {
            Server::Tandem => "tandem",
            Server::Nbdkit => "nbdkit",
            Server::QemuNbd => "qemu-nbd",
        }
    }
}

/// Kills the server it holds when dropped, so an error path leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes the scratch directory when dropped.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the benchmark and prints one row per server, then the ratio.
pub fn run(args: &MirrorBenchArgs) -> Result<(), BenchError> {
    if [
        args.size_mib,
        u64::from(args.runs),
        args.cap_mbit,
        args.link_mbit,
        args.latency_secs,
        args.wan_mbit,
        args.mixed_mib,
    ]
    .contains(&0)
    {
        return Err(BenchError::Arguments);
    }
    let size = args.size_mib << 20;
    // qemu-nbd wants an absolute socket path.
    let dir = std::fs::canonicalize(&args.dir)
        .map_err(io(format!("resolving {}", args.dir.display())))?;
    let scratch = Scratch(dir.join(format!("tandem-bench-mirror-{}", std::process::id())));
    std::fs::create_dir_all(&scratch.0).map_err(io(format!("creating {}", scratch.0.display())))?;
    let source = scratch.0.join("source.raw");
    info!(bytes = size, "writing random source data");
    write_random(&source, size)?;
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; build with --release for meaningful figures");
    }
    println!(
        "nbdcopy {} MiB of random data into a fresh sparse file over a Unix socket, default cache modes, best of {} round(s)",
        args.size_mib, args.runs
    );
    // Rounds of one run per server, so that load from elsewhere on the machine hits
    // every server alike.
    let servers = [Server::Tandem, Server::Nbdkit, Server::QemuNbd];
    let mut best = [0f64; 3];
    for _ in 0..args.runs {
        for (server, best) in servers.iter().zip(best.iter_mut()) {
            *best = best.max(one_run(*server, &scratch.0, &source, size)?);
        }
    }
    for (server, best) in servers.iter().zip(best) {
        println!("{:<18} {:>9.1} MiB/s", server.label(), best);
    }
    println!(
        "tandem / max(nbdkit, qemu-nbd) = {:.2}   (goal >= 1.0)",
        best[0] / best[1].max(best[2])
    );
    let alone = replicated::soft(unreplicated_latency(&scratch.0, size, args.latency_secs))?;
    match &alone {
        Ok(l) => println!(
            "{:<18} QD1 4 KiB write p50 {:>7.1} us  p99 {:>7.1} us  ({} writes; fio nbd, randwrite, sync=1, {} s)",
            Server::Tandem.label(),
            l.p50.as_secs_f64() * 1e6,
            l.p99.as_secs_f64() * 1e6,
            l.ios,
            args.latency_secs
        ),
        Err(e) => println!("QD1 latency rows skipped: {e}"),
    }
    if args.no_peer {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        println!("(rows with a peer skipped: they need root for network namespaces)");
        return Ok(());
    }
    let opts = replicated::Options {
        resync_mib: args.resync_mib,
        cap_mbit: args.cap_mbit,
        link_mbit: args.link_mbit,
        latency_secs: args.latency_secs,
        wan_mbit: args.wan_mbit,
        mixed_mib: args.mixed_mib,
    };
    let r = replicated::run(&scratch.0, &source, size, &opts)?;
    r.print(&opts, best[0], &alone);
    Ok(())
}

/// QD1 write latency of Tandem without a peer, on a fresh sparse target of `size`.
fn unreplicated_latency(dir: &Path, size: u64, secs: u64) -> Result<latency::Latency, BenchError> {
    let target = dir.join("latency.raw");
    let socket = dir.join("latency.sock");
    let _ = std::fs::remove_file(&socket);
    File::create(&target)
        .and_then(|f| f.set_len(size))
        .map_err(io(format!("creating {}", target.display())))?;
    let child = Server::Tandem
        .command(&target, &socket)?
        .spawn()
        .map_err(|source| BenchError::Spawn {
            tool: "tandem",
            source,
        })?;
    let running = Running(child);
    wait_for_socket(&socket, Server::Tandem)?;
    let out = latency::fio_qd1(&socket, secs);
    drop(running);
    let _ = std::fs::remove_file(&target);
    out
}

/// One copy into a fresh target; returns MiB/s.
fn one_run(server: Server, dir: &Path, source: &Path, size: u64) -> Result<f64, BenchError> {
    let target = dir.join("target.raw");
    let socket = dir.join("nbd.sock");
    let _ = std::fs::remove_file(&socket);
    File::create(&target)
        .and_then(|f| f.set_len(size))
        .map_err(io(format!("creating {}", target.display())))?;
    // Start from a clean page cache: no run pays for the previous one's writeback.
    nix::unistd::sync();
    let child = server
        .command(&target, &socket)?
        .spawn()
        .map_err(|source| BenchError::Spawn {
            tool: server.tool(),
            source,
        })?;
    let running = Running(child);
    wait_for_socket(&socket, server)?;
    let (status, secs) = nbdcopy(source, &socket)?;
    drop(running);
    if !status.success() {
        return Err(BenchError::Copy {
            server: server.label(),
            status,
        });
    }
    if let Some(offset) = first_difference(source, &target, false)? {
        return Err(BenchError::Mismatch {
            server: server.label(),
            offset,
        });
    }
    std::fs::remove_file(&target).map_err(io("removing the target"))?;
    let mib_s = size as f64 / (1 << 20) as f64 / secs;
    info!(server = server.label(), secs, mib_s, "run done");
    Ok(mib_s)
}

/// `nbdcopy SOURCE nbd+unix:///?socket=SOCKET`: its exit status and the seconds it took.
fn nbdcopy(source: &Path, socket: &Path) -> Result<(std::process::ExitStatus, f64), BenchError> {
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let start = Instant::now();
    let status = Command::new("nbdcopy")
        .arg(source)
        .arg(&uri)
        .status()
        .map_err(|source| BenchError::Spawn {
            tool: "nbdcopy",
            source,
        })?;
    Ok((status, start.elapsed().as_secs_f64()))
}

fn wait_for_socket(socket: &Path, server: Server) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(BenchError::NotReady {
        server: server.label(),
    })
}

fn write_random(path: &Path, size: u64) -> Result<(), BenchError> {
    let mut urandom = File::open("/dev/urandom").map_err(io("opening /dev/urandom"))?;
    let mut out = File::create(path).map_err(io(format!("creating {}", path.display())))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        urandom
            .read_exact(&mut buf[..n])
            .map_err(io("reading /dev/urandom"))?;
        out.write_all(&buf[..n])
            .map_err(io(format!("writing {}", path.display())))?;
        left -= n as u64;
    }
    out.sync_all()
        .map_err(io(format!("syncing {}", path.display())))
}

/// Compares two files; the first differing offset, if any. With `prefix`, only `a`'s
/// length is compared and `b` may be longer.
fn first_difference(a: &Path, b: &Path, prefix: bool) -> Result<Option<u64>, BenchError> {
    let fa = File::open(a).map_err(io(format!("opening {}", a.display())))?;
    let fb = File::open(b).map_err(io(format!("opening {}", b.display())))?;
    let len_a = fa.metadata().map_err(io("stat"))?.len();
    let len_b = fb.metadata().map_err(io("stat"))?.len();
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut pos = 0u64;
    while pos < len_a.min(len_b) {
        let n = (len_a.min(len_b) - pos).min(ba.len() as u64) as usize;
        fa.read_exact_at(&mut ba[..n], pos).map_err(io("reading"))?;
        fb.read_exact_at(&mut bb[..n], pos).map_err(io("reading"))?;
        if let Some(i) = ba[..n].iter().zip(&bb[..n]).position(|(x, y)| x != y) {
            return Ok(Some(pos + i as u64));
        }
        pos += n as u64;
    }
    if prefix && len_b >= len_a {
        return Ok(None);
    }
    Ok((len_a != len_b).then_some(len_a.min(len_b)))
}
