//! The `filesystem` agent: a filesystem on a mirror's volume, through the kernel's NBD
//! client.
//!
//! Start: attach `/dev/nbdN` to the mirror's NBD socket ([`KernelNbd`]), create the
//! filesystem if asked to and the volume is blank, check it (`e2fsck -p` for ext2/3/4,
//! which also replays the journal after a crash), and mount it. A stale NBD mount left
//! at the mountpoint by an earlier run is detached first; anything else mounted there
//! is left alone and the start fails.
//!
//! Stop: unmount; if the mount is busy, the processes holding files, working
//! directories or roots under it get SIGTERM, then SIGKILL, as Pacemaker's Filesystem
//! agent does with `force_unmount`. Then detach the device.
//!
//! Monitor: the device is still connected and the mountpoint carries it.
//!
//! Every call that makes the kernel do I/O on the device (mount, umount, the blank
//! probe, attach and detach) runs on the blocking pool: the export it reads through is
//! served by this daemon's own runtime, which may have a single worker.
//!
//! The decisions that need no kernel (mount options, mountinfo, fsck exit codes, the
//! mkfs command, blank detection, who holds a mount) are plain functions with tests.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::agent::Monitor;
use super::ResourceError;
use crate::mirror::nbd::kernel::KernelNbd;

/// How much of a volume must be zeros for it to count as blank: covers the
/// signatures of ext2/3/4 (1 KiB), XFS (0), btrfs (64 KiB) and partition tables.
const BLANK_PROBE: usize = 128 << 10;
/// mkfs and fsck of a large volume take a while.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// SIGTERM, then this long, then SIGKILL for the processes holding a busy mount.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// The agent's settings and its attached device.
pub struct FilesystemAgent {
    mirror: String,
    /// The mirror's NBD socket on this node; None if this node holds no copy.
    socket: Option<PathBuf>,
    mountpoint: PathBuf,
    fstype: String,
    flags: MsFlags,
    data: String,
    mkfs: bool,
    fsck: bool,
    attached: Option<KernelNbd>,
}

impl FilesystemAgent {
    /// An agent for a validated `filesystem` resource.
    pub fn new(
        mirror: &str,
        socket: Option<PathBuf>,
        mountpoint: &Path,
        fstype: &str,
        options: &str,
        mkfs: bool,
        fsck: bool,
    ) -> FilesystemAgent {
        let (flags, data) = mount_options(options);
        FilesystemAgent {
            mirror: mirror.to_string(),
            socket,
            mountpoint: mountpoint.to_path_buf(),
            fstype: fstype.to_string(),
            flags,
            data,
            mkfs,
            fsck,
            attached: None,
        }
    }

