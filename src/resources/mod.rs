//! Resources: the things a group protects, and the probes that check them.
//!
//! - [`agent`]: start, stop and check one resource of each kind (`ip`, `exec`,
//!   `process`, `mirror`, `filesystem`, `shared_disk`), and each one's part in a lost lease's fast stop.
//! - [`cgroup`]: a `process` resource's own cgroup and its freezer.
//! - [`shared_disk`]: the `shared_disk` agent (a disk lease).
//! - [`probe`]: health probes any resource can use as its quickCheck or deepCheck:
//!   TCP connect, HTTP GET, SMTP banner + EHLO, and exec.
//! - [`executor`]: runs a whole group on this node: start in dependency order, stop in
//!   reverse, restart one resource with its dependents, and monitor with checks. It
//!   carries out the placement core's actions and reports results back as inputs.

pub mod agent;
pub mod cgroup;
pub mod executor;
pub mod filesystem;
pub mod probe;
pub mod shared_disk;

/// Errors of resource operations.
#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("`{command}` failed to spawn: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` exited with {status}")]
    ExitStatus { command: String, status: String },
    #[error("`{command}` timed out after {timeout_ms} ms")]
    Timeout { command: String, timeout_ms: u64 },
    #[error("network: {0}")]
    Net(#[from] crate::net::NetError),
    #[error("cgroup: {0}")]
    Cgroup(#[from] cgroup::CgroupError),
    #[error("{0}")]
    Check(String),
}
