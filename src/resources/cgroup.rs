//! A `process` resource's own cgroup, `tandem/<node>.<daemon pid>/<group>/<resource>`, and the
//! freezer a lost lease's fast stop uses on it. cgroup v2 wherever it is mounted
//! (`cgroup.freeze`, done once `cgroup.events` says `frozen 1`), else the v1 freezer
//! (`freezer.state`); with neither, processes run without a cgroup and freezing is
//! nothing to do (warned once). The node's name is in the path because the lab runs
//! several nodes on one host, and cgroups are per host.

use std::ffi::{CStr, CString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long a freeze may take before it counts as failed.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// Errors of cgroup operations.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} did not freeze within {ms} ms", ms = FREEZE_TIMEOUT.as_millis())]
    FreezeTimeout(PathBuf),
}

/// The cgroup flavour that can freeze here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freezer {
    /// cgroup v2: `cgroup.freeze`, `cgroup.events`, `cgroup.kill`.
    V2,
    /// The v1 freezer controller: `freezer.state`.
    V1,
}

/// Where this host's freezing hierarchy is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub freezer: Freezer,
    pub root: PathBuf,
}

/// Finds the freezing hierarchy in `/proc/self/mountinfo` text: a cgroup2 mount if
/// any, else a v1 mount carrying the `freezer` controller.
pub fn find_hierarchy(mountinfo: &str) -> Option<Hierarchy> {
    let mut v1 = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        let root = PathBuf::from(mount);
        match *fstype {
            "cgroup2" => {
                return Some(Hierarchy {
                    freezer: Freezer::V2,
                    root,
                })
            }
            "cgroup"
                if fields
                    .get(sep + 3)
                    .is_some_and(|o| o.split(',').any(|o| o == "freezer")) =>
            {
                v1.get_or_insert(Hierarchy {
                    freezer: Freezer::V1,
                    root,
                });
            }
            _ => {}
        }
    }
    v1
}

/// This host's freezing hierarchy, looked up once; None (warned once) without one.
pub fn hierarchy() -> Option<&'static Hierarchy> {
    static FOUND: OnceLock<Option<Hierarchy>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            let found = std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|m| find_hierarchy(&m));
            if found.is_none() {
                tracing::warn!("no cgroup v2 or v1 freezer mounted: processes run without a cgroup and a lost lease cannot freeze them");
            }
            found
        })
        .as_ref()
}

/// One resource's cgroup.
#[derive(Debug)]
pub struct Cgroup {
    freezer: Freezer,
    root: PathBuf,
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Cgroup {
    /// Creates `tandem/<node>.<daemon pid>/<group>/<resource>` under the hierarchy.
    /// The daemon's pid keeps two daemons on one host apart even when they share a
    /// node name (lab and test clusters): removing one's cgroup never kills the
    /// other's processes.
    pub fn create(
        h: &Hierarchy,
        node: &str,
        group: &str,
        resource: &str,
    ) -> Result<Cgroup, CgroupError> {
        let daemon = format!("{node}.{}", std::process::id());
        let dir = h
            .root
            .join("tandem")
            .join(daemon)
            .join(group)
            .join(resource);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(Cgroup {
            freezer: h.freezer,
            root: h.root.clone(),
            dir,
        })
    }

    /// The `cgroup.procs` file a process joins the cgroup through (writing "0" moves
    /// the writer, as a `pre_exec` hook does).
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.dir.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(io_err(&path))
    }

    fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.dir.join(file);
        std::fs::read_to_string(&path).map_err(io_err(&path))
    }

    /// Whether every task of the cgroup is frozen now.
    pub fn frozen(&self) -> Result<bool, CgroupError> {
        Ok(match self.freezer {
            Freezer::V2 => self.read("cgroup.events")?.lines().any(|l| l == "frozen 1"),
            Freezer::V1 => self.read("freezer.state")?.trim() == "FROZEN",
        })
    }

    /// Freezes every task and waits until the kernel reports them frozen.
    pub async fn freeze(&self) -> Result<(), CgroupError> {
        match self.freezer {
            Freezer::V2 => self.write("cgroup.freeze", "1")?,
            Freezer::V1 => self.write("freezer.state", "FROZEN")?,
        }
        let deadline = Instant::now() + FREEZE_TIMEOUT;
        while !self.frozen()? {
            if Instant::now() >= deadline {
                return Err(CgroupError::FreezeTimeout(self.dir.clone()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// Lets the tasks run again.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        match self.freezer {
            Freezer::V2 => self.write("cgroup.freeze", "0"),
            Freezer::V1 => self.write("freezer.state", "THAWED"),
        }
    }

    /// The processes in the cgroup.
    pub fn pids(&self) -> Result<Vec<i32>, CgroupError> {
        Ok(self
            .read("cgroup.procs")?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// SIGKILLs whatever is left in it (also what left the process group) and removes
    /// it, then its parents if they are empty.
    pub async fn remove(self) -> Result<(), CgroupError> {
        // A frozen task would not die until thawed.
        let _ = self.thaw();
        for _ in 0..100 {
            let pids = self.pids()?;
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::remove_dir(&self.dir).map_err(io_err(&self.dir))?;
        let top = self.root.join("tandem");
        let mut parent = self.dir.parent();
        while let Some(p) = parent.filter(|p| p.starts_with(&top)) {
            // Busy (another resource's cgroup below it): leave it.
            if std::fs::remove_dir(p).is_err() {
                break;
            }
            parent = p.parent();
        }
        Ok(())
    }
}

/// The `cgroup.procs` path as a C string, made before `fork` so the `pre_exec` hook
/// does not allocate.
pub fn c_path(path: &Path) -> Option<CString> {
    CString::new(path.as_os_str().as_bytes()).ok()
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is `procs`. Only
/// async-signal-safe calls (open, write, close) and no allocation: it runs in a
/// `pre_exec` hook, between `fork` and `exec`.
pub fn join_self(procs: &CStr) -> std::io::Result<()> {
    // SAFETY: `procs` is a valid NUL-terminated string that outlives the call.
    let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened; the buffer is a static one-byte "0" (the writer).
    let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    let error = (written != 1).then(std::io::Error::last_os_error);
    // SAFETY: `fd` is ours and closed once.
    unsafe { libc::close(fd) };
    error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn cgroup2_is_preferred_wherever_it_is_mounted_and_the_v1_freezer_is_the_fallback() {
        assert_eq!(
            find_hierarchy(HYBRID),
            Some(Hierarchy {
                freezer: Freezer::V2,
                root: "/sys/fs/cgroup/unified".into()
            })
        );
        let v1_only: String = HYBRID.lines().take(2).map(|l| format!("{l}\n")).collect();
        assert_eq!(
            find_hierarchy(&v1_only),
            Some(Hierarchy {
                freezer: Freezer::V1,
                root: "/sys/fs/cgroup/freezer".into()
            })
        );
        let cpu_only = "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(find_hierarchy(cpu_only), None);
        assert_eq!(find_hierarchy(""), None);
    }
}