    fn mounted_source(&self) -> Option<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        mount_at(&info, &self.mountpoint).map(|m| m.source)
    }

    fn at_mountpoint(&self) -> AtMountpoint {
        classify_mount(
            self.mounted_source().as_deref(),
            self.attached.as_ref().map(KernelNbd::device),
        )
    }

    /// Attaches, checks and mounts. Starting a running filesystem succeeds.
    pub async fn start(&mut self) -> Result<(), ResourceError> {
        match self.at_mountpoint() {
            AtMountpoint::Ours if self.attached.as_ref().is_some_and(KernelNbd::is_connected) => {
                return Ok(())
            }
            AtMountpoint::Foreign(src) => {
                return Err(ResourceError::Check(format!(
                    "{} already carries {src}; not mounting over it",
                    self.mountpoint.display()
                )))
            }
            _ => {}
        }
        // Whatever an earlier run left behind goes first.
        self.stop().await?;
        let socket = self.socket.clone().ok_or_else(|| {
            ResourceError::Check(format!(
                "this node holds no copy of mirror `{}`",
                self.mirror
            ))
        })?;
        let nbd = KernelNbd::attach(&socket)
            .await
            .map_err(|e| ResourceError::Check(format!("mirror `{}`: {e}", self.mirror)))?;
        let device = nbd.device().to_path_buf();
        self.attached = Some(nbd);
        if let Err(e) = self.prepare_and_mount(&device).await {
            if let Some(nbd) = self.attached.take() {
                let _ = nbd.detach().await;
            }
            return Err(e);
        }
        tracing::info!(device = %device.display(), mountpoint = %self.mountpoint.display(), "mounted");
        Ok(())
    }

    async fn prepare_and_mount(&self, device: &Path) -> Result<(), ResourceError> {
        if self.mkfs {
            let dev = device.to_path_buf();
            let blank = tokio::task::spawn_blocking(move || is_blank(&dev))
                .await
                .map_err(|e| ResourceError::Check(e.to_string()))?
                .map_err(|e| ResourceError::Check(format!("{}: {e}", device.display())))?;
            if blank {
                tracing::info!(device = %device.display(), fstype = %self.fstype, "blank volume: creating the filesystem");
                run_tool(&mkfs_command(&self.fstype, device)).await?;
            }
        }
        if self.fsck && is_ext(&self.fstype) {
            let cmd = vec![
                "e2fsck".to_string(),
                "-p".into(),
                device.display().to_string(),
            ];
            let code = run_tool_status(&cmd).await?;
            fsck_outcome(code).map_err(|why| {
                ResourceError::Check(format!(
                    "{}: e2fsck: {why}; check it by hand (e2fsck -f {})",
                    device.display(),
                    device.display()
                ))
            })?;
        }
        std::fs::create_dir_all(&self.mountpoint).map_err(|e| {
            ResourceError::Check(format!("mountpoint {}: {e}", self.mountpoint.display()))
        })?;
        let (dev, mp, fstype, flags) = (
            device.to_path_buf(),
            self.mountpoint.clone(),
            self.fstype.clone(),
            self.flags,
        );
        let data = self.data.clone();
        // Off the runtime: the kernel reads the volume through NBD while it mounts,
        // and this daemon's runtime serves that NBD export.
        tokio::task::spawn_blocking(move || {
            let data = (!data.is_empty()).then_some(data.as_str());
            nix::mount::mount(Some(&dev), &mp, Some(fstype.as_str()), flags, data)
        })
        .await
        .map_err(|e| ResourceError::Check(e.to_string()))?
        .map_err(|e| {
            ResourceError::Check(format!(
                "mount {} on {} ({}): {e}",
                device.display(),
                self.mountpoint.display(),
                self.fstype
            ))
        })
    }

    /// Unmounts (ending the processes that hold the mount if it is busy) and
    /// detaches. Stopping a stopped filesystem succeeds.
    pub async fn stop(&mut self) -> Result<(), ResourceError> {
        match self.at_mountpoint() {
            AtMountpoint::Ours => self.unmount().await?,
            AtMountpoint::Stale(src) => {
                // An earlier daemon's device, torn down with it: detach the mount lazily.
                tracing::warn!(source = %src, mountpoint = %self.mountpoint.display(), "detaching a stale mount");
                let mp = self.mountpoint.clone();
                tokio::task::spawn_blocking(move || nix::mount::umount2(&mp, MntFlags::MNT_DETACH))
                    .await
                    .map_err(|e| ResourceError::Check(e.to_string()))?
                    .map_err(|e| {
                        ResourceError::Check(format!(
                            "umount {} (stale {src}): {e}",
                            self.mountpoint.display()
                        ))
                    })?;
            }
            AtMountpoint::Nothing | AtMountpoint::Foreign(_) => {}
        }
        if let Some(nbd) = self.attached.take() {
            nbd.detach()
                .await
                .map_err(|e| ResourceError::Check(format!("mirror `{}`: {e}", self.mirror)))?;
        }
        Ok(())
    }

    async fn unmount(&self) -> Result<(), ResourceError> {
        let mp = self.mountpoint.clone();
        for signal in [None, Some(Signal::SIGTERM), Some(Signal::SIGKILL)] {
            if let Some(sig) = signal {
                let holders = holders(Path::new("/proc"), &mp, std::process::id() as i32);
                tracing::warn!(mountpoint = %mp.display(), ?holders, signal = %sig, "mount busy: ending its users");
                for pid in holders {
                    let _ = kill(Pid::from_raw(pid), sig);
                }
                tokio::time::sleep(KILL_GRACE).await;
            }
            // Off the runtime: unmounting writes back through this daemon's NBD export.
            let target = mp.clone();
            let unmounted = tokio::task::spawn_blocking(move || {
                nix::mount::umount2(&target, MntFlags::empty())
            })
            .await
            .map_err(|e| ResourceError::Check(e.to_string()))?;
            match unmounted {
                Ok(()) => return Ok(()),
                Err(nix::errno::Errno::EBUSY) => continue,
                Err(nix::errno::Errno::EINVAL) if self.mounted_source().is_none() => return Ok(()),
                Err(e) => {
                    return Err(ResourceError::Check(format!(
                        "umount {}: {e}",
                        mp.display()
                    )))
                }
            }
        }
        Err(ResourceError::Check(format!(
            "umount {}: still busy after SIGKILL of its users",
            mp.display()
        )))
    }

    /// The built-in monitor: the device is connected and mounted at the mountpoint.
    pub fn monitor(&self) -> Monitor {
        let Some(nbd) = &self.attached else {
            return Monitor::Failed("not mounted".into());
        };
        if !nbd.is_connected() {
            return Monitor::Failed(format!(
                "{} lost its NBD connection",
                nbd.device().display()
            ));
        }
        match self.mounted_source() {
            Some(src) if Path::new(&src) == nbd.device() => Monitor::Healthy,
            Some(src) => Monitor::Failed(format!(
                "{} carries {src}, not {}",
                self.mountpoint.display(),
                nbd.device().display()
            )),
            None => Monitor::Failed(format!("{} is not mounted", self.mountpoint.display())),
        }
    }
}

