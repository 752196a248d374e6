//! Disk leases: exclusive use of a disk that several nodes see (the `shared_disk`
//! resource).
//!
//! This is a delta lease after the algorithm sanlock publishes (Chockler and Malkhi,
//! "Light-weight leases for storage-centric coordination"; sanlock's `delta_lease.c`):
//! the idea, not the code. Nodes coordinate through one sector of the disk alone, and
//! no clock is compared across nodes. We do not use sanlock itself because its daemon
//! raises `RLIMIT_MEMLOCK` to unlimited when it starts and exits when it may not
//! (a container without `CAP_SYS_RESOURCE`, as in CI and in our lab), and the lease
//! has to be testable there.
//!
//! - [`record`]: the on-disk record (one 4 KiB sector, SHA-256, zeros when free).
//! - [`core`]: the pure lease core (acquire, watch, renew, stop, release).
//! - [`disk`]: the sector I/O (`O_DIRECT`, or `O_DSYNC` where refused).
//! - [`task`]: the tokio task that drives the core on a disk.

pub mod core;
pub mod disk;
pub mod record;
pub mod task;