/// What the mountpoint carries, seen from the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AtMountpoint {
    Nothing,
    /// The device this agent attached.
    Ours,
    /// Another NBD device: left by an earlier run of the daemon.
    Stale(String),
    /// Something else, mounted by someone else: never unmounted, never mounted over.
    Foreign(String),
}

/// Classifies the mount on top of the mountpoint (`source`) against the device this
/// agent has attached, if any.
pub fn classify_mount(source: Option<&str>, ours: Option<&Path>) -> AtMountpoint {
    match source {
        None => AtMountpoint::Nothing,
        Some(s) if ours.is_some_and(|d| Path::new(s) == d) => AtMountpoint::Ours,
        Some(s) if s.starts_with("/dev/nbd") => AtMountpoint::Stale(s.to_string()),
        Some(s) => AtMountpoint::Foreign(s.to_string()),
    }
}

fn is_ext(fstype: &str) -> bool {
    matches!(fstype, "ext2" | "ext3" | "ext4")
}

/// Splits `noatime,nodev,data=ordered` into mount flags and the filesystem's own
/// options.
pub fn mount_options(options: &str) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let f = match o {
            "ro" => MsFlags::MS_RDONLY,
            "rw" | "defaults" => MsFlags::empty(),
            "noatime" => MsFlags::MS_NOATIME,
            "nodiratime" => MsFlags::MS_NODIRATIME,
            "relatime" => MsFlags::MS_RELATIME,
            "strictatime" => MsFlags::MS_STRICTATIME,
            "lazytime" => MsFlags::MS_LAZYTIME,
            "nodev" => MsFlags::MS_NODEV,
            "nosuid" => MsFlags::MS_NOSUID,
            "noexec" => MsFlags::MS_NOEXEC,
            "sync" => MsFlags::MS_SYNCHRONOUS,
            "dirsync" => MsFlags::MS_DIRSYNC,
            other => {
                data.push(other);
                continue;
            }
        };
        flags |= f;
    }
    (flags, data.join(","))
}

/// One mount from `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub fstype: String,
    pub source: String,
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        let value = octal.then(|| {
            b[i + 1..i + 4]
                .iter()
                .fold(0u16, |v, c| v * 8 + u16::from(c - b'0'))
        });
        if let Some(v) = value.and_then(|v| u8::try_from(v).ok()) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount on top at `mountpoint` (the last one listed there), if any.
pub fn mount_at(mountinfo: &str, mountpoint: &Path) -> Option<MountEntry> {
    let want = mountpoint.to_str()?.trim_end_matches('/');
    mountinfo.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let mp = unescape(left.split(' ').nth(4)?);
        let mut r = right.split(' ');
        let fstype = r.next()?.to_string();
        let source = unescape(r.next()?);
        (mp == want).then_some(MountEntry { fstype, source })
    })
}

/// `e2fsck -p`'s exit code: 0 clean, 1 and 2 errors corrected; 4 and up need a
/// person (left uncorrected, operational error, cancelled).
pub fn fsck_outcome(code: i32) -> Result<(), String> {
    match code {
        0..=2 => Ok(()),
        4..=7 => Err(format!("errors left uncorrected (exit {code})")),
        _ => Err(format!("could not check the filesystem (exit {code})")),
    }
}

/// The command that creates a `fstype` filesystem on `device`.
pub fn mkfs_command(fstype: &str, device: &Path) -> Vec<String> {
    let dev = device.display().to_string();
    match fstype {
        "ext2" | "ext3" | "ext4" => vec![
            "mke2fs".into(),
            "-q".into(),
            "-F".into(),
            "-t".into(),
            fstype.into(),
            dev,
        ],
        "xfs" => vec!["mkfs.xfs".into(), "-q".into(), dev],
        other => vec![format!("mkfs.{other}"), dev],
    }
}

/// True if the first [`BLANK_PROBE`] bytes (or the whole of a smaller volume) are
/// zeros.
pub fn is_blank(path: &Path) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; BLANK_PROBE];
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(buf[..n].iter().all(|&b| b == 0))
}

/// The processes (other than `me`) with an open file, working directory or root
/// at or under `mountpoint`, from a `/proc`-shaped directory.
pub fn holders(proc: &Path, mountpoint: &Path, me: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let under = |p: PathBuf| p.starts_with(mountpoint);
    let mut out: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let base = proc.join(pid.to_string());
            let links = ["cwd", "root", "exe"]
                .iter()
                .filter_map(|l| std::fs::read_link(base.join(l)).ok());
            let fds = std::fs::read_dir(base.join("fd"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok());
            let mut all = links.chain(fds);
            all.any(under)
        })
        .collect();
    out.sort_unstable();
    out
}

async fn run_tool_status(cmd: &[String]) -> Result<i32, ResourceError> {
    let out = tokio::time::timeout(
        TOOL_TIMEOUT,
        tokio::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .stdin(std::process::Stdio::null())
            .output(),
    )
    .await
    .map_err(|_| ResourceError::Timeout {
        command: cmd.join(" "),
        timeout_ms: TOOL_TIMEOUT.as_millis() as u64,
    })?
    .map_err(|source| ResourceError::Spawn {
        command: cmd.join(" "),
        source,
    })?;
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        tracing::info!(command = %cmd.join(" "), code, stderr = %String::from_utf8_lossy(&out.stderr).trim(), "tool finished");
    }
    Ok(code)
}

async fn run_tool(cmd: &[String]) -> Result<(), ResourceError> {
    match run_tool_status(cmd).await? {
        0 => Ok(()),
        code => Err(ResourceError::ExitStatus {
            command: cmd.join(" "),
            status: format!("exit {code}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_mount_options_become_flags_and_the_rest_goes_to_the_filesystem() {
        let (f, d) = mount_options("noatime, nodev,data=ordered,ro,errors=remount-ro");
        assert_eq!(
            f,
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_RDONLY
        );
        assert_eq!(d, "data=ordered,errors=remount-ro");
        assert_eq!(mount_options(""), (MsFlags::empty(), String::new()));
    }

    #[test]
    fn the_mount_on_top_of_a_mountpoint_is_found_with_escapes_undone() {
        let info = "\
22 1 0:21 / /proc rw,nosuid - proc proc rw
40 22 43:0 / /srv/data rw,noatime shared:1 - ext4 /dev/nbd0 rw
41 22 43:1 / /srv/my\\040data rw - ext4 /dev/nbd1 rw
42 40 0:50 / /srv/data rw - tmpfs tmpfs rw
";
        let top = mount_at(info, Path::new("/srv/data")).unwrap();
        assert_eq!(
            top,
            MountEntry {
                fstype: "tmpfs".into(),
                source: "tmpfs".into()
            }
        );
        let spaced = mount_at(info, Path::new("/srv/my data")).unwrap();
        assert_eq!(spaced.source, "/dev/nbd1");
        assert!(mount_at(info, Path::new("/srv")).is_none());
        assert!(mount_at("garbage line\n", Path::new("/srv")).is_none());
    }

    #[test]
    fn only_our_own_or_a_stale_nbd_mount_is_ever_taken_down() {
        let ours = Path::new("/dev/nbd1");
        assert_eq!(classify_mount(None, Some(ours)), AtMountpoint::Nothing);
        assert_eq!(
            classify_mount(Some("/dev/nbd1"), Some(ours)),
            AtMountpoint::Ours
        );
        assert_eq!(
            classify_mount(Some("/dev/nbd0"), Some(ours)),
            AtMountpoint::Stale("/dev/nbd0".into())
        );
        assert_eq!(
            classify_mount(Some("/dev/nbd1"), None),
            AtMountpoint::Stale("/dev/nbd1".into())
        );
        assert_eq!(
            classify_mount(Some("/dev/sda3"), Some(ours)),
            AtMountpoint::Foreign("/dev/sda3".into())
        );
        assert_eq!(
            classify_mount(Some("tmpfs"), None),
            AtMountpoint::Foreign("tmpfs".into())
        );
    }

    #[test]
    fn fsck_codes_that_need_a_person_fail_the_start() {
        assert!(fsck_outcome(0).is_ok());
        assert!(fsck_outcome(1).is_ok());
        assert!(fsck_outcome(2).is_ok());
        assert!(fsck_outcome(4).unwrap_err().contains("uncorrected"));
        assert!(fsck_outcome(8).unwrap_err().contains("could not"));
    }

    #[test]
    fn mkfs_commands_per_type() {
        let d = Path::new("/dev/nbd3");
        assert_eq!(
            mkfs_command("ext4", d),
            ["mke2fs", "-q", "-F", "-t", "ext4", "/dev/nbd3"]
        );
        assert_eq!(mkfs_command("xfs", d), ["mkfs.xfs", "-q", "/dev/nbd3"]);
        assert_eq!(mkfs_command("btrfs", d), ["mkfs.btrfs", "/dev/nbd3"]);
    }

    #[test]
    fn only_an_all_zero_start_is_blank() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vol");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(4 << 20).unwrap();
        assert!(is_blank(&p).unwrap());
        // An ext superblock magic at 1080, and a btrfs one at 64 KiB + 64.
        for at in [1080u64, (64 << 10) + 64] {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
            f.write_all_at(&[0x53, 0xef], at).unwrap();
            assert!(!is_blank(&p).unwrap());
            f.write_all_at(&[0, 0], at).unwrap();
        }
        // A tiny volume is judged on what it has.
        let small = dir.path().join("small");
        std::fs::write(&small, [0u8; 100]).unwrap();
        assert!(is_blank(&small).unwrap());
    }

    #[test]
    fn holders_are_the_processes_with_anything_open_under_the_mountpoint() {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path();
        let mk = |pid: &str, cwd: &str, fds: &[&str]| {
            let base = proc.join(pid);
            std::fs::create_dir_all(base.join("fd")).unwrap();
            std::os::unix::fs::symlink(cwd, base.join("cwd")).unwrap();
            std::os::unix::fs::symlink("/", base.join("root")).unwrap();
            for (i, f) in fds.iter().enumerate() {
                std::os::unix::fs::symlink(f, base.join("fd").join(i.to_string())).unwrap();
            }
        };
        mk("10", "/srv/data/app", &[]);
        mk("11", "/", &["/dev/null", "/srv/data/log"]);
        mk("12", "/srv/database", &["/srv/datax"]);
        mk("13", "/srv/data", &[]);
        std::fs::create_dir(proc.join("self")).unwrap();
        assert_eq!(holders(proc, Path::new("/srv/data"), 13), vec![10, 11]);
    }
}
